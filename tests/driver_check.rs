//! scripts/driver-check, which scripts/setup runs: a warning before the build when the machine's
//! driver cannot run the code of the nvcc that will build the kernels (stub nvidia-smi and nvcc).

use std::path::{Path, PathBuf};
use std::process::Command;

fn stub(dir: &Path, name: &str, line: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\necho '{line}'\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    p
}

/// stdout of driver-check for a driver of CUDA `driver` (None: no nvidia-smi) and an nvcc of
/// CUDA `toolkit`; it must exit 0 whatever it says.
fn run(driver: Option<&str>, toolkit: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let nvcc = stub(
        tmp.path(),
        "nvcc",
        &format!("Cuda compilation tools, release {toolkit}, V{toolkit}.88"),
    );
    let smi = match driver {
        Some(d) => stub(
            tmp.path(),
            "nvidia-smi",
            &format!(
                "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: {d}     |"
            ),
        ),
        None => tmp.path().join("no-such-nvidia-smi"),
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/driver-check");
    let o = Command::new(script)
        .arg(&nvcc)
        .env("NVIDIA_SMI", &smi)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn a_cuda_12_driver_under_a_cuda_13_nvcc_is_told_both_ways_out() {
    let out = run(Some("12.4"), "13.0");
    assert!(
        out.contains("WARNING") && out.contains("CUDA 12.4 code"),
        "{out}"
    );
    assert!(out.contains("R580"), "{out}");
    assert!(
        out.contains("CUDA 12.0-12.4 toolkit's nvcc")
            && out.contains("NVCC=/usr/local/cuda-12.4/bin/nvcc scripts/run"),
        "{out}"
    );
}

#[test]
fn a_cuda_11_driver_is_told_to_update_only() {
    let out = run(Some("11.8"), "13.0");
    assert!(
        out.contains("WARNING") && out.contains("Update the driver"),
        "{out}"
    );
    assert!(!out.contains("toolkit's nvcc"), "{out}");
}

#[test]
fn a_driver_that_runs_the_toolkits_code_or_no_driver_says_nothing() {
    for (driver, toolkit) in [
        (Some("13.0"), "13.0"),
        (Some("13.2"), "13.0"),
        (Some("12.4"), "12.2"),
        (None, "13.0"),
    ] {
        assert_eq!(
            run(driver, toolkit),
            "",
            "driver {driver:?}, nvcc {toolkit}"
        );
    }
}
