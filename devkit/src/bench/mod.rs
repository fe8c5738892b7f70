//! The benchmark workloads of `treaty bench` (bench/README.md): each prints its figures for a
//! reader and, last, one JSON line for the record.
//!
//! - [`w1`]: a training job of 8 agencies x 100,000 rows, 20 rounds, end to end.
//! - [`w5`]: Gaussian noise through opendp for updates of 10^3 to 10^6 parameters.
//! - [`tabular`]: training recipes compared on a real tabular data set split across agencies
//!   (UCI Adult by occupation), against centralised non-private logistic regression.
//! - [`policy`]: `treaty policy decide` for 30 and 64 countries.
//! - [`timing`]: the timing channel of a DP-SGD round (docs/THREAT_MODEL.md).

mod policy;
mod tabular;
mod timing;
mod w1;
mod w5;

pub use policy::policy;
pub use tabular::{Recipe, TabularOptions, recipes, tabular};
pub use timing::timing;
pub use w1::{W1DataError, W1Options, w1};
pub use w5::w5;
