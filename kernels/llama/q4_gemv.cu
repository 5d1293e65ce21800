// The decode engine's own int4 GEMV (batch 1, canonical GPTQ layout): the stopgap that keeps the
// engine whole until the registry's tuned GEMV variants (branch gemv) serve its linears.
//   lab_llama_q4_gemv    v1: thread per output column, split-K over grid.y, fp32 atomicAdd into a
//                            workspace; x slice (permuted by perm for act-order) staged in shared memory;
//                            groups from k / group_size, or from g_idx per row (slow path, any g_idx).
//   lab_llama_q4_finish  v1: fp16 y = workspace, and the workspace zeroed again for the next launch
//                            (so a captured graph needs no memset node).
// Dequant: W[k][n] = scale[g][n] * (q[k][n] - zero[g][n]) with TRUE zeros (canonical form), zero 8
// when zero_mode is LAB_ZEROS_SYMMETRIC. Checked by: cargo test --release --test gpu_decode.
#include "llama/util.cuh"

#define LLAMA_Q4_COLS 128  // threads per block = output columns per block

static __device__ __forceinline__ float llama_q4_zero(const lab_gemm_params& p, int g, int col) {
    if (p.zero_mode == LAB_ZEROS_SYMMETRIC) return (float)LAB_SYM_ZERO;
    const uint32_t z = reinterpret_cast<const uint32_t*>(p.qzeros)[(size_t)g * (p.n / 8) + col / 8];
    return (float)((z >> (4 * (col % 8))) & 0xF);
}

// Shared memory (dynamic): x slice as f32 [k_slice].
extern "C" __global__ void __launch_bounds__(LLAMA_Q4_COLS) lab_llama_q4_gemv(lab_gemm_params p) {
    LAB_PDL_ENTER();
    extern __shared__ float xs[];
    const int col = blockIdx.x * LLAMA_Q4_COLS + threadIdx.x;
    const int k0 = blockIdx.y * p.k_slice;
    const int k1 = min(k0 + p.k_slice, p.k);
    const __half* x = reinterpret_cast<const __half*>(p.x);
    const int* perm = reinterpret_cast<const int*>(p.perm);
    for (int r = k0 + threadIdx.x; r < k1; r += blockDim.x) {
        const int i = perm ? perm[r] : r;
        xs[r - k0] = __half2float(p.x_glu ? lab_silu_mul(x[i], x[p.k + i]) : x[i]);  // glu.cuh
    }
    __syncthreads();
    if (col >= p.n || k0 >= k1) return;

    const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight);
    const __half* sc = reinterpret_cast<const __half*>(p.scales);
    const int* g_idx = reinterpret_cast<const int*>(p.g_idx);
    float acc = 0.f;
    if (!g_idx) {
        // group_size is a multiple of 8, so the 8 rows of one word share one group.
        int g_cur = -1;
        float s = 0.f, z = 0.f;
#pragma unroll 4
        for (int r = k0; r < k1; r += 8) {
            const uint32_t q = __ldcs(qw + (size_t)(r / 8) * p.n + col);
            const int g = r / p.group_size;
            if (g != g_cur) {
                g_cur = g;
                s = __half2float(sc[(size_t)g * p.n + col]);
                z = llama_q4_zero(p, g, col);
            }
            const float* xr = xs + (r - k0);
            float t = 0.f, xsum = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                t = fmaf(xr[j], (float)((q >> (4 * j)) & 0xF), t);
                xsum += xr[j];
            }
            acc = fmaf(s, t - z * xsum, acc);
        }
    } else {
        for (int r = k0; r < k1; r += 8) {
            const uint32_t q = __ldcs(qw + (size_t)(r / 8) * p.n + col);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int g = g_idx[r + j];
                const float s = __half2float(sc[(size_t)g * p.n + col]);
                acc = fmaf(xs[r + j - k0] * s, (float)((q >> (4 * j)) & 0xF) - llama_q4_zero(p, g, col), acc);
            }
        }
    }
    atomicAdd(reinterpret_cast<float*>(p.workspace) + col, acc);
}

extern "C" __global__ void lab_llama_q4_finish(lab_llama_q4_finish_params p) {
    LAB_PDL_ENTER();
    float* ws = reinterpret_cast<float*>(p.ws);
    __half* y = reinterpret_cast<__half*>(p.y);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += gridDim.x * blockDim.x) {
        y[i] = __float2half_rn(ws[i]);
        ws[i] = 0.f;
    }
}
