//! The reasons an agency can be excluded from a round.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every reason an agency can be excluded, in the spec's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    PolicyMissing,
    PolicyParseError,
    PolicySchemaError,
    /// Signatures are required and this policy's is missing or does not verify.
    PolicySignatureInvalid,
    PolicyNotYetValid,
    PolicyExpired,
    PurposeNotAllowed,
    CoordinatorDenied,
    CoordinatorNotAllowed,
    FieldExcluded,
    EpsilonPerRoundExceeded,
    DeltaExceeded,
    BudgetExhausted,
    RetentionExceeded,
    OnwardTransferNotAllowed,
    /// The agency's policy requires secure aggregation and the round is not under it (an
    /// extension of the spec's reasons, from `[handling] require_secure_aggregation`).
    SecureAggregationRequired,
    RecipientDenied,
    RecipientNotAllowed,
    RejectedByParticipant,
    MinParticipantsUnmet,
    MinCountriesUnmet,
    NoFeasibleRound,
}

impl Reason {
    /// Every reason, in the spec's order (which is also the enum's `Ord`).
    pub const ALL: [Reason; 22] = [
        Reason::PolicyMissing,
        Reason::PolicyParseError,
        Reason::PolicySchemaError,
        Reason::PolicySignatureInvalid,
        Reason::PolicyNotYetValid,
        Reason::PolicyExpired,
        Reason::PurposeNotAllowed,
        Reason::CoordinatorDenied,
        Reason::CoordinatorNotAllowed,
        Reason::FieldExcluded,
        Reason::EpsilonPerRoundExceeded,
        Reason::DeltaExceeded,
        Reason::BudgetExhausted,
        Reason::RetentionExceeded,
        Reason::OnwardTransferNotAllowed,
        Reason::SecureAggregationRequired,
        Reason::RecipientDenied,
        Reason::RecipientNotAllowed,
        Reason::RejectedByParticipant,
        Reason::MinParticipantsUnmet,
        Reason::MinCountriesUnmet,
        Reason::NoFeasibleRound,
    ];

    /// The reason with this code (`BUDGET_EXHAUSTED`), if there is one.
    pub fn from_code(code: &str) -> Option<Reason> {
        serde_json::from_value(Value::String(code.to_string())).ok()
    }

    pub fn code(self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::String(s)) => s,
            _ => format!("{self:?}"),
        }
    }

    pub fn phase(self) -> u8 {
        use Reason::*;
        match self {
            PolicyMissing | PolicyParseError | PolicySchemaError | PolicySignatureInvalid => 0,
            PolicyNotYetValid
            | PolicyExpired
            | PurposeNotAllowed
            | CoordinatorDenied
            | CoordinatorNotAllowed
            | FieldExcluded
            | EpsilonPerRoundExceeded
            | DeltaExceeded
            | BudgetExhausted
            | RetentionExceeded
            | OnwardTransferNotAllowed
            | SecureAggregationRequired => 1,
            _ => 2,
        }
    }
}
