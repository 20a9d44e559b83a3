//! Data-path cost of the NBD server alone: the memory backend of the tests
//! served in this process, fio's nbd engine as the client (one connection).
//! Prints throughput and the server's CPU time per GiB moved, which is what
//! protocol-side work (buffers, copies) changes; the client's and the
//! backend's share of a 2-core machine make raw MiB/s noisy.
//!
//!     cargo run --release -p nbd --example membench -- [--runtime S] [--reps N]
//!
//! Needs fio (with the nbd engine, Debian's has it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::process::{run, start_server};
use common::{MemBackend, MemExport};
use nbd::Server;

const EXPORT_BYTES: u64 = 256 << 20;

/// (name, fio arguments)
const WORKLOADS: &[(&str, &str)] = &[
    ("seq read 1M qd8", "--rw=read --bs=1M --iodepth=8"),
    ("seq write 1M qd8", "--rw=write --bs=1M --iodepth=8"),
    ("rand read 4k qd32", "--rw=randread --bs=4k --iodepth=32"),
];

/// User + system CPU time of this process (the server; fio is a child and
/// not counted), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are fields 14 and 15 of the whole line.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports in USER_HZ, which is 100 on every architecture it runs
    // fio on.
    Duration::from_millis(ticks * 10)
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime_secs = arg(&args, "--runtime", 5);
    let reps = arg(&args, "--reps", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let export = MemExport::new(EXPORT_BYTES, false);
        // Written once so reads move real data rather than a hole.
        export.fill(0, &vec![0x5a; EXPORT_BYTES as usize]);
        let backend = MemBackend::default().with("disk", "", export);
        let server = start_server(Server::new(Arc::new(backend))).await;
        let uri = server.uri("disk");
        println!("| workload | rep | MiB/s | server CPU s per GiB |");
        println!("|---|---|---|---|");
        for rep in 1..=reps {
            for (name, workload) in WORKLOADS {
                let mut fio_args: Vec<String> = [
                    "--name=membench",
                    "--ioengine=nbd",
                    "--time_based",
                    "--output-format=json",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                fio_args.push(format!("--uri={uri}"));
                fio_args.push(format!("--size={EXPORT_BYTES}"));
                fio_args.push(format!("--runtime={runtime_secs}"));
                fio_args.extend(workload.split_whitespace().map(str::to_string));
                let fio_args: Vec<&str> = fio_args.iter().map(String::as_str).collect();
                let cpu_before = cpu_time();
                let ran = run("fio", &fio_args).await;
                let cpu = cpu_time() - cpu_before;
                assert!(ran.ok, "fio failed: {}", ran.stderr);
                let bytes = io_bytes(&ran.stdout);
                let gib = bytes as f64 / (1u64 << 30) as f64;
                let secs = runtime_secs as f64;
                println!(
                    "| {name} | {rep} | {:.0} | {:.3} |",
                    bytes as f64 / (1 << 20) as f64 / secs,
                    cpu.as_secs_f64() / gib
                );
            }
        }
        server.stop().await;
    });
}

/// Bytes read plus written, from fio's JSON output.
fn io_bytes(json: &str) -> u64 {
    // Avoids a JSON dependency: fio prints `"io_bytes" : N` once per
    // direction of the one job.
    json.match_indices("\"io_bytes\" : ")
        .map(|(i, m)| {
            let rest = &json[i + m.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse::<u64>().unwrap_or(0)
        })
        .sum()
}
