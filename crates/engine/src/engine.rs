//! The engine: opening a pool, its background threads, and the commit
//! protocol. The operations every adapter (NBD, REST, CLI) calls are in the
//! concept modules beside this one: `lun`, `snapshot`, `pool`, `datapath`,
//! `split`, `range`, `access`; `catalog` and `load` hold the helpers they
//! share.
//!
//! Locks, always taken in this order: a write's block stripes, then its
//! LUN's fence, then the gate, then the state lock (exclusive for changes,
//! shared for reads and listings: decision 020). The state lock is never
//! held across I/O (simulated runs check it: `sched`).

use crate::events::{EventLog, Severity};
use crate::io::{DataFile, FileData, FjallStore, MetaStore};
use crate::sched;
use crate::state::StateLock;
use crate::types::*;
use parking_lot::{Condvar, Mutex, RwLock};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use crate::catalog::*;
pub(crate) use crate::datapath::*;
pub(crate) use crate::load::*;

/// Tunables; the defaults are what `blockfork serve` uses.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Commit what changed at least this often (a FLUSH commits at once).
    pub commit_interval_ms: u64,
    /// Writers wait for a commit when more map keys than this are dirty.
    pub dirty_keys_max: usize,
    /// History ranges a reclaim job visits per batch.
    pub reclaim_ranges_per_batch: usize,
    /// Pause between reclaim batches, so that reclaim yields to I/O.
    pub reclaim_pause_ms: u64,
    /// Pool-wide clone split rate limit in bytes per second (0: none);
    /// adjustable at run time with `Engine::set_split_rate`.
    pub split_rate_bytes: u64,
    /// The scrub's pace in bytes per second (0: none), adjustable at run
    /// time with `Engine::set_scrub_rate`.
    pub scrub_rate_bytes: u64,
    /// The pace of rebuilds, removals and levelling, bytes per second (0:
    /// none), adjustable with `Engine::set_rebuild_rate`.
    pub rebuild_rate_bytes: u64,
    /// Run the commit and reclaim threads. Tests turn this off and drive
    /// commits (`flush`) and jobs (`run_jobs`) themselves, deterministically.
    pub background: bool,
    /// For a new pool: whether unmapped LUNs are visible to every client
    /// (an open pool) or to none (closed). Existing pools keep their mode.
    pub open_access: bool,
    /// Reads through clone chains of at least this many levels use an owner
    /// index (one search, not one per level; decision 014). `usize::MAX`
    /// turns indexes off.
    pub chain_index_min_levels: usize,
    /// Run the full invariant check (`check_invariants`) after every commit
    /// and stop at the first violation. On in debug builds and in the model
    /// test; it costs a pass over every map entry per commit.
    pub check_after_commit: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            commit_interval_ms: 20,
            dirty_keys_max: 1 << 20,
            reclaim_ranges_per_batch: 4096,
            reclaim_pause_ms: 1,
            split_rate_bytes: 128_000_000,
            scrub_rate_bytes: crate::scrub::SCRUB_RATE_DEFAULT,
            rebuild_rate_bytes: crate::reloc::REBUILD_RATE_DEFAULT,
            background: true,
            open_access: false,
            chain_index_min_levels: crate::chain::CHAIN_INDEX_MIN_LEVELS,
            check_after_commit: cfg!(debug_assertions),
        }
    }
}

/// Lock stripes for block-level write atomicity.
pub(crate) const STRIPES: usize = 1024;

#[derive(Default)]
pub(crate) struct CommitCtl {
    started: u64,
    done: u64,
    running: bool,
}

pub struct Engine {
    pub(crate) state: StateLock,
    pub(crate) data: Box<dyn DataFile>,
    /// A pool on devices: the same data file, with its devices and layout
    /// (None: a pool on one data file).
    pub(crate) stores: Option<Arc<crate::stores::Stores>>,
    pub(crate) store: Mutex<Box<dyn MetaStore>>,
    /// Reads hold it shared while they touch physical blocks; handing freed
    /// blocks back to the allocator takes it exclusive, so a read never sees
    /// a block reused under it.
    pub(crate) gate: RwLock<()>,
    pub(crate) stripes: Vec<Mutex<()>>,
    pub(crate) ctl: Mutex<CommitCtl>,
    pub(crate) ctl_cv: Condvar,
    /// Set by every data write, cleared by the commit that syncs the data.
    pub(crate) data_dirty: AtomicBool,
    /// Pool-wide clone split rate limit, bytes per second (0: none).
    pub(crate) split_rate_bytes: AtomicU64,
    /// The scrub's pace, bytes per second (0: none).
    pub(crate) scrub_rate_bytes: AtomicU64,
    /// The pace of rebuilds, removals and levelling (0: none).
    pub(crate) rebuild_rate_bytes: AtomicU64,
    /// Reads and writes served so far: the split thread slows down while
    /// this moves (see `SPLIT_YIELD_DIVISOR`).
    pub(crate) foreground_ops: AtomicU64,
    /// The split that ran last (round robin).
    pub(crate) split_turn: Mutex<LunId>,
    pub(crate) access_gen: AtomicU64,
    pub(crate) config: EngineConfig,
    pub(crate) stop: AtomicBool,
    pub(crate) threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// One online pool check at a time (each reads a whole copy of the
    /// committed metadata).
    pub(crate) check_turn: Mutex<()>,
    #[cfg(feature = "sim")]
    pub(crate) sim_hooks: crate::sim::Hooks,
    /// What operators are told happened (`GET /api/v1/events`).
    pub(crate) events: EventLog,
    /// Commit counters for the metrics.
    pub(crate) commit_stats: CommitStats,
    /// The pool-fill alert level last reported: 0 none, 80 or 90 (%).
    pub(crate) fill_alert: AtomicU64,
    _lock: Option<std::fs::File>,
}

/// Commits since the pool opened, for `GET /metrics`.
pub struct CommitStats {
    pub commits: AtomicU64,
    pub failures: AtomicU64,
    /// Nanoseconds per commit (data sync, store commit, frees).
    pub latency: telemetry::Histogram,
    /// Metadata keys written per commit.
    pub batch_keys: telemetry::Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            commits: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: telemetry::Histogram::latency(),
            batch_keys: telemetry::Histogram::new(telemetry::histogram::COUNT_BOUNDS),
        }
    }
}

/// Pool fill levels (percent of capacity) that raise an event when crossed
/// upward; one is re-armed when usage drops 5 points below it.
pub const FILL_ALERTS: [u64; 2] = [80, 90];

/// The highest of [`FILL_ALERTS`] that `percent` reaches (0: none).
fn alert_level(percent: u64) -> u64 {
    FILL_ALERTS
        .iter()
        .copied()
        .filter(|&l| percent >= l)
        .max()
        .unwrap_or(0)
}

/// How often an idle pool checks its data file and store.
pub(crate) const DEVICE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Marks the commit in progress as done however `commit_once` ends, so that
/// waiters wake up; if it ends in a panic, the pool is failed first.
struct CommitRun<'a> {
    engine: &'a Engine,
    generation: u64,
}

impl Drop for CommitRun<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.engine.fail("a panic interrupted a commit".into());
        }
        let mut ctl = self.engine.ctl_lock();
        ctl.running = false;
        ctl.done = self.generation;
        self.engine.ctl_cv.notify_all();
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn bytes_to_blocks(bytes: u64) -> u64 {
    bytes / BLOCK_SIZE
}

/// Where a pool's data lives, as given to `open_inner`.
pub(crate) enum Data {
    /// One data file.
    File(Box<dyn DataFile>),
    /// Devices: opened once their layout is loaded.
    Devices(crate::devpool::OpenDevices),
}

/// What an export name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Lun(LunId),
    Snapshot(LunId, Epoch),
}

/// A read's segments: almost always one or two, so kept inline.
pub(crate) type Segments = smallvec::SmallVec<[(u64, Src); 4]>;

/// Where a range of blocks reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    Data(Pba),
    /// Zeros recorded in a map (allocated zeros).
    Zero,
    /// Nothing mapped: zeros, no space.
    Hole,
}

impl Engine {
    /// Opens (or creates, with `capacity_bytes`) the pool in `dir`, holding
    /// an exclusive lock on it for the life of the engine.
    pub fn open_dir(
        dir: &Path,
        capacity_bytes: Option<u64>,
        config: EngineConfig,
    ) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let store = FjallStore::open(&dir.join("meta"))?;
        let existing = read_pool_record(&store)?;
        let capacity_blocks = match (&existing, capacity_bytes) {
            (Some(p), _) => p.capacity_blocks,
            (None, Some(c)) => {
                validate_pool_capacity(c)?;
                c / BLOCK_SIZE
            }
            (None, None) => {
                return Err(Error::InvalidArgument(format!(
                    "{} holds no pool yet; give a capacity to create one",
                    dir.display()
                )))
            }
        };
        let data = FileData::open(&dir.join("data"), capacity_blocks * BLOCK_SIZE)
            .map_err(|e| data_file_growth_error(e, capacity_blocks * BLOCK_SIZE))?;
        Engine::open_inner(
            Data::File(Box::new(data)),
            Box::new(store),
            capacity_blocks,
            config,
            Some(lock),
            EventLog::open(dir),
        )
    }

    /// Opens a pool on any data file and store (tests pass simulated ones).
    /// `capacity_blocks` is used only when the store holds no pool yet.
    pub fn open_with(
        data: Box<dyn DataFile>,
        store: Box<dyn MetaStore>,
        capacity_blocks: u64,
        config: EngineConfig,
    ) -> Result<Arc<Engine>> {
        Engine::open_inner(
            Data::File(data),
            store,
            capacity_blocks,
            config,
            None,
            EventLog::in_memory(),
        )
    }

    pub(crate) fn open_inner(
        data: Data,
        store: Box<dyn MetaStore>,
        capacity_blocks: u64,
        config: EngineConfig,
        lock: Option<std::fs::File>,
        events: EventLog,
    ) -> Result<Arc<Engine>> {
        let (mut state, fresh, on_devices) =
            crate::load::load_pool(store.as_ref(), capacity_blocks)?;
        state.chain_index_min_levels = config.chain_index_min_levels;
        let (data, stores): (Box<dyn DataFile>, _) = match (data, on_devices) {
            (Data::File(data), None) => {
                let bytes = state.alloc.capacity_blocks() * BLOCK_SIZE;
                data.ensure_len(bytes)
                    .map_err(|e| data_file_growth_error(e, bytes))?;
                (data, None)
            }
            (Data::Devices(open), Some(layout)) => {
                let stores = Arc::new(open(layout)?);
                (Box::new(stores.clone()), Some(stores))
            }
            (Data::File(_), Some(_)) => {
                return Err(Error::InvalidArgument(
                    "this pool is on devices: open it with its devices (serve --device)".into(),
                ))
            }
            (Data::Devices(_), None) => {
                return Err(Error::InvalidArgument(
                    "this pool is on one data file, not on devices: open it without --device"
                        .into(),
                ))
            }
        };
        let engine = Arc::new(Engine {
            state: StateLock::new(state),
            data,
            stores,
            store: Mutex::new(store),
            gate: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            ctl: Mutex::new(CommitCtl::default()),
            ctl_cv: Condvar::new(),
            data_dirty: AtomicBool::new(false),
            split_rate_bytes: AtomicU64::new(config.split_rate_bytes),
            scrub_rate_bytes: AtomicU64::new(config.scrub_rate_bytes),
            rebuild_rate_bytes: AtomicU64::new(config.rebuild_rate_bytes),
            foreground_ops: AtomicU64::new(0),
            split_turn: Mutex::new(LunId(0)),
            access_gen: AtomicU64::new(0),
            config,
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            check_turn: Mutex::new(()),
            #[cfg(feature = "sim")]
            sim_hooks: Default::default(),
            events,
            commit_stats: CommitStats::default(),
            fill_alert: AtomicU64::new(0),
            _lock: lock,
        });
        if fresh {
            let mut s = engine.state.lock();
            s.open_access = engine.config.open_access;
            s.dirty.pool = true;
            drop(s);
            engine.flush()?;
        }
        engine
            .check_invariants()
            .map_err(|e| Error::Store(format!("pool failed its consistency check at open: {e}")))?;
        engine.give_up_empty_stores()?;
        // The fill level at open is known, not news: alerts are for
        // crossings from here on (the log keeps the earlier ones).
        engine
            .fill_alert
            .store(engine.fill_level(), Ordering::Relaxed);
        engine.report_faults();
        engine.resume_jobs();
        if engine.config.background {
            engine.start_threads();
        }
        Ok(engine)
    }

    /// Checks that the data file and the metadata store are still there and
    /// working; a failure fails the pool.
    pub(crate) fn check_devices(&self) -> Result<()> {
        let checked = self.data.check();
        self.report_faults();
        if let Err(e) = checked {
            return Err(self.fail(format!("the data file failed: {e}")));
        }
        let checked = self.store_lock().check();
        if let Err(e) = checked {
            return Err(self.fail(format!("the metadata store failed: {e}")));
        }
        Ok(())
    }

    /// Commits what is pending, stops the background threads and refuses
    /// further calls.
    pub fn close(&self) -> Result<()> {
        let flushed = self.flush();
        self.stop.store(true, Ordering::Release);
        for t in self.threads.lock().drain(..) {
            let name = t.thread().name().unwrap_or("background").to_string();
            if t.join().is_err() {
                self.fail(format!("the {name} thread panicked"));
            }
        }
        self.state.lock().closed = true;
        let failed = self.state.lock().failed.clone();
        let closed = if flushed.is_ok() && failed.is_none() {
            self.store_lock().close()
        } else {
            Ok(())
        };
        flushed.and(closed)
    }

    /// The commit control's lock (held while a finished flush looks at the
    /// pool's state).
    pub(crate) fn ctl_lock(&self) -> parking_lot::MutexGuard<'_, CommitCtl> {
        sched::acquire("commit.ctl", || self.ctl.try_lock(), || self.ctl.lock())
    }

    /// The metadata store's lock (held across the store's I/O).
    pub(crate) fn store_lock(&self) -> parking_lot::MutexGuard<'_, Box<dyn MetaStore>> {
        sched::acquire("store", || self.store.try_lock(), || self.store.lock())
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    // ---------------------------------------------------------------- commit

    /// Makes everything done before this call durable: data synced, then the
    /// metadata committed. Concurrent callers share commits.
    pub fn flush(&self) -> Result<()> {
        let mut ctl = self.ctl_lock();
        let target = ctl.started + 1;
        loop {
            if ctl.done >= target {
                drop(ctl);
                return self.state.lock().check_open().or_else(|e| match e {
                    Error::Closed => Ok(()),
                    e => Err(e),
                });
            }
            if !ctl.running {
                ctl.running = true;
                ctl.started += 1;
                let generation = ctl.started;
                drop(ctl);
                let running = CommitRun {
                    engine: self,
                    generation,
                };
                let started = std::time::Instant::now();
                let result = self.commit_once();
                drop(running);
                match &result {
                    Ok(keys) => {
                        let stats = &self.commit_stats;
                        stats.commits.fetch_add(1, Ordering::Relaxed);
                        stats.latency.observe(started.elapsed().as_nanos() as u64);
                        stats.batch_keys.observe(*keys as u64);
                        self.check_fill();
                    }
                    Err(_) => {
                        self.commit_stats.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                result?;
                ctl = self.ctl_lock();
                continue;
            }
            sched::wait("commit.wait", &self.ctl_cv, &mut ctl);
        }
    }

    /// Commits what changed; answers how many metadata keys it wrote.
    pub(crate) fn commit_once(&self) -> Result<usize> {
        let puts = {
            let mut s = self.state.lock();
            if let Some(why) = &s.failed {
                return Err(Error::PoolFailed(why.clone()));
            }
            let frees = std::mem::take(&mut s.pending_free);
            s.committing_free = frees;
            s.refs.begin_commit();
            s.take_dirty()
        };
        if self.data_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.data.sync() {
                return Err(self.fail(format!("syncing the data file: {e}")));
            }
        }
        // Before the store is told anything: a store whose directory was
        // removed accepts commits into files nobody will ever read.
        self.check_devices()?;
        let mut puts = puts;
        puts.extend(self.fault_records());
        let keys = puts.len();
        if !puts.is_empty() {
            // Each key at most once per batch (a deleted LUN's keys can be
            // listed twice, both as deletes): the last entry wins.
            let mut puts = puts;
            puts.reverse();
            puts.sort_by(|a, b| a.0.cmp(&b.0));
            puts.dedup_by(|later, earlier| later.0 == earlier.0);
            if let Err(e) = self.store_lock().commit(&puts) {
                return Err(self.fail(format!("committing metadata: {e}")));
            }
        }
        // The frees are durable: wait out reads that may still use the
        // blocks, then hand them to the allocator. With nothing to free no
        // reader is drained (only this commit sets `committing_free`).
        let frees = !self.state.lock().committing_free.is_empty();
        let _gate = frees
            .then(|| sched::acquire("gate.write", || self.gate.try_write(), || self.gate.write()));
        let mut s = self.state.lock();
        for run in std::mem::take(&mut s.committing_free) {
            s.alloc.release(run);
        }
        s.refs.end_commit();
        if self.config.check_after_commit {
            if let Err(why) = check_state(&s) {
                // Under the state guard: the pool is marked failed (or, in
                // a release build, the process ends) before anything else
                // runs on the broken state.
                panic!(
                    "an invariant is broken after the commit at epoch {}: {why}",
                    s.epoch
                );
            }
        }
        Ok(keys)
    }

    /// Raises `pool-nearly-full` when usage crosses 80 % or 90 % upward,
    /// and re-arms a level once usage is 5 points below it.
    fn check_fill(&self) {
        let (used, capacity) = self.usage_blocks();
        if capacity == 0 {
            return;
        }
        let percent = used * 100 / capacity;
        let level = self.fill_alert.load(Ordering::Relaxed);
        let reached = alert_level(percent);
        if reached > level {
            if self
                .fill_alert
                .compare_exchange(level, reached, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.events.emit(
                    Severity::Warning,
                    "pool-nearly-full",
                    "pool",
                    format!(
                        "The pool is {percent} % full ({} of {} bytes used): free space by deleting snapshots or LUNs, or grow it with `blockfork pool set --capacity`.",
                        used * BLOCK_SIZE,
                        capacity * BLOCK_SIZE
                    ),
                );
            }
        } else if level > 0 && percent + 5 < level {
            let rearmed = alert_level(percent + 5);
            if self
                .fill_alert
                .compare_exchange(level, rearmed, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.events.emit(
                    Severity::Info,
                    "pool-space-recovered",
                    "pool",
                    format!("The pool is back to {percent} % full."),
                );
            }
        }
    }

    /// Blocks in use and the capacity.
    fn usage_blocks(&self) -> (u64, u64) {
        let s = self.state.lock();
        self.usage_in(&s)
    }

    /// The highest fill alert level the pool is at now (0: none).
    fn fill_level(&self) -> u64 {
        let (used, capacity) = self.usage_blocks();
        alert_level((used * 100).checked_div(capacity).unwrap_or(0))
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Commit counters since the pool opened.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.commit_stats
    }

    /// Fails the pool (once: the first cause is the one kept, logged and
    /// reported; later failures are its consequences).
    pub(crate) fn fail(&self, why: String) -> Error {
        let mut s = self.state.lock();
        if let Some(first) = &s.failed {
            let first = first.clone();
            drop(s);
            tracing::debug!("after the pool failed: {why}");
            return Error::PoolFailed(first);
        }
        s.failed = Some(why.clone());
        drop(s);
        self.events.emit(
            Severity::Error,
            "pool-failed",
            "pool",
            format!("The pool failed: {why}; it serves no more I/O until the server restarts."),
        );
        Error::PoolFailed(why)
    }

    /// Writers call this after changing maps, so that dirty state stays bounded.
    pub(crate) fn throttle_dirty(&self) -> Result<()> {
        let over = self.state.lock().dirty.map_keys > self.config.dirty_keys_max;
        if over {
            self.flush()?;
        }
        Ok(())
    }
}
