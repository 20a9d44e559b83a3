//! What operators see (issue 16): `/metrics` checked by promtool and by
//! value, the event log through the API and `blockfork events`, and the
//! dashboard driven in Debian's headless Chromium.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn metrics_count_io_connections_and_requests_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(&dir.path().join("p"), &["--capacity", "256M"]);
    let token = s.token();
    let metrics_url = format!("{}/metrics", s.url());
    assert_eq!(get(&metrics_url, None, None).0, 401, "the token is needed");
    assert_eq!(get(&metrics_url, Some("wrong-token-123456"), None).0, 401);

    s.cli_ok(&["lun", "create", "a", "--size", "16M"]);
    s.cli_ok(&["lun", "create", "b", "--size", "16M"]);
    s.cli_ok(&["snapshot", "create", "a", "s1"]);
    s.cli_ok(&["lun", "clone", "create", "a@s1", "c"]);
    let mut c = NbdClient::connect(s.nbd_port, "a").unwrap();
    for i in 0..10u64 {
        assert_eq!(c.write(i * 4096, &[7u8; 4096]).unwrap(), 0);
    }
    for i in 0..3u64 {
        assert_eq!(c.read(i * 4096, 4096).unwrap().0, 0);
    }
    assert_eq!(c.trim(0, 8192).unwrap(), 0);
    assert_eq!(c.write_zeroes(65536, 4096, false).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    // A read past the end is refused before the engine: not an engine op.
    // An unknown export and a protocol violation are counted as refusals.
    assert!(NbdClient::connect(s.nbd_port, "nope").is_err());
    {
        let mut raw = TcpStream::connect(("127.0.0.1", s.nbd_port)).unwrap();
        let mut hello = [0u8; 18];
        std::io::Read::read_exact(&mut raw, &mut hello).unwrap();
        raw.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
        let _ = std::io::Read::read(&mut raw, &mut hello);
    }

    let (status, m) = get(&metrics_url, Some(&token), None);
    assert_eq!(status, 200, "{m}");
    promtool_ok(&m);
    let v = |series: &str| sample(&m, series).unwrap_or_else(|| panic!("no {series} in:\n{m}"));
    assert_eq!(v(r#"blockfork_lun_io_ops_total{lun="a",op="write"}"#), 10.0);
    assert_eq!(
        v(r#"blockfork_lun_io_bytes_total{lun="a",op="write"}"#),
        40960.0
    );
    assert_eq!(v(r#"blockfork_lun_io_ops_total{lun="a",op="read"}"#), 3.0);
    assert_eq!(
        v(r#"blockfork_lun_io_bytes_total{lun="a",op="trim"}"#),
        8192.0
    );
    assert_eq!(v(r#"blockfork_lun_io_ops_total{lun="a",op="zero"}"#), 1.0);
    assert_eq!(v(r#"blockfork_lun_io_ops_total{lun="a",op="flush"}"#), 1.0);
    assert_eq!(
        v(r#"blockfork_lun_io_latency_seconds_count{lun="a",op="write"}"#),
        10.0
    );
    assert_eq!(
        v(r#"blockfork_lun_io_latency_seconds_bucket{lun="a",op="write",le="+Inf"}"#),
        10.0
    );
    assert_eq!(v("blockfork_luns"), 3.0);
    assert_eq!(v("blockfork_snapshots"), 1.0);
    assert_eq!(v("blockfork_clones"), 1.0);
    assert_eq!(v("blockfork_pool_capacity_bytes"), 256.0 * 1048576.0);
    assert!(
        v("blockfork_pool_used_bytes") >= 32768.0,
        "10 blocks written, 2 trimmed"
    );
    assert_eq!(v(r#"blockfork_lun_size_bytes{lun="b"}"#), 16.0 * 1048576.0);
    assert!(v("blockfork_commits_total") >= 4.0);
    assert!(v("blockfork_commit_latency_seconds_count") >= 4.0);
    assert_eq!(
        v("blockfork_nbd_connections_open"),
        1.0,
        "the client above is still connected"
    );
    assert!(v("blockfork_nbd_connections_accepted_total") >= 3.0);
    assert_eq!(v("blockfork_nbd_exports_opened_total"), 1.0);
    assert_eq!(
        v(r#"blockfork_nbd_connections_refused_total{reason="protocol"}"#),
        1.0
    );
    // Sixteen requests sent back to back, each right after the last reply:
    // idle polls found next requests (decision 026), unless this process
    // may use one CPU only, where polling is off.
    let found = v(r#"blockfork_nbd_idle_polls_total{outcome="found"}"#);
    let expired = v(r#"blockfork_nbd_idle_polls_total{outcome="expired"}"#);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert!(found >= 1.0, "found {found}, expired {expired}");
    } else {
        assert_eq!(found + expired, 0.0);
    }
    assert_eq!(
        v(r#"blockfork_api_requests_total{route="/api/v1/luns",method="POST",status="201"}"#),
        2.0
    );
    assert!(
        v(r#"blockfork_api_requests_total{route="/metrics",method="GET",status="401"}"#) >= 2.0
    );
    assert!(v("blockfork_events_total") >= 4.0);
    assert!(
        !m.contains(r#"{lun="_other""#),
        "no LUN is past the label limit"
    );

    // The scraper may ask for OpenMetrics.
    let (status, om) = get(
        &metrics_url,
        Some(&token),
        Some("application/openmetrics-text"),
    );
    assert_eq!(status, 200);
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    drop(c);

    // The I/O totals the dashboard takes rates from.
    let (status, body) = get(&format!("{}/api/v1/io", s.url()), Some(&token), None);
    assert_eq!(status, 200);
    let io: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(io["counting"], true);
    let a = io["luns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lun"] == "a")
        .expect("LUN a counted");
    assert_eq!(a["write_ops"], 10);
    assert_eq!(a["read_bytes"], 3 * 4096);
}

#[test]
fn metrics_label_limit_public_scrapes_and_no_counting() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &dir.path().join("p"),
        &[
            "--capacity",
            "128M",
            "--metrics-lun-limit",
            "1",
            "--metrics-public",
        ],
    );
    s.cli_ok(&["lun", "create", "a", "--size", "8M"]);
    s.cli_ok(&["lun", "create", "b", "--size", "8M"]);
    for lun in ["a", "b"] {
        let mut c = NbdClient::connect(s.nbd_port, lun).unwrap();
        assert_eq!(c.write(0, &[1u8; 4096]).unwrap(), 0);
    }
    // Public: no token needed for /metrics, and only for /metrics.
    let (status, m) = get(&format!("{}/metrics", s.url()), None, None);
    assert_eq!(status, 200);
    promtool_ok(&m);
    assert_eq!(get(&format!("{}/api/v1/luns", s.url()), None, None).0, 401);
    assert_eq!(
        sample(&m, r#"blockfork_lun_io_ops_total{lun="a",op="write"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, r#"blockfork_lun_io_ops_total{lun="_other",op="write"}"#),
        Some(1.0),
        "the second LUN is past the limit of 1: {m}"
    );
    assert_eq!(sample(&m, "blockfork_luns_unlabelled"), Some(1.0));
    assert!(!m.contains(r#"lun="b""#), "no label for b: {m}");

    let dir2 = tempfile::tempdir().unwrap();
    let q = Server::start_with(
        &dir2.path().join("p"),
        &["--capacity", "128M", "--no-io-metrics"],
    );
    q.cli_ok(&["lun", "create", "a", "--size", "8M"]);
    let mut c = NbdClient::connect(q.nbd_port, "a").unwrap();
    assert_eq!(c.write(0, &[1u8; 4096]).unwrap(), 0);
    let (status, m) = get(&format!("{}/metrics", q.url()), Some(&q.token()), None);
    assert_eq!(status, 200);
    promtool_ok(&m);
    assert!(!m.contains("blockfork_lun_io_"), "nothing counted: {m}");
    assert!(m.contains("blockfork_pool_used_bytes"));
    let (_, body) = get(&format!("{}/api/v1/io", q.url()), Some(&q.token()), None);
    assert!(body.contains(r#""counting":false"#), "{body}");
}

#[test]
fn events_tell_what_happened_survive_a_restart_and_follow() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("p");
    // A closed pool (no --open), small enough to fill past 80 %.
    let mut s = Server::start_raw(&data, &["--capacity", "64M"]);
    s.cli_ok(&["lun", "create", "a", "--size", "60M"]);
    s.cli_ok(&["snapshot", "create", "a", "s1"]);
    s.cli_ok(&["lun", "clone", "create", "a@s1", "c"]);
    s.cli_ok(&["lun", "clone", "start", "c"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.cli_ok(&["events"]).contains("split-finished") {
        assert!(Instant::now() < deadline, "{}", s.cli_ok(&["events"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The pool is closed and "a" is not mapped: refused, and told once.
    for _ in 0..3 {
        assert!(NbdClient::connect(s.nbd_port, "a").is_err());
    }
    s.cli_ok(&["igroup", "create", "local", "--address", "127.0.0.1"]);
    s.cli_ok(&["lun", "map", "a", "local"]);
    let mut c = NbdClient::connect(s.nbd_port, "a").unwrap();
    let chunk = vec![9u8; 1 << 20];
    for i in 0..56u64 {
        assert_eq!(c.write(i << 20, &chunk).unwrap(), 0);
    }
    assert_eq!(c.flush().unwrap(), 0);
    drop(c);
    s.cli_ok(&["lun", "delete", "c"]);

    let text = s.cli_ok(&["events", "--last", "1000"]);
    for kind in [
        "lun-created",
        "snapshot-created",
        "clone-created",
        "split-started",
        "split-finished",
        "access-refused",
        "igroup-created",
        "lun-mapped",
        "pool-nearly-full",
        "lun-deleted",
    ] {
        assert!(text.contains(kind), "no {kind} in:\n{text}");
    }
    assert_eq!(
        text.matches("access-refused").count(),
        1,
        "repeats within 10 s are told once:\n{text}"
    );
    assert!(text.contains("WARN"), "{text}");
    // JSON: one event object a line.
    let json = s.cli_ok(&["--output", "json", "events", "--since", "0"]);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 10);
    assert!(events
        .windows(2)
        .all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()));
    let last = events.last().unwrap()["id"].as_u64().unwrap();
    // The server's log has a line for each.
    assert!(s.log_text().contains("pool-nearly-full"));

    // Bad queries change nothing and say why.
    let token = s.token();
    for bad in ["limit=0", "limit=1001", "wait=61", "since=abc", "nope=1"] {
        let (status, body) = get(
            &format!("{}/api/v1/events?{bad}", s.url()),
            Some(&token),
            None,
        );
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Kept in the pool across a restart; new ids continue after the old.
    s.stop();
    let s = Server::start_raw(&data, &[]);
    let json = s.cli_ok(&[
        "--output",
        "json",
        "events",
        "--since",
        &(last - 1).to_string(),
    ]);
    assert_eq!(json.lines().count(), 1, "{json}");
    assert!(json.contains(&format!("\"id\":{last}")), "{json}");

    // --follow prints what happens as it happens.
    let mut follow = Command::new(BIN)
        .args(["--server", &s.url(), "--data"])
        .arg(&data)
        .args(["events", "--follow", "--since", &last.to_string()])
        .env_remove("BLOCKFORK_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    s.cli_ok(&["lun", "create", "followed", "--size", "1M"]);
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = follow.kill();
    let _ = follow.wait();
    let line = line.expect("--follow printed the new event");
    assert!(
        line.contains("lun-created") && line.contains("followed"),
        "{line}"
    );
    assert!(
        line.trim_start().starts_with(&(last + 1).to_string()),
        "{line}"
    );
}

/// tests/ui at the repository's root, with playwright-core installed (npm
/// ci from the lock file when it is missing).
#[test]
fn the_dashboard_works_in_headless_chromium() {
    assert!(
        have("node") && have("chromium"),
        "node and chromium are needed (scripts/test.sh installs chromium)"
    );
    let ui = playwright_dir();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(&dir.path().join("p"), &["--capacity", "512M"]);
    s.cli_ok(&["lun", "create", "vol0", "--size", "32M"]);
    s.cli_ok(&["lun", "create", "db", "--size", "64M"]);
    s.cli_ok(&["snapshot", "create", "db", "before-upgrade"]);
    s.cli_ok(&["igroup", "create", "esx", "--address", "10.0.0.0/24"]);
    s.cli_ok(&["lun", "map", "db", "esx"]);
    // A writer keeps I/O going on vol0, so that live rates show.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let port = s.nbd_port;
        std::thread::spawn(move || {
            let mut c = NbdClient::connect(port, "vol0").unwrap();
            let block = vec![0x5au8; 4096];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.write((i % 4096) * 4096, &block).unwrap();
                i += 1;
                // About 500 IOPS: visible, and leaves the cores to the browser.
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = run(
        Command::new("node")
            .arg(ui.join("dashboard.mjs"))
            .arg(s.url())
            .arg(s.token())
            .arg("vol0")
            .arg(&shot),
        240,
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: screenshot saved"), "{stdout}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    // What the page did is what the server has.
    let luns = s.cli_ok(&["lun", "list"]);
    assert!(luns.contains("vol0-test"), "{luns}");
    let snaps = s.cli_ok(&["snapshot", "list", "vol0"]);
    assert!(snaps.contains("nightly"), "{snaps}");
    assert!(
        !luns.contains("forged"),
        "the forged request changed nothing: {luns}"
    );
}
