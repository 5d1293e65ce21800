//! VRAM accounting of the GPU engine, two ways: the driver's free-memory readings
//! (`cuMemGetInfo`) before and after each allocation phase, and the engine's own sum of the buffer
//! sizes it asked for. The two differ by allocation granularity (2 MiB pages, memory-pool
//! rounding) and by anything else resident on the card; both are reported.

use serde::{Deserialize, Serialize};

/// One allocation phase of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Weights,
    KvCache,
    /// Activations, logits, attention partials, GEMV split-K accumulator, cuBLAS workspace,
    /// the instantiated CUDA graph.
    Workspace,
    /// The prefill chunk's m-row activations, the GEMM split-K workspace, the gemm_v2 repack
    /// scratch (`gpu_engine::PrefillSizes`, in gpu_engine/prefill/sizes.rs); allocated once at engine
    /// construction.
    Prefill,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VramReport {
    pub total_bytes: u64,
    /// Used before the engine allocated anything: CUDA context, loaded kernel modules, cuBLAS
    /// handle, and whatever else was resident (other processes included).
    pub context_bytes: u64,
    /// Driver view: free memory consumed by each phase.
    pub weights_driver_bytes: u64,
    pub kv_driver_bytes: u64,
    pub workspace_driver_bytes: u64,
    /// Engine view: exact bytes requested.
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    pub workspace_bytes: u64,
    /// Prefill workspace (m-row activations, GEMM split-K workspace, repack scratch): driver view
    /// and engine view. Absent (0) in reports recorded before the GEMM prefill existed.
    #[serde(default)]
    pub prefill_driver_bytes: u64,
    #[serde(default)]
    pub prefill_bytes: u64,
    /// Highest used memory (total - free) seen at any reading.
    pub peak_used_bytes: u64,
}

/// Collects readings as the engine allocates.
#[derive(Debug, Clone, Default)]
pub struct VramLedger {
    report: VramReport,
    last_free: u64,
}

impl VramLedger {
    /// `free`, `total`: the driver's reading before the first engine allocation.
    pub fn start(free: u64, total: u64) -> Self {
        VramLedger {
            report: VramReport {
                total_bytes: total,
                context_bytes: total.saturating_sub(free),
                peak_used_bytes: total.saturating_sub(free),
                ..Default::default()
            },
            last_free: free,
        }
    }

    /// A reading after `phase`'s allocations; `own` = bytes the engine requested in it.
    pub fn phase(&mut self, phase: Phase, free: u64, own: u64) {
        let used = self.last_free.saturating_sub(free);
        let r = &mut self.report;
        match phase {
            Phase::Weights => {
                r.weights_driver_bytes += used;
                r.weights_bytes += own;
            }
            Phase::KvCache => {
                r.kv_driver_bytes += used;
                r.kv_bytes += own;
            }
            Phase::Workspace => {
                r.workspace_driver_bytes += used;
                r.workspace_bytes += own;
            }
            Phase::Prefill => {
                r.prefill_driver_bytes += used;
                r.prefill_bytes += own;
            }
        }
        self.last_free = free;
        self.observe(free);
    }

    /// Any other reading (after graph capture, after timing): only moves the peak.
    pub fn observe(&mut self, free: u64) {
        let used = self.report.total_bytes.saturating_sub(free);
        self.report.peak_used_bytes = self.report.peak_used_bytes.max(used);
    }

    pub fn report(&self) -> VramReport {
        self.report.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_take_the_drop_in_free_memory_and_peak_tracks_the_lowest_free() {
        const G: u64 = 1 << 30;
        let mut l = VramLedger::start(79 * G, 80 * G);
        l.phase(Phase::Weights, 75 * G, 4 * G - 5);
        l.phase(Phase::KvCache, 74 * G, G);
        l.observe(73 * G); // a transient (graph instantiation)
        l.phase(Phase::Workspace, 73 * G + G / 2, 1000);
        let r = l.report();
        assert_eq!(r.context_bytes, G);
        assert_eq!(
            (r.weights_driver_bytes, r.weights_bytes),
            (4 * G, 4 * G - 5)
        );
        assert_eq!(r.kv_driver_bytes, G);
        assert_eq!(r.workspace_driver_bytes, G / 2);
        assert_eq!(r.peak_used_bytes, 7 * G);
        // Free memory that grows (another process freed some) counts as zero, not a wrap-around.
        l.phase(Phase::Workspace, 78 * G, 0);
        assert_eq!(l.report().workspace_driver_bytes, G / 2);
        // The prefill phase is its own line, and a later reading moves nothing else.
        l.phase(Phase::Prefill, 78 * G - 100 * (1 << 20), 99 << 20);
        let r = l.report();
        assert_eq!(
            (r.prefill_driver_bytes, r.prefill_bytes),
            (100 << 20, 99 << 20)
        );
        assert_eq!(r.workspace_driver_bytes, G / 2);
    }

    /// The peak is the highest use seen at ANY reading, a phase's reading included: weights that
    /// took free memory from 79 GiB to 70 GiB on an 80 GiB card put the peak at 10 GiB even when
    /// no separate `observe` call follows (later readings with more free memory do not lower it).
    #[test]
    fn a_phase_reading_moves_the_peak_without_an_observe() {
        const G: u64 = 1 << 30;
        let mut l = VramLedger::start(79 * G, 80 * G);
        l.phase(Phase::Weights, 70 * G, 9 * G);
        assert_eq!(l.report().peak_used_bytes, 10 * G);
        l.phase(Phase::KvCache, 72 * G, 0);
        assert_eq!(l.report().peak_used_bytes, 10 * G);
    }

    /// Several readings of one phase (the KV cache allocated in two steps, say) add up: each
    /// takes its own drop in free memory, 2 GiB then 1 GiB here, and its own requested bytes.
    #[test]
    fn readings_of_the_same_phase_add_up() {
        const G: u64 = 1 << 30;
        let mut l = VramLedger::start(79 * G, 80 * G);
        for (phase, free) in [
            (Phase::Weights, 70 * G),
            (Phase::Weights, 69 * G),
            (Phase::KvCache, 67 * G),
            (Phase::KvCache, 66 * G),
            (Phase::Prefill, 65 * G),
            (Phase::Prefill, 63 * G),
            (Phase::Workspace, 62 * G),
            (Phase::Workspace, 61 * G),
        ] {
            l.phase(phase, free, 100);
        }
        let r = l.report();
        assert_eq!((r.weights_driver_bytes, r.weights_bytes), (10 * G, 200));
        assert_eq!((r.kv_driver_bytes, r.kv_bytes), (3 * G, 200));
        assert_eq!((r.prefill_driver_bytes, r.prefill_bytes), (3 * G, 200));
        assert_eq!((r.workspace_driver_bytes, r.workspace_bytes), (2 * G, 200));
    }

    #[test]
    fn reports_recorded_before_prefill_still_parse() {
        let old = r#"{"total_bytes":1,"context_bytes":2,"weights_driver_bytes":3,"kv_driver_bytes":4,
            "workspace_driver_bytes":5,"weights_bytes":6,"kv_bytes":7,"workspace_bytes":8,"peak_used_bytes":9}"#;
        let r: VramReport = serde_json::from_str(old).unwrap();
        assert_eq!(
            (r.workspace_bytes, r.prefill_bytes, r.prefill_driver_bytes),
            (8, 0, 0)
        );
    }
}
