//! Access control end to end: igroups and LUN maps decide what an NBD client
//! can list and open (by source address), unmapping cuts open connections
//! off, and the REST API refuses requests without the token.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

const OPT_LIST: u32 = 3;
const OPT_GO: u32 = 7;

/// A raw NBD handshake from source address `from`: LIST, then GO on
/// `export` if given. Returns the listed names and whether GO succeeded,
/// with the connection for transmission.
fn handshake(from: &str, port: u16, export: Option<&str>) -> (Vec<String>, Option<TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = (from.parse::<IpAddr>().unwrap(), 0).into();
    sock.bind(&src.into()).unwrap();
    let dst: SocketAddr = ([127, 0, 0, 1], port).into();
    sock.connect_timeout(&dst.into(), Duration::from_secs(10))
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let option = |s: &mut TcpStream, opt: u32, data: &[u8]| {
        let mut o = b"IHAVEOPT".to_vec();
        o.extend_from_slice(&opt.to_be_bytes());
        o.extend_from_slice(&(data.len() as u32).to_be_bytes());
        o.extend_from_slice(data);
        s.write_all(&o).unwrap();
        let mut replies = Vec::new();
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut d = vec![0u8; len];
            s.read_exact(&mut d).unwrap();
            replies.push((kind, d));
            if kind != 2 && kind != 3 {
                return replies; // ACK or an error ends the option
            }
        }
    };
    let names = option(&mut s, OPT_LIST, &[])
        .into_iter()
        .filter(|(k, _)| *k == 2)
        .map(|(_, d)| {
            let n = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
            String::from_utf8(d[4..4 + n].to_vec()).unwrap()
        })
        .collect();
    let Some(export) = export else {
        return (names, None);
    };
    let mut go = (export.len() as u32).to_be_bytes().to_vec();
    go.extend_from_slice(export.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    let last = option(&mut s, OPT_GO, &go).pop().unwrap();
    let ok = last.0 == 1;
    if !ok {
        // NBD_REP_ERR_UNKNOWN: a refusal must not reveal that the LUN exists.
        assert_eq!(last.0, 0x8000_0006, "GO refused with {:x}", last.0);
    }
    (names, ok.then_some(s))
}

/// One NBD_CMD_WRITE of 4 KiB at 0 on a negotiated connection; the error.
fn write_4k(s: &mut TcpStream, byte: u8) -> u32 {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&7u64.to_be_bytes());
    r.extend_from_slice(&0u64.to_be_bytes());
    r.extend_from_slice(&4096u32.to_be_bytes());
    r.extend_from_slice(&[byte; 4096]);
    s.write_all(&r).unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    u32::from_be_bytes(reply[4..8].try_into().unwrap())
}

#[test]
fn maps_decide_who_lists_and_opens_and_unmapping_cuts_off() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_raw(&tmp.path().join("pool"), &["--capacity", "256M"]);
    assert!(
        server.log_text().contains("access CLOSED"),
        "{}",
        server.log_text()
    );
    server.cli_ok(&["lun", "create", "db", "--size", "16M"]);
    server.cli_ok(&["lun", "create", "web", "--size", "16M"]);
    server.cli_ok(&["snapshot", "create", "db", "s1"]);
    let port = server.nbd_port;

    // Closed pool, nothing mapped: nobody sees anything.
    let (names, conn) = handshake("127.0.0.1", port, Some("db"));
    assert!(names.is_empty(), "{names:?}");
    assert!(conn.is_none());
    let out = run(
        std::process::Command::new("qemu-io").args([
            "-f",
            "raw",
            "-r",
            &server.nbd("db"),
            "-c",
            "read 0 4k",
        ]),
        60,
    );
    assert!(!out.status.success(), "qemu-io opened an unmapped LUN");

    server.cli_ok(&["igroup", "create", "app", "--address", "127.0.0.1"]);
    server.cli_ok(&["igroup", "create", "other", "--address", "127.0.0.2/32"]);
    server.cli_ok(&["lun", "map", "db", "app"]);
    server.cli_ok(&["lun", "map", "web", "other"]);

    // The mapped host lists db and its snapshot (not web), reads and writes.
    let (names, conn) = handshake("127.0.0.1", port, Some("db"));
    assert_eq!(names, vec!["db", "db@s1"]);
    let mut db_conn = conn.expect("mapped client opens db");
    assert_eq!(write_4k(&mut db_conn, 0x5a), 0);
    let listed = tool_ok("nbdinfo", &["--list", &format!("nbd://127.0.0.1:{port}")]);
    assert!(
        listed.contains("export=\"db\"") || listed.contains("db"),
        "{listed}"
    );
    assert!(
        !listed.contains("web"),
        "nbdinfo lists an unmapped LUN: {listed}"
    );
    tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            &server.nbd("db"),
            "-c",
            "write -P 0x33 64k 64k",
            "-c",
            "read -P 0x33 64k 64k",
        ],
    );
    tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            &server.nbd("db@s1"),
            "-c",
            "read -P 0 0 4k",
        ],
    );

    // Another host (127.0.0.2) sees only web, and cannot open db or its
    // snapshot.
    let (names, conn) = handshake("127.0.0.2", port, Some("db"));
    assert_eq!(names, vec!["web"]);
    assert!(conn.is_none());
    assert!(handshake("127.0.0.2", port, Some("db@s1")).1.is_none());
    assert!(handshake("127.0.0.2", port, Some("web")).1.is_some());
    let log = server.log_text();
    assert!(
        log.contains("NBD access refused") && log.contains("127.0.0.2"),
        "refusals are logged with the client: {log}"
    );

    // Unmapping cuts the open connection off at its next request.
    server.cli_ok(&["lun", "unmap", "db", "app"]);
    let err = write_4k(&mut db_conn, 0x77);
    assert_eq!(err, 108, "ESHUTDOWN after unmap, got {err}");
    assert!(handshake("127.0.0.1", port, Some("db")).1.is_none());

    // Deleting an igroup that is mapped is refused; the map stays.
    let out = server.cli(&["igroup", "delete", "other"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unmap"));

    // Opening the pool: unmapped db is visible to all, web stays with its
    // igroup only.
    server.cli_ok(&["pool", "set", "--access", "open"]);
    let (names, _) = handshake("127.0.0.1", port, None);
    assert_eq!(names, vec!["db", "db@s1"]);
    // The data written while mapped is there.
    server.cli_ok(&["pool", "set", "--access", "closed"]);
    server.cli_ok(&["lun", "map", "db", "app"]);
    tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            &server.nbd("db"),
            "-c",
            "read -P 0x5a 0 4k",
        ],
    );

    let shown = server.cli_ok(&["igroup", "list"]);
    assert!(
        shown.contains("127.0.0.1/32") && shown.contains("db"),
        "{shown}"
    );
}

#[test]
fn api_refuses_missing_or_wrong_tokens_and_the_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("pool"), "64M");
    let token_file = server.dir.join("api-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(server.token().len() >= 32);

    let bin = env!("CARGO_BIN_EXE_blockfork");
    // No token at all (no --data with a token file, no env).
    let out = run(
        std::process::Command::new(bin)
            .current_dir(tmp.path())
            .env_remove("BLOCKFORK_TOKEN")
            .args([
                "--server",
                &server.url(),
                "lun",
                "create",
                "x",
                "--size",
                "1M",
            ]),
        30,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Authorization") || stderr.contains("token"),
        "{stderr}"
    );
    // A wrong token, by flag and by environment.
    for (flag, env) in [
        (Some("wrong-token-0123456789"), None),
        (None, Some("also-wrong-0123456789")),
    ] {
        let mut cmd = std::process::Command::new(bin);
        cmd.current_dir(tmp.path()).env_remove("BLOCKFORK_TOKEN");
        if let Some(e) = env {
            cmd.env("BLOCKFORK_TOKEN", e);
        }
        cmd.args(["--server", &server.url()]);
        if let Some(f) = flag {
            cmd.args(["--token", f]);
        }
        cmd.args(["lun", "create", "x", "--size", "1M"]);
        let out = run(&mut cmd, 30);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("token is wrong"));
    }
    assert!(
        server.cli_ok(&["lun", "list"]).contains("no LUNs"),
        "nothing was created"
    );
    // The right token by environment works from anywhere.
    let out = run(
        std::process::Command::new(bin)
            .current_dir(tmp.path())
            .env("BLOCKFORK_TOKEN", server.token())
            .args([
                "--server",
                &server.url(),
                "lun",
                "create",
                "x",
                "--size",
                "1M",
            ]),
        30,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A token file others can read is refused at start.
    let mut server = server;
    server.stop();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(
        std::process::Command::new(bin)
            .args(["serve", "--data"])
            .arg(&server.dir)
            .args([
                "--nbd",
                &format!("127.0.0.1:{}", free_port()),
                "--api",
                &format!("127.0.0.1:{}", free_port()),
            ]),
        30,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}
