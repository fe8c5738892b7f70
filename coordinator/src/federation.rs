//! A federation as the coordinator works with it: a request to create one is checked where it
//! arrives into a [`ValidFederation`] (its members as identities); one read back from the store
//! gives its members by [`members`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use treaty_proto::v1::FederationInfo;
use treaty_proto::{Identity, IdentityError};

use crate::error::CoordinatorError;
use crate::store::Store;

/// Why a federation cannot be created: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", list(problems))]
pub struct InvalidFederation {
    /// Each problem, in the order of the request's fields.
    pub problems: Vec<FederationProblem>,
}

fn list(problems: &[FederationProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

/// One problem of a federation request.
#[derive(Debug, thiserror::Error)]
pub enum FederationProblem {
    #[error(
        "`{0}` is not a valid federation name (1 to 64 lowercase letters, digits and `-`, starting with a letter)"
    )]
    Name(String),
    #[error("`purpose` is empty; name the purpose its jobs serve, e.g. `narcotics`")]
    NoPurpose,
    #[error("`members` is empty; list the member agencies as `AGENCY-ID:CC`, e.g. `DE-BKA:DE`")]
    NoMembers,
    #[error("member: {0}")]
    Member(#[source] IdentityError),
    #[error("member `{0}` is listed twice")]
    Twice(String),
    #[error(
        "members `{agency}:{country}` and `{member}` share the agency id `{agency}`; a federation's members need distinct ids"
    )]
    SharedId {
        agency: String,
        country: String,
        member: String,
    },
}

/// A federation request that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct ValidFederation {
    /// The request as sent (`created_*` are the coordinator's to set).
    pub info: FederationInfo,
    /// Its members, in the request's order: no two share an agency id.
    pub members: Vec<Identity>,
}

impl TryFrom<FederationInfo> for ValidFederation {
    type Error = InvalidFederation;

    fn try_from(info: FederationInfo) -> Result<Self, InvalidFederation> {
        let mut problems = Vec::new();
        if !is_federation_name(&info.name) {
            problems.push(FederationProblem::Name(info.name.clone()));
        }
        if info.purpose.trim().is_empty() {
            problems.push(FederationProblem::NoPurpose);
        }
        if info.members.is_empty() {
            problems.push(FederationProblem::NoMembers);
        }
        // Within a federation an agency id names one agency: its rounds, events and task ids
        // show the id alone.
        let mut members = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for m in &info.members {
            let identity = match Identity::from_member(m) {
                Ok(identity) => identity,
                Err(e) => {
                    problems.push(FederationProblem::Member(e));
                    continue;
                }
            };
            if let Identity::Agency { agency, country } = &identity
                && let Some(first) = seen.insert(agency.clone(), country.clone())
            {
                problems.push(if first == *country {
                    FederationProblem::Twice(m.clone())
                } else {
                    FederationProblem::SharedId {
                        agency: agency.clone(),
                        country: first,
                        member: m.clone(),
                    }
                });
            }
            members.push(identity);
        }
        if problems.is_empty() {
            Ok(ValidFederation { info, members })
        } else {
            Err(InvalidFederation { problems })
        }
    }
}

/// A federation name: 1 to 64 lowercase letters, digits and `-`, starting with a letter.
fn is_federation_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A stored federation's members, as identities (country and id). A member that does not read
/// as `AGENCY-ID:CC` (a federation stored before members named their country) is no member:
/// nobody's certificate matches it.
pub(crate) fn members(federation: &FederationInfo) -> Vec<Identity> {
    federation
        .members
        .iter()
        .filter_map(|m| match Identity::from_member(m) {
            Ok(id) => Some(id),
            Err(error) => {
                tracing::warn!(federation = federation.name, %error, "member ignored");
                None
            }
        })
        .collect()
}

/// Each federation's members as a set, read from the store the first time a model download
/// asks whether an agency is one: every agency downloads every round's model, and reading a
/// federation of N members for each would cost a round N² work. A federation never changes
/// once created (the store only ever adds one), so a set read once stands.
#[derive(Debug, Default)]
pub(crate) struct MemberSets(Mutex<HashMap<String, Arc<HashSet<Identity>>>>);

impl MemberSets {
    /// Whether `agency` is a member of federation `name` (false when there is none).
    pub(crate) fn contains(
        &self,
        store: &Store,
        name: &str,
        agency: &Identity,
    ) -> Result<bool, CoordinatorError> {
        let known = self.lock().get(name).cloned();
        let set = match known {
            Some(set) => set,
            None => {
                let Some(federation) = store.federation(name)? else {
                    return Ok(false);
                };
                let set: Arc<HashSet<Identity>> =
                    Arc::new(members(&federation).into_iter().collect());
                self.lock().insert(name.to_owned(), Arc::clone(&set));
                set
            }
        };
        Ok(set.contains(agency))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HashSet<Identity>>>> {
        // The map is always left whole, so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(f: FederationInfo) -> Vec<String> {
        match ValidFederation::try_from(f) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn member_sets_answer_as_the_stored_federation_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_federation(&FederationInfo {
                name: "eu-narcotics".into(),
                purpose: "narcotics".into(),
                members: vec!["DE-BKA:DE".into(), "NL-POLITIE:NL".into()],
                ..Default::default()
            })
            .unwrap();
        let sets = MemberSets::default();
        let agency = |c, a| Identity::agency(c, a).unwrap();
        for _ in 0..2 {
            // Read from the store, then from the set kept.
            assert!(
                sets.contains(&store, "eu-narcotics", &agency("DE", "DE-BKA"))
                    .unwrap()
            );
            assert!(
                sets.contains(&store, "eu-narcotics", &agency("NL", "NL-POLITIE"))
                    .unwrap()
            );
            // The same id under another country is not the member.
            assert!(
                !sets
                    .contains(&store, "eu-narcotics", &agency("NL", "DE-BKA"))
                    .unwrap()
            );
            assert!(
                !sets
                    .contains(&store, "other", &agency("DE", "DE-BKA"))
                    .unwrap()
            );
        }
    }

    #[test]
    fn federation_names_and_members_are_checked() {
        let f = FederationInfo {
            name: "EU Narcotics".into(),
            purpose: String::new(),
            members: vec!["DE-BKA:DE".into(), "DE-BKA:DE".into(), "bad id:DE".into()],
            ..Default::default()
        };
        let p = problems(f);
        assert_eq!(p.len(), 4, "{p:#?}");
        let members = |m: &[&str]| FederationInfo {
            name: "eu".into(),
            purpose: "narcotics".into(),
            members: m.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let valid = ValidFederation::try_from(members(&["DE-BKA:DE", "NL-POLITIE:NL"])).unwrap();
        assert_eq!(
            valid.members,
            [
                Identity::agency("DE", "DE-BKA").unwrap(),
                Identity::agency("NL", "NL-POLITIE").unwrap()
            ]
        );
        // A member without its country, or in the certificate's order, says what to write.
        let p = problems(members(&["DE-BKA", "NL/NL-POLITIE"]));
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].contains("`DE-BKA:<CC>`"), "{p:#?}");
        assert!(p[1].contains("here `NL-POLITIE:NL`"), "{p:#?}");
        // One id in two countries is two agencies, which one federation cannot tell apart.
        let p = problems(members(&["DE-BKA:DE", "DE-BKA:NL"]));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("share the agency id `DE-BKA`"), "{p:#?}");
    }
}
