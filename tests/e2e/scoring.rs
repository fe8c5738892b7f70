//! Risk scoring at the agency: `treaty score` and `treaty serve` on a model a federation
//! trained, against the batch explanation (`treaty model explain`) and the model's closed form,
//! with the model's provenance checked first and input that does not fit named.

use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use treaty_proto::v1::scoring_service_client::ScoringServiceClient;
use treaty_proto::v1::{DescribeModelRequest, ScoreRequest};

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

/// A `treaty serve` process, killed when dropped.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `treaty serve ARGS` and waits for the address it prints.
fn serve(args: &[&str]) -> (Serving, String) {
    let mut child = Command::new(TREATY)
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("`{line}`"))
        .to_owned();
    (Serving(child), address)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The records scored: new declarations, without a label.
const RECORDS: &str = "x1,x2\n0.5,-1.0\n-2.0,1.5\n1.25,0.25\n9,-9\n";

#[tokio::test]
async fn scores_at_the_agency_are_the_batch_explanation_and_the_closed_form() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("FR-DGDDI", "FR")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 5);
    let _fr = fx.start_node("FR-DGDDI", "FR", &address, 6);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "FR-DGDDI"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "FR-DGDDI:FR"]).await;
    let job = run_training(&mut op, "pair", 3, 2).await;
    let (file, _) = model_get(&fx, &address, &job.job_id);
    let model = fx.path(&format!("{}.json", job.job_id));
    let model = model.to_str().unwrap();
    let ca = fx.pki.ca_cert();
    let ca = ca.to_str().unwrap();
    let data = fx.path("declarations.csv");
    std::fs::write(&data, RECORDS).unwrap();
    let data = data.to_str().unwrap();

    // The closed form, from the file's own numbers: standardise, clamp to the schema's bounds
    // (-3.5, 3.5), weigh, add the bias.
    let weights: Vec<f64> = file["tensors"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let bias = file["tensors"][1]["values"][0].as_f64().unwrap();
    let stats = standardization_of(&file);
    let closed_form = |x: [f64; 2]| -> Vec<(String, f64)> {
        (0..2)
            .map(|j| {
                let z = (x[j].clamp(-3.5, 3.5) - stats[j].mean) / stats[j].std;
                (stats[j].name.clone(), weights[j] * z)
            })
            .collect()
    };

    let out = treaty(&[
        "score", "--model", model, "--data", data, "--ca", ca, "--format", "json", "--top", "0",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("provenance verified"), "{}", text(&out));
    let scored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = scored["records"].as_array().unwrap();
    assert_eq!(records.len(), 4);
    let rows: Vec<[f64; 2]> = RECORDS
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
            [v[0], v[1]]
        })
        .collect();
    for (i, (record, x)) in records.iter().zip(&rows).enumerate() {
        assert_eq!(record["line"], i + 2);
        let expected = closed_form(*x);
        let score = bias + expected.iter().map(|(_, c)| c).sum::<f64>();
        assert!(
            (record["score"].as_f64().unwrap() - score).abs() < 1e-12,
            "{record}"
        );
        assert!(
            (record["prediction"].as_f64().unwrap() - sigmoid(score)).abs() < 1e-12,
            "{record}"
        );
        for c in record["contributions"].as_array().unwrap() {
            let (_, value) = expected
                .iter()
                .find(|(name, _)| c["column"] == name.as_str())
                .unwrap();
            assert!((c["value"].as_f64().unwrap() - value).abs() < 1e-12, "{c}");
        }
    }

    // The batch explanation prints the same numbers (to 4 places); it reads a label column.
    let labelled = fx.path("labelled.csv");
    std::fs::write(
        &labelled,
        RECORDS
            .lines()
            .enumerate()
            .map(|(i, l)| format!("{l},{}\n", if i == 0 { "seized" } else { "0" }))
            .collect::<String>(),
    )
    .unwrap();
    let out = treaty(&[
        "model",
        "explain",
        "--model",
        model,
        "--data",
        labelled.to_str().unwrap(),
        "--ca",
        ca,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let explained = String::from_utf8_lossy(&out.stdout);
    for (i, record) in records.iter().enumerate() {
        let p = format!("p = {:.4}", record["prediction"].as_f64().unwrap());
        assert!(
            explained.contains(&format!("record {} (line {}): {p}", i + 1, i + 2)),
            "{p} not in {explained}"
        );
        let s = format!(
            "score {:.4} = bias {bias:.4}",
            record["score"].as_f64().unwrap()
        );
        assert!(explained.contains(&s), "{s} not in {explained}");
    }

    // CSV, the default: a row per record with its top contributions.
    let out = treaty(&[
        "score", "--model", model, "--data", data, "--ca", ca, "--top", "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    assert_eq!(
        reader.headers().unwrap(),
        vec![
            "line",
            "model_version",
            "prediction",
            "class",
            "score",
            "bias",
            "column_1",
            "contribution_1"
        ]
    );
    let csv_rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(csv_rows.len(), 4);
    for (row, record) in csv_rows.iter().zip(records) {
        assert_eq!(
            row[2].parse::<f64>().unwrap(),
            record["prediction"].as_f64().unwrap()
        );
        assert_eq!(
            row[6],
            *record["contributions"][0]["column"].as_str().unwrap()
        );
    }

    // `treaty serve` answers each record with the very numbers `treaty score` wrote.
    let (_serving, at) = serve(&["--model", model, "--ca", ca]);
    let mut client = ScoringServiceClient::connect(format!("http://{at}"))
        .await
        .unwrap();
    let described = client
        .describe_model(DescribeModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.columns, ["x1", "x2"]);
    assert_eq!(
        described.model_version,
        file["model_version"].as_str().unwrap()
    );
    assert!(
        described.provenance.starts_with("provenance verified"),
        "{described:?}"
    );
    for (record, x) in records.iter().zip(&rows) {
        let answer = client
            .score(ScoreRequest {
                fields: [
                    ("x1".to_owned(), x[0].to_string()),
                    ("x2".to_owned(), x[1].to_string()),
                    ("note".to_owned(), "ignored".to_owned()),
                ]
                .into(),
                top: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.prediction, record["prediction"].as_f64().unwrap());
        assert_eq!(answer.score, record["score"].as_f64());
        assert_eq!(answer.bias, Some(bias));
        let contributions: Vec<(String, f64)> = answer
            .contributions
            .iter()
            .map(|c| (c.column.clone(), c.value))
            .collect();
        let written: Vec<(String, f64)> = record["contributions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["column"].as_str().unwrap().to_owned(),
                    c["value"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(contributions, written);
    }
    // A record that does not fit is named, and the service goes on.
    let refused = client
        .score(ScoreRequest {
            fields: [("x1".to_owned(), "1".to_owned())].into(),
            top: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("`x2`"), "{}", refused.message());
    let refused = client
        .score(ScoreRequest {
            fields: [
                ("x1".to_owned(), "many".to_owned()),
                ("x2".to_owned(), "0".to_owned()),
            ]
            .into(),
            top: 0,
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("column `x1`"),
        "{}",
        refused.message()
    );
    let oversized = client
        .score(ScoreRequest {
            fields: (0..2000)
                .map(|i| (format!("c{i}"), String::new()))
                .collect(),
            top: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), tonic::Code::InvalidArgument);
    assert!(client.describe_model(DescribeModelRequest {}).await.is_ok());

    // What is refused before anything is scored, each named, with status 2.
    let missing = fx.path("missing.csv");
    std::fs::write(&missing, "x1,amount\n1,2\n").unwrap();
    let mut tampered = file.clone();
    let w = tampered["tensors"][0]["values"][0].as_f64().unwrap();
    tampered["tensors"][0]["values"][0] = serde_json::json!(w + 0.5);
    let tampered_path = fx.path("tampered.json");
    std::fs::write(&tampered_path, tampered.to_string()).unwrap();
    let tampered_path = tampered_path.to_str().unwrap();
    // The weights changed and the provenance taken out, so that nothing contradicts them.
    let mut stripped = tampered.clone();
    stripped.as_object_mut().unwrap().remove("provenance");
    let stripped_path = fx.path("stripped.json");
    std::fs::write(&stripped_path, stripped.to_string()).unwrap();
    let stripped_path = stripped_path.to_str().unwrap();
    for (args, named) in [
        (
            vec![
                "score",
                "--model",
                model,
                "--data",
                missing.to_str().unwrap(),
                "--ca",
                ca,
            ],
            "has no column `x2`",
        ),
        (vec!["score", "--model", model, "--data", data], "--ca"),
        (
            vec![
                "score",
                "--model",
                stripped_path,
                "--data",
                data,
                "--ca",
                ca,
            ],
            "has no provenance",
        ),
        (
            vec![
                "serve",
                "--model",
                stripped_path,
                "--ca",
                ca,
                "--listen",
                "127.0.0.1:0",
            ],
            "has no provenance",
        ),
        (
            vec![
                "score",
                "--model",
                tampered_path,
                "--data",
                data,
                "--ca",
                ca,
            ],
            "its provenance does not check out",
        ),
        (
            vec![
                "serve",
                "--model",
                tampered_path,
                "--ca",
                ca,
                "--listen",
                "127.0.0.1:0",
            ],
            "its provenance does not check out",
        ),
        (
            vec![
                "serve",
                "--model",
                model,
                "--ca",
                ca,
                "--listen",
                "0.0.0.0:0",
            ],
            "not a loopback address",
        ),
    ] {
        let mut child = Command::new(TREATY)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "{args:?} did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(named), "{args:?}: {}", text(&out));
    }
    // Asked for, a model nobody checked scores, and every score says so.
    let out = treaty(&[
        "score",
        "--model",
        stripped_path,
        "--data",
        data,
        "--unverified",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("PROVENANCE NOT VERIFIED"),
        "{}",
        text(&out)
    );

    // The coordinator's certificate revoked: against the federation's revocation list, the
    // model scores nothing any more.
    let crl = revoke_the_coordinator(&fx);
    let crl = crl.to_str().unwrap();
    let out = treaty(&[
        "score", "--model", model, "--data", data, "--ca", ca, "--crl", crl,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is revoked"), "{}", text(&out));
}
