//! CPU emulation of gemv_v6_pipe's index math (kernels/gemv/gemv_v6_pipe.cu), thread by thread:
//! which packed words each thread loads, which scale/zero group it applies, which x rows the
//! staging writes into which shared-memory slot and which slot each chunk reads, which outputs
//! each block writes (directly, or by split-K atomics and the last-ticket finish). The tests check
//! coverage (every weight word read exactly once, every output written exactly once, every slot
//! read was staged with the right rows, the workspace left zero) on the odd shapes the registry
//! accepts, and the f64 result against the reference.
//!
//! What this proves: the mapping written here, with the kernel's constants from abi.h and the
//! host's `plan` (grid, k_slice), is complete and consistent. It mirrors the CUDA source by hand,
//! so it does not prove that the CUDA code is this mapping: `lab check` on a GPU does that.

use super::gemv::{self, V6_CHUNK_WORDS as CW, V6_TILE_N as TILE, V6_XS_ROWS};
use super::launch::{LayerShape, Tunables};
use super::registry::by_name;
use crate::cuda::SmLimits;
use crate::gptq::QuantLinear;

/// One staged shared-memory slot (a packed row of the slice): for lane pair j, the x rows of
/// (row 8w + j, row 8w + j + 4) and their values; `None` rows are the zero padding.
#[derive(Clone, Copy)]
struct Slot {
    rows: Option<usize>, // w (sorted packed row) it holds, None = padding
    pairs: [(f64, f64); 4],
}

/// What one emulated launch touched.
struct Trace {
    y: Vec<f64>,
    /// Loads of each (packed row, 4-column quad): index w * (n / 4) + col / 4.
    word_reads: Vec<u32>,
    /// Per output column: direct writes (split 1), atomic adds, final writes (split > 1).
    direct: Vec<u32>,
    atomics: Vec<u32>,
    finals: Vec<u32>,
    /// The workspace after the launch (must be all zero for the next one).
    workspace_zero: bool,
}

/// Emulates grid (tiles, slices) x block `threads` on `l` (canonical or reordered rows) with
/// x[perm[r]] for sorted row r (or x[r]). Panics on any inconsistency a GPU would turn into a
/// wrong or racy result (slot read before staging, slot staged twice, wrong rows in a slot,
/// a chunk spanning two groups, a slice past the x buffer).
fn emulate(
    l: &QuantLinear,
    perm: Option<&[i32]>,
    x: &[f64],
    threads: usize,
    slices: usize,
    k_slice: usize,
) -> Trace {
    let (k, n) = (l.k, l.n);
    let kw = k / 8;
    let warps = threads / 32;
    let tiles = n.div_ceil(TILE);
    // lab_group_shift: per-channel sends every row to group 0.
    let gshift = if l.group_size >= k {
        31
    } else {
        l.group_size.trailing_zeros()
    };
    let xrow = |r: usize| perm.map_or(x[r], |p| x[p[r] as usize]);
    let mut t = Trace {
        y: vec![f64::NAN; n],
        word_reads: vec![0; kw * n / 4],
        direct: vec![0; n],
        atomics: vec![0; n],
        finals: vec![0; n],
        workspace_zero: true,
    };
    let mut partial = vec![0f64; n];
    let mut tickets = vec![0usize; tiles];
    for by in 0..slices {
        for (bx, ticket) in tickets.iter_mut().enumerate() {
            let slice_words = k_slice / 8;
            let w_begin = by * slice_words;
            let w_end = kw.min(w_begin + slice_words);
            assert!(w_begin < w_end, "block ({bx},{by}): empty slice");
            let nchunks = (w_end - w_begin).div_ceil(CW);
            assert!(
                nchunks * CW <= V6_XS_ROWS / 8,
                "slice of {} words overflows the x buffer",
                nchunks * CW
            );
            // Staging: thread i, i + T, ... writes slot i.
            let mut xs: Vec<Option<Slot>> = vec![None; V6_XS_ROWS / 8];
            for tid in 0..threads {
                for i in (tid..nchunks * CW).step_by(threads) {
                    assert!(xs[i].is_none(), "slot {i} staged twice");
                    let w = w_begin + i;
                    let slot = if w < w_end {
                        let r0 = 8 * w;
                        Slot {
                            rows: Some(w),
                            pairs: std::array::from_fn(|j| (xrow(r0 + j), xrow(r0 + j + 4))),
                        }
                    } else {
                        Slot {
                            rows: None,
                            pairs: [(0.0, 0.0); 4],
                        }
                    };
                    xs[i] = Some(slot);
                }
            }
            // Main loop: warp = k-lane, lane = 4 columns.
            let mut part = vec![[0f64; 4]; warps * 32];
            for tid in 0..threads {
                let (lane, warp) = (tid % 32, tid / 32);
                let col = TILE * bx + 4 * lane;
                if col >= n {
                    continue;
                }
                let mut acc = [0f64; 4];
                let mut c = warp;
                while c < nchunks {
                    let w0 = w_begin + CW * c;
                    let g = (w0 * 8) >> gshift;
                    let mut tsum = [0f64; 4];
                    for j in 0..CW {
                        let w = w0 + j;
                        let slot = xs[CW * c + j].expect("chunk reads a slot nobody staged");
                        if w >= w_end {
                            // Zero codes against zero x: adds exactly nothing.
                            assert!(slot.rows.is_none() && slot.pairs == [(0.0, 0.0); 4]);
                            continue;
                        }
                        assert_eq!(slot.rows, Some(w), "slot holds the wrong rows");
                        t.word_reads[w * (n / 4) + col / 4] += 1;
                        for (cc, ts) in tsum.iter_mut().enumerate() {
                            let z = if l.symmetric {
                                8.0
                            } else {
                                f64::from(l.zero(g, col + cc))
                            };
                            for (j4, &(xlo, xhi)) in slot.pairs.iter().enumerate() {
                                // lab_dequant_word's lanes: (q_j - z, q_{j+4} - z).
                                let (rlo, rhi) = (8 * w + j4, 8 * w + j4 + 4);
                                assert_eq!(l.group_of(rlo), g, "row {rlo} outside chunk group");
                                assert_eq!(l.group_of(rhi), g, "row {rhi} outside chunk group");
                                *ts += (f64::from(l.code(rlo, col + cc)) - z) * xlo
                                    + (f64::from(l.code(rhi, col + cc)) - z) * xhi;
                            }
                        }
                    }
                    for cc in 0..4 {
                        acc[cc] += l.scales[g * n + col + cc].to_f64() * tsum[cc];
                    }
                    c += warps;
                }
                part[warp * 32 + lane] = acc;
            }
            // Reduction: thread t < 128 sums column t over the warps.
            let bias = |o: usize| l.bias.as_ref().map_or(0.0, |b| b[o].to_f64());
            for tid in 0..TILE {
                let out = TILE * bx + tid;
                if out >= n {
                    continue;
                }
                let total: f64 = (0..warps).map(|w| part[w * 32 + tid / 4][tid % 4]).sum();
                if slices == 1 {
                    t.direct[out] += 1;
                    t.y[out] = total + bias(out);
                } else {
                    t.atomics[out] += 1;
                    partial[out] += total;
                }
            }
            if slices > 1 {
                *ticket += 1;
                if *ticket == slices {
                    for out in (TILE * bx..TILE * (bx + 1)).filter(|&o| o < n) {
                        t.finals[out] += 1;
                        t.y[out] = partial[out] + bias(out);
                        partial[out] = 0.0;
                    }
                    *ticket = 0;
                }
            }
        }
    }
    t.workspace_zero = partial.iter().all(|&p| p == 0.0) && tickets.iter().all(|&c| c == 0);
    t
}

fn plan_for(l: &QuantLinear, perm: bool, threads: u32, split: u32) -> (usize, usize, usize) {
    let v = by_name("gemv_v6_pipe").unwrap();
    let params: Tunables = [
        ("threads".to_string(), threads),
        ("split_k".to_string(), split),
    ]
    .into_iter()
    .collect();
    let p = gemv::plan(v, &LayerShape::of(l, perm), 1, &params, SmLimits::H100).unwrap();
    assert_eq!(p.grid.0 as usize, l.n.div_ceil(TILE));
    assert_eq!(p.grid.1, p.split_k);
    assert_eq!(p.block.0, threads);
    (p.block.0 as usize, p.split_k as usize, p.k_slice as usize)
}

/// A layer of the given shape whose codes are all distinct-ish and whose values do not matter
/// (coverage only).
fn coverage_layer(k: usize, n: usize, group: usize) -> QuantLinear {
    super::gemm_emulate::testdata::layer(k, n, group, false, false, false, 5)
}

#[test]
fn every_word_and_output_is_covered_exactly_once_on_odd_shapes() {
    // (K, N, group): odd packed-row counts (K = 264: 33 words, per-channel), K above one x
    // buffer (4224, 8200 -> forced splits with a short last slice), N not a multiple of 128, the
    // Vicuna down projections.
    let shapes = [
        (264, 8, 264),
        (256, 200, 32),
        (4224, 200, 128),
        (8200, 136, 8200),
        (4096, 4104, 64),
        (13824, 264, 128),
    ];
    for (k, n, g) in shapes {
        let l = coverage_layer(k, n, g);
        let x = vec![1.0; k];
        for threads in [128u32, 256, 512] {
            for split in [0u32, 1, 2, 4, 8] {
                let (t, slices, ks) = plan_for(&l, false, threads, split);
                let tr = emulate(&l, None, &x, t, slices, ks);
                let what = format!("K={k} N={n} g={g} T={threads} split={split}->{slices}");
                assert!(
                    tr.word_reads.iter().all(|&c| c == 1),
                    "{what}: a word read {:?} times",
                    tr.word_reads.iter().find(|&&c| c != 1)
                );
                for o in 0..n {
                    if slices == 1 {
                        assert_eq!(
                            (tr.direct[o], tr.atomics[o], tr.finals[o]),
                            (1, 0, 0),
                            "{what} col {o}"
                        );
                    } else {
                        assert_eq!(
                            (tr.direct[o], tr.atomics[o] as usize, tr.finals[o]),
                            (0, slices, 1),
                            "{what} col {o}"
                        );
                    }
                }
                assert!(tr.workspace_zero, "{what}: workspace not left zero");
            }
        }
    }
}

#[test]
fn emulated_result_equals_the_f64_reference_with_and_without_act_order() {
    use crate::gptq::reorder_by_group;
    use half::f16;
    for (k, n, g) in [
        (256, 136, 32),
        (264, 8, 264),
        (512, 264, 64),
        (4224, 72, 128),
    ] {
        for sym in [true, false] {
            for act in [false, true] {
                if act && g == k {
                    continue; // per-channel has one group: no act-order
                }
                let seed = (k * 31 + n) as u64 + u64::from(sym) + 2 * u64::from(act);
                let l = super::gemm_emulate::testdata::layer(k, n, g, sym, act, true, seed);
                let xh: Vec<f16> = (0..k)
                    .map(|i| f16::from_f32(((i * 37 % 101) as f32 - 50.5) / 40.0))
                    .collect();
                let x: Vec<f64> = xh.iter().map(|v| v.to_f64()).collect();
                let reference = crate::reference::gptq_matmul(&xh, 1, &l);
                let (kl, perm) = if act {
                    let r = reorder_by_group(&l).unwrap();
                    assert!(r.layer.g_idx.is_none(), "equal groups reorder to row / G");
                    (r.layer, Some(r.perm))
                } else {
                    (l.clone(), None)
                };
                let scale: f64 = 1e-9 * (1.0 + reference.iter().map(|v| v.abs()).sum::<f64>());
                for threads in [128u32, 512] {
                    for split in [0u32, 1, 4] {
                        let (t, slices, ks) = plan_for(&kl, act, threads, split);
                        let tr = emulate(&kl, perm.as_deref(), &x, t, slices, ks);
                        for (o, (a, b)) in tr.y.iter().zip(&reference).enumerate() {
                            assert!(
                                (a - b).abs() <= scale,
                                "K={k} N={n} g={g} sym={sym} act={act} T={threads} split={split} col {o}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}
