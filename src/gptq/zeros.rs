//! Zero points: the v1 ("gptq") and v2 ("gptq_v2") storage conventions, symmetric detection,
//! and what can and cannot be detected of v1 underflow.
//!
//! v1 packers stored `zero - 1`; v2 stores the true zero. Converting adds or subtracts 1 in every
//! nibble *without carries between nibbles* (0x11111111 per word, nibble arithmetic mod 16).
//!
//! ## v1 underflow
//! A true zero of 0 has no v1 encoding: `0 - 1` is -1. What lands in the file depends on the packer:
//! - GPTQ-for-LLaMa / AutoGPTQ cast -1 to uint32 (0xFFFFFFFF) and OR it in at bits 4*j, so nibble j
//!   *and every higher nibble of the same word* read 0xF.
//! - A packer that masks to 4 bits stores 0xF in nibble j only.
//!
//! Detectable: a stored v1 nibble of 0xF. No true zero (0..=15) is ever stored as 15 in v1
//! (`15 - 1 = 14` at most), so every 0xF nibble is an underflow or a nibble overwritten by one.
//! In a word, the lowest 0xF nibble certainly had true zero 0.
//! NOT detectable: whether the 0xF nibbles *above* the lowest one in a word are zero-0 columns
//! (masked packer: exact) or columns whose real zero was overwritten by the sign extension
//! (OR packer: lost, any value 0..=15). The file does not say which packer wrote it. Nor can a
//! v2 file mislabelled as v1 (or the reverse) be told apart in general: every other nibble value
//! is legal in both.
//!
//! ## Whole-word v1 writers
//! Tools that quantize in v2 internally and export v1 by subtracting `0x11111111` from each int32
//! word (GPTQModel from 0.9.0; AutoGPTQ's unreleased v2-format code from 0.8.0.dev1: their
//! `MIN_VERSION_WITH_V2`) let a true
//! zero of 0 borrow from the nibble above: 0xF there, and one less in the next nibble (which can
//! borrow in turn). Per nibble that is unreadable, but the word as a whole is exact: adding
//! `0x11111111` back (mod 2^32) undoes it, which is how those tools read their own files. They
//! name themselves in quantize_config.json's `meta.quantizer` ("gptqmodel:1.2.0"); the loader
//! reads such files with `v1_whole_word_to_v2`. On a word without a 0xF nibble both readings agree.

use serde::{Deserialize, Serialize};

/// How a checkpoint stores its zero points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZeroFormat {
    /// `checkpoint_format: "gptq"`: stored = true zero - 1 (GPTQ-for-LLaMa, AutoGPTQ).
    V1,
    /// `checkpoint_format: "gptq_v2"`: stored = true zero (GPTQModel).
    V2,
}

impl ZeroFormat {
    /// The `checkpoint_format` string in quantize_config.json.
    pub fn config_name(self) -> &'static str {
        match self {
            ZeroFormat::V1 => "gptq",
            ZeroFormat::V2 => "gptq_v2",
        }
    }
}

const LOW3: u32 = 0x7777_7777;
const HIGH: u32 = 0x8888_8888;
const ONES: u32 = 0x1111_1111;

/// Add 1 to each nibble mod 16, no carry between nibbles: the low 3 bits + 1 can reach 8 but never
/// 16, so it stays inside the nibble; the nibble's top bit is then fixed by XOR with the old one.
pub fn nibbles_plus_one(w: u32) -> u32 {
    ((w & LOW3) + ONES) ^ (w & HIGH)
}

/// Subtract 1 from each nibble mod 16, no borrow: forcing the top bit on makes every nibble >= 8,
/// so `- 1` never borrows from the neighbour; XOR with the inverted old top bit restores it.
pub fn nibbles_minus_one(w: u32) -> u32 {
    ((w | HIGH) - ONES) ^ (!w & HIGH)
}

/// v1 words -> true zeros (v2). A 0xF nibble (underflow, see the module docs) becomes 0; check
/// `v1_underflow` first when that matters.
pub fn v1_to_v2(qzeros_v1: &[u32]) -> Vec<u32> {
    qzeros_v1.iter().map(|&w| nibbles_plus_one(w)).collect()
}

/// v1 words written by whole-word subtraction (see the module docs) -> true zeros: exact for every
/// word, 0xF nibbles included. Equal to `v1_to_v2` on words without a 0xF nibble.
pub fn v1_whole_word_to_v2(qzeros_v1: &[u32]) -> Vec<u32> {
    qzeros_v1.iter().map(|&w| w.wrapping_add(ONES)).collect()
}

/// True zeros -> v1 words. A true zero of 0 would wrap to 0xF; `Err` lists those (group, column)
/// positions (at most 16 of them) so the caller can name them.
pub fn v2_to_v1(qzeros_true: &[u32], n: usize) -> Result<Vec<u32>, Vec<(usize, usize)>> {
    let per_row = n / 8;
    let mut bad = Vec::new();
    for (i, &w) in qzeros_true.iter().enumerate() {
        for j in 0..8 {
            if (w >> (4 * j)) & 0xF == 0 && bad.len() < 16 {
                bad.push((i / per_row, (i % per_row) * 8 + j));
            }
        }
    }
    if bad.is_empty() {
        Ok(qzeros_true.iter().map(|&w| nibbles_minus_one(w)).collect())
    } else {
        Err(bad)
    }
}

/// Detected v1 underflow: where the 0xF nibbles are.
#[derive(Debug, Clone, PartialEq)]
pub struct V1Underflow {
    /// Number of 0xF nibbles.
    pub nibbles: usize,
    /// Words holding at least one.
    pub words: usize,
    /// First few (group, column) positions of 0xF nibbles, for the message.
    pub first: Vec<(usize, usize)>,
}

impl V1Underflow {
    /// One sentence for errors and warnings: what was seen and what it does and does not tell.
    pub fn describe(&self) -> String {
        format!(
            "{} zero nibble(s) in {} word(s) read 0xF in a v1 (\"gptq\") checkpoint, first at \
             (group, column) {:?}; v1 stores zero-1, so 0xF means a true zero of 0 underflowed. \
             The lowest 0xF nibble of each word is a true zero of 0; the 0xF nibbles above it may \
             be other zeros overwritten by the sign extension (AutoGPTQ-style packers) and cannot \
             be recovered from the file. Re-export the layer as gptq_v2 or re-quantize it",
            self.nibbles, self.words, self.first
        )
    }
}

/// Scan v1 words ([groups, n/8]) for 0xF nibbles; `None` when there are none.
pub fn v1_underflow(qzeros_v1: &[u32], n: usize) -> Option<V1Underflow> {
    let per_row = (n / 8).max(1);
    let mut r = V1Underflow {
        nibbles: 0,
        words: 0,
        first: Vec::new(),
    };
    for (i, &w) in qzeros_v1.iter().enumerate() {
        // A nibble is 0xF iff nibble+1 carries-free to 0: detect all-ones nibbles with SWAR.
        let f = w & (w >> 1) & (w >> 2) & (w >> 3) & ONES;
        if f == 0 {
            continue;
        }
        r.words += 1;
        r.nibbles += f.count_ones() as usize;
        for j in 0..8 {
            if (f >> (4 * j)) & 1 == 1 && r.first.len() < 8 {
                r.first.push((i / per_row, (i % per_row) * 8 + j));
            }
        }
    }
    (r.nibbles > 0).then_some(r)
}

/// Symmetric in v1 storage: every word 0x77777777 (true zero 8 everywhere).
pub fn is_symmetric_v1(qzeros_v1: &[u32]) -> bool {
    !qzeros_v1.is_empty() && qzeros_v1.iter().all(|&w| w == LOW3)
}

/// Symmetric in true zeros: every word 0x88888888.
pub fn is_symmetric_true(qzeros_true: &[u32]) -> bool {
    !qzeros_true.is_empty() && qzeros_true.iter().all(|&w| w == HIGH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, RngExt, SeedableRng};

    fn per_nibble(w: u32, f: impl Fn(u32) -> u32) -> u32 {
        (0..8).fold(0, |acc, j| {
            acc | ((f((w >> (4 * j)) & 0xF) & 0xF) << (4 * j))
        })
    }

    #[test]
    fn swar_plus_minus_match_per_nibble_arithmetic() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut words: Vec<u32> = (0..10_000).map(|_| rng.random()).collect();
        words.extend([0, u32::MAX, LOW3, HIGH, 0xF0F0_F0F0, 0x0F0F_0F0F]);
        for w in words {
            assert_eq!(nibbles_plus_one(w), per_nibble(w, |x| x + 1), "{w:#010x}");
            assert_eq!(
                nibbles_minus_one(w),
                per_nibble(w, |x| x.wrapping_sub(1)),
                "{w:#010x}"
            );
        }
        assert_eq!(nibbles_plus_one(LOW3), HIGH);
        assert_eq!(nibbles_plus_one(0xFFFF_FFFF), 0);
    }

    #[test]
    fn v1_v2_v1_round_trip() {
        let mut rng = StdRng::seed_from_u64(12);
        // Legal v1 words: nibbles 0..=14 (true zeros 1..=15).
        let v1: Vec<u32> = (0..64)
            .map(|_| (0..8).fold(0, |a, j| a | (rng.random_range(0..15u32) << (4 * j))))
            .collect();
        assert!(v1_underflow(&v1, 64).is_none());
        let v2 = v1_to_v2(&v1);
        assert_eq!(v2_to_v1(&v2, 64).unwrap(), v1);
    }

    #[test]
    fn v2_to_v1_refuses_true_zero_zero_and_names_it() {
        // [2 groups, 16 columns]: group 1, column 10 (word 3, nibble 2) has true zero 0.
        let mut z = vec![HIGH; 4];
        z[3] &= !(0xF << 8);
        assert_eq!(v2_to_v1(&z, 16).unwrap_err(), vec![(1, 10)]);
    }

    #[test]
    fn symmetric_detection() {
        assert!(is_symmetric_v1(&[LOW3; 5]));
        assert!(!is_symmetric_v1(&[LOW3, LOW3, 0x7777_7778]));
        assert!(is_symmetric_true(&v1_to_v2(&[LOW3; 5])));
        assert!(!is_symmetric_true(&[LOW3]));
        assert!(!is_symmetric_v1(&[]));
        // No zeros at all says nothing about symmetry, in either convention.
        assert!(!is_symmetric_true(&[]));
    }

    #[test]
    fn underflow_detects_autogptq_sign_extension_pattern() {
        // [1 group, 16 columns]; column 11 (word 1, nibble 3) had true zero 0 and an OR packer
        // sign-extended -1 over nibbles 3..8: word 1 = 0xFFFFF000 | low nibbles.
        let w = [0x6666_6666u32, 0xFFFF_F123];
        let u = v1_underflow(&w, 16).unwrap();
        assert_eq!((u.nibbles, u.words), (5, 1));
        assert_eq!(u.first[0], (0, 11));
        assert!(u.describe().contains("cannot"));
    }

    #[test]
    fn whole_word_v1_is_exact_where_per_nibble_reading_is_not() {
        // What GPTQModel's export does to the true zeros: one int32 subtraction per word.
        let export = |w: u32| w.wrapping_sub(ONES);
        // Column 3 has true zero 0 and column 4 true zero 5: nibble 3 borrows (0xF) and nibble 4
        // reads 5 - 1 - 1 = 3, which per nibble would be a true zero of 4.
        let truth = 0x8885_0888u32;
        let file = export(truth);
        assert_eq!(file, 0x7773_F777);
        assert_eq!(v1_whole_word_to_v2(&[file]), vec![truth]);
        assert_ne!(v1_to_v2(&[file]), vec![truth]);
        assert!(v1_underflow(&[file], 8).is_some());
        // A borrow chain (true zeros 0, 1, 0 in columns 0..3) and a borrow out of the top nibble.
        for truth in [0x8888_8010u32, 0x0888_8888, 0, 0x1111_1111] {
            assert_eq!(
                v1_whole_word_to_v2(&[export(truth)]),
                vec![truth],
                "{truth:#010x}"
            );
        }
        // Random true zeros, 0 and 1 frequent: every word comes back.
        let mut rng = StdRng::seed_from_u64(13);
        for _ in 0..10_000 {
            let truth = (0..8).fold(0u32, |w, j| {
                let z = if rng.random_bool(0.3) {
                    rng.random_range(0..2)
                } else {
                    rng.random_range(0..16)
                };
                w | (z << (4 * j))
            });
            assert_eq!(v1_whole_word_to_v2(&[export(truth)]), vec![truth]);
        }
        // On words without a 0xF nibble (every per-nibble writer's legal words) both agree.
        for _ in 0..10_000 {
            let w = (0..8).fold(0u32, |w, j| w | (rng.random_range(0..15u32) << (4 * j)));
            assert_eq!(v1_whole_word_to_v2(&[w]), v1_to_v2(&[w]), "{w:#010x}");
        }
    }
}
