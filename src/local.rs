//! A whole federation on this machine: a throwaway PKI, the coordinator and one node per agency
//! as separate processes of this binary, over mutual TLS on 127.0.0.1, and the operator's
//! client. Used by `treaty demo` and `treaty bench`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use treaty_proto::Identity;
use treaty_proto::pki::{self, PkiDir};
use treaty_proto::tls::TlsFiles;
use treaty_proto::v1::operator_service_client::OperatorServiceClient;

use crate::operator;
use crate::synth::AgencyData;

/// The operator's client of the coordinator.
pub type Client = OperatorServiceClient<Channel>;

/// The processes of a local federation; each is stopped when this is dropped, whatever happens.
pub struct LocalFederation {
    pub dir: PathBuf,
    pub address: String,
    pub operator_files: TlsFiles,
    agencies: Vec<String>,
    children: Vec<(String, Child)>,
}

fn spawn(name: &str, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the treaty binary")?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot write `{}`", log.display()))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .env("TREATY_LOG", "info")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))
}

async fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return Ok(text.trim().to_owned());
        }
        if Instant::now() > deadline {
            bail!(
                "the coordinator did not start within {} s; see coordinator.log",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the local federation's coordinator is hosted.
pub const COORDINATOR_COUNTRY: &str = "NL";

/// The sample registry and policies (`policies/sample/`), embedded in the binary.
const SAMPLE: [(&str, &str); 6] = [
    (
        "registry.toml",
        include_str!("../policies/sample/registry.toml"),
    ),
    ("DE.toml", include_str!("../policies/sample/DE.toml")),
    ("NL.toml", include_str!("../policies/sample/NL.toml")),
    ("FR.toml", include_str!("../policies/sample/FR.toml")),
    ("PL.toml", include_str!("../policies/sample/PL.toml")),
    ("US.toml", include_str!("../policies/sample/US.toml")),
];

/// A plain EU policy for a country the samples do not cover: every purpose of the registry,
/// with every EU and Schengen-associated country, coordinator in the EU.
fn eu_policy(country: &str) -> String {
    format!(
        "schema_version = 1\n\n[policy]\ncountry = \"{country}\"\nversion = \"local-1\"\nvalid_from = 2025-01-01\nvalid_until = 2030-12-31\nlegal_basis = [\"LED Art. 1(3)\"]\ntitle = \"Written by the local federation for a country without a sample policy\"\n\n[coordinator]\nallowed_jurisdictions = [\"EU\"]\n\n[privacy]\nmax_epsilon_per_round = 10.0\nmax_epsilon_total = 100.0\nmax_delta = 1e-4\n\n[[rule]]\nid = \"{country}-EU\"\neffect = \"allow\"\npurposes = [\"narcotics\", \"firearms\", \"human_trafficking\", \"migrant_smuggling\", \"money_laundering\"]\nrecipients = [\"EU\", \"SCHENGEN_ASSOCIATED\"]\ntransfer_basis = \"intra_eu\"\nlegal_basis = \"LED Art. 1(3)\"\n"
    )
}

/// Writes the registry (with `fields` added to its vocabulary, as ordinary data) and a policy
/// per country into `dir`; returns the `[policy]` lines of the configurations.
fn write_policies(
    dir: &Path,
    agencies: &[AgencyData],
    fields: &[String],
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    for (name, text) in SAMPLE {
        let text = match name {
            "registry.toml" if !fields.is_empty() => {
                let added: String = fields
                    .iter()
                    .map(|f| format!("{f} = \"ordinary\"\n"))
                    .collect();
                text.replacen("[fields]\n", &format!("[fields]\n{added}"), 1)
            }
            _ => text.to_owned(),
        };
        std::fs::write(dir.join(name), text)?;
    }
    for a in agencies {
        let path = dir.join(format!("{}.toml", a.country));
        if !path.exists() {
            std::fs::write(&path, eu_policy(&a.country))?;
        }
    }
    Ok(format!(
        "registry = {:?}\ndir = {:?}\n",
        dir.join("registry.toml"),
        dir
    ))
}

impl LocalFederation {
    /// Makes the PKI and configurations in `dir` and starts the coordinator and a node per
    /// agency; returns once the coordinator listens (nodes connect on their own).
    /// Each agency's node keeps a privacy budget of `budget` epsilon (at delta 1e-5); `fields`
    /// are data fields the sample registry lacks (a benchmark's columns).
    pub async fn start(
        dir: &Path,
        agencies: &[AgencyData],
        budget: f64,
        fields: &[String],
    ) -> anyhow::Result<Self> {
        let pki_dir = PkiDir::new(dir.join("pki"));
        pki::init(
            &pki_dir,
            &pki::InitOptions {
                federation: "treaty-local".into(),
                coordinator: "local-hub".into(),
                coordinator_hosts: vec![],
                operators: vec!["local-operator".into()],
                agencies: agencies
                    .iter()
                    .map(|a| (a.agency.clone(), a.country.clone()))
                    .collect(),
                validity_days: 2,
            },
        )?;
        let (ocert, okey) = pki_dir.cert_and_key(&Identity::operator("local-operator")?);
        let mut fed = LocalFederation {
            dir: dir.to_owned(),
            address: String::new(),
            operator_files: TlsFiles {
                ca_cert: pki_dir.ca_cert(),
                cert: ocert,
                key: okey,
            },
            agencies: agencies.iter().map(|a| a.agency.clone()).collect(),
            children: Vec::new(),
        };

        let policies = write_policies(&dir.join("policies"), agencies, fields)?;
        let address_file = dir.join("coordinator.address");
        let config = dir.join("coordinator.toml");
        let (cert, key) = pki_dir.cert_and_key(&Identity::coordinator("local-hub")?);
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"coordinator-db\"\naddress_file = \"coordinator.address\"\nshutdown_grace_secs = 3\n\n[tls]\nca_cert = {:?}\ncert = {cert:?}\nkey = {key:?}\ncrl = {:?}\n\n[policy]\ncountry = {COORDINATOR_COUNTRY:?}\n{policies}",
                pki_dir.ca_cert(),
                pki_dir.crl()
            ),
        )?;
        let child = spawn(
            "the coordinator",
            &["coordinator", "--config", &config.to_string_lossy()],
            &dir.join("coordinator.log"),
        )?;
        fed.children.push(("coordinator".into(), child));
        fed.address = wait_for_file(&address_file, Duration::from_secs(20)).await?;
        std::fs::write(
            dir.join("operator.toml"),
            format!(
                "[coordinator]\naddress = {:?}\n\n[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n",
                fed.address,
                fed.operator_files.ca_cert,
                fed.operator_files.cert,
                fed.operator_files.key
            ),
        )?;

        for a in agencies {
            let (cert, key) = pki_dir.cert_and_key(&Identity::agency(&a.country, &a.agency)?);
            let config = dir.join(format!("node-{}.toml", a.agency));
            std::fs::write(
                &config,
                format!(
                    "state_dir = \"node-{}-db\"\n\n[coordinator]\naddress = {:?}\nreconnect_initial_ms = 200\nreconnect_max_ms = 2000\n\n[tls]\nca_cert = {:?}\ncert = {cert:?}\nkey = {key:?}\n\n[data]\ntrain = {:?}\ntest = {:?}\n\n[privacy]\nmax_epsilon = {budget}\ndelta = 1e-5\n\n[policy]\n{policies}",
                    a.agency,
                    fed.address,
                    pki_dir.ca_cert(),
                    a.train,
                    a.test,
                ),
            )?;
            let child = spawn(
                &a.agency,
                &["node", "--config", &config.to_string_lossy()],
                &dir.join(format!("node-{}.log", a.agency)),
            )?;
            fed.children.push((a.agency.clone(), child));
        }
        Ok(fed)
    }

    /// The operator's client.
    pub async fn operator(&self) -> anyhow::Result<Client> {
        operator::connect(&self.address, &self.operator_files).await
    }

    /// Waits until `n` agencies hold sessions; returns "ID (CC)" for each.
    pub async fn wait_connected(
        &mut self,
        client: &mut Client,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            // A process that has exited will never connect: say so at once, with its log's end.
            for (name, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = self.dir.join(if name == "coordinator" {
                        "coordinator.log".to_owned()
                    } else {
                        format!("node-{name}.log")
                    });
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(5).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    bail!(
                        "{name} stopped ({status}) before the federation was connected; the end of `{}`:\n{}",
                        log.display(),
                        tail.join("\n")
                    );
                }
            }
            let connected = operator::all_agencies(client).await?;
            if connected.len() >= n {
                return Ok(connected
                    .iter()
                    .map(|a| format!("{} ({})", a.agency, a.country))
                    .collect());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} nodes connected within {} s; see the node logs in {}",
                    connected.len(),
                    timeout.as_secs(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What each agency's ledger says it spent, read once the federation has stopped.
    pub fn spent(&self) -> anyhow::Result<Vec<(String, f64)>> {
        self.agencies
            .iter()
            .map(|agency| {
                let ledger =
                    treaty_node::Ledger::open(&self.dir.join(format!("node-{agency}-db")), None)?;
                Ok((agency.clone(), ledger.spent()?.epsilon))
            })
            .collect()
    }

    /// The peak resident memory (VmHWM) of a process of the federation, in bytes.
    pub fn peak_rss(&self, name: &str) -> Option<u64> {
        let pid = self.children.iter().find(|(n, _)| n == name)?.1.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// SIGTERM to every process, then waits for each (SIGKILL after five seconds).
    pub async fn stop(&mut self) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for (name, child) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    process = name.as_str(),
                    "did not stop within 5 s; killing it"
                );
                let _ = child.kill().await;
            }
        }
        self.children.clear();
    }
}
