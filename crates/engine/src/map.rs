//! A LUN's block map, as extents.
//!
//! The *head* map holds the current version of every mapped logical block.
//! The *history* map holds older versions that snapshots still see, each with
//! its lifetime `[birth, death)` in epochs. A snapshot taken at epoch `s` sees
//! a version when `birth <= s < death` (the head's versions never died).
//! Lifetimes of one logical block never overlap, so history ranges are split
//! wherever any version's extent starts or ends, and each range keeps its
//! versions sorted by death: a lookup is one B-tree search and one binary
//! search, whatever the number of snapshots.

pub use crate::history::{HistRange, HistoryMap, Version};
use crate::pages::{PagedMap, Summary};
use crate::types::{BlockCount, Lba, Pba};
use std::collections::BTreeSet;

/// What a version of a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val {
    /// Data in physical block `pba` (for the extent's first block).
    Data(Pba),
    /// Zeros, without space (write-zeroes, or a trim that must hide a parent).
    Zero,
}

impl Val {
    /// The value `by` blocks further into an extent.
    pub fn offset(self, by: u64) -> Val {
        match self {
            Val::Data(p) => Val::Data(p + BlockCount::new(by)),
            Val::Zero => Val::Zero,
        }
    }

    /// Whether `next` continues `self` after `len` blocks (so the extents merge).
    fn continues(self, len: u64, next: Val) -> bool {
        match (self, next) {
            (Val::Data(a), Val::Data(b)) => a + BlockCount::new(len) == b,
            (Val::Zero, Val::Zero) => true,
            _ => false,
        }
    }

    pub const ZERO_CODE: u64 = u64::MAX;

    pub fn encode(self) -> u64 {
        match self {
            Val::Data(p) => p.get(),
            Val::Zero => Self::ZERO_CODE,
        }
    }

    pub fn decode(code: u64) -> Val {
        if code == Self::ZERO_CODE {
            Val::Zero
        } else {
            Val::Data(Pba::new(code))
        }
    }
}

/// One extent of the head map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadExt {
    pub len: u64,
    pub val: Val,
    pub birth: u64,
}

/// A piece cut out of a map: logical start, length, value, birth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub lba: Lba,
    pub len: BlockCount,
    pub val: Val,
    pub birth: u64,
}

/// A head extent's answer for one block, in a page's answer table
/// (`pages::Summary`): bit 0 set; bit 1 zeros; bits 2-11 the blocks left in
/// the extent from this one (at most 1,023); bits 12-53 the physical block.
const SUMMARY_LEFT_MAX: u64 = (1 << 10) - 1;
const SUMMARY_PBA_BITS: u32 = 42;

impl Summary for HeadExt {
    fn summary(&self, delta: u64) -> u64 {
        if delta >= self.len {
            return 0;
        }
        let left = (self.len - delta).min(SUMMARY_LEFT_MAX) << 2;
        match self.val {
            Val::Zero => 1 | 2 | left,
            Val::Data(p) => {
                let p = p.get() + delta;
                if p >> SUMMARY_PBA_BITS != 0 {
                    return 0;
                }
                1 | left | p << 12
            }
        }
    }

    fn reach(&self) -> u64 {
        self.len
    }
}

/// The current version of every mapped block.
#[derive(Debug, Default)]
pub struct HeadMap {
    /// Paged (`pages`): the search every read makes is one load where a
    /// LUN was written at random in small pieces.
    extents: PagedMap<HeadExt>,
    /// Keys changed since the last commit.
    pub dirty: BTreeSet<u64>,
    /// Blocks mapped to data (not zeros), kept as extents change so that
    /// `lun_info` does not walk the map under the state lock.
    data_blocks: u64,
}

fn data_len(e: &HeadExt) -> u64 {
    match e.val {
        Val::Data(_) => e.len,
        Val::Zero => 0,
    }
}

/// Result of looking up one position: how many blocks from it share the
/// answer, and the answer (value at the position and its birth) if mapped.
pub type Lookup = (u64, Option<(Val, u64)>);

impl HeadMap {
    pub fn load(&mut self, lba: u64, ext: HeadExt) {
        assert!(ext.len > 0, "stored head extent at {lba} is empty");
        self.data_blocks += data_len(&ext);
        if let Some(old) = self.extents.insert(lba, ext) {
            self.data_blocks -= data_len(&old);
        }
    }

    /// Blocks mapped to data: what the LUN's current content allocates.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    pub fn get(&self, lba: u64) -> Option<HeadExt> {
        self.extents.get(lba).copied()
    }

    pub fn len(&self) -> usize {
        self.extents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, HeadExt)> + '_ {
        self.extents.iter().map(|(l, &e)| (l, e))
    }

    /// What `pos` maps to, and for how many blocks (up to `end`) that holds.
    pub fn lookup(&self, pos: u64, end: u64) -> Lookup {
        debug_assert!(pos < end);
        if let Some((s, e)) = self.extents.at_or_before(pos) {
            if s + e.len > pos {
                let len = (s + e.len).min(end) - pos;
                return (len, Some((e.val.offset(pos - s), e.birth)));
            }
        }
        let next = self
            .extents
            .at_or_after(pos)
            .map_or(end, |(s, _)| s.min(end));
        (next - pos, None)
    }

    /// What `pos` maps to now, for how many blocks up to `end`: `lookup`
    /// without the birth, answered from the page's table when it has one
    /// (one load where `lookup` makes two dependent ones; decision 022).
    /// The count may stop short of the extent's end; a caller asks again.
    pub fn lookup_current(&self, pos: u64, end: u64) -> (u64, Option<Val>) {
        let word = self.extents.summary_at(pos);
        if word != 0 {
            let left = (word >> 2) & SUMMARY_LEFT_MAX;
            let val = if word & 2 != 0 {
                Val::Zero
            } else {
                Val::Data(Pba::new(word >> 12))
            };
            return (left.min(end - pos), Some(val));
        }
        let (len, hit) = self.lookup(pos, end);
        (len, hit.map(|(v, _)| v))
    }

    fn split_at(&mut self, at: u64) {
        if let Some((s, &e)) = self.extents.before(at) {
            if s + e.len > at {
                let left = at - s;
                self.extents.insert(s, HeadExt { len: left, ..e });
                self.extents.insert(
                    at,
                    HeadExt {
                        len: e.len - left,
                        val: e.val.offset(left),
                        birth: e.birth,
                    },
                );
                self.dirty.insert(s);
                self.dirty.insert(at);
            }
        }
    }

    /// Removes and returns every mapped piece of `[start, start+len)`.
    pub fn cut(&mut self, start: u64, len: u64) -> Vec<Piece> {
        let end = start + len;
        self.split_at(start);
        self.split_at(end);
        let removed = self.extents.remove_range(start, end);
        let mut pieces = Vec::with_capacity(removed.len());
        for (k, e) in removed {
            self.data_blocks -= data_len(&e);
            self.dirty.insert(k);
            pieces.push(Piece {
                lba: Lba::new(k),
                len: BlockCount::new(e.len),
                val: e.val,
                birth: e.birth,
            });
        }
        pieces
    }

    /// Maps `[lba, lba+len)`, which must be unmapped, merging with neighbours
    /// that continue it.
    pub fn insert(&mut self, lba: u64, len: u64, val: Val, birth: u64) {
        assert!(len > 0);
        let (mut start, mut ext) = (lba, HeadExt { len, val, birth });
        if let Some((s, &e)) = self.extents.before(lba) {
            assert!(
                s + e.len <= lba,
                "head insert at {lba} overlaps extent at {s}"
            );
            if s + e.len == lba && e.birth == birth && e.val.continues(e.len, val) {
                start = s;
                ext = HeadExt {
                    len: e.len + len,
                    val: e.val,
                    birth,
                };
            }
        }
        if let Some((n, &e)) = self.extents.at_or_after(lba) {
            assert!(
                lba + len <= n,
                "head insert at {lba} overlaps extent at {n}"
            );
            if lba + len == n && e.birth == birth && val.offset(len) == e.val {
                self.extents.remove(n);
                self.dirty.insert(n);
                ext.len += e.len;
            }
        }
        self.data_blocks += data_len(&HeadExt { len, val, birth });
        self.extents.insert(start, ext);
        self.dirty.insert(start);
    }

    /// Removes everything, returning the pieces.
    pub fn drain(&mut self) -> Vec<Piece> {
        let all = self.extents.take_all();
        self.data_blocks = 0;
        all.into_iter()
            .map(|(k, e)| {
                self.dirty.insert(k);
                Piece {
                    lba: Lba::new(k),
                    len: BlockCount::new(e.len),
                    val: e.val,
                    birth: e.birth,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Random writes (cut, then insert) over a few pages, in pieces of one
    /// block and longer, zeros among them and physical blocks past what an
    /// answer can hold: the answer tables' lookups agree with the entries'.
    #[test]
    fn current_lookups_agree_with_full_lookups() {
        for seed in 0..12 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut h = HeadMap::default();
            let span = 3 * 512 + 100;
            for step in 0..4_000u64 {
                let lba = rng.gen_range(0..span);
                let len = if rng.gen_bool(0.8) {
                    1
                } else {
                    rng.gen_range(1..1_500)
                };
                h.cut(lba, len);
                if rng.gen_bool(0.9) {
                    let val = match rng.gen_range(0..10) {
                        0 => Val::Zero,
                        1 => Val::Data(Pba::new((1 << 42) - 3 + rng.gen_range(0..6))),
                        _ => Val::Data(Pba::new(rng.gen_range(0..1 << 30))),
                    };
                    h.insert(lba, len, val, step);
                }
                for _ in 0..20 {
                    let pos = rng.gen_range(0..span + 50);
                    let end = pos + rng.gen_range(1..2_000);
                    let (n, full) = h.lookup(pos, end);
                    let (m, current) = h.lookup_current(pos, end);
                    assert_eq!(
                        current,
                        full.map(|(v, _)| v),
                        "seed {seed} step {step} pos {pos}"
                    );
                    assert!(m >= 1 && m <= n, "{m} blocks of {n}");
                    if n <= SUMMARY_LEFT_MAX {
                        assert_eq!(m, n, "seed {seed} step {step} pos {pos}");
                    }
                }
            }
        }
    }

    #[test]
    fn head_insert_merges_and_cut_splits() {
        let mut h = HeadMap::default();
        h.insert(0, 4, Val::Data(Pba::new(100)), 1);
        h.insert(4, 4, Val::Data(Pba::new(104)), 1);
        assert_eq!(h.len(), 1, "contiguous extents merge");
        h.insert(8, 2, Val::Data(Pba::new(104)), 1);
        assert_eq!(h.len(), 2, "a non-contiguous physical run does not merge");
        let cut = h.cut(2, 3);
        assert_eq!(
            cut,
            vec![Piece {
                lba: Lba::new(2),
                len: BlockCount::new(3),
                val: Val::Data(Pba::new(102)),
                birth: 1
            }]
        );
        assert_eq!(h.lookup(0, 20), (2, Some((Val::Data(Pba::new(100)), 1))));
        assert_eq!(h.lookup(2, 20), (3, None));
        assert_eq!(h.lookup(5, 20), (3, Some((Val::Data(Pba::new(105)), 1))));
        assert_eq!(h.lookup(10, 20), (10, None));
    }
}
