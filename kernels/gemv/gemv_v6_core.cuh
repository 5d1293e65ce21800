// The per-thread core of gemv_v6_pipe (design numbers: the top comment of gemv_v6_pipe.cu): one
// chunk's loads and its dequantize-and-dot, shared by the v6 kernel and the persistent decode
// layers (kernels/llama/layers.cu), so both run the same weight loop.
#ifndef LAB_GEMV_V6_CORE_CUH
#define LAB_GEMV_V6_CORE_CUH
#include "gemv/gemv_tile.cuh"

#define LAB_V6_CW LAB_GEMV_V6_CHUNK_WORDS

// One chunk of one thread: 4 packed rows x 4 columns of codes, the 4 scales and the 4 zeros.
struct LabV6Chunk {
    uint4 w[LAB_V6_CW];
    uint2 s;     // fp16 scales of col .. col+3
    uint32_t z;  // zero nibbles of col .. col+3 in bits 0..15 (0x8888 when symmetric)
};

__device__ __forceinline__ uint32_t lab_half2_as_u32(half2 h) {
    uint32_t u;
    __builtin_memcpy(&u, &h, sizeof(u));
    return u;
}

// Issues every load of the chunk starting at packed row w0 (< w_end, a chunk bound): 4 x LDG.128
// (evict-first) + scales + zeros, nothing consumed here. qw_col = qweight + col / 4 as uint4s, so
// packed row w of this thread's columns is qw_col[w * n / 4] (n % 8 == 0, host-checked).
__device__ __forceinline__ void lab_v6_load(const lab_gemm_params& p, const uint4* qw_col, int w0, int w_end,
                                            int col, int gshift, bool sym, LabV6Chunk& c) {
    const size_t n = (size_t)p.n, row_stride = n >> 2;
    const uint4* q = qw_col + (size_t)w0 * row_stride;
#pragma unroll
    for (int j = 0; j < LAB_V6_CW; ++j)
        c.w[j] = (w0 + j < w_end) ? lab_ld_stream(q + j * row_stride) : make_uint4(0u, 0u, 0u, 0u);
    const size_t g = (size_t)((w0 * 8) >> gshift);
    c.s = __ldg(reinterpret_cast<const uint2*>(reinterpret_cast<const __half*>(p.scales) + g * n + col));
    // col % 8 is 0 or 4: the 4 nibbles of col .. col+3 shifted down to bits 0..15.
    c.z = sym ? 0x8888u
              : (__ldg(reinterpret_cast<const uint32_t*>(p.qzeros) + g * (n >> 3) + (col >> 3)) >> (4 * (col & 7)));
}

// acc[c] += scale[c] * sum over the chunk's 32 rows of x_r * (q_rc - z_c). Rows past the slice
// have zero codes and x = 0 in xs (staged so), so they add exactly 0.
__device__ __forceinline__ void lab_v6_compute(const LabV6Chunk& c, const uint4* xs, float acc[4]) {
    LabZeroConsts zc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) zc[i] = lab_zero_consts((c.z >> (4 * i)) & 0xFu);
    float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < LAB_V6_CW; ++j) {
        const uint4 xv = xs[j];  // LDS.128, one address per warp: broadcast
        const half2 xp[4] = {lab_u32_as_half2(xv.x), lab_u32_as_half2(xv.y), lab_u32_as_half2(xv.z),
                             lab_u32_as_half2(xv.w)};
        const uint32_t words[4] = {c.w[j].x, c.w[j].y, c.w[j].z, c.w[j].w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            half2 d[4];
            lab_dequant_word(words[i], zc[i], d);
            t[i] += lab_dot_word(d, xp);
        }
    }
    const half2 s01 = lab_u32_as_half2(c.s.x), s23 = lab_u32_as_half2(c.s.y);
    acc[0] = fmaf(__low2float(s01), t[0], acc[0]);
    acc[1] = fmaf(__high2float(s01), t[1], acc[1]);
    acc[2] = fmaf(__low2float(s23), t[2], acc[2]);
    acc[3] = fmaf(__high2float(s23), t[3], acc[3]);
}

// The weight loop, pipelined DEPTH deep: a thread holds DEPTH chunk buffers; DEPTH - 1 chunks are
// in flight while one is dequantized. Warp w owns chunks c0 = w, w + WARPS, ...; buf[s] holds the
// chunks whose place in that sequence is s mod DEPTH, so every buffer index is a compile-time
// constant (the unrolled stage loop) and the buffers stay in registers.
// lab_v6_issue_first: the first DEPTH - 1 chunks' loads (before the caller stages x, whose L2
// latency they hide); lab_v6_stream: the rest of the loop. Only for threads whose columns exist.
template <int WARPS, int DEPTH>
__device__ __forceinline__ void lab_v6_issue_first(const lab_gemm_params& p, const uint4* qw_col, int w_begin, int w_end,
                                                   int nchunks, int c0, int col, int gshift, bool sym,
                                                   LabV6Chunk (&buf)[DEPTH]) {
#pragma unroll
    for (int s = 0; s < DEPTH - 1; ++s) {
        const int c = c0 + s * WARPS;
        if (c < nchunks) lab_v6_load(p, qw_col, w_begin + LAB_V6_CW * c, w_end, col, gshift, sym, buf[s]);
    }
}

template <int WARPS, int DEPTH>
__device__ __forceinline__ void lab_v6_stream(const lab_gemm_params& p, const uint4* qw_col, int w_begin, int w_end,
                                              int nchunks, int c0, int col, int gshift, bool sym,
                                              LabV6Chunk (&buf)[DEPTH], const uint4* xs, float acc[4]) {
    for (int base = c0; base < nchunks; base += DEPTH * WARPS) {
#pragma unroll
        for (int s = 0; s < DEPTH; ++s) {
            const int c = base + s * WARPS;
            if (c >= nchunks) break;  // warp-uniform
            const int next = c + (DEPTH - 1) * WARPS;
            if (next < nchunks)
                lab_v6_load(p, qw_col, w_begin + LAB_V6_CW * next, w_end, col, gshift, sym, buf[(s + DEPTH - 1) % DEPTH]);
            lab_v6_compute(buf[s], xs + LAB_V6_CW * c, acc);
        }
    }
}

// The end of v6's and v10's weight loop: the WARPS k-lanes' column sums through shared memory
// (`part`, float4 stores: conflict-free), thread t < TILE summing column t into `total`; with one K
// slice (grid.y == 1) that is y, written here, and the function returns true (nothing left).
template <int WARPS, int TILE>
__device__ __forceinline__ bool lab_v6_lane_sum(const lab_gemm_params& p, float4 (*part)[32], const float acc[4],
                                                int warp, int lane, int t, int out, float& total) {
    part[warp][lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    __syncthreads();
    total = 0.f;
    if (t < TILE) {
#pragma unroll
        for (int i = 0; i < WARPS; ++i) total += reinterpret_cast<const float*>(part[i])[t];
    }
    if (gridDim.y == 1) {
        if (t < TILE && out < p.n)
            reinterpret_cast<__half*>(p.y)[out] = __float2half_rn(total + lab_bias_at(p, out));
        return true;
    }
    return false;
}

// The split-K epilogue of v6 and v10 (v5's scheme): workspace = f32 [n] partials, then u32
// tickets, one per 128-column tile (ceil(n/128) <= the ceil(n/32) the workspace holds). Each block
// adds its column sums `total` (thread t < TILE owns column `out`); the tile's last block writes y
// and re-zeroes its partials and ticket for the next launch.
template <int TILE>
__device__ __forceinline__ void lab_v6_splitk_store(const lab_gemm_params& p, float total, int t, int out) {
    float* partial = reinterpret_cast<float*>(p.workspace);
    unsigned int* tickets = reinterpret_cast<unsigned int*>(partial + p.n);
    __shared__ bool is_last;
    if (t < TILE) {
        if (out < p.n) atomicAdd(partial + out, total);
        __threadfence();  // our sums are visible device-wide before our ticket is taken
    }
    __syncthreads();
    if (t == 0) is_last = atomicAdd(tickets + blockIdx.x, 1u) == gridDim.y - 1;
    __syncthreads();
    if (is_last && t < TILE) {
        __threadfence();  // every other slice fenced its sums before its ticket: read them now
        if (out < p.n) {
            const float v = __ldcg(partial + out);  // L2, where the atomics were performed
            reinterpret_cast<__half*>(p.y)[out] = __float2half_rn(v + lab_bias_at(p, out));
            partial[out] = 0.f;  // leave the workspace zeroed for the next launch
        }
        if (t == 0) tickets[blockIdx.x] = 0u;
    }
}

#endif
