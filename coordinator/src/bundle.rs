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
//!   decisions/round-R.json each round's policy decision, as recorded
//!   texts/SHA256.txt       each policy and registry text a decision cites
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use treaty_policies::sha256_hex;
use treaty_proto::v1::{AuditExportInfo, AuditPart, AuditSignedHead, audit_part};

use crate::audit::{self, ChainBreak, Head};
use crate::store::AuditEntry;

/// The most bytes an export may hold in all (links, entries, texts): far above any real log,
/// so that a coordinator cannot make its operator's client hold without end.
pub const MAX_BUNDLE_BYTES: usize = 1 << 30;

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
    /// Decisions by round.
    pub decisions: BTreeMap<u32, String>,
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
                    bytes += run.lines.iter().map(|l| l.len()).sum::<usize>();
                    bundle.links.extend(run.lines.iter().map(|l| l.to_vec()));
                }
                audit_part::Part::Entry(e) => {
                    bytes += e.line.len();
                    if bundle.entries.insert(e.seq, e.line.to_vec()).is_some() {
                        return Err(malformed("an entry sent twice"));
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
                    bundle.decisions.insert(d.round, d.json);
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
        for sub in ["entries", "decisions", "texts"] {
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
        for (round, json) in &self.decisions {
            write(format!("decisions/round-{round}.json"), json.as_bytes())?;
        }
        for (sha256, text) in &self.texts {
            write(format!("texts/{sha256}.txt"), text.as_bytes())?;
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
    /// The job's entries, by number.
    pub entries: usize,
    pub decisions: usize,
    pub texts: usize,
    /// The SHA-256 of the federation CA's certificate (DER), to compare with the one the
    /// reader trusts.
    pub ca_sha256: String,
    /// The signing certificate's subject.
    pub signed_by: String,
}

/// Checks a bundle written by [`Bundle::write`]: the links chain from the first to the last,
/// each entry file hashes to its link, the signed head states the last link's hash and its
/// signature is the coordinator certificate's (issued by the bundle's CA), each cited text
/// hashes to its name. The first thing that is not so is the error.
pub fn verify(dir: &Path) -> Result<Verified, BundleError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| BundleError::Read { path, source })
    };
    let file = |name: &str, problem: String| BundleError::File {
        file: name.to_owned(),
        problem,
    };
    let manifest: Manifest = serde_json::from_slice(&read("bundle.json")?)
        .map_err(|e| file("bundle.json", e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(file(
            "bundle.json",
            format!("format `{}`, not `{FORMAT}`", manifest.format),
        ));
    }
    // The links.
    let links = read("links.jsonl")?;
    let Some(body) = links.strip_suffix(b"\n") else {
        return Err(file("links.jsonl", "empty, or its last line is cut".into()));
    };
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let head = audit::verify((1u64..).zip(lines.iter().copied()))?;
    // The entries.
    let mut entries = 0;
    for entry in std::fs::read_dir(dir.join("entries")).map_err(|source| BundleError::Read {
        path: dir.join("entries"),
        source,
    })? {
        let entry = entry.map_err(|source| BundleError::Read {
            path: dir.join("entries"),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let seq: u64 = name
            .strip_suffix(".json")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| file(&format!("entries/{name}"), "not named N.json".into()))?;
        let line = read(&format!("entries/{name}"))?;
        let link = usize::try_from(seq)
            .ok()
            .and_then(|s| s.checked_sub(1))
            .and_then(|i| lines.get(i))
            .ok_or_else(|| ChainBreak {
                seq,
                problem: format!("the entry has no link: the links end at {}", head.seq),
            })?;
        let link: audit::Link = serde_json::from_slice(link).map_err(|e| ChainBreak {
            seq,
            problem: e.to_string(),
        })?;
        if sha256_hex(&line) != link.entry_sha256 {
            return Err(ChainBreak {
                seq,
                problem: format!(
                    "the entry was altered: `entries/{name}` hashes to {}, but its link says {}",
                    sha256_hex(&line),
                    link.entry_sha256
                ),
            }
            .into());
        }
        serde_json::from_slice::<AuditEntry>(&line).map_err(|e| ChainBreak {
            seq,
            problem: format!("not an audit entry: {e}"),
        })?;
        entries += 1;
    }
    // The signed head.
    let statement = String::from_utf8(read("head.statement")?)
        .map_err(|_| BundleError::Head("`head.statement` is not text".into()))?;
    let signed = Head::of_statement(&statement)
        .ok_or_else(|| BundleError::Head("`head.statement` states no head".into()))?;
    if signed != head {
        return Err(BundleError::Head(format!(
            "the coordinator signed entry {} with link hash {}, but the links end at entry {} with {}: links were added or removed",
            signed.seq, signed.sha256, head.seq, head.sha256
        )));
    }
    let head_file: HeadFile = serde_json::from_slice(&read("head.json")?)
        .map_err(|e| file("head.json", e.to_string()))?;
    let certificate = treaty_proto::tls::certificate_der(&read("coordinator.crt")?)
        .map_err(|problem| file("coordinator.crt", problem))?;
    if sha256_hex(&certificate) != head_file.certificate_sha256 {
        return Err(BundleError::Head(
            "`coordinator.crt` is not the certificate that signed the head".into(),
        ));
    }
    treaty_proto::tls::verify_signature(
        &certificate,
        &head_file.scheme,
        statement.as_bytes(),
        &read("head.sig")?,
    )
    .map_err(BundleError::Head)?;
    let ca = treaty_proto::tls::certificate_der(&read("ca.crt")?)
        .map_err(|problem| file("ca.crt", problem))?;
    treaty_proto::tls::verify_issued_by(&certificate, &ca).map_err(BundleError::Head)?;
    let signed_by = treaty_proto::tls::subject_of(&certificate).map_err(BundleError::Head)?;
    // The cited texts.
    let mut texts = 0;
    for text in read_dir(dir, "texts")? {
        let bytes = read(&format!("texts/{text}"))?;
        let named = text.strip_suffix(".txt").unwrap_or(&text);
        if sha256_hex(&bytes) != named {
            return Err(file(
                &format!("texts/{text}"),
                format!("hashes to {}, not to its name", sha256_hex(&bytes)),
            ));
        }
        texts += 1;
    }
    let decisions = read_dir(dir, "decisions")?.len();
    Ok(Verified {
        job_id: manifest.job_id,
        federation: manifest.federation,
        links: head.seq,
        entries,
        decisions,
        texts,
        ca_sha256: sha256_hex(&ca),
        signed_by,
    })
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
    /// job-1 citing a text; job-1's bundle written into `out`.
    fn exported(store: &Store, out: &Path) -> Bundle {
        let sha = sha256_hex(TEXT.as_bytes());
        store.audit(&entry("federation.created", "")).unwrap();
        store.audit(&entry("job.created", "job-1")).unwrap();
        store.audit(&entry("job.created", "job-2")).unwrap();
        store.audit(&entry("round.decided", "job-1")).unwrap();
        store.archive_policy(&sha, TEXT).unwrap();
        store
            .put_decision("job-1", 1, &format!("{{\"policies\":[\"{sha}\"]}}"))
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

    /// The first problem `verify` finds in a copy of `good` changed by `change`.
    fn broken(good: &Path, change: impl FnOnce(&Path)) -> String {
        let dir = tempfile::tempdir().unwrap();
        copy(good, dir.path());
        change(dir.path());
        verify(dir.path()).unwrap_err().to_string()
    }

    fn edit(path: &Path, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, f(text)).unwrap();
    }

    #[test]
    fn a_bundle_verifies_and_each_kind_of_tampering_is_named() {
        let (db, pki, out) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store = signed_for_tests(db.path(), pki.path());
        let good = out.path().join("bundle");
        let bundle = exported(&store, &good);
        let v = verify(&good).unwrap();
        assert_eq!((v.job_id.as_str(), v.links), ("job-1", 5));
        // The federation's creation and job-1's two entries; not job-2's.
        assert_eq!(
            bundle.entries.keys().copied().collect::<Vec<_>>(),
            [1, 2, 4]
        );
        assert_eq!((v.entries, v.decisions, v.texts), (3, 1, 1));
        assert!(v.signed_by.contains("hub"), "{}", v.signed_by);

        // One byte of an entry.
        let err = broken(&good, |d| {
            edit(&d.join("entries/4.json"), |t| {
                t.replace("round.decided", "round.decidex")
            })
        });
        assert!(
            err.starts_with("audit entry 4: the entry was altered"),
            "{err}"
        );
        // A link removed from the middle.
        let err = broken(&good, |d| {
            edit(&d.join("links.jsonl"), |t| {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.remove(2);
                lines.join("\n") + "\n"
            })
        });
        assert!(err.starts_with("audit entry 3:"), "{err}");
        // Two links swapped.
        let err = broken(&good, |d| {
            edit(&d.join("links.jsonl"), |t| {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.swap(1, 2);
                lines.join("\n") + "\n"
            })
        });
        assert!(err.starts_with("audit entry 2:"), "{err}");
        // The last link removed: the chain is whole but shorter than the signed head.
        let err = broken(&good, |d| {
            edit(&d.join("links.jsonl"), |t| {
                let lines: Vec<&str> = t.lines().collect();
                lines[..lines.len() - 1].join("\n") + "\n"
            })
        });
        assert!(err.contains("links were added or removed"), "{err}");
        // A cited text changed.
        let sha = sha256_hex(TEXT.as_bytes());
        let err = broken(&good, |d| {
            edit(&d.join(format!("texts/{sha}.txt")), |t| t.replace('3', "4"))
        });
        assert!(
            err.contains("does not hash") || err.contains("not to its name"),
            "{err}"
        );

        // Another head swapped in: the same log, exported again after one more entry.
        store.audit(&entry("job.cancelled", "job-1")).unwrap();
        let later = out.path().join("later");
        exported(&store, &later);
        let err = broken(&good, |d| {
            for name in ["head.statement", "head.sig"] {
                std::fs::copy(later.join(name), d.join(name)).unwrap();
            }
        });
        assert!(err.contains("links were added or removed"), "{err}");
        // A statement changed under its signature.
        let err = broken(&good, |d| {
            edit(&d.join("head.statement"), |t| {
                t.replace("time_unix_ms 1", "time_unix_ms 2")
            })
        });
        assert!(err.contains("signature"), "{err}");
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
    /// docs/AUDIT.md describes the format: the bundle verifies, and a changed entry does not.
    #[test]
    fn a_bundle_verifies_with_sha256sum_and_openssl_alone() {
        let (db, pki, out) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store = signed_for_tests(db.path(), pki.path());
        let good = out.path().join("bundle");
        exported(&store, &good);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/verify-audit-bundle.sh");
        let run = |dir: &Path| {
            std::process::Command::new("bash")
                .arg(&script)
                .arg(dir)
                .output()
                .expect(
                    "bash runs (and sha256sum and openssl are installed: .ci/run installs them)",
                )
        };
        let ok = run(&good);
        assert!(
            ok.status.success(),
            "{}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(String::from_utf8_lossy(&ok.stdout).contains("verified: 5 links"));
        for (file, from, to) in [
            ("entries/2.json", "job.created", "job.createx"),
            ("links.jsonl", "{\"seq\":3", "{\"seq\":4"),
            ("head.statement", "seq 5", "seq 4"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            copy(&good, dir.path());
            edit(&dir.path().join(file), |t| t.replacen(from, to, 1));
            let bad = run(dir.path());
            assert_eq!(bad.status.code(), Some(1), "{file}");
            assert!(
                String::from_utf8_lossy(&bad.stderr).contains("not verified"),
                "{file}: {}",
                String::from_utf8_lossy(&bad.stderr)
            );
        }
    }
}
