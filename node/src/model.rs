//! The models a node trains, on ndarray: binary and multinomial logistic regression, linear
//! regression, and a one-hidden-layer MLP. Each keeps its parameters in one flat vector (so
//! that SGD with momentum, the FedProx term and clipping treat every model alike) and converts
//! to and from the named tensors of the wire (`treaty_proto::schema::parameter_layout`).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis, Slice};
use treaty_proto::TensorError;
use treaty_proto::tensor::NamedTensor;
use treaty_proto::v1::ModelKind;

/// Which model, with its sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Architecture {
    Logistic,
    Multinomial { classes: usize },
    Linear,
    Mlp { hidden: usize },
}

impl Architecture {
    /// The kind of a job's model.
    pub fn of(model: ModelKind, classes: usize, hidden: usize) -> Option<Self> {
        match model {
            ModelKind::LogisticRegression => Some(Architecture::Logistic),
            ModelKind::MultinomialLogisticRegression => Some(Architecture::Multinomial { classes }),
            ModelKind::LinearRegression => Some(Architecture::Linear),
            ModelKind::Mlp => Some(Architecture::Mlp { hidden }),
            ModelKind::Unspecified => None,
        }
    }
}

/// A model: its kind, its input width and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub kind: Architecture,
    pub inputs: usize,
    params: Array1<f64>,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// log(1 + e^z), without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

impl Model {
    /// The names and shapes of the parameter tensors, in order.
    pub fn layout(&self) -> Vec<(&'static str, Vec<usize>)> {
        let d = self.inputs;
        match self.kind {
            Architecture::Logistic | Architecture::Linear => {
                vec![("weights", vec![d]), ("bias", vec![])]
            }
            Architecture::Multinomial { classes: k } => {
                vec![("weights", vec![d, k]), ("bias", vec![k])]
            }
            Architecture::Mlp { hidden: h } => vec![
                ("hidden_weights", vec![d, h]),
                ("hidden_bias", vec![h]),
                ("weights", vec![h]),
                ("bias", vec![]),
            ],
        }
    }

    /// A model of zeros.
    pub fn zeros(kind: Architecture, inputs: usize) -> Self {
        let mut m = Model {
            kind,
            inputs,
            params: Array1::zeros(0),
        };
        let n: usize = m
            .layout()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        m.params = Array1::zeros(n);
        m
    }

    /// Reads parameters from named tensors, checking names and shapes.
    pub fn from_tensors(
        kind: Architecture,
        inputs: usize,
        tensors: &[NamedTensor],
    ) -> Result<Self, TensorError> {
        let mut m = Model::zeros(kind, inputs);
        treaty_proto::tensor::check_same_layout(&m.to_tensors(), tensors)?;
        let flat: Vec<f64> = tensors
            .iter()
            .flat_map(|t| t.values.iter().copied())
            .collect();
        m.params = Array1::from(flat);
        Ok(m)
    }

    /// The parameters as named tensors.
    pub fn to_tensors(&self) -> Vec<NamedTensor> {
        let mut offset = 0;
        self.layout()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = self
                    .params
                    .slice_axis(Axis(0), Slice::from(offset..offset + n))
                    .to_owned();
                offset += n;
                let values = values
                    .into_shape_with_order(ndarray::IxDyn(&shape))
                    .unwrap_or_else(|_| ndarray::ArrayD::zeros(ndarray::IxDyn(&shape)));
                NamedTensor::new(name, values)
            })
            .collect()
    }

    /// The parameters, flat, in layout order.
    pub fn params(&self) -> &Array1<f64> {
        &self.params
    }

    /// The parameters, to change in place.
    pub fn params_mut(&mut self) -> ArrayViewMut1<'_, f64> {
        self.params.view_mut()
    }

    /// Which parameters L2 regularisation applies to: every weight, no bias.
    pub fn regularized(&self) -> Array1<f64> {
        let mut mask = Array1::zeros(self.params.len());
        let mut offset = 0;
        for (name, shape) in self.layout() {
            let n: usize = shape.iter().product();
            if !name.ends_with("bias") {
                mask.slice_axis_mut(Axis(0), Slice::from(offset..offset + n))
                    .fill(1.0);
            }
            offset += n;
        }
        mask
    }

    /// The model's output for each row: P(positive) for binary models, the predicted value for
    /// linear regression, class probabilities (rows × classes) for multinomial.
    pub fn predict(&self, x: ArrayView2<'_, f64>) -> Array2<f64> {
        let d = self.inputs;
        let p = self.params.as_slice().unwrap_or(&[]);
        match self.kind {
            Architecture::Logistic => (x.dot(&ArrayView1::from(&p[..d])) + p[d])
                .mapv(sigmoid)
                .insert_axis(Axis(1)),
            Architecture::Linear => (x.dot(&ArrayView1::from(&p[..d])) + p[d]).insert_axis(Axis(1)),
            Architecture::Multinomial { classes: k } => {
                let (w, b) = multinomial_views(p, d, k);
                let mut z = x.dot(&w) + b;
                for mut row in z.rows_mut() {
                    let max = row.fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                    row.mapv_inplace(|v| (v - max).exp());
                    let sum = row.sum();
                    row /= sum;
                }
                z
            }
            Architecture::Mlp { hidden: h } => {
                let (w1, b1, w2, b2) = mlp_views(p, d, h);
                let hidden = (x.dot(&w1) + b1).mapv(|v| v.max(0.0));
                (hidden.dot(&w2) + b2).mapv(sigmoid).insert_axis(Axis(1))
            }
        }
    }

    /// The mean loss over the rows plus (l2 / 2) ||weights||², and its gradient written into
    /// `grad` (same length as the parameters).
    pub fn loss_and_gradient(
        &self,
        x: ArrayView2<'_, f64>,
        y: ArrayView1<'_, f64>,
        l2: f64,
        mut grad: ArrayViewMut1<'_, f64>,
    ) -> f64 {
        let n = x.nrows().max(1) as f64;
        let d = self.inputs;
        let p = self.params.as_slice().unwrap_or(&[]);
        grad.fill(0.0);
        let g = grad.as_slice_mut().unwrap_or(&mut []);
        let data_loss = match self.kind {
            Architecture::Logistic | Architecture::Linear => {
                let w = ArrayView1::from(&p[..d]);
                let z = x.dot(&w) + p[d];
                let (residual, loss): (Array1<f64>, f64) = if self.kind == Architecture::Logistic {
                    let loss = z
                        .iter()
                        .zip(y)
                        .map(|(&z, &y)| softplus(z) - y * z)
                        .sum::<f64>();
                    (z.mapv(sigmoid) - y, loss)
                } else {
                    let r = &z - &y;
                    let loss = 0.5 * r.dot(&r);
                    (r, loss)
                };
                let gw = x.t().dot(&residual) / n;
                g[..d].copy_from_slice(gw.as_slice().unwrap_or(&[]));
                g[d] = residual.sum() / n;
                loss / n
            }
            Architecture::Multinomial { classes: k } => {
                let probs = self.predict(x);
                let mut loss = 0.0;
                let mut delta = probs;
                for (mut row, &label) in delta.rows_mut().into_iter().zip(y) {
                    let c = label as usize;
                    loss -= row[c].max(1e-300).ln();
                    row[c] -= 1.0;
                }
                let gw = x.t().dot(&delta) / n;
                g[..d * k].copy_from_slice(gw.as_standard_layout().as_slice().unwrap_or(&[]));
                let gb = delta.sum_axis(Axis(0)) / n;
                g[d * k..d * k + k].copy_from_slice(gb.as_slice().unwrap_or(&[]));
                loss / n
            }
            Architecture::Mlp { hidden: h } => {
                let (w1, b1, w2, b2) = mlp_views(p, d, h);
                let pre = x.dot(&w1) + b1;
                let act = pre.mapv(|v| v.max(0.0));
                let z = act.dot(&w2) + b2;
                let loss = z
                    .iter()
                    .zip(y)
                    .map(|(&z, &y)| softplus(z) - y * z)
                    .sum::<f64>();
                let dz = (z.mapv(sigmoid) - y) / n;
                let gw2 = act.t().dot(&dz);
                let gb2 = dz.sum();
                // Back through the ReLU: d(pre) = dz ⊗ w2, zero where pre <= 0.
                let mut dpre = dz.insert_axis(Axis(1)).dot(&w2.insert_axis(Axis(0)));
                dpre.zip_mut_with(&pre, |g, &v| {
                    if v <= 0.0 {
                        *g = 0.0
                    }
                });
                let gw1 = x.t().dot(&dpre);
                let gb1 = dpre.sum_axis(Axis(0));
                g[..d * h].copy_from_slice(gw1.as_standard_layout().as_slice().unwrap_or(&[]));
                g[d * h..d * h + h].copy_from_slice(gb1.as_slice().unwrap_or(&[]));
                g[d * h + h..d * h + 2 * h].copy_from_slice(gw2.as_slice().unwrap_or(&[]));
                g[d * h + 2 * h] = gb2;
                loss / n
            }
        };
        if l2 > 0.0 {
            let mask = self.regularized();
            let w = &self.params * &mask;
            grad.scaled_add(l2, &w);
            data_loss + 0.5 * l2 * w.dot(&w)
        } else {
            data_loss
        }
    }
}

/// A [rows, cols] view of the start of `data`.
#[allow(clippy::expect_used)] // `params` always has the layout's length: it is private, made only
// by `zeros` and `from_tensors`, and never resized.
fn matrix(data: &[f64], rows: usize, cols: usize) -> ArrayView2<'_, f64> {
    ArrayView2::from_shape((rows, cols), &data[..rows * cols]).expect("length matches the layout")
}

fn multinomial_views(p: &[f64], d: usize, k: usize) -> (ArrayView2<'_, f64>, ArrayView1<'_, f64>) {
    (matrix(p, d, k), ArrayView1::from(&p[d * k..d * k + k]))
}

fn mlp_views(
    p: &[f64],
    d: usize,
    h: usize,
) -> (
    ArrayView2<'_, f64>,
    ArrayView1<'_, f64>,
    ArrayView1<'_, f64>,
    f64,
) {
    (
        matrix(p, d, h),
        ArrayView1::from(&p[d * h..d * h + h]),
        ArrayView1::from(&p[d * h + h..d * h + 2 * h]),
        p[d * h + 2 * h],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn data() -> (Array2<f64>, Array1<f64>, Array1<f64>) {
        let x = array![
            [0.5, -1.0, 0.3],
            [1.5, 2.0, -0.7],
            [-0.3, 0.7, 1.1],
            [2.2, -0.4, 0.0],
            [-1.1, -2.0, 0.6]
        ];
        let binary = array![0.0, 1.0, 0.0, 1.0, 0.0];
        let classes = array![0.0, 2.0, 1.0, 2.0, 0.0];
        (x, binary, classes)
    }

    fn check_gradient(kind: Architecture, y: &Array1<f64>) {
        let (x, _, _) = data();
        let mut m = Model::zeros(kind, 3);
        let n = m.params().len();
        for (i, p) in m.params_mut().iter_mut().enumerate() {
            *p = ((i * 7 % 11) as f64 / 11.0 - 0.45) * 0.8;
        }
        let l2 = 0.03;
        let mut grad = Array1::zeros(n);
        m.loss_and_gradient(x.view(), y.view(), l2, grad.view_mut());
        let h = 1e-6;
        let mut scratch = Array1::zeros(n);
        for i in 0..n {
            let mut plus = m.clone();
            plus.params[i] += h;
            let mut minus = m.clone();
            minus.params[i] -= h;
            let numeric = (plus.loss_and_gradient(x.view(), y.view(), l2, scratch.view_mut())
                - minus.loss_and_gradient(x.view(), y.view(), l2, scratch.view_mut()))
                / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() < 1e-7,
                "{kind:?} parameter {i}: {numeric} vs {}",
                grad[i]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (_, binary, classes) = data();
        check_gradient(Architecture::Logistic, &binary);
        check_gradient(Architecture::Linear, &array![0.3, -1.2, 2.5, 0.0, 1.1]);
        check_gradient(Architecture::Multinomial { classes: 3 }, &classes);
        check_gradient(Architecture::Mlp { hidden: 4 }, &binary);
    }

    #[test]
    fn zero_logistic_model_has_log_two_loss() {
        // With w = 0 and b = 0 every prediction is 1/2, so the loss is ln 2 whatever the data.
        let (x, y, _) = data();
        let m = Model::zeros(Architecture::Logistic, 3);
        let mut g = Array1::zeros(4);
        let loss = m.loss_and_gradient(x.view(), y.view(), 0.0, g.view_mut());
        assert!((loss - std::f64::consts::LN_2).abs() < 1e-15);
    }

    #[test]
    fn tensors_round_trip_with_their_layout() {
        let mut m = Model::zeros(Architecture::Multinomial { classes: 3 }, 2);
        for (i, p) in m.params_mut().iter_mut().enumerate() {
            *p = i as f64;
        }
        let tensors = m.to_tensors();
        assert_eq!(tensors[0].values.shape(), &[2, 3]);
        assert_eq!(tensors[0].values[[1, 0]], 3.0);
        assert_eq!(Model::from_tensors(m.kind, 2, &tensors).unwrap(), m);
        assert!(Model::from_tensors(Architecture::Logistic, 2, &tensors).is_err());
    }
}
