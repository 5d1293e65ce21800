use super::linears::{int4_takes_gated_input, problem_key};
use super::*;

#[test]
fn act_order_plain_takes_the_norm_and_silu_fed_linears_with_even_groups() {
    let (act, uneven, plain) = (
        Some((true, false)),
        Some((true, true)),
        Some((false, false)),
    );
    // A fused q|k|v and gate|up (one segment each) and down, all act-order with even groups.
    let all = LayerPx {
        qkv: true,
        gate_up: true,
        down: true,
    };
    assert_eq!(layer_px(true, true, &[act], &[act], act), all);
    // Off, or a kernel choice with its own act-order path: nothing.
    assert_eq!(
        layer_px(false, true, &[act], &[act], act),
        LayerPx::default()
    );
    assert_eq!(
        layer_px(true, false, &[act], &[act], act),
        LayerPx::default()
    );
    // Unfused q/k/v (three permutations for one norm), uneven groups, plain or fp16 linears:
    // the act-order kernels (or nothing to do).
    let got = layer_px(true, true, &[act, act, act], &[uneven], plain);
    assert_eq!(got, LayerPx::default());
    assert_eq!(
        layer_px(true, true, &[None], &[act], None),
        LayerPx {
            gate_up: true,
            ..LayerPx::default()
        }
    );
}

#[test]
fn plain_kernels_serve_act_order_only_under_auto() {
    let v = |n: &str| Int4Kernel::Variant(crate::kernels::registry::by_name(n).unwrap());
    assert!(!plain_kernels_serve(&Int4Kernel::Engine));
    for n in [
        "gemv_v2_vec",
        "gemv_v4_perm",
        "gemv_v6_pipe",
        "gemv_v10_l2x",
    ] {
        assert!(!plain_kernels_serve(&v(n)), "{n}");
    }
    // ... and auto (tuned or heuristic) does: without it no act-order linear runs on permuted x.
    let dev = crate::cuda::device::test_device("NVIDIA H100 80GB HBM3", (9, 0), 132);
    let auto = crate::tune::Dispatcher::from_config(None, &dev, crate::build_info::KERNEL_HASH);
    assert!(plain_kernels_serve(&Int4Kernel::Auto(Arc::new(auto))));
}

/// The shapes of a Vicuna-7B/13B layer (fused like the engine).
fn vicuna_shapes(act: bool) -> Vec<LayerShape> {
    let mut v = Vec::new();
    for &(k, n) in crate::check::cases::VICUNA_DECODE {
        v.push(LayerShape {
            k,
            n,
            group_size: 128,
            g_idx: false,
            perm: act,
            bias: false,
            symmetric: true,
        });
    }
    v
}

#[test]
fn auto_int4_kernel_serves_every_vicuna_linear_with_a_plannable_gemv() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/nvidia-h100-80gb-hbm3.json");
    let cfg = crate::tune::TunedConfig::load(&path).unwrap();
    let dev = cfg.device.clone();
    let tuned = crate::tune::Dispatcher::from_config(
        Some(cfg.clone()),
        &dev,
        crate::build_info::KERNEL_HASH,
    );
    let mut t4 = dev.clone();
    (t4.name, t4.slug, t4.cc_major, t4.cc_minor, t4.sms) =
        ("Tesla T4".into(), "tesla-t4".into(), 7, 5, 40);
    // Another GPU's config is refused: the heuristic serves, and says so in the name.
    let heuristic =
        crate::tune::Dispatcher::from_config(Some(cfg), &t4, crate::build_info::KERNEL_HASH);
    assert!(heuristic.refused.is_some());
    for d in [tuned, heuristic] {
        let k = Int4Kernel::Auto(Arc::new(d));
        for act in [false, true] {
            for s in vicuna_shapes(act) {
                let (v, params) = k
                    .choose(&s)
                    .unwrap()
                    .expect("auto always picks a registry GEMV");
                assert_eq!(
                    v.family,
                    crate::kernels::registry::Family::Gemv,
                    "{}",
                    v.name
                );
                let p = gemv_plan(v, &s, 1, s.k, s.n, &params, SmLimits::H100);
                assert!(p.is_ok(), "{} {params:?} on {s:?}: {p:?}", v.name);
            }
        }
        let name = k.name();
        assert!(name.starts_with("auto ("), "{name}");
    }
    assert!(Int4Kernel::Engine
        .choose(&vicuna_shapes(false)[0])
        .unwrap()
        .is_none());
}

#[test]
fn step_linears_name_each_planned_shape_by_the_dispatchers_key() {
    let v2 = crate::kernels::registry::by_name("gemv_v2_vec").unwrap();
    let v6 = crate::kernels::registry::by_name("gemv_v6_pipe").unwrap();
    let mut choice = HashMap::new();
    // (k, n, group, act-order): a g128 shape, a group as wide as K (per-channel), act-order.
    choice.insert((11008, 4096, 128, false), (v2, Tunables::new()));
    choice.insert((4096, 12288, 4096, false), (v2, Tunables::new()));
    let t = Tunables::from([("threads".to_string(), 256)]);
    choice.insert((4096, 4096, 128, true), (v6, t.clone()));
    let got = step_linears(&choice);
    let want = |n, k, g, a, c: crate::tune::Choice| crate::tune::LinearChoice {
        key: crate::tune::ProblemKey {
            n,
            k,
            group_size: g,
            act_order: a,
            batch_bucket: 1,
        },
        choice: c,
    };
    let mut expect = vec![
        want(
            4096,
            11008,
            128,
            false,
            crate::tune::Choice::new("gemv_v2_vec"),
        ),
        want(
            12288,
            4096,
            -1,
            false,
            crate::tune::Choice::new("gemv_v2_vec"),
        ),
        want(
            4096,
            4096,
            128,
            true,
            crate::tune::Choice::new("gemv_v6_pipe").with("threads", 256),
        ),
    ];
    expect.sort();
    assert_eq!(got, expect, "sorted, whatever the map's order");
    // The key is the one Int4Kernel::choose asks the dispatcher for.
    let s = LayerShape {
        k: 4096,
        n: 12288,
        group_size: 4096,
        g_idx: false,
        perm: false,
        bias: false,
        symmetric: false,
    };
    assert_eq!(problem_key(shape_key(&s)).group_size, -1);
}

#[test]
fn out_of_memory_is_told_apart_from_other_driver_errors() {
    use cudarc::driver::sys::cudaError_enum as E;
    let err = |c| LabError::Driver {
        context: "allocating the KV cache".into(),
        source: cudarc::driver::DriverError(c),
    };
    assert!(is_out_of_memory(&err(E::CUDA_ERROR_OUT_OF_MEMORY)));
    assert!(!is_out_of_memory(&err(E::CUDA_ERROR_INVALID_VALUE)));
    assert!(!is_out_of_memory(&LabError::invalid("x", "y")));
}

#[test]
fn gated_mlp_input_only_for_kernels_that_stage_x() {
    assert!(
        int4_takes_gated_input(None),
        "the engine's q4 GEMV stages x"
    );
    for (name, gated) in [
        ("gemv_v1_naive", true),
        ("gemv_v2_vec", false),
        ("gemv_v3_gather", false),
        ("gemv_v4_perm", false),
        ("gemv_v5_splitk", false),
        ("gemv_v6_pipe", true),
    ] {
        let v = crate::kernels::registry::by_name(name).unwrap();
        assert_eq!(int4_takes_gated_input(Some(v)), gated, "{name}");
    }
}

#[test]
fn only_the_drivers_capture_refusals_count_as_refusals() {
    use cudarc::driver::{sys::cudaError_enum as E, DriverError};
    let driver = |code| LabError::Driver {
        context: "graph capture".into(),
        source: DriverError(code),
    };
    assert!(is_capture_refusal(&driver(
        E::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    )));
    assert!(is_capture_refusal(&driver(
        E::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
    )));
    // A driver that cannot capture a cooperative launch at all says "not supported".
    assert!(is_capture_refusal(&driver(E::CUDA_ERROR_NOT_SUPPORTED)));
    // A failed kernel, a cooperative grid too large, or any other error is not one.
    assert!(!is_capture_refusal(&driver(E::CUDA_ERROR_ILLEGAL_ADDRESS)));
    assert!(!is_capture_refusal(&driver(
        E::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE
    )));
    assert!(!is_capture_refusal(&LabError::invalid("x", "y")));
}

#[test]
fn parse_int4_kernel_names() {
    let no = || -> Result<crate::tune::Dispatcher> { panic!("only auto builds a dispatcher") };
    assert!(matches!(
        parse_int4_kernel("engine", no).unwrap(),
        Int4Kernel::Engine
    ));
    assert!(
        matches!(parse_int4_kernel("gemv_v5_splitk", no).unwrap(), Int4Kernel::Variant(v) if v.name == "gemv_v5_splitk")
    );
    let e = parse_int4_kernel("gemv_cublas_f16", no)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--int4-kernel") && e.contains("gemv_cublas_f16 is a cuBLAS baseline"),
        "{e}"
    );
    let e = parse_int4_kernel("gemv_v9", no).unwrap_err().to_string();
    assert!(e.contains("auto"), "{e}");
}

#[test]
fn registry_variants_plan_every_vicuna_and_tiny_linear_and_baselines_are_refused() {
    let cfgs = [
        ModelConfig::vicuna_7b(),
        ModelConfig::vicuna_13b(),
        ModelConfig::vicuna_33b(),
        crate::model::gpu_check::tiny_config(),
    ];
    // Every (model, K, N, group that divides K) of the engine's fused linears.
    let linears: Vec<(String, usize, usize, usize)> = cfgs
        .iter()
        .flat_map(|cfg| {
            let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
            let kv = cfg.num_key_value_heads * cfg.head_dim();
            [(h, h + 2 * kv), (h, h), (h, 2 * i), (i, h)]
                .map(|(k, n)| (cfg.name.clone(), k, n, if k % 128 == 0 { 128 } else { 64 }))
        })
        .collect();
    let shape = |k, n, group_size, perm, symmetric| LayerShape {
        k,
        n,
        group_size,
        g_idx: false,
        perm,
        bias: false,
        symmetric,
    };
    for name in ["gemv_v4_perm", "gemv_v5_splitk", "gemv_v6_pipe"] {
        let v = int4_kernel_by_name(name).unwrap().unwrap();
        for (model, k, n, g) in &linears {
            let (k, n, g) = (*k, *n, *g);
            for (group, perm, symmetric) in [
                (g, false, false),
                (g, true, false),
                (k, false, true),
                (32, true, true),
            ] {
                let s = shape(k, n, group, perm, symmetric);
                let p = gemv_plan(v, &s, 1, k, n, &Tunables::new(), SmLimits::H100)
                    .unwrap_or_else(|e| panic!("{name} {model} {k}x{n}: {e}"));
                assert!(!p.symbol.is_empty() && v.symbols.contains(&p.symbol.as_str()));
            }
        }
    }
    // v2 has no act-order path: every plain linear, and a clear refusal of a permuted one.
    let v2 = int4_kernel_by_name("gemv_v2_vec").unwrap().unwrap();
    for (model, k, n, g) in &linears {
        let (k, n, g) = (*k, *n, *g);
        for (group, perm, symmetric) in [(g, false, false), (k, false, true), (g, true, false)] {
            let p = gemv_plan(
                v2,
                &shape(k, n, group, perm, symmetric),
                1,
                k,
                n,
                &Tunables::new(),
                SmLimits::H100,
            );
            assert_eq!(p.is_ok(), !perm, "v2 {model} {k}x{n} perm {perm}: {p:?}");
        }
    }
    assert!(int4_kernel_by_name("engine").unwrap().is_none());
    for baseline in ["gemv_cublas_f16", "gemv_dequant_cublas"] {
        let e = int4_kernel_by_name(baseline).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{baseline} is a cuBLAS baseline")),
            "{e}"
        );
    }
    // v9 runs in the engine (cluster launches, sm_90: GpuEngine::new checks min_sm); its
    // plans on the decode shapes are clusters of at most 8 slices.
    let v9 = int4_kernel_by_name("gemv_v9_cluster").unwrap().unwrap();
    assert_eq!(v9.min_sm, 90);
    for &(k, n) in crate::check::cases::VICUNA_DECODE {
        let p = gemv_plan(
            v9,
            &shape(k, n, 128, false, false),
            1,
            k,
            n,
            &Tunables::new(),
            SmLimits::H100,
        )
        .unwrap();
        assert!(
            p.cluster_y == p.grid.1 && (1..=8).contains(&p.cluster_y),
            "{k}x{n}: {p:?}"
        );
    }
    let e = int4_kernel_by_name("gemv_v9").unwrap_err().to_string();
    assert!(e.contains("no variant 'gemv_v9'"), "{e}");
}

#[test]
fn a_poison_block_fills_an_sm_on_every_card() {
    // (per SM, reserved per block, per-block opt-in) as the driver reports them: H100,
    // A100, RTX 3090 / 4090, T4. One block of the opt-in size plus its reservation is the SM.
    for (per_sm, reserved, optin) in [(228, 1, 227), (164, 1, 163), (100, 1, 99), (64, 0, 64)] {
        let dev = SmLimits {
            sms: 80,
            smem_per_sm: per_sm * 1024,
            smem_reserved_per_block: reserved * 1024,
            smem_per_block_optin: optin * 1024,
        };
        let b = poison_block_bytes(dev);
        assert_eq!(b % 4, 0);
        assert_eq!(
            b + dev.smem_reserved_per_block,
            dev.smem_per_sm,
            "{per_sm} KB"
        );
        assert_eq!(dev.blocks_per_sm(b, 8), 1);
    }
    let unknown = SmLimits {
        smem_per_block_optin: 0,
        ..SmLimits::H100
    };
    assert_eq!(poison_block_bytes(unknown), abi::LAB_LLAMA_POISON_BYTES);
    // An opt-in that is not whole words: the block covers the whole words below it.
    let odd = SmLimits {
        smem_per_block_optin: 50_003,
        ..SmLimits::H100
    };
    assert_eq!(poison_block_bytes(odd), 50_000);
}

#[test]
fn q4_split_covers_k_in_multiples_of_8_and_fills_the_machine() {
    for &(n, k) in &[
        (12288usize, 4096usize),
        (4096, 11008),
        (22016, 4096),
        (64, 64),
        (128, 192),
        (15360, 5120),
        (5120, 13824),
        // 33B: fused q|k|v, o, gate|up, down (K = 17920 needs a split for the 32 KB x slice).
        (19968, 6656),
        (6656, 6656),
        (35840, 6656),
        (6656, 17920),
        (8, 8),
        // So wide that one split fills the machine: K 17920 still needs 3 for the 32 KB x slice.
        (262144, 17920),
    ] {
        let (split, slice) = q4_split(n, k, 132);
        assert_eq!(slice % 8, 0, "{n}x{k}");
        assert!(
            split * slice >= k && (split - 1) * slice < k,
            "{n}x{k}: {split} x {slice}"
        );
        assert!(
            slice <= 8192,
            "{n}x{k}: x slice {slice} rows exceeds 32 KB of shared memory"
        );
        if k >= 64 * 16 {
            assert!(
                n.div_ceil(128) * split >= 4 * 132 || slice <= 64 + 8,
                "{n}x{k}: only {} blocks",
                n.div_ceil(128) * split
            );
        }
    }
}

#[test]
fn int4_kernel_names_say_engine_variant_heuristic_or_tuned() {
    assert_eq!(Int4Kernel::Engine.name(), "engine (lab_llama_q4_gemv v1)");
    let v5 = int4_kernel_by_name("gemv_v5_splitk").unwrap().unwrap();
    assert_eq!(Int4Kernel::Variant(v5).name(), "gemv_v5_splitk (registry)");
    let dev = crate::cuda::device::test_device("NVIDIA H100 80GB HBM3", (9, 0), 132);
    let heuristic =
        crate::tune::Dispatcher::from_config(None, &dev, crate::build_info::KERNEL_HASH);
    assert_eq!(heuristic.tuned_len(), 0);
    assert_eq!(
        Int4Kernel::Auto(Arc::new(heuristic)).name(),
        "auto (heuristic)"
    );
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/nvidia-h100-80gb-hbm3.json");
    let cfg = crate::tune::TunedConfig::load(&path).unwrap();
    let dev = cfg.device.clone();
    // Under the file's own kernel hash: a build whose kernels changed since (a branch waiting for
    // its GPU run) refuses the file, which is not what this test is about.
    let hash = cfg.kernel_hash.clone();
    let tuned = crate::tune::Dispatcher::from_config(Some(cfg), &dev, &hash);
    let n = tuned.tuned_len();
    assert!(n > 0);
    assert_eq!(
        Int4Kernel::Auto(Arc::new(tuned)).name(),
        format!("auto (tuned config, {n} keys)")
    );
}

#[test]
fn the_split_k_workspace_holds_the_widest_fused_linear() {
    let cfg = |h, i, heads, kvh| ModelConfig {
        hidden_size: h,
        intermediate_size: i,
        num_attention_heads: heads,
        num_key_value_heads: kvh,
        ..ModelConfig::vicuna_7b()
    };
    for c in [
        ModelConfig::vicuna_7b(),
        ModelConfig::vicuna_13b(),
        crate::model::gpu_check::tiny_config(),
        // q|k|v the widest: a narrow MLP, with and without GQA.
        cfg(4096, 1024, 32, 32),
        cfg(4096, 1024, 32, 8),
    ] {
        let kv = c.num_key_value_heads * c.head_dim();
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let want = [h + 2 * kv, h, 2 * i, h].into_iter().max().unwrap();
        assert_eq!(widest_linear_n(&c), want, "{}", c.name);
    }
    assert_eq!(widest_linear_n(&cfg(4096, 1024, 32, 32)), 3 * 4096);
    assert_eq!(widest_linear_n(&cfg(4096, 1024, 32, 8)), 4096 + 2 * 1024);
    assert_eq!(widest_linear_n(&ModelConfig::vicuna_7b()), 2 * 11008);
}

#[test]
fn permuted_x_shapes_are_plain_and_act_order_keys_say_so() {
    let act = LayerShape {
        k: 4096,
        n: 4096,
        group_size: 128,
        g_idx: true,
        perm: true,
        bias: false,
        symmetric: true,
    };
    let plain = plain_shape(&act);
    assert_eq!(
        plain,
        LayerShape {
            g_idx: false,
            perm: false,
            ..act
        }
    );
    assert_eq!(shape_key(&plain), (4096, 4096, 128, false));
    // Either a permutation or a g_idx makes the key act-order.
    for (g_idx, perm) in [(true, true), (true, false), (false, true)] {
        let s = LayerShape { g_idx, perm, ..act };
        assert_eq!(shape_key(&s), (4096, 4096, 128, true), "{g_idx} {perm}");
    }
}

#[test]
fn attention_smem_is_q_scores_and_2048_partials() {
    // attention.cuh: q [hd] | scores [chunk] | red [256 / (hd / 8) groups x hd = 2048], f32.
    for hd in [8usize, 16, 32, 64, 128, 256] {
        for chunk in [4usize, 256, 263] {
            assert_eq!(attn_split_smem(hd, chunk), ((hd + chunk + 2048) * 4) as u32);
        }
    }
    assert_eq!(attn_split_smem(128, 256), 9728);
}

#[test]
fn skip_op_sets_split_the_layer_into_gemvs_and_small_ops() {
    let all = SkipOps {
        norms: true,
        attention: true,
        silu: true,
        qkv: true,
        o: true,
        gate_up: true,
        down: true,
    };
    let (l, s) = (SkipOps::linears(), SkipOps::small_ops());
    assert_eq!(
        s,
        SkipOps {
            norms: true,
            attention: true,
            silu: true,
            ..SkipOps::default()
        }
    );
    // Disjoint, and together every class.
    let or = |a: SkipOps, b: SkipOps| SkipOps {
        norms: a.norms | b.norms,
        attention: a.attention | b.attention,
        silu: a.silu | b.silu,
        qkv: a.qkv | b.qkv,
        o: a.o | b.o,
        gate_up: a.gate_up | b.gate_up,
        down: a.down | b.down,
    };
    assert_eq!(or(l, s), all);
    assert_eq!(
        [l.norms, l.attention, l.silu, s.qkv, s.o, s.gate_up, s.down],
        [false; 7]
    );
    assert!(l.any() && s.any() && SkipOps::attention_only().any());
    assert!(!SkipOps::default().any());
}
