//! A job spec as the coordinator works with it: decoded and checked once, where it arrives
//! (`CreateJob`, or a stored job read back), into a [`ValidJob`] whose enums are typed and whose
//! defaults are filled in. Nothing after that edge checks a spec again.
//!
//! A spec that cannot run is an [`InvalidJob`], listing every [`JobProblem`] at once (as a
//! configuration file's problems are), so that the operator fixes them all in one go. A new
//! job is checked as a whole before it is created: its schema for the job that uses it
//! (`schema::check`, everything a node would refuse of it), and its fields against the
//! federation's registry (what every round's policy decision requires).

use std::time::Duration;

use treaty_policies::{Registry, privacy};
use treaty_proto::query::Statistic;
use treaty_proto::schema::{self, Usage};
use treaty_proto::v1::{
    Aggregation, ColumnStats, Combine, DpMode, FeatureSchema, JobSpec, LabelKind, ModelKind,
    PrivacySpec, QuerySpec, SecureAggregationSpec, SharingSpec, Strategy, TrainingSpec, job_spec,
};
use treaty_proto::{EnumError, enums};

use crate::aggregate::Settings;

/// The wait for a round's results when the spec gives none.
pub(crate) const DEFAULT_ROUND_TIMEOUT_MS: u32 = 60_000;
/// The wait for enough members to be connected when the spec gives none.
pub(crate) const DEFAULT_JOIN_TIMEOUT_MS: u32 = 60_000;
/// The most values a robustly combined query may have (its intervals are bootstrapped per
/// agency and value).
pub(crate) const MAX_ROBUST_WIDTH: usize = 10_000;
/// The zCDP rho each node spends on the statistics round when the spec gives none.
const DEFAULT_STATISTICS_RHO: f64 = 0.005;

/// Why a job spec cannot run: every problem found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", list(problems))]
pub struct InvalidJob {
    /// Each problem, in the order of the spec's fields.
    pub problems: Vec<JobProblem>,
}

fn list(problems: &[JobProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

/// One problem of a job spec, naming the field and what it must be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobProblem {
    #[error("the job has no kind; give `training` or `query`")]
    NoKind,
    /// An enum field holds a value this build does not know.
    #[error(transparent)]
    Enum(#[from] EnumError),
    #[error("`min_participants` is {min} but the federation has only {members} member(s)")]
    MoreParticipantsThanMembers { min: u32, members: usize },
    #[error("`training.schema` is missing; give the federation's feature schema")]
    NoSchema,
    #[error("schema: {0}")]
    Schema(String),
    #[error(
        "`{field}` names `{name}`, which is not a field of registry {registry}; add it to the registry's [fields] with its category, or name a field the registry has{}",
        hint.as_ref().map_or(String::new(), |h| format!(" ({h})"))
    )]
    Unregistered {
        field: &'static str,
        name: String,
        registry: String,
        hint: Option<String>,
    },
    #[error("`training.model` names no model")]
    NoModel,
    #[error(
        "{} needs a {} label, but the schema's label is {}",
        model.as_str_name(),
        needed.as_str_name(),
        label.as_str_name()
    )]
    LabelMismatch {
        model: ModelKind,
        needed: LabelKind,
        label: LabelKind,
    },
    #[error(
        "`training.standardization` has {given} entries for {numeric} numeric column(s); leave it empty and the federation computes it"
    )]
    Standardization { given: usize, numeric: usize },
    #[error("`training.hidden_units` is {0}; an MLP needs 1 to {max}", max = schema::MAX_HIDDEN_UNITS)]
    HiddenUnits(u32),
    #[error("`training.rounds` is {0}; it must be 1 to 10000")]
    Rounds(u32),
    #[error("`{0}` must be at least 1")]
    Zero(&'static str),
    #[error("`{field}` is {value}; it must be {expected}")]
    OutOfRange {
        field: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error(
        "`training.privacy` is missing: every training job trains with record-level differential privacy; give a mode, a clipping norm and a noise multiplier or a target epsilon"
    )]
    NoPrivacy,
    #[error("`privacy.mode` must be DP_MODE_FULL_BATCH or DP_MODE_POISSON")]
    NoDpMode,
    #[error(
        "give `privacy.noise_multiplier`, or `privacy.target_epsilon` and `privacy.target_delta`"
    )]
    NoNoise,
    #[error("the job's noise cannot be calibrated to its target epsilon: {0}")]
    Unplannable(String),
    #[error("`query.kind` must be COUNT, SUM, MEAN, HISTOGRAM or QUANTILE")]
    NoStatistic,
    #[error(
        "`query.epsilon` is {0}; every query spends a positive epsilon of each agency's budget"
    )]
    QueryEpsilon(f64),
    #[error("`query.column` is empty; name the column")]
    NoColumn,
    #[error("give both `{0}` and `{1}`, or neither")]
    Unpaired(&'static str, &'static str),
    #[error(
        "`query.lower` ({lower}) and `query.upper` ({upper}) must be finite with lower < upper"
    )]
    Bounds { lower: f64, upper: f64 },
    #[error("`query.categories` is empty; list the values to count")]
    NoCategories,
    #[error("the histogram has more than {0} cells")]
    TooManyCells(usize),
    #[error("the query has {width} values; a robust combination takes at most {max}")]
    TooWideToCombineRobustly { width: usize, max: usize },
    #[error("`query.quantiles` must list values in (0, 1)")]
    Quantiles,
    #[error("`query.bins` is {bins}; at most {max}")]
    TooManyBins { bins: u32, max: usize },
    #[error(
        "the job gives its noise multiplier directly: declare `sharing.epsilon_per_round`, the most epsilon one agency spends in one round (`treaty privacy epsilon` computes it), for the policies to judge"
    )]
    UndeclaredEpsilon,
    #[error("`sharing`: epsilon per round {epsilon} must be positive and delta {delta} in [0, 1)")]
    Sharing { epsilon: f64, delta: f64 },
    #[error(
        "secure aggregation gives the coordinator only the sum of a round's updates, and {0} needs each update on its own: take FedAvg or a server optimiser (FedAdam, FedYogi, FedAdagrad), or leave secure aggregation off"
    )]
    SecureAggregationRobust(&'static str),
    #[error("`secure_aggregation.fractional_bits` is {0}; it must be 8 to 40, or 0 for 32")]
    FractionalBits(u32),
    #[error(
        "secure aggregation needs at least 3 agencies a round (`min_participants` is {0}): with 2, the threshold of a majority leaves no drop-out room and each learns the other's update from the sum"
    )]
    SecureAggregationTooFew(u32),
    #[error(
        "distributed noise makes each round one step of full-batch DP gradient descent, and {0}: give `dp_mode` full batch, one local epoch, no momentum, L2 or proximal term"
    )]
    DistributedNotLinear(&'static str),
}

/// A job spec that passed every check, its defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValidJob {
    /// What every round of the job goes by.
    pub rules: RoundRules,
    /// What the job does.
    pub work: Work,
}

/// What every round of a job goes by: how many agencies it needs, how long it waits, and the
/// terms the sharing policies judge.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoundRules {
    /// At least 1.
    min_participants: u32,
    /// As sent (0: the default).
    round_timeout_ms: u32,
    /// As sent (0: the default).
    join_timeout_ms: u32,
    /// As sent.
    declared: Option<SharingSpec>,
    /// The sharing terms, with the spec's defaults filled in.
    pub sharing: Sharing,
}

/// What a job asks of the sharing policies, with the spec's defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sharing {
    pub epsilon_per_round: f64,
    pub delta: f64,
    pub fields: Vec<String>,
    pub model_retention_days: Option<u32>,
    pub onward_transfer: bool,
    /// Whether the round is under secure aggregation: set by each round (a job's statistics
    /// and evaluation rounds are not, its training rounds are when the job asks).
    pub secure_aggregation: bool,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // One value per running job: its size does not matter.
pub(crate) enum Work {
    /// Train a model over rounds.
    Training(ValidTraining),
    /// Answer one analytics query in a single round.
    Query(ValidQuery),
}

/// A training spec that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValidTraining {
    /// Never `Unspecified`.
    pub model: ModelKind,
    /// The feature schema, sound.
    pub schema: FeatureSchema,
    /// Record-level differential privacy, with a mode and a noise.
    pub privacy: PrivacySpec,
    /// The strategy with its defaults filled in.
    pub settings: Settings,
    /// The rest of the spec as sent (its `schema` and `privacy` are the fields above).
    rest: TrainingSpec,
}

/// An analytics query that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValidQuery {
    /// What it computes.
    pub statistic: Statistic,
    /// How the agencies' answers are combined.
    pub combination: Combination,
    /// The query as sent (its `kind` and `combine` are the fields above).
    pub spec: QuerySpec,
}

/// How a query combines the agencies' answers (`Combine`, its default resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Combination {
    /// The sum of the answers.
    Sum,
    /// Per value, the median of the answers times their number.
    Median,
    /// Per value, the trimmed mean of the answers times their number.
    Trimmed,
}

impl ValidJob {
    /// Checks a new job's `spec` for a federation of `members` members whose rounds are decided
    /// under `registry`: every problem at once, those of its fields included, so that no job
    /// is created that its first round would refuse for its spec.
    pub(crate) fn for_federation(
        spec: JobSpec,
        members: usize,
        registry: &Registry,
    ) -> Result<Self, InvalidJob> {
        let unregistered = unregistered(&spec, registry);
        match decode(spec, Some(members)) {
            Ok(job) if unregistered.is_empty() => Ok(job),
            Ok(_) => Err(InvalidJob {
                problems: unregistered,
            }),
            Err(mut invalid) => {
                invalid.problems.extend(unregistered);
                Err(invalid)
            }
        }
    }

    /// The job's spec as the wire and the store carry it, defaults filled in.
    pub(crate) fn to_spec(&self) -> JobSpec {
        JobSpec {
            kind: Some(match &self.work {
                Work::Training(t) => job_spec::Kind::Training(t.to_spec()),
                Work::Query(q) => job_spec::Kind::Query(q.spec.clone()),
            }),
            min_participants: self.rules.min_participants,
            round_timeout_ms: self.rules.round_timeout_ms,
            join_timeout_ms: self.rules.join_timeout_ms,
            sharing: self.rules.declared.clone(),
        }
    }
}

/// Checks a spec on its own (a stored job read back; its federation's size was checked when it
/// was created).
impl TryFrom<JobSpec> for ValidJob {
    type Error = InvalidJob;

    fn try_from(spec: JobSpec) -> Result<Self, InvalidJob> {
        decode(spec, None)
    }
}

impl RoundRules {
    /// The fewest usable results (and admitted agencies) a round goes ahead with.
    pub(crate) fn min_participants(&self) -> usize {
        self.min_participants as usize
    }

    /// How long a round waits for enough members to be connected.
    pub(crate) fn join_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(
            self.join_timeout_ms,
            DEFAULT_JOIN_TIMEOUT_MS,
        )))
    }

    /// How long a round waits for its results, in milliseconds.
    pub(crate) fn round_timeout_ms(&self) -> u32 {
        or_default(self.round_timeout_ms, DEFAULT_ROUND_TIMEOUT_MS)
    }
}

fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

impl ValidTraining {
    /// The number of training rounds.
    pub(crate) fn rounds(&self) -> u32 {
        self.rest.rounds
    }

    /// Whether the federation's standardisation is still to be computed (by a statistics round).
    pub(crate) fn needs_statistics(&self) -> bool {
        self.rest.standardization.is_empty() && !schema::numeric_columns(&self.schema).is_empty()
    }

    /// The zCDP rho each node spends on the statistics round: the job's, or the default.
    pub(crate) fn statistics_rho(&self) -> f64 {
        self.privacy
            .statistics_rho
            .unwrap_or(DEFAULT_STATISTICS_RHO)
    }

    /// The rho each node spends on the statistics round of this job: 0 when it needs none.
    fn statistics_spent(&self) -> f64 {
        match self.needs_statistics() {
            true => self.statistics_rho(),
            false => 0.0,
        }
    }

    /// Records the statistics round's standardisation, and the rho the round cost each node.
    pub(crate) fn set_standardization(&mut self, stats: Vec<ColumnStats>) {
        self.rest.standardization = stats;
        self.privacy.statistics_round_rho = self.statistics_rho();
    }

    /// Picks a random seed for the initial model when the spec gives none.
    pub(crate) fn pick_seed(&mut self) {
        if self.rest.seed == 0 {
            self.rest.seed = rand::random::<u64>().max(1);
        }
    }

    /// The seed of the initial model.
    pub(crate) fn seed(&self) -> u64 {
        self.rest.seed
    }

    /// The job's secure aggregation, when it asks for it.
    pub(crate) fn secure_aggregation(&self) -> Option<SecureAggregationSpec> {
        self.rest.secure_aggregation
    }

    /// The spec as the wire (tasks, model headers) and the store carry it.
    pub(crate) fn to_spec(&self) -> TrainingSpec {
        TrainingSpec {
            schema: Some(self.schema.clone()),
            privacy: Some(self.privacy),
            ..self.rest.clone()
        }
    }
}

impl TryFrom<TrainingSpec> for ValidTraining {
    type Error = InvalidJob;

    fn try_from(spec: TrainingSpec) -> Result<Self, InvalidJob> {
        let mut problems = Vec::new();
        match training(spec, &mut problems, false) {
            Some(t) if problems.is_empty() => Ok(t),
            _ => Err(InvalidJob { problems }),
        }
    }
}

impl TryFrom<QuerySpec> for ValidQuery {
    type Error = InvalidJob;

    fn try_from(spec: QuerySpec) -> Result<Self, InvalidJob> {
        let mut problems = Vec::new();
        match query(spec, &mut problems) {
            Some(q) if problems.is_empty() => Ok(q),
            _ => Err(InvalidJob { problems }),
        }
    }
}

fn decode(spec: JobSpec, members: Option<usize>) -> Result<ValidJob, InvalidJob> {
    let mut problems = Vec::new();
    let min_participants = spec.min_participants.max(1);
    if let Some(members) = members
        && min_participants as usize > members
    {
        problems.push(JobProblem::MoreParticipantsThanMembers {
            min: min_participants,
            members,
        });
    }
    let work = match spec.kind {
        Some(job_spec::Kind::Training(t)) => {
            training(t, &mut problems, members.is_some()).map(Work::Training)
        }
        Some(job_spec::Kind::Query(q)) => query(q, &mut problems).map(Work::Query),
        None => {
            problems.push(JobProblem::NoKind);
            None
        }
    };
    if let Some(Work::Training(t)) = &work
        && t.secure_aggregation().is_some()
        && min_participants < 3
    {
        problems.push(JobProblem::SecureAggregationTooFew(min_participants));
    }
    // The sharing terms rest on the rest of the spec: judged once that is sound.
    let declared = spec.sharing;
    match work {
        Some(work) if problems.is_empty() => {
            match sharing(declared.as_ref().cloned().unwrap_or_default(), &work) {
                Ok(sharing) => Ok(ValidJob {
                    rules: RoundRules {
                        min_participants,
                        round_timeout_ms: spec.round_timeout_ms,
                        join_timeout_ms: spec.join_timeout_ms,
                        declared,
                        sharing,
                    },
                    work,
                }),
                Err(problem) => Err(InvalidJob {
                    problems: vec![problem],
                }),
            }
        }
        _ => Err(InvalidJob { problems }),
    }
}

/// A value that must lie in a range: the problem when it does not.
fn within(
    problems: &mut Vec<JobProblem>,
    field: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
) {
    if !ok {
        problems.push(JobProblem::OutOfRange {
            field,
            value,
            expected,
        });
    }
}

/// Checks a training spec, adding its problems; the validated spec when it has none. A new
/// job's schema (`new`) is checked whole for the job (`schema::check`); a stored one, created
/// under that check, for its soundness and its label.
fn training(t: TrainingSpec, problems: &mut Vec<JobProblem>, new: bool) -> Option<ValidTraining> {
    let before = problems.len();
    let model = match enums::known(t.model, || "`training.model`".to_owned()) {
        Ok(ModelKind::Unspecified) => {
            problems.push(JobProblem::NoModel);
            None
        }
        Ok(model) => Some(model),
        Err(e) => {
            problems.push(JobProblem::Enum(e));
            None
        }
    };
    match &t.schema {
        None => problems.push(JobProblem::NoSchema),
        Some(s) if new => {
            // Without a standardisation, the job starts with a statistics round.
            let usage = Usage {
                model,
                statistics: t.standardization.is_empty(),
            };
            problems.extend(
                schema::check(s, &usage)
                    .into_iter()
                    .map(|p| JobProblem::Schema(p.message)),
            );
            standardization(s, &t, problems);
        }
        Some(s) => {
            problems.extend(schema::problems(s).into_iter().map(JobProblem::Schema));
            // A label kind this build does not know is among the schema's problems.
            if let Ok(label) = schema::decode_label_kind(s)
                && let Some(model) = model
                && let Some(needed) = schema::label_kind_for(model)
                && needed != label
            {
                problems.push(JobProblem::LabelMismatch {
                    model,
                    needed,
                    label,
                });
            }
            standardization(s, &t, problems);
        }
    }
    if model == Some(ModelKind::Mlp) && !(1..=schema::MAX_HIDDEN_UNITS).contains(&t.hidden_units) {
        problems.push(JobProblem::HiddenUnits(t.hidden_units));
    }
    if !(1..=10_000).contains(&t.rounds) {
        problems.push(JobProblem::Rounds(t.rounds));
    }
    if t.local_epochs == 0 {
        problems.push(JobProblem::Zero("training.local_epochs"));
    }
    if t.batch_size == 0 {
        problems.push(JobProblem::Zero("training.batch_size"));
    }
    let lr = t.learning_rate;
    within(
        problems,
        "training.learning_rate",
        lr,
        lr.is_finite() && lr > 0.0,
        "a positive number",
    );
    within(
        problems,
        "training.momentum",
        t.momentum,
        (0.0..1.0).contains(&t.momentum),
        "in [0, 1)",
    );
    within(
        problems,
        "training.l2",
        t.l2,
        t.l2.is_finite() && t.l2 >= 0.0,
        "zero or positive",
    );
    let settings = strategy(t.strategy.unwrap_or_default(), problems);
    if let (Some(secure), Some(settings)) = (&t.secure_aggregation, &settings) {
        secure_aggregation(secure, settings, problems);
        if secure.distributed_noise {
            distributed_noise(&t, problems);
        }
    }
    let privacy = match t.privacy {
        None => {
            problems.push(JobProblem::NoPrivacy);
            None
        }
        Some(p) => {
            privacy(&p, problems);
            Some(planned(p, t.rounds))
        }
    };
    if problems.len() > before {
        return None;
    }
    let valid = ValidTraining {
        model: model?,
        privacy: privacy?,
        settings: settings?,
        schema: t.schema.clone()?,
        rest: TrainingSpec {
            schema: None,
            privacy: None,
            ..t
        },
    };
    // A stored job was planned when it was created.
    if new && let Some(why) = unplannable(&valid) {
        problems.push(JobProblem::Unplannable(why));
        return None;
    }
    Some(valid)
}

/// Secure aggregation combines sums: a robust aggregator is refused with it, and its scale is
/// bounded.
fn secure_aggregation(
    secure: &SecureAggregationSpec,
    settings: &Settings,
    problems: &mut Vec<JobProblem>,
) {
    let robust = match settings.aggregation {
        Aggregation::Median => Some("the coordinate-wise median"),
        Aggregation::TrimmedMean => Some("the trimmed mean"),
        Aggregation::NormBounded => Some("norm-bounded averaging (it clips each update)"),
        _ => None,
    };
    if let Some(name) = robust {
        problems.push(JobProblem::SecureAggregationRobust(name));
    }
    if secure.fractional_bits != 0 && !(8..=40).contains(&secure.fractional_bits) {
        problems.push(JobProblem::FractionalBits(secure.fractional_bits));
    }
}

/// Distributed noise needs one linear release a round: the clipped gradient sum at the global
/// model (docs/SECURE_AGGREGATION.md, "Distributed DP").
fn distributed_noise(t: &TrainingSpec, problems: &mut Vec<JobProblem>) {
    if let Err(why) = treaty_proto::secagg::one_linear_step(t) {
        problems.push(JobProblem::DistributedNotLinear(why));
    }
}

/// A given standardisation must have one entry per numeric column.
fn standardization(s: &FeatureSchema, t: &TrainingSpec, problems: &mut Vec<JobProblem>) {
    let numeric = schema::numeric_columns(s).len();
    if !t.standardization.is_empty() && t.standardization.len() != numeric {
        problems.push(JobProblem::Standardization {
            given: t.standardization.len(),
            numeric,
        });
    }
}

/// Every field of a job that `registry` does not know: the schema's columns and label, the
/// fields it declares to the policies, a query's columns. A round's policy decision refuses
/// every one of them.
fn unregistered(spec: &JobSpec, registry: &Registry) -> Vec<JobProblem> {
    let is_field = |name: &str| registry.fields.contains_key(name);
    let hint = |name: &str| {
        treaty_policies::did_you_mean(name, registry.fields.keys().map(String::as_str))
    };
    let mut problems = Vec::new();
    let mut named: Vec<&str> = Vec::new();
    let mut others: Vec<(&'static str, &str)> = Vec::new();
    match &spec.kind {
        Some(job_spec::Kind::Training(t)) => {
            if let Some(s) = &t.schema {
                problems.extend(
                    schema::unregistered(s, &registry.version, is_field, hint)
                        .into_iter()
                        .map(|p| JobProblem::Schema(p.message)),
                );
                named.extend(s.columns.iter().map(|c| c.name.as_str()));
                named.extend(s.label.iter().map(|l| l.name.as_str()));
            }
        }
        Some(job_spec::Kind::Query(q)) => {
            others.push(("query.column", &q.column));
            others.push(("query.by_column", &q.by_column));
            others.push(("query.where_column", &q.where_column));
        }
        None => {}
    }
    if let Some(sharing) = &spec.sharing {
        others.extend(
            sharing
                .fields
                .iter()
                .map(|f| ("sharing.fields", f.as_str())),
        );
    }
    for (field, name) in others {
        if name.is_empty() || is_field(name) || named.contains(&name) {
            continue;
        }
        named.push(name);
        problems.push(JobProblem::Unregistered {
            field,
            name: name.to_owned(),
            registry: registry.version.clone(),
            hint: hint(name),
        });
    }
    problems
}

/// Checks a strategy, adding its problems; its settings when it has none.
fn strategy(s: Strategy, problems: &mut Vec<JobProblem>) -> Option<Settings> {
    let before = problems.len();
    let mu = s.proximal_mu;
    within(
        problems,
        "strategy.proximal_mu",
        mu,
        mu.is_finite() && mu >= 0.0,
        "zero or positive",
    );
    let aggregation = match enums::known(s.aggregation, || "`strategy.aggregation`".to_owned()) {
        Ok(Aggregation::Unspecified) => Some(Aggregation::Fedavg),
        Ok(a) => Some(a),
        Err(e) => {
            problems.push(JobProblem::Enum(e));
            None
        }
    };
    let settings = Settings::new(aggregation.unwrap_or(Aggregation::Fedavg), &s);
    let positive = |v: f64| v.is_finite() && v > 0.0;
    within(
        problems,
        "strategy.server_learning_rate",
        settings.server_learning_rate,
        positive(settings.server_learning_rate),
        "positive",
    );
    for (field, v) in [
        ("strategy.beta1", settings.beta1),
        ("strategy.beta2", settings.beta2),
    ] {
        within(problems, field, v, (0.0..1.0).contains(&v), "in [0, 1)");
    }
    within(
        problems,
        "strategy.tau",
        settings.tau,
        positive(settings.tau),
        "positive",
    );
    within(
        problems,
        "strategy.trim_fraction",
        settings.trim_fraction,
        (0.0..0.5).contains(&settings.trim_fraction),
        "in [0, 0.5)",
    );
    let bound = settings.max_update_norm;
    within(
        problems,
        "strategy.max_update_norm",
        bound,
        bound.is_finite() && bound >= 0.0,
        "zero or positive",
    );
    (problems.len() == before).then_some(settings)
}

/// Checks a privacy spec, adding its problems.
fn privacy(p: &PrivacySpec, problems: &mut Vec<JobProblem>) {
    within(
        problems,
        "privacy.clip_norm",
        p.clip_norm,
        p.clip_norm.is_finite() && p.clip_norm > 0.0,
        "positive",
    );
    match enums::known(p.mode, || "`privacy.mode`".to_owned()) {
        Ok(DpMode::Unspecified) => problems.push(JobProblem::NoDpMode),
        Ok(DpMode::FullBatch | DpMode::Poisson) => {}
        Err(e) => problems.push(JobProblem::Enum(e)),
    }
    within(
        problems,
        "privacy.sampling_rate",
        p.sampling_rate,
        (0.0..=1.0).contains(&p.sampling_rate),
        "in (0, 1], or 0 for batch size / records",
    );
    if let Some(rho) = p.statistics_rho {
        within(
            problems,
            "privacy.statistics_rho",
            rho,
            rho.is_finite() && rho > 0.0,
            "positive (leave it out for the plan's share)",
        );
    }
    if let Some(epsilon) = p.evaluation_epsilon {
        within(
            problems,
            "privacy.evaluation_epsilon",
            epsilon,
            epsilon.is_finite() && epsilon >= 0.0,
            "zero (no evaluations) or positive",
        );
    }
    if !(p.noise_multiplier > 0.0 || calibrated(p)) {
        problems.push(JobProblem::NoNoise);
    }
}

/// Whether a job's noise is calibrated by each node to the job's target.
fn calibrated(p: &PrivacySpec) -> bool {
    p.noise_multiplier <= 0.0
        && p.target_epsilon.is_finite()
        && p.target_epsilon > 0.0
        && p.target_delta > 0.0
        && p.target_delta < 1.0
}

/// A sound privacy spec with the job's privacy plan filled in: when the noise is calibrated to
/// the target, the statistics round's rho and each round's evaluation epsilon the operator left
/// unset take their default shares of the target (`treaty_policies::privacy::plan`), so that
/// every node spends what `treaty job train` showed; a job that gives its noise multiplier
/// evaluates at [`privacy::UNPLANNED_EVALUATION_EPSILON`] unless it says otherwise.
fn planned(mut p: PrivacySpec, rounds: u32) -> PrivacySpec {
    if calibrated(&p) {
        let (statistics, evaluation) =
            privacy::default_parts(p.target_epsilon, p.target_delta, u64::from(rounds));
        p.statistics_rho.get_or_insert(statistics);
        p.evaluation_epsilon.get_or_insert(evaluation);
    } else {
        p.evaluation_epsilon
            .get_or_insert(privacy::UNPLANNED_EVALUATION_EPSILON);
    }
    p
}

/// Checks a query, adding its problems; the validated query when it has none.
fn query(q: QuerySpec, problems: &mut Vec<JobProblem>) -> Option<ValidQuery> {
    let before = problems.len();
    let statistic = match enums::known(q.kind, || "`query.kind`".to_owned()).map(Statistic::of) {
        Ok(Some(statistic)) => Some(statistic),
        Ok(None) => {
            problems.push(JobProblem::NoStatistic);
            None
        }
        Err(e) => {
            problems.push(JobProblem::Enum(e));
            None
        }
    };
    if !(q.epsilon.is_finite() && q.epsilon > 0.0) {
        problems.push(JobProblem::QueryEpsilon(q.epsilon));
    }
    within(
        problems,
        "query.confidence",
        q.confidence,
        q.confidence == 0.0 || (q.confidence > 0.0 && q.confidence < 1.0),
        "in (0, 1)",
    );
    if statistic != Some(Statistic::Count) && q.column.is_empty() {
        problems.push(JobProblem::NoColumn);
    }
    if q.where_column.is_empty() != q.where_value.is_empty() {
        problems.push(JobProblem::Unpaired(
            "query.where_column",
            "query.where_value",
        ));
    }
    if statistic.is_some_and(Statistic::clamped)
        && !(q.lower.is_finite() && q.upper.is_finite() && q.lower < q.upper)
    {
        problems.push(JobProblem::Bounds {
            lower: q.lower,
            upper: q.upper,
        });
    }
    if statistic == Some(Statistic::Histogram) {
        if q.categories.is_empty() {
            problems.push(JobProblem::NoCategories);
        }
        if q.by_column.is_empty() != q.by_categories.is_empty() {
            problems.push(JobProblem::Unpaired(
                "query.by_column",
                "query.by_categories",
            ));
        }
        if (q.categories.len() + 1) * (q.by_categories.len() + 1) > treaty_proto::query::MAX_WIDTH {
            problems.push(JobProblem::TooManyCells(treaty_proto::query::MAX_WIDTH));
        }
    }
    let combination = match enums::known(q.combine, || "`query.combine`".to_owned()) {
        Ok(Combine::Unspecified | Combine::Sum) => Some(Combination::Sum),
        Ok(robust @ (Combine::Median | Combine::Trimmed)) => {
            let width = treaty_proto::query::layout(&q)
                .map(|l| l.0.len())
                .unwrap_or(0);
            if width > MAX_ROBUST_WIDTH {
                problems.push(JobProblem::TooWideToCombineRobustly {
                    width,
                    max: MAX_ROBUST_WIDTH,
                });
            }
            Some(if robust == Combine::Median {
                Combination::Median
            } else {
                Combination::Trimmed
            })
        }
        Err(e) => {
            problems.push(JobProblem::Enum(e));
            None
        }
    };
    if statistic == Some(Statistic::Quantile) {
        if q.quantiles.is_empty() || q.quantiles.iter().any(|p| !(*p > 0.0 && *p < 1.0)) {
            problems.push(JobProblem::Quantiles);
        }
        if q.bins as usize > treaty_proto::query::MAX_BINS {
            problems.push(JobProblem::TooManyBins {
                bins: q.bins,
                max: treaty_proto::query::MAX_BINS,
            });
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(ValidQuery {
        statistic: statistic?,
        combination: combination?,
        spec: q,
    })
}

/// The most a round of a calibrated training job spends at `delta` (the terms', which may be
/// another than the job's target delta), as the policies judge it, plus 0.1 % for the noise
/// grid of opendp; the statistics round is a round too,
/// judged by the same terms. Every node plans a job with full batches, or with the job's own
/// sampling rate, alike but for one thing: a node without a test split does not evaluate, and
/// gives the evaluations' share to training. A round spends at most the larger of the two
/// plans' rounds. A Poisson job whose rates depend on each agency's record count may spend up
/// to its whole target in a round.
fn round_epsilon(t: &ValidTraining, p: &PrivacySpec, delta: f64) -> f64 {
    let Some((sampling_rate, steps_per_round)) = node_steps(t, p) else {
        return p.target_epsilon;
    };
    // A round as a node plans it (its noise calibrated at the job's target delta), judged at
    // the terms' delta, which is the one the node judges it at.
    let round_of = |evaluation: f64| {
        let plan = node_plan(t, p, evaluation, sampling_rate, steps_per_round)?;
        let training = privacy::training(sampling_rate, plan.noise_multiplier, steps_per_round);
        let evaluating = (plan.evaluation_epsilon > 0.0).then_some(privacy::Release::Laplace {
            epsilon: plan.evaluation_epsilon,
        });
        let releases: Vec<_> = std::iter::once(training).chain(evaluating).collect();
        privacy::spent(&releases, delta).map(|s| s.epsilon)
    };
    let evaluation = p
        .evaluation_epsilon
        .unwrap_or(privacy::UNPLANNED_EVALUATION_EPSILON);
    // Two calibrations of the job's noise, each a handful of compositions of its privacy-loss
    // distributions: side by side.
    let (evaluating, training_only) = std::thread::scope(|s| {
        let evaluating = s.spawn(|| round_of(evaluation));
        let training_only = round_of(0.0);
        (evaluating.join(), training_only)
    });
    let (Ok(Ok(evaluating)), Ok(training_only)) = (evaluating, training_only) else {
        return p.target_epsilon;
    };
    // The statistics round alone, by the accountants a node judges it by.
    let statistics = t.statistics_spent();
    let statistics = match statistics > 0.0 {
        true => privacy::spent(&[privacy::Release::Gaussian { rho: statistics }], delta)
            .map_or(p.target_epsilon, |s| s.epsilon),
        false => 0.0,
    };
    let round = evaluating.max(training_only).max(statistics) * 1.001;
    // No round spends more than the whole job, at the job's delta or a larger one.
    match delta >= p.target_delta {
        true => round.min(p.target_epsilon),
        false => round,
    }
}

/// The sampling rate and steps a round every node plans the job's training with; `None` when
/// they depend on each agency's record count (Poisson sampling at batch size / records).
fn node_steps(t: &ValidTraining, p: &PrivacySpec) -> Option<(Option<f64>, u64)> {
    let epochs = u64::from(t.rest.local_epochs.max(1));
    match DpMode::try_from(p.mode) {
        Ok(DpMode::FullBatch) => Some((None, epochs)),
        Ok(DpMode::Poisson) if p.sampling_rate > 0.0 && p.sampling_rate <= 1.0 => Some((
            Some(p.sampling_rate),
            epochs.saturating_mul((1.0 / p.sampling_rate).ceil() as u64),
        )),
        _ => None,
    }
}

/// The job's privacy as a node that evaluates at `evaluation` epsilon a round plans it: its
/// noise calibrated to the job's target at the job's delta.
fn node_plan(
    t: &ValidTraining,
    p: &PrivacySpec,
    evaluation: f64,
    sampling_rate: Option<f64>,
    steps_per_round: u64,
) -> Result<privacy::JobPlan, privacy::PrivacyError> {
    let statistics = t.statistics_spent();
    privacy::plan(&privacy::JobPrivacy {
        target_epsilon: p.target_epsilon,
        delta: p.target_delta,
        rounds: u64::from(t.rest.rounds.max(1)),
        steps_per_round,
        sampling_rate,
        statistics: statistics > 0.0,
        statistics_rho: Some(statistics),
        evaluation_epsilon: Some(evaluation),
    })
}

/// Why no agency that evaluates could plan a job whose noise each node calibrates to its
/// target, in the plan's own words (the evaluations or the statistics round alone spend the
/// target): refused when the job is created, where every such agency would refuse its first
/// round. (Agencies without a test split do not evaluate and could train it; a job meant for
/// them says so with `evaluation_epsilon` 0, as the reason suggests.)
fn unplannable(t: &ValidTraining) -> Option<String> {
    let p = &t.privacy;
    if !calibrated(p) {
        return None;
    }
    // Where the rate rests on each agency's record count, one full-batch step stands in for
    // its training: the plan then fails only where the statistics round and the evaluations
    // alone spend the target, which no training changes.
    let (sampling_rate, steps_per_round) = node_steps(t, p).unwrap_or((None, 1));
    let evaluation = p
        .evaluation_epsilon
        .unwrap_or(privacy::UNPLANNED_EVALUATION_EPSILON);
    node_plan(t, p, evaluation, sampling_rate, steps_per_round)
        .err()
        .map(|e| e.to_string())
}

/// The sharing terms of a sound job: what it declared, defaults taken from the rest of the
/// spec.
fn sharing(declared: SharingSpec, work: &Work) -> Result<Sharing, JobProblem> {
    let (epsilon, delta, fields) = match work {
        Work::Training(t) => {
            let privacy = t.privacy;
            let delta = if declared.delta > 0.0 {
                declared.delta
            } else if privacy.target_delta > 0.0 {
                privacy.target_delta
            } else {
                1e-5
            };
            let epsilon = if declared.epsilon_per_round > 0.0 {
                declared.epsilon_per_round
            } else if calibrated(&privacy) {
                round_epsilon(t, &privacy, delta)
            } else {
                return Err(JobProblem::UndeclaredEpsilon);
            };
            let mut fields: Vec<String> = t
                .schema
                .columns
                .iter()
                .map(|c| c.name.clone())
                .chain(t.schema.label.iter().map(|l| l.name.clone()))
                .collect();
            fields.dedup();
            (epsilon, delta, fields)
        }
        Work::Query(q) => {
            let q = &q.spec;
            let epsilon = if declared.epsilon_per_round > 0.0 {
                declared.epsilon_per_round
            } else {
                q.epsilon
            };
            let fields = [&q.column, &q.by_column, &q.where_column]
                .into_iter()
                .filter(|c| !c.is_empty())
                .cloned()
                .collect();
            (epsilon, declared.delta.max(0.0), fields)
        }
    };
    if !(epsilon.is_finite() && epsilon > 0.0 && delta.is_finite() && (0.0..1.0).contains(&delta)) {
        return Err(JobProblem::Sharing { epsilon, delta });
    }
    Ok(Sharing {
        epsilon_per_round: epsilon,
        delta,
        fields: if declared.fields.is_empty() {
            fields
        } else {
            declared.fields
        },
        model_retention_days: declared.model_retention_days,
        onward_transfer: declared.onward_transfer,
        secure_aggregation: false,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use treaty_proto::v1::QueryKind;

    const SCHEMA: &str = "[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"x1\"\nkind = \"numeric\"\nlower = -5.0\nupper = 5.0\n";

    /// A registry with the fields of the tests' specs.
    pub(crate) fn registry() -> Registry {
        Registry::parse(
            "registry.toml",
            "registry_version = \"test-1\"\ncountries = [\"DE\", \"NL\"]\n\n[purposes]\nnarcotics = \"Narcotics\"\n\n[fields]\nx1 = \"ordinary\"\nseized = \"ordinary\"\na = \"ordinary\"\ny = \"ordinary\"\nmodel = \"ordinary\"\n",
        )
        .unwrap()
    }

    /// A sound training spec.
    pub(crate) fn training_spec() -> TrainingSpec {
        TrainingSpec {
            model: ModelKind::LogisticRegression as i32,
            schema: schema::parse(SCHEMA).unwrap().ok(),
            rounds: 2,
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            privacy: Some(PrivacySpec {
                mode: DpMode::Poisson as i32,
                clip_norm: 1.0,
                target_epsilon: 2.0,
                target_delta: 1e-6,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn job(kind: job_spec::Kind) -> JobSpec {
        JobSpec {
            kind: Some(kind),
            ..Default::default()
        }
    }

    #[test]
    fn every_problem_of_a_job_is_reported() {
        let spec = JobSpec {
            kind: Some(job_spec::Kind::Training(TrainingSpec {
                model: ModelKind::LinearRegression as i32,
                schema: schema::parse(
                    "[label]\nname = \"y\"\nkind = \"binary\"\n[[column]]\nname = \"a\"\nkind = \"numeric\"\n",
                )
                .unwrap()
                .ok(),
                rounds: 0,
                local_epochs: 0,
                batch_size: 0,
                learning_rate: f64::NAN,
                momentum: 1.0,
                l2: -1.0,
                ..Default::default()
            })),
            min_participants: 5,
            ..Default::default()
        };
        let problems = ValidJob::for_federation(spec, 3, &registry())
            .unwrap_err()
            .problems;
        // Eight, the missing privacy spec, and the numeric column the statistics round cannot
        // bound.
        assert_eq!(problems.len(), 10, "{problems:#?}");
        assert!(problems.contains(&JobProblem::NoPrivacy), "{problems:#?}");
        assert!(problems.contains(&JobProblem::MoreParticipantsThanMembers { min: 5, members: 3 }));
        let text = InvalidJob { problems }.to_string();
        assert!(
            text.contains(
                "schema: label `y` is binary, but a linear regression model needs a numeric label"
            ),
            "{text}"
        );
        assert!(
            text.contains("schema: numeric column `a` has no bounds"),
            "{text}"
        );
        assert!(
            text.contains("`training.learning_rate` is NaN; it must be a positive number"),
            "{text}"
        );
    }

    #[test]
    fn secure_aggregation_refuses_robust_aggregators_and_rounds_of_two() {
        let secure = |aggregation: Aggregation, bits: u32, min: u32| {
            let mut t = training_spec();
            t.strategy = Some(Strategy {
                aggregation: aggregation as i32,
                ..Default::default()
            });
            t.secure_aggregation = Some(SecureAggregationSpec {
                max_dropouts: 0,
                fractional_bits: bits,
                ..Default::default()
            });
            ValidJob::for_federation(
                JobSpec {
                    min_participants: min,
                    ..job(job_spec::Kind::Training(t))
                },
                8,
                &registry(),
            )
        };
        for fine in [
            Aggregation::Fedavg,
            Aggregation::Fedadam,
            Aggregation::Fedyogi,
            Aggregation::Fedadagrad,
        ] {
            let valid = secure(fine, 0, 3).unwrap();
            let Work::Training(t) = valid.work else {
                panic!("a training job")
            };
            assert!(t.secure_aggregation().is_some());
        }
        for robust in [
            Aggregation::Median,
            Aggregation::TrimmedMean,
            Aggregation::NormBounded,
        ] {
            let problems = secure(robust, 0, 3).unwrap_err().problems;
            assert!(
                matches!(
                    problems.as_slice(),
                    [JobProblem::SecureAggregationRobust(_)]
                ),
                "{problems:?}"
            );
            assert!(
                problems[0]
                    .to_string()
                    .contains("needs each update on its own")
            );
        }
        assert_eq!(
            secure(Aggregation::Fedavg, 0, 2).unwrap_err().problems,
            vec![JobProblem::SecureAggregationTooFew(2)]
        );
        assert_eq!(
            secure(Aggregation::Fedavg, 48, 3).unwrap_err().problems,
            vec![JobProblem::FractionalBits(48)]
        );
        // The robust strategies stay available without it.
        let mut t = training_spec();
        t.strategy = Some(Strategy {
            aggregation: Aggregation::Median as i32,
            ..Default::default()
        });
        assert!(ValidJob::for_federation(job(job_spec::Kind::Training(t)), 8, &registry()).is_ok());
    }

    /// A job whose evaluations alone spend its target is refused when it is created, with the
    /// plan's reason, where every agency that evaluates would refuse its first round: 100
    /// rounds of evaluations at epsilon 0.5 compose to far more than epsilon 2 (even the
    /// advanced composition theorem's bound, 0.5 sqrt(2 * 100 ln(1e6)) = 26, is above it).
    #[test]
    fn a_job_whose_evaluations_alone_spend_its_target_is_refused_up_front() {
        let with = |rounds: u32, evaluation: f64| {
            let mut t = training_spec();
            t.rounds = rounds;
            if let Some(p) = t.privacy.as_mut() {
                p.mode = DpMode::FullBatch as i32;
                p.evaluation_epsilon = Some(evaluation);
            }
            ValidJob::for_federation(job(job_spec::Kind::Training(t)), 8, &registry())
        };
        let problems = with(100, 0.5).unwrap_err().problems;
        match problems.as_slice() {
            [JobProblem::Unplannable(why)] => assert!(
                why.contains("the evaluations alone spend more than epsilon 2"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(with(100, 0.001).is_ok());
        assert!(with(2, 0.5).is_ok());
        // The same with Poisson sampling at each agency's batch size / records.
        let mut t = training_spec();
        t.rounds = 100;
        t.privacy.as_mut().unwrap().evaluation_epsilon = Some(0.5);
        let problems = ValidJob::for_federation(job(job_spec::Kind::Training(t)), 8, &registry())
            .unwrap_err()
            .problems;
        assert!(
            matches!(problems.as_slice(), [JobProblem::Unplannable(_)]),
            "{problems:?}"
        );
    }

    #[test]
    fn distributed_noise_needs_one_full_batch_step_a_round() {
        let check = |change: &dyn Fn(&mut TrainingSpec)| {
            let mut t = training_spec();
            if let Some(p) = t.privacy.as_mut() {
                p.mode = DpMode::FullBatch as i32;
            }
            t.secure_aggregation = Some(SecureAggregationSpec {
                distributed_noise: true,
                ..Default::default()
            });
            change(&mut t);
            ValidJob::for_federation(
                JobSpec {
                    min_participants: 3,
                    ..job(job_spec::Kind::Training(t))
                },
                8,
                &registry(),
            )
        };
        assert!(check(&|_| {}).is_ok());
        type Change<'a> = &'a dyn Fn(&mut TrainingSpec);
        let refusals: [(Change, &str); 5] = [
            (
                &|t| t.privacy.as_mut().unwrap().mode = DpMode::Poisson as i32,
                "does not train full batch",
            ),
            (&|t| t.local_epochs = 3, "several local epochs"),
            (&|t| t.momentum = 0.9, "momentum"),
            (&|t| t.l2 = 0.01, "L2"),
            (
                &|t| {
                    t.strategy = Some(Strategy {
                        aggregation: Aggregation::Fedavg as i32,
                        proximal_mu: 0.1,
                        ..Default::default()
                    })
                },
                "proximal term",
            ),
        ];
        for (change, why) in refusals {
            let problems = check(change).unwrap_err().problems;
            assert!(
                matches!(problems.as_slice(), [JobProblem::DistributedNotLinear(w)] if w.contains(why)),
                "{why}: {problems:?}"
            );
        }
    }

    #[test]
    fn unknown_enum_values_are_named_with_their_field() {
        let mut t = training_spec();
        t.model = 17;
        t.strategy = Some(Strategy {
            aggregation: 99,
            ..Default::default()
        });
        if let Some(p) = t.privacy.as_mut() {
            p.mode = 5;
        }
        let problems = ValidJob::try_from(job(job_spec::Kind::Training(t)))
            .unwrap_err()
            .problems;
        let fields: Vec<(&str, i32)> = problems
            .iter()
            .filter_map(|p| match p {
                JobProblem::Enum(EnumError::Unknown { field, value }) => {
                    Some((field.as_str(), *value))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            fields,
            [
                ("`training.model`", 17),
                ("`strategy.aggregation`", 99),
                ("`privacy.mode`", 5)
            ],
            "{problems:#?}"
        );
        let query = QuerySpec {
            kind: 9,
            combine: 4,
            epsilon: 1.0,
            column: "c".into(),
            ..Default::default()
        };
        let e = ValidQuery::try_from(query).unwrap_err().to_string();
        assert!(
            e.contains("`query.kind` is 9, a value this build does not know"),
            "{e}"
        );
        assert!(
            e.contains("`query.combine` is 4, a value this build does not know"),
            "{e}"
        );
    }

    #[test]
    fn a_sound_job_comes_back_as_it_was_sent_with_its_defaults() {
        let spec = job(job_spec::Kind::Training(training_spec()));
        let valid = ValidJob::for_federation(spec.clone(), 1, &registry()).unwrap();
        assert_eq!(valid.rules.min_participants(), 1);
        assert_eq!(valid.rules.round_timeout_ms(), DEFAULT_ROUND_TIMEOUT_MS);
        let Work::Training(t) = &valid.work else {
            panic!("{valid:?}")
        };
        assert_eq!(t.settings.aggregation, Aggregation::Fedavg);
        assert!(t.needs_statistics());
        // The calibrated job's plan is filled in: 10 % of the target's rho to the statistics
        // round, 10 % to the evaluations of its 2 rounds (epsilon e each, e²/2 in zCDP).
        let rho = privacy::zcdp::rho_for(2.0, 1e-6);
        assert!((privacy::zcdp::epsilon(rho, 1e-6) - 2.0).abs() < 1e-6);
        let statistics = t.privacy.statistics_rho.unwrap();
        let evaluation = t.privacy.evaluation_epsilon.unwrap();
        assert!((statistics - 0.1 * rho).abs() < 1e-15);
        assert!((2.0 * evaluation * evaluation / 2.0 - 0.1 * rho).abs() < 1e-12);
        let mut spec = spec;
        if let Some(job_spec::Kind::Training(t)) = spec.kind.as_mut()
            && let Some(p) = t.privacy.as_mut()
        {
            p.statistics_rho = Some(statistics);
            p.evaluation_epsilon = Some(evaluation);
        }
        assert_eq!(
            valid.to_spec(),
            JobSpec {
                min_participants: 1,
                ..spec
            }
        );
        // Read back from the store, it is the same job.
        assert_eq!(ValidJob::try_from(valid.to_spec()).unwrap(), valid);
    }

    #[test]
    fn a_calibrated_job_claims_its_target_and_a_given_noise_must_declare() {
        let s = ValidJob::try_from(job(job_spec::Kind::Training(training_spec())))
            .unwrap()
            .rules
            .sharing;
        assert_eq!((s.epsilon_per_round, s.delta), (2.0, 1e-6));
        assert_eq!(s.fields, ["x1", "seized"]);
        assert_eq!(s.model_retention_days, None);
        let mut t = training_spec();
        t.privacy = Some(PrivacySpec {
            mode: DpMode::FullBatch as i32,
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            ..Default::default()
        });
        let mut spec = job(job_spec::Kind::Training(t));
        assert_eq!(
            ValidJob::try_from(spec.clone()).unwrap_err().problems,
            [JobProblem::UndeclaredEpsilon]
        );
        spec.sharing = Some(SharingSpec {
            epsilon_per_round: 0.3,
            model_retention_days: Some(90),
            ..Default::default()
        });
        let s = ValidJob::try_from(spec).unwrap().rules.sharing;
        assert_eq!(
            (s.epsilon_per_round, s.delta, s.model_retention_days),
            (0.3, 1e-5, Some(90))
        );
        let query = job(job_spec::Kind::Query(QuerySpec {
            kind: QueryKind::Sum as i32,
            column: "declared_value_eur".into(),
            lower: 0.0,
            upper: 1.0,
            where_column: "seized".into(),
            where_value: "1".into(),
            epsilon: 0.5,
            ..Default::default()
        }));
        let s = ValidJob::try_from(query).unwrap().rules.sharing;
        assert_eq!((s.epsilon_per_round, s.delta), (0.5, 0.0));
        assert_eq!(s.fields, ["declared_value_eur", "seized"]);
    }

    #[test]
    fn the_statistics_round_records_its_standardization_and_cost() {
        let mut t = ValidTraining::try_from(training_spec()).unwrap();
        t.set_standardization(vec![ColumnStats {
            name: "x1".into(),
            mean: 1.0,
            std: 2.0,
            count: 3.0,
        }]);
        assert!(!t.needs_statistics());
        // The round cost what the plan gave it.
        assert_eq!(
            Some(t.privacy.statistics_round_rho),
            t.privacy.statistics_rho
        );
        // A resumed job reads it back as it was.
        assert_eq!(ValidTraining::try_from(t.to_spec()).unwrap(), t);
    }

    /// 20 rounds of 5 full-batch steps, calibrated to epsilon 1 at delta 1e-5.
    fn full_batch_job() -> job_spec::Kind {
        let mut t = training_spec();
        t.rounds = 20;
        t.local_epochs = 5;
        t.privacy = Some(PrivacySpec {
            mode: DpMode::FullBatch as i32,
            clip_norm: 1.0,
            target_epsilon: 1.0,
            target_delta: 1e-5,
            ..Default::default()
        });
        job_spec::Kind::Training(t)
    }

    /// The plan a node makes of [`full_batch_job`] (validated as `t`) at `evaluation` epsilon.
    fn full_batch_plan(t: &ValidTraining, evaluation: f64) -> privacy::JobPlan {
        privacy::plan(&privacy::JobPrivacy {
            target_epsilon: 1.0,
            delta: 1e-5,
            rounds: 20,
            steps_per_round: 5,
            sampling_rate: None,
            statistics: true,
            statistics_rho: t.privacy.statistics_rho,
            evaluation_epsilon: Some(evaluation),
        })
        .unwrap()
    }

    /// A full-batch job declares what one round really spends: no node's round, whatever its
    /// split between training and evaluation, spends more, and the declaration is tight.
    #[test]
    fn a_full_batch_job_declares_what_a_round_spends() {
        let valid = ValidJob::try_from(job(full_batch_job())).unwrap();
        let declared = valid.rules.sharing.epsilon_per_round;
        let Work::Training(t) = &valid.work else {
            panic!("{valid:?}")
        };
        let node = |evaluation: f64| full_batch_plan(t, evaluation).round;
        let with_test_split = node(t.privacy.evaluation_epsilon.unwrap());
        let without = node(0.0);
        assert!(with_test_split <= declared && without <= declared);
        // The statistics round, round 0, spends its rho alone: within the terms too.
        let statistics = privacy::spent(
            &[privacy::Release::Gaussian {
                rho: t.privacy.statistics_rho.unwrap(),
            }],
            1e-5,
        )
        .unwrap()
        .epsilon;
        assert!(statistics <= declared, "{statistics} > {declared}");
        assert!(
            declared <= 1.002 * with_test_split.max(without).max(statistics),
            "{declared}"
        );
        // Far below the whole target: a policy's per-round limit judges a round, not the job.
        assert!(declared < 0.5);
    }

    /// Terms at a smaller delta than the job's target: the node plans its noise at the target's
    /// delta and judges its round at the terms'; the declared figure is at the terms' too.
    #[test]
    fn a_round_is_declared_at_the_terms_delta() {
        let mut spec = job(full_batch_job());
        spec.sharing = Some(SharingSpec {
            delta: 1e-8,
            ..Default::default()
        });
        let valid = ValidJob::try_from(spec).unwrap();
        let declared = valid.rules.sharing.epsilon_per_round;
        assert_eq!(valid.rules.sharing.delta, 1e-8);
        let Work::Training(t) = &valid.work else {
            panic!("{valid:?}")
        };
        for evaluation in [t.privacy.evaluation_epsilon.unwrap(), 0.0] {
            let plan = full_batch_plan(t, evaluation);
            // Five full-batch steps are one Gaussian of rho 5 / (2 sigma^2).
            let mut round = vec![privacy::Release::Gaussian {
                rho: 5.0 / (2.0 * plan.noise_multiplier.powi(2)),
            }];
            if evaluation > 0.0 {
                round.push(privacy::Release::Laplace {
                    epsilon: evaluation,
                });
            }
            let at_terms = privacy::spent(&round, 1e-8).unwrap().epsilon;
            let at_target = privacy::spent(&round, 1e-5).unwrap().epsilon;
            assert!(
                at_target < at_terms && at_terms <= declared,
                "{at_terms} > {declared}"
            );
        }
    }

    /// A Poisson job with its own sampling rate declares what one of its rounds spends, as
    /// every node plans it; one whose rates depend on each agency's records declares its target.
    #[test]
    fn a_poisson_job_with_its_own_rate_declares_what_a_round_spends() {
        let mut t = training_spec();
        t.rounds = 20;
        t.local_epochs = 1;
        let privacy_spec = |rate: f64| PrivacySpec {
            mode: DpMode::Poisson as i32,
            clip_norm: 3.0,
            sampling_rate: rate,
            target_epsilon: 1.0,
            target_delta: 1e-5,
            ..Default::default()
        };
        t.privacy = Some(privacy_spec(0.1));
        let valid = ValidJob::try_from(job(job_spec::Kind::Training(t.clone()))).unwrap();
        let declared = valid.rules.sharing.epsilon_per_round;
        let Work::Training(v) = &valid.work else {
            panic!("{valid:?}")
        };
        // The node's plan: 10 steps a round at q = 0.1, its own evaluation share; a node
        // without a test split gives that share to training.
        let plan = |evaluation: Option<f64>| {
            privacy::plan(&privacy::JobPrivacy {
                target_epsilon: 1.0,
                delta: 1e-5,
                rounds: 20,
                steps_per_round: 10,
                sampling_rate: Some(0.1),
                statistics: true,
                statistics_rho: v.privacy.statistics_rho,
                evaluation_epsilon: evaluation,
            })
            .unwrap()
        };
        let (evaluating, training_only) = (plan(v.privacy.evaluation_epsilon), plan(Some(0.0)));
        // A round, by an independent route: the accountant on one round's releases.
        let one_round = |sigma: f64, evaluation: Option<f64>| {
            let steps = privacy::Release::SampledGaussian {
                sampling_rate: 0.1,
                noise_multiplier: sigma,
                steps: 10,
            };
            let evaluation = evaluation.map(|epsilon| privacy::Release::Laplace { epsilon });
            let releases: Vec<_> = std::iter::once(steps).chain(evaluation).collect();
            privacy::spent(&releases, 1e-5).unwrap().epsilon
        };
        let with_test_split = one_round(evaluating.noise_multiplier, v.privacy.evaluation_epsilon);
        let without = one_round(training_only.noise_multiplier, None);
        assert!(
            with_test_split <= declared,
            "{with_test_split} > {declared}"
        );
        assert!(without <= declared, "{without} > {declared}");
        assert!(
            declared <= 1.002 * with_test_split.max(without).max(evaluating.statistics),
            "{declared}"
        );
        // Twenty such rounds stay within a total of 8 (the sample policies' tightest).
        assert!(declared < 0.4, "{declared}");
        // Rates of each agency's own: the whole target.
        t.privacy = Some(privacy_spec(0.0));
        let valid = ValidJob::try_from(job(job_spec::Kind::Training(t))).unwrap();
        assert_eq!(valid.rules.sharing.epsilon_per_round, 1.0);
    }

    #[test]
    fn a_new_job_with_fields_outside_the_registry_is_refused_with_every_problem() {
        // A schema with a field the registry does not know, a misspelt one, a numeric column
        // without bounds and a duplicate; the job declares a field outside the registry too.
        let mut t = training_spec();
        t.schema = schema::parse(
            "[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"x1\"\nkind = \"numeric\"\nlower = 0.0\nupper = 1.0\n[[column]]\nname = \"country_of_birth\"\nkind = \"categorical\"\nvalues = [\"FR\"]\n[[column]]\nname = \"modle\"\nkind = \"boolean\"\n[[column]]\nname = \"a\"\nkind = \"numeric\"\n[[column]]\nname = \"a\"\nkind = \"boolean\"\n",
        )
        .unwrap()
        .ok();
        let mut spec = job(job_spec::Kind::Training(t));
        spec.sharing = Some(SharingSpec {
            fields: vec!["x1".into(), "informant".into(), "country_of_birth".into()],
            ..Default::default()
        });
        let problems = ValidJob::for_federation(spec, 1, &registry())
            .unwrap_err()
            .problems;
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "schema: column `a` appears twice; remove one, or rename it to the other column it meant",
                "schema: numeric column `a` has no bounds; the job's differentially private statistics (the standardisation) need them: write lower = ... and upper = ..., the plausible range its values are clamped to",
                "schema: column `country_of_birth` is not a field of registry test-1; add it to the registry's [fields] with its category (e.g. country_of_birth = \"ordinary\"), or use a field the registry has",
                "schema: column `modle` is not a field of registry test-1; add it to the registry's [fields] with its category (e.g. modle = \"ordinary\"), or use a field the registry has (did you mean `model`?)",
                "`sharing.fields` names `informant`, which is not a field of registry test-1; add it to the registry's [fields] with its category, or name a field the registry has",
            ],
        );
        // A query's columns are its fields.
        let query = job(job_spec::Kind::Query(QuerySpec {
            kind: QueryKind::Count as i32,
            where_column: "nationality".into(),
            where_value: "FR".into(),
            epsilon: 0.5,
            ..Default::default()
        }));
        let problems = ValidJob::for_federation(query, 1, &registry())
            .unwrap_err()
            .problems;
        assert_eq!(
            problems,
            [JobProblem::Unregistered {
                field: "query.where_column",
                name: "nationality".into(),
                registry: "test-1".into(),
                hint: None
            }]
        );
        // A stored job is read back as it was created, whatever the registry says now.
        let mut t = training_spec();
        t.schema = schema::parse("[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"z\"\nkind = \"numeric\"\nlower = 0.0\nupper = 1.0\n").unwrap().ok();
        assert!(ValidJob::try_from(job(job_spec::Kind::Training(t))).is_ok());
    }
}
