//! The dashboard at `/ui`: a login form that takes the API token and
//! keeps a session in a cookie (HttpOnly, SameSite=Strict, Secure over
//! HTTPS), and one static page (`ui/`: HTML, CSS and plain JavaScript,
//! checked in, no build step, nothing fetched from elsewhere) that draws
//! everything from the REST API with that cookie.
//!
//! A cookie-authenticated call that changes something must also carry
//! `X-Blockfork-UI: 1`, which a page on another site cannot send without
//! a preflight the API never grants (with SameSite=Strict, belt and braces).

use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "bf_session";
/// The header a cookie-authenticated change must carry.
pub const UI_HEADER: &str = "x-blockfork-ui";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first.
const SESSIONS_MAX: usize = 1024;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const LOGIN_HTML: &str = include_str!("../ui/login.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");

/// Logged-in browsers: random session ids and when they expire. Kept in
/// memory: a restart logs everyone out.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    fn create(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self.map.lock();
        let now = Instant::now();
        map.retain(|_, expiry| *expiry > now);
        if map.len() >= SESSIONS_MAX {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), now + SESSION_TTL);
        Some(id)
    }

    pub(crate) fn valid(&self, id: &str) -> bool {
        self.map
            .lock()
            .get(id)
            .is_some_and(|expiry| *expiry > Instant::now())
    }

    fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }
}

/// The session id in a request's cookies, if any.
pub(crate) fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

fn logged_in(state: &AppState, headers: &HeaderMap) -> bool {
    state.token.is_none() || session_id(headers).is_some_and(|id| state.sessions.valid(id))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn login_page(status: StatusCode, message: &str) -> Response {
    html(status, LOGIN_HTML.replace("{{message}}", message))
}

/// `GET /ui`: the dashboard, or the login form.
pub(crate) async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if logged_in(&state, &headers) {
        html(StatusCode::OK, INDEX_HTML.to_string())
    } else {
        login_page(StatusCode::OK, "")
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// `POST /ui/login` (a form with `token`): a session cookie for the right
/// token, the form again for a wrong one.
pub(crate) async fn login(
    State(state): State<AppState>,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(expected) = &state.token else {
        return see_other("/ui", None);
    };
    let given = form.map(|Form(f)| f.token).unwrap_or_default();
    if !crate::constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
        tracing::warn!("dashboard login refused: wrong token");
        return login_page(
            StatusCode::UNAUTHORIZED,
            "That is not the API token. It is in DATA/api-token on the server.",
        );
    }
    let Some(id) = state.sessions.create() else {
        return login_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server has no randomness for a session; try again.",
        );
    };
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    tracing::info!("dashboard login");
    see_other("/ui", Some(cookie))
}

/// `POST /ui/logout`: ends the session.
pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        state.sessions.remove(id);
    }
    see_other(
        "/ui",
        Some(format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        )),
    )
}

fn see_other(location: &'static str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(location));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, c);
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub(crate) async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; bf_session=abc ; b=2"),
        );
        assert_eq!(session_id(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("x=1"));
        h.append(header::COOKIE, HeaderValue::from_static("bf_session=z"));
        assert_eq!(session_id(&h), Some("z"));
        assert_eq!(session_id(&HeaderMap::new()), None);
    }

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let id = s.create().unwrap();
        assert!(s.valid(&id));
        assert!(!s.valid("nope"));
        s.remove(&id);
        assert!(!s.valid(&id));
        s.map.lock().insert("old".into(), Instant::now());
        assert!(!s.valid("old"));
    }
}
