//! The federation-wide feature schema: the TOML file an operator writes, its checks, and what
//! follows from it for every party (encoded feature names, parameter layouts of each model).
//!
//! ```toml
//! [label]
//! name = "seized"
//! kind = "binary"                 # binary | categorical | numeric
//! classes = ["0", "1"]            # binary: [negative, positive]; categorical: every class
//!
//! [[column]]
//! name = "declared_value"
//! kind = "numeric"
//! lower = 0.0                     # optional clamp bounds (both or neither)
//! upper = 1e7
//! transform = "log1p"             # optional
//! missing = "mean"                # reject (default) | mean | zero
//!
//! [[column]]
//! name = "transport_mode"
//! kind = "categorical"
//! values = ["sea", "air", "road", "rail"]
//! missing = "other"               # reject (default) | other
//!
//! [[column]]
//! name = "known_shipper"
//! kind = "boolean"
//! missing = "zero"                # reject (default) | zero (false)
//! ```

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::enums;
use crate::error::{EnumError, SchemaTomlError};
use crate::v1::{
    ColumnKind, ColumnSpec, FeatureSchema, LabelKind, LabelSpec, MissingRule, ModelKind,
    TrainingSpec, Transform,
};

/// The schema file, as [`parse`] reads it and [`to_toml`] writes it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    label: LabelFile,
    #[serde(default, rename = "column")]
    columns: Vec<ColumnFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LabelFile {
    name: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    classes: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lower: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upper: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transform: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    values: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing: Option<String>,
}

/// The most features a schema may encode to (one-hot slots included).
pub const MAX_ENCODED_WIDTH: usize = 10_000;

/// The most hidden units an MLP may have: the coordinator refuses a job asking for more and
/// every node a task. 4096 units over the widest encoding ([`MAX_ENCODED_WIDTH`]) make about
/// 41 million parameters, within what a node accepts (`MAX_MODEL_ELEMENTS`, 50 million).
pub const MAX_HIDDEN_UNITS: u32 = 4096;

/// Reads a schema file and checks it, reporting every problem at once.
pub fn load(path: &Path) -> Result<FeatureSchema, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let schema = parse(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })?;
    let schema = schema.map_err(invalid)?;
    let problems = problems(&schema);
    if problems.is_empty() {
        Ok(schema)
    } else {
        Err(invalid(problems))
    }
}

/// Parses schema TOML: `Err` when it is not valid TOML of the right shape, `Ok(Err)` with every
/// unknown word otherwise.
pub fn parse(text: &str) -> Result<Result<FeatureSchema, Vec<String>>, String> {
    let file: SchemaFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let label_kind = match file.label.kind.as_str() {
        "binary" => LabelKind::Binary,
        "categorical" => LabelKind::Categorical,
        "numeric" => LabelKind::Numeric,
        other => {
            problems.push(format!(
                "label `{}`: kind `{other}` is not binary, categorical or numeric",
                file.label.name
            ));
            LabelKind::Unspecified
        }
    };
    let mut columns = Vec::new();
    for c in file.columns {
        let kind = match c.kind.as_str() {
            "numeric" => ColumnKind::Numeric,
            "categorical" => ColumnKind::Categorical,
            "boolean" => ColumnKind::Boolean,
            other => {
                problems.push(format!(
                    "column `{}`: kind `{other}` is not numeric, categorical or boolean",
                    c.name
                ));
                ColumnKind::Unspecified
            }
        };
        let missing = match c.missing.as_deref() {
            None | Some("reject") => MissingRule::Reject,
            Some("mean") => MissingRule::Mean,
            Some("zero") => MissingRule::Zero,
            Some("other") => MissingRule::Other,
            Some(other) => {
                problems.push(format!(
                    "column `{}`: missing rule `{other}` is not reject, mean, zero or other",
                    c.name
                ));
                MissingRule::Unspecified
            }
        };
        let transform = match c.transform.as_deref() {
            None | Some("none") => Transform::Unspecified,
            Some("log1p") => Transform::Log1p,
            Some(other) => {
                problems.push(format!(
                    "column `{}`: transform `{other}` is not none or log1p",
                    c.name
                ));
                Transform::Unspecified
            }
        };
        columns.push(ColumnSpec {
            name: c.name,
            kind: kind as i32,
            lower: c.lower,
            upper: c.upper,
            transform: transform as i32,
            values: c.values,
            missing: missing as i32,
        });
    }
    let schema = FeatureSchema {
        columns,
        label: Some(LabelSpec {
            name: file.label.name,
            kind: label_kind as i32,
            classes: file.label.classes,
        }),
    };
    Ok(if problems.is_empty() {
        Ok(schema)
    } else {
        Err(problems)
    })
}

/// Writes a schema as TOML that [`parse`] reads back to the same schema: the schema as its file
/// (the words [`parse`] reads), written by the TOML serializer (which quotes every name and
/// value as TOML requires). An enum value this build does not know cannot be written.
pub fn to_toml(schema: &FeatureSchema) -> Result<String, SchemaTomlError> {
    Ok(toml::to_string(&to_file(schema)?)?)
}

/// A schema as its file.
fn to_file(schema: &FeatureSchema) -> Result<SchemaFile, EnumError> {
    let label = schema.label.clone().unwrap_or_default();
    let label_kind = match decode_label_kind(schema)? {
        LabelKind::Binary => "binary",
        LabelKind::Categorical => "categorical",
        LabelKind::Numeric => "numeric",
        LabelKind::Unspecified => {
            return Err(unspecified(format!("the kind of label `{}`", label.name)));
        }
    };
    let columns = schema
        .columns
        .iter()
        .map(|c| {
            let kind = match column_kind(c)? {
                ColumnKind::Numeric => "numeric",
                ColumnKind::Categorical => "categorical",
                ColumnKind::Boolean => "boolean",
                ColumnKind::Unspecified => return Err(unspecified(column_kind_field(c))),
            };
            let missing = match missing_rule(c)? {
                MissingRule::Reject => "reject",
                MissingRule::Mean => "mean",
                MissingRule::Zero => "zero",
                MissingRule::Other => "other",
                MissingRule::Unspecified => return Err(unspecified(missing_rule_field(c))),
            };
            let transform = match transform(c)? {
                Transform::Unspecified => None,
                Transform::Log1p => Some("log1p".to_owned()),
            };
            Ok(ColumnFile {
                name: c.name.clone(),
                kind: kind.to_owned(),
                lower: c.lower,
                upper: c.upper,
                transform,
                values: c.values.clone(),
                missing: Some(missing.to_owned()),
            })
        })
        .collect::<Result<_, EnumError>>()?;
    Ok(SchemaFile {
        label: LabelFile {
            name: label.name,
            kind: label_kind.to_owned(),
            classes: label.classes,
        },
        columns,
    })
}

/// A column's kind, which must be given.
pub fn column_kind(c: &ColumnSpec) -> Result<ColumnKind, EnumError> {
    enums::specified(c.kind, || column_kind_field(c))
}

fn column_kind_field(c: &ColumnSpec) -> String {
    format!("the kind of column `{}`", c.name)
}

/// A column's rule for missing values, which must be given (the schema file's default is
/// `reject`).
pub fn missing_rule(c: &ColumnSpec) -> Result<MissingRule, EnumError> {
    enums::specified(c.missing, || missing_rule_field(c))
}

fn missing_rule_field(c: &ColumnSpec) -> String {
    format!("the missing-value rule of column `{}`", c.name)
}

/// A column's transform (unspecified: none).
pub fn transform(c: &ColumnSpec) -> Result<Transform, EnumError> {
    enums::known(c.transform, || {
        format!("the transform of column `{}`", c.name)
    })
}

/// The label's kind, which must be given (a schema without a label has none).
pub fn decode_label_kind(schema: &FeatureSchema) -> Result<LabelKind, EnumError> {
    let kind = schema.label.as_ref().map(|l| l.kind).unwrap_or(0);
    enums::specified(kind, || label_kind_field(schema))
}

fn label_kind_field(schema: &FeatureSchema) -> String {
    let name = schema.label.as_ref().map(|l| l.name.as_str());
    format!("the kind of label `{}`", name.unwrap_or_default())
}

/// The model a training spec names, which must be given.
pub fn model_kind(spec: &TrainingSpec) -> Result<ModelKind, EnumError> {
    enums::specified(spec.model, model_kind_field)
}

fn model_kind_field() -> String {
    "the training spec's model".to_owned()
}

/// The error of an `_UNSPECIFIED` value where one is needed. The decoding functions above
/// already refuse it, so a match on what they return meets it only in an arm that gives their
/// error again.
fn unspecified(field: String) -> EnumError {
    EnumError::Unspecified { field }
}

/// The class names of a binary or categorical label (binary defaults to ["0", "1"]); none for
/// a numeric label. An error when the label's kind is not one this build knows.
pub fn classes(schema: &FeatureSchema) -> Result<Vec<String>, EnumError> {
    let label = schema.label.clone().unwrap_or_default();
    Ok(match decode_label_kind(schema)? {
        LabelKind::Binary if label.classes.is_empty() => vec!["0".into(), "1".into()],
        LabelKind::Binary | LabelKind::Categorical => label.classes,
        LabelKind::Numeric => Vec::new(),
        LabelKind::Unspecified => return Err(unspecified(label_kind_field(schema))),
    })
}

/// Every problem with a schema, each in a sentence.
pub fn problems(schema: &FeatureSchema) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let label = schema.label.clone().unwrap_or_default();
    if label.name.is_empty() {
        problems.push("the label has no name".into());
    }
    match decode_label_kind(schema) {
        Ok(LabelKind::Binary) if !(label.classes.is_empty() || label.classes.len() == 2) => {
            problems.push(format!(
                "binary label `{}` needs exactly two classes [negative, positive]",
                label.name
            ))
        }
        Ok(LabelKind::Categorical) if label.classes.len() < 2 => problems.push(format!(
            "categorical label `{}` needs at least two classes",
            label.name
        )),
        Ok(LabelKind::Numeric) if !label.classes.is_empty() => {
            problems.push(format!("numeric label `{}` takes no classes", label.name))
        }
        Err(e) => problems.push(e.to_string()),
        Ok(_) => {}
    }
    if has_duplicates(&label.classes) {
        problems.push(format!("label `{}` lists a class twice", label.name));
    }
    names.insert(label.name.as_str());
    if schema.columns.is_empty() {
        problems.push("the schema has no feature columns".into());
    }
    let width: usize = schema
        .columns
        .iter()
        .map(|c| {
            if column_kind(c) == Ok(ColumnKind::Categorical) {
                c.values.len() + 1
            } else {
                1
            }
        })
        .sum();
    if width > MAX_ENCODED_WIDTH {
        problems.push(format!(
            "the schema encodes {width} features; at most {MAX_ENCODED_WIDTH}"
        ));
    }
    for c in &schema.columns {
        if c.name.is_empty() {
            problems.push("a column has no name".into());
        }
        if !names.insert(c.name.as_str()) {
            problems.push(format!(
                "column `{}` appears twice (or is the label)",
                c.name
            ));
        }
        let k = match column_kind(c) {
            Ok(k) => k,
            Err(e) => {
                problems.push(e.to_string());
                ColumnKind::Unspecified
            }
        };
        let allowed: &[MissingRule] = match k {
            ColumnKind::Numeric => &[MissingRule::Reject, MissingRule::Mean, MissingRule::Zero],
            ColumnKind::Categorical => &[MissingRule::Reject, MissingRule::Other],
            ColumnKind::Boolean => &[MissingRule::Reject, MissingRule::Zero],
            ColumnKind::Unspecified => &[],
        };
        match missing_rule(c) {
            Err(e) if k != ColumnKind::Unspecified => problems.push(e.to_string()),
            Ok(missing) if k != ColumnKind::Unspecified && !allowed.contains(&missing) => problems
                .push(format!(
                    "column `{}`: missing rule {} does not apply to a {} column",
                    c.name,
                    missing.as_str_name(),
                    k.as_str_name()
                )),
            _ => {}
        }
        if let Err(e) = transform(c) {
            problems.push(e.to_string());
        }
        match k {
            ColumnKind::Numeric => match (c.lower, c.upper) {
                (Some(lo), Some(hi)) if !(lo.is_finite() && hi.is_finite() && lo < hi) => problems
                    .push(format!(
                        "column `{}`: bounds [{lo}, {hi}] must be finite with lower < upper",
                        c.name
                    )),
                (Some(_), None) | (None, Some(_)) => problems.push(format!(
                    "column `{}`: give both `lower` and `upper`, or neither",
                    c.name
                )),
                _ => {}
            },
            ColumnKind::Categorical => {
                if c.values.is_empty() {
                    problems.push(format!("categorical column `{}` lists no values", c.name));
                }
                if has_duplicates(&c.values) {
                    problems.push(format!(
                        "categorical column `{}` lists a value twice",
                        c.name
                    ));
                }
            }
            _ => {}
        }
        if k != ColumnKind::Numeric && (c.lower.is_some() || c.upper.is_some() || c.transform != 0)
        {
            problems.push(format!(
                "column `{}`: bounds and transforms apply to numeric columns only",
                c.name
            ));
        }
        if k != ColumnKind::Categorical && !c.values.is_empty() {
            problems.push(format!(
                "column `{}`: values apply to categorical columns only",
                c.name
            ));
        }
    }
    problems
}

fn has_duplicates(values: &[String]) -> bool {
    let mut seen = HashSet::new();
    values.iter().any(|v| !seen.insert(v))
}

/// The names of the encoded features, in order: a numeric or boolean column gives its own name,
/// a categorical column one `name=value` per value and `name=<other>`.
pub fn encoded_names(schema: &FeatureSchema) -> Vec<String> {
    let mut names = Vec::new();
    for c in &schema.columns {
        match column_kind(c) {
            Ok(ColumnKind::Categorical) => {
                names.extend(c.values.iter().map(|v| format!("{}={v}", c.name)));
                names.push(format!("{}=<other>", c.name));
            }
            _ => names.push(c.name.clone()),
        }
    }
    names
}

/// The numeric columns, in schema order.
pub fn numeric_columns(schema: &FeatureSchema) -> Vec<&ColumnSpec> {
    schema
        .columns
        .iter()
        .filter(|c| column_kind(c) == Ok(ColumnKind::Numeric))
        .collect()
}

/// The label kind a model needs.
pub fn label_kind_for(model: ModelKind) -> Option<LabelKind> {
    match model {
        ModelKind::LogisticRegression | ModelKind::Mlp => Some(LabelKind::Binary),
        ModelKind::MultinomialLogisticRegression => Some(LabelKind::Categorical),
        ModelKind::LinearRegression => Some(LabelKind::Numeric),
        ModelKind::Unspecified => None,
    }
}

/// The parameter tensors of the job's model: (name, shape), in order. An error when the spec's
/// model or label kind is not one this build knows.
pub fn parameter_layout(spec: &TrainingSpec) -> Result<Vec<(String, Vec<usize>)>, EnumError> {
    let schema = spec.schema.clone().unwrap_or_default();
    let d = encoded_names(&schema).len();
    let h = spec.hidden_units as usize;
    Ok(match model_kind(spec)? {
        ModelKind::MultinomialLogisticRegression => {
            let k = classes(&schema)?.len();
            vec![("weights".into(), vec![d, k]), ("bias".into(), vec![k])]
        }
        ModelKind::Mlp => vec![
            ("hidden_weights".into(), vec![d, h]),
            ("hidden_bias".into(), vec![h]),
            ("weights".into(), vec![h]),
            ("bias".into(), vec![]),
        ],
        ModelKind::LogisticRegression | ModelKind::LinearRegression => {
            vec![("weights".into(), vec![d]), ("bias".into(), vec![])]
        }
        ModelKind::Unspecified => return Err(unspecified(model_kind_field())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[label]
name = "seized"
kind = "binary"

[[column]]
name = "value"
kind = "numeric"
lower = 0.0
upper = 1e6
transform = "log1p"
missing = "mean"

[[column]]
name = "mode"
kind = "categorical"
values = ["sea", "air"]
missing = "other"

[[column]]
name = "known"
kind = "boolean"
"#;

    #[test]
    fn a_good_schema_encodes_one_hot_with_other() {
        let schema = parse(GOOD).unwrap().unwrap();
        assert!(problems(&schema).is_empty(), "{:?}", problems(&schema));
        assert_eq!(
            encoded_names(&schema),
            ["value", "mode=sea", "mode=air", "mode=<other>", "known"]
        );
        assert_eq!(classes(&schema).unwrap(), ["0", "1"]);
        let spec = TrainingSpec {
            model: ModelKind::MultinomialLogisticRegression as i32,
            schema: Some(FeatureSchema {
                label: Some(LabelSpec {
                    name: "y".into(),
                    kind: LabelKind::Categorical as i32,
                    classes: vec!["a".into(), "b".into(), "c".into()],
                }),
                ..schema
            }),
            ..Default::default()
        };
        assert_eq!(
            parameter_layout(&spec).unwrap()[0],
            ("weights".to_owned(), vec![5, 3])
        );
    }

    #[test]
    fn toml_round_trips() {
        let schema = parse(GOOD).unwrap().unwrap();
        assert_eq!(parse(&to_toml(&schema).unwrap()).unwrap().unwrap(), schema);
        // Names and values TOML must escape: a combining accent, a control character, quotes
        // and a backslash.
        let mut odd = schema.clone();
        odd.columns[0].name = "cafe\u{301}".into();
        odd.columns[1].values = vec!["sea\u{7}".into(), "a \"b\" \\ c".into()];
        if let Some(label) = odd.label.as_mut() {
            label.name = "sa\u{308}isie\tfaite".into();
        }
        let text = to_toml(&odd).unwrap();
        assert_eq!(parse(&text).unwrap().unwrap(), odd, "{text}");
        // An unknown enum value cannot be written.
        odd.columns[0].kind = 42;
        assert!(to_toml(&odd).is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[label]
name = "seized"
kind = "binary"
classes = ["no"]

[[column]]
name = "value"
kind = "numeric"
lower = 5.0
missing = "other"

[[column]]
name = "mode"
kind = "categorical"
values = ["sea", "sea"]

[[column]]
name = "seized"
kind = "boolean"
"#;
        let schema = parse(text).unwrap().unwrap();
        let found = problems(&schema);
        assert_eq!(found.len(), 5, "{found:#?}");
        let unknown = parse("[label]\nname = \"y\"\nkind = \"binaryy\"\n[[column]]\nname = \"a\"\nkind = \"text\"\n")
            .unwrap()
            .unwrap_err();
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        assert!(parse("[label]\nname = \"y\"\nkind = \"binary\"\ncolour = 1\n").is_err());
    }

    #[test]
    fn an_unknown_enum_value_is_a_problem_naming_its_field_and_value() {
        let mut schema = parse(GOOD).unwrap().unwrap();
        schema.columns[0].kind = 42;
        schema.columns[1].missing = 17;
        schema.columns[0].transform = 9;
        if let Some(label) = schema.label.as_mut() {
            label.kind = 0;
        }
        let found = problems(&schema);
        for expected in [
            "the kind of column `value` is 42",
            "the missing-value rule of column `mode` is 17",
            "the transform of column `value` is 9",
            "the kind of label `seized` is not given",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{expected}: {found:#?}"
            );
        }
        assert_eq!(
            column_kind(&schema.columns[0]),
            Err(EnumError::Unknown {
                field: "the kind of column `value`".into(),
                value: 42
            })
        );
    }
}
