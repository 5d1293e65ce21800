// The gated input of a LLaMA MLP's down projection: act[r] = silu(gate[r]) * up[r], rounded to
// fp16. One definition for the standalone kernel (lab_llama_silu_mul) and for the int4 GEMVs that
// compute it while loading x (lab_gemm_params.x_glu), so both give the same bits.
//
// Why in the GEMV: the down projection is the only reader of act, and every int4 GEMV already
// reads x from L2 per block (v6 and the engine's q4 once into shared memory, v2/v4/v5 per chunk).
// Computing act there drops one launch per layer (32 of a 7B step) and the act round trip; the
// GEMV reads 2 x the x bytes instead (gate and up: 2 x 22 KB at 7B, from L2).
#ifndef LAB_GLU_CUH
#define LAB_GLU_CUH
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ __half lab_silu_mul(__half gate, __half up) {
    const float a = __half2float(gate), u = __half2float(up);
    return __float2half_rn(a / (1.f + __expf(-a)) * u);
}

// 8 gated values from 8 gate and 8 up values (16 bytes each, same element order).
__device__ __forceinline__ uint4 lab_silu_mul8(uint4 gate, uint4 up) {
    uint4 r;
    const __half* g = reinterpret_cast<const __half*>(&gate);
    const __half* u = reinterpret_cast<const __half*>(&up);
    __half* o = reinterpret_cast<__half*>(&r);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = lab_silu_mul(g[i], u[i]);
    return r;
}
#endif
