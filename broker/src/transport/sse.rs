//! `GET /sse?channel=a&channel=b`: one stream per request, refused with a
//! JSON error before it starts, then `event: message` per push.
//!
//! Every message carries an `id:` cursor with the position of every channel
//! of the stream, signed with a key derived from `cursor_secret` (or, without
//! one, from the API key), so that
//! `Last-Event-ID` (or `?lastEventId=` on a first connect) resumes all of
//! them; see docs/protocol.md, "Server-Sent Events".
//!
//! Each channel's position is signed on its own, so a message's signed
//! position is computed once (by the first stream that sends it, kept on the
//! shared [`Push`]) and every other stream only joins strings: fan-out to SSE
//! costs no HMAC and no base64 per subscriber.

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

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz_checks;

/// `disconnect` codes, the same as the WebSocket close codes.
mod disconnect_code {
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const DISCONNECTED: u16 = 4003;
    pub(super) const TOKEN_EXPIRED: u16 = 4004;
    pub(super) const SLOW_CONSUMER: u16 = 4008;
}

/// A `Last-Event-ID` longer than this per channel of the stream is not one of
/// ours (a signed position of the memory engine is 24 characters).
const MAX_CURSOR_CHARS_PER_CHANNEL: usize = 128;

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
    let signed = sorted
        .iter()
        .map(|channel| {
            let (_, from, subscribed) = opened
                .iter()
                .find(|(c, _, _)| *c == channel)
                .expect("every channel was subscribed");
            let position = match (&subscribed.missed, from) {
                (Some(_), Some(from)) => from,
                _ => &subscribed.position,
            };
            Arc::from(signer.sign(channel, position))
        })
        .collect();
    let mut cursor = Cursor {
        channels: sorted,
        signed,
        signer,
    };
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
        let signed = cursor.signer.sign(channel, &subscribed.position);
        cursor.advance(channel, Arc::from(signed));
    }

    let live = Live {
        _admission: admission,
        registration,
        queue,
        cursor,
        shutdown: app.shutdown.clone(),
        expiry: expires.map(|at| Box::pin(tokio::time::sleep_until(at))),
        draining: None,
        queue_capacity: app.config.limits.queue_capacity,
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
    /// At shutdown: how many more queued pushes go out before the final
    /// event (at most a full queue's worth).
    draining: Option<usize>,
    /// `limits.queue_capacity`, the bound of that drain.
    queue_capacity: usize,
    /// The final event has been sent.
    ended: bool,
}

impl Live {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut live| async move {
            let event = live.next_event().await?;
            Some((Ok(event), live))
        })
    }

    /// The next event; `None` after the final one.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(left) = self.draining.as_mut() {
                // Shutting down: what was queued goes out before the goodbye.
                if let Some(push) = (*left > 0).then(|| self.queue.try_recv()).flatten() {
                    *left -= 1;
                    return Some(self.cursor.event(&push));
                }
                return Some(self.end(disconnect_code::GOING_AWAY, "server shutting down"));
            }
            let expired = async {
                match self.expiry.as_mut() {
                    Some(sleep) => sleep.await,
                    None => std::future::pending().await,
                }
            };
            let (code, reason) = tokio::select! {
                biased;
                cut_off = self.registration.cut_off() => {
                    let code = match cut_off {
                        CutOff::SlowConsumer => disconnect_code::SLOW_CONSUMER,
                        CutOff::Disconnected => disconnect_code::DISCONNECTED,
                    };
                    (code, cut_off.reason())
                }
                () = expired => (disconnect_code::TOKEN_EXPIRED, "token expired"),
                _ = self.shutdown.changed() => {
                    self.draining = Some(self.queue_capacity);
                    continue;
                }
                push = self.queue.recv() => {
                    return Some(self.cursor.event(&push));
                }
            };
            return Some(self.end(code, reason));
        }
    }

    /// The final `disconnect` event.
    fn end(&mut self, code: u16, reason: &str) -> Event {
        tracing::info!(
            connection = self.registration.id(),
            "sse stream ended: {reason}"
        );
        self.ended = true;
        Event::default()
            .event("disconnect")
            .data(protocol::disconnect_push(code, reason))
    }
}

/// The signed position of every channel of a stream, in channel-name order
/// (so that the order of `channel=` parameters does not matter), as sent in
/// `id:`.
struct Cursor {
    channels: Vec<ChannelName>,
    signed: Vec<Arc<str>>,
    signer: CursorSigner,
}

impl Cursor {
    /// The push as an SSE event; a message moves the cursor and carries it.
    fn event(&mut self, push: &Push) -> Event {
        let mut event = Event::default().event(push.kind).data(push.frame.as_str());
        if let Some(position) = &push.position {
            let signed = push
                .signed_position
                .get_or_init(|| Arc::from(self.signer.sign(&push.channel, position)));
            self.advance(&push.channel, signed.clone());
            event = event.id(self.encode());
        }
        event
    }

    fn advance(&mut self, channel: &ChannelName, signed: Arc<str>) {
        if let Ok(i) = self.channels.binary_search(channel) {
            self.signed[i] = signed;
        }
    }

    fn encode(&self) -> String {
        join_signed(&self.signed)
    }
}

/// `2.<part>.<part>…`: the version-2 cursor of signed positions.
fn join_signed<S: AsRef<str>>(signed: &[S]) -> String {
    let len = signed.iter().map(|s| s.as_ref().len() + 1).sum::<usize>();
    let mut cursor = String::with_capacity(CURSOR_V2_PREFIX.len() + len);
    cursor.push_str(CURSOR_V2_PREFIX);
    for (i, part) in signed.iter().enumerate() {
        if i > 0 {
            cursor.push('.');
        }
        cursor.push_str(part.as_ref());
    }
    cursor
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

/// Format version 1 (the first byte of the decoded cursor): one MAC over all
/// positions. Only read, so that cursors issued before an upgrade still resume.
const CURSOR_VERSION: u8 = 1;
/// Format version 2: `2.` and one signed position per channel, joined by `.`
/// (base64url never contains `.`, and a version-1 cursor starts with `A`).
const CURSOR_V2_PREFIX: &str = "2.";
/// Bytes of HMAC-SHA256 kept: 64 bits, checked online only, one guess per request.
const CURSOR_MAC_BYTES: usize = 8;
/// Domain separation: the API key also authenticates PHP, for other purposes.
const CURSOR_MAC_CONTEXT: &[u8] = b"stellwerk sse cursor v1\0";
/// Domain separation of version 2's per-channel MAC from version 1's.
const POSITION_MAC_CONTEXT: &[u8] = b"stellwerk sse position v2\0";
/// Label of the cursor key's derivation from the configured secret.
const CURSOR_KEY_LABEL: &[u8] = b"stellwerk sse cursor key\0";
const EPOCH_RAW: u8 = 0;
/// Lower-case hex of even length (the memory engine's epochs), packed as bytes.
const EPOCH_HEX: u8 = 1;

/// Encodes and checks cursors. A cursor (version 2) is `2.` followed by one
/// signed position per channel, joined by `.`: base64url (no padding) of
/// `epoch, offset, MAC`, where the MAC also covers the channel's name, so a
/// signed position only fits its channel and a cursor only fits its channel
/// set (joining the signed positions of two cursors gives nothing that either
/// did not already prove). The key is derived from `cursor_secret` or the API
/// key, which every node of an installation shares; never the secret itself,
/// so that the MAC key is not a credential that opens anything else.
#[derive(Clone)]
struct CursorSigner {
    /// Version 2: keyed, fed the position context.
    position_mac: Hmac<Sha256>,
    /// Version 1 (read only): keyed, fed the cursor context.
    mac: Hmac<Sha256>,
}

impl CursorSigner {
    fn new(secret: &str) -> CursorSigner {
        let mut derive =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        derive.update(CURSOR_KEY_LABEL);
        let key = derive.finalize().into_bytes();
        let keyed = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        let mut mac = keyed.clone();
        mac.update(CURSOR_MAC_CONTEXT);
        let mut position_mac = keyed;
        position_mac.update(POSITION_MAC_CONTEXT);
        CursorSigner { position_mac, mac }
    }

    /// A cursor for `positions`, in the order of `channels` (sorted).
    #[cfg(any(test, feature = "fuzzing"))]
    fn encode(&self, channels: &[ChannelName], positions: &[Position]) -> String {
        let signed: Vec<String> = channels
            .iter()
            .zip(positions)
            .map(|(channel, position)| self.sign(channel, position))
            .collect();
        join_signed(&signed)
    }

    /// One channel's signed position: base64url of `epoch, offset, MAC`.
    fn sign(&self, channel: &ChannelName, position: &Position) -> String {
        let mut bytes = Vec::with_capacity(16 + position.epoch.len() + CURSOR_MAC_BYTES);
        put_position(&mut bytes, position);
        let tag = self.position_mac(channel, &bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..CURSOR_MAC_BYTES]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The MAC of one channel's encoded position, to finalise or verify.
    fn position_mac(&self, channel: &ChannelName, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.position_mac.clone();
        // Channel names cannot contain NUL: the encoding is unambiguous.
        mac.update(channel.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }

    /// The positions, in the order of `channels` (sorted), if `cursor` was
    /// made by this installation for exactly these channels.
    fn decode(&self, cursor: &str, channels: &[ChannelName]) -> Result<Vec<Position>, CursorError> {
        if cursor.len() > MAX_CURSOR_CHARS_PER_CHANNEL * channels.len().max(1) {
            return Err(CursorError::Malformed);
        }
        match cursor.strip_prefix(CURSOR_V2_PREFIX) {
            Some(signed) => self.decode_v2(signed, channels),
            None => self.decode_v1(cursor, channels),
        }
    }

    fn decode_v2(
        &self,
        signed: &str,
        channels: &[ChannelName],
    ) -> Result<Vec<Position>, CursorError> {
        let parts: Vec<&str> = signed.split('.').collect();
        if parts.len() != channels.len() {
            return Err(CursorError::ChannelCount {
                got: parts.len(),
                want: channels.len(),
            });
        }
        parts
            .iter()
            .zip(channels)
            .map(|(part, channel)| {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(part)
                    .map_err(|_| CursorError::Malformed)?;
                if bytes.len() < 2 + CURSOR_MAC_BYTES {
                    return Err(CursorError::Malformed);
                }
                let (payload, tag) = bytes.split_at(bytes.len() - CURSOR_MAC_BYTES);
                let mut reader = Reader(payload);
                let position = reader.position()?;
                if !reader.0.is_empty() {
                    return Err(CursorError::Malformed);
                }
                self.position_mac(channel, payload)
                    .verify_truncated_left(tag)
                    .map_err(|_| CursorError::Signature)?;
                Ok(position)
            })
            .collect()
    }

    fn decode_v1(
        &self,
        cursor: &str,
        channels: &[ChannelName],
    ) -> Result<Vec<Position>, CursorError> {
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
            positions.push(reader.position()?);
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

    fn feed(mac: &mut Hmac<Sha256>, channels: &[ChannelName], payload: &[u8]) {
        // Channel names cannot contain NUL: the encoding is unambiguous.
        for channel in channels {
            mac.update(channel.as_str().as_bytes());
            mac.update(b"\0");
        }
        mac.update(payload);
    }
}

/// `epoch kind, epoch length, epoch, offset`: hex epochs (the memory
/// engine's) packed as bytes.
fn put_position(out: &mut Vec<u8>, position: &Position) {
    let epoch = &*position.epoch;
    if is_packable_hex(epoch) {
        out.push(EPOCH_HEX);
        put_varint(out, (epoch.len() / 2) as u64);
        out.extend(hex::decode(epoch).expect("checked to be hex"));
    } else {
        out.push(EPOCH_RAW);
        put_varint(out, epoch.len() as u64);
        out.extend_from_slice(epoch.as_bytes());
    }
    put_varint(out, position.offset);
}

fn is_packable_hex(epoch: &str) -> bool {
    !epoch.is_empty()
        && epoch.len().is_multiple_of(2)
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

    /// What [`put_position`] wrote.
    fn position(&mut self) -> Result<Position, CursorError> {
        let epoch = match self.byte()? {
            EPOCH_RAW => {
                let len = usize::try_from(self.varint()?).map_err(|_| CursorError::Malformed)?;
                std::str::from_utf8(self.take(len)?)
                    .map_err(|_| CursorError::Malformed)?
                    .to_string()
            }
            EPOCH_HEX => {
                let len = usize::try_from(self.varint()?).map_err(|_| CursorError::Malformed)?;
                hex::encode(self.take(len)?)
            }
            _ => return Err(CursorError::Malformed),
        };
        Ok(Position {
            epoch: Arc::from(epoch),
            offset: self.varint()?,
        })
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
    use std::sync::OnceLock;

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

    /// A cursor as version 1 made it (one MAC over all positions).
    fn encode_v1(
        signer: &CursorSigner,
        channels: &[ChannelName],
        positions: &[Position],
    ) -> String {
        let mut bytes = vec![CURSOR_VERSION];
        put_varint(&mut bytes, positions.len() as u64);
        for position in positions {
            put_position(&mut bytes, position);
        }
        let mut mac = signer.mac.clone();
        CursorSigner::feed(&mut mac, channels, &bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..CURSOR_MAC_BYTES]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
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
        assert!(cursor.len() < 40 * 3, "{} chars: {cursor}", cursor.len());
        assert!(cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        let decoded = signer.decode(&cursor, &chans).unwrap();
        assert_eq!(decoded, positions);
    }

    #[test]
    fn cursors_of_the_previous_format_still_resume() {
        let signer = CursorSigner::new("key");
        let chans = channels(&["public:a", "public:b"]);
        let positions = vec![position("0a0b", 1), position("xyz", 2)];
        let v1 = encode_v1(&signer, &chans, &positions);
        assert_eq!(signer.decode(&v1, &chans).unwrap(), positions);
        assert!(matches!(
            CursorSigner::new("other key").decode(&v1, &chans),
            Err(CursorError::Signature)
        ));
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
        // A position signed for one channel does not fit another.
        let swapped = signer.encode(&chans, &[positions[1].clone(), positions[0].clone()]);
        let (a, b) = swapped[CURSOR_V2_PREFIX.len()..].split_once('.').unwrap();
        let crossed = format!("{CURSOR_V2_PREFIX}{b}.{a}");
        assert!(matches!(
            signer.decode(&crossed, &chans),
            Err(CursorError::Signature)
        ));
    }

    #[test]
    fn the_mac_key_is_derived_not_the_secret_itself() {
        let chans = channels(&["public:a"]);
        let positions = vec![position("0a0b", 7)];
        // How cursors would be keyed with the API key itself.
        let mut raw = Hmac::<Sha256>::new_from_slice(b"the-api-key").unwrap();
        raw.update(POSITION_MAC_CONTEXT);
        let raw_cursor = CursorSigner {
            position_mac: raw.clone(),
            mac: raw,
        }
        .encode(&chans, &positions);
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
        let parts: Vec<&str> = cursor[CURSOR_V2_PREFIX.len()..].split('.').collect();
        assert_eq!(parts.len(), 2);
        for (p, part) in parts.iter().enumerate() {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap();
            for i in 0..bytes.len() {
                let mut changed = bytes.clone();
                changed[i] ^= 0x01;
                let mut changed_parts = parts.clone();
                let changed_part = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(changed);
                changed_parts[p] = &changed_part;
                let changed = join_signed(&changed_parts);
                assert!(
                    signer.decode(&changed, &chans).is_err(),
                    "part {p} byte {i}"
                );
            }
        }
        for garbage in [
            "",
            "!!!",
            "AAAA",
            "2.",
            "2..",
            "2.!!.!!",
            &cursor[..cursor.len() - 2],
            &"A".repeat(10_000),
            &format!("2.{}", "A".repeat(10_000)),
        ] {
            assert!(signer.decode(garbage, &chans).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn a_message_is_signed_once_for_every_stream_that_sends_it() {
        let signer = CursorSigner::new("key");
        let chans = channels(&["public:a"]);
        let start = position("0a0b", 1);
        let stream = || Cursor {
            channels: chans.clone(),
            signed: vec![Arc::from(signer.sign(&chans[0], &start))],
            signer: signer.clone(),
        };
        let (mut first, mut second) = (stream(), stream());
        let push = Push {
            channel: chans[0].clone(),
            kind: "message",
            position: Some(position("0a0b", 2)),
            frame: "{}".into(),
            signed_position: OnceLock::new(),
        };
        let _ = first.event(&push);
        let shared = push
            .signed_position
            .get()
            .expect("signed by the first stream")
            .clone();
        let _ = second.event(&push);
        assert!(Arc::ptr_eq(push.signed_position.get().unwrap(), &shared));
        assert_eq!(first.encode(), second.encode());
        assert_eq!(
            signer.decode(&second.encode(), &chans).unwrap(),
            vec![position("0a0b", 2)]
        );
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
