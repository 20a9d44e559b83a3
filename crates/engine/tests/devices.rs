//! A pool on devices (issue 14) with real files as devices: classes,
//! checksums verified on every read, self-healing mirrors, a pool that
//! opens degraded without a device, and refusals that change nothing.

mod common;
use common::*;
use engine::{Engine, Error};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Overwrites every byte after the label of `path` that holds data with
/// random bytes, in the first `mib` MiB.
fn rot(path: &Path, mib: u64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(8192)).unwrap();
    let junk: Vec<u8> = (0..mib * MIB - 8192)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    f.write_all(&junk).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_mirror_reads_right_through_a_rotten_copy_and_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 2, 16);
    let e = open(tmp.path(), &devs).unwrap();
    let status = e.pool_status().unwrap();
    assert_eq!((status.devices, status.redundancy.as_str()), (2, "mirror"));
    let info = e.create_lun("vm", 8 * MIB).unwrap();
    assert_eq!(info.redundancy, "mirror");
    let data = pattern(1, 3 * MIB as usize);
    e.write(e.resolve("vm").unwrap(), 0, &data, true).unwrap();
    // Unaligned, and overwritten: a checksummed pool redirects.
    e.write(e.resolve("vm").unwrap(), 4096 + 100, &[7u8; 5000], true)
        .unwrap();
    let mut want = data.clone();
    want[4196..9196].fill(7);
    e.close().unwrap();
    drop(e);

    rot(&devs[0], 16);
    let e = open(tmp.path(), &devs).unwrap();
    assert_eq!(read(&e, "vm", 0, want.len()), want);
    assert_eq!(read(&e, "vm", 4097, 3), want[4097..4100].to_vec());
    let d = e.pool_devices().unwrap();
    assert!(d[0].checksum_errors > 0, "{d:?}");
    assert_eq!(d[0].repaired_blocks, d[0].checksum_errors);
    assert_eq!(d[1].checksum_errors, 0);
    assert_eq!(d[0].state, "online", "bit rot does not fault a device");
    e.check_invariants().unwrap();
    e.close().unwrap();
    drop(e);

    // Repaired on disk: now the other copy may rot.
    rot(&devs[1], 16);
    let e = open(tmp.path(), &devs).unwrap();
    assert_eq!(read(&e, "vm", 0, want.len()), want);
    assert_eq!(e.pool_devices().unwrap()[0].checksum_errors, 0);
}

#[test]
fn a_single_copy_that_rots_is_an_error_not_wrong_data() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 1, 8);
    let e = open(tmp.path(), &devs).unwrap();
    let info = e.create_lun("one", 2 * MIB).unwrap();
    assert_eq!(info.redundancy, "none");
    e.write(
        e.resolve("one").unwrap(),
        0,
        &pattern(2, MIB as usize),
        true,
    )
    .unwrap();
    e.close().unwrap();
    drop(e);
    rot(&devs[0], 8);
    let e = open(tmp.path(), &devs).unwrap();
    let mut b = vec![0u8; 4096];
    let err = e.read(e.resolve("one").unwrap(), 0, &mut b).unwrap_err();
    assert!(err.to_string().contains("no copy of it verifies"), "{err}");
    assert!(e.pool_devices().unwrap()[0].checksum_errors >= 1);
}

#[test]
fn a_missing_device_opens_degraded_and_serves_every_block() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 3, 16);
    let e = open(tmp.path(), &devs).unwrap();
    e.create_lun_in("m", 4 * MIB, Some("mirror".parse().unwrap()))
        .unwrap();
    let l3 = e.create_lun("m3", 4 * MIB).unwrap();
    assert_eq!(
        l3.redundancy, "mirror3",
        "three devices: mirror3 by default"
    );
    e.create_lun_in("plain", 4 * MIB, Some("none".parse().unwrap()))
        .unwrap();
    let a = pattern(3, 2 * MIB as usize);
    let b = pattern(4, 2 * MIB as usize);
    e.write(e.resolve("m").unwrap(), 0, &a, false).unwrap();
    e.write(e.resolve("m3").unwrap(), MIB, &b, false).unwrap();
    e.flush().unwrap();
    e.close().unwrap();
    drop(e);

    // A device the stores of `plain` do not use can go; one they use
    // cannot, and opening without it changes nothing.
    let plain_dev = {
        let e = open(tmp.path(), &devs).unwrap();
        e.write(e.resolve("plain").unwrap(), 0, &[1u8; 4096], true)
            .unwrap();
        let d = e.pool_devices().unwrap();
        e.close().unwrap();
        // The device with the most used segments holds the `none` store
        // (stores go where free segments are most; ties to the lowest).
        d.iter()
            .max_by_key(|d| (d.used_segments, d.index))
            .unwrap()
            .index as usize
    };
    let gone = (plain_dev + 1) % 3;
    let moved = tmp.path().join("gone");
    std::fs::rename(&devs[gone], &moved).unwrap();
    let e = open(tmp.path(), &[]).unwrap();
    let status = e.pool_status().unwrap();
    assert_eq!(
        (status.state.as_str(), status.faulted_devices),
        ("degraded", 1)
    );
    let d = e.pool_devices().unwrap();
    assert_eq!(d[gone].state, "faulted");
    assert!(d[gone].reason.as_deref().unwrap().contains("did not open"));
    assert_eq!(read(&e, "m", 0, a.len()), a);
    assert_eq!(read(&e, "m3", MIB, b.len()), b);
    // Writes go on, to the copies left.
    e.write(e.resolve("m").unwrap(), 0, &b[..4096], true)
        .unwrap();
    assert_eq!(read(&e, "m", 0, 4096), b[..4096].to_vec());
    e.close().unwrap();
    drop(e);

    // Back again: it stays out (its copy of `m`'s first block is stale)
    // until it is cleared, which resilvers it.
    std::fs::rename(&moved, &devs[gone]).unwrap();
    let e = open(tmp.path(), &devs).unwrap();
    assert_eq!(e.pool_status().unwrap().state, "degraded");
    let d = e.pool_devices().unwrap();
    assert!(
        d[gone]
            .reason
            .as_deref()
            .unwrap()
            .contains("pool device clear"),
        "{d:?}"
    );
    assert_eq!(read(&e, "m", 0, 4096), b[..4096].to_vec());
    let err = e.clear_device(&devs[plain_dev]).unwrap_err().to_string();
    assert!(err.contains("is not faulted"), "{err}");
    assert!(matches!(
        e.clear_device(&tmp.path().join("nope")),
        Err(Error::NotFound { .. })
    ));
    let cleared = e.clear_device(&devs[gone]).unwrap();
    assert_eq!(cleared.state, "online");
    assert_eq!(e.scrub_status().unwrap().state, "running");
    let resilver = scrub_to_end(&e);
    assert_eq!(resilver.lost_blocks, 0, "{resilver:?}");
    assert_eq!(e.pool_status().unwrap().state, "online");
    assert_eq!(read(&e, "m", 0, 4096), b[..4096].to_vec());
    e.close().unwrap();
    drop(e);
    let e = open(tmp.path(), &devs).unwrap();
    assert_eq!(e.pool_status().unwrap().state, "online", "cleared for good");
    e.close().unwrap();
    drop(e);

    std::fs::remove_file(&devs[plain_dev]).unwrap();
    let err = open(tmp.path(), &[]).err().unwrap().to_string();
    assert!(err.contains("the pool cannot open"), "{err}");
}

#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 2, 8);
    let e = open(tmp.path(), &devs).unwrap();
    let bad = |class: &str| {
        e.create_lun_in("x", MIB, Some(class.parse().unwrap()))
            .unwrap_err()
            .to_string()
    };
    assert!(bad("mirror3").contains("needs 3 devices; the pool has 2"));
    assert!(bad("parity:2+1").contains("needs 3 devices; the pool has 2"));
    assert!(e.list_luns("").unwrap().is_empty(), "nothing was made");
    // The default class for new LUNs is the pool's to change, and kept.
    let err = e
        .set_default_redundancy("mirror3".parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 3 devices"), "{err}");
    assert_eq!(e.pool_status().unwrap().redundancy, "mirror");
    e.set_default_redundancy("none".parse().unwrap()).unwrap();
    assert_eq!(e.create_lun("dflt", MIB).unwrap().redundancy, "none");
    e.close().unwrap();
    drop(e);
    let e = open(tmp.path(), &devs).unwrap();
    assert_eq!(e.pool_status().unwrap().redundancy, "none");
    e.delete_lun("dflt", false).unwrap();
    e.set_default_redundancy("mirror".parse().unwrap()).unwrap();
    assert!(matches!(
        e.grow_pool(64 * MIB),
        Err(Error::InvalidArgument(_))
    ));
    // Fill the pool: 2 × 7 segments mirrored hold 7 MiB.
    e.create_lun("big", 64 * MIB).unwrap();
    let target = e.resolve("big").unwrap();
    let chunk = pattern(5, MIB as usize);
    let mut written = 0;
    let err = loop {
        match e.write(target, written, &chunk, false) {
            Ok(()) => written += MIB,
            Err(err) => break err,
        }
    };
    assert!(matches!(err, Error::NoSpace(_)), "{err}");
    assert_eq!(written, 7 * MIB);
    for at in (0..written).step_by(MIB as usize) {
        assert_eq!(read(&e, "big", at, MIB as usize), chunk, "at {at}");
    }
    e.check_invariants().unwrap();
    e.close().unwrap();
    drop(e);

    // A device of this pool cannot start another, and a single-file pool's
    // directory does not open as devices.
    let other = tempfile::tempdir().unwrap();
    let err = open(other.path(), &devs[..1]).err().unwrap().to_string();
    assert!(err.contains("already belongs to blockfork pool"), "{err}");
    let one = tempfile::tempdir().unwrap();
    Engine::open_dir(one.path(), Some(16 * MIB), config())
        .unwrap()
        .close()
        .unwrap();
    let err = Engine::open_devices(one.path(), &devs, opts(), config())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("one data file"), "{err}");
    let none = tempfile::tempdir().unwrap();
    let err = Engine::open_devices(none.path(), &[none.path().join("nope")], opts(), config())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn scrub_repairs_every_copy_names_what_is_lost_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 2, 16);
    let e = open(tmp.path(), &devs).unwrap();
    assert_eq!(e.scrub_status().unwrap().state, "never");
    e.create_lun("m", 4 * MIB).unwrap();
    e.create_lun_in("n", 2 * MIB, Some("none".parse().unwrap()))
        .unwrap();
    let a = pattern(7, 3 * MIB as usize);
    e.write(e.resolve("m").unwrap(), 0, &a, false).unwrap();
    e.write(e.resolve("n").unwrap(), 0, &pattern(8, MIB as usize), false)
        .unwrap();
    e.close().unwrap();
    drop(e);
    // Each device rots in turn, scrubbed between: every mirror block keeps
    // a good copy each time; the `none` LUN's megabyte is lost once.
    let mut lost = 0;
    for d in [1, 0] {
        rot(&devs[d], 16);
        let e = open(tmp.path(), &devs).unwrap();
        let info = scrub_to_end_after_start(&e);
        assert_eq!((info.state.as_str(), info.progress), ("done", 1.0));
        assert!(info.repaired_copies >= 768, "{info:?}");
        assert!(e.pool_devices().unwrap()[d].checksum_errors >= 768);
        if info.lost_blocks > 0 {
            assert_eq!(info.lost_blocks, 256, "{info:?}");
            assert_eq!(
                info.damage,
                vec![engine::scrub::Damage {
                    lun: "n".into(),
                    snapshot: None,
                    offset_bytes: 0,
                    length_bytes: MIB,
                }]
            );
            assert_eq!(e.pool_status().unwrap().damage, info.damage);
        }
        lost += info.lost_blocks;
        assert_eq!(read(&e, "m", 0, a.len()), a);
        e.close().unwrap();
    }
    assert_eq!(lost, 256, "the none LUN is lost exactly once");
    let e = open(tmp.path(), &devs).unwrap();
    let again = scrub_to_end_after_start(&e);
    assert_eq!(again.repaired_copies, 0, "{again:?}");
    e.check_invariants().unwrap();

    // Stopped part way, committed, reopened: it resumes where it was.
    e.scrub_start().unwrap();
    e.run_scrub_batch();
    e.run_scrub_batch();
    let part = e.scrub_stop().unwrap();
    assert_eq!(part.state, "stopped");
    assert_eq!(part.scanned_bytes, 2 * MIB);
    e.close().unwrap();
    drop(e);
    let e = open(tmp.path(), &devs).unwrap();
    let back = e.scrub_status().unwrap();
    assert_eq!(
        (back.state.as_str(), back.scanned_bytes),
        ("stopped", 2 * MIB)
    );
    assert!(e.scrub_stop().is_err(), "nothing runs");
    e.scrub_start().unwrap();
    let done = scrub_to_end(&e);
    assert_eq!(done.state, "done");
    assert_eq!(done.scanned_bytes, done.total_bytes);

    let one = tempfile::tempdir().unwrap();
    let single = Engine::open_dir(one.path(), Some(16 * MIB), config()).unwrap();
    let err = single.scrub_start().unwrap_err().to_string();
    assert!(err.contains("needs a pool on devices"), "{err}");
}

fn scrub_to_end_after_start(e: &Engine) -> engine::scrub::ScrubInfo {
    let started = e.scrub_start().unwrap();
    assert_eq!(started.state, "running");
    scrub_to_end(e)
}

#[test]
fn a_lost_device_is_rebuilt_onto_a_replacement_and_a_restart_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 2, 16);
    let e = open(tmp.path(), &devs).unwrap();
    e.create_lun("m", 8 * MIB).unwrap();
    let a = pattern(9, 6 * MIB as usize);
    e.write(e.resolve("m").unwrap(), 0, &a, true).unwrap();
    e.close().unwrap();
    drop(e);

    std::fs::remove_file(&devs[1]).unwrap();
    std::fs::create_dir(tmp.path().join("spare")).unwrap();
    let spare = device_files(&tmp.path().join("spare"), 1, 16).remove(0);
    let e = open(tmp.path(), &[]).unwrap();
    assert_eq!(e.pool_status().unwrap().state, "degraded");
    let started = e.replace_device(&devs[1], &spare, false).unwrap();
    assert_eq!(started.state, "running");
    assert_eq!(started.total_segments, 6);
    assert!(
        e.replace_device(&devs[1], &spare, false).is_err(),
        "one job at a time"
    );
    // Part of the way, then the process goes (no clean close).
    for _ in 0..8 {
        e.run_move_batch();
    }
    let part = e.move_status().unwrap();
    assert!(
        part.moved_segments >= 1 && part.moved_segments < 6,
        "{part:?}"
    );
    e.flush().unwrap();
    drop(e);
    let e = open(tmp.path(), &[]).unwrap();
    let resumed = e.move_status().unwrap();
    assert_eq!(resumed.state, "running", "{resumed:?}");
    let done = moves_to_end(&e);
    assert_eq!(done.state, "done", "{done:?}");
    assert_eq!(done.skipped_blocks, 0);
    let status = e.pool_status().unwrap();
    assert_eq!((status.state.as_str(), status.devices), ("online", 2));
    assert_eq!(read(&e, "m", 0, a.len()), a);
    e.close().unwrap();
    drop(e);
    // The old device is forgotten; the pool opens from the two it has.
    let e = open(tmp.path(), &[]).unwrap();
    assert_eq!(e.pool_status().unwrap().state, "online");
    assert_eq!(read(&e, "m", 0, a.len()), a);
    let paths: Vec<String> = e
        .pool_devices()
        .unwrap()
        .into_iter()
        .map(|d| d.path)
        .collect();
    assert_eq!(paths.len(), 2);
    assert!(paths.iter().any(|p| p.ends_with("spare/d0")), "{paths:?}");
    e.check_invariants().unwrap();
}

#[test]
fn devices_are_removed_online_and_added_with_levelling() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 3, 16);
    let e = open(tmp.path(), &devs).unwrap();
    e.create_lun_in("m", 8 * MIB, Some("mirror".parse().unwrap()))
        .unwrap();
    let a = pattern(11, 8 * MIB as usize);
    e.write(e.resolve("m").unwrap(), 0, &a, true).unwrap();
    let err = e.remove_device(&tmp.path().join("nope")).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let started = e.remove_device(&devs[2]).unwrap();
    assert_eq!(started.state, "running");
    // Writes go on while it moves.
    let b = pattern(12, MIB as usize);
    for _ in 0..50 {
        e.run_move_batch();
    }
    e.write(e.resolve("m").unwrap(), 2 * MIB, &b, false)
        .unwrap();
    let done = moves_to_end(&e);
    assert_eq!(done.state, "done", "{done:?}");
    let mut want = a.clone();
    want[2 * MIB as usize..3 * MIB as usize].copy_from_slice(&b);
    assert_eq!(read(&e, "m", 0, want.len()), want);
    let list = e.pool_devices().unwrap();
    assert_eq!(list.len(), 2);
    // Its label is wiped: it can join a pool again without --force.
    engine::devices::vet(&devs[2], MIB, false).unwrap();
    e.check_invariants().unwrap();
    // Two devices left: a mirror cannot lose another.
    let err = e.remove_device(&devs[0]).unwrap_err().to_string();
    assert!(err.contains("add one first"), "{err}");

    // Added back: segments level onto it.
    let before: Vec<u64> = e
        .pool_devices()
        .unwrap()
        .iter()
        .map(|d| d.used_segments)
        .collect();
    let added = e.add_device(&devs[2], false).unwrap();
    assert_eq!(added.used_segments, 0);
    let done = moves_to_end(&e);
    assert_eq!(done.state, "done");
    let after: Vec<u64> = e
        .pool_devices()
        .unwrap()
        .iter()
        .map(|d| d.used_segments)
        .collect();
    assert_eq!(after.iter().sum::<u64>(), before.iter().sum::<u64>());
    let (lo, hi) = (after.iter().min().unwrap(), after.iter().max().unwrap());
    assert!(hi - lo <= 1, "levelled: {after:?}");
    assert_eq!(read(&e, "m", 0, want.len()), want);
    let err = e.add_device(&devs[2], false).unwrap_err().to_string();
    assert!(err.contains("already"), "{err}");
    e.close().unwrap();
    drop(e);
    let e = open(tmp.path(), &[]).unwrap();
    assert_eq!(read(&e, "m", 0, want.len()), want);
    assert_eq!(e.pool_devices().unwrap().len(), 3);
    e.check_invariants().unwrap();
}

#[test]
fn a_lost_device_whose_only_unprotected_store_is_empty_does_not_stop_the_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 3, 16);
    let e = open(tmp.path(), &devs).unwrap();
    e.create_lun_in("m", 4 * MIB, Some("mirror".parse().unwrap()))
        .unwrap();
    let a = pattern(21, 2 * MIB as usize);
    e.write(e.resolve("m").unwrap(), 0, &a, true).unwrap();
    let before: Vec<u64> = e
        .pool_devices()
        .unwrap()
        .iter()
        .map(|d| d.used_segments)
        .collect();
    e.create_lun_in("scratch", MIB, Some("none".parse().unwrap()))
        .unwrap();
    e.write(e.resolve("scratch").unwrap(), 0, &[9u8; 4096], true)
        .unwrap();
    let after: Vec<u64> = e
        .pool_devices()
        .unwrap()
        .iter()
        .map(|d| d.used_segments)
        .collect();
    let host = (0..3)
        .find(|&i| after[i] > before[i])
        .expect("the none store's device");
    // Its data goes; the store stays, empty.
    e.delete_lun("scratch", false).unwrap();
    e.run_jobs();
    e.close().unwrap();
    drop(e);

    std::fs::remove_file(&devs[host]).unwrap();
    let e = open(tmp.path(), &[]).unwrap();
    assert_eq!(e.pool_status().unwrap().state, "degraded");
    assert_eq!(read(&e, "m", 0, a.len()), a);
    // The emptied store is not used again: new `none` data goes elsewhere.
    e.create_lun_in("fresh", MIB, Some("none".parse().unwrap()))
        .unwrap();
    e.write(e.resolve("fresh").unwrap(), 0, &[7u8; 8192], true)
        .unwrap();
    e.close().unwrap();
    drop(e);
    let e = open(tmp.path(), &[]).unwrap();
    assert_eq!(read(&e, "fresh", 0, 8192), vec![7u8; 8192]);
    e.check_invariants().unwrap();
}
