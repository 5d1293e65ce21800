// v6: pipelined batch-1 int4 GEMV, x staged (permuted) in shared memory (family list: top of
// gemv_v1_naive.cu). Checked by: lab check --family gemv      Timed by: lab bench --family gemv
// Measured on the H100 since run D (notes/kernels.md, reports/): 52-61% of the read ceiling at the
// decode shapes. The design numbers and the prediction below were written before the first run.
//
// What v2-v5 measured (notes/kernels.md, H100): 46-59% of the 3088 GB/s read ceiling. Two gaps:
//  (1) bytes in flight. Needed: ~3.35 TB/s x ~0.7 us loaded latency = ~2.3 MB, ~18 KB per SM. v2
//      issues a chunk's loads, dequantizes it, then issues the next: between chunks nothing of that
//      thread is in flight, and N = 4096 gives 128 blocks (1 per SM, 8 warps).
//  (2) act-order: v4 gathers x[perm[r]] with 8 scalar loads per packed row INSIDE the weight loop
//      (+25-45%), and every 32-column block re-reads perm (4 B/row) and x (2 B/row): 37.5% of the
//      block's weight bytes in extra L2->SM traffic.
//
// Design:
//  * Block = T threads (WARPS warps) x 128 output columns: lane l owns columns col = 128*bx + 4l
//    (one uint4 of qweight per packed row: a warp load is 512 contiguous bytes, 4 full lines);
//    warp w is the k-lane: it owns chunks c = w, w + WARPS, ... of 4 packed rows (32 k-rows, never
//    across a group since G >= 32 is a power of two or per-channel; slices start on chunk bounds).
//  * Register double buffer: a chunk = 4 x LDG.128 weights + LDG.64 scales + LDG.32 zeros = 76 B
//    per thread. The next chunk's loads are issued BEFORE the current chunk is dequantized, so one
//    chunk is always in flight while one is computed: >= 64 B of weights per thread in flight in
//    steady state, 128 B right after issue.
//  * x for the block's K slice is staged ONCE into shared memory, fp16, already in the (i, i+4) lane
//    pairs of lab_dequant_word: one LDS.128 per packed row gives the 4 half2 the HFMA2 chain needs
//    (no PRMT in the loop). fp16, not f32: the math consumes half2, and f32 would double the bytes
//    (16 KB per 4096 rows) and need a convert per use. With act-order (perm != 0) the staging
//    gathers x[perm[r]] (lab_stage_x_pairs), so act-order costs only the staging: per block k_slice
//    x (2 B) + perm (4 B) reads from L2 against k_slice x 64 B of weights (9.4%, vs 37.5% at v4's
//    32-column tiles), and the weight loop is identical with and without act-order.
//    The first chunk's weight loads are issued before the staging, so its DRAM latency hides the
//    staging's L2 latency.
//  * Split-K over grid.y (k_slice <= LAB_GEMV_V6_XS_ROWS = 4096 rows = 8 KB of smem, static so the
//    engine's launch with 0 dynamic smem works): the host picks split so that tiles x split fills
//    ~2 blocks of 256 per SM (gemv.rs v6_split). Reduction like v5: fp32 atomics + a ticket per
//    column tile; the last block writes y and re-zeroes workspace and ticket. split 1 writes y.
//  * Dequant: v2's exact magic-number path (lop3 into 0x6400, HSUB2/HFMA2 with the zero folded in,
//    4-term HFMA2 chains against x, fp32 sums, scale applied once per chunk in fp32) -> same error
//    model (tolerance.rs CHAIN4) as v2/v4/v5. Not the "fma(q, s, -s*z)" half2 trick: s*z rounded to
//    fp16 gives an error ~U16*|s*z| even where q == z (w = 0), which the |x W| tolerance model cannot
//    bound, and it saves nothing: subtracting the zero is already one op per half2.
//
// Design numbers (H100 SXM: 132 SMs, 3.35 TB/s spec, 3088 GB/s measured read ceiling):
//   bytes per thread per chunk: 64 weights + 8 scales + 4 zeros = 76 B (weights 2 x 64 B buffered).
//   loads in flight per SM: 512 threads (launch bounds (T, 512/T)) x 64-128 B = 32-64 KB (>= 32 KB).
//   registers: <= 128 by the launch bounds; ptxas (CUDA 13.0) 107 sm_75, 96 sm_80-90 (87fc399's shared loop), no
//   spills (2 x 16 weight + 2 x 3 scale/zero + 8 zero constants + 4+4 sums + addresses); smem: 8 KB x + 4 KB/8 KB (T 256/512) reduction.
//   occupancy: 16 warps per SM (2 blocks of 256, 4 of 128, 1 of 512); smem allows more everywhere.
//   grids at T = 256 (auto split: gemv.rs v6_split; slots = 132 x 2):
//     K x N        tiles x split = blocks (per SM)  k_slice  chunks/warp  MB     t @90%  t @100%
//     4096x11008     86 x 3 = 258 (1.95)            1376       5.4      23.28   8.4 us  7.5 us
//     11008x4096     32 x 8 = 256 (1.94)            1376       5.4      23.28   8.4 us  7.5 us
//     5120x13824    108 x 2 = 216 (1.64)            2560      10.0      36.53  13.2 us  11.8 us
//     13824x5120     40 x 6 = 240 (1.82)            2304       9.0      36.53  13.2 us  11.8 us
//   Prediction for the lab bench (one event pair per launch): kernel at ~90% of the read ceiling
//   plus the per-launch fixed cost the back-to-back column measures (~3 us suspected): ~11.5 /
//   11.5 / 16 / 16 us vs v2's 13.0 / 16.3 / 20.1 / 23.5. Act-order within ~3-5% of plain.
//   Instructions: ~2.1 per weight per thread as v2 (~42% of the issue rate at 3 TB/s).
#include "gemv_v6_core.cuh"

// The split-K sum of gemv_v9_cluster (sm_90): the grid.y slices of a column tile are one thread
// block cluster (launched with cluster dims (1, grid.y, 1)); each block leaves its TILE column sums
// in shared memory, and after a cluster barrier block rank 0 adds the slices' sums in rank order
// through distributed shared memory and writes y: no global atomics, no ticket, no L2 round trip
// for the last block (v6's epilogue: 3 dependent L2 round trips, ~2 us, while DRAM idles). The
// second barrier keeps every block's shared memory alive until rank 0 has read it. Returns false
// (nothing done) where the launch is not such a cluster, so the caller's ticket path runs.
template <int TILE>
__device__ __forceinline__ bool lab_v6_cluster_sum(const lab_gemm_params& p, float total, int t, int out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t nct, rank;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(nct));
    if (nct != gridDim.y) return false;  // not launched as one cluster per tile: block-uniform
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    __shared__ float sums[TILE];
    if (t < TILE) sums[t] = total;
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
    if (rank == 0 && t < TILE && out < p.n) {
        const uint32_t local = static_cast<uint32_t>(__cvta_generic_to_shared(&sums[t]));
        float v = 0.f;
        for (uint32_t r = 0; r < nct; ++r) {
            uint32_t remote;
            float x;
            asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(r));
            asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(x) : "r"(remote) : "memory");
            v += x;
        }
        reinterpret_cast<__half*>(p.y)[out] = __float2half_rn(v + lab_bias_at(p, out));
    }
    // Keep-alive only: rank 0's reads completed when it used their values, so a relaxed arrive
    // (no GPU-scope fence; the release one above emits MEMBAR.ALL.GPU) is enough here.
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
    return true;
#else
    (void)p; (void)total; (void)t; (void)out;
    return false;
#endif
}

template <int WARPS, int DEPTH, bool CLUSTER = false>
__device__ __forceinline__ void lab_gemv_v6(const lab_gemm_params& p) {
    constexpr int TILE = LAB_GEMV_V6_TILE_N;
    static_assert(32 * WARPS >= TILE, "the final sum needs one thread per output column");
    __shared__ uint4 xs[LAB_GEMV_V6_XS_ROWS / 8];  // slice packed row i as lane pairs (8 KB)
    __shared__ float4 part[WARPS][32];              // per warp: 128 column partials

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int col = TILE * blockIdx.x + 4 * lane;
    const bool active = col < p.n;  // n % 8 == 0: col .. col+3 all inside or all outside
    const int slice_words = p.k_slice >> 3;  // multiple of LAB_V6_CW, <= XS_ROWS / 8 (host-checked)
    const int w_begin = blockIdx.y * slice_words;
    const int w_end = min(p.k >> 3, w_begin + slice_words);
    const int nchunks = (w_end - w_begin + LAB_V6_CW - 1) / LAB_V6_CW;
    const int gshift = lab_group_shift(p);
    const bool sym = p.zero_mode == LAB_ZEROS_SYMMETRIC;

    // 0. PDL prologue (pdl.cuh): the tile's first p.prefetch_bytes (32 KB: 64 packed rows = 2
    // chunks per warp at T = 256) into L2 while the previous kernel finishes; then wait for it.
    lab_gemv_prefetch_then_wait(p, TILE, w_begin, w_end);

    // 1. The first DEPTH - 1 chunks' loads go out before anything else.
    LabV6Chunk buf[DEPTH];  // DEPTH - 1 in flight while one is dequantized (gemv_v6_core.cuh)
    const int c0 = warp;
    const uint4* qw_col = reinterpret_cast<const uint4*>(p.qweight) + (col >> 2);
    if (active) lab_v6_issue_first<WARPS, DEPTH>(p, qw_col, w_begin, w_end, nchunks, c0, col, gshift, sym, buf);

    // 2. Stage x[perm[r]] (or x[r]) for the slice, zero-padded to a whole chunk, while they fly.
    for (int i = threadIdx.x; i < nchunks * LAB_V6_CW; i += 32 * WARPS) {
        half2 xp[4];
        lab_stage_x_pairs(p, w_begin + i, w_begin + i < w_end, xp);
        xs[i] = make_uint4(lab_half2_as_u32(xp[0]), lab_half2_as_u32(xp[1]), lab_half2_as_u32(xp[2]),
                           lab_half2_as_u32(xp[3]));
    }
    __syncthreads();

    // 3. Steady state: issue chunk c + (DEPTH - 1) x WARPS, then dequantize chunk c.
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (active) lab_v6_stream<WARPS, DEPTH>(p, qw_col, w_begin, w_end, nchunks, c0, col, gshift, sym, buf, xs, acc);

    // 4. Sum the WARPS k-lanes (gemv_v6_core.cuh); one K slice writes y there.
    const int t = threadIdx.x;
    const int out = TILE * blockIdx.x + t;
    float total;
    if (lab_v6_lane_sum<WARPS, TILE>(p, part, acc, warp, lane, t, out, total)) return;

    // 5a. gemv_v9_cluster: the tile's slices sum through distributed shared memory (sm_90).
    if (CLUSTER && lab_v6_cluster_sum<TILE>(p, total, t, out)) return;

    // 5. Split-K: atomics + a ticket per tile (gemv_v6_core.cuh).
    lab_v6_splitk_store<TILE>(p, total, t, out);
}

// Instantiations: threads {128, 256, 512}, DEPTH 2 (one chunk in flight while one is dequantized);
// names must match src/kernels/gemv.rs. Min blocks 512/T caps registers at 128 (65536 / 512) and
// keeps 16 warps per SM for every T.
// DEPTH is a template parameter because deeper was tried: gemv_v7_deep (DEPTH 4, 127-128
// registers, no spills; 87fc399) measured 1-9% SLOWER than DEPTH 2 on every decode shape on the
// H100 (run 10, notes/kernels.md "v7 / v8"), so bytes in flight are not what holds v6 at 52-61% of
// the read ceiling; v7 was removed, the parameter kept for the next such experiment.
#define LAB_GEMV_V6(T)                                                                             \
    extern "C" __global__ void __launch_bounds__(T, LAB_GEMV_V6_THREADS_PER_SM / T)                \
        lab_gemv_v6_pipe_t##T(lab_gemm_params p) { LAB_PDL_LAUNCH();                                                 \
        lab_gemv_v6<T / 32, 2>(p);                                                                 \
    }
LAB_GEMV_V6(128)
LAB_GEMV_V6(256)
LAB_GEMV_V6(512)

// v9 (gemv_v9_cluster, sm_90; NOT YET RUN ON A GPU): v6 (DEPTH 2) whose split-K sum is
// lab_v6_cluster_sum above instead of atomics + ticket. Why: after runs 10-11 falsified bytes in
// flight and page locality, what is left of v6's 2.5-5 us per launch is serial per-block work in a
// lock-step wave, of which the epilogue's 3 dependent L2 round trips are ~2 us (notes/kernels.md
// "Next ... after runs 9-11"). The host caps the split at 8 (the portable cluster size) and launches
// with cluster dims (1, split, 1) (src/kernels/launch.rs, and GpuEngine::launch_ex beside the PDL
// attribute in decode steps: `lab decode --int4-kernel gemv_v9_cluster`). Prediction: 1.5-2 us less per launch than v6 at the
// split shapes (11008x4096 13.1 -> ~11.5 us back to back), the same where split is 1.
#define LAB_GEMV_V9(T)                                                                             \
    extern "C" __global__ void __launch_bounds__(T, LAB_GEMV_V6_THREADS_PER_SM / T)                \
        lab_gemv_v9_cluster_t##T(lab_gemm_params p) { LAB_PDL_LAUNCH();                            \
        lab_gemv_v6<T / 32, 2, true>(p);                                                           \
    }
LAB_GEMV_V9(256)
