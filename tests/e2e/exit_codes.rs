//! The exit-code contract of `treaty` (src/cli/mod.rs, README): 0 ok, 1 failure, 2 unusable
//! input, each with a message that names what is wrong.

use std::process::Command;

use crate::common::*;

/// Runs `treaty ARGS`; its exit status and standard error.
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let out = Command::new(TREATY).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unusable_input_exits_2_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not a model").unwrap();
    let garbage = garbage.to_str().unwrap();
    for (args, named) in [
        (vec!["node", "--config", missing], "missing.toml"),
        (vec!["node"], "--config"),
        (vec!["coordinator", "--config", missing], "missing.toml"),
        (vec!["node", "ledger", "--config", missing], "missing.toml"),
        (vec!["agencies", "--config", missing], "missing.toml"),
        (
            vec!["job", "show", "--config", missing, "--job", "j"],
            "missing.toml",
        ),
        (
            vec!["synth", "--out", missing, "--agencies", "0"],
            "--agencies",
        ),
        (
            vec!["pki", "issue", "--dir", missing, "--agency", "DE-BKA"],
            "DE-BKA",
        ),
        (
            vec![
                "privacy",
                "epsilon",
                "--sampling-rate",
                "2",
                "--noise-multiplier",
                "1",
                "--steps",
                "1",
            ],
            "--sampling-rate",
        ),
        (
            vec!["pki", "revoke", "--dir", missing, garbage],
            "missing.toml",
        ),
        (
            vec!["model", "explain", "--model", garbage, "--data", garbage],
            "garbage.json",
        ),
        (vec!["bench", "w1", "--data", missing], "missing.toml"),
        (
            vec!["bench", "run", "--only", "w9", "--results", missing],
            "w9",
        ),
        (
            vec!["bench", "report", "--readme", missing, missing],
            "missing.toml",
        ),
        // More rounds than the demo's budget can evaluate, refused before anything starts.
        (vec!["demo", "--rounds", "60"], "1..=40"),
        (vec!["no-such-command"], "no-such-command"),
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, 2, "treaty {args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "treaty {args:?} does not name `{named}`: {stderr}"
        );
    }
}

#[tokio::test]
async fn success_exits_0_failure_1_and_a_refused_request_2() {
    let fx = Fixture::new(&[]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let config = fx.operator_config(&address);
    let config = config.to_str().unwrap();

    let (code, stderr) = run(&["federation", "list", "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    // A job that does not exist: the request is unusable.
    let (code, stderr) = run(&["job", "show", "--config", config, "--job", "no-such-job"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no-such-job"), "{stderr}");

    // A coordinator that cannot be reached: a failure, not the operator's input.
    let unreachable = fx.site.operator_config("127.0.0.1:1");
    let path = fx
        .site
        .write_config("unreachable.toml", &unreachable)
        .unwrap();
    let (code, stderr) = run(&["agencies", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

#[test]
fn a_bad_coordinator_or_operator_key_exits_2() {
    let fx = Fixture::new(&[]);
    let garbage = fx.path("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();

    let mut coordinator = fx
        .site
        .coordinator_config("127.0.0.1:0".parse().unwrap(), "NL");
    coordinator.tls.key = garbage.clone();
    let path = fx
        .site
        .write_config("bad-coordinator.toml", &coordinator)
        .unwrap();
    let (code, stderr) = run(&["coordinator", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("garbage.key"), "{stderr}");

    let mut operator = fx.site.operator_config("127.0.0.1:1");
    operator.tls.key = garbage;
    let path = fx
        .site
        .write_config("bad-operator.toml", &operator)
        .unwrap();
    let (code, stderr) = run(&["agencies", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("garbage.key"), "{stderr}");
}
