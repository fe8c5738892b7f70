//! Secure aggregation run in one process by honest and hostile parties, with real certificates
//! of a real federation CA: the sum against the plain sum of the survivors' inputs, drop-outs at
//! every step, and a coordinator that lies, replays and reorders.

use std::collections::BTreeMap;

use super::*;
use crate::pki::{self, InitOptions, PkiDir};
use crate::tls::{KeySigner, TlsFiles};
use crate::v1::SignedStatement;

struct Federation {
    _dir: tempfile::TempDir,
    ca: Vec<u8>,
    /// Agencies by identity, in increasing order.
    signers: BTreeMap<String, KeySigner>,
}

fn federation(n: usize) -> Federation {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = PkiDir::new(dir.path());
    let agencies: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("AG{i:02}"),
                ["DE", "FR", "NL", "PL"][i % 4].to_owned(),
            )
        })
        .collect();
    pki::init(
        &pki_dir,
        &InitOptions {
            federation: "secagg".into(),
            coordinator: "hub".into(),
            coordinator_hosts: vec![],
            operators: vec![],
            agencies: agencies.clone(),
            validity_days: 2,
        },
    )
    .unwrap();
    let ca = crate::tls::load_certs(&pki_dir.ca_cert()).unwrap()[0].to_vec();
    let mut signers = BTreeMap::new();
    for (agency, country) in agencies {
        let identity = crate::Identity::agency(&country, &agency).unwrap();
        let (cert, key) = pki_dir.cert_and_key(&identity);
        let files = TlsFiles {
            ca_cert: pki_dir.ca_cert(),
            cert,
            key,
        };
        signers.insert(identity.to_string(), KeySigner::load(&files).unwrap());
    }
    Federation {
        _dir: dir,
        ca,
        signers,
    }
}

fn params(fed: &Federation, threshold: usize, length: usize) -> Params {
    Params {
        job: "job-000001".into(),
        round: 4,
        participants: fed.signers.keys().cloned().collect(),
        threshold,
        fractional_bits: 32,
        length,
    }
}

/// Inputs of `length` values in [-10, 10], different for each agency (a fixed LCG: the test
/// needs variety, not randomness).
fn inputs(fed: &Federation, length: usize) -> BTreeMap<String, Vec<f64>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    fed.signers
        .keys()
        .map(|a| {
            let v = (0..length)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state >> 11) as f64 / (1u64 << 53) as f64 * 20.0 - 10.0
                })
                .collect();
            (a.clone(), v)
        })
        .collect()
}

/// When an agency stops answering.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leaves {
    Never,
    AfterKeys,
    AfterSharing,
    AfterMasking,
}

/// One honest round: every agency leaves when `leaves` says; the coordinator's sum and
/// survivors.
fn honest_round(
    fed: &Federation,
    p: &Params,
    inputs: &BTreeMap<String, Vec<f64>>,
    leaves: &BTreeMap<String, Leaves>,
) -> Result<(Vec<f64>, Vec<String>), SecAggError> {
    let stays = |a: &str, after: Leaves| {
        let l = leaves.get(a).copied().unwrap_or(Leaves::Never);
        l == Leaves::Never || (l as u8) > (after as u8)
    };
    let mut server = Aggregation::new(p.clone())?;
    let mut nodes = BTreeMap::new();
    for (a, signer) in &fed.signers {
        let (node, advert) = Participant::new(p.clone(), a, signer)?;
        server.advert(a, advert, &fed.ca)?;
        nodes.insert(a.clone(), node);
    }
    let adverts = server.close_keys()?;
    for (a, node) in nodes.iter_mut() {
        if stays(a, Leaves::AfterKeys) {
            server.shares(a, node.share_keys(&adverts, &fed.ca)?)?;
        }
    }
    let inboxes = server.close_shares()?;
    for (a, inbox) in &inboxes {
        if stays(a, Leaves::AfterSharing) {
            let masked = nodes.get_mut(a).unwrap().mask(inbox, &inputs[a])?;
            server.masked_input(a, &masked)?;
        }
    }
    let survivors = server.close_inputs()?;
    for a in &survivors {
        if stays(a, Leaves::AfterMasking) {
            let signed = nodes
                .get_mut(a)
                .unwrap()
                .sign_survivors(&survivors, &fed.signers[a])?;
            server.signature(a, signed, &fed.ca)?;
        }
    }
    let signatures = server.close_signatures()?;
    for a in &survivors {
        if stays(a, Leaves::AfterMasking) {
            let reveal = nodes.get_mut(a).unwrap().reveal(&signatures, &fed.ca)?;
            server.reveal(a, reveal)?;
        }
    }
    server.finish()
}

/// The plain sum of the inputs of `who`: the independent reference.
fn plain_sum(inputs: &BTreeMap<String, Vec<f64>>, who: &[String]) -> Vec<f64> {
    let length = inputs.values().next().unwrap().len();
    (0..length)
        .map(|i| who.iter().map(|a| inputs[a][i]).sum())
        .collect()
}

fn largest_difference(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn eight_agencies_one_leaving_after_sharing_one_after_masking_sum_the_survivors() {
    let fed = federation(8);
    let p = params(&fed, Params::default_threshold(8), 1000);
    assert_eq!(p.threshold, 6);
    let x = inputs(&fed, 1000);
    let agencies: Vec<String> = fed.signers.keys().cloned().collect();
    let leaves = BTreeMap::from([
        (agencies[2].clone(), Leaves::AfterSharing),
        (agencies[5].clone(), Leaves::AfterMasking),
    ]);
    let (sum, survivors) = honest_round(&fed, &p, &x, &leaves).unwrap();
    // The one that left after masking is a survivor: its input arrived.
    let expected: Vec<String> = agencies
        .iter()
        .filter(|a| **a != agencies[2])
        .cloned()
        .collect();
    assert_eq!(survivors, expected);
    let reference = plain_sum(&x, &survivors);
    let error = largest_difference(&sum, &reference);
    // Rounding to 2^-32 adds at most 2^-33 a value; the f64 sums' own rounding is far below.
    assert!(
        error <= p.fixed_point().sum_error(),
        "error {error} over {}",
        p.fixed_point().sum_error()
    );
    // ... and the masks are gone: an error of a mask would be of the order of 2^63 * 2^-32.
    assert!(error < 1e-8);
}

#[test]
fn drop_outs_at_every_step_up_to_the_threshold() {
    let fed = federation(8);
    let p = params(&fed, 5, 64);
    let x = inputs(&fed, 64);
    let a: Vec<String> = fed.signers.keys().cloned().collect();
    let leaves = BTreeMap::from([
        (a[0].clone(), Leaves::AfterKeys),
        (a[7].clone(), Leaves::AfterSharing),
        (a[3].clone(), Leaves::AfterMasking),
    ]);
    let (sum, survivors) = honest_round(&fed, &p, &x, &leaves).unwrap();
    assert_eq!(survivors.len(), 6);
    assert!(!survivors.contains(&a[0]) && !survivors.contains(&a[7]));
    assert!(survivors.contains(&a[3]));
    let error = largest_difference(&sum, &plain_sum(&x, &survivors));
    assert!(error <= p.fixed_point().sum_error());

    // Two more leaving after masking leave three to sign and reveal, below the threshold of five.
    let mut more = leaves.clone();
    more.insert(a[4].clone(), Leaves::AfterMasking);
    more.insert(a[5].clone(), Leaves::AfterMasking);
    let err = honest_round(&fed, &p, &x, &more).unwrap_err();
    assert_eq!(
        err,
        SecAggError::TooFew {
            step: "the consistency check",
            have: 3,
            need: 5
        }
    );
}

#[test]
fn the_fixed_point_code_rounds_within_its_bound_and_clamps_beyond_it() {
    let code = FixedPoint {
        fractional_bits: 32,
        participants: 8,
    };
    let values = [0.0, 1.0, -1.0, 0.1, -2.71, 1e-11, 123456.789];
    let back = code.decode(&code.encode(&values).unwrap());
    for (x, y) in values.iter().zip(&back) {
        assert!((x - y).abs() <= 2f64.powi(-33), "{x} came back as {y}");
    }
    // 2^62 / 2^32 / 8 = 2^27: the largest magnitude kept.
    assert_eq!(code.bound(), 2f64.powi(27));
    let clamped = code.decode(&code.encode(&[1e12, -1e12]).unwrap());
    assert_eq!(clamped, vec![2f64.powi(27), -2f64.powi(27)]);
    assert!(code.encode(&[f64::NAN]).is_err());
    // Eight contributions at the bound add up without wrapping.
    let one = code.encode(&[-1e12]).unwrap()[0];
    let sum = (0..8).fold(0u64, |s, _| s.wrapping_add(one));
    assert_eq!(code.decode(&[sum]), vec![-8.0 * 2f64.powi(27)]);
}

#[test]
fn parameters_that_cannot_protect_are_refused() {
    let fed = federation(4);
    let mut p = params(&fed, 3, 8);
    assert!(p.check().is_ok());
    p.threshold = 2; // 2t = n: two disjoint halves could each recover
    assert!(p.check().is_err());
    p.threshold = 5;
    assert!(p.check().is_err());
    let mut p = params(&fed, 3, 8);
    p.participants.swap(0, 1);
    assert!(p.check().is_err());
    let mut p = params(&fed, 3, 8);
    p.participants.truncate(1);
    p.threshold = 1;
    assert!(p.check().is_err());
}

/// The honest parties of a round up to the masking, all of it honest so far.
struct Masked {
    server: Aggregation,
    nodes: BTreeMap<String, Participant>,
    masked: BTreeMap<String, Vec<u64>>,
    adverts: Vec<SignedStatement>,
}

fn masked_round(fed: &Federation, p: &Params, x: &BTreeMap<String, Vec<f64>>) -> Masked {
    let mut server = Aggregation::new(p.clone()).unwrap();
    let mut nodes = BTreeMap::new();
    for (a, signer) in &fed.signers {
        let (node, advert) = Participant::new(p.clone(), a, signer).unwrap();
        server.advert(a, advert, &fed.ca).unwrap();
        nodes.insert(a.clone(), node);
    }
    let adverts = server.close_keys().unwrap();
    for (a, node) in nodes.iter_mut() {
        server
            .shares(a, node.share_keys(&adverts, &fed.ca).unwrap())
            .unwrap();
    }
    let inboxes = server.close_shares().unwrap();
    let mut masked = BTreeMap::new();
    for (a, inbox) in &inboxes {
        let y = nodes.get_mut(a).unwrap().mask(inbox, &x[a]).unwrap();
        server.masked_input(a, &y).unwrap();
        masked.insert(a.clone(), y);
    }
    Masked {
        server,
        nodes,
        masked,
        adverts,
    }
}

#[test]
fn a_coordinator_that_tells_agencies_different_survivors_gets_no_share() {
    let fed = federation(8);
    let p = params(&fed, 6, 16);
    let x = inputs(&fed, 16);
    let mut round = masked_round(&fed, &p, &x);
    let all: Vec<String> = fed.signers.keys().cloned().collect();
    let target = &all[0];
    // Half are told the target survived, half that it dropped out (all its input arrived).
    let without: Vec<String> = all.iter().filter(|a| *a != target).cloned().collect();
    let mut signed_all = Vec::new();
    let mut signed_without = Vec::new();
    for (i, a) in all.iter().enumerate() {
        let node = round.nodes.get_mut(a).unwrap();
        if i < 4 {
            signed_all.push(node.sign_survivors(&all, &fed.signers[a]).unwrap());
        } else {
            signed_without.push(node.sign_survivors(&without, &fed.signers[a]).unwrap());
        }
    }
    // Four signatures of either list are below the threshold of six ...
    for (i, a) in all.iter().enumerate() {
        let mine = if i < 4 { &signed_all } else { &signed_without };
        let err = round
            .nodes
            .get_mut(a)
            .unwrap()
            .reveal(mine, &fed.ca)
            .unwrap_err();
        assert!(
            matches!(
                err,
                SecAggError::TooFew {
                    have: 4,
                    need: 6,
                    ..
                }
            ),
            "{err}"
        );
    }
    // ... and showing an agency the other list's signatures too proves the lie.
    let mut both = signed_all.clone();
    both.extend(signed_without.iter().cloned());
    let err = round
        .nodes
        .get_mut(&all[1])
        .unwrap()
        .reveal(&both, &fed.ca)
        .unwrap_err();
    assert!(
        matches!(&err, SecAggError::Coordinator(m) if m.contains("signed another list of survivors")),
        "{err}"
    );
    // A list without the agency itself, or with an agency that took no part, is refused.
    let mut fresh = masked_round(&fed, &p, &x);
    let node = fresh.nodes.get_mut(target).unwrap();
    assert!(node.sign_survivors(&without, &fed.signers[target]).is_err());
    let mut stranger = all.clone();
    stranger.push("treaty://agency/ZZ/NOBODY".into());
    assert!(
        node.sign_survivors(&stranger, &fed.signers[target])
            .is_err()
    );
    let _ = &mut fresh.server;
}

/// The coordinator's best attempt at one agency's input, with `colluders` agencies on its side
/// (they sign both lists and hand over every share they hold): true when it recovers the input.
fn unmask_with_colluders(fed: &Federation, colluders: usize) -> bool {
    let n = fed.signers.len();
    let p = params(fed, Params::default_threshold(n), 8);
    let t = p.threshold;
    let x = inputs(fed, 8);
    let mut round = masked_round(fed, &p, &x);
    let all: Vec<String> = fed.signers.keys().cloned().collect();
    let target = all[0].clone();
    let bad: Vec<String> = all[n - colluders..].to_vec();
    let honest: Vec<String> = all[1..n - colluders].to_vec();
    // The split that needs the fewest honest agencies: the target and just enough others are
    // told it survived (to reveal its seed), the rest that it dropped (to reveal its mask key).
    let need = t.saturating_sub(colluders);
    let told_alive: Vec<String> = std::iter::once(target.clone())
        .chain(honest.iter().take(need.saturating_sub(1)).cloned())
        .collect();
    let told_dropped: Vec<String> = honest
        .iter()
        .skip(need.saturating_sub(1))
        .cloned()
        .collect();
    let with_target = all.clone();
    let without_target: Vec<String> = all.iter().filter(|a| **a != target).cloned().collect();
    // The colluders know the run's keys: they sign lists of this run.
    let advertised: Vec<KeyAdvert> = round
        .adverts
        .iter()
        .map(|s| serde_json::from_str(&s.statement).unwrap())
        .collect();
    let keys = keys_digest(&advertised);
    let sign_as = |a: &str, list: &[String]| {
        crate::receipt::sign(
            &SurvivorList {
                agency: a.to_owned(),
                job: p.job.clone(),
                round: p.round,
                keys: keys.clone(),
                survivors: list.to_vec(),
            },
            &fed.signers[a],
        )
        .unwrap()
    };
    let mut seeds = Vec::new();
    let mut keys = Vec::new();
    for (group, list) in [
        (&told_alive, &with_target),
        (&told_dropped, &without_target),
    ] {
        let mut signatures: Vec<SignedStatement> = bad.iter().map(|c| sign_as(c, list)).collect();
        for a in group {
            let node = round.nodes.get_mut(a).unwrap();
            signatures.push(node.sign_survivors(list, &fed.signers[a]).unwrap());
        }
        for a in group {
            if let Ok(reveal) = round.nodes.get_mut(a).unwrap().reveal(&signatures, &fed.ca) {
                seeds.extend(reveal.seeds.into_iter().filter(|(o, _)| *o == target));
                keys.extend(reveal.mask_keys.into_iter().filter(|(o, _)| *o == target));
            }
        }
    }
    for c in &bad {
        let (seed, key) = round.nodes[c].held_shares_of(&target);
        seeds.push((target.clone(), seed));
        keys.push((target.clone(), key));
    }
    if seeds.len() < t || keys.len() < t {
        return false;
    }
    let pick = |v: &[(String, Vec<u8>)]| v[..t].iter().map(|(_, s)| s.clone()).collect::<Vec<_>>();
    let seed = crypto::combine(&pick(&seeds)).unwrap();
    let mask_secret = x25519_dalek::StaticSecret::from(crypto::combine(&pick(&keys)).unwrap());
    let mut y = round.masked[&target].clone();
    crypto::apply_mask(&mut y, &seed, true);
    for signed in &round.adverts {
        let advert: KeyAdvert = serde_json::from_str(&signed.statement).unwrap();
        if advert.agency == target {
            continue;
        }
        let public = hex32(&advert.mask_key).unwrap();
        let (a, b) = participant::ordered(&target, &advert.agency);
        let s = crypto::agreed_key(&mask_secret, &public, "mask", &p, a, b).unwrap();
        crypto::apply_mask(&mut y, &s, advert.agency.as_str() > target.as_str());
    }
    let _ = &round.server;
    p.fixed_point().decode(&y)
        == p.fixed_point()
            .decode(&p.fixed_point().encode(&x[&target]).unwrap())
}

#[test]
fn an_input_stays_hidden_unless_2t_minus_n_agencies_side_with_the_coordinator() {
    // n = 8, t = 6: hidden against 3 colluders (2t - n = 4 is the first count that breaks it,
    // which shows the bound docs/SECURE_AGGREGATION.md states is the exact one).
    let fed = federation(8);
    for c in 0..=3 {
        assert!(
            !unmask_with_colluders(&fed, c),
            "{c} colluders unmasked an input"
        );
    }
    assert!(unmask_with_colluders(&fed, 4));
}

#[test]
fn replayed_substituted_and_reordered_key_messages_are_refused() {
    let fed = federation(4);
    let p = params(&fed, 3, 4);
    let all: Vec<String> = fed.signers.keys().cloned().collect();
    let mut earlier = p.clone();
    earlier.round = 3;
    let (_, old_advert) = Participant::new(earlier, &all[1], &fed.signers[&all[1]]).unwrap();

    let mut adverts = Vec::new();
    let mut nodes = Vec::new();
    for a in &all {
        let (node, advert) = Participant::new(p.clone(), a, &fed.signers[a]).unwrap();
        adverts.push(advert);
        nodes.push(node);
    }
    // Replayed from round 3: refused by the node and by the coordinator.
    let mut replayed = adverts.clone();
    replayed[1] = old_advert.clone();
    let err = nodes[0].share_keys(&replayed, &fed.ca).unwrap_err();
    assert!(err.to_string().contains("replayed"), "{err}");
    let mut server = Aggregation::new(p.clone()).unwrap();
    assert!(server.advert(&all[1], old_advert, &fed.ca).is_err());
    // An advertisement sent by another agency than it names.
    assert!(server.advert(&all[2], adverts[1].clone(), &fed.ca).is_err());
    // A key swapped in by the coordinator breaks the signature.
    let mut swapped = adverts.clone();
    let mut statement: KeyAdvert = serde_json::from_str(&swapped[2].statement).unwrap();
    statement.mask_key = "11".repeat(32);
    swapped[2].statement = serde_json::to_string(&statement).unwrap();
    let err = nodes[0].share_keys(&swapped, &fed.ca).unwrap_err();
    assert!(matches!(err, SecAggError::Peer { .. }), "{err}");
    // An agency listed twice, or this agency's keys left out.
    let mut twice = adverts.clone();
    twice.push(adverts[2].clone());
    assert!(nodes[0].share_keys(&twice, &fed.ca).is_err());
    assert!(nodes[0].share_keys(&adverts[1..], &fed.ca).is_err());
    // Signed by a certificate of another federation's CA.
    let other = federation(4);
    let (_, foreign) = Participant::new(p.clone(), &all[3], &other.signers[&all[3]]).unwrap();
    let mut foreign_list = adverts.clone();
    foreign_list[3] = foreign;
    assert!(nodes[0].share_keys(&foreign_list, &fed.ca).is_err());
    // An agency told another threshold, or adding another share of distributed noise: the
    // coordinator gave agencies different rounds.
    let mut lower = p.clone();
    lower.threshold = 4;
    let (_, told_otherwise) = Participant::new(lower, &all[2], &fed.signers[&all[2]]).unwrap();
    let (_, other_share) =
        Participant::with_noise_share(p.clone(), &all[3], &fed.signers[&all[3]], Some(1e6))
            .unwrap();
    for (k, odd) in [(2, told_otherwise), (3, other_share)] {
        let mut list = adverts.clone();
        list[k] = odd;
        let err = nodes[0].share_keys(&list, &fed.ca).unwrap_err();
        assert!(
            err.to_string().contains(&all[k]) && err.to_string().contains("same round"),
            "{err}"
        );
    }

    // Out of order: a mask before the keys, the keys twice, survivors before the mask.
    assert!(matches!(
        nodes[0].mask(&[], &[0.0; 4]),
        Err(SecAggError::Order(_))
    ));
    let shares = nodes[0].share_keys(&adverts, &fed.ca).unwrap();
    assert!(matches!(
        nodes[0].share_keys(&adverts, &fed.ca),
        Err(SecAggError::Order(_))
    ));
    assert!(matches!(
        nodes[0].sign_survivors(&all, &fed.signers[&all[0]]),
        Err(SecAggError::Order(_))
    ));
    // A share relayed to another agency than it was sealed for does not open.
    let mut n1 = nodes.remove(1);
    n1.share_keys(&adverts, &fed.ca).unwrap();
    let mut moved = shares[1].clone(); // sealed by all[0] for all[2]
    assert_eq!(moved.to, all[2]);
    moved.to = all[1].clone();
    let err = n1.mask(&[moved], &[0.0; 4]).unwrap_err();
    assert!(err.to_string().contains("does not open"), "{err}");
}

#[test]
fn a_wrong_share_or_a_key_of_small_order_fails_the_round_instead_of_the_sum() {
    let fed = federation(4);
    let p = params(&fed, 3, 8);
    let x = inputs(&fed, 8);
    let all: Vec<String> = fed.signers.keys().cloned().collect();
    // A survivor reveals a wrong share of another survivor's seed: the recovered seed does not
    // match the commitment in that survivor's signed keys, and the round fails, named.
    let mut round = masked_round(&fed, &p, &x);
    let survivors = round.server.close_inputs().unwrap();
    for a in &survivors {
        let signed = round
            .nodes
            .get_mut(a)
            .unwrap()
            .sign_survivors(&survivors, &fed.signers[a])
            .unwrap();
        round.server.signature(a, signed, &fed.ca).unwrap();
    }
    let signatures = round.server.close_signatures().unwrap();
    for (i, a) in survivors.iter().enumerate() {
        let mut reveal = round
            .nodes
            .get_mut(a)
            .unwrap()
            .reveal(&signatures, &fed.ca)
            .unwrap();
        if i == 0 {
            reveal.seeds[1].1[5] ^= 0x40;
        }
        round.server.reveal(a, reveal).unwrap();
    }
    let err = round.server.finish().unwrap_err();
    assert!(
        err.to_string().contains("not the one it committed to"),
        "{err}"
    );

    // A key of small order (here the identity point) is refused before it is relayed.
    let mut server = Aggregation::new(p.clone()).unwrap();
    let small = KeyAdvert {
        agency: all[0].clone(),
        job: p.job.clone(),
        round: p.round,
        cipher_key: "00".repeat(32),
        mask_key: "00".repeat(32),
        seed_commitment: "11".repeat(32),
        round_digest: super::round_digest(&p, None),
    };
    let signed = crate::receipt::sign(&small, &fed.signers[&all[0]]).unwrap();
    let err = server.advert(&all[0], signed, &fed.ca).unwrap_err();
    assert!(err.to_string().contains("small order"), "{err}");
}

#[test]
fn signatures_of_another_run_of_the_same_round_are_refused() {
    let fed = federation(4);
    let p = params(&fed, 3, 8);
    let x = inputs(&fed, 8);
    let all: Vec<String> = fed.signers.keys().cloned().collect();
    // Two runs of one job's round (a round run again after a restart): the survivors' signatures
    // of the first are no signatures of the second, though they name the same job, round and
    // agencies.
    let mut first = masked_round(&fed, &p, &x);
    let mut second = masked_round(&fed, &p, &x);
    let from_first: Vec<SignedStatement> = all
        .iter()
        .map(|a| {
            first
                .nodes
                .get_mut(a)
                .unwrap()
                .sign_survivors(&all, &fed.signers[a])
                .unwrap()
        })
        .collect();
    let node = second.nodes.get_mut(&all[0]).unwrap();
    node.sign_survivors(&all, &fed.signers[&all[0]]).unwrap();
    let err = node.reveal(&from_first, &fed.ca).unwrap_err();
    assert!(
        err.to_string().contains("another run of the round"),
        "{err}"
    );
    let _ = (&first.server, &second.server);
}

#[test]
fn the_threshold_is_a_majority_and_leaves_the_drop_outs_asked_for() {
    // The default: the smallest number above two thirds.
    assert_eq!(Params::threshold_for(8, 0), 6);
    assert_eq!(Params::threshold_for(3, 0), 3);
    assert_eq!(Params::threshold_for(9, 0), 7);
    // Two drop-outs of 8 leave 6; four would leave 4, not a majority: 5.
    assert_eq!(Params::threshold_for(8, 2), 6);
    assert_eq!(Params::threshold_for(8, 4), 5);
    assert_eq!(Params::threshold_for(8, 100), 5);
    for n in 3..=MAX_PARTICIPANTS {
        for d in [0, 1, 5, 300] {
            let t = Params::threshold_for(n, d);
            assert!(2 * t > n && t <= n, "{n} {d} -> {t}");
        }
    }
}
