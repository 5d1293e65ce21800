//! GPU test: the quick correctness matrix of the gemv family, through the same code as
//! `lab check --family gemv --quick`. Prints `SKIP gemv_check: <reason>` without a GPU.

use gptq_lab::check::{self, CheckOptions};
use gptq_lab::cuda::gpu_or_skip;
use gptq_lab::kernels::registry::Family;

#[test]
fn gemv_quick_matrix_matches_the_f64_reference() {
    let Some(gpu) = gpu_or_skip("gemv_check") else {
        return;
    };
    let opts = CheckOptions {
        family: Some(Family::Gemv),
        quick: true,
        ..CheckOptions::default()
    };
    let report = check::run_check(Some(&gpu), &opts).unwrap_or_else(|e| panic!("{e}"));
    let table = check::render(&report);
    println!("{table}");
    assert_eq!(report.failures, 0, "{table}");
    // Every variant ran somewhere (a matrix that skips everything proves nothing).
    for s in &report.summary {
        assert!(
            s.pass + s.unavailable > 0,
            "{} [{}] never ran",
            s.variant,
            s.params
        );
    }
}
