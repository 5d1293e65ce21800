//! One prefill chunk through the model: embedding of the chunk's tokens, then per layer the
//! kernel sequence of the module comment (mod.rs) over all m rows, then the final norm and the
//! lm_head for the rows whose logits are wanted. The linears go through `prefill_linear`
//! (linears.rs); the chunk loop around this is `GpuEngine::prefill` (mod.rs).

use super::linears::RowsOut;
use super::*;
use std::ops::Range;

impl GpuEngine {
    /// add_rmsnorm over `rows` rows: resid[r] += delta[r] (delta 0: none), out[r] = norm(resid[r]).
    fn norm_rows(
        &self,
        delta: u64,
        weight: &CudaSlice<f16>,
        out: u64,
        rows: Range<usize>,
        what: &str,
    ) -> Result<()> {
        let pf = self.pf()?;
        let h = self.cfg.hidden_size;
        let off = rows.start * h;
        let p = abi::lab_llama_norm_params {
            resid: self.r(&pf.bufs.resid) + 4 * off as u64,
            delta: if delta == 0 {
                0
            } else {
                delta + 2 * off as u64
            },
            weight: self.r(weight),
            out: out + 2 * off as u64,
            perm: 0,
            out_perm: 0,
            hidden: h as i32,
            eps: self.cfg.rms_norm_eps as f32,
        };
        self.launch(&self.k.norm, (rows.len() as u32, 1), 512, 0, &p, what)
    }

    /// One chunk: `toks` at positions pos0.. through every layer; the final norm + lm_head for
    /// `head_rows` (copied back into `out` when `copy`, else left in the logits buffer).
    pub(super) fn prefill_chunk_rows(
        &self,
        toks: &[u32],
        pos0: usize,
        head_rows: Range<usize>,
        copy: bool,
        out: &mut Vec<Vec<f32>>,
    ) -> Result<()> {
        let pf = self.pf()?;
        let pb = &pf.bufs;
        let cfg = &self.cfg;
        let m = toks.len();
        let (h, hd, heads, kvh) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let kv_dim = kvh * hd;
        let qkv_w = h + 2 * kv_dim;
        let (inter, max_ctx) = (cfg.intermediate_size, self.opts.max_ctx);
        let ids: Vec<i32> = toks.iter().map(|&t| t as i32).collect();
        self.htod_raw(self.r(&pb.tokens), &ids, "uploading the prompt chunk")?;
        // rope_kv reads the chunk's first position from the state words (row y at pos + y).
        self.htod_raw(
            self.r(&self.b.state) + 4 * abi::LAB_LLAMA_STATE_POS as u64,
            &[pos0 as i32],
            "writing the chunk's position",
        )?;
        let state = self.r(&self.b.state);
        let e = abi::lab_llama_prefill_embed_params {
            table: self.r(&self.weights.embed),
            tokens: self.r(&pb.tokens),
            history: self.r(&self.b.history),
            resid: self.r(&pb.resid),
            state,
            m: m as i32,
            pos0: pos0 as i32,
            hidden: h as i32,
            vocab: cfg.vocab_size as i32,
            max_ctx: max_ctx as i32,
            _pad: 0,
        };
        self.launch(
            &pf.k.embed,
            (h.div_ceil(256) as u32, m as u32),
            256,
            0,
            &e,
            "prefill embedding",
        )?;
        let (x16, qkv, delta) = (self.r(&pb.x16), self.r(&pb.qkv), self.r(&pb.delta));
        let (gate_up, act) = (self.r(&pb.gate_up), self.r(&pb.act));
        let layer_stride = 2 * max_ctx * kv_dim;
        for (li, l) in self.weights.layers.iter().enumerate() {
            let d = if li == 0 { 0 } else { delta };
            self.norm_rows(
                d,
                &l.attn_norm,
                x16,
                0..m,
                &format!("layer {li} prefill input_layernorm"),
            )?;
            for s in &l.qkv {
                self.prefill_linear(
                    &s.lin,
                    x16,
                    m,
                    RowsOut {
                        y: qkv,
                        width: qkv_w,
                        col: s.col,
                    },
                )?;
            }
            let k_cache = self.r(&self.kv) + 2 * (li * layer_stride) as u64;
            let v_cache = k_cache + 2 * (max_ctx * kv_dim) as u64;
            let rp = abi::lab_llama_rope_params {
                qkv,
                k_cache,
                v_cache,
                inv_freq: self.r(&self.b.inv_freq),
                state,
                heads: heads as i32,
                kv_heads: kvh as i32,
                head_dim: hd as i32,
                max_ctx: max_ctx as i32,
            };
            self.launch(
                &self.k.rope,
                ((heads + kvh) as u32, m as u32),
                (hd / 2).max(32) as u32,
                0,
                &rp,
                &format!("layer {li} prefill rope_kv"),
            )?;
            let ap = abi::lab_llama_prefill_attn_params {
                qkv,
                k_cache,
                v_cache,
                out: x16,
                m: m as i32,
                pos0: pos0 as i32,
                heads: heads as i32,
                kv_heads: kvh as i32,
                head_dim: hd as i32,
                max_ctx: max_ctx as i32,
                scale: (1.0 / (hd as f64).sqrt()) as f32,
                _pad: 0,
            };
            let qt = abi::LAB_LLAMA_PREFILL_ATTN_QT as usize;
            self.launch(
                &pf.k.attn,
                (heads as u32, m.div_ceil(qt) as u32),
                abi::LAB_LLAMA_PREFILL_ATTN_THREADS,
                attn_smem_bytes(hd) as u32,
                &ap,
                &format!("layer {li} prefill attention"),
            )?;
            self.prefill_linear(
                &l.o,
                x16,
                m,
                RowsOut {
                    y: delta,
                    width: h,
                    col: 0,
                },
            )?;
            self.norm_rows(
                delta,
                &l.ffn_norm,
                x16,
                0..m,
                &format!("layer {li} prefill post_attention_layernorm"),
            )?;
            for s in &l.gate_up {
                self.prefill_linear(
                    &s.lin,
                    x16,
                    m,
                    RowsOut {
                        y: gate_up,
                        width: 2 * inter,
                        col: s.col,
                    },
                )?;
            }
            let sp = abi::lab_llama_silu_params {
                gate_up,
                out: act,
                perm: 0,
                out_perm: 0,
                inter: inter as i32,
                _pad: 0,
            };
            self.launch(
                &self.k.silu,
                (inter.div_ceil(256) as u32, m as u32),
                256,
                0,
                &sp,
                &format!("layer {li} prefill silu_mul"),
            )?;
            self.prefill_linear(
                &l.down,
                act,
                m,
                RowsOut {
                    y: delta,
                    width: h,
                    col: 0,
                },
            )?;
        }
        if head_rows.is_empty() {
            return Ok(());
        }
        self.norm_rows(
            delta,
            &self.weights.final_norm,
            x16,
            head_rows.clone(),
            "prefill final norm",
        )?;
        for r in head_rows {
            self.gemv_f16(
                self.r(&self.weights.lm_head),
                x16 + 2 * (r * h) as u64,
                0,
                self.r(&self.b.logits),
                cfg.vocab_size,
                h,
                "prefill lm_head",
            )?;
            if copy {
                out.push(self.logits()?);
            }
        }
        Ok(())
    }
}
