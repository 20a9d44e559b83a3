//! Keeping the source file still while its blocks are cloned: refusing
//! files whose blocks do not hold their bytes as they read (encrypted,
//! compressed, verity), refusing files another process has open for
//! writing, and noticing any change made during the operation.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Refuses a file whose file system transforms its bytes on the way to
/// the device: its blocks, cloned, would not read as the file.
pub fn check_attributes(file: &File, what: &str) -> Result<(), String> {
    // SAFETY: statx fills `stx`; the empty path with AT_EMPTY_PATH names
    // the descriptor itself.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot stat {what}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let refused = [
        (libc::STATX_ATTR_ENCRYPTED, "encrypted"),
        (libc::STATX_ATTR_COMPRESSED, "compressed"),
        (libc::STATX_ATTR_VERITY, "protected by fs-verity"),
    ];
    for (bit, word) in refused {
        let bit = bit as u64;
        if stx.stx_attributes_mask & bit != 0 && stx.stx_attributes & bit != 0 {
            return Err(format!(
                "{what} is {word}: its blocks on the LUN do not hold its bytes as they read, so they cannot be cloned; copy it instead"
            ));
        }
    }
    Ok(())
}

/// What must not change while a file is cloned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    inode: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    pub fn of(file: &File) -> std::io::Result<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(Fingerprint {
            inode: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Why `now` differs from `self`, if it does.
    pub fn changed(&self, now: &Fingerprint) -> Option<String> {
        if now.size != self.size {
            Some(format!(
                "its size changed from {} to {} bytes",
                self.size, now.size
            ))
        } else if now.mtime_ns != self.mtime_ns {
            Some("it was written to (its modification time changed)".into())
        } else if now.ctime_ns != self.ctime_ns {
            Some("it was changed (its status change time moved)".into())
        } else {
            None
        }
    }
}

/// A read lease on the source: taking it fails while any process has the
/// file open for writing, and while it is held, a process that opens the
/// file for writing waits (up to /proc/sys/fs/lease-break-time) and the
/// lease is marked broken, which `still_held` reports.
pub struct ReadLease<'a> {
    file: &'a File,
    held: bool,
}

impl<'a> ReadLease<'a> {
    /// Takes the lease. Where the file system has no leases, the
    /// fingerprint checks remain.
    pub fn take(file: &'a File, what: &str) -> Result<ReadLease<'a>, String> {
        // The kernel tells of a lease break with SIGIO, whose default
        // action ends the process; we ask instead (F_GETLEASE).
        // SAFETY: setting a signal's disposition to ignore.
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
        // SAFETY: fcntl on a descriptor we own.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
        if rc == 0 {
            return Ok(ReadLease { file, held: true });
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EBUSY) => Err(format!(
                "{what} is open for writing by another process{}; clone it when nothing writes to it",
                writers_hint(file)
            )),
            _ => Ok(ReadLease { file, held: false }),
        }
    }

    /// Whether no process opened the file for writing since the lease was
    /// taken (always true without a lease).
    pub fn still_held(&self) -> bool {
        if !self.held {
            return true;
        }
        // SAFETY: fcntl on a descriptor we own.
        let lease = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLEASE) };
        lease == libc::F_RDLCK
    }
}

impl Drop for ReadLease<'_> {
    fn drop(&mut self) {
        if self.held {
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        }
    }
}

/// " (pid 123: editor)" for the processes that hold `file` open for
/// writing, as far as /proc shows them.
fn writers_hint(file: &File) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = file.metadata() else {
        return String::new();
    };
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    for process in procs.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let same = std::fs::metadata(fd.path())
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino());
            let flags = std::fs::read_to_string(process.path().join("fdinfo").join(fd.file_name()))
                .ok()
                .and_then(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("flags:"))
                        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                });
            let writes = flags.is_some_and(|f| f & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
            if same && writes {
                let name = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
                found.push(format!("pid {pid}: {}", name.trim()));
                break;
            }
        }
        if found.len() >= 5 {
            break;
        }
    }
    if found.is_empty() {
        String::new()
    } else {
        format!(" ({})", found.join(", "))
    }
}

/// SIGINT, SIGTERM and SIGHUP held back while a clone is under way, so
/// that Ctrl-C cannot leave a half-made destination or a borrowed LUN
/// mapping behind: the work checks `interrupted()` where it can stop
/// cleanly, and a signal still pending at the end is delivered then.
pub struct SignalsHeld {
    previous: libc::sigset_t,
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: building a signal set on the stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

impl SignalsHeld {
    /// Blocks the signals in this thread, and so in every thread it starts
    /// from now on (call it before any are started).
    pub fn hold() -> SignalsHeld {
        let set = stop_signals();
        // SAFETY: changing this thread's signal mask.
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous) };
        SignalsHeld { previous }
    }

    /// Whether one of the held signals arrived.
    pub fn interrupted(&self) -> bool {
        // SAFETY: reading the pending set.
        unsafe {
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
                .iter()
                .any(|&s| libc::sigismember(&pending, s) == 1)
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restoring the mask saved by `hold`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fingerprints_notice_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let file = File::open(&path).unwrap();
        let before = Fingerprint::of(&file).unwrap();
        assert_eq!(before.changed(&Fingerprint::of(&file).unwrap()), None);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"d")
            .unwrap();
        let why = before.changed(&Fingerprint::of(&file).unwrap()).unwrap();
        assert!(why.contains("size changed from 3 to 4"), "{why}");
    }

    #[test]
    fn a_file_open_for_writing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let reader = File::open(&path).unwrap();
        {
            let lease = ReadLease::take(&reader, "f").unwrap();
            assert!(lease.still_held());
        }
        let _writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let err = ReadLease::take(&reader, "f").err().expect("refused");
        assert!(err.contains("open for writing by another process"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }
}
