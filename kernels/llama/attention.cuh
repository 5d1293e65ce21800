// The decode attention of one (head, split) block: the body of lab_llama_attn_split (attention.cu,
// whose top comment has the design and its numbers), also run by the persistent decode layers
// (layers.cu) as one work item of their attention phase. A block runs it for one (head, split);
// it returns early where its chunk is empty or it is not the head's combining block, and every
// __syncthreads inside is reached by the whole block (all branches around them are block-uniform).
// Reads qkv with plain (coherent) loads, never ld.global.nc: in the persistent kernel qkv was
// written by other blocks of the same launch, before a grid barrier.
#ifndef LAB_LLAMA_ATTENTION_CUH
#define LAB_LLAMA_ATTENTION_CUH
#include "llama/util.cuh"
#include "common/pdl.cuh"

#define LLAMA_ATTN_THREADS 256
// 16-byte K (then V) loads in flight per thread per step. v4: 8, so one step covers 8 x 16 = 128
// positions at hd 128 (v3: 4, two round trips per 128 positions).
// Registers and occupancy (ptxas sm_90, 256 threads; the H100 run at 31757ac measured the first):
//   unroll 8 + the first V step loaded beside K: 122 registers, 2 blocks/SM. At ctx 2048 the
//     7B grid (32 heads x 17 splits of 128 = 544 blocks) ran in 3 rounds: attention +15% at ctx
//     2048, -10% at ctx 128 against v3 (47 registers, 5 blocks/SM, one round).
//   unroll 8, no V prefetch, min 4 blocks/SM: 64 registers, no spills (the choice); unroll 4:
//     48; min 5 blocks/SM at unroll 8 spills 160 bytes.
// With the 256-position default chunk (GpuEngine DEFAULT_ATTN_CHUNK) a 7B / 13B grid at max_ctx
// 2100 is 288 / 360 blocks, inside the 528 resident (4 x 132) in one round, and every context
// below 256 is one split per head (direct write, no combine).
#define LLAMA_ATTN_UNROLL 8
#define LLAMA_ATTN_MIN_BLOCKS 4
// The combine keeps every split's m and l in shared memory, in the 2048 floats of `red`
// (groups x hd = 2048 for every hd) past its 32 floats of reduction scratch.
static_assert(32 + 2 * LAB_LLAMA_ATTN_MAX_SPLITS <= 2048, "split (m, l) pairs must fit in red");


// Shared memory (dynamic): q*scale [hd] | scores [chunk] | V partial sums [256/(hd/8)][hd].
// hd is a power of two in 8..256 (the launcher checks), so hd/8 lanes cover one position's row.
static __device__ __forceinline__ void llama_attn_block(const lab_llama_attn_params& p, int head, int split,
                                                        float* sm) {
    const int hd = p.head_dim;
    const int kvh = head / (p.heads / p.kv_heads);
    // The rope's inputs first, before `pos`: the q pair of this head and the new row's k and v pair
    // of its kv head (one pair per thread: hd <= 256, the launcher checks, so hd / 2 <= 128 <
    // blockDim.x). None of these addresses depends on pos, so this round trip overlaps the state
    // read's instead of following it (v5; v4 issued them after pos and the early exit). A block
    // that exits below has read them for nothing: 6 halfs per thread.
    const int i = threadIdx.x;
    const bool pair = i < hd / 2;
    const __half* qkv = reinterpret_cast<const __half*>(p.qkv);
    const __half* q = qkv + (size_t)head * hd;
    const __half* kn = qkv + (size_t)p.heads * hd + (size_t)kvh * hd;
    const __half* vn = kn + (size_t)p.kv_heads * hd;
    const float* inv_freq = reinterpret_cast<const float*>(p.inv_freq);
    __half qa = __float2half(0.f), qb = qa, kah = qa, kbh = qa, vah = qa, vbh = qa;
    float freq = 0.f;
    if (pair) {
        qa = q[i];
        qb = q[i + hd / 2];
        kah = kn[i];
        kbh = kn[i + hd / 2];
        vah = vn[i];
        vbh = vn[i + hd / 2];
        freq = inv_freq[i];
    }
    const int pos = llama_pos(p.state);
    const int len = min(pos + 1, p.max_ctx);
    // Positions per split: up to one chunk, the head's one block takes them all (no combine);
    // past it, all n_splits blocks share them (ceil(len / n_splits) <= chunk, since max_ctx <=
    // n_splits x chunk): at ctx 512 of max_ctx 2100, 9 blocks of 59 positions (one load step
    // each) instead of 3 of 256 (two steps each). Every block derives the same value from pos.
    // (4324cee; reverted in 2a58a92 while the NaN below was unexplained, back since the fix.)
    const int chunk = len <= p.chunk ? p.chunk : (len + p.n_splits - 1) / p.n_splits;
    const int start = split * chunk;
    if (pos >= p.max_ctx && head == 0 && split == 0 && threadIdx.x == 0)
        atomicOr(reinterpret_cast<int*>(p.state) + LAB_LLAMA_STATE_FLAGS, LAB_LLAMA_FLAG_CTX_FULL);
    if (start >= len) return;  // block-uniform: nothing to attend in this chunk
    const int end = min(start + chunk, len);
    const int kv_dim = p.kv_heads * hd;
    const int lpp = hd / 8;                    // lanes per position
    const int groups = blockDim.x / lpp;       // positions handled at once by the block
    const int g = threadIdx.x / lpp, l = threadIdx.x % lpp;
    float* qs = sm;
    float* sc = qs + hd;
    float* red = sc + p.chunk;

    // v5 (latency): this block's K and V rows into L2 now, while the q/k/v loads above are in flight, so the
    // score loop's K loads (after the rope's barrier) and the V loads (after the softmax) find them
    // in L2 instead of each paying a DRAM round trip in series. At ctx 128 that is 128 rows x 2 lines
    // x 2 = 512 prefetches, two per thread; the new row (pos) is prefetched too, harmlessly (it
    // is written below through L2 and read from kcur/vcur). Every address lies in rows
    // [start, end) of this kv head, inside the cache.
    // p.prefetch_kv = 0 keeps v4's order (the decode bench's in-process A/B column).
    if (p.prefetch_kv) {
        const size_t row_bytes = (size_t)p.kv_heads * hd * 2, head_off = (size_t)kvh * hd * 2;
        const char* k0 = reinterpret_cast<const char*>(p.k_cache) + (size_t)start * row_bytes + head_off;
        const char* v0 = reinterpret_cast<const char*>(p.v_cache) + (size_t)start * row_bytes + head_off;
        lab_prefetch_l2_rows_any_arch(k0, row_bytes, end - start, hd * 2, 0x7fffffff);
        lab_prefetch_l2_rows_any_arch(v0, row_bytes, end - start, hd * 2, 0x7fffffff);
    }

    // RoPE (HF rotate-half: pairs i, i + hd/2, angle pos * inv_freq[i]) as lab_llama_rope_kv does
    // it, fp16 rounding included: q of this head, and k of its kv head when this block holds the
    // new row. kcur/vcur: that row's k (rotated) and v, fp16, read in place of the cache row.
    __shared__ __align__(16) __half kcur[256], vcur[256];
    const bool has_cur = pos < p.max_ctx && start <= pos && pos < end;
    if (pair) {
        const float a = __half2float(qa), b = __half2float(qb);
        float sn, cs;
        sincosf((float)pos * freq, &sn, &cs);
        const __half ra = __float2half_rn(a * cs - b * sn), rb = __float2half_rn(b * cs + a * sn);
        qs[i] = __half2float(ra) * p.scale;
        qs[i + hd / 2] = __half2float(rb) * p.scale;
        if (split == 0) {  // one writer per head for the trace copy
            __half* qr = reinterpret_cast<__half*>(p.q_rot) + (size_t)head * hd;
            qr[i] = ra;
            qr[i + hd / 2] = rb;
        }
        if (has_cur) {
            const float ka = __half2float(kah), kb = __half2float(kbh);
            kcur[i] = __float2half_rn(ka * cs - kb * sn);
            kcur[i + hd / 2] = __float2half_rn(kb * cs + ka * sn);
            vcur[i] = vah;
            vcur[i + hd / 2] = vbh;
        }
    }
    __syncthreads();
    if (has_cur && head % (p.heads / p.kv_heads) == 0) {  // the kv group's first q head appends
        const size_t row = (size_t)pos * kv_dim + (size_t)kvh * hd;
        __half* kc_row = reinterpret_cast<__half*>(p.k_cache) + row;
        __half* vc_row = reinterpret_cast<__half*>(p.v_cache) + row;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            kc_row[d] = kcur[d];
            vc_row[d] = vcur[d];
        }
    }
    float qf[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) qf[j] = qs[l * 8 + j];

    const uint4* vc = reinterpret_cast<const uint4*>(p.v_cache);
    const size_t row16 = (size_t)kv_dim / 8, col16 = (size_t)kvh * hd / 8 + l;

    // Scores. The loop count depends only on (start, end, groups): uniform over the block, so
    // every lane reaches the shuffles below.
    const uint4* kc = reinterpret_cast<const uint4*>(p.k_cache);
    for (int base = start; base < end; base += groups * LLAMA_ATTN_UNROLL) {
        uint4 kv[LLAMA_ATTN_UNROLL];
#pragma unroll
        for (int u = 0; u < LLAMA_ATTN_UNROLL; ++u) {
            const int pp = base + u * groups + g;
            // `pp < end` first: a step may run past this block's end, and pos may lie there, in
            // another block's range, where this block never wrote kcur (see the V loop).
            kv[u] = pp >= end  ? make_uint4(0, 0, 0, 0)
                  : pp == pos ? reinterpret_cast<const uint4*>(kcur)[l]
                              : kc[(size_t)pp * row16 + col16];
        }
#pragma unroll
        for (int u = 0; u < LLAMA_ATTN_UNROLL; ++u) {
            const int pp = base + u * groups + g;
            float d = llama_dot8(kv[u], qf);
            for (int o = lpp / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            if (l == 0 && pp < end) sc[pp - start] = d;
        }
    }
    __syncthreads();

    const int n = end - start;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, sc[i]);
    m = llama_block_max(m, red);  // red doubles as reduction scratch (>= 32 floats)
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(sc[i] - m);
        sc[i] = e;
        s += e;
    }
    s = llama_block_sum(s, red);  // its barriers also publish the sc[] writes above

    // Weighted V: group g sums positions g, g + groups, ...; lane l owns dims l*8 .. l*8+7.
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = 0.f;
    for (int base = start + g; base < end; base += groups * LLAMA_ATTN_UNROLL) {
        uint4 vv[LLAMA_ATTN_UNROLL];
#pragma unroll
        for (int u = 0; u < LLAMA_ATTN_UNROLL; ++u) {
            const int pp = base + u * groups;
            // `pp < end` first. With pp == pos tested first, a block whose step ran past its end
            // onto pos (another block's range) read vcur, which only the block holding pos
            // writes: leftover shared memory of an earlier kernel, and its weight 0 times an fp16
            // Inf/NaN there is NaN. Every int4 decode-bench step at ctx 512-2048 of H100 runs 9
            // and 10 ended with all logits NaN that way (the length-following chunk of 57-61
            // positions put pos within a 128-position step of split 7's end; found by a code
            // review after the runs; notes/kernels.md "NaN at ctx >= 512").
            vv[u] = pp >= end  ? make_uint4(0, 0, 0, 0)
                  : pp == pos ? reinterpret_cast<const uint4*>(vcur)[l]
                              : vc[(size_t)pp * row16 + col16];
        }
#pragma unroll
        for (int u = 0; u < LLAMA_ATTN_UNROLL; ++u) {
            const int pp = base + u * groups;
            const float w = pp < end ? sc[pp - start] : 0.f;
            const __half2* h = reinterpret_cast<const __half2*>(&vv[u]);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 f = __half22float2(h[j]);
                acc[2 * j] = fmaf(w, f.x, acc[2 * j]);
                acc[2 * j + 1] = fmaf(w, f.y, acc[2 * j + 1]);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) red[g * hd + l * 8 + j] = acc[j];
    __syncthreads();
    const int ns = min((len + chunk - 1) / chunk, p.n_splits);
    __half* out = reinterpret_cast<__half*>(p.out) + (size_t)head * hd;
    float* part = reinterpret_cast<float*>(p.partial) + ((size_t)head * p.n_splits + split) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
        for (int gg = 0; gg < groups; ++gg) o += red[gg * hd + d];
        // One split: the combine below would compute o e^0 / (s e^0), exactly o / s.
        if (ns == 1) out[d] = __float2half_rn(o / s);
        else part[d] = o;
    }
    if (ns == 1) return;  // block-uniform; no ticket was taken, so the head's stays 0
    if (threadIdx.x == 0) {
        part[hd] = m;
        part[hd + 1] = s;
    }

    // The head's last block combines. Every block's partial is published (fence) before its
    // ticket; the block that draws ticket ns - 1 has seen all ns tickets, so every partial is
    // visible to it (read with ld.global.cg: L1 is not coherent across blocks).
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned* ticket = reinterpret_cast<unsigned*>(p.tickets) + head;
        last = atomicAdd(ticket, 1u) == (unsigned)(ns - 1);
        if (last) *ticket = 0u;  // ready for the next step (no other block of this head is left)
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Every split's (m, l) read once, in parallel (thread sp), kept in shared memory past the
    // reduction scratch: ms[sp] = m, then the weight e^(m - M); ls[sp] = l.
    const float* hp = reinterpret_cast<const float*>(p.partial) + (size_t)head * p.n_splits * (hd + 2);
    float* ms = red + 32;
    float* ls = ms + LAB_LLAMA_ATTN_MAX_SPLITS;
    float mloc = -INFINITY;
    for (int sp = threadIdx.x; sp < ns; sp += blockDim.x) {
        ms[sp] = __ldcg(hp + sp * (hd + 2) + hd);
        ls[sp] = __ldcg(hp + sp * (hd + 2) + hd + 1);
        mloc = fmaxf(mloc, ms[sp]);
    }
    const float mx = llama_block_max(mloc, red);
    float dloc = 0.f;
    for (int sp = threadIdx.x; sp < ns; sp += blockDim.x) {  // the same thread wrote ms[sp]
        const float e = expf(ms[sp] - mx);
        ms[sp] = e;
        dloc += ls[sp] * e;
    }
    const float den = llama_block_sum(dloc, red);  // its barriers publish ms[] to every thread
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
#pragma unroll 8
        for (int sp = 0; sp < ns; ++sp) o += __ldcg(hp + sp * (hd + 2) + d) * ms[sp];
        out[d] = __float2half_rn(o / den);
    }
}

#endif
