//! `lab report`: rebuild every report's markdown and plots, and each GPU folder's index, from the
//! recorded JSON alone (no GPU). Inputs, under a root:
//!   reports/<gpu>/ceilings.json   ReportHeader              -> ceilings.md
//!   reports/<gpu>/gemv.json       SweepReport (gemv)        -> gemv.md, gemv-roofline.svg
//!   reports/<gpu>/gemm.json       SweepReport (gemm)        -> gemm.md, gemm-speedup.svg
//!   reports/<gpu>/decode.json     [DecodeReport, ...]       -> decode.md, decode-*.svg
//!   tuning/<gpu>.json             TunedConfig               -> reports/<gpu>/tune.md, tune-speedup.svg
//!   any other reports/<gpu>/*.json: listed with its build header when it has one
//! and reports/<gpu>/README.md, the index. JSON files are only read, never written: they are the
//! record, and a rewrite through today's structs could drop a field an older lab wrote.

use crate::bench::sweep::{write_sweep_views, SweepReport};
use crate::model::decode_bench::{write_decode_views, DecodeReport, SKIPPED_FILE};
use crate::report::index::{index_markdown, Freshness, IndexEntry};
use crate::report::tune::write_tune_report;
use crate::report::{ceilings_markdown, report_dir, ReportHeader};
use crate::tune::TunedConfig;
use crate::util::{read_json, write_atomic};
use crate::{LabError, Result};
use std::path::{Path, PathBuf};

/// What one GPU folder's regeneration did.
#[derive(Debug, Default)]
pub struct SlugOutcome {
    pub slug: String,
    /// Files written (markdown, plots, the index).
    pub written: Vec<PathBuf>,
    /// One line per recorded file that could not be used, naming the file.
    pub errors: Vec<String>,
}

/// GPU slugs with anything recorded under `root`: folders of reports/ and files tuning/<slug>.json.
/// A tuning/*.json whose device is another slug than its name (`lab tune --file
/// tuning/h100-full.json`) is a user's own config, not a GPU's: it is left out of the slugs and
/// returned second, to be named.
pub fn recorded_slugs(root: &Path) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let mut slugs = Vec::new();
    let mut other_tuning = Vec::new();
    for (dir, want_dir) in [(root.join("reports"), true), (root.join("tuning"), false)] {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LabError::io(&dir, e)),
        };
        for e in rd {
            let p = e.map_err(|e| LabError::io(&dir, e))?.path();
            let name = if want_dir {
                p.is_dir().then(|| p.file_name()).flatten()
            } else if p.is_file() && p.extension().is_some_and(|x| x == "json") {
                if tuned_for_another_slug(&p) {
                    other_tuning.push(p);
                    continue;
                }
                p.file_stem()
            } else {
                None
            };
            if let Some(n) = name.and_then(|n| n.to_str()) {
                slugs.push(n.to_string());
            }
        }
    }
    slugs.sort();
    slugs.dedup();
    other_tuning.sort();
    Ok((slugs, other_tuning))
}

/// Whether `path` is a readable tuned config whose device slug differs from its file name. An
/// unreadable one is not: it stays a slug of its own, so its report names the error.
fn tuned_for_another_slug(path: &Path) -> bool {
    let slug = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["device"]["slug"].as_str().map(str::to_string));
    match (slug, path.file_stem().and_then(|s| s.to_str())) {
        (Some(slug), Some(stem)) => slug != stem,
        _ => false,
    }
}

/// A record that says it was measured on another GPU than its folder's is refused by name.
pub(crate) fn check_slug(path: &Path, recorded: &str, slug: &str) -> Result<()> {
    if recorded != slug {
        return Err(LabError::invalid(
            path.display().to_string(),
            format!("recorded on GPU '{recorded}' but filed under '{slug}'"),
        ));
    }
    Ok(())
}

/// A recorded time that is not a positive finite number (a damaged or hand-edited record) is
/// refused, naming the file and the row: rendered, it would give NaN, negative or infinite GB/s
/// and speedups that read like measurements.
fn bad_time(path: &Path, row: String, what: &str) -> LabError {
    LabError::invalid(
        path.display().to_string(),
        format!("{row}: {what}; expected a positive finite time"),
    )
}

fn check_sweep_timings(path: &Path, r: &SweepReport) -> Result<()> {
    for (i, row) in r.rows.iter().enumerate() {
        let bad = row.timing.bad_field().or_else(|| {
            row.back_to_back
                .and_then(|b| b.timing.bad_field())
                .map(|f| format!("back_to_back {f}"))
        });
        if let Some(f) = bad {
            let label = format!(
                "row {i} ({} k={} n={} m={} g={})",
                row.variant, row.k, row.n, row.m, row.group
            );
            return Err(bad_time(path, label, &f));
        }
    }
    Ok(())
}

/// Every recorded time of a decode run is a positive finite number (`lab plan` reads the same
/// file and applies the same check).
pub(crate) fn check_decode_timings(path: &Path, r: &DecodeReport) -> Result<()> {
    let bad = |t: f64| !crate::bench::stats::is_recorded_time(t);
    for p in &r.points {
        let times = [
            ("graph_ms_per_token", Some(p.graph_ms_per_token)),
            ("eager_ms_per_token", Some(p.eager_ms_per_token)),
            ("graph_pdl_ms_per_token", p.graph_pdl_ms_per_token),
        ];
        let prefetch = p
            .graph_pdl_prefetch
            .iter()
            .map(|&(_, t)| ("graph_pdl_prefetch", Some(t)));
        if let Some((f, Some(t))) = times
            .into_iter()
            .chain(prefetch)
            .find(|(_, t)| t.is_some_and(bad))
        {
            let row = format!("run '{}' ctx {}", r.label(), p.ctx);
            return Err(bad_time(path, row, &format!("{f} = {t}")));
        }
    }
    if let Some(p) = r.prefill.iter().find(|p| bad(p.ms)) {
        let row = format!("run '{}' prefill {} tokens", r.label(), p.tokens);
        return Err(bad_time(path, row, &format!("ms = {}", p.ms)));
    }
    Ok(())
}

fn entry(file: &str, source: &str, what: String, h: &ReportHeader) -> IndexEntry {
    IndexEntry {
        file: file.into(),
        source: source.into(),
        what,
        date: h.date.clone(),
        git_rev: h.build.git_rev.clone(),
        kernel_hash: h.build.kernel_hash.clone(),
        freshness: Freshness::of(&h.build.kernel_hash),
    }
}

fn unreadable(file: &str, source: &str, what: &str, e: &LabError) -> IndexEntry {
    IndexEntry {
        file: file.into(),
        source: source.into(),
        what: what.into(),
        date: String::new(),
        git_rev: String::new(),
        kernel_hash: String::new(),
        freshness: Freshness::Unreadable(e.to_string()),
    }
}

/// Regenerates one GPU's folder. A bad record is reported in `errors` (and in the index) and the
/// rest still regenerate; only a failure to write is returned as `Err`.
pub fn regenerate_slug(root: &Path, slug: &str) -> Result<SlugOutcome> {
    let dir = report_dir(root, slug);
    let mut out = SlugOutcome {
        slug: slug.to_string(),
        ..Default::default()
    };
    let mut entries: Vec<IndexEntry> = Vec::new();
    let mut known_json: Vec<&str> = Vec::new();

    // Each recorded report: (json file, markdown it gives, what it is).
    let sources: [(&str, &str, &str); 4] = [
        (
            "ceilings.json",
            "ceilings.md",
            "bandwidth ceilings (copy, read)",
        ),
        ("gemv.json", "gemv.md", "GEMV sweep (batch 1)"),
        ("gemm.json", "gemm.md", "GEMM sweep (batch 1-64)"),
        ("decode.json", "decode.md", "decode"),
    ];
    for (json, md, what) in sources {
        let path = dir.join(json);
        // exists(), not is_file(): a directory (or anything else) under a report's name is
        // reported as unreadable below, not skipped as if no run had recorded it.
        if !path.exists() {
            continue;
        }
        known_json.push(json);
        // The runs a decode bench skipped (they did not fit the card) belong to decode.md, which
        // lists them; a damaged list fails decode.md with an error naming that file.
        if json == "decode.json" && dir.join(SKIPPED_FILE).is_file() {
            known_json.push(SKIPPED_FILE);
        }
        let res: Result<Vec<IndexEntry>> = (|| {
            let mut written = Vec::new();
            let headers: Vec<(String, ReportHeader)> = match json {
                "ceilings.json" => {
                    let h: ReportHeader = read_json(&path)?;
                    check_slug(&path, &h.device.slug, slug)?;
                    write_atomic(&dir.join(md), ceilings_markdown(&h).as_bytes())?;
                    written.push(dir.join(md));
                    vec![(what.to_string(), h)]
                }
                "decode.json" => {
                    let runs: Vec<DecodeReport> = read_json(&path)?;
                    if runs.is_empty() {
                        return Err(LabError::invalid(
                            path.display().to_string(),
                            "no decode runs recorded",
                        ));
                    }
                    for r in &runs {
                        check_slug(&path, &r.header.device.slug, slug)?;
                        check_decode_timings(&path, r)?;
                    }
                    write_decode_views(&dir, &runs)?;
                    for f in [
                        md,
                        "decode-tokens-per-s.svg",
                        "decode-roofline.svg",
                        "decode-vram.svg",
                    ] {
                        written.push(dir.join(f));
                    }
                    runs.iter()
                        .map(|r| (format!("decode: {}", r.label()), r.header.clone()))
                        .collect()
                }
                _ => {
                    let r: SweepReport = read_json(&path)?;
                    let family = json.trim_end_matches(".json");
                    if r.family != family {
                        return Err(LabError::invalid(
                            path.display().to_string(),
                            format!("family field is '{}', expected '{family}'", r.family),
                        ));
                    }
                    check_slug(&path, &r.header.device.slug, slug)?;
                    check_sweep_timings(&path, &r)?;
                    write_sweep_views(&dir, &r)?;
                    written.push(dir.join(md));
                    let plot = dir.join(if family == "gemv" {
                        "gemv-roofline.svg"
                    } else {
                        "gemm-speedup.svg"
                    });
                    if plot.is_file() {
                        written.push(plot);
                    }
                    let what = format!(
                        "{what}{}: {} rows",
                        if r.quick { ", quick" } else { "" },
                        r.rows.len()
                    );
                    vec![(what, r.header)]
                }
            };
            out.written.extend(written);
            Ok(headers
                .into_iter()
                .map(|(w, h)| entry(md, json, w, &h))
                .collect())
        })();
        match res {
            Ok(es) => entries.extend(es),
            Err(e) => {
                out.errors.push(e.to_string());
                entries.push(unreadable(json, json, what, &e));
            }
        }
    }
    // Device name for the index title: from the first readable header.
    let mut device_name = first_device_name(&dir, &known_json);

    // The tuned config lives in tuning/, its report beside the others.
    let tuned = root.join("tuning").join(format!("{slug}.json"));
    if tuned.exists() {
        let source = format!("tuning/{slug}.json");
        let res = TunedConfig::load(&tuned).and_then(|c| {
            check_slug(&tuned, &c.device.slug, slug)?;
            write_tune_report(&dir, &c)?;
            Ok(c)
        });
        match res {
            Ok(c) => {
                out.written.push(dir.join("tune.md"));
                if dir.join("tune-speedup.svg").is_file() {
                    out.written.push(dir.join("tune-speedup.svg"));
                }
                device_name.get_or_insert_with(|| c.device.name.clone());
                entries.push(IndexEntry {
                    file: "tune.md".into(),
                    source: source.clone(),
                    what: format!("autotuning: {} keys, tuned vs default", c.entries.len()),
                    date: c.created.clone(),
                    git_rev: c.git_rev.clone(),
                    kernel_hash: c.kernel_hash.clone(),
                    freshness: Freshness::of(&c.kernel_hash),
                });
            }
            Err(e) => {
                out.errors.push(e.to_string());
                entries.push(unreadable("tune.md", &source, "autotuning", &e));
            }
        }
    }

    // Other JSON records (checks, peer measurements): listed with their build header if any.
    let mut other_files = Vec::new();
    for rel in list_files(&dir)? {
        let written = out.written.iter().any(|w| w == &dir.join(&rel));
        if written || rel == "README.md" || known_json.contains(&rel.as_str()) {
            continue;
        }
        // A report this command writes, left from a record that is gone (tune.md without
        // tuning/<gpu>.json, gemv.md without gemv.json): said so, not listed as a current file.
        let source = sources
            .iter()
            .find(|s| s.1 == rel)
            .map(|s| s.0.to_string())
            .or_else(|| (rel == "tune.md").then(|| format!("tuning/{slug}.json")));
        if let Some(source) = source {
            // A record that is there but was refused is listed above as unreadable, with its
            // error; its old report is neither current nor "gone".
            let record = if source.starts_with("tuning/") {
                root.join(&source)
            } else {
                dir.join(&source)
            };
            if record.exists() {
                continue;
            }
            eprintln!(
                "note: {}: its record {source} is gone, so it was not regenerated",
                dir.join(&rel).display()
            );
            entries.push(IndexEntry {
                file: rel.clone(),
                source,
                what: "a report whose record is gone".into(),
                date: String::new(),
                git_rev: String::new(),
                kernel_hash: String::new(),
                freshness: Freshness::NoRecord,
            });
            continue;
        }
        if rel.ends_with(".json") && !rel.contains('/') {
            let (entry, err) = other_json(&dir.join(&rel), &rel);
            // Unreadable like a known report is: listed so, and the command fails at the end.
            out.errors.extend(err);
            entries.push(entry);
        } else {
            other_files.push(rel);
        }
    }

    let index = dir.join("README.md");
    let md = index_markdown(slug, device_name.as_deref(), &entries, &other_files);
    write_atomic(&index, md.as_bytes())?;
    out.written.push(index);
    Ok(out)
}

/// The device name recorded in the first readable known report (for the index's title).
fn first_device_name(dir: &Path, known: &[&str]) -> Option<String> {
    known.iter().find_map(|json| {
        let v: serde_json::Value = read_json(&dir.join(json)).ok()?;
        let v = if v.is_array() { v.get(0)?.clone() } else { v };
        let h = v.get("header").unwrap_or(&v);
        h.pointer("/device/name")
            .and_then(|n| n.as_str())
            .map(str::to_string)
    })
}

/// An index line for a JSON record of a shape this module does not know: its `build` and `date`
/// (top level or under `header`) when present; with the error when it does not parse.
fn other_json(path: &Path, rel: &str) -> (IndexEntry, Option<String>) {
    let v: serde_json::Value = match read_json(path) {
        Ok(v) => v,
        Err(e) => {
            return (
                unreadable(rel, rel, "(unknown record)", &e),
                Some(e.to_string()),
            )
        }
    };
    let h = v.get("header").unwrap_or(&v);
    let s = |p: &str| h.pointer(p).and_then(|x| x.as_str()).map(str::to_string);
    let hash = s("/build/kernel_hash");
    // A record with a build but no device was measured on the CPU (reports/cpu/quantize.json):
    // kernel sources do not move its numbers, so it is neither current nor stale.
    let freshness = match hash.as_deref() {
        None => Freshness::NoHeader,
        Some(_) if h.get("device").is_none() => Freshness::CpuRecord,
        Some(h) => Freshness::of(h),
    };
    let entry = IndexEntry {
        file: rel.into(),
        source: rel.into(),
        what: "recorded JSON (no markdown view)".into(),
        date: s("/date").unwrap_or_default(),
        git_rev: s("/build/git_rev").unwrap_or_default(),
        kernel_hash: hash.unwrap_or_default(),
        freshness,
    };
    (entry, None)
}

/// Files under `dir` (one level of subfolders), relative, '/'-separated, sorted.
fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(LabError::io(dir, e)),
    };
    for e in rd {
        let p = e.map_err(|e| LabError::io(dir, e))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        // Dot-files are no record: a killed atomic write leaves its ".tmpXXXXXX" behind.
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            let sub = std::fs::read_dir(&p).map_err(|e| LabError::io(&p, e))?;
            for s in sub {
                let sp = s.map_err(|e| LabError::io(&p, e))?.path();
                if let (true, Some(sn)) = (sp.is_file(), sp.file_name().and_then(|n| n.to_str())) {
                    if !sn.starts_with('.') {
                        out.push(format!("{name}/{sn}"));
                    }
                }
            }
        } else if p.is_file() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}
