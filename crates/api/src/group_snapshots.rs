//! `/api/v1/group-snapshots`: consistency-group snapshots, one snapshot of
//! each member LUN at the same point in time.

use crate::error::ApiError;
use crate::extract::{JsonBody, PathName};
use crate::wire::{CreateGroupSnapshot, ErrorBody, GroupInfo, BATCH_SNAPSHOTS_MAX};
use crate::{call, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// List group snapshots, by name.
#[utoipa::path(
    get, path = "/api/v1/group-snapshots", operation_id = "list_group_snapshots", tag = "group snapshots",
    responses((status = 200, description = "Group snapshots", body = [GroupInfo]))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<GroupInfo>>, ApiError> {
    let groups = call(&state, |e| e.list_group_snapshots()).await?;
    Ok(Json(groups.into_iter().map(GroupInfo::from).collect()))
}

/// Take a group snapshot.
///
/// Each member LUN gets a snapshot named like the group, all at one point
/// in time, in one commit.
#[utoipa::path(
    post, path = "/api/v1/group-snapshots", operation_id = "create_group_snapshot", tag = "group snapshots",
    request_body = CreateGroupSnapshot,
    responses(
        (status = 201, description = "The new group snapshot", body = GroupInfo),
        (status = 400, description = "Bad name, no or repeated LUNs, or malformed body", body = ErrorBody),
        (status = 404, description = "No such LUN", body = ErrorBody),
        (status = 409, description = "A group or member snapshot of that name exists", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateGroupSnapshot>,
) -> Result<(StatusCode, Json<GroupInfo>), ApiError> {
    if body.luns.len() > BATCH_SNAPSHOTS_MAX {
        return Err(ApiError::invalid(format!(
            "a group snapshot may include at most {BATCH_SNAPSHOTS_MAX} LUNs, got {}",
            body.luns.len()
        )));
    }
    let info = call(&state, move |e| {
        e.create_group_snapshot(&body.name, &body.luns)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Show one group snapshot.
#[utoipa::path(
    get, path = "/api/v1/group-snapshots/{name}", operation_id = "show_group_snapshot", tag = "group snapshots",
    params(("name" = String, Path, description = "Group snapshot name")),
    responses(
        (status = 200, description = "The group snapshot", body = GroupInfo),
        (status = 404, description = "No such group snapshot", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<GroupInfo>, ApiError> {
    let info = call(&state, move |e| e.group_info(&name)).await?;
    Ok(Json(info.into()))
}

/// Delete a group snapshot and every member snapshot, in one commit.
#[utoipa::path(
    delete, path = "/api/v1/group-snapshots/{name}", operation_id = "delete_group_snapshot", tag = "group snapshots",
    params(("name" = String, Path, description = "Group snapshot name")),
    responses(
        (status = 204, description = "Deleted; reclaim runs in the background"),
        (status = 404, description = "No such group snapshot", body = ErrorBody),
        (status = 409, description = "A clone depends on it", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<StatusCode, ApiError> {
    call(&state, move |e| e.delete_group_snapshot(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
