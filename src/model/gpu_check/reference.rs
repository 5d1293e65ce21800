//! The f64 reference of the GPU check: HF LLaMA's math (RMSNorm, rotate-half RoPE, GQA softmax
//! attention, SwiGLU) over dense f64 weights, written independently of the kernels, and the
//! op-local references of one traced step (each op applied to the GPU's own input to it).

use crate::model::config::ModelConfig;
use crate::model::gpu_engine::TraceEntry;
use crate::model::gpu_weights::HostLlama;

/// f64 dense weights for the reference.
pub(super) struct RefWeights {
    embed: Vec<f64>,
    lm_head: Vec<f64>,
    final_norm: Vec<f64>,
    layers: Vec<RefLayer>,
}

struct RefLayer {
    attn_norm: Vec<f64>,
    ffn_norm: Vec<f64>,
    /// W [k, n] row-major: q|k|v fused along n, o, gate|up fused, down.
    qkv: (usize, Vec<f64>),
    o: (usize, Vec<f64>),
    gate_up: (usize, Vec<f64>),
    down: (usize, Vec<f64>),
}

fn cat_cols(parts: &[(usize, usize, Vec<f64>)]) -> (usize, Vec<f64>) {
    let k = parts[0].0;
    let n: usize = parts.iter().map(|p| p.1).sum();
    let mut w = vec![0f64; k * n];
    let mut c0 = 0;
    for (_, pn, pw) in parts {
        for r in 0..k {
            w[r * n + c0..r * n + c0 + pn].copy_from_slice(&pw[r * pn..(r + 1) * pn]);
        }
        c0 += pn;
    }
    (n, w)
}

impl RefWeights {
    pub(super) fn new(w: &HostLlama) -> Self {
        let f = |v: &[half::f16]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        let layers = w
            .layers
            .iter()
            .map(|l| {
                let d: Vec<(usize, usize, Vec<f64>)> = l
                    .linears
                    .iter()
                    .map(|lin| {
                        let (k, n) = lin.kn();
                        (k, n, lin.dense_kn())
                    })
                    .collect();
                RefLayer {
                    attn_norm: f(&l.attn_norm),
                    ffn_norm: f(&l.ffn_norm),
                    qkv: cat_cols(&d[0..3]),
                    o: (d[3].1, d[3].2.clone()),
                    gate_up: cat_cols(&d[4..6]),
                    down: (d[6].1, d[6].2.clone()),
                }
            })
            .collect();
        RefWeights {
            embed: f(&w.embed),
            lm_head: f(&w.lm_head),
            final_norm: f(&w.final_norm),
            layers,
        }
    }
}

fn matvec(x: &[f64], (n, w): &(usize, Vec<f64>)) -> Vec<f64> {
    let mut y = vec![0f64; *n];
    for (r, &xv) in x.iter().enumerate() {
        for (yc, &wv) in y.iter_mut().zip(&w[r * n..(r + 1) * n]) {
            *yc += xv * wv;
        }
    }
    y
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * inv * g).collect()
}

/// HF rotate-half RoPE on every head of `x` (heads of `hd`), in place; linear scaling divides
/// the position (transformers' LlamaLinearScalingRotaryEmbedding), computed here apart from the
/// engines' inv_freq table.
pub(super) fn rope(x: &mut [f64], hd: usize, pos: usize, theta: f64, linear_factor: f64) {
    let pos = pos as f64 / linear_factor;
    for head in x.chunks_exact_mut(hd) {
        for i in 0..hd / 2 {
            let a = pos * theta.powf(-((2 * i) as f64) / hd as f64);
            let (s, c) = a.sin_cos();
            let (x0, x1) = (head[i], head[i + hd / 2]);
            head[i] = x0 * c - x1 * s;
            head[i + hd / 2] = x1 * c + x0 * s;
        }
    }
}

/// Softmax attention of q [heads*hd] over cached k, v rows [len][kv_dim].
fn attention(cfg: &ModelConfig, q: &[f64], ks: &[Vec<f64>], vs: &[Vec<f64>]) -> Vec<f64> {
    let (heads, kvh, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim(),
    );
    let mut out = vec![0f64; heads * hd];
    for h in 0..heads {
        let kh = h / (heads / kvh);
        let qh = &q[h * hd..(h + 1) * hd];
        let s: Vec<f64> = ks
            .iter()
            .map(|k| {
                qh.iter()
                    .zip(&k[kh * hd..(kh + 1) * hd])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for (p, v) in vs.iter().enumerate() {
            for d in 0..hd {
                out[h * hd + d] += e[p] / z * v[kh * hd + d];
            }
        }
    }
    out
}

fn silu_mul(gu: &[f64]) -> Vec<f64> {
    let i = gu.len() / 2;
    (0..i)
        .map(|j| gu[j] / (1.0 + (-gu[j]).exp()) * gu[i + j])
        .collect()
}

fn lm_head(w: &RefWeights, x: &[f64]) -> Vec<f64> {
    // Rows of hidden = final_norm.len() (x may be a missing trace entry: then all zeros).
    w.lm_head
        .chunks_exact(w.final_norm.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

/// An independent f64 forward pass with a KV cache.
pub(super) struct RefModel<'a> {
    pub(super) cfg: &'a ModelConfig,
    pub(super) w: &'a RefWeights,
    pub(super) cache: KvHist,
}

/// Per layer: cached k rows and v rows.
type KvHist = Vec<(Vec<Vec<f64>>, Vec<Vec<f64>>)>;
/// (layer, op, reference output) in execution order.
type OpRef = (Option<usize>, &'static str, Vec<f64>);

/// `r > limit`, with NaN counted as exceeding (a NaN ratio is a failure, never a pass).
pub(super) fn exceeds(r: f64, limit: f64) -> bool {
    r.is_nan() || r > limit
}

impl RefModel<'_> {
    pub(super) fn step(&mut self, token: u32) -> Vec<f64> {
        let cfg = self.cfg;
        let (h, hd, heads, kv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads * cfg.head_dim(),
        );
        let pos = self.cache[0].0.len();
        let mut x: Vec<f64> = self.w.embed[token as usize * h..(token as usize + 1) * h].to_vec();
        for (l, (kc, vc)) in self.w.layers.iter().zip(self.cache.iter_mut()) {
            let mut qkv = matvec(&rms_norm(&x, &l.attn_norm, cfg.rms_norm_eps), &l.qkv);
            rope(
                &mut qkv[..heads * hd + kv],
                hd,
                pos,
                cfg.rope_theta,
                cfg.rope_linear_factor,
            );
            kc.push(qkv[heads * hd..heads * hd + kv].to_vec());
            vc.push(qkv[heads * hd + kv..].to_vec());
            let a = attention(cfg, &qkv[..heads * hd], kc, vc);
            for (xi, oi) in x.iter_mut().zip(matvec(&a, &l.o)) {
                *xi += oi;
            }
            let act = silu_mul(&matvec(
                &rms_norm(&x, &l.ffn_norm, cfg.rms_norm_eps),
                &l.gate_up,
            ));
            for (xi, di) in x.iter_mut().zip(matvec(&act, &l.down)) {
                *xi += di;
            }
        }
        lm_head(self.w, &rms_norm(&x, &self.w.final_norm, cfg.rms_norm_eps))
    }
}

pub(super) fn get<'a>(t: &'a [TraceEntry], layer: Option<usize>, op: &str) -> &'a [f32] {
    t.iter()
        .find(|e| e.layer == layer && e.op == op)
        .map_or(&[], |e| &e.values)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Op-local references for one traced step, in execution order: (layer, op, reference).
pub(super) fn op_refs(
    cfg: &ModelConfig,
    w: &RefWeights,
    t: &[TraceEntry],
    token: u32,
    pos: usize,
    kv_hist: &mut KvHist,
) -> Vec<OpRef> {
    let (h, hd, heads, kv) = (
        cfg.hidden_size,
        cfg.head_dim(),
        cfg.num_attention_heads,
        cfg.num_key_value_heads * cfg.head_dim(),
    );
    let eps = cfg.rms_norm_eps;
    let mut out = Vec::new();
    out.push((
        None,
        "embedding",
        w.embed[token as usize * h..(token as usize + 1) * h].to_vec(),
    ));
    let mut resid = f64s(get(t, None, "embedding"));
    for (li, l) in w.layers.iter().enumerate() {
        let ly = Some(li);
        if li > 0 {
            let down = f64s(get(t, Some(li - 1), "down_proj"));
            resid = f64s(get(t, Some(li - 1), "residual_attn"))
                .iter()
                .zip(&down)
                .map(|(a, b)| a + b)
                .collect();
        }
        out.push((ly, "attn_norm", rms_norm(&resid, &l.attn_norm, eps)));
        out.push((
            ly,
            "qkv_proj",
            matvec(&f64s(get(t, ly, "attn_norm")), &l.qkv),
        ));
        let mut r = f64s(get(t, ly, "qkv_proj"));
        if r.len() == heads * hd + 2 * kv {
            rope(
                &mut r[..heads * hd + kv],
                hd,
                pos,
                cfg.rope_theta,
                cfg.rope_linear_factor,
            );
        }
        out.push((ly, "rope", r));
        let rot = f64s(get(t, ly, "rope"));
        if rot.len() == heads * hd + 2 * kv {
            kv_hist[li]
                .0
                .push(rot[heads * hd..heads * hd + kv].to_vec());
            kv_hist[li].1.push(rot[heads * hd + kv..].to_vec());
            out.push((
                ly,
                "attention",
                attention(cfg, &rot[..heads * hd], &kv_hist[li].0, &kv_hist[li].1),
            ));
        }
        out.push((ly, "o_proj", matvec(&f64s(get(t, ly, "attention")), &l.o)));
        let o = f64s(get(t, ly, "o_proj"));
        let ra: Vec<f64> = resid.iter().zip(&o).map(|(a, b)| a + b).collect();
        out.push((ly, "ffn_norm", rms_norm(&ra, &l.ffn_norm, eps)));
        out.push((ly, "residual_attn", ra));
        out.push((
            ly,
            "gate_up_proj",
            matvec(&f64s(get(t, ly, "ffn_norm")), &l.gate_up),
        ));
        out.push((ly, "silu_mul", silu_mul(&f64s(get(t, ly, "gate_up_proj")))));
        out.push((
            ly,
            "down_proj",
            matvec(&f64s(get(t, ly, "silu_mul")), &l.down),
        ));
    }
    let last = w.layers.len() - 1;
    let rf: Vec<f64> = f64s(get(t, Some(last), "residual_attn"))
        .iter()
        .zip(f64s(get(t, Some(last), "down_proj")))
        .map(|(a, b)| a + b)
        .collect();
    out.push((None, "final_norm", rms_norm(&rf, &w.final_norm, eps)));
    out.push((None, "residual_final", rf));
    out.push((
        None,
        "lm_head",
        lm_head(w, &f64s(get(t, None, "final_norm"))),
    ));
    out
}

pub(super) fn argmax(v: &[f64]) -> (usize, f64) {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    let margin = if v.len() > 1 {
        v[order[0]] - v[order[1]]
    } else {
        f64::INFINITY
    };
    (order[0], margin)
}
