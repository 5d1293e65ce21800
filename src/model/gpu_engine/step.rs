//! One decode step: its launches in order (`enqueue_step_ops`), how each is launched (plain, PDL,
//! cooperative, as clusters; the poisoned-smem pass), the attention's and the norm's parameters,
//! the token choice, and the capture of the step as a CUDA graph.

use super::linears::XInput;
use super::persistent::LaunchKind;
use super::{free_now, is_capture_refusal, GpuEngine, TraceEntry};
use crate::error::DriverCtx;
use crate::kernels::abi;
use crate::model::sampler::Sampling;
use crate::{LabError, Result};
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

/// Dynamic shared memory of lab_llama_attn_split's body (attention.cuh) for head dim `hd` and
/// `chunk` positions per split: q [hd] | scores [chunk] | V partials [256 / (hd / 8) groups][hd],
/// f32. The separate attention kernel and the persistent layers launch with it.
pub(super) fn attn_split_smem(hd: usize, chunk: usize) -> u32 {
    let groups = 256 / (hd / 8);
    ((hd + chunk + groups * hd) * 4) as u32
}

/// An event recorded after one op of a profiled step, with the bytes the engine had counted.
pub(super) struct ProfileMark {
    pub(super) op: &'static str,
    pub(super) event: CudaEvent,
    pub(super) streamed: u64,
}

impl GpuEngine {
    /// One engine kernel launch of `grid` x `block` threads: plain, or inside a decode step with
    /// PDL on, with programmatic stream serialization allowed.
    pub(super) fn launch<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        p: &P,
        what: &str,
    ) -> Result<()> {
        self.launch_as(f, grid, block, smem, p, self.step_kind(), what)
    }

    /// A step's kernel that is not a GEMV (embedding, norms, attention, silu, argmax, sampler):
    /// as `launch`, but plain while `small_ops_plain` is set, even in a PDL step.
    fn launch_op<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        p: &P,
        what: &str,
    ) -> Result<()> {
        let kind = if self.small_ops_plain {
            LaunchKind::Plain
        } else {
            self.step_kind()
        };
        self.launch_as(f, grid, block, smem, p, kind, what)
    }

    /// `launch` and `launch_op`'s one body: the config, then `launch_ex` as `kind`.
    #[allow(clippy::too_many_arguments)]
    fn launch_as<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        p: &P,
        kind: LaunchKind,
        what: &str,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: every params struct carries device addresses of live buffers owned by `self`
        // with the sizes the kernel's top comment requires; shapes were checked at construction.
        unsafe { self.launch_ex(f, cfg, p, kind, 1) }.ctx(what)
    }

    /// Plain, or PDL inside a decode step with PDL on.
    pub(super) fn step_kind(&self) -> LaunchKind {
        if self.step_pdl.get() {
            LaunchKind::Pdl
        } else {
            LaunchKind::Plain
        }
    }

    /// One launch of `kind`, as clusters of (1, `cluster_y`, 1) blocks when `cluster_y` > 1
    /// (gemv_v9_cluster's split-K slices of a tile): plain through the launch builder, anything
    /// else through cuLaunchKernelEx with its attributes (PDL or cooperative, and the cluster
    /// dimension).
    ///
    /// # Safety
    /// As any kernel launch: `p` must be the params struct `f` expects, pointing at live buffers;
    /// a cooperative grid must fit the device at once (the driver refuses it
    /// otherwise); cluster dims must divide the grid on an sm_90 device.
    pub(super) unsafe fn launch_ex<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        p: &P,
        kind: LaunchKind,
        cluster_y: u32,
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        use cudarc::driver::sys;
        // At most two attributes (the kind's, a cluster's): on the stack, as every eager launch
        // of a PDL step comes here.
        let mut attrs: [sys::CUlaunchAttribute; 2] = std::mem::zeroed();
        let mut n = 0;
        match kind {
            LaunchKind::Plain => {
                if self.poison_smem > 0 {
                    let pp = abi::lab_llama_poison_params {
                        pattern: abi::LAB_LLAMA_POISON_PATTERN,
                        words: self.poison_smem / 4,
                    };
                    let poison = LaunchConfig {
                        grid_dim: (8 * self.dev.sms, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: self.poison_smem,
                    };
                    self.stream
                        .launch_builder(&self.k.poison)
                        .arg(&pp)
                        .launch(poison)?;
                }
                if cluster_y <= 1 {
                    return self.stream.launch_builder(f).arg(p).launch(cfg).map(|_| ());
                }
            }
            LaunchKind::Pdl => {
                let mut a: sys::CUlaunchAttribute = std::mem::zeroed();
                a.id =
                    sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                a.value.programmaticStreamSerializationAllowed = 1;
                attrs[n] = a;
                n += 1;
            }
            LaunchKind::Cooperative => {
                let mut a: sys::CUlaunchAttribute = std::mem::zeroed();
                a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                a.value.cooperative = 1;
                attrs[n] = a;
                n += 1;
            }
        }
        if cluster_y > 1 {
            attrs[n] = crate::cuda::cluster_dim_attribute(cluster_y);
            n += 1;
        }
        crate::cuda::launch_with_attributes(&self.ctx, &self.stream, f, cfg, p, &mut attrs[..n])
    }

    /// The attention of layer `li` (RoPE, KV append, split, combine): lab_llama_attn_split's
    /// params, also the persistent layers' (which take each layer's cache rows from its descriptor).
    pub(super) fn attn_params(&self, li: usize) -> abi::lab_llama_attn_params {
        let cfg = &self.cfg;
        let (hd, heads, kvh) = (
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let (kv_dim, max_ctx) = (kvh * hd, self.opts.max_ctx);
        let k_cache = self.r(&self.kv) + 2 * (li * 2 * max_ctx * kv_dim) as u64;
        let b = &self.b;
        abi::lab_llama_attn_params {
            qkv: self.r(&b.qkv),
            k_cache,
            v_cache: k_cache + 2 * (max_ctx * kv_dim) as u64,
            partial: self.r(&b.partial),
            out: self.r(&b.attn),
            state: self.r(&b.state),
            tickets: self.r(&b.attn_tickets),
            inv_freq: self.r(&b.inv_freq),
            q_rot: self.r(&b.q_rot),
            heads: heads as i32,
            kv_heads: kvh as i32,
            head_dim: hd as i32,
            max_ctx: max_ctx as i32,
            chunk: self.opts.attn_chunk as i32,
            n_splits: self.n_splits as i32,
            scale: (1.0 / (hd as f64).sqrt()) as f32,
            prefetch_kv: self.opts.attn_prefetch_kv as i32,
        }
    }

    /// add + RMSNorm into xn; with `perm` (a device i32 [hidden], or 0) also xn_p[j] =
    /// xn[perm[j]] for a consumer on permuted x.
    fn norm(&self, delta: u64, weight: &CudaSlice<f16>, perm: u64, what: &str) -> Result<()> {
        let p = abi::lab_llama_norm_params {
            resid: self.r(&self.b.resid),
            delta,
            weight: self.r(weight),
            out: self.r(&self.b.xn),
            perm,
            out_perm: if perm == 0 { 0 } else { self.r(&self.b.xn_p) },
            hidden: self.cfg.hidden_size as i32,
            eps: self.cfg.rms_norm_eps as f32,
        };
        self.launch_op(&self.k.norm, (1, 1), 512, 0, &p, what)
    }

    /// Enqueue one decode step. With `trace`, synchronize after every op and keep its output;
    /// with `marks`, record an event after every op (the per-op profile).
    pub(super) fn enqueue_step(
        &self,
        trace: Option<&mut Vec<TraceEntry>>,
        marks: Option<&mut Vec<ProfileMark>>,
    ) -> Result<()> {
        // PDL only for the step's own launches, and not while tracing (the trace synchronizes
        // after every op anyway).
        self.step_pdl.set(self.pdl_in_effect() && trace.is_none());
        let r = self.enqueue_step_ops(trace, marks);
        self.step_pdl.set(false);
        r
    }

    fn enqueue_step_ops(
        &self,
        mut trace: Option<&mut Vec<TraceEntry>>,
        mut marks: Option<&mut Vec<ProfileMark>>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (h, hd, heads, kvh) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let kv_dim = kvh * hd;
        let (inter, vocab, max_ctx) = (cfg.intermediate_size, cfg.vocab_size, self.opts.max_ctx);
        let b = &self.b;
        let state = self.r(&b.state);
        let tracing = trace.is_some();
        let mut keep = |layer: Option<usize>, op: &'static str, v: Vec<f32>| -> Result<()> {
            if let Some(t) = trace.as_deref_mut() {
                t.push(TraceEntry {
                    layer,
                    op,
                    values: v,
                });
            }
            if let Some(m) = marks.as_deref_mut() {
                self.mark(m, op)?;
            }
            Ok(())
        };
        let snap16 = |s: &CudaSlice<f16>| -> Result<Vec<f32>> {
            if !tracing {
                return Ok(Vec::new());
            }
            let v = self.stream.clone_dtoh(s).ctx("debug trace copy")?;
            Ok(v.into_iter().map(|x| x.to_f32()).collect())
        };
        let snap32 = |s: &CudaSlice<f32>| -> Result<Vec<f32>> {
            if !tracing {
                return Ok(Vec::new());
            }
            self.stream.clone_dtoh(s).ctx("debug trace copy")
        };

        let e = abi::lab_llama_embed_params {
            table: self.r(&self.weights.embed),
            state,
            history: self.r(&b.history),
            resid: self.r(&b.resid),
            hidden: h as i32,
            vocab: vocab as i32,
            max_ctx: max_ctx as i32,
            _pad: 0,
        };
        self.launch_op(
            &self.k.embed,
            (h.div_ceil(256) as u32, 1),
            256,
            0,
            &e,
            "embedding",
        )?;
        keep(None, "embedding", snap32(&b.resid)?)?;

        let layer_stride = 2 * max_ctx * kv_dim;
        // The rotated q and the cache row the attention kernel appended: what the standalone
        // rope kernel used to leave in qkv (the trace's "rope" op, checked against RoPE in f64).
        let rope_trace = |li: usize| -> Result<Vec<f32>> {
            if !tracing {
                return Ok(Vec::new());
            }
            let mut v = snap16(&b.q_rot)?;
            let row = li * layer_stride + self.pos.min(max_ctx - 1) * kv_dim;
            for off in [row, row + max_ctx * kv_dim] {
                let part = self
                    .stream
                    .clone_dtoh(&self.kv.slice(off..off + kv_dim))
                    .ctx("debug trace copy")?;
                v.extend(part.into_iter().map(|x| x.to_f32()));
            }
            Ok(v)
        };
        // Persistent layers: one launch for all of them; a trace runs them one layer per launch
        // and reads the same ops as the launch-per-op step from the kernel's trace outputs.
        let persistent = self.persistent_active();
        if let (Some(p), false) = (persistent, tracing) {
            self.launch_persistent(p, 0, self.weights.layers.len(), false)?;
            keep(None, "decode_layers", Vec::new())?;
        }
        for (li, l) in self.weights.layers.iter().enumerate() {
            if let Some(p) = persistent {
                if !tracing {
                    break;
                }
                self.launch_persistent(p, li, li + 1, true)?;
                let (ffn_norm, resid_attn) = Self::persistent_trace_bufs(p);
                keep(Some(li), "attn_norm", snap16(&b.xn)?)?;
                keep(Some(li), "qkv_proj", snap16(&b.qkv)?)?;
                keep(Some(li), "rope", rope_trace(li)?)?;
                keep(Some(li), "attention", snap16(&b.attn)?)?;
                keep(Some(li), "o_proj", snap16(&b.o)?)?;
                keep(Some(li), "residual_attn", snap32(resid_attn)?)?;
                keep(Some(li), "ffn_norm", snap16(ffn_norm)?)?;
                keep(Some(li), "gate_up_proj", snap16(&b.gate_up)?)?;
                keep(Some(li), "silu_mul", snap16(&b.act)?)?;
                keep(Some(li), "down_proj", snap16(&b.down)?)?;
                continue;
            }
            let delta = if li == 0 { 0 } else { self.r(&b.down) };
            let px = self.px_active(li);
            // Permuted-x consumers (act_order_plain): the producer also writes their sorted copy.
            let (qkv_perm, qkv_x) = self.norm_for(px.qkv, &l.qkv[0].lin);
            let skip = self.skip;
            if !skip.norms {
                self.norm(
                    delta,
                    &l.attn_norm,
                    qkv_perm,
                    &format!("layer {li} input_layernorm"),
                )?;
            }
            keep(Some(li), "attn_norm", snap16(&b.xn)?)?;
            if !skip.qkv {
                self.fused_linear(&l.qkv, qkv_x, self.r(&b.qkv), px.qkv)?;
            }
            keep(Some(li), "qkv_proj", snap16(&b.qkv)?)?;
            let ap = self.attn_params(li);
            let smem = attn_split_smem(hd, self.opts.attn_chunk);
            // K and V rows 0..=pos, fp16: what the attention streams per layer.
            self.streamed
                .set(self.streamed.get() + 2 * (self.pos as u64 + 1) * kv_dim as u64 * 2);
            if !skip.attention {
                self.launch_op(
                    &self.k.attn_split,
                    (heads as u32, self.n_splits as u32),
                    256,
                    smem,
                    &ap,
                    &format!("layer {li} attention (rope + kv append + split + combine)"),
                )?;
            }
            // The rotated q and the cache row the attention kernel appended: what the standalone
            // rope kernel used to leave in qkv (the trace's "rope" op, checked against RoPE in f64).
            keep(Some(li), "rope", rope_trace(li)?)?;
            keep(Some(li), "attention", snap16(&b.attn)?)?;
            if !skip.o {
                self.linear(&l.o, self.r(&b.attn), self.r(&b.o))?;
            }
            keep(Some(li), "o_proj", snap16(&b.o)?)?;
            let (gu_perm, gu_x) = self.norm_for(px.gate_up, &l.gate_up[0].lin);
            if !skip.norms {
                self.norm(
                    self.r(&b.o),
                    &l.ffn_norm,
                    gu_perm,
                    &format!("layer {li} post_attention_layernorm"),
                )?;
            }
            keep(Some(li), "residual_attn", snap32(&b.resid)?)?;
            keep(Some(li), "ffn_norm", snap16(&b.xn)?)?;
            if !skip.gate_up {
                self.fused_linear(&l.gate_up, gu_x, self.r(&b.gate_up), px.gate_up)?;
            }
            keep(Some(li), "gate_up_proj", snap16(&b.gate_up)?)?;
            // A down projection whose kernel stages x once (v6, v1, the engine's q4:
            // int4_takes_gated_input) computes silu(gate) * up itself while loading x, one launch
            // per layer less; the others (fp16 through cuBLAS, v2/v4/v5) need act in memory. A
            // trace still runs the kernel, for its op-by-op comparison; the down projection then
            // reads gate|up as in the step.
            let gated = self.takes_gated_input(li);
            if (!gated || tracing) && !skip.silu {
                let down_perm = if px.down { self.perm_of(&l.down) } else { 0 };
                let sp = abi::lab_llama_silu_params {
                    gate_up: self.r(&b.gate_up),
                    out: self.r(&b.act),
                    perm: down_perm,
                    out_perm: if px.down { self.r(&b.act_p) } else { 0 },
                    inter: inter as i32,
                    _pad: 0,
                };
                self.launch_op(
                    &self.k.silu,
                    (inter.div_ceil(256) as u32, 1),
                    256,
                    0,
                    &sp,
                    &format!("layer {li} silu_mul"),
                )?;
                keep(Some(li), "silu_mul", snap16(&b.act)?)?;
            }
            let x = if gated {
                XInput::Gated(self.r(&b.gate_up))
            } else if px.down {
                XInput::Plain(self.r(&b.act_p))
            } else {
                XInput::Plain(self.r(&b.act))
            };
            if !skip.down {
                self.linear_px(&l.down, x, self.r(&b.down), px.down)?;
            }
            keep(Some(li), "down_proj", snap16(&b.down)?)?;
        }
        // The persistent layers added the last down projection into resid already.
        let delta = if persistent.is_some() {
            0
        } else {
            self.r(&b.down)
        };
        self.norm(delta, &self.weights.final_norm, 0, "final norm")?;
        keep(None, "residual_final", snap32(&b.resid)?)?;
        keep(None, "final_norm", snap16(&b.xn)?)?;
        self.streamed
            .set(self.streamed.get() + (vocab * h * 2) as u64);
        self.gemv_f16(
            self.r(&self.weights.lm_head),
            self.r(&b.xn),
            0,
            self.r(&b.logits),
            vocab,
            h,
            "lm_head",
        )?;
        keep(None, "lm_head", snap32(&b.logits)?)?;
        self.choose_token("next token")?;
        // The argmax has no output to trace; the profile still needs its end.
        if let Some(m) = marks {
            self.mark(m, "argmax")?;
        }
        Ok(())
    }

    /// A profile mark: an event after the ops enqueued so far, and the bytes they stream.
    fn mark(&self, marks: &mut Vec<ProfileMark>, op: &'static str) -> Result<()> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        marks.push(ProfileMark {
            op,
            event: self.stream.record_event(flags).ctx("profile event")?,
            streamed: self.streamed.get(),
        });
        Ok(())
    }

    /// The step's last op: the next token from the logits into the state (greedy argmax, or
    /// top-p with the draw for the current position), position += 1.
    pub(super) fn choose_token(&self, what: &str) -> Result<()> {
        let (logits, state) = (self.r(&self.b.logits), self.r(&self.b.state));
        let (vocab, max_ctx) = (self.cfg.vocab_size as i32, self.opts.max_ctx as i32);
        match self.opts.sampling {
            Sampling::Greedy => {
                let p = abi::lab_llama_argmax_params {
                    logits,
                    state,
                    vocab,
                    max_ctx,
                };
                self.launch_op(&self.k.argmax, (1, 1), 1024, 0, &p, what)
            }
            Sampling::TopP { top_p, temperature } => {
                let p = abi::lab_llama_sample_params {
                    logits,
                    state,
                    seed: self.opts.sample_seed,
                    top_p,
                    inv_temp: 1.0 / temperature,
                    vocab,
                    max_ctx,
                };
                let threads = abi::LAB_LLAMA_TOP_P_THREADS;
                self.launch_op(&self.k.sample, (1, 1), threads, 0, &p, what)
            }
        }
    }

    /// Capture the step as a CUDA graph (once; later steps replay it).
    pub fn capture_graph(&mut self) -> Result<()> {
        if self.graph.is_some() || self.persistent_graph_refused().is_some() {
            return Ok(());
        }
        self.stream.synchronize().ctx("before graph capture")?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .ctx("begin graph capture")?;
        let r = self.enqueue_step(None, None);
        let g = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .ctx("end graph capture / instantiate");
        // A driver that cannot put the persistent layers' cooperative launch in a graph: their
        // steps run eager from now on (`persistent_graph_refused` says so), not an error.
        let refused = [r.as_ref().err(), g.as_ref().err()]
            .into_iter()
            .flatten()
            .find(|e| is_capture_refusal(e))
            .map(|e| e.to_string());
        if let (Some(why), Some(p)) = (refused, self.persistent.as_mut()) {
            if self.opts.persistent_layers {
                p.graph_refused = Some(why);
                return Ok(());
            }
        }
        r?;
        let g =
            g?.ok_or_else(|| LabError::invalid("CUDA graph", "capture produced an empty graph"))?;
        g.upload().ctx("graph upload")?;
        self.graph = Some(g);
        let f = free_now(&self.ctx)?;
        self.vram.observe(f);
        Ok(())
    }

    /// PDL asked for and possible (an sm_90+ GPU running sm_90+ kernels).
    pub(super) fn pdl_in_effect(&self) -> bool {
        self.opts.pdl && self.pdl_possible
    }
}
