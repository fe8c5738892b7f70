//! Synthetic customs declarations for the demo: each agency's records drawn from one known
//! logistic ground truth, with agency-specific shifts of the features (non-IID), written as CSV
//! with a header and split into train and test files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The feature columns, already on comparable scales.
pub const FEATURES: [&str; 8] = [
    "declared_value",
    "weight_per_value",
    "route_risk",
    "shipper_history",
    "transit_days",
    "document_mismatch",
    "container_age",
    "port_inspection_rate",
];

/// The label column: 1 when the shipment was seized.
pub const LABEL: &str = "seized";

/// The ground truth: P(seized) = sigmoid(BIAS + x · WEIGHTS).
pub const WEIGHTS: [f64; 8] = [0.8, -0.5, 1.2, -0.9, 0.4, 1.5, 0.0, 0.3];
pub const BIAS: f64 = -2.2;

fn normal(rng: &mut StdRng) -> f64 {
    // Box–Muller: two uniforms on (0, 1] give one standard normal.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Writes `<id>_train.csv` and `<id>_test.csv` for agency number `index` into `dir`.
pub fn write_agency(
    dir: &Path,
    id: &str,
    index: usize,
    train_rows: usize,
    test_rows: usize,
    seed: u64,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Each agency sees different routes and ports: a shift of the feature means.
    let shift: Vec<f64> = (0..FEATURES.len())
        .map(|_| 0.6 * normal(&mut rng))
        .collect();
    let mut paths = Vec::new();
    for (split, rows) in [("train", train_rows), ("test", test_rows)] {
        let path = dir.join(format!("{id}_{split}.csv"));
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "{},{LABEL}", FEATURES.join(","))?;
        for _ in 0..rows {
            let x: Vec<f64> = shift.iter().map(|s| s + normal(&mut rng)).collect();
            let z = BIAS + x.iter().zip(WEIGHTS).map(|(a, b)| a * b).sum::<f64>();
            let p = 1.0 / (1.0 + (-z).exp());
            let y = u8::from(rng.random::<f64>() < p);
            let cells: Vec<String> = x.iter().map(|v| format!("{v:.5}")).collect();
            writeln!(out, "{},{y}", cells.join(","))?;
        }
        out.flush()?;
        paths.push(path);
    }
    Ok((paths[0].clone(), paths[1].clone()))
}
