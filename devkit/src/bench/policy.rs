//! `treaty bench policy`: deciding a round of 30 and 64 countries, as a whole command and as
//! the engine alone.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use treaty_policies::decide::{Request, decide};
use treaty_policies::load::PolicyDir;
use treaty_policies::registry::Registry;

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

/// Writes `countries` policies (2 agencies each) into a new directory.
fn policy_instance(
    countries: &[String],
    shape: Shape,
    seed: u64,
) -> anyhow::Result<PolicyInstance> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    let list: Vec<String> = countries.iter().map(|c| format!("{c:?}")).collect();
    std::fs::write(
        dir.path().join("registry.toml"),
        format!(
            "registry_version = \"bench-1\"\ncountries = [{}]\n\n[purposes]\nnarcotics = \"Narcotics\"\n\n[fields]\nshipment_value = \"ordinary\"\n\n[groups.ALL]\nmembers = [{}]\n",
            list.join(", "),
            list.join(", ")
        ),
    )?;
    for (i, c) in countries.iter().enumerate() {
        let mut rules = format!(
            "[[rule]]\nid = \"{c}-ALL\"\neffect = \"allow\"\npurposes = [\"narcotics\"]\nrecipients = [\"ALL\"]\nlegal_basis = \"LED Art. 1(3)\"\n"
        );
        let denied: Vec<String> = countries
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
            .map(|(_, d)| format!("{d:?}"))
            .collect();
        if !denied.is_empty() {
            rules += &format!(
                "\n[[rule]]\nid = \"{c}-DENY\"\neffect = \"deny\"\nrecipients = [{}]\nlegal_basis = \"bilateral\"\n",
                denied.join(", ")
            );
        }
        std::fs::write(
            dir.path().join(format!("{c}.toml")),
            format!(
                "schema_version = 1\n\n[policy]\ncountry = \"{c}\"\nversion = \"1\"\nvalid_from = 2025-01-01\nvalid_until = 2030-12-31\nlegal_basis = [\"LED\"]\n\n[coordinator]\nallowed_jurisdictions = [\"ALL\"]\n\n[privacy]\nmax_epsilon_per_round = 1.0\nmax_epsilon_total = 10.0\nmax_delta = 1e-5\nmin_participants = {}\nmin_distinct_countries = {}\n\n{rules}",
                2 + i % 5,
                1 + i % 4
            ),
        )?;
    }
    let participants: Vec<String> = countries
        .iter()
        .flat_map(|c| {
            (1..=2).map(move |k| {
                format!(
                    "{{\"agency\": \"{c}-{k}\", \"country\": \"{c}\", \"cumulative_epsilon\": 0.5}}"
                )
            })
        })
        .collect();
    std::fs::write(
        dir.path().join("request.json"),
        format!(
            "{{\"federation\": \"bench\", \"round\": 1, \"date\": \"2026-01-15\", \"purpose\": \"narcotics\", \"coordinator_country\": {:?}, \"epsilon_per_round\": 0.25, \"delta\": 1e-6, \"fields\": [\"shipment_value\"], \"participants\": [{}]}}",
            countries[0],
            participants.join(", ")
        ),
    )?;
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
        let request: Request =
            serde_json::from_str(&std::fs::read_to_string(dir.join("request.json"))?)?;
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
        outln!(
            "    {name:<25} {admitted:>8}   {:>18.2}   {:>19.3}   {:>11.3}",
            median(command_times),
            median(load_times),
            median(decide_times)
        );
    }
    Ok(())
}
