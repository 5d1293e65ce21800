// Persistent decode layers: ONE cooperative launch runs decoder layers [layer_begin, layer_end) of a
// decode step (the params: abi.h lab_llama_layers_params).
//   lab_llama_layers  v1: grid = 2 blocks x SMs of 256 threads, resident together (cooperative launch);
//                     per layer five phases separated by grid barriers:
//                       q|k|v   GEMV, x = RMSNorm(resid) computed in the x staging (no norm kernel)
//                       attn    RoPE + KV append + split attention (lab_llama_attn_split's body)
//                       o       GEMV, epilogue resid += o
//                       gate|up GEMV, x = RMSNorm(resid)
//                       down    GEMV, x = silu(gate) * up in the staging, epilogue resid += down
//                     and before each barrier a block prefetches into L2 the first weight rows of its
//                     work items in the next GEMV phase.
// MEASURED (H100, runs 9-10 of 2026-11-27, reports/nvidia-h100-80gb-hbm3): correct on every tiny
// configuration (op by op vs f64, tokens eager / graph / graph + PDL, full and 8-block grids,
// compute-sanitizer clean), but SLOWER than separate launches: 7B int4 ctx 128 2.67-2.79 ms vs
// 2.25-2.36 ms graph + PDL, 13B 4.4-4.6 vs 3.6-3.8; act-order 3.6 / 5.8-6.0 ms. The prediction below
// is falsified. The barriers alone cost 290 us (7B, 159 barriers, 1.8 us each) and 357 us (13B):
// 13% of the step, against ~1 us predicted; the GEMV phases themselves run no faster than the
// separate v6 launches (the same block work with the same serial prologue and epilogue per item).
// The engine's default stays one launch per op; this stays a checked alternative that lab run times
// as a column (--persistent-layers), for the next attempt at the per-launch cost.
//
// Why (notes/kernels.md "Next", H100 runs of 2026-11-27): a single launch reading a decode GEMV's bytes
// reaches 30% (8.65 MB) to 63% (23 MB) of the read ceiling, because every launch pays the DRAM
// ramp and the last wave's tail; our GEMV bodies are within 1.2-4.7 us of a pure read of the same
// bytes. A 7B step is 128 GEMV launches + ~100 small ones: 56% of the roofline at best (run D, PDL).
// Here the weights of phase i+1 are requested while phase i's tail and the barrier run, and the 6
// small kernels per layer disappear (norms into the staging, silu into the down staging, RoPE and
// the KV append were already in the attention).
//
// Work items. GEMV phase: (128-column tile, K slice), exactly gemv_v6_pipe's block (one warp = one
// k-lane of 4 packed rows per chunk, a lane = 4 columns, x staged once per item in shared memory,
// double-buffered chunk loads, split-K by fp32 atomics + a ticket per tile whose last block writes
// y, does the residual add and re-zeroes). Item j of a phase runs on block j mod grid. The host picks
// one split per phase (gpu_engine/persistent.rs, `phase_split`) so that items per block are few and
// even: 7B at grid 264: q|k|v 96 tiles x 5 = 480 items (<= 2 per block), o 32 x 8 = 256 (1), gate|up
// 172 x 3 = 516 (<= 2), down 32 x 8 = 256 (1). Attention phase: (head, split) items, head-fastest, so
// the one split per head of a short context lands on blocks 0 .. heads-1; the host sizes the split
// (`persistent_attn_chunk`) so heads x splits fits the grid (7B at max_ctx 2100: 8 splits of 263
// positions = 256 items; with the engine's 256-position chunk, 9 x 32 = 288 would need 2 rounds).
//
// The norms: every block of a norm-fed phase sums resid^2 over the whole row itself (16 KB of L2
// reads at 7B, the same order in every block, so every block computes the same factor) and stages
// fp16(w[r] * (resid[r] * inv)), the expression of lab_llama_add_rmsnorm; the sum's order differs
// from that kernel's (256 threads, not 512), so x may differ from the launch-per-op step in the last
// bit: checked against the f64 reference with the same tolerances, not bit-compared.
//
// Memory ordering: data written in this launch (resid, qkv, the attention output, gate|up) is read
// only after a grid barrier, with ld.global.cg (L2) or plain loads, never ld.global.nc. The barrier:
// __syncthreads; thread 0 fences, adds 1 to a u64 counter, spins (ld.acquire.gpu) until the
// counter reaches this barrier's target, fences; __syncthreads. The counter is never reset: a launch
// reads it before its first arrival (no block can complete barrier 0 before every block arrived, so
// the value lies in [base, base + grid)) and every barrier adds exactly `grid`. A barrier that waits
// more than 2 s (blocks not co-resident: cannot happen under a cooperative launch) sets
// LAB_LLAMA_FLAG_BARRIER_TIMEOUT and every later barrier gives up after its first 1024 spins: a
// wrong answer the host reports (check_state fails; reset re-zeroes the split-K and attention
// workspaces the unsynchronized phases may have left dirty), never a hung GPU.
//
// Design numbers (H100 SXM, 132 SMs, 3091 GB/s measured read ceiling; 7B int4 g128, ctx 128):
//   bytes per layer: q|k|v 26.0 MB + o 8.7 + gate|up 46.5 + down 23.3 = 104.5 MB -> 33.8 us at the
//   ceiling; 32 layers 1.08 ms + lm_head 0.26 GB (85 us) + KV = 1.198 ms roofline per token.
//   barriers: 5 per layer, 160 per step, ~1 us each (264 arrivals on one L2 address + the spin),
//   overlapped by the prefetched next-phase rows (32 KB per block = 8.4 MB, 2.7 us of DRAM time).
//   resources: 256 threads, <= 128 registers (launch bounds), static shared 8 KB x + 4 KB partials +
//   the attention's 1 KB, dynamic = the attention's (hd + chunk + groups x hd) x 4 = 9.7 KB (hd 128,
//   chunk 256): ~23 KB per block, 2 per SM. ptxas (CUDA 13.0): 128 registers on every arch, no
//   spill since the shared weight loop (87fc399; 16-20 bytes on sm_80-90 before); 32-48 B stack
//   (here sincosf's large-argument reduction keeps its table in local memory: a path no position
//   under ~10^5 takes); the SASS has no local memory between the weight loop's LDG.E.EF.128 loads
//   (tests/static_kernels.rs keeps it so).
//   per layer at ctx 128: GEMV phases 33.8 us at the ceiling, ~42 us at 80% (one stream, no launch
//   ramps); attention ~5-8 us (latency: q/k/v -> K -> softmax -> V round trips, as the standalone
//   kernel, which took ~11-14 us per layer with its launch in the H100 profile); 5 barriers ~5-10 us,
//   partly hidden behind the prefetched rows. ~50-55 us per layer.
//   Prediction: ~1.6-1.85 ms per 7B step at ctx 128 (65-75% of the roofline) against 2.14 ms with
//   separate launches + PDL (run D, 56%). Falsified if the step is not at least 15% faster than
//   the launch-per-op graph + PDL in the same process; then the bench's note on the barriers alone
//   (lab_llama_layers_params.barriers_only: every phase's work skipped) says whether they are the
//   cost (prediction: 160 barriers ~0.1-0.2 ms per 7B step).
#include "llama/util.cuh"
#include "llama/attention.cuh"
#include "gemv/gemv_v6_core.cuh"

#define LAYERS_WARPS (LAB_LAYERS_THREADS / 32)
#define LAYERS_BARRIER_TIMEOUT_NS 2000000000ull

static __device__ __forceinline__ unsigned long long layers_ld_acquire(const unsigned long long* a) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(a) : "memory");
    return v;
}

// The spin's load: relaxed, so a waiting block does not invalidate its SM's L1 (which the other
// block on the SM may be using) on every iteration as ld.acquire does (CCTL.IVALL in the SASS);
// the fence after the spin gives the acquire (fence-after-read pattern).
static __device__ __forceinline__ unsigned long long layers_ld_relaxed(const unsigned long long* a) {
    unsigned long long v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(a) : "memory");
    return v;
}

static __device__ __forceinline__ unsigned long long layers_globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Grid barrier (see the top comment). `target` (shared memory: only thread 0 uses it, and a
// register for it would be held through every phase) is this block's next arrival count.
struct LayersBarrier {
    unsigned long long* ctr;
    unsigned long long* target;
    int* flags;
};

static __device__ __forceinline__ void layers_barrier(LayersBarrier& b) {
    __syncthreads();
    if (threadIdx.x == 0) {
        *b.target += gridDim.x;
        __threadfence();  // the block's writes (ordered before by the bar.sync) before the arrival
        atomicAdd(b.ctr, 1ull);
        const unsigned long long t0 = layers_globaltimer();
        unsigned spins = 0;
        const unsigned long long target = *b.target;
        while (layers_ld_relaxed(b.ctr) < target) {
            if ((++spins & 1023u) == 0u) {
                const volatile int* f = b.flags;
                if (*f & LAB_LLAMA_FLAG_BARRIER_TIMEOUT) break;
                if (layers_globaltimer() - t0 > LAYERS_BARRIER_TIMEOUT_NS) {
                    atomicOr(b.flags, LAB_LLAMA_FLAG_BARRIER_TIMEOUT);
                    break;
                }
            }
        }
        __threadfence();  // acquire: the other blocks' writes (fenced before their arrivals) are visible
    }
    __syncthreads();
}

// Where a GEMV phase's x comes from.
enum { LAYERS_X_NORM = 0, LAYERS_X_PLAIN = 1, LAYERS_X_GLU = 2 };
struct LayersX {
    int mode;
    const float* resid;    // NORM: the residual stream (written in this launch: ld.global.cg)
    const __half* norm_w;  // NORM: the gain (read-only)
    float inv;             // NORM: 1 / rms, the same in every block
    const __half* x;       // PLAIN: fp16 [k]; GLU: [gate | up], 2k values (written in this launch)
    __half* trace;         // fp16 [k] or null: x as staged, natural order (items of tile 0 write it)
};

// 1 / rms of resid[0 .. hidden), every block the same value (same loads, same order).
static __device__ __forceinline__ float layers_norm_inv(const float* resid, int hidden, float eps, float* red) {
    float ss = 0.f;
    for (int i = 4 * threadIdx.x; i < hidden; i += 4 * blockDim.x) {
        const float4 r = __ldcg(reinterpret_cast<const float4*>(resid + i));
        ss = fmaf(r.x, r.x, ss);
        ss = fmaf(r.y, r.y, ss);
        ss = fmaf(r.z, r.z, ss);
        ss = fmaf(r.w, r.w, ss);
    }
    ss = llama_block_sum(ss, red);
    return rsqrtf(ss / (float)hidden + eps);
}

// The 8 x values of packed row w, v[i] for input row rows[i] (8w + i, or perm[8w + i]).
static __device__ __forceinline__ void layers_x8(const LayersX& X, const int* perm, int k, int w, __half v[8],
                                                 int rows[8]) {
    if (perm) {
        const int4 a = __ldg(reinterpret_cast<const int4*>(perm) + 2 * w);
        const int4 b = __ldg(reinterpret_cast<const int4*>(perm) + 2 * w + 1);
        rows[0] = a.x; rows[1] = a.y; rows[2] = a.z; rows[3] = a.w;
        rows[4] = b.x; rows[5] = b.y; rows[6] = b.z; rows[7] = b.w;
        if (X.mode == LAYERS_X_NORM) {
            float r[8];
            __half g[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                r[i] = __ldcg(X.resid + rows[i]);
                g[i] = __ldg(X.norm_w + rows[i]);
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = __float2half_rn(__half2float(g[i]) * (r[i] * X.inv));
        } else {
            const unsigned short* xs = reinterpret_cast<const unsigned short*>(X.x);
            unsigned short a16[8], u16[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) a16[i] = __ldcg(xs + rows[i]);
            if (X.mode == LAYERS_X_GLU) {
#pragma unroll
                for (int i = 0; i < 8; ++i) u16[i] = __ldcg(xs + k + rows[i]);
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                v[i] = __ushort_as_half(a16[i]);
                if (X.mode == LAYERS_X_GLU) v[i] = lab_silu_mul(v[i], __ushort_as_half(u16[i]));
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) rows[i] = 8 * w + i;
    uint4 xv;
    if (X.mode == LAYERS_X_NORM) {
        const float4 r0 = __ldcg(reinterpret_cast<const float4*>(X.resid) + 2 * w);
        const float4 r1 = __ldcg(reinterpret_cast<const float4*>(X.resid) + 2 * w + 1);
        const uint4 gv = __ldg(reinterpret_cast<const uint4*>(X.norm_w) + w);
        const __half* g = reinterpret_cast<const __half*>(&gv);
        const float r[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = __float2half_rn(__half2float(g[i]) * (r[i] * X.inv));
        return;
    }
    xv = __ldcg(reinterpret_cast<const uint4*>(X.x) + w);
    if (X.mode == LAYERS_X_GLU) xv = lab_silu_mul8(xv, __ldcg(reinterpret_cast<const uint4*>(X.x + k) + w));
    const __half* h = reinterpret_cast<const __half*>(&xv);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = h[i];
}

// What a GEMV phase does with each finished column.
struct LayersOut {
    float* resid;        // non-null: resid[c] += fp16 y[c] (o and down)
    float* resid_trace;  // non-null: a copy of the new resid[c] (the trace's residual_attn)
};

// Shared memory of a GEMV item (static, reused item after item).
struct LayersGemvSmem {
    uint4 xs[LAB_GEMV_V6_XS_ROWS / 8];  // the slice's x as lane pairs (8 KB)
    float4 part[LAYERS_WARPS][32];       // per warp: 128 column partials (4 KB)
    bool is_last;
};

static __device__ __forceinline__ void layers_finish(const lab_layers_phase& ph, const LayersOut& o, int c, float v) {
    const __half y = __float2half_rn(v);
    reinterpret_cast<__half*>(ph.y)[c] = y;
    if (o.resid) {
        const float r = __ldcg(o.resid + c) + __half2float(y);
        o.resid[c] = r;
        if (o.resid_trace) o.resid_trace[c] = r;
    }
}

// One (tile, slice) item of part `pt`: gemv_v6_pipe's block (gemv_v6_pipe.cu, steps 1-5).
static __device__ __forceinline__ void layers_gemv_item(const lab_layers_phase& ph, const lab_layers_part& pt, int tile, int slice,
                                        const LayersX& X, const LayersOut& out, float* workspace,
                                        unsigned* tickets, LayersGemvSmem& sh) {
    constexpr int TILE = LAB_GEMV_V6_TILE_N;
    lab_gemm_params g = {};  // the fields lab_v6_load reads
    g.n = pt.n;
    g.scales = pt.scales;
    g.qzeros = pt.qzeros;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int col = TILE * tile + 4 * lane;
    const bool active = col < pt.n;
    const int slice_words = ph.k_slice >> 3;
    const int w_begin = slice * slice_words;
    const int w_end = min(ph.k >> 3, w_begin + slice_words);
    const int nchunks = (w_end - w_begin + LAB_V6_CW - 1) / LAB_V6_CW;
    const int gshift = pt.group_size >= ph.k ? 31 : __ffs(pt.group_size) - 1;
    const bool sym = pt.zero_mode == LAB_ZEROS_SYMMETRIC;
    const int* perm = reinterpret_cast<const int*>(pt.perm);

    // 1. The first chunk's loads before anything else (DEPTH 2: gemv_v6_pipe's pipeline; a deeper
    // one needs 19 more registers per buffer, and this kernel is at its 128).
    LabV6Chunk buf[2];
    const int c0 = warp;
    const uint4* qw_col = reinterpret_cast<const uint4*>(pt.qweight) + (col >> 2);
    if (active) lab_v6_issue_first<LAYERS_WARPS, 2>(g, qw_col, w_begin, w_end, nchunks, c0, col, gshift, sym, buf);

    // 2. Stage the slice's x (normalized / gated / plain, permuted), zero past the slice.
    for (int i = threadIdx.x; i < nchunks * LAB_V6_CW; i += blockDim.x) {
        __half v[8];
        int rows[8];
        const bool valid = w_begin + i < w_end;
        if (valid) {
            layers_x8(X, perm, ph.k, w_begin + i, v, rows);
            if (X.trace && tile == 0) {
#pragma unroll
                for (int j = 0; j < 8; ++j) X.trace[rows[j]] = v[j];
            }
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = __float2half_rn(0.f);
        }
        // lane pairs (i, i + 4), as lab_pair_x arranges them
        sh.xs[i] = make_uint4(lab_half2_as_u32(__halves2half2(v[0], v[4])), lab_half2_as_u32(__halves2half2(v[1], v[5])),
                              lab_half2_as_u32(__halves2half2(v[2], v[6])), lab_half2_as_u32(__halves2half2(v[3], v[7])));
    }
    __syncthreads();

    // 3. The double-buffered weight loop of v6.
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (active) lab_v6_stream<LAYERS_WARPS, 2>(g, qw_col, w_begin, w_end, nchunks, c0, col, gshift, sym, buf, sh.xs, acc);

    // 4. Sum the k-lanes.
    sh.part[warp][lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    __syncthreads();
    const int t = threadIdx.x;
    const int o = TILE * tile + t;  // column within the part
    float total = 0.f;
    if (t < TILE) {
#pragma unroll
        for (int i = 0; i < LAYERS_WARPS; ++i) total += reinterpret_cast<const float*>(sh.part[i])[t];
    }
    if (ph.split == 1) {
        if (t < TILE && o < pt.n) layers_finish(ph, out, pt.col0 + o, total);
    } else {
        // 5. Split-K: partials at the phase column, one ticket per (part, tile).
        float* partial = workspace + pt.col0;
        unsigned* ticket = tickets + pt.tile0 + tile;
        if (t < TILE) {
            if (o < pt.n) atomicAdd(partial + o, total);
            __threadfence();
        }
        __syncthreads();
        if (t == 0) sh.is_last = atomicAdd(ticket, 1u) == (unsigned)ph.split - 1;
        __syncthreads();
        if (sh.is_last && t < TILE) {
            __threadfence();
            if (o < pt.n) {
                const float v = __ldcg(partial + o);
                partial[o] = 0.f;
                layers_finish(ph, out, pt.col0 + o, v);
            }
            if (t == 0) *ticket = 0u;
        }
    }
    __syncthreads();  // xs, part and is_last are reused by the next item
}

// The part of phase item `item` and the item's (tile, slice).
static __device__ __forceinline__ const lab_layers_part& layers_item(const lab_layers_phase& ph, int item, int& tile,
                                                                     int& slice) {
    int pi = 0;
    while (pi + 1 < ph.n_parts && item >= ph.part[pi + 1].item0) ++pi;
    const lab_layers_part& pt = ph.part[pi];
    const int tiles = (pt.n + LAB_GEMV_V6_TILE_N - 1) / LAB_GEMV_V6_TILE_N;
    const int local = item - pt.item0;
    tile = local % tiles;
    slice = local / tiles;
    return pt;
}

static __device__ __forceinline__ void layers_gemv_phase(const lab_layers_phase& ph, const LayersX& X, const LayersOut& out,
                                         const lab_llama_layers_params& P, LayersGemvSmem& sh) {
    for (int item = blockIdx.x; item < ph.items; item += gridDim.x) {
        int tile, slice;
        const lab_layers_part& pt = layers_item(ph, item, tile, slice);
        layers_gemv_item(ph, pt, tile, slice, X, out, reinterpret_cast<float*>(P.workspace),
                         reinterpret_cast<unsigned*>(P.tickets), sh);
    }
}

// L2 prefetch of the first rows of this block's items in phase `ph` (budget split between them).
static __device__ __forceinline__ void layers_prefetch(const lab_layers_phase& ph, int budget) {
    if (budget <= 0 || (int)blockIdx.x >= ph.items) return;
    const int mine = (ph.items - 1 - (int)blockIdx.x) / (int)gridDim.x + 1;
    const int each = budget / mine;
    for (int item = blockIdx.x; item < ph.items; item += gridDim.x) {
        int tile, slice;
        const lab_layers_part& pt = layers_item(ph, item, tile, slice);
        const int col0 = LAB_GEMV_V6_TILE_N * tile;
        const int w_begin = slice * (ph.k_slice >> 3);
        const int w_end = min(ph.k >> 3, w_begin + (ph.k_slice >> 3));
        lab_prefetch_l2_rows_any_arch(reinterpret_cast<const uint32_t*>(pt.qweight) + (size_t)w_begin * pt.n + col0,
                                      (size_t)pt.n * 4, w_end - w_begin, 4 * min(LAB_GEMV_V6_TILE_N, pt.n - col0),
                                      each);
    }
}

extern "C" __global__ void __launch_bounds__(LAB_LAYERS_THREADS, LAB_LAYERS_MIN_BLOCKS)
lab_llama_layers(lab_llama_layers_params P) {
    // Launched cooperatively without the PDL attribute, so the wait is a no-op (kept for the rule
    // that every decode kernel waits before touching memory); the dependents (the final norm,
    // launched with PDL) are released only in the last layer's down phase, so their blocks do not
    // sit on the SMs for the whole step.
    LAB_PDL_WAIT();
    extern __shared__ float attn_smem[];
    __shared__ LayersGemvSmem sh;
    __shared__ float red[32];

    __shared__ unsigned long long bar_target;
    LayersBarrier bar;
    bar.ctr = reinterpret_cast<unsigned long long*>(P.barrier);
    bar.flags = reinterpret_cast<int*>(P.attn.state) + LAB_LLAMA_STATE_FLAGS;
    bar.target = &bar_target;
    if (threadIdx.x == 0) {
        const unsigned long long v = layers_ld_acquire(bar.ctr);
        bar_target = v - v % gridDim.x;  // this launch's base (top comment)
    }

    float* resid = reinterpret_cast<float*>(P.resid);
    const lab_layers_layer* layers = reinterpret_cast<const lab_layers_layer*>(P.layers);
    const int attn_items = P.attn.heads * P.attn.n_splits;
    // Phases of a layer, in order; one GEMV call site for the four GEMV phases (one inlined copy of
    // the weight loop, not four).
    enum { PH_QKV = 0, PH_ATTN, PH_O, PH_GATE_UP, PH_DOWN, PH_COUNT };
    for (int l = P.layer_begin; l < P.layer_end; ++l) {
        const lab_layers_layer& L = layers[l];
        for (int ph = 0; ph < PH_COUNT; ++ph) {
            if (P.barriers_only) {
                // The barriers' cost alone (the bench): no work, no prefetch.
            } else if (ph == PH_ATTN) {
                // (head, split) items, head fastest.
                lab_llama_attn_params a = P.attn;
                a.k_cache = L.k_cache;
                a.v_cache = L.v_cache;
                for (int item = blockIdx.x; item < attn_items; item += gridDim.x) {
                    llama_attn_block(a, item % a.heads, item / a.heads, attn_smem);
                    __syncthreads();  // its shared memory is reused by the next item
                }
            } else {
                if (ph == PH_DOWN && l + 1 == P.layer_end) LAB_PDL_LAUNCH();
                const lab_layers_phase& G = ph == PH_QKV ? L.qkv : ph == PH_O ? L.o : ph == PH_GATE_UP ? L.gate_up : L.down;
                LayersX X;
                X.mode = ph == PH_O ? LAYERS_X_PLAIN : ph == PH_DOWN ? LAYERS_X_GLU : LAYERS_X_NORM;
                X.resid = resid;
                X.norm_w = reinterpret_cast<const __half*>(ph == PH_QKV ? L.attn_norm : L.ffn_norm);
                X.inv = 0.f;
                if (X.mode == LAYERS_X_NORM) X.inv = layers_norm_inv(resid, P.hidden, P.eps, red);
                X.x = reinterpret_cast<const __half*>(ph == PH_O ? P.attn.out : P.gate_up);
                X.trace = reinterpret_cast<__half*>(ph == PH_QKV ? P.trace_attn_norm
                                                    : ph == PH_GATE_UP ? P.trace_ffn_norm
                                                    : ph == PH_DOWN ? P.trace_act : 0ull);
                // o and down add into the residual stream (o also leaves a trace copy of it).
                LayersOut out;
                out.resid = (ph == PH_O || ph == PH_DOWN) ? resid : nullptr;
                out.resid_trace = ph == PH_O ? reinterpret_cast<float*>(P.trace_resid_attn) : nullptr;
                layers_gemv_phase(G, X, out, P, sh);
            }
            // The next GEMV phase's first rows into L2, then the barrier (none after the last phase).
            const bool last = l + 1 == P.layer_end && ph == PH_DOWN;
            if (last) break;
            // o's rows go out once, before the attention phase (which reads no weights).
            if (ph != PH_ATTN && !P.barriers_only) {
                const lab_layers_phase& next = ph == PH_QKV    ? L.o
                                             : ph == PH_O      ? L.gate_up
                                             : ph == PH_GATE_UP ? L.down
                                                                : layers[l + 1].qkv;
                layers_prefetch(next, P.prefetch_bytes);
            }
            layers_barrier(bar);
        }
    }
}
