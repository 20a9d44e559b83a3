//! Where blocks live in a multi-device pool (issue 14, decision 027): stores
//! made of segments on distinct devices, and the virtual physical block
//! (`Pba`) that names a block of a store without naming a device.
//!
//! A store of class `c` holds `segment_blocks × c.data_shards()` blocks and
//! owns a fixed window of `WINDOW_SEGMENTS × segment_blocks` virtual blocks
//! (`Pba = store × window + block`), so finding a block's store is one
//! division, and moving a segment (rebuild, evacuation, levelling) changes
//! one entry of its store, never a `Pba` the maps hold.
//!
//! In a store, block `b` is in row `b / K` and column `b % K` (K = the
//! class's data shards; 1 for mirrors): its copies (a mirror) or its data
//! shard (parity) sit at the same row of the store's segments, so a parity
//! stripe is one row.

use crate::label::LABEL_BYTES;
use crate::redundancy::{Redundancy, PARITY_DATA_MAX};
use crate::types::{Error, Pba, Result, BLOCK_SIZE};
use std::collections::BTreeSet;

/// Segments' worth of virtual blocks each store's window spans: the widest
/// store's data.
pub const WINDOW_SEGMENTS: u64 = PARITY_DATA_MAX as u64;

/// A segment: its device (index in the pool's device table) and its number
/// on that device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentRef {
    pub device: u32,
    pub segment: u64,
}

/// One store: its class and its segments, one per device of the class, in
/// column order (data shards first, then parity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub class: Redundancy,
    pub segments: Vec<SegmentRef>,
}

/// A block's place on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub device: u32,
    pub offset: u64,
}

/// The pool's stores over its devices, and the free segments of each
/// device.
#[derive(Debug, Clone)]
pub struct Layout {
    segment_bytes: u64,
    stores: Vec<Option<Store>>,
    free: Vec<BTreeSet<u64>>,
    /// The segment the last `move_segment` let go of.
    last_freed: Option<SegmentRef>,
}

impl Layout {
    /// An empty layout over devices of `segments[i]` segments each.
    pub fn new(segment_bytes: u64, segments: &[u64]) -> Layout {
        assert!(segment_bytes > 0 && segment_bytes.is_multiple_of(BLOCK_SIZE));
        Layout {
            segment_bytes,
            stores: Vec::new(),
            free: segments.iter().map(|&n| (0..n).collect()).collect(),
            last_freed: None,
        }
    }

    fn segment_blocks(&self) -> u64 {
        self.segment_bytes / BLOCK_SIZE
    }

    fn window(&self) -> u64 {
        WINDOW_SEGMENTS * self.segment_blocks()
    }

    /// Free segments of device `device`.
    pub fn free_segments(&self, device: u32) -> usize {
        self.free[device as usize].len()
    }

    /// Adds a device of `segments` free segments; answers its index.
    pub fn add_device(&mut self, segments: u64) -> u32 {
        self.free.push((0..segments).collect());
        (self.free.len() - 1) as u32
    }

    /// Moves column `column` of store `n` to a free segment of `device`,
    /// keeping the old segment out of the free set: it still holds what
    /// the committed layout points at until the new layout is committed
    /// (`free_segment` then). Answers (new, old).
    pub fn relocate(
        &mut self,
        n: usize,
        column: usize,
        device: u32,
    ) -> Result<(SegmentRef, SegmentRef)> {
        let new = self.move_segment(n, column, device)?;
        // move_segment freed the old one: take it back out.
        let old = self.last_freed.take().expect("move_segment sets it");
        self.free[old.device as usize].remove(&old.segment);
        Ok((new, old))
    }

    /// Takes a free segment of `device` for a move (`swap_segment` puts it
    /// in a store; `free_segment` gives it back if the move is abandoned).
    pub fn take_segment(&mut self, device: u32) -> Result<SegmentRef> {
        let segment = self
            .free
            .get_mut(device as usize)
            .and_then(BTreeSet::pop_first)
            .ok_or_else(|| Error::NoSpace(format!("device {device} has no free segment")))?;
        Ok(SegmentRef { device, segment })
    }

    /// Puts `new` (from `take_segment`) in column `column` of store `n`;
    /// answers the segment it replaces, which stays out of the free set
    /// until `free_segment` (after the new layout is committed).
    pub fn swap_segment(&mut self, n: usize, column: usize, new: SegmentRef) -> Result<SegmentRef> {
        let store = self
            .stores
            .get_mut(n)
            .and_then(Option::as_mut)
            .ok_or_else(|| Error::InvalidArgument(format!("store {n} does not exist")))?;
        if store
            .segments
            .iter()
            .enumerate()
            .any(|(c, r)| c != column && r.device == new.device)
        {
            return Err(Error::InvalidArgument(format!(
                "store {n} already has a segment on device {}",
                new.device
            )));
        }
        Ok(std::mem::replace(&mut store.segments[column], new))
    }

    /// A device leaves the pool: no store may be placed on it.
    pub fn retire_device(&mut self, device: u32) {
        if let Some(free) = self.free.get_mut(device as usize) {
            free.clear();
        }
    }

    /// Where row `row` of a segment is on its device.
    pub fn place_of(&self, r: SegmentRef, row: u64) -> Place {
        self.place(r, row)
    }

    /// The first block of store `n`'s window, and how many blocks it holds.
    pub fn window_of(&self, n: usize) -> (u64, u64) {
        let start = n as u64 * self.window();
        (
            start,
            self.store(n).map_or(0, |s| self.store_blocks(s.class)),
        )
    }

    /// A segment no committed layout points at any more is free again.
    pub fn free_segment(&mut self, r: SegmentRef) {
        self.free[r.device as usize].insert(r.segment);
    }

    /// Segments of `device` in stores: (store, column) pairs.
    pub fn segments_on(&self, device: u32) -> Vec<(usize, usize)> {
        self.stores()
            .flat_map(|(n, s)| {
                s.segments
                    .iter()
                    .enumerate()
                    .filter(move |(_, r)| r.device == device)
                    .map(move |(c, _)| (n, c))
            })
            .collect()
    }

    /// Every store, by number.
    pub fn stores(&self) -> impl Iterator<Item = (usize, &Store)> {
        self.stores
            .iter()
            .enumerate()
            .filter_map(|(n, s)| s.as_ref().map(|s| (n, s)))
    }

    /// Blocks of data one store of `class` holds.
    pub fn store_blocks(&self, class: Redundancy) -> u64 {
        self.segment_blocks() * class.data_shards() as u64
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Devices the layout places segments on.
    pub fn devices(&self) -> usize {
        self.free.len()
    }

    /// Segments of `device` in use by stores.
    pub fn used_segments(&self, device: u32) -> usize {
        self.stores()
            .map(|(_, s)| s.segments.iter().filter(|r| r.device == device).count())
            .sum()
    }

    /// Puts back a store read from the metadata: its segments must be
    /// free (each used once) and on distinct devices.
    pub fn restore_store(&mut self, n: usize, store: Store) -> Result<()> {
        let mut seen = BTreeSet::new();
        for r in &store.segments {
            if !seen.insert(r.device) {
                return Err(Error::Store(format!(
                    "store {n} has two segments on device {}",
                    r.device
                )));
            }
            let free = self.free.get(r.device as usize).ok_or_else(|| {
                Error::Store(format!("store {n} uses unknown device {}", r.device))
            })?;
            if !free.contains(&r.segment) {
                return Err(Error::Store(format!(
                    "store {n} uses segment {} of device {}, which is past its end or used twice",
                    r.segment, r.device
                )));
            }
        }
        if store.segments.len() != store.class.devices() {
            return Err(Error::Store(format!(
                "store {n} of class {} has {} segments",
                store.class,
                store.segments.len()
            )));
        }
        if self.stores.len() <= n {
            self.stores.resize(n + 1, None);
        }
        if self.stores[n].is_some() {
            return Err(Error::Store(format!("store {n} is recorded twice")));
        }
        for r in &store.segments {
            self.free[r.device as usize].remove(&r.segment);
        }
        self.stores[n] = Some(store);
        Ok(())
    }

    pub fn store(&self, n: usize) -> Option<&Store> {
        self.stores.get(n).and_then(Option::as_ref)
    }

    /// The first block of store `n` and how many it holds.
    pub fn extent_of(&self, n: usize) -> Option<(Pba, u64)> {
        let s = self.store(n)?;
        let blocks = self.segment_blocks() * s.class.data_shards() as u64;
        Some((Pba::new(n as u64 * self.window()), blocks))
    }

    /// Makes a store of `class` from a free segment of each of the
    /// `class.devices()` devices with the most free segments (levelling as
    /// it goes); returns its number.
    pub fn add_store(&mut self, class: Redundancy) -> Result<usize> {
        self.add_store_avoiding(class, |_| false)
    }

    /// `add_store`, on no device for which `avoid` is true (faulted ones).
    pub fn add_store_avoiding(
        &mut self,
        class: Redundancy,
        avoid: impl Fn(u32) -> bool,
    ) -> Result<usize> {
        self.add_store_ranked(class, |d| (!avoid(d)).then_some(0))
    }

    /// `add_store` over the devices `rank` gives a rank (None: never),
    /// lower ranks first, then most free segments.
    pub fn add_store_ranked(
        &mut self,
        class: Redundancy,
        rank: impl Fn(u32) -> Option<u8>,
    ) -> Result<usize> {
        let want = class.devices();
        let mut candidates: Vec<(u8, u32)> = (0..self.free.len() as u32)
            .filter(|&d| !self.free[d as usize].is_empty())
            .filter_map(|d| rank(d).map(|r| (r, d)))
            .collect();
        if candidates.len() < want {
            return Err(Error::NoSpace(format!(
                "a {class} store needs free segments on {want} devices; {} have any",
                candidates.len()
            )));
        }
        // Most free first; the lower index breaks ties, so the choice is
        // deterministic.
        candidates.sort_by_key(|&(r, d)| (r, std::cmp::Reverse(self.free[d as usize].len()), d));
        let candidates: Vec<u32> = candidates.into_iter().map(|(_, d)| d).collect();
        let segments = candidates[..want]
            .iter()
            .map(|&device| {
                let free = &mut self.free[device as usize];
                let segment = free.pop_first().expect("a candidate has a free segment");
                SegmentRef { device, segment }
            })
            .collect();
        let n = match self.stores.iter().position(Option::is_none) {
            Some(hole) => hole,
            None => {
                self.stores.push(None);
                self.stores.len() - 1
            }
        };
        self.stores[n] = Some(Store { class, segments });
        Ok(n)
    }

    /// Removes store `n` (its blocks all freed), returning its segments.
    pub fn remove_store(&mut self, n: usize) -> Option<Store> {
        let s = self.stores.get_mut(n)?.take()?;
        for r in &s.segments {
            self.free[r.device as usize].insert(r.segment);
        }
        Some(s)
    }

    /// Replaces the segment in `column` of store `n` with a free segment of
    /// `device` (a rebuild's or an evacuation's remap, after the copy);
    /// frees the old one. The store's devices stay distinct.
    pub fn move_segment(&mut self, n: usize, column: usize, device: u32) -> Result<SegmentRef> {
        let store = self
            .stores
            .get(n)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::InvalidArgument(format!("store {n} does not exist")))?;
        if store
            .segments
            .iter()
            .enumerate()
            .any(|(c, r)| c != column && r.device == device)
        {
            return Err(Error::InvalidArgument(format!(
                "store {n} already has a segment on device {device}"
            )));
        }
        let segment = self
            .free
            .get_mut(device as usize)
            .and_then(BTreeSet::pop_first)
            .ok_or_else(|| Error::NoSpace(format!("device {device} has no free segment")))?;
        let store = self.stores[n].as_mut().expect("checked above");
        let new = SegmentRef { device, segment };
        let old = std::mem::replace(&mut store.segments[column], new);
        self.free[old.device as usize].insert(old.segment);
        self.last_freed = Some(old);
        Ok(new)
    }

    /// Which store, and which block of it, `pba` names.
    /// The store holding `pba`, and the block's index in it.
    pub fn store_at(&self, pba: Pba) -> Result<(&Store, u64)> {
        self.find(pba)
    }

    fn find(&self, pba: Pba) -> Result<(&Store, u64)> {
        let (n, block) = (pba.get() / self.window(), pba.get() % self.window());
        let store = self
            .stores
            .get(n as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::OutOfRange(format!("block {} is in no store", pba.get())))?;
        if block >= self.segment_blocks() * store.class.data_shards() as u64 {
            return Err(Error::OutOfRange(format!(
                "block {} is past the end of store {n}",
                pba.get()
            )));
        }
        Ok((store, block))
    }

    /// The class of `pba`'s store, and the block's number in it.
    pub fn store_of(&self, pba: Pba) -> Result<(Redundancy, u64)> {
        let (store, block) = self.find(pba)?;
        Ok((store.class, block))
    }

    /// Where the last store's window ends, in virtual blocks.
    pub fn end_blocks(&self) -> u64 {
        self.stores.len() as u64 * self.window()
    }

    fn place(&self, r: SegmentRef, row: u64) -> Place {
        Place {
            device: r.device,
            offset: LABEL_BYTES + r.segment * self.segment_bytes + row * BLOCK_SIZE,
        }
    }

    /// Where `pba`'s data is: every copy for a mirror (first the first
    /// column), its data shard for parity.
    pub fn copies(&self, pba: Pba) -> Result<Vec<Place>> {
        let (store, block) = self.find(pba)?;
        Ok(match store.class {
            Redundancy::Parity { data, .. } => {
                let k = u64::from(data);
                vec![self.place(store.segments[(block % k) as usize], block / k)]
            }
            _ => store
                .segments
                .iter()
                .map(|&r| self.place(r, block))
                .collect(),
        })
    }

    /// For a block of a parity store: its stripe, every column's place in
    /// order (data, then parity), and the block's column.
    pub fn stripe(&self, pba: Pba) -> Result<(Vec<Place>, usize)> {
        let (store, block) = self.find(pba)?;
        let Redundancy::Parity { data, .. } = store.class else {
            return Err(Error::InvalidArgument(format!(
                "block {} is in a {} store, not a parity one",
                pba.get(),
                store.class
            )));
        };
        let k = u64::from(data);
        let row = block / k;
        let places = store.segments.iter().map(|&r| self.place(r, row)).collect();
        Ok((places, (block % k) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SEG: u64 = 1 << 20; // 256 blocks

    #[test]
    fn mirror_copies_sit_on_distinct_devices_at_the_same_row() {
        let mut l = Layout::new(SEG, &[4, 4, 4]);
        let n = l.add_store(Redundancy::Mirror).unwrap();
        let (start, blocks) = l.extent_of(n).unwrap();
        assert_eq!(blocks, 256);
        let c = l.copies(start + crate::types::BlockCount::new(5)).unwrap();
        assert_eq!(c.len(), 2);
        assert_ne!(c[0].device, c[1].device);
        assert_eq!(c[0].offset, LABEL_BYTES + 5 * BLOCK_SIZE);
        assert!(l
            .copies(start + crate::types::BlockCount::new(256))
            .is_err());
    }

    #[test]
    fn stores_level_across_devices_and_refuse_without_enough() {
        let mut l = Layout::new(SEG, &[3, 3, 3, 1]);
        for _ in 0..4 {
            l.add_store(Redundancy::Mirror).unwrap();
        }
        let free: Vec<usize> = (0..4).map(|d| l.free_segments(d)).collect();
        assert_eq!(free.iter().sum::<usize>(), 2);
        assert!(free.iter().all(|&f| f <= 1), "levelled: {free:?}");
        let e = l.add_store(Redundancy::Mirror3).unwrap_err().to_string();
        assert!(e.contains("needs free segments on 3 devices"), "{e}");
    }

    #[test]
    fn parity_stripes_are_rows_and_consecutive_blocks_take_the_columns_in_turn() {
        let mut l = Layout::new(SEG, &[2; 6]);
        let p: Redundancy = "parity:4+2".parse().unwrap();
        let n = l.add_store(p).unwrap();
        let (start, blocks) = l.extent_of(n).unwrap();
        assert_eq!(blocks, 4 * 256);
        let mut seen = HashSet::new();
        for b in 0..blocks {
            let pba = start + crate::types::BlockCount::new(b);
            let c = l.copies(pba).unwrap();
            assert_eq!(c.len(), 1);
            assert!(
                seen.insert((c[0].device, c[0].offset)),
                "block {b} shares a place"
            );
            let (stripe, col) = l.stripe(pba).unwrap();
            assert_eq!(stripe.len(), 6);
            assert_eq!(stripe[col], c[0]);
            let devices: HashSet<u32> = stripe.iter().map(|p| p.device).collect();
            assert_eq!(devices.len(), 6, "one column per device");
            let row = |p: &Place| (p.offset - LABEL_BYTES) % SEG;
            assert!(
                stripe.iter().all(|p| row(p) == (b / 4) * BLOCK_SIZE),
                "one row"
            );
        }
        let m = l.add_store(Redundancy::Mirror).unwrap();
        let (ms, _) = l.extent_of(m).unwrap();
        assert!(l.stripe(ms).is_err(), "a mirror has no stripes");
    }

    #[test]
    fn moving_a_segment_is_a_remap_and_keeps_devices_distinct() {
        let mut l = Layout::new(SEG, &[2, 2, 2]);
        let n = l.add_store(Redundancy::Mirror).unwrap();
        let (start, _) = l.extent_of(n).unwrap();
        let before = l.copies(start).unwrap();
        let other = l.store(n).unwrap().segments[0].device;
        let spare = (0..3)
            .find(|d| l.store(n).unwrap().segments.iter().all(|r| r.device != *d))
            .unwrap();
        assert!(
            l.move_segment(n, 1, other).is_err(),
            "two columns on one device"
        );
        let moved = l.move_segment(n, 1, spare).unwrap();
        let after = l.copies(start).unwrap();
        assert_eq!(after[0], before[0]);
        assert_eq!(after[1].device, moved.device);
        assert_eq!(
            l.extent_of(n).unwrap().0,
            start,
            "the block's name did not change"
        );
        let freed: usize = (0..3).map(|d| l.free_segments(d)).sum();
        assert_eq!(freed, 4);
        l.remove_store(n).unwrap();
        assert_eq!((0..3).map(|d| l.free_segments(d)).sum::<usize>(), 6);
        assert!(l.copies(start).is_err());
        assert_eq!(
            l.add_store(Redundancy::None).unwrap(),
            n,
            "a freed number is reused"
        );
    }
}
