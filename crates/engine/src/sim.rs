//! Simulated storage for tests: a data file and a metadata store that keep a
//! durable image apart from what is only written, and that fail or crash at
//! a chosen step, reproducibly from a seed.
//!
//! A crash keeps a random subset of the writes made since the last sync (each
//! 4 KiB block of a write independently, as a disk with atomic 4 KiB writes
//! would) and, for a commit in progress, applies it entirely or not at all.

use crate::io::{DataFile, KeyValueVisitor, MetaPut, MetaStore};
pub use crate::sched::{Outcome, Sched};
use crate::types::{Error, Result};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

/// What to inject at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with EIO and changes nothing durable.
    Eio,
    /// The call fails with ENOSPC.
    NoSpace,
    /// A write stores only part of its bytes, then fails.
    ShortWrite,
    /// The machine stops: this call and every later one fail.
    Crash,
    /// The call panics (a bug below the engine, or in it): the pool must
    /// fail, and nothing may wait for ever.
    Panic,
}

struct Plan {
    rng: StdRng,
    step: u64,
    /// Fault at step number.
    faults: BTreeMap<u64, Fault>,
    crashed: bool,
}

/// Shared by a `SimData` and a `SimStore` so that steps count across both.
#[derive(Clone)]
pub struct FaultPlan(Arc<Mutex<Plan>>);

impl FaultPlan {
    pub fn new(seed: u64) -> FaultPlan {
        FaultPlan(Arc::new(Mutex::new(Plan {
            rng: StdRng::seed_from_u64(seed),
            step: 0,
            faults: BTreeMap::new(),
            crashed: false,
        })))
    }

    /// Injects `fault` at the `after`-th I/O step from now.
    pub fn inject_after(&self, after: u64, fault: Fault) {
        let mut p = self.0.lock();
        let at = p.step + after;
        p.faults.insert(at, fault);
    }

    pub fn clear(&self) {
        let mut p = self.0.lock();
        p.faults.clear();
        p.crashed = false;
    }

    pub fn crashed(&self) -> bool {
        self.0.lock().crashed
    }

    pub fn steps(&self) -> u64 {
        self.0.lock().step
    }

    fn next(&self) -> Option<Fault> {
        let mut p = self.0.lock();
        if p.crashed {
            return Some(Fault::Crash);
        }
        p.step += 1;
        let step = p.step;
        let f = p.faults.remove(&step);
        if f == Some(Fault::Crash) {
            p.crashed = true;
        }
        f
    }

    fn coin(&self) -> bool {
        self.0.lock().rng.gen_bool(0.5)
    }

    fn below(&self, n: usize) -> usize {
        self.0.lock().rng.gen_range(0..n.max(1))
    }
}

fn crash_err() -> io::Error {
    io::Error::other("simulated crash: the machine is down")
}

struct DataInner {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Byte ranges written since the last sync.
    unsynced: Vec<(u64, u64)>,
}

/// A data file in memory.
#[derive(Clone)]
pub struct SimData {
    inner: Arc<Mutex<DataInner>>,
    plan: FaultPlan,
}

impl SimData {
    pub fn new(plan: FaultPlan) -> SimData {
        SimData {
            inner: Arc::new(Mutex::new(DataInner {
                durable: Vec::new(),
                current: Vec::new(),
                unsynced: Vec::new(),
            })),
            plan,
        }
    }

    /// After a crash: decides which unsynced blocks reached the disk, and
    /// returns a fresh device holding that.
    pub fn after_crash(&self, plan: FaultPlan) -> SimData {
        let mut d = self.inner.lock();
        let unsynced = std::mem::take(&mut d.unsynced);
        for (off, len) in unsynced {
            let mut b = off - off % 4096;
            while b < off + len {
                let end = (b + 4096).min(off + len).min(d.current.len() as u64);
                let start = b.max(off);
                if start < end && self.plan.coin() {
                    let (s, e) = (start as usize, end as usize);
                    let bytes = d.current[s..e].to_vec();
                    d.durable[s..e].copy_from_slice(&bytes);
                }
                b += 4096;
            }
        }
        let durable = d.durable.clone();
        SimData {
            inner: Arc::new(Mutex::new(DataInner {
                durable: durable.clone(),
                current: durable,
                unsynced: Vec::new(),
            })),
            plan,
        }
    }
}

impl DataFile for SimData {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        crate::sched::point("data.read");
        if self.plan.next() == Some(Fault::Crash) {
            return Err(crash_err());
        }
        let d = self.inner.lock();
        let end = offset as usize + buf.len();
        if end > d.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the data file",
            ));
        }
        buf.copy_from_slice(&d.current[offset as usize..end]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        crate::sched::point("data.write");
        let fault = self.plan.next();
        if fault == Some(Fault::Panic) {
            panic!("simulated panic in a data write");
        }
        let mut d = self.inner.lock();
        let end = offset as usize + buf.len();
        if end > d.current.len() {
            return Err(io::Error::other("write past the end of the data file"));
        }
        let stored = match fault {
            None => buf.len(),
            Some(Fault::Crash) => return Err(crash_err()),
            Some(Fault::Eio) => 0,
            Some(Fault::NoSpace) => 0,
            Some(Fault::ShortWrite) => self.plan.below(buf.len()),
            Some(Fault::Panic) => unreachable!("handled above"),
        };
        d.current[offset as usize..offset as usize + stored].copy_from_slice(&buf[..stored]);
        if stored > 0 {
            d.unsynced.push((offset, stored as u64));
        }
        match fault {
            None => Ok(()),
            Some(Fault::NoSpace) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    fn sync(&self) -> io::Result<()> {
        crate::sched::point("data.sync");
        match self.plan.next() {
            None => {}
            Some(Fault::Crash) => return Err(crash_err()),
            Some(Fault::Panic) => panic!("simulated panic in a data sync"),
            Some(_) => return Err(io::Error::from_raw_os_error(libc::EIO)),
        }
        let mut d = self.inner.lock();
        let unsynced = std::mem::take(&mut d.unsynced);
        for (off, len) in unsynced {
            let (s, e) = (off as usize, (off + len) as usize);
            let bytes = d.current[s..e].to_vec();
            d.durable[s..e].copy_from_slice(&bytes);
        }
        Ok(())
    }

    fn ensure_len(&self, bytes: u64) -> io::Result<()> {
        let mut d = self.inner.lock();
        if (d.current.len() as u64) < bytes {
            d.current.resize(bytes as usize, 0);
            d.durable.resize(bytes as usize, 0);
        }
        Ok(())
    }
}

/// A data file on a real file, written by the engine's own `FileData` (so
/// that its O_DIRECT copy runs), which keeps the durable image apart like
/// `SimData` and fails or crashes by the same plan. A crash keeps a random
/// subset of the 4 KiB blocks written (or copied) since the last sync.
#[derive(Clone)]
pub struct SimFile {
    file: Arc<crate::io::FileData>,
    path: std::path::PathBuf,
    shadow: Arc<Mutex<FileShadow>>,
    plan: FaultPlan,
}

struct FileShadow {
    durable: Vec<u8>,
    unsynced: Vec<(u64, u64)>,
}

impl SimFile {
    /// A new, empty data file at `path` (replaced if it exists).
    pub fn create(path: &std::path::Path, plan: FaultPlan) -> io::Result<SimFile> {
        let _ = std::fs::remove_file(path);
        Ok(SimFile {
            file: Arc::new(crate::io::FileData::open(path, 0)?),
            path: path.to_path_buf(),
            shadow: Arc::new(Mutex::new(FileShadow {
                durable: Vec::new(),
                unsynced: Vec::new(),
            })),
            plan,
        })
    }

    /// After a crash: decides which unsynced blocks reached the disk and
    /// writes what survived to a new file at `path`.
    pub fn after_crash(&self, path: &std::path::Path, plan: FaultPlan) -> io::Result<SimFile> {
        let mut sh = self.shadow.lock();
        let mut image = sh.durable.clone();
        for (off, len) in std::mem::take(&mut sh.unsynced) {
            let mut b = off - off % 4096;
            while b < off + len {
                let start = b.max(off);
                let end = (b + 4096).min(off + len).min(image.len() as u64);
                if start < end && self.plan.coin() {
                    let (s, e) = (start as usize, end as usize);
                    self.file.read_at(&mut image[s..e], start)?;
                }
                b += 4096;
            }
        }
        let next = SimFile::create(path, plan)?;
        next.file.ensure_len(image.len() as u64)?;
        next.file.write_at(&image, 0)?;
        next.file.sync()?;
        next.shadow.lock().durable = image;
        Ok(next)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn fault(&self, what: &str) -> io::Result<Option<Fault>> {
        match self.plan.next() {
            Some(Fault::Crash) => Err(crash_err()),
            Some(Fault::Panic) => panic!("simulated panic in a data {what}"),
            f => Ok(f),
        }
    }

    fn written(&self, offset: u64, len: u64) {
        if len > 0 {
            self.shadow.lock().unsynced.push((offset, len));
        }
    }
}

fn fault_err(f: Fault) -> io::Error {
    match f {
        Fault::NoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
        _ => io::Error::from_raw_os_error(libc::EIO),
    }
}

impl DataFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        crate::sched::point("data.read");
        if self.plan.next() == Some(Fault::Crash) {
            return Err(crash_err());
        }
        self.file.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        crate::sched::point("data.write");
        let fault = self.fault("write")?;
        let stored = match fault {
            None => buf.len(),
            Some(Fault::ShortWrite) => self.plan.below(buf.len()),
            Some(_) => 0,
        };
        self.file.write_at(&buf[..stored], offset)?;
        self.written(offset, stored as u64);
        fault.map_or(Ok(()), |f| Err(fault_err(f)))
    }

    fn sync(&self) -> io::Result<()> {
        crate::sched::point("data.sync");
        if let Some(f) = self.fault("sync")? {
            return Err(fault_err(f));
        }
        self.file.sync()?;
        let mut sh = self.shadow.lock();
        for (off, len) in std::mem::take(&mut sh.unsynced) {
            let (s, e) = (off as usize, (off + len) as usize);
            self.file.read_at(&mut sh.durable[s..e], off)?;
        }
        Ok(())
    }

    /// The engine's own copy (O_DIRECT where the file system allows it).
    fn copy(&self, src: u64, dst: u64, len: u64) -> io::Result<()> {
        crate::sched::point("data.copy");
        let fault = self.fault("copy")?;
        let copied = match fault {
            None => len,
            Some(Fault::ShortWrite) => self.plan.below((len / 4096) as usize) as u64 * 4096,
            Some(_) => 0,
        };
        if copied > 0 {
            self.file.copy(src, dst, copied)?;
            self.written(dst, copied);
        }
        fault.map_or(Ok(()), |f| Err(fault_err(f)))
    }

    fn ensure_len(&self, bytes: u64) -> io::Result<()> {
        self.file.ensure_len(bytes)?;
        let mut sh = self.shadow.lock();
        if (sh.durable.len() as u64) < bytes {
            sh.durable.resize(bytes as usize, 0);
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        self.file.check()
    }
}

/// A metadata store in memory.
#[derive(Clone)]
pub struct SimStore {
    durable: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
    plan: FaultPlan,
    /// Set by `break_store`: what `check` reports (a store whose worker
    /// stopped, say, while commits still succeed).
    broken: Arc<Mutex<Option<String>>>,
    /// Commits to let through before one panics (`panic_at_commit`).
    panic_in: Arc<Mutex<Option<u64>>>,
}

impl SimStore {
    /// Changes the durable records directly, as a lying device or a bug in
    /// another program would: for tests of what the engine notices.
    pub fn tamper(&self, f: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>)) {
        f(&mut self.durable.lock());
    }

    pub fn new(plan: FaultPlan) -> SimStore {
        SimStore {
            durable: Arc::new(Mutex::new(BTreeMap::new())),
            plan,
            broken: Arc::default(),
            panic_in: Arc::default(),
        }
    }

    /// The same durable content, with a new fault plan (after a crash).
    pub fn after_crash(&self, plan: FaultPlan) -> SimStore {
        SimStore {
            durable: Arc::new(Mutex::new(self.durable.lock().clone())),
            plan,
            broken: Arc::default(),
            panic_in: Arc::default(),
        }
    }

    /// From now on `check` fails with `why`, while commits go on working:
    /// the store that lies (fjall after its flush worker stopped).
    pub fn break_store(&self, why: &str) {
        *self.broken.lock() = Some(why.to_string());
    }

    /// The commit after the next `n` panics: a bug in the middle of the
    /// commit protocol, for the scenario that nothing then waits for ever.
    pub fn panic_at_commit(&self, n: u64) {
        *self.panic_in.lock() = Some(n);
    }

    pub fn keys(&self) -> usize {
        self.durable.lock().len()
    }

    pub fn bytes(&self) -> usize {
        self.durable
            .lock()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }
}

/// A copy of the simulated store's durable image.
struct SimView(BTreeMap<Vec<u8>, Vec<u8>>);

impl MetaStore for SimView {
    fn for_each(&self, each: &mut KeyValueVisitor) -> Result<()> {
        for (k, v) in &self.0 {
            each(k, v)?;
        }
        Ok(())
    }

    fn commit(&mut self, _: &[MetaPut]) -> Result<()> {
        Err(crate::io::read_only_view())
    }

    fn snapshot(&self) -> Result<Box<dyn MetaStore>> {
        Err(crate::io::read_only_view())
    }
}

impl MetaStore for SimStore {
    fn snapshot(&self) -> Result<Box<dyn MetaStore>> {
        Ok(Box::new(SimView(self.durable.lock().clone())))
    }

    fn for_each(&self, each: &mut KeyValueVisitor) -> Result<()> {
        for (k, v) in self.durable.lock().iter() {
            each(k, v)?;
        }
        Ok(())
    }

    fn check(&mut self) -> Result<()> {
        match &*self.broken.lock() {
            Some(why) => Err(Error::Store(why.clone())),
            None => Ok(()),
        }
    }

    fn commit(&mut self, batch: &[MetaPut]) -> Result<()> {
        crate::sched::point("store.commit");
        {
            let mut p = self.panic_in.lock();
            match *p {
                Some(0) => {
                    *p = None;
                    drop(p);
                    panic!("simulated panic in a metadata commit");
                }
                Some(n) => *p = Some(n - 1),
                None => {}
            }
        }
        // The machine went down before this call (a device's sync crashed,
        // and a pool on devices goes on past one device's failure): nothing
        // more reaches any disk.
        if self.plan.crashed() {
            return Err(Error::Store("simulated crash: the machine is down".into()));
        }
        let fault = self.plan.next();
        if fault == Some(Fault::Panic) {
            panic!("simulated panic in a metadata commit");
        }
        let apply = match fault {
            None => true,
            // A crash during a commit: atomic, so all or nothing.
            Some(Fault::Crash) => self.plan.coin(),
            Some(_) => false,
        };
        if apply {
            let mut d = self.durable.lock();
            for (k, v) in batch {
                match v {
                    Some(v) => d.insert(k.clone(), v.clone()),
                    None => d.remove(k),
                };
            }
        }
        match fault {
            None => Ok(()),
            Some(Fault::Crash) => Err(Error::Store("simulated crash during commit".into())),
            Some(f) => Err(Error::Store(format!("simulated {f:?} during commit"))),
        }
    }
}

/// A point inside the engine where a test may run code, to make a race
/// happen in one chosen order instead of by luck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// `fence_luns` has resolved names to LUNs and not yet taken their
    /// fences: the window the name-to-fence race lived in.
    FenceResolved,
    /// A snapshot's removal is durable and its reclaim job not yet set up:
    /// a job that finishes here must not leave the garbage unowned.
    SnapshotRemovalDurable,
}

type Hook = Box<dyn FnOnce() + Send>;

/// One-shot hooks, each run by the first thread that reaches its point,
/// and the switch that brings back the name-to-fence race.
#[derive(Default)]
pub struct Hooks {
    hooks: Mutex<Vec<(HookPoint, Hook)>>,
    pub(crate) skip_fence_recheck: std::sync::atomic::AtomicBool,
}

impl Hooks {
    pub(crate) fn fire(&self, at: HookPoint) {
        let hook = {
            let mut v = self.hooks.lock();
            v.iter().position(|(p, _)| *p == at).map(|i| v.remove(i).1)
        };
        if let Some(hook) = hook {
            hook();
        }
    }
}

impl crate::Engine {
    /// Runs `hook` once, on the first thread that reaches `at`.
    pub fn sim_hook(&self, at: HookPoint, hook: impl FnOnce() + Send + 'static) {
        self.sim_hooks.hooks.lock().push((at, Box::new(hook)));
    }

    /// Brings back the name-to-fence race of issue 12 §3 (for the
    /// simulation's test that it finds it): a fenced change runs on the LUN
    /// a name means after the fence was taken, without checking that it is
    /// the LUN whose fence it holds.
    pub fn sim_skip_fence_recheck(&self, skip: bool) {
        self.sim_hooks
            .skip_fence_recheck
            .store(skip, std::sync::atomic::Ordering::Relaxed);
    }

    /// Holds LUN `name`'s fence as an in-flight write does (shared), until
    /// the guard drops: a write stopped between its data and its map update.
    pub fn sim_hold_fence(
        &self,
        name: &str,
    ) -> Result<parking_lot::ArcRwLockReadGuard<parking_lot::RawRwLock, ()>> {
        let id = self.state.lock().lun_id(name)?;
        let fence = self.fence_of_id(id)?;
        Ok(fence.read_arc())
    }
}
