//! `/api/v1/pool` and `/api/v1/jobs`: the pool's space and its background
//! jobs.

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::extract::QueryArgs;
use crate::wire::{
    AccessMode, AddDevice, DeviceInfo, DevicePath, ErrorBody, GrowPool, JobInfo, MoveInfo,
    PoolCheck, PoolStatus, ReplaceDevice, ScrubInfo,
};
use crate::{call, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// Show the pool's capacity, use and counts.
#[utoipa::path(
    get, path = "/api/v1/pool", operation_id = "pool_status", tag = "pool",
    responses(
        (status = 200, description = "The pool", body = PoolStatus),
        (status = 503, description = "The pool stopped or closed", body = ErrorBody),
    )
)]
pub async fn status(State(state): State<AppState>) -> Result<Json<PoolStatus>, ApiError> {
    let status = call(&state, |e| e.pool_status()).await?;
    Ok(Json(status.into()))
}

/// List the pool's devices: state, size, use and error counts (empty for a
/// pool on one data file).
#[utoipa::path(
    get, path = "/api/v1/pool/devices", operation_id = "list_devices", tag = "pool",
    responses(
        (status = 200, description = "The devices, by index", body = Vec<DeviceInfo>),
        (status = 503, description = "The pool stopped or closed", body = ErrorBody),
    )
)]
pub async fn devices(State(state): State<AppState>) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    let devices = call(&state, |e| e.pool_devices()).await?;
    Ok(Json(devices.into_iter().map(Into::into).collect()))
}

/// Add a device to a pool on devices: it is labelled, joins the pool, and
/// segments level onto it in the background (`GET .../devices/job`).
#[utoipa::path(
    post, path = "/api/v1/pool/devices", operation_id = "add_device", tag = "pool",
    request_body = AddDevice,
    responses(
        (status = 201, description = "The new device", body = DeviceInfo),
        (status = 400, description = "Not a file or block device, too small, labelled by a pool (without force), a pool on one data file, or a device job running", body = ErrorBody),
        (status = 409, description = "Already a device of this pool", body = ErrorBody),
    )
)]
pub async fn add_device(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<AddDevice>,
) -> Result<(StatusCode, Json<DeviceInfo>), ApiError> {
    let info = call(&state, move |e| {
        e.add_device(std::path::Path::new(&body.path), body.force)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Remove a device: every segment on it moves to the others, online, then
/// it is forgotten and its label wiped.
#[utoipa::path(
    delete, path = "/api/v1/pool/devices", operation_id = "remove_device", tag = "pool",
    params(DevicePath),
    responses(
        (status = 200, description = "The removal, started", body = MoveInfo),
        (status = 400, description = "The others cannot take its segments, or a device job is running", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 507, description = "The other devices have too few free segments", body = ErrorBody),
    )
)]
pub async fn remove_device(
    State(state): State<AppState>,
    QueryArgs(query): QueryArgs<DevicePath>,
) -> Result<Json<MoveInfo>, ApiError> {
    let info = call(&state, move |e| {
        e.remove_device(std::path::Path::new(&query.path))
    })
    .await?;
    Ok(Json(info.into()))
}

/// Replace a device: NEW joins the pool and everything on OLD is rebuilt
/// onto it (from the other copies when OLD is gone), then OLD is forgotten.
#[utoipa::path(
    post, path = "/api/v1/pool/devices/replace", operation_id = "replace_device", tag = "pool",
    request_body = ReplaceDevice,
    responses(
        (status = 200, description = "The rebuild, started", body = MoveInfo),
        (status = 400, description = "NEW is not usable, or a device job is running", body = ErrorBody),
        (status = 404, description = "No such device OLD", body = ErrorBody),
        (status = 507, description = "NEW is smaller than what OLD holds", body = ErrorBody),
    )
)]
pub async fn replace_device(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ReplaceDevice>,
) -> Result<Json<MoveInfo>, ApiError> {
    let info = call(&state, move |e| {
        e.replace_device(
            std::path::Path::new(&body.old),
            std::path::Path::new(&body.new),
            body.force,
        )
    })
    .await?;
    Ok(Json(info.into()))
}

/// Take a faulted device back into service: a device that failed stays
/// out, across restarts, until it is cleared or replaced. Clearing starts
/// a scrub from the first block that rewrites whatever the device holds
/// stale (a resilver).
#[utoipa::path(
    post, path = "/api/v1/pool/devices/clear", operation_id = "clear_device", tag = "pool",
    request_body = DevicePath,
    responses(
        (status = 200, description = "The device, back online; the resilver runs (`GET /api/v1/pool/scrub`)", body = DeviceInfo),
        (status = 400, description = "Not faulted, not open (replace it, or restart the pool with it present), or a pool on one data file", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub async fn clear_device(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<DevicePath>,
) -> Result<Json<DeviceInfo>, ApiError> {
    let info = call(&state, move |e| {
        e.clear_device(std::path::Path::new(&body.path))
    })
    .await?;
    Ok(Json(info.into()))
}

/// Show the device job: a rebuild, removal or levelling, its progress and
/// what it skipped.
#[utoipa::path(
    get, path = "/api/v1/pool/devices/job", operation_id = "device_job", tag = "pool",
    responses(
        (status = 200, description = "The device job", body = MoveInfo),
        (status = 503, description = "The pool stopped or closed", body = ErrorBody),
    )
)]
pub async fn device_job(State(state): State<AppState>) -> Result<Json<MoveInfo>, ApiError> {
    let info = call(&state, |e| e.move_status()).await?;
    Ok(Json(info.into()))
}

/// Show the scrub: state, progress, what it repaired and what it could not.
#[utoipa::path(
    get, path = "/api/v1/pool/scrub", operation_id = "scrub_status", tag = "pool",
    responses(
        (status = 200, description = "The scrub", body = ScrubInfo),
        (status = 503, description = "The pool stopped or closed", body = ErrorBody),
    )
)]
pub async fn scrub_status(State(state): State<AppState>) -> Result<Json<ScrubInfo>, ApiError> {
    let info = call(&state, |e| e.scrub_status()).await?;
    Ok(Json(info.into()))
}

/// Start a scrub (or resume a stopped one): it reads every used block,
/// checks every copy against its checksum and repairs from a good copy,
/// in the background, paced by the scrub rate.
#[utoipa::path(
    post, path = "/api/v1/pool/scrub/start", operation_id = "start_scrub", tag = "pool",
    responses(
        (status = 200, description = "The scrub", body = ScrubInfo),
        (status = 400, description = "The pool is on one data file (no checksums)", body = ErrorBody),
    )
)]
pub async fn scrub_start(State(state): State<AppState>) -> Result<Json<ScrubInfo>, ApiError> {
    let info = call(&state, |e| e.scrub_start()).await?;
    Ok(Json(info.into()))
}

/// Stop the running scrub where it is (start resumes it).
#[utoipa::path(
    post, path = "/api/v1/pool/scrub/stop", operation_id = "stop_scrub", tag = "pool",
    responses(
        (status = 200, description = "The scrub", body = ScrubInfo),
        (status = 400, description = "No scrub is running, or the pool is on one data file", body = ErrorBody),
    )
)]
pub async fn scrub_stop(State(state): State<AppState>) -> Result<Json<ScrubInfo>, ApiError> {
    let info = call(&state, |e| e.scrub_stop()).await?;
    Ok(Json(info.into()))
}

/// Check the pool's invariants online: the committed metadata as a restart
/// would read it, then the live maps one LUN at a time. I/O goes on; the
/// answer is 200 with `ok: false` and the problems when something is wrong.
#[utoipa::path(
    get, path = "/api/v1/pool/check", operation_id = "check_pool", tag = "pool",
    responses(
        (status = 200, description = "What the check found", body = PoolCheck),
        (status = 503, description = "The pool stopped or closed", body = ErrorBody),
    )
)]
pub async fn check(State(state): State<AppState>) -> Result<Json<PoolCheck>, ApiError> {
    let report = call(&state, |e| e.check_pool()).await?;
    Ok(Json(report.into()))
}

/// Grow the pool (it never shrinks), change its access mode, or the
/// redundancy class of new LUNs.
#[utoipa::path(
    patch, path = "/api/v1/pool", operation_id = "grow_pool", tag = "pool",
    request_body = GrowPool,
    responses(
        (status = 200, description = "The pool", body = PoolStatus),
        (status = 400, description = "Not a multiple of 4096, smaller than now, over the 1 PiB maximum or more than the file system under the pool holds, nothing to change, or malformed body", body = ErrorBody),
        (status = 507, description = "The file system under the pool has no room to grow the data file", body = ErrorBody),
    )
)]
pub async fn grow(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<GrowPool>,
) -> Result<Json<PoolStatus>, ApiError> {
    if body.capacity.is_none() && body.access.is_none() && body.redundancy.is_none() {
        return Err(ApiError::invalid(
            "give `capacity`, `access`, `redundancy` or several",
        ));
    }
    let class = match body.redundancy.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<engine::redundancy::Redundancy>()
                .map_err(|e| ApiError::invalid(e.to_string()))?,
        ),
    };
    let status = call(&state, move |e| {
        if let Some(class) = class {
            e.set_default_redundancy(class)?;
        }
        if let Some(c) = body.capacity {
            e.grow_pool(c)?;
        }
        if let Some(mode) = body.access {
            e.set_access_open(mode == AccessMode::Open)?;
        }
        e.pool_status()
    })
    .await?;
    Ok(Json(status.into()))
}

/// List background jobs: running ones, then recently finished ones.
#[utoipa::path(
    get, path = "/api/v1/jobs", operation_id = "list_jobs", tag = "jobs",
    responses((status = 200, description = "Jobs", body = [JobInfo]))
)]
pub async fn jobs(State(state): State<AppState>) -> Result<Json<Vec<JobInfo>>, ApiError> {
    let jobs = call(&state, |e| Ok(e.jobs())).await?;
    Ok(Json(jobs.into_iter().map(JobInfo::from).collect()))
}
