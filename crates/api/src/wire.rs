//! The types that cross the wire, shared by the server and the CLI so that
//! the two cannot drift. Requests refuse unknown fields; responses mirror the
//! engine's info types field for field.
//!
//! Sizes are always whole numbers of bytes (`u64`): units like "10G" are the
//! CLI's business, and a string where a size belongs is a 400 that says so.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::{IntoParams, ToSchema};

/// Most snapshots one batch request (or one group snapshot) may take.
pub const BATCH_SNAPSHOTS_MAX: usize = 1024;

// ---------------------------------------------------------------- responses

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
}

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
}

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
}

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
}

impl Settings {
    pub fn from_split_rate(bytes_per_sec: u64) -> Settings {
        Settings {
            split_rate_mbps: bytes_per_sec / MB,
            split_rate_bytes_per_sec: bytes_per_sec,
        }
    }
}

/// One MB, the unit of the split rate: 10^6 bytes.
pub const MB: u64 = 1_000_000;

// ----------------------------------------------------------------- requests

/// `POST /api/v1/luns`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLun {
    /// A path of segments made of `[A-Za-z0-9._-]`, none of them `.` or
    /// `..`; at most 255 bytes.
    #[schema(
        example = "vol0/db",
        pattern = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        max_length = 255
    )]
    pub name: String,
    /// Size in bytes: a positive multiple of 4096, at most 64 TiB.
    #[serde(deserialize_with = "size_field")]
    #[schema(
        example = 10737418240u64,
        minimum = 4096,
        maximum = 70368744177664u64,
        multiple_of = 4096
    )]
    pub size: u64,
}

/// `PATCH /api/v1/luns/{name}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeLun {
    /// New size in bytes: a positive multiple of 4096, at most 64 TiB.
    #[serde(deserialize_with = "size_field")]
    #[schema(minimum = 4096, maximum = 70368744177664u64, multiple_of = 4096)]
    pub size: u64,
    /// Must be true to make the LUN smaller, which discards its tail.
    #[serde(default)]
    pub shrink: bool,
}

/// One snapshot to take: `POST /api/v1/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// The LUN to snapshot.
    #[schema(
        example = "vol0/db",
        pattern = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        max_length = 255
    )]
    pub lun: String,
    /// The snapshot's name, one segment of `[A-Za-z0-9._-]`.
    #[schema(example = "nightly", pattern = r"^[A-Za-z0-9._-]+$", max_length = 255)]
    pub name: String,
}

/// Several snapshots taken at one point in time, in one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotBatch {
    /// At most 1024.
    #[schema(max_items = 1024)]
    pub snapshots: Vec<CreateSnapshot>,
}

/// The body of `POST /api/v1/snapshots`: one snapshot, or a batch (an
/// object with a `snapshots` array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum CreateSnapshots {
    One(CreateSnapshot),
    Batch(CreateSnapshotBatch),
}

impl<'de> Deserialize<'de> for CreateSnapshots {
    // Picks the shape by the `snapshots` key, so that a mistake in either
    // shape gets that shape's precise error rather than serde's generic
    // "did not match any variant".
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let is_batch = value
            .as_object()
            .is_some_and(|o| o.contains_key("snapshots"));
        if is_batch {
            CreateSnapshotBatch::deserialize(value)
                .map(CreateSnapshots::Batch)
                .map_err(de::Error::custom)
        } else {
            CreateSnapshot::deserialize(value)
                .map(CreateSnapshots::One)
                .map_err(de::Error::custom)
        }
    }
}

/// The response of `POST /api/v1/snapshots`: the snapshot taken, or for a
/// batch request an object with a `snapshots` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CreatedSnapshots {
    One(SnapshotInfo),
    Batch(SnapshotBatchInfo),
}

/// `POST /api/v1/group-snapshots`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupSnapshot {
    /// The group's name; each member gets a snapshot of this name.
    #[schema(example = "nightly", pattern = r"^[A-Za-z0-9._-]+$", max_length = 255)]
    pub name: String,
    /// Member LUNs, at least one and at most 1024.
    #[schema(min_items = 1, max_items = 1024)]
    pub luns: Vec<String>,
}

/// `PATCH /api/v1/pool`: absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrowPool {
    /// New capacity in bytes: a multiple of 4096, not less than now, at
    /// most 1 PiB (2^50) and no more than the file system under the pool
    /// holds in one file.
    #[serde(
        default,
        deserialize_with = "capacity_field",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 4096, maximum = 1125899906842624u64, multiple_of = 4096)]
    pub capacity: Option<u64>,
    /// `open` or `closed`: whether LUNs without maps are visible to every
    /// NBD client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessMode>,
}

/// The pool's access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    Open,
    Closed,
}

/// A host group: the hosts a LUN can be mapped to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IgroupInfo {
    /// One segment of `[A-Za-z0-9._-]`.
    #[schema(example = "esx-cluster")]
    pub name: String,
    /// Members by source address, as CIDRs.
    #[schema(example = json!(["10.0.0.0/24"]))]
    pub addresses: Vec<String>,
    /// Members by TLS client-certificate subject CN.
    #[schema(example = json!(["host-a"]))]
    pub cert_cns: Vec<String>,
    /// LUNs mapped to this igroup.
    pub luns: Vec<String>,
}

impl From<engine::IgroupInfo> for IgroupInfo {
    fn from(g: engine::IgroupInfo) -> Self {
        IgroupInfo {
            name: g.name,
            addresses: g.addresses,
            cert_cns: g.cert_cns,
            luns: g.luns,
        }
    }
}

/// `POST /api/v1/igroups`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIgroup {
    /// One segment of `[A-Za-z0-9._-]`.
    #[schema(
        example = "esx-cluster",
        pattern = r"^[A-Za-z0-9._-]+$",
        max_length = 255
    )]
    pub name: String,
    /// CIDRs or bare addresses (a bare address is a /32 or /128).
    #[serde(default)]
    #[schema(example = json!(["10.0.0.0/24", "192.0.2.7"]))]
    pub addresses: Vec<String>,
    /// TLS client-certificate subject CNs.
    #[serde(default)]
    pub cert_cns: Vec<String>,
}

/// One igroup member, for `POST /api/v1/igroups/{name}/members` and
/// `DELETE` on the same path: exactly one of the two fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IgroupMember {
    /// A CIDR or a bare address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "10.0.0.0/24")]
    pub address: Option<String>,
    /// A TLS client-certificate subject CN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_cn: Option<String>,
}

/// A LUN map: `lun` is visible to the members of `igroup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LunMap {
    #[schema(example = "vol0/db")]
    pub lun: String,
    #[schema(example = "esx-cluster")]
    pub igroup: String,
}

/// One range of `POST /api/v1/clone-range`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRange {
    /// `LUN` or `LUN@SNAPSHOT`.
    #[schema(example = "vol0/db@nightly")]
    pub source: String,
    /// Bytes; multiples of 4096.
    #[schema(multiple_of = 4096)]
    pub source_offset: u64,
    #[schema(multiple_of = 4096)]
    pub target_offset: u64,
    #[schema(minimum = 4096, multiple_of = 4096)]
    pub length: u64,
}

/// `POST /api/v1/clone-range`: make ranges of `target` read what ranges of
/// LUNs or snapshots read, sharing blocks, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRanges {
    /// The LUN written.
    #[schema(
        example = "vol0/restore",
        pattern = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        max_length = 255
    )]
    pub target: String,
    /// 1 to 100000 ranges; target ranges may not overlap each other nor a
    /// range read from the target's own current content.
    #[schema(min_items = 1, max_items = 100000)]
    pub ranges: Vec<CloneRange>,
}

/// What a range clone did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CloneRangeReport {
    pub target: String,
    pub ranges: u64,
    /// Bytes the target now reads from the sources.
    pub bytes: u64,
    /// Source extents mapped (the cost of the call).
    pub extents: u64,
    /// Of `bytes`, the data blocks now shared (the rest were zeros or holes).
    pub shared_bytes: u64,
}

impl From<engine::RangeCloneReport> for CloneRangeReport {
    fn from(r: engine::RangeCloneReport) -> Self {
        CloneRangeReport {
            target: r.target,
            ranges: r.ranges,
            bytes: r.bytes,
            extents: r.extents,
            shared_bytes: r.shared_bytes,
        }
    }
}

/// `POST /api/v1/clones`: writable clones of a snapshot, all in one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClones {
    /// The snapshot to clone, as `LUN@SNAPSHOT`.
    #[schema(
        example = "vol0/db@nightly",
        pattern = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*@[A-Za-z0-9._-]+$"
    )]
    pub source: String,
    /// The clone's LUN name; with `count`, the clones are `NAME-1` to
    /// `NAME-N`.
    #[schema(
        example = "vol0/test",
        pattern = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        max_length = 255
    )]
    pub name: String,
    /// How many clones to make, 1 to 10000; absent for one clone named
    /// exactly `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub count: Option<u32>,
    /// Start each clone's split at once (a snapclone).
    #[serde(default)]
    pub split: bool,
}

/// Names the clone of `POST /api/v1/splits/start` and `/splits/stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    /// The clone's LUN name.
    #[schema(
        example = "vol0/test",
        pattern = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        max_length = 255
    )]
    pub lun: String,
}

/// `PATCH /api/v1/settings`: absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// Pool-wide clone split rate limit in MB/s (10^6 bytes per second);
    /// 0 for unlimited.
    #[serde(
        default,
        deserialize_with = "rate_field",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(example = 128)]
    pub split_rate_mbps: Option<u64>,
}

/// `GET /api/v1/luns`
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListLunsQuery {
    /// Only LUNs whose name starts with this string.
    pub prefix: Option<String>,
}

/// `DELETE /api/v1/luns/{name}`
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteLunQuery {
    /// Also delete the LUN's snapshots.
    #[serde(default)]
    pub recursive: bool,
}

/// `GET /api/v1/snapshots`
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListSnapshotsQuery {
    /// Only this LUN's snapshots (all LUNs' when absent).
    pub lun: Option<String>,
}

/// Names the LUN of the snapshot in the path.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SnapshotLunQuery {
    /// The LUN the snapshot belongs to.
    pub lun: String,
}

/// `GET /api/v1/splits`
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListSplitsQuery {
    /// Only splits of LUNs whose name starts with this string.
    pub prefix: Option<String>,
}

// ------------------------------------------------------------------ sizes

fn size_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(BytesVisitor::bytes("size"))
}

fn capacity_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    deserializer
        .deserialize_any(BytesVisitor::bytes("capacity"))
        .map(Some)
}

fn rate_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    deserializer
        .deserialize_any(BytesVisitor {
            field: "split_rate_mbps",
            unit: "MB/s (10^6 bytes per second)",
            example: "128, or 0 for unlimited",
        })
        .map(Some)
}

/// Accepts only a non-negative integer, and says plainly what is wrong
/// with anything else (the common mistake being "10G").
struct BytesVisitor {
    field: &'static str,
    unit: &'static str,
    example: &'static str,
}

impl BytesVisitor {
    fn bytes(field: &'static str) -> BytesVisitor {
        BytesVisitor {
            field,
            unit: "bytes",
            example: "10737418240",
        }
    }

    fn refuse<E: de::Error>(&self, got: impl fmt::Display) -> E {
        E::custom(format!(
            "`{}` must be a whole number of {}, like {}, not {got}; the API takes no units",
            self.field, self.unit, self.example
        ))
    }
}

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "`{}` as a whole number of {}", self.field, self.unit)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| self.refuse(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        Err(self.refuse(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        Err(self.refuse(format_args!("the string {v:?}")))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u64, E> {
        Err(self.refuse(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Err(self.refuse("null"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<u64, A::Error> {
        Err(self.refuse("an array"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<u64, A::Error> {
        Err(self.refuse("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_numbers() {
        let ok: CreateLun = serde_json::from_str(r#"{"name":"a","size":4096}"#).unwrap();
        assert_eq!(ok.size, 4096);
        for bad in [r#""10G""#, "-1", "1.5", "null", "true", "[1]", "{}"] {
            let body = format!(r#"{{"name":"a","size":{bad}}}"#);
            let err = serde_json::from_str::<CreateLun>(&body).unwrap_err();
            assert!(
                err.to_string().contains("whole number of bytes"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn snapshot_request_shapes() {
        let one: CreateSnapshots = serde_json::from_str(r#"{"lun":"a","name":"s"}"#).unwrap();
        assert!(matches!(one, CreateSnapshots::One(_)));
        let batch: CreateSnapshots =
            serde_json::from_str(r#"{"snapshots":[{"lun":"a","name":"s"}]}"#).unwrap();
        assert!(matches!(batch, CreateSnapshots::Batch(b) if b.snapshots.len() == 1));
        let err =
            serde_json::from_str::<CreateSnapshots>(r#"{"lun":"a","name":"s","x":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
        let err =
            serde_json::from_str::<CreateSnapshots>(r#"{"snapshots":[{"lun":"a"}]}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `name`"), "{err}");
    }
}
