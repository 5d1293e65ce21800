// fp16 GEMV for the decode engine: y[n] = sum_k W[n][k] x[k], W row-major [n, k] (the HF
// nn.Linear and lm_head layout, so the checkpoint's tensor is used as is), fp32 accumulate.
//   lab_llama_gemv_f16  v1: one warp per output row, 16-byte loads of W and x, 4 loads in flight
//                           per lane; writes fp16 and/or fp32 (logits) outputs.
// Serves the fp16 lm_head (4096 x 32000: 262 MB, the largest single read of an int4 step) and the
// fp16 linears when cuBLAS is not available. Checked by: cargo test --release --test gpu_decode.
#include "llama/util.cuh"

#define LLAMA_GEMV_WARPS 8

extern "C" __global__ void __launch_bounds__(LLAMA_GEMV_WARPS * 32)
lab_llama_gemv_f16(lab_llama_gemv_f16_params p) {
    LAB_PDL_LAUNCH();
    // PDL prologue (kernels/common/pdl.cuh): the first 32 KB of this block's rows (contiguous,
    // 8 rows x 8 KB at hidden 4096) into L2 while the final norm runs, then wait for it.
    {
        const int row0 = blockIdx.x * LLAMA_GEMV_WARPS;
        const int rows = min(LLAMA_GEMV_WARPS, p.n - row0);
        const size_t bytes = rows > 0 ? (size_t)rows * p.k * 2 : 0;
        lab_prefetch_l2_rows(reinterpret_cast<const __half*>(p.w) + (size_t)row0 * p.k, 128,
                             (int)(bytes >> 7), 128, LAB_PDL_PREFETCH_BYTES);
    }
    LAB_PDL_WAIT();
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * LLAMA_GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= p.n) return;  // warp-uniform
    const int k16 = p.k / 8;  // 16-byte words per row
    const uint4* w = reinterpret_cast<const uint4*>(p.w) + (size_t)row * k16;
    const uint4* x = reinterpret_cast<const uint4*>(p.x);
    float acc = 0.f;
    int i = lane;
    for (; i + 96 < k16; i += 128) {
        uint4 a0 = __ldcs(w + i), a1 = __ldcs(w + i + 32), a2 = __ldcs(w + i + 64), a3 = __ldcs(w + i + 96);
        uint4 b[4] = {x[i], x[i + 32], x[i + 64], x[i + 96]};
        uint4 a[4] = {a0, a1, a2, a3};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const __half2* wh = reinterpret_cast<const __half2*>(&a[u]);
            const __half2* xh = reinterpret_cast<const __half2*>(&b[u]);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 fw = __half22float2(wh[j]), fx = __half22float2(xh[j]);
                acc = fmaf(fw.x, fx.x, acc);
                acc = fmaf(fw.y, fx.y, acc);
            }
        }
    }
    for (; i < k16; i += 32) {
        const uint4 a = __ldcs(w + i), b = x[i];
        const __half2* wh = reinterpret_cast<const __half2*>(&a);
        const __half2* xh = reinterpret_cast<const __half2*>(&b);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float2 fw = __half22float2(wh[j]), fx = __half22float2(xh[j]);
            acc = fmaf(fw.x, fx.x, acc);
            acc = fmaf(fw.y, fx.y, acc);
        }
    }
    acc = llama_warp_sum(acc);
    if (lane == 0) {
        if (p.y_f32) reinterpret_cast<float*>(p.y_f32)[row] = acc;
        if (p.y_f16) reinterpret_cast<__half*>(p.y_f16)[row] = __float2half_rn(acc);
    }
}
