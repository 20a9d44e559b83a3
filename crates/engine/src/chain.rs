//! Owner indexes for deep clone chains (decision 014).
//!
//! A read that a clone does not map falls through to its parent snapshot,
//! and from there to the parent's parent, one map search per level that has
//! anything of its own. At depth 50 that is 100 searches for a block only the
//! base holds. What a snapshot sees never changes while a clone reads
//! through it, so the answer to "which level of this chain owns block b" is
//! fixed too: a chain index records it once, as sorted runs of blocks owned
//! by each upper level (everything else belongs to the bottom level), and a
//! read then costs one binary search plus the owning level's own lookup,
//! whatever the depth; on chains of up to 2^25 blocks a bitmap of the
//! upper levels' blocks sends most reads to the bottom with no search.
//!
//! Indexes are asked for by the first read through a chain of at least
//! `State::chain_index_min_levels` levels and built by a background job
//! (`Engine::build_chain_index`, beside reclaim), not by the read; they are
//! shared by every clone reading through the same snapshot, and dropped
//! together whenever `chain_gen`
//! moves: a parent link is dropped (split completion), a hidden snapshot is
//! finally removed, a head is restored. Nothing else changes what a snapshot
//! sees; a running split only adds copies of what a level already read
//! through, so a stale "owned below" answer still reads the same bytes.

use crate::state::{State, Through};
use std::collections::HashMap;
use std::sync::Arc;

/// Upper-level map entries one index may be built from; longer chains keep
/// reading level by level (bounds the time a build holds the state lock).
pub const CHAIN_INDEX_SOURCE_MAX: usize = 1 << 20;
/// Bytes all cached indexes may hold before the cache starts over.
pub const CHAIN_CACHE_BYTES_MAX: usize = 64 << 20;
/// Chains reaching at most this many blocks also get a bitmap of the
/// blocks upper levels own (at most 4 MiB): most reads miss every upper
/// level, and one bit answers them without a search.
pub const CHAIN_BITMAP_BLOCKS_MAX: u64 = 1 << 25;
/// Default shortest chain worth indexing: at two levels the walk already
/// costs what the index does.
pub const CHAIN_INDEX_MIN_LEVELS: usize = 3;

pub struct ChainIndex {
    /// The chain's levels, nearest first, each with the cumulative limit
    /// (blocks at or past it never reach that level); the last is the
    /// bottom, which owns whatever no run names.
    pub levels: Vec<Through>,
    /// Disjoint runs sorted by start, owned by upper levels: starts apart
    /// from the rest so that the search touches 8 bytes a run.
    starts: Vec<u64>,
    /// `(len, level)` of each run, level below `levels.len() - 1`.
    runs: Vec<(u64, u32)>,
    /// Bit b set: block b is in a run. Covers `[0, bitmap_blocks)`, which is
    /// every block the chain reaches, or nothing.
    owned: Vec<u64>,
    bitmap_blocks: u64,
}

impl ChainIndex {
    fn new(levels: Vec<Through>, mut runs: Vec<(u64, u64, u32)>) -> ChainIndex {
        runs.sort_unstable_by_key(|r| r.0);
        let starts: Vec<u64> = runs.iter().map(|r| r.0).collect();
        let reach = levels.first().map_or(0, |t| t.limit_blocks);
        let bitmap_blocks = if reach <= CHAIN_BITMAP_BLOCKS_MAX {
            reach
        } else {
            0
        };
        let mut owned = vec![0u64; bitmap_blocks.div_ceil(64) as usize];
        if bitmap_blocks > 0 {
            for &(start, len, _) in &runs {
                let (mut b, end) = (start, (start + len).min(bitmap_blocks));
                while b < end {
                    // Up to the end of this word, or of the run.
                    let n = (64 - b % 64).min(end - b);
                    let mask = if n == 64 {
                        u64::MAX
                    } else {
                        ((1u64 << n) - 1) << (b % 64)
                    };
                    owned[(b / 64) as usize] |= mask;
                    b += n;
                }
            }
        }
        ChainIndex {
            levels,
            starts,
            runs: runs.iter().map(|r| (r.1, r.2)).collect(),
            owned,
            bitmap_blocks,
        }
    }

    /// Memory the index holds.
    pub fn bytes(&self) -> usize {
        self.starts.len() * 8 + self.runs.len() * 16 + self.owned.len() * 8
    }

    /// The first block in `[pos, end)` some upper level owns, or `end`
    /// (with a bitmap only).
    fn next_owned(&self, pos: u64, end: u64) -> u64 {
        let stop = end.min(self.bitmap_blocks);
        let mut p = pos;
        while p < stop {
            let w = self.owned[(p / 64) as usize] >> (p % 64);
            if w != 0 {
                return (p + w.trailing_zeros() as u64).min(end);
            }
            p = (p / 64 + 1) * 64;
        }
        end
    }

    /// The level owning `pos`, and for how many blocks (up to `end`) that
    /// holds.
    pub fn lookup(&self, pos: u64, end: u64) -> (u64, &Through) {
        if self.bitmap_blocks > 0 {
            // The bitmap covers every block the chain reaches: a clear bit
            // (or a block past it) belongs to the bottom level.
            let next = self.next_owned(pos, end);
            if next > pos {
                let bottom = self.levels.last().expect("a chain has a bottom");
                return (next - pos, bottom);
            }
        }
        let i = self.starts.partition_point(|&s| s <= pos);
        if i > 0 {
            let (s, (len, level)) = (self.starts[i - 1], self.runs[i - 1]);
            if pos < s + len {
                return ((s + len).min(end) - pos, &self.levels[level as usize]);
            }
        }
        let next = self.starts.get(i).map_or(end, |&s| s.min(end));
        (
            next - pos,
            self.levels.last().expect("a chain has a bottom"),
        )
    }
}

/// A LUN's cached chain index: valid while `(shape_gen, chain_gen)` match.
pub type CachedIndex = ((u64, u64), Option<Arc<ChainIndex>>);

/// Chain tops whose index is wanted, at most this many at a time (a read
/// that finds the queue full reads level by level, as it would anyway).
pub const CHAIN_BUILDS_QUEUED_MAX: usize = 64;

#[derive(Default)]
pub struct ChainCache {
    gen: u64,
    bytes: usize,
    /// `None`: looked at, not worth an index (short, or too large).
    by_top: HashMap<Through, Option<Arc<ChainIndex>>>,
    /// Tops a read asked for that no build has answered yet.
    wanted: Vec<Through>,
}

/// What a read learns about a chain's index.
pub enum Cached {
    /// Built (or found not worth building): valid until `chain_gen` moves.
    Known(Option<Arc<ChainIndex>>),
    /// Asked for; a background job builds it. Read level by level meanwhile.
    Pending,
}

/// What a build collects under the state lock: the chain's levels and,
/// for each upper level, the runs it maps at its epoch, unsorted.
pub struct ChainSource {
    top: Through,
    gen: u64,
    levels: Vec<Through>,
    covers: Vec<Vec<(u64, u64)>>,
}

impl State {
    /// The owner index for reads falling through to `top`. A read never
    /// builds one: a chain of up to `CHAIN_INDEX_SOURCE_MAX` map entries
    /// would hold the read (and, behind the shared lock, every writer) for
    /// the whole build; it queues the chain for `Engine::build_chain_index`
    /// and reads level by level until the index is there.
    pub fn chain_index(&self, top: Through) -> Cached {
        let mut cache = self.chains.lock();
        if cache.gen != self.chain_gen {
            *cache = ChainCache {
                gen: self.chain_gen,
                ..Default::default()
            };
        }
        if let Some(hit) = cache.by_top.get(&top) {
            return Cached::Known(hit.clone());
        }
        if !cache.wanted.contains(&top) && cache.wanted.len() < CHAIN_BUILDS_QUEUED_MAX {
            cache.wanted.push(top);
        }
        Cached::Pending
    }

    /// Takes a wanted chain and collects what its index is built from (one
    /// pass over the upper levels' maps); `None` when nothing is wanted. A
    /// chain not worth an index has no levels (and builds to "none").
    pub fn take_chain_source(&self) -> Option<ChainSource> {
        let top = {
            let mut cache = self.chains.lock();
            if cache.gen != self.chain_gen {
                return None;
            }
            cache.wanted.pop()?
        };
        let levels = self.chain_levels(top).unwrap_or_default();
        let covers = levels
            .iter()
            .take(levels.len().saturating_sub(1))
            .map(|t| self.level_cover(t))
            .collect();
        Some(ChainSource {
            top,
            gen: self.chain_gen,
            levels,
            covers,
        })
    }

    /// Records a built index, unless what chains read through changed
    /// since its source was collected.
    pub fn install_chain_index(&self, top: Through, gen: u64, built: Option<Arc<ChainIndex>>) {
        let mut cache = self.chains.lock();
        if cache.gen != gen || self.chain_gen != gen {
            return;
        }
        let bytes = built.as_ref().map_or(0, |ix| ix.bytes());
        if cache.bytes + bytes > CHAIN_CACHE_BYTES_MAX {
            cache.by_top.clear();
            cache.bytes = 0;
        }
        cache.bytes += bytes;
        cache.by_top.insert(top, built);
    }

    /// The levels of the chain below `top`, nearest first, as the
    /// level-by-level walk visits them; `None` when the chain is too short
    /// or its upper levels map too much to index.
    fn chain_levels(&self, top: Through) -> Option<Vec<Through>> {
        let mut levels = vec![top];
        let mut source = 0usize;
        loop {
            let last = *levels.last().expect("non-empty");
            let Some(l) = self.luns.get(&last.lun) else {
                break;
            };
            let Some(next) = self.through(l) else {
                break;
            };
            source += l.head.len() + l.history.len();
            if source > CHAIN_INDEX_SOURCE_MAX {
                return None;
            }
            levels.push(Through {
                limit_blocks: next.limit_blocks.min(last.limit_blocks),
                ..next
            });
        }
        (levels.len() >= self.chain_index_min_levels.max(2)).then_some(levels)
    }

    /// The runs level `t` maps at its epoch: head versions born by then,
    /// history versions alive then. Unsorted, possibly touching.
    fn level_cover(&self, t: &Through) -> Vec<(u64, u64)> {
        let l = &self.luns[&t.lun];
        let mut cover: Vec<(u64, u64)> = Vec::new();
        for (lba, ext) in l.head.iter() {
            if ext.birth <= t.epoch {
                cover.push((lba, ext.len));
            }
        }
        for (lba, r) in l.history.iter() {
            let i = r.versions.partition_point(|v| v.death <= t.epoch);
            if r.versions.get(i).is_some_and(|v| v.birth <= t.epoch) {
                cover.push((lba, r.len));
            }
        }
        cover
    }
}

impl ChainSource {
    /// Builds the index, with no lock held: sorting and merging the runs
    /// and filling the bitmap are most of a build's time.
    pub fn build(self) -> (Through, u64, Option<Arc<ChainIndex>>) {
        if self.levels.is_empty() {
            return (self.top, self.gen, None);
        }
        // Top down: each upper level owns what it maps at its epoch and no
        // nearer level mapped.
        let mut runs: Vec<(u64, u64, u32)> = Vec::new();
        let mut taken: Vec<(u64, u64)> = Vec::new();
        for (k, (cover, t)) in self.covers.into_iter().zip(&self.levels).enumerate() {
            let cover = merge(cover, t.limit_blocks);
            for (s, len) in subtract(&cover, &taken) {
                runs.push((s, len, k as u32));
            }
            taken = union(&taken, &cover);
        }
        let ix = ChainIndex::new(self.levels, runs);
        (self.top, self.gen, Some(Arc::new(ix)))
    }
}

/// Sorts runs, clips them below `limit` and merges the touching ones.
fn merge(mut runs: Vec<(u64, u64)>, limit: u64) -> Vec<(u64, u64)> {
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (s, len) in runs {
        if s >= limit {
            break;
        }
        let len = len.min(limit - s);
        match out.last_mut() {
            Some((ls, ll)) if *ls + *ll >= s => *ll = (*ll).max(s + len - *ls),
            _ => out.push((s, len)),
        }
    }
    out
}

/// Parts of sorted disjoint `a` outside sorted disjoint `b`.
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, len) in a {
        let (mut pos, end) = (s, s + len);
        while j < b.len() && b[j].0 + b[j].1 <= pos {
            j += 1;
        }
        let mut k = j;
        while pos < end {
            match b.get(k) {
                Some(&(bs, bl)) if bs < end => {
                    if bs > pos {
                        out.push((pos, bs - pos));
                    }
                    pos = pos.max(bs + bl);
                    k += 1;
                }
                _ => {
                    out.push((pos, end - pos));
                    pos = end;
                }
            }
        }
    }
    out
}

/// Union of two sorted disjoint run lists.
fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all = Vec::with_capacity(a.len() + b.len());
    all.extend_from_slice(a);
    all.extend_from_slice(b);
    merge(all, u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_and_union() {
        let a = [(0, 10), (20, 10), (40, 5)];
        let b = [(5, 2), (8, 14), (29, 20)];
        assert_eq!(subtract(&a, &b), vec![(0, 5), (7, 1), (22, 7)]);
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(subtract(&[], &b), vec![]);
        assert_eq!(union(&a, &b), vec![(0, 49)]);
        assert_eq!(
            merge(vec![(5, 5), (0, 3), (3, 1), (20, 10)], 25),
            vec![(0, 4), (5, 5), (20, 5)]
        );
    }

    #[test]
    fn lookup_agrees_with_a_linear_search() {
        let t = |lun| Through {
            lun: crate::types::LunId(lun),
            epoch: 1,
            limit_blocks: 1 << 20,
        };
        for n in [0usize, 1, 63, 64, 65, 200, 1000] {
            let runs: Vec<(u64, u64, u32)> = (0..n as u64)
                .map(|i| (i * 10 + 3, 1 + i % 5, (i % 2) as u32))
                .collect();
            let mut ix = ChainIndex::new(vec![t(1), t(2), t(3)], runs.clone());
            assert!(ix.bitmap_blocks > 0);
            // Bits match the runs.
            for b in 0..n as u64 * 10 + 20 {
                let bit = ix.owned[(b / 64) as usize] >> (b % 64) & 1 == 1;
                assert_eq!(
                    bit,
                    runs.iter().any(|r| r.0 <= b && b < r.0 + r.1),
                    "block {b}"
                );
            }
            if n % 2 == 1 {
                // And the search alone answers the same.
                ix.bitmap_blocks = 0;
            }
            for pos in 0..n as u64 * 10 + 20 {
                let want = match runs.iter().find(|r| r.0 <= pos && pos < r.0 + r.1) {
                    Some(r) => (r.0 + r.1 - pos, r.2 as u64 + 1),
                    None => (
                        runs.iter()
                            .map(|r| r.0)
                            .find(|&s| s > pos)
                            .unwrap_or(1 << 30)
                            - pos,
                        3,
                    ),
                };
                let (len, level) = ix.lookup(pos, 1 << 30);
                assert_eq!((len, level.lun.0), want, "{n} runs, pos {pos}");
            }
        }
    }

    #[test]
    fn lookup_walks_runs() {
        let t = |lun| Through {
            lun: crate::types::LunId(lun),
            epoch: 1,
            limit_blocks: 100,
        };
        let ix = ChainIndex::new(
            vec![t(1), t(2), t(3)],
            vec![(30, 1, 0), (10, 5, 0), (15, 5, 1)],
        );
        assert_eq!(ix.lookup(0, 100), (10, &t(3)));
        assert_eq!(ix.lookup(12, 100), (3, &t(1)));
        assert_eq!(ix.lookup(12, 13), (1, &t(1)));
        assert_eq!(ix.lookup(15, 100), (5, &t(2)));
        assert_eq!(ix.lookup(20, 25), (5, &t(3)));
        assert_eq!(ix.lookup(31, 100), (69, &t(3)));
    }
}
