//! Mirroring between two real servers on loopback (issue 13), each with
//! its own data directory and ports, driven through the CLI as an
//! operator would, with a TCP proxy of our own between them that cuts or
//! changes the stream; content checked block by block over NBD.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

// ------------------------------------------------------------------ proxy

/// Faults the proxy applies to the source's answers, each once: a cut
/// when a connection's downstream bytes reach a count, a changed byte at
/// a count.
#[derive(Default)]
struct Faults {
    cut_at: Vec<u64>,
    flip_at: Option<u64>,
}

/// A TCP proxy from the destination to the source that counts the bytes
/// it carries and applies `Faults`.
struct Proxy {
    port: u16,
    down_bytes: Arc<AtomicU64>,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let down_bytes = Arc::new(AtomicU64::new(0));
        let faults: Arc<Mutex<Faults>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (d, f, s) = (down_bytes.clone(), faults.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        client.set_nonblocking(false).unwrap();
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        std::thread::spawn(move || copy_up(client, server));
                        let (d, f) = (d.clone(), f.clone());
                        std::thread::spawn(move || copy_down(s2, c2, &d, &f));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            port,
            down_bytes,
            faults,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn copy_up(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn copy_down(mut from: TcpStream, mut to: TcpStream, total: &AtomicU64, faults: &Mutex<Faults>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut seen = 0u64;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let chunk = &mut buf[..n];
        let end = seen + n as u64;
        {
            let mut f = faults.lock().unwrap();
            if let Some(at) = f.flip_at.filter(|&at| at >= seen && at < end) {
                chunk[(at - seen) as usize] ^= 0x40;
                f.flip_at = None;
            }
            if let Some(i) = f.cut_at.iter().position(|&at| at < end) {
                let at = f.cut_at.remove(i);
                let keep = at.saturating_sub(seen) as usize;
                let _ = to.write_all(&chunk[..keep]);
                total.fetch_add(keep as u64, Ordering::Relaxed);
                let _ = to.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        total.fetch_add(n as u64, Ordering::Relaxed);
        seen = end;
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

// ---------------------------------------------------------------- helpers

fn nbd(server: &Server, export: &str) -> NbdClient {
    NbdClient::connect(server.nbd_port, export).unwrap()
}

/// Writes `len` bytes of `byte` at `offset` of `export`, acknowledged and
/// flushed.
fn fill(server: &Server, export: &str, offset: u64, len: u64, byte: u8) {
    let mut c = nbd(server, export);
    let mut at = 0;
    while at < len {
        let n = (len - at).min(4 * MIB);
        assert_eq!(c.write(offset + at, &vec![byte; n as usize]).unwrap(), 0);
        at += n;
    }
    assert_eq!(c.flush().unwrap(), 0);
}

/// A hash per MiB of an export (its size from `lun show` or the snapshot).
fn content(server: &Server, export: &str, size: u64) -> Vec<u64> {
    let mut c = nbd(server, export);
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(MIB);
        let (err, data) = c.read(at, n as u32).unwrap();
        assert_eq!(err, 0, "read {export} at {at}");
        out.push(data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
            (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
        }));
        at += n;
    }
    out
}

fn json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&server.cli_ok(&all)).unwrap()
}

fn mirror(server: &Server, name: &str) -> Value {
    json(server, &["mirror", "show", name])
}

/// Waits (bounded) until the mirror `name` satisfies `pred`.
fn wait_mirror(server: &Server, name: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = mirror(server, name);
        if pred(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "mirror {name} did not get there in {secs} s: {m:#}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn idle(m: &Value) -> bool {
    m["state"] == "idle" && m["running"] == false
}

/// Links destination `b` to source `a` (through `via`, a URL, if given).
fn peer(a: &Server, b: &Server, via: Option<&str>) {
    let token = a.cli_ok(&["peer", "token", "create", "dr"]);
    let token = token.lines().next().unwrap().trim().to_string();
    let url = via.map_or_else(|| a.url(), str::to_string);
    b.cli_ok(&["peer", "create", "site-a", "--url", &url, "--token", &token]);
}

/// `lun@snapshot` on `b` reads exactly as on `a`.
fn assert_same(a: &Server, a_export: &str, b: &Server, b_export: &str, size: u64) {
    let (x, y) = (content(a, a_export, size), content(b, b_export, size));
    let diff: Vec<usize> = (0..x.len()).filter(|&i| x[i] != y[i]).collect();
    assert!(
        diff.is_empty(),
        "{a_export} and {b_export} differ at MiB {diff:?}"
    );
}

fn snapshot_names(server: &Server, lun: &str) -> Vec<String> {
    json(server, &["snapshot", "list", lun])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn pair(root: &Path, name: &str) -> (Server, Server) {
    let a = Server::start(&root.join(format!("{name}-a")), "1G");
    let b = Server::start(&root.join(format!("{name}-b")), "1G");
    (a, b)
}

// ------------------------------------------------------------------ tests

#[test]
fn baseline_incrementals_holds_and_refusals() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), "basic");
    a.cli_ok(&["lun", "create", "vm", "--size", "64M"]);
    fill(&a, "vm", 0, 8 * MIB, 0x11);
    fill(&a, "vm", 40 * MIB, MIB, 0x22);
    a.cli_ok(&["snapshot", "create", "vm", "daily"]);
    peer(&a, &b, None);
    b.cli_ok(&["mirror", "create", "site-a:vm", "vm-dr", "--keep", "2"]);
    let m = mirror(&b, "vm-dr");
    assert!(idle(&m), "{m:#}");
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 64 * MIB);
    // The user snapshot travelled too, with its name.
    assert_same(&a, "vm@daily", &b, "vm-dr@daily", 64 * MIB);

    let mut c = nbd(&a, "vm");
    for round in 0..3u64 {
        // Data, zeros kept allocated, trims, and zero-filled writes: every
        // kind of change.
        let at = round * 9 * MIB;
        assert_eq!(
            c.write(at, &vec![0x30 + round as u8; MIB as usize])
                .unwrap(),
            0
        );
        assert_eq!(c.write_zeroes(at + 2 * MIB, MIB as u32, true).unwrap(), 0);
        assert_eq!(c.trim(at + 4 * MIB, MIB as u32).unwrap(), 0);
        assert_eq!(c.write(at + 6 * MIB, &vec![0u8; 4096]).unwrap(), 0);
        assert_eq!(c.flush().unwrap(), 0);
        b.cli_ok(&["mirror", "update", "vm-dr"]);
        let m = mirror(&b, "vm-dr");
        assert!(idle(&m), "{m:#}");
        let common = m["common_snapshot"].as_str().unwrap().to_string();
        assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 64 * MIB);
        // Only the changed data travels: one MiB of data and the ranges.
        let sent = m["last_transfer_bytes"].as_u64().unwrap();
        assert!(
            sent < MIB + 64 * 1024,
            "round {round}: {sent} bytes for 1 MiB of data"
        );
        // The source keeps one mirror snapshot, held by the relationship.
        let snaps = json(&a, &["snapshot", "list", "vm"]);
        let held: Vec<&Value> = snaps
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str().unwrap().starts_with("mirror."))
            .collect();
        assert_eq!(held.len(), 1, "{snaps:#}");
        assert_eq!(held[0]["name"], common.as_str());
        let holder = held[0]["holds"][0].as_str().unwrap().to_string();
        assert!(holder.ends_with(":vm-dr"), "{holder}");
        // Retention here: at most --keep mirror snapshots.
        let mine = snapshot_names(&b, "vm-dr");
        assert!(
            mine.iter().filter(|n| n.starts_with("mirror.")).count() <= 2,
            "{mine:?}"
        );
    }
    // The common base cannot be deleted on either side.
    let common = mirror(&b, "vm-dr")["common_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let out = a.cli(&["snapshot", "delete", "vm", &common]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by mirror"));
    let out = b.cli(&["snapshot", "delete", "vm-dr", &common]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by mirror"));
    // The destination is read-only to clients and to the LUN commands.
    let mut d = nbd(&b, "vm-dr");
    assert_eq!(d.write(0, &[9u8; 4096]).unwrap(), libc::EPERM as u32);
    for args in [
        &["lun", "delete", "vm-dr"][..],
        &["snapshot", "create", "vm-dr", "mine"],
        &["lun", "resize", "vm-dr", "--size", "128M"],
    ] {
        let out = b.cli(args);
        assert!(!out.status.success(), "{args:?} was allowed");
    }
    assert!(b
        .cli_ok(&["lun", "show", "vm-dr"])
        .contains("mirror destination"));
    // A replication token opens nothing but replication.
    let token = a.cli_ok(&["peer", "token", "create", "other"]);
    let token = token.lines().next().unwrap().trim().to_string();
    let peer_client = client::Client::new(&a.url(), Some(token), None).unwrap();
    let err = peer_client.list_luns(None).unwrap_err();
    assert_eq!(err.status, Some(403), "{err:?}");
    assert!(peer_client.replication_lun("vm").is_ok());
    // The peer stays while a mirror uses it.
    assert!(!b.cli(&["peer", "delete", "site-a"]).status.success());
    // Deleting the mirror leaves a writable LUN and no holds anywhere.
    b.cli_ok(&["mirror", "delete", "vm-dr"]);
    let mut d = nbd(&b, "vm-dr");
    assert_eq!(d.write(0, &[9u8; 4096]).unwrap(), 0);
    let snaps = json(&a, &["snapshot", "list", "vm"]);
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["holds"].as_array().unwrap().is_empty()),
        "{snaps:#}"
    );
    assert!(snapshot_names(&a, "vm")
        .iter()
        .all(|n| !n.starts_with("mirror.")));
    b.cli_ok(&["peer", "delete", "site-a"]);
}

#[test]
fn cut_streams_resume_and_changed_streams_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), "cut");
    let proxy = Proxy::start(a.api_port);
    a.cli_ok(&["lun", "create", "vm", "--size", "96M"]);
    fill(&a, "vm", 0, MIB, 1);
    peer(&a, &b, Some(&proxy.url()));
    b.cli_ok(&["mirror", "create", "site-a:vm", "vm-dr"]);

    // 48 MiB changed; the stream is cut at 40 MiB. The transfer resumes
    // from its checkpoint (every 32 MiB), not from the start.
    fill(&a, "vm", 8 * MIB, 48 * MIB, 0x5a);
    proxy.faults.lock().unwrap().cut_at = vec![40 * MIB];
    let before = proxy.down_bytes.load(Ordering::Relaxed);
    b.cli_ok(&["mirror", "update", "vm-dr"]);
    let carried = proxy.down_bytes.load(Ordering::Relaxed) - before;
    let m = mirror(&b, "vm-dr");
    assert!(idle(&m), "{m:#}");
    assert!(
        b.log_text().contains("resuming from the checkpoint"),
        "no cut seen"
    );
    assert!(
        carried < 48 * MIB * 13 / 10,
        "{carried} bytes carried for 48 MiB: the resume restarted too far back"
    );
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 96 * MIB);

    // One changed byte inside the data: refused, and readers still see
    // the last complete snapshot.
    let last = content(&b, "vm-dr", 96 * MIB);
    fill(&a, "vm", 60 * MIB, 8 * MIB, 0x77);
    proxy.faults.lock().unwrap().flip_at = Some(2 * MIB + 777);
    let out = b.cli(&["mirror", "update", "vm-dr"]);
    assert!(!out.status.success(), "a changed stream was accepted");
    let m = mirror(&b, "vm-dr");
    assert_eq!(m["state"], "failed", "{m:#}");
    assert!(
        m["last_error"].as_str().unwrap().contains("checksum"),
        "{m:#}"
    );
    assert_eq!(
        content(&b, "vm-dr", 96 * MIB),
        last,
        "a refused stream changed what readers see"
    );
    // The next update goes through.
    b.cli_ok(&["mirror", "update", "vm-dr"]);
    let m = mirror(&b, "vm-dr");
    assert!(idle(&m), "{m:#}");
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 96 * MIB);
}

#[test]
fn either_server_killed_mid_transfer_resumes() {
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (root.path().join("kill-a"), root.path().join("kill-b"));
    let mut a = Server::start(&a_dir, "1G");
    let mut b = Server::start(&b_dir, "1G");
    a.cli_ok(&["lun", "create", "vm", "--size", "128M"]);
    peer(&a, &b, None);
    // 16 MB/s: a 64 MiB change takes about four seconds.
    b.cli_ok(&["mirror", "create", "site-a:vm", "vm-dr", "--rate", "16"]);

    // The destination dies mid-transfer and comes back: it resumes.
    fill(&a, "vm", 0, 64 * MIB, 0x61);
    b.cli_ok(&["mirror", "update", "vm-dr", "--no-wait"]);
    wait_mirror(&b, "vm-dr", 60, |m| {
        m["transfer"]["bytes"].as_u64().unwrap_or(0) > 40 * MIB
    });
    // Progress: what is expected, and a rate while it runs.
    let m = mirror(&b, "vm-dr");
    let t = &m["transfer"];
    assert!(t["bytes_expected"].as_u64().unwrap() >= 64 * MIB, "{m:#}");
    assert_eq!(m["state"], "transferring", "{m:#}");
    b.kill9();
    let b = Server::start(&b_dir, "1G");
    let m = wait_mirror(&b, "vm-dr", 60, idle);
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 128 * MIB);
    assert!(b
        .log_text()
        .contains("resuming the transfer a stop interrupted"));

    // The source dies mid-transfer and comes back on its address: the
    // destination's retries find it.
    fill(&a, "vm", 32 * MIB, 64 * MIB, 0x62);
    b.cli_ok(&["mirror", "update", "vm-dr", "--no-wait"]);
    wait_mirror(&b, "vm-dr", 60, |m| {
        m["transfer"]["bytes"].as_u64().unwrap_or(0) > 8 * MIB
    });
    let (nbd_port, api_port) = (a.nbd_port, a.api_port);
    a.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let a = Server::start_on(&a_dir, &["--open"], nbd_port, api_port);
    let m = wait_mirror(&b, "vm-dr", 90, idle);
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 128 * MIB);
    b.cli_ok(&["pool", "check"]);
    a.cli_ok(&["pool", "check"]);
}

#[test]
fn break_resync_and_reverse_round_trips() {
    let root = tempfile::tempdir().unwrap();
    let a_dir = root.path().join("rt-a");
    let mut a = Server::start(&a_dir, "1G");
    let b = Server::start(&root.path().join("rt-b"), "1G");
    a.cli_ok(&["lun", "create", "vm", "--size", "32M"]);
    fill(&a, "vm", 0, 4 * MIB, 0x10);
    peer(&a, &b, None);
    b.cli_ok(&["mirror", "create", "site-a:vm", "vm-dr"]);
    let common = mirror(&b, "vm-dr")["common_snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    // The source is lost: break is local and quick.
    let (nbd_port, api_port) = (a.nbd_port, a.api_port);
    a.kill9();
    let t = Instant::now();
    b.cli_ok(&["mirror", "break", "vm-dr"]);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "break took {took:?} with the source down"
    );
    fill(&b, "vm-dr", 0, MIB, 0x77);
    let a = Server::start_on(&a_dir, &["--open"], nbd_port, api_port);

    // Resync discards the destination's writes: refused without --force,
    // with the plan; a dry run changes nothing; --force keeps a safety
    // snapshot.
    let out = b.cli(&["mirror", "resync", "vm-dr"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("discards 1048576 bytes") && err.contains("--force"),
        "{err}"
    );
    let plan = json(&b, &["mirror", "resync", "vm-dr", "--dry-run"]);
    assert_eq!(plan["common_snapshot"], common.as_str());
    assert_eq!(plan["done"], false);
    assert_eq!(content(&b, "vm-dr", MIB)[0], content(&b, "vm-dr", MIB)[0]);
    let plan = json(&b, &["mirror", "resync", "vm-dr", "--force"]);
    assert_eq!(plan["done"], true);
    let safety = plan["safety_snapshot"].as_str().unwrap().to_string();
    let mine = vec![0x77u8; MIB as usize];
    assert_eq!(
        nbd(&b, &format!("vm-dr@{safety}"))
            .read(0, MIB as u32)
            .unwrap()
            .1,
        mine
    );
    let m = wait_mirror(&b, "vm-dr", 60, idle);
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 32 * MIB);

    // Failover and failback: A -> B, then B -> A, then A -> B again, with
    // content checked at each step.
    let mut byte = 0x80;
    let (mut src, mut dst) = ((&a, "vm"), (&b, "vm-dr"));
    for _ in 0..3 {
        let (ds, dl) = dst;
        ds.cli_ok(&["mirror", "break", dl]);
        // The new writes happen where the data now lives.
        fill(ds, dl, 2 * MIB, MIB, byte);
        byte += 1;
        let plan = json(ds, &["mirror", "reverse", dl]);
        assert_eq!(plan["done"], true, "{plan:#}");
        // The old source is now the destination, pulling what was written.
        let (ss, sl) = src;
        let m = wait_mirror(ss, sl, 60, idle);
        let common = m["common_snapshot"].as_str().unwrap().to_string();
        assert_same(ds, &format!("{dl}@{common}"), ss, sl, 32 * MIB);
        assert_eq!(
            nbd(ss, sl).read(2 * MIB, 4096).unwrap().1,
            vec![byte - 1; 4096]
        );
        // ... and refuses writes.
        assert_eq!(
            nbd(ss, sl).write(0, &[1u8; 4096]).unwrap(),
            libc::EPERM as u32
        );
        std::mem::swap(&mut src, &mut dst);
    }
}

#[test]
fn a_group_appears_at_once() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), "group");
    for lun in ["g1", "g2"] {
        a.cli_ok(&["lun", "create", lun, "--size", "16M"]);
    }
    peer(&a, &b, None);
    // g1 is written first, so any instant of the source has g1 = g2 or
    // g1 = g2 + 1; a destination that showed g1 from one transfer and g2
    // from another would break that.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, port) = (stop.clone(), a.nbd_port);
        std::thread::spawn(move || {
            let mut g1 = NbdClient::connect(port, "g1").unwrap();
            let mut g2 = NbdClient::connect(port, "g2").unwrap();
            let mut gen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                gen += 1;
                let block: Vec<u8> = gen.to_le_bytes().repeat(512);
                assert_eq!(g1.write(0, &block).unwrap(), 0);
                assert_eq!(g2.write(0, &block).unwrap(), 0);
            }
            gen
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    b.cli_ok(&[
        "mirror",
        "create",
        "--group",
        "cg",
        "site-a:g1",
        "d1",
        "site-a:g2",
        "d2",
    ]);
    let reader = {
        let (stop, port) = (stop.clone(), b.nbd_port);
        std::thread::spawn(move || {
            let mut d1 = NbdClient::connect(port, "d1").unwrap();
            let mut d2 = NbdClient::connect(port, "d2").unwrap();
            let gen = |c: &mut NbdClient| {
                u64::from_le_bytes(c.read(0, 8).unwrap().1[..8].try_into().unwrap())
            };
            let mut checked = 0;
            while !stop.load(Ordering::Relaxed) {
                let (x1, y, x2) = (gen(&mut d1), gen(&mut d2), gen(&mut d1));
                if x1 == x2 {
                    assert!(x1 == y || x1 == y + 1, "mixed state: d1 = {x1}, d2 = {y}");
                    checked += 1;
                }
            }
            checked
        })
    };
    for _ in 0..6 {
        b.cli_ok(&["mirror", "update", "cg"]);
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let checked = reader.join().unwrap();
    assert!(
        written > 10 && checked > 10,
        "{written} generations written, {checked} checked"
    );
    let m = mirror(&b, "cg");
    assert!(idle(&m), "{m:#}");
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    for (src, dst) in [("g1", "d1"), ("g2", "d2")] {
        assert_same(&a, &format!("{src}@{common}"), &b, dst, 16 * MIB);
    }
    // One group snapshot on each side.
    let groups = json(&b, &["cg", "snapshot", "list"]);
    let group = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == common.as_str())
        .unwrap_or_else(|| panic!("no group snapshot {common}: {groups:#}"));
    assert_eq!(group["members"], serde_json::json!(["d1", "d2"]));
}

#[test]
fn a_clone_travels_as_a_clone() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), "clone");
    a.cli_ok(&["lun", "create", "gold", "--size", "64M"]);
    fill(&a, "gold", 0, 32 * MIB, 0x42);
    a.cli_ok(&["snapshot", "create", "gold", "base"]);
    peer(&a, &b, None);
    b.cli_ok(&["mirror", "create", "site-a:gold", "gold-dr"]);
    a.cli_ok(&["lun", "clone", "create", "gold@base", "vm"]);
    fill(&a, "vm", 4 * MIB, MIB, 0x43);
    b.cli_ok(&["mirror", "create", "site-a:vm", "vm-dr"]);
    let m = mirror(&b, "vm-dr");
    assert_eq!(m["clone_of"], serde_json::json!(["gold-dr@base"]), "{m:#}");
    let sent = m["last_transfer_bytes"].as_u64().unwrap();
    assert!(
        sent < MIB + 64 * 1024,
        "a clone with 1 MiB of its own sent {sent} bytes"
    );
    let lun = json(&b, &["lun", "show", "vm-dr"]);
    assert_eq!(lun["parent"], "gold-dr@base");
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 64 * MIB);
}

#[test]
fn snapshot_deletes_racing_a_transfer_and_a_stale_resume_record() {
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (root.path().join("race-a"), root.path().join("race-b"));
    let a = Server::start(&a_dir, "1G");
    let mut b = Server::start(&b_dir, "1G");
    a.cli_ok(&["lun", "create", "vm", "--size", "64M"]);
    for i in 0..4u64 {
        fill(&a, "vm", i * 12 * MIB, 12 * MIB, 0x20 + i as u8);
        a.cli_ok(&["snapshot", "create", "vm", &format!("s{i}")]);
    }
    peer(&a, &b, None);
    // Slow (16 MB/s) so that deletes land while it runs.
    b.cli_ok(&[
        "mirror",
        "create",
        "site-a:vm",
        "vm-dr",
        "--rate",
        "16",
        "--no-wait",
    ]);
    let mut refused = 0;
    let mut deleted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while mirror(&b, "vm-dr")["running"] == true {
        assert!(Instant::now() < deadline, "the transfer never ended");
        for name in snapshot_names(&a, "vm") {
            // Retention on the source: delete what it can. What the
            // transfer needs is held, and refused.
            let out = a.cli(&["snapshot", "delete", "vm", &name]);
            if out.status.success() {
                deleted.push(name);
            } else {
                assert!(String::from_utf8_lossy(&out.stderr).contains("held by mirror"));
                refused += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(refused > 0, "nothing was held while the transfer ran");
    let m = mirror(&b, "vm-dr");
    assert!(idle(&m), "{m:#}\n{}", b.log_text());
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 64 * MIB);
    // What travelled before its deletion on the source is whole here.
    for name in snapshot_names(&b, "vm-dr") {
        if snapshot_names(&a, "vm").contains(&name) {
            assert_same(
                &a,
                &format!("vm@{name}"),
                &b,
                &format!("vm-dr@{name}"),
                64 * MIB,
            );
        }
    }

    // A stale resume record: the destination stops mid-transfer, and the
    // snapshot it was receiving goes from the source meanwhile (its hold
    // let go by hand). The record is discarded with a message and the
    // update starts over from the common snapshot.
    fill(&a, "vm", 0, 48 * MIB, 0x66);
    b.cli_ok(&["mirror", "update", "vm-dr", "--no-wait"]);
    let m = wait_mirror(&b, "vm-dr", 60, |m| {
        m["transfer"]["bytes"].as_u64().unwrap_or(0) > 4 * MIB
    });
    let target = m["transfer"]["target"].as_str().unwrap().to_string();
    b.kill9();
    let snaps = json(&a, &["snapshot", "list", "vm"]);
    let holder = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == target.as_str())
        .unwrap()["holds"][0]
        .as_str()
        .unwrap()
        .to_string();
    let admin = client::Client::new(&a.url(), Some(a.token()), None).unwrap();
    admin
        .release_mirror_snapshot(&client::wire::ReleaseMirrorSnapshot {
            luns: vec!["vm".into()],
            snapshot: target.clone(),
            holder,
            delete: true,
            group: false,
        })
        .unwrap();
    assert!(!snapshot_names(&a, "vm").contains(&target));
    let b = Server::start(&b_dir, "1G");
    let m = wait_mirror(&b, "vm-dr", 60, |m| {
        idle(m) && m["common_snapshot"] != common.as_str()
    });
    assert!(b.log_text().contains("no longer has"), "{}", b.log_text());
    let common = m["common_snapshot"].as_str().unwrap().to_string();
    assert_same(&a, &format!("vm@{common}"), &b, "vm-dr", 64 * MIB);
}

#[test]
fn a_schedule_transfers_without_being_asked() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair(root.path(), "sched");
    a.cli_ok(&["lun", "create", "vm", "--size", "16M"]);
    peer(&a, &b, None);
    b.cli_ok(&[
        "mirror",
        "create",
        "site-a:vm",
        "vm-dr",
        "--schedule",
        "1s",
        "--lag-alert",
        "3s",
    ]);
    for byte in [1u8, 2, 3] {
        fill(&a, "vm", 0, MIB, byte);
        // Within a few schedule periods, the write is at the destination.
        let deadline = Instant::now() + Duration::from_secs(20);
        while nbd(&b, "vm-dr").read(0, 4096).unwrap().1 != vec![byte; 4096] {
            assert!(
                Instant::now() < deadline,
                "the schedule did not transfer {byte}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let m = mirror(&b, "vm-dr");
    assert_eq!(m["schedule_secs"], 1);
    assert!(m["lag_secs"].as_u64().unwrap() < 10, "{m:#}");
    // The pool-wide mirror rate is a setting beside the split's.
    let s = json(&b, &["pool", "set", "--mirror-rate", "50"]);
    assert_eq!(s["mirror_rate_mbps"], 50);
    assert_eq!(
        json(&b, &["pool", "set"])["mirror_rate_bytes_per_sec"],
        50_000_000
    );
    // The metrics show the mirror (and promtool takes them).
    let (status, metrics) = get(&format!("{}/metrics", b.url()), Some(&b.token()), None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"blockfork_mirror_lag_seconds{mirror="vm-dr"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"blockfork_mirror_lag_alert_seconds{mirror="vm-dr"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"blockfork_mirror_state{mirror="vm-dr",state="#),
        "{metrics}"
    );
    promtool_ok(&metrics);
    // With the source gone, the schedule keeps trying, and the lag alert
    // is raised once the recovery point is over 3 s old.
    a.kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = b.cli_ok(&["events", "--last", "1000"]);
        if events.contains("mirror-lag ") {
            for kind in ["mirror-created", "mirror-baselined"] {
                assert!(events.contains(kind), "no {kind}:\n{events}");
            }
            // Mirror snapshots come and go every second: not events.
            assert!(!events.contains("snapshot-"), "{events}");
            break;
        }
        assert!(Instant::now() < deadline, "no mirror-lag event:\n{events}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The destination still stops at once when asked.
    let t = Instant::now();
    assert!(b.stop().success(), "{}", b.log_text());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "stopping took {:?}",
        t.elapsed()
    );
}
