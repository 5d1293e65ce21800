//! Which CUDA driver (and cuBLAS) functions the `lab` binary can call, and whether a CUDA 12.0
//! driver has each of them.
//!
//! Why: cudarc with dynamic loading resolves a driver function by name on its first call and
//! panics ("Missing symbol ...") when the driver lacks it, so a function newer than the user's
//! driver is a crash in the middle of a run, not an error. README "Older drivers" tells R525-R575
//! users (CUDA 12.0-12.9 drivers) to build with their own CUDA 12 nvcc; that build runs this same
//! host code, so every driver function it can reach must exist in a CUDA 12.0 driver.
//!
//! How, without a GPU:
//! - The functions: each cudarc `sys` wrapper the binary keeps holds a function-local
//!   `static _S: OnceLock<fn>` (the resolved pointer), and the static's mangled name
//!   `...6cudarc6driver3sys<len><name>2_S17h...` stays in the symbol table even when the wrapper
//!   is inlined. Wrappers nothing calls are not linked, so this is the set the program can reach
//!   (a superset of what one run calls).
//! - The driver release each appeared in: cudarc's own bindings gate every function on the
//!   `cuda-XXYY0` features of the releases whose `cuda.h` declares it (`#[cfg(any(...))]` on the
//!   line above `pub unsafe fn`; no gate: every release cudarc supports, 11.4 on). The oldest
//!   feature named is the first release with the function. The source is read from the cudarc
//!   this crate is built against (`cargo metadata`), so a cudarc upgrade is checked again.
//!
//! The launch attributes the lab sets (cooperative 2, cluster dimension 4, programmatic stream
//! serialization 6) have had those values since CUDA 11.8, and the device attributes it reads
//! since 11.0, in the same bindings; an unknown attribute would be an error code, not a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// CUDA 12.0, as cudarc's features write it: the oldest driver an "Older drivers" build targets.
const OLDEST_DRIVER: u32 = 12000;

/// Names `N` in every `<prefix><len>N2_S` of `bin`: the cudarc `sys` wrappers linked in.
fn linked_wrappers(bin: &[u8], prefix: &[u8]) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut at = 0;
    while let Some(off) = find(&bin[at..], prefix) {
        let start = at + off + prefix.len();
        at = start;
        let digits = bin[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let Ok(len) = std::str::from_utf8(&bin[start..start + digits])
            .unwrap_or("")
            .parse::<usize>()
        else {
            continue;
        };
        let name_at = start + digits;
        let Some(name) = bin.get(name_at..name_at + len) else {
            continue;
        };
        if bin.get(name_at + len..name_at + len + 3) == Some(b"2_S") {
            if let Ok(n) = std::str::from_utf8(name) {
                names.insert(n.to_string());
            }
        }
    }
    names.into_iter().collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// For each `pub unsafe fn` of a cudarc `sys/mod.rs`: the oldest CUDA release (as 12000) whose
/// feature its `#[cfg]` names, or None when it is not gated (every release cudarc supports).
fn first_release(sys_rs: &str) -> BTreeMap<String, Option<u32>> {
    let lines: Vec<&str> = sys_rs.lines().collect();
    let mut out = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.strip_prefix("pub unsafe fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let gate = i
            .checked_sub(1)
            .map(|p| lines[p])
            .filter(|p| p.starts_with("#[cfg("));
        let first = gate.map(|g| {
            g.split("feature = \"cuda-")
                .skip(1)
                .filter_map(|s| s.split('"').next()?.parse::<u32>().ok())
                .min()
                .unwrap_or(u32::MAX)
        });
        out.insert(name, first);
    }
    out
}

/// cudarc's source folder, from `cargo metadata` of this crate.
fn cudarc_src() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Only this platform's packages: the others' (Windows crates) were never downloaded, and
    // --offline would fail on them.
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host, "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "cudarc")
        .expect("cudarc among the packages");
    Path::new(pkg["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("src")
}

/// The linked wrappers of one cudarc module, each with the first release that has it; panics
/// naming the function when cudarc has no such wrapper (the parse went wrong).
fn check_module(bin: &[u8], module: &str) -> Vec<(String, Option<u32>)> {
    let prefix = format!("6cudarc{}{}3sys", module.len(), module);
    let sys = std::fs::read_to_string(cudarc_src().join(module).join("sys/mod.rs")).unwrap();
    let gates = first_release(&sys);
    assert!(
        gates.len() > 100,
        "parsed {} functions of {module}",
        gates.len()
    );
    linked_wrappers(bin, prefix.as_bytes())
        .into_iter()
        .map(|n| {
            let g = *gates
                .get(&n)
                .unwrap_or_else(|| panic!("{n} is linked but is no wrapper of cudarc's {module}"));
            (n, g)
        })
        .collect()
}

#[test]
fn every_driver_function_the_lab_can_call_exists_in_a_cuda_12_0_driver() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_lab")).unwrap();
    let driver = check_module(&bin, "driver");
    let names: Vec<&str> = driver.iter().map(|(n, _)| n.as_str()).collect();
    // The read must see the wrappers every run goes through, or it proves nothing (a stripped
    // binary, another mangling scheme).
    for must in [
        "cuInit",
        "cuModuleLoadData",
        "cuLaunchKernelEx",
        "cuGraphLaunch",
    ] {
        assert!(names.contains(&must), "{must} not found among {names:?}");
    }
    let too_new: Vec<String> = driver
        .iter()
        .filter(|(_, g)| g.is_some_and(|r| r > OLDEST_DRIVER))
        .map(|(n, g)| format!("{n} (CUDA {})", g.unwrap()))
        .collect();
    assert!(
        too_new.is_empty(),
        "a CUDA 12.0 driver lacks {too_new:?}; cudarc panics on its first call there: call an \
         older function, or refuse such drivers in src/cuda/compat.rs and say so in README \
         'Older drivers'"
    );
    println!(
        "{} driver functions linked, all in CUDA 12.0 drivers: {names:?}",
        names.len()
    );
}

#[test]
fn every_cublas_function_the_lab_can_call_exists_in_cublas_12_0() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_lab")).unwrap();
    let cublas = check_module(&bin, "cublas");
    let names: Vec<&str> = cublas.iter().map(|(n, _)| n.as_str()).collect();
    for must in ["cublasCreate_v2", "cublasGemmEx"] {
        assert!(names.contains(&must), "{must} not found among {names:?}");
    }
    let too_new: Vec<&str> = cublas
        .iter()
        .filter(|(_, g)| g.is_some_and(|r| r > OLDEST_DRIVER))
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(too_new.is_empty(), "cuBLAS 12.0 lacks {too_new:?}");
}

#[test]
fn the_gate_reader_takes_the_oldest_release_and_reads_no_gate_as_every_release() {
    let src = "\
pub unsafe fn cuOld(x: i32) -> CUresult {
}
#[cfg(any(feature = \"cuda-12080\", feature = \"cuda-12090\", feature = \"cuda-13000\"))]
pub unsafe fn cuNewer(x: i32) -> CUresult {
}
#[cfg(any(feature = \"cuda-11040\", feature = \"cuda-12090\"))]
pub unsafe fn cuGone(x: i32) -> CUresult {
}
";
    let g = first_release(src);
    assert_eq!(g["cuOld"], None);
    assert_eq!(g["cuNewer"], Some(12080));
    assert_eq!(g["cuGone"], Some(11040));
    // Mangled statics: only `<len><name>2_S` counts, and the length is honoured.
    let bin = b"xx_ZN6cudarc6driver3sys6cuInit2_S17h0E..6cudarc6driver3sys16cuLaunchKernelEx2_S17h\
..6cudarc6driver3sys6cuInit4init17h..6cudarc6driver3sys7cuInit2_S";
    assert_eq!(
        linked_wrappers(bin, b"6cudarc6driver3sys"),
        vec!["cuInit".to_string(), "cuLaunchKernelEx".to_string()]
    );
}
