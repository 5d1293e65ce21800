//! What a weight upload reports: per-phase times and host-memory peaks (`LoadStats`), and the
//! per-layer progress on stderr (`LoadBar`): an indicatif bar on a terminal, one plain line per
//! layer otherwise (logs, CI), like `lab tune`.

use serde::{Deserialize, Serialize};

/// Where a weight upload spent its time, and the most host memory it held at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    pub layers: usize,
    /// Copying out of the mapping and converting to canonical form (zeros, dtypes).
    pub read_s: f64,
    /// Fusion and act-order reorder.
    pub layout_s: f64,
    /// Host-to-device copies, waited for.
    pub upload_s: f64,
    /// Wall time of the whole upload (preflight excluded).
    pub total_s: f64,
    /// Largest layer's host bytes: canonical form + laid-out form, alive together.
    pub peak_layer_host_bytes: u64,
    /// Largest of the embedding / final norm / lm_head host copies.
    pub peak_table_host_bytes: u64,
    /// q|k|v or gate|up groups uploaded as separate slots, and why (`gpu_layout::Fusion`).
    pub unfused: Vec<String>,
}

pub struct LoadBar {
    bar: Option<indicatif::ProgressBar>,
    /// No terminal: one line per layer instead of the bar.
    lines: bool,
    layers: usize,
}

impl LoadBar {
    /// `on`: the source wants progress shown (CLI loads); tests and random models stay quiet.
    pub fn new(on: bool, layers: usize, source: &str) -> Self {
        if !on {
            return LoadBar {
                bar: None,
                lines: false,
                layers,
            };
        }
        let bar = indicatif::ProgressBar::new(layers as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "loading {prefix} {bar:30} {pos}/{len} layers, {elapsed} (eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(source.to_string());
        // The bar hides itself when stderr is not a terminal: print one line per layer there.
        let lines = bar.is_hidden();
        LoadBar {
            bar: Some(bar),
            lines,
            layers,
        }
    }

    pub fn layer_done(&self, i: usize, host_bytes: u64, secs: f64) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(i as u64 + 1);
        let msg = format!(
            "layer {i}: {:.1} MB on the host, {:.2} s",
            host_bytes as f64 / 1e6,
            secs
        );
        if self.lines {
            eprintln!("[{}/{}] {msg}", i + 1, self.layers);
        } else {
            bar.set_message(msg);
        }
    }

    pub fn finish(&self, s: &LoadStats) {
        let Some(bar) = &self.bar else { return };
        bar.finish_and_clear();
        eprintln!(
            "loaded {} layers in {:.2} s (read {:.2} s, layout {:.2} s, upload {:.2} s); host peak {:.1} MB per layer, {:.1} MB per table",
            s.layers,
            s.total_s,
            s.read_s,
            s.layout_s,
            s.upload_s,
            s.peak_layer_host_bytes as f64 / 1e6,
            s.peak_table_host_bytes as f64 / 1e6
        );
        if let Some(first) = s.unfused.first() {
            eprintln!(
                "note: {} q|k|v / gate|up groups run as separate launches; first: {first}",
                s.unfused.len()
            );
        }
    }
}
