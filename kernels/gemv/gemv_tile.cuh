// The batch-1 int4 GEMV tile shared by v2 (plain), v4 (perm gather) and v5 (split-K).
// Kernel versions and their files: see the top comment of gemv_v2_vec.cu.
//
// Thread mapping (block = WARPS warps, one block per 32 output columns):
//   lane & 7      -> 4 adjacent columns col = 32*blockIdx.x + 4*(lane & 7), one uint4 of qweight
//   lane >> 3     -> with the warp index, a "k-lane" kl = 4*warp + (lane >> 3), KL = 4*WARPS of them
//   k-lane kl owns chunks of U consecutive packed rows (8U k-rows): rows w0 .. w0+U-1 with
//   w0 = w_begin + U*(kl + KL*it). One warp load instruction covers 4 packed rows x 128 B, i.e.
//   4 full 128-byte segments: every DRAM sector fetched is used.
// Groups: a chunk never straddles a group boundary when group_size/8 is a multiple of U (host-checked;
// per-channel has no boundary), so scales and zeros are read once per chunk.
// Reduction: the 4 k-lanes of a warp by shuffles, the WARPS warps through shared memory.
#ifndef LAB_GEMV_TILE_CUH
#define LAB_GEMV_TILE_CUH
#include <cuda_fp16.h>
#include <stdint.h>
#include "abi.h"
#include "pdl.cuh"
#include "int4_dequant.cuh"
#include "warp_reduce.cuh"
#include "glu.cuh"

#define LAB_GEMV_TILE_N 32  // output columns per block: 8 threads x 4 columns

// Shift that maps a row to its group: group_size is a power of two (host-checked), or equals k
// (per-channel), where 31 sends every row (< 2^31) to group 0.
__device__ __forceinline__ int lab_group_shift(const lab_gemm_params& p) {
    return p.group_size >= p.k ? 31 : __ffs(p.group_size) - 1;
}

// x values of packed row w arranged as lane pairs. PERM: row r of the (reordered) weights multiplies
// x[perm[r]] (fused gather; a null perm falls back to the plain 16-byte load). Rows past `valid`
// give x = 0, so their (finite) weights add exactly nothing. No gated input here: these loads sit
// in the per-chunk loop of v2/v4/v5, where an x_glu branch cost 6-30% even with x_glu = 0 (H100,
// run 9a5481c's gemv.md against 31757ac's); v6 stages x once per block with lab_stage_x_pairs.
template <bool PERM>
__device__ __forceinline__ void lab_load_x_pairs(const lab_gemm_params& p, int w, bool valid, half2 xp[4]) {
    const __half* x = reinterpret_cast<const __half*>(p.x);
    if (!valid) {
        const half2 z = __float2half2_rn(0.f);
        xp[0] = z; xp[1] = z; xp[2] = z; xp[3] = z;
        return;
    }
    if (PERM && p.perm != 0) {
        const int4* perm4 = reinterpret_cast<const int4*>(p.perm) + 2 * w;  // perm[8w .. 8w+7]
        const int4 a = __ldg(perm4), b = __ldg(perm4 + 1);
        xp[0] = __halves2half2(__ldg(x + a.x), __ldg(x + b.x));  // (row 0, row 4)
        xp[1] = __halves2half2(__ldg(x + a.y), __ldg(x + b.y));  // (row 1, row 5)
        xp[2] = __halves2half2(__ldg(x + a.z), __ldg(x + b.z));  // (row 2, row 6)
        xp[3] = __halves2half2(__ldg(x + a.w), __ldg(x + b.w));  // (row 3, row 7)
    } else {
        lab_pair_x(__ldg(reinterpret_cast<const uint4*>(x) + w), xp);
    }
}

// lab_load_x_pairs<true> for a kernel that stages x once per block (v6), which also honours a
// gated input: with p.x_glu, x[i] = silu(gate[i]) * up[i] from the fused [gate | up] at p.x
// (glu.cuh; gate and up gathered by the same permutation).
__device__ __forceinline__ void lab_stage_x_pairs(const lab_gemm_params& p, int w, bool valid, half2 xp[4]) {
    const __half* x = reinterpret_cast<const __half*>(p.x);
    if (!valid) {
        const half2 z = __float2half2_rn(0.f);
        xp[0] = z; xp[1] = z; xp[2] = z; xp[3] = z;
        return;
    }
    if (p.perm != 0) {
        const int4* perm4 = reinterpret_cast<const int4*>(p.perm) + 2 * w;  // perm[8w .. 8w+7]
        const int4 a = __ldg(perm4), b = __ldg(perm4 + 1);
        const int rows[8] = {a.x, b.x, a.y, b.y, a.z, b.z, a.w, b.w};  // lane-pair order
        __half v[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = __ldg(x + rows[i]);
        if (p.x_glu) {
            __half u[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) u[i] = __ldg(x + p.k + rows[i]);
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = lab_silu_mul(v[i], u[i]);
        }
        xp[0] = __halves2half2(v[0], v[1]);  // (row 0, row 4)
        xp[1] = __halves2half2(v[2], v[3]);  // (row 1, row 5)
        xp[2] = __halves2half2(v[4], v[5]);  // (row 2, row 6)
        xp[3] = __halves2half2(v[6], v[7]);  // (row 3, row 7)
    } else {
        uint4 xv = __ldg(reinterpret_cast<const uint4*>(x) + w);
        if (p.x_glu) xv = lab_silu_mul8(xv, __ldg(reinterpret_cast<const uint4*>(x + p.k) + w));
        lab_pair_x(xv, xp);
    }
}

// Accumulates this thread's 4 columns over packed rows [w_begin, w_end) into acc[0..3] (fp32).
// WARPS: warps per block (all along K); U: packed rows per chunk = independent 16-byte weight loads
// in flight per thread per iteration; PERM: see lab_load_x_pairs.
template <int WARPS, int U, bool PERM>
__device__ __forceinline__ void lab_gemv_tile_accumulate(const lab_gemm_params& p, int w_begin, int w_end,
                                                         int col, float acc[4]) {
    constexpr int KL = 4 * WARPS;
    const int kl = 4 * (threadIdx.x >> 5) + ((threadIdx.x & 31) >> 3);
    const int gshift = lab_group_shift(p);
    const bool sym = p.zero_mode == LAB_ZEROS_SYMMETRIC;
    const uint4* qw = reinterpret_cast<const uint4*>(p.qweight);
    const __half* scales = reinterpret_cast<const __half*>(p.scales);
    const uint32_t* qzeros = reinterpret_cast<const uint32_t*>(p.qzeros);
    const size_t n = (size_t)p.n;

    for (int w0 = w_begin + U * kl; w0 < w_end; w0 += U * KL) {
        // Issue all U weight loads first: U x 16 B in flight per thread.
        uint4 wq[U];
#pragma unroll
        for (int j = 0; j < U; ++j)
            wq[j] = (w0 + j < w_end) ? lab_ld_stream(qw + (((size_t)(w0 + j) * n + col) >> 2))
                                     : make_uint4(0u, 0u, 0u, 0u);
        // One group for the whole chunk (w0 is its first, always valid, row).
        const size_t g = (size_t)((w0 * 8) >> gshift);
        const uint2 sv = __ldg(reinterpret_cast<const uint2*>(scales + g * n + col));  // 4 scales
        // Zeros of columns col..col+3: nibbles (col % 8) .. (col % 8) + 3 of one qzeros word;
        // col % 8 is 0 or 4, so shift them down to bits 0..15.
        const uint32_t zw = sym ? 0x8888u : (__ldg(qzeros + g * (n >> 3) + (col >> 3)) >> (4 * (col & 7)));
        LabZeroConsts zc[4];
#pragma unroll
        for (int c = 0; c < 4; ++c) zc[c] = lab_zero_consts((zw >> (4 * c)) & 0xFu);

        float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int j = 0; j < U; ++j) {
            half2 xp[4];
            lab_load_x_pairs<PERM>(p, w0 + j, w0 + j < w_end, xp);
            const uint32_t words[4] = {wq[j].x, wq[j].y, wq[j].z, wq[j].w};
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                half2 d[4];
                lab_dequant_word(words[c], zc[c], d);
                t[c] += lab_dot_word(d, xp);
            }
        }
        const half2 s01 = lab_u32_as_half2(sv.x), s23 = lab_u32_as_half2(sv.y);
        acc[0] = fmaf(__low2float(s01), t[0], acc[0]);
        acc[1] = fmaf(__high2float(s01), t[1], acc[1]);
        acc[2] = fmaf(__low2float(s23), t[2], acc[2]);
        acc[3] = fmaf(__high2float(s23), t[3], acc[3]);
    }
}

// Sums acc over the block's k-lanes. Returns, in threads 0..31 (warp 0), the total of column
// 32*blockIdx.x + threadIdx.x; other threads return 0. Contains __syncthreads: call from all threads.
template <int WARPS>
__device__ __forceinline__ float lab_gemv_tile_reduce(float acc[4]) {
    __shared__ float part[WARPS][LAB_GEMV_TILE_N];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[c] = lab_warp_sum_bits<8, 16>(acc[c]);  // lanes l, l^8, l^16, l^24
    if (lane < 8) {
#pragma unroll
        for (int c = 0; c < 4; ++c) part[warp][4 * lane + c] = acc[c];
    }
    __syncthreads();
    float total = 0.f;
    if (warp == 0) {
#pragma unroll
        for (int i = 0; i < WARPS; ++i) total += part[i][lane];
    }
    return total;
}

__device__ __forceinline__ float lab_bias_at(const lab_gemm_params& p, int col) {
    return p.bias ? __half2float(reinterpret_cast<const __half*>(p.bias)[col]) : 0.f;
}

// The PDL prologue of a tile kernel (after LAB_PDL_LAUNCH in the kernel entry): L2 prefetch of the
// first p.prefetch_bytes of this block's weight tile (packed rows from w_begin, the tile's
// tile_n columns), then the wait. Weights only: nothing the previous grid writes is read before
// the wait (pdl.cuh).
__device__ __forceinline__ void lab_gemv_prefetch_then_wait(const lab_gemm_params& p, int tile_n, int w_begin,
                                                            int w_end) {
    const int col0 = tile_n * blockIdx.x;
    if (col0 < p.n)
        lab_prefetch_l2_rows(reinterpret_cast<const uint32_t*>(p.qweight) + (size_t)w_begin * p.n + col0,
                             (size_t)p.n * 4, w_end - w_begin, 4 * min(tile_n, p.n - col0), p.prefetch_bytes);
    LAB_PDL_WAIT();
}

// Whole-K GEMV of one 32-column tile: y[col] = sum_k x[k] W[k][col] (+ bias), m = 1. The kernel entry
// has run LAB_PDL_LAUNCH; this waits (after the weight prefetch).
template <int WARPS, int U, bool PERM>
__device__ __forceinline__ void lab_gemv_tile(const lab_gemm_params& p) {
    lab_gemv_prefetch_then_wait(p, LAB_GEMV_TILE_N, 0, p.k >> 3);
    const int col = LAB_GEMV_TILE_N * blockIdx.x + 4 * (threadIdx.x & 7);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    // n % 8 == 0 (host-checked), so col .. col+3 are all inside or all outside.
    if (col < p.n) lab_gemv_tile_accumulate<WARPS, U, PERM>(p, 0, p.k >> 3, col, acc);
    const float total = lab_gemv_tile_reduce<WARPS>(acc);
    const int out = LAB_GEMV_TILE_N * blockIdx.x + threadIdx.x;
    if (threadIdx.x < 32 && out < p.n)
        reinterpret_cast<__half*>(p.y)[out] = __float2half_rn(total + lab_bias_at(p, out));
}

#endif
