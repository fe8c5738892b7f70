//! The agency's records: any CSV with a header row, read once at start-up into columns, then
//! encoded for each job by the federation's feature schema.
//!
//! Every cell is kept as a number (NaN when empty or not a number), whether it was empty, and,
//! while a column has at most [`MAX_DISTINCT`] distinct texts, its text (for categorical
//! columns). Encoding checks every cell the schema reads; a missing column, a cell that is not a
//! number, an empty cell the schema rejects or an unknown label value is an error naming the
//! file, the line (the header is line 1) and the column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use treaty_proto::schema;
use treaty_proto::v1::{
    ColumnKind, ColumnSpec, ColumnStats, FeatureSchema, LabelKind, MissingRule, Transform,
};

use crate::error::DataError;

/// The most distinct texts a column keeps; a column with more cannot be categorical.
pub const MAX_DISTINCT: usize = 1024;

/// One column of a table.
#[derive(Debug, Clone)]
struct Column {
    numbers: Vec<f64>,
    empty: Vec<bool>,
    /// The first few non-empty cells that are not numbers: (row index, text).
    not_numbers: Vec<(usize, String)>,
    /// Texts while there are at most MAX_DISTINCT of them: the vocabulary and each row's id.
    texts: Option<(Vec<String>, Vec<u32>)>,
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

fn parse_number(cell: &str) -> Option<f64> {
    cell.parse::<f64>().ok().filter(|v| v.is_finite())
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
        let mut data: Vec<Column> = columns
            .iter()
            .map(|_| Column {
                numbers: Vec::new(),
                empty: Vec::new(),
                not_numbers: Vec::new(),
                texts: Some((Vec::new(), Vec::new())),
            })
            .collect();
        let mut dicts: Vec<HashMap<String, u32>> = columns.iter().map(|_| HashMap::new()).collect();
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
            for ((cell, column), dict) in record.iter().zip(data.iter_mut()).zip(dicts.iter_mut()) {
                let number = parse_number(cell);
                column.numbers.push(number.unwrap_or(f64::NAN));
                column.empty.push(cell.is_empty());
                if number.is_none() && !cell.is_empty() && column.not_numbers.len() < 8 {
                    column.not_numbers.push((row, cell.to_owned()));
                }
                if let Some((vocabulary, ids)) = column.texts.as_mut() {
                    let next = vocabulary.len() as u32;
                    let id = *dict.entry(cell.to_owned()).or_insert_with(|| {
                        vocabulary.push(cell.to_owned());
                        next
                    });
                    ids.push(id);
                    if vocabulary.len() > MAX_DISTINCT {
                        column.texts = None;
                        dict.clear();
                    }
                }
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

    fn text<'a>(&self, column: &'a Column, row: usize) -> Option<&'a str> {
        column
            .texts
            .as_ref()
            .and_then(|(vocabulary, ids)| vocabulary.get(ids[row] as usize))
            .map(String::as_str)
    }

    fn not_a_number(&self, name: &str, column: &Column, row: usize) -> DataError {
        let value = column
            .not_numbers
            .iter()
            .find(|(r, _)| *r == row)
            .map(|(_, t)| t.clone())
            .or_else(|| self.text(column, row).map(str::to_owned))
            .unwrap_or_default();
        DataError::NotNumeric {
            path: self.path.clone(),
            row: self.lines[row],
            column: name.to_owned(),
            value,
        }
    }

    fn missing(&self, name: &str, row: usize) -> DataError {
        DataError::MissingValue {
            path: self.path.clone(),
            row: self.lines[row],
            column: name.to_owned(),
        }
    }

    /// The values of a numeric column after its missing rule, clamping and transform (before
    /// standardisation); `None` marks a missing value to be imputed with the mean.
    fn numeric_values(&self, spec: &ColumnSpec) -> Result<Vec<Option<f64>>, DataError> {
        let column = self.column(&spec.name)?;
        let rule = MissingRule::try_from(spec.missing).unwrap_or(MissingRule::Reject);
        let log1p = spec.transform == Transform::Log1p as i32;
        let mut out = Vec::with_capacity(self.len());
        for row in 0..self.len() {
            let raw = if column.empty[row] {
                match rule {
                    MissingRule::Mean => {
                        out.push(None);
                        continue;
                    }
                    MissingRule::Zero => 0.0,
                    _ => return Err(self.missing(&spec.name, row)),
                }
            } else {
                let v = column.numbers[row];
                if v.is_nan() {
                    return Err(self.not_a_number(&spec.name, column, row));
                }
                v
            };
            let mut v = match (spec.lower, spec.upper) {
                (Some(lo), Some(hi)) => raw.clamp(lo, hi),
                _ => raw,
            };
            if log1p {
                if v < 0.0 {
                    return Err(DataError::BadValue {
                        path: self.path.clone(),
                        row: self.lines[row],
                        column: spec.name.clone(),
                        message: format!("{v} is negative, but the schema takes its log1p"),
                    });
                }
                v = v.ln_1p();
            }
            out.push(Some(v));
        }
        Ok(out)
    }

    /// For each numeric column of the schema: the count of non-missing values, their sum and
    /// their sum of squares, after clamping and transform. One row per column.
    pub fn column_sums(&self, schema: &FeatureSchema) -> Result<Vec<[f64; 3]>, DataError> {
        schema::numeric_columns(schema)
            .into_iter()
            .map(|spec| {
                let values = self.numeric_values(spec)?;
                Ok(values
                    .iter()
                    .flatten()
                    .fold([0.0; 3], |[n, s, q], v| [n + 1.0, s + v, q + v * v]))
            })
            .collect()
    }

    /// Encodes every record by the schema, standardising numeric columns with `stats` (one per
    /// numeric column, in order; empty means no standardisation).
    pub fn encode(
        &self,
        schema: &FeatureSchema,
        stats: &[ColumnStats],
    ) -> Result<Examples, DataError> {
        let names = schema::encoded_names(schema);
        let width = names.len();
        let rows = self.len();
        let mut x = Array2::<f64>::zeros((rows, width));
        let mut offset = 0;
        let mut numeric_index = 0;
        for spec in &schema.columns {
            match ColumnKind::try_from(spec.kind).unwrap_or(ColumnKind::Unspecified) {
                ColumnKind::Numeric => {
                    let (mean, std) = stats
                        .get(numeric_index)
                        .map(|s| (s.mean, if s.std > 0.0 { s.std } else { 1.0 }))
                        .unwrap_or((0.0, 1.0));
                    numeric_index += 1;
                    let values = self.numeric_values(spec)?;
                    for (row, v) in values.into_iter().enumerate() {
                        x[[row, offset]] = v.map(|v| (v - mean) / std).unwrap_or(0.0);
                    }
                    offset += 1;
                }
                ColumnKind::Categorical => {
                    let column = self.column(&spec.name)?;
                    let rule = MissingRule::try_from(spec.missing).unwrap_or(MissingRule::Reject);
                    let other = spec.values.len();
                    for row in 0..rows {
                        if column.empty[row] && rule != MissingRule::Other {
                            return Err(self.missing(&spec.name, row));
                        }
                        let text =
                            self.text(column, row)
                                .ok_or_else(|| DataError::TooManyValues {
                                    path: self.path.clone(),
                                    column: spec.name.clone(),
                                    limit: MAX_DISTINCT,
                                })?;
                        let slot = spec.values.iter().position(|v| v == text).unwrap_or(other);
                        x[[row, offset + slot]] = 1.0;
                    }
                    offset += other + 1;
                }
                ColumnKind::Boolean => {
                    let column = self.column(&spec.name)?;
                    let rule = MissingRule::try_from(spec.missing).unwrap_or(MissingRule::Reject);
                    for row in 0..rows {
                        let value = if column.empty[row] {
                            if rule != MissingRule::Zero {
                                return Err(self.missing(&spec.name, row));
                            }
                            0.0
                        } else {
                            let text = self.text(column, row).unwrap_or("");
                            parse_bool(text).ok_or_else(|| DataError::BadValue {
                                path: self.path.clone(),
                                row: self.lines[row],
                                column: spec.name.clone(),
                                message: format!("`{text}` is not true/false, yes/no or 1/0"),
                            })?
                        };
                        x[[row, offset]] = value;
                    }
                    offset += 1;
                }
                ColumnKind::Unspecified => {}
            }
        }
        let y = self.labels(schema)?;
        Ok(Examples { x, y })
    }

    fn labels(&self, schema: &FeatureSchema) -> Result<Array1<f64>, DataError> {
        let label = schema.label.clone().unwrap_or_default();
        let column = self.column(&label.name)?;
        let kind = schema::label_kind(schema);
        let classes = schema::classes(schema);
        let mut y = Vec::with_capacity(self.len());
        for row in 0..self.len() {
            let bad = |value: String| DataError::BadLabel {
                path: self.path.clone(),
                row: self.lines[row],
                column: label.name.clone(),
                value,
                expected: if classes.is_empty() {
                    "a number".to_owned()
                } else {
                    format!("one of {}", classes.join(", "))
                },
            };
            if column.empty[row] {
                return Err(bad(String::new()));
            }
            let value = match kind {
                LabelKind::Numeric => {
                    let v = column.numbers[row];
                    if v.is_nan() {
                        return Err(self.not_a_number(&label.name, column, row));
                    }
                    v
                }
                _ => {
                    let text = self.text(column, row).unwrap_or("");
                    match classes.iter().position(|c| c == text) {
                        Some(i) => i as f64,
                        // A binary label named 0/1 also takes true/false.
                        None if kind == LabelKind::Binary && classes == ["0", "1"] => {
                            parse_bool(text).ok_or_else(|| bad(text.to_owned()))?
                        }
                        None => return Err(bad(text.to_owned())),
                    }
                }
            };
            y.push(value);
        }
        Ok(Array1::from(y))
    }

    /// The values of one numeric column, each clamped to [lower, upper] (for queries), of the
    /// records `keep` marks (all when `None`).
    pub fn clamped_where(
        &self,
        name: &str,
        lower: f64,
        upper: f64,
        keep: Option<&[bool]>,
    ) -> Result<Vec<f64>, DataError> {
        let all = self.clamped(name, lower, upper)?;
        Ok(match keep {
            Some(keep) => all
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|(v, _)| v)
                .collect(),
            None => all,
        })
    }

    /// The values of one numeric column, each clamped to [lower, upper] (for queries).
    pub fn clamped(&self, name: &str, lower: f64, upper: f64) -> Result<Vec<f64>, DataError> {
        let spec = ColumnSpec {
            name: name.to_owned(),
            kind: ColumnKind::Numeric as i32,
            lower: Some(lower),
            upper: Some(upper),
            missing: MissingRule::Reject as i32,
            ..Default::default()
        };
        Ok(self.numeric_values(&spec)?.into_iter().flatten().collect())
    }
}

impl Table {
    /// Which records' `name` column reads `value` exactly.
    pub fn matches(&self, name: &str, value: &str) -> Result<Vec<bool>, DataError> {
        let column = self.column(name)?;
        (0..self.len())
            .map(|row| match &column.texts {
                Some(_) => Ok(self.text(column, row) == Some(value)),
                // A column with many distinct texts is compared as numbers.
                None => Ok(value.parse::<f64>().is_ok_and(|v| column.numbers[row] == v)),
            })
            .collect()
    }

    /// For each record, the index of its value of a categorical column among `values`, or
    /// `values.len()` ("other") for anything else, empty cells included.
    pub fn categories(&self, name: &str, values: &[String]) -> Result<Vec<usize>, DataError> {
        let column = self.column(name)?;
        (0..self.len())
            .map(|row| {
                let text = self
                    .text(column, row)
                    .ok_or_else(|| DataError::TooManyValues {
                        path: self.path.clone(),
                        column: name.to_owned(),
                        limit: MAX_DISTINCT,
                    })?;
                Ok(values
                    .iter()
                    .position(|v| v == text)
                    .unwrap_or(values.len()))
            })
            .collect()
    }
}

fn parse_bool(text: &str) -> Option<f64> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "t" => Some(1.0),
        "0" | "false" | "no" | "n" | "f" => Some(0.0),
        _ => None,
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
        let stats = vec![ColumnStats {
            name: "value".into(),
            mean: 50.0,
            std: 25.0,
            count: 2.0,
        }];
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
        // Sums for the standardisation: clamped, missing skipped.
        assert_eq!(t.column_sums(&s).unwrap(), vec![[2.0, 110.0, 10100.0]]);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let s = schema(SCHEMA);
        let f = csv("value,mode,known,seized\n1,sea,1,0\nabc,sea,1,0\n");
        let err = Table::open(f.path()).unwrap().encode(&s, &[]).unwrap_err();
        assert!(
            matches!(err, DataError::NotNumeric { row: 3, ref column, ref value, .. } if column == "value" && value == "abc"),
            "{err}"
        );

        let f = csv("value,known,seized\n1,1,0\n");
        let err = Table::open(f.path()).unwrap().encode(&s, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("column `mode` is missing (the file has: value, known, seized)"),
            "{err}"
        );

        let f = csv("value,mode,known,seized\n1,sea,1,0\n2,air,1,maybe\n");
        let err = Table::open(f.path()).unwrap().encode(&s, &[]).unwrap_err();
        assert!(matches!(err, DataError::BadLabel { row: 3, .. }), "{err}");
        assert!(err.to_string().contains("expected one of 0, 1"), "{err}");

        let f = csv("value,mode,known,seized\n1,sea,perhaps,0\n");
        let err = Table::open(f.path()).unwrap().encode(&s, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("line 2, column `known`: `perhaps` is not true/false"),
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
        assert!(
            matches!(err, DataError::MissingValue { row: 3, .. }),
            "{err}"
        );

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
}
