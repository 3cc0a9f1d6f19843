//! `GET /ws`: one task per connection reads commands, answers them and
//! drains the connection's push queue, flushing once per batch.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::auth::Identity;
use crate::engine::Position;
use crate::hub::{self, CutOff, Push, Registration};
use crate::plugins::PublishSource;
use crate::protocol::{self, Command, CommandKind, ErrorCode, Recover, Refusal};
use crate::rate::ConnectionBuckets;
use crate::server::AppState;

/// Close codes of wire contract v1 (docs/protocol.md).
mod close_code {
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const TOO_BIG: u16 = 1009;
    pub(super) const UNAUTHORIZED: u16 = 4001;
    pub(super) const DISCONNECTED: u16 = 4003;
    pub(super) const NO_PONG: u16 = 4002;
    pub(super) const TOKEN_EXPIRED: u16 = 4004;
    pub(super) const SLOW_CONSUMER: u16 = 4008;
}

/// Most pushes drained from the queue into one flush.
const MAX_PUSHES_PER_FLUSH: usize = 256;
/// Largest batched frame (several `\n`-separated pushes) we build.
const MAX_BATCH_FRAME_BYTES: usize = 64 * 1024;
/// How long a close handshake may take before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
pub(crate) struct WsParams {
    token: Option<String>,
    batch: Option<String>,
}

pub(crate) async fn upgrade(
    upgrade: WebSocketUpgrade,
    State(app): State<AppState>,
    Query(params): Query<WsParams>,
) -> Response {
    let ws = &app.config.websocket;
    let max_frame = app.config.limits.max_frame_bytes;
    upgrade
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| async move {
            let mut session = Session {
                socket,
                app,
                batch: matches!(params.batch.as_deref(), Some("1" | "true")),
                replay: Vec::new(),
                expires: None,
                buckets: ConnectionBuckets::default(),
            };
            session.run(params.token).await;
        })
}

struct Session {
    socket: WebSocket,
    app: AppState,
    batch: bool,
    /// Recovered messages to write right after the current reply, before
    /// anything from the queue (whose messages all have larger offsets).
    replay: Vec<Arc<Push>>,
    /// When the token in force runs out (`exp` plus the clock leeway);
    /// `None` for anonymous connections. Moved by `refresh`.
    expires: Option<Instant>,
    /// Rate limits of this connection (`[rate_limits]`), checked per command.
    buckets: ConnectionBuckets,
}

/// How the connection ended up authenticated.
enum Authenticated {
    /// Through `?token=` or anonymously: `connect` has not been answered yet.
    Implicitly(Option<Identity>),
    /// Through the `connect` command with this `id`, still to be answered.
    ByConnect(u64, Identity),
}

impl Session {
    async fn run(&mut self, url_token: Option<String>) {
        let Some(authenticated) = self.authenticate(url_token).await else {
            return;
        };
        let (connect_id, identity) = match authenticated {
            Authenticated::Implicitly(identity) => (None, identity),
            Authenticated::ByConnect(id, identity) => (Some(id), Some(identity)),
        };
        self.expires = identity
            .as_ref()
            .and_then(|i| super::token_deadline(i, self.app.config.jwt.leeway_seconds));
        let (registration, mut queue) = self.app.hub.register(identity);
        let mut connect_answered = connect_id.is_some();
        if let Some(id) = connect_id {
            // The `connected` reply waits for the client id, given at registration.
            let reply = self.connected_reply(id, &registration);
            if self.send_text(reply).await.is_err() {
                return;
            }
        }
        let ws = &self.app.config.websocket;
        let pong_timeout = Duration::from_secs(ws.pong_timeout_seconds);
        let mut ping = tokio::time::interval(Duration::from_secs(ws.ping_interval_seconds.max(1)));
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let mut last_heard = Instant::now();
        let mut shutdown = self.app.shutdown.clone();
        // Pinned once: re-creating these per loop turn would register and
        // unregister a waiter (a mutex round trip) for every push written.
        let cut_off = registration.cut_off();
        let shutting_down = shutdown.changed();
        // Armed while `armed` is `Some`; a `refresh` resets it in place.
        let mut armed = self.expires;
        let expiry = tokio::time::sleep_until(armed.unwrap_or_else(Instant::now));
        tokio::pin!(cut_off, shutting_down, expiry);
        loop {
            tokio::select! {
                biased;
                reason = &mut cut_off => {
                    let code = match reason {
                        CutOff::SlowConsumer => close_code::SLOW_CONSUMER,
                        CutOff::Disconnected => close_code::DISCONNECTED,
                    };
                    tracing::info!(connection = registration.id(), "cut off: {}", reason.reason());
                    self.close(code, reason.reason()).await;
                    return;
                }
                _ = &mut shutting_down => {
                    self.close(close_code::GOING_AWAY, "server shutting down").await;
                    return;
                }
                () = &mut expiry, if armed.is_some() => {
                    tracing::info!(connection = registration.id(), "token expired");
                    self.close(close_code::TOKEN_EXPIRED, "token expired").await;
                    return;
                }
                push = queue.recv() => {
                    let Some(push) = push else { return };
                    if self.write_pushes(push, &mut queue).await.is_err() {
                        return;
                    }
                }
                frame = self.socket.recv() => {
                    let frame = match frame {
                        None => return,
                        Some(Ok(frame)) => frame,
                        Some(Err(error)) => {
                            self.read_failed(&error).await;
                            return;
                        }
                    };
                    last_heard = Instant::now();
                    let reply = match frame {
                        Message::Text(text) => match Command::parse(&text) {
                            Ok(command) => self.handle(command, &registration, &mut connect_answered).await,
                            Err(e) => protocol::error_reply(e.id, &e.refusal),
                        },
                        Message::Binary(_) => protocol::error_reply(
                            None,
                            &Refusal::bad_request("binary frames are not supported; send JSON text frames"),
                        ),
                        Message::Ping(_) | Message::Pong(_) => continue,
                        Message::Close(_) => return,
                    };
                    if self.expires != armed {
                        armed = self.expires;
                        if let Some(at) = armed {
                            expiry.as_mut().reset(at);
                        }
                    }
                    if self.send_reply(reply).await.is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > pong_timeout {
                        self.close(close_code::NO_PONG, "no pong: peer stopped answering").await;
                        return;
                    }
                    if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Waits for a valid token (URL or `connect`) or anonymous access. On
    /// refusal the client has been told and the socket closed.
    async fn authenticate(&mut self, url_token: Option<String>) -> Option<Authenticated> {
        if let Some(token) = url_token {
            return match self.app.verifier.verify(&token) {
                Ok(identity) => Some(Authenticated::Implicitly(Some(identity))),
                Err(e) => {
                    self.refuse_token(None, &e.to_string()).await;
                    None
                }
            };
        }
        if self.app.config.allow_anonymous {
            return Some(Authenticated::Implicitly(None));
        }
        let deadline =
            Instant::now() + Duration::from_secs(self.app.config.websocket.connect_timeout_seconds);
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.socket.recv()).await {
                Err(_elapsed) => {
                    self.close(close_code::UNAUTHORIZED, "no connect within the time limit")
                        .await;
                    return None;
                }
                Ok(None) => return None,
                Ok(Some(Err(error))) => {
                    self.read_failed(&error).await;
                    return None;
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let text = match frame {
                Message::Text(text) => text,
                Message::Binary(_) => {
                    let reply = protocol::error_reply(
                        None,
                        &Refusal::bad_request("binary frames are not supported"),
                    );
                    self.send_text(reply).await.ok()?;
                    continue;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => return None,
            };
            let reply = match Command::parse(&text) {
                Ok(Command {
                    id,
                    kind: CommandKind::Connect { token, batch },
                }) => {
                    let Some(token) = token else {
                        self.refuse_token(Some(id), "a token is required").await;
                        return None;
                    };
                    match self.app.verifier.verify(&token) {
                        Ok(identity) => {
                            self.batch |= batch;
                            return Some(Authenticated::ByConnect(id, identity));
                        }
                        Err(e) => {
                            self.refuse_token(Some(id), &e.to_string()).await;
                            return None;
                        }
                    }
                }
                Ok(command) => protocol::error_reply(
                    Some(command.id),
                    &Refusal::new(ErrorCode::Unauthorized, "send `connect` with a token first"),
                ),
                Err(e) => protocol::error_reply(e.id, &e.refusal),
            };
            self.send_text(reply).await.ok()?;
        }
    }

    async fn handle(
        &mut self,
        command: Command,
        registration: &Registration,
        connect_answered: &mut bool,
    ) -> String {
        let id = command.id;
        // Refused over a rate limit: nothing of the command happens.
        let admitted = self
            .buckets
            .admit(&self.app.rate, &command.kind, std::time::Instant::now());
        if let Err(refused) = admitted {
            return protocol::error_reply(Some(id), &refused.into());
        }
        let result = match command.kind {
            CommandKind::Connect { batch, .. } => {
                if *connect_answered {
                    Err(Refusal::bad_request("already connected"))
                } else {
                    *connect_answered = true;
                    self.batch |= batch;
                    return self.connected_reply(id, registration);
                }
            }
            CommandKind::Subscribe { channel, recover } => {
                self.subscribe(id, &channel, recover, registration).await
            }
            CommandKind::History {
                channel,
                limit,
                since,
            } => self.history(id, &channel, limit, since, registration).await,
            CommandKind::Unsubscribe { channel } => hub::parse_channel(&channel).map(|channel| {
                self.app.hub.unsubscribe(registration, &channel);
                json!({"id": id, "type": "unsubscribed", "channel": channel.as_str()}).to_string()
            }),
            CommandKind::Publish { channel, data } => {
                self.publish(id, &channel, data.get(), registration).await
            }
            CommandKind::Presence { channel } => hub::parse_channel(&channel).and_then(|channel| {
                let members = self.app.hub.presence_for(registration, &channel)?;
                Ok(json!({
                    "id": id,
                    "type": "presence",
                    "channel": channel.as_str(),
                    "members": members,
                })
                .to_string())
            }),
            CommandKind::Refresh { token } => self.refresh(id, &token, registration),
            CommandKind::Ping => Ok(json!({"id": id, "type": "pong"}).to_string()),
        };
        result.unwrap_or_else(|refusal| protocol::error_reply(Some(id), &refusal))
    }

    async fn subscribe(
        &mut self,
        id: u64,
        channel: &str,
        recover: Option<Recover>,
        registration: &Registration,
    ) -> Result<String, Refusal> {
        let channel = hub::parse_channel(channel)?;
        let from = recover.map(|r| Position {
            epoch: Arc::from(r.epoch),
            offset: r.offset,
        });
        let subscribed = self
            .app
            .hub
            .subscribe_recovering(registration, &channel, from.as_ref())
            .await?;
        let position = &subscribed.position;
        let mut reply = json!({
            "id": id,
            "type": "subscribed",
            "channel": channel.as_str(),
            "epoch": &*position.epoch,
            "offset": position.offset,
        });
        if from.is_some() {
            reply["recovered"] = json!(subscribed.missed.is_some());
        }
        self.replay = subscribed.missed.unwrap_or_default();
        Ok(reply.to_string())
    }

    async fn history(
        &mut self,
        id: u64,
        channel: &str,
        limit: Option<u64>,
        since: Option<u64>,
        registration: &Registration,
    ) -> Result<String, Refusal> {
        let channel = hub::parse_channel(channel)?;
        let history = self
            .app
            .hub
            .history_for(registration, &channel, limit, since)
            .await?;
        Ok(format!(
            r#"{{"id":{id},"type":"history",{}}}"#,
            protocol::history_fields(channel.as_str(), &history.epoch, &history.messages)
        ))
    }

    async fn publish(
        &mut self,
        id: u64,
        channel: &str,
        data: &str,
        registration: &Registration,
    ) -> Result<String, Refusal> {
        let max = self.app.config.limits.max_publish_bytes;
        if data.len() > max {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("`data` is {} bytes; the limit is {max}", data.len()),
            ));
        }
        let channel = hub::parse_channel(channel)?;
        let positions = self
            .app
            .hub
            .publish(
                std::slice::from_ref(&channel),
                data,
                PublishSource::Client,
                registration.identity().as_deref(),
            )
            .await?;
        let position = &positions[0];
        Ok(json!({
            "id": id,
            "type": "published",
            "channel": channel.as_str(),
            "epoch": &*position.epoch,
            "offset": position.offset,
        })
        .to_string())
    }

    /// Puts a new token of the same user in force: later subscribes,
    /// publishes, presence and history use its claims, and the connection
    /// now lives until its `exp`. A refused token changes nothing.
    fn refresh(
        &mut self,
        id: u64,
        token: &str,
        registration: &Registration,
    ) -> Result<String, Refusal> {
        let Some(current) = registration.identity() else {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "an anonymous connection has no token to refresh; reconnect with the token",
            ));
        };
        let identity =
            self.app.verifier.verify(token).map_err(|e| {
                Refusal::new(ErrorCode::Unauthorized, format!("invalid token: {e}"))
            })?;
        if identity.user != current.user {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "the new token is for another user; a connection keeps its user",
            ));
        }
        let expires_at = identity.expires_at;
        self.expires = super::token_deadline(&identity, self.app.config.jwt.leeway_seconds);
        registration.set_identity(identity);
        // Claims may have changed (a course dropped): subscriptions the new
        // token no longer allows end with an `unsubscribed` push.
        let outcome = self.app.hub.reauthorize_connection(registration);
        if outcome.revoked > 0 {
            tracing::info!(
                connection = registration.id(),
                revoked = outcome.revoked,
                "refresh ended subscriptions"
            );
        }
        Ok(json!({"id": id, "type": "refreshed", "expires_at": expires_at}).to_string())
    }

    fn connected_reply(&self, id: u64, registration: &Registration) -> String {
        let identity = registration.identity();
        let user = identity.as_ref().map_or("", |i| i.user.as_str());
        let mut reply = json!({
            "id": id,
            "type": "connected",
            "client": self.app.client_id(registration.id()),
            "user": user,
        });
        if let Some(identity) = &identity {
            reply["expires_at"] = json!(identity.expires_at);
        }
        reply.to_string()
    }

    /// Writes `first` and whatever else is queued, then flushes once.
    async fn write_pushes(
        &mut self,
        first: Arc<Push>,
        queue: &mut mpsc::Receiver<Arc<Push>>,
    ) -> Result<(), axum::Error> {
        if self.batch {
            let Ok(second) = queue.try_recv() else {
                // Nothing else queued: send the shared frame, no copy.
                self.socket.feed(Message::Text(first.frame.clone())).await?;
                return self.socket.flush().await;
            };
            let mut frame = String::with_capacity(first.frame.len() + 1 + second.frame.len());
            frame.push_str(first.frame.as_str());
            frame.push('\n');
            frame.push_str(second.frame.as_str());
            let mut drained = 2;
            while drained < MAX_PUSHES_PER_FLUSH {
                let Ok(next) = queue.try_recv() else { break };
                drained += 1;
                if frame.len() + 1 + next.frame.len() > MAX_BATCH_FRAME_BYTES {
                    self.socket
                        .feed(Message::Text(Utf8Bytes::from(std::mem::take(&mut frame))))
                        .await?;
                } else {
                    frame.push('\n');
                }
                frame.push_str(next.frame.as_str());
            }
            self.socket
                .feed(Message::Text(Utf8Bytes::from(frame)))
                .await?;
        } else {
            self.socket.feed(Message::Text(first.frame.clone())).await?;
            for _ in 1..MAX_PUSHES_PER_FLUSH {
                let Ok(next) = queue.try_recv() else { break };
                self.socket.feed(Message::Text(next.frame.clone())).await?;
            }
        }
        self.socket.flush().await
    }

    /// Sends a command's reply, then the messages a recovering `subscribe`
    /// found, in order, in one flush.
    async fn send_reply(&mut self, reply: String) -> Result<(), axum::Error> {
        if self.replay.is_empty() {
            return self.send_text(reply).await;
        }
        self.socket
            .feed(Message::Text(Utf8Bytes::from(reply)))
            .await?;
        for push in std::mem::take(&mut self.replay) {
            self.socket.feed(Message::Text(push.frame.clone())).await?;
        }
        self.socket.flush().await
    }

    async fn send_text(&mut self, text: String) -> Result<(), axum::Error> {
        self.socket.send(Message::Text(Utf8Bytes::from(text))).await
    }

    async fn refuse_token(&mut self, id: Option<u64>, why: &str) {
        let refusal = Refusal::new(ErrorCode::Unauthorized, format!("invalid token: {why}"));
        if self
            .send_text(protocol::error_reply(id, &refusal))
            .await
            .is_ok()
        {
            self.close(close_code::UNAUTHORIZED, &refusal.message).await;
        }
    }

    /// A read error: oversized frames get 1009, anything else just ends.
    async fn read_failed(&mut self, error: &axum::Error) {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let too_big = std::error::Error::source(error)
            .and_then(|e| e.downcast_ref::<WsError>())
            .is_some_and(|e| matches!(e, WsError::Capacity(_)));
        if too_big {
            let max = self.app.config.limits.max_frame_bytes;
            self.close(
                close_code::TOO_BIG,
                &format!("frame larger than {max} bytes"),
            )
            .await;
        } else {
            tracing::debug!("websocket read failed: {error}");
        }
    }

    /// Sends a `disconnect` push and a close frame, bounded by [`CLOSE_GRACE`]
    /// so that a peer that stopped reading cannot hold the task.
    async fn close(&mut self, code: u16, reason: &str) {
        let socket = &mut self.socket;
        let push = protocol::disconnect_push(code, reason);
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate_reason(reason)),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async move {
            socket.feed(Message::Text(Utf8Bytes::from(push))).await?;
            socket.send(Message::Close(Some(frame))).await
        })
        .await;
    }
}

/// Close reasons are limited to 123 bytes by RFC 6455.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
