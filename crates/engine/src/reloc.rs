//! Moving segments between devices (issue 14, decision 029): rebuilding a
//! lost device onto a replacement, evacuating a device being removed, and
//! levelling onto a new one are one operation. A store's column is copied
//! to a segment on another device, block by block from whatever copy
//! verifies, and then the store's record points at the new segment: one
//! metadata commit, no map entry touched.
//!
//! While a store is being moved its free space is frozen, so no new block
//! is written there (writes always go to new blocks in a pool on devices,
//! and a block's content never changes while it is used): the copy cannot
//! miss a write. Blocks no copy holds right are skipped, named, and the
//! move carries on. The job is committed; after a restart it resumes (the
//! layout itself says which segments are still to move).

use crate::codec::{self, StoreRecord};
use crate::engine::*;
use crate::layout::SegmentRef;
use crate::scrub::Damage;
use crate::space::Run;
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Blocks one batch copies: 4 MiB (1 MiB measured 0.66× a raw copy).
pub const MOVE_BATCH_BLOCKS: u64 = 1024;
/// The default pace of rebuilds and evacuations: 256 MB/s (decision 029).
pub const REBUILD_RATE_DEFAULT: u64 = 256_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveKind {
    /// Everything on `device` onto `target` (`pool device replace`).
    Rebuild,
    /// Everything off `device`, anywhere (`pool device remove`).
    Remove,
    /// Segments from the fullest devices onto `target` until level
    /// (`pool device add`).
    Level,
}

/// The job, as committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveJob {
    pub kind: MoveKind,
    pub device: u32,
    #[serde(default)]
    pub target: Option<u32>,
    pub started: u64,
    #[serde(default)]
    pub finished: Option<u64>,
    pub total_segments: u64,
    pub moved_segments: u64,
    pub copied_blocks: u64,
    pub skipped_blocks: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<Damage>,
    /// Why it stopped, when it could not finish.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(skip)]
    pub current: Option<Moving>,
    #[serde(skip)]
    pub rate: f64,
}

/// The segment being copied now.
#[derive(Debug, Clone, PartialEq)]
pub struct Moving {
    pub store: usize,
    pub column: usize,
    pub to: SegmentRef,
    /// The next physical block of the store's window to look at.
    pub cursor: u64,
    pub window_start: u64,
    pub window_end: u64,
}

/// What `pool device status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveInfo {
    /// `none`, `running`, `done` or `failed`.
    pub state: String,
    /// `rebuild`, `removal` or `levelling`.
    pub kind: Option<String>,
    /// The device segments leave (its path).
    pub device: Option<String>,
    pub target: Option<String>,
    pub progress: f64,
    pub total_segments: u64,
    pub moved_segments: u64,
    pub copied_bytes: u64,
    pub skipped_blocks: u64,
    pub damage: Vec<Damage>,
    pub rate_bytes_per_sec: u64,
    pub rate_limit_bytes_per_sec: u64,
    pub started: Option<u64>,
    pub finished: Option<u64>,
    pub error: Option<String>,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveStep {
    Copied(u64),
    Idle,
}

pub fn move_pause(step: MoveStep, rate: u64, busy: bool, took: Duration) -> Duration {
    match step {
        MoveStep::Copied(bytes) => {
            crate::split::split_pause(crate::split::SplitStep::Copied(bytes), rate, busy, took)
        }
        MoveStep::Idle => Duration::from_millis(50),
    }
}

pub(crate) fn key() -> Vec<u8> {
    vec![codec::TAG_MOVE]
}

pub(crate) fn kind_name(k: MoveKind) -> &'static str {
    match k {
        MoveKind::Rebuild => "rebuild",
        MoveKind::Remove => "removal",
        MoveKind::Level => "levelling",
    }
}

impl Engine {
    pub fn rebuild_rate(&self) -> u64 {
        self.rebuild_rate_bytes.load(Ordering::Relaxed)
    }

    pub fn set_rebuild_rate(&self, bytes_per_sec: u64) {
        self.rebuild_rate_bytes
            .store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Starts a job, refusing while another runs.
    pub(crate) fn start_move(
        &self,
        kind: MoveKind,
        device: u32,
        target: Option<u32>,
    ) -> Result<()> {
        let stores = self.stores.as_deref().expect("checked by the caller");
        let mut s = self.state.lock();
        s.check_open()?;
        if let Some(j) = &s.moving {
            if j.finished.is_none() {
                return Err(Error::InvalidArgument(format!(
                    "a {} of device {} is running; wait for it (pool device status --watch)",
                    kind_name(j.kind),
                    j.device
                )));
            }
        }
        let total = match kind {
            MoveKind::Level => 0,
            _ => stores.layout().read().segments_on(device).len() as u64,
        };
        s.moving = Some(MoveJob {
            kind,
            device,
            target,
            started: now_secs(),
            finished: None,
            total_segments: total,
            moved_segments: 0,
            copied_blocks: 0,
            skipped_blocks: 0,
            damage: Vec::new(),
            error: None,
            current: None,
            rate: 0.0,
        });
        s.dirty.moving = true;
        Ok(())
    }

    /// True while a job runs.
    pub(crate) fn moving(&self) -> bool {
        matches!(&self.state.read().moving, Some(j) if j.finished.is_none())
    }

    pub fn move_status(&self) -> Result<MoveInfo> {
        let paths = self.device_paths();
        let path = |d: u32| {
            paths
                .get(d as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{d}"))
        };
        let s = self.state.read();
        s.check_open()?;
        Ok(match &s.moving {
            None => MoveInfo {
                state: "none".into(),
                kind: None,
                device: None,
                target: None,
                progress: 0.0,
                total_segments: 0,
                moved_segments: 0,
                copied_bytes: 0,
                skipped_blocks: 0,
                damage: Vec::new(),
                rate_bytes_per_sec: 0,
                rate_limit_bytes_per_sec: self.rebuild_rate(),
                started: None,
                finished: None,
                error: None,
            },
            Some(j) => MoveInfo {
                state: match (&j.finished, &j.error) {
                    (None, _) => "running",
                    (Some(_), None) => "done",
                    (Some(_), Some(_)) => "failed",
                }
                .into(),
                kind: Some(kind_name(j.kind).into()),
                device: (j.kind != MoveKind::Level).then(|| path(j.device)),
                target: j.target.map(path),
                progress: match (j.finished, j.total_segments) {
                    (Some(_), _) => 1.0,
                    (None, 0) => 0.0,
                    (None, t) => (j.moved_segments as f64 / t as f64).min(0.999),
                },
                total_segments: j.total_segments,
                moved_segments: j.moved_segments,
                copied_bytes: j.copied_blocks * BLOCK_SIZE,
                skipped_blocks: j.skipped_blocks,
                damage: j.damage.clone(),
                rate_bytes_per_sec: if j.finished.is_none() {
                    j.rate as u64
                } else {
                    0
                },
                rate_limit_bytes_per_sec: self.rebuild_rate(),
                started: Some(j.started),
                finished: j.finished,
                error: j.error.clone(),
            },
        })
    }

    /// One batch of the running job.
    pub fn run_move_batch(&self) -> MoveStep {
        match self.move_batch() {
            Ok(step) => step,
            Err(e) => {
                tracing::error!("moving segments: {e}");
                let current = {
                    let mut s = self.state.lock();
                    let Some(j) = s.moving.as_mut().filter(|j| j.finished.is_none()) else {
                        return MoveStep::Idle;
                    };
                    j.error = Some(e.to_string());
                    j.finished = Some(now_secs());
                    let current = j.current.take();
                    s.dirty.moving = true;
                    current
                };
                if let Some(m) = current {
                    self.abandon(m.window_start, m.to);
                }
                self.note(
                    "device-move-failed",
                    "pool",
                    format!("Moving segments stopped: {e}"),
                );
                MoveStep::Idle
            }
        }
    }

    /// Gives up a move: the target segment is free again, the store's
    /// space thawed.
    fn abandon(&self, window_start: u64, to: SegmentRef) {
        if let Some(stores) = self.stores.as_deref() {
            stores.layout().write().free_segment(to);
        }
        self.state.lock().alloc.thaw(window_start);
    }

    fn move_batch(&self) -> Result<MoveStep> {
        let Some(stores) = self.stores.as_deref() else {
            return Ok(MoveStep::Idle);
        };
        let started = Instant::now();
        let current = {
            let s = self.state.read();
            if s.check_open().is_err() {
                return Ok(MoveStep::Idle);
            }
            match &s.moving {
                Some(j) if j.finished.is_none() => j.current.clone(),
                _ => return Ok(MoveStep::Idle),
            }
        };
        let Some(m) = current else {
            return self.begin_next_move().map(|_| MoveStep::Copied(0));
        };
        // Copy a batch of the used blocks of the store's window.
        let gate = crate::sched::acquire("gate.read", || self.gate.try_read(), || self.gate.read());
        let (run, expect, k) = {
            let s = self.state.read();
            match s.alloc.next_used(m.cursor, MOVE_BATCH_BLOCKS) {
                Some(run) if run.start.get() < m.window_end => {
                    let len = run.len.get().min(m.window_end - run.start.get());
                    // A parity store's column is copied by whole stripes
                    // (used runs there are whole stripes already).
                    let (first, k) = s
                        .alloc
                        .stripe_at(run.start.get())
                        .unwrap_or((run.start.get(), 1));
                    let end = first + (run.start.get() + len - first).div_ceil(k) * k;
                    let run = Run::new(first, end.min(m.window_end) - first);
                    let len = run.len.get();
                    let mut expect = Vec::with_capacity(len as usize);
                    if let Some(t) = &s.sums {
                        t.extend_into(run.start, len, &mut expect);
                    }
                    (Some(run), expect, k)
                }
                _ => (None, Vec::new(), 1),
            }
        };
        let Some(run) = run else {
            drop(gate);
            self.finish_move(&m)?;
            return Ok(MoveStep::Copied(0));
        };
        let bs = BLOCK_SIZE as usize;
        let mut buf = vec![0u8; run.len.get() as usize * bs];
        let mut lost = Vec::new();
        let mut row = run.start.get() - m.window_start;
        if k > 1 {
            let rows = run.len.get() / k;
            let (column, gone) = stores
                .parity_column(run.start.get(), rows, m.column, &expect)
                .map_err(Error::Io)?;
            buf = column;
            lost = gone;
            row /= k;
        } else if stores
            .read_checked(&mut buf, run.start.bytes(), &expect)
            .is_err()
        {
            // Block by block: skip what no copy holds right.
            for (i, want) in expect.iter().enumerate() {
                let block = &mut buf[i * bs..(i + 1) * bs];
                let at = run.start.plus(i as u64);
                if stores.read_checked(block, at.bytes(), &[*want]).is_err() {
                    lost.push(at.get());
                }
            }
        }
        let place = stores.layout().read().place_of(m.to, row);
        if let Err(e) = stores.file(m.to.device).write_at(&buf, place.offset) {
            return Err(Error::Io(std::io::Error::new(
                e.kind(),
                format!("writing device {}: {e}", m.to.device),
            )));
        }
        drop(gate);
        let mut s = self.state.lock();
        let mut found = Vec::new();
        for &pba in &lost {
            crate::scrub::owners_of(&s, pba, &mut found);
        }
        let Some(j) = s.moving.as_mut() else {
            return Ok(MoveStep::Idle);
        };
        j.copied_blocks += run.len.get() - lost.len() as u64;
        j.skipped_blocks += lost.len() as u64;
        crate::scrub::remember(&mut j.damage, found);
        if let Some(c) = j.current.as_mut() {
            c.cursor = run.end().get();
        }
        let bytes = run.len.get() * BLOCK_SIZE;
        let now_rate = bytes as f64 / started.elapsed().as_secs_f64().max(1e-6);
        j.rate = if j.rate == 0.0 {
            now_rate
        } else {
            j.rate * 0.8 + now_rate * 0.2
        };
        Ok(MoveStep::Copied(bytes))
    }

    /// Picks the next segment to move and freezes its store, or finishes
    /// the job when none is left.
    fn begin_next_move(&self) -> Result<()> {
        let stores = self.stores.as_deref().expect("checked");
        let (kind, device, target) = {
            let s = self.state.read();
            let j = s.moving.as_ref().expect("checked");
            (j.kind, j.device, j.target)
        };
        let mut layout = stores.layout().write();
        let usable = |d: u32| !stores.errors(d).faulted() && d != device;
        let pick: Option<(usize, usize, u32)> = match kind {
            MoveKind::Rebuild | MoveKind::Remove => {
                layout.segments_on(device).first().and_then(|&(n, c)| {
                    let store = layout.store(n).expect("listed");
                    let taken: Vec<u32> = store.segments.iter().map(|r| r.device).collect();
                    let to = match target {
                        Some(t) => Some(t),
                        None => (0..layout.devices() as u32)
                            .filter(|&d| {
                                usable(d) && !taken.contains(&d) && layout.free_segments(d) > 0
                            })
                            .max_by_key(|&d| (layout.free_segments(d), std::cmp::Reverse(d))),
                    };
                    to.map(|t| (n, c, t))
                })
            }
            MoveKind::Level => {
                let t = target.expect("a levelling job has a target");
                let fullest = (0..layout.devices() as u32)
                    .filter(|&d| d != t && !stores.errors(d).faulted())
                    .max_by_key(|&d| layout.used_segments(d));
                fullest.and_then(|f| {
                    if layout.used_segments(f) <= layout.used_segments(t) + 1
                        || layout.free_segments(t) == 0
                    {
                        return None;
                    }
                    layout.segments_on(f).into_iter().find_map(|(n, c)| {
                        let store = layout.store(n).expect("listed");
                        (!store.segments.iter().any(|r| r.device == t)).then_some((n, c, t))
                    })
                })
            }
        };
        let left = match kind {
            MoveKind::Level => 0,
            _ => layout.segments_on(device).len(),
        };
        let Some((n, c, t)) = pick else {
            drop(layout);
            if left > 0 {
                return Err(Error::NoSpace(format!(
                    "{left} segment(s) of device {device} have nowhere to go: no other device has a free segment outside their stores"
                )));
            }
            return self.finish_job();
        };
        let to = layout.take_segment(t)?;
        let (start, blocks) = layout.window_of(n);
        drop(layout);
        // Freeze the store's space, then wait out writes already in it.
        self.state.lock().alloc.freeze(start);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state.read().in_flight_overlaps(start, blocks) {
            if Instant::now() > deadline {
                self.abandon(start, to);
                return Err(Error::HasDependents(format!(
                    "writes into store {n} did not finish within 30 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut s = self.state.lock();
        let j = s.moving.as_mut().expect("checked");
        j.current = Some(Moving {
            store: n,
            column: c,
            to,
            cursor: start,
            window_start: start,
            window_end: start + blocks,
        });
        Ok(())
    }

    /// The copy of a segment is done: make it durable, point the store at
    /// it, commit, and free the old segment.
    fn finish_move(&self, m: &Moving) -> Result<()> {
        let stores = self.stores.as_deref().expect("checked");
        stores.file(m.to.device).sync().map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("syncing device {}: {e}", m.to.device),
            ))
        })?;
        let old = {
            let mut s = self.state.lock();
            let mut layout = stores.layout().write();
            let old = layout.swap_segment(m.store, m.column, m.to)?;
            let store = layout.store(m.store).expect("exists");
            let record = StoreRecord {
                class: store.class.to_string(),
                segments: store
                    .segments
                    .iter()
                    .map(|r| (r.device, r.segment))
                    .collect(),
            };
            drop(layout);
            s.dirty.layout.push((
                codec::key_u64(codec::TAG_STORE, m.store as u64),
                Some(codec::to_json(&record)),
            ));
            s.alloc.thaw(m.window_start);
            let j = s.moving.as_mut().expect("checked");
            j.current = None;
            j.moved_segments += 1;
            j.total_segments = j.total_segments.max(j.moved_segments);
            s.dirty.moving = true;
            old
        };
        self.flush()?;
        // Reads that began before the swap may still repair the old
        // segment: wait them out before it can be reused.
        let _gate =
            crate::sched::acquire("gate.write", || self.gate.try_write(), || self.gate.write());
        stores.layout().write().free_segment(old);
        Ok(())
    }

    /// Nothing is left to move: a removed or replaced device leaves the
    /// pool.
    fn finish_job(&self) -> Result<()> {
        let (kind, device) = {
            let s = self.state.read();
            let j = s.moving.as_ref().expect("checked");
            (j.kind, j.device)
        };
        if kind != MoveKind::Level {
            self.retire_device(device)?;
        }
        let (moved, skipped) = {
            let mut s = self.state.lock();
            let j = s.moving.as_mut().expect("checked");
            j.finished = Some(now_secs());
            let counts = (j.moved_segments, j.skipped_blocks);
            s.dirty.moving = true;
            counts
        };
        self.flush()?;
        self.note(
            match kind {
                MoveKind::Rebuild => "rebuild-done",
                MoveKind::Remove => "device-removed",
                MoveKind::Level => "level-done",
            },
            &format!("device {device}"),
            format!(
                "The {} finished: {moved} segment(s) moved{}.",
                kind_name(kind),
                if skipped > 0 {
                    format!(", {skipped} block(s) no copy held right were skipped (pool device status names them)")
                } else {
                    String::new()
                }
            ),
        );
        Ok(())
    }
}
