//! Mirroring's API types: replication tokens and the source's replication
//! calls (what a destination asks of a source), peers and mirror
//! relationships (what an operator asks of a destination).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

// ------------------------------------------------------------- source side

/// `POST /api/v1/peer-tokens`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePeerToken {
    /// A name for the site that will use it, `[A-Za-z0-9._-]`.
    #[schema(example = "dr-site")]
    pub name: String,
}

/// A replication token: it can only list snapshots, read snapshot
/// differences, and take, hold and release mirror snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerTokenInfo {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    /// The secret, shown once, when created (never stored in clear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /api/v1/replication/luns?lun=NAME`: what a destination needs to
/// know of a source LUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationLun {
    pub lun: String,
    pub size_bytes: u64,
    /// `LUN@SNAPSHOT` it is a clone of, if it reads through one.
    pub parent: Option<String>,
    /// Oldest first.
    pub snapshots: Vec<ReplicationSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationSnapshot {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    pub size_bytes: u64,
    pub group: Option<String>,
    pub holds: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReplicationLunQuery {
    pub lun: String,
}

/// `POST /api/v1/replication/snapshots`: one snapshot of every LUN at one
/// point in time (a group snapshot when `group`), held by `holder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeMirrorSnapshot {
    pub luns: Vec<String>,
    pub name: String,
    #[serde(default)]
    pub group: bool,
    pub holder: String,
}

/// `POST /api/v1/replication/release`: lets go of a hold; with `delete`,
/// deletes the snapshot too when nothing else holds it and its name marks
/// it as the holder's own mirror snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMirrorSnapshot {
    pub luns: Vec<String>,
    pub snapshot: String,
    pub holder: String,
    #[serde(default)]
    pub delete: bool,
    /// Whether the snapshot is a group snapshot (deleted as one).
    #[serde(default)]
    pub group: bool,
}

/// `POST /api/v1/replication/hold`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldMirrorSnapshot {
    pub lun: String,
    pub snapshot: String,
    pub holder: String,
}

/// `GET /api/v1/replication/stream`: the change of `lun` from `base` to
/// `target`, from block `from`, as a mirror stream
/// (`application/x-blockfork-mirror`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub lun: String,
    pub base: Option<String>,
    pub target: String,
    #[serde(default)]
    pub flatten: bool,
    #[serde(default)]
    pub from: u64,
    /// Where to end the stream early (at a record boundary) once this many
    /// data bytes went out, so that each call is bounded in time; the end
    /// record says where the next call starts.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

// -------------------------------------------------------- destination side

/// `POST /api/v1/peers`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePeer {
    pub name: String,
    /// The source server's API, `http://` or `https://`.
    #[schema(example = "https://site-a.example:8080")]
    pub url: String,
    /// A replication token made on the source (`blockfork peer token create`).
    pub token: String,
    /// PEM of the CA that signed the source's certificate, for https.
    #[serde(default)]
    pub ca_cert: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerInfo {
    pub name: String,
    pub url: String,
    pub tls: bool,
    /// Unix seconds.
    pub created: u64,
    /// Mirror relationships that pull from it.
    pub mirrors: Vec<String>,
}

/// One source LUN and the destination LUN it is mirrored to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorMember {
    pub source: String,
    pub destination: String,
}

/// `POST /api/v1/mirrors`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMirror {
    pub peer: String,
    /// Mirror several LUNs as one unit under this name.
    #[serde(default)]
    pub group: Option<String>,
    pub members: Vec<MirrorMember>,
    /// Seconds between scheduled updates (none: only `mirror update`).
    #[serde(default)]
    pub schedule_secs: Option<u64>,
    /// Bytes per second this relationship may transfer (none: no limit).
    #[serde(default)]
    pub rate_bytes: Option<u64>,
    /// Mirror snapshots kept on the destination (at least 1).
    #[serde(default)]
    pub keep: Option<u32>,
    /// Raise a `mirror-lag` event when the recovery point is older than
    /// this many seconds (default for a scheduled mirror: two intervals
    /// plus a minute; none for an unscheduled one).
    #[serde(default)]
    pub lag_alert_secs: Option<u64>,
}

/// `POST /api/v1/mirrors/{update,abort,break,resync,reverse}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorAction {
    /// The destination LUN, or the group's name.
    pub name: String,
    /// Resync and reverse: discard what would be discarded.
    #[serde(default)]
    pub force: bool,
    /// Resync and reverse: only show the plan.
    #[serde(default)]
    pub dry_run: bool,
    /// Reverse: this server's API URL as the old source reaches it.
    #[serde(default)]
    pub url: Option<String>,
    /// Reverse: PEM of the CA the old source should trust for `url`.
    #[serde(default)]
    pub ca_cert: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorState {
    /// The first transfer has not completed.
    Baselining,
    Idle,
    Transferring,
    /// Broken off: the destination is writable.
    Broken,
    /// The last transfer failed; the next update retries.
    Failed,
    /// Reversed: this side is now the source of a relationship owned by
    /// the old source.
    Reversed,
}

impl MirrorState {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorState::Baselining => "baselining",
            MirrorState::Idle => "idle",
            MirrorState::Transferring => "transferring",
            MirrorState::Broken => "broken",
            MirrorState::Failed => "failed",
            MirrorState::Reversed => "reversed",
        }
    }
}

/// A transfer under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransferInfo {
    pub base: Option<String>,
    pub target: String,
    /// Unix seconds.
    pub started: u64,
    /// Bytes received by this transfer, resumed parts included.
    pub bytes: u64,
    /// Bytes of data the transfer is expected to carry (an estimate from
    /// the changed extents).
    pub bytes_expected: u64,
    /// Bytes per second over the last seconds.
    pub rate_bytes: f64,
    pub eta_secs: Option<u64>,
    /// Times it resumed from a checkpoint.
    pub resumes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MirrorInfo {
    /// The destination LUN, or the group's name.
    pub name: String,
    pub peer: String,
    pub group: bool,
    pub members: Vec<MirrorMember>,
    pub state: MirrorState,
    /// Whether a transfer is running now (the update, with its retries).
    pub running: bool,
    /// The newest snapshot complete on both sides.
    pub common_snapshot: Option<String>,
    /// Its creation time on the source (Unix seconds).
    pub common_created: Option<u64>,
    /// Now minus `common_created`, in seconds.
    pub lag_secs: Option<u64>,
    pub last_success: Option<u64>,
    pub last_error: Option<String>,
    /// Bytes the last complete transfer carried, and how long it took.
    pub last_transfer_bytes: u64,
    pub last_transfer_secs: f64,
    pub schedule_secs: Option<u64>,
    /// The lag over which a `mirror-lag` event is raised (none: never).
    #[serde(default)]
    pub lag_alert_secs: Option<u64>,
    pub rate_bytes: Option<u64>,
    pub keep: u32,
    /// Whether a member is sent as a clone of an already mirrored parent.
    pub clone_of: Vec<Option<String>>,
    pub transfer: Option<TransferInfo>,
    /// What holds the relationship keeps, here and on the source.
    pub holder: String,
}

/// `POST /api/v1/replication/reverse`: what the destination of a broken
/// mirror asks of its old source in a reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseRequest {
    /// The source LUNs (the old source's names), and the destination's.
    pub members: Vec<MirrorMember>,
    /// The relationship's name on the destination (the group's, or its LUN).
    pub name: String,
    pub group: bool,
    /// The holder the destination used on the old source: it proves the
    /// relationship.
    pub holder: String,
    /// How the old source reaches the destination, and with what token.
    pub url: String,
    pub token: String,
    pub ca_cert: Option<String>,
    pub force: bool,
    pub dry_run: bool,
}

/// What a resync or reverse would do (and, when done, did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MirrorPlan {
    pub name: String,
    /// The newest snapshot both sides hold, where the relationship restarts.
    pub common_snapshot: String,
    /// Bytes written since `common_snapshot` that the rollback discards.
    pub discard_bytes: u64,
    /// Where the discarded state is kept.
    pub safety_snapshot: Option<String>,
    /// False for a dry run, or when refused for want of `force`.
    pub done: bool,
}
