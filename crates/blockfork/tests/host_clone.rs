//! `blockfork host`: attach LUNs of a real `blockfork serve` to this host
//! (nbdfuse + loop devices), make real ext4 and XFS file systems on them,
//! and clone files by sharing blocks. Needs root, /dev/fuse, loop devices,
//! nbdfuse, mkfs.ext4 and mkfs.xfs (scripts/test.sh installs the tools);
//! skipped, loudly, only where the kernel offers no FUSE or loop devices.
//!
//! Every mount, loop device and nbdfuse process is torn down by a guard's
//! Drop, so a failing assertion leaves nothing behind.

mod common;

use common::{run, Server, BIN};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The LUNs' size: XFS wants 300 MiB at least; thin, so it costs nothing.
const LUN_SIZE: &str = "320M";
/// The file cloned: a few MiB plus a partial block.
const FILE_BYTES: usize = (12 << 20) + 1234;

/// Whether this kernel can attach LUNs at all; says so loudly if not.
fn can_attach() -> bool {
    for needed in ["/dev/fuse", "/dev/loop-control"] {
        if !Path::new(needed).exists() {
            eprintln!(
                "\n*** SKIPPED: {needed} is missing, so LUNs cannot be attached here \
                 (no FUSE or no loop devices in this kernel) ***\n"
            );
            return false;
        }
    }
    for tool in ["nbdfuse", "losetup", "mkfs.ext4", "mkfs.xfs"] {
        assert!(
            common::have(tool),
            "{tool} is missing; scripts/test.sh installs it (libnbd-bin, util-linux, e2fsprogs, xfsprogs)"
        );
    }
    true
}

/// A server plus this host's attachment state, in one temporary directory.
struct Host {
    server: Server,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Host {
    fn start() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("data"), "2G");
        let state = dir.path().join("state");
        Host {
            server,
            state,
            _dir: dir,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("BLOCKFORK_HOST_STATE", &self.state)
            .env(
                "BLOCKFORK_NBD",
                format!("127.0.0.1:{}", self.server.nbd_port),
            )
            .env("BLOCKFORK_TOKEN", self.server.token())
            .env_remove("BLOCKFORK_SERVER")
            .arg("--server")
            .arg(self.server.url());
        c
    }

    fn cli(&self, args: &[&str]) -> Output {
        run(self.command().args(args), 120)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "blockfork {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Runs a command that must fail; returns its error sentence.
    #[track_caller]
    fn fails(&self, args: &[&str], fragment: &str) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {stderr}");
        assert!(stderr.contains(fragment), "{args:?}: {stderr}");
        stderr
    }

    fn used_bytes(&self) -> u64 {
        self.json(&["pool", "status"])["used_bytes"]
            .as_u64()
            .unwrap()
    }

    /// Attaches a LUN; the guard detaches it.
    fn attach(&self, lun: &str, extra: &[&str]) -> Attached<'_> {
        let mut args = vec!["host", "attach", lun];
        args.extend_from_slice(extra);
        let a = self.json(&args);
        Attached {
            host: self,
            device: a["device"].as_str().unwrap().to_string(),
            fuse_dir: a["fuse_dir"].as_str().map(PathBuf::from),
            nbdfuse_pid: a["nbdfuse_pid"].as_u64().map(|p| p as i32),
        }
    }
}

/// An attached LUN; Drop detaches it, by hand if the CLI cannot.
struct Attached<'a> {
    host: &'a Host,
    device: String,
    fuse_dir: Option<PathBuf>,
    nbdfuse_pid: Option<i32>,
}

impl Attached<'_> {
    /// Whether the loop device still reads this attachment's FUSE file:
    /// only then may the guard tear it down by hand (a device number is
    /// reused at once, perhaps by a test running beside this one).
    fn still_ours(&self) -> bool {
        let name = self.device.trim_start_matches("/dev/");
        let backing = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"));
        match (&self.fuse_dir, backing) {
            (Some(dir), Ok(file)) => Path::new(file.trim()) == dir.join("lun"),
            _ => false,
        }
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if !self.still_ours() {
            return;
        }
        if self
            .host
            .cli(&["host", "detach", &self.device])
            .status
            .success()
        {
            return;
        }
        let _ = Command::new("umount").arg(&self.device).output();
        if self.still_ours() {
            let _ = Command::new("losetup").arg("-d").arg(&self.device).output();
        }
        if let Some(dir) = &self.fuse_dir {
            let _ = Command::new("umount").arg("-l").arg(dir).output();
        }
        if let Some(pid) = self.nbdfuse_pid {
            let ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                self.fuse_dir
                    .as_ref()
                    .is_some_and(|d| c.contains(d.to_str().unwrap()))
            });
            if ours {
                // SAFETY: signalling the nbdfuse this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
}

/// A mounted file system; Drop unmounts it.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(device: &str, fs: &str, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let mkfs: &[&str] = match fs {
            // Inode tables and journal written now, not by a background
            // thread later, so that the pool's use holds still.
            // 4 KiB blocks: mke2fs picks 1 KiB for a "small" device, which
            // blockfork cannot clone (it refuses such files).
            "ext4" | "ext4-zeroout" => &[
                "mkfs.ext4",
                "-q",
                "-F",
                "-b",
                "4096",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ],
            "xfs" => &["mkfs.xfs", "-q", "-f"],
            other => panic!("no mkfs for {other}"),
        };
        common::tool_ok(mkfs[0], &[&mkfs[1..], &[device]].concat());
        if fs == "ext4-zeroout" {
            // ext4 then zeroes whole extents with the device's write-zeroes
            // around a small write: destinations cost no data transfer.
            common::tool_ok(
                "mount",
                &["-o", "dioread_lock", device, dir.to_str().unwrap()],
            );
            let name = device.trim_start_matches("/dev/");
            std::fs::write(
                format!("/sys/fs/ext4/{name}/extent_max_zeroout_kb"),
                "131072",
            )
            .unwrap();
        } else {
            common::tool_ok("mount", &[device, dir.to_str().unwrap()]);
        }
        Mounted {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.dir).output();
        if !out.is_ok_and(|o| o.status.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
    }
}

/// Deterministic bytes that differ from block to block.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes `data` as `path` in fragments: pieces of 40 and 64 KiB, each
/// fsynced, interleaved with pieces of another file, so that the file
/// system scatters it over several extents.
fn write_fragmented(path: &Path, data: &[u8]) {
    let mut file = File::create(path).unwrap();
    let mut other = File::create(path.with_extension("interleaved")).unwrap();
    let mut at = 0;
    let mut turn = 0;
    while at < data.len() {
        let n = (if turn % 2 == 0 { 40 << 10 } else { 64 << 10 }).min(data.len() - at);
        file.write_all(&data[at..at + n]).unwrap();
        file.sync_all().unwrap();
        other.write_all(&pattern(48 << 10, turn)).unwrap();
        other.sync_all().unwrap();
        at += n;
        turn += 1;
    }
}

/// Fills the file system's free space with preallocated 1 MiB files and
/// removes every other one, so that what is allocated next is cut into
/// 1 MiB pieces; returns the fillers left. Preallocation writes no data,
/// so this is quick.
fn fragment_free_space(mount: &Mounted) -> Vec<PathBuf> {
    let dir = mount.path("fillers");
    std::fs::create_dir_all(&dir).unwrap();
    let mut made = Vec::new();
    for i in 0..4096 {
        let path = dir.join(i.to_string());
        let file = File::create(&path).unwrap();
        // SAFETY: fallocate on a file we own.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 1 << 20) } != 0 {
            drop(file);
            std::fs::remove_file(&path).unwrap();
            break;
        }
        made.push(path);
    }
    assert!(made.len() > 100, "only {} fillers fit", made.len());
    let (removed, kept): (Vec<_>, Vec<_>) =
        made.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, path) in removed {
        std::fs::remove_file(path).unwrap();
    }
    common::tool_ok("sync", &[]);
    kept.into_iter().map(|(_, p)| p).collect()
}

/// The file's bytes as the server holds them now: its page cache dropped
/// first, so that the read goes down to the LUN.
fn read_uncached(path: &Path) -> Vec<u8> {
    let file = File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: advice on a descriptor we own.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut data = Vec::new();
    (&file).read_to_end(&mut data).unwrap();
    data
}

fn extent_count(path: &Path) -> usize {
    let out = common::tool_ok("filefrag", &[path.to_str().unwrap()]);
    out.rsplit(": ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("filefrag said {out:?}"))
}

/// Waits, bounded, until the pool's use is at most `limit` bytes (freed
/// blocks count until their commit is durable); the last value read.
fn used_settles(host: &Host, limit: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let used = host.used_bytes();
        if used <= limit || Instant::now() > deadline {
            return used;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The whole story on one file system: a fragmented file cloned into a
/// fragmented free space, three times in one call; the clones read the
/// same, cost the pool (almost) nothing, and are independent of the source.
fn clone_on(fs: &str) {
    if !can_attach() {
        return;
    }
    let host = Host::start();
    host.ok(&["lun", "create", "vol0", "--size", LUN_SIZE]);
    let attached = host.attach("vol0", &[]);
    let mount = Mounted::new(&attached.device, fs, &host.state.with_extension("mnt"));

    // The source goes into 1 MiB holes; then every other filler left goes,
    // which makes 3 MiB holes (a filler and its two free neighbours) away
    // from the source and 1 MiB holes between its pieces: the clones are
    // cut otherwise than the source.
    let fillers = fragment_free_space(&mount);
    let data = pattern(FILE_BYTES, 7);
    let source = mount.path("golden.img");
    write_fragmented(&source, &data);
    for filler in fillers.iter().step_by(2) {
        std::fs::remove_file(filler).unwrap();
    }
    common::tool_ok("sync", &[]);
    assert!(
        extent_count(&source) >= 4,
        "the source should be fragmented"
    );

    let used_before = host.used_bytes();
    let pattern_arg = mount.path("vm-{}.img");
    let report = host.json(&[
        "host",
        "file-clone",
        source.to_str().unwrap(),
        pattern_arg.to_str().unwrap(),
        "--count",
        "3",
    ]);
    let clones = report["clones"].as_array().unwrap();
    assert_eq!(clones.len(), 3);
    let rounded = (FILE_BYTES as u64).div_ceil(4096) * 4096;
    assert_eq!(report["bytes"].as_u64().unwrap(), 3 * rounded, "{report}");
    assert_eq!(report["source"]["lun"], "vol0");
    assert_eq!(report["target_lun"], "vol0");
    assert_eq!(report["server"]["ranges"], report["ranges"]);
    let made_by = if fs == "ext4-zeroout" {
        "zeroed-out"
    } else {
        "zeros-written"
    };
    for clone in clones {
        assert_eq!(clone["created_by"], made_by, "{clone}");
        let ranges = clone["ranges"].as_array().unwrap();
        let sum: u64 = ranges.iter().map(|r| r["length"].as_u64().unwrap()).sum();
        assert_eq!(sum, rounded);
        assert!(clone["extents"].as_u64().unwrap() >= 2, "{clone}");
    }

    for n in 1..=3 {
        let path = mount.path(&format!("vm-{n}.img"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_BYTES as u64);
        assert!(
            read_uncached(&path) == data,
            "clone {n} differs from the source"
        );
    }

    // Shared blocks: the pool holds the clones' data once. What grows is
    // metadata (the file system's and the pool's map), far below a copy.
    let limit = used_before + rounded / 4;
    let used_after = used_settles(&host, limit);
    assert!(
        used_after <= limit,
        "the pool grew by {} bytes for 3 clones of {rounded} bytes",
        used_after as i64 - used_before as i64
    );
    eprintln!(
        "{fs}: source in {} extents, clones in {:?} extents, {} ranges; 3 clones of {rounded} bytes grew the pool by {} bytes",
        report["source"]["extents"],
        clones.iter().map(|c| c["extents"].as_u64().unwrap()).collect::<Vec<_>>(),
        report["ranges"],
        used_after as i64 - used_before as i64
    );

    // Writes to a clone stay in the clone.
    let clone = mount.path("vm-2.img");
    let changed = pattern(8192, 99);
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&clone)
            .unwrap();
        f.write_all_at(&changed, 4096 * 3).unwrap();
        f.sync_all().unwrap();
    }
    let mut expected = data.clone();
    expected[4096 * 3..4096 * 3 + 8192].copy_from_slice(&changed);
    assert!(read_uncached(&clone) == expected);
    assert!(
        read_uncached(&source) == data,
        "the source changed with its clone"
    );
    assert!(read_uncached(&mount.path("vm-3.img")) == data);

    // Text output, and a destination that is a directory.
    let dir = mount.path("copies");
    std::fs::create_dir(&dir).unwrap();
    let text = host.ok(&[
        "host",
        "file-clone",
        source.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert!(text.starts_with("cloned "), "{text}");
    assert!(read_uncached(&dir.join("golden.img")) == data);

    drop(mount);
    drop(attached);
}

#[test]
fn ext4_file_clone() {
    clone_on("ext4");
}

#[test]
fn ext4_dioread_lock_file_clone_writes_no_zeros() {
    clone_on("ext4-zeroout");
}

#[test]
fn xfs_file_clone() {
    clone_on("xfs");
}

/// Files whose blocks do not hold their bytes, or that are being written,
/// are refused, and nothing is left behind.
#[test]
fn refusals_leave_nothing_behind() {
    if !can_attach() {
        return;
    }
    let host = Host::start();
    host.ok(&["lun", "create", "vol0", "--size", LUN_SIZE]);
    let attached = host.attach("vol0", &[]);
    let mount = Mounted::new(&attached.device, "ext4", &host.state.with_extension("mnt"));
    let clone = |src: &Path, fragment: &str| {
        let dst = mount.path("clone");
        host.fails(
            &[
                "host",
                "file-clone",
                src.to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
            fragment,
        );
        assert!(!dst.exists(), "{} was left behind", dst.display());
    };

    // Sparse: a hole in the middle.
    let sparse = mount.path("sparse");
    {
        let f = File::create(&sparse).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 1 << 20).unwrap();
        f.sync_all().unwrap();
    }
    clone(&sparse, "is sparse");

    // Preallocated but never written: its blocks hold no data.
    let preallocated = mount.path("preallocated");
    {
        let f = File::create(&preallocated).unwrap();
        // SAFETY: fallocate on a file we own.
        assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    }
    clone(&preallocated, "unwritten");

    // Open for writing by another process (this one).
    let busy = mount.path("busy");
    std::fs::write(&busy, pattern(64 << 10, 1)).unwrap();
    {
        let _writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&busy)
            .unwrap();
        clone(&busy, "open for writing");
    }

    // Not a regular file; a destination that exists.
    clone(&mount.dir, "not a regular file");
    let dst = mount.path("exists");
    std::fs::write(&dst, b"keep me").unwrap();
    host.fails(
        &[
            "host",
            "file-clone",
            busy.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
        "exists already",
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");

    // A file off any attached LUN.
    let elsewhere = tempfile::tempdir().unwrap();
    let src = elsewhere.path().join("f");
    std::fs::write(&src, b"x").unwrap();
    let dst = elsewhere.path().join("clone");
    host.fails(
        &[
            "host",
            "file-clone",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
        "did not attach",
    );
    assert!(!dst.exists());

    drop(mount);
    drop(attached);
}

/// A loop device that reads its FUSE file through the page cache keeps
/// the destination's zeros cached there; the clone must still read back.
#[test]
fn clone_reads_back_through_a_buffered_loop_device() {
    if !can_attach() {
        return;
    }
    let host = Host::start();
    host.ok(&["lun", "create", "vol0", "--size", LUN_SIZE]);
    let attached = host.attach("vol0", &["--buffered"]);
    let mount = Mounted::new(&attached.device, "ext4", &host.state.with_extension("mnt"));
    let data = pattern(3 << 20, 3);
    let source = mount.path("src");
    write_fragmented(&source, &data);
    let dst = mount.path("dst");
    let report = host.json(&[
        "host",
        "file-clone",
        source.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert_eq!(report["cache"]["drop_caches"], false, "{report}");
    assert!(std::fs::read(&dst).unwrap() == data);
    drop(mount);
    drop(attached);
}

/// Attach, list, refuse to detach while mounted, detach: nothing of the
/// attachment is left (loop device, nbdfuse, registry entry).
#[test]
fn attach_and_detach() {
    if !can_attach() {
        return;
    }
    let host = Host::start();
    host.ok(&["lun", "create", "vol0", "--size", LUN_SIZE]);
    host.ok(&["snapshot", "create", "vol0", "s1"]);
    let attached = host.attach("vol0", &[]);
    let snapshot = host.attach("vol0@s1", &[]);
    let list = host.json(&["host", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[1]["read_only"], true);
    let text = host.ok(&["host", "list"]);
    assert!(
        text.contains(&attached.device) && text.contains("vol0@s1"),
        "{text}"
    );

    let mount = Mounted::new(&attached.device, "ext4", &host.state.with_extension("mnt"));
    host.fails(&["host", "detach", &attached.device], "unmount it first");
    drop(mount);
    host.fails(&["host", "detach", "vol0/none"], "nothing attached");

    let device = attached.device.clone();
    let name = device.trim_start_matches("/dev/").to_string();
    let pid = attached.nbdfuse_pid.unwrap();
    host.ok(&["host", "detach", &device, "vol0@s1"]);
    assert!(!Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists());
    let gone = Instant::now() + Duration::from_secs(10);
    // SAFETY: probing whether a process exists.
    while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(unsafe { libc::kill(pid, 0) } != 0, "nbdfuse still runs");
    assert_eq!(host.json(&["host", "list"]), Value::Array(vec![]));
    // Already detached: the guards' detach fails quietly.
    drop(snapshot);
    drop(attached);
}

/// A LUN's igroups, from the API.
fn maps(host: &Host, lun: &str) -> Vec<String> {
    host.json(&["lun", "show", lun])["maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect()
}

/// From one LUN into another that is mapped to another igroup: the
/// destination is mapped to the source's igroup for the operation and
/// unmapped afterwards, when the clone works and when the server refuses
/// it. Also from a snapshot, attached read-only.
#[test]
fn cross_lun_clone_borrows_the_mapping() {
    if !can_attach() {
        return;
    }
    let host = Host::start();
    for lun in ["src", "dst"] {
        host.ok(&["lun", "create", lun, "--size", LUN_SIZE]);
    }
    // Both igroups hold this host; the destination's is another group (a
    // wider one, as a cluster's would be).
    host.ok(&["igroup", "create", "here", "--address", "127.0.0.1"]);
    host.ok(&["igroup", "create", "cluster", "--address", "127.0.0.0/8"]);
    host.ok(&["lun", "map", "src", "here"]);
    host.ok(&["lun", "map", "dst", "cluster"]);
    let src_lun = host.attach("src", &[]);
    let dst_lun = host.attach("dst", &[]);
    let base = host.state.with_extension("mnt");
    let src_fs = Mounted::new(&src_lun.device, "ext4", &base.join("src"));
    let dst_fs = Mounted::new(&dst_lun.device, "xfs", &base.join("dst"));

    let data = pattern(5 << 20, 11);
    let source = src_fs.path("disk.img");
    write_fragmented(&source, &data);
    let clone = dst_fs.path("disk.img");
    let report = host.json(&[
        "host",
        "file-clone",
        source.to_str().unwrap(),
        clone.to_str().unwrap(),
    ]);
    assert_eq!(report["source"]["lun"], "src");
    assert_eq!(report["target_lun"], "dst");
    assert_eq!(report["borrowed_host_groups"], serde_json::json!(["here"]));
    assert_eq!(maps(&host, "dst"), vec!["cluster"]);
    assert_eq!(maps(&host, "src"), vec!["here"]);
    assert!(read_uncached(&clone) == data);
    // Independent: writing the clone leaves the source as it was.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&clone)
        .unwrap()
        .write_all_at(&[0xAB; 4096], 0)
        .unwrap();
    assert!(read_uncached(&source) == data);

    // The server refuses ranges past the destination LUN's end (placed
    // there by a wrong --dest-device-offset): the mapping is restored and
    // the destination removed all the same.
    let refused = dst_fs.path("refused.img");
    host.fails(
        &[
            "host",
            "file-clone",
            source.to_str().unwrap(),
            refused.to_str().unwrap(),
            "--dest-device-offset",
            "1T",
        ],
        "the server refused the range clone",
    );
    assert!(!refused.exists());
    assert_eq!(maps(&host, "dst"), vec!["cluster"]);

    // From a snapshot of the source LUN, mounted read-only.
    common::tool_ok("sync", &[]);
    host.ok(&["snapshot", "create", "src", "s1"]);
    let snap_lun = host.attach("src@s1", &[]);
    let snap_dir = base.join("snap");
    std::fs::create_dir_all(&snap_dir).unwrap();
    common::tool_ok(
        "mount",
        &[
            "-o",
            "ro,noload",
            &snap_lun.device,
            snap_dir.to_str().unwrap(),
        ],
    );
    let snap_fs = Mounted { dir: snap_dir };
    let from_snapshot = dst_fs.path("from-snapshot.img");
    let report = host.json(&[
        "host",
        "file-clone",
        snap_fs.path("disk.img").to_str().unwrap(),
        from_snapshot.to_str().unwrap(),
    ]);
    assert_eq!(report["source"]["lun"], "src@s1");
    assert!(read_uncached(&from_snapshot) == data);
    assert_eq!(maps(&host, "dst"), vec!["cluster"]);

    drop(snap_fs);
    drop(snap_lun);
    drop(dst_fs);
    drop(src_fs);
    drop(dst_lun);
    drop(src_lun);
}
