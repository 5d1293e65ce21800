//! LLaMA/Vicuna model configuration: presets for the shapes this lab targets and parsing of
//! HF `config.json` (2023-era files included: `torch_dtype`, no rope fields, vocab 32001).

use crate::{LabError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Linear RoPE scaling ("position interpolation": `rope_scaling: {"type": "linear",
    /// "factor": f}`, Vicuna v1.5-16K's 4.0): positions are divided by it, so inv_freq is.
    /// 1.0 is plain RoPE. The trained context is then `max_position_embeddings * factor`.
    #[serde(default = "plain_rope")]
    pub rope_linear_factor: f64,
    pub tie_word_embeddings: bool,
}

fn plain_rope() -> f64 {
    1.0
}

/// transformers 5 nests RoPE settings: {"rope_parameters": {"rope_theta": .., "rope_type": ..,
/// "factor": ..}}.
#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    factor: Option<serde_json::Value>,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// RoPE inverse frequencies theta^(-2i/d) / factor, i < d/2: what every engine rotates by
    /// (angle pos * inv_freq[i]). Linear scaling divides the position, which is the same as
    /// dividing each frequency (transformers' linear rope type does the latter).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        crate::model::cpu_engine::rope_inv_freq(self.head_dim(), self.rope_theta)
            .into_iter()
            .map(|f| f / self.rope_linear_factor)
            .collect()
    }

    /// The positions the model was trained for: max_position_embeddings, times the linear RoPE
    /// factor where there is one (Vicuna v1.5-16K: 4096 * 4 = 16384, as FastChat counts it).
    pub fn context_len(&self) -> usize {
        (self.max_position_embeddings as f64 * self.rope_linear_factor) as usize
    }

    /// Where `context_len` comes from, for messages: "max_position_embeddings 2048" or
    /// "max_position_embeddings 4096 x linear RoPE factor 4".
    pub fn context_origin(&self) -> String {
        if self.rope_linear_factor == 1.0 {
            format!("max_position_embeddings {}", self.max_position_embeddings)
        } else {
            format!(
                "max_position_embeddings {} x linear RoPE factor {}",
                self.max_position_embeddings, self.rope_linear_factor
            )
        }
    }

    /// The quantized linears of one decoder layer as (name, K = in_features, N = out_features).
    pub fn layer_linears(&self) -> Vec<(&'static str, usize, usize)> {
        let (h, i, kv) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_key_value_heads * self.head_dim(),
        );
        vec![
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", h, kv),
            ("self_attn.v_proj", h, kv),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", h, i),
            ("mlp.up_proj", h, i),
            ("mlp.down_proj", i, h),
        ]
    }

    pub fn vicuna_7b() -> Self {
        Self::llama("vicuna-7b", 4096, 11008, 32, 32, 2048)
    }
    pub fn vicuna_13b() -> Self {
        Self::llama("vicuna-13b", 5120, 13824, 40, 40, 2048)
    }
    /// Vicuna-33B v1.3: LLaMA 1's 33B ("30B") shapes (lmsys/vicuna-33b-v1.3's config.json), the
    /// size a 24 GB card asks about. No v1.5 was released at this size.
    pub fn vicuna_33b() -> Self {
        Self::llama("vicuna-33b", 6656, 17920, 60, 52, 2048)
    }

    fn llama(name: &str, h: usize, i: usize, layers: usize, heads: usize, ctx: usize) -> Self {
        ModelConfig {
            name: name.into(),
            hidden_size: h,
            intermediate_size: i,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: heads,
            vocab_size: 32000,
            max_position_embeddings: ctx,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_linear_factor: 1.0,
            tie_word_embeddings: false,
        }
    }

    /// Vicuna v1.5 (LLaMA 2 base): the same shapes, trained at 4096 positions, LLaMA 2's
    /// rms_norm_eps 1e-5 (lmsys' config.json).
    fn v1_5(mut self, name: &str) -> Self {
        self.name = name.into();
        self.max_position_embeddings = 4096;
        self.rms_norm_eps = 1e-5;
        self
    }

    /// Vicuna v1.5-16K: v1.5 with linear RoPE scaling by 4 (lmsys' config.json), 16384 positions.
    fn v1_5_16k(self, name: &str) -> Self {
        ModelConfig {
            rope_linear_factor: 4.0,
            ..self.v1_5(name)
        }
    }

    /// The preset names `preset` takes, for messages.
    pub const PRESETS: &'static str = "vicuna-7b, vicuna-13b, vicuna-33b (v1.1 / v1.3: 2048 \
         positions), vicuna-7b-v1.5, vicuna-13b-v1.5 (4096), vicuna-7b-16k, vicuna-13b-16k (v1.5-16K: linear \
         RoPE x4, 16384)";

    /// A preset by name (`PRESETS`; also "llama-7b", "llama-13b", "llama-33b" / "llama-30b",
    /// "7b", "13b", "33b"). The presets of one size differ only in context and RoPE, never in
    /// shapes: a tuned config or a plan's weights serve all of one size.
    pub fn preset(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "vicuna-7b" | "llama-7b" | "7b" => Ok(Self::vicuna_7b()),
            "vicuna-13b" | "llama-13b" | "13b" => Ok(Self::vicuna_13b()),
            "vicuna-33b" | "vicuna-33b-v1.3" | "llama-33b" | "llama-30b" | "33b" | "30b" => {
                Ok(Self::vicuna_33b())
            }
            "vicuna-7b-v1.5" => Ok(Self::vicuna_7b().v1_5(&lower)),
            "vicuna-13b-v1.5" => Ok(Self::vicuna_13b().v1_5(&lower)),
            "vicuna-7b-16k" | "vicuna-7b-v1.5-16k" => {
                Ok(Self::vicuna_7b().v1_5_16k("vicuna-7b-16k"))
            }
            "vicuna-13b-16k" | "vicuna-13b-v1.5-16k" => {
                Ok(Self::vicuna_13b().v1_5_16k("vicuna-13b-16k"))
            }
            other => Err(LabError::invalid(
                "--model",
                format!(
                    "unknown model '{other}'; expected one of {} (or --checkpoint DIR)",
                    Self::PRESETS
                ),
            )),
        }
    }

    /// Parse an HF `config.json`. Unknown fields are ignored; missing optional ones take LLaMA's
    /// defaults (eps 1e-6, theta 10000, kv heads = heads, context 2048).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// `text` read from `path` (for messages). A key given twice anywhere in it is refused
    /// (`util::refuse_duplicate_keys`): every reader of a config.json comes through here.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Raw {
            hidden_size: Option<usize>,
            intermediate_size: Option<usize>,
            num_hidden_layers: Option<usize>,
            num_attention_heads: Option<usize>,
            num_key_value_heads: Option<usize>,
            vocab_size: Option<usize>,
            max_position_embeddings: Option<usize>,
            max_sequence_length: Option<usize>,
            rms_norm_eps: Option<f64>,
            rope_theta: Option<f64>,
            /// transformers 5 nests RoPE settings: {"rope_parameters": {"rope_theta": .., "rope_type": ..}}.
            rope_parameters: Option<RopeParameters>,
            rope_scaling: Option<serde_json::Value>,
            tie_word_embeddings: Option<bool>,
            model_type: Option<String>,
            /// Fields other LLaMA-shaped architectures set; read only to refuse what the engines
            /// do not implement (SiLU MLP, head_dim = hidden / heads, no linear biases).
            hidden_act: Option<String>,
            head_dim: Option<usize>,
            attention_bias: Option<bool>,
            mlp_bias: Option<bool>,
            _name_or_path: Option<String>,
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| LabError::Json {
            path: path.into(),
            source: e,
        })?;
        crate::util::refuse_duplicate_keys(path, text.as_bytes())?;
        let need = |v: Option<usize>, f: &str| {
            v.filter(|&x| x > 0)
                .ok_or_else(|| LabError::bad_checkpoint(path, format!("missing or zero '{f}'")))
        };
        if let Some(t) = &raw.model_type {
            if t != "llama" {
                return Err(LabError::bad_checkpoint(
                    path,
                    format!("model_type '{t}' is not supported; expected 'llama' (LLaMA/Vicuna)"),
                ));
            }
        }
        let heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let hidden = need(raw.hidden_size, "hidden_size")?;
        if hidden % heads != 0 {
            return Err(LabError::bad_checkpoint(
                path,
                format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"),
            ));
        }
        // The engines compute LLaMA's block: a SiLU-gated MLP ("swish" is transformers' other name
        // for SiLU), head_dim = hidden / heads, no biases. Anything else would load and run as
        // LLaMA with wrong results, so it is refused here where the config enters.
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" && act != "swish" {
                return Err(LabError::bad_checkpoint(
                    path,
                    format!("hidden_act '{act}' is not supported; expected 'silu' (LLaMA/Vicuna)"),
                ));
            }
        }
        if let Some(d) = raw.head_dim {
            if d != hidden / heads {
                return Err(LabError::bad_checkpoint(
                    path,
                    format!(
                        "head_dim {d} is not supported; expected hidden_size / num_attention_heads = {}",
                        hidden / heads
                    ),
                ));
            }
        }
        for (field, v) in [
            ("attention_bias", raw.attention_bias),
            ("mlp_bias", raw.mlp_bias),
        ] {
            if v == Some(true) {
                return Err(LabError::bad_checkpoint(
                    path,
                    format!("{field} true is not supported; LLaMA/Vicuna linears have no bias"),
                ));
            }
        }
        let rope_linear_factor = rope_linear_factor(&raw.rope_scaling, &raw.rope_parameters, path)?;
        // Stated in both places (a hand-merged transformers 4 / 5 file) with two values: which one
        // the writer meant cannot be told, so it is refused rather than one silently picked.
        let nested_theta = raw.rope_parameters.as_ref().and_then(|r| r.rope_theta);
        if let (Some(top), Some(nested)) = (raw.rope_theta, nested_theta) {
            if top != nested {
                return Err(LabError::bad_checkpoint(
                    path,
                    format!(
                        "rope_theta {top:?} but rope_parameters.rope_theta {nested:?}; expected \
                         one value (state it once, or the same in both)"
                    ),
                ));
            }
        }
        let rope_theta = raw.rope_theta.or(nested_theta).unwrap_or(10000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(LabError::bad_checkpoint(
                path,
                format!("rope_theta {rope_theta:?}; expected a finite value > 0 (LLaMA: 10000)"),
            ));
        }
        // eps is added to the mean square before the rsqrt: <= 0 divides by zero on a zero row,
        // and anything near 1 swamps the activations. Real models use 1e-6 .. 1e-5.
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0 && rms_norm_eps <= 1e-2) {
            return Err(LabError::bad_checkpoint(
                path,
                format!("rms_norm_eps {rms_norm_eps:?}; expected a finite value in (0, 1e-2] (LLaMA: 1e-6)"),
            ));
        }
        let kv = raw.num_key_value_heads.unwrap_or(heads);
        if kv == 0 || heads % kv != 0 {
            return Err(LabError::bad_checkpoint(
                path,
                format!("num_key_value_heads {kv} does not divide num_attention_heads {heads}"),
            ));
        }
        let name = raw
            ._name_or_path
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                path.parent()
                    .and_then(|p| p.file_name())
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "checkpoint".into());
        let max_pos = raw
            .max_position_embeddings
            .or(raw.max_sequence_length)
            .unwrap_or(2048);
        // Only a bound on the context is read from it; a value past what any KV cache here can
        // hold is a broken file, not a model (the audit's 2^64 - 1 passed every context check).
        // With linear RoPE scaling the bound is max_pos * factor (`context_len`), checked too.
        let max_ctx = crate::model::gpu_engine::MAX_CTX;
        if max_pos == 0 || max_pos as f64 * rope_linear_factor > max_ctx as f64 {
            return Err(LabError::bad_checkpoint(
                path,
                format!(
                    "max_position_embeddings {max_pos}{}; expected 1 to {max_ctx} positions",
                    if rope_linear_factor != 1.0 {
                        format!(" (x RoPE factor {rope_linear_factor})")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        Ok(ModelConfig {
            name,
            hidden_size: hidden,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            max_position_embeddings: max_pos,
            rms_norm_eps,
            rope_theta,
            rope_linear_factor,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        })
    }
}

/// The linear RoPE factor of a config: 1.0 for plain RoPE (no rope_scaling, or null, or
/// transformers 5's `rope_parameters.rope_type` "default"); `f` for the linear type (`type` or
/// `rope_type` "linear", `factor` a finite number >= 1, as transformers validates it). Every other
/// type (dynamic NTK, yarn, llama3, ...) changes the frequencies in ways the engines do not
/// implement, and would be silently misread: refused by name.
fn rope_linear_factor(
    scaling: &Option<serde_json::Value>,
    params: &Option<RopeParameters>,
    path: &Path,
) -> Result<f64> {
    let bad = |r: String| LabError::bad_checkpoint(path, r);
    // (where, type, factor) of whichever is stated; rope_scaling (transformers 4) first.
    let (field, kind, factor) = match (scaling.as_ref().filter(|v| !v.is_null()), params) {
        (Some(v), _) => {
            let o = v.as_object().ok_or_else(|| {
                bad(format!(
                    "rope_scaling {v}; expected an object with type and factor"
                ))
            })?;
            let kind = o
                .get("type")
                .or_else(|| o.get("rope_type"))
                .and_then(|t| t.as_str());
            (
                "rope_scaling",
                kind.map(str::to_string),
                o.get("factor").cloned(),
            )
        }
        (None, Some(p)) => ("rope_parameters", p.rope_type.clone(), p.factor.clone()),
        (None, None) => return Ok(1.0),
    };
    match kind.as_deref() {
        // transformers' name for plain RoPE, in either place (a missing type only where
        // rope_parameters holds just rope_theta).
        Some("default") => Ok(1.0),
        None if field == "rope_parameters" => Ok(1.0),
        Some("linear") => {
            let f = factor.as_ref().and_then(serde_json::Value::as_f64);
            match f {
                Some(f) if f.is_finite() && f >= 1.0 => Ok(f),
                _ => Err(bad(format!(
                    "{field} linear factor {}; expected a finite number >= 1 (Vicuna v1.5-16K: 4.0)",
                    factor.map_or_else(|| "missing".to_string(), |f| f.to_string())
                ))),
            }
        }
        other => Err(bad(format!(
            "RoPE scaling ({field} type {}) is not supported; expected plain RoPE or the linear \
             type (LLaMA/Vicuna v0-v1.5, v1.5-16K)",
            other.map_or_else(|| "missing".to_string(), |t| format!("'{t}'"))
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid config.json body plus `extra` fields, parsed as "m/config.json".
    fn parse(extra: &str) -> Result<ModelConfig> {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_attention_heads":4,"num_hidden_layers":1,"vocab_size":10"#;
        ModelConfig::from_json_str(&format!("{{{base},{extra}}}"), Path::new("m/config.json"))
    }

    #[test]
    fn presets_match_the_published_shapes() {
        let c = ModelConfig::vicuna_13b();
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                c.head_dim()
            ),
            (5120, 13824, 40, 128)
        );
        let l = ModelConfig::vicuna_7b().layer_linears();
        assert_eq!(l[6], ("mlp.down_proj", 11008, 4096));
        // The whole table row of ../shared/gptq-format.md ("Vicuna / LLaMA shapes") for both:
        // (hidden, layers, heads, intermediate, vocab), eps 1e-6, theta 10000, context 2048.
        for (c, row) in [
            (ModelConfig::vicuna_7b(), (4096, 32, 32, 11008, 32000)),
            (ModelConfig::vicuna_13b(), (5120, 40, 40, 13824, 32000)),
        ] {
            assert_eq!(
                (
                    c.hidden_size,
                    c.num_hidden_layers,
                    c.num_attention_heads,
                    c.intermediate_size,
                    c.vocab_size
                ),
                row,
                "{}",
                c.name
            );
            assert_eq!(c.num_key_value_heads, c.num_attention_heads, "{}", c.name);
            assert_eq!(
                (c.rms_norm_eps, c.rope_theta, c.max_position_embeddings),
                (1e-6, 10000.0, 2048),
                "{}",
                c.name
            );
            assert!(!c.tie_word_embeddings, "{}", c.name);
            // Its seven linears per layer as (name, K, N).
            let (h, i) = (row.0, row.3);
            assert_eq!(
                c.layer_linears(),
                vec![
                    ("self_attn.q_proj", h, h),
                    ("self_attn.k_proj", h, h),
                    ("self_attn.v_proj", h, h),
                    ("self_attn.o_proj", h, h),
                    ("mlp.gate_proj", h, i),
                    ("mlp.up_proj", h, i),
                    ("mlp.down_proj", i, h),
                ]
            );
        }
    }

    #[test]
    fn shapes_no_llama_engine_can_run_are_refused_naming_the_field() {
        for (extra, want) in [
            (r#""model_type":"mistral""#, "model_type 'mistral'"),
            // 4 heads in 3 KV groups.
            (
                r#""num_key_value_heads":3"#,
                "num_key_value_heads 3 does not divide num_attention_heads 4",
            ),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(
                e.contains("m/config.json") && e.contains(want),
                "{extra}: {e}"
            );
        }
        // hidden 64 over 5 heads: no integer head size.
        let text = r#"{"hidden_size":64,"intermediate_size":128,"num_attention_heads":5,"num_hidden_layers":1,"vocab_size":10}"#;
        let e = ModelConfig::from_json_str(text, Path::new("m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json")
                && e.contains("hidden_size 64 is not a multiple of num_attention_heads 5"),
            "{e}"
        );
        // Grouped-query attention that divides is read as given; "llama" is accepted.
        let c = parse(r#""num_key_value_heads":2,"model_type":"llama""#).unwrap();
        assert_eq!((c.num_attention_heads, c.num_key_value_heads), (4, 2));
    }

    #[test]
    fn config_2023_style_without_rope_fields_gets_defaults() {
        let text = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":11008,
            "num_attention_heads":32,"num_hidden_layers":32,"vocab_size":32001,"torch_dtype":"float16",
            "max_sequence_length":2048,"some_future_field":{"x":1}}"#;
        let c = ModelConfig::from_json_str(text, Path::new("x/config.json")).unwrap();
        assert_eq!(c.vocab_size, 32001);
        assert_eq!(c.num_key_value_heads, 32);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.max_position_embeddings, 2048);
    }

    #[test]
    fn transformers5_nested_rope_theta_is_read_and_scaling_refused() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_attention_heads":4,"num_hidden_layers":1,"vocab_size":10"#;
        let t = format!(
            r#"{{{base},"rope_parameters":{{"rope_theta":500000.0,"rope_type":"default"}}}}"#
        );
        let c = ModelConfig::from_json_str(&t, Path::new("c.json")).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        let t = format!(r#"{{{base},"rope_scaling":{{"type":"dynamic","factor":2.0}}}}"#);
        let e = ModelConfig::from_json_str(&t, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RoPE scaling") && e.contains("'dynamic'"), "{e}");
        let t = format!(r#"{{{base},"rope_scaling":null}}"#);
        let c = ModelConfig::from_json_str(&t, Path::new("c.json")).unwrap();
        assert_eq!(c.rope_linear_factor, 1.0);
    }

    #[test]
    fn v1_5_and_16k_presets_keep_the_shapes_and_change_only_context_and_rope() {
        for (size, base) in [
            ("7b", ModelConfig::vicuna_7b()),
            ("13b", ModelConfig::vicuna_13b()),
        ] {
            let shapes = |c: &ModelConfig| {
                (
                    c.hidden_size,
                    c.intermediate_size,
                    c.num_hidden_layers,
                    c.num_attention_heads,
                    c.vocab_size,
                )
            };
            for (name, ctx, factor) in [
                (format!("vicuna-{size}"), 2048, 1.0),
                (format!("vicuna-{size}-v1.5"), 4096, 1.0),
                (format!("vicuna-{size}-16k"), 16384, 4.0),
                (format!("Vicuna-{size}-v1.5-16K"), 16384, 4.0),
            ] {
                let c = ModelConfig::preset(&name).unwrap();
                assert_eq!(shapes(&c), shapes(&base), "{name}");
                let eps = if ctx == 2048 { 1e-6 } else { 1e-5 };
                assert_eq!(c.rms_norm_eps, eps, "{name}");
                assert_eq!(
                    (c.context_len(), c.rope_linear_factor),
                    (ctx, factor),
                    "{name}"
                );
                assert!(ModelConfig::PRESETS.contains(&c.name), "{}", c.name);
            }
        }
        let e = ModelConfig::preset("vicuna-65b").unwrap_err().to_string();
        assert!(
            e.contains("vicuna-13b-16k") && e.contains("vicuna-33b") && e.contains("--checkpoint"),
            "{e}"
        );
    }

    #[test]
    fn the_33b_preset_is_llama_33b_v1_3() {
        // lmsys/vicuna-33b-v1.3's config.json: LLaMA 1 33B, 2048 positions, eps 1e-6.
        for name in ["vicuna-33b", "Vicuna-33B-v1.3", "llama-30b", "33b"] {
            let c = ModelConfig::preset(name).unwrap();
            assert_eq!(c.name, "vicuna-33b", "{name}");
            assert_eq!(
                (
                    c.hidden_size,
                    c.intermediate_size,
                    c.num_hidden_layers,
                    c.num_attention_heads,
                    c.num_key_value_heads,
                    c.head_dim(),
                    c.vocab_size,
                    c.context_len(),
                    c.rms_norm_eps,
                ),
                (6656, 17920, 60, 52, 52, 128, 32000, 2048, 1e-6),
                "{name}"
            );
        }
        // 32.5 B parameters: 60 layers of 4 h^2 + 3 h i, plus embedding and lm_head.
        let c = ModelConfig::vicuna_33b();
        let per_layer: usize = c.layer_linears().iter().map(|(_, k, n)| k * n).sum();
        let params = 60 * per_layer + 2 * 32000 * 6656;
        assert!((32.4e9..32.6e9).contains(&(params as f64)), "{params}");
    }

    #[test]
    fn linear_rope_scaling_is_read_and_scales_the_context() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_attention_heads":4,"num_hidden_layers":1,"vocab_size":10,"max_position_embeddings":4096"#;
        let parse = |extra: &str| {
            ModelConfig::from_json_str(&format!("{{{base},{extra}}}"), Path::new("m/config.json"))
        };
        // Vicuna v1.5-16K's config (transformers 4 names the type "type"; later ones "rope_type";
        // transformers 5 nests it in rope_parameters).
        for extra in [
            r#""rope_scaling":{"type":"linear","factor":4.0},"max_sequence_length":16384"#,
            r#""rope_scaling":{"rope_type":"linear","factor":4}"#,
            r#""rope_parameters":{"rope_type":"linear","factor":4.0,"rope_theta":10000.0}"#,
        ] {
            let c = parse(extra).unwrap();
            assert_eq!(c.rope_linear_factor, 4.0, "{extra}");
            assert_eq!((c.max_position_embeddings, c.context_len()), (4096, 16384));
            assert!(
                c.context_origin().contains("x linear RoPE factor 4"),
                "{}",
                c.context_origin()
            );
            // Every frequency divided by the factor: exactly, for a power of two.
            let plain = crate::model::cpu_engine::rope_inv_freq(16, 10000.0);
            let scaled = c.rope_inv_freq();
            assert_eq!(scaled.len(), plain.len());
            for (s, p) in scaled.iter().zip(&plain) {
                assert_eq!(*s, p / 4.0);
            }
        }
        for plain in [
            r#""rope_scaling":{"rope_type":"default"}"#,
            r#""rope_scaling":{"type":"default"}"#,
            r#""rope_parameters":{"rope_theta":10000.0}"#,
        ] {
            assert_eq!(parse(plain).unwrap().rope_linear_factor, 1.0, "{plain}");
        }
        let c = parse(r#""rope_scaling":{"type":"linear","factor":1.0}"#).unwrap();
        assert_eq!((c.rope_linear_factor, c.context_len()), (1.0, 4096));
        assert_eq!(c.context_origin(), "max_position_embeddings 4096");
        // Refused, naming the field and what was expected.
        for (extra, want) in [
            (
                r#""rope_scaling":{"type":"linear","factor":0.5}"#,
                "linear factor 0.5",
            ),
            (
                r#""rope_scaling":{"type":"linear"}"#,
                "linear factor missing",
            ),
            (
                r#""rope_scaling":{"type":"linear","factor":"4"}"#,
                "linear factor \"4\"",
            ),
            (r#""rope_scaling":{"factor":4.0}"#, "type missing"),
            (r#""rope_scaling":4.0"#, "rope_scaling 4.0"),
            (
                r#""rope_parameters":{"rope_type":"yarn","factor":4.0}"#,
                "type 'yarn'",
            ),
            (
                r#""rope_scaling":{"type":"linear","factor":1e300}"#,
                "x RoPE factor",
            ),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(
                e.contains("m/config.json") && e.contains(want),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn other_architectures_fields_are_refused_and_llama_values_accepted() {
        for (extra, want) in [
            (r#""hidden_act":"gelu""#, "hidden_act 'gelu'"),
            (r#""head_dim":32"#, "head_dim 32"),
            (r#""attention_bias":true"#, "attention_bias"),
            (r#""mlp_bias":true"#, "mlp_bias"),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(
                e.contains("m/config.json") && e.contains(want),
                "{extra}: {e}"
            );
        }
        // LLaMA's own values (and absent fields, above) still load.
        let ok = r#""hidden_act":"silu","head_dim":16,"attention_bias":false,"mlp_bias":false"#;
        assert!(parse(ok).is_ok());
        // "swish" is transformers' other name for SiLU (ACT2FN maps both to nn.SiLU).
        assert!(parse(r#""hidden_act":"swish""#).is_ok());
    }

    #[test]
    fn a_trained_context_past_any_kv_cache_is_refused() {
        let e = parse(r#""max_position_embeddings":18446744073709551615"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json")
                && e.contains("max_position_embeddings 18446744073709551615"),
            "{e}"
        );
        let e = parse(r#""max_position_embeddings":0"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_position_embeddings 0"), "{e}");
        let ok = parse(r#""max_position_embeddings":131072"#).unwrap();
        assert_eq!(ok.max_position_embeddings, 131072);
    }

    #[test]
    fn eps_and_theta_out_of_range_are_refused() {
        for bad in ["-1e-6", "0", "0.5", "1e300"] {
            let e = parse(&format!(r#""rms_norm_eps":{bad}"#))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("m/config.json") && e.contains("rms_norm_eps"),
                "{bad}: {e}"
            );
        }
        for bad in ["0", "-10000"] {
            let e = parse(&format!(r#""rope_theta":{bad}"#))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("m/config.json") && e.contains("rope_theta"),
                "{bad}: {e}"
            );
        }
        let e = parse(r#""rope_parameters":{"rope_theta":-1.0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_theta"), "{e}");
        let c = parse(r#""rms_norm_eps":1e-5,"rope_theta":500000.0"#).unwrap();
        assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-5, 500000.0));
        // Stated both at the top (transformers 4) and nested (transformers 5): one value is read,
        // two different ones are refused naming both rather than one silently picked.
        let both = |top: &str, nested: &str| {
            parse(&format!(
                r#""rope_theta":{top},"rope_parameters":{{"rope_theta":{nested},"rope_type":"default"}}"#
            ))
        };
        assert_eq!(both("500000.0", "500000.0").unwrap().rope_theta, 500000.0);
        let e = both("10000.0", "500000.0").unwrap_err().to_string();
        assert!(
            e.contains("m/config.json")
                && e.contains("rope_theta 10000.0 but rope_parameters.rope_theta 500000.0"),
            "{e}"
        );
    }

    #[test]
    fn config_missing_hidden_size_names_file_and_field() {
        let e =
            ModelConfig::from_json_str(r#"{"num_attention_heads":4}"#, Path::new("m/config.json"))
                .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("m/config.json") && s.contains("hidden_size"),
            "{s}"
        );
    }
}
