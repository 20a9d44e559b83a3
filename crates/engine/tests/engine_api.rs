//! Targeted tests of the engine on real files (redb + a data file): every
//! bad input is refused and changes nothing, ENOSPC behaves, restarts keep
//! what was flushed, concurrent sub-block writes do not lose updates.

use engine::{
    Allocation, Engine, EngineConfig, Error, Target, BLOCK_SIZE, POOL_CAPACITY_MAX_BYTES,
};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn open(dir: &std::path::Path, capacity: u64) -> Arc<Engine> {
    Engine::open_dir(dir, Some(capacity), EngineConfig::default()).expect("open pool")
}

/// Everything a bad request could change, to compare before and after.
fn fingerprint(e: &Engine) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}",
        e.list_luns("").unwrap(),
        e.list_snapshots(None).unwrap(),
        e.list_group_snapshots().unwrap(),
        e.pool_status().unwrap().used_bytes
    )
}

fn read_all(e: &Engine, export: &str) -> Vec<u8> {
    let t = e.resolve(export).unwrap();
    let mut buf = vec![0u8; e.target_size(t).unwrap() as usize];
    e.read(t, 0, &mut buf).unwrap();
    buf
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 64 * MIB);
    e.create_lun("vol0/db", 4 * MIB).unwrap();
    let t = e.resolve("vol0/db").unwrap();
    e.write(t, 0, &[7u8; 8192], false).unwrap();
    e.create_snapshot("vol0/db", "base").unwrap();
    e.create_group_snapshot("g", &["vol0/db".to_string()])
        .unwrap();
    let before = fingerprint(&e);

    let bad: Vec<(&str, Result<(), Error>)> = vec![
        ("empty name", e.create_lun("", MIB).map(drop)),
        ("bad char", e.create_lun("a b", MIB).map(drop)),
        ("dot segment", e.create_lun("a/../b", MIB).map(drop)),
        ("zero size", e.create_lun("x", 0).map(drop)),
        ("unaligned size", e.create_lun("x", 4097).map(drop)),
        ("too big", e.create_lun("x", (64 << 40) + 4096).map(drop)),
        ("duplicate", e.create_lun("vol0/db", MIB).map(drop)),
        ("unknown lun", e.lun_info("nope").map(drop)),
        (
            "shrink without flag",
            e.resize_lun("vol0/db", MIB, false).map(drop),
        ),
        ("resize unknown", e.resize_lun("nope", MIB, false).map(drop)),
        ("delete with snapshots", e.delete_lun("vol0/db", false)),
        ("delete group member", e.delete_lun("vol0/db", true)),
        ("delete unknown", e.delete_lun("nope", false)),
        (
            "duplicate snapshot",
            e.create_snapshot("vol0/db", "base").map(drop),
        ),
        (
            "bad snapshot name",
            e.create_snapshot("vol0/db", "a/b").map(drop),
        ),
        (
            "snapshot unknown lun",
            e.create_snapshot("nope", "s").map(drop),
        ),
        (
            "delete unknown snapshot",
            e.delete_snapshot("vol0/db", "nope"),
        ),
        (
            "delete group member snapshot",
            e.delete_snapshot("vol0/db", "g"),
        ),
        ("restore unknown", e.restore_snapshot("vol0/db", "nope")),
        (
            "group twice",
            e.create_group_snapshot("g", &["vol0/db".to_string()])
                .map(drop),
        ),
        ("empty group", e.create_group_snapshot("h", &[]).map(drop)),
        (
            "group unknown member",
            e.create_group_snapshot("h", &["nope".to_string()])
                .map(drop),
        ),
        (
            "group duplicate member",
            e.create_group_snapshot("h", &["vol0/db".into(), "vol0/db".into()])
                .map(drop),
        ),
        ("read past end", e.read(t, 4 * MIB - 10, &mut [0u8; 20])),
        (
            "read offset overflow",
            e.read(t, u64::MAX - 5, &mut [0u8; 20]),
        ),
        ("write past end", e.write(t, 4 * MIB, &[1u8; 1], false)),
        ("trim past end", e.trim(t, 0, 4 * MIB + 1, false)),
        (
            "zero past end",
            e.write_zeroes(t, u64::MAX, 2, false, false),
        ),
        ("oversized read", e.read(t, 0, &mut vec![0u8; 65 << 20])),
        ("status past end", e.block_status(t, 0, 5 * MIB).map(drop)),
        ("unknown export", e.resolve("vol0/db@nope").map(drop)),
        ("pool shrink", e.grow_pool(MIB).map(drop)),
        (
            "pool over the maximum",
            e.grow_pool(POOL_CAPACITY_MAX_BYTES + BLOCK_SIZE).map(drop),
        ),
        (
            "pool capacity near 2^64",
            e.grow_pool(u64::MAX - 4095).map(drop),
        ),
    ];
    for (what, result) in bad {
        let err = result.expect_err(what);
        assert!(!err.to_string().is_empty(), "{what}: empty message");
        assert!(
            !matches!(err, Error::PoolFailed(_) | Error::Io(_) | Error::Store(_)),
            "{what}: {err}"
        );
    }
    let snap = e.resolve("vol0/db@base").unwrap();
    assert!(matches!(
        e.write(snap, 0, &[0u8; 4096], false),
        Err(Error::ReadOnly(_))
    ));
    assert!(matches!(
        e.trim(snap, 0, 4096, false),
        Err(Error::ReadOnly(_))
    ));
    assert_eq!(
        fingerprint(&e),
        before,
        "a refused request changed the pool"
    );
    assert_eq!(&read_all(&e, "vol0/db")[..8192], &[7u8; 8192][..]);
    e.check_invariants().unwrap();
}

/// Growing the pool past what the file system under it holds (ext4: 16
/// TiB per file) is the caller's mistake, not an I/O failure of the pool
/// (which the API would answer with a 500); found by tests/fuzz_io.rs.
#[test]
fn growing_past_the_file_system_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 16 * MIB);
    e.create_lun("a", MIB).unwrap();
    let before = fingerprint(&e);
    match e.grow_pool(POOL_CAPACITY_MAX_BYTES) {
        // A file system with room for a 1 PiB sparse file (xfs, tmpfs).
        Ok(status) => assert_eq!(status.capacity_bytes, POOL_CAPACITY_MAX_BYTES),
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains("cannot hold"), "{msg}");
            assert_eq!(fingerprint(&e), before);
        }
        Err(other) => panic!("growing past the file system: {other:?}"),
    }
    e.check_invariants().unwrap();
}

/// An unaligned trim or write-zeroes rewrites both edge blocks; when the
/// pool has room for one of them only, the request must fail whole, not
/// zero one edge and then report ENOSPC (found by tests/fuzz_io.rs).
#[test]
fn a_zeroing_refused_for_space_changes_neither_edge() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 16 * BLOCK_SIZE);
    e.create_lun("a", MIB).unwrap();
    let t = e.resolve("a").unwrap();
    e.write(t, 0, &[5u8; 8192], false).unwrap();
    // The snapshot shares both blocks: rewriting either needs a new block.
    e.create_snapshot("a", "s").unwrap();
    let free = e.pool_status().unwrap().free_bytes;
    e.write(
        t,
        64 * BLOCK_SIZE,
        &vec![1u8; (free - BLOCK_SIZE) as usize],
        false,
    )
    .unwrap();
    assert_eq!(e.pool_status().unwrap().free_bytes, BLOCK_SIZE);
    let before = fingerprint(&e);
    for no_hole in [false, true] {
        let err = e.write_zeroes(t, 100, 8000, no_hole, false).unwrap_err();
        assert!(matches!(err, Error::NoSpace(_)), "{err}");
        let err = e.trim(t, 100, 8000, false).unwrap_err();
        assert!(matches!(err, Error::NoSpace(_)), "{err}");
    }
    assert_eq!(fingerprint(&e), before);
    assert_eq!(&read_all(&e, "a")[..8192], &[5u8; 8192][..]);
    // One edge alone fits.
    e.trim(t, 100, 1000, false).unwrap();
    let data = read_all(&e, "a");
    assert!(data[100..1100].iter().all(|&x| x == 0));
    assert!(data[1100..8192].iter().all(|&x| x == 5));
    e.check_invariants().unwrap();
}

#[test]
fn full_pool_gives_enospc_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB pool, 1 MiB thin LUN: overcommitted.
    let e = open(dir.path(), 64 * BLOCK_SIZE);
    e.create_lun("big", MIB).unwrap();
    let t = e.resolve("big").unwrap();
    let mut written = 0u64;
    let err = loop {
        let block = vec![(written / BLOCK_SIZE) as u8 + 1; BLOCK_SIZE as usize];
        match e.write(t, written, &block, false) {
            Ok(()) => written += BLOCK_SIZE,
            Err(err) => break err,
        }
        assert!(written <= MIB);
    };
    assert!(matches!(err, Error::NoSpace(_)), "{err}");
    assert_eq!(written, 64 * BLOCK_SIZE);
    // A write that needs space fails again; an in-place overwrite works.
    assert!(matches!(
        e.write(t, written, &[1u8; 4096], false),
        Err(Error::NoSpace(_))
    ));
    e.write(t, 0, &[0xaa; 4096], false).unwrap();
    // A snapshot makes overwrites need space: they fail, the data stays.
    e.create_snapshot("big", "s").unwrap();
    assert!(matches!(
        e.write(t, 4096, &[0xbb; 4096], false),
        Err(Error::NoSpace(_))
    ));
    let data = read_all(&e, "big");
    assert_eq!(&data[..4096], &[0xaa; 4096][..]);
    for b in 1..64usize {
        assert!(
            data[b * 4096..(b + 1) * 4096]
                .iter()
                .all(|&x| x == b as u8 + 1),
            "block {b} changed"
        );
    }
    // Deleting the snapshot and trimming frees space: writes succeed again.
    e.delete_snapshot("big", "s").unwrap();
    e.trim(t, 0, 8 * BLOCK_SIZE, false).unwrap();
    e.flush().unwrap();
    e.write(t, written, &vec![9u8; 8 * BLOCK_SIZE as usize], false)
        .unwrap();
    // LUN delete frees everything.
    e.delete_lun("big", false).unwrap();
    e.flush().unwrap();
    assert_eq!(e.pool_status().unwrap().used_bytes, 0);
    e.check_invariants().unwrap();
}

#[test]
fn restart_keeps_flushed_data_and_snapshots_and_the_lock_holds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path(), 16 * MIB);
        let second = Engine::open_dir(dir.path(), None, EngineConfig::default());
        let msg = second
            .err()
            .expect("a second engine on the same directory must fail")
            .to_string();
        assert!(msg.contains("in use"), "{msg}");
        e.create_lun("a", 2 * MIB).unwrap();
        let t = e.resolve("a").unwrap();
        e.write(t, 100, b"hello, blockfork", false).unwrap();
        e.create_snapshot("a", "one").unwrap();
        e.write(t, 100, b"HELLO", true).unwrap();
        e.close().unwrap();
    }
    let e = open(dir.path(), 0);
    let now = read_all(&e, "a");
    assert_eq!(&now[100..116], b"HELLO, blockfork");
    let then = read_all(&e, "a@one");
    assert_eq!(&then[100..116], b"hello, blockfork");
    assert_eq!(
        e.pool_status().unwrap().capacity_bytes,
        16 * MIB,
        "capacity is fixed at creation"
    );
    e.check_invariants().unwrap();
}

#[test]
fn concurrent_sub_block_writes_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 16 * MIB);
    e.create_lun("a", MIB).unwrap();
    let t = e.resolve("a").unwrap();
    // Eight writers each own one 512-byte sector of the same block; a
    // snapshot now and then forces redirect-on-write under them.
    let rounds = 300u32;
    std::thread::scope(|s| {
        for w in 0..8u64 {
            let e = &e;
            s.spawn(move || {
                for r in 0..rounds {
                    let v = vec![(w as u8) << 4 | (r % 16) as u8; 512];
                    e.write(t, w * 512, &v, false).unwrap();
                }
            });
        }
        s.spawn(|| {
            for i in 0..20 {
                e.create_snapshot("a", &format!("s{i}")).unwrap();
            }
        });
    });
    let data = read_all(&e, "a");
    for w in 0..8usize {
        let want = (w as u8) << 4 | ((rounds - 1) % 16) as u8;
        assert!(
            data[w * 512..(w + 1) * 512].iter().all(|&x| x == want),
            "sector {w} lost an update"
        );
    }
    e.check_invariants().unwrap();
}

#[test]
fn block_status_write_zeroes_and_trim() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 16 * MIB);
    e.create_lun("a", MIB).unwrap();
    let t = e.resolve("a").unwrap();
    assert_eq!(
        e.block_status(t, 0, MIB).unwrap(),
        vec![(MIB, Allocation::Hole)]
    );
    e.write(t, 8192, &[1u8; 8192], false).unwrap();
    e.write_zeroes(t, 65536, 4096, true, false).unwrap();
    let used = e.pool_status().unwrap().used_bytes;
    assert_eq!(used, 8192, "write-zeroes must not allocate data");
    assert_eq!(
        e.block_status(t, 0, MIB).unwrap(),
        vec![
            (8192, Allocation::Hole),
            (8192, Allocation::Data),
            (65536 - 16384, Allocation::Hole),
            (4096, Allocation::Zero),
            (MIB - 65536 - 4096, Allocation::Hole)
        ]
    );
    // Unaligned trim: the whole blocks are unmapped, the edges zeroed.
    e.trim(t, 8192 + 100, 8192 - 200, false).unwrap();
    let data = read_all(&e, "a");
    assert!(data[8192..8292].iter().all(|&x| x == 1));
    assert!(data[8292..16284].iter().all(|&x| x == 0));
    assert!(data[16284..16384].iter().all(|&x| x == 1));
    e.check_invariants().unwrap();
}

#[test]
fn snapshot_is_constant_time_on_a_huge_lun_and_restore_keeps_newer_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 64 * MIB);
    e.create_lun("huge", 64 << 40).unwrap();
    let t = e.resolve("huge").unwrap();
    e.write(t, 1 << 40, b"v1", false).unwrap();
    e.create_snapshot("huge", "one").unwrap();
    e.write(t, 1 << 40, b"v2", false).unwrap();
    e.create_snapshot("huge", "two").unwrap();
    e.restore_snapshot("huge", "one").unwrap();
    let mut b = [0u8; 2];
    e.read(t, 1 << 40, &mut b).unwrap();
    assert_eq!(&b, b"v1");
    e.read(e.resolve("huge@two").unwrap(), 1 << 40, &mut b)
        .unwrap();
    assert_eq!(&b, b"v2");
    e.write(t, 1 << 40, b"v3", false).unwrap();
    e.read(e.resolve("huge@one").unwrap(), 1 << 40, &mut b)
        .unwrap();
    assert_eq!(&b, b"v1");
    let snaps = e.list_snapshots(Some("huge")).unwrap();
    assert_eq!(snaps.len(), 2);
    assert!(matches!(
        e.target_size(Target::Lun(engine::LunId(9999))),
        Err(Error::NotFound { .. })
    ));
    e.check_invariants().unwrap();
}

#[test]
fn a_split_waits_for_space_loses_nothing_and_finishes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open_dir(
        dir.path(),
        Some(96 * BLOCK_SIZE),
        EngineConfig {
            background: false,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    e.create_lun("gold", 32 * BLOCK_SIZE).unwrap();
    let gold = e.resolve("gold").unwrap();
    let pattern: Vec<u8> = (0..32 * BLOCK_SIZE as usize)
        .map(|i| (i / 4096) as u8 + 1)
        .collect();
    e.write(gold, 0, &pattern, false).unwrap();
    e.create_snapshot("gold", "s").unwrap();
    e.create_lun("filler", 64 * BLOCK_SIZE).unwrap();
    let filler = e.resolve("filler").unwrap();
    e.write(filler, 0, &vec![9u8; 60 * BLOCK_SIZE as usize], false)
        .unwrap();
    // 4 blocks free; the split needs 32.
    e.create_clones("gold@s", &["vm".to_string()], true)
        .unwrap();
    let vm = e.resolve("vm").unwrap();
    e.write(vm, 0, &[0xee; 4096], false).unwrap();
    assert_eq!(e.run_split_batch(), engine::SplitStep::Waiting);
    let st = e.split_status("vm").unwrap();
    assert_eq!(st.state, engine::SplitPhase::WaitingForSpace, "{st:?}");
    assert!(
        st.message.as_deref().unwrap_or("").contains("pool is full"),
        "{st:?}"
    );
    // Deleting the snapshot now only hides it: the clone still reads it.
    e.delete_snapshot("gold", "s").unwrap();
    assert!(e.list_snapshots(Some("gold")).unwrap().is_empty());
    assert!(e
        .lun_info("vm")
        .unwrap()
        .parent
        .unwrap()
        .ends_with("(deleted)"));
    // Free space: the split resumes and finishes.
    e.delete_lun("filler", false).unwrap();
    e.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    for _ in 0..100 {
        e.run_split_batch();
        if e.split_status("vm").unwrap().state == engine::SplitPhase::Done {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        e.split_status("vm").unwrap().state,
        engine::SplitPhase::Done
    );
    let mut got = vec![0u8; pattern.len()];
    e.read(vm, 0, &mut got).unwrap();
    assert_eq!(&got[..4096], &[0xee; 4096][..]);
    assert_eq!(&got[4096..], &pattern[4096..]);
    // The hidden snapshot went with the last dependent: gold is deletable,
    // and the clone keeps its content.
    e.run_jobs();
    e.delete_lun("gold", false).unwrap();
    e.read(vm, 0, &mut got).unwrap();
    assert_eq!(&got[4096..], &pattern[4096..]);
    e.check_invariants().unwrap();
}

fn range(source: &str, so: u64, to: u64, len: u64) -> engine::RangeEntry {
    engine::RangeEntry {
        source: source.into(),
        source_offset: so,
        target_offset: to,
        length: len,
    }
}

#[test]
fn range_clone_bad_inputs_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 64 * MIB);
    e.create_lun("a", 4 * MIB).unwrap();
    e.create_lun("b", MIB).unwrap();
    let t = e.resolve("a").unwrap();
    e.write(t, 0, &[7u8; 65536], false).unwrap();
    e.create_snapshot("a", "s").unwrap();
    let before = fingerprint(&e);
    let b_before = read_all(&e, "b");
    let cases: Vec<(&str, Vec<engine::RangeEntry>)> = vec![
        ("no ranges", vec![]),
        ("unaligned offset", vec![range("a", 512, 0, 4096)]),
        ("unaligned length", vec![range("a", 0, 0, 4000)]),
        ("zero length", vec![range("a", 0, 0, 0)]),
        ("past source end", vec![range("a", 4 * MIB - 4096, 0, 8192)]),
        ("past target end", vec![range("a", 0, MIB - 4096, 8192)]),
        ("overflow", vec![range("a", u64::MAX - 4095, 0, 4096)]),
        ("unknown source", vec![range("nope", 0, 0, 4096)]),
        ("unknown snapshot", vec![range("a@nope", 0, 0, 4096)]),
        (
            "overlapping targets",
            vec![range("a", 0, 0, 8192), range("a", 0, 4096, 4096)],
        ),
        // A valid entry first: the bad second one must undo nothing.
        (
            "second entry bad",
            vec![range("a", 0, 0, 4096), range("a", 0, 4096, 1)],
        ),
    ];
    for (what, entries) in cases {
        let r = e.clone_ranges("b", &entries);
        assert!(r.is_err(), "{what}: accepted");
        assert_eq!(fingerprint(&e), before, "{what}: state changed");
        assert_eq!(read_all(&e, "b"), b_before, "{what}: content changed");
    }
    assert!(e.clone_ranges("nope", &[range("a", 0, 0, 4096)]).is_err());
    assert!(matches!(
        e.clone_ranges("a@s", &[range("a", 0, 0, 4096)]),
        Err(Error::ReadOnly(_))
    ));
    // Onto itself: reading what another range writes is refused, disjoint
    // ranges are fine.
    assert!(matches!(
        e.clone_ranges("a", &[range("a", 0, 4096, 8192)]),
        Err(Error::InvalidArgument(_))
    ));
    let used = e.pool_status().unwrap().used_bytes;
    e.clone_ranges("a", &[range("a", 0, MIB, 65536)]).unwrap();
    assert_eq!(
        e.pool_status().unwrap().used_bytes,
        used,
        "a range clone within a LUN uses no space"
    );
    assert_eq!(read_all(&e, "a")[MIB as usize..][..65536], [7u8; 65536]);
}

#[test]
fn range_clone_shares_blocks_and_both_sides_stay_independent() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 256 * MIB);
    e.create_lun("src", 64 * MIB).unwrap();
    e.create_lun("dst", 64 * MIB).unwrap();
    let src = e.resolve("src").unwrap();
    let data: Vec<u8> = (0..32 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    e.write(src, 0, &data, false).unwrap();
    e.create_snapshot("src", "s").unwrap();
    e.write(src, 0, &[1u8; 4096], false).unwrap();
    let used = e.pool_status().unwrap().used_bytes;
    // 32 MiB from the snapshot, in one call, twice over.
    let r = e
        .clone_ranges(
            "dst",
            &[
                range("src@s", 0, 0, 16 * MIB),
                range("src@s", 16 * MIB, 32 * MIB, 16 * MIB),
            ],
        )
        .unwrap();
    assert_eq!((r.ranges, r.bytes, r.shared_bytes), (2, 32 * MIB, 32 * MIB));
    assert!(
        r.extents <= 4,
        "{} extents for 2 sequential ranges",
        r.extents
    );
    assert_eq!(e.pool_status().unwrap().used_bytes, used, "no data copied");
    let dst = e.resolve("dst").unwrap();
    let mut got = vec![0u8; (16 * MIB) as usize];
    e.read(dst, 0, &mut got).unwrap();
    assert!(got == data[..(16 * MIB) as usize]);
    e.read(dst, 32 * MIB, &mut got).unwrap();
    assert!(got == data[(16 * MIB) as usize..]);
    // Writes on either side stay on that side.
    e.write(dst, 4096, &[2u8; 4096], false).unwrap();
    e.write(src, 8192, &[3u8; 4096], false).unwrap();
    let mut b = vec![0u8; 4096];
    e.read(src, 4096, &mut b).unwrap();
    assert!(b[..] == data[4096..8192]);
    e.read(dst, 8192, &mut b).unwrap();
    assert!(b[..] == data[8192..12288]);
    // Deleting the source LUN and its snapshot keeps the target's data.
    e.delete_lun("src", true).unwrap();
    e.run_jobs();
    e.read(dst, 32 * MIB, &mut got).unwrap();
    assert!(got == data[(16 * MIB) as usize..]);
    e.check_invariants().unwrap();
    drop(e);
    let e = open(dir.path(), 256 * MIB);
    e.check_invariants().unwrap();
    let dst = e.resolve("dst").unwrap();
    e.read(dst, 32 * MIB, &mut got).unwrap();
    assert!(got == data[(16 * MIB) as usize..], "after a restart");
    e.delete_lun("dst", false).unwrap();
    e.flush().unwrap();
    assert_eq!(e.pool_status().unwrap().used_bytes, 0);
}

#[test]
fn igroups_and_maps_decide_visibility_and_survive_restart() {
    use engine::{ClientIdentity, Member};
    let dir = tempfile::tempdir().unwrap();
    let who = |a: &str, cn: Option<&str>| ClientIdentity {
        addr: Some(a.parse().unwrap()),
        cert_cn: cn.map(str::to_string),
    };
    let (a, b) = (who("10.0.0.5", None), who("192.0.2.7", Some("host-b")));
    {
        let e = open(dir.path(), 64 * MIB);
        assert_eq!(
            e.pool_status().unwrap().access,
            "closed",
            "closed by default"
        );
        e.create_lun("db", MIB).unwrap();
        e.create_lun("web", MIB).unwrap();
        e.create_snapshot("db", "s").unwrap();
        assert!(
            e.luns_visible_to(&a).is_empty(),
            "closed pool: nothing unmapped"
        );
        let before = fingerprint(&e);
        let gen = e.access_generation();
        for (what, r) in [
            ("bad name", e.create_igroup("a/b", vec![]).map(drop)),
            ("map unknown igroup", e.map_lun("db", "nope")),
            ("map unknown LUN", e.map_lun("nope", "nope")),
            ("unmap not mapped", e.unmap_lun("db", "nope")),
            ("delete unknown", e.delete_igroup("nope")),
            (
                "add to unknown",
                e.igroup_add("nope", Member::address("10.0.0.0/8").unwrap())
                    .map(drop),
            ),
        ] {
            assert!(r.is_err(), "{what}: accepted");
        }
        assert_eq!(fingerprint(&e), before);
        assert_eq!(e.access_generation(), gen, "failed calls change nothing");
        e.create_igroup("app", vec![Member::address("10.0.0.0/24").unwrap()])
            .unwrap();
        e.create_igroup("bee", vec![Member::cert_cn("host-b").unwrap()])
            .unwrap();
        assert!(e.create_igroup("app", vec![]).is_err(), "duplicate");
        e.map_lun("db", "app").unwrap();
        assert!(e.map_lun("db", "app").is_err(), "mapped twice");
        assert!(e.access_generation() > gen);
        assert_eq!(e.luns_visible_to(&a), vec!["db"]);
        assert!(e.visible_to("db@s", &a), "snapshots follow their LUN");
        assert!(!e.visible_to("db", &b));
        assert!(matches!(
            e.delete_igroup("app"),
            Err(Error::HasDependents(_))
        ));
        e.igroup_add("app", Member::cert_cn("host-b").unwrap())
            .unwrap();
        assert!(e.visible_to("db", &b));
        e.igroup_remove("app", Member::cert_cn("host-b").unwrap())
            .unwrap();
        assert!(!e.visible_to("db", &b));
        e.set_access_open(true).unwrap();
        assert_eq!(
            e.luns_visible_to(&b),
            vec!["web"],
            "open: unmapped to all, mapped to their groups"
        );
        assert_eq!(e.lun_info("db").unwrap().maps, vec!["app"]);
        assert_eq!(e.igroup_info("app").unwrap().luns, vec!["db"]);
    }
    let e = open(dir.path(), 64 * MIB);
    assert_eq!(e.pool_status().unwrap().access, "open");
    assert_eq!(e.luns_visible_to(&a), vec!["db", "web"]);
    assert_eq!(e.igroup_info("app").unwrap().addresses, vec!["10.0.0.0/24"]);
    e.unmap_lun("db", "app").unwrap();
    e.delete_igroup("app").unwrap();
    e.delete_lun("web", false).unwrap();
    assert_eq!(e.list_igroups().unwrap().len(), 1);
}

#[test]
fn zero_blocks_are_recorded_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 64 * MIB);
    e.create_lun("a", 8 * MIB).unwrap();
    let t = e.resolve("a").unwrap();
    e.write(t, 0, &vec![0u8; (4 * MIB) as usize], false)
        .unwrap();
    assert_eq!(
        e.pool_status().unwrap().used_bytes,
        0,
        "zeros take no space"
    );
    assert_eq!(
        e.block_status(t, 0, 4 * MIB).unwrap(),
        vec![(4 * MIB, Allocation::Zero)]
    );
    // Data with a zero block in the middle: only the data takes space.
    let mut d = vec![9u8; 3 * 4096];
    d[4096..8192].fill(0);
    e.write(t, 0, &d, false).unwrap();
    assert_eq!(e.pool_status().unwrap().used_bytes, 2 * 4096);
    assert_eq!(read_all(&e, "a")[..3 * 4096], d[..]);
    // Zeros over data seen by a snapshot and by a clone: both keep the data.
    e.create_snapshot("a", "s").unwrap();
    e.create_clones("a@s", &["c".to_string()], false).unwrap();
    e.write(t, 0, &[0u8; 4096], false).unwrap();
    let c = e.resolve("c").unwrap();
    e.write(c, 8192, &[0u8; 4096], false).unwrap();
    assert_eq!(read_all(&e, "a")[..4096], [0u8; 4096]);
    assert_eq!(read_all(&e, "a@s")[..4096], [9u8; 4096]);
    assert_eq!(read_all(&e, "c")[..4096], [9u8; 4096]);
    assert_eq!(
        read_all(&e, "c")[8192..12288],
        [0u8; 4096],
        "the clone hides its parent"
    );
    e.check_invariants().unwrap();
}

/// The data file's bulk copy writes around the page cache (O_DIRECT):
/// pages of the destination cached before the copy must not be read after
/// it, on the way in or after a reopen. Chunked (longer than one scratch
/// buffer) and unaligned (buffered) copies too.
#[test]
fn data_file_copy_reads_back_through_the_page_cache_and_after_reopen() {
    use engine::io::{DataFile, FileData, COPY_CHUNK_BYTES_MAX};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let len = COPY_CHUNK_BYTES_MAX + 3 * BLOCK_SIZE;
    let (src, dst) = (0, 2 * len);
    let data = FileData::open(&path, 4 * len + MIB).unwrap();
    let new: Vec<u8> = (0..len as usize).map(|i| (i % 251) as u8).collect();
    data.write_at(&new, src).unwrap();
    // The destination's old content, cached and also on disk.
    data.write_at(&vec![0x11; len as usize], dst).unwrap();
    data.sync().unwrap();
    let mut got = vec![0u8; len as usize];
    data.read_at(&mut got, dst).unwrap();
    assert!(got.iter().all(|&b| b == 0x11));
    data.copy(src, dst, len).unwrap();
    data.read_at(&mut got, dst).unwrap();
    assert!(got == new, "the copy reads back through the page cache");
    // Unaligned: the buffered path.
    let odd = 3 * len + 512;
    data.copy(src + 100, odd, 5000).unwrap();
    let mut small = vec![0u8; 5000];
    data.read_at(&mut small, odd).unwrap();
    assert_eq!(small, new[100..5100]);
    data.sync().unwrap();
    drop(data);
    let data = FileData::open(&path, 4 * len + MIB).unwrap();
    data.read_at(&mut got, dst).unwrap();
    assert!(got == new, "the copy reads back after a reopen");
}

/// A split whose copies land on blocks a deleted LUN used (and left in the
/// page cache) reads back the parent's data, before and after a reopen.
#[test]
fn a_split_over_reused_cached_blocks_reads_back_before_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        background: false,
        ..EngineConfig::default()
    };
    let size = 3 * MIB + 5 * BLOCK_SIZE;
    let e = Engine::open_dir(dir.path(), Some(16 * MIB), config.clone()).unwrap();
    e.create_lun("gold", size).unwrap();
    let gold = e.resolve("gold").unwrap();
    let pattern: Vec<u8> = (0..size as usize).map(|i| (i % 253) as u8).collect();
    e.write(gold, 0, &pattern, false).unwrap();
    e.create_snapshot("gold", "s").unwrap();
    e.create_lun("old", size).unwrap();
    let old = e.resolve("old").unwrap();
    e.write(old, 0, &vec![0x77; size as usize], false).unwrap();
    assert!(read_all(&e, "old").iter().all(|&b| b == 0x77));
    e.delete_lun("old", false).unwrap();
    e.flush().unwrap();
    e.run_jobs();
    e.flush().unwrap();
    e.create_clones("gold@s", &["vm".to_string()], true)
        .unwrap();
    e.set_split_rate(0);
    for _ in 0..1000 {
        e.run_split_batch();
        if e.split_status("vm").unwrap().state == engine::SplitPhase::Done {
            break;
        }
    }
    assert_eq!(
        e.split_status("vm").unwrap().state,
        engine::SplitPhase::Done
    );
    assert!(read_all(&e, "vm") == pattern);
    e.close().unwrap();
    drop(e);
    let e = Engine::open_dir(dir.path(), None, config).unwrap();
    assert!(read_all(&e, "vm") == pattern);
    assert!(read_all(&e, "gold@s") == pattern);
    e.check_invariants().unwrap();
}

#[test]
fn list_exports_names_every_lun_and_visible_snapshot_with_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), 64 << 20);
    e.create_lun("b", 2 << 20).unwrap();
    e.create_lun("a", 1 << 20).unwrap();
    e.create_snapshot("a", "s1").unwrap();
    e.resize_lun("a", 3 << 20, false).unwrap();
    e.create_snapshot("a", "s2").unwrap();
    e.create_snapshot("b", "gone").unwrap();
    e.delete_snapshot("b", "gone").unwrap();
    let listed: Vec<(String, u64)> = e
        .list_exports()
        .unwrap()
        .into_iter()
        .map(|x| (x.name(), x.size_bytes))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a".to_string(), 3 << 20),
            ("a@s1".to_string(), 1 << 20),
            ("a@s2".to_string(), 3 << 20),
            ("b".to_string(), 2 << 20),
        ]
    );
    // The same names and sizes as the listings that also report space.
    let mut slow: Vec<(String, u64)> = Vec::new();
    for l in e.list_luns("").unwrap() {
        slow.push((l.name.clone(), l.size_bytes));
        for s in e.list_snapshots(Some(&l.name)).unwrap() {
            slow.push((format!("{}@{}", s.lun, s.name), s.size_bytes));
        }
    }
    assert_eq!(listed, slow);
}
