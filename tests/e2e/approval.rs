//! Human approval at the agency: a node that requires its operator's approval keeps out of a
//! job (excluded `APPROVAL_PENDING`) until a person approves it with `treaty node approve`,
//! then contributes from the next round; a rejection keeps it out for good. Real processes,
//! real TLS, the node's real control socket.

use std::path::Path;
use std::process::Command;

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use treaty_devkit::local::write_toml;
use treaty_node::NodeConfig;
use treaty_proto::v1::operator_service_client::OperatorServiceClient;
use treaty_proto::v1::{Job, RoundSummary};

use crate::common::*;

const AGENCIES: [(&str, &str); 3] = [("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DGDDI", "FR")];

/// Starts a job of `rounds` training rounds needing `min` agencies; follows it until `until`
/// says an event is the one wanted, runs `then`, and follows it to its end.
async fn job_with(
    op: &mut OperatorServiceClient<Channel>,
    rounds: u32,
    min: u32,
    until: impl Fn(&str) -> bool,
    then: impl FnOnce(&str),
) -> Job {
    let job = start_training(op, "trio", training_spec(rounds), min, 20_000).await;
    let mut events = events_of(op, &job.job_id).await;
    let mut then = Some(then);
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        if until(&event.message)
            && let Some(then) = then.take()
        {
            then(&job.job_id);
        }
    }
    assert!(then.is_none(), "the awaited event never came");
    succeeded(watch_to_end(op, &job.job_id).await)
}

fn treaty(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(TREATY).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// FR-DGDDI's standing in each round of `job`, the statistics round first.
fn standings(job: &Job) -> Vec<String> {
    job.statistics
        .iter()
        .chain(&job.rounds)
        .map(standing)
        .collect()
}

/// The code FR-DGDDI's exclusion from `round` carries, or `CONTRIBUTED`.
fn standing(round: &RoundSummary) -> String {
    if round.contributors.iter().any(|c| c == "FR-DGDDI") {
        return "CONTRIBUTED".into();
    }
    round
        .excluded
        .iter()
        .find(|e| e.agency == "FR-DGDDI")
        .map(|e| e.reason_code.clone())
        .unwrap_or_else(|| format!("absent from {round:?}"))
}

/// `treaty node approve JOB` by `by`, naming the terms `treaty node pending` shows now.
fn approve_as_read(config: &str, job_id: &str, by: &str) -> (bool, String, String) {
    let pending = treaty_json(&["node", "pending", "--config", config, "--json"]);
    let read = pending[0]["terms_sha256"].as_str().unwrap().to_owned();
    treaty(&[
        "node", "approve", job_id, "--config", config, "--terms", &read, "--by", by,
    ])
}

fn requiring_approval(config: &Path) {
    let mut node = NodeConfig::load(config).unwrap();
    node.approval.required = true;
    write_toml(config, &node).unwrap();
}

#[tokio::test]
async fn a_node_waits_for_its_operators_approval_and_a_rejection_is_final() {
    let fx = Fixture::new(&AGENCIES);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let de_config = fx.node_config("DE-BKA", "DE", &address, 1);
    let _de = fx.start_node_with("DE-BKA", &de_config);
    let _nl = fx.start_node("NL-POLITIE", "NL", &address, 2);
    let fr_config = fx.node_config("FR-DGDDI", "FR", &address, 3);
    requiring_approval(&fr_config);
    let fr = fx.start_node_with("FR-DGDDI", &fr_config);
    let config = fr_config.to_str().unwrap().to_owned();
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE", "FR-DGDDI"]).await;
    create_federation(
        &mut op,
        "trio",
        &["DE-BKA:DE", "NL-POLITIE:NL", "FR-DGDDI:FR"],
    )
    .await;

    // Nothing waits yet; an approval of a job that never asked is refused, with status 1.
    let (ok, out, _) = treaty(&["node", "pending", "--config", &config]);
    assert!(ok && out.contains("no job waits"), "{out}");
    let (ok, _, err) = treaty(&["node", "approve", "job-x", "--config", &config, "--by", "A"]);
    assert!(!ok && err.contains("has not asked"), "{err}");

    // Job 1: the French node refuses until its operator approves, then contributes.
    let job = job_with(
        &mut op,
        12,
        2,
        |m| m.contains("FR-DGDDI refused the task: APPROVAL_PENDING"),
        |job_id| {
            let pending = treaty_json(&["node", "pending", "--config", &config, "--json"]);
            let first = &pending[0]["terms"];
            assert_eq!(first["job_id"], job_id, "{pending}");
            assert_eq!(first["purpose"], "narcotics");
            assert_eq!(first["kind"], "training");
            assert_eq!(first["rounds"], 12);
            assert_eq!(first["created_by"], "treaty://operator/op");
            // The terms the officer read: an approval names them.
            let read = pending[0]["terms_sha256"].as_str().unwrap()[..12].to_owned();
            let (ok, _, err) = treaty(&[
                "node",
                "approve",
                job_id,
                "--config",
                &config,
                "--by",
                "Officer Dupont",
            ]);
            assert!(
                !ok && err.contains("read `treaty node pending` again"),
                "{err}"
            );
            let (ok, out, err) = treaty(&[
                "node",
                "approve",
                job_id,
                "--config",
                &config,
                "--terms",
                &read,
                "--by",
                "Officer Dupont",
                "--note",
                "case 2026-17",
            ]);
            assert!(ok, "{err}");
            assert!(out.contains("approved by Officer Dupont"), "{out}");
        },
    )
    .await;
    let rounds = standings(&job);
    let first = rounds
        .iter()
        .position(|s| s == "CONTRIBUTED")
        .unwrap_or_else(|| panic!("FR-DGDDI never contributed: {rounds:?}"));
    assert!(
        first >= 1,
        "it contributed before it was approved: {rounds:?}"
    );
    assert!(
        rounds[..first].iter().all(|s| s == "APPROVAL_PENDING"),
        "{rounds:?}"
    );
    assert!(
        rounds[first..].iter().all(|s| s == "CONTRIBUTED"),
        "{rounds:?}"
    );
    // Approved, the job no longer waits.
    let (ok, out, _) = treaty(&["node", "pending", "--config", &config]);
    assert!(ok && out.contains("no job waits"), "{out}");

    // Job 2: rejected while pending; never asked again, never contributes.
    let job = job_with(
        &mut op,
        6,
        2,
        |m| m.contains("FR-DGDDI refused the task: APPROVAL_PENDING"),
        |job_id| {
            let (ok, _, err) = treaty(&[
                "node",
                "reject",
                job_id,
                "--config",
                &config,
                "--by",
                "Officer Dupont",
            ]);
            assert!(ok, "{err}");
            // Final: it cannot be approved afterwards.
            let (ok, _, err) = treaty(&[
                "node", "approve", job_id, "--config", &config, "--by", "Someone",
            ]);
            assert!(!ok && err.contains("final"), "{err}");
        },
    )
    .await;
    let rounds = standings(&job);
    assert!(!rounds.iter().any(|s| s == "CONTRIBUTED"), "{rounds:?}");
    let rejected = rounds
        .iter()
        .position(|s| s == "APPROVAL_REJECTED")
        .unwrap_or_else(|| panic!("no rejection: {rounds:?}"));
    assert!(
        rounds[rejected..].iter().all(|s| s == "APPROVAL_REJECTED"),
        "{rounds:?}"
    );
    // Job 3 needs all three agencies: it waits for the French approval instead of failing,
    // and every round has all three.
    let job = job_with(
        &mut op,
        3,
        3,
        |m| m.contains("waits for the approval of the job by the operators of FR-DGDDI"),
        |job_id| {
            let (ok, _, err) = approve_as_read(&config, job_id, "Officer Dupont");
            assert!(ok, "{err}");
        },
    )
    .await;
    let rounds = standings(&job);
    assert_eq!(rounds, vec!["CONTRIBUTED"; 4]);
    // While the statistics round waited, the German node's result stayed: its ledger holds one
    // release a round of the job (statistics, 3 rounds, the final evaluation), none twice.
    let ledger = treaty_json(&[
        "node",
        "ledger",
        "--config",
        de_config.to_str().unwrap(),
        "--json",
    ]);
    let mut released: Vec<u64> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["job_id"] == job.job_id.as_str())
        .map(|e| e["round"].as_u64().unwrap())
        .collect();
    released.sort();
    assert_eq!(released, [0, 1, 2, 3, 4]);

    // The node's log names the person and the account for both decisions.
    let log = fr.log();
    assert!(
        log.contains("job approved by the agency's operator"),
        "{log}"
    );
    assert!(
        log.contains("job rejected by the agency's operator"),
        "{log}"
    );
}
