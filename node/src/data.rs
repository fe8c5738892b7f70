//! The agency's records: CSV files with a header row, read into matrices for a task.
//!
//! Any CSV with a header works. A task names the columns it reads; a missing column, a cell that
//! is not a number, or a label that is not 0/1 is an error naming the file, the line (the header
//! is line 1) and the column, and the node refuses the task with it.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};

use crate::error::DataError;

/// A CSV file and its header.
#[derive(Debug, Clone)]
pub struct Table {
    pub path: PathBuf,
    pub columns: Vec<String>,
}

/// Feature rows and, when asked for, their labels.
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

fn reader(path: &Path) -> Result<csv::Reader<std::fs::File>, DataError> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| DataError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

impl Table {
    /// Opens a CSV file and reads its header.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let mut rdr = reader(path)?;
        let columns: Vec<String> = rdr
            .headers()
            .map_err(|e| DataError::Read {
                path: path.to_owned(),
                message: e.to_string(),
            })?
            .iter()
            .map(str::to_owned)
            .collect();
        if columns.is_empty() || columns.iter().all(String::is_empty) {
            return Err(DataError::NoHeader {
                path: path.to_owned(),
            });
        }
        Ok(Table {
            path: path.to_owned(),
            columns,
        })
    }

    fn index(&self, column: &str) -> Result<usize, DataError> {
        self.columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| DataError::MissingColumn {
                path: self.path.clone(),
                column: column.to_owned(),
                available: self.columns.join(", "),
            })
    }

    /// Reads the `features` columns (and the 0/1 `label`, when given) of every record.
    pub fn load(&self, features: &[String], label: Option<&str>) -> Result<Examples, DataError> {
        let feature_ix: Vec<usize> = features
            .iter()
            .map(|f| self.index(f))
            .collect::<Result<_, _>>()?;
        let label_ix = label.map(|l| self.index(l)).transpose()?;
        let mut rdr = reader(&self.path)?;
        let mut values: Vec<f64> = Vec::new();
        let mut labels: Vec<f64> = Vec::new();
        let mut record = csv::StringRecord::new();
        loop {
            let more = rdr
                .read_record(&mut record)
                .map_err(|e| DataError::BadRow {
                    path: self.path.clone(),
                    row: e.position().map(|p| p.line()).unwrap_or(0),
                    message: e.to_string(),
                })?;
            if !more {
                break;
            }
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            for (&ix, name) in feature_ix.iter().zip(features) {
                let cell = record.get(ix).unwrap_or("");
                match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => values.push(v),
                    _ => {
                        return Err(DataError::NotNumeric {
                            path: self.path.clone(),
                            row: line,
                            column: name.clone(),
                            value: cell.to_owned(),
                        });
                    }
                }
            }
            if let (Some(ix), Some(name)) = (label_ix, label) {
                let cell = record.get(ix).unwrap_or("");
                match cell {
                    "0" | "0.0" | "false" => labels.push(0.0),
                    "1" | "1.0" | "true" => labels.push(1.0),
                    _ => {
                        return Err(DataError::BadLabel {
                            path: self.path.clone(),
                            row: line,
                            column: name.to_owned(),
                            value: cell.to_owned(),
                        });
                    }
                }
            }
        }
        let rows = if features.is_empty() {
            labels.len()
        } else {
            values.len() / features.len()
        };
        if rows == 0 {
            return Err(DataError::Empty {
                path: self.path.clone(),
            });
        }
        let x = Array2::from_shape_vec((rows, features.len()), values).map_err(|e| {
            DataError::Read {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })?;
        Ok(Examples {
            x,
            y: Array1::from(labels),
        })
    }

    /// The number of records (for queries that read no column).
    pub fn count(&self) -> Result<u64, DataError> {
        let mut rdr = reader(&self.path)?;
        let mut record = csv::StringRecord::new();
        let mut n = 0;
        while rdr
            .read_record(&mut record)
            .map_err(|e| DataError::BadRow {
                path: self.path.clone(),
                row: e.position().map(|p| p.line()).unwrap_or(0),
                message: e.to_string(),
            })?
        {
            n += 1;
        }
        Ok(n)
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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_selected_columns_in_order() {
        let f = csv("a,b,seized\n1,2,0\n3.5,-4,1\n");
        let t = Table::open(f.path()).unwrap();
        let ex = t.load(&names(&["b", "a"]), Some("seized")).unwrap();
        assert_eq!(ex.x, ndarray::array![[2.0, 1.0], [-4.0, 3.5]]);
        assert_eq!(ex.y, ndarray::array![0.0, 1.0]);
        assert_eq!(t.count().unwrap(), 2);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let f = csv("a,b,seized\n1,2,0\n3,x,1\n");
        let t = Table::open(f.path()).unwrap();
        let err = t.load(&names(&["a", "b"]), Some("seized")).unwrap_err();
        assert!(
            matches!(err, DataError::NotNumeric { row: 3, ref column, ref value, .. } if column == "b" && value == "x"),
            "{err}"
        );

        let err = t.load(&names(&["a", "c"]), Some("seized")).unwrap_err();
        assert!(
            err.to_string()
                .contains("column `c` is missing (the file has: a, b, seized)"),
            "{err}"
        );

        let f = csv("a,seized\n1,0\n2,yes\n");
        let t = Table::open(f.path()).unwrap();
        let err = t.load(&names(&["a"]), Some("seized")).unwrap_err();
        assert!(matches!(err, DataError::BadLabel { row: 3, .. }), "{err}");

        let f = csv("a,seized\n1,0\n2\n");
        let t = Table::open(f.path()).unwrap();
        let err = t.load(&names(&["a"]), Some("seized")).unwrap_err();
        assert!(matches!(err, DataError::BadRow { .. }), "{err}");

        let missing = Table::open(Path::new("/nonexistent/data.csv")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/data.csv"),
            "{missing}"
        );
    }
}
