//! The CLI binary against a real API server (in this process, over a real
//! socket), checking the command vocabulary, both output formats, exit
//! codes and error sentences.

use engine::{Engine, EngineConfig};
use serde_json::Value;
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
                api::serve(listener, served, async {
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("http:// URL"));

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
