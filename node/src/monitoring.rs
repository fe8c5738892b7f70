//! The node's Prometheus metrics (`[monitoring]`, off by default; served by
//! `treaty_proto::monitoring` on the agency's own network): tasks carried out by kind and
//! outcome, refusals by code, how long tasks took, whether the session with the coordinator is
//! open, and — read from the ledger at each scrape — the epsilon spent against the budget and
//! the ledger's number of entries. Nothing here leaves for the coordinator.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ledger::Ledger;

type Labels = Vec<(&'static str, String)>;

/// The node's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    tasks: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    task_seconds: Histogram,
    session: Gauge,
    epsilon: Gauge<f64, AtomicU64>,
    budget: Gauge<f64, AtomicU64>,
    entries: Gauge,
    ledger_ok: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("treaty_node");
        let tasks = Family::<Labels, Counter>::default();
        registry.register(
            "tasks",
            "Tasks the node carried out, by kind and outcome (sent, refused, failed)",
            tasks.clone(),
        );
        let refusals = Family::<Labels, Counter>::default();
        registry.register("refusals", "Tasks refused, by code", refusals.clone());
        let task_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "task_duration_seconds",
            "How long a task took, from its arrival to its result sent or refused",
            task_seconds.clone(),
        );
        let session = Gauge::default();
        registry.register(
            "session_open",
            "1 while the node holds a session with its coordinator",
            session.clone(),
        );
        let epsilon = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "epsilon_spent",
            "Epsilon the agency has spent over every job, by its ledger's accountant",
            epsilon.clone(),
        );
        let budget = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "epsilon_budget",
            "The agency's whole privacy budget (0: none kept)",
            budget.clone(),
        );
        let entries = Gauge::default();
        registry.register(
            "ledger_entries",
            "Releases recorded in the privacy ledger",
            entries.clone(),
        );
        let ledger_ok = Gauge::default();
        registry.register(
            "ledger_verified",
            "1 when the ledger's chain verified at this scrape; 0 when it is damaged (the node then releases nothing)",
            ledger_ok.clone(),
        );
        Metrics {
            registry,
            tasks,
            refusals,
            task_seconds,
            session,
            epsilon,
            budget,
            entries,
            ledger_ok,
        }
    }
}

impl Metrics {
    /// A task's end: its kind (`training`, `query`, ...), how it ended (`sent`, `refused`,
    /// `failed`), the refusal's code, and how long it took.
    pub(crate) fn task(&self, kind: &str, outcome: &str, code: Option<&str>, took: Duration) {
        self.tasks
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        if let Some(code) = code {
            self.refusals
                .get_or_create(&vec![("code", code.to_owned())])
                .inc();
        }
        self.task_seconds.observe(took.as_secs_f64());
    }

    /// Whether the session with the coordinator is open.
    pub(crate) fn session(&self, open: bool) {
        self.session.set(i64::from(open));
    }

    /// The exposition, with the ledger's figures read now.
    pub(crate) fn render(&self, ledger: &Ledger) -> String {
        match ledger.count() {
            Ok(count) => {
                self.entries.set(i64::try_from(count).unwrap_or(i64::MAX));
                self.ledger_ok.set(1);
                let report = ledger.report(None);
                self.epsilon.set(report.spent_epsilon);
                self.budget.set(report.max_epsilon);
            }
            Err(_) => {
                // A damaged ledger accounts nothing: shown as spent without bound, as its
                // report says, never as the last figure it gave.
                self.ledger_ok.set(0);
                self.epsilon.set(f64::INFINITY);
            }
        }
        let mut text = String::new();
        if let Err(error) = encode(&mut text, &self.registry) {
            tracing::warn!(%error, "cannot render the metrics");
        }
        text
    }
}

/// Serves the node's metrics on `listener` until `stop` is cancelled.
pub(crate) fn spawn(
    metrics: Arc<Metrics>,
    ledger: Arc<Ledger>,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    let render: treaty_proto::monitoring::Render = Arc::new(move || metrics.render(&ledger));
    tokio::spawn(treaty_proto::monitoring::serve(listener, render, stop));
}
