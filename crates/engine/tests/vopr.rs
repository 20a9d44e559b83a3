//! The simulation (issue 12 §5, decision 019): foreground clients, the
//! commit, the clone split, reclaim and an online checker run as threads of
//! one process, interleaved by a seeded deterministic scheduler
//! (`engine::sim::Sched`) at every lock and every I/O the engine makes, with
//! crashes, device errors and panics injected through the engine's I/O
//! traits. Each client owns its LUNs and keeps a model of them (content,
//! what is durable, snapshots); it checks every read against the model and
//! the pool's invariants after its operations, and after the run the pool is
//! reopened from what a crash would have left and checked again.
//!
//! Seeds: `VOPR_SEEDS` (default 40) from `VOPR_SEED` (default 1). A failing
//! seed prints a command that replays exactly that run; `VOPR_TRACE=1` adds
//! the run's last switches to every report.

use engine::sim::{Fault, FaultPlan, Sched, SimFile, SimStore};
use engine::{Engine, EngineConfig, Error, Target, BLOCK_SIZE};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const BS: usize = BLOCK_SIZE as usize;
/// Small enough that clients fill it and meet ENOSPC now and then.
const CAPACITY_BLOCKS: u64 = 160;
/// Switch points one run may pass before it counts as hung.
const MAX_STEPS: u64 = 400_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> EngineConfig {
    EngineConfig {
        background: false,
        // Writers force commits now and then, as under real load.
        dirty_keys_max: 24,
        reclaim_ranges_per_batch: 2,
        check_after_commit: true,
        ..Default::default()
    }
}

fn pattern(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let byte: u8 = rng.gen();
    match rng.gen_range(0..3) {
        0 => vec![byte; len],
        1 => (0..len).map(|i| byte.wrapping_add(i as u8)).collect(),
        _ => (0..len).map(|_| rng.gen()).collect(),
    }
}

/// A LUN as its owner knows it.
#[derive(Clone, Debug)]
struct MLun {
    data: Vec<u8>,
    /// Content at this client's last acknowledged flush.
    durable: Vec<u8>,
    /// Other contents a block may have after a crash (written since).
    since: BTreeMap<usize, Vec<Vec<u8>>>,
    /// Blocks a failed write may have left in any state.
    unknown: BTreeSet<usize>,
    snapshots: BTreeMap<String, (Vec<u8>, BTreeSet<usize>)>,
    /// Whether it is a clone (may be deleted; the primary stays).
    clone: bool,
}

impl MLun {
    fn new(blocks: usize) -> MLun {
        MLun {
            data: vec![0; blocks * BS],
            durable: vec![0; blocks * BS],
            since: BTreeMap::new(),
            unknown: BTreeSet::new(),
            snapshots: BTreeMap::new(),
            clone: false,
        }
    }

    fn blocks(&self) -> usize {
        self.data.len() / BS
    }

    fn wrote(&mut self, off: usize, data: &[u8]) {
        let end = off + data.len();
        self.data[off..end].copy_from_slice(data);
        for b in off / BS..end.div_ceil(BS) {
            let v = self.data[b * BS..(b + 1) * BS].to_vec();
            self.since.entry(b).or_default().push(v);
            if off <= b * BS && (b + 1) * BS <= end {
                self.unknown.remove(&b);
            }
        }
    }

    fn failed_write(&mut self, off: usize, len: usize) {
        for b in off / BS..(off + len).div_ceil(BS) {
            self.unknown.insert(b);
        }
    }

    fn flushed(&mut self) {
        self.durable = self.data.clone();
        self.since.clear();
    }
}

/// What the run shares with its threads.
struct Run {
    seed: u64,
    engine: Arc<Engine>,
    /// Whether a fault was planned: errors from the devices are expected,
    /// and a device's ENOSPC may leave part of a write behind.
    faults: bool,
    clients_left: AtomicUsize,
    /// Bytes the clone split copied (through the data file's O_DIRECT
    /// copy).
    split_blocks: std::sync::atomic::AtomicU64,
    /// Set once the pool has failed or the machine crashed: clients stop.
    down: AtomicBool,
    /// Every client's LUNs, handed back at the end of the run.
    models: Mutex<BTreeMap<String, MLun>>,
    /// LUNs whose fate a crash left open (a create, clone or delete that
    /// failed in it): not checked after the reopen.
    uncertain: Mutex<BTreeSet<String>>,
}

impl Run {
    fn fail(&self, what: String) -> ! {
        panic!("seed {}: {what}", self.seed)
    }

    /// Whether an error is one the run's faults explain.
    fn expected(&self, e: &Error) -> bool {
        match e {
            Error::PoolFailed(_) | Error::Io(_) | Error::Store(_) | Error::Closed => {
                self.faults || self.down.load(Ordering::Relaxed)
            }
            _ => false,
        }
    }

    fn check(&self, when: &str) {
        if let Err(why) = self.engine.check_invariants() {
            if !self.down.load(Ordering::Relaxed) && self.engine.pool_status().is_ok() {
                self.fail(format!("invariant broken {when}: {why}"));
            }
        }
    }
}

struct Client {
    run: Arc<Run>,
    rng: StdRng,
    name: String,
    luns: BTreeMap<String, MLun>,
    made: u64,
}

impl Client {
    fn go(mut self, ops: usize) {
        // However this client ends (a model mismatch panics), the
        // background threads learn that it is gone.
        struct Gone(Arc<Run>);
        impl Drop for Gone {
            fn drop(&mut self) {
                self.0.clients_left.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _gone = Gone(self.run.clone());
        let primary = self.name.clone();
        match self.run.engine.create_lun(&primary, 12 * BLOCK_SIZE) {
            Ok(_) => {
                self.luns.insert(primary.clone(), MLun::new(12));
            }
            Err(e) if self.run.expected(&e) => {
                self.run.uncertain.lock().insert(primary);
                return self.done();
            }
            Err(e) => self.run.fail(format!("create {primary}: {e}")),
        }
        for _ in 0..ops {
            if self.run.down.load(Ordering::Relaxed) {
                break;
            }
            if let Err(e) = self.step() {
                // The device's ENOSPC (an injected fault) refuses one call;
                // the pool goes on.
                if matches!(e, Error::NoSpace(_)) && self.run.faults {
                    continue;
                }
                if !self.run.expected(&e) {
                    self.run
                        .fail(format!("{}: unexpected error: {e}", self.name));
                }
                self.run.down.store(true, Ordering::Relaxed);
                break;
            }
            if self.rng.gen_ratio(1, 4) {
                self.run
                    .check(&format!("after an operation of {}", self.name));
            }
        }
        self.done();
    }

    fn done(self) {
        self.run.models.lock().extend(self.luns);
    }

    fn pick(&mut self) -> String {
        let i = self.rng.gen_range(0..self.luns.len());
        self.luns.keys().nth(i).unwrap().clone()
    }

    fn target(&self, lun: &str) -> Result<Target, Error> {
        self.run.engine.resolve(lun)
    }

    fn step(&mut self) -> Result<(), Error> {
        let lun = self.pick();
        match self.rng.gen_range(0..100) {
            0..=49 => self.write(&lun),
            50..=64 => self.read(&lun),
            65..=71 => self.flush(),
            72..=76 => self.trim(&lun),
            77..=82 => self.snapshot(&lun),
            83..=86 => self.delete_snapshot(&lun),
            87..=89 => self.clone_lun(&lun),
            90..=91 => self.split(&lun),
            92..=93 => self.delete_clone(&lun),
            _ => self.read_snapshot(&lun),
        }
    }

    fn range(&mut self, lun: &str) -> (usize, usize) {
        let size = self.luns[lun].data.len();
        if self.rng.gen_bool(0.75) {
            let b = self.rng.gen_range(0..size / BS);
            let n = self.rng.gen_range(1..=(size / BS - b).min(3));
            (b * BS, n * BS)
        } else {
            let off = self.rng.gen_range(0..size);
            (off, self.rng.gen_range(1..=(size - off).min(2 * BS)))
        }
    }

    fn write(&mut self, lun: &str) -> Result<(), Error> {
        let (off, len) = self.range(lun);
        let data = if self.rng.gen_ratio(1, 8) {
            vec![0; len]
        } else {
            pattern(&mut self.rng, len)
        };
        let fua = self.rng.gen_ratio(1, 10);
        let t = self.target(lun)?;
        let m = self.luns.get_mut(lun).unwrap();
        match self.run.engine.write(t, off as u64, &data, fua) {
            Ok(()) => {
                m.wrote(off, &data);
                if fua {
                    self.all_flushed();
                }
                Ok(())
            }
            // The allocator refused before anything was written.
            Err(Error::NoSpace(_)) if !self.run.faults => Ok(()),
            Err(e) => {
                m.failed_write(off, len);
                Err(e)
            }
        }
    }

    fn trim(&mut self, lun: &str) -> Result<(), Error> {
        let (off, len) = self.range(lun);
        let t = self.target(lun)?;
        let m = self.luns.get_mut(lun).unwrap();
        let r = if self.rng.gen_bool(0.5) {
            self.run.engine.trim(t, off as u64, len as u64, false)
        } else {
            self.run
                .engine
                .write_zeroes(t, off as u64, len as u64, self.rng.gen_bool(0.5), false)
        };
        match r {
            Ok(()) => {
                m.wrote(off, &vec![0; len]);
                Ok(())
            }
            Err(Error::NoSpace(_)) if !self.run.faults => Ok(()),
            Err(e) => {
                m.failed_write(off, len);
                Err(e)
            }
        }
    }

    fn read(&mut self, lun: &str) -> Result<(), Error> {
        let (off, len) = self.range(lun);
        let mut buf = vec![0; len];
        self.run
            .engine
            .read(self.target(lun)?, off as u64, &mut buf)?;
        let m = &self.luns[lun];
        self.compare(lun, &m.data, &m.unknown, off, &buf);
        Ok(())
    }

    fn compare(&self, what: &str, want: &[u8], unknown: &BTreeSet<usize>, off: usize, got: &[u8]) {
        let end = off + got.len();
        let mut pos = off;
        while pos < end {
            let b = pos / BS;
            let to = ((b + 1) * BS).min(end);
            if !unknown.contains(&b) && got[pos - off..to - off] != want[pos..to] {
                self.run.fail(format!(
                    "{}: read of {what} at byte {pos} differs from the model",
                    self.name
                ));
            }
            pos = to;
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.run.engine.flush()?;
        self.all_flushed();
        Ok(())
    }

    fn all_flushed(&mut self) {
        for m in self.luns.values_mut() {
            m.flushed();
        }
    }

    fn snapshot(&mut self, lun: &str) -> Result<(), Error> {
        self.made += 1;
        let snap = format!("s{}", self.made);
        if self.luns[lun].snapshots.len() >= 3 {
            return self.delete_snapshot(lun);
        }
        match self.run.engine.create_snapshot(lun, &snap) {
            Ok(_) => {
                let m = self.luns.get_mut(lun).unwrap();
                m.snapshots
                    .insert(snap, (m.data.clone(), m.unknown.clone()));
                Ok(())
            }
            Err(Error::NoSpace(_)) if !self.run.faults => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn delete_snapshot(&mut self, lun: &str) -> Result<(), Error> {
        let Some(snap) = self.luns[lun].snapshots.keys().next().cloned() else {
            return Ok(());
        };
        match self.run.engine.delete_snapshot(lun, &snap) {
            Ok(()) => {
                self.luns.get_mut(lun).unwrap().snapshots.remove(&snap);
                Ok(())
            }
            // A clone reads through it.
            Err(Error::HasDependents(_)) => Ok(()),
            Err(e) => {
                self.luns.get_mut(lun).unwrap().snapshots.remove(&snap);
                Err(e)
            }
        }
    }

    fn read_snapshot(&mut self, lun: &str) -> Result<(), Error> {
        let Some((snap, (want, unknown))) = self.luns[lun]
            .snapshots
            .iter()
            .next()
            .map(|(k, v)| (k.clone(), v.clone()))
        else {
            return Ok(());
        };
        let t = self.run.engine.resolve(&format!("{lun}@{snap}"))?;
        let (off, len) = self.range(lun);
        let mut buf = vec![0; len];
        self.run.engine.read(t, off as u64, &mut buf)?;
        self.compare(&format!("{lun}@{snap}"), &want, &unknown, off, &buf);
        Ok(())
    }

    fn clone_lun(&mut self, lun: &str) -> Result<(), Error> {
        let Some((snap, (data, unknown))) = self.luns[lun]
            .snapshots
            .iter()
            .last()
            .map(|(k, v)| (k.clone(), v.clone()))
        else {
            return Ok(());
        };
        if self.luns.len() >= 3 {
            return Ok(());
        }
        self.made += 1;
        let name = format!("{}-c{}", self.name, self.made);
        let split = self.rng.gen_bool(0.5);
        match self.run.engine.create_clones(
            &format!("{lun}@{snap}"),
            std::slice::from_ref(&name),
            split,
        ) {
            Ok(_) => {
                let mut m = MLun::new(0);
                m.data = data.clone();
                m.durable = data;
                m.unknown = unknown;
                m.clone = true;
                self.luns.insert(name, m);
                Ok(())
            }
            Err(Error::NoSpace(_)) if !self.run.faults => Ok(()),
            Err(e) => {
                self.run.uncertain.lock().insert(name);
                Err(e)
            }
        }
    }

    fn split(&mut self, lun: &str) -> Result<(), Error> {
        if !self.luns[lun].clone {
            return Ok(());
        }
        match self.run.engine.start_split(lun) {
            Ok(_) | Err(Error::InvalidArgument(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn delete_clone(&mut self, lun: &str) -> Result<(), Error> {
        if !self.luns[lun].clone {
            return Ok(());
        }
        match self.run.engine.delete_lun(lun, false) {
            Ok(()) => {
                self.luns.remove(lun);
                Ok(())
            }
            Err(Error::HasDependents(_)) => Ok(()),
            Err(e) => {
                self.luns.remove(lun);
                self.run.uncertain.lock().insert(lun.to_string());
                Err(e)
            }
        }
    }
}

/// The background work, as the engine's own threads do it, until the last
/// client is done.
fn background(run: Arc<Run>, what: &'static str) {
    while run.clients_left.load(Ordering::Acquire) > 0 {
        match what {
            "commit" => {
                let _ = run.engine.flush();
            }
            "split" => {
                if let engine::SplitStep::Copied(b) = run.engine.run_split_batch() {
                    run.split_blocks.fetch_add(b, Ordering::Relaxed);
                }
            }
            "reclaim" => {
                run.engine.run_job_batch();
            }
            _ => {
                if let Ok(c) = run.engine.check_pool() {
                    if !c.problems.is_empty() && !run.down.load(Ordering::Relaxed) {
                        run.fail(format!("pool check: {:?}", c.problems));
                    }
                }
            }
        }
        Sched::yield_now();
    }
}

/// How a seed's devices misbehave.
#[derive(Debug, Clone, Copy)]
enum Trouble {
    None,
    Crash(u64),
    Fault(Fault, u64),
}

fn trouble(rng: &mut StdRng) -> Trouble {
    match rng.gen_range(0..8) {
        0..=2 => Trouble::None,
        3..=5 => Trouble::Crash(rng.gen_range(1..600)),
        6 => Trouble::Fault(Fault::Eio, rng.gen_range(1..400)),
        _ => Trouble::Fault(
            [Fault::NoSpace, Fault::ShortWrite, Fault::Panic][rng.gen_range(0..3)],
            rng.gen_range(1..400),
        ),
    }
}

struct Devices {
    dir: PathBuf,
    plan: FaultPlan,
    data: SimFile,
    store: SimStore,
}

fn devices(dir: &Path, seed: u64) -> Devices {
    let plan = FaultPlan::new(seed);
    Devices {
        dir: dir.to_path_buf(),
        data: SimFile::create(&dir.join("data.0"), plan.clone()).unwrap(),
        store: SimStore::new(plan.clone()),
        plan,
    }
}

/// What one seed did, for the determinism check and the summary.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    trace_hash: u64,
    steps: u64,
    luns_checked: usize,
    split_blocks: u64,
}

fn run_seed(seed: u64, dir: &Path) -> Summary {
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = devices(dir, seed);
    let engine = Engine::open_with(
        Box::new(dev.data.clone()),
        Box::new(dev.store.clone()),
        CAPACITY_BLOCKS,
        config(),
    )
    .unwrap();
    let trouble = trouble(&mut rng);
    match trouble {
        Trouble::None => {}
        Trouble::Crash(at) => dev.plan.inject_after(at, Fault::Crash),
        Trouble::Fault(f, at) => dev.plan.inject_after(at, f),
    }
    let clients = rng.gen_range(2..=3);
    let run = Arc::new(Run {
        seed,
        engine: engine.clone(),
        faults: !matches!(trouble, Trouble::None),
        clients_left: AtomicUsize::new(clients),
        split_blocks: Default::default(),
        down: AtomicBool::new(false),
        models: Mutex::default(),
        uncertain: Mutex::default(),
    });
    let mut bodies: Vec<(String, Box<dyn FnOnce() + Send>)> = Vec::new();
    for i in 0..clients {
        let client = Client {
            run: run.clone(),
            rng: StdRng::seed_from_u64(rng.gen()),
            name: format!("c{i}"),
            luns: BTreeMap::new(),
            made: 0,
        };
        let ops = rng.gen_range(20..60);
        bodies.push((format!("c{i}"), Box::new(move || client.go(ops))));
    }
    for what in ["commit", "split", "reclaim", "check"] {
        let run = run.clone();
        bodies.push((what.to_string(), Box::new(move || background(run, what))));
    }
    let outcome = Sched::run(seed, MAX_STEPS, bodies);
    let replay = format!(
        "replay: VOPR_SEED={seed} VOPR_SEEDS=1 VOPR_TRACE=1 cargo test -p engine --test vopr -- seeds"
    );
    if let Some(stuck) = &outcome.stuck {
        panic!(
            "seed {seed} ({trouble:?}): {stuck}\n{}\n{replay}",
            outcome.report()
        );
    }
    for (thread, msg) in &outcome.panics {
        let injected = matches!(trouble, Trouble::Fault(Fault::Panic, _))
            && msg.starts_with("simulated panic");
        if !injected {
            panic!(
                "seed {seed} ({trouble:?}): {thread} panicked: {msg}\n{}\n{replay}",
                outcome.report()
            );
        }
    }
    if std::env::var_os("VOPR_TRACE").is_some() {
        eprintln!("seed {seed} ({trouble:?}): {}", outcome.report());
    }
    let split_blocks = run.split_blocks.load(Ordering::Relaxed);
    // The machine stops here: what the devices hold is what a crash keeps.
    let luns_checked = reopen_and_verify(seed, engine, run, &dev);
    Summary {
        trace_hash: outcome.trace_hash,
        steps: outcome.steps,
        luns_checked,
        split_blocks,
    }
}

fn reopen_and_verify(seed: u64, engine: Arc<Engine>, run: Arc<Run>, dev: &Devices) -> usize {
    let plan = FaultPlan::new(seed + 1);
    let data = dev
        .data
        .after_crash(&dev.dir.join("data.1"), plan.clone())
        .unwrap();
    let store = dev.store.after_crash(plan);
    let models = std::mem::take(&mut *run.models.lock());
    let uncertain = std::mem::take(&mut *run.uncertain.lock());
    drop(run);
    drop(engine);
    let engine = Engine::open_with(Box::new(data), Box::new(store), CAPACITY_BLOCKS, config())
        .unwrap_or_else(|e| panic!("seed {seed}: the pool does not reopen after the crash: {e}"));
    if let Err(why) = engine.check_invariants() {
        panic!("seed {seed}: invariant broken after reopening: {why}");
    }
    let mut checked = 0;
    for (name, m) in &models {
        if uncertain.contains(name) {
            continue;
        }
        let t = engine
            .resolve(name)
            .unwrap_or_else(|e| panic!("seed {seed}: {name} was lost in the crash: {e}"));
        let mut got = vec![0; m.data.len()];
        engine.read(t, 0, &mut got).unwrap();
        for b in 0..m.blocks() {
            let r = b * BS..(b + 1) * BS;
            let ok = m.unknown.contains(&b)
                || got[r.clone()] == m.durable[r.clone()]
                || m.since
                    .get(&b)
                    .is_some_and(|v| v.iter().any(|x| x[..] == got[r.clone()]));
            assert!(
                ok,
                "seed {seed}: block {b} of {name} after the crash is neither what was flushed nor what was written since"
            );
        }
        for (snap, (want, unknown)) in &m.snapshots {
            let t = engine
                .resolve(&format!("{name}@{snap}"))
                .unwrap_or_else(|e| panic!("seed {seed}: snapshot {name}@{snap} lost: {e}"));
            engine.read(t, 0, &mut got).unwrap();
            for b in 0..m.blocks() {
                let r = b * BS..(b + 1) * BS;
                assert!(
                    unknown.contains(&b) || got[r.clone()] == want[r.clone()],
                    "seed {seed}: block {b} of snapshot {name}@{snap} changed"
                );
            }
        }
        checked += 1;
    }
    checked
}

#[test]
fn seeds() {
    let first = env_u64("VOPR_SEED", 1);
    let count = env_u64("VOPR_SEEDS", 40);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let started = std::time::Instant::now();
    let (mut steps, mut luns, mut split) = (0, 0, 0);
    for seed in first..first + count {
        let dir = tmp.path().join(format!("s{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        let s = run_seed(seed, &dir);
        steps += s.steps;
        luns += s.luns_checked;
        split += s.split_blocks;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "vopr: {count} seeds from {first}, {steps} switches, {split} bytes copied by clone splits, {luns} LUNs checked after a crash, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(split > 0 || count < 20, "no seed split a clone");
}

/// A seed replays exactly: the same interleaving, step for step.
#[test]
fn a_seed_replays_exactly() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for seed in [7, 8, 9] {
        let a = run_seed(seed, &tmp.path().join(format!("a{seed}")).tap_mkdir());
        let b = run_seed(seed, &tmp.path().join(format!("b{seed}")).tap_mkdir());
        assert_eq!(a, b, "seed {seed} ran differently twice");
    }
}

trait Mkdir {
    fn tap_mkdir(self) -> Self;
}

impl Mkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

// ------------------------------------------------------------ named scenarios

/// Opens a small simulated pool for a scenario.
fn scenario_pool(dir: &Path, seed: u64) -> (Devices, Arc<Engine>) {
    let dev = devices(dir, seed);
    let engine = Engine::open_with(
        Box::new(dev.data.clone()),
        Box::new(dev.store.clone()),
        CAPACITY_BLOCKS,
        config(),
    )
    .unwrap();
    (dev, engine)
}

type Body = Box<dyn FnOnce() + Send>;

/// Counts a scenario's client out however it ends (an injected panic
/// unwinds through it), so that its background threads stop.
struct Leave(Arc<AtomicUsize>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn body(f: impl FnOnce() + Send + 'static) -> Body {
    Box::new(f)
}

/// The name-to-fence race of issue 12 §3: "x" is deleted and created again
/// in a loop while one client writes to it in place and another shrinks and
/// grows it by name; a fourth client writes and verifies a LUN of its own,
/// whose blocks are what a shrink freeing blocks under an in-flight write
/// would corrupt (the write lands after the blocks were reused). Returns
/// the failure the run ended in, if any.
fn fence_race(seed: u64, dir: &Path, skip_recheck: bool) -> Option<String> {
    let (_dev, e) = scenario_pool(dir, seed);
    e.sim_skip_fence_recheck(skip_recheck);
    e.create_lun("x", 8 * BLOCK_SIZE).unwrap();
    e.create_lun("y", 16 * BLOCK_SIZE).unwrap();
    let left = Arc::new(AtomicUsize::new(4));
    let done = |left: &Arc<AtomicUsize>| {
        let leave = Leave(left.clone());
        move || drop(leave)
    };
    let (e1, d1) = (e.clone(), done(&left));
    let recreate = body(move || {
        for _ in 0..12 {
            let _ = e1.delete_lun("x", true);
            let _ = e1.create_lun("x", 8 * BLOCK_SIZE);
        }
        d1();
    });
    let (e2, d2) = (e.clone(), done(&left));
    let writer = body(move || {
        for i in 0..60u8 {
            if let Ok(t) = e2.resolve("x") {
                let _ = e2.write(t, 0, &[i; 2 * BS], false);
            }
        }
        d2();
    });
    let (e3, d3) = (e.clone(), done(&left));
    let resizer = body(move || {
        for _ in 0..20 {
            let _ = e3.resize_lun("x", BLOCK_SIZE, true);
            let _ = e3.resize_lun("x", 8 * BLOCK_SIZE, false);
        }
        d3();
    });
    let (e4, d4) = (e.clone(), done(&left));
    let mut rng = StdRng::seed_from_u64(seed);
    let victim = body(move || {
        let t = e4.resolve("y").unwrap();
        let mut model = vec![0u8; 16 * BS];
        for _ in 0..80 {
            let b = rng.gen_range(0..16);
            let data = pattern(&mut rng, BS);
            if e4.write(t, (b * BS) as u64, &data, false).is_ok() {
                model[b * BS..(b + 1) * BS].copy_from_slice(&data);
            }
            let r = rng.gen_range(0..16);
            let mut buf = vec![0; BS];
            e4.read(t, (r * BS) as u64, &mut buf).unwrap();
            assert!(
                buf[..] == model[r * BS..(r + 1) * BS],
                "block {r} of y was overwritten by a write to another LUN"
            );
        }
        d4();
    });
    let (e5, left5) = (e.clone(), left.clone());
    let commit = body(move || {
        while left5.load(Ordering::Acquire) > 0 {
            let _ = e5.flush();
            e5.run_job_batch();
            Sched::yield_now();
        }
    });
    let bodies = vec![
        ("recreate".to_string(), recreate),
        ("writer".to_string(), writer),
        ("resizer".to_string(), resizer),
        ("victim".to_string(), victim),
        ("commit".to_string(), commit),
    ];
    let outcome = Sched::run(seed, MAX_STEPS, bodies);
    if outcome.stuck.is_some() || !outcome.panics.is_empty() {
        return Some(outcome.report());
    }
    e.check_invariants().err()
}

/// With the re-check of decision 018 the race never corrupts anything; with
/// it skipped (the code before the fix), the simulation finds it within a
/// few hundred seeds, so it would have found the bug.
#[test]
fn scenario_name_to_fence_race() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let seeds = env_u64("VOPR_SCENARIO_SEEDS", 300);
    for seed in 1..=seeds {
        let dir = tmp.path().join(format!("fixed{seed}")).tap_mkdir();
        if let Some(why) = fence_race(seed, &dir, false) {
            panic!("seed {seed}: the name-to-fence race struck with the fix in place: {why}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let found = (1..=seeds).find(|&seed| {
        let dir = tmp.path().join(format!("bug{seed}")).tap_mkdir();
        fence_race(seed, &dir, true).is_some()
    });
    eprintln!("name-to-fence race without the fix: found at seed {found:?}");
    assert!(
        found.is_some(),
        "the simulation did not find the name-to-fence race in {seeds} seeds"
    );
}

/// A panic in the middle of a commit (issue 12 §2): clients writing and
/// flushing, the commit thread, and a store whose n-th commit panics. The
/// run must end (no FLUSH, FUA or management call waits for ever), every
/// call after the panic must answer an error, and the pool must reopen with
/// every flushed write in place. Returns the number of clients that saw
/// the failure.
fn commit_panic(seed: u64, dir: &Path) -> usize {
    let (dev, e) = scenario_pool(dir, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    for c in 0..3 {
        e.create_lun(&format!("p{c}"), 8 * BLOCK_SIZE).unwrap();
    }
    dev.store.panic_at_commit(rng.gen_range(0..12));
    let left = Arc::new(AtomicUsize::new(3));
    let saw = Arc::new(AtomicUsize::new(0));
    let models = Arc::new(Mutex::new(BTreeMap::new()));
    let mut bodies: Vec<(String, Body)> = Vec::new();
    for c in 0..3 {
        let name = format!("p{c}");
        let (e, left, saw, models) = (e.clone(), left.clone(), saw.clone(), models.clone());
        let mut rng = StdRng::seed_from_u64(rng.gen());
        bodies.push((
            name.clone(),
            body(move || {
                let _leave = Leave(left);
                let t = match e.resolve(&name) {
                    Ok(t) => t,
                    Err(Error::PoolFailed(_)) => {
                        saw.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(err) => panic!("{name}: {err}"),
                };
                let mut m = MLun::new(8);
                for _ in 0..30 {
                    let b = rng.gen_range(0..8);
                    let data = pattern(&mut rng, BS);
                    let r = match rng.gen_range(0..3) {
                        0 => e.flush().map(|()| m.flushed()),
                        1 => e
                            .create_snapshot(&name, &format!("s{}", rng.gen::<u32>()))
                            .map(drop),
                        _ => e
                            .write(t, (b * BS) as u64, &data, rng.gen_ratio(1, 4))
                            .map(|()| {
                                m.wrote(b * BS, &data);
                            }),
                    };
                    match r {
                        Ok(()) => {}
                        Err(Error::PoolFailed(_)) => {
                            m.failed_write(b * BS, BS);
                            saw.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(err) => panic!("{name}: {err}"),
                    }
                }
                models.lock().insert(name, m);
            }),
        ));
    }
    let (e5, left5) = (e.clone(), left.clone());
    bodies.push((
        "commit".into(),
        body(move || {
            while left5.load(Ordering::Acquire) > 0 {
                let _ = e5.flush();
                Sched::yield_now();
            }
        }),
    ));
    let outcome = Sched::run(seed, MAX_STEPS, bodies);
    assert!(outcome.stuck.is_none(), "seed {seed}: {}", outcome.report());
    for (thread, msg) in &outcome.panics {
        assert!(
            msg == "simulated panic in a metadata commit",
            "seed {seed}: {thread} panicked: {msg}"
        );
    }
    let panicked = !outcome.panics.is_empty();
    if panicked {
        // Whoever asks next is told, at once.
        assert!(
            matches!(e.flush(), Err(Error::PoolFailed(_))),
            "seed {seed}"
        );
        assert!(e.pool_status().is_err(), "seed {seed}");
        assert!(
            matches!(e.create_lun("late", BLOCK_SIZE), Err(Error::PoolFailed(_))),
            "seed {seed}"
        );
    }
    let plan = FaultPlan::new(seed + 1);
    let data = dev
        .data
        .after_crash(&dir.join("data.1"), plan.clone())
        .unwrap();
    let store = dev.store.after_crash(plan);
    drop(e);
    let e = Engine::open_with(Box::new(data), Box::new(store), CAPACITY_BLOCKS, config())
        .unwrap_or_else(|err| panic!("seed {seed}: reopen after the panic: {err}"));
    for (name, m) in models.lock().iter() {
        let mut got = vec![0; m.data.len()];
        e.read(e.resolve(name).unwrap(), 0, &mut got).unwrap();
        for b in 0..m.blocks() {
            let r = b * BS..(b + 1) * BS;
            assert!(
                m.unknown.contains(&b)
                    || got[r.clone()] == m.durable[r.clone()]
                    || m.since
                        .get(&b)
                        .is_some_and(|v| v.iter().any(|x| x[..] == got[r.clone()])),
                "seed {seed}: block {b} of {name} lost a flushed write"
            );
        }
    }
    if panicked {
        saw.load(Ordering::Relaxed)
    } else {
        0
    }
}

#[test]
fn scenario_panic_in_commit() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let seeds = env_u64("VOPR_SCENARIO_SEEDS", 300);
    let mut saw = 0;
    for seed in 1..=seeds {
        let dir = tmp.path().join(format!("p{seed}")).tap_mkdir();
        saw += commit_panic(seed, &dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!("panic in commit: {seeds} seeds, {saw} clients told the pool failed");
    assert!(saw > 0, "no seed panicked in a commit while clients ran");
}
