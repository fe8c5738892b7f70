//! Why a node declines a task: a typed code, mapped to its stable wire string in one place
//! ([`RefusalCode`]'s `Display`), and a sentence. The coordinator, the operator's tools, the
//! end-to-end tests and `docs/THREAT_MODEL.md` rely on the wire strings: never change one.

use std::fmt;

use treaty_policies::Reason;

/// The code of a refusal, sent to the coordinator as `TaskRefused.reason_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// `INVALID_TASK`: the task itself is malformed or out of bounds (a missing part, an unknown
    /// enum value, a bad schema, a parameter beyond the node's limits, a global model that does
    /// not fit): judged from the task and public figures alone, before any record is read.
    InvalidTask,
    /// `DP_REQUIRED`: the task would release values without differential privacy.
    DpRequired,
    /// `DATA_ERROR`: the agency's data does not fit the task (a column missing from the
    /// header; the node's log keeps the whole error).
    DataError,
    /// `MODEL_UNAVAILABLE`: the global model of a training task cannot be downloaded, or the
    /// one the task carries cannot be used (incomplete, out of order, not finite).
    ModelUnavailable,
    /// `TRAINING_DIVERGED`: local training produced values that are not finite.
    TrainingDiverged,
    /// `NODE_STOPPING`: the node is shutting down and stopped the computation.
    NodeStopping,
    /// `BUDGET_EXHAUSTED`: the release would take the agency's ledger above its budget.
    BudgetExhausted,
    /// `LEDGER_ERROR`: the privacy ledger cannot be written, or is damaged (then with a fixed
    /// text): nothing is released.
    LedgerError,
    /// `INTERNAL_ERROR`: the node failed (a bug, or opendp refusing a mechanism); a failure of a
    /// computation on the data is reported with a fixed text.
    InternalError,
    /// `POLICY_TERMS_MISSING`: the task carries no sharing terms to judge it by.
    PolicyTermsMissing,
    /// `POLICY_REGISTRY_ERROR`: the agency's policy registry cannot be read.
    PolicyRegistryError,
    /// `POLICY_SIGNATURE_INVALID`: the agency's policy directory cannot be used (its keys or
    /// signatures).
    PolicySignatureInvalid,
    /// `EPSILON_PER_ROUND_EXCEEDED`: the task spends more in its round than the round was
    /// decided under.
    EpsilonPerRoundExceeded,
    /// `POLICY_REQUEST_INVALID`: the round's terms cannot be judged by the agency's policy.
    PolicyRequestInvalid,
    /// `NO_TEST_SPLIT`: the task evaluates a model, and the node has no test split (its
    /// configuration, not its records, says so).
    NoTestSplit,
    /// `APPROVAL_PENDING`: the node requires its operator's approval of each job, and this
    /// job's (under the terms it states) is not given yet.
    ApprovalPending,
    /// `APPROVAL_REJECTED`: the agency's operator rejected the job; final.
    ApprovalRejected,
    /// `APPROVAL_EXCEEDED`: the release would take the job's spending at the agency past the
    /// epsilon its operator approved.
    ApprovalExceeded,
    /// `SECURE_AGGREGATION_FAILED`: the round's secure aggregation cannot go on for this
    /// agency (a message of the coordinator or of another agency refused, too few agencies
    /// left, or no answer in time); what it depends on is protocol messages and counts of
    /// agencies, never records.
    SecureAggregationFailed,
    /// The agency's own policy excludes it from the round: the policy reason's own code.
    Policy(Reason),
}

impl fmt::Display for RefusalCode {
    /// The code's wire string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self {
            RefusalCode::InvalidTask => "INVALID_TASK",
            RefusalCode::DpRequired => "DP_REQUIRED",
            RefusalCode::DataError => "DATA_ERROR",
            RefusalCode::ModelUnavailable => "MODEL_UNAVAILABLE",
            RefusalCode::TrainingDiverged => "TRAINING_DIVERGED",
            RefusalCode::NodeStopping => "NODE_STOPPING",
            RefusalCode::BudgetExhausted => "BUDGET_EXHAUSTED",
            RefusalCode::LedgerError => "LEDGER_ERROR",
            RefusalCode::InternalError => "INTERNAL_ERROR",
            RefusalCode::PolicyTermsMissing => "POLICY_TERMS_MISSING",
            RefusalCode::PolicyRegistryError => "POLICY_REGISTRY_ERROR",
            RefusalCode::PolicySignatureInvalid => "POLICY_SIGNATURE_INVALID",
            RefusalCode::EpsilonPerRoundExceeded => "EPSILON_PER_ROUND_EXCEEDED",
            RefusalCode::PolicyRequestInvalid => "POLICY_REQUEST_INVALID",
            RefusalCode::NoTestSplit => "NO_TEST_SPLIT",
            RefusalCode::ApprovalPending => "APPROVAL_PENDING",
            RefusalCode::ApprovalRejected => "APPROVAL_REJECTED",
            RefusalCode::ApprovalExceeded => "APPROVAL_EXCEEDED",
            RefusalCode::SecureAggregationFailed => "SECURE_AGGREGATION_FAILED",
            RefusalCode::Policy(reason) => return f.write_str(&reason.code()),
        };
        f.write_str(code)
    }
}

/// Why a node declines a task: a code and a sentence.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

impl Refusal {
    /// A refusal with this code and sentence.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// An `INVALID_TASK` refusal.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Refusal::new(RefusalCode::InvalidTask, message)
    }

    /// An `INTERNAL_ERROR` refusal saying what failed.
    pub(crate) fn internal(error: impl fmt::Display) -> Self {
        Refusal::new(RefusalCode::InternalError, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_keeps_its_wire_string() {
        let codes = [
            (RefusalCode::InvalidTask, "INVALID_TASK"),
            (RefusalCode::DpRequired, "DP_REQUIRED"),
            (RefusalCode::DataError, "DATA_ERROR"),
            (RefusalCode::ModelUnavailable, "MODEL_UNAVAILABLE"),
            (RefusalCode::TrainingDiverged, "TRAINING_DIVERGED"),
            (RefusalCode::NodeStopping, "NODE_STOPPING"),
            (RefusalCode::BudgetExhausted, "BUDGET_EXHAUSTED"),
            (RefusalCode::LedgerError, "LEDGER_ERROR"),
            (RefusalCode::InternalError, "INTERNAL_ERROR"),
            (RefusalCode::PolicyTermsMissing, "POLICY_TERMS_MISSING"),
            (RefusalCode::PolicyRegistryError, "POLICY_REGISTRY_ERROR"),
            (
                RefusalCode::PolicySignatureInvalid,
                "POLICY_SIGNATURE_INVALID",
            ),
            (
                RefusalCode::EpsilonPerRoundExceeded,
                "EPSILON_PER_ROUND_EXCEEDED",
            ),
            (RefusalCode::PolicyRequestInvalid, "POLICY_REQUEST_INVALID"),
            (RefusalCode::NoTestSplit, "NO_TEST_SPLIT"),
            (RefusalCode::ApprovalPending, "APPROVAL_PENDING"),
            (RefusalCode::ApprovalRejected, "APPROVAL_REJECTED"),
            (RefusalCode::ApprovalExceeded, "APPROVAL_EXCEEDED"),
            (
                RefusalCode::SecureAggregationFailed,
                "SECURE_AGGREGATION_FAILED",
            ),
            (
                RefusalCode::Policy(Reason::PurposeNotAllowed),
                "PURPOSE_NOT_ALLOWED",
            ),
        ];
        for (code, wire) in codes {
            assert_eq!(code.to_string(), wire);
        }
    }
}
