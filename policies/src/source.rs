//! Source positions, diagnostics and the typed reading of TOML tables that every policy and
//! registry check goes through, so that each problem names `FILE:LINE:COL`.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::date::Date;
use crate::decimal::Decimal;

/// One problem in one file, at one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What was probably meant, e.g. a correctly spelt key.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// `did you mean `x`?` for the candidate closest to `word`, when one is close enough that a
/// typing slip is the likely cause.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let lower = word.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = strsim::damerau_levenshtein(&lower, &candidate.to_lowercase());
        let allowed = (candidate.chars().count().max(word.chars().count()) / 3).max(1);
        let prefix = candidate.len() >= 4 && lower.starts_with(&candidate.to_lowercase())
            || word.len() >= 4 && candidate.to_lowercase().starts_with(&lower);
        if (distance <= allowed || prefix) && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

/// A file's text with a line index, turning byte offsets into 1-based line and column
/// (columns count characters, as editors do).
pub(crate) struct Source<'a> {
    pub file: String,
    pub text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: impl Into<String>, text: &'a str) -> Source<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            file: file.into(),
            text,
            line_starts,
        }
    }

    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }

    pub(crate) fn line_of(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    pub(crate) fn diagnostic(
        &self,
        span: &Range<usize>,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        let (line, column) = self.position(span.start);
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            message,
            hint,
        }
    }
}

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Reads typed values out of TOML tables, collecting every problem instead of stopping at one.
pub(crate) struct Reader<'s> {
    pub source: &'s Source<'s>,
    pub problems: Vec<Diagnostic>,
}

impl<'s> Reader<'s> {
    pub(crate) fn new(source: &'s Source<'s>) -> Reader<'s> {
        Reader {
            source,
            problems: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let d = self.source.diagnostic(span, message.into(), None);
        self.problems.push(d);
    }

    pub(crate) fn error_hint(
        &mut self,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let d = self.source.diagnostic(span, message.into(), hint);
        self.problems.push(d);
    }

    /// Every key of `table` not in `allowed` is an error, with the closest allowed key as hint.
    pub(crate) fn unknown_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], place: &str) {
        for key in table.keys() {
            let name: &str = key.get_ref();
            if !allowed.contains(&name) {
                let hint = did_you_mean(name, allowed.iter().copied());
                self.error_hint(
                    &key.span(),
                    format!("unknown key `{name}` in {place}"),
                    hint,
                );
            }
        }
    }

    /// A required key; `at` is where to point when it is missing (the table's header).
    pub(crate) fn required<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        key: &str,
        place: &str,
        at: &Range<usize>,
    ) -> Option<&'t Value<'i>> {
        let value = table.get(key);
        if value.is_none() {
            self.error(at, format!("{place} is missing the required key `{key}`"));
        }
        value
    }

    pub(crate) fn table<'t, 'i>(
        &mut self,
        value: &'t Value<'i>,
        what: &str,
    ) -> Option<&'t DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    &value.span(),
                    format!("{what} must be a table, not {}", kind(other)),
                );
                None
            }
        }
    }

    pub(crate) fn string(&mut self, value: &Value<'_>, what: &str) -> Option<String> {
        match value.get_ref() {
            DeValue::String(s) if !s.trim().is_empty() => Some(s.to_string()),
            DeValue::String(_) => {
                self.error(&value.span(), format!("{what} must not be empty"));
                None
            }
            other => {
                self.error(
                    &value.span(),
                    format!("{what} must be a string, not {}", kind(other)),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, value: &Value<'_>, what: &str) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    &value.span(),
                    format!("{what} must be true or false, not {}", kind(other)),
                );
                None
            }
        }
    }

    /// A TOML local date (`2025-01-01`, unquoted).
    pub(crate) fn date(&mut self, value: &Value<'_>, what: &str) -> Option<Date> {
        let span = value.span();
        match value.get_ref() {
            DeValue::Datetime(dt) => match (dt.date, dt.time, dt.offset) {
                (Some(d), None, None) => {
                    let date = Date::new(d.year, d.month, d.day);
                    if date.is_none() {
                        self.error(&span, format!("{what} is not a date on the calendar"));
                    }
                    date
                }
                _ => {
                    self.error(
                        &span,
                        format!("{what} must be a date like 2025-01-01, without a time"),
                    );
                    None
                }
            },
            DeValue::String(s) => {
                let hint = Date::parse(s).map(|_| format!("write it without quotes: {s}"));
                self.error_hint(
                    &span,
                    format!("{what} must be a TOML date like 2025-01-01, not a string"),
                    hint,
                );
                None
            }
            other => {
                self.error(
                    &span,
                    format!("{what} must be a date like 2025-01-01, not {}", kind(other)),
                );
                None
            }
        }
    }

    /// A finite number written as a TOML integer or float, with its exact decimal value.
    pub(crate) fn number(&mut self, value: &Value<'_>, what: &str) -> Option<(f64, Decimal)> {
        let span = value.span();
        let parsed = match value.get_ref() {
            DeValue::Integer(i) => whole(i).map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            other => {
                self.error(
                    &span,
                    format!("{what} must be a number, not {}", kind(other)),
                );
                return None;
            }
        };
        match parsed.and_then(|x| Decimal::from_f64(x).map(|d| (x, d))) {
            Some(n) => Some(n),
            None => {
                self.error(&span, format!("{what} must be a finite number"));
                None
            }
        }
    }

    pub(crate) fn positive_number(
        &mut self,
        value: &Value<'_>,
        what: &str,
    ) -> Option<(f64, Decimal)> {
        let (x, d) = self.number(value, what)?;
        if !d.is_positive() {
            self.error(
                &value.span(),
                format!("{what} must be greater than 0, not {d}"),
            );
            return None;
        }
        Some((x, d))
    }

    /// A whole number no smaller than `min`.
    pub(crate) fn integer(&mut self, value: &Value<'_>, what: &str, min: i64) -> Option<u64> {
        let span = value.span();
        match value.get_ref() {
            DeValue::Integer(i) => match whole(i) {
                Some(n) if n >= min => u64::try_from(n).ok(),
                Some(n) => {
                    self.error(&span, format!("{what} must be at least {min}, not {n}"));
                    None
                }
                None => {
                    self.error(&span, format!("{what} is too large"));
                    None
                }
            },
            other => {
                self.error(
                    &span,
                    format!("{what} must be a whole number, not {}", kind(other)),
                );
                None
            }
        }
    }

    /// An array of strings, each with its span; `non_empty` makes `[]` an error.
    pub(crate) fn strings(
        &mut self,
        value: &Value<'_>,
        what: &str,
        non_empty: bool,
    ) -> Option<Vec<(String, Range<usize>)>> {
        let span = value.span();
        let DeValue::Array(items) = value.get_ref() else {
            let hint = value
                .get_ref()
                .as_str()
                .map(|s| format!("write a list: [\"{s}\"]"));
            self.error_hint(
                &span,
                format!(
                    "{what} must be a list of strings, not {}",
                    kind(value.get_ref())
                ),
                hint,
            );
            return None;
        };
        if non_empty && items.iter().next().is_none() {
            self.error(&span, format!("{what} must not be empty"));
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) if !s.trim().is_empty() => {
                    out.push((s.to_string(), item.span()))
                }
                DeValue::String(_) => {
                    self.error(
                        &item.span(),
                        format!("{what} must not contain an empty string"),
                    );
                    ok = false;
                }
                other => {
                    self.error(
                        &item.span(),
                        format!("{what} must contain strings only, not {}", kind(other)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A string or a list of strings (legal bases, approvers), as a list.
    pub(crate) fn string_or_strings(
        &mut self,
        value: &Value<'_>,
        what: &str,
    ) -> Option<Vec<String>> {
        match value.get_ref() {
            DeValue::String(_) => self.string(value, what).map(|s| vec![s]),
            _ => self
                .strings(value, what, true)
                .map(|v| v.into_iter().map(|(s, _)| s).collect()),
        }
    }
}

/// A TOML integer's value (toml gives its digits without separators, with their radix).
fn whole(i: &toml::de::DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

/// How a value's type is named in messages.
pub(crate) fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a whole number",
        DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "true/false",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// Parses `text` as TOML; a syntax error becomes one diagnostic at its position.
pub(crate) fn parse_toml<'i>(
    source: &Source<'_>,
    text: &'i str,
) -> Result<Spanned<DeTable<'i>>, Diagnostic> {
    DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().replace('\n', " ");
        source.diagnostic(&span, format!("not valid TOML: {message}"), None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let s = Source::new("x.toml", "a = 1\nbé = 2\n");
        assert_eq!(s.position(0), (1, 1));
        assert_eq!(s.position(6), (2, 1));
        // `=` after the two-byte é is the 4th character of line 2.
        assert_eq!(s.position(10), (2, 4));
    }

    #[test]
    fn suggestions_catch_slips_not_strangers() {
        let keys = ["max_epsilon_per_round", "max_epsilon_total", "max_delta"];
        assert_eq!(
            did_you_mean("max_epsilon_per_rnd", keys).as_deref(),
            Some("did you mean `max_epsilon_per_round`?")
        );
        assert_eq!(
            did_you_mean("max_detla", keys).as_deref(),
            Some("did you mean `max_delta`?")
        );
        assert_eq!(did_you_mean("colour", keys), None);
        assert_eq!(
            did_you_mean("narcotic", ["narcotics", "firearms"]).as_deref(),
            Some("did you mean `narcotics`?")
        );
    }
}
