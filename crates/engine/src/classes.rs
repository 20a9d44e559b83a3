//! Free space by redundancy class (issue 14, decision 028).
//!
//! A pool on devices hands out blocks of each class from the stores of that
//! class: the virtual space of physical blocks (`Pba`) is a row of store
//! windows, each a region of one class, with holes between them where a
//! store is smaller than its window. Each class has its own `Allocator`
//! over its regions; a freed run goes back to the class of the region it
//! lies in. The single-file pool is one region of class `none` from block 0.

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
        for (class, runs) in by_class {
            space
                .classes
                .insert(class, Allocator::from_regions(&runs, used)?);
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
    /// class has fewer free.
    pub fn allocate(&mut self, class: Redundancy, count: u64) -> Option<Vec<Run>> {
        self.classes.get_mut(&class)?.allocate(count)
    }

    /// Returns a run to its class (a run may span adjacent regions).
    pub fn release(&mut self, run: Run) {
        let (mut pos, end) = (run.start.get(), run.end().get());
        while pos < end {
            let (start, len, class) = self
                .region_of(pos)
                .unwrap_or_else(|| panic!("released block {pos} lies in no region"));
            let upto = (start + len).min(end);
            let piece = Run::new(pos, upto - pos);
            match self.frozen.get_mut(&start) {
                Some(held) => held.push(piece),
                None => self
                    .classes
                    .get_mut(&class)
                    .expect("a region's class has an allocator")
                    .release(piece),
            }
            pos = upto;
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
            self.release(run);
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
}
