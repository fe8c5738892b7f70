//! The sharing-policy language and the privacy arithmetic that policies are judged by.
//!
//! This crate owns the privacy accountants ([`privacy`]): what a history of releases costs an
//! agency in (epsilon, delta). It will own the policy language of `shared/spec/policy.md`
//! (parsing with source spans, validation, the three-phase decision, explanations). It is
//! synchronous and knows nothing of tonic, tokio, nodes or coordinators.

pub mod privacy;
