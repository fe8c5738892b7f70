//! `treaty audit export` through the operator API and `treaty audit verify` offline: a job's
//! bundle verifies, also after the coordinator was killed and restarted, and a tampered copy
//! does not, the first bad entry named.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

fn treaty(args: &[&str]) -> Output {
    Command::new(TREATY).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn export(config: &Path, job: &str, out: &Path) -> Output {
    treaty(&[
        "audit",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--job",
        job,
        "--out",
        out.to_str().unwrap(),
    ])
}

fn audit_verify(dir: &Path, ca: &str, more: &[&str]) -> Output {
    let dir = dir.to_str().unwrap();
    treaty(&[&["audit", "verify", dir, "--ca", ca], more].concat())
}

fn node_evidence(config: &Path, out: &Path) -> Output {
    let (config, out) = (config.to_str().unwrap(), out.to_str().unwrap());
    treaty(&["node", "evidence", "--config", config, "--out", out])
}

fn model_verify(model: &Path, ca: &str, more: &[&str]) -> Output {
    let model = model.to_str().unwrap();
    treaty(&[&["model", "verify", "--model", model, "--ca", ca], more].concat())
}

#[tokio::test]
async fn a_jobs_bundle_verifies_across_a_coordinator_crash_and_tampering_is_named() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("FR-DGDDI", "FR")]);
    // A fixed port, so that the restarted coordinator is where the nodes look for it.
    let listen = free_loopback_address();
    let (mut coordinator, address) = fx.start_coordinator(&listen);
    let de_config = fx.node_config("DE-BKA", "DE", &address, 3);
    let _de = fx.start_node_with("DE-BKA", &de_config);
    let _fr = fx.start_node("FR-DGDDI", "FR", &address, 4);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "FR-DGDDI"]).await;
    // A third member never connects: every round names it.
    create_federation(&mut op, "pair", &["DE-BKA:DE", "FR-DGDDI:FR", "IT-GDF:IT"]).await;
    let job = run_training(&mut op, "pair", 2, 2).await;
    for round in &job.rounds {
        let absent: Vec<(&str, &str)> = round
            .excluded
            .iter()
            .map(|e| (e.agency.as_str(), e.reason_code.as_str()))
            .collect();
        assert_eq!(
            absent,
            [("IT-GDF", "NOT_CONNECTED")],
            "round {}",
            round.round
        );
    }
    let config = fx.operator_config(&address);

    let first = fx.path("bundle-1");
    let out = export(&config, &job.job_id, &first);
    assert!(out.status.success(), "{}", text(&out));
    let ca = fx.pki.ca_cert();
    let ca = ca.to_str().unwrap();
    let out = audit_verify(&first, ca, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("verified: job {}", job.job_id)),
        "{said}"
    );
    // The bundle holds the job's creation, its rounds and the export itself, and its decisions.
    let entries: Vec<String> = std::fs::read_dir(first.join("entries"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let has = |action: &str| {
        entries
            .iter()
            .any(|e| e.contains(&format!("\"action\":\"{action}\"")))
    };
    for action in [
        "federation.created",
        "job.created",
        "round.completed",
        "audit.exported",
    ] {
        assert!(has(action), "no {action} in {entries:?}");
    }
    // Each round's record names the absent member and why.
    assert!(
        entries.iter().any(
            |e| e.contains("round.started") && e.contains("not invited: IT-GDF (NOT_CONNECTED")
        ),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e.contains("round.completed")
            && e.contains("reasons: IT-GDF: NOT_CONNECTED: a member of the federation")),
        "{entries:?}"
    );
    // A decision for each round (the statistics round, 2 rounds, the final evaluation).
    assert_eq!(
        std::fs::read_dir(first.join("decisions")).unwrap().count(),
        4
    );
    // The same bundle checked with bash, sha256sum and openssl alone.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/verify-audit-bundle.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&first)
        .arg(ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // The German node's own evidence, exported from the running node, agrees with the
    // coordinator's bundle: its receipts are in the bundle's results records, and every
    // result the bundle records from it is one it sent.
    let evidence = fx.path("evidence-DE");
    let out = node_evidence(&de_config, &evidence);
    assert!(out.status.success(), "{}", text(&out));
    let out = audit_verify(&first, ca, &["--node", evidence.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // Every result the coordinator took in carries its agency's signature of what it sent,
    // checked: both agencies, the statistics round, two rounds and the final evaluation.
    assert!(
        text(&out).contains("8 results taken in, 8 of them signed by the agency that sent it"),
        "{}",
        text(&out)
    );
    // The statistics round, two rounds and the final evaluation: four tasks, four receipts,
    // four results.
    assert!(
        text(&out).contains(
            "treaty://agency/DE/DE-BKA agrees: 4 task(s) of the job, 4 signed receipt(s), 4 result(s)"
        ),
        "{}",
        text(&out)
    );
    // A node's evidence rewritten to say it sent another result, its chain made whole
    // again: the cross-check names the task.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(evidence.join("evidence.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut forged = String::new();
    let mut prev = "0".repeat(64);
    let mut changed = None;
    for mut link in lines {
        let record = &mut link["record"];
        if changed.is_none() && record["kind"] == "task" && record["sent_sha256"].is_string() {
            record["sent_sha256"] = serde_json::json!("1".repeat(64));
            changed = Some(record["task_id"].as_str().unwrap().to_owned());
        }
        link["prev"] = serde_json::json!(prev);
        let line = link.to_string();
        prev = treaty_proto::hex::sha256_hex(line.as_bytes());
        forged.push_str(&line);
        forged.push('\n');
    }
    let forged_dir = fx.path("evidence-forged");
    std::fs::create_dir_all(&forged_dir).unwrap();
    std::fs::copy(evidence.join("node.json"), forged_dir.join("node.json")).unwrap();
    std::fs::write(forged_dir.join("evidence.jsonl"), forged).unwrap();
    let out = audit_verify(&first, ca, &["--node", forged_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let task = changed.unwrap();
    assert!(
        text(&out).contains(&format!("task `{task}`")) && text(&out).contains("disagrees"),
        "{}",
        text(&out)
    );

    // A tampered copy: one entry's detail changed.
    let tampered = fx.path("tampered");
    std::fs::create_dir_all(tampered.join("entries")).unwrap();
    for dir in ["", "entries", "decisions", "texts", "results"] {
        std::fs::create_dir_all(tampered.join(dir)).unwrap();
        for e in std::fs::read_dir(first.join(dir)).unwrap().flatten() {
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), tampered.join(dir).join(e.file_name())).unwrap();
            }
        }
    }
    let victim = std::fs::read_dir(tampered.join("entries"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains("round.completed")
        })
        .unwrap();
    let seq = victim.file_stem().unwrap().to_string_lossy().into_owned();
    let line = std::fs::read_to_string(&victim).unwrap();
    std::fs::write(&victim, line.replacen("contributor", "contributer", 1)).unwrap();
    let out = audit_verify(&tampered, ca, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("audit entry {seq}: the entry was altered")),
        "{}",
        text(&out)
    );

    // The model comes with its provenance, signed by the coordinator: it verifies, names the
    // contributors of each round and the absent member, and a changed weight or manifest fails.
    let model = fx.path("model.json");
    let out = treaty(&[
        "model",
        "get",
        "--config",
        config.to_str().unwrap(),
        "--job",
        &job.job_id,
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = model_verify(&model, ca, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("round 2: DE-BKA, FR-DGDDI; excluded: IT-GDF NOT_CONNECTED"),
        "{said}"
    );
    assert!(said.contains("statistics: DE-BKA, FR-DGDDI"), "{said}");
    // Which build signed it: the commit this test's checkout is at.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(head) = head {
        assert!(said.contains(&format!("(commit {head}, ")), "{said}");
    }
    // Each agency's spending as its node reported it: DE took part in this job alone, so what
    // this job spent is all it spent then; and less than its ledger holds now (the final
    // evaluation came after the model's last round).
    let line = said
        .lines()
        .find(|l| l.contains("DE-BKA spent epsilon"))
        .unwrap_or_else(|| panic!("{said}"));
    let figures: Vec<f64> = line
        .split([' ', '('])
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(figures.len(), 2, "{line}");
    assert!(figures[0] > 0.0 && figures[0] == figures[1], "{line}");
    let ledger = treaty_json(&[
        "node",
        "ledger",
        "--config",
        de_config.to_str().unwrap(),
        "--json",
    ]);
    let now = ledger["spent"]["epsilon"].as_f64().unwrap();
    assert!(figures[0] < now, "{line}: the ledger holds {now}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    let tamper = |name: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let mut changed = file.clone();
        change(&mut changed);
        let path = fx.path(name);
        std::fs::write(&path, changed.to_string()).unwrap();
        let out = model_verify(&path, ca, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        text(&out)
    };
    let said = tamper("weight.json", &|f| {
        let v = f["tensors"][0]["values"][0].as_f64().unwrap();
        f["tensors"][0]["values"][0] = serde_json::json!(v + 1e-9);
    });
    assert!(said.contains("the weights were changed"), "{said}");
    let said = tamper("manifest.json", &|f| {
        let m = f["provenance"]["manifest"]
            .as_str()
            .unwrap()
            .replace("FR-DGDDI", "FR-DOUANE");
        f["provenance"]["manifest"] = serde_json::json!(m);
    });
    assert!(said.contains("signature"), "{said}");
    // Explaining a score says where the model comes from, beside the score.
    let data = fx.path("records.csv");
    std::fs::write(&data, "x1,x2,seized\n0.5,-1.0,0\n").unwrap();
    let out = treaty(&[
        "model",
        "explain",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--ca",
        ca,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(": provenance verified"), "{said}");
    assert!(said.contains("record 1 (line 2): p = "), "{said}");
    assert!(said.contains(", provenance verified]"), "{said}");

    // The coordinator dies without warning and comes back: its log still verifies at its
    // start, and a second export — the first export now on record — verifies too.
    coordinator.signal(nix::sys::signal::Signal::SIGKILL);
    coordinator.wait_for_exit(Duration::from_secs(5)).unwrap();
    drop(coordinator);
    let (_coordinator, address) = fx.start_coordinator(&listen);
    let config = fx.operator_config(&address);
    let second = fx.path("bundle-2");
    let out = export(&config, &job.job_id, &second);
    assert!(out.status.success(), "{}", text(&out));
    let links = |dir: &Path| std::fs::read_to_string(dir.join("links.jsonl")).unwrap();
    assert!(
        links(&second).starts_with(&links(&first)),
        "the log was rewritten"
    );
    let exports = std::fs::read_dir(second.join("entries"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .contains("audit.exported")
        })
        .count();
    assert_eq!(exports, 2);
    // The coordinator's certificate revoked: against the federation's revocation list, neither
    // the bundle nor the model's provenance verifies any more (without it they still do).
    let crl = revoke_the_coordinator(&fx);
    let crl = crl.to_str().unwrap();
    let out = audit_verify(&second, ca, &["--crl", crl]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is revoked"), "{}", text(&out));
    let out = model_verify(&model, ca, &["--crl", crl]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = Command::new("bash")
        .arg(&script)
        .arg(&second)
        .arg(ca)
        .arg(crl)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("revoked"), "{}", text(&out));
    let out = audit_verify(&second, ca, &[]);
    assert!(out.status.success(), "{}", text(&out));

    // Exporting into a directory that holds something is refused as unusable input.
    let out = export(&config, &job.job_id, &first);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// kill -9 of a node while it works (its ledger, its evidence log, its uploads): after each
/// restart its evidence log opens (the chain whole), nothing it recorded is lost, and its
/// evidence still agrees with the coordinator's bundle — what it sent is in its log before it
/// leaves, so no result at the coordinator is missing from it.
#[tokio::test]
async fn a_node_killed_during_its_appends_keeps_whole_evidence_that_agrees_with_the_bundle() {
    use tokio_stream::StreamExt;

    let fx = Fixture::new(&[("DE-BKA", "DE"), ("FR-DGDDI", "FR")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let de_config = fx.node_config("DE-BKA", "DE", &address, 5);
    let mut de = fx.start_node_with("DE-BKA", &de_config);
    let _fr = fx.start_node("FR-DGDDI", "FR", &address, 6);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "FR-DGDDI"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "FR-DGDDI:FR"]).await;
    // A round whose agency was killed does not wait long for it.
    let job = start_training(&mut op, "pair", training_spec(30), 1, 2_000).await;
    let mut events = events_of(&mut op, &job.job_id).await;
    // Killed as soon as it has sent its result of rounds 3 and 12 (its appends of the next
    // steps under way), and started again.
    let mut kills = 0;
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        let sent = |r: u32| event.message == "DE-BKA sent its result" && event.round == r;
        if sent(3) || sent(12) {
            de.signal(nix::sys::signal::Signal::SIGKILL);
            de.wait_for_exit(Duration::from_secs(10)).unwrap();
            de = fx.start_node_with("DE-BKA", &de_config);
            kills += 1;
        }
    }
    assert_eq!(kills, 2);
    let job = succeeded(watch_to_end(&mut op, &job.job_id).await);
    // DE took part again after each restart.
    let with_de = job
        .rounds
        .iter()
        .filter(|r| r.contributors.iter().any(|c| c == "DE-BKA"))
        .count();
    assert!(with_de >= 20, "{with_de} of 30 rounds");

    let config = fx.operator_config(&address);
    let bundle = fx.path("bundle-kill");
    let out = export(&config, &job.job_id, &bundle);
    assert!(out.status.success(), "{}", text(&out));
    // The node's evidence, from the running node, and again from its database once stopped.
    let ca = fx.pki.ca_cert();
    let ca = ca.to_str().unwrap();
    for (name, stop) in [("evidence-running", false), ("evidence-stopped", true)] {
        if stop {
            de.signal(nix::sys::signal::Signal::SIGKILL);
            de.wait_for_exit(Duration::from_secs(10)).unwrap();
        }
        let evidence = fx.path(name);
        let out = node_evidence(&de_config, &evidence);
        assert!(out.status.success(), "{}", text(&out));
        let out = audit_verify(&bundle, ca, &["--node", evidence.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("DE-BKA agrees"), "{}", text(&out));
        // Every result the bundle holds from DE is one its log shows it sent: at least one a
        // round it contributed to.
        let results: usize = text(&out)
            .split(" result(s) the bundle records")
            .next()
            .and_then(|s| s.rsplit(", ").next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(results >= with_de, "{}", text(&out));
    }
}

/// A hostile agency that signs a statement of another result than it sends, or signs as
/// another agency: the result is refused on arrival, named; one signed right is taken in and
/// its signature travels in the bundle.
#[tokio::test]
async fn an_agency_signs_what_it_sends_and_cannot_sign_something_else() {
    use treaty_proto::Identity;
    use treaty_proto::receipt::Sent;
    use treaty_proto::tls::KeySigner;
    use treaty_proto::v1::{QueryKind, QuerySpec};

    use crate::hostile_agency;

    let fx = Fixture::new(&[("DE-BKA", "DE"), ("PL-POLICJA", "PL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 7);
    let pl = Identity::agency("PL", "PL-POLICJA").unwrap();
    let mut client = hostile_agency::client(&address, &fx.files(&pl)).await;
    let mut hostile = hostile_agency::open(&mut client, hostile_agency::hello())
        .await
        .unwrap();
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "PL-POLICJA"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "PL-POLICJA:PL"]).await;
    let own = KeySigner::load(&fx.files(&pl)).unwrap();
    let other = KeySigner::load(&fx.files(&Identity::agency("DE", "DE-BKA").unwrap())).unwrap();
    let count = QuerySpec {
        kind: QueryKind::Count as i32,
        epsilon: 1.0,
        ..Default::default()
    };
    let statement = |task: &str, sha: &str, signer: &KeySigner, agency: &str| {
        Sent {
            agency: agency.into(),
            task_id: task.into(),
            result_sha256: sha.into(),
        }
        .signed(signer)
        .unwrap()
    };
    // Three queries: another result's hash; DE's key signing as DE for PL's upload; right.
    let mut refusals = Vec::new();
    for attempt in 0..3 {
        let job = start_query(&mut op, "pair", count.clone(), 1).await;
        let task = hostile
            .next_task(Duration::from_secs(20))
            .await
            .expect("no task");
        let id = task.task_id.clone();
        let sent = hostile_agency::submit_with(
            &mut client,
            &id,
            vec![400.0],
            &[("laplace_scale", 1.0)],
            |sha| {
                Some(match attempt {
                    0 => statement(&id, &"0".repeat(64), &own, "treaty://agency/PL/PL-POLICJA"),
                    1 => statement(&id, sha, &other, "treaty://agency/DE/DE-BKA"),
                    _ => statement(&id, sha, &own, "treaty://agency/PL/PL-POLICJA"),
                })
            },
        )
        .await;
        refusals.push(sent.err().map(|s| s.message().to_owned()));
        let job = succeeded(watch_to_end(&mut op, &job.job_id).await);
        let took_pl = job.rounds[0].contributors.iter().any(|c| c == "PL-POLICJA");
        assert_eq!(took_pl, attempt == 2, "attempt {attempt}: {refusals:?}");
        if attempt == 2 {
            // Its bundle carries PL's signature, checked again offline.
            let bundle = fx.path("bundle-signed");
            let config = fx.operator_config(&address);
            let out = export(&config, &job.job_id, &bundle);
            assert!(out.status.success(), "{}", text(&out));
            let ca = fx.pki.ca_cert();
            let out = audit_verify(&bundle, ca.to_str().unwrap(), &[]);
            assert!(
                text(&out).contains("2 results taken in, 2 of them signed"),
                "{}",
                text(&out)
            );
        }
    }
    let said = |i: usize| refusals[i].clone().unwrap_or_default();
    assert!(
        said(0).contains("its signed statement names"),
        "{}",
        said(0)
    );
    assert!(said(1).contains("signed statement"), "{}", said(1));
    assert!(refusals[2].is_none(), "{refusals:?}");
}
