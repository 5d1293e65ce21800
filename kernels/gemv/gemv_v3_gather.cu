// v3: act-order by g_idx gather (family list: top of gemv_v1_naive.cu).
// Checked by: lab check --family gemv      Timed by: lab bench --family gemv
//
// Rows stay in checkpoint order; the group of row r is g_idx[r] (or r / group_size when g_idx is
// null), so every row needs its own scale and zero: per packed row 2 g_idx loads + 8 scale loads
// + 8 zero loads and fp32 dequant per weight, where v2 does one scale/zero load per 32 rows.
// It is the 2023 way that made act-order checkpoints several times slower, kept to measure what
// v4's load-time reorder saves. Same thread mapping and 16-byte weight loads as v2 (gemv_tile.cuh).
#include "gemv_tile.cuh"

template <int WARPS>
__device__ __forceinline__ void lab_gemv_v3(const lab_gemm_params& p) {
    constexpr int U = 4, KL = 4 * WARPS;
    const int col = LAB_GEMV_TILE_N * blockIdx.x + 4 * (threadIdx.x & 7);
    const int kl = 4 * (threadIdx.x >> 5) + ((threadIdx.x & 31) >> 3);
    const int kw = p.k >> 3;
    const bool sym = p.zero_mode == LAB_ZEROS_SYMMETRIC;
    const uint4* qw = reinterpret_cast<const uint4*>(p.qweight);
    const uint4* x8 = reinterpret_cast<const uint4*>(p.x);
    const __half* scales = reinterpret_cast<const __half*>(p.scales);
    const uint32_t* qzeros = reinterpret_cast<const uint32_t*>(p.qzeros);
    const int32_t* g_idx = reinterpret_cast<const int32_t*>(p.g_idx);
    const size_t n = (size_t)p.n;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (col < p.n) {
        for (int w0 = U * kl; w0 < kw; w0 += U * KL) {
            uint4 wq[U];
#pragma unroll
            for (int j = 0; j < U; ++j)
                wq[j] = (w0 + j < kw) ? lab_ld_stream(qw + (((size_t)(w0 + j) * n + col) >> 2))
                                      : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
            for (int j = 0; j < U; ++j) {
                const int w = w0 + j;
                if (w >= kw) break;
                const uint4 xv = __ldg(x8 + w);
                const half2 xh[4] = {lab_u32_as_half2(xv.x), lab_u32_as_half2(xv.y), lab_u32_as_half2(xv.z),
                                     lab_u32_as_half2(xv.w)};
                int gi[8];
                if (g_idx) {
                    const int4 a = __ldg(reinterpret_cast<const int4*>(g_idx) + 2 * w);
                    const int4 b = __ldg(reinterpret_cast<const int4*>(g_idx) + 2 * w + 1);
                    gi[0] = a.x; gi[1] = a.y; gi[2] = a.z; gi[3] = a.w;
                    gi[4] = b.x; gi[5] = b.y; gi[6] = b.z; gi[7] = b.w;
                } else {
#pragma unroll
                    for (int i = 0; i < 8; ++i) gi[i] = (8 * w + i) / p.group_size;
                }
                const uint32_t words[4] = {wq[j].x, wq[j].y, wq[j].z, wq[j].w};
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const size_t g = (size_t)gi[i];
                    const uint2 sv = __ldg(reinterpret_cast<const uint2*>(scales + g * n + col));
                    const uint32_t zw =
                        sym ? 0x8888u : (__ldg(qzeros + g * (n >> 3) + (col >> 3)) >> (4 * (col & 7)));
                    const float xi = (i & 1) ? __high2float(xh[i >> 1]) : __low2float(xh[i >> 1]);
                    const float s[4] = {__low2float(lab_u32_as_half2(sv.x)), __high2float(lab_u32_as_half2(sv.x)),
                                        __low2float(lab_u32_as_half2(sv.y)), __high2float(lab_u32_as_half2(sv.y))};
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const int q = (words[c] >> (4 * i)) & 0xF;
                        const int z = (zw >> (4 * c)) & 0xF;
                        // x * s is exact in fp32 (11 x 11 bits); the FMA rounds once.
                        acc[c] = fmaf(xi * s[c], (float)(q - z), acc[c]);
                    }
                }
            }
        }
    }
    const float total = lab_gemv_tile_reduce<WARPS>(acc);
    const int out = LAB_GEMV_TILE_N * blockIdx.x + threadIdx.x;
    if (threadIdx.x < 32 && out < p.n)
        reinterpret_cast<__half*>(p.y)[out] = __float2half_rn(total + lab_bias_at(p, out));
}

#define LAB_GEMV_V3(T)                                                                            \
    extern "C" __global__ void __launch_bounds__(T) lab_gemv_v3_gather_t##T(lab_gemm_params p) { LAB_PDL_ENTER(); \
        lab_gemv_v3<T / 32>(p);                                                                   \
    }
LAB_GEMV_V3(128)
LAB_GEMV_V3(256)
