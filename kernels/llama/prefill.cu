// LLaMA prefill: m prompt rows through a layer at once (src/model/gpu_prefill.rs drives them; the
// row-aware decode ops add_rmsnorm / rope_kv / silu_mul and the GEMM family do the rest).
//   lab_llama_prefill_embed  v1: grid (ceil(hidden/256), m): fp16 table rows of tokens[r] -> f32 residual rows;
//                                history[pos0 + r] = tokens[r]
//   lab_llama_prefill_attn   v1: causal attention of m queries over the cache, one block per (head,
//                                16-query tile), keys in 32-row shared-memory tiles, fp32 online softmax
//   lab_llama_repack_v2      v1: canonical u32 [k/8, n] codes -> gemm_v2_mma fragment order, one thread per
//                                prepared word (so the engine keeps ONE int4 copy, the GEMV's canonical one)
// Checked by: cargo test --release --test gpu_decode (prefill logits vs the f64 reference and the CPU
// engine; tokens after a prefill vs token-by-token); the index math of all three has a CPU emulation
// in src/model/gpu_prefill.rs (cargo test --release --lib model::gpu_prefill).
#include "llama/util.cuh"

extern "C" __global__ void lab_llama_prefill_embed(lab_llama_prefill_embed_params p) {
    LAB_PDL_ENTER();
    const int r = blockIdx.y;
    const int tok = reinterpret_cast<const int*>(p.tokens)[r];
    const bool bad = tok < 0 || tok >= p.vocab;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        if (bad) atomicOr(reinterpret_cast<int*>(p.state) + LAB_LLAMA_STATE_FLAGS, LAB_LLAMA_FLAG_BAD_TOKEN);
        const int pos = p.pos0 + r;
        if (pos >= 0 && pos < p.max_ctx) reinterpret_cast<int*>(p.history)[pos] = tok;
    }
    const __half* row = reinterpret_cast<const __half*>(p.table) + (size_t)(bad ? 0 : tok) * p.hidden;
    float* out = reinterpret_cast<float*>(p.resid) + (size_t)r * p.hidden;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.hidden) out[i] = bad ? __int_as_float(0x7fc00000) : __half2float(row[i]);
}

// ---- Causal prefill attention ----
// Block (head h, query tile t): queries q0 = 16t .. q0+15 (rows < m), positions pos0 + q0 + i; keys
// 0 .. pos0 + min(q0 + 16, m) - 1 in tiles of 32. Per key tile:
//   1. K, V tile -> smem (16-byte global loads, fp16; rows past the last key zero-filled)
//   2. scores S[i][j] = (q_i . k_j) * scale, fp32: 512 (query, key) pairs, 4 per thread
//   3. online softmax, one warp per query row (lane j = key j): m_new = max(m, max_j S), P = e^(S - m_new),
//      alpha = e^(m - m_new), l = l alpha + sum_j P; masked keys (key pos > query pos) give P = 0
//   4. O[i][d] = O[i][d] alpha_i + sum_j P[i][j] V[j][d]: thread owns (i, d) pairs tid + 128 u
// Shared memory (dynamic): q [16][hd] fp16 | K [32][hd+2] | V [32][hd] fp16 | S/P [16][32] f32 | m, l, alpha [16] f32.
//   hd 128: 4096 + 8320 + 8192 + 2048 + 192 = 22.3 KB (hd 256: 43.3 KB, under the 48 KB default)
// K rows are padded by 2 halves (hd/2 + 1 words, odd): in step 2 the 32 lanes of a warp read 32
//   different K rows at the same d, which would otherwise be a 32-way bank conflict at hd 128.
// Bytes and flops (7B layer, 512-token chunk from position 0, hd 128, 32 heads): each block reads
//   K and V of its keys once: 32 heads x 32 tiles x ~264 keys x 512 B = 138 MB per layer, L2-resident
//   (the layer's K and V at 512 positions are 8 MB); 4 hd flops per (query, key) pair, causal half:
//   32 x 512 x 256 x 512 = 2.1 GFLOP per layer. Expected ~30-60 us per layer on an H100 (L2 and fp32 FMA
//   bound), ~1-2 ms for the 32 layers, small beside the GEMMs (~13 GFLOP per token of int4 GEMM). Not
//   measured yet. A 16x16 mma tile per warp (flash-attention style) is the next version if it shows.
#define PF_THREADS LAB_LLAMA_PREFILL_ATTN_THREADS
#define PF_QT LAB_LLAMA_PREFILL_ATTN_QT
#define PF_KT LAB_LLAMA_PREFILL_ATTN_KT
#define PF_ACC (PF_QT * 256 / PF_THREADS)  // accumulators per thread at the largest head_dim (256)

// Registers (ptxas, CUDA 13.0): 168 on sm_90 (3 blocks per SM), 203-207 on sm_75..89 (2 blocks),
// no spills; the 32 accumulators
// are sized for hd 256 (half idle at hd 128) and the unrolled loop's per-u addresses are hoisted.
// __launch_bounds__(128, 4) forces 128 and spills 32 B: not taken. A per-hd template (16
// accumulators at hd <= 128) is the fix if occupancy shows; at 512 rows there are 32 x 32 = 1024
// blocks per layer, ~2.6 waves of 396 slots on an H100.
extern "C" __global__ void __launch_bounds__(PF_THREADS)
lab_llama_prefill_attn(lab_llama_prefill_attn_params p) {
    LAB_PDL_ENTER();
    extern __shared__ __align__(16) unsigned char pf_smem[];
    const int hd = p.head_dim, head = blockIdx.x, q0 = blockIdx.y * PF_QT;
    // hd is a power of two (the engine checks): (i, d) of a flat index by shift and mask, not by
    // an integer division (which costs a MUFU.RCP sequence per use).
    const int lg = __ffs(hd) - 1, dmask = hd - 1;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kv_dim = p.kv_heads * hd, row_w = p.heads * hd + 2 * kv_dim;
    const int kvh = head / (p.heads / p.kv_heads);
    const int nq = min(PF_QT, p.m - q0);
    const int kpitch = hd + 2;  // halves per padded K row
    __half* qs = reinterpret_cast<__half*>(pf_smem);
    __half* ks = qs + PF_QT * hd;
    __half* vs = ks + PF_KT * kpitch;
    float* ss = reinterpret_cast<float*>(vs + PF_KT * hd);  // 16-byte aligned: hd*(16+32+32)+64 halves
    float* mrow = ss + PF_QT * PF_KT;
    float* lrow = mrow + PF_QT;
    float* arow = lrow + PF_QT;

    const __half* qkv = reinterpret_cast<const __half*>(p.qkv);
    for (int e = tid; e < PF_QT * hd; e += PF_THREADS) {
        const int i = e >> lg, d = e & dmask;
        qs[e] = i < nq ? qkv[(size_t)(q0 + i) * row_w + head * hd + d] : __float2half(0.f);
    }
    if (tid < PF_QT) {
        mrow[tid] = -INFINITY;
        lrow[tid] = 0.f;
    }
    float acc[PF_ACC];
#pragma unroll
    for (int u = 0; u < PF_ACC; ++u) acc[u] = 0.f;

    const int n_keys = p.pos0 + q0 + nq;  // the last query of the tile sees keys 0 .. n_keys - 1
    const __half* kc = reinterpret_cast<const __half*>(p.k_cache) + (size_t)kvh * hd;
    const __half* vc = reinterpret_cast<const __half*>(p.v_cache) + (size_t)kvh * hd;
    const int pieces = hd / 8;  // 16-byte pieces per K/V row
    for (int k0 = 0; k0 < n_keys; k0 += PF_KT) {
        __syncthreads();  // the previous tile's K, V, P are no longer read (and q/m/l are written)
        for (int e = tid; e < PF_KT * pieces; e += PF_THREADS) {
            const int j = e >> (lg - 3), c = e & (pieces - 1), key = k0 + j;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (key < n_keys) {
                kv = *reinterpret_cast<const uint4*>(kc + (size_t)key * kv_dim + 8 * c);
                vv = *reinterpret_cast<const uint4*>(vc + (size_t)key * kv_dim + 8 * c);
            }
            // K rows are 4-byte aligned only (padded pitch): four 32-bit stores.
            uint32_t* kd = reinterpret_cast<uint32_t*>(ks + j * kpitch + 8 * c);
            kd[0] = kv.x;
            kd[1] = kv.y;
            kd[2] = kv.z;
            kd[3] = kv.w;
            *reinterpret_cast<uint4*>(vs + j * hd + 8 * c) = vv;
        }
        __syncthreads();
        for (int e = tid; e < PF_QT * PF_KT; e += PF_THREADS) {
            const int i = e / PF_KT, j = e % PF_KT;
            const __half2* qh = reinterpret_cast<const __half2*>(qs + i * hd);
            const __half2* kh = reinterpret_cast<const __half2*>(ks + j * kpitch);
            float s = 0.f;
            for (int d = 0; d < hd / 2; ++d) {
                const float2 a = __half22float2(qh[d]), b = __half22float2(kh[d]);
                s = fmaf(a.x, b.x, s);
                s = fmaf(a.y, b.y, s);
            }
            const bool visible = i < nq && k0 + j <= p.pos0 + q0 + i;
            ss[e] = visible ? s * p.scale : -INFINITY;
        }
        __syncthreads();
        for (int i = warp; i < PF_QT; i += PF_THREADS / 32) {
            const float s = ss[i * PF_KT + lane];
            const float m_old = mrow[i];
            const float m_new = fmaxf(m_old, llama_warp_max(s));
            // A row with no visible key yet keeps m = -inf: P = 0 and alpha = 0 (no NaN from -inf - -inf).
            const float pr = m_new == -INFINITY ? 0.f : expf(s - m_new);
            const float alpha = m_old == -INFINITY ? 0.f : expf(m_old - m_new);
            const float sum = llama_warp_sum(pr);
            ss[i * PF_KT + lane] = pr;
            if (lane == 0) {
                mrow[i] = m_new;
                lrow[i] = lrow[i] * alpha + sum;
                arow[i] = alpha;
            }
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < PF_ACC; ++u) {
            const int e = tid + u * PF_THREADS;
            if (e < PF_QT * hd) acc[u] *= arow[e >> lg];
        }
        // Keys outer, accumulators inner: the u loop must unroll (acc stays in registers), the j
        // loop need not (unrolling both made ~20k SASS instructions: 32 x 32 bodies).
#pragma unroll 2
        for (int j = 0; j < PF_KT; ++j) {
#pragma unroll
            for (int u = 0; u < PF_ACC; ++u) {
                const int e = tid + u * PF_THREADS;
                if (e < PF_QT * hd)
                    acc[u] = fmaf(ss[(e >> lg) * PF_KT + j], __half2float(vs[j * hd + (e & dmask)]), acc[u]);
            }
        }
    }
    __syncthreads();
    __half* out = reinterpret_cast<__half*>(p.out);
#pragma unroll
    for (int u = 0; u < PF_ACC; ++u) {
        const int e = tid + u * PF_THREADS;
        if (e < PF_QT * hd) {
            const int i = e >> lg, d = e & dmask;
            if (i < nq) {
                const float l = lrow[i];
                out[(size_t)(q0 + i) * p.heads * hd + head * hd + d] = __float2half_rn(l > 0.f ? acc[u] / l : 0.f);
            }
        }
    }
}

// ---- Canonical -> gemm_v2 fragment order (src/kernels/gemm_layout.rs is the definition) ----
// Prepared word w = ((kc * ceil(n/32) + nc) * 32 + lane) * 4 + j holds, in nibble i (p = i % 4,
// h = i / 4), the code of row 32 kc + 16 (p / 2) + 8 (p % 2) + 2 t + h and column 32 nc + 8 j + g
// (g = lane / 4, t = lane % 4); rows >= k and columns >= n are 0. The 8 nibbles come from 4 canonical
// words of one column (rows 2t, 2t+1 of each 8-row word), so each thread does 4 u32 loads.
// Bytes: read k n / 2 (each canonical word is read by the 4 lanes t = 0..3 of one column, from L1/L2),
// write the same: 1 B per weight, ~8 us for 7B's largest linear (4096 x 22016) at ~3 TB/s.
extern "C" __global__ void lab_llama_repack_v2(lab_llama_repack_params p) {
    LAB_PDL_ENTER();
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    const int n_chunks = (p.n + 31) / 32;
    const uint32_t* src = reinterpret_cast<const uint32_t*>(p.src);
    uint32_t* dst = reinterpret_cast<uint32_t*>(p.dst);
    for (uint64_t w = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; w < p.words; w += stride) {
        const int j = (int)(w & 3), lane = (int)((w >> 2) & 31);
        const uint64_t chunk = w >> 7;
        const int nc = (int)(chunk % n_chunks), kc = (int)(chunk / n_chunks);
        const int g = lane >> 2, t = lane & 3;
        const int col = 32 * nc + 8 * j + g;
        uint32_t out = 0;
        if (col < p.n) {
#pragma unroll
            for (int pp = 0; pp < 4; ++pp) {
                const int row = 32 * kc + 16 * (pp / 2) + 8 * (pp % 2) + 2 * t;  // h = 0; h = 1 is row + 1
                if (row < p.k) {  // k % 8 == 0: rows row and row + 1 lie in the same canonical word
                    const uint32_t word = src[(size_t)(row / 8) * p.n + col];
                    const int sh = 4 * (row % 8);
                    out |= ((word >> sh) & 0xFu) << (4 * pp);
                    out |= ((word >> (sh + 4)) & 0xFu) << (4 * (pp + 4));
                }
            }
        }
        dst[w] = out;
    }
}
