//! `treaty.v1.OperatorService`: federations, jobs and their progress, for operators only.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use treaty_proto::Identity;
use treaty_proto::schema;
use treaty_proto::v1::operator_service_server::OperatorService;
use treaty_proto::v1::{
    CreateFederationRequest, CreateJobRequest, DownloadModelRequest, DpMode, FederationInfo,
    GetJobRequest, Job, JobEvent, JobEventKind, JobSpec, JobState, ListAgenciesRequest,
    ListAgenciesResponse, ListFederationsRequest, ListFederationsResponse, ListJobsRequest,
    ListJobsResponse, ModelKind, ModelPart, QueryKind, WatchJobRequest, job_spec,
};

use super::{BoxStream, model_stream, require_operator};
use crate::aggregate::Settings;
use crate::jobs;
use crate::limits::MAX_PAGE_BYTES;
use crate::paging::{page_size, take_page_of};
use crate::state::{Coordinator, now_ms};

/// The operator service.
#[derive(Debug, Clone)]
pub struct OperatorApi {
    ctx: Arc<Coordinator>,
}

impl OperatorApi {
    pub fn new(ctx: Arc<Coordinator>) -> Self {
        OperatorApi { ctx }
    }

    fn job(&self, id: &str) -> Result<Job, Status> {
        self.ctx
            .store
            .job(id)?
            .ok_or_else(|| Status::not_found(format!("job `{id}` does not exist")))
    }
}

/// A federation name: 1 to 64 lowercase letters, digits and `-`, starting with a letter.
fn check_federation_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid federation name (1 to 64 lowercase letters, digits and `-`, starting with a letter)"
        ))
    }
}

/// Every problem with a federation request.
fn federation_problems(f: &FederationInfo) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(p) = check_federation_name(&f.name) {
        problems.push(p);
    }
    if f.purpose.trim().is_empty() {
        problems
            .push("`purpose` is empty; name the purpose its jobs serve, e.g. `narcotics`".into());
    }
    if f.members.is_empty() {
        problems.push(
            "`members` is empty; list the member agencies as `AGENCY-ID:CC`, e.g. `DE-BKA:DE`"
                .into(),
        );
    }
    // Within a federation an agency id names one agency: its rounds, events and task ids show
    // the id alone.
    let mut seen = std::collections::HashMap::new();
    for m in &f.members {
        match Identity::from_member(m) {
            Err(e) => problems.push(format!("member: {e}")),
            Ok(Identity::Agency { agency, country }) => {
                if let Some(other) = seen.insert(agency.clone(), country.clone()) {
                    problems.push(if other == country {
                        format!("member `{m}` is listed twice")
                    } else {
                        format!(
                            "members `{agency}:{other}` and `{m}` share the agency id `{agency}`; a federation's members need distinct ids"
                        )
                    });
                }
            }
            Ok(_) => {}
        }
    }
    problems
}

/// Every problem with a job spec, with defaults filled in.
fn job_problems(spec: &mut JobSpec, members: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.min_participants == 0 {
        spec.min_participants = 1;
    }
    if spec.min_participants as usize > members {
        problems.push(format!(
            "`min_participants` is {} but the federation has only {members} member(s)",
            spec.min_participants
        ));
    }
    match &spec.kind {
        Some(job_spec::Kind::Training(t)) => {
            let model = ModelKind::try_from(t.model).unwrap_or(ModelKind::Unspecified);
            match &t.schema {
                None => problems.push(
                    "`training.schema` is missing; give the federation's feature schema".into(),
                ),
                Some(schema) => {
                    problems.extend(
                        schema::problems(schema)
                            .into_iter()
                            .map(|p| format!("schema: {p}")),
                    );
                    let label = schema::label_kind(schema);
                    match schema::label_kind_for(model) {
                        None => problems.push("`training.model` names no model".into()),
                        Some(needed) if needed != label => problems.push(format!(
                            "{} needs a {} label, but the schema's label is {}",
                            model.as_str_name(),
                            needed.as_str_name(),
                            label.as_str_name()
                        )),
                        Some(_) => {}
                    }
                    let numeric = schema::numeric_columns(schema).len();
                    if !t.standardization.is_empty() && t.standardization.len() != numeric {
                        problems.push(format!(
                            "`training.standardization` has {} entries for {numeric} numeric column(s); leave it empty and the federation computes it",
                            t.standardization.len()
                        ));
                    }
                }
            }
            if model == ModelKind::Mlp && !(1..=4096).contains(&t.hidden_units) {
                problems.push(format!(
                    "`training.hidden_units` is {}; an MLP needs 1 to 4096",
                    t.hidden_units
                ));
            }
            if !(1..=10_000).contains(&t.rounds) {
                problems.push(format!(
                    "`training.rounds` is {}; it must be 1 to 10000",
                    t.rounds
                ));
            }
            if t.local_epochs == 0 {
                problems.push("`training.local_epochs` must be at least 1".into());
            }
            if t.batch_size == 0 {
                problems.push("`training.batch_size` must be at least 1".into());
            }
            if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
                problems.push(format!(
                    "`training.learning_rate` is {}; it must be a positive number",
                    t.learning_rate
                ));
            }
            if !(0.0..1.0).contains(&t.momentum) {
                problems.push(format!(
                    "`training.momentum` is {}; it must be in [0, 1)",
                    t.momentum
                ));
            }
            if !(t.l2.is_finite() && t.l2 >= 0.0) {
                problems.push(format!(
                    "`training.l2` is {}; it must be zero or positive",
                    t.l2
                ));
            }
            let proximal = t.strategy.as_ref().map(|s| s.proximal_mu).unwrap_or(0.0);
            if !(proximal.is_finite() && proximal >= 0.0) {
                problems.push(format!(
                    "`strategy.proximal_mu` is {proximal}; it must be zero or positive"
                ));
            }
            problems.extend(Settings::from(t.strategy.as_ref()).problems());
            match &t.privacy {
                None => problems.push(
                    "`training.privacy` is missing: every training job trains with record-level differential privacy; give a mode, a clipping norm and a noise multiplier or a target epsilon".into(),
                ),
                Some(p) => {
                    if !(p.clip_norm.is_finite() && p.clip_norm > 0.0) {
                        problems.push(format!("`privacy.clip_norm` is {}; it must be positive", p.clip_norm));
                    }
                    if DpMode::try_from(p.mode).unwrap_or(DpMode::Unspecified) == DpMode::Unspecified {
                        problems.push("`privacy.mode` must be DP_MODE_FULL_BATCH or DP_MODE_POISSON".into());
                    }
                    if !(0.0..=1.0).contains(&p.sampling_rate) {
                        problems.push(format!("`privacy.sampling_rate` is {}; it must be in (0, 1], or 0 for batch size / records", p.sampling_rate));
                    }
                    let calibrated = p.target_epsilon > 0.0 && p.target_delta > 0.0 && p.target_delta < 1.0;
                    if !(p.noise_multiplier > 0.0 || calibrated) {
                        problems.push("give `privacy.noise_multiplier`, or `privacy.target_epsilon` and `privacy.target_delta`".into());
                    }
                }
            }
        }
        Some(job_spec::Kind::Query(q)) => {
            let kind = QueryKind::try_from(q.kind).unwrap_or(QueryKind::Unspecified);
            if kind == QueryKind::Unspecified {
                problems
                    .push("`query.kind` must be COUNT, SUM, MEAN, HISTOGRAM or QUANTILE".into());
            }
            if !(q.epsilon.is_finite() && q.epsilon > 0.0) {
                problems.push(format!("`query.epsilon` is {}; every query spends a positive epsilon of each agency's budget", q.epsilon));
            }
            if !(q.confidence == 0.0 || (q.confidence > 0.0 && q.confidence < 1.0)) {
                problems.push(format!(
                    "`query.confidence` is {}; it must be in (0, 1)",
                    q.confidence
                ));
            }
            if kind != QueryKind::Count && q.column.is_empty() {
                problems.push("`query.column` is empty; name the column".into());
            }
            if q.where_column.is_empty() != q.where_value.is_empty() {
                problems.push(
                    "give both `query.where_column` and `query.where_value`, or neither".into(),
                );
            }
            if matches!(kind, QueryKind::Sum | QueryKind::Mean | QueryKind::Quantile)
                && !(q.lower.is_finite() && q.upper.is_finite() && q.lower < q.upper)
            {
                problems.push(format!(
                    "`query.lower` ({}) and `query.upper` ({}) must be finite with lower < upper",
                    q.lower, q.upper
                ));
            }
            if kind == QueryKind::Histogram {
                if q.categories.is_empty() {
                    problems.push("`query.categories` is empty; list the values to count".into());
                }
                if q.by_column.is_empty() != q.by_categories.is_empty() {
                    problems.push(
                        "give both `query.by_column` and `query.by_categories`, or neither".into(),
                    );
                }
                if (q.categories.len() + 1) * (q.by_categories.len() + 1)
                    > treaty_proto::query::MAX_WIDTH
                {
                    problems.push(format!(
                        "the histogram has more than {} cells",
                        treaty_proto::query::MAX_WIDTH
                    ));
                }
            }
            match treaty_proto::v1::Combine::try_from(q.combine) {
                Err(_) => problems.push(format!(
                    "`query.combine` is {}; it must be SUM, MEDIAN or TRIMMED",
                    q.combine
                )),
                Ok(treaty_proto::v1::Combine::Median | treaty_proto::v1::Combine::Trimmed) => {
                    let width = treaty_proto::query::layout(q)
                        .map(|l| l.0.len())
                        .unwrap_or(0);
                    if width > crate::analytics::MAX_ROBUST_WIDTH {
                        problems.push(format!(
                            "the query has {width} values; a robust combination takes at most {}",
                            crate::analytics::MAX_ROBUST_WIDTH
                        ));
                    }
                }
                Ok(_) => {}
            }
            if kind == QueryKind::Quantile {
                if q.quantiles.is_empty() || q.quantiles.iter().any(|p| !(*p > 0.0 && *p < 1.0)) {
                    problems.push("`query.quantiles` must list values in (0, 1)".into());
                }
                if q.bins as usize > treaty_proto::query::MAX_BINS {
                    problems.push(format!(
                        "`query.bins` is {}; at most {}",
                        q.bins,
                        treaty_proto::query::MAX_BINS
                    ));
                }
            }
        }
        None => problems.push("the job has no kind; give `training` or `query`".into()),
    }
    // The sharing terms rest on the rest of the spec: judged once that is sound.
    if problems.is_empty()
        && let Err(e) = crate::policy::sharing(spec)
    {
        problems.push(e);
    }
    problems
}

fn invalid(problems: Vec<String>) -> Status {
    Status::invalid_argument(problems.join("; "))
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    type WatchJobStream = BoxStream<JobEvent>;
    type DownloadModelStream = BoxStream<ModelPart>;

    async fn create_federation(
        &self,
        request: Request<CreateFederationRequest>,
    ) -> Result<Response<FederationInfo>, Status> {
        let operator = require_operator(&self.ctx, &request)?;
        let mut info = request
            .into_inner()
            .federation
            .ok_or_else(|| Status::invalid_argument("`federation` is missing"))?;
        let problems = federation_problems(&info);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        info.created_unix_ms = now_ms();
        info.created_by = operator.to_string();
        self.ctx.store.create_federation(&info)?;
        let record = Job {
            federation: info.name.clone(),
            ..Default::default()
        };
        self.ctx.audit(
            &info.created_by,
            "federation.created",
            &record,
            0,
            "",
            format!(
                "purpose `{}`, members {}",
                info.purpose,
                info.members.join(", ")
            ),
        )?;
        tracing::info!(federation = info.name, operator = %operator, "federation created");
        Ok(Response::new(info))
    }

    async fn list_federations(
        &self,
        request: Request<ListFederationsRequest>,
    ) -> Result<Response<ListFederationsResponse>, Status> {
        require_operator(&self.ctx, &request)?;
        let req = request.into_inner();
        let (federations, more) = take_page_of(
            self.ctx.store.federations_after(&req.page_token),
            page_size(req.page_size),
            MAX_PAGE_BYTES,
        );
        let federations = federations.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(ListFederationsResponse {
            next_page_token: next_token(more, federations.last().map(|f| f.name.clone())),
            federations,
        }))
    }

    async fn list_agencies(
        &self,
        request: Request<ListAgenciesRequest>,
    ) -> Result<Response<ListAgenciesResponse>, Status> {
        require_operator(&self.ctx, &request)?;
        let req = request.into_inner();
        let (agencies, more) =
            self.ctx
                .sessions
                .page(&req.page_token, page_size(req.page_size), MAX_PAGE_BYTES);
        Ok(Response::new(ListAgenciesResponse {
            next_page_token: next_token(
                more,
                agencies
                    .last()
                    .map(|a| format!("{}:{}", a.agency, a.country)),
            ),
            agencies,
        }))
    }

    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let operator = require_operator(&self.ctx, &request)?;
        let req = request.into_inner();
        let federation = self.ctx.store.federation(&req.federation)?.ok_or_else(|| {
            Status::not_found(format!(
                "federation `{}` does not exist; create it first",
                req.federation
            ))
        })?;
        let mut spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("`spec` is missing"))?;
        let problems = job_problems(&mut spec, federation.members.len());
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        if let Some(job_spec::Kind::Training(t)) = spec.kind.as_mut()
            && t.seed == 0
        {
            t.seed = rand::random::<u64>().max(1);
        }
        let job = Job {
            job_id: self.ctx.store.next_job_id()?,
            federation: federation.name.clone(),
            spec: Some(spec),
            state: JobState::Pending as i32,
            created_by: operator.to_string(),
            created_unix_ms: now_ms(),
            ..Default::default()
        };
        self.ctx.store.put_job(&job)?;
        self.ctx
            .audit(&job.created_by, "job.created", &job, 0, "", String::new())?;
        jobs::spawn(self.ctx.clone(), job.job_id.clone());
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        require_operator(&self.ctx, &request)?;
        Ok(Response::new(self.job(&request.into_inner().job_id)?))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        require_operator(&self.ctx, &request)?;
        let req = request.into_inner();
        let (jobs, more) = take_page_of(
            self.ctx.store.jobs_before(&req.page_token),
            page_size(req.page_size),
            MAX_PAGE_BYTES,
        );
        let jobs = jobs.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(ListJobsResponse {
            next_page_token: next_token(more, jobs.last().map(|j| j.job_id.clone())),
            jobs,
        }))
    }

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        require_operator(&self.ctx, &request)?;
        let id = request.into_inner().job_id;
        // Subscribe before reading the current state, so that no event falls in between.
        let mut events = self.ctx.events.subscribe();
        let job = self.job(&id)?;
        let shutdown = self.ctx.shutdown.clone();
        let stream = async_stream(move |tx| async move {
            let done = is_final(&job);
            let first = JobEvent {
                time_unix_ms: now_ms(),
                message: format!("job {} is {}", job.job_id, state_name(job.state)),
                round: 0,
                agency: String::new(),
                job: Some(job),
                kind: JobEventKind::CurrentState as i32,
            };
            if tx.send(Ok(first)).await.is_err() || done {
                return;
            }
            loop {
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = shutdown.cancelled() => return,
                };
                match event {
                    Ok(event) => {
                        let Some(job) = event.job.as_ref() else {
                            continue;
                        };
                        if job.job_id != id {
                            continue;
                        }
                        let done = is_final(job);
                        if tx.send(Ok(event)).await.is_err() || done {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(
                            job = id,
                            skipped = n,
                            "a watcher fell behind; events skipped"
                        );
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn download_model(
        &self,
        request: Request<DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        require_operator(&self.ctx, &request)?;
        let req = request.into_inner();
        Ok(Response::new(model_stream(
            &self.ctx,
            &req.job_id,
            &req.model_version,
        )?))
    }
}

/// The token of the page after one that ended with `last`, or empty when no page follows.
fn next_token(more: bool, last: Option<String>) -> String {
    if more {
        last.unwrap_or_default()
    } else {
        String::new()
    }
}

fn is_final(job: &Job) -> bool {
    job.state == JobState::Succeeded as i32 || job.state == JobState::Failed as i32
}

/// A job state's name for people: `pending`, `running`, `succeeded`, `failed`.
pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::Pending) => "pending",
        Ok(JobState::Running) => "running",
        Ok(JobState::Succeeded) => "succeeded",
        Ok(JobState::Failed) => "failed",
        _ => "unknown",
    }
}

/// A response stream fed by a task.
fn async_stream<T, F, Fut>(body: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_proto::v1::TrainingSpec;

    #[test]
    fn every_problem_of_a_job_is_reported() {
        let mut spec = JobSpec {
            kind: Some(job_spec::Kind::Training(TrainingSpec {
                model: ModelKind::LinearRegression as i32,
                schema: schema::parse("[label]\nname = \"y\"\nkind = \"binary\"\n[[column]]\nname = \"a\"\nkind = \"numeric\"\n").unwrap().ok(),
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
        let problems = job_problems(&mut spec, 3);
        // Eight, and the missing privacy spec.
        assert_eq!(problems.len(), 9, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`training.privacy` is missing")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("needs a LABEL_KIND_NUMERIC label")),
            "{problems:#?}"
        );
        assert!(problems.iter().any(|p| p.contains("learning_rate")));
    }

    #[test]
    fn federation_names_and_members_are_checked() {
        let f = FederationInfo {
            name: "EU Narcotics".into(),
            purpose: String::new(),
            members: vec!["DE-BKA:DE".into(), "DE-BKA:DE".into(), "bad id:DE".into()],
            ..Default::default()
        };
        let problems = federation_problems(&f);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        let members = |m: &[&str]| FederationInfo {
            name: "eu".into(),
            purpose: "narcotics".into(),
            members: m.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(federation_problems(&members(&["DE-BKA:DE", "NL-POLITIE:NL"])).is_empty());
        // A member without its country, or in the certificate's order, says what to write.
        let p = federation_problems(&members(&["DE-BKA", "NL/NL-POLITIE"]));
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].contains("`DE-BKA:<CC>`"), "{p:#?}");
        assert!(p[1].contains("here `NL-POLITIE:NL`"), "{p:#?}");
        // One id in two countries is two agencies, which one federation cannot tell apart.
        let p = federation_problems(&members(&["DE-BKA:DE", "DE-BKA:NL"]));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("share the agency id `DE-BKA`"), "{p:#?}");
    }
}
