//! The one error type handlers return, and how engine errors map to HTTP.

use crate::wire::ErrorBody;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error response: a status and the `{code, message}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A request the client got wrong: its shape, a field, a limit.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
}

impl From<engine::Error> for ApiError {
    fn from(err: engine::Error) -> ApiError {
        use engine::Error as E;
        let status = match &err {
            E::InvalidArgument(_) | E::OutOfRange(_) => StatusCode::BAD_REQUEST,
            E::NotFound { .. } => StatusCode::NOT_FOUND,
            E::AlreadyExists { .. } | E::HasDependents(_) | E::ReadOnly(_) => StatusCode::CONFLICT,
            E::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            E::PoolFailed(_) | E::Closed => StatusCode::SERVICE_UNAVAILABLE,
            E::Io(_) | E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.code(), err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "API request failed");
        }
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses() {
        let cases = [
            (engine::Error::InvalidArgument("x".into()), 400),
            (engine::Error::OutOfRange("x".into()), 400),
            (
                engine::Error::NotFound {
                    kind: "LUN",
                    name: "a".into(),
                },
                404,
            ),
            (
                engine::Error::AlreadyExists {
                    kind: "LUN",
                    name: "a".into(),
                },
                409,
            ),
            (engine::Error::HasDependents("x".into()), 409),
            (engine::Error::ReadOnly("x".into()), 409),
            (engine::Error::NoSpace("x".into()), 507),
            (engine::Error::PoolFailed("x".into()), 503),
            (engine::Error::Closed, 503),
            (engine::Error::Store("x".into()), 500),
            (engine::Error::Io(std::io::Error::other("x")), 500),
        ];
        for (err, status) in cases {
            let code = err.code();
            let api = ApiError::from(err);
            assert_eq!(api.status.as_u16(), status, "{code}");
            assert_eq!(api.code, code);
        }
    }
}
