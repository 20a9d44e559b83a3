//! Strong types for the quantities the engine juggles, and its error type.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every logical and physical quantity is counted in blocks of this size.
pub const BLOCK_SIZE: u64 = 4096;
/// Largest LUN: 64 TiB.
pub const LUN_SIZE_MAX_BYTES: u64 = 64 << 40;
/// Largest pool: 1 PiB. The data file is one sparse file, and a bigger one
/// than its file system holds fails to grow (ext4 stops at 16 TiB).
pub const POOL_CAPACITY_MAX_BYTES: u64 = 1 << 50;
/// Largest single I/O call; the NBD layer limits requests to 32 MiB.
pub const IO_BYTES_MAX: u64 = 64 << 20;
/// Longest LUN or snapshot name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Most snapshots (including group members) one LUN may hold.
pub const SNAPSHOTS_PER_LUN_MAX: usize = 65_536;

macro_rules! newtype_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(pub u64);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype_u64!(
    /// A LUN's identity; never reused within a pool, so a stale handle can
    /// never reach a LUN created later under the same name.
    LunId
);
newtype_u64!(
    /// The pool-wide counter stamped on every version of every block.
    Epoch
);

/// Typed block quantities: a logical block of a LUN (`Lba`), a physical
/// block of the pool (`Pba`) and a number of blocks (`BlockCount`). Their
/// fields are private and only meaningful arithmetic is defined (an address
/// plus a count is an address, an address minus an address is a count), so
/// a logical block cannot be passed where a physical one is expected, nor
/// a count where an address is.
macro_rules! block_address {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);
        impl $name {
            pub const fn new(block: u64) -> $name {
                $name(block)
            }
            pub const fn get(self) -> u64 {
                self.0
            }
            /// Its byte offset.
            pub const fn bytes(self) -> u64 {
                self.0 * BLOCK_SIZE
            }
            /// `n` blocks further, unless that overflows.
            pub fn checked_add(self, n: u64) -> Option<$name> {
                self.0.checked_add(n).map($name)
            }
            /// `n` blocks further.
            pub fn plus(self, n: u64) -> $name {
                $name(self.0 + n)
            }
        }
        impl std::ops::Add<BlockCount> for $name {
            type Output = $name;
            fn add(self, n: BlockCount) -> $name {
                $name(self.0 + n.0)
            }
        }
        impl std::ops::AddAssign<BlockCount> for $name {
            fn add_assign(&mut self, n: BlockCount) {
                self.0 += n.0;
            }
        }
        impl std::ops::Sub<BlockCount> for $name {
            type Output = $name;
            fn sub(self, n: BlockCount) -> $name {
                $name(self.0 - n.0)
            }
        }
        impl std::ops::Sub for $name {
            type Output = BlockCount;
            fn sub(self, earlier: $name) -> BlockCount {
                BlockCount(self.0 - earlier.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

block_address!(
    /// A physical block of the pool's data file.
    Pba
);
block_address!(
    /// A logical block of a LUN.
    Lba
);

/// A number of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BlockCount(u64);

impl BlockCount {
    pub const ZERO: BlockCount = BlockCount(0);
    pub const fn new(blocks: u64) -> BlockCount {
        BlockCount(blocks)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
    pub const fn bytes(self) -> u64 {
        self.0 * BLOCK_SIZE
    }
}

impl std::ops::Add for BlockCount {
    type Output = BlockCount;
    fn add(self, n: BlockCount) -> BlockCount {
        BlockCount(self.0 + n.0)
    }
}

impl std::ops::AddAssign for BlockCount {
    fn add_assign(&mut self, n: BlockCount) {
        self.0 += n.0;
    }
}

impl std::ops::Sub for BlockCount {
    type Output = BlockCount;
    fn sub(self, n: BlockCount) -> BlockCount {
        BlockCount(self.0 - n.0)
    }
}

impl std::ops::SubAssign for BlockCount {
    fn sub_assign(&mut self, n: BlockCount) {
        self.0 -= n.0;
    }
}

impl std::iter::Sum for BlockCount {
    fn sum<I: Iterator<Item = BlockCount>>(iter: I) -> BlockCount {
        BlockCount(iter.map(|n| n.0).sum())
    }
}

impl fmt::Display for BlockCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a failure came from, so that the NBD layer can pick an errno and the
/// API a status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} \"{name}\" does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("the pool is full: {0}")]
    NoSpace(String),
    #[error("{0} is read-only")]
    ReadOnly(String),
    #[error("{0}")]
    HasDependents(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("metadata store error: {0}")]
    Store(String),
    #[error("the pool stopped: {0}; restart the server to recover from the last durable state")]
    PoolFailed(String),
    #[error("the pool is closed")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable machine-readable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::OutOfRange(_) => "out_of_range",
            Error::NoSpace(_) => "no_space",
            Error::ReadOnly(_) => "read_only",
            Error::HasDependents(_) => "has_dependents",
            Error::Io(_) => "io_error",
            Error::Store(_) => "store_error",
            Error::PoolFailed(_) => "pool_failed",
            Error::Closed => "closed",
        }
    }

    pub(crate) fn not_found(kind: &'static str, name: impl Into<String>) -> Error {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }
}

/// A pool's capacity: whole blocks, at least one, at most 1 PiB.
pub fn validate_pool_capacity(capacity_bytes: u64) -> Result<()> {
    if capacity_bytes < BLOCK_SIZE || !capacity_bytes.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::InvalidArgument(format!(
            "pool capacity must be a positive multiple of {BLOCK_SIZE} bytes, got {capacity_bytes}"
        )));
    }
    if capacity_bytes > POOL_CAPACITY_MAX_BYTES {
        return Err(Error::InvalidArgument(format!(
            "pool capacity {capacity_bytes} bytes exceeds the 1 PiB maximum"
        )));
    }
    Ok(())
}

/// A LUN name is a path of segments made of `[A-Za-z0-9._-]`.
pub fn validate_lun_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "LUN name must be 1 to {NAME_BYTES_MAX} bytes long, got {} bytes",
            name.len()
        )));
    }
    for segment in name.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(Error::InvalidArgument(format!(
                "LUN name \"{name}\" has an empty, \".\" or \"..\" path segment"
            )));
        }
        if let Some(c) = segment.chars().find(|c| !is_name_char(*c)) {
            return Err(Error::InvalidArgument(format!(
                "LUN name \"{name}\" contains {c:?}; use only letters, digits, '.', '_', '-' and '/' between segments"
            )));
        }
    }
    Ok(())
}

/// A snapshot name is one segment of `[A-Za-z0-9._-]`.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "snapshot name must be 1 to {NAME_BYTES_MAX} bytes long, got {} bytes",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(Error::InvalidArgument(format!(
            "snapshot name \"{name}\" is reserved"
        )));
    }
    if let Some(c) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(Error::InvalidArgument(format!(
            "snapshot name \"{name}\" contains {c:?}; use only letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
}

/// Sizes must be whole blocks; a LUN holds at least one block.
pub fn validate_lun_size(size_bytes: u64) -> Result<()> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::InvalidArgument(format!(
            "LUN size must be a positive multiple of {BLOCK_SIZE} bytes, got {size_bytes}"
        )));
    }
    if size_bytes > LUN_SIZE_MAX_BYTES {
        return Err(Error::InvalidArgument(format!(
            "LUN size {size_bytes} bytes exceeds the 64 TiB maximum"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_lun_name("vol0/db").is_ok());
        assert!(validate_lun_name("a.b_c-d").is_ok());
        assert!(validate_lun_name("").is_err());
        assert!(validate_lun_name("/a").is_err());
        assert!(validate_lun_name("a//b").is_err());
        assert!(validate_lun_name("a/../b").is_err());
        assert!(validate_lun_name("a@b").is_err());
        assert!(validate_lun_name(&"x".repeat(256)).is_err());
        assert!(validate_snapshot_name("nightly-1").is_ok());
        assert!(validate_snapshot_name("a/b").is_err());
        assert!(validate_snapshot_name("a@b").is_err());
    }

    #[test]
    fn sizes() {
        assert!(validate_lun_size(4096).is_ok());
        assert!(validate_lun_size(LUN_SIZE_MAX_BYTES).is_ok());
        assert!(validate_lun_size(0).is_err());
        assert!(validate_lun_size(4097).is_err());
        assert!(validate_lun_size(LUN_SIZE_MAX_BYTES + 4096).is_err());
    }
}

/// What `lun show` and `lun list` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunInfo {
    pub id: u64,
    pub name: String,
    pub size_bytes: u64,
    /// Bytes of data the LUN's current content holds (shared or not).
    pub allocated_bytes: u64,
    pub snapshot_count: u64,
    /// Unix seconds.
    pub created: u64,
    /// `LUN@SNAPSHOT` this LUN is a clone of.
    pub parent: Option<String>,
    /// Clones that read through this LUN's snapshots.
    pub clones: Vec<String>,
    /// Igroups the LUN is mapped to.
    pub maps: Vec<String>,
    /// A mirror destination: read-only, readers see `replica_view`.
    pub replica: bool,
    /// The snapshot a replica's readers see (its newest complete transfer).
    pub replica_view: Option<String>,
    /// The redundancy class of the LUN's blocks (`none`, `mirror`,
    /// `mirror3`, `parity:K+M`).
    #[serde(default = "default_redundancy")]
    pub redundancy: String,
    /// Thick: its whole size is reserved.
    #[serde(default)]
    pub reserve: bool,
    /// A share of its size, in per cent, reserved for its snapshots.
    #[serde(default)]
    pub snapshot_reserve_percent: u32,
    /// Bytes of data it may still claim from its reservation.
    #[serde(default)]
    pub reserved_bytes: u64,
    /// While it moves into a new redundancy class: bytes of it looked at
    /// so far (of `size_bytes`).
    #[serde(default)]
    pub relayout_done_bytes: Option<u64>,
}

fn default_redundancy() -> String {
    "none".into()
}

/// One export: a LUN, or one of its snapshots (read-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEntry {
    pub lun: String,
    pub snapshot: Option<String>,
    pub size_bytes: u64,
}

impl ExportEntry {
    /// The export name: `LUN` or `LUN@SNAPSHOT`.
    pub fn name(&self) -> String {
        match &self.snapshot {
            Some(snap) => format!("{}@{}", self.lun, snap),
            None => self.lun.clone(),
        }
    }
}

/// What `Engine::check_pool` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCheck {
    /// Nothing was found wrong.
    pub ok: bool,
    /// One sentence per violation, naming the LUN and block where it has
    /// one; the committed state's first, then the live maps'.
    pub problems: Vec<String>,
    /// The committed epoch that was read back and checked.
    pub epoch: u64,
    pub luns: u64,
    pub snapshots: u64,
    /// Head extents and history ranges checked (committed state).
    pub map_entries: u64,
    pub elapsed_ms: u64,
    /// The longest the check held the lock that reads and writes need, in
    /// microseconds (one LUN's live maps).
    pub longest_hold_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub lun: String,
    pub name: String,
    pub epoch: u64,
    pub created: u64,
    pub size_bytes: u64,
    /// Bytes only this snapshot sees: what deleting it frees.
    pub exclusive_bytes: u64,
    /// The group snapshot it belongs to.
    pub group: Option<String>,
    /// Clones that read through this snapshot.
    pub clones: Vec<String>,
    /// Who keeps it from deletion (mirror relationships).
    pub holds: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub name: String,
    pub epoch: u64,
    pub created: u64,
    /// Member LUN names; each holds a snapshot named like the group.
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: u64,
    pub kind: String,
    pub lun: String,
    pub state: JobState,
    /// 0.0 to 1.0
    pub progress: f64,
    pub freed_bytes: u64,
    pub started: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub luns: u64,
    pub snapshots: u64,
    pub group_snapshots: u64,
    pub epoch: u64,
    pub jobs_running: u64,
    pub created: u64,
    /// "open": unmapped LUNs are visible to every client; "closed": only
    /// mapped LUNs are visible, to their igroups.
    pub access: String,
    /// "online", or "degraded" while a device is faulted.
    #[serde(default = "online")]
    pub state: String,
    /// Devices of a pool on devices (0: a pool on one data file).
    #[serde(default)]
    pub devices: u64,
    /// Faulted devices.
    #[serde(default)]
    pub faulted_devices: u64,
    /// The redundancy class of new LUNs.
    #[serde(default = "default_redundancy")]
    pub redundancy: String,
    /// Ranges no copy holds right, found by reads and scrubs since the
    /// server started.
    #[serde(default)]
    pub damage: Vec<crate::scrub::Damage>,
    /// Raw bytes held back for reserving LUNs (not yet used by them): no
    /// other LUN may take them.
    #[serde(default)]
    pub reserved_bytes: u64,
}

fn online() -> String {
    "online".into()
}

/// What a range of a volume holds, for block status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Allocation {
    Data,
    /// Zeros recorded in the map: reads as zeros, allocated.
    Zero,
    /// Nothing mapped: reads as zeros, holds no space.
    Hole,
}

/// Size of the block maps (what the metadata store holds for them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataStats {
    pub head_extents: u64,
    pub history_ranges: u64,
    pub history_versions: u64,
    pub shared_runs: u64,
    /// Bytes of keys and values as stored, before the store's own overhead.
    pub encoded_bytes: u64,
}

/// Where a clone stands in its split. Serialized as the API shows it:
/// `running`, `stopped`, `waiting-for-space`, `not-started`, `done`,
/// `independent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitPhase {
    /// Copying.
    Running,
    /// Stopped by an operator: the clone stays valid and backed.
    Stopped,
    /// The pool is full; retried as space is freed.
    WaitingForSpace,
    /// A clone that reads through its snapshot, no split asked for.
    NotStarted,
    /// Split finished (since the server started): the clone is independent.
    Done,
    /// Not a clone, or a clone split before the server started.
    Independent,
}

impl SplitPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitPhase::Running => "running",
            SplitPhase::Stopped => "stopped",
            SplitPhase::WaitingForSpace => "waiting-for-space",
            SplitPhase::NotStarted => "not-started",
            SplitPhase::Done => "done",
            SplitPhase::Independent => "independent",
        }
    }
}

impl std::fmt::Display for SplitPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A background job's state: `running` or `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// A clone split's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub lun: String,
    /// `LUN@SNAPSHOT` the clone reads through, while it still does.
    pub parent: Option<String>,
    pub state: SplitPhase,
    /// 0.0 to 1.0
    pub progress: f64,
    pub copied_bytes: u64,
    pub total_bytes: u64,
    pub rate_bytes_per_sec: u64,
    pub started: Option<u64>,
    /// Why the split waits, when it does.
    pub message: Option<String>,
}
