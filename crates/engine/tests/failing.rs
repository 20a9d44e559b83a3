//! A failing device or a bug fails the pool at once, loudly, and nothing
//! waits for ever: every later FLUSH, write and management call answers an
//! error, and close returns (DESIGN.md, "Failing loudly"; decision 015).
//!
//! Tests unwind on panic (the release and dev profiles abort), so a panic
//! injected here shows what the engine does with the state it leaves.

use engine::sim::{Fault, FaultPlan, SimData, SimStore};
use engine::{Engine, EngineConfig, Error, Target};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

struct Pool {
    engine: Arc<Engine>,
    data_plan: FaultPlan,
    store_plan: FaultPlan,
    store: SimStore,
}

fn pool(background: bool) -> Pool {
    let (data_plan, store_plan) = (FaultPlan::new(1), FaultPlan::new(2));
    let store = SimStore::new(store_plan.clone());
    let config = EngineConfig {
        background,
        ..EngineConfig::default()
    };
    let engine = Engine::open_with(
        Box::new(SimData::new(data_plan.clone())),
        Box::new(store.clone()),
        64 * MIB / 4096,
        config,
    )
    .expect("open");
    engine.create_lun("a", 8 * MIB).unwrap();
    engine.flush().unwrap();
    Pool {
        engine,
        data_plan,
        store_plan,
        store,
    }
}

/// Runs `f` on another thread and insists it returns within `secs`.
fn bounded<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s"))
}

fn target(e: &Engine) -> Target {
    e.resolve("a").unwrap()
}

/// Every kind of call answers "pool failed", none waits, and close returns.
fn assert_failed(e: &Arc<Engine>, cause: &str) {
    let e2 = e.clone();
    let flushed = bounded(10, "FLUSH after the failure", move || e2.flush());
    match flushed {
        Err(Error::PoolFailed(why)) => assert!(why.contains(cause), "{why}"),
        other => panic!("flush: {other:?}"),
    }
    let e2 = e.clone();
    let calls = bounded(10, "calls after the failure", move || {
        let t = Target::Lun(engine::LunId(1));
        vec![
            e2.write(t, 0, &[1u8; 4096], false).map(drop),
            e2.write(t, 0, &[1u8; 4096], true).map(drop),
            e2.create_lun("b", MIB).map(drop),
            e2.create_snapshot("a", "s").map(drop),
            e2.resize_lun("a", 16 * MIB, false).map(drop),
        ]
    });
    for r in calls {
        assert!(matches!(r, Err(Error::PoolFailed(_))), "{r:?}");
    }
    let e2 = e.clone();
    let closed = bounded(30, "close after the failure", move || e2.close());
    assert!(closed.is_err(), "close must report the failure");
}

#[test]
fn a_panic_in_a_commit_fails_the_pool_and_wakes_every_waiter() {
    let p = pool(false);
    let e = p.engine.clone();
    e.write(target(&e), 0, &[9u8; 8192], false).unwrap();
    p.store_plan.inject_after(1, Fault::Panic);
    let e2 = e.clone();
    let panicked = std::thread::spawn(move || e2.flush()).join();
    assert!(
        panicked.is_err(),
        "the injected panic must reach the caller"
    );
    assert_failed(&e, "panic interrupted a commit");
}

#[test]
fn a_panic_in_a_data_write_fails_the_pool() {
    let p = pool(false);
    let e = p.engine.clone();
    p.data_plan.inject_after(1, Fault::Panic);
    let e2 = e.clone();
    let panicked = std::thread::spawn(move || e2.write(target(&e2), 0, &[3u8; 4096], false)).join();
    assert!(panicked.is_err());
    // The write held no state lock when the device panicked, so no state
    // changed; but a backend that panicked is not trusted either way.
    let e2 = e.clone();
    let written = bounded(10, "a write after the panic", move || {
        e2.write(target(&e2), 0, &[3u8; 4096], false)
    });
    // The pool may still serve (nothing was half changed) — but then a
    // commit must work and keep it consistent.
    if written.is_ok() {
        e.flush().unwrap();
        e.check_invariants().unwrap();
    }
}

#[test]
fn a_background_thread_that_panics_fails_the_pool() {
    let p = pool(true);
    let e = p.engine.clone();
    p.store_plan.inject_after(1, Fault::Panic);
    // Writes without FUA: the commit thread, not this one, commits them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0u64;
    let t = target(&e);
    let why = loop {
        match e.write(t, (i % 64) * 4096, &[7u8; 4096], false) {
            Ok(()) => {}
            Err(Error::PoolFailed(why)) => break why,
            Err(other) => panic!("{other:?}"),
        }
        i += 1;
        assert!(Instant::now() < deadline, "the pool never failed");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(why.contains("panic"), "{why}");
    assert_failed(&e, "panic");
}

#[test]
fn a_store_error_fails_the_pool_at_once() {
    for fault in [Fault::Eio, Fault::NoSpace, Fault::Crash] {
        let p = pool(false);
        let e = p.engine.clone();
        e.write(target(&e), 0, &[5u8; 4096], false).unwrap();
        p.store_plan.inject_after(1, fault);
        let r = e.flush();
        assert!(matches!(r, Err(Error::PoolFailed(_))), "{fault:?}: {r:?}");
        assert_failed(&e, "committing metadata");
    }
}

#[test]
fn a_store_that_stops_working_silently_fails_the_pool() {
    // Foreground: the next FLUSH refuses before telling the store anything.
    let p = pool(false);
    let e = p.engine.clone();
    e.write(target(&e), 0, &[5u8; 4096], false).unwrap();
    p.store.break_store("the flush worker stopped");
    assert_failed(&e, "flush worker stopped");

    // Idle, in the background: noticed within the check interval.
    let p = pool(true);
    let e = p.engine.clone();
    p.store.break_store("the flush worker stopped");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(e.pool_status(), Err(Error::PoolFailed(_))) {
        assert!(Instant::now() < deadline, "an idle pool never noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_failed(&e, "flush worker stopped");
}

#[test]
fn data_write_eio_fails_the_pool_but_enospc_is_a_clean_refusal() {
    let p = pool(false);
    let e = p.engine.clone();
    e.write(target(&e), 0, &[1u8; 4096], false).unwrap();
    e.flush().unwrap();
    p.data_plan.inject_after(1, Fault::NoSpace);
    let r = e.write(target(&e), 4096, &[2u8; 4096], false);
    assert!(matches!(r, Err(Error::NoSpace(_))), "{r:?}");
    e.write(target(&e), 4096, &[2u8; 4096], true).unwrap();
    e.check_invariants().unwrap();

    p.data_plan.inject_after(1, Fault::Eio);
    let r = e.write(target(&e), 8192, &[3u8; 4096], false);
    assert!(matches!(r, Err(Error::PoolFailed(_))), "{r:?}");
    assert_failed(&e, "writing the data file");

    // A sync that fails is a failed pool too.
    let p = pool(false);
    let e = p.engine.clone();
    e.write(target(&e), 0, &[1u8; 4096], false).unwrap();
    p.data_plan.inject_after(1, Fault::Eio);
    assert_failed(&e, "syncing the data file");
}

/// The real store and data file, removed under a running engine: before,
/// fjall's worker crashed, writes and FLUSH went on succeeding into files
/// nobody would read again, and close never returned.
#[test]
fn removed_files_fail_the_pool_and_close_returns() {
    for victim in ["meta", "data"] {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open_dir(dir.path(), Some(64 * MIB), EngineConfig::default()).unwrap();
        e.create_lun("a", 8 * MIB).unwrap();
        e.write(target(&e), 0, &[4u8; 65536], true).unwrap();
        let path = dir.path().join(victim);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        // An idle pool notices by itself.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(e.pool_status(), Err(Error::PoolFailed(_))) {
            assert!(Instant::now() < deadline, "{victim}: never noticed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let cause = if victim == "meta" {
            "metadata directory was removed"
        } else {
            "data file was removed"
        };
        assert_failed(&e, cause);
    }
}
