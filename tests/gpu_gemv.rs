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
    // Every variant this GPU can run ran somewhere (a matrix that skips everything proves
    // nothing); one built for a newer architecture (gemv_v9_cluster below sm_90) is all skips.
    for s in &report.summary {
        let v = gptq_lab::kernels::registry::by_name(s.variant).expect("a registered variant");
        if gpu.sm() < v.min_sm {
            assert_eq!(
                s.pass + s.fail,
                0,
                "{} ran below its sm_{}",
                s.variant,
                v.min_sm
            );
            continue;
        }
        assert!(
            s.pass + s.unavailable > 0,
            "{} [{}] never ran",
            s.variant,
            s.params
        );
    }
}
