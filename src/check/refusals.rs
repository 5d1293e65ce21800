//! Shapes that MUST be refused: each is prepared (and planned) on the host, and anything but
//! `LabError::UnsupportedShape` naming the variant is a failure. No GPU needed.

use crate::cuda::SmLimits;
use crate::gptq::{act_order_g_idx, quantize_rtn, QuantLinear};
use crate::kernels::launch::{self, Tunables};
use crate::kernels::layer::prepare;
use crate::kernels::registry::{self, Family};
use crate::LabError;
use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub variant: String,
    pub what: String,
    /// Refused with UnsupportedShape naming the variant.
    pub ok: bool,
    /// The error message, or what happened instead.
    pub message: String,
}

fn layer(k: usize, n: usize, g: i32, act: bool, seed: u64) -> QuantLinear {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let gi = act.then(|| {
        let mut order: Vec<usize> = (0..k).collect();
        order.shuffle(&mut rng);
        act_order_g_idx(&order, g as usize)
    });
    quantize_rtn(&w, k, n, g, false, gi).expect("refusal fixture must quantize")
}

/// Whether `r` is the refusal a must-refuse case expects: `LabError::UnsupportedShape` naming
/// the variant `name`, for `reason` (a refusal for another reason means the rule under test may
/// be gone and another one caught the shape). With the message, or what happened instead.
fn judge(name: &str, reason: &str, r: crate::Result<()>) -> (bool, String) {
    match r {
        Err(e @ LabError::UnsupportedShape { .. }) => {
            let m = e.to_string();
            if m.contains(reason) {
                (m.contains(name), m)
            } else {
                (false, format!("refused, but not for '{reason}': {m}"))
            }
        }
        Err(e) => (false, format!("wrong error kind: {e}")),
        Ok(()) => (false, "accepted".to_string()),
    }
}

/// Runs every must-refuse case of `family` (gemv variants: group too small / not a power of two,
/// act-order on v2, unequal act-order groups on reorder variants, N not a multiple of 8, a batch
/// outside the variant's range, short buffers). Each case names the reason it must be refused
/// for; a refusal for another reason fails it (the rule under test may be gone, another caught
/// the shape).
pub fn check_refusals(family: Family) -> Vec<Refusal> {
    let mut out = Vec::new();
    if family == Family::Reference {
        return out;
    }
    let mut expect = |name: &str, what: &str, reason: &str, r: crate::Result<()>| {
        let (ok, message) = judge(name, reason, r);
        out.push(Refusal {
            variant: name.to_string(),
            what: what.to_string(),
            ok,
            message,
        });
    };
    let prep = |name: &str, l: &QuantLinear| -> crate::Result<()> {
        let v = registry::by_name(name).expect("registry variant");
        prepare(v, l).map(|_| ())
    };
    let plan = |name: &str, l: &QuantLinear, m: usize, x_len: usize| -> crate::Result<()> {
        let v = registry::by_name(name).expect("registry variant");
        let p = prepare(v, l)?;
        // The refusals do not depend on the SM count: any device's plan will do.
        launch::plan(
            v,
            &p.shape(),
            m,
            x_len,
            m * l.n,
            &Tunables::new(),
            SmLimits::H100,
        )
        .map(|_| ())
    };

    let g16 = layer(256, 64, 16, false, 1);
    let g16_act = layer(256, 64, 16, true, 2);
    let act = layer(256, 64, 32, true, 3);
    let mut uneven = layer(256, 64, 32, true, 4);
    if let Some(g) = uneven.g_idx.as_mut() {
        let row = g.iter().position(|&x| x == 0).unwrap_or(0);
        g[row] = 7; // group 0: 31 rows, group 7: 33
    }
    // N = 12: qweight [k/8, 12], qzeros cannot even be [groups, 12/8].
    let mut n12 = layer(64, 16, 32, false, 5);
    n12.n = 12;
    n12.qweight.truncate(64 / 8 * 12);
    n12.scales.truncate(2 * 12);
    let plain = layer(256, 64, 32, false, 6);

    // Every variant of the family: N not a multiple of 8, and an x one element short of m x K
    // at the family's smallest batch (GEMV 1, GEMM 4: a batch inside both GEMMs' range).
    let m = if family == Family::Gemm { 4 } else { 1 };
    let short_x = format!("x has {} elements (need m*K = {})", m * 256 - 1, m * 256);
    for v in registry::all().into_iter().filter(|v| v.family == family) {
        expect(
            v.name,
            "N=12 (not a multiple of 8)",
            "N = 12: both must be positive multiples of 8",
            prep(v.name, &n12),
        );
        expect(
            v.name,
            "x shorter than m*K",
            &short_x,
            plan(v.name, &plain, m, m * 256 - 1),
        );
    }

    if family == Family::Gemm {
        // Both GEMM variants: the must-refuse shapes of ../../notes/gemm.md.
        for v in registry::all()
            .into_iter()
            .filter(|v| v.family == Family::Gemm)
        {
            expect(
                v.name,
                "group 16 (not declared)",
                "group 16 not supported",
                prep(v.name, &g16),
            );
            expect(
                v.name,
                "act-order groups of unequal size",
                "act-order groups of unequal size",
                prep(v.name, &uneven),
            );
            expect(
                v.name,
                "batch m=1",
                "batch m=1 outside 2..=64",
                plan(v.name, &plain, 1, 256),
            );
            expect(
                v.name,
                "batch m=65",
                "batch m=65 outside 2..=64",
                plan(v.name, &plain, 65, 65 * 256),
            );
        }
        return out;
    }
    const GROUP16: &str = "group size 16 must be per-channel or a power of two >= 32";
    // The variants that read whole chunks of 32 rows under one group's scale.
    let chunked = [
        "gemv_v2_vec",
        "gemv_v4_perm",
        "gemv_v5_splitk",
        "gemv_v6_pipe",
        "gemv_v9_cluster",
        "gemv_v10_l2x",
    ];
    for name in chunked {
        expect(
            name,
            "group 16 (chunks of 32 rows would straddle groups)",
            GROUP16,
            prep(name, &g16),
        );
    }
    // Every variant, one past the top of its declared batch range (m = 2 for the m = 1 kernels).
    for v in registry::all()
        .into_iter()
        .filter(|v| v.family == Family::Gemv)
    {
        let (lo, hi) = v.batch;
        let m = hi as usize + 1;
        expect(
            v.name,
            &format!("batch m={m}"),
            &format!("batch m = {m} outside {lo}..={hi}"),
            plan(v.name, &plain, m, m * 256),
        );
    }
    // The reorder variants accept act-order, so group 16 is still refused for its size after
    // the reorder, and so are groups the reorder cannot make equal (gemv_dequant_cublas takes
    // those: its dequant reads g_idx).
    for name in [
        "gemv_v4_perm",
        "gemv_v5_splitk",
        "gemv_v6_pipe",
        "gemv_v9_cluster",
    ] {
        expect(name, "act-order group 16", GROUP16, prep(name, &g16_act));
        expect(
            name,
            "act-order groups of unequal size",
            "groups of unequal size",
            prep(name, &uneven),
        );
    }
    // Group 32 is valid for v2: this is refused for act-order alone.
    expect(
        "gemv_v2_vec",
        "act-order g_idx",
        "act-order layer (non-trivial g_idx) but the variant supports [None]",
        prep("gemv_v2_vec", &act),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gemm_must_refuse_shape_is_refused() {
        let r = check_refusals(Family::Gemm);
        assert_eq!(r.len(), 12, "6 shapes x 2 GEMM variants");
        for x in &r {
            assert!(x.ok, "{} {}: {}", x.variant, x.what, x.message);
        }
    }

    #[test]
    fn every_must_refuse_shape_is_refused_with_a_named_unsupported_shape() {
        let r = check_refusals(Family::Gemv);
        assert!(r.len() >= 20, "only {} refusal cases", r.len());
        for x in &r {
            assert!(x.ok, "{} {}: {}", x.variant, x.what, x.message);
        }
    }

    /// Every variant of each family, not just some, meets the family-wide shapes (N = 12, an x
    /// one short); every GEMV variant the batch one past its range; each chunked GEMV variant
    /// group 16, each reorder one unequal act-order groups.
    #[test]
    fn every_variant_meets_the_must_refuse_shapes_that_apply_to_it() {
        for family in [Family::Gemv, Family::Gemm] {
            let r = check_refusals(family);
            let has = |name: &str, what: &str| {
                r.iter()
                    .any(|x| x.variant == name && x.what.starts_with(what) && x.ok)
            };
            for v in registry::all().into_iter().filter(|v| v.family == family) {
                assert!(has(v.name, "N=12"), "{}: no N=12 refusal", v.name);
                assert!(has(v.name, "x shorter"), "{}: no short-x refusal", v.name);
                let past = format!("batch m={}", v.batch.1 + 1);
                assert!(has(v.name, &past), "{}: no {past} refusal", v.name);
            }
        }
        let r = check_refusals(Family::Gemv);
        let has = |name: &str, what: &str| r.iter().any(|x| x.variant == name && x.what == what);
        for name in [
            "gemv_v4_perm",
            "gemv_v5_splitk",
            "gemv_v6_pipe",
            "gemv_v9_cluster",
        ] {
            assert!(has(name, "act-order groups of unequal size"), "{name}");
            assert!(has(name, "act-order group 16"), "{name}");
        }
        for name in ["gemv_v2_vec", "gemv_v6_pipe", "gemv_v10_l2x"] {
            assert!(
                has(name, "group 16 (chunks of 32 rows would straddle groups)"),
                "{name}"
            );
        }
        assert!(check_refusals(Family::Reference).is_empty());
    }

    /// A refusal counts only as UnsupportedShape, for the reason the case names, naming the
    /// variant: another reason (the rule under test gone, another one caught the shape), another
    /// variant's name, another error kind and an acceptance all fail it.
    #[test]
    fn a_refusal_counts_only_for_its_reason_and_its_variant() {
        let refused = |variant: &str, reason: &str| -> crate::Result<()> {
            Err(LabError::UnsupportedShape {
                variant: variant.into(),
                shape: "K=256 N=64".into(),
                reason: reason.into(),
            })
        };
        let (ok, m) = judge(
            "gemv_v2_vec",
            "batch m = 2",
            refused("gemv_v2_vec", "batch m = 2 outside 1..=1"),
        );
        assert!(ok && m.contains("gemv_v2_vec"), "{m}");
        let (ok, m) = judge(
            "gemv_v2_vec",
            "batch m = 2",
            refused("gemv_v2_vec", "group size 16"),
        );
        assert!(!ok && m.contains("not for 'batch m = 2'"), "{m}");
        let (ok, m) = judge(
            "gemv_v2_vec",
            "batch m = 2",
            refused("gemv_v4_perm", "batch m = 2 outside 1..=1"),
        );
        assert!(!ok, "{m}");
        let (ok, m) = judge(
            "gemv_v2_vec",
            "N = 12",
            Err(LabError::invalid("x", "N = 12")),
        );
        assert!(!ok && m.contains("wrong error kind"), "{m}");
        assert_eq!(
            judge("gemv_v2_vec", "N = 12", Ok(())),
            (false, "accepted".to_string())
        );
    }
}
