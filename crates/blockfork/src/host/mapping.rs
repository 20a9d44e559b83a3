//! Mapping a source file's extents onto a destination file's extents (the
//! seed's FIG. 6): both files have the same length, but their file systems
//! cut them into fragments of unequal sizes at unrelated places of their
//! LUNs. Walking both lists in file order yields the (source offset, target
//! offset, length) triples the server's range clone takes; one source extent
//! may feed several destination extents, and one destination extent may be
//! fed by several source extents.
//!
//! Pure functions only: the property tests below check them exhaustively.

use serde::Serialize;
use std::fmt;

/// The unit the server clones in, and so the alignment every offset and
/// length handed to it must have.
pub const BLOCK_BYTES: u64 = 4096;

/// One extent of a file, placed on its LUN: the file's bytes
/// `[logical, logical + length)` are the LUN's bytes
/// `[lun_offset, lun_offset + length)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LunExtent {
    pub logical: u64,
    pub lun_offset: u64,
    pub length: u64,
}

impl LunExtent {
    fn logical_end(&self) -> u64 {
        self.logical + self.length
    }
}

/// One range to clone: the file's bytes `[file_offset, file_offset +
/// length)` go from the source LUN's `source_offset` to the target LUN's
/// `target_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CloneRange {
    pub file_offset: u64,
    pub source_offset: u64,
    pub target_offset: u64,
    pub length: u64,
}

/// Why two extent lists cannot be mapped; each names the side at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapError {
    /// An offset or length is not a multiple of [`BLOCK_BYTES`].
    Unaligned { side: Side, extent: LunExtent },
    /// An extent of length zero.
    Empty { side: Side, index: usize },
    /// The extents leave `[at, at + ..)` of the file unmapped (or overlap
    /// there): the list must run from offset 0 without gaps, in file order.
    NotContiguous { side: Side, at: u64 },
    /// The extents end at `end`, before the file's rounded-up size.
    TooShort { side: Side, end: u64, needed: u64 },
    /// Two extents of one file claim the same LUN bytes.
    Overlap { side: Side, at: u64 },
    /// An offset plus a length does not fit in 64 bits.
    Overflow { side: Side },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Unaligned { side, extent } => write!(
                f,
                "the {side} file has an extent not aligned to {BLOCK_BYTES} bytes \
                 (file offset {}, LUN offset {}, length {}); blockfork clones whole 4 KiB blocks, \
                 so the file system needs a block size of 4 KiB (or a multiple) and a 4 KiB-aligned partition",
                extent.logical, extent.lun_offset, extent.length
            ),
            MapError::Empty { side, index } => {
                write!(f, "the {side} file's extent #{index} is empty")
            }
            MapError::NotContiguous { side, at } => write!(
                f,
                "the {side} file's extents do not follow each other at file offset {at} (a hole or an overlap)"
            ),
            MapError::TooShort { side, end, needed } => write!(
                f,
                "the {side} file's extents end at file offset {end}, short of its size rounded up to 4 KiB ({needed})"
            ),
            MapError::Overlap { side, at } => write!(
                f,
                "two of the {side} file's extents share LUN offset {at}"
            ),
            MapError::Overflow { side } => {
                write!(f, "the {side} file's extents run past 2^64 bytes")
            }
        }
    }
}

/// `bytes` rounded up to a whole number of blocks: how much of a file the
/// clone covers (the last block's tail past the end is cloned too; the
/// file system never shows it).
pub fn rounded_size(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Checks that `extents` are a layout of `[0, rounded_size(file_size))`:
/// aligned, non-empty, contiguous in file order from 0 (extents may run
/// past the end), and never two on the same LUN bytes.
pub fn check_layout(side: Side, extents: &[LunExtent], file_size: u64) -> Result<(), MapError> {
    let needed = rounded_size(file_size);
    let mut expected = 0u64;
    for (index, e) in extents.iter().enumerate() {
        if e.length == 0 {
            return Err(MapError::Empty { side, index });
        }
        if [e.logical, e.lun_offset, e.length]
            .iter()
            .any(|v| v % BLOCK_BYTES != 0)
        {
            return Err(MapError::Unaligned { side, extent: *e });
        }
        if e.logical.checked_add(e.length).is_none() || e.lun_offset.checked_add(e.length).is_none()
        {
            return Err(MapError::Overflow { side });
        }
        if expected >= needed {
            // Extents wholly past the end are of no concern (say,
            // preallocated space beyond EOF); they are never cloned.
            break;
        }
        if e.logical != expected {
            return Err(MapError::NotContiguous { side, at: expected });
        }
        expected = e.logical_end();
    }
    if expected < needed {
        return Err(MapError::TooShort {
            side,
            end: expected,
            needed,
        });
    }
    let mut used: Vec<(u64, u64)> = extents
        .iter()
        .filter(|e| e.logical < needed)
        .map(|e| {
            (
                e.lun_offset,
                e.lun_offset + e.length.min(needed - e.logical),
            )
        })
        .collect();
    used.sort_unstable();
    if let Some(pair) = used.windows(2).find(|p| p[1].0 < p[0].1) {
        return Err(MapError::Overlap {
            side,
            at: pair[1].0,
        });
    }
    Ok(())
}

/// The ranges that clone a file of `file_size` bytes laid out as `source`
/// into a file of the same size laid out as `destination` (seed FIG. 6).
///
/// The result is in file order, covers `[0, rounded_size(file_size))`
/// exactly once, and each range lies within one source extent and one
/// destination extent; there are at most `source.len() + destination.len()
/// - 1` of them.
pub fn map_ranges(
    source: &[LunExtent],
    destination: &[LunExtent],
    file_size: u64,
) -> Result<Vec<CloneRange>, MapError> {
    check_layout(Side::Source, source, file_size)?;
    check_layout(Side::Destination, destination, file_size)?;
    let end = rounded_size(file_size);
    let mut ranges = Vec::with_capacity(source.len().max(destination.len()));
    let (mut s, mut d) = (0, 0);
    let mut position = 0;
    while position < end {
        // check_layout guarantees both current extents cover `position`.
        let (se, de) = (&source[s], &destination[d]);
        debug_assert!(se.logical <= position && position < se.logical_end());
        debug_assert!(de.logical <= position && position < de.logical_end());
        let length = (se.logical_end() - position)
            .min(de.logical_end() - position)
            .min(end - position);
        ranges.push(CloneRange {
            file_offset: position,
            source_offset: se.lun_offset + (position - se.logical),
            target_offset: de.lun_offset + (position - de.logical),
            length,
        });
        position += length;
        // FIG. 6's three cases: the source extent is used up, the
        // destination extent is, or both are.
        if position == se.logical_end() {
            s += 1;
        }
        if position == de.logical_end() {
            d += 1;
        }
    }
    assert_eq!(
        ranges.iter().map(|r| r.length).sum::<u64>(),
        end,
        "the ranges cover the file exactly"
    );
    Ok(ranges)
}

/// The first place where two of `ranges` write the same target bytes, or
/// where a range reads bytes another one writes (when source and target are
/// one LUN): cloning them in one call would depend on the order.
pub fn find_conflict(ranges: &[CloneRange], same_lun: bool) -> Option<u64> {
    let mut targets: Vec<(u64, u64)> = ranges
        .iter()
        .map(|r| (r.target_offset, r.target_offset + r.length))
        .collect();
    targets.sort_unstable();
    if let Some(pair) = targets.windows(2).find(|p| p[1].0 < p[0].1) {
        return Some(pair[1].0);
    }
    if !same_lun {
        return None;
    }
    // Both lists sorted by start: a sweep finds any source range that
    // intersects a target range.
    let mut sources: Vec<(u64, u64)> = ranges
        .iter()
        .map(|r| (r.source_offset, r.source_offset + r.length))
        .collect();
    sources.sort_unstable();
    let (mut i, mut j) = (0, 0);
    while i < sources.len() && j < targets.len() {
        let (a, b) = (sources[i], targets[j]);
        if a.0 < b.1 && b.0 < a.1 {
            return Some(a.0.max(b.0));
        }
        if a.1 <= b.1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const B: u64 = BLOCK_BYTES;

    fn ext(logical: u64, lun_offset: u64, length: u64) -> LunExtent {
        LunExtent {
            logical: logical * B,
            lun_offset: lun_offset * B,
            length: length * B,
        }
    }

    #[test]
    fn fig6_cases() {
        // Source: 3 + 5 blocks; destination: 2 + 2 + 4. Every case of FIG. 6
        // occurs: source longer, destination longer, both ending together.
        let source = [ext(0, 100, 3), ext(3, 200, 5)];
        let destination = [ext(0, 10, 2), ext(2, 20, 2), ext(4, 30, 4)];
        let ranges = map_ranges(&source, &destination, 8 * B).unwrap();
        let triples: Vec<(u64, u64, u64)> = ranges
            .iter()
            .map(|r| (r.source_offset / B, r.target_offset / B, r.length / B))
            .collect();
        assert_eq!(
            triples,
            vec![(100, 10, 2), (102, 20, 1), (200, 21, 1), (201, 30, 4)]
        );
    }

    #[test]
    fn last_partial_block_is_cloned_whole() {
        let source = [ext(0, 7, 3)];
        let destination = [ext(0, 50, 1), ext(1, 60, 2)];
        let ranges = map_ranges(&source, &destination, 2 * B + 1).unwrap();
        assert_eq!(ranges.iter().map(|r| r.length).sum::<u64>(), 3 * B);
        assert_eq!(ranges.last().unwrap().length, 2 * B);
        // Extents past the end are ignored, and so is a longer last extent.
        let long = [ext(0, 7, 3), ext(3, 90, 9)];
        assert_eq!(map_ranges(&long, &destination, 2 * B + 1).unwrap(), ranges);
        let ranges = map_ranges(&[ext(0, 7, 8)], &destination, 3 * B).unwrap();
        assert_eq!(ranges.iter().map(|r| r.length).sum::<u64>(), 3 * B);
    }

    #[test]
    fn empty_file_maps_to_nothing() {
        assert_eq!(map_ranges(&[], &[], 0).unwrap(), vec![]);
    }

    #[test]
    fn refusals() {
        let ok = [ext(0, 0, 4)];
        let cases: Vec<(Vec<LunExtent>, u64, MapError)> = vec![
            (
                vec![],
                1,
                MapError::TooShort {
                    side: Side::Source,
                    end: 0,
                    needed: B,
                },
            ),
            (
                vec![ext(0, 0, 2)],
                4 * B,
                MapError::TooShort {
                    side: Side::Source,
                    end: 2 * B,
                    needed: 4 * B,
                },
            ),
            (
                vec![ext(0, 0, 1), ext(2, 5, 2)],
                4 * B,
                MapError::NotContiguous {
                    side: Side::Source,
                    at: B,
                },
            ),
            (
                vec![ext(1, 0, 4)],
                4 * B,
                MapError::NotContiguous {
                    side: Side::Source,
                    at: 0,
                },
            ),
            (
                vec![ext(0, 0, 2), ext(1, 9, 3)],
                4 * B,
                MapError::NotContiguous {
                    side: Side::Source,
                    at: 2 * B,
                },
            ),
            (
                vec![ext(0, 0, 2), ext(2, 0, 0)],
                4 * B,
                MapError::Empty {
                    side: Side::Source,
                    index: 1,
                },
            ),
            (
                vec![ext(0, 0, 2), ext(2, 1, 2)],
                4 * B,
                MapError::Overlap {
                    side: Side::Source,
                    at: B,
                },
            ),
            (
                vec![LunExtent {
                    logical: 0,
                    lun_offset: 512,
                    length: 4 * B,
                }],
                4 * B,
                MapError::Unaligned {
                    side: Side::Source,
                    extent: LunExtent {
                        logical: 0,
                        lun_offset: 512,
                        length: 4 * B,
                    },
                },
            ),
            (
                vec![LunExtent {
                    logical: 0,
                    lun_offset: u64::MAX - B + 1,
                    length: 4 * B,
                }],
                4 * B,
                MapError::Overflow { side: Side::Source },
            ),
        ];
        for (source, size, error) in cases {
            assert_eq!(
                map_ranges(&source, &ok, size),
                Err(error.clone()),
                "{source:?}"
            );
            let flipped = match error {
                MapError::Unaligned { extent, .. } => MapError::Unaligned {
                    side: Side::Destination,
                    extent,
                },
                MapError::Empty { index, .. } => MapError::Empty {
                    side: Side::Destination,
                    index,
                },
                MapError::NotContiguous { at, .. } => MapError::NotContiguous {
                    side: Side::Destination,
                    at,
                },
                MapError::TooShort { end, needed, .. } => MapError::TooShort {
                    side: Side::Destination,
                    end,
                    needed,
                },
                MapError::Overlap { at, .. } => MapError::Overlap {
                    side: Side::Destination,
                    at,
                },
                MapError::Overflow { .. } => MapError::Overflow {
                    side: Side::Destination,
                },
            };
            let ok_source = [ext(0, 1000, size.div_ceil(B).max(1))];
            assert_eq!(map_ranges(&ok_source, &source, size), Err(flipped));
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn conflicts() {
        let r = |s: u64, t: u64, l: u64| CloneRange {
            file_offset: 0,
            source_offset: s * B,
            target_offset: t * B,
            length: l * B,
        };
        assert_eq!(find_conflict(&[r(0, 10, 2), r(2, 12, 2)], true), None);
        assert_eq!(
            find_conflict(&[r(0, 10, 2), r(2, 11, 2)], true),
            Some(11 * B)
        );
        // A target inside another range's source matters on one LUN only.
        assert_eq!(
            find_conflict(&[r(0, 10, 2), r(10, 20, 1)], true),
            Some(10 * B)
        );
        assert_eq!(find_conflict(&[r(0, 10, 2), r(10, 20, 1)], false), None);
        assert_eq!(find_conflict(&[r(0, 0, 1)], true), Some(0));
        assert_eq!(find_conflict(&[r(5, 0, 5)], true), None);
        assert_eq!(find_conflict(&[r(5, 0, 6)], true), Some(5 * B));
    }

    /// Cuts `blocks` blocks into fragments at random points, and places the
    /// fragments at random, disjoint LUN offsets (in random order, with
    /// gaps), the last one possibly running past the end.
    fn layout(blocks: u64, max_fragments: usize) -> impl Strategy<Value = Vec<LunExtent>> {
        let cuts = proptest::collection::btree_set(1..blocks.max(2), 0..max_fragments);
        (cuts, any::<u64>(), 0u64..4).prop_map(move |(cuts, seed, overhang)| {
            let mut bounds: Vec<u64> = std::iter::once(0)
                .chain(cuts.into_iter().filter(|&c| c < blocks))
                .chain(std::iter::once(blocks))
                .collect();
            bounds.dedup();
            let fragments: Vec<(u64, u64)> = bounds
                .windows(2)
                .map(|w| (w[0], w[1] - w[0]))
                .filter(|f| f.1 > 0)
                .collect();
            // Place the fragments in a shuffled order with gaps: a
            // simple LCG from the seed keeps the strategy shrinkable.
            let mut order: Vec<usize> = (0..fragments.len()).collect();
            let mut state = seed | 1;
            let mut next = || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                state >> 33
            };
            for i in (1..order.len()).rev() {
                order.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let mut placed = vec![(0u64, 0u64, 0u64); fragments.len()];
            let mut cursor = next() % 64;
            let last = fragments.len().saturating_sub(1);
            for &i in &order {
                let (logical, mut length) = fragments[i];
                if i == last {
                    length += overhang;
                }
                placed[i] = (logical, cursor, length);
                cursor += length + next() % 3;
            }
            placed.into_iter().map(|(l, o, n)| ext(l, o, n)).collect()
        })
    }

    fn case() -> impl Strategy<Value = (u64, Vec<LunExtent>, Vec<LunExtent>)> {
        (1u64..200 * B).prop_flat_map(|size| {
            let blocks = size.div_ceil(B);
            (Just(size), layout(blocks, 40), layout(blocks, 40))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn mapping_properties((size, source, destination) in case()) {
            let ranges = map_ranges(&source, &destination, size).unwrap();
            let end = rounded_size(size);
            // Total coverage, in order, without overlap in the file.
            let mut position = 0;
            for r in &ranges {
                prop_assert_eq!(r.file_offset, position);
                prop_assert!(r.length > 0);
                prop_assert_eq!(r.length % B, 0);
                position += r.length;
            }
            prop_assert_eq!(position, end);
            prop_assert_eq!(ranges.iter().map(|r| r.length).sum::<u64>(), end);
            // Each range inside one source and one destination extent, at
            // the matching place.
            for r in &ranges {
                let within = |list: &[LunExtent], lun_offset: u64| {
                    list.iter().filter(|e| {
                        e.logical <= r.file_offset
                            && r.file_offset + r.length <= e.logical + e.length
                            && lun_offset == e.lun_offset + (r.file_offset - e.logical)
                    }).count()
                };
                prop_assert_eq!(within(&source, r.source_offset), 1);
                prop_assert_eq!(within(&destination, r.target_offset), 1);
            }
            // No two ranges write the same target bytes or read the same
            // source bytes.
            prop_assert_eq!(find_conflict(&ranges, false), None);
            let swapped: Vec<CloneRange> = ranges.iter().map(|r| CloneRange {
                target_offset: r.source_offset, source_offset: r.target_offset, ..*r
            }).collect();
            prop_assert_eq!(find_conflict(&swapped, false), None);
            // FIG. 6 needs at most one range per extent boundary.
            let used = |list: &[LunExtent]| list.iter().filter(|e| e.logical < end).count();
            prop_assert!(ranges.len() < used(&source) + used(&destination));
            // Content: a LUN whose source blocks hold their file block
            // number, cloned by the ranges, reads back the file in order
            // through the destination's extents.
            let mut lun: HashMap<u64, u64> = HashMap::new();
            for e in &source {
                for b in 0..e.length / B {
                    lun.insert(e.lun_offset / B + b, e.logical / B + b);
                }
            }
            let mut target: HashMap<u64, u64> = HashMap::new();
            for r in &ranges {
                for b in 0..r.length / B {
                    target.insert(r.target_offset / B + b, lun[&(r.source_offset / B + b)]);
                }
            }
            for file_block in 0..end / B {
                let e = destination.iter().find(|e| {
                    e.logical / B <= file_block && file_block < (e.logical + e.length) / B
                }).unwrap();
                let lun_block = e.lun_offset / B + (file_block - e.logical / B);
                prop_assert_eq!(target.get(&lun_block), Some(&file_block));
            }
        }

        #[test]
        fn gaps_are_refused((size, source, destination) in case(), pick in any::<prop::sample::Index>()) {
            // Dropping any extent that the file needs leaves a hole.
            let needed: Vec<usize> = (0..source.len())
                .filter(|&i| source[i].logical < rounded_size(size))
                .collect();
            let drop = needed[pick.index(needed.len())];
            let mut holed = source.clone();
            holed.remove(drop);
            prop_assert!(map_ranges(&holed, &destination, size).is_err());
        }
    }
}
