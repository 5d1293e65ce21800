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
