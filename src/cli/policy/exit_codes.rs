//! Exit codes of the tools, on copies of the sample policies.

use super::*;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/sample")
}

fn copy_sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(sample()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from}");
    std::fs::write(path, text.replace(from, to)).unwrap();
}

#[test]
fn check_exits_0_1_2_and_decide_0_or_2() {
    let dir = copy_sample();
    let d = dir.path();
    let registry = d.join("registry.toml");
    let files: Vec<PathBuf> = ["DE", "FR", "NL", "PL", "US"]
        .iter()
        .map(|c| d.join(format!("{c}.toml")))
        .collect();
    assert_eq!(check(&registry, None, &files), 0);
    // The registry among the files (what `*.toml` gives) is the registry, not a policy.
    let mut with_registry = files.clone();
    with_registry.push(registry.clone());
    assert_eq!(check(&registry, None, &with_registry), 0);
    let request = d.join("request.json");
    assert_eq!(decide_cmd(&registry, d, &request, None), 0);
    // A broken policy: check says 1, decide still decides (0), the country excluded.
    edit(&d.join("FR.toml"), "max_delta", "max_detla");
    assert_eq!(check(&registry, None, &files), 1);
    assert_eq!(decide_cmd(&registry, d, &request, None), 0);
    // Unusable inputs: 2.
    assert_eq!(check(&d.join("nope.toml"), None, &files), 2);
    assert_eq!(decide_cmd(&d.join("nope.toml"), d, &request, None), 2);
    assert_eq!(decide_cmd(&registry, &d.join("nowhere"), &request, None), 2);
    edit(&request, "\"narcotics\"", "\"narcotic\"");
    assert_eq!(decide_cmd(&registry, d, &request, None), 2);
    std::fs::write(&request, "{").unwrap();
    assert_eq!(decide_cmd(&registry, d, &request, None), 2);
}

#[test]
fn test_exits_0_1_2() {
    let dir = copy_sample();
    let d = dir.path();
    let registry = d.join("registry.toml");
    assert_eq!(test_cmd(&registry, d, None, &[]), 0);
    // A test file given by name, the same.
    assert_eq!(test_cmd(&registry, d, None, &[d.join("DE.tests.toml")]), 0);
    // A policy change that a test guards against: 1.
    edit(
        &d.join("DE.toml"),
        "recipients = [\"US\"]",
        "recipients = [\"CA\"]",
    );
    assert_eq!(test_cmd(&registry, d, None, &[]), 1);
    // An unusable test file: 2.
    edit(&d.join("DE.tests.toml"), "admitted = [", "admited = [");
    assert_eq!(test_cmd(&registry, d, None, &[]), 2);
    // No test files at all, or no registry: 2.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(test_cmd(&registry, empty.path(), None, &[]), 2);
    assert_eq!(test_cmd(&d.join("nope.toml"), d, None, &[]), 2);
}

#[test]
fn lint_exits_0_1_2() {
    let dir = copy_sample();
    let d = dir.path();
    let registry = d.join("registry.toml");
    let today = Some("2025-09-01");
    assert_eq!(lint_cmd(&registry, today, &[d.join("DE.toml")]), 0);
    edit(
        &d.join("FR.toml"),
        "transfer_basis = \"intra_eu\"",
        "transfer_basis = \"derogation\"",
    );
    assert_eq!(
        lint_cmd(&registry, today, &[d.join("DE.toml"), d.join("FR.toml")]),
        1
    );
    // An invalid policy prints its errors and exits 1 too.
    edit(&d.join("NL.toml"), "max_delta", "max_detla");
    assert_eq!(
        lint_cmd(&registry, today, &[d.join("DE.toml"), d.join("NL.toml")]),
        1
    );
    assert_eq!(lint_cmd(&registry, today, &[d.join("XX.toml")]), 2);
    assert_eq!(
        lint_cmd(&registry, Some("2025-02-30"), &[d.join("DE.toml")]),
        2
    );
}

#[test]
fn diff_and_matrix_exit_0_or_2() {
    let d = sample();
    let registry = d.join("registry.toml");
    let de = d.join("DE.toml");
    assert_eq!(diff_cmd(&registry, Some("2025-09-01"), false, &de, &de), 0);
    assert_eq!(diff_cmd(&registry, None, true, &de, &de), 0);
    assert_eq!(diff_cmd(&registry, None, false, &de, &d.join("NL.toml")), 2);
    assert_eq!(diff_cmd(&registry, None, false, &de, &d.join("XX.toml")), 2);
    for format in [MatrixFormat::Text, MatrixFormat::Csv, MatrixFormat::Json] {
        assert_eq!(
            matrix_cmd(&registry, &d, "narcotics", Some("2025-09-01"), format, None),
            0
        );
    }
    assert_eq!(
        matrix_cmd(&registry, &d, "narcotic", None, MatrixFormat::Text, None),
        2
    );
}

#[test]
fn keygen_sign_verify() {
    let dir = copy_sample();
    let d = dir.path();
    let keys = d.join("keys");
    assert_eq!(keygen(&keys, "DE"), 0);
    assert_eq!(keygen(&keys, "DE"), 1, "never overwrites");
    assert_eq!(keygen(&keys, "Germany"), 2);
    let key = keys.join("DE.key");
    let registry = d.join("registry.toml");
    assert_eq!(sign_cmd(&key, Some(&registry), &[d.join("DE.toml")]), 0);
    // Not DE's file, not a policy name: refused.
    assert_eq!(sign_cmd(&key, None, &[d.join("NL.toml")]), 1);
    assert_eq!(sign_cmd(&key, None, &[d.join("DE.tests.toml")]), 1);
    assert_eq!(
        sign_cmd(&d.join("nokey.key"), None, &[d.join("DE.toml")]),
        2
    );
    assert_eq!(verify_cmd(&keys, &[d.join("DE.toml")]), 0);
    assert_eq!(
        verify_cmd(&keys, &[d.join("DE.toml"), d.join("NL.toml")]),
        1
    );
    edit(
        &d.join("DE.toml"),
        "min_participants = 3",
        "min_participants = 2",
    );
    assert_eq!(verify_cmd(&keys, &[d.join("DE.toml")]), 1);
    assert_eq!(verify_cmd(&d.join("nowhere"), &[d.join("DE.toml")]), 2);
}
