//! What mirroring reads of a source (decision 024): the difference
//! between two snapshots of a LUN, found from the maps' epochs without
//! reading data, and the holds that keep the snapshots a transfer needs
//! from deletion. The destination's side (replicas) is `replica.rs`.

use crate::engine::*;
use crate::map::Val;
use crate::replica::{snapshot_epoch, validate_holder};
use crate::state::Lun;
use crate::types::*;
use serde::{Deserialize, Serialize};

/// Most extents one `snapshot_diff` call returns.
pub const DIFF_EXTENTS_MAX: usize = 4096;

/// Blocks a flattened baseline resolves per step (64 MiB): bounds the
/// work one call does under the shared lock.
const BASELINE_STEP_BLOCKS: u64 = 16_384;

/// Tests compare the paged walk with a walk of every extent.
fn force_full_walk() -> bool {
    #[cfg(feature = "sim")]
    if FULL_WALK.load(std::sync::atomic::Ordering::Relaxed) {
        return true;
    }
    false
}

/// Makes `snapshot_diff` walk every extent instead of the changed pages
/// (tests: the two must agree).
#[cfg(feature = "sim")]
pub static FULL_WALK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How a range differs: what the newer side holds there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffKind {
    /// Data: its bytes must travel.
    Data,
    /// Zeros recorded in the map (allocated zeros, or zeros hiding a
    /// clone's parent).
    Zero,
    /// Nothing of the LUN's own: zeros without space, or for a clone what
    /// its parent holds.
    Unmap,
}

/// One changed range, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffExtent {
    pub lba: u64,
    pub blocks: u64,
    pub kind: DiffKind,
}

/// One call's share of a difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffChunk {
    /// Size of the newer side, in blocks.
    pub size_blocks: u64,
    pub extents: Vec<DiffExtent>,
    /// Where the next call starts; None when this was the last chunk.
    pub next_block: Option<u64>,
}

/// Changed extents, adjacent ones of a kind merged.
#[derive(Default)]
struct Extents(Vec<DiffExtent>);

impl Extents {
    fn push(&mut self, lba: u64, blocks: u64, kind: DiffKind) {
        match self.0.last_mut() {
            Some(e) if e.kind == kind && e.lba + e.blocks == lba => e.blocks += blocks,
            _ => self.0.push(DiffExtent { lba, blocks, kind }),
        }
    }
}

/// The version a LUN's own maps hold at `pos` as epoch `at` sees it (None:
/// the head), and for how many blocks (up to `end`) that answer holds.
pub(crate) fn own_version(
    l: &Lun,
    pos: u64,
    end: u64,
    at: Option<u64>,
) -> (u64, Option<(Val, u64)>) {
    let (len, hit) = l.head.lookup(pos, end);
    match (hit, at) {
        (Some(v), None) => (len, Some(v)),
        (Some((v, birth)), Some(e)) if birth <= e => (len, Some((v, birth))),
        (_, None) => (len, None),
        (_, Some(e)) => l.history.lookup(pos, e, pos + len),
    }
}

impl Engine {
    // ------------------------------------------------------------- holds

    /// Keeps `lun@snapshot` from deletion until `holder` releases it.
    pub fn hold_snapshot(&self, lun: &str, snapshot: &str, holder: &str) -> Result<()> {
        validate_holder(holder)?;
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let id = s.lun_id(lun)?;
            let epoch = snapshot_epoch(&s.luns[&id], snapshot)?;
            let sn = s.lun_mut(id)?.snapshots.get_mut(&epoch).expect("found");
            if !sn.holds.insert(holder.to_string()) {
                return Ok(());
            }
            s.dirty.snapshots.insert((id, epoch));
        }
        self.flush()
    }

    /// Lets go of `holder`'s hold on `lun@snapshot` (nothing if it held
    /// none, or the snapshot is gone).
    pub fn release_snapshot(&self, lun: &str, snapshot: &str, holder: &str) -> Result<()> {
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let id = s.lun_id(lun)?;
            let Some(epoch) = s.luns[&id].snapshot_by_name(snapshot) else {
                return Ok(());
            };
            let sn = s.lun_mut(id)?.snapshots.get_mut(&epoch).expect("found");
            if !sn.holds.remove(holder) {
                return Ok(());
            }
            s.dirty.snapshots.insert((id, epoch));
        }
        self.flush()
    }

    /// Lets go of every hold of `holder`; returns how many there were.
    pub fn release_holds(&self, holder: &str) -> Result<u64> {
        let released;
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let mut changed = Vec::new();
            for l in s.luns.values_mut() {
                for (&epoch, sn) in l.snapshots.iter_mut() {
                    if sn.holds.remove(holder) {
                        changed.push((l.id, epoch));
                    }
                }
            }
            released = changed.len() as u64;
            s.dirty.snapshots.extend(changed);
        }
        if released > 0 {
            self.flush()?;
        }
        Ok(released)
    }

    /// A LUN and its visible snapshots, oldest first, without the space
    /// accounting `list_snapshots` walks the maps for: what a mirror asks
    /// of a source before every transfer.
    pub fn snapshots_brief(&self, lun: &str) -> Result<(LunInfo, Vec<SnapshotInfo>)> {
        let s = self.state.read();
        s.check_open()?;
        let id = s.lun_id(lun)?;
        let l = &s.luns[&id];
        let snaps = l
            .visible_snapshots()
            .filter_map(|(e, _)| snapshot_info(&s, id, e))
            .collect();
        Ok((lun_info(&s, l), snaps))
    }

    // -------------------------------------------------------------- diff

    /// What changed in `lun` from snapshot `base` (None: from nothing) to
    /// `target` (None: the head), from block `from_block` on, at most
    /// `extents_max` extents. Found from the maps' versions, never from
    /// data: a range differs where the version either side sees differs.
    ///
    /// `flatten`: the receiver does not hold this LUN's parent, so what a
    /// clone reads through its parent travels as the parent's content.
    /// Otherwise only the LUN's own maps count and `Unmap` means "read the
    /// parent" on a receiver that is a clone of the same snapshot.
    pub fn snapshot_diff(
        &self,
        lun: &str,
        base: Option<&str>,
        target: Option<&str>,
        flatten: bool,
        from_block: u64,
        extents_max: usize,
    ) -> Result<DiffChunk> {
        let extents_max = extents_max.clamp(1, DIFF_EXTENTS_MAX);
        let s = self.state.read();
        s.check_open()?;
        let id = s.lun_id(lun)?;
        let l = &s.luns[&id];
        let base = base.map(|b| snapshot_epoch(l, b)).transpose()?;
        let target = target.map(|t| snapshot_epoch(l, t)).transpose()?;
        if let (Some(b), Some(t)) = (base, target) {
            if b > t {
                return Err(Error::InvalidArgument(format!(
                    "snapshot \"{lun}@{}\" is newer than \"{lun}@{}\"; a difference runs from older to newer",
                    l.snapshots[&b].name, l.snapshots[&t].name
                )));
            }
        }
        let size_blocks = match target {
            Some(t) => l.snapshots[&t].size_blocks,
            None => l.size_blocks,
        };
        let base_blocks = base.map_or(0, |b| l.snapshots[&b].size_blocks);
        let mut out = Extents::default();
        // What a reader of the target sees in [pos, end), parent included.
        let resolved = |pos: u64, end: u64, out: &mut Extents| {
            let mut segs = Segments::new();
            let at = Some(target.unwrap_or(u64::MAX));
            resolve_blocks(&s, id, at, pos, end, &mut segs);
            let mut p = pos;
            for (n, src) in segs {
                match src {
                    Src::Data(_) => out.push(p, n, DiffKind::Data),
                    Src::Zero => out.push(p, n, DiffKind::Zero),
                    Src::Hole if base.is_some() => out.push(p, n, DiffKind::Unmap),
                    Src::Hole => {}
                }
                p += n;
            }
        };
        // Where to look: for an incremental, only the pages the LUN's maps
        // changed in since the base (and, for a flattened clone, what it
        // grew by since, where it reads its parent); else everything.
        let ranges: Vec<(u64, u64)> = match base {
            Some(b) if !force_full_walk() => {
                let mut r: Vec<(u64, u64)> = Vec::new();
                let mut add = |start: u64, end: u64| match r.last_mut() {
                    Some(last) if last.1 >= start => last.1 = last.1.max(end),
                    _ => r.push((start, end)),
                };
                let grown = (flatten && l.parent.is_some() && base_blocks < size_blocks)
                    .then_some(base_blocks);
                for (start, end) in l.changes.ranges_after(b) {
                    if grown.is_some_and(|g| start >= g) || start >= size_blocks {
                        break;
                    }
                    add(start, end.min(size_blocks));
                }
                if let Some(g) = grown {
                    add(g, size_blocks);
                }
                r.retain(|&(s0, e0)| s0 < e0);
                r
            }
            _ => vec![(0, size_blocks)],
        };
        let mut pos = from_block.min(size_blocks);
        // Bounded work per call: extents out, and positions looked at.
        let mut steps = 0usize;
        let mut next = None;
        'ranges: for (start, end) in ranges {
            if end <= pos {
                continue;
            }
            pos = pos.max(start);
            while pos < end {
                if out.0.len() >= extents_max || steps >= extents_max * 4 {
                    next = Some(pos);
                    break 'ranges;
                }
                steps += 1;
                if flatten && base.is_none() {
                    // A baseline of everything the LUN reads, its parent's
                    // included, a bounded stretch at a time.
                    let stop = end.min(pos + BASELINE_STEP_BLOCKS);
                    resolved(pos, stop, &mut out);
                    pos = stop;
                    continue;
                }
                if let Some(b) = base.filter(|_| pos < base_blocks) {
                    // A current version born by the base: both sides see
                    // it (the commonest case, one lookup).
                    let (len, hit) = l.head.lookup(pos, end.min(base_blocks));
                    if hit.is_some_and(|(_, birth)| birth <= b) {
                        pos += len;
                        continue;
                    }
                }
                let (tn, tv) = own_version(l, pos, end, target);
                let (bn, bv) = match base {
                    Some(b) if pos < base_blocks => {
                        own_version(l, pos, base_blocks.min(end), Some(b))
                    }
                    _ => (end - pos, None),
                };
                let n = tn.min(bn);
                if flatten && tv.is_none() && pos >= base_blocks && l.parent.is_some() {
                    // Grown since the base: the receiver has zeros there,
                    // the LUN reads its parent.
                    resolved(pos, pos + n, &mut out);
                } else if tv != bv {
                    match tv {
                        Some((Val::Data(_), _)) => out.push(pos, n, DiffKind::Data),
                        Some((Val::Zero, _)) => out.push(pos, n, DiffKind::Zero),
                        None if flatten && l.parent.is_some() => resolved(pos, pos + n, &mut out),
                        None => out.push(pos, n, DiffKind::Unmap),
                    }
                }
                pos += n;
            }
        }
        Ok(DiffChunk {
            size_blocks,
            extents: out.0,
            next_block: next,
        })
    }
}
