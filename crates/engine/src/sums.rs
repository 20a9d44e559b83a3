//! Block checksums of a pool on devices (issue 14, decisions 027 and 028).
//!
//! Every block a pool on devices writes has a crc32c, kept here, by
//! physical block, and committed in the same batch as the map change that
//! points at the block. Kept in the metadata, not beside the data: a
//! dropped or misdirected write leaves a block whose own checksum would
//! match its stale content, but not this one. A block is never overwritten
//! in place while it holds data, so its checksum stays right from its write
//! until it is freed.
//!
//! Pages of `PAGE_BLOCKS` checksums, one metadata key each
//! (`TAG_SUMS` + page number), all in memory (4 bytes per 4 KiB block:
//! 1 GiB per TiB of used data; a cache that pages them in is later work).

use crate::types::{Error, Pba, Result, BLOCK_SIZE};
use std::collections::BTreeSet;

/// Checksums per page (and per metadata key): 1 KiB of values.
pub const PAGE_BLOCKS: u64 = 256;

/// The checksum of one 4 KiB block.
pub fn of_block(block: &[u8]) -> u32 {
    debug_assert_eq!(block.len() as u64, BLOCK_SIZE);
    crc32c::crc32c(block)
}

/// Checksums of consecutive blocks.
pub fn of_blocks(data: &[u8]) -> Vec<u32> {
    data.chunks(BLOCK_SIZE as usize).map(of_block).collect()
}

#[derive(Debug, Default)]
pub struct Sums {
    /// By page number: physical blocks are dense enough (store windows in
    /// a row) that a vector beats a hash map on the read path.
    pages: Vec<Option<Box<[u32]>>>,
    /// Pages changed since the last commit began.
    pub dirty: BTreeSet<u64>,
}

impl Sums {
    /// Sets the checksums of the blocks from `start`.
    pub fn set(&mut self, start: Pba, sums: &[u32]) {
        let mut pba = start.get();
        let mut rest = sums;
        while !rest.is_empty() {
            let (page, slot) = (pba / PAGE_BLOCKS, (pba % PAGE_BLOCKS) as usize);
            let n = rest.len().min(PAGE_BLOCKS as usize - slot);
            self.page_mut(page)[slot..slot + n].copy_from_slice(&rest[..n]);
            self.dirty.insert(page);
            rest = &rest[n..];
            pba += n as u64;
        }
    }

    /// Copies the checksums of `len` blocks from `src` to `dst` (a bulk
    /// copy of the blocks).
    pub fn copy(&mut self, src: Pba, dst: Pba, len: u64) {
        let sums: Vec<u32> = (0..len)
            .map(|i| self.get(Pba::new(src.get() + i)))
            .collect();
        self.set(dst, &sums);
    }

    fn page_mut(&mut self, page: u64) -> &mut [u32] {
        let i = page as usize;
        if self.pages.len() <= i {
            self.pages.resize(i + 1, None);
        }
        self.pages[i].get_or_insert_with(|| vec![0; PAGE_BLOCKS as usize].into_boxed_slice())
    }

    /// The checksum of block `pba` (0 for a block never written: no block
    /// of data a reader can reach is unwritten).
    pub fn get(&self, pba: Pba) -> u32 {
        let pba = pba.get();
        match self.pages.get((pba / PAGE_BLOCKS) as usize) {
            Some(Some(p)) => p[(pba % PAGE_BLOCKS) as usize],
            _ => 0,
        }
    }

    /// Appends the checksums of `len` blocks from `start` to `out`.
    pub fn extend_into(&self, start: Pba, len: u64, out: &mut impl Extend<u32>) {
        out.extend((0..len).map(|i| self.get(Pba::new(start.get() + i))));
    }

    /// A page's value as stored: `PAGE_BLOCKS` little-endian u32s.
    pub fn encode_page(&self, page: u64) -> Option<Vec<u8>> {
        let p = self.pages.get(page as usize)?.as_ref()?;
        Some(p.iter().flat_map(|s| s.to_le_bytes()).collect())
    }

    /// Loads a stored page.
    pub fn load_page(&mut self, key: &[u8], page: u64, value: &[u8]) -> Result<()> {
        if value.len() as u64 != PAGE_BLOCKS * 4 {
            return Err(Error::Store(format!(
                "corrupt checksum page under key {key:02x?}: {} bytes",
                value.len()
            )));
        }
        let sums: Box<[u32]> = value
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let i = page as usize;
        if i > (1 << 40) / PAGE_BLOCKS as usize {
            return Err(Error::Store(format!(
                "checksum page {page} under key {key:02x?} lies past any physical block"
            )));
        }
        self.page_mut(page).copy_from_slice(&sums);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_through_pages() {
        let mut s = Sums::default();
        s.set(Pba::new(250), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(s.dirty.iter().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(s.get(Pba::new(257)), 8);
        s.copy(Pba::new(250), Pba::new(1000), 8);
        let mut out = Vec::new();
        s.extend_into(Pba::new(1000), 8, &mut out);
        assert_eq!(out, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        let mut t = Sums::default();
        for page in [0, 1, 3] {
            let v = s.encode_page(page).unwrap();
            t.load_page(b"c", page, &v).unwrap();
        }
        assert_eq!(t.get(Pba::new(255)), 6);
        assert_eq!(t.get(Pba::new(1007)), 8);
        assert!(t.load_page(b"c", 9, &[0; 7]).is_err());
        assert_eq!(of_block(&[0u8; 4096]), crc32c::crc32c(&[0u8; 4096]));
    }
}
