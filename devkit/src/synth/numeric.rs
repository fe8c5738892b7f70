//! `treaty synth --kind numeric`: the numeric data of benchmark workloads W1 and W3 — 64 features
//! `f0..f63` of mixed scales and a binary label `seized` (about 10 % positive), non-IID across
//! agencies, `agency_K_train.csv` (80 %) and `agency_K_test.csv` (20 %) per agency.
//!
//! The ground truth: a latent standardised vector z ~ N(mu_k, diag(s_k)^2) per agency (a shift
//! mu_k ~ N(0, 0.35^2) and a mild spread s_k = exp(N(0, 0.15^2)) per column), the label drawn
//! from sigmoid(b0 + z.w) with w a weak background N(0, 0.15^2) plus 16 informative columns
//! N(0, 1), and b0 set by bisection so that about 10 % of a pooled sample is positive. The raw
//! features are `loc_j + scale_j g_j(z_j)` with scales from 10^-2 to 10^4 and g_j = exp(z / 2)
//! (skewed, positive, like amounts) for a quarter of the columns. The same seed writes the same
//! files, whatever the number of agencies: each agency draws from its own generator.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The number of features.
pub const FEATURES: usize = 64;

/// A generator for one purpose of one seed.
fn rng(seed: u64, stream: u64, agency: u64) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&agency.to_le_bytes());
    StdRng::from_seed(key)
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// What every agency shares: the true weights and intercept, and each column's look.
struct Truth {
    w: Vec<f64>,
    b0: f64,
    scale: Vec<f64>,
    loc: Vec<f64>,
    skewed: Vec<bool>,
}

fn shift(seed: u64, k: u64) -> Vec<f64> {
    let mut r = rng(seed, 777, k);
    (0..FEATURES).map(|_| 0.35 * normal(&mut r)).collect()
}

fn truth(seed: u64) -> Truth {
    let mut r = rng(seed, 999_999, 0);
    let mut w: Vec<f64> = (0..FEATURES).map(|_| 0.15 * normal(&mut r)).collect();
    let mut columns: Vec<usize> = (0..FEATURES).collect();
    columns.shuffle(&mut r);
    for &j in &columns[..16] {
        w[j] = normal(&mut r);
    }
    let scale: Vec<f64> = (0..FEATURES)
        .map(|_| 10f64.powf(r.random_range(-2.0..4.0)))
        .collect();
    let loc: Vec<f64> = scale
        .iter()
        .map(|s| normal(&mut r) * s * r.random_range(0.0..5.0))
        .collect();
    columns.shuffle(&mut r);
    let mut skewed = vec![false; FEATURES];
    for &j in &columns[..FEATURES / 4] {
        skewed[j] = true;
    }
    // The intercept for about 10 % positives over a pooled sample of 16 agencies.
    let mut logits = Vec::with_capacity(16 * 2000);
    for k in 0..16 {
        let mu = shift(seed, k);
        for _ in 0..2000 {
            logits.push(
                (0..FEATURES)
                    .map(|j| (normal(&mut r) + mu[j]) * w[j])
                    .sum::<f64>(),
            );
        }
    }
    let (mut lo, mut hi) = (-20.0, 20.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        let rate = logits.iter().map(|l| sigmoid(l + mid)).sum::<f64>() / logits.len() as f64;
        if rate > 0.10 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Truth {
        w,
        b0: (lo + hi) / 2.0,
        scale,
        loc,
        skewed,
    }
}

/// One agency's files.
#[derive(Debug)]
pub struct Written {
    pub train: PathBuf,
    pub test: PathBuf,
    pub positive_rate: f64,
}

/// Writes `agencies` agencies of `rows` records each into `out`.
pub fn generate(
    out: &Path,
    agencies: usize,
    rows: usize,
    seed: u64,
) -> anyhow::Result<Vec<Written>> {
    generate_first(out, agencies, rows, seed, FEATURES)
}

/// As [`generate`], with only the first `features` feature columns written (W3 takes 16):
/// the same records, drawn alike, their other columns left out of the files.
pub fn generate_first(
    out: &Path,
    agencies: usize,
    rows: usize,
    seed: u64,
    features: usize,
) -> anyhow::Result<Vec<Written>> {
    anyhow::ensure!(
        (1..=FEATURES).contains(&features),
        "the numeric generator writes 1 to {FEATURES} feature columns, not {features}"
    );
    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    let t = truth(seed);
    let header: Vec<String> = (0..features)
        .map(|j| format!("f{j}"))
        .chain(std::iter::once("seized".to_owned()))
        .collect();
    let mut written = Vec::with_capacity(agencies);
    for k in 0..agencies as u64 {
        let mu = shift(seed, k);
        let mut spread_rng = rng(seed, 555, k);
        let spread: Vec<f64> = (0..FEATURES)
            .map(|_| (0.15 * normal(&mut spread_rng)).exp())
            .collect();
        let mut r = rng(seed, 1, k);
        let mut lines = Vec::with_capacity(rows);
        let mut positives = 0usize;
        for _ in 0..rows {
            let z: Vec<f64> = (0..FEATURES)
                .map(|j| normal(&mut r) * spread[j] + mu[j])
                .collect();
            let logit = t.b0 + z.iter().zip(&t.w).map(|(a, b)| a * b).sum::<f64>();
            let y = u8::from(r.random::<f64>() < sigmoid(logit));
            positives += usize::from(y);
            let mut line = String::with_capacity(16 * features);
            for (j, &zj) in z.iter().enumerate().take(features) {
                let g = if t.skewed[j] { (0.5 * zj).exp() } else { zj };
                // Seven significant digits, as single precision keeps.
                line.push_str(&format!("{:.6e},", t.loc[j] + t.scale[j] * g));
            }
            line.push_str(&format!("{y}\n"));
            lines.push(line);
        }
        lines.shuffle(&mut r);
        let cut = (rows as f64 * 0.8).round() as usize;
        let mut paths = Vec::new();
        for (split, part) in [("train", &lines[..cut]), ("test", &lines[cut..])] {
            let path = out.join(format!("agency_{k}_{split}.csv"));
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("cannot write `{}`", path.display()))?,
            );
            writeln!(f, "{}", header.join(","))?;
            for line in part {
                f.write_all(line.as_bytes())?;
            }
            f.flush()?;
            paths.push(path);
        }
        written.push(Written {
            train: paths[0].clone(),
            test: paths[1].clone(),
            positive_rate: positives as f64 / rows.max(1) as f64,
        });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_writes_the_same_files_and_about_ten_percent_are_positive() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let wa = generate(a.path(), 3, 4000, 42).unwrap();
        let wb = generate(b.path(), 2, 4000, 42).unwrap();
        // Agencies 0 and 1 are the same whatever the number of agencies.
        for (x, y) in wa.iter().zip(&wb) {
            assert_eq!(
                std::fs::read(&x.train).unwrap(),
                std::fs::read(&y.train).unwrap()
            );
        }
        // 10 % positives over the pooled sample, agencies differing (non-IID): within a few
        // points of it each, over 3 x 4,000 records.
        let mean = wa.iter().map(|w| w.positive_rate).sum::<f64>() / 3.0;
        assert!((mean - 0.10).abs() < 0.04, "{mean}");
        let text = std::fs::read_to_string(&wa[0].test).unwrap();
        assert_eq!(text.lines().count(), 1 + 800);
        assert!(text.starts_with("f0,f1,"));
    }

    #[test]
    fn the_first_columns_are_those_of_the_whole_files() {
        let (all, first) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let whole = generate(all.path(), 2, 300, 7).unwrap();
        let part = generate_first(first.path(), 2, 300, 7, 16).unwrap();
        for (w, p) in whole.iter().zip(&part) {
            for (a, b) in [(&w.train, &p.train), (&w.test, &p.test)] {
                let (a, b) = (
                    std::fs::read_to_string(a).unwrap(),
                    std::fs::read_to_string(b).unwrap(),
                );
                assert_eq!(a.lines().count(), b.lines().count());
                for (la, lb) in a.lines().zip(b.lines()) {
                    let cells: Vec<&str> = la.split(',').collect();
                    // The first 16 cells, then the label (the last cell).
                    let expected = [&cells[..16], &cells[cells.len() - 1..]].concat().join(",");
                    assert_eq!(lb, expected);
                }
            }
        }
        assert!(generate_first(first.path(), 1, 10, 7, 65).is_err());
        assert!(generate_first(first.path(), 1, 10, 7, 0).is_err());
    }
}
