//! Tests kept next to a policy (`treaty policy test`): requests with the decision the legal team
//! expects, re-run against the policies whenever they change.
//!
//! A test file is named `<name>.tests.toml` and holds `[[test]]` entries:
//!
//! ```toml
//! [[test]]
//! name = "the US is not a recipient of German data"
//! note = "BVerfG 1 BvR 966/09"            # optional, for the reader
//!
//! [test.request]                          # the fields of the JSON request of the spec
//! federation = "eu-narcotics-routes"
//! round = 1
//! date = "2025-09-01"                     # a string, or a TOML date (2025-09-01)
//! purpose = "narcotics"
//! coordinator_country = "NL"
//! epsilon_per_round = 0.25
//! delta = 1e-6
//! fields = ["shipment_value"]             # optional, like every optional request field
//! [[test.request.participants]]
//! agency = "DE-BKA"
//! country = "DE"
//! cumulative_epsilon = 0.0
//!
//! [test.expect]                           # at least one of the three
//! admitted = ["DE-BKA", "NL-POLITIE"]
//! round_proceeds = true
//! excluded = { "US-DEA" = "REJECTED_BY_PARTICIPANT" }
//! ```
//!
//! Choices, written down:
//! - The request has the same fields, required or optional, as the JSON request, so a request
//!   can be moved between a test and `treaty policy decide` unchanged.
//! - `admitted` is the exact set of admitted agencies (their order does not matter).
//! - `excluded` is the exact set of excluded agencies, each with its primary reason (the
//!   decision's `reason`, the first of `all_reasons`): an agency excluded but not listed fails
//!   the test, so a new exclusion is never missed.
//! - A test that expects nothing is an error (it could never fail), as are unknown keys, a
//!   reason code that does not exist, an agency in `expect` that is not a participant, and a
//!   request the registry cannot make sense of (unknown purpose, field or coordinator country).
//!   Participants of countries outside the registry are allowed: the decision excludes them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::date::Date;
use crate::decide::{Decision, Loaded, Participant, Reason, Request, decide};
use crate::load::PolicyDir;
use crate::registry::Registry;
use crate::source::{Diagnostic, Reader, Source, Value, did_you_mean, parse_toml};

/// What a test expects of the decision; at least one part is present.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expect {
    /// The exact set of admitted agencies.
    pub admitted: Option<Vec<String>>,
    pub round_proceeds: Option<bool>,
    /// The exact set of excluded agencies, each with its primary reason.
    pub excluded: Option<BTreeMap<String, Reason>>,
}

/// One test: a request and what its decision must be.
#[derive(Clone, Debug)]
pub struct PolicyTest {
    pub name: String,
    /// The line of the test's `name`.
    pub line: usize,
    pub note: Option<String>,
    pub request: Request,
    pub expect: Expect,
}

/// A parsed test file.
#[derive(Clone, Debug)]
pub struct TestFile {
    pub file: String,
    pub tests: Vec<PolicyTest>,
}

/// How one test went.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass,
    /// Each difference as `expected ..., got ...`.
    Fail(Vec<String>),
    /// The request could not be decided at all.
    Error(String),
}

/// One test's name, line and outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct TestResult {
    pub name: String,
    pub line: usize,
    pub outcome: Outcome,
}

impl fmt::Display for TestResult {
    /// `ok NAME`, `FAIL NAME: expected ..., got ...; ...` or `ERROR NAME: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass => write!(f, "ok {}", self.name),
            Outcome::Fail(diffs) => write!(f, "FAIL {}: {}", self.name, diffs.join("; ")),
            Outcome::Error(e) => write!(f, "ERROR {}: {e}", self.name),
        }
    }
}

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
}

impl Summary {
    pub fn add(&mut self, result: &TestResult) {
        match result.outcome {
            Outcome::Pass => self.passed += 1,
            Outcome::Fail(_) => self.failed += 1,
            Outcome::Error(_) => self.errors += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.passed + self.failed + self.errors
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.total() == 1 { "" } else { "s" };
        write!(
            f,
            "{} test{s}: {} passed, {} failed",
            self.total(),
            self.passed,
            self.failed
        )?;
        if self.errors > 0 {
            write!(f, ", {} could not run", self.errors)?;
        }
        Ok(())
    }
}

const TEST_KEYS: [&str; 4] = ["name", "note", "request", "expect"];
const REQUEST_KEYS: [&str; 13] = [
    "federation",
    "round",
    "date",
    "purpose",
    "coordinator_country",
    "epsilon_per_round",
    "delta",
    "fields",
    "model_retention_days",
    "onward_transfer",
    "secure_aggregation",
    "round_min_participants",
    "participants",
];
const PARTICIPANT_KEYS: [&str; 3] = ["agency", "country", "cumulative_epsilon"];
const EXPECT_KEYS: [&str; 3] = ["admitted", "round_proceeds", "excluded"];

impl TestFile {
    /// Parses a test file and checks its requests against the registry; every problem is reported
    /// as `FILE:LINE:COL: message`.
    pub fn parse(file: &str, text: &str, registry: &Registry) -> Result<TestFile, Vec<Diagnostic>> {
        let source = Source::new(file, text);
        let doc = parse_toml(&source, text).map_err(|d| vec![d])?;
        let mut r = Reader::new(&source);
        let top = doc.get_ref();
        r.unknown_keys(top, &["test"], "a test file");
        let mut tests = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        match top.get("test") {
            None => r.error(
                &(0..0),
                "the file holds no tests (write one or more [[test]] entries)",
            ),
            Some(v) => match v.get_ref().as_array() {
                None => r.error(
                    &v.span(),
                    "tests are written as [[test]] tables (double brackets), one per test",
                ),
                Some(items) => {
                    for item in items.iter() {
                        if let Some(test) = read_test(&mut r, item, registry, &mut names) {
                            tests.push(test);
                        }
                    }
                }
            },
        }
        let mut problems = r.problems;
        problems.sort_by_key(|d| (d.line, d.column));
        if problems.is_empty() {
            Ok(TestFile {
                file: file.to_string(),
                tests,
            })
        } else {
            Err(problems)
        }
    }
}

fn read_test(
    r: &mut Reader<'_>,
    item: &Value<'_>,
    registry: &Registry,
    names: &mut BTreeMap<String, usize>,
) -> Option<PolicyTest> {
    let t = r.table(item, "[[test]]")?;
    let span = item.span();
    r.unknown_keys(t, &TEST_KEYS, "[[test]]");
    let name_value = r.required(t, "name", "[[test]]", &span);
    let name = name_value.and_then(|v| r.string(v, "test name"));
    let line = r
        .source
        .line_of(&name_value.map_or(span.clone(), |v| v.span()));
    if let (Some(n), Some(v)) = (&name, name_value) {
        if let Some(first) = names.get(n) {
            r.error(
                &v.span(),
                format!("test name `{n}` is used twice (first on line {first}); names are unique"),
            );
        } else {
            names.insert(n.clone(), line);
        }
    }
    let place = name
        .as_ref()
        .map_or("[[test]]".to_string(), |n| format!("test `{n}`"));
    let note = t
        .get("note")
        .and_then(|v| r.string(v, &format!("{place} note")));
    let (request, agencies) = match r.required(t, "request", &place, &span) {
        Some(v) => read_request(r, v, registry, &place),
        None => (None, None),
    };
    let expect = r
        .required(t, "expect", &place, &span)
        .and_then(|v| read_expect(r, v, agencies.as_ref(), &place));
    Some(PolicyTest {
        name: name?,
        line,
        note,
        request: request?,
        expect: expect?,
    })
}

/// Each participant's agency id, with the span it was written at.
type AgencySpans = Vec<(String, Range<usize>)>;

fn read_request(
    r: &mut Reader<'_>,
    value: &Value<'_>,
    registry: &Registry,
    place: &str,
) -> (Option<Request>, Option<AgencySpans>) {
    let place = format!("[test.request] of {place}");
    let Some(t) = r.table(value, &place) else {
        return (None, None);
    };
    let span = value.span();
    let before = r.problems.len();
    r.unknown_keys(t, &REQUEST_KEYS, &place);
    let federation = r
        .required(t, "federation", &place, &span)
        .and_then(|v| r.string(v, "federation"));
    let round = r
        .required(t, "round", &place, &span)
        .and_then(|v| r.integer(v, "round", 0));
    let date = r
        .required(t, "date", &place, &span)
        .and_then(|v| request_date(r, v));
    let purpose = r
        .required(t, "purpose", &place, &span)
        .and_then(|v| registry_term(r, v, "purpose", registry.purposes.keys()));
    let coordinator = r
        .required(t, "coordinator_country", &place, &span)
        .and_then(|v| registry_term(r, v, "coordinator_country", registry.countries.iter()));
    let epsilon = r
        .required(t, "epsilon_per_round", &place, &span)
        .and_then(|v| non_negative(r, v, "epsilon_per_round"));
    let delta = r
        .required(t, "delta", &place, &span)
        .and_then(|v| non_negative(r, v, "delta"));
    let mut fields = Some(Vec::new());
    if let Some(v) = t.get("fields") {
        fields = r.strings(v, "fields", false).map(|list| {
            let mut out = Vec::new();
            for (f, span) in list {
                if registry.fields.contains_key(&f) {
                    out.push(f);
                } else {
                    let hint = did_you_mean(&f, registry.fields.keys().map(String::as_str));
                    r.error_hint(
                        &span,
                        format!("field `{f}` is not a field of the registry"),
                        hint,
                    );
                }
            }
            out
        });
    }
    let retention = t
        .get("model_retention_days")
        .map(|v| r.integer(v, "model_retention_days", 0));
    let onward = t
        .get("onward_transfer")
        .map_or(Some(false), |v| r.boolean(v, "onward_transfer"));
    let secure = t
        .get("secure_aggregation")
        .map_or(Some(false), |v| r.boolean(v, "secure_aggregation"));
    let round_min = t
        .get("round_min_participants")
        .map_or(Some(2), |v| r.integer(v, "round_min_participants", 0));
    let participants = r
        .required(t, "participants", &place, &span)
        .and_then(|v| read_participants(r, v));
    let Some((participants, agencies)) = participants else {
        return (None, None);
    };
    if r.problems.len() != before {
        return (None, Some(agencies));
    }
    let request = (|| {
        Some(Request {
            federation: federation?,
            round: round?,
            date: date?,
            purpose: purpose?,
            coordinator_country: coordinator?,
            epsilon_per_round: epsilon?,
            delta: delta?,
            fields: fields?,
            model_retention_days: retention.flatten(),
            onward_transfer: onward?,
            secure_aggregation: secure?,
            round_min_participants: round_min?,
            participants,
        })
    })();
    (request, Some(agencies))
}

/// `date = "2025-09-01"` (as in the JSON request) or `date = 2025-09-01` (a TOML date).
fn request_date(r: &mut Reader<'_>, v: &Value<'_>) -> Option<String> {
    match v.get_ref() {
        DeValue::String(s) => match Date::parse(s) {
            Some(d) => Some(d.to_string()),
            None => {
                r.error(
                    &v.span(),
                    format!("date `{s}` is not a calendar date written YYYY-MM-DD"),
                );
                None
            }
        },
        _ => r.date(v, "date").map(|d| d.to_string()),
    }
}

fn registry_term<'a>(
    r: &mut Reader<'_>,
    v: &Value<'_>,
    what: &str,
    known: impl Iterator<Item = &'a String> + Clone,
) -> Option<String> {
    let s = r.string(v, what)?;
    if known.clone().any(|k| *k == s) {
        return Some(s);
    }
    let hint = did_you_mean(&s, known.map(String::as_str));
    let vocabulary = if what == "purpose" {
        "a purpose"
    } else {
        "a country"
    };
    r.error_hint(
        &v.span(),
        format!("{what} `{s}` is not {vocabulary} of the registry"),
        hint,
    );
    None
}

fn non_negative(r: &mut Reader<'_>, v: &Value<'_>, what: &str) -> Option<f64> {
    let (x, exact) = r.number(v, what)?;
    if x < 0.0 {
        r.error(&v.span(), format!("{what} must be 0 or more, not {exact}"));
        return None;
    }
    Some(x)
}

fn read_participants(
    r: &mut Reader<'_>,
    value: &Value<'_>,
) -> Option<(Vec<Participant>, AgencySpans)> {
    let Some(items) = value.get_ref().as_array() else {
        r.error(
            &value.span(),
            "participants are written as [[test.request.participants]] tables, one per agency",
        );
        return None;
    };
    let mut out = Vec::new();
    let mut agencies: AgencySpans = Vec::new();
    let mut ok = true;
    for item in items.iter() {
        let place = "[[test.request.participants]]";
        let Some(t) = r.table(item, place) else {
            ok = false;
            continue;
        };
        let span = item.span();
        r.unknown_keys(t, &PARTICIPANT_KEYS, place);
        let agency_value = r.required(t, "agency", place, &span);
        let agency = agency_value.and_then(|v| r.string(v, "agency"));
        let country = r
            .required(t, "country", place, &span)
            .and_then(|v| r.string(v, "country"));
        let cumulative = r
            .required(t, "cumulative_epsilon", place, &span)
            .and_then(|v| non_negative(r, v, "cumulative_epsilon"));
        if let (Some(a), Some(v)) = (&agency, agency_value)
            && agencies.iter().any(|(seen, _)| seen == a)
        {
            r.error(&v.span(), format!("agency `{a}` is listed twice"));
            ok = false;
        }
        match (agency, country, cumulative, agency_value) {
            (Some(agency), Some(country), Some(cumulative_epsilon), Some(v)) => {
                agencies.push((agency.clone(), v.span()));
                out.push(Participant {
                    agency,
                    country,
                    cumulative_epsilon,
                });
            }
            _ => ok = false,
        }
    }
    ok.then_some((out, agencies))
}

fn read_expect(
    r: &mut Reader<'_>,
    value: &Value<'_>,
    agencies: Option<&AgencySpans>,
    place: &str,
) -> Option<Expect> {
    let place = format!("[test.expect] of {place}");
    let t: &DeTable<'_> = r.table(value, &place)?;
    let before = r.problems.len();
    r.unknown_keys(t, &EXPECT_KEYS, &place);
    let participant = |r: &mut Reader<'_>, agency: &str, span: &Range<usize>, what: &str| {
        if let Some(agencies) = agencies
            && !agencies.iter().any(|(a, _)| a == agency)
        {
            let hint = did_you_mean(agency, agencies.iter().map(|(a, _)| a.as_str()));
            r.error_hint(
                span,
                format!("`{agency}` in {what} is not a participant of the test's request"),
                hint,
            );
        }
    };
    let mut expect = Expect::default();
    if let Some(v) = t.get("admitted")
        && let Some(list) = r.strings(v, "expect.admitted", false)
    {
        let mut seen = BTreeSet::new();
        for (a, span) in &list {
            participant(r, a, span, "expect.admitted");
            if !seen.insert(a.as_str()) {
                r.error(span, format!("`{a}` is listed twice in expect.admitted"));
            }
        }
        expect.admitted = Some(list.into_iter().map(|(a, _)| a).collect());
    }
    if let Some(v) = t.get("round_proceeds") {
        expect.round_proceeds = r.boolean(v, "expect.round_proceeds");
    }
    if let Some(v) = t.get("excluded")
        && let Some(table) = r.table(v, "expect.excluded")
    {
        let mut excluded = BTreeMap::new();
        for (agency, reason) in table.iter() {
            let a = agency.get_ref().to_string();
            participant(r, &a, &agency.span(), "expect.excluded");
            if expect.admitted.as_ref().is_some_and(|ad| ad.contains(&a)) {
                r.error(
                    &agency.span(),
                    format!("`{a}` is expected both admitted and excluded"),
                );
            }
            let Some(code) = r.string(reason, &format!("the reason of {a}")) else {
                continue;
            };
            match Reason::from_code(&code) {
                Some(reason) => {
                    excluded.insert(a, reason);
                }
                None => {
                    let codes: Vec<String> = Reason::ALL.iter().map(|r| r.code()).collect();
                    let hint = did_you_mean(&code, codes.iter().map(String::as_str));
                    r.error_hint(
                        &reason.span(),
                        format!("`{code}` is not a reason code of the decision"),
                        hint,
                    );
                }
            }
        }
        expect.excluded = Some(excluded);
    }
    if expect == Expect::default() && r.problems.len() == before {
        r.error(
            &value.span(),
            format!(
                "{place} expects nothing, so the test could never fail (give admitted, round_proceeds or excluded)"
            ),
        );
    }
    (r.problems.len() == before).then_some(expect)
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// The differences between what a test expects and a decision, each `expected ..., got ...`.
fn compare(expect: &Expect, decision: &Decision) -> Vec<String> {
    let mut diffs = Vec::new();
    if let Some(admitted) = &expect.admitted {
        let want: BTreeSet<&String> = admitted.iter().collect();
        let got: BTreeSet<&String> = decision.admitted.iter().collect();
        if want != got {
            diffs.push(format!(
                "expected admitted {}, got {}",
                list(admitted),
                list(&decision.admitted)
            ));
        }
    }
    if let Some(proceeds) = expect.round_proceeds
        && proceeds != decision.round_proceeds
    {
        diffs.push(format!(
            "expected round_proceeds = {proceeds}, got {}",
            decision.round_proceeds
        ));
    }
    if let Some(excluded) = &expect.excluded {
        for (agency, want) in excluded {
            match decision.excluded.iter().find(|e| &e.agency == agency) {
                None => diffs.push(format!(
                    "expected {agency} excluded with {}, got admitted",
                    want.code()
                )),
                Some(e) if e.reason != *want => diffs.push(format!(
                    "expected {agency} excluded with {}, got {}",
                    want.code(),
                    reasons(&e.all_reasons)
                )),
                Some(_) => {}
            }
        }
        for e in &decision.excluded {
            if !excluded.contains_key(&e.agency) {
                diffs.push(format!(
                    "expected {} not excluded, got excluded with {}",
                    e.agency,
                    reasons(&e.all_reasons)
                ));
            }
        }
    }
    diffs
}

/// `BUDGET_EXHAUSTED`, or `BUDGET_EXHAUSTED (all reasons: BUDGET_EXHAUSTED, RETENTION_EXCEEDED)`.
fn reasons(all: &[Reason]) -> String {
    let codes: Vec<String> = all.iter().map(|r| r.code()).collect();
    match codes.as_slice() {
        [] => "no reason".to_string(),
        [one] => one.clone(),
        [first, ..] => format!("{first} (all reasons: {})", codes.join(", ")),
    }
}

/// Runs one test against loaded policies.
fn run_test(
    registry: &Registry,
    policies: &BTreeMap<String, Loaded>,
    test: &PolicyTest,
) -> Outcome {
    match decide(registry, policies, &test.request) {
        Err(e) => Outcome::Error(e.to_string()),
        Ok(decision) => {
            let diffs = compare(&test.expect, &decision);
            if diffs.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail(diffs)
            }
        }
    }
}

impl TestFile {
    /// Runs every test of the file, each against the policies of its participants as they
    /// stand in `dir` now.
    pub fn run(&self, registry: &Registry, dir: &PolicyDir) -> Vec<TestResult> {
        self.tests
            .iter()
            .map(|test| {
                let policies = dir.load_all(
                    registry,
                    test.request.participants.iter().map(|p| p.country.as_str()),
                );
                TestResult {
                    name: test.name.clone(),
                    line: test.line,
                    outcome: run_test(registry, &policies, test),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRY: &str = r#"
registry_version = "r1"
countries = ["DE", "NL", "US"]
[purposes]
narcotics = "Narcotics"
[fields]
value = "ordinary"
[groups.EU]
members = ["DE", "NL"]
"#;

    fn registry() -> Registry {
        Registry::parse("registry.toml", REGISTRY).unwrap()
    }

    const GOOD: &str = r#"
[[test]]
name = "two countries"
[test.request]
federation = "f"
round = 1
date = "2025-06-01"
purpose = "narcotics"
coordinator_country = "NL"
epsilon_per_round = 0.5
delta = 1e-6
[[test.request.participants]]
agency = "DE-1"
country = "DE"
cumulative_epsilon = 0.0
[[test.request.participants]]
agency = "NL-1"
country = "NL"
cumulative_epsilon = 0
[test.expect]
admitted = ["NL-1", "DE-1"]
excluded = {}
"#;

    #[test]
    fn reads_a_test_with_the_request_defaults_of_the_json_request() {
        let file = TestFile::parse("x.tests.toml", GOOD, &registry()).unwrap();
        assert_eq!(file.tests.len(), 1);
        let t = &file.tests[0];
        assert_eq!(t.name, "two countries");
        assert_eq!(t.line, 3);
        assert_eq!(t.request.date, "2025-06-01");
        assert_eq!(t.request.round_min_participants, 2);
        assert!(!t.request.onward_transfer);
        assert_eq!(t.request.model_retention_days, None);
        assert_eq!(t.request.participants[1].cumulative_epsilon, 0.0);
        assert_eq!(
            t.expect.admitted.as_deref(),
            Some(&["NL-1".to_string(), "DE-1".to_string()][..])
        );
        assert_eq!(t.expect.excluded, Some(BTreeMap::new()));
        // A TOML date works as well as a string.
        let toml_date = GOOD.replace("\"2025-06-01\"", "2025-06-01");
        let file = TestFile::parse("x.tests.toml", &toml_date, &registry()).unwrap();
        assert_eq!(file.tests[0].request.date, "2025-06-01");
    }

    #[test]
    fn every_problem_is_reported_with_its_place_and_a_hint() {
        let text = GOOD
            .replace("admitted = [", "admited = [")
            .replace("purpose = \"narcotics\"", "purpose = \"narcotic\"")
            .replace(
                "excluded = {}",
                "excluded = { \"NL-2\" = \"BUDGET_EXHAUSTD\" }",
            )
            .replace("date = \"2025-06-01\"", "date = \"2025-06-31\"");
        let problems = TestFile::parse("x.tests.toml", &text, &registry()).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "x.tests.toml:7:8: date `2025-06-31` is not a calendar date written YYYY-MM-DD",
                "x.tests.toml:8:11: purpose `narcotic` is not a purpose of the registry; did you mean `narcotics`?",
                "x.tests.toml:21:1: unknown key `admited` in [test.expect] of test `two countries`; did you mean `admitted`?",
                "x.tests.toml:22:14: `NL-2` in expect.excluded is not a participant of the test's request; did you mean `NL-1`?",
                "x.tests.toml:22:23: `BUDGET_EXHAUSTD` is not a reason code of the decision; did you mean `BUDGET_EXHAUSTED`?",
            ]
        );
    }

    #[test]
    fn a_test_that_expects_nothing_or_repeats_a_name_is_an_error() {
        let empty = GOOD.replace("admitted = [\"NL-1\", \"DE-1\"]\nexcluded = {}\n", "");
        let problems = TestFile::parse("x.tests.toml", &empty, &registry()).unwrap_err();
        assert!(
            problems[0].message.contains("expects nothing"),
            "{problems:?}"
        );
        let twice = format!("{GOOD}{GOOD}");
        let problems = TestFile::parse("x.tests.toml", &twice, &registry()).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("used twice (first on line 3)"));
        let single = GOOD.replace("[[test]]", "[test]");
        assert!(TestFile::parse("x.tests.toml", &single, &registry()).is_err());
        assert!(TestFile::parse("x.tests.toml", "", &registry()).is_err());
    }

    fn exclusion(agency: &str, reasons: &[Reason]) -> crate::decide::Exclusion {
        crate::decide::Exclusion {
            agency: agency.into(),
            country: agency[..2].into(),
            reason: reasons[0],
            all_reasons: reasons.to_vec(),
            phase: reasons[0].phase(),
            detail: serde_json::json!({}),
            explanation: String::new(),
        }
    }

    #[test]
    fn differences_read_expected_then_got() {
        let decision = Decision {
            admitted: vec!["DE-1".into(), "NL-1".into()],
            excluded: vec![exclusion(
                "US-1",
                &[Reason::BudgetExhausted, Reason::RetentionExceeded],
            )],
            round_proceeds: true,
            registry_version: "r1".into(),
            policy_versions: BTreeMap::new(),
        };
        let pass = Expect {
            admitted: Some(vec!["NL-1".into(), "DE-1".into()]),
            round_proceeds: Some(true),
            excluded: Some([("US-1".to_string(), Reason::BudgetExhausted)].into()),
        };
        assert!(compare(&pass, &decision).is_empty());
        let fail = Expect {
            admitted: Some(vec!["DE-1".into()]),
            round_proceeds: Some(false),
            excluded: Some([("NL-1".to_string(), Reason::RecipientDenied)].into()),
        };
        assert_eq!(
            compare(&fail, &decision),
            [
                "expected admitted [DE-1], got [DE-1, NL-1]",
                "expected round_proceeds = false, got true",
                "expected NL-1 excluded with RECIPIENT_DENIED, got admitted",
                "expected US-1 not excluded, got excluded with BUDGET_EXHAUSTED (all reasons: BUDGET_EXHAUSTED, RETENTION_EXCEEDED)",
            ]
        );
        let wrong_reason = Expect {
            excluded: Some([("US-1".to_string(), Reason::RecipientDenied)].into()),
            ..Expect::default()
        };
        assert_eq!(
            compare(&wrong_reason, &decision),
            [
                "expected US-1 excluded with RECIPIENT_DENIED, got BUDGET_EXHAUSTED (all reasons: BUDGET_EXHAUSTED, RETENTION_EXCEEDED)"
            ]
        );
    }
}
