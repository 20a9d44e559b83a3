//! blockfork's REST API: the management plane over the engine.
//!
//! Routes, all under `/api/v1` (the OpenAPI document at
//! `GET /api/v1/openapi.json` is generated from this code):
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | GET | `/luns?prefix=P` | list LUNs |
//! | POST | `/luns` `{name, size}` | create a LUN |
//! | GET | `/luns/{name}` | show a LUN (`name` may hold '/') |
//! | PATCH | `/luns/{name}` `{size, shrink}` | resize a LUN |
//! | DELETE | `/luns/{name}?recursive=true` | delete a LUN |
//! | GET | `/snapshots?lun=L` | list snapshots |
//! | POST | `/snapshots` `{lun, name}` or `{snapshots: [...]}` | take snapshots |
//! | GET | `/snapshots/{snapshot}?lun=L` | show a snapshot |
//! | DELETE | `/snapshots/{snapshot}?lun=L` | delete a snapshot |
//! | POST | `/snapshots/{snapshot}/restore?lun=L` | restore a LUN to a snapshot |
//! | GET | `/group-snapshots` | list group snapshots |
//! | POST | `/group-snapshots` `{name, luns}` | take a group snapshot |
//! | GET | `/group-snapshots/{name}` | show a group snapshot |
//! | DELETE | `/group-snapshots/{name}` | delete a group snapshot |
//! | POST | `/clones` `{source, name, count, split}` | create clones of a snapshot |
//! | GET | `/splits?prefix=P` | list the clone splits under way |
//! | GET | `/splits/{lun}` | show a LUN's split (`lun` may hold '/') |
//! | POST | `/splits/start` `{lun}` | start or resume a clone's split |
//! | POST | `/splits/stop` `{lun}` | stop a clone's split |
//! | POST | `/clone-range` `{target, ranges}` | share ranges of LUNs/snapshots into a LUN |
//! | GET | `/igroups` | list igroups |
//! | POST | `/igroups` `{name, addresses, cert_cns}` | create an igroup |
//! | GET | `/igroups/{name}` | show an igroup |
//! | DELETE | `/igroups/{name}` | delete an igroup |
//! | POST | `/igroups/{name}/members` `{address}` or `{cert_cn}` | add a member |
//! | DELETE | `/igroups/{name}/members?address=A` or `?cert_cn=CN` | remove a member |
//! | GET | `/lun-maps` | list LUN maps |
//! | POST | `/lun-maps` `{lun, igroup}` | map a LUN to an igroup |
//! | DELETE | `/lun-maps?lun=L&igroup=G` | unmap |
//! | GET | `/jobs` | list background jobs |
//! | GET | `/pool` | show the pool |
//! | PATCH | `/pool` `{capacity, access}` | grow the pool, set its access mode |
//! | GET | `/pool/check` | check the pool's invariants online |
//! | GET | `/settings` | show the runtime settings |
//! | PATCH | `/settings` `{split_rate_mbps}` | change the runtime settings |
//!
//! Every request carries `Authorization: Bearer TOKEN` when the server has
//! a token (`blockfork serve` always does: `DATA/api-token`); without it
//! the answer is 401 and nothing changes.
//!
//! Sizes are bytes. Every error is `{"code", "message"}` with a 4xx for
//! the client's mistakes (which change nothing) and a 5xx only for the
//! server's own trouble.

mod access;
mod clones;
mod error;
mod extract;
mod group_snapshots;
mod luns;
mod metrics;
mod mirrors;
mod observe;
mod openapi;
use openapi::{BearerAuth, CommonResponses};
mod pool;
mod settings;
mod snapshots;
pub mod tls;
pub mod ui;
pub use wire;

pub use clones::CLONES_PER_REQUEST_MAX;
pub use error::ApiError;
pub use extract::BODY_BYTES_MAX;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use engine::Engine;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use utoipa::OpenApi;

/// Most requests the engine works on at once; more wait their turn. Each
/// one holds a blocking thread, and management calls gain nothing from
/// more parallelism than this.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// The OpenAPI document, generated from the handlers and the wire types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "blockfork",
        description = "Management API of blockfork, a block-storage server: LUNs, snapshots, group snapshots, clones and their splits, the pool, its jobs and its runtime settings. Sizes are in bytes; errors are `{code, message}`."
    ),
    paths(
        luns::list,
        luns::create,
        luns::show,
        luns::resize,
        luns::delete,
        snapshots::list,
        snapshots::create,
        snapshots::show,
        snapshots::delete,
        snapshots::restore,
        group_snapshots::list,
        group_snapshots::create,
        group_snapshots::show,
        group_snapshots::delete,
        clones::create,
        clones::list,
        clones::show,
        clones::start,
        luns::relayout,
        clones::stop,
        clones::clone_range,
        access::list,
        access::create,
        access::show,
        access::delete,
        access::add_member,
        access::remove_member,
        access::list_maps,
        access::map,
        access::unmap,
        pool::jobs,
        pool::status,
        pool::check,
        pool::devices,
        pool::add_device,
        pool::remove_device,
        pool::clear_device,
        pool::replace_device,
        pool::device_job,
        pool::scrub_status,
        pool::scrub_start,
        pool::scrub_stop,
        pool::grow,
        settings::show,
        settings::update,
        mirrors::create_token,
        mirrors::list_tokens,
        mirrors::delete_token,
        mirrors::replication_lun,
        mirrors::take_snapshot,
        mirrors::hold,
        mirrors::release,
        mirrors::stream,
        mirrors::accept_reverse,
        mirrors::create_peer,
        mirrors::list_peers,
        mirrors::delete_peer,
        mirrors::create_mirror,
        mirrors::list_mirrors,
        mirrors::show_mirror,
        mirrors::delete_mirror,
        mirrors::update,
        mirrors::abort,
        mirrors::break_off,
        mirrors::resync,
        mirrors::reverse,
        observe::list,
        observe::io,
        openapi_json,
    ),
    components(schemas(wire::ErrorBody)),
    modifiers(&BearerAuth, &CommonResponses),
    security(("bearer" = []))
)]
pub struct ApiDoc;

#[derive(Clone)]
pub(crate) struct AppState {
    engine: Arc<Engine>,
    in_flight: Arc<Semaphore>,
    openapi: Arc<String>,
    mirrors: Option<Arc<mirror::Mirrors>>,
    /// This server's API URL as peers reach it (for a mirror reverse).
    self_url: Option<Arc<str>>,
    /// Counters for `/metrics` and `/api/v1/io` (None: none kept).
    telemetry: Option<Arc<telemetry::Telemetry>>,
    /// The admin token (the dashboard's login checks it).
    token: Option<Arc<str>>,
    sessions: Arc<ui::Sessions>,
    /// Session cookies get `Secure` (the API is served over HTTPS).
    secure_cookies: bool,
}

/// What the API serves beside the engine.
#[derive(Default, Clone)]
pub struct ApiConfig {
    /// The admin token every request needs (None: open, for tests).
    pub token: Option<String>,
    /// Mirroring: peers, mirrors, and the replication routes that
    /// replication tokens open.
    pub mirrors: Option<Arc<mirror::Mirrors>>,
    /// This server's API URL as peers reach it.
    pub self_url: Option<String>,
    /// What the NBD server, the data path and the API count.
    pub telemetry: Option<Arc<telemetry::Telemetry>>,
    /// `GET /metrics` without the token (`serve --metrics-public`).
    pub metrics_public: bool,
    /// Session cookies get `Secure` ([`serve_tls`] sets it).
    pub secure_cookies: bool,
}

/// Runs a blocking engine call off the async runtime.
pub(crate) async fn call<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> engine::Result<T> + Send + 'static,
{
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || f(&engine))
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

/// The API's routes over `engine`, open to anyone who can connect (tests
/// and embedding); `blockfork serve` uses [`router_with_token`].
pub fn router(engine: Arc<Engine>) -> Router {
    router_with_token(engine, None)
}

/// The API's routes; with a token, every request must carry
/// `Authorization: Bearer TOKEN` or gets 401.
pub fn router_with_token(engine: Arc<Engine>, token: Option<String>) -> Router {
    router_with(
        engine,
        ApiConfig {
            token,
            ..Default::default()
        },
    )
}

/// The API's routes with everything `config` adds.
pub fn router_with(engine: Arc<Engine>, config: ApiConfig) -> Router {
    let openapi = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    let token: Option<Arc<str>> = config.token.map(Arc::from);
    let sessions = Arc::new(ui::Sessions::default());
    let state = AppState {
        engine,
        in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
        openapi: Arc::new(openapi),
        mirrors: config.mirrors.clone(),
        self_url: config.self_url.as_deref().map(Arc::from),
        telemetry: config.telemetry.clone(),
        token: token.clone(),
        sessions: sessions.clone(),
        secure_cookies: config.secure_cookies,
    };
    let v1 = Router::new()
        .route("/luns", get(luns::list).post(luns::create))
        .route(
            "/luns/{*name}",
            get(luns::show).patch(luns::resize).delete(luns::delete),
        )
        .route("/snapshots", get(snapshots::list).post(snapshots::create))
        .route(
            "/snapshots/{snapshot}",
            get(snapshots::show).delete(snapshots::delete),
        )
        .route("/snapshots/{snapshot}/restore", post(snapshots::restore))
        .route(
            "/group-snapshots",
            get(group_snapshots::list).post(group_snapshots::create),
        )
        .route(
            "/group-snapshots/{name}",
            get(group_snapshots::show).delete(group_snapshots::delete),
        )
        .route("/clones", post(clones::create))
        .route("/relayouts", post(luns::relayout))
        .route("/splits", get(clones::list))
        .route("/splits/start", post(clones::start).get(clones::show_start))
        .route("/splits/stop", post(clones::stop).get(clones::show_stop))
        .route("/splits/{*lun}", get(clones::show))
        .route("/clone-range", post(clones::clone_range))
        .route("/igroups", get(access::list).post(access::create))
        .route("/igroups/{name}", get(access::show).delete(access::delete))
        .route(
            "/igroups/{name}/members",
            post(access::add_member).delete(access::remove_member),
        )
        .route(
            "/lun-maps",
            get(access::list_maps)
                .post(access::map)
                .delete(access::unmap),
        )
        .route("/jobs", get(pool::jobs))
        .route("/pool", get(pool::status).patch(pool::grow))
        .route("/pool/check", get(pool::check))
        .route(
            "/pool/devices",
            get(pool::devices)
                .post(pool::add_device)
                .delete(pool::remove_device),
        )
        .route("/pool/devices/replace", post(pool::replace_device))
        .route("/pool/devices/clear", post(pool::clear_device))
        .route("/pool/devices/job", get(pool::device_job))
        .route("/pool/scrub", get(pool::scrub_status))
        .route("/pool/scrub/start", post(pool::scrub_start))
        .route("/pool/scrub/stop", post(pool::scrub_stop))
        .route("/settings", get(settings::show).patch(settings::update))
        .route(
            "/peer-tokens",
            get(mirrors::list_tokens).post(mirrors::create_token),
        )
        .route("/peer-tokens/{name}", delete(mirrors::delete_token))
        .route("/replication/luns", get(mirrors::replication_lun))
        .route("/replication/snapshots", post(mirrors::take_snapshot))
        .route("/replication/hold", post(mirrors::hold))
        .route("/replication/release", post(mirrors::release))
        .route("/replication/stream", get(mirrors::stream))
        .route("/replication/reverse", post(mirrors::accept_reverse))
        .route(
            "/peers",
            get(mirrors::list_peers).post(mirrors::create_peer),
        )
        .route("/peers/{name}", delete(mirrors::delete_peer))
        .route(
            "/mirrors",
            get(mirrors::list_mirrors).post(mirrors::create_mirror),
        )
        .route(
            "/mirrors/update",
            post(mirrors::update).get(mirrors::show_mirror_named),
        )
        .route(
            "/mirrors/abort",
            post(mirrors::abort).get(mirrors::show_mirror_named),
        )
        .route(
            "/mirrors/break",
            post(mirrors::break_off).get(mirrors::show_mirror_named),
        )
        .route(
            "/mirrors/resync",
            post(mirrors::resync).get(mirrors::show_mirror_named),
        )
        .route(
            "/mirrors/reverse",
            post(mirrors::reverse).get(mirrors::show_mirror_named),
        )
        .route(
            "/mirrors/{*name}",
            get(mirrors::show_mirror).delete(mirrors::delete_mirror),
        )
        .route("/events", get(observe::list))
        .route("/io", get(observe::io))
        .route("/openapi.json", get(openapi_json));
    let counted = state.telemetry.clone();
    Router::new()
        .nest("/api/v1", v1)
        .route("/metrics", get(metrics::metrics))
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/login", post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/style.css", get(ui::style_css))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(state.clone(), admit_and_log))
        .layer(middleware::from_fn_with_state(
            Auth {
                token,
                mirrors: config.mirrors,
                sessions,
                metrics_public: config.metrics_public,
            },
            authenticate,
        ))
        .layer(middleware::from_fn_with_state(counted, count_requests))
        .with_state(state)
}

/// Counts every request by route template, method and status, refusals
/// included (it runs outside the token check).
async fn count_requests(
    State(telemetry): State<Option<Arc<telemetry::Telemetry>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(t) = telemetry else {
        return next.run(request).await;
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    t.api.record(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_nanos() as u64,
    );
    response
}

/// Who may call: the admin token anywhere; a replication token only on
/// `/api/v1/replication/`.
#[derive(Clone)]
struct Auth {
    token: Option<Arc<str>>,
    mirrors: Option<Arc<mirror::Mirrors>>,
    sessions: Arc<ui::Sessions>,
    metrics_public: bool,
}

/// Where a replication token is let in.
const REPLICATION_PREFIX: &str = "/api/v1/replication/";

/// Checks the bearer token before anything else runs (no body is read, no
/// permit taken), comparing in constant time.
async fn authenticate(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let Some(token) = auth.token else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    // The dashboard's pages check the session themselves (and show the
    // login form without one); its assets hold nothing secret.
    if path == "/ui" || path.starts_with("/ui/") || (path == "/metrics" && auth.metrics_public) {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let (Some(given), Some(m)) = (bearer, &auth.mirrors) {
        if given.starts_with(mirror::tokens::TOKEN_PREFIX) {
            let peer = m.tokens.verify(given);
            if peer.is_some() && request.uri().path().starts_with(REPLICATION_PREFIX) {
                return next.run(request).await;
            }
            tracing::warn!(
                method = %request.method(),
                uri = %request.uri(),
                peer = ?peer,
                "API request refused: a replication token opens only the replication routes"
            );
            let message = if peer.is_some() {
                "a replication token may only call /api/v1/replication/; use the API token for anything else"
            } else {
                "the replication token is unknown (deleted, or never made here)"
            };
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
        }
    }
    let given = bearer;
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
    if ok {
        return next.run(request).await;
    }
    if given.is_none() {
        if let Some(id) = ui::session_id(request.headers()) {
            if auth.sessions.valid(id) {
                let safe = matches!(
                    *request.method(),
                    axum::http::Method::GET | axum::http::Method::HEAD
                );
                if safe || request.headers().contains_key(ui::UI_HEADER) {
                    return next.run(request).await;
                }
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "a change made with the dashboard's session needs the X-Blockfork-UI header",
                )
                .into_response();
            }
        }
    }
    tracing::warn!(
        method = %request.method(),
        uri = %request.uri(),
        presented = given.is_some(),
        "API request refused: missing or wrong token"
    );
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        if given.is_some() {
            "the API token is wrong; it is in DATA/api-token on the server"
        } else {
            "this API needs `Authorization: Bearer TOKEN`; the token is in DATA/api-token on the server"
        },
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the API on `listener` until `shutdown` completes, then lets the
/// requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!(%addr, "REST API listening");
    }
    axum::serve(listener, router_with(engine, config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Like [`serve`], over HTTPS with `config` (rustls).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: tokio_rustls::rustls::ServerConfig,
    engine: Arc<Engine>,
    api: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tls::TlsListener::new(listener, config)?;
    let api = ApiConfig {
        secure_cookies: true,
        ..api
    };
    axum::serve(listener, router_with(engine, api))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "meta",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json"))
)]
async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_str().to_owned(),
    )
        .into_response()
}

async fn admit_and_log(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    // Routes without a request body never read one; a body a client sent
    // anyway would stay unread in the socket, and closing a socket with
    // unread data makes the kernel reset it, which can cut the response
    // short on the client's side. Read it here and drop it.
    let request = if matches!(
        method,
        axum::http::Method::GET | axum::http::Method::DELETE | axum::http::Method::HEAD
    ) {
        let (parts, body) = request.into_parts();
        if axum::body::to_bytes(body, BODY_BYTES_MAX).await.is_err() {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body exceeds the {BODY_BYTES_MAX}-byte limit"),
            )
            .into_response();
        }
        Request::from_parts(parts, axum::body::Body::empty())
    } else {
        request
    };
    let started = Instant::now();
    let _permit = state
        .in_flight
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        %uri,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "API request"
    );
    response
}

async fn no_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no API route for {} {}; the routes are listed at /api/v1/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; the routes are listed at /api/v1/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}
