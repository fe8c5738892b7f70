//! Sharing policies enforced end to end: five agencies of four countries where France's policy
//! denies Belgium; every round admits the largest lawful set, excluded agencies are told why,
//! decisions cite each policy's version and SHA-256; policies changed mid-job apply from the
//! next round without a restart, and a node whose own country's policy stops allowing the
//! purpose refuses by itself, whatever the coordinator decided.

use std::process::Command;
use std::time::Duration;

use tokio_stream::StreamExt;
use treaty_proto::v1::{
    CreateJobRequest, GetJobRequest, JobEventKind, JobSpec, JobState, RoundSummary,
    WatchJobRequest, job_spec,
};

use crate::common::*;

const AGENCIES: [(&str, &str); 5] = [
    ("DE-BKA", "DE"),
    ("DE-ZOLL", "DE"),
    ("NL-POLITIE", "NL"),
    ("FR-DOUANE", "FR"),
    ("BE-DOUANE", "BE"),
];

fn policy(country: &str, version: &str, purposes: &str, extra_rules: &str) -> String {
    format!(
        "schema_version = 1\n\n[policy]\ncountry = \"{country}\"\nversion = \"{version}\"\nvalid_from = 2025-01-01\nvalid_until = 2099-12-31\nlegal_basis = [\"Test Act\"]\n\n[coordinator]\nallowed_jurisdictions = [\"EU\"]\n\n[privacy]\nmax_epsilon_per_round = 1e31\nmax_epsilon_total = 1e33\nmax_delta = 1e-3\n\n[[rule]]\nid = \"{country}-EU\"\neffect = \"allow\"\npurposes = {purposes}\nrecipients = [\"EU\"]\nlegal_basis = \"Test Act s. 2\"\n{extra_rules}"
    )
}

/// SHA-256 by coreutils, independently of the code under test.
fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn decision(round: &RoundSummary) -> serde_json::Value {
    serde_json::from_str(&round.policy_decision).unwrap()
}

fn excluded<'a>(round: &'a RoundSummary, agency: &str) -> Option<&'a treaty_proto::v1::Exclusion> {
    round.excluded.iter().find(|e| e.agency == agency)
}

#[tokio::test]
async fn rounds_admit_the_largest_lawful_set_and_nodes_enforce_their_own_policy() {
    let fx = Fixture::new(&AGENCIES);
    let deny = "\n[[rule]]\nid = \"FR-DENY-BE\"\neffect = \"deny\"\nrecipients = [\"BE\"]\nlegal_basis = \"Accord bilatéral suspendu\"\n";
    fx.write_policy("FR", &policy("FR", "fr-1", "[\"narcotics\"]", deny));
    let fr_v1 = sha256sum(&fx.path("policies/FR.toml"));
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let nodes: Vec<Proc> = AGENCIES
        .iter()
        .enumerate()
        .map(|(i, (a, c))| fx.start_node(a, c, &address, i as u64 + 1))
        .collect();
    let mut op = fx.operator(&address).await;
    let ids: Vec<&str> = AGENCIES.iter().map(|(a, _)| *a).collect();
    wait_connected(&mut op, &ids).await;
    let members: Vec<String> = AGENCIES.iter().map(|(a, c)| format!("{a}:{c}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    create_federation(&mut op, "five", &members).await;

    let job = op
        .create_job(CreateJobRequest {
            federation: "five".into(),
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Training(training_spec(40))),
                min_participants: 3,
                round_timeout_ms: 20_000,
                join_timeout_ms: 20_000,
                sharing: Some(test_sharing()),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = op
        .watch_job(WatchJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut changed = false;
    let mut summaries = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        if event.kind() == JobEventKind::RoundCompleted && event.round > 0 {
            // The event carries its round's summary and the job's head, not every round again.
            assert!(event.job.as_ref().unwrap().rounds.is_empty());
            assert_eq!(event.job.as_ref().unwrap().rounds_completed, event.round);
            summaries.push(event.round_summary.clone().unwrap());
        }
        if !changed && event.round == 2 && event.kind() == JobEventKind::RoundCompleted {
            // Mid-job: the Netherlands' own copy of its policy stops allowing narcotics (the
            // coordinator's copy is left as it was), and France lifts its deny of Belgium.
            treaty_devkit::local::replace_file(
                &fx.node_policies("NL-POLITIE").join("NL.toml"),
                &policy("NL", "nl-2", "[\"firearms\"]", ""),
            )
            .unwrap();
            fx.write_policy("FR", &policy("FR", "fr-2", "[\"narcotics\"]", ""));
            changed = true;
        }
    }
    let job = op
        .get_job(GetJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, JobState::Succeeded as i32, "{}", job.message);
    assert!(changed);
    assert_eq!(
        summaries, job.rounds,
        "the events' summaries are the stored rounds"
    );
    let fr_v2 = sha256sum(&fx.path("policies/FR.toml"));
    assert_ne!(fr_v1, fr_v2);

    // Before the change: France's deny leaves Belgium out; the rest is the largest lawful set.
    let first = &job.rounds[0];
    assert_eq!(
        first.contributors,
        ["DE-BKA", "DE-ZOLL", "NL-POLITIE", "FR-DOUANE"]
    );
    let be = excluded(first, "BE-DOUANE").unwrap();
    assert_eq!(be.reason_code, "REJECTED_BY_PARTICIPANT");
    assert!(be.message.contains("FR-DENY-BE"), "{}", be.message);
    let d = decision(first);
    assert_eq!(
        d["decision"]["excluded"][0]["detail"]["rule_ids"],
        serde_json::json!(["FR-DENY-BE"])
    );
    assert_eq!(
        d["decision"]["policy_versions"]["FR"]["sha256"],
        fr_v1.as_str()
    );
    assert_eq!(d["decision"]["policy_versions"]["FR"]["version"], "fr-1");
    assert_eq!(d["decision"]["registry_version"], "test-1");
    // Belgium's node was told why.
    nodes[4].wait_for_log("REJECTED_BY_PARTICIPANT", Duration::from_secs(5));

    // After the change: from some round on, NL's node refuses by itself every round, naming
    // the reason code, although the coordinator admitted it; and Belgium is admitted under
    // France's new version, cited by its hash. Nothing needed a restart.
    let refused_from = job
        .rounds
        .iter()
        .position(|r| excluded(r, "NL-POLITIE").is_some())
        .expect("NL's node never refused");
    assert!(refused_from >= 2, "NL refused before the change");
    for r in &job.rounds[refused_from..] {
        let nl = excluded(r, "NL-POLITIE")
            .unwrap_or_else(|| panic!("round {}: NL took part again", r.round));
        assert_eq!(nl.node_code, "PURPOSE_NOT_ALLOWED", "{}", nl.message);
        assert!(
            decision(r)["decision"]["admitted"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "NL-POLITIE")
        );
    }
    let be_from = job
        .rounds
        .iter()
        .position(|r| r.contributors.iter().any(|c| c == "BE-DOUANE"))
        .expect("Belgium was never admitted after France's change");
    for r in &job.rounds[..be_from] {
        assert_eq!(
            decision(r)["decision"]["policy_versions"]["FR"]["sha256"],
            fr_v1.as_str()
        );
    }
    for r in &job.rounds[be_from..] {
        assert_eq!(
            decision(r)["decision"]["policy_versions"]["FR"]["sha256"],
            fr_v2.as_str()
        );
        assert!(
            r.contributors.iter().any(|c| c == "BE-DOUANE"),
            "round {}",
            r.round
        );
    }
    nodes[2].wait_for_log("PURPOSE_NOT_ALLOWED", Duration::from_secs(5));
}

#[tokio::test]
async fn a_broken_policy_keeps_its_country_out_and_the_job_says_why() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")]);
    // A typo in France's file: the engine fails closed for France only.
    fx.write_policy("FR", &open_policy("FR").replace("max_delta", "max_detla"));
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _nodes: Vec<Proc> = [("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")]
        .iter()
        .enumerate()
        .map(|(i, (a, c))| fx.start_node(a, c, &address, i as u64 + 1))
        .collect();
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE", "FR-DOUANE"]).await;
    create_federation(
        &mut op,
        "trio",
        &["DE-BKA:DE", "NL-POLITIE:NL", "FR-DOUANE:FR"],
    )
    .await;
    let job = run_training(&mut op, "trio", 2, 2).await;
    for r in &job.rounds {
        assert_eq!(r.contributors, ["DE-BKA", "NL-POLITIE"]);
        let fr = excluded(r, "FR-DOUANE").unwrap();
        assert_eq!(fr.reason_code, "POLICY_SCHEMA_ERROR");
        assert!(
            fr.message.contains("did you mean `max_delta`?"),
            "{}",
            fr.message
        );
    }
    // With France out and a job needing all three, the job fails and names the reason.
    let failed = try_job(&mut op, "trio", training_spec(1), 3).await;
    assert_eq!(failed.state, JobState::Failed as i32);
    assert!(
        failed.message.contains("POLICY_SCHEMA_ERROR"),
        "{}",
        failed.message
    );
}
