//! The GPU engine's streaming checkpoint load, everything before the host-to-device copies: per
//! layer conversion, layout and byte accounting on the committed tiny fixtures (and v2 / sharded
//! rewrites of them), and the preflight refusing bad checkpoints before a single layer is handed
//! to the uploader. No GPU needed.

mod checkpoint_fixtures;
use checkpoint_fixtures as fx;

use gptq_lab::gptq::{QuantLinear, ZeroFormat};
use gptq_lab::model::checkpoint::{write_gptq_checkpoint, Checkpoint};
use gptq_lab::model::gpu_layout::{layout_layer, LaidOutLayer};
use gptq_lab::model::gpu_weights::{HostLinear, HostLlama, WeightKind};
use gptq_lab::model::layer_source::{linear_names, stream_model, CheckpointLayers, LayerSource};
use gptq_lab::model::weights::LlamaWeights;
use gptq_lab::plan::{WeightBytes, WeightDtype};
use half::f16;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 5] = [
    "tiny-fp16",
    "tiny-sym-g32",
    "tiny-asym-gall",
    "tiny-sym-act-g64",
    "tiny-asym-act-g32",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every laid-out layer and the three tables, through the same loop the uploader uses.
type Collected = (Vec<LaidOutLayer>, Vec<Vec<f16>>, WeightKind, bool);

fn stream(ck: &Checkpoint) -> Collected {
    let m = stream_model(
        &CheckpointLayers::new(ck),
        &ck.config,
        "test",
        |_, l| Ok(l.clone()),
        |_, t| Ok(t.to_vec()),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", ck.dir.display()));
    (
        m.layers,
        vec![m.embed, m.final_norm, m.lm_head],
        m.kind,
        m.fused,
    )
}

/// The same, from the whole-model host form (what the GPU check builds from).
fn from_host(ck: &Checkpoint) -> Collected {
    let host = HostLlama::from_checkpoint(ck).unwrap();
    let m = stream_model(
        &host,
        &ck.config,
        "test",
        |_, l| Ok(l.clone()),
        |_, t| Ok(t.to_vec()),
    )
    .unwrap();
    (
        m.layers,
        vec![m.embed, m.final_norm, m.lm_head],
        m.kind,
        m.fused,
    )
}

#[test]
fn streamed_layers_equal_the_whole_model_host_form_layer_for_layer() {
    for name in FIXTURES {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        let host = HostLlama::from_checkpoint(&ck).unwrap();
        let src = CheckpointLayers::new(&ck);
        src.preflight(&ck.config).unwrap();
        for (i, want) in host.layers.iter().enumerate() {
            assert_eq!(&*src.layer(i).unwrap(), want, "{name} layer {i}");
        }
        assert_eq!(*src.embed().unwrap(), host.embed[..], "{name}");
        assert_eq!(*src.lm_head().unwrap(), host.lm_head[..], "{name}");
        assert_eq!(*src.final_norm().unwrap(), host.final_norm[..], "{name}");

        let (s, h) = (stream(&ck), from_host(&ck));
        assert_eq!(s.0.len(), ck.config.num_hidden_layers);
        for (i, (a, b)) in s.0.iter().zip(&h.0).enumerate() {
            assert_eq!(a, b, "{name}: laid-out layer {i}");
        }
        assert_eq!(s.1, h.1, "{name}: tables");
        assert_eq!((s.2, s.3), (h.2, h.3), "{name}");
        // The act-order fixtures draw one channel order per linear (scripts/make-tiny-fixtures.py),
        // so their q|k|v and gate|up cannot share a permutation; everything else fuses.
        // tiny-sym-act-g64's K = 64 linears are one group (trivial g_idx): only down_proj is
        // act-order there, and the groups fuse.
        assert_eq!(s.3, name != "tiny-asym-act-g32", "{name}");
    }
}

/// The canonical host form holds exactly the CPU reference engine's weights (f64 dequant
/// rounded to f32 there; fp16 widened exactly).
#[test]
fn host_form_matches_the_cpu_reference_weights() {
    for name in FIXTURES {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        let cpu = LlamaWeights::from_checkpoint(&ck).unwrap();
        let src = CheckpointLayers::new(&ck);
        for (i, c) in cpu.layers.iter().enumerate() {
            let l = src.layer(i).unwrap();
            let mats = [&c.wq, &c.wk, &c.wv, &c.wo, &c.w_gate, &c.w_up, &c.w_down];
            for (j, (lin, m)) in l.linears.iter().zip(mats).enumerate() {
                let d: Vec<f32> = lin.dense_kn().into_iter().map(|x| x as f32).collect();
                assert_eq!(d, m.w, "{name} layer {i} linear {j}");
            }
            let widen = |v: &[f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            assert_eq!(widen(&l.attn_norm), c.attn_norm, "{name} layer {i}");
            assert_eq!(widen(&l.ffn_norm), c.ffn_norm, "{name} layer {i}");
        }
    }
}

/// Each laid-out layer (fused, act-order rows sorted) multiplies by the canonical weights.
#[test]
fn laid_out_layers_compute_the_checkpoint_weights() {
    for name in FIXTURES {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        let names = linear_names(&ck.config);
        let src = CheckpointLayers::new(&ck);
        for i in 0..ck.config.num_hidden_layers {
            let l = src.layer(i).unwrap();
            let laid = layout_layer(i, &l, &names).unwrap();
            let concat = |parts: &[&HostLinear]| -> Vec<f64> {
                let k = parts[0].kn().0;
                let d: Vec<Vec<f64>> = parts.iter().map(|p| p.dense_kn()).collect();
                (0..k)
                    .flat_map(|r| {
                        parts
                            .iter()
                            .zip(&d)
                            .flat_map(move |(p, d)| d[r * p.kn().1..(r + 1) * p.kn().1].to_vec())
                    })
                    .collect()
            };
            // Fused or not, the group's output columns hold the parts' weights in order.
            let group = |slots: &[gptq_lab::model::gpu_layout::LaidOutSlot]| -> Vec<f64> {
                let n: usize = slots.iter().map(|s| s.lin.kn().1).sum();
                let k = slots[0].lin.kn().0;
                let mut out = vec![0f64; k * n];
                for s in slots {
                    let sn = s.lin.kn().1;
                    let d = s.lin.dense_kn();
                    for r in 0..k {
                        out[r * n + s.col..r * n + s.col + sn]
                            .copy_from_slice(&d[r * sn..(r + 1) * sn]);
                    }
                }
                out
            };
            let p = &l.linears;
            assert_eq!(laid.fused(), laid.unfused.is_empty(), "{name} layer {i}");
            assert_eq!(
                group(&laid.qkv),
                concat(&[&p[0], &p[1], &p[2]]),
                "{name} layer {i}"
            );
            assert_eq!(
                group(&laid.gate_up),
                concat(&[&p[4], &p[5]]),
                "{name} layer {i}"
            );
            assert_eq!(laid.o.dense_kn(), p[3].dense_kn(), "{name} layer {i} o");
            assert_eq!(
                laid.down.dense_kn(),
                p[6].dense_kn(),
                "{name} layer {i} down"
            );
        }
    }
}

/// The streamed device bytes against the planner (src/plan) part by part. Equal: qweight,
/// scales, fp16 linears, embeddings, lm_head, norms, asymmetric qzeros. By design different:
/// symmetric layers upload no qzeros (the planner counts the checkpoint's), and the act-order
/// index is one permutation per launch (4 per layer: q|k|v and gate|up share one), where the
/// planner counts a g_idx per linear (7).
#[test]
fn streamed_bytes_match_the_planner_part_by_part() {
    for name in FIXTURES {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        let cfg = &ck.config;
        let m = stream_model(
            &CheckpointLayers::new(&ck),
            cfg,
            "test",
            |_, _| Ok(()),
            |_, t| Ok(t.len() as u64 * 2),
        )
        .unwrap();
        let b = m.layer_bytes;
        let (dtype, group, act, sym) = match m.kind {
            WeightKind::Fp16 => (WeightDtype::Fp16, -1, false, false),
            WeightKind::Int4 {
                group,
                act_order,
                sym,
            } => (WeightDtype::Int4, group, act_order, sym),
        };
        let plan = WeightBytes::of(cfg, dtype, group, act).parts;
        assert_eq!(b.qweight, plan.qweight, "{name}");
        assert_eq!(b.scales, plan.scales, "{name}");
        assert_eq!(b.fp16_linear, plan.fp16_linear, "{name}");
        assert_eq!(b.qzeros, if sym { 0 } else { plan.qzeros }, "{name}");
        assert_eq!(b.norms + m.final_norm, plan.norms, "{name}");
        assert_eq!(m.embed, plan.embeddings, "{name}");
        assert_eq!(m.lm_head, plan.lm_head, "{name}: the fixtures are untied");
        // The act-order index: the planner counts K x 4 bytes for each of the 7 linears; the
        // engine uploads one permutation per launch whose rows are really act-order (a trivial
        // g_idx, as on tiny-sym-act-g64's single-group K = 64 linears, needs none).
        assert!(b.perm + b.g_idx <= plan.g_idx, "{name}");
        assert_eq!(b.perm > 0, act, "{name}");
        let want = gptq_lab::model::decode_bench::expected_weights(cfg, m.kind).unwrap();
        let (h, layers) = (cfg.hidden_size as u64, cfg.num_hidden_layers as u64);
        match name {
            // Every linear act-order and none fused: exactly the planner's 7 per layer, and the
            // 3 per layer more than the engine's fused prediction.
            "tiny-asym-act-g32" => {
                assert_eq!(b.perm, plan.g_idx, "{name}");
                assert_eq!(
                    b.linears(),
                    want.linear_bytes + layers * 3 * h * 4,
                    "{name}"
                );
            }
            // Only down_proj (K = inter) is act-order.
            "tiny-sym-act-g64" => {
                assert_eq!(b.perm, layers * cfg.intermediate_size as u64 * 4, "{name}");
            }
            // No act-order: the engine's prediction (decode_bench) is exact.
            _ => assert_eq!(b.linears(), want.linear_bytes, "{name}"),
        }
        assert_eq!(b.norms + m.final_norm, want.norm_bytes, "{name}");
    }
}

/// A source that logs each layer it hands out, so a test sees the order of reads and sinks.
struct Logged<'a> {
    inner: CheckpointLayers<'a>,
    log: &'a std::cell::RefCell<Vec<String>>,
}

impl LayerSource for Logged<'_> {
    fn num_layers(&self) -> usize {
        self.inner.num_layers()
    }
    fn preflight(&self, cfg: &gptq_lab::model::config::ModelConfig) -> gptq_lab::Result<()> {
        self.inner.preflight(cfg)
    }
    fn layer(
        &self,
        i: usize,
    ) -> gptq_lab::Result<std::borrow::Cow<'_, gptq_lab::model::gpu_weights::HostLayer>> {
        self.log.borrow_mut().push(format!("read {i}"));
        self.inner.layer(i)
    }
    fn embed(&self) -> gptq_lab::Result<std::borrow::Cow<'_, [f16]>> {
        self.inner.embed()
    }
    fn final_norm(&self) -> gptq_lab::Result<std::borrow::Cow<'_, [f16]>> {
        self.inner.final_norm()
    }
    fn lm_head(&self) -> gptq_lab::Result<std::borrow::Cow<'_, [f16]>> {
        self.inner.lm_head()
    }
}

/// Host memory of a streamed load: one layer at a time, far below the whole model.
#[test]
fn streaming_holds_one_layer_at_a_time() {
    let ck = Checkpoint::open(&fixture("tiny-asym-act-g32")).unwrap();
    let host = HostLlama::from_checkpoint(&ck).unwrap();
    let whole: u64 = host.layers.iter().map(|l| l.host_bytes()).sum();
    let log = std::cell::RefCell::new(Vec::new());
    let src = Logged {
        inner: CheckpointLayers::new(&ck),
        log: &log,
    };
    let m = stream_model(
        &src,
        &ck.config,
        "test",
        |i, _| {
            log.borrow_mut().push(format!("sink {i}"));
            Ok(())
        },
        |_, _| Ok(()),
    )
    .unwrap();
    // Each layer is read, then handed on, before the next is read: the loader never holds two
    // layers' canonical forms at once (reading them all first would log read 0, read 1, ...).
    let want: Vec<String> = (0..ck.config.num_hidden_layers)
        .flat_map(|i| [format!("read {i}"), format!("sink {i}")])
        .collect();
    assert_eq!(log.into_inner(), want);
    let one = host.layers[0].host_bytes();
    // canonical + laid out of one layer: about twice one layer, never the whole model's layers.
    assert!(m.stats.peak_layer_host_bytes >= one, "{:?}", m.stats);
    assert!(m.stats.peak_layer_host_bytes < 3 * one, "{:?}", m.stats);
    assert!(whole >= 2 * one);
    let (v, h) = (ck.config.vocab_size as u64, ck.config.hidden_size as u64);
    assert_eq!(m.stats.peak_table_host_bytes, v * h * 2);
}

/// Rewrite a fixture's weights with the lab's writer (v1 or v2 zeros), optionally in 2 shards.
fn rewrite(name: &str, dir: &Path, fmt: ZeroFormat, sharded: bool) {
    let ck = Checkpoint::open(&fixture(name)).unwrap();
    let host = HostLlama::from_checkpoint(&ck).unwrap();
    let names = linear_names(&ck.config);
    let mut layers: Vec<(String, QuantLinear)> = Vec::new();
    let mut dense: Vec<(String, Vec<f16>, Vec<usize>)> = Vec::new();
    let (h, v) = (ck.config.hidden_size, ck.config.vocab_size);
    for (i, l) in host.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        for (lin, n) in l.linears.iter().zip(&names) {
            match lin {
                HostLinear::Quant(q) => layers.push((format!("{p}.{n}"), q.clone())),
                HostLinear::F16 { .. } => panic!("{name}: int4 fixtures only"),
            }
        }
        dense.push((
            format!("{p}.input_layernorm.weight"),
            l.attn_norm.clone(),
            vec![h],
        ));
        dense.push((
            format!("{p}.post_attention_layernorm.weight"),
            l.ffn_norm.clone(),
            vec![h],
        ));
    }
    dense.push((
        "model.embed_tokens.weight".into(),
        host.embed.clone(),
        vec![v, h],
    ));
    dense.push(("model.norm.weight".into(), host.final_norm.clone(), vec![h]));
    dense.push(("lm_head.weight".into(), host.lm_head.clone(), vec![v, h]));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
            .unwrap();
    let mut info = ck.quant.clone().unwrap();
    info.format = fmt;
    write_gptq_checkpoint(dir, &cfg, &layers, &dense, fmt, &info).unwrap();
    if sharded {
        let all = fx::read_tensors(&dir.join("model.safetensors"));
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let mut shards: [fx::Tensors; 2] = Default::default();
        let mut map = BTreeMap::new();
        for (n, t) in all {
            let s = usize::from(n.starts_with("model.layers.1") || n.starts_with("lm_head"));
            map.insert(
                n.clone(),
                format!("model-0000{}-of-00002.safetensors", s + 1),
            );
            shards[s].insert(n, t);
        }
        for (s, t) in shards.iter().enumerate() {
            fx::write_tensors(
                &dir.join(format!("model-0000{}-of-00002.safetensors", s + 1)),
                t,
            );
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

#[test]
fn v2_zeros_and_sharded_files_stream_to_the_same_layers() {
    for name in ["tiny-asym-act-g32", "tiny-sym-g32"] {
        let want = stream(&Checkpoint::open(&fixture(name)).unwrap());
        for (fmt, sharded) in [
            (ZeroFormat::V2, false),
            (ZeroFormat::V1, true),
            (ZeroFormat::V2, true),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("ck");
            rewrite(name, &dir, fmt, sharded);
            let ck = Checkpoint::open(&dir).unwrap();
            assert_eq!(ck.quant.as_ref().unwrap().format, fmt);
            let got = stream(&ck);
            assert_eq!(got.0, want.0, "{name} {fmt:?} sharded {sharded}");
            assert_eq!(got.1, want.1, "{name} {fmt:?} sharded {sharded}");
        }
    }
}

/// A copy of a fixture edited at the tensor level.
fn broken(name: &str, edit: impl FnOnce(&mut fx::Tensors)) -> (tempfile::TempDir, Checkpoint) {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    fx::edit(tmp.path(), edit);
    let ck = Checkpoint::open(tmp.path()).unwrap();
    (tmp, ck)
}

/// The preflight error, and proof that no layer reached the sink (the uploader) first.
fn refused(ck: &Checkpoint) -> String {
    let mut sunk = 0;
    let r = stream_model(
        &CheckpointLayers::new(ck),
        &ck.config,
        "test",
        |_, _| {
            sunk += 1;
            Ok(())
        },
        |_, _| Ok(()),
    );
    let e = match r {
        Ok(_) => panic!("{}: loaded a broken checkpoint", ck.dir.display()),
        Err(e) => e.to_string(),
    };
    assert_eq!(sunk, 0, "a layer was uploaded before the error: {e}");
    // The whole-model host form refuses the same way.
    let h = HostLlama::from_checkpoint(ck).unwrap_err().to_string();
    assert_eq!(h, e);
    e
}

fn assert_mentions(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error does not mention '{p}': {e}");
    }
}

#[test]
fn a_missing_tensor_in_the_last_layer_is_named_before_any_upload() {
    let (_t, ck) = broken("tiny-asym-act-g32", |t| {
        t.remove("model.layers.1.mlp.up_proj.scales").unwrap();
    });
    assert_mentions(
        &refused(&ck),
        &["missing tensor", "model.layers.1.mlp.up_proj.scales"],
    );
    let (_t, ck) = broken("tiny-sym-g32", |t| {
        t.remove("model.layers.1.post_attention_layernorm.weight")
            .unwrap();
    });
    assert_mentions(
        &refused(&ck),
        &["model.layers.1.post_attention_layernorm.weight"],
    );
    let (_t, ck) = broken("tiny-fp16", |t| {
        t.remove("lm_head.weight").unwrap();
    });
    assert_mentions(&refused(&ck), &["lm_head.weight"]);
}

#[test]
fn a_wrong_shape_is_named_with_the_expected_one() {
    let (_t, ck) = broken("tiny-sym-act-g64", |t| {
        let e = t.get_mut("model.layers.1.input_layernorm.weight").unwrap();
        e.1 = vec![32];
        e.2.truncate(64);
    });
    assert_mentions(
        &refused(&ck),
        &[
            "model.layers.1.input_layernorm.weight",
            "[32]",
            "expected [64]",
        ],
    );
    let (_t, ck) = broken("tiny-asym-gall", |t| {
        let e = t.get_mut("model.layers.1.mlp.down_proj.qweight").unwrap();
        let cols = e.1[1];
        e.1 = vec![e.1[0] - 1, cols];
        e.2.truncate(e.1[0] * cols * 4);
    });
    assert_mentions(
        &refused(&ck),
        &["model.layers.1.mlp.down_proj.qweight", "expected"],
    );
}

/// q, k, v with different act-order g_idx are laid out as separate launches (the committed
/// act-order fixtures are like that); a g_idx that breaks its own layer is an error naming it.
#[test]
fn mismatched_g_idx_between_q_k_v_is_named() {
    let ck = Checkpoint::open(&fixture("tiny-asym-act-g32")).unwrap();
    let (layers, ..) = stream(&ck);
    assert!(
        layers[1].unfused[0].contains("model.layers.1.self_attn.k_proj.g_idx"),
        "{:?}",
        layers[1].unfused
    );
    assert_eq!(layers[1].qkv.len(), 3);
    let (_t, ck) = broken("tiny-asym-act-g32", |t| {
        let e = t.get_mut("model.layers.1.self_attn.k_proj.g_idx").unwrap();
        let mut g = fx::words(&e.2);
        g[5] = 99; // group 99 of 2
        e.2 = fx::bytes(&g);
    });
    assert_mentions(
        &refused(&ck),
        &["model.layers.1.self_attn.k_proj.g_idx", "g_idx[5] = 99"],
    );
}

#[test]
fn a_bias_is_refused_naming_it() {
    // Non-zero (1.0 in every lane): an all-zero bias is dropped at load, the same outputs.
    let (_t, ck) = broken("tiny-sym-g32", |t| {
        t.insert(
            "model.layers.0.mlp.down_proj.bias".into(),
            (safetensors::Dtype::F16, vec![64], [0x00u8, 0x3C].repeat(64)),
        );
    });
    assert_mentions(&refused(&ck), &["model.layers.0.mlp.down_proj.bias"]);
}
