//! The cuBLAS fp16 baselines (`gemv_cublas_f16`, `gemv_dequant_cublas`): loading libcublas at run
//! time without panicking, and y = x . W_f16 (+ bias) through cublasGemmEx (fp16 in/out, fp32 compute).
//!
//! cudarc opens libcublas lazily and panics if it is missing; `is_culib_present` probes first.
//! cudarc's CUDA 12.9 bindings look for `libcublas.so`, `libcublas.so.12`, ... but not `.so.13`:
//! on a CUDA 13 install (e.g. PyTorch's nvidia/cu13/lib) a `libcublas.so` symlink on
//! LD_LIBRARY_PATH is needed; the error says so and names the file it found.

use super::layer::DeviceLayer;
use crate::cuda::Gpu;
use crate::error::DriverCtx;
use crate::{LabError, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;
use half::f16;
use std::path::{Path, PathBuf};

/// Why cuBLAS cannot be used here, or None.
pub fn cublas_unavailable_reason() -> Option<String> {
    // SAFETY: only tries to dlopen the candidate library names; touches no CUDA state.
    if unsafe { cudarc::cublas::sys::is_culib_present() } {
        return None;
    }
    let names = cudarc::get_lib_name_candidates("cublas");
    let found = find_libcublas();
    let hint = match found.first() {
        Some(p) => {
            let dir = p.parent().unwrap_or(Path::new("/"));
            format!(
                "found {} (not under a name cudarc tries); make it loadable: mkdir -p /tmp/lab-cublas && ln -sf {} /tmp/lab-cublas/libcublas.so && export LD_LIBRARY_PATH=/tmp/lab-cublas:{}:$LD_LIBRARY_PATH",
                p.display(),
                p.display(),
                dir.display()
            )
        }
        None => "no libcublas.so* found under LD_LIBRARY_PATH, /usr/local/cuda*, /usr/lib, /opt or Python site-packages; install CUDA's cuBLAS (e.g. the nvidia-cublas wheel) and put its lib folder on LD_LIBRARY_PATH".into(),
    };
    Some(format!(
        "libcublas could not be loaded (tried {} names: {}); {hint}",
        names.len(),
        names.join(", ")
    ))
}

/// libcublas.so* files in the usual places (LD_LIBRARY_PATH, CUDA installs, Python wheels), newest
/// name first. Bounded walk: a missing library must not cost seconds.
fn find_libcublas() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    roots.extend(
        [
            "/usr/local/cuda/lib64",
            "/opt",
            "/usr/local/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/python3",
        ]
        .iter()
        .map(PathBuf::from),
    );
    let mut found = Vec::new();
    let mut budget = 200_000usize;
    for r in roots {
        walk(&r, 8, &mut budget, &mut found);
    }
    found.sort();
    found.dedup();
    found.reverse();
    found
}

fn walk(dir: &Path, depth: u32, budget: &mut usize, found: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && depth > 0 {
            walk(&p, depth - 1, budget, found);
        } else if name.starts_with("libcublas.so") {
            found.push(p);
        }
    }
}

/// A cuBLAS handle on the GPU's stream, or a clear error when libcublas is missing.
pub fn new_blas(gpu: &Gpu) -> Result<CudaBlas> {
    if let Some(r) = cublas_unavailable_reason() {
        return Err(LabError::CublasUnavailable(r));
    }
    CudaBlas::new(gpu.stream.clone()).ctx("creating a cuBLAS handle")
}

/// y [m, n] = x [m, k] . W [k, n] (+ bias), all row-major fp16, fp32 compute (CUBLAS_COMPUTE_32F).
/// Column-major view: y^T (n x m) = W^T (n x k, ld n) . x^T (k x m, ld k).
pub fn gemm_f16(
    gpu: &Gpu,
    layer: &DeviceLayer,
    x: &CudaSlice<f16>,
    m: usize,
    y: &mut CudaSlice<f16>,
) -> Result<()> {
    let name = layer.variant.name;
    let blas = layer.blas.as_ref().ok_or_else(|| {
        LabError::invalid("layer", format!("{name}: uploaded without a cuBLAS handle"))
    })?;
    let w = layer.w_f16.as_ref().ok_or_else(|| {
        LabError::invalid("layer", format!("{name}: uploaded without fp16 weights"))
    })?;
    let (k, n) = (layer.shape.k, layer.shape.n);
    let beta = match &layer.bias {
        Some(b) => {
            // beta = 1 on y pre-filled with the bias row: cuBLAS adds it in fp32 before rounding.
            for i in 0..m {
                gpu.stream
                    .memcpy_dtod(b, &mut y.slice_mut(i * n..(i + 1) * n))
                    .ctx("copying the bias into y")?;
            }
            f16::ONE
        }
        None => f16::ZERO,
    };
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: f16::ONE,
        lda: n as i32,
        ldb: k as i32,
        beta,
        ldc: n as i32,
    };
    // SAFETY: W holds k*n halves (upload allocates exactly that), x >= m*k and y >= m*n (checked by
    // launch::plan before this call); the leading dimensions describe those row-major buffers.
    unsafe { blas.gemm(cfg, w, x, y) }.ctx(&format!("cuBLAS fp16 GEMM ({name}, m={m} K={k} N={n})"))
}
