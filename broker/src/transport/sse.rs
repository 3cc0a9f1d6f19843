//! `GET /sse?channel=a&channel=b`: one stream per request, refused with a
//! JSON error before it starts, then `event: message` per push.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::api::ApiError;
use crate::auth;
use crate::channel::ChannelName;
use crate::engine::Position;
use crate::hub::{self, Push, Registration};
use crate::protocol::{ErrorCode, Refusal};
use crate::server::AppState;

pub(crate) async fn stream(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match open(&app, &headers, query.as_deref().unwrap_or("")).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn open(app: &AppState, headers: &HeaderMap, query: &str) -> Result<Response, ApiError> {
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let mut token = auth::bearer_token(headers).map(str::to_string);
    let mut names = Vec::new();
    for (key, value) in params {
        match key.as_str() {
            "channel" => names.push(value),
            "token" => token = token.or(Some(value)),
            _ => {}
        }
    }
    let identity =
        match token {
            Some(token) => Some(app.verifier.verify(&token).map_err(|e| {
                ApiError::new(ErrorCode::Unauthorized, format!("invalid token: {e}"))
            })?),
            None if app.config.allow_anonymous => None,
            None => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "a token is required (`?token=` or `Authorization: Bearer`)",
                ))
            }
        };
    if names.is_empty() {
        return Err(ApiError::bad_request("name at least one `channel`"));
    }
    let max = app.config.limits.max_subscriptions_per_connection;
    if names.len() > max {
        return Err(ApiError::bad_request(format!(
            "at most {max} channels per stream"
        )));
    }
    let channels = names
        .iter()
        .map(|name| hub::parse_channel(name))
        .collect::<Result<Vec<_>, Refusal>>()?;
    let (registration, queue) = app.hub.register(identity);
    let mut positions = Vec::with_capacity(channels.len());
    for channel in &channels {
        // A refusal drops the registration, which ends the earlier subscriptions.
        positions.push(app.hub.subscribe(&registration, channel).await?);
    }

    let mut opening = vec![Event::default().retry(Duration::from_millis(app.config.sse.retry_ms))];
    for (channel, position) in channels.iter().zip(&positions) {
        let data = json!({
            "type": "subscribed",
            "channel": channel.as_str(),
            "epoch": &*position.epoch,
            "offset": position.offset,
        });
        opening.push(Event::default().event("subscribed").data(data.to_string()));
    }
    let live = Live {
        registration,
        queue,
        cursor: Cursor {
            channels,
            positions,
        },
        shutdown: app.shutdown.clone(),
    };
    let events = stream::iter(opening.into_iter().map(Ok)).chain(live.into_stream());
    let keep_alive = KeepAlive::new()
        .interval(Duration::from_secs(app.config.sse.keepalive_seconds.max(1)))
        .text("keep-alive");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The live part of a stream: pushes until the client goes, the hub cuts it
/// off or the server shuts down.
struct Live {
    registration: Registration,
    queue: mpsc::Receiver<Arc<Push>>,
    cursor: Cursor,
    shutdown: watch::Receiver<bool>,
}

impl Live {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut live| async move {
            let push = tokio::select! {
                biased;
                reason = live.registration.cut_off() => {
                    tracing::info!(connection = live.registration.id(), "sse stream cut off: {}", reason.reason());
                    return None;
                }
                _ = live.shutdown.changed() => return None,
                push = live.queue.recv() => push?,
            };
            let mut event = Event::default().event(push.kind).data(push.frame.as_str());
            if let Some(position) = &push.position {
                live.cursor.advance(&push.channel, position);
                event = event.id(live.cursor.encode());
            }
            Some((Ok(event), live))
        })
    }
}

/// The position of every channel of a stream, as sent in `id:`.
struct Cursor {
    channels: Vec<ChannelName>,
    positions: Vec<Position>,
}

impl Cursor {
    fn advance(&mut self, channel: &ChannelName, position: &Position) {
        if let Some(i) = self.channels.iter().position(|c| c == channel) {
            self.positions[i] = position.clone();
        }
    }

    /// Opaque to clients: base64url of `epoch.offset` per channel, in the
    /// stream's channel order.
    fn encode(&self) -> String {
        let plain = self
            .positions
            .iter()
            .map(|p| format!("{}.{}", p.epoch, p.offset))
            .collect::<Vec<_>>()
            .join(",");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plain)
    }
}
