//! The privacy ledger: every release of values computed from the agency's records, with its
//! mechanism's parameters.
//!
//! # The invariant
//!
//! **Every release that has left the node, or may still leave it, is counted in what the ledger
//! says the agency has spent; a ledger that cannot show that it still holds every entry it ever
//! recorded releases nothing.** It may over-count; it never under-counts.
//!
//! How it holds:
//!
//! - *Write-ahead.* A release is recorded durably before [`Ledger::record_if`] returns, so before
//!   its computation starts and before anything leaves: the entry is inserted into sled and
//!   flushed, then the anchor (below) is moved to it. A crash can leave an entry for a release
//!   that never left (the ledger over-counts), never the reverse. Entries are never removed.
//! - *A hash chain.* Entry `n` is stored under key `n` with the SHA-256 of entry `n - 1`'s stored
//!   bytes ([`chain`]). Altering, removing or reordering a stored entry breaks the chain.
//! - *An anchor.* The chain's length and last hash are kept outside sled, in `ledger.head` in the
//!   state directory, checksummed, in two slots written in turn in place, so that a torn write
//!   leaves the previous anchor whole ([`anchor`]). Cutting the end off sled's `db` file cannot
//!   remove both the entries and the anchor's record of them.
//! - *Verification.* Opening the ledger walks the whole chain and checks it against the
//!   anchor. A chain that ends where the anchor says is sound. A chain that passes through the
//!   anchor and goes on by entries that chain correctly is the window between sled's flush and
//!   the anchor's write (a crash, or a failed write of the anchor): those entries are counted
//!   and the anchor is moved on (an anchor whose move was interrupted, one slot torn, must be
//!   passed by at least one entry: the move started once that entry was on disk). Anything
//!   else — fewer entries than anchored, a different entry
//!   where the anchor points, a broken link, an unreadable entry or database, entries without an
//!   anchor, a corrupt anchor — is [`Damage`], and the ledger refuses every release with a
//!   message that says what is wrong. Every later record, report and reading checks that the
//!   anchor and the last stored entry are still where this process left them, and walks the
//!   whole chain again when not; what it accounts is the chain it verified and extended itself,
//!   so it never counts less than it recorded. (An entry altered in the middle of the file
//!   while the node runs is found when it next opens the ledger.)
//! - *Damage stays.* A node does not start on a damaged ledger ([`Ledger::open`] fails with the
//!   message). Damage found while it runs refuses that release and every later one, and every
//!   report says the spending is unknown (infinite), until the node is stopped and an operator
//!   restores the state directory from a backup that holds every release. `treaty node ledger`
//!   shows the damage and exits non-zero.
//!
//! This detects lost and corrupted history (truncated or garbled files, a lost `db` or anchor,
//! halves of two backups put together); it is no defence against someone who can write the
//! state directory on purpose, who could rewrite chain and anchor together. Ledgers written
//! before the chain existed have no anchor and are refused as damaged.
//!
//! What the agency has spent is computed from the whole history by the accountants of
//! `treaty-policies`, never kept as a running figure; their answer for a history is remembered
//! by the hash at its end (which vouches for every entry before it), so that the questions of
//! one round are not computed again. A release without a differential-privacy mechanism costs
//! an unbounded epsilon: a node that keeps a budget refuses it.
//!
//! The node's evidence log (`evidence`: tasks, decisions, receipts and approvals) is kept in
//! the same database, in a chain of its own. This module alone touches the node's database.

pub(crate) mod anchor;
pub(crate) mod chain;
mod copy;
#[cfg(test)]
mod damage_tests;
pub(crate) mod evidence;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use treaty_policies::privacy::{self, Release, Spent};
use treaty_proto::v1::PrivacyReport;

pub use chain::{Damage, Fault};
pub use copy::CopyError;
pub use evidence::{
    ApprovalRecord, Evidence, EvidenceError, EvidenceLink, ReceiptRecord, Record, TaskRecord,
    read_export,
};

use anchor::Anchor;
use chain::{Chain, Link, Standing};

/// What the coordinator is told of a damaged ledger, in refusals and reports: the same words
/// whatever the damage, so that nothing about the agency's ledger leaves the node.
pub const DAMAGED: &str =
    "the node's privacy ledger is damaged; it releases nothing until its operator restores it";

/// One release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub time_unix_ms: i64,
    pub task_id: String,
    pub job_id: String,
    pub federation: String,
    pub round: u32,
    /// `training`, `statistics` or `query`.
    pub kind: String,
    /// The coordinator it goes to.
    pub recipient: String,
    /// The mechanisms and their parameters; `None` for values that would leave without
    /// differential privacy (never recorded: the node refuses them).
    pub releases: Option<Vec<Release>>,
    /// The guarantee the release had beyond its mechanisms: under secure aggregation it left
    /// masked, in a sum the coordinator alone learns. Absent (entries before it existed, and
    /// releases without it): it left on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<SecureAggregation>,
}

/// A release under secure aggregation, as the ledger records it (docs/SECURE_AGGREGATION.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregation {
    /// The round's agencies and its threshold: the update stays hidden from the coordinator
    /// unless `2 * threshold - agencies` agencies collude with it.
    pub agencies: u32,
    pub threshold: u32,
    /// `local`: the release carries the full noise its mechanisms state, whatever the other
    /// agencies do (its DP guarantee does not rest on theirs). `distributed`: the agency added
    /// its share of the noise, and the release's mechanisms are those of the round's sum, on
    /// the assumption that at most `assumed_dishonest` agencies are dishonest, so that the sum
    /// carries the noise of at least `honest` agencies.
    pub noise: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_dishonest: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honest: Option<u32>,
}

/// The agency's budget.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The most epsilon the agency spends, over every job, ever.
    pub max_epsilon: f64,
    /// The delta at which epsilon is counted.
    pub delta: f64,
}

/// The delta at which a node without a budget reports what it spent.
pub const DEFAULT_DELTA: f64 = 1e-5;

/// Why the ledger cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Damaged(#[from] Damage),
    #[error("the privacy ledger at `{}` cannot be written: {message}", dir.display())]
    Write { dir: PathBuf, message: String },
    #[error("the privacy ledger's releases cannot be accounted: {0}")]
    Accounting(String),
    /// The node holding the ledger's database keeps no usable copy of it for its operator.
    #[error(
        "the node running on `{}` {error}; stop the node to read its ledger itself",
        dir.display()
    )]
    Copy { dir: PathBuf, error: CopyError },
}

/// Where [`read`] found the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Its database: no node was running on it.
    Database,
    /// The copy the node running on it keeps, checked against the ledger's anchor.
    RunningNode,
}

/// The ledger as [`read`] shows it.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Every entry, oldest first.
    pub entries: Vec<Entry>,
    /// What the agency has spent.
    pub spent: Spent,
    pub source: Source,
}

/// Reads the ledger in `dir` for its operator, whether or not its node is running: from its
/// database when no node holds it (verified as the node verifies it, see [`Ledger::open`]),
/// otherwise from the copy the running node keeps beside it, whose chain is checked against
/// the ledger's anchor. Nothing is released or recorded.
pub fn read(dir: &Path, budget: Option<Budget>) -> Result<Reading, LedgerError> {
    let delta = budget.map(|b| b.delta).unwrap_or(DEFAULT_DELTA);
    if copy::in_use(dir) {
        let chain = copy::read(dir).map_err(|error| LedgerError::Copy {
            dir: dir.to_owned(),
            error,
        })?;
        let spent = cost(&chain.entries, None, delta)?;
        return Ok(Reading {
            entries: chain.entries,
            spent,
            source: Source::RunningNode,
        });
    }
    let ledger = Ledger::open(dir, budget)?;
    let entries = ledger.entries()?;
    let spent = cost(&entries, None, delta)?;
    Ok(Reading {
        entries,
        spent,
        source: Source::Database,
    })
}

/// Opens the database in `dir` once a handle dropped just before has let go of its lock
/// (sled's flusher thread, where it runs, releases it a moment after the drop): for tests that
/// reopen one.
#[cfg(test)]
pub(crate) fn reopen_for_tests(dir: &Path) -> Database {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Database::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// What `entries` plus `more` cost at `delta`.
fn cost(
    entries: &[Entry],
    more: Option<Option<Vec<Release>>>,
    delta: f64,
) -> Result<Spent, LedgerError> {
    let histories = entries.iter().map(|e| e.releases.as_deref());
    let all: Option<Vec<&[Release]>> = histories
        .chain(more.as_ref().map(Option::as_deref))
        .collect();
    let Some(all) = all else {
        return Ok(Spent {
            epsilon: f64::INFINITY,
            delta,
            accountant: "none: a release without differential privacy".into(),
            bounds: Vec::new(),
        });
    };
    let releases: Vec<Release> = all.into_iter().flatten().copied().collect();
    privacy::spent(&releases, delta).map_err(|e| LedgerError::Accounting(e.to_string()))
}

/// Keeps `spent` as the answer for `key`, forgetting the oldest beyond [`REMEMBERED_COSTS`].
fn remember(costs: &mut Costs, key: CostKey, spent: Spent) {
    if costs.len() >= REMEMBERED_COSTS {
        costs.remove(0);
    }
    costs.push((key, spent));
}

/// A release recorded: what the agency has spent with it, and its entry's sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub spent: Spent,
    pub seq: u64,
}

/// Why a release was not recorded. `A` is the refusal of the caller's own admission check
/// ([`Ledger::record_if`]).
#[derive(Debug, thiserror::Error)]
pub enum LedgerRefusal<A = std::convert::Infallible> {
    #[error(
        "this release would bring the agency's epsilon to {after:.4} at delta {delta:e} ({accountant}), above its budget of {max}; it has spent {spent:.4}"
    )]
    BudgetExhausted {
        spent: f64,
        after: f64,
        max: f64,
        delta: f64,
        accountant: String,
    },
    #[error(
        "the task releases values without differential privacy, and this agency keeps a privacy budget; give the job a privacy spec"
    )]
    NotPrivate,
    #[error("the ledger cannot be written, so nothing is released: {0}")]
    Store(String),
    /// The ledger has lost or altered history: nothing is released until it is restored.
    #[error(transparent)]
    Damaged(Damage),
    /// The caller's own admission check (the agency's sharing policy) refused the release.
    #[error("{0}")]
    Admission(A),
}

impl<A> From<LedgerError> for LedgerRefusal<A> {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Damaged(damage) => LedgerRefusal::Damaged(damage),
            other => LedgerRefusal::Store(other.to_string()),
        }
    }
}

/// The ledger.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    db: Database,
    tree: sled::Tree,
    budget: Option<Budget>,
    /// Every use of the ledger holds this lock, so two tasks cannot both fit the last budget and
    /// one anchor is written at a time.
    state: Mutex<State>,
}

/// What the ledger knows between uses.
#[derive(Debug, Default)]
struct State {
    /// The damage found, which stays.
    damage: Option<Damage>,
    /// The chain as this process last verified it (whole) or extended it.
    chain: Option<Chain>,
    /// What the accountants said of the chain ending at an anchor, plus a release or none,
    /// the latest few ([`REMEMBERED_COSTS`]): a round asks the same questions several times
    /// (before and after its release, in its report), and the next round again. Keyed by the
    /// end's hash, which vouches for every entry before it, so an answer is the answer.
    costs: Costs,
}

/// A chain's end and the release added to it (`None`: nothing added).
type CostKey = (Anchor, Option<Option<Vec<Release>>>);
/// The accountants' answers a ledger remembers, latest last.
type Costs = Vec<(CostKey, Spent)>;
/// How many answers of the accountants a ledger remembers.
const REMEMBERED_COSTS: usize = 8;

/// sled 0.34's log, the one file its database writes (small values, as the ledger's and the
/// evidence log's are, live in it).
const SLED_LOG: &str = "db";

/// The node's sled database, holding the ledger and the evidence log, with its log file open to
/// be synced: what is written to it is durable once [`Database::flush`] returns. It runs no
/// periodic flusher (a thread per database, waking twice a second), which adds nothing to a
/// flush after every write but cost: a host of 1,000 agencies would run 1,000 of them.
#[derive(Debug, Clone)]
pub(crate) struct Database {
    db: sled::Db,
    log: Arc<File>,
}

impl Database {
    fn open(dir: &Path) -> Result<Self, String> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .map_err(|e| e.to_string())?;
        let log = File::open(dir.join(SLED_LOG)).map_err(|e| e.to_string())?;
        Ok(Database {
            db,
            log: Arc::new(log),
        })
    }

    /// Makes what was written durable: sled's flush writes its log with Linux's
    /// `sync_file_range`, which persists neither the file's size nor the disk's write cache,
    /// and the `fdatasync` of the log after it does.
    pub(crate) fn flush(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.log.sync_data()
    }
}

impl std::ops::Deref for Database {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        &self.db
    }
}

impl Ledger {
    /// Opens the ledger in `dir` and verifies it; a damaged ledger is an error (the node does
    /// not start on it).
    pub fn open(dir: &Path, budget: Option<Budget>) -> Result<Self, LedgerError> {
        let damage = |fault| Damage {
            dir: dir.to_owned(),
            fault,
        };
        let db = Database::open(dir).map_err(|e| damage(Fault::Unopenable(e)))?;
        let tree = db.open_tree("ledger").map_err(|e| {
            damage(Fault::Unreadable {
                after: 0,
                message: e.to_string(),
            })
        })?;
        let ledger = Ledger {
            dir: dir.to_owned(),
            db,
            tree,
            budget,
            state: Mutex::new(State::default()),
        };
        let entries = ledger.verified(&mut ledger.lock())?.entries.len();
        tracing::debug!(dir = %dir.display(), entries, "privacy ledger verified");
        ledger.keep_copy();
        Ok(ledger)
    }

    /// Rewrites the copy of the ledger its operator reads while the node runs (each release
    /// recorded after is appended to it). A copy that cannot be written costs nothing but the
    /// operator's view (`treaty node ledger` then says so): a warning, never a refusal.
    fn keep_copy(&self) {
        let written = self
            .tree
            .iter()
            .values()
            .collect::<Result<Vec<sled::IVec>, _>>()
            .map_err(std::io::Error::other)
            .and_then(|values| copy::write(&self.dir, values.iter().map(|v| v.as_ref())));
        if let Err(error) = written {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot write the copy of the privacy ledger its operator reads while the node runs");
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole chain, verified against the anchor (which is moved on over entries recorded
    /// after it); the damage found before, or now, otherwise. The chain this process verified
    /// last stands as long as the anchor and the last stored entry are still where it left them
    /// (a cut or rewritten end, a lost or replaced anchor: the whole chain is walked again);
    /// what it accounts is what it recorded, never less.
    fn verified<'s>(&self, state: &'s mut State) -> Result<&'s Chain, LedgerError> {
        if let Some(damage) = &state.damage {
            return Err(damage.clone().into());
        }
        let stands = state.chain.as_ref().is_some_and(|c| self.still_ends_at(c));
        if !stands {
            state.chain = None;
            let chain = self.walked(&mut state.damage)?;
            state.chain = Some(chain);
        }
        match &state.chain {
            Some(chain) => Ok(chain),
            None => Err(LedgerError::Accounting("no chain".into())),
        }
    }

    /// Whether the anchor and the last stored entry are still the end of `chain`.
    fn still_ends_at(&self, chain: &Chain) -> bool {
        let end = chain.end();
        if anchor::read(&self.dir).map(|f| f.map(|f| f.anchor)) != Ok(Some(end)) {
            return false;
        }
        match self.tree.last() {
            Ok(Some((k, v))) => *k == chain::key(end.count) && chain::sha256(&v) == end.head,
            Ok(None) => end.count == 0,
            Err(_) => false,
        }
    }

    /// The whole chain walked and checked against the anchor.
    fn walked(&self, damage_found: &mut Option<Damage>) -> Result<Chain, LedgerError> {
        match chain::verify(&self.dir, &self.tree) {
            Ok((chain, Standing::Anchored)) => Ok(chain),
            Ok((chain, Standing::Ahead { extra, to })) => {
                if extra > 0 {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        extra,
                        entries = to.count,
                        "the privacy ledger holds releases recorded after its anchor (a crash or a failed write came between); they are counted and the anchor moved on"
                    );
                }
                self.anchor(&to)?;
                if extra > 0 {
                    // The copy missed the releases the anchor missed.
                    self.keep_copy();
                }
                Ok(chain)
            }
            Err(damage) => {
                tracing::error!(dir = %self.dir.display(), error = %damage, "the privacy ledger is damaged");
                *damage_found = Some(damage.clone());
                Err(damage.into())
            }
        }
    }

    fn anchor(&self, to: &Anchor) -> Result<(), LedgerError> {
        anchor::write(&self.dir, to).map_err(|e| LedgerError::Write {
            dir: self.dir.clone(),
            message: format!("its anchor `{}`: {e}", anchor::FILE),
        })
    }

    fn delta(&self) -> f64 {
        self.budget.map(|b| b.delta).unwrap_or(DEFAULT_DELTA)
    }

    /// How many releases the ledger holds, once the whole history is verified.
    pub fn count(&self) -> Result<usize, LedgerError> {
        Ok(self.verified(&mut self.lock())?.entries.len())
    }

    /// Every entry, oldest first, once the whole history is verified.
    pub fn entries(&self) -> Result<Vec<Entry>, LedgerError> {
        Ok(self.verified(&mut self.lock())?.entries.clone())
    }

    /// What the history plus `more` costs.
    fn cost(
        &self,
        entries: &[Entry],
        more: Option<Option<Vec<Release>>>,
    ) -> Result<Spent, LedgerError> {
        cost(entries, more, self.delta())
    }

    /// What the agency has spent, and what one more `next` release would bring it to.
    /// And what `job` (its id and federation) has spent alone (0 for none), from one reading
    /// of the history.
    fn figures(
        &self,
        next: Option<Option<Vec<Release>>>,
        job: Option<(&str, &str)>,
    ) -> Result<(Spent, Option<Spent>, f64), LedgerError> {
        let mut state = self.lock();
        let (chain, costs) = self.verified_with_costs(&mut state)?;
        let spent = self.chain_cost(chain, costs, None)?;
        let after = next
            .map(|n| self.chain_cost(chain, costs, Some(n)))
            .transpose()?;
        let of_job = match job {
            Some((job, federation)) => {
                let of = |e: &&Entry| e.job_id == job && e.federation == federation;
                if chain.entries.iter().all(|e| of(&e)) {
                    // Every release is the job's: it has spent what the agency has.
                    spent.epsilon
                } else {
                    let entries: Vec<Entry> = chain.entries.iter().filter(of).cloned().collect();
                    self.cost(&entries, None)?.epsilon
                }
            }
            None => 0.0,
        };
        Ok((spent, after, of_job))
    }

    /// The chain, verified once ([`Ledger::verified`]), with the accountants' answers
    /// remembered for it.
    fn verified_with_costs<'s>(
        &self,
        state: &'s mut State,
    ) -> Result<(&'s mut Chain, &'s mut Costs), LedgerError> {
        self.verified(state)?;
        match state {
            State {
                chain: Some(chain),
                costs,
                ..
            } => Ok((chain, costs)),
            _ => Err(LedgerError::Accounting("no chain".into())),
        }
    }

    /// What `chain` plus `more` costs, remembered by the chain's end.
    fn chain_cost(
        &self,
        chain: &Chain,
        costs: &mut Costs,
        more: Option<Option<Vec<Release>>>,
    ) -> Result<Spent, LedgerError> {
        let key = (chain.end(), more);
        if let Some((_, spent)) = costs.iter().find(|(k, _)| *k == key) {
            return Ok(spent.clone());
        }
        let spent = self.cost(&chain.entries, key.1.clone())?;
        remember(costs, key, spent.clone());
        Ok(spent)
    }

    /// What the agency has spent, once the whole history is verified.
    pub fn spent(&self) -> Result<Spent, LedgerError> {
        let mut state = self.lock();
        let (chain, costs) = self.verified_with_costs(&mut state)?;
        self.chain_cost(chain, costs, None)
    }

    /// Checks that the release fits the budget and records it durably. Only then may the node
    /// compute and send it.
    pub fn record(&self, entry: &Entry) -> Result<Recorded, LedgerRefusal> {
        self.record_if(entry, |_, _| Ok(()))
    }

    /// As [`Ledger::record`], after `admit` has accepted the release given what the agency
    /// has spent before it and every entry before it. `admit` runs under the ledger's lock, so
    /// what it judged is still true when the release is written.
    pub fn record_if<A>(
        &self,
        entry: &Entry,
        admit: impl FnOnce(&Spent, &[Entry]) -> Result<(), A>,
    ) -> Result<Recorded, LedgerRefusal<A>> {
        let mut state = self.lock();
        let (chain, costs) = self.verified_with_costs(&mut state)?;
        let before = self.chain_cost(chain, costs, None)?;
        if entry.releases.is_none() {
            return Err(LedgerRefusal::NotPrivate);
        }
        admit(&before, &chain.entries).map_err(LedgerRefusal::Admission)?;
        let after = self.chain_cost(chain, costs, Some(entry.releases.clone()))?;
        if let Some(budget) = self.budget
            && after.epsilon > budget.max_epsilon
        {
            return Err(LedgerRefusal::BudgetExhausted {
                spent: before.epsilon,
                after: after.epsilon,
                max: budget.max_epsilon,
                delta: budget.delta,
                accountant: after.accountant,
            });
        }
        let end = chain.end();
        let seq = end.count + 1;
        let link = Link {
            seq,
            prev: chain::hex(&end.head),
            entry: entry.clone(),
        };
        let store = |e: &dyn std::fmt::Display| LedgerRefusal::<A>::Store(e.to_string());
        let value = serde_json::to_vec(&link).map_err(|e| store(&e))?;
        // Entry `seq` is new: the verified chain ends before it, and this lock keeps it so.
        let swapped = self
            .tree
            .compare_and_swap(chain::key(seq), None::<&[u8]>, Some(value.as_slice()))
            .map_err(|e| store(&e))?;
        if swapped.is_err() {
            return Err(store(&format!(
                "entry {seq} is already stored though the chain ended before it"
            )));
        }
        self.db.flush().map_err(|e| store(&e))?;
        let head = chain::sha256(&value);
        self.anchor(&Anchor { count: seq, head })?;
        chain.push(entry.clone(), head);
        // What the chain now costs is what it was judged to cost with this release.
        remember(costs, (chain.end(), None), after.clone());
        if let Err(error) = copy::append(&self.dir, &value) {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot add the release to the copy of the privacy ledger its operator reads while the node runs");
        }
        Ok(Recorded { spent: after, seq })
    }

    /// Opens the node's evidence log, kept in the ledger's database, and reads its records.
    pub fn evidence(&self) -> Result<(Evidence, Vec<Record>), EvidenceError> {
        Evidence::open(&self.db)
    }

    /// The report for the coordinator, with what one more `next` release would bring the total
    /// to. A ledger that cannot be verified or accounted reports an unknown (infinite) spending,
    /// never nothing.
    pub fn report(&self, next: Option<Option<Vec<Release>>>) -> PrivacyReport {
        self.report_for(None, next)
    }

    /// As [`Ledger::report`], with what `job` (its id and federation) has spent so far.
    pub fn report_for(
        &self,
        job: Option<(&str, &str)>,
        next: Option<Option<Vec<Release>>>,
    ) -> PrivacyReport {
        let figures = self.figures(next, job);
        let max_epsilon = self.budget.map(|b| b.max_epsilon).unwrap_or(0.0);
        match figures {
            Ok((spent, after, of_job)) => PrivacyReport {
                spent_epsilon: spent.epsilon,
                delta: self.delta(),
                max_epsilon,
                epsilon_after_next_round: after.map(|s| s.epsilon).unwrap_or(0.0),
                accountant: spent.accountant,
                job_spent_epsilon: of_job,
            },
            Err(error) => {
                tracing::warn!(%error, "the privacy report says the spending is unknown");
                let accountant = match error {
                    LedgerError::Damaged(_) => format!("unknown: {DAMAGED}"),
                    _ => {
                        "unknown: the node's privacy ledger cannot be read or accounted".to_owned()
                    }
                };
                PrivacyReport {
                    spent_epsilon: f64::INFINITY,
                    delta: self.delta(),
                    max_epsilon,
                    epsilon_after_next_round: f64::INFINITY,
                    accountant,
                    job_spent_epsilon: f64::INFINITY,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(round: u32, release: Option<Release>) -> Entry {
        let releases = release.map(|r| vec![r]);
        Entry {
            time_unix_ms: 1,
            task_id: format!("t{round}"),
            job_id: "job-000001".into(),
            federation: "f".into(),
            round,
            kind: "training".into(),
            recipient: "treaty://coordinator/hub".into(),
            releases,
            secure_aggregation: None,
        }
    }

    /// The ledger remembers what its accountants said, by the chain's end: its reports must
    /// still be what the accountants say of the releases themselves, round after round, when
    /// the release recorded is not the one the last report announced, and with another job's
    /// releases in the history.
    #[test]
    fn reports_are_what_the_accountants_say_of_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), None).unwrap();
        let of = |releases: &[Release]| privacy::spent(releases, DEFAULT_DELTA).unwrap();
        let gaussian = |rho| Release::Gaussian { rho };
        let mut history: Vec<Release> = Vec::new();
        let mut job_history: Vec<Release> = Vec::new();
        for round in 1..=5u32 {
            // Round 3 releases more than round 2's report announced; round 4 is another job's.
            let release = gaussian(if round == 3 { 0.05 } else { 0.01 });
            let mut e = entry(round, Some(release));
            if round == 4 {
                e.job_id = "job-000002".into();
            } else {
                job_history.push(release);
            }
            let recorded = ledger.record(&e).unwrap();
            history.push(release);
            assert_eq!(recorded.spent, of(&history), "round {round}");
            let next = gaussian(0.01);
            let report = ledger.report_for(Some(("job-000001", "f")), Some(Some(vec![next])));
            assert_eq!(report.spent_epsilon, of(&history).epsilon, "round {round}");
            let announced = [history.clone(), vec![next]].concat();
            assert_eq!(report.epsilon_after_next_round, of(&announced).epsilon);
            assert_eq!(
                report.job_spent_epsilon,
                of(&job_history).epsilon,
                "round {round}"
            );
            assert_eq!(ledger.spent().unwrap(), of(&history));
        }
        assert!(of(&job_history).epsilon < of(&history).epsilon);
    }

    #[test]
    fn the_budget_admits_exactly_what_fits_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let rho = 0.01;
        // What the accountants say of the same releases: the ledger composes its entries.
        let of = |n: usize| {
            privacy::spent(&vec![Release::Gaussian { rho }; n], 1e-5)
                .unwrap()
                .epsilon
        };
        let (three, four) = (of(3), of(4));
        let budget = Budget {
            max_epsilon: (three + four) / 2.0,
            delta: 1e-5,
        };
        {
            let ledger = Ledger::open(dir.path(), Some(budget)).unwrap();
            for round in 1..=3 {
                ledger
                    .record(&entry(round, Some(Release::Gaussian { rho })))
                    .unwrap();
            }
            assert!(matches!(
                ledger.record(&entry(4, Some(Release::Gaussian { rho }))),
                Err(LedgerRefusal::BudgetExhausted { .. })
            ));
            assert!(matches!(
                ledger.record(&entry(4, None)),
                Err(LedgerRefusal::NotPrivate)
            ));
        }
        let ledger = Ledger::open(dir.path(), Some(budget)).unwrap();
        assert_eq!(ledger.entries().unwrap().len(), 3);
        assert!((ledger.spent().unwrap().epsilon - three).abs() < 1e-12);
        let report = ledger.report(Some(Some(vec![Release::Gaussian { rho }])));
        assert!(
            (report.epsilon_after_next_round - four).abs() < 1e-12
                && report.max_epsilon == budget.max_epsilon
        );
    }

    #[test]
    fn an_admission_check_sees_the_spending_before_and_a_refusal_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), None).unwrap();
        let laplace = |epsilon| Some(Release::Laplace { epsilon });
        ledger.record(&entry(1, laplace(0.5))).unwrap();
        let mut seen = None;
        ledger
            .record_if(&entry(2, laplace(0.25)), |before, _| {
                seen = Some(before.epsilon);
                Ok::<(), &str>(())
            })
            .unwrap();
        // Before the second release, what the first spent alone: at most its 0.5 (PLD's
        // randomised-response pair gives back a hair of it at delta 1e-5).
        let first = privacy::spent(&[Release::Laplace { epsilon: 0.5 }], DEFAULT_DELTA)
            .unwrap()
            .epsilon;
        assert!(first <= 0.5 && first > 0.499, "{first}");
        assert!((seen.unwrap() - first).abs() < 1e-12, "{seen:?}");
        let refused = ledger.record_if(&entry(3, laplace(0.25)), |_, _| Err("not allowed"));
        assert!(matches!(
            refused,
            Err(LedgerRefusal::Admission("not allowed"))
        ));
        assert_eq!(ledger.entries().unwrap().len(), 2);
    }

    #[test]
    fn a_release_without_dp_is_refused_even_without_a_budget() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), None).unwrap();
        assert!(matches!(
            ledger.record(&entry(1, None)),
            Err(LedgerRefusal::NotPrivate)
        ));
        let release = Release::Laplace { epsilon: 0.5 };
        ledger.record(&entry(1, Some(release))).unwrap();
        let alone = privacy::spent(&[release], DEFAULT_DELTA).unwrap().epsilon;
        assert_eq!(ledger.spent().unwrap().epsilon, alone);
        assert!(alone <= 0.5);
    }

    #[test]
    fn a_report_names_what_one_job_spent_alone_and_each_entry_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), None).unwrap();
        let laplace = |epsilon| Some(Release::Laplace { epsilon });
        let of = |job: &str, round, epsilon| Entry {
            job_id: job.into(),
            ..entry(round, laplace(epsilon))
        };
        let seqs: Vec<u64> = [of("j1", 1, 0.5), of("j2", 1, 0.25), of("j1", 2, 0.125)]
            .iter()
            .map(|e| ledger.record(e).unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        // j1 spent its 0.5 and 0.125, all of them 0.5, 0.25 and 0.125: as the accountants
        // judge those releases, at most their sums.
        let of = |epsilons: &[f64]| {
            let releases: Vec<Release> = epsilons
                .iter()
                .map(|&epsilon| Release::Laplace { epsilon })
                .collect();
            privacy::spent(&releases, DEFAULT_DELTA).unwrap().epsilon
        };
        let report = ledger.report_for(Some(("j1", "f")), None);
        let (j1, all) = (of(&[0.5, 0.125]), of(&[0.5, 0.25, 0.125]));
        assert!(j1 <= 0.625 && all <= 0.875 && all > 0.87);
        assert!((report.job_spent_epsilon - j1).abs() < 1e-9, "{report:?}");
        assert!((report.spent_epsilon - all).abs() < 1e-9, "{report:?}");
        assert_eq!(
            ledger
                .report_for(Some(("j1", "other")), None)
                .job_spent_epsilon,
            0.0
        );
    }
}
