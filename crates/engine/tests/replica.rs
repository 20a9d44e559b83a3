//! What mirroring needs of the engine (decision 024): snapshot differences
//! found from epochs, applied to a replica in another pool, reproduce every
//! snapshot byte for byte, flattened or as a clone; a replica's readers see
//! only complete transfers; holds keep snapshots; break and make_replica.

use engine::{
    DiffKind, Engine, EngineConfig, Error, ReplicaSnapshot, BLOCK_SIZE, DIFF_EXTENTS_MAX,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const BS: usize = BLOCK_SIZE as usize;

fn open(dir: &std::path::Path) -> Arc<Engine> {
    let config = EngineConfig {
        split_rate_bytes: 0,
        background: false,
        ..Default::default()
    };
    Engine::open_dir(dir, Some(256 << 20), config).expect("open pool")
}

/// An export's content, as its size and a hash per block (a mismatch
/// prints something a person can read).
fn read_all(e: &Engine, export: &str) -> Vec<u64> {
    let t = e.resolve(export).unwrap();
    let mut buf = vec![0u8; e.target_size(t).unwrap() as usize];
    if !buf.is_empty() {
        e.read(t, 0, &mut buf).unwrap();
    }
    buf.chunks(BS)
        .map(|b| {
            b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
                (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
            })
        })
        .collect()
}

fn blocks_of(byte: u8, n: usize) -> Vec<u64> {
    vec![byte; n * BS]
        .chunks(BS)
        .map(|b| {
            b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
                (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
            })
        })
        .collect()
}

/// Sends `lun`'s change from `base` to `target` of `src` into replica
/// `dest` of `dst`, as the mirror does, and completes it. Returns the
/// blocks of data that travelled.
fn transfer(
    src: &Engine,
    lun: &str,
    base: Option<&str>,
    target: &str,
    flatten: bool,
    dst: &Engine,
    dest: &str,
) -> u64 {
    // The changed-pages walk finds exactly what a walk of every extent
    // finds.
    let walk = |full: bool| {
        engine::FULL_WALK.store(full, std::sync::atomic::Ordering::Relaxed);
        let mut all: Vec<engine::DiffExtent> = Vec::new();
        let mut from = 0;
        loop {
            let chunk = src
                .snapshot_diff(lun, base, Some(target), flatten, from, 5)
                .unwrap();
            for x in chunk.extents {
                match all.last_mut() {
                    Some(l) if l.kind == x.kind && l.lba + l.blocks == x.lba => {
                        l.blocks += x.blocks
                    }
                    _ => all.push(x),
                }
            }
            match chunk.next_block {
                Some(n) => from = n,
                None => break,
            }
        }
        engine::FULL_WALK.store(false, std::sync::atomic::Ordering::Relaxed);
        all
    };
    if base.is_some() {
        assert_eq!(walk(false), walk(true), "{lun} {base:?} -> {target}");
    }
    let t = src.resolve(&format!("{lun}@{target}")).unwrap();
    let into = dst.replica_target(dest).unwrap();
    let mut from = 0;
    let mut data_blocks = 0;
    let mut sized = false;
    loop {
        let chunk = src
            .snapshot_diff(lun, base, Some(target), flatten, from, 7)
            .unwrap();
        if !sized {
            dst.apply_size(into, chunk.size_blocks).unwrap();
            sized = true;
        }
        if std::env::var("DEBUG_DIFF").is_ok() {
            eprintln!("{lun} {base:?}->{target} flatten={flatten}: {chunk:?}");
        }
        for x in &chunk.extents {
            assert!(x.blocks > 0 && x.lba + x.blocks <= chunk.size_blocks);
            match x.kind {
                DiffKind::Data => {
                    let mut buf = vec![0u8; x.blocks as usize * BS];
                    src.read(t, x.lba * BLOCK_SIZE, &mut buf).unwrap();
                    dst.apply_data(into, x.lba, &buf).unwrap();
                    data_blocks += x.blocks;
                }
                kind => dst.apply_extent(into, x.lba, x.blocks, kind).unwrap(),
            }
        }
        match chunk.next_block {
            Some(n) => {
                assert!(n > from, "a diff makes progress");
                from = n;
            }
            None => break,
        }
    }
    let created = src
        .list_snapshots(Some(lun))
        .unwrap()
        .into_iter()
        .find(|s| s.name == target)
        .unwrap()
        .created;
    dst.publish_replica(
        &[ReplicaSnapshot {
            lun: dest.into(),
            snapshot: target.into(),
            created,
        }],
        None,
        "m1",
    )
    .unwrap();
    data_blocks
}

/// A random change to `lun`: writes (some of zeros), trims, write-zeroes,
/// a grow or a shrink now and then.
fn mutate(e: &Engine, lun: &str, rng: &mut StdRng) {
    let t = e.resolve(lun).unwrap();
    let blocks = e.target_size(t).unwrap() / BLOCK_SIZE;
    for _ in 0..rng.gen_range(1..12) {
        let lba = rng.gen_range(0..blocks);
        let n = rng.gen_range(1..=(blocks - lba).min(9));
        match rng.gen_range(0..10) {
            0 => e.trim(t, lba * BLOCK_SIZE, n * BLOCK_SIZE, false).unwrap(),
            1 => e
                .write_zeroes(t, lba * BLOCK_SIZE, n * BLOCK_SIZE, true, false)
                .unwrap(),
            2 => e
                .write(t, lba * BLOCK_SIZE, &vec![0u8; n as usize * BS], false)
                .unwrap(),
            _ => {
                let byte: u8 = rng.gen_range(1..=255);
                e.write(t, lba * BLOCK_SIZE, &vec![byte; n as usize * BS], false)
                    .unwrap()
            }
        }
    }
    if rng.gen_ratio(1, 8) {
        let size = rng.gen_range(24..72) * BLOCK_SIZE;
        e.resize_lun(lun, size, true).unwrap();
    }
}

#[test]
fn incrementals_reproduce_every_snapshot() {
    for seed in 0..16u64 {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut src, dst) = (open(a.path()), open(b.path()));
        let mut rng = StdRng::seed_from_u64(seed);
        src.create_lun("vm", 48 * BLOCK_SIZE).unwrap();
        dst.create_replica("vm", 48 * BLOCK_SIZE, None).unwrap();
        let mut base: Option<String> = None;
        for round in 0..12 {
            if round == 8 {
                // The change index is rebuilt from the maps at open.
                src.close().unwrap();
                drop(src);
                src = open(a.path());
            }
            mutate(&src, "vm", &mut rng);
            let snap = format!("s{round}");
            src.create_snapshot("vm", &snap).unwrap();
            if round == 5 {
                // A restore to an older snapshot is a change too.
                src.restore_snapshot("vm", "s1").unwrap();
                src.create_snapshot("vm", "after-restore").unwrap();
                transfer(&src, "vm", base.as_deref(), &snap, true, &dst, "vm");
                base = Some(snap);
                let snap = "after-restore".to_string();
                transfer(&src, "vm", base.as_deref(), &snap, true, &dst, "vm");
                base = Some(snap);
                continue;
            }
            transfer(&src, "vm", base.as_deref(), &snap, true, &dst, "vm");
            assert_eq!(
                read_all(&dst, &format!("vm@{snap}")),
                read_all(&src, &format!("vm@{snap}")),
                "seed {seed} snapshot {snap}"
            );
            // Readers of the replica see the newest complete transfer.
            assert_eq!(read_all(&dst, "vm"), read_all(&src, &format!("vm@{snap}")));
            base = Some(snap);
        }
        // Every snapshot that travelled still matches.
        for s in dst.list_snapshots(Some("vm")).unwrap() {
            assert_eq!(
                read_all(&dst, &format!("vm@{}", s.name)),
                read_all(&src, &format!("vm@{}", s.name)),
                "seed {seed} {}",
                s.name
            );
        }
        dst.check_invariants().unwrap();
    }
}

#[test]
fn a_clone_travels_as_a_clone_or_flattened() {
    for seed in 0..10 {
        clone_case(seed);
    }
}

fn clone_case(seed: u64) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let mut rng = StdRng::seed_from_u64(seed);
    src.create_lun("gold", 64 * BLOCK_SIZE).unwrap();
    let t = src.resolve("gold").unwrap();
    src.write(t, 0, &vec![9u8; 64 * BS], false).unwrap();
    src.create_snapshot("gold", "base").unwrap();
    dst.create_replica("gold", 64 * BLOCK_SIZE, None).unwrap();
    assert_eq!(transfer(&src, "gold", None, "base", true, &dst, "gold"), 64);
    src.create_clones("gold@base", &["vm1".into()], false)
        .unwrap();
    let c = src.resolve("vm1").unwrap();
    src.write(c, 3 * BLOCK_SIZE, &vec![1u8; 2 * BS], false)
        .unwrap();
    src.trim(c, 10 * BLOCK_SIZE, 4 * BLOCK_SIZE, false).unwrap();
    src.create_snapshot("vm1", "c1").unwrap();

    // As a clone of the mirrored parent: only its own blocks travel.
    dst.create_replica("vm1", 64 * BLOCK_SIZE, Some("gold@base"))
        .unwrap();
    assert_eq!(transfer(&src, "vm1", None, "c1", false, &dst, "vm1"), 2);
    assert_eq!(read_all(&dst, "vm1@c1"), read_all(&src, "vm1@c1"));
    // Flattened into a plain LUN: everything it reads.
    dst.create_replica("flat", 64 * BLOCK_SIZE, None).unwrap();
    assert_eq!(transfer(&src, "vm1", None, "c1", true, &dst, "flat"), 60);
    assert_eq!(read_all(&dst, "flat"), read_all(&src, "vm1@c1"));
    // Incrementals of both, including a restore that unmaps the clone's
    // own blocks (it reads its parent there again).
    let mut base = "c1".to_string();
    for round in 0..6 {
        mutate(&src, "vm1", &mut rng);
        if round == 3 {
            src.create_snapshot("vm1", "pre").unwrap();
            src.restore_snapshot("vm1", "c1").unwrap();
            src.trim(c, 0, BLOCK_SIZE, false).unwrap();
            src.delete_snapshot("vm1", "pre").unwrap();
        }
        let snap = format!("c{}", round + 2);
        src.create_snapshot("vm1", &snap).unwrap();
        transfer(&src, "vm1", Some(&base), &snap, false, &dst, "vm1");
        transfer(&src, "vm1", Some(&base), &snap, true, &dst, "flat");
        let want = read_all(&src, &format!("vm1@{snap}"));
        assert_eq!(
            read_all(&dst, &format!("vm1@{snap}")),
            want,
            "seed {seed} {snap}"
        );
        assert_eq!(
            read_all(&dst, &format!("flat@{snap}")),
            want,
            "seed {seed} {snap}"
        );
        base = snap;
    }
    dst.check_invariants().unwrap();
}

#[test]
fn readers_see_the_last_complete_transfer_and_writes_are_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    src.create_lun("db", 16 * BLOCK_SIZE).unwrap();
    let t = src.resolve("db").unwrap();
    src.write(t, 0, &vec![1u8; 16 * BS], false).unwrap();
    src.create_snapshot("db", "one").unwrap();
    dst.create_replica("db", 16 * BLOCK_SIZE, None).unwrap();
    // Before the baseline completes: zeros.
    assert_eq!(read_all(&dst, "db"), blocks_of(0, 16));
    transfer(&src, "db", None, "one", true, &dst, "db");
    let into = dst.replica_target("db").unwrap();
    // A transfer half applied (and a grow) is invisible to readers.
    dst.apply_size(into, 32).unwrap();
    dst.apply_data(into, 0, &vec![2u8; 20 * BS]).unwrap();
    assert_eq!(read_all(&dst, "db"), blocks_of(1, 16));
    let info = dst.lun_info("db").unwrap();
    assert!(info.replica);
    assert_eq!(info.replica_view.as_deref(), Some("one"));
    // Clients cannot change a replica, in any way.
    let client = dst.resolve("db").unwrap();
    let refused = |r: Result<(), Error>| assert!(matches!(r, Err(Error::ReadOnly(_))), "{r:?}");
    refused(dst.write(client, 0, &[5u8; BS], false));
    refused(dst.trim(client, 0, BLOCK_SIZE, false));
    refused(dst.write_zeroes(client, 0, BLOCK_SIZE, true, false));
    assert!(dst.resize_lun("db", 64 * BLOCK_SIZE, false).is_err());
    assert!(dst.create_snapshot("db", "mine").is_err());
    assert!(dst.restore_snapshot("db", "one").is_err());
    assert!(dst.delete_lun("db", true).is_err());
    // The view is held: retention cannot remove the common base.
    let e = dst.delete_snapshot("db", "one").unwrap_err();
    assert!(e.to_string().contains("held by mirror \"m1\""), "{e}");
    assert_eq!(dst.list_snapshots(Some("db")).unwrap()[0].holds, ["m1"]);
    // Abort: the half transfer is gone, the view unchanged.
    dst.rollback_replica("db").unwrap();
    dst.break_replica("db").unwrap();
    assert_eq!(read_all(&dst, "db"), blocks_of(1, 16));
    // Broken: writable, at the last complete snapshot.
    dst.write(client, 0, &[5u8; BS], false).unwrap();
    // Back to a replica at "one", keeping what was written in a safety
    // snapshot.
    assert!(dst.make_replica("db", "one", Some("safety"), "m1").unwrap());
    assert_eq!(read_all(&dst, "db"), blocks_of(1, 16));
    assert_eq!(read_all(&dst, "db@safety")[0], blocks_of(5, 1)[0]);
    assert_eq!(dst.list_snapshots(Some("db")).unwrap()[0].holds, ["m1"]);
    assert_eq!(dst.release_holds("m1").unwrap(), 1);
    dst.check_invariants().unwrap();
}

#[test]
fn a_group_appears_at_once_and_survives_a_reopen() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open(a.path());
    {
        let dst = open(b.path());
        for lun in ["g/a", "g/b"] {
            src.create_lun(lun, 8 * BLOCK_SIZE).unwrap();
            dst.create_replica(lun, 8 * BLOCK_SIZE, None).unwrap();
            let t = src.resolve(lun).unwrap();
            src.write(t, 0, &vec![3u8; 8 * BS], false).unwrap();
        }
        src.create_group_snapshot("cg1", &["g/a".into(), "g/b".into()])
            .unwrap();
        for lun in ["g/a", "g/b"] {
            let into = dst.replica_target(lun).unwrap();
            dst.apply_data(into, 0, &vec![3u8; 8 * BS]).unwrap();
            // Until the group is published, neither shows anything.
            assert_eq!(read_all(&dst, lun), blocks_of(0, 8));
        }
        let snaps: Vec<_> = ["g/a", "g/b"]
            .iter()
            .map(|l| ReplicaSnapshot {
                lun: l.to_string(),
                snapshot: "cg1".into(),
                created: 1_000,
            })
            .collect();
        dst.publish_replica(&snaps, Some("cg1"), "m2").unwrap();
        dst.close().unwrap();
    }
    let dst = open(b.path());
    assert_eq!(dst.group_info("cg1").unwrap().members, ["g/a", "g/b"]);
    for lun in ["g/a", "g/b"] {
        assert_eq!(read_all(&dst, lun), blocks_of(3, 8));
        let s = &dst.list_snapshots(Some(lun)).unwrap()[0];
        assert_eq!(
            (s.created, s.holds.clone()),
            (1_000, vec!["m2".to_string()])
        );
    }
    assert!(dst.delete_group_snapshot("cg1").is_err());
    // Differences are bounded per call, whatever is asked.
    let chunk = src
        .snapshot_diff("g/a", None, Some("cg1"), true, 0, usize::MAX)
        .unwrap();
    assert!(chunk.extents.len() <= DIFF_EXTENTS_MAX);
    dst.check_invariants().unwrap();
}
