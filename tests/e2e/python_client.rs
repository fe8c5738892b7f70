//! The Python client (clients/python/) against a real coordinator: its stubs generated from
//! the protos with grpcio-tools, its example lists the jobs, follows one to its end and
//! downloads its model — the same weights `treaty model get` writes — and an agency's
//! certificate is refused the operator API. Runs where a Python with clients/python's
//! requirements is found: `TREATY_PYTHON`, else `clients/python/.venv/bin/python` (CI makes
//! it); elsewhere it says so and checks nothing.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use treaty_proto::Identity;

use crate::common::*;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python")
}

/// A Python that can import grpc and grpc_tools.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TREATY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| client_dir().join(".venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(candidate)
}

#[tokio::test]
async fn the_python_example_lists_follows_and_downloads() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the Python client's test: make clients/python/.venv (.ci/run does)"
        );
        eprintln!(
            "python client: skipped: no Python with clients/python/requirements.txt (set TREATY_PYTHON or make clients/python/.venv)"
        );
        return;
    };
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 81);
    let _nl = fx.start_node("NL-POLITIE", "NL", &address, 82);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    create_federation(
        &mut op,
        "trio",
        &["DE-BKA:DE", "NL-POLITIE:NL", "FR-DOUANE:FR"],
    )
    .await;
    // The job waits for its third member, whose node starts once the example follows it.
    let job = start_training(&mut op, "trio", training_spec(2), 3, 20_000).await;

    let generated = Command::new("bash")
        .arg(client_dir().join("generate.sh"))
        .env("PYTHON", &python)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let tls = fx.site.operator_config(&address).tls;
    let out = fx.path("python-model.json");
    let example = |cert: &Path, key: &Path| {
        let mut command = Command::new(&python);
        command
            .arg("-u")
            .arg(client_dir().join("example.py"))
            .args(["--address", &address, "--ca"])
            .arg(&tls.ca_cert)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let mut child = example(&tls.cert, &tls.key).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut said = String::new();
    while !said.contains("following") {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        said.push_str(&line);
    }
    let _fr = fx.start_node("FR-DOUANE", "FR", &address, 83);
    stdout.read_to_string(&mut said).unwrap();
    let ran = child.wait_with_output().unwrap();
    assert!(
        ran.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let job = succeeded(watch_to_end(&mut op, &job.job_id).await);
    assert!(said.contains("1 job(s):"), "{said}");
    assert!(
        said.contains(&format!("following {}:", job.job_id)),
        "{said}"
    );
    assert!(said.contains("[JOB_EVENT_KIND_ROUND_STARTED]"), "{said}");
    assert_eq!(
        said.matches("[JOB_EVENT_KIND_ROUND_COMPLETED]").count(),
        3,
        "{said}"
    );
    assert!(said.contains("[JOB_EVENT_KIND_JOB_SUCCEEDED]"), "{said}");
    assert!(
        said.contains(&format!("model {} written", job.latest_model_version)),
        "{said}"
    );

    // The weights, against the model file `treaty model get` writes.
    let (_, expected) = model_get(&fx, &address, &job.job_id);
    let downloaded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let tensors = downloaded["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), expected.len());
    for (got, want) in tensors.iter().zip(&expected) {
        assert_eq!(got["name"], want.name.as_str());
        let values: Vec<f64> = got["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(values, want.values.iter().copied().collect::<Vec<f64>>());
    }

    // An agency's certificate is not an operator's: refused, and the example says so.
    let agency = fx.files(&Identity::agency("DE", "DE-BKA").unwrap());
    let refused = example(&agency.cert, &agency.key).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("PERMISSION_DENIED"), "{said}");
}
