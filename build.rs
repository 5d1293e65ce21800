//! Build script: compiles every kernel family under `kernels/` into one fatbin with nvcc,
//! runs bindgen on `kernels/abi.h`, and exposes to the crate:
//!   - `LAB_KERNEL_HASH`  sha256 over every file under kernels/ (path + bytes), first 16 hex digits
//!   - `LAB_GIT_REV`      short git revision (+ "-dirty"), or "unknown"
//!   - `LAB_KERNELS_BUILT` "1" when the fatbins were built, else "0"
//!   - `LAB_ARCHS`        the SASS targets compiled, comma separated (e.g. "75,80,86,89,90")
//!   - `LAB_NVCC_CUDA`    the CUDA release of the nvcc that built them ("13.0"; "" when none)
//!   - `LAB_FATBIN_DIR`   where the fatbins and the ptxas resource reports are (for the static checks)
//!   - `$OUT_DIR/kernels_embedded.rs`  `pub static FATBINS: &[(&str, &[u8])]` (family, image)
//!   - `$OUT_DIR/abi.rs`  bindgen output of kernels/abi.h
//!
//! nvcc is searched in: $NVCC, $PATH, $CUDA_HOME/bin, the repo's .venv (PyPI CUDA 13 toolkit).
//! Without nvcc the crate still builds (no kernels) with a cargo warning, unless
//! `LAB_REQUIRE_KERNELS=1`, which turns that into a build failure (CI sets it).
//! `LAB_CUDA_ARCHS=80,90` overrides the default targets 75,80,86,89,90 (PTX is always added for the newest).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const DEFAULT_ARCHS: &str = "75,80,86,89,90";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels");

    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=NVCC_CCBIN");
    println!("cargo:rerun-if-env-changed=LAB_CUDA_ARCHS");
    println!("cargo:rerun-if-env-changed=LAB_REQUIRE_KERNELS");
    watch_git(&root);

    let files = list_files(&kdir);
    let hash = kernel_hash(&kdir, &files);
    println!("cargo:rustc-env=LAB_KERNEL_HASH={hash}");
    println!("cargo:rustc-env=LAB_GIT_REV={}", git_rev(&root));
    println!("cargo:rustc-env=LAB_FATBIN_DIR={}", out.display());

    run_bindgen(&kdir.join("abi.h"), &out.join("abi.rs"));

    let archs: Vec<String> = env::var("LAB_CUDA_ARCHS")
        .unwrap_or_else(|_| DEFAULT_ARCHS.to_string())
        .split(',')
        .map(|s| s.trim().trim_start_matches("sm_").to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for a in &archs {
        let n: u32 = a
            .parse()
            .unwrap_or_else(|_| panic!("LAB_CUDA_ARCHS: '{a}' is not an SM number like 80"));
        assert!(
            n >= 75,
            "LAB_CUDA_ARCHS: sm_{n} is not supported: CUDA 13 cannot build for Volta (sm_70) or older"
        );
    }

    let require = env::var("LAB_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
    let families = kernel_families(&kdir);
    let nvcc = find_nvcc(&root);
    // The CUDA release of that nvcc ("13.0"), asked once: the stamps and LAB_NVCC_CUDA use it.
    let nvcc_cuda = nvcc.as_deref().map(nvcc_release);
    let built = match &nvcc {
        None => {
            let msg = "nvcc not found ($NVCC, PATH, $CUDA_HOME/bin, .venv): building WITHOUT CUDA kernels; run scripts/setup";
            if require {
                panic!("LAB_REQUIRE_KERNELS=1 but {msg}");
            }
            println!("cargo:warning={msg}");
            Vec::new()
        }
        Some(nvcc) => {
            let tc = Toolchain {
                nvcc: nvcc.clone(),
                release: nvcc_cuda.clone().unwrap_or_default(),
                ccbin: env::var("NVCC_CCBIN").ok().filter(|s| !s.trim().is_empty()),
            };
            // One thread per family; nvcc itself parallelises over archs with -t.
            let handles: Vec<_> = families
                .iter()
                .map(|fam| {
                    let (tc, kdir, out, archs, fam) = (
                        tc.clone(),
                        kdir.clone(),
                        out.clone(),
                        archs.clone(),
                        fam.clone(),
                    );
                    std::thread::spawn(move || compile_family(&tc, &kdir, &out, &archs, &fam))
                })
                .collect();
            let mut built = Vec::new();
            for (h, fam) in handles.into_iter().zip(&families) {
                match h.join().unwrap() {
                    Ok(path) => built.push((fam.clone(), path)),
                    Err(e) => panic!("nvcc failed for kernel family '{fam}':\n{e}"),
                }
            }
            built
        }
    };

    let kernels_built = !built.is_empty();
    println!(
        "cargo:rustc-env=LAB_KERNELS_BUILT={}",
        if kernels_built { "1" } else { "0" }
    );
    println!(
        "cargo:rustc-env=LAB_ARCHS={}",
        if kernels_built {
            archs.join(",")
        } else {
            String::new()
        }
    );
    let release = match nvcc_cuda {
        Some(r) if kernels_built => r,
        _ => String::new(),
    };
    println!("cargo:rustc-env=LAB_NVCC_CUDA={release}");
    let mut src = String::from("/// (family, fatbin image) for every compiled kernel family.\npub static FATBINS: &[(&str, &[u8])] = &[\n");
    for (fam, path) in &built {
        src.push_str(&format!(
            "    ({fam:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    src.push_str("];\n");
    fs::write(out.join("kernels_embedded.rs"), src).unwrap();
}

/// "13.0" from `nvcc --version` ("Cuda compilation tools, release 13.0, V13.0.88"); a build whose
/// nvcc prints no release is refused, since the binary could not tell which driver it needs.
fn nvcc_release(nvcc: &Path) -> String {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {} --version: {e}", nvcc.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("release ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .map(|r| r.trim().to_string())
        .filter(|r| r.split('.').all(|p| p.parse::<u32>().is_ok()))
        .unwrap_or_else(|| {
            panic!(
                "{} --version printed no 'release X.Y':\n{text}",
                nvcc.display()
            )
        })
}

/// Families are the sub-folders of kernels/ that hold at least one `.cu` file.
fn kernel_families(kdir: &Path) -> Vec<String> {
    let mut fams: Vec<String> = fs::read_dir(kdir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter(|e| cu_files(&e.path()).next().is_some())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    fams.sort();
    fams
}

fn cu_files(dir: &Path) -> impl Iterator<Item = PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter()
}

/// What a family is built with. All of it is part of each family's stamp: switching toolkits
/// (NVCC= a CUDA 12 nvcc for an older driver) must not keep the other toolkit's fatbins, nor
/// switching the host compiler a user names in NVCC_CCBIN (the README's way past an older nvcc's
/// gcc limit). That one is passed as -ccbin: CUDA 13's nvcc reads the variable itself, but
/// nothing here shows that CUDA 12.0-12.3's does (-ccbin wins where both are read).
#[derive(Clone)]
struct Toolchain {
    nvcc: PathBuf,
    /// The nvcc's CUDA release ("13.0"), "" when it could not say.
    release: String,
    ccbin: Option<String>,
}

impl Toolchain {
    fn stamp(&self) -> String {
        format!(
            "{}|{}|ccbin={}",
            self.nvcc.display(),
            self.release,
            self.ccbin.as_deref().unwrap_or("")
        )
    }
}

/// Compiles kernels/<fam>/*.cu as one translation unit (a generated file that #includes each),
/// so each family is one fatbin and one CUDA module. Writes the ptxas resource report beside it.
fn compile_family(
    tc: &Toolchain,
    kdir: &Path,
    out: &Path,
    archs: &[String],
    fam: &str,
) -> Result<PathBuf, String> {
    let unity = out.join(format!("{fam}_unity.cu"));
    let mut body = String::new();
    for f in cu_files(&kdir.join(fam)) {
        body.push_str(&format!("#include \"{}\"\n", f.display()));
    }
    fs::write(&unity, body).map_err(|e| e.to_string())?;
    let fatbin = out.join(format!("{fam}.fatbin"));
    // The git index is watched (for the dirty flag), so this script reruns on every commit:
    // skip nvcc when this family's sources, the common headers, the targets and the toolchain (the
    // nvcc's path and release, the host compiler) are unchanged.
    let stamp_path = out.join(format!("{fam}.stamp"));
    let stamp = format!(
        "{}|{}|{}",
        kernel_hash(kdir, &list_files(kdir)),
        archs.join(","),
        tc.stamp()
    );
    if fatbin.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(fatbin);
    }
    let newest = archs
        .iter()
        .max_by_key(|a| a.parse::<u32>().unwrap_or(0))
        .unwrap();
    let nvcc = &tc.nvcc;
    let mut cmd = Command::new(nvcc);
    if let Some(cc) = &tc.ccbin {
        cmd.arg("-ccbin").arg(cc);
    }
    cmd.arg("-fatbin")
        .arg("-O3")
        .arg("-std=c++17")
        .arg("-t")
        .arg("2")
        .arg("-Xptxas")
        .arg("-v")
        .arg("-lineinfo")
        .arg("-I")
        .arg(kdir)
        .arg("-I")
        .arg(kdir.join("common"));
    for a in archs {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    cmd.arg(format!(
        "-gencode=arch=compute_{newest},code=compute_{newest}"
    ));
    cmd.arg("-o").arg(&fatbin).arg(&unity);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!(
            "{:?}\n{}{}",
            cmd,
            String::from_utf8_lossy(&output.stdout),
            stderr
        ));
    }
    // ptxas -v goes to stderr: keep it for the resource checks (registers, spills, stack).
    fs::write(out.join(format!("{fam}.ptxas.txt")), &stderr).map_err(|e| e.to_string())?;
    fs::write(&stamp_path, stamp).map_err(|e| e.to_string())?;
    Ok(fatbin)
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        println!(
            "cargo:warning=NVCC={} is not a file; searching elsewhere",
            p.display()
        );
    }
    if let Some(paths) = env::var_os("PATH") {
        for dir in env::split_paths(&paths) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    // scripts/setup installs the PyPI toolkit here; call nvcc by its real path (nvcc.profile).
    let lib = root.join(".venv/lib");
    if let Ok(rd) = fs::read_dir(&lib) {
        for e in rd.flatten() {
            let p = e.path().join("site-packages/nvidia/cu13/bin/nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    v.push(p);
                }
            }
        }
    }
    v.sort();
    v
}

fn kernel_hash(kdir: &Path, files: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(kdir).unwrap_or(f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0u8]);
        h.update(fs::read(f).unwrap_or_default());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn git_rev(root: &Path) -> String {
    if let Ok(r) = env::var("LAB_GIT_REV") {
        return r;
    }
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

/// Rebuild when HEAD moves (a commit or checkout), so the embedded revision stays true.
/// The paths come from git itself: in a linked worktree `.git` is a file, and HEAD and the
/// index live in the worktree's own git dir while the branch refs are shared (H100 run 16's
/// binary, built in a worktree, named a revision two commits old). Only existing paths are
/// watched: a missing one would make cargo rebuild every time.
fn watch_git(root: &Path) {
    let git_path = |p: &str| {
        Command::new("git")
            .args(["rev-parse", "--git-path", p])
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            // Relative answers are relative to `root`; join keeps absolute ones as they are.
            .map(|o| root.join(String::from_utf8_lossy(&o.stdout).trim()))
    };
    let watch = |p: &Path| {
        if p.is_file() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    let Some(head) = git_path("HEAD").filter(|h| h.is_file()) else {
        return;
    };
    watch(&head);
    if let Ok(s) = fs::read_to_string(&head) {
        if let Some(r) = s.strip_prefix("ref: ") {
            if let Some(p) = git_path(r.trim()) {
                watch(&p);
            }
        }
    }
    // The index changes on `git add`/commit: the dirty flag follows it.
    if let Some(idx) = git_path("index") {
        watch(&idx);
    }
}

fn run_bindgen(header: &Path, out: &Path) {
    println!("cargo:rerun-if-changed={}", header.display());
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type("lab_.*")
        .allowlist_var("LAB_.*")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen failed on {} ({e}); is libclang installed? run scripts/setup",
                header.display()
            )
        });
    bindings.write_to_file(out).expect("cannot write abi.rs");
}
