//! The data path: resolving exports, reads, writes, zeroing and block status.

use crate::engine::*;
use crate::map::Val;
use crate::sched;
use crate::space::{lay_out, Run};
use crate::state::State;
use crate::types::*;
use parking_lot::{MutexGuard, RwLock};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn within(size_blocks: u64, offset: u64, len: u64) -> Result<()> {
    let size = size_blocks * BLOCK_SIZE;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange(format!(
            "range {offset}+{len} lies outside the {size}-byte volume"
        ))),
    }
}

/// What zeroing leaves in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zeroing {
    /// Reads zeros, holds no space where it can (a clone records zeros to
    /// hide its parent).
    Trim,
    /// Zeros recorded in the map.
    Allocated,
    /// Nothing of the LUN's own: a clone reads its parent there.
    Unmap,
}

impl Engine {
    // ------------------------------------------------------------------- I/O

    /// Resolves an export name: `LUN` or `LUN@SNAPSHOT`.
    pub fn resolve(&self, export: &str) -> Result<Target> {
        let s = self.state.read();
        s.check_open()?;
        resolve_in(&s, export)
    }

    /// The size in bytes of what `target` names now.
    pub fn target_size(&self, target: Target) -> Result<u64> {
        let s = self.state.read();
        s.check_open()?;
        Ok(visible_target_blocks(&s, target)? * BLOCK_SIZE)
    }

    /// A read or write: within the volume and the per-request size limit.
    pub(crate) fn check_range(s: &State, target: Target, offset: u64, len: u64) -> Result<()> {
        Self::check_size(len)?;
        Self::check_bounds(s, target, offset, len)
    }

    fn check_size(len: u64) -> Result<()> {
        if len > IO_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "request of {len} bytes exceeds the {IO_BYTES_MAX}-byte limit"
            )));
        }
        Ok(())
    }

    /// The one bounds check: `[offset, offset+len)` lies within `target`
    /// (metadata-only requests, zeroing and block status, have no size
    /// limit but the volume's).
    pub(crate) fn check_bounds(s: &State, target: Target, offset: u64, len: u64) -> Result<()> {
        within(target_blocks(s, target)?, offset, len)
    }

    /// Bounds as a reader sees them: a replica's view may be smaller or
    /// larger than the head a transfer is changing.
    fn check_visible(s: &State, target: Target, offset: u64, len: u64) -> Result<()> {
        within(visible_target_blocks(s, target)?, offset, len)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, target: Target, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        self.foreground_ops.fetch_add(1, Ordering::Relaxed);
        let _gate = sched::acquire("gate.read", || self.gate.try_read(), || self.gate.read());
        let mut segs = Segments::new();
        // A pool on devices: the checksums of the blocks read, in order.
        let mut expect: smallvec::SmallVec<[u32; 32]> = smallvec::SmallVec::new();
        {
            let s = self.state.read();
            s.check_open()?;
            Self::check_size(len)?;
            Self::check_visible(&s, target, offset, len)?;
            let first = offset / BLOCK_SIZE;
            let end = (offset + len).div_ceil(BLOCK_SIZE);
            let (lun, at) = match target {
                Target::Lun(id) => (id, None),
                Target::Snapshot(id, e) => (id, Some(e.0)),
            };
            resolve_blocks(&s, lun, at, first, end, &mut segs);
            if let Some(table) = &s.sums {
                for &(n, src) in &segs {
                    if let Src::Data(pba) = src {
                        table.extend_into(pba, n, &mut expect);
                    }
                }
            }
        }
        let mut lba = offset / BLOCK_SIZE;
        let mut sums = expect.as_slice();
        for (n, src) in segs {
            let seg_start = (lba * BLOCK_SIZE).max(offset);
            let seg_end = ((lba + n) * BLOCK_SIZE).min(offset + len);
            let out = &mut buf[(seg_start - offset) as usize..(seg_end - offset) as usize];
            let skip = seg_start - lba * BLOCK_SIZE;
            match (src, &self.stores) {
                (Src::Data(pba), None) => self.data.read_at(out, pba.bytes() + skip)?,
                (Src::Data(pba), Some(stores)) => {
                    let (these, rest) = sums.split_at(n as usize);
                    sums = rest;
                    let lost = |e: std::io::Error| self.lost(target, lba, n, e);
                    if skip == 0 && out.len() as u64 == n * BLOCK_SIZE {
                        stores.read_checked(out, pba.bytes(), these).map_err(lost)?;
                    } else {
                        let mut whole = vec![0u8; (n * BLOCK_SIZE) as usize];
                        stores
                            .read_checked(&mut whole, pba.bytes(), these)
                            .map_err(lost)?;
                        let from = skip as usize;
                        out.copy_from_slice(&whole[from..from + out.len()]);
                    }
                }
                (Src::Zero | Src::Hole, _) => out.fill(0),
            }
            lba += n;
        }
        Ok(())
    }

    pub(crate) fn lock_stripes(
        &self,
        lun: LunId,
        first: u64,
        count: u64,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = if count >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (first..first + count).map(|b| stripe_of(lun, b)).collect()
        };
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| {
                let stripe = &self.stripes[i];
                sched::acquire("stripe", || stripe.try_lock(), || stripe.lock())
            })
            .collect()
    }

    pub(crate) fn writable(&self, target: Target) -> Result<LunId> {
        match target {
            Target::Lun(id) => Ok(id),
            Target::Snapshot(..) => Err(Error::ReadOnly("a snapshot".into())),
        }
    }

    pub(crate) fn fence_of_id(&self, id: LunId) -> Result<Arc<RwLock<()>>> {
        let s = self.state.lock();
        s.check_open()?;
        Ok(s.lun(id)?.fence.clone())
    }

    /// Writes `data` at `offset`; with `fua`, durable before returning.
    pub fn write(&self, target: Target, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.write_inner(target, offset, data, fua, false)
    }

    /// A write that may change a replica's head: a transfer's.
    pub(crate) fn write_unchecked(
        &self,
        target: Target,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<()> {
        self.write_inner(target, offset, data, fua, true)
    }

    fn write_inner(
        &self,
        target: Target,
        offset: u64,
        data: &[u8],
        fua: bool,
        replica_ok: bool,
    ) -> Result<()> {
        let id = self.writable(target)?;
        let len = data.len() as u64;
        if len == 0 {
            return if fua { self.flush() } else { Ok(()) };
        }
        self.foreground_ops.fetch_add(1, Ordering::Relaxed);
        {
            let s = self.state.lock();
            s.check_open()?;
            Self::check_range(&s, target, offset, len)?;
            crate::replica::check_writer(s.lun(id)?, replica_ok)?;
        }
        let first = offset / BLOCK_SIZE;
        let end = (offset + len).div_ceil(BLOCK_SIZE);
        let _stripes = self.lock_stripes(id, first, end - first);
        let fence = self.fence_of_id(id)?;
        let _fenced = sched::acquire("fence.read", || fence.try_read(), || fence.read());
        // The size, or whether the LUN is a replica, may have changed while
        // we waited for the fence.
        {
            let s = self.state.lock();
            Self::check_range(&s, target, offset, len)?;
            crate::replica::check_writer(s.lun(id)?, replica_ok)?;
        }
        let aligned = offset.is_multiple_of(BLOCK_SIZE) && len.is_multiple_of(BLOCK_SIZE);
        if aligned {
            self.write_blocks(id, first, data)?;
        } else {
            // Read-modify-write of the edge blocks, in one buffer so that the
            // write allocates once and fails (ENOSPC) without changing anything.
            let mut buf = vec![0u8; ((end - first) * BLOCK_SIZE) as usize];
            let last = (end - 1) * BLOCK_SIZE;
            if !offset.is_multiple_of(BLOCK_SIZE) || len < BLOCK_SIZE {
                self.read(target, first * BLOCK_SIZE, &mut buf[..BLOCK_SIZE as usize])?;
            }
            if !(offset + len).is_multiple_of(BLOCK_SIZE) && end - 1 > first {
                let at = (last - first * BLOCK_SIZE) as usize;
                self.read(target, last, &mut buf[at..at + BLOCK_SIZE as usize])?;
            }
            let within = (offset - first * BLOCK_SIZE) as usize;
            buf[within..within + data.len()].copy_from_slice(data);
            self.write_blocks(id, first, &buf)?;
        }
        drop(_fenced);
        drop(_stripes);
        self.throttle_dirty()?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes whole blocks. Callers hold the stripes and the fence.
    pub(crate) fn write_blocks(&self, id: LunId, lba: u64, data: &[u8]) -> Result<()> {
        self.write_pieces(id, &[(lba, data)])
    }

    /// A write's plan, under the state lock: blocks nobody else sees are
    /// overwritten in place; the rest go to new space, allocated here and
    /// reserved until the write is applied.
    fn plan_write(&self, id: LunId, pieces: &Pieces<'_>) -> Result<(Vec<Step>, Vec<Run>, bool)> {
        let mut plan: Vec<Step> = Vec::new();
        let mut fresh_runs = Vec::new();
        let mut s = self.state.lock();
        s.check_open()?;
        let l = s.lun(id)?;
        // A pool on devices never overwrites a block in place: a block's
        // checksum holds from its write until it is freed (decision 027).
        let in_place_ok = s.sums.is_none();
        let mut need = 0;
        let striped = matches!(l.class, crate::redundancy::Redundancy::Parity { .. });
        let mut redirect: Vec<(u64, u64, usize)> = Vec::new();
        for (i, &(lba, data)) in pieces.iter().enumerate() {
            let count = data.len() as u64 / BLOCK_SIZE;
            debug_assert_eq!(data.len() as u64, count * BLOCK_SIZE);
            let end = lba + count;
            let mut pos = lba;
            while pos < end {
                let (len, hit) = l.head.lookup(pos, end);
                match hit {
                    Some((Val::Data(pba), birth))
                        if in_place_ok
                            && !l.head_is_seen(birth)
                            && !s.refs.any_shared(Run::at(pba, len)) =>
                    {
                        plan.push(Step {
                            lba: Lba::new(pos),
                            len: BlockCount::new(len),
                            pba,
                            fresh: false,
                            piece: i,
                        });
                    }
                    _ => {
                        match redirect.last_mut() {
                            Some((s0, n, p)) if *p == i && *s0 + *n == pos => *n += len,
                            _ => redirect.push((pos, len, i)),
                        }
                        need += len;
                    }
                }
                pos += len;
            }
        }
        if need > 0 {
            let class = l.class;
            self.check_reservations(&s, id, class, need)?;
            let runs = self.allocate(&mut s, class, need).ok_or_else(|| {
                Error::NoSpace(format!(
                    "{need} block(s) of class {class} needed, {} free",
                    s.alloc.free_blocks_of(class)
                ))
            })?;
            s.reserve(&runs);
            for p in lay_out(&runs, redirect.iter().map(|r| r.1)) {
                let (at, _, piece) = redirect[p.range];
                plan.push(Step {
                    lba: Lba::new(at + p.offset),
                    len: BlockCount::new(p.len),
                    pba: p.pba,
                    fresh: true,
                    piece,
                });
            }
            fresh_runs = runs;
        }
        Ok((plan, fresh_runs, striped))
    }

    /// Writes whole blocks at several places (in LBA order, not
    /// overlapping) with one allocation, so that a full pool refuses them
    /// all and changes nothing. Callers hold the stripes and the fence.
    ///
    /// Blocks of zeros are recorded as zeros in the map instead of written:
    /// they take no space and no data I/O (a file system allocating a file
    /// by writing zeros, a guest zeroing a disk).
    pub(crate) fn write_pieces(&self, id: LunId, all: &[(u64, &[u8])]) -> Result<()> {
        let (pieces, zero_runs) = data_and_zero_runs(all);
        let planned = match self.plan_write(id, &pieces) {
            // A LUN with a reservation is owed the room: what the last
            // commit's overwrites freed comes back with the next commit.
            Err(Error::NoSpace(_)) if self.state.read().reserving.contains(&id) => {
                self.flush()?;
                self.plan_write(id, &pieces)
            }
            other => other,
        };
        let (plan, fresh_runs, striped) = planned?;
        let checksummed = self.stores.is_some();
        let mut sums = Vec::new();
        let mut result = Ok(());
        // A parity LUN's steps that follow each other on the stores are
        // written as one, so that each stripe is written whole.
        let mut group: Vec<u8> = Vec::new();
        let mut group_at = Pba::new(0);
        for (n, step) in plan.iter().enumerate() {
            let (lba, data) = pieces[step.piece];
            let from = (step.lba - Lba::new(lba)).bytes() as usize;
            let bytes = &data[from..from + step.len.bytes() as usize];
            if checksummed {
                sums.push(crate::sums::of_blocks(bytes));
            }
            let written = if striped {
                if group.is_empty() {
                    group_at = step.pba;
                }
                group.extend_from_slice(bytes);
                let next = group_at.plus(group.len() as u64 / BLOCK_SIZE);
                if plan.get(n + 1).is_some_and(|s| s.pba == next) {
                    continue;
                }
                let w = self.data.write_at(&group, group_at.bytes());
                group.clear();
                w
            } else {
                self.data.write_at(bytes, step.pba.bytes())
            };
            if let Err(e) = written {
                result = Err(self.data_write_error(e));
                break;
            }
        }
        // Even a failed write may have changed blocks written in place.
        self.data_dirty.store(true, Ordering::Release);
        let mut s = self.state.lock();
        s.unreserve(&fresh_runs);
        if let Err(e) = result {
            // Nothing points at the new blocks: they are free at once.
            for r in fresh_runs {
                s.alloc.release(r);
            }
            return Err(e);
        }
        if s.luns.contains_key(&id) {
            if let Some(table) = &mut s.sums {
                for (step, sums) in plan.iter().zip(&sums) {
                    table.set(step.pba, sums);
                }
            }
            if striped {
                Engine::pad_sums(&mut s, &fresh_runs);
            }
            for step in plan.into_iter().filter(|p| p.fresh) {
                s.set_head(
                    id,
                    step.lba.get(),
                    step.len.get(),
                    Some(Val::Data(step.pba)),
                );
            }
            for (at, n) in zero_runs {
                s.set_head(id, at, n, Some(Val::Zero));
            }
        } else {
            for r in fresh_runs {
                s.alloc.release(r);
            }
            return Err(Error::not_found("LUN", format!("#{id}")));
        }
        Ok(())
    }

    /// What a failed data write means. A full file system under the sparse
    /// data file is a clean refusal: nothing the write was to replace was
    /// touched (new blocks) or the bytes are the client's to rewrite (in
    /// place), and the pool goes on. Any other error is a device that can no
    /// longer be trusted: the pool fails (decision 015).
    pub(crate) fn data_write_error(&self, e: std::io::Error) -> Error {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull {
            Error::NoSpace(format!("the file system under the pool is full: {e}"))
        } else {
            self.fail(format!("writing the data file: {e}"))
        }
    }

    /// Trim: the range reads back as zeros and its space is freed when
    /// nothing else sees it. Partial blocks at the edges are zeroed.
    pub fn trim(&self, target: Target, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.zero_range(target, offset, len, Zeroing::Trim, fua, false)
    }

    /// Write-zeroes without writing data: with `no_hole` the range stays
    /// allocated as zeros in the map, else it is unmapped like a trim.
    pub fn write_zeroes(
        &self,
        target: Target,
        offset: u64,
        len: u64,
        no_hole: bool,
        fua: bool,
    ) -> Result<()> {
        let how = if no_hole {
            Zeroing::Allocated
        } else {
            Zeroing::Trim
        };
        self.zero_range(target, offset, len, how, fua, false)
    }

    /// Zeroing that may change a replica's head: a transfer's.
    pub(crate) fn zero_range_unchecked(
        &self,
        target: Target,
        offset: u64,
        len: u64,
        how: Zeroing,
        fua: bool,
    ) -> Result<()> {
        self.zero_range(target, offset, len, how, fua, true)
    }

    fn zero_range(
        &self,
        target: Target,
        offset: u64,
        len: u64,
        how: Zeroing,
        fua: bool,
        replica_ok: bool,
    ) -> Result<()> {
        let id = self.writable(target)?;
        // Zeroing is metadata only, so its size limit is the volume's.
        let check = |s: &State| -> Result<()> {
            s.check_open()?;
            Self::check_bounds(s, target, offset, len)?;
            crate::replica::check_writer(s.lun(id)?, replica_ok)
        };
        check(&self.state.lock())?;
        if len == 0 {
            return if fua { self.flush() } else { Ok(()) };
        }
        let first = offset / BLOCK_SIZE;
        let end = (offset + len).div_ceil(BLOCK_SIZE);
        let first_full = offset.div_ceil(BLOCK_SIZE);
        let end_full = (offset + len) / BLOCK_SIZE;
        // Edges, middle and map change under one hold of the stripes and
        // the fence, and the edges in one allocation: a full pool refuses
        // the whole request rather than zeroing one edge of it.
        let _stripes = self.lock_stripes(id, first, end - first);
        let fence = self.fence_of_id(id)?;
        let _fenced = sched::acquire("fence.read", || fence.try_read(), || fence.read());
        // The size may have changed while we waited for the fence.
        check(&self.state.lock())?;
        // Partial blocks at the edges: read, zero the part in range, write.
        let bs = BLOCK_SIZE as usize;
        let mut edges = vec![0u8; 2 * bs];
        let (left, right) = edges.split_at_mut(bs);
        let mut pieces: Vec<(u64, &[u8])> = Vec::with_capacity(2);
        if offset < first_full * BLOCK_SIZE || first_full > end_full {
            self.read(target, first * BLOCK_SIZE, left)?;
            let from = (offset - first * BLOCK_SIZE) as usize;
            let to = ((offset + len).min((first + 1) * BLOCK_SIZE) - first * BLOCK_SIZE) as usize;
            left[from..to].fill(0);
            pieces.push((first, left));
        }
        if end_full * BLOCK_SIZE < offset + len && end_full >= first_full {
            self.read(target, end_full * BLOCK_SIZE, right)?;
            right[..(offset + len - end_full * BLOCK_SIZE) as usize].fill(0);
            pieces.push((end_full, right));
        }
        if !pieces.is_empty() {
            self.write_pieces(id, &pieces)?;
        }
        if end_full > first_full {
            let count = end_full - first_full;
            let mut s = self.state.lock();
            s.check_open()?;
            // A clone must hide its parent's data, so it records zeros
            // (unless the transfer it applies says to read the parent).
            let val = match how {
                Zeroing::Allocated => Some(Val::Zero),
                Zeroing::Trim if s.lun(id)?.parent.is_some() => Some(Val::Zero),
                Zeroing::Trim | Zeroing::Unmap => None,
            };
            s.set_head(id, first_full, count, val);
        }
        drop(_fenced);
        drop(_stripes);
        self.throttle_dirty()?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Which ranges of `[offset, offset+len)` hold data, recorded zeros, or
    /// nothing. Lengths are in bytes; the answer covers the whole range.
    pub fn block_status(
        &self,
        target: Target,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, Allocation)>> {
        let s = self.state.read();
        s.check_open()?;
        Self::check_visible(&s, target, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let (lun, at) = match target {
            Target::Lun(id) => (id, None),
            Target::Snapshot(id, e) => (id, Some(e.0)),
        };
        let first = offset / BLOCK_SIZE;
        let end = (offset + len).div_ceil(BLOCK_SIZE);
        let mut segs = Segments::new();
        resolve_blocks(&s, lun, at, first, end, &mut segs);
        let mut out: Vec<(u64, Allocation)> = Vec::new();
        let mut lba = first;
        for (n, src) in segs {
            let a = (lba * BLOCK_SIZE).max(offset);
            let b = ((lba + n) * BLOCK_SIZE).min(offset + len);
            let kind = match src {
                Src::Data(_) => Allocation::Data,
                Src::Zero => Allocation::Zero,
                Src::Hole => Allocation::Hole,
            };
            match out.last_mut() {
                Some((l, k)) if *k == kind => *l += b - a,
                _ => out.push((b - a, kind)),
            }
            lba += n;
        }
        Ok(out)
    }

    /// How big the maps are: what the metadata store holds for them.
    pub fn metadata_stats(&self) -> MetadataStats {
        let s = self.state.read();
        let head_extents: u64 = s.luns.values().map(|l| l.head.iter().count() as u64).sum();
        let history_ranges: u64 = s.luns.values().map(|l| l.history.len() as u64).sum();
        let history_versions: u64 = s
            .luns
            .values()
            .flat_map(|l| l.history.iter().map(|(_, r)| r.versions.len() as u64))
            .sum();
        let shared_runs = s.refs.entries().count() as u64;
        // Key 17 bytes; head value 24; history 8 + 24 per version; refs key 9 + value 12.
        let encoded_bytes = head_extents * (17 + 24)
            + history_ranges * (17 + 8)
            + history_versions * 24
            + shared_runs * (9 + 12);
        MetadataStats {
            head_extents,
            history_ranges,
            history_versions,
            shared_runs,
            encoded_bytes,
        }
    }
}

/// A data file that cannot grow to `bytes` is a capacity the file system
/// cannot hold, which the caller can fix, not an I/O failure of the pool.
pub(crate) fn data_file_growth_error(e: std::io::Error, bytes: u64) -> Error {
    match e.kind() {
        std::io::ErrorKind::FileTooLarge => Error::InvalidArgument(format!(
            "the file system under the pool cannot hold a {bytes}-byte data file ({e}); give a smaller capacity"
        )),
        std::io::ErrorKind::StorageFull => Error::NoSpace(format!(
            "the file system under the pool has no room to grow the data file to {bytes} bytes ({e})"
        )),
        _ => Error::Io(e),
    }
}

/// Whether a block is all zeros; stops at the first non-zero word, so data
/// costs a few instructions and zeros a pass at memory speed.
pub(crate) fn is_zero(block: &[u8]) -> bool {
    let mut words = block.chunks_exact(16);
    words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

pub(crate) fn stripe_of(lun: LunId, lba: u64) -> usize {
    let h = lun.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ lba.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (h >> 32) as usize % STRIPES
}

/// One stretch of a write's plan: `len` blocks at `lba`, from piece number
/// `piece`, written to physical block `pba` (in place, or `fresh`: newly
/// allocated, mapped once the data is written).
struct Step {
    lba: Lba,
    len: BlockCount,
    pba: Pba,
    fresh: bool,
    piece: usize,
}

/// Splits every piece into runs of data blocks and runs of zero blocks
/// (zeros are recorded in the map, not written).
fn data_and_zero_runs<'a>(all: &[(u64, &'a [u8])]) -> (Pieces<'a>, Vec<(u64, u64)>) {
    // Split every piece into runs of data blocks and runs of zero blocks.
    let bs = BLOCK_SIZE as usize;
    let mut pieces: Pieces<'a> = Vec::with_capacity(all.len());
    let mut zero_runs: Vec<(u64, u64)> = Vec::new();
    for &(lba, data) in all {
        let mut i = 0;
        let blocks = data.len() / bs;
        while i < blocks {
            let zero = is_zero(&data[i * bs..(i + 1) * bs]);
            let mut j = i + 1;
            while j < blocks && is_zero(&data[j * bs..(j + 1) * bs]) == zero {
                j += 1;
            }
            if zero {
                zero_runs.push((lba + i as u64, (j - i) as u64));
            } else {
                pieces.push((lba + i as u64, &data[i * bs..j * bs]));
            }
            i = j;
        }
    }
    (pieces, zero_runs)
}

/// Data pieces of a write: `(lba, whole blocks)`.
type Pieces<'a> = Vec<(u64, &'a [u8])>;
