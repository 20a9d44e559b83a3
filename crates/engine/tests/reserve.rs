//! Space reservations (issue 14, decision 031): a pool filled by LUNs with
//! and without reservations; only those without get ENOSPC, and nothing
//! written is lost.

use engine::{DeviceOptions, Engine, EngineConfig, Error, Reservation};
use std::path::Path;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn config() -> EngineConfig {
    EngineConfig {
        background: false,
        check_after_commit: true,
        ..EngineConfig::default()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29) ^ seed ^ (i >> 12) as u8)
        .collect()
}

/// Writes 1 MiB chunks from `at` until ENOSPC or `limit`; answers where
/// it stopped.
fn fill(e: &Engine, lun: &str, mut at: u64, limit: u64, seed: u8) -> u64 {
    let t = e.resolve(lun).unwrap();
    while at < limit {
        match e.write(t, at, &pattern(seed, MIB as usize), false) {
            Ok(()) => at += MIB,
            Err(Error::NoSpace(why)) => {
                assert!(why.contains("reserved"), "{why}");
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    at
}

fn check(e: &Engine, lun: &str, upto: u64, seed: u8) {
    let t = e.resolve(lun).unwrap();
    let mut b = vec![0u8; MIB as usize];
    for at in (0..upto).step_by(MIB as usize) {
        e.read(t, at, &mut b).unwrap();
        assert!(b == pattern(seed, MIB as usize), "{lun} at {at}");
    }
}

fn reserved(thick: bool, snapshot_percent: u32) -> Reservation {
    Reservation {
        thick,
        snapshot_percent,
    }
}

fn single(dir: &Path) -> Arc<Engine> {
    Engine::open_dir(dir, Some(96 * MIB), config()).unwrap()
}

#[test]
fn only_unreserved_luns_get_enospc_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let e = single(tmp.path());
    let db = e
        .create_lun_reserving("db", 32 * MIB, None, reserved(true, 50))
        .unwrap();
    assert!(db.reserve);
    assert_eq!(db.snapshot_reserve_percent, 50);
    // 32 MiB, 16 MiB of overwrite headroom, 16 MiB for snapshots.
    assert_eq!(db.reserved_bytes, 64 * MIB);
    assert_eq!(e.pool_status().unwrap().reserved_bytes, 64 * MIB);
    e.create_lun("scratch", 96 * MIB).unwrap();
    let scratch = fill(&e, "scratch", 0, 96 * MIB, 1);
    assert!(
        (24 * MIB..=32 * MIB).contains(&scratch),
        "scratch stopped at {scratch}"
    );
    // Nor may another reservation take what db holds.
    let err = e
        .create_lun_reserving("more", 8 * MIB, None, reserved(true, 0))
        .unwrap_err();
    assert!(matches!(err, Error::NoSpace(_)), "{err}");
    assert!(e.lun_info("more").is_err(), "nothing was made");

    // db writes all of itself, twice over, and keeps a snapshot.
    assert_eq!(fill(&e, "db", 0, 32 * MIB, 2), 32 * MIB);
    assert_eq!(e.lun_info("db").unwrap().reserved_bytes, 32 * MIB);
    e.create_snapshot("db", "s").unwrap();
    assert_eq!(fill(&e, "db", 0, 16 * MIB, 3), 16 * MIB);
    for _ in 0..3 {
        assert_eq!(fill(&e, "db", 16 * MIB, 32 * MIB, 3), 32 * MIB);
        e.flush().unwrap();
    }
    check(&e, "db", 32 * MIB, 3);
    check(&e, "scratch", scratch, 1);
    let t = e.resolve("db@s").unwrap();
    let mut b = vec![0u8; MIB as usize];
    e.read(t, 31 * MIB, &mut b).unwrap();
    assert_eq!(b, pattern(2, MIB as usize));
    e.check_invariants().unwrap();
    e.close().unwrap();
    drop(e);

    // Reservations are kept across a restart; deleting db gives them back.
    let e = single(tmp.path());
    let info = e.lun_info("db").unwrap();
    assert!(info.reserve && info.reserved_bytes > 0, "{info:?}");
    assert_eq!(fill(&e, "scratch", scratch, 96 * MIB, 1), scratch);
    e.delete_lun("db", true).unwrap();
    e.flush().unwrap();
    assert_eq!(e.pool_status().unwrap().reserved_bytes, 0);
    assert!(fill(&e, "scratch", scratch, 96 * MIB, 1) > scratch + 32 * MIB);
    check(&e, "scratch", scratch, 1);
    e.check_invariants().unwrap();
}

#[test]
fn reservations_refuse_what_they_cannot_promise() {
    let tmp = tempfile::tempdir().unwrap();
    let e = single(tmp.path());
    let err = e
        .create_lun_reserving("big", 128 * MIB, None, reserved(true, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("would reserve"), "{err}");
    let err = e
        .create_lun_reserving("x", MIB, None, reserved(false, 101))
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 100"), "{err}");
    assert!(e.list_luns("").unwrap().is_empty());
    // Growing a thick LUN reserves the growth, or is refused.
    e.create_lun_reserving("t", 16 * MIB, None, reserved(true, 0))
        .unwrap();
    let err = e.resize_lun("t", 96 * MIB, false).unwrap_err();
    assert!(matches!(err, Error::NoSpace(_)), "{err}");
    assert_eq!(e.lun_info("t").unwrap().size_bytes, 16 * MIB);
    e.resize_lun("t", 32 * MIB, false).unwrap();
    assert_eq!(e.lun_info("t").unwrap().reserved_bytes, 48 * MIB);
    e.close().unwrap();

    // On devices: raw space counts every copy; parity cannot reserve.
    let dev = tempfile::tempdir().unwrap();
    let files: Vec<_> = (0..3)
        .map(|i| {
            let p = dev.path().join(format!("d{i}"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(64 * MIB)
                .unwrap();
            p
        })
        .collect();
    let opts = DeviceOptions {
        segment_bytes: MIB,
        force: false,
    };
    let e = Engine::open_devices(&dev.path().join("meta"), &files, opts, config()).unwrap();
    let err = e
        .create_lun_reserving(
            "p",
            MIB,
            Some("parity:2+1".parse().unwrap()),
            reserved(true, 0),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reserve"), "{err}");
    let m = e
        .create_lun_reserving(
            "m",
            40 * MIB,
            Some("mirror".parse().unwrap()),
            reserved(true, 0),
        )
        .unwrap();
    assert_eq!(m.reserved_bytes, 56 * MIB);
    assert_eq!(e.pool_status().unwrap().reserved_bytes, 112 * MIB);
    e.create_lun_in("n", 128 * MIB, Some("none".parse().unwrap()))
        .unwrap();
    let n = fill(&e, "n", 0, 128 * MIB, 4);
    assert!(n <= 189 * MIB - 112 * MIB, "n stopped at {n}");
    assert_eq!(fill(&e, "m", 0, 40 * MIB, 5), 40 * MIB);
    assert_eq!(fill(&e, "m", 0, 40 * MIB, 6), 40 * MIB);
    check(&e, "m", 40 * MIB, 6);
    check(&e, "n", n, 4);
    e.check_invariants().unwrap();
}
