//! CPU emulation of the decode attention's split and load selection (kernels/llama/attention.cuh,
//! `llama_attn_block`), block by block and lane group by lane group: which positions each
//! (head, split) block scores, and where every 16-byte K and V load of its unrolled steps comes
//! from. The kernel's steps cover `groups x LLAMA_ATTN_UNROLL` positions at once and so run past
//! a block's end; those loads must select zero before anything else. With the new row (`pos`)
//! tested first, a block whose step ran onto `pos` in the next block's range read `vcur`, shared
//! memory only the block holding `pos` writes: H100 runs 9-10 had every int4 decode step at
//! ctx 512-2048 end with NaN logits that way (0 x a leftover fp16 Inf/NaN). The tests pin the
//! fixed order on every shape the engine, the persistent layers and the tiny check use, and show
//! that the old order fails on the run-10 configuration (so the check can fail).

/// Threads per attention block and 16-byte loads per lane per step (attention.cuh).
const THREADS: usize = 256;
const UNROLL: usize = 8;

/// Where one lane's load of position `pp` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    /// Zero: past the block's end (weight 0, and the value 0 too).
    Zero,
    /// The new row's k or v, in shared memory this block wrote (`has_cur`).
    Cur,
    /// The KV cache row.
    Cache,
}

/// The kernel's select for position `pp` of a block covering [start, end): `fixed` = the order
/// since the fix (`pp >= end` first), else the order H100 runs 9-10 ran (`pp == pos` first).
fn select(pp: usize, end: usize, pos: usize, fixed: bool) -> Src {
    if fixed {
        if pp >= end {
            Src::Zero
        } else if pp == pos {
            Src::Cur
        } else {
            Src::Cache
        }
    } else if pp == pos {
        Src::Cur
    } else if pp < end {
        Src::Cache
    } else {
        Src::Zero
    }
}

/// One step of the decode attention at position `pos` (len = pos + 1 <= max_ctx) for head dim
/// `hd`, engine chunk `p_chunk` and `n_splits` blocks per head; `follow` = the split size follows
/// the length past one chunk (4324cee, the kernel now), else every split is `p_chunk` (run F).
/// Returns the positions scored over all splits and, for every load of both loops, a failure
/// message where the load would read `kcur`/`vcur` its block never wrote.
fn emulate(
    hd: usize,
    p_chunk: usize,
    n_splits: usize,
    pos: usize,
    follow: bool,
    fixed: bool,
) -> (Vec<usize>, Vec<String>) {
    let len = pos + 1;
    let chunk = if len <= p_chunk || !follow {
        p_chunk
    } else {
        len.div_ceil(n_splits)
    };
    let lpp = hd / 8;
    let groups = THREADS / lpp;
    let mut scored = Vec::new();
    let mut bad = Vec::new();
    for split in 0..n_splits {
        let start = split * chunk;
        if start >= len {
            continue;
        }
        let end = (start + chunk).min(len);
        let has_cur = start <= pos && pos < end;
        let mut check = |what: &str, pp: usize| match select(pp, end, pos, fixed) {
            Src::Cur if !has_cur => bad.push(format!(
                "{what} split {split} [{start}, {end}) reads the new row at {pos} it never wrote"
            )),
            Src::Cache if pp >= end || pp == pos => bad.push(format!(
                "{what} split {split}: cache row {pp} outside its range"
            )),
            _ => {}
        };
        // Scores: base = start, start + groups x UNROLL, ...; lane group g loads base + u groups + g.
        let mut base = start;
        while base < end {
            for u in 0..UNROLL {
                for g in 0..groups {
                    let pp = base + u * groups + g;
                    check("K", pp);
                    if pp < end {
                        scored.push(pp);
                    }
                }
            }
            base += groups * UNROLL;
        }
        // Weighted V: group g walks base = start + g, + groups x UNROLL; loads base + u groups.
        for g in 0..groups {
            let mut base = start + g;
            while base < end {
                for u in 0..UNROLL {
                    check("V", base + u * groups);
                }
                base += groups * UNROLL;
            }
        }
    }
    (scored, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulated geometry is the kernel's: THREADS and UNROLL against attention.cuh's
    /// #defines, so a changed kernel cannot leave these tests proving the old one.
    #[test]
    fn the_emulated_block_geometry_is_the_kernels() {
        let cuh = include_str!("../../kernels/llama/attention.cuh");
        let define = |name: &str| -> usize {
            let line = cuh
                .lines()
                .find(|l| l.split_whitespace().take(2).eq(["#define", name]))
                .unwrap_or_else(|| panic!("attention.cuh has no #define {name}"));
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        assert_eq!(define("LLAMA_ATTN_THREADS"), THREADS);
        assert_eq!(define("LLAMA_ATTN_UNROLL"), UNROLL);
    }

    /// (head dim, engine chunk, max_ctx): the decode bench's 7B/13B engines (chunk 256, max_ctx
    /// 2085), the persistent layers' grid-fitted splits (7B 261, 13B 348 at max_ctx 2085), and
    /// the tiny check's small chunks and head dims.
    const CONFIGS: &[(usize, usize, usize)] = &[
        (128, 256, 2085),
        (128, 261, 2085),
        (128, 348, 2085),
        (128, 256, 523),
        (32, 4, 64),
        (32, 8, 64),
        (16, 16, 80),
        (64, 128, 300),
    ];

    #[test]
    fn every_position_is_scored_once_and_no_block_reads_a_new_row_it_did_not_write() {
        for &(hd, chunk, max_ctx) in CONFIGS {
            let n_splits = max_ctx.div_ceil(chunk);
            for pos in 0..max_ctx {
                let (mut scored, bad) = emulate(hd, chunk, n_splits, pos, true, true);
                assert!(
                    bad.is_empty(),
                    "hd {hd} chunk {chunk} pos {pos}: {}",
                    bad[0]
                );
                scored.sort_unstable();
                assert_eq!(
                    scored,
                    (0..=pos).collect::<Vec<_>>(),
                    "hd {hd} chunk {chunk} max_ctx {max_ctx} pos {pos}"
                );
            }
        }
    }

    #[test]
    fn the_order_runs_9_and_10_ran_reads_an_unwritten_new_row_at_ctx_512() {
        // 7B at max_ctx 2085: 9 splits; at pos 512.. the chunk is 57-61 positions, and the V
        // loop's 128-position step of split 7 runs onto pos in split 8's range.
        let n_splits = 2085usize.div_ceil(256);
        let hits = (512..548)
            .filter(|&pos| !emulate(128, 256, n_splits, pos, true, false).1.is_empty())
            .count();
        assert_eq!(hits, 36, "every step of the ctx-512 stretch");
        // The fixed order on the same steps reads nothing it did not write.
        assert!((512..548).all(|pos| emulate(128, 256, n_splits, pos, true, true).1.is_empty()));
        // Run F's fixed 256-position splits (two whole 128-position steps) never ran a non-last
        // block past its end, so even the old order read only rows its block wrote: why run F
        // saw no NaN.
        assert!((0..2085).all(|pos| emulate(128, 256, n_splits, pos, false, false).1.is_empty()));
    }

    #[test]
    fn a_block_ending_exactly_at_the_new_row_does_not_hold_it() {
        // The tiny check (hd 32, chunk 4, max_ctx 64 -> 16 splits) at pos 60: len 61, chunk
        // ceil(61 / 16) = 4, so split 14 is [56, 60) and pos = its end lies in split 15. Split 14's
        // 512-position step runs over 60; in the old order that load took kcur, which only the
        // block holding pos (kernel: `start <= pos && pos < end`) writes, so it must be flagged.
        let (_, bad) = emulate(32, 4, 16, 60, true, false);
        let want = "K split 14 [56, 60) reads the new row at 60 it never wrote";
        assert!(bad.iter().any(|b| b == want), "{want} not in {bad:?}");
        assert!(emulate(32, 4, 16, 60, true, true).1.is_empty());
    }

    #[test]
    fn both_loops_of_the_old_order_run_onto_the_new_row() {
        // 7B at pos 512: len 513, 9 splits of ceil(513 / 9) = 57, split 7 = [399, 456). The score
        // step 399 + 0..128 covers 512 (u = 7, g = 1), and so does the V walk of lane group 1
        // (400 + 7 x 16 = 512): each loop alone reads an unwritten row (kcur, vcur).
        let (_, bad) = emulate(128, 256, 9, 512, true, false);
        for what in ["K", "V"] {
            let want = format!("{what} split 7 [399, 456) reads the new row at 512 it never wrote");
            assert!(bad.contains(&want), "{want} not in {bad:?}");
        }
    }

    #[test]
    fn the_long_context_check_reaches_the_geometry_the_old_order_failed_on() {
        // gpu_check::check_long_context: hd 128, the engine's default chunk, 9 splits; its
        // decode steps at positions LONG_PROMPT_LEN.. must include one where the old order reads
        // an unwritten new row (so the GPU check can fail), and the fixed order none.
        use crate::model::gpu_check::{
            long_context_config, LONG_MAX_CTX, LONG_NEW, LONG_PROMPT_LEN,
        };
        use crate::model::gpu_engine::EngineOptions;
        let cfg = long_context_config();
        let chunk = EngineOptions::new(LONG_MAX_CTX).attn_chunk;
        let n_splits = LONG_MAX_CTX.div_ceil(chunk);
        assert_eq!((cfg.head_dim(), chunk, n_splits), (128, 256, 9));
        let steps = LONG_PROMPT_LEN..LONG_PROMPT_LEN + LONG_NEW;
        let old = steps
            .clone()
            .filter(|&pos| !emulate(128, chunk, n_splits, pos, true, false).1.is_empty())
            .count();
        assert!(old > 0, "no decode step of the check reaches the overrun");
        assert!(steps
            .clone()
            .all(|pos| emulate(128, chunk, n_splits, pos, true, true).1.is_empty()));
    }
}
