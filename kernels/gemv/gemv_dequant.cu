// Baseline helper: dequantize int4 W to fp16 [k, n] for "dequant + cuBLAS fp16" (family list: top
// of gemv_v1_naive.cu). Checked by: lab check --family gemv (variant gemv_dequant_cublas).
#include <cuda_fp16.h>
#include <stdint.h>
#include "abi.h"
#include "pdl.cuh"

// grid (ceil(n / blockDim.x), k / 8): one thread per packed word (8 rows x 1 column). Writes
// W[r][col] = fp16(scale[g][col] * (q - z)) (one rounding: 2^-11 relative) into p.y, which for this
// kernel is the fp16 [k, n] weight buffer (m is ignored). Any group size, g_idx or not.
// Act-order held reordered (rows sorted by group, p.perm = checkpoint row of sorted row r): row r
// is written to row perm[r], so the buffer is W in checkpoint order and multiplies x as it is
// (the GEMM after it needs no gathered x). Each written row is still n contiguous values.
// Column slices (p.ld_w != 0): qweight / scales / qzeros point at the slice's first column and
// have row stride ld_w; n is the slice's width, so the buffer is that slice as fp16 [k, n]. The
// prefill dequantizes a wide linear slice by slice into a smaller scratch (gpu_prefill/sizes.rs
// dequant_slices: 13B's gate|up is 283 MB of fp16 whole).
extern "C" __global__ void lab_dequant_f16_v1(lab_gemm_params p) {
    LAB_PDL_ENTER();
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int w = blockIdx.y;
    if (col >= p.n || w >= (p.k >> 3)) return;
    const size_t n = (size_t)p.n, ld = p.ld_w ? (size_t)p.ld_w : n;
    const uint32_t word = reinterpret_cast<const uint32_t*>(p.qweight)[(size_t)w * ld + col];
    const uint32_t* qz = reinterpret_cast<const uint32_t*>(p.qzeros);
    const __half* sc = reinterpret_cast<const __half*>(p.scales);
    const int32_t* g_idx = reinterpret_cast<const int32_t*>(p.g_idx);
    const int32_t* perm = reinterpret_cast<const int32_t*>(p.perm);
    __half* out = reinterpret_cast<__half*>(p.y);
    for (int i = 0; i < 8; ++i) {
        const int r = 8 * w + i;
        const size_t g = g_idx ? (size_t)g_idx[r] : (size_t)(r / p.group_size);
        const int q = (word >> (4 * i)) & 0xF;
        const int z = p.zero_mode == LAB_ZEROS_TRUE ? (qz[g * (ld >> 3) + (col >> 3)] >> (4 * (col & 7))) & 0xF : 8;
        const size_t dst = perm ? (size_t)perm[r] : (size_t)r;
        out[dst * n + col] = __float2half_rn(__half2float(sc[g * ld + col]) * (float)(q - z));
    }
}
