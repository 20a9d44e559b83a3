//! Deep clone chains read through owner indexes (decision 014) exactly as
//! they read level by level: every clone and snapshot of a 12-level chain
//! with data, zeros, trims, shrinks and grows at every level, checked against
//! a byte model while the chain changes under it (writes to levels after
//! their snapshot, restores, a split of a middle level, deletes), then after
//! reopening with indexes off and on again.

use engine::{Engine, EngineConfig, SplitStep, Target, BLOCK_SIZE, SPLIT_BATCH_BLOCKS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

const BS: usize = BLOCK_SIZE as usize;
const LEVELS: usize = 12;

fn open(dir: &std::path::Path, min_levels: usize) -> Arc<Engine> {
    let config = EngineConfig {
        chain_index_min_levels: min_levels,
        split_rate_bytes: 0,
        background: false,
        ..Default::default()
    };
    Engine::open_dir(dir, Some(256 << 20), config).expect("open pool")
}

fn read_all(e: &Engine, export: &str) -> Vec<u8> {
    let t = e.resolve(export).unwrap();
    let mut buf = vec![0u8; e.target_size(t).unwrap() as usize];
    // In pieces of varying size, so runs cross owner boundaries.
    let mut off = 0;
    let mut step = 1;
    while off < buf.len() {
        let n = (step * BS).min(buf.len() - off);
        e.read(t, off as u64, &mut buf[off..off + n]).unwrap();
        off += n;
        step = step % 7 + 1;
    }
    buf
}

struct Chain {
    rng: StdRng,
    /// Expected contents by export name (LUNs and LUN@SNAPSHOT).
    model: BTreeMap<String, Vec<u8>>,
}

impl Chain {
    fn target(e: &Engine, name: &str) -> Target {
        e.resolve(name).unwrap()
    }

    /// Random writes, zero writes, trims on LUN `name`.
    fn scribble(&mut self, e: &Engine, name: &str, ops: usize) {
        let t = Self::target(e, name);
        for _ in 0..ops {
            let data = self.model.get_mut(name).unwrap();
            let blocks = data.len() / BS;
            let at = self.rng.gen_range(0..blocks);
            let n = self.rng.gen_range(1..=(blocks - at).min(8));
            let range = at * BS..(at + n) * BS;
            match self.rng.gen_range(0..6) {
                0 => {
                    e.trim(t, range.start as u64, (n * BS) as u64, false)
                        .unwrap();
                    data[range].fill(0);
                }
                1 => {
                    e.write(t, range.start as u64, &vec![0u8; n * BS], false)
                        .unwrap();
                    data[range].fill(0);
                }
                _ => {
                    let byte: u8 = self.rng.gen_range(1..=255);
                    let buf: Vec<u8> = (0..n * BS).map(|i| byte ^ (i / BS) as u8).collect();
                    e.write(t, range.start as u64, &buf, false).unwrap();
                    data[range].copy_from_slice(&buf);
                }
            }
        }
    }

    fn snapshot(&mut self, e: &Engine, lun: &str, snap: &str) {
        e.create_snapshot(lun, snap).unwrap();
        let data = self.model[lun].clone();
        self.model.insert(format!("{lun}@{snap}"), data);
    }

    fn resize(&mut self, e: &Engine, lun: &str, blocks: usize) {
        e.resize_lun(lun, (blocks * BS) as u64, true).unwrap();
        self.model.get_mut(lun).unwrap().resize(blocks * BS, 0);
    }

    /// Reads everything twice: level by level while the first reads queue
    /// the chains' owner indexes, and through the indexes once the
    /// background job (`run_jobs` here) has built them.
    fn check(&self, e: &Engine, when: &str) {
        self.check_pass(e, &format!("{when}, before the indexes"));
        e.run_jobs();
        self.check_pass(e, &format!("{when}, through the indexes"));
    }

    fn check_pass(&self, e: &Engine, when: &str) {
        for (name, want) in &self.model {
            let got = read_all(e, name);
            if &got != want {
                let first = got
                    .iter()
                    .zip(want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()));
                panic!(
                    "{when}: {name} differs from block {} on (sizes {} / {})",
                    first / BS,
                    got.len(),
                    want.len()
                );
            }
        }
    }
}

fn lvl(i: usize) -> String {
    if i == 0 {
        "base".into()
    } else {
        format!("c{i}")
    }
}

#[test]
fn deep_chains_read_the_same_through_owner_indexes() {
    for seed in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path(), 2);
        let mut m = Chain {
            rng: StdRng::seed_from_u64(seed),
            model: BTreeMap::new(),
        };
        // A few split batches long.
        let blocks = 2 * SPLIT_BATCH_BLOCKS + 100;
        e.create_lun("base", blocks * BLOCK_SIZE).unwrap();
        m.model
            .insert("base".into(), vec![0u8; blocks as usize * BS]);
        m.scribble(&e, "base", 150);
        // And some long runs.
        let t = e.resolve("base").unwrap();
        e.write(t, 0, &vec![0x5a; 200 * BS], false).unwrap();
        m.model.get_mut("base").unwrap()[..200 * BS].fill(0x5a);
        for i in 1..=LEVELS {
            let (parent, me) = (lvl(i - 1), lvl(i));
            m.snapshot(&e, &parent, "s");
            e.create_clones(&format!("{parent}@s"), std::slice::from_ref(&me), false)
                .unwrap();
            let data = m.model[&format!("{parent}@s")].clone();
            m.model.insert(me.clone(), data);
            // Some levels shrink or grow (limits along the chain).
            match i % 4 {
                1 => {
                    let blocks = m.model[&me].len() / BS - m.rng.gen_range(1..8);
                    m.resize(&e, &me, blocks);
                }
                3 => {
                    let blocks = m.model[&me].len() / BS + m.rng.gen_range(1..8);
                    m.resize(&e, &me, blocks);
                }
                _ => {}
            }
            // Every third level writes nothing (skipped by the walk).
            if i % 3 != 2 {
                m.scribble(&e, &me, 30);
            }
            // The parent's head moves on after the snapshot: no clone sees it.
            m.scribble(&e, &parent, 3);
            if i % 5 == 0 {
                m.snapshot(&e, &me, "mid");
                m.scribble(&e, &me, 4);
            }
        }
        m.check(&e, &format!("seed {seed}: built"));

        // A restore of a middle level's head, and more writes everywhere.
        e.restore_snapshot("c5", "mid").unwrap();
        let mid = m.model["c5@mid"].clone();
        m.model.insert("c5".into(), mid);
        for i in (0..=LEVELS).step_by(2) {
            m.scribble(&e, &lvl(i), 2);
        }
        m.check(&e, &format!("seed {seed}: after restore"));

        // Split a middle level batch by batch, reading everything between
        // batches; then drop the top.
        e.start_split("c6").unwrap();
        let mut batches = 0;
        while let SplitStep::Copied(_) = e.run_split_batch() {
            batches += 1;
            assert!(batches < 100, "seed {seed}: the split does not end");
            if e.lun_info("c6").unwrap().parent.is_some() {
                m.check(&e, &format!("seed {seed}: during the split"));
            }
        }
        assert!(batches > 1, "seed {seed}: the split took one batch");
        assert!(
            e.lun_info("c6").unwrap().parent.is_none(),
            "seed {seed}: split of c6 did not finish"
        );
        m.check(&e, &format!("seed {seed}: after the split"));
        e.delete_lun(&lvl(LEVELS), true).unwrap();
        m.model.retain(|k, _| !k.starts_with(&lvl(LEVELS)));
        m.scribble(&e, &lvl(LEVELS - 1), 5);
        m.check(&e, &format!("seed {seed}: after deleting the top"));

        // Level by level after a restart gives the same bytes, and so do
        // indexes rebuilt from what was stored.
        e.flush().unwrap();
        e.close().unwrap();
        drop(e);
        e = open(dir.path(), usize::MAX);
        m.check(&e, &format!("seed {seed}: reopened, no indexes"));
        e.close().unwrap();
        drop(e);
        e = open(dir.path(), 2);
        m.check(&e, &format!("seed {seed}: reopened, indexes"));
        e.check_invariants().unwrap();
    }
}
