//! `/api/v1/events` and `/api/v1/io`: what the server did, and the I/O
//! counters the dashboard takes live rates from.

use crate::error::ApiError;
use crate::extract::QueryArgs;
use crate::wire::{ErrorBody, EventList, EventsQuery, IoReport, IoTotals};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most events one answer carries.
pub const EVENTS_PER_PAGE_MAX: u32 = 1000;
/// Longest `wait` of a long poll, seconds.
pub const EVENTS_WAIT_MAX_SECS: u32 = 60;

/// Events after `since`, oldest first. With `wait` and `since` the newest
/// id, a long poll that answers as soon as something happens (or when the
/// wait is over, with nothing).
#[utoipa::path(
    get, path = "/api/v1/events", operation_id = "list_events", tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "Events after `since`", body = EventList),
        (status = 400, description = "A bad query (a limit over 1000, a wait over 60 s)", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    QueryArgs(q): QueryArgs<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    let limit = q.limit.unwrap_or(EVENTS_PER_PAGE_MAX);
    if limit == 0 || limit > EVENTS_PER_PAGE_MAX {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {EVENTS_PER_PAGE_MAX}, not {limit}"
        )));
    }
    let wait = q.wait.unwrap_or(0);
    if wait > EVENTS_WAIT_MAX_SECS {
        return Err(ApiError::invalid(format!(
            "wait must be at most {EVENTS_WAIT_MAX_SECS} seconds, not {wait}"
        )));
    }
    // Documented as an int64, as every id in the API.
    let since = q.since.unwrap_or(0);
    if since > i64::MAX as u64 {
        return Err(ApiError::invalid(format!(
            "since must be at most {}, not {since}",
            i64::MAX
        )));
    }
    let log = state.engine.clone();
    let deadline = Instant::now() + Duration::from_secs(wait.into());
    // The log's newest id is one atomic read: poll it, cheaply, rather
    // than hold a blocking thread for the whole wait. A `since` past the
    // newest id (a client that followed another pool) is answered at
    // once, with the real newest id to go on from.
    while log.events().last_id() == since && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = log.events().since(since, limit as usize);
    Ok(Json(EventList {
        events: events.into_iter().map(Into::into).collect(),
        last_id: log.events().last_id(),
    }))
}

/// NBD request counters per LUN since the server started: take two
/// readings to get rates (the dashboard does).
#[utoipa::path(
    get, path = "/api/v1/io", operation_id = "io_totals", tag = "events",
    responses((status = 200, description = "Counters per LUN", body = IoReport))
)]
pub async fn io(State(state): State<AppState>) -> Json<IoReport> {
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let registry = state
        .telemetry
        .as_ref()
        .map(|t| &t.io)
        .filter(|io| io.enabled());
    Json(IoReport {
        time_ms,
        counting: registry.is_some(),
        luns: registry
            .map(|r| {
                r.totals()
                    .into_iter()
                    .map(|t| IoTotals {
                        lun: t.lun,
                        read_ops: t.read_ops,
                        read_bytes: t.read_bytes,
                        write_ops: t.write_ops,
                        write_bytes: t.write_bytes,
                        trim_ops: t.trim_ops,
                        trim_bytes: t.trim_bytes,
                        zero_ops: t.zero_ops,
                        zero_bytes: t.zero_bytes,
                        flush_ops: t.flush_ops,
                        errors: t.errors,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}
