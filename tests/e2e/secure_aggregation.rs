//! Secure aggregation against a real coordinator process over real mutual TLS: eight agencies
//! speaking the protocol on the wire (scripted here, so that their updates are known), one
//! dropping out after sharing its keys and one after sending its masked update. The round's
//! model is the global model plus the mean of the survivors' updates, to the fixed point's
//! rounding, and nothing the coordinator stores or logs holds any agency's update on its own.
//! Then real nodes: eight `treaty node` processes train a job under secure aggregation, two of
//! them killed mid-round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use treaty_proto::Identity;
use treaty_proto::secagg::{Params, Participant};
use treaty_proto::tensor::{Assembler, NamedTensor};
use treaty_proto::tls::KeySigner;
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{
    ColumnStats, CoordinatorMessage, DownloadModelRequest, JobState, NodeMessage, ResultHeader,
    SecAggFromNode, SecureAggregationSpec, Task, TaskAccepted, TrainingSpec, coordinator_message,
    model_part, node_message, sec_agg_from_node, sec_agg_to_node,
};

use crate::common::*;
use crate::hostile_agency::{self, Session};

/// Eight agencies in four countries.
const AGENCIES: [(&str, &str); 8] = [
    ("DE-BKA", "DE"),
    ("DE-ZOLL", "DE"),
    ("FR-DGDDI", "FR"),
    ("FR-PJ", "FR"),
    ("NL-FIOD", "NL"),
    ("NL-POLITIE", "NL"),
    ("PL-CBSP", "PL"),
    ("PL-KAS", "PL"),
];

/// Waits for the eight agencies of [`AGENCIES`] to connect and creates the federation `eight`
/// of them.
async fn federation_of_eight(
    op: &mut treaty_proto::v1::operator_service_client::OperatorServiceClient<
        tonic::transport::Channel,
    >,
) {
    let ids: Vec<&str> = AGENCIES.iter().map(|(a, _)| *a).collect();
    wait_connected(op, &ids).await;
    let members: Vec<String> = AGENCIES.iter().map(|(a, c)| format!("{a}:{c}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    create_federation(op, "eight", &members).await;
}

/// When a scripted agency stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaves {
    Never,
    /// After its sealed shares are sent: before its masked update.
    AfterSharing,
    /// After its masked update is sent: before it signs the survivors.
    AfterMasking,
}

/// A one-round job under secure aggregation, standardised already (no statistics round) and
/// without evaluations (no evaluation round): the round's model is the whole story.
fn secure_spec(rounds: u32) -> TrainingSpec {
    let mut spec = training_spec(rounds);
    spec.standardization = ["x1", "x2"]
        .iter()
        .map(|name| ColumnStats {
            name: name.to_string(),
            mean: 0.0,
            std: 1.0,
            count: 0.0,
        })
        .collect();
    if let Some(p) = spec.privacy.as_mut() {
        p.evaluation_epsilon = Some(0.0);
    }
    spec.secure_aggregation = Some(SecureAggregationSpec::default());
    spec
}

/// A model version's tensors, downloaded as an agency.
async fn download(
    client: &mut AgencyServiceClient<tonic::transport::Channel>,
    job: &str,
    version: &str,
) -> Vec<NamedTensor> {
    let mut parts = client
        .download_model(DownloadModelRequest {
            job_id: job.into(),
            model_version: version.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut assembler = None;
    while let Some(part) = parts.next().await {
        match part.unwrap().kind {
            Some(model_part::Kind::Header(h)) => {
                assembler = Some(Assembler::new(h.tensors, 1 << 20, 1 << 20).unwrap())
            }
            Some(model_part::Kind::Chunk(c)) => assembler.as_mut().unwrap().push(c).unwrap(),
            None => {}
        }
    }
    assembler.unwrap().finish().unwrap()
}

fn flat(tensors: &[NamedTensor]) -> Vec<f64> {
    tensors
        .iter()
        .flat_map(|t| t.values.iter().copied())
        .collect()
}

/// The next step of secure aggregation the coordinator sends this session.
async fn next_step(session: &mut Session) -> sec_agg_to_node::Step {
    loop {
        let message: CoordinatorMessage = session
            .next(Duration::from_secs(30))
            .await
            .expect("the coordinator sent no step");
        if let Some(coordinator_message::Kind::Secagg(m)) = message.kind {
            return m.step.unwrap();
        }
    }
}

async fn send_step(session: &Session, task: &Task, step: sec_agg_from_node::Step) {
    session
        .outbox
        .send(NodeMessage {
            kind: Some(node_message::Kind::Secagg(SecAggFromNode {
                task_id: task.task_id.clone(),
                step: Some(step),
            })),
        })
        .await
        .unwrap();
}

/// How a scripted agency uploads its masked update.
#[derive(Clone)]
enum Uploads {
    /// At once, as a node does.
    Straight,
    /// Opens its upload, is admitted, and holds it open without a chunk until the one that
    /// waits has found no admission: with two that hold, the coordinator's staging slots are
    /// taken.
    Holds(Arc<Gate>),
    /// Once both slots are held, opens its upload and sends its chunks at once, unasked; finds
    /// itself not admitted while they are held, then admitted once they are let go.
    Waits(Arc<Gate>),
}

/// Two that hold and one that waits: they meet when both hold, and again when the one that
/// waits lets them go.
struct Gate {
    held: tokio::sync::Barrier,
    released: tokio::sync::Barrier,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            held: tokio::sync::Barrier::new(3),
            released: tokio::sync::Barrier::new(3),
        })
    }

    /// Meets the others at `barrier`; a party that failed on the way never comes, so the
    /// wait is bounded.
    async fn meet(barrier: &tokio::sync::Barrier, who: &Identity) {
        tokio::time::timeout(Duration::from_secs(60), barrier.wait())
            .await
            .unwrap_or_else(|_| panic!("{who}: the others of the gate never came"));
    }
}

/// What a scripted agency contributes and when it leaves.
struct Script {
    /// Its model's change, or under distributed noise its gradient sum then its denominator.
    update: Vec<f64>,
    leaves: Leaves,
    /// Whether the job is under distributed noise (the contribution has a denominator).
    distributed: bool,
    uploads: Uploads,
}

/// One scripted agency's round: honest, with its script's contribution, until it leaves.
async fn scripted_round(
    mut client: AgencyServiceClient<tonic::transport::Channel>,
    mut session: Session,
    me: Identity,
    signer: KeySigner,
    ca: Vec<u8>,
    script: Script,
) {
    let Script {
        update,
        leaves,
        distributed,
        uploads,
    } = script;
    let task = session.next_task(Duration::from_secs(30)).await.unwrap();
    let wire = task.secure_aggregation.clone().unwrap();
    session
        .outbox
        .send(NodeMessage {
            kind: Some(node_message::Kind::Accepted(TaskAccepted {
                task_id: task.task_id.clone(),
            })),
        })
        .await
        .unwrap();
    let params = Params::of_task(&task.job_id, task.round, &wire);
    let (mut participant, advert) = Participant::new(params, &me.to_string(), &signer).unwrap();
    send_step(&session, &task, sec_agg_from_node::Step::Keys(advert)).await;
    let sec_agg_to_node::Step::Keys(keys) = next_step(&mut session).await else {
        panic!("keys expected")
    };
    let sealed = participant.share_keys(&keys.statements, &ca).unwrap();
    send_step(
        &session,
        &task,
        sec_agg_from_node::Step::Shares(treaty_proto::v1::SealedShares { shares: sealed }),
    )
    .await;
    let sec_agg_to_node::Step::Shares(inbox) = next_step(&mut session).await else {
        panic!("shares expected")
    };
    if leaves == Leaves::AfterSharing {
        return; // the session drops: the agency is gone
    }
    let masked = participant.mask(&inbox.shares, &update).unwrap();
    let Some(treaty_proto::v1::task::Kind::Training(training)) = &task.kind else {
        panic!("a training task expected")
    };
    let layout = download(&mut client, &task.job_id, &training.model_version).await;
    let layout = treaty_proto::secagg::layout(&layout, distributed);
    let (specs, chunks) = treaty_proto::tensor::encode_masked(&layout, &masked, 1 << 20);
    let header = ResultHeader {
        task_id: task.task_id.clone(),
        num_examples: 1,
        tensors: specs,
        ..Default::default()
    };
    match uploads {
        Uploads::Straight => {
            treaty_proto::upload::submit(&mut client, header, chunks, None)
                .await
                .unwrap();
        }
        Uploads::Holds(gate) => {
            let mut upload = hostile_agency::Upload::open(&mut client, header).await;
            assert!(
                upload.admitted(Duration::from_secs(30)).await,
                "{me} not admitted"
            );
            Gate::meet(&gate.held, &me).await;
            Gate::meet(&gate.released, &me).await;
            upload.send(chunks).await;
            upload.answer().await.unwrap();
        }
        Uploads::Waits(gate) => {
            Gate::meet(&gate.held, &me).await;
            let mut upload = hostile_agency::Upload::open(&mut client, header).await;
            upload.send(chunks).await;
            assert!(
                !upload.admitted(Duration::from_secs(2)).await,
                "{me} was admitted while both staging slots were held"
            );
            Gate::meet(&gate.released, &me).await;
            assert!(
                upload.admitted(Duration::from_secs(30)).await,
                "{me} not admitted"
            );
            upload.answer().await.unwrap();
        }
    }
    if leaves == Leaves::AfterMasking {
        return;
    }
    let sec_agg_to_node::Step::Survivors(survivors) = next_step(&mut session).await else {
        panic!("survivors expected")
    };
    let signed = participant
        .sign_survivors(&survivors.agencies, &signer)
        .unwrap();
    send_step(&session, &task, sec_agg_from_node::Step::Survivors(signed)).await;
    let sec_agg_to_node::Step::Signatures(signatures) = next_step(&mut session).await else {
        panic!("signatures expected")
    };
    let reveal = participant.reveal(&signatures.statements, &ca).unwrap();
    send_step(
        &session,
        &task,
        sec_agg_from_node::Step::Reveal(reveal.into()),
    )
    .await;
    // Held open until the round is over (a closed session counts as gone).
    let _ = session.next(Duration::from_secs(5)).await;
}

/// An agency scripted on the wire: its name, identity, key, client and open session.
type Agency = (
    &'static str,
    Identity,
    KeySigner,
    AgencyServiceClient<tonic::transport::Channel>,
    Session,
);

/// The eight agencies scripted against a real coordinator, connected, and their federation
/// `eight` made: the fixture, the coordinator's process and address, the CA (DER), an operator.
struct Scripted {
    fx: Fixture,
    coordinator: Proc,
    address: String,
    ca: Vec<u8>,
    op: treaty_proto::v1::operator_service_client::OperatorServiceClient<tonic::transport::Channel>,
    agencies: Vec<Agency>,
}

async fn scripted() -> Scripted {
    let fx = Fixture::new(&AGENCIES);
    let (coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let ca = treaty_proto::tls::load_certs(&fx.pki.ca_cert()).unwrap()[0].to_vec();
    let mut agencies = Vec::new();
    for (id, country) in AGENCIES {
        let identity = Identity::agency(country, id).unwrap();
        let files = fx.files(&identity);
        let mut client = hostile_agency::client(&address, &files).await;
        let session = hostile_agency::open(&mut client, hostile_agency::hello())
            .await
            .unwrap();
        agencies.push((
            id,
            identity,
            KeySigner::load(&files).unwrap(),
            client,
            session,
        ));
    }
    let mut op = fx.operator(&address).await;
    federation_of_eight(&mut op).await;
    Scripted {
        fx,
        coordinator,
        address,
        ca,
        op,
        agencies,
    }
}

/// Runs every agency's round by its script, to the end.
async fn run_scripts(agencies: Vec<Agency>, ca: &[u8], script: impl Fn(&str) -> Script) {
    let mut running = Vec::new();
    for (id, identity, signer, client, session) in agencies {
        running.push(tokio::spawn(scripted_round(
            client,
            session,
            identity,
            signer,
            ca.to_vec(),
            script(id),
        )));
    }
    for r in running {
        r.await.unwrap();
    }
}

/// Byte patterns of values as a store or a log could hold them: little-endian f64 and f32,
/// and decimal text of 7 significant digits.
fn patterns(values: &[f64]) -> Vec<Vec<u8>> {
    values
        .iter()
        .flat_map(|v| {
            [
                v.to_le_bytes().to_vec(),
                (*v as f32).to_le_bytes().to_vec(),
                format!("{v:.7}").into_bytes(),
            ]
        })
        .collect()
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn eight_agencies_two_drop_outs_the_model_moves_by_the_survivors_mean_and_no_update_is_kept()
{
    let Scripted {
        fx,
        coordinator,
        address,
        ca,
        mut op,
        agencies,
    } = scripted().await;
    let ids: Vec<&str> = AGENCIES.iter().map(|(a, _)| *a).collect();
    let job = start_training(&mut op, "eight", secure_spec(1), 3, 15_000).await;

    // Each agency's update (its model's change): three values each, distinct and known.
    let updates: BTreeMap<&str, Vec<f64>> = AGENCIES
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let i = i as f64;
            (
                *id,
                vec![
                    0.1234567 + i * 0.0101,
                    -0.7654321 + i * 0.0203,
                    0.3141592 - i * 0.0307,
                ],
            )
        })
        .collect();
    let leaves = |id: &str| match id {
        "FR-DGDDI" => Leaves::AfterSharing,
        "NL-POLITIE" => Leaves::AfterMasking,
        _ => Leaves::Never,
    };
    run_scripts(agencies, &ca, |id| Script {
        update: updates[id].clone(),
        leaves: leaves(id),
        distributed: false,
        uploads: Uploads::Straight,
    })
    .await;
    let job = watch_to_end(&mut op, &job.job_id).await;
    assert_eq!(job.state, JobState::Succeeded as i32, "{}", job.message);
    let round = &job.rounds[0];
    // The one that left after masking is a contributor: its update is in the sum.
    let mut contributors = round.contributors.clone();
    contributors.sort();
    let survivors: Vec<&str> = ids.iter().copied().filter(|a| *a != "FR-DGDDI").collect();
    assert_eq!(contributors, survivors);
    assert!(
        round.excluded.iter().any(|e| e.agency == "FR-DGDDI"),
        "{:?}",
        round.excluded
    );

    // The new model is the old one plus the survivors' mean update (the independent
    // reference: the plain mean of the updates this test chose).
    let (_, identity, ..) = (0, Identity::agency("DE", "DE-BKA").unwrap());
    let mut client = hostile_agency::client(&address, &fx.files(&identity)).await;
    let before = flat(&download(&mut client, &job.job_id, &format!("{}/r0", job.job_id)).await);
    let after = flat(&download(&mut client, &job.job_id, &format!("{}/r1", job.job_id)).await);
    assert_eq!(before.len(), 3);
    for i in 0..3 {
        let mean: f64 =
            survivors.iter().map(|a| updates[a][i]).sum::<f64>() / survivors.len() as f64;
        let moved = after[i] - before[i];
        // 2^-33 a value from the fixed point; the stored model's own rounding is f64's.
        assert!(
            (moved - mean).abs() < 1e-9,
            "parameter {i}: moved {moved}, the survivors' mean {mean}"
        );
    }

    // Nothing the coordinator keeps holds an agency's update on its own: not its database,
    // not its log. The same search finds the stored model, so it would find an update.
    drop(client);
    drop(coordinator);
    let mut kept = files_under(&fx.path("coordinator-db"));
    kept.push((
        fx.path("coordinator.log"),
        std::fs::read(fx.path("coordinator.log")).unwrap(),
    ));
    for (id, update) in &updates {
        for pattern in patterns(update) {
            for (path, bytes) in &kept {
                assert!(
                    !contains(bytes, &pattern),
                    "{}'s update ({:?}) is in {}",
                    id,
                    String::from_utf8_lossy(&pattern),
                    path.display()
                );
            }
        }
    }
    let stored = after[0].to_le_bytes();
    assert!(
        kept.iter().any(|(_, bytes)| contains(bytes, &stored)),
        "the search does not find the stored model either"
    );
}

/// The coordinator reads two uploads at a time (its staging slots). With two agencies holding
/// admitted uploads open, a third is not admitted (though it sends its chunks unasked) until
/// they let go; then it is, and the round takes all eight updates.
#[tokio::test]
async fn an_upload_waits_for_its_admission_while_both_staging_slots_are_held() {
    let Scripted {
        ca,
        mut op,
        agencies,
        fx: _fx,
        coordinator: _coordinator,
        ..
    } = scripted().await;
    let job = start_training(&mut op, "eight", secure_spec(1), 3, 15_000).await;
    let gate = Gate::new();
    run_scripts(agencies, &ca, |id| Script {
        update: vec![0.1, -0.2, 0.3],
        leaves: Leaves::Never,
        distributed: false,
        uploads: match id {
            "DE-BKA" | "DE-ZOLL" => Uploads::Holds(Arc::clone(&gate)),
            "FR-PJ" => Uploads::Waits(Arc::clone(&gate)),
            _ => Uploads::Straight,
        },
    })
    .await;
    let job = watch_to_end(&mut op, &job.job_id).await;
    assert_eq!(job.state, JobState::Succeeded as i32, "{}", job.message);
    assert_eq!(job.rounds[0].contributors.len(), 8, "{:?}", job.rounds[0]);
}

/// Eight real nodes train three rounds under secure aggregation; in round 1 one is killed once
/// it has sent its shares and one once it has sent its masked update. Every round's sum is
/// recovered, the one killed after its update counts as a contributor of round 1, and the
/// model learns as it does without secure aggregation.
#[tokio::test]
async fn eight_nodes_train_under_secure_aggregation_through_two_kills() {
    let fx = Fixture::new(&AGENCIES);
    // Poland's policy lets its agencies release only into a secure sum: they train, and stay
    // out of the final model's evaluation, which is not under secure aggregation.
    fx.write_policy("PL", &requiring_secure_aggregation("PL"));
    let (coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let mut nodes: BTreeMap<&str, Proc> = AGENCIES
        .iter()
        .enumerate()
        .map(|(i, (id, country))| (*id, fx.start_node(id, country, &address, 40 + i as u64)))
        .collect();
    let mut op = fx.operator(&address).await;
    federation_of_eight(&mut op).await;
    let mut spec = secure_spec(3);
    if let Some(p) = spec.privacy.as_mut() {
        p.evaluation_epsilon = Some(20.0);
        // Without a statistics round the nodes have no public record figure to sample by.
        p.sampling_rate = 0.1;
    }
    let job = start_training(&mut op, "eight", spec, 3, 10_000).await;
    let kill = |node: &mut Proc, after: &str| {
        node.wait_for_log(after, Duration::from_secs(30));
        node.signal(nix::sys::signal::Signal::SIGKILL);
        node.wait_for_exit(Duration::from_secs(10)).unwrap();
    };
    kill(
        nodes.get_mut("FR-DGDDI").unwrap(),
        "secure aggregation: keys checked, shares sent",
    );
    kill(nodes.get_mut("NL-POLITIE").unwrap(), "result sent");
    let job = watch_to_end(&mut op, &job.job_id).await;
    assert_eq!(job.state, JobState::Succeeded as i32, "{}", job.message);
    assert_eq!(job.rounds.len(), 3);
    let first = &job.rounds[0];
    assert!(
        first.contributors.iter().any(|c| c == "NL-POLITIE"),
        "{:?}",
        first
    );
    // The one killed after sharing may still have sent its update in the instant before the
    // kill; the round's sum is recovered either way.
    assert!(first.contributors.len() >= 6, "{first:?}");
    for later in &job.rounds[1..] {
        let mut contributors = later.contributors.clone();
        contributors.sort();
        let alive: Vec<&str> = AGENCIES
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| *a != "FR-DGDDI" && *a != "NL-POLITIE")
            .collect();
        assert_eq!(contributors, alive, "{later:?}");
    }
    // The data follow a linear rule: the model entering round 3 (evaluated by each agency on
    // its test split, noisily) is far better than chance.
    let last = &job.rounds[2];
    assert!(last.metrics["test_accuracy"] > 0.8, "{:?}", last.metrics);
    let evaluation = job.final_evaluation.as_ref().unwrap();
    for pl in ["PL-CBSP", "PL-KAS"] {
        assert!(last.contributors.iter().any(|c| c == pl), "{last:?}");
        let excluded = evaluation.excluded.iter().find(|e| e.agency == pl);
        assert_eq!(
            excluded.map(|e| e.reason_code.as_str()),
            Some("SECURE_AGGREGATION_REQUIRED"),
            "{evaluation:?}"
        );
    }
    assert_eq!(evaluation.contributors.len(), 4, "{evaluation:?}");
    let log = coordinator.log();
    assert!(log.contains("secure aggregation round started"), "{log}");
    // Each training release is in the agency's ledger with the guarantee it had: masked in a
    // sum of the round's agencies, with its full local noise.
    let training = ledger_entries(&fx.path("node-DE-BKA.toml"), "training");
    let secure: Vec<(u64, u64)> = training
        .iter()
        .map(|e| {
            let s = &e["secure_aggregation"];
            assert_eq!(s["noise"], "local", "{e}");
            (
                s["agencies"].as_u64().unwrap(),
                s["threshold"].as_u64().unwrap(),
            )
        })
        .collect();
    // Round 1 among 8 agencies (threshold 6), rounds 2 and 3 among those left (6, or 7 when
    // the coordinator had not yet seen a killed node's session close: threshold 5 either way).
    assert_eq!(secure.len(), 3, "{training:?}");
    assert_eq!(secure[0], (8, 6), "{training:?}");
    for &(agencies, threshold) in &secure[1..] {
        assert!(agencies == 6 || agencies == 7, "{training:?}");
        assert_eq!(threshold, 5, "{training:?}");
    }
}

/// Distributed DP against the real coordinator: eight scripted agencies send noisy gradient
/// sums and public denominators (known here), one leaving after sharing its keys. The round's
/// model is the global model minus the job's learning rate times the survivors' summed
/// gradients over their summed denominators (the independent reference: that formula on the
/// values this test chose), to the fixed point's rounding.
#[tokio::test]
async fn distributed_noise_steps_by_the_survivors_summed_gradients_over_their_denominators() {
    let Scripted {
        fx,
        coordinator: _coordinator,
        address,
        ca,
        mut op,
        agencies,
    } = scripted().await;
    let ids: Vec<&str> = AGENCIES.iter().map(|(a, _)| *a).collect();
    let mut spec = distributed_spec(1);
    spec.learning_rate = 0.75;
    let job = start_training(&mut op, "eight", spec, 3, 15_000).await;

    // Each agency's noisy gradient sum (three values) and its denominator.
    let contributions: BTreeMap<&str, Vec<f64>> = AGENCIES
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let i = i as f64;
            (
                *id,
                vec![
                    123.4567 + i * 10.1,
                    -765.4321 + i * 20.3,
                    31.41592 - i * 30.7,
                    1000.0 + 250.0 * i,
                ],
            )
        })
        .collect();
    run_scripts(agencies, &ca, |id| Script {
        update: contributions[id].clone(),
        leaves: match id {
            "FR-DGDDI" => Leaves::AfterSharing,
            _ => Leaves::Never,
        },
        distributed: true,
        uploads: Uploads::Straight,
    })
    .await;
    let job = watch_to_end(&mut op, &job.job_id).await;
    assert_eq!(job.state, JobState::Succeeded as i32, "{}", job.message);
    let survivors: Vec<&str> = ids.iter().copied().filter(|a| *a != "FR-DGDDI").collect();
    let mut contributors = job.rounds[0].contributors.clone();
    contributors.sort();
    assert_eq!(contributors, survivors);

    let identity = Identity::agency("DE", "DE-BKA").unwrap();
    let mut client = hostile_agency::client(&address, &fx.files(&identity)).await;
    let before = flat(&download(&mut client, &job.job_id, &format!("{}/r0", job.job_id)).await);
    let after = flat(&download(&mut client, &job.job_id, &format!("{}/r1", job.job_id)).await);
    let denominator: f64 = survivors.iter().map(|a| contributions[a][3]).sum();
    for i in 0..3 {
        let gradient: f64 = survivors.iter().map(|a| contributions[a][i]).sum();
        let expected = before[i] - 0.75 * gradient / denominator;
        assert!(
            (after[i] - expected).abs() < 1e-9,
            "parameter {i}: {} where the survivors' step gives {expected}",
            after[i]
        );
    }
}

/// A job of one full-batch step a round under distributed noise, assuming no dishonest agency.
fn distributed_spec(rounds: u32) -> TrainingSpec {
    let mut spec = secure_spec(rounds);
    spec.local_epochs = 1;
    spec.learning_rate = 4.0;
    if let Some(p) = spec.privacy.as_mut() {
        p.mode = treaty_proto::v1::DpMode::FullBatch as i32;
        p.sampling_rate = 0.0;
    }
    spec.secure_aggregation = Some(SecureAggregationSpec {
        distributed_noise: true,
        assumed_dishonest: 0,
        ..Default::default()
    });
    spec
}

/// Four real nodes train under distributed noise; the job assumes one dishonest agency, as does
/// one agency's configuration; the others say nothing (every other agency may be dishonest),
/// and so add their whole noise on top of the job's share: never does a node count on the job's
/// assumption alone. Each ledger records the assumption and the honest agencies' noise it
/// counted on. The model learns.
#[tokio::test]
async fn real_nodes_train_under_distributed_noise_on_their_own_assumptions() {
    let four = &AGENCIES[..4];
    let fx = Fixture::new(four);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let mut nodes = Vec::new();
    for (i, (id, country)) in four.iter().enumerate() {
        let config = fx.node_config(id, country, &address, 60 + i as u64);
        declare_public_records(&config, 400);
        if *id == "DE-BKA" {
            assume_dishonest(&config, 1);
        }
        nodes.push(fx.start_node_with(id, &config));
    }
    let mut op = fx.operator(&address).await;
    let ids: Vec<&str> = four.iter().map(|(a, _)| *a).collect();
    wait_connected(&mut op, &ids).await;
    let members: Vec<String> = four.iter().map(|(a, c)| format!("{a}:{c}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    create_federation(&mut op, "four", &members).await;
    let mut spec = distributed_spec(3);
    if let Some(p) = spec.privacy.as_mut() {
        p.evaluation_epsilon = Some(20.0);
    }
    if let Some(s) = spec.secure_aggregation.as_mut() {
        s.assumed_dishonest = 1;
    }
    let job = start_training(&mut op, "four", spec, 3, 10_000).await;
    let job = watch_to_end(&mut op, &job.job_id).await;
    assert_eq!(job.state, JobState::Succeeded as i32, "{}", job.message);
    assert_eq!(job.rounds.len(), 3);
    for round in &job.rounds {
        assert_eq!(round.contributors.len(), 4, "{round:?}");
    }
    // The data follow a linear rule: the model entering round 3, evaluated noisily by each
    // agency, is far better than chance.
    let last = &job.rounds[2];
    assert!(last.metrics["test_accuracy"] > 0.8, "{:?}", last.metrics);
    // Four agencies, threshold 3 (1 colluder cannot unmask one contribution: 1 < 2t - n = 2):
    // DE-BKA assumes 1 dishonest, as the job does, so it adds its share and counts on 2 honest
    // agencies' shares; FR-DGDDI assumes all 3 others, so it adds its whole noise on top of its
    // share and counts on that alone.
    for (agency, assumed, honest, noise) in
        [("DE-BKA", 1, 2, "distributed"), ("FR-DGDDI", 3, 1, "local")]
    {
        let training = ledger_entries(&fx.path(&format!("node-{agency}.toml")), "training");
        assert_eq!(training.len(), 3, "{training:?}");
        for e in &training {
            let s = &e["secure_aggregation"];
            assert_eq!(s["noise"], noise, "{agency}: {e}");
            assert_eq!(s["agencies"], 4, "{e}");
            assert_eq!(s["threshold"], 3, "{e}");
            assert_eq!(s["assumed_dishonest"], assumed, "{agency}: {e}");
            assert_eq!(s["honest"], honest, "{agency}: {e}");
        }
    }

    // The operator's command line asks for the same: its one-step recipe passes the
    // coordinator's checks, and the job trains through its statistics round.
    let config = fx.operator_config(&address);
    let schema = fx.schema_file();
    let out = std::process::Command::new(TREATY)
        .args([
            "job",
            "train",
            "--config",
            config.to_str().unwrap(),
            "--federation",
            "four",
            "--schema",
            schema.to_str().unwrap(),
            "--rounds",
            "2",
            "--secure-aggregation",
            "--distributed-noise",
            "--assume-dishonest",
            "1",
            "--min-participants",
            "3",
        ])
        .output()
        .unwrap();
    let text = succeeded_stdout(&out);
    assert!(text.contains("job succeeded after 2 round(s)"), "{text}");
    assert!(text.contains("full batch"), "{text}");
}
