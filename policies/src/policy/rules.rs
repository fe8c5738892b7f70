//! Reading a policy's `[[rule]]` tables.

use std::collections::BTreeMap;

use super::parse::Table;
use super::vocabulary::{terms, tokens};
use super::{Effect, Rule, TRANSFER_BASES};
use crate::registry::Registry;
use crate::source::{Reader, did_you_mean};

const RULE_KEYS: [&str; 9] = [
    "id",
    "effect",
    "purposes",
    "recipients",
    "transfer_basis",
    "legal_basis",
    "valid_from",
    "valid_until",
    "note",
];

pub(super) fn read_rules(
    r: &mut Reader<'_>,
    top: &Table<'_>,
    registry: &Registry,
    groups: &BTreeMap<String, Vec<String>>,
) -> Option<Vec<Rule>> {
    let Some(value) = top.get("rule") else {
        return Some(Vec::new());
    };
    let Some(items) = value.get_ref().as_array() else {
        r.error(
            &value.span(),
            "rules are written as [[rule]] tables (double brackets), one per rule",
        );
        return None;
    };
    let mut rules = Vec::new();
    let mut ok = true;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for item in items.iter() {
        let Some(t) = r.table(item, "[[rule]]") else {
            ok = false;
            continue;
        };
        let span = item.span();
        let before = r.problems.len();
        r.unknown_keys(t, &RULE_KEYS, "[[rule]]");
        let id_value = r.required(t, "id", "[[rule]]", &span);
        let id = id_value.and_then(|v| r.string(v, "rule id"));
        let line = r
            .source
            .line_of(&id_value.map_or(span.clone(), |v| v.span()));
        let place = id
            .as_ref()
            .map_or("[[rule]]".to_string(), |i| format!("rule {i}"));
        if let (Some(i), Some(v)) = (&id, id_value) {
            if let Some(first) = seen.get(i) {
                r.error(
                    &v.span(),
                    format!(
                        "rule id `{i}` is used twice (first on line {first}); rule ids are unique"
                    ),
                );
            } else {
                seen.insert(i.clone(), line);
            }
        }
        let effect = r.required(t, "effect", &place, &span).and_then(|v| {
            match r.string(v, &format!("{place} effect"))?.as_str() {
                "allow" => Some(Effect::Allow),
                "deny" => Some(Effect::Deny),
                other => {
                    let hint = did_you_mean(other, ["allow", "deny"]);
                    r.error_hint(
                        &v.span(),
                        format!("{place} effect must be \"allow\" or \"deny\", not \"{other}\""),
                        hint,
                    );
                    None
                }
            }
        });
        let purposes = match t.get("purposes") {
            Some(v) => terms(
                r,
                v,
                &format!("{place} purposes"),
                "purpose",
                |p| registry.purposes.contains_key(p),
                || registry.purposes.keys().map(String::as_str).collect(),
            )
            .map(Some),
            None if effect == Some(Effect::Allow) => {
                r.error(
                    &span,
                    format!("{place} allows but lists no purposes (add purposes = [...])"),
                );
                None
            }
            None => Some(None),
        };
        let recipients = r
            .required(t, "recipients", &place, &span)
            .and_then(|v| tokens(r, v, &format!("{place} recipients"), registry, groups));
        let transfer_basis = t.get("transfer_basis").and_then(|v| {
            let b = r.string(v, &format!("{place} transfer_basis"))?;
            if TRANSFER_BASES.contains(&b.as_str()) {
                Some(b)
            } else {
                let hint = did_you_mean(&b, TRANSFER_BASES);
                r.error_hint(
                    &v.span(),
                    format!(
                        "{place} transfer_basis `{b}` is not one of {}",
                        TRANSFER_BASES.join(", ")
                    ),
                    hint,
                );
                None
            }
        });
        let legal_basis = match t.get("legal_basis") {
            Some(v) => r.string(v, &format!("{place} legal_basis")),
            None => {
                if effect == Some(Effect::Allow) {
                    r.error(&span, format!("{place} allows but gives no legal_basis"));
                }
                None
            }
        };
        let valid_from = t
            .get("valid_from")
            .and_then(|v| r.date(v, &format!("{place} valid_from")));
        let until_value = t.get("valid_until");
        let valid_until = until_value.and_then(|v| r.date(v, &format!("{place} valid_until")));
        if let (Some(f), Some(u), Some(v)) = (valid_from, valid_until, until_value)
            && f > u
        {
            r.error(
                &v.span(),
                format!("{place} valid_until {u} is before its valid_from {f}"),
            );
        }
        let note = t
            .get("note")
            .and_then(|v| r.string(v, &format!("{place} note")));
        match (id, effect, purposes, recipients) {
            (Some(id), Some(effect), Some(purposes), Some(recipients))
                if r.problems.len() == before =>
            {
                rules.push(Rule {
                    id,
                    effect,
                    purposes,
                    recipients,
                    transfer_basis,
                    legal_basis,
                    valid_from,
                    valid_until,
                    note,
                    line,
                })
            }
            _ => ok = false,
        }
    }
    ok.then_some(rules)
}
