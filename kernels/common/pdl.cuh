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
// kernel may only prefetch into L2 (CCTL) or load with the evict-first hint (LDG.E.EF: __ldcs,
// lab_ld_stream), and evict-first loads are used for weights and nothing else.
//
// Budget: LAB_PDL_PREFETCH_BYTES per block. A GEMV keeps ~264-396 blocks resident (2-3 per SM),
// so 32 KB each is 8.5-12.7 MB: ~3-4 us of DRAM time at the 3.09 TB/s read ceiling, about what the
// preceding small kernel lasts, and well under the 50 MB L2 even with the GEMV's other bytes.
#ifndef LAB_PDL_PREFETCH_BYTES
#define LAB_PDL_PREFETCH_BYTES 32768
#endif

// L2 prefetch of up to LAB_PDL_PREFETCH_BYTES of `rows` rows of `row_bytes` bytes, `stride`
// bytes apart, starting at base: one 128-byte line per thread and iteration. Every prefetched
// address lies inside the given rows, so nothing outside the tensor is touched.
__device__ __forceinline__ void lab_prefetch_l2_rows(const void* base, size_t stride, int rows, int row_bytes) {
    if (rows <= 0 || row_bytes <= 0) return;
    const int lines = (row_bytes + 127) >> 7;
    const int max_rows = LAB_PDL_PREFETCH_BYTES / (lines << 7);
    const int n = (rows < max_rows ? rows : max_rows) * lines;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const char* a = reinterpret_cast<const char*>(base) + (size_t)(i / lines) * stride + ((size_t)(i % lines) << 7);
        asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
    }
}
#endif
