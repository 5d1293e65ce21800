//! Reports under reports/<gpu-slug>/: one JSON (machine-readable, complete) and one markdown
//! (for people) per family or run, each with the same header: device, build (git revision,
//! kernel-source hash), UTC date and the ceilings measured in the same process.

pub mod index;
pub mod markdown;
pub mod plot;
pub mod regenerate;
pub mod tune;

use crate::bench::Ceilings;
use crate::build_info::{build_info, BuildInfo};
use crate::cuda::DeviceInfo;
use crate::util::{write_atomic, write_json_atomic};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportHeader {
    pub device: DeviceInfo,
    pub build: BuildInfo,
    /// UTC, "YYYY-MM-DDTHH:MM:SSZ".
    pub date: String,
    pub ceilings: Option<Ceilings>,
}

impl ReportHeader {
    pub fn new(device: &DeviceInfo, ceilings: Option<Ceilings>) -> Self {
        ReportHeader {
            device: device.clone(),
            build: build_info(),
            date: utc_now(),
            ceilings,
        }
    }

    /// The markdown lines every report starts with.
    pub fn markdown(&self) -> String {
        let d = &self.device;
        let mut s = format!(
            "{}- build: git `{}`, kernel hash `{}`, archs {:?}\n- date: {}\n",
            device_markdown(d),
            self.build.git_rev,
            self.build.kernel_hash,
            self.build.archs,
            self.date
        );
        if let Some(c) = &self.ceilings {
            s.push_str(&format!(
                "- measured ceilings: read {:.0} GB/s, copy {:.0} GB/s (kernel {:.0}, memcpy {:.0}; read+write bytes), spec {:.0} GB/s\n",
                c.read_gbs,
                c.copy_gbs,
                c.copy_kernel_gbs,
                c.memcpy_dtod_gbs,
                d.spec_bandwidth() / 1e9
            ));
        }
        s
    }

    /// Whether this report was made from the kernel sources of this binary.
    pub fn is_current(&self) -> bool {
        self.build.kernel_hash == crate::build_info::KERNEL_HASH
    }

    /// A markdown line for a report whose kernels are not this binary's; `None` when current.
    pub fn stale_note(&self) -> Option<String> {
        stale_note(&self.build.kernel_hash)
    }
}

/// "- device: ..." line of every report and of the tuning report.
pub fn device_markdown(d: &DeviceInfo) -> String {
    format!(
        "- device: **{}** (sm_{}{}, {} SMs, {:.1} GiB, L2 {} MiB, driver CUDA {}{})\n",
        d.name,
        d.cc_major,
        d.cc_minor,
        d.sms,
        d.memory_bytes as f64 / (1u64 << 30) as f64,
        d.l2_bytes >> 20,
        d.driver_cuda,
        if d.driver_version.is_empty() {
            String::new()
        } else {
            format!(", driver {}", d.driver_version)
        },
    )
}

/// The stale warning for numbers measured with kernel sources `kernel_hash`; `None` when they are
/// this binary's.
pub fn stale_note(kernel_hash: &str) -> Option<String> {
    (kernel_hash != crate::build_info::KERNEL_HASH).then(|| {
        format!(
            "**Stale:** kernel hash `{kernel_hash}` differs from this build's `{}`: these numbers are from other kernel sources; rerun on a GPU to refresh them.",
            crate::build_info::KERNEL_HASH
        )
    })
}

/// The bandwidth-ceilings report (ceilings.md) of a header.
pub fn ceilings_markdown(h: &ReportHeader) -> String {
    let mut md = format!("# Bandwidth ceilings\n\n{}", h.markdown());
    if let Some(s) = h.stale_note() {
        md.push_str(&format!("\n{s}\n"));
    }
    let Some(c) = &h.ceilings else {
        return md;
    };
    // Sizes the probe measured (reports recorded before it hold zeros).
    let sized: Vec<_> = c
        .read_by_size
        .iter()
        .filter(|r| r.bytes > 0 && r.gbs > 0.0)
        .collect();
    if !sized.is_empty() {
        md.push_str("\nRead probe on windows the size of one decode GEMV's weights, each launch on a window not in L2 (the best one launch of that many bytes reaches; the GEMV sweep's \"% read ceiling\" is against the 1 GiB figure):\n\n");
        let rows: Vec<Vec<String>> = sized
            .iter()
            .map(|r| {
                vec![
                    format!("{:.2}", r.bytes as f64 / 1e6),
                    format!("{:.1}", r.us),
                    format!("{:.0}", r.gbs),
                    format!("{:.1}%", 100.0 * r.gbs / c.read_gbs),
                    format!("{:.1}", r.back_to_back_us),
                    format!("{:.0}", r.back_to_back_gbs),
                    format!("{:.1}%", 100.0 * r.back_to_back_gbs / c.read_gbs),
                ]
            })
            .collect();
        md.push_str(&crate::report::markdown::table(
            &[
                "MB",
                "us (one launch)",
                "GB/s",
                "% of 1 GiB read",
                "us back-to-back",
                "GB/s back-to-back",
                "back-to-back % of 1 GiB read",
            ],
            &rows,
        ));
    }
    md
}

/// reports/<slug>/ under `root`.
pub fn report_dir(root: &Path, slug: &str) -> PathBuf {
    root.join("reports").join(slug)
}

/// Writes `<dir>/<name>.json` and `<dir>/<name>.md`, each atomically.
pub fn write_report<T: Serialize>(dir: &Path, name: &str, json: &T, markdown: &str) -> Result<()> {
    write_json_atomic(&dir.join(format!("{name}.json")), json)?;
    write_atomic(&dir.join(format!("{name}.md")), markdown.as_bytes())
}

/// Current UTC time as ISO 8601 (no chrono: days-to-civil conversion, Howard Hinnant's algorithm).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_utc(secs)
}

pub fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn utc_formatting_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951782400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1795707000), "2026-11-26T15:30:00Z");
    }

    /// A ceilings.json recorded before the sized read probe (the committed H100 one with the
    /// field removed) still loads (zeros) and renders no sized table; a header with the probe
    /// renders one row per size, each GB/s also as a share of the 1 GiB read ceiling.
    #[test]
    fn ceilings_report_shows_the_read_probe_by_size_when_recorded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text =
            std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/ceilings.json"))
                .unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let c = v
            .get_mut("ceilings")
            .and_then(|c| c.as_object_mut())
            .expect("ceilings.json has a ceilings object");
        c.remove("read_by_size");
        let mut h: ReportHeader = serde_json::from_value(v).unwrap();
        let old = h.ceilings.unwrap();
        assert!(old.read_by_size.iter().all(|r| r.bytes == 0));
        assert!(!ceilings_markdown(&h).contains("Read probe on windows"));
        let c = h.ceilings.as_mut().unwrap();
        c.read_gbs = 3000.0;
        c.read_by_size[1] = crate::bench::ceilings::SizedRead {
            bytes: 23_248_896,
            us: 11.6,
            gbs: 2004.2,
            back_to_back_us: 9.3,
            back_to_back_gbs: 2500.0,
        };
        let md = ceilings_markdown(&h);
        assert!(md.contains("Read probe on windows"), "{md}");
        assert!(
            md.contains("| 23.25 | 11.6 | 2004 | 66.8% | 9.3 | 2500 | 83.3% |"),
            "{md}"
        );
        // Only the recorded size has a row (after the header and separator lines).
        assert_eq!(md.matches("\n| ").count(), 3, "{md}");
    }
}
