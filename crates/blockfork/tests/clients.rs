//! The server binary against real NBD clients: qemu-io, qemu-img, nbdinfo,
//! nbdcopy and fio, plus the CLI for management.

mod common;
use common::*;
use std::process::Command;

fn qemu_io(server: &Server, export: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    let uri = server.nbd(export);
    args.push(&uri);
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let out = tool_ok("qemu-io", &args);
    assert!(
        !out.contains("Pattern verification failed"),
        "qemu-io {cmds:?}: {out}"
    );
    assert!(!out.contains("failed"), "qemu-io {cmds:?}: {out}");
    out
}

#[test]
fn real_clients_read_write_discard_zero_map_convert_copy_and_fio() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("pool"), "1G");
    server.cli_ok(&["lun", "create", "vm/disk", "--size", "64M"]);

    qemu_io(
        &server,
        "vm/disk",
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 4M 64k",
            "write -P 0x11 10000 3000", // unaligned: read-modify-write
            "read -P 0xab 0 8192",
            "read -P 0x11 10000 3000",
            "read -P 0xab 13000 3000",
            "read -P 0xcd 4M 64k",
            "discard 512k 64k",
            "read -P 0 512k 64k",
            "write -z 128k 64k",
            "read -P 0 128k 64k",
            "read -P 0 8M 1M",
            "flush",
        ],
    );

    let info = tool_ok(
        "qemu-img",
        &["info", "--output=json", "-f", "raw", &server.nbd("vm/disk")],
    );
    assert!(info.contains("\"virtual-size\": 67108864"), "{info}");

    let list = tool_ok(
        "nbdinfo",
        &["--list", &format!("nbd://127.0.0.1:{}", server.nbd_port)],
    );
    assert!(list.contains("vm/disk"), "{list}");

    // Block status: data where written, holes elsewhere (8M..64M is a hole).
    let map = tool_ok("nbdinfo", &["--map", &server.nbd("vm/disk")]);
    assert!(map.lines().any(|l| l.contains("data")), "{map}");
    let hole = map
        .lines()
        .find(|l| l.trim_start().starts_with("4259840") || l.contains("hole"))
        .unwrap_or_else(|| panic!("no hole in the map: {map}"));
    assert!(hole.contains("hole"), "{map}");

    // qemu-img convert to and from the export, compare.
    let src = tmp.path().join("src.raw");
    let pattern: Vec<u8> = (0..8 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&src, &pattern).unwrap();
    server.cli_ok(&["lun", "create", "copy", "--size", "8M"]);
    tool_ok(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &server.nbd("copy"),
        ],
    );
    tool_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src.to_str().unwrap(),
            &server.nbd("copy"),
        ],
    );
    let back = tmp.path().join("back.raw");
    tool_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &server.nbd("copy"),
            back.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&back).unwrap() == pattern,
        "convert from the export differs"
    );

    if have("nbdcopy") {
        let out = tmp.path().join("nbdcopy.raw");
        tool_ok("nbdcopy", &[&server.nbd("copy"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == pattern, "nbdcopy differs");
    }

    if have("fio") {
        server.cli_ok(&["lun", "create", "fio", "--size", "16M"]);
        let out = run(
            Command::new("fio").args([
                "--name=verify",
                "--ioengine=nbd",
                &format!("--uri={}", server.nbd("fio")),
                "--rw=randwrite",
                "--bs=4k",
                "--size=16M",
                "--iodepth=16",
                "--verify=crc32c",
                // No verify-state file left in the working directory.
                "--verify_state_save=0",
                "--do_verify=1",
                "--output-format=terse",
            ]),
            180,
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "fio failed: {text}");
        assert!(!text.contains("verify: bad"), "fio verify failed: {text}");
    }

    // Unknown export: a clear refusal, and the server keeps serving.
    let out = run(
        Command::new("qemu-io").args(["-f", "raw", &server.nbd("nope"), "-c", "read 0 4k"]),
        60,
    );
    assert!(!out.status.success());
    qemu_io(&server, "vm/disk", &["read -P 0xab 0 4k"]);
}

#[test]
fn snapshot_during_writes_holds_pre_snapshot_data_and_restore_works() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("pool"), "1G");
    server.cli_ok(&["lun", "create", "db", "--size", "4M"]);
    qemu_io(&server, "db", &["write -P 0x11 0 4M", "flush"]);

    // A writer overwrites every block with 0x22, in order, while the CLI
    // takes a snapshot.
    let port = server.nbd_port;
    let blocks = 1024u64;
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let writer = std::thread::spawn(move || {
        let mut c = NbdClient::connect(port, "db").unwrap();
        for b in 0..blocks {
            assert_eq!(c.write(b * 4096, &[0x22; 4096]).unwrap(), 0);
            tx.send(b + 1).unwrap();
        }
    });
    // Wait for some progress, then snapshot.
    let mut acked_before = 0;
    while acked_before < 100 {
        acked_before = rx.recv().unwrap();
    }
    while let Ok(n) = rx.try_recv() {
        acked_before = n;
    }
    server.cli_ok(&["snapshot", "create", "db", "mid"]);
    let mut acked_after = acked_before;
    while let Ok(n) = rx.try_recv() {
        acked_after = n;
    }
    writer.join().unwrap();

    // The snapshot: a prefix of 0x22 blocks, at least those acknowledged
    // before the snapshot began, then 0x11, and nothing else.
    let snap = tmp.path().join("snap.raw");
    tool_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &server.nbd("db@mid"),
            snap.to_str().unwrap(),
        ],
    );
    let data = std::fs::read(&snap).unwrap();
    let firsts: Vec<u8> = data
        .chunks(4096)
        .map(|c| {
            assert!(c.iter().all(|&x| x == c[0]), "a torn block in the snapshot");
            c[0]
        })
        .collect();
    let prefix = firsts.iter().take_while(|&&x| x == 0x22).count() as u64;
    assert!(
        firsts[prefix as usize..].iter().all(|&x| x == 0x11),
        "snapshot is not a clean point in time"
    );
    assert!(
        prefix >= acked_before,
        "snapshot lost {} acknowledged writes",
        acked_before - prefix
    );
    let _ = acked_after;

    // Writes to the snapshot export are refused.
    let out = run(
        Command::new("qemu-io").args(["-f", "raw", &server.nbd("db@mid"), "-c", "write 0 4k"]),
        60,
    );
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).contains("failed"));

    // Restore: the LUN reads as the snapshot again.
    qemu_io(&server, "db", &["write -P 0x33 0 4M"]);
    server.cli_ok(&["snapshot", "restore", "db", "mid"]);
    tool_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &server.nbd("db"),
            &server.nbd("db@mid"),
        ],
    );
    let listed = server.cli_ok(&["snapshot", "list", "db"]);
    assert!(listed.contains("mid"), "{listed}");
}
