//! g_idx: the group of every input row. Validation and act-order detection.
//!
//! Without act-order `g_idx[k] = k / G`. With act-order GPTQ quantized rows in order of decreasing
//! Hessian diagonal and grouped them in that order, so `g_idx[k] = rank(k) / G` is non-monotone.

/// What a g_idx vector says about the layer's grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Exactly `k / G`: plain grouping (no act-order, or act-order with static groups).
    Trivial,
    /// Non-decreasing but not `k / G` (uneven contiguous groups): no gather needed, but the
    /// kernel cannot assume `k / G`.
    Contiguous,
    /// Non-monotone: act-order; rows must be gathered or reordered.
    ActOrder,
}

/// Check length k and every value in [0, groups). Err is a reason naming the first bad index.
/// Empty groups are legal (their scales are simply never used) and not reported here; see
/// `group_counts` when that matters.
pub fn validate_g_idx(g_idx: &[i32], k: usize, groups: usize) -> Result<(), String> {
    if g_idx.len() != k {
        return Err(format!(
            "g_idx has {} entries, expected K = {k} (one group per input row)",
            g_idx.len()
        ));
    }
    if let Some((row, &g)) = g_idx
        .iter()
        .enumerate()
        .find(|(_, &g)| g < 0 || g as usize >= groups)
    {
        return Err(format!(
            "g_idx[{row}] = {g} is out of range; expected 0 <= g < {groups} (rows of scales/qzeros)"
        ));
    }
    Ok(())
}

/// Classify a (validated) g_idx against group size `group_size`.
pub fn classify(g_idx: &[i32], group_size: usize) -> Grouping {
    let trivial = g_idx
        .iter()
        .enumerate()
        .all(|(k, &g)| g as usize == k / group_size);
    if trivial {
        Grouping::Trivial
    } else if g_idx.windows(2).all(|w| w[0] <= w[1]) {
        Grouping::Contiguous
    } else {
        Grouping::ActOrder
    }
}

/// Whether a row gather/reorder is needed (anything but `k / G`).
pub fn is_act_order(g_idx: &[i32], group_size: usize) -> bool {
    classify(g_idx, group_size) != Grouping::Trivial
}

/// Rows per group, for a validated g_idx.
pub fn group_counts(g_idx: &[i32], groups: usize) -> Vec<usize> {
    let mut c = vec![0usize; groups];
    for &g in g_idx {
        c[g as usize] += 1;
    }
    c
}

/// The trivial g_idx `k / G` written out (checkpoints always carry one, as AutoGPTQ writes it).
pub fn trivial_g_idx(k: usize, group_size: usize) -> Vec<i32> {
    (0..k).map(|r| (r / group_size) as i32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_length_and_first_bad_row() {
        assert!(validate_g_idx(&trivial_g_idx(16, 8), 16, 2).is_ok());
        let e = validate_g_idx(&[0; 15], 16, 2).unwrap_err();
        assert!(e.contains("15") && e.contains("16"), "{e}");
        let mut g = trivial_g_idx(16, 8);
        g[9] = 2;
        let e = validate_g_idx(&g, 16, 2).unwrap_err();
        assert!(e.contains("g_idx[9] = 2"), "{e}");
        g[9] = -1;
        assert!(validate_g_idx(&g, 16, 2)
            .unwrap_err()
            .contains("g_idx[9] = -1"));
    }

    #[test]
    fn act_order_detection() {
        let t = trivial_g_idx(32, 8);
        assert_eq!(classify(&t, 8), Grouping::Trivial);
        assert!(!is_act_order(&t, 8));
        // Same groups, but checked against another group size: not trivial, still monotone.
        assert_eq!(classify(&t, 16), Grouping::Contiguous);
        // Swap two rows of different groups: non-monotone.
        let mut a = t.clone();
        a.swap(3, 20);
        assert_eq!(classify(&a, 8), Grouping::ActOrder);
        assert!(is_act_order(&a, 8));
        assert_eq!(group_counts(&a, 4), vec![8; 4]);
    }
}
