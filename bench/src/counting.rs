//! `--only counting`: what counting one request for the metrics costs
//! (issue 16), in-process, where it is largest relative to the work: 4 KiB
//! random reads from the engine with and without the count the NBD export
//! does around each request (a clock reading before, `LunIo::record`
//! after: a second reading, latency histogram, bytes), on one thread and on two threads
//! counting into the same LUN (the shared cache lines' worst case).
//! Rounds alternate; the ratio is the median of the rounds' ratios.
//! Over NBD the same count is a smaller share still (bench/metrics.sh).

use super::reads::rate;
use super::{fresh_dir, open_engine, Opts, Row, MIB};
use engine::BLOCK_SIZE;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;
use telemetry::{LunIo, Op};

const ROUNDS: usize = 15;

pub(super) fn rows(o: &Opts, rows: &mut Vec<Row>) {
    let lun_bytes = if o.quick { 64 * MIB } else { 256 * MIB };
    let ops = if o.quick { 50_000 } else { 400_000 };
    let blocks = lun_bytes / BLOCK_SIZE;
    let mut rng = StdRng::seed_from_u64(11);
    let offsets: Vec<u64> = (0..ops)
        .map(|_| rng.gen_range(0..blocks) * BLOCK_SIZE)
        .collect();
    let dir = fresh_dir(&o.dir, "counting");
    let e = open_engine(&dir, lun_bytes * 3);
    e.create_lun("lun", lun_bytes).expect("create the LUN");
    let t = e.resolve("lun").expect("resolve the LUN");
    let buf = vec![0x44u8; BLOCK_SIZE as usize];
    for &off in &offsets {
        e.write(t, off, &buf, false).expect("write");
    }
    e.flush().expect("flush");
    let io = LunIo::default();

    for threads in [1usize, 2] {
        let (mut plain, mut counted, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let p = rate(threads, &offsets, |off, b| e.read(t, off, b).expect("read"));
            let c = rate(threads, &offsets, |off, b| {
                let started = telemetry::io::start();
                let r = e.read(t, off, b);
                io.record(Op::Read, b.len() as u64, started, r.is_ok());
                r.expect("read");
            });
            plain.push(p);
            counted.push(c);
            ratios.push(c / p);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[ROUNDS / 2]
        };
        let (p, c, ratio) = (
            median(&mut plain),
            median(&mut counted),
            median(&mut ratios),
        );
        rows.push(Row {
            what: format!(
                "4 KiB random reads in-process, counted as the NBD export counts them, {threads} thread(s), ops/s (ns per op: {:.0} counted, {:.0} not)",
                1e9 * threads as f64 / c,
                1e9 * threads as f64 / p
            ),
            ours: format!("{c:.0}"),
            baseline: format!("uncounted {p:.0}"),
            ratio: format!("{ratio:.3}×"),
            goal: "(over NBD: ≥ 0.98×)".into(),
        });
    }
    // The count alone, nothing else in the loop.
    let n = if o.quick { 1_000_000 } else { 10_000_000 };
    let t0 = Instant::now();
    for _ in 0..n {
        io.record(Op::Write, 4096, telemetry::io::start(), true);
    }
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    rows.push(Row {
        what: "one count alone (two clock readings, histogram, bytes), one thread, ns".into(),
        ours: format!("{ns:.1}"),
        baseline: "-".into(),
        ratio: "-".into(),
        goal: "(information)".into(),
    });
    e.close().expect("close");
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

pub(super) fn bench(o: &Opts) {
    let mut out = Vec::new();
    rows(o, &mut out);
    let _ = std::fs::remove_dir_all(&o.dir);
    super::print_table(&out);
}
