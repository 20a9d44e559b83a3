//! Creating writable clones (MISSION.md C, seeds 001/004): each O(1), any
//! number from one snapshot in one commit. What a clone reads through its
//! parent, and the split that ends that, are in `split.rs`.

use crate::engine::{now_secs, Engine};
use crate::split::new_job;
use crate::types::*;

/// Clones one call may create.
pub const CLONES_PER_CALL_MAX: usize = 10_000;

impl Engine {
    /// Creates writable clones of `source` (`LUN@SNAPSHOT`), each O(1), in
    /// one commit; with `split`, their splits start at once (a snapclone).
    pub fn create_clones(
        &self,
        source: &str,
        names: &[String],
        split: bool,
    ) -> Result<Vec<LunInfo>> {
        self.create_clones_with(source, names, split, false)
    }

    /// Creates clones; with `replica`, as mirror destinations.
    pub(crate) fn create_clones_with(
        &self,
        source: &str,
        names: &[String],
        split: bool,
        replica: bool,
    ) -> Result<Vec<LunInfo>> {
        let (lun, snap) = source.split_once('@').ok_or_else(|| {
            Error::InvalidArgument(format!(
                "clone source \"{source}\" must name a snapshot: LUN@SNAPSHOT"
            ))
        })?;
        if names.is_empty() || names.len() > CLONES_PER_CALL_MAX {
            return Err(Error::InvalidArgument(format!(
                "a call creates 1 to {CLONES_PER_CALL_MAX} clones, not {}",
                names.len()
            )));
        }
        for n in names {
            validate_lun_name(n)?;
        }
        let ids = {
            let mut s = self.state.lock();
            s.check_open()?;
            let parent = s.lun_id(lun)?;
            let epoch = s.luns[&parent]
                .snapshot_by_name(snap)
                .ok_or_else(|| Error::not_found("snapshot", source))?;
            let size_blocks = s.luns[&parent].snapshots[&epoch].size_blocks;
            let mut seen = std::collections::HashSet::new();
            for n in names {
                if s.names.contains_key(n) || !seen.insert(n) {
                    return Err(Error::AlreadyExists {
                        kind: "LUN",
                        name: n.clone(),
                    });
                }
            }
            let created = now_secs();
            let mut ids = Vec::with_capacity(names.len());
            for n in names {
                let id = LunId(s.next_lun_id);
                s.next_lun_id += 1;
                let mut l = crate::engine::new_lun(
                    id,
                    n.clone(),
                    size_blocks,
                    created,
                    Some((parent, Epoch(epoch))),
                );
                l.created_epoch = s.epoch;
                l.class = s.lun(parent)?.class;
                if replica {
                    l.replica = Some(crate::state::Replica { view: None });
                }
                s.luns.insert(id, l);
                s.names.insert(n.clone(), id);
                s.dirty.luns.insert(id);
                if split {
                    s.splits.insert(id, new_job());
                    s.dirty.splits.insert(id);
                }
                ids.push(id);
            }
            s.dirty.pool = true;
            ids
        };
        self.flush()?;
        let infos: Vec<LunInfo> = {
            let s = self.state.lock();
            ids.iter()
                .filter_map(|id| s.luns.get(id).map(|l| crate::engine::lun_info(&s, l)))
                .collect()
        };
        for n in names {
            let what = if replica {
                "Mirror destination clone"
            } else {
                "Clone"
            };
            let then = if split { "; its split started" } else { "" };
            self.note(
                "clone-created",
                n,
                format!("{what} \"{n}\" created from \"{source}\"{then}."),
            );
        }
        Ok(infos)
    }
}
