// Programmatic dependent launch (PDL, sm_90+): the first statement of every kernel the decode
// step launches (kernels/llama, kernels/gemv).
//
// Why: a decode step is ~12 launches per layer (~420 for 7B); in a CUDA graph each boundary still
// costs the next grid's launch + ramp (~1-3 us on an H100) while the previous grid drains its
// last wave. With the engine's --pdl, kernels are launched with
// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: `launch_dependents` lets the next grid
// be scheduled as soon as every block of this one has started, and `wait` holds each of its
// threads until the previous grid has completed and its memory is visible. Because `wait` comes
// before any access to what the previous grid may write, the ordering is exactly the stream's;
// only the launch latency and the weight reads (below) overlap. Launched without the attribute
// (or on sm < 90, where this compiles to nothing), both instructions are no-ops.
//
// LAB_PDL_ENTER() = LAB_PDL_LAUNCH() + LAB_PDL_WAIT(): the GEMVs put their weight prefetch between.
// A kernel launched with the attribute but without the wait would race with its predecessor:
// tests/static_kernels.rs (decode_kernels_wait_for_their_predecessor_before_any_memory_access)
// fails if any sm_90 kernel of these families lacks it or touches memory before it.
#ifndef LAB_PDL_CUH
#define LAB_PDL_CUH
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LAB_PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define LAB_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define LAB_PDL_LAUNCH() do { } while (0)
#define LAB_PDL_WAIT() do { } while (0)
#endif
#define LAB_PDL_ENTER() do { LAB_PDL_LAUNCH(); LAB_PDL_WAIT(); } while (0)

// Weight reads before the wait (the GEMV kernels, since 2026-11-27).
//
// Why: the H100 decode profile (reports/nvidia-h100-80gb-hbm3/decode.md, "Where a step goes")
// shows every GEMV of the step preceded by a kernel that moves almost no DRAM bytes (the
// add + RMSNorm: one block; attention at ctx 128: ~2 MB; SiLU * up: 44 KB), during which the
// memory system idles, and each GEMV then pays its DRAM ramp (~1-2 us of a 5-15 us kernel). The
// weights are never written while a step runs, so a GEMV may read them before its wait: its blocks,
// launched early by the predecessor's launch_dependents, start streaming their tile while the
// small kernel still runs. Only what the predecessor writes (x, the split-K workspace, y) waits.
//
// The rule that keeps this safe, checked in the SASS by tests/static_kernels.rs: before ACQBULK a
// kernel may prefetch into L2 (CCTL.E.PF2) and touch memory in no other way. A prefetch moves no
// data into registers, so even a wrong address could not feed a stale value into the math; the
// GEMVs only ever prefetch their own weight tile.
//
// Budget: bytes per block, from the launch (lab_gemm_params.prefetch_bytes: the engine's
// EngineOptions::pdl_prefetch, 0 when the step runs without PDL, where nothing overlaps and the
// prefetch would only add instructions) or LAB_PDL_PREFETCH_BYTES (the fp16 lm_head GEMV). A GEMV
// keeps ~264-396 blocks resident (2-3 per SM), so 32 KB each is 8.5-12.7 MB: ~3-4 us of DRAM time
// at the 3.09 TB/s read ceiling, about what the preceding small kernel lasts, and well under the
// 50 MB L2 even with the GEMV's other bytes. `lab decode --pdl-prefetch` times other budgets.
#ifndef LAB_PDL_PREFETCH_BYTES
#define LAB_PDL_PREFETCH_BYTES 32768
#endif

// L2 prefetch of up to `budget` bytes of `rows` rows of `row_bytes` bytes, `stride` bytes apart,
// starting at base: one 128-byte line per thread and iteration. Every prefetched address lies
// inside the given rows, so nothing outside the tensor is touched. Any arch: the persistent decode
// layers (kernels/llama/layers.cu) prefetch their next phase's tiles before each grid barrier.
__device__ __forceinline__ void lab_prefetch_l2_rows_any_arch(const void* base, size_t stride, int rows,
                                                              int row_bytes, int budget) {
    if (rows <= 0 || row_bytes <= 0 || budget <= 0) return;
    const int lines = (row_bytes + 127) >> 7;
    const int max_rows = budget / (lines << 7);
    const int n = (rows < max_rows ? rows : max_rows) * lines;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const char* a = reinterpret_cast<const char*>(base) + (size_t)(i / lines) * stride + ((size_t)(i % lines) << 7);
        asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
    }
}

// The PDL prologue's prefetch: sm_90+ only, since below it there is no PDL, so nothing would
// overlap.
__device__ __forceinline__ void lab_prefetch_l2_rows(const void* base, size_t stride, int rows, int row_bytes,
                                                     int budget) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    lab_prefetch_l2_rows_any_arch(base, stride, rows, row_bytes, budget);
#endif
}
#endif
