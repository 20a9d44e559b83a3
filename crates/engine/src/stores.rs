//! The data file of a multi-device pool (issue 14, decisions 027 to 030):
//! a `DataFile` over the devices that reads and writes a virtual physical
//! block wherever the layout puts it.
//!
//! A store of copies (`none`, `mirror`, `mirror3`) is written to every
//! copy on a device that is not faulted; a read is checked against the
//! block's checksum and a copy that fails is answered from the next and
//! rewritten. Parity stores are `stores_parity.rs`, the scrub's read of
//! every copy `stores_scrub.rs`.

use crate::io::DataFile;
use crate::layout::{Layout, Place};
use crate::redundancy::Redundancy;
use crate::sums;
use crate::types::{Pba, BLOCK_SIZE};
use parking_lot::{Mutex, RwLock};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What one device has been through since the pool opened.
#[derive(Debug, Default)]
pub struct DeviceErrors {
    pub read: AtomicU64,
    pub write: AtomicU64,
    /// Blocks whose content did not match their checksum.
    pub checksum: AtomicU64,
    /// Blocks rewritten from a good copy.
    pub repaired: AtomicU64,
    faulted: AtomicBool,
    why: Mutex<Option<String>>,
    /// No longer in the pool (nothing is on it).
    removed: AtomicBool,
}

impl DeviceErrors {
    pub fn faulted(&self) -> bool {
        self.faulted.load(Ordering::Acquire)
    }

    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Why the device is faulted (None while it is not).
    pub fn why(&self) -> Option<String> {
        self.why.lock().clone()
    }

    /// Back in service (`pool device clear`): the error counts stay.
    fn clear(&self) {
        *self.why.lock() = None;
        self.faulted.store(false, Ordering::Release);
    }

    fn fault(&self, why: String) -> bool {
        let mut w = self.why.lock();
        if w.is_none() {
            *w = Some(why);
        }
        !self.faulted.swap(true, Ordering::AcqRel)
    }
}

pub struct Stores {
    /// The devices, by index; room for `DEVICES_MAX`, of which `count`
    /// are in use (a device added at run time takes the next slot).
    devices: Vec<RwLock<Arc<dyn DataFile>>>,
    count: std::sync::atomic::AtomicUsize,
    layout: RwLock<Layout>,
    errors: Vec<DeviceErrors>,
    /// Devices faulted and not yet reported as events: (device, why).
    news: Mutex<Vec<(u32, String)>>,
    /// Stores that lost their copies while holding no data (at open).
    given_up: Mutex<std::collections::BTreeSet<usize>>,
}

/// A piece of a call inside one store of copies (`none`, `mirror`,
/// `mirror3`): contiguous bytes on every copy.
struct Span {
    /// Where the span's first byte is on each copy.
    copies: Vec<Place>,
    len: usize,
    done: usize,
}

fn unplaced(e: crate::types::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// Splits `[offset, offset+len)` into spans that stay inside one store;
/// `None` when some of it lies in a parity store (read block by block).
fn spans(layout: &Layout, offset: u64, len: usize) -> io::Result<Option<Vec<Span>>> {
    let mut out = Vec::new();
    let mut done = 0usize;
    while done < len {
        let pos = offset + done as u64;
        let pba = Pba::new(pos / BLOCK_SIZE);
        let (class, block) = layout.store_of(pba).map_err(unplaced)?;
        if let Redundancy::Parity { .. } = class {
            return Ok(None);
        }
        let store_blocks = layout.store_blocks(class);
        let left = (store_blocks - block) * BLOCK_SIZE - pos % BLOCK_SIZE;
        let n = (left.min((len - done) as u64)) as usize;
        let copies = layout
            .copies(pba)
            .map_err(unplaced)?
            .into_iter()
            .map(|p| Place {
                device: p.device,
                offset: p.offset + pos % BLOCK_SIZE,
            })
            .collect();
        out.push(Span {
            copies,
            len: n,
            done,
        });
        done += n;
    }
    Ok(Some(out))
}

/// An error no copy could answer (the client sees EIO).
fn eio(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Stores {
    pub fn new(devices: Vec<Arc<dyn DataFile>>, layout: Layout) -> Stores {
        let count = devices.len();
        assert!(count <= crate::devpool::DEVICES_MAX);
        let mut slots: Vec<RwLock<Arc<dyn DataFile>>> =
            devices.into_iter().map(RwLock::new).collect();
        while slots.len() < crate::devpool::DEVICES_MAX {
            slots.push(RwLock::new(Arc::new(Absent("no device".into()))));
        }
        let errors = slots.iter().map(|_| DeviceErrors::default()).collect();
        Stores {
            devices: slots,
            count: std::sync::atomic::AtomicUsize::new(count),
            layout: RwLock::new(layout),
            errors,
            news: Mutex::new(Vec::new()),
            given_up: Mutex::new(Default::default()),
        }
    }

    pub fn layout(&self) -> &RwLock<Layout> {
        &self.layout
    }

    pub fn errors(&self, device: u32) -> &DeviceErrors {
        &self.errors[device as usize]
    }

    pub fn device_count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The device at index `d`.
    pub fn file(&self, d: u32) -> Arc<dyn DataFile> {
        self.devices[d as usize].read().clone()
    }

    fn device(&self, p: Place) -> Arc<dyn DataFile> {
        self.file(p.device)
    }

    /// Adds a device (already labelled) in the next slot, and its
    /// segments to the layout; answers its index.
    pub fn add_device(&self, file: Arc<dyn DataFile>, segments: u64) -> u32 {
        let mut layout = self.layout.write();
        let index = self.count.load(Ordering::Acquire);
        assert!(index < crate::devpool::DEVICES_MAX, "checked by the caller");
        *self.devices[index].write() = file;
        let at = layout.add_device(segments);
        debug_assert_eq!(at as usize, index);
        self.count.store(index + 1, Ordering::Release);
        index as u32
    }

    /// Replaces a device's file (a removed device becomes `Absent`).
    pub fn set_file(&self, d: u32, file: Arc<dyn DataFile>) {
        *self.devices[d as usize].write() = file;
    }

    /// A device leaves the pool: no store is on it (the caller moved them
    /// all), none will be placed there, and it is neither read nor synced.
    pub fn retire(&self, d: u32) {
        self.layout.write().retire_device(d);
        let e = &self.errors[d as usize];
        e.removed.store(true, Ordering::Release);
        e.faulted.store(true, Ordering::Release);
        self.set_file(d, Arc::new(Absent("removed from the pool".into())));
    }

    /// Marks a device faulted: it is read only when no other copy is left,
    /// and written no more. True when it was not faulted before.
    pub fn fault(&self, device: u32, why: String) -> bool {
        let news = self.errors[device as usize].fault(why.clone());
        if news {
            tracing::error!(device, "device faulted: {why}");
            self.news.lock().push((device, why));
        }
        news
    }

    /// Takes a faulted device back (its file is open): reads and writes
    /// use it again. The caller resilvers it.
    pub fn clear(&self, device: u32) {
        self.errors[device as usize].clear();
    }

    /// Devices faulted since the last call: (device, why).
    pub fn take_news(&self) -> Vec<(u32, String)> {
        std::mem::take(&mut *self.news.lock())
    }

    /// Copies in the order to try them: healthy devices first.
    fn ordered(&self, copies: &[Place]) -> Vec<Place> {
        let mut v = copies.to_vec();
        v.sort_by_key(|p| self.errors[p.device as usize].faulted());
        v
    }

    /// Fails when some store has lost more segments than its class
    /// tolerates: its data is gone until a device comes back.
    pub fn servable(&self) -> Result<(), String> {
        match self.unservable().into_iter().next() {
            Some((_, why)) => Err(why),
            None => Ok(()),
        }
    }

    /// Stores (not given up) that lost more segments than their class
    /// tolerates, each with a sentence.
    pub fn unservable(&self) -> Vec<(usize, String)> {
        let layout = self.layout.read();
        let given_up = self.given_up.lock();
        let mut out = Vec::new();
        for (n, store) in layout.stores() {
            if given_up.contains(&n) {
                continue;
            }
            let healthy = store
                .segments
                .iter()
                .filter(|r| !self.errors[r.device as usize].faulted())
                .count();
            if healthy < store.class.data_shards() {
                let lost: Vec<String> = store
                    .segments
                    .iter()
                    .filter(|r| self.errors[r.device as usize].faulted())
                    .map(|r| r.device.to_string())
                    .collect();
                out.push((
                    n,
                    format!(
                        "store {n} ({}) has lost device(s) {}: more than it tolerates",
                        store.class,
                        lost.join(", ")
                    ),
                ));
            }
        }
        out
    }

    /// A store that lost its copies but held no data: no longer checked.
    pub fn give_up(&self, n: usize) {
        self.given_up.lock().insert(n);
    }

    fn read_error(&self, device: u32, e: &io::Error) {
        let n = self.errors[device as usize]
            .read
            .fetch_add(1, Ordering::Relaxed);
        if e.kind() == io::ErrorKind::NotFound {
            self.fault(device, format!("it is gone: {e}"));
        } else if n + 1 >= READ_ERRORS_TO_FAULT {
            self.fault(device, format!("{} read errors, the last: {e}", n + 1));
        }
    }

    /// Reads whole blocks at `offset` and checks each against `expect`
    /// (crc32c): a block that fails on one copy, by an error or a
    /// mismatch, is read from the next, and the copies that failed are
    /// rewritten with the good content. Fails only when no copy of some
    /// block verifies.
    pub fn read_checked(&self, buf: &mut [u8], offset: u64, expect: &[u32]) -> io::Result<()> {
        let bs = BLOCK_SIZE as usize;
        assert!(offset.is_multiple_of(BLOCK_SIZE) && buf.len() == expect.len() * bs);
        // The common case, without allocating: one store of copies, its
        // first healthy copy read once, every block verifying.
        if let Some((device, at)) = self.first_healthy_copy(offset, expect.len() as u64) {
            if self.file(device).read_at(buf, at).is_ok() && first_mismatch(buf, expect).is_none() {
                return Ok(());
            }
        }
        let layout = self.layout.read();
        let Some(spans) = spans(&layout, offset, buf.len())? else {
            drop(layout);
            return self.read_parity(buf, offset, Some(expect));
        };
        drop(layout);
        for span in spans {
            let out = &mut buf[span.done..span.done + span.len];
            let sums = &expect[span.done / bs..(span.done + span.len) / bs];
            self.read_span_checked(out, &span.copies, sums, offset + span.done as u64)?;
        }
        Ok(())
    }

    fn read_span_checked(
        &self,
        out: &mut [u8],
        copies: &[Place],
        sums: &[u32],
        offset: u64,
    ) -> io::Result<()> {
        let bs = BLOCK_SIZE as usize;
        let copies = self.ordered(copies);
        let mut need: Vec<usize> = (0..sums.len()).collect();
        // (copy, block) pairs that failed and may be repaired.
        let mut bad: Vec<(Place, usize)> = Vec::new();
        let mut last_err = None;
        for c in &copies {
            if need.is_empty() {
                break;
            }
            let mut still = Vec::new();
            for run in runs_of(&need) {
                let bytes = &mut out[run.start * bs..run.end * bs];
                match self
                    .device(*c)
                    .read_at(bytes, c.offset + (run.start * bs) as u64)
                {
                    Err(e) => {
                        self.read_error(c.device, &e);
                        bad.extend(run.clone().map(|b| (*c, b)));
                        still.extend(run);
                        last_err = Some(e);
                    }
                    Ok(()) => {
                        for b in run {
                            if sums::of_block(&out[b * bs..(b + 1) * bs]) != sums[b] {
                                self.errors[c.device as usize]
                                    .checksum
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    device = c.device,
                                    block = offset / BLOCK_SIZE + b as u64,
                                    "a copy fails its checksum"
                                );
                                bad.push((*c, b));
                                still.push(b);
                            }
                        }
                    }
                }
            }
            need = still;
        }
        if let Some(&b) = need.first() {
            return Err(eio(format!(
                "block {}: no copy of it verifies{}",
                offset / BLOCK_SIZE + b as u64,
                last_err
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )));
        }
        for (c, b) in bad {
            if self.errors[c.device as usize].faulted() {
                continue;
            }
            let block = &out[b * bs..(b + 1) * bs];
            match self.device(c).write_at(block, c.offset + (b * bs) as u64) {
                Ok(()) => {
                    self.errors[c.device as usize]
                        .repaired
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => self.write_error(c.device, &e),
            }
        }
        Ok(())
    }

    /// Where to read `blocks` blocks at `offset` in one request: the first
    /// copy on a healthy device, when they lie in one store of copies.
    fn first_healthy_copy(&self, offset: u64, blocks: u64) -> Option<(u32, u64)> {
        let layout = self.layout.read();
        let (store, block) = layout.store_at(Pba::new(offset / BLOCK_SIZE)).ok()?;
        if matches!(store.class, Redundancy::Parity { .. })
            || block + blocks > layout.store_blocks(store.class)
        {
            return None;
        }
        let r = *store
            .segments
            .iter()
            .find(|r| !self.errors[r.device as usize].faulted())?;
        let place = layout.place_of(r, block);
        Some((place.device, place.offset))
    }

    fn write_error(&self, device: u32, e: &io::Error) {
        self.errors[device as usize]
            .write
            .fetch_add(1, Ordering::Relaxed);
        self.fault(device, format!("a write failed: {e}"));
    }
}

/// Read errors after which a device is faulted (ZFS faults a vdev after
/// too many errors too; one bad sector must not take a disk out).
pub const READ_ERRORS_TO_FAULT: u64 = 64;

/// Runs of consecutive indices.
fn runs_of(idx: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for &i in idx {
        match out.last_mut() {
            Some(r) if r.end == i => r.end += 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

fn first_mismatch(buf: &[u8], expect: &[u32]) -> Option<usize> {
    buf.chunks(BLOCK_SIZE as usize)
        .zip(expect)
        .position(|(b, &s)| sums::of_block(b) != s)
}

impl DataFile for Stores {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let layout = self.layout.read();
        if let Some(spans) = spans(&layout, offset, buf.len())? {
            drop(layout);
            for span in spans {
                let out = &mut buf[span.done..span.done + span.len];
                let mut last = None;
                for c in self.ordered(&span.copies) {
                    match self.device(c).read_at(out, c.offset) {
                        Ok(()) => {
                            last = None;
                            break;
                        }
                        Err(e) => {
                            self.read_error(c.device, &e);
                            last = Some(e);
                        }
                    }
                }
                if let Some(e) = last {
                    return Err(e);
                }
            }
            return Ok(());
        }
        drop(layout);
        // Parity stores, by whole blocks.
        let first = offset / BLOCK_SIZE * BLOCK_SIZE;
        let end = (offset + buf.len() as u64).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        if first == offset && end == offset + buf.len() as u64 {
            return self.read_parity(buf, offset, None);
        }
        let mut whole = vec![0u8; (end - first) as usize];
        self.read_parity(&mut whole, first, None)?;
        let at = (offset - first) as usize;
        buf.copy_from_slice(&whole[at..at + buf.len()]);
        Ok(())
    }

    /// Writes every copy on a device that is not faulted; a copy that
    /// fails faults its device (its stale content fails its checksum
    /// later, and is repaired from a good copy). Fails when no copy of
    /// some span was written.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let layout = self.layout.read();
        let Some(spans) = spans(&layout, offset, buf.len())? else {
            drop(layout);
            return self.write_parity(buf, offset);
        };
        drop(layout);
        for span in spans {
            let data = &buf[span.done..span.done + span.len];
            let mut written = 0;
            let mut last = None;
            for c in &span.copies {
                if self.errors[c.device as usize].faulted() {
                    continue;
                }
                match self.device(*c).write_at(data, c.offset) {
                    Ok(()) => written += 1,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Err(e),
                    Err(e) => {
                        self.write_error(c.device, &e);
                        last = Some(e);
                    }
                }
            }
            if written == 0 {
                return Err(last.unwrap_or_else(|| {
                    eio(format!(
                        "every device of the store at byte {} is faulted",
                        offset + span.done as u64
                    ))
                }));
            }
            // A device faulted here may hold another store's last copy:
            // the pool cannot go on, and says so now, not at the next sync.
            if let Some(e) = last {
                if let Err(why) = self.servable() {
                    return Err(eio(format!("{e}; {why}")));
                }
            }
        }
        Ok(())
    }

    /// Syncs every device that is not faulted; a device whose sync fails
    /// is faulted. Fails when a store is left without enough copies.
    fn sync(&self) -> io::Result<()> {
        for i in 0..self.device_count() {
            if self.errors[i].faulted() {
                continue;
            }
            if let Err(e) = self.file(i as u32).sync() {
                self.errors[i].write.fetch_add(1, Ordering::Relaxed);
                self.fault(i as u32, format!("a sync failed: {e}"));
            }
        }
        self.servable().map_err(eio)
    }

    /// The stores are the pool's size: growing happens by adding stores,
    /// not by lengthening anything.
    fn ensure_len(&self, bytes: u64) -> io::Result<()> {
        let end = self.layout.read().end_blocks() * BLOCK_SIZE;
        if bytes > end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the pool's stores end at byte {end}, before {bytes}"),
            ));
        }
        Ok(())
    }

    /// A device that fails its check (removed while open) is faulted; the
    /// call fails only when a store is left without enough copies.
    fn check(&self) -> io::Result<()> {
        for i in 0..self.device_count() {
            if self.errors[i].faulted() {
                continue;
            }
            if let Err(e) = self.file(i as u32).check() {
                self.fault(i as u32, format!("{e}"));
            }
        }
        self.servable().map_err(eio)
    }
}

/// A device of the pool that is not there: every call fails.
pub struct Absent(pub String);

impl DataFile for Absent {
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::NotFound, self.0.clone()))
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::NotFound, self.0.clone()))
    }
    fn sync(&self) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::NotFound, self.0.clone()))
    }
    fn ensure_len(&self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn check(&self) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::NotFound, self.0.clone()))
    }
}

#[path = "stores_parity.rs"]
mod parity;

#[path = "stores_scrub.rs"]
mod scrub_copies;
pub use scrub_copies::Scrubbed;

#[cfg(all(test, feature = "sim"))]
#[path = "stores_tests.rs"]
mod tests;
