//! The act-order canonical reorder: sort rows by group once at load time so a kernel reads
//! contiguous groups, and gather the activations with the same permutation at run time.
//!
//! Reading g_idx per row is what made early act-order kernels several times slower
//! (28.6 -> 5.5 tok/s, ../shared/gptq-format.md); after this reorder act-order costs a gather.

use super::{gidx, pack, QuantLinear};
use crate::{LabError, Result};

/// A layer with rows sorted by group, and the permutation the kernel applies to x.
#[derive(Debug, Clone, PartialEq)]
pub struct Reordered {
    /// Rows sorted by group (stable: within a group, original order). `g_idx` is `None` when the
    /// sorted groups are exactly `k / G` (every group has G rows), else the sorted g_idx.
    pub layer: QuantLinear,
    /// Sorted row r came from original row `perm[r]`: the kernel reads `x[perm[r]]` for row r.
    pub perm: Vec<i32>,
}

/// Stable counting sort of rows by group. A layer that is not act-order comes back with the
/// identity permutation and no g_idx (a stored trivial one, row k in group k / G, is dropped:
/// it says plain order), otherwise unchanged.
pub fn reorder_by_group(l: &QuantLinear) -> Result<Reordered> {
    l.validate()
        .map_err(|r| LabError::invalid("reorder_by_group layer", r))?;
    let (k, n) = (l.k, l.n);
    let Some(g_idx) = l.g_idx.as_ref().filter(|_| l.is_act_order()) else {
        let mut layer = l.clone();
        layer.g_idx = None;
        return Ok(Reordered {
            layer,
            perm: (0..k as i32).collect(),
        });
    };
    let groups = l.groups();
    // Counting sort: start[g] = first sorted row of group g.
    let counts = gidx::group_counts(g_idx, groups);
    let mut next: Vec<usize> = counts
        .iter()
        .scan(0, |acc, &c| {
            let s = *acc;
            *acc += c;
            Some(s)
        })
        .collect();
    let mut perm = vec![0i32; k];
    for (row, &g) in g_idx.iter().enumerate() {
        perm[next[g as usize]] = row as i32;
        next[g as usize] += 1;
    }
    let codes = l.codes();
    let mut sorted = vec![0u8; k * n];
    for (r, &src) in perm.iter().enumerate() {
        let src = src as usize;
        sorted[r * n..(r + 1) * n].copy_from_slice(&codes[src * n..(src + 1) * n]);
    }
    let sorted_g: Vec<i32> = perm.iter().map(|&p| g_idx[p as usize]).collect();
    let trivial = gidx::classify(&sorted_g, l.group_size) == gidx::Grouping::Trivial;
    let layer = QuantLinear {
        qweight: pack::pack_codes_kn(&sorted, k, n),
        g_idx: (!trivial).then_some(sorted_g),
        ..l.clone()
    };
    Ok(Reordered { layer, perm })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::{act_order_g_idx, quantize_rtn};
    use crate::reference::gptq_matmul;
    use half::f16;
    use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};

    fn act_order_layer(k: usize, n: usize, g: usize, seed: u64) -> QuantLinear {
        let mut rng = StdRng::seed_from_u64(seed);
        let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut order: Vec<usize> = (0..k).collect();
        order.shuffle(&mut rng);
        let mut l =
            quantize_rtn(&w, k, n, g as i32, false, Some(act_order_g_idx(&order, g))).unwrap();
        l.bias = Some((0..n).map(|i| f16::from_f32(i as f32 * 0.01)).collect());
        l
    }

    #[test]
    fn perm_is_a_permutation_and_groups_are_sorted() {
        let l = act_order_layer(128, 16, 32, 5);
        let r = reorder_by_group(&l).unwrap();
        let mut seen = vec![false; l.k];
        for &p in &r.perm {
            assert!(
                !std::mem::replace(&mut seen[p as usize], true),
                "row {p} twice"
            );
        }
        // Equal-size groups sort to exactly k / G.
        assert_eq!(r.layer.g_idx, None);
        let g = l.g_idx.as_ref().unwrap();
        let sorted: Vec<i32> = r.perm.iter().map(|&p| g[p as usize]).collect();
        assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        // Stable: within a group the original order is kept.
        for w in r.perm.windows(2) {
            if g[w[0] as usize] == g[w[1] as usize] {
                assert!(w[0] < w[1]);
            }
        }
        // Each sorted row carries its source row's codes.
        for (row, &src) in r.perm.iter().enumerate() {
            for c in 0..l.n {
                assert_eq!(r.layer.code(row, c), l.code(src as usize, c));
            }
        }
    }

    #[test]
    fn y_is_unchanged_when_x_is_permuted_the_same_way() {
        let (k, n, m) = (256, 24, 3);
        let l = act_order_layer(k, n, 64, 6);
        let r = reorder_by_group(&l).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let x: Vec<f16> = (0..m * k)
            .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        let xp: Vec<f16> = (0..m)
            .flat_map(|i| r.perm.iter().map(move |&p| (i, p)))
            .map(|(i, p)| x[i * k + p as usize])
            .collect();
        let y = gptq_matmul(&x, m, &l);
        let yp = gptq_matmul(&xp, m, &r.layer);
        for (i, (a, b)) in y.iter().zip(&yp).enumerate() {
            // Same products, different summation order: f64 rounding only.
            assert!(
                (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                "y[{i}] {a} vs {b}"
            );
        }
    }

    /// A plain layer whose g_idx is stored written out (row r in group r / G, as writers store
    /// it for every linear) is no act-order: identity permutation, and the trivial g_idx dropped
    /// (`Reordered::layer`: `None` when the groups are exactly k / G), the rest as given.
    #[test]
    fn a_stored_trivial_g_idx_is_dropped_with_the_identity_permutation() {
        let mut l = act_order_layer(64, 8, 16, 9);
        l.g_idx = None;
        let mut stored = l.clone();
        stored.g_idx = Some((0..64).map(|r| r / 16).collect());
        let r = reorder_by_group(&stored).unwrap();
        assert_eq!(r.layer.g_idx, None);
        assert_eq!(r.layer, l);
        assert_eq!(r.perm, (0..64).collect::<Vec<i32>>());
    }

    #[test]
    fn uneven_groups_keep_a_sorted_g_idx_and_plain_layers_are_identity() {
        let mut l = act_order_layer(64, 8, 16, 8);
        // Move one row from group 0 to group 3: sizes 15,16,16,17.
        let g = l.g_idx.as_mut().unwrap();
        let row = g.iter().position(|&x| x == 0).unwrap();
        g[row] = 3;
        let r = reorder_by_group(&l).unwrap();
        let sg = r
            .layer
            .g_idx
            .as_ref()
            .expect("uneven groups need an explicit g_idx");
        assert!(sg.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(gidx::group_counts(sg, 4), vec![15, 16, 16, 17]);

        let mut plain = l.clone();
        plain.g_idx = None;
        let r = reorder_by_group(&plain).unwrap();
        assert_eq!(r.layer, plain);
        assert!(r.perm.iter().enumerate().all(|(i, &p)| p as usize == i));
    }
}
