//! The event log: every state change an operator cares about, with time,
//! kind, object and one sentence (issue 16). Kept bounded, in the pool's
//! directory (`events.jsonl`, one JSON object a line) so that it outlives a
//! restart, and written to the log as it happens.
//!
//! Events are not the pool's data: a failure to write one is logged and
//! never fails an operation. They are recorded after the change they tell
//! of, outside every engine lock.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

thread_local! {
    /// Set inside [`quietly`].
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the engine's routine notes (snapshot created, deleted,
/// ...) logged at debug level but not recorded as events: for the
/// snapshots mirroring takes and retires on its own every few seconds,
/// which would otherwise crowd out everything else. Warnings and errors
/// are recorded as always.
pub fn quietly<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            QUIET.with(|q| q.set(self.0));
        }
    }
    let _restore = Restore(QUIET.with(|q| q.replace(true)));
    f()
}

/// Whether the calling thread is inside [`quietly`].
pub(crate) fn is_quiet() -> bool {
    QUIET.with(|q| q.get())
}

/// Events kept (in memory and, after compaction, in the file).
pub const EVENTS_KEPT: usize = 10_000;

/// The file in the pool's directory.
pub const EVENTS_FILE: &str = "events.jsonl";

/// Same kind and object within this time: counted, not recorded again
/// (a client retrying a refused connection in a loop).
const REPEAT_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing, never reused in a pool.
    pub id: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub severity: Severity,
    /// kebab-case: `lun-created`, `split-finished`, `pool-nearly-full`, ...
    pub kind: String,
    /// What it is about: a LUN, `LUN@SNAPSHOT`, a mirror, the pool.
    pub object: String,
    /// One sentence.
    pub message: String,
}

pub struct EventLog {
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// The newest id, readable without the lock (followers poll it).
    last: AtomicU64,
}

struct Inner {
    events: VecDeque<Event>,
    /// Lines in the file; compacted past twice the bound.
    lines: usize,
    recent: HashMap<(String, String), Instant>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EventLog {
    /// A log kept in memory only (tests, simulated pools).
    pub fn in_memory() -> EventLog {
        EventLog {
            path: None,
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                lines: 0,
                recent: HashMap::new(),
            }),
            last: AtomicU64::new(0),
        }
    }

    /// Opens the log in `dir`, reading what an earlier run kept. Lines that
    /// do not parse (a torn last line after a crash) are skipped.
    pub fn open(dir: &Path) -> EventLog {
        let path = dir.join(EVENTS_FILE);
        let mut events = VecDeque::new();
        let mut lines = 0;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    lines += 1;
                    if let Ok(e) = serde_json::from_str::<Event>(line) {
                        if events.back().is_none_or(|b: &Event| b.id < e.id) {
                            events.push_back(e);
                        }
                        if events.len() > EVENTS_KEPT {
                            events.pop_front();
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "cannot read {}: {e}; starting a new event log",
                path.display()
            ),
        }
        let last = events.back().map_or(0, |e| e.id);
        EventLog {
            path: Some(path),
            inner: Mutex::new(Inner {
                events,
                lines,
                recent: HashMap::new(),
            }),
            last: AtomicU64::new(last),
        }
    }

    /// The newest event's id (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Events after `since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock();
        let start = inner.events.partition_point(|e| e.id <= since);
        inner
            .events
            .iter()
            .skip(start)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Records an event and logs it.
    pub fn emit(&self, severity: Severity, kind: &str, object: &str, message: String) {
        self.record(severity, kind, object, message, false);
    }

    /// Like [`emit`](Self::emit), but an event of the same kind and object
    /// within the last 10 s is not recorded again (it is still logged,
    /// each time, at its severity).
    pub fn emit_coalesced(&self, severity: Severity, kind: &str, object: &str, message: String) {
        self.record(severity, kind, object, message, true);
    }

    fn record(
        &self,
        severity: Severity,
        kind: &str,
        object: &str,
        message: String,
        coalesce: bool,
    ) {
        let mut inner = self.inner.lock();
        if coalesce {
            let now = Instant::now();
            inner
                .recent
                .retain(|_, at| now.duration_since(*at) < REPEAT_WINDOW);
            let key = (kind.to_string(), object.to_string());
            if inner.recent.contains_key(&key) {
                drop(inner);
                log(
                    severity,
                    kind,
                    object,
                    &format!("{message} (repeated within 10 s: not recorded again)"),
                );
                return;
            }
            inner.recent.insert(key, now);
        }
        let event = Event {
            id: self.last.load(Ordering::Relaxed) + 1,
            time_ms: now_ms(),
            severity,
            kind: kind.to_string(),
            object: object.to_string(),
            message,
        };
        log(severity, kind, object, &event.message);
        if let Some(path) = &self.path {
            if let Err(e) = append(path, &event) {
                tracing::warn!(
                    "cannot record event {} in {}: {e}",
                    event.id,
                    path.display()
                );
            }
            inner.lines += 1;
        }
        self.last.store(event.id, Ordering::Release);
        inner.events.push_back(event);
        if inner.events.len() > EVENTS_KEPT {
            inner.events.pop_front();
        }
        if inner.lines > 2 * EVENTS_KEPT {
            if let Some(path) = &self.path {
                match rewrite(path, &inner.events) {
                    Ok(()) => inner.lines = inner.events.len(),
                    Err(e) => tracing::warn!("cannot compact {}: {e}", path.display()),
                }
            }
        }
    }
}

/// The event's line in the server's log.
fn log(severity: Severity, kind: &str, object: &str, message: &str) {
    match severity {
        Severity::Info => tracing::info!(target: "event", kind, object, "{message}"),
        Severity::Warning => tracing::warn!(target: "event", kind, object, "{message}"),
        Severity::Error => tracing::error!(target: "event", kind, object, "{message}"),
    }
}

fn append(path: &Path, event: &Event) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write: concurrent appends (there are none: the log's lock is
    // held) and a crash leave whole lines or one torn last line.
    f.write_all(&line)
}

/// Replaces the file by the kept events (a new file renamed over it).
fn rewrite(path: &Path, events: &VecDeque<Event>) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = Vec::new();
    for e in events {
        serde_json::to_writer(&mut text, e).map_err(std::io::Error::other)?;
        text.push(b'\n');
    }
    std::fs::write(&tmp, &text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path());
        log.emit(Severity::Info, "lun-created", "a", "LUN a created.".into());
        log.emit(
            Severity::Warning,
            "pool-nearly-full",
            "pool",
            "80 %.".into(),
        );
        assert_eq!(log.last_id(), 2);
        drop(log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(EVENTS_FILE))
            .unwrap();
        f.write_all(b"{\"id\":3,\"ti").unwrap();
        let log = EventLog::open(dir.path());
        assert_eq!(log.last_id(), 2);
        let all = log.since(0, 100);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].kind, "pool-nearly-full");
        assert_eq!(log.since(1, 100).len(), 1);
        assert_eq!(log.since(2, 100).len(), 0);
        log.emit(Severity::Info, "lun-deleted", "a", "gone.".into());
        assert_eq!(log.since(2, 100)[0].id, 3);
    }

    #[test]
    fn the_log_stays_bounded_and_repeats_coalesce() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path());
        for i in 0..(2 * EVENTS_KEPT + 5) {
            log.emit(Severity::Info, "lun-created", &format!("l{i}"), "x".into());
        }
        let kept = log.since(0, usize::MAX);
        assert_eq!(kept.len(), EVENTS_KEPT);
        assert_eq!(kept.last().unwrap().id, (2 * EVENTS_KEPT + 5) as u64);
        let lines = std::fs::read_to_string(dir.path().join(EVENTS_FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 2 * EVENTS_KEPT, "{lines} lines");
        drop(log);
        let log = EventLog::open(dir.path());
        assert_eq!(log.since(0, usize::MAX).len(), EVENTS_KEPT);
        let before = log.last_id();
        for _ in 0..5 {
            log.emit_coalesced(Severity::Warning, "access-refused", "x", "no".into());
        }
        assert_eq!(log.last_id(), before + 1);
    }
}
