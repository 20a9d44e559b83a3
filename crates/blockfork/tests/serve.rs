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
