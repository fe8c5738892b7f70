//! A whole federation on this machine: the coordinator and one node per agency as separate
//! `treaty` processes over mutual TLS on 127.0.0.1, on a [`Site`]'s files, with the sample
//! policies. Used by `treaty demo` and `treaty bench w1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use treaty_coordinator::client::{self, Client};
use treaty_node::{Budget, Ledger};

use super::{Process, Site, SiteOptions, policies};
use crate::synth::AgencyData;

/// Where the local federation's coordinator is hosted.
pub const COORDINATOR_COUNTRY: &str = "NL";

/// How long a process may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// An agency of a local federation and its data files.
#[derive(Debug, Clone)]
pub struct Member {
    pub agency: String,
    pub country: String,
    pub train: PathBuf,
    pub test: PathBuf,
}

impl From<&AgencyData> for Member {
    fn from(a: &AgencyData) -> Self {
        Member {
            agency: a.agency.clone(),
            country: a.country.clone(),
            train: a.train.clone(),
            test: a.test.clone(),
        }
    }
}

/// The processes of a local federation; each is stopped when this is dropped, whatever happens.
#[derive(Debug)]
pub struct LocalFederation {
    site: Site,
    /// The coordinator's address (`127.0.0.1:PORT`).
    pub address: String,
    coordinator: Process,
    nodes: Vec<Process>,
}

impl LocalFederation {
    /// Makes the PKI, policies and configurations in `dir` and starts the coordinator and a node
    /// per member with the `treaty` binary `exe`; returns once the coordinator listens (nodes
    /// connect on their own). Each agency's node keeps a privacy budget of `budget` epsilon (at
    /// delta 1e-5); `fields` are data fields the sample registry lacks (a benchmark's columns).
    /// The work (key generation, files, waiting for the coordinator) runs on a blocking thread;
    /// should the caller stop waiting, the processes started are killed.
    pub async fn start(
        dir: &Path,
        exe: &Path,
        members: &[Member],
        budget: f64,
        fields: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_assuming(dir, exe, members, budget, fields, None).await
    }

    /// [`LocalFederation::start`] with every node assuming at most `assume_dishonest` dishonest
    /// agencies a round under distributed DP (`[secure_aggregation]` of its configuration).
    pub async fn start_assuming(
        dir: &Path,
        exe: &Path,
        members: &[Member],
        budget: f64,
        fields: &[String],
        assume_dishonest: Option<u32>,
    ) -> anyhow::Result<Self> {
        let (dir, exe, members, fields) = (
            dir.to_owned(),
            exe.to_owned(),
            members.to_vec(),
            fields.to_vec(),
        );
        tokio::task::spawn_blocking(move || {
            Self::start_blocking(&dir, &exe, &members, budget, &fields, assume_dishonest)
        })
        .await?
    }

    fn start_blocking(
        dir: &Path,
        exe: &Path,
        members: &[Member],
        budget: f64,
        fields: &[String],
        assume_dishonest: Option<u32>,
    ) -> anyhow::Result<Self> {
        let site = Site::create(
            dir,
            exe,
            &SiteOptions {
                federation: "treaty-local".into(),
                coordinator: "local-hub".into(),
                operator: "local-operator".into(),
                agencies: members
                    .iter()
                    .map(|m| (m.agency.clone(), m.country.clone()))
                    .collect(),
            },
        )?;
        let countries: Vec<&str> = members.iter().map(|m| m.country.as_str()).collect();
        policies::write_samples(&site, &countries, fields)?;
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (coordinator, address) =
            site.start_coordinator(&site.coordinator_config(listen, COORDINATOR_COUNTRY))?;
        site.write_config("operator.toml", &site.operator_config(&address))?;
        let mut nodes = Vec::new();
        for m in members {
            let mut config =
                site.node_config(&m.agency, &m.country, &address, &m.train, Some(&m.test))?;
            config.privacy = Some(Budget {
                max_epsilon: budget,
                delta: 1e-5,
            });
            config.secure_aggregation =
                assume_dishonest.map(|c| treaty_node::SecureAggregationConfig {
                    assume_dishonest: c,
                });
            nodes.push(site.start_node(&m.agency, &config)?);
        }
        Ok(LocalFederation {
            site,
            address,
            coordinator,
            nodes,
        })
    }

    /// The federation's files.
    pub fn site(&self) -> &Site {
        &self.site
    }

    /// The operator's client.
    pub async fn operator(&self) -> anyhow::Result<Client> {
        Ok(self.site.operator_config(&self.address).connect().await?)
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
            for process in std::iter::once(&mut self.coordinator).chain(self.nodes.iter_mut()) {
                if let Some(status) = process.try_wait() {
                    bail!(
                        "{} stopped ({status}) before the federation was connected; the end of `{}`:\n{}",
                        process.name(),
                        process.log_path().display(),
                        process.log_tail(5)
                    );
                }
            }
            let connected = client::all_agencies(client).await?;
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
                    self.site.dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What each agency's ledger says it spent, read once the federation has stopped.
    pub fn spent(&self) -> anyhow::Result<Vec<(String, f64)>> {
        self.nodes
            .iter()
            .map(|node| {
                let dir = self.site.path(&format!("node-{}-db", node.name()));
                let ledger = Ledger::open(&dir, None)?;
                Ok((node.name().to_owned(), ledger.spent()?.epsilon))
            })
            .collect()
    }

    /// The peak resident memory (VmHWM) of the coordinator (`coordinator`) or an agency's node,
    /// in bytes.
    pub fn peak_rss(&self, name: &str) -> Option<u64> {
        if name == "coordinator" {
            return self.coordinator.peak_rss();
        }
        self.nodes.iter().find(|n| n.name() == name)?.peak_rss()
    }

    /// SIGTERM to every process, then waits for each without blocking the runtime (SIGKILL to
    /// those still running after five seconds).
    pub async fn stop(&mut self) {
        for process in std::iter::once(&self.coordinator).chain(self.nodes.iter()) {
            let _ = process.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for process in std::iter::once(&mut self.coordinator).chain(self.nodes.iter_mut()) {
            while process.try_wait().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Killed (and reaped) now if it is still running.
            process.stop(Duration::ZERO);
        }
    }
}
