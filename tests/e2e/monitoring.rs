//! `/metrics` of the coordinator and of a node, scraped over HTTP and read with a Prometheus
//! text-format parser (the `prometheus-parse` crate, not Treaty's code): the figures agree
//! with what the jobs did and what the ledgers hold.

use std::io::{Read, Write};
use std::time::Duration;

use treaty_devkit::local::write_toml;
use treaty_node::NodeConfig;
use treaty_proto::monitoring::Monitoring;
use treaty_proto::v1::{QueryKind, QuerySpec};

use crate::common::*;

/// `GET /metrics` from `address`; the content type and the body.
fn scrape(address: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (content_type, body.to_owned())
}

/// The value of sample `name` with `labels`, as the parser read it.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is {other:?}"),
        })
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

#[tokio::test]
async fn metrics_of_the_coordinator_and_a_node_agree_with_the_jobs_and_the_ledger() {
    // France lets one round spend at most epsilon 0.5: every round below leaves it out.
    let fx = trio_limited_in_france();
    let agencies = TRIO;
    let coordinator_metrics = free_loopback_address();
    let mut config = fx
        .site
        .coordinator_config("127.0.0.1:0".parse().unwrap(), "NL");
    config.monitoring = Some(Monitoring {
        listen: coordinator_metrics.parse().unwrap(),
    });
    let (coordinator, address) = fx.site.start_coordinator(&config).unwrap();
    let _coordinator = Proc(coordinator);
    let node_metrics = free_loopback_address();
    let mut nodes = Vec::new();
    let mut de_config = None;
    for (i, (agency, country)) in agencies.into_iter().enumerate() {
        let path = fx.node_config(agency, country, &address, 40 + i as u64);
        if agency == "DE-BKA" {
            let mut node = NodeConfig::load(&path).unwrap();
            node.monitoring = Some(Monitoring {
                listen: node_metrics.parse().unwrap(),
            });
            write_toml(&path, &node).unwrap();
            de_config = Some(path.clone());
        }
        nodes.push(fx.start_node_with(agency, &path));
    }
    let mut op = trio_federation(&fx, &address).await;
    let training = run_training(&mut op, "trio", 2, 2).await;
    let count = QuerySpec {
        kind: QueryKind::Count as i32,
        epsilon: 1.0,
        ..Default::default()
    };
    let query = start_query(&mut op, "trio", count, 1).await;
    let query = succeeded(watch_to_end(&mut op, &query.job_id).await);
    assert_eq!(query.rounds[0].excluded.len(), 1);

    // The counters follow the job events, which they receive a moment after the operator's
    // watch does: read them once both jobs' ends are counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (content_type, body, c) = loop {
        let (content_type, body) = scrape(&coordinator_metrics);
        let c = parse(&body);
        let ended = value(&c, "treaty_jobs_total", &[("outcome", "succeeded")]);
        if ended == Some(2.0) || std::time::Instant::now() > deadline {
            break (content_type, body, c);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    // Every round the training job completed (its statistics round too, when it had one), and
    // the query's one round.
    let statistics = f64::from(u8::from(training.statistics.is_some()));
    assert_eq!(
        value(&c, "treaty_rounds_total", &[("kind", "training")]),
        Some(training.rounds.len() as f64),
        "{body}"
    );
    if statistics > 0.0 {
        assert_eq!(
            value(&c, "treaty_rounds_total", &[("kind", "statistics")]),
            Some(statistics)
        );
    }
    assert_eq!(
        value(&c, "treaty_rounds_total", &[("kind", "query")]),
        Some(1.0),
        "{body}"
    );
    let rounds = training.rounds.len() as f64 + statistics + 1.0;
    assert_eq!(
        value(
            &c,
            "treaty_exclusions_total",
            &[("reason", "EPSILON_PER_ROUND_EXCEEDED")]
        ),
        Some(rounds),
        "{body}"
    );
    assert_eq!(
        value(&c, "treaty_jobs_total", &[("outcome", "succeeded")]),
        Some(2.0)
    );
    assert_eq!(
        value(&c, "treaty_agencies_connected", &[]),
        Some(3.0),
        "{body}"
    );
    assert!(value(&c, "treaty_store_bytes", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&c, "treaty_round_duration_seconds_count", &[]),
        Some(rounds),
        "{body}"
    );

    // The node's own figures, against its ledger as `treaty node ledger` reads it.
    let de_config = de_config.unwrap();
    let ledger = treaty_json(&[
        "node",
        "ledger",
        "--json",
        "--config",
        de_config.to_str().unwrap(),
    ]);
    let (content_type, body) = scrape(&node_metrics);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let n = parse(&body);
    let entries = ledger["entries"].as_array().unwrap().len() as f64;
    assert_eq!(
        value(&n, "treaty_node_ledger_entries", &[]),
        Some(entries),
        "{body}"
    );
    assert_eq!(value(&n, "treaty_node_ledger_verified", &[]), Some(1.0));
    assert_eq!(value(&n, "treaty_node_session_open", &[]), Some(1.0));
    let spent = value(&n, "treaty_node_epsilon_spent", &[]).unwrap();
    assert!(
        (spent - ledger["spent"]["epsilon"].as_f64().unwrap()).abs() < 1e-9,
        "{spent} vs {}",
        ledger["spent"]
    );
    // The coordinator shows what the node last reported: at most what it has spent now.
    let reported = value(
        &c,
        "treaty_agency_epsilon_spent",
        &[("agency", "treaty://agency/DE/DE-BKA")],
    );
    assert!(
        reported.is_some_and(|r| r > 0.0 && r <= spent + 1e-9),
        "{reported:?} {spent}"
    );
    let sent = value(
        &n,
        "treaty_node_tasks_total",
        &[("kind", "training"), ("outcome", "sent")],
    );
    assert_eq!(sent, Some(training.rounds.len() as f64), "{body}");
    assert_eq!(
        value(
            &n,
            "treaty_node_tasks_total",
            &[("kind", "query"), ("outcome", "sent")]
        ),
        Some(1.0)
    );
    drop(nodes);
}
