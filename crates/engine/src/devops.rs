//! Devices joining and leaving a pool on devices (issue 14, decision
//! 029): `pool device add`, `remove` and `replace`, and a device's
//! retirement once nothing is on it. The moving itself is `reloc`.

use crate::codec::{self, DeviceRecord};
use crate::devices::{self, Identity};
use crate::devpool::{hex, random_id, DeviceInfo, DEVICES_MAX};
use crate::engine::*;
use crate::stores::Stores;
use crate::types::*;
use std::path::Path;
use std::sync::Arc;

impl Engine {
    fn need_stores(&self) -> Result<&Stores> {
        self.stores.as_deref().ok_or_else(|| {
            Error::InvalidArgument(
                "this pool is one data file; devices belong to a pool on devices (serve --device)"
                    .into(),
            )
        })
    }

    /// The index of the device at `path` (by its canonical path, or as
    /// recorded for one that is gone).
    fn device_at(&self, path: &Path) -> Result<u32> {
        // A device that is gone cannot be canonicalized: compare it made
        // absolute, as it was recorded.
        let canonical = std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.display().to_string());
        let s = self.state.read();
        s.devices
            .iter()
            .position(|d| !d.removed && (d.path == canonical || Path::new(&d.path) == path))
            .map(|i| i as u32)
            .ok_or_else(|| Error::not_found("device", path.display().to_string()))
    }

    fn refuse_while_moving(&self) -> Result<()> {
        if self.moving() {
            return Err(Error::InvalidArgument(
                "a rebuild, removal or levelling is running; wait for it (pool device status --watch)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Labels `path` and makes it a device of the pool (no job started).
    fn join_device(&self, path: &Path, force: bool) -> Result<u32> {
        let stores = self.need_stores()?;
        let (pool, segment_bytes) = {
            let s = self.state.read();
            s.check_open()?;
            (
                s.pool_id.expect("a pool on devices has an id"),
                s.segment_bytes
                    .expect("a pool on devices has a segment size"),
            )
        };
        devices::vet(path, segment_bytes, force)?;
        let canonical = std::fs::canonicalize(path)?.display().to_string();
        if self
            .state
            .read()
            .devices
            .iter()
            .any(|d| !d.removed && d.path == canonical)
        {
            return Err(Error::AlreadyExists {
                kind: "device",
                name: canonical,
            });
        }
        let index = stores.device_count();
        if index >= DEVICES_MAX {
            return Err(Error::InvalidArgument(format!(
                "a pool has at most {DEVICES_MAX} devices (removed ones count)"
            )));
        }
        let id = Identity {
            pool,
            device: random_id(),
            index: index as u32,
            segment_bytes,
            added_secs: now_secs(),
        };
        let d = devices::format(path, id, force)?;
        let record = DeviceRecord {
            id: hex(id.device),
            path: canonical,
            size_bytes: d.label.size_bytes,
            segments: d.label.segments(),
            added: id.added_secs,
            removed: false,
            faulted: None,
        };
        {
            let mut s = self.state.lock();
            s.dirty.layout.push((
                codec::key_u64(codec::TAG_DEVICE, index as u64),
                Some(codec::to_json(&record)),
            ));
            s.devices.push(record.clone());
            stores.add_device(Arc::new(d.file), record.segments);
        }
        self.flush()?;
        Ok(index as u32)
    }

    /// `pool device add PATH`: labels the device, adds it, and levels
    /// segments onto it in the background.
    pub fn add_device(&self, path: &Path, force: bool) -> Result<DeviceInfo> {
        self.refuse_while_moving()?;
        let index = self.join_device(path, force)?;
        self.note(
            "device-added",
            &format!("device {index}"),
            format!(
                "{} joined the pool as device {index}; segments level onto it in the background.",
                path.display()
            ),
        );
        self.start_move(crate::reloc::MoveKind::Level, index, Some(index))?;
        self.flush()?;
        self.device_info(index)
    }

    /// `pool device remove PATH`: moves every segment off the device in
    /// the background, then forgets it.
    pub fn remove_device(&self, path: &Path) -> Result<crate::reloc::MoveInfo> {
        let stores = self.need_stores()?;
        self.refuse_while_moving()?;
        let d = self.device_at(path)?;
        {
            let layout = stores.layout().read();
            let on = layout.segments_on(d);
            let others: Vec<u32> = (0..layout.devices() as u32)
                .filter(|&o| o != d && !stores.errors(o).faulted())
                .collect();
            let widest = on
                .iter()
                .filter_map(|&(n, _)| layout.store(n).map(|s| s.class.devices()))
                .max()
                .unwrap_or(0);
            if widest > others.len() {
                return Err(Error::InvalidArgument(format!(
                    "{} holds segments of {widest}-device stores; without it the pool has {} usable device(s): add one first",
                    path.display(),
                    others.len()
                )));
            }
            let room: usize = others.iter().map(|&o| layout.free_segments(o)).sum();
            if room < on.len() {
                return Err(Error::NoSpace(format!(
                    "{} holds {} segment(s); the other devices have {room} free",
                    path.display(),
                    on.len()
                )));
            }
        }
        self.start_move(crate::reloc::MoveKind::Remove, d, None)?;
        self.flush()?;
        self.move_status()
    }

    /// `pool device replace OLD NEW`: NEW joins the pool and everything on
    /// OLD is rebuilt onto it (from the other copies when OLD is gone),
    /// then OLD is forgotten.
    pub fn replace_device(
        &self,
        old: &Path,
        new: &Path,
        force: bool,
    ) -> Result<crate::reloc::MoveInfo> {
        let stores = self.need_stores()?;
        self.refuse_while_moving()?;
        let d = self.device_at(old)?;
        let need = stores.layout().read().segments_on(d).len() as u64;
        let segment_bytes = self.state.read().segment_bytes.unwrap_or(1);
        let have = devices::vet(new, segment_bytes, force)?
            .saturating_sub(crate::label::LABEL_BYTES)
            / segment_bytes;
        if have < need {
            return Err(Error::NoSpace(format!(
                "{} holds {have} segment(s); {} has {need} to rebuild",
                new.display(),
                old.display()
            )));
        }
        let n = self.join_device(new, force)?;
        self.start_move(crate::reloc::MoveKind::Rebuild, d, Some(n))?;
        self.flush()?;
        self.note(
            "rebuild-started",
            &format!("device {d}"),
            format!(
                "Rebuilding {} onto {} ({need} segment(s)).",
                old.display(),
                new.display()
            ),
        );
        self.move_status()
    }

    /// A device nothing is on leaves the pool: marked removed, its label
    /// wiped when it can still be written (so it can be reused without
    /// `--force`).
    pub(crate) fn retire_device(&self, d: u32) -> Result<()> {
        let stores = self.need_stores()?;
        let path = {
            let mut s = self.state.lock();
            let Some(r) = s.devices.get_mut(d as usize) else {
                return Ok(());
            };
            r.removed = true;
            let record = r.clone();
            s.dirty.layout.push((
                codec::key_u64(codec::TAG_DEVICE, d as u64),
                Some(codec::to_json(&record)),
            ));
            record.path
        };
        let healthy = !stores.errors(d).faulted();
        stores.retire(d);
        self.flush()?;
        if healthy {
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                use std::os::unix::fs::FileExt;
                let zeros = vec![0u8; crate::label::LABEL_BYTES as usize];
                let _ = f.write_all_at(&zeros, 0).and_then(|_| f.sync_all());
            }
        }
        Ok(())
    }

    fn device_info(&self, index: u32) -> Result<DeviceInfo> {
        self.pool_devices()?
            .into_iter()
            .find(|d| d.index == index)
            .ok_or_else(|| Error::not_found("device", format!("#{index}")))
    }

    /// Takes a faulted device back (`pool device clear PATH`): its file
    /// must have been open since the pool opened. A scrub starts from the
    /// first block at once and rewrites every copy the device has stale or
    /// wrong (a resilver); until it ends, the device's old copies are
    /// caught by their checksums on every read.
    pub fn clear_device(&self, path: &Path) -> Result<DeviceInfo> {
        let stores = self.need_stores()?;
        self.state.read().check_open()?;
        let d = self.device_at(path)?;
        if !stores.errors(d).faulted() {
            return Err(Error::InvalidArgument(format!(
                "device {} is not faulted: nothing to clear",
                path.display()
            )));
        }
        if let Err(e) = stores.file(d).check() {
            return Err(Error::InvalidArgument(format!(
                "device {} cannot be cleared: {e}; replace it (pool device replace) or restart the pool with it present",
                path.display()
            )));
        }
        stores.clear(d);
        {
            let mut s = self.state.lock();
            if let Some(r) = s.devices.get_mut(d as usize) {
                r.faulted = None;
                let record = r.clone();
                s.dirty.layout.push((
                    codec::key_u64(codec::TAG_DEVICE, d as u64),
                    Some(codec::to_json(&record)),
                ));
            }
            // The resilver is a scrub from the first block, not the rest
            // of an earlier one.
            s.scrub = None;
            s.dirty.scrub = true;
        }
        self.flush()?;
        self.note(
            "device-cleared",
            &format!("device {d}"),
            format!(
                "Device {d} ({}) was cleared and is back in service; a scrub resilvers it.",
                path.display()
            ),
        );
        self.scrub_start()?;
        self.pool_devices()?
            .into_iter()
            .find(|i| i.index == d)
            .ok_or_else(|| Error::not_found("device", path.display().to_string()))
    }
}
