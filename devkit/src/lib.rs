//! What Treaty's developers, demos, benchmarks and end-to-end tests need and production does not.
//!
//! - [`synth`]: synthetic data: customs declarations with a known ground truth (the demo's), and
//!   the numeric data of benchmark workloads W1 and W3.
//! - [`local`]: a federation on this machine: a throwaway PKI, configuration files written from
//!   the configuration types themselves, and real `treaty` processes over mutual TLS on
//!   loopback ([`local::Site`] for one process at a time, [`local::LocalFederation`] for all).
//! - [`demo`]: the scenario `treaty demo` runs.
//! - [`bench`](mod@bench): the benchmark workloads of `treaty bench` (bench/README.md).
//! - [`evaluate`]: a final model scored on test splits the harness holds (demo, benchmarks).
//! - [`output`]: writing to standard output, where a closed pipe ends the command quietly, and
//!   following a job with a progress bar on a terminal.
//! - [`report`]: a job as one self-contained HTML page (`treaty job report`, the demo).
//!
//! The demo, `bench w1` and the end-to-end tests drive the system from outside, as agencies and
//! an operator would: processes, configuration files and the operator's gRPC API. Not all of it
//! does: `bench timing` and `bench w5` call the node's training and noise in this process, and
//! [`local::LocalFederation::spent`] opens the stopped nodes' ledgers; and the production
//! commands of the `treaty` binary print through [`output`]. A node or a coordinator never
//! depends on it.

#![deny(unreachable_pub)]

pub mod bench;
pub mod demo;
pub mod evaluate;
pub mod local;
pub mod output;
pub mod report;
pub mod synth;
