// Split-K epilogue shared by every GEMM version: the K slices added their fp32 partials into
// workspace [m, n] (zeroed by the launcher); this pass adds the bias and rounds to fp16 once.
#pragma once
#include <cuda_fp16.h>
#include "abi.h"

__device__ __forceinline__ void gemm_finish(const lab_gemm_params& p) {
    const float* ws = reinterpret_cast<const float*>(p.workspace);
    const __half* bias = reinterpret_cast<const __half*>(p.bias);
    __half* y = reinterpret_cast<__half*>(p.y);
    const size_t total = (size_t)p.m * p.n;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        float v = ws[i];
        if (bias != nullptr) v += __half2float(bias[i % p.n]);
        y[i] = __float2half_rn(v);
    }
}
