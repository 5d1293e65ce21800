// v4: act-order by load-time reorder (family list: top of gemv_v1_naive.cu).
// Checked by: lab check --family gemv      Timed by: lab bench --family gemv
//
// At load time the rows are sorted by group (crate::gptq::reorder_by_group), so the weights are a
// plain grouped layer (group of row r = r / G) and the kernel is v2's tile; the only change is that
// row r multiplies x[perm[r]]. Per packed row that is two 16-byte perm loads and 8 scalar x loads
// (L1 hits: x is 8-27 KB) instead of one 16-byte x load, i.e. extra LSU work and no extra DRAM
// bytes: act-order should cost a few percent, not the 5x of the g_idx gather (v3).
// A null perm (no act-order) runs exactly v2's path.
#include "gemv_tile.cuh"

#define LAB_GEMV_V4(T)                                                                          \
    extern "C" __global__ void __launch_bounds__(T) lab_gemv_v4_perm_t##T(lab_gemm_params p) { LAB_PDL_LAUNCH(); \
        lab_gemv_tile<T / 32, 4, true>(p);                                                      \
    }
LAB_GEMV_V4(128)
LAB_GEMV_V4(256)
LAB_GEMV_V4(512)
