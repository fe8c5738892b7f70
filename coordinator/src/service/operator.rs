//! `treaty.v1.OperatorService`: federations, jobs and their progress, for operators only.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use treaty_proto::Identity;
use treaty_proto::schema;
use treaty_proto::v1::operator_service_server::OperatorService;
use treaty_proto::v1::{
    AuditPart, CreateFederationRequest, CreateJobRequest, DownloadModelRequest, ExportAuditRequest,
    FederationInfo, GetJobRequest, GetProvenanceRequest, GetRegistryFieldsRequest, Job, JobEvent,
    JobEventKind, JobState, ListAgenciesRequest, ListAgenciesResponse, ListFederationsRequest,
    ListFederationsResponse, ListJobsRequest, ListJobsResponse, ModelPart, Provenance,
    RegistryFields, WatchJobRequest,
};

use super::{BoxStream, job_with_rounds, model_stream, require_operator};
use crate::aggregate::round_holdings;
use crate::error::CoordinatorError;
use crate::federation::ValidFederation;
use crate::jobs;
use crate::limits::MAX_PAGE_BYTES;
use crate::paging::{page_size, take_page_of};
use crate::state::{Coordinator, now_ms};
use crate::valid_job::{ValidJob, ValidTraining, Work};

/// The operator service.
#[derive(Debug, Clone)]
pub(crate) struct OperatorApi {
    ctx: Arc<Coordinator>,
}

impl OperatorApi {
    pub(crate) fn new(ctx: Arc<Coordinator>) -> Self {
        OperatorApi { ctx }
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    type WatchJobStream = BoxStream<JobEvent>;
    type DownloadModelStream = BoxStream<ModelPart>;
    type ExportAuditStream = BoxStream<AuditPart>;

    async fn create_federation(
        &self,
        request: Request<CreateFederationRequest>,
    ) -> Result<Response<FederationInfo>, Status> {
        let operator = require_operator(&self.ctx, &request)?;
        let info = request
            .into_inner()
            .federation
            .ok_or(CoordinatorError::Missing("federation"))?;
        let ValidFederation { mut info, members } =
            ValidFederation::try_from(info).map_err(CoordinatorError::from)?;
        info.created_unix_ms = now_ms();
        info.created_by = operator.to_string();
        let detail = format!(
            "purpose `{}`, members {}",
            info.purpose,
            members
                .iter()
                .filter_map(Identity::member)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let record = Job {
            federation: info.name.clone(),
            ..Default::default()
        };
        let stored = info.clone();
        self.ctx
            .blocking(move |ctx| ctx.store.create_federation(&stored))
            .await?;
        self.ctx
            .save_audit(
                &info.created_by,
                "federation.created",
                &record,
                0,
                "",
                detail,
            )
            .await?;
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

    async fn get_registry_fields(
        &self,
        request: Request<GetRegistryFieldsRequest>,
    ) -> Result<Response<RegistryFields>, Status> {
        require_operator(&self.ctx, &request)?;
        let (registry, _) = self
            .ctx
            .blocking(|ctx| {
                ctx.policy
                    .files()
                    .registry()
                    .map_err(|source| CoordinatorError::Registry { round: 0, source })
            })
            .await?;
        Ok(Response::new(RegistryFields {
            registry_version: registry.version.clone(),
            fields: registry
                .fields
                .iter()
                .map(|(name, category)| (name.clone(), category.clone()))
                .collect(),
        }))
    }

    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let operator = require_operator(&self.ctx, &request)?;
        let req = request.into_inner();
        // The registry every round is decided under, as it stands now: a field it does not
        // know would fail the first round, so the job is refused before it is created.
        let (registry, _) = self
            .ctx
            .blocking(|ctx| {
                ctx.policy
                    .files()
                    .registry()
                    .map_err(|source| CoordinatorError::Registry { round: 0, source })
            })
            .await?;
        // The store's read and writes, each flushed, run on a blocking thread.
        let job = self
            .ctx
            .blocking(move |ctx| {
                let federation = ctx.store.federation(&req.federation)?.ok_or_else(|| {
                    CoordinatorError::UnknownFederation {
                        name: req.federation.clone(),
                    }
                })?;
                let spec = req.spec.ok_or(CoordinatorError::Missing("spec"))?;
                let mut valid =
                    ValidJob::for_federation(spec, federation.members.len(), &registry)?;
                if let Work::Training(t) = &mut valid.work {
                    check_round_memory(
                        t,
                        federation.members.len(),
                        ctx.limits.max_round_memory_bytes,
                    )?;
                    t.pick_seed();
                }
                let job = Job {
                    job_id: ctx.store.next_job_id()?,
                    federation: federation.name.clone(),
                    spec: Some(valid.to_spec()),
                    state: JobState::Pending as i32,
                    created_by: operator.to_string(),
                    created_unix_ms: now_ms(),
                    ..Default::default()
                };
                ctx.store.put_job(&job)?;
                Ok(job)
            })
            .await?;
        self.ctx
            .save_audit(&job.created_by, "job.created", &job, 0, "", String::new())
            .await?;
        jobs::spawn(self.ctx.clone(), job.job_id.clone());
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        require_operator(&self.ctx, &request)?;
        Ok(Response::new(
            job_with_rounds(&self.ctx, &request.into_inner().job_id).await?,
        ))
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
        let job = job_with_rounds(&self.ctx, &id).await?;
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
                round_summary: None,
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
        let operator = require_operator(&self.ctx, &request)?;
        let req = request.into_inner();
        Ok(Response::new(
            model_stream(&self.ctx, &operator, &req.job_id, &req.model_version).await?,
        ))
    }

    async fn get_provenance(
        &self,
        request: Request<GetProvenanceRequest>,
    ) -> Result<Response<Provenance>, Status> {
        let operator = require_operator(&self.ctx, &request)?.to_string();
        let req = request.into_inner();
        let provenance = self
            .ctx
            .blocking(move |ctx| {
                crate::provenance::provenance(
                    &ctx.store,
                    &req.job_id,
                    &req.model_version,
                    &operator,
                )
            })
            .await?;
        Ok(Response::new(provenance))
    }

    async fn export_audit(
        &self,
        request: Request<ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        let operator = require_operator(&self.ctx, &request)?.to_string();
        let id = request.into_inner().job_id;
        let job = self
            .ctx
            .store
            .job(&id)?
            .ok_or(CoordinatorError::UnknownJob { job: id })?;
        let parts = self
            .ctx
            .blocking(move |ctx| crate::audit::export_parts(&ctx.store, &job, &operator))
            .await?;
        Ok(Response::new(super::stream_of(parts)))
    }
}

/// The token of the page after one that ended with `last`, or empty when no page follows.
/// Refuses, before it starts, a training job whose rounds would hold more than `limit` bytes
/// of updates for a federation of `members` (a robust strategy holds every update at once).
fn check_round_memory(
    training: &ValidTraining,
    members: usize,
    limit: u64,
) -> Result<(), CoordinatorError> {
    let parameters: u64 = schema::parameter_layout(&training.to_spec())
        .unwrap_or_default()
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum();
    let settings = &training.settings;
    let holdings = round_holdings(settings, members, parameters);
    if !settings.streams() && holdings > u128::from(limit) {
        return Err(CoordinatorError::RoundMemory {
            holdings,
            strategy: settings.aggregation.as_str_name(),
            members,
            parameters,
            limit,
        });
    }
    Ok(())
}

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
    use treaty_proto::v1::{Aggregation, ModelKind, Strategy, TrainingSpec};

    use super::*;

    fn training(aggregation: Aggregation) -> ValidTraining {
        ValidTraining::try_from(TrainingSpec {
            model: ModelKind::Mlp as i32,
            hidden_units: 1000,
            strategy: Some(Strategy {
                aggregation: aggregation as i32,
                ..Default::default()
            }),
            ..crate::valid_job::tests::training_spec()
        })
        .unwrap()
    }

    #[test]
    fn a_robust_job_over_the_round_memory_limit_is_refused_with_its_figures() {
        // One feature and 1,000 hidden units: 1,000 + 1,000 + 1,000 + 1 = 3,001 parameters;
        // a robust round of 10 members holds 10 x 3,001 x 8 = 240,080 bytes.
        for robust in [
            Aggregation::Median,
            Aggregation::TrimmedMean,
            Aggregation::NormBounded,
        ] {
            let t = training(robust);
            assert!(check_round_memory(&t, 10, 240_080).is_ok());
            let refused = check_round_memory(&t, 10, 240_079).unwrap_err();
            let status = Status::from(refused);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let message = status.message();
            for needle in [
                "240080 bytes",
                robust.as_str_name(),
                "10 members x 3001 parameters x 8 bytes",
                "`limits.max_round_memory_bytes` of 240079",
                "use FEDAVG or a server optimiser",
            ] {
                assert!(message.contains(needle), "`{needle}` in {message}");
            }
        }
        // FedAvg and the server optimisers fold updates in: no number of members is too many.
        for streaming in [
            Aggregation::Fedavg,
            Aggregation::Fedadam,
            Aggregation::Fedyogi,
            Aggregation::Fedadagrad,
        ] {
            assert!(check_round_memory(&training(streaming), 100_000, 1).is_ok());
        }
    }
}
