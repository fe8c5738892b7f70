//! The ledger under damage to its files: it refuses, or (in the window between sled's flush and
//! the anchor's write) over-counts; it never under-counts.
//!
//! The reference for every count is the number of releases recorded, and for every spending
//! their Laplace epsilons added up (pure DP composes by addition); sled's own view of a damaged
//! file, read through a raw sled handle on a copy, shows whether the damage lost entries.

use std::path::Path;

use super::*;

const EPSILON: f64 = 0.1;

/// What `n` entries of [`EPSILON`] spend, by the accountants the ledger uses: at most their sum.
fn laplaces(n: usize) -> f64 {
    let releases = vec![Release::Laplace { epsilon: EPSILON }; n];
    let spent = privacy::spent(&releases, DEFAULT_DELTA).unwrap().epsilon;
    assert!(spent <= n as f64 * EPSILON + 1e-12 && spent > n as f64 * EPSILON - 1e-3);
    spent
}

fn entry(round: u32) -> Entry {
    Entry {
        time_unix_ms: 1_700_000_000_000 + i64::from(round),
        task_id: format!("task-{round:06}"),
        job_id: "job-000001".into(),
        federation: "f".into(),
        round,
        kind: "training".into(),
        recipient: "treaty://coordinator/hub".into(),
        releases: Some(vec![Release::Laplace { epsilon: EPSILON }]),
        secure_aggregation: None,
    }
}

/// A ledger of `n` releases in `dir`, closed.
fn ledger_of(dir: &Path, n: u32) {
    let ledger = Ledger::open(dir, None).unwrap();
    for round in 1..=n {
        ledger.record(&entry(round)).unwrap();
    }
}

pub(super) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), target).unwrap();
        }
    }
}

/// How many entries sled itself still yields from the (copied) directory, as the ledger before
/// the chain counted them; `None` when sled cannot open or read it.
fn sled_sees(dir: &Path) -> Option<usize> {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir, copy.path());
    let db = sled::open(copy.path()).ok()?;
    let tree = db.open_tree("ledger").ok()?;
    tree.iter()
        .map(|kv| kv.ok())
        .collect::<Option<Vec<_>>>()
        .map(|v| v.len())
}

/// What the ledger in `dir` makes of itself: the damage, or how many entries it counts and what
/// it says was spent.
fn outcome(dir: &Path) -> Result<(usize, f64), Damage> {
    match Ledger::open(dir, None) {
        Ok(ledger) => Ok((
            ledger.entries().unwrap().len(),
            ledger.spent().unwrap().epsilon,
        )),
        Err(LedgerError::Damaged(damage)) => Err(damage),
        Err(other) => panic!("not damage: {other}"),
    }
}

/// Asserts the ledger in `dir` (of `n` releases before the damage) refuses or counts them all;
/// whether it refused.
fn refuses_or_counts_all(dir: &Path, n: u32, what: &str) -> bool {
    let lost = sled_sees(dir).is_none_or(|seen| seen < n as usize);
    match outcome(dir) {
        Err(damage) => {
            let text = damage.to_string();
            assert!(
                text.contains("releases nothing until then") && text.contains("restore"),
                "{what}: {text}"
            );
            true
        }
        Ok((count, spent)) => {
            assert!(
                !lost,
                "{what}: sled lost entries and the ledger counts {count}"
            );
            assert_eq!(count, n as usize, "{what}");
            assert!(
                (spent - laplaces(n as usize)).abs() < 1e-9,
                "{what}: spent {spent}"
            );
            false
        }
    }
}

/// Cuts `bytes` off the end of sled's `db` file.
fn truncate(dir: &Path, bytes: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("db"))
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(bytes)).unwrap();
}

#[test]
fn cutting_the_end_off_sleds_file_is_refused_never_under_counted() {
    let mut refused = 0;
    let mut cases = 0;
    for n in [20, 36] {
        let template = tempfile::tempdir().unwrap();
        ledger_of(template.path(), n);
        for cut in [300, 600, 1_000, 2_000, 4_000] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template.path(), dir.path());
            truncate(dir.path(), cut);
            let what = format!("{n} releases, {cut} bytes cut");
            refused += usize::from(refuses_or_counts_all(dir.path(), n, &what));
            cases += 1;
        }
    }
    eprintln!("{refused} of {cases} truncations refused, the others lost nothing");
    assert!(
        refused > 0,
        "no truncation lost anything: the test tests nothing"
    );
}

#[test]
fn the_reported_defect_600_bytes_cut_from_a_ledger_of_2_epsilon_is_refused() {
    // The case: epsilon 2.0 spent, 600 bytes cut, and the old ledger said 1.0.
    let dir = tempfile::tempdir().unwrap();
    ledger_of(dir.path(), 20);
    truncate(dir.path(), 600);
    // Sled alone opens the file without an error and yields fewer entries (what the ledger
    // before the chain counted); the ledger refuses and says how many it lost.
    let seen = sled_sees(dir.path()).unwrap() as u64;
    assert!(seen < 20, "sled lost nothing: {seen}");
    let damage = outcome(dir.path()).unwrap_err();
    assert_eq!(
        damage.fault,
        Fault::Lost {
            found: seen,
            anchored: 20,
            head: chain::hex(&anchor::read(dir.path()).unwrap().unwrap().anchor.head)[..12]
                .to_owned(),
        }
    );
    // `treaty node ledger` and the node print this.
    eprintln!("{damage}");
}

#[test]
fn garbage_in_the_middle_of_sleds_file_is_refused_never_under_counted() {
    let template = tempfile::tempdir().unwrap();
    ledger_of(template.path(), 36);
    let len = std::fs::metadata(template.path().join("db")).unwrap().len();
    let mut refused = 0;
    for (at, size) in [
        (len / 2, 64),
        (len / 2, 4096),
        (len / 3, 512),
        (len - 700, 200),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let mut bytes = std::fs::read(dir.path().join("db")).unwrap();
        let end = (at + size).min(len) as usize;
        for (i, b) in bytes[at as usize..end].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        std::fs::write(dir.path().join("db"), bytes).unwrap();
        let what = format!("{size} garbage bytes at {at} of {len}");
        refused += usize::from(refuses_or_counts_all(dir.path(), 36, &what));
    }
    eprintln!("{refused} of 4 garbled files refused, the others lost nothing");
    assert!(
        refused > 0,
        "no garbage lost anything: the test tests nothing"
    );
}

#[test]
fn a_crash_image_missing_its_tail_is_refused() {
    // The files as a crash leaves them: copied while the ledger is open, after its last record
    // returned (everything it recorded is flushed and anchored).
    let live = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(live.path(), None).unwrap();
    let mut refused = 0;
    for n in 1..=36 {
        ledger.record(&entry(n)).unwrap();
        if n % 6 != 0 {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        copy_dir(live.path(), dir.path());
        truncate(dir.path(), 300);
        refused += usize::from(refuses_or_counts_all(
            dir.path(),
            n,
            &format!("crash image of {n}, 300 bytes cut"),
        ));
    }
    eprintln!("{refused} of 6 crash images refused, the others lost nothing");
    assert!(refused > 0, "no cut lost anything: the test tests nothing");
}

/// A closed ledger of three releases and a raw sled handle on it.
fn raw(dir: &Path) -> sled::Tree {
    ledger_of(dir, 3);
    sled::open(dir).unwrap().open_tree("ledger").unwrap()
}

fn fault(dir: &Path) -> Fault {
    outcome(dir).unwrap_err().fault
}

#[test]
fn an_altered_entry_is_refused() {
    // Entry 2's epsilon lowered: entry 3 no longer follows it.
    let dir = tempfile::tempdir().unwrap();
    {
        let tree = raw(dir.path());
        let old = tree.get(chain::key(2)).unwrap().unwrap();
        let text = String::from_utf8(old.to_vec()).unwrap();
        let new = text.replace("\"epsilon\":0.1", "\"epsilon\":0.01");
        assert_ne!(text, new);
        tree.insert(chain::key(2), new.as_bytes()).unwrap();
        tree.flush().unwrap();
    }
    assert_eq!(fault(dir.path()), Fault::Broken { at: 3, previous: 2 });
    // The last entry altered: nothing follows it, but the anchor records another.
    let dir = tempfile::tempdir().unwrap();
    {
        let tree = raw(dir.path());
        let old = tree.get(chain::key(3)).unwrap().unwrap();
        let new = String::from_utf8(old.to_vec())
            .unwrap()
            .replace("task-000003", "task-000004");
        tree.insert(chain::key(3), new.as_bytes()).unwrap();
        tree.flush().unwrap();
    }
    assert!(
        matches!(fault(dir.path()), Fault::Altered { anchored: 3, .. }),
        "{:?}",
        fault(dir.path())
    );
}

#[test]
fn a_removed_or_garbled_entry_is_refused() {
    let removed = |seq: u64| {
        let dir = tempfile::tempdir().unwrap();
        {
            let tree = raw(dir.path());
            tree.remove(chain::key(seq)).unwrap();
            tree.flush().unwrap();
        }
        fault(dir.path())
    };
    assert_eq!(removed(2), Fault::OutOfSequence { at: 3, expected: 2 });
    assert!(matches!(
        removed(3),
        Fault::Lost {
            found: 2,
            anchored: 3,
            ..
        }
    ));
    let dir = tempfile::tempdir().unwrap();
    {
        let tree = raw(dir.path());
        tree.insert(chain::key(1), &b"\x00garbage"[..]).unwrap();
        tree.flush().unwrap();
    }
    assert!(matches!(fault(dir.path()), Fault::Garbled { at: 1, .. }));
}

#[test]
fn a_missing_corrupt_or_foreign_anchor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    ledger_of(dir.path(), 3);
    let path = dir.path().join(anchor::FILE);
    let good = std::fs::read(&path).unwrap();

    std::fs::remove_file(&path).unwrap();
    assert_eq!(fault(dir.path()), Fault::AnchorMissing { found: 3 });

    // One slot damaged: the other is read, but an interrupted write to entry 4 would mean
    // entry 4 was on disk, and the ledger holds 3.
    let mut flipped = good.clone();
    flipped[40] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    assert_eq!(fault(dir.path()), Fault::Interrupted { found: 3 });
    // Both damaged: no anchor at all.
    flipped[anchor::SLOT + 40] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    assert!(matches!(
        fault(dir.path()),
        Fault::Anchor(anchor::AnchorError::Corrupt(_))
    ));

    // A well-formed anchor of a longer history (the anchor of a later backup, say).
    let later = Anchor {
        count: 4,
        head: chain::sha256(b"a fourth entry"),
    };
    std::fs::write(&path, anchor::file_bytes(&later, &later)).unwrap();
    let damage = outcome(dir.path()).unwrap_err();
    assert!(
        matches!(
            damage.fault,
            Fault::Lost {
                found: 3,
                anchored: 4,
                ..
            }
        ),
        "{damage}"
    );
    assert!(damage.to_string().contains(&format!(
        "holds 3 entries but its anchor `ledger.head` records 4 ending in {}…: history was lost",
        &chain::hex(&later.head)[..12]
    )));

    // The same length with another head: a different history.
    let other = Anchor {
        count: 3,
        head: chain::sha256(b"another third entry"),
    };
    std::fs::write(&path, anchor::file_bytes(&other, &other)).unwrap();
    assert!(matches!(
        fault(dir.path()),
        Fault::Altered { anchored: 3, .. }
    ));

    std::fs::write(&path, &good).unwrap();
    assert_eq!(outcome(dir.path()).unwrap().0, 3);
}

#[test]
fn the_crash_window_over_counts_and_the_anchor_moves_on() {
    // Entry 4 flushed to sled, the anchor still at 3: as a crash between the two leaves it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(anchor::FILE);
    ledger_of(dir.path(), 3);
    let at_three = std::fs::read(&path).unwrap();
    {
        let ledger = Ledger::open(dir.path(), None).unwrap();
        ledger.record(&entry(4)).unwrap();
    }
    std::fs::write(&path, &at_three).unwrap();
    let (count, spent) = outcome(dir.path()).unwrap();
    assert_eq!(count, 4);
    assert!((spent - laplaces(4)).abs() < 1e-9, "{spent}");
    let moved = anchor::read(dir.path()).unwrap().unwrap();
    assert_eq!((moved.anchor.count, moved.interrupted), (4, false));
    // The same with the anchor's write to 4 torn: its other slot (2's) half overwritten.
    let mut torn = at_three.clone();
    let older = torn
        .chunks(anchor::SLOT)
        .position(|slot| slot.windows(8).any(|w| w == b"count 2\n"))
        .unwrap();
    torn[older * anchor::SLOT..][..100].fill(b'x');
    std::fs::write(&path, &torn).unwrap();
    let found = anchor::read(dir.path()).unwrap().unwrap();
    assert_eq!((found.anchor.count, found.interrupted), (3, true));
    assert_eq!(outcome(dir.path()).unwrap().0, 4);
    let moved = anchor::read(dir.path()).unwrap().unwrap();
    assert_eq!((moved.anchor.count, moved.interrupted), (4, false));
    // Now entry 4 is anchored: losing it is damage.
    {
        let tree = sled::open(dir.path()).unwrap().open_tree("ledger").unwrap();
        tree.remove(chain::key(4)).unwrap();
        tree.flush().unwrap();
    }
    assert!(matches!(
        fault(dir.path()),
        Fault::Lost {
            found: 3,
            anchored: 4,
            ..
        }
    ));
}

#[test]
fn damage_found_while_running_refuses_every_release_and_the_report_says_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), None).unwrap();
    for round in 1..=3 {
        ledger.record(&entry(round)).unwrap();
    }
    let path = dir.path().join(anchor::FILE);
    let good = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let refused = ledger.record(&entry(4));
    assert!(
        matches!(&refused, Err(LedgerRefusal::Damaged(d)) if d.fault == Fault::AnchorMissing { found: 3 }),
        "{refused:?}"
    );
    // Damage stays: putting the anchor back under a running node does not lift it.
    std::fs::write(&path, good).unwrap();
    assert!(matches!(
        ledger.record(&entry(4)),
        Err(LedgerRefusal::Damaged(_))
    ));
    let report = ledger.report(Some(Some(vec![Release::Laplace { epsilon: EPSILON }])));
    assert!(report.spent_epsilon.is_infinite() && report.epsilon_after_next_round.is_infinite());
    assert_eq!(report.accountant, format!("unknown: {DAMAGED}"));
    assert!(ledger.spent().is_err() && ledger.entries().is_err());
    drop(ledger);
    // Restarted on the restored files, it works again; nothing was recorded meanwhile.
    let ledger = Ledger::open(dir.path(), None).unwrap();
    assert_eq!(ledger.entries().unwrap().len(), 3);
    ledger.record(&entry(4)).unwrap();
}

#[test]
fn an_unopenable_database_is_damage_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    ledger_of(dir.path(), 3);
    std::fs::write(dir.path().join("conf"), b"not sled's configuration").unwrap();
    let damage = outcome(dir.path()).unwrap_err();
    assert!(matches!(damage.fault, Fault::Unopenable(_)), "{damage}");
}
