//! Exact decimal arithmetic for privacy limits and budgets.
//!
//! The spec compares epsilon and delta "in exact decimal arithmetic on each value's shortest
//! round-trip decimal form", so that a budget of 0.3 admits 0.1 + 0.2. A [`Decimal`] is built
//! from an `f64` through Rust's shortest round-trip formatting (`{:e}`), then held as an integer
//! significand times a power of ten: sums and comparisons are exact, whatever the magnitudes.

use std::cmp::Ordering;
use std::fmt;

use dashu_int::IBig;

/// `significand * 10^exponent`, exactly.
#[derive(Clone, Debug)]
pub struct Decimal {
    significand: IBig,
    exponent: i64,
}

impl Decimal {
    /// The shortest decimal that round-trips to `x`; `None` for NaN and infinities.
    pub fn from_f64(x: f64) -> Option<Decimal> {
        if !x.is_finite() {
            return None;
        }
        if x == 0.0 {
            // What the digits below give for 0 and -0 ("0e0"), without printing them: a round
            // of 1,000 agencies reads 999 zeros (the others' spending, in a node's own view).
            return Some(Decimal::zero());
        }
        // `{:e}` prints the shortest digits that round-trip, e.g. `1e-5`, `-2.5e-1`: at most 17
        // of them, so the significand fits an i64.
        let text = format!("{x:e}");
        let (mantissa, exp) = text.split_once('e')?;
        let exp: i64 = exp.parse().ok()?;
        let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut digits: i64 = whole.parse().ok()?;
        for d in frac.bytes() {
            let d = i64::from(d.checked_sub(b'0').filter(|d| *d <= 9)?);
            digits = digits
                .checked_mul(10)?
                .checked_add(if x.is_sign_negative() { -d } else { d })?;
        }
        let significand = IBig::from(digits);
        Some(Decimal {
            significand,
            exponent: exp - frac.len() as i64,
        })
    }

    pub fn zero() -> Decimal {
        Decimal {
            significand: IBig::ZERO,
            exponent: 0,
        }
    }

    /// Both significands scaled to the smaller exponent.
    fn aligned(&self, other: &Decimal) -> (IBig, IBig, i64) {
        let exponent = self.exponent.min(other.exponent);
        let scale = |d: &Decimal| {
            let shift = (d.exponent - exponent) as usize;
            &d.significand * IBig::from(10u8).pow(shift)
        };
        (scale(self), scale(other), exponent)
    }

    pub fn add(&self, other: &Decimal) -> Decimal {
        let (a, b, exponent) = self.aligned(other);
        Decimal {
            significand: a + b,
            exponent,
        }
    }

    pub fn sub(&self, other: &Decimal) -> Decimal {
        let (a, b, exponent) = self.aligned(other);
        Decimal {
            significand: a - b,
            exponent,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.significand > IBig::ZERO
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Decimal {}
impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b, _) = self.aligned(other);
        a.cmp(&b)
    }
}

impl fmt::Display for Decimal {
    /// Plain decimal notation without trailing zeros (`8.15`, `0.00001`, `120`); scientific
    /// notation only for magnitudes a person would not write out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut significand = self.significand.clone();
        let mut exponent = self.exponent;
        let ten = IBig::from(10u8);
        while significand != IBig::ZERO && (&significand % &ten) == IBig::ZERO {
            significand /= &ten;
            exponent += 1;
        }
        if significand == IBig::ZERO {
            return write!(f, "0");
        }
        let negative = significand < IBig::ZERO;
        let digits = if negative { -significand } else { significand }.to_string();
        let sign = if negative { "-" } else { "" };
        if exponent >= 0 {
            if exponent > 20 {
                return write!(f, "{sign}{digits}e{exponent}");
            }
            return write!(f, "{sign}{digits}{}", "0".repeat(exponent as usize));
        }
        let frac_len = (-exponent) as usize;
        if frac_len > 30 {
            return write!(f, "{sign}{digits}e{exponent}");
        }
        if digits.len() > frac_len {
            let (whole, frac) = digits.split_at(digits.len() - frac_len);
            write!(f, "{sign}{whole}.{frac}")
        } else {
            write!(f, "{sign}0.{}{digits}", "0".repeat(frac_len - digits.len()))
        }
    }
}

#[cfg(test)]
// The tests write binary-float facts and over-long literals on purpose.
#[allow(clippy::assertions_on_constants, clippy::excessive_precision)]
mod tests {
    use super::*;

    fn d(x: f64) -> Decimal {
        Decimal::from_f64(x).unwrap()
    }

    #[test]
    fn sums_are_exact_where_binary_floats_are_not() {
        assert!(0.1 + 0.2 > 0.3, "the binary sum overshoots");
        assert_eq!(d(0.1).add(&d(0.2)), d(0.3));
        assert_eq!(d(7.9).add(&d(0.1)), d(8.0));
        assert!(d(7.9).add(&d(0.1000001)) > d(8.0));
    }

    #[test]
    fn shortest_round_trip_forms() {
        assert_eq!(d(1e-5).to_string(), "0.00001");
        assert_eq!(d(0.25).to_string(), "0.25");
        assert_eq!(d(8.0).to_string(), "8");
        assert_eq!(d(120.0).to_string(), "120");
        assert_eq!(d(-2.5).to_string(), "-2.5");
        assert_eq!(d(1e-300).to_string(), "1e-300");
        // The literal 0.10000000000000001 is the same double as 0.1.
        assert_eq!(d(0.10000000000000001), d(0.1));
        assert!(Decimal::from_f64(f64::NAN).is_none());
        assert!(Decimal::from_f64(f64::INFINITY).is_none());
    }

    #[test]
    fn every_double_reads_back_from_its_decimal() {
        // The decimal's text parses back to the very double, for the extremes and for 20,000
        // bit patterns spread over the whole range (a fixed xorshift sequence), either sign.
        let mut bits: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut doubles = vec![f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, -5e-324, -0.0];
        for _ in 0..20_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            doubles.push(f64::from_bits(bits));
        }
        for x in doubles.into_iter().filter(|x| x.is_finite()) {
            let text = d(x).to_string();
            assert_eq!(text.parse::<f64>().ok(), Some(x), "{x:e} became {text}");
        }
    }

    #[test]
    fn comparisons_across_magnitudes() {
        assert!(d(1e-6) < d(1e-5));
        assert!(d(1e300) > d(1e-300));
        assert!(d(-1.0) < d(0.0));
        assert_eq!(d(1e-300).add(&d(1e300)).cmp(&d(1e300)), Ordering::Greater);
        assert!(d(0.0).add(&d(0.0)) == Decimal::zero());
    }
}
