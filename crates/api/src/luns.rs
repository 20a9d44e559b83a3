//! `/api/v1/luns`: create, list, show, resize and delete LUNs. A LUN's name
//! may contain '/', so its route is a wildcard: `/api/v1/luns/vol0/db`.

use crate::error::ApiError;
use crate::extract::{JsonBody, PathName, QueryArgs};
use crate::wire::{
    CreateLun, DeleteLunQuery, ErrorBody, ListLunsQuery, LunInfo, Relayout, ResizeLun,
};
use crate::{call, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// List LUNs, by name.
#[utoipa::path(
    get, path = "/api/v1/luns", operation_id = "list_luns", tag = "luns",
    params(ListLunsQuery),
    responses(
        (status = 200, description = "LUNs in name order", body = [LunInfo]),
        (status = 400, description = "Bad query string", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    QueryArgs(query): QueryArgs<ListLunsQuery>,
) -> Result<Json<Vec<LunInfo>>, ApiError> {
    let prefix = query.prefix.unwrap_or_default();
    let luns = call(&state, move |e| e.list_luns(&prefix)).await?;
    Ok(Json(luns.into_iter().map(LunInfo::from).collect()))
}

/// Create a thin LUN.
#[utoipa::path(
    post, path = "/api/v1/luns", operation_id = "create_lun", tag = "luns",
    request_body = CreateLun,
    responses(
        (status = 201, description = "The new LUN", body = LunInfo),
        (status = 400, description = "Bad name or size, or malformed body", body = ErrorBody),
        (status = 409, description = "A LUN of that name exists", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateLun>,
) -> Result<(StatusCode, Json<LunInfo>), ApiError> {
    let class = match body.redundancy.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<engine::redundancy::Redundancy>()
                .map_err(|e| ApiError::invalid(e.to_string()))?,
        ),
    };
    let info = call(&state, move |e| {
        e.create_lun_reserving(
            &body.name,
            body.size,
            class,
            engine::Reservation {
                thick: body.reserve,
                snapshot_percent: body.snapshot_reserve_percent,
            },
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Move a LUN into another redundancy class, online: new writes use the
/// new class at once; a background job (at the split rate) rewrites what
/// the LUN holds; `relayout_done_bytes` shows how far it is. Snapshots
/// keep their blocks where they are.
#[utoipa::path(
    post, path = "/api/v1/relayouts", operation_id = "relayout_lun", tag = "luns",
    request_body = Relayout,
    responses(
        (status = 200, description = "The LUN, moving", body = LunInfo),
        (status = 400, description = "Unknown class, too few devices, a mirror destination, a reservation a parity class cannot keep, or a pool on one data file", body = ErrorBody),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn relayout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Relayout>,
) -> Result<Json<LunInfo>, ApiError> {
    let class = body
        .redundancy
        .parse::<engine::redundancy::Redundancy>()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let info = call(&state, move |e| e.set_lun_redundancy(&body.lun, class)).await?;
    Ok(Json(info.into()))
}

/// Show one LUN.
#[utoipa::path(
    get, path = "/api/v1/luns/{name}", operation_id = "show_lun", tag = "luns",
    params(("name" = String, Path, description = "LUN name; may contain '/'", example = "vol0/db")),
    responses(
        (status = 200, description = "The LUN", body = LunInfo),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<LunInfo>, ApiError> {
    let info = call(&state, move |e| e.lun_info(&name)).await?;
    Ok(Json(info.into()))
}

/// Resize a LUN.
///
/// Shrinking discards the tail and needs `"shrink": true`; snapshots keep
/// their own size.
#[utoipa::path(
    patch, path = "/api/v1/luns/{name}", operation_id = "resize_lun", tag = "luns",
    params(("name" = String, Path, description = "LUN name; may contain '/'")),
    request_body = ResizeLun,
    responses(
        (status = 200, description = "The resized LUN", body = LunInfo),
        (status = 400, description = "Bad size, shrink not confirmed, or malformed body", body = ErrorBody),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn resize(
    State(state): State<AppState>,
    PathName(name): PathName,
    JsonBody(body): JsonBody<ResizeLun>,
) -> Result<Json<LunInfo>, ApiError> {
    let info = call(&state, move |e| e.resize_lun(&name, body.size, body.shrink)).await?;
    Ok(Json(info.into()))
}

/// Delete a LUN.
///
/// Refused while it has snapshots unless `recursive=true`, and while a
/// group snapshot or a clone depends on it.
#[utoipa::path(
    delete, path = "/api/v1/luns/{name}", operation_id = "delete_lun", tag = "luns",
    params(("name" = String, Path, description = "LUN name; may contain '/'"), DeleteLunQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such LUN", body = ErrorBody),
        (status = 409, description = "Snapshots, a group snapshot or a clone depend on it", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    PathName(name): PathName,
    QueryArgs(query): QueryArgs<DeleteLunQuery>,
) -> Result<StatusCode, ApiError> {
    call(&state, move |e| e.delete_lun(&name, query.recursive)).await?;
    Ok(StatusCode::NO_CONTENT)
}
