//! An ordered map from logical block to extent, laid out for the read
//! path's one question: which extent starts at or before block `pos`?
//!
//! Keys are grouped by page (`PAGE_BLOCKS` logical blocks): a small B-tree
//! of pages, each holding the keys that fall in it, in order. A page with
//! many keys (a LUN written at random in small pieces) also keeps a dense
//! table, one entry per block, that answers the question with one load.
//!
//! Measured (decision 022): over 262,144 one-block extents, the predecessor
//! search of a `BTreeMap<u64, _>` took 274-336 ns, pages with a binary
//! search 171-197 ns, pages with the dense table 25 ns; with 4 KiB copies
//! between lookups (as a read does), 490, 270 and 100 ns more than the
//! copies alone. A LUN written sequentially has one key per extent, few
//! pages, and no dense tables: nothing is spent where nothing is gained.

use smallvec::SmallVec;
use std::collections::BTreeMap;

/// Logical blocks per page (2 MiB of 4 KiB blocks).
const PAGE_BLOCKS: u64 = 512;
const PAGE_SHIFT: u32 = PAGE_BLOCKS.trailing_zeros();
/// A page with at least this many keys keeps a table of indexes; below it a
/// binary search stays within a cache line or two of offsets.
const INDEX_KEYS_MIN: usize = 32;
/// A page with at least this many keys keeps a table of answers instead
/// (4 KiB, no more than 1.6 times its entries' own size at this count).
const ANSWER_KEYS_MIN: usize = 64;

/// Offsets within a page fit in 16 bits, and `1 + index` in `INDEX_BITS`.
const _: () = assert!(PAGE_BLOCKS <= u16::MAX as u64);
const INDEX_BITS: u32 = 10;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const _: () = assert!(PAGE_BLOCKS <= INDEX_MASK);

/// A value that can answer a lookup in one word, so that a page of many
/// keys answers from one table load instead of a table load and an entry
/// load (decision 022: the second dependent cache miss was most of the
/// remaining search time).
pub trait Summary {
    /// Bits of a summary word.
    const BITS: u32 = 64 - INDEX_BITS;
    /// For the block `delta` blocks past this value's key: a non-zero word
    /// below `1 << BITS` that the map's user decodes, or 0 for "ask the
    /// entry" (the block is not covered, or the answer does not fit).
    fn summary(&self, delta: u64) -> u64;
    /// How many blocks from its key this value can answer for: past them
    /// `summary` is 0 and is not asked.
    fn reach(&self) -> u64;
}

/// The per-block table of a page with many keys.
#[derive(Debug, Clone, Default)]
enum Table {
    #[default]
    None,
    /// For each block, `1 +` the index of the last key at or before it
    /// (0: none).
    Index(Box<[u16; PAGE_BLOCKS as usize]>),
    /// For each block, the same index in the low `INDEX_BITS` bits and the
    /// key's `Summary` at the block above them.
    Answer(Box<[u64; PAGE_BLOCKS as usize]>),
}

/// How the keys of a page changed, for bringing its table up to date.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// A key was added at this index.
    Inserted(usize),
    /// The key at this index got a new value.
    Replaced(usize),
    /// `count` keys, the first at offset `from`, were removed from this
    /// index on (which now holds the key after them, if any).
    Removed { at: usize, count: usize, from: u16 },
}

#[derive(Debug, Clone)]
struct Page<V> {
    /// The page's keys (as offsets within it), ascending, each beside its
    /// value: the read that finds the index loads both in one cache line.
    entries: SmallVec<[(u16, V); 1]>,
    table: Table,
}

impl<V> Default for Page<V> {
    fn default() -> Self {
        Page {
            entries: SmallVec::new(),
            table: Table::None,
        }
    }
}

impl<V: Summary> Page<V> {
    /// The index of the last key at or before `offset`, if any.
    fn at_or_before(&self, offset: u16) -> Option<usize> {
        let after = match &self.table {
            Table::Index(d) => d[offset as usize] as usize,
            Table::Answer(t) => (t[offset as usize] & INDEX_MASK) as usize,
            Table::None => self.entries.partition_point(|e| e.0 <= offset),
        };
        after.checked_sub(1)
    }

    /// The index of the first key at or after `offset`, if any.
    fn at_or_after(&self, offset: u16) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.0 < offset);
        (i < self.entries.len()).then_some(i)
    }

    fn find(&self, offset: u16) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&offset, |e| e.0)
    }

    /// The offset of the key at index `i`, or the page's end.
    fn offset_or_end(&self, i: usize) -> u16 {
        self.entries.get(i).map_or(PAGE_BLOCKS as u16, |e| e.0)
    }

    /// Brings the table up to date after `change`: rebuilt when its kind
    /// changes or for an index table (512 stores), patched where the keys
    /// changed for an answer table (whose words cost more to make).
    fn retable(&mut self, change: Change) {
        let n = self.entries.len();
        if n >= ANSWER_KEYS_MIN {
            let mut t = match std::mem::take(&mut self.table) {
                Table::Answer(t) => t,
                _ => {
                    let mut t = Box::new([0; PAGE_BLOCKS as usize]);
                    self.fill(&mut t, 0, self.offset_or_end(0), 0);
                    for i in 0..n {
                        self.fill(&mut t, self.entries[i].0, self.offset_or_end(i + 1), i + 1);
                    }
                    self.table = Table::Answer(t);
                    return;
                }
            };
            match change {
                Change::Inserted(i) => {
                    let next = self.offset_or_end(i + 1);
                    for slot in &mut t[next as usize..] {
                        *slot += 1;
                    }
                    self.fill(&mut t, self.entries[i].0, next, i + 1);
                }
                Change::Replaced(i) => {
                    self.fill(&mut t, self.entries[i].0, self.offset_or_end(i + 1), i + 1)
                }
                Change::Removed { at, count, from } => {
                    let next = self.offset_or_end(at);
                    for slot in &mut t[next as usize..] {
                        *slot -= count as u64;
                    }
                    self.fill(&mut t, from, next, at);
                }
            }
            self.table = Table::Answer(t);
        } else if n >= INDEX_KEYS_MIN {
            let mut d = match std::mem::take(&mut self.table) {
                Table::Index(d) => d,
                _ => Box::new([0; PAGE_BLOCKS as usize]),
            };
            let mut next = 0;
            for (block, slot) in d.iter_mut().enumerate() {
                while next < n && self.entries[next].0 as usize <= block {
                    next += 1;
                }
                *slot = next as u16;
            }
            self.table = Table::Index(d);
        } else {
            self.table = Table::None;
        }
    }

    /// Sets the answer slots of blocks `[from, to)`, which all fall after
    /// key `after - 1` (none when `after` is 0) and before the next key.
    fn fill(&self, t: &mut [u64; PAGE_BLOCKS as usize], from: u16, to: u16, after: usize) {
        let mut b = from;
        if let Some((o, v)) = after.checked_sub(1).map(|i| &self.entries[i]) {
            let reach_end = u64::from(*o).saturating_add(v.reach());
            while b < to && u64::from(b) < reach_end {
                let word = v.summary(u64::from(b - o));
                debug_assert!(word < 1 << V::BITS, "summary {word:#x} too wide");
                t[b as usize] = (after as u64) | (word << INDEX_BITS);
                b += 1;
            }
        }
        // Past the key's reach: the index alone.
        t[b as usize..to as usize].fill(after as u64);
    }

    /// The summary word for block `offset`, when the page keeps answers.
    fn summary(&self, offset: u16) -> u64 {
        match &self.table {
            Table::Answer(t) => t[offset as usize] >> INDEX_BITS,
            _ => 0,
        }
    }

    /// Every table slot recomputed from the entries, against the table kept
    /// (the tests' check of the patching above).
    #[cfg(test)]
    fn check_table(&self)
    where
        V: Clone,
    {
        let mut fresh = Page {
            entries: self.entries.clone(),
            table: Table::None,
        };
        fresh.retable(Change::Replaced(0));
        match (&self.table, &fresh.table) {
            (Table::None, Table::None) => {}
            (Table::Index(a), Table::Index(b)) => assert_eq!(a, b),
            (Table::Answer(a), Table::Answer(b)) => assert_eq!(a, b),
            (a, b) => panic!("table {a:?} where {b:?} belongs"),
        }
    }
}

fn split(key: u64) -> (u64, u16) {
    (key >> PAGE_SHIFT, (key & (PAGE_BLOCKS - 1)) as u16)
}

fn join(page: u64, offset: u16) -> u64 {
    (page << PAGE_SHIFT) | offset as u64
}

/// An ordered map of `u64` keys (logical blocks) to values.
#[derive(Debug, Clone)]
pub struct PagedMap<V> {
    pages: BTreeMap<u64, Page<V>>,
    len: usize,
}

impl<V> Default for PagedMap<V> {
    fn default() -> Self {
        PagedMap {
            pages: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<V: Summary> PagedMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: u64) -> Option<&V> {
        let (page, offset) = split(key);
        let p = self.pages.get(&page)?;
        let i = p.find(offset).ok()?;
        Some(&p.entries[i].1)
    }

    /// The last entry whose key is at or before `key`.
    pub fn at_or_before(&self, key: u64) -> Option<(u64, &V)> {
        let (page, offset) = split(key);
        // The page itself first: one descent, where a range search makes
        // two; a LUN written at random has keys in most of its pages.
        if let Some(p) = self.pages.get(&page) {
            if let Some(i) = p.at_or_before(offset) {
                let (o, v) = &p.entries[i];
                return Some((join(page, *o), v));
            }
        }
        // No key of this page at or before `key`: the last key of an
        // earlier page is the one.
        let (&n, p) = self.pages.range(..page).next_back()?;
        Some(Self::last_of(n, p))
    }

    /// The summary word (see `Summary`) of the entry at or before `key` at
    /// `key`, if its page keeps answers and it gave one; else 0.
    pub fn summary_at(&self, key: u64) -> u64 {
        let (page, offset) = split(key);
        self.pages.get(&page).map_or(0, |p| p.summary(offset))
    }

    /// The last entry whose key is before `key`.
    pub fn before(&self, key: u64) -> Option<(u64, &V)> {
        self.at_or_before(key.checked_sub(1)?)
    }

    /// The first entry whose key is at or after `key`.
    pub fn at_or_after(&self, key: u64) -> Option<(u64, &V)> {
        let (page, offset) = split(key);
        if let Some(p) = self.pages.get(&page) {
            if let Some(i) = p.at_or_after(offset) {
                let (o, v) = &p.entries[i];
                return Some((join(page, *o), v));
            }
        }
        let (&n, p) = self.pages.range(page + 1..).next()?;
        let (o, v) = &p.entries[0];
        Some((join(n, *o), v))
    }

    fn last_of(n: u64, p: &Page<V>) -> (u64, &V) {
        let (o, v) = p.entries.last().expect("pages are never empty");
        (join(n, *o), v)
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let (page, offset) = split(key);
        let p = self.pages.entry(page).or_default();
        match p.find(offset) {
            Ok(i) => {
                let old = std::mem::replace(&mut p.entries[i].1, value);
                p.retable(Change::Replaced(i));
                Some(old)
            }
            Err(i) => {
                p.entries.insert(i, (offset, value));
                p.retable(Change::Inserted(i));
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        let (page, offset) = split(key);
        let p = self.pages.get_mut(&page)?;
        let i = p.find(offset).ok()?;
        let (_, value) = p.entries.remove(i);
        if p.entries.is_empty() {
            self.pages.remove(&page);
        } else {
            p.retable(Change::Removed {
                at: i,
                count: 1,
                from: offset,
            });
        }
        self.len -= 1;
        Some(value)
    }

    /// Removes every entry with a key in `[start, end)`, in key order,
    /// rebuilding each page's table once.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<(u64, V)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let (first, _) = split(start);
        let (last, _) = split(end - 1);
        let touched: Vec<u64> = self.pages.range(first..=last).map(|(&n, _)| n).collect();
        for n in touched {
            let p = self.pages.get_mut(&n).expect("page just listed");
            let lo = p.entries.partition_point(|e| join(n, e.0) < start);
            let hi = p.entries.partition_point(|e| join(n, e.0) < end);
            if lo == hi {
                continue;
            }
            let from = p.entries[lo].0;
            out.extend(p.entries.drain(lo..hi).map(|(o, v)| (join(n, o), v)));
            self.len -= hi - lo;
            if p.entries.is_empty() {
                self.pages.remove(&n);
            } else {
                p.retable(Change::Removed {
                    at: lo,
                    count: hi - lo,
                    from,
                });
            }
        }
        out
    }

    /// Checks every page's table against one made afresh.
    #[cfg(test)]
    fn check_tables(&self)
    where
        V: Clone,
    {
        for p in self.pages.values() {
            p.check_table();
        }
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.pages
            .iter()
            .flat_map(|(&n, p)| p.entries.iter().map(move |(o, v)| (join(n, *o), v)))
    }

    /// Takes every entry out, in key order.
    pub fn take_all(&mut self) -> Vec<(u64, V)> {
        let pages = std::mem::take(&mut self.pages);
        self.len = 0;
        pages
            .into_iter()
            .flat_map(|(n, p)| p.entries.into_iter().map(move |(o, v)| (join(n, o), v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Test values answer with a word made from themselves and the delta.
    impl Summary for u64 {
        fn summary(&self, delta: u64) -> u64 {
            if delta >= self.reach() {
                return 0;
            }
            (self.wrapping_mul(31).wrapping_add(delta)) % (1 << 50) + 1
        }

        fn reach(&self) -> u64 {
            // Some values reach no further than their own block, some far.
            [1, 7, u64::MAX][(*self % 3) as usize]
        }
    }

    /// Random operations against a `BTreeMap`, keys clustered so that
    /// pages go dense and sparse again, and the queries compared.
    #[test]
    fn agrees_with_a_btreemap() {
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let span = [600u64, 5_000, 1 << 40][seed as usize % 3];
            let mut ours = PagedMap::default();
            let mut model = BTreeMap::new();
            for step in 0..3_000u64 {
                let k = rng.gen_range(0..span);
                match rng.gen_range(0..10) {
                    0..=4 => assert_eq!(ours.insert(k, step), model.insert(k, step)),
                    5..=6 => assert_eq!(ours.remove(k), model.remove(&k)),
                    7 => {
                        let end = k + rng.gen_range(0..2_000);
                        let want: Vec<(u64, u64)> =
                            model.range(k..end).map(|(&k, &v)| (k, v)).collect();
                        for (k, _) in &want {
                            model.remove(k);
                        }
                        assert_eq!(ours.remove_range(k, end), want);
                    }
                    _ => {}
                }
                let q = rng.gen_range(0..span);
                let m = |x: Option<(&u64, &u64)>| x.map(|(&k, &v)| (k, v));
                let o = |x: Option<(u64, &u64)>| x.map(|(k, &v)| (k, v));
                assert_eq!(o(ours.at_or_before(q)), m(model.range(..=q).next_back()));
                assert_eq!(o(ours.before(q)), m(model.range(..q).next_back()));
                assert_eq!(o(ours.at_or_after(q)), m(model.range(q..).next()));
                assert_eq!(ours.get(q), model.get(&q));
                assert_eq!(ours.len(), model.len());
                let page_keys = model
                    .range(q & !(PAGE_BLOCKS - 1)..)
                    .take_while(|(&k, _)| k >> PAGE_SHIFT == q >> PAGE_SHIFT)
                    .count();
                let want = match model.range(..=q).next_back() {
                    Some((&k, v))
                        if k >> PAGE_SHIFT == q >> PAGE_SHIFT && page_keys >= ANSWER_KEYS_MIN =>
                    {
                        v.summary(q - k)
                    }
                    _ => 0,
                };
                assert_eq!(ours.summary_at(q), want, "summary at {q}");
                ours.check_tables();
                if step % 500 == 0 {
                    let all: Vec<(u64, u64)> = ours.iter().map(|(k, &v)| (k, v)).collect();
                    let want: Vec<(u64, u64)> = model.iter().map(|(&k, &v)| (k, v)).collect();
                    assert_eq!(all, want);
                }
            }
            let all: Vec<(u64, u64)> = model.into_iter().collect();
            assert_eq!(ours.take_all(), all);
            assert!(ours.is_empty());
        }
    }
}
