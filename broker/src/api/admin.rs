//! `/admin/plugins…`: what runs, and deploying, reloading and removing
//! plugins without a restart. Behind the admin token (never the API key);
//! without an admin token the admin API is off (404).
//!
//! Every change answers with its `outcome`: `loaded` (a new version is live),
//! `unchanged` (those bytes are live already), `unloaded`, or for one entry
//! of a reload-all, `refused` with the reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use super::access::check_admin_token;
use super::ApiError;
use crate::hub::Reauthorized;
use crate::plugins::HookCounts;
use crate::protocol::ErrorCode;
use crate::reload::{Change, PluginStatus, ReloadError};
use crate::server::AppState;

/// `GET /admin/plugins`.
pub(crate) async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin_token(&app, &headers, "the admin API")?;
    let plugins: Vec<Value> = app.plugins.list().await.iter().map(status_json).collect();
    Ok(Json(json!({ "plugins": plugins })))
}

/// `POST /admin/plugins/reload`: every file in the plugin directory. Always
/// 200; each entry says what became of its file.
pub(crate) async fn reload_all(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin_token(&app, &headers, "the admin API")?;
    let results: Vec<Value> = app
        .plugins
        .reload_all()
        .await
        .into_iter()
        .filter_map(|(name, result)| match result {
            Ok(change) => Some(change_json(&change)),
            Err(ReloadError::NotFound(_)) => None,
            Err(e) => Some(json!({"name": name, "outcome": "refused", "error": e.to_string()})),
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

/// `POST /admin/plugins/{name}/reload`: a refused version answers 400 with
/// the reason (also kept as `last_error`); the running one stays live.
pub(crate) async fn reload(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin_token(&app, &headers, "the admin API")?;
    let change = app.plugins.reload(&name).await?;
    Ok(Json(change_json(&change)))
}

/// `PUT /admin/plugins/{name}` with the `.wasm` as body: checked (compiled,
/// `describe`d, namespaces free) before it is written into the plugin
/// directory and goes live.
pub(crate) async fn upload(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(refusal) = check_admin_token(&app, &headers, "the admin API") {
        // The body stays unread, so this connection cannot carry another request: say so,
        // or the client's pool reuses it and its next request fails.
        let mut response = refusal.into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    upload_checked(app, &name, &headers, body)
        .await
        .into_response()
}

async fn upload_checked(
    app: AppState,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let max = usize::try_from(app.config.plugins.max_upload_bytes).unwrap_or(usize::MAX);
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("plugin upload larger than {max} bytes (plugins.max_upload_bytes)"),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(bytes) = read_upload(body, max, announced.is_some_and(|n| n > max as u64)).await?
    else {
        return Err(too_large());
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the body must be the plugin's .wasm component",
        ));
    }
    let change = app.plugins.upload(name, bytes).await?;
    Ok(Json(change_json(&change)))
}

/// Bytes read past the limit before an oversized upload is answered: a client that sends
/// the whole body before it reads the answer (curl, most HTTP libraries) then gets the 413
/// instead of a reset connection. Beyond this, the connection is closed.
const DRAIN_AT_MOST: usize = 64 << 20;

/// The body if it fits in `max` bytes (`None` if not, then read on up to [`DRAIN_AT_MOST`]).
async fn read_upload(body: Body, max: usize, too_large: bool) -> Result<Option<Vec<u8>>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut too_large = too_large;
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if too_large || seen > max {
            too_large = true;
            bytes = Vec::new();
            if seen > max.saturating_add(DRAIN_AT_MOST) {
                break;
            }
            continue;
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((!too_large).then_some(bytes))
}

/// `DELETE /admin/plugins/{name}`: deletes the file and unloads the plugin;
/// its subscribers get `unsubscribed`.
pub(crate) async fn remove(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin_token(&app, &headers, "the admin API")?;
    let change = app.plugins.remove(&name).await?;
    Ok(Json(change_json(&change)))
}

impl From<ReloadError> for ApiError {
    fn from(error: ReloadError) -> Self {
        let code = match &error {
            ReloadError::NotFound(_) => ErrorCode::NotFound,
            ReloadError::BadName(_) | ReloadError::Refused(_) => ErrorCode::BadRequest,
            ReloadError::Io(_) => ErrorCode::Internal,
        };
        ApiError::new(code, error.to_string())
    }
}

fn change_json(change: &Change) -> Value {
    match change {
        Change::Swapped {
            status,
            reauthorized,
        } => json!({
            "name": status.name,
            "outcome": "loaded",
            "plugin": status_json(status),
            "reauthorized": reauthorized_json(*reauthorized),
        }),
        Change::Unchanged { status } => json!({
            "name": status.name,
            "outcome": "unchanged",
            "plugin": status_json(status),
        }),
        Change::Unloaded { name, reauthorized } => json!({
            "name": name,
            "outcome": "unloaded",
            "reauthorized": reauthorized_json(*reauthorized),
        }),
    }
}

fn reauthorized_json(r: Reauthorized) -> Value {
    json!({"kept": r.kept, "revoked": r.revoked})
}

fn status_json(status: &PluginStatus) -> Value {
    let mut out = json!({
        "name": status.name,
        "file": status.file.display().to_string(),
        "state": status.state.as_str(),
        "last_error": status.last_error,
        "version": null,
        "namespaces": [],
        "sha256": null,
        "loaded_at": null,
        "calls": 0,
        "faults": 0,
        "latency_p99_ms": null,
        "hooks": {},
        "instances": null,
    });
    let Some(live) = &status.live else {
        return out;
    };
    let hooks: [(&str, HookCounts); 3] = [
        ("authorize-subscribe", live.stats.authorize_subscribe),
        ("on-publish", live.stats.on_publish),
        ("filter", live.stats.filter),
    ];
    let p99 = |h: &HookCounts| h.latency.quantile(0.99).map(millis);
    out["version"] = json!(live.version);
    out["namespaces"] = json!(live.namespaces);
    out["sha256"] = json!(live.sha256);
    out["loaded_at"] = json!(rfc3339(live.loaded_at));
    out["calls"] = json!(hooks.iter().map(|(_, h)| h.calls).sum::<u64>());
    out["faults"] = json!(hooks.iter().map(|(_, h)| h.faults).sum::<u64>());
    // The slowest hook's p99: an upper bound for any call of this version.
    out["latency_p99_ms"] = json!(hooks.iter().filter_map(|(_, h)| p99(h)).reduce(f64::max));
    out["instances"] = json!({
        "live": live.stats.instances_live,
        "idle": live.stats.instances_idle,
        "created": live.stats.instances_created,
    });
    out["hooks"] = hooks
        .iter()
        .map(|(hook, h)| {
            (
                (*hook).to_owned(),
                json!({"calls": h.calls, "denials": h.denials, "faults": h.faults, "latency_p99_ms": p99(h)}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    out
}

/// Bucket bounds in milliseconds; above the largest bucket, `null` would lie,
/// so it is shown as the largest finite value JSON can carry.
fn millis(d: Duration) -> f64 {
    if d == Duration::MAX {
        f64::MAX
    } else {
        d.as_secs_f64() * 1000.0
    }
}

/// `2026-11-26T11:20:05.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_156_005_123);
        assert_eq!(rfc3339(t), "2025-11-26T11:20:05.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
