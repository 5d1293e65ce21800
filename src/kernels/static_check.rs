//! Static kernel checks, free and without a GPU: the ptxas resource report (registers, stack,
//! spills per kernel and arch, written by build.rs as `<family>.ptxas.txt`) and the SASS of the
//! fatbins (`cuobjdump -sass`: 128-bit global loads, no local memory, HMMA where promised).
//! Used by tests/static_kernels.rs and `lab check --static`.

use super::registry::{Family, Variant};
use crate::{LabError, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One kernel on one arch, from ptxas -v.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub symbol: String,
    pub arch: u32,
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// Static shared memory ("N bytes smem" of the Used line; 0 when absent).
    pub smem_bytes: u32,
}

/// Parses ptxas -v output:
///   `ptxas info    : Compiling entry function 'X' for 'sm_90'`
///   `    N bytes stack frame, N bytes spill stores, N bytes spill loads`
///   `ptxas info    : Used N registers, ...`
/// The stack/spill line belongs to the function named by the preceding `Function properties for X`;
/// a report whose lines do not follow that order (e.g. interleaved arch outputs) is an error.
pub fn parse_ptxas(text: &str) -> Result<Vec<Resource>> {
    let bad = |line: usize, why: &str| {
        LabError::invalid("ptxas report", format!("line {}: {why}", line + 1))
    };
    let mut out = Vec::new();
    let mut cur: Option<Resource> = None;
    let mut props_for: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(r) = cur.take() {
                return Err(bad(
                    i,
                    &format!("'{}' has no 'Used N registers' line", r.symbol),
                ));
            }
            let (sym, tail) = rest
                .split_once('\'')
                .ok_or_else(|| bad(i, "unterminated function name"))?;
            let arch = tail
                .split("'sm_")
                .nth(1)
                .and_then(|a| {
                    a.trim_end_matches('\'')
                        .trim_end_matches(|c: char| !c.is_ascii_digit())
                        .parse()
                        .ok()
                })
                .ok_or_else(|| bad(i, "no 'sm_NN' target"))?;
            cur = Some(Resource {
                symbol: sym.to_string(),
                arch,
                registers: 0,
                stack_bytes: 0,
                spill_stores: 0,
                spill_loads: 0,
                smem_bytes: 0,
            });
            props_for = None;
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            props_for = Some(rest.trim().to_string());
        } else if line.contains("bytes stack frame") {
            let nums: Vec<u32> = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            if nums.len() != 3 {
                return Err(bad(
                    i,
                    "expected 'N bytes stack frame, N bytes spill stores, N bytes spill loads'",
                ));
            }
            if let (Some(r), Some(p)) = (cur.as_mut(), props_for.as_ref()) {
                if *p == r.symbol {
                    (r.stack_bytes, r.spill_stores, r.spill_loads) = (nums[0], nums[1], nums[2]);
                }
            }
        } else if let Some(regs) = line
            .split("Used ")
            .nth(1)
            .and_then(|r| r.split_once(" registers"))
            .and_then(|(n, _)| n.trim().parse::<u32>().ok())
        {
            let mut r = cur
                .take()
                .ok_or_else(|| bad(i, "'Used N registers' outside an entry function"))?;
            r.smem_bytes = line
                .split(',')
                .find(|part| part.trim_end().ends_with("bytes smem"))
                .and_then(|part| part.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            if props_for.as_deref() != Some(r.symbol.as_str()) {
                return Err(bad(
                    i,
                    &format!(
                        "properties of '{}' not found in order (interleaved report?)",
                        r.symbol
                    ),
                ));
            }
            r.registers = regs;
            out.push(r);
        }
    }
    if let Some(r) = cur {
        return Err(LabError::invalid(
            "ptxas report",
            format!("'{}' has no 'Used N registers' line", r.symbol),
        ));
    }
    Ok(out)
}

/// Lower-case family name as used for kernels/<family>/ and the build outputs.
pub fn family_dir(f: Family) -> &'static str {
    match f {
        Family::Gemv => "gemv",
        Family::Gemm => "gemm",
        Family::Reference => "reference",
    }
}

/// The build-time ptxas report of one family (only on the machine that built this binary).
pub fn ptxas_report_path(family: &str) -> PathBuf {
    Path::new(crate::build_info::FATBIN_DIR).join(format!("{family}.ptxas.txt"))
}

pub fn fatbin_path(family: &str) -> PathBuf {
    Path::new(crate::build_info::FATBIN_DIR).join(format!("{family}.fatbin"))
}

/// Resources of every kernel of `family`, from the build's report.
pub fn family_resources(family: &str) -> Result<Vec<Resource>> {
    let p = ptxas_report_path(family);
    let text = std::fs::read_to_string(&p).map_err(|e| LabError::io(&p, e))?;
    parse_ptxas(&text).map_err(|e| LabError::invalid(p.display().to_string(), e.to_string()))
}

/// Every registry rule the resource report breaks: a symbol missing on a compiled arch, registers
/// above the variant's budget, and (hot kernels) any stack frame or spill.
pub fn resource_violations(variants: &[&Variant], res: &[Resource], archs: &[u32]) -> Vec<String> {
    let mut bad = Vec::new();
    for v in variants {
        for sym in v.symbols {
            for &arch in archs {
                let Some(r) = res.iter().find(|r| r.symbol == *sym && r.arch == arch) else {
                    bad.push(format!(
                        "{}: {sym} has no ptxas entry for sm_{arch}",
                        v.name
                    ));
                    continue;
                };
                if r.registers > v.reg_budget {
                    bad.push(format!(
                        "{}: {sym} on sm_{arch} uses {} registers > budget {}",
                        v.name, r.registers, v.reg_budget
                    ));
                }
                if v.hot && (r.stack_bytes > 0 || r.spill_stores > 0 || r.spill_loads > 0) {
                    bad.push(format!(
                        "{}: hot kernel {sym} on sm_{arch}: {} bytes stack, {} spill stores, {} spill loads (must all be 0)",
                        v.name, r.stack_bytes, r.spill_stores, r.spill_loads
                    ));
                }
            }
        }
    }
    bad
}

/// What the SASS of one kernel on one arch shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SassSummary {
    pub symbol: String,
    pub arch: u32,
    /// Distinct global-load opcodes, e.g. "LDG.E.128.CONSTANT", "LDG.E.EF.128".
    pub global_loads: BTreeSet<String>,
    /// Any LDL/STL (local memory: spills or stack arrays).
    pub local_memory: bool,
    pub hmma: bool,
    pub instructions: usize,
    /// The programmatic-dependent-launch wait (`griddepcontrol.wait` = SASS ACQBULK) is present,
    /// and whether any global memory access came before it in program order
    /// (kernels/common/pdl.cuh: the wait must come first).
    pub pdl_wait: bool,
    pub memory_before_pdl_wait: bool,
    /// An L2 prefetch (`prefetch.global.L2` = SASS CCTL.E.PF2) before the wait: the GEMV kernels'
    /// weight prefetch (pdl.cuh). Prefetches are the one memory operation allowed there.
    pub prefetch_before_pdl_wait: bool,
    /// Any MUFU.EX2 (the special-function exp2: expf / __expf, e.g. the gated MLP input's SiLU).
    pub exp2: bool,
    /// LDL/STL between two evict-first 128-bit loads (LDG.E.EF.128, the int4 weight stream):
    /// local memory inside a weight loop.
    pub local_memory_between_stream_loads: bool,
    /// Parser state for the field above: a stream load seen, and local memory since the last one.
    #[serde(skip)]
    stream_state: (bool, bool),
}

/// Global (or generic) memory access opcodes: what must not precede the PDL wait.
fn is_global_memory_op(op: &str) -> bool {
    let base = op.split('.').next().unwrap_or("");
    matches!(
        base,
        "LDG" | "STG" | "ATOM" | "ATOMG" | "RED" | "REDG" | "LDGSTS" | "LD" | "ST"
    )
}

impl SassSummary {
    pub fn has_wide_loads(&self) -> bool {
        self.global_loads
            .iter()
            .any(|o| o.split('.').any(|p| p == "128"))
    }
}

/// Parses `cuobjdump -sass` output: `arch = sm_NN` / `code for sm_NN`, `Function : X`, then
/// instruction lines `/*0040*/  [@P0] OPCODE ...;`.
pub fn parse_sass(text: &str) -> Vec<SassSummary> {
    let mut out: Vec<SassSummary> = Vec::new();
    let mut arch = 0u32;
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t
            .strip_prefix("code for sm_")
            .or_else(|| t.strip_prefix("arch = sm_"))
        {
            arch = a.trim().parse().unwrap_or(0);
        } else if let Some(f) = t.strip_prefix("Function : ") {
            out.push(SassSummary {
                symbol: f.trim().to_string(),
                arch,
                ..Default::default()
            });
        } else if let (Some(cur), Some(rest)) = (out.last_mut(), t.strip_prefix("/*")) {
            // "/*0040*/  @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;"
            let Some((_, ins)) = rest.split_once("*/") else {
                continue;
            };
            let mut words = ins.split_whitespace();
            let mut op = words.next().unwrap_or("");
            if op.starts_with('@') {
                op = words.next().unwrap_or("");
            }
            if op.is_empty() || !op.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                continue;
            }
            cur.instructions += 1;
            if op.starts_with("LDG") {
                cur.global_loads.insert(op.to_string());
            }
            if op.starts_with("LDL") || op.starts_with("STL") {
                cur.local_memory = true;
                cur.stream_state.1 |= cur.stream_state.0;
            }
            if op.starts_with("LDG") && op.contains(".EF") && op.split('.').any(|p| p == "128") {
                cur.local_memory_between_stream_loads |= cur.stream_state.1;
                cur.stream_state = (true, false);
            }
            if op.starts_with("HMMA") {
                cur.hmma = true;
            }
            if op.starts_with("MUFU.EX2") {
                cur.exp2 = true;
            }
            if op == "ACQBULK" {
                cur.pdl_wait = true;
            } else if !cur.pdl_wait && is_global_memory_op(op) {
                cur.memory_before_pdl_wait = true;
            } else if !cur.pdl_wait && op.starts_with("CCTL") && op.contains("PF") {
                cur.prefetch_before_pdl_wait = true;
            }
        }
    }
    out
}

/// cuobjdump, and the folder of an nvdisasm it can use (cuobjdump -sass runs nvdisasm from PATH).
/// Searched: $CUOBJDUMP / $NVDISASM, PATH, $CUDA_HOME/bin, the repo's .venv CUDA 13 wheels, and
/// Triton's bundled nvdisasm in the .venv.
pub fn find_sass_tools() -> std::result::Result<(PathBuf, PathBuf), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["CUOBJDUMP", "NVDISASM"] {
        if let Some(p) = std::env::var_os(var).map(PathBuf::from) {
            dirs.extend(p.parent().map(Path::to_path_buf));
        }
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Ok(rd) = std::fs::read_dir(root.join(".venv/lib")) {
        for e in rd.flatten() {
            let sp = e.path().join("site-packages");
            dirs.push(sp.join("nvidia/cu13/bin"));
            dirs.push(sp.join("triton/backends/nvidia/bin"));
        }
    }
    let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    let cuobjdump =
        find("cuobjdump").ok_or("cuobjdump not found ($CUOBJDUMP, PATH, $CUDA_HOME/bin, .venv)")?;
    let nvdisasm = find("nvdisasm").ok_or(
        "nvdisasm not found ($NVDISASM, PATH, $CUDA_HOME/bin, .venv): cuobjdump -sass needs it (pip wheel nvidia-cuda-nvdisasm)",
    )?;
    Ok((
        cuobjdump,
        nvdisasm.parent().unwrap_or(Path::new("/")).to_path_buf(),
    ))
}

/// stdout of `cuobjdump <flag> <fatbin>` (`-sass` runs nvdisasm: its folder goes first on PATH).
fn run_cuobjdump(flag: &str, fatbin: &Path) -> Result<String> {
    let (cuobjdump, nvdisasm_dir) =
        find_sass_tools().map_err(|r| LabError::invalid("SASS tools", r))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![nvdisasm_dir];
    dirs.extend(std::env::split_paths(&path));
    let out = std::process::Command::new(&cuobjdump)
        .arg(flag)
        .arg(fatbin)
        .env("PATH", std::env::join_paths(dirs).unwrap_or(path))
        .output()
        .map_err(|e| LabError::io(&cuobjdump, e))?;
    if !out.status.success() {
        return Err(LabError::invalid(
            "cuobjdump",
            format!(
                "{} {flag} {}: {}",
                cuobjdump.display(),
                fatbin.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SASS summaries of every kernel in a fatbin.
pub fn fatbin_sass(fatbin: &Path) -> Result<Vec<SassSummary>> {
    Ok(parse_sass(&run_cuobjdump("-sass", fatbin)?))
}

/// The PTX images of a fatbin (`cuobjdump -ptx`): (arch, the text from its `.version` line on).
/// build.rs embeds one, the newest arch's, which the driver JIT-compiles for newer GPUs.
pub fn fatbin_ptx(fatbin: &Path) -> Result<Vec<(u32, String)>> {
    Ok(parse_ptx_dump(&run_cuobjdump("-ptx", fatbin)?))
}

/// Splits `cuobjdump -ptx` output into its PTX images: each `Fatbin ptx code:` header's
/// `arch = sm_NN`, and the lines from `.version` to the next `Fatbin` header. ELF sections
/// (`Fatbin elf code:`) are skipped.
pub fn parse_ptx_dump(text: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(Option<u32>, Option<String>)> = None;
    let mut finish = |cur: &mut Option<(Option<u32>, Option<String>)>| {
        if let Some((Some(arch), Some(body))) = cur.take() {
            out.push((arch, body));
        }
    };
    for line in text.lines() {
        if line.starts_with("Fatbin ") {
            finish(&mut cur);
            cur = (line.trim() == "Fatbin ptx code:").then_some((None, None));
            continue;
        }
        let Some((arch, body)) = cur.as_mut() else {
            continue;
        };
        match body {
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None if line.starts_with(".version") => *body = Some(format!("{line}\n")),
            None => {
                if let Some(a) = line.strip_prefix("arch = sm_") {
                    *arch = a.trim().parse().ok();
                }
            }
        }
    }
    finish(&mut cur);
    out
}

/// `ptx` with its `.version X.Y` directive set to `version` (what an older ptxas accepts as its
/// own); None when the text has no such directive at a line start.
pub fn with_ptx_version(ptx: &str, version: &str) -> Option<String> {
    let at = if ptx.starts_with(".version ") {
        0
    } else {
        ptx.find("\n.version ")? + 1
    };
    let end = ptx[at..].find('\n').map_or(ptx.len(), |e| at + e);
    Some(format!("{}.version {version}{}", &ptx[..at], &ptx[end..]))
}

/// `ptx` without its debug information: the `.file` and `.loc` lines and the `.section` blocks
/// (`.debug_str` etc.) that build.rs's -lineinfo adds. An older ptxas does not read CUDA 13's form
/// of them (12.0's crashes on `.loc ... inlined_at`); the instructions are what is checked.
pub fn strip_ptx_debug_info(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len());
    let mut in_section = false;
    for line in ptx.lines() {
        let t = line.trim_start();
        if in_section {
            in_section = !t.starts_with('}');
            continue;
        }
        if t.starts_with(".section") {
            in_section = !t.contains('}');
            continue;
        }
        // A directive word, not a prefix: `.local` declarations stay.
        let word = t.split_whitespace().next().unwrap_or("");
        if word == ".loc" || word == ".file" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The CUDA 12.0 ptxas scripts/setup installs beside the CUDA 13 toolkit (the
/// nvidia-cuda-nvcc-cu12 12.0.76 wheel in .venv/ptxas-12.0), or $LAB_PTXAS_12_0.
pub fn find_cuda12_0_ptxas() -> std::result::Result<PathBuf, String> {
    cuda12_0_ptxas_from(
        std::env::var_os("LAB_PTXAS_12_0"),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/ptxas-12.0/nvidia/cuda_nvcc/bin/ptxas"),
    )
}

/// [`find_cuda12_0_ptxas`] given $LAB_PTXAS_12_0 and the .venv path: a set variable that names no
/// file is an error, not a fall-back to the default.
fn cuda12_0_ptxas_from(
    var: Option<std::ffi::OsString>,
    default: &Path,
) -> std::result::Result<PathBuf, String> {
    if let Some(p) = var {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("LAB_PTXAS_12_0={} is not a file", p.display()))
        };
    }
    let p = default.to_path_buf();
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "CUDA 12.0's ptxas not found ({}; scripts/setup installs it where it installs the CUDA 13 toolkit, or set LAB_PTXAS_12_0)",
            p.display()
        ))
    }
}

/// Every SASS rule broken: wide_loads variants without a 128-bit global load, hot kernels with
/// local memory, tensor_cores variants without HMMA on sm_80+.
pub fn sass_violations(variants: &[&Variant], sass: &[SassSummary], archs: &[u32]) -> Vec<String> {
    let mut bad = Vec::new();
    for v in variants {
        for sym in v.symbols {
            for &arch in archs {
                let Some(s) = sass.iter().find(|s| s.symbol == *sym && s.arch == arch) else {
                    bad.push(format!("{}: {sym} has no SASS for sm_{arch}", v.name));
                    continue;
                };
                if v.wide_loads && !s.has_wide_loads() {
                    bad.push(format!(
                        "{}: {sym} on sm_{arch} has no 128-bit global load (loads: {:?})",
                        v.name, s.global_loads
                    ));
                }
                if v.hot && s.local_memory {
                    bad.push(format!(
                        "{}: hot kernel {sym} on sm_{arch} uses local memory (LDL/STL)",
                        v.name
                    ));
                }
                // A tensor-core variant's split-K epilogue (`*_finish`: fp32 workspace -> fp16 y)
                // has no matrix math by design.
                if v.tensor_cores && arch >= 80 && !s.hmma && !sym.ends_with("_finish") {
                    bad.push(format!("{}: {sym} on sm_{arch} has no HMMA", v.name));
                }
            }
        }
    }
    bad
}

/// symbol -> arch -> resource, for printing one table row per symbol.
pub fn by_symbol(res: &[Resource]) -> BTreeMap<String, BTreeMap<u32, Resource>> {
    let mut m: BTreeMap<String, BTreeMap<u32, Resource>> = BTreeMap::new();
    for r in res {
        m.entry(r.symbol.clone())
            .or_default()
            .insert(r.arch, r.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k_a' for 'sm_90'
ptxas info    : Function properties for k_a
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 74 registers, used 1 barriers, 1028 bytes smem
ptxas info    : Compile time = 98.872 ms
ptxas info    : Compiling entry function 'k_b' for 'sm_80'
ptxas info    : Function properties for k_b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
";

    #[test]
    fn ptxas_report_is_parsed_per_function_and_arch() {
        let r = parse_ptxas(REPORT).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Resource {
                symbol: "k_a".into(),
                arch: 90,
                registers: 74,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12,
                smem_bytes: 1028,
            }
        );
        assert_eq!(
            (
                r[1].symbol.as_str(),
                r[1].arch,
                r[1].registers,
                r[1].smem_bytes
            ),
            ("k_b", 80, 32, 0)
        );
    }

    #[test]
    fn out_of_order_reports_are_errors_not_guesses() {
        let interleaved =
            REPORT.replace("Function properties for k_a", "Function properties for k_b");
        assert!(parse_ptxas(&interleaved).is_err());
        let truncated = REPORT.lines().take(4).collect::<Vec<_>>().join("\n");
        assert!(parse_ptxas(&truncated).is_err());
    }

    #[test]
    fn sass_listing_yields_loads_local_memory_and_hmma() {
        let text = "
Fatbin elf code:
================
arch = sm_90
	code for sm_90
		Function : k_a
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/              @!P0 LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0020*/                   LDG.E.EF.128 R8, desc[UR4][R6.64] ;
                                                                /* 0x000fe20000000800 */
		Function : k_b
        /*0000*/                   STL [R1], R2 ;
        /*0010*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0020*/                   LDG.E R4, desc[UR4][R2.64] ;
";
        let s = parse_sass(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].arch, 90);
        assert!(s[0].has_wide_loads() && !s[0].local_memory && !s[0].hmma);
        assert_eq!(s[0].instructions, 3);
        assert!(s[0].global_loads.contains("LDG.E.128.CONSTANT"));
        assert!(!s[1].has_wide_loads() && s[1].local_memory && s[1].hmma);
        assert!(!s[0].pdl_wait && s[0].memory_before_pdl_wait);
    }

    #[test]
    fn pdl_wait_must_come_before_global_memory() {
        let text = "
	code for sm_90
		Function : k_ok
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   PREEXIT ;
        /*0020*/                   ACQBULK ;
        /*0030*/                   LDG.E R4, desc[UR4][R2.64] ;
		Function : k_late
        /*0000*/                   STG.E desc[UR4][R2.64], R4 ;
        /*0010*/                   ACQBULK ;
		Function : k_atomic_first
        /*0000*/               @P0 RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R5 ;
        /*0010*/                   ACQBULK ;
		Function : k_prefetch_first
        /*0000*/                   PREEXIT ;
        /*0010*/                   CCTL.E.PF2 [R4] ;
        /*0020*/                   ACQBULK ;
        /*0030*/                   CCTL.E.PF2 [R6] ;
        /*0040*/                   MUFU.EX2 R7, R7 ;
";
        let s = parse_sass(text);
        assert!(!s[0].exp2 && s[3].exp2);
        assert!(s[0].pdl_wait && !s[0].memory_before_pdl_wait && !s[0].prefetch_before_pdl_wait);
        assert!(s[1].pdl_wait && s[1].memory_before_pdl_wait);
        assert!(s[2].memory_before_pdl_wait);
        // A prefetch before the wait is allowed (weights only, pdl.cuh) and recorded.
        assert!(s[3].pdl_wait && !s[3].memory_before_pdl_wait && s[3].prefetch_before_pdl_wait);
    }

    #[test]
    fn local_memory_counts_only_between_two_stream_loads() {
        let text = "
	code for sm_90
		Function : k_setup_spill
        /*0000*/                   STL [R1], R2 ;
        /*0010*/                   LDG.E.EF.128 R8, desc[UR4][R6.64] ;
        /*0020*/                   LDG.E.EF.128 R12, desc[UR4][R6.64] ;
        /*0030*/                   LDL R2, [R1] ;
		Function : k_loop_spill
        /*0000*/                   LDG.E.EF.128 R8, desc[UR4][R6.64] ;
        /*0010*/                   STL [R1], R2 ;
        /*0020*/              @!P0 LDG.E.EF.128 R12, desc[UR4][R6.64] ;
		Function : k_other_loads
        /*0000*/                   LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0010*/                   STL [R1], R2 ;
        /*0020*/                   LDG.E.128 R12, desc[UR4][R6.64] ;
";
        let s = parse_sass(text);
        assert!(s[0].local_memory && !s[0].local_memory_between_stream_loads);
        assert!(s[1].local_memory_between_stream_loads);
        assert!(s[2].local_memory && !s[2].local_memory_between_stream_loads);
    }

    /// A synthetic variant with every static rule switched on: hot, wide loads, tensor cores,
    /// a 64-register budget; its main kernel `k_main` and split-K epilogue `k_main_finish`.
    fn strict() -> Variant {
        Variant {
            name: "test_strict",
            symbols: &["k_main", "k_main_finish"],
            reg_budget: 64,
            hot: true,
            wide_loads: true,
            tensor_cores: true,
            ..*crate::kernels::registry::by_name("gemm_v2_mma").unwrap()
        }
    }

    fn res(symbol: &str, arch: u32, registers: u32, stack_spill: (u32, u32, u32)) -> Resource {
        Resource {
            symbol: symbol.into(),
            arch,
            registers,
            stack_bytes: stack_spill.0,
            spill_stores: stack_spill.1,
            spill_loads: stack_spill.2,
            smem_bytes: 0,
        }
    }

    fn clean_resources() -> Vec<Resource> {
        let mut r = Vec::new();
        for arch in [80, 90] {
            r.push(res("k_main", arch, 64, (0, 0, 0)));
            r.push(res("k_main_finish", arch, 32, (0, 0, 0)));
        }
        r
    }

    #[test]
    fn resource_violations_name_each_broken_rule_once() {
        let v = strict();
        let vs = [&v];
        let archs = [80, 90];
        // At the budget, no stack, no spills, every arch present: clean.
        assert_eq!(
            resource_violations(&vs, &clean_resources(), &archs),
            Vec::<String>::new()
        );

        let one = |r: Vec<Resource>| {
            let bad = resource_violations(&vs, &r, &archs);
            assert_eq!(bad.len(), 1, "{bad:?}");
            bad.into_iter().next().unwrap()
        };
        // Registers over budget (65 > 64).
        let mut r = clean_resources();
        r[2].registers = 65;
        let m = one(r);
        assert!(
            m.contains("k_main")
                && m.contains("sm_90")
                && m.contains("65")
                && m.contains("budget 64"),
            "{m}"
        );
        // A hot kernel with a stack frame, with spill stores, with spill loads: one message each.
        for (i, ss) in [(8, 0, 0), (0, 4, 0), (0, 0, 4)].into_iter().enumerate() {
            let mut r = clean_resources();
            r[1] = res("k_main_finish", 80, 32, ss);
            let m = one(r);
            assert!(
                m.contains("hot kernel k_main_finish") && m.contains("sm_80"),
                "case {i}: {m}"
            );
        }
        // ...which a kernel that is not hot may have.
        let cold = Variant { hot: false, ..v };
        let mut r = clean_resources();
        r[0] = res("k_main", 80, 64, (8, 4, 4));
        assert!(resource_violations(&[&cold], &r, &archs).is_empty());
        // A symbol missing on one built arch.
        let mut r = clean_resources();
        r.retain(|x| !(x.symbol == "k_main_finish" && x.arch == 90));
        let m = one(r);
        assert!(
            m.contains("k_main_finish") && m.contains("no ptxas entry for sm_90"),
            "{m}"
        );
        // An arch that was not built is not asked for.
        assert!(resource_violations(&vs, &clean_resources(), &[90]).is_empty());
    }

    fn sass(symbol: &str, arch: u32) -> SassSummary {
        SassSummary {
            symbol: symbol.into(),
            arch,
            global_loads: ["LDG.E.EF.128".to_string()].into(),
            hmma: true,
            ..Default::default()
        }
    }

    fn clean_sass() -> Vec<SassSummary> {
        let mut s = Vec::new();
        for arch in [80, 90] {
            s.push(sass("k_main", arch));
            // The epilogue has no HMMA by design (exempt as `*_finish`).
            s.push(SassSummary {
                hmma: false,
                ..sass("k_main_finish", arch)
            });
        }
        s
    }

    #[test]
    fn sass_violations_name_each_broken_rule_once() {
        let v = strict();
        let vs = [&v];
        let archs = [80, 90];
        assert_eq!(
            sass_violations(&vs, &clean_sass(), &archs),
            Vec::<String>::new()
        );
        let one = |s: Vec<SassSummary>| {
            let bad = sass_violations(&vs, &s, &archs);
            assert_eq!(bad.len(), 1, "{bad:?}");
            bad.into_iter().next().unwrap()
        };
        // Only 64-bit / 32-bit loads where 128-bit ones are required.
        let mut s = clean_sass();
        s[0].global_loads = ["LDG.E.64".to_string(), "LDG.E".to_string()].into();
        let m = one(s);
        assert!(
            m.contains("k_main on sm_80") && m.contains("no 128-bit global load"),
            "{m}"
        );
        // Local memory in a hot kernel.
        let mut s = clean_sass();
        s[3].local_memory = true;
        let m = one(s);
        assert!(
            m.contains("hot kernel k_main_finish on sm_90") && m.contains("local memory"),
            "{m}"
        );
        // No HMMA in a tensor-core kernel that is not the epilogue.
        for (i, arch) in [(0, 80), (2, 90)] {
            let mut s = clean_sass();
            s[i].hmma = false;
            let m = one(s);
            assert!(
                m.contains(&format!("k_main on sm_{arch} has no HMMA")),
                "{m}"
            );
        }
        // Below sm_80 HMMA is not required.
        let mut s = clean_sass();
        for x in &mut s {
            x.arch = 75;
            x.hmma = false;
        }
        assert!(sass_violations(&vs, &s, &[75]).is_empty());
        // A missing arch.
        let mut s = clean_sass();
        s.remove(0);
        let m = one(s);
        assert!(m.contains("k_main has no SASS for sm_80"), "{m}");
        // Rules a variant does not claim are not enforced.
        let loose = Variant {
            hot: false,
            wide_loads: false,
            tensor_cores: false,
            ..v
        };
        let mut s = clean_sass();
        for x in &mut s {
            x.global_loads = ["LDG.E".to_string()].into();
            x.local_memory = true;
            x.hmma = false;
        }
        assert!(sass_violations(&[&loose], &s, &archs).is_empty());
    }

    /// The shape of `cuobjdump -ptx` output (CUDA 13.0): ELF sections carry no text, the PTX
    /// section's header lines come before its `.version`.
    const PTX_DUMP: &str = "
Fatbin elf code:
================
arch = sm_75
code version = [1,8]

Fatbin ptx code:
================
arch = sm_90
code version = [9,0]
compressed
ptxasOptions = -v

.version 9.0
.target sm_90
.address_size 64
.visible .entry k()
{
ret;
}

Fatbin elf code:
================
arch = sm_90
";

    #[test]
    fn ptx_dump_yields_each_ptx_image_with_its_arch_and_no_elf_section() {
        let images = parse_ptx_dump(PTX_DUMP);
        assert_eq!(images.len(), 1, "{images:?}");
        let (arch, text) = &images[0];
        assert_eq!(*arch, 90);
        assert!(text.starts_with(".version 9.0\n.target sm_90\n"), "{text}");
        assert!(text.contains("ret;") && !text.contains("Fatbin") && !text.contains("arch ="));
        // Two images, the second one last in the dump: both kept, in order.
        let two =
            format!("{PTX_DUMP}\nFatbin ptx code:\narch = sm_80\n.version 8.7\n.target sm_80\n");
        let archs: Vec<u32> = parse_ptx_dump(&two).iter().map(|(a, _)| *a).collect();
        assert_eq!(archs, [90, 80]);
        // A PTX header without an arch or without a body is no image.
        assert!(parse_ptx_dump("Fatbin ptx code:\n.version 9.0\n").is_empty());
        assert!(parse_ptx_dump("Fatbin ptx code:\narch = sm_90\n").is_empty());
    }

    #[test]
    fn ptx_version_is_replaced_on_its_own_line_only() {
        let ptx = "//\n// a comment naming .version 9.0\n//\n.version 9.0\n.target sm_90\n";
        assert_eq!(
            with_ptx_version(ptx, "8.0").unwrap(),
            "//\n// a comment naming .version 9.0\n//\n.version 8.0\n.target sm_90\n"
        );
        assert_eq!(
            with_ptx_version(".version 9.0\n.target sm_90", "8.4").unwrap(),
            ".version 8.4\n.target sm_90"
        );
        assert_eq!(
            with_ptx_version(".version 9.0", "8.0").unwrap(),
            ".version 8.0"
        );
        assert!(with_ptx_version(".target sm_90\n", "8.0").is_none());
    }

    #[test]
    fn debug_info_is_stripped_and_the_instructions_kept() {
        let ptx = "\
.version 9.0
.target sm_90
.file\t1 \"/k/gemv.cu\"
.visible .entry k()
{
\t.local .align 8 .b8 \t__local_depot0[16];
\t.loc\t1 10 3
\tld.global.u32 %r1, [%rd1];
\t.loc\t1 11 3, function_name $L__info_string0, inlined_at 1 10 3
\tret;
}
\t.section\t.debug_str
\t{
$L__info_string0:
.b8 107,0
\t}
.global .u32 after;
";
        assert_eq!(
            strip_ptx_debug_info(ptx),
            ".version 9.0\n.target sm_90\n.visible .entry k()\n{\n\t.local .align 8 .b8 \t__local_depot0[16];\n\tld.global.u32 %r1, [%rd1];\n\tret;\n}\n.global .u32 after;\n"
        );
    }

    #[test]
    fn an_entry_without_its_used_line_is_refused_even_when_another_follows() {
        // k_a's report lost its "Used" line; k_b's entry follows: k_a must not vanish silently.
        let lost = REPORT.replace(
            "ptxas info    : Used 74 registers, used 1 barriers, 1028 bytes smem\n",
            "",
        );
        let e = parse_ptxas(&lost).unwrap_err().to_string();
        assert!(e.contains("'k_a' has no 'Used N registers' line"), "{e}");
        // A "Used" line with no entry open is refused too, not skipped.
        let orphan = "ptxas info    : Used 32 registers, used 0 barriers\n";
        assert!(parse_ptxas(orphan).is_err());
        let twice = format!("{REPORT}{orphan}");
        assert!(parse_ptxas(&twice).is_err());
    }

    #[test]
    fn an_arch_suffix_is_not_part_of_the_number() {
        // sm_90a (wgmma, setmaxnreg): the arch-specific target of the same SM.
        let r = parse_ptxas(&REPORT.replace("'sm_90'", "'sm_90a'")).unwrap();
        assert_eq!((r[0].symbol.as_str(), r[0].arch), ("k_a", 90));
    }

    #[test]
    fn each_entry_needs_its_own_properties_line() {
        // The same kernel on a second arch, its properties line missing: the first arch's
        // properties must not stand in for it (ptxas -v writes one per entry and arch).
        let text = "\
ptxas info    : Compiling entry function 'k' for 'sm_80'
ptxas info    : Function properties for k
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Used 40 registers, used 0 barriers
";
        assert!(parse_ptxas(text).is_err());
        // Another function's stack line inside k's entry is not k's.
        let helper = "\
ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for helper
    64 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Function properties for k
ptxas info    : Used 40 registers, used 0 barriers
";
        if let Ok(r) = parse_ptxas(helper) {
            assert_eq!(
                (r[0].stack_bytes, r[0].spill_stores, r[0].spill_loads),
                (0, 0, 0),
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_short_stack_line_is_refused() {
        let short = REPORT.replace(
            "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads",
            "    8 bytes stack frame, 4 bytes spill stores",
        );
        let e = parse_ptxas(&short).unwrap_err().to_string();
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn smem_is_the_smem_field_not_the_first_byte_count() {
        // The persistent layers' Used line (CUDA 13.0) has a cumulative stack size and constant
        // banks around the static shared memory.
        let text = REPORT.replace(
            "Used 74 registers, used 1 barriers, 1028 bytes smem",
            "Used 128 registers, used 1 barriers, 16 bytes cumulative stack size, 45056 bytes smem, 412 bytes cmem[0], 8 bytes cmem[2]",
        );
        let r = parse_ptxas(&text).unwrap();
        assert_eq!((r[0].registers, r[0].smem_bytes), (128, 45056));
        // cmem alone is no shared memory.
        let cmem = REPORT.replace("used 0 barriers\n", "used 0 barriers, 360 bytes cmem[0]\n");
        assert_eq!(parse_ptxas(&cmem).unwrap()[1].smem_bytes, 0);
    }

    #[test]
    fn sass_arch_comes_from_either_header_form() {
        let body = "\t\tFunction : k\n        /*0000*/                   EXIT ;\n";
        for (header, arch) in [("\tcode for sm_86\n", 86), ("arch = sm_75\n", 75)] {
            let s = parse_sass(&format!("{header}{body}"));
            assert_eq!((s.len(), s[0].arch), (1, arch), "{header}");
        }
    }

    #[test]
    fn sass_flags_only_what_their_opcodes_mean() {
        let text = "
	code for sm_90
		Function : k_ldl
        /*0000*/                   LDL.64 R2, [R1+0x8] ;
		Function : k_rcp
        /*0000*/                   MUFU.RCP R7, R7 ;
        /*0010*/                   MUFU.RSQ R8, R8 ;
		Function : k_generic_first
        /*0000*/                   LD.E R4, [R2.64] ;
        /*0010*/                   ACQBULK ;
		Function : k_cache_op_first
        /*0000*/                   CCTL.IVALL ;
        /*0010*/                   ACQBULK ;
		Function : k_async_copy
        /*0000*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R4.64] ;
";
        let s = parse_sass(text);
        // A local load alone is local memory (a spill reload, a stack array read).
        assert!(s[0].local_memory);
        // Reciprocal and rsqrt are no exp.
        assert!(!s[1].exp2);
        // A generic load is a memory access before the wait.
        assert!(s[2].pdl_wait && s[2].memory_before_pdl_wait);
        // A cache invalidation is not an L2 prefetch (nor a memory access).
        assert!(!s[3].prefetch_before_pdl_wait && !s[3].memory_before_pdl_wait);
        // cp.async from global memory: a 128-bit global load.
        assert!(s[4].has_wide_loads(), "{:?}", s[4].global_loads);
    }

    #[test]
    fn an_empty_one_line_section_ends_where_it_starts() {
        let ptx = ".version 9.0\n\t.section\t.debug_loc\t{\t}\n.visible .entry k()\n{\n\tret;\n}\n";
        assert_eq!(
            strip_ptx_debug_info(ptx),
            ".version 9.0\n.visible .entry k()\n{\n\tret;\n}\n"
        );
    }

    #[test]
    fn only_the_split_k_epilogue_is_exempt_from_hmma() {
        let v = Variant {
            symbols: &["k_splitk", "k_final", "k_main_finish"],
            ..strict()
        };
        let s: Vec<SassSummary> = ["k_splitk", "k_final", "k_main_finish"]
            .into_iter()
            .map(|sym| SassSummary {
                hmma: false,
                ..sass(sym, 90)
            })
            .collect();
        let bad = sass_violations(&[&v], &s, &[90]);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("k_splitk on sm_90 has no HMMA"), "{bad:?}");
        assert!(bad[1].contains("k_final on sm_90 has no HMMA"), "{bad:?}");
    }

    #[test]
    fn a_wide_loads_kernel_without_any_global_load_breaks_the_rule() {
        let v = strict();
        let mut s = clean_sass();
        s[2].global_loads.clear();
        let bad = sass_violations(&[&v], &s, &[80, 90]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].contains("k_main on sm_90 has no 128-bit global load"),
            "{bad:?}"
        );
    }

    #[test]
    fn cuda12_0_ptxas_set_but_missing_is_an_error_not_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("ptxas");
        std::fs::write(&default, "").unwrap();
        let missing = dir.path().join("nope");
        let e = cuda12_0_ptxas_from(Some(missing.clone().into()), &default).unwrap_err();
        assert!(e.contains("LAB_PTXAS_12_0") && e.contains("nope"), "{e}");
        assert_eq!(
            cuda12_0_ptxas_from(Some(default.clone().into()), &missing),
            Ok(default.clone())
        );
        assert_eq!(cuda12_0_ptxas_from(None, &default), Ok(default.clone()));
        assert!(cuda12_0_ptxas_from(None, &missing).is_err());
    }
}
