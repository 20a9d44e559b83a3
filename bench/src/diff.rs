//! `--only diff`: what a mirror's incremental costs the source to find. A
//! LUN written at random in 4 KiB blocks (one extent each), a snapshot,
//! 1 % of its blocks rewritten, another snapshot: `snapshot_diff` between
//! the two (which visits only the pages changed since the base) beside a
//! walk of every extent of the LUN (the difference from nothing, which
//! visits them all).

use super::{fresh_dir, ms, open_engine, Opts, Row, GIB, MIB};
use engine::{Engine, BLOCK_SIZE};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn walk(e: &Engine, base: Option<&str>, target: &str) -> (Duration, u64) {
    let t = Instant::now();
    let mut from = 0;
    let mut extents = 0;
    loop {
        let chunk = e
            .snapshot_diff(
                "vm",
                base,
                Some(target),
                false,
                from,
                engine::DIFF_EXTENTS_MAX,
            )
            .unwrap();
        extents += chunk.extents.len() as u64;
        match chunk.next_block {
            Some(n) => from = n,
            None => return (t.elapsed(), extents),
        }
    }
}

pub(super) fn bench(o: &Opts) {
    let size = if o.quick { 64 * MIB } else { GIB };
    let dir = fresh_dir(&o.dir, "diff");
    let e = open_engine(&dir, size * 3);
    e.create_lun("vm", size).unwrap();
    let t = e.resolve("vm").unwrap();
    let blocks = size / BLOCK_SIZE;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Every block written once, in random order, with a pattern that
    // keeps neighbours from merging into longer extents.
    let mut order: Vec<u64> = (0..blocks).collect();
    order.shuffle(&mut rng);
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    for &b in &order {
        block[..8].copy_from_slice(&(b + 1).to_le_bytes());
        e.write(t, b * BLOCK_SIZE, &block, false).unwrap();
    }
    e.create_snapshot("vm", "s1").unwrap();
    for _ in 0..blocks / 100 {
        let b = rng.gen_range(0..blocks);
        block[8] = block[8].wrapping_add(1);
        e.write(t, b * BLOCK_SIZE, &block, false).unwrap();
    }
    e.create_snapshot("vm", "s2").unwrap();
    // The same amount again, but clustered: 1 % of the LUN in 1 MiB runs
    // (a log, a database's hot table, an OS update).
    let runs = blocks / 100 / 256;
    for _ in 0..runs.max(1) {
        let at = rng.gen_range(0..blocks / 256) * 256;
        e.write(t, at * BLOCK_SIZE, &vec![0x77u8; MIB as usize], false)
            .unwrap();
    }
    e.create_snapshot("vm", "s3").unwrap();
    let mut rows = Vec::new();
    for (what, base, target) in [
        ("1 % of its 4 KiB blocks at random", "s1", "s2"),
        ("1 % in 1 MiB runs", "s2", "s3"),
    ] {
        let mut changed = Vec::new();
        let mut everything = Vec::new();
        let mut n_changed = 0;
        for _ in 0..5 {
            let (d, n) = walk(&e, Some(base), target);
            changed.push(d);
            n_changed = n;
            everything.push(walk(&e, None, target).0);
        }
        let (c, a) = (
            super::percentile(&mut changed, 0.5),
            super::percentile(&mut everything, 0.5),
        );
        rows.push(Row {
            what: format!(
                "diff of a {} MiB LUN of {blocks} extents, {what}: {n_changed} changed extents",
                size / MIB
            ),
            ours: ms(c),
            baseline: format!("{} (walk of every extent)", ms(a)),
            ratio: format!("{:.3}×", c.as_secs_f64() / a.as_secs_f64()),
            goal: "O(changed extents)".into(),
        });
    }
    super::print_table(&rows);
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}
