//! Binary logistic regression on ndarray: the model, its loss and gradient, local mini-batch SGD
//! and evaluation.
//!
//! Parameters travel as two tensors: `weights` (one per feature) and `bias` (a scalar).

use ndarray::{Array1, ArrayD, ArrayView1, ArrayView2, Axis, IxDyn};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use treaty_proto::TensorError;
use treaty_proto::tensor::NamedTensor;

use crate::data::Examples;

/// Logistic regression parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    pub weights: Array1<f64>,
    pub bias: f64,
}

/// How to train locally.
#[derive(Debug, Clone, Copy)]
pub struct Sgd {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub l2: f64,
    pub seed: u64,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Logistic {
    pub fn zeros(features: usize) -> Self {
        Logistic {
            weights: Array1::zeros(features),
            bias: 0.0,
        }
    }

    /// Reads parameters from tensors `weights` [features] and `bias` [].
    pub fn from_tensors(tensors: &[NamedTensor], features: usize) -> Result<Self, TensorError> {
        let expected = Logistic::zeros(features).to_tensors();
        treaty_proto::tensor::check_same_layout(&expected, tensors)?;
        let weights = tensors[0].values.iter().copied().collect::<Array1<f64>>();
        let bias = tensors[1].values.iter().next().copied().unwrap_or(0.0);
        Ok(Logistic { weights, bias })
    }

    pub fn to_tensors(&self) -> Vec<NamedTensor> {
        vec![
            NamedTensor::new("weights", self.weights.clone().into_dyn()),
            NamedTensor::new("bias", ArrayD::from_elem(IxDyn(&[]), self.bias)),
        ]
    }

    /// P(label = 1) for each row.
    pub fn predict(&self, x: ArrayView2<'_, f64>) -> Array1<f64> {
        (x.dot(&self.weights) + self.bias).mapv(sigmoid)
    }

    /// Mean log loss plus (l2 / 2) ||w||².
    pub fn loss(&self, x: ArrayView2<'_, f64>, y: ArrayView1<'_, f64>, l2: f64) -> f64 {
        let z = x.dot(&self.weights) + self.bias;
        // log(1 + e^z) - y z, computed stably.
        let n = y.len().max(1) as f64;
        let data: f64 = z
            .iter()
            .zip(y.iter())
            .map(|(&z, &y)| z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z)
            .sum::<f64>()
            / n;
        data + 0.5 * l2 * self.weights.dot(&self.weights)
    }

    /// The gradient of [`Logistic::loss`]: (∂/∂w, ∂/∂b).
    pub fn gradient(
        &self,
        x: ArrayView2<'_, f64>,
        y: ArrayView1<'_, f64>,
        l2: f64,
    ) -> (Array1<f64>, f64) {
        let n = y.len().max(1) as f64;
        let residual = self.predict(x) - y;
        let gw = x.t().dot(&residual) / n + l2 * &self.weights;
        let gb = residual.sum() / n;
        (gw, gb)
    }

    /// Local mini-batch SGD over `data`; returns the mean training loss of the last epoch.
    pub fn train(&mut self, data: &Examples, sgd: Sgd) -> f64 {
        let n = data.len();
        let batch = sgd.batch_size.clamp(1, n.max(1));
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = StdRng::seed_from_u64(sgd.seed);
        let mut last = f64::NAN;
        for _ in 0..sgd.epochs {
            order.shuffle(&mut rng);
            let mut total = 0.0;
            for idx in order.chunks(batch) {
                let xb = data.x.select(Axis(0), idx);
                let yb = data.y.select(Axis(0), idx);
                total += self.loss(xb.view(), yb.view(), sgd.l2) * idx.len() as f64;
                let (gw, gb) = self.gradient(xb.view(), yb.view(), sgd.l2);
                self.weights.scaled_add(-sgd.learning_rate, &gw);
                self.bias -= sgd.learning_rate * gb;
            }
            last = total / n.max(1) as f64;
        }
        last
    }

    /// Accuracy (threshold 0.5) and mean log loss on `data`.
    pub fn evaluate(&self, data: &Examples) -> (f64, f64) {
        let p = self.predict(data.x.view());
        let n = data.len().max(1) as f64;
        let correct = p
            .iter()
            .zip(data.y.iter())
            .filter(|&(&p, &y)| (p >= 0.5) == (y >= 0.5))
            .count() as f64;
        (correct / n, self.loss(data.x.view(), data.y.view(), 0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn examples() -> Examples {
        Examples {
            x: array![
                [0.5, -1.0],
                [1.5, 2.0],
                [-0.3, 0.7],
                [2.2, -0.4],
                [-1.1, -2.0]
            ],
            y: array![0.0, 1.0, 0.0, 1.0, 0.0],
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let data = examples();
        let m = Logistic {
            weights: array![0.3, -0.2],
            bias: 0.1,
        };
        let l2 = 0.05;
        let (gw, gb) = m.gradient(data.x.view(), data.y.view(), l2);
        let h = 1e-6;
        for j in 0..2 {
            let mut plus = m.clone();
            plus.weights[j] += h;
            let mut minus = m.clone();
            minus.weights[j] -= h;
            let numeric = (plus.loss(data.x.view(), data.y.view(), l2)
                - minus.loss(data.x.view(), data.y.view(), l2))
                / (2.0 * h);
            assert!(
                (numeric - gw[j]).abs() < 1e-8,
                "w{j}: {numeric} vs {}",
                gw[j]
            );
        }
        let mut plus = m.clone();
        plus.bias += h;
        let mut minus = m.clone();
        minus.bias -= h;
        let numeric = (plus.loss(data.x.view(), data.y.view(), l2)
            - minus.loss(data.x.view(), data.y.view(), l2))
            / (2.0 * h);
        assert!((numeric - gb).abs() < 1e-8);
    }

    #[test]
    fn zero_model_has_log_two_loss() {
        // With w = 0 and b = 0 every prediction is 1/2, so the loss is ln 2 whatever the data.
        let data = examples();
        let m = Logistic::zeros(2);
        assert!((m.loss(data.x.view(), data.y.view(), 0.0) - std::f64::consts::LN_2).abs() < 1e-15);
    }

    #[test]
    fn intercept_only_model_learns_the_base_rate() {
        // With no features, the maximum-likelihood bias is logit(mean(y)) (closed form).
        let y = array![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let data = Examples {
            x: Array2::zeros((8, 0)),
            y,
        };
        let mut m = Logistic::zeros(0);
        m.train(
            &data,
            Sgd {
                epochs: 2000,
                batch_size: 8,
                learning_rate: 1.0,
                l2: 0.0,
                seed: 1,
            },
        );
        let expected = (0.25f64 / 0.75).ln();
        assert!((m.bias - expected).abs() < 1e-6, "{} vs {expected}", m.bias);
    }

    use ndarray::Array2;
}
