//! The two brokers behind one face: start one, open subscribers, publish, read deliveries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::nats;
use crate::payload;
use crate::servers::{self, Server, ServerSetup};
use crate::sse::{self, SseStream};
use crate::stellwerk;
use crate::wsclient::Ws;

/// Which broker a run measures, and for Stellwerk over which transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) enum Broker {
    /// Stellwerk, subscribers on WebSockets.
    #[serde(rename = "stellwerk")]
    Stellwerk,
    /// Stellwerk, subscribers on Server-Sent Events (one stream per subscriber).
    #[serde(rename = "stellwerk-sse")]
    StellwerkSse,
    #[serde(rename = "nats")]
    Nats,
}

impl Broker {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Broker::Stellwerk => "stellwerk",
            Broker::StellwerkSse => "stellwerk-sse",
            Broker::Nats => "nats",
        }
    }

    /// Starts a fresh server. `queue_capacity` is Stellwerk's per-connection queue length.
    pub(crate) async fn start(
        self,
        setup: &ServerSetup,
        label: &str,
        queue_capacity: usize,
    ) -> Result<Server> {
        self.start_with(setup, label, queue_capacity, &[]).await
    }

    /// [`Self::start`] with more environment for Stellwerk (its engine, for example).
    pub(crate) async fn start_with(
        self,
        setup: &ServerSetup,
        label: &str,
        queue_capacity: usize,
        env: &[(String, String)],
    ) -> Result<Server> {
        match self {
            Broker::Stellwerk | Broker::StellwerkSse => {
                servers::start_stellwerk(setup, label, queue_capacity, env).await
            }
            Broker::Nats => servers::start_nats(setup, label).await,
        }
    }

    /// Opens subscriber number `index` (each has its own user id: per-user connection limits
    /// must not get in the way) and waits until its subscription is live. `claims` only
    /// matter to Stellwerk (NATS has no tokens here).
    pub(crate) async fn subscribe(
        self,
        addr: SocketAddr,
        index: usize,
        sub: &SubscribeAs<'_>,
    ) -> Result<Connection> {
        let SubscribeAs {
            channel,
            batch,
            read_buffer,
            claims,
        } = *sub;
        let token = || {
            stellwerk::token(
                servers::JWT_SECRET,
                &format!("bench-user-{index}"),
                claims.for_subscriber(index).as_ref(),
            )
        };
        match self {
            Broker::Stellwerk => {
                let ws =
                    stellwerk::subscriber(addr, &token()?, channel, batch, read_buffer).await?;
                Ok(Connection::Ws {
                    ws: Box::new(ws),
                    decoder: Decoder::Stellwerk,
                })
            }
            Broker::StellwerkSse => Ok(Connection::Sse(
                sse::subscriber(addr, &token()?, channel, read_buffer).await?,
            )),
            Broker::Nats => {
                let (ws, parser) =
                    nats::subscriber(addr, &nats_subject(channel), read_buffer).await?;
                Ok(Connection::Ws {
                    ws: Box::new(ws),
                    decoder: Decoder::Nats(parser),
                })
            }
        }
    }

    /// `http_concurrency`: Stellwerk publish requests in flight at once.
    pub(crate) async fn publisher(
        self,
        addr: SocketAddr,
        channel: &str,
        http_concurrency: usize,
    ) -> Result<Publisher> {
        Ok(match self {
            Broker::Stellwerk | Broker::StellwerkSse => Publisher::Http {
                publisher: stellwerk::Publisher::new(
                    addr,
                    servers::API_KEY,
                    channel,
                    http_concurrency,
                )?,
                concurrency: http_concurrency.max(1),
            },
            Broker::Nats => Publisher::Nats(Box::new(
                nats::Publisher::connect(addr, &nats_subject(channel)).await?,
            )),
        })
    }
}

/// Extra token claims per subscriber, for channels whose plugin reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claims {
    /// Just `sub`: enough for `public`.
    None,
    /// For `course:<id>:…`: `courses: {"<id>": "autor"}`, every second subscriber `"tutor"`,
    /// so that the channel has the course plugin's two audiences (`members`, `staff`).
    Course(String),
    /// For the `audiences` test plugin: `group: "g<index % n>"`, i.e. `n` audiences.
    Groups(usize),
    /// For `blubber:<thread>`: a page token whose `channels` claim names this channel.
    Channels(String),
}

impl Claims {
    fn for_subscriber(&self, index: usize) -> Option<serde_json::Value> {
        match self {
            Claims::None => None,
            Claims::Course(id) => {
                let status = if index.is_multiple_of(2) {
                    "autor"
                } else {
                    "tutor"
                };
                Some(serde_json::json!({"courses": {id.as_str(): status}}))
            }
            Claims::Groups(n) => {
                Some(serde_json::json!({"group": format!("g{}", index % n.max(&1))}))
            }
            Claims::Channels(channel) => Some(serde_json::json!({"channels": [channel]})),
        }
    }
}

/// How every subscriber of a run subscribes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubscribeAs<'a> {
    pub(crate) channel: &'a str,
    /// Stellwerk's opt-in batching (`?batch=1`).
    pub(crate) batch: bool,
    pub(crate) read_buffer: usize,
    pub(crate) claims: &'a Claims,
}

/// NATS subjects use `.` as separator; `public:bench` becomes `public.bench`.
fn nats_subject(channel: &str) -> String {
    channel.replace(':', ".")
}

pub(crate) enum Decoder {
    Stellwerk,
    Nats(nats::Parser),
}

/// A subscribed connection.
pub(crate) enum Connection {
    /// Boxed: a WebSocket is several times the size of an SSE stream.
    Ws {
        ws: Box<Ws>,
        decoder: Decoder,
    },
    Sse(SseStream),
}

/// Publishes benchmark messages, one per request (HTTP) or frame (NATS).
pub(crate) enum Publisher {
    /// Open loop: a request starts when it is due, whether or not earlier ones have been
    /// answered, up to `concurrency` in flight. A slow answer must not hold back the next
    /// message, or the latency figures would hide the slowness (coordinated omission).
    Http {
        publisher: stellwerk::Publisher,
        concurrency: usize,
    },
    /// One connection, fire-and-forget, as NATS clients publish.
    Nats(Box<nats::Publisher>),
}

/// How publishing went.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) timed_out: bool,
    consecutive_errors: u32,
}

impl Published {
    /// Several publishers' reports as one.
    pub(crate) fn sum(reports: Vec<Published>) -> Published {
        let mut total = Published::default();
        for report in reports {
            total.ok += report.ok;
            total.errors += report.errors;
            if total.first_error.is_none() {
                total.first_error = report.first_error;
            }
            total.timed_out |= report.timed_out;
        }
        total
    }

    /// Gives up after this many failures in a row: the server is not accepting publishes.
    const GIVE_UP_AFTER: u32 = 20;

    fn record(&mut self, result: Result<()>) {
        match result {
            Ok(()) => {
                self.ok += 1;
                self.consecutive_errors = 0;
            }
            Err(e) => {
                self.errors += 1;
                self.consecutive_errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    fn given_up(&self) -> bool {
        self.consecutive_errors >= Self::GIVE_UP_AFTER
    }
}

impl Publisher {
    /// Publishes messages `0..messages` of `size` bytes, each stamped with its send time,
    /// at `rate` per second (or as fast as possible), until `deadline`. The publisher stays
    /// open afterwards: drop it only once deliveries have drained.
    pub(crate) async fn run(
        &mut self,
        messages: u64,
        rate: Option<f64>,
        size: usize,
        deadline: Instant,
    ) -> Published {
        let start = Instant::now();
        let mut report = Published::default();
        let due = |seq: u64| {
            rate.map(|r| (start + Duration::from_secs_f64(seq as f64 / r)).min(deadline))
        };
        match self {
            Publisher::Http {
                publisher,
                concurrency,
            } => {
                let permits = Arc::new(Semaphore::new(*concurrency));
                let mut in_flight = JoinSet::new();
                for seq in 0..messages {
                    if let Some(due) = due(seq) {
                        tokio::time::sleep_until(due).await;
                    }
                    let permit =
                        match tokio::time::timeout_at(deadline, permits.clone().acquire_owned())
                            .await
                        {
                            Ok(Ok(permit)) if Instant::now() < deadline => permit,
                            _ => {
                                report.timed_out = true;
                                break;
                            }
                        };
                    while let Some(done) = in_flight.try_join_next() {
                        report.record(done.map_err(anyhow::Error::from).and_then(|r| r));
                    }
                    if report.given_up() {
                        break;
                    }
                    let publisher = publisher.clone();
                    in_flight.spawn(async move {
                        let result = publisher
                            .publish(&payload::message(seq, payload::now_nanos(), size))
                            .await;
                        drop(permit);
                        result
                    });
                }
                loop {
                    match tokio::time::timeout_at(deadline, in_flight.join_next()).await {
                        Ok(Some(done)) => {
                            report.record(done.map_err(anyhow::Error::from).and_then(|r| r))
                        }
                        Ok(None) => break,
                        Err(_) => {
                            report.timed_out = true;
                            break; // dropping the set aborts what is left
                        }
                    }
                }
            }
            Publisher::Nats(publisher) => {
                for seq in 0..messages {
                    if let Some(due) = due(seq) {
                        tokio::time::sleep_until(due).await;
                    }
                    if Instant::now() >= deadline {
                        report.timed_out = true;
                        break;
                    }
                    let message = payload::message(seq, payload::now_nanos(), size);
                    report.record(publisher.publish(&message).await);
                    if report.given_up() {
                        break;
                    }
                }
                match tokio::time::timeout_at(deadline, publisher.barrier()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => report.record(Err(e)),
                    Err(_) => report.timed_out = true,
                }
            }
        }
        report
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) received: u64,
    pub(crate) latencies_us: Vec<u32>,
    /// [`payload::now_nanos`] at the last delivery.
    pub(crate) last_ns: u64,
    /// Why the connection ended before it was told to stop, if it did.
    pub(crate) ended: Option<String>,
}

/// Reads deliveries until `stop` flips (or the server closes), counting each into
/// `delivered` so that the driver can tell when everything has arrived.
pub(crate) async fn read_until_stopped(
    conn: Connection,
    mut stop: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
    expected: usize,
) -> Tally {
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(expected),
        ..Tally::default()
    };
    let (mut ws, mut decoder) = match conn {
        Connection::Ws { ws, decoder } => (*ws, decoder),
        Connection::Sse(stream) => {
            read_sse_until_stopped(stream, stop, &delivered, &mut tally).await;
            return tally;
        }
    };
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = ws.next() => frame,
        };
        let data = match frame {
            Some(Ok(Message::Text(t))) => t.into(),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(c))) => {
                tally.ended = Some(format!("closed by server: {c:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tally.ended = Some(format!("error: {e}"));
                break;
            }
            None => {
                tally.ended = Some("connection ended".into());
                break;
            }
        };
        let now = payload::now_nanos();
        let before = tally.received;
        let mut record = |message: &[u8]| {
            if let Some(ts) = payload::timestamp(message) {
                tally.received += 1;
                let us = now.saturating_sub(ts) / 1000;
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
        };
        let mut pong = false;
        match &mut decoder {
            // Batched pushes are `\n`-separated JSON objects; unbatched ones contain no `\n`.
            Decoder::Stellwerk => data.split(|b| *b == b'\n').for_each(&mut record),
            Decoder::Nats(parser) => parser.feed(&data, |ev| match ev {
                nats::Event::Msg(m) => record(m),
                nats::Event::Ping => pong = true,
                nats::Event::Err(e) => eprintln!("nats: -ERR {e}"),
                nats::Event::Pong => {}
            }),
        }
        if tally.received > before {
            tally.last_ns = now;
            delivered.fetch_add(tally.received - before, Ordering::Relaxed);
        }
        if pong && ws.send(Message::binary(&b"PONG\r\n"[..])).await.is_err() {
            tally.ended = Some("PONG failed".into());
            break;
        }
    }
    tally
}

/// [`read_until_stopped`] for an SSE stream: every `message` event is one delivery.
async fn read_sse_until_stopped(
    mut stream: SseStream,
    mut stop: watch::Receiver<bool>,
    delivered: &AtomicU64,
    tally: &mut Tally,
) {
    loop {
        let before = tally.received;
        let mut now = 0;
        let read = tokio::select! {
            _ = stop.changed() => break,
            read = stream.next_events(|name, data| {
                if name != "message" {
                    return;
                }
                now = payload::now_nanos();
                if let Some(ts) = payload::timestamp(data) {
                    tally.received += 1;
                    let us = now.saturating_sub(ts) / 1000;
                    tally.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }) => read,
        };
        if tally.received > before {
            tally.last_ns = now;
            delivered.fetch_add(tally.received - before, Ordering::Relaxed);
        }
        match read {
            Ok(true) => {}
            Ok(false) => {
                tally.ended = Some("stream ended".into());
                break;
            }
            Err(e) => {
                tally.ended = Some(format!("error: {e}"));
                break;
            }
        }
    }
}

/// Outcome of opening many subscribers.
#[derive(Default)]
pub(crate) struct Opened {
    pub(crate) connections: Vec<Connection>,
    pub(crate) failed: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) timed_out: bool,
}

impl Opened {
    /// Adds what another [`open_many`] opened (on another node).
    pub(crate) fn merge(&mut self, other: Opened) {
        self.connections.extend(other.connections);
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.timed_out |= other.timed_out;
    }
}

/// Opens `count` subscribers, `concurrency` handshakes at a time, until `deadline`.
pub(crate) async fn open_many(
    broker: Broker,
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    sub: SubscribeAs<'_>,
    deadline: Instant,
) -> Opened {
    let mut pending = stream::iter(0..count)
        .map(|i| broker.subscribe(addr, i, &sub))
        .buffer_unordered(concurrency.max(1));
    let mut opened = Opened {
        connections: Vec::with_capacity(count),
        failed: 0,
        first_error: None,
        timed_out: false,
    };
    loop {
        match tokio::time::timeout_at(deadline, pending.next()).await {
            Ok(Some(Ok(conn))) => opened.connections.push(conn),
            Ok(Some(Err(e))) => {
                opened.failed += 1;
                opened.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Ok(None) => break,
            Err(_) => {
                opened.timed_out = true;
                break;
            }
        }
    }
    opened
}
