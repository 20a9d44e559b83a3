//! The engine's in-memory state: every LUN's maps, the space structures, and
//! what changed since the last commit. Everything here runs under the
//! engine's state mutex and does no I/O.

use crate::codec::{self, GroupRecord, LunRecord, PoolRecord, SnapshotRecord};
use crate::io::MetaPut;
use crate::map::{HeadMap, HistoryMap, Piece, Val};
use crate::space::{RefCounts, Run};
use crate::types::{Epoch, Error, LunId, Result};
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// LUN ids are small sequential integers from our own counter, never from
/// outside, so a multiplicative hash is enough (SipHash costs a measurable
/// share of a 4 KiB read).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type LunMap<V> = HashMap<LunId, V, std::hash::BuildHasherDefault<IdHasher>>;

pub struct Snapshot {
    pub name: String,
    pub created: u64,
    pub size_blocks: u64,
    pub group: Option<String>,
    /// Deleted, but a clone still reads through it.
    pub hidden: bool,
    /// Who needs this snapshot kept (a mirror relationship's name): while
    /// any holds it, deleting it is refused.
    pub holds: BTreeSet<String>,
}

pub struct Lun {
    pub id: LunId,
    pub name: String,
    pub size_blocks: u64,
    pub created: u64,
    pub parent: Option<(LunId, Epoch)>,
    /// Blocks at or past this never read through the parent (the clone's
    /// size at creation).
    pub parent_limit_blocks: u64,
    /// For a clone: the epoch it was created at.
    pub created_epoch: u64,
    /// Snapshots by epoch, hidden ones included.
    pub snapshots: BTreeMap<u64, Snapshot>,
    /// Epochs of deleted snapshots whose deletion is not yet durable, or
    /// whose garbage has not been collected yet: writes must still treat
    /// them as seen, or a crash could bring back a snapshot whose blocks were
    /// overwritten in place.
    pub deleting: Vec<u64>,
    pub gc_needed: bool,
    pub head: HeadMap,
    pub history: HistoryMap,
    /// Cached `(shape_gen, target)` of `through()`.
    pub through_cache: parking_lot::Mutex<Option<(u64, Option<Through>)>>,
    /// Cached `((shape_gen, chain_gen), index)` of the chain index this
    /// LUN's reads fall through to.
    pub chain_cache: parking_lot::Mutex<Option<crate::chain::CachedIndex>>,
    /// Igroups this LUN is mapped to.
    pub maps: BTreeSet<String>,
    /// Writes hold it shared; snapshot, restore, resize and delete hold it
    /// exclusive, so that they see no write half done.
    pub fence: Arc<RwLock<()>>,
    /// A mirror destination: read-only to clients, who read the last
    /// complete snapshot while transfers change the head.
    pub replica: Option<Replica>,
    /// Where the maps last changed, by page: what a snapshot difference
    /// visits.
    pub changes: crate::changes::ChangeIndex,
    /// Where the LUN's new blocks go: stores of this redundancy class.
    pub class: crate::redundancy::Redundancy,
    /// Thick: its whole size is reserved (`lun create --reserve`).
    pub thick: bool,
    /// A share of its size reserved for what its snapshots keep.
    pub snapshot_reserve_percent: u32,
    /// Moving into `class` (`lun set --redundancy`): the next block to
    /// look at.
    pub relayout: Option<u64>,
}

/// What makes a LUN a mirror destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    /// Epoch of the snapshot readers see: the newest complete transfer
    /// (None until the baseline completes: readers see zeros).
    pub view: Option<u64>,
}

/// Where reads that fall through a clone's own maps go: the nearest
/// ancestor snapshot that maps anything, and the fewest blocks any link on
/// the way lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Through {
    pub lun: LunId,
    pub epoch: u64,
    pub limit_blocks: u64,
}

impl Lun {
    pub fn maps_nothing(&self) -> bool {
        self.head.is_empty() && self.history.is_empty()
    }
    /// A visible (not hidden) snapshot by name.
    pub fn snapshot_by_name(&self, name: &str) -> Option<u64> {
        self.visible_snapshots()
            .find(|(_, s)| s.name == name)
            .map(|(e, _)| e)
    }

    pub fn visible_snapshots(&self) -> impl Iterator<Item = (u64, &Snapshot)> + '_ {
        self.snapshots
            .iter()
            .filter(|(_, s)| !s.hidden)
            .map(|(&e, s)| (e, s))
    }

    /// The newest epoch any snapshot (live or being deleted) sees.
    pub fn last_seen_epoch(&self) -> Option<u64> {
        let live = self.snapshots.keys().next_back().copied();
        let deleting = self.deleting.iter().copied().max();
        live.max(deleting)
    }

    /// Whether some snapshot sees a version living `[birth, death)`.
    pub fn is_seen(&self, birth: u64, death: u64) -> bool {
        self.snapshots.range(birth..death).next().is_some()
            || self.deleting.iter().any(|&e| birth <= e && e < death)
    }

    /// Whether the current version born at `birth` is seen by a snapshot.
    pub fn head_is_seen(&self, birth: u64) -> bool {
        self.last_seen_epoch().is_some_and(|e| e >= birth)
    }

    pub fn record(&self) -> LunRecord {
        LunRecord {
            name: self.name.clone(),
            size_blocks: self.size_blocks,
            created: self.created,
            parent: self.parent.map(|(l, e)| (l.0, e.0)),
            parent_limit_blocks: self.parent_limit_blocks,
            gc_needed: self.gc_needed,
            created_epoch: self.created_epoch,
            maps: self.maps.iter().cloned().collect(),
            replica: self.replica.map(|r| codec::ReplicaRecord { view: r.view }),
            redundancy: (self.class != crate::redundancy::Redundancy::None)
                .then(|| self.class.to_string()),
            reserve: self.thick,
            snapshot_reserve_percent: self.snapshot_reserve_percent,
            relayout: self.relayout,
        }
    }
}

pub struct Group {
    pub epoch: u64,
    pub created: u64,
    pub members: Vec<(LunId, String)>,
}

/// A clone split under way (or stopped, or waiting for space).
#[derive(Debug, Clone)]
pub struct SplitJob {
    pub cursor: u64,
    pub state: SplitState,
    pub started: u64,
    pub copied_blocks: u64,
    /// Bytes per second over the last full window.
    pub rate: f64,
    /// The current rate window: when it started and what it copied.
    pub window: Option<(std::time::Instant, u64)>,
    pub last_batch: Option<std::time::Instant>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitState {
    Running,
    Stopped,
    /// The pool is full: retried until space is freed.
    WaitingForSpace,
}

impl SplitState {
    pub fn phase(self) -> crate::types::SplitPhase {
        match self {
            SplitState::Running => crate::types::SplitPhase::Running,
            SplitState::Stopped => crate::types::SplitPhase::Stopped,
            SplitState::WaitingForSpace => crate::types::SplitPhase::WaitingForSpace,
        }
    }
}

/// A background job's progress.
#[derive(Debug, Clone)]
pub struct GcJob {
    pub id: u64,
    pub lun: LunId,
    pub cursor: u64,
    pub ranges_done: u64,
    pub ranges_total: u64,
    /// Another snapshot was deleted while the job ran: scan again.
    pub rescan: bool,
    pub started: u64,
    pub freed_blocks: u64,
}

#[derive(Default)]
pub struct Dirty {
    pub pool: bool,
    pub luns: BTreeSet<LunId>,
    pub snapshots: BTreeSet<(LunId, u64)>,
    pub groups: BTreeSet<String>,
    pub splits: BTreeSet<LunId>,
    pub igroups: BTreeSet<String>,
    /// Deletes of keys whose owner (a deleted LUN) is gone from memory.
    pub orphans: Vec<MetaPut>,
    /// Map keys dirtied since the last commit (an estimate, for backpressure).
    pub map_keys: usize,
    /// Device and store records changed since the last commit.
    pub layout: Vec<MetaPut>,
    pub scrub: bool,
    pub moving: bool,
}

/// The state lock: exclusive for changes (`lock`), shared for reads of
/// data and for walks that only look (`read`: listings, block status), so
/// that a long listing does not hold up reads. An exclusive guard dropped
/// while its thread unwinds (a bug found in the middle of a change: tests
/// unwind, release builds abort) marks the pool failed, so that no commit
/// persists a half-changed state and every later call answers an error
/// instead of waiting or guessing.
pub struct StateLock(parking_lot::RwLock<State>);

impl StateLock {
    pub fn new(state: State) -> StateLock {
        StateLock(parking_lot::RwLock::new(state))
    }

    /// Exclusive: for any change to the state.
    pub fn lock(&self) -> StateGuard<'_> {
        let guard = crate::sched::acquire("state", || self.0.try_write(), || self.0.write());
        crate::sched::holding_state(1);
        StateGuard(guard)
    }

    /// Shared: for what only looks. Readers run beside each other; a
    /// waiting writer goes first (parking_lot's RwLock is task-fair).
    pub fn read(&self) -> StateRead<'_> {
        let guard = crate::sched::acquire("state.read", || self.0.try_read(), || self.0.read());
        crate::sched::holding_state(1);
        StateRead(guard)
    }
}

pub struct StateRead<'a>(parking_lot::RwLockReadGuard<'a, State>);

impl StateRead<'_> {
    /// Lets a waiting writer in, if any, and takes the lock back after.
    /// Anything read before may have changed after.
    pub fn bump(&mut self) {
        #[cfg(feature = "sim")]
        if crate::sched::active() {
            crate::sched::holding_state(-1);
            parking_lot::RwLockReadGuard::unlocked(&mut self.0, || {
                crate::sched::point("state.bump")
            });
            crate::sched::holding_state(1);
            return;
        }
        parking_lot::RwLockReadGuard::bump(&mut self.0);
    }
}

impl std::ops::Deref for StateRead<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl Drop for StateRead<'_> {
    fn drop(&mut self) {
        crate::sched::holding_state(-1);
    }
}

pub struct StateGuard<'a>(parking_lot::RwLockWriteGuard<'a, State>);

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        crate::sched::holding_state(-1);
        if std::thread::panicking() && self.0.failed.is_none() {
            let why = "a panic interrupted a change to the pool's state".to_string();
            tracing::error!("pool failed: {why}");
            self.0.failed = Some(why);
        }
    }
}

pub struct State {
    /// Bumped whenever a LUN's maps turn empty or non-empty: it invalidates
    /// every clone's cached read-through target (`Lun::through`).
    pub shape_gen: u64,
    /// Bumped whenever what a clone chain reads through may change: a
    /// parent link dropped, a LUN or snapshot removed, a head restored. It
    /// invalidates every chain index (`chain.rs`).
    pub chain_gen: u64,
    pub chains: parking_lot::Mutex<crate::chain::ChainCache>,
    /// Chains of at least this many levels get an owner index.
    pub chain_index_min_levels: usize,
    pub epoch: u64,
    pub next_lun_id: u64,
    pub created: u64,
    pub luns: LunMap<Lun>,
    pub names: BTreeMap<String, LunId>,
    /// LUNs that reserve space (thick, or with a snapshot reserve); ids of
    /// LUNs deleted since are skipped.
    pub reserving: BTreeSet<LunId>,
    pub groups: BTreeMap<String, Group>,
    pub igroups: crate::access::Igroups,
    /// Unmapped LUNs are visible to every client.
    pub open_access: bool,
    pub alloc: crate::classes::Space,
    pub refs: RefCounts,
    /// Freed since the last commit began; reusable once a commit that
    /// records the free is durable.
    pub pending_free: Vec<Run>,
    /// Freed by a commit now in progress.
    pub committing_free: Vec<Run>,
    /// Allocated to writes whose data is being written: how many blocks,
    /// and which (start → length, as allocated).
    pub reserved_blocks: u64,
    pub in_flight: BTreeMap<u64, u64>,
    pub dirty: Dirty,
    pub failed: Option<String>,
    pub closed: bool,
    pub jobs: BTreeMap<LunId, GcJob>,
    pub splits: BTreeMap<LunId, SplitJob>,
    /// Recently finished splits: (LUN name, blocks copied, unix seconds).
    pub finished_splits: Vec<(String, u64, u64)>,
    pub next_job_id: u64,
    pub finished_jobs: Vec<GcJob>,
    /// The pool's format: 1 on one data file, 2 on devices.
    pub format: u32,
    /// A pool on devices: its id (in every device's label) and segment size.
    pub pool_id: Option<u128>,
    pub segment_bytes: Option<u64>,
    /// The class of new LUNs (`pool set --redundancy`; None: by device
    /// count).
    pub default_class: Option<crate::redundancy::Redundancy>,
    /// A pool on devices: every data block's checksum.
    pub sums: Option<crate::sums::Sums>,
    /// A pool on devices: its device records, by index.
    pub devices: Vec<codec::DeviceRecord>,
    /// The scrub, running or last run.
    pub scrub: Option<crate::scrub::ScrubJob>,
    /// The device job (rebuild, removal, levelling), running or last run.
    pub moving: Option<crate::reloc::MoveJob>,
    /// Ranges found with no good copy since the pool opened (by reads and
    /// scrubs), for `pool status`.
    pub damage: Vec<crate::scrub::Damage>,
}

impl State {
    pub fn check_open(&self) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::PoolFailed(why.clone()));
        }
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Runs just allocated to a write or a copy: in flight until applied.
    pub fn reserve(&mut self, runs: &[Run]) {
        for r in runs {
            self.reserved_blocks += r.len.get();
            self.in_flight.insert(r.start.get(), r.len.get());
        }
    }

    /// The runs of a `reserve` are applied (or given up).
    pub fn unreserve(&mut self, runs: &[Run]) {
        for r in runs {
            self.reserved_blocks -= r.len.get();
            self.in_flight.remove(&r.start.get());
        }
    }

    /// True when a block of `[start, start+len)` is being written.
    pub fn in_flight_overlaps(&self, start: u64, len: u64) -> bool {
        self.in_flight
            .range(..start + len)
            .next_back()
            .is_some_and(|(&s, &l)| s + l > start)
    }

    pub fn lun_id(&self, name: &str) -> Result<LunId> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| Error::not_found("LUN", name))
    }

    pub fn lun(&self, id: LunId) -> Result<&Lun> {
        self.luns
            .get(&id)
            .ok_or_else(|| Error::not_found("LUN", format!("#{id}")))
    }

    pub fn lun_mut(&mut self, id: LunId) -> Result<&mut Lun> {
        self.luns
            .get_mut(&id)
            .ok_or_else(|| Error::not_found("LUN", format!("#{id}")))
    }

    pub fn pool_record(&self) -> PoolRecord {
        PoolRecord {
            format: self.format,
            capacity_blocks: if self.format == codec::FORMAT_SINGLE_FILE {
                self.alloc.capacity_blocks()
            } else {
                0
            },
            epoch: self.epoch,
            next_lun_id: self.next_lun_id,
            created: self.created,
            open: Some(self.open_access),
            pool_id: self.pool_id.map(|id| format!("{id:032x}")),
            segment_bytes: self.segment_bytes,
            redundancy: self.default_class.map(|c| c.to_string()),
        }
    }

    /// Drops one reference to every data block of a piece; blocks nobody
    /// references any more become free after the next durable commit.
    pub fn release(&mut self, piece: &Piece) {
        if let Val::Data(pba) = piece.val {
            let freed = self.refs.decref(Run {
                start: pba,
                len: piece.len,
            });
            self.pending_free.extend(freed);
        }
    }

    /// A head piece is being replaced at the current epoch: keep it as
    /// history if a snapshot sees it, else drop it.
    pub fn retire(&mut self, lun: LunId, piece: Piece) {
        let now = self.epoch;
        let l = self.luns.get_mut(&lun).expect("retire on a live LUN");
        if l.head_is_seen(piece.birth) {
            l.history.push(piece, now);
        } else {
            self.release(&piece);
        }
        self.dirty.map_keys += 1;
    }

    /// Replaces `[lba, lba+len)` of the head with `val` (or unmaps it).
    /// Reads that fall through clone `lun`'s own maps: skips ancestors that
    /// map nothing, so a deep golden-image chain costs one step, not one per
    /// level. Cached until some LUN's maps turn empty or non-empty.
    pub fn through(&self, lun: &Lun) -> Option<Through> {
        let cached = *lun.through_cache.lock();
        if let Some((gen, t)) = cached {
            if gen == self.shape_gen {
                return t;
            }
        }
        let (mut p, mut e) = lun.parent?;
        let mut limit = lun.parent_limit_blocks;
        let t = loop {
            let Some(pl) = self.luns.get(&p) else {
                break Through {
                    lun: p,
                    epoch: e.0,
                    limit_blocks: limit,
                };
            };
            match pl.parent {
                Some((q, qe)) if pl.maps_nothing() => {
                    limit = limit.min(pl.parent_limit_blocks);
                    p = q;
                    e = qe;
                }
                _ => {
                    break Through {
                        lun: p,
                        epoch: e.0,
                        limit_blocks: limit,
                    }
                }
            }
        };
        *lun.through_cache.lock() = Some((self.shape_gen, Some(t)));
        Some(t)
    }

    /// Runs `change` on LUN `lun`'s maps, bumping `shape_gen` when they turn
    /// empty or non-empty.
    pub fn reshaping<R>(&mut self, lun: LunId, change: impl FnOnce(&mut State) -> R) -> R {
        let before = self.luns.get(&lun).map(Lun::maps_nothing);
        let r = change(self);
        if self.luns.get(&lun).map(Lun::maps_nothing) != before {
            self.shape_gen += 1;
        }
        r
    }

    pub fn set_head(&mut self, lun: LunId, lba: u64, len: u64, val: Option<Val>) {
        self.reshaping(lun, |s| s.set_head_inner(lun, lba, len, val))
    }

    fn set_head_inner(&mut self, lun: LunId, lba: u64, len: u64, val: Option<Val>) {
        let now = self.epoch;
        let l = self.luns.get_mut(&lun).expect("set_head on a live LUN");
        l.changes.mark(lba, len, now);
        let pieces = l.head.cut(lba, len);
        for p in pieces {
            self.retire(lun, p);
        }
        if let Some(val) = val {
            self.luns
                .get_mut(&lun)
                .expect("live LUN")
                .head
                .insert(lba, len, val, now);
            self.dirty.map_keys += 1;
        }
    }

    /// Everything changed since the last commit, as store puts; clears the
    /// dirty marks.
    pub fn take_dirty(&mut self) -> Vec<MetaPut> {
        let mut puts = std::mem::take(&mut self.dirty.orphans);
        puts.append(&mut self.dirty.layout);
        if std::mem::take(&mut self.dirty.moving) {
            puts.push((
                crate::reloc::key(),
                self.moving.as_ref().map(codec::to_json),
            ));
        }
        if std::mem::take(&mut self.dirty.scrub) {
            puts.push((crate::scrub::key(), self.scrub.as_ref().map(codec::to_json)));
        }
        if let Some(sums) = &mut self.sums {
            for page in std::mem::take(&mut sums.dirty) {
                puts.push((
                    codec::key_u64(codec::TAG_SUMS, page),
                    sums.encode_page(page),
                ));
            }
        }
        if std::mem::take(&mut self.dirty.pool) {
            puts.push((codec::key_pool(), Some(codec::to_json(&self.pool_record()))));
        }
        for id in std::mem::take(&mut self.dirty.luns) {
            let value = self.luns.get(&id).map(|l| codec::to_json(&l.record()));
            puts.push((codec::key_u64(codec::TAG_LUN, id.0), value));
        }
        for (id, epoch) in std::mem::take(&mut self.dirty.snapshots) {
            let value = self
                .luns
                .get(&id)
                .and_then(|l| l.snapshots.get(&epoch))
                .map(|s| {
                    codec::to_json(&SnapshotRecord {
                        name: s.name.clone(),
                        created: s.created,
                        size_blocks: s.size_blocks,
                        group: s.group.clone(),
                        hidden: s.hidden,
                        holds: s.holds.iter().cloned().collect(),
                    })
                });
            puts.push((codec::key_u64_u64(codec::TAG_SNAPSHOT, id.0, epoch), value));
        }
        for name in std::mem::take(&mut self.dirty.groups) {
            let value = self.groups.get(&name).map(|g| {
                codec::to_json(&GroupRecord {
                    epoch: g.epoch,
                    created: g.created,
                    members: g.members.iter().map(|(l, n)| (l.0, n.clone())).collect(),
                })
            });
            puts.push((codec::key_name(codec::TAG_GROUP, &name), value));
        }
        // Each entry is checked on its way out (and by `load` on its way
        // in): a bad one stops the process here, before it is durable.
        for lun in self.luns.values_mut() {
            for lba in std::mem::take(&mut lun.head.dirty) {
                let value = lun.head.get(lba).map(|e| {
                    if let Err(why) = codec::check_head(lba, &e, lun.size_blocks) {
                        panic!("LUN {}: {why}", lun.name);
                    }
                    codec::encode_head(&e)
                });
                puts.push((codec::key_u64_u64(codec::TAG_HEAD, lun.id.0, lba), value));
            }
            for lba in std::mem::take(&mut lun.history.dirty) {
                let value = lun.history.get(lba).map(|r| {
                    if let Err(why) = codec::check_history(lba, r) {
                        panic!("LUN {}: {why}", lun.name);
                    }
                    codec::encode_history(r)
                });
                puts.push((codec::key_u64_u64(codec::TAG_HISTORY, lun.id.0, lba), value));
            }
        }
        for name in std::mem::take(&mut self.dirty.igroups) {
            let value = self.igroups.get(&name).map(|g| codec::to_json(&g.record()));
            puts.push((codec::key_name(codec::TAG_IGROUP, &name), value));
        }
        for id in std::mem::take(&mut self.dirty.splits) {
            let value = self.splits.get(&id).map(|j| {
                codec::to_json(&codec::SplitRecord {
                    cursor: j.cursor,
                    state: match j.state {
                        SplitState::Stopped => codec::SplitRecordState::Stopped,
                        _ => codec::SplitRecordState::Running,
                    },
                    started: j.started,
                    copied_blocks: j.copied_blocks,
                })
            });
            puts.push((codec::key_u64(codec::TAG_SPLIT, id.0), value));
        }
        for start in std::mem::take(&mut self.refs.dirty) {
            let value = self
                .refs
                .get(start)
                .map(|(len, refs)| codec::encode_refs(len, refs));
            puts.push((codec::key_u64(codec::TAG_REFS, start), value));
        }
        self.dirty.map_keys = 0;
        puts
    }

    pub fn has_dirty(&self) -> bool {
        let d = &self.dirty;
        d.pool
            || !d.luns.is_empty()
            || !d.snapshots.is_empty()
            || !d.groups.is_empty()
            || !d.splits.is_empty()
            || !d.igroups.is_empty()
            || !d.orphans.is_empty()
            || !d.layout.is_empty()
            || d.scrub
            || d.moving
            || self.sums.as_ref().is_some_and(|s| !s.dirty.is_empty())
            || !self.pending_free.is_empty()
            || !self.refs.dirty.is_empty()
            || self
                .luns
                .values()
                .any(|l| !l.head.dirty.is_empty() || !l.history.dirty.is_empty())
    }
}
