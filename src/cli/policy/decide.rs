//! `treaty policy decide`: the decision of one round, as JSON.

use std::collections::BTreeMap;
use std::path::Path;

use treaty_policies::{Loaded, PolicyDir, Request, decide};

use super::{Code, attempt, keys_or_2, registry_or_2, unusable};
use treaty_devkit::outln;

pub(super) fn decide_cmd(
    registry: &Path,
    policies: &Path,
    request: &Path,
    keys: Option<&Path>,
) -> Code {
    attempt(|| {
        let registry = registry_or_2(registry)?;
        let keys = keys_or_2(keys)?;
        let request = Request::load(request).map_err(unusable)?;
        if !policies.is_dir() {
            return Err(unusable(format!(
                "the policy directory {} does not exist",
                policies.display()
            )));
        }
        let dir = PolicyDir::new(policies, keys);
        let loaded: BTreeMap<String, Loaded> = dir.load_all(
            &registry,
            request.participants.iter().map(|p| p.country.as_str()),
        );
        let decision = decide(&registry, &loaded, &request).map_err(unusable)?;
        let text = serde_json::to_string_pretty(&decision).map_err(unusable)?;
        outln!("{text}");
        Ok(0)
    })
}
