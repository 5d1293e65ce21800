//! Bad checkpoints: each is refused with an error naming the file, the tensor (or config field)
//! and what was expected. Built from good fixtures edited at the byte or JSON level.

mod checkpoint_fixtures;

use checkpoint_fixtures as fx;
use gptq_lab::gptq::ZeroFormat;
use gptq_lab::model::checkpoint::{Checkpoint, LinearWeights};
use safetensors::Dtype;
use std::path::{Path, PathBuf};

const Q: &str = "model.layers.0.self_attn.q_proj";

/// A good checkpoint in a fresh temp folder (kept alive by the returned guard).
fn good(gs: i32, sym: bool, act: bool, fmt: ZeroFormat) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    fx::write(&dir, gs, sym, act, fmt);
    (tmp, dir)
}

fn linear_err(dir: &Path, prefix: &str) -> String {
    let ck = Checkpoint::open(dir).unwrap();
    ck.linear(prefix).unwrap_err().to_string()
}

fn assert_mentions(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error does not mention {p:?}:\n{e}");
    }
}

/// The same edit to the quant settings in both places a checkpoint states them:
/// quantize_config.json and config.json's quantization_config.
fn edit_quant_configs(dir: &Path, mut edit: impl FnMut(&mut serde_json::Value)) {
    fx::edit_json(&dir.join("quantize_config.json"), &mut edit);
    fx::edit_json(&dir.join("config.json"), |v| {
        edit(&mut v["quantization_config"])
    });
}

#[test]
fn a_tensor_named_twice_in_the_header_is_refused_by_name() {
    // The safetensors crate keeps the last entry; the file cannot say which one was meant. The
    // copy here is of the same entry, so nothing else in the file is wrong.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let p = dir.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&b[8..8 + n]).unwrap().trim_end();
    let v: serde_json::Value = serde_json::from_str(header).unwrap();
    let name = format!("{Q}.scales");
    let entry = v[&name].to_string();
    let mut h = format!("{},\"{name}\":{entry}}}", &header[..header.len() - 1]);
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&b[8 + n..]);
    std::fs::write(&p, out).unwrap();
    let e = Checkpoint::open(&dir).err().unwrap().to_string();
    assert_mentions(
        &e,
        &["model.safetensors", &format!("gives key '{name}' twice")],
    );
}

#[test]
fn a_key_given_twice_in_config_json_is_refused_by_the_loader() {
    // Nested, where the typed fields would not see it: quantization_config's group_size twice
    // (serde_json keeps the last, so the file would be read as g64 without a word).
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut o = v.as_object().unwrap().clone();
    o.remove("quantization_config");
    let body = serde_json::to_string(&o).unwrap();
    let twice = format!(
        "{},\"quantization_config\":{{\"bits\":4,\"group_size\":32,\"group_size\":64}}}}",
        &body[..body.len() - 1]
    );
    std::fs::write(&p, twice).unwrap();
    let e = Checkpoint::open(&dir).err().unwrap().to_string();
    assert_mentions(
        &e,
        &[
            "config.json",
            "key 'quantization_config.group_size' appears twice",
        ],
    );
}

#[test]
fn truncated_safetensors_is_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let p = dir.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "not a valid safetensors file",
            "truncated",
        ],
    );
    // Shorter than the 8-byte header length.
    std::fs::write(&p, &b[..5]).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(&e, &["model.safetensors", "5 bytes", "8-byte"]);
}

#[test]
fn malformed_header_is_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let p = dir.join("model.safetensors");
    let mut b = 12u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{\"a\": [1, 2");
    b.push(b' ');
    std::fs::write(&p, &b).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(&e, &["model.safetensors", "JSON"]);
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        t.remove(&format!("{Q}.scales"));
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &["model.safetensors", "missing tensor", "q_proj.scales"],
    );
    // A whole layer missing names the qweight it looked for.
    let e = linear_err(&dir, "model.layers.0.self_attn.nope_proj");
    assert_mentions(&e, &["missing tensor", "nope_proj.qweight"]);
}

#[test]
fn wrong_dtype_is_named_with_the_expected_one() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        let s = t.get_mut(&format!("{Q}.scales")).unwrap();
        // Same shape as F32: twice the bytes.
        s.0 = Dtype::F32;
        s.2 = s.2.iter().flat_map(|&x| [x, x]).collect();
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &["model.safetensors", "q_proj.scales", "F32", "expected F16"],
    );
}

#[test]
fn wrong_shape_is_named_with_the_expected_one() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        // q_proj qweight [16, 128] relabelled [32, 64]: same bytes, wrong meaning.
        t.get_mut(&format!("{Q}.qweight")).unwrap().1 = vec![32, 64];
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "q_proj.qweight",
            "[32, 64]",
            "expected [16, 128]",
        ],
    );
}

#[test]
fn bits_other_than_4_are_refused() {
    // Stated in quantize_config.json.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("quantize_config.json"), |v| v["bits"] = 8.into());
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(&e, &["quantize_config.json", "bits = 8", "only 4-bit"]);

    // Inferred from an era file whose qweight has K * 8 / 32 rows.
    let (_t2, dir) = good(32, true, false, ZeroFormat::V1);
    std::fs::remove_file(dir.join("quantize_config.json")).unwrap();
    fx::edit_json(&dir.join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("quantization_config");
    });
    fx::edit(&dir, |t| {
        let q = t.get_mut("model.layers.0.mlp.down_proj.qweight").unwrap();
        q.1 = vec![64, 64]; // K = 256 -> 256 * 8 / 32 = 64 rows
    });
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "down_proj.qweight",
            "bits = 8",
            "only 4-bit",
        ],
    );
}

#[test]
fn group_size_not_dividing_k_is_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    // 48 does not divide K = 128 (the format would allow ceil(128/48) = 3 groups; the lab refuses).
    edit_quant_configs(&dir, |q| {
        q["group_size"] = 48.into();
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &[
            "quantize_config.json",
            "group_size 48 does not divide K = 128",
            "q_proj.scales",
        ],
    );

    // Era file: 3 rows of scales for K = 256.
    let (_t2, dir) = good(32, true, false, ZeroFormat::V1);
    std::fs::remove_file(dir.join("quantize_config.json")).unwrap();
    fx::edit_json(&dir.join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("quantization_config");
    });
    fx::edit(&dir, |t| {
        let s = t.get_mut("model.layers.0.mlp.down_proj.scales").unwrap();
        s.1 = vec![3, 128];
        s.2.truncate(3 * 128 * 2);
    });
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &["down_proj.scales", "3 rows", "does not divide K = 256"],
    );
}

#[test]
fn g_idx_out_of_range_or_wrong_length_is_refused() {
    let (_t, dir) = good(32, false, true, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        let g = &mut t.get_mut(&format!("{Q}.g_idx")).unwrap().2;
        g[5 * 4..6 * 4].copy_from_slice(&4i32.to_le_bytes()); // groups = 128 / 32 = 4
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "q_proj.g_idx",
            "g_idx[5] = 4",
            "0 <= g < 4",
        ],
    );

    fx::edit(&dir, |t| {
        let g = t.get_mut(&format!("{Q}.g_idx")).unwrap();
        g.1 = vec![120];
        g.2.truncate(120 * 4);
    });
    let e = linear_err(&dir, Q);
    assert_mentions(&e, &["q_proj.g_idx", "[120]", "expected [128]"]);
}

#[test]
fn asymmetric_v1_with_underflowed_zeros_is_refused() {
    let (_t, dir) = good(32, false, false, ZeroFormat::V1);
    // What an AutoGPTQ-style packer writes for a true zero of 0 at column 11 of group 2:
    // (0 - 1) as u32 OR-ed in at nibble 3 sets nibbles 3..8 of that word to 0xF.
    fx::edit(&dir, |t| {
        let z = &mut t.get_mut(&format!("{Q}.qzeros")).unwrap().2;
        let mut w = fx::words(z);
        let i = 2 * (128 / 8) + 1;
        w[i] |= 0xFFFF_F000;
        *z = fx::bytes(&w);
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "q_proj.qzeros",
            "0xF",
            "(2, 11)",
            "cannot be recovered",
        ],
    );
    // The other layers still load.
    assert!(Checkpoint::open(&dir)
        .unwrap()
        .linear("model.layers.0.self_attn.k_proj")
        .is_ok());
}

#[test]
fn pickles_are_refused_with_a_conversion_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.json"), fx::config_json().to_string()).unwrap();
    // A torch.save zip archive starts with the zip magic; the content is never read further.
    std::fs::write(
        dir.join("vicuna-7b-4bit-128g.pt"),
        b"PK\x03\x04 not really a zip",
    )
    .unwrap();
    let e = Checkpoint::open(dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "vicuna-7b-4bit-128g.pt",
            "arbitrary code",
            "save_file",
            "vicuna-7b-4bit-128g.safetensors",
        ],
    );

    // Passing the pickle itself, or a pickle renamed .safetensors, is refused the same way.
    let e = Checkpoint::open(&dir.join("vicuna-7b-4bit-128g.pt"))
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["arbitrary code"]);
    // A protocol-2 pickle of {"a": 1}.
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.",
    )
    .unwrap();
    let e = Checkpoint::open(dir).unwrap_err().to_string();
    assert_mentions(&e, &["model.safetensors", "pickled", "save_file"]);
}

#[test]
fn unknown_quant_config_fields_are_tolerated() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["damp_percent"] = 0.01.into();
        v["true_sequential"] = true.into();
        v["model_name_or_path"] = "lmsys/vicuna-7b".into();
        v["some_future_field"] = serde_json::json!({"nested": [1, 2, 3]});
    });
    let ck = Checkpoint::open(&dir).unwrap();
    assert!(matches!(ck.linear(Q).unwrap(), LinearWeights::Quant(_)));

    // Newer configs name the zero format `format` only.
    let (_t2, dir) = good(32, false, false, ZeroFormat::V2);
    edit_quant_configs(&dir, |q| {
        q.as_object_mut().unwrap().remove("checkpoint_format");
        assert_eq!(q["format"], "gptq_v2");
    });
    assert_eq!(
        Checkpoint::open(&dir).unwrap().quant.unwrap().format,
        ZeroFormat::V2
    );
}

#[test]
fn missing_group_size_and_desc_act_are_read_from_the_tensors() {
    // AutoGPTQ's BaseQuantizeConfig defaults are group_size -1 (per-channel) and desc_act true:
    // taken as they are, a config that says only the bits would misread any grouped file. The
    // scales' rows and the g_idx say what the file is; the plan reads the same.
    for (gs, act) in [(32, true), (64, false), (-1, false)] {
        let (_t, dir) = good(gs, true, act, ZeroFormat::V1);
        std::fs::write(dir.join("quantize_config.json"), r#"{"bits": 4}"#).unwrap();
        fx::edit_json(&dir.join("config.json"), |v| {
            v.as_object_mut().unwrap().remove("quantization_config");
        });
        let ck = Checkpoint::open(&dir).unwrap();
        let q = ck.quant.clone().unwrap();
        assert_eq!(
            (q.bits, q.group_size, q.desc_act, q.sym, q.format),
            (4, gs, act, true, ZeroFormat::V1),
            "written with group {gs}, act-order {act}"
        );
        let all = q.inferred.join("\n");
        assert_mentions(
            &all,
            &[
                "'group_size' missing",
                "quantize_config.json: 'group_size' missing; read from the tensors",
                &format!("group_size = {gs} from model.layers.0."),
                "'desc_act' missing",
                &format!("desc_act = {act}"),
                "'sym' missing, AutoGPTQ default true",
                "'checkpoint_format' missing",
            ],
        );
        assert!(!all.contains("AutoGPTQ default -1"), "{all}");
        match ck.linear(Q).unwrap() {
            LinearWeights::Quant(l) => {
                assert_eq!(l.group_size, if gs == -1 { l.k } else { gs as usize });
                assert_eq!(l.g_idx.is_some(), act);
            }
            other => panic!("{other:?}"),
        }
        let (_, pq) = gptq_lab::plan::read_checkpoint_dir(&dir).unwrap();
        assert_eq!(
            (pq.group_size, pq.act_order),
            (Some(gs), Some(act)),
            "{:?}",
            pq.loader_refusal
        );
    }
    // A group size only config.json states is taken from it: quantize_config.json's silence does
    // not disagree with it.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v.as_object_mut().unwrap().remove("group_size");
    });
    fx::edit_json(&dir.join("config.json"), |v| {
        v["quantization_config"]["group_size"] = 32.into();
    });
    assert_eq!(
        Checkpoint::open(&dir).unwrap().quant.unwrap().group_size,
        32
    );
    // ... and the other way round: quantize_config.json states it, config.json does not.
    let (_t2, dir2) = good(128, true, false, ZeroFormat::V1);
    fx::edit_json(&dir2.join("config.json"), |v| {
        v["quantization_config"]
            .as_object_mut()
            .unwrap()
            .remove("group_size");
    });
    assert_eq!(
        Checkpoint::open(&dir2).unwrap().quant.unwrap().group_size,
        128
    );
    // A desc_act: false only config.json states holds (quantize_config.json's default, true,
    // would demand a g_idx of every linear), and so does a sym: false only it states.
    let (_t3, dir3) = good(32, false, false, ZeroFormat::V1);
    fx::edit_json(&dir3.join("quantize_config.json"), |v| {
        let o = v.as_object_mut().unwrap();
        o.remove("desc_act");
        o.remove("sym");
    });
    fx::edit(&dir3, |t| t.retain(|k, _| !k.ends_with(".g_idx")));
    let ck = Checkpoint::open(&dir3).unwrap();
    let q = ck.quant.clone().unwrap();
    assert_eq!((q.desc_act, q.sym), (false, false));
    assert!(ck.linear(Q).is_ok());
    let (_, pq) = gptq_lab::plan::read_checkpoint_dir(&dir3).unwrap();
    assert_eq!((pq.group_size, pq.act_order), (Some(32), Some(false)));
    // Without weights to read, the planner does not guess: the group is unsaid.
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), d.path().join("config.json")).unwrap();
    fx::edit_json(&d.path().join("config.json"), |v| {
        v["quantization_config"] = serde_json::json!({"bits": 4});
    });
    let (_, pq) = gptq_lab::plan::read_checkpoint_dir(d.path()).unwrap();
    assert_eq!((pq.group_size, pq.act_order), (None, None));
}

#[test]
fn unsupported_quant_methods_and_formats_are_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["checkpoint_format"] = "marlin".into()
    });
    assert_mentions(
        &Checkpoint::open(&dir).unwrap_err().to_string(),
        &["quantize_config.json", "marlin"],
    );
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["checkpoint_format"] = "gptq".into();
        v["quant_method"] = "awq".into();
    });
    assert_mentions(
        &Checkpoint::open(&dir).unwrap_err().to_string(),
        &["quant_method 'awq'", "expected 'gptq'"],
    );
}

#[test]
fn disagreeing_quant_configs_are_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("config.json"), |v| {
        v["quantization_config"]["checkpoint_format"] = "gptq_v2".into()
    });
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(&e, &["quantize_config.json", "disagrees", "config.json"]);
}

#[test]
fn missing_config_json_is_named() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(&e, &["config.json", "model shapes"]);
}

/// Split model.safetensors into two shards plus model.safetensors.index.json; returns the map.
fn shard(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let map = fx::split_in_two_shards(dir, |name| name.starts_with("model.layers.1"));
    write_index(dir, &serde_json::json!({ "weight_map": map }));
    map
}

fn write_index(dir: &Path, v: &serde_json::Value) {
    std::fs::write(dir.join("model.safetensors.index.json"), v.to_string()).unwrap();
}

#[test]
fn num_hidden_layers_must_match_the_layers_in_the_tensors() {
    // 10^18 layers used to reach Vec::with_capacity and panic with "capacity overflow".
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("config.json"), |v| {
        v["num_hidden_layers"] = 1_000_000_000_000_000_000u64.into()
    });
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "config.json",
            "num_hidden_layers = 1000000000000000000",
            "2 layer(s)",
        ],
    );

    // A layer beyond the config's count used to be silently ignored.
    let (_t2, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        let extra: Vec<_> = t
            .iter()
            .filter_map(|(n, v)| Some((n.strip_prefix("model.layers.1.")?.to_string(), v.clone())))
            .collect();
        for (rest, v) in extra {
            t.insert(format!("model.layers.2.{rest}"), v);
        }
    });
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "'model.layers.2.input_layernorm.weight'",
            "config.json",
            "num_hidden_layers = 2",
            "3 layers",
        ],
    );
}

#[test]
fn empty_shard_index_is_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    shard(&dir);
    assert!(Checkpoint::open(&dir).is_ok());
    // Used to panic indexing the first of zero shards.
    write_index(&dir, &serde_json::json!({"weight_map": {}}));
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(&e, &["model.safetensors.index.json", "weight_map is empty"]);
}

#[test]
fn an_index_naming_a_missing_shard_is_refused_naming_both() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    shard(&dir);
    // A partial download: the index came, the second shard did not.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "model.safetensors.index.json",
            "weight_map names shard",
            "model-00002-of-00002.safetensors which does not exist",
        ],
    );
}

#[test]
fn a_tensor_in_two_shards_is_refused_naming_both_files() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let mut map = shard(&dir);
    // The embedding (shard 1) also stored in shard 2, and the index pointing at shard 2's copy:
    // which copy is the model's cannot be told, so neither is read.
    let emb = "model.embed_tokens.weight";
    let first = fx::read_tensors(&dir.join("model-00001-of-00002.safetensors"));
    let second_path = dir.join("model-00002-of-00002.safetensors");
    let mut second = fx::read_tensors(&second_path);
    second.insert(emb.into(), first[emb].clone());
    fx::write_tensors(&second_path, &second);
    map.insert(emb.into(), "model-00002-of-00002.safetensors".into());
    write_index(&dir, &serde_json::json!({ "weight_map": map }));
    let e = Checkpoint::open(&dir).err().map(|e| e.to_string());
    let e = e.expect("a tensor stored in two shards loaded");
    assert_mentions(
        &e,
        &[
            "model-00002-of-00002.safetensors",
            "tensor 'model.embed_tokens.weight' is also in",
            "model-00001-of-00002.safetensors",
        ],
    );
}

#[test]
fn a_group_size_of_zero_or_below_minus_one_is_refused_naming_the_file() {
    // Only in quantize_config.json: named there.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("quantization_config");
    });
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["group_size"] = 0.into()
    });
    let e = Checkpoint::open(&dir).err().map(|e| e.to_string());
    let e = e.expect("group_size 0 loaded");
    assert_mentions(
        &e,
        &["quantize_config.json: group_size 0; expected -1 (per-channel) or a positive size"],
    );
    // Only in config.json: named there.
    let (_t2, dir) = good(32, true, false, ZeroFormat::V1);
    std::fs::remove_file(dir.join("quantize_config.json")).unwrap();
    fx::edit_json(&dir.join("config.json"), |v| {
        v["quantization_config"]["group_size"] = (-2).into()
    });
    let e = Checkpoint::open(&dir).err().map(|e| e.to_string());
    let e = e.expect("group_size -2 loaded");
    assert_mentions(
        &e,
        &[
            "config.json",
            "quantization_config: group_size -2; expected -1 (per-channel) or a positive size",
        ],
    );
}

#[test]
fn shard_names_outside_the_checkpoint_folder_are_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let map = shard(&dir);
    // A real shard one level up, so only the path check can refuse the relative name.
    let outside = dir.parent().unwrap().join("outside.safetensors");
    std::fs::copy(dir.join("model-00001-of-00002.safetensors"), &outside).unwrap();
    for bad in [
        "../outside.safetensors".to_string(),
        outside.display().to_string(),
        "sub/model-00001-of-00002.safetensors".into(),
        "..".into(),
    ] {
        let mut m = map.clone();
        for f in m.values_mut().filter(|f| f.starts_with("model-00001")) {
            *f = bad.clone();
        }
        write_index(&dir, &serde_json::json!({ "weight_map": m }));
        let e = Checkpoint::open(&dir).unwrap_err().to_string();
        assert_mentions(
            &e,
            &[
                "model.safetensors.index.json",
                "weight_map entry",
                &format!("'{bad}'"),
                "not a plain file name",
            ],
        );
    }
}

#[test]
fn a_directory_named_like_a_weights_file_is_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::create_dir(dir.join("model.safetensors")).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "is a directory",
            "safetensors weights file was expected",
        ],
    );
}

#[test]
fn act_order_without_g_idx_is_refused_and_plain_order_without_it_loads() {
    let (_t, dir) = good(32, false, true, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        t.remove(&format!("{Q}.g_idx"));
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "missing tensor",
            "q_proj.g_idx",
            "quantize_config.json",
            "desc_act",
        ],
    );
    let ck = Checkpoint::open(&dir).unwrap();
    let e = ck.linear_meta(Q).unwrap_err().to_string();
    assert_mentions(&e, &["q_proj.g_idx"]);

    // Without act-order declared, an absent g_idx still means k / G.
    let (_t2, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| t.retain(|n, _| !n.ends_with(".g_idx")));
    assert!(Checkpoint::open(&dir).unwrap().linear(Q).is_ok());
}

#[test]
fn non_finite_floats_are_refused_naming_the_tensor() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let nan = half::f16::NAN.to_le_bytes();
    fx::edit(&dir, |t| {
        // One NaN among the scales, all of model.norm +inf, one -inf in the embedding.
        t.get_mut(&format!("{Q}.scales")).unwrap().2[6..8].copy_from_slice(&nan);
        let n = &mut t.get_mut("model.norm.weight").unwrap().2;
        for c in n.chunks_exact_mut(2) {
            c.copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        }
        t.get_mut("model.embed_tokens.weight").unwrap().2[0..2]
            .copy_from_slice(&half::f16::NEG_INFINITY.to_le_bytes());
    });
    assert_mentions(
        &linear_err(&dir, Q),
        &[
            "model.safetensors",
            "q_proj.scales",
            "1 value(s) are not finite",
            "NaN at flat index 3",
        ],
    );
    let ck = Checkpoint::open(&dir).unwrap();
    let e = ck.tensor_f32("model.norm.weight").unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "'model.norm.weight'",
            "128 value(s)",
            "inf",
        ],
    );
    let e = ck
        .tensor_f16("model.norm.weight", &[fx::HIDDEN])
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["'model.norm.weight'", "not finite (NaN or infinite)"]);
    let e = ck
        .tensor_f16("model.embed_tokens.weight", &[fx::VOCAB, fx::HIDDEN])
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["'model.embed_tokens.weight'", "-inf at flat index 0"]);

    // An fp16 (unquantized) linear, and an F32 table beyond fp16's range.
    let (_t2, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        t.retain(|n, _| !n.starts_with(&format!("{Q}.")));
        let mut w = vec![0u8; fx::HIDDEN * fx::HIDDEN * 2];
        w[10..12].copy_from_slice(&nan);
        t.insert(
            format!("{Q}.weight"),
            (Dtype::F16, vec![fx::HIDDEN, fx::HIDDEN], w),
        );
        let big: Vec<u8> = (0..fx::HIDDEN).flat_map(|_| 1e6f32.to_le_bytes()).collect();
        t.insert(
            "model.norm.weight".into(),
            (Dtype::F32, vec![fx::HIDDEN], big),
        );
    });
    assert_mentions(
        &linear_err(&dir, Q),
        &["model.safetensors", "q_proj.weight", "NaN at flat index 5"],
    );
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.tensor_f32("model.norm.weight").unwrap().0[0], 1e6);
    let e = ck
        .tensor_f16("model.norm.weight", &[fx::HIDDEN])
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["'model.norm.weight'", "beyond fp16's range"]);
}

#[test]
fn stated_sym_with_zeros_of_the_other_format_is_refused() {
    let relabel = |dir: &Path, fmt: &str, keep_sym: bool| {
        edit_quant_configs(dir, |q| {
            q["checkpoint_format"] = fmt.into();
            q["format"] = fmt.into();
            if !keep_sym {
                q.as_object_mut().unwrap().remove("sym");
            }
        });
    };
    // A v1 symmetric file (stored 7) labelled gptq_v2 reads true zeros of 7.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    relabel(&dir, "gptq_v2", true);
    assert_mentions(
        &linear_err(&dir, Q),
        &[
            "model.safetensors",
            "q_proj.qzeros",
            "quantize_config.json",
            "sym: true",
            "true zero 7",
            "try \"gptq\"",
        ],
    );
    // A v2 symmetric file (stored 8) labelled gptq reads true zeros of 9.
    let (_t2, dir) = good(32, true, false, ZeroFormat::V2);
    relabel(&dir, "gptq", true);
    assert_mentions(
        &linear_err(&dir, Q),
        &["q_proj.qzeros", "true zero 9", "try \"gptq_v2\""],
    );
    // sym not stated: zeros one step off 8 in every group and column are still that signature
    // (no asymmetric quantizer leaves them all equal), both ways round.
    relabel(&dir, "gptq", false);
    assert_mentions(
        &linear_err(&dir, Q),
        &[
            "model.safetensors",
            "q_proj.qzeros",
            "every true zero is 9",
            "set checkpoint_format \"gptq_v2\" in",
            "quantize_config.json",
            "\"sym\": false",
        ],
    );
    // Stating sym: false says the zeros are meant: the file loads as labelled.
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["sym"] = false.into()
    });
    fx::edit_json(&dir.join("config.json"), |v| {
        v["quantization_config"]["sym"] = false.into()
    });
    assert!(Checkpoint::open(&dir).unwrap().linear(Q).is_ok());
    let (_t3, dir) = good(32, true, false, ZeroFormat::V1);
    relabel(&dir, "gptq_v2", false);
    assert_mentions(
        &linear_err(&dir, Q),
        &[
            "q_proj.qzeros",
            "every true zero is 7",
            "set checkpoint_format \"gptq\" in",
        ],
    );
    // Correctly labelled, with sym unstated, both load; so does an asymmetric file.
    for (fmt, label) in [(ZeroFormat::V1, "gptq"), (ZeroFormat::V2, "gptq_v2")] {
        let (_t4, dir) = good(32, true, false, fmt);
        relabel(&dir, label, false);
        assert!(Checkpoint::open(&dir).unwrap().linear(Q).is_ok(), "{label}");
        let (_t5, dir) = good(32, false, false, fmt);
        relabel(&dir, label, false);
        assert!(
            Checkpoint::open(&dir).unwrap().linear(Q).is_ok(),
            "{label} asym"
        );
    }
}

#[test]
fn float_table_shape_errors_name_the_file_holding_the_tensor() {
    use gptq_lab::model::weights::LlamaWeights;
    for (name, shape) in [
        ("model.norm.weight", vec![fx::HIDDEN / 2]),
        ("model.embed_tokens.weight", vec![fx::HIDDEN, fx::VOCAB / 2]),
        ("lm_head.weight", vec![fx::HIDDEN, fx::VOCAB / 2]),
    ] {
        let (_t, dir) = good(32, true, false, ZeroFormat::V1);
        fx::edit(&dir, |t| {
            // The fixture's q_proj biases would be refused first (LLaMA has none).
            t.retain(|k, _| !k.ends_with(".bias"));
            let e = t.get_mut(name).unwrap();
            let n: usize = shape.iter().product();
            e.1 = shape.clone();
            e.2.truncate(n * 2);
        });
        let ck = Checkpoint::open(&dir).unwrap();
        let e = LlamaWeights::from_checkpoint(&ck).unwrap_err().to_string();
        assert_mentions(&e, &["ck/model.safetensors", name, &format!("{shape:?}")]);
    }
}

#[test]
fn data_offsets_past_the_end_name_the_tensor() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let p = dir.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b[8..8 + n]).unwrap();
    // The tensor whose data comes last now claims 64 bytes more than the file has.
    let last = h
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.get("data_offsets")?[1].as_u64()?)))
        .max_by_key(|(_, e)| *e)
        .unwrap();
    h[&last.0]["data_offsets"][1] = (last.1 + 64).into();
    let hb = serde_json::to_vec(&h).unwrap();
    let mut out = (hb.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&hb);
    out.extend_from_slice(&b[8 + n..]);
    std::fs::write(&p, out).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            &format!("tensor '{}'", last.0),
            "data_offsets",
            "would end at byte",
        ],
    );
}

#[test]
fn fp16_checkpoint_config_goes_through_the_same_checks() {
    // The unquantized path `lab quantize` reads: same Checkpoint::open, same config checks.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-fp16");
    for (field, value) in [
        ("rms_norm_eps", serde_json::json!(-1e-6)),
        ("rope_theta", serde_json::json!(0.0)),
        ("hidden_act", serde_json::json!("gelu")),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
        }
        fx::edit_json(&tmp.path().join("config.json"), |v| {
            v[field] = value.clone()
        });
        let e = Checkpoint::open(tmp.path()).unwrap_err().to_string();
        assert_mentions(&e, &["config.json", field]);
    }
}

#[test]
fn a_non_zero_bias_is_refused_by_the_engine_and_an_all_zero_one_dropped() {
    // The fixture's q_proj carries a non-zero bias (a general GPTQ layer may): the loader keeps
    // it, and the CPU engine, which adds none (LLaMA), refuses it by name instead of ignoring it.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let ck = Checkpoint::open(&dir).unwrap();
    let LinearWeights::Quant(q) = ck.linear(Q).unwrap() else {
        panic!("{Q} is quantized")
    };
    assert!(q
        .bias
        .as_ref()
        .is_some_and(|b| b.iter().any(|v| v.to_f32() != 0.0)));
    assert!(ck.linear_meta(Q).unwrap().bias);
    let e = gptq_lab::model::weights::LlamaWeights::from_checkpoint(&ck)
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["model.safetensors", "q_proj.bias", "non-zero bias"]);
    // All zeros (-0.0 included): the same outputs without it, so it is dropped at load.
    fx::edit(&dir, |t| {
        for (_, (_, _, b)) in t.iter_mut().filter(|(k, _)| k.ends_with(".bias")) {
            for (i, c) in b.chunks_exact_mut(2).enumerate() {
                let z = if i % 2 == 0 {
                    half::f16::ZERO
                } else {
                    half::f16::NEG_ZERO
                };
                c.copy_from_slice(&z.to_le_bytes());
            }
        }
    });
    let ck = Checkpoint::open(&dir).unwrap();
    let LinearWeights::Quant(q) = ck.linear(Q).unwrap() else {
        panic!("{Q} is quantized")
    };
    assert!(q.bias.is_none());
    assert!(!ck.linear_meta(Q).unwrap().bias);
    gptq_lab::model::weights::LlamaWeights::from_checkpoint(&ck).unwrap();
}

#[test]
fn a_linear_both_quantized_and_dense_is_refused_naming_both() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        let n = fx::HIDDEN;
        t.insert(
            format!("{Q}.weight"),
            (Dtype::F16, vec![n, n], vec![0u8; n * n * 2]),
        );
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "q_proj.qweight",
            "q_proj.weight",
            "both",
        ],
    );
}

#[test]
fn optional_files_that_are_directories_are_refused_not_skipped() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    // quantize_config.json a directory: it used to be taken for "absent".
    std::fs::remove_file(dir.join("quantize_config.json")).ok();
    std::fs::create_dir(dir.join("quantize_config.json")).unwrap();
    let Err(e) = Checkpoint::open(&dir) else {
        panic!("refused")
    };
    let e = e.to_string();
    assert_mentions(&e, &["quantize_config.json", "not a regular file"]);
    std::fs::remove_dir(dir.join("quantize_config.json")).unwrap();
    // tokenizer.json a directory: it used to mean "no tokenizer".
    std::fs::create_dir(dir.join("tokenizer.json")).unwrap();
    let Err(e) = gptq_lab::model::tokenizer::TextTokenizer::from_checkpoint_dir(&dir) else {
        panic!("refused")
    };
    let e = e.to_string();
    assert_mentions(&e, &["tokenizer.json", "not a regular file"]);
}

#[test]
fn a_tied_head_that_differs_from_the_embedding_is_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("config.json"), |v| {
        v["tie_word_embeddings"] = serde_json::json!(true);
    });
    let Err(e) = Checkpoint::open(&dir) else {
        panic!("refused")
    };
    let e = e.to_string();
    assert_mentions(
        &e,
        &[
            "config.json",
            "tie_word_embeddings",
            "lm_head.weight",
            "embed_tokens",
        ],
    );
    // A stored copy equal to the embedding is the same model.
    fx::edit(&dir, |t| {
        let embed = t["model.embed_tokens.weight"].clone();
        t.insert("lm_head.weight".into(), embed);
    });
    Checkpoint::open(&dir).unwrap();
}

/// A weights file that is a link leading nowhere (here: to itself) is named with what following
/// it said, not called a directory.
#[cfg(unix)]
#[test]
fn a_weights_link_that_leads_nowhere_says_why() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let st = dir.join("model.safetensors");
    std::fs::remove_file(&st).unwrap();
    std::os::unix::fs::symlink("model.safetensors", &st).unwrap();
    let Err(e) = Checkpoint::open(&dir) else {
        panic!("refused")
    };
    let e = e.to_string();
    assert_mentions(&e, &["model.safetensors", "symbolic links"]);
    assert!(!e.contains("is a directory"), "{e}");
}

#[test]
fn tensors_outside_the_llama_layout_are_refused_by_name() {
    // A norm's bias changes the math and would be dropped; a quantized lm_head would be
    // dropped too (with tied embeddings the embedding stood in for it); AutoGPTQ's marlin
    // tensors are another layout. RoPE's stored inv_freq is the one extra that loads.
    let h = fx::config_json()["hidden_size"].as_u64().unwrap() as usize;
    let f16_zeros = |n: usize| (Dtype::F16, vec![n], vec![0u8; 2 * n]);
    for (name, tensor, want) in [
        (
            "model.norm.bias",
            f16_zeros(h),
            "not part of the LLaMA layout",
        ),
        (
            "lm_head.qweight",
            (Dtype::I32, vec![h / 8, 16], vec![0u8; h / 8 * 16 * 4]),
            "output head is quantized",
        ),
        (
            "model.layers.0.mlp.down_proj.B",
            (Dtype::I32, vec![4, 4], vec![0u8; 64]),
            "not part of the LLaMA layout",
        ),
    ] {
        let (_t, dir) = good(32, true, false, ZeroFormat::V1);
        fx::edit(&dir, |t| {
            t.insert(name.to_string(), tensor);
        });
        let e = Checkpoint::open(&dir).unwrap_err().to_string();
        assert_mentions(&e, &["model.safetensors", name, want]);
    }
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        t.insert(
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            (Dtype::F32, vec![4], vec![0u8; 16]),
        );
    });
    Checkpoint::open(&dir).unwrap();
}

#[test]
fn the_two_quant_configs_must_agree_on_desc_act_and_static_groups() {
    // Without a g_idx to say it, desc_act decides the row order: two files that disagree
    // cannot both be right (the loader used to follow quantize_config.json silently).
    for field in ["desc_act", "static_groups"] {
        let (_t, dir) = good(32, true, false, ZeroFormat::V1);
        fx::edit_json(&dir.join("quantize_config.json"), |v| {
            v[field] = false.into()
        });
        fx::edit_json(&dir.join("config.json"), |v| {
            v["quantization_config"][field] = true.into()
        });
        let e = Checkpoint::open(&dir).unwrap_err().to_string();
        assert_mentions(
            &e,
            &[
                "quantize_config.json",
                &format!("disagrees with config.json quantization_config on {field}"),
                "false here but true there",
            ],
        );
    }
}

#[test]
fn per_module_overrides_and_marlin_repacking_are_refused_by_field() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["dynamic"] = serde_json::json!({"+:.*down_proj": {"bits": 8}})
    });
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(&e, &["quantize_config.json", "'dynamic'", "+:.*down_proj"]);
    // An empty override map is no override.
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["dynamic"] = serde_json::json!({})
    });
    Checkpoint::open(&dir).unwrap();
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["is_marlin_format"] = true.into()
    });
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(&e, &["quantize_config.json", "is_marlin_format"]);
}

#[test]
fn gptqmodel_pack_dtype_other_than_int32_is_refused_by_field() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    // GPTQModel writes the word type beside every config; int32 is what every reader packs.
    for ok in ["int32", "torch.int32", "INT32"] {
        edit_quant_configs(&dir, |q| q["pack_dtype"] = ok.into());
        Checkpoint::open(&dir).unwrap().linear(Q).unwrap();
    }
    for bad in [
        serde_json::json!("int16"),
        serde_json::json!("int64"),
        serde_json::json!(32),
    ] {
        edit_quant_configs(&dir, |q| q["pack_dtype"] = bad.clone());
        let e = Checkpoint::open(&dir).unwrap_err().to_string();
        assert_mentions(
            &e,
            &["config.json", "pack_dtype", &bad.to_string(), "int32"],
        );
    }
}

#[test]
fn settings_no_file_states_are_noted_for_the_user() {
    // A gptq_v2 file without its label reads as v1: undetectable from the tensors, so the
    // default taken must at least be said (the notes were kept but never shown).
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    edit_quant_configs(&dir, |q| {
        let q = q.as_object_mut().unwrap();
        q.remove("checkpoint_format");
        q.remove("format");
    });
    let ck = Checkpoint::open(&dir).unwrap();
    let notes = ck.notes().join("\n");
    assert_mentions(&notes, &["quantize_config.json", "checkpoint_format", "v1"]);
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    assert!(Checkpoint::open(&dir).unwrap().notes().is_empty());
}

#[test]
fn the_planner_says_when_the_engines_would_refuse_the_weights_it_plans() {
    // Planned from the config (a partial download is still worth a plan), with the refusal.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        let s = t.get_mut(&format!("{Q}.scales")).unwrap();
        s.0 = Dtype::BF16;
    });
    let (_, pq) = gptq_lab::plan::read_checkpoint_dir(&dir).unwrap();
    let why = pq.loader_refusal.expect("a refusal");
    assert_mentions(&why, &[&format!("{Q}.scales"), "BF16"]);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["plan", "--checkpoint"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("WARNING: the engines would refuse"), "{err}");
    // An unquantized folder is named so, not asked for a group size.
    let fp16 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-fp16");
    let (_, pq) = gptq_lab::plan::read_checkpoint_dir(&fp16).unwrap();
    assert!(pq.unquantized && pq.loader_refusal.is_none(), "{pq:?}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["plan", "--checkpoint"])
        .arg(&fp16)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--dtype fp16"), "{err}");
}

#[test]
fn a_format_only_quantize_config_states_is_refused_saying_what_transformers_would_read() {
    let (_t, dir) = good(32, false, false, ZeroFormat::V2);
    fx::edit_json(&dir.join("config.json"), |v| {
        let q = v["quantization_config"].as_object_mut().unwrap();
        q.remove("checkpoint_format");
        q.remove("format");
    });
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "quantize_config.json",
            "gptq_v2",
            "states none",
            "transformers",
        ],
    );
}

#[test]
fn a_g_idx_that_does_not_give_each_group_its_rows_is_refused() {
    // In range but uneven (every row in group 0): no GPTQ writer makes it, and read on it
    // would be grouped as no kernel's row order can hold.
    let (_t, dir) = good(32, true, true, ZeroFormat::V1);
    fx::edit(&dir, |t| {
        let g = t.get_mut(&format!("{Q}.g_idx")).unwrap();
        g.2 = vec![0u8; g.2.len()];
    });
    let e = linear_err(&dir, Q);
    assert_mentions(
        &e,
        &[
            &format!("{Q}.g_idx"),
            "to group 0",
            "expected group_size = 32",
        ],
    );
}

#[test]
fn an_act_order_g_idx_under_a_config_that_says_plain_order_is_applied_and_said() {
    // AutoGPTQ's kernels read each row's group from g_idx whatever desc_act says, and so does
    // the loader; a config that claims g_idx = k / group_size over an act-order one is noted.
    let (_t, act) = good(32, true, true, ZeroFormat::V1);
    let reference = Checkpoint::open(&act).unwrap().linear(Q).unwrap();
    for (field, value) in [("desc_act", false), ("static_groups", true)] {
        let (_t, dir) = good(32, true, true, ZeroFormat::V1);
        edit_quant_configs(&dir, |q| q[field] = value.into());
        let ck = Checkpoint::open(&dir).unwrap();
        assert_eq!(ck.linear(Q).unwrap(), reference, "{field} = {value}");
        let notes = ck.notes().join("\n");
        assert_mentions(
            &notes,
            &[
                "quantize_config.json",
                &format!("{field} = {value}"),
                "is act-order",
                "first: model.layers.0.mlp.down_proj.g_idx",
            ],
        );
    }
    // Plain order under desc_act = false, and act-order under desc_act = true: nothing to say.
    let (_t, plain) = good(32, true, false, ZeroFormat::V1);
    assert!(Checkpoint::open(&plain).unwrap().notes().is_empty());
    assert!(Checkpoint::open(&act).unwrap().notes().is_empty());
}

#[test]
fn an_act_order_g_idx_past_the_first_linear_under_desc_act_false_is_said_too() {
    // desc_act and the settings are read from the first linear in name order (layer 0's
    // down_proj); a later linear whose g_idx is act-order is applied as stored and must be said
    // as well, with how many there are, whether desc_act was stated or read from the tensors.
    for stated in [true, false] {
        let (_t, dir) = good(32, true, false, ZeroFormat::V1);
        let before = Checkpoint::open(&dir).unwrap().linear(Q).unwrap();
        fx::edit(&dir, |t| {
            let g = t.get_mut(&format!("{Q}.g_idx")).unwrap();
            // The same groups, rows in reverse: each group keeps its 32 rows, in act-order.
            let rows: Vec<[u8; 4]> = g.2.chunks(4).map(|c| c.try_into().unwrap()).collect();
            g.2 = rows.into_iter().rev().flatten().collect();
        });
        if !stated {
            edit_quant_configs(&dir, |q| {
                q.as_object_mut().unwrap().remove("desc_act");
            });
        }
        let ck = Checkpoint::open(&dir).unwrap();
        assert!(!ck.quant.as_ref().unwrap().desc_act);
        assert_ne!(
            ck.linear(Q).unwrap(),
            before,
            "the reversed g_idx is applied"
        );
        let notes = ck.notes().join("\n");
        let of = ck
            .tensor_names()
            .iter()
            .filter(|n| n.ends_with(".g_idx"))
            .count();
        assert!(of > 1, "{of}");
        assert_mentions(
            &notes,
            &[
                "desc_act = false",
                &format!("the g_idx of 1 of {of} linears is act-order"),
                &format!("first: {Q}.g_idx"),
            ],
        );
        if !stated {
            assert_mentions(&notes, &["read from the first linear's g_idx"]);
        }
    }
}

#[test]
fn a_layer_index_not_in_canonical_decimal_is_refused_by_name() {
    // "00", "+0", "x" name no layer the engines load: the tensor would be dropped silently. A
    // huge index is a layer beyond the config's count (its +1 overflowed).
    let h = fx::config_json()["hidden_size"].as_u64().unwrap() as usize;
    for (name, want) in [
        (
            "model.layers.00.input_layernorm.weight",
            "not part of the LLaMA layout",
        ),
        (
            "model.layers.+0.input_layernorm.weight",
            "not part of the LLaMA layout",
        ),
        (
            "model.layers.x.self_attn.q_proj.bias",
            "not part of the LLaMA layout",
        ),
        (
            "model.layers.18446744073709551615.input_layernorm.weight",
            "num_hidden_layers",
        ),
    ] {
        let (_t, dir) = good(32, true, false, ZeroFormat::V1);
        fx::edit(&dir, |t| {
            t.insert(name.to_string(), (Dtype::F16, vec![h], vec![0u8; 2 * h]));
        });
        let e = Checkpoint::open(&dir).unwrap_err().to_string();
        assert_mentions(&e, &["model.safetensors", name, want]);
    }
}

#[test]
fn quant_config_spellings_the_tools_accept_are_read() {
    // transformers' GPTQConfig and GPTQModel lower-case the format.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    edit_quant_configs(&dir, |q| {
        q["checkpoint_format"] = "GPTQ".into();
    });
    Checkpoint::open(&dir).unwrap().linear(Q).unwrap();
    // static_groups stated only in config.json is config.json's: with desc_act and no g_idx,
    // the rows are in k / G order, not refused as act-order without its g_idx.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    fx::edit(&dir, |t| t.retain(|n, _| !n.ends_with(".g_idx")));
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v["desc_act"] = true.into();
        v.as_object_mut().unwrap().remove("static_groups");
    });
    fx::edit_json(&dir.join("config.json"), |v| {
        v["quantization_config"]["desc_act"] = true.into();
        v["quantization_config"]["static_groups"] = true.into();
    });
    Checkpoint::open(&dir).unwrap().linear(Q).unwrap();
}

#[test]
fn autogptq_shards_under_their_own_index_name_load() {
    // AutoGPTQ's save_quantized(max_shard_size=...) names the index after model_file_base_name.
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let one = Checkpoint::open(&dir).unwrap().linear(Q).unwrap();
    shard(&dir);
    std::fs::rename(
        dir.join("model.safetensors.index.json"),
        dir.join("gptq_model-4bit-128g.safetensors.index.json"),
    )
    .unwrap();
    assert_eq!(Checkpoint::open(&dir).unwrap().linear(Q).unwrap(), one);
    // Two such indexes: which one is meant is not guessed.
    std::fs::copy(
        dir.join("gptq_model-4bit-128g.safetensors.index.json"),
        dir.join("old.safetensors.index.json"),
    )
    .unwrap();
    let e = Checkpoint::open(&dir).err().unwrap().to_string();
    assert_mentions(&e, &["2 shard indexes", "old.safetensors.index.json"]);
}

#[test]
fn model_safetensors_beside_an_index_of_other_shards_is_refused() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let one = Checkpoint::open(&dir).unwrap().linear(Q).unwrap();
    // An index that names model.safetensors alone (some tools write one for a single file).
    let names = fx::read_tensors(&dir.join("model.safetensors"));
    let map: serde_json::Map<String, serde_json::Value> = names
        .keys()
        .map(|k| (k.clone(), "model.safetensors".into()))
        .collect();
    write_index(&dir, &serde_json::json!({ "weight_map": map }));
    assert_eq!(Checkpoint::open(&dir).unwrap().linear(Q).unwrap(), one);
    // Shards beside a stale model.safetensors: transformers would take the file, sharded loaders
    // the index. Not guessed.
    let single = std::fs::read(dir.join("model.safetensors")).unwrap();
    shard(&dir);
    std::fs::write(dir.join("model.safetensors"), &single).unwrap();
    let e = Checkpoint::open(&dir).err().unwrap().to_string();
    assert_mentions(
        &e,
        &[
            "model.safetensors and model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "stale",
        ],
    );
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_eq!(Checkpoint::open(&dir).unwrap().linear(Q).unwrap(), one);
}

#[test]
fn model_file_base_name_chooses_among_files_as_autogptq_does() {
    let (_t, dir) = good(32, true, false, ZeroFormat::V1);
    let one = Checkpoint::open(&dir).unwrap().linear(Q).unwrap();
    std::fs::rename(
        dir.join("model.safetensors"),
        dir.join("gptq_model-4bit-128g.safetensors"),
    )
    .unwrap();
    // Another weights file beside it (an older export): the folder alone cannot say which.
    std::fs::write(dir.join("vicuna-7b-4bit-128g.safetensors"), b"not read").unwrap();
    let e = Checkpoint::open(&dir).err().unwrap().to_string();
    assert_mentions(&e, &["2 .safetensors files", "model_file_base_name"]);
    // The quant config names one: AutoGPTQ loads that, and so does the lab. config.json's
    // quantization_config is read where quantize_config.json says nothing.
    for in_qc in [true, false] {
        edit_quant_configs(&dir, |q| {
            q.as_object_mut().unwrap().remove("model_file_base_name");
        });
        let file = if in_qc {
            dir.join("quantize_config.json")
        } else {
            dir.join("config.json")
        };
        fx::edit_json(&file, |v| {
            let q = if in_qc {
                v
            } else {
                &mut v["quantization_config"]
            };
            q["model_file_base_name"] = "gptq_model-4bit-128g".into();
        });
        assert_eq!(
            Checkpoint::open(&dir).unwrap().linear(Q).unwrap(),
            one,
            "{in_qc}"
        );
    }
    // Named, with a model.safetensors beside it: AutoGPTQ would load the named file and
    // transformers model.safetensors. Not guessed.
    std::fs::copy(
        dir.join("gptq_model-4bit-128g.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let e = Checkpoint::open(&dir).err().unwrap().to_string();
    assert_mentions(
        &e,
        &[
            "model_file_base_name names gptq_model-4bit-128g.safetensors",
            "model.safetensors is here too",
        ],
    );
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    // A name with a path in it is not followed.
    edit_quant_configs(&dir, |q| {
        q["model_file_base_name"] = "../gptq_model-4bit-128g".into()
    });
    let e = Checkpoint::open(&dir).err().unwrap().to_string();
    assert_mentions(&e, &["2 .safetensors files"]);
    // Shard indexes likewise: the named one is taken among several.
    edit_quant_configs(&dir, |q| {
        q["model_file_base_name"] = "gptq_model-4bit-128g".into()
    });
    std::fs::remove_file(dir.join("vicuna-7b-4bit-128g.safetensors")).unwrap();
    std::fs::rename(
        dir.join("gptq_model-4bit-128g.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    shard(&dir);
    std::fs::rename(
        dir.join("model.safetensors.index.json"),
        dir.join("gptq_model-4bit-128g.safetensors.index.json"),
    )
    .unwrap();
    std::fs::write(dir.join("old.safetensors.index.json"), "{}").unwrap();
    assert_eq!(Checkpoint::open(&dir).unwrap().linear(Q).unwrap(), one);
}
