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
                api::serve(listener, served, async {
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
        let text = response.body_mut().read_to_string().unwrap();
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
        ("/api/v1/jobs", &["get"]),
        ("/api/v1/pool", &["get", "patch"]),
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
            .replace("{snapshot}", "x");
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
