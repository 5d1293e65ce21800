//! Time GPTQ on one Vicuna-7B gate/up-sized layer (K = 4096, N = 11008) with 128 x 2048
//! calibration tokens, the benchmark (goal: under 30 s on a 2-core machine).
//!
//!   cargo run --release --example gptq_layer_time [-- --tokens 262144 --k 4096 --n 11008 --hessian auto|f32|bf16-amx]
//!
//! Not a test (timings are not asserted). Inputs: 4 distinct 2048-token chunks of correlated
//! synthetic activations, cycled to the token count; the Hessian's cost does not depend on the
//! values. Prints each phase: Hessian accumulation, factorization + solver, total.

use gptq_lab::gptq::synthetic::{inputs, weights, InputShape};
use gptq_lab::gptq::{quantize_gptq, GptqParams, Hessian, HessianBackend};
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|s| s == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let (k, n, tokens) = (
        arg("--k", 4096),
        arg("--n", 11008),
        arg("--tokens", 128 * 2048),
    );
    let a: Vec<String> = std::env::args().collect();
    let backend = match a.iter().position(|s| s == "--hessian") {
        Some(i) => HessianBackend::parse(a.get(i + 1).map(String::as_str).unwrap_or(""))?,
        None => HessianBackend::auto(),
    };
    let chunk = 2048.min(tokens);
    println!(
        "GPTQ layer timing: K = {k}, N = {n}, {tokens} calibration tokens, {} rayon threads, \
         Hessian backend {}",
        rayon::current_num_threads(),
        backend.name()
    );
    let chunks: Vec<Vec<f32>> = (0..4)
        .map(|s| inputs(chunk, k, InputShape::OUTLIERS, s))
        .collect();
    let w = weights(k, n, 99);

    let t0 = Instant::now();
    let mut h = Hessian::with_backend(k, backend);
    let mut fed = 0;
    let mut i = 0;
    while fed < tokens {
        let rows = chunk.min(tokens - fed);
        h.add_batch(&chunks[i % 4][..rows * k], rows)?;
        fed += rows;
        i += 1;
    }
    let hm = h.matrix()?;
    let t_hessian = t0.elapsed().as_secs_f64();

    for (label, act_order) in [("group 128", false), ("group 128 + act-order", true)] {
        let t1 = Instant::now();
        let p = GptqParams {
            group_size: 128,
            act_order,
            ..GptqParams::default()
        };
        let out = quantize_gptq(&w, k, n, &hm, &p)?;
        let t_solve = t1.elapsed().as_secs_f64();
        println!(
            "{label}: Hessian {t_hessian:.2} s, solve (factorize + quantize) {t_solve:.2} s, \
             total {:.2} s; proxy loss {:.4e}",
            t_hessian + t_solve,
            out.proxy_loss
        );
    }
    Ok(())
}
