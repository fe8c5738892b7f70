//! The privacy ledger under damage to its files, end to end: read while its node runs, it shows
//! what its database holds; a node killed with SIGKILL whose
//! sled file then loses its tail does not start and `treaty node ledger` says what was lost;
//! restored from a copy, it works again. A ledger damaged under a running node refuses every task
//! and tells the coordinator no more than that.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use treaty_node::DAMAGED;

use crate::common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        let kind = item.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&item.path(), &target);
        } else if kind.is_file() {
            // The node's control socket is no part of a backup.
            std::fs::copy(item.path(), target).unwrap();
        }
    }
}

/// `treaty node ledger --json` on a node's configuration: whether it succeeded, its standard
/// output as JSON, its standard error.
fn show_ledger(config: &Path) -> (bool, serde_json::Value, String) {
    let out = Command::new(TREATY)
        .args(["node", "ledger", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}; {stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), json, stderr)
}

/// A node configuration pointing at `state` instead of the agency's own state directory.
fn config_with_state(fx: &Fixture, config: &Path, state: &Path) -> std::path::PathBuf {
    let mut node = treaty_node::NodeConfig::load(config).unwrap();
    node.state_dir = state.to_owned();
    fx.site
        .write_config("node-DE-BKA-reference.toml", &node)
        .unwrap()
}

fn rounds_with(job: &treaty_proto::v1::Job, agency: &str) -> usize {
    job.rounds
        .iter()
        .filter(|r| r.contributors.iter().any(|a| a == agency))
        .count()
}

#[tokio::test]
async fn a_crashed_node_whose_ledger_lost_its_tail_releases_nothing_until_restored() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let de_config = fx.node_config("DE-BKA", "DE", &address, 1);
    let mut de = fx.start_node_with("DE-BKA", &de_config);
    let _nl = fx.start_node("NL-POLITIE", "NL", &address, 2);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "NL-POLITIE:NL"]).await;
    let job = run_training(&mut op, "pair", 3, 2).await;
    assert!(
        rounds_with(&job, "DE-BKA") == job.rounds.len() && job.rounds.len() >= 3,
        "{:#?}",
        job.rounds
    );

    // The operator reads the running node's ledger: from the copy the node keeps, checked
    // against the anchor, without stopping it.
    let (ok, running, stderr) = show_ledger(&de_config);
    assert!(ok, "{stderr}");
    assert_eq!(running["source"], "running_node", "{running}");

    // A crash, then the loss of the end of sled's file. Before the loss, two copies of the crashed
    // state: a backup that stays untouched, and a reference read to know what the ledger held.
    de.signal(Signal::SIGKILL);
    de.wait_for_exit(Duration::from_secs(10)).unwrap();
    let state = fx.path("node-DE-BKA-db");
    let backup = fx.path("node-DE-BKA-db.backup");
    let reference = fx.path("node-DE-BKA-db.reference");
    copy_dir(&state, &backup);
    copy_dir(&state, &reference);
    let (ok, held, stderr) = show_ledger(&config_with_state(&fx, &de_config, &reference));
    assert!(ok, "{stderr}");
    // What the running node showed is what its database held.
    assert_eq!(held["source"], "database", "{held}");
    assert_eq!(held["entries"], running["entries"]);
    assert_eq!(held["spent"], running["spent"]);
    let held = held["entries"].as_array().unwrap().len();
    // Every training round and the evaluation of each, at least, were released by DE.
    assert!(held >= 3, "{held}");
    // The file is cut inside the last ledger entry stored (the node's evidence log, stored
    // after it in the same file, goes with it).
    let bytes = std::fs::read(state.join("db")).unwrap();
    let last_entry = bytes.windows(9).rposition(|w| w == b"\"entry\":{").unwrap();
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(state.join("db"))
        .unwrap();
    db.set_len(last_entry as u64 + 20).unwrap();
    drop(db);

    // The operator's view: the damage, named, and a failure.
    let (ok, shown, stderr) = show_ledger(&de_config);
    assert!(!ok, "{shown}");
    let damaged = shown["damaged"].as_str().unwrap();
    assert!(
        damaged.contains(&format!(
            "entries but its anchor `ledger.head` records {held} ending in"
        )) && damaged.contains("history was lost")
            && damaged.contains("this node releases nothing until then"),
        "{damaged}"
    );
    assert!(stderr.contains(damaged), "{stderr}");
    eprintln!("after the crash and the cut ({held} releases before): {damaged}");

    // The node does not start on it, and says why.
    let mut de = fx.start_node_with("DE-BKA", &de_config);
    let status = de.wait_for_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    assert!(
        de.log().contains("history was lost") && de.log().contains("releases nothing until then"),
        "{}",
        de.log()
    );
    drop(de);

    // Restored from the backup, it starts, takes part, and its ledger goes on from where it was.
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&backup, &state);
    let mut de = fx.start_node_with("DE-BKA", &de_config);
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    let job = run_training(&mut op, "pair", 2, 2).await;
    assert!(
        rounds_with(&job, "DE-BKA") == job.rounds.len() && job.rounds.len() >= 2,
        "{:#?}",
        job.rounds
    );
    de.signal(Signal::SIGTERM);
    de.wait_for_exit(Duration::from_secs(10)).unwrap();
    let (ok, after, stderr) = show_ledger(&de_config);
    assert!(ok, "{stderr}");
    assert!(
        after["entries"].as_array().unwrap().len() >= held + 2,
        "{after}"
    );
}

#[tokio::test]
async fn a_ledger_damaged_under_a_running_node_refuses_every_task() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let de = fx.start_node("DE-BKA", "DE", &address, 1);
    let _nl = fx.start_node("NL-POLITIE", "NL", &address, 2);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "NL-POLITIE:NL"]).await;
    let job = run_training(&mut op, "pair", 1, 2).await;
    assert_eq!(rounds_with(&job, "DE-BKA"), job.rounds.len());

    // The anchor goes missing while the node runs: the next release finds entries that nothing
    // vouches for.
    let state = fx.path("node-DE-BKA-db");
    std::fs::remove_file(state.join("ledger.head")).unwrap();
    let job = run_training(&mut op, "pair", 2, 1).await;
    assert_eq!(rounds_with(&job, "DE-BKA"), 0, "{:#?}", job.rounds);
    let refusals: Vec<_> = job
        .rounds
        .iter()
        .flat_map(|r| &r.excluded)
        .filter(|e| e.agency == "DE-BKA")
        .collect();
    assert!(!refusals.is_empty(), "{:#?}", job.rounds);
    for e in refusals {
        // The coordinator learns that the ledger is damaged, not how, nor where.
        assert_eq!(
            (e.reason_code.as_str(), e.node_code.as_str()),
            ("REFUSED", "LEDGER_ERROR"),
            "{e:?}"
        );
        assert!(e.message.contains(DAMAGED), "{e:?}");
        assert!(
            !e.message.contains(state.to_str().unwrap()) && !e.message.contains("entries"),
            "{e:?}"
        );
    }
    // The node's own log says what is wrong.
    assert!(
        de.log()
            .contains("entries but its anchor `ledger.head` is missing"),
        "{}",
        de.log()
    );
}
