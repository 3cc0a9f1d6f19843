//! `GET /ws`: one task per connection reads commands, answers them and
//! drains the connection's push queue, flushing once per batch.
//!
//! Every write is raced against what ends a session (the hub's cut-off,
//! shutdown, the pong deadline) and bounded by
//! `websocket.write_timeout_seconds`, so a peer that stops reading at the
//! TCP level cannot keep the task, or its queue, alive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::api::ApiError;
use crate::auth::Identity;
use crate::engine::Position;
use crate::hub::{self, Admission, CutOff, Push, Queue, Refused, Registration};
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
    pub(super) const TOO_MANY_CONNECTIONS: u16 = 4009;
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
    // The caps, before the upgrade: a plain HTTP refusal any client can read.
    let admission = match app.hub.admit() {
        Ok(admission) => admission,
        Err(refused) => return refuse(refused),
    };
    if let Some(identity) = params
        .token
        .as_deref()
        .and_then(|token| app.verifier.verify(token).ok())
    {
        if let Err(refused) = app.hub.check_user(&identity.user) {
            return refuse(refused);
        }
    }
    let ws = &app.config.websocket;
    let max_frame = app.config.limits.max_frame_bytes;
    upgrade
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            let mut session = Session {
                socket,
                app,
                _admission: admission,
                batch: matches!(params.batch.as_deref(), Some("1" | "true")),
                replay: Vec::new(),
                expires: None,
                buckets: ConnectionBuckets::default(),
                unfed: None,
            };
            // Made outside the task's future and only borrowed by it: an
            // `async fn` taking the session by value, or a session built
            // inside the block, would keep a second copy of it in the task.
            async move { session.run(params.token).await }
        })
}

/// A refusal over a connection cap as an HTTP answer (503 or 429).
fn refuse(refused: Refused) -> Response {
    tracing::debug!("websocket refused: {}", refused.label());
    ApiError::from(refused.refusal()).into_response()
}

struct Session {
    socket: WebSocket,
    app: AppState,
    /// The place under `limits.max_connections`, freed with the session.
    _admission: Admission,
    batch: bool,
    /// Recovered messages to write right after the current reply, before
    /// anything from the queue (whose messages all have larger offsets).
    replay: Vec<Arc<Push>>,
    /// When the token in force runs out (`exp` plus the clock leeway);
    /// `None` for anonymous connections. Moved by `refresh`.
    expires: Option<Instant>,
    /// Rate limits of this connection (`[rate_limits]`), checked per command.
    buckets: ConnectionBuckets,
    /// A push frame whose write a stop interrupted before the socket took
    /// it (the push is already out of the queue); the drain at shutdown
    /// writes it first.
    unfed: Option<Message>,
}

/// What ends a session from outside its socket, whether or not a write is
/// in flight.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Cut(CutOff),
    Shutdown,
    Expired,
    NoPong,
}

/// Why a write did not complete.
#[derive(Debug)]
enum WriteError {
    Socket(axum::Error),
    /// A frame or the flush made no progress for `websocket.write_timeout_seconds`.
    Stalled,
}

/// The session's stops that may come during a write: the hub's cut-off,
/// shutdown and the pong deadline. Pinned once per session. (The token's
/// end is the loop's [`Timer`]: a write in flight then completes, or meets
/// its write timeout, first.)
struct Stops<'a, C, S> {
    cut_off: Pin<&'a mut C>,
    shutting_down: Pin<&'a mut S>,
    /// When the peer last sent anything (a pong, a command).
    last_heard: Instant,
    pong_timeout: Duration,
}

impl<C: Future<Output = CutOff>, S: Future> Stops<'_, C, S> {
    /// The first stop to happen. The pong deadline is left to the ping
    /// timer here, so that an idle turn of the loop arms no extra timer.
    async fn next(&mut self) -> Stop {
        tokio::select! {
            biased;
            reason = self.cut_off.as_mut() => Stop::Cut(reason),
            _ = self.shutting_down.as_mut() => Stop::Shutdown,
        }
    }

    /// Runs `write` unless a stop comes first; then the write is dropped
    /// where it stands (a frame tungstenite accepted stays whole in its
    /// buffer, ahead of the close frame). A write that completes at once
    /// arms no timer.
    async fn race<T>(&mut self, write: impl Future<Output = T>) -> Result<T, Stop> {
        let pong_deadline = self.last_heard + self.pong_timeout;
        tokio::select! {
            biased;
            done = write => Ok(done),
            stop = self.next() => Err(stop),
            // Made on first poll: a write that is ready at once costs no timer.
            () = async { tokio::time::sleep_until(pong_deadline).await } => Err(Stop::NoPong),
        }
    }
}

/// One timer for the next ping and the token's end, whichever is due
/// first: a second timer would cost every connection's task 112 bytes more.
struct Timer {
    ticks: Interval,
    ping_every: Duration,
    /// When the token in force runs out; `None` for anonymous connections.
    expires: Option<Instant>,
}

/// What the [`Timer`] says is due.
enum Due {
    Ping,
    Expired,
}

impl Timer {
    fn new(ping_every: Duration, expires: Option<Instant>) -> Self {
        let mut ticks = tokio::time::interval(ping_every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut timer = Timer {
            ticks,
            ping_every,
            expires,
        };
        timer.arm();
        timer
    }

    /// The next ping or the token's end. Cancel-safe.
    async fn due(&mut self) -> Due {
        self.ticks.tick().await;
        if self.expires.is_some_and(|at| Instant::now() >= at) {
            return Due::Expired;
        }
        self.arm();
        Due::Ping
    }

    /// Follows a `refresh`, which moves the token's end.
    fn set_expiry(&mut self, expires: Option<Instant>) {
        if expires != self.expires {
            self.expires = expires;
            self.arm();
        }
    }

    /// Due next: one ping interval from now, or the token's end if sooner.
    fn arm(&mut self) {
        let ping = Instant::now() + self.ping_every;
        self.ticks
            .reset_at(self.expires.map_or(ping, |end| end.min(ping)));
    }
}

/// How the connection ended up authenticated.
enum Authenticated {
    /// Through `?token=` or anonymously: `connect` has not been answered yet.
    Implicitly(Option<Identity>),
    /// Through the `connect` command with this `id`, still to be answered.
    ByConnect(u64, Identity),
}

impl Session {
    /// The whole life of one WebSocket; its future is the connection's task.
    ///
    /// Every future awaited after a branch of the loop's `select!` is boxed:
    /// a coroutine is as large as its largest state, and inline the handshake,
    /// a command or a stop would make every idle connection's task several
    /// KiB. Boxed, an idle task is the session plus what the loop waits on
    /// (about 1.5 KiB; `-Zprint-type-sizes` shows the states), for one
    /// short-lived allocation per command or write (docs/performance.md).
    async fn run(&mut self, url_token: Option<String>) {
        let Some((registration, mut queue, connect_id)) = Box::pin(self.establish(url_token)).await
        else {
            return;
        };
        let ws = &self.app.config.websocket;
        let pong_timeout = Duration::from_secs(ws.pong_timeout_seconds);
        let mut timer = Timer::new(
            Duration::from_secs(ws.ping_interval_seconds.max(1)),
            self.expires,
        );
        let mut shutdown = self.app.shutdown.clone();
        // Pinned once: re-creating these per loop turn would register and
        // unregister a waiter (a mutex round trip) for every push written.
        let cut_off = registration.cut_off();
        let shutting_down = shutdown.changed();
        tokio::pin!(cut_off, shutting_down);
        let mut stops = Stops {
            cut_off,
            shutting_down,
            last_heard: Instant::now(),
            pong_timeout,
        };
        let mut connect_answered = connect_id.is_some();
        if let Some(id) = connect_id {
            // The `connected` reply waits for the client id, given at registration.
            let reply = self.connected_reply(id, &registration);
            let sent = Box::pin(stops.race(self.send_text(reply))).await;
            if !self.carry_on(sent, &registration, &mut queue).await {
                return;
            }
        }
        loop {
            // Every write below is raced against the stops, so that a peer
            // that stopped reading cannot hold the session in a write.
            let sent = tokio::select! {
                biased;
                stop = stops.next() => {
                    Box::pin(self.stop(stop, &registration, &mut queue)).await;
                    return;
                }
                due = timer.due() => {
                    if matches!(due, Due::Expired) {
                        Box::pin(self.stop(Stop::Expired, &registration, &mut queue)).await;
                        return;
                    }
                    if stops.last_heard.elapsed() > pong_timeout {
                        Box::pin(self.stop(Stop::NoPong, &registration, &mut queue)).await;
                        return;
                    }
                    Box::pin(stops.race(self.send(Message::Ping(Default::default())))).await
                }
                frame = self.socket.recv() => {
                    let frame = match frame {
                        None => return,
                        Some(Ok(frame)) => frame,
                        Some(Err(error)) => {
                            Box::pin(self.read_failed(&error)).await;
                            return;
                        }
                    };
                    stops.last_heard = Instant::now();
                    if matches!(frame, Message::Text(_) | Message::Binary(_)) {
                        // What was queued before a command goes out before its
                        // reply, so a client's `ping` is a barrier: every push
                        // caused by something answered earlier arrives first.
                        let sent = Box::pin(stops.race(self.write_queued(&mut queue))).await;
                        if !self.carry_on(sent, &registration, &mut queue).await {
                            return;
                        }
                    }
                    let reply = match frame {
                        Message::Text(text) => match Command::parse(&text) {
                            Ok(command) => {
                                Box::pin(self.handle(command, &registration, &mut connect_answered)).await
                            }
                            Err(e) => protocol::error_reply(e.id, &e.refusal),
                        },
                        Message::Binary(_) => protocol::error_reply(
                            None,
                            &Refusal::bad_request("binary frames are not supported; send JSON text frames"),
                        ),
                        Message::Ping(_) | Message::Pong(_) => continue,
                        Message::Close(_) => return,
                    };
                    timer.set_expiry(self.expires);
                    Box::pin(stops.race(self.send_reply(reply))).await
                }
                push = queue.recv() => {
                    Box::pin(stops.race(self.write_pushes(push, &mut queue))).await
                }
            };
            if !self.carry_on(sent, &registration, &mut queue).await {
                return;
            }
        }
    }

    /// Whether the session goes on after a raced write; if not, the peer
    /// has been told what it can still be told.
    async fn carry_on(
        &mut self,
        sent: Result<Result<(), WriteError>, Stop>,
        registration: &Registration,
        queue: &mut Queue,
    ) -> bool {
        match sent {
            Ok(Ok(())) => true,
            Ok(Err(WriteError::Socket(error))) if !is_timed_out(&error) => {
                tracing::debug!(
                    connection = registration.id(),
                    "websocket write failed: {error}"
                );
                false
            }
            // The socket's own write deadline (`listener::WriteDeadline`, the
            // same setting) may fire first: the same story for the log.
            Ok(Err(WriteError::Socket(_) | WriteError::Stalled)) => {
                // Nothing more can be written: no close handshake, just drop.
                tracing::info!(
                    connection = registration.id(),
                    "write made no progress for {}s: connection dropped",
                    self.app.config.websocket.write_timeout_seconds
                );
                false
            }
            Err(stop) => {
                Box::pin(self.stop(stop, registration, queue)).await;
                false
            }
        }
    }

    /// Authenticates and registers with the hub: the registration, its
    /// queue and the id of a `connect` still to be answered. `None` when
    /// the client was refused (and told).
    async fn establish(
        &mut self,
        url_token: Option<String>,
    ) -> Option<(Registration, Queue, Option<u64>)> {
        let (connect_id, identity) = match self.authenticate(url_token).await? {
            Authenticated::Implicitly(identity) => (None, identity),
            Authenticated::ByConnect(id, identity) => (Some(id), Some(identity)),
        };
        self.expires = identity
            .as_ref()
            .and_then(|i| super::token_deadline(i, self.app.config.jwt.leeway_seconds));
        match self.app.hub.register(identity) {
            Ok((registration, queue)) => Some((registration, queue, connect_id)),
            Err(refused) => {
                self.refuse_registration(connect_id, refused).await;
                None
            }
        }
    }

    /// Over the per-user cap, found only at registration (token in `connect`,
    /// or a race with another connection of the user).
    async fn refuse_registration(&mut self, connect_id: Option<u64>, refused: Refused) {
        let refusal = refused.refusal();
        if self
            .send_text(protocol::error_reply(connect_id, &refusal))
            .await
            .is_ok()
        {
            self.close(close_code::TOO_MANY_CONNECTIONS, &refusal.message)
                .await;
        }
    }

    /// Ends the session for `stop`: the `disconnect` push and the close
    /// frame within [`CLOSE_GRACE`]. At shutdown the pushes already queued
    /// go first (messages PHP was told were accepted), within the shutdown
    /// bound; after any other stop nothing more is written.
    async fn stop(&mut self, stop: Stop, registration: &Registration, queue: &mut Queue) {
        let (code, reason) = match stop {
            Stop::Cut(CutOff::SlowConsumer) => {
                (close_code::SLOW_CONSUMER, CutOff::SlowConsumer.reason())
            }
            Stop::Cut(CutOff::Disconnected) => {
                (close_code::DISCONNECTED, CutOff::Disconnected.reason())
            }
            Stop::Shutdown => (close_code::GOING_AWAY, "server shutting down"),
            Stop::Expired => (close_code::TOKEN_EXPIRED, "token expired"),
            Stop::NoPong => (close_code::NO_PONG, "no pong: peer stopped answering"),
        };
        if matches!(stop, Stop::Shutdown) {
            let budget = Duration::from_secs(self.app.config.shutdown_timeout_seconds)
                .saturating_sub(2 * CLOSE_GRACE);
            if tokio::time::timeout(budget, self.write_queued(queue))
                .await
                .is_err()
            {
                tracing::info!(
                    connection = registration.id(),
                    "shutdown: queued pushes not written within {budget:?}"
                );
            }
        } else {
            tracing::info!(connection = registration.id(), "closing: {reason}");
        }
        self.close(code, reason).await;
    }

    /// Writes what is queued now: at most a full queue's worth, so that a
    /// steady stream of new pushes cannot hold the session here.
    async fn write_queued(&mut self, queue: &mut Queue) -> Result<(), WriteError> {
        if let Some(unfed) = self.unfed.take() {
            self.send(unfed).await?;
        }
        let rounds = self
            .app
            .config
            .limits
            .queue_capacity
            .div_ceil(MAX_PUSHES_PER_FLUSH);
        for _ in 0..rounds {
            let Some(push) = queue.try_recv() else { break };
            self.write_pushes(push, queue).await?;
        }
        Ok(())
    }

    /// Waits for a valid token (URL or `connect`) or anonymous access,
    /// within one deadline for the whole phase, reads and writes alike, so
    /// that a client that sends commands and never reads cannot outstay it.
    /// On refusal the client has been told and the socket closed.
    async fn authenticate(&mut self, url_token: Option<String>) -> Option<Authenticated> {
        let limit = Duration::from_secs(self.app.config.websocket.connect_timeout_seconds);
        match tokio::time::timeout(limit, self.await_connect(url_token)).await {
            Ok(authenticated) => authenticated,
            Err(_elapsed) => {
                self.close(close_code::UNAUTHORIZED, "no connect within the time limit")
                    .await;
                None
            }
        }
    }

    async fn await_connect(&mut self, url_token: Option<String>) -> Option<Authenticated> {
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
        loop {
            let frame = match self.socket.recv().await {
                None => return None,
                Some(Err(error)) => {
                    self.read_failed(&error).await;
                    return None;
                }
                Some(Ok(frame)) => frame,
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
            CommandKind::Presence { channel } => self.presence(id, &channel, registration).await,
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

    async fn presence(
        &mut self,
        id: u64,
        channel: &str,
        registration: &Registration,
    ) -> Result<String, Refusal> {
        let channel = hub::parse_channel(channel)?;
        let members = self.app.hub.presence_for(registration, &channel).await?;
        Ok(json!({
            "id": id,
            "type": "presence",
            "channel": channel.as_str(),
            "members": members,
        })
        .to_string())
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
        queue: &mut Queue,
    ) -> Result<(), WriteError> {
        if self.batch {
            let Some(second) = queue.try_recv() else {
                // Nothing else queued: send the shared frame, no copy.
                return self.send(Message::Text(first.frame.clone())).await;
            };
            let mut frame = String::with_capacity(first.frame.len() + 1 + second.frame.len());
            frame.push_str(first.frame.as_str());
            frame.push('\n');
            frame.push_str(second.frame.as_str());
            let mut drained = 2;
            while drained < MAX_PUSHES_PER_FLUSH {
                let Some(next) = queue.try_recv() else { break };
                drained += 1;
                if frame.len() + 1 + next.frame.len() > MAX_BATCH_FRAME_BYTES {
                    self.feed_push(Message::Text(Utf8Bytes::from(std::mem::take(&mut frame))))
                        .await?;
                } else {
                    frame.push('\n');
                }
                frame.push_str(next.frame.as_str());
            }
            self.feed_push(Message::Text(Utf8Bytes::from(frame)))
                .await?;
        } else {
            self.feed_push(Message::Text(first.frame.clone())).await?;
            for _ in 1..MAX_PUSHES_PER_FLUSH {
                let Some(next) = queue.try_recv() else { break };
                self.feed_push(Message::Text(next.frame.clone())).await?;
            }
        }
        self.flush().await
    }

    /// Sends a command's reply, then the messages a recovering `subscribe`
    /// found, in order, in one flush.
    async fn send_reply(&mut self, reply: String) -> Result<(), WriteError> {
        if self.replay.is_empty() {
            return self.send_text(reply).await;
        }
        self.feed(Message::Text(Utf8Bytes::from(reply))).await?;
        for push in std::mem::take(&mut self.replay) {
            self.feed(Message::Text(push.frame.clone())).await?;
        }
        self.flush().await
    }

    async fn send_text(&mut self, text: String) -> Result<(), WriteError> {
        self.send(Message::Text(Utf8Bytes::from(text))).await
    }

    async fn send(&mut self, message: Message) -> Result<(), WriteError> {
        self.feed(message).await?;
        self.flush().await
    }

    /// [`Self::feed`] for a push: until the socket has taken the frame it is
    /// kept in `unfed`, so that the drain at shutdown can still write it.
    async fn feed_push(&mut self, message: Message) -> Result<(), WriteError> {
        self.unfed = Some(message.clone());
        self.feed(message).await?;
        self.unfed = None;
        Ok(())
    }

    /// Hands one frame to the socket. Each frame (and each flush) must make
    /// progress within `websocket.write_timeout_seconds`: that bounds a
    /// write to a peer that stopped reading even when nothing else ends it.
    async fn feed(&mut self, message: Message) -> Result<(), WriteError> {
        let limit = self.write_timeout();
        match tokio::time::timeout(limit, self.socket.feed(message)).await {
            Ok(written) => written.map_err(WriteError::Socket),
            Err(_elapsed) => Err(WriteError::Stalled),
        }
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        let limit = self.write_timeout();
        match tokio::time::timeout(limit, self.socket.flush()).await {
            Ok(flushed) => flushed.map_err(WriteError::Socket),
            Err(_elapsed) => Err(WriteError::Stalled),
        }
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.app.config.websocket.write_timeout_seconds)
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

/// Whether a socket error is the write deadline running out.
fn is_timed_out(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        if let Some(tokio_tungstenite::tungstenite::Error::Io(io)) =
            error.downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = error.source();
    }
    false
}
