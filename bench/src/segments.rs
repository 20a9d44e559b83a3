//! `--only segments`: the segment size of a pool on devices (issue 14,
//! decision 032). For each candidate size, on two device files, a
//! `mirror` LUN: sequential 1 MiB writes and 4 KiB random overwrites
//! (MB/s, ops/s, in-process), the rebuild of a lost device onto a spare
//! (MB/s of used data), and what the size costs in metadata (store
//! records per TiB) and in space a class can strand (one part-filled
//! store per class: the segment size times its devices).

use super::devices::{config, device_file, median};
use super::{fresh_dir, Opts, MIB};
use engine::{DeviceOptions, Engine, BLOCK_SIZE};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const ROUNDS: usize = 3;

fn open(meta: &Path, devices: &[std::path::PathBuf], segment: u64) -> Arc<Engine> {
    let opts = DeviceOptions {
        segment_bytes: segment,
        force: true,
    };
    Engine::open_devices(meta, devices, opts, config()).expect("open the pool on devices")
}

pub(super) fn bench(o: &Opts) {
    let lun = if o.quick { 128 * MIB } else { 1024 * MIB };
    let sizes: &[u64] = if o.quick {
        &[4, 16, 64]
    } else {
        &[4, 16, 64, 256]
    };
    let mut chunk = vec![0u8; MIB as usize];
    StdRng::seed_from_u64(32).fill_bytes(&mut chunk);
    let block = chunk[..BLOCK_SIZE as usize].to_vec();
    let ops = if o.quick { 5_000 } else { 40_000 };
    let mut rng = StdRng::seed_from_u64(33);
    let offsets: Vec<u64> = (0..ops)
        .map(|_| rng.gen_range(0..lun / BLOCK_SIZE) * BLOCK_SIZE)
        .collect();
    println!("| segment size | sequential 1 MiB writes, MB/s | 4 KiB random overwrites, ops/s | rebuild, MB/s of used data | store records per TiB of mirror data | space one part-filled mirror store can strand |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &seg_mib in sizes {
        let seg = seg_mib * MIB;
        let (mut seq, mut rand, mut rebuild) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let dir = fresh_dir(&o.dir, &format!("segments-{seg_mib}-{round}"));
            let dev_bytes = 3 * lun + 4 * seg;
            let devs = [
                device_file(&dir, "d0", dev_bytes),
                device_file(&dir, "d1", dev_bytes),
            ];
            let e = open(&dir.join("meta"), &devs, seg);
            e.create_lun_in("m", lun, Some("mirror".parse().expect("class")))
                .expect("create");
            let t = e.resolve("m").expect("resolve");
            let t0 = Instant::now();
            for at in (0..lun).step_by(MIB as usize) {
                e.write(t, at, &chunk, false).expect("write");
            }
            e.flush().expect("flush");
            seq.push(lun as f64 / t0.elapsed().as_secs_f64() / 1e6);
            let t0 = Instant::now();
            for &off in &offsets {
                e.write(t, off, &block, false).expect("write");
            }
            e.flush().expect("flush");
            rand.push(ops as f64 / t0.elapsed().as_secs_f64());
            e.run_jobs();
            e.flush().expect("flush");
            let used = e.pool_status().expect("status").used_bytes / 2;
            e.close().expect("close");
            drop(e);
            // Lose d1; rebuild onto a spare.
            std::fs::remove_file(&devs[1]).expect("remove");
            let spare = device_file(&dir, "spare", dev_bytes);
            let e = open(&dir.join("meta"), &[], seg);
            let t0 = Instant::now();
            e.replace_device(&devs[1], &spare, true).expect("replace");
            while e.run_move_batch() != engine::reloc::MoveStep::Idle
                || e.move_status().expect("status").state == "running"
            {}
            e.flush().expect("flush");
            rebuild.push(used as f64 / t0.elapsed().as_secs_f64() / 1e6);
            e.close().expect("close");
            drop(e);
            let _ = std::fs::remove_dir_all(&dir);
        }
        let per_tib = (1u64 << 40) / seg;
        println!(
            "| {seg_mib} MiB | {:.0} | {:.0} | {:.0} | {per_tib} | {} MiB |",
            median(&mut seq),
            median(&mut rand),
            median(&mut rebuild),
            2 * seg_mib
        );
    }
    let _ = std::fs::remove_dir_all(&o.dir);
}
