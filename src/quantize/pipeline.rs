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
//! Output: written into a temp folder beside `--out` and renamed into place only when complete, so
//! a failed or interrupted run leaves nothing that looks like a checkpoint.

use super::calib::{self, CalibSource};
use super::layer_forward::{layer_pass, linear_mut, Stage};
use crate::gptq::measure::hessian_relative_error;
use crate::gptq::{quantize_gptq, quantize_rtn, GptqParams, Hessian, QuantLinear, ZeroFormat};
use crate::model::checkpoint::{write_gptq_checkpoint, Checkpoint, LinearWeights, QuantInfo};
use crate::model::config::ModelConfig;
use crate::model::cpu_engine::rope_inv_freq;
use crate::model::weights::{Dense, LayerWeights};
use crate::reference::dequantize;
use crate::{LabError, Result};
use faer::Mat;
use half::f16;
use safetensors::Dtype;
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

/// Files copied beside the weights when the source has them (tokenizer and generation settings).
const SIDE_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

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

/// Write `m` as a complete checkpoint folder `dir` (which must not exist): weights, configs with
/// the settings used, and the source's tokenizer files.
pub fn write_model(
    ckpt: &Checkpoint,
    m: &QuantizedModel,
    o: &QuantizeOptions,
    dir: &Path,
) -> Result<()> {
    let dense = dense_tensors(ckpt, &ckpt.config)?;
    let info = QuantInfo {
        bits: 4,
        group_size: m.params.group_size,
        desc_act: m.params.act_order,
        sym: m.params.sym,
        static_groups: m.params.static_groups,
        format: o.format,
        inferred: Vec::new(),
    };
    let cfg_path = ckpt.dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| LabError::io(&cfg_path, e))?;
    let cfg_json: serde_json::Value =
        serde_json::from_str(&cfg_text).map_err(|e| LabError::Json {
            path: cfg_path.clone(),
            source: e,
        })?;
    write_gptq_checkpoint(dir, &cfg_json, &m.layers, &dense, o.format, &info)?;
    record_settings(dir, &m.params, o.method)?;
    for f in SIDE_FILES {
        let src = ckpt.dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f)).map_err(|e| LabError::io(&src, e))?;
        }
    }
    Ok(())
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

/// `out` must not exist or be an empty folder; a staging folder is made beside it now, so an
/// unwritable destination fails before hours of work. Dropped on error, it takes the partial
/// output with it.
fn prepare_out(out: &Path) -> Result<tempfile::TempDir> {
    if out.exists() {
        if !out.is_dir() {
            return Err(LabError::invalid(
                "--out",
                format!("{} exists and is not a folder", out.display()),
            ));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| LabError::io(out, e))?;
        if entries.next().is_some() {
            return Err(LabError::invalid(
                "--out",
                format!(
                    "{} is not empty; lab quantize writes a whole new checkpoint into a new or empty folder",
                    out.display()
                ),
            ));
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| {
        LabError::invalid("--out", format!("cannot create {}: {e}", parent.display()))
    })?;
    tempfile::Builder::new()
        .prefix(".lab-quantize-")
        .tempdir_in(&parent)
        .map_err(|e| {
            LabError::invalid(
                "--out",
                format!("{} is not writable: {e}", parent.display()),
            )
        })
}

/// Move the finished checkpoint to `out` (an empty `out` folder is replaced).
fn publish(built: &Path, out: &Path) -> Result<()> {
    if out.is_dir() {
        std::fs::remove_dir(out).map_err(|e| {
            LabError::invalid(
                "--out",
                format!(
                    "{} could not be replaced (no longer empty?): {e}",
                    out.display()
                ),
            )
        })?;
    }
    std::fs::rename(built, out).map_err(|e| LabError::io(out, e))
}

/// The writer's quantize config carries AutoGPTQ's default damp; record the one used.
fn record_settings(dir: &Path, p: &GptqParams, method: Method) -> Result<()> {
    let patch = |v: &mut serde_json::Value| {
        if let Some(m) = v.as_object_mut() {
            m.insert("damp_percent".into(), p.damp_percent.into());
            m.insert("true_sequential".into(), true.into());
            let name = match method {
                Method::Gptq => "gptq-lab gptq",
                Method::Rtn => "gptq-lab rtn",
            };
            m.insert("quantizer".into(), name.into());
        }
    };
    for (file, key) in [
        ("quantize_config.json", None),
        ("config.json", Some("quantization_config")),
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| LabError::io(&path, e))?;
        let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LabError::Json {
            path: path.clone(),
            source: e,
        })?;
        match key {
            None => patch(&mut v),
            Some(k) => {
                if let Some(q) = v.get_mut(k) {
                    patch(q)
                }
            }
        }
        let mut s = serde_json::to_string_pretty(&v).map_err(|e| LabError::Json {
            path: path.clone(),
            source: e,
        })?;
        s.push('\n');
        // A plain write: the folder is private staging until `publish` renames it.
        std::fs::write(&path, s).map_err(|e| LabError::io(&path, e))?;
    }
    Ok(())
}

/// Refuse anything but an unquantized checkpoint whose every linear weight is fp16 with the
/// config's shape, before any work.
fn check_fp16_source(ckpt: &Checkpoint) -> Result<()> {
    if ckpt.quant.is_some() {
        return Err(LabError::bad_checkpoint(
            &ckpt.dir,
            "is already quantized (it has a quantize config or qweight tensors); lab quantize needs the fp16 original",
        ));
    }
    let cfg = &ckpt.config;
    let mut want: Vec<(String, Vec<usize>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![cfg.vocab_size, cfg.hidden_size],
        ),
        ("model.norm.weight".into(), vec![cfg.hidden_size]),
    ];
    let has_head = ckpt.tensor_meta("lm_head.weight").is_some();
    if has_head || !cfg.tie_word_embeddings {
        want.push((
            "lm_head.weight".into(),
            vec![cfg.vocab_size, cfg.hidden_size],
        ));
    }
    for i in 0..cfg.num_hidden_layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            want.push((
                format!("model.layers.{i}.{norm}.weight"),
                vec![cfg.hidden_size],
            ));
        }
        for (name, k, n) in cfg.layer_linears() {
            want.push((format!("model.layers.{i}.{name}.weight"), vec![n, k]));
        }
    }
    for (name, shape) in want {
        let file = ckpt.tensor_file(&name).to_path_buf();
        match ckpt.tensor_meta(&name) {
            None => {
                return Err(LabError::bad_checkpoint(
                    file,
                    format!("missing tensor '{name}'"),
                ))
            }
            Some((dt, _)) if dt != Dtype::F16 => {
                return Err(LabError::bad_checkpoint(
                    file,
                    format!(
                        "tensor '{name}' is {dt:?}; lab quantize reads fp16 checkpoints only \
                         (GPTQ scales and the unquantized tensors are written as fp16)"
                    ),
                ))
            }
            Some((_, s)) if s != shape => {
                return Err(LabError::bad_checkpoint(
                    file,
                    format!("tensor '{name}' has shape {s:?}, expected {shape:?} from config.json"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// One decoder layer's weights as f32 (the only layer held at a time).
fn load_layer(ckpt: &Checkpoint, i: usize) -> Result<LayerWeights> {
    let p = format!("model.layers.{i}");
    let dense = |name: &str| -> Result<Dense> {
        match ckpt.linear(&format!("{p}.{name}"))? {
            LinearWeights::Dense { k, n, w_kn } => Dense::new(k, n, w_kn, name),
            LinearWeights::Quant(_) => Err(LabError::bad_checkpoint(
                &ckpt.dir,
                format!("'{p}.{name}' is already quantized"),
            )),
        }
    };
    Ok(LayerWeights {
        attn_norm: ckpt.tensor_f32(&format!("{p}.input_layernorm.weight"))?.0,
        wq: dense("self_attn.q_proj")?,
        wk: dense("self_attn.k_proj")?,
        wv: dense("self_attn.v_proj")?,
        wo: dense("self_attn.o_proj")?,
        ffn_norm: ckpt
            .tensor_f32(&format!("{p}.post_attention_layernorm.weight"))?
            .0,
        w_gate: dense("mlp.gate_proj")?,
        w_up: dense("mlp.up_proj")?,
        w_down: dense("mlp.down_proj")?,
    })
}

/// Every tensor that is not a quantized linear, as fp16 (exact: the source is fp16). Rotary
/// frequency buffers some old checkpoints carry are dropped; loaders recompute them.
fn dense_tensors(
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
) -> Result<Vec<(String, Vec<f16>, Vec<usize>)>> {
    let quantized: std::collections::HashSet<String> = (0..cfg.num_hidden_layers)
        .flat_map(|i| {
            cfg.layer_linears()
                .into_iter()
                .map(move |(name, _, _)| format!("model.layers.{i}.{name}.weight"))
        })
        .collect();
    let mut out = Vec::new();
    for name in ckpt.tensor_names() {
        if quantized.contains(&name) || name.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        let (v, shape) = ckpt.tensor_f32(&name)?;
        if ckpt.tensor_meta(&name).map(|m| m.0) != Some(Dtype::F16) {
            return Err(LabError::bad_checkpoint(
                ckpt.tensor_file(&name),
                format!("tensor '{name}' is not fp16; lab quantize copies unquantized tensors as fp16 and will not convert them silently"),
            ));
        }
        out.push((name, v.into_iter().map(f16::from_f32).collect(), shape));
    }
    Ok(out)
}
