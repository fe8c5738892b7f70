//! The agency's records: any CSV with a header row, read once at start-up into columns, then
//! encoded for each job by the federation's feature schema.
//!
//! Every cell is kept as a number (NaN when empty or not a number), a 64-bit hash of its text
//! (for categorical columns, labels and `where` filters, whatever the number of distinct
//! texts), and flags (empty; a boolean word). Nothing about a cell is kept as text.
//!
//! Two encodings. The node's DP computations use [`Table::encode_private`]: a record with a
//! cell the schema cannot read (not a number, an empty cell the schema rejects, a boolean or a
//! label that is not one, a negative value under `log1p`) is kept in place and marked
//! unreadable, to count for nothing (a fixed rule), and nothing about it leaves the node (the node's own log says which lines, for the agency's
//! staff). Only a column missing from the header — public, as the node declares its columns
//! in `Hello` — is an error there. Local tools (`treaty model explain`, the demo) use
//! [`Table::encode`], where the first such cell is an error naming the line and the column.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use treaty_proto::schema;
use treaty_proto::v1::{
    ColumnKind, ColumnSpec, ColumnStats, FeatureSchema, LabelKind, MissingRule, Transform,
};

use crate::error::DataError;

/// A cell's flags.
const EMPTY: u8 = 1;
const TRUE_WORD: u8 = 2;
const FALSE_WORD: u8 = 4;

/// One column of a table.
#[derive(Debug, Clone)]
struct Column {
    numbers: Vec<f64>,
    hashes: Vec<u64>,
    flags: Vec<u8>,
}

impl Column {
    fn new() -> Self {
        Column {
            numbers: Vec::new(),
            hashes: Vec::new(),
            flags: Vec::new(),
        }
    }

    /// Adds a cell (already trimmed).
    fn push(&mut self, cell: &str) {
        self.numbers.push(parse_number(cell).unwrap_or(f64::NAN));
        self.hashes.push(text_hash(cell));
        self.flags.push(match parse_bool(cell) {
            _ if cell.is_empty() => EMPTY,
            Some(true) => TRUE_WORD,
            Some(false) => FALSE_WORD,
            None => 0,
        });
    }
}

/// A CSV file, read into columns.
#[derive(Debug, Clone)]
pub struct Table {
    pub path: PathBuf,
    pub columns: Vec<String>,
    data: Vec<Column>,
    /// The line of each row in the file (the header is line 1).
    lines: Vec<u64>,
}

/// Encoded examples: features (rows × encoded width) and labels (0/1, a class index, or a
/// number).
#[derive(Debug, Clone)]
pub struct Examples {
    pub x: Array2<f64>,
    pub y: Array1<f64>,
}

impl Examples {
    pub fn len(&self) -> usize {
        self.x.nrows()
    }
    pub fn is_empty(&self) -> bool {
        self.x.nrows() == 0
    }
}

/// Every record of a table encoded for a DP computation, in order, and which of them the
/// schema could read: the others count for nothing.
#[derive(Debug)]
pub struct Private {
    pub examples: Examples,
    pub readable: Vec<bool>,
    /// The first few problems (line and column, never a cell's content), for the node's log.
    pub problems: Vec<DataError>,
}

impl Private {
    /// How many records the schema could not read.
    pub fn unreadable(&self) -> usize {
        self.readable.iter().filter(|r| !**r).count()
    }
}

/// How many unreadable records' problems a private encoding keeps for the node's log.
const DROPPED_SHOWN: usize = 5;

/// How many records an encoding fills at a time (1,024 records of 64 features: 512 KiB, within
/// a core's cache).
const ENCODED_TOGETHER: usize = 1024;

/// The most an encoded feature may be in magnitude: a standardised value beyond it (a column
/// standardised with a tiny standard deviation) is clamped, so that no record's features, and
/// so no gradient, can overflow.
pub(crate) const MAX_FEATURE: f64 = 1e6;

fn parse_number(cell: &str) -> Option<f64> {
    cell.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The hash a cell's text is kept as.
fn text_hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "t" => Some(true),
        "0" | "false" | "no" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// A numeric cell after its missing rule, clamping and transform.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    Value(f64),
    /// Missing, to be imputed by the column's mean.
    Impute,
    /// Unreadable by the schema: the record counts for nothing (in a strict encoding, an error).
    Bad,
}

/// The rows an encoding could not read, and the problems of the first few of them (by line,
/// whatever order the encoding found them in; each record's own problem is its first unreadable
/// cell in the schema's order of columns).
struct Problems {
    bad: Vec<bool>,
    first: Vec<(usize, DataError)>,
}

impl Problems {
    fn new(rows: usize) -> Self {
        Problems {
            bad: vec![false; rows],
            first: Vec::new(),
        }
    }

    fn mark(&mut self, row: usize, error: impl FnOnce() -> DataError) {
        if self.bad[row] {
            return;
        }
        self.bad[row] = true;
        if self.first.len() < DROPPED_SHOWN {
            self.first.push((row, error()));
        } else if let Some(last) = self.first.iter_mut().max_by_key(|(r, _)| *r)
            && row < last.0
        {
            *last = (row, error());
        }
    }

    /// The problems kept, of the records of the lowest lines, in their order.
    fn first(mut self) -> Vec<DataError> {
        self.first.sort_by_key(|(row, _)| *row);
        self.first.into_iter().map(|(_, e)| e).collect()
    }
}

/// A numeric column of a schema resolved against a table ([`Table::numeric_reader`]).
struct NumericReader<'t> {
    table: &'t Table,
    spec: &'t ColumnSpec,
    column: &'t Column,
    rule: MissingRule,
    log1p: bool,
}

impl NumericReader<'_> {
    /// Record `row`'s cell after the missing rule, clamping and transform (before
    /// standardisation); an unreadable one is marked in `problems`.
    fn cell(&self, row: usize, problems: Option<&mut Problems>) -> Cell {
        let bad = |what: &str| {
            if let Some(p) = problems {
                p.mark(row, || self.table.problem(row, &self.spec.name, what));
            }
            Cell::Bad
        };
        let raw = self.column.numbers[row];
        if self.column.flags[row] & EMPTY != 0 {
            return match self.rule {
                MissingRule::Mean => Cell::Impute,
                MissingRule::Zero => Cell::Value(0.0),
                _ => bad("the cell is empty and the schema rejects missing values there"),
            };
        }
        if raw.is_nan() {
            return bad("the cell is not a number");
        }
        // max-then-min never panics, whatever bounds a task carries.
        let v = match (self.spec.lower, self.spec.upper) {
            (Some(lo), Some(hi)) => raw.max(lo).min(hi),
            _ => raw,
        };
        match self.log1p {
            false => Cell::Value(v),
            true if v >= 0.0 => Cell::Value(v.ln_1p()),
            true => bad("the value is negative, but the schema takes its log1p"),
        }
    }
}

/// A column of a schema resolved against a table, for an encoding ([`Table::features`]).
enum Encoder<'t> {
    Numeric {
        reader: NumericReader<'t>,
        mean: f64,
        std: f64,
    },
    Categorical {
        spec: &'t ColumnSpec,
        column: &'t Column,
        rule: MissingRule,
        hashes: Vec<u64>,
    },
    Boolean {
        spec: &'t ColumnSpec,
        column: &'t Column,
        rule: MissingRule,
    },
}

impl Table {
    /// Reads a whole CSV file.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let read_err = |message: String| DataError::Read {
            path: path.to_owned(),
            message,
        };
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| read_err(e.to_string()))?;
        let columns: Vec<String> = rdr
            .headers()
            .map_err(|e| read_err(e.to_string()))?
            .iter()
            .map(str::to_owned)
            .collect();
        if columns.is_empty() || columns.iter().all(String::is_empty) {
            return Err(DataError::NoHeader {
                path: path.to_owned(),
            });
        }
        let mut data: Vec<Column> = columns.iter().map(|_| Column::new()).collect();
        let mut lines = Vec::new();
        let mut record = csv::StringRecord::new();
        loop {
            let more = rdr
                .read_record(&mut record)
                .map_err(|e| DataError::BadRow {
                    path: path.to_owned(),
                    row: e.position().map(|p| p.line()).unwrap_or(0),
                    message: e.to_string(),
                })?;
            if !more {
                break;
            }
            let row = lines.len();
            lines.push(
                record
                    .position()
                    .map(|p| p.line())
                    .unwrap_or(row as u64 + 2),
            );
            for (cell, column) in record.iter().zip(data.iter_mut()) {
                column.push(cell);
            }
        }
        if lines.is_empty() {
            return Err(DataError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Table {
            path: path.to_owned(),
            columns,
            data,
            lines,
        })
    }

    /// One record given as (column, value) pairs, e.g. a declaration sent to `treaty serve`,
    /// read as a CSV file's row would be (each value trimmed); `source` names it in errors.
    /// A column given twice is an error.
    pub fn from_record(source: &Path, fields: &[(&str, &str)]) -> Result<Self, DataError> {
        let mut columns: Vec<String> = Vec::with_capacity(fields.len());
        let mut data = Vec::with_capacity(fields.len());
        for (name, value) in fields {
            if columns.iter().any(|c| c == name) {
                return Err(DataError::BadRow {
                    path: source.to_owned(),
                    row: 1,
                    message: format!("column `{name}` is given twice"),
                });
            }
            columns.push((*name).to_owned());
            let mut column = Column::new();
            column.push(value.trim());
            data.push(column);
        }
        Ok(Table {
            path: source.to_owned(),
            columns,
            data,
            lines: vec![1],
        })
    }

    /// The line of record `row` in its file (the header is line 1).
    pub fn line(&self, row: usize) -> u64 {
        self.lines.get(row).copied().unwrap_or(0)
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn column(&self, name: &str) -> Result<&Column, DataError> {
        self.columns
            .iter()
            .position(|c| c == name)
            .map(|i| &self.data[i])
            .ok_or_else(|| DataError::MissingColumn {
                path: self.path.clone(),
                column: name.to_owned(),
                available: self.columns.join(", "),
            })
    }

    /// A cell problem, naming the file, the line and the column.
    fn problem(&self, row: usize, column: &str, problem: &str) -> DataError {
        DataError::Cell {
            path: self.path.clone(),
            row: self.lines[row],
            column: column.to_owned(),
            problem: problem.to_owned(),
        }
    }

    /// The cells of a numeric column after its missing rule, clamping and transform (before
    /// standardisation).
    fn numeric_cells(
        &self,
        spec: &ColumnSpec,
        mut problems: Option<&mut Problems>,
    ) -> Result<Vec<Cell>, DataError> {
        let reader = self.numeric_reader(spec)?;
        Ok((0..self.len())
            .map(|row| reader.cell(row, problems.as_deref_mut()))
            .collect())
    }

    /// A numeric column of the schema resolved against the table, to read its cells.
    fn numeric_reader<'t>(&'t self, spec: &'t ColumnSpec) -> Result<NumericReader<'t>, DataError> {
        Ok(NumericReader {
            table: self,
            spec,
            column: self.column(&spec.name)?,
            rule: schema::missing_rule(spec)?,
            log1p: schema::transform(spec)? == Transform::Log1p,
        })
    }

    /// For each numeric column of the schema: the count of readable non-missing values, and the
    /// sum and sum of squares of their deviations from the centre of the column's transformed
    /// bounds (0 without bounds), after clamping and transform. One row per column. A cell the
    /// schema cannot read counts as missing. Each deviation is kept within the half-range, so
    /// that one record moves the sums by at most 1, R and R², whatever the rounding.
    pub fn column_sums(&self, schema: &FeatureSchema) -> Result<Vec<[f64; 3]>, DataError> {
        schema::numeric_columns(schema)
            .into_iter()
            .map(|spec| {
                let (centre, half_range) = match schema::transformed_bounds(spec)? {
                    Some(b) => (b.centre(), b.half_range()),
                    None => (0.0, f64::INFINITY),
                };
                let cells = self.numeric_cells(spec, None)?;
                Ok(cells.iter().fold([0.0; 3], |[n, s, q], c| match c {
                    Cell::Value(v) => {
                        // max-then-min never panics, whatever bounds a task carries.
                        let d = (v - centre).max(-half_range).min(half_range);
                        [n + 1.0, s + d, q + d * d]
                    }
                    _ => [n, s, q],
                }))
            })
            .collect()
    }

    /// Encodes every record by the schema, standardising numeric columns with `stats` (one per
    /// numeric column, in order; empty means no standardisation). The first cell the schema
    /// cannot read is an error: for the agency's own tools, never for a release.
    pub fn encode(
        &self,
        schema: &FeatureSchema,
        stats: &[ColumnStats],
    ) -> Result<Examples, DataError> {
        let (examples, problems) = self.encode_all(schema, stats)?;
        match problems.first().into_iter().next() {
            None => Ok(examples),
            Some(first) => Err(first),
        }
    }

    /// Encodes the records by the schema for a DP computation. A record with a cell the schema
    /// cannot read is kept in place and marked unreadable: it contributes nothing (a
    /// fixed rule, whatever the record), yet costs the computation as much time as any other,
    /// so that how long a task takes does not tell which records a schema can read. Only a
    /// column missing from the header is an error.
    pub fn encode_private(
        &self,
        schema: &FeatureSchema,
        stats: &[ColumnStats],
    ) -> Result<Private, DataError> {
        let (examples, problems) = self.encode_all(schema, stats)?;
        Ok(Private {
            examples,
            readable: problems.bad.iter().map(|bad| !bad).collect(),
            problems: problems.first(),
        })
    }

    /// Every record's features encoded by the schema, without a label (records to score: a
    /// new declaration has none yet). The first cell the schema cannot read is an error.
    pub fn encode_features(
        &self,
        schema: &FeatureSchema,
        stats: &[ColumnStats],
    ) -> Result<Array2<f64>, DataError> {
        let mut problems = Problems::new(self.len());
        let x = self.features(schema, stats, &mut problems)?;
        match problems.first().into_iter().next() {
            None => Ok(x),
            Some(first) => Err(first),
        }
    }

    /// Every record encoded (an unreadable cell as zero), and which could not be read.
    fn encode_all(
        &self,
        schema: &FeatureSchema,
        stats: &[ColumnStats],
    ) -> Result<(Examples, Problems), DataError> {
        let mut problems = Problems::new(self.len());
        let x = self.features(schema, stats, &mut problems)?;
        let y = self.labels(schema, &mut problems)?;
        Ok((Examples { x, y }, problems))
    }

    /// Every record's features (an unreadable cell as zero, its record marked in `problems`).
    fn features(
        &self,
        schema: &FeatureSchema,
        stats: &[ColumnStats],
        problems: &mut Problems,
    ) -> Result<Array2<f64>, DataError> {
        let width = schema::encoded_names(schema).len();
        let rows = self.len();
        // Each column of the schema resolved against the table once, with its place in a row.
        let mut encoders = Vec::new();
        let (mut offset, mut numeric_index) = (0, 0);
        for spec in &schema.columns {
            let rule = schema::missing_rule(spec)?;
            let encoder = match schema::column_kind(spec)? {
                ColumnKind::Numeric => {
                    let (mean, std) = stats
                        .get(numeric_index)
                        .map(|s| (s.mean, if s.std > 0.0 { s.std } else { 1.0 }))
                        .unwrap_or((0.0, 1.0));
                    numeric_index += 1;
                    let reader = self.numeric_reader(spec)?;
                    (Encoder::Numeric { reader, mean, std }, 1)
                }
                ColumnKind::Categorical => {
                    let hashes: Vec<u64> = spec.values.iter().map(|v| text_hash(v)).collect();
                    let width = hashes.len() + 1;
                    let column = self.column(&spec.name)?;
                    (
                        Encoder::Categorical {
                            spec,
                            column,
                            rule,
                            hashes,
                        },
                        width,
                    )
                }
                ColumnKind::Boolean => {
                    let column = self.column(&spec.name)?;
                    (Encoder::Boolean { spec, column, rule }, 1)
                }
                ColumnKind::Unspecified => continue,
            };
            encoders.push((encoder.0, offset));
            offset += encoder.1;
        }
        // Filled a block of records at a time, each block column by column: the block's rows
        // stay in the cache while each column writes its value into every one of them, where
        // a whole column at a time touched a new cache line with every value (and a
        // column-major copy laid out by rows after cost a second matrix and a pass over it).
        let mut x = Array2::<f64>::zeros((rows, width));
        for start in (0..rows).step_by(ENCODED_TOGETHER) {
            let block = start..rows.min(start + ENCODED_TOGETHER);
            for (encoder, offset) in &encoders {
                self.encode_block(encoder, *offset, block.clone(), &mut x, problems);
            }
        }
        Ok(x)
    }

    /// One column's values of the records `block`, into their rows of `x` from `offset`.
    fn encode_block(
        &self,
        encoder: &Encoder<'_>,
        offset: usize,
        block: std::ops::Range<usize>,
        x: &mut Array2<f64>,
        problems: &mut Problems,
    ) {
        match encoder {
            Encoder::Numeric { reader, mean, std } => {
                for row in block {
                    if let Cell::Value(v) = reader.cell(row, Some(&mut *problems)) {
                        x[[row, offset]] = ((v - mean) / std).clamp(-MAX_FEATURE, MAX_FEATURE);
                    }
                }
            }
            Encoder::Categorical {
                spec,
                column,
                rule,
                hashes,
            } => {
                for row in block {
                    if column.flags[row] & EMPTY != 0 && *rule != MissingRule::Other {
                        problems.mark(row, || {
                            self.problem(
                                row,
                                &spec.name,
                                "the cell is empty and the schema rejects missing values there",
                            )
                        });
                        continue;
                    }
                    let h = column.hashes[row];
                    let slot = hashes.iter().position(|v| *v == h).unwrap_or(hashes.len());
                    x[[row, offset + slot]] = 1.0;
                }
            }
            Encoder::Boolean { spec, column, rule } => {
                for row in block {
                    let flags = column.flags[row];
                    x[[row, offset]] = if flags & TRUE_WORD != 0 {
                        1.0
                    } else if flags & FALSE_WORD != 0
                        || (flags & EMPTY != 0 && *rule == MissingRule::Zero)
                    {
                        0.0
                    } else {
                        let what = if flags & EMPTY != 0 {
                            "the cell is empty and the schema rejects missing values there"
                        } else {
                            "the cell is not true/false, yes/no or 1/0"
                        };
                        problems.mark(row, || self.problem(row, &spec.name, what));
                        0.0
                    };
                }
            }
        }
    }

    fn labels(
        &self,
        schema: &FeatureSchema,
        problems: &mut Problems,
    ) -> Result<Array1<f64>, DataError> {
        let label = schema.label.clone().unwrap_or_default();
        let column = self.column(&label.name)?;
        let kind = schema::decode_label_kind(schema)?;
        let classes = schema::classes(schema)?;
        let hashes: Vec<u64> = classes.iter().map(|c| text_hash(c)).collect();
        let boolean = kind == LabelKind::Binary && classes == ["0", "1"];
        let expected = if classes.is_empty() {
            "a number".to_owned()
        } else {
            format!("one of {}", classes.join(", "))
        };
        let mut y = Array1::<f64>::zeros(self.len());
        for row in 0..self.len() {
            let flags = column.flags[row];
            let value = if flags & EMPTY != 0 {
                None
            } else if kind == LabelKind::Numeric {
                Some(column.numbers[row]).filter(|v| !v.is_nan())
            } else {
                let h = column.hashes[row];
                match hashes.iter().position(|c| *c == h) {
                    Some(i) => Some(i as f64),
                    // A binary label named 0/1 also takes true/false.
                    None if boolean && flags & TRUE_WORD != 0 => Some(1.0),
                    None if boolean && flags & FALSE_WORD != 0 => Some(0.0),
                    None => None,
                }
            };
            match value {
                Some(v) => y[row] = v,
                None => problems.mark(row, || {
                    self.problem(
                        row,
                        &label.name,
                        &format!("the label is not expected; expected {expected}"),
                    )
                }),
            }
        }
        Ok(y)
    }

    /// The values of one numeric column, each clamped to [lower, upper] (for queries), of the
    /// records `keep` marks (all when `None`). Cells that are not numbers are left out.
    pub fn clamped_where(
        &self,
        name: &str,
        lower: f64,
        upper: f64,
        keep: Option<&[bool]>,
    ) -> Result<Vec<f64>, DataError> {
        let spec = ColumnSpec {
            name: name.to_owned(),
            kind: ColumnKind::Numeric as i32,
            lower: Some(lower),
            upper: Some(upper),
            missing: MissingRule::Reject as i32,
            ..Default::default()
        };
        let cells = self.numeric_cells(&spec, None)?;
        Ok(cells
            .into_iter()
            .enumerate()
            .filter(|(row, _)| keep.is_none_or(|k| k[*row]))
            .filter_map(|(_, c)| match c {
                Cell::Value(v) => Some(v),
                _ => None,
            })
            .collect())
    }

    /// Which records' `name` column reads `value`: the same text, or the same number.
    pub fn matches(&self, name: &str, value: &str) -> Result<Vec<bool>, DataError> {
        let column = self.column(name)?;
        let (hash, number) = (text_hash(value), parse_number(value));
        Ok((0..self.len())
            .map(|row| column.hashes[row] == hash || number == Some(column.numbers[row]))
            .collect())
    }

    /// For each record, the index of its value of a categorical column among `values`, or
    /// `values.len()` ("other") for anything else, empty cells included.
    pub fn categories(&self, name: &str, values: &[String]) -> Result<Vec<usize>, DataError> {
        let column = self.column(name)?;
        let hashes: Vec<u64> = values.iter().map(|v| text_hash(v)).collect();
        Ok(column
            .hashes
            .iter()
            .map(|h| hashes.iter().position(|v| v == h).unwrap_or(values.len()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn csv(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn schema(text: &str) -> FeatureSchema {
        schema::parse(text).unwrap().unwrap()
    }

    /// The standardisation of [`SCHEMA`]'s one numeric column, `value`.
    fn value_stats(mean: f64, std: f64) -> Vec<ColumnStats> {
        vec![ColumnStats {
            name: "value".into(),
            mean,
            std,
            count: 2.0,
        }]
    }

    const SCHEMA: &str = r#"
[label]
name = "seized"
kind = "binary"
[[column]]
name = "value"
kind = "numeric"
lower = 0.0
upper = 100.0
missing = "mean"
[[column]]
name = "mode"
kind = "categorical"
values = ["sea", "air"]
missing = "other"
[[column]]
name = "known"
kind = "boolean"
missing = "zero"
"#;

    #[test]
    fn encodes_by_the_schema() {
        let f =
            csv("mode,value,known,seized,unused\nsea,10,yes,0,x\nrail,250,,1,y\n,,false,true,z\n");
        let t = Table::open(f.path()).unwrap();
        let s = schema(SCHEMA);
        let stats = value_stats(50.0, 25.0);
        let ex = t.encode(&s, &stats).unwrap();
        // value: (10-50)/25, clamp(250)=100 -> 2, missing -> mean -> 0; mode one-hot with other.
        assert_eq!(
            ex.x,
            ndarray::array![
                [-1.6, 1.0, 0.0, 0.0, 1.0],
                [2.0, 0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0, 0.0]
            ]
        );
        assert_eq!(ex.y, ndarray::array![0.0, 1.0, 1.0]);
        // Training reads a record's features as one contiguous row.
        assert!(ex.x.is_standard_layout());
        // Sums for the standardisation: clamped, missing skipped, about the centre 50 of the
        // bounds [0, 100]: 10 - 50 = -40 and 100 - 50 = 50 give 10 and 1600 + 2500.
        assert_eq!(t.column_sums(&s).unwrap(), vec![[2.0, 10.0, 4100.0]]);
    }

    #[test]
    fn a_table_encoded_in_blocks_is_each_record_encoded_alone() {
        // Records across three blocks of the encoding, against each record encoded in a table
        // of its own (one block): the same features to the bit, the same records unreadable.
        let (values, modes, known) = (
            ["10", "", "abc", "250", "7.5", "-3"],
            ["sea", "air", "rail", ""],
            ["yes", "no", "", "perhaps", "1"],
        );
        let header = "value,mode,known,seized\n";
        let rows: Vec<String> = (0..2 * ENCODED_TOGETHER + 321)
            .map(|i| {
                let (v, m, k) = (values[i % 6], modes[(i / 2) % 4], known[(i / 3) % 5]);
                format!("{v},{m},{k},{}\n", i % 2)
            })
            .collect();
        let f = csv(&format!("{header}{}", rows.concat()));
        let s = schema(SCHEMA);
        let stats = value_stats(40.0, 30.0);
        let whole = Table::open(f.path())
            .unwrap()
            .encode_private(&s, &stats)
            .unwrap();
        assert!(whole.examples.x.is_standard_layout());
        for (i, row) in rows.iter().enumerate() {
            let one = csv(&format!("{header}{row}"));
            let alone = Table::open(one.path())
                .unwrap()
                .encode_private(&s, &stats)
                .unwrap();
            let (a, b) = (whole.examples.x.row(i), alone.examples.x.row(0));
            assert!(
                a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                "record {i}: {a} against {b}"
            );
            assert_eq!(whole.readable[i], alone.readable[0], "record {i}");
        }
        assert!(whole.readable.iter().any(|r| !r) && whole.readable.iter().any(|r| *r));
        // The problems kept are those of the unreadable records of the lowest lines, in order
        // (a record's line is its index plus 2: the header is line 1), whatever the blocks.
        let lowest: Vec<u64> = (0..rows.len())
            .filter(|&i| !whole.readable[i])
            .take(DROPPED_SHOWN)
            .map(|i| i as u64 + 2)
            .collect();
        let line = |e: &DataError| match e {
            DataError::Cell { row, .. } => *row,
            other => panic!("{other}"),
        };
        let kept: Vec<u64> = whole.problems.iter().map(line).collect();
        assert_eq!(kept, lowest);
        let strict = Table::open(f.path())
            .unwrap()
            .encode(&s, &stats)
            .unwrap_err();
        assert_eq!(line(&strict), lowest[0]);
    }

    #[test]
    fn errors_name_file_line_and_column_but_never_the_cell() {
        let s = schema(SCHEMA);
        let f = csv("value,mode,known,seized\n1,sea,1,0\nabc,sea,1,0\n");
        let err = Table::open(f.path()).unwrap().encode(&s, &[]).unwrap_err();
        assert!(
            matches!(err, DataError::Cell { row: 3, ref column, .. } if column == "value"),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("line 3, column `value`: the cell is not a number"),
            "{err}"
        );
        assert!(!err.to_string().contains("abc"), "{err}");

        let f = csv("value,known,seized\n1,1,0\n");
        let err = Table::open(f.path()).unwrap().encode(&s, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("column `mode` is missing (the file has: value, known, seized)"),
            "{err}"
        );
        // What may leave the node names the column and the header, not the file.
        assert_eq!(
            err.redacted(),
            "the agency's data has no column `mode` (it has: value, known, seized)"
        );

        let f = csv("value,mode,known,seized\n1,sea,1,0\n2,air,1,maybe\n");
        let err = Table::open(f.path()).unwrap().encode(&s, &[]).unwrap_err();
        assert!(matches!(err, DataError::Cell { row: 3, .. }), "{err}");
        assert!(err.to_string().contains("expected one of 0, 1"), "{err}");

        let f = csv("value,mode,known,seized\n1,sea,perhaps,0\n");
        let err = Table::open(f.path()).unwrap().encode(&s, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("line 2, column `known`: the cell is not true/false"),
            "{err}"
        );

        let strict = schema(
            "[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"value\"\nkind = \"numeric\"\n",
        );
        let f = csv("value,seized\n1,0\n,1\n");
        let err = Table::open(f.path())
            .unwrap()
            .encode(&strict, &[])
            .unwrap_err();
        assert!(matches!(err, DataError::Cell { row: 3, .. }), "{err}");

        let f = csv("a,seized\n1,0\n2\n");
        assert!(matches!(
            Table::open(f.path()).unwrap_err(),
            DataError::BadRow { .. }
        ));
        let missing = Table::open(Path::new("/nonexistent/data.csv")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/data.csv"),
            "{missing}"
        );
    }

    #[test]
    fn a_private_encoding_drops_unreadable_records_and_nothing_else() {
        // Lines 3 (not a number), 5 (a bad boolean), 6 (an unknown label) and 7 (an empty
        // categorical the schema rejects) are dropped; the others encode as the strict encoding
        // of the same file without them.
        let s = schema(&SCHEMA.replace("missing = \"other\"", "missing = \"reject\""));
        let good = "value,mode,known,seized\n10,sea,yes,0\n20,air,no,1\n30,rail,,0\n";
        let bad = "value,mode,known,seized\n10,sea,yes,0\nx,sea,1,0\n20,air,no,1\n1,sea,perhaps,0\n1,sea,1,2\n1,,1,0\n30,rail,,0\n";
        let (a, b) = (csv(good), csv(bad));
        let expected = Table::open(a.path()).unwrap().encode(&s, &[]).unwrap();
        let private = Table::open(b.path())
            .unwrap()
            .encode_private(&s, &[])
            .unwrap();
        // Every record stays in place; the unreadable ones are marked.
        assert_eq!(
            private.readable,
            [true, false, true, false, false, false, true]
        );
        let kept: Vec<usize> = (0..7).filter(|&r| private.readable[r]).collect();
        let got = &private.examples;
        assert_eq!(got.x.select(ndarray::Axis(0), &kept), expected.x);
        assert_eq!(got.y.select(ndarray::Axis(0), &kept), expected.y);
        assert_eq!(private.unreadable(), 4);
        let lines: Vec<u64> = private
            .problems
            .iter()
            .map(|e| match e {
                DataError::Cell { row, .. } => *row,
                other => panic!("{other}"),
            })
            .collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(sorted, [3, 5, 6, 7]);
        // The column sums count an unreadable cell as missing: 10, 20, 1, 1, 1, 30 about the
        // centre 50 of [0, 100] sum to -40 - 30 - 3 * 49 - 20 = -237, their squares to
        // 1600 + 900 + 3 * 2401 + 400 = 10103.
        assert_eq!(
            Table::open(b.path()).unwrap().column_sums(&s).unwrap(),
            vec![[6.0, -237.0, 10103.0]]
        );
        // A missing column is still an error: the header is public.
        let c = csv("value,known,seized\n1,1,0\n");
        assert!(matches!(
            Table::open(c.path()).unwrap().encode_private(&s, &[]),
            Err(DataError::MissingColumn { .. })
        ));
    }

    #[test]
    fn categories_are_matched_whatever_the_number_of_distinct_texts() {
        // 5,000 distinct identifiers: a categorical column over two of them, a `where` filter on
        // a third; nothing refuses for having many values.
        let mut text = String::from("id,seized\n");
        for i in 0..5000 {
            text.push_str(&format!("ID{i},{}\n", i % 2));
        }
        let f = csv(&text);
        let t = Table::open(f.path()).unwrap();
        let ids = t
            .categories("id", &["ID7".into(), "ID4999".into()])
            .unwrap();
        assert_eq!((ids[7], ids[4999], ids[8]), (0, 1, 2));
        let m = t.matches("id", "ID12").unwrap();
        assert_eq!(m.iter().filter(|b| **b).count(), 1);
        assert!(m[12]);
        // Numbers match as numbers too.
        let n = t.matches("seized", "1.0").unwrap();
        assert_eq!(n.iter().filter(|b| **b).count(), 2500);
    }
}
