//! The node's configuration file (TOML). Every key, its default and a complete example:
//! docs/CONFIGURATION.md (its examples are loaded by `tests/e2e/docs.rs`).
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
//! cert = "pki/agency-DE-DE-BKA.crt"
//! key = "pki/agency-DE-DE-BKA.key"
//!
//! [data]
//! train = "data/train.csv"                 # CSV with a header row
//! test = "data/test.csv"                   # optional: evaluation split
//! public_records = 80000                   # optional: a record count the agency makes public
//!
//! [privacy]                                # optional: the agency's budget, over every job
//! max_epsilon = 8.0
//! delta = 1e-5
//!
//! [policy]                                 # the agency's own country's sharing policy
//! registry = "policies/registry.toml"
//! dir = "policies"                         # holds <CC>.toml of the agency's country
//! keys = "policies/keys"                   # optional: require a signed policy (<CC>.pub)
//!
//! [approval]                               # optional: the agency's operator approves each job
//! required = true                          # default false
//! approvers = ["jdoe", "asmith"]           # optional: the OS accounts that may decide
//!
//! [secure_aggregation]                     # optional: the trust assumption of distributed DP
//! assume_dishonest = 2                     # default: every other agency of a round
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use treaty_policies::PolicyFiles;
use treaty_proto::config::{self, ConfigError, Validate};
use treaty_proto::tls::TlsFiles;

/// Everything the node reads from its configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's own database directory (its privacy ledger).
    pub state_dir: PathBuf,
    /// How to reach the coordinator.
    pub coordinator: CoordinatorLink,
    /// The agency's TLS files; the agency's identity is its certificate's.
    pub tls: TlsFiles,
    /// The agency's data.
    pub data: DataFiles,
    /// The agency's privacy budget. With one, every release must be differentially private and
    /// fit in it; without, releases are recorded but not limited (an unprotected release counts
    /// as an unbounded epsilon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::ledger::Budget>,
    /// Where the registry and the agency's country's policy are: every task is checked
    /// against them before the data is touched.
    pub policy: PolicyFiles,
    /// Whether each new job needs the approval of the agency's own operator (`treaty node
    /// approve|reject`), and who may give it. Default: not required.
    #[serde(default)]
    pub approval: crate::approval::ApprovalConfig,
    /// Where Prometheus metrics are served (`/metrics`); absent: nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<treaty_proto::monitoring::Monitoring>,
    /// The agency's trust assumption under distributed DP; absent: every other agency of a
    /// round may be dishonest, so the node adds the whole noise itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<SecureAggregationConfig>,
}

/// How far the agency trusts the other agencies of a round of secure aggregation.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationConfig {
    /// The most agencies of a round that may be dishonest (collude with the coordinator, or
    /// add no noise). Under a job's distributed noise every node adds the share the job's own
    /// assumption sets; when this figure is larger than the job's, the node adds its whole
    /// noise on top and counts on nothing else. A figure lower than the truth lowers this
    /// agency's protection.
    pub assume_dishonest: u32,
}

/// How to reach the coordinator.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataFiles {
    /// Training records: CSV with a header row.
    pub train: PathBuf,
    /// Evaluation records, same columns; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// Optional: a number of training records the agency is content to make public (rounded,
    /// say). Nodes never use their true number of records for anything they release; with this
    /// figure, a training job without a sampling rate samples `batch_size / public_records`, and
    /// noisy gradient sums are divided by the expected batch it implies. Without it, the node
    /// uses the coordinator's estimate from the job's statistics round (a noisy count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_records: Option<u64>,
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
        config::load(path)
    }
}

impl Validate for NodeConfig {
    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.state_dir,
            &mut self.tls.ca_cert,
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.data.train,
        ] {
            config::resolve(base, p);
        }
        if let Some(p) = self.data.test.as_mut() {
            config::resolve(base, p);
        }
        self.policy.resolve(|p| config::resolve(base, p));
    }

    fn problems(&self) -> Vec<String> {
        let mut files = vec![
            ("tls.ca_cert", self.tls.ca_cert.as_path()),
            ("tls.cert", self.tls.cert.as_path()),
            ("tls.key", self.tls.key.as_path()),
            ("data.train", self.data.train.as_path()),
        ];
        if let Some(test) = &self.data.test {
            files.push(("data.test", test.as_path()));
        }
        let mut problems = config::missing_files(files);
        problems.extend(self.policy.problems("policy").0);
        if let Some(b) = &self.privacy
            && !(b.max_epsilon.is_finite() && b.max_epsilon > 0.0 && b.delta > 0.0 && b.delta < 1.0)
        {
            problems.push(format!(
                "`privacy`: max_epsilon {} must be positive and delta {} in (0, 1)",
                b.max_epsilon, b.delta
            ));
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
        problems
    }
}
