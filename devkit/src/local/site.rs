//! The files of a federation on this machine, all under one directory: a throwaway PKI, the
//! policies, each process's configuration (written from the configuration types themselves, so
//! that a file the site writes is a file the process reads), databases and logs.
//!
//! ```text
//! pki/                     the federation CA, certificates and keys, the revocation list
//! policies/                the registry and every country's policy (the coordinator's)
//! policies-<agency>/       an agency's own copies of the registry and its country's policy
//! coordinator.toml         coordinator.log, coordinator-db/, coordinator.address
//! node-<agency>.toml       node-<agency>.log, node-<agency>-db/
//! operator.toml
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use treaty_coordinator::client::OperatorConfig;
use treaty_coordinator::{CoordinatorConfig, CoordinatorPolicy, CoordinatorTls, Limits};
use treaty_node::{CoordinatorLink, DataFiles, NodeConfig};
use treaty_policies::PolicyFiles;
use treaty_proto::Identity;
use treaty_proto::pki::{self, PkiDir, Validity};
use treaty_proto::tls::TlsFiles;

use super::Process;

/// Who a site's PKI certifies.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// The federation's name, in the CA's subject.
    pub federation: String,
    /// The coordinator's certificate name.
    pub coordinator: String,
    /// The operator's certificate name.
    pub operator: String,
    /// Agencies as (agency id, country).
    pub agencies: Vec<(String, String)>,
}

/// A federation's files in one directory, and the `treaty` binary that runs its processes.
#[derive(Debug, Clone)]
pub struct Site {
    dir: PathBuf,
    exe: PathBuf,
    pki: PkiDir,
    coordinator: Identity,
    operator: Identity,
}

impl Site {
    /// Makes a PKI in `dir/pki` for `options` (certificates valid two days); `exe` is the
    /// `treaty` binary the site's processes run.
    pub fn create(dir: &Path, exe: &Path, options: &SiteOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        // Configuration files name absolute paths: a process may run from anywhere.
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot read `{}`", dir.display()))?;
        let pki = PkiDir::new(dir.join("pki"));
        pki::init(
            &pki,
            &pki::InitOptions {
                federation: options.federation.clone(),
                coordinator: options.coordinator.clone(),
                coordinator_hosts: vec![],
                operators: vec![options.operator.clone()],
                agencies: options.agencies.clone(),
                validity_days: 2,
            },
        )?;
        std::fs::create_dir_all(dir.join("policies"))?;
        Ok(Site {
            dir,
            exe: exe.to_owned(),
            pki,
            coordinator: Identity::coordinator(&options.coordinator)?,
            operator: Identity::operator(&options.operator)?,
        })
    }

    /// The site's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path in the site's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The site's PKI.
    pub fn pki(&self) -> &PkiDir {
        &self.pki
    }

    /// The TLS files of `identity`, as its configuration names them.
    pub fn files(&self, identity: &Identity) -> TlsFiles {
        let (cert, key) = self.pki.cert_and_key(identity);
        TlsFiles {
            ca_cert: self.pki.ca_cert(),
            cert,
            key,
        }
    }

    /// Writes a certificate and its key (PEM) to `<name>.crt` and `<name>.key` in the site's
    /// directory; their TLS files, with the site's CA.
    pub fn write_cert(&self, name: &str, cert: &str, key: &str) -> anyhow::Result<TlsFiles> {
        let files = TlsFiles {
            ca_cert: self.pki.ca_cert(),
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
        };
        for (path, text) in [(&files.cert, cert), (&files.key, key)] {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write `{}`", path.display()))?;
        }
        Ok(files)
    }

    /// Issues a certificate of the site's CA for `identity`, valid over `validity`, into files
    /// of its own ([`Site::write_cert`]), not the PKI's per-identity files: an impostor of an
    /// existing agency id, or an expired certificate, leaves the real one as it is.
    pub fn issue(
        &self,
        identity: &Identity,
        name: &str,
        validity: Validity,
    ) -> anyhow::Result<TlsFiles> {
        let issuer = pki::load_issuer(&self.pki)?;
        let (cert, key) = pki::issue_with(&issuer, identity, &[], validity)?;
        self.write_cert(name, &cert, &key)
    }

    /// The operator's identity.
    pub fn operator(&self) -> &Identity {
        &self.operator
    }

    /// The coordinator's identity.
    pub fn coordinator(&self) -> &Identity {
        &self.coordinator
    }

    /// The coordinator's policy directory (`policies/`).
    pub fn policies(&self) -> PathBuf {
        self.path("policies")
    }

    /// Writes a text into the coordinator's policy directory (`registry.toml`, `<CC>.toml`), as
    /// [`replace_file`] does: a coordinator deciding a round meanwhile reads the old or the new.
    pub fn write_policy_file(&self, name: &str, text: &str) -> anyhow::Result<()> {
        replace_file(&self.policies().join(name), text)
    }

    /// An agency's own policy directory: its copies of the registry and of its country's
    /// policy, as a national deployment keeps them. Copied from the coordinator's directory
    /// the first time; later edits of either copy are the caller's.
    pub fn node_policies(&self, agency: &str, country: &str) -> anyhow::Result<PolicyFiles> {
        let dir = self.path(&format!("policies-{agency}"));
        std::fs::create_dir_all(&dir)?;
        for file in ["registry.toml".to_owned(), format!("{country}.toml")] {
            let from = self.policies().join(&file);
            if from.exists() && !dir.join(&file).exists() {
                std::fs::copy(&from, dir.join(&file))
                    .with_context(|| format!("cannot copy `{}`", from.display()))?;
            }
        }
        Ok(PolicyFiles {
            registry: dir.join("registry.toml"),
            dir,
            keys: None,
        })
    }

    /// The coordinator's configuration: listening on `listen`, hosted in `country`, deciding
    /// by the site's `policies/`.
    pub fn coordinator_config(&self, listen: SocketAddr, country: &str) -> CoordinatorConfig {
        let files = self.files(&self.coordinator);
        CoordinatorConfig {
            listen,
            data_dir: self.path("coordinator-db"),
            address_file: Some(self.path("coordinator.address")),
            shutdown_grace_secs: 2,
            tls: CoordinatorTls {
                ca_cert: files.ca_cert,
                cert: files.cert,
                key: files.key,
                crl: Some(self.pki.crl()),
            },
            limits: Limits::default(),
            policy: CoordinatorPolicy {
                country: country.to_owned(),
                registry: self.policies().join("registry.toml"),
                dir: self.policies(),
                keys: None,
            },
            monitoring: None,
        }
    }

    /// An agency's node configuration: the coordinator at `address`, its data files, its own
    /// policy directory ([`Site::node_policies`]), no privacy budget.
    pub fn node_config(
        &self,
        agency: &str,
        country: &str,
        address: &str,
        train: &Path,
        test: Option<&Path>,
    ) -> anyhow::Result<NodeConfig> {
        Ok(NodeConfig {
            state_dir: self.path(&format!("node-{agency}-db")),
            coordinator: CoordinatorLink {
                address: address.to_owned(),
                reconnect_initial_ms: 200,
                reconnect_max_ms: 2000,
            },
            tls: self.files(&Identity::agency(country, agency)?),
            data: DataFiles {
                train: absolute(train)?,
                test: test.map(absolute).transpose()?,
                public_records: None,
            },
            privacy: None,
            policy: self.node_policies(agency, country)?,
            approval: Default::default(),
            monitoring: None,
            secure_aggregation: None,
        })
    }

    /// The operator's configuration for the coordinator at `address`.
    pub fn operator_config(&self, address: &str) -> OperatorConfig {
        OperatorConfig::new(address, self.files(&self.operator))
    }

    /// Writes `config` as TOML to `name` in the site's directory; returns its path.
    pub fn write_config(&self, name: &str, config: &impl Serialize) -> anyhow::Result<PathBuf> {
        let path = self.path(name);
        write_toml(&path, config)?;
        Ok(path)
    }

    /// Starts a `treaty` process with `args`, logging into `<log>.log`.
    pub fn spawn(&self, name: &str, args: &[&str], log: &str) -> anyhow::Result<Process> {
        Process::spawn(&self.exe, name, args, &self.path(&format!("{log}.log")))
    }

    /// Writes `coordinator.toml` and starts the coordinator; returns it with the address it
    /// listens on, once it does (at most 20 s).
    pub fn start_coordinator(
        &self,
        config: &CoordinatorConfig,
    ) -> anyhow::Result<(Process, String)> {
        let address_file = config
            .address_file
            .clone()
            .context("the coordinator's configuration names no address file to wait for")?;
        let _ = std::fs::remove_file(&address_file);
        let path = self.write_config("coordinator.toml", config)?;
        let mut process = self.spawn(
            "the coordinator",
            &["coordinator", "--config", &path.to_string_lossy()],
            "coordinator",
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&address_file)
                && !text.trim().is_empty()
            {
                let address = text.trim().to_owned();
                // A site kept for later restarts its coordinator where its nodes and operator
                // look for it: the port it was given, not port 0 again.
                if config.listen.port() == 0
                    && let Ok(listen) = address.parse()
                {
                    let mut kept = config.clone();
                    kept.listen = listen;
                    self.write_config("coordinator.toml", &kept)?;
                }
                return Ok((process, address));
            }
            if let Some(status) = process.try_wait() {
                bail!(
                    "the coordinator stopped ({status}) before it listened; the end of `{}`:\n{}",
                    process.log_path().display(),
                    process.log_tail(5)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the coordinator did not start within 20 s; see `{}`",
                    process.log_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `node-<agency>.toml` and starts the agency's node.
    pub fn start_node(&self, agency: &str, config: &NodeConfig) -> anyhow::Result<Process> {
        let path = self.write_config(&format!("node-{agency}.toml"), config)?;
        self.start_node_from(agency, &path)
    }

    /// Starts the agency's node from a configuration file.
    pub fn start_node_from(&self, agency: &str, config: &Path) -> anyhow::Result<Process> {
        self.spawn(
            agency,
            &["node", "--config", &config.to_string_lossy()],
            &format!("node-{agency}"),
        )
    }
}

/// Replaces a file that a running process may read at any time (a policy edited mid-job), as an
/// operator would: the text is written beside it and renamed over it, so a reader sees the old
/// text or the new, never an empty or partial file.
pub fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = PathBuf::from(staged);
    std::fs::write(&staged, text)
        .with_context(|| format!("cannot write `{}`", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("cannot replace `{}`", path.display()))
}

/// Writes `value` as a TOML file.
pub fn write_toml(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = toml::to_string(value)
        .with_context(|| format!("cannot write `{}` as TOML", path.display()))?;
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve `{}`", path.display()))
}
