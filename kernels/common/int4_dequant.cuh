// int4 -> fp16 dequantization helpers shared by the GEMV/GEMM families.
// Format contract: ../../shared/gptq-format.md (code of row k = nibble k%8 of qweight[k/8][n], lowest nibble = lowest k).
#ifndef LAB_INT4_DEQUANT_CUH
#define LAB_INT4_DEQUANT_CUH
#include <cuda_fp16.h>
#include <stdint.h>

// (a & b) | c in one LOP3: nvcc does not reliably fuse the and/or pair of the magic-number trick.
// LUT 0xEA = (0xF0 & 0xCC) | 0xAA.
__device__ __forceinline__ uint32_t lab_lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ half2 lab_u32_as_half2(uint32_t u) {
    half2 h;
    __builtin_memcpy(&h, &u, sizeof(h));
    return h;
}

// Per-(group, column) constants of the magic-number dequant for a TRUE zero z in 0..15:
//   lo = (1024 + z) in both lanes: fp16 bits 0x6400 | z (0x6400 = 1024.0, mantissa LSB = 1.0)
//   hi = -(64 + z) in both lanes:  fp16 bits 0xD400 | (z << 4) (0x5400 = 64.0, mantissa LSB = 1/16)
// A symmetric checkpoint has z = 8 everywhere: lo = 0x6408, hi = 0xD480, so -8 is folded into
// these constants and qzeros is never read.
struct LabZeroConsts {
    half2 lo;
    half2 hi;
};

__device__ __forceinline__ LabZeroConsts lab_zero_consts(uint32_t z) {
    LabZeroConsts c;
    c.lo = lab_u32_as_half2((0x6400u | z) * 0x00010001u);
    c.hi = lab_u32_as_half2((0xD400u | (z << 4)) * 0x00010001u);
    return c;
}

// One packed word (8 codes along k) -> 4 half2 of (q - z), EXACT (small integers in fp16):
//   d[0] = (q0-z, q4-z), d[1] = (q1-z, q5-z), d[2] = (q2-z, q6-z), d[3] = (q3-z, q7-z).
// OR-ing a nibble into the mantissa of 1024.0 gives 1024 + q (nibble at bits 0-3) or 1024 + 16q
// (bits 4-7); the low half of the u32 carries nibbles 0-3, the high half nibbles 4-7, hence the
// (i, i+4) lane pairing. 5 integer ops + 4 fp16 ops per 8 weights, no int->float conversions.
__device__ __forceinline__ void lab_dequant_word(uint32_t w, LabZeroConsts zc, half2 d[4]) {
    const uint32_t MAGIC = 0x64006400u;  // 1024.0 in both halves
    const uint32_t LO = 0x000F000Fu;     // nibbles 0 and 4 (after >> 8: 2 and 6)
    const uint32_t HI = 0x00F000F0u;     // nibbles 1 and 5 (after >> 8: 3 and 7)
    const half2 SIXTEENTH = lab_u32_as_half2(0x2C002C00u);  // 1/16 in both halves
    const uint32_t w8 = w >> 8;
    // (1024 + q) - (1024 + z) and (1024 + 16q)/16 - (64 + z): every intermediate is an integer
    // (or integer/16 times 16) below 2048, so both are exact in fp16.
    d[0] = __hsub2(lab_u32_as_half2(lab_lop3_and_or(w, LO, MAGIC)), zc.lo);
    d[1] = __hfma2(lab_u32_as_half2(lab_lop3_and_or(w, HI, MAGIC)), SIXTEENTH, zc.hi);
    d[2] = __hsub2(lab_u32_as_half2(lab_lop3_and_or(w8, LO, MAGIC)), zc.lo);
    d[3] = __hfma2(lab_u32_as_half2(lab_lop3_and_or(w8, HI, MAGIC)), SIXTEENTH, zc.hi);
}

// The 8 activations of one packed word (uint4 = x[8w .. 8w+7]) rearranged into the same (i, i+4)
// lane pairs as lab_dequant_word. PRMT selector 0x5410 takes the low halves of (a, b), 0x7632 the high.
__device__ __forceinline__ void lab_pair_x(uint4 xv, half2 xp[4]) {
    xp[0] = lab_u32_as_half2(__byte_perm(xv.x, xv.z, 0x5410));  // (x0, x4)
    xp[1] = lab_u32_as_half2(__byte_perm(xv.x, xv.z, 0x7632));  // (x1, x5)
    xp[2] = lab_u32_as_half2(__byte_perm(xv.y, xv.w, 0x5410));  // (x2, x6)
    xp[3] = lab_u32_as_half2(__byte_perm(xv.y, xv.w, 0x7632));  // (x3, x7)
}

// sum_i x_i * (q_i - z) over the 8 rows of one word, returned in fp32. The products and the
// 4-term chains per lane are fp16 (error <= 4 * 2^-11 of sum |x_i (q_i - z)|, see the tolerance in
// src/check/tolerance.rs); the two lanes are summed in fp32. The chain stays below 65504 while
// |x| < 65504 / (4 * 15) ~ 1091.
__device__ __forceinline__ float lab_dot_word(const half2 d[4], const half2 xp[4]) {
    half2 h = __hmul2(d[0], xp[0]);
    h = __hfma2(d[1], xp[1], h);
    h = __hfma2(d[2], xp[2], h);
    h = __hfma2(d[3], xp[3], h);
    return __low2float(h) + __high2float(h);
}

// Streaming 16-byte load of weights that are read exactly once: evict-first keeps x, scales and
// zeros in cache.
__device__ __forceinline__ uint4 lab_ld_stream(const uint4* p) { return __ldcs(p); }

#endif
