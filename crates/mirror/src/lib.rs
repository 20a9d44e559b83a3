//! Mirroring between blockfork servers (issue 13, decision 024).
//!
//! The destination owns a relationship and pulls: it asks the source (over
//! the source's REST API, with a replication token) for a new mirror
//! snapshot, then for the change since the newest snapshot both sides
//! hold, as a checksummed stream that it applies to its replica LUNs'
//! heads, checkpointing as it goes. Readers of a replica see its last
//! complete snapshot until the transfer completes, when one engine commit
//! moves every member to the new one.
//!
//! - `tokens`: replication tokens (the source's side).
//! - `source`: a LUN's change as a stream (the source's side).
//! - `planner`: what to send from which common snapshot; pure.
//! - `transfer`: applying a stream with checkpoints (the destination's).
//! - `manager`: peers, relationships, their workers and schedules.
//! - `store`: the small durable files all of that lives in.

mod limiter;
mod manager;
pub mod planner;
pub mod source;
pub mod store;
pub mod tokens;
mod transfer;

pub use limiter::Limiter;
pub use manager::{Mirrors, GROUP_MEMBERS_MAX};
pub use wire::ReverseRequest;

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Names of mirror snapshots start so: a source deletes on request only
/// snapshots a mirror made.
pub const MIRROR_SNAPSHOT_PREFIX: &str = "mirror.";
