//! The shape of an analytics query's answer, which nodes and the coordinator must agree on:
//! how many values, what bounds one record's change of each, and what each is called.

use crate::enums;
use crate::error::EnumError;
use crate::v1::{QueryKind, QuerySpec};

/// The statistic a query asks for, which must be given.
pub fn kind(spec: &QuerySpec) -> Result<QueryKind, EnumError> {
    enums::specified(spec.kind, kind_field)
}

/// The statistic of a query: `QueryKind` without its unspecified value, decoded once where a
/// query arrives (at the coordinator and at each node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    Count,
    Sum,
    Mean,
    Histogram,
    Quantile,
}

impl Statistic {
    /// The statistic a query's kind names: an unknown or unspecified kind is an error.
    pub fn decode(spec: &QuerySpec) -> Result<Self, EnumError> {
        Statistic::of(enums::known(spec.kind, kind_field)?).ok_or_else(|| EnumError::Unspecified {
            field: kind_field(),
        })
    }

    /// The statistic of a query kind; `None` for `Unspecified`.
    pub fn of(kind: QueryKind) -> Option<Self> {
        match kind {
            QueryKind::Count => Some(Statistic::Count),
            QueryKind::Sum => Some(Statistic::Sum),
            QueryKind::Mean => Some(Statistic::Mean),
            QueryKind::Histogram => Some(Statistic::Histogram),
            QueryKind::Quantile => Some(Statistic::Quantile),
            QueryKind::Unspecified => None,
        }
    }

    /// Whether it reads a numeric column's values, clamped to the query's bounds (which it
    /// then needs).
    pub fn clamped(self) -> bool {
        matches!(self, Statistic::Sum | Statistic::Mean | Statistic::Quantile)
    }
}

fn kind_field() -> String {
    "the query's kind".to_owned()
}

/// The most values an answer may have (histogram cells or quantile bins); a larger query is
/// refused by the coordinator and, should one arrive, by every node.
pub const MAX_WIDTH: usize = 100_000;
/// The most bins of a quantile query.
pub const MAX_BINS: usize = 1_000;

/// The bin count of a quantile query (default 64).
pub fn bins(spec: &QuerySpec) -> usize {
    if spec.bins == 0 {
        64
    } else {
        spec.bins as usize
    }
}

/// For each value a node returns, the most one record can change it; and how many values one
/// record can change (the L1 sensitivity once each value is divided by its bound).
/// `None` for a query that names no statistic ([`kind`] says why).
pub fn layout(spec: &QuerySpec) -> Option<(Vec<f64>, f64)> {
    let b = spec
        .lower
        .abs()
        .max(spec.upper.abs())
        .max(f64::MIN_POSITIVE);
    match kind(spec).ok()? {
        QueryKind::Count => Some((vec![1.0], 1.0)),
        QueryKind::Sum => Some((vec![b], 1.0)),
        QueryKind::Mean => Some((vec![b, 1.0], 2.0)),
        QueryKind::Histogram => {
            let by = if spec.by_column.is_empty() {
                1
            } else {
                spec.by_categories.len() + 1
            };
            Some((vec![1.0; (spec.categories.len() + 1) * by], 1.0))
        }
        QueryKind::Quantile => Some((vec![1.0; bins(spec)], 1.0)),
        QueryKind::Unspecified => None,
    }
}

/// The names of a histogram's cells, in the order of its values.
pub fn histogram_labels(spec: &QuerySpec) -> Vec<String> {
    let name =
        |values: &[String], i: usize| values.get(i).cloned().unwrap_or_else(|| "<other>".into());
    let first = spec.categories.len() + 1;
    let second = if spec.by_column.is_empty() {
        1
    } else {
        spec.by_categories.len() + 1
    };
    (0..second)
        .flat_map(|b| {
            (0..first).map(move |a| {
                let mut label = format!("{}={}", spec.column, name(&spec.categories, a));
                if !spec.by_column.is_empty() {
                    label.push_str(&format!(
                        ", {}={}",
                        spec.by_column,
                        name(&spec.by_categories, b)
                    ));
                }
                label
            })
        })
        .collect()
}
