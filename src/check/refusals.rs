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
        let (ok, message) = match r {
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
        };
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
    for name in ["gemv_v2_vec", "gemv_v4_perm", "gemv_v5_splitk"] {
        expect(
            name,
            "group 16 (chunks of 32 rows would straddle groups)",
            GROUP16,
            prep(name, &g16),
        );
        expect(
            name,
            "batch m=2",
            "batch m = 2 outside 1..=1",
            plan(name, &plain, 2, 2 * 256),
        );
    }
    // The reorder variants accept act-order, so group 16 is still refused for its size after
    // the reorder.
    for name in ["gemv_v4_perm", "gemv_v5_splitk"] {
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
    expect(
        "gemv_v1_naive",
        "batch m=65",
        "batch m = 65 outside 1..=64",
        plan("gemv_v1_naive", &plain, 65, 65 * 256),
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
}
