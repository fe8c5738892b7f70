//! Evaluation of a model on labelled examples: accuracy, ROC AUC and log loss for classifiers,
//! RMSE and MAE for regression.

use std::collections::BTreeMap;

use ndarray::ArrayView1;

use crate::data::Examples;
use crate::model::{Architecture, Model};

/// The area under the ROC curve of `scores` for binary `labels` (1 = positive): the probability
/// that a random positive scores above a random negative, ties counting one half
/// (Mann–Whitney). `None` when one class is absent.
pub fn roc_auc(scores: ArrayView1<'_, f64>, labels: ArrayView1<'_, f64>) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|&&y| y >= 0.5).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Sum of the (average, 1-based) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum +=
            order[i..=j].iter().filter(|&&k| labels[k] >= 0.5).count() as f64 * average_rank;
        i = j + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// The metrics of `model` on `data`, by name.
pub fn evaluate(model: &Model, data: &Examples) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if data.is_empty() {
        return out;
    }
    let n = data.len() as f64;
    let out_put = model.predict(data.x.view());
    match model.kind {
        Architecture::Logistic | Architecture::Mlp { .. } => {
            let p = out_put.column(0);
            let correct = p
                .iter()
                .zip(data.y.iter())
                .filter(|&(&p, &y)| (p >= 0.5) == (y >= 0.5))
                .count();
            let log_loss = p
                .iter()
                .zip(data.y.iter())
                .map(|(&p, &y)| {
                    let p = p.clamp(1e-15, 1.0 - 1e-15);
                    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
                })
                .sum::<f64>()
                / n;
            out.insert("accuracy".into(), correct as f64 / n);
            out.insert("log_loss".into(), log_loss);
            if let Some(auc) = roc_auc(p, data.y.view()) {
                out.insert("auc".into(), auc);
            }
        }
        Architecture::Multinomial { .. } => {
            let mut correct = 0usize;
            let mut log_loss = 0.0;
            for (row, &y) in out_put.rows().into_iter().zip(data.y.iter()) {
                let c = y as usize;
                let best = row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
                correct += usize::from(best == c);
                log_loss -= row[c].clamp(1e-15, 1.0).ln();
            }
            out.insert("accuracy".into(), correct as f64 / n);
            out.insert("log_loss".into(), log_loss / n);
        }
        Architecture::Linear => {
            let errors: Vec<f64> = out_put
                .column(0)
                .iter()
                .zip(data.y.iter())
                .map(|(p, y)| p - y)
                .collect();
            out.insert(
                "rmse".into(),
                (errors.iter().map(|e| e * e).sum::<f64>() / n).sqrt(),
            );
            out.insert(
                "mae".into(),
                errors.iter().map(|e| e.abs()).sum::<f64>() / n,
            );
        }
    }
    out
}

/// The exact counts of a model's evaluation (before noise), in the layout of
/// `treaty_proto::evaluation`: score histograms by class (binary), the confusion matrix
/// (multinomial), or a histogram of absolute errors on [0, error_bound] (regression).
/// A record `readable` marks unreadable counts for nothing, after the same work as any other.
pub(crate) fn evaluation_counts(
    model: &Model,
    data: &Examples,
    readable: Option<&[bool]>,
    error_bound: f64,
) -> treaty_proto::v1::Evaluation {
    use treaty_proto::evaluation::BINS;
    let out = model.predict(data.x.view());
    let weight = |i: usize| match readable {
        Some(r) if !r[i] => 0.0,
        _ => 1.0,
    };
    let (kind, bins, counts) = match model.kind {
        Architecture::Logistic | Architecture::Mlp { .. } => {
            let mut counts = vec![0.0; 2 * BINS];
            for (i, (p, y)) in out.column(0).iter().zip(data.y.iter()).enumerate() {
                let bin = ((p * BINS as f64) as usize).min(BINS - 1);
                counts[bin + if *y >= 0.5 { BINS } else { 0 }] += weight(i);
            }
            ("binary", BINS, counts)
        }
        Architecture::Multinomial { classes } => {
            let mut counts = vec![0.0; classes * classes];
            for (i, (row, y)) in out.rows().into_iter().zip(data.y.iter()).enumerate() {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
                counts[(*y as usize).min(classes - 1) * classes + best] += weight(i);
            }
            ("multinomial", classes, counts)
        }
        Architecture::Linear => {
            let mut counts = vec![0.0; BINS];
            for (i, (p, y)) in out.column(0).iter().zip(data.y.iter()).enumerate() {
                let bin = (((p - y).abs() / error_bound * BINS as f64) as usize).min(BINS - 1);
                counts[bin] += weight(i);
            }
            ("regression", BINS, counts)
        }
    };
    treaty_proto::v1::Evaluation {
        counts,
        kind: kind.into(),
        laplace_scale: 0.0,
        bins: bins as u32,
        error_bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// AUC by its definition: over every (positive, negative) pair, 1 when the positive scores
    /// higher, 1/2 on a tie.
    fn auc_by_pairs(scores: &[f64], labels: &[f64]) -> f64 {
        let (mut sum, mut pairs) = (0.0, 0.0);
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if labels[i] == 1.0 && labels[j] == 0.0 {
                    pairs += 1.0;
                    sum += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        sum / pairs
    }

    #[test]
    fn auc_agrees_with_the_pairwise_definition() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4, 0.65];
        let labels = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let fast = roc_auc(ArrayView1::from(&scores), ArrayView1::from(&labels)).unwrap();
        assert!((fast - auc_by_pairs(&scores, &labels)).abs() < 1e-12);
        // Worked by hand: 4 positives x 5 negatives = 20 pairs, 14 won outright and 2 tied,
        // so (14 + 2/2) / 20.
        assert!((fast - 0.75).abs() < 1e-12, "{fast}");
        assert_eq!(
            roc_auc(array![0.1, 0.2].view(), array![1.0, 1.0].view()),
            None
        );
    }
}
