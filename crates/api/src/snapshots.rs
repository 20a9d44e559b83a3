//! `/api/v1/snapshots`: a snapshot is named by its own name in the path and
//! its LUN in the `lun` query parameter (LUN names hold '/', so they cannot
//! share the path with a snapshot name without ambiguity).

use crate::error::ApiError;
use crate::extract::{JsonBody, PathName, QueryArgs};
use crate::wire::{
    CreateSnapshots, CreatedSnapshots, ErrorBody, ListSnapshotsQuery, LunInfo, SnapshotBatchInfo,
    SnapshotInfo, SnapshotLunQuery, BATCH_SNAPSHOTS_MAX,
};
use crate::{call, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// List snapshots of one LUN, or of every LUN; oldest first within a LUN.
#[utoipa::path(
    get, path = "/api/v1/snapshots", operation_id = "list_snapshots", tag = "snapshots",
    params(ListSnapshotsQuery),
    responses(
        (status = 200, description = "Snapshots", body = [SnapshotInfo]),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    QueryArgs(query): QueryArgs<ListSnapshotsQuery>,
) -> Result<Json<Vec<SnapshotInfo>>, ApiError> {
    let snapshots = call(&state, move |e| e.list_snapshots(query.lun.as_deref())).await?;
    Ok(Json(
        snapshots.into_iter().map(SnapshotInfo::from).collect(),
    ))
}

/// Take a snapshot, or a batch of snapshots.
///
/// A batch (`{"snapshots": [{"lun": ..., "name": ...}, ...]}`, at most
/// 1024) is taken at one point in time in one commit, all or nothing.
#[utoipa::path(
    post, path = "/api/v1/snapshots", operation_id = "create_snapshots", tag = "snapshots",
    request_body = CreateSnapshots,
    responses(
        (status = 201, description = "The snapshot taken, or `{snapshots}` for a batch", body = CreatedSnapshots),
        (status = 400, description = "Bad name, or malformed body", body = ErrorBody),
        (status = 404, description = "No such LUN", body = ErrorBody),
        (status = 409, description = "A snapshot of that name exists", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateSnapshots>,
) -> Result<(StatusCode, Json<CreatedSnapshots>), ApiError> {
    let created = match body {
        CreateSnapshots::One(one) => {
            let info = call(&state, move |e| e.create_snapshot(&one.lun, &one.name)).await?;
            CreatedSnapshots::One(info.into())
        }
        CreateSnapshots::Batch(batch) => {
            if batch.snapshots.len() > BATCH_SNAPSHOTS_MAX {
                return Err(ApiError::invalid(format!(
                    "a batch may take at most {BATCH_SNAPSHOTS_MAX} snapshots, got {}",
                    batch.snapshots.len()
                )));
            }
            let requests: Vec<(String, String)> = batch
                .snapshots
                .into_iter()
                .map(|s| (s.lun, s.name))
                .collect();
            let infos = call(&state, move |e| e.create_snapshots(&requests, None)).await?;
            CreatedSnapshots::Batch(SnapshotBatchInfo {
                snapshots: infos.into_iter().map(SnapshotInfo::from).collect(),
            })
        }
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Show one snapshot.
#[utoipa::path(
    get, path = "/api/v1/snapshots/{snapshot}", operation_id = "show_snapshot", tag = "snapshots",
    params(("snapshot" = String, Path, description = "Snapshot name"), SnapshotLunQuery),
    responses(
        (status = 200, description = "The snapshot", body = SnapshotInfo),
        (status = 404, description = "No such LUN or snapshot", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    PathName(snapshot): PathName,
    QueryArgs(query): QueryArgs<SnapshotLunQuery>,
) -> Result<Json<SnapshotInfo>, ApiError> {
    let lun = query.lun;
    let found = call(&state, move |e| {
        let all = e.list_snapshots(Some(&lun))?;
        all.into_iter()
            .find(|s| s.name == snapshot)
            .ok_or_else(|| engine::Error::NotFound {
                kind: "snapshot",
                name: format!("{lun}@{snapshot}"),
            })
    })
    .await?;
    Ok(Json(found.into()))
}

/// Delete a snapshot.
///
/// Its space is reclaimed by a background job of kind `snapshot-reclaim`
/// for the LUN (see `GET /api/v1/jobs`).
#[utoipa::path(
    delete, path = "/api/v1/snapshots/{snapshot}", operation_id = "delete_snapshot", tag = "snapshots",
    params(("snapshot" = String, Path, description = "Snapshot name"), SnapshotLunQuery),
    responses(
        (status = 204, description = "Deleted; reclaim runs in the background"),
        (status = 404, description = "No such LUN or snapshot", body = ErrorBody),
        (status = 409, description = "A group snapshot or a clone depends on it", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    PathName(snapshot): PathName,
    QueryArgs(query): QueryArgs<SnapshotLunQuery>,
) -> Result<StatusCode, ApiError> {
    call(&state, move |e| e.delete_snapshot(&query.lun, &snapshot)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restore a LUN to a snapshot.
///
/// Makes the LUN's content and size the snapshot's, without copying data.
/// Newer snapshots stay.
#[utoipa::path(
    post, path = "/api/v1/snapshots/{snapshot}/restore", operation_id = "restore_snapshot", tag = "snapshots",
    params(("snapshot" = String, Path, description = "Snapshot name"), SnapshotLunQuery),
    responses(
        (status = 200, description = "The LUN as restored", body = LunInfo),
        (status = 404, description = "No such LUN or snapshot", body = ErrorBody),
    )
)]
pub async fn restore(
    State(state): State<AppState>,
    PathName(snapshot): PathName,
    QueryArgs(query): QueryArgs<SnapshotLunQuery>,
) -> Result<Json<LunInfo>, ApiError> {
    let lun = query.lun;
    let info = call(&state, move |e| {
        e.restore_snapshot(&lun, &snapshot)?;
        e.lun_info(&lun)
    })
    .await?;
    Ok(Json(info.into()))
}
