//! Reading a process's configuration file. The coordinator's and the node's files share one
//! format (TOML, unknown keys refused, paths relative to the file) and one way of failing: an
//! error that names the file and lists every problem at once.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Its reason is in the message, not a `source`, so that an error chain says it once.
    #[error("cannot read configuration `{path}`: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("configuration `{path}` is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration `{path}` has problems:\n  - {}", problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// A configuration that can check its own values.
pub trait Validate {
    /// Makes relative paths relative to `base`, the configuration file's directory.
    fn resolve_paths(&mut self, base: &Path);
    /// Every problem with the values, each in a sentence.
    fn problems(&self) -> Vec<String>;
}

/// Reads, parses, resolves and validates a configuration file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
        path: path.to_owned(),
        reason,
    })?;
    let mut config: T = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    let problems = config.problems();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }
}

/// Makes `path` relative to `base` when it is relative.
pub fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// A problem for each of the named files that does not exist.
pub fn missing_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a Path)>) -> Vec<String> {
    files
        .into_iter()
        .filter(|(_, path)| !path.is_file())
        .map(|(key, path)| format!("`{key}`: file `{}` does not exist", path.display()))
        .collect()
}
