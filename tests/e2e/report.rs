//! `treaty job report`: a training job's and a query's page, checked for what they must show
//! against the job as the operator API returns it, for holding nothing that runs or fetches,
//! and rendered by headless Chromium where it is installed (Debian's `chromium`).

use std::path::{Path, PathBuf};
use std::process::Command;

use treaty_proto::v1::{QueryKind, QuerySpec};

use crate::common::*;

/// Runs `treaty job report` and reads the page it wrote.
fn report(config: &Path, job: &str, out: &Path) -> String {
    let status = Command::new(TREATY)
        .args(["job", "report", "--config"])
        .arg(config)
        .args(["--job", job, "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read_to_string(out).unwrap()
}

/// The part of `html` inside the first element that starts with `open` (up to `close`).
fn section<'a>(html: &'a str, open: &str, close: &str) -> &'a str {
    let start = html.find(open).unwrap_or_else(|| panic!("no {open}"));
    let end = html[start..].find(close).unwrap() + start;
    &html[start..end]
}

/// Nothing in the page runs or fetches anything.
fn inert(html: &str) {
    for forbidden in [
        "<script", " src=", " href=", "url(", "@import", "<iframe", "<link",
    ] {
        assert!(!html.contains(forbidden), "the page holds `{forbidden}`");
    }
    // The only address is SVG's namespace, which nothing fetches.
    let addresses = html.matches("://").count();
    assert_eq!(
        addresses,
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "an address other than SVG's namespace"
    );
}

/// Debian's Chromium, when installed.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The page as headless Chromium parsed and laid it out (its DOM after rendering).
fn rendered(chromium: &Path, page: &Path, profile: &Path) -> String {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_jobs_report_shows_its_rounds_spending_exclusions_and_answer() {
    // France's policy leaves its agency out of every round here, with its reason.
    let fx = trio_limited_in_france();
    let agencies = TRIO;
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let nodes: Vec<Proc> = agencies
        .iter()
        .enumerate()
        .map(|(i, (a, c))| fx.start_node(a, c, &address, 60 + i as u64))
        .collect();
    let mut op = trio_federation(&fx, &address).await;
    let job = run_training(&mut op, "trio", 3, 2).await;
    let config = fx.operator_config(&address);
    let page = fx.path("report.html");
    let html = report(&config, &job.job_id, &page);
    inert(&html);
    assert!(html.contains(&format!("Treaty training job {}", job.job_id)));

    // A chart per metric, a point per round that has it.
    let rounds: Vec<&treaty_proto::v1::RoundSummary> = job
        .statistics
        .iter()
        .chain(&job.rounds)
        .chain(&job.final_evaluation)
        .collect();
    for metric in ["test_accuracy", "test_auc", "test_log_loss"] {
        let with = rounds
            .iter()
            .filter(|r| r.metrics.contains_key(metric))
            .count();
        assert!(with >= 2, "{metric} in {with} rounds");
        let figure = section(&html, &format!("data-metric=\"{metric}\""), "</figure>");
        assert_eq!(figure.matches("class=\"point\"").count(), with, "{metric}");
        let intervals = rounds
            .iter()
            .filter(|r| r.metrics.contains_key(metric) && r.metric_intervals.contains_key(metric))
            .count();
        assert_eq!(
            figure.matches("class=\"interval\"").count(),
            intervals,
            "{metric}"
        );
    }

    // Each agency's spending as the last round states it (the final evaluation's), and its
    // budget (none kept here).
    let last = rounds.last().unwrap();
    let spending = section(&html, "<table class=\"spending\">", "</table>");
    for agency in ["DE-BKA", "NL-POLITIE"] {
        let s = last.agency_metrics[agency].spending.unwrap();
        let row = format!(
            "<tr><td>{agency}</td><td>{:.4}</td><td>{:.4}</td><td>none kept</td></tr>",
            s.job_spent_epsilon, s.spent_epsilon
        );
        assert!(spending.contains(&row), "{row} not in {spending}");
    }
    assert!(!spending.contains("FR-DOUANE"));
    let bars = section(&html, "<figure class=\"spending\">", "</figure>");
    assert_eq!(bars.matches("class=\"bar\"").count(), 2);

    // Every round's contributors, and France left out with its reason and explanation.
    let table = section(&html, "<table class=\"rounds\">", "</table>");
    assert_eq!(table.matches("<tr>").count(), rounds.len() + 1);
    for r in &job.rounds {
        let e = r.excluded.iter().find(|e| e.agency == "FR-DOUANE").unwrap();
        assert!(table.contains(&format!("<b>FR-DOUANE</b> {}: ", e.reason_code)));
    }
    assert!(table.contains("EPSILON_PER_ROUND_EXCEEDED"));
    assert!(
        table.contains("above FR&#39;s per-round limit of 0.5"),
        "{table}"
    );

    // A query: its answer as bars with their intervals, and the same figures in a table.
    let histogram = QuerySpec {
        kind: QueryKind::Histogram as i32,
        column: "mode".into(),
        categories: vec!["sea".into(), "air".into(), "road".into()],
        epsilon: 0.5,
        ..Default::default()
    };
    let query = start_query(&mut op, "trio", histogram, 1).await;
    let query = succeeded(watch_to_end(&mut op, &query.job_id).await);
    let query_page = fx.path("query.html");
    let qhtml = report(&config, &query.job_id, &query_page);
    inert(&qhtml);
    // A query has no model: no metric is charted (not its noise scale either).
    assert!(!qhtml.contains("data-metric="));
    let answer = section(&qhtml, "<figure class=\"answer\">", "</figure>");
    assert_eq!(answer.matches("class=\"bar\"").count(), 4);
    assert_eq!(answer.matches("class=\"interval\"").count(), 4);
    for (i, v) in query.rounds[0].answer.iter().enumerate() {
        assert!(
            qhtml.contains(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4} to {:.4}</td></tr>",
                i + 1,
                v.label.replace('<', "&lt;").replace('>', "&gt;"),
                v.value,
                v.noise_std,
                v.ci_low,
                v.ci_high
            )),
            "{} not in {qhtml}",
            v.label
        );
    }

    // Rendered by a browser, where one is installed: the charts are in the laid-out page.
    match chromium() {
        Some(chromium) => {
            for (page, figures) in [(&page, 4), (&query_page, 1)] {
                let dom = rendered(&chromium, page, &fx.path("chromium-profile"));
                assert!(dom.matches("<svg").count() >= figures, "{dom}");
                assert!(dom.contains("<title>Treaty "), "{dom}");
            }
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must render the pages: install Debian's chromium (.ci/run does)"
            );
            eprintln!("report: no Chromium installed; the pages were checked by structure only")
        }
    }
    drop(nodes);
}
