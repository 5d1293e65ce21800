//! Packing 4-bit codes and zero points into the int32 words GPTQ checkpoints store.
//!
//! Codes pack along K (`qweight` [k/8, n]); zeros pack along N (`qzeros` [groups, n/8]). In both
//! the lowest nibble holds the lowest index, as every GPTQ packer writes them
//! (../shared/gptq-format.md, "Bit order"). Callers check divisibility by 8 first
//! (`QuantLinear::validate`, the checkpoint loader); a violation here is a programming error.

/// codes [k, n] row-major, each 0..=15 -> qweight [k/8, n]; code of row k sits at bits 4*(k%8).
pub fn pack_codes_kn(codes: &[u8], k: usize, n: usize) -> Vec<u32> {
    assert!(k % 8 == 0, "pack_codes_kn: k = {k} is not a multiple of 8");
    assert_eq!(codes.len(), k * n, "pack_codes_kn: codes is not [k, n]");
    let mut out = vec![0u32; k / 8 * n];
    for (r, row) in codes.chunks_exact(n).enumerate() {
        let shift = 4 * (r % 8);
        let dst = &mut out[(r / 8) * n..(r / 8 + 1) * n];
        for (w, &c) in dst.iter_mut().zip(row) {
            *w |= u32::from(c & 0xF) << shift;
        }
    }
    out
}

/// qweight [k/8, n] -> codes [k, n] row-major.
pub fn unpack_codes_kn(qweight: &[u32], k: usize, n: usize) -> Vec<u8> {
    assert!(
        k % 8 == 0,
        "unpack_codes_kn: k = {k} is not a multiple of 8"
    );
    assert_eq!(
        qweight.len(),
        k / 8 * n,
        "unpack_codes_kn: qweight is not [k/8, n]"
    );
    let mut out = vec![0u8; k * n];
    for (r, row) in out.chunks_exact_mut(n).enumerate() {
        let shift = 4 * (r % 8);
        let src = &qweight[(r / 8) * n..(r / 8 + 1) * n];
        for (c, &w) in row.iter_mut().zip(src) {
            *c = ((w >> shift) & 0xF) as u8;
        }
    }
    out
}

/// zeros [groups, n] (each 0..=15) -> qzeros [groups, n/8]; zero of column n at bits 4*(n%8).
pub fn pack_zeros(zeros: &[u8], groups: usize, n: usize) -> Vec<u32> {
    assert!(n % 8 == 0, "pack_zeros: n = {n} is not a multiple of 8");
    assert_eq!(
        zeros.len(),
        groups * n,
        "pack_zeros: zeros is not [groups, n]"
    );
    zeros
        .chunks_exact(8)
        .map(|eight| {
            eight
                .iter()
                .enumerate()
                .fold(0u32, |w, (j, &z)| w | (u32::from(z & 0xF) << (4 * j)))
        })
        .collect()
}

/// qzeros [groups, n/8] -> zeros [groups, n].
pub fn unpack_zeros(qzeros: &[u32], groups: usize, n: usize) -> Vec<u8> {
    assert!(n % 8 == 0, "unpack_zeros: n = {n} is not a multiple of 8");
    assert_eq!(
        qzeros.len(),
        groups * (n / 8),
        "unpack_zeros: qzeros is not [groups, n/8]"
    );
    qzeros
        .iter()
        .flat_map(|&w| (0..8).map(move |j| ((w >> (4 * j)) & 0xF) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, RngExt, SeedableRng};

    #[test]
    fn hand_computed_word_has_lowest_row_in_lowest_nibble() {
        // Column 0 of rows 0..8 holds codes 1,2,...,8; column 1 holds 15,0,0,...,0,9 (row 7).
        let (k, n) = (8, 2);
        let mut codes = vec![0u8; k * n];
        for r in 0..8 {
            codes[r * n] = r as u8 + 1;
        }
        codes[1] = 15;
        codes[7 * n + 1] = 9;
        let q = pack_codes_kn(&codes, k, n);
        assert_eq!(q, vec![0x8765_4321, 0x9000_000F]);
        assert_eq!(unpack_codes_kn(&q, k, n), codes);
    }

    #[test]
    fn hand_computed_zero_word_has_lowest_column_in_lowest_nibble() {
        let zeros = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8, 8, 8, 15];
        let q = pack_zeros(&zeros, 1, 16);
        assert_eq!(q, vec![0x7654_3210, 0xF888_8888]);
        assert_eq!(unpack_zeros(&q, 1, 16), zeros);
    }

    #[test]
    fn only_the_low_nibble_of_a_value_is_packed() {
        // A value above 15 must not spill into its neighbour's nibble (the next row's code, the
        // next column's zero): each field is 4 bits wide.
        let (k, n) = (8, 1);
        let mut codes = vec![0u8; k * n];
        codes[0] = 0x13;
        assert_eq!(pack_codes_kn(&codes, k, n), vec![0x0000_0003]);
        let mut zeros = [0u8; 8];
        zeros[0] = 0x25;
        assert_eq!(pack_zeros(&zeros, 1, 8), vec![0x0000_0005]);
    }

    #[test]
    fn random_round_trips_are_bit_exact() {
        let mut rng = StdRng::seed_from_u64(7);
        for &(k, n) in &[(8, 8), (64, 24), (128, 40)] {
            let codes: Vec<u8> = (0..k * n).map(|_| rng.random_range(0..16u8)).collect();
            let q = pack_codes_kn(&codes, k, n);
            assert_eq!(unpack_codes_kn(&q, k, n), codes, "codes k={k} n={n}");
            // And words -> codes -> words: every bit of a word is a nibble of some code.
            let words: Vec<u32> = (0..k / 8 * n).map(|_| rng.random()).collect();
            assert_eq!(pack_codes_kn(&unpack_codes_kn(&words, k, n), k, n), words);
            let g = k / 8;
            let zeros: Vec<u8> = (0..g * n).map(|_| rng.random_range(0..16u8)).collect();
            let qz = pack_zeros(&zeros, g, n);
            assert_eq!(unpack_zeros(&qz, g, n), zeros, "zeros g={g} n={n}");
        }
    }
}
