// Small helpers shared by the llama decode-op kernels (one unity translation unit per family,
// so everything here is static inline and prefixed llama_ to stay out of other files' way).
#ifndef LAB_LLAMA_UTIL_CUH
#define LAB_LLAMA_UTIL_CUH
#include <cuda_fp16.h>
#include <stdint.h>
#include "abi.h"
#include "pdl.cuh"
#include "glu.cuh"

// Sum over a warp (every lane gets the total).
static __device__ __forceinline__ float llama_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float llama_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum; every thread gets the total. `scratch` holds >= 32 floats; blockDim.x is a
// multiple of 32. Ends with a barrier, so scratch can be reused right after.
static __device__ __forceinline__ float llama_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = llama_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : 0.f;
    t = llama_warp_sum(t);
    __syncthreads();
    return t;
}

static __device__ __forceinline__ float llama_block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = llama_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : -INFINITY;
    t = llama_warp_max(t);
    __syncthreads();
    return t;
}

// Dot product of 8 fp16 values (one 16-byte load) with 8 fp32 values, fp32 accumulate.
static __device__ __forceinline__ float llama_dot8(uint4 w, const float* x) {
    const __half2* h = reinterpret_cast<const __half2*>(&w);
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float2 f = __half22float2(h[j]);
        acc = fmaf(f.x, x[2 * j], acc);
        acc = fmaf(f.y, x[2 * j + 1], acc);
    }
    return acc;
}

// Position of the token this step feeds, from the device state words (graph-replayable).
static __device__ __forceinline__ int llama_pos(uint64_t state) {
    return reinterpret_cast<const volatile int*>(state)[LAB_LLAMA_STATE_POS];
}

#endif
