//! The node's control socket: how its own operator's commands reach the running node
//! (`treaty node pending|approve|reject|evidence`). A Unix socket, `control/control.sock` in the
//! node's state directory (the directory mode 0750, the socket 0660): the node's own account
//! and the members of its group may use it, nobody else; the kernel tells the node which
//! account connected, which goes into the evidence log with every decision (and the node's
//! `approval.approvers` may name the only accounts that decide). Nothing outside the machine
//! reaches it.
//!
//! One request per connection: a line of JSON ([`Request`]), answered by a line of JSON
//! ([`Answer`]). A request is at most [`MAX_REQUEST_BYTES`].

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::approval::{Approvals, Decision, Pending};
use crate::ledger::ApprovalRecord;

/// The socket's path in the state directory: in a directory of its own (mode 0750), so that
/// it is never reachable by others, even before its own mode is set.
pub const SOCKET: &str = "control/control.sock";

/// The largest request the node reads.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// The longest name (`--by`) and note a decision keeps, in characters.
const MAX_NAME_CHARS: usize = 200;
const MAX_NOTE_CHARS: usize = 2000;

/// What an operator asks the running node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The jobs waiting for approval.
    Pending,
    /// Approve a pending job under the terms of SHA-256 `terms` (12 hex digits at least), the
    /// ones the person read.
    Approve {
        job: String,
        terms: String,
        by: String,
        note: String,
    },
    /// Reject a pending or approved job (final).
    Reject {
        job: String,
        by: String,
        note: String,
    },
    /// The evidence log: every stored link, oldest first.
    Evidence,
}

/// The node's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// Why the request was not carried out; empty when it was.
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub pending: Vec<Pending>,
    /// The decision as the evidence log recorded it.
    #[serde(default)]
    pub recorded: Option<ApprovalRecord>,
    /// The evidence log's stored links, oldest first.
    #[serde(default)]
    pub evidence: Vec<String>,
}

/// Why an operator's command did not reach the node, or was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot reach the node through `{}` ({source}); is the node running with this configuration's state directory, and may this account open its control socket?",
        path.display()
    )]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node's answer through `{}` cannot be read: {message}", path.display())]
    Garbled { path: PathBuf, message: String },
    #[error("the node did not do it: {0}")]
    Refused(String),
}

/// Asks the node running on `state_dir`.
pub fn ask(state_dir: &Path, request: &Request) -> Result<Answer, ControlError> {
    let path = state_dir.join(SOCKET);
    let unreachable = |source| ControlError::Unreachable {
        path: path.clone(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(request).map_err(|e| ControlError::Garbled {
        path: path.clone(),
        message: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut answer = String::new();
    // An evidence log is the largest answer: far below this.
    BufReader::new(stream.take(1 << 30))
        .read_line(&mut answer)
        .map_err(unreachable)?;
    let answer: Answer = serde_json::from_str(&answer).map_err(|e| ControlError::Garbled {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if !answer.error.is_empty() {
        return Err(ControlError::Refused(answer.error));
    }
    Ok(answer)
}

/// Listens on the state directory's control socket until `shutdown`. A socket file left by a
/// node that stopped is replaced (the ledger's database lock keeps a second node off the same
/// state directory).
pub(crate) fn listen(state_dir: &Path) -> std::io::Result<(UnixListener, PathBuf)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let path = state_dir.join(SOCKET);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    Ok((listener, path))
}

/// Answers requests on `listener` until `shutdown`, then removes the socket file.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    approvals: Arc<Approvals>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let approvals = approvals.clone();
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, approvals).await {
                        tracing::warn!(%error, "control request failed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "control socket: cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn answer(stream: UnixStream, approvals: Arc<Approvals>) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES + 1));
    tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in 10 s"))??;
    let reply = match serde_json::from_slice::<Request>(&line) {
        _ if line.len() as u64 > MAX_REQUEST_BYTES => Answer {
            error: format!("a request is at most {MAX_REQUEST_BYTES} bytes"),
            ..Answer::default()
        },
        Err(e) => Answer {
            error: format!("the request is not understood: {e}"),
            ..Answer::default()
        },
        // A decision is written to the evidence log (a flush): off the runtime.
        Ok(request) => tokio::task::spawn_blocking(move || {
            let account = account_name(uid);
            carry_out(&approvals, request, (&account, uid))
        })
        .await
        .unwrap_or_else(|e| Answer {
            error: format!("the node failed to carry out the request: {e}"),
            ..Answer::default()
        }),
    };
    let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

fn carry_out(approvals: &Approvals, request: Request, account: (&str, u32)) -> Answer {
    let now = crate::session::now_ms();
    let (job, terms, by, note, decision) = match request {
        Request::Pending => {
            return Answer {
                pending: approvals.pending(),
                ..Answer::default()
            };
        }
        Request::Evidence => {
            return match approvals.evidence().stored() {
                Ok(lines) => Answer {
                    evidence: lines
                        .into_iter()
                        .map(|l| String::from_utf8_lossy(&l).into_owned())
                        .collect(),
                    ..Answer::default()
                },
                Err(e) => Answer {
                    error: e.to_string(),
                    ..Answer::default()
                },
            };
        }
        Request::Approve {
            job,
            terms,
            by,
            note,
        } => (job, terms, by, note, Decision::Approve),
        Request::Reject { job, by, note } => (job, String::new(), by, note, Decision::Reject),
    };
    if by.chars().count() > MAX_NAME_CHARS || note.chars().count() > MAX_NOTE_CHARS {
        return Answer {
            error: format!(
                "a name is at most {MAX_NAME_CHARS} characters and a note at most {MAX_NOTE_CHARS}"
            ),
            ..Answer::default()
        };
    }
    match approvals.decide(&job, decision, &terms, &by, &note, account, now) {
        Ok(record) => {
            tracing::info!(
                job = record.job_id,
                decision = record.decision,
                by = record.by,
                account = record.account,
                "job {} by the agency's operator",
                record.decision
            );
            Answer {
                recorded: Some(record),
                ..Answer::default()
            }
        }
        Err(error) => Answer {
            error,
            ..Answer::default()
        },
    }
}

/// The account name of `uid`, as the system's user database gives it; `uid N` when it has none.
fn account_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}
