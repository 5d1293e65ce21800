// Reference kernels: the slow, obviously right fp16 matmul and the two bandwidth probes.
//   ref_matmul_f16   v1: one output per thread, fp32 accumulate. Ground truth on the GPU side.
//   probe_copy       16-byte loads and stores, grid-stride: measured copy ceiling (bytes read + written).
//   probe_read       16-byte loads folded into a per-block sink: measured pure-read ceiling.
// Checked and timed by: lab bench --family probe (ceilings), lab check (ref_matmul against f64).
#include <cuda_fp16.h>
#include "abi.h"

extern "C" __global__ void lab_ref_matmul_f16(lab_ref_matmul_params p) {
    const __half* a = reinterpret_cast<const __half*>(p.a);
    const __half* b = reinterpret_cast<const __half*>(p.b);
    __half* c = reinterpret_cast<__half*>(p.c);
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    int m = blockIdx.y;
    if (n >= p.n || m >= p.m) return;
    float acc = 0.f;
    for (int k = 0; k < p.k; ++k)
        acc += __half2float(a[(size_t)m * p.k + k]) * __half2float(b[(size_t)k * p.n + n]);
    c[(size_t)m * p.n + n] = __float2half_rn(acc);
}

extern "C" __global__ void lab_probe_copy(lab_probe_params p) {
    const uint4* src = reinterpret_cast<const uint4*>(p.src);
    uint4* dst = reinterpret_cast<uint4*>(p.dst);
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n16; i += stride)
        dst[i] = src[i];
}

// Four independent 16-byte loads in flight per thread per iteration; the XOR fold keeps the
// loads alive, and one word per block is written so the compiler cannot drop them.
extern "C" __global__ void lab_probe_read(lab_probe_params p) {
    const uint4* src = reinterpret_cast<const uint4*>(p.src);
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint32_t acc = 0;
    for (; i + 3 * stride < p.n16; i += 4 * stride) {
        uint4 v0 = __ldcs(src + i), v1 = __ldcs(src + i + stride);
        uint4 v2 = __ldcs(src + i + 2 * stride), v3 = __ldcs(src + i + 3 * stride);
        acc ^= v0.x ^ v0.y ^ v0.z ^ v0.w ^ v1.x ^ v1.y ^ v1.z ^ v1.w;
        acc ^= v2.x ^ v2.y ^ v2.z ^ v2.w ^ v3.x ^ v3.y ^ v3.z ^ v3.w;
    }
    for (; i < p.n16; i += stride) {
        uint4 v = __ldcs(src + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    // Block-wide XOR so exactly one word per block is stored.
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
    __shared__ uint32_t warp_acc[32];
    if ((threadIdx.x & 31) == 0) warp_acc[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t a = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) a ^= warp_acc[w];
        reinterpret_cast<uint32_t*>(p.dst)[blockIdx.x] = a;
    }
}
