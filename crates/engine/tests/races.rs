//! The name-to-fence race (issue 12, section 3), made to happen in one
//! chosen order: a management call resolves LUN "a", and before it takes the
//! fence another client deletes "a", creates a new "a" and starts a write to
//! it. The call must not run on the new "a" while that write is in flight:
//! it waits for the write's fence, then runs on the LUN the name now means.
//!
//! Before the fix each case returned at once, beside the in-flight write
//! (a shrink or delete could free blocks the write was filling).

use engine::sim::{FaultPlan, HookPoint, SimData, SimStore};
use engine::{Engine, EngineConfig, Error, RangeEntry};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn pool() -> Arc<Engine> {
    let plan = FaultPlan::new(7);
    let config = EngineConfig {
        background: false,
        ..EngineConfig::default()
    };
    let e = Engine::open_with(
        Box::new(SimData::new(plan.clone())),
        Box::new(SimStore::new(plan)),
        64 * MIB / 4096,
        config,
    )
    .expect("open");
    e.create_lun("src", 4 * MIB).unwrap();
    make_a(&e);
    e
}

/// LUN "a" with some data and a snapshot "s0".
fn make_a(e: &Engine) {
    e.create_lun("a", 4 * MIB).unwrap();
    let t = e.resolve("a").unwrap();
    e.write(t, 0, &[0xaa; 65536], false).unwrap();
    e.create_snapshot("a", "s0").unwrap();
}

/// Runs `op` with the race arranged; returns what it answered.
fn race<T: Send + 'static>(
    name: &str,
    op: impl FnOnce(&Engine) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let e = pool();
    let old = e.lun_info("a").unwrap().id;
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let e2 = e.clone();
    e.sim_hook(HookPoint::FenceResolved, move || {
        // Another client, in the window: delete "a", create a new "a", and
        // start a write to it that stops between its data and its map.
        e2.delete_lun("a", true).unwrap();
        make_a(&e2);
        let e3 = e2.clone();
        std::thread::spawn(move || {
            let in_flight = e3.sim_hold_fence("a").unwrap();
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
            drop(in_flight);
        });
        held_rx.recv().unwrap();
    });
    let (done_tx, done_rx) = mpsc::channel();
    let e2 = e.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(op(&e2));
    });
    if let Ok(r) = done_rx.recv_timeout(Duration::from_millis(300)) {
        panic!(
            "{name} ran beside an in-flight write to the new LUN \"a\": {:?}",
            r.err()
        );
    }
    release_tx.send(()).unwrap();
    let r = done_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{name} did not finish once the write was done"));
    assert_ne!(
        e.lun_info("a").map(|l| l.id).ok(),
        Some(old),
        "the old LUN is gone"
    );
    e.flush().unwrap();
    e.check_invariants().unwrap();
    r
}

#[test]
fn shrink_waits_for_the_new_luns_write() {
    let info = race("resize", |e| e.resize_lun("a", MIB, true)).unwrap();
    assert_eq!(info.size_bytes, MIB);
}

#[test]
fn delete_waits_for_the_new_luns_write() {
    race("delete", |e| e.delete_lun("a", true)).unwrap();
}

#[test]
fn snapshot_waits_for_the_new_luns_write() {
    race("snapshot", |e| e.create_snapshot("a", "s1")).unwrap();
}

#[test]
fn group_snapshot_waits_for_the_new_luns_write() {
    race("group snapshot", |e| {
        e.create_group_snapshot("g", &["src".to_string(), "a".to_string()])
    })
    .unwrap();
}

#[test]
fn restore_waits_for_the_new_luns_write() {
    race("restore", |e| e.restore_snapshot("a", "s0")).unwrap();
}

#[test]
fn range_clone_waits_for_the_new_luns_write() {
    let entry = RangeEntry {
        source: "src".into(),
        source_offset: 0,
        target_offset: 0,
        length: MIB,
    };
    race("range clone", move |e| e.clone_ranges("a", &[entry])).unwrap();
}

/// Found by the simulation (tests/vopr.rs, seed 184 before the fix): a
/// reclaim job that finished between a snapshot's removal becoming durable
/// and the removal setting up its own job cleared the LUN's "garbage
/// here" flag, and the next commit persisted the flag cleared beside
/// history versions no snapshot sees. After a crash nobody would have
/// reclaimed them, and the pool's own open check refuses such a state.
#[test]
fn a_reclaim_job_that_ends_beside_a_snapshot_removal_leaves_the_flag_set() {
    let e = pool();
    let t = e.resolve("a").unwrap();
    e.write(t, 0, &[1; 4096], false).unwrap();
    e.create_snapshot("a", "s1").unwrap();
    e.write(t, 0, &[2; 4096], false).unwrap();
    e.create_snapshot("a", "s2").unwrap();
    e.write(t, 0, &[3; 4096], false).unwrap();
    // A job for s1, not run yet.
    e.delete_snapshot("a", "s1").unwrap();
    let e2 = e.clone();
    e.sim_hook(HookPoint::SnapshotRemovalDurable, move || e2.run_jobs());
    e.delete_snapshot("a", "s2").unwrap();
    e.flush().unwrap();
    let check = e.check_pool().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    e.run_jobs();
    e.flush().unwrap();
    let check = e.check_pool().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}
