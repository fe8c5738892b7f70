//! A new agency's first federation, end to end, from what the repository documents alone: the
//! commands and the complete configuration examples of docs/CONFIGURATION.md (changed only where
//! one machine must differ from the page's: addresses, each agency's certificate, data and
//! state), the sample registry and policies, `treaty synth` data and schema, `treaty schema
//! check`, and `treaty job train` — with a bad schema (every problem at once, and no job
//! created) and with a good one (the privacy plan printed, the job succeeded, its final model
//! evaluated); then each agency's ledger, read while its node runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::docs::{example, first_block, page, repo};
use treaty_devkit::local::Process;

/// `treaty ARGS` in `dir`: its exit code, standard output and standard error.
fn treaty(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(TREATY)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `text` with `from` replaced by `to`, which must be in it (the page's example changed).
fn changed(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "`{from}` is not in\n{text}");
    text.replace(from, to)
}

/// The page's example without its `keys = ...` line: the sample policies are not signed here
/// (the key is optional, see the table).
fn unsigned(text: &str) -> String {
    changed(text, "keys = \"policies/keys\"\n", "")
}

/// Starts `treaty COMMAND --config DIR/CONFIG` as `name`.
fn start(dir: &Path, name: &str, command: &str, config: &str) -> Proc {
    let config = dir.join(config);
    let args = [command, "--config", config.to_str().unwrap()];
    let log = dir.join(format!("{name}.log"));
    Proc(Process::spawn(Path::new(TREATY), name, &args, &log).unwrap())
}

#[test]
fn a_newcomer_runs_a_first_federation_from_the_documentation_alone() {
    let doc = page("CONFIGURATION.md");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The page's commands, in an empty directory, and one more agency (the sample German policy
    // wants three participants): `treaty pki issue`.
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(TREATY, bin.join("treaty")).unwrap();
    let commands = first_block(&doc, "sh").replace("REPO", repo().to_str().unwrap());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("sh")
        .args(["-e", "-c", &commands])
        .env("PATH", path)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{commands}: {out:?}");
    let (code, _, err) = treaty(
        dir,
        &["pki", "issue", "--dir", "pki", "--agency", "FR-DOUANE:FR"],
    );
    assert_eq!(code, 0, "{err}");
    // Each agency's records: synthetic customs declarations, with their schema.
    let (code, _, err) = treaty(
        dir,
        &[
            "synth",
            "--agencies",
            "3",
            "--rows",
            "1500",
            "--seed",
            "5",
            "--out",
            "data/synth",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mut splits: Vec<PathBuf> = std::fs::read_dir(dir.join("data/synth"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_train.csv"))
        .collect();
    splits.sort();
    assert_eq!(splits.len(), 3, "{splits:?}");

    // The coordinator: the page's example, listening on a free loopback port.
    let coordinator = changed(
        &unsigned(&example(&doc, "coordinator.toml")),
        "listen = \"0.0.0.0:7443\"",
        "listen = \"127.0.0.1:0\"",
    );
    // Its metrics, and each node's below, on any free port: several run on this one machine.
    let coordinator = changed(
        &coordinator,
        "listen = \"127.0.0.1:9464\"",
        "listen = \"127.0.0.1:0\"",
    );
    std::fs::write(dir.join("coordinator.toml"), coordinator).unwrap();
    let mut hub = start(dir, "coordinator", "coordinator", "coordinator.toml");
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        match std::fs::read_to_string(dir.join("coordinator.address")) {
            Ok(a) if !a.trim().is_empty() => break a.trim().to_owned(),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("the coordinator wrote no address: {}", hub.log()),
        }
    };
    let at = |text: &str| {
        changed(
            text,
            "address = \"hub.example:7443\"",
            &format!("address = \"{address}\""),
        )
    };

    // Each agency's node: the page's example with its own certificate, data and state, and no
    // public record count (the job's statistics round estimates it).
    let mut nodes = Vec::new();
    let agencies = [("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")];
    for ((agency, country), train) in agencies.iter().zip(&splits) {
        let test = PathBuf::from(train.to_string_lossy().replace("_train.csv", "_test.csv"));
        let mut text = at(&unsigned(&example(&doc, "node.toml")));
        text = changed(
            &text,
            "state_dir = \"node-state\"",
            &format!("state_dir = \"state-{agency}\""),
        );
        text = changed(
            &text,
            "agency-DE-DE-BKA",
            &format!("agency-{country}-{agency}"),
        );
        text = changed(
            &text,
            "\"data/train.csv\"",
            &format!("{:?}", train.display().to_string()),
        );
        text = changed(
            &text,
            "\"data/test.csv\"",
            &format!("{:?}", test.display().to_string()),
        );
        text = changed(&text, "public_records = 80000\n", "");
        text = changed(
            &text,
            "listen = \"127.0.0.1:9465\"",
            "listen = \"127.0.0.1:0\"",
        );
        let config = format!("node-{agency}.toml");
        std::fs::write(dir.join(&config), text).unwrap();
        nodes.push((config.clone(), start(dir, agency, "node", &config)));
    }
    // The operator: the page's example.
    std::fs::write(
        dir.join("operator.toml"),
        at(&example(&doc, "operator.toml")),
    )
    .unwrap();
    let op = ["--config", "operator.toml"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed, _) = treaty(dir, &["agencies", op[0], op[1]]);
        if agencies.iter().all(|(a, _)| listed.contains(a)) {
            break;
        }
        assert!(Instant::now() < deadline, "not all connected: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = treaty(
        dir,
        &[
            "federation",
            "create",
            op[0],
            op[1],
            "--name",
            "eu-customs",
            "--purpose",
            "narcotics",
            "--member",
            "DE-BKA:DE",
            "--member",
            "NL-POLITIE:NL",
            "--member",
            "FR-DOUANE:FR",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");

    // A schema with four problems: a numeric column without bounds, an unknown kind, a column
    // the registry does not know, a duplicate name. Each is named at once, by the check and by
    // `job train`, which creates no job.
    let good = std::fs::read_to_string(dir.join("data/synth/schema.toml")).unwrap();
    let mut bad = changed(&good, "lower = 0.0\nupper = 10000000.0\n", "");
    bad = changed(&bad, "kind = \"boolean\"", "kind = \"bool\"");
    bad.push_str(
        "\n[[column]]\nname = \"country_of_birth\"\nkind = \"categorical\"\nvalues = [\"DE\"]\n",
    );
    bad.push_str("\n[[column]]\nname = \"origin\"\nkind = \"categorical\"\nvalues = [\"CO\"]\n");
    std::fs::write(dir.join("bad.toml"), bad).unwrap();
    let problems = ["declared_value_eur", "bool", "country_of_birth", "origin"];
    let (code, out, err) = treaty(
        dir,
        &[
            "schema",
            "check",
            "bad.toml",
            "--registry",
            "policies/registry.toml",
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    let said = format!("{out}{err}");
    for p in problems {
        assert!(said.contains(p), "`{p}` not named: {said}");
    }
    let train = |schema: &str| {
        treaty(
            dir,
            &[
                "job",
                "train",
                op[0],
                op[1],
                "--federation",
                "eu-customs",
                "--schema",
                schema,
                "--target-epsilon",
                "1",
                "--rounds",
                "5",
                "--retention-days",
                "180",
            ],
        )
    };
    let (code, out, err) = train("bad.toml");
    assert_eq!(code, 2, "{out}{err}");
    let said = format!("{out}{err}");
    for p in problems {
        assert!(said.contains(p), "`{p}` not named by job train: {said}");
    }
    let (_, jobs, _) = treaty(dir, &["job", "list", op[0], op[1]]);
    assert!(!jobs.contains("job-"), "a job was created: {jobs}");

    // The good schema: checked, then trained on, the plan shown before the job starts.
    let (code, out, err) = treaty(
        dir,
        &[
            "schema",
            "check",
            "data/synth/schema.toml",
            "--registry",
            "policies/registry.toml",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = train("data/synth/schema.toml");
    assert_eq!(code, 0, "{out}{err}");
    let plan = out.find("privacy plan: epsilon 1 per agency").expect(&out);
    // The plan is shown before the job is submitted. (Whether the watch sees "job started" or
    // the job already running depends on when it subscribes.)
    let created = out.find("job job-000001 created").expect(&out);
    assert!(plan < created, "{out}");
    assert!(out.contains("job succeeded after 5 round(s)"), "{out}");
    assert!(
        out.contains("[final]    the final model job-000001/r5"),
        "{out}"
    );
    let (code, shown, err) = treaty(dir, &["job", "show", op[0], op[1], "--job", "job-000001"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains("  final model job-000001/r5: 3 of 3 invited"),
        "{shown}"
    );

    // Each agency reads its own ledger while its node runs: every release of the job, within
    // the target.
    for (config, _) in &nodes {
        let (code, out, err) = treaty(dir, &["node", "ledger", "--config", config, "--json"]);
        assert_eq!(code, 0, "{err}");
        let ledger: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(ledger["source"], "running_node", "{ledger}");
        // The statistics round, 5 training rounds and the final model's evaluation.
        assert_eq!(ledger["entries"].as_array().unwrap().len(), 7, "{ledger}");
        let spent = ledger["spent"]["epsilon"].as_f64().unwrap();
        assert!(spent <= 1.0 && spent > 0.99, "{ledger}");
    }
    for (_, node) in &mut nodes {
        node.stop(Duration::from_secs(10));
    }
    hub.stop(Duration::from_secs(10));
}
