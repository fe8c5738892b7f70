//! A malicious agency against the coordinator (issue #9): an impostor of another country's
//! agency id, a Hello built to break the operator API, and floods meant to fill the log. Each
//! hostile agency is a tonic client with a real certificate of the federation's CA, speaking
//! the real wire protocol over real mutual TLS.

use std::collections::HashSet;
use std::time::Duration;

use tonic::Code;
use treaty_coordinator::{MAX_COLUMNS, MAX_HELLO_BYTES, MAX_TASK_ID_BYTES, check_hello};
use treaty_proto::Identity;
use treaty_proto::v1::{
    DatasetSummary, DownloadModelRequest, Hello, ListAgenciesRequest, ListFederationsRequest,
    ListJobsRequest, NodeMessage, TaskRefused, coordinator_message, node_message,
};

use crate::common::*;
use crate::hostile_agency::{self, Session};

async fn connected(
    op: &mut treaty_proto::v1::operator_service_client::OperatorServiceClient<
        tonic::transport::Channel,
    >,
) -> Vec<(String, String)> {
    op.list_agencies(ListAgenciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agencies
        .into_iter()
        .map(|a| (a.agency, a.country))
        .collect()
}

#[tokio::test]
async fn an_agency_id_under_another_country_is_another_agency() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 21);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA"]).await;
    create_federation(&mut op, "solo", &["DE-BKA:DE"]).await;
    let first = run_training(&mut op, "solo", 1, 1).await;

    // A real certificate of the federation's CA, for `DE-BKA` in the Netherlands.
    let impostor = Identity::agency("NL", "DE-BKA").unwrap();
    let files = hostile_agency::issue(&fx, &impostor, "impostor");
    let mut client = hostile_agency::client(&address, &files).await;

    // It cannot download DE-BKA's federation model.
    let denied = client
        .download_model(DownloadModelRequest {
            job_id: first.job_id.clone(),
            model_version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("treaty://agency/NL/DE-BKA"),
        "{}",
        denied.message()
    );

    // Its session is its own: DE-BKA's stays, and both are listed with their countries.
    let mut session = hostile_agency::open(&mut client, hostile_agency::hello())
        .await
        .unwrap();
    match session
        .next(Duration::from_secs(5))
        .await
        .and_then(|m| m.kind)
    {
        Some(coordinator_message::Kind::Welcome(w)) => {
            assert_eq!(w.identity, "treaty://agency/NL/DE-BKA")
        }
        other => panic!("no Welcome: {other:?}"),
    }
    let mut listed = connected(&mut op).await;
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("DE-BKA".to_owned(), "DE".to_owned()),
            ("DE-BKA".to_owned(), "NL".to_owned())
        ]
    );

    // It is not a member: the next job's round goes to DE-BKA of Germany alone, and the
    // impostor's session is sent no task.
    let second = run_training(&mut op, "solo", 1, 1).await;
    assert_eq!(second.rounds[0].invited, vec!["DE-BKA".to_owned()]);
    assert_eq!(second.rounds[0].contributors, vec!["DE-BKA".to_owned()]);
    assert!(second.rounds[0].excluded.is_empty(), "{second:?}");
    assert!(
        session
            .next_task(Duration::from_millis(300))
            .await
            .is_none(),
        "the impostor was given a task"
    );
    // Germany's DE-BKA is still connected, through all of it.
    assert!(
        connected(&mut op)
            .await
            .contains(&("DE-BKA".into(), "DE".into()))
    );
    drop(session);

    // Jobs and federations page too: one job a page, newest first.
    let mut token = String::new();
    let mut jobs = Vec::new();
    loop {
        let page = op
            .list_jobs(ListJobsRequest {
                page_size: 1,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 1);
        jobs.extend(page.jobs.into_iter().map(|j| j.job_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(jobs, vec![second.job_id.clone(), first.job_id.clone()]);
    create_federation(&mut op, "another", &["DE-BKA:DE"]).await;
    let page = op
        .list_federations(ListFederationsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.federations[0].name, "another");
    assert_eq!(page.next_page_token, "another");
    let config = fx.operator_config(&address);
    let out = std::process::Command::new(TREATY)
        .args(["federation", "list", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("another\t")
            && text.contains("\nsolo\tpurpose narcotics\tmembers DE-BKA:DE"),
        "{text}"
    );
}

/// A Hello as large as the bounds allow: data sets of `MAX_COLUMNS` columns of 120-byte names,
/// as many as fit in `MAX_HELLO_BYTES`.
fn maximal_hello() -> Hello {
    let mut hello = hostile_agency::hello();
    let column = |d: usize, i: usize| format!("{d:02}-{i:04}-{}", "c".repeat(112));
    'fill: for d in 0.. {
        hello.datasets.push(DatasetSummary {
            name: format!("{d:02}{}", "n".repeat(120)),
            columns: vec![],
        });
        for i in 0..MAX_COLUMNS {
            hello.datasets[d].columns.push(column(d, i));
            if check_hello(&hello).is_err() {
                hello.datasets[d].columns.pop();
                break 'fill;
            }
        }
    }
    hello
}

#[tokio::test]
async fn an_oversize_hello_is_refused_and_many_maximal_ones_page() {
    // Forty agencies of eight countries, to fill the operator's view.
    let countries = ["CA", "CB", "CC", "CD", "CE", "CF", "CG", "CH"];
    let agencies: Vec<(String, String)> = (0..40)
        .map(|i| (format!("AG-{i:02}"), countries[i % 8].to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = agencies
        .iter()
        .map(|(a, c)| (a.as_str(), c.as_str()))
        .collect();
    let fx = Fixture::new(&refs);
    let (coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let mut op = fx.operator(&address).await;
    let files = |i: usize| fx.files(&Identity::agency(&agencies[i].1, &agencies[i].0).unwrap());

    // One data-set name of 8 MB, within the transport's 8 MiB: refused, naming field and limit.
    let mut client = hostile_agency::client(&address, &files(0)).await;
    let mut hello = hostile_agency::hello();
    hello.datasets.push(DatasetSummary {
        name: "x".repeat(8_000_000),
        columns: vec![],
    });
    let refused = hostile_agency::open(&mut client, hello)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("`datasets[0].name` has 8000000 bytes, above the limit of 128"),
        "{}",
        refused.message()
    );
    assert!(connected(&mut op).await.is_empty());
    coordinator.wait_for_log("Hello refused", Duration::from_secs(5));
    // Logged under its identity, and not whole.
    assert!(coordinator.log().contains("treaty://agency/CA/AG-00"));
    assert!(
        coordinator.log().len() < 64 << 10,
        "{}",
        coordinator.log().len()
    );

    // Forty agencies with Hellos at the bounds: 40 x 256 KiB is more than one message can hold,
    // so an unpaged list would fail; paged, every agency is listed once.
    let hello = maximal_hello();
    assert!(check_hello(&hello).is_ok());
    assert!(
        hello
            .datasets
            .iter()
            .map(|d| d.columns.len())
            .sum::<usize>()
            > 1_500
    );
    let mut sessions: Vec<Session> = Vec::new();
    for i in 0..agencies.len() {
        let mut client = hostile_agency::client(&address, &files(i)).await;
        sessions.push(
            hostile_agency::open(&mut client, hello.clone())
                .await
                .unwrap(),
        );
    }
    let total_bytes = agencies.len() * MAX_HELLO_BYTES;
    assert!(total_bytes > treaty_proto::MAX_MESSAGE_BYTES);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut seen, mut pages);
    loop {
        seen = Vec::new();
        pages = 0;
        let mut token = String::new();
        loop {
            let page = op
                .list_agencies(ListAgenciesRequest {
                    page_size: 0,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            for a in &page.agencies {
                assert_eq!(a.datasets, hello.datasets);
                seen.push(format!("{}:{}", a.agency, a.country));
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        if seen.len() == agencies.len() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        (seen.len(), unique.len()),
        (agencies.len(), agencies.len()),
        "{seen:?}"
    );
    // 4 MiB pages of 256 KiB entries: 15 or 16 entries a page.
    assert!(pages >= 3, "{pages} page(s)");

    // `treaty agencies` follows the pages too.
    let config = fx.operator_config(&address);
    let out = std::process::Command::new(TREATY)
        .args(["agencies", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), agencies.len(), "{text}");
    assert!(text.contains("AG-39\tCH\tnode hostile-1"), "{text}");
    drop(sessions);
}

// Multi-threaded: the log is awaited with blocking sleeps while the client's connection still
// has megabytes to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agency_does_not_fill_the_log() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let nl = fx.files(&Identity::agency("NL", "NL-POLITIE").unwrap());
    let mut client = hostile_agency::client(&address, &nl).await;
    let before = coordinator.log().len();

    // 10,000 empty messages on a session.
    let session = hostile_agency::open(&mut client, hostile_agency::hello())
        .await
        .unwrap();
    for _ in 0..10_000 {
        let send = session.outbox.send(NodeMessage { kind: None });
        // Once the coordinator closes the session, nothing takes what is sent.
        if !matches!(
            tokio::time::timeout(Duration::from_secs(2), send).await,
            Ok(Ok(()))
        ) {
            break;
        }
    }
    coordinator.wait_for_log(
        "session closed: too many unusable messages",
        Duration::from_secs(20),
    );
    coordinator.wait_for_log(
        "similar warnings from treaty://agency/NL/NL-POLITIE",
        Duration::from_secs(20),
    );
    drop(session);

    // A refusal with a 1 MiB message, another whose 1 MiB is its task id, and one for a task
    // id within the bound that names no open task (logged, cut to 200 characters). From the
    // other agency: NL-POLITIE's allowance of warnings for this minute is spent, reconnecting
    // or not.
    let de = fx.files(&Identity::agency("DE", "DE-BKA").unwrap());
    let mut de_client = hostile_agency::client(&address, &de).await;
    let session = hostile_agency::open(&mut de_client, hostile_agency::hello())
        .await
        .unwrap();
    for (task_id, message) in [
        ("job-000001-r1-NL-POLITIE".to_owned(), "m".repeat(1 << 20)),
        ("t".repeat(1 << 20), "no".to_owned()),
        ("u".repeat(MAX_TASK_ID_BYTES), "no".to_owned()),
    ] {
        session
            .outbox
            .send(NodeMessage {
                kind: Some(node_message::Kind::Refused(TaskRefused {
                    task_id,
                    reason_code: "DATA_ERROR".into(),
                    message,
                })),
            })
            .await
            .unwrap();
    }
    coordinator.wait_for_log("`task_id` has 1048576 bytes", Duration::from_secs(10));
    coordinator.wait_for_log("more bytes not logged]", Duration::from_secs(10));
    assert!(
        coordinator
            .log()
            .contains("`message` has 1048576 bytes, above the limit of 4096"),
        "{}",
        coordinator.log()
    );
    drop(session);

    // The coordinator still serves: the agency gets a new session, and an operator lists it.
    let mut session = hostile_agency::open(&mut client, hostile_agency::hello())
        .await
        .unwrap();
    assert!(matches!(
        session
            .next(Duration::from_secs(5))
            .await
            .and_then(|m| m.kind),
        Some(coordinator_message::Kind::Welcome(_))
    ));
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["NL-POLITIE"]).await;

    // Over 11 MiB received; before the bounds, 10,000 warnings and the 1 MiB strings made over
    // 3 MB of log. Now a few lines per session.
    let grown = coordinator.log().len() - before;
    eprintln!("the coordinator's log grew by {grown} bytes");
    assert!(grown < 64 << 10, "the log grew by {grown} bytes");
}
