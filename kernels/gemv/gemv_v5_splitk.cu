// v5: split-K batch-1 int4 GEMV (family list: top of gemv_v1_naive.cu).
// Checked by: lab check --family gemv      Timed by: lab bench --family gemv
//
// Why: N/32 tiles are too few or unevenly spread for 132 SMs (N=4096 -> 128 tiles, N=5120 -> 160:
// 28 SMs do twice the work). Cutting K into split_k slices (grid.y) gives N/32 x split_k blocks.
// Reduction choice: fp32 atomicAdd of each block's 32 column sums into workspace, then the LAST
// block of each column tile (a ticket counter) converts to fp16, adds the bias and writes y, and
// puts the workspace and the ticket back to 0. Versus a second kernel: no extra launch (~2-3 us,
// comparable to the GEMV itself at 4096x4096 ~ 3 us) and no memset before each launch, so it is
// also safe inside a CUDA graph; the workspace only has to be zero before the FIRST launch.
// Cost: split_k x n atomics (4 x 4096 = 16K: noise next to 8 MB of weights). Sums are
// order-nondeterministic in the last fp32 bits.
// workspace: f32 [n] partials, then u32 [ceil(n/32)] tickets (LAB_GEMV_SPLITK_WORKSPACE in abi.h).
// Slices: k_slice rows, a multiple of 32 (= 8U, so chunks stay inside one group); gridDim.y =
// ceil(k / k_slice) and every slice is non-empty (host-checked).
// Act-order: v4's perm gather (nullable), so reordered act-order layers split too.
#include "gemv_tile.cuh"

template <int WARPS>
__device__ __forceinline__ void lab_gemv_v5(const lab_gemm_params& p) {
    constexpr int U = 4;
    const int col = LAB_GEMV_TILE_N * blockIdx.x + 4 * (threadIdx.x & 7);
    const int slice_words = p.k_slice >> 3;
    const int w_begin = blockIdx.y * slice_words;
    const int w_end = min(p.k >> 3, w_begin + slice_words);
    lab_gemv_prefetch_then_wait(p, LAB_GEMV_TILE_N, w_begin, w_end);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (col < p.n) lab_gemv_tile_accumulate<WARPS, U, true>(p, w_begin, w_end, col, acc);
    const float total = lab_gemv_tile_reduce<WARPS>(acc);

    float* partial = reinterpret_cast<float*>(p.workspace);                // f32 [n]
    unsigned int* tickets = reinterpret_cast<unsigned int*>(partial + p.n);  // u32 [ceil(n/32)]
    const int out = LAB_GEMV_TILE_N * blockIdx.x + threadIdx.x;
    __shared__ bool is_last;
    if (threadIdx.x < 32) {
        if (out < p.n) atomicAdd(partial + out, total);
        __threadfence();  // our sums are visible device-wide before our ticket is taken
    }
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(tickets + blockIdx.x, 1u) == gridDim.y - 1;
    __syncthreads();
    if (is_last && threadIdx.x < 32) {
        __threadfence();  // every other slice fenced its sums before its ticket: read them now
        if (out < p.n) {
            const float v = __ldcg(partial + out);  // L2, where the atomics were performed
            reinterpret_cast<__half*>(p.y)[out] = __float2half_rn(v + lab_bias_at(p, out));
            partial[out] = 0.f;  // leave the workspace zeroed for the next launch
        }
        if (threadIdx.x == 0) tickets[blockIdx.x] = 0u;
    }
}

#define LAB_GEMV_V5(T)                                                                            \
    extern "C" __global__ void __launch_bounds__(T) lab_gemv_v5_splitk_t##T(lab_gemm_params p) { LAB_PDL_LAUNCH(); \
        lab_gemv_v5<T / 32>(p);                                                                   \
    }
LAB_GEMV_V5(128)
LAB_GEMV_V5(256)
