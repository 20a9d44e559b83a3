//! Extractors that turn every malformed request into a JSON 4xx, so that a
//! client never sees axum's plain-text rejections or a 5xx for its mistake.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// Largest request body; the biggest legitimate one, a batch of
/// `BATCH_SNAPSHOTS_MAX` snapshots with long names, fits well within.
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// A JSON request body, parsed strictly (see the `wire` types).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Requiring the JSON content type also makes a browser preflight
        // any cross-site request, so a web page cannot drive the API.
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| mime.trim().to_ascii_lowercase())
            .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON sent with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the request body exceeds the {BODY_BYTES_MAX}-byte limit"),
                )
            } else {
                ApiError::invalid(format!(
                    "cannot read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        // serde would also take a struct as an array of its fields; every
        // request body is an object, and anything else is a mistake.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid(
                "invalid request body: expected a JSON object",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
    }
}

/// Query parameters, parsed strictly (unknown parameters are refused).
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| QueryArgs(value))
            .map_err(|rejection| {
                ApiError::invalid(format!("invalid query string: {}", rejection.body_text()))
            })
    }
}

/// The one path parameter of a route, percent-decoded. For LUNs it is a
/// wildcard, so it may hold '/'.
pub struct PathName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(name)| PathName(name))
            .map_err(|rejection| {
                ApiError::invalid(format!("invalid path: {}", rejection.body_text()))
            })
    }
}
