//! A pool on devices (issue 14, decisions 027 and 028): making one,
//! opening it (degraded when a device is missing and every store keeps
//! enough copies), giving each class space by assembling stores, and what
//! `pool device list` shows.

use crate::codec::{self, DeviceRecord, PoolRecord, StoreRecord};
use crate::devices::{self, Identity};
use crate::engine::*;
use crate::io::{DataFile, FjallStore, MetaStore};
use crate::load::{lock_dir, read_pool_record, DeviceLayout};
use crate::redundancy::Redundancy;
use crate::space::Run;
use crate::state::State;
use crate::stores::{Absent, Stores};
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Opens a pool's devices once its layout is loaded.
pub(crate) type OpenDevices = Box<dyn FnOnce(DeviceLayout) -> Result<Stores> + Send>;

/// The segment size of a new pool: 64 MiB (decisions 028, 032).
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
pub const SEGMENT_BYTES_MIN: u64 = 1 << 20;
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Most devices in one pool.
pub const DEVICES_MAX: usize = 64;

/// How a new pool on devices is made (ignored when it exists).
#[derive(Debug, Clone, Copy)]
pub struct DeviceOptions {
    pub segment_bytes: u64,
    /// Reuse devices that carry another pool's label.
    pub force: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            force: false,
        }
    }
}

/// One device, as `pool device list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub index: u32,
    pub path: String,
    pub id: String,
    /// `online` or `faulted`.
    pub state: String,
    /// Why it is faulted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub size_bytes: u64,
    pub segments: u64,
    pub used_segments: u64,
    pub used_bytes: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub checksum_errors: u64,
    pub repaired_blocks: u64,
}

pub(crate) fn random_id() -> u128 {
    rand::random::<u128>() | 1
}

pub(crate) fn hex(id: u128) -> String {
    format!("{id:032x}")
}

fn validate_segment_bytes(bytes: u64) -> Result<()> {
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&bytes)
        || !bytes.is_multiple_of(BLOCK_SIZE)
    {
        return Err(Error::InvalidArgument(format!(
            "a segment size must be a multiple of 4 KiB from {} MiB to {} GiB, not {bytes} bytes",
            SEGMENT_BYTES_MIN >> 20,
            SEGMENT_BYTES_MAX >> 30
        )));
    }
    Ok(())
}

/// Labels the devices and commits the new pool's records. Every device is
/// checked before any is labelled, so a refusal changes nothing.
fn create_pool(
    store: &mut dyn MetaStore,
    paths: &[PathBuf],
    opts: DeviceOptions,
    open_access: bool,
) -> Result<()> {
    validate_segment_bytes(opts.segment_bytes)?;
    if paths.is_empty() || paths.len() > DEVICES_MAX {
        return Err(Error::InvalidArgument(format!(
            "a pool on devices has 1 to {DEVICES_MAX} devices, not {}",
            paths.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in paths {
        devices::vet(p, opts.segment_bytes, opts.force)?;
        let canonical = std::fs::canonicalize(p)?;
        if !seen.insert(canonical) {
            return Err(Error::InvalidArgument(format!(
                "{} is named twice: each device is a different file or disk",
                p.display()
            )));
        }
    }
    let pool = random_id();
    let added = now_secs();
    let mut puts = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let id = Identity {
            pool,
            device: random_id(),
            index: i as u32,
            segment_bytes: opts.segment_bytes,
            added_secs: added,
        };
        let d = devices::format(p, id, opts.force)?;
        let record = DeviceRecord {
            id: hex(id.device),
            path: std::fs::canonicalize(p)?.display().to_string(),
            size_bytes: d.label.size_bytes,
            segments: d.label.segments(),
            added,
            removed: false,
            faulted: None,
        };
        puts.push((
            codec::key_u64(codec::TAG_DEVICE, i as u64),
            Some(codec::to_json(&record)),
        ));
    }
    let record = PoolRecord {
        format: codec::FORMAT_DEVICES,
        capacity_blocks: 0,
        epoch: 1,
        next_lun_id: 1,
        created: added,
        open: Some(open_access),
        pool_id: Some(hex(pool)),
        segment_bytes: Some(opts.segment_bytes),
        redundancy: None,
    };
    puts.push((codec::key_pool(), Some(codec::to_json(&record))));
    store.commit(&puts)
}

/// Opens every device of the layout: those named in `given` by their
/// labels, the rest at the paths recorded. A device that does not open is
/// absent and faulted; the pool opens if every store keeps enough copies.
fn open_devices_of(dl: DeviceLayout, given: &[PathBuf], pool: u128) -> Result<Stores> {
    let n = dl.devices.len();
    let mut files: Vec<Option<Arc<dyn DataFile>>> = (0..n).map(|_| None).collect();
    for p in given {
        let d = devices::open_member(p, pool)?;
        let index = dl
            .devices
            .iter()
            .position(|r| r.id == hex(d.label.device))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} carries this pool's label, but the pool no longer has it as a device",
                    p.display()
                ))
            })?;
        if files[index].is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} is the same device as another --device",
                p.display()
            )));
        }
        files[index] = Some(Arc::new(d.file));
    }
    let mut absent = Vec::new();
    let files: Vec<Arc<dyn DataFile>> = files
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            f.unwrap_or_else(|| {
                let r = &dl.devices[i];
                if r.removed {
                    return Arc::new(Absent("removed from the pool".into())) as Arc<dyn DataFile>;
                }
                let id = u128::from_str_radix(&r.id, 16).unwrap_or(0);
                match devices::open(Path::new(&r.path), pool, id) {
                    Ok(d) => Arc::new(d.file) as Arc<dyn DataFile>,
                    Err(e) => {
                        let why = format!("{} did not open: {e}", r.path);
                        absent.push((i as u32, why.clone()));
                        Arc::new(Absent(why))
                    }
                }
            })
        })
        .collect();
    let stores = Stores::new(files, dl.layout);
    for (i, why) in absent {
        stores.fault(i, why);
    }
    recorded_states(&stores, &dl.devices);
    // Whether every store keeps enough copies is decided once the maps are
    // loaded (`Engine::give_up_empty_stores`): a store that lost them but
    // holds no data costs nothing.
    Ok(stores)
}

/// Puts the recorded states back: removed devices are retired, and a
/// device that failed before stays out until it is resilvered (what was
/// written while it was out is not on it).
fn recorded_states(stores: &Stores, records: &[DeviceRecord]) {
    for (i, r) in records.iter().enumerate() {
        if r.removed {
            stores.retire(i as u32);
        } else if let Some(why) = &r.faulted {
            stores.fault(
                i as u32,
                format!("{why} (before the last restart; `pool device clear` resilvers it)"),
            );
        }
    }
}

impl Engine {
    /// Opens (or makes, from `paths`) the pool on devices whose metadata
    /// is in `dir`.
    pub fn open_devices(
        dir: &Path,
        paths: &[PathBuf],
        opts: DeviceOptions,
        config: EngineConfig,
    ) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        if dir.join("data").exists() {
            return Err(Error::InvalidArgument(format!(
                "{} holds a pool on one data file; open it without --device",
                dir.display()
            )));
        }
        let mut store = FjallStore::open(&dir.join("meta"))?;
        if read_pool_record(&store)?.is_none() {
            if paths.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{} holds no pool yet; name its devices with --device",
                    dir.display()
                )));
            }
            create_pool(&mut store, paths, opts, config.open_access)?;
        }
        let record = read_pool_record(&store)?.expect("made above");
        let pool = record
            .pool_id
            .as_deref()
            .and_then(|h| u128::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} holds a pool on one data file; open it without --device",
                    dir.display()
                ))
            })?;
        let given = paths.to_vec();
        let open: OpenDevices = Box::new(move |dl| open_devices_of(dl, &given, pool));
        Engine::open_inner(
            Data::Devices(open),
            Box::new(store),
            0,
            config,
            Some(lock),
            crate::events::EventLog::open(dir),
        )
    }

    /// Opens a pool on the given devices (each with its size in
    /// segments) and store; tests pass simulated ones. Makes the pool
    /// first when the store holds none.
    pub fn open_devices_with(
        files: Vec<(Arc<dyn DataFile>, u64)>,
        mut store: Box<dyn MetaStore>,
        segment_bytes: u64,
        config: EngineConfig,
    ) -> Result<Arc<Engine>> {
        // Any whole number of blocks: simulations use tiny segments.
        if segment_bytes == 0 || !segment_bytes.is_multiple_of(BLOCK_SIZE) {
            return Err(Error::InvalidArgument(format!(
                "segment size {segment_bytes} is not a whole number of blocks"
            )));
        }
        if read_pool_record(store.as_ref())?.is_none() {
            let mut puts = Vec::new();
            for (i, &(_, segments)) in files.iter().enumerate() {
                let record = DeviceRecord {
                    id: hex(i as u128 + 1),
                    path: format!("sim{i}"),
                    size_bytes: crate::label::LABEL_BYTES + segments * segment_bytes,
                    segments,
                    added: 0,
                    removed: false,
                    faulted: None,
                };
                puts.push((
                    codec::key_u64(codec::TAG_DEVICE, i as u64),
                    Some(codec::to_json(&record)),
                ));
            }
            let record = PoolRecord {
                format: codec::FORMAT_DEVICES,
                capacity_blocks: 0,
                epoch: 1,
                next_lun_id: 1,
                created: now_secs(),
                open: Some(config.open_access),
                pool_id: Some(hex(1)),
                segment_bytes: Some(segment_bytes),
                redundancy: None,
            };
            puts.push((codec::key_pool(), Some(codec::to_json(&record))));
            store.commit(&puts)?;
        }
        let files: Vec<Arc<dyn DataFile>> = files.into_iter().map(|(f, _)| f).collect();
        let open: OpenDevices = Box::new(move |dl| {
            let stores = Stores::new(files, dl.layout);
            recorded_states(&stores, &dl.devices);
            Ok(stores)
        });
        Engine::open_inner(
            Data::Devices(open),
            store,
            0,
            config,
            None,
            crate::events::EventLog::in_memory(),
        )
    }

    /// The pool's devices (empty for a pool on one data file).
    pub fn pool_devices(&self) -> Result<Vec<DeviceInfo>> {
        self.state.read().check_open()?;
        let Some(stores) = &self.stores else {
            return Ok(Vec::new());
        };
        let records = self.device_records()?;
        let layout = stores.layout().read();
        let seg = layout.segment_bytes();
        Ok(records
            .into_iter()
            .enumerate()
            .filter(|(_, r)| !r.removed)
            .map(|(i, r)| {
                let e = stores.errors(i as u32);
                let used = layout.used_segments(i as u32) as u64;
                let ld = std::sync::atomic::Ordering::Relaxed;
                DeviceInfo {
                    index: i as u32,
                    path: r.path,
                    id: r.id,
                    state: if e.faulted() { "faulted" } else { "online" }.into(),
                    reason: e.why(),
                    size_bytes: r.size_bytes,
                    segments: r.segments,
                    used_segments: used,
                    used_bytes: used * seg,
                    read_errors: e.read.load(ld),
                    write_errors: e.write.load(ld),
                    checksum_errors: e.checksum.load(ld),
                    repaired_blocks: e.repaired.load(ld),
                }
            })
            .collect())
    }

    /// The device records.
    fn device_records(&self) -> Result<Vec<DeviceRecord>> {
        Ok(self.state.read().devices.clone())
    }

    /// Each device's path, by index.
    pub(crate) fn device_paths(&self) -> Vec<String> {
        self.state
            .read()
            .devices
            .iter()
            .map(|d| d.path.clone())
            .collect()
    }

    /// Blocks in use and the capacity. A pool on devices counts, beside
    /// its stores, what its free segments would hold in the default class.
    pub(crate) fn usage_in(&self, s: &State) -> (u64, u64) {
        let used = s.alloc.capacity_blocks() - s.alloc.free_blocks();
        let mut capacity = s.alloc.capacity_blocks();
        if let Some(stores) = &self.stores {
            let layout = stores.layout().read();
            let class = self.default_class(s);
            let free_segments: u64 = (0..layout.devices() as u32)
                .filter(|&d| !stores.errors(d).faulted())
                .map(|d| layout.free_segments(d) as u64)
                .sum();
            let per_store = class.devices() as u64;
            capacity += free_segments / per_store * layout.store_blocks(class);
        }
        (used, capacity)
    }

    /// Faulted devices now.
    pub(crate) fn faulted_devices(&self) -> u64 {
        self.stores.as_ref().map_or(0, |st| {
            (0..st.device_count() as u32)
                .filter(|&d| st.errors(d).faulted() && !st.errors(d).removed())
                .count() as u64
        })
    }

    /// At open: a store that lost more devices than its class tolerates
    /// but holds no used block is given up (skipped by the checks, its
    /// space never allocated again this run); one that holds data makes the
    /// pool refuse to open, naming it, with nothing changed.
    pub(crate) fn give_up_empty_stores(&self) -> Result<()> {
        let Some(stores) = &self.stores else {
            return Ok(());
        };
        let mut s = self.state.lock();
        for (n, why) in stores.unservable() {
            let (start, blocks) = stores.layout().read().window_of(n);
            let used = s
                .alloc
                .next_used(start, blocks.max(1))
                .is_some_and(|r| r.start.get() < start + blocks);
            if used {
                return Err(Error::InvalidArgument(format!(
                    "the pool cannot open: {why}"
                )));
            }
            s.alloc.freeze(start);
            stores.give_up(n);
            tracing::warn!("store {n} holds no data and {why}: given up");
        }
        Ok(())
    }

    /// Device records for devices faulted since they were last recorded,
    /// to commit with (after the data sync of) the next batch: a write that
    /// skipped a faulted device is only durable with the fault recorded.
    pub(crate) fn fault_records(&self) -> Vec<crate::io::MetaPut> {
        let Some(stores) = &self.stores else {
            return Vec::new();
        };
        let mut s = self.state.lock();
        let mut puts = Vec::new();
        for (d, r) in s.devices.iter_mut().enumerate() {
            let e = stores.errors(d as u32);
            if r.removed || !e.faulted() || r.faulted.is_some() {
                continue;
            }
            r.faulted = Some(e.why().unwrap_or_else(|| "faulted".into()));
            puts.push((
                codec::key_u64(codec::TAG_DEVICE, d as u64),
                Some(codec::to_json(&*r)),
            ));
        }
        puts
    }

    /// Records an event for each device faulted since the last call.
    pub(crate) fn report_faults(&self) {
        let Some(stores) = &self.stores else { return };
        for (device, why) in stores.take_news() {
            self.events.emit(
                crate::events::Severity::Error,
                "device-faulted",
                &format!("device {device}"),
                format!(
                    "Device {device} is faulted: {why}. The pool serves from the other copies, degraded; replace it with `blockfork pool device replace`."
                ),
            );
        }
    }

    /// Devices in the pool (0 for a pool on one data file).
    pub(crate) fn device_count(&self) -> usize {
        self.stores.as_ref().map_or(0, |s| {
            (0..s.device_count() as u32)
                .filter(|&d| !s.errors(d).removed())
                .count()
        })
    }

    /// The class of a new LUN that names none.
    pub(crate) fn default_class(&self, s: &State) -> Redundancy {
        s.default_class
            .unwrap_or_else(|| Redundancy::default_for(self.device_count()))
    }

    /// Sets the class of new LUNs that name none (stored with the pool).
    pub fn set_default_redundancy(&self, class: Redundancy) -> Result<()> {
        self.check_class(class)?;
        {
            let mut s = self.state.lock();
            s.check_open()?;
            s.default_class = Some(class);
            s.dirty.pool = true;
        }
        self.flush()?;
        self.note(
            "pool-redundancy-changed",
            "pool",
            format!("New LUNs that name no redundancy class are {class} now."),
        );
        Ok(())
    }

    /// Refuses a class this pool cannot give a LUN.
    pub(crate) fn check_class(&self, class: Redundancy) -> Result<()> {
        let Some(stores) = &self.stores else {
            return match class {
                Redundancy::None => Ok(()),
                c => Err(Error::InvalidArgument(format!(
                    "redundancy {c} needs a pool on devices (serve --device PATH ...); this pool is one data file"
                ))),
            };
        };
        let _ = stores;
        let have = self.device_count();
        if class.devices() > have {
            return Err(Error::InvalidArgument(format!(
                "redundancy {class} needs {} devices; the pool has {have}",
                class.devices()
            )));
        }
        Ok(())
    }

    /// Copies blocks into newly allocated runs: `(src, dst, len)` pieces,
    /// in the order they were laid over the runs. Into a parity class the
    /// pieces that follow each other on the destination are gathered and
    /// written as one, so that every stripe is written whole.
    pub(crate) fn copy_pieces(
        &self,
        pieces: &[(Pba, Pba, u64)],
        striped: bool,
    ) -> std::io::Result<()> {
        let Some(stores) = self.stores.as_deref().filter(|_| striped) else {
            for &(src, dst, len) in pieces {
                self.copy_blocks(src, dst, len)?;
            }
            return Ok(());
        };
        let bs = BLOCK_SIZE as usize;
        let mut i = 0;
        while i < pieces.len() {
            let start = pieces[i].1;
            let mut end = start;
            let mut group = Vec::new();
            while i < pieces.len() && pieces[i].1 == end {
                let (src, _, len) = pieces[i];
                let at = group.len();
                group.resize(at + len as usize * bs, 0);
                let mut expect = Vec::with_capacity(len as usize);
                if let Some(table) = &self.state.read().sums {
                    table.extend_into(src, len, &mut expect);
                }
                stores.read_checked(&mut group[at..], src.bytes(), &expect)?;
                end = end.plus(len);
                i += 1;
            }
            stores.write_at(&group, start.bytes())?;
        }
        Ok(())
    }

    /// Records the checksums of the padding that ends the last stripe of
    /// each parity run just written (zeros, written with the stripe), so
    /// that a scrub or a move checks every block of a live stripe.
    pub(crate) fn pad_sums(s: &mut State, runs: &[Run]) {
        let Some(table) = s.sums.as_mut() else {
            return;
        };
        for r in runs {
            let end = r.end().get();
            let Some((stripe, k)) = s.alloc.stripe_at(end - 1) else {
                continue;
            };
            if end < stripe + k {
                let zero = crate::sums::of_block(&[0u8; BLOCK_SIZE as usize]);
                table.set(Pba::new(end), &vec![zero; (stripe + k - end) as usize]);
            }
        }
    }

    /// Copies `len` blocks from `src` to `dst` (newly allocated, unmapped;
    /// durable after the next sync). In a pool on devices the source is
    /// read through its checksums, so a bad copy is not spread.
    pub(crate) fn copy_blocks(&self, src: Pba, dst: Pba, len: u64) -> std::io::Result<()> {
        let Some(stores) = &self.stores else {
            return self.data.copy(src.bytes(), dst.bytes(), len * BLOCK_SIZE);
        };
        let chunk = crate::io::COPY_CHUNK_BYTES_MAX / BLOCK_SIZE;
        let mut buf = Vec::new();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk);
            let mut expect = Vec::with_capacity(n as usize);
            if let Some(table) = &self.state.read().sums {
                table.extend_into(src.plus(done), n, &mut expect);
            }
            buf.resize((n * BLOCK_SIZE) as usize, 0);
            stores.read_checked(&mut buf, src.plus(done).bytes(), &expect)?;
            stores.write_at(&buf, dst.plus(done).bytes())?;
            done += n;
        }
        Ok(())
    }

    /// Takes `count` blocks of `class`, assembling new stores of the class
    /// from free segments when its stores are full. None (and nothing
    /// taken) when the devices have no room for them.
    pub(crate) fn allocate(
        &self,
        s: &mut State,
        class: Redundancy,
        count: u64,
    ) -> Option<Vec<Run>> {
        loop {
            if let Some(runs) = s.alloc.allocate(class, count) {
                return Some(runs);
            }
            let stores = self.stores.as_ref()?;
            let mut layout = stores.layout().write();
            // On healthy devices if they have room; else born degraded, on
            // a faulted device too, as long as it keeps the data shards
            // (it is as protected as the stores already there, and a
            // rebuild moves its lost segment like theirs).
            let n = match layout.add_store_avoiding(class, |d| stores.errors(d).faulted()) {
                Ok(n) => n,
                Err(_) => {
                    let n = layout
                        .add_store_ranked(class, |d| {
                            let e = stores.errors(d);
                            (!e.removed()).then_some(u8::from(e.faulted()))
                        })
                        .ok()?;
                    let healthy = layout
                        .store(n)
                        .expect("just added")
                        .segments
                        .iter()
                        .filter(|r| !stores.errors(r.device).faulted())
                        .count();
                    if healthy < class.data_shards() {
                        layout.remove_store(n);
                        return None;
                    }
                    n
                }
            };
            let store = layout.store(n).expect("just added");
            let record = StoreRecord {
                class: store.class.to_string(),
                segments: store
                    .segments
                    .iter()
                    .map(|r| (r.device, r.segment))
                    .collect(),
            };
            let (start, blocks) = layout.extent_of(n).expect("just added");
            drop(layout);
            s.alloc.add_region(Run::at(start, blocks), class);
            s.dirty.layout.push((
                codec::key_u64(codec::TAG_STORE, n as u64),
                Some(codec::to_json(&record)),
            ));
        }
    }
}
