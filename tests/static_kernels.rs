//! Static kernel checks, no GPU: the ptxas report (registers <= the variant's budget, hot kernels
//! with no stack and no spills) for every registry symbol on every compiled arch, and, where
//! cuobjdump + nvdisasm exist, the SASS (128-bit global loads where promised, no LDL/STL in hot
//! kernels, HMMA where promised).

use gptq_lab::build_info;
use gptq_lab::kernels::registry::{self, Family};
use gptq_lab::kernels::static_check as sc;

fn families() -> Vec<(Family, Vec<&'static registry::Variant>)> {
    let mut out: Vec<(Family, Vec<&'static registry::Variant>)> = Vec::new();
    for v in registry::all() {
        if v.symbols.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(f, _)| *f == v.family) {
            Some((_, vs)) => vs.push(v),
            None => out.push((v.family, vec![v])),
        }
    }
    out
}

/// Kernels built and the SASS tools found; otherwise the test says why it skips.
fn sass_available(test: &str) -> bool {
    if !built() {
        return false;
    }
    if let Err(why) = sc::find_sass_tools() {
        gptq_lab::util::note_skip(test, &why);
        return false;
    }
    true
}

fn built() -> bool {
    if !build_info::KERNELS_BUILT {
        assert!(
            std::env::var("LAB_REQUIRE_KERNELS").map_or(true, |v| v != "1"),
            "LAB_REQUIRE_KERNELS=1 but kernels were not built"
        );
        gptq_lab::util::note_skip(
            "static_kernels",
            "kernels not built (no nvcc at build time)",
        );
        return false;
    }
    true
}

#[test]
fn resources_fit_every_variants_budget_on_every_arch() {
    if !built() {
        return;
    }
    let archs = build_info::build_info().archs;
    let mut bad = Vec::new();
    for (f, vs) in families() {
        let fam = sc::family_dir(f);
        let res = sc::family_resources(fam).unwrap_or_else(|e| panic!("family {fam}: {e}"));
        bad.extend(sc::resource_violations(&vs, &res, &archs));
    }
    assert!(bad.is_empty(), "resource violations:\n{}", bad.join("\n"));
}

#[test]
fn sass_shows_wide_loads_and_no_local_memory() {
    if !sass_available("sass_shows_wide_loads_and_no_local_memory") {
        return;
    }
    let archs = build_info::build_info().archs;
    let mut bad = Vec::new();
    for (f, vs) in families() {
        let fam = sc::family_dir(f);
        let sass =
            sc::fatbin_sass(&sc::fatbin_path(fam)).unwrap_or_else(|e| panic!("family {fam}: {e}"));
        bad.extend(sc::sass_violations(&vs, &sass, &archs));
    }
    assert!(bad.is_empty(), "SASS violations:\n{}", bad.join("\n"));
}

/// Every kernel the decode step can launch with programmatic dependent launch (the llama and gemv
/// families) waits on its predecessor (SASS ACQBULK) before touching global memory on sm_90+
/// (kernels/common/pdl.cuh); a kernel without it would race when the engine runs with --pdl.
#[test]
fn decode_kernels_wait_for_their_predecessor_before_any_memory_access() {
    if !sass_available("decode_kernels_wait_for_their_predecessor_before_any_memory_access") {
        return;
    }
    let mut bad = Vec::new();
    let mut seen = 0;
    for fam in ["llama", "gemv"] {
        let sass = sc::fatbin_sass(&sc::fatbin_path(fam)).unwrap_or_else(|e| panic!("{fam}: {e}"));
        for k in sass.iter().filter(|k| k.arch >= 90) {
            seen += 1;
            if !k.pdl_wait || k.memory_before_pdl_wait {
                bad.push(format!(
                    "{fam} {} sm_{}: wait {}, memory before it {}",
                    k.symbol, k.arch, k.pdl_wait, k.memory_before_pdl_wait
                ));
            }
        }
    }
    assert!(
        seen > 20,
        "only {seen} sm_90+ kernels found in the llama and gemv fatbins"
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The gated MLP input (silu(gate) * up in the x loads, kernels/common/glu.cuh) lives only where x
/// is loaded once per block: its exp appears in v6 and v9 (v6's body with a cluster epilogue, the
/// same `lab_stage_x_pairs`) and nowhere in v2/v4/v5, whose per-chunk x loads it slowed 6-30% on
/// the H100 even when off (notes/kernels.md "Fused GLU"), nor in v10 (v6 without the staging: x
/// loaded raw per chunk, no gated input by design). No other code of those kernels uses exp, so
/// any MUFU.EX2 there means the gated path came back into their loop.
#[test]
fn gated_input_only_in_the_gemvs_that_stage_x() {
    if !sass_available("gated_input_only_in_the_gemvs_that_stage_x") {
        return;
    }
    let sass = sc::fatbin_sass(&sc::fatbin_path("gemv")).unwrap_or_else(|e| panic!("gemv: {e}"));
    let archs = build_info::build_info().archs;
    let mut bad = Vec::new();
    // Per arch: (kernels that must not gate x, kernels that stage and gate x).
    let mut seen: std::collections::BTreeMap<u32, (usize, usize)> =
        archs.iter().map(|&a| (a, (0, 0))).collect();
    for k in &sass {
        let per_chunk_x = [
            "lab_gemv_v2_",
            "lab_gemv_v4_perm_",
            "lab_gemv_v5_splitk_",
            "lab_gemv_v10_l2x_",
        ]
        .iter()
        .any(|p| k.symbol.starts_with(p));
        let staged_x = ["lab_gemv_v6_pipe_", "lab_gemv_v9_cluster_"]
            .iter()
            .any(|p| k.symbol.starts_with(p));
        let n = seen.entry(k.arch).or_default();
        if per_chunk_x {
            n.0 += 1;
            if k.exp2 {
                bad.push(format!(
                    "{} sm_{}: MUFU.EX2 in a per-chunk x loop",
                    k.symbol, k.arch
                ));
            }
        } else if staged_x {
            n.1 += 1;
            if !k.exp2 {
                bad.push(format!(
                    "{} sm_{}: no exp, so no gated input",
                    k.symbol, k.arch
                ));
            }
        }
    }
    // Every built arch: 6 v2 + 3 v4 + 2 v5 + 2 v10, and 3 v6 + 1 v9.
    for (arch, (tile, staged)) in &seen {
        assert!(
            *tile >= 13 && *staged >= 4,
            "sm_{arch}: found {tile} v2/v4/v5/v10 and {staged} v6/v9 kernels"
        );
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The GEMVs the decode step runs (registry v2/v4/v5/v6/v9/v10, the fp16 lm_head) prefetch their first
/// weight rows into L2 before the PDL wait (kernels/common/pdl.cuh), so the prefetch overlaps the
/// previous kernel; nothing else touches memory before the wait (the test above).
#[test]
fn decode_gemvs_prefetch_weights_before_the_pdl_wait() {
    if !sass_available("decode_gemvs_prefetch_weights_before_the_pdl_wait") {
        return;
    }
    let prefixes = [
        "lab_gemv_v2_",
        "lab_gemv_v4_perm_",
        "lab_gemv_v5_splitk_",
        "lab_gemv_v6_pipe_",
        "lab_gemv_v9_cluster_",
        "lab_gemv_v10_l2x_",
        "lab_llama_gemv_f16",
    ];
    let mut bad = Vec::new();
    let mut seen = 0;
    for fam in ["llama", "gemv"] {
        let sass = sc::fatbin_sass(&sc::fatbin_path(fam)).unwrap_or_else(|e| panic!("{fam}: {e}"));
        for k in sass.iter().filter(|k| k.arch >= 90) {
            if !prefixes.iter().any(|p| k.symbol.starts_with(p)) {
                continue;
            }
            seen += 1;
            if !k.prefetch_before_pdl_wait {
                bad.push(format!("{fam} {} sm_{}", k.symbol, k.arch));
            }
        }
    }
    // 6 v2 + 3 v4 + 2 v5 + 3 v6 + 1 v9 + 2 v10 + the lm_head GEMV.
    assert!(seen >= 18, "only {seen} decode GEMVs found");
    assert!(
        bad.is_empty(),
        "no L2 prefetch before the wait:\n{}",
        bad.join("\n")
    );
}

/// The persistent decode layers (kernels/llama/layers.cu) on every compiled arch: the launch
/// bounds hold (<= 128 registers, so 2 blocks of 256 threads per SM as the grid assumes), and no
/// local memory sits between the weight loop's streaming loads (LDG.E.EF.128). ptxas spilled
/// 16-20 bytes on sm_80-90 before the shared weight loop (87fc399; none since): a spill is
/// allowed only outside the loop the weight bytes flow through.
#[test]
fn persistent_layers_fit_two_blocks_per_sm_and_keep_local_memory_out_of_the_weight_loop() {
    if !built() {
        return;
    }
    let archs = build_info::build_info().archs;
    let mut bad = llama_resource_findings("lab_llama_layers", |r| {
        if r.registers > 128 {
            Some(format!("{} registers > 128", r.registers))
        } else if r.smem_bytes as usize > gptq_lab::model::gpu_engine::persistent::STATIC_SMEM_BYTES
        {
            // The host's 48 KB budget for the attention's dynamic part assumes this much static.
            Some(format!(
                "{} B static shared memory > gpu_engine::persistent::STATIC_SMEM_BYTES",
                r.smem_bytes
            ))
        } else {
            None
        }
    });
    if sass_available("persistent_layers_..._weight_loop (SASS part)") {
        let sass = sc::fatbin_sass(&sc::fatbin_path("llama")).unwrap_or_else(|e| panic!("{e}"));
        let mut seen = 0;
        for k in sass.iter().filter(|k| k.symbol == "lab_llama_layers") {
            seen += 1;
            if !k.global_loads.iter().any(|o| o.starts_with("LDG.E.EF.128")) {
                bad.push(format!("sm_{}: no LDG.E.EF.128 weight stream", k.arch));
            }
            if k.local_memory_between_stream_loads {
                bad.push(format!("sm_{}: LDL/STL inside the weight loop", k.arch));
            }
        }
        if seen < archs.len() {
            bad.push(format!(
                "lab_llama_layers on {seen} of {} archs",
                archs.len()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The small kernels of every decode step (kernels/llama): no stack and no spills on any arch.
/// Their launch bounds cap the registers and ptxas spills what does not fit, silently: the top-p
/// sampler runs ~36 passes per token on one SM, and holding the logits in registers spilled
/// ~100 bytes there (CUDA 13.0); the attention split kernel sits at exactly its cap of 64
/// registers (__launch_bounds__(256, 4)), so anything it gains may spill.
#[test]
fn decode_step_kernels_have_no_stack_or_spills_on_any_arch() {
    if !built() {
        return;
    }
    let mut bad = Vec::new();
    for symbol in [
        "lab_llama_embed",
        "lab_llama_add_rmsnorm",
        "lab_llama_attn_split",
        "lab_llama_silu_mul",
        "lab_llama_gemv_f16",
        "lab_llama_argmax",
        "lab_llama_sample_top_p",
    ] {
        bad.extend(
            llama_resource_findings(symbol, |r| {
                (r.stack_bytes + r.spill_stores + r.spill_loads > 0).then(|| {
                    format!(
                        "{} B stack, {} B spill stores, {} B spill loads",
                        r.stack_bytes, r.spill_stores, r.spill_loads
                    )
                })
            })
            .into_iter()
            .map(|f| format!("{symbol} {f}")),
        );
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// ptxas resources of the llama kernel `symbol` on every compiled arch, judged by `judge`: one
/// "sm_N: ..." line per finding, a missing entry included.
fn llama_resource_findings(
    symbol: &str,
    judge: impl Fn(&sc::Resource) -> Option<String>,
) -> Vec<String> {
    let res = sc::family_resources("llama").unwrap_or_else(|e| panic!("llama: {e}"));
    let mut bad = Vec::new();
    for &arch in &build_info::build_info().archs {
        match res.iter().find(|r| r.symbol == symbol && r.arch == arch) {
            None => bad.push(format!("sm_{arch}: no ptxas entry for {symbol}")),
            Some(r) => bad.extend(judge(r).map(|f| format!("sm_{arch}: {f}"))),
        }
    }
    bad
}

/// The attention's K and V loads (kernels/llama/attention.cuh) must select zero past the block's
/// end before anything else: with the new row tested first, a block whose unrolled step ran onto
/// it read shared memory it never wrote (the all-NaN int4 steps of H100 runs 9-10). The order is
/// emulated in src/model/attention_emulate.rs; this pins the kernel source to it.
#[test]
fn attention_loads_test_the_block_end_before_the_new_row() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/llama/attention.cuh");
    let src = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for lhs in ["kv[u] =", "vv[u] ="] {
        let at: Vec<usize> = src.match_indices(lhs).map(|(i, _)| i).collect();
        assert_eq!(at.len(), 1, "{path}: expected one '{lhs}' load select");
        let rhs = src[at[0] + lhs.len()..].trim_start();
        assert!(
            rhs.starts_with("pp >= end"),
            "{path}: '{lhs}' must test `pp >= end` first, found: {}",
            rhs.lines().next().unwrap_or("")
        );
    }
}

/// Every PTX image the fatbins embed, its `.version` lowered to 8.0 and assembled by CUDA 12.0's
/// ptxas for its own arch: the kernels' inline PTX needs no ISA newer than CUDA 12.0's, so a CUDA
/// 12.x nvcc of the user's own builds them (what a driver older than R580, which cannot run CUDA
/// 13 code, needs: README "Older drivers"). CUDA 13's nvcc writes `.version 9.0` whatever the
/// source uses; an instruction or modifier past 8.0 (a newer TMA or cluster form, say) fails here
/// with ptxas naming it (CUDA 11.8's ptxas at 7.8 names gemv_v9_cluster's barrier.cluster.arrive
/// .release: the check can fail). The debug lines of -lineinfo are dropped first: 12.0's ptxas
/// cannot read CUDA 13's form of them.
#[test]
fn kernels_ptx_assembles_with_cuda_12_0s_ptxas() {
    let test = "kernels_ptx_assembles_with_cuda_12_0s_ptxas";
    if !sass_available(test) {
        return;
    }
    let ptxas = match sc::find_cuda12_0_ptxas() {
        Ok(p) => p,
        Err(why) => {
            gptq_lab::util::note_skip(test, &why);
            return;
        }
    };
    // The families this binary embeds (build.rs), each read from its build output.
    let families = gptq_lab::cuda::modules::fatbins();
    assert!(!families.is_empty(), "kernels built but no fatbin embedded");
    let tmp = tempfile::tempdir().unwrap();
    let (mut checked, mut bad) = (0, Vec::new());
    for (fam, _) in families {
        let fb = sc::fatbin_path(fam);
        let images = sc::fatbin_ptx(&fb).unwrap_or_else(|e| panic!("{}: {e}", fb.display()));
        assert!(!images.is_empty(), "{}: no PTX image", fb.display());
        for (arch, text) in images {
            let lowered = sc::with_ptx_version(&sc::strip_ptx_debug_info(&text), "8.0")
                .unwrap_or_else(|| panic!("{}: PTX without .version", fb.display()));
            let file = tmp.path().join(format!("{fam}_sm{arch}.ptx"));
            std::fs::write(&file, lowered).unwrap();
            let out = std::process::Command::new(&ptxas)
                .arg(format!("-arch=sm_{arch}"))
                .arg("-o")
                .arg(tmp.path().join("out.cubin"))
                .arg(&file)
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", ptxas.display()));
            checked += 1;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let first: Vec<&str> = err.lines().take(6).collect();
                bad.push(format!(
                    "{} (sm_{arch}):\n  {}",
                    fb.display(),
                    first.join("\n  ")
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "PTX that CUDA 12.0's ptxas refuses:\n{}",
        bad.join("\n")
    );
    eprintln!("{checked} PTX images assembled by {}", ptxas.display());
}
