//! `--only devices`: a pool on devices (issue 14) against a pool on one data
//! file and against the raw files, in-process, same run:
//!
//! - 4 KiB random reads of a `mirror` LUN on two device files (every
//!   block's checksum verified) against a LUN of a pool on one data file
//!   (no checksums): ops/s, rounds alternating, median ratio.
//! - 4 KiB random overwrites of the same LUNs (a pool on devices redirects
//!   every write and checksums it; the single file overwrites in place).
//! - Rebuild of a lost device onto a spare, used data only, against copying
//!   the same bytes from the surviving device file to a new file (read,
//!   write, fdatasync): MB/s of used data.
//! - Scrub, every copy of every used block, against reading both device
//!   files' used bytes: MB/s of used data.
//!
//! Device files live in `--dir`; the page cache is dropped for them
//! (posix_fadvise) before each timed pass that should come from the disk.

use super::reads::rate;
use super::{fresh_dir, open_engine, Opts, Row, MIB};
use engine::{DeviceOptions, Engine, EngineConfig, BLOCK_SIZE};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const ROUNDS: usize = 5;
const SEGMENT: u64 = 64 * MIB;

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn device_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(bytes))
        .expect("make a device file");
    p
}

/// Drops the page cache's copy of a file (so the next read comes from the
/// disk).
fn uncache(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
        // SAFETY: an advisory call on a descriptor we own; no memory is passed.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

pub(super) fn config() -> EngineConfig {
    EngineConfig {
        background: false,
        scrub_rate_bytes: 0,
        rebuild_rate_bytes: 0,
        ..EngineConfig::default()
    }
}

pub(super) fn open_devices(meta: &Path, devices: &[PathBuf]) -> Arc<Engine> {
    Engine::open_devices(
        meta,
        devices,
        DeviceOptions {
            segment_bytes: SEGMENT,
            force: true,
        },
        config(),
    )
    .expect("open the pool on devices")
}

/// Fills `[0, bytes)` of a LUN with random data, 1 MiB at a time.
pub(super) fn fill(e: &Engine, lun: &str, bytes: u64, rng: &mut StdRng) {
    let t = e.resolve(lun).expect("resolve");
    let mut chunk = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < bytes {
        rng.fill_bytes(&mut chunk);
        e.write(t, at, &chunk, false).expect("fill");
        at += MIB;
    }
    e.flush().expect("flush");
}

pub(super) fn rows(o: &Opts, rows: &mut Vec<Row>) {
    let mut rng = StdRng::seed_from_u64(14);
    let lun_bytes = if o.quick { 64 * MIB } else { 512 * MIB };
    let ops = if o.quick { 20_000 } else { 100_000 };
    let blocks = lun_bytes / BLOCK_SIZE;
    let offsets: Vec<u64> = (0..ops)
        .map(|_| rng.gen_range(0..blocks) * BLOCK_SIZE)
        .collect();

    // The same data in a mirror LUN and a none LUN on two devices, and in a
    // LUN of a pool on one data file.
    let dir = fresh_dir(&o.dir, "devices");
    let dev_bytes = 4 * lun_bytes + SEGMENT;
    let devs = [
        device_file(&dir, "d0", dev_bytes),
        device_file(&dir, "d1", dev_bytes),
    ];
    let e = open_devices(&dir.join("meta"), &devs);
    e.create_lun_in("mirror", lun_bytes, Some("mirror".parse().expect("class")))
        .expect("create");
    let single_dir = fresh_dir(&o.dir, "devices-single");
    let s = open_engine(&single_dir, lun_bytes * 3);
    s.create_lun("file", lun_bytes).expect("create");
    for (pool, lun) in [(&e, "mirror"), (&s, "file")] {
        fill(pool, lun, lun_bytes, &mut StdRng::seed_from_u64(1));
    }
    let (tm, tf) = (
        e.resolve("mirror").expect("resolve"),
        s.resolve("file").expect("resolve"),
    );
    for (name, target) in [("mirror", tm)] {
        let (mut ours, mut base, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let f = rate(1, &offsets, |off, b| s.read(tf, off, b).expect("read"));
            let d = rate(1, &offsets, |off, b| e.read(target, off, b).expect("read"));
            base.push(f);
            ours.push(d);
            ratios.push(d / f);
        }
        rows.push(Row {
            what: format!("4 KiB random reads in-process, `{name}` LUN on 2 devices (checksums verified), ops/s"),
            ours: format!("{:.0}", median(&mut ours)),
            baseline: format!("one data file {:.0}", median(&mut base)),
            ratio: format!("{:.2}×", median(&mut ratios)),
            goal: "(information; ≤ 5 % over NBD)".into(),
        });
    }
    let block = {
        let mut b = vec![0u8; BLOCK_SIZE as usize];
        rng.fill_bytes(&mut b);
        b
    };
    let writes: Vec<u64> = offsets.iter().copied().take(ops / 4).collect();
    for (name, target) in [("mirror", tm)] {
        let (mut ours, mut base, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let t0 = Instant::now();
            for &off in &writes {
                s.write(tf, off, &block, false).expect("write");
            }
            s.flush().expect("flush");
            let f = writes.len() as f64 / t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            for &off in &writes {
                e.write(target, off, &block, false).expect("write");
            }
            e.flush().expect("flush");
            let d = writes.len() as f64 / t0.elapsed().as_secs_f64();
            base.push(f);
            ours.push(d);
            ratios.push(d / f);
        }
        rows.push(Row {
            what: format!("4 KiB random overwrites in-process, `{name}` LUN on 2 devices (redirected, checksummed), ops/s"),
            ours: format!("{:.0}", median(&mut ours)),
            baseline: format!("one data file, in place {:.0}", median(&mut base)),
            ratio: format!("{:.2}×", median(&mut ratios)),
            goal: "(information)".into(),
        });
    }
    s.close().expect("close");
    drop(s);
    let _ = std::fs::remove_dir_all(&single_dir);

    // Scrub: every copy of every used block, from the disk.
    e.run_jobs();
    e.flush().expect("flush");
    let used = {
        let st = e.pool_status().expect("status");
        st.used_bytes
    };
    for d in &devs {
        uncache(d);
    }
    let t0 = Instant::now();
    e.scrub_start().expect("scrub");
    while e.run_scrub_batch() != engine::scrub::ScrubStep::Idle
        || e.scrub_status().expect("status").state == "running"
    {}
    let scrub_secs = t0.elapsed().as_secs_f64();
    let scrubbed = e.scrub_status().expect("status").scanned_bytes;
    // The same bytes read from the device files: each holds a copy.
    for d in &devs {
        uncache(d);
    }
    let t0 = Instant::now();
    let mut buf = vec![0u8; 8 * MIB as usize];
    let mut raw = 0u64;
    for d in &devs {
        let f = std::fs::File::open(d).expect("open device");
        let mut at = 0;
        while at < scrubbed {
            let n = (scrubbed - at).min(buf.len() as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf[..n], 8192 + at).expect("read");
            at += n as u64;
            raw += n as u64;
        }
    }
    let raw_secs = t0.elapsed().as_secs_f64();
    let scrub_mbs = scrubbed as f64 / scrub_secs / 1e6;
    rows.push(Row {
        what: format!(
            "Scrub of {} MiB used (every copy checked), MB/s of used data",
            scrubbed / MIB
        ),
        ours: format!("{scrub_mbs:.0}"),
        baseline: format!(
            "reading the same {} MiB from each device file: {:.0}",
            raw / 2 / MIB,
            scrubbed as f64 / raw_secs / 1e6
        ),
        ratio: format!("{:.2}×", raw_secs / scrub_secs),
        goal: "(information; btrfs: bench/devices-btrfs.sh)".into(),
    });
    let _ = used;
    e.close().expect("close");
    drop(e);

    // Rebuild: device 1 is lost; a spare takes its place.
    let lost_used = {
        let e = open_devices(&dir.join("meta"), &devs);
        let u = e.pool_devices().expect("devices")[1].used_bytes;
        e.close().expect("close");
        u
    };
    std::fs::remove_file(&devs[1]).expect("lose device 1");
    let spare = device_file(&dir, "spare", dev_bytes);
    let e = open_devices(&dir.join("meta"), &[]);
    uncache(&devs[0]);
    let t0 = Instant::now();
    e.replace_device(&devs[1], &spare, false).expect("replace");
    while e.run_move_batch() != engine::reloc::MoveStep::Idle
        || e.move_status().expect("status").state == "running"
    {}
    let rebuild_secs = t0.elapsed().as_secs_f64();
    let job = e.move_status().expect("status");
    assert_eq!(job.state, "done", "{job:?}");
    let rebuilt = job.copied_bytes;
    e.close().expect("close");
    drop(e);
    // The raw copy: the same bytes from the surviving file into a new one.
    uncache(&devs[0]);
    let target = dir.join("raw-copy");
    let t0 = Instant::now();
    {
        let from = std::fs::File::open(&devs[0]).expect("open");
        let to = std::fs::File::create(&target).expect("create");
        let mut at = 0;
        while at < lost_used {
            let n = (lost_used - at).min(buf.len() as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&from, &mut buf[..n], 8192 + at)
                .expect("read");
            std::os::unix::fs::FileExt::write_all_at(&to, &buf[..n], at).expect("write");
            at += n as u64;
        }
        to.sync_data().expect("sync");
    }
    let raw_secs = t0.elapsed().as_secs_f64();
    rows.push(Row {
        what: format!(
            "Rebuild of a lost device holding {} MiB used (of {} MiB) onto a spare, MB/s of used data",
            rebuilt / MIB,
            dev_bytes / MIB
        ),
        ours: format!("{:.0}", rebuilt as f64 / rebuild_secs / 1e6),
        baseline: format!(
            "copying the same bytes file to file: {:.0}",
            lost_used as f64 / raw_secs / 1e6
        ),
        ratio: format!("{:.2}×", raw_secs / rebuild_secs * rebuilt as f64 / lost_used.max(1) as f64),
        goal: "≥ 0.8×".into(),
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The device rows alone.
pub(super) fn bench(o: &Opts) {
    let mut out = Vec::new();
    rows(o, &mut out);
    super::parity::rows(o, &mut out);
    let _ = std::fs::remove_dir_all(&o.dir);
    super::print_table(&out);
}
