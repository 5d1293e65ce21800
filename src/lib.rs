//! gptq-lab: 4-bit GPTQ dequant-GEMV/GEMM CUDA kernels, proven against f64 references,
//! measured against the card's own bandwidth ceiling, run inside a Vicuna/LLaMA decode loop.
//!
//! Layout (see ../shared/design.md): `gptq` checkpoint format and quantizers, `reference` the f64
//! ground truth, `cuda` driver plumbing, `kernels` the variant registry and launchers, `bench` the
//! one timing harness, `model` configs/loader/engines, `plan` the VRAM planner, `report` output.

pub mod bench;
pub mod build_info;
pub mod check;
pub mod cuda;
pub mod error;
pub mod gptq;
pub mod kernels;
pub mod model;
pub mod plan;
pub mod quantize;
pub mod reference;
pub mod report;
pub mod tune;
pub mod util;

pub use error::{LabError, Result};
