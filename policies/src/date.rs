//! Calendar dates (`YYYY-MM-DD`), the only time the policy language knows.

use std::fmt;

/// A proleptic Gregorian calendar date. Ordering is chronological.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// A date that exists on the calendar, or `None`.
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
            2 => 28,
            _ => return None,
        };
        (day >= 1 && day <= days).then_some(Date { year, month, day })
    }

    /// Parses exactly `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Date> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return None;
        }
        let digits = |r: std::ops::Range<usize>| -> Option<u16> {
            let part = text.get(r)?;
            part.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        Date::new(
            digits(0..4)?,
            u8::try_from(digits(5..7)?).ok()?,
            u8::try_from(digits(8..10)?).ok()?,
        )
    }

    /// Whether `self` lies in `[from, until]`, either end absent meaning unbounded.
    pub fn within(self, from: Option<Date>, until: Option<Date>) -> bool {
        from.is_none_or(|f| f <= self) && until.is_none_or(|u| self <= u)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_dates_only() {
        assert_eq!(Date::parse("2025-09-01"), Date::new(2025, 9, 1));
        assert!(Date::parse("2024-02-29").is_some());
        assert!(Date::parse("2025-02-29").is_none());
        assert!(Date::parse("1900-02-29").is_none());
        assert!(Date::parse("2000-02-29").is_some());
        assert!(Date::parse("2025-13-01").is_none());
        assert!(Date::parse("2025-9-01").is_none());
        assert!(Date::parse("2025-09-01T00:00:00").is_none());
        assert!(Date::parse("+025-09-01").is_none());
    }

    #[test]
    fn both_ends_inclusive() {
        let d = |s| Date::parse(s).unwrap();
        assert!(d("2025-01-01").within(Some(d("2025-01-01")), Some(d("2025-01-01"))));
        assert!(!d("2024-12-31").within(Some(d("2025-01-01")), None));
        assert!(!d("2025-01-02").within(None, Some(d("2025-01-01"))));
        assert!(d("1999-01-01").within(None, None));
    }
}
