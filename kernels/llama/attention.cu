// Attention of one new token over the KV cache (decode), split along the sequence
// ("flash-decoding"): each (head, chunk of positions) block writes an unnormalized partial; the
// last block of a head to finish (a per-head ticket) combines the head's partials with the
// log-sum-exp rule: out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M).
//   lab_llama_attn_split    v5: grid (heads, n_splits) x 256 threads; 16-byte K/V loads, hd/8 lanes per position;
//                              v2 folded the combine in (v1 launched lab_llama_attn_combine), v3 folds RoPE and
//                              the KV append in (the decode step no longer launches lab_llama_rope_kv): every
//                              block rotates its q head; the block whose chunk holds the new position rotates
//                              its kv head's k itself and takes k, v of that row from registers/smem, not the
//                              cache, and the first q head of each kv group writes the row to the cache. Two
//                              launches per layer less than v1 (~64 per 7B step).
//                              v4 (latency, not bytes: at ctx 128 a layer's attention streams ~2 MB, 0.7 us at
//                              the read ceiling, and the H100 profile gave ~10 us per layer): 8 loads in
//                              flight per step (64 registers, 4 blocks/SM: numbers at LLAMA_ATTN_UNROLL),
//                              q/k/v loads ahead of the sincos, a head with one split writes its output directly
//                              (no partial, fence or ticket), and the combine reads the splits' (m, l)
//                              in parallel instead of three serial passes over them. Past one chunk
//                              the split size follows the length (attention.cuh); the loads past a
//                              block's end select zero before the new row (the NaN of runs 9-10).
//                              v5 (2026-11-27, fourth session; latency again): the rope's q/k/v loads are issued
//                              before the state read (v4: after it, in series), and, when p.prefetch_kv is set,
//                              every K and V row of the block's range is prefetched into L2 as soon as pos is
//                              known, so the score loop's K loads and the V loads after the softmax wait on L2,
//                              not DRAM. Run 13 measured the prefetch SLOWER at ctx >= 512: off by default since. Chain at ctx 128
//                              (one load step each): v4 = state -> q/k/v -> K -> V, four DRAM round trips in
//                              series (~0.7-1 us each); v5 = (state | q/k/v) -> K, V from L2 in flight.
//                              Prediction (H100, 7B, ctx 128): the profile's rope + attention 436 -> ~370-390 us
//                              per step (marks included), the graph + PDL step 40-70 us faster; at ctx 2048
//                              (two K and two V steps per block) a larger share.
// Why split: one block per head is 32 blocks on a 132-SM H100, a quarter of the machine; at 2048
// positions the 7B cache read is 2048 x 32 layers x 2 x 4096 x 2 B = 1.07 GB per token, a third of
// the int4 weights, so it must run near full bandwidth. The grid is sized for max_ctx so a captured
// graph serves every length: blocks whose chunk starts past the current length exit at once.
// Checked by: cargo test --release --test gpu_decode (CPU f64 attention, several chunk sizes).
#include "llama/attention.cuh"

// Grid (heads, n_splits) x LLAMA_ATTN_THREADS; dynamic shared memory as llama_attn_block says.
extern "C" __global__ void __launch_bounds__(LLAMA_ATTN_THREADS, LLAMA_ATTN_MIN_BLOCKS)
lab_llama_attn_split(lab_llama_attn_params p) {
    LAB_PDL_ENTER();
    extern __shared__ float sm[];
    llama_attn_block(p, blockIdx.x, blockIdx.y, sm);
}
