//! The sharing-policy language and the privacy arithmetic that policies are judged by.
//!
//! This crate will own the language of `shared/spec/policy.md` (parsing with source spans,
//! validation, the three-phase decision, explanations) and the privacy accountants. It is
//! synchronous and knows nothing of tonic, tokio, nodes or coordinators. Until the policy engine
//! lands it holds nothing, and no round is decided by it: the coordinator invites every connected
//! member of a federation (see the README's "Status").
