//! Kernel sweeps for `lab bench` and `cargo bench`: filled in once the GEMV/GEMM launchers land.

use crate::bench::Ceilings;
use crate::cuda::Gpu;
use crate::report::ReportHeader;
use crate::{LabError, Result};
use std::path::Path;

pub fn run_family(
    _gpu: &Gpu,
    _header: &ReportHeader,
    family: &str,
    _quick: bool,
    _dir: &Path,
) -> Result<()> {
    let _: Option<Ceilings> = None;
    Err(LabError::invalid(
        "--family",
        format!("{family}: sweep not wired yet"),
    ))
}
