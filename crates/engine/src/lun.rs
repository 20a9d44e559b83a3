//! LUNs: create, list, resize and delete.

use crate::codec;
use crate::engine::*;
use crate::types::*;

/// A new LUN's space reservation (decision 031).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Thick: the whole size guaranteed.
    pub thick: bool,
    /// A share of the size, in per cent, kept for what snapshots hold.
    pub snapshot_percent: u32,
}

impl Engine {
    // ------------------------------------------------------------------ LUNs

    pub fn create_lun(&self, name: &str, size_bytes: u64) -> Result<LunInfo> {
        self.create_lun_with(name, size_bytes, false, None, Reservation::default())
    }

    /// Creates a LUN in `class` (None: the pool's default) with a space
    /// reservation (decision 031).
    pub fn create_lun_reserving(
        &self,
        name: &str,
        size_bytes: u64,
        class: Option<crate::redundancy::Redundancy>,
        reservation: Reservation,
    ) -> Result<LunInfo> {
        self.create_lun_with(name, size_bytes, false, class, reservation)
    }

    /// Creates a LUN whose blocks are kept in `class` (None: the pool's
    /// default class).
    pub fn create_lun_in(
        &self,
        name: &str,
        size_bytes: u64,
        class: Option<crate::redundancy::Redundancy>,
    ) -> Result<LunInfo> {
        self.create_lun_with(name, size_bytes, false, class, Reservation::default())
    }

    /// Creates a LUN; with `replica`, as a mirror destination.
    pub(crate) fn create_lun_with(
        &self,
        name: &str,
        size_bytes: u64,
        replica: bool,
        class: Option<crate::redundancy::Redundancy>,
        reservation: Reservation,
    ) -> Result<LunInfo> {
        validate_lun_name(name)?;
        validate_lun_size(size_bytes)?;
        if let Some(class) = class {
            self.check_class(class)?;
        }
        let Reservation {
            thick,
            snapshot_percent,
        } = reservation;
        let id = {
            let mut s = self.state.lock();
            s.check_open()?;
            if s.names.contains_key(name) {
                return Err(Error::AlreadyExists {
                    kind: "LUN",
                    name: name.into(),
                });
            }
            let id = LunId(s.next_lun_id);
            s.dirty.pool = true;
            let mut l = new_lun(
                id,
                name.to_string(),
                bytes_to_blocks(size_bytes),
                now_secs(),
                None,
            );
            if replica {
                l.replica = Some(crate::state::Replica { view: None });
            }
            l.class = class.unwrap_or_else(|| self.default_class(&s));
            crate::reserve::validate(l.class, thick, snapshot_percent)?;
            l.thick = thick;
            l.snapshot_reserve_percent = snapshot_percent;
            let wants = crate::reserve::outstanding(&l);
            if wants > 0 {
                self.check_can_reserve(&s, name, l.class, wants)?;
                s.reserving.insert(id);
            }
            s.next_lun_id += 1;
            s.luns.insert(id, l);
            s.names.insert(name.to_string(), id);
            s.dirty.luns.insert(id);
            id
        };
        self.flush()?;
        let info = {
            let s = self.state.lock();
            lun_info(&s, s.lun(id)?)
        };
        let what = if replica {
            "mirror destination LUN"
        } else {
            "LUN"
        };
        self.note(
            "lun-created",
            name,
            format!("{what} \"{name}\" created ({size_bytes} bytes)."),
        );
        Ok(info)
    }

    /// Every export, `LUN` then its `LUN@SNAPSHOT`s, with sizes: what NBD
    /// `OPT_LIST` shows. O(LUNs + snapshots) under the lock, no map walk
    /// (unlike `list_luns`/`list_snapshots`, which report space).
    pub fn list_exports(&self) -> Result<Vec<ExportEntry>> {
        let s = self.state.read();
        s.check_open()?;
        let mut out = Vec::with_capacity(s.names.len());
        for (name, id) in &s.names {
            let l = &s.luns[id];
            out.push(ExportEntry {
                lun: name.clone(),
                snapshot: None,
                size_bytes: crate::replica::visible_blocks(l) * BLOCK_SIZE,
            });
            for (_, snap) in l.visible_snapshots() {
                out.push(ExportEntry {
                    lun: name.clone(),
                    snapshot: Some(snap.name.clone()),
                    size_bytes: snap.size_blocks * BLOCK_SIZE,
                });
            }
        }
        Ok(out)
    }

    pub fn list_luns(&self, prefix: &str) -> Result<Vec<LunInfo>> {
        let s = self.state.read();
        s.check_open()?;
        Ok(s.names
            .range(prefix.to_string()..)
            .take_while(|(n, _)| n.starts_with(prefix))
            .map(|(_, id)| lun_info(&s, &s.luns[id]))
            .collect())
    }

    pub fn lun_info(&self, name: &str) -> Result<LunInfo> {
        let s = self.state.read();
        s.check_open()?;
        let id = s.lun_id(name)?;
        Ok(lun_info(&s, &s.luns[&id]))
    }

    /// Grows a LUN, or shrinks it when `allow_shrink` (discarding the tail;
    /// snapshots keep their own size and content).
    pub fn resize_lun(&self, name: &str, size_bytes: u64, allow_shrink: bool) -> Result<LunInfo> {
        validate_lun_size(size_bytes)?;
        let fenced = self.fence_lun(name)?;
        let id = fenced.id();
        {
            let mut s = self.state.lock();
            s.check_open()?;
            crate::replica::check_not_replica(&s.luns[&id])?;
            let new_blocks = bytes_to_blocks(size_bytes);
            let old_blocks = s.luns[&id].size_blocks;
            if new_blocks < old_blocks && !allow_shrink {
                return Err(Error::InvalidArgument(format!(
                    "shrinking LUN \"{name}\" from {} to {size_bytes} bytes discards its tail; pass the shrink flag to confirm",
                    old_blocks * BLOCK_SIZE
                )));
            }
            if new_blocks > old_blocks && s.reserving.contains(&id) {
                let l = &s.luns[&id];
                let more = new_blocks - old_blocks;
                let grows = if l.thick { more } else { 0 }
                    + more * u64::from(l.snapshot_reserve_percent) / 100;
                self.check_can_reserve(&s, name, l.class, grows)?;
            }
            crate::replica::resize_head(&mut s, id, new_blocks, true);
        }
        self.flush()?;
        self.note(
            "lun-resized",
            name,
            format!("LUN \"{name}\" resized to {size_bytes} bytes."),
        );
        self.lun_info(name)
    }

    /// Deletes a LUN. Refused while it has snapshots, unless `recursive`,
    /// and while a group snapshot includes it.
    pub fn delete_lun(&self, name: &str, recursive: bool) -> Result<()> {
        let fenced = self.fence_lun(name)?;
        let id = fenced.id();
        let released = {
            let mut s = self.state.lock();
            s.check_open()?;
            let l = &s.luns[&id];
            if l.replica.is_some() {
                return Err(Error::HasDependents(format!(
                    "LUN \"{name}\" is a mirror destination; `blockfork mirror delete {name}` ends the relationship first"
                )));
            }
            if let Some((sn, holder)) = l
                .snapshots
                .values()
                .find_map(|sn| sn.holds.iter().next().map(|h| (sn, h)))
            {
                return Err(Error::HasDependents(format!(
                    "snapshot \"{name}@{}\" of LUN \"{name}\" is held by mirror \"{holder}\"; delete the mirror relationship first",
                    sn.name
                )));
            }
            if let Some((_, snap)) = l.snapshots.iter().find(|(_, sn)| sn.group.is_some()) {
                return Err(Error::HasDependents(format!(
                    "LUN \"{name}\" is part of group snapshot \"{}\"; delete the group snapshot first",
                    snap.group.as_deref().unwrap_or_default()
                )));
            }
            if !l.snapshots.is_empty() && !recursive {
                return Err(Error::HasDependents(format!(
                    "LUN \"{name}\" has {} snapshot(s); delete them first or delete recursively",
                    l.snapshots.len()
                )));
            }
            if let Some(child) = s
                .luns
                .values()
                .find(|c| c.parent.is_some_and(|(p, _)| p == id))
            {
                return Err(Error::HasDependents(format!(
                    "LUN \"{name}\" backs clone \"{}\"; split or delete the clone first",
                    child.name
                )));
            }
            let mut l = s.luns.remove(&id).expect("found above");
            s.names.remove(name);
            s.jobs.remove(&id);
            if s.splits.remove(&id).is_some() {
                s.dirty.splits.insert(id);
            }
            for piece in l.head.drain().into_iter().chain(l.history.drain()) {
                s.release(&piece);
            }
            let mut orphans = Vec::new();
            for lba in std::mem::take(&mut l.head.dirty) {
                orphans.push((codec::key_u64_u64(codec::TAG_HEAD, id.0, lba), None));
            }
            for lba in std::mem::take(&mut l.history.dirty) {
                orphans.push((codec::key_u64_u64(codec::TAG_HISTORY, id.0, lba), None));
            }
            for &epoch in l.snapshots.keys() {
                orphans.push((codec::key_u64_u64(codec::TAG_SNAPSHOT, id.0, epoch), None));
            }
            s.dirty.orphans.extend(orphans);
            s.dirty.luns.insert(id);
            match l.parent {
                Some(parent) => crate::split::release_pin(&mut s, parent),
                None => Vec::new(),
            }
        };
        self.finish_snapshot_removal(&released)?;
        self.note("lun-deleted", name, format!("LUN \"{name}\" deleted."));
        Ok(())
    }

    /// Records an informational event (see [`crate::events`]).
    /// Inside [`crate::events::quietly`], only logged at debug level.
    pub(crate) fn note(&self, kind: &str, object: &str, message: String) {
        if crate::events::is_quiet() {
            tracing::debug!(kind, object, "{message}");
            return;
        }
        self.events
            .emit(crate::events::Severity::Info, kind, object, message);
    }
}
