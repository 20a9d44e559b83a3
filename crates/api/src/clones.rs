//! `/api/v1/clones` and `/api/v1/splits`: writable clones of snapshots, and
//! the clone split that makes a clone independent of its snapshot.
//!
//! A clone's LUN name may contain '/', so a split's status route is a
//! wildcard (`/api/v1/splits/vol0/test`), while starting and stopping name
//! the clone in the body. GET on `/splits/start` and `/splits/stop` still
//! shows the split of a LUN named `start` or `stop`.

use crate::error::ApiError;
use crate::extract::{JsonBody, PathName, QueryArgs};
use crate::wire::{
    CloneRangeReport, CloneRanges, CreateClones, ErrorBody, ListSplitsQuery, LunInfo, SplitInfo,
    SplitTarget,
};
use crate::{call, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// Most clones one request creates.
pub const CLONES_PER_REQUEST_MAX: u32 = engine::CLONES_PER_CALL_MAX as u32;

/// Create writable clones of a snapshot.
///
/// Each clone is a LUN that reads what it has not written from the
/// snapshot, created in O(1) and exported over NBD like any LUN. With
/// `count` N the clones are `NAME-1` to `NAME-N`, all created in one
/// commit (all or nothing). With `split`, each clone's split starts at
/// once. While clones read through it, deleting the snapshot only hides it.
#[utoipa::path(
    post, path = "/api/v1/clones", operation_id = "create_clones", tag = "clones",
    request_body = CreateClones,
    responses(
        (status = 201, description = "The new clones, NAME-1 first", body = [LunInfo]),
        (status = 400, description = "Bad source, name or count, or malformed body", body = ErrorBody),
        (status = 404, description = "No such LUN or snapshot", body = ErrorBody),
        (status = 409, description = "A LUN of one of the names exists", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateClones>,
) -> Result<(StatusCode, Json<Vec<LunInfo>>), ApiError> {
    let names = match body.count {
        None => vec![body.name],
        Some(count) if (1..=CLONES_PER_REQUEST_MAX).contains(&count) => {
            // NAME itself must be a LUN name: an empty or malformed one would
            // still make valid names ("" gives "-1", "a/" gives "a/-1").
            engine::validate_lun_name(&body.name)?;
            (1..=count).map(|i| format!("{}-{i}", body.name)).collect()
        }
        Some(count) => {
            return Err(ApiError::invalid(format!(
                "`count` must be 1 to {CLONES_PER_REQUEST_MAX}, got {count}"
            )))
        }
    };
    let source = body.source;
    let split = body.split;
    let infos = call(&state, move |e| e.create_clones(&source, &names, split)).await?;
    Ok((
        StatusCode::CREATED,
        Json(infos.into_iter().map(LunInfo::from).collect()),
    ))
}

/// List the splits under way (running, stopped or waiting for space).
#[utoipa::path(
    get, path = "/api/v1/splits", operation_id = "list_splits", tag = "clones",
    params(ListSplitsQuery),
    responses(
        (status = 200, description = "Splits under way, by LUN name", body = [SplitInfo]),
        (status = 400, description = "Bad query string", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    QueryArgs(query): QueryArgs<ListSplitsQuery>,
) -> Result<Json<Vec<SplitInfo>>, ApiError> {
    let prefix = query.prefix.unwrap_or_default();
    let splits = call(&state, move |e| e.list_splits(&prefix)).await?;
    Ok(Json(splits.into_iter().map(SplitInfo::from).collect()))
}

/// Show the split of one LUN: its state, progress and rate.
///
/// A clone with no split says `not-started`; a LUN that reads through no
/// snapshot says `done` (its split finished recently) or `independent`.
#[utoipa::path(
    get, path = "/api/v1/splits/{lun}", operation_id = "show_split", tag = "clones",
    params(("lun" = String, Path, description = "LUN name; may contain '/'", example = "vol0/test")),
    responses(
        (status = 200, description = "The split", body = SplitInfo),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    PathName(lun): PathName,
) -> Result<Json<SplitInfo>, ApiError> {
    show_named(state, lun).await
}

/// `GET /splits/start` and `GET /splits/stop`: the LUNs of those names.
pub async fn show_start(State(state): State<AppState>) -> Result<Json<SplitInfo>, ApiError> {
    show_named(state, "start".into()).await
}

pub async fn show_stop(State(state): State<AppState>) -> Result<Json<SplitInfo>, ApiError> {
    show_named(state, "stop".into()).await
}

async fn show_named(state: AppState, lun: String) -> Result<Json<SplitInfo>, ApiError> {
    let info = call(&state, move |e| e.split_status(&lun)).await?;
    Ok(Json(info.into()))
}

/// Start (or resume) a clone's split.
///
/// The split copies, in the background and within the pool's split rate
/// limit, every block the clone still reads through its snapshot; then the
/// clone is independent. It survives a restart and resumes where it was.
#[utoipa::path(
    post, path = "/api/v1/splits/start", operation_id = "start_split", tag = "clones",
    request_body = SplitTarget,
    responses(
        (status = 200, description = "The split", body = SplitInfo),
        (status = 400, description = "Not a clone (or already split), or malformed body", body = ErrorBody),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<SplitTarget>,
) -> Result<Json<SplitInfo>, ApiError> {
    let info = call(&state, move |e| e.start_split(&body.lun)).await?;
    Ok(Json(info.into()))
}

/// Stop a clone's split.
///
/// The clone stays valid and backed by its snapshot; starting the split
/// again resumes where it stopped.
#[utoipa::path(
    post, path = "/api/v1/splits/stop", operation_id = "stop_split", tag = "clones",
    request_body = SplitTarget,
    responses(
        (status = 200, description = "The stopped split", body = SplitInfo),
        (status = 400, description = "No split of that LUN is under way, or malformed body", body = ErrorBody),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn stop(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<SplitTarget>,
) -> Result<Json<SplitInfo>, ApiError> {
    let info = call(&state, move |e| e.stop_split(&body.lun)).await?;
    Ok(Json(info.into()))
}

/// Clone ranges: make ranges of a LUN read what ranges of LUNs or snapshots
/// read, sharing their blocks (no data copied), in one transaction.
///
/// Restores files from a snapshot (`source: "LUN@SNAP"`) or clones files
/// within or between LUNs. Offsets and lengths are multiples of 4096; the
/// cost follows the number of extents, not their length. Afterwards each
/// side can be written without affecting the other.
#[utoipa::path(
    post, path = "/api/v1/clone-range", operation_id = "clone_range", tag = "clones",
    request_body = CloneRanges,
    responses(
        (status = 200, description = "What was cloned", body = CloneRangeReport),
        (status = 400, description = "Unaligned, out of range or overlapping ranges, or malformed body", body = ErrorBody),
        (status = 404, description = "No such LUN or snapshot", body = ErrorBody),
        (status = 409, description = "The target is a snapshot", body = ErrorBody),
    )
)]
pub async fn clone_range(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CloneRanges>,
) -> Result<Json<CloneRangeReport>, ApiError> {
    let entries: Vec<engine::RangeEntry> = body
        .ranges
        .into_iter()
        .map(|r| engine::RangeEntry {
            source: r.source,
            source_offset: r.source_offset,
            target_offset: r.target_offset,
            length: r.length,
        })
        .collect();
    let target = body.target;
    let report = call(&state, move |e| e.clone_ranges(&target, &entries)).await?;
    Ok(Json(report.into()))
}
