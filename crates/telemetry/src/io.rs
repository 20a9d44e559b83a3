//! Per-LUN I/O counters. The NBD export of a LUN holds its `LunIo` and
//! counts every request into it with relaxed atomics; a scrape (or the
//! dashboard's `GET /api/v1/io`) reads them.
//!
//! Label cardinality is bounded: the first `limit` LUNs to do I/O get a
//! `lun` label of their own; any more count together under
//! [`OTHER_LUNS`]. Counters of deleted LUNs are dropped at the next
//! scrape that finds them gone (once no connection holds them).

use crate::histogram::{Histogram, HistogramSnapshot};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// The `lun` label of LUNs past the label limit.
pub const OTHER_LUNS: &str = "_other";

/// Default number of LUNs with a label of their own (`serve --metrics-lun-limit`).
pub const LUN_LABELS_DEFAULT: usize = 256;

/// The requests counted, as the `op` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Trim,
    /// NBD_CMD_WRITE_ZEROES
    Zero,
    Flush,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Read, Op::Write, Op::Trim, Op::Zero, Op::Flush];

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Trim => "trim",
            Op::Zero => "zero",
            Op::Flush => "flush",
        }
    }
}

/// One op's counters in one shard, on cache lines of their own.
/// The op count is the latency histogram's count: one atomic fewer per
/// request.
#[derive(Debug)]
#[repr(align(128))]
struct OpStats {
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Nanoseconds from the request reaching the engine to its answer.
    latency: Histogram,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Histogram::latency(),
        }
    }
}

/// Copies of every counter; a thread counts into its own (threads are
/// spread over them round robin), so that threads serving one LUN do not
/// pass cache lines back and forth (measured: `blockfork-bench engine
/// --only counting`). A reading adds the shards up.
pub const SHARDS: usize = 8;

static NEXT_SHARD: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SHARD: usize = (NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS as u64) as usize;
}

/// The data path's clock: the CPU's time-stamp counter through quanta
/// (a pair of readings costs 19 ns here against 50 ns for two
/// `std::time::start()`; quanta falls back to the OS clock where
/// the counter is not invariant).
static CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// When a request reached the engine (see [`LunIo::record`]).
#[derive(Debug, Clone, Copy)]
pub struct Started(u64);

/// Now, for [`LunIo::record`].
pub fn start() -> Started {
    Started(CLOCK.raw())
}

/// One op's counters, added over the shards.
#[derive(Debug, Clone)]
pub struct OpReading {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency: HistogramSnapshot,
}

/// One LUN's counters (or those of every LUN past the label limit).
#[derive(Debug)]
pub struct LunIo {
    shards: Box<[[OpStats; 5]]>,
}

impl Default for LunIo {
    fn default() -> Self {
        LunIo {
            shards: (0..SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

impl LunIo {
    /// Counts one request of `bytes` that started at `started`.
    pub fn record(&self, op: Op, bytes: u64, started: Started, ok: bool) {
        let nanos = CLOCK.delta_as_nanos(started.0, CLOCK.raw());
        let s = &self.shards[SHARD.with(|s| *s)][op as usize];
        if bytes > 0 {
            s.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        s.latency.observe(nanos);
    }

    /// One op's counters now.
    pub fn read(&self, op: Op) -> OpReading {
        let mut latency: Option<HistogramSnapshot> = None;
        let (mut bytes, mut errors) = (0, 0);
        for shard in self.shards.iter() {
            let s = &shard[op as usize];
            bytes += s.bytes.load(Ordering::Relaxed);
            errors += s.errors.load(Ordering::Relaxed);
            let h = s.latency.snapshot();
            match &mut latency {
                None => latency = Some(h),
                Some(l) => l.add(&h),
            }
        }
        let latency = latency.expect("at least one shard");
        OpReading {
            ops: latency.count,
            bytes,
            errors,
            latency,
        }
    }

    pub fn totals(&self, lun: &str) -> IoTotals {
        let r: Vec<OpReading> = Op::ALL.iter().map(|&op| self.read(op)).collect();
        IoTotals {
            lun: lun.to_string(),
            read_ops: r[Op::Read as usize].ops,
            read_bytes: r[Op::Read as usize].bytes,
            write_ops: r[Op::Write as usize].ops,
            write_bytes: r[Op::Write as usize].bytes,
            trim_ops: r[Op::Trim as usize].ops,
            trim_bytes: r[Op::Trim as usize].bytes,
            zero_ops: r[Op::Zero as usize].ops,
            zero_bytes: r[Op::Zero as usize].bytes,
            flush_ops: r[Op::Flush as usize].ops,
            errors: r.iter().map(|o| o.errors).sum(),
        }
    }
}

/// A LUN's request counts since the server started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IoTotals {
    pub lun: String,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub trim_ops: u64,
    pub trim_bytes: u64,
    pub zero_ops: u64,
    pub zero_bytes: u64,
    pub flush_ops: u64,
    pub errors: u64,
}

/// Every LUN's counters, by name.
#[derive(Debug)]
pub struct IoRegistry {
    /// Whether exports count (`serve --no-io-metrics`, `pool set
    /// --io-metrics`): one relaxed load per request when off.
    enabled: AtomicBool,
    limit: usize,
    luns: Mutex<BTreeMap<String, Arc<LunIo>>>,
    other: Arc<LunIo>,
}

/// One LUN's counters as a scrape reads them.
pub struct LunIoSnapshot {
    pub lun: String,
    pub ops: Vec<(Op, OpReading)>,
}

impl IoRegistry {
    /// `limit`: LUNs with a label of their own.
    pub fn new(limit: usize) -> IoRegistry {
        IoRegistry {
            enabled: AtomicBool::new(true),
            limit,
            luns: Mutex::new(BTreeMap::new()),
            other: Arc::new(LunIo::default()),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether requests are counted now.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Starts or stops counting (the counts so far stay).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The counters an export of `lun` counts into (taken once, when the
    /// export opens).
    pub fn lun(&self, lun: &str) -> Arc<LunIo> {
        let mut luns = self.luns.lock();
        if let Some(io) = luns.get(lun) {
            return io.clone();
        }
        if luns.len() >= self.limit {
            return self.other.clone();
        }
        let io = Arc::new(LunIo::default());
        luns.insert(lun.to_string(), io.clone());
        io
    }

    /// Forgets the counters of LUNs for which `exists` says no and that no
    /// export holds any more, freeing their labels.
    pub fn prune(&self, exists: impl Fn(&str) -> bool) {
        self.luns
            .lock()
            .retain(|name, io| exists(name) || Arc::strong_count(io) > 1);
    }

    /// Every labelled LUN's totals, then [`OTHER_LUNS`] when anything
    /// counted there.
    pub fn totals(&self) -> Vec<IoTotals> {
        let mut all: Vec<IoTotals> = self
            .luns
            .lock()
            .iter()
            .map(|(name, io)| io.totals(name))
            .collect();
        let other = self.other.totals(OTHER_LUNS);
        if other != self.other_zero() {
            all.push(other);
        }
        all
    }

    fn other_zero(&self) -> IoTotals {
        LunIo::default().totals(OTHER_LUNS)
    }

    /// Every labelled LUN's full counters, histograms included.
    pub fn snapshots(&self) -> Vec<LunIoSnapshot> {
        let entries: Vec<(String, Arc<LunIo>)> = self
            .luns
            .lock()
            .iter()
            .map(|(n, io)| (n.clone(), io.clone()))
            .chain(
                // `_other` appears once a LUN past the limit did I/O.
                (self.other.totals(OTHER_LUNS) != self.other_zero())
                    .then(|| (OTHER_LUNS.to_string(), self.other.clone())),
            )
            .collect();
        entries
            .into_iter()
            .map(|(lun, io)| LunIoSnapshot {
                lun,
                ops: Op::ALL.iter().map(|&op| (op, io.read(op))).collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luns_past_the_limit_share_one_label() {
        let r = IoRegistry::new(2);
        let a = r.lun("a");
        r.lun("b").record(Op::Write, 4096, start(), true);
        r.lun("c").record(Op::Read, 512, start(), false);
        a.record(Op::Read, 4096, start(), true);
        let t = r.totals();
        let names: Vec<&str> = t.iter().map(|t| t.lun.as_str()).collect();
        assert_eq!(names, ["a", "b", OTHER_LUNS]);
        assert_eq!((t[0].read_ops, t[0].read_bytes), (1, 4096));
        assert_eq!((t[2].read_bytes, t[2].errors), (512, 1));
        // "b" is gone and nothing holds it: its label is freed.
        r.prune(|n| n != "b");
        assert!(Arc::ptr_eq(&r.lun("a"), &a));
        let d = r.lun("d");
        assert!(!Arc::ptr_eq(&d, &r.other));
        // "a" is gone but an export still holds it: kept.
        r.prune(|n| n != "a");
        assert_eq!(r.totals().len(), 3);
    }
}
