//! The federation-wide feature schema: the TOML file an operator writes, its checks, and what
//! follows from it for every party (encoded feature names, parameter layouts of each model).
//!
//! A schema is checked whole, before anything starts: [`check_text`] reads a file and reports
//! every problem at once, each with its line and what to write instead; [`check`] does the same
//! for a schema on the wire, for the job that uses it ([`Usage`]), and covers everything a node
//! would refuse of a schema, so that a schema it accepts is never refused by a node for a
//! reason of its schema; [`unregistered`] names the columns a registry does not know.
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
use std::fmt;
use std::path::Path;

use serde::Serialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config::ConfigError;
use crate::enums;
use crate::error::{EnumError, SchemaTomlError};
use crate::v1::{
    ColumnKind, ColumnSpec, FeatureSchema, LabelKind, LabelSpec, MissingRule, ModelKind,
    TrainingSpec, Transform,
};

/// The schema file, as [`to_toml`] writes it.
#[derive(Debug, Serialize)]
struct SchemaFile {
    label: LabelFile,
    #[serde(rename = "column")]
    columns: Vec<ColumnFile>,
}

#[derive(Debug, Serialize)]
struct LabelFile {
    name: String,
    kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    classes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ColumnFile {
    name: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lower: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upper: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transform: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
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

/// The largest magnitude of a column's bound: with it, no sum of clamped values can overflow,
/// whatever the number of records. A node refuses a schema with a larger one.
pub const MAX_BOUND: f64 = 1e15;

/// The most classes a multinomial model may have: its evaluation releases classes² counts. A
/// node refuses a multinomial job whose label has more.
pub const MAX_CLASSES: usize = 512;

/// Where in a schema a problem lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The schema as a whole.
    Schema,
    /// The label.
    Label,
    /// A column, by its index among the schema's columns.
    Column(usize),
}

/// One problem of a schema: where it lies, the line of the schema file when it was read from
/// one, and a sentence naming the column (or the label) and what to write instead.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub place: Place,
    /// The line in the schema file (from 1), when the schema was read from text.
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    fn new(place: Place, message: String) -> Self {
        Problem {
            place,
            line: None,
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What a schema is checked for beyond its own soundness: the job that will use it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// The model the job trains, whose label kind the schema's label must be (and, for a
    /// multinomial model, have at most [`MAX_CLASSES`] classes). `None`: not known yet.
    pub model: Option<ModelKind>,
    /// Whether the job runs a statistics round (a training job that does not give its
    /// standardisation, as `treaty job train` never does): its DP sums need `lower` and `upper`
    /// on every numeric column.
    pub statistics: bool,
}

impl Usage {
    /// A training job whose federation computes the standardisation (the statistics round).
    pub fn training(model: Option<ModelKind>) -> Self {
        Usage {
            model,
            statistics: true,
        }
    }
}

/// A schema file read into a schema, with the line of each part and the problems of its shape
/// (keys that are not part of a schema, values of the wrong type) and of its words (kinds,
/// missing rules and transforms that do not exist).
struct Read {
    schema: FeatureSchema,
    label_line: Option<usize>,
    column_lines: Vec<Option<usize>>,
    shape: Vec<Problem>,
    words: Vec<Problem>,
}

impl Read {
    fn line_of(&self, place: Place) -> Option<usize> {
        match place {
            Place::Schema => None,
            Place::Label => self.label_line,
            Place::Column(i) => self.column_lines.get(i).copied().flatten(),
        }
    }
}

/// The line (from 1) of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The keys and values of one table of a schema file ([label] or a [[column]]), read with
/// their problems.
struct Fields<'t, 'i> {
    text: &'t str,
    table: &'t DeTable<'i>,
    place: Place,
    /// How problems name the table: "the label", "column `x`".
    what: String,
    shape: &'t mut Vec<Problem>,
}

impl<'t, 'i> Fields<'t, 'i> {
    fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        let table: &'t DeTable<'i> = self.table;
        table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    fn wrong(&mut self, key: &str, value: &Spanned<DeValue<'_>>, expected: &str, example: &str) {
        self.shape.push(Problem {
            place: self.place,
            line: Some(line_at(self.text, value.span().start)),
            message: format!(
                "{}: `{key}` is {} {}; it must be {expected}: write {key} = {example}",
                self.what,
                article(value.get_ref().type_str()),
                value.get_ref().type_str()
            ),
        });
    }

    fn string(&mut self, key: &str, example: &str) -> Option<String> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong(key, value, "a string", example);
                None
            }
        }
    }

    fn number(&mut self, key: &str, example: &str) -> Option<f64> {
        let value = self.get(key)?;
        let number = match value.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|i| i as f64),
            _ => None,
        };
        if number.is_none() {
            self.wrong(key, value, "a number", example);
        }
        number
    }

    fn strings(&mut self, key: &str, example: &str) -> Vec<String> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let list = match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect::<Option<Vec<String>>>(),
            _ => None,
        };
        match list {
            Some(list) => list,
            None => {
                self.wrong(key, value, "a list of strings", example);
                Vec::new()
            }
        }
    }

    /// Every key of the table that is not one of `known`.
    fn unknown_keys(&mut self, known: &[&str]) {
        for (key, _) in self.table.iter() {
            if !known.contains(&key.get_ref().as_ref()) {
                self.shape.push(Problem {
                    place: self.place,
                    line: Some(line_at(self.text, key.span().start)),
                    message: format!(
                        "{}: `{}` is not a key of {}; it takes {}",
                        self.what,
                        key.get_ref(),
                        if self.place == Place::Label {
                            "[label]"
                        } else {
                            "a [[column]]"
                        },
                        known
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
    }
}

fn article(noun: &str) -> &'static str {
    match noun.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// Reads schema TOML: `Err` when it is not TOML at all, the schema and what is wrong with its
/// shape and words otherwise (every problem, each with its line).
fn read(text: &str) -> Result<Read, Problem> {
    let root = DeTable::parse(text).map_err(|e| Problem {
        place: Place::Schema,
        line: e.span().map(|s| line_at(text, s.start)),
        message: format!("the file is not valid TOML: {}", e.message().trim_end()),
    })?;
    let mut read = Read {
        schema: FeatureSchema::default(),
        label_line: None,
        column_lines: Vec::new(),
        shape: Vec::new(),
        words: Vec::new(),
    };
    for (key, value) in root.get_ref().iter() {
        let line = Some(line_at(text, key.span().start));
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("label", DeValue::Table(table)) => {
                read.label_line = Some(line_at(text, value.span().start));
                read.schema.label = Some(label(text, table, &mut read));
            }
            ("column", DeValue::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    read.column_lines
                        .push(Some(line_at(text, item.span().start)));
                    let column = match item.get_ref() {
                        DeValue::Table(table) => column(text, table, i, &mut read),
                        other => {
                            read.shape.push(Problem {
                                place: Place::Column(i),
                                line: Some(line_at(text, item.span().start)),
                                message: format!(
                                    "column #{} is {} {}; write each column as a [[column]] table",
                                    i + 1,
                                    article(other.type_str()),
                                    other.type_str()
                                ),
                            });
                            ColumnSpec::default()
                        }
                    };
                    read.schema.columns.push(column);
                }
            }
            ("label", _) => read.shape.push(Problem {
                place: Place::Label,
                line,
                message: "`label` must be a table: write [label] with its `name` and `kind`"
                    .to_owned(),
            }),
            ("column", _) => read.shape.push(Problem {
                place: Place::Schema,
                line,
                message: "`column` must be a list of tables: write each column as a [[column]] table"
                    .to_owned(),
            }),
            (other, _) => read.shape.push(Problem {
                place: Place::Schema,
                line,
                message: format!(
                    "`{other}` is not part of a schema; a schema has a [label] table and [[column]] tables"
                ),
            }),
        }
    }
    Ok(read)
}

fn label(text: &str, table: &DeTable<'_>, read: &mut Read) -> LabelSpec {
    let mut fields = Fields {
        text,
        table,
        place: Place::Label,
        what: "the label".to_owned(),
        shape: &mut read.shape,
    };
    let name = fields.string("name", "\"seized\"").unwrap_or_default();
    if !name.is_empty() {
        fields.what = format!("label `{name}`");
    }
    let kind = fields.string("kind", "\"binary\"");
    let classes = fields.strings("classes", "[\"0\", \"1\"]");
    fields.unknown_keys(&["name", "kind", "classes"]);
    let what = fields.what;
    let kind = match kind.as_deref() {
        Some("binary") => LabelKind::Binary,
        Some("categorical") => LabelKind::Categorical,
        Some("numeric") => LabelKind::Numeric,
        Some(other) => {
            read.words.push(Problem::new(
                Place::Label,
                format!(
                    "{what}: kind `{other}` is not binary, categorical or numeric; write kind = \"binary\", \"categorical\" or \"numeric\""
                ),
            ));
            LabelKind::Unspecified
        }
        None if fields_has(table, "kind") => LabelKind::Unspecified,
        None => {
            read.shape.push(Problem::new(
                Place::Label,
                format!(
                    "{what} has no `kind`; write kind = \"binary\", \"categorical\" or \"numeric\""
                ),
            ));
            LabelKind::Unspecified
        }
    };
    LabelSpec {
        name,
        kind: kind as i32,
        classes,
    }
}

fn fields_has(table: &DeTable<'_>, key: &str) -> bool {
    table.iter().any(|(k, _)| k.get_ref().as_ref() == key)
}

fn column(text: &str, table: &DeTable<'_>, index: usize, read: &mut Read) -> ColumnSpec {
    let mut fields = Fields {
        text,
        table,
        place: Place::Column(index),
        what: format!("column #{}", index + 1),
        shape: &mut read.shape,
    };
    let name = fields
        .string("name", "\"declared_value\"")
        .unwrap_or_default();
    if !name.is_empty() {
        fields.what = format!("column `{name}`");
    }
    let kind = fields.string("kind", "\"numeric\"");
    let lower = fields.number("lower", "0.0");
    let upper = fields.number("upper", "1000.0");
    let transform = fields.string("transform", "\"log1p\"");
    let values = fields.strings("values", "[\"sea\", \"air\"]");
    let missing = fields.string("missing", "\"reject\"");
    fields.unknown_keys(&[
        "name",
        "kind",
        "lower",
        "upper",
        "transform",
        "values",
        "missing",
    ]);
    let what = fields.what;
    let place = Place::Column(index);
    let kind = match kind.as_deref() {
        Some("numeric") => ColumnKind::Numeric,
        Some("categorical") => ColumnKind::Categorical,
        Some("boolean") => ColumnKind::Boolean,
        Some(other) => {
            read.words.push(Problem::new(
                place,
                format!(
                    "{what}: kind `{other}` is not numeric, categorical or boolean; write kind = \"numeric\", \"categorical\" or \"boolean\""
                ),
            ));
            ColumnKind::Unspecified
        }
        None if fields_has(table, "kind") => ColumnKind::Unspecified,
        None => {
            read.shape.push(Problem::new(
                place,
                format!(
                    "{what} has no `kind`; write kind = \"numeric\", \"categorical\" or \"boolean\""
                ),
            ));
            ColumnKind::Unspecified
        }
    };
    let missing = match missing.as_deref() {
        None | Some("reject") => MissingRule::Reject,
        Some("mean") => MissingRule::Mean,
        Some("zero") => MissingRule::Zero,
        Some("other") => MissingRule::Other,
        Some(other) => {
            read.words.push(Problem::new(
                place,
                format!(
                    "{what}: missing rule `{other}` is not reject, mean, zero or other; write missing = {}",
                    missing_words(kind)
                ),
            ));
            MissingRule::Unspecified
        }
    };
    let transform = match transform.as_deref() {
        None | Some("none") => Transform::Unspecified,
        Some("log1p") => Transform::Log1p,
        Some(other) => {
            read.words.push(Problem::new(
                place,
                format!(
                    "{what}: transform `{other}` is not none or log1p; write transform = \"log1p\", or leave it out"
                ),
            ));
            Transform::Unspecified
        }
    };
    ColumnSpec {
        name,
        kind: kind as i32,
        lower,
        upper,
        transform: transform as i32,
        values,
        missing: missing as i32,
    }
}

/// The missing rules of a kind of column, as the schema file writes them.
fn allowed_missing(kind: ColumnKind) -> &'static [MissingRule] {
    match kind {
        ColumnKind::Numeric => &[MissingRule::Reject, MissingRule::Mean, MissingRule::Zero],
        ColumnKind::Categorical => &[MissingRule::Reject, MissingRule::Other],
        ColumnKind::Boolean => &[MissingRule::Reject, MissingRule::Zero],
        ColumnKind::Unspecified => &[
            MissingRule::Reject,
            MissingRule::Mean,
            MissingRule::Zero,
            MissingRule::Other,
        ],
    }
}

fn missing_word(rule: MissingRule) -> &'static str {
    match rule {
        MissingRule::Mean => "mean",
        MissingRule::Zero => "zero",
        MissingRule::Other => "other",
        _ => "reject",
    }
}

/// `"reject" or "mean"`...: what a column of this kind may write as its missing rule.
fn missing_words(kind: ColumnKind) -> String {
    let words: Vec<String> = allowed_missing(kind)
        .iter()
        .map(|r| format!("\"{}\"", missing_word(*r)))
        .collect();
    match words.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn kind_word(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Numeric => "numeric",
        ColumnKind::Categorical => "categorical",
        ColumnKind::Boolean => "boolean",
        ColumnKind::Unspecified => "unspecified",
    }
}

fn label_word(kind: LabelKind) -> &'static str {
    match kind {
        LabelKind::Binary => "binary",
        LabelKind::Categorical => "categorical",
        LabelKind::Numeric => "numeric",
        LabelKind::Unspecified => "unspecified",
    }
}

fn model_word(model: ModelKind) -> &'static str {
    match model {
        ModelKind::LogisticRegression => "logistic regression",
        ModelKind::MultinomialLogisticRegression => "multinomial logistic regression",
        ModelKind::LinearRegression => "linear regression",
        ModelKind::Mlp => "MLP",
        ModelKind::Unspecified => "unspecified",
    }
}

/// The models that train on a label of this kind.
fn models_for(label: LabelKind) -> String {
    let models: Vec<&str> = [
        ModelKind::LogisticRegression,
        ModelKind::MultinomialLogisticRegression,
        ModelKind::LinearRegression,
        ModelKind::Mlp,
    ]
    .into_iter()
    .filter(|m| label_kind_for(*m) == Some(label))
    .map(model_word)
    .collect();
    models.join(" or ")
}

/// Reads a schema file and checks it as a schema (whatever job uses it), reporting every
/// problem at once, each with its line.
pub fn load(path: &Path) -> Result<FeatureSchema, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
        path: path.to_owned(),
        reason,
    })?;
    check_text(&text, &Usage::default()).map_err(|problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems: problems.iter().map(ToString::to_string).collect(),
    })
}

/// Parses schema TOML: `Err` when it is not TOML of a schema's shape (every such problem, each
/// with its line), `Ok(Err)` with every unknown word otherwise. It does not check the schema:
/// [`problems`] and [`check`] do.
pub fn parse(text: &str) -> Result<Result<FeatureSchema, Vec<String>>, String> {
    let read = read(text).map_err(|p| p.to_string())?;
    if !read.shape.is_empty() {
        let lines: Vec<String> = read.shape.iter().map(ToString::to_string).collect();
        return Err(lines.join("; "));
    }
    Ok(if read.words.is_empty() {
        Ok(read.schema)
    } else {
        Err(read.words.iter().map(|p| p.message.clone()).collect())
    })
}

/// Reads and checks a schema file's text for `usage`: the schema, or every problem of its
/// shape, its words and its content at once, each with its line (a problem of a column on the
/// line of its `[[column]]`). A schema this accepts, no node refuses for its schema.
pub fn check_text(text: &str, usage: &Usage) -> Result<FeatureSchema, Vec<Problem>> {
    check_text_with(text, usage, |_| Vec::new())
}

/// [`check_text`], and `more` checks of the schema as read (e.g. [`unregistered`]), whose
/// problems are placed on their lines too. `more` sees the schema as far as it could be read,
/// so its problems come with the others.
pub fn check_text_with(
    text: &str,
    usage: &Usage,
    more: impl FnOnce(&FeatureSchema) -> Vec<Problem>,
) -> Result<FeatureSchema, Vec<Problem>> {
    let read = read(text).map_err(|p| vec![p])?;
    let mut problems: Vec<Problem> = read.shape.iter().chain(&read.words).cloned().collect();
    // A kind or rule the file does not give or misspells is reported above, as the file
    // writes it: not again as an enum without a value.
    problems.extend(checked(&read.schema, usage, false));
    problems.extend(more(&read.schema));
    for p in &mut problems {
        if p.line.is_none() {
            p.line = read.line_of(p.place);
        }
    }
    problems.sort_by_key(|p| p.line.unwrap_or(0));
    if problems.is_empty() {
        Ok(read.schema)
    } else {
        Err(problems)
    }
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

/// The public range of a bounded numeric column's values once clamped and transformed: every
/// value a node reads from the column lies in `[lower, upper]`. Both ends of the statistics
/// round derive its centre and half-range from here, from the schema alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformedBounds {
    pub lower: f64,
    pub upper: f64,
}

impl TransformedBounds {
    /// The midpoint, about which the statistics round centres its sums.
    pub fn centre(&self) -> f64 {
        // Halved first, so that no finite bounds overflow.
        self.lower / 2.0 + self.upper / 2.0
    }

    /// Half the range: the farthest a value lies from the centre.
    pub fn half_range(&self) -> f64 {
        self.upper / 2.0 - self.lower / 2.0
    }
}

/// A numeric column's bounds after its transform: the clamp bounds themselves, or for `log1p`
/// their log1p, a negative bound counting as 0 (a negative value is unreadable there). `None`
/// for a column without both bounds.
pub fn transformed_bounds(c: &ColumnSpec) -> Result<Option<TransformedBounds>, EnumError> {
    let log1p = transform(c)? == Transform::Log1p;
    Ok(c.lower.zip(c.upper).map(|(lower, upper)| match log1p {
        true => TransformedBounds {
            lower: lower.max(0.0).ln_1p(),
            upper: upper.max(0.0).ln_1p(),
        },
        false => TransformedBounds { lower, upper },
    }))
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

/// Every problem with a schema that makes it unusable by any job, each in a sentence naming
/// the column and what to write instead: what a node refuses of every task's schema (with
/// bounds beyond [`MAX_BOUND`]). [`check`] finds these and more.
pub fn problems(schema: &FeatureSchema) -> Vec<String> {
    soundness(schema, true)
        .into_iter()
        .map(|p| p.message)
        .collect()
}

/// Every problem with a schema for `usage`, at once: those of [`problems`], and everything else
/// a node would refuse of it — bounds beyond [`MAX_BOUND`]; a numeric column without bounds
/// when the job runs a statistics round; a label that does not fit the model, or a multinomial
/// label of more than [`MAX_CLASSES`] classes — and what would make a node silently read no
/// record: a `log1p` column whose lower bound is negative, names, values or classes that are
/// empty or padded with spaces (a node trims every cell and header). A schema with no problem
/// here is never refused by a node for a reason of its schema.
pub fn check(schema: &FeatureSchema, usage: &Usage) -> Vec<Problem> {
    checked(schema, usage, true)
}

/// [`check`]; `enums`: whether an enum without a value this build knows is a problem (not when
/// the schema was read from a file, which reports it as the file writes it).
fn checked(schema: &FeatureSchema, usage: &Usage, enums: bool) -> Vec<Problem> {
    let mut problems = soundness(schema, enums);
    let label = schema.label.clone().unwrap_or_default();
    let label_kind = decode_label_kind(schema).unwrap_or(LabelKind::Unspecified);
    let classes = classes(schema).unwrap_or_default();
    if !label.name.is_empty() && padded(&label.name) {
        problems.push(Problem::new(
            Place::Label,
            format!(
                "label `{}`: the name has spaces at its ends, which no header has (a node trims them); write name = {:?}",
                label.name,
                label.name.trim()
            ),
        ));
    }
    if label_kind != LabelKind::Numeric {
        for class in classes.iter().filter(|c| c.is_empty() || padded(c)) {
            problems.push(Problem::new(
                Place::Label,
                format!(
                    "label `{}`: class {class:?} can never match a cell (a node trims every cell, and an empty one is missing); write {:?}",
                    label.name,
                    class.trim()
                ),
            ));
        }
    }
    if let Some(model) = usage.model
        && let Some(needed) = label_kind_for(model)
        && label_kind != LabelKind::Unspecified
    {
        if needed != label_kind {
            problems.push(Problem::new(
                Place::Label,
                format!(
                    "label `{}` is {}, but a {} model needs a {} label; write kind = \"{}\", or train a model for a {} label ({})",
                    label.name,
                    label_word(label_kind),
                    model_word(model),
                    label_word(needed),
                    label_word(needed),
                    label_word(label_kind),
                    models_for(label_kind),
                ),
            ));
        } else if model == ModelKind::MultinomialLogisticRegression && classes.len() > MAX_CLASSES {
            problems.push(Problem::new(
                Place::Label,
                format!(
                    "label `{}` has {} classes; a multinomial model takes at most {MAX_CLASSES}: merge the rare ones",
                    label.name,
                    classes.len()
                ),
            ));
        }
    }
    for (i, c) in schema.columns.iter().enumerate() {
        let place = Place::Column(i);
        if !c.name.is_empty() && padded(&c.name) {
            problems.push(Problem::new(
                place,
                format!(
                    "column `{}`: the name has spaces at its ends, which no header has (a node trims them); write name = {:?}",
                    c.name,
                    c.name.trim()
                ),
            ));
        }
        match column_kind(c) {
            Ok(ColumnKind::Numeric) => {
                let bounds = [c.lower, c.upper];
                if bounds.iter().flatten().any(|b| b.abs() > MAX_BOUND) {
                    problems.push(Problem::new(
                        place,
                        format!(
                            "column `{}`: bounds beyond ±{MAX_BOUND:e}; write `lower` and `upper` within ±{MAX_BOUND:e}, the range a value is clamped to",
                            c.name
                        ),
                    ));
                }
                if usage.statistics && c.lower.is_none() && c.upper.is_none() {
                    problems.push(Problem::new(
                        place,
                        format!(
                            "numeric column `{}` has no bounds; the job's differentially private statistics (the standardisation) need them: write lower = ... and upper = ..., the plausible range its values are clamped to",
                            c.name
                        ),
                    ));
                }
                if transform(c) == Ok(Transform::Log1p)
                    && let Some(lower) = c.lower
                    && lower < 0.0
                {
                    problems.push(Problem::new(
                        place,
                        format!(
                            "column `{}`: transform log1p takes no negative value, yet lower = {lower} lets the clamp keep some (and a record with one is left out); write lower = 0.0, or remove the transform",
                            c.name
                        ),
                    ));
                }
            }
            Ok(ColumnKind::Categorical) => {
                for value in c.values.iter().filter(|v| v.is_empty() || padded(v)) {
                    problems.push(Problem::new(
                        place,
                        format!(
                            "categorical column `{}`: value {value:?} can never match a cell (a node trims every cell, and an empty one is missing: write missing = \"other\" for those); write {:?}",
                            c.name,
                            value.trim()
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// Whether a name has spaces at its ends.
fn padded(text: &str) -> bool {
    text.trim() != text
}

/// Every column (and the label) that is not a field of the federation's registry: the sharing
/// policies judge a job by its fields' categories, so a round of a job with a field the
/// registry does not know is refused. `registry` names the registry in the sentences (its
/// version); `hint` may suggest a field for an unknown name ("did you mean `x`?").
pub fn unregistered(
    schema: &FeatureSchema,
    registry: &str,
    is_field: impl Fn(&str) -> bool,
    hint: impl Fn(&str) -> Option<String>,
) -> Vec<Problem> {
    let label = schema
        .label
        .iter()
        .map(|l| (Place::Label, "label", &l.name));
    let columns = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| (Place::Column(i), "column", &c.name));
    label
        .chain(columns)
        .filter(|(_, _, name)| !name.is_empty() && !is_field(name))
        .map(|(place, what, name)| {
            Problem::new(
                place,
                format!(
                    "{what} `{name}` is not a field of registry {registry}; add it to the registry's [fields] with its category (e.g. {name} = \"ordinary\"), or use a field the registry has{}",
                    hint(name).map_or(String::new(), |h| format!(" ({h})"))
                ),
            )
        })
        .collect()
}

/// The problems of a schema whatever job uses it. `enums`: whether an enum without a value
/// this build knows is a problem.
fn soundness(schema: &FeatureSchema, enums: bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |place, message: String| problems.push(Problem::new(place, message));
    let Some(label) = schema.label.as_ref() else {
        push(
            Place::Label,
            "the schema has no label; write a [label] table with the label's `name` and `kind`"
                .to_owned(),
        );
        return with_columns(schema, problems, enums, None);
    };
    if label.name.is_empty() {
        push(
            Place::Label,
            "the label has no name; write name = \"...\" under [label], the label's column in the agencies' files"
                .to_owned(),
        );
    }
    let n = label.classes.len();
    match decode_label_kind(schema) {
        Ok(LabelKind::Binary) if !(n == 0 || n == 2) => push(
            Place::Label,
            format!(
                "binary label `{}` lists {n} class(es); list exactly two, [negative, positive], e.g. classes = [\"no\", \"yes\"], or leave `classes` out for 0 and 1",
                label.name
            ),
        ),
        Ok(LabelKind::Categorical) if n < 2 => push(
            Place::Label,
            format!(
                "categorical label `{}` lists {n} class(es); list every class, at least two: classes = [\"a\", \"b\", ...]",
                label.name
            ),
        ),
        Ok(LabelKind::Numeric) if n > 0 => push(
            Place::Label,
            format!(
                "numeric label `{}` takes no classes; remove `classes`, or write kind = \"categorical\"",
                label.name
            ),
        ),
        Err(e) if enums => push(
            Place::Label,
            format!("{e}; write kind = \"binary\", \"categorical\" or \"numeric\""),
        ),
        _ => {}
    }
    for class in duplicates(&label.classes) {
        push(
            Place::Label,
            format!(
                "label `{}` lists class {class:?} twice; list each class once",
                label.name
            ),
        );
    }
    with_columns(schema, problems, enums, Some(&label.name))
}

/// [`soundness`] of the columns, after the label's `problems`.
fn with_columns(
    schema: &FeatureSchema,
    mut problems: Vec<Problem>,
    enums: bool,
    label: Option<&str>,
) -> Vec<Problem> {
    let mut push = |place, message: String| problems.push(Problem::new(place, message));
    if schema.columns.is_empty() {
        push(
            Place::Schema,
            "the schema has no feature columns; add at least one [[column]] with its `name` and `kind`"
                .to_owned(),
        );
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
        push(
            Place::Schema,
            format!(
                "the schema encodes {width} features (one per numeric or boolean column, one per value and one for `other` per categorical column); at most {MAX_ENCODED_WIDTH}: list fewer categorical values"
            ),
        );
    }
    let mut names = HashSet::new();
    for (i, c) in schema.columns.iter().enumerate() {
        let place = Place::Column(i);
        if c.name.is_empty() {
            push(
                place,
                format!(
                    "column #{} has no name; write name = \"...\", the column's header in the agencies' files",
                    i + 1
                ),
            );
        } else if label == Some(c.name.as_str()) {
            push(
                place,
                format!(
                    "column `{}` is the label; a column cannot be both a feature and the label: remove the column",
                    c.name
                ),
            );
        } else if !names.insert(c.name.as_str()) {
            push(
                place,
                format!(
                    "column `{}` appears twice; remove one, or rename it to the other column it meant",
                    c.name
                ),
            );
        }
        let kind = match column_kind(c) {
            Ok(k) => k,
            Err(e) => {
                if enums {
                    push(
                        place,
                        format!("{e}; write kind = \"numeric\", \"categorical\" or \"boolean\""),
                    );
                }
                ColumnKind::Unspecified
            }
        };
        let known = kind != ColumnKind::Unspecified;
        match missing_rule(c) {
            Err(e) if known && enums => push(
                place,
                format!("{e}; write missing = {}", missing_words(kind)),
            ),
            Ok(missing) if known && !allowed_missing(kind).contains(&missing) => push(
                place,
                format!(
                    "column `{}`: missing = \"{}\" does not apply to a {} column; write missing = {}",
                    c.name,
                    missing_word(missing),
                    kind_word(kind),
                    missing_words(kind)
                ),
            ),
            _ => {}
        }
        if let Err(e) = transform(c)
            && enums
        {
            push(
                place,
                format!("{e}; write transform = \"log1p\", or leave it out"),
            );
        }
        match kind {
            ColumnKind::Numeric => match (c.lower, c.upper) {
                (Some(lo), Some(hi)) if !(lo.is_finite() && hi.is_finite() && lo < hi) => push(
                    place,
                    format!(
                        "column `{}`: bounds [{lo}, {hi}] must be finite with lower < upper; write the plausible range of its values, lower first",
                        c.name
                    ),
                ),
                (Some(_), None) => push(
                    place,
                    format!(
                        "column `{}` gives `lower` but not `upper`; write upper = ..., or neither",
                        c.name
                    ),
                ),
                (None, Some(_)) => push(
                    place,
                    format!(
                        "column `{}` gives `upper` but not `lower`; write lower = ..., or neither",
                        c.name
                    ),
                ),
                _ => {}
            },
            ColumnKind::Categorical => {
                if c.values.is_empty() {
                    push(
                        place,
                        format!(
                            "categorical column `{}` lists no values; list those to encode, e.g. values = [\"sea\", \"air\"] (any other falls in its `other` slot)",
                            c.name
                        ),
                    );
                }
                for value in duplicates(&c.values) {
                    push(
                        place,
                        format!(
                            "categorical column `{}` lists value {value:?} twice; list each value once",
                            c.name
                        ),
                    );
                }
            }
            _ => {}
        }
        if known
            && kind != ColumnKind::Numeric
            && (c.lower.is_some() || c.upper.is_some() || c.transform != 0)
        {
            push(
                place,
                format!(
                    "column `{}`: `lower`, `upper` and `transform` apply to numeric columns only; remove them, or write kind = \"numeric\"",
                    c.name
                ),
            );
        }
        if known && kind != ColumnKind::Categorical && !c.values.is_empty() {
            push(
                place,
                format!(
                    "column `{}`: `values` apply to categorical columns only; remove them, or write kind = \"categorical\"",
                    c.name
                ),
            );
        }
    }
    problems
}

/// Each value that appears more than once, once, in order.
fn duplicates(values: &[String]) -> Vec<&String> {
    let mut seen = HashSet::new();
    let mut twice = Vec::new();
    for v in values {
        if !seen.insert(v) && !twice.contains(&v) {
            twice.push(v);
        }
    }
    twice
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
    fn transformed_bounds_are_the_bounds_after_the_transform() {
        let column = |lower: Option<f64>, upper: Option<f64>, log1p: bool| ColumnSpec {
            name: "c".into(),
            kind: ColumnKind::Numeric as i32,
            lower,
            upper,
            transform: if log1p { Transform::Log1p as i32 } else { 0 },
            ..Default::default()
        };
        let bounds = |c: &ColumnSpec| transformed_bounds(c).unwrap().unwrap();
        // fnlwgt of the Adult census: ln(10001) = 9.21044036..., ln(1500001) = 14.22097633...
        let fnlwgt = bounds(&column(Some(1e4), Some(1.5e6), true));
        assert!((fnlwgt.lower - 9.210440366976).abs() < 1e-9, "{fnlwgt:?}");
        assert!((fnlwgt.upper - 14.220976332739).abs() < 1e-9, "{fnlwgt:?}");
        assert!((fnlwgt.centre() - 11.715708349858).abs() < 1e-9);
        assert!((fnlwgt.half_range() - 2.505267982881).abs() < 1e-9);
        // Without a transform, the bounds themselves: hours per week in [1, 99].
        let hours = bounds(&column(Some(1.0), Some(99.0), false));
        assert_eq!((hours.centre(), hours.half_range()), (50.0, 49.0));
        // log1p reads no negative value: a negative lower bound counts as 0 = ln(1).
        let signed = bounds(&column(Some(-5.0), Some(std::f64::consts::E - 1.0), true));
        assert_eq!(signed.lower, 0.0);
        assert!((signed.upper - 1.0).abs() < 1e-15);
        // The widest finite bounds neither overflow nor lose their centre.
        let widest = bounds(&column(Some(-f64::MAX), Some(f64::MAX), false));
        assert_eq!((widest.centre(), widest.half_range()), (0.0, f64::MAX));
        assert_eq!(
            transformed_bounds(&column(None, Some(1.0), false)),
            Ok(None)
        );
        let unknown = ColumnSpec {
            transform: 7,
            ..column(Some(0.0), Some(1.0), false)
        };
        assert!(transformed_bounds(&unknown).is_err());
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

    /// (line, text) of each problem, in order.
    fn lines(problems: &[Problem]) -> Vec<(Option<usize>, String)> {
        problems
            .iter()
            .map(|p| (p.line, p.message.clone()))
            .collect()
    }

    fn has(problems: &[Problem], line: usize, needles: &[&str]) -> bool {
        problems
            .iter()
            .any(|p| p.line == Some(line) && needles.iter().all(|n| p.message.contains(n)))
    }

    #[test]
    fn a_file_is_checked_whole_every_problem_with_its_line_and_its_fix() {
        // Line numbers by hand: the text starts with a newline, so `[label]` is line 2.
        let text = r#"
[label]
name = "seized"
kind = "binary"
classes = ["no"]

[[column]]
name = "value"
kind = "numeric"
transform = "log1p"
lower = -5.0
upper = 1e16

[[column]]
name = "age"
kind = "numeric"

[[column]]
name = "mode"
kind = "categorical"
values = []
colour = "red"

[[column]]
name = "known"
kind = "bool"

[[column]]
name = "mode"
kind = "boolean"
missing = "mean"
lower = "0"
"#;
        let problems =
            check_text(text, &Usage::training(Some(ModelKind::LogisticRegression))).unwrap_err();
        let expected: &[(usize, &[&str])] = &[
            (
                2,
                &[
                    "binary label `seized` lists 1 class(es)",
                    "list exactly two",
                ],
            ),
            (7, &["column `value`: bounds beyond ±1e15", "within ±1e15"]),
            (
                7,
                &[
                    "column `value`: transform log1p",
                    "lower = -5",
                    "write lower = 0.0",
                ],
            ),
            (
                14,
                &[
                    "numeric column `age` has no bounds",
                    "write lower = ... and upper = ...",
                ],
            ),
            (
                18,
                &["categorical column `mode` lists no values", "values = ["],
            ),
            (
                22,
                &[
                    "column `mode`: `colour` is not a key of a [[column]]",
                    "`lower`, `upper`",
                ],
            ),
            (
                24,
                &[
                    "column `known`: kind `bool` is not numeric, categorical or boolean",
                    "write kind = \"numeric\", \"categorical\" or \"boolean\"",
                ],
            ),
            (28, &["column `mode` appears twice", "rename"]),
            (
                28,
                &[
                    "column `mode`: missing = \"mean\" does not apply to a boolean column",
                    "write missing = \"reject\" or \"zero\"",
                ],
            ),
            (
                32,
                &["column `mode`: `lower` is a string; it must be a number: write lower = 0.0"],
            ),
        ];
        for (line, needles) in expected {
            assert!(
                has(&problems, *line, needles),
                "line {line}: {needles:?} in {:#?}",
                lines(&problems)
            );
        }
        assert_eq!(problems.len(), expected.len(), "{:#?}", lines(&problems));
        // In the order of the file.
        let order: Vec<usize> = problems.iter().filter_map(|p| p.line).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
        // The misspelt kind is said once, as the file writes it, not again as "not given".
        assert!(
            !problems.iter().any(|p| p.message.contains("not given")),
            "{:#?}",
            lines(&problems)
        );
    }

    #[test]
    fn the_job_decides_what_else_is_a_problem() {
        let unbounded = "[label]\nname = \"y\"\nkind = \"binary\"\n[[column]]\nname = \"a\"\nkind = \"numeric\"\n";
        // Without a statistics round (the standardisation given), bounds may be left out.
        assert!(check_text(unbounded, &Usage::default()).is_ok());
        let problems = check_text(unbounded, &Usage::training(None)).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].line, Some(4));
        assert_eq!(problems[0].place, Place::Column(0));

        // A binary label for a linear regression: the label is named with the fix.
        let schema = parse(GOOD).unwrap().unwrap();
        let found = check(&schema, &Usage::training(Some(ModelKind::LinearRegression)));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].message.starts_with("label `seized` is binary, but a linear regression model needs a numeric label; write kind = \"numeric\", or train a model for a binary label (logistic regression or MLP)"), "{}", found[0]);
        assert!(check(&schema, &Usage::training(Some(ModelKind::Mlp))).is_empty());

        // A multinomial label: 512 classes are the most a node takes.
        let mut schema = schema;
        let label = |n: usize| LabelSpec {
            name: "band".into(),
            kind: LabelKind::Categorical as i32,
            classes: (0..n).map(|i| format!("c{i}")).collect(),
        };
        let multinomial = Usage::training(Some(ModelKind::MultinomialLogisticRegression));
        schema.label = Some(label(512));
        assert!(check(&schema, &multinomial).is_empty());
        schema.label = Some(label(513));
        let found = check(&schema, &multinomial);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0]
                .message
                .contains("has 513 classes; a multinomial model takes at most 512")
        );
    }

    #[test]
    fn what_a_node_would_never_match_is_a_problem() {
        let text = "[label]\nname = \"y \"\nkind = \"categorical\"\nclasses = [\"a\", \"\"]\n[[column]]\nname = \" x\"\nkind = \"categorical\"\nvalues = [\"sea \", \"air\"]\n";
        let problems = check_text(text, &Usage::default()).unwrap_err();
        assert!(
            has(
                &problems,
                1,
                &["label `y `: the name has spaces", "write name = \"y\""]
            ),
            "{problems:#?}"
        );
        assert!(
            has(&problems, 1, &["class \"\" can never match"]),
            "{problems:#?}"
        );
        assert!(
            has(
                &problems,
                5,
                &["column ` x`: the name has spaces", "write name = \"x\""]
            ),
            "{problems:#?}"
        );
        assert!(
            has(
                &problems,
                5,
                &["value \"sea \" can never match", "write \"sea\""]
            ),
            "{problems:#?}"
        );
        assert_eq!(problems.len(), 4, "{problems:#?}");
    }

    #[test]
    fn a_file_that_is_not_a_schema_says_where() {
        let problems =
            check_text("[label]\nname = \"y\"\nkind = \n", &Usage::default()).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(3));
        assert!(
            problems[0]
                .message
                .starts_with("the file is not valid TOML"),
            "{}",
            problems[0]
        );

        let text = "title = \"x\"\n[label]\nname = \"y\"\n[[column]]\nkind = \"boolean\"\n";
        let problems = check_text(text, &Usage::default()).unwrap_err();
        assert!(
            has(&problems, 1, &["`title` is not part of a schema"]),
            "{problems:#?}"
        );
        assert!(
            has(
                &problems,
                2,
                &["label `y` has no `kind`", "write kind = \"binary\""]
            ),
            "{problems:#?}"
        );
        assert!(
            has(&problems, 4, &["column #1 has no name", "write name = "]),
            "{problems:#?}"
        );
        assert_eq!(problems.len(), 3, "{problems:#?}");
        // `parse` says the same of the shape, and leaves the content to `check`.
        let e = parse(text).unwrap_err();
        assert!(e.contains("line 1: `title` is not part of a schema"), "{e}");
        assert!(parse("[label]\nname = \"y\"\nkind = \"binary\"\ncolour = 1\n").is_err());
        // No label at all.
        let problems = check_text(
            "[[column]]\nname = \"a\"\nkind = \"boolean\"\n",
            &Usage::default(),
        )
        .unwrap_err();
        assert_eq!(
            lines(&problems),
            [(
                None,
                "the schema has no label; write a [label] table with the label's `name` and `kind`"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn numbers_are_read_as_toml_writes_them() {
        let text = "[label]\nname = \"y\"\nkind = \"binary\"\n[[column]]\nname = \"a\"\nkind = \"numeric\"\nlower = 0\nupper = 1_000.5\n[[column]]\nname = \"b\"\nkind = \"numeric\"\nlower = -0x10\nupper = 2e3\n";
        let schema = check_text(text, &Usage::training(None));
        // TOML has no negative hexadecimal: that is not TOML.
        assert!(schema.is_err());
        let schema = check_text(&text.replace("-0x10", "0x10"), &Usage::training(None)).unwrap();
        let bounds: Vec<_> = schema.columns.iter().map(|c| (c.lower, c.upper)).collect();
        assert_eq!(
            bounds,
            [(Some(0.0), Some(1000.5)), (Some(16.0), Some(2000.0))]
        );
    }

    #[test]
    fn a_column_outside_the_registry_is_named_with_the_fix() {
        let schema = parse(GOOD).unwrap().unwrap();
        let registry = ["seized", "value", "known"];
        let found = unregistered(
            &schema,
            "test-1",
            |f| registry.contains(&f),
            |f| (f == "mode").then(|| "did you mean `model`?".to_owned()),
        );
        assert_eq!(
            lines(&found),
            [(
                None,
                "column `mode` is not a field of registry test-1; add it to the registry's [fields] with its category (e.g. mode = \"ordinary\"), or use a field the registry has (did you mean `model`?)".to_owned()
            )]
        );
        assert_eq!(found[0].place, Place::Column(1));
        let label = unregistered(&schema, "r", |f| f != "seized", |_| None);
        assert_eq!(label.len(), 1);
        assert_eq!(label[0].place, Place::Label);
    }
}
