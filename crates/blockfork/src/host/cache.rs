//! The host's caches around a range clone. Before it: everything the host
//! wrote must be on the server (the source's data, and the destination's
//! zeros, which would otherwise land on top of the clone later). After it:
//! nothing cached may still show the destination's old zeros — not the
//! file's page cache, not the block device's, and not the page cache of
//! the FUSE file under a loop device.

use super::attach::Attachment;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `BLKFLSBUF`: write out and drop a block device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// The last resort: the kernel drops every clean page cache page.
const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Makes the device's writes durable on the server: fsync on a block
/// device writes its dirty buffers and sends a flush down the stack
/// (loop → FUSE fsync → NBD FLUSH, or NBD FLUSH directly).
pub fn flush_device(device: &Path) -> Result<(), String> {
    let file = File::open(device).map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    file.sync_all()
        .map_err(|e| format!("cannot flush {}: {e}", device.display()))
}

/// What dropping the caches took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    /// Pages still cached after the targeted drops, before the last resort.
    pub pages_left: u64,
    /// Whether /proc/sys/vm/drop_caches had to be used.
    pub drop_caches: bool,
}

/// Drops every cached copy of the destination files' old content: their
/// page cache (posix_fadvise DONTNEED, after fsync made the pages clean),
/// the block device's buffer cache (BLKFLSBUF), and the FUSE file's page
/// cache when the loop device reads it through the cache. Then checks with
/// mincore that no page of the files is left, and only if one is, drops
/// all clean caches of the host.
pub fn drop_destination_pages(
    files: &[&File],
    device: &Path,
    attachment: Option<&Attachment>,
) -> Result<Dropped, String> {
    for file in files {
        file.sync_all()
            .map_err(|e| format!("cannot fsync a destination: {e}"))?;
        fadvise_dontneed(file);
    }
    let dev = File::open(device).map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    // SAFETY: an argument-less ioctl on a descriptor we own.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF, 0) } != 0 {
        return Err(format!(
            "BLKFLSBUF on {}: {}",
            device.display(),
            std::io::Error::last_os_error()
        ));
    }
    if let Some(fuse_file) = attachment
        .filter(|a| !a.direct_io)
        .and_then(|a| a.fuse_file.as_ref())
    {
        let f = File::open(fuse_file)
            .map_err(|e| format!("cannot open {}: {e}", fuse_file.display()))?;
        fadvise_dontneed(&f);
    }
    let mut pages_left = 0;
    for file in files {
        pages_left += resident_pages(file)?;
    }
    if pages_left == 0 {
        return Ok(Dropped::default());
    }
    // Pages survive DONTNEED when someone maps or locks them; then only a
    // global drop (clean pages only, so nothing is lost) helps.
    std::fs::write(DROP_CACHES, "1").map_err(|e| format!("cannot write {DROP_CACHES}: {e}"))?;
    let mut still = 0;
    for file in files {
        still += resident_pages(file)?;
    }
    if still > 0 {
        return Err(format!(
            "{still} pages of the destination stay cached (mapped or locked by a process?); \
             they may show zeros instead of the clone until evicted"
        ));
    }
    Ok(Dropped {
        pages_left,
        drop_caches: true,
    })
}

fn fadvise_dontneed(file: &File) {
    // SAFETY: advice on a descriptor we own; failure only means less is
    // dropped, which resident_pages catches.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// How many pages of `file` are in the page cache (mincore over a mapping
/// of the file).
pub fn resident_pages(file: &File) -> Result<u64, String> {
    let size = file
        .metadata()
        .map_err(|e| format!("cannot stat a destination: {e}"))?
        .len() as usize;
    if size == 0 {
        return Ok(0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped
    // below; mincore writes one byte per page into `vector`, which has room.
    unsafe {
        let address = libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if address == libc::MAP_FAILED {
            return Err(format!(
                "cannot map a destination to check its cache: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut vector = vec![0u8; size.div_ceil(page)];
        let rc = libc::mincore(address, size, vector.as_mut_ptr());
        let error = std::io::Error::last_os_error();
        libc::munmap(address, size);
        if rc != 0 {
            return Err(format!("mincore on a destination: {error}"));
        }
        Ok(vector.iter().filter(|&&b| b & 1 != 0).count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_pages_are_counted_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 64 << 10]).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::read(&path).unwrap();
        let cached = resident_pages(&file).unwrap();
        file.sync_all().unwrap();
        fadvise_dontneed(&file);
        let left = resident_pages(&file).unwrap();
        // tmpfs keeps its pages (they are the data); disks drop them.
        assert!(left <= cached);
    }
}
