//! What mirroring needs of the engine on a destination (decision 024):
//! LUNs (replicas) whose readers see the last complete snapshot while a
//! transfer changes the head. The source's side, snapshot differences and
//! holds, is `diff.rs`.
//!
//! A replica's head is the receiving side of a transfer: only the
//! `apply_*` calls write it. Clients read it through `view`, the newest
//! snapshot a transfer completed (`publish_replica`), so that a reader
//! never sees a transfer half applied; for a group, one commit moves every
//! member's view at once.

use crate::diff::{own_version, DiffKind};
use crate::engine::*;
use crate::map::Val;
use crate::space::Run;
use crate::state::{Lun, Replica, State};
use crate::types::*;

/// A snapshot a transfer completed on a destination: its name, creation
/// time and group as the source has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSnapshot {
    pub lun: String,
    pub snapshot: String,
    pub created: u64,
}

/// Refuses a change to a replica's content or shape by anyone but a
/// transfer.
pub(crate) fn check_not_replica(l: &Lun) -> Result<()> {
    if l.replica.is_some() {
        return Err(Error::ReadOnly(format!(
            "LUN \"{}\" (a mirror destination; `blockfork mirror break {}` makes it writable)",
            l.name, l.name
        )));
    }
    Ok(())
}

/// A client (`transfer` false) may not change a replica; a transfer may
/// change nothing else.
pub(crate) fn check_writer(l: &Lun, transfer: bool) -> Result<()> {
    match (transfer, l.replica.is_some()) {
        (false, _) => check_not_replica(l),
        (true, true) => Ok(()),
        (true, false) => Err(Error::InvalidArgument(format!(
            "LUN \"{}\" is no longer a mirror destination (the mirror was broken or deleted)",
            l.name
        ))),
    }
}

/// Blocks a client sees in LUN `l`: a replica shows its view's size.
pub(crate) fn visible_blocks(l: &Lun) -> u64 {
    match l.replica {
        Some(Replica { view: Some(v) }) => l
            .snapshots
            .get(&v)
            .map(|sn| sn.size_blocks)
            .unwrap_or(l.size_blocks),
        _ => l.size_blocks,
    }
}

/// A hold's holder: 1 to 255 printable ASCII characters, no spaces.
pub(crate) fn validate_holder(holder: &str) -> Result<()> {
    if holder.is_empty() || holder.len() > 255 || !holder.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument(format!(
            "holder {holder:?} must be 1 to 255 printable characters without spaces"
        )));
    }
    Ok(())
}

fn replica_id(s: &State, lun: &str) -> Result<LunId> {
    let id = s.lun_id(lun)?;
    if s.luns[&id].replica.is_none() {
        return Err(Error::InvalidArgument(format!(
            "LUN \"{lun}\" is not a mirror destination"
        )));
    }
    Ok(id)
}

pub(crate) fn snapshot_epoch(l: &Lun, name: &str) -> Result<u64> {
    l.snapshot_by_name(name)
        .ok_or_else(|| Error::not_found("snapshot", format!("{}@{name}", l.name)))
}

/// Makes LUN `id`'s head what epoch `at` of it sees, as a restore does:
/// metadata only, in the changed ranges only.
pub(crate) fn restore_head(s: &mut State, id: LunId, at: u64) {
    // Defensive: a restore changes a head, not what a snapshot sees.
    s.chain_gen += 1;
    let l = &s.luns[&id];
    let snap_blocks = l.snapshots[&at].size_blocks;
    let end = l.size_blocks.max(snap_blocks);
    // Where the head differs from what the snapshot sees: the head version
    // is newer than the snapshot, or absent.
    let mut changes: Vec<(u64, u64, Option<Val>)> = Vec::new();
    let mut pos = 0;
    while pos < end {
        if pos >= snap_blocks {
            changes.push((pos, end - pos, None));
            break;
        }
        let (len, hit) = l.head.lookup(pos, snap_blocks);
        match hit {
            Some((_, birth)) if birth <= at => {}
            _ => {
                let mut p = pos;
                while p < pos + len {
                    let (hl, old) = l.history.lookup(p, at, pos + len);
                    changes.push((p, hl, old.map(|(v, _)| v)));
                    p += hl;
                }
            }
        }
        pos += len;
    }
    for &(lba, len, val) in &changes {
        if let Some(Val::Data(pba)) = val {
            s.refs.incref(Run::at(pba, len));
        }
        s.set_head(id, lba, len, val);
    }
    let l = s.lun_mut(id).expect("restored LUN is live");
    l.size_blocks = snap_blocks;
    s.dirty.luns.insert(id);
}

impl Engine {
    // ---------------------------------------------------------- replicas

    /// Creates LUN `name` as a mirror destination: empty, or with `parent`
    /// (`LUN@SNAPSHOT`) a clone of a snapshot already mirrored here.
    pub fn create_replica(
        &self,
        name: &str,
        size_bytes: u64,
        parent: Option<&str>,
    ) -> Result<LunInfo> {
        match parent {
            None => self.create_lun_with(
                name,
                size_bytes,
                true,
                None,
                crate::lun::Reservation::default(),
            ),
            Some(p) => {
                let mut v = self.create_clones_with(p, &[name.to_string()], false, true)?;
                Ok(v.remove(0))
            }
        }
    }

    /// Checks that `lun` is a replica and returns what to write to.
    pub fn replica_target(&self, lun: &str) -> Result<Target> {
        let s = self.state.read();
        s.check_open()?;
        Ok(Target::Lun(replica_id(&s, lun)?))
    }

    fn replica_of(&self, target: Target) -> Result<LunId> {
        let id = self.writable(target)?;
        let s = self.state.read();
        s.check_open()?;
        match s.lun(id)?.replica {
            Some(_) => Ok(id),
            None => Err(Error::InvalidArgument(format!(
                "LUN \"{}\" is not a mirror destination",
                s.luns[&id].name
            ))),
        }
    }

    /// A transfer's data: whole blocks at block `lba` of a replica's head.
    pub fn apply_data(&self, target: Target, lba: u64, data: &[u8]) -> Result<()> {
        self.replica_of(target)?;
        if !(data.len() as u64).is_multiple_of(BLOCK_SIZE) {
            return Err(Error::InvalidArgument(format!(
                "a transfer writes whole blocks, not {} bytes",
                data.len()
            )));
        }
        let offset = lba
            .checked_mul(BLOCK_SIZE)
            .ok_or_else(|| Error::OutOfRange(format!("block {lba} lies outside any volume")))?;
        self.write_unchecked(target, offset, data, false)
    }

    /// A transfer's zeros or unmapped range at a replica's head.
    pub fn apply_extent(
        &self,
        target: Target,
        lba: u64,
        blocks: u64,
        kind: DiffKind,
    ) -> Result<()> {
        self.replica_of(target)?;
        let (offset, len) = lba
            .checked_mul(BLOCK_SIZE)
            .zip(blocks.checked_mul(BLOCK_SIZE))
            .ok_or_else(|| {
                Error::OutOfRange(format!("blocks {lba}+{blocks} lie outside any volume"))
            })?;
        let how = match kind {
            DiffKind::Zero => Zeroing::Allocated,
            DiffKind::Unmap => Zeroing::Unmap,
            DiffKind::Data => {
                return Err(Error::InvalidArgument(
                    "data travels with its bytes (apply_data)".into(),
                ))
            }
        };
        self.zero_range_unchecked(target, offset, len, how, false)
    }

    /// Sets a replica's head size to what the transfer's source has.
    pub fn apply_size(&self, target: Target, size_blocks: u64) -> Result<()> {
        let id = self.replica_of(target)?;
        validate_lun_size(size_blocks.saturating_mul(BLOCK_SIZE))?;
        let fenced = self.fence_luns(|_| Ok(vec![id]))?;
        {
            let mut s = self.state.lock();
            s.check_open()?;
            // Plain: what a regrown clone reads there comes with the
            // transfer (the source's own zeros travel as a Zero extent).
            resize_head(&mut s, id, size_blocks, false);
        }
        drop(fenced);
        self.flush()
    }

    /// Completes a transfer: a snapshot of each replica's head with the
    /// source's name and creation time (and group), held by `holder`
    /// instead of the view before, and every reader moved to it, in one
    /// durable commit.
    pub fn publish_replica(
        &self,
        snaps: &[ReplicaSnapshot],
        group: Option<&str>,
        holder: &str,
    ) -> Result<()> {
        validate_holder(holder)?;
        let requests: Vec<(String, String)> = snaps
            .iter()
            .map(|r| (r.lun.clone(), r.snapshot.clone()))
            .collect();
        for (lun, snap) in &requests {
            validate_lun_name(lun)?;
            validate_snapshot_name(snap)?;
        }
        let fenced = self.fence_luns(|s| snaps.iter().map(|r| replica_id(s, &r.lun)).collect())?;
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let planned = crate::snapshot::plan_snapshots(&s, &requests, group)?;
            let created: Vec<u64> = snaps.iter().map(|r| r.created).collect();
            let taken = crate::snapshot::record_snapshots(&mut s, planned, group, &created);
            for (id, epoch) in taken {
                let l = s.lun_mut(id)?;
                l.replica = Some(Replica { view: Some(epoch) });
                let mut changed = Vec::new();
                for (&e, sn) in l.snapshots.iter_mut() {
                    let held = if e == epoch {
                        sn.holds.insert(holder.to_string())
                    } else {
                        sn.holds.remove(holder)
                    };
                    if held {
                        changed.push((id, e));
                    }
                }
                s.dirty.snapshots.extend(changed);
                s.dirty.luns.insert(id);
            }
        }
        drop(fenced);
        self.flush()
    }

    /// Discards what a transfer wrote to a replica's head since its view
    /// (an aborted or mismatched transfer).
    pub fn rollback_replica(&self, lun: &str) -> Result<()> {
        let fenced = self.fence_luns(|s| Ok(vec![replica_id(s, lun)?]))?;
        let id = fenced.id();
        {
            let mut s = self.state.lock();
            s.check_open()?;
            match s.lun(id)?.replica.and_then(|r| r.view) {
                Some(view) => restore_head(&mut s, id, view),
                None => {
                    let blocks = s.lun(id)?.size_blocks;
                    s.set_head(id, 0, blocks, None);
                }
            }
        }
        drop(fenced);
        self.flush()
    }

    /// Makes a replica's head what `snapshot` holds (readers keep their
    /// view): an incremental from an older common snapshot than the view.
    pub fn rebase_replica(&self, lun: &str, snapshot: &str) -> Result<()> {
        let fenced = self.fence_luns(|s| Ok(vec![replica_id(s, lun)?]))?;
        let id = fenced.id();
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let at = snapshot_epoch(&s.luns[&id], snapshot)?;
            restore_head(&mut s, id, at);
        }
        drop(fenced);
        self.flush()
    }

    /// Makes a replica an ordinary writable LUN at its last complete
    /// snapshot (what a transfer had half written is discarded). Local and
    /// metadata only. Returns the snapshot's name (None: no transfer had
    /// completed, and the LUN is empty).
    pub fn break_replica(&self, lun: &str) -> Result<Option<String>> {
        // One fenced change: no transfer write lands between the rollback
        // and the end of the replica (those re-check under the fence).
        let fenced = self.fence_luns(|s| Ok(vec![replica_id(s, lun)?]))?;
        let id = fenced.id();
        let view = {
            let mut s = self.state.lock();
            s.check_open()?;
            let view = s.lun(id)?.replica.and_then(|r| r.view);
            match view {
                Some(v) => restore_head(&mut s, id, v),
                None => {
                    let blocks = s.lun(id)?.size_blocks;
                    s.set_head(id, 0, blocks, None);
                }
            }
            let l = s.lun_mut(id)?;
            let name = view
                .and_then(|v| l.snapshots.get(&v))
                .map(|sn| sn.name.clone());
            l.replica = None;
            s.dirty.luns.insert(id);
            name
        };
        drop(fenced);
        self.flush()?;
        Ok(view)
    }

    /// Turns a writable LUN (back) into a replica whose readers see
    /// `snapshot`: for a resync or a reverse. With `safety`, first keeps
    /// the head as it was in a snapshot of that name, when it differs from
    /// `snapshot`. The head goes back to `snapshot`.
    /// `holder` holds `snapshot` (and nothing else of the LUN) from now
    /// on. Returns whether it took the safety snapshot.
    pub fn make_replica(
        &self,
        lun: &str,
        snapshot: &str,
        safety: Option<&str>,
        holder: &str,
    ) -> Result<bool> {
        validate_holder(holder)?;
        if let Some(name) = safety {
            validate_snapshot_name(name)?;
        }
        let fenced = self.fence_lun(lun)?;
        let id = fenced.id();
        let safety_taken = {
            let mut s = self.state.lock();
            s.check_open()?;
            let at = snapshot_epoch(&s.luns[&id], snapshot)?;
            let l = &s.luns[&id];
            let changed = l.size_blocks != l.snapshots[&at].size_blocks || head_differs(l, at);
            let safety_taken = match safety {
                Some(name) if changed => {
                    let planned = crate::snapshot::plan_snapshots(
                        &s,
                        &[(lun.to_string(), name.to_string())],
                        None,
                    )?;
                    crate::snapshot::record_snapshots(&mut s, planned, None, &[now_secs()]);
                    true
                }
                _ => false,
            };
            restore_head(&mut s, id, at);
            let l = s.lun_mut(id)?;
            l.replica = Some(Replica { view: Some(at) });
            let mut changed = Vec::new();
            for (&e, sn) in l.snapshots.iter_mut() {
                let differs = if e == at {
                    sn.holds.insert(holder.to_string())
                } else {
                    sn.holds.remove(holder)
                };
                if differs {
                    changed.push((id, e));
                }
            }
            s.dirty.snapshots.extend(changed);
            s.dirty.luns.insert(id);
            safety_taken
        };
        drop(fenced);
        self.flush()?;
        Ok(safety_taken)
    }
}

/// Whether `l`'s head differs anywhere from what epoch `at` sees.
fn head_differs(l: &Lun, at: u64) -> bool {
    let blocks = l.size_blocks.min(l.snapshots[&at].size_blocks);
    let mut pos = 0;
    while pos < blocks {
        let (tn, tv) = own_version(l, pos, blocks, None);
        let (bn, bv) = own_version(l, pos, blocks, Some(at));
        if tv != bv {
            return true;
        }
        pos += tn.min(bn);
    }
    false
}

/// Sets LUN `id`'s size to `size_blocks` as a resize does; with
/// `hide_parent`, a clone regrown over blocks it once read through its
/// parent reads zeros there.
pub(crate) fn resize_head(s: &mut State, id: LunId, new_blocks: u64, hide_parent: bool) {
    let old_blocks = s.luns[&id].size_blocks;
    if new_blocks < old_blocks {
        s.set_head(id, new_blocks, old_blocks - new_blocks, None);
    } else if new_blocks > old_blocks && hide_parent {
        // A clone regrown over blocks it once read through its parent
        // must read zeros there now; its older snapshots still read the
        // parent (the zeros are a newer version).
        let l = &s.luns[&id];
        if l.parent.is_some() && old_blocks < l.parent_limit_blocks {
            let end = new_blocks.min(l.parent_limit_blocks);
            s.set_head(id, old_blocks, end - old_blocks, Some(Val::Zero));
        }
    }
    let l = s.luns.get_mut(&id).expect("resized LUN is live");
    l.size_blocks = new_blocks;
    s.dirty.luns.insert(id);
}
