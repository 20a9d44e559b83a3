//! A pool on devices end to end (issue 14): `serve --device` over real
//! files, written and read by qemu-io over NBD, with a device file
//! overwritten by random bytes or deleted between runs.

mod common;
use common::*;
use serde_json::Value;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

fn device_files(dir: &Path, n: usize, mib: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("dev{i}"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(mib * MIB)
                .unwrap();
            p
        })
        .collect()
}

fn device_args(devices: &[PathBuf]) -> Vec<String> {
    let mut args = vec!["--segment-size".to_string(), "4M".to_string()];
    for d in devices {
        args.push("--device".into());
        args.push(d.display().to_string());
    }
    args
}

fn start(dir: &Path, devices: &[PathBuf]) -> Server {
    let args = device_args(devices);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(dir, &refs)
}

fn qemu_io(server: &Server, export: &str, cmds: &[&str]) -> String {
    let uri = server.nbd(export);
    let mut args = vec!["-f", "raw", uri.as_str()];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let out = tool_ok("qemu-io", &args);
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "qemu-io {cmds:?}: {out}"
    );
    out
}

fn json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&server.cli_ok(&all)).unwrap()
}

/// What the test writes, and reads back after each trouble.
const WRITES: &[&str] = &[
    "write -P 0xa1 0 8M",
    "write -P 0xb2 8M 4M",
    "write -P 0xc3 1000 5000",
    "write -P 0xd4 30M 2M",
];
const READS: &[&str] = &[
    "read -P 0xa1 0 1000",
    "read -P 0xc3 1000 5000",
    "read -P 0xa1 6000 8382608",
    "read -P 0xb2 8M 4M",
    "read -P 0 12M 18M",
    "read -P 0xd4 30M 2M",
];

/// Overwrites `len` bytes of `path` from `at` with random bytes.
fn scribble(path: &Path, at: u64, len: u64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let junk: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    f.write_all(&junk).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_rotten_device_is_read_around_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let devices = device_files(tmp.path(), 2, 48);
    let pool = tmp.path().join("pool");
    let mut server = start(&pool, &devices);
    let status = json(&server, &["pool", "status"]);
    assert_eq!(status["devices"], 2);
    assert_eq!(status["redundancy"], "mirror");
    server.cli_ok(&["lun", "create", "vm", "--size", "32M"]);
    let lun = json(&server, &["lun", "show", "vm"]);
    assert_eq!(lun["redundancy"], "mirror");
    qemu_io(&server, "vm", WRITES);
    qemu_io(&server, "vm", READS);
    assert!(server.stop().success());

    // Random bytes over most of the first device, its label spared.
    scribble(&devices[0], 8192, 40 * MIB);
    // Restarted without naming the devices: found where they were.
    let server = Server::start_with(&pool, &[]);
    qemu_io(&server, "vm", READS);
    let list = json(&server, &["pool", "device", "list"]);
    let (d0, d1) = (&list[0], &list[1]);
    let found = d0["checksum_errors"].as_u64().unwrap();
    assert!(found >= 3584, "every block written was rotten: {list}");
    assert_eq!(d0["repaired_blocks"].as_u64().unwrap(), found);
    assert_eq!(d1["checksum_errors"], 0);
    assert_eq!(d0["state"], "online");
    // Repaired on disk: reading again finds nothing new.
    qemu_io(&server, "vm", READS);
    let again = json(&server, &["pool", "device", "list"]);
    assert_eq!(again[0]["checksum_errors"].as_u64().unwrap(), found);
    let text = server.cli_ok(&["pool", "device", "list"]);
    assert!(
        text.contains("CKSUM-ERR") && text.contains("dev0"),
        "{text}"
    );
    let check = json(&server, &["pool", "check"]);
    assert_eq!(check["ok"], true, "{check}");
    let mut server = server;
    assert!(server.stop().success());

    // The other device rots, where reads do not look (they take the first
    // copy that verifies): a scrub reads every copy and repairs it.
    scribble(&devices[1], 8192, 40 * MIB);
    let server = Server::start_with(&pool, &["--scrub-rate", "0"]);
    assert_eq!(
        json(&server, &["pool", "scrub", "status"])["state"],
        "never"
    );
    server.cli_ok(&["pool", "scrub", "start"]);
    let text = server.cli_ok(&["pool", "scrub", "status", "--watch"]);
    assert!(
        text.contains("done") && text.contains("lost blocks"),
        "{text}"
    );
    let scrub = json(&server, &["pool", "scrub", "status"]);
    assert_eq!(scrub["state"], "done");
    let repaired = scrub["repaired_copies"].as_u64().unwrap();
    assert!(repaired >= 3584, "{scrub}");
    assert_eq!(scrub["lost_blocks"], 0);
    let list = json(&server, &["pool", "device", "list"]);
    assert_eq!(list[1]["checksum_errors"].as_u64().unwrap(), repaired);
    qemu_io(&server, "vm", READS);
    let settings = server.cli_ok(&["pool", "set", "--scrub-rate", "50"]);
    assert!(settings.contains("scrub rate"), "{settings}");
    let events = server.cli_ok(&["events", "--since", "0"]);
    assert!(events.contains("scrub-done"), "{events}");
    let (code, metrics) = get(
        &format!("{}/metrics", server.url()),
        Some(&server.token()),
        None,
    );
    assert_eq!(code, 200);
    promtool_ok(&metrics);
    assert_eq!(sample(&metrics, "blockfork_scrub_progress"), Some(1.0));
    assert_eq!(
        sample(&metrics, "blockfork_scrub_repaired_copies"),
        Some(repaired as f64)
    );
    assert_eq!(sample(&metrics, "blockfork_device_job_running"), Some(0.0));
}

#[test]
fn a_missing_device_leaves_the_pool_serving_degraded() {
    let tmp = tempfile::tempdir().unwrap();
    let devices = device_files(tmp.path(), 3, 64);
    let pool = tmp.path().join("pool");
    let mut server = start(&pool, &devices);
    server.cli_ok(&["lun", "create", "vm", "--size", "32M"]);
    assert_eq!(
        json(&server, &["lun", "show", "vm"])["redundancy"],
        "mirror3"
    );
    server.cli_ok(&[
        "lun",
        "create",
        "db",
        "--size",
        "16M",
        "--redundancy",
        "mirror",
    ]);
    qemu_io(&server, "vm", WRITES);
    qemu_io(&server, "db", &["write -P 0x5e 0 16M"]);
    let bad = server.cli(&[
        "lun",
        "create",
        "x",
        "--size",
        "1M",
        "--redundancy",
        "raid5",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("raid5") && err.contains("mirror3"), "{err}");
    assert!(server.stop().success());

    let away = tmp.path().join("away");
    std::fs::rename(&devices[1], &away).unwrap();
    let mut server = Server::start_with(&pool, &[]);
    let status = json(&server, &["pool", "status"]);
    assert_eq!(status["state"], "degraded", "{status}");
    assert_eq!(status["faulted_devices"], 1);
    let list = json(&server, &["pool", "device", "list"]);
    assert_eq!(list[1]["state"], "faulted");
    assert!(
        list[1]["reason"].as_str().unwrap().contains("did not open"),
        "{list}"
    );
    let text = server.cli_ok(&["pool", "status"]);
    assert!(text.contains("degraded (1 of 3 devices faulted"), "{text}");
    qemu_io(&server, "vm", READS);
    qemu_io(&server, "db", &["read -P 0x5e 0 16M"]);
    // Writes go on, to the copies left.
    qemu_io(
        &server,
        "db",
        &["write -P 0x6f 4M 1M", "read -P 0x6f 4M 1M"],
    );
    assert!(server.log_text().contains("device faulted"));
    let events = server.cli_ok(&["events", "--since", "0"]);
    assert!(events.contains("device-faulted"), "{events}");
    let (code, metrics) = get(
        &format!("{}/metrics", server.url()),
        Some(&server.token()),
        None,
    );
    assert_eq!(code, 200);
    promtool_ok(&metrics);
    let dev1 = devices[1].display().to_string();
    assert_eq!(
        sample(
            &metrics,
            &format!("blockfork_device_up{{device=\"{dev1}\"}}")
        ),
        Some(0.0),
        "{metrics}"
    );
    assert!(server.stop().success());

    // Back: it stays out (its copies of the write above are stale) until
    // `pool device clear`, whose resilver rewrites them.
    std::fs::rename(&away, &devices[1]).unwrap();
    let server = Server::start_with(&pool, &[]);
    let list = json(&server, &["pool", "device", "list"]);
    assert_eq!(list[1]["state"], "faulted", "{list}");
    assert!(
        list[1]["reason"]
            .as_str()
            .unwrap()
            .contains("pool device clear"),
        "{list}"
    );
    let bad = server.cli(&["pool", "device", "clear", &devices[0].display().to_string()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not faulted"));
    let text = server.cli_ok(&["pool", "device", "clear", &dev1, "--wait"]);
    assert!(text.contains("done"), "{text}");
    let status = json(&server, &["pool", "status"]);
    assert_eq!(status["state"], "online", "{status}");
    let scrub = json(&server, &["pool", "scrub", "status"]);
    assert_eq!(scrub["lost_blocks"], 0, "{scrub}");
    qemu_io(&server, "vm", READS);
    qemu_io(
        &server,
        "db",
        &[
            "read -P 0x5e 0 4M",
            "read -P 0x6f 4M 1M",
            "read -P 0x5e 5M 11M",
        ],
    );
}

#[test]
fn a_parity_lun_over_nbd_survives_two_lost_devices_and_rot() {
    let tmp = tempfile::tempdir().unwrap();
    let devices = device_files(tmp.path(), 6, 48);
    let pool = tmp.path().join("pool");
    let mut server = start(&pool, &devices);
    let bad = server.cli(&["pool", "set", "--redundancy", "mirror9"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("mirror9"));
    let text = server.cli_ok(&["pool", "set", "--redundancy", "parity:4+2"]);
    assert!(text.contains("parity:4+2 (for new LUNs)"), "{text}");
    let made = json(&server, &["lun", "create", "dflt", "--size", "4M"]);
    assert_eq!(made["redundancy"], "parity:4+2", "{made}");
    server.cli_ok(&["pool", "set", "--redundancy", "mirror3"]);
    server.cli_ok(&[
        "lun",
        "create",
        "bulk",
        "--size",
        "32M",
        "--redundancy",
        "parity:4+2",
    ]);
    assert_eq!(
        json(&server, &["lun", "show", "bulk"])["redundancy"],
        "parity:4+2"
    );
    qemu_io(&server, "bulk", WRITES);
    qemu_io(&server, "bulk", READS);
    // A mirrored LUN moved to parity online, a client writing meanwhile.
    server.cli_ok(&[
        "lun",
        "create",
        "mv",
        "--size",
        "8M",
        "--redundancy",
        "mirror",
    ]);
    qemu_io(&server, "mv", &["write -P 0x7a 0 8M"]);
    let bad = server.cli(&["lun", "set", "mv", "--redundancy", "parity:9+2"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("needs 11 devices"));
    server.cli_ok(&["lun", "set", "mv", "--redundancy", "parity:4+2"]);
    qemu_io(&server, "mv", &["write -P 0x7b 1M 1M"]);
    let text = server.cli_ok(&["lun", "set", "mv", "--redundancy", "parity:4+2", "--wait"]);
    assert!(
        text.contains("parity:4+2") && !text.contains("moving"),
        "{text}"
    );
    let events = server.cli_ok(&["events", "--since", "0"]);
    assert!(events.contains("relayout-done"), "{events}");
    assert!(server.stop().success());

    // A device rots in part: reads are right and repair it, and a scrub
    // finds the rest (the parity shards among them).
    scribble(&devices[5], 8192, 8 * MIB);
    let mut server = Server::start_with(&pool, &[]);
    qemu_io(&server, "bulk", READS);
    server.cli_ok(&["pool", "scrub", "start"]);
    let scrub = wait_scrub(&server);
    assert_eq!(scrub["lost_blocks"], 0, "{scrub}");
    let list = json(&server, &["pool", "device", "list"]);
    assert!(list[5]["checksum_errors"].as_u64().unwrap() > 0, "{list}");
    assert!(server.stop().success());

    // Two devices gone: M = 2 shards of every stripe are missing.
    std::fs::remove_file(&devices[0]).unwrap();
    std::fs::remove_file(&devices[3]).unwrap();
    let server = Server::start_with(&pool, &[]);
    let status = json(&server, &["pool", "status"]);
    assert_eq!(
        (status["state"].as_str(), status["faulted_devices"].as_u64()),
        (Some("degraded"), Some(2)),
        "{status}"
    );
    qemu_io(&server, "bulk", READS);
    qemu_io(
        &server,
        "bulk",
        &["write -P 0xe5 20M 3M", "read -P 0xe5 20M 3M"],
    );
    qemu_io(
        &server,
        "mv",
        &[
            "read -P 0x7a 0 1M",
            "read -P 0x7b 1M 1M",
            "read -P 0x7a 2M 6M",
        ],
    );
}

/// Polls `pool scrub status` until the scrub ends (bounded).
fn wait_scrub(server: &Server) -> Value {
    for _ in 0..600 {
        let s = json(server, &["pool", "scrub", "status"]);
        if s["state"] != "running" {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the scrub did not end in a minute");
}

/// Polls `pool device status` until `done` says so (bounded).
fn wait_job(server: &Server, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let job = json(server, &["pool", "device", "status"]);
        if done(&job) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "device job: {job}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_replacement_is_rebuilt_across_a_kill_9_and_a_device_leaves_under_a_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let devices = device_files(tmp.path(), 2, 64);
    let pool = tmp.path().join("pool");
    let mut server = start(&pool, &devices);
    server.cli_ok(&["lun", "create", "vm", "--size", "40M"]);
    qemu_io(&server, "vm", &["write -P 0x3c 0 40M"]);
    assert!(server.stop().success());

    // Device 1 is gone; a spare takes its place, slowly (4 MB/s), and the
    // server is killed part way.
    std::fs::remove_file(&devices[1]).unwrap();
    let spare = tmp.path().join("spare");
    std::fs::File::create(&spare)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let mut server = Server::start_with(&pool, &["--rebuild-rate", "4"]);
    assert_eq!(json(&server, &["pool", "status"])["state"], "degraded");
    let spare_arg = spare.display().to_string();
    let old_arg = devices[1].display().to_string();
    let started = json(
        &server,
        &["pool", "device", "replace", &old_arg, &spare_arg],
    );
    assert_eq!(started["state"], "running", "{started}");
    assert_eq!(started["total_segments"], 10);
    let part = wait_job(&server, |j| j["moved_segments"].as_u64().unwrap() >= 2);
    assert_eq!(part["state"], "running", "killed before the end: {part}");
    server.kill9();

    let server = Server::start_with(&pool, &["--rebuild-rate", "0"]);
    let text = server.cli_ok(&["pool", "device", "status", "--watch"]);
    assert!(text.contains("done"), "{text}");
    let done = json(&server, &["pool", "device", "status"]);
    assert_eq!(
        (done["state"].as_str(), done["skipped_blocks"].as_u64()),
        (Some("done"), Some(0))
    );
    qemu_io(&server, "vm", &["read -P 0x3c 0 40M"]);
    let status = json(&server, &["pool", "status"]);
    assert_eq!(
        (status["state"].as_str(), status["devices"].as_u64()),
        (Some("online"), Some(2))
    );
    let events = server.cli_ok(&["events", "--since", "0"]);
    assert!(events.contains("rebuild-done"), "{events}");
    let check = json(&server, &["pool", "check"]);
    assert_eq!(check["ok"], true, "{check}");

    // A third device joins (levelling), then the first leaves while a
    // client writes.
    let third = tmp.path().join("third");
    std::fs::File::create(&third)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let third_arg = third.display().to_string();
    let added = json(&server, &["pool", "device", "add", &third_arg]);
    assert_eq!(added["state"], "online", "{added}");
    wait_job(&server, |j| j["state"] == "done");
    let uri = server.nbd("vm");
    let writer = std::thread::spawn(move || {
        for i in 0..8u8 {
            let cmd = format!("write -P 0x{:02x} {}M 4M", 0x40 + i, i * 4);
            tool_ok("qemu-io", &["-f", "raw", &uri, "-c", &cmd]);
        }
    });
    let first = devices[0].display().to_string();
    let removed = server.cli_ok(&["pool", "device", "remove", &first, "--wait"]);
    writer.join().unwrap();
    assert!(removed.contains("done"), "{removed}");
    for i in 0..8u8 {
        let cmd = format!("read -P 0x{:02x} {}M 4M", 0x40 + i, i * 4);
        qemu_io(&server, "vm", &[cmd.as_str()]);
    }
    qemu_io(&server, "vm", &["read -P 0x3c 32M 8M"]);
    let list = json(&server, &["pool", "device", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(list.to_string().contains("third"), "{list}");
    let bad = server.cli(&["pool", "device", "remove", "/nonexistent"]);
    assert!(!bad.status.success());
}

#[test]
fn the_dashboard_shows_the_devices_and_runs_a_scrub() {
    let ui = playwright_dir();
    let tmp = tempfile::tempdir().unwrap();
    let devices = device_files(tmp.path(), 3, 48);
    let pool = tmp.path().join("pool");
    let mut server = start(&pool, &devices);
    server.cli_ok(&["lun", "create", "vm", "--size", "16M", "--reserve"]);
    qemu_io(&server, "vm", &["write -P 0x77 0 16M"]);
    assert!(server.stop().success());
    std::fs::remove_file(&devices[2]).unwrap();
    let server = Server::start_with(&pool, &["--scrub-rate", "0"]);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard-devices.png");
    let _ = std::fs::remove_file(&shot);
    let out = run(
        std::process::Command::new("node")
            .arg(ui.join("devices.mjs"))
            .arg(server.url())
            .arg(server.token())
            .arg(devices[2].display().to_string())
            .arg(&shot),
        240,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: screenshot saved"), "{stdout}");
    assert_eq!(json(&server, &["pool", "scrub", "status"])["state"], "done");
}
