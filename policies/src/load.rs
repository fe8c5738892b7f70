//! Reading policies from a directory of `<CC>.toml` files, as the coordinator, the nodes and
//! the command line do: every load re-reads the files, so a changed policy applies from the
//! next decision, and a broken, unsigned or badly signed one is never applied in part. What a
//! text parses to is remembered by the text's content (`parsed`): a file read again unchanged
//! is not parsed again, and a changed one is.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::decide::Loaded;
use crate::policy::{Policy, PolicyError};
use crate::registry::Registry;
use crate::sha256_hex;
use crate::signing::{SigningError, TrustedKeys};
use crate::source::Diagnostic;

/// A directory of policies, with the federation's keys when signatures are required.
#[derive(Clone, Debug)]
pub struct PolicyDir {
    pub dir: PathBuf,
    pub keys: Option<TrustedKeys>,
}

impl PolicyDir {
    pub fn new(dir: impl Into<PathBuf>, keys: Option<TrustedKeys>) -> PolicyDir {
        PolicyDir {
            dir: dir.into(),
            keys,
        }
    }

    pub fn path_of(&self, country: &str) -> PathBuf {
        self.dir.join(format!("{country}.toml"))
    }

    /// One country's policy, as it stands on disk now, with the file's bytes (for the record).
    pub fn load(&self, registry: &Registry, country: &str) -> (Loaded, Option<String>) {
        load_file(
            &self.path_of(country),
            country,
            registry,
            self.keys.as_ref(),
        )
    }

    /// The policies of `countries` (duplicates loaded once).
    pub fn load_all<'a>(
        &self,
        registry: &Registry,
        countries: impl IntoIterator<Item = &'a str>,
    ) -> BTreeMap<String, Loaded> {
        let mut out = BTreeMap::new();
        for c in countries {
            if !out.contains_key(c) {
                out.insert(c.to_string(), self.load(registry, c).0);
            }
        }
        out
    }
}

/// Loads one policy file for `country`, checking its signature when `keys` is given.
pub fn load_file(
    path: &Path,
    country: &str,
    registry: &Registry,
    keys: Option<&TrustedKeys>,
) -> (Loaded, Option<String>) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (
                Loaded::Missing {
                    looked_at: path.display().to_string(),
                },
                None,
            );
        }
        Err(e) => {
            return (
                Loaded::Missing {
                    looked_at: format!("{} (unreadable: {e})", path.display()),
                },
                None,
            );
        }
    };
    let sha256 = sha256_hex(&bytes);
    let file = path.display().to_string();
    let Ok(text) = String::from_utf8(bytes.clone()) else {
        let error = PolicyError::Parse(crate::source::Diagnostic {
            file,
            line: 1,
            column: 1,
            message: "not valid TOML: the file is not UTF-8 text".into(),
            hint: None,
        });
        return (Loaded::Broken { error, sha256 }, None);
    };
    if let Some(keys) = keys
        && let Err(e) = keys.check(country, path, &bytes)
    {
        return (
            Loaded::BadSignature {
                problem: e.to_string(),
                sha256,
            },
            Some(text),
        );
    }
    static POLICIES: Remembered<Result<Policy, PolicyError>> = OnceLock::new();
    let key = [file.as_str(), country, registry.sha256.as_str(), &sha256];
    let parsed = parsed(&POLICIES, &key, || {
        Policy::parse(&file, &text, registry, Some(country))
    });
    let loaded = match parsed {
        Ok(p) => Loaded::Valid(Box::new(p)),
        Err(error) => Loaded::Broken { error, sha256 },
    };
    (loaded, Some(text))
}

/// Parsed texts remembered by their inputs.
type Remembered<V> = OnceLock<Mutex<HashMap<String, V>>>;

/// How many parsed texts a cache holds before it starts afresh. A process that hosts many
/// agencies reads a registry and a policy per agency: W3's host of 1,000 agencies, with room for
/// 256, cleared its caches every round and parsed every registry afresh at every check.
const REMEMBERED: usize = 4096;

/// What `parse` gives for inputs `key` (names and the SHA-256 of every text it reads),
/// remembered in `cache`: parsing is a pure function of its inputs.
fn parsed<V: Clone>(cache: &'static Remembered<V>, key: &[&str], parse: impl FnOnce() -> V) -> V {
    let cache = cache.get_or_init(Default::default);
    let key = key.join("\n");
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return v.clone();
    }
    let v = parse();
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= REMEMBERED {
        cache.clear();
    }
    cache.insert(key, v.clone());
    v
}

/// The country a policy file is named after: `DE.toml` -> `DE`.
pub fn country_of(path: &Path) -> Option<String> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".toml")?;
    (stem.len() == 2 && stem.bytes().all(|b| b.is_ascii_uppercase())).then(|| stem.to_string())
}

/// A process's policy settings ([`PolicyFiles`]) cannot be used now.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the registry {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the registry is unusable: {}", list(.0))]
    Registry(Vec<Diagnostic>),
    #[error("the policy keys are unusable: {0}")]
    Keys(#[source] SigningError),
}

fn list(problems: &[Diagnostic]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

/// Where a process finds its policies: the `[policy]` section of a coordinator's or node's
/// configuration. Everything is re-read for every decision, so new versions apply from the
/// next round without a restart.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFiles {
    /// The federation's registry.
    pub registry: PathBuf,
    /// The directory of `<CC>.toml` policies (and their `.sig` signatures).
    pub dir: PathBuf,
    /// The federation's public keys (`<CC>.pub`); when set, every policy must be signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<PathBuf>,
}

impl PolicyFiles {
    /// The registry as it stands now, with its text (for the record).
    /// The parsed registry is shared, not copied: a node checks every task against it.
    pub fn registry(&self) -> Result<(Arc<Registry>, String), LoadError> {
        let text = std::fs::read_to_string(&self.registry).map_err(|source| LoadError::Read {
            path: self.registry.clone(),
            source,
        })?;
        static REGISTRIES: Remembered<Result<Arc<Registry>, Vec<Diagnostic>>> = OnceLock::new();
        let file = self.registry.display().to_string();
        let key = [file.as_str(), &sha256_hex(text.as_bytes())];
        let registry = parsed(&REGISTRIES, &key, || {
            Registry::parse(&file, &text).map(Arc::new)
        })
        .map_err(LoadError::Registry)?;
        Ok((registry, text))
    }

    /// The policy directory, with the trusted keys loaded when signatures are required.
    pub fn policy_dir(&self) -> Result<PolicyDir, LoadError> {
        let keys = match &self.keys {
            Some(dir) => Some(TrustedKeys::load(dir).map_err(LoadError::Keys)?),
            None => None,
        };
        Ok(PolicyDir::new(&self.dir, keys))
    }

    /// Problems that make the settings unusable now (checked when a process starts), with the
    /// registry when it is usable (for the caller's own checks against it).
    pub fn problems(&self, section: &str) -> (Vec<String>, Option<Arc<Registry>>) {
        let mut problems = Vec::new();
        let registry = match self.registry() {
            Ok((registry, _)) => Some(registry),
            Err(e) => {
                problems.push(format!("`{section}.registry`: {e}"));
                None
            }
        };
        if !self.dir.is_dir() {
            problems.push(format!(
                "`{section}.dir`: {} is not a directory",
                self.dir.display()
            ));
        }
        if let Some(keys) = &self.keys
            && let Err(e) = TrustedKeys::load(keys)
        {
            problems.push(format!("`{section}.keys`: {e}"));
        }
        (problems, registry)
    }

    /// Makes the paths relative to `base` (the configuration file's directory).
    pub fn resolve(&mut self, resolve: impl Fn(&mut PathBuf)) {
        resolve(&mut self.registry);
        resolve(&mut self.dir);
        if let Some(keys) = &mut self.keys {
            resolve(keys);
        }
    }
}
