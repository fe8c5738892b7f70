//! The benchmark workloads of `treaty bench` (bench/README.md): each prints its figures for a
//! reader and, last, one JSON line for the record.
//!
//! - [`w1`]: a training job of 8 agencies x 100,000 rows, 20 rounds, end to end.
//! - [`w2`]: aggregation of 100 updates of 10^6 `f32` values arriving at a coordinator.
//! - [`w3`]: 1,000 agencies, each over its own mutual-TLS session, to one coordinator.
//! - [`w4`]: 100 rounds of a tiny model: the cost of orchestration itself.
//! - [`w5`]: Gaussian noise through opendp for updates of 10^3 to 10^6 parameters.
//! - [`tabular`]: training recipes compared on a real tabular data set split across agencies
//!   (UCI Adult by occupation), against centralised non-private logistic regression.
//! - [`policy`]: `treaty policy decide` for 30 and 64 countries.
//! - [`timing`]: the timing channel of a DP-SGD round (docs/THREAT_MODEL.md).
//!
//! [`run()`] runs every workload several times, each run's JSON line appended to a results file
//! with the machine and the date; [`report`] renders bench/README.md's figures from those files.

mod policy;
pub mod report;
mod run;
mod serving;
mod tables;
mod tabular;
mod timing;
mod w1;
mod w2;
mod w3;
mod w4;
mod w5;

pub use policy::policy;
pub use run::{RunError, RunOptions, WORKLOADS, Workload, run};
pub use serving::serving;
pub use tabular::{Recipe, Spread, TabularOptions, recipe, recipes, tabular};
pub use timing::timing;
pub use w1::{W1DataError, W1Options, w1};
pub use w2::{W2Error, W2Options, w2};
pub use w3::{W3Error, W3Options, w3};
pub use w4::{W4Options, w4};
pub use w5::w5;

/// Creates federation `name` of every member, runs one training job of `spec` on it with all of
/// them required, and scores its final model on the members' test splits: what W1 and the
/// tabular benchmark share. Returns the job as it ended, the time from its creation to its end,
/// and the scores.
async fn train_and_score(
    client: &mut treaty_coordinator::client::Client,
    name: &str,
    members: &[crate::local::Member],
    spec: treaty_proto::v1::TrainingSpec,
) -> anyhow::Result<(
    treaty_proto::v1::Job,
    std::time::Duration,
    crate::evaluate::Evaluation,
)> {
    let agencies: Vec<(&str, &str)> = members
        .iter()
        .map(|m| (m.agency.as_str(), m.country.as_str()))
        .collect();
    create_federation(client, name, &agencies).await?;
    let (job, wall) = run_job(client, name, members.len(), spec).await?;
    let tests: Vec<std::path::PathBuf> = members.iter().map(|m| m.test.clone()).collect();
    let scored = score(client, &job.job_id, &tests).await?;
    Ok((job, wall, scored))
}

/// Creates federation `name` (purpose narcotics) of `members`, each (agency id, country).
async fn create_federation(
    client: &mut treaty_coordinator::client::Client,
    name: &str,
    members: &[(&str, &str)],
) -> anyhow::Result<()> {
    use treaty_proto::v1::{CreateFederationRequest, FederationInfo};
    client
        .create_federation(CreateFederationRequest {
            federation: Some(FederationInfo {
                name: name.into(),
                purpose: "narcotics".into(),
                members: members
                    .iter()
                    .map(|(agency, country)| format!("{agency}:{country}"))
                    .collect(),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// Runs one training job of `spec` on federation `name` with all its `members` required; the
/// job as it ended and the time from its creation to its end.
async fn run_job(
    client: &mut treaty_coordinator::client::Client,
    name: &str,
    members: usize,
    spec: treaty_proto::v1::TrainingSpec,
) -> anyhow::Result<(treaty_proto::v1::Job, std::time::Duration)> {
    use treaty_proto::v1::{CreateJobRequest, JobSpec, SharingSpec, job_spec};
    let started = std::time::Instant::now();
    let job = client
        .create_job(CreateJobRequest {
            federation: name.into(),
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Training(spec)),
                min_participants: members as u32,
                round_timeout_ms: 600_000,
                join_timeout_ms: 60_000,
                sharing: Some(SharingSpec {
                    model_retention_days: Some(30),
                    ..Default::default()
                }),
            }),
        })
        .await?
        .into_inner();
    let job = treaty_coordinator::client::follow_to_success(client, &job.job_id, |_| {}).await?;
    Ok((job, started.elapsed()))
}

/// The latest model of job `job_id`, scored on `tests`.
async fn score(
    client: &mut treaty_coordinator::client::Client,
    job_id: &str,
    tests: &[std::path::PathBuf],
) -> anyhow::Result<crate::evaluate::Evaluation> {
    let (header, tensors) = treaty_coordinator::client::download(client, job_id, "").await?;
    crate::evaluate::binary(&treaty_node::ModelFile::new(&header, &tensors)?, tests)
}

/// Bytes in MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// The median of `values` ([`report::median`]), NaN for none.
fn median_or_nan(values: &[f64]) -> f64 {
    report::median(values).unwrap_or(f64::NAN)
}

/// The resident memory of process `pid` now and its high-water mark, in bytes (Linux).
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
