//! The data file of a multi-device pool (issue 14, decision 027): a
//! `DataFile` over the devices that reads and writes a virtual physical
//! block wherever the layout puts it.
//!
//! What this step does: a mirror's read that fails on one copy is answered
//! from the next, and the failing device's read errors are counted; a
//! write goes to every copy and fails if any copy fails (the pool then
//! fails, as with one data file today). What later steps add: checksums
//! (so a read can tell a rotten copy from a good one, and a write may go
//! on degraded, with the stale copy known), parity stripes (a write to a
//! parity store is refused here), and rebuild.

use crate::io::DataFile;
use crate::layout::{Layout, Place};
use crate::redundancy::Redundancy;
use crate::types::{Pba, BLOCK_SIZE};
use parking_lot::RwLock;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Errors seen on one device since the pool opened.
#[derive(Debug, Default)]
pub struct DeviceErrors {
    pub read: AtomicU64,
    pub write: AtomicU64,
}

pub struct Stores {
    devices: Vec<Arc<dyn DataFile>>,
    layout: RwLock<Layout>,
    errors: Vec<DeviceErrors>,
}

/// A piece of a call that lies in one block.
struct Piece {
    /// Offset into the block.
    at: u64,
    /// Bytes of the call it covers, from `done`.
    len: usize,
    done: usize,
}

/// Splits `[offset, offset+len)` into pieces that stay inside one block.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (Pba, Piece)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done == len {
            return None;
        }
        let pos = offset + done as u64;
        let at = pos % BLOCK_SIZE;
        let n = ((BLOCK_SIZE - at) as usize).min(len - done);
        let p = (Pba::new(pos / BLOCK_SIZE), Piece { at, len: n, done });
        done += n;
        Some(p)
    })
}

fn unplaced(e: crate::types::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

impl Stores {
    pub fn new(devices: Vec<Arc<dyn DataFile>>, layout: Layout) -> Stores {
        let errors = devices.iter().map(|_| DeviceErrors::default()).collect();
        Stores {
            devices,
            layout: RwLock::new(layout),
            errors,
        }
    }

    pub fn layout(&self) -> &RwLock<Layout> {
        &self.layout
    }

    pub fn errors(&self, device: u32) -> &DeviceErrors {
        &self.errors[device as usize]
    }

    fn device(&self, p: Place) -> &dyn DataFile {
        &*self.devices[p.device as usize]
    }
}

impl DataFile for Stores {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let layout = self.layout.read();
        for (pba, piece) in pieces(offset, buf.len()) {
            let out = &mut buf[piece.done..piece.done + piece.len];
            let copies = layout.copies(pba).map_err(unplaced)?;
            let mut last = None;
            for c in copies {
                match self.device(c).read_at(out, c.offset + piece.at) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        self.errors[c.device as usize]
                            .read
                            .fetch_add(1, Ordering::Relaxed);
                        last = Some(e);
                    }
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let layout = self.layout.read();
        for (pba, piece) in pieces(offset, buf.len()) {
            let (store, _) = layout.store_of(pba).map_err(unplaced)?;
            if let Redundancy::Parity { .. } = store {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a parity store is written by whole stripes, which this version does not do yet",
                ));
            }
            let data = &buf[piece.done..piece.done + piece.len];
            for c in layout.copies(pba).map_err(unplaced)? {
                if let Err(e) = self.device(c).write_at(data, c.offset + piece.at) {
                    self.errors[c.device as usize]
                        .write
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        for d in &self.devices {
            d.sync()?;
        }
        Ok(())
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

    fn check(&self) -> io::Result<()> {
        for d in &self.devices {
            d.check()?;
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::faulty::{FaultyDevice, Misbehave, On, Rule};
    use crate::label::LABEL_BYTES;
    use crate::sim::{FaultPlan, SimData};

    const SEG: u64 = 1 << 20;

    /// Three faulty devices of 4 segments, a mirror store and a `none`
    /// store.
    fn pool() -> (Stores, Vec<Arc<FaultyDevice>>, Pba, Pba) {
        let faulty: Vec<Arc<FaultyDevice>> = (0..3)
            .map(|i| {
                let d = Arc::new(SimData::new(FaultPlan::new(i)));
                d.ensure_len(LABEL_BYTES + 4 * SEG).unwrap();
                Arc::new(FaultyDevice::new(d, i))
            })
            .collect();
        let mut layout = Layout::new(SEG, &[4, 4, 4]);
        let m = layout.add_store(Redundancy::Mirror).unwrap();
        let n = layout.add_store(Redundancy::None).unwrap();
        let (mirror, _) = layout.extent_of(m).unwrap();
        let (none, _) = layout.extent_of(n).unwrap();
        let devices = faulty
            .iter()
            .map(|f| f.clone() as Arc<dyn DataFile>)
            .collect();
        (Stores::new(devices, layout), faulty, mirror, none)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn a_mirror_read_that_fails_on_one_copy_is_answered_by_the_other() {
        let (s, faulty, mirror, _) = pool();
        let data = pattern(3 * 4096 + 100, 1);
        s.write_at(&data, mirror.bytes() + 50).unwrap();
        let copies = s.layout().read().copies(mirror).unwrap();
        let first = copies[0].device;
        faulty[first as usize].inject(Rule::always(On::Read, Misbehave::Eio));
        let mut back = vec![0u8; data.len()];
        s.read_at(&mut back, mirror.bytes() + 50).unwrap();
        assert_eq!(back, data);
        assert!(s.errors(first).read.load(Ordering::Relaxed) >= 1);
        faulty[first as usize].clear();
        faulty[first as usize].vanish();
        let mut again = vec![0u8; data.len()];
        s.read_at(&mut again, mirror.bytes() + 50).unwrap();
        assert_eq!(again, data, "a vanished device: the other copy");
        assert!(
            s.write_at(&data, mirror.bytes()).is_err(),
            "writes need every copy, for now"
        );
    }

    #[test]
    fn a_single_copy_has_nothing_to_fall_back_on() {
        let (s, faulty, _, none) = pool();
        s.write_at(&pattern(4096, 2), none.bytes()).unwrap();
        let d = s.layout().read().copies(none).unwrap()[0].device;
        faulty[d as usize].inject(Rule::always(On::Read, Misbehave::Eio).times(1));
        let mut b = vec![0u8; 4096];
        assert_eq!(
            s.read_at(&mut b, none.bytes()).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        s.read_at(&mut b, none.bytes()).unwrap();
        assert_eq!(b, pattern(4096, 2));
    }

    #[test]
    fn blocks_outside_every_store_and_parity_writes_are_refused() {
        let (s, _, mirror, _) = pool();
        let mut b = vec![0u8; 4096];
        let past = mirror.bytes() + 256 * 4096;
        assert_eq!(
            s.read_at(&mut b, past).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(s.ensure_len(u64::MAX).is_err());
        let mut layout = Layout::new(SEG, &[1; 6]);
        let p = layout.add_store("parity:4+2".parse().unwrap()).unwrap();
        let (start, _) = layout.extent_of(p).unwrap();
        let devices = (0..6)
            .map(|i| {
                let d = Arc::new(SimData::new(FaultPlan::new(i)));
                d.ensure_len(LABEL_BYTES + SEG).unwrap();
                d as Arc<dyn DataFile>
            })
            .collect();
        let s = Stores::new(devices, layout);
        let e = s.write_at(&b, start.bytes()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn a_failed_sync_fails_the_call() {
        let (s, faulty, _, _) = pool();
        faulty[2].inject(Rule::always(On::Sync, Misbehave::Eio).times(1));
        assert!(s.sync().is_err());
        s.sync().unwrap();
    }
}
