//! The coordinator's configuration file (TOML). Every key, its default and a complete example:
//! docs/CONFIGURATION.md (its examples are loaded by `tests/e2e/docs.rs`).
//!
//! ```toml
//! listen = "0.0.0.0:7443"              # where nodes and operators connect
//! data_dir = "/var/lib/treaty/coordinator"
//! address_file = "/run/treaty/address"   # optional: the bound address is written here
//! shutdown_grace_secs = 10               # optional
//!
//! [tls]
//! ca_cert = "pki/ca.crt"
//! cert = "pki/coordinator.crt"
//! key = "pki/coordinator.key"
//! crl = "pki/crl.pem"                    # optional; re-read whenever it changes
//!
//! [limits]                               # optional
//! max_update_elements = 10000000
//! max_records_per_agency = 100000000
//! max_round_memory_bytes = 1073741824
//!
//! [policy]                               # sharing policies: every round is decided by them
//! country = "NL"                         # where this coordinator is hosted
//! registry = "policies/registry.toml"
//! dir = "policies"                       # <CC>.toml of every member country
//! keys = "policies/keys"                 # optional: require signed policies (<CC>.pub)
//!
//! [monitoring]                           # optional: Prometheus metrics at /metrics
//! listen = "127.0.0.1:9464"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use treaty_policies::PolicyFiles;
use treaty_proto::config::{self, ConfigError, Validate};
use treaty_proto::tls::TlsFiles;

/// Everything the coordinator reads from its configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// The address to listen on, e.g. `0.0.0.0:7443`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The directory of the coordinator's database (created if missing).
    pub data_dir: PathBuf,
    /// When set, the bound address (`host:port`) is written to this file once the server listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_file: Option<PathBuf>,
    /// How long a graceful shutdown may take before connections are cut, in seconds.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// The coordinator's TLS files.
    pub tls: CoordinatorTls,
    /// Limits on what peers may send.
    #[serde(default)]
    pub limits: Limits,
    /// The sharing policies every round is decided by.
    pub policy: CoordinatorPolicy,
    /// Where Prometheus metrics are served (`/metrics`); absent: nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<treaty_proto::monitoring::Monitoring>,
}

/// The `[policy]` section: where the coordinator is hosted and where its policies are.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorPolicy {
    /// The country hosting this coordinator (ISO 3166-1 alpha-2), judged by every policy's
    /// `[coordinator]` section.
    pub country: String,
    /// The federation's registry (`registry.toml`).
    pub registry: PathBuf,
    /// The directory of the member countries' policies, `<CC>.toml` each.
    pub dir: PathBuf,
    /// The countries' public keys (`<CC>.pub`); when set, every policy must be signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<PathBuf>,
}

impl CoordinatorPolicy {
    pub fn files(&self) -> PolicyFiles {
        PolicyFiles {
            registry: self.registry.clone(),
            dir: self.dir.clone(),
            keys: self.keys.clone(),
        }
    }
}

/// The coordinator's TLS files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorTls {
    /// The federation CA's certificate: the only trust anchor for client certificates.
    pub ca_cert: PathBuf,
    /// The coordinator's certificate (`treaty://coordinator/<name>`).
    pub cert: PathBuf,
    /// The coordinator's private key.
    pub key: PathBuf,
    /// The federation's certificate revocation list (PEM), re-read whenever it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

impl CoordinatorTls {
    /// The certificate files, as the TLS layer takes them.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Limits on what peers may send.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The most elements a model, update or query result may have.
    #[serde(default = "default_max_elements")]
    pub max_update_elements: u64,
    /// The most records one agency may hold: a public bound that every answer is checked
    /// against (a count above it, plus a generous allowance for its noise, is rejected), and
    /// the most examples a result may claim.
    #[serde(default = "default_max_records")]
    pub max_records_per_agency: u64,
    /// The most bytes one round of a training job may hold for its updates. A robust strategy
    /// (median, trimmed mean, norm-bounded) holds every member's update (members x parameters x
    /// 8 bytes): `CreateJob` refuses a job over this. FedAvg and the server optimisers fold each
    /// update in as it arrives and hold one model's sum whatever the number of members.
    #[serde(default = "default_max_round_memory")]
    pub max_round_memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_update_elements: default_max_elements(),
            max_records_per_agency: default_max_records(),
            max_round_memory_bytes: default_max_round_memory(),
        }
    }
}

fn default_max_round_memory() -> u64 {
    1 << 30
}

fn default_max_records() -> u64 {
    100_000_000
}

fn default_grace() -> u64 {
    10
}

fn default_max_elements() -> u64 {
    10_000_000
}

impl CoordinatorConfig {
    /// Reads and validates a configuration file, reporting every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config::load(path)
    }
}

impl Validate for CoordinatorConfig {
    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.data_dir,
            &mut self.tls.ca_cert,
            &mut self.tls.cert,
            &mut self.tls.key,
        ] {
            config::resolve(base, p);
        }
        for p in [&mut self.policy.registry, &mut self.policy.dir] {
            config::resolve(base, p);
        }
        for p in [
            &mut self.address_file,
            &mut self.tls.crl,
            &mut self.policy.keys,
        ]
        .into_iter()
        .flatten()
        {
            config::resolve(base, p);
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut files = vec![
            ("tls.ca_cert", self.tls.ca_cert.as_path()),
            ("tls.cert", self.tls.cert.as_path()),
            ("tls.key", self.tls.key.as_path()),
        ];
        if let Some(crl) = &self.tls.crl {
            files.push(("tls.crl", crl.as_path()));
        }
        let mut problems = config::missing_files(files);
        let (policy_problems, registry) = self.policy.files().problems("policy");
        problems.extend(policy_problems);
        if let Some(registry) = registry
            && !registry.is_country(&self.policy.country)
        {
            problems.push(format!(
                "`policy.country`: `{}` is not a country of registry {}",
                self.policy.country, registry.version
            ));
        }
        if !(1..=1u64 << 53).contains(&self.limits.max_records_per_agency) {
            problems.push(
                "`limits.max_records_per_agency` must be 1 to 2^53 (9007199254740992)".to_owned(),
            );
        }
        if self.limits.max_update_elements == 0 {
            problems.push("`limits.max_update_elements` must be at least 1".to_owned());
        }
        if self.limits.max_round_memory_bytes == 0 {
            problems.push("`limits.max_round_memory_bytes` must be at least 1".to_owned());
        }
        problems
    }
}
