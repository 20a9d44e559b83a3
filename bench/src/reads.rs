//! `--only reads`: in-process 4 KiB random reads against pread of a plain
//! file of the same size, on one thread and on two, the read path alone
//! (issue 12, section 4: goal 0.9× pread on one thread).
//!
//! Both sides hold the same data, written the same way (4 KiB first-touch
//! writes at random offsets), and are read at the same offsets in the same
//! order; reads alternate between the two in rounds, and the ratio is the
//! median of the rounds' ratios, because this VM's noise (±15 % between
//! runs) would otherwise dominate figures this small.

use super::{fresh_dir, open_engine, Opts, Row, MIB};
use engine::BLOCK_SIZE;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// Rounds per side; the medians are reported.
const ROUNDS: usize = 15;

pub(super) fn rows(o: &Opts, rows: &mut Vec<Row>) {
    let lun_bytes = if o.quick { 256 * MIB } else { 1024 * MIB };
    let ops = if o.quick { 100_000 } else { 400_000 };
    let blocks = lun_bytes / BLOCK_SIZE;
    let mut rng = StdRng::seed_from_u64(7);
    let offsets: Vec<u64> = (0..ops)
        .map(|_| rng.gen_range(0..blocks) * BLOCK_SIZE)
        .collect();
    let buf = vec![0x33u8; BLOCK_SIZE as usize];

    let raw_dir = fresh_dir(&o.dir, "reads-raw");
    let raw = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(raw_dir.join("raw"))
        .expect("create the raw file");
    raw.set_len(lun_bytes).expect("size the raw file");
    for &off in &offsets {
        raw.write_all_at(&buf, off).expect("pwrite");
    }

    let dir = fresh_dir(&o.dir, "reads");
    let e = open_engine(&dir, lun_bytes * 3);
    e.create_lun("lun", lun_bytes).expect("create the LUN");
    let t = e.resolve("lun").expect("resolve the LUN");
    for &off in &offsets {
        e.write(t, off, &buf, false).expect("write");
    }
    e.flush().expect("flush");

    for threads in [1usize, 2] {
        let (mut raw_rates, mut our_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let raw_rate = rate(threads, &offsets, |off, b| {
                raw.read_exact_at(b, off).expect("pread")
            });
            let our_rate = rate(threads, &offsets, |off, b| e.read(t, off, b).expect("read"));
            raw_rates.push(raw_rate);
            our_rates.push(our_rate);
            ratios.push(our_rate / raw_rate);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[ROUNDS / 2]
        };
        let (raw_rate, our_rate) = (median(&mut raw_rates), median(&mut our_rates));
        // The ratio is the median of each round's own ratio: the two sides
        // of one round ran back to back, on the same machine weather.
        let ratio = median(&mut ratios);
        rows.push(Row {
            what: format!(
                "4 KiB random reads, {threads} thread(s), {} MiB LUN written at random, ops/s",
                lun_bytes / MIB
            ),
            ours: format!("{our_rate:.0}"),
            baseline: format!("pread {raw_rate:.0}"),
            ratio: format!("{ratio:.2}×"),
            goal: if threads == 1 {
                "≥ 0.9×".into()
            } else {
                "(information)".into()
            },
        });
    }
    e.close().expect("close");
    drop(e);
    drop::<File>(raw);
    let _ = std::fs::remove_dir_all(&raw_dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads at every offset, split between `threads` threads: ops per second.
pub(super) fn rate(threads: usize, offsets: &[u64], read: impl Fn(u64, &mut [u8]) + Sync) -> f64 {
    let per = offsets.len().div_ceil(threads);
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for part in offsets.chunks(per) {
            let read = &read;
            scope.spawn(move || {
                let mut b = vec![0u8; BLOCK_SIZE as usize];
                for &off in part.iter().rev() {
                    read(off, &mut b);
                }
            });
        }
    });
    offsets.len() as f64 / t0.elapsed().as_secs_f64()
}

/// The reads rows alone.
pub(super) fn bench(o: &Opts) {
    let mut out = Vec::new();
    rows(o, &mut out);
    let _ = std::fs::remove_dir_all(&o.dir);
    super::print_table(&out);
}
