//! The tools of legal teams, end to end on files: policy tests, lints (including the
//! shadowed-allow check against a day-by-day brute force), diffs, the matrix, and signing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, as in #[test] functions

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use treaty_policies::{
    Cell, Date, Effect, Loaded, Outcome, Policy, PolicyDir, Reason, Registry, Shadow, TestFile,
    TrustedKeys, decide, diff, lint, load_private_key, looks_like_policy_of, matrix, shadow,
    sign_file, write_key_pair,
};

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample")
}

fn sample_registry() -> Registry {
    Registry::load(&sample().join("registry.toml")).unwrap()
}

fn date(s: &str) -> Date {
    Date::parse(s).unwrap()
}

/// A copy of the sample directory to change.
fn sample_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(sample()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

fn read_policy(registry: &Registry, path: &Path) -> (Policy, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let country = treaty_policies::country_of(path);
    let policy = Policy::parse(
        &path.display().to_string(),
        &text,
        registry,
        country.as_deref(),
    )
    .unwrap_or_else(|e| panic!("{:?}", e.diagnostics()));
    (policy, text)
}

fn run_tests(dir: &Path) -> Vec<String> {
    let registry = sample_registry();
    let text = std::fs::read_to_string(dir.join("DE.tests.toml")).unwrap();
    let file =
        TestFile::parse("DE.tests.toml", &text, &registry).unwrap_or_else(|p| panic!("{p:?}"));
    file.run(&registry, &PolicyDir::new(dir, None))
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_sample_policy_tests_pass() {
    let lines = run_tests(&sample());
    assert!(lines.len() >= 5, "{lines:?}");
    for line in &lines {
        assert!(line.starts_with("ok "), "{line}");
    }
}

#[test]
fn a_policy_change_fails_the_test_that_guards_it() {
    // Germany's deny of the US is narrowed to Canada: the US is no longer denied, only not
    // allowed, and the test that expects RECIPIENT_DENIED says so.
    let dir = sample_copy();
    edit(
        &dir.path().join("DE.toml"),
        "id = \"DE-US-DENY\"\neffect = \"deny\"\nrecipients = [\"US\"]",
        "id = \"DE-US-DENY\"\neffect = \"deny\"\nrecipients = [\"CA\"]",
    );
    let failing: Vec<String> = run_tests(dir.path())
        .into_iter()
        .filter(|l| !l.starts_with("ok "))
        .collect();
    assert_eq!(
        failing,
        [
            "FAIL Germany's deny keeps German agencies out of a round with the US: expected DE-BKA excluded with RECIPIENT_DENIED, got RECIPIENT_NOT_ALLOWED"
        ]
    );
}

#[test]
fn a_test_against_a_broken_policy_fails_not_crashes() {
    let dir = sample_copy();
    edit(&dir.path().join("NL.toml"), "max_delta", "max_detla");
    let lines = run_tests(dir.path());
    let first = &lines[0];
    assert!(
        first.starts_with(
            "FAIL the spec's example round: expected admitted [DE-BKA, NL-POLITIE, FR-OFAST], got "
        ),
        "{first}"
    );
    assert!(
        first.contains("expected NL-POLITIE not excluded, got excluded with POLICY_SCHEMA_ERROR"),
        "{first}"
    );
    // An unusable request is an error of its own, not a pass or a fail.
    let registry = sample_registry();
    let text = std::fs::read_to_string(sample().join("DE.tests.toml")).unwrap();
    let mut file = TestFile::parse("DE.tests.toml", &text, &registry).unwrap();
    file.tests[0].request.purpose = "poaching".into();
    let results = file.run(&registry, &PolicyDir::new(sample(), None));
    assert!(matches!(&results[0].outcome, Outcome::Error(e) if e.contains("poaching")));
}

#[test]
fn the_sample_policies_lint_clean_and_a_careless_one_does_not() {
    let registry = sample_registry();
    for country in ["DE", "FR", "NL", "PL", "US"] {
        let (policy, text) = read_policy(&registry, &sample().join(format!("{country}.toml")));
        let w = lint(&registry, &policy, country, &text, date("2025-09-01"));
        assert!(w.is_empty(), "{country}: {w:?}");
    }
    // Germany adds an allow for Canada under a GDPR adequacy decision, and a deny of all Five
    // Eyes countries that overrides both it and DE-GB.
    let dir = sample_copy();
    let path = dir.path().join("DE.toml");
    let text = std::fs::read_to_string(&path).unwrap()
        + "\n[[rule]]\nid = \"DE-CA\"\neffect = \"allow\"\npurposes = [\"narcotics\"]\nrecipients = [\"CA\"]\nlegal_basis = \"Art. 45 GDPR: adequacy decision 2002/2/EC\"\n\n[[rule]]\nid = \"DE-NO-FVEY\"\neffect = \"deny\"\nrecipients = [\"FIVE_EYES\"]\nlegal_basis = \"x\"\n";
    std::fs::write(&path, &text).unwrap();
    let (policy, text) = read_policy(&registry, &path);
    let w = lint(&registry, &policy, "DE.toml", &text, date("2025-09-01"));
    let shown: Vec<(String, &str)> = w
        .iter()
        .map(|w| {
            let rule = policy.rules.iter().find(|r| r.line == w.line).unwrap();
            (rule.id.clone(), w.code)
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("DE-GB".to_string(), "shadowed-allow"),
            ("DE-CA".to_string(), "gdpr-adequacy"),
            ("DE-CA".to_string(), "shadowed-allow"),
        ]
    );
    // DE-EU (EU and the Schengen associates) is not shadowed: none of them is in Five Eyes.
    assert!(
        w[0].to_string().contains("deny rule DE-NO-FVEY"),
        "{}",
        w[0]
    );
}

/// A small deterministic generator, for the brute-force comparison.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn subset(&mut self, items: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = items
            .iter()
            .filter(|_| self.next().is_multiple_of(3))
            .map(|s| format!("\"{s}\""))
            .collect();
        if out.is_empty() {
            out.push(format!("\"{}\"", self.pick(items)));
        }
        out
    }
}

#[test]
fn shadowed_allow_agrees_with_checking_every_day() {
    // Membership changes inside the policy's validity (GB leaves EU and later joins ATLANTIC,
    // CH joins EU, US leaves OLD, each on a day of its own), and rule
    // dates around those changes: the lint must say "always overridden" exactly when, on every
    // day of the allow's validity, every foreign country it covers is denied for every purpose.
    let registry = Registry::parse(
        "r.toml",
        r#"
registry_version = "r"
countries = ["DE", "FR", "GB", "NL", "US", "CH"]
[purposes]
narcotics = "n"
firearms = "f"
[groups.EU]
members = ["FR", "NL"]
[[groups.EU.dated]]
country = "GB"
until = 2020-01-31
[[groups.EU.dated]]
country = "CH"
from = 2020-06-01
[groups.ATLANTIC]
members = ["US"]
[[groups.ATLANTIC.dated]]
country = "GB"
from = 2020-03-01
[groups.OLD]
members = []
[[groups.OLD.dated]]
country = "US"
until = 2020-04-30
"#,
    )
    .unwrap();
    let tokens = [
        "EU", "ATLANTIC", "GB", "US", "CH", "FR", "LOCAL", "OLD", "DE",
    ];
    // Rule dates that fall between the membership changes, never on them, so that a missed
    // membership boundary is not hidden by a rule's.
    let dates = [
        "",
        "",
        "",
        "2019-10-15",
        "2020-01-20",
        "2020-02-10",
        "2020-03-15",
        "2020-05-20",
        "2020-06-15",
        "2020-09-30",
    ];
    let purposes = ["narcotics", "firearms"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut overridden, mut effective, mut nobody) = (0, 0, 0);
    for _ in 0..2000 {
        let mut rules = String::new();
        let n_denies = 1 + rng.next() % 3;
        for i in 0..=n_denies {
            let allow = i == 0;
            let dates_of = |rng: &mut Rng| {
                let (a, b) = (rng.pick(&dates), rng.pick(&dates));
                let (from, until) = if a <= b || a.is_empty() || b.is_empty() {
                    (a, b)
                } else {
                    (b, a)
                };
                let mut s = String::new();
                if !from.is_empty() {
                    s += &format!("valid_from = {from}\n");
                }
                if !until.is_empty() {
                    s += &format!("valid_until = {until}\n");
                }
                s
            };
            let validity = dates_of(&mut rng);
            let purposes_line = if allow || rng.next().is_multiple_of(2) {
                format!("purposes = [{}]\n", rng.subset(&purposes).join(", "))
            } else {
                String::new()
            };
            rules += &format!(
                "[[rule]]\nid = \"R{i}\"\neffect = \"{}\"\n{purposes_line}recipients = [{}]\nlegal_basis = \"x\"\n{validity}\n",
                if allow { "allow" } else { "deny" },
                rng.subset(&tokens).join(", ")
            );
        }
        let text = format!(
            "schema_version = 1\n[policy]\ncountry = \"DE\"\nversion = \"1\"\nvalid_from = 2019-09-01\nvalid_until = 2020-12-31\nlegal_basis = [\"x\"]\n[groups]\nLOCAL = [\"GB\", \"NL\"]\n[coordinator]\nallowed_jurisdictions = [\"EU\"]\n[privacy]\nmax_epsilon_per_round = 1.0\nmax_epsilon_total = 8.0\nmax_delta = 1e-5\n{rules}"
        );
        let policy = Policy::parse("DE.toml", &text, &registry, Some("DE"))
            .unwrap_or_else(|e| panic!("{:?}\n{text}", e.diagnostics()));
        let allow = &policy.rules[0];
        let from = allow
            .valid_from
            .map_or(policy.valid_from, |f| f.max(policy.valid_from));
        let until = allow
            .valid_until
            .map_or(policy.valid_until, |u| u.min(policy.valid_until));
        if from > until {
            continue;
        }
        // Day by day.
        let (mut foreign, mut open) = (false, false);
        let mut day = Some(from);
        while let Some(d) = day.filter(|d| *d <= until) {
            for c in registry.countries.iter().filter(|c| *c != "DE") {
                if policy
                    .match_any(&registry, &allow.recipients, c, d)
                    .is_none()
                {
                    continue;
                }
                foreign = true;
                for p in allow.purposes.iter().flatten() {
                    let denied = policy.rules.iter().any(|r| {
                        r.effect == Effect::Deny
                            && r.active_on(d)
                            && r.covers(p)
                            && policy.match_any(&registry, &r.recipients, c, d).is_some()
                    });
                    open |= !denied;
                }
            }
            day = d.next_day();
        }
        let got = shadow(&registry, &policy, 0);
        match (foreign, open) {
            (true, false) => {
                overridden += 1;
                assert!(
                    matches!(got, Shadow::AlwaysOverridden(_)),
                    "{got:?}\n{text}"
                );
            }
            (true, true) => {
                effective += 1;
                assert_eq!(got, Shadow::Effective, "{text}");
            }
            (false, _) => {
                nobody += 1;
                assert!(
                    matches!(got, Shadow::MatchesNobody | Shadow::Effective),
                    "{got:?}\n{text}"
                );
            }
        }
    }
    // The generator reaches every case.
    assert!(
        overridden > 10 && effective > 10 && nobody > 0,
        "{overridden} {effective} {nobody}"
    );
}

#[test]
fn a_deny_added_in_the_new_version_loses_the_pair() {
    let registry = sample_registry();
    let dir = sample_copy();
    let path = dir.path().join("DE.toml");
    let (old, _) = read_policy(&registry, &path);
    edit(
        &path,
        "version = \"2025-03-01.2\"",
        "version = \"2025-10-01\"",
    );
    let text = std::fs::read_to_string(&path).unwrap()
        + "\n[[rule]]\nid = \"DE-NL-DENY\"\neffect = \"deny\"\npurposes = [\"firearms\"]\nrecipients = [\"NL\"]\nlegal_basis = \"x\"\n";
    std::fs::write(&path, text).unwrap();
    let (new, _) = read_policy(&registry, &path);
    let d = diff(&registry, &old, &new, date("2025-09-01"));
    let lost: Vec<(&str, &str)> = d
        .loses
        .recipients
        .iter()
        .map(|p| (p.country.as_str(), p.purpose.as_str()))
        .collect();
    assert_eq!(lost, [("NL", "firearms")]);
    assert_eq!(d.loses.recipients[0].new_rules, ["DE-NL-DENY"]);
    assert_eq!(d.loses.recipients[0].old_rules, ["DE-EU"]);
    assert!(d.gains.is_empty(), "{:?}", d.gains);
    assert_eq!(d.rules.added, ["DE-NL-DENY"]);
    let text = d.text();
    assert!(
        text.contains("loses:\n  recipient NL for firearms (denied by rule DE-NL-DENY; was allowed by rule DE-EU)\n"),
        "{text}"
    );
    assert!(
        text.contains("policy.version: 2025-03-01.2 -> 2025-10-01"),
        "{text}"
    );
}

#[test]
fn the_matrix_shows_one_way_acceptance_and_fails_closed() {
    let registry = sample_registry();
    let dir = sample_copy();
    let load = |dir: &Path| PolicyDir::new(dir, None).load_all(&registry, ["DE", "FR", "NL", "US"]);
    let m = matrix(
        &registry,
        &load(dir.path()),
        "narcotics",
        date("2025-09-01"),
    );
    // The US accepts Germany (EU); Germany denies the US.
    assert_eq!(m.cell("DE", "US"), Some(Cell::ColumnAccepts));
    assert_eq!(m.cell("US", "DE"), Some(Cell::RowAccepts));
    // The Netherlands and the US accept each other (Five Eyes, EU).
    assert_eq!(m.cell("NL", "US"), Some(Cell::Mutual));
    assert_eq!(m.cell("DE", "FR"), Some(Cell::Mutual));
    // A broken French policy: France shares with nobody.
    edit(&dir.path().join("FR.toml"), "[privacy]", "[privacy\n");
    let broken = matrix(
        &registry,
        &load(dir.path()),
        "narcotics",
        date("2025-09-01"),
    );
    let fr = broken.countries.iter().position(|c| c == "FR").unwrap();
    assert_eq!(broken.status[fr], "broken (not valid TOML)");
    for c in ["DE", "NL", "US"] {
        assert_eq!(broken.cell("FR", c), Some(Cell::Neither));
        assert_eq!(broken.cell(c, "FR"), Some(Cell::Neither));
    }
    assert_eq!(broken.cell("DE", "NL"), Some(Cell::Mutual));
}

#[test]
fn signed_policies_load_and_tampered_ones_are_excluded() {
    let registry = sample_registry();
    let dir = sample_copy();
    let keys_dir = tempfile::tempdir().unwrap();
    let public_dir = tempfile::tempdir().unwrap();
    for country in ["DE", "NL"] {
        let (private, public) = write_key_pair(keys_dir.path(), country).unwrap();
        std::fs::copy(&public, public_dir.path().join(format!("{country}.pub"))).unwrap();
        let key = load_private_key(&private).unwrap();
        sign_file(
            &key,
            Some(country),
            &dir.path().join(format!("{country}.toml")),
            looks_like_policy_of,
        )
        .unwrap();
    }
    let keys = TrustedKeys::load(public_dir.path()).unwrap();
    let policies = PolicyDir::new(dir.path(), Some(keys.clone()));
    assert!(matches!(policies.load(&registry, "DE").0, Loaded::Valid(_)));
    // Changed after signing: not applied. Unsigned FR: not applied either.
    edit(
        &dir.path().join("NL.toml"),
        "min_participants = 2",
        "min_participants = 1",
    );
    let loaded: BTreeMap<String, Loaded> = policies.load_all(&registry, ["DE", "NL", "FR"]);
    assert!(
        matches!(&loaded["NL"], Loaded::BadSignature { problem, .. } if problem.contains("changed after it was signed"))
    );
    assert!(
        matches!(&loaded["FR"], Loaded::BadSignature { problem, .. } if problem.contains("no public key for FR"))
    );
    let request =
        serde_json::from_str(&std::fs::read_to_string(sample().join("request.json")).unwrap())
            .unwrap();
    let mut loaded = loaded;
    loaded.insert("US".into(), policies.load(&registry, "US").0);
    let d = decide(&registry, &loaded, &request).unwrap();
    let nl = d
        .excluded
        .iter()
        .find(|e| e.agency == "NL-POLITIE")
        .unwrap();
    assert_eq!(nl.reason, Reason::PolicySignatureInvalid);
}
