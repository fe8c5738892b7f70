//! A federation on this machine, of real `treaty` processes over mutual TLS on loopback.
//!
//! - [`Site`]: the files of a federation in one directory (PKI, policies, configurations
//!   written from the configuration types, databases, logs) and starting its processes one at
//!   a time: what the end-to-end tests build on.
//! - [`Process`]: one running process, its log, killed when dropped.
//! - [`LocalFederation`]: a coordinator and a node per agency on the sample policies, started
//!   together: what `treaty demo` and `treaty bench w1` run.

mod federation;
pub(crate) mod policies;
mod process;
mod site;

pub use federation::{COORDINATOR_COUNTRY, LocalFederation, Member};
pub use process::{Process, holds_processes, stop_starting, stopping};
pub use site::{Site, SiteOptions, replace_file, write_toml};
