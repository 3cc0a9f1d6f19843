//! `GET /sse?channel=a&channel=b`: one stream per request, refused with a
//! JSON error before it starts, then `event: message` per push.
//!
//! Every message carries an `id:` cursor with the position of every channel
//! of the stream, signed with a key derived from `cursor_secret` (or, without
//! one, from the API key), so that
//! `Last-Event-ID` (or `?lastEventId=` on a first connect) resumes all of
//! them; see docs/protocol.md, "Server-Sent Events".

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::stream::{self, Stream, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::api::ApiError;
use crate::auth;
use crate::channel::ChannelName;
use crate::engine::Position;
use crate::hub::{self, Admission, CutOff, Push, Queue, Registration, Subscribed};
use crate::protocol::{self, ErrorCode, Refusal};
use crate::server::AppState;

/// `disconnect` codes, the same as the WebSocket close codes.
mod disconnect_code {
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const DISCONNECTED: u16 = 4003;
    pub(super) const TOKEN_EXPIRED: u16 = 4004;
    pub(super) const SLOW_CONSUMER: u16 = 4008;
}

/// A `Last-Event-ID` longer than this is not one of ours (ours stay far
/// below it even at the subscription limit).
const MAX_CURSOR_CHARS: usize = 8 * 1024;

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
    let admission = app.hub.admit().map_err(|r| ApiError::from(r.refusal()))?;
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let mut token = auth::bearer_token(headers).map(str::to_string);
    // The header is what `EventSource` sends on its own reconnects; it wins
    // over a `lastEventId` that the page put into the URL for its first one.
    let mut resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let from_header = resume.is_some();
    let mut names = Vec::new();
    for (key, value) in params {
        match key.as_str() {
            "channel" => names.push(value),
            "token" => token = token.or(Some(value)),
            "lastEventId" if !from_header && !value.is_empty() => resume = Some(value),
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
    let mut sorted = channels.clone();
    sorted.sort_unstable();
    if let Some(twice) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(ApiError::bad_request(format!(
            "channel `{}` is named twice",
            twice[0]
        )));
    }

    let signer = CursorSigner::new(
        app.config
            .cursor_secret
            .as_deref()
            .or(app.config.api_key.as_deref())
            .unwrap_or_default(),
    );
    // `None`: no resume asked; `Some(Err)`: asked, but the cursor is unusable.
    let resume_from = resume.map(|cursor| signer.decode(&cursor, &sorted));
    if let Some(Err(error)) = &resume_from {
        tracing::debug!("sse resume refused: {error}");
    }
    let expires = identity
        .as_ref()
        .and_then(|i| super::token_deadline(i, app.config.jwt.leeway_seconds));
    let (registration, queue) = app
        .hub
        .register(identity)
        .map_err(|r| ApiError::from(r.refusal()))?;
    let mut opened = Vec::with_capacity(channels.len());
    for channel in &channels {
        let from = match &resume_from {
            Some(Ok(positions)) => sorted
                .binary_search(channel)
                .ok()
                .map(|i| positions[i].clone()),
            _ => None,
        };
        // A refusal drops the registration, which ends the earlier subscriptions.
        let subscribed = match &from {
            Some(from) => {
                app.hub
                    .subscribe_recovering(&registration, channel, Some(from))
                    .await?
            }
            None => Subscribed {
                position: app.hub.subscribe(&registration, channel).await?,
                missed: None,
            },
        };
        opened.push((channel, from, subscribed));
    }

    // Where each channel starts: the client's position where it is
    // recovered (the missed messages move it on), else the live one.
    let mut cursor = Cursor {
        channels: sorted,
        positions: Vec::new(),
        signer,
    };
    cursor.positions = cursor
        .channels
        .iter()
        .map(|channel| {
            let (_, from, subscribed) = opened
                .iter()
                .find(|(c, _, _)| *c == channel)
                .expect("every channel was subscribed");
            match (&subscribed.missed, from) {
                (Some(_), Some(from)) => from.clone(),
                _ => subscribed.position.clone(),
            }
        })
        .collect();
    let opening_id = cursor.encode();

    let mut opening = vec![Event::default().retry(Duration::from_millis(app.config.sse.retry_ms))];
    let mut unrecovered = Vec::new();
    for (channel, _, subscribed) in &opened {
        let position = &subscribed.position;
        let mut data = json!({
            "type": "subscribed",
            "channel": channel.as_str(),
            "epoch": &*position.epoch,
            "offset": position.offset,
        });
        if resume_from.is_some() {
            let recovered = subscribed.missed.is_some();
            data["recovered"] = json!(recovered);
            if !recovered {
                unrecovered.push(channel.as_str());
            }
        }
        opening.push(
            Event::default()
                .event("subscribed")
                .id(&opening_id)
                .data(data.to_string()),
        );
    }
    if !unrecovered.is_empty() {
        let reason = match &resume_from {
            Some(Err(error)) => error.to_string(),
            _ => "the channel's epoch changed or its history no longer holds every message \
                  after the cursor"
                .to_string(),
        };
        let data = json!({"type": "unrecovered", "channels": unrecovered, "reason": reason});
        opening.push(
            Event::default()
                .event("unrecovered")
                .id(&opening_id)
                .data(data.to_string()),
        );
    }
    for (channel, _, subscribed) in opened {
        let Some(missed) = subscribed.missed else {
            continue;
        };
        for push in &missed {
            opening.push(cursor.event(push));
        }
        // Everything up to the live position has been sent or was filtered
        // out for this audience.
        cursor.advance(channel, &subscribed.position);
    }

    let live = Live {
        _admission: admission,
        registration,
        queue,
        cursor,
        shutdown: app.shutdown.clone(),
        expiry: expires.map(|at| Box::pin(tokio::time::sleep_until(at))),
        ended: false,
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

/// The live part of a stream: pushes until the client goes, or a final
/// `disconnect` event when the hub cuts it off, the token expires or the
/// server shuts down.
struct Live {
    /// The stream's place under `limits.max_connections`.
    _admission: Admission,
    registration: Registration,
    queue: Queue,
    cursor: Cursor,
    shutdown: watch::Receiver<bool>,
    expiry: Option<Pin<Box<Sleep>>>,
    /// The final event has been sent.
    ended: bool,
}

impl Live {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut live| async move {
            if live.ended {
                return None;
            }
            let expired = async {
                match live.expiry.as_mut() {
                    Some(sleep) => sleep.await,
                    None => std::future::pending().await,
                }
            };
            let (code, reason) = tokio::select! {
                biased;
                cut_off = live.registration.cut_off() => {
                    let code = match cut_off {
                        CutOff::SlowConsumer => disconnect_code::SLOW_CONSUMER,
                        CutOff::Disconnected => disconnect_code::DISCONNECTED,
                    };
                    (code, cut_off.reason())
                }
                () = expired => (disconnect_code::TOKEN_EXPIRED, "token expired"),
                _ = live.shutdown.changed() => (disconnect_code::GOING_AWAY, "server shutting down"),
                push = live.queue.recv() => {
                    let push: Arc<Push> = push?;
                    let event = live.cursor.event(&push);
                    return Some((Ok(event), live));
                }
            };
            tracing::info!(
                connection = live.registration.id(),
                "sse stream ended: {reason}"
            );
            live.ended = true;
            let event = Event::default()
                .event("disconnect")
                .data(protocol::disconnect_push(code, reason));
            Some((Ok(event), live))
        })
    }
}

/// The position of every channel of a stream, in channel-name order (so
/// that the order of `channel=` parameters does not matter), as sent in `id:`.
struct Cursor {
    channels: Vec<ChannelName>,
    positions: Vec<Position>,
    signer: CursorSigner,
}

impl Cursor {
    /// The push as an SSE event; a message moves the cursor and carries it.
    fn event(&mut self, push: &Push) -> Event {
        let mut event = Event::default().event(push.kind).data(push.frame.as_str());
        if let Some(position) = &push.position {
            self.advance(&push.channel, position);
            event = event.id(self.encode());
        }
        event
    }

    fn advance(&mut self, channel: &ChannelName, position: &Position) {
        if let Ok(i) = self.channels.binary_search(channel) {
            self.positions[i] = position.clone();
        }
    }

    fn encode(&self) -> String {
        self.signer.encode(&self.channels, &self.positions)
    }
}

/// Why a cursor cannot be used; the text goes into the `unrecovered` event.
#[derive(Debug, thiserror::Error)]
enum CursorError {
    #[error("the cursor is malformed")]
    Malformed,
    #[error("the cursor is for a stream of {got} channel(s), this one has {want}")]
    ChannelCount { got: usize, want: usize },
    #[error(
        "the cursor is not valid for this stream (changed, made for other channels, \
         or from another installation)"
    )]
    Signature,
}

/// Cursor format version (the first byte).
const CURSOR_VERSION: u8 = 1;
/// Bytes of HMAC-SHA256 kept: 64 bits, checked online only, one guess per request.
const CURSOR_MAC_BYTES: usize = 8;
/// Domain separation: the API key also authenticates PHP, for other purposes.
const CURSOR_MAC_CONTEXT: &[u8] = b"stellwerk sse cursor v1\0";
/// Label of the cursor key's derivation from the configured secret.
const CURSOR_KEY_LABEL: &[u8] = b"stellwerk sse cursor key\0";
const EPOCH_RAW: u8 = 0;
/// Lower-case hex of even length (the memory engine's epochs), packed as bytes.
const EPOCH_HEX: u8 = 1;

/// Encodes and checks cursors: base64url (no padding) of
/// `version, channel count, per channel (epoch, offset), MAC`, where the MAC
/// also covers the channel names, so a cursor only fits its channel set.
/// The key is derived from `cursor_secret` or the API key, which every node of
/// an installation shares; never the secret itself, so that the MAC key is not
/// a credential that opens anything else.
#[derive(Clone)]
struct CursorSigner {
    mac: Hmac<Sha256>,
}

impl CursorSigner {
    fn new(secret: &str) -> CursorSigner {
        let mut derive =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        derive.update(CURSOR_KEY_LABEL);
        let key = derive.finalize().into_bytes();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(CURSOR_MAC_CONTEXT);
        CursorSigner { mac }
    }

    fn encode(&self, channels: &[ChannelName], positions: &[Position]) -> String {
        let mut bytes = Vec::with_capacity(2 + positions.len() * 12 + CURSOR_MAC_BYTES);
        bytes.push(CURSOR_VERSION);
        put_varint(&mut bytes, positions.len() as u64);
        for position in positions {
            let epoch = &*position.epoch;
            if is_packable_hex(epoch) {
                bytes.push(EPOCH_HEX);
                put_varint(&mut bytes, (epoch.len() / 2) as u64);
                bytes.extend(hex::decode(epoch).expect("checked to be hex"));
            } else {
                bytes.push(EPOCH_RAW);
                put_varint(&mut bytes, epoch.len() as u64);
                bytes.extend_from_slice(epoch.as_bytes());
            }
            put_varint(&mut bytes, position.offset);
        }
        let tag = self.tag(channels, &bytes);
        bytes.extend_from_slice(&tag[..CURSOR_MAC_BYTES]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The positions, in the order of `channels` (sorted), if `cursor` was
    /// made by this installation for exactly these channels.
    fn decode(&self, cursor: &str, channels: &[ChannelName]) -> Result<Vec<Position>, CursorError> {
        if cursor.len() > MAX_CURSOR_CHARS {
            return Err(CursorError::Malformed);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() < 2 + CURSOR_MAC_BYTES {
            return Err(CursorError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - CURSOR_MAC_BYTES);
        let mut reader = Reader(payload);
        if reader.byte()? != CURSOR_VERSION {
            return Err(CursorError::Malformed);
        }
        let count = reader.varint()?;
        let mut positions = Vec::new();
        for _ in 0..count.min(channels.len() as u64 + 1) {
            let epoch = match reader.byte()? {
                EPOCH_RAW => {
                    let len =
                        usize::try_from(reader.varint()?).map_err(|_| CursorError::Malformed)?;
                    std::str::from_utf8(reader.take(len)?)
                        .map_err(|_| CursorError::Malformed)?
                        .to_string()
                }
                EPOCH_HEX => {
                    let len =
                        usize::try_from(reader.varint()?).map_err(|_| CursorError::Malformed)?;
                    hex::encode(reader.take(len)?)
                }
                _ => return Err(CursorError::Malformed),
            };
            positions.push(Position {
                epoch: Arc::from(epoch),
                offset: reader.varint()?,
            });
        }
        if count != channels.len() as u64 {
            return Err(CursorError::ChannelCount {
                got: usize::try_from(count).unwrap_or(usize::MAX),
                want: channels.len(),
            });
        }
        if !reader.0.is_empty() {
            return Err(CursorError::Malformed);
        }
        let mut mac = self.mac.clone();
        Self::feed(&mut mac, channels, payload);
        mac.verify_truncated_left(tag)
            .map_err(|_| CursorError::Signature)?;
        Ok(positions)
    }

    fn tag(&self, channels: &[ChannelName], payload: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        Self::feed(&mut mac, channels, payload);
        mac.finalize().into_bytes().into()
    }

    fn feed(mac: &mut Hmac<Sha256>, channels: &[ChannelName], payload: &[u8]) {
        // Channel names cannot contain NUL: the encoding is unambiguous.
        for channel in channels {
            mac.update(channel.as_str().as_bytes());
            mac.update(b"\0");
        }
        mac.update(payload);
    }
}

fn is_packable_hex(epoch: &str) -> bool {
    !epoch.is_empty()
        && epoch.len() % 2 == 0
        && epoch
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// LEB128, as in protobuf.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CursorError> {
        let (&first, rest) = self.0.split_first().ok_or(CursorError::Malformed)?;
        self.0 = rest;
        Ok(first)
    }

    fn take(&mut self, len: usize) -> Result<&[u8], CursorError> {
        if len > self.0.len() {
            return Err(CursorError::Malformed);
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, CursorError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(CursorError::Malformed);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CursorError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(names: &[&str]) -> Vec<ChannelName> {
        let mut channels: Vec<ChannelName> = names
            .iter()
            .map(|n| ChannelName::parse(n).unwrap())
            .collect();
        channels.sort_unstable();
        channels
    }

    fn position(epoch: &str, offset: u64) -> Position {
        Position {
            epoch: Arc::from(epoch),
            offset,
        }
    }

    #[test]
    fn cursor_round_trips_and_stays_compact() {
        let signer = CursorSigner::new("key");
        let chans = channels(&["public:a", "course:x", "user:u"]);
        let positions = vec![
            position("0123456789ab", 0),
            position("Not-Hex.Epoch", u64::MAX),
            position("fedcba987654", 300),
        ];
        let cursor = signer.encode(&chans, &positions);
        assert!(cursor.len() < 80, "{} chars: {cursor}", cursor.len());
        assert!(cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let decoded = signer.decode(&cursor, &chans).unwrap();
        assert_eq!(decoded, positions);
    }

    #[test]
    fn cursor_is_bound_to_key_and_channel_set() {
        let signer = CursorSigner::new("key");
        let chans = channels(&["public:a", "public:b"]);
        let positions = vec![position("0a0b", 1), position("0c0d", 2)];
        let cursor = signer.encode(&chans, &positions);
        assert!(matches!(
            CursorSigner::new("other key").decode(&cursor, &chans),
            Err(CursorError::Signature)
        ));
        assert!(matches!(
            signer.decode(&cursor, &channels(&["public:a", "public:c"])),
            Err(CursorError::Signature)
        ));
        assert!(matches!(
            signer.decode(&cursor, &channels(&["public:a"])),
            Err(CursorError::ChannelCount { got: 2, want: 1 })
        ));
    }

    #[test]
    fn the_mac_key_is_derived_not_the_secret_itself() {
        let chans = channels(&["public:a"]);
        let positions = vec![position("0a0b", 7)];
        // How cursors were keyed before: HMAC with the API key itself.
        let mut raw = Hmac::<Sha256>::new_from_slice(b"the-api-key").unwrap();
        raw.update(CURSOR_MAC_CONTEXT);
        let raw_cursor = CursorSigner { mac: raw }.encode(&chans, &positions);
        let signer = CursorSigner::new("the-api-key");
        assert_ne!(signer.encode(&chans, &positions), raw_cursor);
        assert!(matches!(
            signer.decode(&raw_cursor, &chans),
            Err(CursorError::Signature)
        ));
    }

    #[test]
    fn every_changed_byte_is_detected() {
        let signer = CursorSigner::new("key");
        let chans = channels(&["public:a", "public:b"]);
        let cursor = signer.encode(&chans, &[position("0a0b", 1), position("xyz", 2)]);
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&cursor)
            .unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            let changed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(changed);
            assert!(signer.decode(&changed, &chans).is_err(), "byte {i}");
        }
        for garbage in [
            "",
            "!!!",
            "AAAA",
            &cursor[..cursor.len() - 2],
            &"A".repeat(10_000),
        ] {
            assert!(signer.decode(garbage, &chans).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut bytes = Vec::new();
            put_varint(&mut bytes, value);
            assert_eq!(Reader(&bytes).varint().unwrap(), value);
        }
        assert!(Reader(&[0xff; 11]).varint().is_err());
    }
}
