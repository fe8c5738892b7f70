//! Logging what peers do without letting a peer fill the log: strings a peer sent are cut to
//! `MAX_LOGGED_CHARS`, and warnings about one peer are rate-limited, the first
//! `WARNINGS_PER_INTERVAL` of each interval logged whole and the rest summed up in one line
//! ("suppressed K similar warnings from treaty://agency/...") when the next interval begins or
//! the peer's session ends.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::{MAX_LOGGED_CHARS, WARNING_INTERVAL_SECS, WARNINGS_PER_INTERVAL};

/// `text` as it may be logged: whole when short, else its first `MAX_LOGGED_CHARS` characters
/// and a marker saying how many bytes were left out.
pub(crate) fn capped(text: &str) -> Cow<'_, str> {
    capped_to(text, MAX_LOGGED_CHARS)
}

fn capped_to(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!(
            "{}…[{} more bytes not logged]",
            &text[..cut],
            text.len() - cut
        )),
    }
}

/// What to do with one warning about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log it; first log that `suppressed` earlier warnings were left out (when not 0).
    Log { suppressed: u64 },
    /// Leave it out (it is counted).
    Suppress,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// Rate limits of warnings, per peer.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    windows: Mutex<HashMap<String, Window>>,
    per_interval: u32,
    interval: Duration,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        WarnLimiter::new(
            WARNINGS_PER_INTERVAL,
            Duration::from_secs(WARNING_INTERVAL_SECS),
        )
    }
}

impl WarnLimiter {
    pub(crate) fn new(per_interval: u32, interval: Duration) -> Self {
        WarnLimiter {
            windows: Mutex::new(HashMap::new()),
            per_interval,
            interval,
        }
    }

    /// Whether a warning about `peer` at `now` is logged.
    pub(crate) fn check(&self, peer: &str, now: Instant) -> Verdict {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = windows.entry(peer.to_owned()).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        let mut suppressed = 0;
        if now.saturating_duration_since(w.started) >= self.interval {
            suppressed = std::mem::take(&mut w.suppressed);
            w.started = now;
            w.logged = 0;
        }
        if w.logged < self.per_interval {
            w.logged += 1;
            Verdict::Log { suppressed }
        } else {
            w.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// How many of `peer`'s warnings were left out and not yet summed up (its session ended);
    /// they count as summed up from now on. The interval's allowance stays spent, so that a
    /// peer gains no fresh allowance by reconnecting.
    pub(crate) fn finish(&self, peer: &str) -> u64 {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(peer)
            .map(|w| std::mem::take(&mut w.suppressed))
            .unwrap_or(0)
    }

    /// Logs a warning about `peer` unless its rate is spent: `message`, with `detail` (what the
    /// peer sent, capped). A summary of what was left out comes first when one is due.
    pub(crate) fn warn(&self, peer: &str, message: &str, detail: &str) {
        match self.check(peer, Instant::now()) {
            Verdict::Log { suppressed } => {
                summary(peer, suppressed);
                tracing::warn!(peer, detail = %capped(detail), "{message}");
            }
            Verdict::Suppress => {}
        }
    }

    /// Logs the summary of what was left out of `peer`'s warnings, if anything was.
    pub(crate) fn close(&self, peer: &str) {
        summary(peer, self.finish(peer));
    }
}

fn summary(peer: &str, suppressed: u64) {
    if suppressed > 0 {
        tracing::warn!(
            peer,
            suppressed,
            "suppressed {suppressed} similar warnings from {peer}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_with_a_marker_and_short_ones_kept() {
        assert_eq!(capped("short"), "short");
        let exact = "a".repeat(MAX_LOGGED_CHARS);
        assert_eq!(capped(&exact), exact.as_str());
        let mib = "x".repeat(1 << 20);
        let cut = capped(&mib);
        assert_eq!(
            cut,
            format!(
                "{}…[{} more bytes not logged]",
                "x".repeat(MAX_LOGGED_CHARS),
                (1 << 20) - MAX_LOGGED_CHARS
            )
        );
        // Characters, not bytes: a multi-byte character is never split.
        assert_eq!(capped_to("ééé", 2), "éé…[2 more bytes not logged]");
    }

    #[test]
    fn each_peer_gets_its_first_warnings_then_one_summary_per_interval() {
        let limiter = WarnLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = "treaty://agency/NL/NL-POLITIE";
        for _ in 0..3 {
            assert_eq!(limiter.check(a, t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(limiter.check(a, t0), Verdict::Suppress);
        }
        // Another peer has its own allowance.
        assert_eq!(
            limiter.check("treaty://agency/DE/DE-BKA", t0),
            Verdict::Log { suppressed: 0 }
        );
        // Within the interval still suppressed; after it, the count comes with the next line.
        assert_eq!(
            limiter.check(a, t0 + Duration::from_secs(59)),
            Verdict::Suppress
        );
        assert_eq!(
            limiter.check(a, t0 + Duration::from_secs(60)),
            Verdict::Log { suppressed: 1001 }
        );
        assert_eq!(
            limiter.check(a, t0 + Duration::from_secs(61)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(limiter.finish(a), 0);
        // What is left out at the end of a session is returned once, and a new session of the
        // same peer within the interval gets no fresh allowance.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(limiter.check(a, t1), Verdict::Log { suppressed: 0 });
        for _ in 0..5 {
            assert_eq!(limiter.check(a, t1), Verdict::Suppress);
        }
        assert_eq!(limiter.finish(a), 5);
        assert_eq!(limiter.finish(a), 0);
        assert_eq!(limiter.check(a, t1), Verdict::Suppress);
        assert_eq!(
            limiter.check(a, t1 + Duration::from_secs(60)),
            Verdict::Log { suppressed: 1 }
        );
    }
}
