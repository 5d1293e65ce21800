//! The kernel ABI (bindgen of kernels/abi.h), the registry of variants, and typed launchers.

pub mod abi {
    //! Generated from kernels/abi.h by bindgen in build.rs: nothing here is written by hand.
    #![allow(
        non_camel_case_types,
        non_upper_case_globals,
        non_snake_case,
        dead_code
    )]
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

// SAFETY: plain-old-data structs of u64 device addresses and i32s, same layout in C and Rust
// (bindgen layout tests check it); the kernels receive them by value.
unsafe impl cudarc::driver::DeviceRepr for abi::lab_gemm_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_ref_matmul_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_probe_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_fill_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_embed_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_norm_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_rope_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_attn_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_silu_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_gemv_f16_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_argmax_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_hold_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_poison_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_sample_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_q4_finish_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_prefill_embed_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_prefill_attn_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_repack_params {}
unsafe impl cudarc::driver::DeviceRepr for abi::lab_llama_layers_params {}

pub mod baseline;
pub mod gemm;
#[cfg(test)]
mod gemm_emulate;
#[cfg(test)]
mod gemm_gpu_test;
pub mod gemm_layout;
pub mod gemv;
#[cfg(test)]
mod gemv_v6_emulate;
pub mod launch;
pub mod layer;
pub mod registry;
pub mod static_check;
