//! The online pool check (`blockfork pool check`): it finds what is wrong
//! in the committed metadata and in the live maps, while I/O goes on, and
//! the metadata boundary's paired checks refuse a bad record at open.

use engine::sim::{FaultPlan, SimData, SimStore};
use engine::{Engine, EngineConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn open(store: &SimStore, data: &SimData) -> Arc<Engine> {
    let config = EngineConfig {
        background: false,
        ..EngineConfig::default()
    };
    Engine::open_with(
        Box::new(data.clone()),
        Box::new(store.clone()),
        64 * MIB / 4096,
        config,
    )
    .expect("open")
}

fn populated() -> (Arc<Engine>, SimStore, SimData) {
    let plan = FaultPlan::new(3);
    let (store, data) = (SimStore::new(plan.clone()), SimData::new(plan));
    let e = open(&store, &data);
    e.create_lun("a", 8 * MIB).unwrap();
    let t = e.resolve("a").unwrap();
    for i in 0..64u64 {
        e.write(t, i * 8192, &[i as u8; 4096], false).unwrap();
    }
    e.create_snapshot("a", "s").unwrap();
    e.write(t, 0, &[0xee; 65536], false).unwrap();
    e.create_clones("a@s", &["c".to_string()], false).unwrap();
    (e, store, data)
}

#[test]
fn a_sound_pool_checks_clean_while_io_goes_on() {
    let (e, _store, _data) = populated();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let (e2, stop2, written2) = (e.clone(), stop.clone(), written.clone());
    let writer = std::thread::spawn(move || {
        let t = e2.resolve("c").unwrap();
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            e2.write(t, (n % 512) * 4096, &[n as u8; 4096], n.is_multiple_of(7))
                .unwrap();
            n += 1;
            written2.store(n, Ordering::Relaxed);
        }
    });
    // Checks run while the writer writes: before, between and after them.
    let mut checks = 0;
    let start = written.load(Ordering::Relaxed);
    while checks < 5 || written.load(Ordering::Relaxed) < start + 100 {
        let r = e.check_pool().unwrap();
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!((r.luns, r.snapshots), (2, 1));
        assert!(r.map_entries > 0 && r.epoch > 1, "{r:?}");
        checks += 1;
        assert!(
            checks < 10_000,
            "the writer made no progress beside the checks"
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    e.check_invariants().unwrap();
}

#[test]
fn a_bad_committed_record_is_found_online_and_refused_at_open() {
    let (e, store, data) = populated();
    e.flush().unwrap();
    // A head extent whose length runs far past its LUN (key tag b'h').
    store.tamper(|records| {
        let (_, v) = records
            .iter_mut()
            .find(|(k, _)| k.first() == Some(&b'h'))
            .expect("a head extent");
        v[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    let r = e.check_pool().unwrap();
    assert!(!r.ok);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("committed metadata does not load") && p.contains("beyond")),
        "{:?}",
        r.problems
    );
    // The live maps are sound: the problem is named as the committed one's.
    assert!(
        r.problems.iter().all(|p| !p.starts_with("live maps")),
        "{:?}",
        r.problems
    );
    e.close().unwrap();
    drop(e);
    // The decode half of the pair: the pool refuses to open on it.
    let config = EngineConfig {
        background: false,
        ..EngineConfig::default()
    };
    let err = Engine::open_with(Box::new(data), Box::new(store), 64 * MIB / 4096, config)
        .err()
        .expect("a pool with a bad record must not open");
    assert!(err.to_string().contains("beyond"), "{err}");
}

#[test]
fn check_pool_on_a_failed_pool_answers_the_failure() {
    let (e, store, _data) = populated();
    store.break_store("the flush worker stopped");
    let r = e.check_pool();
    assert!(matches!(r, Err(engine::Error::PoolFailed(_))), "{r:?}");
}
