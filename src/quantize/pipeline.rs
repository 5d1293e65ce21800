//! `lab quantize`: an fp16 LLaMA/Vicuna checkpoint in, a GPTQ checkpoint out.
//!
//! Layer by layer, true sequential: the calibration sequences' hidden states enter layer i as the
//! *quantized* layers 0..i-1 left them; inside the layer the stages q/k/v, o, gate/up, down are
//! quantized in turn, each stage's Hessian built from inputs computed with the stages before it
//! already quantized. Memory: the calibration hidden states (sequences x seqlen x hidden f32), one
//! layer's weights as f32, one Hessian (K^2 f32 plus the solver's f64 factor); the checkpoint
//! stays memory-mapped. The quantized layers are kept (4.5 bits per weight) until the end, when
//! the writer serializes everything at once.
//!
//! Input checks and layer loading: `source`; staging and writing the output: `output`.

use super::calib::{self, CalibSource};
use super::layer_forward::{layer_pass, linear_mut, Stage};
use super::output::{prepare_out, publish, write_model};
use super::source::{check_fp16_source, load_layer};
use crate::gptq::measure::hessian_relative_error;
use crate::gptq::{quantize_gptq, quantize_rtn, GptqParams, Hessian, QuantLinear, ZeroFormat};
use crate::model::checkpoint::Checkpoint;
use crate::model::cpu_engine::rope_inv_freq;
use crate::reference::dequantize;
use crate::{LabError, Result};
use faer::Mat;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Gptq,
    /// Round-to-nearest, the baseline (no calibration needed, but the same pipeline measures it).
    Rtn,
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub checkpoint: PathBuf,
    pub calib: CalibSource,
    pub out: PathBuf,
    pub method: Method,
    /// group_size, sym, act_order, static_groups, damp_percent; `min_zero` is set from `format`.
    pub params: GptqParams,
    pub format: ZeroFormat,
    /// Tokens per calibration sequence; default min(2048, the model's context).
    pub seqlen: Option<usize>,
    /// Calibration sequences; default as many as the tokens fill, at most 128.
    pub nsamples: Option<usize>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What one linear's quantization measured.
#[derive(Debug, Clone, Serialize)]
pub struct LinearStats {
    pub name: String,
    pub k: usize,
    pub n: usize,
    /// Relative output error ||X (W - Wq)|| / ||X W|| over the calibration inputs, for RTN ...
    pub rtn_error: f64,
    /// ... and for what was written.
    pub error: f64,
    pub proxy_loss: f64,
    pub dead_rows: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuantizeSummary {
    pub out: PathBuf,
    pub method: Method,
    pub group_size: i32,
    pub act_order: bool,
    pub static_groups: bool,
    pub sym: bool,
    pub format: &'static str,
    pub damp_percent: f64,
    pub calib: String,
    pub calib_tokens: usize,
    pub seqlen: usize,
    pub nsamples: usize,
    pub linears: Vec<LinearStats>,
    pub seconds: f64,
}

/// The quantized linears in memory, with what was measured.
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    /// (state-dict prefix, layer), in model order.
    pub layers: Vec<(String, QuantLinear)>,
    pub stats: Vec<LinearStats>,
    /// The parameters actually used (`min_zero` set from the format).
    pub params: GptqParams,
    pub seqlen: usize,
    pub nsamples: usize,
}

/// Quantize, write to `o.out` (complete or not at all), and summarize.
pub fn quantize_checkpoint(o: &QuantizeOptions) -> Result<QuantizeSummary> {
    let t_start = Instant::now();
    check_options(o)?;
    // Before any work: the output must be new or empty, and its folder writable.
    let staging = prepare_out(&o.out)?;
    let ckpt = Checkpoint::open(&o.checkpoint)?;
    let m = quantize_model(o, &ckpt)?;
    let built = staging.path().join("checkpoint");
    write_model(&ckpt, &m, o, &built)?;
    publish(&built, &o.out)?;
    Ok(QuantizeSummary {
        out: o.out.clone(),
        method: o.method,
        group_size: m.params.group_size,
        act_order: m.params.act_order,
        static_groups: m.params.static_groups,
        sym: m.params.sym,
        format: o.format.config_name(),
        damp_percent: m.params.damp_percent,
        calib: o.calib.describe(),
        calib_tokens: m.nsamples * m.seqlen,
        seqlen: m.seqlen,
        nsamples: m.nsamples,
        linears: m.stats,
        seconds: t_start.elapsed().as_secs_f64(),
    })
}

fn check_options(o: &QuantizeOptions) -> Result<()> {
    if o.method == Method::Rtn && (o.params.act_order || o.params.static_groups) {
        return Err(LabError::invalid(
            "--act-order/--static-groups",
            "only mean something for GPTQ (they order rows by the Hessian); drop them for --method rtn",
        ));
    }
    Ok(())
}

/// The true-sequential pass over `ckpt` (see the module doc); nothing is written.
pub fn quantize_model(o: &QuantizeOptions, ckpt: &Checkpoint) -> Result<QuantizedModel> {
    check_options(o)?;
    let mut params = o.params.clone();
    params.min_zero = u8::from(o.format == ZeroFormat::V1 && !params.sym);
    let cfg = ckpt.config.clone();
    check_fp16_source(ckpt)?;
    for l in cfg.layer_linears() {
        crate::gptq::group_rows(params.group_size, l.1).map_err(|r| {
            LabError::invalid(
                "--group",
                format!("{r} (linear {} of {}, K = {})", l.0, cfg.name, l.1),
            )
        })?;
    }
    let seqlen = o
        .seqlen
        .unwrap_or(calib::DEFAULT_SEQLEN.min(cfg.max_position_embeddings));
    if seqlen > cfg.max_position_embeddings {
        return Err(LabError::invalid(
            "--seqlen",
            format!(
                "{seqlen} exceeds the model's context max_position_embeddings = {}",
                cfg.max_position_embeddings
            ),
        ));
    }
    let ids = calib::load_tokens(&o.calib, &ckpt.dir, cfg.vocab_size)?;
    let windows = calib::windows(&ids, seqlen, o.nsamples, &o.calib.describe())?;

    let h = cfg.hidden_size;
    let (embed, _) = ckpt.tensor_f32("model.embed_tokens.weight")?;
    let mut hidden: Vec<Vec<f32>> = windows
        .iter()
        .map(|w| {
            w.iter()
                .flat_map(|&t| embed[t as usize * h..(t as usize + 1) * h].iter().copied())
                .collect()
        })
        .collect();
    drop(embed);

    let inv_freq = rope_inv_freq(cfg.head_dim(), cfg.rope_theta);
    let total = (cfg.num_hidden_layers * 7) as u64;
    let pb = if o.progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} linears  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut layers: Vec<(String, QuantLinear)> = Vec::new();
    let mut stats = Vec::new();
    for li in 0..cfg.num_hidden_layers {
        let mut lw = load_layer(ckpt, li)?;
        for stage in Stage::ALL {
            let names = stage.linears();
            pb.set_message(format!("layer {li}: Hessian of {}", names.join("/")));
            let k = linear_mut(&mut lw, names[0]).map_or(0, |d| d.k);
            let mut hess = Hessian::new(k);
            for x in &hidden {
                let xin = layer_pass(&cfg, &inv_freq, &lw, x, seqlen, Some(stage));
                hess.add_batch(&xin, seqlen)?;
            }
            let hm = hess.matrix()?;
            for name in names {
                let prefix = format!("model.layers.{li}.{name}");
                pb.set_message(format!("layer {li}: {name}"));
                let t0 = Instant::now();
                let d = linear_mut(&mut lw, name).ok_or_else(|| {
                    LabError::invalid("linear", format!("internal: no linear named {name}"))
                })?;
                let (k, n) = (d.k, d.n);
                let in_layer = |e: LabError| {
                    LabError::invalid(format!("quantizing '{prefix}'"), e.to_string())
                };
                let rtn = quantize_rtn(&d.w, k, n, params.group_size, params.sym, None)
                    .map_err(in_layer)?;
                let (q, proxy_loss, dead_rows) = match o.method {
                    Method::Gptq => {
                        let out = quantize_gptq(&d.w, k, n, &hm, &params).map_err(in_layer)?;
                        (out.layer, out.proxy_loss, out.dead_rows)
                    }
                    Method::Rtn => (rtn_layer(&d.w, k, n, &params).map_err(in_layer)?, 0.0, 0),
                };
                stats.push(LinearStats {
                    name: prefix.clone(),
                    k,
                    n,
                    rtn_error: hessian_relative_error(&hm, &d.w, &rtn),
                    error: hessian_relative_error(&hm, &d.w, &q),
                    proxy_loss,
                    dead_rows,
                    seconds: t0.elapsed().as_secs_f64(),
                });
                // Later stages and layers see this linear as it will run: quantized.
                d.w = dequantize(&q).into_iter().map(|v| v as f32).collect();
                layers.push((prefix, q));
                pb.inc(1);
            }
        }
        pb.set_message(format!("layer {li}: outputs"));
        for x in hidden.iter_mut() {
            *x = layer_pass(&cfg, &inv_freq, &lw, x, seqlen, None);
        }
    }
    pb.finish_and_clear();
    Ok(QuantizedModel {
        layers,
        stats,
        params,
        seqlen,
        nsamples: windows.len(),
    })
}

/// RTN through the GPTQ solver with H = I: no error is propagated, so this is exactly RTN (a
/// solver test proves it) but honours `min_zero` for v1 files.
fn rtn_layer(w: &[f32], k: usize, n: usize, p: &GptqParams) -> Result<QuantLinear> {
    let eye = Mat::<f64>::identity(k, k);
    let p = GptqParams {
        act_order: false,
        static_groups: false,
        ..p.clone()
    };
    Ok(quantize_gptq(w, k, n, &eye, &p)?.layer)
}
