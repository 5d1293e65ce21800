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
    int32_t prefetch_bytes; /* GEMV PDL prologue: weight bytes per block prefetched into L2 before
                               the wait (kernels/common/pdl.cuh); 0 = none. Ignored below sm_90. */
    int32_t x_glu;     /* 1: x is a fused fp16 [gate | up] of 2k values and input row r is
                          silu(gate[r]) * up[r] rounded to fp16 (common/glu.cuh, the MLP's down
                          projection); 0: x is fp16 [m, k]. Int4 GEMVs (m = 1) only. */
    int32_t ld_w;      /* row stride (columns) of qweight / scales / qzeros when the kernel works on
                          a column slice of them (qweight, scales, qzeros then point at its first
                          column, a multiple of 8; n = the slice's width); 0 = n. Read by
                          lab_dequant_f16_v1 only (the prefill's sliced dequant). */
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

/* ---- Batch-1 GEMV v6 (kernels/gemv/gemv_v6_pipe.cu, src/kernels/gemv.rs): one definition for both sides ---- */
#define LAB_GEMV_V6_TILE_N 128      /* output columns per block: 32 lanes x 4 columns (512 B per packed row) */
#define LAB_GEMV_V6_CHUNK_WORDS 4   /* packed rows per warp chunk = 32 k-rows, never across a group (G >= 32) */
#define LAB_GEMV_V6_XS_ROWS 4096    /* x rows staged in shared memory per block (8 KB fp16) = largest k_slice */
#define LAB_GEMV_V6_THREADS_PER_SM 512 /* __launch_bounds__(T, 512 / T): <= 128 registers, 16 warps per SM */

/* ---- LLaMA decode ops (kernels/llama/) ----
 * One decode step is a fixed sequence of launches whose only per-step inputs live in device
 * memory (the state words below), so the whole step is captured once as a CUDA graph and replayed.
 * The residual stream is fp32 (it is only [hidden]); every activation that feeds a linear is fp16.
 */
#define LAB_LLAMA_STATE_TOKEN 0   /* i32: token fed at this step; argmax overwrites it with the next one */
#define LAB_LLAMA_STATE_POS 1     /* i32: position of that token = cached positions before this step */
#define LAB_LLAMA_STATE_FLAGS 2   /* i32: sticky error bits, LAB_LLAMA_FLAG_* (host reads after sync) */
#define LAB_LLAMA_STATE_WORDS 4
#define LAB_LLAMA_FLAG_BAD_TOKEN 1    /* token id >= vocab: embedding row not read, x set to NaN */
#define LAB_LLAMA_FLAG_CTX_FULL 2     /* pos >= max_ctx: nothing appended to the KV cache */
#define LAB_LLAMA_FLAG_NAN_LOGITS 4   /* every logit NaN or -inf: argmax fell back to token 0 */
#define LAB_LLAMA_FLAG_BARRIER_TIMEOUT 8 /* lab_llama_layers: a grid barrier waited > 2 s (blocks not all
                                            resident?); every later barrier is skipped, results are garbage */

/* fill kernels for synthetic weights (generated on the GPU, never on the host) */
#define LAB_FILL_U32 0   /* uniform random 32-bit words (random int4 codes / zeros) */
#define LAB_FILL_F16 1   /* fp16 uniform in [lo, hi) */
#define LAB_FILL_CONST_U32 2 /* every word = (uint32_t)lo (e.g. 0x88888888 symmetric zeros) */

typedef struct {
    uint64_t ptr;      /* u32 or fp16 [n] */
    uint64_t n;        /* number of elements (u32 words or fp16 values) */
    uint64_t seed;     /* counter-based hash seed: element i depends only on (seed, i) */
    float lo, hi;      /* range for LAB_FILL_F16; lo holds the word for LAB_FILL_CONST_U32 */
    int32_t kind;      /* LAB_FILL_* */
    int32_t _pad;
} lab_llama_fill_params;

typedef struct {
    uint64_t table;    /* fp16 [vocab, hidden] row-major (HF embed_tokens) */
    uint64_t state;    /* i32 [LAB_LLAMA_STATE_WORDS] */
    uint64_t history;  /* i32 [max_ctx]: history[pos] = token fed at pos (written here) */
    uint64_t resid;    /* f32 [hidden] residual stream, written */
    int32_t hidden, vocab, max_ctx;
    int32_t _pad;
} lab_llama_embed_params;

typedef struct {
    uint64_t resid;    /* f32 [hidden] residual stream, read (and updated when delta != 0) */
    uint64_t delta;    /* fp16 [hidden] added into resid first (fused residual add), or 0 */
    uint64_t weight;   /* fp16 [hidden] RMSNorm gain */
    uint64_t out;      /* fp16 [hidden] normalized output, written */
    uint64_t perm;     /* i32 [hidden] or 0: also write out_perm[j] = out[perm[j]] (act-order linears on plain kernels) */
    uint64_t out_perm; /* fp16 [hidden], written when perm != 0 (one row: the decode step) */
    int32_t hidden;
    float eps;
} lab_llama_norm_params;

typedef struct {
    uint64_t qkv;      /* fp16 [q: heads*hd | k: kv_heads*hd | v: kv_heads*hd], q and k rotated in place */
    uint64_t k_cache;  /* fp16 [max_ctx, kv_heads*hd] of this layer: row pos written with rotated k */
    uint64_t v_cache;  /* fp16 [max_ctx, kv_heads*hd] of this layer: row pos written with v */
    uint64_t inv_freq; /* f32 [hd/2]: theta^(-2i/hd), computed on the host in f64 */
    uint64_t state;    /* i32 state words: position read from here */
    int32_t heads, kv_heads, head_dim, max_ctx;
} lab_llama_rope_params;

typedef struct {
    uint64_t qkv;      /* fp16 [heads*hd | kv | kv]: q, k, v of this step as the qkv projection left them (not rotated) */
    uint64_t k_cache;  /* fp16 [max_ctx, kv_heads*hd]: rows < pos read; row pos written here (rotated k) */
    uint64_t v_cache;  /* fp16 [max_ctx, kv_heads*hd] */
    uint64_t partial;  /* f32 [heads, n_splits, hd + 2]: per split (unnormalized out[hd], max, sum) */
    uint64_t out;      /* fp16 [heads*hd] attention output, written by each head's last split block */
    uint64_t state;    /* i32 state words: attended length = min(pos + 1, max_ctx) */
    uint64_t tickets;  /* u32 [heads], zero between launches: split blocks done per head (the last resets it) */
    uint64_t inv_freq; /* f32 [hd/2] RoPE frequencies: q and the new k are rotated in this kernel */
    uint64_t q_rot;    /* fp16 [heads*hd] out: the rotated q (what lab_llama_rope_kv left in qkv; for the trace) */
    int32_t heads, kv_heads, head_dim, max_ctx;
    int32_t chunk;     /* positions per split block */
    int32_t n_splits;  /* ceil(max_ctx / chunk): grid.y, fixed so a captured graph fits every length */
    float scale;       /* 1 / sqrt(hd) */
    int32_t prefetch_kv; /* nonzero: prefetch the block's K and V rows into L2 as soon as pos is known (v5; 0 = v4's order) */
} lab_llama_attn_params;

typedef struct {
    uint64_t gate_up;  /* fp16 [2*inter]: gate = first inter values, up = next inter (fused linear) */
    uint64_t out;      /* fp16 [inter] = silu(gate) * up */
    uint64_t perm;     /* i32 [inter] or 0: also write out_perm[j] = out[perm[j]] (act-order down projection on a plain kernel) */
    uint64_t out_perm; /* fp16 [inter], written when perm != 0 (one row: the decode step) */
    int32_t inter;
    int32_t _pad;
} lab_llama_silu_params;

typedef struct {
    uint64_t w;        /* fp16 [n, k] row-major (HF nn.Linear / lm_head layout: one row per output) */
    uint64_t x;        /* fp16 [k] */
    uint64_t y_f16;    /* fp16 [n] output, or 0 */
    uint64_t y_f32;    /* f32 [n] output, or 0 (logits) */
    int32_t n, k;      /* k a multiple of 8 (16-byte rows chunks) */
} lab_llama_gemv_f16_params;

typedef struct {
    uint64_t logits;   /* f32 [vocab] */
    uint64_t state;    /* i32 state words: TOKEN <- argmax (lowest index on ties, NaN ignored), POS += 1 */
    int32_t vocab, max_ctx;
} lab_llama_argmax_params;

typedef struct {
    uint64_t ws;       /* f32 [n] split-K accumulator of the engine's int4 GEMV: read, then zeroed */
    uint64_t y;        /* fp16 [n] */
    int32_t n;
    int32_t _pad;
} lab_llama_q4_finish_params;

typedef struct {
    uint64_t ns;       /* how long the single thread spins (globaltimer nanoseconds) */
} lab_llama_hold_params;

/* lab_llama_poison_smem (kernels/llama/ops.cu): every block fills its dynamic shared memory,
   `words` u32 of `pattern`, so the next kernel on that SM finds NaN where it reads shared memory
   it did not write (the tiny check's poisoned pass; GpuEngine::set_poison_smem). */
typedef struct {
    uint32_t pattern;
    uint32_t words;
} lab_llama_poison_params;
#define LAB_LLAMA_POISON_PATTERN 0x7E007E00u /* two fp16 NaNs = one f32 NaN (0x7E007E00) */
#define LAB_LLAMA_POISON_BYTES 49152         /* per block: the dynamic size every card allows unasked */

/* Nucleus (top-p) sampling on the GPU, the same algorithm as src/model/sampler.rs (its CPU
   mirror): weights w_i = exp((l_i - max) / T); the nucleus is every token whose logit is >= the
   largest threshold t with sum_{l_i >= t} w_i >= top_p * sum_i w_i; the token is the one whose
   interval, in index order over the nucleus, holds u * nucleus mass, u = lab_sample_u(seed, pos). */
#define LAB_SAMPLE_MIX_A 0x9E3779B97F4A7C15ull
/* Threads of the one block of lab_llama_sample_top_p (kernels/llama/ops.cu). */
#define LAB_LLAMA_TOP_P_THREADS 1024
typedef struct {
    uint64_t logits;   /* f32 [vocab] */
    uint64_t state;    /* i32 state words: TOKEN <- the drawn token, POS += 1 (as lab_llama_argmax) */
    uint64_t seed;     /* the draw at position p depends only on (seed, p): runs repeat exactly */
    float top_p;       /* (0, 1] */
    float inv_temp;    /* 1 / temperature, > 0 */
    int32_t vocab, max_ctx;
} lab_llama_sample_params;

/* ---- Persistent decode layers (kernels/llama/layers.cu, src/model/gpu_engine/persistent.rs) ----
 * One cooperative launch runs decoder layers [layer_begin, layer_end) of a decode step: per layer five
 * phases (q|k|v GEMV with the input RMSNorm in its x staging, attention, o GEMV + residual, gate|up
 * GEMV with the post-attention RMSNorm, down GEMV with silu(gate) * up in its staging + residual)
 * separated by grid barriers. The GEMV phases run gemv_v6_pipe's weight loop (gemv/gemv_v6_core.cuh)
 * over work items = (128-column tile, K slice); the attention phase runs lab_llama_attn_split's body
 * (llama/attention.cuh) over (head, split) items. All linears int4, canonical [k/8, n] layout. */
#define LAB_LAYERS_THREADS 256
#define LAB_LAYERS_MIN_BLOCKS 2     /* __launch_bounds__(256, 2): <= 128 registers, 2 blocks per SM */
#define LAB_LAYERS_MAX_PARTS 3      /* linears per phase: q, k, v separate (act-order) at most */

typedef struct {
    uint64_t qweight;  /* u32 [k/8, n] */
    uint64_t qzeros;   /* u32 [groups, n/8] true zeros, or 0 when zero_mode == SYMMETRIC */
    uint64_t scales;   /* fp16 [groups, n] */
    uint64_t perm;     /* i32 [k] activation permutation (act-order, rows group-sorted), or 0 */
    int32_t n;         /* output columns, % 8 == 0 */
    int32_t col0;      /* first column in the phase's output y (and its split-K partials) */
    int32_t tile0;     /* first split-K ticket: 128-column tiles of the phase's earlier parts */
    int32_t item0;     /* first work item: the earlier parts' tiles x split */
    int32_t group_size;/* rows per group (power of two >= 32), or k (per-channel) */
    int32_t zero_mode; /* LAB_ZEROS_* */
} lab_layers_part;

typedef struct {
    lab_layers_part part[LAB_LAYERS_MAX_PARTS];
    uint64_t y;        /* fp16 [sum of the parts' n] phase output */
    int32_t n_parts;
    int32_t items;     /* work items: sum over parts of ceil(n / 128) x split */
    int32_t k;         /* input rows (every part) */
    int32_t split;     /* K slices per tile (1: no split-K reduction) */
    int32_t k_slice;   /* rows per slice: multiple of 32, <= LAB_GEMV_V6_XS_ROWS */
    int32_t _pad;
} lab_layers_phase;

typedef struct {
    lab_layers_phase qkv, o, gate_up, down;
    uint64_t attn_norm;  /* fp16 [hidden] input_layernorm gain */
    uint64_t ffn_norm;   /* fp16 [hidden] post_attention_layernorm gain */
    uint64_t k_cache;    /* fp16 [max_ctx, kv_dim] of this layer */
    uint64_t v_cache;
} lab_layers_layer;

typedef struct {
    uint64_t layers;     /* lab_layers_layer [n_layers] in device memory (built once by the engine) */
    lab_llama_attn_params attn; /* the attention of every layer; k_cache / v_cache come from the layer */
    uint64_t resid;      /* f32 [hidden] residual stream: normalized by the q|k|v and gate|up phases, += o and down */
    uint64_t gate_up;    /* fp16 [2 inter]: the down phase's gated input (the gate|up phase's y) */
    uint64_t workspace;  /* f32 [widest phase n]: split-K partials, zero between phases */
    uint64_t tickets;    /* u32 [tiles of the widest phase]: zero between phases */
    uint64_t barrier;    /* u64 grid-barrier arrivals, zeroed once, never reset (multiples of gridDim.x) */
    uint64_t trace_attn_norm;  /* fp16 [hidden] or 0: the q|k|v phase's staged x (a debug trace) */
    uint64_t trace_ffn_norm;   /* fp16 [hidden] or 0: the gate|up phase's staged x */
    uint64_t trace_act;        /* fp16 [inter] or 0: the down phase's staged silu(gate) * up */
    uint64_t trace_resid_attn; /* f32 [hidden] or 0: resid after the o phase's residual add */
    int32_t layer_begin, layer_end;
    int32_t hidden;
    float eps;           /* RMSNorm epsilon */
    int32_t prefetch_bytes; /* L2 prefetch per block of its next phase's tiles, before each barrier */
    int32_t barriers_only;  /* 1: skip every phase's work (norms, GEMVs, attention, prefetch) and run only
                               the grid barriers: what they cost alone (the decode bench's note) */
} lab_llama_layers_params;

/* ---- LLaMA prefill (kernels/llama/prefill.cu): m prompt rows through a layer at once ----
 * Row-major [m, width] activations; row r is the token at position pos0 + r. Not graph-captured
 * (one launch sequence per prompt chunk), so positions are plain parameters. The row-aware decode
 * ops (add_rmsnorm: grid.x = rows; rope_kv, silu_mul: grid.y = rows) serve prefill unchanged. */
#define LAB_LLAMA_PREFILL_ATTN_THREADS 128
/* Splits per head the decode attention's combine holds in shared memory (lab_llama_attn_split):
   max_ctx / attn_chunk must not exceed it (GpuEngine::new checks). */
#define LAB_LLAMA_ATTN_MAX_SPLITS 1000
#define LAB_LLAMA_PREFILL_ATTN_QT 16  /* queries per attention block */
#define LAB_LLAMA_PREFILL_ATTN_KT 32  /* keys per shared-memory tile (one per lane in the softmax) */

typedef struct {
    uint64_t table;    /* fp16 [vocab, hidden] */
    uint64_t tokens;   /* i32 [m] */
    uint64_t history;  /* i32 [max_ctx]: history[pos0 + r] = tokens[r] (written) */
    uint64_t resid;    /* f32 [m, hidden] residual rows, written (NaN for an out-of-range token) */
    uint64_t state;    /* i32 state words: FLAGS |= BAD_TOKEN for an out-of-range token */
    int32_t m, pos0, hidden, vocab, max_ctx;
    int32_t _pad;
} lab_llama_prefill_embed_params;

typedef struct {
    uint64_t qkv;      /* fp16 [m, heads*hd + 2*kv_dim]: q (rotated) is the first heads*hd of a row */
    uint64_t k_cache;  /* fp16 [max_ctx, kv_dim] of this layer, rows 0 .. pos0+m-1 written */
    uint64_t v_cache;  /* fp16 [max_ctx, kv_dim] of this layer */
    uint64_t out;      /* fp16 [m, heads*hd] attention output, written */
    int32_t m, pos0, heads, kv_heads, head_dim, max_ctx;
    float scale;       /* 1 / sqrt(hd), applied to the fp32 score */
    int32_t _pad;
} lab_llama_prefill_attn_params;

typedef struct {
    uint64_t src;      /* u32 [k/8, n] canonical codes (rows already group-sorted for act-order) */
    uint64_t dst;      /* u32 [ceil(k/32)][ceil(n/32)][32][4] gemm_v2 fragment order (src/kernels/gemm_layout.rs) */
    uint64_t words;    /* prepared words = gemm_layout::prepared_words(k, n) */
    int32_t k, n;      /* k % 8 == 0, n % 8 == 0 */
} lab_llama_repack_params;

#endif
