//! Parity LUNs (issue 14, decision 030) on real files as devices: stripes
//! written whole, blocks recovered through rot and through the loss of M
//! devices, a lost device rebuilt onto a spare, a clone split into parity,
//! and the space a stripe holds until its last block is freed.

mod common;
use common::*;
use engine::Engine;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

fn write(e: &Engine, lun: &str, offset: u64, data: &[u8], want: &mut [u8]) {
    e.write(e.resolve(lun).unwrap(), offset, data, false)
        .unwrap();
    want[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// Random bytes over every byte of `path` past its label.
fn rot(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(8192)).unwrap();
    let junk: Vec<u8> = (0..len - 8192)
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    f.write_all(&junk).unwrap();
    f.sync_all().unwrap();
}

fn run_scrub(e: &Engine) -> engine::scrub::ScrubInfo {
    e.scrub_start().unwrap();
    scrub_to_end(e)
}

/// A 4+2 LUN with sequential, small and unaligned writes and a snapshot.
fn filled(e: &Engine) -> (Vec<u8>, Vec<u8>) {
    let info = e
        .create_lun_in("p", 6 * MIB, Some("parity:4+2".parse().unwrap()))
        .unwrap();
    assert_eq!(info.redundancy, "parity:4+2");
    let mut want = vec![0u8; 6 * MIB as usize];
    write(e, "p", 0, &pattern(1, 3 * MIB as usize), &mut want);
    for (i, at) in [5u64, 17, 100, 101, 102, 700, 1023].iter().enumerate() {
        write(e, "p", at * 4096, &pattern(20 + i as u8, 4096), &mut want);
    }
    write(e, "p", 4 * MIB + 100, &pattern(3, 9000), &mut want);
    e.create_snapshot("p", "s1").unwrap();
    let snap = want.clone();
    write(e, "p", MIB, &pattern(4, MIB as usize + 8192), &mut want);
    (want, snap)
}

#[test]
fn a_parity_lun_reads_right_after_losing_m_devices_and_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 7, 16);
    let e = open(tmp.path(), &devs).unwrap();
    let (want, snap) = filled(&e);
    assert_eq!(read(&e, "p", 0, want.len()), want);
    assert_eq!(read(&e, "p@s1", 0, snap.len()), snap);
    e.check_invariants().unwrap();
    e.close().unwrap();
    drop(e);

    // Two of the seven gone: every stripe keeps four of its six shards.
    std::fs::remove_file(&devs[0]).unwrap();
    std::fs::remove_file(&devs[4]).unwrap();
    let e = open(tmp.path(), &[]).unwrap();
    let status = e.pool_status().unwrap();
    assert_eq!(
        (status.state.as_str(), status.faulted_devices),
        ("degraded", 2)
    );
    assert_eq!(read(&e, "p", 0, want.len()), want);
    assert_eq!(read(&e, "p@s1", 0, snap.len()), snap);
    // Writes go on, degraded.
    let mut want = want;
    write(&e, "p", 5 * MIB, &pattern(5, 300_000), &mut want);
    assert_eq!(read(&e, "p", 0, want.len()), want);
    let scrub = run_scrub(&e);
    assert_eq!(
        (scrub.state.as_str(), scrub.lost_blocks),
        ("done", 0),
        "{scrub:?}"
    );

    // Each lost device rebuilt onto a spare: its columns recomputed.
    std::fs::create_dir(tmp.path().join("spare")).unwrap();
    let spares = device_files(&tmp.path().join("spare"), 2, 16);
    for (lost, spare) in [(&devs[0], &spares[0]), (&devs[4], &spares[1])] {
        e.replace_device(lost, spare, false).unwrap();
        let done = moves_to_end(&e);
        assert_eq!(
            (done.state.as_str(), done.skipped_blocks),
            ("done", 0),
            "{done:?}"
        );
    }
    assert_eq!(e.pool_status().unwrap().state, "online");
    e.check_invariants().unwrap();
    e.close().unwrap();
    drop(e);

    // Rebuilt for real: two other devices may now go.
    std::fs::remove_file(&devs[1]).unwrap();
    std::fs::remove_file(&devs[2]).unwrap();
    let e = open(tmp.path(), &[]).unwrap();
    assert_eq!(e.pool_status().unwrap().faulted_devices, 2);
    assert_eq!(read(&e, "p", 0, want.len()), want);
    assert_eq!(read(&e, "p@s1", 0, snap.len()), snap);
    e.close().unwrap();
    drop(e);

    // A third loss is more than 4+2 tolerates: the pool says so.
    std::fs::remove_file(&devs[3]).unwrap();
    let err = open(tmp.path(), &[]).err().unwrap().to_string();
    assert!(err.contains("more than it tolerates"), "{err}");
}

#[test]
fn rot_on_a_device_is_repaired_by_reads_and_by_a_scrub() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 6, 16);
    let e = open(tmp.path(), &devs).unwrap();
    let (want, snap) = filled(&e);
    e.close().unwrap();
    drop(e);

    rot(&devs[2]);
    let e = open(tmp.path(), &devs).unwrap();
    assert_eq!(read(&e, "p", 0, want.len()), want);
    let d = e.pool_devices().unwrap();
    assert!(d[2].checksum_errors > 0, "{d:?}");
    assert_eq!(d[2].repaired_blocks, d[2].checksum_errors);
    assert_eq!(d[2].state, "online");
    // The scrub finds the rest: the snapshot's blocks and the parity.
    let scrub = run_scrub(&e);
    assert_eq!(scrub.lost_blocks, 0, "{scrub:?}");
    assert!(scrub.repaired_copies > 0, "{scrub:?}");
    let again = run_scrub(&e);
    assert_eq!(
        (again.bad_copies, again.repaired_copies),
        (0, 0),
        "{again:?}"
    );
    assert_eq!(read(&e, "p@s1", 0, snap.len()), snap);
    e.check_invariants().unwrap();
    e.close().unwrap();
    drop(e);

    // Repaired on disk: two other devices may now rot at once.
    rot(&devs[0]);
    rot(&devs[5]);
    let e = open(tmp.path(), &devs).unwrap();
    assert_eq!(read(&e, "p", 0, want.len()), want);
    assert_eq!(read(&e, "p@s1", 0, snap.len()), snap);
}

#[test]
fn a_stripe_is_held_until_its_last_block_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 4, 16);
    let e = open(tmp.path(), &devs).unwrap();
    e.create_lun_in("p", 8 * MIB, Some("parity:3+1".parse().unwrap()))
        .unwrap();
    let used = |e: &Engine| e.pool_status().unwrap().used_bytes;
    let before = used(&e);
    let t = e.resolve("p").unwrap();
    // 40 scattered blocks: 40 stripes of three blocks.
    for i in 0..40u64 {
        e.write(t, i * 64 * 1024, &pattern(i as u8, 4096), false)
            .unwrap();
    }
    e.flush().unwrap();
    assert_eq!(used(&e) - before, 40 * 3 * 4096);
    e.check_invariants().unwrap();
    // Overwritten: the old stripes are freed whole.
    for i in 0..40u64 {
        e.write(t, i * 64 * 1024, &pattern(i as u8 ^ 1, 4096), false)
            .unwrap();
    }
    e.flush().unwrap();
    assert_eq!(used(&e) - before, 40 * 3 * 4096);
    // A clone split copies into whole stripes too.
    e.create_snapshot("p", "s").unwrap();
    e.create_clones("p@s", &["c".to_string()], false).unwrap();
    e.start_split("c").unwrap();
    for _ in 0..10_000 {
        if e.run_split_batch() == engine::SplitStep::Idle {
            break;
        }
    }
    e.flush().unwrap();
    for i in 0..40u64 {
        assert_eq!(
            read(&e, "c", i * 64 * 1024, 4096),
            pattern(i as u8 ^ 1, 4096)
        );
    }
    e.check_invariants().unwrap();
    e.close().unwrap();
    drop(e);
    let e = open(tmp.path(), &devs).unwrap();
    e.check_invariants().unwrap();
    // Trimmed, the LUN's stripes all come back.
    e.delete_snapshot("p", "s").ok();
    e.trim(e.resolve("p").unwrap(), 0, 8 * MIB, false).unwrap();
    e.flush().unwrap();
    e.check_invariants().unwrap();
    assert_eq!(read(&e, "c", 0, 4096), pattern(1, 4096));
}

#[test]
fn a_parity_class_needs_its_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 4, 8);
    let e = open(tmp.path(), &devs).unwrap();
    let err = e
        .create_lun_in("x", MIB, Some("parity:4+2".parse().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 6 devices; the pool has 4"), "{err}");
    assert!(e.list_luns("").unwrap().is_empty());
}

fn relayout_to_end(e: &Engine) {
    for _ in 0..100_000 {
        if e.run_relayout_batch() == engine::relayout::RelayoutStep::Idle {
            return;
        }
    }
    panic!("the relayout did not end");
}

#[test]
fn a_lun_moves_to_another_class_online_and_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let devs = device_files(tmp.path(), 6, 16);
    let e = open(tmp.path(), &devs).unwrap();
    e.create_lun_in("v", 4 * MIB, Some("mirror".parse().unwrap()))
        .unwrap();
    let mut want = vec![0u8; 4 * MIB as usize];
    write(&e, "v", 0, &pattern(7, 4 * MIB as usize), &mut want);
    e.create_snapshot("v", "before").unwrap();
    let snap = want.clone();
    let err = e
        .set_lun_redundancy("v", "parity:8+2".parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 10 devices"), "{err}");
    let info = e
        .set_lun_redundancy("v", "parity:4+2".parse().unwrap())
        .unwrap();
    assert_eq!(
        (info.redundancy.as_str(), info.relayout_done_bytes),
        ("parity:4+2", Some(0))
    );
    // Part of the way; a client write lands meanwhile; then a restart.
    for _ in 0..2 {
        e.run_relayout_batch();
    }
    write(&e, "v", 3 * MIB + 5, &pattern(8, 70_000), &mut want);
    e.flush().unwrap();
    drop(e);
    let e = open(tmp.path(), &devs).unwrap();
    let part = e.lun_info("v").unwrap().relayout_done_bytes.unwrap();
    assert_eq!(part, 2 * MIB);
    relayout_to_end(&e);
    assert_eq!(e.lun_info("v").unwrap().relayout_done_bytes, None);
    assert_eq!(read(&e, "v", 0, want.len()), want);
    assert_eq!(read(&e, "v@before", 0, snap.len()), snap);
    e.check_invariants().unwrap();
    // The snapshot keeps its mirror blocks; once it goes, only parity
    // stripes hold the LUN: two devices may go.
    e.delete_snapshot("v", "before").unwrap();
    e.run_jobs();
    e.close().unwrap();
    drop(e);
    std::fs::remove_file(&devs[2]).unwrap();
    std::fs::remove_file(&devs[5]).unwrap();
    let e = open(tmp.path(), &[]).unwrap();
    assert_eq!(read(&e, "v", 0, want.len()), want);
    // And back to mirror3, degraded.
    e.set_lun_redundancy("v", "mirror3".parse().unwrap())
        .unwrap();
    relayout_to_end(&e);
    assert_eq!(read(&e, "v", 0, want.len()), want);
    e.check_invariants().unwrap();
}
