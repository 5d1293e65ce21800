//! Criterion sweep of the GEMM family (batch 2-64): every registry variant of the family plus the
//! cuBLAS fp16 and dequant + cuBLAS baselines, on the eight Vicuna 7B/13B shapes of
//! `check::cases::VICUNA` (not its ODD ones), group 128, act-order off and on, at m = 2, 4, 8, 16,
//! 32, 64. Each figure is cold-weight (copies rotated past 2x L2) and timed with CUDA events by
//! the lab's one harness (benches/common, `gptq_lab::bench::cold`); throughput is the bytes a
//! launch must move (`kernels::gemv::bytes_moved`), printed in GB/s.
//!
//! Run everything (384 benchmarks on sm_80+, 288 on sm_75 without gemm_v2_mma, budgeted at 0.2 s
//! warm-up + 0.4 s measurement each: about 4 minutes plus uploads; the budget is arithmetic, not
//! yet timed on a GPU):
//!     cargo bench --bench gemm
//! One group (one shape, act-order off, every variant and batch; groups are
//! gemm_k<K>_n<N>_g128_{plain,actorder}):
//!     cargo bench --bench gemm -- gemm_k4096_n11008_g128_plain
//! One variant at one batch in that group, or list what would run:
//!     cargo bench --bench gemm -- 'gemm_k4096_n11008_g128_plain/gemm_v2_mma/m16'
//!     cargo bench --bench gemm -- --list
//! Without a GPU (or without kernels) it prints `SKIP gemm: <reason>` and exits 0.

mod common;

use gptq_lab::kernels::registry::Family;
use std::time::Duration;

/// The GEMM family's batches (m = 1 is the GEMV bench's).
const BATCHES: &[usize] = &[2, 4, 8, 16, 32, 64];

fn main() {
    common::run(
        "gemm",
        Family::Gemm,
        BATCHES,
        common::Budget {
            samples: 10,
            warm_up: Duration::from_millis(200),
            measure: Duration::from_millis(400),
        },
    );
}
