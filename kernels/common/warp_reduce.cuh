// Warp-level reductions shared by kernel families.
#ifndef LAB_WARP_REDUCE_CUH
#define LAB_WARP_REDUCE_CUH

// Sum over the lanes that differ only in the bits of `mask_bits` (e.g. 8|16 sums the four lanes
// l, l^8, l^16, l^24 that hold partials of the same columns): butterfly so every lane gets the sum.
template <int FIRST_BIT, int LAST_BIT>
__device__ __forceinline__ float lab_warp_sum_bits(float v) {
#pragma unroll
    for (int b = LAST_BIT; b >= FIRST_BIT; b >>= 1) v += __shfl_xor_sync(0xffffffffu, v, b);
    return v;
}

#endif
