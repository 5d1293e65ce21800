// LLaMA decode ops, one token per step, every per-step input read from device memory so the step
// is captured once as a CUDA graph and replayed (the state words of abi.h: token, position, flags).
//   lab_llama_fill          v1: counter-hash random u32 / fp16 fill, or a constant: synthetic weights on the GPU
//   lab_llama_embed         v1: fp16 table row of state.token -> f32 residual; history[pos] = token
//   lab_llama_add_rmsnorm   v2: one block per row: resid += delta (optional, fused residual add), out = fp16(w * resid / rms), fp32 math;
//                           v2 issues all of a thread's loads at once (one L2 round trip; v1 took one per element)
//   lab_llama_rope_kv       v1: HF rotate-half RoPE on q and k in place (pairs i, i + hd/2), k and v appended at row pos
//   lab_llama_silu_mul      v1: out = silu(gate) * up over the fused gate_up output, fp32 math
//   lab_llama_argmax        v2: one block: greedy token (lowest index on ties, NaN ignored) -> state.token, pos += 1
//   lab_llama_sample_top_p  v1: one block: nucleus sampling (threshold bisection + index-order inverse CDF) -> state.token, pos += 1
//   lab_llama_hold          v1: one thread spins for p.ns nanoseconds (the per-op profile queues a step behind it)
// Checked by: cargo test --release --test gpu_decode (GPU engine vs the CPU f64 engine, op by op,
// layer by layer, on tiny models) — `lab decode --backend gpu --model tiny-check` runs the same check.
#include "llama/util.cuh"

// splitmix64: a counter-based generator, so element i depends only on (seed, i) and any launch
// shape fills the same values.
static __device__ __forceinline__ uint64_t llama_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void lab_llama_fill(lab_llama_fill_params p) {
    LAB_PDL_ENTER();
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        if (p.kind == LAB_FILL_F16) {
            uint64_t r = llama_mix(p.seed * 0x100000001B3ull + i);
            float u = (float)(r >> 40) * (1.0f / 16777216.0f);  // 24 random bits -> [0, 1)
            reinterpret_cast<__half*>(p.ptr)[i] = __float2half_rn(p.lo + (p.hi - p.lo) * u);
        } else if (p.kind == LAB_FILL_CONST_U32) {
            reinterpret_cast<uint32_t*>(p.ptr)[i] = (uint32_t)p.lo;
        } else {
            uint64_t r = llama_mix(p.seed * 0x100000001B3ull + i);
            reinterpret_cast<uint32_t*>(p.ptr)[i] = (uint32_t)(r >> 32);
        }
    }
}

extern "C" __global__ void lab_llama_embed(lab_llama_embed_params p) {
    LAB_PDL_ENTER();
    int* st = reinterpret_cast<int*>(p.state);
    const int tok = st[LAB_LLAMA_STATE_TOKEN];
    const int pos = st[LAB_LLAMA_STATE_POS];
    const bool bad = tok < 0 || tok >= p.vocab;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        if (bad) atomicOr(st + LAB_LLAMA_STATE_FLAGS, LAB_LLAMA_FLAG_BAD_TOKEN);
        if (pos >= 0 && pos < p.max_ctx) reinterpret_cast<int*>(p.history)[pos] = tok;
    }
    const __half* row = reinterpret_cast<const __half*>(p.table) + (size_t)(bad ? 0 : tok) * p.hidden;
    float* r = reinterpret_cast<float*>(p.resid);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.hidden; i += gridDim.x * blockDim.x)
        r[i] = bad ? __int_as_float(0x7fc00000) : __half2float(row[i]);
}

// One block of LLAMA_NORM_THREADS per row (decode launches 1 row; prefill one per prompt row, rows
// hidden apart). v2: every thread issues all its loads (resid, delta, weight: 8-value units, 16-byte
// fp16 / 2 x 16-byte f32 loads) before using any, keeps its values in registers, and so waits for one
// L2 round trip instead of v1's one per loop iteration: v1's loop stored r[i] before loading the next
// element (resid and delta may alias for the compiler), so a 4096 row was 8 dependent round trips.
// H100 per-op profile (76413dd, eager + events): 655.7 us for 65 norms + 98 marks at 7B, ~6 us per
// norm against ~1 us of L2 latency; prediction for v2: ~2 us (one round trip + the block sum's
// barriers), ~0.25 ms less per 7B step.
// Limits (host-checked in GpuEngine::new): hidden % 8 == 0, hidden <= 8 x LLAMA_NORM_UNITS x threads.
#define LLAMA_NORM_THREADS 512
#define LLAMA_NORM_UNITS 4  // 8-value units per thread: rows up to 16384 values (LLaMA: 4096-8192)
extern "C" __global__ void __launch_bounds__(LLAMA_NORM_THREADS) lab_llama_add_rmsnorm(lab_llama_norm_params p) {
    LAB_PDL_ENTER();
    __shared__ float scratch[32];
    const size_t row = (size_t)blockIdx.x * p.hidden;
    const int units = p.hidden >> 3;
    float4* r = reinterpret_cast<float4*>(reinterpret_cast<float*>(p.resid) + row);
    const uint4* d = p.delta ? reinterpret_cast<const uint4*>(reinterpret_cast<const __half*>(p.delta) + row) : nullptr;
    const uint4* w = reinterpret_cast<const uint4*>(p.weight);
    uint4* o = reinterpret_cast<uint4*>(reinterpret_cast<__half*>(p.out) + row);

    // 1. Every load of this thread's units, nothing consumed yet.
    float4 ra[LLAMA_NORM_UNITS], rb[LLAMA_NORM_UNITS];
    uint4 dv[LLAMA_NORM_UNITS], wv[LLAMA_NORM_UNITS];
#pragma unroll
    for (int j = 0; j < LLAMA_NORM_UNITS; ++j) {
        const int u = threadIdx.x + j * blockDim.x;
        const bool in = u < units;
        ra[j] = in ? r[2 * u] : make_float4(0.f, 0.f, 0.f, 0.f);
        rb[j] = in ? r[2 * u + 1] : make_float4(0.f, 0.f, 0.f, 0.f);
        dv[j] = (in && d) ? d[u] : make_uint4(0u, 0u, 0u, 0u);
        wv[j] = in ? w[u] : make_uint4(0u, 0u, 0u, 0u);
    }
    // 2. resid += delta (written back when there is a delta), sum of squares in fp32.
    float v[LLAMA_NORM_UNITS][8];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < LLAMA_NORM_UNITS; ++j) {
        const __half2* dh = reinterpret_cast<const __half2*>(&dv[j]);
        const float rv[8] = {ra[j].x, ra[j].y, ra[j].z, ra[j].w, rb[j].x, rb[j].y, rb[j].z, rb[j].w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 df = __half22float2(dh[e]);
            v[j][2 * e] = d ? rv[2 * e] + df.x : rv[2 * e];  // no delta: resid as is (-0 stays -0)
            v[j][2 * e + 1] = d ? rv[2 * e + 1] + df.y : rv[2 * e + 1];
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) ss = fmaf(v[j][e], v[j][e], ss);
        const int u = threadIdx.x + j * blockDim.x;
        if (d && u < units) {
            r[2 * u] = make_float4(v[j][0], v[j][1], v[j][2], v[j][3]);
            r[2 * u + 1] = make_float4(v[j][4], v[j][5], v[j][6], v[j][7]);
        }
    }
    ss = llama_block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)p.hidden + p.eps);
    // 3. out = fp16(w * (resid * inv)), the same expression per element as v1.
#pragma unroll
    for (int j = 0; j < LLAMA_NORM_UNITS; ++j) {
        const int u = threadIdx.x + j * blockDim.x;
        if (u >= units) continue;
        const __half2* wh = reinterpret_cast<const __half2*>(&wv[j]);
        uint4 ov;
        __half2* oh = reinterpret_cast<__half2*>(&ov);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 wf = __half22float2(wh[e]);
            oh[e] = __halves2half2(__float2half_rn(wf.x * (v[j][2 * e] * inv)),
                                   __float2half_rn(wf.y * (v[j][2 * e + 1] * inv)));
        }
        o[u] = ov;
    }
    // 4. Act-order consumer on a plain kernel (permuted x, GpuEngine's act_order_plain): the row
    // again in the consumer's sorted order, out_perm[j] = out[perm[j]]. The block's own writes of
    // `out` above are visible to all its threads after the barrier. 8 perm loads in flight per
    // thread, then 8 gathers: two L2 round trips on one block, against the ~4 us a permuted-x
    // GEMV kernel (v4/v6) spent per launch over a plain one on the H100 (tuning of run 14).
    if (p.perm && gridDim.x == 1) {  // block-uniform; the decode step's one row
        __syncthreads();
        const int* perm = reinterpret_cast<const int*>(p.perm);
        const __half* src = reinterpret_cast<const __half*>(p.out);
        __half* dst = reinterpret_cast<__half*>(p.out_perm);
        for (int base = threadIdx.x; base < p.hidden; base += 8 * blockDim.x) {
            int idx[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int j = base + e * blockDim.x;
                idx[e] = j < p.hidden ? perm[j] : 0;
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int j = base + e * blockDim.x;
                if (j < p.hidden) dst[j] = src[idx[e]];
            }
        }
    }
}

// Grid: heads + kv_heads blocks (q heads first, then k heads); block: hd/2 threads, thread i
// rotates the pair (i, i + hd/2) by pos * inv_freq[i]. The k-head blocks also append k (rotated)
// and v to the cache rows at pos. grid.y = rows: row y is the qkv row y and position
// state.pos + y (the prefill launches one per prompt row of the chunk; the decode step does its
// RoPE inside lab_llama_attn_split since attention v3, with the same arithmetic).
extern "C" __global__ void lab_llama_rope_kv(lab_llama_rope_params p) {
    LAB_PDL_ENTER();
    int* st = reinterpret_cast<int*>(p.state);
    const int pos = st[LAB_LLAMA_STATE_POS] + (int)blockIdx.y;
    const int hd = p.head_dim, half = hd / 2, i = threadIdx.x;
    const int kv_dim = p.kv_heads * hd;
    if (i >= half) return;
    __half* qkv = reinterpret_cast<__half*>(p.qkv) + (size_t)blockIdx.y * (p.heads * hd + 2 * kv_dim);
    const bool is_k = blockIdx.x >= (unsigned)p.heads;
    const int h = is_k ? blockIdx.x - p.heads : blockIdx.x;
    // q head h starts at h*hd; k head h right after the heads*hd q values.
    __half* v = qkv + (is_k ? (size_t)p.heads * hd : 0) + (size_t)h * hd;
    float s, c;
    sincosf((float)pos * reinterpret_cast<const float*>(p.inv_freq)[i], &s, &c);
    const float a = __half2float(v[i]), b = __half2float(v[i + half]);
    const __half ra = __float2half_rn(a * c - b * s), rb = __float2half_rn(b * c + a * s);
    v[i] = ra;
    v[i + half] = rb;
    if (!is_k) return;
    if (pos < 0 || pos >= p.max_ctx) {
        if (h == 0 && i == 0) atomicOr(st + LAB_LLAMA_STATE_FLAGS, LAB_LLAMA_FLAG_CTX_FULL);
        return;
    }
    const size_t row = (size_t)pos * kv_dim + (size_t)h * hd;
    __half* kc = reinterpret_cast<__half*>(p.k_cache) + row;
    __half* vc = reinterpret_cast<__half*>(p.v_cache) + row;
    const __half* vsrc = qkv + (size_t)p.heads * hd + kv_dim + (size_t)h * hd;
    kc[i] = ra;
    kc[i + half] = rb;
    vc[i] = vsrc[i];
    vc[i + half] = vsrc[i + half];
}

// Rows: grid.y (gate_up rows 2*inter apart, out rows inter apart); decode launches one row.
extern "C" __global__ void lab_llama_silu_mul(lab_llama_silu_params p) {
    LAB_PDL_ENTER();
    const __half* g = reinterpret_cast<const __half*>(p.gate_up) + (size_t)blockIdx.y * 2 * p.inter;
    __half* o = reinterpret_cast<__half*>(p.out) + (size_t)blockIdx.y * p.inter;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.inter; i += gridDim.x * blockDim.x) {
        o[i] = lab_silu_mul(g[i], g[i + p.inter]);
    }
    // Act-order down projection on a plain kernel (GpuEngine's act_order_plain): the same values
    // in its sorted row order, out_perm[j] = silu(gate[perm[j]]) * up[perm[j]] (bit-identical to
    // out[perm[j]]: the same function of the same inputs), computed from gate|up, not from out,
    // so no block waits for another's writes.
    if (p.perm && gridDim.y == 1) {
        const int* perm = reinterpret_cast<const int*>(p.perm);
        __half* op = reinterpret_cast<__half*>(p.out_perm);
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < p.inter; j += gridDim.x * blockDim.x) {
            const int i = perm[j];
            op[j] = lab_silu_mul(g[i], g[i + p.inter]);
        }
    }
}

// One block of 1024 threads over the logits (32000 floats: 31 per thread). v2 loads 8 per thread
// before comparing any (4 L2 round trips for 32000 instead of one per element or unrolled
// group: the H100 profile gave v1 13 us per step).
#define LLAMA_ARGMAX_BATCH 8
extern "C" __global__ void lab_llama_argmax(lab_llama_argmax_params p) {
    LAB_PDL_ENTER();
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* l = reinterpret_cast<const float*>(p.logits);
    float best = -INFINITY;
    int bi = p.vocab;  // "none yet": any real index is lower
    const int nt = blockDim.x;
    for (int base = threadIdx.x; base < p.vocab; base += LLAMA_ARGMAX_BATCH * nt) {
        float v[LLAMA_ARGMAX_BATCH];
#pragma unroll
        for (int j = 0; j < LLAMA_ARGMAX_BATCH; ++j) {
            const int i = base + j * nt;
            v[j] = i < p.vocab ? l[i] : -INFINITY;
        }
        // Indices ascend with j: strictly greater keeps this thread's lowest index; false for NaN.
#pragma unroll
        for (int j = 0; j < LLAMA_ARGMAX_BATCH; ++j) {
            if (v[j] > best) {
                best = v[j];
                bi = base + j * nt;
            }
        }
    }
    // (value, index) reduction: larger value wins, lower index on ties.
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            if (sv[w] > best || (sv[w] == best && si[w] < bi)) {
                best = sv[w];
                bi = si[w];
            }
        int* st = reinterpret_cast<int*>(p.state);
        if (bi >= p.vocab) {
            bi = 0;
            st[LAB_LLAMA_STATE_FLAGS] |= LAB_LLAMA_FLAG_NAN_LOGITS;
        }
        st[LAB_LLAMA_STATE_TOKEN] = bi;
        const int pos = st[LAB_LLAMA_STATE_POS];
        st[LAB_LLAMA_STATE_POS] = pos < p.max_ctx ? pos + 1 : pos;
    }
}

// The per-op profile (GpuEngine::profile_step) launches this first, then queues one eager step
// with an event after every op: while the GPU spins, the host enqueues everything, so the events
// time the ops back to back on the GPU instead of the host's launch rate. globaltimer is in ns
// (updated every ~1 us on some parts: resolution is irrelevant for a hold of milliseconds).
extern "C" __global__ void lab_llama_hold(lab_llama_hold_params p) {
    LAB_PDL_ENTER();
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    uint64_t t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < p.ns);
}

// Shared-memory poison (the tiny check's poisoned pass, GpuEngine::set_poison_smem): launched
// before every kernel of an eager step, with enough 48 KB blocks to cover every SM, it leaves
// fp16 and f32 NaN in the shared memory the next kernel's blocks are given. A kernel that reads
// shared memory it did not write (the attention's overrun select of runs 9-10) then computes NaN
// on every run instead of whenever an earlier kernel happened to leave Inf/NaN bits. Volatile
// stores: nothing reads them in this kernel, and they must not be optimized away.
extern "C" __global__ void lab_llama_poison_smem(lab_llama_poison_params p) {
    LAB_PDL_ENTER();  // as every decode-family kernel (tests/static_kernels.rs), though launched plainly
    extern __shared__ uint32_t poison_sm[];
    volatile uint32_t* s = poison_sm;
    for (uint32_t i = threadIdx.x; i < p.words; i += blockDim.x) s[i] = p.pattern;
}

// Order-preserving key of a float (larger float -> larger key; NaN never reaches it).
static __device__ __forceinline__ uint32_t llama_fkey(float v) {
    const uint32_t b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// One block of LAB_LLAMA_TOP_P_THREADS (1024) threads over the logits (32000 x 4 B = 128 KB).
// Passes: max (1), normaliser (1), threshold bisection over the 32-bit key space (32), chunk sums
// + scan + walk (2): ~36 passes; it replaces a 128 KB copy to the host, a host sort and a feed per
// token, and stays inside the step's CUDA graph. The normaliser and the bisection are the same
// function (`mass`: the same expression, the same order), so "mass of the keys >= 0" is
// bit-identical to the normaliser (the bisection's invariant holds exactly).
// v1 ran every pass over thread-contiguous chunks: measured on the H100 (run 10, decode.md's
// top-p column) at +0.53-0.57 ms per step over argmax, ~15 us per pass (predicted: 20-40 us for
// all of it). A thread's chunk is 32 consecutive floats = one 128-byte line, so each load
// instruction of a warp touched 32 lines: 1024 L1 wavefronts per warp per pass, 32K per pass on
// one SM, ~18 us at one per cycle.
// v2 (NOT YET RUN ON A GPU): `mass` reads strided (thread t: t, t + 1024, ...), one line per warp
// load, 32x fewer wavefronts; only the last pass (chunk sums, scan, owner's walk) keeps the
// contiguous chunks, since the walk needs index order. Holding the chunk in registers instead
// spilled ~100 bytes at both 1024 x 32 and 512 x 64 (ptxas CUDA 13.0). Prediction: ~1 us per
// bisection pass, ~50-70 us per top-p step instead of ~550.
extern "C" __global__ void __launch_bounds__(LAB_LLAMA_TOP_P_THREADS) lab_llama_sample_top_p(lab_llama_sample_params p) {
    LAB_PDL_ENTER();
    __shared__ float scratch[32];
    __shared__ int owner;
    const float* l = reinterpret_cast<const float*>(p.logits);
    const int tid = threadIdx.x, nt = blockDim.x;
    int* st = reinterpret_cast<int*>(p.state);
    const int pos = st[LAB_LLAMA_STATE_POS];

    float m = -INFINITY;
    for (int i = tid; i < p.vocab; i += nt) m = fmaxf(m, l[i]);  // fmaxf drops NaN
    m = llama_block_max(m, scratch);
    if (!(m > -INFINITY)) {  // every logit NaN or -inf: as lab_llama_argmax
        if (tid == 0) {
            st[LAB_LLAMA_STATE_FLAGS] |= LAB_LLAMA_FLAG_NAN_LOGITS;
            st[LAB_LLAMA_STATE_TOKEN] = 0;
            st[LAB_LLAMA_STATE_POS] = pos < p.max_ctx ? pos + 1 : pos;
        }
        return;
    }
    if (m == INFINITY) {  // exp(l - max) is NaN there: the first +inf logit wins, as in argmax
        if (tid == 0) owner = p.vocab;
        __syncthreads();
        for (int i = tid; i < p.vocab; i += nt)
            if (l[i] == INFINITY) atomicMin(&owner, i);
        __syncthreads();
        if (tid == 0) {
            st[LAB_LLAMA_STATE_TOKEN] = owner;
            st[LAB_LLAMA_STATE_POS] = pos < p.max_ctx ? pos + 1 : pos;
        }
        return;
    }
    // For the last pass (chunk sums, scan, the owner's walk): thread t owns the contiguous chunk
    // [t c, t c + c), since index order across threads is what the inverse CDF walks. The
    // normaliser and bisection passes (`mass`) read strided instead, all in one same order.
    const int c = (p.vocab + nt - 1) / nt;
    const int lo_i = min(tid * c, p.vocab), hi_i = min(lo_i + c, p.vocab);
    auto weight = [&](float v) { return (v == v) ? expf((v - m) * p.inv_temp) : 0.f; };
    auto mass = [&](uint32_t key) {  // strided: a warp's load is one line (see v2 above)
        float s = 0.f;
        for (int i = tid; i < p.vocab; i += nt) {
            const float v = l[i];
            if (v == v && llama_fkey(v) >= key) s += weight(v);
        }
        return llama_block_sum(s, scratch);
    };
    const float z = mass(0u);
    const float want = p.top_p * z;
    // Largest key t with mass(t) >= want: mass(lo) >= want always (lo = 0: mass = z >= top_p z),
    // mass(hi) < want (hi is past the max's key: mass 0 < want since z >= 1).
    uint64_t klo = 0, khi = (uint64_t)llama_fkey(m) + 1;
    while (khi - klo > 1) {
        const uint64_t mid = (klo + khi) >> 1;
        if (mass((uint32_t)mid) >= want) klo = mid; else khi = mid;
    }
    const uint32_t t = (uint32_t)klo;

    // Inverse CDF in index order: exclusive prefix of the chunk sums, then the owner walks.
    float s = 0.f;
    for (int i = lo_i; i < hi_i; ++i) {
        const float v = l[i];
        if (v == v && llama_fkey(v) >= t) s += weight(v);
    }
    const int lane = tid & 31, warp = tid >> 5, nw = nt >> 5;
    float incl = s;
    for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    if (lane == 31) scratch[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nw ? scratch[lane] : 0.f;
        for (int o = 1; o < 32; o <<= 1) {
            const float y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        scratch[lane] = w;  // inclusive warp totals
    }
    if (tid == 0) owner = -1;
    __syncthreads();
    const float excl = incl - s + (warp > 0 ? scratch[warp - 1] : 0.f);
    const float total = scratch[nw - 1];
    const uint64_t r = llama_mix(p.seed + llama_mix((uint64_t)pos * LAB_SAMPLE_MIX_A));
    const float u = (float)(r >> 40) * (1.0f / 16777216.0f);  // 24 bits -> [0, 1)
    const float target = u * total;
    // Owner: the last chunk with weight whose start is <= target. A parallel scan's float
    // rounding need not make the starts monotone, so "start <= target < next start" could name
    // zero or two threads; the largest qualifying index is always exactly one.
    if (s > 0.f && excl <= target) atomicMax(&owner, tid);
    __syncthreads();
    if (tid == owner) {
        float run = excl;
        int tok = -1, last = -1;
        for (int i = lo_i; i < hi_i; ++i) {
            const float v = l[i];
            if (!(v == v && llama_fkey(v) >= t)) continue;
            last = i;
            run += weight(v);
            if (target < run) { tok = i; break; }
        }
        if (tok < 0) tok = last;  // the rounding remainder of this chunk
        st[LAB_LLAMA_STATE_TOKEN] = tok;
        st[LAB_LLAMA_STATE_POS] = pos < p.max_ctx ? pos + 1 : pos;
    }
}
