//! CPU mirrors of the prefill kernels' index math (kernels/llama/prefill.cu), loop for loop, so a
//! layout or masking mistake shows up in `cargo test` without a GPU.

/// lab_llama_repack_v2, one prepared word per iteration of the grid-stride loop.
pub fn repack_v2(src: &[u32], k: usize, n: usize) -> Vec<u32> {
    let words = crate::kernels::gemm_layout::prepared_words(k, n);
    let n_chunks = n.div_ceil(32);
    let mut dst = vec![0u32; words];
    for (w, d) in dst.iter_mut().enumerate() {
        let (j, lane, chunk) = (w & 3, (w >> 2) & 31, w >> 7);
        let (nc, kc) = (chunk % n_chunks, chunk / n_chunks);
        let (g, t) = (lane >> 2, lane & 3);
        let col = 32 * nc + 8 * j + g;
        let mut out = 0u32;
        if col < n {
            for pp in 0..4 {
                let row = 32 * kc + 16 * (pp / 2) + 8 * (pp % 2) + 2 * t;
                if row < k {
                    let word = src[(row / 8) * n + col];
                    let sh = 4 * (row % 8);
                    out |= ((word >> sh) & 0xF) << (4 * pp);
                    out |= ((word >> (sh + 4)) & 0xF) << (4 * (pp + 4));
                }
            }
        }
        *d = out;
    }
    dst
}

/// Shapes of one prefill attention call.
#[derive(Clone, Copy)]
pub struct Attn {
    pub m: usize,
    pub pos0: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
}

/// lab_llama_prefill_attn: blocks (head, 16-query tile), 32-key tiles, f32 online softmax.
/// qkv [m][heads*hd + 2 kv_dim], caches [>= pos0 + m][kv_dim]; returns out [m][heads*hd].
pub fn prefill_attn(a: Attn, qkv: &[f32], kc: &[f32], vc: &[f32]) -> Vec<f32> {
    const QT: usize = 16;
    const KT: usize = 32;
    let (hd, kv_dim) = (a.hd, a.kv_heads * a.hd);
    let row_w = a.heads * hd + 2 * kv_dim;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; a.m * a.heads * hd];
    for head in 0..a.heads {
        let kvh = head / (a.heads / a.kv_heads);
        for q0 in (0..a.m).step_by(QT) {
            let nq = QT.min(a.m - q0);
            let (mut mrow, mut lrow) = ([f32::NEG_INFINITY; QT], [0f32; QT]);
            let mut acc = vec![0f32; QT * hd];
            let n_keys = a.pos0 + q0 + nq;
            for k0 in (0..n_keys).step_by(KT) {
                let mut s = [[f32::NEG_INFINITY; KT]; QT];
                for (i, si) in s.iter_mut().enumerate() {
                    for (j, sij) in si.iter_mut().enumerate() {
                        let key = k0 + j;
                        if i < nq && key < n_keys && key <= a.pos0 + q0 + i {
                            let q = &qkv[(q0 + i) * row_w + head * hd..][..hd];
                            let kr = &kc[key * kv_dim + kvh * hd..][..hd];
                            let d: f32 = q.iter().zip(kr).map(|(x, y)| x * y).sum();
                            *sij = d * scale;
                        }
                    }
                }
                for i in 0..QT {
                    let mx = s[i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let m_new = mrow[i].max(mx);
                    let alpha = if mrow[i] == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (mrow[i] - m_new).exp()
                    };
                    let mut sum = 0f32;
                    for sij in s[i].iter_mut() {
                        *sij = if m_new == f32::NEG_INFINITY {
                            0.0
                        } else {
                            (*sij - m_new).exp()
                        };
                        sum += *sij;
                    }
                    mrow[i] = m_new;
                    lrow[i] = lrow[i] * alpha + sum;
                    for d in 0..hd {
                        let mut o = acc[i * hd + d] * alpha;
                        for (j, p) in s[i].iter().enumerate() {
                            let key = k0 + j;
                            let v = if key < n_keys {
                                vc[key * kv_dim + kvh * hd + d]
                            } else {
                                0.0
                            };
                            o += p * v;
                        }
                        acc[i * hd + d] = o;
                    }
                }
            }
            for i in 0..nq {
                for d in 0..hd {
                    out[(q0 + i) * a.heads * hd + head * hd + d] = if lrow[i] > 0.0 {
                        acc[i * hd + d] / lrow[i]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
    out
}

/// lab_dequant_f16_v1 (kernels/gemv/gemv_dequant.cu), thread for thread: one packed word (8 rows
/// x 1 column) per (blockIdx.y, column), row r's value stored at row perm[r] when a permutation
/// is given (act-order held reordered). Returns the fp16 [k, n] buffer.
pub fn dequant_f16(l: &crate::gptq::QuantLinear, perm: Option<&[i32]>) -> Vec<half::f16> {
    dequant_f16_cols(l, perm, 0..l.n)
}

/// The kernel on a column slice, with the launch's pointer arithmetic (linears.rs dequant_f16):
/// qweight, scales and qzeros offset to column `cols.start` (qzeros by start / 8 words), n = the
/// slice's width, ld_w = the layer's n. Returns the fp16 [k, cols.len()] buffer.
pub fn dequant_f16_cols(
    l: &crate::gptq::QuantLinear,
    perm: Option<&[i32]>,
    cols: std::ops::Range<usize>,
) -> Vec<half::f16> {
    use half::f16;
    let (k, ld, c0) = (l.k, l.n, cols.start);
    let n = cols.len();
    // The offset "pointers".
    let qweight = &l.qweight[c0..];
    let scales = &l.scales[c0..];
    let qzeros = &l.qzeros[c0 / 8..];
    let mut out = vec![f16::from_f32(f32::NAN); k * n];
    for w in 0..k / 8 {
        for col in 0..n {
            let word = qweight[w * ld + col];
            for i in 0..8 {
                let r = 8 * w + i;
                let g = l.g_idx.as_ref().map_or(r / l.group_size, |g| g[r] as usize);
                let q = ((word >> (4 * i)) & 0xF) as i32;
                let z = if l.symmetric {
                    8
                } else {
                    ((qzeros[g * (ld / 8) + col / 8] >> (4 * (col % 8))) & 0xF) as i32
                };
                let dst = perm.map_or(r, |p| p[r] as usize);
                let v = scales[g * ld + col].to_f32() * (q - z) as f32;
                out[dst * n + col] = f16::from_f32(v);
            }
        }
    }
    out
}
