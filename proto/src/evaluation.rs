//! What a noisy evaluation (`treaty.v1.Evaluation`) says: metrics derived from counts, which
//! nodes release under DP instead of the metrics themselves. Counts of several agencies add up,
//! so the federation's metrics come from the pooled counts, not from averages of averages.

use std::collections::HashMap;

use crate::v1::Evaluation;

/// Bins of predicted probabilities (binary) or of errors (regression).
pub const BINS: usize = 20;

/// The element-wise sum of evaluations of the same kind and shape (`None` if they differ).
pub fn pool(evaluations: &[&Evaluation]) -> Option<Evaluation> {
    let first = evaluations.first()?;
    let mut out = Evaluation {
        counts: vec![0.0; first.counts.len()],
        kind: first.kind.clone(),
        laplace_scale: 0.0,
        bins: first.bins,
        error_bound: first.error_bound,
    };
    let mut variance = 0.0;
    for e in evaluations {
        if e.kind != first.kind || e.counts.len() != first.counts.len() {
            return None;
        }
        for (acc, c) in out.counts.iter_mut().zip(&e.counts) {
            *acc += c;
        }
        variance += 2.0 * e.laplace_scale * e.laplace_scale;
    }
    // The pooled noise is no longer Laplace; its standard deviation, over sqrt(2), is kept.
    out.laplace_scale = (variance / 2.0).sqrt();
    Some(out)
}

/// The metrics of an evaluation, named as nodes name them without DP (`test_accuracy`, ...),
/// with negative noisy counts read as zero.
pub fn metrics(e: &Evaluation) -> HashMap<String, f64> {
    let c: Vec<f64> = e.counts.iter().map(|v| v.max(0.0)).collect();
    let mut out = HashMap::new();
    let total: f64 = c.iter().sum();
    if total <= 0.0 {
        return out;
    }
    out.insert("test_examples".into(), total);
    match e.kind.as_str() {
        "binary" => {
            let b = e.bins as usize;
            if c.len() != 2 * b || b == 0 {
                return HashMap::new();
            }
            let (neg, pos) = c.split_at(b);
            // Accuracy at threshold 1/2: negatives below it, positives at or above it.
            let half = b / 2;
            let correct: f64 = neg[..half].iter().sum::<f64>() + pos[half..].iter().sum::<f64>();
            out.insert("test_accuracy".into(), correct / total);
            // AUC: a positive beats every negative in a lower bin and ties those in its own.
            let (p_total, n_total): (f64, f64) = (pos.iter().sum(), neg.iter().sum());
            if p_total > 0.0 && n_total > 0.0 {
                let mut below = 0.0;
                let mut wins = 0.0;
                for i in 0..b {
                    wins += pos[i] * (below + neg[i] / 2.0);
                    below += neg[i];
                }
                out.insert("test_auc".into(), wins / (p_total * n_total));
            }
            // Log loss with each probability at its bin's centre.
            let centre = |i: usize| ((i as f64 + 0.5) / b as f64).clamp(1e-15, 1.0 - 1e-15);
            let loss: f64 = (0..b)
                .map(|i| -pos[i] * centre(i).ln() - neg[i] * (1.0 - centre(i)).ln())
                .sum();
            out.insert("test_log_loss".into(), loss / total);
        }
        "multinomial" => {
            let k = e.bins as usize;
            if c.len() != k * k || k == 0 {
                return HashMap::new();
            }
            let correct: f64 = (0..k).map(|i| c[i * k + i]).sum();
            out.insert("test_accuracy".into(), correct / total);
        }
        "regression" => {
            let b = e.bins as usize;
            if c.len() != b || b == 0 {
                return HashMap::new();
            }
            let width = e.error_bound / b as f64;
            let centre = |i: usize| (i as f64 + 0.5) * width;
            let squares: f64 = (0..b).map(|i| c[i] * centre(i) * centre(i)).sum();
            let absolute: f64 = (0..b).map(|i| c[i] * centre(i)).sum();
            out.insert("test_rmse".into(), (squares / total).sqrt());
            out.insert("test_mae".into(), absolute / total);
        }
        _ => return HashMap::new(),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_metrics_from_score_histograms() {
        // 4 bins; negatives in bins 0 and 1 (below 1/2), positives in bins 1 and 3.
        let e = Evaluation {
            counts: vec![3.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 2.0],
            kind: "binary".into(),
            laplace_scale: 0.0,
            bins: 4,
            error_bound: 0.0,
        };
        let m = metrics(&e);
        // Correct: 4 negatives below 1/2, 2 positives at or above: 6 of 8.
        assert_eq!(m["test_accuracy"], 0.75);
        // Pairs 2 x 4... positives in bin 1 beat 3 negatives and tie 1: 2 * 3.5 = 7; positives in
        // bin 3 beat all 4: 2 * 4 = 8; AUC = 15 / 16.
        assert!((m["test_auc"] - 15.0 / 16.0).abs() < 1e-12);
        assert_eq!(m["test_examples"], 8.0);
        let pooled = pool(&[&e, &e]).unwrap();
        assert_eq!(metrics(&pooled)["test_accuracy"], 0.75);
    }
}
