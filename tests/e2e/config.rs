//! Bad configuration: the process exits non-zero with a message naming the problem.

use std::process::Command;

use crate::common::*;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(TREATY).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_config_file_is_named() {
    let (ok, err) = run(&["coordinator", "--config", "/nonexistent/coordinator.toml"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/coordinator.toml"), "{err}");
}

#[test]
fn an_unknown_key_is_named() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let config = fx.coordinator_config("127.0.0.1:0");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("shutdown_grace_secs", "shutdown_grace_sec");
    std::fs::write(&config, text).unwrap();
    let (ok, err) = run(&["coordinator", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("unknown field `shutdown_grace_sec`"), "{err}");
}

#[test]
fn a_missing_or_unreadable_key_is_named() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let config = fx.coordinator_config("127.0.0.1:0");
    let (_, key) = fx
        .pki
        .cert_and_key(&treaty_proto::Identity::coordinator("hub").unwrap());
    std::fs::write(&key, "not a key").unwrap();
    let (ok, err) = run(&["coordinator", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("coordinator.key") && err.contains("private key"),
        "{err}"
    );

    std::fs::remove_file(&key).unwrap();
    let (ok, err) = run(&["coordinator", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("`tls.key`") && err.contains("coordinator.key"),
        "{err}"
    );
}

#[test]
fn a_node_with_bad_settings_reports_them_all() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let config = fx.node_config("DE-BKA", "DE", "127.0.0.1:1", 1);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:1", "no-port")
        .replace("DE-BKA_train.csv", "missing_train.csv");
    std::fs::write(&config, text).unwrap();
    let (ok, err) = run(&["node", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("`coordinator.address` is `no-port`"), "{err}");
    assert!(err.contains("missing_train.csv"), "{err}");
}

#[test]
fn a_node_with_an_operator_certificate_is_refused() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let config = fx.node_config("DE-BKA", "DE", "127.0.0.1:1", 1);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("agency-DE-DE-BKA", "operator-op");
    std::fs::write(&config, text).unwrap();
    let (ok, err) = run(&["node", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("treaty://operator/op") && err.contains("not an agency"),
        "{err}"
    );
}

#[test]
fn bad_policy_settings_are_named_before_anything_runs() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    // A coordinator hosted in a country the registry does not know, with a broken registry
    // for the node: each process names its problem and does not start.
    let config = fx.coordinator_config("127.0.0.1:0");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("country = \"NL\"", "country = \"XX\"");
    std::fs::write(&config, text).unwrap();
    let (ok, err) = run(&["coordinator", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("`policy.country`: `XX` is not a country of registry test-1"),
        "{err}"
    );

    let node = fx.node_config("DE-BKA", "DE", "127.0.0.1:1", 1);
    std::fs::write(
        fx.node_policies("DE-BKA").join("registry.toml"),
        "countries = [\"DE\"\n",
    )
    .unwrap();
    let (ok, err) = run(&["node", "--config", node.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("`policy.registry`") && err.contains("registry.toml:"),
        "{err}"
    );
}
