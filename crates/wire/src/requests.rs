//! What the server accepts. Every request refuses unknown fields.

use super::responses::{SnapshotBatchInfo, SnapshotInfo};
use super::sizes::{capacity_field, mirror_rate_field, rate_field, size_field};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
    /// How the LUN's blocks are kept: `none`, `mirror`, `mirror3` or
    /// `parity:K+M`. Absent: the pool's default (`pool show`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "mirror")]
    pub redundancy: Option<String>,
    /// Thick: reserve the whole size, so that this LUN never gets ENOSPC
    /// while others may (not for parity classes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserve: bool,
    /// Reserve this share of the size (0 to 100 per cent) for what the
    /// LUN's snapshots keep.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(maximum = 100)]
    pub snapshot_reserve_percent: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `POST /api/v1/relayouts`: move a LUN into another redundancy class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Relayout {
    #[schema(example = "vol0/db")]
    pub lun: String,
    /// `none`, `mirror`, `mirror3` or `parity:K+M`.
    #[schema(example = "parity:4+2")]
    pub redundancy: String,
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
    /// The redundancy class of new LUNs that name none (a pool on
    /// devices): `none`, `mirror`, `mirror3` or `parity:K+M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "mirror3")]
    pub redundancy: Option<String>,
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

#[cfg(feature = "engine")]
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

/// `POST /api/v1/pool/devices`: a device joins the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDevice {
    /// An existing file or block device on the server.
    #[schema(example = "/dev/sdd")]
    pub path: String,
    /// Relabel a device that carries another blockfork pool's label,
    /// destroying what it holds.
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /api/v1/pool/devices?path=...`: which device leaves; the body
/// of `POST /api/v1/pool/devices/clear`: which device comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DevicePath {
    #[schema(example = "/dev/sdb")]
    pub path: String,
}

/// `POST /api/v1/pool/devices/replace`: NEW joins the pool and what OLD
/// held is rebuilt onto it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceDevice {
    #[schema(example = "/dev/sdb")]
    pub old: String,
    #[schema(example = "/dev/sde")]
    pub new: String,
    #[serde(default)]
    pub force: bool,
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

#[cfg(feature = "engine")]
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
    /// Pool-wide mirror transfer rate limit in MB/s (10^6 bytes per
    /// second); 0 for unlimited. Each mirror's own `--rate` applies too.
    #[serde(
        default,
        deserialize_with = "mirror_rate_field",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(example = 100)]
    pub mirror_rate_mbps: Option<u64>,
    /// Count NBD requests for the per-LUN metrics and the dashboard's
    /// rates (on by default; `serve --no-io-metrics` starts it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_metrics: Option<bool>,
    /// The scrub's pace in MB/s (10^6 bytes per second); 0 for unlimited.
    /// While reads or writes arrive, a scrub reads at a quarter of it.
    #[serde(
        default,
        deserialize_with = "rate_field",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(example = 64)]
    pub scrub_rate_mbps: Option<u64>,
    /// The pace of rebuilds, removals and levelling in MB/s; 0 for
    /// unlimited; a quarter of it while reads or writes arrive.
    #[serde(
        default,
        deserialize_with = "rate_field",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(example = 256)]
    pub rebuild_rate_mbps: Option<u64>,
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
