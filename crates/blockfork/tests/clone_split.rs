//! Writable clones and the clone split end to end, through the real binary,
//! the CLI and qemu-io: a split under a rate limit, written to while it
//! runs, killed with -9 half way, resumes after a restart (not from zero)
//! and completes; a snapshot deleted while a clone reads it is only hidden,
//! and goes for real when its last clone is split; every clone reads
//! exactly what it should throughout.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn qemu_io(server: &Server, export: &str, cmds: &[&str]) -> String {
    let uri = server.nbd(export);
    let mut args = vec!["-f", "raw", uri.as_str()];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let out = tool_ok("qemu-io", &args);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed"),
        "qemu-io {export} {cmds:?}: {out}"
    );
    out
}

fn json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = server.cli_ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn split_status(server: &Server, lun: &str) -> Value {
    json(server, &["lun", "clone", "status", lun])
}

/// The value of `key` in a `key  value` listing.
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key).filter(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {key:?} in:\n{text}"))
        .trim()
        .to_string()
}

/// Polls a split until it is done, for at most `secs` seconds.
fn wait_done(server: &Server, lun: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let status = split_status(server, lun);
        if status["state"] == "done" {
            return status;
        }
        assert!(
            ["running", "waiting-for-space"].contains(&status["state"].as_str().unwrap()),
            "the split of {lun} is not going on: {status}"
        );
        assert!(
            Instant::now() < deadline,
            "the split of {lun} did not finish in {secs} s: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn snapshot_rows(server: &Server) -> Vec<String> {
    server
        .cli_ok(&["snapshot", "list"])
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[test]
fn clone_split_survives_kill_9_and_frees_deleted_snapshots() {
    if !have("qemu-io") {
        eprintln!("skipping: qemu-io is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool");
    // 2 MB/s: a split of the 48 MiB clone takes about 25 s.
    let mut server = Server::start_with(&pool, &["--capacity", "512M", "--split-rate", "2"]);
    server.cli_ok(&["lun", "create", "base", "--size", "48M"]);
    qemu_io(&server, "base", &["write -P 0x5a 0 48M", "flush"]);
    server.cli_ok(&["snapshot", "create", "base", "s1"]);
    // The LUN moves on, so that s1's blocks are its own (a reclaim of s1
    // frees them all), then a second snapshot, then more.
    qemu_io(&server, "base", &["write -P 0x77 0 48M", "flush"]);
    server.cli_ok(&["snapshot", "create", "base", "s2"]);
    qemu_io(&server, "base", &["write -P 0x33 0 16M", "flush"]);

    let created = server.cli_ok(&["lun", "clone", "create", "base@s1", "clone"]);
    assert_eq!(field(&created, "parent"), "clone of base@s1");
    server.cli_ok(&["lun", "clone", "create", "base@s2", "other"]);
    assert_eq!(
        field(&server.cli_ok(&["lun", "show", "base"]), "clones"),
        "clone, other"
    );
    let rows = snapshot_rows(&server);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].contains(" s1 ") && rows[0].contains(" clone "),
        "{rows:?}"
    );
    assert!(
        rows[1].contains(" s2 ") && rows[1].contains(" other "),
        "{rows:?}"
    );
    // Clones read their snapshot, and are exported like any LUN.
    qemu_io(&server, "clone", &["read -P 0x5a 0 48M"]);
    qemu_io(&server, "other", &["read -P 0x77 0 48M"]);

    // Before its clone is split, deleting s2 hides it: gone from listings
    // and exports, while the clone still reads it.
    server.cli_ok(&["snapshot", "delete", "base", "s2"]);
    let rows = snapshot_rows(&server);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains(" s1 "), "{rows:?}");
    assert_eq!(
        field(&server.cli_ok(&["lun", "show", "other"]), "parent"),
        "clone of base@s2 (deleted)"
    );
    assert!(NbdClient::connect(server.nbd_port, "base@s2").is_err());
    qemu_io(&server, "other", &["read -P 0x77 0 48M"]);

    // Split "clone" under the rate limit while a client writes to it.
    let t0 = Instant::now();
    let started = server.cli_ok(&["lun", "clone", "start", "clone"]);
    assert_eq!(field(&started, "state"), "running");
    qemu_io(&server, "clone", &["write -P 0xa5 0 4M", "flush"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let status = split_status(&server, "clone");
        assert_eq!(status["state"], "running", "{status}");
        // Well into the split (the blocks the client wrote take no time:
        // there is nothing to copy for them).
        if status["progress"].as_f64().unwrap() >= 0.20 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the split made no progress: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let progress_before = before["progress"].as_f64().unwrap();
    assert!(
        progress_before <= 0.80,
        "the split went too fast for the rate limit: {before}"
    );
    // The limit holds: 2 MB/s, give or take a batch (1 MiB).
    let copied = before["copied_bytes"].as_u64().unwrap();
    let allowed = 2e6 * t0.elapsed().as_secs_f64() + 2.0 * MIB as f64;
    assert!(
        (copied as f64) <= allowed,
        "copied {copied} bytes in {:?} despite the 2 MB/s limit: {before}",
        t0.elapsed()
    );
    assert!(
        before["rate_bytes_per_sec"].as_u64().unwrap() > 0,
        "{before}"
    );
    let text = server.cli_ok(&["lun", "clone", "status", "clone"]);
    assert!(field(&text, "progress").ends_with('%'), "{text}");
    assert!(field(&text, "rate").ends_with(" MB/s"), "{text}");
    let shown = server.cli_ok(&["lun", "clone", "show"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("clone ") && l.contains(" running ")),
        "{shown}"
    );

    server.kill9();
    let server = Server::start_with(&pool, &["--split-rate", "0"]);

    // The split resumes where it was (allowing for the last moments of work
    // before the kill), not from zero, and completes.
    let after = split_status(&server, "clone");
    eprintln!("before the kill: {before}\nafter the restart: {after}");
    match after["state"].as_str().unwrap() {
        "running" => {
            let progress = after["progress"].as_f64().unwrap();
            assert!(
                progress >= progress_before - 0.05,
                "the split went back from {progress_before} to {progress}: {after}"
            );
        }
        "done" => {}
        _ => panic!("the split did not resume: {after}"),
    }
    let done = wait_done(&server, "clone", 60);
    assert_eq!(done["progress"], 1.0, "{done}");
    assert_eq!(done["parent"], Value::Null, "{done}");
    // Only the blocks the client wrote before the split reached them were
    // not copied; a split restarted from zero would count only what it
    // copied after the restart.
    let copied = done["copied_bytes"].as_u64().unwrap();
    assert!(
        (44 * MIB..=48 * MIB).contains(&copied),
        "copied {copied} bytes: {done}"
    );
    assert_eq!(
        field(&server.cli_ok(&["lun", "show", "clone"]), "parent"),
        "-"
    );
    assert_eq!(
        field(&server.cli_ok(&["lun", "show", "base"]), "clones"),
        "other"
    );

    // The hidden snapshot stayed hidden across the restart; splitting its
    // last clone deletes it for real.
    let rows = snapshot_rows(&server);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        field(&server.cli_ok(&["lun", "show", "other"]), "parent"),
        "clone of base@s2 (deleted)"
    );
    server.cli_ok(&["lun", "clone", "start", "other"]);
    wait_done(&server, "other", 60);
    assert_eq!(
        field(&server.cli_ok(&["lun", "show", "base"]), "clones"),
        "-"
    );
    assert_eq!(json(&server, &["pool", "status"])["snapshots"], 1);
    assert_eq!(
        server.cli_ok(&["lun", "clone", "show"]),
        "no splits under way\n"
    );

    // s1 has no clone left: deleting it deletes it, space and all.
    server.cli_ok(&["snapshot", "delete", "base", "s1", "--wait"]);
    assert_eq!(server.cli_ok(&["snapshot", "list"]), "no snapshots\n");
    assert_eq!(json(&server, &["pool", "status"])["snapshots"], 0);
    assert!(NbdClient::connect(server.nbd_port, "base@s1").is_err());
    // Reuse the freed space, so that a clone still reading it would show.
    server.cli_ok(&["lun", "create", "scratch", "--size", "96M"]);
    qemu_io(&server, "scratch", &["write -P 0xee 0 96M", "flush"]);

    qemu_io(
        &server,
        "clone",
        &["read -P 0xa5 0 4M", "read -P 0x5a 4M 44M"],
    );
    qemu_io(&server, "other", &["read -P 0x77 0 48M"]);
    qemu_io(
        &server,
        "base",
        &["read -P 0x33 0 16M", "read -P 0x77 16M 32M"],
    );
    // The clones are LUNs of their own now.
    server.cli_ok(&["lun", "delete", "base"]);
    qemu_io(&server, "clone", &["read -P 0x5a 4M 44M"]);
}
