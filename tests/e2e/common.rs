//! What the end-to-end tests share: a PKI and data in a temporary directory, configuration
//! files, real `treaty` processes that are killed when dropped, and the operator's client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use treaty_coordinator::CoordinatorConfig;
use treaty_devkit::local::{Process, Site, SiteOptions, write_toml};
use treaty_node::NodeConfig;
use treaty_proto::Identity;
use treaty_proto::pki::PkiDir;
use treaty_proto::tls::TlsFiles;
use treaty_proto::v1::operator_service_client::OperatorServiceClient;
use treaty_proto::v1::{
    CreateFederationRequest, CreateJobRequest, DpMode, FeatureSchema, FederationInfo,
    GetJobRequest, Job, JobSpec, JobState, ListAgenciesRequest, ModelKind, PrivacySpec,
    SharingSpec, TrainingSpec, WatchJobRequest, job_spec,
};

pub const TREATY: &str = env!("CARGO_BIN_EXE_treaty");

/// The tests' registry, with the test data's fields; `CA`..`CH` stand in for the countries of
/// tests with many agencies.
pub const TEST_REGISTRY: &str = r#"registry_version = "test-1"
countries = ["AT", "BE", "DE", "ES", "FR", "IT", "NL", "PL", "GB", "US", "CH",
  "CA", "CB", "CC", "CD", "CE", "CF", "CG"]

[purposes]
narcotics = "Illicit trafficking in narcotic drugs and psychotropic substances"
firearms = "Illicit trafficking in weapons, munitions and explosives"

[fields]
x1 = "ordinary"
x2 = "ordinary"
amount = "ordinary"
band = "ordinary"
mode = "ordinary"
seized = "ordinary"
declared_value_eur = "ordinary"
gross_weight_kg = "ordinary"
hs_chapter = "ordinary"
origin = "ordinary"
transport_mode = "ordinary"
route = "ordinary"
shipper_history_years = "ordinary"
prior_seizures = "ordinary"
new_declarant = "ordinary"
document_mismatch = "ordinary"
containerised = "ordinary"
informant_flag = "operationally_sensitive"

[groups.EU]
members = ["AT", "BE", "DE", "ES", "FR", "IT", "NL", "PL", "CA", "CB", "CC", "CD", "CE", "CF", "CG", "CH"]
"#;

/// A policy that lets its country share for narcotics with every EU country, with limits the
/// tests' privacy settings meet; tests that are about policies write their own.
pub fn open_policy(country: &str) -> String {
    format!(
        "schema_version = 1\n\n[policy]\ncountry = \"{country}\"\nversion = \"open-1\"\nvalid_from = 2025-01-01\nvalid_until = 2099-12-31\nlegal_basis = [\"Test Act\"]\n\n[coordinator]\nallowed_jurisdictions = [\"EU\"]\n\n[privacy]\nmax_epsilon_per_round = 1e31\nmax_epsilon_total = 1e33\nmax_delta = 1e-3\n\n[[rule]]\nid = \"{country}-EU\"\neffect = \"allow\"\npurposes = [\"narcotics\"]\nrecipients = [\"EU\"]\nlegal_basis = \"Test Act s. 2\"\n"
    )
}

/// [`open_policy`] with `[handling] require_secure_aggregation = true`.
pub fn requiring_secure_aggregation(country: &str) -> String {
    open_policy(country).replace(
        "[[rule]]",
        "[handling]\nrequire_secure_aggregation = true\n\n[[rule]]",
    )
}

/// Three agencies of three countries, for the tests where France's policy leaves its agency
/// out ([`trio_limited_in_france`]).
pub const TRIO: [(&str, &str); 3] = [("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")];

/// The [`TRIO`]'s fixture, France's policy letting one round spend at most epsilon 0.5: a
/// round spending more leaves its agency out, with the policy's reason.
pub fn trio_limited_in_france() -> Fixture {
    let fx = Fixture::new(&TRIO);
    fx.write_policy(
        "FR",
        &open_policy("FR").replace(
            "max_epsilon_per_round = 1e31",
            "max_epsilon_per_round = 0.5",
        ),
    );
    fx
}

/// Waits for the [`TRIO`]'s nodes and makes them federation `trio`; the operator's client.
pub async fn trio_federation(fx: &Fixture, address: &str) -> OperatorServiceClient<Channel> {
    let mut op = fx.operator(address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE", "FR-DOUANE"]).await;
    create_federation(
        &mut op,
        "trio",
        &["DE-BKA:DE", "NL-POLITIE:NL", "FR-DOUANE:FR"],
    )
    .await;
    op
}

/// Revokes the coordinator's certificate with `treaty pki revoke`; the federation's revocation
/// list that now names it.
pub fn revoke_the_coordinator(fx: &Fixture) -> PathBuf {
    let certificate = fx
        .pki
        .cert_and_key(&Identity::coordinator("hub").unwrap())
        .0;
    let out = Command::new(TREATY)
        .args(["pki", "revoke", "--dir"])
        .arg(fx.pki.dir())
        .arg(certificate)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.pki.crl()
}

/// What the tests' training jobs declare to the policies: their noise is given directly, so
/// they state a per-round epsilon above anything they spend (some learning tests run with a
/// vanishing noise multiplier, i.e. an epsilon near 10^20).
pub fn test_sharing() -> SharingSpec {
    SharingSpec {
        epsilon_per_round: 1e30,
        ..Default::default()
    }
}

/// A federation's files: PKI, data, configurations, logs, in a temporary directory, on the
/// devkit's [`Site`] (the same code `treaty demo` runs).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub pki: PkiDir,
    pub site: Site,
}

impl Fixture {
    /// The test data's schema written as TOML to `schema.toml` in the fixture, for the
    /// operator's command line.
    pub fn schema_file(&self) -> PathBuf {
        let schema = self.path("schema.toml");
        std::fs::write(
            &schema,
            treaty_proto::schema::to_toml(&schema_of_test_data()).unwrap(),
        )
        .unwrap();
        schema
    }

    pub fn new(agencies: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let site = Site::create(
            dir.path(),
            Path::new(TREATY),
            &SiteOptions {
                federation: "test".into(),
                coordinator: "hub".into(),
                operator: "op".into(),
                agencies: agencies
                    .iter()
                    .map(|(a, c)| (a.to_string(), c.to_string()))
                    .collect(),
            },
        )
        .unwrap();
        let fx = Fixture {
            pki: site.pki().clone(),
            dir,
            site,
        };
        fx.site
            .write_policy_file("registry.toml", TEST_REGISTRY)
            .unwrap();
        for (_, country) in agencies {
            fx.write_policy(country, &open_policy(country));
        }
        fx
    }

    /// Writes a country's policy where the coordinator reads it (`policies/<CC>.toml`).
    pub fn write_policy(&self, country: &str, text: &str) {
        self.site
            .write_policy_file(&format!("{country}.toml"), text)
            .unwrap();
    }

    /// The `[policy]` directory of an agency's node: its own copy of the registry and of its
    /// country's policy, as a national deployment keeps them.
    pub fn node_policies(&self, agency: &str) -> PathBuf {
        self.path(&format!("policies-{agency}"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.site.path(name)
    }

    pub fn files(&self, identity: &Identity) -> TlsFiles {
        self.site.files(identity)
    }

    /// Writes a coordinator configuration listening on `listen`; returns its path.
    pub fn coordinator_config(&self, listen: &str) -> PathBuf {
        self.site
            .write_config("coordinator.toml", &self.coordinator(listen))
            .unwrap()
    }

    /// The tests' coordinator, hosted in NL.
    fn coordinator(&self, listen: &str) -> CoordinatorConfig {
        self.site.coordinator_config(listen.parse().unwrap(), "NL")
    }

    /// Writes data and a node configuration for an agency; returns the configuration's path.
    pub fn node_config(&self, agency: &str, country: &str, address: &str, seed: u64) -> PathBuf {
        let (train, test) = write_data(self.dir.path(), agency, 400, seed);
        self.node_config_for(agency, country, address, &train, &test)
    }

    /// Writes a node configuration for an agency's data files; returns its path.
    pub fn node_config_for(
        &self,
        agency: &str,
        country: &str,
        address: &str,
        train: &Path,
        test: &Path,
    ) -> PathBuf {
        let mut config = self
            .site
            .node_config(agency, country, address, train, Some(test))
            .unwrap();
        // Tests restart coordinators: nodes come back quickly.
        config.coordinator.reconnect_initial_ms = 100;
        config.coordinator.reconnect_max_ms = 400;
        self.site
            .write_config(&format!("node-{agency}.toml"), &config)
            .unwrap()
    }

    /// Writes the operator's configuration file; returns its path.
    pub fn operator_config(&self, address: &str) -> PathBuf {
        self.site
            .write_config("operator.toml", &self.site.operator_config(address))
            .unwrap()
    }

    /// Starts the coordinator process and waits for its address.
    pub fn start_coordinator(&self, listen: &str) -> (Proc, String) {
        let (process, address) = self
            .site
            .start_coordinator(&self.coordinator(listen))
            .unwrap();
        (Proc(process), address)
    }

    pub fn start_node(&self, agency: &str, country: &str, address: &str, seed: u64) -> Proc {
        let config = self.node_config(agency, country, address, seed);
        self.start_node_with(agency, &config)
    }

    /// Starts a node with a configuration file.
    pub fn start_node_with(&self, agency: &str, config: &Path) -> Proc {
        Proc(self.site.start_node_from(agency, config).unwrap())
    }

    pub async fn operator(&self, address: &str) -> OperatorServiceClient<Channel> {
        self.site.operator_config(address).connect().await.unwrap()
    }
}

/// Declares, in a node's configuration, the record count its agency makes public: what a job
/// without a statistics round (its standardisation given) needs for the node's sampling rate
/// and update scale.
/// Writes the agency's trust assumption under distributed DP into its node configuration.
pub fn assume_dishonest(config: &Path, agencies: u32) {
    let mut node = NodeConfig::load(config).unwrap();
    node.secure_aggregation = Some(treaty_node::SecureAggregationConfig {
        assume_dishonest: agencies,
    });
    write_toml(config, &node).unwrap();
}

pub fn declare_public_records(config: &Path, records: u64) {
    let mut node = NodeConfig::load(config).unwrap();
    node.data.public_records = Some(records);
    write_toml(config, &node).unwrap();
}

/// Two numeric features and a 0/1 label from a logistic rule; deterministic per seed.
pub fn write_data(dir: &Path, name: &str, rows: usize, seed: u64) -> (PathBuf, PathBuf) {
    write_shifted_data(dir, name, rows, seed, 0.0)
}

/// As `write_data`, with x1 shifted by `shift` (so that agencies differ: non-IID).
pub fn write_shifted_data(
    dir: &Path,
    name: &str,
    rows: usize,
    seed: u64,
    shift: f64,
) -> (PathBuf, PathBuf) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let mut paths = Vec::new();
    for (split, n) in [("train", rows), ("test", rows / 4)] {
        let path = dir.join(format!("{name}_{split}.csv"));
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "x1,x2,mode,band,amount,seized").unwrap();
        for _ in 0..n {
            let (a, b) = (uniform() * 4.0 - 2.0 + shift, uniform() * 4.0 - 2.0);
            // P(seized) = sigmoid(4 (x1 - x2 / 2)): a logistic truth with label noise, so that
            // the best model has finite weights.
            let p = 1.0 / (1.0 + (-4.0 * (a - 0.5 * b)).exp());
            let y = u8::from(uniform() < p);
            // More columns, drawn from x1 and x2 so that the labels above stay as they were: a
            // categorical `mode`, a three-class `band` and a numeric `amount`.
            let mode = ["sea", "air", "road"][((a + b) * 7.0).rem_euclid(3.0) as usize % 3];
            let band = if a > 0.5 {
                "high"
            } else if b > 0.0 {
                "mid"
            } else {
                "low"
            };
            let amount = 3.0 * a - 2.0 * b
                + if mode == "air" { 1.5 } else { 0.0 }
                + 0.3 * (7.0 * a + 3.0 * b).sin();
            writeln!(f, "{a:.4},{b:.4},{mode},{band},{amount:.4},{y}").unwrap();
        }
        paths.push(path);
    }
    (paths[0].clone(), paths[1].clone())
}

/// A `treaty` process of a test, killed when dropped: the devkit's [`Process`], whose waits
/// fail the test.
pub struct Proc(pub Process);

impl std::ops::Deref for Proc {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.0
    }
}

impl Proc {
    /// Waits until the process's log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.0.wait_for_log(needle, timeout).unwrap();
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.0.signal(signal).unwrap();
    }
}

/// Waits until the given agencies hold sessions.
pub async fn wait_connected(client: &mut OperatorServiceClient<Channel>, agencies: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connected: Vec<String> = client
            .list_agencies(ListAgenciesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .agencies
            .into_iter()
            .map(|a| a.agency)
            .collect();
        if agencies.iter().all(|a| connected.iter().any(|c| c == a)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connected: {connected:?}, wanted {agencies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn create_federation(
    client: &mut OperatorServiceClient<Channel>,
    name: &str,
    members: &[&str],
) {
    client
        .create_federation(CreateFederationRequest {
            federation: Some(FederationInfo {
                name: name.into(),
                purpose: "narcotics".into(),
                members: members.iter().map(|m| m.to_string()).collect(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// The schema of `write_data`'s files.
pub fn schema_of_test_data() -> FeatureSchema {
    treaty_proto::schema::parse(
        "[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"x1\"\nkind = \"numeric\"\nlower = -3.5\nupper = 3.5\n[[column]]\nname = \"x2\"\nkind = \"numeric\"\nlower = -3.5\nupper = 3.5\n",
    )
    .unwrap()
    .unwrap()
}

/// A logistic-regression job on `write_data`'s files.
pub fn training_spec(rounds: u32) -> TrainingSpec {
    TrainingSpec {
        model: ModelKind::LogisticRegression as i32,
        schema: Some(schema_of_test_data()),
        rounds,
        local_epochs: 2,
        batch_size: 32,
        learning_rate: 0.2,
        privacy: Some(test_privacy()),
        ..Default::default()
    }
}

/// Record-level DP for the tests: Poisson DP-SGD with a moderate noise multiplier, and
/// statistics and evaluations noised lightly enough that the tests can read them (a real
/// deployment would spend far less on them).
pub fn test_privacy() -> PrivacySpec {
    PrivacySpec {
        mode: DpMode::Poisson as i32,
        clip_norm: 1.0,
        noise_multiplier: 0.5,
        statistics_rho: Some(1.0),
        evaluation_epsilon: Some(20.0),
        ..Default::default()
    }
}

/// Runs a training job to its end and returns it.
pub async fn run_training(
    client: &mut OperatorServiceClient<Channel>,
    federation: &str,
    rounds: u32,
    min: u32,
) -> Job {
    run_job(client, federation, training_spec(rounds), min).await
}

/// Runs a job of `spec` to its end and returns it; panics when it fails.
pub async fn run_job(
    client: &mut OperatorServiceClient<Channel>,
    federation: &str,
    spec: TrainingSpec,
    min: u32,
) -> Job {
    succeeded(try_job(client, federation, spec, min).await)
}

/// Creates a query job over `federation`, needing `min` agencies; returns it as created.
pub async fn start_query(
    client: &mut OperatorServiceClient<Channel>,
    federation: &str,
    spec: treaty_proto::v1::QuerySpec,
    min: u32,
) -> Job {
    client
        .create_job(CreateJobRequest {
            federation: federation.into(),
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Query(spec)),
                min_participants: min,
                round_timeout_ms: 20_000,
                join_timeout_ms: 20_000,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The job, once it is seen to have succeeded; panics with its message otherwise.
pub fn succeeded(job: Job) -> Job {
    assert_eq!(
        job.state,
        JobState::Succeeded as i32,
        "job failed: {}",
        job.message
    );
    job
}

/// Creates a training job of `spec` over `federation`, needing `min` agencies and waiting
/// `round_timeout_ms` for a round's results; returns it as created.
pub async fn start_training(
    client: &mut OperatorServiceClient<Channel>,
    federation: &str,
    spec: TrainingSpec,
    min: u32,
    round_timeout_ms: u32,
) -> Job {
    client
        .create_job(CreateJobRequest {
            federation: federation.into(),
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Training(spec)),
                min_participants: min,
                round_timeout_ms,
                join_timeout_ms: 20_000,
                sharing: Some(test_sharing()),
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The events of `job_id` as they come.
pub async fn events_of(
    client: &mut OperatorServiceClient<Channel>,
    job_id: &str,
) -> tonic::Streaming<treaty_proto::v1::JobEvent> {
    client
        .watch_job(WatchJobRequest {
            job_id: job_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs a job of `spec` to its end, whatever the end.
pub async fn try_job(
    client: &mut OperatorServiceClient<Channel>,
    federation: &str,
    spec: TrainingSpec,
    min: u32,
) -> Job {
    let job = start_training(client, federation, spec, min, 20_000).await;
    watch_to_end(client, &job.job_id).await
}

/// Follows a job until it ends; returns it as it ended.
pub async fn watch_to_end(client: &mut OperatorServiceClient<Channel>, job_id: &str) -> Job {
    let mut events = events_of(client, job_id).await;
    while let Some(event) = events.next().await {
        event.unwrap();
    }
    // The events carry the job without its rounds: read it whole once it has ended.
    client
        .get_job(GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs `treaty ARGS` and reads its standard output as JSON.
/// The entries of kind `kind` (`training`, `query`, ...) of the ledger of the node configured
/// by `config`, as `treaty node ledger --json` reads them.
pub fn ledger_entries(config: &Path, kind: &str) -> Vec<serde_json::Value> {
    let ledger = treaty_json(&[
        "node",
        "ledger",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// The standard output of a command that must have succeeded; when it did not, the test fails
/// with its output and its errors.
pub fn succeeded_stdout(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{:?}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

pub fn treaty_json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> serde_json::Value {
    let out = Command::new(TREATY).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The standardisation a model file states.
pub fn standardization_of(file: &serde_json::Value) -> Vec<treaty_proto::v1::ColumnStats> {
    file["standardization"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| treaty_proto::v1::ColumnStats {
            name: s["name"].as_str().unwrap().into(),
            mean: s["mean"].as_f64().unwrap(),
            std: s["std"].as_f64().unwrap(),
            count: s["count"].as_f64().unwrap(),
        })
        .collect()
}

/// A loopback address on a port free now: for a coordinator that must come back where its
/// nodes look for it after a restart.
pub fn free_loopback_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Downloads a job's latest model with `treaty model get` and reads its tensors.
pub fn model_get(
    fx: &Fixture,
    address: &str,
    job: &str,
) -> (serde_json::Value, Vec<treaty_proto::tensor::NamedTensor>) {
    let config = fx.operator_config(address);
    let out = fx.path(&format!("{job}.json"));
    let status = Command::new(TREATY)
        .args([
            "model",
            "get",
            "--config",
            config.to_str().unwrap(),
            "--job",
            job,
            "--out",
            out.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let tensors = file["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let values: Vec<f64> = t["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            treaty_proto::tensor::NamedTensor::new(
                t["name"].as_str().unwrap(),
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), values).unwrap(),
            )
        })
        .collect();
    (file, tensors)
}

/// Tries a raw TLS connection with `config` and speaks the first bytes of HTTP/2. `Ok` when the
/// server answered, `Err` with the reason when it refused the connection.
pub async fn probe(address: &str, config: rustls::ClientConfig) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // HTTP/2 connection preface and an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    tls.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("connection closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// A rustls client configuration trusting `ca` and presenting `cert`/`key` (or nothing).
pub fn client_config(ca: &Path, cert_and_key: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in treaty_proto::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    match cert_and_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                treaty_proto::tls::load_certs(cert).unwrap(),
                treaty_proto::tls::load_key(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
