//! `lab quantize`: an fp16 LLaMA/Vicuna checkpoint in, a GPTQ checkpoint out.
//!
//! Layer by layer, true sequential: the calibration sequences' hidden states enter layer i as the
//! *quantized* layers 0..i-1 left them; inside the layer the stages q/k/v, o, gate/up, down are
//! quantized in turn, each stage's Hessian built from inputs computed with the stages before it
//! already quantized. Memory (`memory`): one layer's weights as f32, one Hessian and the solver's
//! factors, one chunk of sequences; the hidden states between layers live in a file in the
//! staging folder, each quantized linear goes to the output file as soon as it is solved, and the
//! source checkpoint is mapped only while one layer is copied out.
//!
//! Input checks and layer loading: `source`; staging and writing the output: `output`; the
//! activation store and the RAM bound: `memory`.

use super::calib::{self, CalibSource};
use super::layer_forward::{layer_pass, linear_mut, Stage};
use super::memory::{peak_rss_bytes, ram_bound_bytes, release_freed, ActivationStore};
use super::output::{prepare_out, publish, StreamedModel};
use super::source::{check_fp16_source, load_layer};
use crate::gptq::measure::hessian_relative_error;
use crate::gptq::{
    quantize_gptq, quantize_rtn, GptqParams, Hessian, HessianBackend, HessianView, QuantLinear,
    ZeroFormat,
};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::ModelConfig;
use crate::reference::dequantize;
use crate::{LabError, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
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
    /// How the Hessians' x x^T sums are formed (`HessianBackend::auto()`: AMX bf16 tiles where the
    /// CPU has them, else f32).
    pub hessian: HessianBackend,
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
    #[serde(serialize_with = "crate::util::ser_path")]
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
    /// Peak resident set of this process so far (VmHWM), bytes; `None` without /proc.
    pub peak_rss_bytes: Option<u64>,
    /// `memory::ram_bound_bytes` for this model, seqlen and nsamples: what the large buffers need
    /// at most. The measured peak adds the program itself (~12 MiB: code, runtime, the
    /// calibration text), ~1.3 MiB per rayon thread (its allocator arena and faer's scratch) and
    /// the allocator's slack: 23.5 MiB in all with 2 threads, 62.5 with 32 (hidden 768,
    /// tests/quantize_ram.rs, which holds a 2-thread run to bound + 32 MiB).
    pub ram_bound_bytes: u64,
    /// The Hessian backend that ran ("f32" or "bf16-amx").
    pub hessian: &'static str,
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

/// Quantize, write to `o.out` (complete or not at all), and summarize. Each quantized linear is
/// written to the staged output as soon as it is solved; the hidden states live in a staging file.
pub fn quantize_checkpoint(o: &QuantizeOptions) -> Result<QuantizeSummary> {
    let t_start = Instant::now();
    check_options(o)?;
    // Before any work: the output must be new or empty, and its folder writable.
    let staging = prepare_out(&o.out)?;
    let plan = plan(o, &Checkpoint::open(&o.checkpoint)?)?;
    let built = staging.path().join("checkpoint");
    let mut out = StreamedModel::create(&o.checkpoint, &plan.params, o.format, &built)?;
    let mut store = ActivationStore::in_file(
        &staging.path().join("activations.f32"),
        plan.windows.len(),
        plan.seqlen * plan.cfg.hidden_size,
    )?;
    let stats = sequential_pass(
        o,
        &plan,
        Weights::Reopen(&o.checkpoint),
        &mut store,
        &mut |prefix, q| out.linear(&prefix, &q),
    )?;
    drop(store);
    out.finish(o.method)?;
    publish(&built, &o.out)?;
    Ok(QuantizeSummary {
        out: o.out.clone(),
        method: o.method,
        group_size: plan.params.group_size,
        act_order: plan.params.act_order,
        static_groups: plan.params.static_groups,
        sym: plan.params.sym,
        format: o.format.config_name(),
        damp_percent: plan.params.damp_percent,
        calib: o.calib.describe(),
        calib_tokens: plan.windows.len() * plan.seqlen,
        seqlen: plan.seqlen,
        nsamples: plan.windows.len(),
        linears: stats,
        seconds: t_start.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
        ram_bound_bytes: ram_bound_bytes(&plan.cfg, plan.seqlen, plan.windows.len()),
        hessian: Hessian::with_backend(1, o.hessian).backend().name(),
    })
}

/// The numeric flags, before any file is touched (each is otherwise seen only deep in the pass,
/// or misreported as something else: --nsamples 0 as a too-short text).
fn check_options(o: &QuantizeOptions) -> Result<()> {
    let damp = o.params.damp_percent;
    if !(damp > 0.0 && damp < 1.0) {
        return Err(LabError::invalid(
            "--damp",
            format!("{damp}; expected a fraction in (0, 1), e.g. 0.01"),
        ));
    }
    if o.nsamples == Some(0) {
        return Err(LabError::invalid(
            "--nsamples",
            "0; expected >= 1 calibration sequence (leave it out to use as many as the text fills, at most 128)",
        ));
    }
    if o.seqlen == Some(0) {
        return Err(LabError::invalid(
            "--seqlen",
            "0; expected >= 1 token per calibration sequence",
        ));
    }
    if o.method == Method::Rtn && (o.params.act_order || o.params.static_groups) {
        return Err(LabError::invalid(
            "--act-order/--static-groups",
            "only mean something for GPTQ (they order rows by the Hessian); drop them for --method rtn",
        ));
    }
    Ok(())
}

/// The true-sequential pass over `ckpt` (see the module doc), everything kept in RAM: the hidden
/// states and every quantized layer. Nothing is written. The reference `quantize_checkpoint`'s
/// streamed output is tested against.
pub fn quantize_model(o: &QuantizeOptions, ckpt: &Checkpoint) -> Result<QuantizedModel> {
    quantize_model_in(o, ckpt, None)
}

/// `quantize_model` with the hidden states in a file in `act_dir` when given (as
/// `quantize_checkpoint` keeps them) instead of in RAM.
pub fn quantize_model_in(
    o: &QuantizeOptions,
    ckpt: &Checkpoint,
    act_dir: Option<&Path>,
) -> Result<QuantizedModel> {
    check_options(o)?;
    let plan = plan(o, ckpt)?;
    let (nseq, seq) = (plan.windows.len(), plan.seqlen * plan.cfg.hidden_size);
    let mut store = match act_dir {
        None => ActivationStore::in_memory(nseq, seq),
        Some(d) => ActivationStore::in_file(&d.join("activations.f32"), nseq, seq)?,
    };
    let mut layers = Vec::new();
    let stats = sequential_pass(o, &plan, Weights::Open(ckpt), &mut store, &mut |p, q| {
        layers.push((p, q));
        Ok(())
    })?;
    Ok(QuantizedModel {
        layers,
        stats,
        params: plan.params,
        seqlen: plan.seqlen,
        nsamples: nseq,
    })
}

/// Everything checked and decided before the pass.
struct Plan {
    cfg: ModelConfig,
    /// The parameters used (`min_zero` set from the format).
    params: GptqParams,
    seqlen: usize,
    windows: Vec<Vec<u32>>,
}

fn plan(o: &QuantizeOptions, ckpt: &Checkpoint) -> Result<Plan> {
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
        .unwrap_or(calib::DEFAULT_SEQLEN.min(cfg.context_len()));
    if seqlen > cfg.context_len() {
        return Err(LabError::invalid(
            "--seqlen",
            format!(
                "{seqlen} exceeds the model's context of {} positions ({})",
                cfg.context_len(),
                cfg.context_origin()
            ),
        ));
    }
    let ids = calib::load_tokens(&o.calib, &ckpt.dir, cfg.vocab_size)?;
    let windows = calib::windows(&ids, seqlen, o.nsamples, &o.calib.describe())?;
    Ok(Plan {
        cfg,
        params,
        seqlen,
        windows,
    })
}

/// Where layer weights come from: an open checkpoint (its mapped pages stay resident as they are
/// read), or a path opened anew for each layer and closed after, so the mapping never holds
/// more than one layer's pages.
enum Weights<'a> {
    Open(&'a Checkpoint),
    Reopen(&'a Path),
}

impl Weights<'_> {
    fn with<R>(&self, f: impl FnOnce(&Checkpoint) -> Result<R>) -> Result<R> {
        match self {
            Weights::Open(c) => f(c),
            Weights::Reopen(p) => f(&Checkpoint::open(p)?),
        }
    }
}

/// The pass itself: each quantized linear goes to `sink` (in model order) as soon as it is solved.
fn sequential_pass(
    o: &QuantizeOptions,
    plan: &Plan,
    src: Weights<'_>,
    store: &mut ActivationStore,
    sink: &mut dyn FnMut(String, QuantLinear) -> Result<()>,
) -> Result<Vec<LinearStats>> {
    let (cfg, params, seqlen) = (&plan.cfg, &plan.params, plan.seqlen);
    let h = cfg.hidden_size;
    src.with(|ck| {
        let (embed, _) = ck.tensor_f32("model.embed_tokens.weight")?;
        for (i, w) in plan.windows.iter().enumerate() {
            let x: Vec<f32> = w
                .iter()
                .flat_map(|&t| embed[t as usize * h..(t as usize + 1) * h].iter().copied())
                .collect();
            store.put(i, &x)?;
        }
        Ok(())
    })?;

    let inv_freq = cfg.rope_inv_freq();
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
    let mut stats = Vec::new();
    for li in 0..cfg.num_hidden_layers {
        pb.set_message(format!("layer {li}: loading"));
        let mut lw = src.with(|ck| load_layer(ck, li))?;
        for stage in Stage::ALL {
            let names = stage.linears();
            pb.set_message(format!("layer {li}: Hessian of {}", names.join("/")));
            let k = linear_mut(&mut lw, names[0]).map_or(0, |d| d.k);
            let mut hess = Hessian::with_backend(k, o.hessian);
            store.for_each(|_, x| {
                let xin = layer_pass(cfg, &inv_freq, &lw, x, seqlen, Some(stage));
                hess.add_batch(&xin, seqlen)
            })?;
            // H is read from the f32 sum in place: no f64 copy of it (8 K^2 bytes) is made.
            let hm = hess.scaled()?;
            // Between linears, freed intermediates go back to the system (see `release_freed`).
            release_freed();
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
                        let out = quantize_gptq(&d.w, k, n, &hm, params).map_err(in_layer)?;
                        (out.layer, out.proxy_loss, out.dead_rows)
                    }
                    Method::Rtn => (rtn_layer(&d.w, k, n, params).map_err(in_layer)?, 0.0, 0),
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
                drop(rtn);
                // Later stages and layers see this linear as it will run: quantized.
                d.w = dequantize(&q).into_iter().map(|v| v as f32).collect();
                sink(prefix, q)?;
                release_freed();
                pb.inc(1);
            }
        }
        pb.set_message(format!("layer {li}: outputs"));
        store.update(|_, x| layer_pass(cfg, &inv_freq, &lw, x, seqlen, None))?;
    }
    pb.finish_and_clear();
    Ok(stats)
}

/// H = I for `rtn_layer`, without its K^2 f64 entries.
struct Identity(usize);

impl HessianView for Identity {
    fn k(&self) -> usize {
        self.0
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        f64::from(u8::from(i == j))
    }
}

/// RTN through the GPTQ solver with H = I: no error is propagated, so this is exactly RTN (a
/// solver test proves it) but honours `min_zero` for v1 files.
fn rtn_layer(w: &[f32], k: usize, n: usize, p: &GptqParams) -> Result<QuantLinear> {
    let eye = Identity(k);
    let p = GptqParams {
        act_order: false,
        static_groups: false,
        ..p.clone()
    };
    Ok(quantize_gptq(w, k, n, &eye, &p)?.layer)
}
