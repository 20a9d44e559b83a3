//! Attaching LUNs to this host as block devices, and the registry that
//! says which device is which LUN (decision 010). Finding the LUN behind a
//! file system is in `locate`.
//!
//! With the kernel's NBD client (`/dev/nbd0` exists and `nbd-client` is
//! installed) a LUN becomes `/dev/nbdN`. Without it, `nbdfuse` shows the
//! LUN as a file in a FUSE mount and `losetup` turns that file into
//! `/dev/loopN`, in direct-I/O mode so that no page cache sits between the
//! loop device and the server.

use super::locate::{device_name, mount_points, read_trimmed};
pub use super::locate::{locate, mounted_on, st_dev_of, Location, LocationOverride};
use super::tool;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable naming the state directory (the registry and the
/// FUSE mount points); tests point it at a temporary directory.
pub const STATE_DIR_ENV: &str = "BLOCKFORK_HOST_STATE";
/// The state directory by default: on tmpfs, as attachments end with a
/// reboot.
pub const STATE_DIR_DEFAULT: &str = "/run/blockfork";
const REGISTRY_FILE: &str = "attachments.json";
const REGISTRY_LOCK: &str = "attachments.lock";
/// Name of the LUN's file inside its nbdfuse mount point.
const FUSE_FILE_NAME: &str = "lun";
/// Longest wait for nbdfuse to serve its file, or to exit after unmounting.
const NBDFUSE_TIMEOUT_MS: u64 = 20_000;
/// Longest wait for losetup, nbd-client and for a loop device to go away.
const DEVICE_TIMEOUT_MS: u64 = 20_000;
/// Most attachments the registry holds: a limit on what one host can
/// leak, and on the registry file's size.
const ATTACHMENTS_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// nbdfuse shows the LUN as a file, losetup makes it /dev/loopN.
    FuseLoop,
    /// The kernel's NBD client: /dev/nbdN (nbd-client).
    KernelNbd,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::FuseLoop => "nbdfuse+loop",
            Via::KernelNbd => "kernel nbd",
        })
    }
}

/// One LUN attached to this host: what the registry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The block device, like /dev/loop3.
    pub device: PathBuf,
    /// Its "major:minor", which a file's st_dev leads to.
    pub dev: String,
    /// LUN, or LUN@SNAPSHOT (attached read-only).
    pub lun: String,
    /// The LUN's id when attached: a LUN deleted and created again under
    /// the same name is another LUN, and cloning into it would be wrong.
    pub lun_id: Option<u64>,
    /// The REST API the LUN was looked up on.
    pub server: String,
    /// The NBD address the device reads and writes through.
    pub nbd: String,
    pub via: Via,
    pub read_only: bool,
    /// nbdfuse's mount point, its LUN file and its process.
    pub fuse_dir: Option<PathBuf>,
    pub fuse_file: Option<PathBuf>,
    pub nbdfuse_pid: Option<u32>,
    /// Whether the loop device reads its file with O_DIRECT (no page cache
    /// of the FUSE file to drop after a clone).
    pub direct_io: bool,
    /// Unix seconds.
    pub attached: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    next_id: u64,
    attachments: Vec<Attachment>,
}

/// The state directory: `$BLOCKFORK_HOST_STATE` or /run/blockfork.
pub fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(STATE_DIR_DEFAULT))
}

/// The registry, locked (flock) for as long as this lives.
struct LockedRegistry {
    dir: PathBuf,
    _lock: File,
    registry: Registry,
}

impl LockedRegistry {
    fn open(dir: &Path) -> Result<LockedRegistry, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
        let lock_path = dir.join(REGISTRY_LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "cannot lock {}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let path = dir.join(REGISTRY_FILE);
        let registry = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "the attachment registry {} is damaged ({e}); detach by hand (losetup -d, umount) and remove it",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(LockedRegistry {
            dir: dir.to_path_buf(),
            _lock: lock,
            registry,
        })
    }

    /// Writes the registry atomically (a new file renamed over the old).
    fn save(&self) -> Result<(), String> {
        let path = self.dir.join(REGISTRY_FILE);
        let temporary = self.dir.join(format!("{REGISTRY_FILE}.new"));
        let text = serde_json::to_vec_pretty(&self.registry).expect("the registry serializes");
        let written = File::create(&temporary)
            .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &path));
        written.map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Every attachment the registry holds.
pub fn list(dir: &Path) -> Result<Vec<Attachment>, String> {
    Ok(LockedRegistry::open(dir)?.registry.attachments)
}

/// What `attach` needs to know about the LUN, from the API.
pub struct LunFacts {
    pub name: String,
    pub id: Option<u64>,
    pub size: u64,
    pub read_only: bool,
}

/// Attaches a LUN: starts nbdfuse and a loop device (or the kernel NBD
/// client) and records the attachment.
pub fn attach(
    dir: &Path,
    lun: &LunFacts,
    server: &str,
    nbd: &str,
    via: Option<Via>,
    direct_io: bool,
) -> Result<Attachment, String> {
    let mut locked = LockedRegistry::open(dir)?;
    if locked.registry.attachments.len() >= ATTACHMENTS_MAX {
        return Err(format!(
            "{ATTACHMENTS_MAX} LUNs are attached already; detach some with `blockfork host detach`"
        ));
    }
    let via = via.unwrap_or_else(|| {
        if Path::new("/dev/nbd0").exists() && tool::exists("nbd-client") {
            Via::KernelNbd
        } else {
            Via::FuseLoop
        }
    });
    let id = locked.registry.next_id;
    locked.registry.next_id += 1;
    let attachment = match via {
        Via::FuseLoop => attach_fuse_loop(dir, id, lun, server, nbd, direct_io)?,
        Via::KernelNbd => attach_kernel_nbd(lun, server, nbd)?,
    };
    locked.registry.attachments.push(attachment.clone());
    if let Err(e) = locked.save() {
        let _ = release(&attachment);
        return Err(e);
    }
    Ok(attachment)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn attach_fuse_loop(
    dir: &Path,
    id: u64,
    lun: &LunFacts,
    server: &str,
    nbd: &str,
    direct_io: bool,
) -> Result<Attachment, String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: this host has no FUSE, which nbdfuse needs (load the fuse module)".into());
    }
    let fuse_dir = dir.join("fuse").join(id.to_string());
    std::fs::create_dir_all(&fuse_dir)
        .map_err(|e| format!("cannot create {}: {e}", fuse_dir.display()))?;
    // The kernel shows the loop device's file, and the mount table the
    // mount point, as absolute paths; the registry must say the same.
    let fuse_dir = std::fs::canonicalize(&fuse_dir)
        .map_err(|e| format!("cannot resolve {}: {e}", fuse_dir.display()))?;
    let fuse_file = fuse_dir.join(FUSE_FILE_NAME);
    let pid_file = dir.join("fuse").join(format!("{id}.pid"));
    let log_path = dir.join("fuse").join(format!("{id}.log"));
    let _ = std::fs::remove_file(&pid_file);
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let uri = format!("nbd://{nbd}/{}", lun.name);
    let mut command = Command::new("nbdfuse");
    command.arg("-P").arg(&pid_file);
    if lun.read_only {
        command.arg("--readonly");
    }
    command
        .arg(&fuse_file)
        .arg(&uri)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid is async-signal-safe. nbdfuse outlives this command
    // and must not get the terminal's signals (Ctrl-C, hang-up).
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        let _ = std::fs::remove_dir(&fuse_dir);
        format!("cannot start nbdfuse: {e}{}", tool::install_hint("nbdfuse"))
    })?;
    let pid = child.id();
    let mut exited = None;
    let ready = tool::wait_until(NBDFUSE_TIMEOUT_MS, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty())
            && std::fs::metadata(&fuse_file).is_ok_and(|m| m.len() == lun.size)
    });
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Some(status) = exited {
        let _ = std::fs::remove_dir(&fuse_dir);
        return Err(format!(
            "nbdfuse could not open {uri} ({status}): {}",
            log_text().trim()
        ));
    }
    let mut partial = Attachment {
        device: PathBuf::new(),
        dev: String::new(),
        lun: lun.name.clone(),
        lun_id: lun.id,
        server: server.to_string(),
        nbd: nbd.to_string(),
        via: Via::FuseLoop,
        read_only: lun.read_only,
        fuse_dir: Some(fuse_dir.clone()),
        fuse_file: Some(fuse_file.clone()),
        nbdfuse_pid: Some(pid),
        direct_io: false,
        attached: now_secs(),
    };
    if !ready {
        let _ = release(&partial);
        return Err(format!(
            "nbdfuse did not serve {uri} within {} s: {}",
            NBDFUSE_TIMEOUT_MS / 1000,
            log_text().trim()
        ));
    }
    let file_arg = fuse_file.to_string_lossy().into_owned();
    let mut args = vec![
        "--find",
        "--show",
        if direct_io {
            "--direct-io=on"
        } else {
            "--direct-io=off"
        },
        "--partscan",
    ];
    if lun.read_only {
        args.push("--read-only");
    }
    args.push(&file_arg);
    let device = match tool::run("losetup", &args, DEVICE_TIMEOUT_MS) {
        Ok(out) => PathBuf::from(out.trim()),
        Err(e) => {
            let _ = release(&partial);
            return Err(e);
        }
    };
    partial.device = device.clone();
    let name = device_name(&device);
    partial.dev = match read_trimmed(&format!("/sys/block/{name}/dev")) {
        Some(dev) => dev,
        None => {
            let _ = release(&partial);
            return Err(format!(
                "losetup gave {}, which sysfs does not know",
                device.display()
            ));
        }
    };
    partial.direct_io =
        read_trimmed(&format!("/sys/block/{name}/loop/dio")).as_deref() == Some("1");
    Ok(partial)
}

fn attach_kernel_nbd(lun: &LunFacts, server: &str, nbd: &str) -> Result<Attachment, String> {
    let (host, port) = nbd
        .rsplit_once(':')
        .ok_or_else(|| format!("--nbd must be HOST:PORT, got {nbd:?}"))?;
    // The first device without a connection; nbd-client refuses a busy one
    // anyway, so a race costs a retry, not a wrong attachment.
    let free = (0..256)
        .map(|n| format!("nbd{n}"))
        .take_while(|name| Path::new(&format!("/dev/{name}")).exists())
        .find(|name| !Path::new(&format!("/sys/block/{name}/pid")).exists())
        .ok_or("every /dev/nbdN is in use")?;
    let device = PathBuf::from(format!("/dev/{free}"));
    let device_arg = device.to_string_lossy().into_owned();
    let mut args = vec![
        host,
        port,
        &device_arg,
        "-name",
        lun.name.as_str(),
        "-block-size",
        "4096",
    ];
    if lun.read_only {
        args.push("-readonly");
    }
    tool::run("nbd-client", &args, DEVICE_TIMEOUT_MS)?;
    let dev = read_trimmed(&format!("/sys/block/{free}/dev"))
        .ok_or_else(|| format!("sysfs does not know {}", device.display()))?;
    Ok(Attachment {
        device,
        dev,
        lun: lun.name.clone(),
        lun_id: lun.id,
        server: server.to_string(),
        nbd: nbd.to_string(),
        via: Via::KernelNbd,
        read_only: lun.read_only,
        fuse_dir: None,
        fuse_file: None,
        nbdfuse_pid: None,
        direct_io: true,
        attached: now_secs(),
    })
}

/// Detaches the attachment named by `target`: its device path, or its LUN
/// when that LUN is attached once. Refused while the device or one of its
/// partitions is mounted.
pub fn detach(dir: &Path, target: &str) -> Result<Attachment, String> {
    let mut locked = LockedRegistry::open(dir)?;
    let matches: Vec<usize> = locked
        .registry
        .attachments
        .iter()
        .enumerate()
        .filter(|(_, a)| a.device == Path::new(target) || a.lun == target)
        .map(|(i, _)| i)
        .collect();
    let index = match matches.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "nothing attached as {target:?}; `blockfork host list` shows the attachments"
            ))
        }
        many => {
            return Err(format!(
                "LUN {target:?} is attached {} times ({}); name the device",
                many.len(),
                many.iter()
                    .map(|&i| locked.registry.attachments[i].device.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let attachment = locked.registry.attachments[index].clone();
    if attachment_is_live(&attachment) {
        if let Some(mountpoint) = mounted_on(&attachment.dev)? {
            return Err(format!(
                "{} (LUN \"{}\") is mounted on {}; unmount it first",
                attachment.device.display(),
                attachment.lun,
                mountpoint
            ));
        }
    }
    release(&attachment)?;
    locked.registry.attachments.remove(index);
    locked.save()?;
    Ok(attachment)
}

/// Tears an attachment down: the device, then nbdfuse. Parts already gone
/// are skipped, so that a half-made or stale attachment can be released.
fn release(a: &Attachment) -> Result<(), String> {
    if !a.device.as_os_str().is_empty() && attachment_is_live(a) {
        let device = a.device.to_string_lossy().into_owned();
        match a.via {
            Via::FuseLoop => {
                tool::run("losetup", &["-d", &device], DEVICE_TIMEOUT_MS)?;
                let name = device_name(&a.device);
                // The kernel detaches once the last opener (udev's probe,
                // say) closes the device.
                let gone = tool::wait_until(DEVICE_TIMEOUT_MS, || {
                    !Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists()
                });
                if !gone {
                    return Err(format!(
                        "{device} is still in use {} s after losetup -d",
                        DEVICE_TIMEOUT_MS / 1000
                    ));
                }
            }
            Via::KernelNbd => {
                tool::run("nbd-client", &["-d", &device], DEVICE_TIMEOUT_MS)?;
            }
        }
    }
    if let Some(fuse_dir) = &a.fuse_dir {
        unmount_fuse(fuse_dir, a.nbdfuse_pid)?;
        let _ = std::fs::remove_dir(fuse_dir);
        if let (Some(parent), Some(id)) = (fuse_dir.parent(), fuse_dir.file_name()) {
            let id = id.to_string_lossy();
            let _ = std::fs::remove_file(parent.join(format!("{id}.pid")));
            let _ = std::fs::remove_file(parent.join(format!("{id}.log")));
        }
    }
    Ok(())
}

/// Unmounts nbdfuse's mount point, which makes it exit, and waits for it.
fn unmount_fuse(fuse_dir: &Path, pid: Option<u32>) -> Result<(), String> {
    let mounted = |dir: &Path| {
        mount_points()
            .map(|m| m.iter().any(|(_, point)| Path::new(point) == dir))
            .unwrap_or(false)
    };
    if mounted(fuse_dir) {
        let c_path = std::ffi::CString::new(fuse_dir.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{} has a NUL byte", fuse_dir.display()))?;
        let unmounted = tool::wait_until(DEVICE_TIMEOUT_MS, || {
            // SAFETY: a valid NUL-terminated path.
            (unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0) || !mounted(fuse_dir)
        });
        if !unmounted {
            return Err(format!(
                "cannot unmount nbdfuse at {}: {}",
                fuse_dir.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(pid) = pid.filter(|&p| is_nbdfuse(p)) {
        if !tool::wait_until(NBDFUSE_TIMEOUT_MS, || !is_nbdfuse(pid)) {
            // SAFETY: signalling a process we checked is our nbdfuse.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    Ok(())
}

fn is_nbdfuse(pid: u32) -> bool {
    read_trimmed(&format!("/proc/{pid}/comm")).as_deref() == Some("nbdfuse")
        && read_trimmed(&format!("/proc/{pid}/stat"))
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().starts_with('Z')))
            == Some(false)
}

/// Whether the attachment's device still is what the registry says: a
/// loop device reading our nbdfuse file, or an NBD device with a
/// connection. A stale entry (after a reboot, or a manual losetup -d)
/// must not lead a clone to another device's blocks.
pub fn attachment_is_live(a: &Attachment) -> bool {
    let name = device_name(&a.device);
    let dev_matches = read_trimmed(&format!("/sys/block/{name}/dev")).as_deref() == Some(&a.dev);
    dev_matches
        && match a.via {
            Via::FuseLoop => {
                read_trimmed(&format!("/sys/block/{name}/loop/backing_file")).map(PathBuf::from)
                    == a.fuse_file.clone()
            }
            Via::KernelNbd => Path::new(&format!("/sys/block/{name}/pid")).exists(),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let a = Attachment {
            device: "/dev/loop9".into(),
            dev: "7:9".into(),
            lun: "vol0/db".into(),
            lun_id: Some(3),
            server: "http://127.0.0.1:8080".into(),
            nbd: "127.0.0.1:10809".into(),
            via: Via::FuseLoop,
            read_only: false,
            fuse_dir: Some("/run/blockfork/fuse/0".into()),
            fuse_file: Some("/run/blockfork/fuse/0/lun".into()),
            nbdfuse_pid: Some(1),
            direct_io: true,
            attached: 5,
        };
        {
            let mut locked = LockedRegistry::open(dir.path()).unwrap();
            locked.registry.attachments.push(a.clone());
            locked.save().unwrap();
        }
        assert_eq!(list(dir.path()).unwrap(), vec![a.clone()]);
        // Not live: no such loop device reads that file.
        assert!(!attachment_is_live(&a));
    }

    #[test]
    fn files_off_block_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = locate(
            dir.path(),
            libc::makedev(0, 42),
            "f",
            &LocationOverride::default(),
        )
        .unwrap_err();
        assert!(err.contains("without a block device"), "{err}");
    }
}
