// v10: v6 without the x staging (family list: top of gemv_v1_naive.cu). Checked by: lab check
// --family gemv. Timed by: lab bench --family gemv. EXPERIMENT, written 2026-11-27 after run 12.
//
// Why: run 12's full 7B tuning grid picks gemv_v2_vec (x loaded from L2 per chunk, no staging) at
// every m = 1 shape without act-order, and gemv_v9_cluster (the split-K epilogue replaced) measured
// slower, so what v6 loses to v2 is more likely its per-block prologue: every block first stages
// its K slice of x into shared memory and waits at a barrier before the weight loop, all blocks of
// the one wave at the same time. v10 keeps everything else of v6 (128-column tiles, a warp per
// chunk sequence, the register double buffer of weights, v6's split and epilogue) and loads each
// chunk's 4 x 16 B of x with that chunk's weights (one broadcast load per packed row per warp,
// from L2; 64 B per thread per chunk in flight beside the 76 B of weights), so the weight loop starts
// right after the first loads and no block barrier precedes it.
// Scope: no act-order (a permuted x would be a gather per row, v4's cost) and no gated input; the
// registry says so and the engine falls back to the silu kernel / another variant there.
// Prediction (H100): back to back at v2's level or below (4096x11008 v6 13.3 us, v2 11.7 us); if
// it lands at v6's, the staging is not what v6 loses and (b) of notes/kernels.md (smaller blocks,
// several waves) is next.
// Registers: v6's 96 + 2 x 16 for the x buffers: near the 128 cap of __launch_bounds__(T, 512/T);
// the static check (no spills) decides whether it fits.
#include "gemv_v6_core.cuh"

// One chunk's x: packed rows w0 .. w0+3 of this thread's slice, raw (8 halves each), zero past
// w_end (their weights are zero codes too: exactly nothing added).
__device__ __forceinline__ void lab_v10_load_x(const lab_gemm_params& p, int w0, int w_end, uint4 (&x)[LAB_V6_CW]) {
    const uint4* xv = reinterpret_cast<const uint4*>(p.x);
#pragma unroll
    for (int j = 0; j < LAB_V6_CW; ++j) x[j] = (w0 + j < w_end) ? __ldg(xv + w0 + j) : make_uint4(0u, 0u, 0u, 0u);
}

// x of a chunk as lab_v6_compute's lane pairs.
__device__ __forceinline__ void lab_v10_pairs(const uint4 (&x)[LAB_V6_CW], uint4 (&xs)[LAB_V6_CW]) {
#pragma unroll
    for (int j = 0; j < LAB_V6_CW; ++j) {
        half2 xp[4];
        lab_pair_x(x[j], xp);
        xs[j] = make_uint4(lab_half2_as_u32(xp[0]), lab_half2_as_u32(xp[1]), lab_half2_as_u32(xp[2]),
                           lab_half2_as_u32(xp[3]));
    }
}

template <int WARPS>
__device__ __forceinline__ void lab_gemv_v10(const lab_gemm_params& p) {
    constexpr int TILE = LAB_GEMV_V6_TILE_N;
    static_assert(32 * WARPS >= TILE, "the final sum needs one thread per output column");
    __shared__ float4 part[WARPS][32];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int col = TILE * blockIdx.x + 4 * lane;
    const bool active = col < p.n;
    const int slice_words = p.k_slice >> 3;
    const int w_begin = blockIdx.y * slice_words;
    const int w_end = min(p.k >> 3, w_begin + slice_words);
    const int nchunks = (w_end - w_begin + LAB_V6_CW - 1) / LAB_V6_CW;
    const int gshift = lab_group_shift(p);
    const bool sym = p.zero_mode == LAB_ZEROS_SYMMETRIC;

    lab_gemv_prefetch_then_wait(p, TILE, w_begin, w_end);

    // The register double buffer of v6 (DEPTH 2), each chunk with its x.
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (active) {
        const uint4* qw_col = reinterpret_cast<const uint4*>(p.qweight) + (col >> 2);
        LabV6Chunk buf[2];
        uint4 xb[2][LAB_V6_CW];
        const int c0 = warp;
        if (c0 < nchunks) {
            lab_v6_load(p, qw_col, w_begin + LAB_V6_CW * c0, w_end, col, gshift, sym, buf[0]);
            lab_v10_load_x(p, w_begin + LAB_V6_CW * c0, w_end, xb[0]);
        }
        for (int base = c0; base < nchunks; base += 2 * WARPS) {
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                const int c = base + s * WARPS;
                if (c >= nchunks) break;  // warp-uniform
                const int next = c + WARPS;
                if (next < nchunks) {
                    lab_v6_load(p, qw_col, w_begin + LAB_V6_CW * next, w_end, col, gshift, sym, buf[s ^ 1]);
                    lab_v10_load_x(p, w_begin + LAB_V6_CW * next, w_end, xb[s ^ 1]);
                }
                uint4 xs[LAB_V6_CW];
                lab_v10_pairs(xb[s], xs);
                lab_v6_compute(buf[s], xs, acc);
            }
        }
    }

    // v6's k-lane sum and split-K epilogue (atomics + ticket; the last block writes y).
    const int t = threadIdx.x;
    const int out = TILE * blockIdx.x + t;
    float total;
    if (lab_v6_lane_sum<WARPS, TILE>(p, part, acc, warp, lane, t, out, total)) return;
    lab_v6_splitk_store<TILE>(p, total, t, out);
}

#define LAB_GEMV_V10(T)                                                                            \
    extern "C" __global__ void __launch_bounds__(T, LAB_GEMV_V6_THREADS_PER_SM / T)                \
        lab_gemv_v10_l2x_t##T(lab_gemm_params p) { LAB_PDL_LAUNCH();                               \
        lab_gemv_v10<T / 32>(p);                                                                   \
    }
LAB_GEMV_V10(128)
LAB_GEMV_V10(256)
