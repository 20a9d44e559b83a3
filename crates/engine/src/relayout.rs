//! Changing a LUN's redundancy class (`lun set NAME --redundancy`, issue
//! 14, decision 032): new writes go to the new class at once; a background
//! job rewrites, batch by batch, what the LUN's current content holds in
//! stores of another class, through the write path (under the batch's
//! stripe locks and the LUN's fence, so a client write to the same blocks
//! waits and nothing is lost). Snapshots keep the blocks they were taken
//! with, in the class those have. The cursor is in the LUN's record,
//! committed as it goes, so a restart resumes.

use crate::engine::*;
use crate::map::Val;
use crate::redundancy::Redundancy;
use crate::sched;
use crate::types::*;

/// Blocks one batch looks at (1 MiB).
pub const RELAYOUT_BATCH_BLOCKS: u64 = 256;

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayoutStep {
    /// Nothing to do.
    Idle,
    /// Bytes rewritten into the new class.
    Moved(u64),
}

impl Engine {
    /// Sets a LUN's redundancy class: new writes use it now, and a
    /// background job moves what the LUN holds (its current content) into
    /// it. Answers the LUN, its progress in `relayout_done_bytes`.
    pub fn set_lun_redundancy(&self, name: &str, class: Redundancy) -> Result<LunInfo> {
        self.check_class(class)?;
        let fenced = self.fence_lun(name)?;
        let id = fenced.id();
        let from = {
            let mut s = self.state.lock();
            s.check_open()?;
            let l = s.lun(id)?;
            crate::replica::check_not_replica(l)?;
            crate::reserve::validate(class, l.thick, l.snapshot_reserve_percent)?;
            let from = l.class;
            if from == class && l.relayout.is_none() {
                drop(s);
                drop(fenced);
                return self.lun_info(name);
            }
            let l = s.luns.get_mut(&id).expect("fenced LUN exists");
            l.class = class;
            l.relayout = Some(0);
            s.dirty.luns.insert(id);
            from
        };
        drop(fenced);
        self.flush()?;
        self.note(
            "relayout-started",
            name,
            format!("LUN \"{name}\" is moving from {from} to {class}; new writes are {class} now."),
        );
        self.lun_info(name)
    }

    /// Moves one batch of the first LUN whose class is changing.
    pub fn run_relayout_batch(&self) -> RelayoutStep {
        match self.relayout_batch() {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!("relayout batch: {e}");
                RelayoutStep::Idle
            }
        }
    }

    fn relayout_batch(&self) -> Result<RelayoutStep> {
        let (id, cursor, size) = {
            let s = self.state.read();
            if s.check_open().is_err() {
                return Ok(RelayoutStep::Idle);
            }
            match s
                .luns
                .values()
                .find_map(|l| l.relayout.map(|c| (l.id, c, l.size_blocks)))
            {
                Some(found) => found,
                None => return Ok(RelayoutStep::Idle),
            }
        };
        let end = (cursor + RELAYOUT_BATCH_BLOCKS).min(size);
        let mut moved = 0;
        if cursor < end {
            let _stripes = self.lock_stripes(id, cursor, end - cursor);
            let fence = self.fence_of_id(id)?;
            let _fenced = sched::acquire("fence.read", || fence.try_read(), || fence.read());
            // What the head maps in the batch to data of another class.
            let ranges: Vec<(u64, u64)> = {
                let s = self.state.read();
                let Ok(l) = s.lun(id) else {
                    return Ok(RelayoutStep::Idle);
                };
                if l.relayout != Some(cursor) {
                    return Ok(RelayoutStep::Idle);
                }
                let mut out: Vec<(u64, u64)> = Vec::new();
                let mut pos = cursor;
                let stop = end.min(l.size_blocks);
                while pos < stop {
                    let (len, hit) = l.head.lookup(pos, stop);
                    if let Some((Val::Data(pba), _)) = hit {
                        // Region by region: a run may span adjacent stores.
                        let mut b = 0;
                        while b < len {
                            let at = pba.get() + b;
                            let n = s
                                .alloc
                                .region_end(at)
                                .map_or(len - b, |e| (e - at).min(len - b));
                            if s.alloc.class_at(at) != Some(l.class) {
                                match out.last_mut() {
                                    Some((a, k)) if *a + *k == pos + b => *k += n,
                                    _ => out.push((pos + b, n)),
                                }
                            }
                            b += n;
                        }
                    }
                    pos += len;
                }
                out
            };
            for (lba, len) in ranges {
                let mut buf = vec![0u8; (len * BLOCK_SIZE) as usize];
                self.read_blocks_for_move(id, lba, &mut buf)?;
                self.write_pieces(id, &[(lba, &buf)])?;
                moved += len;
            }
        }
        let done = {
            let mut s = self.state.lock();
            let Some(l) = s.luns.get_mut(&id) else {
                return Ok(RelayoutStep::Idle);
            };
            if l.relayout != Some(cursor) {
                return Ok(RelayoutStep::Idle);
            }
            let done = end >= l.size_blocks;
            l.relayout = if done { None } else { Some(end) };
            let finished = done.then(|| (l.name.clone(), l.class));
            s.dirty.luns.insert(id);
            finished
        };
        if let Some((name, class)) = done {
            self.note(
                "relayout-done",
                &name,
                format!("LUN \"{name}\" is laid out as {class} now."),
            );
        }
        self.data_dirty
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(RelayoutStep::Moved(moved * BLOCK_SIZE))
    }

    /// Reads a LUN's current blocks for a move (not counted as client I/O).
    fn read_blocks_for_move(&self, id: LunId, lba: u64, buf: &mut [u8]) -> Result<()> {
        self.read(Target::Lun(id), lba * BLOCK_SIZE, buf)?;
        self.foreground_ops
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
