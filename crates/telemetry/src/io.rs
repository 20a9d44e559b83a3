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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

/// One op's counters.
#[derive(Debug)]
pub struct OpStats {
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Nanoseconds from the request reaching the engine to its answer.
    pub latency: Histogram,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Histogram::latency(),
        }
    }
}

/// One LUN's counters (or those of every LUN past the label limit).
#[derive(Debug, Default)]
pub struct LunIo {
    ops: [OpStats; 5],
}

impl LunIo {
    pub fn op(&self, op: Op) -> &OpStats {
        &self.ops[op as usize]
    }

    /// Counts one request of `bytes` that started at `started`.
    pub fn record(&self, op: Op, bytes: u64, started: Instant, ok: bool) {
        let s = &self.ops[op as usize];
        s.ops.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        s.latency.observe(started.elapsed().as_nanos() as u64);
    }

    pub fn totals(&self, lun: &str) -> IoTotals {
        let get = |op: Op| {
            let s = self.op(op);
            (
                s.ops.load(Ordering::Relaxed),
                s.bytes.load(Ordering::Relaxed),
            )
        };
        let (read_ops, read_bytes) = get(Op::Read);
        let (write_ops, write_bytes) = get(Op::Write);
        let (trim_ops, trim_bytes) = get(Op::Trim);
        let (zero_ops, zero_bytes) = get(Op::Zero);
        let (flush_ops, _) = get(Op::Flush);
        IoTotals {
            lun: lun.to_string(),
            read_ops,
            read_bytes,
            write_ops,
            write_bytes,
            trim_ops,
            trim_bytes,
            zero_ops,
            zero_bytes,
            flush_ops,
            errors: Op::ALL
                .iter()
                .map(|&op| self.op(op).errors.load(Ordering::Relaxed))
                .sum(),
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
    limit: usize,
    luns: Mutex<BTreeMap<String, Arc<LunIo>>>,
    other: Arc<LunIo>,
}

/// One LUN's counters as a scrape reads them.
pub struct LunIoSnapshot {
    pub lun: String,
    pub ops: Vec<(Op, u64, u64, u64, HistogramSnapshot)>,
}

impl IoRegistry {
    /// `limit`: LUNs with a label of their own.
    pub fn new(limit: usize) -> IoRegistry {
        IoRegistry {
            limit,
            luns: Mutex::new(BTreeMap::new()),
            other: Arc::new(LunIo::default()),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
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
                ops: Op::ALL
                    .iter()
                    .map(|&op| {
                        let s = io.op(op);
                        (
                            op,
                            s.ops.load(Ordering::Relaxed),
                            s.bytes.load(Ordering::Relaxed),
                            s.errors.load(Ordering::Relaxed),
                            s.latency.snapshot(),
                        )
                    })
                    .collect(),
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
        r.lun("b").record(Op::Write, 4096, Instant::now(), true);
        r.lun("c").record(Op::Read, 512, Instant::now(), false);
        a.record(Op::Read, 4096, Instant::now(), true);
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
