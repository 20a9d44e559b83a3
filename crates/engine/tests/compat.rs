//! The on-disk format is kept: a small pool written by format 1 is checked
//! in as `tests/fixtures/pool-v1.tar.gz` and must open, read and verify in
//! every later version (decision 016; redb's backward-compatibility test is
//! the model). It holds one of everything the format stores: LUNs, data,
//! trimmed ranges, snapshots, a group snapshot, a clone with a split half
//! done, a range clone, igroups and maps, and the access mode.
//!
//! `fixtures/pool-v1.json` is its manifest, written with it: every export's
//! size and content hash and the catalog as this version listed it. A later
//! version that reads anything differently fails here.
//!
//! To write the fixture again (only when a *new* format version is added,
//! as a new file beside the old ones, never replacing them):
//! `BLOCKFORK_WRITE_FIXTURE=1 cargo test -p engine --test compat`.

use engine::{Engine, EngineConfig, Member, RangeEntry, SplitPhase};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

fn config() -> EngineConfig {
    EngineConfig {
        background: false,
        ..EngineConfig::default()
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Block `b` of write generation `g`: a recognisable pattern.
fn pattern(g: u8, blocks: std::ops::Range<u64>) -> Vec<u8> {
    let mut v = Vec::new();
    for b in blocks {
        let mut block = vec![g.wrapping_mul(31).wrapping_add(b as u8); 4096];
        block[..8].copy_from_slice(&b.to_le_bytes());
        block[8] = g;
        v.extend_from_slice(&block);
    }
    v
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Writes the fixture's content into a new pool in `dir`.
fn build(dir: &Path) {
    let e = Engine::open_dir(dir, Some(16 * MIB), config()).unwrap();
    e.create_lun("vm", 2 * MIB).unwrap();
    let vm = e.resolve("vm").unwrap();
    e.write(vm, 0, &pattern(1, 0..64), false).unwrap();
    e.create_snapshot("vm", "base").unwrap();
    e.write(vm, 0, &pattern(2, 0..16), false).unwrap();
    e.trim(vm, 32 * 4096, 16 * 4096, false).unwrap();
    // A partial block at the edge of a write (read-modify-write path).
    e.write(vm, 100 * 4096 + 512, &[0x77; 1024], false).unwrap();
    e.create_snapshot("vm", "after").unwrap();
    e.create_lun("db", MIB).unwrap();
    let db = e.resolve("db").unwrap();
    e.write(db, 512 * KIB, &pattern(3, 0..32), false).unwrap();
    e.create_group_snapshot("nightly", &["vm".to_string(), "db".to_string()])
        .unwrap();
    // A clone, its own writes, and a split that has done one batch of two.
    e.create_clones("vm@base", &["vm-clone".to_string()], false)
        .unwrap();
    let clone = e.resolve("vm-clone").unwrap();
    e.write(clone, 8 * 4096, &pattern(4, 8..12), false).unwrap();
    e.start_split("vm-clone").unwrap();
    e.run_split_batch();
    // A range clone: db's blocks shared into a new LUN.
    e.create_lun("copy", MIB).unwrap();
    e.clone_ranges(
        "copy",
        &[RangeEntry {
            source: "db".into(),
            source_offset: 512 * KIB,
            target_offset: 0,
            length: 128 * KIB,
        }],
    )
    .unwrap();
    e.create_igroup("hosts", vec![Member::address("127.0.0.1/32").unwrap()])
        .unwrap();
    e.map_lun("db", "hosts").unwrap();
    e.flush().unwrap();
    e.check_invariants().unwrap();
    e.close().unwrap();
}

/// What a reader of the pool sees: every export's size and hash, and the
/// catalog as the listing calls report it (times left out: they are when
/// the fixture was written, checked only for being kept).
fn manifest(e: &Arc<Engine>) -> Value {
    let mut exports = serde_json::Map::new();
    let mut names = Vec::new();
    for l in e.list_luns("").unwrap() {
        names.push(l.name.clone());
        for s in e.list_snapshots(Some(&l.name)).unwrap() {
            names.push(format!("{}@{}", l.name, s.name));
        }
    }
    for name in &names {
        let t = e.resolve(name).unwrap();
        let size = e.target_size(t).unwrap();
        let mut buf = vec![0u8; size as usize];
        for (i, chunk) in buf.chunks_mut(MIB as usize).enumerate() {
            e.read(t, i as u64 * MIB, chunk).unwrap();
        }
        exports.insert(name.clone(), json!({ "size": size, "fnv1a": fnv(&buf) }));
    }
    let luns: Vec<Value> = e
        .list_luns("")
        .unwrap()
        .into_iter()
        .map(|l| {
            json!({
                "name": l.name, "size": l.size_bytes, "allocated": l.allocated_bytes,
                "snapshots": l.snapshot_count, "parent": l.parent, "clones": l.clones,
                "maps": l.maps, "created_kept": l.created > 0,
            })
        })
        .collect();
    let snapshots: Vec<Value> = e
        .list_snapshots(None)
        .unwrap()
        .into_iter()
        .map(|s| {
            json!({
                "lun": s.lun, "name": s.name, "size": s.size_bytes,
                "exclusive": s.exclusive_bytes, "group": s.group, "clones": s.clones,
            })
        })
        .collect();
    let splits: Vec<Value> = e
        .list_splits("")
        .unwrap()
        .into_iter()
        .map(|s| json!({ "lun": s.lun, "state": s.state, "copied": s.copied_bytes, "total": s.total_bytes }))
        .collect();
    let igroups: Vec<Value> = e
        .list_igroups()
        .unwrap()
        .into_iter()
        .map(|g| serde_json::to_value(g).unwrap())
        .collect();
    let pool = e.pool_status().unwrap();
    json!({
        "format": 1,
        "exports": exports,
        "luns": luns,
        "snapshots": snapshots,
        "groups": e.list_group_snapshots().unwrap().iter().map(|g| g.name.clone()).collect::<Vec<_>>(),
        "splits": splits,
        "igroups": igroups,
        "access_open": e.access_open(),
        "capacity": pool.capacity_bytes,
        "used": pool.used_bytes,
    })
}

fn extract(archive: &Path, into: &Path) {
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_format_1_fixture_opens_reads_and_verifies() {
    let (archive, wanted) = (
        fixtures().join("pool-v1.tar.gz"),
        fixtures().join("pool-v1.json"),
    );
    if std::env::var_os("BLOCKFORK_WRITE_FIXTURE").is_some() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pool");
        build(&dir);
        let e = Engine::open_dir(&dir, None, config()).unwrap();
        let m = manifest(&e);
        e.close().unwrap();
        std::fs::write(&wanted, serde_json::to_string_pretty(&m).unwrap() + "\n").unwrap();
        let out = Command::new("tar")
            .args([
                "--sparse",
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
            ])
            .args(["--mtime=2026-12-04 00:00Z", "-czf"])
            .arg(&archive)
            .arg("-C")
            .arg(tmp.path())
            .arg("pool")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wanted: Value = serde_json::from_str(&std::fs::read_to_string(&wanted).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    extract(&archive, tmp.path());
    let dir = tmp.path().join("pool");

    let e = Engine::open_dir(&dir, None, config()).expect("a format 1 pool opens");
    e.check_invariants().unwrap();
    assert_eq!(manifest(&e), wanted, "the format 1 pool reads differently");
    // Anchors independent of the manifest: known bytes at known places.
    let mut b = vec![0u8; 4096];
    e.read(e.resolve("vm@base").unwrap(), 5 * 4096, &mut b)
        .unwrap();
    assert_eq!(b, pattern(1, 5..6));
    e.read(e.resolve("vm").unwrap(), 5 * 4096, &mut b).unwrap();
    assert_eq!(b, pattern(2, 5..6));
    e.read(e.resolve("vm").unwrap(), 40 * 4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0), "trimmed");
    e.read(e.resolve("copy").unwrap(), 0, &mut b).unwrap();
    assert_eq!(b, pattern(3, 0..1));

    // And it keeps working: written, committed, reopened, split finished.
    e.write(e.resolve("vm").unwrap(), 0, &pattern(9, 0..4), true)
        .unwrap();
    while e.split_status("vm-clone").unwrap().state == SplitPhase::Running {
        e.run_split_batch();
    }
    e.close().unwrap();
    drop(e);
    let e = Engine::open_dir(&dir, None, config()).unwrap();
    e.check_invariants().unwrap();
    let mut b = vec![0u8; 4 * 4096];
    e.read(e.resolve("vm").unwrap(), 0, &mut b).unwrap();
    assert_eq!(b, pattern(9, 0..4));
    assert_eq!(
        e.split_status("vm-clone").unwrap().state,
        SplitPhase::Independent
    );
    assert_eq!(e.lun_info("vm-clone").unwrap().parent, None);
    e.close().unwrap();
}

#[test]
fn a_pool_of_an_unknown_format_is_refused_clearly_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let e = Engine::open_dir(&dir, Some(16 * MIB), config()).unwrap();
    e.create_lun("keep", MIB).unwrap();
    e.close().unwrap();
    drop(e);
    for (format, says) in [(3u64, "newer"), (0, "not supported")] {
        set_format(&dir, format);
        let err = match Engine::open_dir(&dir, None, config()) {
            Ok(_) => panic!("format {format} opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("format {format}")) && err.contains(says),
            "{err}"
        );
    }
    // Nothing was changed by the refusals: back at format 1, it opens.
    set_format(&dir, 1);
    let e = Engine::open_dir(&dir, None, config()).unwrap();
    assert_eq!(e.lun_info("keep").unwrap().size_bytes, MIB);
    e.close().unwrap();
}

/// Rewrites the pool record's format number, as a future version would.
fn set_format(dir: &Path, format: u64) {
    use engine::io::{FjallStore, MetaStore};
    let mut store = FjallStore::open(&dir.join("meta")).unwrap();
    let mut record = None;
    store
        .for_each(&mut |k, v| {
            if k == b"P" {
                record = Some(serde_json::from_slice::<Value>(v).unwrap());
            }
            Ok(())
        })
        .unwrap();
    let mut record = record.expect("a pool record");
    record["format"] = json!(format);
    store
        .commit(&[(b"P".to_vec(), Some(serde_json::to_vec(&record).unwrap()))])
        .unwrap();
    store.close().unwrap();
}
