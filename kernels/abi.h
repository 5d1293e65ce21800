/* The only description of the kernel ABI shared by CUDA and Rust (Rust reads it through bindgen).
 * Plain C, <stdint.h> types only. Device pointers are passed as uint64_t so the structs have the same
 * layout on both sides; every field says dtype, shape and layout. A layout test in Rust fails on drift.
 */
#ifndef LAB_ABI_H
#define LAB_ABI_H
#include <stdint.h>

/* ---- GPTQ format constants (../shared/gptq-format.md) ---- */
#define LAB_BITS 4
#define LAB_PACK 8            /* 4-bit codes per 32-bit word */
#define LAB_MAXQ 15
#define LAB_SYM_ZERO 8        /* effective zero of a symmetric checkpoint (v1 stores 7) */

/* zero-point modes a kernel is told about */
#define LAB_ZEROS_SYMMETRIC 0 /* qzeros not read: zero = 8 folded into the dequant constants */
#define LAB_ZEROS_TRUE 1      /* qzeros hold the true zero (v2, or v1 after +1 at load time) */

/* ---- Reference kernels and bandwidth probes ---- */
typedef struct {
    uint64_t a;  /* fp16 [m, k] row-major */
    uint64_t b;  /* fp16 [k, n] row-major */
    uint64_t c;  /* fp16 [m, n] row-major, written */
    int32_t m, n, k;
    int32_t _pad;
} lab_ref_matmul_params;

typedef struct {
    uint64_t src;   /* bytes, 16-byte aligned */
    uint64_t dst;   /* bytes, 16-byte aligned (copy probe) or [gridDim.x] u32 sink (read probe) */
    uint64_t n16;   /* number of 16-byte words */
} lab_probe_params;

/* ---- Batch-1..M int4 dequant GEMV / GEMM ---- */
typedef struct {
    uint64_t x;        /* fp16 [m, k] activations, row-major */
    uint64_t qweight;  /* u32 [k/8, n]: 8 codes along k, lowest nibble = lowest k (layout may be variant-specific) */
    uint64_t qzeros;   /* u32 [groups, n/8] TRUE zeros packed along n, or 0 when zero_mode == SYMMETRIC */
    uint64_t scales;   /* fp16 [groups, n] */
    uint64_t g_idx;    /* i32 [k] group of each input row, or 0 when groups are k / group_size */
    uint64_t perm;     /* i32 [k] activation permutation (x column of sorted row r = perm[r]), or 0 */
    uint64_t bias;     /* fp16 [n], or 0 */
    uint64_t y;        /* fp16 [m, n] output, row-major */
    uint64_t workspace;/* f32 [split_k? m*n : 0] split-K partials, zeroed by the launcher, or 0 */
    int32_t m, n, k;
    int32_t group_size;/* rows per group; k for per-channel (-1 in the checkpoint) */
    int32_t groups;    /* rows of scales/qzeros = ceil(k / group_size) */
    int32_t zero_mode; /* LAB_ZEROS_* */
    int32_t split_k;   /* number of K slices (1 = none) */
    int32_t k_slice;   /* rows of K per slice, multiple of 8 */
} lab_gemm_params;

/* ---- Dequant-GEMM tile constants (kernels/gemm/, src/kernels/gemm.rs): one definition for both sides ---- */
/* v1 SIMT: 256 threads = 64 columns x 4 row groups; K staged 32 rows (4 packed words) at a time. */
#define LAB_GEMM_V1_THREADS 256
#define LAB_GEMM_V1_BN 64
#define LAB_GEMM_V1_BK 32
/* v2 mma.sync: 8 warps, each owns a 32-column stripe (BN = 256); one pipeline stage = 64 K rows. */
#define LAB_GEMM_V2_THREADS 256
#define LAB_GEMM_V2_BN 256
#define LAB_GEMM_V2_BK 64
#define LAB_GEMM_V2_STAGES 4
/* Prepared (fragment-order) weights: one 512-byte chunk = 32 K rows x 32 columns, 16 bytes per lane. */
#define LAB_GEMM_CHUNK_K 32
#define LAB_GEMM_CHUNK_N 32
/* Shared memory of one v2 stage: B 8192 + scales 1024 + zeros 256 bytes, plus the activation tile of
 * 16*MT rows x 72 halves (64 + 8 pad: conflict-free ldmatrix) = 2304 bytes per m16 tile. */
#define LAB_GEMM_V2_STAGE_FIXED_BYTES 9472
#define LAB_GEMM_V2_STAGE_BYTES_PER_MTILE 2304

#endif
