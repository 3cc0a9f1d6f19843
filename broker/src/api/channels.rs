//! `GET /api/channels?prefix=` and `GET /api/channels/{channel}/presence`:
//! what is going on right now, for Stud.IP's server (behind the API key).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::check_api_key;
use super::ApiError;
use crate::channel::MAX_CHANNEL_LEN;
use crate::hub;
use crate::server::AppState;

#[derive(Deserialize)]
pub(crate) struct ChannelsParams {
    prefix: Option<String>,
}

/// Channels with at least one subscriber on this node, by name, with their
/// subscriber counts (connections, not users: a user with two tabs counts twice).
pub(crate) async fn channels(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<ChannelsParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    check_api_key(&app, &headers)?;
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let prefix = params.prefix.unwrap_or_default();
    check_prefix(&prefix)?;
    let channels: Vec<Value> = app
        .hub
        .channels(&prefix)
        .await?
        .into_iter()
        .map(|(channel, subscribers)| {
            json!({"channel": channel.as_str(), "subscribers": subscribers})
        })
        .collect();
    Ok(Json(json!({ "channels": channels })))
}

/// Who is subscribed to a channel whose plugin enables presence; each user once.
pub(crate) async fn presence(
    State(app): State<AppState>,
    headers: HeaderMap,
    channel: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    check_api_key(&app, &headers)?;
    let Path(name) = channel.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let channel = hub::parse_channel(&name)?;
    let members = app.hub.presence(&channel).await?;
    Ok(Json(
        json!({"channel": channel.as_str(), "members": members}),
    ))
}

/// A prefix can only match channel names, so it is held to their alphabet and
/// length: a typo (a space, a `#`) is a 400, not a silently empty list.
fn check_prefix(prefix: &str) -> Result<(), ApiError> {
    let allowed = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'=' | b',' | b'/')
    };
    if prefix.len() > MAX_CHANNEL_LEN {
        return Err(ApiError::bad_request(format!(
            "`prefix` is longer than {MAX_CHANNEL_LEN} bytes"
        )));
    }
    if !prefix.bytes().all(allowed) {
        return Err(ApiError::bad_request(
            "`prefix` may only contain A-Z a-z 0-9 _ - . : @ = , / (the characters of channel names)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_held_to_the_channel_alphabet_and_length() {
        for ok in [
            "",
            "course:",
            "course:a07535cf2f8a72df33c12ddfa4b53dde:",
            "c",
            "public:a/b",
        ] {
            assert!(check_prefix(ok).is_ok(), "{ok:?}");
        }
        for bad in ["a b", "course#", "ü", &"x".repeat(256)] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
