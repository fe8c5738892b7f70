//! `treaty bench policy`: deciding a round of 30 and 64 countries, as a whole command and as
//! the engine alone.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use treaty_policies::{PolicyDir, Registry, Request, decide};

use crate::outln;

/// One generated policy benchmark instance: a registry, 30 policies, a request of 60 agencies.
struct PolicyInstance {
    dir: tempfile::TempDir,
}

/// How the generated countries accept one another.
#[derive(Clone, Copy)]
enum Shape {
    /// Every country accepts every other (EU-style) but for a few bilateral denies.
    Eu,
    /// Each country denies each other with probability 1/2.
    Random,
    /// Countries deny each other in disjoint pairs: 2^(n/2) maximal sets of equal size, the
    /// hard case for enumerating them.
    Pairs,
}

/// The policy of every generated country; `country`, the privacy minimums and the rules are
/// set per country.
const POLICY_TEMPLATE: &str = r#"schema_version = 1

[policy]
country = "XX"
version = "1"
valid_from = 2025-01-01
valid_until = 2030-12-31
legal_basis = ["LED"]

[coordinator]
allowed_jurisdictions = ["ALL"]

[privacy]
max_epsilon_per_round = 1.0
max_epsilon_total = 10.0
max_delta = 1e-5
"#;

/// Writes `countries` policies (2 agencies each) into a new directory.
fn policy_instance(
    countries: &[String],
    shape: Shape,
    seed: u64,
) -> anyhow::Result<PolicyInstance> {
    use rand::{Rng, SeedableRng};
    use toml::{Table, Value};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    let strings = |v: &[&str]| Value::Array(v.iter().map(|s| Value::from(*s)).collect());
    let list = Value::Array(countries.iter().map(|c| Value::from(c.as_str())).collect());
    let mut registry = Table::new();
    registry.insert("registry_version".into(), "bench-1".into());
    registry.insert("countries".into(), list.clone());
    registry.insert(
        "purposes".into(),
        Value::Table(Table::from_iter([("narcotics".into(), "Narcotics".into())])),
    );
    registry.insert(
        "fields".into(),
        Value::Table(Table::from_iter([(
            "shipment_value".into(),
            "ordinary".into(),
        )])),
    );
    registry.insert(
        "groups".into(),
        Value::Table(Table::from_iter([(
            "ALL".into(),
            Value::Table(Table::from_iter([("members".into(), list)])),
        )])),
    );
    std::fs::write(
        dir.path().join("registry.toml"),
        toml::to_string(&registry)?,
    )?;
    for (i, c) in countries.iter().enumerate() {
        let mut policy: Table = toml::from_str(POLICY_TEMPLATE)?;
        if let Some(Value::Table(section)) = policy.get_mut("policy") {
            section.insert("country".into(), c.as_str().into());
        }
        if let Some(Value::Table(privacy)) = policy.get_mut("privacy") {
            privacy.insert(
                "min_participants".into(),
                Value::Integer(2 + (i % 5) as i64),
            );
            privacy.insert(
                "min_distinct_countries".into(),
                Value::Integer(1 + (i % 4) as i64),
            );
        }
        let mut rules = vec![Value::Table(Table::from_iter([
            ("id".into(), format!("{c}-ALL").into()),
            ("effect".into(), "allow".into()),
            ("purposes".into(), strings(&["narcotics"])),
            ("recipients".into(), strings(&["ALL"])),
            ("legal_basis".into(), "LED Art. 1(3)".into()),
        ]))];
        let denied: Vec<&str> = countries
            .iter()
            .enumerate()
            .filter(|&(j, _)| {
                j != i
                    && match shape {
                        Shape::Eu => i % 5 == 0 && (i * 7 + j) % 29 == 0,
                        Shape::Random => rng.random_bool(0.5),
                        Shape::Pairs => j == i ^ 1,
                    }
            })
            .map(|(_, d)| d.as_str())
            .collect();
        if !denied.is_empty() {
            rules.push(Value::Table(Table::from_iter([
                ("id".into(), format!("{c}-DENY").into()),
                ("effect".into(), "deny".into()),
                ("recipients".into(), strings(&denied)),
                ("legal_basis".into(), "bilateral".into()),
            ])));
        }
        policy.insert("rule".into(), Value::Array(rules));
        std::fs::write(
            dir.path().join(format!("{c}.toml")),
            toml::to_string(&policy)?,
        )?;
    }
    let participants: Vec<serde_json::Value> = countries
        .iter()
        .flat_map(|c| {
            (1..=2).map(move |k| {
                serde_json::json!({"agency": format!("{c}-{k}"), "country": c, "cumulative_epsilon": 0.5})
            })
        })
        .collect();
    let request = serde_json::json!({
        "federation": "bench", "round": 1, "date": "2026-01-15", "purpose": "narcotics",
        "coordinator_country": countries[0], "epsilon_per_round": 0.25, "delta": 1e-6,
        "fields": ["shipment_value"], "participants": participants,
    });
    std::fs::write(dir.path().join("request.json"), request.to_string())?;
    Ok(PolicyInstance { dir })
}

/// `treaty policy decide` for 30 countries and 60 agencies: the whole command (a process that
/// reads the registry, the 30 files and the request, decides and prints), and the decision
/// alone, on an EU-style instance and on a random one.
pub fn policy(repeats: usize, exe: &Path) -> anyhow::Result<()> {
    let code = |i: usize| {
        format!(
            "{}{}",
            (b'A' + (i / 26) as u8) as char,
            (b'A' + (i % 26) as u8) as char
        )
    };
    let thirty: Vec<String> = (0..30).map(code).collect();
    let sixty_four: Vec<String> = (0..64).map(code).collect();
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    outln!("treaty policy decide, 2 agencies per country, median of {repeats} runs");
    let mut rows = Vec::new();
    outln!(
        "    instance                  admitted   whole command (ms)   parse + decide (ms)   decide (ms)"
    );
    for (name, countries, shape) in [
        ("30 EU-style", &thirty, Shape::Eu),
        ("30 random 1/2", &thirty, Shape::Random),
        ("64 in deny pairs", &sixty_four, Shape::Pairs),
    ] {
        let inst = policy_instance(countries, shape, 7)?;
        let dir = inst.dir.path();
        let args = [
            "policy",
            "decide",
            "--registry",
            &dir.join("registry.toml").to_string_lossy(),
            "--policies",
            &dir.to_string_lossy(),
            "--request",
            &dir.join("request.json").to_string_lossy(),
        ]
        .map(|s| s.to_string());
        let mut command_times = Vec::new();
        let mut admitted = 0;
        for _ in 0..repeats {
            let t = Instant::now();
            let out = std::process::Command::new(exe).args(&args).output()?;
            command_times.push(t.elapsed().as_secs_f64() * 1e3);
            if !out.status.success() {
                bail!(
                    "treaty policy decide failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let decision: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            admitted = decision["admitted"].as_array().map_or(0, Vec::len);
        }
        let request = Request::load(&dir.join("request.json")).map_err(anyhow::Error::msg)?;
        let mut load_times = Vec::new();
        let mut decide_times = Vec::new();
        for _ in 0..repeats {
            let t = Instant::now();
            let registry =
                Registry::load(&dir.join("registry.toml")).map_err(anyhow::Error::msg)?;
            let loaded = PolicyDir::new(dir, None).load_all(
                &registry,
                request.participants.iter().map(|p| p.country.as_str()),
            );
            let t2 = Instant::now();
            let d = decide(&registry, &loaded, &request)?;
            decide_times.push(t2.elapsed().as_secs_f64() * 1e3);
            load_times.push(t.elapsed().as_secs_f64() * 1e3);
            if d.admitted.len() != admitted {
                bail!("the library and the command disagree");
            }
        }
        let (command, load, decided) = (
            median(command_times),
            median(load_times),
            median(decide_times),
        );
        outln!("    {name:<25} {admitted:>8}   {command:>18.2}   {load:>19.3}   {decided:>11.3}");
        rows.push(serde_json::json!({
            "instance": name, "countries": countries.len(), "admitted": admitted,
            "agencies": request.participants.len(), "command_ms": command,
            "parse_decide_ms": load, "decide_ms": decided,
        }));
    }
    outln!(
        "{}",
        serde_json::json!({"workload": "policy", "repeats": repeats, "results": rows})
    );
    Ok(())
}
