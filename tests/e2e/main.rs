//! End-to-end tests of the whole system: real `treaty` processes, real gRPC over real mutual
//! TLS on loopback, real certificates and real sled files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analytics;
mod approval;
mod audit;
mod cli;
mod common;
mod config;
mod demo;
mod docs;
mod dp;
mod exit_codes;
mod hostile;
mod hostile_agency;
mod hostile_coordinator;
mod identity;
mod learning;
mod ledger;
mod many;
mod monitoring;
mod newcomer;
mod poisoned;
mod policy;
mod privacy;
mod python_client;
mod report;
mod rounds;
mod schema;
mod scoring;
mod secure_aggregation;
mod stopping;
