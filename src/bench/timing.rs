//! Event timing of kernel launches.

use crate::bench::stats::Timing;
use crate::cuda::Gpu;
use crate::error::DriverCtx;
use crate::{LabError, Result};
use cudarc::driver::sys::CUevent_flags;

#[derive(Debug, Clone, Copy)]
pub struct TimingConfig {
    /// Untimed launches first: module load, clocks ramping, first-touch page faults.
    pub warmup: usize,
    /// Timed launches, each between its own pair of events.
    pub iters: usize,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            warmup: 10,
            iters: 100,
        }
    }
}

impl TimingConfig {
    /// For sweeps inside the 7-minute device check.
    pub fn quick() -> Self {
        TimingConfig {
            warmup: 5,
            iters: 30,
        }
    }
}

/// Times `launch(i)` `cfg.iters` times after `cfg.warmup` untimed calls. `i` counts up from 0 so
/// the caller can rotate weight copies (`i % copies`). Each launch gets its own start/stop events,
/// all recorded back to back on the stream; one synchronize at the end, so host gaps between
/// launches do not enter the numbers as long as the GPU stays ahead of the host.
pub fn time_launches(
    gpu: &Gpu,
    cfg: &TimingConfig,
    launch: impl FnMut(usize) -> Result<()>,
) -> Result<Timing> {
    let samples = launch_samples_us(gpu, cfg, launch)?;
    Timing::from_samples(&samples).ok_or_else(|| {
        LabError::invalid("timing", "no valid samples (iters = 0 or non-finite times)")
    })
}

/// The per-launch event times (microseconds) behind `time_launches`, in launch order: for callers
/// that aggregate themselves (criterion's `iter_custom` wants the total of `iters` launches).
pub fn launch_samples_us(
    gpu: &Gpu,
    cfg: &TimingConfig,
    mut launch: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<f64>> {
    for i in 0..cfg.warmup {
        launch(i)?;
    }
    gpu.sync()?;
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut events = Vec::with_capacity(cfg.iters);
    for i in 0..cfg.iters {
        let start = gpu
            .stream
            .record_event(flags)
            .ctx("recording start event")?;
        launch(cfg.warmup + i)?;
        let stop = gpu.stream.record_event(flags).ctx("recording stop event")?;
        events.push((start, stop));
    }
    gpu.sync()?;
    let mut samples = Vec::with_capacity(cfg.iters);
    for (a, b) in &events {
        samples.push(a.elapsed_ms(b).ctx("reading event time")? as f64 * 1e3);
    }
    Ok(samples)
}

/// Back-to-back timing: `cfg.iters` event pairs, each around `per_pair` consecutive launches
/// (launch indices keep counting up, so the caller's copy rotation carries on exactly as in
/// `time_launches`). Each sample is one pair's time divided by `per_pair`: the per-launch time
/// with the launch gaps overlapped by the queue, i.e. without most of the per-launch fixed cost
/// that one event pair per launch includes. `time_launches` minus this is that fixed cost.
pub fn time_back_to_back(
    gpu: &Gpu,
    cfg: &TimingConfig,
    per_pair: usize,
    launch: impl FnMut(usize) -> Result<()>,
) -> Result<Timing> {
    let samples = back_to_back_samples_us(gpu, cfg, per_pair, launch)?;
    Timing::from_samples(&samples).ok_or_else(|| {
        LabError::invalid(
            "timing",
            "no valid back-to-back samples (iters = 0 or non-finite times)",
        )
    })
}

/// The per-launch averages behind `time_back_to_back`, one per event pair, in order.
pub fn back_to_back_samples_us(
    gpu: &Gpu,
    cfg: &TimingConfig,
    per_pair: usize,
    mut launch: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<f64>> {
    if per_pair == 0 {
        return Err(LabError::invalid(
            "back-to-back launches",
            "launches per event pair must be at least 1",
        ));
    }
    for i in 0..cfg.warmup {
        launch(i)?;
    }
    gpu.sync()?;
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut events = Vec::with_capacity(cfg.iters);
    let mut i = cfg.warmup;
    for _ in 0..cfg.iters {
        let start = gpu
            .stream
            .record_event(flags)
            .ctx("recording start event")?;
        for _ in 0..per_pair {
            launch(i)?;
            i += 1;
        }
        let stop = gpu.stream.record_event(flags).ctx("recording stop event")?;
        events.push((start, stop));
    }
    gpu.sync()?;
    let mut samples = Vec::with_capacity(cfg.iters);
    for (a, b) in &events {
        samples.push(per_launch_us(
            a.elapsed_ms(b).ctx("reading event time")?,
            per_pair,
        ));
    }
    Ok(samples)
}

/// One event pair's milliseconds spread over its launches, in microseconds.
fn per_launch_us(pair_ms: f32, per_pair: usize) -> f64 {
    f64::from(pair_ms) * 1e3 / per_pair as f64
}

/// How many copies of a `bytes_per_copy` working set to rotate so that their total is at least
/// twice the L2 (H100: 50 MB L2 -> a 4096x4096 int4 layer of 8.4 MB needs 12 copies), capped at 64.
pub fn copies_to_exceed_l2(l2_bytes: u64, bytes_per_copy: u64) -> usize {
    if bytes_per_copy == 0 {
        return 1;
    }
    (2 * l2_bytes).div_ceil(bytes_per_copy).clamp(1, 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rotation_exceeds_twice_l2() {
        let l2 = 50 * 1024 * 1024;
        let layer = 4096 * 4096 / 2 + 32 * 4096 * 2;
        let c = copies_to_exceed_l2(l2, layer);
        assert!(c as u64 * layer >= 2 * l2);
        assert!((c as u64 - 1) * layer < 2 * l2);
        assert_eq!(copies_to_exceed_l2(l2, 1 << 30), 1);
        assert_eq!(copies_to_exceed_l2(l2, 1), 64);
        // An empty working set still has its one copy to launch on (callers index i % copies).
        assert_eq!(copies_to_exceed_l2(l2, 0), 1);
    }

    #[test]
    fn a_pair_of_many_launches_is_divided_per_launch() {
        assert!((per_launch_us(0.5, 20) - 25.0).abs() < 1e-9);
        assert!((per_launch_us(0.012, 1) - 12.0).abs() < 1e-6);
    }
}
