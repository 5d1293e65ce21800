//! The tuner's GPU `Measurer`: each candidate is first checked on fresh random input against the
//! GPU reference matmul (the naive fp32-accumulate kernel, itself proven against f64 by
//! `lab check`) and rejected when wrong; only then timed through the one harness with cold
//! weights (copies rotated past twice the L2).
//!
//! Inputs are synthetic (random codes, scales in [2^-9, 2^-6], symmetric zeros, act-order from a
//! seeded permutation): timing does not depend on the values, and the host builds a 13B layer in
//! well under a second, which keeps `--quick` inside its two minutes.

use crate::bench::timing::{copies_to_exceed_l2, time_launches, TimingConfig};
use crate::cuda::Gpu;
use crate::error::DriverCtx;
use crate::gptq::{act_order_g_idx, pack::pack_zeros, reorder_by_group, QuantLinear, Reordered};
use crate::kernels::abi::lab_ref_matmul_params;
use crate::kernels::launch::{launch, Tunables};
use crate::kernels::layer::{prepare_with, upload, DeviceLayer};
use crate::kernels::registry::{self, ActOrder, Variant};
use crate::tune::{CandidateStatus, Choice, Measurer, ProblemKey};
use crate::{LabError, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::f16;
use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};
use std::collections::HashMap;

/// |got - ref| <= REL * |ref| + REL * rms(ref). The reference and the candidate differ by fp32
/// summation order (~1e-6 relative at K <= 14k) and one fp16 rounding of the output (2^-11 ~ 4.9e-4
/// relative); 4e-3 is 8x that, while a wrong index or a lost slice moves outputs by O(rms).
const REL: f64 = 4e-3;

struct Fixture {
    shape: (u32, u32, i32, bool),
    layer: QuantLinear,
    reordered: Option<Reordered>,
    /// fp16 W [k, n] dequantized on the host: the reference kernel's B operand.
    w_ref: CudaSlice<f16>,
    /// Per batch: x [m, k] on the device and the reference y [m, n].
    inputs: HashMap<usize, (CudaSlice<f16>, Vec<f32>)>,
    /// Uploaded copies per variant (layouts do not depend on tunables).
    layers: HashMap<&'static str, Vec<DeviceLayer>>,
}

pub struct GpuMeasurer<'a> {
    gpu: &'a Gpu,
    cfg: TimingConfig,
    fixture: Option<Fixture>,
}

impl<'a> GpuMeasurer<'a> {
    pub fn new(gpu: &'a Gpu, quick: bool) -> Self {
        GpuMeasurer {
            gpu,
            cfg: if quick {
                TimingConfig::quick()
            } else {
                TimingConfig::default()
            },
            fixture: None,
        }
    }

    fn fixture(&mut self, key: &ProblemKey) -> Result<&mut Fixture> {
        let shape = (key.n, key.k, key.group_size, key.act_order);
        if self.fixture.as_ref().is_none_or(|f| f.shape != shape) {
            self.fixture = None; // free the previous shape's device memory first
            let layer = synthetic_layer(key)?;
            let reordered = if key.act_order {
                Some(reorder_by_group(&layer)?)
            } else {
                None
            };
            let w = dequant_f16(&layer);
            let w_ref = self
                .gpu
                .stream
                .clone_htod(&w)
                .ctx("uploading the reference W")?;
            self.fixture = Some(Fixture {
                shape,
                layer,
                reordered,
                w_ref,
                inputs: HashMap::new(),
                layers: HashMap::new(),
            });
        }
        Ok(self.fixture.as_mut().unwrap())
    }

    fn try_measure(&mut self, key: &ProblemKey, choice: &Choice) -> Result<CandidateStatus> {
        let v: &'static Variant = registry::by_name(&choice.variant).ok_or_else(|| {
            LabError::invalid(
                "variant",
                format!("'{}' is not in the registry", choice.variant),
            )
        })?;
        let gpu = self.gpu;
        let cfg = self.cfg;
        let m = key.batch_bucket as usize;
        let l2 = gpu.info.l2_bytes.max(0) as u64;
        let f = self.fixture(key)?;
        if !f.inputs.contains_key(&m) {
            let inp = reference_inputs(gpu, f, m)?;
            f.inputs.insert(m, inp);
        }
        if !f.layers.contains_key(v.name) {
            let reordered = if v.act_order.contains(&ActOrder::Reordered) {
                f.reordered.as_ref()
            } else {
                None
            };
            let host = prepare_with(v, &f.layer, reordered)?;
            let first = upload(gpu, &host)?;
            let copies = copies_to_exceed_l2(l2, first.device_bytes() as u64);
            let mut v_layers = vec![first];
            for _ in 1..copies {
                v_layers.push(upload(gpu, &host)?);
            }
            f.layers.insert(v.name, v_layers);
        }
        let (x, y_ref) = &f.inputs[&m];
        let layers = &f.layers[v.name];
        let params: Tunables = choice.params.clone();
        let n = key.n as usize;

        // Correctness first, on a NaN-poisoned output.
        let mut y = gpu
            .stream
            .clone_htod(&vec![f16::NAN; m * n])
            .ctx("poisoning y")?;
        launch(gpu, v, &layers[0], x, m, &mut y, &params)?;
        let got = gpu.stream.clone_dtoh(&y).ctx("reading y")?;
        if let Some(why) = mismatch(&got, y_ref, n) {
            return Ok(CandidateStatus::Rejected {
                reason: format!("wrong result: {why}"),
            });
        }
        let t = time_launches(gpu, &cfg, |i| {
            launch(gpu, v, &layers[i % layers.len()], x, m, &mut y, &params)
        })?;
        Ok(CandidateStatus::Ok {
            median_us: t.median_us,
            iqm_us: t.iqm_us,
            p25_us: t.p25_us,
            p75_us: t.p75_us,
        })
    }
}

impl Measurer for GpuMeasurer<'_> {
    fn measure(&mut self, key: &ProblemKey, choice: &Choice) -> Result<CandidateStatus> {
        match self.try_measure(key, choice) {
            Ok(s) => Ok(s),
            Err(e) => {
                // A refused launch (bad parameters, an unknown kernel) leaves the context
                // usable; a fault in the kernel (illegal address, a trap) does not, and every
                // later call fails with it. Synchronizing tells the two apart.
                if let Err(lost) = self.gpu.ctx.synchronize() {
                    return Err(LabError::invalid(
                        "GPU",
                        format!("{e}; the CUDA context is lost ({lost:?}): the tune cannot go on"),
                    ));
                }
                Ok(CandidateStatus::Rejected {
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Random codes, scales in [2^-9, 2^-6], symmetric zeros (8), act-order through a seeded permutation.
pub fn synthetic_layer(key: &ProblemKey) -> Result<QuantLinear> {
    let (k, n) = (key.k as usize, key.n as usize);
    let gs = if key.group_size < 0 {
        k
    } else {
        key.group_size as usize
    };
    if k % 8 != 0 || n % 8 != 0 || gs == 0 || k % gs != 0 {
        return Err(LabError::invalid(
            "tune key",
            format!("{key}: K, N must be multiples of 8 and the group must divide K"),
        ));
    }
    let mut rng = StdRng::seed_from_u64(
        ((key.n as u64) << 32) ^ key.k as u64 ^ ((key.act_order as u64) << 63),
    );
    let groups = k / gs;
    let qweight: Vec<u32> = (0..k / 8 * n).map(|_| rng.random::<u32>()).collect();
    let scales: Vec<f16> = (0..groups * n)
        .map(|_| f16::from_f32(rng.random_range(1.0f32 / 512.0..1.0 / 64.0)))
        .collect();
    let qzeros = pack_zeros(&vec![8u8; groups * n], groups, n);
    let g_idx = key.act_order.then(|| {
        let mut order: Vec<usize> = (0..k).collect();
        order.shuffle(&mut rng);
        act_order_g_idx(&order, gs)
    });
    Ok(QuantLinear {
        k,
        n,
        group_size: gs,
        qweight,
        qzeros,
        scales,
        g_idx,
        bias: None,
        symmetric: true,
    })
}

/// fp16 W [k, n] = scale * (q - zero), computed in f32 and rounded once.
fn dequant_f16(l: &QuantLinear) -> Vec<f16> {
    let mut w = vec![f16::ZERO; l.k * l.n];
    for k in 0..l.k {
        let g = l.group_of(k);
        for n in 0..l.n {
            let q = l.code(k, n) as f32 - l.zero(g, n) as f32;
            w[k * l.n + n] = f16::from_f32(q * l.scales[g * l.n + n].to_f32());
        }
    }
    w
}

/// Fresh x [m, k] (|x| in [1/16, 1], random sign: never zero) and y = x . W by the reference kernel.
fn reference_inputs(gpu: &Gpu, f: &Fixture, m: usize) -> Result<(CudaSlice<f16>, Vec<f32>)> {
    let (k, n) = (f.layer.k, f.layer.n);
    let mut rng = StdRng::seed_from_u64(0x7e57 ^ (m as u64) << 32 ^ k as u64 ^ (n as u64) << 16);
    let xh: Vec<f16> = (0..m * k)
        .map(|_| {
            let mag = rng.random_range(0.0625f32..1.0);
            f16::from_f32(if rng.random_bool(0.5) { mag } else { -mag })
        })
        .collect();
    let x = gpu.stream.clone_htod(&xh).ctx("uploading x")?;
    let mut y = gpu
        .stream
        .alloc_zeros::<f16>(m * n)
        .ctx("allocating reference y")?;
    let func = gpu.function("lab_ref_matmul_f16")?;
    {
        let (a, _ga) = x.device_ptr(&gpu.stream);
        let (b, _gb) = f.w_ref.device_ptr(&gpu.stream);
        let (c, _gc) = y.device_ptr_mut(&gpu.stream);
        let p = lab_ref_matmul_params {
            a,
            b,
            c,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            _pad: 0,
        };
        let lc = LaunchConfig {
            grid_dim: (n.div_ceil(256) as u32, m as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: a is [m, k], b is [k, n], c is [m, n] fp16, all live; the kernel bounds-checks n and m.
        unsafe { gpu.stream.launch_builder(&func).arg(&p).launch(lc) }.ctx("reference matmul")?;
    }
    let y = gpu.stream.clone_dtoh(&y).ctx("reading reference y")?;
    Ok((x, y.iter().map(|v| v.to_f32()).collect()))
}

/// The first element beyond tolerance (or not finite), described; None when all agree.
pub fn mismatch(got: &[f16], want: &[f32], n: usize) -> Option<String> {
    let rms =
        (want.iter().map(|w| (*w as f64).powi(2)).sum::<f64>() / want.len().max(1) as f64).sqrt();
    got.iter().zip(want).enumerate().find_map(|(i, (g, w))| {
        let (g, w) = (g.to_f64(), *w as f64);
        let tol = REL * w.abs() + REL * rms;
        // NaN (an unwritten or poisoned output) compares false, so it is a mismatch too.
        let within = (g - w).abs() <= tol;
        (!within).then(|| {
            format!(
                "y[{}][{}] = {g} vs reference {w} (tolerance {tol:.3e})",
                i / n,
                i % n
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_catches_wrong_and_unwritten_outputs() {
        let want = vec![1.0f32, -2.0, 0.5, 0.0];
        let ok: Vec<f16> = want.iter().map(|&w| f16::from_f32(w)).collect();
        assert!(mismatch(&ok, &want, 2).is_none());
        let mut bad = ok.clone();
        bad[3] = f16::NAN;
        assert!(mismatch(&bad, &want, 2).unwrap().contains("y[1][1]"));
        bad[3] = f16::from_f32(0.1);
        assert!(
            mismatch(&bad, &want, 2).is_some(),
            "0.1 vs 0 is beyond 4e-3 * rms"
        );
    }

    #[test]
    fn synthetic_layers_are_valid_and_act_order_is_real() {
        let key = ProblemKey {
            n: 64,
            k: 256,
            group_size: 128,
            act_order: true,
            batch_bucket: 1,
        };
        let l = synthetic_layer(&key).unwrap();
        assert!(l.validate().is_ok());
        assert!(l.is_act_order());
        let w = dequant_f16(&l);
        let r = crate::reference::dequantize(&l);
        for (a, b) in w.iter().zip(&r) {
            assert!((a.to_f64() - b).abs() <= b.abs() * 1e-3 + 1e-7);
        }
        let bad = ProblemKey { k: 100, ..key };
        assert!(synthetic_layer(&bad).is_err());
    }
}

/// GPU tests of the tuner's oracle and measurer; each skips with a reason without a GPU. Small
/// shapes only (well under 5 s on an H100). Run alone: `cargo test --release --lib tune::gpu`.
#[cfg(test)]
mod gpu_tests {
    use super::*;
    use crate::cuda::gpu_or_skip;

    /// The reference kernel `lab_ref_matmul_f16` (the tuner's correctness oracle) against the f64
    /// host matmul of the same fp16 x and W: fp32 accumulation plus one fp16 rounding of y
    /// (2^-11 relative) is far inside 1e-3 * |y| + 1e-3 * rms(y); a wrong index, a missed column
    /// past N = 200 (one 256-thread block, partly masked) or row of m is O(rms).
    #[test]
    fn reference_matmul_kernel_matches_the_f64_host_matmul() {
        let Some(gpu) = gpu_or_skip("reference_matmul_kernel_matches_the_f64_host_matmul") else {
            return;
        };
        let (k, n) = (288usize, 200usize);
        let key = ProblemKey {
            n: n as u32,
            k: k as u32,
            group_size: 32,
            act_order: false,
            batch_bucket: 1,
        };
        let mut meas = GpuMeasurer::new(&gpu, true);
        let f = meas.fixture(&key).unwrap();
        let w: Vec<f64> = dequant_f16(&f.layer).iter().map(|v| v.to_f64()).collect();
        let mut failures = Vec::new();
        for m in [1usize, 3, 17] {
            let (x, y_gpu) = reference_inputs(&gpu, f, m).unwrap();
            let xh: Vec<f64> = gpu
                .stream
                .clone_dtoh(&x)
                .unwrap()
                .iter()
                .map(|v| v.to_f64())
                .collect();
            assert_eq!((xh.len(), y_gpu.len()), (m * k, m * n), "m={m}");
            let want = crate::reference::matmul_f64(&xh, m, k, &w, n);
            let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
            assert!(rms > 0.0, "m={m}: the reference y is all zero");
            let bad: Vec<String> = y_gpu
                .iter()
                .zip(&want)
                .enumerate()
                .filter(|(_, (g, w))| {
                    // NaN compares false: an unwritten output is a mismatch too.
                    let within = (f64::from(**g) - **w).abs() <= 1e-3 * w.abs() + 1e-3 * rms;
                    !within
                })
                .take(8)
                .map(|(i, (g, w))| format!("y[{}][{}] = {g} vs {w}", i / n, i % n))
                .collect();
            eprintln!(
                "m={m} K={k} N={n}: {} mismatches (rms {rms:.3e})",
                bad.len()
            );
            if !bad.is_empty() {
                failures.push(format!("m={m}: {}", bad.join("; ")));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// `GpuMeasurer` on one small key: a registered, compiled candidate is checked and timed
    /// (ordered quartiles, positive); a tunable value with no compiled instantiation and a variant
    /// outside the registry come back as `Rejected` naming what was wrong, not as a panic or a time.
    #[test]
    fn gpu_measurer_times_a_valid_candidate_and_rejects_bad_ones_by_name() {
        let Some(gpu) =
            gpu_or_skip("gpu_measurer_times_a_valid_candidate_and_rejects_bad_ones_by_name")
        else {
            return;
        };
        let key = ProblemKey {
            n: 256,
            k: 512,
            group_size: 128,
            act_order: false,
            batch_bucket: 1,
        };
        let mut meas = GpuMeasurer::new(&gpu, true);
        match meas.measure(&key, &Choice::new("gemv_v2_vec")).unwrap() {
            CandidateStatus::Ok {
                median_us,
                iqm_us,
                p25_us,
                p75_us,
            } => {
                eprintln!("gemv_v2_vec {key}: median {median_us:.2} us, iqm {iqm_us:.2} us");
                assert!(
                    0.0 < p25_us && p25_us <= median_us && median_us <= p75_us,
                    "p25 {p25_us} median {median_us} p75 {p75_us}"
                );
                assert!(iqm_us.is_finite() && iqm_us > 0.0, "iqm {iqm_us}");
            }
            other => panic!("gemv_v2_vec on {key}: {other:?}"),
        }
        let uncompiled = Choice::new("gemv_v2_vec").with("threads", 384);
        match meas.measure(&key, &uncompiled).unwrap() {
            CandidateStatus::Rejected { reason } => assert!(
                reason.contains("threads") && reason.contains("384"),
                "{reason}"
            ),
            other => panic!("{uncompiled}: expected Rejected, got {other:?}"),
        }
        match meas
            .measure(&key, &Choice::new("gemv_v99_unregistered"))
            .unwrap()
        {
            CandidateStatus::Rejected { reason } => assert!(
                reason.contains("gemv_v99_unregistered") && reason.contains("registry"),
                "{reason}"
            ),
            other => panic!("gemv_v99_unregistered: expected Rejected, got {other:?}"),
        }
    }
}
