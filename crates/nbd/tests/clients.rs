//! Interoperability with real NBD clients: qemu-io and qemu-img (package
//! qemu-utils), nbdinfo and nbdcopy (package libnbd-bin). The server runs
//! in-process on 127.0.0.1 with a free port over the memory backend.
//!
//! A missing client fails the test, so a machine without the tools cannot
//! pass silently; set NBD_SKIP_CLIENT_TESTS=1 to skip them deliberately.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::process::*;
use common::*;
use nbd::{CancellationToken, Server};

async fn start(backend: MemBackend) -> Running {
    start_server(Server::new(Arc::new(backend))).await
}

const KIB: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_write_read_discard_zero() {
    if !clients_available(&["qemu-io"]) {
        return;
    }
    let disk = MemExport::new(1 << 20, false);
    disk.fill(128 * 1024, &[0x33; 64 * KIB]);
    disk.fill(256 * 1024, &[0x44; 128 * KIB]);
    let backend = MemBackend::default().with("disk", "", disk);
    let disk = backend.export("disk");
    let server = start(backend).await;

    let r = qemu_io(
        &server.uri("disk"),
        &[],
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -f -P 0xcd 64k 4k",
            "flush",
            "discard 128k 64k",
            "write -z 256k 64k",
            "write -z -u 320k 64k",
            "read -P 0 128k 256k",
            "read -P 0xcd 64k 4k",
        ],
    )
    .await;
    assert!(r.ok, "qemu-io failed");
    assert!(!r.stdout.contains("Pattern verification failed"));
    assert!(!r.stderr.contains("error") && !r.stdout.contains("error"));
    assert_eq!(r.stdout.matches("wrote ").count(), 4);
    assert_eq!(r.stdout.matches("read ").count(), 3);
    assert!(r.stdout.contains("discard 65536/65536 bytes"));

    let snap = disk.snapshot();
    assert!(snap[..64 * KIB].iter().all(|b| *b == 0xab));
    assert!(snap[64 * KIB..68 * KIB].iter().all(|b| *b == 0xcd));
    assert!(snap[128 * KIB..384 * KIB].iter().all(|b| *b == 0));
    assert!(disk.flushes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_info_and_map() {
    if !clients_available(&["qemu-img"]) {
        return;
    }
    let server = start(standard_backend()).await;
    let uri = server.uri("disk");
    let r = run("qemu-img", &["info", "-f", "raw", "--output=json", &uri]).await;
    assert!(r.ok);
    assert!(
        r.stdout.contains("\"virtual-size\": 1048576"),
        "{}",
        r.stdout
    );

    // qemu-img map reads block status: 64 KiB of data, then zeroes.
    let r = run("qemu-img", &["map", "-f", "raw", "--output=json", &uri]).await;
    assert!(r.ok);
    let compact: String = r.stdout.split_whitespace().collect();
    assert!(
        compact.contains("\"start\":0,\"length\":65536,\"depth\":0,\"present\":true,\"zero\":false,\"data\":true"),
        "{compact}"
    );
    assert!(
        compact.contains("\"start\":65536,\"length\":983040,\"depth\":0,\"present\":true,\"zero\":true,\"data\":false"),
        "{compact}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_list_json_and_map() {
    if !clients_available(&["nbdinfo"]) {
        return;
    }
    let server = start(standard_backend()).await;

    let r = run("nbdinfo", &["--list", &format!("nbd://{}", server.addr)]).await;
    assert!(r.stdout.contains("export=\"disk\""), "{}", r.stdout);
    assert!(r.stdout.contains("description: a test disk"));
    assert!(r.stdout.contains("export=\"ro\""));

    let r = run("nbdinfo", &["--json", &server.uri("disk")]).await;
    assert!(r.ok);
    let compact: String = r.stdout.split_whitespace().collect();
    for expected in [
        "\"export-size\":1048576",
        "\"is_read_only\":false",
        "\"can_flush\":true",
        "\"can_fua\":true",
        "\"can_trim\":true",
        "\"can_zero\":true",
        "\"can_fast_zero\":true",
        "\"can_multi_conn\":true",
        "\"can_df\":false",
        "\"block_size_minimum\":1",
        "\"block_size_preferred\":4096",
        "\"block_size_maximum\":33554432",
        "\"base:allocation\"",
        "\"protocol\":\"newstyle-fixed\"",
        "\"TLS\":false",
    ] {
        assert!(
            compact.contains(expected),
            "missing {expected} in {compact}"
        );
    }

    let r = run("nbdinfo", &["--json", &server.uri("ro")]).await;
    assert!(r
        .stdout
        .split_whitespace()
        .collect::<String>()
        .contains("\"is_read_only\":true"));

    let r = run("nbdinfo", &["--map", &server.uri("disk")]).await;
    assert!(r.ok);
    let lines: Vec<Vec<&str>> = r
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        vec![
            vec!["0", "65536", "0", "data"],
            vec!["65536", "983040", "3", "hole,zero"]
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_denied_exports_are_refused() {
    if !clients_available(&["nbdinfo", "qemu-io"]) {
        return;
    }
    let server = start(standard_backend()).await;
    let r = run("nbdinfo", &[&server.uri("nope")]).await;
    assert!(!r.ok);
    // libnbd 1.14 turns NBD_REP_ERR_UNKNOWN into ENOENT (other errors into
    // ENOTSUP) and does not show the server's message.
    assert!(
        r.stderr
            .contains("No such file or directory for export: nope"),
        "{}",
        r.stderr
    );
    let r = run("nbdinfo", &[&server.uri("secret")]).await;
    assert!(!r.ok);
    // qemu shows the server's message.
    let r = qemu_io(&server.uri("nope"), &[], &["read 0 512"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("unknown export \"nope\""), "{}", r.stderr);
    assert!(!r.stdout.contains("read 512/512"));
    let r = qemu_io(&server.uri("secret"), &[], &["read 0 512"]).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("access to export \"secret\" denied"),
        "{}",
        r.stderr
    );
    // The server is still fine afterwards.
    let r = run("nbdinfo", &["--size", &server.uri("disk")]).await;
    assert_eq!(r.stdout.trim(), "1048576");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export_rejects_writes() {
    if !clients_available(&["qemu-io"]) {
        return;
    }
    let backend = standard_backend();
    let ro = backend.export("ro");
    let server = start(backend).await;
    let r = qemu_io(&server.uri("ro"), &[], &["write -P 0x55 0 4k"]).await;
    // qemu sees READ_ONLY and refuses to open the export for writing.
    assert!(!r.ok, "opening a read-only export for writing must fail");
    assert!(!r.stdout.contains("wrote 4096/4096"), "write must fail");
    let r = qemu_io(&server.uri("ro"), &["-r"], &["read -P 0x22 0 64k"]).await;
    assert!(r.ok && r.stdout.contains("read 65536/65536"));
    assert_eq!(ro.snapshot(), vec![0x22; 64 * KIB]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trip_multi_conn() {
    if !clients_available(&["nbdcopy"]) {
        return;
    }
    let size = 8 << 20;
    let backend = MemBackend::default().with("big", "", MemExport::new(size as u64, false));
    let big = backend.export("big");
    let server = start(backend).await;
    let dir = TempDir::new("nbdcopy");
    let src = dir.0.join("src.img");
    let dst = dir.0.join("dst.img");
    // Data with zero stretches in between, so sparse copying is exercised.
    let mut data = vec![0u8; size];
    for (i, chunk) in data.chunks_mut(256 * KIB).enumerate() {
        if i % 3 != 1 {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (i * 7 + j * 13 % 251) as u8 | 1;
            }
        }
    }
    std::fs::write(&src, &data).unwrap();
    let (src_s, dst_s) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let uri = server.uri("big");

    let r = run(
        "nbdcopy",
        &["--connections=4", "--requests=16", src_s, &uri],
    )
    .await;
    assert!(r.ok, "nbdcopy to nbd failed");
    assert!(big.snapshot() == data, "export differs from the source");
    let r = run(
        "nbdcopy",
        &["--connections=4", "--requests=16", &uri, dst_s],
    )
    .await;
    assert!(r.ok, "nbdcopy from nbd failed");
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "copy differs from the source"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_over_unix_socket() {
    if !clients_available(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new("unix");
    let path = dir.0.join("nbd.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(nbd::serve_unix(
        listener,
        Arc::new(standard_backend()),
        shutdown.clone(),
    ));
    let uri = format!("nbd+unix:///disk?socket={}", path.display());
    let r = qemu_io(
        &uri,
        &[],
        &[
            "read -P 0x11 0 64k",
            "write -P 0x77 64k 4k",
            "read -P 0x77 64k 4k",
        ],
    )
    .await;
    assert!(r.ok && !r.stdout.contains("Pattern verification failed"));
    assert_eq!(r.stdout.matches("read 65536/65536").count(), 1);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap();
}
