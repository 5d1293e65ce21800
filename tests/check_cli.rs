//! `lab check --list`, which needs no GPU: the variants and the case matrix, as text or JSON;
//! --quick lists the smaller matrix it would run.

mod common;
use common::{lab, stderr};

fn list(extra: &[&str]) -> std::process::Output {
    let o = lab(&[&["check", "--list"][..], extra].concat());
    assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
    o
}

#[test]
fn list_json_has_the_variants_and_the_cases() {
    let v: serde_json::Value = serde_json::from_slice(&list(&["--json"]).stdout).unwrap();
    let variants = v["variants"].as_array().expect("variants");
    let cases = v["cases"].as_array().expect("cases");
    assert!(!variants.is_empty() && !cases.is_empty(), "{v}");
    for c in cases {
        assert!(
            c["id"].is_u64() && c["k"].is_u64() && c["n"].is_u64(),
            "{c}"
        );
    }
}

#[test]
fn list_quick_lists_the_smaller_matrix_and_says_so() {
    let count = |extra: &[&str]| -> usize {
        let v: serde_json::Value = serde_json::from_slice(&list(extra).stdout).unwrap();
        v["cases"].as_array().map_or(0, |c| c.len())
    };
    let (full, quick) = (count(&["--json"]), count(&["--json", "--quick"]));
    assert!(quick > 0 && quick < full, "quick {quick}, full {full}");
    let text = String::from_utf8_lossy(&list(&["--quick"]).stdout).into_owned();
    assert!(text.contains(&format!("{quick} cases (quick)")), "{text}");
}

/// `lab check --static` needs no GPU: the build's ptxas report and SASS of every variant, judged.
/// A clean build exits 0 and its JSON holds every variant's symbols on every built arch, in the
/// resources and (when the SASS tools were found) in the SASS: a family left out, or its SASS
/// dropped, shows here.
#[test]
fn static_json_judges_every_symbol_on_every_built_arch() {
    if !gptq_lab::build_info::KERNELS_BUILT {
        assert!(!lab(&["check", "--static"]).status.success());
        gptq_lab::util::note_skip(
            "check --static",
            "kernels not built (no nvcc at build time)",
        );
        return;
    }
    let o = lab(&["check", "--static", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["violations"],
        serde_json::json!([]),
        "{}",
        v["violations"]
    );
    let archs: Vec<u64> = v["archs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_u64().unwrap())
        .collect();
    assert!(!archs.is_empty());
    let has = |key: &str, sym: &str, arch: u64| {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["symbol"] == sym && r["arch"] == arch)
    };
    let with_sass = v["note"].is_null();
    let mut symbols = 0;
    for var in gptq_lab::kernels::registry::all() {
        if var.family == gptq_lab::kernels::registry::Family::Reference {
            continue;
        }
        for sym in var.symbols {
            symbols += 1;
            for &a in &archs {
                assert!(has("resources", sym, a), "{sym} sm_{a}: no resources");
                assert!(!with_sass || has("sass", sym, a), "{sym} sm_{a}: no SASS");
            }
        }
    }
    assert!(symbols > 10, "{symbols} symbols");
}
