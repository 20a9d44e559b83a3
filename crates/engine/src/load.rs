//! Opening a pool's metadata: the directory lock, loading the state, and
//! checking it against the invariants.

use crate::codec::{self, GroupRecord, LunRecord, PoolRecord, SnapshotRecord};
use crate::engine::*;
use crate::io::MetaStore;
use crate::map::Val;
use crate::space::{RefCounts, Run};
use crate::state::{Dirty, Group, Lun, LunMap, Snapshot, SplitJob, SplitState, State};
use crate::types::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(crate) fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    let path: PathBuf = dir.join("blockfork.lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(Error::InvalidArgument(format!(
            "data directory {} is in use by another blockfork process{}; stop it first",
            dir.display(),
            if holder.trim().is_empty() {
                String::new()
            } else {
                format!(" (pid {})", holder.trim())
            }
        )));
    }
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

/// Refuses a pool this version cannot read, before anything is changed.
/// Every format this version reads is listed here; a new format comes with
/// a migration from each older one it still opens (decision 016). Format 2
/// (devices) added records without changing format 1's: a pool on one data
/// file stays format 1 and needs no migration (decision 028).
fn check_format(format: u32) -> Result<()> {
    match format {
        codec::FORMAT_SINGLE_FILE | codec::FORMAT_DEVICES => Ok(()),
        f if f > codec::FORMAT_VERSION => Err(Error::Store(format!(
            "the pool is in format {f}, written by a newer blockfork; this version reads formats 1 to {}: upgrade blockfork to open it",
            codec::FORMAT_VERSION
        ))),
        f => Err(Error::Store(format!(
            "pool format {f} is not supported: no blockfork release wrote it (this version reads formats 1 to {})",
            codec::FORMAT_VERSION
        ))),
    }
}

pub(crate) fn read_pool_record(store: &dyn MetaStore) -> Result<Option<PoolRecord>> {
    let mut found = None;
    store.for_each(&mut |k, v| {
        if k == codec::key_pool().as_slice() {
            found = Some(codec::from_json::<PoolRecord>(k, v)?);
        }
        Ok(())
    })?;
    Ok(found)
}

/// What the store holds, gathered record by record before the state is
/// put together.
#[derive(Default)]
struct Loaded {
    pool: Option<PoolRecord>,
    luns: LunMap<Lun>,
    snapshots: Vec<(LunId, u64, SnapshotRecord)>,
    groups: BTreeMap<String, Group>,
    igroups: BTreeMap<String, crate::access::Igroup>,
    refs: RefCounts,
    splits: BTreeMap<LunId, SplitJob>,
    devices: BTreeMap<u64, codec::DeviceRecord>,
    stores: BTreeMap<u64, codec::StoreRecord>,
    sums: crate::sums::Sums,
    scrub: Option<crate::scrub::ScrubJob>,
    moving: Option<crate::reloc::MoveJob>,
}

/// What a pool on devices is laid out as: the layout and the devices, by
/// index.
pub(crate) struct DeviceLayout {
    pub layout: crate::layout::Layout,
    pub devices: Vec<codec::DeviceRecord>,
}

fn lun_of(k: &[u8]) -> Result<LunId> {
    codec::parse_u64(k, 1).map(LunId)
}

fn name_of(k: &[u8], what: &str) -> Result<String> {
    String::from_utf8(k[1..].to_vec()).map_err(|_| Error::Store(format!("corrupt {what} key")))
}

impl Loaded {
    /// Takes one record, by its key's tag.
    fn record(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        match k.first().copied() {
            Some(codec::TAG_POOL) => self.pool = Some(codec::from_json(k, v)?),
            Some(codec::TAG_LUN) => self.lun(k, v)?,
            Some(codec::TAG_SNAPSHOT) => {
                let r = codec::from_json(k, v)?;
                self.snapshots
                    .push((lun_of(k)?, codec::parse_u64(k, 9)?, r));
            }
            Some(codec::TAG_IGROUP) => {
                let r: codec::IgroupRecord = codec::from_json(k, v)?;
                let igroup = crate::access::Igroup::from_record(r)?;
                self.igroups.insert(name_of(k, "igroup")?, igroup);
            }
            Some(codec::TAG_GROUP) => {
                let g: GroupRecord = codec::from_json(k, v)?;
                let group = Group {
                    epoch: g.epoch,
                    created: g.created,
                    members: g.members.into_iter().map(|(i, n)| (LunId(i), n)).collect(),
                };
                self.groups.insert(name_of(k, "group")?, group);
            }
            Some(codec::TAG_DEVICE) => {
                self.devices
                    .insert(codec::parse_u64(k, 1)?, codec::from_json(k, v)?);
            }
            Some(codec::TAG_STORE) => {
                self.stores
                    .insert(codec::parse_u64(k, 1)?, codec::from_json(k, v)?);
            }
            Some(codec::TAG_SUMS) => self.sums.load_page(k, codec::parse_u64(k, 1)?, v)?,
            Some(codec::TAG_SCRUB) => self.scrub = Some(codec::from_json(k, v)?),
            Some(codec::TAG_MOVE) => self.moving = Some(codec::from_json(k, v)?),
            Some(codec::TAG_HEAD) => self.head(k, v)?,
            Some(codec::TAG_HISTORY) => self.history(k, v)?,
            Some(codec::TAG_REFS) => {
                let (len, n) = codec::decode_refs(k, v)?;
                self.refs.load(codec::parse_u64(k, 1)?, len, n);
            }
            Some(codec::TAG_SPLIT) => self.split(k, v)?,
            _ => {
                return Err(Error::Store(format!(
                    "unknown key {k:02x?} in the metadata store"
                )))
            }
        }
        Ok(())
    }

    fn lun(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        let id = lun_of(k)?;
        let r: LunRecord = codec::from_json(k, v)?;
        let mut l = new_lun(
            id,
            r.name,
            r.size_blocks,
            r.created,
            r.parent.map(|(p, e)| (LunId(p), Epoch(e))),
        );
        l.parent_limit_blocks = r.parent_limit_blocks;
        l.gc_needed = r.gc_needed;
        l.created_epoch = r.created_epoch;
        l.maps = r.maps.into_iter().collect();
        l.replica = r.replica.map(|r| crate::state::Replica { view: r.view });
        l.thick = r.reserve;
        l.snapshot_reserve_percent = r.snapshot_reserve_percent;
        l.relayout = r.relayout;
        if let Some(class) = r.redundancy {
            l.class = class
                .parse()
                .map_err(|e| Error::Store(format!("LUN #{id}'s redundancy: {e}")))?;
        }
        self.luns.insert(id, l);
        Ok(())
    }

    /// Map records follow their LUN's record (keys sort by tag, then id).
    fn lun_mut(&mut self, k: &[u8], what: &str) -> Result<&mut Lun> {
        let id = lun_of(k)?;
        self.luns
            .get_mut(&id)
            .ok_or_else(|| Error::Store(format!("{what} of unknown LUN #{id}")))
    }

    fn head(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        let ext = codec::decode_head(k, v)?;
        let lba = codec::parse_u64(k, 9)?;
        let l = self.lun_mut(k, "head extent")?;
        codec::check_head(lba, &ext, l.size_blocks)
            .map_err(|why| Error::Store(format!("LUN {}: {why}", l.name)))?;
        l.changes.mark(lba, ext.len, ext.birth);
        l.head.load(lba, ext);
        Ok(())
    }

    fn history(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        let r = codec::decode_history(k, v)?;
        let lba = codec::parse_u64(k, 9)?;
        let l = self.lun_mut(k, "history")?;
        codec::check_history(lba, &r)
            .map_err(|why| Error::Store(format!("LUN {}: {why}", l.name)))?;
        let newest = r.versions.iter().map(|v| v.death).max().unwrap_or(0);
        l.changes.mark(lba, r.len, newest);
        l.history.load(lba, r);
        Ok(())
    }

    fn split(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        let r: codec::SplitRecord = codec::from_json(k, v)?;
        let state = match r.state {
            codec::SplitRecordState::Stopped => SplitState::Stopped,
            codec::SplitRecordState::Running => SplitState::Running,
        };
        let job = SplitJob {
            cursor: r.cursor,
            state,
            started: r.started,
            copied_blocks: r.copied_blocks,
            rate: 0.0,
            window: None,
            last_batch: None,
            message: None,
        };
        self.splits.insert(lun_of(k)?, job);
        Ok(())
    }
}

/// Rebuilds the in-memory state from the store. Returns it and whether the
/// pool is new.
pub(crate) fn load_state(store: &dyn MetaStore, capacity_blocks: u64) -> Result<(State, bool)> {
    let (state, fresh, _) = load_pool(store, capacity_blocks)?;
    Ok((state, fresh))
}

/// Parses a class stored in a record.
fn stored_class(text: &str, whose: &str) -> Result<crate::redundancy::Redundancy> {
    text.parse()
        .map_err(|e| Error::Store(format!("{whose}'s redundancy: {e}")))
}

/// A pool on devices: its layout from the device and store records.
fn device_layout(
    segment_bytes: u64,
    devices: BTreeMap<u64, codec::DeviceRecord>,
    stores: BTreeMap<u64, codec::StoreRecord>,
) -> Result<DeviceLayout> {
    if segment_bytes == 0 || !segment_bytes.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::Store(format!(
            "the pool's segment size {segment_bytes} is not a whole number of blocks"
        )));
    }
    let devices: Vec<codec::DeviceRecord> = devices
        .into_iter()
        .enumerate()
        .map(|(i, (n, d))| {
            if n == i as u64 {
                Ok(d)
            } else {
                Err(Error::Store(format!("device record {i} is missing")))
            }
        })
        .collect::<Result<_>>()?;
    let segments: Vec<u64> = devices.iter().map(|d| d.segments).collect();
    let mut layout = crate::layout::Layout::new(segment_bytes, &segments);
    for (n, r) in stores {
        let store = crate::layout::Store {
            class: stored_class(&r.class, &format!("store {n}"))?,
            segments: r
                .segments
                .iter()
                .map(|&(device, segment)| crate::layout::SegmentRef { device, segment })
                .collect(),
        };
        layout.restore_store(n as usize, store)?;
    }
    Ok(DeviceLayout { layout, devices })
}

/// Rebuilds the in-memory state from the store: the state, whether the
/// pool is new, and for a pool on devices its layout.
pub(crate) fn load_pool(
    store: &dyn MetaStore,
    capacity_blocks: u64,
) -> Result<(State, bool, Option<DeviceLayout>)> {
    let mut loaded = Loaded::default();
    store.for_each(&mut |k, v| loaded.record(k, v))?;
    let Loaded {
        pool,
        mut luns,
        snapshots,
        groups,
        igroups,
        refs,
        splits,
        devices,
        stores,
        sums,
        scrub,
        moving,
    } = loaded;
    let fresh = pool.is_none();
    let pool = pool.unwrap_or(PoolRecord {
        format: codec::FORMAT_SINGLE_FILE,
        capacity_blocks,
        epoch: 1,
        next_lun_id: 1,
        created: now_secs(),
        open: None,
        pool_id: None,
        segment_bytes: None,
        redundancy: None,
    });
    check_format(pool.format)?;
    let on_devices = match (pool.format, pool.segment_bytes) {
        (codec::FORMAT_DEVICES, Some(seg)) => Some(device_layout(seg, devices, stores)?),
        (codec::FORMAT_DEVICES, None) => {
            return Err(Error::Store(
                "a format 2 pool record has no segment size".into(),
            ))
        }
        _ if !devices.is_empty() || !stores.is_empty() => {
            return Err(Error::Store(
                "a format 1 pool holds device or store records".into(),
            ))
        }
        _ => None,
    };
    let pool_id = match &pool.pool_id {
        Some(hex) => Some(
            u128::from_str_radix(hex, 16)
                .map_err(|_| Error::Store(format!("corrupt pool id {hex:?}")))?,
        ),
        None => None,
    };
    let default_class = match &pool.redundancy {
        Some(c) => Some(stored_class(c, "the pool")?),
        None => None,
    };
    for (id, epoch, r) in snapshots {
        let l = luns
            .get_mut(&id)
            .ok_or_else(|| Error::Store(format!("snapshot of unknown LUN #{id}")))?;
        l.snapshots.insert(
            epoch,
            Snapshot {
                name: r.name,
                created: r.created,
                size_blocks: r.size_blocks,
                group: r.group,
                hidden: r.hidden,
                holds: r.holds.into_iter().collect(),
            },
        );
    }
    let names = luns.values().map(|l| (l.name.clone(), l.id)).collect();
    let used = referenced_runs(&luns);
    let alloc = match &on_devices {
        None => crate::classes::Space::single(pool.capacity_blocks, &union_runs(&used)),
        Some(d) => {
            let regions: Vec<(Run, crate::redundancy::Redundancy)> = d
                .layout
                .stores()
                .map(|(n, s)| {
                    let (start, blocks) = d.layout.extent_of(n).expect("a listed store");
                    (Run::at(start, blocks), s.class)
                })
                .collect();
            crate::classes::Space::over(&regions, &union_runs(&used))
        }
    }
    .map_err(|why| Error::Store(format!("the pool's space does not load: {why}")))?;
    let state = State {
        shape_gen: 0,
        chain_gen: 0,
        chains: Default::default(),
        chain_index_min_levels: crate::chain::CHAIN_INDEX_MIN_LEVELS,
        epoch: pool.epoch,
        next_lun_id: pool.next_lun_id,
        created: pool.created,
        reserving: luns
            .iter()
            .filter(|(_, l)| l.thick || l.snapshot_reserve_percent > 0)
            .map(|(&id, _)| id)
            .collect(),
        luns,
        names,
        groups,
        igroups,
        open_access: pool.open.unwrap_or(true),
        alloc,
        refs,
        pending_free: Vec::new(),
        committing_free: Vec::new(),
        reserved_blocks: 0,
        in_flight: BTreeMap::new(),
        dirty: Dirty::default(),
        failed: None,
        closed: false,
        jobs: BTreeMap::new(),
        splits,
        finished_splits: Vec::new(),
        next_job_id: 1,
        finished_jobs: Vec::new(),
        format: pool.format,
        pool_id,
        segment_bytes: pool.segment_bytes,
        default_class,
        sums: on_devices.as_ref().map(|_| sums),
        devices: on_devices
            .as_ref()
            .map(|d| d.devices.clone())
            .unwrap_or_default(),
        scrub,
        moving,
        damage: Vec::new(),
    };
    Ok((state, fresh, on_devices))
}

/// Every data reference in every map, sorted by physical start.
pub(crate) fn referenced_runs(luns: &LunMap<Lun>) -> Vec<Run> {
    let mut runs = Vec::new();
    for l in luns.values() {
        for (_, e) in l.head.iter() {
            if let Val::Data(p) = e.val {
                runs.push(Run {
                    start: p,
                    len: BlockCount::new(e.len),
                });
            }
        }
        for (_, r) in l.history.iter() {
            for v in &r.versions {
                if let Val::Data(p) = v.val {
                    runs.push(Run {
                        start: p,
                        len: BlockCount::new(r.len),
                    });
                }
            }
        }
    }
    runs.sort_by_key(|r| r.start);
    runs
}

/// Merges sorted, possibly overlapping runs into disjoint ones.
pub(crate) fn union_runs(sorted: &[Run]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if last.start + last.len >= r.start => {
                last.len = last.len.max(r.start + r.len - last.start);
            }
            _ => out.push(*r),
        }
    }
    out
}

/// Per-block reference multiplicity as disjoint runs: (start, len, count).
/// The runs covered by `sorted`, each with how many of them cover it.
pub(crate) fn multiplicity(sorted: &[Run]) -> Vec<(Run, u32)> {
    // Sweep over start/end events.
    let mut events: Vec<(u64, i32)> = Vec::with_capacity(sorted.len() * 2);
    for r in sorted {
        events.push((r.start.get(), 1));
        events.push((r.end().get(), -1));
    }
    events.sort_unstable();
    let mut out: Vec<(Run, u32)> = Vec::new();
    let mut depth = 0i32;
    let mut last = 0u64;
    for (at, d) in events {
        if at > last && depth > 0 {
            match out.last_mut() {
                Some((r, c)) if r.end().get() == last && *c == depth as u32 => {
                    r.len += BlockCount::new(at - last)
                }
                _ => out.push((Run::new(last, at - last), depth as u32)),
            }
        }
        depth += d;
        last = at;
    }
    out
}

pub(crate) fn check_state(s: &State) -> Result<(), String> {
    let refs = referenced_runs(&s.luns);
    let multi = multiplicity(&refs);
    // Reference counts equal references.
    let mut expected_shared: Vec<(Run, u32)> =
        multi.iter().copied().filter(|&(_, c)| c >= 2).collect();
    let mut stored: Vec<(Run, u32)> = s.refs.entries().collect();
    normalize(&mut expected_shared);
    normalize(&mut stored);
    if expected_shared != stored {
        return Err(format!(
            "reference counts {stored:?} differ from references {expected_shared:?}"
        ));
    }
    // Free, referenced, pending and reserved blocks partition the pool.
    let referenced: u64 = union_runs(&refs).iter().map(|r| r.len.get()).sum();
    let pending: u64 = s
        .pending_free
        .iter()
        .chain(&s.committing_free)
        .map(|r| r.len.get())
        .sum();
    let free = s.alloc.free_blocks();
    let capacity = s.alloc.capacity_blocks();
    // Parity stripes with live blocks hold their other blocks too.
    let held = s.alloc.held_blocks();
    if referenced + pending + s.reserved_blocks + free + held != capacity {
        return Err(format!(
            "space does not add up: referenced {referenced} + pending free {pending} + in flight {} + free {free} + held in parity stripes {held} != capacity {capacity}",
            s.reserved_blocks
        ));
    }
    let mut all: Vec<Run> = s.alloc.free_runs();
    all.extend(union_runs(&refs));
    all.extend(s.pending_free.iter().chain(&s.committing_free).copied());
    all.sort_by_key(|r| r.start);
    for w in all.windows(2) {
        if w[0].start + w[0].len > w[1].start {
            return Err(format!(
                "block {} is both free (or pending) and referenced",
                w[1].start
            ));
        }
    }
    for l in s.luns.values() {
        check_lun(s, l)?;
    }
    Ok(())
}

/// The invariants of one LUN's maps and links: what the online check runs
/// LUN by LUN, holding the state lock for one LUN at a time.
pub(crate) fn check_lun(s: &State, l: &Lun) -> Result<(), String> {
    let data: u64 = l
        .head
        .iter()
        .filter(|(_, e)| matches!(e.val, Val::Data(_)))
        .map(|(_, e)| e.len)
        .sum();
    if data != l.head.data_blocks() {
        return Err(format!(
            "LUN {} maps {data} blocks to data but counts {}",
            l.name,
            l.head.data_blocks()
        ));
    }
    {
        for (lba, e) in l.head.iter() {
            if lba + e.len > l.size_blocks {
                return Err(format!(
                    "LUN {} maps block {} beyond its size",
                    l.name,
                    lba + e.len - 1
                ));
            }
            if e.birth > s.epoch {
                return Err(format!("LUN {} has a version from the future", l.name));
            }
        }
        for (lba, r) in l.history.iter() {
            for w in r.versions.windows(2) {
                if w[0].death > w[1].birth {
                    return Err(format!(
                        "LUN {} block {lba}: history lifetimes overlap",
                        l.name
                    ));
                }
            }
            if !l.gc_needed && !s.jobs.contains_key(&l.id) {
                for v in &r.versions {
                    if !l.is_seen(v.birth, v.death) {
                        return Err(format!(
                            "LUN {} block {lba}: history version [{}, {}) is seen by no snapshot",
                            l.name, v.birth, v.death
                        ));
                    }
                }
            }
        }
        if let Some((p, e)) = l.parent {
            if !s
                .luns
                .get(&p)
                .is_some_and(|pl| pl.snapshots.contains_key(&e.0))
            {
                return Err(format!(
                    "clone {} reads through a snapshot that does not exist",
                    l.name
                ));
            }
        }
        if let Some(&e) = l.snapshots.keys().next_back() {
            if e >= s.epoch {
                return Err(format!(
                    "LUN {} has a snapshot at epoch {e}, not before the current epoch {}",
                    l.name, s.epoch
                ));
            }
        }
    }
    Ok(())
}

/// Splits runs into unit-free canonical form: merge adjacent equal counts.
pub(crate) fn normalize(v: &mut Vec<(Run, u32)>) {
    v.sort_unstable();
    let mut out: Vec<(Run, u32)> = Vec::with_capacity(v.len());
    for &(r, c) in v.iter() {
        match out.last_mut() {
            Some((prev, pc)) if prev.end() == r.start && *pc == c => prev.len += r.len,
            _ => out.push((r, c)),
        }
    }
    *v = out;
}
