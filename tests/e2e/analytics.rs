//! DP analytics end to end: answers fall within their stated confidence intervals at the stated
//! rate, over repeated runs.

use std::collections::HashMap;
use std::path::PathBuf;

use treaty_proto::v1::{Job, QueryKind, QuerySpec};

use crate::common::*;

/// The federation's exact answers, read straight from the CSV files (not through Treaty's code):
/// counts of (band, mode) among seized records, the number of records, the sum of x1 clamped
/// to [-1, 1].
fn truth(files: &[std::path::PathBuf]) -> (HashMap<(String, String), f64>, f64, f64) {
    let mut cells = HashMap::new();
    let (mut n, mut sum) = (0.0, 0.0);
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines().skip(1) {
            let c: Vec<&str> = line.split(',').collect();
            // x1,x2,mode,band,amount,seized
            n += 1.0;
            sum += c[0].parse::<f64>().unwrap().clamp(-1.0, 1.0);
            if c[5] == "1" {
                *cells
                    .entry((c[3].to_owned(), c[2].to_owned()))
                    .or_insert(0.0) += 1.0;
            }
        }
    }
    (cells, n, sum)
}

async fn query(
    op: &mut treaty_proto::v1::operator_service_client::OperatorServiceClient<
        tonic::transport::Channel,
    >,
    spec: QuerySpec,
) -> Job {
    let job = start_query(op, "trio", spec, 3).await;
    succeeded(watch_to_end(op, &job.job_id).await)
}

/// Starts a node for each of the [`TRIO`] on its own shifted data (800 records, seeds from
/// `seed`); the processes, their training files and their configuration files.
fn start_trio(fx: &Fixture, address: &str, seed: u64) -> (Vec<Proc>, Vec<PathBuf>, Vec<PathBuf>) {
    let (mut nodes, mut files, mut configs) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (agency, country)) in TRIO.into_iter().enumerate() {
        let (train, test) =
            write_shifted_data(fx.dir.path(), agency, 800, seed + i as u64, 0.3 * i as f64);
        let config = fx.node_config_for(agency, country, address, &train, &test);
        nodes.push(fx.start_node_with(agency, &config));
        files.push(train);
        configs.push(config);
    }
    (nodes, files, configs)
}

#[tokio::test]
async fn answers_fall_within_their_intervals_at_the_stated_rate() {
    let fx = Fixture::new(&TRIO);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let (_nodes, files, _) = start_trio(&fx, &address, 70);
    let (cells, n, sum) = truth(&files);
    let mut op = trio_federation(&fx, &address).await;

    let histogram = QuerySpec {
        kind: QueryKind::Histogram as i32,
        column: "band".into(),
        categories: vec!["low".into(), "mid".into(), "high".into()],
        by_column: "mode".into(),
        by_categories: vec!["sea".into(), "air".into(), "road".into()],
        where_column: "seized".into(),
        where_value: "1".into(),
        epsilon: 0.5,
        confidence: 0.95,
        ..Default::default()
    };
    let (mut inside, mut total) = (0usize, 0usize);
    for _ in 0..40 {
        let job = query(&mut op, histogram.clone()).await;
        for v in &job.rounds[0].answer {
            // "band=mid, mode=air"
            let parts: Vec<&str> = v
                .label
                .split(", ")
                .map(|p| p.split('=').nth(1).unwrap())
                .collect();
            let exact = cells
                .get(&(parts[0].to_owned(), parts[1].to_owned()))
                .copied()
                .unwrap_or(0.0);
            total += 1;
            inside += usize::from(v.ci_low <= exact && exact <= v.ci_high);
            // Three agencies' Laplace(1 / 0.5) noise: standard deviation sqrt(3 * 2 * 2^2).
            assert!((v.noise_std - (24.0f64).sqrt()).abs() < 0.3, "{v:?}");
        }
    }
    let rate = inside as f64 / total as f64;
    // 640 intervals at 95 %: the binomial standard deviation of the rate is 0.0086, so +-0.035
    // (four of them) fails by chance about once in 16,000 runs.
    assert!(
        (rate - 0.95).abs() < 0.035,
        "{inside} of {total} intervals hold the truth"
    );

    // Counts, sums and means: the truth falls inside too (fewer runs, so only a floor).
    let (mut held, mut runs) = (0usize, 0usize);
    for _ in 0..20 {
        for (kind, exact) in [
            (QueryKind::Count, n),
            (QueryKind::Sum, sum),
            (QueryKind::Mean, sum / n),
        ] {
            let spec = QuerySpec {
                kind: kind as i32,
                column: "x1".into(),
                lower: -1.0,
                upper: 1.0,
                epsilon: 1.0,
                ..Default::default()
            };
            let job = query(&mut op, spec).await;
            let v = &job.rounds[0].answer[0];
            runs += 1;
            held += usize::from(v.ci_low <= exact && exact <= v.ci_high);
        }
    }
    assert!(held as f64 >= 0.85 * runs as f64, "{held} of {runs}");

    // A quantile: the median of x1, within its interval (which adds half a bin).
    let mut xs: Vec<f64> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .skip(1)
                .map(|l| l.split(',').next().unwrap().parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    xs.sort_by(f64::total_cmp);
    let median = xs[xs.len() / 2];
    let job = query(
        &mut op,
        QuerySpec {
            kind: QueryKind::Quantile as i32,
            column: "x1".into(),
            lower: -3.0,
            upper: 3.0,
            quantiles: vec![0.5],
            bins: 60,
            epsilon: 1.0,
            ..Default::default()
        },
    )
    .await;
    let v = &job.rounds[0].answer[0];
    assert!(
        v.ci_low <= median && median <= v.ci_high && v.ci_high - v.ci_low < 0.5,
        "{v:?} vs {median}"
    );
}

/// Runs `treaty ARGS`; its status, standard output and standard error.
fn treaty(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(TREATY)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `treaty query`, as an analyst runs it against real nodes: its answers hold the truth at the
/// stated rate (CSV and JSON), its noise is what three agencies' Laplace noise must be, a
/// country's policy decides whether its agency answers, each answer is debited from the
/// agency's ledger, and a misspelt column is named.
#[tokio::test]
async fn the_query_command_answers_within_its_intervals_under_the_policies() {
    // France lets one round spend at most epsilon 0.5.
    let fx = trio_limited_in_france();
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let (nodes, files, configs) = start_trio(&fx, &address, 170);
    let (cells, _, _) = truth(&files);
    let seized: f64 = cells.values().sum();
    trio_federation(&fx, &address).await;
    let operator = fx.operator_config(&address);
    let operator = operator.to_str().unwrap();
    let common = ["--config", operator, "--federation", "trio"];
    // Three agencies' Laplace(1 / 0.5) noise: standard deviation sqrt(3 * 2 * 2^2).
    let sd = 24f64.sqrt();

    let (mut inside, mut total) = (0usize, 0usize);
    for _ in 0..15 {
        let mut args = vec!["query", "histogram"];
        args.extend(common);
        args.extend([
            "--column",
            "band",
            "--categories",
            "low,mid,high",
            "--by",
            "mode",
            "--by-categories",
            "sea,air,road",
            "--where",
            "seized=1",
            "--epsilon",
            "0.5",
            "--csv",
        ]);
        let (status, out, err) = treaty(&args);
        assert_eq!(status, Some(0), "{err}");
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        assert_eq!(
            reader.headers().unwrap(),
            vec!["label", "value", "noise_std", "ci_low", "ci_high"]
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        // Three bands and "other", by three modes and "other".
        assert_eq!(rows.len(), 16, "{out}");
        for row in rows {
            // "band=mid, mode=air"
            let parts: Vec<&str> = row[0]
                .split(", ")
                .map(|p| p.split('=').nth(1).unwrap())
                .collect();
            let exact = cells
                .get(&(parts[0].to_owned(), parts[1].to_owned()))
                .copied()
                .unwrap_or(0.0);
            let [low, high, noise]: [f64; 3] = [3, 4, 2].map(|i| row[i].parse::<f64>().unwrap());
            assert!((noise - sd).abs() < 0.3, "{row:?}");
            total += 1;
            inside += usize::from(low <= exact && exact <= high);
        }
    }
    for _ in 0..10 {
        let mut args = vec!["query", "count"];
        args.extend(common);
        // Spaces around the value are trimmed, as the agencies' cells are.
        args.extend(["--where", "seized= 1", "--epsilon", "0.5", "--json"]);
        let (status, out, err) = treaty(&args);
        assert_eq!(status, Some(0), "{err}");
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["statistic"], "count");
        assert_eq!(answer["where"]["column"], "seized");
        assert_eq!(answer["where"]["value"], "1");
        assert_eq!(answer["contributors"].as_array().unwrap().len(), 3);
        let v = &answer["values"][0];
        assert!((v["noise_std"].as_f64().unwrap() - sd).abs() < 0.3, "{v}");
        total += 1;
        inside += usize::from(
            v["ci_low"].as_f64().unwrap() <= seized && seized <= v["ci_high"].as_f64().unwrap(),
        );
    }
    let rate = inside as f64 / total as f64;
    // 250 intervals at 95 %: the binomial standard deviation of the rate is 0.0138, so +-0.055
    // (four of them) fails by chance about once in 16,000 runs.
    assert!(
        (rate - 0.95).abs() < 0.055,
        "{inside} of {total} intervals hold the truth"
    );

    // Epsilon 1 is more than France allows in a round: its agency does not answer, and the
    // table says why.
    let mut args = vec!["query", "mean"];
    args.extend(common);
    args.extend([
        "--column",
        "x1",
        "--lower",
        "-1",
        "--upper",
        "1",
        "--epsilon",
        "1",
    ]);
    let (status, out, err) = treaty(&args);
    assert_eq!(status, Some(0), "{err}");
    assert!(
        out.contains("mean of x1 over trio: 2 of 3 agencies answered, epsilon 1 each"),
        "{out}"
    );
    assert!(out.contains("FR-DOUANE did not answer"), "{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("mean ")),
        "{out}"
    );

    // Every answer was debited before it left: 26 queries in DE's ledger, 25 in France's.
    for (config, answered) in [(&configs[0], 26), (&configs[2], 25)] {
        let queries = ledger_entries(config, "query");
        assert_eq!(queries.len(), answered, "{queries:?}");
    }

    // A misspelt column is named, as unusable input, before anyone answers.
    let mut args = vec!["query", "count"];
    args.extend(common);
    args.extend(["--where", "seizd=1", "--epsilon", "0.5"]);
    let (status, _, err) = treaty(&args);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("seizd"), "{err}");
    drop(nodes);
}
