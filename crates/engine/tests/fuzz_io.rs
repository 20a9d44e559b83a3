//! Hostile input at the engine's entry points, the stable-toolchain stand-in
//! for a cargo-fuzz target: proptest drives one pool with arbitrary I/O
//! (offsets and lengths that overflow, straddle the end, are unaligned or
//! huge; on LUNs, snapshots, clones and stale or forged handles) and
//! arbitrary management calls (names, sizes, range lists, CIDRs and CNs of
//! any shape). After every call:
//!
//! - nothing panicked;
//! - an error is a clean refusal: never an I/O, store or pool failure, since
//!   nothing fails underneath here;
//! - a refused call changed nothing (listings, space, igroups, splits, and
//!   the content of every modeled volume);
//! - `check_invariants()` holds;
//! - the LUNs and snapshots are the model's, and every one small enough to
//!   model byte for byte reads back exactly what the model says.
//!
//! I/O calls also have their outcome predicted: in range they succeed (a
//! write may find the pool full), out of range they fail.
//!
//! Budget: `FUZZ_CASES` cases (default 256) of up to `FUZZ_STEPS` calls
//! (default 40). A failure prints the shrunk list of calls.

use engine::io::DataFile;
use engine::sim::{FaultPlan, SimStore};
use engine::{
    Allocation, Engine, EngineConfig, Epoch, Error, LunId, Member, RangeEntry, Target, BLOCK_SIZE,
    IO_BYTES_MAX, LUN_SIZE_MAX_BYTES,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

const BS: u64 = BLOCK_SIZE;
/// The pool's capacity at creation: small, so that writes run out of space.
const CAPACITY_BLOCKS: u64 = 160;
/// LUNs and snapshots up to this size are modeled byte for byte; larger
/// ones only by name and size.
const MODEL_BYTES_MAX: u64 = 1 << 20;
/// The largest file the simulated file system under the pool holds, like
/// ext4's 16 TiB: growing the pool past it must be refused cleanly.
const FILE_BYTES_MAX: u64 = 16 << 40;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------ the device

/// A data file that keeps only the blocks written, so that the pool can
/// grow as far as the engine allows without memory to match.
#[derive(Clone, Default)]
struct SparseData(Arc<Mutex<Sparse>>);

#[derive(Default)]
struct Sparse {
    len: u64,
    blocks: HashMap<u64, Vec<u8>>,
}

impl SparseData {
    fn span(&self, offset: u64, len: usize) -> std::io::Result<()> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > self.0.lock().unwrap().len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "I/O past the end of the data file",
            ));
        }
        Ok(())
    }
}

impl DataFile for SparseData {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.span(offset, buf.len())?;
        let d = self.0.lock().unwrap();
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BS, (at % BS) as usize);
            let n = (BS as usize - within).min(buf.len() - done);
            match d.blocks.get(&block) {
                Some(b) => buf[done..done + n].copy_from_slice(&b[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.span(offset, buf.len())?;
        let mut d = self.0.lock().unwrap();
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BS, (at % BS) as usize);
            let n = (BS as usize - within).min(buf.len() - done);
            let b = d
                .blocks
                .entry(block)
                .or_insert_with(|| vec![0; BS as usize]);
            b[within..within + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn ensure_len(&self, bytes: u64) -> std::io::Result<()> {
        if bytes > FILE_BYTES_MAX {
            return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
        }
        let mut d = self.0.lock().unwrap();
        d.len = d.len.max(bytes);
        Ok(())
    }
}

// ------------------------------------------------------------- the calls

/// An offset: absolute, or relative to the end of the volume it is used on
/// (wrapping, so that it can also land far past the end or near 2^64).
#[derive(Debug, Clone, Copy)]
enum Pos {
    At(u64),
    NearEnd(i64),
}

/// A length: absolute, or up to the end of the volume from the offset, give
/// or take a few bytes.
#[derive(Debug, Clone, Copy)]
enum Len {
    Bytes(u64),
    ToEnd(i64),
}

#[derive(Debug, Clone)]
enum Handle {
    /// Resolved by name, as NBD does: `LUN` or `LUN@SNAPSHOT`.
    Export(String),
    /// A handle forged or kept past its object's life.
    Raw(Target),
}

#[derive(Debug, Clone)]
enum Op {
    Read(Handle, Pos, Len),
    Write(Handle, Pos, Len, u8, bool),
    Trim(Handle, Pos, Len, bool),
    WriteZeroes(Handle, Pos, Len, bool, bool),
    BlockStatus(Handle, Pos, Len),
    Flush,
    CreateLun(String, u64),
    DeleteLun(String, bool),
    ResizeLun(String, u64, bool),
    CreateSnapshots(Vec<(String, String)>, Option<String>),
    DeleteSnapshot(String, String),
    RestoreSnapshot(String, String),
    CreateGroupSnapshot(String, Vec<String>),
    DeleteGroupSnapshot(String),
    CreateClones(String, Vec<String>, bool),
    StartSplit(String),
    StopSplit(String),
    RunSplitBatches(u8),
    RunJobs,
    CloneRanges(String, Vec<RangeEntry>),
    CreateIgroup(String, Vec<String>, Vec<String>),
    IgroupAdd(String, String, bool),
    IgroupRemove(String, String, bool),
    DeleteIgroup(String),
    MapLun(String, String),
    UnmapLun(String, String),
    GrowPool(u64),
    SetAccessOpen(bool),
    /// Fills the pool (writing to "big") until this many blocks are left,
    /// so that later calls meet a pool that is full or nearly so.
    FillPool(u8),
    /// Lookups with arbitrary names: answers or refusals, never changes.
    Lookups(String),
    /// Close the pool and open it again from what was committed.
    Reopen,
}

/// Names the setup creates, likely to hit something.
const KNOWN_NAMES: &[&str] = &[
    "a", "vol/b", "big", "c", "s1", "s2", "gs", "g1", "new", "vol/new", "start",
];
const KNOWN_EXPORTS: &[&str] = &["a", "a@s1", "vol/b", "vol/b@gs", "big", "big@s1", "c"];
const HOSTILE_NAMES: &[&str] = &[
    "", ".", "..", "/", "a/", "/a", "a//b", "a/../b", "./a", "a@s1", "a@", "@", "@s1", "a@s1@s1",
    "a b", "a\0", "a\nb", "é", "vol\\b", "a%2Fb", "*", "a?b",
];
const EDGE_U64: &[u64] = &[
    0,
    1,
    4095,
    4096,
    4097,
    IO_BYTES_MAX - 1,
    IO_BYTES_MAX,
    IO_BYTES_MAX + 1,
    LUN_SIZE_MAX_BYTES - 4096,
    LUN_SIZE_MAX_BYTES,
    LUN_SIZE_MAX_BYTES + 4096,
    FILE_BYTES_MAX,
    u32::MAX as u64,
    1 << 63,
    u64::MAX - 4095,
    u64::MAX - 1,
    u64::MAX,
];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(KNOWN_NAMES).prop_map(str::to_string),
        3 => "[a-c]{1,2}(/[a-c]{1,2})?",
        2 => prop::sample::select(HOSTILE_NAMES).prop_map(str::to_string),
        1 => "\\PC{0,10}",
        1 => any::<String>(),
        1 => (250usize..260).prop_map(|n| "x".repeat(n)),
    ]
}

fn export() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(KNOWN_EXPORTS).prop_map(str::to_string),
        2 => (name(), prop::option::of(name())).prop_map(|(l, s)| match s {
            Some(s) => format!("{l}@{s}"),
            None => l,
        }),
    ]
}

fn handle() -> impl Strategy<Value = Handle> {
    prop_oneof![
        12 => export().prop_map(Handle::Export),
        2 => (0u64..10).prop_map(|id| Handle::Raw(Target::Lun(LunId(id)))),
        2 => (0u64..10, 0u64..40).prop_map(|(id, e)| Handle::Raw(Target::Snapshot(LunId(id), Epoch(e)))),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(id, e)| Handle::Raw(Target::Snapshot(LunId(id), Epoch(e)))),
    ]
}

fn edge() -> impl Strategy<Value = u64> {
    prop::sample::select(EDGE_U64)
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        4 => (0..MODEL_BYTES_MAX + 2 * BS).prop_map(Pos::At),
        2 => (0u64..300).prop_map(|b| Pos::At(b * BS)),
        3 => (-3 * BS as i64..2 * BS as i64).prop_map(Pos::NearEnd),
        1 => edge().prop_map(Pos::At),
        1 => any::<u64>().prop_map(Pos::At),
    ]
}

/// Lengths for calls that take a buffer (read, write).
fn buffer_len() -> impl Strategy<Value = Len> {
    prop_oneof![
        8 => (0..3 * BS + 100).prop_map(Len::Bytes),
        3 => (1u64..24).prop_map(|b| Len::Bytes(b * BS)),
        3 => (-2 * BS as i64..BS as i64).prop_map(Len::ToEnd),
        1 => prop::sample::select(&[IO_BYTES_MAX, IO_BYTES_MAX + 1][..]).prop_map(Len::Bytes),
    ]
}

/// Lengths for calls that take only a length (trim, zeroes, status).
fn range_len() -> impl Strategy<Value = Len> {
    prop_oneof![
        6 => (0..3 * BS + 100).prop_map(Len::Bytes),
        3 => (1u64..300).prop_map(|b| Len::Bytes(b * BS)),
        3 => (-2 * BS as i64..BS as i64).prop_map(Len::ToEnd),
        1 => edge().prop_map(Len::Bytes),
        1 => any::<u64>().prop_map(Len::Bytes),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (1u64..=64).prop_map(|b| b * BS),
        1 => (65u64..=300).prop_map(|b| b * BS),
        2 => 0..MODEL_BYTES_MAX,
        1 => edge(),
        1 => any::<u64>(),
        1 => any::<u64>().prop_map(|v| v & !(BS - 1)),
    ]
}

fn capacity() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (CAPACITY_BLOCKS / 2..CAPACITY_BLOCKS * 3).prop_map(|b| b * BS),
        1 => 0..CAPACITY_BLOCKS * 2 * BS,
        2 => edge(),
        1 => any::<u64>(),
        1 => any::<u64>().prop_map(|v| v & !(BS - 1)),
    ]
}

fn range_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..300).prop_map(|b| b * BS),
        1 => 0..MODEL_BYTES_MAX,
        1 => edge(),
        1 => any::<u64>(),
    ]
}

fn range_entry() -> impl Strategy<Value = RangeEntry> {
    let length = prop_oneof![
        6 => (1u64..40).prop_map(|b| b * BS),
        1 => 0..3 * BS,
        1 => edge(),
        1 => any::<u64>(),
    ];
    (export(), range_offset(), range_offset(), length).prop_map(|(source, so, to, length)| {
        RangeEntry {
            source,
            source_offset: so,
            target_offset: to,
            length,
        }
    })
}

fn member() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&[
            "127.0.0.1", "10.0.0.0/8", "10.1.2.3/8", "192.0.2.7/32", "::1", "fd00::/8",
            "::ffff:10.0.0.1", "0.0.0.0/0", "::/0", "host-a", "host-b",
            "10.0.0.0/33", "1.2.3", "::g", "10.0.0.1/", "/8", "", " 10.0.0.1",
        ][..]).prop_map(str::to_string),
        1 => "[0-9./:a-f]{0,20}",
        1 => "\\PC{0,70}",
        1 => any::<String>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let io = prop_oneof![
        3 => (handle(), pos(), buffer_len()).prop_map(|(h, p, l)| Op::Read(h, p, l)),
        4 => (handle(), pos(), buffer_len(), any::<u8>(), any::<bool>())
            .prop_map(|(h, p, l, seed, fua)| Op::Write(h, p, l, seed, fua)),
        2 => (handle(), pos(), range_len(), any::<bool>()).prop_map(|(h, p, l, f)| Op::Trim(h, p, l, f)),
        2 => (handle(), pos(), range_len(), any::<bool>(), any::<bool>())
            .prop_map(|(h, p, l, nh, f)| Op::WriteZeroes(h, p, l, nh, f)),
        2 => (handle(), pos(), range_len()).prop_map(|(h, p, l)| Op::BlockStatus(h, p, l)),
        1 => Just(Op::Flush),
    ];
    let luns = prop_oneof![
        3 => (name(), size()).prop_map(|(n, s)| Op::CreateLun(n, s)),
        1 => (name(), any::<bool>()).prop_map(|(n, r)| Op::DeleteLun(n, r)),
        2 => (name(), size(), any::<bool>()).prop_map(|(n, s, k)| Op::ResizeLun(n, s, k)),
        3 => (prop::collection::vec((name(), name()), 0..4), prop::option::of(name()))
            .prop_map(|(r, g)| Op::CreateSnapshots(r, g)),
        2 => (name(), name()).prop_map(|(l, s)| Op::DeleteSnapshot(l, s)),
        2 => (name(), name()).prop_map(|(l, s)| Op::RestoreSnapshot(l, s)),
        1 => (name(), prop::collection::vec(name(), 0..4)).prop_map(|(n, l)| Op::CreateGroupSnapshot(n, l)),
        1 => name().prop_map(Op::DeleteGroupSnapshot),
        2 => (export(), prop::collection::vec(name(), 0..3), any::<bool>())
            .prop_map(|(s, n, split)| Op::CreateClones(s, n, split)),
        1 => name().prop_map(Op::StartSplit),
        1 => name().prop_map(Op::StopSplit),
        1 => (1u8..8).prop_map(Op::RunSplitBatches),
        1 => Just(Op::RunJobs),
        3 => (name(), prop::collection::vec(range_entry(), 0..4)).prop_map(|(t, r)| Op::CloneRanges(t, r)),
    ];
    let access = prop_oneof![
        2 => (name(), prop::collection::vec(member(), 0..3), prop::collection::vec(member(), 0..2))
            .prop_map(|(n, a, c)| Op::CreateIgroup(n, a, c)),
        2 => (name(), member(), any::<bool>()).prop_map(|(n, m, cn)| Op::IgroupAdd(n, m, cn)),
        1 => (name(), member(), any::<bool>()).prop_map(|(n, m, cn)| Op::IgroupRemove(n, m, cn)),
        1 => name().prop_map(Op::DeleteIgroup),
        2 => (name(), name()).prop_map(|(l, g)| Op::MapLun(l, g)),
        1 => (name(), name()).prop_map(|(l, g)| Op::UnmapLun(l, g)),
        1 => capacity().prop_map(Op::GrowPool),
        2 => (0u8..4).prop_map(Op::FillPool),
        1 => any::<bool>().prop_map(Op::SetAccessOpen),
        1 => name().prop_map(Op::Lookups),
        1 => Just(Op::Reopen),
    ];
    prop_oneof![12 => io, 9 => luns, 4 => access]
}

// ------------------------------------------------------------- the model

/// A LUN's or snapshot's size, and its bytes when it is small enough.
#[derive(Debug, Clone, PartialEq)]
struct Volume {
    size: u64,
    data: Option<Vec<u8>>,
}

impl Volume {
    fn zeros(size: u64) -> Volume {
        Volume {
            size,
            data: (size <= MODEL_BYTES_MAX).then(|| vec![0; size as usize]),
        }
    }

    fn resized(&mut self, size: u64) {
        self.data = match self.data.take() {
            Some(mut d) if size <= MODEL_BYTES_MAX => {
                d.resize(size as usize, 0);
                Some(d)
            }
            _ => None,
        };
        self.size = size;
    }

    fn put(&mut self, offset: u64, bytes: &[u8]) {
        if let Some(d) = &mut self.data {
            d[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn zero(&mut self, offset: u64, len: u64) {
        if let Some(d) = &mut self.data {
            d[offset as usize..(offset + len) as usize].fill(0);
        }
    }
}

#[derive(Debug, Clone)]
struct MLun {
    vol: Volume,
    snapshots: BTreeMap<String, Volume>,
}

#[derive(Debug, Default, Clone)]
struct Model {
    luns: BTreeMap<String, MLun>,
    /// Group snapshot name to its members' (LUN, snapshot).
    groups: BTreeMap<String, Vec<(String, String)>>,
}

impl Model {
    fn volume(&self, export: &str) -> Option<&Volume> {
        match export.split_once('@') {
            None => self.luns.get(export).map(|l| &l.vol),
            Some((lun, snap)) => self.luns.get(lun)?.snapshots.get(snap),
        }
    }
}

// ------------------------------------------------------------- the world

struct World {
    data: SparseData,
    store: SimStore,
    engine: Arc<Engine>,
    model: Model,
}

fn config() -> EngineConfig {
    EngineConfig {
        background: false,
        reclaim_ranges_per_batch: 4,
        ..EngineConfig::default()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    // Bytes differ along the buffer, so that a misplaced copy shows.
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 12) as u8)
        .collect()
}

/// A buffer of `len` bytes of `fill`; past what any modeled volume holds,
/// zeros, which the allocator maps lazily: most such calls are refused
/// before touching them, and filling 64 MiB per call would dominate the run.
fn buffer(len: u64, fill: u8) -> Vec<u8> {
    if len > MODEL_BYTES_MAX {
        vec![0; len as usize]
    } else {
        vec![fill; len as usize]
    }
}

fn is_clean(e: &Error) -> bool {
    !matches!(
        e,
        Error::Io(_) | Error::Store(_) | Error::PoolFailed(_) | Error::Closed
    )
}

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

impl World {
    fn new() -> Result<World, TestCaseError> {
        let data = SparseData::default();
        let store = SimStore::new(FaultPlan::new(0));
        let engine = Engine::open_with(
            Box::new(data.clone()),
            Box::new(store.clone()),
            CAPACITY_BLOCKS,
            config(),
        )
        .map_err(|e| fail(format!("open: {e}")))?;
        let mut w = World {
            data,
            store,
            engine,
            model: Model::default(),
        };
        // A small LUN with data and a snapshot, a clone of it, a LUN in a
        // group snapshot, a 64 TiB LUN, an igroup and a map.
        let setup = [
            Op::CreateLun("a".into(), 16 * BS),
            Op::Write(
                Handle::Export("a".into()),
                Pos::At(1000),
                Len::Bytes(5 * BS),
                7,
                false,
            ),
            Op::CreateSnapshots(vec![("a".into(), "s1".into())], None),
            Op::Write(
                Handle::Export("a".into()),
                Pos::At(3 * BS),
                Len::Bytes(BS),
                99,
                false,
            ),
            Op::CreateClones("a@s1".into(), vec!["c".into()], false),
            Op::CreateLun("vol/b".into(), 64 * BS),
            Op::Write(
                Handle::Export("vol/b".into()),
                Pos::At(0),
                Len::Bytes(2 * BS),
                1,
                false,
            ),
            Op::CreateGroupSnapshot("gs".into(), vec!["vol/b".into()]),
            Op::CreateLun("big".into(), LUN_SIZE_MAX_BYTES),
            Op::Write(
                Handle::Export("big".into()),
                Pos::NearEnd(-(BS as i64) - 10),
                Len::Bytes(20),
                3,
                false,
            ),
            Op::CreateSnapshots(vec![("big".into(), "s1".into())], None),
            Op::CreateIgroup("g1".into(), vec!["127.0.0.1".into()], vec!["host-a".into()]),
            Op::MapLun("big".into(), "g1".into()),
        ];
        for op in &setup {
            if let Err(e) = w.apply(op)? {
                return Err(fail(format!("setup {op:?}: {e}")));
            }
        }
        w.check_model("setup")?;
        Ok(w)
    }

    /// Everything a refused call might wrongly change. Content is checked
    /// through the model.
    fn fingerprint(&self) -> String {
        let e = &self.engine;
        let mut pool = e.pool_status().expect("pool status");
        pool.created = 0;
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            e.list_luns(""),
            e.list_snapshots(None),
            e.list_group_snapshots(),
            e.list_igroups(),
            e.list_splits(""),
            pool,
        )
    }

    /// The export a forged or kept handle refers to now, if any.
    fn export_of(&self, target: Target) -> Option<String> {
        let luns = self.engine.list_luns("").ok()?;
        match target {
            Target::Lun(id) => luns.into_iter().find(|l| l.id == id.0).map(|l| l.name),
            Target::Snapshot(id, epoch) => {
                let lun = luns.into_iter().find(|l| l.id == id.0)?.name;
                let snaps = self.engine.list_snapshots(Some(&lun)).ok()?;
                let snap = snaps.into_iter().find(|s| s.epoch == epoch.0)?;
                Some(format!("{lun}@{}", snap.name))
            }
        }
    }

    /// Resolves a handle the way the call will see it, checking the
    /// engine's answer against the model.
    fn resolve(&self, h: &Handle) -> Result<Result<(Target, String), Error>, TestCaseError> {
        match h {
            Handle::Export(name) => {
                let got = self.engine.resolve(name);
                let known = self.model.volume(name).is_some();
                match (&got, known) {
                    (Ok(_), false) => {
                        Err(fail(format!("{name:?} resolves but is not in the model")))
                    }
                    (Err(e), true) => Err(fail(format!("{name:?} is in the model but: {e}"))),
                    _ => Ok(got.map(|t| (t, name.clone()))),
                }
            }
            Handle::Raw(t) => Ok(Ok((*t, self.export_of(*t).unwrap_or_default()))),
        }
    }

    /// Makes one call and brings the model along when it succeeds. The outer
    /// error is a broken property; the inner one the call's own refusal.
    fn apply(&mut self, op: &Op) -> Result<Result<(), Error>, TestCaseError> {
        let e = self.engine.clone();
        let r = match op {
            Op::Read(h, p, l) | Op::BlockStatus(h, p, l) => {
                let (t, name) = match self.resolve(h)? {
                    Ok(x) => x,
                    Err(err) => return Ok(Err(err)),
                };
                let vol = self.model.volume(&name).cloned();
                let size = vol.as_ref().map_or(0, |v| v.size);
                let (offset, mut len) = place(*p, *l, size);
                if let Op::Read(..) = op {
                    len = len.min(IO_BYTES_MAX + 1);
                }
                let in_range =
                    vol.is_some() && offset.checked_add(len).is_some_and(|end| end <= size);
                if let Op::Read(..) = op {
                    let mut buf = buffer(len, 0xEE);
                    let r = e.read(t, offset, &mut buf);
                    let refused = len > 0 && (!in_range || len > IO_BYTES_MAX);
                    expect(op, &r, in_range && len <= IO_BYTES_MAX, refused, false)?;
                    if r.is_ok() && len > 0 {
                        if let Some(d) = vol.and_then(|v| v.data) {
                            let want = &d[offset as usize..(offset + len) as usize];
                            if buf != want {
                                return Err(fail(format!(
                                    "{op:?}: read differs from the model at byte {}",
                                    offset as usize + first_difference(&buf, want)
                                )));
                            }
                        }
                    }
                    r
                } else {
                    let r = e.block_status(t, offset, len);
                    expect(op, &r, in_range, !in_range, false)?;
                    if let Ok(extents) = &r {
                        check_status(
                            op,
                            extents,
                            offset,
                            len,
                            vol.and_then(|v| v.data).as_deref(),
                        )?;
                    }
                    r.map(drop)
                }
            }
            Op::Write(h, p, l, seed, fua) => {
                let (t, name) = match self.resolve(h)? {
                    Ok(x) => x,
                    Err(err) => return Ok(Err(err)),
                };
                let size = self.model.volume(&name).map_or(0, |v| v.size);
                let (offset, len) = place(*p, *l, size);
                let len = len.min(IO_BYTES_MAX + 1);
                let data = if len > MODEL_BYTES_MAX {
                    buffer(len, 0)
                } else {
                    pattern(*seed, len as usize)
                };
                let writable = self.model.luns.contains_key(&name);
                let in_range = writable && offset.checked_add(len).is_some_and(|end| end <= size);
                let r = e.write(t, offset, &data, *fua);
                // A zero-length write does nothing and succeeds, except on
                // a snapshot, which is never writable.
                let refused = matches!(t, Target::Snapshot(..))
                    || (len > 0 && !in_range)
                    || len > IO_BYTES_MAX;
                expect(op, &r, in_range && len <= IO_BYTES_MAX, refused, true)?;
                if r.is_ok() && len > 0 {
                    self.model
                        .luns
                        .get_mut(&name)
                        .expect("writable")
                        .vol
                        .put(offset, &data);
                }
                r
            }
            Op::Trim(h, p, l, fua) | Op::WriteZeroes(h, p, l, _, fua) => {
                let (t, name) = match self.resolve(h)? {
                    Ok(x) => x,
                    Err(err) => return Ok(Err(err)),
                };
                let size = self.model.volume(&name).map_or(0, |v| v.size);
                let (offset, len) = place(*p, *l, size);
                let writable = self.model.luns.contains_key(&name);
                let in_range = writable && offset.checked_add(len).is_some_and(|end| end <= size);
                let r = match op {
                    Op::Trim(..) => e.trim(t, offset, len, *fua),
                    Op::WriteZeroes(_, _, _, no_hole, _) => {
                        e.write_zeroes(t, offset, len, *no_hole, *fua)
                    }
                    _ => unreachable!(),
                };
                expect(op, &r, in_range, !in_range, true)?;
                if r.is_ok() {
                    self.model
                        .luns
                        .get_mut(&name)
                        .expect("writable")
                        .vol
                        .zero(offset, len);
                }
                r
            }
            Op::Flush => e.flush(),
            Op::CreateLun(n, size) => {
                let r = e.create_lun(n, *size);
                if r.is_ok() {
                    self.model.luns.insert(
                        n.clone(),
                        MLun {
                            vol: Volume::zeros(*size),
                            snapshots: BTreeMap::new(),
                        },
                    );
                }
                r.map(drop)
            }
            Op::DeleteLun(n, recursive) => {
                let r = e.delete_lun(n, *recursive);
                if r.is_ok() {
                    self.model.luns.remove(n);
                }
                r
            }
            Op::ResizeLun(n, size, shrink) => {
                let r = e.resize_lun(n, *size, *shrink);
                if r.is_ok() {
                    self.model
                        .luns
                        .get_mut(n)
                        .ok_or_else(|| fail(format!("{op:?} worked on no LUN")))?
                        .vol
                        .resized(*size);
                }
                r.map(drop)
            }
            Op::CreateSnapshots(requests, group) => {
                let r = e.create_snapshots(requests, group.as_deref());
                if r.is_ok() {
                    for (lun, snap) in requests {
                        let l = self
                            .model
                            .luns
                            .get_mut(lun)
                            .ok_or_else(|| fail(format!("{op:?}: no LUN {lun}")))?;
                        let vol = l.vol.clone();
                        l.snapshots.insert(snap.clone(), vol);
                    }
                    if let Some(g) = group {
                        self.model.groups.insert(g.clone(), requests.clone());
                    }
                }
                r.map(drop)
            }
            Op::DeleteSnapshot(lun, snap) => {
                let r = e.delete_snapshot(lun, snap);
                if r.is_ok() {
                    self.model
                        .luns
                        .get_mut(lun)
                        .and_then(|l| l.snapshots.remove(snap))
                        .ok_or_else(|| fail(format!("{op:?} deleted what the model lacks")))?;
                }
                r
            }
            Op::RestoreSnapshot(lun, snap) => {
                let r = e.restore_snapshot(lun, snap);
                if r.is_ok() {
                    let l = self
                        .model
                        .luns
                        .get_mut(lun)
                        .ok_or_else(|| fail(format!("{op:?}: no LUN")))?;
                    l.vol = l
                        .snapshots
                        .get(snap)
                        .cloned()
                        .ok_or_else(|| fail(format!("{op:?}: no snapshot")))?;
                }
                r
            }
            Op::CreateGroupSnapshot(g, luns) => {
                let r = e.create_group_snapshot(g, luns);
                if r.is_ok() {
                    let requests: Vec<(String, String)> =
                        luns.iter().map(|l| (l.clone(), g.clone())).collect();
                    for (lun, snap) in &requests {
                        let l = self
                            .model
                            .luns
                            .get_mut(lun)
                            .ok_or_else(|| fail(format!("{op:?}: no LUN {lun}")))?;
                        let vol = l.vol.clone();
                        l.snapshots.insert(snap.clone(), vol);
                    }
                    self.model.groups.insert(g.clone(), requests);
                }
                r.map(drop)
            }
            Op::DeleteGroupSnapshot(g) => {
                let r = e.delete_group_snapshot(g);
                if r.is_ok() {
                    let members = self
                        .model
                        .groups
                        .remove(g)
                        .ok_or_else(|| fail(format!("{op:?}: no group")))?;
                    for (lun, snap) in members {
                        if let Some(l) = self.model.luns.get_mut(&lun) {
                            l.snapshots.remove(&snap);
                        }
                    }
                }
                r
            }
            Op::CreateClones(source, names, split) => {
                let r = e.create_clones(source, names, *split);
                if r.is_ok() {
                    let vol = self
                        .model
                        .volume(source)
                        .cloned()
                        .ok_or_else(|| fail(format!("{op:?}: no source")))?;
                    for n in names {
                        self.model.luns.insert(
                            n.clone(),
                            MLun {
                                vol: vol.clone(),
                                snapshots: BTreeMap::new(),
                            },
                        );
                    }
                }
                r.map(drop)
            }
            Op::StartSplit(n) => e.start_split(n).map(drop),
            Op::StopSplit(n) => e.stop_split(n).map(drop),
            Op::RunSplitBatches(n) => {
                for _ in 0..*n {
                    e.run_split_batch();
                }
                Ok(())
            }
            Op::RunJobs => {
                e.run_jobs();
                Ok(())
            }
            Op::CloneRanges(target, entries) => {
                // The bytes each entry should bring, read before the call:
                // from the model when it has them, else from the engine.
                let sources: Vec<Option<Vec<u8>>> =
                    entries.iter().map(|r| self.source_bytes(r)).collect();
                let r = e.clone_ranges(target, entries);
                if r.is_ok() {
                    let l = self
                        .model
                        .luns
                        .get_mut(target)
                        .ok_or_else(|| fail(format!("{op:?}: no target")))?;
                    for (entry, bytes) in entries.iter().zip(sources) {
                        match bytes {
                            Some(b) => l.vol.put(entry.target_offset, &b),
                            None if l.vol.data.is_some() => {
                                return Err(fail(format!("{op:?}: a range into a modeled LUN from an unreadable source worked")))
                            }
                            None => {}
                        }
                    }
                }
                r.map(drop)
            }
            Op::CreateIgroup(n, addresses, cns) => {
                let members: Result<Vec<Member>, Error> = addresses
                    .iter()
                    .map(|a| Member::address(a))
                    .chain(cns.iter().map(|c| Member::cert_cn(c)))
                    .collect();
                members.and_then(|m| e.create_igroup(n, m)).map(drop)
            }
            Op::IgroupAdd(n, m, cn) => member_of(m, *cn).and_then(|m| e.igroup_add(n, m)).map(drop),
            Op::IgroupRemove(n, m, cn) => member_of(m, *cn)
                .and_then(|m| e.igroup_remove(n, m))
                .map(drop),
            Op::DeleteIgroup(n) => e.delete_igroup(n),
            Op::MapLun(l, g) => e.map_lun(l, g),
            Op::UnmapLun(l, g) => e.unmap_lun(l, g),
            Op::GrowPool(c) => e.grow_pool(*c).map(drop),
            Op::SetAccessOpen(open) => e.set_access_open(*open),
            Op::FillPool(left) => {
                let free = e
                    .pool_status()
                    .map_err(|err| fail(format!("status: {err}")))?
                    .free_bytes
                    / BS;
                let blocks = free.saturating_sub(u64::from(*left)).min(IO_BYTES_MAX / BS);
                match e.resolve("big") {
                    Ok(t) if blocks > 0 => {
                        let at = (1 << 40) + e.pool_status().map_or(0, |p| p.epoch) * IO_BYTES_MAX;
                        e.write(t, at, &pattern(*left, (blocks * BS) as usize), false)
                    }
                    _ => Ok(()),
                }
            }
            Op::Lookups(n) => {
                let answers = [
                    e.lun_info(n).map(drop),
                    e.list_luns(n).map(drop),
                    e.list_snapshots(Some(n)).map(drop),
                    e.group_info(n).map(drop),
                    e.igroup_info(n).map(drop),
                    e.split_status(n).map(drop),
                    e.list_splits(n).map(drop),
                    e.resolve(n).map(drop),
                ];
                let _ = e.visible_to(n, &Default::default());
                answers
                    .into_iter()
                    .find(|a| a.as_ref().is_err_and(|e| !is_clean(e)))
                    .unwrap_or(Ok(()))
            }
            Op::Reopen => {
                e.close().map_err(|err| fail(format!("close: {err}")))?;
                drop(e);
                self.engine = Engine::open_with(
                    Box::new(self.data.clone()),
                    Box::new(self.store.clone()),
                    CAPACITY_BLOCKS,
                    config(),
                )
                .map_err(|err| fail(format!("reopen: {err}")))?;
                Ok(())
            }
        };
        Ok(r)
    }

    /// What `entry` should copy, when it can be known before the call.
    fn source_bytes(&self, entry: &RangeEntry) -> Option<Vec<u8>> {
        let end = entry.source_offset.checked_add(entry.length)?;
        if entry.length > MODEL_BYTES_MAX {
            return None;
        }
        if let Some(d) = self
            .model
            .volume(&entry.source)
            .and_then(|v| v.data.as_ref())
        {
            return d
                .get(entry.source_offset as usize..end as usize)
                .map(<[u8]>::to_vec);
        }
        let t = self.engine.resolve(&entry.source).ok()?;
        let mut buf = vec![0u8; entry.length as usize];
        self.engine.read(t, entry.source_offset, &mut buf).ok()?;
        Some(buf)
    }

    fn step(&mut self, i: usize, op: &Op) -> Result<(), TestCaseError> {
        let before = self.fingerprint();
        let r = self.apply(op)?;
        if let Err(err) = &r {
            if err.to_string().is_empty() || !is_clean(err) {
                return Err(fail(format!("step {i} {op:?}: unclean error: {err:?}")));
            }
        }
        // Refusals, lookups and reads change nothing.
        let read_only = matches!(op, Op::Lookups(_) | Op::Read(..) | Op::BlockStatus(..));
        if r.is_err() || read_only {
            let after = self.fingerprint();
            if after != before {
                return Err(fail(format!(
                    "step {i} {op:?} ({r:?}) changed the pool:\nbefore: {before}\nafter:  {after}"
                )));
            }
        }
        self.engine
            .check_invariants()
            .map_err(|m| fail(format!("step {i} {op:?}: invariant broken: {m}")))?;
        self.check_model(&format!("step {i} {op:?}"))
    }

    /// The pool holds the model's LUNs, snapshots and group snapshots, and
    /// every modeled volume reads back the model's bytes.
    fn check_model(&self, at: &str) -> Result<(), TestCaseError> {
        let e = &self.engine;
        let luns: BTreeMap<String, u64> = e
            .list_luns("")
            .map_err(|err| fail(format!("{at}: list: {err}")))?
            .into_iter()
            .map(|l| (l.name, l.size_bytes))
            .collect();
        let want: BTreeMap<String, u64> = self
            .model
            .luns
            .iter()
            .map(|(n, l)| (n.clone(), l.vol.size))
            .collect();
        if luns != want {
            return Err(fail(format!("{at}: LUNs {luns:?}, model {want:?}")));
        }
        let snaps: BTreeSet<(String, String, u64)> = e
            .list_snapshots(None)
            .map_err(|err| fail(format!("{at}: list: {err}")))?
            .into_iter()
            .map(|s| (s.lun, s.name, s.size_bytes))
            .collect();
        let want: BTreeSet<(String, String, u64)> = self
            .model
            .luns
            .iter()
            .flat_map(|(n, l)| {
                l.snapshots
                    .iter()
                    .map(move |(s, v)| (n.clone(), s.clone(), v.size))
            })
            .collect();
        if snaps != want {
            return Err(fail(format!("{at}: snapshots {snaps:?}, model {want:?}")));
        }
        let groups: BTreeSet<String> = e
            .list_group_snapshots()
            .map_err(|err| fail(format!("{at}: list: {err}")))?
            .into_iter()
            .map(|g| g.name)
            .collect();
        let want: BTreeSet<String> = self.model.groups.keys().cloned().collect();
        if groups != want {
            return Err(fail(format!(
                "{at}: group snapshots {groups:?}, model {want:?}"
            )));
        }
        for (name, l) in &self.model.luns {
            let exports = std::iter::once((name.clone(), &l.vol))
                .chain(l.snapshots.iter().map(|(s, v)| (format!("{name}@{s}"), v)));
            for (export, vol) in exports {
                let Some(want) = &vol.data else { continue };
                let t = e
                    .resolve(&export)
                    .map_err(|err| fail(format!("{at}: resolve {export}: {err}")))?;
                let mut got = vec![0xEEu8; want.len()];
                e.read(t, 0, &mut got)
                    .map_err(|err| fail(format!("{at}: read {export}: {err}")))?;
                if &got != want {
                    return Err(fail(format!(
                        "{at}: {export} differs from the model at byte {}",
                        first_difference(&got, want)
                    )));
                }
            }
        }
        Ok(())
    }
}

fn member_of(m: &str, cn: bool) -> Result<Member, Error> {
    if cn {
        Member::cert_cn(m)
    } else {
        Member::address(m)
    }
}

/// An offset and a length on a volume of `size` bytes.
fn place(p: Pos, l: Len, size: u64) -> (u64, u64) {
    let offset = match p {
        Pos::At(o) => o,
        Pos::NearEnd(d) => size.wrapping_add_signed(d),
    };
    let len = match l {
        Len::Bytes(n) => n,
        Len::ToEnd(d) => size.wrapping_sub(offset).wrapping_add_signed(d),
    };
    (offset, len)
}

/// Checks an I/O call's outcome against what its range predicts: `ok`
/// means it must succeed (a write may also find the pool full), `refused`
/// that it must fail.
fn expect<T: std::fmt::Debug>(
    op: &Op,
    r: &Result<T, Error>,
    ok: bool,
    refused: bool,
    may_fill: bool,
) -> Result<(), TestCaseError> {
    match r {
        Err(err) if ok && !(may_fill && matches!(err, Error::NoSpace(_))) => {
            Err(fail(format!("{op:?} is in range but failed: {err}")))
        }
        Ok(_) if refused => Err(fail(format!(
            "{op:?} is out of range or read-only but worked"
        ))),
        _ => Ok(()),
    }
}

/// Block status covers the range exactly, in extents of alternating kinds,
/// and never calls bytes that are not zero a hole or zeros.
fn check_status(
    op: &Op,
    extents: &[(u64, Allocation)],
    offset: u64,
    len: u64,
    model: Option<&[u8]>,
) -> Result<(), TestCaseError> {
    let total: u64 = extents.iter().map(|(n, _)| n).sum();
    if total != len || extents.iter().any(|(n, _)| *n == 0) {
        return Err(fail(format!(
            "{op:?}: extents {extents:?} do not cover {len} bytes"
        )));
    }
    if extents.windows(2).any(|w| w[0].1 == w[1].1) {
        return Err(fail(format!("{op:?}: extents {extents:?} are not merged")));
    }
    if let Some(d) = model {
        let mut at = offset;
        for (n, kind) in extents {
            if *kind != Allocation::Data
                && d[at as usize..(at + n) as usize].iter().any(|b| *b != 0)
            {
                return Err(fail(format!(
                    "{op:?}: {kind:?} at {at}+{n} holds data in the model"
                )));
            }
            at += n;
        }
    }
    Ok(())
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new()?;
    for (i, op) in ops.iter().enumerate() {
        w.step(i, op)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: env_u32("FUZZ_CASES", 256),
        max_shrink_iters: 2000,
        // Failing inputs are printed; do not write regression files into
        // the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_calls_are_refused_cleanly_and_change_nothing(
        ops in prop::collection::vec(op(), 1..=env_u32("FUZZ_STEPS", 40) as usize)
    ) {
        run(&ops)?;
    }
}
