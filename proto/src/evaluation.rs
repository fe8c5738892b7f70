//! What a noisy evaluation (`treaty.v1.Evaluation`) says: metrics derived from counts, which
//! nodes release under DP instead of the metrics themselves. Counts of several agencies add up,
//! so the federation's metrics come from the pooled counts, not from averages of averages.
//! [`intervals`] says how far the noise may have moved each metric, and when it makes one
//! meaningless.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};

use crate::EnumError;
use crate::schema;
use crate::v1::{Evaluation, MetricInterval, ModelKind, TrainingSpec};

/// Redraws of the noise behind an interval.
const DRAWS: usize = 1000;

/// Bins of predicted probabilities (binary) or of errors (regression).
pub const BINS: usize = 20;

/// What an evaluation of a training spec's model looks like: its kind, its `bins` and its
/// number of counts.
pub fn shape(spec: &TrainingSpec) -> Result<(&'static str, u32, usize), EnumError> {
    let bins = BINS as u32;
    Ok(match schema::model_kind(spec)? {
        ModelKind::LogisticRegression | ModelKind::Mlp => ("binary", bins, 2 * BINS),
        ModelKind::MultinomialLogisticRegression => {
            let k = schema::classes(&spec.schema.clone().unwrap_or_default())?.len();
            ("multinomial", k as u32, k * k)
        }
        ModelKind::LinearRegression => ("regression", bins, BINS),
        // `model_kind` refuses it.
        ModelKind::Unspecified => ("", 0, 0),
    })
}

/// Checks a node's evaluation against the shape its job's model gives ([`shape`]): the same
/// kind, bins and number of counts, finite counts and a finite, non-negative noise scale.
pub fn check(e: &Evaluation, (kind, bins, width): (&str, u32, usize)) -> Result<(), String> {
    if e.kind != kind || e.bins != bins || e.counts.len() != width {
        return Err(format!(
            "the evaluation is `{}` of {} counts ({} bins), where the job's model gives `{kind}` of {width} ({bins} bins)",
            e.kind,
            e.counts.len(),
            e.bins
        ));
    }
    if !e.counts.iter().all(|c| c.is_finite()) {
        return Err("the evaluation has a count that is not finite".into());
    }
    if !(e.laplace_scale.is_finite() && e.laplace_scale >= 0.0) {
        return Err(format!(
            "the evaluation's noise scale {} is not a finite, non-negative number",
            e.laplace_scale
        ));
    }
    if kind == "regression" && !(e.error_bound.is_finite() && e.error_bound > 0.0) {
        return Err(format!(
            "the evaluation's error bound {} is not a positive number",
            e.error_bound
        ));
    }
    Ok(())
}

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

/// The metrics an evaluation can give, in the order of [`Values`].
const NAMES: [&str; 6] = [
    "test_examples",
    "test_accuracy",
    "test_auc",
    "test_log_loss",
    "test_rmse",
    "test_mae",
];

/// The value of each of [`NAMES`], when the evaluation gives it.
type Values = [Option<f64>; NAMES.len()];

/// The metrics of an evaluation, named as nodes name them without DP (`test_accuracy`, ...).
/// Each is a function of sums of the noisy counts as released, negative ones included: the
/// noise has mean zero, so the sums estimate the true sums without bias (reading a negative
/// count as zero would bias every rare bin upwards, and accuracy downwards). A ratio is then
/// kept within its range, and nothing is computed from a total that is not positive.
pub fn metrics(e: &Evaluation) -> HashMap<String, f64> {
    NAMES
        .iter()
        .zip(values(e, &e.counts))
        .filter_map(|(name, v)| v.map(|v| ((*name).to_owned(), v)))
        .collect()
}

/// The metrics of `e`'s kind and shape computed from counts `c`.
fn values(e: &Evaluation, c: &[f64]) -> Values {
    values_with(e, c, &log_centres(e))
}

/// For a binary evaluation, the natural logarithms of each bin centre's probability and of its
/// complement (its log loss takes each probability at its bin's centre); none for other kinds.
/// The same for every redraw of an evaluation: [`intervals`] computes them once, not 40 a draw.
fn log_centres(e: &Evaluation) -> Vec<(f64, f64)> {
    if e.kind != "binary" {
        return Vec::new();
    }
    let b = e.bins as usize;
    (0..b)
        .map(|i| {
            let p = ((i as f64 + 0.5) / b as f64).clamp(1e-15, 1.0 - 1e-15);
            (p.ln(), (1.0 - p).ln())
        })
        .collect()
}

/// [`values`] with `e`'s [`log_centres`] given.
fn values_with(e: &Evaluation, c: &[f64], logs: &[(f64, f64)]) -> Values {
    let mut out: Values = [None; NAMES.len()];
    let total: f64 = c.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return out;
    }
    out[0] = Some(total);
    match e.kind.as_str() {
        "binary" => {
            let b = e.bins as usize;
            if c.len() != 2 * b || b == 0 {
                return [None; NAMES.len()];
            }
            let (neg, pos) = c.split_at(b);
            // Accuracy at threshold 1/2: negatives below it, positives at or above it.
            let half = b / 2;
            let correct: f64 = neg[..half].iter().sum::<f64>() + pos[half..].iter().sum::<f64>();
            out[1] = Some((correct / total).clamp(0.0, 1.0));
            // AUC: a positive beats every negative in a lower bin and ties those in its own.
            let (p_total, n_total): (f64, f64) = (pos.iter().sum(), neg.iter().sum());
            if p_total > 0.0 && n_total > 0.0 {
                let mut below = 0.0;
                let mut wins = 0.0;
                for i in 0..b {
                    wins += pos[i] * (below + neg[i] / 2.0);
                    below += neg[i];
                }
                out[2] = Some((wins / (p_total * n_total)).clamp(0.0, 1.0));
            }
            // Log loss with each probability at its bin's centre.
            if logs.len() == b {
                let loss: f64 = (0..b)
                    .map(|i| -pos[i] * logs[i].0 - neg[i] * logs[i].1)
                    .sum();
                out[3] = Some((loss / total).max(0.0));
            }
        }
        "multinomial" => {
            let k = e.bins as usize;
            if c.len() != k * k || k == 0 {
                return [None; NAMES.len()];
            }
            let correct: f64 = (0..k).map(|i| c[i * k + i]).sum();
            out[1] = Some((correct / total).clamp(0.0, 1.0));
        }
        "regression" => {
            let b = e.bins as usize;
            if c.len() != b || b == 0 {
                return [None; NAMES.len()];
            }
            let width = e.error_bound / b as f64;
            let centre = |i: usize| (i as f64 + 0.5) * width;
            let squares: f64 = (0..b).map(|i| c[i] * centre(i) * centre(i)).sum();
            let absolute: f64 = (0..b).map(|i| c[i] * centre(i)).sum();
            out[4] = Some((squares / total).max(0.0).sqrt());
            out[5] = Some((absolute / total).max(0.0));
        }
        _ => return [None; NAMES.len()],
    }
    out
}

/// The intervals of a round's evaluations ([`intervals`]): of each evaluation's own metrics,
/// and of the metrics of them all pooled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Intervals {
    /// One map per evaluation, in order.
    pub each: Vec<HashMap<String, MetricInterval>>,
    /// Of the pooled evaluation ([`pool`]).
    pub pooled: HashMap<String, MetricInterval>,
}

/// The 95 % interval of each metric of each evaluation and of them all pooled (see [`pool`]),
/// due to their Laplace noise: the central 95 % of the metrics of the released counts with
/// fresh noise of each evaluation's scale added, over many draws (a parametric bootstrap:
/// post-processing of the released counts, no privacy cost, and the same counts always give the
/// same intervals; a pooled draw adds up the evaluations' draws). A metric is flagged
/// meaningless when its interval is wider than a fifth of its range (accuracy, AUC), or than
/// the metric itself (log loss, RMSE, MAE, the number of test examples), or when the noise
/// often leaves nothing to compute it from. Evaluations of different shapes give none.
///
/// Each evaluation's draws come from a generator of its own (seeded by its place in the list)
/// and are summarised as soon as they are made, so memory holds one evaluation's draws and the
/// pooled sums of every draw, whatever the number of evaluations (a round of 1,000 agencies
/// held 1,000 x 1,000 draws before). The evaluations are redrawn in chunks of [`CHUNK`] over
/// the machine's cores, and the chunks' pooled sums added in their order: the intervals do not
/// depend on the number of cores.
pub fn intervals(evaluations: &[&Evaluation]) -> Intervals {
    let Some(pooled) = pool(evaluations) else {
        return Intervals::default();
    };
    let width = pooled.counts.len();
    let chunks: Vec<(usize, &[&Evaluation])> = evaluations
        .chunks(CHUNK)
        .enumerate()
        .map(|(k, chunk)| (k * CHUNK, chunk))
        .collect();
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, chunks.len().max(1));
    let mut done: Vec<Option<Redrawn>> = vec![None; chunks.len()];
    if threads > 1 {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let chunks = &chunks;
                    scope.spawn(move || {
                        (t..chunks.len())
                            .step_by(threads)
                            .map(|k| (k, redraw(chunks[k].0, chunks[k].1, width)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for worker in workers {
                // A thread that failed leaves its chunks to be redrawn below.
                for (k, redrawn) in worker.join().unwrap_or_default() {
                    done[k] = Some(redrawn);
                }
            }
        });
    }
    let mut each = Vec::with_capacity(evaluations.len());
    let mut sums = vec![0.0; DRAWS * width];
    for (slot, (first, chunk)) in done.into_iter().zip(&chunks) {
        let redrawn = slot.unwrap_or_else(|| redraw(*first, chunk, width));
        each.extend(redrawn.each);
        for (total, part) in sums.iter_mut().zip(&redrawn.sums) {
            *total += part;
        }
    }
    let logs = log_centres(&pooled);
    let pooled_draws: Vec<Values> = sums
        .chunks(width.max(1))
        .map(|sum| values_with(&pooled, sum, &logs))
        .collect();
    Intervals {
        each,
        pooled: summarise(&values(&pooled, &pooled.counts), &pooled_draws),
    }
}

/// Evaluations redrawn together on one thread.
const CHUNK: usize = 64;

/// The generators' common seed; an evaluation's is this plus its place in the list.
const SEED: u64 = 0x7472_6561_7479;

/// A chunk of evaluations redrawn: each one's intervals, and the sums of their redrawn counts,
/// draw after draw (`DRAWS` x the counts' width).
#[derive(Debug, Clone, Default)]
struct Redrawn {
    each: Vec<HashMap<String, MetricInterval>>,
    sums: Vec<f64>,
}

/// Redraws `chunk`, whose first evaluation is the `first`-th of the list, `DRAWS` times.
fn redraw(first: usize, chunk: &[&Evaluation], width: usize) -> Redrawn {
    let mut out = Redrawn {
        each: Vec::with_capacity(chunk.len()),
        sums: vec![0.0; DRAWS * width],
    };
    let mut redrawn = vec![0.0; width];
    let mut draws: Vec<Values> = Vec::with_capacity(DRAWS);
    for (i, e) in chunk.iter().enumerate() {
        // A fast generator, not a cryptographic one: the draws are post-processing of released
        // counts, and only their distribution matters.
        let mut rng = rand::rngs::SmallRng::seed_from_u64(SEED.wrapping_add((first + i) as u64));
        let mut laplace = Laplace::new(e.laplace_scale);
        let logs = log_centres(e);
        draws.clear();
        for sum in out.sums.chunks_mut(width.max(1)) {
            for ((r, c), s) in redrawn.iter_mut().zip(&e.counts).zip(sum) {
                *r = c + laplace.draw(&mut rng);
                *s += *r;
            }
            draws.push(values_with(e, &redrawn, &logs));
        }
        out.each
            .push(summarise(&values_with(e, &e.counts, &logs), &draws));
    }
    out
}

/// Each estimated metric's interval over the draws.
fn summarise(estimate: &Values, draws: &[Values]) -> HashMap<String, MetricInterval> {
    let mut out = HashMap::new();
    for (k, name) in NAMES.iter().enumerate() {
        let Some(estimate) = estimate[k] else {
            continue;
        };
        let mut values: Vec<f64> = draws.iter().filter_map(|d| d[k]).collect();
        // The order statistics of the 2.5 % and 97.5 % points, by selection (a sort of every
        // draw was a twentieth of the intervals' time).
        let mut at = |q: f64| {
            let i = (q * (values.len().saturating_sub(1)) as f64).round() as usize;
            match i < values.len() {
                true => *values.select_nth_unstable_by(i, f64::total_cmp).1,
                false => f64::NAN,
            }
        };
        let (low, high) = (at(0.025), at(0.975));
        let width = high - low;
        let wide = match *name {
            "test_accuracy" | "test_auc" => width > 0.2,
            _ => width > estimate.abs(),
        };
        // Draws where the counts left nothing to compute the metric from.
        let sparse = values.len() < draws.len() * 95 / 100;
        out.insert(
            (*name).to_owned(),
            MetricInterval {
                low,
                high,
                meaningless: wide || sparse || !width.is_finite(),
            },
        );
    }
    out
}

/// Metrics for people, sorted by name: `name=value`, a count of examples as `name~value` (a
/// noisy count, whole), each with its interval when it has one (`[low, high]`), and
/// `(meaningless: noise)` when the noise makes it so.
pub fn describe(
    metrics: &HashMap<String, f64>,
    intervals: &HashMap<String, MetricInterval>,
) -> String {
    let mut names: Vec<&String> = metrics.keys().collect();
    names.sort();
    let shown: Vec<String> = names
        .into_iter()
        .map(|name| {
            let count = name.ends_with("_examples");
            let number = |v: f64| {
                if count {
                    format!("{v:.0}")
                } else {
                    format!("{v:.4}")
                }
            };
            let value = metrics[name];
            let mut text = if count {
                format!("{name}~{}", number(value))
            } else {
                format!("{name}={}", number(value))
            };
            if let Some(i) = intervals.get(name) {
                text.push_str(&format!(" [{}, {}]", number(i.low), number(i.high)));
                if i.meaningless {
                    text.push_str(" (meaningless: noise)");
                }
            }
            text
        })
        .collect();
    shown.join(" ")
}

/// Draws of Laplace noise of one scale: an exponential of mean `scale` (the ziggurat's, which
/// spares the logarithm of the inverse CDF) with a random sign, the signs taken 64 at a time
/// from one output of the generator.
struct Laplace {
    scale: f64,
    signs: u64,
    left: u32,
}

impl Laplace {
    fn new(scale: f64) -> Laplace {
        Laplace {
            scale,
            signs: 0,
            left: 0,
        }
    }

    fn draw(&mut self, rng: &mut impl Rng) -> f64 {
        if self.scale <= 0.0 {
            return 0.0;
        }
        if self.left == 0 {
            self.signs = rng.next_u64();
            self.left = u64::BITS;
        }
        let magnitude: f64 = self.scale * rng.sample::<f64, _>(rand_distr::Exp1);
        // The sign bit set from the next random bit, without a branch the processor would
        // mispredict half the time.
        let sign = (self.signs & 1) << 63;
        self.signs >>= 1;
        self.left -= 1;
        f64::from_bits(magnitude.to_bits() ^ sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary evaluation of 4 bins per class with these counts and noise scale.
    fn binary(counts: [f64; 8], laplace_scale: f64) -> Evaluation {
        Evaluation {
            counts: counts.to_vec(),
            kind: "binary".into(),
            laplace_scale,
            bins: 4,
            error_bound: 0.0,
        }
    }

    /// The evaluation of the two tests below, its accuracy, and the accuracy's standard
    /// deviation under its noise by the delta method: accuracy = C / T, C the 4 correct counts
    /// (negatives below 1/2, positives above), T all 8, each with Laplace noise of variance
    /// 2 b^2, so Var(acc) = 2 b^2 / T^2 (4 (1 - acc)^2 + 4 acc^2): the correct counts move both
    /// C and T, the wrong ones T alone.
    fn delta_method_case() -> (Evaluation, f64, f64) {
        let b = 20.0;
        let e = binary([400.0, 300.0, 100.0, 50.0, 60.0, 90.0, 500.0, 500.0], b);
        let (c, t) = (400.0 + 300.0 + 500.0 + 500.0, 2000.0);
        let acc: f64 = c / t;
        let sd = (2.0 * b * b / (t * t) * (4.0 * (1.0 - acc).powi(2) + 4.0 * acc * acc)).sqrt();
        (e, acc, sd)
    }

    /// Half an interval's width.
    fn half(i: &MetricInterval) -> f64 {
        (i.high - i.low) / 2.0
    }

    #[test]
    fn an_accuracy_interval_matches_the_delta_method() {
        let (e, acc, sd) = delta_method_case();
        let i = &intervals(&[&e]).pooled["test_accuracy"];
        assert!(i.low < acc && acc < i.high && !i.meaningless, "{i:?}");
        // A 95 % interval is 1.96 standard deviations each side. One interval's half-width
        // varies by some 4 % from one generator to another (1,000 draws), so the test takes
        // the mean over 64 evaluations, each redrawn with a generator of its own; a sum of 8
        // Laplace draws has heavier tails than a normal, some 3 % wider at 95 %.
        let each = intervals(&vec![&e; 64]).each;
        let mean = each.iter().map(|m| half(&m["test_accuracy"])).sum::<f64>() / 64.0;
        assert!((mean / (1.96 * sd) - 1.0).abs() < 0.08, "{mean} vs sd {sd}");
        // Pooling two agencies' counts with the same noise each: the interval narrows by
        // sqrt(2) (counts and noise variances both double).
        let two = &intervals(&[&e, &e]).pooled["test_accuracy"];
        assert!(
            (half(two) * 2f64.sqrt() / (1.96 * sd) - 1.0).abs() < 0.15,
            "{two:?} vs sd {sd}"
        );
    }

    #[test]
    fn accuracy_from_noisy_counts_is_unbiased_even_with_empty_bins() {
        // Most bins empty, as in a confident model's histogram: the true accuracy is
        // (500 + 300) / (500 + 20 + 10 + 300) = 800 / 830.
        let truth = [500.0, 0.0, 0.0, 20.0, 10.0, 0.0, 0.0, 300.0];
        let exact = 800.0 / 830.0;
        assert_eq!(metrics(&binary(truth, 0.0))["test_accuracy"], exact);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut laplace = Laplace::new(8.0);
        let n = 20_000;
        let mean = (0..n)
            .map(|_| {
                let noisy: Vec<f64> = truth.iter().map(|c| c + laplace.draw(&mut rng)).collect();
                let mut e = binary(truth, 8.0);
                e.counts = noisy;
                metrics(&e)["test_accuracy"]
            })
            .sum::<f64>()
            / n as f64;
        // Reading negative counts as zero would add about 8 / 2 to each of the 4 empty bins'
        // expected count, 2 of them wrong (808 / 846): a bias of about -0.009 here. The raw sums have
        // none beyond the ratio's second-order term.
        assert!((mean - exact).abs() < 0.001, "{mean} vs {exact}");
    }

    #[test]
    fn noise_larger_than_the_counts_makes_every_metric_meaningless() {
        let e = binary([3.0, 1.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0], 40.0);
        let all = intervals(&[&e]).pooled;
        assert!(!all.is_empty());
        assert!(all.values().all(|i| i.meaningless), "{all:?}");
        let exact = intervals(&[&binary([3.0, 1.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0], 0.0)]).pooled;
        assert!(
            exact.values().all(|i| i.low == i.high && !i.meaningless),
            "{exact:?}"
        );
    }

    #[test]
    fn metrics_are_described_with_their_intervals_and_meaninglessness() {
        let metrics = HashMap::from([
            ("test_accuracy".to_owned(), 0.84123),
            ("test_examples".to_owned(), 16281.4),
            ("spent_epsilon".to_owned(), 0.5),
        ]);
        let intervals = HashMap::from([
            (
                "test_accuracy".to_owned(),
                MetricInterval {
                    low: 0.5,
                    high: 0.99,
                    meaningless: true,
                },
            ),
            (
                "test_examples".to_owned(),
                MetricInterval {
                    low: 16100.2,
                    high: 16400.7,
                    meaningless: false,
                },
            ),
        ]);
        assert_eq!(
            describe(&metrics, &intervals),
            "spent_epsilon=0.5000 test_accuracy=0.8412 [0.5000, 0.9900] (meaningless: noise) test_examples~16281 [16100, 16401]"
        );
    }

    #[test]
    fn an_evaluation_of_another_shape_or_with_bad_figures_is_refused() {
        let good = binary([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 2.0);
        let shape = ("binary", 4, 8);
        assert_eq!(check(&good, shape), Ok(()));
        let mut wide = good.clone();
        wide.counts.push(1.0);
        let mut nan = good.clone();
        nan.counts[3] = f64::NAN;
        let mut scale = good.clone();
        scale.laplace_scale = -1.0;
        let mut kind = good.clone();
        kind.kind = "regression".into();
        for bad in [wide, nan, scale, kind] {
            assert!(check(&bad, shape).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn many_evaluations_are_redrawn_independently_and_alike_every_time() {
        // More evaluations than a chunk: each with noise of its own, so pooling n equal
        // evaluations narrows the accuracy interval by sqrt(n) (counts grow n-fold, the noise's
        // standard deviation sqrt(n)-fold), as the delta method of the test above says. Noise
        // shared by the evaluations would leave it as wide as one evaluation's.
        let (e, _, sd) = delta_method_case();
        let n = 3 * CHUNK + 5;
        let many: Vec<&Evaluation> = vec![&e; n];
        let all = intervals(&many);
        let pooled = &all.pooled["test_accuracy"];
        assert!(
            (half(pooled) * (n as f64).sqrt() / (1.96 * sd) - 1.0).abs() < 0.12,
            "{pooled:?} for {n}"
        );
        // Every evaluation has its own intervals, each about as wide as the delta method says
        // (within five times the spread of one interval's width), and not all alike.
        assert_eq!(all.each.len(), n);
        let halves: Vec<f64> = all.each.iter().map(|m| half(&m["test_accuracy"])).collect();
        for h in &halves {
            assert!((h / (1.96 * sd) - 1.0).abs() < 0.2, "{h} vs sd {sd}");
        }
        assert!(halves.iter().any(|h| *h != halves[0]));
        // The same counts give the same intervals.
        assert_eq!(intervals(&many), all);
    }

    #[test]
    fn laplace_draws_have_the_laplace_variance() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 200_000;
        let mut laplace = Laplace::new(3.0);
        let draws: Vec<f64> = (0..n).map(|_| laplace.draw(&mut rng)).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Var = 2 b^2 = 18; the mean absolute value is b = 3.
        assert!((var / 18.0 - 1.0).abs() < 0.03, "{var}");
        let mad = draws.iter().map(|x| x.abs()).sum::<f64>() / n as f64;
        assert!((mad / 3.0 - 1.0).abs() < 0.02, "{mad}");
        // Its shape: symmetric, and P(|X| > t) = exp(-t / b), 5 % beyond b ln 20 (a normal of
        // the same variance leaves 3.4 % there).
        let share =
            |f: &dyn Fn(f64) -> bool| draws.iter().filter(|x| f(**x)).count() as f64 / n as f64;
        let positive = share(&|x| x > 0.0);
        assert!((positive - 0.5).abs() < 0.005, "{positive}");
        // Each sign its own: consecutive draws agree in sign half the time (signs come 64 to
        // a generator output; one bit used twice would make them agree far more often).
        let agree = draws
            .windows(2)
            .filter(|w| (w[0] > 0.0) == (w[1] > 0.0))
            .count() as f64
            / (n - 1) as f64;
        assert!((agree - 0.5).abs() < 0.005, "{agree}");
        let tail = share(&|x| x.abs() > 3.0 * 20f64.ln());
        assert!((tail - 0.05).abs() < 0.003, "{tail}");
    }

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
        // Log loss at the bins' centres 1/8, 3/8, 5/8, 7/8: 3 negatives at 1/8, 1 at 3/8,
        // 2 positives at 3/8 and 2 at 7/8, over 8 records.
        let loss = -(3.0 * (7.0f64 / 8.0).ln()
            + (5.0f64 / 8.0).ln()
            + 2.0 * (3.0f64 / 8.0).ln()
            + 2.0 * (7.0f64 / 8.0).ln())
            / 8.0;
        assert!((m["test_log_loss"] - loss).abs() < 1e-12);
        assert!((loss - 0.387_415).abs() < 1e-6, "{loss}");
        assert_eq!(m["test_examples"], 8.0);
        let pooled = pool(&[&e, &e]).unwrap();
        assert_eq!(metrics(&pooled)["test_accuracy"], 0.75);
    }
}
