//! The README's first command, `treaty demo`, runs a federation end to end and leaves no process.

use std::process::Command;

use crate::common::TREATY;

#[test]
fn the_demo_runs_end_to_end_and_leaves_no_process() {
    let keep = tempfile::tempdir().unwrap();
    let out = Command::new(TREATY)
        .args(["demo", "--rounds", "5", "--keep"])
        .arg(keep.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all agencies connected"), "{stdout}");
    assert!(
        stdout.contains("job succeeded after 5 round(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("5/5"), "{stdout}");
    // The analytics query combined every agency's records.
    assert!(
        stdout.contains("over 20000 records from 5 agencies"),
        "{stdout}"
    );
    // Every process the demo started has exited: none holds the coordinator's log open, and the
    // coordinator's log ends with its graceful stop.
    let log = std::fs::read_to_string(keep.path().join("coordinator.log")).unwrap();
    assert!(log.contains("coordinator stopped"), "{log}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read_to_string(entry.path().join("cmdline")) {
            assert!(
                !cmdline.contains(&keep.path().to_string_lossy().to_string()),
                "still running: {cmdline}"
            );
        }
    }
}
