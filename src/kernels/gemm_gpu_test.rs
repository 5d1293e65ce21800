//! GPU test of the GEMM family: every variant the device supports, over the batch matrix
//! {2,3,4,8,15,16,17,32,33,64}, every group size, both zero modes, act-order, odd n and k, split-K
//! on and off, against the f64 reference. Outputs are poisoned (NaN) before each launch. Skips with
//! a reason without a GPU. Prints one line per case and, on failure, variant, shape, seed and the
//! first mismatches. GEMM_GPU_QUICK=1 skips the Vicuna-size cases. Run alone: `cargo test --release --lib kernels::gemm_gpu_test -- --nocapture`.

use crate::cuda::{gpu_or_skip, Gpu};
use crate::kernels::abi::lab_gemm_params;
use crate::kernels::gemm::{self, VARIANTS};
use crate::kernels::gemm_emulate::testdata::{activations, layer, reference, REL_OUT, REL_SUM};
use crate::kernels::registry::Variant;
use cudarc::driver::{DevicePtr, DeviceRepr};
use half::f16;

struct Case {
    m: usize,
    n: usize,
    k: usize,
    group: usize,
    sym: bool,
    act: bool,
    bias: bool,
    /// 0 = auto_split, else the requested split.
    split: u32,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let c = |m, n, k, group, sym, act, bias, split| Case {
        m,
        n,
        k,
        group,
        sym,
        act,
        bias,
        split,
    };
    for &m in &[2, 3, 4, 8, 15, 16, 17, 32, 33, 64] {
        v.push(c(m, 512, 1024, 128, false, false, false, 0));
        v.push(c(m, 512, 1024, 128, false, false, false, 1));
    }
    for &g in &[32, 64, 128, 1024] {
        v.push(c(16, 768, 1024, g, false, false, true, 0));
        v.push(c(5, 768, 1024, g, true, false, false, 1));
    }
    for &(m, split) in &[(2, 0), (16, 0), (64, 0), (16, 1)] {
        v.push(c(m, 4096, 4096, 128, false, false, false, split)); // Vicuna-7B q/k/v/o
        v.push(c(m, 4096, 4096, 128, false, true, false, split)); // ... act-order
    }
    v.push(c(17, 288, 192, 64, false, false, true, 0)); // partial 256-column block
    v.push(c(33, 96, 160, 32, false, false, false, 3)); // k % 64 == 32, split 3
    v.push(c(3, 64, 40, 40, true, false, false, 1)); // k % 32 == 8
    v.push(c(64, 352, 11008 / 4, 32, false, true, true, 0)); // act-order, g32, bias, odd n/256
    v
}

fn upload<T: DeviceRepr + Copy>(gpu: &Gpu, h: &[T]) -> crate::Result<cudarc::driver::CudaSlice<T>> {
    use crate::error::DriverCtx;
    // cudarc refuses empty copies: keep one element so every pointer is valid.
    let fallback;
    let src = if h.is_empty() {
        fallback = vec![unsafe { std::mem::zeroed::<T>() }];
        &fallback[..]
    } else {
        h
    };
    gpu.stream.clone_htod(src).ctx("upload")
}

/// Run one case; Ok(None) when it passes, Ok(Some(message)) when it does not.
fn run_case(gpu: &Gpu, v: &Variant, c: &Case, seed: u64) -> crate::Result<Option<String>> {
    use crate::error::DriverCtx;
    let ql = layer(c.k, c.n, c.group, c.sym, c.act, c.bias, seed);
    let x = activations(c.m, c.k, seed);
    let w = gemm::prepare(v, &ql)?;
    let (split_k, k_slice) = if c.split == 0 {
        gemm::auto_split(v, c.m as u32, c.n as u32, c.k as u32, gpu.info.limits())
    } else {
        gemm::fit_split(c.k as u32, gemm::k_step(v), c.split)
    };
    let s = &gpu.stream;
    let d_x = upload(gpu, &x)?;
    let d_q = upload(gpu, &w.qweight)?;
    let d_z = upload(gpu, &w.qzeros)?;
    let d_s = upload(gpu, &w.scales)?;
    let d_p = upload(gpu, w.perm.as_deref().unwrap_or(&[]))?;
    let d_b = upload(gpu, w.bias.as_deref().unwrap_or(&[]))?;
    let d_y = upload(gpu, &vec![f16::NAN; c.m * c.n])?;
    let d_ws = upload(gpu, &vec![f32::NAN; c.m * c.n])?; // launch zeroes it when split-K is on
    let (px, _gx) = d_x.device_ptr(s);
    let (pq, _gq) = d_q.device_ptr(s);
    let (pz, _gz) = d_z.device_ptr(s);
    let (ps, _gs) = d_s.device_ptr(s);
    let (pp, _gp) = d_p.device_ptr(s);
    let (pb, _gb) = d_b.device_ptr(s);
    let (py, _gy) = d_y.device_ptr(s);
    let (pw, _gw) = d_ws.device_ptr(s);
    let p = lab_gemm_params {
        x: px,
        qweight: pq,
        qzeros: if w.qzeros.is_empty() { 0 } else { pz },
        scales: ps,
        g_idx: 0,
        perm: if w.perm.is_some() { pp } else { 0 },
        bias: if w.bias.is_some() { pb } else { 0 },
        y: py,
        workspace: pw,
        m: c.m as i32,
        n: c.n as i32,
        k: c.k as i32,
        group_size: w.group_size as i32,
        groups: w.groups as i32,
        zero_mode: w.zero_mode,
        split_k,
        k_slice,
        prefetch_bytes: 0,
        x_glu: 0,
        ld_w: 0,
    };
    gemm::launch(gpu, v, &p)?;
    gpu.sync()?;
    let y: Vec<f16> = s.clone_dtoh(&d_y).ctx("download y")?;
    let (want, mag) = reference(&ql, &x, c.m);
    let mut bad = Vec::new();
    let mut worst = (0f64, 0usize);
    for (i, ((g, wv), mg)) in y.iter().zip(&want).zip(&mag).enumerate() {
        let g = g.to_f64();
        let err = (g - wv).abs();
        let bound = REL_SUM * mg + REL_OUT * wv.abs() + 1e-6;
        if g.is_nan() || err > bound {
            bad.push(format!(
                "y[{}][{}] = {g} want {wv} (bound {bound:.3e})",
                i / c.n,
                i % c.n
            ));
        }
        if err / bound > worst.0 || g.is_nan() {
            worst = (
                if g.is_nan() {
                    f64::INFINITY
                } else {
                    err / bound
                },
                i,
            );
        }
    }
    let line = format!(
        "{} m={} n={} k={} group={} sym={} act={} bias={} split_k={split_k} k_slice={k_slice} seed={seed}",
        v.name, c.m, c.n, c.k, c.group, c.sym, c.act, c.bias
    );
    if bad.is_empty() {
        eprintln!("ok   {line}  worst err/bound {:.3}", worst.0);
        Ok(None)
    } else {
        let msg = format!(
            "FAIL {line}: {} of {} wrong; first: {}",
            bad.len(),
            y.len(),
            bad.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
        );
        eprintln!("{msg}");
        Ok(Some(msg))
    }
}

#[test]
fn gemm_matches_reference_on_gpu() {
    let Some(gpu) = gpu_or_skip("gemm_matches_reference_on_gpu") else {
        return;
    };
    eprintln!(
        "device: {} sm_{} x{} SMs",
        gpu.info.name,
        gpu.sm(),
        gpu.info.sms
    );
    let mut failures = Vec::new();
    for v in VARIANTS {
        if gpu.sm() < v.min_sm {
            crate::util::note_skip(
                v.name,
                &format!("needs sm_{}, device is sm_{}", v.min_sm, gpu.sm()),
            );
            continue;
        }
        // GEMM_GPU_QUICK=1 (e.g. under compute-sanitizer) leaves out the 4096 x 4096 cases.
        let quick = std::env::var("GEMM_GPU_QUICK").is_ok_and(|q| q == "1");
        for (i, c) in cases().iter().enumerate() {
            if quick && c.k * c.n > 4_000_000 {
                continue;
            }
            match run_case(&gpu, v, c, 1000 + i as u64) {
                Ok(None) => {}
                Ok(Some(msg)) => failures.push(msg),
                Err(e) => failures.push(format!("ERROR {} case {i}: {e}", v.name)),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} GEMM case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
