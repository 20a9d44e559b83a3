//! kill -9 the server during writes with periodic FLUSH, restart, and check
//! the crash contract: every write acknowledged before the last completed
//! FLUSH reads back (or a later write of the same block), and snapshots are
//! intact. Several seeds; `CRASH_ROUNDS` for more.

mod common;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BLOCKS: u64 = 512;

/// What the writer knows: per block, every value sent after the last
/// completed flush, and the value the last completed flush covers.
#[derive(Default)]
struct Ledger {
    durable: HashMap<u64, u8>,
    since_flush: HashMap<u64, Vec<u8>>,
}

#[test]
fn kill_9_during_writes_keeps_flushed_writes_and_snapshots() {
    let rounds: u64 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for seed in 0..rounds {
        let tmp = tempfile::tempdir().unwrap();
        let pool = tmp.path().join("pool");
        let mut server = Server::start(&pool, "256M");
        server.cli_ok(&["lun", "create", "vol", "--size", "2M"]);
        let mut rng = StdRng::seed_from_u64(seed);

        // Phase 1: writes and flushes, then a snapshot with no writer running.
        let mut model: HashMap<u64, u8> = HashMap::new();
        {
            let mut c = NbdClient::connect(server.nbd_port, "vol").unwrap();
            for _ in 0..300 {
                let b = rng.gen_range(0..BLOCKS);
                let v: u8 = rng.gen_range(1..=255);
                assert_eq!(c.write(b * 4096, &[v; 4096]).unwrap(), 0);
                model.insert(b, v);
            }
            assert_eq!(c.flush().unwrap(), 0);
        }
        server.cli_ok(&["snapshot", "create", "vol", "before"]);
        let snapshot_model = model.clone();

        // Phase 2: a writer with periodic flushes; kill -9 at a random moment.
        let ledger = Arc::new(Mutex::new(Ledger {
            durable: model.clone(),
            since_flush: HashMap::new(),
        }));
        let port = server.nbd_port;
        let writer_ledger = ledger.clone();
        let writer_seed = rng.gen();
        let writer = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(writer_seed);
            let Ok(mut c) = NbdClient::connect(port, "vol") else {
                return;
            };
            let mut pending: HashMap<u64, u8> = HashMap::new();
            for i in 0..100_000u64 {
                let b = rng.gen_range(0..BLOCKS);
                let v: u8 = rng.gen_range(1..=255);
                // Recorded before sending: a write in flight may land.
                writer_ledger
                    .lock()
                    .unwrap()
                    .since_flush
                    .entry(b)
                    .or_default()
                    .push(v);
                match c.write(b * 4096, &[v; 4096]) {
                    Ok(0) => {
                        pending.insert(b, v);
                    }
                    _ => return,
                }
                if i % 16 == 15 {
                    match c.flush() {
                        Ok(0) => {
                            let mut l = writer_ledger.lock().unwrap();
                            for (b, v) in pending.drain() {
                                l.durable.insert(b, v);
                            }
                            // Values sent before this flush can no longer
                            // show up instead of the flushed ones... except
                            // that later writes may: keep only what follows.
                            l.since_flush.clear();
                        }
                        _ => return,
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..400)));
        server.kill9();
        writer.join().unwrap();

        let mut server = Server::start(&pool, "256M");
        let mut c = NbdClient::connect(server.nbd_port, "vol").unwrap();
        let l = ledger.lock().unwrap();
        for b in 0..BLOCKS {
            let (err, data) = c.read(b * 4096, 4096).unwrap();
            assert_eq!(err, 0);
            let got = data[0];
            assert!(
                data.iter().all(|&x| x == got),
                "seed {seed}: block {b} is torn"
            );
            let durable = l.durable.get(&b).copied().unwrap_or(0);
            let later = l.since_flush.get(&b).is_some_and(|vs| vs.contains(&got));
            assert!(
                got == durable || later,
                "seed {seed}: block {b} reads {got:#x}; flushed value was {durable:#x}"
            );
        }
        drop(c);
        let mut s = NbdClient::connect(server.nbd_port, "vol@before").unwrap();
        for b in 0..BLOCKS {
            let (_, data) = s.read(b * 4096, 4096).unwrap();
            let want = snapshot_model.get(&b).copied().unwrap_or(0);
            assert!(
                data.iter().all(|&x| x == want),
                "seed {seed}: snapshot block {b} changed"
            );
        }
        drop(s);
        let status = server.stop();
        assert!(
            status.success(),
            "SIGTERM exit: {status}: {}",
            server.log_text()
        );
    }
}
