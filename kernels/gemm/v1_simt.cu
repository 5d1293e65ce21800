// Batch 2..64 int4 dequant-GEMM, SIMT (sm_75+): the baseline every later version must beat.
//   v1_simt  canonical qweight [k/8, n]; a block owns 64 columns x MT rows x its K slice; per 32-row
//            K step the weights are dequantized once into shared memory (fp32) and the activations
//            staged transposed (fp32), then every thread does MT/4 rows x 1 column of FMAs.
//            Split-K over grid.z with fp32 atomics + lab_gemm_v1_finish. Act-order via `perm`.
// Symbols: lab_gemm_v1_simt_m16 (m <= 16 per block row), lab_gemm_v1_simt_m64, lab_gemm_v1_finish.
// Checked by `lab check --family gemm`; timed by `lab bench --family gemm`.
//
// Block 256 threads = 64 columns (c = tid % 64) x 4 row groups (rg = tid / 64, rows rg*MT/4 ..).
// Shared: xs [32][MT + 4] fp32 (row pitch a multiple of 4 for float4 reads; + 4 spreads the
// transposing stores over 8 banks) + ws [32][64] fp32: MT=64 8704 + 8192 = 16896 B, MT=16 2560 + 8192.
// Per k: 1 LDS (weight, conflict-free) + MT/16 LDS.128 (activations, broadcast) for MT/4 FFMA.
// Grid (ceil(n / 64), ceil(m / MT), split_k). Weights are read with ld.global.cs (evict-first,
// available on every arch) because each word is used once per launch.
#include <cuda_fp16.h>
#include <stdint.h>
#include "abi.h"
#include "gemm_finish.cuh"

namespace gemm_v1 {

constexpr int THREADS = LAB_GEMM_V1_THREADS;
constexpr int BN = LAB_GEMM_V1_BN;
constexpr int BK = LAB_GEMM_V1_BK;
constexpr int RG = THREADS / BN;  // row groups
static_assert(BK / 8 == RG, "each row group dequantizes one packed word (8 K rows) per step");

// MT: activation rows per block (16 or 64); each thread accumulates MT / 4 rows of one column.
template <int MT>
__device__ __forceinline__ void body(const lab_gemm_params& p) {
    constexpr int MPT = MT / RG, XP = MT + 4;
    static_assert(MPT % 4 == 0, "float4 activation reads");
    __shared__ __align__(16) float xs[BK][XP];
    __shared__ float wsh[BK][BN];
    const int tid = threadIdx.x, c = tid % BN, rg = tid / BN;
    const int col = blockIdx.x * BN + c;
    const int m0 = blockIdx.y * MT;
    const int k_begin = blockIdx.z * p.k_slice;
    const int k_end = min(p.k, k_begin + p.k_slice);
    const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight);
    const uint32_t* qz = reinterpret_cast<const uint32_t*>(p.qzeros);
    const __half* sc = reinterpret_cast<const __half*>(p.scales);
    const __half* x = reinterpret_cast<const __half*>(p.x);
    const int* perm = reinterpret_cast<const int*>(p.perm);
    const bool zeros_true = p.zero_mode == LAB_ZEROS_TRUE;

    float acc[MPT];
#pragma unroll
    for (int r = 0; r < MPT; ++r) acc[r] = 0.f;

    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        {  // Row group rg dequantizes word (k0/8 + rg) of this column: K rows k0 + 8rg .. +8.
            const int kr = k0 + 8 * rg;
            float w[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) w[i] = 0.f;
            if (col < p.n && kr < k_end) {
                const uint32_t q = __ldcs(qw + (size_t)(kr / 8) * p.n + col);
                const int gi = kr / p.group_size;  // host: group_size % 8 == 0, so one group per word
                const float s = __half2float(sc[(size_t)gi * p.n + col]);
                const int z = zeros_true ? (int)((qz[(size_t)gi * (p.n / 8) + col / 8] >> (4 * (col % 8))) & 15u)
                                         : LAB_SYM_ZERO;
#pragma unroll
                for (int i = 0; i < 8; ++i) w[i] = s * (float)((int)((q >> (4 * i)) & 15u) - z);
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) wsh[8 * rg + i][c] = w[i];
        }
        // Activations, transposed: consecutive threads take consecutive k of one row (coalesced).
        for (int e = tid; e < MT * BK; e += THREADS) {
            const int kk = e % BK, r = e / BK, row = m0 + r, kx = k0 + kk;
            float v = 0.f;
            if (row < p.m && kx < k_end)
                v = __half2float(x[(size_t)row * p.k + (perm != nullptr ? perm[kx] : kx)]);
            xs[kk][r] = v;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < BK; ++kk) {
            const float w = wsh[kk][c];
#pragma unroll
            for (int r4 = 0; r4 < MPT / 4; ++r4) {
                const float4 xv = *reinterpret_cast<const float4*>(&xs[kk][rg * MPT + 4 * r4]);
                acc[4 * r4 + 0] = fmaf(xv.x, w, acc[4 * r4 + 0]);
                acc[4 * r4 + 1] = fmaf(xv.y, w, acc[4 * r4 + 1]);
                acc[4 * r4 + 2] = fmaf(xv.z, w, acc[4 * r4 + 2]);
                acc[4 * r4 + 3] = fmaf(xv.w, w, acc[4 * r4 + 3]);
            }
        }
        __syncthreads();
    }

    if (col >= p.n) return;
    __half* y = reinterpret_cast<__half*>(p.y);
    float* ws = reinterpret_cast<float*>(p.workspace);
    const __half* bias = reinterpret_cast<const __half*>(p.bias);
    const float b = (bias != nullptr && p.split_k <= 1) ? __half2float(bias[col]) : 0.f;
#pragma unroll
    for (int r = 0; r < MPT; ++r) {
        const int row = m0 + rg * MPT + r;
        if (row >= p.m) continue;
        const size_t o = (size_t)row * p.n + col;
        if (p.split_k > 1)
            atomicAdd(ws + o, acc[r]);
        else
            y[o] = __float2half_rn(acc[r] + b);
    }
}

}  // namespace gemm_v1

// params: lab_gemm_params (abi.h); qweight canonical u32 [k/8, n] (rows sorted by group when perm != 0).
extern "C" __global__ void __launch_bounds__(LAB_GEMM_V1_THREADS) lab_gemm_v1_simt_m16(lab_gemm_params p) {
    gemm_v1::body<16>(p);
}
extern "C" __global__ void __launch_bounds__(LAB_GEMM_V1_THREADS) lab_gemm_v1_simt_m64(lab_gemm_params p) {
    gemm_v1::body<64>(p);
}
// Split-K epilogue: y = fp16(workspace + bias).
extern "C" __global__ void lab_gemm_v1_finish(lab_gemm_params p) { gemm_finish(p); }
