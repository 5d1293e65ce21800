// PTX wrappers for the tensor-core dequant-GEMM (kernels/gemm/v2_mma.cu). Named gemm_* so they never
// clash with the GEMV family's common headers. Everything here needs sm_80 (cp.async, createpolicy,
// m16n8k16); callers guard with __CUDA_ARCH__ >= 800.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

namespace gemm {

// Shared-memory address of a generic pointer, for the .shared state space operands below.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

// An L2 policy that marks lines evict-first: the int4 weights are read exactly once per launch,
// so they must not push the (re-read by every block) activations and scales out of L2.
// createpolicy.fractional needs sm_80 / PTX 7.4; fraction 1.0 = every access gets the policy.
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
    return pol;
}

// 16-byte async copy global -> shared, L1 bypassed (.cg). src_bytes is 16 or 0: 0 reads nothing and
// writes 16 zero bytes, which is how out-of-range rows/chunks are masked without a branch.
// `src` must be a valid address either way (the callers pass the tensor base when masked).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}

// The same with an L2 cache-policy operand (the weights' evict-first policy).
__device__ __forceinline__ void cp_async16_policy(void* dst, const void* src, bool valid, uint64_t pol) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(src_bytes), "l"(pol));
}

// 4-byte async copy (.ca: the only state space with sizes below 16), zero-filled when !valid.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    const int src_bytes = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most N committed groups are still in flight (this thread's copies only).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ldmatrix.x4: four 8x8 b16 matrices; lane l supplies the row address for matrix l/8, row l%8.
// Register r[j] of lane l receives matrix j, row l/4, columns 2*(l%4), 2*(l%4)+1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row_addr)));
}

// D = A * B + D, m16n8k16, fp16 inputs, fp32 accumulate (PTX ISA "Matrix Fragments for mma.m16n8k16
// with floating point type"; groupID = lane/4, tig = lane%4):
//   a[0] = A[g][2t..2t+1]     a[1] = A[g+8][2t..]     a[2] = A[g][2t+8..]     a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]     b[1] = B[2t+8..2t+9][g]
//   c[0..1] = C[g][2t..2t+1]  c[2..3] = C[g+8][2t..2t+1]
__device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#endif  // __CUDA_ARCH__ >= 800

// (w & mask) | 0x64006400 in one LOP3: drops two 4-bit codes into the mantissas of two fp16 1024s.
// 0xEA = (a & b) | c.
__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t mask, uint32_t orv) {
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(a), "r"(mask), "r"(orv));
    return r;
}

__device__ __forceinline__ __half2 u32_as_half2(uint32_t u) {
    return *reinterpret_cast<__half2*>(&u);
}
__device__ __forceinline__ uint32_t half2_as_u32(__half2 h) {
    return *reinterpret_cast<uint32_t*>(&h);
}

// Magic-number dequant of one prepared word (see src/kernels/gemm_layout.rs for the nibble order):
// nibbles (0,4), (1,5), (2,6), (3,7) become four half2 values scale * (code - zero), in that order.
//   lo pair:  0x6400 | q          = 1024 + q        ->  (h - (1024 + z))            = q - z (exact)
//   hi pair:  0x6400 | (q << 4)   = 1024 + 16 q     ->  fma(h, 1/16, -(64 + z))     = q - z (exact)
// then one rounding in the multiply by the scale. `zlo` = 1024 + z and `zhi_neg` = -(64 + z) as half2
// (integers below 2048: exact in fp16).
__device__ __forceinline__ void dequant_word(uint32_t w, __half2 scale, __half2 zlo, __half2 zhi_neg,
                                             uint32_t out[4]) {
    const uint32_t MAGIC = 0x64006400u, LO = 0x000f000fu, HI = 0x00f000f0u;
    const __half2 sixteenth = __half2half2(__ushort_as_half(0x2c00));  // 1/16
    const uint32_t w8 = w >> 8;
    __half2 p0 = __hsub2(u32_as_half2(lop3_and_or(w, LO, MAGIC)), zlo);
    __half2 p1 = __hfma2(u32_as_half2(lop3_and_or(w, HI, MAGIC)), sixteenth, zhi_neg);
    __half2 p2 = __hsub2(u32_as_half2(lop3_and_or(w8, LO, MAGIC)), zlo);
    __half2 p3 = __hfma2(u32_as_half2(lop3_and_or(w8, HI, MAGIC)), sixteenth, zhi_neg);
    out[0] = half2_as_u32(__hmul2(p0, scale));
    out[1] = half2_as_u32(__hmul2(p1, scale));
    out[2] = half2_as_u32(__hmul2(p2, scale));
    out[3] = half2_as_u32(__hmul2(p3, scale));
}

}  // namespace gemm
