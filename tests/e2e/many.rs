//! `treaty node --many DIR` (hidden; what `treaty bench w3` hosts its agencies with): one
//! process runs the node of every configuration in a directory, each exactly as a node of its
//! own: its own certificate, session, ledger, policy files and data.

use std::process::Command;
use std::time::Duration;

use treaty_node::{Ledger, NodeConfig};
use treaty_proto::v1::ListAgenciesRequest;

use crate::common::*;

const HOSTED: [(&str, &str); 2] = [("DE-BKA", "DE"), ("NL-POLITIE", "NL")];

#[tokio::test]
async fn one_process_hosts_agencies_each_with_its_own_identity_session_and_ledger() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DGDDI", "FR")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let hosted = fx.path("hosted");
    std::fs::create_dir_all(&hosted).unwrap();
    let mut state_dirs = Vec::new();
    for (k, (agency, country)) in HOSTED.iter().enumerate() {
        let config = fx.node_config(agency, country, &address, k as u64 + 1);
        state_dirs.push(NodeConfig::load(&config).unwrap().state_dir);
        std::fs::copy(&config, hosted.join(format!("{agency}.toml"))).unwrap();
    }
    // France's node runs on its own, as usual, beside the host.
    let _fr = fx.start_node("FR-DGDDI", "FR", &address, 3);
    let mut host = Proc(
        fx.site
            .spawn(
                "the node host",
                &["node", "--many", &hosted.to_string_lossy()],
                "host",
            )
            .unwrap(),
    );
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE", "FR-DGDDI"]).await;
    // Each hosted agency holds a session of its own, under its certificate's country and id.
    let mut connected: Vec<(String, String)> = op
        .list_agencies(ListAgenciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agencies
        .into_iter()
        .map(|a| (a.agency, a.country))
        .collect();
    connected.sort();
    assert_eq!(
        connected,
        [("DE-BKA", "DE"), ("FR-DGDDI", "FR"), ("NL-POLITIE", "NL")]
            .map(|(a, c)| (a.to_owned(), c.to_owned()))
    );

    create_federation(
        &mut op,
        "trio",
        &["DE-BKA:DE", "NL-POLITIE:NL", "FR-DGDDI:FR"],
    )
    .await;
    let job = run_training(&mut op, "trio", 2, 3).await;
    assert_eq!(job.rounds.len(), 2);
    for round in &job.rounds {
        let mut contributors = round.contributors.clone();
        contributors.sort();
        assert_eq!(
            contributors,
            ["DE-BKA", "FR-DGDDI", "NL-POLITIE"],
            "{round:?}"
        );
    }

    // SIGTERM stops every hosted node, and the host exits cleanly.
    let status = host.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // Each hosted agency's own ledger records its own releases of every round (the statistics
    // round, both training rounds), and only its own.
    for ((agency, _), dir) in HOSTED.iter().zip(&state_dirs) {
        let entries = Ledger::open(dir, None).unwrap().entries().unwrap();
        let ours: Vec<_> = entries.iter().filter(|e| e.job_id == job.job_id).collect();
        for round in 0..=2 {
            assert!(
                ours.iter().any(|e| e.round == round),
                "{agency}: no release of round {round} in {entries:?}"
            );
        }
        assert!(
            ours.iter()
                .all(|e| e.task_id.ends_with(&format!("-{agency}"))),
            "{agency}: {ours:?}"
        );
    }
}

#[test]
fn a_host_without_configurations_or_with_an_unusable_one_exits_2_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = Command::new(TREATY)
            .args(["node", "--many"])
            .arg(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("holds no node configuration"), "{stderr}");
    std::fs::write(dir.path().join("broken.toml"), "state_dir = 3\n").unwrap();
    let (code, stderr) = run();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("broken.toml"), "{stderr}");
}
