//! Static check of the GEMM fatbin's SASS, free on any machine with nvcc + cuobjdump (no GPU):
//! every tensor-core GEMM kernel issues HMMA on sm_80 and sm_90, and no GEMM kernel touches local
//! memory (LDL/STL: spilled or runtime-indexed register arrays).
//! cuobjdump is looked up in $CUOBJDUMP, $PATH, $CUDA_HOME/bin and the repo's .venv; it needs
//! nvdisasm ($NVDISASM_PATH or PATH). Without them, or without kernels, the test says SKIP and why;
//! LAB_REQUIRE_KERNELS=1 turns a skip into a failure.

use gptq_lab::build_info;
use gptq_lab::kernels::registry::{all, Family};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn skip(why: &str) {
    if std::env::var("LAB_REQUIRE_KERNELS").is_ok_and(|v| v == "1") {
        panic!("LAB_REQUIRE_KERNELS=1 but gemm_sass cannot run: {why}");
    }
    gptq_lab::util::note_skip("gemm_sass", why);
}

fn find_cuobjdump() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CUOBJDUMP") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(h) = std::env::var("CUDA_HOME") {
        dirs.push(Path::new(&h).join("bin"));
    }
    if let Ok(nvcc) = std::env::var("NVCC") {
        if let Some(d) = Path::new(&nvcc).parent() {
            dirs.push(d.to_path_buf());
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    if let Ok(rd) = std::fs::read_dir(venv) {
        dirs.extend(
            rd.flatten()
                .map(|e| e.path().join("site-packages/nvidia/cu13/bin")),
        );
    }
    dirs.into_iter()
        .map(|d| d.join("cuobjdump"))
        .find(|p| p.is_file())
}

/// (arch, function) -> set of opcodes (the mnemonic up to the first '.', e.g. "HMMA", "LDL").
fn parse_sass(text: &str) -> HashMap<(String, String), HashSet<String>> {
    let mut out: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let (mut arch, mut func) = (String::new(), String::new());
    for line in text.lines() {
        let l = line.trim();
        if let Some(a) = l.strip_prefix("arch = ") {
            arch = a.trim().to_string();
        } else if let Some(f) = l.strip_prefix("Function : ") {
            func = f.trim().to_string();
        } else if let Some(rest) = l.strip_prefix("/*") {
            // "/*0130*/  @P0 HMMA.16816.F32 R4, ..." : address, optional predicate, opcode.
            let Some((_, ins)) = rest.split_once("*/") else {
                continue;
            };
            let mut words = ins.split_whitespace();
            let Some(mut op) = words.next() else { continue };
            if op.starts_with('@') {
                op = words.next().unwrap_or("");
            }
            let op = op.split('.').next().unwrap_or("").trim_end_matches(';');
            if !op.is_empty()
                && op
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                out.entry((arch.clone(), func.clone()))
                    .or_default()
                    .insert(op.to_string());
            }
        }
    }
    out
}

#[test]
fn gemm_sass_has_hmma_and_no_local_memory() {
    if !build_info::KERNELS_BUILT {
        return skip("kernels not built into this binary");
    }
    let fatbin = Path::new(build_info::FATBIN_DIR).join("gemm.fatbin");
    if !fatbin.is_file() {
        return skip(&format!("{} not found", fatbin.display()));
    }
    let Some(cuobjdump) = find_cuobjdump() else {
        return skip("cuobjdump not found ($CUOBJDUMP, PATH, CUDA_HOME, .venv)");
    };
    let out = match Command::new(&cuobjdump).arg("-sass").arg(&fatbin).output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return skip(&format!(
                "{} -sass failed (nvdisasm missing? set NVDISASM_PATH): {}",
                cuobjdump.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return skip(&format!("cannot run {}: {e}", cuobjdump.display())),
    };
    let sass = parse_sass(&String::from_utf8_lossy(&out.stdout));
    let archs: Vec<String> = build_info::ARCHS
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| format!("sm_{a}"))
        .collect();
    let mut checked = 0;
    for v in all().into_iter().filter(|v| v.family == Family::Gemm) {
        for sym in v.symbols {
            for arch in &archs {
                let ops = sass
                    .get(&(arch.clone(), sym.to_string()))
                    .unwrap_or_else(|| panic!("{}: {sym} has no SASS for {arch}", v.name));
                for bad in ["LDL", "STL"] {
                    assert!(
                        !ops.contains(bad),
                        "{}: {sym} on {arch} uses {bad} (local memory)",
                        v.name
                    );
                }
                let mma_kernel = !sym.ends_with("_finish");
                if v.tensor_cores && mma_kernel && (arch == "sm_80" || arch == "sm_90") {
                    assert!(
                        ops.contains("HMMA"),
                        "{}: {sym} on {arch} has no HMMA",
                        v.name
                    );
                    checked += 1;
                }
            }
        }
    }
    let mut mma_archs = 0;
    for want in ["sm_80", "sm_90"] {
        if archs.iter().any(|a| a == want) {
            mma_archs += 1;
        } else {
            eprintln!(
                "NOTE gemm_sass: {want} not among the built archs ({})",
                build_info::ARCHS
            );
        }
    }
    // The HMMA check must have run: gemm_v2_mma is the tensor-core GEMM, and its 4 mma kernels
    // (m16/m32/m48/m64; the `_finish` epilogue exempt) were each checked on every built sm_80/sm_90.
    let mma = all()
        .into_iter()
        .find(|v| v.name == "gemm_v2_mma")
        .expect("gemm_v2_mma is registered");
    assert!(
        mma.tensor_cores,
        "gemm_v2_mma must claim tensor cores, or its HMMA goes unchecked"
    );
    assert!(
        checked >= 4 * mma_archs,
        "only {checked} (kernel, arch) pairs checked for HMMA on {mma_archs} sm_80/sm_90 archs"
    );
    eprintln!("gemm_sass: {checked} (kernel, arch) pairs show HMMA; no LDL/STL in any GEMM kernel");
}

#[test]
fn the_sass_parser_reads_opcodes_per_arch_and_function() {
    let text = "arch = sm_90\n\t\tFunction : k1\n        /*0000*/                   HMMA.16816.F32 R4, R8, R12, R4 ;\n        /*0010*/              @!P0 LDL R2, [R1] ;\narch = sm_80\n\t\tFunction : k1\n        /*0000*/                   FFMA R1, R2, R3, R4 ;\n";
    let s = parse_sass(text);
    let k90 = &s[&("sm_90".to_string(), "k1".to_string())];
    assert!(k90.contains("HMMA") && k90.contains("LDL"));
    assert!(!s[&("sm_80".to_string(), "k1".to_string())].contains("HMMA"));
}
