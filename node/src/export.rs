//! The node's evidence as a directory (`treaty node evidence --config node.toml --out DIR`),
//! and its cross-check against the coordinator's audit bundle of a job (`treaty audit verify
//! BUNDLE --ca ca.crt --node DIR`): docs/AUDIT.md, "The node's evidence".
//!
//! ```text
//! DIR/
//!   node.json        the format, the agency (from its certificate), when exported, how many records
//!   evidence.jsonl   every stored link of the node's evidence log, oldest first, one a line
//! ```

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use treaty_proto::receipt::{self, Receipt, ResultsRecord};
use treaty_proto::v1::SubmitReceipt;

use crate::ledger::{Record, read_export};

const FORMAT: &str = "treaty-node-evidence/1";

/// The most bytes read of an export's `evidence.jsonl`.
const MAX_EVIDENCE_BYTES: u64 = 1 << 30;

/// `node.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    format: String,
    agency: String,
    exported_unix_ms: i64,
    records: u64,
}

/// Writes the evidence log's stored `lines` of `agency`'s node into the new directory `dir`.
pub fn write(dir: &Path, agency: &str, lines: &[Vec<u8>], now_ms: i64) -> std::io::Result<()> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(std::io::Error::other(format!(
            "`{}` is not empty: give a new directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)?;
    let mut text = Vec::new();
    for line in lines {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    std::fs::write(dir.join("evidence.jsonl"), text)?;
    let node = NodeFile {
        format: FORMAT.into(),
        agency: agency.to_owned(),
        exported_unix_ms: now_ms,
        records: lines.len() as u64,
    };
    let mut json = serde_json::to_vec_pretty(&node).map_err(std::io::Error::other)?;
    json.push(b'\n');
    std::fs::write(dir.join("node.json"), json)
}

/// What the cross-check of a node's evidence with a job's bundle found in agreement.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossChecked {
    pub agency: String,
    /// The node's records of the job's tasks, its receipts for them, and the coordinator's
    /// records of the agency's results.
    pub tasks: usize,
    pub receipts: usize,
    pub results: usize,
    /// The job's tasks whose result the node sent and holds no receipt for.
    pub unreceipted: Vec<String>,
}

/// Checks the node evidence in `dir` against job `job`'s audit bundle, signed by
/// `coordinator` under the CA `ca` (DER), whose rounds' results records are `records`:
///
/// 1. the node's log chains, and is of the agency `node.json` names;
/// 2. every receipt it holds for a task of the job is signed by `coordinator`, under `ca`,
///    for that agency, and names a result the bundle's records hold for that task;
/// 3. every result the bundle records from the agency is one the node's log says it sent
///    (the same task, the same SHA-256).
///
/// The first disagreement, in words.
pub fn cross_check(
    dir: &Path,
    ca: &[u8],
    coordinator: &str,
    job: &str,
    records: &[ResultsRecord],
) -> Result<CrossChecked, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_EVIDENCE_BYTES),
            &mut bytes,
        )
        .map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
        Ok::<_, String>(bytes)
    };
    let node: NodeFile = serde_json::from_slice(&read("node.json")?)
        .map_err(|e| format!("node.json is unreadable: {e}"))?;
    if node.format != FORMAT {
        return Err(format!(
            "node.json: format `{}`, not `{FORMAT}`",
            node.format
        ));
    }
    let log = read_export(&read("evidence.jsonl")?).map_err(|e| format!("evidence.jsonl: {e}"))?;
    if log.len() as u64 != node.records {
        return Err(format!(
            "node.json states {} records, evidence.jsonl holds {}",
            node.records,
            log.len()
        ));
    }
    let agency = node.agency;
    // What the node's log says it sent for the job's tasks, as (task, hash): a task asked
    // again (after a coordinator's restart) keeps the same id.
    let mut sent: HashSet<(&str, &str)> = HashSet::new();
    let mut job_tasks: HashSet<&str> = HashSet::new();
    let mut tasks = 0;
    for record in &log {
        if let Record::Task(t) = record
            && t.job_id == job
        {
            tasks += 1;
            job_tasks.insert(&t.task_id);
            if !t.sent_sha256.is_empty() {
                sent.insert((&t.task_id, &t.sent_sha256));
            }
        }
    }
    // What the coordinator's bundle says it took in, as (task, agency, hash).
    let taken: HashSet<(&str, &str, &str)> = records
        .iter()
        .filter(|r| r.job == job)
        .flat_map(|r| &r.results)
        .map(|r| {
            (
                r.task_id.as_str(),
                r.agency.as_str(),
                r.result_sha256.as_str(),
            )
        })
        .collect();
    let taken_tasks: HashSet<&str> = taken.iter().map(|(t, _, _)| *t).collect();
    let mut receipts = 0;
    let mut receipted: HashSet<(String, String)> = HashSet::new();
    for record in &log {
        let Record::Receipt(r) = record else { continue };
        // Only the job's receipts are checked: one of another job, unreadable or signed
        // under another PKI, is that job's matter.
        let of_job =
            job_tasks.contains(r.task_id.as_str()) || taken_tasks.contains(r.task_id.as_str());
        if !of_job {
            continue;
        }
        let signed = SubmitReceipt {
            accepted: true,
            message: String::new(),
            statement: r.statement.clone(),
            signature: r.signature.clone(),
            scheme: r.scheme.clone(),
            certificate: r.certificate.clone(),
        };
        let receipt: Receipt = receipt::verify(&signed, ca)
            .map_err(|e| format!("the receipt for task `{}`: {e}", r.task_id))?;
        if receipt.task_id != r.task_id {
            return Err(format!(
                "the receipt stored for task `{}` is for task `{}`",
                r.task_id, receipt.task_id
            ));
        }
        receipts += 1;
        receipted.insert((receipt.task_id.clone(), receipt.result_sha256.clone()));
        if receipt.coordinator != coordinator {
            return Err(format!(
                "the receipt for task `{}` is signed by `{}`, not by the bundle's coordinator `{coordinator}`",
                receipt.task_id, receipt.coordinator
            ));
        }
        if receipt.agency != agency {
            return Err(format!(
                "the receipt for task `{}` is for `{}`, not for `{agency}`",
                receipt.task_id, receipt.agency
            ));
        }
        let key = (
            receipt.task_id.as_str(),
            agency.as_str(),
            receipt.result_sha256.as_str(),
        );
        if !taken.contains(&key) {
            return Err(format!(
                "the coordinator signed a receipt for result {} of task `{}`, but its bundle's results records do not hold it",
                receipt.result_sha256, receipt.task_id
            ));
        }
    }
    let mut results = 0;
    let mut ours: Vec<&(&str, &str, &str)> =
        taken.iter().filter(|(_, a, _)| *a == agency).collect();
    ours.sort();
    for (task, _, sha) in ours {
        results += 1;
        if !sent.contains(&(*task, *sha)) {
            return Err(format!(
                "the coordinator's bundle records result {sha} from `{agency}` for task `{task}`, which its node's evidence does not show it sent"
            ));
        }
    }
    // Results the node sent for which it holds no receipt: the coordinator withheld it, or the
    // node stopped before it stored it. Named, not held against either side.
    let mut unreceipted: Vec<String> = sent
        .iter()
        .filter(|(t, sha)| !receipted.contains(&(t.to_string(), sha.to_string())))
        .map(|(t, _)| t.to_string())
        .collect();
    unreceipted.sort();
    unreceipted.dedup();
    Ok(CrossChecked {
        agency,
        tasks,
        receipts,
        results,
        unreceipted,
    })
}
