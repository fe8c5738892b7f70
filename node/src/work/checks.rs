//! A task checked from itself alone, at the edge: the wire's messages are decoded into checked
//! values (enums decoded, parts present, schema, model and figures within the node's bounds)
//! or an [`InvalidTask`] that says what is wrong. Nothing here reads a record, so no refusal
//! can depend on the agency's data; the checks run in a fixed order, and the first that fails
//! is the refusal.

use treaty_proto::EnumError;
use treaty_proto::enums;
use treaty_proto::query::{MAX_BINS, MAX_WIDTH, Statistic, bins};
use treaty_proto::schema::{self, MAX_BOUND, MAX_CLASSES};
use treaty_proto::v1::{
    ColumnStats, DpMode, EvaluationTask, FeatureSchema, ModelKind, ModelPart, PrivacySpec,
    QuerySpec, QueryTask, StatsTask, TrainingSpec, TrainingTask,
};

use crate::model::Architecture;
use crate::refusal::{Refusal, RefusalCode};

/// The most DP steps a node takes in one round: a task asking for more (a tiny sampling rate,
/// huge epochs) would hold the node's cores for ever.
pub(super) const MAX_STEPS_PER_ROUND: u64 = 1_000_000;

/// The largest model a node accepts from the coordinator, in elements.
pub(super) const MAX_MODEL_ELEMENTS: u64 = 50_000_000;

/// The largest clipping norm a node accepts: with it, no sum of clipped gradients overflows.
const MAX_CLIP_NORM: f64 = 1e6;

/// The largest magnitude of a global model's parameter a node accepts: with features bounded
/// by `data::MAX_FEATURE`, no record's forward pass can then overflow.
pub(super) const MAX_PARAMETER: f64 = 1e12;

// The most classes of a multinomial model (`MAX_CLASSES`), and the largest magnitude of a
// column bound or a query's clamping bound (`MAX_BOUND`), are the schema's: `schema::check`
// finds every schema this module refuses before a job is created.

/// What is wrong with a task, judged from the task (and public figures) alone. Refused as
/// `INVALID_TASK`, but for a release without differential privacy (`DP_REQUIRED`).
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum InvalidTask {
    #[error("the task has no kind")]
    NoKind,
    #[error("the {0} has no spec")]
    NoSpec(&'static str),
    #[error("the {0} has no schema")]
    NoSchema(&'static str),
    /// Refused as `DP_REQUIRED`.
    #[error(
        "the {0} has no privacy spec, and nothing leaves this node without differential privacy"
    )]
    NotPrivate(&'static str),
    #[error(transparent)]
    Enum(#[from] EnumError),
    #[error("the schema is invalid: {}", .0.join("; "))]
    Schema(Vec<String>),
    #[error("the clipping norm {0} must be positive and at most {MAX_CLIP_NORM:e}")]
    ClipNorm(f64),
    #[error("a {label} label does not fit a {model} model")]
    LabelModel {
        label: &'static str,
        model: &'static str,
    },
    #[error("a multinomial model needs 2 to {MAX_CLASSES} classes, not {0}")]
    Classes(usize),
    #[error("an MLP needs 1 to {max} hidden units, not {0}", max = schema::MAX_HIDDEN_UNITS)]
    HiddenUnits(u32),
    #[error("the task names no model")]
    NoModel,
    #[error("the standardization has {given} columns, the schema {numeric} numeric ones")]
    StandardizationWidth { given: usize, numeric: usize },
    #[error(
        "the standardization of `{name}` (mean {mean}, std {std}) needs a finite mean and a positive finite std"
    )]
    Standardization { name: String, mean: f64, std: f64 },
    #[error("the model has more than {MAX_MODEL_ELEMENTS} parameters")]
    TooManyParameters,
    #[error("the privacy spec names no mode (full batch or Poisson)")]
    NoMode,
    #[error(
        "{0} needs a public figure for the agency's number of records, and the task carries none: run the job's statistics round, give a sampling rate, or declare `public_records` in the node's [data]"
    )]
    NoPublicRecords(&'static str),
    #[error("the sampling rate {0} must be in (0, 1]")]
    SamplingRate(f64),
    #[error(
        "a round of {0} steps is more than this node takes ({MAX_STEPS_PER_ROUND}); raise the sampling rate or lower the epochs"
    )]
    TooManySteps(u64),
    #[error("give a noise multiplier, or a target epsilon and delta for the job")]
    NoNoise,
    /// Distributed DP needs one linear release a round.
    #[error(
        "distributed noise makes each round one step of full-batch DP gradient descent: the job must train full batch, one local epoch, without momentum, L2 or a proximal term ({0})"
    )]
    NotLinear(&'static str),
    #[error("distributed noise needs the round's secure aggregation, and the task carries none")]
    DistributedWithoutSecureAggregation,
    #[error(
        "distributed noise of scale {0} in the fixed point is below the 1/2 its accounting needs: use more fractional bits"
    )]
    DistributedScale(f64),
    #[error(
        "the public denominator {0} is beyond what the round's fixed point holds: use fewer fractional bits"
    )]
    DenominatorRange(f64),
    #[error("no noise multiplier meets epsilon {epsilon} over {steps} steps: {reason}")]
    Uncalibrated {
        epsilon: f64,
        steps: u64,
        reason: String,
    },
    #[error(
        "numeric column `{0}` has no bounds; differentially private statistics need `lower` and `upper`"
    )]
    Unbounded(String),
    #[error("the query's epsilon {0} must be positive")]
    QueryEpsilon(f64),
    #[error("the query's bounds [{lower}, {upper}] must be ordered and within ±{MAX_BOUND:e}")]
    QueryBounds { lower: f64, upper: f64 },
    #[error("the query asks for more than {MAX_WIDTH} values or {MAX_BINS} bins")]
    QueryTooWide,
    #[error("the global model does not fit the task: {0}")]
    GlobalModel(treaty_proto::TensorError),
    #[error("the global model has a parameter that is not finite or beyond {MAX_PARAMETER:e}")]
    GlobalParameter,
    #[error("the evaluation task names no model version")]
    NoModelVersion,
    #[error("the evaluation task's job makes no evaluations (its evaluation epsilon is 0)")]
    NoEvaluation,
}

impl From<InvalidTask> for Refusal {
    fn from(e: InvalidTask) -> Self {
        let code = match e {
            InvalidTask::NotPrivate(_) => RefusalCode::DpRequired,
            _ => RefusalCode::InvalidTask,
        };
        Refusal::new(code, e.to_string())
    }
}

/// How a training task's steps draw their records (its sampling rate is planned from public
/// figures).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mode {
    FullBatch,
    Poisson,
}

/// A training task, checked.
#[derive(Debug, Clone)]
pub(super) struct Training {
    /// The spec, for its plain figures (epochs, batch size, learning rate and the like).
    pub(super) spec: TrainingSpec,
    /// The schema, valid, with a label that fits the model.
    pub(super) schema: FeatureSchema,
    /// The privacy spec, with a clipping norm in (0, [`MAX_CLIP_NORM`]].
    pub(super) privacy: PrivacySpec,
    /// The model with its sizes: a multinomial model's 2 to [`MAX_CLASSES`] classes, an MLP's
    /// 1 to [`schema::MAX_HIDDEN_UNITS`] hidden units.
    pub(super) architecture: Architecture,
    pub(super) mode: Mode,
    /// How many parameters the model has: at most [`MAX_MODEL_ELEMENTS`].
    pub(super) parameters: usize,
    /// The global model's version, to download.
    pub(super) model_version: String,
    /// The global model as the task carries it when it is small (the parts of its download),
    /// checked when it is assembled; empty when it is to be downloaded.
    pub(super) model: Vec<ModelPart>,
    /// The coordinator's estimate of the agency's number of records, a public figure (0 when
    /// it has none).
    pub(super) public_records: f64,
}

impl TryFrom<&TrainingTask> for Training {
    type Error = InvalidTask;

    fn try_from(task: &TrainingTask) -> Result<Self, InvalidTask> {
        let spec = task
            .spec
            .as_ref()
            .ok_or(InvalidTask::NoSpec("training task"))?;
        let privacy = spec
            .privacy
            .ok_or(InvalidTask::NotPrivate("training job"))?;
        if !(privacy.clip_norm > 0.0 && privacy.clip_norm <= MAX_CLIP_NORM) {
            return Err(InvalidTask::ClipNorm(privacy.clip_norm));
        }
        let (schema, architecture) = check_model(spec)?;
        check_standardization(&schema, &spec.standardization)?;
        let parameters = schema::parameter_layout(spec)?
            .iter()
            .map(|(_, s)| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)))
            .try_fold(0usize, |a, n| a.checked_add(n?))
            .filter(|&n| n as u64 <= MAX_MODEL_ELEMENTS)
            .ok_or(InvalidTask::TooManyParameters)?;
        let mode = match enums::known(privacy.mode, || "the privacy spec's mode".to_owned())? {
            DpMode::FullBatch => Mode::FullBatch,
            DpMode::Poisson => Mode::Poisson,
            DpMode::Unspecified => return Err(InvalidTask::NoMode),
        };
        Ok(Training {
            spec: spec.clone(),
            schema,
            privacy,
            architecture,
            mode,
            parameters,
            model_version: task.model_version.clone(),
            model: task.model.clone(),
            public_records: task.public_records,
        })
    }
}

/// An evaluation task, checked: its job's training spec as a training task's would be, and the
/// model version to evaluate.
#[derive(Debug, Clone)]
pub(super) struct Evaluation {
    pub(super) training: Training,
}

impl TryFrom<&EvaluationTask> for Evaluation {
    type Error = InvalidTask;

    fn try_from(task: &EvaluationTask) -> Result<Self, InvalidTask> {
        let training = Training::try_from(&TrainingTask {
            spec: task.spec.clone(),
            model_version: task.model_version.clone(),
            public_records: 0.0,
            model: task.model.clone(),
        })?;
        if task.model_version.is_empty() {
            return Err(InvalidTask::NoModelVersion);
        }
        Ok(Evaluation { training })
    }
}

/// A statistics task, checked: a valid schema whose every numeric column has bounds.
#[derive(Debug, Clone)]
pub(super) struct Statistics {
    pub(super) schema: FeatureSchema,
    pub(super) privacy: PrivacySpec,
    /// For each numeric column, what one record can add at most to its count and to the sum and
    /// sum of squares of its deviations from the centre of its transformed bounds: 1, R and R²
    /// for R their half-range (see [`schema::transformed_bounds`]).
    pub(super) scales: Vec<f64>,
}

impl TryFrom<&StatsTask> for Statistics {
    type Error = InvalidTask;

    fn try_from(task: &StatsTask) -> Result<Self, InvalidTask> {
        let (privacy, schema) = match (&task.privacy, &task.schema) {
            (Some(privacy), Some(schema)) => (privacy, schema),
            (None, _) => return Err(InvalidTask::NotPrivate("statistics task")),
            (_, None) => return Err(InvalidTask::NoSchema("statistics task")),
        };
        check_schema(schema)?;
        let columns = schema::numeric_columns(schema);
        let mut scales = Vec::with_capacity(3 * columns.len());
        for c in &columns {
            let Some(bounds) = schema::transformed_bounds(c)? else {
                return Err(InvalidTask::Unbounded(c.name.clone()));
            };
            // A log1p column whose bounds are both at most 0 reads no value, so moves no sum:
            // any positive scale will do.
            let r = bounds.half_range();
            scales.extend([
                1.0,
                r.max(f64::MIN_POSITIVE),
                (r * r).max(f64::MIN_POSITIVE),
            ]);
        }
        Ok(Statistics {
            schema: schema.clone(),
            privacy: *privacy,
            scales,
        })
    }
}

/// A query task, checked: a positive epsilon, ordered bounds within ±[`MAX_BOUND`] for a
/// statistic that clamps, and an answer of at most [`MAX_WIDTH`] values and [`MAX_BINS`] bins.
#[derive(Debug, Clone)]
pub(super) struct Query {
    pub(super) spec: QuerySpec,
    pub(super) statistic: Statistic,
}

impl TryFrom<&QueryTask> for Query {
    type Error = InvalidTask;

    fn try_from(task: &QueryTask) -> Result<Self, InvalidTask> {
        let spec = task
            .spec
            .as_ref()
            .ok_or(InvalidTask::NoSpec("query task"))?;
        if !(spec.epsilon.is_finite() && spec.epsilon > 0.0) {
            return Err(InvalidTask::QueryEpsilon(spec.epsilon));
        }
        let statistic = Statistic::decode(spec);
        let clamped = statistic.as_ref().is_ok_and(|s| s.clamped());
        if clamped
            && !(spec.lower < spec.upper
                && spec.lower.abs() <= MAX_BOUND
                && spec.upper.abs() <= MAX_BOUND)
        {
            return Err(InvalidTask::QueryBounds {
                lower: spec.lower,
                upper: spec.upper,
            });
        }
        // The answer's width, counted before anything of that size is allocated.
        let by = match spec.by_column.is_empty() {
            true => 1,
            false => spec.by_categories.len().saturating_add(1),
        };
        let cells = spec.categories.len().saturating_add(1).saturating_mul(by);
        if cells > MAX_WIDTH || bins(spec) > MAX_BINS {
            return Err(InvalidTask::QueryTooWide);
        }
        Ok(Query {
            spec: spec.clone(),
            statistic: statistic?,
        })
    }
}

/// A task's schema, checked from the task alone: every problem `schema::problems` finds, and
/// bounds of at most [`MAX_BOUND`] in magnitude. A bad schema (NaN bounds, say) must never reach
/// the data: there it could make what the node computes, or whether it fails, depend on a record.
fn check_schema(schema: &FeatureSchema) -> Result<(), InvalidTask> {
    let mut problems = schema::problems(schema);
    for c in schema::numeric_columns(schema) {
        if [c.lower, c.upper]
            .iter()
            .flatten()
            .any(|b| b.abs() > MAX_BOUND)
        {
            problems.push(format!("column `{}`: bounds beyond ±{MAX_BOUND:e}", c.name));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(InvalidTask::Schema(problems)),
    }
}

/// The task's schema and model, checked from the task alone: a valid schema whose label fits
/// the model, a multinomial model of 2 to [`MAX_CLASSES`] classes, an MLP of 1 to
/// [`schema::MAX_HIDDEN_UNITS`] hidden units.
fn check_model(spec: &TrainingSpec) -> Result<(FeatureSchema, Architecture), InvalidTask> {
    let schema = spec
        .schema
        .as_ref()
        .ok_or(InvalidTask::NoSchema("training task"))?;
    check_schema(schema)?;
    let model = schema::model_kind(spec)?;
    let label = schema::decode_label_kind(schema)?;
    if schema::label_kind_for(model) != Some(label) {
        return Err(InvalidTask::LabelModel {
            label: label.as_str_name(),
            model: model.as_str_name(),
        });
    }
    let classes = schema::classes(schema)?.len();
    if model == ModelKind::MultinomialLogisticRegression && !(2..=MAX_CLASSES).contains(&classes) {
        return Err(InvalidTask::Classes(classes));
    }
    let hidden = spec.hidden_units;
    if model == ModelKind::Mlp && !(1..=schema::MAX_HIDDEN_UNITS).contains(&hidden) {
        return Err(InvalidTask::HiddenUnits(hidden));
    }
    let architecture =
        Architecture::of(model, classes, hidden as usize).ok_or(InvalidTask::NoModel)?;
    Ok((schema.clone(), architecture))
}

/// The task's standardization, checked from the task alone: one finite mean and positive
/// finite standard deviation per numeric column (or none at all).
fn check_standardization(schema: &FeatureSchema, stats: &[ColumnStats]) -> Result<(), InvalidTask> {
    let numeric = schema::numeric_columns(schema).len();
    if !stats.is_empty() && stats.len() != numeric {
        return Err(InvalidTask::StandardizationWidth {
            given: stats.len(),
            numeric,
        });
    }
    match stats
        .iter()
        .find(|s| !(s.mean.is_finite() && s.std.is_finite() && s.std > 0.0))
    {
        Some(s) => Err(InvalidTask::Standardization {
            name: s.name.clone(),
            mean: s.mean,
            std: s.std,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_proto::v1::QueryKind;

    #[test]
    fn query_bounds_a_record_cannot_overflow_are_required() {
        let task = |lower: f64, upper: f64| QueryTask {
            spec: Some(QuerySpec {
                kind: QueryKind::Sum as i32,
                column: "x".into(),
                lower,
                upper,
                epsilon: 1.0,
                ..Default::default()
            }),
        };
        assert!(Query::try_from(&task(0.0, 10.0)).is_ok());
        for (lo, hi) in [
            (10.0, 0.0),
            (f64::NAN, 1.0),
            (0.0, f64::INFINITY),
            (-1e300, 1e300),
        ] {
            let refusal = Refusal::from(Query::try_from(&task(lo, hi)).unwrap_err());
            assert_eq!(refusal.code, RefusalCode::InvalidTask, "{lo} {hi}");
        }
    }

    #[test]
    fn an_unknown_or_unspecified_enum_is_an_invalid_task_naming_the_field_and_value() {
        let query = |kind: i32| QueryTask {
            spec: Some(QuerySpec {
                kind,
                epsilon: 1.0,
                ..Default::default()
            }),
        };
        let unknown = Query::try_from(&query(77)).unwrap_err();
        assert!(
            unknown.to_string().starts_with("the query's kind is 77"),
            "{unknown}"
        );
        let unspecified = Query::try_from(&query(0)).unwrap_err();
        assert_eq!(unspecified.to_string(), "the query's kind is not given");
        assert_eq!(
            Refusal::from(unknown).code,
            RefusalCode::InvalidTask,
            "an unknown enum is an invalid task"
        );
    }

    /// Every schema the up-front check (`schema::check`, which `treaty schema check`,
    /// `treaty job train` and the coordinator's `CreateJob` run) accepts, a node accepts too:
    /// every schema a node refuses, the check reports (and, in these cases, none other). Each
    /// case breaks a sound schema in one way, for each model.
    #[test]
    fn a_schema_the_up_front_check_accepts_is_never_refused_for_its_schema() {
        use treaty_proto::v1::{ColumnKind, ColumnSpec, DpMode, LabelKind, LabelSpec, MissingRule};
        let numeric = |name: &str, lower: Option<f64>, upper: Option<f64>| ColumnSpec {
            name: name.into(),
            kind: ColumnKind::Numeric as i32,
            lower,
            upper,
            missing: MissingRule::Reject as i32,
            ..Default::default()
        };
        let categorical = |name: &str, values: &[&str]| ColumnSpec {
            name: name.into(),
            kind: ColumnKind::Categorical as i32,
            values: values.iter().map(|v| v.to_string()).collect(),
            missing: MissingRule::Other as i32,
            ..Default::default()
        };
        let label = |kind: LabelKind, classes: usize| LabelSpec {
            name: "y".into(),
            kind: kind as i32,
            classes: (0..classes).map(|i| format!("c{i}")).collect(),
        };
        let base = |label: LabelSpec| FeatureSchema {
            columns: vec![
                numeric("a", Some(0.0), Some(10.0)),
                categorical("b", &["x", "z"]),
            ],
            label: Some(label),
        };
        let mut cases: Vec<FeatureSchema> = Vec::new();
        for l in [
            label(LabelKind::Binary, 0),
            label(LabelKind::Binary, 2),
            label(LabelKind::Binary, 3),
            label(LabelKind::Categorical, 1),
            label(LabelKind::Categorical, 3),
            label(LabelKind::Categorical, 512),
            label(LabelKind::Categorical, 513),
            label(LabelKind::Numeric, 0),
            label(LabelKind::Numeric, 2),
            LabelSpec {
                kind: 0,
                ..label(LabelKind::Binary, 0)
            },
            LabelSpec {
                kind: 77,
                ..label(LabelKind::Binary, 0)
            },
        ] {
            cases.push(base(l));
        }
        let good = base(label(LabelKind::Binary, 0));
        let with = |f: &dyn Fn(&mut FeatureSchema)| {
            let mut s = good.clone();
            f(&mut s);
            s
        };
        for (lower, upper) in [
            (None, None),
            (Some(0.0), None),
            (Some(f64::NAN), Some(1.0)),
            (Some(0.0), Some(f64::INFINITY)),
            (Some(5.0), Some(1.0)),
            (Some(-1e16), Some(1.0)),
            (Some(-1e15), Some(1e15)),
        ] {
            cases.push(with(&|s| {
                s.columns[0].lower = lower;
                s.columns[0].upper = upper;
            }));
        }
        cases.push(with(&|s| s.columns[0].kind = 0));
        cases.push(with(&|s| s.columns[0].kind = 42));
        cases.push(with(&|s| s.columns[0].missing = 0));
        cases.push(with(&|s| s.columns[0].missing = MissingRule::Other as i32));
        cases.push(with(&|s| s.columns[0].transform = 9));
        cases.push(with(&|s| s.columns[1].values.clear()));
        cases.push(with(&|s| s.columns[1].values.push("x".into())));
        cases.push(with(&|s| s.columns[1].name = "a".into()));
        cases.push(with(&|s| s.columns[1].name = "y".into()));
        cases.push(with(&|s| s.columns[1].name.clear()));
        cases.push(with(&|s| s.columns.clear()));
        cases.push(with(&|s| s.label = None));
        cases.push(with(&|s| {
            s.columns[1].values = (0..10_000).map(|i| i.to_string()).collect()
        }));
        let privacy = PrivacySpec {
            mode: DpMode::Poisson as i32,
            clip_norm: 1.0,
            ..Default::default()
        };
        let (mut refused, mut accepted) = (0, 0);
        for schema in &cases {
            for model in [
                ModelKind::LogisticRegression,
                ModelKind::MultinomialLogisticRegression,
                ModelKind::LinearRegression,
                ModelKind::Mlp,
            ] {
                let spec = TrainingSpec {
                    model: model as i32,
                    schema: Some(schema.clone()),
                    hidden_units: 16,
                    privacy: Some(privacy),
                    ..Default::default()
                };
                let training = Training::try_from(&TrainingTask {
                    spec: Some(spec),
                    ..Default::default()
                });
                let statistics = Statistics::try_from(&StatsTask {
                    schema: Some(schema.clone()),
                    privacy: Some(privacy),
                });
                let node = training.as_ref().err().or(statistics.as_ref().err());
                let found = schema::check(schema, &schema::Usage::training(Some(model)));
                match node {
                    None => {
                        accepted += 1;
                        assert!(found.is_empty(), "{model:?} {schema:?}: {found:#?}");
                    }
                    Some(refusal) => {
                        refused += 1;
                        assert!(
                            !found.is_empty(),
                            "the node refuses ({refusal}) what the check accepts: {model:?} {schema:?}"
                        );
                    }
                }
            }
        }
        // Neither side is vacuous.
        eprintln!("COUNTS {refused} {accepted}");
        assert!(
            refused > 60 && accepted >= 8,
            "{refused} refused, {accepted} accepted"
        );
    }
}
