//! The card's own bandwidth ceilings, measured in the same process as every kernel figure:
//! - copy: the lab's 16-byte copy kernel and the driver's device-to-device memcpy, counting
//!   bytes read + bytes written (the convention of anchors.md: ~3.0 TB/s on the H100 here);
//! - read: a pure streaming-read kernel (the relevant ceiling for a GEMV, which reads weights
//!   and writes almost nothing).
//!
//! Buffers are 1 GiB per side (20x the H100's 50 MB L2), so nothing is served from cache.

use crate::bench::timing::{time_launches, TimingConfig};
use crate::cuda::Gpu;
use crate::error::DriverCtx;
use crate::kernels::abi::lab_probe_params;
use crate::Result;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Best of the copy kernel and the driver memcpy, GB/s counting read + written bytes.
    pub copy_gbs: f64,
    pub copy_kernel_gbs: f64,
    pub memcpy_dtod_gbs: f64,
    /// Best pure-read kernel configuration, GB/s.
    pub read_gbs: f64,
    /// Bytes per side of the probe buffers.
    pub buffer_bytes: u64,
}

/// Probe buffer size: 1 GiB, or a quarter of free memory on small cards.
fn probe_bytes(gpu: &Gpu) -> Result<u64> {
    let (free, _) = gpu.ctx.mem_get_info().ctx("cuMemGetInfo")?;
    let b = (1u64 << 30).min(free as u64 / 4);
    Ok(b & !0xFFFF)
}

pub fn measure_ceilings(gpu: &Gpu) -> Result<Ceilings> {
    let bytes = probe_bytes(gpu)?;
    let n16 = bytes / 16;
    let src = gpu
        .stream
        .alloc_zeros::<u8>(bytes as usize)
        .ctx("alloc probe src")?;
    let mut dst = gpu
        .stream
        .alloc_zeros::<u8>(bytes as usize)
        .ctx("alloc probe dst")?;
    let sms = gpu.info.sms as u32;
    let cfg = TimingConfig {
        warmup: 3,
        iters: 20,
    };

    let copy = gpu.function("lab_probe_copy")?;
    let read = gpu.function("lab_probe_read")?;
    let (src_ptr, _g1) = src.device_ptr(&gpu.stream);
    let (dst_ptr, _g2) = dst.device_ptr_mut(&gpu.stream);
    let params = lab_probe_params {
        src: src_ptr,
        dst: dst_ptr,
        n16,
    };

    // A few grid shapes; the best is the ceiling (blocks per SM x 512 threads).
    let mut copy_kernel = 0f64;
    let mut read_best = 0f64;
    for blocks_per_sm in [2u32, 4, 8] {
        let lc = LaunchConfig {
            grid_dim: (sms * blocks_per_sm, 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: 0,
        };
        let t = time_launches(gpu, &cfg, |_| {
            // SAFETY: src and dst are live allocations of `bytes` >= n16*16 bytes each; the
            // kernel's grid-stride loop stays below n16.
            unsafe { gpu.stream.launch_builder(&copy).arg(&params).launch(lc) }
                .map(|_| ())
                .ctx("probe_copy")
        })?;
        copy_kernel = copy_kernel.max(t.gbps(2 * bytes));
        let t = time_launches(gpu, &cfg, |_| {
            // SAFETY: reads n16 words of src; writes gridDim.x u32 sinks into dst (bytes >= 4*grid).
            unsafe { gpu.stream.launch_builder(&read).arg(&params).launch(lc) }
                .map(|_| ())
                .ctx("probe_read")
        })?;
        read_best = read_best.max(t.gbps(bytes));
    }
    drop((_g1, _g2));
    let t = time_launches(gpu, &cfg, |_| {
        gpu.stream.memcpy_dtod(&src, &mut dst).ctx("memcpy_dtod")
    })?;
    let memcpy = t.gbps(2 * bytes);
    Ok(Ceilings {
        copy_gbs: copy_kernel.max(memcpy),
        copy_kernel_gbs: copy_kernel,
        memcpy_dtod_gbs: memcpy,
        read_gbs: read_best,
        buffer_bytes: bytes,
    })
}
