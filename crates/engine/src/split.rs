//! Writable clones and the lazy clone split (MISSION.md C, seeds 001/004).
//!
//! A clone is a LUN whose parent is `(LUN, snapshot epoch)`: what it has not
//! written reads through to the snapshot. The split copies, in batches, every
//! block the clone (or one of its own snapshots) still reads through the
//! parent into blocks the clone owns, then drops the parent link and the pin
//! in one commit.
//!
//! What "reads through" means per block: the block's versions in the clone
//! (history lifetimes and the head) leave *gaps* in the epoch line from the
//! clone's creation on. The head's gap (no current version) is read by the
//! clone; a finite gap is read by the clone's snapshots taken inside it.
//! The split fills every gap someone reads with one copy of the parent's
//! data, shared by all the versions it creates (reference-counted), so that
//! after the parent link goes every reader sees exactly what it saw before.

use crate::engine::{now_secs, resolve_blocks, Engine, Segments, Src};
use crate::map::{Val, Version};
use crate::sched;
use crate::space::{lay_out, Placed, Run};
use crate::state::{SplitJob, SplitState, State};
use crate::types::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Blocks one split batch copies at most (foreground writes to the same
/// blocks wait for one batch at most).
pub const SPLIT_BATCH_BLOCKS: u64 = 256;
/// While foreground reads or writes arrive, a rate-limited split copies at
/// its limit divided by this (an unthrottled one keeps its pace).
pub const SPLIT_YIELD_DIVISOR: u64 = 4;

/// What one call of `run_split_batch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitStep {
    /// Copied this many bytes (0 when the batch found nothing to copy).
    Copied(u64),
    /// A split waits for free space.
    Waiting,
    /// No split is running.
    Idle,
}

/// How long the split thread sleeps after a batch that took `took`, under
/// the pool's rate limit `rate` (bytes per second, 0: none). A rate-limited
/// split yields to foreground I/O: when reads or writes arrived since the
/// last batch (`busy`), it paces itself at a quarter of the limit (the disk
/// is shared; decision 007's addendum).
pub fn split_pause(step: SplitStep, rate: u64, busy: bool, took: Duration) -> Duration {
    let rate = match rate {
        r if busy && r > 0 => (r / SPLIT_YIELD_DIVISOR).max(1),
        r => r,
    };
    match step {
        // Sleep so that copying stays under the rate limit.
        SplitStep::Copied(bytes) if rate > 0 => {
            Duration::from_secs_f64(bytes as f64 / rate as f64).saturating_sub(took)
        }
        SplitStep::Copied(_) => Duration::ZERO,
        SplitStep::Waiting => Duration::from_millis(100),
        SplitStep::Idle => Duration::from_millis(50),
    }
}

/// A gap in one block range's epoch line: `[start, end)`, `end == None`
/// for the head.
type Gap = (u64, Option<u64>);

/// A batch's fills and the runs allocated for them.
type Planned = (Vec<Fill>, Vec<Run>);

struct Fill {
    lba: u64,
    len: u64,
    src: Pba,
    gaps: Vec<Gap>,
}

impl Engine {
    /// Starts (or resumes) splitting a clone from its backing snapshot.
    pub fn start_split(&self, name: &str) -> Result<SplitInfo> {
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let id = s.lun_id(name)?;
            if s.luns[&id].parent.is_none() {
                return Err(Error::InvalidArgument(format!(
                    "LUN \"{name}\" is not a clone (or its split already finished): nothing to split"
                )));
            }
            crate::replica::check_not_replica(&s.luns[&id])?;
            match s.splits.get_mut(&id) {
                Some(job) if job.state == SplitState::Stopped => job.state = SplitState::Running,
                Some(_) => {}
                None => {
                    s.splits.insert(id, new_job());
                }
            }
            s.dirty.splits.insert(id);
        }
        self.flush()?;
        self.note(
            "split-started",
            name,
            format!("Split of clone \"{name}\" started."),
        );
        self.split_status(name)
    }

    /// Stops a split; the clone stays valid and backed, and a later start
    /// resumes where this one stopped.
    pub fn stop_split(&self, name: &str) -> Result<SplitInfo> {
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let id = s.lun_id(name)?;
            let job = s.splits.get_mut(&id).ok_or_else(|| {
                Error::InvalidArgument(format!("no split of LUN \"{name}\" is under way"))
            })?;
            job.state = SplitState::Stopped;
            job.message = None;
            s.dirty.splits.insert(id);
        }
        self.flush()?;
        self.note(
            "split-stopped",
            name,
            format!("Split of clone \"{name}\" stopped; the clone stays backed by its snapshot."),
        );
        self.split_status(name)
    }

    pub fn split_status(&self, name: &str) -> Result<SplitInfo> {
        let s = self.state.lock();
        s.check_open()?;
        let id = s.lun_id(name)?;
        Ok(split_info(&s, id))
    }

    /// Splits under way (running, stopped or waiting) of LUNs whose name
    /// starts with `prefix`.
    pub fn list_splits(&self, prefix: &str) -> Result<Vec<SplitInfo>> {
        let s = self.state.lock();
        s.check_open()?;
        let mut out: Vec<SplitInfo> = s
            .splits
            .keys()
            .filter(|id| s.luns.get(id).is_some_and(|l| l.name.starts_with(prefix)))
            .map(|&id| split_info(&s, id))
            .collect();
        out.sort_by(|a, b| a.lun.cmp(&b.lun));
        Ok(out)
    }

    /// The pool-wide split rate limit in bytes per second (0: unlimited).
    pub fn split_rate(&self) -> u64 {
        self.split_rate_bytes.load(Ordering::Relaxed)
    }

    pub fn set_split_rate(&self, bytes_per_sec: u64) {
        self.split_rate_bytes
            .store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Copies one batch of one running split (round robin over splits).
    pub fn run_split_batch(&self) -> SplitStep {
        let picked = {
            let s = self.state.lock();
            if s.check_open().is_err() {
                return SplitStep::Idle;
            }
            let mut last = self.split_turn.lock();
            let eligible = |(&id, j): (&LunId, &SplitJob)| match j.state {
                SplitState::Running => Some(id),
                SplitState::WaitingForSpace
                    if j.last_batch.is_none_or(|t| t.elapsed().as_millis() >= 500) =>
                {
                    Some(id)
                }
                _ => None,
            };
            let next = s
                .splits
                .range(LunId(last.0 + 1)..)
                .find_map(eligible)
                .or_else(|| s.splits.iter().find_map(eligible));
            if let Some(id) = next {
                *last = id;
            }
            next
        };
        let Some(id) = picked else {
            let waiting = self
                .state
                .lock()
                .splits
                .values()
                .any(|j| j.state == SplitState::WaitingForSpace);
            return if waiting {
                SplitStep::Waiting
            } else {
                SplitStep::Idle
            };
        };
        let phase = |engine: &Engine| {
            let s = engine.state.lock();
            let job = s.splits.get(&id)?;
            Some((
                s.luns.get(&id)?.name.clone(),
                job.state,
                job.message.clone(),
            ))
        };
        let before = phase(self);
        let step = match self.split_batch(id) {
            Ok(step) => step,
            Err(e) => {
                let mut s = self.state.lock();
                if let Some(job) = s.splits.get_mut(&id) {
                    job.message = Some(e.to_string());
                    job.last_batch = Some(Instant::now());
                }
                let name = s.luns.get(&id).map(|l| l.name.clone()).unwrap_or_default();
                drop(s);
                self.events.emit_coalesced(
                    crate::events::Severity::Error,
                    "job-failed",
                    &name,
                    format!("A batch of the split of clone \"{name}\" failed: {e}."),
                );
                SplitStep::Waiting
            }
        };
        match (before, phase(self)) {
            (Some((_, was, _)), Some((name, SplitState::WaitingForSpace, why)))
                if was != SplitState::WaitingForSpace =>
            {
                self.events.emit(
                    crate::events::Severity::Warning,
                    "split-waiting-for-space",
                    &name,
                    format!(
                        "Split of clone \"{name}\" parked: {}.",
                        why.unwrap_or_else(|| "the pool is full".into())
                    ),
                );
            }
            (Some((_, SplitState::WaitingForSpace, _)), Some((name, SplitState::Running, _))) => {
                self.note(
                    "split-resumed",
                    &name,
                    format!("Split of clone \"{name}\" resumed: space was freed."),
                );
            }
            _ => {}
        }
        step
    }

    fn split_batch(&self, id: LunId) -> Result<SplitStep> {
        let (fence, first, end) = {
            let s = self.state.lock();
            let (Some(l), Some(job)) = (s.luns.get(&id), s.splits.get(&id)) else {
                return Ok(SplitStep::Idle);
            };
            (
                l.fence.clone(),
                job.cursor,
                (job.cursor + SPLIT_BATCH_BLOCKS).min(l.parent_limit_blocks),
            )
        };
        if first >= end {
            self.complete_split(id)?;
            return Ok(SplitStep::Copied(0));
        }
        let _stripes = self.lock_stripes(id, first, end - first);
        let _fenced = sched::acquire("fence.read", || fence.try_read(), || fence.read());
        // The gate, shared, as a read holds it: the parent blocks planned
        // below cannot be handed back to the allocator (and reused) until
        // the copy is done, whatever else frees them meanwhile. This holds
        // by construction, for any number of split threads, not because the
        // parent link happens to pin them. A commit with frees waits for at
        // most one batch (SPLIT_BATCH_BLOCKS).
        let _gate = sched::acquire("gate.read", || self.gate.try_read(), || self.gate.read());
        let (fills, runs) = match self.plan_split_batch(id, first, end)? {
            Ok(planned) => planned,
            Err(step) => return Ok(step),
        };
        // Lay the new runs over the fills in order.
        let placed = lay_out(&runs, fills.iter().map(|f| f.len));
        // Copy: under the gate, so the sources stay where they are.
        let striped = matches!(
            self.state.read().lun(id).map(|l| l.class),
            Ok(crate::redundancy::Redundancy::Parity { .. })
        );
        let pieces: Vec<(Pba, Pba, u64)> = placed
            .iter()
            .map(|p| (fills[p.range].src.plus(p.offset), p.pba, p.len))
            .collect();
        let copy_result = self.copy_pieces(&pieces, striped);
        self.data_dirty.store(true, Ordering::Release);
        let (bytes, done) = self.apply_split_batch(id, end, &fills, &placed, runs, copy_result)?;
        drop(_gate);
        drop(_fenced);
        drop(_stripes);
        if done {
            self.complete_split(id)?;
        }
        Ok(SplitStep::Copied(bytes))
    }

    /// A batch's plan, under the state lock: the fills to copy and the
    /// runs allocated for them (reserved until the batch is applied), or
    /// the step to report instead (stopped meanwhile, or no space).
    fn plan_split_batch(
        &self,
        id: LunId,
        first: u64,
        end: u64,
    ) -> Result<Result<Planned, SplitStep>> {
        let mut s = self.state.lock();
        s.check_open()?;
        match s.splits.get(&id) {
            Some(job) if job.cursor == first && job.state != SplitState::Stopped => {}
            _ => return Ok(Err(SplitStep::Idle)),
        }
        let fills = plan_fills(&s, id, first, end);
        let need: u64 = fills.iter().map(|f| f.len).sum();
        let runs = if need == 0 {
            Vec::new()
        } else {
            let class = s.lun(id)?.class;
            let allowed = self.check_reservations(&s, id, class, need).is_ok();
            let got = if allowed {
                self.allocate(&mut s, class, need)
            } else {
                None
            };
            match got {
                Some(runs) => runs,
                None => {
                    let free = s.alloc.free_blocks_of(class);
                    let job = s.splits.get_mut(&id).expect("checked");
                    job.state = SplitState::WaitingForSpace;
                    job.message = Some(format!(
                        "the pool is full ({need} blocks needed, {free} free); the split continues when space is freed"
                    ));
                    job.last_batch = Some(Instant::now());
                    return Ok(Err(SplitStep::Waiting));
                }
            }
        };
        s.reserve(&runs);
        Ok(Ok((fills, runs)))
    }

    /// After the copy: maps the copied blocks into the clone and moves the
    /// job on (or, if the copy failed, frees the runs and fails the pool).
    /// Returns the bytes copied and whether the clone is now complete.
    fn apply_split_batch(
        &self,
        id: LunId,
        end: u64,
        fills: &[Fill],
        placed: &[Placed],
        runs: Vec<Run>,
        copy_result: std::io::Result<()>,
    ) -> Result<(u64, bool)> {
        let copied: u64 = fills.iter().map(|f| f.len).sum();
        let mut s = self.state.lock();
        s.unreserve(&runs);
        if let Err(e) = copy_result {
            for r in runs {
                s.alloc.release(r);
            }
            drop(s);
            return Err(self.data_write_error(e));
        }
        let now = s.epoch;
        let was_empty = s.luns[&id].maps_nothing();
        Engine::pad_sums(&mut s, &runs);
        for &Placed {
            range: i,
            offset: off,
            len,
            pba: dst,
        } in placed
        {
            let f = &fills[i];
            let lba = f.lba + off;
            if let Some(table) = &mut s.sums {
                table.copy(f.src.plus(off), dst, len);
            }
            for (n, &(g0, g1)) in f.gaps.iter().enumerate() {
                if n > 0 {
                    s.refs.incref(Run::at(dst, len));
                }
                let l = s.luns.get_mut(&id).expect("fenced LUN exists");
                l.changes.mark(lba, len, now);
                match g1 {
                    None => l.head.insert(lba, len, Val::Data(dst), g0.min(now)),
                    Some(g1) => l.history.insert_version(
                        lba,
                        len,
                        Version {
                            birth: g0,
                            death: g1,
                            val: Val::Data(dst),
                        },
                    ),
                }
                s.dirty.map_keys += 1;
            }
        }
        if s.luns[&id].maps_nothing() != was_empty {
            s.shape_gen += 1;
        }
        let job = s.splits.get_mut(&id).expect("checked");
        job.cursor = end;
        job.copied_blocks += copied;
        if job.state == SplitState::WaitingForSpace {
            job.state = SplitState::Running;
        }
        job.message = None;
        let bytes = copied * BLOCK_SIZE;
        // The rate is bytes over wall time in windows of at least a second:
        // batches that copy nothing (blocks already written, holes) run back
        // to back, so per-batch figures would be meaningless.
        let now_instant = Instant::now();
        let (start, window_bytes) = job.window.get_or_insert((now_instant, 0));
        *window_bytes += bytes;
        let secs = now_instant.duration_since(*start).as_secs_f64();
        if secs >= 1.0 {
            job.rate = *window_bytes as f64 / secs;
            job.window = Some((now_instant, 0));
        }
        job.last_batch = Some(now_instant);
        s.dirty.splits.insert(id);
        let done = end >= s.luns[&id].parent_limit_blocks;
        Ok((bytes, done))
    }

    /// Every gap is filled: drop the parent link and the pin in one commit.
    fn complete_split(&self, id: LunId) -> Result<()> {
        let removed = {
            let mut s = self.state.lock();
            s.check_open()?;
            let Some(l) = s.luns.get_mut(&id) else {
                return Ok(());
            };
            let Some(parent) = l.parent.take() else {
                return Ok(());
            };
            l.parent_limit_blocks = 0;
            let name = l.name.clone();
            // Clones of this clone may have cached a read path through it.
            s.shape_gen += 1;
            s.chain_gen += 1;
            s.dirty.luns.insert(id);
            if let Some(job) = s.splits.remove(&id) {
                s.finished_splits
                    .push((name.clone(), job.copied_blocks, now_secs()));
                let excess = s.finished_splits.len().saturating_sub(64);
                s.finished_splits.drain(..excess);
            }
            s.dirty.splits.insert(id);
            (name, release_pin(&mut s, parent))
        };
        let (name, removed) = removed;
        self.finish_snapshot_removal(&removed)?;
        self.note(
            "split-finished",
            &name,
            format!("Split of clone \"{name}\" finished: it is independent of its snapshot."),
        );
        Ok(())
    }
}

pub(crate) fn new_job() -> SplitJob {
    SplitJob {
        cursor: 0,
        state: SplitState::Running,
        started: now_secs(),
        copied_blocks: 0,
        rate: 0.0,
        window: None,
        last_batch: None,
        message: None,
    }
}

/// A clone let go of `(LUN, epoch)`: if that snapshot was deleted (hidden)
/// and nothing else reads through it, delete it for real.
pub(crate) fn release_pin(s: &mut State, (lun, epoch): (LunId, Epoch)) -> Vec<(LunId, u64)> {
    let still_pinned = s.luns.values().any(|c| c.parent == Some((lun, epoch)));
    let hidden = s
        .luns
        .get(&lun)
        .and_then(|l| l.snapshots.get(&epoch.0))
        .is_some_and(|sn| sn.hidden);
    if !still_pinned && hidden {
        crate::engine::remove_snapshot(s, lun, epoch.0);
        vec![(lun, epoch.0)]
    } else {
        Vec::new()
    }
}

/// Which blocks of `[first, end)` some reader of clone `id` reads through
/// its parent, with the parent's physical block for each.
fn plan_fills(s: &State, id: LunId, first: u64, end: u64) -> Vec<Fill> {
    let l = &s.luns[&id];
    let Some((parent, pe)) = l.parent else {
        return Vec::new();
    };
    let mut fills = Vec::new();
    let mut pos = first;
    while pos < end {
        let (hl, head) = l.head.lookup(pos, end);
        let (yl, range) = l.history.range_at(pos, pos + hl);
        // Pieces do not straddle the LUN's size: the head's gap counts only
        // inside it.
        let inside = if pos < l.size_blocks {
            l.size_blocks - pos
        } else {
            u64::MAX
        };
        let n = hl.min(yl).min(inside);
        // The epoch line of these blocks, from the clone's creation on.
        let mut lives: Vec<(u64, u64)> = range
            .map(|r| r.versions.iter().map(|v| (v.birth, v.death)).collect())
            .unwrap_or_default();
        if let Some((_, birth)) = head {
            lives.push((birth, u64::MAX));
        }
        lives.sort_unstable();
        let mut gaps = Vec::new();
        let mut t = l.created_epoch;
        for (b, d) in lives {
            if b > t && l.is_seen(t, b) {
                gaps.push((t, Some(b)));
            }
            t = t.max(d);
        }
        if t != u64::MAX {
            if pos < l.size_blocks {
                gaps.push((t, None));
            } else if t < s.epoch && l.is_seen(t, s.epoch) {
                // Past the LUN's size (it shrank) only its older snapshots
                // read these blocks: an old version that ends now serves them.
                gaps.push((t, Some(s.epoch)));
            }
        }
        if !gaps.is_empty() {
            let mut segs = Segments::new();
            resolve_blocks(s, parent, Some(pe.0), pos, pos + n, &mut segs);
            let mut at = pos;
            for (len, src) in segs {
                // Zeros and holes in the parent read as zeros without it.
                if let Src::Data(p) = src {
                    fills.push(Fill {
                        lba: at,
                        len,
                        src: p,
                        gaps: gaps.clone(),
                    });
                }
                at += len;
            }
        }
        pos += n;
    }
    fills
}

fn split_info(s: &State, id: LunId) -> SplitInfo {
    let l = &s.luns[&id];
    let total = l.parent_limit_blocks;
    let parent = l.parent.and_then(|(p, e)| {
        let pl = s.luns.get(&p)?;
        Some(format!(
            "{}@{}",
            pl.name,
            pl.snapshots
                .get(&e.0)
                .map(|sn| sn.name.as_str())
                .unwrap_or("?")
        ))
    });
    match s.splits.get(&id) {
        Some(job) => SplitInfo {
            lun: l.name.clone(),
            parent,
            state: job.state.phase(),
            progress: if total == 0 {
                1.0
            } else {
                job.cursor as f64 / total as f64
            },
            copied_bytes: job.copied_blocks * BLOCK_SIZE,
            total_bytes: total * BLOCK_SIZE,
            rate_bytes_per_sec: if job.state == SplitState::Running {
                job.rate as u64
            } else {
                0
            },
            started: Some(job.started),
            message: job.message.clone(),
        },
        None if l.parent.is_some() => SplitInfo {
            lun: l.name.clone(),
            parent,
            state: SplitPhase::NotStarted,
            progress: 0.0,
            copied_bytes: 0,
            total_bytes: total * BLOCK_SIZE,
            rate_bytes_per_sec: 0,
            started: None,
            message: None,
        },
        None => {
            let copied = s
                .finished_splits
                .iter()
                .rev()
                .find(|(n, _, _)| *n == l.name)
                .map(|(_, c, _)| *c);
            SplitInfo {
                lun: l.name.clone(),
                parent: None,
                state: if copied.is_some() {
                    SplitPhase::Done
                } else {
                    SplitPhase::Independent
                },
                progress: 1.0,
                copied_bytes: copied.unwrap_or(0) * BLOCK_SIZE,
                total_bytes: 0,
                rate_bytes_per_sec: 0,
                started: None,
                message: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_paces_at_its_limit_and_yields_to_foreground_io() {
        let mb = SplitStep::Copied(1_000_000);
        let ms = Duration::from_millis;
        // 1 MB at 100 MB/s: 10 ms a batch, less the time the batch took.
        assert_eq!(split_pause(mb, 100_000_000, false, ms(0)), ms(10));
        assert_eq!(split_pause(mb, 100_000_000, false, ms(4)), ms(6));
        assert_eq!(split_pause(mb, 100_000_000, false, ms(20)), ms(0));
        // Foreground I/O arrived: a quarter of the limit.
        assert_eq!(split_pause(mb, 100_000_000, true, ms(0)), ms(40));
        assert_eq!(split_pause(mb, 100_000_000, true, ms(10)), ms(30));
        // Unlimited stays unlimited, busy or not.
        assert_eq!(split_pause(mb, 0, true, ms(0)), ms(0));
        assert_eq!(split_pause(mb, 0, false, ms(0)), ms(0));
        // A tiny limit does not divide to zero (which would mean unlimited).
        assert!(split_pause(SplitStep::Copied(4096), 3, true, ms(0)) > ms(1000));
        assert_eq!(split_pause(SplitStep::Waiting, 100, true, ms(0)), ms(100));
        assert_eq!(split_pause(SplitStep::Idle, 0, false, ms(0)), ms(50));
    }
}
