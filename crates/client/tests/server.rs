//! The client against the real API: a real engine in a temporary
//! directory, `api::serve` on 127.0.0.1:0 with a token, every operation
//! called through the typed client, and the errors it reports.

use client::wire::*;
use client::{Client, ClientError};
use engine::{Engine, EngineConfig};
use std::time::Duration;

const GIB: u64 = 1 << 30;
const TOKEN: &str = "client-test-token";

struct Server {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_dir(dir.path(), Some(GIB), EngineConfig::default()).unwrap();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).unwrap();
                let config = api::ApiConfig {
                    token: Some(TOKEN.into()),
                    ..Default::default()
                };
                api::serve(listener, engine, config, async {
                    let _ = shutdown_rx.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Server {
            url: format!("http://{addr}"),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.url, Some(TOKEN.into()), None).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

fn status(e: ClientError) -> (Option<u16>, Option<String>, String) {
    (e.status, e.code, e.message)
}

#[test]
fn luns_snapshots_clones_and_access() {
    let server = Server::start();
    let c = server.client();
    let lun = c
        .create_lun(&CreateLun {
            name: "vol0/db".into(),
            size: 64 << 20,
            redundancy: None,
            reserve: true,
            snapshot_reserve_percent: 10,
        })
        .unwrap();
    assert_eq!((lun.name.as_str(), lun.size_bytes), ("vol0/db", 64 << 20));
    assert!(lun.reserve && lun.snapshot_reserve_percent == 10, "{lun:?}");
    assert!(lun.reserved_bytes > 64 << 20, "{lun:?}");
    assert_eq!(c.pool().unwrap().reserved_bytes, lun.reserved_bytes);
    assert_eq!(c.lun("vol0/db").unwrap().id, lun.id);
    assert_eq!(c.list_luns(Some("vol0/")).unwrap().len(), 1);
    assert!(c.list_luns(Some("other/")).unwrap().is_empty());
    let grown = c
        .resize_lun(
            "vol0/db",
            &ResizeLun {
                size: 128 << 20,
                shrink: false,
            },
        )
        .unwrap();
    assert_eq!(grown.size_bytes, 128 << 20);

    let snap = c.create_snapshot("vol0/db", "nightly").unwrap();
    assert_eq!(snap.name, "nightly");
    assert_eq!(c.snapshot("vol0/db", "nightly").unwrap().name, "nightly");
    let batch = c
        .create_snapshots(&CreateSnapshotBatch {
            snapshots: vec![CreateSnapshot {
                lun: "vol0/db".into(),
                name: "b1".into(),
            }],
        })
        .unwrap();
    assert_eq!(batch.snapshots.len(), 1);
    assert_eq!(c.list_snapshots(Some("vol0/db")).unwrap().len(), 2);
    c.delete_snapshot("vol0/db", "b1").unwrap();
    let restored = c.restore_snapshot("vol0/db", "nightly").unwrap();
    assert_eq!(restored.name, "vol0/db");

    let clones = c
        .create_clones(&CreateClones {
            source: "vol0/db@nightly".into(),
            name: "vol0/test".into(),
            count: Some(2),
            split: false,
        })
        .unwrap();
    assert_eq!(clones.len(), 2);
    let started = c.start_split("vol0/test-1").unwrap();
    assert_eq!(started.lun, "vol0/test-1");
    assert_eq!(c.split("vol0/test-1").unwrap().lun, "vol0/test-1");
    let _ = c.list_splits(Some("vol0/")).unwrap();
    let report = c
        .clone_ranges(&CloneRanges {
            target: "vol0/test-2".into(),
            ranges: vec![CloneRange {
                source: "vol0/db@nightly".into(),
                source_offset: 0,
                target_offset: 4096,
                length: 4096,
            }],
        })
        .unwrap();
    assert_eq!(report.bytes, 4096);

    let group = c
        .create_igroup(&CreateIgroup {
            name: "hosts".into(),
            addresses: vec!["127.0.0.1/32".into()],
            cert_cns: vec![],
        })
        .unwrap();
    assert_eq!(group.name, "hosts");
    let member = IgroupMember {
        address: Some("10.0.0.0/24".into()),
        cert_cn: None,
    };
    assert_eq!(
        c.add_igroup_member("hosts", &member)
            .unwrap()
            .addresses
            .len(),
        2
    );
    assert_eq!(
        c.remove_igroup_member("hosts", &member)
            .unwrap()
            .addresses
            .len(),
        1
    );
    c.map_lun("vol0/db", "hosts").unwrap();
    assert_eq!(c.list_lun_maps().unwrap().len(), 1);
    assert_eq!(c.lun("vol0/db").unwrap().maps, vec!["hosts".to_string()]);
    c.unmap_lun("vol0/db", "hosts").unwrap();
    assert_eq!(c.igroup("hosts").unwrap().luns.len(), 0);
    assert_eq!(c.list_igroups().unwrap().len(), 1);
    c.delete_igroup("hosts").unwrap();

    let cg = c
        .create_group_snapshot(&CreateGroupSnapshot {
            name: "cg1".into(),
            luns: vec!["vol0/test-1".into(), "vol0/test-2".into()],
        })
        .unwrap();
    assert_eq!(cg.name, "cg1");
    assert_eq!(c.group_snapshot("cg1").unwrap().name, "cg1");
    assert_eq!(c.list_group_snapshots().unwrap().len(), 1);
    c.delete_group_snapshot("cg1").unwrap();

    assert!(c.check_pool().unwrap().problems.is_empty());
    assert!(c.pool().unwrap().capacity_bytes >= GIB);
    let _ = c.jobs().unwrap();
    let settings = c
        .update_settings(&UpdateSettings {
            split_rate_mbps: Some(64),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(c.settings().unwrap(), settings);
    let events = c.events(0, Some(1000), None).unwrap();
    assert!(events
        .events
        .iter()
        .any(|e| e.kind == "group-snapshot-deleted"));
    assert_eq!(events.last_id, events.events.last().unwrap().id);
    let newest = c.events(events.last_id - 1, None, Some(1)).unwrap();
    assert_eq!(newest.events.len(), 1);
    assert!(!c.io().unwrap().counting, "an embedded API counts no I/O");
    c.stop_split("vol0/test-1").ok();
    for name in ["vol0/test-1", "vol0/test-2"] {
        c.delete_lun(name, true).unwrap();
    }
    c.delete_lun("vol0/db", true).unwrap();
    assert!(c.list_luns(None).unwrap().is_empty());
}

#[test]
fn errors_carry_the_servers_sentence() {
    let server = Server::start();
    let c = server.client();
    let (status_code, code, message) = status(c.lun("no/such").unwrap_err());
    assert_eq!(status_code, Some(404));
    assert_eq!(code.as_deref(), Some("not_found"));
    assert!(message.contains("no/such"), "{message}");

    // A name with '/' and '.' travels as one segment, not a path.
    let (status_code, _, message) = status(c.lun("a/../b").unwrap_err());
    assert_eq!(status_code, Some(404), "{message}");

    let wrong = Client::new(&server.url, Some("wrong".into()), None).unwrap();
    let (status_code, code, _) = status(wrong.list_luns(None).unwrap_err());
    assert_eq!(
        (status_code, code.as_deref()),
        (Some(401), Some("unauthorized"))
    );

    let err = c
        .create_lun(&CreateLun {
            name: "bad name".into(),
            size: 4096,
            redundancy: None,
            reserve: false,
            snapshot_reserve_percent: 0,
        })
        .unwrap_err();
    assert_eq!(err.status, Some(400), "{err}");
    assert!(
        c.list_luns(None).unwrap().is_empty(),
        "a refused call changes nothing"
    );
}

#[test]
fn an_absent_server_is_named() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = Client::new(&format!("http://127.0.0.1:{port}"), None, None).unwrap();
    let err = c.pool().unwrap_err();
    assert_eq!(err.status, None);
    assert!(
        err.message.contains("is `blockfork serve` running?"),
        "{err}"
    );
}
