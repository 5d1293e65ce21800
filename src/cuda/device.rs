//! One opened GPU: context, default stream, lazily loaded kernel modules, and the device facts
//! every report carries.

use crate::cuda::modules::Modules;
use crate::error::DriverCtx;
use crate::Result;
use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The device header of every report and tuned config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceInfo {
    pub name: String,
    /// Lower-case slug of the name, e.g. "nvidia-h100-80gb-hbm3": folder and file names.
    pub slug: String,
    pub cc_major: i32,
    pub cc_minor: i32,
    pub sms: i32,
    pub memory_bytes: u64,
    pub l2_bytes: i32,
    /// Driver's CUDA version, e.g. "13.0".
    pub driver_cuda: String,
    /// Kernel-mode driver version string if known (nvidia-smi's "Driver Version"), else "".
    #[serde(default)]
    pub driver_version: String,
    pub mem_clock_khz: i32,
    pub bus_width_bits: i32,
    /// Shared memory one SM holds, bytes (228 KB on an H100, 100 KB on sm_86/89, 64 KB on sm_75).
    /// 0 in reports written before it was recorded.
    #[serde(default)]
    pub smem_per_sm_bytes: i32,
    /// The most dynamic shared memory one block may opt into, bytes.
    #[serde(default)]
    pub smem_per_block_optin_bytes: i32,
    /// Shared memory the system reserves per resident block, bytes (1 KB on sm_80+, 0 on sm_75).
    #[serde(default)]
    pub smem_reserved_per_block_bytes: i32,
}

impl DeviceInfo {
    /// Compute capability as one number, e.g. 86 for 8.6.
    pub fn sm(&self) -> u32 {
        (self.cc_major * 10 + self.cc_minor).max(0) as u32
    }

    /// Theoretical DRAM bandwidth from clock and bus width (DDR: x2), bytes/s. For display only:
    /// every figure is judged against the *measured* ceiling.
    pub fn spec_bandwidth(&self) -> f64 {
        self.mem_clock_khz as f64 * 1e3 * 2.0 * self.bus_width_bits as f64 / 8.0
    }

    /// What launch plans size their grids by on this device.
    pub fn limits(&self) -> SmLimits {
        SmLimits {
            sms: self.sms.max(1) as u32,
            smem_per_sm: self.smem_per_sm_bytes.max(0) as u32,
            smem_reserved_per_block: self.smem_reserved_per_block_bytes.max(0) as u32,
            smem_per_block_optin: self.smem_per_block_optin_bytes.max(0) as u32,
        }
    }
}

/// The device facts a launch plan depends on: how many SMs there are and how many blocks of a
/// given shared-memory size one SM holds at once. Plans made without a device (`lab check
/// --static`, CPU tests) use `SmLimits::H100`, the card the committed numbers come from; a launch
/// on a device uses that device's (`DeviceInfo::limits`), so that a 28-SM RTX 3060 is not split
/// for 132 SMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmLimits {
    pub sms: u32,
    /// Bytes of shared memory per SM; 0 = unknown (no shared-memory limit applied).
    pub smem_per_sm: u32,
    pub smem_reserved_per_block: u32,
    /// The most dynamic shared memory one block may opt into; 0 = unknown.
    pub smem_per_block_optin: u32,
}

impl SmLimits {
    /// An H100 SXM: 132 SMs of 228 KB shared memory, 1 KB reserved per block, 227 KB per block.
    pub const H100: SmLimits = SmLimits {
        sms: 132,
        smem_per_sm: 228 * 1024,
        smem_reserved_per_block: 1024,
        smem_per_block_optin: 227 * 1024,
    };

    /// Blocks of `smem_bytes` shared memory (dynamic + static) one SM holds at once by shared
    /// memory alone, at least 1 (a launch that cannot fit one fails at launch, not here) and at
    /// most `cap` (the kernel's own residency target: registers and threads are the kernel's
    /// launch bounds, not counted here).
    pub fn blocks_per_sm(&self, smem_bytes: u32, cap: u32) -> u32 {
        if self.smem_per_sm == 0 {
            return cap.max(1);
        }
        (self.smem_per_sm / (smem_bytes + self.smem_reserved_per_block).max(1)).clamp(1, cap.max(1))
    }
}

pub fn slugify(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').to_string()
}

pub struct Gpu {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub info: DeviceInfo,
    modules: Modules,
}

impl Gpu {
    pub(crate) fn new(ordinal: usize) -> Result<Gpu> {
        let ctx = CudaContext::new(ordinal).ctx("creating CUDA context")?;
        // SAFETY: the lab issues all work on the one default stream, so cudarc's per-buffer
        // cross-stream events are pure overhead (an event record per argument per launch).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let a = |attr| ctx.attribute(attr).ctx("reading device attribute");
        let name = ctx.name().ctx("reading device name")?;
        let (_, total) = ctx.mem_get_info().ctx("cuMemGetInfo")?;
        let mut v = 0i32;
        // SAFETY: plain out-parameter query of the loaded driver.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
            .result()
            .ctx("cuDriverGetVersion")?;
        let info = DeviceInfo {
            slug: slugify(&name),
            name,
            cc_major: a(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            cc_minor: a(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            sms: a(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            memory_bytes: total as u64,
            l2_bytes: a(Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
            driver_cuda: format!("{}.{}", v / 1000, (v % 1000) / 10),
            driver_version: std::env::var("LAB_DRIVER_VERSION").unwrap_or_default(),
            mem_clock_khz: a(Attr::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?,
            bus_width_bits: a(Attr::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?,
            smem_per_sm_bytes: a(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?,
            smem_per_block_optin_bytes: a(
                Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?,
            smem_reserved_per_block_bytes: a(
                Attr::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK,
            )?,
        };
        let image = super::compat::check_this_build(info.sm(), &info.driver_cuda);
        Ok(Gpu {
            ordinal,
            modules: Modules::new(ctx.clone(), image),
            ctx,
            stream,
            info,
        })
    }

    /// A kernel by its C symbol, from whichever embedded family defines it.
    pub fn function(&self, symbol: &str) -> Result<CudaFunction> {
        self.modules.function(symbol)
    }

    pub fn sm(&self) -> u32 {
        self.info.sm()
    }

    /// What this binary's kernels do on this GPU, in one line for `lab devices`.
    pub fn kernels_verdict(&self) -> String {
        use super::compat::Image;
        let archs = crate::build_info::ARCHS;
        match self.modules.verdict() {
            Ok(Some(Image::Sass(a))) => format!("native code (SASS sm_{a}; built for {archs})"),
            Ok(Some(Image::Ptx(p))) => format!(
                "JIT-compiled from the sm_{p} PTX at each family's first load (no native code for sm_{} in this build of {archs})",
                self.sm()
            ),
            Ok(None) => "not built into this binary (nvcc was missing at build time)".into(),
            Err(why) => format!("CANNOT RUN here: {why}"),
        }
    }

    /// Whether programmatic dependent launch works here (cuda::compat::pdl_ready: an sm_90+ GPU
    /// running sm_90+ kernels).
    pub fn pdl_ready(&self) -> bool {
        super::compat::pdl_ready(self.sm(), self.modules.verdict().ok().flatten())
    }

    /// Why PDL does not run here (None where `pdl_ready`), for the notes of what is skipped.
    pub fn pdl_refusal(&self) -> Option<String> {
        (!self.pdl_ready()).then(|| {
            format!(
                "programmatic dependent launch needs an sm_90+ GPU running sm_90+ kernels (this GPU is sm_{}; kernels built for {})",
                self.sm(),
                crate::build_info::ARCHS
            )
        })
    }

    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().ctx("stream synchronize")
    }
}

/// A made-up device for CPU tests: H100-like numbers (132 SMs, 80 GiB, 50 MiB L2, 5120-bit HBM3
/// at 2619 MHz) under the given name and compute capability.
#[cfg(test)]
pub(crate) fn test_device(name: &str, cc: (i32, i32), sms: i32) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        slug: slugify(name),
        cc_major: cc.0,
        cc_minor: cc.1,
        sms,
        memory_bytes: 80 << 30,
        l2_bytes: 50 << 20,
        driver_cuda: "13.0".into(),
        driver_version: String::new(),
        mem_clock_khz: 2_619_000,
        bus_width_bits: 5120,
        smem_per_sm_bytes: 228 * 1024,
        smem_per_block_optin_bytes: 227 * 1024,
        smem_reserved_per_block_bytes: 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::slugify;
    #[test]
    fn slugs_are_lowercase_dashed() {
        assert_eq!(slugify("NVIDIA H100 80GB HBM3"), "nvidia-h100-80gb-hbm3");
        assert_eq!(
            slugify("NVIDIA GeForce RTX 4090 (x)"),
            "nvidia-geforce-rtx-4090-x"
        );
    }
}
