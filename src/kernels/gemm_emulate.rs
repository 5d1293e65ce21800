//! CPU emulation of the GEMM kernels (kernels/gemm/v2_mma.cu, and v1_simt.cu in `run_v1`), thread by thread and
//! lane by lane: the same copy mapping into the same shared-memory byte offsets (with cp.async's
//! zero-fill), the same per-lane reads, the bit-exact magic-number dequant in fp16, ldmatrix's
//! address/receive rules and mma's fragment rules from the PTX ISA, and the same epilogue.
//! It exists so every index in the kernel is checked without a GPU. Test-only.

// The loops mirror the kernel's thread/lane/tile indices on purpose, so they index by number.
#![allow(clippy::needless_range_loop)]

use crate::kernels::abi::{self, lab_gemm_params};
use half::f16;

const THREADS: usize = abi::LAB_GEMM_V2_THREADS as usize;
const BN: usize = abi::LAB_GEMM_V2_BN as usize;
const BK: usize = abi::LAB_GEMM_V2_BK as usize;
const WARPS: usize = THREADS / 32;
const CK: usize = 32;
const CN: usize = 32;
const CHUNKS: usize = BK / CK;
const APITCH: usize = BK + 8;
const B_BYTES: usize = CHUNKS * WARPS * 32 * 16;
const S_OFF: usize = B_BYTES;
const Z_OFF: usize = S_OFF + CHUNKS * BN * 2;
const A_OFF: usize = Z_OFF + CHUNKS * (BN / 8) * 4;

/// Host copies of everything the kernel reads; `params` carries the scalars (pointers ignored).
pub struct Inputs<'a> {
    pub p: lab_gemm_params,
    pub x: &'a [f16],
    pub qweight: &'a [u32],
    pub qzeros: &'a [u32],
    pub scales: &'a [f16],
    pub perm: Option<&'a [i32]>,
    pub bias: Option<&'a [f16]>,
}

fn rd16(s: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([s[o], s[o + 1]])
}
fn rd32(s: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]])
}
fn wr32(s: &mut [u8], o: usize, v: u32) {
    s[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
/// cp.async 16 bytes: `src` words, or zero-fill when not valid.
fn cp16_words(s: &mut [u8], dst: usize, src: Option<&[u32]>) {
    for w in 0..4 {
        wr32(s, dst + 4 * w, src.map_or(0, |v| v[w]));
    }
}
fn cp16_halves(s: &mut [u8], dst: usize, src: Option<&[f16]>) {
    for h in 0..8 {
        let b = src.map_or(0u16, |v| v[h].to_bits()).to_le_bytes();
        s[dst + 2 * h..dst + 2 * h + 2].copy_from_slice(&b);
    }
}

/// `issue_stage` of the kernel for every thread of block (n0, slice) into `st` (one stage slot).
fn issue_stage(inp: &Inputs, mt: usize, st: &mut [u8], k0: usize, k_end: usize, n0: usize) {
    let p = &inp.p;
    let (n, k, m) = (p.n as usize, p.k as usize, p.m as usize);
    let n_chunks = n.div_ceil(CN);
    let gs = p.group_size as usize;
    for tid in 0..THREADS {
        let (warp, lane) = (tid >> 5, tid & 31);
        for c in 0..CHUNKS {
            let kc = k0 / CK + c;
            let nc = n0 / CN + warp;
            let ok = k0 + CK * c < k_end && nc < n_chunks;
            let o = ((kc * n_chunks + nc) * 128) + lane * 4;
            let src = ok.then(|| &inp.qweight[o..o + 4]);
            cp16_words(st, ((c * WARPS + warp) * 32 + lane) * 16, src);
        }
        if tid < 64 {
            let (c, part) = (tid >> 5, tid & 31);
            let (krow, col) = (k0 + CK * c, n0 + 8 * part);
            let ok = krow < k_end && col < n;
            let o = (krow / gs) * n + col;
            let src = ok.then(|| &inp.scales[o..o + 8]);
            cp16_halves(st, S_OFF + c * (BN * 2) + part * 16, src);
        } else if tid < 128 && p.zero_mode as u32 == abi::LAB_ZEROS_TRUE {
            let e = tid - 64;
            let (c, word) = (e >> 5, e & 31);
            let krow = k0 + CK * c;
            let ok = krow < k_end && n0 + 8 * word < n;
            let o = (krow / gs) * (n / 8) + n0 / 8 + word;
            wr32(
                st,
                Z_OFF + c * (BN / 8) * 4 + word * 4,
                if ok { inp.qzeros[o] } else { 0 },
            );
        }
        let mut e = tid;
        while e < 16 * mt * 8 {
            let (row, piece) = (e >> 3, e & 7);
            let kk = k0 + 8 * piece;
            let ok = row < m && kk < k_end;
            let dst = A_OFF + (row * APITCH + 8 * piece) * 2;
            match inp.perm {
                None => {
                    let src = ok.then(|| &inp.x[row * k + kk..row * k + kk + 8]);
                    cp16_halves(st, dst, src);
                }
                Some(perm) => {
                    let h: Vec<f16> = (0..8)
                        .map(|i| {
                            if ok {
                                inp.x[row * k + perm[kk + i] as usize]
                            } else {
                                f16::ZERO
                            }
                        })
                        .collect();
                    cp16_halves(st, dst, Some(&h));
                }
            }
            e += THREADS;
        }
    }
}

fn h2(u: u32) -> [f16; 2] {
    [f16::from_bits(u as u16), f16::from_bits((u >> 16) as u16)]
}
fn u2(h: [f16; 2]) -> u32 {
    h[0].to_bits() as u32 | (h[1].to_bits() as u32) << 16
}
/// fp16 ops as the hardware rounds them: exact in f64, one rounding to fp16.
fn hsub(a: f16, b: f16) -> f16 {
    f16::from_f64(a.to_f64() - b.to_f64())
}
fn hmul(a: f16, b: f16) -> f16 {
    f16::from_f64(a.to_f64() * b.to_f64())
}
fn hfma(a: f16, b: f16, c: f16) -> f16 {
    f16::from_f64(a.to_f64() * b.to_f64() + c.to_f64())
}

/// `gemm::dequant_word`, bit for bit.
pub fn dequant_word(w: u32, scale: f16, zlo: f16, zhi_neg: f16) -> [u32; 4] {
    const MAGIC: u32 = 0x6400_6400;
    const LO: u32 = 0x000f_000f;
    const HI: u32 = 0x00f0_00f0;
    let sixteenth = f16::from_bits(0x2c00);
    let w8 = w >> 8;
    let lo = |v: u32| h2((v & LO) | MAGIC).map(|h| hsub(h, zlo));
    let hi = |v: u32| h2((v & HI) | MAGIC).map(|h| hfma(h, sixteenth, zhi_neg));
    [lo(w), hi(w), lo(w8), hi(w8)].map(|pr| u2(pr.map(|h| hmul(h, scale))))
}

/// ldmatrix.x4: lane l supplies `addr[l]` (byte offset of an 8-halves row); matrix j is rows given by
/// lanes 8j..8j+7; lane l receives in r[j] matrix j's row l/4, halves 2(l%4), 2(l%4)+1.
fn ldmatrix_x4(st: &[u8], addr: &[usize; 32]) -> [[u32; 4]; 32] {
    let mut out = [[0u32; 4]; 32];
    for (l, o) in out.iter_mut().enumerate() {
        for (j, r) in o.iter_mut().enumerate() {
            let row_addr = addr[8 * j + l / 4];
            *r = rd32(st, row_addr + 4 * (l % 4));
        }
    }
    out
}

/// mma.m16n8k16 f32 += f16 * f16 from per-lane fragments (PTX fragment tables), per lane result.
fn mma(c: &mut [[f32; 4]; 32], a: &[[u32; 4]; 32], b: &[[u32; 2]; 32]) {
    let mut am = [[0f32; 16]; 16];
    let mut bm = [[0f32; 8]; 16];
    for l in 0..32 {
        let (g, t) = (l / 4, l % 4);
        for (ri, &reg) in a[l].iter().enumerate() {
            let hv = h2(reg);
            // a0a1: row g, col 2t; a2a3: row g+8; a4a5: col +8; a6a7: row g+8, col +8.
            let row = g + 8 * (ri % 2);
            let col = 2 * t + 8 * (ri / 2);
            am[row][col] = hv[0].to_f32();
            am[row][col + 1] = hv[1].to_f32();
        }
        for (ri, &reg) in b[l].iter().enumerate() {
            let hv = h2(reg);
            bm[2 * t + 8 * ri][g] = hv[0].to_f32();
            bm[2 * t + 8 * ri + 1][g] = hv[1].to_f32();
        }
    }
    for (l, cl) in c.iter_mut().enumerate() {
        let (g, t) = (l / 4, l % 4);
        for (i, v) in cl.iter_mut().enumerate() {
            let (row, col) = (g + 8 * (i / 2), 2 * t + (i % 2));
            let mut s = 0f32;
            for (kk, arow) in am[row].iter().enumerate() {
                s += arow * bm[kk][col];
            }
            *v += s;
        }
    }
}

/// Run the kernel over the whole grid. Returns y (fp16 [m, n]) when split_k == 1, else the fp32
/// workspace after all slices (the finish pass is `finish`). Unwritten y stays NaN.
pub fn run(inp: &Inputs) -> (Vec<f16>, Vec<f32>) {
    let p = &inp.p;
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let mt = m.div_ceil(16);
    let stage_bytes = A_OFF + 16 * mt * APITCH * 2;
    let stages = abi::LAB_GEMM_V2_STAGES as usize;
    let mut y = vec![f16::NAN; m * n];
    let mut ws = vec![0f32; m * n];
    for bz in 0..p.split_k as usize {
        for bx in 0..n.div_ceil(BN) {
            let n0 = bx * BN;
            let k_begin = bz * p.k_slice as usize;
            let k_end = k.min(k_begin + p.k_slice as usize);
            let iters = (k_end - k_begin).div_ceil(BK);
            // Poison smem: the kernel must never read a byte it did not write (NaN propagates).
            let mut smem = vec![0xFFu8; stages * stage_bytes];
            let mut acc = vec![[[[0f32; 4]; 32]; 4]; WARPS * mt]; // [warp*mt + i][j][lane][r]
            for it in 0..iters {
                let slot = it % stages;
                let st = &mut smem[slot * stage_bytes..(slot + 1) * stage_bytes];
                issue_stage(inp, mt, st, k_begin + it * BK, k_end, n0);
                let st = &smem[slot * stage_bytes..(slot + 1) * stage_bytes];
                for warp in 0..WARPS {
                    if n0 + CN * warp >= n {
                        continue;
                    }
                    for c in 0..CHUNKS {
                        let mut bf = [[[0u32; 4]; 4]; 32]; // [lane][j][4]
                        for (lane, bl) in bf.iter_mut().enumerate() {
                            let g = lane >> 2;
                            let qo = ((c * WARPS + warp) * 32 + lane) * 16;
                            for (j, bj) in bl.iter_mut().enumerate() {
                                let colw = CN * warp + 8 * j + g;
                                let s = f16::from_bits(rd16(st, S_OFF + c * BN * 2 + 2 * colw));
                                let z = if p.zero_mode as u32 == abi::LAB_ZEROS_TRUE {
                                    let zw = rd32(st, Z_OFF + c * (BN / 8) * 4 + 4 * (colw >> 3));
                                    ((zw >> (4 * (colw & 7))) & 15) as i32
                                } else {
                                    abi::LAB_SYM_ZERO as i32
                                };
                                let zlo = f16::from_f32((1024 + z) as f32);
                                let zhn = f16::from_f32(-(64 + z) as f32);
                                *bj = dequant_word(rd32(st, qo + 4 * j), s, zlo, zhn);
                            }
                        }
                        for kk in 0..2 {
                            for i in 0..mt {
                                let mut addr = [0usize; 32];
                                for (lane, a) in addr.iter_mut().enumerate() {
                                    let row = 16 * i + (lane & 15);
                                    let col = CK * c + 16 * kk + (lane >> 4) * 8;
                                    *a = A_OFF + (row * APITCH + col) * 2;
                                }
                                let a = ldmatrix_x4(st, &addr);
                                for j in 0..4 {
                                    let mut b = [[0u32; 2]; 32];
                                    for lane in 0..32 {
                                        b[lane] = [bf[lane][j][2 * kk], bf[lane][j][2 * kk + 1]];
                                    }
                                    mma(&mut acc[warp * mt + i][j], &a, &b);
                                }
                            }
                        }
                    }
                }
            }
            for warp in 0..WARPS {
                if n0 + CN * warp >= n {
                    continue;
                }
                for i in 0..mt {
                    for j in 0..4 {
                        for lane in 0..32 {
                            let (g, t) = (lane >> 2, lane & 3);
                            let col = n0 + CN * warp + 8 * j + 2 * t;
                            for h in 0..2 {
                                let row = 16 * i + g + 8 * h;
                                if row >= m || col >= n {
                                    continue;
                                }
                                let a = &acc[warp * mt + i][j][lane];
                                let (mut v0, mut v1) = (a[2 * h], a[2 * h + 1]);
                                let o = row * n + col;
                                if p.split_k > 1 {
                                    ws[o] += v0;
                                    ws[o + 1] += v1;
                                } else {
                                    if let Some(b) = inp.bias {
                                        v0 += b[col].to_f32();
                                        v1 += b[col + 1].to_f32();
                                    }
                                    y[o] = f16::from_f32(v0);
                                    y[o + 1] = f16::from_f32(v1);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (y, ws)
}

/// `gemm_finish`: y = fp16(workspace + bias).
pub fn finish(ws: &[f32], bias: Option<&[f16]>, n: usize) -> Vec<f16> {
    ws.iter()
        .enumerate()
        .map(|(i, &v)| f16::from_f32(v + bias.map_or(0.0, |b| b[i % n].to_f32())))
        .collect()
}

/// The v1 SIMT kernel (kernels/gemm/v1_simt.cu), thread by thread: `mt` = 16 or 64 rows per block
/// (the plan's choice). Same return convention as `run`.
pub fn run_v1(inp: &Inputs, mt: usize) -> (Vec<f16>, Vec<f32>) {
    const BN1: usize = abi::LAB_GEMM_V1_BN as usize;
    const BK1: usize = abi::LAB_GEMM_V1_BK as usize;
    const T1: usize = abi::LAB_GEMM_V1_THREADS as usize;
    let p = &inp.p;
    let (m, n, k, gs) = (
        p.m as usize,
        p.n as usize,
        p.k as usize,
        p.group_size as usize,
    );
    let (mpt, xp) = (mt / 4, mt + 4);
    let mut y = vec![f16::NAN; m * n];
    let mut ws = vec![0f32; m * n];
    for bz in 0..p.split_k as usize {
        for by in 0..m.div_ceil(mt) {
            for bx in 0..n.div_ceil(BN1) {
                let k_begin = bz * p.k_slice as usize;
                let k_end = k.min(k_begin + p.k_slice as usize);
                let mut acc = vec![0f32; T1 * mpt];
                let mut k0 = k_begin;
                while k0 < k_end {
                    let mut xs = vec![f32::NAN; BK1 * xp];
                    let mut wsh = vec![f32::NAN; BK1 * BN1];
                    for tid in 0..T1 {
                        let (c, rg) = (tid % BN1, tid / BN1);
                        let col = bx * BN1 + c;
                        let kr = k0 + 8 * rg;
                        let mut w = [0f32; 8];
                        if col < n && kr < k_end {
                            let q = inp.qweight[(kr / 8) * n + col];
                            let gi = kr / gs;
                            let sc = inp.scales[gi * n + col].to_f32();
                            let z = if p.zero_mode as u32 == abi::LAB_ZEROS_TRUE {
                                ((inp.qzeros[gi * (n / 8) + col / 8] >> (4 * (col % 8))) & 15)
                                    as i32
                            } else {
                                abi::LAB_SYM_ZERO as i32
                            };
                            for (i, wi) in w.iter_mut().enumerate() {
                                *wi = sc * (((q >> (4 * i)) & 15) as i32 - z) as f32;
                            }
                        }
                        for (i, wi) in w.iter().enumerate() {
                            wsh[(8 * rg + i) * BN1 + c] = *wi;
                        }
                        let mut e = tid;
                        while e < mt * BK1 {
                            let (kk, r) = (e % BK1, e / BK1);
                            let (row, kx) = (by * mt + r, k0 + kk);
                            let mut v = 0f32;
                            if row < m && kx < k_end {
                                let xc = inp.perm.map_or(kx, |pm| pm[kx] as usize);
                                v = inp.x[row * k + xc].to_f32();
                            }
                            xs[kk * xp + r] = v;
                            e += T1;
                        }
                    }
                    for tid in 0..T1 {
                        let (c, rg) = (tid % BN1, tid / BN1);
                        for kk in 0..BK1 {
                            let w = wsh[kk * BN1 + c];
                            for r in 0..mpt {
                                let a = &mut acc[tid * mpt + r];
                                *a = xs[kk * xp + rg * mpt + r].mul_add(w, *a);
                            }
                        }
                    }
                    k0 += BK1;
                }
                for tid in 0..T1 {
                    let (c, rg) = (tid % BN1, tid / BN1);
                    let col = bx * BN1 + c;
                    if col >= n {
                        continue;
                    }
                    let b = inp
                        .bias
                        .filter(|_| p.split_k <= 1)
                        .map_or(0.0, |b| b[col].to_f32());
                    for r in 0..mpt {
                        let row = by * mt + rg * mpt + r;
                        if row >= m {
                            continue;
                        }
                        let o = row * n + col;
                        if p.split_k > 1 {
                            ws[o] += acc[tid * mpt + r];
                        } else {
                            y[o] = f16::from_f32(acc[tid * mpt + r] + b);
                        }
                    }
                }
            }
        }
    }
    (y, ws)
}

/// Random layers and the f64 ground truth, for the emulation tests and gemm.rs's tests.
#[cfg(test)]
pub(crate) mod testdata {
    use crate::gptq::QuantLinear;
    use half::f16;
    use rand::{RngExt, SeedableRng};

    /// A random canonical layer: codes 0..16, scales +-[0.002, 0.02), true zeros 0..16 (or 8 when
    /// symmetric), act-order g_idx = rank(k) / G over a random rank when `act_order`.
    pub fn layer(
        k: usize,
        n: usize,
        group: usize,
        sym: bool,
        act_order: bool,
        bias: bool,
        seed: u64,
    ) -> QuantLinear {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let groups = k.div_ceil(group);
        let qweight = (0..k / 8 * n).map(|_| rng.random::<u32>()).collect();
        let qzeros = (0..groups * n / 8)
            .map(|_| {
                if sym {
                    0x8888_8888
                } else {
                    rng.random::<u32>()
                }
            })
            .collect();
        let scales = (0..groups * n)
            .map(|_| {
                let s: f32 = rng.random_range(0.002..0.02);
                f16::from_f32(if rng.random::<bool>() { s } else { -s })
            })
            .collect();
        let g_idx = act_order.then(|| {
            let mut rank: Vec<usize> = (0..k).collect();
            for i in (1..k).rev() {
                rank.swap(i, rng.random_range(0..=i));
            }
            rank.iter().map(|&r| (r / group) as i32).collect()
        });
        let bias = bias.then(|| {
            (0..n)
                .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                .collect()
        });
        QuantLinear {
            k,
            n,
            group_size: group,
            qweight,
            qzeros,
            scales,
            g_idx,
            bias,
            symmetric: sym,
        }
    }

    pub fn activations(m: usize, k: usize, seed: u64) -> Vec<f16> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        (0..m * k)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
            .collect()
    }

    /// y = x W (+ bias) in f64 (crate::reference) and sum |x||W| per output (for the tolerance).
    pub fn reference(ql: &QuantLinear, x: &[f16], m: usize) -> (Vec<f64>, Vec<f64>) {
        let (k, n) = (ql.k, ql.n);
        let y = crate::reference::gptq_matmul(x, m, ql);
        let w = crate::reference::dequantize(ql);
        let xa: Vec<f64> = x.iter().map(|v| v.to_f64().abs()).collect();
        let wa: Vec<f64> = w.iter().map(|v| v.abs()).collect();
        (y, crate::reference::matmul_f64(&xa, m, k, &wa, n))
    }

    /// Kernel error bound: each weight rounded to fp16 once (2^-11 relative), fp32 accumulation
    /// over K <= 8192 terms (K * 2^-24 <= 2^-11 of sum |x w|), output rounded to fp16 (2^-11 |y|).
    pub const REL_SUM: f64 = 2.0 / 2048.0;
    pub const REL_OUT: f64 = 1.0 / 2048.0;

    /// First failing (index, got, want, bound), or None.
    pub fn first_mismatch(
        got: &[f16],
        want: &[f64],
        mag: &[f64],
    ) -> Option<(usize, f64, f64, f64)> {
        got.iter()
            .zip(want)
            .zip(mag)
            .enumerate()
            .find_map(|(i, ((g, w), mg))| {
                let g = g.to_f64();
                let bound = REL_SUM * mg + REL_OUT * w.abs() + 1e-6;
                (g.is_nan() || (g - w).abs() > bound).then_some((i, g, *w, bound))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;
    use crate::kernels::gemm::{self, VARIANTS};

    use crate::kernels::registry::Variant;

    #[allow(clippy::too_many_arguments)]
    fn check(
        m: usize,
        n: usize,
        k: usize,
        group: usize,
        sym: bool,
        act: bool,
        split: u32,
        bias: bool,
        seed: u64,
    ) {
        for v in VARIANTS {
            check_one(v, m, n, k, group, sym, act, split, bias, seed);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_one(
        v: &Variant,
        m: usize,
        n: usize,
        k: usize,
        group: usize,
        sym: bool,
        act: bool,
        split: u32,
        bias: bool,
        seed: u64,
    ) {
        let ql = layer(k, n, group, sym, act, bias, seed);
        let x = activations(m, k, seed);
        let w = gemm::prepare(v, &ql).unwrap();
        assert_eq!(w.perm.is_some(), act);
        let (split_k, k_slice) = gemm::fit_split(k as u32, gemm::k_step(v), split);
        let p = lab_gemm_params {
            m: m as i32,
            n: n as i32,
            k: k as i32,
            group_size: w.group_size as i32,
            groups: w.groups as i32,
            zero_mode: w.zero_mode,
            split_k,
            k_slice,
            ..Default::default()
        };
        let inp = Inputs {
            p,
            x: &x,
            qweight: &w.qweight,
            qzeros: &w.qzeros,
            scales: &w.scales,
            perm: w.perm.as_deref(),
            bias: w.bias.as_deref(),
        };
        let (y, ws) = match v.layout {
            crate::kernels::registry::Layout::Prepared => run(&inp),
            _ => run_v1(&inp, if m <= 16 { 16 } else { 64 }),
        };
        let y = if split_k > 1 {
            finish(&ws, w.bias.as_deref(), n)
        } else {
            y
        };
        let (want, mag) = reference(&ql, &x, m);
        if let Some((i, g, wv, b)) = first_mismatch(&y, &want, &mag) {
            panic!(
                "{} emulation m={m} n={n} k={k} group={group} sym={sym} act={act} split_k={split_k} \
                 k_slice={k_slice} seed={seed}: y[{}][{}] = {g}, want {wv} (bound {b})",
                v.name,
                i / n,
                i % n
            );
        }
    }

    #[test]
    fn every_m_from_the_matrix() {
        for (s, &m) in [2usize, 3, 4, 8, 15, 16, 17, 32, 33, 64].iter().enumerate() {
            check(m, 64, 128, 32, false, false, 1, false, 100 + s as u64);
        }
    }

    #[test]
    fn group_sizes_and_zero_modes() {
        for (s, &g) in [32usize, 64, 128, 256].iter().enumerate() {
            // 256 = k: per-channel.
            check(5, 96, 256, g, false, false, 1, true, 200 + s as u64);
            check(5, 96, 256, g, true, false, 1, false, 210 + s as u64);
        }
    }

    #[test]
    fn partial_blocks_k_tails_and_split_k() {
        // n = 288: one full 256-column block + one block with a single active warp.
        check(17, 288, 192, 64, false, false, 1, true, 300);
        // n % 32 != 0: the last warp stripe holds 8 (n = 200, 4104-like) or 8 of 32 columns (n = 72).
        check(5, 200, 128, 32, false, false, 1, true, 306);
        check(33, 72, 64, 32, false, true, 2, false, 307);
        // k = 96, 160: last stage half empty (k % 64 == 32); k = 40: padded chunk rows.
        check(4, 64, 96, 32, false, false, 1, false, 301);
        check(33, 64, 160, 32, false, false, 2, false, 302);
        check(3, 32, 40, 40, true, false, 1, false, 303);
        // split-K: 3 and 4 slices, bias applied once in the finish pass.
        check(16, 64, 384, 128, false, false, 3, true, 304);
        check(64, 32, 512, 64, false, false, 4, true, 305);
    }

    #[test]
    fn act_order_through_perm() {
        check(8, 64, 256, 32, false, true, 1, false, 400);
        check(17, 96, 384, 128, false, true, 2, true, 401);
        check(64, 32, 128, 64, true, true, 1, false, 402);
    }

    /// The epilogues round once: y = fp16(fp32 sum + bias) (v2 `__floats2half2_rn(v + bias)`, v1
    /// `__float2half_rn(acc + b)`, split-K `gemm_finish`). Column 0 of row 0 sums to
    /// 1 + 2^-11 (x[0] = 1 and x[64] = 2^-11 against weights 1; row 64 lies in the second K
    /// slice when split), an fp16 tie; + bias 2^-11 it is 1 + 2^-10, an fp16 value. Rounding the
    /// sum first (ties to even: 1.0) and then adding the bias would give 1.0.
    #[test]
    fn the_epilogue_adds_the_bias_before_its_one_rounding() {
        let (m, n, k) = (2usize, 32usize, 128usize);
        let tiny = f16::from_f32(1.0 / 2048.0);
        // Symmetric (zero 8), one per-channel scale of 1: code 9 is weight 1, code 8 weight 0.
        let mut qweight = vec![0x8888_8888u32; k / 8 * n];
        qweight[0] = 0x8888_8889; // row 0, column 0
        qweight[(64 / 8) * n] = 0x8888_8889; // row 64, column 0
        let ql = crate::gptq::QuantLinear {
            k,
            n,
            group_size: k,
            qweight,
            qzeros: vec![0x8888_8888; n / 8],
            scales: vec![f16::ONE; n],
            g_idx: None,
            bias: Some(vec![tiny; n]),
            symmetric: true,
        };
        let mut x = vec![f16::ZERO; m * k];
        x[0] = f16::ONE;
        x[64] = tiny;
        for v in VARIANTS {
            let w = gemm::prepare(v, &ql).unwrap();
            for split in [1u32, 2] {
                let (split_k, k_slice) = gemm::fit_split(k as u32, gemm::k_step(v), split);
                assert_eq!((split_k as u32, k_slice), (split, 128 / split as i32));
                let inp = Inputs {
                    p: lab_gemm_params {
                        m: m as i32,
                        n: n as i32,
                        k: k as i32,
                        group_size: k as i32,
                        groups: 1,
                        zero_mode: w.zero_mode,
                        split_k,
                        k_slice,
                        ..Default::default()
                    },
                    x: &x,
                    qweight: &w.qweight,
                    qzeros: &w.qzeros,
                    scales: &w.scales,
                    perm: None,
                    bias: w.bias.as_deref(),
                };
                let (y, ws) = match v.layout {
                    crate::kernels::registry::Layout::Prepared => run(&inp),
                    _ => run_v1(&inp, 16),
                };
                let y = if split_k > 1 {
                    finish(&ws, w.bias.as_deref(), n)
                } else {
                    y
                };
                let what = format!("{} split {split}", v.name);
                assert_eq!(y[0], f16::from_f32(1.0 + 1.0 / 1024.0), "{what}");
                assert!(y[1..].iter().all(|&o| o == tiny), "{what}: {:?}", &y[1..4]);
            }
        }
    }

    #[test]
    fn dequant_is_exact_before_the_scale() {
        // scale 1: every code minus every zero must come out exact.
        for z in 0..16u32 {
            for q in 0..16u32 {
                let w = q * 0x1111_1111;
                let out = dequant_word(
                    w,
                    f16::ONE,
                    f16::from_f32((1024 + z) as f32),
                    f16::from_f32(-(64.0 + z as f32)),
                );
                for o in out {
                    for h in h2(o) {
                        assert_eq!(h.to_f32(), q as f32 - z as f32, "q={q} z={z}");
                    }
                }
            }
        }
    }
}
