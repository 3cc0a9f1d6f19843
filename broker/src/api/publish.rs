//! `POST /api/publish`: how Stud.IP's PHP talks to its users' browsers.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::access::check_api_key;
use super::ApiError;
use crate::hub;
use crate::plugins::PublishSource;
use crate::protocol::{self, ErrorCode};
use crate::server::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    data: Option<Box<RawValue>>,
}

pub(crate) async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    check_api_key(&app, &headers)?;
    // After the key check, so that requests without the key cannot use up PHP's budget;
    // before the body is read, so that a refusal is cheap.
    app.rate.admit_api_publish(std::time::Instant::now())?;
    let max = app.config.limits.max_publish_bytes;
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("request body larger than {max} bytes (limits.max_publish_bytes)"),
        )
    })?;
    let body: PublishBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("body is not a valid publish request: {e}")))?;
    let names = match (body.channel, body.channels) {
        (Some(channel), None) => vec![channel],
        (None, Some(channels)) if !channels.is_empty() => channels,
        (None, Some(_)) => return Err(ApiError::bad_request("`channels` is empty")),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either `channel` or `channels`, not both",
            ))
        }
        (None, None) => return Err(ApiError::bad_request("`channel` or `channels` is required")),
    };
    let data = body
        .data
        .ok_or_else(|| ApiError::bad_request("`data` is required"))?;
    protocol::check_json_text(data.get())
        .map_err(|e| ApiError::bad_request(format!("`data` is not valid JSON: {e}")))?;
    let channels = names
        .iter()
        .map(|name| hub::parse_channel(name))
        .collect::<Result<Vec<_>, _>>()?;
    let positions = app
        .hub
        .publish(&channels, data.get(), PublishSource::Http, None)
        .await?;
    let results: Vec<Value> = channels
        .iter()
        .zip(positions)
        .map(|(channel, position)| {
            json!({"channel": channel.as_str(), "epoch": &*position.epoch, "offset": position.offset})
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}
