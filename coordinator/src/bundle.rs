//! A job's audit bundle: the evidence the coordinator exports for a job (`treaty audit export`),
//! written as plain files that verify offline (`treaty audit verify`) — or by hand with
//! `sha256sum` and `openssl`, as docs/AUDIT.md shows.
//!
//! ```text
//! DIR/
//!   bundle.json            which job and federation, when and by whom exported, what is here
//!   links.jsonl            every link of the audit log from 1 to the signed head, one a line
//!   entries/N.json         entry N's line exactly (no newline), for the job's entries
//!   head.statement         the signed head, exactly as signed
//!   head.sig               its signature (for ECDSA, ASN.1 DER)
//!   head.json              the signature scheme and the signing certificate's SHA-256
//!   coordinator.crt        the signing certificate (PEM)
//!   ca.crt                 the federation CA's certificate (PEM)
//!   decisions/SHA256.json  each round's policy decision record, named by its SHA-256
//!   texts/SHA256.txt       each policy and registry text a decision cites
//!   results/SHA256.json    each round's results record (every result taken in, by the
//!                          SHA-256 its receipt names), named by its SHA-256, as the
//!                          round's completing entry vouches (its `results`)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use treaty_policies::sha256_hex;
use treaty_proto::receipt::{ResultsRecord, verify_sent};
use treaty_proto::v1::{AuditExportInfo, AuditPart, AuditSignedHead, audit_part};

use crate::audit::{self, ChainBreak, Head};
use crate::store::AuditEntry;

/// The most bytes an export may hold in all (links, entries, texts): far above any real log,
/// so that a coordinator cannot make its operator's client hold without end.
pub const MAX_BUNDLE_BYTES: usize = 1 << 30;

/// The most entries (files) an export may hold.
pub const MAX_BUNDLE_ENTRIES: usize = 1_000_000;

/// What is wrong with a bundle or an export.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{0}` is not empty: export into a new directory")]
    NotEmpty(PathBuf),
    #[error("the export is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Chain(#[from] ChainBreak),
    #[error("the signed head: {0}")]
    Head(String),
    #[error("`{file}`: {problem}")]
    File { file: String, problem: String },
}

/// A job's evidence, as exported.
#[derive(Debug, Default)]
pub struct Bundle {
    pub info: AuditExportInfo,
    /// Link lines 1, 2, ...
    pub links: Vec<Vec<u8>>,
    /// Entry lines by number.
    pub entries: BTreeMap<u64, Vec<u8>>,
    pub head: AuditSignedHead,
    pub coordinator_certificate: Vec<u8>,
    pub ca_certificate: Vec<u8>,
    /// Cited texts by SHA-256.
    pub texts: BTreeMap<String, String>,
    /// Decision records by SHA-256.
    pub decisions: BTreeMap<String, String>,
    /// Rounds' results records by SHA-256.
    pub results: BTreeMap<String, String>,
}

/// `bundle.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    job_id: String,
    federation: String,
    exported_unix_ms: i64,
    exported_by: String,
    links: u64,
    entries: Vec<u64>,
}

/// `head.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadFile {
    scheme: String,
    certificate_sha256: String,
}

const FORMAT: &str = "treaty-audit-bundle/1";

impl Bundle {
    /// Collects the parts of an export, checking their shape (links in order, one of each
    /// single part) and bounding what they hold.
    pub fn from_parts(parts: impl IntoIterator<Item = AuditPart>) -> Result<Bundle, BundleError> {
        let mut bundle = Bundle::default();
        let (mut info, mut head) = (None, None);
        let mut bytes = 0usize;
        let malformed = |s: &str| BundleError::Malformed(s.to_owned());
        for part in parts {
            let Some(part) = part.part else {
                return Err(malformed("an empty part"));
            };
            match part {
                audit_part::Part::Links(run) => {
                    if run.first_seq != bundle.links.len() as u64 + 1 {
                        return Err(malformed("links out of order"));
                    }
                    // Each line counts what holding it costs, not only its bytes.
                    bytes += run.lines.iter().map(|l| l.len() + 64).sum::<usize>();
                    bundle.links.extend(run.lines.iter().map(|l| l.to_vec()));
                }
                audit_part::Part::Entry(e) => {
                    bytes += e.line.len() + 64;
                    if bundle.entries.insert(e.seq, e.line.to_vec()).is_some() {
                        return Err(malformed("an entry sent twice"));
                    }
                    if bundle.entries.len() > MAX_BUNDLE_ENTRIES {
                        return Err(malformed("more than a million entries"));
                    }
                }
                audit_part::Part::Head(h) => {
                    if head.replace(h).is_some() {
                        return Err(malformed("two signed heads"));
                    }
                }
                audit_part::Part::CoordinatorCertificate(c) => {
                    bundle.coordinator_certificate = c.to_vec()
                }
                audit_part::Part::CaCertificate(c) => bundle.ca_certificate = c.to_vec(),
                audit_part::Part::Text(t) => {
                    // The digest names a file of the bundle: 64 hex digits, nothing else.
                    if t.sha256.len() != 64
                        || !t
                            .sha256
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    {
                        return Err(malformed("a cited text under a name that is not a SHA-256"));
                    }
                    bytes += t.text.len();
                    bundle.texts.insert(t.sha256, t.text);
                }
                audit_part::Part::Decision(d) => {
                    bytes += d.json.len();
                    bundle
                        .decisions
                        .insert(sha256_hex(d.json.as_bytes()), d.json);
                }
                audit_part::Part::Results(r) => {
                    bytes += r.json.len();
                    bundle.results.insert(sha256_hex(r.json.as_bytes()), r.json);
                }
                audit_part::Part::Info(i) => info = Some(i),
            }
            if bytes > MAX_BUNDLE_BYTES {
                return Err(malformed("the export is larger than 1 GiB"));
            }
        }
        bundle.info = info.ok_or_else(|| malformed("no information on the job"))?;
        bundle.head = head.ok_or_else(|| malformed("no signed head"))?;
        Ok(bundle)
    }

    /// Writes the bundle into `dir` (created; it must be new or empty).
    pub fn write(&self, dir: &Path) -> Result<(), BundleError> {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(BundleError::NotEmpty(dir.to_owned()));
        }
        for sub in ["entries", "decisions", "texts", "results"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| BundleError::Write { path, source })?;
        }
        let write = |name: String, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|source| BundleError::Write { path, source })
        };
        let manifest = Manifest {
            format: FORMAT.into(),
            job_id: self.info.job_id.clone(),
            federation: self.info.federation.clone(),
            exported_unix_ms: self.info.exported_unix_ms,
            exported_by: self.info.exported_by.clone(),
            links: self.links.len() as u64,
            entries: self.entries.keys().copied().collect(),
        };
        write("bundle.json".into(), &pretty(&manifest)?)?;
        let mut links = Vec::new();
        for line in &self.links {
            links.extend_from_slice(line);
            links.push(b'\n');
        }
        write("links.jsonl".into(), &links)?;
        for (seq, line) in &self.entries {
            write(format!("entries/{seq}.json"), line)?;
        }
        write("head.statement".into(), self.head.statement.as_bytes())?;
        write("head.sig".into(), &self.head.signature)?;
        let head = HeadFile {
            scheme: self.head.scheme.clone(),
            certificate_sha256: self.head.certificate_sha256.clone(),
        };
        write("head.json".into(), &pretty(&head)?)?;
        write(
            "coordinator.crt".into(),
            treaty_proto::tls::certificate_pem(&self.coordinator_certificate).as_bytes(),
        )?;
        write(
            "ca.crt".into(),
            treaty_proto::tls::certificate_pem(&self.ca_certificate).as_bytes(),
        )?;
        for (sha256, json) in &self.decisions {
            write(format!("decisions/{sha256}.json"), json.as_bytes())?;
        }
        for (sha256, text) in &self.texts {
            write(format!("texts/{sha256}.txt"), text.as_bytes())?;
        }
        for (sha256, json) in &self.results {
            write(format!("results/{sha256}.json"), json.as_bytes())?;
        }
        Ok(())
    }
}

fn pretty(value: &impl Serialize) -> Result<Vec<u8>, BundleError> {
    let mut out = serde_json::to_vec_pretty(value)
        .map_err(|e| BundleError::Malformed(format!("cannot encode: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// What a verified bundle holds.
#[derive(Debug)]
pub struct Verified {
    pub job_id: String,
    pub federation: String,
    /// The log's length at the signed head.
    pub links: u64,
    /// The entries included (the job's, its federation's and the log's own).
    pub entries: usize,
    pub decisions: usize,
    pub texts: usize,
    /// The rounds' results records, by SHA-256: JSON `{"job","round","results":[{"agency",
    /// "task_id","result_sha256","passed"}]}`.
    pub results: BTreeMap<String, serde_json::Value>,
    /// How many of those results carry their agency's signature of what it sent, each checked.
    pub signed_results: usize,
    /// The signing coordinator's identity.
    pub signed_by: String,
    /// When the coordinator signed the head, milliseconds since the Unix epoch.
    pub signed_unix_ms: i64,
    /// Who exported it and when, as the log's last `audit.exported` entry of the job says.
    pub exported_by: String,
    pub exported_unix_ms: i64,
}

/// The most bytes `verify` reads of `links.jsonl`, and of any other file.
const MAX_LINKS_BYTES: u64 = 1 << 30;
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Checks a bundle written by [`Bundle::write`] against the federation CA the reader trusts
/// (`trusted_ca`, DER): the bundle's `ca.crt` is that CA; the head is signed by a coordinator
/// certificate it issued, and states the last link, exactly as signed; the links chain from
/// the first to the last; the bundle holds the entry of every link of its job, each hashing to
/// its link, and no entry of another job; each decision hashes to what its round's
/// `round.decided` entry vouches for, and every text such an entry cites is here and hashes
/// to its name; `bundle.json` states what is here. With `previous` (an earlier bundle of the
/// same coordinator), its links must begin this bundle's: the log was only appended to. The
/// first thing that is not so is the error.
pub fn verify(
    dir: &Path,
    trusted_ca: &[u8],
    previous: Option<&Path>,
) -> Result<Verified, BundleError> {
    let file = |name: &str, problem: String| BundleError::File {
        file: name.to_owned(),
        problem,
    };
    let read = |name: &str, limit: u64| read_capped(&dir.join(name), limit);
    let manifest: Manifest = serde_json::from_slice(&read("bundle.json", MAX_FILE_BYTES)?)
        .map_err(|e| file("bundle.json", e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(file(
            "bundle.json",
            format!("format `{}`, not `{FORMAT}`", manifest.format),
        ));
    }
    let plain = |name: &str| {
        (1..=128).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !plain(&manifest.job_id) || !plain(&manifest.federation) {
        return Err(file(
            "bundle.json",
            "its job or federation is not a plain name".into(),
        ));
    }
    // The trust: the reader's CA, and a coordinator's certificate it issued.
    let ca = treaty_proto::tls::certificate_der(&read("ca.crt", MAX_FILE_BYTES)?)
        .map_err(|problem| file("ca.crt", problem))?;
    if ca != trusted_ca {
        return Err(file(
            "ca.crt",
            "is not the federation CA you trust: the bundle was signed under another PKI".into(),
        ));
    }
    let certificate = treaty_proto::tls::certificate_der(&read("coordinator.crt", MAX_FILE_BYTES)?)
        .map_err(|problem| file("coordinator.crt", problem))?;
    let signer =
        treaty_proto::tls::verify_coordinator(&certificate, &ca).map_err(BundleError::Head)?;
    // The links.
    let links = read("links.jsonl", MAX_LINKS_BYTES)?;
    let Some(body) = links.strip_suffix(b"\n") else {
        return Err(file("links.jsonl", "empty, or its last line is cut".into()));
    };
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let (head, _) = audit::verify((1u64..).zip(lines.iter().copied()))?;
    if let Some(previous) = previous {
        let earlier = read_capped(&previous.join("links.jsonl"), MAX_LINKS_BYTES)?;
        if !links.starts_with(&earlier) {
            let at = earlier
                .split(|b| *b == b'\n')
                .zip(links.split(|b| *b == b'\n'))
                .position(|(a, b)| a != b)
                .map_or(0, |i| i + 1);
            return Err(ChainBreak {
                seq: at as u64,
                problem: format!(
                    "differs from the earlier bundle `{}`: the log was rewritten, not appended to",
                    previous.display()
                ),
            }
            .into());
        }
    }
    // The signed head: the last link, exactly as signed, by the coordinator's key.
    let statement = String::from_utf8(read("head.statement", MAX_FILE_BYTES)?)
        .map_err(|_| BundleError::Head("`head.statement` is not text".into()))?;
    let signed = Head::of_statement(&statement)
        .ok_or_else(|| BundleError::Head("`head.statement` is not a signed head's text".into()))?;
    if signed != head {
        return Err(BundleError::Head(format!(
            "the coordinator signed entry {} with link hash {}, but the links end at entry {} with {}: links were added or removed",
            signed.seq, signed.sha256, head.seq, head.sha256
        )));
    }
    let head_file: HeadFile = serde_json::from_slice(&read("head.json", MAX_FILE_BYTES)?)
        .map_err(|e| file("head.json", e.to_string()))?;
    if sha256_hex(&certificate) != head_file.certificate_sha256 {
        return Err(BundleError::Head(
            "`coordinator.crt` is not the certificate that signed the head".into(),
        ));
    }
    treaty_proto::tls::verify_signature(
        &certificate,
        &head_file.scheme,
        statement.as_bytes(),
        &read("head.sig", MAX_FILE_BYTES)?,
    )
    .map_err(BundleError::Head)?;
    if manifest.links != head.seq {
        return Err(file(
            "bundle.json",
            format!("states {} links; there are {}", manifest.links, head.seq),
        ));
    }
    // The entries: each hashes to its link; every link of the job has its entry here; none
    // is another job's.
    let links: Vec<audit::Link> = lines
        .iter()
        .map(|l| serde_json::from_slice(l))
        .collect::<Result<_, _>>()
        .map_err(|e| file("links.jsonl", e.to_string()))?;
    let mut entries: BTreeMap<u64, AuditEntry> = BTreeMap::new();
    for name in read_dir(dir, "entries")? {
        let seq = name
            .strip_suffix(".json")
            .filter(|n| {
                !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| file(&format!("entries/{name}"), "not named N.json".into()))?;
        let line = read(&format!("entries/{name}"), MAX_FILE_BYTES)?;
        entries.insert(seq, entry_of(seq, &line, &links)?);
    }
    let ours = |scope: &str| audit::in_bundle(scope, &manifest.job_id, &manifest.federation);
    for (seq, entry) in &entries {
        if !ours(&audit::scope(entry)) {
            return Err(ChainBreak {
                seq: *seq,
                problem: format!(
                    "the entry is of job `{}` of federation `{}`, not of this bundle's",
                    entry.job, entry.federation
                ),
            }
            .into());
        }
    }
    for (i, link) in links.iter().enumerate() {
        let seq = i as u64 + 1;
        if ours(&link.scope) && !entries.contains_key(&seq) {
            return Err(ChainBreak {
                seq,
                problem: format!(
                    "an entry of `{}` that the bundle leaves out (`entries/{seq}.json`)",
                    link.scope
                ),
            }
            .into());
        }
    }
    if manifest.entries != entries.keys().copied().collect::<Vec<_>>() {
        return Err(file(
            "bundle.json",
            "does not list the entry files that are here".into(),
        ));
    }
    // Who exported it, and when, as the log says (`bundle.json` is only what the client wrote).
    let exported = entries
        .values()
        .rev()
        .find(|e| e.action == "audit.exported")
        .ok_or_else(|| {
            file(
                "bundle.json",
                "the log records no export of this job".into(),
            )
        })?;
    if exported.actor != manifest.exported_by {
        return Err(file(
            "bundle.json",
            format!(
                "says `{}` exported it, but the log's last export of the job is `{}`'s",
                manifest.exported_by, exported.actor
            ),
        ));
    }
    let (exported_by, exported_unix_ms) = (exported.actor.clone(), exported.time_unix_ms);
    // The decisions and the texts they were decided under, as the log vouches for them.
    let mut cited = std::collections::BTreeSet::new();
    let mut vouched = BTreeMap::new();
    for (seq, entry) in entries.iter().filter(|(_, e)| e.action == "round.decided") {
        if let Some((decision, texts)) = entry.documents.split_first() {
            vouched.insert(decision.clone(), *seq);
            cited.extend(texts.iter().cloned());
        }
    }
    let decisions = read_dir(dir, "decisions")?;
    for name in &decisions {
        let bytes = read(&format!("decisions/{name}"), MAX_FILE_BYTES)?;
        let named = name.strip_suffix(".json").unwrap_or_default();
        if sha256_hex(&bytes) != named {
            return Err(file(
                &format!("decisions/{name}"),
                format!(
                    "hashes to {}, not to its name: the decision was altered",
                    sha256_hex(&bytes)
                ),
            ));
        }
        if !vouched.contains_key(named) {
            return Err(file(
                &format!("decisions/{name}"),
                "no `round.decided` entry of the bundle vouches for it".into(),
            ));
        }
    }
    if let Some((missing, seq)) = vouched
        .iter()
        .find(|(sha, _)| !decisions.contains(&format!("{sha}.json")))
    {
        return Err(ChainBreak {
            seq: *seq,
            problem: format!("the decision it vouches for (`decisions/{missing}.json`) is missing"),
        }
        .into());
    }
    let texts = read_dir(dir, "texts")?;
    for name in &texts {
        let bytes = read(&format!("texts/{name}"), MAX_FILE_BYTES)?;
        let named = name.strip_suffix(".txt").unwrap_or_default();
        if sha256_hex(&bytes) != named {
            return Err(file(
                &format!("texts/{name}"),
                format!("hashes to {}, not to its name", sha256_hex(&bytes)),
            ));
        }
        if !cited.contains(named) {
            return Err(file(
                &format!("texts/{name}"),
                "no decision of the bundle cites it".into(),
            ));
        }
    }
    if let Some(missing) = cited
        .iter()
        .find(|sha| !texts.contains(&format!("{sha}.txt")))
    {
        return Err(file(
            &format!("texts/{missing}.txt"),
            "is cited by a decision but missing".into(),
        ));
    }
    // The rounds' results records, as the rounds' completions vouch for them.
    let vouched: BTreeMap<&str, u64> = entries
        .iter()
        .filter(|(_, e)| !e.results.is_empty())
        .map(|(seq, e)| (e.results.as_str(), *seq))
        .collect();
    let mut results = BTreeMap::new();
    let mut signed_results = 0;
    // Bundles exported before rounds kept results records have no `results/`.
    let names = match dir.join("results").exists() {
        true => read_dir(dir, "results")?,
        false => Vec::new(),
    };
    for name in names {
        let path = format!("results/{name}");
        let bytes = read(&path, MAX_FILE_BYTES)?;
        let named = name.strip_suffix(".json").unwrap_or_default();
        if sha256_hex(&bytes) != named {
            return Err(file(
                &path,
                format!(
                    "hashes to {}, not to its name: the record was altered",
                    sha256_hex(&bytes)
                ),
            ));
        }
        if !vouched.contains_key(named) {
            return Err(file(
                &path,
                "no entry of the bundle vouches for it (as a round's `results`)".into(),
            ));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| file(&path, format!("is not JSON: {e}")))?;
        // Each agency's signature of what it sent, where it sent one: by an agency certificate
        // of the CA, for the result the record names.
        let record: ResultsRecord = serde_json::from_value(json.clone())
            .map_err(|e| file(&path, format!("is not a results record: {e}")))?;
        for r in &record.results {
            let Some(sent) = &r.sent else { continue };
            let stated = verify_sent(&sent.clone().into(), &ca)
                .map_err(|e| file(&path, format!("task `{}`: {e}", r.task_id)))?;
            if stated.agency != r.agency
                || stated.task_id != r.task_id
                || stated.result_sha256 != r.result_sha256
            {
                return Err(file(
                    &path,
                    format!(
                        "task `{}`: the agency's signed statement is of another result than the record names",
                        r.task_id
                    ),
                ));
            }
            signed_results += 1;
        }
        results.insert(named.to_owned(), json);
    }
    if let Some((missing, seq)) = vouched.iter().find(|(sha, _)| !results.contains_key(**sha)) {
        return Err(ChainBreak {
            seq: *seq,
            problem: format!(
                "the results record it vouches for (`results/{missing}.json`) is missing"
            ),
        }
        .into());
    }
    Ok(Verified {
        job_id: manifest.job_id,
        federation: manifest.federation,
        links: head.seq,
        entries: entries.len(),
        decisions: decisions.len(),
        texts: texts.len(),
        results,
        signed_results,
        signed_by: signer.to_string(),
        exported_by,
        exported_unix_ms,
        signed_unix_ms: statement
            .lines()
            .find_map(|l| l.strip_prefix("time_unix_ms "))
            .and_then(|t| t.parse().ok())
            .unwrap_or_default(),
    })
}

/// Entry `seq`'s line, checked against its link: its hash, and that it is an audit entry.
fn entry_of(seq: u64, line: &[u8], links: &[audit::Link]) -> Result<AuditEntry, BundleError> {
    let link = usize::try_from(seq)
        .ok()
        .and_then(|s| s.checked_sub(1))
        .and_then(|i| links.get(i))
        .ok_or_else(|| ChainBreak {
            seq,
            problem: format!("the entry has no link: the links end at {}", links.len()),
        })?;
    if sha256_hex(line) != link.entry_sha256 {
        return Err(ChainBreak {
            seq,
            problem: format!(
                "the entry was altered: `entries/{seq}.json` hashes to {}, but its link says {}",
                sha256_hex(line),
                link.entry_sha256
            ),
        }
        .into());
    }
    let entry: AuditEntry = serde_json::from_slice(line).map_err(|e| ChainBreak {
        seq,
        problem: format!("not an audit entry: {e}"),
    })?;
    if audit::scope(&entry) != link.scope {
        return Err(ChainBreak {
            seq,
            problem: "the entry's job or federation is not its link's".into(),
        }
        .into());
    }
    Ok(entry)
}

/// A file's bytes, at most `limit` of them; a symbolic link or a larger file is refused.
fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, BundleError> {
    use std::io::Read;
    let err = |source| BundleError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    if !meta.is_file() || meta.len() > limit {
        return Err(BundleError::File {
            file: path.display().to_string(),
            problem: format!("not a regular file of at most {limit} bytes"),
        });
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(bytes)
}

/// The file names of `dir/sub`, sorted.
fn read_dir(dir: &Path, sub: &str) -> Result<Vec<String>, BundleError> {
    let path = dir.join(sub);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })? {
        let entry = entry.map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, signed_for_tests};
    use treaty_proto::v1::Job;

    const TEXT: &str = "version = 3\n";

    fn entry(action: &str, job: &str) -> AuditEntry {
        AuditEntry {
            time_unix_ms: 1,
            actor: "treaty://operator/ops".into(),
            action: action.into(),
            federation: "f".into(),
            job: job.into(),
            ..Default::default()
        }
    }

    /// A store whose log holds a federation, two jobs' entries interleaved and a decision of
    /// job-1 citing a text, vouched for by its round's entry; job-1's bundle written into `out`.
    fn exported(store: &Store, out: &Path) -> Bundle {
        let sha = sha256_hex(TEXT.as_bytes());
        let decision = format!("{{\"policies\":[\"{sha}\"]}}");
        store.audit(&entry("federation.created", "")).unwrap();
        store.audit(&entry("job.created", "job-1")).unwrap();
        store.audit(&entry("job.created", "job-2")).unwrap();
        store.archive_policy(&sha, TEXT).unwrap();
        store.put_decision("job-1", 1, &decision).unwrap();
        store
            .archive_policy(&sha256_hex(decision.as_bytes()), &decision)
            .unwrap();
        store
            .audit(&AuditEntry {
                round: 1,
                documents: vec![sha256_hex(decision.as_bytes()), sha.clone()],
                ..entry("round.decided", "job-1")
            })
            .unwrap();
        store.audit(&entry("round.completed", "job-2")).unwrap();
        let job = Job {
            job_id: "job-1".into(),
            federation: "f".into(),
            ..Default::default()
        };
        let parts = crate::audit::export_parts(store, &job, "treaty://operator/ops").unwrap();
        let bundle = Bundle::from_parts(parts).unwrap();
        bundle.write(out).unwrap();
        bundle
    }

    /// The test PKI's CA (DER) and its PEM file.
    fn ca_of(pki: &Path) -> (Vec<u8>, PathBuf) {
        let file = treaty_proto::pki::PkiDir::new(pki.join("pki")).ca_cert();
        let der = treaty_proto::tls::certificate_der(&std::fs::read(&file).unwrap()).unwrap();
        (der, file)
    }

    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    fn edit(path: &Path, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, f(text)).unwrap();
    }

    /// A store, a PKI and job-1's bundle.
    struct Setup {
        store: Store,
        _db: tempfile::TempDir,
        pki: tempfile::TempDir,
        out: tempfile::TempDir,
        good: PathBuf,
        ca: Vec<u8>,
    }

    fn setup() -> Setup {
        let (db, pki, out) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store = signed_for_tests(db.path(), pki.path());
        let good = out.path().join("bundle");
        exported(&store, &good);
        let (ca, _) = ca_of(pki.path());
        Setup {
            store,
            _db: db,
            pki,
            out,
            good,
            ca,
        }
    }

    impl Setup {
        /// The bundle's one decision file, `decisions/SHA256.json`.
        fn decision(&self) -> String {
            format!(
                "decisions/{}",
                read_dir(&self.good, "decisions").unwrap()[0]
            )
        }

        /// The first problem `verify` finds in a copy of the bundle changed by `change`.
        fn broken(&self, change: impl FnOnce(&Path)) -> String {
            let dir = tempfile::tempdir().unwrap();
            copy(&self.good, dir.path());
            change(dir.path());
            verify(dir.path(), &self.ca, None).unwrap_err().to_string()
        }
    }

    #[test]
    fn a_bundle_verifies_and_each_kind_of_tampering_is_named() {
        let s = setup();
        let v = verify(&s.good, &s.ca, None).unwrap();
        assert_eq!((v.job_id.as_str(), v.links), ("job-1", 6));
        // The federation's creation, job-1's two entries and its export; not job-2's.
        let mut files = read_dir(&s.good, "entries").unwrap();
        files.sort();
        assert_eq!(files, ["1.json", "2.json", "4.json", "6.json"]);
        assert_eq!((v.entries, v.decisions, v.texts), (4, 1, 1));
        assert!(v.signed_by.contains("coordinator/hub"), "{}", v.signed_by);

        // One byte of an entry.
        let err = s.broken(|d| {
            edit(&d.join("entries/4.json"), |t| {
                t.replace("round.decided", "round.decidex")
            })
        });
        assert!(
            err.starts_with("audit entry 4: the entry was altered"),
            "{err}"
        );
        // A link removed from the middle.
        let err = s.broken(|d| {
            edit(&d.join("links.jsonl"), |t| {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.remove(2);
                lines.join("\n") + "\n"
            })
        });
        assert!(err.starts_with("audit entry 3:"), "{err}");
        // Two links swapped.
        let err = s.broken(|d| {
            edit(&d.join("links.jsonl"), |t| {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.swap(1, 2);
                lines.join("\n") + "\n"
            })
        });
        assert!(err.starts_with("audit entry 2:"), "{err}");
        // The last link removed: the chain is whole but shorter than the signed head.
        let err = s.broken(|d| {
            edit(&d.join("links.jsonl"), |t| {
                let lines: Vec<&str> = t.lines().collect();
                lines[..lines.len() - 1].join("\n") + "\n"
            })
        });
        assert!(err.contains("links were added or removed"), "{err}");
        // An entry of the job left out.
        let err = s.broken(|d| std::fs::remove_file(d.join("entries/2.json")).unwrap());
        assert!(
            err.contains("audit entry 2: an entry of `job-1` that the bundle leaves out"),
            "{err}"
        );
        // The bundle relabelled as another job's.
        let err = s.broken(|d| edit(&d.join("bundle.json"), |t| t.replace("job-1", "job-2")));
        assert!(
            err.contains("not of this bundle's") || err.contains("leaves out"),
            "{err}"
        );
        // Another exporter named than the log records.
        let err = s.broken(|d| {
            edit(&d.join("bundle.json"), |t| {
                t.replace("treaty://operator/ops", "treaty://operator/eve")
            })
        });
        assert!(err.contains("the log's last export of the job is"), "{err}");
        // A decision changed, a cited text changed, a cited text removed.
        let decision = s.decision();
        let err = s.broken(|d| edit(&d.join(&decision), |t| t.replace("policies", "policiez")));
        assert!(err.contains("the decision was altered"), "{err}");
        let err = s.broken(|d| std::fs::remove_file(d.join(&decision)).unwrap());
        assert!(
            err.contains("audit entry 4: the decision it vouches for"),
            "{err}"
        );
        let sha = sha256_hex(TEXT.as_bytes());
        let err = s.broken(|d| edit(&d.join(format!("texts/{sha}.txt")), |t| t.replace('3', "4")));
        assert!(err.contains("not to its name"), "{err}");
        let err = s.broken(|d| std::fs::remove_file(d.join(format!("texts/{sha}.txt"))).unwrap());
        assert!(err.contains("cited by a decision but missing"), "{err}");
        // A statement changed under its signature, even by a trailing newline.
        let err = s.broken(|d| {
            edit(&d.join("head.statement"), |t| {
                t.replace("time_unix_ms 1", "time_unix_ms 2")
            })
        });
        assert!(err.contains("signature"), "{err}");
        let err = s.broken(|d| edit(&d.join("head.statement"), |t| t + "\n"));
        assert!(err.contains("not a signed head's text"), "{err}");
        // A second certificate slipped into ca.crt.
        let err = s.broken(|d| {
            let ca = std::fs::read_to_string(d.join("ca.crt")).unwrap();
            let other = std::fs::read_to_string(d.join("coordinator.crt")).unwrap();
            std::fs::write(d.join("ca.crt"), ca + &other).unwrap();
        });
        assert!(err.contains("more than one certificate"), "{err}");

        // Another head swapped in: the same log, exported again after one more entry; the
        // earlier bundle is the beginning of the later one, and not the other way round.
        s.store.audit(&entry("job.cancelled", "job-1")).unwrap();
        let later = s.out.path().join("later");
        let job = Job {
            job_id: "job-1".into(),
            federation: "f".into(),
            ..Default::default()
        };
        let parts = crate::audit::export_parts(&s.store, &job, "ops").unwrap();
        Bundle::from_parts(parts).unwrap().write(&later).unwrap();
        verify(&later, &s.ca, Some(&s.good)).unwrap();
        assert!(verify(&s.good, &s.ca, Some(&later)).is_err());
        let err = s.broken(|d| {
            for name in ["head.statement", "head.sig"] {
                std::fs::copy(later.join(name), d.join(name)).unwrap();
            }
        });
        assert!(err.contains("links were added or removed"), "{err}");
    }

    #[test]
    fn a_rounds_results_record_travels_with_the_bundle_and_cannot_be_changed_or_dropped() {
        let (db, pki, out) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store = signed_for_tests(db.path(), pki.path());
        let job = Job {
            job_id: "job-1".into(),
            federation: "f".into(),
            ..Default::default()
        };
        // A round's results record, vouched for by its completion; the job's bundle in `dir`.
        let completed = |round: u32, record: &str, dir: &Path| {
            let sha = sha256_hex(record.as_bytes());
            store.archive_policy(&sha, record).unwrap();
            store
                .audit(&AuditEntry {
                    round,
                    results: sha.clone(),
                    ..entry("round.completed", "job-1")
                })
                .unwrap();
            let parts = crate::audit::export_parts(&store, &job, "ops").unwrap();
            Bundle::from_parts(parts).unwrap().write(dir).unwrap();
            sha
        };
        store.audit(&entry("job.created", "job-1")).unwrap();
        let record = r#"{"job":"job-1","round":1,"results":[{"agency":"treaty://agency/DE/DE-BKA","passed":true,"result_sha256":"ab","task_id":"job-1-r1-DE-BKA"}]}"#;
        let good = out.path().join("bundle");
        let sha = completed(1, record, &good);
        let (ca, _) = ca_of(pki.path());
        let v = verify(&good, &ca, None).unwrap();
        assert_eq!(v.results.len(), 1);
        assert_eq!(v.results[&sha]["results"][0]["task_id"], "job-1-r1-DE-BKA");
        let broken = |change: &dyn Fn(&Path)| {
            let dir = tempfile::tempdir().unwrap();
            copy(&good, dir.path());
            change(dir.path());
            verify(dir.path(), &ca, None).unwrap_err().to_string()
        };
        let file = format!("results/{sha}.json");
        let err = broken(&|d| edit(&d.join(&file), |t| t.replace("\"ab\"", "\"cd\"")));
        assert!(err.contains("the record was altered"), "{err}");
        let err = broken(&|d| std::fs::remove_file(d.join(&file)).unwrap());
        assert!(
            err.contains("audit entry 2: the results record it vouches for"),
            "{err}"
        );
        // A record whose agency's signature is not one: named, with its task.
        let forged = r#"{"job":"job-1","round":3,"results":[{"agency":"treaty://agency/DE/DE-BKA","task_id":"job-1-r3-DE-BKA","result_sha256":"ab","passed":true,"sent":{"statement":"{}","signature":"00","scheme":"ECDSA_NISTP256_SHA256","certificate":"none"}}]}"#;
        let later = out.path().join("later");
        let forged_sha = completed(3, forged, &later);
        let err = verify(&later, &ca, None).unwrap_err().to_string();
        assert!(
            err.contains(&format!("results/{forged_sha}.json"))
                && err.contains("task `job-1-r3-DE-BKA`"),
            "{err}"
        );
        let err = broken(&|d| {
            let other = r#"{"job":"job-1","round":2,"results":[]}"#;
            let name = format!("results/{}.json", sha256_hex(other.as_bytes()));
            std::fs::write(d.join(name), other).unwrap();
        });
        assert!(
            err.contains("no entry of the bundle vouches for it"),
            "{err}"
        );
    }

    /// A bundle made under another PKI — its own CA, a coordinator certificate of it, every
    /// signature right — is refused against the CA the reader trusts; so is a bundle signed
    /// with an agency's certificate of the right CA.
    #[test]
    fn only_a_coordinator_of_the_trusted_ca_can_sign_a_bundle() {
        let s = setup();
        let (db, pki, out) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let forger = signed_for_tests(db.path(), pki.path());
        let forged = out.path().join("forged");
        exported(&forger, &forged);
        let (forger_ca, _) = ca_of(pki.path());
        verify(&forged, &forger_ca, None).unwrap();
        let err = verify(&forged, &s.ca, None).unwrap_err().to_string();
        assert!(err.contains("not the federation CA you trust"), "{err}");

        let agency = treaty_proto::Identity::agency("DE", "DE-BKA").unwrap();
        let pki_dir = treaty_proto::pki::PkiDir::new(s.pki.path().join("pki"));
        let (cert, _) = pki_dir.cert_and_key(&agency);
        let der = treaty_proto::tls::certificate_der(&std::fs::read(&cert).unwrap()).unwrap();
        let err = treaty_proto::tls::verify_coordinator(&der, &s.ca).unwrap_err();
        assert!(err.contains("not a coordinator's"), "{err}");
    }

    /// A hostile coordinator's text named to escape the bundle's directory is refused before
    /// anything is written.
    #[test]
    fn a_text_named_like_a_path_is_refused() {
        use treaty_proto::v1::CitedText;
        let part = |p| AuditPart { part: Some(p) };
        let err = Bundle::from_parts([
            part(audit_part::Part::Info(AuditExportInfo::default())),
            part(audit_part::Part::Text(CitedText {
                sha256: "../../../tmp/owned".into(),
                text: "x".into(),
            })),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("not a SHA-256"), "{err}");
    }

    /// docs/verify-audit-bundle.sh checks a bundle with bash, sha256sum and openssl only, as
    /// docs/AUDIT.md describes the format: the bundle verifies against the trusted CA, and
    /// each kind of tampering does not.
    #[test]
    fn a_bundle_verifies_with_sha256sum_and_openssl_alone() {
        let s = setup();
        let (_, ca_file) = ca_of(s.pki.path());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/verify-audit-bundle.sh");
        let run = |dir: &Path, ca: &Path| {
            std::process::Command::new("bash")
                .arg(&script)
                .arg(dir)
                .arg(ca)
                .output()
                .expect(
                    "bash runs (and sha256sum and openssl are installed: .ci/run installs them)",
                )
        };
        let ok = run(&s.good, &ca_file);
        assert!(
            ok.status.success(),
            "{}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(String::from_utf8_lossy(&ok.stdout).contains("verified: job job-1, 6 links"));
        let sha = sha256_hex(TEXT.as_bytes());
        let (decision, decision2) = (s.decision(), s.decision());
        type Change = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "an entry",
                Box::new(|d| {
                    edit(&d.join("entries/2.json"), |t| {
                        t.replace("job.created", "job.createx")
                    })
                }),
            ),
            (
                "a link",
                Box::new(|d| {
                    edit(&d.join("links.jsonl"), |t| {
                        t.replacen("{\"seq\":3", "{\"seq\":4", 1)
                    })
                }),
            ),
            (
                "the head",
                Box::new(|d| edit(&d.join("head.statement"), |t| t.replace("seq 6", "seq 5"))),
            ),
            (
                "a left-out entry",
                Box::new(|d| std::fs::remove_file(d.join("entries/2.json")).unwrap()),
            ),
            (
                "a decision",
                Box::new(move |d| edit(&d.join(&decision), |t| t.replace("policies", "policiez"))),
            ),
            (
                "a left-out decision",
                Box::new(move |d| std::fs::remove_file(d.join(&decision2)).unwrap()),
            ),
            (
                "a text",
                Box::new(move |d| {
                    std::fs::remove_file(d.join(format!("texts/{sha}.txt"))).unwrap()
                }),
            ),
            (
                "another exporter",
                Box::new(|d| {
                    edit(&d.join("bundle.json"), |t| {
                        t.replace("treaty://operator/ops", "treaty://operator/eve")
                    })
                }),
            ),
            (
                "a second CA",
                Box::new(|d| {
                    let ca = std::fs::read_to_string(d.join("ca.crt")).unwrap();
                    let other = std::fs::read_to_string(d.join("coordinator.crt")).unwrap();
                    std::fs::write(d.join("ca.crt"), other + &ca).unwrap();
                }),
            ),
        ];
        for (what, change) in cases {
            let dir = tempfile::tempdir().unwrap();
            copy(&s.good, dir.path());
            change(dir.path());
            let bad = run(dir.path(), &ca_file);
            assert_eq!(
                bad.status.code(),
                Some(1),
                "{what}: {}",
                String::from_utf8_lossy(&bad.stdout)
            );
            assert!(
                String::from_utf8_lossy(&bad.stderr).contains("not verified"),
                "{what}: {}",
                String::from_utf8_lossy(&bad.stderr)
            );
        }
        // Against another CA than the one the bundle was signed under.
        let other = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        signed_for_tests(db.path(), other.path());
        let (_, other_ca) = ca_of(other.path());
        let bad = run(&s.good, &other_ca);
        assert_eq!(bad.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("not the federation CA you trust"));
    }
}
