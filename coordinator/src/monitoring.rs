//! The coordinator's Prometheus metrics (`[monitoring]`, off by default; served by
//! `treaty_proto::monitoring`): rounds and jobs as they end, round durations, exclusions by
//! reason, results rejected — counted from the job events the coordinator publishes, so that
//! nothing is counted that its operators' event streams do not show — and, read at each scrape,
//! the agencies connected, the epsilon each agency's node last reported spent against its
//! budget, and the size of the coordinator's database.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;
use treaty_proto::v1::{JobEvent, JobEventKind};

use crate::state::Coordinator;

type Labels = Vec<(&'static str, String)>;

/// The most distinct values a label takes; more are counted as `other`, so that no stream of
/// events can grow the exposition without bound.
const MAX_LABEL_VALUES: usize = 256;

/// The coordinator's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    rounds: Family<Labels, Counter>,
    round_seconds: Histogram,
    exclusions: Family<Labels, Counter>,
    rejected: Counter,
    jobs: Family<Labels, Counter>,
    missed: Counter,
    connected: Gauge,
    epsilon: Family<Labels, Gauge<f64, AtomicU64>>,
    budget: Family<Labels, Gauge<f64, AtomicU64>>,
    store_bytes: Gauge,
    /// The exclusion reasons seen so far.
    seen: Mutex<HashSet<String>>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("treaty");
        let rounds = Family::<Labels, Counter>::default();
        registry.register(
            "rounds",
            "Rounds completed (statistics rounds included), by the kind of job",
            rounds.clone(),
        );
        let round_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        registry.register(
            "round_duration_seconds",
            "How long a completed round took, from its start to its summary",
            round_seconds.clone(),
        );
        let exclusions = Family::<Labels, Counter>::default();
        registry.register(
            "exclusions",
            "Agencies left out of a completed round, by reason code",
            exclusions.clone(),
        );
        let rejected = Counter::default();
        registry.register(
            "results_rejected",
            "Agencies' results (updates, statistics, answers) rejected on arrival",
            rejected.clone(),
        );
        let jobs = Family::<Labels, Counter>::default();
        registry.register("jobs", "Jobs ended, by outcome", jobs.clone());
        let missed = Counter::default();
        registry.register(
            "monitoring_events_missed",
            "Job events the metrics fell too far behind to count (the counts above are then low)",
            missed.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "agencies_connected",
            "Agencies holding a session now",
            connected.clone(),
        );
        let epsilon = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "agency_epsilon_spent",
            "Epsilon an agency has spent over every job, as its node last reported it from its own ledger",
            epsilon.clone(),
        );
        let budget = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "agency_epsilon_budget",
            "An agency's whole privacy budget (0: its node keeps none), as its node last reported it",
            budget.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "store_bytes",
            "The size of the coordinator's database on disk (jobs, models, audit log)",
            store_bytes.clone(),
        );
        Metrics {
            registry,
            rounds,
            round_seconds,
            exclusions,
            rejected,
            jobs,
            missed,
            connected,
            epsilon,
            budget,
            store_bytes,
            seen: Mutex::default(),
        }
    }

    /// Counts one job event.
    pub(crate) fn observe(&self, event: &JobEvent) {
        match event.kind() {
            JobEventKind::RoundCompleted => {
                let kind = match event.job.as_ref().and_then(|j| j.spec.as_ref()) {
                    Some(spec) => match spec.kind {
                        Some(treaty_proto::v1::job_spec::Kind::Query(_)) => "query",
                        Some(treaty_proto::v1::job_spec::Kind::Training(_)) if event.round == 0 => {
                            "statistics"
                        }
                        _ => "training",
                    },
                    None => "training",
                };
                self.rounds
                    .get_or_create(&vec![("kind", kind.to_owned())])
                    .inc();
                if let Some(summary) = &event.round_summary {
                    let ms = summary.finished_unix_ms - summary.started_unix_ms;
                    if ms >= 0 {
                        self.round_seconds.observe(ms as f64 / 1000.0);
                    }
                    for e in &summary.excluded {
                        let reason = self.bounded(&e.reason_code);
                        self.exclusions
                            .get_or_create(&vec![("reason", reason)])
                            .inc();
                    }
                }
            }
            JobEventKind::ResultRejected => {
                self.rejected.inc();
            }
            JobEventKind::JobSucceeded => {
                self.jobs
                    .get_or_create(&vec![("outcome", "succeeded".to_owned())])
                    .inc();
            }
            JobEventKind::JobFailed => {
                self.jobs
                    .get_or_create(&vec![("outcome", "failed".to_owned())])
                    .inc();
            }
            _ => {}
        }
    }

    /// `value` as a label value, or `other` once [`MAX_LABEL_VALUES`] others were seen.
    fn bounded(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() >= MAX_LABEL_VALUES {
            return "other".to_owned();
        }
        seen.insert(value.to_owned());
        value.to_owned()
    }

    /// The exposition, with the gauges read now.
    pub(crate) fn render(&self, ctx: &Coordinator) -> String {
        self.connected.set(ctx.sessions.count() as i64);
        let reports: Vec<(String, f64, f64)> = ctx
            .privacy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(identity, r)| (identity.to_string(), r.spent_epsilon, r.max_epsilon))
            .collect();
        for (agency, spent, max) in reports {
            let labels = vec![("agency", agency)];
            self.epsilon.get_or_create(&labels).set(spent);
            self.budget.get_or_create(&labels).set(max);
        }
        self.store_bytes
            .set(i64::try_from(ctx.store.size_on_disk()).unwrap_or(i64::MAX));
        let mut text = String::new();
        if let Err(error) = encode(&mut text, &self.registry) {
            tracing::warn!(%error, "cannot render the metrics");
        }
        text
    }
}

/// Starts the metrics: counts the job events from now on and serves `/metrics` on `listener`.
pub(crate) fn spawn(ctx: Arc<Coordinator>, listener: tokio::net::TcpListener) {
    let metrics = Arc::new(Metrics::new());
    let mut events = ctx.events.subscribe();
    let (counting, stop) = (metrics.clone(), ctx.shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = events.recv() => match event {
                    Ok(event) => counting.observe(&event),
                    Err(RecvError::Lagged(n)) => {
                        counting.missed.inc_by(n);
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    let render_ctx = ctx.clone();
    let render: treaty_proto::monitoring::Render = Arc::new(move || metrics.render(&render_ctx));
    tokio::spawn(treaty_proto::monitoring::serve(
        listener,
        render,
        ctx.shutdown.clone(),
    ));
}
