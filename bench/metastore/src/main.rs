//! Metadata-store benchmark for blockfork: redb vs fjall vs heed (LMDB).
//!
//! Run: `cd bench/metastore && cargo run --release`
//! Flags: `--quick` (tiny sizes, for checking the harness), `--no-build` (skip the
//! clean-build timings), `--only redb|fjall|heed` (one store).
//!
//! Everything is written under `tmp-data/` next to this Cargo.toml (on the same
//! filesystem as the repo, not /tmp) and removed at the end.

mod api;
mod stores;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub type Key = [u8; 17];

pub enum Op {
    Put(Key, Vec<u8>),
    Del(Key),
}

/// What the benchmark needs from a store. Every `commit` is one transaction,
/// durable (synced to disk) before it returns.
pub trait Store {
    fn commit(&mut self, ops: &[Op]);
    /// Full ordered iteration; returns (number of keys, total value bytes).
    /// Panics if keys do not come back in strictly increasing order.
    fn scan(&self) -> (usize, u64);
    /// Switch to an alternative durability mode for an extra latency row
    /// (fjall: SyncAll/fsync instead of SyncData/fdatasync). Returns its label.
    fn alt_durability(&mut self) -> Option<&'static str> {
        None
    }
    fn close(self: Box<Self>);
}

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Redb,
    Fjall,
    Heed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
            Kind::Heed => "heed",
        }
    }
    fn version(self) -> &'static str {
        match self {
            Kind::Redb => "redb 4.5.0",
            Kind::Fjall => "fjall 3.1.13",
            Kind::Heed => "heed 0.23.1 (LMDB)",
        }
    }
    fn open(self, dir: &Path) -> Box<dyn Store> {
        match self {
            Kind::Redb => Box::new(stores::RedbStore::open(dir)),
            Kind::Fjall => Box::new(stores::FjallStore::open(dir)),
            Kind::Heed => Box::new(stores::HeedStore::open(dir)),
        }
    }
}

struct Config {
    fill_keys: usize,
    fill_batch: usize,
    lat_commits: usize,
    throughput: Vec<(usize, usize)>, // (batch size, number of commits)
    overwrites: usize,
    overwrite_batch: usize,
    sustain: Duration,
}

impl Config {
    fn full() -> Self {
        Config {
            fill_keys: 2_000_000,
            fill_batch: 100_000,
            lat_commits: 300,
            throughput: vec![(100, 200), (1_000, 60), (10_000, 15)],
            overwrites: 1_000_000,
            overwrite_batch: 10_000,
            sustain: Duration::from_secs(12),
        }
    }
    fn quick() -> Self {
        Config {
            fill_keys: 50_000,
            fill_batch: 10_000,
            lat_commits: 30,
            throughput: vec![(100, 10), (1_000, 5), (10_000, 2)],
            overwrites: 20_000,
            overwrite_batch: 10_000,
            sustain: Duration::from_secs(2),
        }
    }
}

/// Generates the engine-like workload and tracks which keys are live.
struct Workload {
    rng: StdRng,
    live: Vec<Key>,
    epoch: u64,
    mgmt_seq: u64,
}

impl Workload {
    fn new(seed: u64) -> Self {
        Workload { rng: StdRng::seed_from_u64(seed), live: Vec::new(), epoch: 1, mgmt_seq: 0 }
    }

    /// Block-map key: tag 0x01, lun id (u64 BE), start LBA (u64 BE).
    fn new_key(&mut self) -> Key {
        let mut k = [0u8; 17];
        k[0] = 0x01;
        k[1..9].copy_from_slice(&self.rng.gen_range(0..4u64).to_be_bytes());
        k[9..17].copy_from_slice(&(self.rng.gen::<u64>() >> 8).to_be_bytes());
        k
    }

    /// Extent value: length, physical block, birth epoch (24 B) + 0..16 B; 2% carry a
    /// longer list (~100-160 B).
    fn value(&mut self) -> Vec<u8> {
        let extra = if self.rng.gen_ratio(1, 50) {
            self.rng.gen_range(72..136)
        } else {
            self.rng.gen_range(0..=16)
        };
        let mut v = Vec::with_capacity(24 + extra);
        v.extend_from_slice(&(self.rng.gen_range(1..512u64) * 8).to_be_bytes());
        v.extend_from_slice(&(self.rng.gen::<u64>() >> 20).to_be_bytes());
        v.extend_from_slice(&self.epoch.to_be_bytes());
        for _ in 0..extra {
            v.push(self.rng.gen());
        }
        v
    }

    fn pick_live(&mut self, used: &HashSet<Key>) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        for _ in 0..16 {
            let i = self.rng.gen_range(0..self.live.len());
            if !used.contains(&self.live[i]) {
                return Some(i);
            }
        }
        None
    }

    /// One engine commit: `n` distinct keys; 10% deletes of existing keys, 45%
    /// overwrites of existing keys, 45% inserts of new keys.
    fn batch(&mut self, n: usize, delete_pct: u32, overwrite_pct: u32) -> Vec<Op> {
        self.epoch += 1;
        let mut ops = Vec::with_capacity(n);
        let mut used = HashSet::with_capacity(n);
        while ops.len() < n {
            let r = self.rng.gen_range(0..100u32);
            if r < delete_pct {
                if let Some(i) = self.pick_live(&used) {
                    let k = self.live.swap_remove(i);
                    used.insert(k);
                    ops.push(Op::Del(k));
                    continue;
                }
            } else if r < delete_pct + overwrite_pct {
                if let Some(i) = self.pick_live(&used) {
                    let k = self.live[i];
                    used.insert(k);
                    let v = self.value();
                    ops.push(Op::Put(k, v));
                    continue;
                }
            }
            let k = self.new_key();
            if used.insert(k) {
                self.live.push(k);
                let v = self.value();
                ops.push(Op::Put(k, v));
            }
        }
        ops
    }

    /// A management commit (e.g. snapshot create): `n` small keys under tag 0x02.
    fn mgmt_batch(&mut self, n: usize) -> Vec<Op> {
        (0..n)
            .map(|i| {
                self.mgmt_seq += 1;
                let mut k = [0u8; 17];
                k[0] = 0x02;
                k[1..9].copy_from_slice(&(i as u64).to_be_bytes());
                k[9..17].copy_from_slice(&self.mgmt_seq.to_be_bytes());
                let mut v = vec![0u8; 32];
                v[..8].copy_from_slice(&self.mgmt_seq.to_be_bytes());
                Op::Put(k, v)
            })
            .collect()
    }
}

struct Lat {
    p50: Duration,
    p99: Duration,
}

fn lat(mut v: Vec<Duration>) -> Lat {
    v.sort();
    let n = v.len();
    Lat { p50: v[n / 2], p99: v[((n * 99) / 100).min(n - 1)] }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Sum of (allocated, apparent) bytes of all files under `dir`.
fn dir_size(dir: &Path) -> (u64, u64) {
    let mut alloc = 0;
    let mut apparent = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (a, b) = dir_size(&e.path());
            alloc += a;
            apparent += b;
        } else {
            alloc += m.blocks() * 512;
            apparent += m.len();
        }
    }
    (alloc, apparent)
}

/// Write back and evict the store's files from the page cache, so that the next
/// open + scan reads from the disk (as after a reboot). Per-file, no privileges.
fn evict_page_cache(dir: &Path) {
    use std::os::fd::AsRawFd;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            evict_page_cache(&p);
        } else if let Ok(f) = fs::File::open(&p) {
            let _ = f.sync_all();
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

/// The floor: pwrite 4 KiB at offset 0 of an existing file + fdatasync.
struct Probe {
    f: fs::File,
    path: PathBuf,
    buf: Vec<u8>,
    i: u64,
}

impl Probe {
    fn new(root: &Path) -> Self {
        let path = root.join("fdatasync-probe");
        let f = fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        let buf = vec![0u8; 4096];
        f.write_at(&buf, 0).unwrap();
        f.sync_all().unwrap();
        Probe { f, path, buf, i: 0 }
    }
    fn once(&mut self) -> Duration {
        self.i += 1;
        self.buf[..8].copy_from_slice(&self.i.to_le_bytes());
        let t = Instant::now();
        self.f.write_at(&self.buf, 0).unwrap();
        self.f.sync_data().unwrap();
        t.elapsed()
    }
    fn remove(self) {
        drop(self.f);
        fs::remove_file(&self.path).unwrap();
    }
}

#[derive(Default)]
struct Res {
    fill_s: f64,
    fill_kps: f64,
    size_fill: (u64, u64),
    open_ms: f64,
    scan_cold_kps: f64,
    scan_warm_kps: f64,
    scanned: usize,
    lat1: Option<Lat>,
    lat3: Option<Lat>,
    alt: Option<(&'static str, Lat, Lat)>,
    tput: Vec<(usize, f64, Duration)>, // (batch, keys/s, p50 commit)
    overwrite_s: f64,
    overwrite_kps: f64,
    size_after: (u64, u64),
    sustain_kps: Vec<f64>,
    sustain_lat: Vec<Duration>,
    sustain_cpu_per_m: Vec<f64>,
    build_s: Option<f64>,
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn timed_commit(s: &mut dyn Store, ops: &[Op]) -> Duration {
    let t = Instant::now();
    s.commit(ops);
    t.elapsed()
}

/// One candidate under test: its directory, its own (identically seeded) workload,
/// the open store and its results.
struct Entry {
    kind: Kind,
    dir: PathBuf,
    wl: Workload,
    store: Option<Box<dyn Store>>,
    r: Res,
}

impl Entry {
    fn s(&mut self) -> &mut dyn Store {
        self.store.as_mut().unwrap().as_mut()
    }
    fn close(&mut self) {
        self.store.take().unwrap().close();
    }
}

/// Round-robin order for round `i`: every store takes every position equally often, so
/// that noise from the (shared, virtual) disk is spread evenly over the candidates.
fn order(i: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |j| (i + j) % n)
}

/// Runs all phases. Commit-level phases are interleaved across the stores (one commit
/// of each per round); the sustained phase runs each store alone, twice, A B C C B A.
fn run_bench(kinds: &[Kind], root: &Path, cfg: &Config) -> (Vec<Entry>, Lat, Lat) {
    let mut es: Vec<Entry> = kinds
        .iter()
        .map(|&kind| {
            let dir = root.join(kind.name());
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Entry { kind, store: Some(kind.open(&dir)), dir, wl: Workload::new(0xb10c_f04c), r: Res::default() }
        })
        .collect();
    let n = es.len();

    // 2a. Pre-fill: random keys, big durable batches. Only commit time is counted.
    eprintln!("fill {} keys in batches of {}", cfg.fill_keys, cfg.fill_batch);
    let rounds = cfg.fill_keys.div_ceil(cfg.fill_batch);
    let mut fill = vec![Duration::ZERO; n];
    for i in 0..rounds {
        for j in order(i, n) {
            let e = &mut es[j];
            let k = cfg.fill_batch.min(cfg.fill_keys - e.wl.live.len());
            let ops = e.wl.batch(k, 0, 0);
            fill[j] += timed_commit(e.s(), &ops);
        }
    }
    for (e, f) in es.iter_mut().zip(&fill) {
        e.r.fill_s = f.as_secs_f64();
        e.r.fill_kps = cfg.fill_keys as f64 / e.r.fill_s;
        e.close();
        // 4a. Size after the fill (store closed cleanly).
        e.r.size_fill = dir_size(&e.dir);
    }

    // 3. Reopen with a cold page cache and scan everything in order (one store at a time).
    eprintln!("reopen + scan");
    for e in es.iter_mut() {
        evict_page_cache(&e.dir);
        let t = Instant::now();
        e.store = Some(e.kind.open(&e.dir));
        e.r.open_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let (c, _bytes) = e.s().scan();
        e.r.scan_cold_kps = c as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (c2, _) = e.s().scan();
        e.r.scan_warm_kps = c2 as f64 / t.elapsed().as_secs_f64();
        assert_eq!(c, e.wl.live.len(), "{}: scan count mismatch", e.kind.name());
        assert_eq!(c, c2);
        e.r.scanned = c;
    }

    // 1. Small durable commits (management ops), interleaved with a bare fdatasync.
    eprintln!("small-commit latency");
    let mut probe = Probe::new(root);
    let lat_rounds = |es: &mut Vec<Entry>, keys: usize, probe: &mut Probe| {
        let mut bare = Vec::new();
        let mut v = vec![Vec::new(); es.len()];
        for i in 0..cfg.lat_commits {
            for j in order(i, es.len() + 1) {
                if j == es.len() {
                    bare.push(probe.once());
                } else {
                    let e = &mut es[j];
                    let ops = e.wl.mgmt_batch(keys);
                    v[j].push(timed_commit(e.s(), &ops));
                }
            }
        }
        (lat(bare), v.into_iter().map(lat).collect::<Vec<_>>())
    };
    let (bare1, l1) = lat_rounds(&mut es, 1, &mut probe);
    let (bare3, l3) = lat_rounds(&mut es, 3, &mut probe);
    for ((e, a), b) in es.iter_mut().zip(l1).zip(l3) {
        e.r.lat1 = Some(a);
        e.r.lat3 = Some(b);
    }
    // Alternative durability modes (fjall SyncAll), each store alone vs the probe.
    for idx in 0..n {
        if let Some(label) = es[idx].s().alt_durability() {
            let mut one = vec![es.remove(idx)];
            let (_, a) = lat_rounds(&mut one, 1, &mut probe);
            let (_, b) = lat_rounds(&mut one, 3, &mut probe);
            let mut e = one.pop().unwrap();
            let (a, b) = (a.into_iter().next().unwrap(), b.into_iter().next().unwrap());
            e.r.alt = Some((label, a, b));
            e.close();
            e.store = Some(e.kind.open(&e.dir)); // back to the default mode
            es.insert(idx, e);
        }
    }
    probe.remove();

    // 2b. Durable batch throughput (10% deletes, 45% overwrites, 45% inserts).
    eprintln!("batch throughput");
    for &(b, commits) in &cfg.throughput {
        let mut v = vec![Vec::new(); n];
        for i in 0..commits {
            for j in order(i, n) {
                let e = &mut es[j];
                let ops = e.wl.batch(b, 10, 45);
                v[j].push(timed_commit(e.s(), &ops));
            }
        }
        for (e, v) in es.iter_mut().zip(v) {
            let total: Duration = v.iter().sum();
            e.r.tput.push((b, (b * commits) as f64 / total.as_secs_f64(), lat(v).p50));
        }
    }

    // 4b. 1 M random overwrites of existing keys, then size again.
    eprintln!("{} overwrites", cfg.overwrites);
    let mut ow = vec![Duration::ZERO; n];
    for i in 0..cfg.overwrites.div_ceil(cfg.overwrite_batch) {
        for j in order(i, n) {
            let e = &mut es[j];
            let ops = e.wl.batch(cfg.overwrite_batch, 0, 100);
            ow[j] += timed_commit(e.s(), &ops);
        }
    }
    for (e, d) in es.iter_mut().zip(ow) {
        e.r.overwrite_s = d.as_secs_f64();
        e.r.overwrite_kps = cfg.overwrites as f64 / e.r.overwrite_s;
        e.close();
        e.r.size_after = dir_size(&e.dir);
    }

    // Sustained: 1,000-key durable batches back to back for a fixed wall time, each
    // store alone, so deferred work (fjall's memtable flushes and compactions on its
    // own threads) has to keep up. CPU = user+sys of the whole process (all threads).
    let seq: Vec<usize> = (0..n).chain((0..n).rev()).collect();
    for j in seq {
        let e = &mut es[j];
        eprintln!("[{}] sustained {} s", e.kind.name(), cfg.sustain.as_secs());
        e.store = Some(e.kind.open(&e.dir));
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut total = Duration::ZERO;
        let mut commits = 0;
        while t0.elapsed() < cfg.sustain {
            let ops = e.wl.batch(1_000, 10, 45);
            let d = timed_commit(e.s(), &ops);
            total += d;
            commits += 1;
            e.r.sustain_lat.push(d);
        }
        let keys = commits as f64 * 1_000.0;
        e.r.sustain_kps.push(keys / total.as_secs_f64());
        e.r.sustain_cpu_per_m.push((cpu_seconds() - cpu0) / (keys / 1e6));
        e.close();
    }
    for e in &es {
        fs::remove_dir_all(&e.dir).unwrap();
    }
    (es, bare1, bare3)
}

/// 5. `cargo clean` + `cargo build --release` of buildtime/<store> (a tiny binary that
/// depends on that store crate only), with its own target dir under tmp-data.
fn build_time(kind: Kind, root: &Path) -> Option<f64> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("buildtime")
        .join(kind.name())
        .join("Cargo.toml");
    let target = root.join("build-target").join(kind.name());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |args: &[&str]| {
        let mut c = Command::new(&cargo);
        c.args(args).arg("--manifest-path").arg(&manifest).arg("--target-dir").arg(&target);
        // Don't let `cargo run`'s own environment leak into the child build.
        for (k, _) in std::env::vars() {
            if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k.starts_with("RUSTC") || k == "RUSTFLAGS" {
                c.env_remove(k);
            }
        }
        let ok = c.status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            eprintln!("cargo {:?} failed for {}", args, kind.name());
        }
        ok
    };
    let ok = run(&["clean", "-q"]);
    let t = Instant::now();
    let ok = ok && run(&["build", "--release", "--locked", "-q"]);
    let s = t.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(&target);
    ok.then_some(s)
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / (1024.0 * 1024.0))
}

fn kps(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else {
        format!("{:.0} k", x / 1e3)
    }
}

fn utc_date() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let days = (secs / 86_400) as i64;
    // civil_from_days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let no_build = args.iter().any(|a| a == "--no-build");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let cfg = if quick { Config::quick() } else { Config::full() };
    let kinds: Vec<Kind> = [Kind::Redb, Kind::Fjall, Kind::Heed]
        .into_iter()
        .filter(|k| only.as_deref().map_or(true, |o| o == k.name()))
        .collect();

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tmp-data");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    let fstype = sh("df", &["--output=fstype", root.to_str().unwrap()]).lines().last().unwrap_or("?").trim().to_string();
    assert!(fstype != "tmpfs", "tmp-data is on tmpfs; fsync numbers would be meaningless");

    // The API snippets quoted in docs/decisions/001-metadata-store.md: run them once.
    api::run_all(&root.join("api-check")).expect("API snippets");

    let started = Instant::now();
    let (mut es, bare1, bare3) = run_bench(&kinds, &root, &cfg);
    let bench_s = started.elapsed().as_secs_f64();
    if !no_build {
        for e in es.iter_mut() {
            eprintln!("[{}] timing clean release build", e.kind.name());
            e.r.build_s = build_time(e.kind, &root);
        }
    }
    let _ = fs::remove_dir_all(&root);

    // ---- report ----
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "\nMetadata-store benchmark, {} (UTC), {} cores, Linux {}, store dirs on {} ({}); store phases {:.0} s, total {:.0} s{}\n",
        utc_date(),
        cpus,
        kernel.trim(),
        fstype,
        root.display(),
        bench_s,
        started.elapsed().as_secs_f64(),
        if quick { ", QUICK MODE (not representative)" } else { "" }
    );
    let mut hdr = String::from("| metric |");
    let mut sep = String::from("|---|");
    for e in &es {
        hdr += &format!(" {} |", e.kind.version());
        sep += "---:|";
    }
    println!("{hdr} bare 4 KiB pwrite + fdatasync |\n{sep}---:|");
    let row = |label: &str, f: &dyn Fn(&Res) -> String, extra: &str| {
        let mut s = format!("| {label} |");
        for e in &es {
            s += &format!(" {} |", f(&e.r));
        }
        println!("{s} {extra} |");
    };
    let pl = |l: &Lat| format!("{} / {}", ms(l.p50), ms(l.p99));
    let plo = |l: &Option<Lat>| l.as_ref().map_or("–".into(), pl);
    row(
        &format!("durable commit, 1 key: p50 / p99 ms ({} commits, interleaved)", cfg.lat_commits),
        &|r| plo(&r.lat1),
        &pl(&bare1),
    );
    row("durable commit, 3 keys: p50 / p99 ms", &|r| plo(&r.lat3), &pl(&bare3));
    row(
        "1 key / 3 keys: p50 above the bare fdatasync p50 (ms)",
        &|r| {
            let d = |l: &Option<Lat>, b: &Lat| (l.as_ref().unwrap().p50.as_secs_f64() - b.p50.as_secs_f64()) * 1e3;
            format!("{:+.2} / {:+.2}", d(&r.lat1, &bare1), d(&r.lat3, &bare3))
        },
        "",
    );
    if es.iter().any(|e| e.r.alt.is_some()) {
        row(
            "other durability mode, 1 key / 3 keys: p50 (p99) ms",
            &|r| match &r.alt {
                Some((label, a, b)) => format!("{label}: {} ({}) / {} ({})", ms(a.p50), ms(a.p99), ms(b.p50), ms(b.p99)),
                None => "–".into(),
            },
            "",
        );
    }
    for (i, &(b, c)) in cfg.throughput.iter().enumerate() {
        row(
            &format!("durable batches of {b} ({c} commits), keys/s (p50 ms/commit)"),
            &|r| {
                let (_, k, p) = r.tput[i];
                format!("{} ({})", kps(k), ms(p))
            },
            "",
        );
    }
    row(
        &format!("sustained 1,000-key durable batches, {} s alone, twice: keys/s", cfg.sustain.as_secs()),
        &|r| r.sustain_kps.iter().map(|&k| kps(k)).collect::<Vec<_>>().join(" / "),
        "",
    );
    row("  sustained: p50 / p99 ms per commit", &|r| pl(&lat(r.sustain_lat.clone())), "");
    row(
        "  sustained: CPU s (all threads) per 1 M keys",
        &|r| r.sustain_cpu_per_m.iter().map(|c| format!("{c:.1}")).collect::<Vec<_>>().join(" / "),
        "",
    );
    row(
        &format!("fill {} M keys, batches of {}: s (keys/s)", cfg.fill_keys as f64 / 1e6, cfg.fill_batch),
        &|r| format!("{:.1} ({})", r.fill_s, kps(r.fill_kps)),
        "",
    );
    row("reopen, cold page cache: open ms", &|r| format!("{:.1}", r.open_ms), "");
    row("full ordered scan, cold cache: keys/s", &|r| kps(r.scan_cold_kps), "");
    row(
        "startup = open + cold full scan: s",
        &|r| format!("{:.2}", r.open_ms / 1e3 + r.scanned as f64 / r.scan_cold_kps),
        "",
    );
    row("full ordered scan, warm: keys/s", &|r| kps(r.scan_warm_kps), "");
    row(
        "on disk after fill: MiB allocated (apparent)",
        &|r| format!("{} ({})", mib(r.size_fill.0), mib(r.size_fill.1)),
        "",
    );
    row(
        &format!("+{} M random overwrites, batches of {}: s (keys/s)", cfg.overwrites as f64 / 1e6, cfg.overwrite_batch),
        &|r| format!("{:.1} ({})", r.overwrite_s, kps(r.overwrite_kps)),
        "",
    );
    row(
        "on disk after the overwrites: MiB allocated (apparent)",
        &|r| format!("{} ({})", mib(r.size_after.0), mib(r.size_after.1)),
        "",
    );
    if !no_build {
        row(
            "clean `cargo build --release`, tiny bin using only it: s",
            &|r| r.build_s.map_or("failed".into(), |s| format!("{s:.1}")),
            "",
        );
    }
    println!(
        "\nkeys scanned after fill: {}",
        es.iter().map(|e| format!("{}={}", e.kind.name(), e.r.scanned)).collect::<Vec<_>>().join(", ")
    );
}
