//! Checkpoint round trips: the writer's v1 and v2 files reopen bit-identical; GPTQ-for-LLaMa era
//! files (odd name, no quantize config, no g_idx) are inferred; sharded and fp16 checkpoints load.

mod checkpoint_fixtures;

use checkpoint_fixtures as fx;
use gptq_lab::gptq::ZeroFormat;
use gptq_lab::model::checkpoint::{write_gptq_checkpoint, Checkpoint, LinearWeights};

fn assert_layers_identical(ck: &Checkpoint, layers: &[(String, gptq_lab::gptq::QuantLinear)]) {
    for (prefix, src) in layers {
        match ck.linear(prefix).unwrap() {
            LinearWeights::Quant(l) => assert_eq!(&l, src, "{prefix}"),
            LinearWeights::Dense { .. } => panic!("{prefix} loaded as dense"),
        }
    }
}

#[test]
fn v1_and_v2_round_trips_are_bit_identical() {
    let cases = [
        (128, true, false, ZeroFormat::V1),
        (32, false, false, ZeroFormat::V1),
        (64, false, true, ZeroFormat::V1),
        (-1, true, true, ZeroFormat::V1),
        (32, false, true, ZeroFormat::V2),
        (128, true, false, ZeroFormat::V2),
    ];
    for (gs, sym, act, fmt) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ck");
        let layers = fx::write(&dir, gs, sym, act, fmt);
        let ck = Checkpoint::open(&dir).unwrap();
        let q = ck.quant.as_ref().unwrap();
        assert_eq!(
            (q.group_size, q.sym, q.desc_act, q.format),
            (gs, sym, act, fmt)
        );
        assert!(q.inferred.is_empty(), "{:?}", q.inferred);
        assert_layers_identical(&ck, &layers);
        // Symmetric layers keep the flag kernels use to skip qzeros, as loaded.
        for (name, _) in &layers {
            match ck.linear(name).unwrap() {
                LinearWeights::Quant(l) => assert_eq!(l.symmetric, sym, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        // Dense tensors come back as written (f16 -> f32 is exact).
        for (name, data, shape) in fx::dense() {
            let (v, s) = ck.tensor_f32(&name).unwrap();
            assert_eq!(s, shape);
            assert!(v.iter().zip(&data).all(|(a, b)| *a == b.to_f32()), "{name}");
        }
    }
}

#[test]
fn v1_stores_zero_minus_one_and_v2_the_true_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    let layers = fx::write(&d1, 32, false, false, ZeroFormat::V1);
    fx::write(&d2, 32, false, false, ZeroFormat::V2);
    let name = format!("{}.qzeros", layers[0].0);
    let z1 = fx::words(&fx::read_tensors(&d1.join("model.safetensors"))[&name].2);
    let z2 = fx::words(&fx::read_tensors(&d2.join("model.safetensors"))[&name].2);
    assert_eq!(z2, layers[0].1.qzeros);
    for (a, b) in z1.iter().zip(&z2) {
        for j in 0..8 {
            assert_eq!((a >> (4 * j)) & 0xF, ((b >> (4 * j)) & 0xF) - 1);
        }
    }
    let qc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d1.join("quantize_config.json")).unwrap())
            .unwrap();
    assert_eq!(qc["checkpoint_format"], "gptq");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d2.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["checkpoint_format"], "gptq_v2");
    assert_eq!(cfg["hidden_size"], fx::HIDDEN);
}

#[test]
fn writer_stores_autogptq_dtypes_and_shapes_with_g_idx_always() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let layers = fx::write(&dir, 64, true, false, ZeroFormat::V1);
    let t = fx::read_tensors(&dir.join("model.safetensors"));
    let (p, l) = &layers[6]; // down_proj, K = 256, N = 128
    use safetensors::Dtype::*;
    assert_eq!(
        (t[&format!("{p}.qweight")].0, &t[&format!("{p}.qweight")].1),
        (I32, &vec![32, 128])
    );
    assert_eq!(
        (t[&format!("{p}.qzeros")].0, &t[&format!("{p}.qzeros")].1),
        (I32, &vec![4, 16])
    );
    assert_eq!(
        (t[&format!("{p}.scales")].0, &t[&format!("{p}.scales")].1),
        (F16, &vec![4, 128])
    );
    assert_eq!(
        (t[&format!("{p}.g_idx")].0, &t[&format!("{p}.g_idx")].1),
        (I32, &vec![256])
    );
    assert!(l.g_idx.is_none());
    // Symmetric v1: every zero word is 0x77777777, as AutoGPTQ writes it.
    assert!(fx::words(&t[&format!("{p}.qzeros")].2)
        .iter()
        .all(|&w| w == 0x7777_7777));
    // Bias only where the layer has one (q_proj in the fixture).
    assert!(
        t.contains_key(&format!("{}.bias", layers[0].0)) && !t.contains_key(&format!("{p}.bias"))
    );
    // tensor_bytes is what the file holds.
    let ck = Checkpoint::open(&dir).unwrap();
    let tb = ck.tensor_bytes();
    assert_eq!(tb[&format!("{p}.qweight")], 32 * 128 * 4);
    assert_eq!(
        tb["model.embed_tokens.weight"],
        (fx::VOCAB * fx::HIDDEN * 2) as u64
    );
    assert_eq!(ck.tensor_names(), t.keys().cloned().collect::<Vec<_>>());
    // transformers refuses a safetensors file whose metadata lacks format = "pt".
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
}

#[test]
fn writer_refuses_settings_its_tensors_do_not_have_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let layers = fx::model_layers(32, true, false);
    for (info, want) in [
        (
            gptq_lab::model::checkpoint::QuantInfo {
                bits: 3,
                ..fx::info(32, true, false)
            },
            "bits = 3; only 4-bit GPTQ can be written".to_string(),
        ),
        (
            fx::info(64, true, false),
            format!(
                "layer '{}' has group size 32 but the quant info says 64",
                layers[0].0
            ),
        ),
    ] {
        let e = write_gptq_checkpoint(
            &dir,
            &fx::config_json(),
            &layers,
            &fx::dense(),
            ZeroFormat::V1,
            &info,
        )
        .err()
        .map(|e| e.to_string());
        let e = e.unwrap_or_else(|| panic!("written despite: {want}"));
        assert!(e.contains("ck") && e.contains(&want), "{e}");
        assert!(!dir.exists(), "a refused write left a folder behind");
    }
}

#[test]
fn writing_into_an_existing_folder_refuses_other_weights_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let layers = fx::write(&dir, 32, true, false, ZeroFormat::V1);
    // Rewriting a folder that holds only this writer's files replaces them.
    fx::write(&dir, 32, true, false, ZeroFormat::V2);
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.quant.as_ref().unwrap().format, ZeroFormat::V2);
    assert_layers_identical(&ck, &layers);
    let write_again = || {
        write_gptq_checkpoint(
            &dir,
            &fx::config_json(),
            &layers,
            &fx::dense(),
            ZeroFormat::V1,
            &fx::info(32, true, false),
        )
    };
    // Another weights file or a shard index beside it would shadow or mix with the new weights.
    for other in ["old-4bit-128g.safetensors", "model.safetensors.index.json"] {
        std::fs::write(dir.join(other), b"{}").unwrap();
        let e = write_again().unwrap_err().to_string();
        assert!(
            e.contains(other) && e.contains("would shadow or mix with the new model.safetensors"),
            "{e}"
        );
        std::fs::remove_file(dir.join(other)).unwrap();
    }
    // A model.safetensors that is a link (a Hugging Face cache snapshot links every file to its
    // blob) is refused, and the file it leads to is left as it was, never written through.
    #[cfg(unix)]
    {
        let blob = tmp.path().join("blob");
        std::fs::write(&blob, b"cached weights").unwrap();
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        std::os::unix::fs::symlink(&blob, dir.join("model.safetensors")).unwrap();
        let e = write_again().err().map(|e| e.to_string());
        assert_eq!(std::fs::read(&blob).unwrap(), b"cached weights");
        let e = e.expect("written through a link");
        assert!(
            e.contains("model.safetensors") && e.contains("symbolic link"),
            "{e}"
        );
    }
}

/// A new folder is built as a temp folder and renamed into place: it ends up with the mode of any
/// folder the user makes under the same umask (a forced 0700 would hide it from the group), and
/// no temp folder is left beside it.
#[cfg(unix)]
#[test]
fn a_new_checkpoint_folder_gets_a_mkdirs_mode_and_leaves_no_temp_folder() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    fx::write(&dir, 32, true, false, ZeroFormat::V1);
    // What a folder the user made would be, under this process's umask (neither forced private
    // nor forced open).
    let made = tmp.path().join("made");
    std::fs::create_dir(&made).unwrap();
    assert_eq!(mode(&dir), mode(&made), "{:o}", mode(&dir));
    std::fs::remove_dir(&made).unwrap();
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("ck")],
        "temp folders left"
    );
}

#[test]
fn v1_writer_refuses_a_true_zero_of_zero_and_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    // Weights all >= 0 in column 0: min = 0 -> zero 0 there.
    let mut l = fx::layer(128, 128, 32, false, false, false, 3);
    let mut z = l.zeros();
    z[0] = 0;
    l.qzeros = gptq_lab::gptq::pack::pack_zeros(&z, l.groups(), l.n);
    let layers = vec![("model.layers.0.self_attn.q_proj".to_string(), l)];
    let dir = tmp.path().join("ck");
    // One layer's tensors: the config must say so, or the open refuses the layer count.
    let mut config = fx::config_json();
    config["num_hidden_layers"] = 1.into();
    let e = write_gptq_checkpoint(
        &dir,
        &config,
        &layers,
        &[],
        ZeroFormat::V1,
        &fx::info(32, false, false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.qzeros") && e.contains("(0, 0)"),
        "{e}"
    );
    assert!(!dir.exists(), "a refused write left a folder behind");
    // v2 stores it fine.
    write_gptq_checkpoint(
        &dir,
        &config,
        &layers,
        &[],
        ZeroFormat::V2,
        &fx::info(32, false, false),
    )
    .unwrap();
    assert_layers_identical(&Checkpoint::open(&dir).unwrap(), &layers);
}

/// Asymmetric layers with true zeros of 0 (and 1 right above some, so borrows chain), written
/// as GPTQModel exports v1: the true zeros minus 0x11111111 per whole int32 word.
fn write_whole_word_v1(
    dir: &std::path::Path,
    meta: serde_json::Value,
) -> Vec<(String, gptq_lab::gptq::QuantLinear)> {
    let mut layers = fx::model_layers(32, false, false);
    for (i, (_, l)) in layers.iter_mut().enumerate() {
        let mut z = l.zeros();
        for (j, z) in z.iter_mut().enumerate() {
            match (j + i) % 7 {
                0 => *z = 0,
                1 => *z = 1,
                _ => {}
            }
        }
        // The top nibble of a word too: its borrow leaves the word.
        z[7] = 0;
        l.qzeros = gptq_lab::gptq::pack::pack_zeros(&z, l.groups(), l.n);
    }
    write_gptq_checkpoint(
        dir,
        &fx::config_json(),
        &layers,
        &fx::dense(),
        ZeroFormat::V2,
        &fx::info(32, false, false),
    )
    .unwrap();
    fx::edit(dir, |t| {
        for (name, (_, _, b)) in t.iter_mut() {
            if name.ends_with(".qzeros") {
                let w: Vec<u32> = fx::words(b)
                    .iter()
                    .map(|w| w.wrapping_sub(0x1111_1111))
                    .collect();
                *b = fx::bytes(&w);
            }
        }
    });
    let relabel = |q: &mut serde_json::Value| {
        q["checkpoint_format"] = "gptq".into();
        q["format"] = "gptq".into();
        q["meta"] = meta.clone();
    };
    fx::edit_json(&dir.join("quantize_config.json"), relabel);
    fx::edit_json(&dir.join("config.json"), |v| {
        relabel(&mut v["quantization_config"])
    });
    layers
}

#[test]
fn whole_word_v1_files_of_gptqmodel_and_autogptq_read_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let meta = serde_json::json!({"quantizer": ["gptqmodel:1.4.5"], "uri": "https://github.com/modelcloud/gptqmodel"});
    let dir = tmp.path().join("gptqmodel");
    let layers = write_whole_word_v1(&dir, meta.clone());
    // The file has borrows a per-nibble reading would misread (0xF nibbles).
    let qz = fx::words(
        &fx::read_tensors(&dir.join("model.safetensors"))["model.layers.0.self_attn.q_proj.qzeros"]
            .2,
    );
    assert!(gptq_lab::gptq::zeros::v1_underflow(&qz, 64).is_some());
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(
        ck.quant.as_ref().unwrap().whole_word_v1.as_deref(),
        Some("meta.quantizer 'gptqmodel:1.4.5'")
    );
    assert_layers_identical(&ck, &layers);
    let notes = ck.notes().join("\n");
    assert!(
        notes.contains("gptqmodel:1.4.5") && notes.contains("whole-word"),
        "{notes}"
    );

    // Named in config.json only (quantize_config.json without meta): still that writer's file.
    fx::edit_json(&dir.join("quantize_config.json"), |v| {
        v.as_object_mut().unwrap().remove("meta");
    });
    let ck = Checkpoint::open(&dir).unwrap();
    assert_layers_identical(&ck, &layers);
    assert!(ck
        .notes()
        .join("\n")
        .contains("config.json quantization_config: meta.quantizer"));

    // AutoGPTQ's v2-era code names itself as a plain string, in quantizer or packer.
    for (meta, field) in [
        (
            serde_json::json!({"quantizer": "autogptq:0.8.0.dev1"}),
            "quantizer",
        ),
        (
            serde_json::json!({"quantizer": "someone:1.0", "packer": "autogptq:0.8.0-dev1"}),
            "packer",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("autogptq");
        let layers = write_whole_word_v1(&dir, meta);
        let ck = Checkpoint::open(&dir).unwrap();
        assert_layers_identical(&ck, &layers);
        // The note names the field that named the writer.
        let notes = ck.notes().join("\n");
        assert!(
            notes.contains(&format!("meta.{field} 'autogptq:0.8.0")),
            "{notes}"
        );
    }

    // No such writer named (none, an older GPTQModel, an unreadable version, another tool): the
    // 0xF nibbles are refused as underflow, and the message says what would have read them.
    for meta in [
        serde_json::Value::Null,
        serde_json::json!({"quantizer": ["gptqmodel:0.8.9"]}),
        serde_json::json!({"quantizer": ["gptqmodel:test"]}),
        serde_json::json!({"quantizer": ["llmcompressor:0.9"]}),
        serde_json::json!({"quantizer": 7}),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("unnamed");
        write_whole_word_v1(&dir, meta.clone());
        let ck = Checkpoint::open(&dir).unwrap();
        assert!(ck.quant.as_ref().unwrap().whole_word_v1.is_none(), "{meta}");
        let e = ck
            .linear("model.layers.0.self_attn.q_proj")
            .unwrap_err()
            .to_string();
        for part in [
            "q_proj.qzeros",
            "0xF",
            "meta.quantizer",
            "GPTQModel",
            "quantize_config.json",
        ] {
            assert!(
                e.contains(part),
                "{meta}: error does not mention {part:?}:\n{e}"
            );
        }
    }
    // Settings read from the tensors (no quantize config at all): nothing could name a writer,
    // and the message says so instead of pointing at a weights file's "meta.quantizer".
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("era");
    write_whole_word_v1(&dir, serde_json::Value::Null);
    make_era(&dir, true);
    let e = Checkpoint::open(&dir)
        .unwrap()
        .linear("model.layers.0.self_attn.q_proj")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no quantize config to name one") && !e.contains("names no such writer"),
        "{e}"
    );
}

/// Turn a written checkpoint into a GPTQ-for-LLaMa era one: odd file name, no quantize config.
fn make_era(dir: &std::path::Path, drop_g_idx: bool) {
    std::fs::remove_file(dir.join("quantize_config.json")).unwrap();
    fx::edit_json(&dir.join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("quantization_config");
    });
    if drop_g_idx {
        fx::edit(dir, |t| t.retain(|n, _| !n.ends_with(".g_idx")));
    }
    std::fs::rename(
        dir.join("model.safetensors"),
        dir.join("vicuna-tiny-4bit-64g.safetensors"),
    )
    .unwrap();
}

#[test]
fn era_checkpoint_settings_are_inferred_from_tensors() {
    for (gs, sym, act) in [(64, true, false), (32, false, true), (-1, false, false)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ck");
        let layers = fx::write(&dir, gs, sym, act, ZeroFormat::V1);
        make_era(&dir, !act);
        let ck = Checkpoint::open(&dir).unwrap();
        let q = ck.quant.clone().unwrap();
        assert_eq!(
            (q.bits, q.group_size, q.sym, q.desc_act, q.format),
            (4, gs, sym, act, ZeroFormat::V1)
        );
        let all = q.inferred.join("\n");
        for what in ["bits", "group_size", "sym", "desc_act", "checkpoint_format"] {
            assert!(
                all.contains(what),
                "inferred does not mention {what}:\n{all}"
            );
        }
        if !act {
            assert!(all.contains("absent"), "{all}");
        }
        assert_layers_identical(&ck, &layers);
        // Passing the file itself works too.
        let by_file = Checkpoint::open(&dir.join("vicuna-tiny-4bit-64g.safetensors")).unwrap();
        assert_eq!(by_file.quant.unwrap().group_size, gs);
    }
}

#[test]
fn era_inference_refuses_a_row_count_that_fits_no_bit_width() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    fx::write(&dir, 64, true, false, ZeroFormat::V1);
    make_era(&dir, true);
    let path = dir.join("vicuna-tiny-4bit-64g.safetensors");
    // The settings are read from the first quantized linear by name: layer 0's down_proj.
    // 2^59 rows of zero columns make a zero-byte tensor, so the header is valid; rows * 32 wraps
    // to 0 in 64 bits and used to read as "bits = 0". K / 8 + 1 rows fit no bit width either.
    let k = fx::INTER;
    for rows in [1usize << 59, k / 8 + 1] {
        let mut t = fx::read_tensors(&path);
        let q = t.get_mut("model.layers.0.mlp.down_proj.qweight").unwrap();
        *q = (q.0, vec![rows, 0], Vec::new());
        fx::write_tensors(&path, &t);
        let e = Checkpoint::open(&dir).err().unwrap().to_string();
        for part in [
            "down_proj.qweight",
            &format!("{rows} rows"),
            &format!("K = {k}"),
            "bit width",
        ] {
            assert!(
                e.contains(part),
                "{rows}: error does not mention {part:?}:\n{e}"
            );
        }
    }
}

#[test]
fn sharded_checkpoint_loads_through_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let layers = fx::write(&dir, 32, false, true, ZeroFormat::V1);
    let mut map = fx::split_in_two_shards(&dir, |name| {
        name.starts_with("model.layers.1") || name.starts_with("lm_head")
    });
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    assert_layers_identical(&ck, &layers);
    assert!(ck.tensor_f32("lm_head.weight").is_ok());

    // An index that puts a tensor in the wrong shard is refused, naming the shard and tensor.
    map.insert(
        "lm_head.weight".into(),
        "model-00001-of-00002.safetensors".into(),
    );
    let index = serde_json::json!({"weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("model-00001-of-00002.safetensors"),
        "{e}"
    );
}

#[test]
fn dense_checkpoints_in_f16_bf16_and_f32_give_linears_transposed_to_kn() {
    use safetensors::Dtype;
    // q_proj.weight [N, K] = [128, 128] with w[o][i] = (3o + i) mod 64 - 32: small integers,
    // exact in all three dtypes, and no two neighbours equal (a transpose slip shows).
    let (n, k) = (fx::HIDDEN, fx::HIDDEN);
    let w: Vec<f32> = (0..n * k)
        .map(|x| ((3 * (x / k) + x % k) % 64) as f32 - 32.0)
        .collect();
    for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ck");
        let b: Vec<u8> = match dtype {
            Dtype::F16 => w
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::BF16 => w
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            _ => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let mut t = fx::Tensors::new();
        t.insert(
            "model.layers.0.self_attn.q_proj.weight".into(),
            (dtype, vec![n, k], b),
        );
        std::fs::create_dir_all(&dir).unwrap();
        fx::write_tensors(&dir.join("model.safetensors"), &t);
        // Only layer 0's q_proj: the config must give one layer, or the open refuses the count.
        let mut config = fx::config_json();
        config["num_hidden_layers"] = 1.into();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        assert!(ck.quant.is_none());
        let LinearWeights::Dense { k: kk, n: nn, w_kn } =
            ck.linear("model.layers.0.self_attn.q_proj").unwrap()
        else {
            panic!("{dtype:?}: expected dense");
        };
        assert_eq!((kk, nn), (k, n));
        // w_kn[i][o] = w[o][i] for every element: input row i, output column o.
        for i in 0..k {
            for o in 0..n {
                assert_eq!(w_kn[i * n + o], w[o * k + i], "{dtype:?} ({i}, {o})");
            }
        }
    }
}

#[test]
fn weight_files_the_loader_leaves_unread_are_named_in_its_notes() {
    // A stale export beside model.safetensors is left alone, as transformers leaves it, but the
    // results cannot tell which file was the model: the notes say it (the commands print them).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let layers = fx::write(&dir, 32, false, false, ZeroFormat::V1);
    let ck = Checkpoint::open(&dir).unwrap();
    assert!(
        !ck.notes().join("\n").contains("not read"),
        "{:?}",
        ck.notes()
    );
    std::fs::copy(
        dir.join("model.safetensors"),
        dir.join("vicuna-7b-4bit-128g.safetensors"),
    )
    .unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    assert_layers_identical(&ck, &layers);
    let notes = ck.notes().join("\n");
    assert!(
        notes.contains("weights read from model.safetensors; vicuna-7b-4bit-128g.safetensors here too, not read"),
        "{notes}"
    );
    // That file named as --checkpoint FILE: the others are left out on purpose, no note.
    let ck = Checkpoint::open(&dir.join("vicuna-7b-4bit-128g.safetensors")).unwrap();
    assert!(
        !ck.notes().join("\n").contains("not read"),
        "{:?}",
        ck.notes()
    );
    // A shard index: a file it does not name is noted, its shards are not.
    let map = fx::split_in_two_shards(&dir, |name| name.starts_with("model.layers.1"));
    let index = serde_json::json!({"weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    assert_layers_identical(&ck, &layers);
    let notes = ck.notes().join("\n");
    assert!(
        notes.contains(
            "weights read from model-00001-of-00002.safetensors, model-00002-of-00002.safetensors; \
             vicuna-7b-4bit-128g.safetensors here too, not read"
        ),
        "{notes}"
    );
}
