//! Scrub (issue 14, decision 029): read every used block of a pool on
//! devices, check every copy against its checksum, rewrite the copies that
//! fail from one that passes, and name what no copy has right.
//!
//! The job walks physical blocks in order, a batch at a time, under the
//! read gate (so no block it reads is freed and reused meanwhile), skipping
//! free space and blocks a write has in flight. Its cursor and counts are
//! committed with the pool's other metadata, so a restart resumes where it
//! was. It is paced by `scrub_rate` and slows to a quarter of it while
//! reads and writes arrive, like the clone split.

use crate::codec;
use crate::engine::*;
use crate::map::Val;
use crate::state::State;
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Blocks one batch scrubs: 4 MiB (1 MiB batches measured 0.32× raw reads).
pub const SCRUB_BATCH_BLOCKS: u64 = 1024;
/// The default pace of a scrub: 64 MB/s (decision 029).
pub const SCRUB_RATE_DEFAULT: u64 = 64_000_000;
/// Damaged ranges remembered (the first ones found).
pub const DAMAGE_MAX: usize = 64;

/// Where a scrub is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScrubPhase {
    Running,
    Stopped,
    Done,
}

/// A range of a LUN (or of one of its snapshots) that no copy holds right.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Damage {
    pub lun: String,
    /// The snapshot whose version it is (None: the LUN's current content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub offset_bytes: u64,
    pub length_bytes: u64,
}

/// A scrub job, as committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrubJob {
    pub phase: ScrubPhase,
    /// The next physical block to look at.
    pub cursor: u64,
    pub started: u64,
    #[serde(default)]
    pub finished: Option<u64>,
    /// Used blocks when it started (for progress).
    pub total_blocks: u64,
    /// Used blocks scrubbed so far.
    pub scanned_blocks: u64,
    /// Block copies that failed (read error or checksum).
    pub bad_copies: u64,
    pub repaired_copies: u64,
    /// Blocks no copy has right.
    pub lost_blocks: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<Damage>,
    /// Bytes per second of the last batches (not committed).
    #[serde(skip)]
    pub rate: f64,
    #[serde(skip)]
    pub last_batch: Option<Instant>,
}

/// What `pool scrub status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrubInfo {
    /// `never`, `running`, `stopped` or `done`.
    pub state: String,
    /// 0.0 to 1.0
    pub progress: f64,
    pub scanned_bytes: u64,
    pub total_bytes: u64,
    pub bad_copies: u64,
    pub repaired_copies: u64,
    pub lost_blocks: u64,
    pub damage: Vec<Damage>,
    pub rate_bytes_per_sec: u64,
    /// The pace it is held to (0: none).
    pub rate_limit_bytes_per_sec: u64,
    pub started: Option<u64>,
    pub finished: Option<u64>,
}

/// What one scrub batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubStep {
    /// Scrubbed this many bytes.
    Scanned(u64),
    /// Nothing to do.
    Idle,
}

/// How long the scrub thread sleeps after a batch that took `took`.
pub fn scrub_pause(step: ScrubStep, rate: u64, busy: bool, took: Duration) -> Duration {
    match step {
        ScrubStep::Scanned(bytes) => {
            crate::split::split_pause(crate::split::SplitStep::Copied(bytes), rate, busy, took)
        }
        ScrubStep::Idle => Duration::from_millis(100),
    }
}

/// Where data block `pba` is mapped: LUN ranges (current or snapshot).
pub(crate) fn owners_of(s: &State, pba: u64, out: &mut Vec<Damage>) {
    for l in s.luns.values() {
        for (lba, e) in l.head.iter() {
            if let Val::Data(p) = e.val {
                if p.get() <= pba && pba < p.get() + e.len {
                    out.push(Damage {
                        lun: l.name.clone(),
                        snapshot: None,
                        offset_bytes: (lba + pba - p.get()) * BLOCK_SIZE,
                        length_bytes: BLOCK_SIZE,
                    });
                }
            }
        }
        for (lba, r) in l.history.iter() {
            for v in &r.versions {
                if let Val::Data(p) = v.val {
                    if p.get() <= pba && pba < p.get() + r.len {
                        let snapshot = l
                            .snapshots
                            .range(v.birth..v.death)
                            .next()
                            .map(|(_, sn)| sn.name.clone());
                        out.push(Damage {
                            lun: l.name.clone(),
                            snapshot,
                            offset_bytes: (lba + pba - p.get()) * BLOCK_SIZE,
                            length_bytes: BLOCK_SIZE,
                        });
                    }
                }
            }
        }
    }
}

/// Adds damaged ranges to a list, merging neighbours, keeping at most
/// `DAMAGE_MAX`.
pub(crate) fn remember(list: &mut Vec<Damage>, found: Vec<Damage>) {
    for d in found {
        if let Some(last) = list.iter_mut().find(|x| {
            x.lun == d.lun
                && x.snapshot == d.snapshot
                && x.offset_bytes + x.length_bytes == d.offset_bytes
        }) {
            last.length_bytes += d.length_bytes;
        } else if list.len() < DAMAGE_MAX && !list.contains(&d) {
            list.push(d);
        }
    }
}

impl Engine {
    /// A read found no good copy of `[lba, lba+n)` of `target`: remembered
    /// for `pool status`, logged, and answered as an I/O error.
    pub(crate) fn lost(&self, target: Target, lba: u64, n: u64, e: std::io::Error) -> Error {
        let (id, at) = match target {
            Target::Lun(id) => (id, None),
            Target::Snapshot(id, e) => (id, Some(e.0)),
        };
        let mut s = self.state.lock();
        if let Some(l) = s.luns.get(&id) {
            let d = Damage {
                lun: l.name.clone(),
                snapshot: at
                    .and_then(|e| l.snapshots.get(&e))
                    .map(|sn| sn.name.clone()),
                offset_bytes: lba * BLOCK_SIZE,
                length_bytes: n * BLOCK_SIZE,
            };
            tracing::error!(lun = %d.lun, offset = d.offset_bytes, length = d.length_bytes, "no copy verifies: {e}");
            let mut damage = std::mem::take(&mut s.damage);
            remember(&mut damage, vec![d]);
            s.damage = damage;
        }
        Error::Io(e)
    }

    /// Ranges found with no good copy since the pool opened.
    pub fn damage(&self) -> Vec<Damage> {
        self.state.read().damage.clone()
    }

    fn need_devices(&self) -> Result<&crate::stores::Stores> {
        self.stores.as_deref().ok_or_else(|| {
            Error::InvalidArgument(
                "scrub needs a pool on devices (serve --device): a pool on one data file keeps no checksums".into(),
            )
        })
    }

    /// Starts a scrub from the first block (or resumes a stopped one).
    pub fn scrub_start(&self) -> Result<ScrubInfo> {
        self.need_devices()?;
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let resume = matches!(&s.scrub, Some(j) if j.phase != ScrubPhase::Done);
            if resume {
                let job = s.scrub.as_mut().expect("checked");
                job.phase = ScrubPhase::Running;
            } else {
                let used = s.alloc.capacity_blocks() - s.alloc.free_blocks();
                s.scrub = Some(ScrubJob {
                    phase: ScrubPhase::Running,
                    cursor: 0,
                    started: now_secs(),
                    finished: None,
                    total_blocks: used,
                    scanned_blocks: 0,
                    bad_copies: 0,
                    repaired_copies: 0,
                    lost_blocks: 0,
                    damage: Vec::new(),
                    rate: 0.0,
                    last_batch: None,
                });
            }
            s.dirty.scrub = true;
        }
        self.flush()?;
        self.note(
            "scrub-started",
            "pool",
            "A scrub of the pool started.".into(),
        );
        self.scrub_status()
    }

    /// Stops a running scrub where it is; `scrub_start` resumes it.
    pub fn scrub_stop(&self) -> Result<ScrubInfo> {
        self.need_devices()?;
        {
            let mut s = self.state.lock();
            s.check_open()?;
            match s.scrub.as_mut() {
                Some(j) if j.phase == ScrubPhase::Running => j.phase = ScrubPhase::Stopped,
                _ => return Err(Error::InvalidArgument("no scrub is running".into())),
            }
            s.dirty.scrub = true;
        }
        self.flush()?;
        self.scrub_status()
    }

    pub fn scrub_status(&self) -> Result<ScrubInfo> {
        let s = self.state.read();
        s.check_open()?;
        let limit = self.scrub_rate();
        Ok(match &s.scrub {
            None => ScrubInfo {
                state: "never".into(),
                progress: 0.0,
                scanned_bytes: 0,
                total_bytes: 0,
                bad_copies: 0,
                repaired_copies: 0,
                lost_blocks: 0,
                damage: Vec::new(),
                rate_bytes_per_sec: 0,
                rate_limit_bytes_per_sec: limit,
                started: None,
                finished: None,
            },
            Some(j) => ScrubInfo {
                state: match j.phase {
                    ScrubPhase::Running => "running",
                    ScrubPhase::Stopped => "stopped",
                    ScrubPhase::Done => "done",
                }
                .into(),
                progress: match (j.phase, j.total_blocks) {
                    (ScrubPhase::Done, _) => 1.0,
                    (_, 0) => 0.0,
                    (_, t) => (j.scanned_blocks as f64 / t as f64).min(0.999),
                },
                scanned_bytes: j.scanned_blocks * BLOCK_SIZE,
                total_bytes: j.total_blocks.max(j.scanned_blocks) * BLOCK_SIZE,
                bad_copies: j.bad_copies,
                repaired_copies: j.repaired_copies,
                lost_blocks: j.lost_blocks,
                damage: j.damage.clone(),
                rate_bytes_per_sec: if j.phase == ScrubPhase::Running {
                    j.rate as u64
                } else {
                    0
                },
                rate_limit_bytes_per_sec: limit,
                started: Some(j.started),
                finished: j.finished,
            },
        })
    }

    pub fn scrub_rate(&self) -> u64 {
        self.scrub_rate_bytes.load(Ordering::Relaxed)
    }

    /// Sets the scrub's pace, bytes per second (0: none).
    pub fn set_scrub_rate(&self, bytes_per_sec: u64) {
        self.scrub_rate_bytes
            .store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Scrubs one batch of a running scrub.
    pub fn run_scrub_batch(&self) -> ScrubStep {
        match self.scrub_batch() {
            Ok(step) => step,
            Err(e) => {
                tracing::error!("scrub: {e}");
                ScrubStep::Idle
            }
        }
    }

    fn scrub_batch(&self) -> Result<ScrubStep> {
        let Some(stores) = self.stores.as_deref() else {
            return Ok(ScrubStep::Idle);
        };
        let started = Instant::now();
        let _gate =
            crate::sched::acquire("gate.read", || self.gate.try_read(), || self.gate.read());
        let (run, expect) = {
            let mut s = self.state.lock();
            if s.check_open().is_err() {
                return Ok(ScrubStep::Idle);
            }
            let Some(cursor) = s
                .scrub
                .as_ref()
                .filter(|j| j.phase == ScrubPhase::Running)
                .map(|j| j.cursor)
            else {
                return Ok(ScrubStep::Idle);
            };
            let Some(run) = s.alloc.next_used(cursor, SCRUB_BATCH_BLOCKS) else {
                let job = s.scrub.as_mut().expect("checked");
                job.phase = ScrubPhase::Done;
                job.finished = Some(now_secs());
                let (repaired, lost) = (job.repaired_copies, job.lost_blocks);
                s.dirty.scrub = true;
                drop(s);
                let severity = if lost > 0 {
                    "could not repair"
                } else {
                    "found nothing it could not repair"
                };
                self.note(
                    "scrub-done",
                    "pool",
                    format!(
                        "The scrub finished: {repaired} block copies repaired; it {severity}{}.",
                        if lost > 0 {
                            format!(" ({lost} blocks lost: pool scrub status names them)")
                        } else {
                            String::new()
                        }
                    ),
                );
                return Ok(ScrubStep::Idle);
            };
            // One read for the batch's window: the used runs in it (of
            // one region), the free blocks between them read and skipped,
            // so that space fragmented by redirected writes is still read
            // in large requests. Blocks being written now are skipped too
            // (their checksums are not set yet; the next scrub sees them).
            // Parity stores are scrubbed by whole stripes (their used runs
            // are whole stripes; a resumed cursor may not be).
            let (start, k) = s
                .alloc
                .stripe_at(run.start.get())
                .unwrap_or((run.start.get(), 1));
            let region_end = s.alloc.region_end(start).unwrap_or(start + run.len.get());
            let window_end = (start + SCRUB_BATCH_BLOCKS / k * k).min(region_end);
            let mut runs = vec![run];
            let mut pos = run.end().get();
            while pos < window_end {
                match s.alloc.next_used(pos, window_end - pos) {
                    Some(r) if r.start.get() < window_end => {
                        pos = r.end().get();
                        runs.push(r);
                    }
                    _ => break,
                }
            }
            let end = runs
                .last()
                .expect("one at least")
                .end()
                .get()
                .min(window_end);
            let mut expect: Vec<Option<u32>> = vec![None; (end - start) as usize];
            if let Some(table) = &s.sums {
                for r in &runs {
                    let (a, b) = (r.start.get(), r.end().get().min(end));
                    if s.in_flight_overlaps(a, b - a) {
                        continue;
                    }
                    let mut sums = Vec::with_capacity((b - a) as usize);
                    table.extend_into(r.start, b - a, &mut sums);
                    for (i, sum) in sums.into_iter().enumerate() {
                        expect[(a - start) as usize + i] = Some(sum);
                    }
                }
            }
            (crate::space::Run::new(start, end - start), expect)
        };
        let report = stores.scrub(run.start.bytes(), &expect);
        let mut s = self.state.lock();
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                if let Some(j) = s.scrub.as_mut() {
                    j.phase = ScrubPhase::Stopped;
                }
                s.dirty.scrub = true;
                return Err(Error::Io(e));
            }
        };
        let mut found = Vec::new();
        for &b in &report.lost {
            owners_of(&s, run.start.get() + b as u64, &mut found);
        }
        if !found.is_empty() {
            let mut damage = std::mem::take(&mut s.damage);
            remember(&mut damage, found.clone());
            s.damage = damage;
        }
        let Some(job) = s.scrub.as_mut() else {
            return Ok(ScrubStep::Idle);
        };
        let checked = expect.iter().filter(|e| e.is_some()).count() as u64;
        job.cursor = run.end().get();
        job.scanned_blocks += checked;
        job.bad_copies += report.bad;
        job.repaired_copies += report.repaired;
        job.lost_blocks += report.lost.len() as u64;
        remember(&mut job.damage, found);
        let bytes = checked * BLOCK_SIZE;
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        let now_rate = bytes as f64 / secs;
        job.rate = if job.rate == 0.0 {
            now_rate
        } else {
            job.rate * 0.8 + now_rate * 0.2
        };
        job.last_batch = Some(Instant::now());
        s.dirty.scrub = true;
        if report.repaired > 0 || !report.lost.is_empty() {
            // Repairs are durable before the cursor passes them.
            self.data_dirty.store(true, Ordering::Release);
        }
        Ok(ScrubStep::Scanned(bytes))
    }
}

/// The scrub record's key.
pub(crate) fn key() -> Vec<u8> {
    vec![codec::TAG_SCRUB]
}
