//! The reference documentation cannot rot: the examples of docs/CONFIGURATION.md and
//! docs/MODEL_FILE.md are read out of the pages and run through the real code — each complete
//! configuration loaded by its real type in a directory made by the page's own commands, every
//! key of its table present in the example, every default the table states the one the code
//! applies, every key it calls required refused when left out; the schema example checked and
//! its fields in the sample registry; the example model file read, explained by `treaty model
//! explain` exactly as the page shows, and scored by the page's own script as Treaty scores it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use treaty_coordinator::CoordinatorConfig;
use treaty_coordinator::client::OperatorConfig;
use treaty_node::{ModelFile, NodeConfig};

use crate::common::*;

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn page(name: &str) -> String {
    std::fs::read_to_string(repo().join("docs").join(name)).unwrap()
}

/// The fenced block that follows `<!-- example: NAME -->` on a page.
pub(crate) fn example(page: &str, name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no `{marker}` on the page"));
    let after = &page[start + marker.len()..];
    let fence = after.find("```").unwrap();
    let body = &after[fence..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap() + 1].to_owned()
}

/// The first fenced block of a page tagged `lang` (e.g. `sh`).
pub(crate) fn first_block(page: &str, lang: &str) -> String {
    let start = page.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
    let body = &page[start..];
    body[..body.find("\n```").unwrap() + 1].to_owned()
}

/// The rows of the table that follows `<!-- keys: NAME -->`: each key and its default cell.
fn key_table(page: &str, name: &str) -> Vec<(String, String)> {
    let marker = format!("<!-- keys: {name} -->");
    let start = page.find(&marker).unwrap() + marker.len();
    page[start..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect()
}

/// Every dotted key of a TOML table (tables flattened, `a.b`).
fn dotted_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => dotted_keys(t, &key, out),
            _ => {
                out.insert(key);
            }
        }
    }
}

fn keys_of(table: &toml::Table) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    dotted_keys(table, "", &mut out);
    out
}

/// Removes a dotted key (or a whole `[section]`) from a table.
fn remove(table: &mut toml::Table, key: &str) {
    let key = key.trim_start_matches('[').trim_end_matches(']');
    match key.split_once('.') {
        Some((section, rest)) => {
            if let Some(toml::Value::Table(t)) = table.get_mut(section) {
                remove(t, rest);
            }
        }
        None => {
            table.remove(key);
        }
    }
}

fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    match key.split_once('.') {
        Some((section, rest)) => lookup(table.get(section)?.as_table()?, rest),
        None => table.get(key),
    }
}

/// Loads a configuration file with the real type of its kind; the configuration as loaded,
/// as TOML.
fn load(kind: &str, path: &Path) -> Result<toml::Table, String> {
    fn table<T: serde::Serialize>(t: T) -> toml::Table {
        match toml::Value::try_from(t).unwrap() {
            toml::Value::Table(t) => t,
            other => panic!("{other:?}"),
        }
    }
    match kind {
        "coordinator.toml" => CoordinatorConfig::load(path).map(table),
        "node.toml" => NodeConfig::load(path).map(table),
        "operator.toml" => OperatorConfig::load(path).map(table),
        other => panic!("no configuration kind {other}"),
    }
    .map_err(|e| e.to_string())
}

/// A directory laid out as docs/CONFIGURATION.md says, made by the page's own commands.
fn deployment(page: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(TREATY, bin.join("treaty")).unwrap();
    let commands = first_block(page, "sh").replace("REPO", repo().to_str().unwrap());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .args(["-e", "-c", &commands])
        .env("PATH", path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{commands}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agency's own records (any CSV with a header).
    std::fs::write(dir.path().join("data/train.csv"), "x1,seized\n1.0,0\n").unwrap();
    std::fs::write(dir.path().join("data/test.csv"), "x1,seized\n2.0,1\n").unwrap();
    dir
}

#[test]
fn every_configuration_example_loads_is_complete_and_states_the_true_defaults() {
    let page = page("CONFIGURATION.md");
    let dir = deployment(&page);
    for kind in ["coordinator.toml", "node.toml", "operator.toml"] {
        let text = example(&page, kind);
        let path = dir.path().join(kind);
        std::fs::write(&path, &text).unwrap();
        let loaded = load(kind, &path).unwrap_or_else(|e| panic!("{kind}: {e}"));

        // Complete: the example gives every key the type has, and the table lists each.
        let given: toml::Table = toml::from_str(&text).unwrap();
        let rows = key_table(&page, kind);
        let listed: BTreeSet<String> = rows
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !k.starts_with('['))
            .collect();
        assert_eq!(keys_of(&given), keys_of(&loaded), "{kind}: the example");
        assert_eq!(listed, keys_of(&loaded), "{kind}: the table");

        // The defaults: without every key the table gives a default for, the file loads, and
        // each default is what the code applies (`none`: the key stays absent).
        let mut minimal = given.clone();
        for (key, default) in &rows {
            if default != "required" {
                remove(&mut minimal, key);
            }
        }
        std::fs::write(&path, toml::to_string(&minimal).unwrap()).unwrap();
        let defaults = load(kind, &path).unwrap_or_else(|e| panic!("{kind} minimal: {e}"));
        for (key, default) in &rows {
            let applied = lookup(&defaults, key);
            match default.as_str() {
                // (unless within an optional section left out above)
                "required" => assert_eq!(
                    applied.is_some(),
                    lookup(&minimal, key).is_some(),
                    "{kind}: {key}"
                ),
                "none" => assert!(applied.is_none(), "{kind}: {key} is {applied:?}"),
                stated => {
                    let stated: toml::Table =
                        toml::from_str(&format!("v = {}", stated.trim_matches('`'))).unwrap();
                    assert_eq!(applied, stated.get("v"), "{kind}: the default of {key}");
                }
            }
        }

        // Each required key: left out, the file is refused, naming it.
        for (key, _) in rows.iter().filter(|(_, d)| d == "required") {
            if lookup(&minimal, key).is_none() {
                continue; // within an optional section left out above
            }
            let mut without = minimal.clone();
            remove(&mut without, key);
            std::fs::write(&path, toml::to_string(&without).unwrap()).unwrap();
            let Err(error) = load(kind, &path) else {
                panic!("{kind}: the table says `{key}` is required, but the file loads without it");
            };
            let name = key.rsplit('.').next().unwrap();
            assert!(
                error.contains(&format!("`{name}`")),
                "{kind} without {key}: {error}"
            );
        }
    }
}

#[test]
fn the_schema_example_is_valid_and_its_fields_are_in_the_sample_registry() {
    let page = page("CONFIGURATION.md");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema.toml");
    std::fs::write(&path, example(&page, "schema.toml")).unwrap();
    let schema = treaty_proto::schema::load(&path).unwrap();
    let registry =
        treaty_policies::Registry::load(&repo().join("policies/sample/registry.toml")).unwrap();
    let label = schema.label.clone().unwrap().name;
    for field in schema.columns.iter().map(|c| &c.name).chain([&label]) {
        assert!(registry.fields.contains_key(field), "`{field}`");
    }
}

/// The example model file and records of docs/MODEL_FILE.md, written into `dir`.
fn model_example(page: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("model.json");
    let records = dir.join("records.csv");
    std::fs::write(&model, example(page, "model.json")).unwrap();
    std::fs::write(&records, example(page, "records.csv")).unwrap();
    (model, records)
}

#[test]
fn the_model_file_example_reads_explains_and_scores_as_the_page_says() {
    let page = page("MODEL_FILE.md");
    let dir = tempfile::tempdir().unwrap();
    let (model, records) = model_example(&page, dir.path());

    // The current format, with the encoding Treaty writes for it.
    let file = ModelFile::read(&model).unwrap();
    file.model().unwrap();
    let mut older: serde_json::Value = serde_json::from_str(&example(&page, "model.json")).unwrap();
    older.as_object_mut().unwrap().remove("encoding");
    let older: ModelFile = serde_json::from_value(older).unwrap();
    assert_eq!(older.encoding_of().unwrap(), file.encoding);

    // `treaty model explain` prints what the page shows.
    let out = Command::new(TREATY)
        .args(["model", "explain", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&records)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, example(&page, "explain output"));

    // The page's hand computation of the first record: ln(1 + 20000), standardised with mean
    // 8.5 and standard deviation 1.5, weight 0.6; origin CO (1.2); new_declarant yes (0.9);
    // bias -3.
    let z = -3.0 + 0.6 * ((20_000f64).ln_1p() - 8.5) / 1.5 + 1.2 + 0.9;
    let p = 1.0 / (1.0 + (-z).exp());
    assert!((p - 0.416153).abs() < 5e-7, "{p}");
    assert!(printed.contains(&format!("\nrecord 1 (line 2): p = {p:.4} [")));

    // The page's own scorer, where Python 3.11 or later is at hand.
    let python = Command::new("python3")
        .args(["-c", "import tomllib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        eprintln!("no python3 with tomllib: the page's scorer is not run");
        return;
    }
    let script = dir.path().join("score.py");
    std::fs::write(&script, example(&page, "score.py")).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&model)
        .arg(&records)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scored = String::from_utf8(out.stdout).unwrap();
    assert_eq!(scored, example(&page, "score.py output"));
    let first: f64 = scored.lines().next().unwrap()["line 2: ".len()..]
        .parse()
        .unwrap();
    assert!((first - p).abs() < 1e-12, "{first} against {p}");
}
