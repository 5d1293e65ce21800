//! Can this binary's kernels run on this device with this driver? Decided before the first
//! kernel family is loaded, so a mismatch is one sentence that names the fix instead of the
//! driver's CUDA_ERROR_NO_BINARY_FOR_GPU / UNSUPPORTED_PTX_VERSION at some later step.
//!
//! The rules (CUDA's compatibility guide):
//! - SASS for sm_XY runs on devices of the same major at minor >= Y (sm_80 and sm_86 code on an
//!   sm_89 card; sm_90 code on nothing but 9.x);
//! - the PTX build.rs adds for the newest arch is JIT-compiled for any device at or above it (an
//!   sm_120 card runs compute_90 PTX), at the cost of compiling every kernel on the first load;
//! - a driver runs SASS from any toolkit of its own CUDA major or older (minor-version
//!   compatibility: CUDA 13.x code needs a 13.x driver, R580 or newer), and JIT-compiles PTX
//!   only up to its own CUDA version.
//!
//! Pure functions of (device, driver, build), so every branch is tested without a GPU.

use crate::build_info;

/// The image the driver will pick from the fatbins for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// Native code for this sm (same major, minor at most the device's).
    Sass(u32),
    /// PTX of this arch, JIT-compiled for the device.
    Ptx(u32),
}

/// The image for a device of compute capability `sm` (e.g. 86) among SASS for `archs` plus PTX
/// of the newest of them (build.rs adds `compute_<newest>`), or None when nothing runs there.
pub fn image_for(sm: u32, archs: &[u32]) -> Option<Image> {
    let sass = archs
        .iter()
        .copied()
        .filter(|&a| a / 10 == sm / 10 && a <= sm)
        .max();
    let ptx = archs.iter().copied().max().filter(|&p| p <= sm);
    sass.map(Image::Sass).or(ptx.map(Image::Ptx))
}

/// Whether programmatic dependent launch is safe on a device of compute capability `sm` running
/// `image`: the device must be sm_90+ and so must the code, since kernels/common/pdl.cuh compiles
/// griddepcontrol.wait out of older images (sm_86 PTX JIT-compiled on an H100 would let a kernel
/// read its predecessor's output before it is written).
pub fn pdl_ready(sm: u32, image: Option<Image>) -> bool {
    matches!(image, Some(Image::Sass(a) | Image::Ptx(a)) if a >= 90) && sm >= 90
}

/// "13.0" -> (13, 0); None for anything else.
pub fn parse_cuda_version(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether kernels built for `archs` by the CUDA `toolkit` release run on a device of compute
/// capability `sm` under a driver for CUDA `driver`: the image the driver will load, or why none.
pub fn check(
    sm: u32,
    driver: (u32, u32),
    toolkit: (u32, u32),
    archs: &[u32],
) -> Result<Image, String> {
    let list = |a: &[u32]| {
        a.iter()
            .map(|x| format!("sm_{x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let newest = archs.iter().copied().max().unwrap_or(0);
    let Some(image) = image_for(sm, archs) else {
        let why = if sm < 75 {
            "the lab's kernels need a Turing (sm_75) or newer GPU: CUDA 13 compiles nothing older"
                .to_string()
        } else {
            format!(
                "rebuild with this card's arch among the targets, e.g. LAB_CUDA_ARCHS={} cargo build --release",
                {
                    let mut a = archs.to_vec();
                    a.push(sm);
                    a.sort_unstable();
                    a.dedup();
                    a.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                }
            )
        };
        return Err(format!(
            "this GPU is sm_{sm}; the kernels were compiled for {} (+ PTX for sm_{newest}), none of which runs on it: {why}",
            list(archs)
        ));
    };
    let (tk, dr) = (toolkit, driver);
    if dr.0 < tk.0 {
        return Err(format!(
            "the NVIDIA driver supports CUDA {}.{}, but the kernels were built by CUDA {}.{}, whose code needs a driver for CUDA {}.x (for CUDA 13: R580 or newer): update the driver{}",
            dr.0, dr.1, tk.0, tk.1, tk.0, older_toolkit_hint(dr)
        ));
    }
    if let Image::Ptx(p) = image {
        if dr < tk {
            return Err(format!(
                "this GPU (sm_{sm}) has no native code in this build and runs the sm_{p} PTX, which the driver (CUDA {}.{}) cannot JIT-compile: it was written by CUDA {}.{}; update the driver, or rebuild with LAB_CUDA_ARCHS including {sm}",
                dr.0, dr.1, tk.0, tk.1
            ));
        }
    }
    Ok(image)
}

/// The other way out for a CUDA 12 driver (R525-R575) older than the toolkit: a build by a CUDA
/// 12 toolkit, which that driver runs. The kernels' PTX needs ISA 8.0 (CUDA 12.0:
/// tests/static_kernels.rs assembles it with 12.0's ptxas). An 11.x driver is not offered one:
/// the launches go through cuLaunchKernelEx, which CUDA 12.0 drivers brought.
fn older_toolkit_hint(driver: (u32, u32)) -> String {
    if driver.0 == 12 {
        format!(
            ", or rebuild the lab with a CUDA 12.0-{}.{} toolkit's nvcc (NVCC=/usr/local/cuda/bin/nvcc scripts/run; README \"Older drivers\")",
            driver.0, driver.1
        )
    } else {
        String::new()
    }
}

/// `check` for this binary (build_info's archs and nvcc release) on a device of compute
/// capability `sm` under a driver for CUDA `driver_cuda` ("13.0", as DeviceInfo holds it).
/// Ok without a verdict when the build recorded no toolkit (no kernels: KernelsNotBuilt says it).
pub fn check_this_build(sm: u32, driver_cuda: &str) -> Result<Option<Image>, String> {
    let archs = build_info::build_info().archs;
    let Some(toolkit) = parse_cuda_version(build_info::NVCC_CUDA) else {
        return Ok(None);
    };
    if archs.is_empty() {
        return Ok(None);
    }
    let driver = parse_cuda_version(driver_cuda)
        .ok_or_else(|| format!("unreadable driver CUDA version '{driver_cuda}'"))?;
    check(sm, driver, toolkit, &archs).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &[u32] = &[75, 80, 86, 89, 90];

    #[test]
    fn each_card_gets_its_own_sass_or_an_older_minor_of_its_major() {
        // T4, A100, RTX 3090, Jetson Orin (8.7), RTX 4090, H100 on the default build.
        assert_eq!(image_for(75, DEFAULT), Some(Image::Sass(75)));
        assert_eq!(image_for(80, DEFAULT), Some(Image::Sass(80)));
        assert_eq!(image_for(86, DEFAULT), Some(Image::Sass(86)));
        assert_eq!(image_for(87, DEFAULT), Some(Image::Sass(86)));
        assert_eq!(image_for(89, DEFAULT), Some(Image::Sass(89)));
        assert_eq!(image_for(90, DEFAULT), Some(Image::Sass(90)));
        // An 80-only build still runs on every 8.x card, never on 7.5.
        assert_eq!(image_for(89, &[80]), Some(Image::Sass(80)));
        assert_eq!(image_for(75, &[80]), None);
    }

    #[test]
    fn a_newer_major_runs_the_ptx_and_an_older_card_runs_nothing() {
        // Blackwell (10.0, 12.0) has no SASS in the default build: the compute_90 PTX.
        assert_eq!(image_for(100, DEFAULT), Some(Image::Ptx(90)));
        assert_eq!(image_for(120, DEFAULT), Some(Image::Ptx(90)));
        // The sm_90-only build the device checks use does not run on an RTX 3090 at all.
        assert_eq!(image_for(86, &[90]), None);
        // Volta and Pascal: nothing.
        assert_eq!(image_for(70, DEFAULT), None);
        assert_eq!(image_for(61, DEFAULT), None);
    }

    #[test]
    fn the_driver_must_run_the_toolkits_major_and_jit_only_up_to_its_version() {
        let cu13 = (13, 0);
        assert_eq!(check(90, (13, 0), cu13, DEFAULT), Ok(Image::Sass(90)));
        assert_eq!(check(89, (13, 2), cu13, DEFAULT), Ok(Image::Sass(89)));
        // A CUDA 12.4 driver (R550, common on consumer installs) cannot run CUDA 13 code.
        let e = check(89, (12, 4), cu13, DEFAULT).unwrap_err();
        assert!(e.contains("CUDA 12.4") && e.contains("R580"), "{e}");
        // ... and names the other way out: a build by a toolkit that driver runs.
        assert!(e.contains("CUDA 12.0-12.4 toolkit's nvcc"), "{e}");
        // A CUDA 11 driver can only be updated (cuLaunchKernelEx is a CUDA 12 driver call).
        let e = check(86, (11, 8), cu13, DEFAULT).unwrap_err();
        assert!(e.ends_with("update the driver"), "{e}");
        // A CUDA 12 build on that CUDA 12.4 driver runs.
        assert_eq!(check(89, (12, 4), (12, 4), DEFAULT), Ok(Image::Sass(89)));
        // SASS of 13.1 runs on a 13.0 driver (minor-version compatibility); its PTX does not.
        assert_eq!(check(90, (13, 0), (13, 1), DEFAULT), Ok(Image::Sass(90)));
        let e = check(120, (13, 0), (13, 1), DEFAULT).unwrap_err();
        assert!(e.contains("PTX") && e.contains("LAB_CUDA_ARCHS"), "{e}");
        assert_eq!(check(120, (13, 1), (13, 1), DEFAULT), Ok(Image::Ptx(90)));
    }

    #[test]
    fn a_missing_image_names_the_archs_and_the_rebuild() {
        let e = check(86, (13, 0), (13, 0), &[90]).unwrap_err();
        assert!(e.contains("sm_86") && e.contains("sm_90"), "{e}");
        assert!(e.contains("LAB_CUDA_ARCHS=86,90"), "{e}");
        let e = check(70, (13, 0), (13, 0), DEFAULT).unwrap_err();
        assert!(e.contains("sm_75") && !e.contains("LAB_CUDA_ARCHS="), "{e}");
    }

    #[test]
    fn pdl_needs_an_sm_90_gpu_running_sm_90_code() {
        assert!(pdl_ready(90, Some(Image::Sass(90))));
        assert!(pdl_ready(120, Some(Image::Ptx(90))));
        // An 80,86 build on an H100 runs sm_86 PTX: griddepcontrol is compiled out of it.
        assert_eq!(image_for(90, &[80, 86]), Some(Image::Ptx(86)));
        assert!(!pdl_ready(90, image_for(90, &[80, 86])));
        assert!(!pdl_ready(89, Some(Image::Sass(89))));
        assert!(!pdl_ready(90, None));
    }

    #[test]
    fn versions_parse_as_the_driver_and_nvcc_print_them() {
        assert_eq!(parse_cuda_version("13.0"), Some((13, 0)));
        assert_eq!(parse_cuda_version("12.10"), Some((12, 10)));
        assert_eq!(parse_cuda_version(""), None);
        assert_eq!(parse_cuda_version("13"), None);
        assert_eq!(parse_cuda_version("x.y"), None);
    }

    #[test]
    fn this_build_runs_on_the_cards_it_was_compiled_for() {
        let archs = build_info::build_info().archs;
        let Some(newest) = archs.iter().copied().max() else {
            return; // built without kernels: nothing to load, KernelsNotBuilt says so
        };
        let tk = parse_cuda_version(build_info::NVCC_CUDA).expect("nvcc release recorded");
        let driver = format!("{}.{}", tk.0, tk.1);
        for &a in &archs {
            assert_eq!(check_this_build(a, &driver), Ok(Some(Image::Sass(a))));
        }
        assert_eq!(
            check_this_build(newest + 30, &driver),
            Ok(Some(Image::Ptx(newest)))
        );
    }
}
