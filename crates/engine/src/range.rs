//! Range clones: make ranges of one LUN read what ranges of LUNs or
//! snapshots read, by sharing physical blocks (MISSION D, the seed's
//! rapid file cloning). No data moves; the cost is one map update and one
//! reference-count update per source extent, whatever its length.

use crate::engine::{resolve_blocks, resolve_in, Segments, Src};
use crate::map::Val;
use crate::space::Run;
use crate::state::State;
use crate::types::{Epoch, Error, LunId, Result, BLOCK_SIZE};
use crate::{Engine, Target};
use serde::{Deserialize, Serialize};

/// Most entries one range-clone call takes.
pub const RANGES_PER_CALL_MAX: usize = 100_000;

/// One range to clone: `length` bytes of `source` (`LUN` or `LUN@SNAPSHOT`)
/// at `source_offset` become the target's bytes at `target_offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeEntry {
    pub source: String,
    pub source_offset: u64,
    pub target_offset: u64,
    pub length: u64,
}

/// What a range clone did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeCloneReport {
    pub target: String,
    /// Entries applied.
    pub ranges: u64,
    /// Bytes the target now reads from the sources.
    pub bytes: u64,
    /// Source extents (runs of shared blocks, zeros or holes) mapped.
    pub extents: u64,
    /// Of `bytes`, how many are data blocks now shared (the rest are zeros
    /// or holes, which hold no space).
    pub shared_bytes: u64,
}

/// An entry, checked and resolved to blocks.
struct Planned {
    target_lba: u64,
    segs: Segments,
}

impl Engine {
    /// Clones every entry's source range onto `target` in one transaction,
    /// durable when this returns. Sources are read as they are before any
    /// entry is applied. Offsets and lengths must be multiples of 4 KiB;
    /// target ranges may not overlap each other, nor a range read from the
    /// target itself (snapshots of the target are fine).
    pub fn clone_ranges(&self, target: &str, entries: &[RangeEntry]) -> Result<RangeCloneReport> {
        if entries.is_empty() || entries.len() > RANGES_PER_CALL_MAX {
            return Err(Error::InvalidArgument(format!(
                "a range clone takes 1 to {RANGES_PER_CALL_MAX} ranges, not {}",
                entries.len()
            )));
        }
        if target.contains('@') {
            return Err(Error::ReadOnly(format!(
                "range clone target \"{target}\": a snapshot"
            )));
        }
        for (i, e) in entries.iter().enumerate() {
            check_entry(i, e)?;
        }
        // Every LUN whose current content is read or written is fenced, so
        // that no write is half done (data written in place, map not yet
        // updated) while its blocks are shared. Ids in order: no deadlock
        // with snapshots or group snapshots, which fence the same way.
        let fenced = self.fence_luns(|s| {
            let mut ids = vec![s.lun_id(target)?];
            for e in entries {
                if let Target::Lun(id) = resolve_in(s, &e.source)? {
                    ids.push(id);
                }
            }
            Ok(ids)
        })?;

        let report = {
            let mut s = self.state.lock();
            s.check_open()?;
            let (tid, planned, mut report) = plan_ranges(&s, target, entries)?;
            // Take every new reference before dropping any old one, so that
            // a block moving within the target is never free in between.
            for p in &planned {
                for &(n, src) in &p.segs {
                    if let Src::Data(pba) = src {
                        s.refs.incref(Run::at(pba, n));
                        report.shared_bytes += n * BLOCK_SIZE;
                    }
                }
            }
            let reads_through = s.lun(tid)?.parent.is_some();
            for p in planned {
                apply(&mut s, tid, p, reads_through);
            }
            report
        };
        drop(fenced);
        self.flush()?;
        Ok(report)
    }
}

/// Checks every entry against the state (LUNs may have gone or changed
/// size while the fences were taken) and resolves what each range reads:
/// returns the target, the plan and the report of what it will do.
fn plan_ranges(
    s: &State,
    target: &str,
    entries: &[RangeEntry],
) -> Result<(LunId, Vec<Planned>, RangeCloneReport)> {
    // Everything is checked again under the lock: LUNs may have gone
    // or changed size while we waited for the fences.
    let tid = s.lun_id(target)?;
    crate::replica::check_not_replica(&s.luns[&tid])?;
    let tsize = s.lun(tid)?.size_blocks;
    let mut planned = Vec::with_capacity(entries.len());
    let mut target_ranges = Vec::with_capacity(entries.len());
    let mut self_reads = Vec::new();
    let mut report = RangeCloneReport {
        target: target.to_string(),
        ranges: entries.len() as u64,
        bytes: 0,
        extents: 0,
        shared_bytes: 0,
    };
    for (i, e) in entries.iter().enumerate() {
        let src = resolve_in(s, &e.source)?;
        let ssize = crate::engine::target_blocks(s, src)?;
        let (first, n) = (e.source_offset / BLOCK_SIZE, e.length / BLOCK_SIZE);
        let tfirst = e.target_offset / BLOCK_SIZE;
        if first + n > ssize {
            return Err(Error::OutOfRange(format!(
                "range {i}: {}+{} lies outside {} ({} bytes)",
                e.source_offset,
                e.length,
                e.source,
                ssize * BLOCK_SIZE
            )));
        }
        if tfirst + n > tsize {
            return Err(Error::OutOfRange(format!(
                "range {i}: {}+{} lies outside {target} ({} bytes)",
                e.target_offset,
                e.length,
                tsize * BLOCK_SIZE
            )));
        }
        if src == Target::Lun(tid) {
            self_reads.push((first, n, i));
        }
        target_ranges.push((tfirst, n, i));
        let (lun, at) = match src {
            Target::Lun(id) => (id, None),
            Target::Snapshot(id, Epoch(e)) => (id, Some(e)),
        };
        let mut segs = Segments::new();
        resolve_blocks(s, lun, at, first, first + n, &mut segs);
        report.bytes += e.length;
        report.extents += segs.len() as u64;
        planned.push(Planned {
            target_lba: tfirst,
            segs,
        });
    }
    check_overlaps(&mut target_ranges, &self_reads)?;

    Ok((tid, planned, report))
}

fn check_entry(i: usize, e: &RangeEntry) -> Result<()> {
    for (what, v) in [
        ("source offset", e.source_offset),
        ("target offset", e.target_offset),
        ("length", e.length),
    ] {
        if !v.is_multiple_of(BLOCK_SIZE) {
            return Err(Error::InvalidArgument(format!(
                "range {i}: {what} {v} is not a multiple of {BLOCK_SIZE}"
            )));
        }
    }
    if e.length == 0 {
        return Err(Error::InvalidArgument(format!(
            "range {i}: length must be positive"
        )));
    }
    if e.source_offset.checked_add(e.length).is_none()
        || e.target_offset.checked_add(e.length).is_none()
    {
        return Err(Error::OutOfRange(format!(
            "range {i}: offset + length overflows"
        )));
    }
    Ok(())
}

/// Target ranges may not overlap each other or a range read from the
/// target's own current content.
fn check_overlaps(
    targets: &mut [(u64, u64, usize)],
    self_reads: &[(u64, u64, usize)],
) -> Result<()> {
    targets.sort_unstable();
    for w in targets.windows(2) {
        let ((a, an, ai), (b, _, bi)) = (w[0], w[1]);
        if a + an > b {
            return Err(Error::InvalidArgument(format!(
                "ranges {} and {} overlap in the target",
                ai.min(bi),
                ai.max(bi)
            )));
        }
    }
    for &(r, rn, ri) in self_reads {
        // The target range starting last before this read's end.
        let idx = targets.partition_point(|&(t, _, _)| t < r + rn);
        if idx > 0 {
            let (t, tn, ti) = targets[idx - 1];
            if t + tn > r {
                return Err(Error::InvalidArgument(format!(
                    "range {ri} reads blocks of the target that range {ti} writes; \
                     clone from a snapshot of the target instead"
                )));
            }
        }
    }
    Ok(())
}

/// Maps one entry's resolved segments into the target's head. Holes become
/// unmapped blocks, or recorded zeros where the target would otherwise read
/// through its parent.
fn apply(s: &mut State, tid: LunId, p: Planned, reads_through: bool) {
    let mut lba = p.target_lba;
    for (n, src) in p.segs {
        let val = match src {
            Src::Data(pba) => Some(Val::Data(pba)),
            Src::Zero => Some(Val::Zero),
            Src::Hole if reads_through => Some(Val::Zero),
            Src::Hole => None,
        };
        s.set_head(tid, lba, n, val);
        lba += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps() {
        let mut t = vec![(0, 4, 0), (4, 4, 1)];
        assert!(check_overlaps(&mut t, &[]).is_ok());
        let mut t = vec![(0, 5, 0), (4, 4, 1)];
        assert!(check_overlaps(&mut t, &[]).is_err());
        let mut t = vec![(10, 4, 0)];
        assert!(check_overlaps(&mut t, &[(0, 10, 0)]).is_ok());
        assert!(check_overlaps(&mut t, &[(14, 10, 0)]).is_ok());
        assert!(check_overlaps(&mut t, &[(0, 11, 0)]).is_err());
        assert!(check_overlaps(&mut t, &[(13, 1, 0)]).is_err());
        assert!(check_overlaps(&mut t, &[(5, 100, 0)]).is_err());
    }
}
