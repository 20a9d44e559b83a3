//! Where a LUN's own maps last changed, by 2 MiB page and epoch: what lets
//! a snapshot difference visit only the pages changed since its base
//! (decision 024), instead of every extent of the LUN.
//!
//! Every change to a LUN's maps goes through `State::set_head` (writes,
//! zeroing, restores, resizes, range clones) or the clone split's copies;
//! both mark the pages they touch with the epoch of the change. A page
//! marked `c` holds no change after `c`; a page never marked holds none
//! since the pool was opened and loaded, when every page is marked with
//! the newest epoch its versions record (births, and deaths of old
//! versions). Garbage collection drops only versions no snapshot sees and
//! marks nothing: it changes no snapshot's content.

use std::collections::{BTreeSet, HashMap};

/// log2 of the blocks of one page (2 MiB of 4 KiB blocks).
pub const PAGE_SHIFT: u32 = 9;

#[derive(Debug, Default)]
pub struct ChangeIndex {
    /// Page to the epoch of its last change.
    by_page: HashMap<u64, u64>,
    /// The same, ordered by epoch: the pages changed after an epoch are a
    /// range.
    by_epoch: BTreeSet<(u64, u64)>,
}

impl ChangeIndex {
    /// Records a change of blocks `[lba, lba + len)` at `epoch`. An older
    /// epoch than a page already has (a split copying versions of the
    /// past) leaves the newer mark.
    pub fn mark(&mut self, lba: u64, len: u64, epoch: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (lba >> PAGE_SHIFT, (lba + len - 1) >> PAGE_SHIFT);
        for page in first..=last {
            match self.by_page.get(&page) {
                Some(&old) if old >= epoch => {}
                old => {
                    if let Some(&old) = old {
                        self.by_epoch.remove(&(old, page));
                    }
                    self.by_page.insert(page, epoch);
                    self.by_epoch.insert((epoch, page));
                }
            }
        }
    }

    /// Pages changed after `epoch`, in page order.
    pub fn pages_after(&self, epoch: u64) -> Vec<u64> {
        let mut pages: Vec<u64> = self
            .by_epoch
            .range((epoch.saturating_add(1), 0)..)
            .map(|&(_, page)| page)
            .collect();
        pages.sort_unstable();
        pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_after_an_epoch() {
        let mut c = ChangeIndex::default();
        c.mark(0, 1, 5);
        c.mark(600, 1000, 7); // pages 1 to 3
        c.mark(10_000, 1, 3);
        assert_eq!(c.pages_after(4), vec![0, 1, 2, 3]);
        assert_eq!(c.pages_after(5), vec![1, 2, 3]);
        assert_eq!(c.pages_after(7), Vec::<u64>::new());
        // A later change moves the page; an older one does not.
        c.mark(10_000, 1, 9);
        c.mark(0, 1, 2);
        assert_eq!(c.pages_after(7), vec![10_000 >> PAGE_SHIFT]);
        assert_eq!(c.pages_after(4), vec![0, 1, 2, 3, 10_000 >> PAGE_SHIFT]);
        assert_eq!(c.pages_after(0).len(), 5);
    }
}
