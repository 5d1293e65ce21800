// Programmatic dependent launch (PDL, sm_90+): the first statement of every kernel the decode
// step launches (kernels/llama, kernels/gemv).
//
// Why: a decode step is ~12 launches per layer (~420 for 7B); in a CUDA graph each boundary still
// costs the next grid's launch + ramp (~1-3 us on an H100) while the previous grid drains its
// last wave. With the engine's --pdl, kernels are launched with
// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: `launch_dependents` lets the next grid
// be scheduled as soon as every block of this one has started, and `wait` holds each of its
// threads until the previous grid has completed and its memory is visible. Because `wait` comes
// before any memory access, the ordering is exactly the stream's; only the launch latency
// overlaps. Launched without the attribute (or on sm < 90, where this compiles to nothing), both
// instructions are no-ops.
//
// A kernel launched with the attribute but without this line would race with its predecessor:
// tests/static_kernels.rs (decode_kernels_wait_for_their_predecessor_before_any_memory_access)
// fails if any sm_90 kernel of these families lacks it or touches memory before it.
#ifndef LAB_PDL_CUH
#define LAB_PDL_CUH
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LAB_PDL_ENTER() asm volatile("griddepcontrol.launch_dependents;\n\tgriddepcontrol.wait;" ::: "memory")
#else
#define LAB_PDL_ENTER() do { } while (0)
#endif
#endif
