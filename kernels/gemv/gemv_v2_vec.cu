// v2: vectorized batch-1 int4 GEMV (family list: top of gemv_v1_naive.cu).
// Checked by: lab check --family gemv      Timed by: lab bench --family gemv
//
// Design numbers (H100 SXM: 132 SMs, ~3.35 TB/s spec, ~3.0 TB/s measured copy, DRAM latency ~0.6 us):
//   bytes in flight needed per SM = 3.35e12 B/s x 0.6e-6 s / 132 ~ 15 KB.
//   per thread: U 16-byte weight loads in flight -> 256 threads x U=4 x 16 B = 16 KB per block.
//   bytes per block (32 columns x K, g128): weights 16 B x K/8 x 8 = K x 16 B (64 KB at K=4096),
//   scales K/128 x 64 B (2 KB), zeros K/128 x 16 B (0.5 KB), x K x 2 B (8 KB, from L1/L2).
//   blocks = N/32: 4096 -> 128, 11008 -> 344, 5120 -> 160, 13824 -> 432, 12288 -> 384, 22016 -> 688
//   against 132 SMs: N=4096 leaves 4 SMs idle and N=5120 puts 2 blocks on 28 SMs, 1 on the rest
//   (tail ~ half the time): that is what v5 (split-K) is for.
//   instructions per 8 weights and column: 5 int (lop3/shift) + 4 fp16 (zero) + 4 HFMA2 + 2 cvt + 2 FADD
//   ~ 2.1 per weight; at 6.7e12 weights/s (3.35 TB/s) that is ~45% of the issue rate: memory-bound.
#include "gemv_tile.cuh"

// WARPS: warps per block, all along K (threads = 32 WARPS); U: 16-byte weight loads in flight per thread.
template <int WARPS, int U>
__device__ __forceinline__ void lab_gemv_v2(const lab_gemm_params& p) {
    lab_gemv_tile<WARPS, U, false>(p);
}

// Allowed instantiations: threads {128, 256, 512} x unroll {2, 4}; group_size/8 must be a multiple
// of U (group >= 8U, power of two) or per-channel. Names must match src/kernels/gemv.rs.
// Min blocks 768/T caps registers at 85 (65536 / 768): with no minimum ptxas spilled 4 bytes in
// t128_u4 on sm_80-89 (at 56 registers!), with 1024/T (cap 64) u4 spilled on sm_90; at 768/T it
// takes 75-80 registers and spills nothing on sm_75..90. 768 threads x 4 x 16 B = 48 KB in flight
// per SM, 3x the ~15 KB needed.
#define LAB_GEMV_V2(T, U)                                                                                  \
    extern "C" __global__ void __launch_bounds__(T, 768 / T) lab_gemv_v2_t##T##_u##U(lab_gemm_params p) { LAB_PDL_LAUNCH(); \
        lab_gemv_v2<T / 32, U>(p);                                                                         \
    }
LAB_GEMV_V2(128, 2)
LAB_GEMV_V2(128, 4)
LAB_GEMV_V2(256, 2)
LAB_GEMV_V2(256, 4)
LAB_GEMV_V2(512, 2)
LAB_GEMV_V2(512, 4)
