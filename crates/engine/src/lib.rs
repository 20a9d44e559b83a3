//! blockfork's storage engine: a pool of 4 KiB blocks, thin LUNs mapped by
//! extent, O(1) snapshots by epoch, and crash-safe batched metadata commits.
//!
//! See `shared/DESIGN.md` for the model and the invariants, and
//! `docs/decisions/` for the choices made here.

mod access;
mod catalog;
mod chain;
mod changes;
mod classes;
mod clone;
mod codec;
mod datapath;
pub mod devices;
mod devops;
mod devpool;
mod diff;
mod engine;
mod erasure;
pub mod events;
#[cfg(feature = "sim")]
pub mod faulty;
mod fence;
mod history;
pub mod io;
pub mod label;
pub mod layout;
mod load;
mod lun;
mod map;
mod pages;
mod pool;
mod range;
pub mod redundancy;
pub mod relayout;
pub mod reloc;
mod replica;
pub mod reserve;
pub mod sched;
pub mod scrub;
#[cfg(feature = "sim")]
pub mod sim;
mod snapshot;
mod space;
mod split;
mod state;
pub mod stores;
mod sums;
mod types;
mod workers;

pub use access::{
    validate_igroup_name, ClientIdentity, IgroupInfo, Member, CERT_CN_BYTES_MAX, IGROUPS_MAX,
    IGROUP_MEMBERS_MAX,
};
pub use clone::CLONES_PER_CALL_MAX;
pub use devpool::{
    DeviceInfo, DeviceOptions, DEVICES_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};
#[cfg(feature = "sim")]
pub use diff::FULL_WALK;
pub use diff::{DiffChunk, DiffExtent, DiffKind, DIFF_EXTENTS_MAX};
pub use engine::{CommitStats, Engine, EngineConfig, Target, FILL_ALERTS};
pub use events::{quietly, Event, EventLog, Severity};
pub use lun::Reservation;
pub use range::{RangeCloneReport, RangeEntry, RANGES_PER_CALL_MAX};
pub use replica::ReplicaSnapshot;
pub use split::{SplitStep, SPLIT_BATCH_BLOCKS};
pub use types::*;
