//! Free space by redundancy class (issue 14, decision 028).
//!
//! A pool on devices hands out blocks of each class from the stores of that
//! class: the virtual space of physical blocks (`Pba`) is a row of store
//! windows, each a region of one class, with holes between them where a
//! store is smaller than its window. Each class has its own `Allocator`
//! over its regions; a freed run goes back to the class of the region it
//! lies in. The single-file pool is one region of class `none` from block 0.
//!
//! Parity classes hand out whole stripes (decision 030): an allocation
//! takes `ceil(n / K)` stripes, and what the last one has left over is
//! padding, written as zeros with the stripe and held until every block
//! of the stripe is freed. A stripe is written once and never again while
//! any block of it is live: no read-modify-write, no write hole.

use crate::redundancy::Redundancy;
use crate::space::{Allocator, Run};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub struct Space {
    classes: HashMap<Redundancy, Allocator>,
    /// Region start → (blocks, class): every block any allocator owns.
    regions: BTreeMap<u64, (u64, Redundancy)>,
    /// Regions whose free blocks are held back from allocation (a store
    /// being moved): region start → its free runs.
    frozen: BTreeMap<u64, Vec<Run>>,
    /// Parity regions: region start → (K, live blocks of each stripe).
    stripes: BTreeMap<u64, (u64, Vec<u8>)>,
    /// Blocks of live stripes that are not live (padding and blocks freed
    /// while the rest of their stripe lives).
    held: u64,
}

/// Data blocks per stripe of a class (1 for copies).
fn stripe_of(class: Redundancy) -> u64 {
    match class {
        Redundancy::Parity { data, .. } => u64::from(data),
        _ => 1,
    }
}

impl Space {
    /// The single-file pool: `[0, capacity)` of class `none`, minus `used`.
    pub fn single(capacity_blocks: u64, used: &[Run]) -> Result<Space, String> {
        Space::over(&[(Run::new(0, capacity_blocks), Redundancy::None)], used)
    }

    /// Regions (sorted, disjoint) with their classes, minus `used` (sorted,
    /// disjoint), each of which must lie inside one region.
    pub fn over(regions: &[(Run, Redundancy)], used: &[Run]) -> Result<Space, String> {
        let mut space = Space::default();
        let mut by_class: HashMap<Redundancy, Vec<Run>> = HashMap::new();
        for &(run, class) in regions {
            if run.len.get() == 0 {
                continue;
            }
            space
                .regions
                .insert(run.start.get(), (run.len.get(), class));
            by_class.entry(class).or_default().push(run);
        }
        for u in used {
            // A used run may span adjacent regions (runs are merged).
            let mut pos = u.start.get();
            while let Some((start, len, _)) = space.region_of(pos).filter(|_| pos < u.end().get()) {
                pos = start + len;
            }
            if pos < u.end().get() {
                return Err(format!(
                    "used blocks {}+{} lie outside the pool's space",
                    u.start.get(),
                    u.len.get()
                ));
            }
        }
        for (&start, &(len, class)) in &space.regions {
            let k = stripe_of(class);
            if k > 1 {
                space
                    .stripes
                    .insert(start, (k, vec![0; (len / k) as usize]));
            }
        }
        // Count the live blocks of parity stripes; a stripe with any is
        // used whole.
        let mut taken: Vec<Run> = Vec::with_capacity(used.len());
        for u in used {
            let (mut pos, end) = (u.start.get(), u.end().get());
            while pos < end {
                let (start, len, _) = space.region_of(pos).expect("checked above");
                let upto = (start + len).min(end);
                match space.stripes.get_mut(&start) {
                    Some((k, live)) => {
                        let k = *k;
                        for stripe in (pos - start) / k..(upto - start).div_ceil(k) {
                            let (a, b) = (start + stripe * k, start + (stripe + 1) * k);
                            live[stripe as usize] += (b.min(upto) - a.max(pos)) as u8;
                        }
                        let a = start + (pos - start) / k * k;
                        let b = start + (upto - start).div_ceil(k) * k;
                        taken.push(Run::new(a, b - a));
                    }
                    None => taken.push(Run::new(pos, upto - pos)),
                }
                pos = upto;
            }
        }
        let taken = merge_runs(taken);
        for (k, live) in space.stripes.values() {
            space.held += live
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| k - u64::from(n))
                .sum::<u64>();
        }
        for (class, runs) in by_class {
            space
                .classes
                .insert(class, Allocator::from_regions(&runs, &taken)?);
        }
        Ok(space)
    }

    /// The region holding block `pba`: (start, blocks, class).
    fn region_of(&self, pba: u64) -> Option<(u64, u64, Redundancy)> {
        let (&start, &(len, class)) = self.regions.range(..=pba).next_back()?;
        (pba < start + len).then_some((start, len, class))
    }

    /// Where the region holding block `pba` ends.
    pub fn region_end(&self, pba: u64) -> Option<u64> {
        self.region_of(pba).map(|(start, len, _)| start + len)
    }

    /// Takes `count` blocks of `class`; `None` (and nothing taken) when the
    /// class has fewer free. A parity class takes whole stripes: every
    /// run starts a stripe, and the last stripe's unused blocks are held
    /// as padding.
    pub fn allocate(&mut self, class: Redundancy, count: u64) -> Option<Vec<Run>> {
        let k = stripe_of(class);
        let mut runs = self
            .classes
            .get_mut(&class)?
            .allocate(count.div_ceil(k) * k)?;
        if k == 1 {
            return Some(runs);
        }
        for r in &runs {
            let (mut pos, end) = (r.start.get(), r.end().get());
            while pos < end {
                let (start, len, _) = self.region_of(pos).expect("allocated in a region");
                let upto = (start + len).min(end);
                let (_, live) = self.stripes.get_mut(&start).expect("a parity region");
                debug_assert!((pos - start).is_multiple_of(k) && (upto - pos).is_multiple_of(k));
                for stripe in (pos - start) / k..(upto - start) / k {
                    debug_assert_eq!(live[stripe as usize], 0, "a stripe allocated twice");
                    live[stripe as usize] = k as u8;
                }
                pos = upto;
            }
        }
        let pad = count.div_ceil(k) * k - count;
        if pad > 0 {
            let last = runs.last_mut().expect("count > 0");
            last.len = crate::types::BlockCount::new(last.len.get() - pad);
            let end = last.end().get();
            let (start, _, _) = self.region_of(end - 1).expect("allocated in a region");
            let (_, live) = self.stripes.get_mut(&start).expect("a parity region");
            live[((end - 1 - start) / k) as usize] -= pad as u8;
            self.held += pad;
        }
        Some(runs)
    }

    /// Blocks held in live parity stripes without being live themselves.
    pub fn held_blocks(&self) -> u64 {
        self.held
    }

    /// Where the stripe holding `pba` starts, and its data blocks (a block
    /// of a class of copies is its own stripe).
    pub fn stripe_at(&self, pba: u64) -> Option<(u64, u64)> {
        let (start, _, class) = self.region_of(pba)?;
        let k = stripe_of(class);
        Some((start + (pba - start) / k * k, k))
    }

    /// Returns a run of live blocks to its class (a run may span adjacent
    /// regions). In a parity region a stripe is freed when its last live
    /// block is.
    pub fn release(&mut self, run: Run) {
        let (mut pos, end) = (run.start.get(), run.end().get());
        while pos < end {
            let (start, len, _) = self
                .region_of(pos)
                .unwrap_or_else(|| panic!("released block {pos} lies in no region"));
            let upto = (start + len).min(end);
            let Some((k, live)) = self.stripes.get_mut(&start) else {
                self.free_raw(Run::new(pos, upto - pos));
                pos = upto;
                continue;
            };
            let k = *k;
            let mut freed = Vec::new();
            for stripe in (pos - start) / k..(upto - start).div_ceil(k) {
                let (a, b) = (start + stripe * k, start + (stripe + 1) * k);
                let n = (b.min(upto) - a.max(pos)) as u8;
                let left = &mut live[stripe as usize];
                assert!(*left >= n, "double free in the stripe at block {a}");
                *left -= n;
                self.held += u64::from(n);
                if *left == 0 {
                    self.held -= k;
                    freed.push(Run::new(a, k));
                }
            }
            for r in merge_runs(freed) {
                self.free_raw(r);
            }
            pos = upto;
        }
    }

    /// Returns free blocks (within one region) to their allocator, or to
    /// their frozen region's held runs.
    fn free_raw(&mut self, piece: Run) {
        let (start, _, class) = self
            .region_of(piece.start.get())
            .expect("freed blocks lie in a region");
        match self.frozen.get_mut(&start) {
            Some(held) => held.push(piece),
            None => self
                .classes
                .get_mut(&class)
                .expect("a region's class has an allocator")
                .release(piece),
        }
    }

    /// Holds the free blocks of the region starting at `start` back from
    /// allocation (and what is freed there until `thaw`).
    pub fn freeze(&mut self, start: u64) {
        if self.frozen.contains_key(&start) {
            return;
        }
        let Some(&(len, class)) = self.regions.get(&start) else {
            return;
        };
        let alloc = self
            .classes
            .get_mut(&class)
            .expect("a region's class has an allocator");
        let held = alloc.take_free_within(start, start + len);
        self.frozen.insert(start, held);
    }

    /// Gives a frozen region's free blocks back to allocation.
    pub fn thaw(&mut self, start: u64) {
        let Some(held) = self.frozen.remove(&start) else {
            return;
        };
        for run in held {
            self.free_raw(run);
        }
    }

    fn frozen_blocks(&self) -> u64 {
        self.frozen.values().flatten().map(|r| r.len.get()).sum()
    }

    /// Adds a region of new space of `class` (overlapping no other).
    pub fn add_region(&mut self, run: Run, class: Redundancy) {
        let (start, end) = (run.start.get(), run.end().get());
        assert!(
            self.regions
                .range(..end)
                .next_back()
                .is_none_or(|(&s, &(l, _))| s + l <= start),
            "a new region overlaps another"
        );
        self.regions.insert(run.start.get(), (run.len.get(), class));
        let k = stripe_of(class);
        if k > 1 {
            self.stripes
                .insert(start, (k, vec![0; (run.len.get() / k) as usize]));
        }
        self.classes.entry(class).or_default().add_region(run);
    }

    /// Grows the single-file pool's one region to `capacity_blocks`.
    pub fn grow(&mut self, capacity_blocks: u64) {
        assert!(self.regions.len() <= 1, "only a single-file pool grows so");
        self.regions.insert(0, (capacity_blocks, Redundancy::None));
        self.classes
            .entry(Redundancy::None)
            .or_default()
            .grow(capacity_blocks);
    }

    /// The first run of blocks in use (not free) at or after `pos`, within
    /// one region, of at most `max` blocks; None past the last region.
    pub fn next_used(&self, pos: u64, max: u64) -> Option<Run> {
        let mut p = pos;
        loop {
            let (start, len, class) = match self.region_of(p) {
                Some(r) => r,
                None => {
                    let (&s, &(l, c)) = self.regions.range(p..).next()?;
                    (s, l, c)
                }
            };
            let from = p.max(start);
            let alloc = self
                .classes
                .get(&class)
                .expect("a region's class has an allocator");
            let found = match self.frozen.get(&start) {
                // A frozen region: what is not held back is used.
                Some(held) => next_used_among(held, from, start + len, max),
                None => alloc.next_used(from, start + len, max),
            };
            if let Some(run) = found {
                return Some(run);
            }
            p = start + len;
        }
    }

    /// Free blocks, those held back in frozen regions included.
    pub fn free_blocks(&self) -> u64 {
        self.classes
            .values()
            .map(Allocator::free_blocks)
            .sum::<u64>()
            + self.frozen_blocks()
    }

    pub fn free_blocks_of(&self, class: Redundancy) -> u64 {
        self.classes.get(&class).map_or(0, Allocator::free_blocks)
    }

    /// The class of the region holding `pba`.
    pub fn class_at(&self, pba: u64) -> Option<Redundancy> {
        self.region_of(pba).map(|(_, _, c)| c)
    }

    /// Free blocks of each class.
    pub fn free_by_class(&self) -> impl Iterator<Item = (Redundancy, u64)> + '_ {
        self.classes.iter().map(|(&c, a)| (c, a.free_blocks()))
    }

    /// Blocks in every region.
    pub fn capacity_blocks(&self) -> u64 {
        self.classes.values().map(Allocator::capacity_blocks).sum()
    }

    /// Every free run, in order (for invariant checks).
    pub fn free_runs(&self) -> Vec<Run> {
        let mut runs: Vec<Run> = self.classes.values().flat_map(|a| a.free_runs()).collect();
        runs.extend(self.frozen.values().flatten().copied());
        runs.sort_by_key(|r| r.start);
        runs
    }
}

/// Sorts runs and merges those that overlap or touch.
fn merge_runs(mut runs: Vec<Run>) -> Vec<Run> {
    runs.sort_by_key(|r| r.start);
    let mut out: Vec<Run> = Vec::with_capacity(runs.len());
    for r in runs {
        match out.last_mut() {
            Some(l) if l.end() >= r.start => {
                let end = l.end().get().max(r.end().get());
                *l = Run::new(l.start.get(), end - l.start.get());
            }
            _ => out.push(r),
        }
    }
    out
}

/// The first run not in `free` (disjoint runs) at or after `pos`, before
/// `end`, of at most `max` blocks.
fn next_used_among(free: &[Run], pos: u64, end: u64, max: u64) -> Option<Run> {
    let mut p = pos;
    while p < end {
        if let Some(r) = free
            .iter()
            .find(|r| r.start.get() <= p && p < r.end().get())
        {
            p = r.end().get();
            continue;
        }
        let next = free
            .iter()
            .map(|r| r.start.get())
            .filter(|&s| s > p)
            .min()
            .unwrap_or(end);
        return Some(Run::new(p, next.min(end).min(p + max) - p));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_allocate_from_their_own_regions_and_frees_return_there() {
        let m = Redundancy::Mirror;
        let n = Redundancy::None;
        let regions = [
            (Run::new(0, 100), n),
            (Run::new(1000, 50), m),
            (Run::new(2000, 100), n),
        ];
        let mut s = Space::over(&regions, &[Run::new(10, 20), Run::new(1000, 10)]).unwrap();
        assert_eq!(s.capacity_blocks(), 250);
        assert_eq!(s.free_blocks_of(n), 180);
        assert_eq!(s.free_blocks_of(m), 40);
        let runs = s.allocate(m, 40).unwrap();
        assert_eq!(runs, vec![Run::new(1010, 40)]);
        assert!(s.allocate(m, 1).is_none(), "the mirror class is full");
        assert!(s.allocate(Redundancy::Mirror3, 1).is_none());
        let runs = s.allocate(n, 150).unwrap();
        assert!(runs
            .iter()
            .all(|r| r.end().get() <= 100 || r.start.get() >= 2000));
        s.release(Run::new(1020, 5));
        assert_eq!(s.free_blocks_of(m), 5);
        assert_eq!(s.region_of(1022).map(|r| r.2), Some(m));
        assert_eq!(s.region_of(500), None);
        s.add_region(Run::new(3000, 10), m);
        assert_eq!(s.free_blocks_of(m), 15);
        assert_eq!(s.free_blocks(), 30 + 15);
    }

    #[test]
    fn used_runs_are_found_region_by_region() {
        let (m, n) = (Redundancy::Mirror, Redundancy::None);
        let s = Space::over(
            &[(Run::new(0, 100), n), (Run::new(1000, 50), m)],
            &[Run::new(10, 5), Run::new(98, 2), Run::new(1000, 30)],
        )
        .unwrap();
        assert_eq!(s.next_used(0, 64), Some(Run::new(10, 5)));
        assert_eq!(s.next_used(12, 64), Some(Run::new(12, 3)));
        assert_eq!(s.next_used(15, 64), Some(Run::new(98, 2)));
        assert_eq!(s.next_used(100, 64), Some(Run::new(1000, 30)));
        assert_eq!(s.next_used(1000, 8), Some(Run::new(1000, 8)));
        assert_eq!(s.next_used(1030, 64), None);
        assert_eq!(s.next_used(5000, 64), None);
    }

    #[test]
    fn a_run_across_adjacent_regions_is_freed_to_each() {
        let (m, n) = (Redundancy::Mirror, Redundancy::None);
        let mut s = Space::over(
            &[(Run::new(0, 10), n), (Run::new(10, 10), m)],
            &[Run::new(0, 20)],
        )
        .unwrap();
        s.release(Run::new(5, 10));
        assert_eq!((s.free_blocks_of(n), s.free_blocks_of(m)), (5, 5));
    }

    #[test]
    fn a_frozen_region_allocates_nothing_and_keeps_its_frees() {
        let n = Redundancy::None;
        let mut s = Space::over(
            &[(Run::new(0, 10), n), (Run::new(100, 10), n)],
            &[Run::new(0, 4)],
        )
        .unwrap();
        s.freeze(0);
        assert_eq!(s.free_blocks(), 16);
        let got = s.allocate(n, 10).unwrap();
        assert_eq!(got, vec![Run::new(100, 10)]);
        assert!(s.allocate(n, 1).is_none(), "the frozen region holds back 6");
        s.release(Run::new(0, 2));
        assert_eq!(s.next_used(0, 64), Some(Run::new(2, 2)));
        assert_eq!(s.free_blocks(), 8);
        s.thaw(0);
        let again: u64 = s.allocate(n, 8).unwrap().iter().map(|r| r.len.get()).sum();
        assert_eq!(again, 8);
        assert_eq!(s.free_blocks(), 0);
    }

    #[test]
    fn used_blocks_outside_every_region_are_refused() {
        let e = Space::over(&[(Run::new(0, 10), Redundancy::None)], &[Run::new(8, 4)]).unwrap_err();
        assert!(e.contains("outside the pool's space"), "{e}");
        let mut s = Space::single(10, &[]).unwrap();
        s.grow(20);
        assert_eq!(s.free_blocks(), 20);
    }

    #[test]
    fn parity_takes_whole_stripes_and_frees_them_whole() {
        let p = Redundancy::Parity { data: 4, parity: 2 };
        let mut s = Space::over(&[(Run::new(1000, 40), p)], &[]).unwrap();
        // 6 blocks: two stripes, the second padded by 2.
        let a = s.allocate(p, 6).unwrap();
        assert_eq!(a, vec![Run::new(1000, 6)]);
        assert_eq!((s.free_blocks_of(p), s.held_blocks()), (32, 2));
        let b = s.allocate(p, 1).unwrap();
        assert_eq!(b, vec![Run::new(1008, 1)], "a new stripe, not the padding");
        assert_eq!(s.held_blocks(), 5);
        assert_eq!(s.stripe_at(1010), Some((1008, 4)));
        // Freeing part of a stripe frees nothing; its last block frees it.
        s.release(Run::new(1004, 1));
        assert_eq!((s.free_blocks_of(p), s.held_blocks()), (28, 6));
        s.release(Run::new(1005, 1));
        assert_eq!((s.free_blocks_of(p), s.held_blocks()), (32, 3));
        s.release(Run::new(1000, 4));
        s.release(Run::new(1008, 1));
        assert_eq!((s.free_blocks_of(p), s.held_blocks()), (40, 0));
        // Whole stripes come back aligned.
        let c = s.allocate(p, 40).unwrap();
        assert_eq!(c.iter().map(|r| r.len.get()).sum::<u64>(), 40);
        assert!(c.iter().all(|r| (r.start.get() - 1000) % 4 == 0));
    }

    #[test]
    fn parity_stripes_with_live_blocks_are_used_whole_at_open() {
        let p = Redundancy::Parity { data: 3, parity: 1 };
        let n = Redundancy::None;
        let mut s = Space::over(
            &[(Run::new(0, 12), n), (Run::new(12, 12), p)],
            &[Run::new(8, 6), Run::new(19, 1)],
        )
        .unwrap();
        // Stripes [12,15) (2 live) and [18,21) (1 live) are taken.
        assert_eq!(s.free_blocks_of(p), 6);
        assert_eq!(s.held_blocks(), 1 + 2);
        assert_eq!(s.next_used(14, 64), Some(Run::new(14, 1)));
        s.release(Run::new(19, 1));
        assert_eq!((s.free_blocks_of(p), s.held_blocks()), (9, 1));
        // A frozen region keeps a freed stripe until thawed.
        s.freeze(12);
        s.release(Run::new(12, 2));
        assert_eq!(s.free_blocks_of(p), 0);
        s.thaw(12);
        assert_eq!((s.free_blocks_of(p), s.held_blocks()), (12, 0));
    }
}
