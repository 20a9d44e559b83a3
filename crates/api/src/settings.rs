//! `/api/v1/settings`: the server's settings that change at run time.

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::wire::{ErrorBody, Settings, UpdateSettings, MB};
use crate::{call, AppState};
use axum::extract::State;
use axum::Json;

/// Show the runtime settings.
#[utoipa::path(
    get, path = "/api/v1/settings", operation_id = "show_settings", tag = "settings",
    responses((status = 200, description = "The settings", body = Settings))
)]
pub async fn show(State(state): State<AppState>) -> Result<Json<Settings>, ApiError> {
    let rate = call(&state, |e| Ok(e.split_rate())).await?;
    Ok(Json(Settings::from_split_rate(rate)))
}

/// Change runtime settings; fields left out stay as they are.
///
/// `split_rate_mbps` limits, pool-wide, how fast clone splits copy data
/// (MB/s, 10^6 bytes per second; 0 for unlimited); while reads or writes
/// arrive, splits copy at a quarter of it. It lasts until the
/// server restarts, which takes `blockfork serve --split-rate` again.
#[utoipa::path(
    patch, path = "/api/v1/settings", operation_id = "update_settings", tag = "settings",
    request_body = UpdateSettings,
    responses(
        (status = 200, description = "The settings now", body = Settings),
        (status = 400, description = "A value out of range, or malformed body", body = ErrorBody),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<UpdateSettings>,
) -> Result<Json<Settings>, ApiError> {
    let bytes = match body.split_rate_mbps {
        Some(mbps) => Some(mbps.checked_mul(MB).ok_or_else(|| {
            ApiError::invalid(format!(
                "`split_rate_mbps` {mbps} is too large; the largest is {}, and 0 means unlimited",
                u64::MAX / MB
            ))
        })?),
        None => None,
    };
    let rate = call(&state, move |e| {
        if let Some(bytes) = bytes {
            e.set_split_rate(bytes);
        }
        Ok(e.split_rate())
    })
    .await?;
    Ok(Json(Settings::from_split_rate(rate)))
}
