//! The card's own bandwidth ceilings, measured in the same process as every kernel figure:
//! - copy: the lab's 16-byte copy kernel and the driver's device-to-device memcpy, counting
//!   bytes read + bytes written (the convention of anchors.md: ~3.0 TB/s on the H100 here);
//! - read: a pure streaming-read kernel (the relevant ceiling for a GEMV, which reads weights
//!   and writes almost nothing).
//!
//! Buffers are 1 GiB per side (20x the H100's 50 MB L2), so nothing is served from cache.
//! - read by size: the read probe on windows the size of one decode GEMV (8.7-90 MB), cold: the
//!   best a single launch of that many bytes does, per launch and back to back.

use crate::bench::timing::{time_back_to_back, time_launches, TimingConfig};
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
    /// The read probe over windows the size of one decode GEMV's weights (READ_SIZES), each
    /// launch on a window not in L2: what one launch of that many bytes can reach at best. Zeros
    /// in reports recorded before 2026-11-27 (absent from their JSON).
    #[serde(default)]
    pub read_by_size: [SizedRead; 4],
}

/// The read probe on `bytes`-sized windows: one event pair per launch (as the GEMV sweep times
/// its rows) and 20 launches back to back (the per-launch fixed cost overlapped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SizedRead {
    pub bytes: u64,
    pub us: f64,
    pub gbs: f64,
    pub back_to_back_us: f64,
    pub back_to_back_gbs: f64,
}

/// Window sizes of the read probe: the int4 g128 symmetric weight + scale bytes of Vicuna-7B's o_proj (4096 x 4096),
/// of a 7B MLP linear (4096 x 11008: the sweep's first shape) and of a 13B MLP linear
/// (5120 x 13824), and the fp16 4096 x 11008 that cuBLAS streams. A GEMV's "% of the read ceiling"
/// is against the 1 GiB figure; these say how much of the gap a launch that small owes to its size
/// (ramp up, tail) rather than to the kernel.
pub const READ_SIZES: [u64; 4] = [8_650_752, 23_248_896, 36_495_360, 90_177_536];

/// Probe buffer size: 1 GiB, or a quarter of free memory on small cards.
fn probe_bytes(gpu: &Gpu) -> Result<u64> {
    let (free, _) = gpu.ctx.mem_get_info().ctx("cuMemGetInfo")?;
    Ok(probe_bytes_for(free as u64))
}

/// Probe buffer size for `free` bytes of free device memory: 1 GiB, or a quarter of free memory
/// (two buffers: half of it) on small cards; a multiple of 64 KB either way.
fn probe_bytes_for(free: u64) -> u64 {
    (1u64 << 30).min(free / 4) & !0xFFFF
}

/// The windows of the sized read probe over a `buffer`-byte buffer: `(stride, windows)`, each
/// window `size` bytes starting at a multiple of `stride` (`size` rounded up to 64 KB), all inside
/// the buffer; `None` when fewer than two fit (a tiny card: the size is skipped).
fn read_windows(buffer: u64, size: u64) -> Option<(u64, u64)> {
    let stride = (size + 0xFFFF) & !0xFFFF;
    let windows = buffer / stride;
    (windows >= 2).then_some((stride, windows))
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
    let read_by_size = sized_reads(gpu, &read, src_ptr, dst_ptr, bytes)?;
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
        read_by_size,
    })
}

/// The read probe on each of READ_SIZES, the best of the same three grid shapes. Launch i reads
/// window i % windows of the 1 GiB buffer (>= 11 windows: over 2x the H100's 50 MB L2 between
/// two reads of one window), so every launch streams from DRAM like a cold GEMV.
fn sized_reads(
    gpu: &Gpu,
    read: &cudarc::driver::CudaFunction,
    src: u64,
    dst: u64,
    buffer: u64,
) -> Result<[SizedRead; 4]> {
    let cfg = TimingConfig::quick();
    let sms = gpu.info.sms as u32;
    let mut out = [SizedRead::default(); 4];
    for (slot, &size) in out.iter_mut().zip(READ_SIZES.iter()) {
        // 64 KB-aligned windows; a buffer too small for two windows (a tiny card) skips the size.
        let Some((stride, windows)) = read_windows(buffer, size) else {
            continue;
        };
        let params = |i: usize| lab_probe_params {
            src: src + (i as u64 % windows) * stride,
            dst,
            n16: size / 16,
        };
        let mut best = SizedRead {
            bytes: size,
            ..Default::default()
        };
        for blocks_per_sm in [2u32, 4, 8] {
            let lc = LaunchConfig {
                grid_dim: (sms * blocks_per_sm, 1, 1),
                block_dim: (512, 1, 1),
                shared_mem_bytes: 0,
            };
            let launch = |i: usize| {
                let p = params(i);
                // SAFETY: the window [src + off, src + off + size) lies inside the buffer
                // (off <= (windows - 1) * stride, windows * stride <= buffer); the sinks are
                // gridDim.x u32 words of dst, as in measure_ceilings.
                unsafe { gpu.stream.launch_builder(read).arg(&p).launch(lc) }
                    .map(|_| ())
                    .ctx("probe_read (sized)")
            };
            let t = time_launches(gpu, &cfg, launch)?;
            let b = time_back_to_back(gpu, &cfg, 20, launch)?;
            if t.gbps(size) > best.gbs {
                best.us = t.iqm_us;
                best.gbs = t.gbps(size);
            }
            if b.gbps(size) > best.back_to_back_gbs {
                best.back_to_back_us = b.iqm_us;
                best.back_to_back_gbs = b.gbps(size);
            }
        }
        *slot = best;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 GiB per side on a big card; on a small one both buffers together take at most half the
    /// free memory; 64 KB multiples either way.
    #[test]
    fn probe_buffers_are_a_gib_or_a_quarter_of_free_memory_64k_aligned() {
        const GIB: u64 = 1 << 30;
        assert_eq!(probe_bytes_for(80 * GIB), GIB);
        assert_eq!(probe_bytes_for(4 * GIB), GIB);
        for free in [2 * GIB + 12_345, 3 * GIB - 1, 300_000_000] {
            let b = probe_bytes_for(free);
            assert_eq!(b % 0x10000, 0, "free {free}: {b}");
            assert!(2 * b <= free / 2, "free {free}: {b}");
            assert!(
                b + 0x10000 > free / 4,
                "free {free}: {b} wastes more than 64 KB"
            );
        }
    }

    /// Every window of every probe size lies inside the 1 GiB buffer, starts 64 KB-aligned, does
    /// not overlap the next, and there are enough of them that the others between two reads of
    /// one window exceed twice a 50 MB L2 (the H100's). A buffer with room for one window only
    /// skips the size.
    #[test]
    fn read_windows_are_aligned_disjoint_inside_the_buffer_and_outnumber_the_l2() {
        let buffer = 1u64 << 30;
        for size in READ_SIZES {
            let (stride, windows) = read_windows(buffer, size).unwrap();
            assert_eq!(stride % 0x10000, 0, "{size}");
            assert!(
                stride >= size && stride - size < 0x10000,
                "{size}: {stride}"
            );
            assert!((windows - 1) * stride + size <= buffer, "{size}");
            assert!(
                (windows + 1) * stride > buffer,
                "{size}: windows left unused"
            );
            assert!(
                (windows - 1) * size > 2 * 50_000_000,
                "{size}: {windows} windows"
            );
        }
        let size = READ_SIZES[3];
        let one = size.div_ceil(0x10000) * 0x10000;
        assert_eq!(read_windows(one * 3 / 2, size), None);
        assert_eq!(read_windows(2 * one, size), Some((one, 2)));
    }
}
