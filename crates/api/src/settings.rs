//! `/api/v1/settings`: the server's settings that change at run time.

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::wire::{ErrorBody, Settings, UpdateSettings, MB};
use crate::{call, AppState};
use axum::extract::State;
use axum::Json;

fn mirror_rate(state: &AppState) -> u64 {
    state.mirrors.as_ref().map_or(0, |m| m.mirror_rate())
}

fn io_metrics(state: &AppState) -> bool {
    state.telemetry.as_ref().is_some_and(|t| t.io.enabled())
}

/// Show the runtime settings.
#[utoipa::path(
    get, path = "/api/v1/settings", operation_id = "show_settings", tag = "settings",
    responses((status = 200, description = "The settings", body = Settings))
)]
pub async fn show(State(state): State<AppState>) -> Result<Json<Settings>, ApiError> {
    let (rate, scrub, rebuild) = call(&state, |e| {
        Ok((e.split_rate(), e.scrub_rate(), e.rebuild_rate()))
    })
    .await?;
    Ok(Json(Settings::from_rates(
        rate,
        mirror_rate(&state),
        io_metrics(&state),
        scrub,
        rebuild,
    )))
}

/// Change runtime settings; fields left out stay as they are.
///
/// `split_rate_mbps` limits, pool-wide, how fast clone splits copy data
/// (MB/s, 10^6 bytes per second; 0 for unlimited); while reads or writes
/// arrive, splits copy at a quarter of it. It lasts until the
/// server restarts, which takes `blockfork serve --split-rate` again.
/// `mirror_rate_mbps` limits, pool-wide, how fast mirrors transfer into
/// this server; it is kept with the mirrors' state. `io_metrics` starts or
/// stops counting NBD requests (until the server restarts).
/// `scrub_rate_mbps` paces the scrub (MB/s; 0 for unlimited; a quarter of
/// it while reads or writes arrive) until the server restarts, which takes
/// `blockfork serve --scrub-rate` again.
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
    let mirror_bytes = match body.mirror_rate_mbps {
        Some(mbps) => Some(mbps.checked_mul(MB).ok_or_else(|| {
            ApiError::invalid(format!(
                "`mirror_rate_mbps` {mbps} is too large; the largest is {}, and 0 means unlimited",
                u64::MAX / MB
            ))
        })?),
        None => None,
    };
    let scrub_bytes = match body.scrub_rate_mbps {
        Some(mbps) => Some(mbps.checked_mul(MB).ok_or_else(|| {
            ApiError::invalid(format!(
                "`scrub_rate_mbps` {mbps} is too large; the largest is {}, and 0 means unlimited",
                u64::MAX / MB
            ))
        })?),
        None => None,
    };
    let rebuild_bytes = match body.rebuild_rate_mbps {
        Some(mbps) => Some(mbps.checked_mul(MB).ok_or_else(|| {
            ApiError::invalid(format!(
                "`rebuild_rate_mbps` {mbps} is too large; the largest is {}, and 0 means unlimited",
                u64::MAX / MB
            ))
        })?),
        None => None,
    };
    if mirror_bytes.is_some() && state.mirrors.is_none() {
        return Err(ApiError::invalid("mirroring is not enabled on this server"));
    }
    if body.io_metrics.is_some() && state.telemetry.is_none() {
        return Err(ApiError::invalid("this server keeps no metrics"));
    }
    let mirrors = state.mirrors.clone();
    let rate = call(&state, move |e| {
        if let (Some(bytes), Some(m)) = (mirror_bytes, &mirrors) {
            m.set_mirror_rate(bytes)?;
        }
        if let Some(bytes) = bytes {
            e.set_split_rate(bytes);
        }
        if let Some(bytes) = scrub_bytes {
            e.set_scrub_rate(bytes);
        }
        if let Some(bytes) = rebuild_bytes {
            e.set_rebuild_rate(bytes);
        }
        Ok((e.split_rate(), e.scrub_rate(), e.rebuild_rate()))
    })
    .await?;
    let (rate, scrub, rebuild) = rate;
    if let (Some(on), Some(t)) = (body.io_metrics, &state.telemetry) {
        t.io.set_enabled(on);
        tracing::info!("I/O metrics {}", if on { "on" } else { "off" });
    }
    Ok(Json(Settings::from_rates(
        rate,
        mirror_rate(&state),
        io_metrics(&state),
        scrub,
        rebuild,
    )))
}
