//! Helpers over the state: resolving names and blocks, and describing
//! LUNs, snapshots and groups.

use crate::engine::*;
use crate::map::{HeadMap, HistoryMap, Val};
use crate::space::Run;
use crate::state::{Group, Lun, State, Through};
use crate::types::*;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// `LUN` or `LUN@SNAPSHOT` (visible snapshots only) under the state lock.
pub(crate) fn resolve_in(s: &State, name: &str) -> Result<Target> {
    match name.split_once('@') {
        None => Ok(Target::Lun(s.lun_id(name)?)),
        Some((lun, snap)) => {
            let id = s.lun_id(lun)?;
            let epoch = s.luns[&id]
                .snapshot_by_name(snap)
                .ok_or_else(|| Error::not_found("snapshot", name))?;
            Ok(Target::Snapshot(id, Epoch(epoch)))
        }
    }
}

pub(crate) fn target_blocks(s: &State, target: Target) -> Result<u64> {
    match target {
        Target::Lun(id) => Ok(s
            .lun(id)
            .map_err(|_| Error::not_found("LUN", format!("#{id} (deleted)")))?
            .size_blocks),
        Target::Snapshot(id, e) => s
            .lun(id)
            .ok()
            .and_then(|l| l.snapshots.get(&e.0))
            .filter(|sn| !sn.hidden)
            .map(|sn| sn.size_blocks)
            .ok_or_else(|| Error::not_found("snapshot", format!("#{id}@{e} (deleted)"))),
    }
}

/// Blocks a reader of `target` sees (a replica shows its view's size).
pub(crate) fn visible_target_blocks(s: &State, target: Target) -> Result<u64> {
    match target {
        Target::Lun(id) => {
            Ok(crate::replica::visible_blocks(s.lun(id).map_err(|_| {
                Error::not_found("LUN", format!("#{id} (deleted)"))
            })?))
        }
        Target::Snapshot(..) => target_blocks(s, target),
    }
}

/// Appends `(blocks, source)` segments covering `[pos, end)` of `lun` as
/// seen at epoch `at` (`None`: now), following the parent for what the LUN
/// itself does not map.
pub(crate) fn resolve_blocks(
    s: &State,
    lun: LunId,
    at: Option<u64>,
    mut pos: u64,
    end: u64,
    out: &mut Segments,
) {
    let Some(l) = s.luns.get(&lun) else {
        out.push((end - pos, Src::Hole));
        return;
    };
    // A replica's readers see its last complete transfer, not the head a
    // transfer is changing (none yet: zeros).
    let at = match (at, l.replica) {
        (None, Some(r)) => match r.view {
            Some(view) => Some(view),
            None => {
                out.push((end - pos, Src::Hole));
                return;
            }
        },
        _ => at,
    };
    // A clone level that maps nothing of its own (typical of golden-image
    // chains) passes the whole range to its parent in one step, so deep
    // chains cost a hash lookup per level, not map searches.
    if l.maps_nothing() {
        let through = match s.through(l) {
            Some(t) if pos < t.limit_blocks => {
                let through = end.min(t.limit_blocks);
                resolve_through(s, l, t, pos, through, out);
                through
            }
            _ => pos,
        };
        if through < end {
            push_seg(out, end - through, Src::Hole);
        }
        return;
    }
    while pos < end {
        if at.is_none() {
            let (n, val) = l.head.lookup_current(pos, end);
            push_own(s, l, pos, n, val, out);
            pos += n;
            continue;
        }
        let (len, hit) = l.head.lookup(pos, end);
        let own = match (hit, at) {
            (Some((v, _)), None) => Some((len, Some(v))),
            (Some((v, birth)), Some(e)) if birth <= e => Some((len, Some(v))),
            (_, None) => Some((len, None)),
            (_, Some(e)) => {
                let (hl, old) = l.history.lookup(pos, e, pos + len);
                Some((hl, old.map(|(v, _)| v)))
            }
        };
        let (n, val) = own.expect("always set");
        push_own(s, l, pos, n, val, out);
        pos += n;
    }
}

/// Appends what `n` blocks from `pos` read as, given what LUN `l` itself
/// maps there (`None`: nothing, so its parent's blocks or a hole).
fn push_own(s: &State, l: &Lun, pos: u64, n: u64, val: Option<Val>, out: &mut Segments) {
    match val {
        Some(Val::Data(p)) => push_seg(out, n, Src::Data(p)),
        Some(Val::Zero) => push_seg(out, n, Src::Zero),
        None => match s.through(l) {
            Some(t) if pos < t.limit_blocks => {
                let through = (pos + n).min(t.limit_blocks);
                resolve_through(s, l, t, pos, through, out);
                if through < pos + n {
                    push_seg(out, pos + n - through, Src::Hole);
                }
            }
            _ => push_seg(out, n, Src::Hole),
        },
    }
}

/// Resolves `[pos, end)` (below `t.limit_blocks`) as clone `l` reads it
/// through its parent `t` (`s.through(l)`): through the chain's owner index
/// where it has one (one search whatever the depth), else level by level.
pub(crate) fn resolve_through(
    s: &State,
    l: &Lun,
    t: Through,
    pos: u64,
    end: u64,
    out: &mut Segments,
) {
    let gens = (s.shape_gen, s.chain_gen);
    let cached = l.chain_cache.lock();
    let ix = match &*cached {
        Some((g, ix)) if *g == gens => ix.as_deref(),
        _ => {
            drop(cached);
            match s.chain_index(t) {
                crate::chain::Cached::Known(ix) => {
                    *l.chain_cache.lock() = Some((gens, ix));
                    return resolve_through(s, l, t, pos, end, out);
                }
                // Until the background build is done: level by level.
                crate::chain::Cached::Pending => None,
            }
        }
    };
    let Some(ix) = ix else {
        return resolve_blocks(s, t.lun, Some(t.epoch), pos, end, out);
    };
    let mut pos = pos;
    while pos < end {
        let (n, level) = ix.lookup(pos, end);
        // Runs of upper levels lie below their limits; the bottom's limit
        // cuts what falls to it.
        let upto = (pos + n).min(level.limit_blocks.max(pos));
        if pos < upto {
            resolve_blocks(s, level.lun, Some(level.epoch), pos, upto, out);
        }
        if upto < pos + n {
            push_seg(out, pos + n - upto, Src::Hole);
        }
        pos += n;
    }
}

pub(crate) fn push_seg(out: &mut Segments, n: u64, src: Src) {
    if let Some((len, last)) = out.last_mut() {
        let merged = match (*last, src) {
            (Src::Data(a), Src::Data(b)) => a.plus(*len) == b,
            (Src::Zero, Src::Zero) | (Src::Hole, Src::Hole) => true,
            _ => false,
        };
        if merged {
            *len += n;
            return;
        }
    }
    out.push((n, src));
}

pub(crate) fn remove_snapshot(s: &mut State, id: LunId, epoch: u64) {
    let l = s.luns.get_mut(&id).expect("snapshot's LUN");
    if l.snapshots.remove(&epoch).is_some_and(|sn| sn.hidden) {
        // Clones read through it until the last went: drop chain indexes
        // that may name it (memory only; nobody reads through it now).
        s.chain_gen += 1;
    }
    let l = s.luns.get_mut(&id).expect("snapshot's LUN");
    l.deleting.push(epoch);
    l.gc_needed = true;
    s.dirty.snapshots.insert((id, epoch));
    s.dirty.luns.insert(id);
}

/// History ranges (or reference-count lookups) one hold of the state lock
/// covers while snapshots are listed. Measured with 1,000 snapshots and 1 M
/// extents (`blockfork-bench engine --only listing`): 256 gives a read p99
/// of 64 µs beside the listing loop and a 138 ms listing; 64 gives 56 µs
/// and 339 ms (the hand-offs cost more than the shorter holds save).
pub(crate) const LISTING_CHUNK: usize = 256;

/// Adds to `only` the runs each snapshot alone sees, from the history ranges
/// of `l` starting at `from`, at most `LISTING_CHUNK` of them. Returns where
/// to go on, or None at the end.
pub(crate) fn exclusive_runs_chunk(
    l: &Lun,
    from: u64,
    only: &mut HashMap<u64, Vec<Run>>,
) -> Option<u64> {
    for (n, (lba, r)) in l.history.iter_from(from).enumerate() {
        if n == LISTING_CHUNK {
            return Some(lba);
        }
        for v in &r.versions {
            let Val::Data(pba) = v.val else { continue };
            let mut seers = l.snapshots.range(v.birth..v.death).map(|(&e, _)| e);
            if let (Some(e), None) = (seers.next(), seers.next()) {
                only.entry(e).or_default().push(Run {
                    start: pba,
                    len: BlockCount::new(r.len),
                });
            }
        }
    }
    None
}

pub(crate) fn new_lun(
    id: LunId,
    name: String,
    size_blocks: u64,
    created: u64,
    parent: Option<(LunId, Epoch)>,
) -> Lun {
    Lun {
        id,
        name,
        size_blocks,
        created,
        parent,
        parent_limit_blocks: if parent.is_some() { size_blocks } else { 0 },
        created_epoch: 0,
        through_cache: parking_lot::Mutex::new(None),
        chain_cache: parking_lot::Mutex::new(None),
        snapshots: BTreeMap::new(),
        deleting: Vec::new(),
        gc_needed: false,
        head: HeadMap::default(),
        history: HistoryMap::default(),
        fence: Arc::new(RwLock::new(())),
        maps: Default::default(),
        replica: None,
        changes: Default::default(),
        class: crate::redundancy::Redundancy::None,
        thick: false,
        snapshot_reserve_percent: 0,
        relayout: None,
    }
}

pub(crate) fn lun_info(s: &State, l: &Lun) -> LunInfo {
    let allocated = l.head.data_blocks();
    LunInfo {
        id: l.id.0,
        name: l.name.clone(),
        size_bytes: l.size_blocks * BLOCK_SIZE,
        allocated_bytes: allocated * BLOCK_SIZE,
        snapshot_count: l.visible_snapshots().count() as u64,
        created: l.created,
        parent: l.parent.and_then(|(p, e)| {
            let pl = s.luns.get(&p)?;
            let sn = pl.snapshots.get(&e.0)?;
            Some(format!(
                "{}@{}{}",
                pl.name,
                sn.name,
                if sn.hidden { " (deleted)" } else { "" }
            ))
        }),
        clones: clones_of(s, |(p, _)| p == l.id),
        maps: l.maps.iter().cloned().collect(),
        replica: l.replica.is_some(),
        replica_view: l
            .replica
            .and_then(|r| r.view)
            .and_then(|v| l.snapshots.get(&v))
            .map(|sn| sn.name.clone()),
        redundancy: l.class.to_string(),
        reserve: l.thick,
        snapshot_reserve_percent: l.snapshot_reserve_percent,
        reserved_bytes: crate::reserve::outstanding(l) * BLOCK_SIZE,
        relayout_done_bytes: l.relayout.map(|c| c.min(l.size_blocks) * BLOCK_SIZE),
    }
}

/// Names of the clones whose parent matches.
pub(crate) fn clones_of(s: &State, matches: impl Fn((LunId, Epoch)) -> bool) -> Vec<String> {
    let mut v: Vec<String> = s
        .luns
        .values()
        .filter(|c| c.parent.is_some_and(&matches))
        .map(|c| c.name.clone())
        .collect();
    v.sort();
    v
}

pub(crate) fn snapshot_info(s: &State, id: LunId, epoch: u64) -> Option<SnapshotInfo> {
    let l = s.luns.get(&id)?;
    let sn = l.snapshots.get(&epoch)?;
    Some(SnapshotInfo {
        lun: l.name.clone(),
        name: sn.name.clone(),
        epoch,
        created: sn.created,
        size_bytes: sn.size_blocks * BLOCK_SIZE,
        exclusive_bytes: 0,
        group: sn.group.clone(),
        clones: clones_of(s, |(p, e)| p == id && e.0 == epoch),
        holds: sn.holds.iter().cloned().collect(),
    })
}

pub(crate) fn group_info(name: &str, g: &Group, s: &State) -> GroupInfo {
    GroupInfo {
        name: name.to_string(),
        epoch: g.epoch,
        created: g.created,
        members: g
            .members
            .iter()
            .map(|(id, n)| {
                s.luns
                    .get(id)
                    .map(|l| l.name.clone())
                    .unwrap_or_else(|| n.clone())
            })
            .collect(),
    }
}
