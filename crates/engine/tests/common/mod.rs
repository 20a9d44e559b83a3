//! Helpers of the tests of a pool on devices (real files as devices).
#![allow(dead_code)]

use engine::{DeviceOptions, Engine, EngineConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MIB: u64 = 1 << 20;
/// The tests' segment size: small devices hold many.
pub const SEGMENT: u64 = MIB;

pub fn config() -> EngineConfig {
    EngineConfig {
        background: false,
        check_after_commit: true,
        ..EngineConfig::default()
    }
}

pub fn opts() -> DeviceOptions {
    DeviceOptions {
        segment_bytes: SEGMENT,
        force: false,
    }
}

/// Opens (or makes) the pool whose metadata is in `dir/meta`.
pub fn open(dir: &Path, devices: &[PathBuf]) -> engine::Result<Arc<Engine>> {
    Engine::open_devices(&dir.join("meta"), devices, opts(), config())
}

/// `n` device files of `mib` MiB in `dir`.
pub fn device_files(dir: &Path, n: usize, mib: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("d{i}"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(mib * MIB)
                .unwrap();
            p
        })
        .collect()
}

pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed ^ (i >> 12) as u8)
        .collect()
}

/// `len` bytes of `export` (`LUN` or `LUN@SNAPSHOT`) at `offset`.
pub fn read(e: &Engine, export: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    e.read(e.resolve(export).unwrap(), offset, &mut b).unwrap();
    b
}

/// Runs a scrub to its end, in the foreground.
pub fn scrub_to_end(e: &Engine) -> engine::scrub::ScrubInfo {
    for _ in 0..100_000 {
        if e.run_scrub_batch() == engine::scrub::ScrubStep::Idle {
            let info = e.scrub_status().unwrap();
            if info.state != "running" {
                return info;
            }
        }
    }
    panic!("the scrub did not end");
}

/// Runs the device job to its end, in the foreground.
pub fn moves_to_end(e: &Engine) -> engine::reloc::MoveInfo {
    for _ in 0..1_000_000 {
        if e.run_move_batch() == engine::reloc::MoveStep::Idle {
            let info = e.move_status().unwrap();
            if info.state != "running" {
                return info;
            }
        }
    }
    panic!("the device job did not end");
}
