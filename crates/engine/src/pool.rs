//! Background jobs, pool status and growth, and the invariant check.

use crate::engine::*;
use crate::map::Val;
use crate::sched;
use crate::state::GcJob;
use crate::types::*;

impl Engine {
    // ------------------------------------------------------------------ jobs

    pub(crate) fn resume_jobs(&self) {
        let mut s = self.state.lock();
        let ids: Vec<LunId> = s
            .luns
            .values()
            .filter(|l| l.gc_needed)
            .map(|l| l.id)
            .collect();
        for id in ids {
            let job_id = s.next_job_id;
            s.next_job_id += 1;
            let ranges_total = s.luns[&id].history.len() as u64;
            s.jobs.insert(
                id,
                GcJob {
                    id: job_id,
                    lun: id,
                    cursor: 0,
                    ranges_done: 0,
                    ranges_total,
                    rescan: false,
                    started: now_secs(),
                    freed_blocks: 0,
                },
            );
        }
    }

    /// Runs one batch of one job (a chain index a read asked for, or a
    /// batch of a reclaim); false when there is nothing to do.
    pub fn run_job_batch(&self) -> bool {
        if self.build_chain_index() {
            return true;
        }
        let mut s = self.state.lock();
        if s.check_open().is_err() {
            return false;
        }
        let Some((&id, job)) = s.jobs.iter().next() else {
            return false;
        };
        let mut job = job.clone();
        let batch = self.config.reclaim_ranges_per_batch.max(1);
        let Some(l) = s.luns.get_mut(&id) else {
            s.jobs.remove(&id);
            return true;
        };
        if !l.gc_needed {
            l.gc_needed = true;
            s.dirty.luns.insert(id);
        }
        let l = s.luns.get_mut(&id).expect("checked");
        let snapshots: Vec<u64> = l
            .snapshots
            .keys()
            .copied()
            .chain(l.deleting.iter().copied())
            .collect();
        let seen = |birth: u64, death: u64| snapshots.iter().any(|&e| birth <= e && e < death);
        let before = l.maps_nothing();
        let (dropped, next) = l
            .history
            .collect_garbage(job.cursor, batch, |v| seen(v.birth, v.death));
        let reshaped = l.maps_nothing() != before;
        job.ranges_done += batch.min(l.history.len().max(1)) as u64;
        if reshaped {
            s.shape_gen += 1;
        }
        for piece in &dropped {
            s.release(piece);
            if let Val::Data(_) = piece.val {
                job.freed_blocks += piece.len.get();
            }
        }
        s.dirty.map_keys += dropped.len();
        match next {
            Some(cursor) => {
                job.cursor = cursor;
                s.jobs.insert(id, job);
            }
            None if job.rescan => {
                job.cursor = 0;
                job.rescan = false;
                s.jobs.insert(id, job);
            }
            None => {
                s.jobs.remove(&id);
                job.ranges_done = job.ranges_total;
                s.finished_jobs.push(job);
                let excess = s.finished_jobs.len().saturating_sub(64);
                s.finished_jobs.drain(..excess);
                let l = s.luns.get_mut(&id).expect("checked");
                // Snapshots being deleted kept their versions: the flag
                // stays until their removal's own job is done.
                if l.deleting.is_empty() {
                    l.gc_needed = false;
                    s.dirty.luns.insert(id);
                }
            }
        }
        true
    }

    /// Runs jobs until none is left (tests; `serve` runs them in the background).
    pub fn run_jobs(&self) {
        while self.run_job_batch() {}
    }

    /// Builds one chain index a read asked for: its source is collected
    /// under the shared state lock (reads go on; a writer waits for one
    /// pass over the upper levels' maps), the index itself is built with
    /// no lock held, and installed only if nothing it depends on changed
    /// meanwhile. False when no index is wanted.
    pub(crate) fn build_chain_index(&self) -> bool {
        let source = {
            let s = self.state.read();
            if s.check_open().is_err() {
                return false;
            }
            s.take_chain_source()
        };
        let Some(source) = source else {
            return false;
        };
        let (top, gen, built) = source.build();
        self.state.read().install_chain_index(top, gen, built);
        true
    }

    pub fn jobs(&self) -> Vec<JobInfo> {
        let s = self.state.lock();
        let job_info = |j: &GcJob, state: JobState| JobInfo {
            id: j.id,
            kind: "snapshot-reclaim".into(),
            lun: s
                .luns
                .get(&j.lun)
                .map(|l| l.name.clone())
                .unwrap_or_default(),
            state,
            progress: if j.ranges_total == 0 {
                1.0
            } else {
                (j.ranges_done as f64 / j.ranges_total as f64).min(1.0)
            },
            freed_bytes: j.freed_blocks * BLOCK_SIZE,
            started: j.started,
        };
        s.jobs
            .values()
            .map(|j| job_info(j, JobState::Running))
            .chain(s.finished_jobs.iter().map(|j| job_info(j, JobState::Done)))
            .collect()
    }

    // ------------------------------------------------------------------ pool

    pub fn pool_status(&self) -> Result<PoolStatus> {
        let s = self.state.lock();
        s.check_open()?;
        let (used, capacity) = self.usage_in(&s);
        let free = capacity - used;
        let faulted = self.faulted_devices();
        Ok(PoolStatus {
            capacity_bytes: capacity * BLOCK_SIZE,
            used_bytes: (capacity - free) * BLOCK_SIZE,
            free_bytes: free * BLOCK_SIZE,
            luns: s.luns.len() as u64,
            snapshots: s.luns.values().map(|l| l.snapshots.len() as u64).sum(),
            group_snapshots: s.groups.len() as u64,
            epoch: s.epoch,
            jobs_running: s.jobs.len() as u64,
            created: s.created,
            access: if s.open_access { "open" } else { "closed" }.to_string(),
            state: if faulted > 0 { "degraded" } else { "online" }.into(),
            devices: self.device_count() as u64,
            faulted_devices: faulted,
            redundancy: self.default_class(&s).to_string(),
            damage: s.damage.clone(),
            reserved_bytes: crate::reserve::reserved_raw(&s, None) * BLOCK_SIZE,
        })
    }

    /// Grows the pool's capacity (never shrinks it).
    pub fn grow_pool(&self, capacity_bytes: u64) -> Result<PoolStatus> {
        validate_pool_capacity(capacity_bytes)?;
        if self.stores.is_some() {
            return Err(Error::InvalidArgument(
                "a pool on devices grows by adding devices (pool device add), not by a capacity"
                    .into(),
            ));
        }
        {
            let s = self.state.lock();
            s.check_open()?;
            if capacity_bytes / BLOCK_SIZE < s.alloc.capacity_blocks() {
                return Err(Error::InvalidArgument("a pool cannot shrink".into()));
            }
        }
        self.data
            .ensure_len(capacity_bytes)
            .map_err(|e| data_file_growth_error(e, capacity_bytes))?;
        {
            let mut s = self.state.lock();
            // A concurrent grow may have gone further meanwhile.
            if capacity_bytes / BLOCK_SIZE > s.alloc.capacity_blocks() {
                s.alloc.grow(capacity_bytes / BLOCK_SIZE);
                s.dirty.pool = true;
            }
        }
        self.flush()?;
        self.note(
            "pool-grown",
            "pool",
            format!("The pool's capacity is now {capacity_bytes} bytes."),
        );
        self.pool_status()
    }

    // ------------------------------------------------------------ invariants

    /// Checks DESIGN.md's invariants on the in-memory state: every block is
    /// free, referenced, or in flight, never two of these; reference counts
    /// equal references; history lifetimes do not overlap; when no reclaim
    /// is pending, every history version is seen by a snapshot.
    pub fn check_invariants(&self) -> Result<(), String> {
        let s = self.state.lock();
        check_state(&s)
    }

    /// The invariant check, online (`blockfork pool check`). Two passes:
    /// 1. What a restart would recover: after a commit, a consistent view of
    ///    the metadata store is read back through the same code that opens
    ///    a pool, and every invariant checked on it, holding no lock that
    ///    I/O needs (the view is the store's own snapshot).
    /// 2. The live maps, one LUN at a time, each under the state lock for
    ///    as long as that LUN's maps take to walk.
    ///
    /// A violation is reported, not acted on: the pool keeps serving, and
    /// the operator decides (the commit-time check, when on, stops it).
    pub fn check_pool(&self) -> Result<PoolCheck> {
        let _turn = sched::acquire(
            "check",
            || self.check_turn.try_lock(),
            || self.check_turn.lock(),
        );
        let started = std::time::Instant::now();
        self.flush()?;
        let capacity = {
            let s = self.state.lock();
            s.check_open()?;
            s.alloc.capacity_blocks()
        };
        let view = self.store_lock().snapshot()?;
        let mut problems = Vec::new();
        let mut report = PoolCheck {
            ok: false,
            problems: Vec::new(),
            epoch: 0,
            luns: 0,
            snapshots: 0,
            map_entries: 0,
            elapsed_ms: 0,
            longest_hold_us: 0,
        };
        match load_state(view.as_ref(), capacity) {
            Err(e) => problems.push(format!("the committed metadata does not load: {e}")),
            Ok((durable, _)) => {
                report.epoch = durable.epoch;
                report.luns = durable.luns.len() as u64;
                for l in durable.luns.values() {
                    report.snapshots += l.snapshots.len() as u64;
                    report.map_entries += (l.head.iter().count() + l.history.iter().count()) as u64;
                }
                if let Err(why) = check_state(&durable) {
                    problems.push(format!("committed state: {why}"));
                }
            }
        }
        drop(view);
        let ids: Vec<LunId> = self.state.lock().luns.keys().copied().collect();
        for id in ids {
            let held = std::time::Instant::now();
            let s = self.state.lock();
            s.check_open()?;
            if let Some(l) = s.luns.get(&id) {
                if let Err(why) = check_lun(&s, l) {
                    problems.push(format!("live maps: {why}"));
                }
            }
            drop(s);
            report.longest_hold_us = report
                .longest_hold_us
                .max(held.elapsed().as_micros() as u64);
        }
        for p in &problems {
            tracing::error!("pool check: {p}");
        }
        report.ok = problems.is_empty();
        report.problems = problems;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            ok = report.ok,
            epoch = report.epoch,
            map_entries = report.map_entries,
            elapsed_ms = report.elapsed_ms,
            longest_hold_us = report.longest_hold_us,
            "pool check finished"
        );
        Ok(report)
    }
}
