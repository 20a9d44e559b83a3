//! The history map: old versions of a LUN's blocks that snapshots still
//! see, each range with the versions that lived in it, stamped with the
//! epochs they were born and died in (DESIGN.md's model). The head map,
//! the current versions, is `map.rs`.

use crate::map::{Lookup, Piece, Val};
use crate::types::*;
use std::collections::{BTreeMap, BTreeSet};

/// One old version of a history range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub birth: u64,
    pub death: u64,
    /// Value at the range's first block.
    pub val: Val,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistRange {
    pub len: u64,
    /// Sorted by death; lifetimes do not overlap.
    pub versions: Vec<Version>,
}

/// Old versions that snapshots still see.
#[derive(Debug, Default)]
pub struct HistoryMap {
    ranges: BTreeMap<u64, HistRange>,
    pub dirty: BTreeSet<u64>,
}

impl HistoryMap {
    pub fn load(&mut self, lba: u64, range: HistRange) {
        assert!(
            range.len > 0 && !range.versions.is_empty(),
            "stored history range at {lba} is empty"
        );
        self.ranges.insert(lba, range);
    }

    pub fn get(&self, lba: u64) -> Option<&HistRange> {
        self.ranges.get(&lba)
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &HistRange)> + '_ {
        self.ranges.iter().map(|(&l, r)| (l, r))
    }

    /// The ranges that start at `lba` or after, in order: for walks that
    /// let go of the state lock between chunks.
    pub fn iter_from(&self, lba: u64) -> impl Iterator<Item = (u64, &HistRange)> + '_ {
        self.ranges.range(lba..).map(|(&l, r)| (l, r))
    }

    /// The version of `pos` that epoch `at` sees, and for how many blocks (up
    /// to `end`) that answer holds.
    pub fn lookup(&self, pos: u64, at: u64, end: u64) -> Lookup {
        debug_assert!(pos < end);
        if let Some((&s, r)) = self.ranges.range(..=pos).next_back() {
            if s + r.len > pos {
                let len = (s + r.len).min(end) - pos;
                let i = r.versions.partition_point(|v| v.death <= at);
                return match r.versions.get(i) {
                    Some(v) if v.birth <= at => (len, Some((v.val.offset(pos - s), v.birth))),
                    _ => (len, None),
                };
            }
        }
        let next = self
            .ranges
            .range(pos..end)
            .next()
            .map(|(&s, _)| s)
            .unwrap_or(end);
        (next - pos, None)
    }

    fn split_at(&mut self, at: u64) {
        if let Some((&s, r)) = self.ranges.range(..at).next_back() {
            if s + r.len > at {
                let left = at - s;
                let right = HistRange {
                    len: r.len - left,
                    versions: r
                        .versions
                        .iter()
                        .map(|v| Version {
                            val: v.val.offset(left),
                            ..*v
                        })
                        .collect(),
                };
                self.ranges.get_mut(&s).expect("range just found").len = left;
                self.ranges.insert(at, right);
                self.dirty.insert(s);
                self.dirty.insert(at);
            }
        }
    }

    /// Records that the piece died at `death`. Its death is the newest of any
    /// version of these blocks, so it goes last in every range it covers.
    pub fn push(&mut self, piece: Piece, death: u64) {
        let version = Version {
            birth: piece.birth,
            death,
            val: piece.val,
        };
        self.insert_version(piece.lba.get(), piece.len.get(), version);
    }

    /// The range covering `pos`, or how far the gap at `pos` reaches (up to `end`).
    pub fn range_at(&self, pos: u64, end: u64) -> (u64, Option<&HistRange>) {
        if let Some((&s, r)) = self.ranges.range(..=pos).next_back() {
            if s + r.len > pos {
                return ((s + r.len).min(end) - pos, Some(r));
            }
        }
        let next = self
            .ranges
            .range(pos..end)
            .next()
            .map(|(&s, _)| s)
            .unwrap_or(end);
        (next - pos, None)
    }

    /// Inserts an old version of `[lba, lba+len)` wherever its lifetime
    /// falls (a clone split fills gaps its snapshots saw through the parent).
    /// The lifetime must not overlap any version of those blocks.
    pub fn insert_version(&mut self, lba: u64, len: u64, v: Version) {
        assert!(v.birth < v.death, "a version must live at least one epoch");
        let end = lba + len;
        self.split_at(lba);
        self.split_at(end);
        let keys: Vec<(u64, u64)> = self
            .ranges
            .range(lba..end)
            .map(|(&k, r)| (k, r.len))
            .collect();
        let mut pos = lba;
        let at = |k: u64| Version {
            val: v.val.offset(k - lba),
            ..v
        };
        for (k, rlen) in keys {
            if k > pos {
                self.ranges.insert(
                    pos,
                    HistRange {
                        len: k - pos,
                        versions: vec![at(pos)],
                    },
                );
                self.dirty.insert(pos);
            }
            let r = self.ranges.get_mut(&k).expect("range just listed");
            let i = r.versions.partition_point(|x| x.death <= v.birth);
            assert!(
                r.versions.get(i).is_none_or(|next| v.death <= next.birth),
                "history lifetimes overlap at block {k}"
            );
            r.versions.insert(i, at(k));
            self.dirty.insert(k);
            pos = k + rlen;
        }
        if pos < end {
            self.ranges.insert(
                pos,
                HistRange {
                    len: end - pos,
                    versions: vec![at(pos)],
                },
            );
            self.dirty.insert(pos);
        }
    }

    /// Drops the versions `keep` rejects in ranges starting at or after
    /// `from`, visiting at most `ranges_max` ranges. Returns the dropped
    /// pieces and where to continue (`None` when done).
    pub fn collect_garbage(
        &mut self,
        from: u64,
        ranges_max: usize,
        keep: impl Fn(&Version) -> bool,
    ) -> (Vec<Piece>, Option<u64>) {
        let keys: Vec<u64> = self
            .ranges
            .range(from..)
            .take(ranges_max + 1)
            .map(|(&k, _)| k)
            .collect();
        let next = keys.get(ranges_max).copied();
        let mut dropped = Vec::new();
        for &k in keys.iter().take(ranges_max) {
            let r = self.ranges.get_mut(&k).expect("key just listed");
            let before = r.versions.len();
            let len = r.len;
            r.versions.retain(|v| {
                let kept = keep(v);
                if !kept {
                    dropped.push(Piece {
                        lba: Lba::new(k),
                        len: BlockCount::new(len),
                        val: v.val,
                        birth: v.birth,
                    });
                }
                kept
            });
            if r.versions.len() != before {
                self.dirty.insert(k);
                if r.versions.is_empty() {
                    self.ranges.remove(&k);
                }
            }
        }
        (dropped, next)
    }

    pub fn drain(&mut self) -> Vec<Piece> {
        let all = std::mem::take(&mut self.ranges);
        let mut pieces = Vec::new();
        for (k, r) in all {
            self.dirty.insert(k);
            for v in r.versions {
                pieces.push(Piece {
                    lba: Lba::new(k),
                    len: BlockCount::new(r.len),
                    val: v.val,
                    birth: v.birth,
                });
            }
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lookup_by_epoch() {
        let mut y = HistoryMap::default();
        // block range 0..10 born at 1, died at 3; then 5..15 born 3 died 6.
        y.push(
            Piece {
                lba: Lba::new(0),
                len: BlockCount::new(10),
                val: Val::Data(Pba::new(0)),
                birth: 1,
            },
            3,
        );
        y.push(
            Piece {
                lba: Lba::new(5),
                len: BlockCount::new(10),
                val: Val::Data(Pba::new(50)),
                birth: 3,
            },
            6,
        );
        assert_eq!(y.lookup(0, 2, 100), (5, Some((Val::Data(Pba::new(0)), 1))));
        assert_eq!(y.lookup(6, 2, 100), (4, Some((Val::Data(Pba::new(6)), 1))));
        assert_eq!(y.lookup(6, 4, 100), (4, Some((Val::Data(Pba::new(51)), 3))));
        assert_eq!(y.lookup(6, 6, 100), (4, None));
        assert_eq!(y.lookup(12, 2, 100), (3, None));
        assert_eq!(
            y.lookup(12, 5, 100),
            (3, Some((Val::Data(Pba::new(57)), 3)))
        );
        let (dropped, next) = y.collect_garbage(0, 100, |v| v.birth != 1);
        assert_eq!(next, None);
        assert_eq!(dropped.iter().map(|p| p.len.get()).sum::<u64>(), 10);
        assert_eq!(y.lookup(0, 2, 100), (5, None));
    }

    #[test]
    fn insert_version_fills_a_gap() {
        let mut y = HistoryMap::default();
        y.push(
            Piece {
                lba: Lba::new(0),
                len: BlockCount::new(4),
                val: Val::Data(Pba::new(0)),
                birth: 5,
            },
            8,
        );
        y.insert_version(
            2,
            4,
            Version {
                birth: 1,
                death: 5,
                val: Val::Data(Pba::new(100)),
            },
        );
        assert_eq!(
            y.lookup(2, 3, 100),
            (2, Some((Val::Data(Pba::new(100)), 1)))
        );
        assert_eq!(
            y.lookup(4, 3, 100),
            (2, Some((Val::Data(Pba::new(102)), 1)))
        );
        assert_eq!(y.lookup(2, 6, 100), (2, Some((Val::Data(Pba::new(2)), 5))));
        assert_eq!(y.lookup(0, 3, 100), (2, None));
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn inserting_an_overlapping_version_is_loud() {
        let mut y = HistoryMap::default();
        y.push(
            Piece {
                lba: Lba::new(0),
                len: BlockCount::new(1),
                val: Val::Data(Pba::new(0)),
                birth: 5,
            },
            8,
        );
        y.insert_version(
            0,
            1,
            Version {
                birth: 1,
                death: 6,
                val: Val::Data(Pba::new(1)),
            },
        );
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_lifetimes_are_loud() {
        let mut y = HistoryMap::default();
        y.push(
            Piece {
                lba: Lba::new(0),
                len: BlockCount::new(1),
                val: Val::Data(Pba::new(0)),
                birth: 1,
            },
            5,
        );
        y.push(
            Piece {
                lba: Lba::new(0),
                len: BlockCount::new(1),
                val: Val::Data(Pba::new(1)),
                birth: 4,
            },
            6,
        );
    }
}
