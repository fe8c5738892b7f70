//! Explanations of a linear model's predictions: each feature column's contribution to the
//! score (the log-odds for logistic regression, the predicted value for linear regression, one
//! class's logit for multinomial regression). The contributions and the bias add up to the
//! score exactly; a categorical column's contribution is that of its one-hot slot.

use ndarray::ArrayView1;
use treaty_proto::schema;
use treaty_proto::v1::{ColumnKind, FeatureSchema};

use crate::model::{Architecture, Model};

/// Why a score is what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The score: bias plus every contribution.
    pub score: f64,
    /// The bias (the score of an all-zero encoded record).
    pub bias: f64,
    /// Each schema column and its contribution, in schema order.
    pub contributions: Vec<(String, f64)>,
}

impl Explanation {
    /// The contributions that move the score, largest in magnitude first (a column whose
    /// contribution is exactly zero is left out): how an explanation is shown.
    pub fn ranked(&self) -> Vec<(&str, f64)> {
        let mut ranked: Vec<(&str, f64)> = self
            .contributions
            .iter()
            .filter(|(_, c)| *c != 0.0)
            .map(|(name, c)| (name.as_str(), *c))
            .collect();
        ranked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        ranked
    }
}

/// Explains the score of one encoded record (`row`, as `Table::encode` makes it) toward `class`
/// (ignored but for multinomial models). `None` for models that are not linear.
pub fn explain(
    model: &Model,
    schema: &FeatureSchema,
    row: ArrayView1<'_, f64>,
    class: usize,
) -> Option<Explanation> {
    let d = model.inputs;
    let p = model.params();
    let (weight, bias): (Box<dyn Fn(usize) -> f64>, f64) = match model.kind {
        Architecture::Logistic | Architecture::Linear => (Box::new(|j| p[j]), p[d]),
        Architecture::Multinomial { classes } if class < classes => (
            Box::new(move |j| p[j * classes + class]),
            p[d * classes + class],
        ),
        _ => return None,
    };
    if row.len() != d {
        return None;
    }
    let mut contributions = Vec::with_capacity(schema.columns.len());
    let mut j = 0;
    for column in &schema.columns {
        let width = if column.kind == ColumnKind::Categorical as i32 {
            column.values.len() + 1
        } else {
            1
        };
        let c: f64 = (j..j + width).map(|k| weight(k) * row[k]).sum();
        contributions.push((column.name.clone(), c));
        j += width;
    }
    debug_assert_eq!(j, schema::encoded_names(schema).len());
    let score = bias + contributions.iter().map(|(_, c)| c).sum::<f64>();
    Some(Explanation {
        score,
        bias,
        contributions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn contributions_follow_the_weights_and_group_one_hot_slots() {
        let schema = schema::parse(
            "[label]\nname = \"y\"\nkind = \"binary\"\n[[column]]\nname = \"value\"\nkind = \"numeric\"\n[[column]]\nname = \"mode\"\nkind = \"categorical\"\nvalues = [\"sea\", \"air\"]\n",
        )
        .unwrap()
        .unwrap();
        // weights: value 2.0; mode=sea 0.5, mode=air -1.0, mode=<other> 3.0; bias -0.25.
        let tensors = vec![
            treaty_proto::tensor::NamedTensor::new(
                "weights",
                array![2.0, 0.5, -1.0, 3.0].into_dyn(),
            ),
            treaty_proto::tensor::NamedTensor::new("bias", ndarray::arr0(-0.25).into_dyn()),
        ];
        let model = Model::from_tensors(Architecture::Logistic, 4, &tensors).unwrap();
        // A record with value 1.5 (standardised) shipped by air.
        let row = array![1.5, 0.0, 1.0, 0.0];
        let e = explain(&model, &schema, row.view(), 0).unwrap();
        assert_eq!(
            e.contributions,
            vec![("value".to_owned(), 3.0), ("mode".to_owned(), -1.0)]
        );
        assert_eq!(e.score, 1.75);
        assert_eq!(e.ranked(), vec![("value", 3.0), ("mode", -1.0)]);
        let zero = explain(&model, &schema, array![0.0, 1.0, 0.0, 0.0].view(), 0).unwrap();
        assert_eq!(zero.ranked(), vec![("mode", 0.5)]);
        // The score is the model's log-odds: sigmoid(1.75) is its prediction.
        let p = model.predict(row.view().insert_axis(ndarray::Axis(0)));
        assert!((p[[0, 0]] - 1.0 / (1.0 + (-1.75f64).exp())).abs() < 1e-15);
        assert!(
            explain(
                &Model::zeros(Architecture::Mlp { hidden: 2 }, 4),
                &schema,
                row.view(),
                0
            )
            .is_none()
        );
    }
}
