//! The correctness matrix: shapes x group size x act-order x zero mode x batch, and the seeded
//! inputs of each case (RTN-quantized random weights, random fp16 x that is never zero).

use crate::gptq::{act_order_g_idx, quantize_rtn, QuantLinear};
use crate::kernels::registry::{ActOrder, Family, Variant};
use crate::Result;
use half::f16;
use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};
use serde::Serialize;

/// One layer shape of the matrix: K = in_features, N = out_features.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    pub k: usize,
    pub n: usize,
    pub label: &'static str,
}

/// The int4 linears of a Vicuna decode step as the engine runs them (q|k|v and gate|up fused),
/// K x N: 7B's q|k|v, o, gate|up, down, then 13B's.
pub const VICUNA_DECODE: &[(usize, usize)] = &[
    (4096, 12288),
    (4096, 4096),
    (4096, 22016),
    (11008, 4096),
    (5120, 15360),
    (5120, 5120),
    (5120, 27648),
    (13824, 5120),
];

/// Vicuna/LLaMA decode shapes (../shared/gptq-format.md), K x N.
pub const VICUNA: &[Shape] = &[
    Shape {
        k: 4096,
        n: 4096,
        label: "7B q/k/v/o",
    },
    Shape {
        k: 4096,
        n: 11008,
        label: "7B gate/up",
    },
    Shape {
        k: 11008,
        n: 4096,
        label: "7B down",
    },
    Shape {
        k: 5120,
        n: 5120,
        label: "13B q/k/v/o",
    },
    Shape {
        k: 5120,
        n: 13824,
        label: "13B gate/up",
    },
    Shape {
        k: 13824,
        n: 5120,
        label: "13B down",
    },
    Shape {
        k: 4096,
        n: 12288,
        label: "7B fused qkv",
    },
    Shape {
        k: 4096,
        n: 22016,
        label: "7B fused gate_up",
    },
];

/// Shapes that are not multiples of the tiles. K stays a multiple of every group it is tested
/// with (the contract refuses a group that does not divide K).
pub const ODD: &[Shape] = &[
    // K = 33 groups of 128: 132 chunks of 32 rows; N = 4096 + 8: last column tile has 8 of 32 columns.
    Shape {
        k: 4224,
        n: 4104,
        label: "odd: K=4096+128, N=4096+8",
    },
    // N = 200 = 6 x 32 + 8.
    Shape {
        k: 4224,
        n: 200,
        label: "odd: N=200 (partial column tile)",
    },
    // Small K: one lost 8-row word is visible under the tolerance (tolerance.rs,
    // a_lost_word_is_flagged_at_small_k: 89% of (word, column) losses under the fp16-chain bound,
    // against 1.6% at K = 4096, where the bound grows with the sum of |terms|); K = 9 x 32.
    Shape {
        k: 288,
        n: 200,
        label: "odd: K=288 (9 groups of 32)",
    },
    // K = 33 words: the last chunk of 4 words has 1 valid (per-channel only: 264 = 8 x 33).
    Shape {
        k: 264,
        n: 72,
        label: "odd: K=264 (partial chunk), per-channel",
    },
];

/// Small shapes for --quick (seconds, also under compute-sanitizer).
pub const QUICK: &[Shape] = &[
    Shape {
        k: 512,
        n: 256,
        label: "quick: small",
    },
    ODD[2],
    ODD[3],
];

pub const GROUPS: &[i32] = &[32, 64, 128, -1];

#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub id: usize,
    pub k: usize,
    pub n: usize,
    /// Rows per group; -1 = per-channel.
    pub group: i32,
    pub act_order: bool,
    pub sym: bool,
    pub bias: bool,
    pub m: usize,
    /// x is a fused MLP [gate | up] (2k values) and the kernel's input is silu(gate) * up
    /// (lab_gemm_params.x_glu: the down projection in the decode engine); m = 1.
    pub gated: bool,
    pub seed: u64,
    pub label: &'static str,
}

impl Case {
    /// The input the reference multiplies: x itself, or for a gated case silu(gate) * up.
    pub fn reference_x<'a>(&self, x: &'a [f16]) -> std::borrow::Cow<'a, [f16]> {
        if self.gated {
            std::borrow::Cow::Owned(gated_input(x))
        } else {
            std::borrow::Cow::Borrowed(x)
        }
    }

    /// "7B gate/up m=1 K=4096 N=11008 g128 act-order asym bias seed=0x..."
    pub fn describe(&self) -> String {
        format!(
            "{} m={} K={} N={} {}{} {}{}{} seed={:#018x}",
            self.label,
            self.m,
            self.k,
            self.n,
            if self.group < 0 {
                "per-channel".to_string()
            } else {
                format!("g{}", self.group)
            },
            if self.act_order { " act-order" } else { "" },
            if self.sym { "sym" } else { "asym" },
            if self.bias { " bias" } else { "" },
            if self.gated { " gated" } else { "" },
            self.seed
        )
    }
}

/// splitmix64: one well-mixed u64 from the case's coordinates, so every seed is reproducible.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Batch sizes a family is checked at (m = 4 on one small shape shows batch refusals of m = 1 kernels).
fn batches(f: Family) -> &'static [usize] {
    match f {
        Family::Gemv => &[1],
        // Every tile edge of the GEMM kernels: 15/16/17 and 32/33 around the m16 tiles, 64 the
        // largest; big shapes take only GEMM_BIG_M (the f64 reference costs m*K*N).
        Family::Gemm => &[2, 3, 4, 8, 15, 16, 17, 32, 33, 64],
        Family::Reference => &[1],
    }
}

/// GEMM batches on shapes with K*N above 1M (one per m16 tile count, masked and full).
const GEMM_BIG_M: &[usize] = &[2, 17, 64];

/// The case list for `family`. Combinations that are not meaningful are not generated: a group
/// that does not divide K, and act-order with per-channel groups (one group: g_idx is trivial).
pub fn matrix(family: Family, quick: bool, base_seed: u64) -> Vec<Case> {
    let shapes: Vec<Shape> = if quick {
        QUICK.to_vec()
    } else {
        VICUNA.iter().chain(ODD).copied().collect()
    };
    let mut cases = Vec::new();
    let mut push =
        |s: &Shape, group: i32, act: bool, sym: bool, bias: bool, m: usize, gated: bool| {
            let coords = (s.k as u64) << 40
                ^ (gated as u64) << 3
                ^ (s.n as u64) << 16
                ^ ((group + 1) as u64) << 4
                ^ (act as u64) << 2
                ^ (sym as u64) << 1
                ^ bias as u64
                ^ (m as u64) << 56;
            cases.push(Case {
                id: cases.len(),
                k: s.k,
                n: s.n,
                group,
                act_order: act,
                sym,
                bias,
                m,
                gated,
                seed: mix(base_seed ^ mix(coords)),
                label: s.label,
            });
        };
    for (si, s) in shapes.iter().enumerate() {
        for (gi, &g) in GROUPS.iter().enumerate() {
            if g > 0 && s.k % g as usize != 0 {
                continue;
            }
            for act in [false, true] {
                if act && g < 0 {
                    continue;
                }
                for &m in batches(family) {
                    if family == Family::Gemm && s.k * s.n > 1 << 20 && !GEMM_BIG_M.contains(&m) {
                        continue;
                    }
                    // Both zero modes for every (group, act-order) across shapes (all of them in
                    // quick mode); bias on about a third of the cases.
                    let alt = (si + gi + act as usize) % 2 == 1;
                    let syms: &[bool] = if quick {
                        &[false, true]
                    } else if alt {
                        &[true]
                    } else {
                        &[false]
                    };
                    for &sym in syms {
                        let bias = (si + 2 * gi + act as usize + sym as usize) % 3 == 0;
                        push(s, g, act, sym, bias, m, false);
                    }
                }
            }
        }
    }
    // Batch > 1 on one small shape: kernels with batch (1, 1) must be skipped (declared), not run.
    if family == Family::Gemv {
        let s = ODD[2];
        push(&s, 32, true, false, true, 4, false);
        push(&s, -1, false, true, false, 3, false);
        // The gated input (silu(gate) * up computed while loading x) on the down projection's
        // shape (a small one in quick mode), plain and act-order.
        let s = if quick { QUICK[0] } else { VICUNA[2] };
        push(&s, 128, false, true, false, 1, true);
        push(&s, 32, true, false, true, 1, true);
    }
    cases
}

/// Why the variant's declared support excludes this case, or None when it claims to handle it.
pub fn declared_skip(v: &Variant, c: &Case) -> Option<String> {
    if !v.group_sizes.contains(&c.group) {
        return Some(format!("group {} not declared", c.group));
    }
    let handles_act = v
        .act_order
        .iter()
        .any(|a| matches!(a, ActOrder::Gather | ActOrder::Reordered));
    if c.act_order && !handles_act {
        return Some("act-order not declared".into());
    }
    if !c.act_order && !v.act_order.contains(&ActOrder::None) {
        return Some("plain (no act-order) not declared".into());
    }
    if c.gated && !crate::kernels::gemv::variant_takes_gated_input(v) {
        return Some("gated input not declared (the kernel reads a plain x)".into());
    }
    if (c.m as u32) < v.batch.0 || (c.m as u32) > v.batch.1 {
        return Some(format!(
            "batch m={} outside {}..={}",
            c.m, v.batch.0, v.batch.1
        ));
    }
    None
}

/// Why this GPU (compute capability `sm`, e.g. 86) cannot run the variant at all, or None. A
/// variant built for a newer architecture (gemv_v9_cluster's clusters need sm_90, gemm_v2_mma's
/// mma.sync m16n8k16 sm_80) is skipped with this reason, not run into the launcher's refusal:
/// `lab check` on an RTX 3090 proves what that card runs, and a refusal counts as a failure.
pub fn device_skip(v: &Variant, sm: u32) -> Option<String> {
    (sm < v.min_sm).then(|| format!("needs sm_{} or newer; this GPU is sm_{sm}", v.min_sm))
}

/// Why a variant does not run this case on a GPU of compute capability `sm`: the device first
/// (the whole variant is out), then its declared support. None: it must run and pass.
pub fn skip_reason(v: &Variant, c: &Case, sm: u32) -> Option<String> {
    device_skip(v, sm).or_else(|| declared_skip(v, c))
}

/// The case's inputs: an RTN-quantized layer of seeded random weights (act-order through a seeded
/// permutation), optional bias, and x [m, k] with |x| in [1/16, 1] and a random sign (never 0);
/// for a gated case x is [gate | up] (2k values, gate in [-4, 4], so SiLU's curved part and its
/// negative tail are both hit) and the reference's input is `gated_input(x)`.
pub fn build_inputs(c: &Case) -> Result<(QuantLinear, Vec<f16>)> {
    let mut rng = StdRng::seed_from_u64(c.seed);
    // Per-column offsets skew the ranges, so asymmetric zeros take many values (0..15).
    let offs: Vec<f32> = (0..c.n).map(|_| rng.random_range(-0.03f32..0.03)).collect();
    let w: Vec<f32> = (0..c.k * c.n)
        .map(|i| rng.random_range(-0.05f32..0.05) + offs[i % c.n])
        .collect();
    let g_idx = c.act_order.then(|| {
        let mut order: Vec<usize> = (0..c.k).collect();
        order.shuffle(&mut rng);
        act_order_g_idx(&order, c.group as usize)
    });
    let mut l = quantize_rtn(&w, c.k, c.n, c.group, c.sym, g_idx)?;
    drop(w);
    if c.bias {
        l.bias = Some(
            (0..c.n)
                .map(|_| f16::from_f32(rng.random_range(-0.5f32..0.5)))
                .collect(),
        );
    }
    let mut x: Vec<f16> = (0..c.m * c.k)
        .map(|_| {
            let mag = rng.random_range(0.0625f32..1.0);
            f16::from_f32(if rng.random_bool(0.5) { mag } else { -mag })
        })
        .collect();
    if c.gated {
        // x above is `up`; gate goes first.
        let gate: Vec<f16> = (0..c.k)
            .map(|_| f16::from_f32(rng.random_range(-4.0f32..4.0)))
            .collect();
        x = gate.into_iter().chain(x).collect();
    }
    Ok((l, x))
}

/// The GEMV input a gated x stands for: fp16(silu(gate[i]) * up[i]) for x = [gate | up], in f32
/// as the kernels compute it (kernels/common/glu.cuh; their __expf may round the last fp16 bit
/// the other way, far inside the GEMV tolerance).
pub fn gated_input(x: &[f16]) -> Vec<f16> {
    let k = x.len() / 2;
    x[..k]
        .iter()
        .zip(&x[k..])
        .map(|(g, u)| {
            let a = g.to_f32();
            f16::from_f32(a / (1.0 + (-a).exp()) * u.to_f32())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::registry::by_name;

    #[test]
    fn matrix_covers_every_group_act_order_and_zero_mode_with_unique_seeds() {
        for quick in [true, false] {
            let cases = matrix(Family::Gemv, quick, 1);
            let mut seeds: Vec<u64> = cases.iter().map(|c| c.seed).collect();
            seeds.sort();
            seeds.dedup();
            assert_eq!(seeds.len(), cases.len(), "duplicate seeds (quick={quick})");
            for g in GROUPS {
                for act in [false, true] {
                    if act && *g < 0 {
                        continue;
                    }
                    for sym in [false, true] {
                        assert!(
                            cases
                                .iter()
                                .any(|c| c.group == *g && c.act_order == act && c.sym == sym),
                            "quick={quick}: no case g={g} act={act} sym={sym}"
                        );
                    }
                }
            }
            assert!(cases
                .iter()
                .all(|c| c.group < 0 || c.k % c.group as usize == 0));
            assert!(cases.iter().any(|c| c.bias) && cases.iter().any(|c| !c.bias));
            assert!(cases.iter().any(|c| c.m > 1));
        }
        let full = matrix(Family::Gemv, false, 1);
        for s in VICUNA {
            assert!(full.iter().any(|c| c.k == s.k && c.n == s.n), "{}", s.label);
        }
    }

    #[test]
    fn gated_cases_run_on_v1_and_v6_and_are_skipped_by_the_plain_x_kernels() {
        for quick in [true, false] {
            let cases = matrix(Family::Gemv, quick, 1);
            let gated: Vec<&Case> = cases.iter().filter(|c| c.gated).collect();
            assert_eq!(gated.len(), 2, "quick {quick}");
            assert!(gated.iter().all(|c| c.m == 1));
            assert!(gated.iter().any(|c| c.act_order) && gated.iter().any(|c| !c.act_order));
            assert!(matrix(Family::Gemm, quick, 1).iter().all(|c| !c.gated));
            for c in gated {
                for name in [
                    "gemv_cublas_f16",
                    "gemv_dequant_cublas",
                    "gemv_v2_vec",
                    "gemv_v3_gather",
                    "gemv_v4_perm",
                    "gemv_v5_splitk",
                ] {
                    let v = by_name(name).unwrap();
                    assert!(declared_skip(v, c).is_some(), "{name} {}", c.describe());
                }
                for name in ["gemv_v1_naive", "gemv_v6_pipe"] {
                    let v = by_name(name).unwrap();
                    assert!(declared_skip(v, c).is_none(), "{name} {}", c.describe());
                }
                let (_, x) = build_inputs(c).unwrap();
                assert_eq!(x.len(), 2 * c.k, "{}", c.describe());
                assert!(c.describe().contains(" gated"));
            }
        }
    }

    #[test]
    fn gated_input_is_silu_of_gate_times_up_in_fp16() {
        let f = |v: f32| f16::from_f32(v);
        let x = [
            f(0.0),
            f(2.0),
            f(-3.0),
            f(20.0),
            f(1.5),
            f(0.5),
            f(2.0),
            f(-1.0),
        ];
        let act = gated_input(&x);
        assert_eq!(act.len(), 4);
        assert_eq!(act[0].to_f32(), 0.0);
        let silu = |a: f64| a / (1.0 + (-a).exp());
        for (i, &(g, u)) in [(2.0f64, 0.5f64), (-3.0, 2.0), (20.0, -1.0)]
            .iter()
            .enumerate()
        {
            let want = silu(g) * u;
            let got = f64::from(act[i + 1].to_f32());
            assert!(
                (got - want).abs() <= want.abs() * 1e-3,
                "{g} {u}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn declared_support_skips_act_order_batch_and_gated_x_for_v2_only() {
        let cases = matrix(Family::Gemv, true, 1);
        let v2 = by_name("gemv_v2_vec").unwrap();
        let v1 = by_name("gemv_v1_naive").unwrap();
        for c in &cases {
            assert_eq!(
                declared_skip(v2, c).is_some(),
                c.act_order || c.m > 1 || c.gated,
                "{}",
                c.describe()
            );
            assert!(declared_skip(v1, c).is_none(), "{}", c.describe());
        }
    }

    #[test]
    fn a_variant_newer_than_the_gpu_is_a_skip_on_every_case_and_nothing_else_is() {
        // Before this, gemv_v9_cluster reached the launcher on an sm_86 card and its refusal
        // counted as a check failure, which stopped `lab run` on every card below sm_90.
        for family in [Family::Gemv, Family::Gemm] {
            let cases = matrix(family, true, 1);
            for v in crate::kernels::registry::all()
                .into_iter()
                .filter(|v| v.family == family)
            {
                for sm in [75, 80, 86, 89, 90] {
                    for c in &cases {
                        let r = skip_reason(v, c, sm);
                        if sm < v.min_sm {
                            let r = r.unwrap_or_default();
                            assert!(
                                r.contains(&format!("sm_{}", v.min_sm))
                                    && r.contains(&format!("sm_{sm}")),
                                "{} at sm_{sm}: {r}",
                                v.name
                            );
                        } else {
                            assert_eq!(r, declared_skip(v, c), "{} at sm_{sm}", v.name);
                        }
                    }
                }
            }
        }
        // The two the audit named: v9 out below sm_90, gemm_v2_mma below sm_80.
        let v9 = by_name("gemv_v9_cluster").unwrap();
        let mma = by_name("gemm_v2_mma").unwrap();
        assert!(device_skip(v9, 89).is_some() && device_skip(v9, 90).is_none());
        assert!(device_skip(mma, 75).is_some() && device_skip(mma, 80).is_none());
    }

    #[test]
    fn inputs_are_seeded_never_zero_and_act_order_when_asked() {
        let c = &matrix(Family::Gemv, true, 7)
            .into_iter()
            .find(|c| c.act_order && c.bias)
            .unwrap();
        let (l, x) = build_inputs(c).unwrap();
        let (l2, x2) = build_inputs(c).unwrap();
        assert_eq!(l, l2);
        assert_eq!(x, x2);
        assert!(x.iter().all(|v| v.to_f32().abs() >= 0.0625));
        assert!(l.is_act_order());
        assert_eq!(l.symmetric, c.sym);
        // Asymmetric zeros vary.
        let zeros = l.zeros();
        assert!(c.sym || zeros.iter().any(|&z| z != zeros[0]));
    }

    fn family_variants(family: Family) -> Vec<&'static Variant> {
        crate::kernels::registry::all()
            .into_iter()
            .filter(|v| v.family == family)
            .collect()
    }

    /// What `lab check` proves per variant: every group size it declares, each with and without
    /// act-order where it declares both (per-channel has no act-order), each in both zero modes,
    /// in the full and the quick matrix alike.
    #[test]
    fn every_variant_runs_every_declared_group_with_and_without_act_order_in_both_zero_modes() {
        for family in [Family::Gemv, Family::Gemm] {
            for quick in [true, false] {
                let cases = matrix(family, quick, 1);
                for v in family_variants(family) {
                    let runs: Vec<&Case> = cases
                        .iter()
                        .filter(|c| declared_skip(v, c).is_none())
                        .collect();
                    let acts = v
                        .act_order
                        .iter()
                        .any(|a| matches!(a, ActOrder::Gather | ActOrder::Reordered));
                    let plain = v.act_order.contains(&ActOrder::None);
                    for &g in v.group_sizes {
                        for act in [false, true] {
                            if (act && (g < 0 || !acts)) || (!act && !plain) {
                                continue;
                            }
                            for sym in [false, true] {
                                assert!(
                                    runs.iter().any(|c| c.group == g
                                        && c.act_order == act
                                        && c.sym == sym),
                                    "{} (quick={quick}) runs no case g={g} act={act} sym={sym}",
                                    v.name
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The tails: N not a multiple of the 32-column tile, K whose 8-row words do not fill the last
    /// chunk of 4 (per-channel), and an odd number of groups (g32 in both matrices, g128 in the
    /// full one: a kernel that handles groups in pairs), for every family.
    #[test]
    fn every_family_runs_n_and_k_tails() {
        for family in [Family::Gemv, Family::Gemm] {
            for quick in [true, false] {
                let cases = matrix(family, quick, 1);
                let at = format!("{family:?} quick={quick}");
                assert!(cases.iter().any(|c| c.n % 32 != 0), "{at}: no N tail");
                assert!(
                    cases.iter().any(|c| c.group < 0 && (c.k / 8) % 4 != 0),
                    "{at}: no partial chunk of K"
                );
                let odd: &[i32] = if quick { &[32] } else { &[32, 128] };
                for &g in odd {
                    assert!(
                        cases
                            .iter()
                            .any(|c| c.group == g && (c.k / g as usize) % 2 == 1),
                        "{at}: no odd number of g{g} groups"
                    );
                }
                // The tails run under act-order too, not only plain.
                assert!(
                    cases.iter().any(|c| c.act_order && c.n % 32 != 0),
                    "{at}: no act-order N tail"
                );
            }
        }
        let full = matrix(Family::Gemm, false, 1);
        for s in VICUNA.iter().chain(ODD) {
            assert!(
                full.iter().any(|c| c.k == s.k && c.n == s.n),
                "GEMM runs no case of {}",
                s.label
            );
        }
    }

    /// GEMM batches: both ends of the declared range on every shape, and every m16 tile edge
    /// (15/16/17, 32/33) on each shape small enough for the f64 reference.
    #[test]
    fn gemm_cases_hit_both_batch_ends_and_every_tile_edge() {
        let lo = family_variants(Family::Gemm)
            .iter()
            .map(|v| v.batch.0)
            .max()
            .unwrap() as usize;
        let hi = family_variants(Family::Gemm)
            .iter()
            .map(|v| v.batch.1)
            .min()
            .unwrap() as usize;
        for quick in [true, false] {
            let cases = matrix(Family::Gemm, quick, 1);
            let mut shapes: Vec<(usize, usize)> = cases.iter().map(|c| (c.k, c.n)).collect();
            shapes.sort();
            shapes.dedup();
            for (k, n) in shapes {
                let ms: std::collections::BTreeSet<usize> = cases
                    .iter()
                    .filter(|c| (c.k, c.n) == (k, n))
                    .map(|c| c.m)
                    .collect();
                let want: &[usize] = if k * n <= 1 << 20 {
                    &[15, 16, 17, 32, 33]
                } else {
                    &[17]
                };
                for &m in [lo, hi].iter().chain(want) {
                    assert!(
                        ms.contains(&m),
                        "K={k} N={n} quick={quick}: no m={m} in {ms:?}"
                    );
                }
            }
        }
    }

    /// GEMV: the kernels with a batch range past 1 (v1, the cuBLAS baselines) run m > 1 plain
    /// and act-order; the m = 1 kernels skip those cases by declaration.
    #[test]
    fn gemv_batch_cases_run_plain_and_act_order_on_the_batched_variants() {
        for quick in [true, false] {
            let cases = matrix(Family::Gemv, quick, 1);
            for v in family_variants(Family::Gemv) {
                let batched: Vec<&Case> = cases.iter().filter(|c| c.m > 1).collect();
                if v.batch.1 == 1 {
                    assert!(batched.iter().all(|c| declared_skip(v, c).is_some()));
                    continue;
                }
                let runs = |act: bool| {
                    batched
                        .iter()
                        .any(|c| c.act_order == act && declared_skip(v, c).is_none())
                };
                assert!(runs(false), "{}: no plain m > 1 case", v.name);
                assert!(runs(true), "{}: no act-order m > 1 case", v.name);
            }
        }
    }

    /// Each limit a variant declares is read: group sizes, act-order and plain, both batch ends.
    #[test]
    fn declared_skip_reads_every_declared_limit() {
        let base = *by_name("gemv_v1_naive").unwrap();
        let case = |group: i32, act_order: bool, m: usize| Case {
            id: 0,
            k: 4096,
            n: 4096,
            group,
            act_order,
            sym: false,
            bias: false,
            m,
            gated: false,
            seed: 0,
            label: "t",
        };
        let mut v = base;
        v.group_sizes = &[128];
        assert_eq!(declared_skip(&v, &case(128, false, 1)), None);
        for g in [32, 64, -1] {
            let r = declared_skip(&v, &case(g, false, 1)).unwrap_or_default();
            assert!(r.contains(&format!("group {g}")), "{g}: {r}");
        }
        let mut v = base;
        v.act_order = &[ActOrder::Reordered];
        assert_eq!(declared_skip(&v, &case(128, true, 1)), None);
        let r = declared_skip(&v, &case(128, false, 1)).unwrap_or_default();
        assert!(r.contains("plain"), "{r}");
        v.act_order = &[ActOrder::None];
        assert!(declared_skip(&v, &case(128, true, 1)).is_some());
        let mut v = base;
        v.batch = (2, 64);
        for m in [1, 65] {
            let r = declared_skip(&v, &case(128, false, m)).unwrap_or_default();
            assert!(r.contains(&format!("m={m}")), "{m}: {r}");
        }
        for m in [2, 64] {
            assert_eq!(declared_skip(&v, &case(128, false, m)), None, "m={m}");
        }
    }
}
