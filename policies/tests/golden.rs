//! Golden tests: what legal teams read, compared byte for byte with checked-in files under
//! `tests/golden/`. A change of wording or behaviour fails here until it is reviewed: rerun
//! with `UPDATE_GOLDEN=1 cargo test -p treaty-policies --test golden` to rewrite the expected
//! files, and read the diff before committing it.
//!
//! - `broken/DE.toml` -> `broken/DE.expected`: every `FILE:LINE:COL: message; hint` of a
//!   deliberately broken policy.
//! - the sample request against the sample policies -> `sample_decision.json` (with its
//!   explanations, which must read as sentences a lawyer can check).
//! - `lint/DE.toml` -> `lint/DE.expected`: every warning of `treaty policy lint`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, as in #[test] functions

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use treaty_policies::{Date, Loaded, Policy, PolicyDir, Registry, Request, decide, lint};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn sample_registry() -> Registry {
    Registry::load(&root().join("sample/registry.toml")).unwrap()
}

/// Compares `actual` with the golden file `name`, or rewrites it under `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); create it with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    if expected != actual {
        let mut report = String::new();
        let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
        for i in 0..e.len().max(a.len()) {
            let (x, y) = (e.get(i), a.get(i));
            if x != y {
                report.push_str(&format!(
                    "line {}:\n  expected: {}\n  actual:   {}\n",
                    i + 1,
                    x.unwrap_or(&"<none>"),
                    y.unwrap_or(&"<none>")
                ));
            }
        }
        panic!(
            "{} differs from the output:\n{report}If the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff.",
            path.display()
        );
    }
}

#[test]
fn a_broken_policy_reports_every_problem_at_its_place() {
    let registry = sample_registry();
    let text = std::fs::read_to_string(root().join("tests/golden/broken/DE.toml")).unwrap();
    let error = Policy::parse("broken/DE.toml", &text, &registry, Some("DE")).unwrap_err();
    let shown: Vec<String> = error
        .diagnostics()
        .iter()
        .map(ToString::to_string)
        .collect();
    let actual = shown.join("\n") + "\n";
    // What the file was written to exercise, whatever the exact wording.
    for wanted in [
        "did you mean `max_epsilon_per_round`?",
        "`narcotic` in rule DE-EU purposes is not a purpose of the registry; did you mean `narcotics`?",
        "`EUROPOL`",
        "rule id `DE-EU` is used twice",
        "rule DE-GB allows but gives no legal_basis",
        "policy.valid_from must be a TOML date like 2025-01-01, not a string; write it without quotes: 2025-01-01",
    ] {
        assert!(actual.contains(wanted), "missing {wanted:?} in:\n{actual}");
    }
    golden("broken/DE.expected", &actual);
}

#[test]
fn the_sample_decision_with_its_explanations() {
    let registry = sample_registry();
    let sample = root().join("sample");
    let request: Request =
        serde_json::from_str(&std::fs::read_to_string(sample.join("request.json")).unwrap())
            .unwrap();
    let dir = PolicyDir::new(&sample, None);
    let policies: BTreeMap<String, Loaded> = dir.load_all(
        &registry,
        request.participants.iter().map(|p| p.country.as_str()),
    );
    let decision = decide(&registry, &policies, &request).unwrap();
    let actual = serde_json::to_string_pretty(&decision).unwrap() + "\n";
    golden("sample_decision.json", &actual);
}

#[test]
fn every_lint_of_a_careless_policy() {
    let registry = sample_registry();
    let text = std::fs::read_to_string(root().join("tests/golden/lint/DE.toml")).unwrap();
    let policy = Policy::parse("lint/DE.toml", &text, &registry, Some("DE"))
        .unwrap_or_else(|e| panic!("{:?}", e.diagnostics()));
    let today = Date::parse("2025-09-01").unwrap();
    let warnings = lint(&registry, &policy, "lint/DE.toml", &text, today);
    let mut codes: Vec<&str> = warnings.iter().map(|w| w.code).collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "delta-too-large",
            "derogation",
            "epsilon-per-round-above-total",
            "gdpr-adequacy",
            "gdpr-adequacy",
            "rule-expired",
            "rule-outside-policy",
            "shadowed-allow",
            "unused-group",
        ]
    );
    let actual: String = warnings.iter().map(|w| format!("{w}\n")).collect();
    golden("lint/DE.expected", &actual);
}
