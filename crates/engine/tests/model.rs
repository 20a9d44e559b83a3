//! The backbone test: long random sequences of operations against the engine
//! and against a simple in-memory model (a `Vec<u8>` per LUN and snapshot),
//! compared after every step, with faults and crashes injected through the
//! engine's I/O traits and the pool reopened.
//!
//! Seeds: `MODEL_SEEDS` (default 24) starting at `MODEL_SEED` (default 1);
//! steps per seed: `MODEL_STEPS` (default 400). A failure prints its seed.
//!
//! The same sequences run on a pool of three simulated devices (issue 14):
//! LUNs of every redundancy class, device faults failing one copy; and on
//! a pool whose first device lies (flips bits it reads and writes, tears
//! and drops writes, all reported as success) under mirrored and parity LUNs,
//! where every read must still return the right bytes. Parity LUNs
//! (`parity:2+1`) run in both. A device that failed stays out across a
//! restart; after each restart the test clears it and lets the resilver
//! finish, as an operator would. `MODEL_DEVICE_SEEDS` (default 12) seeds
//! each.

use engine::faulty::{FaultyDevice, Misbehave, On, Rule};
use engine::io::DataFile;
use engine::sim::{Fault, FaultPlan, SimData, SimStore};
use engine::{Engine, EngineConfig, Error, RangeEntry, Target, BLOCK_SIZE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const BS: usize = BLOCK_SIZE as usize;
const CAPACITY_BLOCKS: u64 = 120;
/// A pool on devices: three devices of ten 16-block segments.
const DEVICES: usize = 3;
const DEVICE_SEGMENTS: u64 = 10;
const SEGMENT_BYTES: u64 = 16 * BLOCK_SIZE;

/// What the pool's data lives on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// One data file.
    File,
    /// Three devices; LUNs of every class; devices fail (EIO, short
    /// writes) and crash.
    Devices,
    /// Three devices, the first of which lies; mirrored LUNs only; no
    /// device fails loudly, crashes only (one liar and one failure could
    /// leave no good copy, which no redundancy promises).
    Lying,
}

/// The simulated storage under the engine, kept across crashes.
struct Backing {
    mode: Mode,
    files: Vec<SimData>,
    /// What the lying device did, over every open.
    lies: u64,
    liar: Option<Arc<FaultyDevice>>,
}

impl Backing {
    fn new(mode: Mode, plan: &FaultPlan) -> Backing {
        let n = if mode == Mode::File { 1 } else { DEVICES };
        let files: Vec<SimData> = (0..n).map(|_| SimData::new(plan.clone())).collect();
        if mode != Mode::File {
            for f in &files {
                f.ensure_len(engine::label::LABEL_BYTES + DEVICE_SEGMENTS * SEGMENT_BYTES)
                    .unwrap();
            }
        }
        Backing {
            mode,
            files,
            lies: 0,
            liar: None,
        }
    }

    fn after_crash(&mut self, plan: &FaultPlan) -> Backing {
        Backing {
            mode: self.mode,
            files: self
                .files
                .iter()
                .map(|f| f.after_crash(plan.clone()))
                .collect(),
            lies: self.lies_told(),
            liar: None,
        }
    }

    /// Bits flipped, writes torn and writes dropped by the lying device.
    fn lies_told(&self) -> u64 {
        self.lies
            + self.liar.as_ref().map_or(0, |l| {
                let i = l.injected();
                use std::sync::atomic::Ordering::Relaxed;
                i.bit_flips.load(Relaxed) + i.torn.load(Relaxed) + i.dropped.load(Relaxed)
            })
    }

    fn open(&mut self, store: &SimStore, seed: u64, salt: u64) -> engine::Result<Arc<Engine>> {
        if self.mode == Mode::File {
            return Engine::open_with(
                Box::new(self.files[0].clone()),
                Box::new(store.clone()),
                CAPACITY_BLOCKS,
                config(seed),
            );
        }
        let mut devices = Vec::new();
        let mut liar_now = None;
        for (i, f) in self.files.iter().enumerate() {
            let f: Arc<dyn DataFile> = Arc::new(f.clone());
            let f = if i == 0 && self.mode == Mode::Lying {
                let liar = FaultyDevice::new(f, seed ^ salt);
                liar.inject(Rule::always(On::Read, Misbehave::BitFlip).one_in(10));
                liar.inject(Rule::always(On::Write, Misbehave::BitFlip).one_in(20));
                liar.inject(Rule::always(On::Write, Misbehave::Torn).one_in(30));
                liar.inject(Rule::always(On::Write, Misbehave::Dropped).one_in(30));
                let liar = Arc::new(liar);
                liar_now = Some(liar.clone());
                liar as Arc<dyn DataFile>
            } else {
                f
            };
            devices.push((f, DEVICE_SEGMENTS));
        }
        if liar_now.is_some() {
            self.lies = self.lies_told();
            self.liar = liar_now;
        }
        Engine::open_devices_with(
            devices,
            Box::new(store.clone()),
            SEGMENT_BYTES,
            config(seed),
        )
    }
}

#[derive(Clone, Default)]
struct MLun {
    data: Vec<u8>,
    /// Content at the last durable point.
    durable: Vec<u8>,
    /// Other values each block may hold after a crash (written since).
    since: HashMap<usize, Vec<Vec<u8>>>,
    snapshots: BTreeMap<String, Vec<u8>>,
    /// Blocks a failed write may have torn since the last durable point: a
    /// crash may leave any mixture of old and new sectors there.
    torn: std::collections::HashSet<usize>,
}

impl MLun {
    fn new(blocks: usize) -> MLun {
        MLun {
            data: vec![0; blocks * BS],
            durable: vec![0; blocks * BS],
            ..Default::default()
        }
    }

    fn blocks(&self) -> usize {
        self.data.len() / BS
    }

    /// Records that bytes [off, off+len) changed (or may have).
    fn touched(&mut self, off: usize, len: usize) {
        if len == 0 {
            return;
        }
        for b in off / BS..(off + len).div_ceil(BS) {
            let v = self.data[b * BS..(b + 1) * BS].to_vec();
            self.since.entry(b).or_default().push(v);
        }
    }
}

struct World {
    rng: StdRng,
    seed: u64,
    plan: FaultPlan,
    backing: Backing,
    store: SimStore,
    engine: Arc<Engine>,
    luns: BTreeMap<String, MLun>,
    /// Blocks whose content is unknown after a failed write.
    unknown: HashMap<String, Vec<usize>>,
    groups: BTreeMap<String, Vec<String>>,
    crashes: u64,
    faults: u64,
    /// Devices taken back and resilvered after a restart.
    resilvers: u64,
    nospace: u64,
    /// A management call failed in a crash: its outcome is decided on reopen.
    pending_uncertain: Option<Uncertain>,
    /// A fault is armed for this step: a failure may come from the device.
    armed: bool,
    clones: u64,
    split_bytes: u64,
    splits_done: u64,
    range_clones: u64,
}

/// Two seeds in three read clone chains of two levels or more through owner
/// indexes (decision 014), the third level by level.
fn config(seed: u64) -> EngineConfig {
    EngineConfig {
        background: false,
        dirty_keys_max: 1 << 30,
        reclaim_ranges_per_batch: 3,
        check_after_commit: true,
        chain_index_min_levels: if seed.is_multiple_of(3) {
            usize::MAX
        } else {
            2
        },
        ..Default::default()
    }
}

fn pattern(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let style = rng.gen_range(0..3);
    let byte: u8 = rng.gen();
    (0..len)
        .map(|i| match style {
            0 => byte,
            1 => byte.wrapping_add(i as u8),
            _ => rng.gen(),
        })
        .collect()
}

impl World {
    fn new(seed: u64, mode: Mode) -> World {
        let plan = FaultPlan::new(seed);
        let backing = Backing::new(mode, &plan);
        let store = SimStore::new(plan.clone());
        let mut backing = backing;
        let engine = backing.open(&store, seed, 0).expect("open a new pool");
        World {
            rng: StdRng::seed_from_u64(seed),
            seed,
            plan,
            backing,
            store,
            engine,
            luns: BTreeMap::new(),
            unknown: HashMap::new(),
            groups: BTreeMap::new(),
            crashes: 0,
            faults: 0,
            resilvers: 0,
            nospace: 0,
            pending_uncertain: None,
            armed: false,
            clones: 0,
            split_bytes: 0,
            splits_done: 0,
            range_clones: 0,
        }
    }

    fn lun_name(&mut self) -> String {
        let names = ["a", "b", "vol/c", "vol/d"];
        names[self.rng.gen_range(0..names.len())].to_string()
    }

    fn existing_lun(&mut self) -> Option<String> {
        if self.luns.is_empty() {
            return None;
        }
        let i = self.rng.gen_range(0..self.luns.len());
        self.luns.keys().nth(i).cloned()
    }

    /// Everything the model holds is durable now.
    fn all_durable(&mut self) {
        for l in self.luns.values_mut() {
            l.durable = l.data.clone();
            l.since.clear();
            l.torn.clear();
        }
    }

    fn target(&self, lun: &str) -> Target {
        self.engine
            .resolve(lun)
            .unwrap_or_else(|e| panic!("seed {}: resolve {lun}: {e}", self.seed))
    }

    /// Maybe arm a fault for the next operation.
    fn maybe_fault(&mut self) -> bool {
        if self.rng.gen_ratio(1, 12) {
            let fault = match self.rng.gen_range(0..4) {
                _ if self.backing.mode == Mode::Lying => Fault::Crash,
                0 => Fault::Eio,
                1 => Fault::NoSpace,
                2 => Fault::ShortWrite,
                _ => Fault::Crash,
            };
            self.plan.inject_after(self.rng.gen_range(1..6), fault);
            true
        } else {
            false
        }
    }

    fn step(&mut self) {
        let armed = self.maybe_fault();
        self.armed = armed;
        let op = self.rng.gen_range(0..100);
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!(
                "op {op} armed={armed} luns={:?}",
                self.luns.keys().collect::<Vec<_>>()
            );
        }
        let result: Result<(), Error> = match op {
            0..=5 => self.op_create_lun(),
            6..=40 => self.op_write(),
            41..=46 => self.op_trim(),
            47..=52 => self.op_zero(),
            53..=60 => self.op_flush(),
            61..=70 => self.op_snapshot(),
            71..=75 => self.op_delete_snapshot(),
            76..=80 => self.op_restore(),
            81..=83 => self.op_resize(),
            84..=85 => self.op_delete_lun(),
            86..=87 => self.op_group(),
            88 => self.op_delete_group(),
            89..=90 => {
                self.engine.run_job_batch();
                Ok(())
            }
            91 => self.op_reopen(),
            92..=93 => self.op_clone(),
            94 => self.op_split_start_stop(),
            98 => self.op_range_clone(),
            95..=97 => {
                for _ in 0..self.rng.gen_range(1..4) {
                    if let engine::SplitStep::Copied(b) = self.engine.run_split_batch() {
                        self.split_bytes += b;
                    }
                }
                for name in self.luns.keys() {
                    if self
                        .engine
                        .split_status(name)
                        .is_ok_and(|i| i.state == engine::SplitPhase::Done)
                    {
                        self.splits_done += 1;
                    }
                }
                Ok(())
            }
            _ => self.op_read_unaligned(),
        };
        if let Err(e) = result {
            match e {
                Error::PoolFailed(_) | Error::Io(_) | Error::Store(_)
                    if armed || self.plan.crashed() => {}
                Error::NoSpace(_) => self.nospace += 1,
                e => panic!("seed {}: unexpected error {e}", self.seed),
            }
        }
        let failed = self.engine.pool_status().is_err();
        if failed || self.plan.crashed() {
            self.crash();
        }
        self.plan.clear();
        self.verify();
    }

    /// Who reads through whom, as the engine says (contents are checked
    /// against the model; a wrong dependency shows up as wrong content).
    fn has_clones(&self, lun: &str) -> bool {
        self.engine
            .lun_info(lun)
            .is_ok_and(|i| !i.clones.is_empty())
    }

    fn op_clone(&mut self) -> Result<(), Error> {
        let Some(lun) = self.existing_lun() else {
            return Ok(());
        };
        let snaps: Vec<String> = self.luns[&lun].snapshots.keys().cloned().collect();
        if snaps.is_empty() {
            return Ok(());
        }
        let snap = snaps[self.rng.gen_range(0..snaps.len())].clone();
        let names = ["k1", "k2", "vol/k3", "vol/k4"];
        let count = if self.rng.gen_ratio(1, 4) { 2 } else { 1 };
        let first = self.rng.gen_range(0..names.len() - 1);
        let new: Vec<String> = names[first..first + count]
            .iter()
            .map(|n| n.to_string())
            .collect();
        let split = self.rng.gen_ratio(1, 4);
        let content = self.luns[&lun].snapshots[&snap].clone();
        match self
            .engine
            .create_clones(&format!("{lun}@{snap}"), &new, split)
        {
            Ok(infos) => {
                assert_eq!(infos.len(), new.len());
                self.clones += new.len() as u64;
                for n in new {
                    assert!(
                        !self.luns.contains_key(&n),
                        "seed {}: clone over an existing LUN",
                        self.seed
                    );
                    let mut m = MLun::new(0);
                    m.data = content.clone();
                    m.durable = content.clone();
                    self.luns.insert(n, m);
                }
                self.all_durable();
                Ok(())
            }
            Err(Error::AlreadyExists { .. }) => {
                assert!(new.iter().any(|n| self.luns.contains_key(n)));
                Ok(())
            }
            Err(e) => {
                self.pending_uncertain = Some(Uncertain::Clones(new, content));
                Err(e)
            }
        }
    }

    /// Range clone onto an existing LUN from LUNs and snapshots (itself
    /// included); about one call in eight is refused for overlap.
    fn op_range_clone(&mut self) -> Result<(), Error> {
        let Some(target) = self.existing_lun() else {
            return Ok(());
        };
        let mut sources: Vec<String> = Vec::new();
        for (name, l) in &self.luns {
            sources.push(name.clone());
            sources.extend(l.snapshots.keys().map(|s| format!("{name}@{s}")));
        }
        let tblocks = self.luns[&target].blocks();
        let mut entries = Vec::new();
        for _ in 0..self.rng.gen_range(1..=3) {
            let src = sources[self.rng.gen_range(0..sources.len())].clone();
            let content = self.source_content(&src);
            let sblocks = content.len() / BS;
            let n = self.rng.gen_range(1..=sblocks.min(tblocks).min(8));
            entries.push(RangeEntry {
                source: src,
                source_offset: (self.rng.gen_range(0..=sblocks - n) * BS) as u64,
                target_offset: (self.rng.gen_range(0..=tblocks - n) * BS) as u64,
                length: (n * BS) as u64,
            });
        }
        // The model's verdict: target ranges must not overlap each other or
        // a range read from the target's own head.
        let overlap = |a: u64, an: u64, b: u64, bn: u64| a < b + bn && b < a + an;
        let mut refused = false;
        for (i, e) in entries.iter().enumerate() {
            for (j, f) in entries.iter().enumerate() {
                if i < j && overlap(e.target_offset, e.length, f.target_offset, f.length) {
                    refused = true;
                }
                if f.source == target
                    && overlap(e.target_offset, e.length, f.source_offset, f.length)
                {
                    refused = true;
                }
            }
        }
        let mut new = self.luns[&target].data.clone();
        for e in &entries {
            let content = self.source_content(&e.source);
            let (so, to, n) = (
                e.source_offset as usize,
                e.target_offset as usize,
                e.length as usize,
            );
            new[to..to + n].copy_from_slice(&content[so..so + n]);
        }
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("range clone onto {target}: {entries:?}");
        }
        match self.engine.clone_ranges(&target, &entries) {
            Ok(report) => {
                assert!(
                    !refused,
                    "seed {}: overlapping range clone accepted: {entries:?}",
                    self.seed
                );
                assert_eq!(report.ranges, entries.len() as u64);
                self.range_clones += 1;
                let l = self.luns.get_mut(&target).unwrap();
                l.data = new;
                self.all_durable();
                Ok(())
            }
            Err(Error::InvalidArgument(m)) => {
                assert!(
                    refused,
                    "seed {}: range clone {entries:?} refused: {m}",
                    self.seed
                );
                Ok(())
            }
            Err(e) => {
                self.faults += 1;
                let l = self.luns.get_mut(&target).unwrap();
                for b in 0..l.blocks() {
                    if new[b * BS..(b + 1) * BS] != l.data[b * BS..(b + 1) * BS] {
                        l.since
                            .entry(b)
                            .or_default()
                            .push(new[b * BS..(b + 1) * BS].to_vec());
                        self.unknown.entry(target.clone()).or_default().push(b);
                    }
                }
                Err(e)
            }
        }
    }

    /// What the model says `LUN` or `LUN@SNAPSHOT` reads.
    fn source_content(&self, source: &str) -> Vec<u8> {
        match source.split_once('@') {
            None => self.luns[source].data.clone(),
            Some((lun, snap)) => self.luns[lun].snapshots[snap].clone(),
        }
    }

    fn op_split_start_stop(&mut self) -> Result<(), Error> {
        let Some(lun) = self.existing_lun() else {
            return Ok(());
        };
        let is_clone = self.engine.lun_info(&lun).unwrap().parent.is_some();
        let r = if self.rng.gen_bool(0.7) {
            self.engine.start_split(&lun)
        } else {
            self.engine.stop_split(&lun)
        };
        match r {
            Ok(info) => {
                assert!(
                    is_clone,
                    "seed {}: split of a LUN that is not a clone",
                    self.seed
                );
                assert!(info.progress <= 1.0);
                Ok(())
            }
            Err(Error::InvalidArgument(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn op_create_lun(&mut self) -> Result<(), Error> {
        let name = self.lun_name();
        let blocks = self.rng.gen_range(1..40);
        let class = match self.backing.mode {
            Mode::File => None,
            Mode::Devices => {
                Some(["none", "mirror", "mirror3", "parity:2+1"][self.rng.gen_range(0..4)])
            }
            Mode::Lying => Some(["mirror", "mirror3", "parity:2+1"][self.rng.gen_range(0..3)]),
        };
        let class = class.map(|c| c.parse().unwrap());
        let r = self
            .engine
            .create_lun_in(&name, blocks as u64 * BLOCK_SIZE, class);
        match r {
            Ok(_) => {
                assert!(
                    !self.luns.contains_key(&name),
                    "seed {}: duplicate LUN created",
                    self.seed
                );
                self.luns.insert(name, MLun::new(blocks));
                self.all_durable();
                Ok(())
            }
            Err(Error::AlreadyExists { .. }) => {
                assert!(self.luns.contains_key(&name));
                Ok(())
            }
            Err(e) => {
                // Uncertain: decided after the crash.
                self.pending_uncertain = Some(Uncertain::CreateLun(name, blocks));
                Err(e)
            }
        }
    }

    fn op_write(&mut self) -> Result<(), Error> {
        let Some(name) = self.existing_lun() else {
            return Ok(());
        };
        let size = self.luns[&name].data.len();
        let (off, len) = if self.rng.gen_bool(0.7) {
            let b = self.rng.gen_range(0..size / BS);
            let n = self.rng.gen_range(1..=(size / BS - b).min(6));
            (b * BS, n * BS)
        } else {
            let off = self.rng.gen_range(0..size);
            let len = self.rng.gen_range(1..=(size - off).min(3 * BS));
            (off, len)
        };
        // Some writes are zeros (recorded in the map, not written), or
        // mix zero blocks with data.
        let data = match self.rng.gen_range(0..10) {
            0 => vec![0u8; len],
            1 => {
                let mut d = pattern(&mut self.rng, len);
                let z = self.rng.gen_range(0..len);
                let n = self.rng.gen_range(0..=(len - z).min(2 * BS));
                d[z..z + n].fill(0);
                d
            }
            _ => pattern(&mut self.rng, len),
        };
        let fua = self.rng.gen_ratio(1, 10);
        let t = self.target(&name);
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("write {name} {off}+{len} fua={fua}");
        }
        match self.engine.write(t, off as u64, &data, fua) {
            Ok(()) => {
                let l = self.luns.get_mut(&name).unwrap();
                l.data[off..off + len].copy_from_slice(&data);
                l.touched(off, len);
                if fua {
                    self.all_durable();
                }
                Ok(())
            }
            Err(Error::NoSpace(m)) if !self.armed => {
                // The allocator refused before any data was written: nothing
                // changed. (A device's ENOSPC, below, may leave part written.)
                Err(Error::NoSpace(m))
            }
            Err(e) => {
                if std::env::var_os("MODEL_TRACE").is_some() {
                    eprintln!("  write failed: {e}");
                }
                self.faults += 1;
                let l = self.luns.get_mut(&name).unwrap();
                // Either content may be there now; after a crash any
                // written version may be.
                let mut new = l.data.clone();
                new[off..off + len].copy_from_slice(&data);
                for b in off / BS..(off + len).div_ceil(BS) {
                    l.since
                        .entry(b)
                        .or_default()
                        .push(new[b * BS..(b + 1) * BS].to_vec());
                    self.unknown.entry(name.clone()).or_default().push(b);
                    l.torn.insert(b);
                }
                Err(e)
            }
        }
    }

    fn zero_like(&mut self, trim: bool) -> Result<(), Error> {
        let Some(name) = self.existing_lun() else {
            return Ok(());
        };
        let size = self.luns[&name].data.len();
        let off = if self.rng.gen_bool(0.6) {
            self.rng.gen_range(0..size / BS) * BS
        } else {
            self.rng.gen_range(0..size)
        };
        let len = self.rng.gen_range(0..=(size - off).min(8 * BS));
        let t = self.target(&name);
        let no_hole = self.rng.gen_bool(0.5);
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("zero {name} {off}+{len} trim={trim} no_hole={no_hole}");
        }
        let r = if trim {
            self.engine.trim(t, off as u64, len as u64, false)
        } else {
            self.engine
                .write_zeroes(t, off as u64, len as u64, no_hole, false)
        };
        let l = self.luns.get_mut(&name).unwrap();
        match r {
            Ok(()) => {
                l.data[off..off + len].fill(0);
                l.touched(off, len);
                Ok(())
            }
            Err(e) => {
                // Edges and middle are separate steps: the range may be
                // partly zeroed.
                let mut new = l.data.clone();
                new[off..off + len].fill(0);
                for b in off / BS..(off + len).div_ceil(BS) {
                    l.since
                        .entry(b)
                        .or_default()
                        .push(new[b * BS..(b + 1) * BS].to_vec());
                    self.unknown.entry(name.clone()).or_default().push(b);
                    l.torn.insert(b);
                }
                if !matches!(e, Error::NoSpace(_)) {
                    self.faults += 1;
                }
                Err(e)
            }
        }
    }

    fn op_trim(&mut self) -> Result<(), Error> {
        self.zero_like(true)
    }

    fn op_zero(&mut self) -> Result<(), Error> {
        self.zero_like(false)
    }

    fn op_flush(&mut self) -> Result<(), Error> {
        self.engine.flush()?;
        self.all_durable();
        Ok(())
    }

    fn snapshot_name(&mut self) -> String {
        format!("s{}", self.rng.gen_range(0..6))
    }

    fn op_snapshot(&mut self) -> Result<(), Error> {
        let Some(name) = self.existing_lun() else {
            return Ok(());
        };
        let snap = self.snapshot_name();
        match self.engine.create_snapshot(&name, &snap) {
            Ok(info) => {
                let l = self.luns.get_mut(&name).unwrap();
                assert!(!l.snapshots.contains_key(&snap));
                assert_eq!(info.size_bytes as usize, l.data.len());
                let content = l.data.clone();
                l.snapshots.insert(snap, content);
                self.all_durable();
                Ok(())
            }
            Err(Error::AlreadyExists { .. }) => {
                assert!(self.luns[&name].snapshots.contains_key(&snap));
                Ok(())
            }
            Err(e) => {
                let content = self.luns[&name].data.clone();
                self.pending_uncertain = Some(Uncertain::Snapshot(name, snap, content));
                Err(e)
            }
        }
    }

    fn op_delete_snapshot(&mut self) -> Result<(), Error> {
        let Some(name) = self.existing_lun() else {
            return Ok(());
        };
        let snap = self.snapshot_name();
        let in_group = self.groups.get(&snap).is_some_and(|m| m.contains(&name));
        // Space accounting: deleting a snapshot frees exactly what
        // `snapshot list` says it holds alone (unless clones keep it).
        let settled = !self.armed && self.luns[&name].snapshots.contains_key(&snap) && {
            self.engine.run_jobs();
            self.engine.flush().is_ok()
        };
        let before = self.engine.pool_status().map(|p| p.used_bytes).unwrap_or(0);
        let info = self
            .engine
            .list_snapshots(Some(&name))
            .ok()
            .and_then(|v| v.into_iter().find(|i| i.name == snap));
        match self.engine.delete_snapshot(&name, &snap) {
            Ok(()) => {
                assert!(
                    !in_group,
                    "seed {}: deleted a group member alone",
                    self.seed
                );
                // A parity LUN frees whole stripes: what a snapshot held
                // alone is counted in blocks, what the pool frees is not.
                let striped = self.engine.list_luns("").is_ok_and(|v| {
                    v.iter()
                        .any(|l| l.name == name && l.redundancy.starts_with("parity"))
                });
                if let (true, false, Some(info)) = (settled, striped, info) {
                    self.engine.run_jobs();
                    self.engine.flush().unwrap();
                    let freed = before - self.engine.pool_status().unwrap().used_bytes;
                    let expected = if info.clones.is_empty() {
                        info.exclusive_bytes
                    } else {
                        0
                    };
                    assert_eq!(
                        freed, expected,
                        "seed {}: deleting {name}@{snap} freed {freed} bytes, it said it held {expected} alone",
                        self.seed
                    );
                }
                assert!(self
                    .luns
                    .get_mut(&name)
                    .unwrap()
                    .snapshots
                    .remove(&snap)
                    .is_some());
                self.all_durable();
                Ok(())
            }
            Err(Error::NotFound { .. }) => {
                assert!(!self.luns[&name].snapshots.contains_key(&snap));
                Ok(())
            }
            Err(Error::HasDependents(_)) => {
                assert!(in_group);
                Ok(())
            }
            Err(e) => {
                self.pending_uncertain = Some(Uncertain::DeleteSnapshot(name, snap));
                Err(e)
            }
        }
    }

    fn op_restore(&mut self) -> Result<(), Error> {
        let Some(name) = self.existing_lun() else {
            return Ok(());
        };
        let snap = self.snapshot_name();
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("restore {name}@{snap}");
        }
        match self.engine.restore_snapshot(&name, &snap) {
            Ok(()) => {
                let l = self.luns.get_mut(&name).unwrap();
                l.data = l.snapshots[&snap].clone();
                self.all_durable();
                Ok(())
            }
            Err(Error::NotFound { .. }) => {
                assert!(!self.luns[&name].snapshots.contains_key(&snap));
                Ok(())
            }
            Err(e) => {
                let content = self.luns[&name].snapshots[&snap].clone();
                self.pending_uncertain = Some(Uncertain::Restore(name, content));
                Err(e)
            }
        }
    }

    fn op_resize(&mut self) -> Result<(), Error> {
        let Some(name) = self.existing_lun() else {
            return Ok(());
        };
        let blocks = self.rng.gen_range(1..48);
        let shrink_ok = self.rng.gen_bool(0.7);
        let old = self.luns[&name].blocks();
        match self
            .engine
            .resize_lun(&name, blocks as u64 * BLOCK_SIZE, shrink_ok)
        {
            Ok(info) => {
                assert!(blocks >= old || shrink_ok);
                assert_eq!(info.size_bytes, blocks as u64 * BLOCK_SIZE);
                let l = self.luns.get_mut(&name).unwrap();
                l.data.resize(blocks * BS, 0);
                l.since.retain(|&b, _| b < blocks);
                self.all_durable();
                Ok(())
            }
            Err(Error::InvalidArgument(_)) => {
                assert!(blocks < old && !shrink_ok);
                Ok(())
            }
            Err(e) => {
                self.pending_uncertain = Some(Uncertain::Resize(name, blocks));
                Err(e)
            }
        }
    }

    fn op_delete_lun(&mut self) -> Result<(), Error> {
        let Some(name) = self.existing_lun() else {
            return Ok(());
        };
        let recursive = self.rng.gen_bool(0.5);
        let has_clones = self.has_clones(&name);
        let l = &self.luns[&name];
        let in_group = self.groups.values().any(|m| m.contains(&name));
        match self.engine.delete_lun(&name, recursive) {
            Ok(()) => {
                assert!(!in_group && !has_clones && (recursive || l.snapshots.is_empty()));
                self.luns.remove(&name);
                self.all_durable();
                Ok(())
            }
            Err(Error::HasDependents(_)) => {
                assert!(in_group || has_clones || (!recursive && !l.snapshots.is_empty()));
                Ok(())
            }
            Err(e) => {
                self.pending_uncertain = Some(Uncertain::DeleteLun(name));
                Err(e)
            }
        }
    }

    fn op_group(&mut self) -> Result<(), Error> {
        let name = format!("g{}", self.rng.gen_range(0..3));
        let mut members: Vec<String> = self
            .luns
            .keys()
            .filter(|_| self.rng.gen_bool(0.6))
            .cloned()
            .collect();
        if members.is_empty() {
            return Ok(());
        }
        members.sort();
        let clash = self.groups.contains_key(&name)
            || members
                .iter()
                .any(|m| self.luns[m].snapshots.contains_key(&name));
        match self.engine.create_group_snapshot(&name, &members) {
            Ok(info) => {
                assert!(!clash);
                assert_eq!(info.members.len(), members.len());
                for m in &members {
                    let l = self.luns.get_mut(m).unwrap();
                    let content = l.data.clone();
                    l.snapshots.insert(name.clone(), content);
                }
                self.groups.insert(name, members);
                self.all_durable();
                Ok(())
            }
            Err(Error::AlreadyExists { .. }) => {
                assert!(clash);
                Ok(())
            }
            Err(e) => {
                let contents = members
                    .iter()
                    .map(|m| (m.clone(), self.luns[m].data.clone()))
                    .collect();
                self.pending_uncertain = Some(Uncertain::Group(name, contents));
                Err(e)
            }
        }
    }

    fn op_delete_group(&mut self) -> Result<(), Error> {
        let name = format!("g{}", self.rng.gen_range(0..3));
        match self.engine.delete_group_snapshot(&name) {
            Ok(()) => {
                let members = self.groups.remove(&name).expect("model has the group");
                for m in members {
                    if let Some(l) = self.luns.get_mut(&m) {
                        l.snapshots.remove(&name);
                    }
                }
                self.all_durable();
                Ok(())
            }
            Err(Error::NotFound { .. }) => {
                assert!(!self.groups.contains_key(&name));
                Ok(())
            }
            Err(e) => {
                self.pending_uncertain = Some(Uncertain::DeleteGroup(name));
                Err(e)
            }
        }
    }

    fn op_reopen(&mut self) -> Result<(), Error> {
        // A clean restart: close commits everything.
        self.engine.close()?;
        self.all_durable();
        let plan = FaultPlan::new(self.rng.gen());
        self.backing = self.backing.after_crash(&plan);
        self.store = self.store.after_crash(plan.clone());
        self.plan = plan;
        self.engine = self
            .backing
            .open(&self.store, self.seed, self.rng.gen())
            .unwrap_or_else(|e| panic!("seed {}: reopen: {e}", self.seed));
        self.resilver();
        self.unknown.clear();
        self.engine.run_jobs();
        Ok(())
    }

    fn op_read_unaligned(&mut self) -> Result<(), Error> {
        let Some(name) = self.existing_lun() else {
            return Ok(());
        };
        if self.unknown.contains_key(&name) {
            return Ok(());
        }
        let size = self.luns[&name].data.len();
        let off = self.rng.gen_range(0..size);
        let len = self.rng.gen_range(0..=(size - off).min(3 * BS));
        let mut buf = vec![0xee; len];
        self.engine.read(self.target(&name), off as u64, &mut buf)?;
        assert!(
            buf == self.luns[&name].data[off..off + len],
            "seed {}: unaligned read of {name} differs",
            self.seed
        );
        Ok(())
    }

    /// After a restart, the operator takes back every device that failed
    /// (it stayed out across the restart: its copies may be stale) and
    /// lets the resilver finish, with no fault injected meanwhile.
    fn resilver(&mut self) {
        if self.backing.mode == Mode::File {
            return;
        }
        let faulted: Vec<String> = self
            .engine
            .pool_devices()
            .unwrap()
            .into_iter()
            .filter(|d| d.state == "faulted")
            .map(|d| d.path)
            .collect();
        if faulted.is_empty() {
            return;
        }
        self.plan.clear();
        for p in faulted {
            self.engine
                .clear_device(std::path::Path::new(&p))
                .unwrap_or_else(|e| panic!("seed {}: clear {p}: {e}", self.seed));
        }
        for _ in 0..100_000 {
            if self.engine.run_scrub_batch() == engine::scrub::ScrubStep::Idle
                && self.engine.scrub_status().unwrap().state != "running"
            {
                break;
            }
        }
        let done = self.engine.scrub_status().unwrap();
        assert_eq!(
            (done.state.as_str(), done.lost_blocks),
            ("done", 0),
            "seed {}: the resilver: {done:?}",
            self.seed
        );
        self.resilvers += 1;
    }

    /// The process died: reopen from what reached the simulated disk, then
    /// check that only what the crash contract allows was lost.
    fn crash(&mut self) {
        self.crashes += 1;
        let plan = FaultPlan::new(self.rng.gen());
        self.backing = self.backing.after_crash(&plan);
        self.store = self.store.after_crash(plan.clone());
        self.plan = plan;
        self.engine = self
            .backing
            .open(&self.store, self.seed, self.rng.gen())
            .unwrap_or_else(|e| panic!("seed {}: reopen after crash: {e}", self.seed));
        self.resilver();
        self.engine
            .check_invariants()
            .unwrap_or_else(|e| panic!("seed {}: after crash: {e}", self.seed));
        self.resolve_uncertain();
        // Existence must match the model now.
        let listed: Vec<String> = self
            .engine
            .list_luns("")
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        let modeled: Vec<String> = self.luns.keys().cloned().collect();
        assert_eq!(listed, modeled, "seed {}: LUNs after crash", self.seed);
        let names: Vec<String> = self.luns.keys().cloned().collect();
        for name in names {
            let info = self.engine.lun_info(&name).unwrap();
            let l = self.luns.get_mut(&name).unwrap();
            assert_eq!(
                info.size_bytes as usize,
                l.data.len(),
                "seed {}: size of {name} after crash",
                self.seed
            );
            let mut got = vec![0u8; l.data.len()];
            let t = self.engine.resolve(&name).unwrap();
            self.engine.read(t, 0, &mut got).unwrap();
            for b in 0..l.blocks() {
                let g = &got[b * BS..(b + 1) * BS];
                let ok = g == &l.durable[b * BS..(b + 1) * BS]
                    || g == &l.data[b * BS..(b + 1) * BS]
                    || l.since.get(&b).is_some_and(|vs| vs.iter().any(|v| v == g))
                    || l.torn.contains(&b);
                assert!(
                    ok,
                    "seed {}: block {b} of {name} after crash holds data never written there",
                    self.seed
                );
            }
            l.data = got;
            // Snapshots are exact.
            for (snap, content) in &l.snapshots {
                let t = self
                    .engine
                    .resolve(&format!("{name}@{snap}"))
                    .unwrap_or_else(|e| {
                        panic!(
                            "seed {}: snapshot {name}@{snap} lost in a crash: {e}",
                            self.seed
                        )
                    });
                let mut got = vec![0u8; content.len()];
                self.engine.read(t, 0, &mut got).unwrap();
                assert!(
                    &got == content,
                    "seed {}: snapshot {name}@{snap} changed in a crash",
                    self.seed
                );
            }
        }
        self.unknown.clear();
        self.all_durable();
        self.engine.run_jobs();
    }

    fn resolve_uncertain(&mut self) {
        let Some(u) = self.pending_uncertain.take() else {
            return;
        };
        match u {
            Uncertain::Clones(names, content) => {
                for n in names {
                    if self.engine.lun_info(&n).is_ok() && !self.luns.contains_key(&n) {
                        let mut m = MLun::new(0);
                        m.data = content.clone();
                        m.durable = content.clone();
                        self.luns.insert(n, m);
                    }
                }
            }
            Uncertain::CreateLun(name, blocks) => {
                if self.engine.lun_info(&name).is_ok() && !self.luns.contains_key(&name) {
                    self.luns.insert(name, MLun::new(blocks));
                }
            }
            Uncertain::Snapshot(name, snap, content) => {
                if self.engine.resolve(&format!("{name}@{snap}")).is_ok() {
                    if let Some(l) = self.luns.get_mut(&name) {
                        l.snapshots.entry(snap).or_insert(content);
                    }
                }
            }
            Uncertain::DeleteSnapshot(name, snap) => {
                if self.engine.resolve(&format!("{name}@{snap}")).is_err() {
                    self.luns.get_mut(&name).unwrap().snapshots.remove(&snap);
                }
            }
            Uncertain::Restore(name, content) => {
                let l = self.luns.get_mut(&name).unwrap();
                let info = self.engine.lun_info(&name).unwrap();
                if info.size_bytes as usize != l.data.len() {
                    // Only the restore changes the size: it happened.
                    l.data = content.clone();
                    l.durable = content;
                    l.since.clear();
                } else {
                    for b in 0..(content.len() / BS).min(l.blocks()) {
                        l.since
                            .entry(b)
                            .or_default()
                            .push(content[b * BS..(b + 1) * BS].to_vec());
                    }
                }
            }
            Uncertain::Resize(name, blocks) => {
                let info = self.engine.lun_info(&name).unwrap();
                let l = self.luns.get_mut(&name).unwrap();
                if info.size_bytes as usize == blocks * BS {
                    l.data.resize(blocks * BS, 0);
                    l.durable.resize(blocks * BS, 0);
                    l.since.retain(|&b, _| b < blocks);
                }
            }
            Uncertain::DeleteLun(name) => {
                if self.engine.lun_info(&name).is_err() {
                    self.luns.remove(&name);
                }
            }
            Uncertain::Group(name, contents) => {
                if self.engine.group_info(&name).is_ok() {
                    for (m, content) in &contents {
                        self.luns
                            .get_mut(m)
                            .unwrap()
                            .snapshots
                            .insert(name.clone(), content.clone());
                    }
                    self.groups
                        .insert(name, contents.into_iter().map(|(m, _)| m).collect());
                }
            }
            Uncertain::DeleteGroup(name) => {
                if self.engine.group_info(&name).is_err() {
                    for m in self.groups.remove(&name).unwrap() {
                        if let Some(l) = self.luns.get_mut(&m) {
                            l.snapshots.remove(&name);
                        }
                    }
                }
            }
        }
    }

    /// Every LUN and snapshot reads exactly as the model says; invariants hold.
    fn verify(&mut self) {
        self.engine
            .check_invariants()
            .unwrap_or_else(|e| panic!("seed {}: {e}", self.seed));
        // Adopt what failed writes left.
        for (name, blocks) in std::mem::take(&mut self.unknown) {
            let Some(l) = self.luns.get_mut(&name) else {
                continue;
            };
            let t = self.engine.resolve(&name).unwrap();
            for b in blocks {
                if b < l.blocks() {
                    let mut got = vec![0u8; BS];
                    self.engine.read(t, (b * BS) as u64, &mut got).unwrap();
                    l.data[b * BS..(b + 1) * BS].copy_from_slice(&got);
                }
            }
        }
        let listed: Vec<String> = self
            .engine
            .list_luns("")
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(
            listed,
            self.luns.keys().cloned().collect::<Vec<_>>(),
            "seed {}: LUN list",
            self.seed
        );
        for (name, l) in &self.luns {
            let t = self.engine.resolve(name).unwrap();
            let mut got = vec![0u8; l.data.len()];
            self.engine.read(t, 0, &mut got).unwrap();
            if got != l.data {
                let b = (0..l.blocks())
                    .find(|&b| got[b * BS..(b + 1) * BS] != l.data[b * BS..(b + 1) * BS])
                    .unwrap();
                panic!(
                    "seed {}: LUN {name} differs from the model at block {b}",
                    self.seed
                );
            }
            let snaps: Vec<String> = self
                .engine
                .list_snapshots(Some(name))
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect();
            let mut modeled: Vec<String> = l.snapshots.keys().cloned().collect();
            let mut listed = snaps.clone();
            listed.sort();
            modeled.sort();
            assert_eq!(listed, modeled, "seed {}: snapshots of {name}", self.seed);
            for (snap, content) in &l.snapshots {
                let t = self.engine.resolve(&format!("{name}@{snap}")).unwrap();
                let mut got = vec![0u8; content.len()];
                self.engine.read(t, 0, &mut got).unwrap();
                assert!(
                    &got == content,
                    "seed {}: snapshot {name}@{snap} differs from the model",
                    self.seed
                );
            }
        }
    }

    /// Deleting everything returns the pool to empty (invariant 4).
    fn teardown(&mut self) {
        for g in self.groups.keys().cloned().collect::<Vec<_>>() {
            self.engine.delete_group_snapshot(&g).unwrap();
        }
        // Clones first: a LUN whose snapshot backs a clone cannot go.
        let mut left: Vec<String> = self.luns.keys().cloned().collect();
        for _ in 0..16 {
            left.retain(|name| match self.engine.delete_lun(name, true) {
                Ok(()) => false,
                Err(Error::HasDependents(_)) => true,
                Err(e) => panic!("seed {}: teardown delete {name}: {e}", self.seed),
            });
        }
        assert!(
            left.is_empty(),
            "seed {}: could not delete {left:?}",
            self.seed
        );
        self.engine.run_jobs();
        self.engine.flush().unwrap();
        let status = self.engine.pool_status().unwrap();
        assert_eq!(
            status.used_bytes, 0,
            "seed {}: pool not empty after deleting everything",
            self.seed
        );
        assert_eq!(status.luns, 0);
        self.engine.check_invariants().unwrap();
    }
}

enum Uncertain {
    Clones(Vec<String>, Vec<u8>),
    CreateLun(String, usize),
    Snapshot(String, String, Vec<u8>),
    DeleteSnapshot(String, String),
    Restore(String, Vec<u8>),
    Resize(String, usize),
    DeleteLun(String),
    Group(String, Vec<(String, Vec<u8>)>),
    DeleteGroup(String),
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn model_random_sequences_with_crashes() {
    let seeds = env_u64("MODEL_SEEDS", 24);
    run_model(Mode::File, seeds);
}

#[test]
fn model_on_devices_with_failing_devices_and_crashes() {
    run_model(Mode::Devices, env_u64("MODEL_DEVICE_SEEDS", 12));
}

#[test]
fn model_on_devices_one_of_which_lies() {
    run_model(Mode::Lying, env_u64("MODEL_DEVICE_SEEDS", 12));
}

fn run_model(mode: Mode, seeds: u64) {
    let first = env_u64("MODEL_SEED", 1);
    let steps = env_u64("MODEL_STEPS", 400);
    let (mut crashes, mut faults, mut nospace) = (0, 0, 0);
    let (mut clones, mut split_bytes, mut splits_done) = (0, 0, 0);
    let mut range_clones = 0;
    let mut lies = 0;
    let mut resilvers = 0;
    for seed in first..first + seeds {
        let mut w = World::new(seed, mode);
        for _ in 0..steps {
            w.step();
        }
        w.teardown();
        clones += w.clones;
        split_bytes += w.split_bytes;
        splits_done += w.splits_done;
        range_clones += w.range_clones;
        lies += w.backing.lies_told();
        resilvers += w.resilvers;
        crashes += w.crashes;
        faults += w.faults;
        nospace += w.nospace;
    }
    eprintln!(
        "model ({mode:?}): {seeds} seeds x {steps} steps, {crashes} crashes, {faults} failed writes, {nospace} ENOSPC, \
         {clones} clones, {split_bytes} bytes copied by splits, {splits_done} split-done observations, {range_clones} range clones"
    );
    assert!(range_clones > 0, "the run never cloned a range");
    if mode == Mode::Devices {
        eprintln!("model ({mode:?}): {resilvers} devices cleared and resilvered after a restart");
        assert!(resilvers > 0, "no device ever failed and came back");
    }
    if mode == Mode::Lying {
        eprintln!("model ({mode:?}): the lying device told {lies} lies");
        assert!(lies > 100, "the device hardly lied: {lies}");
    }
    assert!(
        clones > 0 && split_bytes > 0 && splits_done > 0,
        "the run never split a clone to the end"
    );
    assert!(
        crashes > 0,
        "the run injected no crash: the test would not see crash bugs"
    );
    assert!(nospace > 0, "the run never filled the pool");
}
