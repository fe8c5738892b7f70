//! The node's configuration file (TOML).
//!
//! ```toml
//! state_dir = "/var/lib/treaty/node"      # the node's own database (created if missing)
//!
//! [coordinator]
//! address = "coordinator.example:7443"     # host:port; the host must be in the certificate
//! reconnect_initial_ms = 500               # optional: first retry delay
//! reconnect_max_ms = 30000                 # optional: longest retry delay
//!
//! [tls]
//! ca_cert = "pki/ca.crt"
//! cert = "pki/agency-DE-BKA.crt"
//! key = "pki/agency-DE-BKA.key"
//!
//! [data]
//! train = "data/train.csv"                 # CSV with a header row
//! test = "data/test.csv"                   # optional: evaluation split
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use treaty_proto::tls::TlsFiles;

use crate::error::ConfigError;

/// Everything the node reads from its configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's own database directory (its journal of releases).
    pub state_dir: PathBuf,
    /// How to reach the coordinator.
    pub coordinator: CoordinatorLink,
    /// The agency's TLS files; the agency's identity is its certificate's.
    pub tls: TlsFiles,
    /// The agency's data.
    pub data: DataFiles,
}

/// How to reach the coordinator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorLink {
    /// `host:port` of the coordinator. The host is checked against the coordinator's certificate.
    pub address: String,
    /// The first delay before reconnecting after a lost or failed connection, in milliseconds.
    #[serde(default = "default_initial")]
    pub reconnect_initial_ms: u64,
    /// The longest delay between reconnection attempts, in milliseconds (delays double up to it).
    #[serde(default = "default_max")]
    pub reconnect_max_ms: u64,
}

/// The agency's data files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFiles {
    /// Training records: CSV with a header row.
    pub train: PathBuf,
    /// Evaluation records, same columns; optional.
    #[serde(default)]
    pub test: Option<PathBuf>,
}

fn default_initial() -> u64 {
    500
}

fn default_max() -> u64 {
    30_000
}

impl NodeConfig {
    /// Reads and validates a configuration file, reporting every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.state_dir,
            &mut config.tls.ca_cert,
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.data.train,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = config.data.test.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// Every problem with the values, each in a sentence.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut files = vec![
            ("tls.ca_cert", &self.tls.ca_cert),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("data.train", &self.data.train),
        ];
        if let Some(test) = &self.data.test {
            files.push(("data.test", test));
        }
        for (key, path) in files {
            if !path.is_file() {
                problems.push(format!("`{key}`: file `{}` does not exist", path.display()));
            }
        }
        match self.coordinator.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => problems.push(format!(
                "`coordinator.address` is `{}`; expected host:port, e.g. `coordinator.example:7443`",
                self.coordinator.address
            )),
        }
        if self.coordinator.reconnect_initial_ms == 0
            || self.coordinator.reconnect_max_ms < self.coordinator.reconnect_initial_ms
        {
            problems.push(
                "`coordinator.reconnect_initial_ms` must be at least 1 and at most `reconnect_max_ms`".into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
