//! The decision engine: every reason code, date boundaries, dated group membership,
//! deny-over-allow, exact decimals, fail-closed loading, and the largest admissible set
//! against brute force.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use treaty_policies::{Loaded, Policy, PolicyError, Reason, decide};

fn eu_allow(c: &str) -> String {
    policy_text(c, "", &allow(&format!("{c}-EU"), &["EU"]))
}

#[test]
fn a_lawful_round_admits_everyone_in_request_order() {
    let d = run(
        &[
            ("DE", eu_allow("DE")),
            ("NL", eu_allow("NL")),
            ("FR", eu_allow("FR")),
        ],
        &request(&[
            ("NL-1", "NL", 0.0),
            ("DE-1", "DE", 0.0),
            ("FR-1", "FR", 0.0),
            ("DE-2", "DE", 0.0),
        ]),
    );
    assert_eq!(d.admitted, ["NL-1", "DE-1", "FR-1", "DE-2"]);
    assert!(d.excluded.is_empty());
    assert!(d.round_proceeds);
    assert_eq!(d.registry_version, "r-2025");
    assert_eq!(d.policy_versions["DE"].version.as_deref(), Some("DE-1"));
    assert_eq!(d.policy_versions["DE"].sha256.len(), 64);
}

#[test]
fn phase0_missing_broken_and_unregistered_countries_are_excluded() {
    let registry = registry();
    let mut policies = loaded(&registry, &[("DE", eu_allow("DE")), ("NL", eu_allow("NL"))]);
    let broken = Policy::parse(
        "FR.toml",
        "schema_version = 1\n[policy\n",
        &registry,
        Some("FR"),
    )
    .unwrap_err();
    assert!(matches!(broken, PolicyError::Parse(_)));
    policies.insert(
        "FR".into(),
        Loaded::Broken {
            error: broken,
            sha256: "00".repeat(32),
        },
    );
    let schema = Policy::parse(
        "PL.toml",
        &eu_allow("PL").replace("max_delta", "max_detla"),
        &registry,
        Some("PL"),
    )
    .unwrap_err();
    assert!(matches!(schema, PolicyError::Schema(_)));
    policies.insert(
        "PL".into(),
        Loaded::Broken {
            error: schema,
            sha256: "11".repeat(32),
        },
    );
    let d = decide(
        &registry,
        &policies,
        &request(&[
            ("DE-1", "DE", 0.0),
            ("NL-1", "NL", 0.0),
            ("FR-1", "FR", 0.0),
            ("PL-1", "PL", 0.0),
            ("BE-1", "BE", 0.0),
            ("XX-1", "XX", 0.0),
        ]),
    )
    .unwrap();
    assert_eq!(d.admitted, ["DE-1", "NL-1"]);
    assert_eq!(reasons(&d, "FR-1"), [Reason::PolicyParseError]);
    assert_eq!(reasons(&d, "PL-1"), [Reason::PolicySchemaError]);
    assert_eq!(reasons(&d, "BE-1"), [Reason::PolicyMissing]);
    assert_eq!(reasons(&d, "XX-1"), [Reason::PolicyMissing]);
    for e in &d.excluded {
        assert_eq!(e.phase, 0);
    }
    // A broken policy is never applied in part: the schema error names the misspelt key.
    let pl = d.excluded.iter().find(|e| e.agency == "PL-1").unwrap();
    assert!(pl.explanation.contains("max_detla"), "{}", pl.explanation);
    assert!(
        pl.explanation.contains("did you mean `max_delta`?"),
        "{}",
        pl.explanation
    );
    assert!(d.policy_versions["PL"].version.is_none());
}

#[test]
fn validity_gates_are_inclusive_and_stop_evaluation() {
    let de = policy_text("DE", "max_epsilon_total = 0.1", &allow("DE-EU", &["EU"]));
    let de = de.replace("max_epsilon_total = 8.0\n", "");
    let nl = eu_allow("NL");
    for (date, expect) in [
        ("2024-12-31", Some(Reason::PolicyNotYetValid)),
        ("2025-01-01", None),
        ("2025-12-31", None),
        ("2026-01-01", Some(Reason::PolicyExpired)),
    ] {
        let mut r = request(&[("DE-1", "DE", 0.0), ("NL-1", "NL", 0.0)]);
        r.date = date.into();
        r.epsilon_per_round = 0.05;
        // NL's own validity is the same window; only DE's result is read here.
        let d = run(&[("DE", de.clone()), ("NL", nl.clone())], &r);
        match expect {
            Some(reason) => assert_eq!(reasons(&d, "DE-1"), [reason], "{date}"),
            None => assert!(d.admitted.contains(&"DE-1".to_string()), "{date}: {d:#?}"),
        }
    }
    // After a failed gate, no other check is reported (the budget would fail too).
    let mut r = request(&[("DE-1", "DE", 5.0)]);
    r.date = "2026-01-01".into();
    let d = run(&[("DE", de)], &r);
    assert_eq!(reasons(&d, "DE-1"), [Reason::PolicyExpired]);
}

#[test]
fn every_phase1_check_is_reported_in_order() {
    let de = policy_text(
        "DE",
        "",
        "[data]\nexcluded_fields = [\"nationality\"]\nexcluded_field_categories = [\"special_category\"]\n\n[retention]\nmax_model_retention_days = 10\n\n[handling]\nallow_onward_transfer = false\n\n[[rule]]\nid = \"DE-FIREARMS\"\neffect = \"allow\"\npurposes = [\"firearms\"]\nrecipients = [\"EU\"]\nlegal_basis = \"x\"\n",
    )
    .replace("denied_jurisdictions", "")
    .replace("allowed_jurisdictions = [\"EU\"]", "allowed_jurisdictions = [\"EU\"]\ndenied_jurisdictions = [\"NL\"]");
    let mut r = request(&[("DE-1", "DE", 7.9)]);
    r.fields = vec!["value".into(), "nationality".into(), "ethnicity".into()];
    r.epsilon_per_round = 1.5;
    r.delta = 1e-4;
    r.model_retention_days = Some(11);
    r.onward_transfer = true;
    let d = run(&[("DE", de.clone())], &r);
    assert_eq!(
        reasons(&d, "DE-1"),
        [
            Reason::PurposeNotAllowed,
            Reason::CoordinatorDenied,
            Reason::FieldExcluded,
            Reason::EpsilonPerRoundExceeded,
            Reason::DeltaExceeded,
            Reason::BudgetExhausted,
            Reason::RetentionExceeded,
            Reason::OnwardTransferNotAllowed,
        ]
    );
    let e = &d.excluded[0];
    assert_eq!(e.reason, Reason::PurposeNotAllowed);
    assert_eq!(e.phase, 1);
    assert_eq!(
        e.detail["allowed_purposes"],
        serde_json::json!(["firearms"])
    );
    // A request without retention keeps the model without limit: refused by a [retention].
    r.model_retention_days = None;
    assert!(reasons(&run(&[("DE", de)], &r), "DE-1").contains(&Reason::RetentionExceeded));
}

/// `[handling] require_secure_aggregation` (an extension of the spec's v1 files): a round not
/// under secure aggregation excludes the country's agencies, after every spec check; a file
/// without the key, and a request without the field, decide as the spec says.
#[test]
fn a_policy_can_require_secure_aggregation_and_v1_files_decide_as_before() {
    let requiring = policy_text(
        "DE",
        "",
        &format!(
            "[handling]\nrequire_secure_aggregation = true\n\n{}",
            allow("DE-EU", &["EU"])
        ),
    );
    let plain = request(&[
        ("DE-1", "DE", 0.0),
        ("NL-1", "NL", 0.0),
        ("FR-1", "FR", 0.0),
    ]);
    let policies = [
        ("DE", requiring.clone()),
        ("NL", eu_allow("NL")),
        ("FR", eu_allow("FR")),
    ];
    let d = run(&policies, &plain);
    assert_eq!(d.admitted, ["NL-1", "FR-1"]);
    assert_eq!(reasons(&d, "DE-1"), [Reason::SecureAggregationRequired]);
    let e = &d.excluded[0];
    assert_eq!(e.phase, 1);
    assert_eq!(e.reason.code(), "SECURE_AGGREGATION_REQUIRED");
    assert!(
        e.explanation.contains("secure aggregation"),
        "{}",
        e.explanation
    );
    // Under secure aggregation the same round admits everyone.
    let mut secure = plain.clone();
    secure.secure_aggregation = true;
    assert_eq!(run(&policies, &secure).admitted, ["DE-1", "NL-1", "FR-1"]);
    // Reported after the spec's own checks.
    let mut both = plain.clone();
    both.onward_transfer = true;
    assert_eq!(
        reasons(&run(&policies, &both), "DE-1"),
        [
            Reason::OnwardTransferNotAllowed,
            Reason::SecureAggregationRequired
        ]
    );
    // A v1 file says nothing of it: the flag changes nothing, and a request without it is the
    // spec's request to the byte.
    let v1 = [
        ("DE", eu_allow("DE")),
        ("NL", eu_allow("NL")),
        ("FR", eu_allow("FR")),
    ];
    assert_eq!(run(&v1, &plain).admitted, run(&v1, &secure).admitted);
    let written = serde_json::to_string(&plain).unwrap();
    assert!(!written.contains("secure_aggregation"), "{written}");
    assert!(
        serde_json::to_string(&secure)
            .unwrap()
            .contains("\"secure_aggregation\":true")
    );
    // A typo is still an error naming the key, with the key it meant.
    let typo = requiring.replace("require_secure_aggregation", "require_secure_agregation");
    let err = Policy::parse("DE.toml", &typo, &registry(), Some("DE")).unwrap_err();
    let text = format!("{:?}", err.diagnostics());
    assert!(text.contains("require_secure_agregation"), "{text}");
    assert!(text.contains("require_secure_aggregation"), "{text}");
}

#[test]
fn coordinator_jurisdictions() {
    let with = |allowed: &str, denied: &str| {
        eu_allow("DE").replace(
            "allowed_jurisdictions = [\"EU\"]",
            &format!("allowed_jurisdictions = {allowed}\n{denied}"),
        )
    };
    let outcome = |policy: String, cc: &str| {
        let mut r = request(&[("DE-1", "DE", 0.0)]);
        r.coordinator_country = cc.into();
        r.round_min_participants = 1;
        let d = run(&[("DE", policy)], &r);
        d.excluded
            .first()
            .map(|e| e.all_reasons.clone())
            .unwrap_or_default()
    };
    assert_eq!(outcome(with("[\"EU\"]", ""), "NL"), []);
    assert_eq!(
        outcome(with("[\"EU\"]", ""), "US"),
        [Reason::CoordinatorNotAllowed]
    );
    // The policy's own country may host the coordinator without being listed.
    assert_eq!(outcome(with("[\"NORTH_AMERICA\"]", ""), "DE"), []);
    // Denied beats allowed, and a denied coordinator is not also "not allowed".
    assert_eq!(
        outcome(with("[\"EU\"]", "denied_jurisdictions = [\"NL\"]"), "NL"),
        [Reason::CoordinatorDenied]
    );
    assert_eq!(
        outcome(with("[\"EU\"]", "denied_jurisdictions = [\"US\"]"), "US"),
        [Reason::CoordinatorDenied]
    );
    // Dated membership: GB was in the EU until 2020-01-31 inclusive.
    let gb = |date: &str| {
        let mut r = request(&[("DE-1", "DE", 0.0)]);
        r.coordinator_country = "GB".into();
        r.round_min_participants = 1;
        r.date = date.into();
        let mut p = with("[\"EU\"]", "");
        p = p.replace("valid_from = 2025-01-01", "valid_from = 2019-01-01");
        p = p.replace("[[rule]]", "[[rule]]\nvalid_from = 2019-01-01");
        let d = run(&[("DE", p)], &r);
        d.excluded
            .first()
            .map(|e| e.all_reasons.clone())
            .unwrap_or_default()
    };
    assert_eq!(gb("2020-01-31"), []);
    assert_eq!(gb("2020-02-01"), [Reason::CoordinatorNotAllowed]);
}

#[test]
#[allow(clippy::excessive_precision)] // the over-long literal is deliberate
fn exact_decimal_budgets() {
    // 0.1 + 0.2 == 0.3 exactly: a budget of 0.3 admits it, although 0.1 + 0.2 > 0.3 in binary.
    let de = eu_allow("DE").replace("max_epsilon_total = 8.0", "max_epsilon_total = 0.3");
    let nl = eu_allow("NL");
    let mut r = request(&[("DE-1", "DE", 0.1), ("NL-1", "NL", 0.0)]);
    r.epsilon_per_round = 0.2;
    assert!(
        run(&[("DE", de.clone()), ("NL", nl.clone())], &r)
            .excluded
            .is_empty()
    );
    r.participants[0].cumulative_epsilon = 0.10000001;
    let d = run(&[("DE", de), ("NL", nl.clone())], &r);
    assert_eq!(reasons(&d, "DE-1"), [Reason::BudgetExhausted]);
    let e = &d.excluded[0];
    assert_eq!(e.detail["after_round"], "0.30000001");
    assert_eq!(e.detail["limit"], "0.3");
    // Per-round limits are inclusive: equal is allowed, one ulp above is not.
    let de = eu_allow("DE").replace("max_epsilon_per_round = 1.0", "max_epsilon_per_round = 0.7");
    let mut r = request(&[("DE-1", "DE", 0.0), ("NL-1", "NL", 0.0)]);
    r.epsilon_per_round = 0.7;
    assert!(
        run(&[("DE", de.clone()), ("NL", nl.clone())], &r)
            .excluded
            .is_empty()
    );
    r.epsilon_per_round = f64::from_bits(0.7f64.to_bits() + 1);
    assert_eq!(
        reasons(&run(&[("DE", de), ("NL", nl.clone())], &r), "DE-1"),
        [Reason::EpsilonPerRoundExceeded]
    );
    let mut r = request(&[("DE-1", "DE", 0.0), ("NL-1", "NL", 0.0)]);
    r.delta = 1e-5;
    assert!(
        run(&[("DE", eu_allow("DE")), ("NL", nl.clone())], &r)
            .excluded
            .is_empty()
    );
    r.delta = 1.0000000000000001e-5 * 1.0000001;
    assert_eq!(
        reasons(&run(&[("DE", eu_allow("DE")), ("NL", nl)], &r), "DE-1"),
        [Reason::DeltaExceeded]
    );
}

#[test]
fn deny_overrides_allow_and_both_sides_are_reported() {
    // DE allows the EU (NL included) but denies NL: NL is not accepted by DE.
    let policies = [
        (
            "DE",
            policy_text(
                "DE",
                "",
                &(allow("DE-EU", &["EU"]) + &deny("DE-NL-DENY", &["NL"])),
            ),
        ),
        ("NL", eu_allow("NL")),
        ("FR", eu_allow("FR")),
    ];
    let d = run(
        &policies,
        &request(&[
            ("DE-1", "DE", 0.0),
            ("NL-1", "NL", 0.0),
            ("NL-2", "NL", 0.0),
            ("FR-1", "FR", 0.0),
        ]),
    );
    // {NL, FR} has 3 agencies, {DE, FR} has 2: NL's side wins.
    assert_eq!(d.admitted, ["NL-1", "NL-2", "FR-1"]);
    let de = d.excluded.iter().find(|e| e.agency == "DE-1").unwrap();
    assert_eq!(de.all_reasons, [Reason::RecipientDenied]);
    assert_eq!(de.detail["rule_ids"], serde_json::json!(["DE-NL-DENY"]));
    assert_eq!(de.detail["countries"], serde_json::json!(["NL"]));
    assert!(
        de.explanation.contains("overrides allow rule DE-EU"),
        "{}",
        de.explanation
    );
    assert!(
        de.explanation.contains("NL is named directly"),
        "{}",
        de.explanation
    );
    // Seen from the other side: with DE's side larger, NL is rejected by DE.
    let d = run(
        &policies,
        &request(&[
            ("DE-1", "DE", 0.0),
            ("DE-2", "DE", 0.0),
            ("NL-1", "NL", 0.0),
            ("FR-1", "FR", 0.0),
        ]),
    );
    assert_eq!(d.admitted, ["DE-1", "DE-2", "FR-1"]);
    let nl = d.excluded.iter().find(|e| e.agency == "NL-1").unwrap();
    assert_eq!(nl.all_reasons, [Reason::RejectedByParticipant]);
    assert_eq!(nl.detail["countries"], serde_json::json!(["DE"]));
    assert_eq!(nl.detail["rule_ids"], serde_json::json!(["DE-NL-DENY"]));
}

#[test]
fn recipients_not_allowed_and_domestic_rounds() {
    // US allows nobody abroad; a purely domestic round needs no rule at all.
    let us = policy_text(
        "US",
        "",
        &allow("US-CA", &["CA"]).replace("narcotics", "firearms"),
    )
    .replace(
        "allowed_jurisdictions = [\"EU\"]",
        "allowed_jurisdictions = [\"EU\", \"US\"]",
    );
    let d = run(
        &[
            ("US", us.clone()),
            ("NL", eu_allow("NL")),
            ("FR", eu_allow("FR")),
        ],
        &request(&[
            ("US-1", "US", 0.0),
            ("NL-1", "NL", 0.0),
            ("FR-1", "FR", 0.0),
        ]),
    );
    // US has no allow rule for narcotics at all: phase 1.
    assert_eq!(reasons(&d, "US-1"), [Reason::PurposeNotAllowed]);
    let us = policy_text("US", "", &allow("US-CA", &["CA"])).replace(
        "allowed_jurisdictions = [\"EU\"]",
        "allowed_jurisdictions = [\"EU\", \"US\"]",
    );
    let d = run(
        &[
            ("US", us.clone()),
            ("NL", eu_allow("NL")),
            ("FR", eu_allow("FR")),
        ],
        &request(&[
            ("US-1", "US", 0.0),
            ("NL-1", "NL", 0.0),
            ("FR-1", "FR", 0.0),
        ]),
    );
    assert_eq!(d.admitted, ["NL-1", "FR-1"]);
    assert_eq!(
        reasons(&d, "US-1"),
        [Reason::RecipientNotAllowed, Reason::RejectedByParticipant]
    );
    let e = d.excluded.iter().find(|e| e.agency == "US-1").unwrap();
    assert_eq!(e.detail["countries"], serde_json::json!(["NL", "FR"]));
    // Two agencies of one country: domestic sharing is always accepted.
    let mut r = request(&[("US-1", "US", 0.0), ("US-2", "US", 0.0)]);
    r.coordinator_country = "NL".into();
    let d = run(&[("US", us)], &r);
    assert_eq!(d.admitted, ["US-1", "US-2"]);
}

#[test]
fn minimums_and_no_feasible_round() {
    // DE needs 3 agencies; with DE and NL alone (2 agencies) nobody can meet it.
    let de = policy_text("DE", "min_participants = 3", &allow("DE-EU", &["EU"]));
    let nl = policy_text("NL", "min_distinct_countries = 2", &allow("NL-EU", &["EU"]));
    let d = run(
        &[("DE", de.clone()), ("NL", nl.clone())],
        &request(&[("DE-1", "DE", 0.0), ("NL-1", "NL", 0.0)]),
    );
    assert!(d.admitted.is_empty());
    assert!(!d.round_proceeds);
    assert_eq!(reasons(&d, "DE-1"), [Reason::MinParticipantsUnmet]);
    // NL's own minimum (2 countries) would hold with DE: its obstacle is DE's minimum.
    assert_eq!(reasons(&d, "NL-1"), [Reason::NoFeasibleRound]);
    // One more agency makes the round lawful for everyone.
    let d = run(
        &[("DE", de.clone()), ("NL", nl.clone())],
        &request(&[
            ("DE-1", "DE", 0.0),
            ("NL-1", "NL", 0.0),
            ("NL-2", "NL", 0.0),
        ]),
    );
    assert_eq!(d.admitted, ["DE-1", "NL-1", "NL-2"]);
    // With an admissible set, an agency below its own minimum even when added is reported so.
    let fr = policy_text(
        "FR",
        "min_participants = 9\nmin_distinct_countries = 5",
        &allow("FR-EU", &["EU"]),
    );
    let d = run(
        &[("DE", de), ("NL", nl), ("FR", fr)],
        &request(&[
            ("DE-1", "DE", 0.0),
            ("NL-1", "NL", 0.0),
            ("NL-2", "NL", 0.0),
            ("FR-1", "FR", 0.0),
        ]),
    );
    assert_eq!(d.admitted, ["DE-1", "NL-1", "NL-2"]);
    assert_eq!(
        reasons(&d, "FR-1"),
        [Reason::MinParticipantsUnmet, Reason::MinCountriesUnmet]
    );
    // round_min_participants decides whether the round proceeds, not who is admitted.
    let mut r = request(&[("NL-1", "NL", 0.0)]);
    r.round_min_participants = 2;
    let d = run(&[("NL", eu_allow("NL"))], &r);
    assert_eq!(d.admitted, ["NL-1"]);
    assert!(!d.round_proceeds);
}

#[test]
fn ties_go_to_the_countries_earliest_in_the_request() {
    // DE and FR deny each other; each has one agency, NL accepts both.
    let de = policy_text(
        "DE",
        "",
        &(allow("DE-EU", &["EU"]) + &deny("DE-FR", &["FR"])),
    );
    let fr = policy_text(
        "FR",
        "",
        &(allow("FR-EU", &["EU"]) + &deny("FR-DE", &["DE"])),
    );
    let nl = eu_allow("NL");
    let policies = [("DE", de), ("FR", fr), ("NL", nl)];
    let d = run(
        &policies,
        &request(&[
            ("NL-1", "NL", 0.0),
            ("FR-1", "FR", 0.0),
            ("DE-1", "DE", 0.0),
        ]),
    );
    assert_eq!(d.admitted, ["NL-1", "FR-1"]);
    let d = run(
        &policies,
        &request(&[
            ("DE-1", "DE", 0.0),
            ("NL-1", "NL", 0.0),
            ("FR-1", "FR", 0.0),
        ]),
    );
    assert_eq!(d.admitted, ["DE-1", "NL-1"]);
}

#[test]
fn rules_are_active_only_within_their_dates() {
    let mut rule = allow("DE-EU", &["EU"]);
    rule = rule.replace(
        "legal_basis",
        "valid_from = 2025-06-02\nvalid_until = 2025-06-30\nlegal_basis",
    );
    let de = policy_text("DE", "", &rule);
    let nl = eu_allow("NL");
    for (date, admitted) in [
        ("2025-06-01", false),
        ("2025-06-02", true),
        ("2025-06-30", true),
        ("2025-07-01", false),
    ] {
        let mut r = request(&[("DE-1", "DE", 0.0), ("NL-1", "NL", 0.0)]);
        r.date = date.into();
        let d = run(&[("DE", de.clone()), ("NL", nl.clone())], &r);
        assert_eq!(d.admitted.contains(&"DE-1".to_string()), admitted, "{date}");
        if !admitted {
            assert_eq!(reasons(&d, "DE-1"), [Reason::PurposeNotAllowed], "{date}");
        }
    }
}

#[test]
fn local_groups_resolve_before_registry_groups_and_countries() {
    let de = policy_text("DE", "", &allow("DE-PARTNERS", &["DE_PARTNERS"])).replace(
        "[coordinator]",
        "[groups]\nDE_PARTNERS = [\"GB\"]\n\n[coordinator]",
    );
    let gb = policy_text("GB", "", &allow("GB-DE", &["DE"]));
    let d = run(
        &[("DE", de), ("GB", gb)],
        &request(&[("DE-1", "DE", 0.0), ("GB-1", "GB", 0.0)]),
    );
    assert_eq!(d.admitted, ["DE-1", "GB-1"]);
}

#[test]
fn unusable_requests_are_refused_with_the_reason() {
    let registry = registry();
    let policies = loaded(&registry, &[("DE", eu_allow("DE"))]);
    let mut r = request(&[("DE-1", "DE", 0.0)]);
    r.purpose = "narcotic".into();
    let e = decide(&registry, &policies, &r).unwrap_err().to_string();
    assert!(e.contains("did you mean `narcotics`?"), "{e}");
    let mut r = request(&[("DE-1", "DE", 0.0)]);
    r.date = "2025-02-30".into();
    assert!(
        decide(&registry, &policies, &r)
            .unwrap_err()
            .to_string()
            .contains("2025-02-30")
    );
    let mut r = request(&[("DE-1", "DE", 0.0), ("DE-1", "DE", 0.0)]);
    assert!(
        decide(&registry, &policies, &r)
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
    r = request(&[("DE-1", "DE", f64::NAN)]);
    assert!(
        decide(&registry, &policies, &r)
            .unwrap_err()
            .to_string()
            .contains("cumulative_epsilon")
    );
    let mut r = request(&[("DE-1", "DE", 0.0)]);
    r.fields = vec!["colour".into()];
    assert!(
        decide(&registry, &policies, &r)
            .unwrap_err()
            .to_string()
            .contains("colour")
    );
}

/// An independent reference for phase 2: every subset of the countries, checked directly.
fn brute_force(
    n: usize,
    accepts: &[Vec<bool>],
    agencies: &[u64],
    min_p: &[u64],
    min_c: &[u64],
) -> Option<u64> {
    let mut best: Option<(u64, u32, u64)> = None; // (agencies, countries, set)
    for set in 1u64..(1 << n) {
        let members: Vec<usize> = (0..n).filter(|i| set & (1 << i) != 0).collect();
        let total: u64 = members.iter().map(|&i| agencies[i]).sum();
        let count = members.len() as u64;
        let mutual = members.iter().all(|&a| {
            members
                .iter()
                .all(|&b| a == b || (accepts[a][b] && accepts[b][a]))
        });
        let mins = members
            .iter()
            .all(|&c| total >= min_p[c] && count >= min_c[c]);
        if !(mutual && mins) {
            continue;
        }
        let better = match best {
            None => true,
            Some((t, c, s)) => {
                (total, count as u32) > (t, c)
                    || ((total, count as u32) == (t, c) && {
                        let diff = set ^ s;
                        set & (diff & diff.wrapping_neg()) != 0
                    })
            }
        };
        if better {
            best = Some((total, count as u32, set));
        }
    }
    best.map(|b| b.2)
}

const CODES: [&str; 7] = ["AT", "BE", "CH", "DE", "FR", "NL", "PL"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Random small federations: the admitted set is the brute-force optimum (nothing lawful
    /// left out, nothing unlawful let in), and every survivor left out has a phase-2 reason
    /// that is true of the admitted set.
    #[test]
    fn largest_admissible_set_matches_brute_force(
        n in 1usize..=7,
        allow_bits in proptest::collection::vec(any::<bool>(), 49),
        deny_bits in proptest::collection::vec(proptest::bool::weighted(0.15), 49),
        agencies in proptest::collection::vec(1u64..=3, 7),
        min_p in proptest::collection::vec(1u64..=8, 7),
        min_c in proptest::collection::vec(1u64..=4, 7),
    ) {
        let registry = registry();
        let mut texts = Vec::new();
        let mut accepts = vec![vec![false; n]; n];
        for a in 0..n {
            let mut rules = allow(&format!("{}-NONE", CODES[a]), &["CA"]); // keeps the purpose allowed
            for b in 0..n {
                if a == b { continue; }
                let allowed = allow_bits[a * 7 + b];
                let denied = deny_bits[a * 7 + b];
                if allowed { rules += &allow(&format!("{}-A-{}", CODES[a], CODES[b]), &[CODES[b]]); }
                if denied { rules += &deny(&format!("{}-D-{}", CODES[a], CODES[b]), &[CODES[b]]); }
                accepts[a][b] = allowed && !denied;
            }
            let extra = format!("min_participants = {}\nmin_distinct_countries = {}", min_p[a], min_c[a]);
            texts.push((CODES[a], policy_text(CODES[a], &extra, &rules)));
        }
        let mut participants = Vec::new();
        let names: Vec<Vec<String>> = (0..n).map(|c| (0..agencies[c]).map(|i| format!("{}-{i}", CODES[c])).collect()).collect();
        for (c, list) in names.iter().enumerate() {
            for a in list { participants.push((a.as_str(), CODES[c], 0.0)); }
        }
        let policies: Vec<(&str, String)> = texts.iter().map(|(c, t)| (*c, t.clone())).collect();
        let decision = decide(&registry, &loaded(&registry, &policies), &request(&participants)).unwrap();

        let expected = brute_force(n, &accepts, &agencies[..n], &min_p[..n], &min_c[..n]);
        let expected_agencies: Vec<String> = (0..n)
            .filter(|c| expected.is_some_and(|s| s & (1 << c) != 0))
            .flat_map(|c| names[c].clone())
            .collect();
        prop_assert_eq!(&decision.admitted, &expected_agencies);

        let admitted_countries: Vec<usize> = (0..n).filter(|c| expected.is_some_and(|s| s & (1 << c) != 0)).collect();
        let total: u64 = admitted_countries.iter().map(|&c| agencies[c]).sum();
        for e in &decision.excluded {
            let k = CODES.iter().position(|c| *c == e.country).unwrap();
            prop_assert_eq!(e.phase, 2);
            prop_assert!(!e.all_reasons.is_empty());
            if expected.is_some() {
                let denied = admitted_countries.iter().any(|&c| deny_bits[k * 7 + c]);
                let not_allowed = admitted_countries.iter().any(|&c| !allow_bits[k * 7 + c]);
                let rejected = admitted_countries.iter().any(|&c| !accepts[c][k]);
                let below_p = total + agencies[k] < min_p[k];
                let below_c = admitted_countries.len() as u64 + 1 < min_c[k];
                let mut want = Vec::new();
                if denied { want.push(Reason::RecipientDenied); }
                if not_allowed { want.push(Reason::RecipientNotAllowed); }
                if rejected { want.push(Reason::RejectedByParticipant); }
                if below_p { want.push(Reason::MinParticipantsUnmet); }
                if below_c { want.push(Reason::MinCountriesUnmet); }
                prop_assert_eq!(&e.all_reasons, &want);
            } else {
                prop_assert!(e.all_reasons.iter().all(|r| matches!(r, Reason::MinParticipantsUnmet | Reason::MinCountriesUnmet | Reason::NoFeasibleRound)));
            }
        }
    }
}

#[test]
fn thirty_countries_are_decided() {
    // Every EU-style country accepts every other; one denies two. Exercises the 64-bit sets
    // beyond a handful of countries (timing is measured by `treaty bench policy`).
    let registry_text = {
        let codes: Vec<String> = (0..30)
            .map(|i| format!("{}{}", (b'Q' + i / 26) as char, (b'A' + i % 26) as char))
            .collect();
        common::REGISTRY.replace(
            "countries = [\"AT\", \"BE\", \"CH\", \"DE\", \"FR\", \"GB\", \"NL\", \"PL\", \"US\", \"CA\"]",
            &format!("countries = {:?}", [codes.clone(), vec!["AT".into(), "BE".into(), "CH".into(), "DE".into(), "FR".into(), "GB".into(), "NL".into(), "PL".into(), "US".into(), "CA".into()]].concat()),
        )
        .replace("[groups.NORTH_AMERICA]", &format!("[groups.ALL]\nmembers = {codes:?}\n\n[groups.NORTH_AMERICA]"))
    };
    let registry = treaty_policies::Registry::parse("r.toml", &registry_text).unwrap();
    let codes: Vec<String> = (0..30)
        .map(|i| format!("{}{}", (b'Q' + i / 26) as char, (b'A' + i % 26) as char))
        .collect();
    let mut policies = BTreeMap::new();
    for (i, c) in codes.iter().enumerate() {
        let mut rules = allow(&format!("{c}-ALL"), &["ALL"]);
        if i == 0 {
            rules += &deny("QA-DENY", &[codes[1].as_str(), codes[2].as_str()]);
        }
        let text = policy_text(c, "min_participants = 3", &rules).replace(
            "allowed_jurisdictions = [\"EU\"]",
            "allowed_jurisdictions = [\"ALL\"]",
        );
        let p = Policy::parse("x", &text, &registry, Some(c)).unwrap();
        policies.insert(c.clone(), Loaded::Valid(Box::new(p)));
    }
    let participants: Vec<(String, String)> = codes
        .iter()
        .flat_map(|c| [(format!("{c}-1"), c.clone()), (format!("{c}-2"), c.clone())])
        .collect();
    let refs: Vec<(&str, &str, f64)> = participants
        .iter()
        .map(|(a, c)| (a.as_str(), c.as_str(), 0.0))
        .collect();
    let mut r = request(&refs);
    r.coordinator_country = "QB".into();
    let d = decide(&registry, &policies, &r).unwrap();
    // Dropping QA (2 agencies) beats dropping QB and QC (4).
    assert_eq!(d.admitted.len(), 58);
    assert_eq!(reasons(&d, "QA-1"), [Reason::RecipientDenied]);
}

#[test]
fn sixty_four_countries_in_disjoint_deny_pairs_are_decided_exactly() {
    // 32 pairs of countries that deny each other: 2^32 maximal sets accept one another, all of
    // the same size. The search must still find the one with the earliest countries at once.
    let codes: Vec<String> = (0..64)
        .map(|i| format!("{}{}", (b'Q' + i / 26) as char, (b'A' + i % 26) as char))
        .collect();
    let registry_text = format!(
        "registry_version = \"r\"\ncountries = {codes:?}\n\n[purposes]\nnarcotics = \"n\"\n\n[groups.ALL]\nmembers = {codes:?}\n"
    );
    let registry = treaty_policies::Registry::parse("r.toml", &registry_text).unwrap();
    let mut policies = BTreeMap::new();
    for (i, c) in codes.iter().enumerate() {
        let partner = &codes[i ^ 1];
        let rules =
            allow(&format!("{c}-ALL"), &["ALL"]) + &deny(&format!("{c}-D"), &[partner.as_str()]);
        let text = policy_text(c, "", &rules).replace(
            "allowed_jurisdictions = [\"EU\"]",
            "allowed_jurisdictions = [\"ALL\"]",
        );
        let p = Policy::parse("x", &text, &registry, Some(c)).unwrap();
        policies.insert(c.clone(), Loaded::Valid(Box::new(p)));
    }
    // Odd countries first in the request: they win the ties.
    let mut order: Vec<usize> = (0..64).filter(|i| i % 2 == 1).collect();
    order.extend((0..64).filter(|i| i % 2 == 0));
    let names: Vec<String> = order.iter().map(|&i| format!("{}-1", codes[i])).collect();
    let refs: Vec<(&str, &str, f64)> = order
        .iter()
        .zip(&names)
        .map(|(&i, n)| (n.as_str(), codes[i].as_str(), 0.0))
        .collect();
    let mut r = request(&refs);
    r.coordinator_country = codes[0].clone();
    r.fields.clear();
    let d = decide(&registry, &policies, &r).unwrap();
    let expected: Vec<String> = (0..64)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("{}-1", codes[i]))
        .collect();
    assert_eq!(d.admitted, expected);
    for e in &d.excluded {
        assert_eq!(
            e.all_reasons,
            [Reason::RecipientDenied, Reason::RejectedByParticipant]
        );
    }
}

#[test]
fn a_node_judges_a_round_by_its_own_policy_alone() {
    use treaty_policies::own_view;
    let registry = registry();
    let de = policy_text(
        "DE",
        "min_participants = 4",
        &(allow("DE-EU", &["EU"]) + &deny("DE-NL-DENY", &["NL"])),
    );
    let de = Loaded::Valid(Box::new(parse(&registry, "DE", &de)));
    let r = request(&[
        ("DE-1", "DE", 0.0),
        ("NL-1", "NL", 0.0),
        ("FR-1", "FR", 0.0),
    ]);
    let reasons = own_view(&registry, &de, &r, "DE-1").unwrap();
    let codes: Vec<Reason> = reasons.iter().map(|r| r.reason).collect();
    // NL is denied (over the EU allow), and three agencies are fewer than DE's four; FR's
    // own policy is not consulted (none is given).
    assert_eq!(
        codes,
        [Reason::RecipientDenied, Reason::MinParticipantsUnmet]
    );
    assert!(
        reasons[0].explanation.contains("DE-NL-DENY"),
        "{}",
        reasons[0].explanation
    );
    assert!(
        reasons[0]
            .explanation
            .contains("overrides allow rule DE-EU"),
        "{}",
        reasons[0].explanation
    );
    // With the agency's own spending: phase 1 stops the round before recipients are judged.
    let mut spent = request(&[("DE-1", "DE", 7.9), ("FR-1", "FR", 0.0)]);
    spent.epsilon_per_round = 0.2;
    let codes: Vec<Reason> = own_view(&registry, &de, &spent, "DE-1")
        .unwrap()
        .iter()
        .map(|r| r.reason)
        .collect();
    assert_eq!(codes, [Reason::BudgetExhausted]);
    // A lawful round in DE's eyes, and an agency that is not a participant.
    let ok = request(&[
        ("DE-1", "DE", 0.0),
        ("DE-2", "DE", 0.0),
        ("FR-1", "FR", 0.0),
        ("PL-1", "PL", 0.0),
    ]);
    assert!(own_view(&registry, &de, &ok, "DE-1").unwrap().is_empty());
    assert!(own_view(&registry, &de, &ok, "DE-9").is_err());
}

#[test]
fn reason_codes_are_the_spec_names_in_the_spec_order() {
    // Spelled out here, independently of the enum, as docs/POLICY_LANGUAGE.md lists them
    // (POLICY_SIGNATURE_INVALID is Treaty's, for required signatures; so is
    // SECURE_AGGREGATION_REQUIRED, for `[handling] require_secure_aggregation`).
    let spec = [
        "POLICY_MISSING",
        "POLICY_PARSE_ERROR",
        "POLICY_SCHEMA_ERROR",
        "POLICY_SIGNATURE_INVALID",
        "POLICY_NOT_YET_VALID",
        "POLICY_EXPIRED",
        "PURPOSE_NOT_ALLOWED",
        "COORDINATOR_DENIED",
        "COORDINATOR_NOT_ALLOWED",
        "FIELD_EXCLUDED",
        "EPSILON_PER_ROUND_EXCEEDED",
        "DELTA_EXCEEDED",
        "BUDGET_EXHAUSTED",
        "RETENTION_EXCEEDED",
        "ONWARD_TRANSFER_NOT_ALLOWED",
        "SECURE_AGGREGATION_REQUIRED",
        "RECIPIENT_DENIED",
        "RECIPIENT_NOT_ALLOWED",
        "REJECTED_BY_PARTICIPANT",
        "MIN_PARTICIPANTS_UNMET",
        "MIN_COUNTRIES_UNMET",
        "NO_FEASIBLE_ROUND",
    ];
    let codes: Vec<String> = Reason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(codes, spec);
    assert!(Reason::ALL.windows(2).all(|w| w[0] < w[1]));
    for r in Reason::ALL {
        assert_eq!(Reason::from_code(&r.code()), Some(r));
    }
    assert_eq!(Reason::from_code("BUDGET_EXHAUSTE"), None);
}

#[test]
fn numbers_are_read_as_toml_writes_them() {
    let registry = registry();
    let text = policy_text(
        "DE",
        "min_participants = 0x3\nmin_distinct_countries = 1_0",
        &allow("DE-EU", &["EU"]),
    )
    .replace("max_epsilon_total = 8.0", "max_epsilon_total = 1_000.5")
    .replace("max_epsilon_per_round = 1.0", "max_epsilon_per_round = 2");
    let p = parse(&registry, "DE", &text);
    assert_eq!((p.min_participants, p.min_distinct_countries), (3, 10));
    assert_eq!(p.max_epsilon_total.value, 1000.5);
    assert_eq!(p.max_epsilon_per_round.exact.to_string(), "2");
    let huge = policy_text("DE", "min_participants = 9223372036854775808", "");
    let e = Policy::parse("DE.toml", &huge, &registry, Some("DE")).unwrap_err();
    assert!(matches!(e, PolicyError::Parse(_) | PolicyError::Schema(_)));
}
