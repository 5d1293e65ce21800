//! The sweep both criterion benches run: every registry variant of a family (plus the cuBLAS
//! baselines) x the Vicuna shapes, group 128, act-order off and on, timed cold through the lab's
//! one harness (`gptq_lab::bench::cold`, the code `lab bench` uses): criterion only decides how
//! many launches to ask for and does the statistics; each duration it gets is the sum of CUDA
//! event times around those launches.

use criterion::{BenchmarkId, Criterion, Throughput};
use gptq_lab::bench::cold::{
    family_variants, runnable_batches, ColdLayer, SweepInput, SWEEP_GROUP,
};
use gptq_lab::check::cases::VICUNA;
use gptq_lab::cuda::{gpu_or_skip, Gpu};
use gptq_lab::kernels::registry::Family;
use std::time::Duration;

/// Untimed launches before each batch of timed ones: criterion pauses between samples, and the
/// first launch after a pause can catch the clocks low.
const WARMUP_PER_CALL: usize = 2;

/// Per-benchmark budget: `warm_up` + `measure` seconds for `samples` samples (criterion's minimum
/// is 10). Override from the command line: `-- --sample-size 50 --measurement-time 5`.
pub struct Budget {
    pub samples: usize,
    pub warm_up: Duration,
    pub measure: Duration,
}

/// Runs the sweep of `family` at `batches`, or prints `SKIP <bench>: <reason>` and returns when
/// there is no usable GPU or the kernels were not built (cargo bench then exits 0).
pub fn run(bench: &str, family: Family, batches: &[usize], budget: Budget) {
    let Some(gpu) = gpu_or_skip(bench) else {
        return;
    };
    let mut c = Criterion::default()
        .sample_size(budget.samples)
        .warm_up_time(budget.warm_up)
        .measurement_time(budget.measure)
        .configure_from_args();
    let max_m = batches.iter().copied().max().unwrap_or(1);
    for &shape in VICUNA {
        for act in [false, true] {
            let input = match SweepInput::new(shape, act, max_m) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("SKIP {bench} K={} N={} act={act}: {e}", shape.k, shape.n);
                    continue;
                }
            };
            let group_name = format!(
                "{bench}_k{}_n{}_g{SWEEP_GROUP}_{}",
                shape.k,
                shape.n,
                if act { "actorder" } else { "plain" }
            );
            let mut group = c.benchmark_group(&group_name);
            for v in family_variants(family) {
                let ms = match runnable_batches(v, act, gpu.sm(), batches) {
                    Ok(ms) => ms,
                    Err(reason) => {
                        eprintln!("not run: {group_name}/{}: {reason}", v.name);
                        continue;
                    }
                };
                // Prepared and uploaded on first use, so a filtered run (`-- <group>`) uploads
                // only what it times; dropped after the variant, so one variant's copies are on
                // the device at a time.
                let mut cold: Option<ColdLayer> = None;
                for m in ms {
                    // Decimal bytes: criterion then prints GB/s, the unit of the lab's reports and
                    // of the measured ceilings.
                    group.throughput(Throughput::BytesDecimal(input.bytes_moved(v, m)));
                    let id = if family == Family::Gemv {
                        BenchmarkId::from_parameter(v.name)
                    } else {
                        BenchmarkId::new(v.name, format!("m{m}"))
                    };
                    group.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            timed(&gpu, &mut cold, v, &input, m, iters as usize)
                                .unwrap_or_else(|e| fail(&group_name, v.name, m, &e))
                        })
                    });
                }
            }
            group.finish();
        }
    }
    c.final_summary();
}

fn timed(
    gpu: &Gpu,
    cold: &mut Option<ColdLayer>,
    v: &'static gptq_lab::kernels::registry::Variant,
    input: &SweepInput,
    m: usize,
    iters: usize,
) -> gptq_lab::Result<Duration> {
    let layer = match cold.take() {
        Some(c) => c,
        None => ColdLayer::new(gpu, v, input)?,
    };
    cold.insert(layer).total(gpu, m, WARMUP_PER_CALL, iters)
}

/// A launch that fails mid-benchmark is a real error, not a number: say which and stop.
fn fail(group: &str, variant: &str, m: usize, e: &gptq_lab::LabError) -> ! {
    eprintln!("error: {group}/{variant} m={m}: {e}");
    std::process::exit(1)
}
