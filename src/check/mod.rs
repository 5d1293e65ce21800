//! `lab check`: every variant of a family against the CPU f64 reference, over the case matrix
//! (cases.rs), with every tunable instantiation, outputs poisoned with NaN before each launch,
//! and the must-refuse shapes (refusals.rs). Family-generic: a family plugs in through the
//! registry, `kernels::layer::prepare_with` and `kernels::launch::launch`.
//!
//! Host work (RTN quantization, reorder, f64 reference, per-variant prepare) runs on worker
//! threads and streams cases to the GPU thread through a bounded channel.

pub mod cases;
pub mod host_ref;
pub mod refusals;
pub mod tolerance;

use crate::cuda::Gpu;
use crate::error::DriverCtx;
use crate::gptq::{reorder_by_group, QuantLinear};
use crate::kernels::launch::{self, tunable_combinations, Tunables};
use crate::kernels::layer::{self, PreparedHost};
use crate::kernels::registry::{self, ActOrder, Family, Variant};
use crate::{LabError, Result};
use cases::Case;
use half::f16;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use tolerance::{compare, error_model, Comparison};

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// None = every family except the reference kernels.
    pub family: Option<Family>,
    /// Only this variant.
    pub variant: Option<String>,
    pub quick: bool,
    pub seed: u64,
    /// Host worker threads (0 = available parallelism, at most 8: each holds a layer in flight).
    pub threads: usize,
    /// Print one progress line per case on stderr.
    pub progress: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            family: None,
            variant: None,
            quick: false,
            seed: 0x6c61_625f_6368_6b31,
            threads: 0,
            progress: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Pass,
    /// Outside tolerance somewhere (or NaN: an unwritten element).
    Fail,
    /// The variant declares no support for the case (counted, never silent).
    Skip {
        reason: String,
    },
    /// The variant declares support but refused at prepare/plan time: a failure.
    Refused {
        reason: String,
    },
    /// A baseline whose library (cuBLAS) is missing on this machine.
    Unavailable {
        reason: String,
    },
    /// A driver or launch error: a failure.
    Error {
        message: String,
    },
}

impl Status {
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Status::Fail | Status::Refused { .. } | Status::Error { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub case: usize,
    pub variant: &'static str,
    pub params: Tunables,
    #[serde(flatten)]
    pub status: Status,
    /// Present when the launch ran.
    pub comparison: Option<Comparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub variant: &'static str,
    pub params: String,
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
    pub unavailable: usize,
    /// Largest err/tol over every passing and failing launch.
    pub worst_margin: f64,
    /// Largest arithmetic margin (tolerance::Comparison::arith_margin).
    pub worst_arith: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub device: Option<crate::cuda::DeviceInfo>,
    pub build: crate::build_info::BuildInfo,
    pub quick: bool,
    pub seed: u64,
    pub cases: Vec<Case>,
    pub outcomes: Vec<Outcome>,
    pub refusals: Vec<refusals::Refusal>,
    pub summary: Vec<Summary>,
    pub failures: usize,
    pub host_seconds: f64,
    pub total_seconds: f64,
}

/// The variants `opts` selects (registry order), or an error naming the unknown variant.
pub fn selected_variants(opts: &CheckOptions) -> Result<Vec<&'static Variant>> {
    let vs: Vec<&'static Variant> = registry::all()
        .into_iter()
        .filter(|v| v.family != Family::Reference)
        .filter(|v| opts.family.is_none_or(|f| v.family == f))
        .filter(|v| opts.variant.as_deref().is_none_or(|n| v.name == n))
        .collect();
    if vs.is_empty() {
        return Err(LabError::invalid(
            "--variant/--family",
            format!(
                "no variant matches (family {:?}, variant {:?}); `lab check --list` shows them",
                opts.family, opts.variant
            ),
        ));
    }
    Ok(vs)
}

/// Everything the GPU thread needs for one case, built on a worker.
struct CaseData {
    case: Case,
    x: Vec<f16>,
    y_ref: Vec<f64>,
    abs_ref: Vec<f64>,
    /// Per variant: skip reason, or the prepared layer (or the refusal).
    prepared: Vec<(
        &'static Variant,
        std::result::Result<Result<PreparedHost>, String>,
    )>,
}

/// `sm`: the GPU's compute capability; a variant it cannot run is a skip (cases::skip_reason).
fn build_case(
    c: &Case,
    variants: &[&'static Variant],
    sm: u32,
    ref_threads: usize,
) -> Result<CaseData> {
    let (l, x): (QuantLinear, Vec<f16>) = cases::build_inputs(c)?;
    let (y_ref, abs_ref) = host_ref::reference(&c.reference_x(&x), c.m, &l, ref_threads);
    let needs_reorder = l.is_act_order()
        && variants.iter().any(|v| {
            v.act_order.contains(&ActOrder::Reordered) && cases::skip_reason(v, c, sm).is_none()
        });
    let reordered = if needs_reorder {
        Some(reorder_by_group(&l)?)
    } else {
        None
    };
    let prepared = variants
        .iter()
        .map(|&v| match cases::skip_reason(v, c, sm) {
            Some(reason) => (v, Err(reason)),
            None => (v, Ok(layer::prepare_with(v, &l, reordered.as_ref()))),
        })
        .collect();
    Ok(CaseData {
        case: c.clone(),
        x,
        y_ref,
        abs_ref,
        prepared,
    })
}

fn params_string(p: &Tunables) -> String {
    if p.is_empty() {
        return "-".into();
    }
    p.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs one case's variants on the GPU.
fn run_case(gpu: &Gpu, d: &CaseData, out: &mut Vec<Outcome>) -> Result<()> {
    let c = &d.case;
    let s = &gpu.stream;
    let x = s.clone_htod(&d.x).ctx("uploading x")?;
    let poison = vec![f16::NAN; c.m * c.n];
    let mut y = s.clone_htod(&poison).ctx("allocating y")?;
    for (v, prep) in &d.prepared {
        let v: &'static Variant = v;
        let combos = tunable_combinations(v);
        let mut push = |params: Tunables, status: Status, comparison: Option<Comparison>| {
            out.push(Outcome {
                case: c.id,
                variant: v.name,
                params,
                status,
                comparison,
            })
        };
        let p = match prep {
            Err(reason) => {
                for t in combos {
                    push(
                        t,
                        Status::Skip {
                            reason: reason.clone(),
                        },
                        None,
                    );
                }
                continue;
            }
            Ok(Err(e)) => {
                for t in combos {
                    push(
                        t,
                        Status::Refused {
                            reason: e.to_string(),
                        },
                        None,
                    );
                }
                continue;
            }
            Ok(Ok(p)) => p,
        };
        let dev = match layer::upload(gpu, p) {
            Ok(dl) => dl,
            Err(LabError::CublasUnavailable(r)) => {
                for t in combos {
                    push(t, Status::Unavailable { reason: r.clone() }, None);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let model = error_model(v);
        for t in combos {
            s.memcpy_htod(&poison, &mut y).ctx("poisoning y with NaN")?;
            let launched = if c.gated {
                launch::launch_gated(gpu, v, &dev, &x, &mut y, &t)
            } else {
                launch::launch(gpu, v, &dev, &x, c.m, &mut y, &t)
            };
            match launched {
                Ok(()) => {}
                Err(e @ LabError::UnsupportedShape { .. }) => {
                    push(
                        t,
                        Status::Refused {
                            reason: e.to_string(),
                        },
                        None,
                    );
                    continue;
                }
                Err(e) => {
                    // A launch/driver error may leave the context unusable: report and stop here.
                    let msg = e.to_string();
                    push(t, Status::Error { message: msg }, None);
                    return Err(e);
                }
            }
            if let Err(e) = gpu.sync() {
                push(
                    t,
                    Status::Error {
                        message: format!("after launch: {e}"),
                    },
                    None,
                );
                return Err(e);
            }
            let got = s.clone_dtoh(&y).ctx("reading y back")?;
            let cmp = compare(&got, &d.y_ref, &d.abs_ref, c.n, c.k, &model);
            let status = if cmp.bad == 0 {
                Status::Pass
            } else {
                Status::Fail
            };
            push(t, status, Some(cmp));
        }
    }
    Ok(())
}

/// Runs the matrix. `gpu` None: refusals only (the caller reports that the GPU part did not run).
pub fn run_check(gpu: Option<&Gpu>, opts: &CheckOptions) -> Result<CheckReport> {
    let t0 = std::time::Instant::now();
    let variants = selected_variants(opts)?;
    let families: Vec<Family> = {
        let mut f: Vec<Family> = variants.iter().map(|v| v.family).collect();
        f.dedup();
        f
    };
    let mut all_cases: Vec<(Family, Case)> = Vec::new();
    for &f in &families {
        for mut c in cases::matrix(f, opts.quick, opts.seed) {
            c.id = all_cases.len();
            all_cases.push((f, c));
        }
    }
    let refusals: Vec<refusals::Refusal> = families
        .iter()
        .flat_map(|&f| refusals::check_refusals(f))
        .filter(|r| variants.iter().any(|v| v.name == r.variant))
        .collect();
    let mut outcomes = Vec::new();
    let mut host_seconds = 0.0;
    let mut fatal: Option<LabError> = None;
    if let Some(gpu) = gpu {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = if opts.threads > 0 {
            opts.threads
        } else {
            cpus.min(8)
        };
        // Spare cores go to each case's reference (parallel over columns).
        let ref_threads = (cpus / workers).max(1);
        let sm = gpu.sm();
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<CaseData>, f64)>(workers);
        std::thread::scope(|s| {
            for _ in 0..workers {
                let (tx, next, all_cases, variants) = (tx.clone(), &next, &all_cases, &variants);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((fam, c)) = all_cases.get(i) else {
                        break;
                    };
                    let vs: Vec<&'static Variant> = variants
                        .iter()
                        .copied()
                        .filter(|v| v.family == *fam)
                        .collect();
                    let t = std::time::Instant::now();
                    let d = build_case(c, &vs, sm, ref_threads);
                    if tx.send((i, d, t.elapsed().as_secs_f64())).is_err() {
                        break; // the GPU thread stopped
                    }
                });
            }
            drop(tx);
            for (i, d, secs) in rx.iter() {
                host_seconds += secs;
                let c = &all_cases[i].1;
                if fatal.is_some() {
                    continue; // drain the workers
                }
                let d = match d {
                    Ok(d) => d,
                    Err(e) => {
                        fatal = Some(LabError::CheckFailed(format!(
                            "building inputs of case {}: {e}",
                            c.describe()
                        )));
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        continue;
                    }
                };
                let before = outcomes.len();
                if let Err(e) = run_case(gpu, &d, &mut outcomes) {
                    fatal = Some(LabError::CheckFailed(format!("case {}: {e}", c.describe())));
                    next.store(usize::MAX / 2, Ordering::Relaxed);
                }
                if opts.progress {
                    let new = &outcomes[before..];
                    let bad = new.iter().filter(|o| o.status.is_failure()).count();
                    eprintln!(
                        "case {:>3}/{}: {} — {} launches, {} failing",
                        i + 1,
                        all_cases.len(),
                        c.describe(),
                        new.iter().filter(|o| o.comparison.is_some()).count(),
                        bad
                    );
                }
            }
        });
    }
    outcomes.sort_by_key(|o| {
        let vi = variants
            .iter()
            .position(|v| v.name == o.variant)
            .unwrap_or(usize::MAX);
        (o.case, vi)
    });
    let summary = summarize(&variants, &outcomes);
    let failures = count_failures(&outcomes, &refusals);
    let report = CheckReport {
        device: gpu.map(|g| g.info.clone()),
        build: crate::build_info::build_info(),
        quick: opts.quick,
        seed: opts.seed,
        cases: all_cases.into_iter().map(|(_, c)| c).collect(),
        outcomes,
        refusals,
        summary,
        failures,
        host_seconds,
        total_seconds: t0.elapsed().as_secs_f64(),
    };
    match fatal {
        // The partial report is still worth printing: the caller gets it inside the error text.
        Some(e) => Err(LabError::CheckFailed(format!(
            "{e}\n{}",
            render_failures(&report)
        ))),
        None => Ok(report),
    }
}

/// What makes `lab check` fail: a failing launch (Fail, Refused, Error) or a must-refuse shape
/// that was not refused as it must be.
fn count_failures(outcomes: &[Outcome], refusals: &[refusals::Refusal]) -> usize {
    outcomes.iter().filter(|o| o.status.is_failure()).count()
        + refusals.iter().filter(|r| !r.ok).count()
}

fn summarize(variants: &[&'static Variant], outcomes: &[Outcome]) -> Vec<Summary> {
    let mut rows: BTreeMap<(usize, String), Summary> = BTreeMap::new();
    for o in outcomes {
        let vi = variants
            .iter()
            .position(|v| v.name == o.variant)
            .unwrap_or(usize::MAX);
        let ps = params_string(&o.params);
        let r = rows.entry((vi, ps.clone())).or_insert(Summary {
            variant: o.variant,
            params: ps,
            pass: 0,
            fail: 0,
            skip: 0,
            unavailable: 0,
            worst_margin: 0.0,
            worst_arith: 0.0,
        });
        match &o.status {
            Status::Pass => r.pass += 1,
            Status::Skip { .. } => r.skip += 1,
            Status::Unavailable { .. } => r.unavailable += 1,
            _ => r.fail += 1,
        }
        if let Some(c) = &o.comparison {
            r.worst_margin = r.worst_margin.max(c.margin);
            r.worst_arith = r.worst_arith.max(c.arith_margin);
        }
    }
    rows.into_values().collect()
}

/// The table: one row per (variant, tunables), then skip reasons, refusals, and failure details.
pub fn render(report: &CheckReport) -> String {
    let mut s = String::new();
    use std::fmt::Write;
    let dev = report.device.as_ref().map_or("no GPU".to_string(), |d| {
        format!(
            "{} (sm_{}{}, {} SMs)",
            d.name, d.cc_major, d.cc_minor, d.sms
        )
    });
    let _ = writeln!(
        s,
        "lab check: {} cases{}, seed {:#x}, {} | git {} kernels {}",
        report.cases.len(),
        if report.quick { " (quick)" } else { "" },
        report.seed,
        dev,
        report.build.git_rev,
        report.build.kernel_hash
    );
    let _ = writeln!(
        s,
        "{:<22} {:<24} {:>5} {:>5} {:>5} {:>5}  {:>11} {:>6}",
        "variant", "tunables", "pass", "FAIL", "skip", "n/a", "worst e/tol", "arith"
    );
    for r in &report.summary {
        let _ = writeln!(
            s,
            "{:<22} {:<24} {:>5} {:>5} {:>5} {:>5}  {:>11.4} {:>6.3}{}",
            r.variant,
            r.params,
            r.pass,
            r.fail,
            r.skip,
            r.unavailable,
            r.worst_margin,
            r.worst_arith,
            if r.fail > 0 {
                "  <-- FAIL"
            } else if r.worst_arith > 0.25 {
                "  (suspicious: arithmetic error > 0.25 of its bound)"
            } else {
                ""
            }
        );
    }
    let mut skips: BTreeMap<String, usize> = BTreeMap::new();
    let mut unavailable: BTreeMap<String, usize> = BTreeMap::new();
    for o in &report.outcomes {
        match &o.status {
            Status::Skip { reason } => {
                *skips.entry(format!("{}: {reason}", o.variant)).or_default() += 1
            }
            Status::Unavailable { reason } => *unavailable.entry(reason.clone()).or_default() += 1,
            _ => {}
        }
    }
    if !skips.is_empty() {
        let total: usize = skips.values().sum();
        let _ = writeln!(s, "skipped (declared unsupported): {total}");
        for (r, n) in &skips {
            let _ = writeln!(s, "  {n:>5}  {r}");
        }
    }
    for (r, n) in &unavailable {
        let _ = writeln!(s, "WARNING: {n} baseline launches not run: {r}");
    }
    let ok = report.refusals.iter().filter(|r| r.ok).count();
    let _ = writeln!(
        s,
        "must-refuse shapes: {ok}/{} refused as UnsupportedShape",
        report.refusals.len()
    );
    for r in report.refusals.iter().filter(|r| !r.ok) {
        let _ = writeln!(s, "  FAIL {} {}: {}", r.variant, r.what, r.message);
    }
    s.push_str(&render_failures(report));
    let _ = writeln!(
        s,
        "{} in {:.1} s (host work {:.1} s over workers)",
        if report.failures == 0 {
            "ALL PASS".to_string()
        } else {
            format!("{} FAILURES", report.failures)
        },
        report.total_seconds,
        report.host_seconds
    );
    s
}

fn render_failures(report: &CheckReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for o in report.outcomes.iter().filter(|o| o.status.is_failure()) {
        let case = report.cases.iter().find(|c| c.id == o.case);
        let cd = case.map_or(format!("case {}", o.case), |c| c.describe());
        let _ = writeln!(
            s,
            "FAIL {} [{}] {}",
            o.variant,
            params_string(&o.params),
            cd
        );
        match (&o.status, &o.comparison) {
            (Status::Fail, Some(c)) => {
                if let Some(w) = &c.worst {
                    let _ = writeln!(
                        s,
                        "  worst |err| {:.3e} at [{}, {}]: got {} want {:.6} tol {:.3e} (err/tol {:.1}); {} of {} outside tolerance",
                        w.err,
                        w.row,
                        w.col,
                        w.got,
                        w.want,
                        w.tol,
                        c.margin,
                        c.bad,
                        case.map_or(0, |c| c.m * c.n)
                    );
                }
                for mm in &c.first {
                    let _ = writeln!(
                        s,
                        "    [{}, {}] got {} want {:.6} err {:.3e} tol {:.3e}",
                        mm.row, mm.col, mm.got, mm.want, mm.err, mm.tol
                    );
                }
            }
            (Status::Refused { reason }, _) => {
                let _ = writeln!(s, "  declared supported but refused: {reason}");
            }
            (Status::Error { message }, _) => {
                let _ = writeln!(s, "  error: {message}");
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(vs: &[&'static Variant]) -> Vec<&'static str> {
        vs.iter().map(|v| v.name).collect()
    }

    #[test]
    fn the_selection_is_every_gpu_variant_one_family_or_one_variant_never_a_reference() {
        let all = selected_variants(&CheckOptions::default()).unwrap();
        let want: Vec<&str> = registry::all()
            .into_iter()
            .filter(|v| v.family != Family::Reference)
            .map(|v| v.name)
            .collect();
        assert_eq!(names(&all), want);
        assert!(all.iter().any(|v| v.family == Family::Gemv));
        assert!(all.iter().any(|v| v.family == Family::Gemm));
        for family in [Family::Gemv, Family::Gemm] {
            let opts = CheckOptions {
                family: Some(family),
                ..CheckOptions::default()
            };
            let vs = selected_variants(&opts).unwrap();
            assert!(!vs.is_empty() && vs.iter().all(|v| v.family == family));
        }
        let one = CheckOptions {
            variant: Some("gemv_v4_perm".into()),
            ..CheckOptions::default()
        };
        assert_eq!(names(&selected_variants(&one).unwrap()), ["gemv_v4_perm"]);
        // A reference kernel is not a check subject, even by name; an unknown name is an error.
        for name in ["ref_matmul_v1", "gemv_v99"] {
            let opts = CheckOptions {
                variant: Some(name.into()),
                ..CheckOptions::default()
            };
            let e = selected_variants(&opts).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("no variant matches"), "{e}");
        }
        let wrong_family = CheckOptions {
            family: Some(Family::Gemm),
            variant: Some("gemv_v1_naive".into()),
            ..CheckOptions::default()
        };
        assert!(selected_variants(&wrong_family).is_err());
    }

    #[test]
    fn a_run_without_a_gpu_lists_every_familys_cases_and_the_selected_variants_refusals() {
        let opts = CheckOptions {
            quick: true,
            ..CheckOptions::default()
        };
        let r = run_check(None, &opts).unwrap();
        let gemv = cases::matrix(Family::Gemv, true, opts.seed);
        let gemm = cases::matrix(Family::Gemm, true, opts.seed);
        assert_eq!(r.cases.len(), gemv.len() + gemm.len());
        assert!(r.cases.iter().enumerate().all(|(i, c)| c.id == i));
        // The GEMM cases follow the GEMV ones, with the same seeds.
        assert!(r.cases[gemv.len()..]
            .iter()
            .zip(&gemm)
            .all(|(a, b)| a.seed == b.seed && a.m == b.m));
        assert!(r.outcomes.is_empty() && r.summary.is_empty());
        let refusals = check_refusals_of(&[Family::Gemv, Family::Gemm]);
        assert_eq!(r.refusals.len(), refusals);
        assert_eq!(r.failures, 0);
        // One variant: only its own refusals, and only its family's cases.
        let opts = CheckOptions {
            quick: true,
            variant: Some("gemv_v2_vec".into()),
            ..CheckOptions::default()
        };
        let r = run_check(None, &opts).unwrap();
        assert_eq!(r.cases.len(), gemv.len());
        assert!(!r.refusals.is_empty());
        assert!(r.refusals.iter().all(|x| x.variant == "gemv_v2_vec"));
    }

    fn check_refusals_of(families: &[Family]) -> usize {
        families
            .iter()
            .map(|&f| refusals::check_refusals(f).len())
            .sum()
    }

    fn outcome(status: Status, margin: Option<f64>) -> Outcome {
        Outcome {
            case: 0,
            variant: "gemv_v1_naive",
            params: Tunables::new(),
            status,
            comparison: margin.map(|m| Comparison {
                bad: 0,
                worst: None,
                margin: m,
                arith_margin: m / 2.0,
                first: Vec::new(),
            }),
        }
    }

    #[test]
    fn refusals_errors_and_fails_are_failures_and_are_counted_so() {
        let r = |s: &str| Status::Refused { reason: s.into() };
        assert!(Status::Fail.is_failure());
        assert!(r("x").is_failure());
        assert!(Status::Error {
            message: "x".into()
        }
        .is_failure());
        assert!(!Status::Pass.is_failure());
        assert!(!Status::Skip { reason: "x".into() }.is_failure());
        assert!(!Status::Unavailable { reason: "x".into() }.is_failure());
        let outcomes = vec![
            outcome(Status::Pass, Some(0.5)),
            outcome(Status::Fail, Some(3.0)),
            outcome(r("declared but refused"), None),
            outcome(
                Status::Skip {
                    reason: "g16".into(),
                },
                None,
            ),
            outcome(
                Status::Unavailable {
                    reason: "no cuBLAS".into(),
                },
                None,
            ),
            outcome(
                Status::Error {
                    message: "launch".into(),
                },
                None,
            ),
        ];
        let refusal = |ok: bool| refusals::Refusal {
            variant: "gemv_v2_vec".into(),
            what: "batch m=2".into(),
            ok,
            message: String::new(),
        };
        assert_eq!(count_failures(&outcomes, &[refusal(true)]), 3);
        assert_eq!(
            count_failures(&outcomes, &[refusal(true), refusal(false)]),
            4
        );
        assert_eq!(count_failures(&[], &[refusal(false)]), 1);
        let v1 = registry::by_name("gemv_v1_naive").unwrap();
        let s = summarize(&[v1], &outcomes);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(
            (s.pass, s.fail, s.skip, s.unavailable),
            (1, 3, 1, 1),
            "{s:?}"
        );
        assert_eq!((s.worst_margin, s.worst_arith), (3.0, 1.5));
        assert_eq!(s.params, "-");
    }
}
