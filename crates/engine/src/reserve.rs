//! Space reservations (issue 14, decision 031): `lun create --reserve`
//! (thick: the LUN's whole size guaranteed) and `--snapshot-reserve
//! PERCENT` (a fixed share of its size set aside for what its snapshots
//! keep, as ONTAP's snapshot reserve is).
//!
//! A reserving LUN's outstanding reservation is what it may still need:
//! for a thick LUN, its size plus an overwrite headroom less the blocks its
//! head holds now; plus its snapshot reserve. Allocations for any LUN must
//! leave at least every *other* LUN's outstanding reservation free, so
//! unreserved LUNs get ENOSPC first and a reserved LUN's writes always
//! find room: its head never outgrows its size, and the headroom covers
//! the overwrites whose old blocks come back at the next commit (a write
//! that still finds no room commits and tries once more).
//!
//! Accounting is in raw blocks: a block of a `mirror` LUN costs two, of
//! `mirror3` three. Parity LUNs cannot reserve: a small write holds a whole
//! stripe, so what they will take is not known in advance.

use crate::engine::*;
use crate::redundancy::Redundancy;
use crate::state::{Lun, State};
use crate::types::*;

/// Blocks (16 MiB) a thick LUN keeps for overwrites between two commits:
/// redirected writes take new blocks before the old ones are freed.
pub const OVERWRITE_HEADROOM_BLOCKS: u64 = (16 << 20) / BLOCK_SIZE;

/// The largest snapshot reserve, as a percentage of the LUN's size.
pub const SNAPSHOT_RESERVE_MAX_PERCENT: u32 = 100;

/// Raw blocks `blocks` of `class` take on the devices.
pub fn raw_blocks(class: Redundancy, blocks: u64) -> u64 {
    (blocks * class.devices() as u64).div_ceil(class.data_shards() as u64)
}

/// Data blocks `l` may still claim from its reservation.
pub(crate) fn outstanding(l: &Lun) -> u64 {
    let mut r = 0;
    if l.thick {
        let headroom = l.size_blocks.min(OVERWRITE_HEADROOM_BLOCKS);
        r += (l.size_blocks + headroom).saturating_sub(l.head.data_blocks());
    }
    r + l.size_blocks * u64::from(l.snapshot_reserve_percent) / 100
}

/// Raw blocks reserved and not yet used by every reserving LUN but
/// `except`.
pub(crate) fn reserved_raw(s: &State, except: Option<LunId>) -> u64 {
    s.reserving
        .iter()
        .filter(|&&id| Some(id) != except)
        .filter_map(|id| s.luns.get(id))
        .map(|l| raw_blocks(l.class, outstanding(l)))
        .sum()
}

impl Engine {
    /// Raw blocks free for new data: the free blocks of the stores (each
    /// costing its class's copies) and the free segments of the healthy
    /// devices; the free blocks of a pool on one data file.
    pub(crate) fn raw_free(&self, s: &State) -> u64 {
        let Some(stores) = &self.stores else {
            return s.alloc.free_blocks();
        };
        let layout = stores.layout().read();
        let segment_blocks = layout.segment_bytes() / BLOCK_SIZE;
        let segments: u64 = (0..layout.devices() as u32)
            .filter(|&d| !stores.errors(d).faulted())
            .map(|d| layout.free_segments(d) as u64)
            .sum();
        let in_stores: u64 = s
            .alloc
            .free_by_class()
            .map(|(class, free)| raw_blocks(class, free))
            .sum();
        segments * segment_blocks + in_stores
    }

    /// Refuses taking `need` blocks of `class` for LUN `id` when what would
    /// be left is less than the other LUNs' outstanding reservations.
    pub(crate) fn check_reservations(
        &self,
        s: &State,
        id: LunId,
        class: Redundancy,
        need: u64,
    ) -> Result<()> {
        if s.reserving.is_empty() {
            return Ok(());
        }
        let held = reserved_raw(s, Some(id));
        if held == 0 {
            return Ok(());
        }
        let free = self.raw_free(s);
        let cost = raw_blocks(class, need);
        if free >= cost + held {
            return Ok(());
        }
        Err(Error::NoSpace(format!(
            "{} bytes are needed and {} bytes are free, of which {} are reserved for other LUNs (lun create --reserve, --snapshot-reserve)",
            cost * BLOCK_SIZE,
            free * BLOCK_SIZE,
            held * BLOCK_SIZE
        )))
    }

    /// Checks that a reservation of `blocks` data blocks of `class` fits
    /// what no one has reserved yet.
    pub(crate) fn check_can_reserve(
        &self,
        s: &State,
        name: &str,
        class: Redundancy,
        blocks: u64,
    ) -> Result<()> {
        let want = raw_blocks(class, blocks);
        let free = self.raw_free(s);
        let held = reserved_raw(s, None);
        let left = free.saturating_sub(held);
        if want > left {
            return Err(Error::NoSpace(format!(
                "LUN \"{name}\" would reserve {} bytes; the pool has {} bytes free that no LUN has reserved",
                want * BLOCK_SIZE,
                left * BLOCK_SIZE
            )));
        }
        Ok(())
    }
}

/// Checks a LUN's reservation settings against its class.
pub(crate) fn validate(class: Redundancy, thick: bool, snapshot_percent: u32) -> Result<()> {
    if snapshot_percent > SNAPSHOT_RESERVE_MAX_PERCENT {
        return Err(Error::InvalidArgument(format!(
            "snapshot reserve {snapshot_percent} % is more than {SNAPSHOT_RESERVE_MAX_PERCENT} %"
        )));
    }
    if (thick || snapshot_percent > 0) && matches!(class, Redundancy::Parity { .. }) {
        return Err(Error::InvalidArgument(format!(
            "a {class} LUN cannot reserve space: each small write holds a whole stripe, so what it will take is not known in advance; use mirror or mirror3"
        )));
    }
    Ok(())
}
