//! `blockfork serve` itself: default capacity, the data-directory lock,
//! SIGTERM, and a restart that finds everything again.

mod common;
use common::*;
use std::process::Command;

#[test]
fn lock_default_capacity_sigterm_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool");
    // No --capacity on a new directory: a sensible default from free space.
    let mut server = Server::start_with(&pool, &[]);
    let status = server.cli_ok(&["--output", "json", "pool", "status"]);
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        json["capacity_bytes"].as_u64().unwrap() >= 1 << 30,
        "{status}"
    );
    assert!(
        server.log_text().contains("new pool"),
        "{}",
        server.log_text()
    );
    server.cli_ok(&["lun", "create", "keep", "--size", "1M"]);

    // A second server on the same directory refuses, clearly.
    let out = run(
        Command::new(BIN)
            .args(["serve", "--data"])
            .arg(&pool)
            .args([
                "--nbd",
                &format!("127.0.0.1:{}", free_port()),
                "--api",
                &format!("127.0.0.1:{}", free_port()),
            ]),
        30,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another blockfork process"), "{err}");

    // SIGTERM: exit 0; a restart finds the LUN.
    let status = server.stop();
    assert!(status.success(), "{status}: {}", server.log_text());
    let server = Server::start_with(&pool, &[]);
    assert!(server.log_text().contains("existing pool"));
    let shown = server.cli_ok(&["lun", "show", "keep"]);
    assert!(shown.contains("keep"), "{shown}");
}

/// The reviewer's run (issue 12): the data directory removed under a running
/// server. The pool fails at once: FLUSH and management calls answer errors,
/// and SIGTERM still ends the process.
#[test]
fn a_removed_data_directory_fails_the_pool_and_sigterm_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool");
    let mut server = Server::start(&pool, "256M");
    server.cli_ok(&["lun", "create", "gone", "--size", "4M"]);
    let mut nbd = NbdClient::connect(server.nbd_port, "gone").unwrap();
    assert_eq!(nbd.write(0, &[0x5a; 65536]).unwrap(), 0);
    assert_eq!(nbd.flush().unwrap(), 0);
    // The token is read before the directory goes.
    let token = server.token();

    std::fs::remove_dir_all(&pool).unwrap();

    // Within a few seconds every FLUSH fails (or the connection ends).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answered = nbd.write(0, &[0x11; 4096]).and_then(|_| nbd.flush());
        match answered {
            Ok(0) => {}
            Ok(_) | Err(_) => break,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "FLUSH still succeeds 10 s after the data directory was removed: {}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = run(
        Command::new(BIN)
            .args(["--server", &server.url(), "--token", &token])
            .args(["lun", "create", "after", "--size", "1M"]),
        30,
    );
    assert!(!out.status.success(), "a management call succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool stopped"), "{err}");

    // The failure is logged once, not again at every idle device check.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let failures = server.log_text().matches("pool failed:").count();
    assert_eq!(failures, 1, "{}", server.log_text());

    // SIGTERM ends the process (Server::stop panics after 30 s), and the
    // log says why the pool stopped.
    let status = server.stop();
    let log = server.log_text();
    assert!(!status.success(), "a failed pool must not exit 0: {log}");
    assert!(
        log.contains("metadata directory was removed") || log.contains("data file was removed"),
        "{log}"
    );
}
