//! A job's schema is checked whole before anything starts: `treaty schema check`, the check
//! `treaty job train` runs before it submits, and the coordinator's `CreateJob`, which refuses a
//! job whose schema a node would refuse or whose fields its registry does not know.

use std::path::Path;
use std::process::Command;

use tonic::Code;
use tonic::transport::Channel;
use treaty_proto::v1::operator_service_client::OperatorServiceClient;
use treaty_proto::v1::{CreateJobRequest, JobSpec, ListJobsRequest, job_spec};

use crate::common::*;

/// A schema of the test data with four problems, on lines counted by hand: `x2` (line 11) has
/// no bounds, `country_of_birth` (line 15) is not in the tests' registry, `modee` (line 20)
/// lists no values and is not in the registry either (`mode` is).
const BAD: &str = r#"[label]
name = "seized"
kind = "binary"

[[column]]
name = "x1"
kind = "numeric"
lower = -3.5
upper = 3.5

[[column]]
name = "x2"
kind = "numeric"

[[column]]
name = "country_of_birth"
kind = "categorical"
values = ["FR", "DE"]

[[column]]
name = "modee"
kind = "categorical"
values = []
"#;

/// Runs `treaty ARGS`: its exit status, standard output and standard error.
fn treaty<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = Command::new(TREATY).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn job_count(op: &mut OperatorServiceClient<Channel>) -> usize {
    op.list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
        .len()
}

#[test]
fn schema_check_exits_0_on_a_good_schema_and_2_on_a_bad_one_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let registry = write(dir.path(), "registry.toml", TEST_REGISTRY);
    let good = write(
        dir.path(),
        "good.toml",
        &treaty_proto::schema::to_toml(&schema_of_test_data()).unwrap(),
    );
    let bad = write(dir.path(), "bad.toml", BAD);

    let (code, _, stderr) = treaty(&["schema", "check", &good, "--registry", &registry]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("valid"), "{stderr}");

    // Without the registry: what a node would refuse.
    let (code, stdout, stderr) = treaty(&["schema", "check", &bad]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{bad}:11: numeric column `x2` has no bounds")),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{bad}:20: categorical column `modee` lists no values"
        )),
        "{stdout}"
    );
    assert!(stderr.contains("bad.toml has 2 problem(s)"), "{stderr}");

    // With it: the fields too, with a suggestion.
    let (code, stdout, stderr) = treaty(&["schema", "check", &bad, "--registry", &registry]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[1].starts_with(&format!(
            "{bad}:15: column `country_of_birth` is not a field of registry test-1"
        )),
        "{stdout}"
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with(&format!("{bad}:20: column `modee` is not a field"))
                && l.ends_with("(did you mean `mode`?)")
        ),
        "{stdout}"
    );
    // A model the label does not fit, and a file that cannot be read, are unusable input too.
    let (code, stdout, _) = treaty(&["schema", "check", &good, "--model", "linear"]);
    assert_eq!(code, 2);
    assert!(stdout.contains("needs a numeric label"), "{stdout}");
    let (code, _, stderr) = treaty(&["schema", "check", "/nonexistent/schema.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/schema.toml"), "{stderr}");
}

#[tokio::test]
async fn a_job_with_a_bad_schema_is_refused_at_creation_with_every_problem() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _node = fx.start_node("DE-BKA", "DE", &address, 1);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA"]).await;
    create_federation(&mut op, "schemas", &["DE-BKA:DE"]).await;
    let request = |schema: &str| {
        let mut spec = training_spec(2);
        spec.schema = Some(treaty_proto::schema::parse(schema).unwrap().unwrap());
        CreateJobRequest {
            federation: "schemas".into(),
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Training(spec)),
                min_participants: 1,
                sharing: Some(test_sharing()),
                ..Default::default()
            }),
        }
    };

    // Through the API: refused as invalid, every problem named at once.
    let status = op.create_job(request(BAD)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    for needle in [
        "numeric column `x2` has no bounds",
        "categorical column `modee` lists no values",
        "column `country_of_birth` is not a field of registry test-1",
        "column `modee` is not a field of registry test-1",
    ] {
        assert!(message.contains(needle), "`{needle}` in {message}");
    }
    assert_eq!(message.matches("schema: ").count(), 4, "{message}");

    // Through `treaty job train`: the schema is checked before anything is submitted...
    let operator = fx.operator_config(&address);
    let operator = operator.to_str().unwrap();
    let bad = write(fx.dir.path(), "bad.toml", BAD);
    let train = |schema: &str| {
        treaty(&[
            "job",
            "train",
            "--config",
            operator,
            "--federation",
            "schemas",
            "--schema",
            schema,
            "--detach",
        ])
    };
    let (code, _, stderr) = train(&bad);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nothing was submitted"), "{stderr}");
    assert!(
        stderr.contains(&format!("{bad}:11: numeric column `x2` has no bounds")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{bad}:20: categorical column `modee` lists no values"
        )),
        "{stderr}"
    );
    // ... and what only the registry knows, the coordinator refuses.
    let fixed = BAD
        .replace(
            "kind = \"numeric\"\n\n",
            "kind = \"numeric\"\nlower = -3.5\nupper = 3.5\n\n",
        )
        .replace("values = []", "values = [\"sea\"]");
    let fixed = write(fx.dir.path(), "fixed.toml", &fixed);
    let (code, _, stderr) = train(&fixed);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("column `country_of_birth` is not a field of registry test-1")
            && stderr.contains("column `modee` is not a field of registry test-1"),
        "{stderr}"
    );

    // No job was created, so no round ran.
    assert_eq!(job_count(&mut op).await, 0);
    // The same federation takes a job with a sound schema.
    let good = treaty_proto::schema::to_toml(&schema_of_test_data()).unwrap();
    op.create_job(request(&good)).await.unwrap();
    assert_eq!(job_count(&mut op).await, 1);
}
