//! Snapshots, restores and group (consistency) snapshots.

use crate::engine::*;
use crate::state::{GcJob, Group, Snapshot, State};

use crate::types::*;

impl Engine {
    // ------------------------------------------------------------- snapshots

    /// Takes one snapshot per `(lun, snapshot)` pair, all at one point in
    /// time (every LUN fenced together), in one durable commit. With
    /// `group`, records a group snapshot of that name over them.
    pub fn create_snapshots(
        &self,
        requests: &[(String, String)],
        group: Option<&str>,
    ) -> Result<Vec<SnapshotInfo>> {
        if requests.is_empty() {
            return Err(Error::InvalidArgument("no snapshot requested".into()));
        }
        for (lun, snap) in requests {
            validate_lun_name(lun)?;
            validate_snapshot_name(snap)?;
        }
        if let Some(g) = group {
            validate_snapshot_name(g)?;
        }
        let fenced =
            self.fence_luns(|s| requests.iter().map(|(lun, _)| s.lun_id(lun)).collect())?;
        let taken = {
            let mut s = self.state.lock();
            s.check_open()?;
            let planned = plan_snapshots(&s, requests, group)?;
            for (id, _) in &planned {
                crate::replica::check_not_replica(&s.luns[id])?;
            }
            let created = vec![now_secs(); planned.len()];
            record_snapshots(&mut s, planned, group, &created)
        };
        drop(fenced);
        self.flush()?;
        let infos: Vec<SnapshotInfo> = {
            let s = self.state.read();
            taken
                .into_iter()
                .filter_map(|(id, e)| snapshot_info(&s, id, e))
                .collect()
        };
        match group {
            Some(g) => self.note(
                "group-snapshot-created",
                g,
                format!(
                    "Group snapshot \"{g}\" taken of {} LUN(s): {}.",
                    infos.len(),
                    infos
                        .iter()
                        .map(|i| i.lun.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            None => {
                for i in &infos {
                    let object = format!("{}@{}", i.lun, i.name);
                    self.note(
                        "snapshot-created",
                        &object,
                        format!("Snapshot \"{object}\" taken."),
                    );
                }
            }
        }
        Ok(infos)
    }

    pub fn create_snapshot(&self, lun: &str, snapshot: &str) -> Result<SnapshotInfo> {
        let mut v = self.create_snapshots(&[(lun.to_string(), snapshot.to_string())], None)?;
        Ok(v.remove(0))
    }

    /// Snapshots of one LUN, or of every LUN, oldest first.
    /// The walk holds the state lock shared (decision 020), so reads run
    /// beside it; changes wait for no more than one chunk: each LUN's
    /// history is walked (for the space each snapshot alone holds) in
    /// chunks of `LISTING_CHUNK` ranges, and the reference counts looked up
    /// in chunks too, letting a waiting writer in between them. A listing
    /// that runs beside writes to the same LUN reports each snapshot's
    /// exclusive space as of the chunks it read (a report, not a promise:
    /// deleting a snapshot frees what its reclaim job finds). Measured by
    /// `blockfork-bench engine --only listing`.
    pub fn list_snapshots(&self, lun: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let ids: Vec<LunId> = {
            let s = self.state.read();
            s.check_open()?;
            match lun {
                Some(name) => vec![s.lun_id(name)?],
                None => s.names.values().copied().collect(),
            }
        };
        let mut out = Vec::new();
        for id in ids {
            match self.list_lun_snapshots(id)? {
                Some(infos) => out.extend(infos),
                // The one LUN asked for went away meanwhile.
                None if lun.is_some() => {
                    return Err(Error::not_found("LUN", lun.unwrap_or_default()))
                }
                None => {} // deleted meanwhile: not listed
            }
        }
        Ok(out)
    }

    /// One LUN's snapshots with their exclusive space, walked in chunks;
    /// None if the LUN is gone.
    fn list_lun_snapshots(&self, id: LunId) -> Result<Option<Vec<SnapshotInfo>>> {
        let mut only: std::collections::HashMap<u64, Vec<crate::space::Run>> = Default::default();
        let mut from = Some(0);
        let mut s = self.state.read();
        while let Some(at) = from {
            s.check_open()?;
            let Some(l) = s.luns.get(&id) else {
                return Ok(None);
            };
            from = exclusive_runs_chunk(l, at, &mut only);
            s.bump();
        }
        drop(s);
        // Overlaps among a snapshot's own runs, off the lock.
        let counted: Vec<_> = only
            .into_iter()
            .map(|(e, runs)| (e, multiplicity(&runs)))
            .collect();
        let mut exclusive: std::collections::HashMap<u64, u64> = Default::default();
        let mut s = self.state.read();
        for (epoch, runs) in counted {
            for chunk in runs.chunks(LISTING_CHUNK) {
                s.check_open()?;
                let blocks: u64 = chunk
                    .iter()
                    .map(|&(run, count)| s.refs.blocks_with_refs_at_most(run, count))
                    .sum();
                *exclusive.entry(epoch).or_default() += blocks;
                s.bump();
            }
        }
        s.check_open()?;
        let Some(l) = s.luns.get(&id) else {
            return Ok(None);
        };
        Ok(Some(
            l.visible_snapshots()
                .map(|(epoch, _)| {
                    let mut info = snapshot_info(&s, id, epoch).expect("listed");
                    info.exclusive_bytes = exclusive.get(&epoch).copied().unwrap_or(0) * BLOCK_SIZE;
                    info
                })
                .collect(),
        ))
    }

    /// Deletes a snapshot. Its blocks that nobody else sees are reclaimed
    /// by a background job (see `jobs`).
    pub fn delete_snapshot(&self, lun: &str, snapshot: &str) -> Result<()> {
        let (id, epoch) = {
            let mut s = self.state.lock();
            s.check_open()?;
            let id = s.lun_id(lun)?;
            let l = &s.luns[&id];
            let epoch = l
                .snapshot_by_name(snapshot)
                .ok_or_else(|| Error::not_found("snapshot", format!("{lun}@{snapshot}")))?;
            if let Some(holder) = l.snapshots[&epoch].holds.iter().next() {
                return Err(Error::HasDependents(format!(
                    "snapshot \"{lun}@{snapshot}\" is held by mirror \"{holder}\", which needs it as a common base; it is released when the mirror moves past it or is deleted"
                )));
            }
            if let Some(g) = &l.snapshots[&epoch].group {
                return Err(Error::HasDependents(format!(
                    "snapshot \"{lun}@{snapshot}\" belongs to group snapshot \"{g}\"; delete the group snapshot instead"
                )));
            }
            if s.luns
                .values()
                .any(|c| c.parent == Some((id, Epoch(epoch))))
            {
                // Clones read through it: hide it now (gone from listings,
                // exports and its name free again), delete it when the last
                // of them is split or deleted.
                let sn = s
                    .lun_mut(id)?
                    .snapshots
                    .get_mut(&epoch)
                    .expect("found above");
                sn.hidden = true;
                s.dirty.snapshots.insert((id, epoch));
                drop(s);
                self.flush()?;
                self.note(
                    "snapshot-deleted",
                    &format!("{lun}@{snapshot}"),
                    format!("Snapshot \"{lun}@{snapshot}\" deleted; its blocks stay while clones read through it."),
                );
                return Ok(());
            }
            remove_snapshot(&mut s, id, epoch);
            (id, epoch)
        };
        self.finish_snapshot_removal(&[(id, epoch)])?;
        self.note(
            "snapshot-deleted",
            &format!("{lun}@{snapshot}"),
            format!("Snapshot \"{lun}@{snapshot}\" deleted."),
        );
        Ok(())
    }

    /// After snapshot records were removed in memory: make it durable, then
    /// let writes overwrite what only those snapshots saw, and reclaim it.
    pub(crate) fn finish_snapshot_removal(&self, removed: &[(LunId, u64)]) -> Result<()> {
        self.flush()?;
        #[cfg(feature = "sim")]
        self.sim_hooks
            .fire(crate::sim::HookPoint::SnapshotRemovalDurable);
        let mut s = self.state.lock();
        for &(id, epoch) in removed {
            let next_job_id = s.next_job_id;
            let Some(l) = s.luns.get_mut(&id) else {
                continue;
            };
            l.deleting.retain(|&e| e != epoch);
            // What only this snapshot saw is garbage from now on. A job
            // that finished meanwhile (it still kept what `deleting`
            // named) cleared the flag; the job made here must find it set
            // in the store, or a crash would leave the garbage unowned.
            l.gc_needed = true;
            s.dirty.luns.insert(id);
            let l = s.luns.get_mut(&id).expect("found above");
            let ranges_total = l.history.len() as u64;
            let job = s.jobs.entry(id).or_insert(GcJob {
                id: next_job_id,
                lun: id,
                cursor: 0,
                ranges_done: 0,
                ranges_total,
                rescan: false,
                started: now_secs(),
                freed_blocks: 0,
            });
            if job.id == next_job_id {
                s.next_job_id += 1;
            } else {
                job.rescan = true;
            }
        }
        Ok(())
    }

    /// Makes the LUN's content the snapshot's, without copying data. Newer
    /// snapshots stay as they are.
    pub fn restore_snapshot(&self, lun: &str, snapshot: &str) -> Result<()> {
        let fenced = self.fence_lun(lun)?;
        let id = fenced.id();
        {
            let mut s = self.state.lock();
            s.check_open()?;
            let l = &s.luns[&id];
            crate::replica::check_not_replica(l)?;
            let at = l
                .snapshot_by_name(snapshot)
                .ok_or_else(|| Error::not_found("snapshot", format!("{lun}@{snapshot}")))?;
            crate::replica::restore_head(&mut s, id, at);
        }
        self.flush()?;
        self.note(
            "snapshot-restored",
            lun,
            format!("LUN \"{lun}\" restored to snapshot \"{lun}@{snapshot}\"."),
        );
        Ok(())
    }

    // ------------------------------------------------------- group snapshots

    pub fn create_group_snapshot(&self, name: &str, luns: &[String]) -> Result<GroupInfo> {
        if luns.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "group snapshot \"{name}\" needs at least one LUN"
            )));
        }
        let requests: Vec<(String, String)> =
            luns.iter().map(|l| (l.clone(), name.to_string())).collect();
        self.create_snapshots(&requests, Some(name))?;
        self.group_info(name)
    }

    pub fn group_info(&self, name: &str) -> Result<GroupInfo> {
        let s = self.state.lock();
        s.check_open()?;
        let g = s
            .groups
            .get(name)
            .ok_or_else(|| Error::not_found("group snapshot", name))?;
        Ok(group_info(name, g, &s))
    }

    pub fn list_group_snapshots(&self) -> Result<Vec<GroupInfo>> {
        let s = self.state.lock();
        s.check_open()?;
        Ok(s.groups.iter().map(|(n, g)| group_info(n, g, &s)).collect())
    }

    /// Deletes a group snapshot and every member snapshot, in one commit.
    pub fn delete_group_snapshot(&self, name: &str) -> Result<()> {
        let removed = {
            let mut s = self.state.lock();
            s.check_open()?;
            let g = s
                .groups
                .get(name)
                .ok_or_else(|| Error::not_found("group snapshot", name))?;
            let epoch = g.epoch;
            let members: Vec<LunId> = g.members.iter().map(|(id, _)| *id).collect();
            for id in &members {
                if let Some((l, holder)) = s
                    .luns
                    .get(id)
                    .and_then(|l| Some((l, l.snapshots.get(&epoch)?.holds.iter().next()?)))
                {
                    return Err(Error::HasDependents(format!(
                        "group snapshot \"{name}\" is held by mirror \"{holder}\" (member \"{}\"), which needs it as a common base",
                        l.name
                    )));
                }
            }
            let mut removed = Vec::new();
            for id in members {
                if !s
                    .luns
                    .get(&id)
                    .is_some_and(|l| l.snapshots.contains_key(&epoch))
                {
                    continue;
                }
                if s.luns
                    .values()
                    .any(|c| c.parent == Some((id, Epoch(epoch))))
                {
                    // A clone reads through this member: hide it until the
                    // clone is split or deleted (see delete_snapshot).
                    let sn = s.lun_mut(id)?.snapshots.get_mut(&epoch).expect("checked");
                    sn.hidden = true;
                    sn.group = None;
                    s.dirty.snapshots.insert((id, epoch));
                } else {
                    remove_snapshot(&mut s, id, epoch);
                    removed.push((id, epoch));
                }
            }
            s.groups.remove(name);
            s.dirty.groups.insert(name.to_string());
            removed
        };
        self.finish_snapshot_removal(&removed)?;
        self.note(
            "group-snapshot-deleted",
            name,
            format!("Group snapshot \"{name}\" deleted with its member snapshots."),
        );
        Ok(())
    }
}

/// Checks a snapshot request against the state before anything changes:
/// returns the snapshots to take, in order, or why none can be.
pub(crate) fn plan_snapshots(
    s: &State,
    requests: &[(String, String)],
    group: Option<&str>,
) -> Result<Vec<(LunId, String)>> {
    if let Some(g) = group {
        if s.groups.contains_key(g) {
            return Err(Error::AlreadyExists {
                kind: "group snapshot",
                name: g.into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((lun, _)) = requests.iter().find(|(lun, _)| !seen.insert(lun.clone())) {
            return Err(Error::InvalidArgument(format!(
                "LUN \"{lun}\" is listed twice in group snapshot \"{g}\""
            )));
        }
    }
    let mut planned: Vec<(LunId, String)> = Vec::new();
    for (lun, snap) in requests {
        let id = s.lun_id(lun)?;
        let l = &s.luns[&id];
        if l.snapshot_by_name(snap).is_some() || planned.iter().any(|(i, n)| *i == id && n == snap)
        {
            return Err(Error::AlreadyExists {
                kind: "snapshot",
                name: format!("{lun}@{snap}"),
            });
        }
        if l.snapshots.len() + planned.iter().filter(|(i, _)| *i == id).count()
            >= SNAPSHOTS_PER_LUN_MAX
        {
            return Err(Error::InvalidArgument(format!(
                "LUN \"{lun}\" already has {SNAPSHOTS_PER_LUN_MAX} snapshots, the most one LUN may hold"
            )));
        }
        planned.push((id, snap.clone()));
    }
    Ok(planned)
}

/// Records planned snapshots (and their group), created at `created[i]`
/// (Unix seconds); returns `(LUN, epoch)` of each.
pub(crate) fn record_snapshots(
    s: &mut State,
    planned: Vec<(LunId, String)>,
    group: Option<&str>,
    created: &[u64],
) -> Vec<(LunId, u64)> {
    assert_eq!(planned.len(), created.len(), "a creation time per snapshot");
    let group_created = created.iter().copied().max().unwrap_or_else(now_secs);
    let group_epoch = s.epoch;
    let mut used = std::collections::HashSet::new();
    let mut taken = Vec::new();
    for ((id, snap), &created) in planned.into_iter().zip(created) {
        // A second snapshot of the same LUN in one call needs its own
        // epoch; nothing is written in between, so it is the same point.
        if !used.insert(id) {
            s.epoch += 1;
            used.clear();
            used.insert(id);
        }
        let epoch = s.epoch;
        let l = s.lun_mut(id).expect("planned under this lock");
        let size_blocks = l.size_blocks;
        l.snapshots.insert(
            epoch,
            Snapshot {
                name: snap.clone(),
                created,
                size_blocks,
                group: group.map(str::to_string),
                hidden: false,
                holds: Default::default(),
            },
        );
        s.dirty.snapshots.insert((id, epoch));
        taken.push((id, epoch));
    }
    s.epoch += 1;
    s.dirty.pool = true;
    if let Some(g) = group {
        let members = taken
            .iter()
            .map(|(id, _)| (*id, s.luns[id].name.clone()))
            .collect();
        s.groups.insert(
            g.to_string(),
            Group {
                epoch: group_epoch,
                created: group_created,
                members,
            },
        );
        s.dirty.groups.insert(g.to_string());
    }
    taken
}
