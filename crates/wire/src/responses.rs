//! What the server answers: the engine's info types, field for field.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: `invalid_argument`, `out_of_range`,
    /// `not_found`, `already_exists`, `has_dependents`, `read_only`,
    /// `no_space`, `pool_failed`, `closed`, `io_error`, `store_error`,
    /// `payload_too_large`, `unsupported_media_type`, `method_not_allowed`,
    /// `unauthorized`,
    /// `internal`.
    #[schema(example = "not_found")]
    pub code: String,
    /// One sentence for a person, naming the object concerned.
    #[schema(example = "LUN \"vol0/db\" does not exist")]
    pub message: String,
}

/// A LUN: a thin volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LunInfo {
    pub id: u64,
    /// A path of segments made of `[A-Za-z0-9._-]`, like `vol0/db`.
    #[schema(example = "vol0/db")]
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Bytes of data the LUN's current content holds (shared or not).
    pub allocated_bytes: u64,
    pub snapshot_count: u64,
    /// Unix seconds.
    pub created: u64,
    /// `LUN@SNAPSHOT` this LUN is a clone of, while it reads through it
    /// (until its split finishes); ` (deleted)` follows a snapshot that was
    /// deleted and lives on, hidden, only for its clones.
    #[schema(example = "vol0/db@nightly")]
    pub parent: Option<String>,
    /// Clones that read through one of this LUN's snapshots.
    pub clones: Vec<String>,
    /// Igroups the LUN is mapped to: only their members see it (and its
    /// snapshots) over NBD. No maps: everyone in an open pool, no one in a
    /// closed one.
    #[serde(default)]
    pub maps: Vec<String>,
    /// A mirror destination: read-only; readers see `replica_view`.
    #[serde(default)]
    pub replica: bool,
    /// The snapshot a mirror destination's readers see: its newest
    /// complete transfer (none until the baseline completes).
    #[serde(default)]
    pub replica_view: Option<String>,
    /// How the LUN's blocks are kept: `none`, `mirror`, `mirror3` or
    /// `parity:K+M`.
    #[serde(default = "none_class")]
    #[schema(example = "mirror")]
    pub redundancy: String,
    /// Thick: its whole size is reserved (`lun create --reserve`).
    #[serde(default)]
    pub reserve: bool,
    /// A share of its size, in per cent, reserved for what its snapshots
    /// keep.
    #[serde(default)]
    pub snapshot_reserve_percent: u32,
    /// Bytes of data it may still claim from its reservation: no other
    /// LUN may take them.
    #[serde(default)]
    pub reserved_bytes: u64,
    /// While it moves into a new redundancy class (`POST
    /// /api/v1/relayouts`): bytes of it looked at so far, of `size_bytes`.
    #[serde(default)]
    pub relayout_done_bytes: Option<u64>,
}

fn none_class() -> String {
    "none".into()
}

#[cfg(feature = "engine")]
impl From<engine::LunInfo> for LunInfo {
    fn from(l: engine::LunInfo) -> Self {
        LunInfo {
            id: l.id,
            name: l.name,
            size_bytes: l.size_bytes,
            allocated_bytes: l.allocated_bytes,
            snapshot_count: l.snapshot_count,
            created: l.created,
            parent: l.parent,
            clones: l.clones,
            maps: l.maps,
            replica: l.replica,
            replica_view: l.replica_view,
            redundancy: l.redundancy,
            reserve: l.reserve,
            snapshot_reserve_percent: l.snapshot_reserve_percent,
            reserved_bytes: l.reserved_bytes,
            relayout_done_bytes: l.relayout_done_bytes,
        }
    }
}

/// A point-in-time, read-only image of a LUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// The LUN it is a snapshot of.
    pub lun: String,
    /// One segment of `[A-Za-z0-9._-]`, unique within its LUN.
    pub name: String,
    pub epoch: u64,
    /// Unix seconds.
    pub created: u64,
    /// The LUN's size when the snapshot was taken, in bytes.
    pub size_bytes: u64,
    /// Bytes only this snapshot sees: what deleting it frees.
    pub exclusive_bytes: u64,
    /// The group snapshot it belongs to.
    pub group: Option<String>,
    /// Clones that read through this snapshot: deleting it only hides it
    /// until the last of them is split or deleted.
    pub clones: Vec<String>,
    /// Mirror relationships that need it (a common base, or a transfer in
    /// flight): deleting it is refused until they let go.
    #[serde(default)]
    pub holds: Vec<String>,
}

#[cfg(feature = "engine")]
impl From<engine::SnapshotInfo> for SnapshotInfo {
    fn from(s: engine::SnapshotInfo) -> Self {
        SnapshotInfo {
            lun: s.lun,
            name: s.name,
            epoch: s.epoch,
            created: s.created,
            size_bytes: s.size_bytes,
            exclusive_bytes: s.exclusive_bytes,
            group: s.group,
            clones: s.clones,
            holds: s.holds,
        }
    }
}

/// Snapshots taken together by one batch request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotBatchInfo {
    pub snapshots: Vec<SnapshotInfo>,
}

/// A consistency-group snapshot: one snapshot of each member LUN, all at
/// the same point in time, each named like the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupInfo {
    pub name: String,
    pub epoch: u64,
    /// Unix seconds.
    pub created: u64,
    /// Member LUN names.
    pub members: Vec<String>,
}

#[cfg(feature = "engine")]
impl From<engine::GroupInfo> for GroupInfo {
    fn from(g: engine::GroupInfo) -> Self {
        GroupInfo {
            name: g.name,
            epoch: g.epoch,
            created: g.created,
            members: g.members,
        }
    }
}

/// A background job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Running,
    Done,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Running => "running",
            JobState::Done => "done",
        })
    }
}

/// Where a clone stands in its split: `running`, `stopped`,
/// `waiting-for-space` (the pool is full; the split goes on when space is
/// freed), `not-started` (a clone with no split), `done` (finished since the
/// server started), or `independent` (not a clone, or split earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SplitPhase {
    Running,
    Stopped,
    WaitingForSpace,
    NotStarted,
    Done,
    Independent,
}

#[cfg(feature = "engine")]
impl From<engine::SplitPhase> for SplitPhase {
    fn from(p: engine::SplitPhase) -> Self {
        match p {
            engine::SplitPhase::Running => SplitPhase::Running,
            engine::SplitPhase::Stopped => SplitPhase::Stopped,
            engine::SplitPhase::WaitingForSpace => SplitPhase::WaitingForSpace,
            engine::SplitPhase::NotStarted => SplitPhase::NotStarted,
            engine::SplitPhase::Done => SplitPhase::Done,
            engine::SplitPhase::Independent => SplitPhase::Independent,
        }
    }
}

impl std::fmt::Display for SplitPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The same words as the JSON.
        let v = serde_json::to_value(self).expect("a unit variant");
        f.write_str(v.as_str().expect("a string"))
    }
}

/// A background job, such as reclaiming the space of a deleted snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    pub id: u64,
    /// What the job does, like `snapshot-reclaim`.
    pub kind: String,
    /// The LUN it works on.
    pub lun: String,
    pub state: JobState,
    /// From 0.0 to 1.0.
    pub progress: f64,
    /// Bytes freed so far.
    pub freed_bytes: u64,
    /// Unix seconds.
    pub started: u64,
}

#[cfg(feature = "engine")]
impl From<engine::JobInfo> for JobInfo {
    fn from(j: engine::JobInfo) -> Self {
        JobInfo {
            id: j.id,
            kind: j.kind,
            lun: j.lun,
            state: match j.state {
                engine::JobState::Running => JobState::Running,
                engine::JobState::Done => JobState::Done,
            },
            progress: j.progress,
            freed_bytes: j.freed_bytes,
            started: j.started,
        }
    }
}

/// The pool: the space every LUN and snapshot draws from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub luns: u64,
    pub snapshots: u64,
    pub group_snapshots: u64,
    pub epoch: u64,
    pub jobs_running: u64,
    /// Unix seconds.
    pub created: u64,
    /// `open`: LUNs without maps are visible to every NBD client;
    /// `closed`: a LUN is visible only to the igroups it is mapped to.
    #[schema(example = "closed")]
    pub access: String,
    /// `online`, or `degraded` while a device is faulted.
    #[serde(default = "online")]
    #[schema(example = "online")]
    pub state: String,
    /// Devices of a pool on devices; 0 for a pool on one data file.
    #[serde(default)]
    pub devices: u64,
    #[serde(default)]
    pub faulted_devices: u64,
    /// The redundancy class of new LUNs.
    #[serde(default = "none_class")]
    #[schema(example = "mirror")]
    pub redundancy: String,
    /// Ranges no copy holds right, found by reads and scrubs since the
    /// server started.
    #[serde(default)]
    pub damage: Vec<Damage>,
    /// Raw bytes held back for LUNs with reservations and not yet used by
    /// them: other LUNs get ENOSPC before they are touched.
    #[serde(default)]
    pub reserved_bytes: u64,
}

fn online() -> String {
    "online".into()
}

/// A range of a LUN (or of one of its snapshots) that no copy holds right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Damage {
    pub lun: String,
    /// The snapshot whose content it is (absent: the LUN's current
    /// content).
    #[serde(default)]
    pub snapshot: Option<String>,
    pub offset_bytes: u64,
    pub length_bytes: u64,
}

#[cfg(feature = "engine")]
impl From<engine::scrub::Damage> for Damage {
    fn from(d: engine::scrub::Damage) -> Self {
        Damage {
            lun: d.lun,
            snapshot: d.snapshot,
            offset_bytes: d.offset_bytes,
            length_bytes: d.length_bytes,
        }
    }
}

/// The scrub (`GET /api/v1/pool/scrub`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScrubInfo {
    /// `never`, `running`, `stopped` or `done`.
    #[schema(example = "running")]
    pub state: String,
    /// 0.0 to 1.0
    pub progress: f64,
    pub scanned_bytes: u64,
    pub total_bytes: u64,
    /// Block copies that failed a read or their checksum.
    pub bad_copies: u64,
    /// Block copies rewritten from a good one.
    pub repaired_copies: u64,
    /// Blocks no copy holds right.
    pub lost_blocks: u64,
    /// Where the lost blocks are: LUN (or snapshot) ranges.
    pub damage: Vec<Damage>,
    pub rate_bytes_per_sec: u64,
    /// The pace it is held to (`pool set --scrub-rate`); 0: none.
    pub rate_limit_bytes_per_sec: u64,
    /// Unix seconds.
    pub started: Option<u64>,
    pub finished: Option<u64>,
}

#[cfg(feature = "engine")]
impl From<engine::scrub::ScrubInfo> for ScrubInfo {
    fn from(s: engine::scrub::ScrubInfo) -> Self {
        ScrubInfo {
            state: s.state,
            progress: s.progress,
            scanned_bytes: s.scanned_bytes,
            total_bytes: s.total_bytes,
            bad_copies: s.bad_copies,
            repaired_copies: s.repaired_copies,
            lost_blocks: s.lost_blocks,
            damage: s.damage.into_iter().map(Into::into).collect(),
            rate_bytes_per_sec: s.rate_bytes_per_sec,
            rate_limit_bytes_per_sec: s.rate_limit_bytes_per_sec,
            started: s.started,
            finished: s.finished,
        }
    }
}

/// The device job (`GET /api/v1/pool/devices/job`): a rebuild onto a
/// replacement, a removal, or levelling onto a new device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoveInfo {
    /// `none`, `running`, `done` or `failed`.
    #[schema(example = "running")]
    pub state: String,
    /// `rebuild`, `removal` or `levelling`.
    pub kind: Option<String>,
    /// The device segments leave.
    pub device: Option<String>,
    /// Where they go (a rebuild's or levelling's device).
    pub target: Option<String>,
    /// 0.0 to 1.0
    pub progress: f64,
    pub total_segments: u64,
    pub moved_segments: u64,
    pub copied_bytes: u64,
    /// Blocks no copy held right, skipped.
    pub skipped_blocks: u64,
    /// Where the skipped blocks are.
    pub damage: Vec<Damage>,
    pub rate_bytes_per_sec: u64,
    pub rate_limit_bytes_per_sec: u64,
    pub started: Option<u64>,
    pub finished: Option<u64>,
    /// Why it stopped, when it failed.
    pub error: Option<String>,
}

#[cfg(feature = "engine")]
impl From<engine::reloc::MoveInfo> for MoveInfo {
    fn from(m: engine::reloc::MoveInfo) -> Self {
        MoveInfo {
            state: m.state,
            kind: m.kind,
            device: m.device,
            target: m.target,
            progress: m.progress,
            total_segments: m.total_segments,
            moved_segments: m.moved_segments,
            copied_bytes: m.copied_bytes,
            skipped_blocks: m.skipped_blocks,
            damage: m.damage.into_iter().map(Into::into).collect(),
            rate_bytes_per_sec: m.rate_bytes_per_sec,
            rate_limit_bytes_per_sec: m.rate_limit_bytes_per_sec,
            started: m.started,
            finished: m.finished,
            error: m.error,
        }
    }
}

/// One device of a pool on devices (`GET /api/v1/pool/devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceInfo {
    /// Its place in the pool's device table.
    pub index: u32,
    /// The file or block device, as last opened.
    pub path: String,
    /// The id in its label.
    pub id: String,
    /// `online` or `faulted`.
    #[schema(example = "online")]
    pub state: String,
    /// Why it is faulted.
    #[serde(default)]
    pub reason: Option<String>,
    pub size_bytes: u64,
    pub segments: u64,
    pub used_segments: u64,
    pub used_bytes: u64,
    /// Errors since the server started.
    pub read_errors: u64,
    pub write_errors: u64,
    /// Blocks read whose content did not match their checksum.
    pub checksum_errors: u64,
    /// Blocks rewritten from a good copy.
    pub repaired_blocks: u64,
}

#[cfg(feature = "engine")]
impl From<engine::DeviceInfo> for DeviceInfo {
    fn from(d: engine::DeviceInfo) -> Self {
        DeviceInfo {
            index: d.index,
            path: d.path,
            id: d.id,
            state: d.state,
            reason: d.reason,
            size_bytes: d.size_bytes,
            segments: d.segments,
            used_segments: d.used_segments,
            used_bytes: d.used_bytes,
            read_errors: d.read_errors,
            write_errors: d.write_errors,
            checksum_errors: d.checksum_errors,
            repaired_blocks: d.repaired_blocks,
        }
    }
}

#[cfg(feature = "engine")]
impl From<engine::PoolStatus> for PoolStatus {
    fn from(p: engine::PoolStatus) -> Self {
        PoolStatus {
            capacity_bytes: p.capacity_bytes,
            used_bytes: p.used_bytes,
            free_bytes: p.free_bytes,
            luns: p.luns,
            snapshots: p.snapshots,
            group_snapshots: p.group_snapshots,
            epoch: p.epoch,
            jobs_running: p.jobs_running,
            created: p.created,
            access: p.access,
            state: p.state,
            devices: p.devices,
            faulted_devices: p.faulted_devices,
            redundancy: p.redundancy,
            damage: p.damage.into_iter().map(Into::into).collect(),
            reserved_bytes: p.reserved_bytes,
        }
    }
}

/// What the online invariant check found (`GET /api/v1/pool/check`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolCheck {
    /// Nothing was found wrong.
    pub ok: bool,
    /// One sentence per violation: `committed state: ...` for what a
    /// restart would recover, `live maps: ...` for the in-memory maps.
    pub problems: Vec<String>,
    /// The committed epoch that was read back and checked.
    pub epoch: u64,
    pub luns: u64,
    pub snapshots: u64,
    /// Head extents and history ranges checked.
    pub map_entries: u64,
    pub elapsed_ms: u64,
    /// The longest the check held the lock reads and writes need, in µs.
    pub longest_hold_us: u64,
}

#[cfg(feature = "engine")]
impl From<engine::PoolCheck> for PoolCheck {
    fn from(c: engine::PoolCheck) -> Self {
        PoolCheck {
            ok: c.ok,
            problems: c.problems,
            epoch: c.epoch,
            luns: c.luns,
            snapshots: c.snapshots,
            map_entries: c.map_entries,
            elapsed_ms: c.elapsed_ms,
            longest_hold_us: c.longest_hold_us,
        }
    }
}

/// A clone split's progress: copying what a clone still reads through its
/// parent snapshot into blocks of its own, after which it is independent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SplitInfo {
    /// The clone.
    #[schema(example = "vol0/test")]
    pub lun: String,
    /// `LUN@SNAPSHOT` the clone reads through, while it still does.
    #[schema(example = "vol0/db@nightly")]
    pub parent: Option<String>,
    pub state: SplitPhase,
    /// From 0.0 to 1.0.
    pub progress: f64,
    /// Bytes copied so far.
    pub copied_bytes: u64,
    /// Bytes of the clone's address space the split walks.
    pub total_bytes: u64,
    /// Bytes per second, over the last batches, while running.
    pub rate_bytes_per_sec: u64,
    /// Unix seconds.
    pub started: Option<u64>,
    /// Why the split waits, when it does.
    pub message: Option<String>,
}

#[cfg(feature = "engine")]
impl From<engine::SplitInfo> for SplitInfo {
    fn from(s: engine::SplitInfo) -> Self {
        SplitInfo {
            lun: s.lun,
            parent: s.parent,
            state: s.state.into(),
            progress: s.progress,
            copied_bytes: s.copied_bytes,
            total_bytes: s.total_bytes,
            rate_bytes_per_sec: s.rate_bytes_per_sec,
            started: s.started,
            message: s.message,
        }
    }
}

/// The server's runtime settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    /// Pool-wide clone split rate limit in MB/s (10^6 bytes per second),
    /// rounded down; 0 means unlimited. While reads or writes arrive,
    /// splits copy at a quarter of it.
    #[schema(example = 128)]
    pub split_rate_mbps: u64,
    /// The same limit in bytes per second, exactly; 0 means unlimited.
    #[schema(example = 128000000u64)]
    pub split_rate_bytes_per_sec: u64,
    /// Pool-wide mirror transfer rate limit in MB/s, rounded down; 0
    /// means unlimited.
    #[serde(default)]
    pub mirror_rate_mbps: u64,
    /// The same limit in bytes per second, exactly.
    #[serde(default)]
    pub mirror_rate_bytes_per_sec: u64,
    /// Whether NBD requests are counted for the per-LUN metrics and the
    /// dashboard's rates.
    #[serde(default = "default_true")]
    pub io_metrics: bool,
    /// The scrub's pace in MB/s, rounded down; 0 means unlimited.
    #[serde(default)]
    pub scrub_rate_mbps: u64,
    /// The same pace in bytes per second, exactly.
    #[serde(default)]
    pub scrub_rate_bytes_per_sec: u64,
    /// The pace of rebuilds, removals and levelling in MB/s, rounded down;
    /// 0 means unlimited.
    #[serde(default)]
    pub rebuild_rate_mbps: u64,
    #[serde(default)]
    pub rebuild_rate_bytes_per_sec: u64,
}

fn default_true() -> bool {
    true
}

impl Settings {
    pub fn from_rates(
        split_bytes_per_sec: u64,
        mirror_bytes_per_sec: u64,
        io_metrics: bool,
        scrub_bytes_per_sec: u64,
        rebuild_bytes_per_sec: u64,
    ) -> Settings {
        Settings {
            split_rate_mbps: split_bytes_per_sec / MB,
            split_rate_bytes_per_sec: split_bytes_per_sec,
            mirror_rate_mbps: mirror_bytes_per_sec / MB,
            mirror_rate_bytes_per_sec: mirror_bytes_per_sec,
            io_metrics,
            scrub_rate_mbps: scrub_bytes_per_sec / MB,
            scrub_rate_bytes_per_sec: scrub_bytes_per_sec,
            rebuild_rate_mbps: rebuild_bytes_per_sec / MB,
            rebuild_rate_bytes_per_sec: rebuild_bytes_per_sec,
        }
    }
}

/// One MB, the unit of the split rate: 10^6 bytes.
pub const MB: u64 = 1_000_000;
