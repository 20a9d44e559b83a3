//! The CLI binary against a real API server (in this process, over a real
//! socket), checking the command vocabulary, both output formats, exit
//! codes and error sentences.

mod common;

use engine::{Engine, EngineConfig};
use serde_json::{json, Value};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_blockfork");

struct ApiServer {
    url: String,
    engine: Arc<Engine>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    fn start() -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_dir(dir.path(), Some(1 << 30), EngineConfig::default()).unwrap();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let served = engine.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                api::serve(listener, served, api::ApiConfig::default(), async {
                    let _ = shutdown_rx.await;
                })
                .await
                .unwrap();
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        ApiServer {
            url: format!("http://{addr}"),
            engine,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .env_remove("BLOCKFORK_SERVER")
            .arg("--server")
            .arg(&self.url)
            .args(args)
            .output()
            .expect("run blockfork")
    }

    /// Runs a command with a time limit.
    fn cli_timed(&self, args: &[&str], secs: u64) -> Output {
        common::run(
            Command::new(BIN)
                .env_remove("BLOCKFORK_SERVER")
                .arg("--server")
                .arg(&self.url)
                .args(args),
            secs,
        )
    }

    /// Writes `len` bytes of `byte` at `offset` of a LUN, straight through
    /// the engine.
    fn fill(&self, lun: &str, offset: u64, len: usize, byte: u8) {
        let target = self.engine.resolve(lun).unwrap();
        self.engine
            .write(target, offset, &vec![byte; len], true)
            .unwrap();
    }

    /// Runs a command that must succeed, quietly; returns its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let stdout = self.ok(&all);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// Runs a command that must fail with exit code 1 and one sentence.
    #[track_caller]
    fn fails(&self, args: &[&str], fragment: &str) {
        let out = self.cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(out.stdout, b"", "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(fragment), "{args:?}: {stderr}");
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn luns() {
    let server = ApiServer::start();
    let created = server.ok(&["lun", "create", "vol0/db", "--size", "10G"]);
    assert!(created.contains("vol0/db"), "{created}");
    assert!(created.contains("10 GiB (10737418240 bytes)"), "{created}");
    let log = server.json(&["lun", "create", "vol0/log", "--size", "1.5M"]);
    assert_eq!(log["size_bytes"], 3 << 19);
    server.ok(&["lun", "create", "other", "--size", "4096"]);

    let table = server.ok(&["lun", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("NAME"));
    assert!(lines[1].starts_with("other "), "{table}");
    let listed = server.json(&["lun", "list", "vol0/"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vol0/db", "vol0/log"]);

    let shown = server.json(&["lun", "show", "vol0/db"]);
    assert_eq!(shown["size_bytes"], 10u64 << 30);
    server.fails(&["lun", "resize", "vol0/db", "--size", "5G"], "shrink");
    let shrunk = server.json(&["lun", "resize", "vol0/db", "--size", "5G", "--shrink"]);
    assert_eq!(shrunk["size_bytes"], 5u64 << 30);
    server.ok(&["lun", "resize", "vol0/db", "--size", "20G"]);

    server.fails(
        &["lun", "create", "vol0/db", "--size", "1G"],
        "LUN \"vol0/db\" already exists",
    );
    server.fails(
        &["lun", "create", "bad name", "--size", "1G"],
        "contains ' '",
    );
    server.fails(
        &["lun", "create", "odd", "--size", "4097"],
        "multiple of 4096",
    );
    server.fails(
        &["lun", "show", "vol0/nothing"],
        "LUN \"vol0/nothing\" does not exist",
    );
    server.fails(&["lun", "show", "a/../b"], "\"a/../b\"");

    let deleted = server.ok(&["lun", "delete", "vol0/log"]);
    assert_eq!(deleted, "deleted LUN \"vol0/log\"\n");
    assert_eq!(
        server.ok(&["--output", "json", "lun", "delete", "other"]),
        ""
    );
    server.fails(&["lun", "delete", "other"], "does not exist");
    assert_eq!(server.engine.list_luns("").unwrap().len(), 1);
}

#[test]
fn snapshots_and_groups() {
    let server = ApiServer::start();
    server.ok(&["lun", "create", "vol0/db", "--size", "1G"]);
    server.ok(&["lun", "create", "vol0/log", "--size", "1G"]);

    let taken = server.json(&["snapshot", "create", "vol0/db", "nightly"]);
    assert_eq!(taken["lun"], "vol0/db");
    assert_eq!(taken["name"], "nightly");
    server.fails(
        &["snapshot", "create", "vol0/db", "nightly"],
        "already exists",
    );
    server.fails(&["snapshot", "create", "nothing", "s"], "does not exist");

    let group = server.json(&["cg", "snapshot", "create", "cg1", "vol0/db", "vol0/log"]);
    assert_eq!(group["members"], serde_json::json!(["vol0/db", "vol0/log"]));
    let groups = server.ok(&["cg", "snapshot", "list"]);
    assert!(
        groups.lines().nth(1).unwrap().starts_with("cg1 "),
        "{groups}"
    );
    assert_eq!(
        server
            .json(&["cg", "snapshot", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    server.fails(
        &["snapshot", "delete", "vol0/log", "cg1"],
        "group snapshot \"cg1\"",
    );

    let listed = server.ok(&["snapshot", "list"]);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    let of_db = server.json(&["snapshot", "list", "vol0/db"]);
    assert_eq!(of_db.as_array().unwrap().len(), 2);

    server.ok(&["lun", "resize", "vol0/db", "--size", "2G"]);
    let restored = server.ok(&["snapshot", "restore", "vol0/db", "nightly"]);
    assert_eq!(
        restored,
        "restored LUN \"vol0/db\" to snapshot \"nightly\" (size 1 GiB)\n"
    );
    server.fails(
        &["snapshot", "restore", "vol0/db", "nothing"],
        "does not exist",
    );

    // Not a terminal: no progress bar, nothing on stderr.
    let waited = server.ok(&["snapshot", "delete", "vol0/db", "nightly", "--wait"]);
    assert!(
        waited.starts_with("deleted snapshot \"vol0/db@nightly\"; reclaimed "),
        "{waited}"
    );
    let jobs = server.json(&["job", "list"]);
    let job = &jobs.as_array().unwrap()[0];
    assert_eq!(job["kind"], "snapshot-reclaim");
    assert_eq!(job["lun"], "vol0/db");
    assert_eq!(job["state"], "done");
    assert!(server.ok(&["job", "list"]).contains("snapshot-reclaim"));

    let deleted = server.ok(&["cg", "snapshot", "delete", "cg1"]);
    assert!(
        deleted.starts_with("deleted group snapshot \"cg1\""),
        "{deleted}"
    );
    server.fails(&["cg", "snapshot", "delete", "cg1"], "does not exist");
    assert_eq!(server.ok(&["snapshot", "list"]), "no snapshots\n");

    server.ok(&["snapshot", "create", "vol0/log", "s1"]);
    server.fails(&["lun", "delete", "vol0/log"], "snapshot");
    server.ok(&["lun", "delete", "vol0/log", "--recursive"]);
}

#[test]
fn pool() {
    let server = ApiServer::start();
    let status = server.ok(&["pool", "status"]);
    assert!(status.contains("capacity"), "{status}");
    assert!(status.contains("1 GiB (1073741824 bytes)"), "{status}");
    let grown = server.json(&["pool", "grow", "--capacity", "2G"]);
    assert_eq!(grown["capacity_bytes"], 2u64 << 30);
    server.fails(&["pool", "grow", "--capacity", "1G"], "cannot shrink");
    assert_eq!(server.ok(&["job", "list"]), "no jobs\n");

    server.ok(&["lun", "create", "checked", "--size", "1M"]);
    server.ok(&["snapshot", "create", "checked", "s"]);
    let checked = server.ok(&["pool", "check"]);
    assert!(row(&checked, "result").contains("ok"), "{checked}");
    assert!(!checked.contains("problem:"), "{checked}");
    let report = server.json(&["pool", "check"]);
    assert_eq!(report["ok"], true);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(
        (report["luns"].as_u64(), report["snapshots"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn usage_and_connection_errors() {
    let server = ApiServer::start();
    for args in [
        &["lun", "create", "x"][..],
        &["lun", "create", "x", "--size", "10X"],
        &["lun", "create", "x", "--size", "-1G"],
        &["lun", "frobnicate"],
        &["cg", "snapshot", "create", "cg1"],
        &["--output", "yaml", "pool", "status"],
    ] {
        let out = server.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert_eq!(server.engine.list_luns("").unwrap().len(), 0);

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = Command::new(BIN)
        .args(["--server", &url, "pool", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("error: cannot reach blockfork server at {url}: ")),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with("is `blockfork serve` running?"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["--server", "localhost:8080", "pool", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http:// or https:// URL"));

    // The environment names the server too.
    let out = Command::new(BIN)
        .env("BLOCKFORK_SERVER", &server.url)
        .args(["--output", "json", "pool", "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["capacity_bytes"], 1u64 << 30);
}

/// The line of a `key  value` listing that starts with `key`.
fn row<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"))
}

#[test]
fn clones_and_splits() {
    let server = ApiServer::start();
    server.ok(&["lun", "create", "base", "--size", "16M"]);
    server.fill("base", 0, 16 << 20, 0x5a);
    server.ok(&["snapshot", "create", "base", "s1"]);

    // A slow split rate, so that splits are seen running.
    let set = server.ok(&["pool", "set", "--split-rate", "1"]);
    assert_eq!(
        set,
        "split rate    1 MB/s\nmirror rate   unlimited\nscrub rate    64 MB/s\nrebuild rate  256 MB/s\nI/O metrics   off\n"
    );
    assert_eq!(
        server.json(&["pool", "set"]),
        json!({"split_rate_mbps": 1, "split_rate_bytes_per_sec": 1_000_000, "mirror_rate_mbps": 0, "mirror_rate_bytes_per_sec": 0, "io_metrics": false, "scrub_rate_mbps": 64, "scrub_rate_bytes_per_sec": 64_000_000, "rebuild_rate_mbps": 256, "rebuild_rate_bytes_per_sec": 256_000_000})
    );
    assert_eq!(server.engine.split_rate(), 1_000_000);

    let one = server.ok(&["lun", "clone", "create", "base@s1", "c1"]);
    assert!(one.starts_with("name "), "{one}");
    assert_eq!(row(&one, "name"), "name        c1");
    assert_eq!(row(&one, "parent"), "parent      clone of base@s1");
    assert_eq!(row(&one, "clones"), "clones      -");
    let many = server.json(&[
        "lun", "clone", "create", "base@s1", "ci/run", "--count", "3",
    ]);
    let names: Vec<&str> = many
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci/run-1", "ci/run-2", "ci/run-3"]);
    assert_eq!(many[0]["parent"], "base@s1");
    let table = server.ok(&["lun", "clone", "create", "base@s1", "t", "--count", "2"]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.starts_with("NAME "), "{table}");

    // Who depends on whom.
    let base = server.ok(&["lun", "show", "base"]);
    assert_eq!(
        row(&base, "clones"),
        "clones      c1, ci/run-1, ci/run-2, ci/run-3, t-1, t-2"
    );
    assert_eq!(row(&base, "parent"), "parent      -");
    let snapshots = server.ok(&["snapshot", "list"]);
    let lines: Vec<&str> = snapshots.lines().collect();
    assert!(lines[0].contains(" CLONES "), "{snapshots}");
    assert!(
        lines[1].contains(" c1,ci/run-1,ci/run-2,ci/run-3,t-1,t-2 "),
        "{snapshots}"
    );
    let listed = server.json(&["snapshot", "list", "base"]);
    assert_eq!(listed[0]["clones"].as_array().unwrap().len(), 6);
    assert_eq!(server.json(&["lun", "show", "base"])["clones"][0], "c1");

    // Split: status, start, show, stop.
    let status = server.ok(&["lun", "clone", "status", "c1"]);
    assert_eq!(row(&status, "state"), "state     not-started");
    assert_eq!(row(&status, "progress"), "progress  0.0%");
    assert_eq!(row(&status, "parent"), "parent    base@s1");
    assert_eq!(
        server.ok(&["lun", "clone", "show"]),
        "no splits under way\n"
    );
    let started = server.ok(&["lun", "clone", "start", "c1"]);
    assert_eq!(row(&started, "state"), "state     running");
    assert!(row(&started, "rate").ends_with(" MB/s"), "{started}");
    let shown = server.ok(&["lun", "clone", "show"]);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    for header in ["LUN", "PARENT", "STATE", "PROGRESS", "COPIED", "RATE"] {
        assert!(lines[0].contains(header), "{shown}");
    }
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[..3], ["c1", "base@s1", "running"], "{shown}");
    assert!(cells[3].ends_with('%'), "{shown}");
    assert!(cells.last().unwrap().ends_with("MB/s"), "{shown}");
    assert!(lines[1].contains('%'), "{shown}");
    let json_list = server.json(&["lun", "clone", "show"]);
    assert_eq!(json_list[0]["lun"], "c1");
    assert_eq!(json_list[0]["state"], "running");
    assert_eq!(
        server.ok(&["lun", "clone", "show", "ci/"]),
        "no splits under way\n"
    );
    assert_eq!(
        server
            .json(&["lun", "clone", "show", "c"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let stopped = server.json(&["lun", "clone", "stop", "c1"]);
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(
        row(&server.ok(&["lun", "clone", "status", "c1"]), "state"),
        "state     stopped"
    );
    assert_eq!(
        server.json(&["lun", "clone", "status", "c1"])["state"],
        "stopped"
    );

    // --watch ends at once on a stopped split: the state, and exit 1.
    let watched = server.cli_timed(&["lun", "clone", "status", "c1", "--watch"], 30);
    assert_eq!(watched.status.code(), Some(1));
    let stdout = String::from_utf8(watched.stdout).unwrap();
    assert_eq!(row(&stdout, "state"), "state     stopped");
    assert_eq!(
        String::from_utf8(watched.stderr).unwrap(),
        "error: the split of \"c1\" is stopped\n"
    );
    let watched = server.cli_timed(&["lun", "clone", "status", "ci/run-1", "--watch"], 30);
    assert_eq!(watched.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&watched.stderr).contains("lun clone start ci/run-1"),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );

    // Mistakes.
    server.fails(&["lun", "clone", "start", "base"], "not a clone");
    server.fails(&["lun", "clone", "stop", "base"], "no split");
    server.fails(
        &["lun", "clone", "status", "nothing"],
        "LUN \"nothing\" does not exist",
    );
    server.fails(&["lun", "clone", "start", "nothing"], "does not exist");
    server.fails(
        &["lun", "clone", "create", "base", "x"],
        "must name a snapshot",
    );
    server.fails(
        &["lun", "clone", "create", "base@nothing", "x"],
        "does not exist",
    );
    server.fails(
        &["lun", "clone", "create", "base@s1", "x", "--count", "0"],
        "`count` must be 1 to 10000",
    );
    server.fails(
        &["lun", "clone", "create", "base@s1", "c1"],
        "LUN \"c1\" already exists",
    );
    server.fails(
        &["pool", "set", "--split-rate", "18446744073710"],
        "too large",
    );
    for args in [
        &["lun", "clone", "create", "base@s1"][..],
        &["lun", "clone", "create", "base@s1", "x", "--count", "-1"],
        &["pool", "set", "--split-rate", "2M"],
        &["lun", "clone", "frobnicate"],
    ] {
        assert_eq!(server.cli(args).status.code(), Some(2), "{args:?}");
    }
    assert_eq!(server.engine.list_luns("").unwrap().len(), 7);

    // A snapclone starts its split at once.
    let snapclone = server.ok(&["lun", "clone", "create", "base@s1", "fast", "--split"]);
    assert!(
        snapclone
            .ends_with("split started; follow it with `blockfork lun clone status fast --watch`\n"),
        "{snapclone}"
    );
    assert_eq!(
        server.json(&["lun", "clone", "status", "fast"])["state"],
        "running"
    );

    // Deleting the snapshot the clones read hides it.
    server.ok(&["snapshot", "delete", "base", "s1"]);
    assert_eq!(server.ok(&["snapshot", "list"]), "no snapshots\n");
    assert_eq!(
        row(&server.ok(&["lun", "show", "ci/run-1"]), "parent"),
        "parent      clone of base@s1 (deleted)"
    );

    // Unlimited, the splits finish; --watch exits 0 with the final state.
    assert_eq!(
        server.ok(&["pool", "set", "--split-rate", "0"]),
        "split rate    unlimited\nmirror rate   unlimited\nscrub rate    64 MB/s\nrebuild rate  256 MB/s\nI/O metrics   off\n"
    );
    server.ok(&["lun", "clone", "start", "c1"]);
    let watched = server.cli_timed(&["lun", "clone", "status", "c1", "--watch"], 60);
    let stdout = String::from_utf8(watched.stdout).unwrap();
    assert!(
        watched.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    assert_eq!(watched.stderr, b"", "no progress bar off a terminal");
    assert_eq!(row(&stdout, "state"), "state     done");
    assert_eq!(row(&stdout, "progress"), "progress  100.0%");
    assert_eq!(row(&stdout, "copied"), "copied    16 MiB");
    let watched = server.cli_timed(
        &[
            "--output", "json", "lun", "clone", "status", "fast", "--watch",
        ],
        60,
    );
    assert!(watched.status.success());
    let done: Value = serde_json::from_slice(&watched.stdout).unwrap();
    assert_eq!(done["state"], "done");
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["parent"], Value::Null);
    assert_eq!(
        row(&server.ok(&["lun", "show", "c1"]), "parent"),
        "parent      -"
    );
    assert_eq!(
        server.ok(&["lun", "clone", "show"]),
        "no splits under way\n"
    );
    assert_eq!(
        row(&server.ok(&["lun", "show", "base"]), "clones"),
        "clones      ci/run-1, ci/run-2, ci/run-3, t-1, t-2"
    );
    // A LUN that was never a clone is independent: nothing to wait for.
    let watched = server.cli_timed(&["lun", "clone", "status", "base", "--watch"], 30);
    assert!(watched.status.success());
}

#[test]
fn pool_set_is_documented() {
    let server = ApiServer::start();
    let help = server.ok(&["pool", "set", "--help"]);
    assert!(help.contains("--split-rate <MBPS>"), "{help}");
    assert!(help.contains("MB/s"), "{help}");
    assert!(help.contains("0 for unlimited"), "{help}");
    let help = server.ok(&["lun", "clone", "--help"]);
    for command in ["create", "start", "status", "show", "stop"] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn clone_range_and_igroups() {
    let server = ApiServer::start();
    server.ok(&["lun", "create", "src", "--size", "4M"]);
    server.ok(&["lun", "create", "dst", "--size", "4M"]);
    server.fill("src", 0, 65536, 0xab);
    server.ok(&["snapshot", "create", "src", "s"]);
    server.fill("src", 0, 4096, 0x01);
    let r = server.json(&[
        "lun",
        "clone-range",
        "--source",
        "src@s",
        "--target",
        "dst",
        "--range",
        "0:1M:64K",
        "--range",
        "4096:2M:4096",
    ]);
    assert_eq!(r["ranges"], 2);
    assert_eq!(r["bytes"], 65536 + 4096);
    let dst = server.engine.resolve("dst").unwrap();
    let mut buf = vec![0u8; 65536];
    server.engine.read(dst, 1 << 20, &mut buf).unwrap();
    assert_eq!(
        buf,
        vec![0xab; 65536],
        "from the snapshot, not the later write"
    );
    // A JSON file of ranges, with its own sources.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ranges.json");
    std::fs::write(
        &file,
        r#"[{"source": "src", "source_offset": 0, "target_offset": 0, "length": 4096}]"#,
    )
    .unwrap();
    let text = server.ok(&[
        "lun",
        "clone-range",
        "--target",
        "dst",
        "--ranges-file",
        file.to_str().unwrap(),
    ]);
    assert!(
        text.contains("ranges") && text.contains("4096 bytes"),
        "{text}"
    );
    let mut b = vec![0u8; 4096];
    server.engine.read(dst, 0, &mut b).unwrap();
    assert_eq!(b, vec![0x01; 4096]);
    server.fails(
        &[
            "lun",
            "clone-range",
            "--target",
            "dst",
            "--range",
            "0:0:4096",
        ],
        "--source",
    );
    server.fails(
        &["lun", "clone-range", "--source", "src", "--target", "dst"],
        "--range",
    );
    server.fails(
        &[
            "lun",
            "clone-range",
            "--source",
            "src",
            "--target",
            "dst",
            "--range",
            "0:1:4096",
        ],
        "multiple of 4096",
    );
    server.fails(
        &[
            "lun",
            "clone-range",
            "--source",
            "src",
            "--target",
            "dst",
            "--range",
            "0:0:8K",
            "--range",
            "0:4K:4K",
        ],
        "overlap",
    );
    std::fs::write(&file, r#"[{"offset": 1}]"#).unwrap();
    server.fails(
        &[
            "lun",
            "clone-range",
            "--target",
            "dst",
            "--ranges-file",
            file.to_str().unwrap(),
        ],
        "JSON list",
    );
    let out = server.cli(&[
        "lun",
        "clone-range",
        "--source",
        "src",
        "--target",
        "dst",
        "--range",
        "0:0",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed --range is a usage error"
    );

    // igroups: create, add, remove, show, errors.
    server.ok(&[
        "igroup",
        "create",
        "g",
        "--address",
        "10.0.0.0/8",
        "--cert-cn",
        "host-a",
    ]);
    server.ok(&["igroup", "add", "g", "--address", "192.0.2.1"]);
    let g = server.json(&["igroup", "show", "g"]);
    assert_eq!(
        g["addresses"],
        serde_json::json!(["10.0.0.0/8", "192.0.2.1/32"])
    );
    server.ok(&["igroup", "remove", "g", "--cert-cn", "host-a"]);
    server.fails(
        &["igroup", "remove", "g", "--cert-cn", "host-a"],
        "does not exist",
    );
    server.fails(
        &["igroup", "create", "h", "--address", "10.0.0.0/99"],
        "CIDR",
    );
    server.fails(
        &["lun", "map", "src", "nope"],
        "igroup \"nope\" does not exist",
    );
    server.ok(&["lun", "map", "src", "g"]);
    assert!(server.ok(&["lun", "show", "src"]).contains("g"));
    server.fails(&["igroup", "delete", "g"], "unmap");
    let out = server.cli(&["igroup", "add", "g"]);
    assert_eq!(out.status.code(), Some(2), "add needs exactly one member");
    server.ok(&["lun", "unmap", "src", "g"]);
    server.ok(&["igroup", "delete", "g"]);
    assert!(server.ok(&["igroup", "list"]).contains("no igroups"));
}
