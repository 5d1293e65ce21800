// Batch-1 int4 dequant-GEMV family (x fp16 [m,k] . W int4 [k,n] -> y fp16 [m,n]); all versions:
//   v1 gemv_v1_naive.cu   naive: one output column per thread, g_idx read per row, fp32 math. Obviously right.
//   v2 gemv_v2_vec.cu     16-byte weight loads, lop3 magic-number dequant to half2, warp+smem reduction over K lanes.
//   v3 gemv_v3_gather.cu  act-order by g_idx gather: v2's loads, scale/zero looked up per row (the slow 2023 way).
//   v4 gemv_v4_perm.cu    act-order by load-time reorder: v2 with a fused x[perm[r]] gather (null perm = v2).
//   v5 gemv_v5_splitk.cu  split-K: v4's tile over K slices (grid.y), fp32 atomics, last block per tile finishes.
//   v6 gemv_v6_pipe.cu    128-column tiles, next chunk's loads in flight during the dequant, x (permuted) staged in smem, auto split-K.
//   baseline gemv_dequant.cu  dequant-to-fp16 W [k,n] for the "dequant + cuBLAS" baseline (cuBLAS fp16 is host-side).
// Checked by: lab check --family gemv      Timed by: lab bench --family gemv
#include <cuda_fp16.h>
#include <stdint.h>
#include "abi.h"
#include "pdl.cuh"
#include "glu.cuh"

// v1: grid (ceil(n / blockDim.x), m), one thread per output y[row][col]. Supports any m, any group
// size, g_idx (act-order in original row order) and both zero modes: the ground truth on the GPU side.
extern "C" __global__ void lab_gemv_v1_naive(lab_gemm_params p) {
    LAB_PDL_ENTER();
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = blockIdx.y;
    if (col >= p.n || row >= p.m) return;
    const __half* x = reinterpret_cast<const __half*>(p.x) + (size_t)row * p.k;   // fp16 [m, k]
    const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight);             // u32 [k/8, n]
    const uint32_t* qz = reinterpret_cast<const uint32_t*>(p.qzeros);              // u32 [groups, n/8]
    const __half* sc = reinterpret_cast<const __half*>(p.scales);                  // fp16 [groups, n]
    const int32_t* g_idx = reinterpret_cast<const int32_t*>(p.g_idx);              // i32 [k] or null
    const size_t n = (size_t)p.n;
    float acc = 0.f;
    for (int k = 0; k < p.k; ++k) {
        const size_t g = g_idx ? (size_t)g_idx[k] : (size_t)(k / p.group_size);
        const int q = (qw[(size_t)(k >> 3) * n + col] >> (4 * (k & 7))) & 0xF;
        const int z = p.zero_mode == LAB_ZEROS_TRUE ? (qz[g * (n >> 3) + (col >> 3)] >> (4 * (col & 7))) & 0xF : 8;
        // s * (q - z) is exact in fp32 (11-bit x 5-bit); one rounding per product and per add.
        const float w = __half2float(sc[g * n + col]) * (float)(q - z);
        const __half xk = p.x_glu ? lab_silu_mul(x[k], x[p.k + k]) : x[k];  // x_glu: m = 1 (abi.h)
        acc = fmaf(__half2float(xk), w, acc);
    }
    if (p.bias) acc += __half2float(reinterpret_cast<const __half*>(p.bias)[col]);
    reinterpret_cast<__half*>(p.y)[(size_t)row * n + col] = __float2half_rn(acc);
}
