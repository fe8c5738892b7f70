//! Synthetic data, written as the CSV files an agency's node reads.
//!
//! - [`customs`]: realistic customs declarations for a federation of agencies, with a schema
//!   and a known ground truth (`treaty synth`, `treaty demo`).
//! - [`numeric`]: 64 numeric features and a binary label, the data of workloads W1 and W3
//!   (`treaty synth --kind numeric`).

pub mod customs;
pub mod numeric;

pub use customs::{AgencyData, Synth};
