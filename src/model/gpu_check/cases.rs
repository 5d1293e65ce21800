//! The checks' inputs: the tiny random models of every weight form, the committed fixtures, the
//! long-context and cluster models, and the runner of one tiny case.

use super::{check_engine, CheckReport};
use crate::cuda::Gpu;
use crate::model::config::ModelConfig;
use crate::model::gpu_engine::{EngineOptions, Fp16Backend};
use crate::model::gpu_weights::{HostLinear, HostLlama, WeightKind};
use crate::{LabError, Result};

/// Prompt of the tiny checks: 12 fixed ids below the tiny vocab (320), BOS first.
pub const CHECK_PROMPT: [u32; 12] = [1, 55, 53, 39, 52, 28, 223, 54, 288, 78, 223, 295];
pub const CHECK_NEW: usize = 8;
/// The committed tiny fixture checkpoints (tests/fixtures/<name>).
pub const FIXTURES: [&str; 5] = [
    "tiny-fp16",
    "tiny-sym-g32",
    "tiny-asym-gall",
    "tiny-sym-act-g64",
    "tiny-asym-act-g32",
];

/// One random tiny-model check.
#[derive(Debug, Clone, Copy)]
pub struct TinyCase {
    pub kind: WeightKind,
    /// Attention chunk: 4 and 8 split the 20 checked positions over 3-5 blocks (exercising the
    /// combine pass); 128 is a single block.
    pub chunk: usize,
    pub backend: Fp16Backend,
    pub seed: u64,
    /// Int4 kernel: None = the engine's own, else a registry GEMV variant (ignored with `auto`).
    pub int4: Option<&'static crate::kernels::registry::Variant>,
    /// `auto` with the heuristic dispatcher (no tuned config): for act-order forms the
    /// act_order_plain path, on which the check then requires exactly the linears the weights make
    /// act-order (`expected_act_order_plain`) to run on permuted x.
    pub auto: bool,
    /// Rows per prefill chunk: the 12-token prompt in one chunk (512), as 5 + 5 + 2 (chunks
    /// continuing the cache at positions 5 and 10), or as 11 + 1 (a 1-row chunk: per-row GEMV).
    pub prefill_chunk: usize,
    /// Int4 prefill kernel: gemm_v2 (Auto on sm_80+ at these 12-token prompts) for most cases,
    /// gemm_v1 for int4 g32 act-order, the per-row GEMV for per-channel int4, dequant + cuBLAS
    /// for the gemv_v6_pipe case of every int4 form (every path at least once).
    pub prefill_int4: crate::model::gpu_engine::PrefillInt4,
}

/// Prefill chunks the tiny cases cycle through (see `TinyCase::prefill_chunk`).
pub const PREFILL_CHUNKS: [usize; 3] = [512, 5, 11];

/// Every weight form the engine takes: int4 with/without act-order, sym/asym, g32/g64/per-channel,
/// fp16 through cuBLAS and through the lab GEMV.
pub fn tiny_cases() -> Vec<TinyCase> {
    let i4 = |group, act_order, sym| WeightKind::Int4 {
        group,
        act_order,
        sym,
    };
    [
        (i4(32, false, false), 128, Fp16Backend::Cublas),
        (i4(32, true, false), 4, Fp16Backend::Cublas),
        (i4(64, true, true), 8, Fp16Backend::Cublas),
        (i4(-1, false, true), 4, Fp16Backend::Cublas),
        (WeightKind::Fp16, 4, Fp16Backend::Cublas),
        (WeightKind::Fp16, 8, Fp16Backend::Lab),
    ]
    .into_iter()
    .enumerate()
    .flat_map(|(i, (kind, chunk, backend))| {
        // Int4 forms also through the registry's reorder-aware variants (v4: one block per column
        // tile; v5: split-K with the ticketed in-kernel reduction; v6: pipelined loads, x staged
        // in shared memory, auto split-K) — every int4 kernel the tuner may pick.
        // v2 (no act-order) is what the tuner picks for several plain shapes on the H100; v10 (no
        // act-order) is a tuner candidate since run 13. A unit test keeps these lists equal to
        // the tuner's m = 1 candidates.
        let registry: &[&str] = if matches!(
            kind,
            WeightKind::Int4 {
                act_order: false,
                ..
            }
        ) {
            &[
                "gemv_v2_vec",
                "gemv_v4_perm",
                "gemv_v5_splitk",
                "gemv_v6_pipe",
                "gemv_v10_l2x",
            ]
        } else if matches!(kind, WeightKind::Int4 { .. }) {
            &["gemv_v4_perm", "gemv_v5_splitk", "gemv_v6_pipe"]
        } else {
            &[]
        };
        let mut v = vec![TinyCase {
            kind,
            chunk,
            backend,
            seed: 100 + i as u64,
            int4: None,
            auto: false,
            prefill_chunk: PREFILL_CHUNKS[i % 3],
            prefill_int4: match i {
                1 => crate::model::gpu_engine::PrefillInt4::GemmV1,
                3 => crate::model::gpu_engine::PrefillInt4::RowGemv,
                _ => crate::model::gpu_engine::PrefillInt4::Auto,
            },
        }];
        v.extend(
            registry
                .iter()
                .filter_map(|n| crate::kernels::registry::by_name(n))
                .enumerate()
                .map(|(j, r)| TinyCase {
                    kind,
                    chunk,
                    backend,
                    seed: 100 + i as u64,
                    int4: Some(r),
                    auto: false,
                    prefill_chunk: PREFILL_CHUNKS[(i + j + 1) % 3],
                    // v6's case of every int4 form prefills through dequant + cuBLAS (act-order
                    // rows written back through the permutation), the others through auto.
                    prefill_int4: if r.name == "gemv_v6_pipe" {
                        crate::model::gpu_engine::PrefillInt4::Dequant
                    } else {
                        crate::model::gpu_engine::PrefillInt4::Auto
                    },
                }),
        );
        // Act-order forms also under auto (heuristic): q|k|v, gate|up and down as plain GEMVs on
        // x their producers wrote in sorted order (EngineOptions::act_order_plain).
        if kind.is_act_order() {
            v.push(TinyCase {
                kind,
                chunk,
                backend,
                seed: 100 + i as u64,
                int4: None,
                auto: true,
                prefill_chunk: PREFILL_CHUNKS[(i + 2) % 3],
                prefill_int4: crate::model::gpu_engine::PrefillInt4::Auto,
            });
        }
        v
    })
    .collect()
}

/// Engine options of the tiny checks.
pub fn check_opts(chunk: usize, backend: Fp16Backend) -> EngineOptions {
    let mut o = EngineOptions::new(CHECK_PROMPT.len() + CHECK_NEW + 4);
    o.attn_chunk = chunk;
    o.fp16_backend = backend;
    o
}

/// Engine options of the fixture checks: the prompt prefilled in chunks of 5 rows (5 + 5 + 2), so
/// the later chunks attend to cache rows an earlier chunk wrote.
pub fn fixture_opts() -> EngineOptions {
    let mut o = check_opts(16, Fp16Backend::Cublas);
    o.prefill_chunk = 5;
    o
}

/// Run one random tiny case.
pub fn check_tiny_case(gpu: &Gpu, c: &TinyCase) -> Result<CheckReport> {
    let cfg = tiny_config();
    let host = HostLlama::random(&cfg, c.seed, c.kind)?;
    let mut o = check_opts(c.chunk, c.backend);
    o.prefill_chunk = c.prefill_chunk;
    o.prefill_int4 = c.prefill_int4;
    o.int4 = if c.auto {
        crate::model::gpu_engine::Int4Kernel::Auto(std::sync::Arc::new(
            crate::tune::Dispatcher::from_config(None, &gpu.info, crate::build_info::KERNEL_HASH),
        ))
    } else {
        c.int4.map_or(
            crate::model::gpu_engine::Int4Kernel::Engine,
            crate::model::gpu_engine::Int4Kernel::Variant,
        )
    };
    let mut r = check_engine(
        gpu,
        &cfg,
        &host,
        &format!("random seed {}", c.seed),
        &CHECK_PROMPT,
        CHECK_NEW,
        o,
    )?;
    // An auto act-order case that did not take the permuted-x path would check nothing new.
    let want = expected_act_order_plain(c, &host);
    if r.act_order_plain_linears != want {
        r.pass = false;
        r.token_note = Some(format!(
            "{} linears ran on permuted x, expected {want}{}",
            r.act_order_plain_linears,
            r.token_note
                .as_ref()
                .map_or(String::new(), |n| format!("; {n}"))
        ));
    }
    Ok(r)
}

/// How many linears of a tiny case run on permuted x: for an auto act-order case, each of q|k|v,
/// gate|up and down of every layer whose weights are act-order with even groups (the random
/// models share one channel order per input, so q|k|v and gate|up fuse); none otherwise.
pub fn expected_act_order_plain(c: &TinyCase, host: &HostLlama) -> usize {
    if !c.kind.is_act_order() || !c.auto {
        return 0;
    }
    // Counted from the weights, not from the engine's rule: a linear whose K is a single group
    // (tiny-check's q|k|v and gate|up at g64, K = 64) has the trivial g_idx, so it is no
    // act-order linear at all and has nothing to gather (H100 run 16: the count 3 * layers
    // failed the g64 case, whose every linear matched the f64 reference).
    let act = |l: &HostLinear| match l {
        HostLinear::Quant(q) => q.is_act_order() && q.k % q.group_size == 0,
        HostLinear::F16 { .. } => false,
    };
    // q|k|v and gate|up share one channel order (HostLlama::random): q and gate stand for them.
    host.layers
        .iter()
        .map(|l| [0, 4, 6].iter().filter(|&&i| act(&l.linears[i])).count())
        .sum()
}

/// The long-context case: the 7B/13B engines' head dim (128) and attention split geometry
/// (chunk 256, 9 splits at max_ctx `LONG_MAX_CTX`) on a model small enough to check against the
/// f64 reference at every position. Its 520-token prompt puts the decode steps where each
/// split covers ~58 positions while one step of the kernel covers 128, so non-last splits run
/// past their end onto the new row's position: where H100 runs 9-10 read shared memory they never
/// wrote (NaN). The tiny cases' head dim 16 and 12-token prompts cannot reach that geometry
/// (attention_emulate.rs tests that this one does, and that the old select order fails on it).
pub fn long_context_config() -> ModelConfig {
    ModelConfig {
        name: "tiny-long-hd128".into(),
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        vocab_size: 320,
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        // Linear RoPE scaling (Vicuna v1.5-16K's kind) on the GPU: the engine's inv_freq table
        // against the reference's own rotation, at positions up to ~530.
        rope_linear_factor: 2.0,
        tie_word_embeddings: false,
    }
}

/// KV cache positions of the long-context case: the decode bench's engines' 2085 rounded up, the
/// same 9 attention splits.
pub const LONG_MAX_CTX: usize = 2100;
/// Prompt tokens of the long-context case (the decode steps follow at positions 520..).
pub const LONG_PROMPT_LEN: usize = 520;
/// Greedy tokens generated after it.
pub const LONG_NEW: usize = 6;

/// Run the long-context case (int4 g128, the engine's own kernel, default attention chunk and
/// prefill chunk: the 520 prompt rows prefill as 512 through auto's dequant + cuBLAS and 8
/// through the GEMM).
pub fn check_long_context(gpu: &Gpu) -> Result<CheckReport> {
    let cfg = long_context_config();
    let kind = WeightKind::Int4 {
        group: 128,
        act_order: false,
        sym: false,
    };
    let host = HostLlama::random(&cfg, 300, kind)?;
    let prompt: Vec<u32> = (0..LONG_PROMPT_LEN as u32)
        .map(|i| (i * 37 + 11) % 320)
        .collect();
    check_engine(
        gpu,
        &cfg,
        &host,
        "random seed 300, hd 128, 520-token prompt",
        &prompt,
        LONG_NEW,
        EngineOptions::new(LONG_MAX_CTX),
    )
}

/// A model whose every linear gemv_v9_cluster splits over K (v6's automatic split: 2 slices at
/// K = 1024, 5 at the down projection's K = 2816), so its engine launches are real clusters of 2
/// and 5 blocks; the tiny models' K of 64-192 give one slice, where v9 is v6 (no cluster).
pub fn cluster_check_config() -> ModelConfig {
    ModelConfig {
        name: "tiny-cluster".into(),
        hidden_size: 1024,
        intermediate_size: 2816,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        vocab_size: 320,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_linear_factor: 1.0,
        tie_word_embeddings: false,
    }
}

/// gemv_v9_cluster in the engine on `cluster_check_config` (plain g128, act-order g128 sym,
/// act-order g32), each checked as the tiny cases are: op by op against the f64 reference, tokens
/// eager / graph / graph + PDL (cluster launches with the PDL attribute on sm_90).
pub fn check_v9_cluster(gpu: &Gpu) -> Result<Vec<CheckReport>> {
    let v9 = crate::kernels::registry::by_name("gemv_v9_cluster").ok_or_else(|| {
        LabError::invalid("int4 kernel", "gemv_v9_cluster is not in the registry")
    })?;
    let cfg = cluster_check_config();
    let mut out = Vec::new();
    for (i, (group, act_order, sym)) in [(128, false, false), (128, true, true), (32, true, false)]
        .into_iter()
        .enumerate()
    {
        let kind = WeightKind::Int4 {
            group,
            act_order,
            sym,
        };
        let host = HostLlama::random(&cfg, 400 + i as u64, kind)?;
        let mut o = check_opts(8, Fp16Backend::Cublas);
        o.int4 = crate::model::gpu_engine::Int4Kernel::Variant(v9);
        out.push(check_engine(
            gpu,
            &cfg,
            &host,
            &format!("random seed {}, gemv_v9_cluster", 400 + i),
            &CHECK_PROMPT,
            CHECK_NEW,
            o,
        )?);
    }
    Ok(out)
}

/// A small LLaMA with the tiny fixtures' shapes (GQA 4 heads over 2, head_dim 16).
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        name: "tiny-check".into(),
        hidden_size: 64,
        intermediate_size: 192,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 320,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_linear_factor: 1.0,
        tie_word_embeddings: false,
    }
}
