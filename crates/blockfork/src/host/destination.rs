//! Creating a destination file whose blocks are allocated and *written*
//! (seed FIG. 4, block 425): the file system must treat every block as
//! holding data, or it would keep reading zeros from "unwritten" extents
//! however the blocks below change when the server clones into them.

use super::fiemap;
use super::mapping::{rounded_size, BLOCK_BYTES};
use super::source::SignalsHeld;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// `FALLOC_FL_WRITE_ZEROES` (Linux 6.17): allocate written extents and let
/// the device zero them without data transfer, where it can unmap-zero.
const FALLOC_FL_WRITE_ZEROES: libc::c_int = 0x80;
/// Bytes written per call when zeros must be written out.
const ZERO_CHUNK_BYTES: usize = 8 << 20;
/// Most rounds of one-block writes that let the file system zero out its
/// extents by itself; each round must also pay for itself (below).
const TOUCH_ROUNDS_MAX: usize = 64;
/// Distance between those writes within an unwritten range: below ext4's
/// largest extent (128 MiB), so that one round reaches most extents.
const TOUCH_STRIDE_BYTES: u64 = 32 << 20;
/// A round counts as zeroing out whole extents when it converted at least
/// this many bytes per byte written; else the rest is written.
const ZEROOUT_GAIN_MIN: u64 = 16;

/// How a destination's blocks came to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Nothing to write: an empty file.
    Empty,
    /// fallocate(FALLOC_FL_WRITE_ZEROES): no data sent.
    WriteZeroes,
    /// Preallocated, then one block written per extent: the file system
    /// zeroed out the rest of each extent with the device's write-zeroes
    /// (ext4 mounted with dioread_lock, extent_max_zeroout_kb raised).
    ZeroedOut,
    /// Preallocated, then zeros written over every block.
    ZerosWritten,
}

/// A destination file and how its blocks were written.
pub struct Created {
    pub file: File,
    pub method: Method,
    /// Bytes of zeros this host sent through the file system.
    pub zero_bytes: u64,
}

/// Creates `path` (which must not exist) with `size` bytes of written
/// blocks, durable (fsync), and with `mode` permissions. `progress` hears
/// how many zero bytes were written so far. On failure the file is gone
/// again.
pub fn create(
    path: &Path,
    size: u64,
    mode: u32,
    signals: &SignalsHeld,
    progress: &mut dyn FnMut(u64),
) -> Result<Created, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!(
                    "{} exists already; blockfork never overwrites a file with a clone",
                    path.display()
                )
            }
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    fill(file, path, size, signals, progress).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Gives the new, empty `file` its written blocks.
fn fill(
    file: File,
    path: &Path,
    size: u64,
    signals: &SignalsHeld,
    progress: &mut dyn FnMut(u64),
) -> Result<Created, String> {
    let what = path.display();
    if size == 0 {
        return Ok(Created {
            file,
            method: Method::Empty,
            zero_bytes: 0,
        });
    }
    let length = i64::try_from(size).map_err(|_| format!("{size} bytes is too large"))?;
    // SAFETY: fallocate on a descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), FALLOC_FL_WRITE_ZEROES, 0, length) };
    let method = if rc == 0 {
        Method::WriteZeroes
    } else {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // Not this kernel, file system or device: write zeros below.
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => {}
            _ => return Err(format!("cannot allocate {size} bytes for {what}: {e}")),
        }
        // Reserve the blocks in one go (fewer, larger extents), as
        // unwritten extents.
        // SAFETY: as above.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(format!("cannot allocate {size} bytes for {what}: {e}"));
            }
        }
        Method::ZerosWritten
    };
    let mut zero_bytes = 0;
    let mut method = method;
    if method == Method::ZerosWritten {
        zero_bytes = write_out(&file, path, size, signals, progress)?;
        if zero_bytes.saturating_mul(ZEROOUT_GAIN_MIN) < size {
            method = Method::ZeroedOut;
        }
    }
    file.sync_all()
        .map_err(|e| format!("cannot fsync {what}: {e}"))?;
    Ok(Created {
        file,
        method,
        zero_bytes,
    })
}

/// Writes zeros over whatever of `[0, size)` the file system still holds
/// as unwritten or unallocated; the bytes written.
fn write_out(
    file: &File,
    path: &Path,
    size: u64,
    signals: &SignalsHeld,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, String> {
    let what = path.display();
    let fiemap_error = |e: std::io::Error| format!("FIEMAP of {what}: {e}");
    let zeros = vec![0u8; BLOCK_BYTES as usize];
    let mut written = 0u64;
    let mut pending = unwritten_ranges(file, size).map_err(fiemap_error)?;
    // First one block here and there in each unwritten range, round after
    // round: ext4 mounted with dioread_lock converts a whole extent (up to
    // extent_max_zeroout_kb) around a small write with the device's
    // write-zeroes, which costs no data transfer. A round reaches the
    // extents a write lands in; the next one those it missed.
    for _ in 0..TOUCH_ROUNDS_MAX {
        if pending.is_empty() {
            break;
        }
        let before: u64 = pending.iter().map(|(s, e)| e - s).sum();
        let mut touched = 0;
        for &(start, end) in &pending {
            for at in touch_points(start, end) {
                let n = (end - at).min(BLOCK_BYTES) as usize;
                file.write_all_at(&zeros[..n], at)
                    .map_err(|e| format!("cannot write {what}: {e}"))?;
                touched += n as u64;
            }
        }
        file.sync_data()
            .map_err(|e| format!("cannot fsync {what}: {e}"))?;
        written += touched;
        pending = unwritten_ranges(file, size).map_err(fiemap_error)?;
        let after: u64 = pending.iter().map(|(s, e)| e - s).sum();
        if before.saturating_sub(after) < touched * ZEROOUT_GAIN_MIN {
            // The file system converts what is written and no more.
            break;
        }
    }
    if pending.is_empty() {
        return Ok(written);
    }
    // The rest with O_DIRECT: no page cache to fill and then drop.
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok();
    let chunk = AlignedZeros::new(ZERO_CHUNK_BYTES);
    let whole_end = size / BLOCK_BYTES * BLOCK_BYTES;
    for (start, end) in pending {
        let mut at = start;
        while at < end {
            if signals.interrupted() {
                return Err(format!(
                    "interrupted while writing {what}; nothing was cloned"
                ));
            }
            let n = (end - at).min(ZERO_CHUNK_BYTES as u64);
            // O_DIRECT wants whole blocks, and must not write past the end
            // of the file (it would grow it): the partial last block goes
            // through the page cache.
            let aligned = at + n <= whole_end;
            let result = match (&direct, aligned) {
                (Some(d), true) => d.write_all_at(&chunk.bytes()[..n as usize], at),
                _ => file.write_all_at(&chunk.bytes()[..n as usize], at),
            };
            result.map_err(|e| format!("cannot write zeros to {what}: {e}"))?;
            at += n;
            written += n;
            progress(written);
        }
    }
    file.sync_all()
        .map_err(|e| format!("cannot fsync {what}: {e}"))?;
    let left = unwritten_ranges(file, size).map_err(fiemap_error)?;
    if let Some((start, end)) = left.first() {
        return Err(format!(
            "{what}: bytes {start}..{end} are still unwritten after writing zeros; the file system does not report its extents as expected"
        ));
    }
    Ok(written)
}

/// Where to write one block in the unwritten range `[start, end)`: the
/// second block, and then every [`TOUCH_STRIDE_BYTES`], so that one round
/// reaches every file system extent of the range longer than the stride.
/// Not the first or last block of an extent where avoidable: a write there
/// moves the boundary of a written neighbour instead (ext4's fast path for
/// appends) and zeroes nothing.
fn touch_points(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let first = if end - start > 2 * BLOCK_BYTES {
        start + BLOCK_BYTES
    } else {
        start
    };
    (first..end).step_by(TOUCH_STRIDE_BYTES as usize)
}

/// The parts of `[0, size)` (rounded to blocks, clipped to `size`) that
/// are holes or unwritten extents, merged, in order.
fn unwritten_ranges(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let extents = fiemap::extents(file, true)?;
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut push = |start: u64, end: u64| {
        let end = end.min(size);
        if start >= end {
            return;
        }
        match pending.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ => pending.push((start, end)),
        }
    };
    let mut covered = 0u64;
    for e in &extents {
        if e.logical >= rounded_size(size) {
            break;
        }
        if e.logical > covered {
            push(covered, e.logical);
        }
        if e.flags & fiemap::REFUSED_FLAGS != 0 {
            push(e.logical, e.logical + e.length);
        }
        covered = covered.max(e.logical + e.length);
    }
    push(covered, size);
    Ok(pending)
}

/// A page-aligned buffer of zeros, as O_DIRECT needs.
struct AlignedZeros {
    pointer: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedZeros {
    fn new(bytes: usize) -> AlignedZeros {
        let layout = std::alloc::Layout::from_size_align(bytes, BLOCK_BYTES as usize)
            .expect("a valid layout");
        // SAFETY: a non-zero size; the pointer is checked.
        let pointer = unsafe { std::alloc::alloc_zeroed(layout) };
        if pointer.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedZeros { pointer, layout }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `layout.size()` initialized (zeroed) bytes live as long
        // as `self`.
        unsafe { std::slice::from_raw_parts(self.pointer, self.layout.size()) }
    }
}

impl Drop for AlignedZeros {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.pointer, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_avoid_extent_ends() {
        let b = BLOCK_BYTES;
        assert_eq!(touch_points(0, b).collect::<Vec<_>>(), vec![0]);
        assert_eq!(touch_points(8 * b, 10 * b).collect::<Vec<_>>(), vec![8 * b]);
        assert_eq!(touch_points(0, 3 * b).collect::<Vec<_>>(), vec![b]);
        let many: Vec<u64> = touch_points(0, 100 << 20).collect();
        assert_eq!(
            many,
            vec![b, b + (32 << 20), b + (64 << 20), b + (96 << 20)]
        );
    }

    #[test]
    fn destinations_are_fully_written() {
        let dir = tempfile::tempdir().unwrap();
        let signals = SignalsHeld::hold();
        for size in [
            0,
            1,
            BLOCK_BYTES,
            3 * BLOCK_BYTES + 17,
            (ZERO_CHUNK_BYTES as u64) + 5,
        ] {
            let path = dir.path().join(format!("d{size}"));
            let mut seen = 0;
            let created = match create(&path, size, 0o600, &signals, &mut |n| seen = n) {
                Ok(c) => c,
                Err(e) if e.contains("FIEMAP") => {
                    eprintln!("no FIEMAP under {}; skipped", dir.path().display());
                    return;
                }
                Err(e) => panic!("{e}"),
            };
            assert_eq!(created.file.metadata().unwrap().len(), size);
            assert!(seen <= created.zero_bytes);
            assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
            if size > 0 {
                let extents = fiemap::extents(&created.file, true).unwrap();
                fiemap::lun_layout(&extents, size, 0).unwrap();
            }
            let again = create(&path, size, 0o600, &signals, &mut |_| {});
            assert!(again.err().unwrap().contains("exists already"));
        }
    }
}
