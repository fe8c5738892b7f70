//! A hostile coordinator's attacks on a real node's secure aggregation, over the wire: the
//! test plays the coordinator and the three other agencies of the round (with their real
//! certificates), the node is a real `treaty node` process. The node refuses a round that drops
//! secure aggregation or names other agencies than its terms, a replayed or reordered key
//! message, and reveals no share when the coordinator tells agencies different survivors or
//! shows fewer signatures than the threshold; an honest ending, for contrast, gets its shares.

use std::collections::BTreeMap;
use std::time::Duration;

use treaty_proto::Identity;
use treaty_proto::secagg::{Params, Participant};
use treaty_proto::tls::KeySigner;
use treaty_proto::v1::{
    RoundParticipant, RoundTerms, SealedShares, SecAggToNode, SecureAggregationRound,
    SecureAggregationSpec, SignedStatement, SignedStatements, Survivors, coordinator_message,
    sec_agg_from_node, sec_agg_to_node,
};

use super::double::{Hostile, Seen, model_of};
use super::{poisson, train_task, training};
use crate::common::*;

const AGENCIES: [(&str, &str); 4] = [
    ("DE-BKA", "DE"),
    ("FR-DGDDI", "FR"),
    ("NL-FIOD", "NL"),
    ("PL-KAS", "PL"),
];

fn identity((agency, country): (&str, &str)) -> String {
    Identity::agency(country, agency).unwrap().to_string()
}

/// The round's terms, admitting all four.
fn round_terms() -> RoundTerms {
    RoundTerms {
        purpose: "narcotics".into(),
        coordinator_country: "NL".into(),
        epsilon_per_round: 1e9,
        delta: 1e-5,
        fields: ["x1", "x2", "seized"]
            .iter()
            .map(|f| f.to_string())
            .collect(),
        participants: AGENCIES
            .iter()
            .map(|(a, c)| RoundParticipant {
                agency: a.to_string(),
                country: c.to_string(),
            })
            .collect(),
        registry_version: "test-1".into(),
        ..Default::default()
    }
}

fn secure_training() -> treaty_proto::v1::TrainingSpec {
    let mut spec = training(&["x1", "x2"], poisson());
    spec.secure_aggregation = Some(SecureAggregationSpec::default());
    spec
}

fn participants() -> Vec<String> {
    let mut all: Vec<String> = AGENCIES.iter().map(|a| identity(*a)).collect();
    all.sort();
    all
}

fn round(participants: Vec<String>) -> SecureAggregationRound {
    SecureAggregationRound {
        participants,
        threshold: 3,
        fractional_bits: 32,
        length: 3,
    }
}

/// The fixture, the hostile coordinator, the real node (DE-BKA) and the other agencies' keys.
struct Setup {
    fx: Fixture,
    hostile: Hostile,
    node: Proc,
    ca: Vec<u8>,
    peers: BTreeMap<String, KeySigner>,
}

async fn setup() -> Setup {
    let fx = Fixture::new(&AGENCIES);
    // Germany's policy lets its agencies release only into a secure sum.
    fx.write_policy("DE", &requiring_secure_aggregation("DE"));
    let mut hostile = Hostile::start(&fx).await;
    let node = fx.start_node("DE-BKA", "DE", &hostile.address, 7);
    hostile.hello().await;
    hostile.serve_model(model_of(&secure_training(), 0.0));
    let ca = treaty_proto::tls::load_certs(&fx.pki.ca_cert()).unwrap()[0].to_vec();
    let peers = AGENCIES[1..]
        .iter()
        .map(|a| {
            let id = Identity::agency(a.1, a.0).unwrap();
            (id.to_string(), KeySigner::load(&fx.files(&id)).unwrap())
        })
        .collect();
    Setup {
        fx,
        hostile,
        node,
        ca,
        peers,
    }
}

/// The next step of secure aggregation the node sends (acceptances skipped); a refusal or a
/// result is returned as it is.
async fn next_from_node(hostile: &mut Hostile) -> Seen {
    loop {
        match hostile.next(Duration::from_secs(60)).await {
            Seen::Accepted(_) => continue,
            other => return other,
        }
    }
}

async fn relay(hostile: &Hostile, task: &str, step: sec_agg_to_node::Step) {
    hostile
        .send(coordinator_message::Kind::Secagg(SecAggToNode {
            task_id: task.into(),
            step: Some(step),
        }))
        .await;
}

fn params_of(task_round: u32) -> Params {
    Params {
        job: "job-hostile".into(),
        round: task_round,
        participants: participants(),
        threshold: 3,
        fractional_bits: 32,
        length: 3,
    }
}

/// A secure round's task sent to the node: its id, its round, and the node's signed keys.
async fn start_round(s: &mut Setup) -> (String, u32, SignedStatement) {
    let task = s
        .hostile
        .send_secure(
            train_task(secure_training(), 400.0),
            round_terms(),
            Some(round(participants())),
        )
        .await;
    let task_round: u32 = task.trim_start_matches("hostile-").parse().unwrap();
    let Seen::SecAgg {
        step: sec_agg_from_node::Step::Keys(node_keys),
        ..
    } = next_from_node(&mut s.hostile).await
    else {
        panic!("the node's keys expected")
    };
    (task, task_round, node_keys)
}

/// A round driven honestly up to the node's signature of all four survivors: the task, the
/// node's signature, and the other agencies, masked too.
async fn up_to_signatures(
    s: &mut Setup,
) -> (String, SignedStatement, BTreeMap<String, Participant>) {
    let (task, task_round, node_keys) = start_round(s).await;
    let mut peers = BTreeMap::new();
    let mut adverts = vec![node_keys];
    for (id, signer) in &s.peers {
        let (p, advert) = Participant::new(params_of(task_round), id, signer).unwrap();
        adverts.push(advert);
        peers.insert(id.clone(), p);
    }
    relay(
        &s.hostile,
        &task,
        sec_agg_to_node::Step::Keys(SignedStatements {
            statements: adverts.clone(),
        }),
    )
    .await;
    let Seen::SecAgg {
        step: sec_agg_from_node::Step::Shares(from_node),
        ..
    } = next_from_node(&mut s.hostile).await
    else {
        panic!("the node's shares expected")
    };
    let node_id = identity(AGENCIES[0]);
    let mut all_shares = from_node.shares;
    for p in peers.values_mut() {
        all_shares.extend(p.share_keys(&adverts, &s.ca).unwrap());
    }
    let inbox =
        |to: &str| -> Vec<_> { all_shares.iter().filter(|x| x.to == to).cloned().collect() };
    relay(
        &s.hostile,
        &task,
        sec_agg_to_node::Step::Shares(SealedShares {
            shares: inbox(&node_id),
        }),
    )
    .await;
    for (id, p) in peers.iter_mut() {
        p.mask(&inbox(id), &[0.0; 3]).unwrap();
    }
    let Seen::Masked { values, .. } = next_from_node(&mut s.hostile).await else {
        panic!("the node's masked update expected")
    };
    assert_eq!(values.len(), 3);
    relay(
        &s.hostile,
        &task,
        sec_agg_to_node::Step::Survivors(Survivors {
            agencies: participants(),
        }),
    )
    .await;
    let Seen::SecAgg {
        step: sec_agg_from_node::Step::Survivors(signed),
        ..
    } = next_from_node(&mut s.hostile).await
    else {
        panic!("the node's signature expected")
    };
    (task, signed, peers)
}

/// Whether the node reveals shares within a few seconds of being shown `signatures`.
async fn reveals(s: &mut Setup, task: &str, signatures: Vec<SignedStatement>) -> bool {
    relay(
        &s.hostile,
        task,
        sec_agg_to_node::Step::Signatures(SignedStatements {
            statements: signatures,
        }),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Seen::SecAgg {
                step: sec_agg_from_node::Step::Reveal(_),
                ..
            } = next_from_node(&mut s.hostile).await
            {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// A secure round started, and the keys step relayed with the other agencies' keys made for the
/// parameters `peer(i, round)` gives the i-th of them: the node's refusal, code and text.
async fn refused_keys(s: &mut Setup, peer: impl Fn(usize, u32) -> Params) -> (String, String) {
    let (task, task_round, node_keys) = start_round(s).await;
    let mut adverts = vec![node_keys];
    for (i, (id, signer)) in s.peers.iter().enumerate() {
        adverts.push(Participant::new(peer(i, task_round), id, signer).unwrap().1);
    }
    relay(
        &s.hostile,
        &task,
        sec_agg_to_node::Step::Keys(SignedStatements {
            statements: adverts,
        }),
    )
    .await;
    match next_from_node(&mut s.hostile).await {
        Seen::Refused { code, message, .. } => (code, message),
        other => panic!("a refusal expected, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_reveals_no_share_to_a_coordinator_that_lies_about_the_survivors() {
    let mut s = setup().await;
    let fr = identity(AGENCIES[1]);

    // 1. The others are told FR dropped out (so that they would reveal FR's mask key) while
    // the node is told FR survived (so that it would reveal FR's seed): the others'
    // signatures are of another list, and the node reveals nothing.
    let (task, own, mut peers) = up_to_signatures(&mut s).await;
    let without_fr: Vec<String> = participants().into_iter().filter(|a| *a != fr).collect();
    let mut signatures = vec![own];
    for (id, p) in peers.iter_mut().filter(|(id, _)| **id != fr) {
        signatures.push(p.sign_survivors(&without_fr, &s.peers[id]).unwrap());
    }
    assert!(!reveals(&mut s, &task, signatures).await);
    s.node
        .wait_for_log("signed another list of survivors", Duration::from_secs(10));

    // 2. Two signatures of the right list, below the threshold of three: nothing revealed.
    let (task, own, mut peers) = up_to_signatures(&mut s).await;
    let nl = identity(AGENCIES[2]);
    let one_more = peers
        .get_mut(&nl)
        .unwrap()
        .sign_survivors(&participants(), &s.peers[&nl])
        .unwrap();
    assert!(!reveals(&mut s, &task, vec![own.clone(), one_more]).await);
    s.node.wait_for_log(
        "secure aggregation needs 3 agencies at the consistency check, only 2 remain",
        Duration::from_secs(10),
    );

    // 3. For contrast, every survivor's signature of the one list: the node reveals.
    let (task, own, mut peers) = up_to_signatures(&mut s).await;
    let mut signatures = vec![own];
    for (id, p) in peers.iter_mut() {
        signatures.push(p.sign_survivors(&participants(), &s.peers[id]).unwrap());
    }
    assert!(reveals(&mut s, &task, signatures).await);
    let _ = &s.fx;
}

#[tokio::test]
async fn a_node_refuses_replayed_reordered_or_dropped_secure_aggregation() {
    let mut s = setup().await;
    let refusal = |seen: Seen| match seen {
        Seen::Refused { code, message, .. } => (code, message),
        other => panic!("a refusal expected, got {other:?}"),
    };

    // A plain training round: Germany's policy, which the node applies itself, refuses it.
    s.hostile
        .send_secure(
            train_task(training(&["x1", "x2"], poisson()), 400.0),
            round_terms(),
            None,
        )
        .await;
    let (code, message) = refusal(next_from_node(&mut s.hostile).await);
    assert_eq!(code, "SECURE_AGGREGATION_REQUIRED", "{message}");
    assert!(message.contains("secure sum"), "{message}");

    // A job that asks for secure aggregation, and a task without its round: refused before
    // anything is recorded or computed.
    let task = s
        .hostile
        .send_secure(train_task(secure_training(), 400.0), round_terms(), None)
        .await;
    let (code, message) = refusal(next_from_node(&mut s.hostile).await);
    assert_eq!(code, "INVALID_TASK", "{message}");
    assert!(message.contains("asks for secure aggregation"), "{message}");
    let _ = task;

    // A round naming an agency the terms do not admit.
    let mut stranger = participants();
    stranger[3] = identity(("ZZ-NOBODY", "NL"));
    stranger.sort();
    s.hostile
        .send_secure(
            train_task(secure_training(), 400.0),
            round_terms(),
            Some(round(stranger)),
        )
        .await;
    let (code, message) = refusal(next_from_node(&mut s.hostile).await);
    assert_eq!(code, "INVALID_TASK", "{message}");
    assert!(
        message.contains("not the agencies the round's terms admit"),
        "{message}"
    );

    // A coarser fixed point than the job's spec gives.
    let mut coarse = round(participants());
    coarse.fractional_bits = 12;
    s.hostile
        .send_secure(
            train_task(secure_training(), 400.0),
            round_terms(),
            Some(coarse),
        )
        .await;
    let (code, message) = refusal(next_from_node(&mut s.hostile).await);
    assert_eq!(code, "INVALID_TASK", "{message}");
    assert!(message.contains("fractional bits"), "{message}");

    // A key advertisement of an earlier round, replayed: the first peer's keys come from the
    // round before.
    let (code, message) = refused_keys(&mut s, |i, task_round| Params {
        round: if i == 0 { task_round - 1 } else { task_round },
        ..params_of(task_round)
    })
    .await;
    assert_eq!(code, "SECURE_AGGREGATION_FAILED", "{message}");
    assert!(message.contains("replayed"), "{message}");

    // The other agencies told another threshold than the node: its keys name the round it was
    // told, theirs another.
    let (code, message) = refused_keys(&mut s, |_, task_round| Params {
        threshold: 4,
        ..params_of(task_round)
    })
    .await;
    assert_eq!(code, "SECURE_AGGREGATION_FAILED", "{message}");
    assert!(message.contains("same round"), "{message}");

    // Steps out of order: the survivors where the keys are due.
    let (task, ..) = start_round(&mut s).await;
    relay(
        &s.hostile,
        &task,
        sec_agg_to_node::Step::Survivors(Survivors {
            agencies: participants(),
        }),
    )
    .await;
    let (code, message) = refusal(next_from_node(&mut s.hostile).await);
    assert_eq!(code, "SECURE_AGGREGATION_FAILED", "{message}");
    assert!(message.contains("where the keys were due"), "{message}");
}
