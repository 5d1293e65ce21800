//! The prepared weight layout of the tensor-core GEMM (`gemm_v2_mma`, kernels/gemm/v2_mma.cu):
//! 4-bit codes re-laid once at load time so that each lane's 16-byte load holds exactly the codes of
//! its own mma B fragments, in the nibble order the magic-number dequant unpacks.
//!
//! Fragment facts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type", checked
//! against the ISA text; groupID g = lane / 4, threadID_in_group t = lane % 4):
//! B (16 x 8, "col") is two .f16x2 registers per lane, low half first:
//!   b0, b1 = B[k = 2t + {0, 1}][n = g]        b2, b3 = B[k = 2t + 8 + {0, 1}][n = g]
//!
//! Layout. The prepared buffer is u32 `[ceil(k/32)][n/32][32 lanes][4 words]`: one 512-byte *chunk*
//! per (32 K rows, 32 columns); chunks of one K band are contiguous along n (a block's 8 warps read
//! 8 neighbouring chunks = 4 KiB in one coalesced sweep). In chunk (kc, nc), lane l = 4g + t holds
//! word j (j = 0..4) for column `n = 32 nc + 8 j + g` (n8 tile j of the warp's stripe), covering
//! both k16 steps of the chunk. Nibble i of that word (bits 4i..4i+3) holds the code of row
//!   k = 32 kc + 16 (p / 2) + 8 (p % 2) + 2 t + h,     where p = i % 4, h = i / 4,
//! because the dequant (`gemm::dequant_word`) turns nibble pairs (0,4), (1,5), (2,6), (3,7) into
//! half2 p = 0..3 (`lop3` with 0x000f000f / 0x00f000f0, on w and w >> 8), and the kernel feeds
//! half2 0, 1 as {b0b1, b2b3} of k-step 0 and half2 2, 3 as {b0b1, b2b3} of k-step 1.
//! Rows k >= K (K not a multiple of 32) and columns n >= N (N not a multiple of 32) are padded with
//! code 0; the kernel zero-fills the matching activations and never writes those columns, so padding
//! never contributes. Size: ceil(k/32)*32/8 * ceil(n/32)*32 words (= the canonical k/8 * n when 32
//! divides both).

use crate::kernels::abi;
use crate::{LabError, Result};

/// K rows per prepared chunk (two k16 mma steps).
pub const CHUNK_K: usize = abi::LAB_GEMM_CHUNK_K as usize;
/// Columns per prepared chunk (four n8 tiles = one warp's stripe).
pub const CHUNK_N: usize = abi::LAB_GEMM_CHUNK_N as usize;
/// u32 words per chunk: 32 lanes x 4.
pub const CHUNK_WORDS: usize = 32 * 4;

/// Chunks along n: n padded up to a multiple of 32 columns (padding columns hold code 0).
pub fn n_chunks(n: usize) -> usize {
    n.div_ceil(CHUNK_N)
}

/// u32 words of the prepared buffer for a k x n layer.
pub fn prepared_words(k: usize, n: usize) -> usize {
    k.div_ceil(CHUNK_K) * CHUNK_WORDS * n_chunks(n)
}

/// Index of lane `lane`'s word `j` of chunk (kc, nc) in the prepared buffer: the address the
/// kernel's cp.async reads (`((kc * ceil(n/32) + nc) * 32 + lane) * 4` words, + j in the uint4).
pub fn word_index(n: usize, kc: usize, nc: usize, lane: usize, j: usize) -> usize {
    ((kc * n_chunks(n) + nc) * 32 + lane) * 4 + j
}

/// (k, n) of nibble `i` of lane `lane`'s word `j` in chunk (kc, nc): the layout's definition.
pub fn nibble_coord(kc: usize, nc: usize, lane: usize, j: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    let (p, h) = (i % 4, i / 4);
    let k = kc * CHUNK_K + 16 * (p / 2) + 8 * (p % 2) + 2 * t + h;
    let n = nc * CHUNK_N + 8 * j + g;
    (k, n)
}

fn check_shape(k: usize, n: usize) -> Result<()> {
    if k == 0 || n == 0 || n % 8 != 0 {
        return Err(LabError::UnsupportedShape {
            variant: "gemm_v2_mma".into(),
            shape: format!("k={k} n={n}"),
            reason: "the fragment layout needs k > 0 and n a positive multiple of 8".into(),
        });
    }
    Ok(())
}

/// Build the prepared buffer from a code accessor `code(k, n)` (0..16) over a k x n layer; rows
/// past k and columns past n are padded with 0. Taking an accessor lets act-order prepare read `code(perm[r], n)`.
pub fn to_fragment_order(
    k: usize,
    n: usize,
    code: impl Fn(usize, usize) -> u32,
) -> Result<Vec<u32>> {
    check_shape(k, n)?;
    let mut out = vec![0u32; prepared_words(k, n)];
    for kc in 0..k.div_ceil(CHUNK_K) {
        for nc in 0..n_chunks(n) {
            for lane in 0..32 {
                for j in 0..4 {
                    let mut w = 0u32;
                    for i in 0..8 {
                        let (kr, col) = nibble_coord(kc, nc, lane, j, i);
                        if kr < k && col < n {
                            w |= (code(kr, col) & 0xF) << (4 * i);
                        }
                    }
                    out[word_index(n, kc, nc, lane, j)] = w;
                }
            }
        }
    }
    Ok(out)
}

/// The inverse: canonical GPTQ `qweight` u32 [k/8, n] (k % 8 == 0) from a prepared buffer.
pub fn from_fragment_order(prepared: &[u32], k: usize, n: usize) -> Result<Vec<u32>> {
    check_shape(k, n)?;
    if k % 8 != 0 || prepared.len() != prepared_words(k, n) {
        return Err(LabError::invalid(
            "prepared qweight",
            format!(
                "{} words for k={k} n={n}; expected {} and k % 8 == 0",
                prepared.len(),
                prepared_words(k, n)
            ),
        ));
    }
    let mut out = vec![0u32; k / 8 * n];
    for kc in 0..k.div_ceil(CHUNK_K) {
        for nc in 0..n_chunks(n) {
            for lane in 0..32 {
                for j in 0..4 {
                    let w = prepared[word_index(n, kc, nc, lane, j)];
                    for i in 0..8 {
                        let (kr, col) = nibble_coord(kc, nc, lane, j, i);
                        if kr < k && col < n {
                            out[(kr / 8) * n + col] |= ((w >> (4 * i)) & 0xF) << (4 * (kr % 8));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Canonical GPTQ packing `u32 [k/8, n]` from a code accessor (used for v1 after an act-order
/// reorder). k % 8 == 0.
pub fn to_canonical(k: usize, n: usize, code: impl Fn(usize, usize) -> u32) -> Vec<u32> {
    let mut out = vec![0u32; k / 8 * n];
    for kr in 0..k {
        for col in 0..n {
            out[(kr / 8) * n + col] |= (code(kr, col) & 0xF) << (4 * (kr % 8));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn canonical_code(q: &[u32], n: usize, k: usize, col: usize) -> u32 {
        (q[(k / 8) * n + col] >> (4 * (k % 8))) & 0xF
    }

    fn random_qweight(k: usize, n: usize, seed: u64) -> Vec<u32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..k / 8 * n).map(|_| rng.random::<u32>()).collect()
    }

    #[test]
    fn every_code_lands_in_exactly_one_nibble() {
        // The nibble map is a bijection from (chunk, lane, word, nibble) onto the 32 x 32 chunk.
        let mut seen = vec![0u32; CHUNK_K * CHUNK_N];
        for lane in 0..32 {
            for j in 0..4 {
                for i in 0..8 {
                    let (k, n) = nibble_coord(0, 0, lane, j, i);
                    seen[k * CHUNK_N + n] += 1;
                }
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "nibble map is not a bijection"
        );
    }

    #[test]
    fn roundtrip_reconstructs_qweight() {
        for &(k, n, seed) in &[
            (64, 32, 1u64),
            (256, 96, 2),
            (4096 / 16, 512, 3),
            (96, 64, 4),
        ] {
            let q = random_qweight(k, n, seed);
            let p = to_fragment_order(k, n, |kr, c| canonical_code(&q, n, kr, c)).unwrap();
            assert_eq!(p.len(), prepared_words(k, n));
            let back = from_fragment_order(&p, k, n).unwrap();
            assert_eq!(back, q, "k={k} n={n} seed={seed}");
        }
    }

    #[test]
    fn k_not_multiple_of_32_pads_with_zero_codes() {
        let (k, n) = (40, 32);
        let q = random_qweight(k, n, 9);
        let p = to_fragment_order(k, n, |kr, c| canonical_code(&q, n, kr, c)).unwrap();
        assert_eq!(p.len(), 2 * CHUNK_WORDS);
        for lane in 0..32 {
            for j in 0..4 {
                let w = p[word_index(n, 1, 0, lane, j)];
                for i in 0..8 {
                    let (kr, _) = nibble_coord(1, 0, lane, j, i);
                    if kr >= k {
                        assert_eq!((w >> (4 * i)) & 0xF, 0, "padding row {kr} not zero");
                    }
                }
            }
        }
        assert_eq!(from_fragment_order(&p, k, n).unwrap(), q);
    }

    /// What each lane of the kernel reads and how it unpacks it, written from the PTX fragment
    /// definition (not from `nibble_coord`): lane l's word j, half2 p, half h must be
    /// B[k][n] of k-step p/2, register p%2 (b0b1 or b2b3), element h, column g of n8 tile j.
    #[test]
    fn lane_reads_match_the_ptx_b_fragment() {
        let (k, n) = (128, 64);
        let q = random_qweight(k, n, 5);
        let p = to_fragment_order(k, n, |kr, c| canonical_code(&q, n, kr, c)).unwrap();
        for kc in 0..k / 32 {
            for nc in 0..n / 32 {
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    for j in 0..4 {
                        let w = p[((kc * n.div_ceil(32) + nc) * 32 + lane) * 4 + j];
                        // The kernel's four lop3 extractions: (w, LO), (w, HI), (w>>8, LO), (w>>8, HI).
                        let pairs = [
                            (w & 0xF, (w >> 16) & 0xF),
                            ((w >> 4) & 0xF, (w >> 20) & 0xF),
                            ((w >> 8) & 0xF, (w >> 24) & 0xF),
                            ((w >> 12) & 0xF, (w >> 28) & 0xF),
                        ];
                        for (pi, (lo, hi)) in pairs.iter().enumerate() {
                            let kstep = pi / 2; // half2 0,1 -> k-step 0; 2,3 -> k-step 1
                            let reg = pi % 2; // b0b1 (reg 0) or b2b3 (reg 1)
                            let kbase = kc * 32 + 16 * kstep + 2 * t + 8 * reg;
                            let col = nc * 32 + 8 * j + g;
                            assert_eq!(*lo, canonical_code(&q, n, kbase, col));
                            assert_eq!(*hi, canonical_code(&q, n, kbase + 1, col));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(to_fragment_order(64, 44, |_, _| 0).is_err());
        assert!(from_fragment_order(&[0; 10], 64, 32).is_err());
    }
}
