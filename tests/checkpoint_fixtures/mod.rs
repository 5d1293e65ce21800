//! Small GPTQ checkpoints for the checkpoint tests: a 2-layer LLaMA with hidden 128 and
//! intermediate 256 (so group sizes 32/64/128/-1 all divide K), written by the lab's writer and
//! then edited at the byte level to make the bad cases.
#![allow(dead_code)]

use gptq_lab::gptq::{act_order_g_idx, quantize_rtn, QuantLinear, ZeroFormat};
use gptq_lab::model::checkpoint::{write_gptq_checkpoint, QuantInfo};
use half::f16;
use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const HIDDEN: usize = 128;
pub const INTER: usize = 256;
pub const VOCAB: usize = 64;
pub const LAYERS: usize = 2;

pub fn config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "vocab_size": VOCAB, "torch_dtype": "float16",
        "rms_norm_eps": 1e-6, "max_position_embeddings": 256
    })
}

pub fn info(group_size: i32, sym: bool, desc_act: bool) -> QuantInfo {
    QuantInfo {
        bits: 4,
        group_size,
        desc_act,
        sym,
        static_groups: false,
        format: ZeroFormat::V1,
        inferred: vec![],
        whole_word_v1: None,
    }
}

/// One RTN-quantized layer of random weights (seeded), optionally act-order and with a bias.
pub fn layer(
    k: usize,
    n: usize,
    gs: i32,
    sym: bool,
    act: bool,
    bias: bool,
    seed: u64,
) -> QuantLinear {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let g_idx = act.then(|| {
        let mut order: Vec<usize> = (0..k).collect();
        order.shuffle(&mut rng);
        act_order_g_idx(&order, if gs == -1 { k } else { gs as usize })
    });
    let mut l = quantize_rtn(&w, k, n, gs, sym, g_idx).expect("fixture quantizes");
    if bias {
        l.bias = Some(
            (0..n)
                .map(|_| f16::from_f32(rng.random_range(-0.5f32..0.5)))
                .collect(),
        );
    }
    l
}

/// All 7 linears of every layer; zeros of asymmetric layers are nudged off 0 so v1 can store them.
pub fn model_layers(gs: i32, sym: bool, act: bool) -> Vec<(String, QuantLinear)> {
    let mut out = Vec::new();
    let probe = gptq_lab::model::config::ModelConfig::from_json_str(
        &config_json().to_string(),
        Path::new("config.json"),
    )
    .expect("fixture config parses");
    for i in 0..LAYERS {
        for (j, (name, k, n)) in probe.layer_linears().into_iter().enumerate() {
            let mut l = layer(k, n, gs, sym, act, j == 0, (i * 10 + j) as u64);
            if !sym {
                l = without_zero_zero(l);
            }
            out.push((format!("model.layers.{i}.{name}"), l));
        }
    }
    out
}

/// Replace any true zero 0 by 1 (still a valid layer; only the values change).
pub fn without_zero_zero(mut l: QuantLinear) -> QuantLinear {
    let mut z = l.zeros();
    z.iter_mut().filter(|z| **z == 0).for_each(|z| *z = 1);
    l.qzeros = gptq_lab::gptq::pack::pack_zeros(&z, l.groups(), l.n);
    l
}

pub fn dense() -> Vec<(String, Vec<f16>, Vec<usize>)> {
    let mut rng = StdRng::seed_from_u64(99);
    let mut v = |shape: Vec<usize>| -> (Vec<f16>, Vec<usize>) {
        let n: usize = shape.iter().product();
        (
            (0..n)
                .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
                .collect(),
            shape,
        )
    };
    let mut out = Vec::new();
    for (name, shape) in [
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".to_string(), vec![HIDDEN]),
        ("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]),
    ]
    .into_iter()
    .chain((0..LAYERS).flat_map(|i| {
        [
            (
                format!("model.layers.{i}.input_layernorm.weight"),
                vec![HIDDEN],
            ),
            (
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                vec![HIDDEN],
            ),
        ]
    })) {
        let (d, s) = v(shape);
        out.push((name, d, s));
    }
    out
}

/// Write a whole tiny checkpoint into `dir` (must not exist yet, or be empty).
pub fn write(
    dir: &Path,
    gs: i32,
    sym: bool,
    act: bool,
    fmt: ZeroFormat,
) -> Vec<(String, QuantLinear)> {
    let layers = model_layers(gs, sym, act);
    write_gptq_checkpoint(
        dir,
        &config_json(),
        &layers,
        &dense(),
        fmt,
        &info(gs, sym, act),
    )
    .expect("fixture writes");
    layers
}

pub type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

pub fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

pub fn write_tensors(path: &Path, t: &Tensors) {
    let views: Vec<_> = t
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// Edit model.safetensors in place.
pub fn edit(dir: &Path, f: impl FnOnce(&mut Tensors)) {
    let p = dir.join("model.safetensors");
    let mut t = read_tensors(&p);
    f(&mut t);
    write_tensors(&p, &t);
}

/// Edit a JSON file in place.
pub fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

pub fn words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
pub fn bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Split `dir`'s model.safetensors into model-00001-of-00002 and -00002-of-00002 (the tensors
/// `second` picks go to the latter) and return the weight map an index would hold; writing the
/// index is the caller's (some tests damage it).
pub fn split_in_two_shards(dir: &Path, second: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    let all = read_tensors(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut shards: [Tensors; 2] = Default::default();
    let mut map = BTreeMap::new();
    for (name, t) in all {
        let s = usize::from(second(&name));
        map.insert(
            name.clone(),
            format!("model-0000{}-of-00002.safetensors", s + 1),
        );
        shards[s].insert(name, t);
    }
    for (s, t) in shards.iter().enumerate() {
        write_tensors(
            &dir.join(format!("model-0000{}-of-00002.safetensors", s + 1)),
            t,
        );
    }
    map
}
