//! Physical space: which blocks are free, and which are shared.
//!
//! Nothing here is persisted: on open, the allocator is rebuilt as the
//! complement of what the committed maps reference, so space allocated but
//! never committed is free again after a crash.

use crate::types::{BlockCount, Pba};
use std::collections::{BTreeMap, BTreeSet};

/// A run of physical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    pub start: Pba,
    pub len: BlockCount,
}

impl Run {
    pub fn new(start: u64, len: u64) -> Run {
        Run {
            start: Pba::new(start),
            len: BlockCount::new(len),
        }
    }

    /// `len` blocks from `start`.
    pub fn at(start: Pba, len: u64) -> Run {
        Run {
            start,
            len: BlockCount::new(len),
        }
    }

    pub fn end(self) -> Pba {
        self.start + self.len
    }
}

/// Free physical blocks as extents, allocated next-fit from a cursor so that
/// sequential writes land on contiguous blocks and their map extents merge.
#[derive(Debug, Default)]
pub struct Allocator {
    free: BTreeMap<u64, u64>,
    free_blocks: u64,
    /// Blocks in the regions.
    capacity_blocks: u64,
    /// The end of the last region: no block at or past it is ours.
    limit: u64,
    cursor: u64,
}

impl Allocator {
    /// An allocator whose free space is `[0, capacity)` minus `used`
    /// (runs sorted by start and not overlapping).
    #[cfg(test)]
    pub fn from_used(capacity_blocks: u64, used: &[Run]) -> Allocator {
        match Allocator::from_regions(&[Run::new(0, capacity_blocks)], used) {
            Ok(a) => a,
            Err(why) => panic!("{why}"),
        }
    }

    /// An allocator whose free space is `regions` (sorted, disjoint) minus
    /// `used` (sorted, disjoint; runs outside every region are another
    /// allocator's and ignored).
    pub fn from_regions(regions: &[Run], used: &[Run]) -> Result<Allocator, String> {
        let mut alloc = Allocator::default();
        let mut last_end = 0;
        for region in regions {
            if region.start.get() < last_end {
                return Err(format!(
                    "regions overlap or are unsorted at block {}",
                    region.start.get()
                ));
            }
            last_end = region.end().get();
            alloc.capacity_blocks += region.len.get();
            alloc.limit = last_end;
            let (start, end) = (region.start.get(), region.end().get());
            let mut pos = start;
            let first = used.partition_point(|u| u.end().get() <= start);
            for u in used[first..].iter().take_while(|u| u.start.get() < end) {
                let (s, e) = (u.start.get().max(start), u.end().get().min(end));
                if s < pos {
                    return Err(format!("used runs overlap or are unsorted at block {s}"));
                }
                if s > pos {
                    alloc.insert_free(pos, s - pos);
                }
                pos = e;
            }
            if pos < end {
                alloc.insert_free(pos, end - pos);
            }
        }
        Ok(alloc)
    }

    /// Adds a region of new space (it must overlap no other).
    pub fn add_region(&mut self, run: Run) {
        self.capacity_blocks += run.len.get();
        self.limit = self.limit.max(run.end().get());
        self.release(run);
    }

    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }

    /// Adds `[old capacity, new capacity)` to the free space (an allocator
    /// of one region from block 0, the single-file pool's).
    pub fn grow(&mut self, capacity_blocks: u64) {
        assert!(capacity_blocks >= self.capacity_blocks);
        assert_eq!(
            self.limit, self.capacity_blocks,
            "grow needs one region from 0"
        );
        let old = self.capacity_blocks;
        if capacity_blocks > old {
            self.add_region(Run::new(old, capacity_blocks - old));
        }
    }

    /// Takes `count` blocks, as few runs as the free space allows; `None`
    /// (and nothing taken) when fewer than `count` blocks are free.
    pub fn allocate(&mut self, count: u64) -> Option<Vec<Run>> {
        if count > self.free_blocks {
            return None;
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut needed = count;
        while needed > 0 {
            let (start, len) = match self.free.range(self.cursor..).next() {
                Some((&s, &l)) => (s, l),
                None => {
                    // A free run may contain the cursor, or wrap to the start.
                    let (&s, &l) = self
                        .free
                        .iter()
                        .next()
                        .expect("free_blocks says space is left");
                    (s, l)
                }
            };
            let take = len.min(needed);
            self.free.remove(&start);
            if take < len {
                self.free.insert(start + take, len - take);
            }
            self.free_blocks -= take;
            needed -= take;
            self.cursor = start + take;
            match runs.last_mut() {
                Some(r) if r.end().get() == start => r.len += BlockCount::new(take),
                _ => runs.push(Run::new(start, take)),
            }
        }
        Some(runs)
    }

    /// Returns a run to the free space, merging with its neighbours.
    pub fn release(&mut self, run: Run) {
        if run.len == BlockCount::ZERO {
            return;
        }
        assert!(
            run.end().get() <= self.limit,
            "released run beyond capacity"
        );
        self.insert_free(run.start.get(), run.len.get());
    }

    fn insert_free(&mut self, mut start: u64, mut len: u64) {
        let added = len;
        if let Some((&ps, &pl)) = self.free.range(..=start).next_back() {
            assert!(ps + pl <= start, "double free of physical block {start}");
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some((&ns, &nl)) = self.free.range(start..).next() {
            assert!(start + len <= ns, "double free of physical block {ns}");
            if start + len == ns {
                self.free.remove(&ns);
                len += nl;
            }
        }
        self.free.insert(start, len);
        self.free_blocks += added;
    }

    /// Takes every free run within `[start, end)` out of the free space.
    pub fn take_free_within(&mut self, start: u64, end: u64) -> Vec<Run> {
        let mut taken = Vec::new();
        let keys: Vec<(u64, u64)> = self
            .free
            .range(..end)
            .filter(|(&s, &l)| s + l > start)
            .map(|(&s, &l)| (s, l))
            .collect();
        for (s, l) in keys {
            self.free.remove(&s);
            self.free_blocks -= l;
            let (a, b) = (s.max(start), (s + l).min(end));
            if s < a {
                self.insert_free(s, a - s);
            }
            if b < s + l {
                self.insert_free(b, s + l - b);
            }
            taken.push(Run::new(a, b - a));
        }
        taken
    }

    /// The first run of blocks not free at or after `pos` and before `end`
    /// (at most `max` blocks).
    pub fn next_used(&self, pos: u64, end: u64, max: u64) -> Option<Run> {
        let mut p = pos;
        while p < end {
            if let Some((&s, &l)) = self.free.range(..=p).next_back() {
                if s + l > p {
                    p = s + l;
                    continue;
                }
            }
            let next_free = self.free.range(p..).next().map_or(end, |(&s, _)| s);
            let stop = next_free.min(end).min(p + max);
            return Some(Run::new(p, stop - p));
        }
        None
    }

    /// Free runs in order (for invariant checks).
    pub fn free_runs(&self) -> Vec<Run> {
        self.free
            .iter()
            .map(|(&start, &len)| Run::new(start, len))
            .collect()
    }
}

/// Reference counts of physical blocks referenced more than once (by a
/// restored LUN and its snapshot, or by range clones). A block absent from
/// this map and in use is referenced exactly once.
#[derive(Debug, Default)]
pub struct RefCounts {
    /// start -> (len, refs), refs >= 2.
    shared: BTreeMap<u64, (u64, u32)>,
    /// Keys changed since the last commit.
    pub dirty: BTreeSet<u64>,
    /// Blocks that stopped being shared since the last commit began, and
    /// those a commit in progress records. Until that commit is durable they
    /// still count as shared: a crash would bring the other reference back,
    /// so writing them in place would change what it reads.
    unshared: RunSet,
    committing_unshared: RunSet,
}

/// Disjoint runs of blocks, merged on insert.
#[derive(Debug, Default)]
struct RunSet(BTreeMap<u64, u64>);

impl RunSet {
    fn insert(&mut self, mut start: u64, mut len: u64) {
        let mut end = start + len;
        if let Some((&s, &l)) = self.0.range(..=start).next_back() {
            if s + l >= start {
                start = s;
                end = end.max(s + l);
                self.0.remove(&s);
            }
        }
        let later: Vec<(u64, u64)> = self.0.range(start..=end).map(|(&s, &l)| (s, l)).collect();
        for (s, l) in later {
            end = end.max(s + l);
            self.0.remove(&s);
        }
        len = end - start;
        self.0.insert(start, len);
    }

    fn overlaps(&self, start: u64, len: u64) -> bool {
        self.0
            .range(..start + len)
            .next_back()
            .is_some_and(|(&s, &l)| s + l > start)
    }
}

impl RefCounts {
    pub fn load(&mut self, start: u64, len: u64, refs: u32) {
        assert!(
            refs >= 2 && len > 0,
            "stored refcount entry at {start} is malformed"
        );
        self.shared.insert(start, (len, refs));
    }

    pub fn get(&self, start: u64) -> Option<(u64, u32)> {
        self.shared.get(&start).copied()
    }

    /// Every shared run with its reference count.
    pub fn entries(&self) -> impl Iterator<Item = (Run, u32)> + '_ {
        self.shared.iter().map(|(&s, &(l, r))| (Run::new(s, l), r))
    }

    /// A commit begins: the blocks unshared so far are what it records.
    pub fn begin_commit(&mut self) {
        let taken = std::mem::take(&mut self.unshared);
        for (s, l) in taken.0 {
            self.committing_unshared.insert(s, l);
        }
    }

    /// The commit is durable: what it unshared may be written in place.
    pub fn end_commit(&mut self) {
        self.committing_unshared = RunSet::default();
    }

    /// True when any block of the run is referenced more than once, or was
    /// until a commit that is not yet durable.
    pub fn any_shared(&self, run: Run) -> bool {
        let (start, len) = (run.start.get(), run.len.get());
        if self.unshared.overlaps(start, len) || self.committing_unshared.overlaps(start, len) {
            return true;
        }
        if let Some((&s, &(l, _))) = self.shared.range(..=start).next_back() {
            if s + l > start {
                return true;
            }
        }
        self.shared.range(start..start + len).next().is_some()
    }

    fn split_at(&mut self, at: u64) {
        if let Some((&s, &(l, r))) = self.shared.range(..at).next_back() {
            if s + l > at {
                self.shared.insert(s, (at - s, r));
                self.shared.insert(at, (s + l - at, r));
                self.dirty.insert(s);
                self.dirty.insert(at);
            }
        }
    }

    /// How many blocks of the run have at most `count` references.
    pub fn blocks_with_refs_at_most(&self, run: Run, count: u32) -> u64 {
        let (start, len) = (run.start.get(), run.len.get());
        let end = start + len;
        let first = self
            .shared
            .range(..=start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(start);
        let over: u64 = self
            .shared
            .range(first..end)
            .filter(|(_, &(_, r))| r > count)
            .map(|(&s, &(l, _))| (s + l).min(end).saturating_sub(s.max(start)))
            .sum();
        len - over
    }

    /// Adds one reference to every block of the run (each must be in use).
    pub fn incref(&mut self, run: Run) {
        let (start, end) = (run.start.get(), run.end().get());
        self.split_at(start);
        self.split_at(end);
        let mut pos = start;
        let covered: Vec<(u64, u64)> = self
            .shared
            .range(start..end)
            .map(|(&s, &(l, _))| (s, l))
            .collect();
        for (s, l) in covered {
            if s > pos {
                self.shared.insert(pos, (s - pos, 2));
                self.dirty.insert(pos);
            }
            let entry = self.shared.get_mut(&s).expect("entry just listed");
            entry.1 = entry.1.checked_add(1).expect("reference count overflow");
            self.dirty.insert(s);
            pos = s + l;
        }
        if pos < end {
            self.shared.insert(pos, (end - pos, 2));
            self.dirty.insert(pos);
        }
    }

    /// Drops one reference from every block of the run; returns the runs that
    /// nobody references any more.
    pub fn decref(&mut self, run: Run) -> Vec<Run> {
        let (start, end) = (run.start.get(), run.end().get());
        self.split_at(start);
        self.split_at(end);
        let mut freed = Vec::new();
        let mut pos = start;
        let covered: Vec<(u64, u64, u32)> = self
            .shared
            .range(start..end)
            .map(|(&s, &(l, r))| (s, l, r))
            .collect();
        for (s, l, r) in covered {
            if s > pos {
                freed.push(Run::new(pos, s - pos));
            }
            if r == 2 {
                self.shared.remove(&s);
                self.unshared.insert(s, l);
            } else {
                self.shared.insert(s, (l, r - 1));
            }
            self.dirty.insert(s);
            pos = s + l;
        }
        if pos < end {
            freed.push(Run::new(pos, end - pos));
        }
        freed
    }
}

/// One stretch of a plan laid over newly allocated runs: `len` blocks of
/// the plan's range number `range`, from `offset` blocks into it, placed at
/// physical block `pba`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub range: usize,
    pub offset: u64,
    pub len: u64,
    pub pba: Pba,
}

/// Lays `runs` over ranges of the given lengths, in order: the one layout
/// step shared by writes that redirect and by the clone split. `runs` hold
/// exactly as many blocks as the ranges (what `Allocator::allocate` gave
/// for their sum).
pub fn lay_out(runs: &[Run], lens: impl IntoIterator<Item = u64>) -> Vec<Placed> {
    let mut out = Vec::new();
    let mut runs = runs.iter().copied();
    let mut run = runs.next();
    let mut used = 0;
    for (range, len) in lens.into_iter().enumerate() {
        let mut offset = 0;
        while offset < len {
            let r = run.expect("allocated exactly what the ranges need");
            let take = (r.len.get() - used).min(len - offset);
            out.push(Placed {
                range,
                offset,
                len: take,
                pba: r.start + BlockCount::new(used),
            });
            used += take;
            offset += take;
            if used == r.len.get() {
                run = runs.next();
                used = 0;
            }
        }
    }
    assert!(run.is_none(), "allocated more than the ranges need");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_set_merges() {
        let mut r = RunSet::default();
        r.insert(10, 5);
        r.insert(20, 5);
        assert!(r.overlaps(14, 1) && !r.overlaps(15, 5) && r.overlaps(0, 11));
        r.insert(15, 5);
        assert_eq!(r.0.len(), 1);
        assert_eq!(r.0[&10], 15);
        r.insert(0, 100);
        assert_eq!(r.0.len(), 1);
        assert_eq!(r.0[&0], 100);
    }

    #[test]
    fn unshared_blocks_count_as_shared_until_durable() {
        let mut rc = RefCounts::default();
        rc.incref(Run::new(8, 4));
        assert!(rc.any_shared(Run::new(9, 1)));
        assert!(rc.decref(Run::new(8, 4)).is_empty());
        assert!(
            rc.any_shared(Run::new(9, 1)),
            "the other reference may come back in a crash"
        );
        rc.begin_commit();
        assert!(rc.any_shared(Run::new(9, 1)));
        rc.end_commit();
        assert!(!rc.any_shared(Run::new(9, 1)));
    }

    #[test]
    fn lay_out_fills_ranges_in_order_across_runs() {
        let runs = [Run::new(100, 3), Run::new(10, 4)];
        let placed = lay_out(&runs, [2, 4, 1]);
        let p = |range, offset, len, pba| Placed {
            range,
            offset,
            len,
            pba: Pba::new(pba),
        };
        assert_eq!(
            placed,
            vec![
                p(0, 0, 2, 100),
                p(1, 0, 1, 102),
                p(1, 1, 3, 10),
                p(2, 0, 1, 13)
            ]
        );
    }

    #[test]
    fn allocate_and_release() {
        let mut a = Allocator::from_used(100, &[Run::new(10, 10)]);
        assert_eq!(a.free_blocks(), 90);
        let runs = a.allocate(15).unwrap();
        assert_eq!(runs, vec![Run::new(0, 10), Run::new(20, 5)]);
        assert_eq!(a.free_blocks(), 75);
        assert!(a.allocate(76).is_none());
        assert_eq!(a.free_blocks(), 75);
        a.release(Run::new(0, 10));
        assert_eq!(a.free_blocks(), 85);
        let all = a.allocate(85).unwrap();
        assert_eq!(all.iter().map(|r| r.len.get()).sum::<u64>(), 85);
        assert_eq!(a.free_blocks(), 0);
        a.grow(120);
        assert_eq!(a.free_blocks(), 20);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_loud() {
        let mut a = Allocator::from_used(10, &[]);
        a.release(Run::new(2, 2));
    }

    #[test]
    fn refcounts() {
        let mut r = RefCounts::default();
        r.incref(Run::new(10, 10));
        assert!(r.any_shared(Run::new(15, 1)));
        assert!(!r.any_shared(Run::new(20, 5)));
        r.incref(Run::new(15, 10));
        // 10..15 refs 2, 15..20 refs 3, 20..25 refs 2
        let freed = r.decref(Run::new(5, 25));
        assert_eq!(freed, vec![Run::new(5, 5), Run::new(25, 5)]);
        let freed = r.decref(Run::new(10, 15));
        assert_eq!(freed, vec![Run::new(10, 5), Run::new(20, 5)]);
        let freed = r.decref(Run::new(15, 5));
        assert_eq!(freed, vec![Run::new(15, 5)]);
        assert_eq!(r.entries().count(), 0);
    }
}
