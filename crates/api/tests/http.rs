//! The API over a real socket: a real engine in a temporary directory,
//! `api::serve` on 127.0.0.1:0, and a real HTTP client.

use engine::{Engine, EngineConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

struct Server {
    base: String,
    agent: ureq::Agent,
    engine: Arc<Engine>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: u16,
    content_type: String,
    body: Value,
}

impl Server {
    fn start() -> Server {
        Server::start_with_token(None)
    }

    fn start_with_token(token: Option<&str>) -> Server {
        let token = token.map(str::to_string);
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_dir(dir.path(), Some(GIB), EngineConfig::default()).unwrap();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let served = engine.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).unwrap();
                let config = api::ApiConfig {
                    token,
                    ..Default::default()
                };
                api::serve(listener, served, config, async {
                    let _ = shutdown_rx.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Server {
            base: format!("http://{addr}/api/v1"),
            agent,
            engine,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Sends a request with a raw body and content type.
    fn raw(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = if body.is_empty() && content_type.is_none() {
            self.agent.run(request.body(()).unwrap())
        } else {
            self.agent.run(request.body(body.to_vec()).unwrap())
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {path}: {status}: reading the body: {e}"));
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{method} {path}: {status} body is not JSON ({e}): {text}")
            })
        };
        Reply {
            status,
            content_type,
            body,
        }
    }

    fn get(&self, path: &str) -> Reply {
        self.raw("GET", path, None, b"")
    }

    fn delete(&self, path: &str) -> Reply {
        self.raw("DELETE", path, None, b"")
    }

    fn send(&self, method: &str, path: &str, body: Value) -> Reply {
        self.raw(
            method,
            path,
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    }

    /// Everything a client can observe, to check that a bad request changed
    /// nothing.
    fn observable_state(&self) -> Value {
        json!({
            "luns": self.get("/luns").body,
            "snapshots": self.get("/snapshots").body,
            "groups": self.get("/group-snapshots").body,
            "pool": self.get("/pool").body,
            "splits": self.get("/splits").body,
            "settings": self.get("/settings").body,
        })
    }

    fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[track_caller]
fn expect_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(
        reply.content_type.starts_with("application/json"),
        "{}",
        reply.content_type
    );
    assert_eq!(reply.body["code"], code, "{}", reply.body);
    let message = reply.body["message"].as_str().unwrap();
    assert!(!message.is_empty());
    assert_eq!(reply.body.as_object().unwrap().len(), 2, "{}", reply.body);
}

fn create_lun(server: &Server, name: &str, size: u64) -> Value {
    let reply = server.send("POST", "/luns", json!({"name": name, "size": size}));
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

#[test]
fn luns() {
    let server = Server::start();
    let created = create_lun(&server, "vol0/db", GIB);
    assert_eq!(created["name"], "vol0/db");
    assert_eq!(created["size_bytes"], GIB);
    assert_eq!(created["snapshot_count"], 0);
    assert_eq!(created["parent"], Value::Null);
    create_lun(&server, "vol0/log", 4096);
    create_lun(&server, "vol1", 8192);

    let all = server.get("/luns");
    assert_eq!(all.status, 200);
    let names: Vec<&str> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vol0/db", "vol0/log", "vol1"]);
    let some = server.get("/luns?prefix=vol0/");
    assert_eq!(some.body.as_array().unwrap().len(), 2);
    assert_eq!(server.get("/luns?prefix=nothing").body, json!([]));

    let shown = server.get("/luns/vol0/db");
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body, created);
    // A client may percent-encode the '/' in the name.
    assert_eq!(server.get("/luns/vol0%2Fdb").body, created);

    expect_error(&server.get("/luns/vol0/nothing"), 404, "not_found");
    expect_error(
        &server.send("POST", "/luns", json!({"name": "vol0/db", "size": 4096})),
        409,
        "already_exists",
    );
    expect_error(
        &server.send("POST", "/luns", json!({"name": "bad name", "size": 4096})),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.send("POST", "/luns", json!({"name": "odd", "size": 4097})),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.send("POST", "/luns", json!({"name": "huge", "size": 1u64 << 50})),
        400,
        "invalid_argument",
    );

    let grown = server.send("PATCH", "/luns/vol0/db", json!({"size": 2 * GIB}));
    assert_eq!(grown.status, 200, "{}", grown.body);
    assert_eq!(grown.body["size_bytes"], 2 * GIB);
    let refused = server.send("PATCH", "/luns/vol0/db", json!({"size": GIB}));
    expect_error(&refused, 400, "invalid_argument");
    assert!(refused.body["message"].as_str().unwrap().contains("shrink"));
    let shrunk = server.send(
        "PATCH",
        "/luns/vol0/db",
        json!({"size": GIB, "shrink": true}),
    );
    assert_eq!(shrunk.status, 200, "{}", shrunk.body);
    assert_eq!(shrunk.body["size_bytes"], GIB);
    expect_error(
        &server.send("PATCH", "/luns/nothing", json!({"size": GIB})),
        404,
        "not_found",
    );

    let deleted = server.delete("/luns/vol0/log");
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.body, Value::Null);
    expect_error(&server.delete("/luns/vol0/log"), 404, "not_found");
    assert_eq!(server.get("/luns").body.as_array().unwrap().len(), 2);
}

#[test]
fn snapshots() {
    let server = Server::start();
    create_lun(&server, "vol0/db", GIB);
    create_lun(&server, "vol1", GIB);

    let taken = server.send(
        "POST",
        "/snapshots",
        json!({"lun": "vol0/db", "name": "nightly"}),
    );
    assert_eq!(taken.status, 201, "{}", taken.body);
    assert_eq!(taken.body["lun"], "vol0/db");
    assert_eq!(taken.body["name"], "nightly");
    assert_eq!(taken.body["size_bytes"], GIB);
    assert_eq!(taken.body["group"], Value::Null);

    expect_error(
        &server.send(
            "POST",
            "/snapshots",
            json!({"lun": "vol0/db", "name": "nightly"}),
        ),
        409,
        "already_exists",
    );
    expect_error(
        &server.send("POST", "/snapshots", json!({"lun": "nothing", "name": "s"})),
        404,
        "not_found",
    );
    expect_error(
        &server.send("POST", "/snapshots", json!({"lun": "vol1", "name": "a/b"})),
        400,
        "invalid_argument",
    );

    let batch = server.send(
        "POST",
        "/snapshots",
        json!({"snapshots": [{"lun": "vol0/db", "name": "b1"}, {"lun": "vol1", "name": "b1"}]}),
    );
    assert_eq!(batch.status, 201, "{}", batch.body);
    let in_batch = batch.body["snapshots"].as_array().unwrap();
    assert_eq!(in_batch.len(), 2);
    assert_eq!(in_batch[1]["lun"], "vol1");
    expect_error(
        &server.send("POST", "/snapshots", json!({"snapshots": []})),
        400,
        "invalid_argument",
    );
    let too_many: Vec<Value> = (0..=api::wire::BATCH_SNAPSHOTS_MAX)
        .map(|i| json!({"lun": "vol1", "name": format!("s{i}")}))
        .collect();
    expect_error(
        &server.send("POST", "/snapshots", json!({"snapshots": too_many})),
        400,
        "invalid_argument",
    );
    // A batch is all or nothing: one bad member takes none.
    let before = server.observable_state();
    expect_error(
        &server.send(
            "POST",
            "/snapshots",
            json!({"snapshots": [{"lun": "vol1", "name": "b2"}, {"lun": "vol1", "name": "b1"}]}),
        ),
        409,
        "already_exists",
    );
    assert_eq!(server.observable_state(), before);

    let all = server.get("/snapshots");
    assert_eq!(all.status, 200);
    assert_eq!(all.body.as_array().unwrap().len(), 3);
    let of_db = server.get("/snapshots?lun=vol0/db");
    let names: Vec<&str> = of_db
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nightly", "b1"]);
    expect_error(&server.get("/snapshots?lun=nothing"), 404, "not_found");

    let shown = server.get("/snapshots/nightly?lun=vol0/db");
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.body["name"], "nightly");
    expect_error(
        &server.get("/snapshots/nothing?lun=vol0/db"),
        404,
        "not_found",
    );
    expect_error(&server.get("/snapshots/nightly"), 400, "invalid_argument");

    // Restore brings back the snapshot's size.
    server.send("PATCH", "/luns/vol0/db", json!({"size": 2 * GIB}));
    let restored = server.raw("POST", "/snapshots/nightly/restore?lun=vol0/db", None, b"");
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert_eq!(restored.body["name"], "vol0/db");
    assert_eq!(restored.body["size_bytes"], GIB);
    expect_error(
        &server.raw("POST", "/snapshots/nothing/restore?lun=vol0/db", None, b""),
        404,
        "not_found",
    );

    expect_error(&server.delete("/luns/vol0/db"), 409, "has_dependents");
    let deleted = server.delete("/snapshots/nightly?lun=vol0/db");
    assert_eq!(deleted.status, 204);
    expect_error(
        &server.delete("/snapshots/nightly?lun=vol0/db"),
        404,
        "not_found",
    );
    expect_error(&server.delete("/snapshots/b1"), 400, "invalid_argument");

    // Deleting a snapshot starts a reclaim job for its LUN, which finishes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = server.get("/jobs");
        assert_eq!(jobs.status, 200);
        let job = jobs
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["lun"] == "vol0/db")
            .cloned()
            .expect("a reclaim job for vol0/db");
        assert_eq!(job["kind"], "snapshot-reclaim");
        if job["state"] == "done" {
            assert_eq!(job["progress"], 1.0);
            break;
        }
        assert_eq!(job["state"], "running");
        assert!(Instant::now() < deadline, "reclaim never finished: {job}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let recursive = server.delete("/luns/vol0/db?recursive=true");
    assert_eq!(recursive.status, 204, "{}", recursive.body);
    assert_eq!(server.get("/snapshots").body.as_array().unwrap().len(), 1);
}

#[test]
fn group_snapshots() {
    let server = Server::start();
    create_lun(&server, "app/data", GIB);
    create_lun(&server, "app/log", GIB);

    let created = server.send(
        "POST",
        "/group-snapshots",
        json!({"name": "cg1", "luns": ["app/data", "app/log"]}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["name"], "cg1");
    assert_eq!(created.body["members"], json!(["app/data", "app/log"]));

    let listed = server.get("/group-snapshots");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body, json!([created.body]));
    assert_eq!(server.get("/group-snapshots/cg1").body, created.body);
    expect_error(&server.get("/group-snapshots/nothing"), 404, "not_found");
    let member = server.get("/snapshots/cg1?lun=app/log");
    assert_eq!(member.body["group"], "cg1");

    expect_error(
        &server.send(
            "POST",
            "/group-snapshots",
            json!({"name": "cg1", "luns": ["app/data"]}),
        ),
        409,
        "already_exists",
    );
    expect_error(
        &server.send(
            "POST",
            "/group-snapshots",
            json!({"name": "cg2", "luns": []}),
        ),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.send(
            "POST",
            "/group-snapshots",
            json!({"name": "cg2", "luns": ["app/data", "app/data"]}),
        ),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.send(
            "POST",
            "/group-snapshots",
            json!({"name": "cg2", "luns": ["app/data", "nothing"]}),
        ),
        404,
        "not_found",
    );
    expect_error(
        &server.delete("/snapshots/cg1?lun=app/data"),
        409,
        "has_dependents",
    );
    expect_error(
        &server.delete("/luns/app/data?recursive=true"),
        409,
        "has_dependents",
    );

    assert_eq!(server.delete("/group-snapshots/cg1").status, 204);
    expect_error(&server.delete("/group-snapshots/cg1"), 404, "not_found");
    assert_eq!(server.get("/snapshots").body, json!([]));
    assert_eq!(server.delete("/luns/app/data").status, 204);
}

#[test]
fn pool_and_jobs() {
    let server = Server::start();
    let pool = server.get("/pool");
    assert_eq!(pool.status, 200);
    assert_eq!(pool.body["capacity_bytes"], GIB);
    assert_eq!(pool.body["luns"], 0);
    assert_eq!(server.get("/jobs").body, json!([]));

    let grown = server.send("PATCH", "/pool", json!({"capacity": 2 * GIB}));
    assert_eq!(grown.status, 200, "{}", grown.body);
    assert_eq!(grown.body["capacity_bytes"], 2 * GIB);
    assert_eq!(server.get("/pool").body["capacity_bytes"], 2 * GIB);
    expect_error(
        &server.send("PATCH", "/pool", json!({"capacity": GIB})),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.send("PATCH", "/pool", json!({"capacity": 2 * GIB + 1})),
        400,
        "invalid_argument",
    );
}

const MIB: u64 = 1 << 20;

/// Writes `len` bytes of `byte` at `offset` straight through the engine.
fn fill(server: &Server, lun: &str, offset: u64, len: u64, byte: u8) {
    let target = server.engine.resolve(lun).unwrap();
    server
        .engine
        .write(target, offset, &vec![byte; len as usize], true)
        .unwrap();
}

/// Whether `len` bytes at `offset` of an export all read `byte`.
fn reads(server: &Server, export: &str, offset: u64, len: u64, byte: u8) -> bool {
    let target = server.engine.resolve(export).unwrap();
    let mut buf = vec![!byte; len as usize];
    server.engine.read(target, offset, &mut buf).unwrap();
    buf.iter().all(|&b| b == byte)
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v["name"].as_str().or(v["lun"].as_str()).unwrap())
        .collect()
}

/// Polls a LUN's split until it is done, for at most `secs` seconds.
fn wait_split_done(server: &Server, lun: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let reply = server.get(&format!("/splits/{lun}"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["state"] == "done" {
            return reply.body;
        }
        assert!(
            Instant::now() < deadline,
            "the split of {lun} did not finish in {secs} s: {}",
            reply.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clones() {
    let server = Server::start();
    create_lun(&server, "vol0/db", 64 * MIB);
    fill(&server, "vol0/db", 0, 8 * MIB, 0x5a);
    server.send(
        "POST",
        "/snapshots",
        json!({"lun": "vol0/db", "name": "nightly"}),
    );
    fill(&server, "vol0/db", 0, MIB, 0x77);

    let one = server.send(
        "POST",
        "/clones",
        json!({"source": "vol0/db@nightly", "name": "vol0/test"}),
    );
    assert_eq!(one.status, 201, "{}", one.body);
    let created = one.body.as_array().unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["name"], "vol0/test");
    assert_eq!(created[0]["parent"], "vol0/db@nightly");
    assert_eq!(created[0]["size_bytes"], 64 * MIB);
    assert_eq!(created[0]["clones"], json!([]));
    assert_eq!(server.get("/luns/vol0/test").body, created[0]);
    // The clone reads the snapshot, not the LUN's later writes.
    assert!(reads(&server, "vol0/test", 0, 8 * MIB, 0x5a));
    assert!(reads(&server, "vol0/test", 8 * MIB, MIB, 0));
    // The clone is a LUN: it takes writes, the snapshot does not change.
    fill(&server, "vol0/test", 4 * MIB, MIB, 0x33);
    assert!(reads(&server, "vol0/test", 4 * MIB, MIB, 0x33));
    assert!(reads(&server, "vol0/db@nightly", 4 * MIB, MIB, 0x5a));

    let many = server.send(
        "POST",
        "/clones",
        json!({"source": "vol0/db@nightly", "name": "ci/run", "count": 3}),
    );
    assert_eq!(many.status, 201, "{}", many.body);
    assert_eq!(names(&many.body), ["ci/run-1", "ci/run-2", "ci/run-3"]);
    for c in many.body.as_array().unwrap() {
        assert_eq!(c["parent"], "vol0/db@nightly");
    }
    // Who depends on whom.
    let clones = json!(["ci/run-1", "ci/run-2", "ci/run-3", "vol0/test"]);
    assert_eq!(server.get("/luns/vol0/db").body["clones"], clones);
    assert_eq!(
        server.get("/snapshots/nightly?lun=vol0/db").body["clones"],
        clones
    );
    assert_eq!(server.get("/snapshots").body[0]["clones"], clones);
    assert_eq!(server.get("/luns/vol0/test").body["clones"], json!([]));

    // Mistakes create nothing, not even part of a batch.
    let before = server.observable_state();
    expect_error(
        &server.send(
            "POST",
            "/clones",
            json!({"source": "vol0/db@nightly", "name": "ci/run", "count": 4}),
        ),
        409,
        "already_exists",
    );
    expect_error(
        &server.send(
            "POST",
            "/clones",
            json!({"source": "vol0/db@nightly", "name": "vol0/test"}),
        ),
        409,
        "already_exists",
    );
    for count in [0, 10_001] {
        let reply = server.send(
            "POST",
            "/clones",
            json!({"source": "vol0/db@nightly", "name": "x", "count": count}),
        );
        expect_error(&reply, 400, "invalid_argument");
        assert!(reply.body["message"].as_str().unwrap().contains("count"));
    }
    expect_error(
        &server.send("POST", "/clones", json!({"source": "vol0/db", "name": "x"})),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.send(
            "POST",
            "/clones",
            json!({"source": "vol0/db@nothing", "name": "x"}),
        ),
        404,
        "not_found",
    );
    expect_error(
        &server.send(
            "POST",
            "/clones",
            json!({"source": "nothing@nightly", "name": "x"}),
        ),
        404,
        "not_found",
    );
    assert_eq!(server.observable_state(), before);

    // The most clones one request makes.
    let most = server.send(
        "POST",
        "/clones",
        json!({"source": "vol0/db@nightly", "name": "bulk/c", "count": api::CLONES_PER_REQUEST_MAX}),
    );
    assert_eq!(most.status, 201, "{}", most.body);
    assert_eq!(
        most.body.as_array().unwrap().len(),
        api::CLONES_PER_REQUEST_MAX as usize
    );
    assert_eq!(
        server
            .get("/luns?prefix=bulk/")
            .body
            .as_array()
            .unwrap()
            .len(),
        api::CLONES_PER_REQUEST_MAX as usize
    );

    // A snapshot clones depend on cannot be deleted under them: it is
    // hidden, and the clones still read it.
    expect_error(
        &server.delete("/luns/vol0/db?recursive=true"),
        409,
        "has_dependents",
    );
    assert_eq!(server.delete("/snapshots/nightly?lun=vol0/db").status, 204);
    assert_eq!(server.get("/snapshots").body, json!([]));
    expect_error(
        &server.get("/snapshots/nightly?lun=vol0/db"),
        404,
        "not_found",
    );
    assert_eq!(
        server.get("/luns/vol0/test").body["parent"],
        "vol0/db@nightly (deleted)"
    );
    assert!(reads(&server, "vol0/test", 0, 4 * MIB, 0x5a));
    expect_error(
        &server.send(
            "POST",
            "/clones",
            json!({"source": "vol0/db@nightly", "name": "x"}),
        ),
        404,
        "not_found",
    );
    // Deleting every clone lets the snapshot go for real, and then the LUN.
    for c in server.get("/luns/vol0/db").body["clones"]
        .as_array()
        .unwrap()
        .clone()
    {
        let name = c.as_str().unwrap();
        assert_eq!(
            server.delete(&format!("/luns/{name}")).status,
            204,
            "{name}"
        );
    }
    assert_eq!(server.get("/luns/vol0/db").body["clones"], json!([]));
    assert_eq!(server.get("/luns/vol0/db").body["snapshot_count"], 0);
    assert_eq!(server.delete("/luns/vol0/db").status, 204);
}

#[test]
fn splits() {
    let server = Server::start();
    // Slow enough that a split of 16 MiB is still running when looked at.
    let slow = server.send("PATCH", "/settings", json!({"split_rate_mbps": 1}));
    assert_eq!(slow.status, 200, "{}", slow.body);
    create_lun(&server, "base", 16 * MIB);
    fill(&server, "base", 0, 16 * MIB, 0x5a);
    server.send("POST", "/snapshots", json!({"lun": "base", "name": "s1"}));
    server.send(
        "POST",
        "/clones",
        json!({"source": "base@s1", "name": "c/one"}),
    );

    let idle = server.get("/splits/c/one");
    assert_eq!(idle.status, 200, "{}", idle.body);
    assert_eq!(idle.body["lun"], "c/one");
    assert_eq!(idle.body["parent"], "base@s1");
    assert_eq!(idle.body["state"], "not-started");
    assert_eq!(idle.body["progress"], 0.0);
    assert_eq!(idle.body["total_bytes"], 16 * MIB);
    assert_eq!(server.get("/splits").body, json!([]));
    assert_eq!(server.get("/splits/c%2Fone").body, idle.body);

    let started = server.send("POST", "/splits/start", json!({"lun": "c/one"}));
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(started.body["state"], "running");
    assert_eq!(started.body["parent"], "base@s1");
    assert!(started.body["started"].as_u64().is_some());
    let listed = server.get("/splits");
    assert_eq!(listed.status, 200);
    assert_eq!(names(&listed.body), ["c/one"]);
    assert_eq!(names(&server.get("/splits?prefix=c/").body), ["c/one"]);
    assert_eq!(server.get("/splits?prefix=d").body, json!([]));
    // Starting again is harmless.
    let again = server.send("POST", "/splits/start", json!({"lun": "c/one"}));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["state"], "running");

    let stopped = server.send("POST", "/splits/stop", json!({"lun": "c/one"}));
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert_eq!(stopped.body["state"], "stopped");
    assert_eq!(stopped.body["rate_bytes_per_sec"], 0);
    assert!(stopped.body["progress"].as_f64().unwrap() < 1.0);
    // A batch already copying when the stop came may still land; after
    // that, a stopped split does not move.
    std::thread::sleep(Duration::from_millis(200));
    let progress = server.get("/splits/c/one").body["progress"]
        .as_f64()
        .unwrap();
    assert!(progress < 1.0);
    std::thread::sleep(Duration::from_millis(300));
    let still = server.get("/splits/c/one").body;
    assert_eq!(still["state"], "stopped");
    assert_eq!(still["progress"], progress, "a stopped split does not move");
    assert_eq!(names(&server.get("/splits").body), ["c/one"]);
    // A stopped split leaves a valid clone, still backed.
    assert_eq!(server.get("/luns/c/one").body["parent"], "base@s1");
    assert!(reads(&server, "c/one", 0, 16 * MIB, 0x5a));

    // Not a clone, no split, no such LUN.
    let refused = server.send("POST", "/splits/start", json!({"lun": "base"}));
    expect_error(&refused, 400, "invalid_argument");
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("not a clone"),
        "{}",
        refused.body
    );
    expect_error(
        &server.send("POST", "/splits/stop", json!({"lun": "base"})),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.send("POST", "/splits/start", json!({"lun": "nothing"})),
        404,
        "not_found",
    );
    expect_error(
        &server.send("POST", "/splits/stop", json!({"lun": "nothing"})),
        404,
        "not_found",
    );
    expect_error(&server.get("/splits/nothing"), 404, "not_found");
    let base = server.get("/splits/base");
    assert_eq!(base.status, 200, "{}", base.body);
    assert_eq!(base.body["state"], "independent");
    assert_eq!(base.body["parent"], Value::Null);
    // LUNs named like the actions still have a status route.
    expect_error(&server.get("/splits/start"), 404, "not_found");
    create_lun(&server, "stop", 4096);
    assert_eq!(server.get("/splits/stop").body["state"], "independent");

    // A snapclone starts its split at once.
    let snapclone = server.send(
        "POST",
        "/clones",
        json!({"source": "base@s1", "name": "c/two", "split": true}),
    );
    assert_eq!(snapclone.status, 201, "{}", snapclone.body);
    assert_eq!(server.get("/splits/c/two").body["state"], "running");
    assert_eq!(names(&server.get("/splits").body), ["c/one", "c/two"]);

    // Lift the limit: both finish.
    let fast = server.send("PATCH", "/settings", json!({"split_rate_mbps": 0}));
    assert_eq!(fast.status, 200, "{}", fast.body);
    assert_eq!(
        fast.body,
        json!({"split_rate_mbps": 0, "split_rate_bytes_per_sec": 0, "mirror_rate_mbps": 0, "mirror_rate_bytes_per_sec": 0, "io_metrics": false, "scrub_rate_mbps": 64, "scrub_rate_bytes_per_sec": 64_000_000u64, "rebuild_rate_mbps": 256, "rebuild_rate_bytes_per_sec": 256_000_000u64})
    );
    let resumed = server.send("POST", "/splits/start", json!({"lun": "c/one"}));
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert!(resumed.body["progress"].as_f64().unwrap() >= progress);
    for lun in ["c/one", "c/two"] {
        let done = wait_split_done(&server, lun, 30);
        assert_eq!(done["progress"], 1.0, "{done}");
        assert_eq!(done["parent"], Value::Null, "{done}");
        assert_eq!(done["copied_bytes"], 16 * MIB, "{done}");
        let lun_info = server.get(&format!("/luns/{lun}")).body;
        assert_eq!(lun_info["parent"], Value::Null, "{lun_info}");
        assert!(reads(&server, lun, 0, 16 * MIB, 0x5a), "{lun}");
    }
    assert_eq!(server.get("/splits").body, json!([]));
    assert_eq!(server.get("/luns/base").body["clones"], json!([]));
    assert_eq!(
        server.get("/snapshots/s1?lun=base").body["clones"],
        json!([])
    );
    // Split clones are independent: the snapshot goes at once.
    expect_error(
        &server.send("POST", "/splits/start", json!({"lun": "c/one"})),
        400,
        "invalid_argument",
    );
    assert_eq!(server.delete("/snapshots/s1?lun=base").status, 204);
    assert_eq!(server.get("/snapshots").body, json!([]));
    assert!(reads(&server, "c/one", 0, 16 * MIB, 0x5a));
}

#[test]
fn a_split_frees_a_deleted_snapshot() {
    let server = Server::start();
    create_lun(&server, "base", 8 * MIB);
    fill(&server, "base", 0, 8 * MIB, 0x11);
    server.send("POST", "/snapshots", json!({"lun": "base", "name": "s1"}));
    server.send("POST", "/clones", json!({"source": "base@s1", "name": "c"}));
    assert_eq!(server.delete("/snapshots/s1?lun=base").status, 204);
    assert_eq!(server.get("/snapshots").body, json!([]));
    assert_eq!(server.get("/luns/c").body["parent"], "base@s1 (deleted)");
    assert_eq!(server.get("/luns/base").body["clones"], json!(["c"]));
    // The name is free again.
    let reused = server.send("POST", "/snapshots", json!({"lun": "base", "name": "s1"}));
    assert_eq!(reused.status, 201, "{}", reused.body);
    assert_eq!(reused.body["clones"], json!([]));

    let started = server.send("POST", "/splits/start", json!({"lun": "c"}));
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(started.body["parent"], "base@s1");
    wait_split_done(&server, "c", 30);
    assert_eq!(server.get("/luns/base").body["clones"], json!([]));
    assert_eq!(server.get("/luns/c").body["parent"], Value::Null);
    assert_eq!(names(&server.get("/snapshots").body), ["s1"]);
    assert!(reads(&server, "c", 0, 8 * MIB, 0x11));
}

#[test]
fn settings() {
    let server = Server::start();
    let shown = server.get("/settings");
    assert_eq!(shown.status, 200);
    assert_eq!(
        shown.body,
        json!({"split_rate_mbps": 128, "split_rate_bytes_per_sec": 128_000_000u64, "mirror_rate_mbps": 0, "mirror_rate_bytes_per_sec": 0, "io_metrics": false, "scrub_rate_mbps": 64, "scrub_rate_bytes_per_sec": 64_000_000u64, "rebuild_rate_mbps": 256, "rebuild_rate_bytes_per_sec": 256_000_000u64})
    );
    let set = server.send("PATCH", "/settings", json!({"split_rate_mbps": 5}));
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        set.body,
        json!({"split_rate_mbps": 5, "split_rate_bytes_per_sec": 5_000_000, "mirror_rate_mbps": 0, "mirror_rate_bytes_per_sec": 0, "io_metrics": false, "scrub_rate_mbps": 64, "scrub_rate_bytes_per_sec": 64_000_000u64, "rebuild_rate_mbps": 256, "rebuild_rate_bytes_per_sec": 256_000_000u64})
    );
    assert_eq!(server.engine.split_rate(), 5_000_000);
    let scrub = server.send("PATCH", "/settings", json!({"scrub_rate_mbps": 10}));
    assert_eq!(scrub.status, 200, "{}", scrub.body);
    assert_eq!(scrub.body["scrub_rate_bytes_per_sec"], 10_000_000);
    assert_eq!(server.engine.scrub_rate(), 10_000_000);
    let bad = server.send("PATCH", "/settings", json!({"scrub_rate_mbps": -1}));
    assert_eq!(bad.status, 400, "{}", bad.body);
    // A pool on one data file has no checksums to scrub.
    let refused = server.send("POST", "/pool/scrub/start", json!(null));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(server.get("/pool/scrub").body["state"], "never");
    assert_eq!(server.get("/pool/devices").body, json!([]));
    let back = server.send("PATCH", "/settings", json!({"scrub_rate_mbps": 64}));
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(server.get("/settings").body, set.body);
    // Nothing asked, nothing changed.
    let same = server.send("PATCH", "/settings", json!({}));
    assert_eq!(same.status, 200, "{}", same.body);
    assert_eq!(same.body, set.body);
    // The largest rate that fits.
    let max = u64::MAX / 1_000_000;
    let big = server.send("PATCH", "/settings", json!({"split_rate_mbps": max}));
    assert_eq!(big.status, 200, "{}", big.body);
    assert_eq!(big.body["split_rate_mbps"], max);
    let refused = server.send("PATCH", "/settings", json!({"split_rate_mbps": max + 1}));
    expect_error(&refused, 400, "invalid_argument");
    assert_eq!(server.get("/settings").body, big.body);
    expect_error(
        &server.raw("PATCH", "/settings", Some("text/plain"), b"{}"),
        415,
        "unsupported_media_type",
    );
    expect_error(
        &server.raw("POST", "/settings", Some("application/json"), b"{}"),
        405,
        "method_not_allowed",
    );
}

#[test]
fn malformed_requests_are_4xx_and_change_nothing() {
    let server = Server::start();
    create_lun(&server, "vol0", GIB);
    server.send("POST", "/snapshots", json!({"lun": "vol0", "name": "s"}));
    let before = server.observable_state();

    let json_type = Some("application/json");
    let bodies: &[(&str, &str, &[u8], &str)] = &[
        ("POST", "/luns", b"{not json", "invalid request body"),
        ("POST", "/luns", b"", "expected a JSON object"),
        ("POST", "/luns", br#"["x", 4096]"#, "expected a JSON object"),
        ("POST", "/luns", b"null", "expected a JSON object"),
        ("POST", "/luns", br#"{"name": "x"}"#, "missing field `size`"),
        (
            "POST",
            "/luns",
            br#"{"size": 4096}"#,
            "missing field `name`",
        ),
        (
            "POST",
            "/luns",
            br#"{"name": 5, "size": 4096}"#,
            "invalid type",
        ),
        (
            "POST",
            "/luns",
            br#"{"name": "x", "size": 4096, "color": "red"}"#,
            "unknown field `color`",
        ),
        (
            "POST",
            "/luns",
            br#"{"name": "x", "size": "10G"}"#,
            "whole number of bytes",
        ),
        (
            "POST",
            "/luns",
            br#"{"name": "x", "size": -4096}"#,
            "whole number of bytes",
        ),
        (
            "POST",
            "/luns",
            br#"{"name": "x", "size": 4096.0}"#,
            "whole number of bytes",
        ),
        (
            "POST",
            "/luns",
            br#"{"name": "x", "size": 4096} trailing"#,
            "trailing",
        ),
        (
            "PATCH",
            "/luns/vol0",
            br#"{"size": "2G"}"#,
            "whole number of bytes",
        ),
        (
            "PATCH",
            "/luns/vol0",
            br#"{"size": 8192, "shrink": "yes"}"#,
            "invalid type",
        ),
        (
            "PATCH",
            "/luns/vol0",
            br#"{"shrink": true}"#,
            "missing field `size`",
        ),
        (
            "POST",
            "/snapshots",
            br#"{"lun": "vol0"}"#,
            "missing field `name`",
        ),
        (
            "POST",
            "/snapshots",
            br#"{"lun": "vol0", "name": "t", "group": "g"}"#,
            "unknown field `group`",
        ),
        (
            "POST",
            "/snapshots",
            br#"{"snapshots": {"lun": "vol0"}}"#,
            "invalid type",
        ),
        (
            "POST",
            "/snapshots",
            br#"{"snapshots": [{"lun": "vol0", "name": "t", "x": 1}]}"#,
            "unknown field `x`",
        ),
        (
            "POST",
            "/group-snapshots",
            br#"{"name": "g"}"#,
            "missing field `luns`",
        ),
        (
            "POST",
            "/group-snapshots",
            br#"{"name": "g", "luns": "vol0"}"#,
            "invalid type",
        ),
        (
            "PATCH",
            "/pool",
            br#"{"capacity": "4T"}"#,
            "whole number of bytes",
        ),
        (
            "PATCH",
            "/pool",
            br#"{"capacity_bytes": 4398046511104}"#,
            "unknown field",
        ),
        (
            "POST",
            "/clones",
            br#"{"name": "c"}"#,
            "missing field `source`",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s"}"#,
            "missing field `name`",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "c", "count": "3"}"#,
            "invalid type",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "c", "count": -1}"#,
            "invalid value",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "c", "count": 4294967296}"#,
            "invalid value",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "c", "count": 0}"#,
            "`count` must be 1 to 10000",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "c", "count": 10001}"#,
            "`count` must be 1 to 10000",
        ),
        // With `count`, NAME was never checked: "" made a clone named "-1"
        // (found by scripts/fuzz-api.sh).
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "", "count": 1}"#,
            "LUN name must be 1 to 255 bytes",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "vol0/", "count": 2}"#,
            "empty",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "c", "split": "yes"}"#,
            "invalid type",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "c", "parent": "x"}"#,
            "unknown field `parent`",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0", "name": "c"}"#,
            "must name a snapshot",
        ),
        (
            "POST",
            "/clones",
            br#"{"source": "vol0@s", "name": "bad name"}"#,
            "contains ' '",
        ),
        ("POST", "/splits/start", b"{}", "missing field `lun`"),
        ("POST", "/splits/start", br#"{"lun": 5}"#, "invalid type"),
        (
            "POST",
            "/splits/stop",
            br#"{"lun": "vol0", "now": true}"#,
            "unknown field `now`",
        ),
        (
            "POST",
            "/splits/start",
            br#"{"lun": "vol0"}"#,
            "not a clone",
        ),
        ("POST", "/splits/stop", br#"{"lun": "vol0"}"#, "no split"),
        (
            "PATCH",
            "/settings",
            br#"{"split_rate_mbps": "10M"}"#,
            "whole number of MB/s",
        ),
        (
            "PATCH",
            "/settings",
            br#"{"split_rate_mbps": -1}"#,
            "whole number of MB/s",
        ),
        (
            "PATCH",
            "/settings",
            br#"{"split_rate_mbps": 1.5}"#,
            "whole number of MB/s",
        ),
        (
            "PATCH",
            "/settings",
            br#"{"split_rate_mbps": null}"#,
            "whole number of MB/s",
        ),
        (
            "PATCH",
            "/settings",
            br#"{"split_rate_mbps": 18446744073709551615}"#,
            "too large",
        ),
        (
            "PATCH",
            "/settings",
            br#"{"split_rate": 10}"#,
            "unknown field `split_rate`",
        ),
        // Capacities no data file can have were a 500 (an I/O error from
        // growing the file); found by scripts/fuzz-api.sh.
        (
            "PATCH",
            "/pool",
            br#"{"capacity": 9223372036854775808}"#,
            "1 PiB maximum",
        ),
        (
            "PATCH",
            "/pool",
            br#"{"capacity": 18446744073709547520}"#,
            "1 PiB maximum",
        ),
        (
            "PATCH",
            "/pool",
            br#"{"capacity": 1125899906846720}"#,
            "1 PiB maximum",
        ),
    ];
    for (method, path, body, fragment) in bodies {
        let reply = server.raw(method, path, json_type, body);
        let shown = String::from_utf8_lossy(body);
        assert_eq!(reply.status, 400, "{method} {path} {shown}: {}", reply.body);
        assert_eq!(reply.body["code"], "invalid_argument", "{shown}");
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains(fragment), "{shown}: {message}");
    }

    // The body must be declared JSON.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let reply = server.raw(
            "POST",
            "/luns",
            content_type,
            br#"{"name": "x", "size": 4096}"#,
        );
        expect_error(&reply, 415, "unsupported_media_type");
    }
    assert_eq!(
        server
            .raw(
                "POST",
                "/luns",
                Some("application/json; charset=utf-8"),
                br#"{"name": "ok", "size": 4096}"#
            )
            .status,
        201
    );
    assert_eq!(server.delete("/luns/ok").status, 204);

    // Too large a body.
    let padding = "x".repeat(api::BODY_BYTES_MAX);
    let big = json!({"name": padding, "size": 4096}).to_string();
    expect_error(
        &server.raw("POST", "/luns", json_type, big.as_bytes()),
        413,
        "payload_too_large",
    );

    // Bad query strings.
    expect_error(&server.get("/luns?color=red"), 400, "invalid_argument");
    expect_error(
        &server.delete("/luns/vol0?recursive=yes"),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.delete("/luns/vol0?force=true"),
        400,
        "invalid_argument",
    );
    expect_error(
        &server.get("/snapshots?lun=vol0&x=1"),
        400,
        "invalid_argument",
    );
    expect_error(&server.get("/splits?lun=vol0"), 400, "invalid_argument");

    // Unknown routes and methods.
    expect_error(&server.get("/nothing"), 404, "not_found");
    expect_error(
        &server.raw("GET", "/../../etc/passwd", None, b""),
        404,
        "not_found",
    );
    expect_error(
        &server.raw("PUT", "/luns", json_type, b"{}"),
        405,
        "method_not_allowed",
    );
    expect_error(
        &server.raw("POST", "/luns/vol0", json_type, b"{}"),
        405,
        "method_not_allowed",
    );
    expect_error(
        &server.raw("DELETE", "/pool", None, b""),
        405,
        "method_not_allowed",
    );
    expect_error(
        &server.raw("GET", "/clones", None, b""),
        405,
        "method_not_allowed",
    );
    expect_error(
        &server.raw("DELETE", "/splits/vol0", None, b""),
        405,
        "method_not_allowed",
    );
    expect_error(
        &server.raw("POST", "/splits", json_type, br#"{"lun": "vol0"}"#),
        405,
        "method_not_allowed",
    );

    assert_eq!(server.observable_state(), before);
}

#[test]
fn closed_pool_is_503() {
    let server = Server::start();
    server.engine.close().unwrap();
    expect_error(&server.get("/pool"), 503, "closed");
    expect_error(&server.get("/luns"), 503, "closed");
    expect_error(
        &server.send("POST", "/luns", json!({"name": "x", "size": 4096})),
        503,
        "closed",
    );
    expect_error(&server.get("/splits"), 503, "closed");
    expect_error(&server.get("/pool/check"), 503, "closed");
    expect_error(
        &server.send("POST", "/clones", json!({"source": "a@b", "name": "c"})),
        503,
        "closed",
    );
}

#[test]
fn pool_check_reports_a_sound_pool() {
    let server = Server::start();
    assert_eq!(
        server
            .send("POST", "/luns", json!({"name": "a", "size": 1 << 20}))
            .status,
        201
    );
    let r = server.get("/pool/check");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["problems"], json!([]));
    assert_eq!(r.body["luns"], 1);
}

#[test]
fn openapi_lists_every_route() {
    let server = Server::start();
    let doc = server.get("/openapi.json");
    assert_eq!(doc.status, 200);
    assert!(doc.content_type.starts_with("application/json"));
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    let expected: &[(&str, &[&str])] = &[
        ("/api/v1/luns", &["get", "post"]),
        ("/api/v1/luns/{name}", &["get", "patch", "delete"]),
        ("/api/v1/snapshots", &["get", "post"]),
        ("/api/v1/snapshots/{snapshot}", &["get", "delete"]),
        ("/api/v1/snapshots/{snapshot}/restore", &["post"]),
        ("/api/v1/group-snapshots", &["get", "post"]),
        ("/api/v1/group-snapshots/{name}", &["get", "delete"]),
        ("/api/v1/clones", &["post"]),
        ("/api/v1/splits", &["get"]),
        ("/api/v1/splits/{lun}", &["get"]),
        ("/api/v1/splits/start", &["post"]),
        ("/api/v1/splits/stop", &["post"]),
        ("/api/v1/clone-range", &["post"]),
        ("/api/v1/igroups", &["get", "post"]),
        ("/api/v1/igroups/{name}", &["get", "delete"]),
        ("/api/v1/igroups/{name}/members", &["post", "delete"]),
        ("/api/v1/lun-maps", &["get", "post", "delete"]),
        ("/api/v1/jobs", &["get"]),
        ("/api/v1/pool", &["get", "patch"]),
        ("/api/v1/pool/check", &["get"]),
        ("/api/v1/pool/devices", &["get", "post", "delete"]),
        ("/api/v1/pool/devices/replace", &["post"]),
        ("/api/v1/pool/devices/clear", &["post"]),
        ("/api/v1/relayouts", &["post"]),
        ("/api/v1/pool/devices/job", &["get"]),
        ("/api/v1/pool/scrub", &["get"]),
        ("/api/v1/pool/scrub/start", &["post"]),
        ("/api/v1/pool/scrub/stop", &["post"]),
        ("/api/v1/settings", &["get", "patch"]),
        ("/api/v1/peer-tokens", &["get", "post"]),
        ("/api/v1/peer-tokens/{name}", &["delete"]),
        ("/api/v1/replication/luns", &["get"]),
        ("/api/v1/replication/snapshots", &["post"]),
        ("/api/v1/replication/hold", &["post"]),
        ("/api/v1/replication/release", &["post"]),
        ("/api/v1/replication/stream", &["get"]),
        ("/api/v1/replication/reverse", &["post"]),
        ("/api/v1/peers", &["get", "post"]),
        ("/api/v1/peers/{name}", &["delete"]),
        ("/api/v1/mirrors", &["get", "post"]),
        ("/api/v1/mirrors/{name}", &["get", "delete"]),
        ("/api/v1/mirrors/update", &["post"]),
        ("/api/v1/mirrors/abort", &["post"]),
        ("/api/v1/mirrors/break", &["post"]),
        ("/api/v1/mirrors/resync", &["post"]),
        ("/api/v1/mirrors/reverse", &["post"]),
        ("/api/v1/events", &["get"]),
        ("/api/v1/io", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
    ];
    assert_eq!(
        paths.len(),
        expected.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (path, methods) in expected {
        let item = paths.get(*path).unwrap_or_else(|| panic!("{path} missing"));
        let mut documented: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        documented.sort();
        let mut wanted = methods.to_vec();
        wanted.sort();
        assert_eq!(documented, wanted, "{path}");
    }
    let mut operation_ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|op| {
            op["operationId"]
                .as_str()
                .expect("every operation has an id")
        })
        .collect();
    let count = operation_ids.len();
    operation_ids.sort();
    operation_ids.dedup();
    assert_eq!(operation_ids.len(), count, "operation ids are unique");
    // The answers of the layers around the handlers are documented too, so
    // that a schema-driven client meets no undocumented status.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let mut wanted = vec!["401"];
            if op.get("requestBody").is_some() {
                wanted.extend(["400", "413", "415"]);
            }
            if op.get("parameters").is_some() {
                wanted.push("400");
            }
            if op["operationId"] != "openapi" {
                wanted.extend(["500", "503"]);
            }
            for status in wanted {
                let response = responses
                    .get(status)
                    .unwrap_or_else(|| panic!("{method} {path} does not document {status}"));
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    for schema in [
        "ErrorBody",
        "LunInfo",
        "SnapshotInfo",
        "GroupInfo",
        "JobInfo",
        "PoolStatus",
        "CreateLun",
        "ResizeLun",
        "CreateSnapshot",
        "CreateSnapshots",
        "CreateGroupSnapshot",
        "GrowPool",
        "CreateClones",
        "SplitInfo",
        "SplitTarget",
        "Settings",
        "UpdateSettings",
        "IgroupInfo",
        "CreateIgroup",
        "IgroupMember",
        "LunMap",
        "CloneRanges",
        "CloneRangeReport",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    // Every documented operation answers (nothing documented is unrouted):
    // a route that does not exist would be a 404 with code not_found and
    // a "no API route" message.
    for (path, methods) in expected {
        let concrete = path
            .trim_start_matches("/api/v1")
            .replace("{name}", "x")
            .replace("{snapshot}", "x")
            .replace("{lun}", "x");
        for method in *methods {
            let reply = server.raw(
                &method.to_uppercase(),
                &concrete,
                Some("application/json"),
                b"{}",
            );
            let message = reply.body["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains("no API route"),
                "{method} {concrete}: {message}"
            );
            assert_ne!(reply.status, 405, "{method} {concrete}");
        }
    }
}

#[test]
fn graceful_shutdown_returns() {
    let server = Server::start();
    assert_eq!(server.get("/pool").status, 200);
    server.stop().unwrap();
}

#[test]
fn token_is_required_on_every_route_and_a_refusal_changes_nothing() {
    let server = Server::start_with_token(Some("s3cret-token"));
    let before = server.engine.pool_status().unwrap();
    for (method, path, body) in [
        ("GET", "/pool", None),
        ("GET", "/openapi.json", None),
        ("POST", "/luns", Some(json!({"name": "x", "size": 4096}))),
        ("DELETE", "/luns/x", None),
        ("POST", "/igroups", Some(json!({"name": "g"}))),
        ("PATCH", "/pool", Some(json!({"access": "open"}))),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic s3cret-token"),
            Some("Bearer s3cret-tokeN"),
        ] {
            let mut request = ureq::http::Request::builder()
                .method(method)
                .uri(format!("{}{path}", server.base))
                .header("content-type", "application/json");
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let body = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            let mut response = server
                .agent
                .run(request.body(body.into_bytes()).unwrap())
                .unwrap();
            assert_eq!(
                response.status().as_u16(),
                401,
                "{method} {path} with {auth:?}"
            );
            assert_eq!(
                response.headers().get("www-authenticate").unwrap(),
                "Bearer"
            );
            let v: Value =
                serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
            assert_eq!(v["code"], "unauthorized");
        }
    }
    assert_eq!(
        server.engine.pool_status().unwrap(),
        before,
        "nothing changed"
    );
    assert!(server.engine.list_luns("").unwrap().is_empty());
    let request = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("{}/pool", server.base))
        .header("authorization", "Bearer s3cret-token");
    let response = server.agent.run(request.body(()).unwrap()).unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[test]
fn igroups_and_lun_maps() {
    let server = Server::start();
    assert_eq!(
        server
            .send("POST", "/luns", json!({"name": "vol0/db", "size": 1 << 20}))
            .status,
        201
    );
    let r = server.send(
        "POST",
        "/igroups",
        json!({"name": "app", "addresses": ["10.0.0.0/24", "192.0.2.7"], "cert_cns": ["host-a"]}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["addresses"], json!(["10.0.0.0/24", "192.0.2.7/32"]));
    let before = server.get("/igroups").body;
    for (method, path, body, status, code) in [
        (
            "POST",
            "/igroups",
            json!({"name": "app"}),
            409,
            "already_exists",
        ),
        (
            "POST",
            "/igroups",
            json!({"name": "a/b"}),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/igroups",
            json!({"name": "x", "addresses": ["10.0.0.0/40"]}),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/igroups",
            json!({"name": "x", "cert_cns": [""]}),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/igroups",
            json!({"name": "x", "extra": 1}),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/igroups/app/members",
            json!({}),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/igroups/app/members",
            json!({"address": "10.1.0.0/16", "cert_cn": "h"}),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/igroups/app/members",
            json!({"address": "10.0.0.0/24"}),
            409,
            "already_exists",
        ),
        (
            "POST",
            "/igroups/nope/members",
            json!({"address": "10.1.0.0/16"}),
            404,
            "not_found",
        ),
        (
            "POST",
            "/lun-maps",
            json!({"lun": "vol0/db", "igroup": "nope"}),
            404,
            "not_found",
        ),
        (
            "POST",
            "/lun-maps",
            json!({"lun": "nope", "igroup": "app"}),
            404,
            "not_found",
        ),
        (
            "POST",
            "/lun-maps",
            json!({"lun": "vol0/db"}),
            400,
            "invalid_argument",
        ),
        ("PATCH", "/pool", json!({}), 400, "invalid_argument"),
        (
            "PATCH",
            "/pool",
            json!({"access": "ajar"}),
            400,
            "invalid_argument",
        ),
    ] {
        let r = server.send(method, path, body.clone());
        assert_eq!(
            (r.status, r.body["code"].as_str().unwrap()),
            (status, code),
            "{method} {path} {body}"
        );
    }
    assert_eq!(
        server.get("/igroups").body,
        before,
        "refusals change nothing"
    );
    assert_eq!(
        server
            .delete("/igroups/app/members?address=10.9.9.9")
            .status,
        404
    );
    assert_eq!(server.delete("/igroups/app/members").status, 400);
    let r = server.send(
        "POST",
        "/lun-maps",
        json!({"lun": "vol0/db", "igroup": "app"}),
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        server
            .send(
                "POST",
                "/lun-maps",
                json!({"lun": "vol0/db", "igroup": "app"})
            )
            .status,
        409
    );
    assert_eq!(
        server.get("/lun-maps").body,
        json!([{"lun": "vol0/db", "igroup": "app"}])
    );
    assert_eq!(server.get("/luns/vol0/db").body["maps"], json!(["app"]));
    assert_eq!(server.get("/igroups/app").body["luns"], json!(["vol0/db"]));
    let r = server.delete("/igroups/app");
    assert_eq!(
        (r.status, r.body["code"].as_str().unwrap()),
        (409, "has_dependents")
    );
    let r = server.delete("/igroups/app/members?cert_cn=host-a");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["cert_cns"], json!([]));
    assert_eq!(
        server.delete("/lun-maps?lun=vol0/db&igroup=app").status,
        204
    );
    assert_eq!(
        server.delete("/lun-maps?lun=vol0/db&igroup=app").status,
        404
    );
    assert_eq!(server.delete("/igroups/app").status, 204);
    assert_eq!(server.get("/pool").body["access"], "closed");
    let r = server.send("PATCH", "/pool", json!({"access": "open"}));
    assert_eq!(
        (r.status, r.body["access"].as_str().unwrap()),
        (200, "open")
    );
}

#[test]
fn clone_range_over_the_api() {
    let server = Server::start();
    for name in ["src", "dst"] {
        assert_eq!(
            server
                .send("POST", "/luns", json!({"name": name, "size": 1 << 20}))
                .status,
            201
        );
    }
    let t = server.engine.resolve("src").unwrap();
    server.engine.write(t, 0, &[9u8; 8192], false).unwrap();
    let r = server.send(
        "POST",
        "/clone-range",
        json!({"target": "dst", "ranges": [{"source": "src", "source_offset": 0, "target_offset": 65536, "length": 8192}]}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["bytes"], 8192);
    assert_eq!(r.body["shared_bytes"], 8192);
    let d = server.engine.resolve("dst").unwrap();
    let mut buf = vec![0u8; 8192];
    server.engine.read(d, 65536, &mut buf).unwrap();
    assert_eq!(buf, vec![9u8; 8192]);
    for (body, status) in [
        (json!({"target": "dst", "ranges": []}), 400),
        (
            json!({"target": "dst", "ranges": [{"source": "src", "source_offset": 1, "target_offset": 0, "length": 4096}]}),
            400,
        ),
        (
            json!({"target": "dst", "ranges": [{"source": "nope", "source_offset": 0, "target_offset": 0, "length": 4096}]}),
            404,
        ),
        (
            json!({"target": "dst", "ranges": [{"source": "src", "source_offset": 0, "target_offset": 1048576, "length": 4096}]}),
            400,
        ),
        (
            json!({"target": "dst", "ranges": [{"source": "src", "source_offset": 0, "target_offset": 0, "length": -1}]}),
            400,
        ),
        (json!({"target": "dst"}), 400),
    ] {
        assert_eq!(
            server.send("POST", "/clone-range", body.clone()).status,
            status,
            "{body}"
        );
    }
}

/// The dashboard's sign-in without a browser: a session cookie for the
/// right token only, with its flags; the cookie opens the API for reads,
/// and for changes only with the dashboard's header; signing out ends it.
#[test]
fn dashboard_sessions() {
    let token = "dashboard-test-token-0123456789";
    let server = Server::start_with_token(Some(token));
    let root = server.base.trim_end_matches("/api/v1").to_string();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .save_redirect_history(false)
        .build()
        .into();
    let call = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let mut r = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{root}{path}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut resp = agent.run(r.body(body.to_string()).unwrap()).unwrap();
        let status = resp.status().as_u16();
        let cookie = resp
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, cookie, location, text)
    };
    // No session: the login form (and the assets, which hold nothing secret).
    let (status, _, _, page) = call("GET", "/ui", &[], "");
    assert_eq!(status, 200);
    assert!(page.contains("name=\"token\""), "{page}");
    assert_eq!(call("GET", "/ui/app.js", &[], "").0, 200);
    // A wrong token: the form again, with a sentence, and no cookie.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, cookie, _, page) = call("POST", "/ui/login", &form, "token=nope");
    assert_eq!(status, 401);
    assert!(cookie.is_none());
    assert!(page.contains("not the API token"), "{page}");
    // The right one: a session cookie with its flags, and back to /ui.
    let (status, cookie, location, _) = call("POST", "/ui/login", &form, &format!("token={token}"));
    assert_eq!(status, 303);
    assert_eq!(location.as_deref(), Some("/ui"));
    let cookie = cookie.expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let with_cookie = [("cookie", session.as_str())];
    let (status, _, _, page) = call("GET", "/ui", &with_cookie, "");
    assert_eq!(status, 200);
    assert!(page.contains("/ui/app.js"), "{page}");
    // Reads with the cookie alone; changes need the dashboard's header.
    assert_eq!(call("GET", "/api/v1/luns", &with_cookie, "").0, 200);
    let json_cookie = [
        ("cookie", session.as_str()),
        ("content-type", "application/json"),
    ];
    let body = r#"{"name":"ui-lun","size":1048576}"#;
    let (status, _, _, text) = call("POST", "/api/v1/luns", &json_cookie, body);
    assert_eq!(status, 403, "{text}");
    assert!(
        server.engine.lun_info("ui-lun").is_err(),
        "the refused change changed nothing"
    );
    let with_header = [
        ("cookie", session.as_str()),
        ("content-type", "application/json"),
        ("x-blockfork-ui", "1"),
    ];
    assert_eq!(call("POST", "/api/v1/luns", &with_header, body).0, 201);
    // A made-up session is no session.
    let forged = [("cookie", "bf_session=00ff")];
    assert_eq!(call("GET", "/api/v1/luns", &forged, "").0, 401);
    // Signing out ends the session.
    let (status, cookie, _, _) = call("POST", "/ui/logout", &with_cookie, "");
    assert_eq!(status, 303);
    assert!(cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(call("GET", "/api/v1/luns", &with_cookie, "").0, 401);
    // /metrics needs the token too (no --metrics-public here).
    assert_eq!(call("GET", "/metrics", &[], "").0, 401);
    let bearer = format!("Bearer {token}");
    let (status, _, _, text) = call("GET", "/metrics", &[("authorization", bearer.as_str())], "");
    assert_eq!(status, 200);
    assert!(text.contains("blockfork_pool_capacity_bytes"), "{text}");
}

#[test]
fn events_over_the_api() {
    let server = Server::start();
    create_lun(&server, "ev", 1 << 20);
    let page = server.get("/events?since=0");
    assert_eq!(page.status, 200);
    let events = page.body["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "lun-created" && e["object"] == "ev"),
        "{events:?}"
    );
    let last = page.body["last_id"].as_u64().unwrap();
    // Nothing new: a long poll answers when something happens.
    let waiter = {
        let base = server.base.clone();
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let t = std::time::Instant::now();
            let text = agent
                .get(format!("{base}/events?since={last}&wait=20"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap();
            (t.elapsed(), text)
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    server.engine.delete_lun("ev", false).unwrap();
    let (took, text) = waiter.join().unwrap();
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(text.contains("lun-deleted"), "{text}");
    // A since past the newest id answers at once, with the real newest.
    let t = std::time::Instant::now();
    let ahead = server.get("/events?since=999999&wait=20");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(ahead.body["events"], json!([]));
    assert_eq!(ahead.body["last_id"], last + 1);
    for bad in [
        "limit=0",
        "limit=5000",
        "wait=100",
        "since=-1",
        "since=x",
        "since=9223372036854775808",
        "extra=1",
    ] {
        expect_error(
            &server.get(&format!("/events?{bad}")),
            400,
            "invalid_argument",
        );
    }
    // Without telemetry (an embedded API), the I/O report says so.
    let io = server.get("/io");
    assert_eq!(io.status, 200);
    assert_eq!(io.body["counting"], false);
}
