//! `--only devices`, parity rows (issue 14, decision 030): on one pool of
//! six device files, a `parity:4+2` LUN against a `none` LUN on the same
//! devices, in-process, same run, rounds alternating:
//!
//! - sequential 1 MiB writes (whole stripes, parity computed), MB/s of data,
//!   and against writing the six device files directly with as many raw
//!   bytes (1.5 × the data), buffered, each ending with fdatasync;
//! - 4 KiB random reads (checksums verified) and 4 KiB random overwrites
//!   (each a whole stripe), ops/s.

use super::devices::{device_file, median, open_devices};
use super::reads::rate;
use super::{fresh_dir, Opts, Row, MIB};
use engine::{Engine, BLOCK_SIZE};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io::Write;
use std::time::Instant;

const ROUNDS: usize = 3;

/// Writes `[0, bytes)` of a LUN 1 MiB at a time and commits: MB/s.
fn write_all(e: &Engine, lun: &str, bytes: u64, chunk: &[u8]) -> f64 {
    let t = e.resolve(lun).expect("resolve");
    let t0 = Instant::now();
    let mut at = 0;
    while at < bytes {
        e.write(t, at, chunk, false).expect("write");
        at += MIB;
    }
    e.flush().expect("flush");
    bytes as f64 / t0.elapsed().as_secs_f64() / 1e6
}

pub(super) fn rows(o: &Opts, rows: &mut Vec<Row>) {
    let mut rng = StdRng::seed_from_u64(30);
    let lun_bytes = if o.quick { 48 * MIB } else { 384 * MIB };
    let ops = if o.quick { 10_000 } else { 50_000 };
    let dir = fresh_dir(&o.dir, "parity");
    let dev_bytes = 3 * lun_bytes;
    let devs: Vec<_> = (0..6)
        .map(|i| device_file(&dir, &format!("d{i}"), dev_bytes))
        .collect();
    let e = open_devices(&dir.join("meta"), &devs);
    e.create_lun_in(
        "parity",
        lun_bytes,
        Some("parity:4+2".parse().expect("class")),
    )
    .expect("create");
    e.create_lun_in("none", lun_bytes, Some("none".parse().expect("class")))
        .expect("create");
    let mut chunk = vec![0u8; MIB as usize];
    rng.fill_bytes(&mut chunk);

    // Sequential writes: each round overwrites the whole LUN (fresh space).
    let raw_dir = fresh_dir(&o.dir, "parity-raw");
    let (mut par, mut none, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        par.push(write_all(&e, "parity", lun_bytes, &chunk));
        none.push(write_all(&e, "none", lun_bytes, &chunk));
        // Six files, 1.5 × the data in all, written at once.
        let per = lun_bytes * 3 / 2 / 6;
        let t0 = Instant::now();
        std::thread::scope(|scope| {
            for i in 0..6 {
                let path = raw_dir.join(format!("r{i}"));
                let chunk = &chunk;
                scope.spawn(move || {
                    let mut f = std::fs::File::create(path).expect("raw file");
                    let mut left = per;
                    while left > 0 {
                        let n = left.min(MIB) as usize;
                        f.write_all(&chunk[..n]).expect("raw write");
                        left -= n as u64;
                    }
                    f.sync_data().expect("raw sync");
                });
            }
        });
        raw.push(lun_bytes as f64 / t0.elapsed().as_secs_f64() / 1e6);
    }
    let _ = std::fs::remove_dir_all(&raw_dir);
    let (p, n, r) = (median(&mut par), median(&mut none), median(&mut raw));
    rows.push(Row {
        what: "Sequential 1 MiB writes in-process, `parity:4+2` LUN on 6 devices, MB/s of data".into(),
        ours: format!("{p:.0}"),
        baseline: format!("the 6 device files written directly with the same raw bytes: {r:.0}; `none` LUN on the same devices: {n:.0}"),
        ratio: format!("{:.2}× raw", p / r),
        goal: "(information)".into(),
    });

    // Random 4 KiB reads and overwrites.
    let blocks = lun_bytes / BLOCK_SIZE;
    let offsets: Vec<u64> = (0..ops)
        .map(|_| rng.gen_range(0..blocks) * BLOCK_SIZE)
        .collect();
    let (tp, tn) = (
        e.resolve("parity").expect("resolve"),
        e.resolve("none").expect("resolve"),
    );
    let (mut ours, mut base, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let b = rate(1, &offsets, |off, buf| e.read(tn, off, buf).expect("read"));
        let d = rate(1, &offsets, |off, buf| e.read(tp, off, buf).expect("read"));
        base.push(b);
        ours.push(d);
        ratios.push(d / b);
    }
    rows.push(Row {
        what: "4 KiB random reads in-process, `parity:4+2` LUN on 6 devices, ops/s".into(),
        ours: format!("{:.0}", median(&mut ours)),
        baseline: format!("`none` LUN on the same devices {:.0}", median(&mut base)),
        ratio: format!("{:.2}×", median(&mut ratios)),
        goal: "(information)".into(),
    });
    let block = &chunk[..BLOCK_SIZE as usize];
    let writes = &offsets[..ops / 4];
    let (mut ours, mut base, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let timed = |t| {
            let t0 = Instant::now();
            for &off in writes {
                e.write(t, off, block, false).expect("write");
            }
            e.flush().expect("flush");
            writes.len() as f64 / t0.elapsed().as_secs_f64()
        };
        let b = timed(tn);
        let d = timed(tp);
        base.push(b);
        ours.push(d);
        ratios.push(d / b);
    }
    rows.push(Row {
        what: "4 KiB random overwrites in-process, `parity:4+2` LUN on 6 devices (a stripe each), ops/s".into(),
        ours: format!("{:.0}", median(&mut ours)),
        baseline: format!("`none` LUN on the same devices {:.0}", median(&mut base)),
        ratio: format!("{:.2}×", median(&mut ratios)),
        goal: "(information)".into(),
    });
    e.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}
