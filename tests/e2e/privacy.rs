//! `treaty privacy epsilon|noise`, the planning commands of the accountants.

use std::process::Command;

use crate::common::{TREATY, treaty_json};

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    treaty_json(&all)
}

/// Abadi et al.'s example: q = 0.01, sigma = 4, 10,000 steps, delta 1e-5.
const ABADI: &[&str] = &[
    "privacy",
    "epsilon",
    "--sampling-rate",
    "0.01",
    "--noise-multiplier",
    "4",
    "--steps",
    "10000",
    "--delta",
    "1e-5",
];

/// The figure a `--json` answer gives for `accountant` in its `accountants` list, under `key`.
fn by(v: &serde_json::Value, accountant: &str, key: &str) -> f64 {
    v["accountants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["accountant"].as_str().unwrap().starts_with(accountant))
        .unwrap_or_else(|| panic!("no {accountant} in {v}"))[key]
        .as_f64()
        .unwrap()
}

#[test]
fn epsilon_of_abadi_et_al_and_the_noise_it_needs() {
    // dp_accounting 0.6.0 gives 1.0354900660362436 here with its RDP accountant (default
    // orders) and 0.9469993059852784 with its PLD accountant; Abadi et al. 2016's moments
    // accountant gave about 1.26. The ledger takes the tighter, PLD; RDP is shown beside it.
    let v = json(ABADI);
    assert!(
        (v["epsilon"].as_f64().unwrap() - 0.9469993059852784).abs() < 2e-4,
        "{v}"
    );
    assert_eq!(v["delta"].as_f64(), Some(1e-5));
    assert!(v["accountant"].as_str().unwrap().starts_with("PLD"), "{v}");
    assert_eq!(by(&v, "PLD", "epsilon"), v["epsilon"].as_f64().unwrap());
    assert!(
        (by(&v, "RDP", "epsilon") - 1.0354900660362436).abs() < 1e-6,
        "{v}"
    );
    assert_eq!(v["accountants"].as_array().unwrap().len(), 2, "{v}");
    // The noise for exactly that epsilon is the 4 we started from, and less by PLD alone.
    let v = json(&[
        "privacy",
        "noise",
        "--sampling-rate",
        "0.01",
        "--steps",
        "10000",
        "--epsilon",
        "1.0354900660362436",
        "--delta",
        "1e-5",
    ]);
    // RDP alone needs the 4 we started from; PLD, which the ledger calibrates by, less.
    let sigma = v["noise_multiplier"].as_f64().unwrap();
    assert!(
        (by(&v, "RDP", "noise_multiplier") - 4.0).abs() < 1e-3,
        "{v}"
    );
    let pld = by(&v, "PLD", "noise_multiplier");
    assert!(pld < 3.8 && pld > 3.5, "{v}");
    assert!((sigma / pld - 1.0).abs() < 1e-5, "{v}");
    // Full batch: zCDP bounds it, and PLD, the ledger's, is the Gaussian's exact curve (the
    // analytic Gaussian of Balle and Wang 2018: 20 steps of sigma 5 are one Gaussian of sigma
    // 5 / sqrt(20)).
    let v = json(&[
        "privacy",
        "epsilon",
        "--sampling-rate",
        "1",
        "--noise-multiplier",
        "5",
        "--steps",
        "20",
        "--delta",
        "1e-5",
    ]);
    assert!(v["accountant"].as_str().unwrap().starts_with("PLD"), "{v}");
    // dp_accounting's RDP over its order grid gives 4.161624306053592; zCDP optimises over every
    // order, so it is at most that, and close.
    let e = by(&v, "zCDP", "epsilon");
    assert!(e <= 4.161624306053592 && e > 4.15, "{v}");
    // The exact curve at the ledger's epsilon is delta: Phi(1/(2s) - e s) - e^e Phi(-1/(2s) - e s).
    let e = v["epsilon"].as_f64().unwrap();
    let s = 5.0 / 20f64.sqrt();
    let phi = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
    let delta = phi(0.5 / s - e * s) - e.exp() * phi(-0.5 / s - e * s);
    assert!((delta / 1e-5 - 1.0).abs() < 1e-6, "{e}: {delta}");
}

#[test]
fn bad_arguments_are_named() {
    let out = Command::new(TREATY)
        .args([
            "privacy",
            "epsilon",
            "--sampling-rate",
            "1.5",
            "--noise-multiplier",
            "1",
            "--steps",
            "10",
            "--delta",
            "1e-5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sampling-rate 1.5 must be in (0, 1]"));
}

#[test]
fn a_reader_that_stops_reading_ends_a_command_quietly() {
    // The pipe's reading end is closed before the command writes: `println!` would panic on
    // the write; the command ends with status 0 and says nothing on its error output.
    let mut child = Command::new(TREATY)
        .args(ABADI)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
