//! What operators watch: the event log and per-LUN I/O totals.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One state change an operator cares about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing and never reused in a pool: ask for `since` the last one
    /// seen.
    pub id: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub severity: Severity,
    /// kebab-case, like `lun-created`, `split-finished`, `pool-nearly-full`,
    /// `access-refused`, `mirror-lag`.
    pub kind: String,
    /// What it is about: a LUN, `LUN@SNAPSHOT`, an igroup, a mirror, `pool`.
    pub object: String,
    /// One sentence.
    pub message: String,
}

#[cfg(feature = "engine")]
impl From<engine::Event> for Event {
    fn from(e: engine::Event) -> Self {
        Event {
            id: e.id,
            time_ms: e.time_ms,
            severity: match e.severity {
                engine::Severity::Info => Severity::Info,
                engine::Severity::Warning => Severity::Warning,
                engine::Severity::Error => Severity::Error,
            },
            kind: e.kind,
            object: e.object,
            message: e.message,
        }
    }
}

/// `GET /api/v1/events`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a greater id (default 0: from the oldest kept).
    pub since: Option<u64>,
    /// At most this many events (default and maximum 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// When `since` is the newest event's id, wait up to this many
    /// seconds (at most 60) for something to happen before answering.
    #[param(maximum = 60)]
    pub wait: Option<u32>,
}

/// Events after `since`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<Event>,
    /// The newest event's id in the pool: pass it as `since` next time.
    pub last_id: u64,
}

/// One LUN's NBD requests since the server started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IoTotals {
    /// The LUN, or `_other` for LUNs past the label limit.
    pub lun: String,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub trim_ops: u64,
    pub trim_bytes: u64,
    pub zero_ops: u64,
    pub zero_bytes: u64,
    pub flush_ops: u64,
    pub errors: u64,
}

/// `GET /api/v1/io`: counters to take rates from (two readings and their
/// times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IoReport {
    /// When the counters were read, Unix milliseconds.
    pub time_ms: u64,
    /// False when the server counts no I/O (`serve --no-io-metrics`).
    pub counting: bool,
    pub luns: Vec<IoTotals>,
}
