//! Cold-weight timing of one registry variant on one layer, shared by `lab bench` sweeps
//! (`bench::sweep`) and the criterion benches (benches/gemv.rs, benches/gemm.rs), so both measure
//! the same thing the same way: synthetic group-128 layers of the Vicuna shapes, the variant's own
//! prepared layout uploaded in enough copies to exceed twice the L2, copies rotated launch by
//! launch, CUDA events around each launch (`bench::timing`).

use crate::bench::timing::{
    copies_to_exceed_l2, launch_samples_us, time_back_to_back, time_launches, TimingConfig,
};
use crate::bench::Timing;
use crate::check::cases::Shape;
use crate::cuda::Gpu;
use crate::error::DriverCtx;
use crate::gptq::{reorder_by_group, QuantLinear, Reordered};
use crate::kernels::gemv;
use crate::kernels::launch::{launch, LayerShape, Tunables};
use crate::kernels::layer::{prepare_with, upload, DeviceLayer};
use crate::kernels::registry::{self, ActOrder, Family, Variant};
use crate::tune::gpu::synthetic_layer;
use crate::tune::ProblemKey;
use crate::Result;
use cudarc::driver::CudaSlice;
use half::f16;

/// Group size of every sweep: the Vicuna GPTQ checkpoints people run (gptq-format.md).
pub const SWEEP_GROUP: i32 = 128;

/// The cuBLAS fp16 baseline's name (the speedup denominator).
pub const CUBLAS: &str = "gemv_cublas_f16";

/// The registry variants a family's sweep times: the family itself, and for GEMM the cuBLAS
/// baselines too (they are registered with the GEMV family but take any batch).
pub fn family_variants(family: Family) -> Vec<&'static Variant> {
    registry::all()
        .into_iter()
        .filter(|v| v.family == family || (family == Family::Gemm && v.name.contains("cublas")))
        .collect()
}

/// Which of `batches` variant `v` runs on a layer with or without act-order on an `sm_XY` GPU.
/// `Err(reason)` when it cannot run the layer at all (reported, never dropped silently);
/// `Ok(empty)` when it simply serves other batches (a GEMM variant at m = 1).
pub fn runnable_batches(
    v: &Variant,
    act_order: bool,
    sm: u32,
    batches: &[usize],
) -> std::result::Result<Vec<usize>, String> {
    if act_order
        && !(v.act_order.contains(&ActOrder::Gather) || v.act_order.contains(&ActOrder::Reordered))
    {
        return Err("variant supports no act-order mode".into());
    }
    if sm < v.min_sm {
        return Err(format!("needs sm_{}", v.min_sm));
    }
    Ok(batches
        .iter()
        .copied()
        .filter(|&m| m as u32 >= v.batch.0 && m as u32 <= v.batch.1)
        .collect())
}

/// One (shape, act-order) point of a sweep: the synthetic layer, its act-order reorder (done once
/// and shared by every Reordered variant) and the activations of the largest batch.
pub struct SweepInput {
    pub shape: Shape,
    pub act_order: bool,
    pub layer: QuantLinear,
    pub reordered: Option<Reordered>,
    /// fp16 x [max_m, k], deterministic and never zero.
    pub x_host: Vec<f16>,
    pub max_m: usize,
}

impl SweepInput {
    /// Synthetic codes and scales (timing does not depend on the values; a 13B layer builds in a
    /// fraction of a second); symmetric, group 128, act-order via a seeded permutation.
    pub fn new(shape: Shape, act_order: bool, max_m: usize) -> Result<Self> {
        let key = ProblemKey {
            n: shape.n as u32,
            k: shape.k as u32,
            group_size: SWEEP_GROUP,
            act_order,
            batch_bucket: 1,
        };
        let layer = synthetic_layer(&key)?;
        let max_m = max_m.max(1);
        let x_host: Vec<f16> = (0..max_m * shape.k)
            .map(|i| f16::from_f32(((i * 7919 % 2001) as f32 - 1000.5) / 1000.0))
            .collect();
        let reordered = if act_order {
            Some(reorder_by_group(&layer)?)
        } else {
            None
        };
        Ok(SweepInput {
            shape,
            act_order,
            layer,
            reordered,
            x_host,
            max_m,
        })
    }

    /// The reorder `v` reads, if any (only Reordered variants take it).
    fn reordered_for(&self, v: &Variant) -> Option<&Reordered> {
        if v.act_order.contains(&ActOrder::Reordered) {
            self.reordered.as_ref()
        } else {
            None
        }
    }

    /// Bytes moved per launch of `v` at batch `m`, known before any preparation or upload (the
    /// criterion benches declare their throughput before the lazily prepared layer exists).
    /// `gemv::bytes_moved` only asks whether act-order rows are read (g_idx or perm: 4 B per row,
    /// the same count either way), so the unprepared layer's shape gives the prepared one's bytes;
    /// `ColdLayer::bytes_moved` is the prepared figure and a test holds the two equal.
    pub fn bytes_moved(&self, v: &Variant, m: usize) -> u64 {
        gemv::bytes_moved(v, &LayerShape::of(&self.layer, false), m)
    }
}

/// A variant's prepared layer on the device, in `copies` copies whose total exceeds twice the L2,
/// with the x and y buffers of the largest batch: what every cold-weight launch reads.
pub struct ColdLayer {
    pub variant: &'static Variant,
    /// The prepared layer's shape (what the launcher checks and `bytes_moved` counts).
    pub shape: LayerShape,
    layers: Vec<DeviceLayer>,
    x: CudaSlice<f16>,
    y: CudaSlice<f16>,
    max_m: usize,
}

impl ColdLayer {
    /// Prepares `input`'s layer for `v` on the host once, then uploads it until the copies exceed
    /// 2x L2 (H100, 50 MB L2: a 7B gate/up layer of 23 MB needs 5 copies, a 4096x4096 one 12).
    pub fn new(gpu: &Gpu, v: &'static Variant, input: &SweepInput) -> Result<Self> {
        let host = prepare_with(v, &input.layer, input.reordered_for(v))?;
        let first = upload(gpu, &host)?;
        let l2 = gpu.info.l2_bytes.max(0) as u64;
        let copies = copies_to_exceed_l2(l2, first.device_bytes() as u64);
        let mut layers = vec![first];
        for _ in 1..copies {
            layers.push(upload(gpu, &host)?);
        }
        let shape = host.shape();
        drop(host);
        let x = gpu
            .stream
            .clone_htod(&input.x_host)
            .ctx("uploading sweep x")?;
        let y = gpu
            .stream
            .alloc_zeros::<f16>(input.max_m * input.layer.n)
            .ctx("allocating sweep y")?;
        Ok(ColdLayer {
            variant: v,
            shape,
            layers,
            x,
            y,
            max_m: input.max_m,
        })
    }

    /// How many device copies are rotated.
    pub fn copies(&self) -> usize {
        self.layers.len()
    }

    pub fn bytes_moved(&self, m: usize) -> u64 {
        gemv::bytes_moved(self.variant, &self.shape, m)
    }

    fn check_m(&self, m: usize) -> Result<()> {
        if m == 0 || m > self.max_m {
            return Err(crate::LabError::invalid(
                "batch",
                format!(
                    "m={m}: the sweep's buffers hold 1..={} rows of x",
                    self.max_m
                ),
            ));
        }
        Ok(())
    }

    /// Statistics of `cfg.iters` cold launches at batch `m` (default tunables).
    pub fn time(&mut self, gpu: &Gpu, m: usize, cfg: &TimingConfig) -> Result<Timing> {
        self.check_m(m)?;
        let params = Tunables::new();
        let (v, layers, x, y) = (self.variant, &self.layers, &self.x, &mut self.y);
        time_launches(gpu, cfg, |i| {
            launch(gpu, v, &layers[i % layers.len()], x, m, y, &params)
        })
    }

    /// Back-to-back: `cfg.iters` event pairs around `per_pair` cold launches each (copies rotated
    /// launch by launch as in `time`), per-launch statistics (`bench::timing::time_back_to_back`).
    pub fn time_back_to_back(
        &mut self,
        gpu: &Gpu,
        m: usize,
        cfg: &TimingConfig,
        per_pair: usize,
    ) -> Result<Timing> {
        self.check_m(m)?;
        let params = Tunables::new();
        let (v, layers, x, y) = (self.variant, &self.layers, &self.x, &mut self.y);
        time_back_to_back(gpu, cfg, per_pair, |i| {
            launch(gpu, v, &layers[i % layers.len()], x, m, y, &params)
        })
    }

    /// The summed event time of `iters` cold launches at batch `m`, after `warmup` untimed ones:
    /// the figure criterion's `iter_custom` asks for.
    pub fn total(
        &mut self,
        gpu: &Gpu,
        m: usize,
        warmup: usize,
        iters: usize,
    ) -> Result<std::time::Duration> {
        self.check_m(m)?;
        let params = Tunables::new();
        let (v, layers, x, y) = (self.variant, &self.layers, &self.x, &mut self.y);
        let cfg = TimingConfig { warmup, iters };
        let us: f64 = launch_samples_us(gpu, &cfg, |i| {
            launch(gpu, v, &layers[i % layers.len()], x, m, y, &params)
        })?
        .iter()
        .sum();
        Ok(std::time::Duration::from_secs_f64(us * 1e-6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::cases::VICUNA;

    #[test]
    fn predicted_bytes_equal_the_prepared_layers_bytes() {
        // Small layer, every variant of both families, act-order off and on: the figure declared
        // before preparation must be the prepared layer's.
        let shape = Shape {
            k: 512,
            n: 256,
            label: "test",
        };
        for act in [false, true] {
            let input = SweepInput::new(shape, act, 4).unwrap();
            for fam in [Family::Gemv, Family::Gemm] {
                for v in family_variants(fam) {
                    if runnable_batches(v, act, 90, &[1, 2, 4]).is_err() {
                        continue;
                    }
                    let host = prepare_with(v, &input.layer, input.reordered_for(v)).unwrap();
                    for m in [1, 4] {
                        assert_eq!(
                            input.bytes_moved(v, m),
                            gemv::bytes_moved(v, &host.shape(), m),
                            "{} act={act} m={m}",
                            v.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn variants_and_batches_follow_the_registry() {
        let gemm = family_variants(Family::Gemm);
        assert!(gemm.iter().any(|v| v.name == CUBLAS));
        assert!(gemm
            .iter()
            .all(|v| v.family == Family::Gemm || v.name.contains("cublas")));
        let gemv = family_variants(Family::Gemv);
        assert!(gemv.iter().any(|v| v.name == CUBLAS));
        assert!(gemv.iter().all(|v| v.family == Family::Gemv));
        for v in registry::all() {
            match runnable_batches(v, false, 90, &[1, 2, 64]) {
                Ok(ms) => assert!(ms
                    .iter()
                    .all(|&m| m as u32 >= v.batch.0 && m as u32 <= v.batch.1)),
                Err(r) => assert!(v.min_sm > 90, "{}: {r}", v.name),
            }
            if v.act_order.iter().all(|a| *a == ActOrder::None) {
                assert!(runnable_batches(v, true, 90, &[1]).is_err(), "{}", v.name);
            }
            if v.min_sm > 75 {
                assert!(runnable_batches(v, false, 75, &[1]).is_err(), "{}", v.name);
            }
        }
        // Real shapes build their inputs: x never zero.
        let s = SweepInput::new(VICUNA[0], true, 2).unwrap();
        assert_eq!(s.x_host.len(), 2 * VICUNA[0].k);
        assert!(s.x_host.iter().all(|x| x.to_f32() != 0.0));
        assert!(s.reordered.is_some());
    }

    /// A variant runs exactly the batches of its declared range, both ends included, from its
    /// minimum arch up; every variant that declares an act-order mode (gather or reordered) runs
    /// act-order layers.
    #[test]
    fn runnable_batches_are_the_declared_range_inclusive_and_act_order_follows_the_modes() {
        let all: Vec<usize> = (1..=64).collect();
        for v in registry::all() {
            let want: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&m| (v.batch.0 as usize..=v.batch.1 as usize).contains(&m))
                .collect();
            assert_eq!(
                runnable_batches(v, false, v.min_sm, &all).as_deref(),
                Ok(&want[..]),
                "{}",
                v.name
            );
            if v.act_order.iter().any(|a| *a != ActOrder::None) {
                assert_eq!(
                    runnable_batches(v, true, v.min_sm, &all).as_deref(),
                    Ok(&want[..]),
                    "{}: {:?}",
                    v.name,
                    v.act_order
                );
            }
        }
        // Both act-order modes are exercised by some variant with batch 1 in range.
        for mode in [ActOrder::Gather, ActOrder::Reordered] {
            assert!(
                registry::all()
                    .iter()
                    .any(|v| v.act_order == [ActOrder::None, mode] && v.batch.0 <= 1),
                "{mode:?}"
            );
        }
    }
}
