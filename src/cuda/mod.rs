//! CUDA plumbing: a context that is an error (never a panic) when there is no driver or device,
//! the embedded kernel modules, device facts for reports, and `gpu_or_skip` for tests.

pub mod compat;
pub mod device;
pub mod modules;

pub use device::{DeviceInfo, Gpu, SmLimits};

use crate::{LabError, Result};

/// Why no GPU can be used here, or `None` when one can. Probes the driver library first:
/// with dynamic loading, calling into a missing libcuda would panic.
pub fn gpu_unavailable_reason(ordinal: usize) -> Option<String> {
    // SAFETY: is_culib_present only tries to dlopen libcuda; it touches no CUDA state.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver (libcuda.so not found)".into());
    }
    match cudarc::driver::CudaContext::device_count() {
        Err(e) => Some(format!("CUDA driver error: {e}")),
        Ok(0) => Some("the CUDA driver reports no device".into()),
        Ok(n) if ordinal >= n as usize => {
            Some(format!("no CUDA device {ordinal}: the driver reports {n}"))
        }
        Ok(_) => None,
    }
}

/// Open GPU `ordinal`, or say why not.
pub fn open(ordinal: usize) -> Result<Gpu> {
    if let Some(reason) = gpu_unavailable_reason(ordinal) {
        return Err(LabError::NoDevice(reason));
    }
    Gpu::new(ordinal)
}

/// For GPU tests: `let Some(gpu) = gpu_or_skip("gemv_check") else { return };`
/// Prints `SKIP <test>: <reason>` when no GPU is usable. With `REQUIRE_GPU=1` a skip is a failure.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    let reason = match open(0) {
        Ok(gpu) => {
            if !crate::build_info::KERNELS_BUILT {
                "kernels not built into this binary".to_string()
            } else {
                return Some(gpu);
            }
        }
        Err(e) => e.to_string(),
    };
    if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("REQUIRE_GPU=1 but {test} cannot run: {reason}");
    }
    crate::util::note_skip(test, &reason);
    None
}

/// The launch attribute that groups a grid's blocks into clusters of (1, `cluster_y`, 1)
/// (gemv_v9_cluster's split-K slices of a column tile), for `launch_with_attributes`.
pub fn cluster_dim_attribute(cluster_y: u32) -> cudarc::driver::sys::CUlaunchAttribute {
    use cudarc::driver::sys;
    // SAFETY: CUlaunchAttribute is a plain C struct (an id and a union of plain values); all-zero
    // is a valid value of it, and the fields set below are the ones the id selects.
    let mut a: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    a.value.clusterDim.x = 1;
    a.value.clusterDim.y = cluster_y;
    a.value.clusterDim.z = 1;
    a
}

/// One kernel launch through cuLaunchKernelEx with launch attributes (programmatic stream
/// serialization, cooperative, cluster dimension; several combine, e.g. a cluster launch inside a
/// PDL step): what cudarc's launch builder cannot set. `p` is the kernel's single by-value params
/// struct, passed as a pointer read at launch time.
///
/// # Safety
/// As any kernel launch: `p` must be the params struct `f` expects, every address in it live for
/// the kernel; `attrs` must suit the grid (a cooperative grid resident at once, cluster dims that
/// divide it) and the device (PDL and clusters: sm_90).
pub unsafe fn launch_with_attributes<P>(
    ctx: &cudarc::driver::CudaContext,
    stream: &cudarc::driver::CudaStream,
    f: &cudarc::driver::CudaFunction,
    cfg: cudarc::driver::LaunchConfig,
    p: &P,
    attrs: &mut [cudarc::driver::sys::CUlaunchAttribute],
) -> std::result::Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    let lc = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: attrs.len() as u32,
    };
    ctx.bind_to_thread()?;
    let mut args = [p as *const P as *mut std::ffi::c_void];
    sys::cuLaunchKernelEx(
        &lc,
        f.cu_function(),
        args.as_mut_ptr(),
        std::ptr::null_mut(),
    )
    .result()
}
