//! Criterion sweep of the GEMV family (batch 1): every registry variant of the family, the cuBLAS
//! fp16 and dequant + cuBLAS baselines among them, on the eight Vicuna 7B/13B shapes of
//! `check::cases::VICUNA` (not its ODD ones), group 128, act-order off and on. Each figure is
//! cold-weight (copies rotated past 2x L2) and timed with CUDA events by the lab's one harness
//! (benches/common, `gptq_lab::bench::cold`); throughput is the bytes a launch must move
//! (`kernels::gemv::bytes_moved`), printed in GB/s.
//!
//! Run everything (144 benchmarks on sm_90, 128 below it without gemv_v9_cluster, budgeted at
//! 0.3 s warm-up + 0.7 s measurement each: about 2.5 minutes plus uploads; the budget is
//! arithmetic, not yet timed on a GPU):
//!     cargo bench --bench gemv
//! One group (one shape, act-order off; groups are gemv_k<K>_n<N>_g128_{plain,actorder}):
//!     cargo bench --bench gemv -- gemv_k4096_n11008_g128_plain
//! One variant in every group, or list what would run:
//!     cargo bench --bench gemv -- gemv_v2_vec
//!     cargo bench --bench gemv -- --list
//! Without a GPU (or without kernels) it prints `SKIP gemv: <reason>` and exits 0.

mod common;

use gptq_lab::kernels::registry::Family;
use std::time::Duration;

fn main() {
    common::run(
        "gemv",
        Family::Gemv,
        &[1],
        common::Budget {
            samples: 10,
            warm_up: Duration::from_millis(300),
            measure: Duration::from_millis(700),
        },
    );
}
