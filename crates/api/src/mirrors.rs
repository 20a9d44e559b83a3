//! Mirroring (decision 024): `/api/v1/peer-tokens` and
//! `/api/v1/replication/*` on a source (the second answers replication
//! tokens, which open nothing else), `/api/v1/peers` and
//! `/api/v1/mirrors` on a destination.

use crate::error::ApiError;
use crate::extract::{JsonBody, PathName, QueryArgs};
use crate::wire::{
    CreateMirror, CreatePeer, CreatePeerToken, ErrorBody, HoldMirrorSnapshot, MirrorAction,
    MirrorInfo, MirrorPlan, PeerInfo, PeerTokenInfo, ReleaseMirrorSnapshot, ReplicationLun,
    ReplicationLunQuery, ReplicationSnapshot, ReverseRequest, SnapshotInfo, StreamQuery,
    TakeMirrorSnapshot,
};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::{Engine, Error};
use mirror::Mirrors;
use std::sync::Arc;

/// Bytes per chunk of a mirror stream's HTTP body.
const STREAM_CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered between the engine and the socket.
const STREAM_CHUNKS_QUEUED: usize = 4;

fn mirrors(state: &AppState) -> Result<Arc<Mirrors>, ApiError> {
    state.mirrors.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "closed",
            "mirroring is not enabled on this server",
        )
    })
}

/// Runs a blocking mirroring call off the async runtime.
async fn with_mirrors<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Arc<Mirrors>, &Engine) -> Result<T, Error> + Send + 'static,
{
    let m = mirrors(state)?;
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || f(&m, &engine))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the server's task for this request failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

// ------------------------------------------------------------- peer tokens

/// Make a replication token for a destination site.
///
/// The answer carries the secret, once: give it to the destination's
/// `blockfork peer create --token`. The token can list snapshots, read
/// snapshot differences, take, hold and release mirror snapshots, and
/// reverse the mirrors it takes part in; nothing else.
#[utoipa::path(
    post, path = "/api/v1/peer-tokens", operation_id = "create_peer_token", tag = "mirrors",
    request_body = CreatePeerToken,
    responses(
        (status = 201, description = "The token, with its secret", body = PeerTokenInfo),
        (status = 409, description = "A token of that name exists", body = ErrorBody),
    )
)]
pub async fn create_token(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreatePeerToken>,
) -> Result<(StatusCode, Json<PeerTokenInfo>), ApiError> {
    let info = with_mirrors(&state, move |m, _| m.tokens.create(&body.name)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// List replication tokens (without their secrets).
#[utoipa::path(
    get, path = "/api/v1/peer-tokens", operation_id = "list_peer_tokens", tag = "mirrors",
    responses((status = 200, description = "The tokens", body = [PeerTokenInfo]))
)]
pub async fn list_tokens(
    State(state): State<AppState>,
) -> Result<Json<Vec<PeerTokenInfo>>, ApiError> {
    Ok(Json(
        with_mirrors(&state, |m, _| Ok(m.tokens.list())).await?,
    ))
}

/// Delete a replication token: the site using it is refused from now on.
#[utoipa::path(
    delete, path = "/api/v1/peer-tokens/{name}", operation_id = "delete_peer_token", tag = "mirrors",
    params(("name" = String, Path, description = "Token name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such token", body = ErrorBody),
    )
)]
pub async fn delete_token(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<StatusCode, ApiError> {
    with_mirrors(&state, move |m, _| m.tokens.delete(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------- replication

/// A source LUN, its parent and snapshots, as a destination needs them.
#[utoipa::path(
    get, path = "/api/v1/replication/luns", operation_id = "replication_lun", tag = "replication",
    params(ReplicationLunQuery),
    responses(
        (status = 200, description = "The LUN", body = ReplicationLun),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn replication_lun(
    State(state): State<AppState>,
    QueryArgs(q): QueryArgs<ReplicationLunQuery>,
) -> Result<Json<ReplicationLun>, ApiError> {
    let lun = crate::call(&state, move |e| e.snapshots_brief(&q.lun)).await?;
    let (info, snaps) = lun;
    Ok(Json(ReplicationLun {
        lun: info.name,
        size_bytes: info.size_bytes,
        parent: info.parent.filter(|p| !p.ends_with(" (deleted)")),
        snapshots: snaps
            .into_iter()
            .map(|s| ReplicationSnapshot {
                name: s.name,
                created: s.created,
                size_bytes: s.size_bytes,
                group: s.group,
                holds: s.holds,
            })
            .collect(),
    }))
}

/// Take a mirror snapshot of one or several LUNs at one point in time,
/// held for the relationship that asks.
#[utoipa::path(
    post, path = "/api/v1/replication/snapshots", operation_id = "take_mirror_snapshot", tag = "replication",
    request_body = TakeMirrorSnapshot,
    responses(
        (status = 201, description = "The snapshots", body = [SnapshotInfo]),
        (status = 404, description = "No such LUN", body = ErrorBody),
        (status = 409, description = "A snapshot of that name exists", body = ErrorBody),
    )
)]
pub async fn take_snapshot(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TakeMirrorSnapshot>,
) -> Result<(StatusCode, Json<Vec<SnapshotInfo>>), ApiError> {
    if !body.name.starts_with(mirror::MIRROR_SNAPSHOT_PREFIX) {
        return Err(ApiError::invalid(format!(
            "a mirror snapshot's name starts with \"{}\"",
            mirror::MIRROR_SNAPSHOT_PREFIX
        )));
    }
    if body.luns.is_empty() || body.luns.len() > mirror::GROUP_MEMBERS_MAX {
        return Err(ApiError::invalid(format!(
            "a mirror snapshot covers 1 to {} LUNs",
            mirror::GROUP_MEMBERS_MAX
        )));
    }
    // Mirror snapshots come and go every update: not events of their own.
    let infos = crate::call(&state, move |e| {
        engine::quietly(|| {
            let requests: Vec<(String, String)> = body
                .luns
                .iter()
                .map(|l| (l.clone(), body.name.clone()))
                .collect();
            let taken = e.create_snapshots(&requests, body.group.then_some(body.name.as_str()))?;
            for l in &body.luns {
                if let Err(err) = e.hold_snapshot(l, &body.name, &body.holder) {
                    // Nothing half done: the snapshots go again.
                    if body.group {
                        let _ = e.delete_group_snapshot(&body.name);
                    } else {
                        for l in &body.luns {
                            let _ = e.delete_snapshot(l, &body.name);
                        }
                    }
                    return Err(err);
                }
            }
            Ok(taken)
        })
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(infos.into_iter().map(SnapshotInfo::from).collect()),
    ))
}

/// Hold a snapshot for a relationship.
#[utoipa::path(
    post, path = "/api/v1/replication/hold", operation_id = "hold_mirror_snapshot", tag = "replication",
    request_body = HoldMirrorSnapshot,
    responses(
        (status = 204, description = "Held"),
        (status = 404, description = "No such LUN or snapshot", body = ErrorBody),
    )
)]
pub async fn hold(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<HoldMirrorSnapshot>,
) -> Result<StatusCode, ApiError> {
    crate::call(&state, move |e| {
        e.hold_snapshot(&body.lun, &body.snapshot, &body.holder)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Let go of a relationship's hold; with `delete`, delete the snapshot too
/// when it is a mirror snapshot that nothing else holds.
#[utoipa::path(
    post, path = "/api/v1/replication/release", operation_id = "release_mirror_snapshot", tag = "replication",
    request_body = ReleaseMirrorSnapshot,
    responses(
        (status = 204, description = "Released"),
        (status = 404, description = "No such LUN", body = ErrorBody),
    )
)]
pub async fn release(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ReleaseMirrorSnapshot>,
) -> Result<StatusCode, ApiError> {
    crate::call(&state, move |e| {
        for l in &body.luns {
            e.release_snapshot(l, &body.snapshot, &body.holder)?;
        }
        if body.delete && body.snapshot.starts_with(mirror::MIRROR_SNAPSHOT_PREFIX) {
            let unheld = body.luns.iter().all(|l| {
                e.snapshots_brief(l).is_ok_and(|(_, snaps)| {
                    snaps
                        .iter()
                        .find(|s| s.name == body.snapshot)
                        .is_none_or(|s| s.holds.is_empty() && s.clones.is_empty())
                })
            });
            if unheld {
                let gone = |r: engine::Result<()>| match r {
                    Err(Error::NotFound { .. }) => Ok(()),
                    r => r,
                };
                engine::quietly(|| {
                    if body.group {
                        gone(e.delete_group_snapshot(&body.snapshot))
                    } else {
                        body.luns
                            .iter()
                            .try_for_each(|l| gone(e.delete_snapshot(l, &body.snapshot)))
                    }
                })?;
            }
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A LUN's change between two of its snapshots, as a mirror stream.
///
/// The body is `application/x-blockfork-mirror` (see `wire::stream`):
/// checksummed records in block order ending with an end record that
/// carries the end-to-end check and where the next call starts (with
/// `max_bytes`, a stream ends early at a record boundary).
#[utoipa::path(
    get, path = "/api/v1/replication/stream", operation_id = "replication_stream", tag = "replication",
    params(StreamQuery),
    responses(
        (status = 200, description = "The stream", content_type = "application/x-blockfork-mirror"),
        (status = 404, description = "No such LUN or snapshot", body = ErrorBody),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    QueryArgs(q): QueryArgs<StreamQuery>,
) -> Result<Response, ApiError> {
    let engine = state.engine.clone();
    let prepared = {
        let q = q.clone();
        crate::call(&state, move |e| mirror::source::prepare(e, &q)).await?
    };
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_CHUNKS_QUEUED);
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(STREAM_CHUNK_BYTES),
        };
        if let Err(e) =
            mirror::source::send(&engine, prepared, std::io::BufWriter::with_capacity(0, out))
        {
            // The receiver sees the stream cut: it has no end record.
            tracing::warn!(lun = %q.lun, target = %q.target, "mirror stream stopped: {e}");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-blockfork-mirror")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Hands the stream to the HTTP body in chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(STREAM_CHUNK_BYTES),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the receiver went away")
        })
    }
}

/// The old source of a broken mirror becomes its destination (asked by
/// the destination, with the token the destination made for it).
#[utoipa::path(
    post, path = "/api/v1/replication/reverse", operation_id = "accept_reverse", tag = "replication",
    request_body = ReverseRequest,
    responses(
        (status = 200, description = "The plan, done or not", body = MirrorPlan),
        (status = 404, description = "No such LUN", body = ErrorBody),
        (status = 409, description = "It would discard writes and `force` was not given", body = ErrorBody),
    )
)]
pub async fn accept_reverse(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ReverseRequest>,
) -> Result<Json<MirrorPlan>, ApiError> {
    Ok(Json(
        with_mirrors(&state, move |m, _| m.accept_reverse(&body)).await?,
    ))
}

// ------------------------------------------------------------------- peers

/// Add a peer: a source server this one pulls mirrors from.
#[utoipa::path(
    post, path = "/api/v1/peers", operation_id = "create_peer", tag = "mirrors",
    request_body = CreatePeer,
    responses(
        (status = 201, description = "The peer", body = PeerInfo),
        (status = 409, description = "A peer of that name exists", body = ErrorBody),
    )
)]
pub async fn create_peer(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreatePeer>,
) -> Result<(StatusCode, Json<PeerInfo>), ApiError> {
    let info = with_mirrors(&state, move |m, _| m.create_peer(&body)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// List peers.
#[utoipa::path(
    get, path = "/api/v1/peers", operation_id = "list_peers", tag = "mirrors",
    responses((status = 200, description = "The peers", body = [PeerInfo]))
)]
pub async fn list_peers(State(state): State<AppState>) -> Result<Json<Vec<PeerInfo>>, ApiError> {
    Ok(Json(with_mirrors(&state, |m, _| Ok(m.list_peers())).await?))
}

/// Delete a peer no mirror uses.
#[utoipa::path(
    delete, path = "/api/v1/peers/{name}", operation_id = "delete_peer", tag = "mirrors",
    params(("name" = String, Path, description = "Peer name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such peer", body = ErrorBody),
        (status = 409, description = "A mirror uses it", body = ErrorBody),
    )
)]
pub async fn delete_peer(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<StatusCode, ApiError> {
    with_mirrors(&state, move |m, _| m.delete_peer(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----------------------------------------------------------------- mirrors

/// Create a mirror: read-only destination LUNs, and their baseline.
#[utoipa::path(
    post, path = "/api/v1/mirrors", operation_id = "create_mirror", tag = "mirrors",
    request_body = CreateMirror,
    responses(
        (status = 201, description = "The mirror, baselining", body = MirrorInfo),
        (status = 404, description = "No such peer", body = ErrorBody),
        (status = 409, description = "The mirror or a destination LUN exists", body = ErrorBody),
    )
)]
pub async fn create_mirror(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateMirror>,
) -> Result<(StatusCode, Json<MirrorInfo>), ApiError> {
    let info = with_mirrors(&state, move |m, _| m.create(&body)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// List mirrors, with their state, lag and running transfer.
#[utoipa::path(
    get, path = "/api/v1/mirrors", operation_id = "list_mirrors", tag = "mirrors",
    responses((status = 200, description = "The mirrors", body = [MirrorInfo]))
)]
pub async fn list_mirrors(
    State(state): State<AppState>,
) -> Result<Json<Vec<MirrorInfo>>, ApiError> {
    Ok(Json(with_mirrors(&state, |m, _| Ok(m.list())).await?))
}

/// Show one mirror (by destination LUN or group name).
#[utoipa::path(
    get, path = "/api/v1/mirrors/{name}", operation_id = "show_mirror", tag = "mirrors",
    params(("name" = String, Path, description = "Destination LUN or group name")),
    responses(
        (status = 200, description = "The mirror", body = MirrorInfo),
        (status = 404, description = "No such mirror", body = ErrorBody),
    )
)]
pub async fn show_mirror(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<MirrorInfo>, ApiError> {
    Ok(Json(with_mirrors(&state, move |m, _| m.info(&name)).await?))
}

/// `GET /mirrors/update` (and the other actions' paths): the mirror of
/// that name, as the wildcard route would show it.
pub async fn show_mirror_named(
    State(state): State<AppState>,
    uri: axum::http::Uri,
) -> Result<Json<MirrorInfo>, ApiError> {
    let name = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(Json(with_mirrors(&state, move |m, _| m.info(&name)).await?))
}

/// Delete a mirror: its destination LUNs stay, writable, at their newest
/// complete snapshot; its holds go on both sides.
#[utoipa::path(
    delete, path = "/api/v1/mirrors/{name}", operation_id = "delete_mirror", tag = "mirrors",
    params(("name" = String, Path, description = "Destination LUN or group name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such mirror", body = ErrorBody),
    )
)]
pub async fn delete_mirror(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<StatusCode, ApiError> {
    with_mirrors(&state, move |m, _| m.delete(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

macro_rules! mirror_action {
    ($fn:ident, $path:literal, $id:literal, $doc:literal, $call:expr) => {
        #[doc = $doc]
        #[utoipa::path(
                            post, path = $path, operation_id = $id, tag = "mirrors",
                            request_body = MirrorAction,
                            responses(
                                (status = 200, description = "The mirror now", body = MirrorInfo),
                                (status = 404, description = "No such mirror", body = ErrorBody),
                            )
                        )]
        pub async fn $fn(
            State(state): State<AppState>,
            JsonBody(body): JsonBody<MirrorAction>,
        ) -> Result<Json<MirrorInfo>, ApiError> {
            let call = $call;
            Ok(Json(
                with_mirrors(&state, move |m, _| call(m, &body.name)).await?,
            ))
        }
    };
}

mirror_action!(
    update,
    "/api/v1/mirrors/update",
    "update_mirror",
    "Transfer now: a new mirror snapshot on the source, and its change since the newest common one.",
    |m: &Arc<Mirrors>, n: &str| m.update(n)
);
mirror_action!(
    abort,
    "/api/v1/mirrors/abort",
    "abort_mirror",
    "Stop the running transfer and discard what it wrote.",
    |m: &Arc<Mirrors>, n: &str| m.abort(n)
);
mirror_action!(
    break_off,
    "/api/v1/mirrors/break",
    "break_mirror",
    "Make the destination writable at its newest complete snapshot; local, works with the source gone.",
    |m: &Arc<Mirrors>, n: &str| m.break_off(n)
);

/// After a break: roll the destination back to the newest common snapshot
/// and resume from the source. Needs `force` when it discards writes.
#[utoipa::path(
    post, path = "/api/v1/mirrors/resync", operation_id = "resync_mirror", tag = "mirrors",
    request_body = MirrorAction,
    responses(
        (status = 200, description = "The plan, done unless a dry run", body = MirrorPlan),
        (status = 404, description = "No such mirror", body = ErrorBody),
        (status = 409, description = "It would discard writes and `force` was not given", body = ErrorBody),
    )
)]
pub async fn resync(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<MirrorAction>,
) -> Result<Json<MirrorPlan>, ApiError> {
    Ok(Json(
        with_mirrors(&state, move |m, _| {
            m.resync(&body.name, body.force, body.dry_run)
        })
        .await?,
    ))
}

/// After a break: the old source becomes the destination and receives
/// what was written here; this side becomes the source.
#[utoipa::path(
    post, path = "/api/v1/mirrors/reverse", operation_id = "reverse_mirror", tag = "mirrors",
    request_body = MirrorAction,
    responses(
        (status = 200, description = "The plan, done unless a dry run", body = MirrorPlan),
        (status = 404, description = "No such mirror", body = ErrorBody),
        (status = 409, description = "It would discard writes and `force` was not given", body = ErrorBody),
    )
)]
pub async fn reverse(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<MirrorAction>,
) -> Result<Json<MirrorPlan>, ApiError> {
    let url = body
        .url
        .clone()
        .or_else(|| state.self_url.as_ref().map(|u| u.to_string()))
        .ok_or_else(|| {
            ApiError::invalid(
                "a reverse needs this server's URL as the old source reaches it: pass `url`",
            )
        })?;
    Ok(Json(
        with_mirrors(&state, move |m, _| {
            m.reverse(
                &body.name,
                &url,
                body.ca_cert.clone(),
                body.force,
                body.dry_run,
            )
        })
        .await?,
    ))
}
