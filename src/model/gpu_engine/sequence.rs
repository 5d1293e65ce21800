//! A sequence through the engine: its position, feeding prompt tokens, greedy and interactive
//! generation, the step state's flags, and the step timings (`time_steps`, the per-op
//! `profile_step`, the debug `trace_step`).

use super::{free_now, GpuEngine, PrefillLogits, PrefillMode, TraceEntry};
use crate::error::DriverCtx;
use crate::kernels::abi;
use crate::model::step_profile::Mark;
use crate::{LabError, Result};
use cudarc::driver::sys::CUevent_flags;

impl GpuEngine {
    /// Forget the sequence: position 0, flags cleared.
    pub fn reset(&mut self) -> Result<()> {
        self.set_position(0)
    }

    /// Continue from `pos` (the cache rows below it are taken as they are: benchmarks fill them
    /// with random values instead of running a prefill).
    pub fn set_position(&mut self, pos: usize) -> Result<()> {
        if pos >= self.opts.max_ctx {
            return Err(LabError::invalid(
                "position",
                format!("{pos} is past the KV cache ({} rows)", self.opts.max_ctx),
            ));
        }
        let words = [0i32, pos as i32, 0, 0];
        self.stream
            .memcpy_htod(&words, &mut self.b.state)
            .ctx("writing the step state")?;
        // The split-K and attention tickets and partials are zero between launches; a step cut
        // short (a persistent-layers barrier that timed out, flag 8) may leave them dirty, so a
        // reset makes them zero again (~0.1 MB at 7B).
        let b = &mut self.b;
        for (buf, what) in [
            (&mut b.gemv_ws, "GEMV split-K workspace"),
            (&mut b.q4_ws, "int4 GEMV accumulator"),
        ] {
            self.stream.memset_zeros(buf).ctx(what)?;
        }
        self.stream
            .memset_zeros(&mut b.attn_tickets)
            .ctx("attention tickets")?;
        self.pos = pos;
        Ok(())
    }

    /// Fill the whole KV cache with random fp16 values in [-1, 1) (benchmarks).
    pub fn fill_kv_random(&mut self, seed: u64) -> Result<()> {
        let p = self.r(&self.kv);
        crate::model::gpu_weights::fill_launch(
            &self.stream,
            &self.k.fill,
            p,
            self.kv.len(),
            seed,
            -1.0,
            1.0,
            abi::LAB_FILL_F16 as i32,
        )
    }

    /// A step needs a free cache row at the current position.
    fn check_room(&self) -> Result<()> {
        if self.pos >= self.opts.max_ctx {
            return Err(LabError::invalid(
                "sequence length",
                format!("the KV cache is full ({} positions)", self.opts.max_ctx),
            ));
        }
        Ok(())
    }

    fn run_step(&mut self, graph: bool, trace: Option<&mut Vec<TraceEntry>>) -> Result<()> {
        self.check_room()?;
        match (&self.graph, graph && trace.is_none()) {
            (Some(g), true) => g.launch().ctx("graph launch")?,
            // The driver would not capture the persistent layers' cooperative launch: their step
            // is 5 launches, so eager costs little.
            (None, true) if self.persistent_graph_refused().is_some() => {
                self.enqueue_step(None, None)?
            }
            (None, true) => {
                return Err(LabError::invalid(
                    "decode step",
                    "graph replay asked for before capture_graph",
                ))
            }
            _ => self.enqueue_step(trace, None)?,
        }
        self.pos += 1;
        Ok(())
    }

    /// Feed `token` at the current position (prompt tokens, teacher forcing).
    pub fn feed(
        &mut self,
        token: u32,
        graph: bool,
        trace: Option<&mut Vec<TraceEntry>>,
    ) -> Result<()> {
        if token as usize >= self.cfg.vocab_size {
            return Err(LabError::invalid(
                "token id",
                format!(
                    "{token} is out of range for vocab_size {}",
                    self.cfg.vocab_size
                ),
            ));
        }
        let mut tok = self.b.state.slice_mut(0..1);
        self.stream
            .memcpy_htod(&[token as i32], &mut tok)
            .ctx("writing the token")?;
        self.run_step(graph, trace)
    }

    /// Feed the token the previous step's argmax chose (stays on the device).
    pub fn step_greedy(&mut self, graph: bool) -> Result<()> {
        self.run_step(graph, None)
    }

    /// Synchronize, then fail if a kernel raised a state flag.
    pub fn check_state(&self) -> Result<[i32; 4]> {
        self.stream.synchronize().ctx("decode step")?;
        let s = self
            .stream
            .clone_dtoh(&self.b.state)
            .ctx("reading the step state")?;
        let f = s[abi::LAB_LLAMA_STATE_FLAGS as usize];
        if f != 0 {
            let mut why = Vec::new();
            if f & abi::LAB_LLAMA_FLAG_BAD_TOKEN as i32 != 0 {
                why.push("a token id was out of range");
            }
            if f & abi::LAB_LLAMA_FLAG_CTX_FULL as i32 != 0 {
                why.push("a step ran past the KV cache");
            }
            if f & abi::LAB_LLAMA_FLAG_NAN_LOGITS as i32 != 0 {
                why.push("all logits were NaN or -inf");
            }
            if f & abi::LAB_LLAMA_FLAG_BARRIER_TIMEOUT as i32 != 0 {
                why.push("a grid barrier of the persistent layers timed out (blocks not all resident): the step's results are wrong");
            }
            return Err(LabError::CheckFailed(format!(
                "decode step flags {f:#x}: {}",
                why.join(", ")
            )));
        }
        Ok([s[0], s[1], s[2], s[3]])
    }

    /// Synchronize and read the sticky flag word (LAB_LLAMA_FLAG_*) without failing on it.
    pub fn flags(&self) -> Result<i32> {
        self.stream.synchronize().ctx("decode step")?;
        let s = self
            .stream
            .clone_dtoh(&self.b.state)
            .ctx("reading the step state")?;
        Ok(s[abi::LAB_LLAMA_STATE_FLAGS as usize])
    }

    /// The logits [vocab] of the last step.
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.stream.synchronize().ctx("decode step")?;
        self.stream.clone_dtoh(&self.b.logits).ctx("reading logits")
    }

    /// Greedy generation: reset, prefill `prompt` (`EngineOptions::prefill`: the GEMM prefill, or
    /// token by token; token by token also when the engine has no prefill workspace), then
    /// `n_new` greedy steps with the token chained on the device. Returns the new tokens.
    pub fn generate(&mut self, prompt: &[u32], n_new: usize, graph: bool) -> Result<Vec<u32>> {
        let mode = self.opts.prefill;
        self.generate_with(prompt, n_new, graph, mode)
    }

    /// Interactive generation, one token at a time: reset, run the prompt (GEMM prefill or token
    /// by token), and return the first chosen token. `next_token` continues. Each call waits for
    /// its token (one sync per token: what printing text as it comes needs); `generate_with`
    /// is the no-sync path for checks and timings.
    pub fn begin(&mut self, prompt: &[u32], graph: bool, mode: PrefillMode) -> Result<u32> {
        if prompt.is_empty() {
            return Err(LabError::invalid("prompt", "needs at least one token"));
        }
        if prompt.len() > self.opts.max_ctx {
            return Err(LabError::invalid(
                "prompt",
                format!(
                    "{} tokens exceed the KV cache ({})",
                    prompt.len(),
                    self.opts.max_ctx
                ),
            ));
        }
        self.run_prompt(prompt, graph, mode)?;
        self.chosen_token()
    }

    /// From position 0: the prompt through the GEMM prefill (`mode` Gemm, when the engine has
    /// its workspace) or one step per token; the state then holds the first chosen token.
    fn run_prompt(&mut self, prompt: &[u32], graph: bool, mode: PrefillMode) -> Result<()> {
        if graph {
            self.capture_graph()?;
        }
        self.reset()?;
        if mode == PrefillMode::Gemm && self.prefill.is_some() {
            self.prefill(prompt, PrefillLogits::None)?;
        } else {
            for &t in prompt {
                self.feed(t, graph, None)?;
            }
        }
        Ok(())
    }

    /// The token the last step (or prompt) chose, after waiting for it.
    pub fn chosen_token(&self) -> Result<u32> {
        Ok(self.check_state()?[abi::LAB_LLAMA_STATE_TOKEN as usize] as u32)
    }

    /// Feed the last chosen token and return the next one (after `begin`).
    pub fn next_token(&mut self, graph: bool) -> Result<u32> {
        self.step_greedy(graph)?;
        self.chosen_token()
    }

    /// `generate` with the prefill mode given (comparisons of the two prefills).
    pub fn generate_with(
        &mut self,
        prompt: &[u32],
        n_new: usize,
        graph: bool,
        mode: PrefillMode,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(LabError::invalid("prompt", "needs at least one token"));
        }
        // The last new token is chosen but never fed: prompt + n_new - 1 positions are cached.
        if prompt.len() + n_new.saturating_sub(1) > self.opts.max_ctx {
            return Err(LabError::invalid(
                "generation length",
                format!(
                    "{} prompt + {n_new} new tokens exceed the KV cache ({})",
                    prompt.len(),
                    self.opts.max_ctx
                ),
            ));
        }
        self.run_prompt(prompt, graph, mode)?;
        for _ in 1..n_new {
            self.step_greedy(graph)?;
        }
        let st = self.check_state()?;
        let hist = self
            .stream
            .clone_dtoh(&self.b.history)
            .ctx("reading the token history")?;
        let mut out: Vec<u32> = hist[prompt.len()..self.pos]
            .iter()
            .map(|&t| t as u32)
            .collect();
        if n_new > 0 {
            out.push(st[abi::LAB_LLAMA_STATE_TOKEN as usize] as u32);
        }
        Ok(out)
    }

    /// Mean milliseconds per step over `n` steps from the current position, timed with CUDA events
    /// around the whole run (graph replay, or eager launches: the host's launch cost shows up in
    /// the eager figure whenever the GPU waits for it).
    pub fn time_steps(&mut self, n: usize, graph: bool) -> Result<f64> {
        if n == 0 {
            return Err(LabError::invalid("timed steps", "n must be positive"));
        }
        if graph {
            self.capture_graph()?;
        }
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let a = self.stream.record_event(flags).ctx("start event")?;
        for _ in 0..n {
            self.step_greedy(graph)?;
        }
        let b = self.stream.record_event(flags).ctx("stop event")?;
        self.stream.synchronize().ctx("timed decode steps")?;
        let ms = a.elapsed_ms(&b).ctx("event time")? as f64;
        let f = free_now(&self.ctx)?;
        self.vram.observe(f);
        Ok(ms / n as f64)
    }

    /// One eager step, timed op by op (`step_profile`): a spinning kernel holds the GPU for
    /// `hold_ms` while the host queues the step with an event after every op, so the events time
    /// the ops back to back on the GPU rather than at the host's launch rate. Returns the marks
    /// and whether the GPU had already left the hold before the host finished queueing (then
    /// host gaps are inside the figures: call again with a longer hold). Advances one position,
    /// feeding the previous step's argmax like `step_greedy`.
    pub fn profile_step(&mut self, hold_ms: f64) -> Result<(Vec<Mark>, bool)> {
        // A left-out op class drops its launches (and a skipped silu its mark) while the byte
        // count still books the attention's K/V: neither `profile_marks_per_step` nor the
        // bytes would describe the step, so an ablated step is timed whole, never profiled.
        if self.skip.any() {
            return Err(LabError::invalid(
                "profile",
                "op classes are left out (set_skip_ops): the per-op profile describes the whole step",
            ));
        }
        self.check_room()?;
        let hp = abi::lab_llama_hold_params {
            ns: (hold_ms.max(0.0) * 1e6) as u64,
        };
        self.launch(&self.k.hold, (1, 1), 32, 0, &hp, "profile hold")?;
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(flags).ctx("profile event")?;
        let s0 = self.streamed.get();
        let mut marks = Vec::new();
        self.enqueue_step(None, Some(&mut marks))?;
        let host_bound = start.is_complete();
        self.stream.synchronize().ctx("profiled decode step")?;
        self.pos += 1;
        let mut out = Vec::with_capacity(marks.len());
        let (mut prev, mut prev_bytes) = (&start, s0);
        for m in &marks {
            let ms = prev.elapsed_ms(&m.event).ctx("profile event time")?;
            out.push(Mark {
                op: m.op,
                us: ms as f64 * 1e3,
                bytes: m.streamed - prev_bytes,
            });
            (prev, prev_bytes) = (&m.event, m.streamed);
        }
        Ok((out, host_bound))
    }

    /// One eager step feeding `token`, with every op's output copied back (debug mode).
    pub fn trace_step(&mut self, token: u32) -> Result<Vec<TraceEntry>> {
        if self.skip.any() {
            return Err(LabError::invalid(
                "trace",
                "op classes are left out (set_skip_ops): the step computes nothing to check",
            ));
        }
        let mut t = Vec::new();
        self.feed(token, false, Some(&mut t))?;
        self.check_state()?;
        Ok(t)
    }
}
