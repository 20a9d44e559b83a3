//! Where a LUN's own maps last changed, by epoch: what lets a snapshot
//! difference visit only what changed since its base (decision 024),
//! instead of every extent of the LUN.
//!
//! Every change to a LUN's maps goes through `State::set_head` (writes,
//! zeroing, restores, resizes, range clones) or the clone split's copies;
//! both mark the blocks they touch with the epoch of the change, rounded
//! out to 2 MiB pages. A region marked `c` holds no change after `c`; a
//! region never marked holds none since the pool was opened and loaded,
//! when every region is marked with the newest epoch its versions record
//! (births, and deaths of old versions). Garbage collection drops only
//! versions no snapshot sees and marks nothing: it changes no snapshot's
//! content.
//!
//! Marks are kept as disjoint intervals, so that one change of a huge
//! range (a trim of a whole 64 TiB LUN) is one interval, not millions of
//! pages; random small writes make at most one interval per page.

use std::collections::{BTreeMap, BTreeSet};

/// log2 of the blocks of one page (2 MiB of 4 KiB blocks).
pub const PAGE_SHIFT: u32 = 9;

#[derive(Debug, Default)]
pub struct ChangeIndex {
    /// Page-aligned start block to (end block, epoch of the last change),
    /// disjoint.
    intervals: BTreeMap<u64, (u64, u64)>,
    /// `(epoch, start)` of every interval: those changed after an epoch
    /// are a range.
    by_epoch: BTreeSet<(u64, u64)>,
}

impl ChangeIndex {
    fn insert(&mut self, start: u64, end: u64, epoch: u64) {
        debug_assert!(start < end);
        self.intervals.insert(start, (end, epoch));
        self.by_epoch.insert((epoch, start));
    }

    fn remove(&mut self, start: u64) -> (u64, u64) {
        let (end, epoch) = self.intervals.remove(&start).expect("interval exists");
        self.by_epoch.remove(&(epoch, start));
        (end, epoch)
    }

    /// Records a change of blocks `[lba, lba + len)` at `epoch`. Where a
    /// region already has a newer mark (a split copying versions of the
    /// past, or the load's marks in any order), the newer one stays.
    pub fn mark(&mut self, lba: u64, len: u64, epoch: u64) {
        if len == 0 {
            return;
        }
        let page = 1u64 << PAGE_SHIFT;
        let start = lba & !(page - 1);
        let end = lba
            .saturating_add(len)
            .checked_next_multiple_of(page)
            .unwrap_or(u64::MAX);
        // The intervals overlapping [start, end), in order.
        let first = self
            .intervals
            .range(..start)
            .next_back()
            .filter(|(_, &(e, _))| e > start)
            .map(|(&s, _)| s);
        let mut old: Vec<(u64, u64, u64)> = Vec::new();
        let keys: Vec<u64> = first
            .into_iter()
            .chain(self.intervals.range(start..end).map(|(&s, _)| s))
            .collect();
        for s in keys {
            let (e, ep) = self.remove(s);
            old.push((s, e, ep));
        }
        // The new layout of [min start, max end): the old marks outside
        // [start, end), the newest of the two inside.
        let mut pieces: Vec<(u64, u64, u64)> = Vec::new();
        let mut push = |s: u64, e: u64, ep: u64| {
            if s >= e {
                return;
            }
            match pieces.last_mut() {
                Some(last) if last.1 == s && last.2 == ep => last.1 = e,
                _ => pieces.push((s, e, ep)),
            }
        };
        let mut pos = start;
        for &(s, e, ep) in &old {
            if s < start {
                push(s, start, ep);
            }
            push(pos, s.max(pos).min(end), epoch);
            push(s.max(start), e.min(end), ep.max(epoch));
            pos = e.min(end).max(pos);
            if e > end {
                push(end, e, ep);
            }
        }
        push(pos, end, epoch);
        pieces.sort_unstable();
        for (s, e, ep) in pieces {
            self.insert(s, e, ep);
        }
    }

    /// Block ranges changed after `epoch`, in order (page-aligned).
    pub fn ranges_after(&self, epoch: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self
            .by_epoch
            .range((epoch.saturating_add(1), 0)..)
            .map(|&(_, s)| (s, self.intervals[&s].0))
            .collect();
        out.sort_unstable();
        out
    }

    /// Intervals kept (for tests and memory accounting).
    #[cfg(test)]
    pub fn intervals(&self) -> usize {
        self.intervals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoch of every page of [0, pages) as a plain vector.
    fn pages(c: &ChangeIndex, n: u64) -> Vec<u64> {
        let mut v = vec![0; n as usize];
        for (&s, &(e, ep)) in &c.intervals {
            for p in (s >> PAGE_SHIFT)..(e >> PAGE_SHIFT).min(n) {
                assert_eq!(v[p as usize], 0, "intervals overlap at page {p}");
                v[p as usize] = ep;
            }
        }
        v
    }

    #[test]
    fn ranges_after_an_epoch() {
        let mut c = ChangeIndex::default();
        c.mark(0, 1, 5);
        c.mark(600, 1000, 7); // pages 1 to 3
        c.mark(10_000, 1, 3);
        assert_eq!(c.ranges_after(4), vec![(0, 512), (512, 2048)]);
        assert_eq!(c.ranges_after(7), Vec::<(u64, u64)>::new());
        // A later change moves the region; an older one does not.
        c.mark(10_000, 1, 9);
        c.mark(0, 1, 2);
        assert_eq!(c.ranges_after(7), vec![(9728, 10_240)]);
        // One huge change is one interval.
        c.mark(0, u64::MAX / 2, 11);
        assert_eq!(c.intervals(), 1);
        assert_eq!(c.ranges_after(10).len(), 1);
    }

    /// Random marks agree with a page-by-page model keeping the newest.
    #[test]
    fn agrees_with_a_model_of_pages() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..200 {
            let n = 64;
            let mut c = ChangeIndex::default();
            let mut model = vec![0u64; n as usize];
            for _ in 0..40 {
                let lba = rand(n * 512);
                let big = rand(4) == 0;
                let len = 1 + rand(if big { n * 512 } else { 2048 });
                let epoch = 1 + rand(50);
                c.mark(lba, len, epoch);
                let last = ((lba + len - 1) >> PAGE_SHIFT).min(n - 1);
                for p in (lba >> PAGE_SHIFT)..=last {
                    model[p as usize] = model[p as usize].max(epoch);
                }
                assert_eq!(pages(&c, n), model);
                let after = rand(50);
                let want: Vec<u64> = (0..n).filter(|&p| model[p as usize] > after).collect();
                let got: Vec<u64> = c
                    .ranges_after(after)
                    .into_iter()
                    .flat_map(|(s, e)| (s >> PAGE_SHIFT)..(e >> PAGE_SHIFT).min(n))
                    .collect();
                assert_eq!(got, want);
            }
        }
    }
}
