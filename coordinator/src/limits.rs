//! The bounds on everything an agency's node sends, in one place.
//!
//! Every agency may be hostile. Whatever it sends is stored, shown to operators, logged or
//! combined, so each field has a bound here, checked on arrival before anything else touches
//! the message. A message over a bound is refused with a status naming the field and the limit
//! (and logged, capped, under the peer's identity). The bounds are generous for an honest node:
//! a real node's Hello is a few kilobytes.
//!
//! The size of a whole gRPC message is bounded by the transport (`MAX_MESSAGE_BYTES`, 8 MiB);
//! tensors by `[limits] max_update_elements` of the configuration; the values of an analytics
//! answer by `analytics::check_answer`.

use prost::Message;
use treaty_proto::v1::{
    DatasetSummary, Evaluation, Hello, PrivacyReport, ResultHeader, SecAggFromNode,
    SignedStatement, TaskAccepted, TaskRefused, TensorSpec,
};

/// The most bytes of a name: a data set, a column, a metric, a tensor, an evaluation kind or
/// an accountant.
pub(crate) const MAX_NAME_BYTES: usize = 128;
/// The most bytes of a node's software version.
pub(crate) const MAX_VERSION_BYTES: usize = 64;
/// The most data sets one Hello declares.
pub(crate) const MAX_DATASETS: usize = 64;
/// The most columns of one declared data set.
pub const MAX_COLUMNS: usize = 1_024;
/// The most bytes of a whole Hello, encoded. With the per-field bounds it keeps what one
/// session stores (and what `ListAgencies` returns for it) small.
pub const MAX_HELLO_BYTES: usize = 256 << 10;
/// The most bytes of a task id a node names (the coordinator's own are far shorter).
pub const MAX_TASK_ID_BYTES: usize = 256;
/// The most bytes of a refusal's reason code (`BUDGET_EXHAUSTED` and the like).
pub(crate) const MAX_REASON_CODE_BYTES: usize = 64;
/// The most bytes of a refusal's message for people.
pub(crate) const MAX_TEXT_BYTES: usize = 4_096;
/// The most metrics of one result.
pub(crate) const MAX_METRICS: usize = 64;
/// The most tensors of one result.
pub(crate) const MAX_TENSORS: usize = 64;
/// The most dimensions of one tensor.
pub(crate) const MAX_TENSOR_DIMS: usize = 8;
/// The most counts of one evaluation (a confusion matrix of 512 classes).
pub(crate) const MAX_EVALUATION_COUNTS: usize = 1 << 18;

/// Operators' list APIs: the page size when the request gives none.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// Operators' list APIs: the largest page size granted.
pub(crate) const MAX_PAGE_SIZE: usize = 1_000;
/// Operators' list APIs: the most encoded bytes of one page (half the transport's limit; a
/// page holds at least one entry whatever its size).
pub(crate) const MAX_PAGE_BYTES: usize = 4 << 20;

/// Logging what a peer sent: the most characters of one string logged (the rest is cut, with a
/// marker saying how much).
pub(crate) const MAX_LOGGED_CHARS: usize = 200;
/// Logging: warnings about one peer logged whole per interval; more are counted and summed up.
pub(crate) const WARNINGS_PER_INTERVAL: u32 = 10;
/// Logging: the interval of `WARNINGS_PER_INTERVAL`, in seconds.
pub(crate) const WARNING_INTERVAL_SECS: u64 = 60;
/// Unusable messages (empty, over a bound, about tasks that are not the node's) one session
/// may send before the coordinator closes it.
pub(crate) const MAX_BAD_MESSAGES_PER_SESSION: u32 = 100;

/// Updates that are folded into a running sum (FedAvg and the server optimisers) are staged
/// whole, as their wire bytes, before they are checked and folded in: at most this many at
/// once. Other uploads wait for a free slot: the coordinator admits an upload (`SubmitResult`'s
/// `ResultAdmitted`) when it takes a slot, and a node sends its chunks only then, so a waiting
/// upload holds its header alone and the coordinator's memory for a round is a few models,
/// not one per agency.
pub(crate) const STAGING_SLOTS: usize = 2;
/// Model downloads one peer (an agency's node, an operator) may have open at once. A download
/// holds its model's encoding until its stream is read to the end or dropped, so without a
/// bound a peer that opens streams and never reads them would make the coordinator hold one
/// model per stream. An honest node downloads one model at a time (and none when its task
/// carries a small one).
pub(crate) const MAX_DOWNLOADS_PER_PEER: usize = 2;
/// An upload holding a staging slot must send its next chunk within this time, or it is
/// rejected and the slot freed for the others.
pub(crate) const STAGED_CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A field over its bound.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BoundError {
    #[error("`{field}` has {actual} bytes, above the limit of {limit}")]
    Bytes {
        field: String,
        actual: usize,
        limit: usize,
    },
    #[error("`{field}` has {actual} entries, above the limit of {limit}")]
    Count {
        field: String,
        actual: usize,
        limit: usize,
    },
}

fn bytes(field: impl Into<String>, value: &str, limit: usize) -> Result<(), BoundError> {
    if value.len() > limit {
        return Err(BoundError::Bytes {
            field: field.into(),
            actual: value.len(),
            limit,
        });
    }
    Ok(())
}

fn count(field: impl Into<String>, actual: usize, limit: usize) -> Result<(), BoundError> {
    if actual > limit {
        return Err(BoundError::Count {
            field: field.into(),
            actual,
            limit,
        });
    }
    Ok(())
}

fn check_dataset(i: usize, d: &DatasetSummary) -> Result<(), BoundError> {
    bytes(format!("datasets[{i}].name"), &d.name, MAX_NAME_BYTES)?;
    count(
        format!("datasets[{i}].columns"),
        d.columns.len(),
        MAX_COLUMNS,
    )?;
    for (j, c) in d.columns.iter().enumerate() {
        bytes(format!("datasets[{i}].columns[{j}]"), c, MAX_NAME_BYTES)?;
    }
    Ok(())
}

fn check_privacy(prefix: &str, p: Option<&PrivacyReport>) -> Result<(), BoundError> {
    match p {
        Some(p) => bytes(
            format!("{prefix}privacy.accountant"),
            &p.accountant,
            MAX_NAME_BYTES,
        ),
        None => Ok(()),
    }
}

/// Checks a session's Hello.
pub fn check_hello(hello: &Hello) -> Result<(), BoundError> {
    bytes(
        "software_version",
        &hello.software_version,
        MAX_VERSION_BYTES,
    )?;
    count("datasets", hello.datasets.len(), MAX_DATASETS)?;
    for (i, d) in hello.datasets.iter().enumerate() {
        check_dataset(i, d)?;
    }
    check_privacy("", hello.privacy.as_ref())?;
    bytes_total("Hello", hello.encoded_len(), MAX_HELLO_BYTES)
}

fn bytes_total(field: &str, actual: usize, limit: usize) -> Result<(), BoundError> {
    if actual > limit {
        return Err(BoundError::Bytes {
            field: field.to_owned(),
            actual,
            limit,
        });
    }
    Ok(())
}

/// Checks a refusal.
pub(crate) fn check_refused(r: &TaskRefused) -> Result<(), BoundError> {
    bytes("task_id", &r.task_id, MAX_TASK_ID_BYTES)?;
    bytes("reason_code", &r.reason_code, MAX_REASON_CODE_BYTES)?;
    bytes("message", &r.message, MAX_TEXT_BYTES)
}

/// Checks an agency's signed statement of a result: a statement and a signature are short,
/// a certificate a few KiB.
pub(crate) fn check_signed_statement(s: &SignedStatement) -> Result<(), BoundError> {
    bytes("sent.statement", &s.statement, MAX_TEXT_BYTES)?;
    bytes("sent.signature", &s.signature, MAX_TEXT_BYTES)?;
    bytes("sent.scheme", &s.scheme, MAX_REASON_CODE_BYTES)?;
    bytes("sent.certificate", &s.certificate, 4 * MAX_TEXT_BYTES)
}

/// The most bytes of a statement of secure aggregation (a list of up to 255 survivors).
pub(crate) const MAX_SECAGG_STATEMENT_BYTES: usize = 64 << 10;
/// The most bytes of one sealed share (a share is 33 bytes a secret, two secrets, in JSON and
/// sealed: a few hundred bytes).
pub(crate) const MAX_SEALED_SHARE_BYTES: usize = 1_024;

/// Checks a step of secure aggregation: at most one entry an agency of a round (255), each
/// bounded.
pub(crate) fn check_secagg(m: &SecAggFromNode) -> Result<(), BoundError> {
    use treaty_proto::secagg::MAX_PARTICIPANTS;
    use treaty_proto::v1::sec_agg_from_node::Step;
    bytes("secagg.task_id", &m.task_id, MAX_TASK_ID_BYTES)?;
    let statement = |s: &SignedStatement| {
        bytes("secagg.statement", &s.statement, MAX_SECAGG_STATEMENT_BYTES)?;
        bytes("secagg.signature", &s.signature, MAX_TEXT_BYTES)?;
        bytes("secagg.scheme", &s.scheme, MAX_REASON_CODE_BYTES)?;
        bytes("secagg.certificate", &s.certificate, 4 * MAX_TEXT_BYTES)
    };
    match &m.step {
        None => Ok(()),
        Some(Step::Keys(s)) | Some(Step::Survivors(s)) => statement(s),
        Some(Step::Shares(shares)) => {
            count("secagg.shares", shares.shares.len(), MAX_PARTICIPANTS)?;
            for s in &shares.shares {
                bytes("secagg.shares.from", &s.from, MAX_NAME_BYTES)?;
                bytes("secagg.shares.to", &s.to, MAX_NAME_BYTES)?;
                count(
                    "secagg.shares.ciphertext",
                    s.ciphertext.len(),
                    MAX_SEALED_SHARE_BYTES,
                )?;
            }
            Ok(())
        }
        Some(Step::Reveal(r)) => {
            count("secagg.reveal.seeds", r.seeds.len(), MAX_PARTICIPANTS)?;
            count(
                "secagg.reveal.mask_keys",
                r.mask_keys.len(),
                MAX_PARTICIPANTS,
            )?;
            for s in r.seeds.iter().chain(&r.mask_keys) {
                bytes("secagg.reveal.agency", &s.agency, MAX_NAME_BYTES)?;
                count("secagg.reveal.share", s.share.len(), 33)?;
            }
            Ok(())
        }
    }
}

/// Checks an acceptance.
pub(crate) fn check_accepted(a: &TaskAccepted) -> Result<(), BoundError> {
    bytes("task_id", &a.task_id, MAX_TASK_ID_BYTES)
}

fn check_tensor_spec(i: usize, t: &TensorSpec) -> Result<(), BoundError> {
    bytes(format!("tensors[{i}].name"), &t.name, MAX_NAME_BYTES)?;
    count(
        format!("tensors[{i}].shape"),
        t.shape.len(),
        MAX_TENSOR_DIMS,
    )
}

fn check_evaluation(e: &Evaluation) -> Result<(), BoundError> {
    bytes("evaluation.kind", &e.kind, MAX_NAME_BYTES)?;
    count("evaluation.counts", e.counts.len(), MAX_EVALUATION_COUNTS)
}

/// Checks a result's header (its tensors' sizes are the assembler's to check).
pub(crate) fn check_result_header(h: &ResultHeader) -> Result<(), BoundError> {
    bytes("task_id", &h.task_id, MAX_TASK_ID_BYTES)?;
    count("metrics", h.metrics.len(), MAX_METRICS)?;
    // In a fixed order, so that the error names the same field every time.
    let mut names: Vec<&String> = h.metrics.keys().collect();
    names.sort();
    for name in names {
        bytes("metrics key", name, MAX_NAME_BYTES)?;
    }
    count("tensors", h.tensors.len(), MAX_TENSORS)?;
    for (i, t) in h.tensors.iter().enumerate() {
        check_tensor_spec(i, t)?;
    }
    if let Some(e) = &h.evaluation {
        check_evaluation(e)?;
    }
    check_privacy("", h.privacy.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(name: &str, columns: usize) -> DatasetSummary {
        DatasetSummary {
            name: name.into(),
            columns: (0..columns).map(|i| format!("c{i}")).collect(),
        }
    }

    #[test]
    fn a_hello_at_every_bound_passes_and_one_past_any_is_named() {
        let honest = Hello {
            software_version: "0.1.0".into(),
            protocol_version: 1,
            datasets: vec![dataset("seizures", 20)],
            privacy: None,
            participants_by_digest: true,
        };
        assert_eq!(check_hello(&honest), Ok(()));
        let at = |f: &dyn Fn(&mut Hello)| {
            let mut h = honest.clone();
            f(&mut h);
            check_hello(&h)
        };
        assert_eq!(
            at(&|h| h.software_version = "v".repeat(MAX_VERSION_BYTES)),
            Ok(())
        );
        assert_eq!(
            at(&|h| h.software_version = "v".repeat(MAX_VERSION_BYTES + 1)),
            Err(BoundError::Bytes {
                field: "software_version".into(),
                actual: 65,
                limit: 64
            })
        );
        // The 8 MB data-set name of issue #9.
        let big = at(&|h| h.datasets[0].name = "x".repeat(8_000_000)).unwrap_err();
        assert_eq!(
            big.to_string(),
            "`datasets[0].name` has 8000000 bytes, above the limit of 128"
        );
        assert_eq!(at(&|h| h.datasets[0].name = "n".repeat(128)), Ok(()));
        assert!(matches!(
            at(&|h| h.datasets = vec![dataset("d", 1); MAX_DATASETS + 1]),
            Err(BoundError::Count { actual: 65, .. })
        ));
        assert!(matches!(
            at(&|h| h.datasets[0] = dataset("d", MAX_COLUMNS + 1)),
            Err(BoundError::Count {
                limit: MAX_COLUMNS,
                ..
            })
        ));
        assert!(matches!(
            at(&|h| h.datasets[0].columns[3] = "c".repeat(129)),
            Err(BoundError::Bytes { ref field, .. }) if field == "datasets[0].columns[3]"
        ));
        // Every field within its bound, yet too much altogether: 64 data sets of 1,024 columns.
        let total = at(&|h| {
            h.datasets = (0..MAX_DATASETS)
                .map(|i| dataset(&format!("d{i}"), MAX_COLUMNS))
                .collect()
        })
        .unwrap_err();
        assert!(
            matches!(&total, BoundError::Bytes { field, limit, .. } if field == "Hello" && *limit == MAX_HELLO_BYTES),
            "{total}"
        );
        assert!(matches!(
            at(&|h| h.privacy = Some(PrivacyReport {
                accountant: "a".repeat(129),
                ..Default::default()
            })),
            Err(BoundError::Bytes { ref field, .. }) if field == "privacy.accountant"
        ));
    }

    #[test]
    fn refusals_acceptances_and_result_headers_are_bounded() {
        let refusal = TaskRefused {
            task_id: "job-000001-r1-DE-BKA".into(),
            reason_code: "BUDGET_EXHAUSTED".into(),
            message: "m".repeat(MAX_TEXT_BYTES),
        };
        assert_eq!(check_refused(&refusal), Ok(()));
        for (field, bad) in [
            (
                "task_id",
                TaskRefused {
                    task_id: "t".repeat(257),
                    ..refusal.clone()
                },
            ),
            (
                "reason_code",
                TaskRefused {
                    reason_code: "R".repeat(65),
                    ..refusal.clone()
                },
            ),
            (
                "message",
                TaskRefused {
                    message: "m".repeat(1 << 20),
                    ..refusal.clone()
                },
            ),
        ] {
            assert!(
                matches!(check_refused(&bad), Err(BoundError::Bytes { field: f, .. }) if f == field),
                "{field}"
            );
        }
        assert!(
            check_accepted(&TaskAccepted {
                task_id: "t".repeat(257)
            })
            .is_err()
        );

        let header = ResultHeader {
            task_id: "t".into(),
            metrics: (0..MAX_METRICS).map(|i| (format!("m{i}"), 1.0)).collect(),
            tensors: vec![TensorSpec {
                name: "weights".into(),
                shape: vec![1; MAX_TENSOR_DIMS],
                ..Default::default()
            }],
            evaluation: Some(Evaluation {
                counts: vec![0.0; MAX_EVALUATION_COUNTS],
                kind: "binary".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check_result_header(&header), Ok(()));
        let mut h = header.clone();
        h.metrics.insert("one-too-many".into(), 0.0);
        assert!(matches!(
            check_result_header(&h),
            Err(BoundError::Count { ref field, actual: 65, .. }) if field == "metrics"
        ));
        let mut h = header.clone();
        h.metrics = [("k".repeat(129), 0.0)].into();
        assert!(check_result_header(&h).is_err());
        let mut h = header.clone();
        h.tensors = vec![TensorSpec::default(); MAX_TENSORS + 1];
        assert!(check_result_header(&h).is_err());
        let mut h = header.clone();
        h.tensors[0].shape.push(1);
        assert!(check_result_header(&h).is_err());
        let mut h = header;
        if let Some(e) = h.evaluation.as_mut() {
            e.counts.push(0.0);
        }
        assert!(matches!(
            check_result_header(&h),
            Err(BoundError::Count { ref field, .. }) if field == "evaluation.counts"
        ));
    }
}
