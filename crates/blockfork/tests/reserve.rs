//! Space reservations end to end (issue 14, decision 031): a pool filled
//! over NBD by a thick LUN and a thin one; only the thin one gets ENOSPC,
//! and every byte written reads back.

mod common;
use common::*;
use serde_json::Value;

fn json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&server.cli_ok(&all)).unwrap()
}

fn qemu_io(server: &Server, export: &str, cmds: &[&str]) -> String {
    let uri = server.nbd(export);
    let mut args = vec!["-f", "raw", uri.as_str()];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let out = std::process::Command::new("qemu-io")
        .args(&args)
        .output()
        .expect("qemu-io runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_thick_lun_never_gets_enospc_and_a_thin_one_does_first() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path(), "96M");
    let text = server.cli_ok(&[
        "lun",
        "create",
        "db",
        "--size",
        "32M",
        "--reserve",
        "--snapshot-reserve",
        "50",
    ]);
    assert!(text.contains("thick, 50 % for snapshots"), "{text}");
    let bad = server.cli(&[
        "lun",
        "create",
        "x",
        "--size",
        "1M",
        "--snapshot-reserve",
        "200",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("more than 100"));
    server.cli_ok(&["lun", "create", "scratch", "--size", "96M"]);
    let pool = json(&server, &["pool", "status"]);
    assert_eq!(pool["reserved_bytes"], 64 << 20, "{pool}");
    assert!(server
        .cli_ok(&["pool", "status"])
        .contains("for LUNs with reservations"));
    let (code, metrics) = get(
        &format!("{}/metrics", server.url()),
        Some(&server.token()),
        None,
    );
    assert_eq!(code, 200);
    promtool_ok(&metrics);
    assert_eq!(
        sample(&metrics, "blockfork_pool_reserved_bytes"),
        Some((64u64 << 20) as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "blockfork_lun_reserved_bytes{lun=\"db\"}"),
        Some((64u64 << 20) as f64),
        "{metrics}"
    );

    // The thin LUN fills what is not reserved, then gets ENOSPC.
    let out = qemu_io(&server, "scratch", &["write -P 0x11 0 64M"]);
    assert!(out.contains("No space left on device"), "{out}");
    let out = qemu_io(
        &server,
        "scratch",
        &["write -P 0x11 0 24M", "read -P 0x11 0 24M"],
    );
    assert!(!out.contains("failed") && !out.contains("error"), "{out}");
    // The thick one writes all of itself, keeps a snapshot and overwrites.
    let ok = |out: String| assert!(!out.contains("failed") && !out.contains("error"), "{out}");
    ok(qemu_io(&server, "db", &["write -P 0x22 0 32M"]));
    server.cli_ok(&["snapshot", "create", "db", "s"]);
    ok(qemu_io(
        &server,
        "db",
        &["write -P 0x33 0 16M", "read -P 0x33 0 16M"],
    ));
    ok(qemu_io(&server, "db@s", &["read -P 0x22 0 32M"]));
    assert!(server.stop().success());

    let server = Server::start(tmp.path(), "96M");
    ok(qemu_io(
        &server,
        "db",
        &["read -P 0x33 0 16M", "read -P 0x22 16M 16M"],
    ));
    ok(qemu_io(&server, "scratch", &["read -P 0x11 0 24M"]));
    let lun = json(&server, &["lun", "show", "db"]);
    assert_eq!(
        (
            lun["reserve"].as_bool(),
            lun["snapshot_reserve_percent"].as_u64()
        ),
        (Some(true), Some(50))
    );
}
