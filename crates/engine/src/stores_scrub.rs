//! A scrub's read of every copy (decision 029): part of `Stores`, kept
//! apart from the read and write paths.

use super::{spans, Stores};
use crate::io::DataFile;
use crate::layout::Place;
use crate::sums;
use crate::types::BLOCK_SIZE;
use std::io;
use std::sync::atomic::Ordering;

/// What one scrub call found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scrubbed {
    /// Block copies read and checked.
    pub checked: u64,
    /// Copies that failed (read error or checksum).
    pub bad: u64,
    /// Copies rewritten from a good one.
    pub repaired: u64,
    /// Blocks no copy has right, as indices from the call's first block.
    pub lost: Vec<usize>,
}

impl Stores {
    /// Scrubs whole blocks at `offset`: reads every copy on a device that
    /// is not faulted, checks each block against `expect` (None: a free block, skipped), rewrites every
    /// copy that failed from one that passed. What no copy has right is
    /// listed in `lost` (block indices from `offset`).
    pub fn scrub(&self, offset: u64, expect: &[Option<u32>]) -> io::Result<Scrubbed> {
        let bs = BLOCK_SIZE as usize;
        assert!(offset.is_multiple_of(BLOCK_SIZE));
        let len = expect.len() * bs;
        let layout = self.layout.read();
        let spans = spans(&layout, offset, len)?;
        drop(layout);
        let mut report = Scrubbed::default();
        let Some(spans) = spans else {
            return self.scrub_parity(offset, expect);
        };
        for span in spans {
            let first = span.done / bs;
            let blocks = span.len / bs;
            let copies: Vec<Place> = span
                .copies
                .iter()
                .copied()
                .filter(|c| !self.errors[c.device as usize].faulted())
                .collect();
            // Every copy at once: they are on different devices.
            let read_copy = |c: &Place| {
                let mut buf = vec![0u8; span.len];
                self.device(*c).read_at(&mut buf, c.offset).map(|()| buf)
            };
            let results: Vec<io::Result<Vec<u8>>> = if copies.len() > 1 {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = copies
                        .iter()
                        .map(|c| scope.spawn(move || read_copy(c)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("a scrub read does not panic"))
                        .collect()
                })
            } else {
                copies.iter().map(read_copy).collect()
            };
            let images: Vec<Option<Vec<u8>>> = copies
                .iter()
                .zip(results)
                .map(|(c, r)| match r {
                    Ok(buf) => Some(buf),
                    Err(e) => {
                        self.read_error(c.device, &e);
                        None
                    }
                })
                .collect();
            for b in 0..blocks {
                let Some(want) = expect[first + b] else {
                    continue;
                };
                let ok: Vec<bool> = images
                    .iter()
                    .map(|i| {
                        i.as_ref()
                            .is_some_and(|i| sums::of_block(&i[b * bs..(b + 1) * bs]) == want)
                    })
                    .collect();
                report.checked += copies.len() as u64;
                let Some(good) = ok.iter().position(|&o| o) else {
                    report.lost.push(first + b);
                    continue;
                };
                let block = images[good].as_ref().expect("a good copy was read")
                    [b * bs..(b + 1) * bs]
                    .to_vec();
                for (ci, c) in copies.iter().enumerate() {
                    if ok[ci] {
                        continue;
                    }
                    report.bad += 1;
                    if images[ci].is_some() {
                        self.errors[c.device as usize]
                            .checksum
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    match self.device(*c).write_at(&block, c.offset + (b * bs) as u64) {
                        Ok(()) => {
                            report.repaired += 1;
                            self.errors[c.device as usize]
                                .repaired
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => self.write_error(c.device, &e),
                    }
                }
            }
        }
        Ok(report)
    }
}
