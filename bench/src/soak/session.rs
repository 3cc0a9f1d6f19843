//! One soak client's connection, WebSocket or SSE: commands with their replies, and every
//! push sorted into what each subscription received or what should not have come.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::delivery::Received;
use crate::sse::{self, SseStream};
use crate::wsclient::{self, Ws};

/// How long a command may wait for its reply before the soak calls it an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection received besides replies.
#[derive(Debug, Default)]
pub(crate) struct Pushes {
    /// Channel → the subscription's messages (also while the `subscribe` is outstanding).
    pub(crate) subscriptions: HashMap<String, Received>,
    /// `join` and `leave` pushes.
    pub(crate) presence: u64,
    /// The `disconnect` push, if one came.
    pub(crate) disconnect: Option<Value>,
    /// Pushes an honest client never gets: `unsubscribed` by the server, an `error`
    /// without `id`, a message on a channel it is not subscribed to, an `unrecovered` event.
    pub(crate) unexpected: Vec<String>,
}

impl Pushes {
    /// Sorts one push (a WebSocket line or an SSE event's data) by its `type`.
    fn take(&mut self, push: Value) {
        match push["type"].as_str() {
            Some("message") => {
                let channel = push["channel"].as_str().unwrap_or_default();
                match self.subscriptions.get_mut(channel) {
                    Some(received) => received.push(&push),
                    None => self
                        .unexpected
                        .push(format!("message on {channel}, not subscribed: {push}")),
                }
            }
            Some("join" | "leave") => self.presence += 1,
            Some("disconnect") => self.disconnect = Some(push),
            _ => self.unexpected.push(push.to_string()),
        }
    }
}

/// A WebSocket connection speaking the protocol of `docs/protocol.md`.
pub(crate) struct WsSession {
    ws: Ws,
    next_id: u64,
    pub(crate) pushes: Pushes,
    /// The close frame's code once the server closed (`None` for a close without code).
    pub(crate) closed: Option<Option<u16>>,
}

impl WsSession {
    /// `ws://addr{path_and_query}` with a small read buffer.
    pub(crate) async fn open(addr: SocketAddr, path_and_query: &str) -> Result<Self> {
        let ws = tokio::time::timeout(
            REPLY_TIMEOUT,
            wsclient::connect(addr, path_and_query, 4 * 1024),
        )
        .await
        .context("websocket connect timed out")??;
        Ok(Self {
            ws,
            next_id: 1,
            pushes: Pushes::default(),
            closed: None,
        })
    }

    /// Sends `command` with the next `id` and returns its reply, whatever its `type`
    /// (pushes that come first are sorted as usual).
    pub(crate) async fn request(&mut self, mut command: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.ws.send(Message::text(command.to_string())).await?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let replies = self.read_frame(deadline).await?.with_context(|| {
                format!("no reply to {} within {REPLY_TIMEOUT:?}", command["type"])
            })?;
            if let Some(reply) = replies.into_iter().find(|r| r["id"] == id) {
                return Ok(reply);
            }
        }
    }

    /// `request`, and an error unless the reply has type `want`.
    pub(crate) async fn expect(&mut self, command: Value, want: &str) -> Result<Value> {
        let reply = self.request(command).await?;
        if reply["type"] != want {
            bail!("expected `{want}`, got {reply}");
        }
        Ok(reply)
    }

    /// Subscribes; messages that come before the reply are kept for the subscription.
    pub(crate) async fn subscribe(&mut self, channel: &str) -> Result<Value> {
        self.pushes
            .subscriptions
            .insert(channel.to_owned(), Received::default());
        let reply = self
            .expect(
                json!({"type": "subscribe", "channel": channel}),
                "subscribed",
            )
            .await;
        match reply {
            Ok(reply) => {
                let epoch = reply["epoch"].as_str().context("no epoch")?.to_owned();
                let offset = reply["offset"].as_u64().context("no offset")?;
                if let Some(received) = self.pushes.subscriptions.get_mut(channel) {
                    received.start = Some((epoch, offset));
                }
                Ok(reply)
            }
            Err(e) => {
                self.pushes.subscriptions.remove(channel);
                Err(e)
            }
        }
    }

    /// Unsubscribes and hands back what the subscription received.
    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> Result<Received> {
        self.expect(
            json!({"type": "unsubscribe", "channel": channel}),
            "unsubscribed",
        )
        .await?;
        self.pushes
            .subscriptions
            .remove(channel)
            .context("unsubscribed from a channel never subscribed")
    }

    /// Reads and sorts pushes for `period`.
    pub(crate) async fn read_for(&mut self, period: Duration) -> Result<()> {
        let until = Instant::now() + period;
        while Instant::now() < until {
            if self.read_frame(until).await?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Reads one frame, sorts its pushes and returns its replies; `None` when `deadline`
    /// passed first. A close frame or the end of the stream is an error (after noting the
    /// close code).
    pub(crate) async fn read_frame(&mut self, deadline: Instant) -> Result<Option<Vec<Value>>> {
        let Ok(frame) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
            return Ok(None);
        };
        let frame = frame.context("the server ended the connection")??;
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(close) => {
                let code = close.as_ref().map(|c| u16::from(c.code));
                self.closed = Some(code);
                bail!("the server closed the connection: {close:?}");
            }
            _ => return Ok(Some(Vec::new())),
        };
        let mut replies = Vec::new();
        for line in text.as_str().split('\n') {
            let Ok(push) = serde_json::from_str::<Value>(line) else {
                self.pushes.unexpected.push(format!("not JSON: {line}"));
                continue;
            };
            if push.get("id").is_some() {
                replies.push(push);
            } else {
                self.pushes.take(push);
            }
        }
        Ok(Some(replies))
    }

    /// Reads until the server closes (the `disconnect` push and the close frame) and
    /// returns the close code; an error if it does not within `limit`.
    pub(crate) async fn read_until_closed(&mut self, limit: Duration) -> Result<Option<u16>> {
        let deadline = Instant::now() + limit;
        loop {
            match self.read_frame(deadline).await {
                Ok(Some(_)) => {}
                Ok(None) => bail!("not closed within {limit:?}"),
                Err(e) => return self.closed.ok_or(e),
            }
        }
    }

    /// Closes from the client side (close frame, then the server's answer).
    pub(crate) async fn close(mut self) -> Result<()> {
        self.ws.close(None).await?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(None | Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(Message::Close(_)))) => return Ok(()),
                Ok(Some(Ok(_))) => {}
                Err(_) => bail!("no close answer within {REPLY_TIMEOUT:?}"),
            }
        }
    }
}

/// An SSE stream (`GET /sse?channel=…`), sorted like a WebSocket's pushes.
pub(crate) struct SseSession {
    stream: SseStream,
    pub(crate) pushes: Pushes,
}

impl SseSession {
    /// Opens the stream and reads its `subscribed` events, one per channel.
    pub(crate) async fn open(addr: SocketAddr, channels: &[&str], token: &str) -> Result<Self> {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, sse::open(addr, token, channels, 4096))
            .await
            .context("sse connect timed out")??;
        let mut session = Self {
            stream,
            pushes: Pushes::default(),
        };
        for channel in channels {
            session
                .pushes
                .subscriptions
                .insert((*channel).to_owned(), Received::default());
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while session
            .pushes
            .subscriptions
            .values()
            .any(|r| r.start.is_none())
        {
            if !session.read_event(deadline).await? {
                bail!("no `subscribed` event for every channel within {REPLY_TIMEOUT:?}");
            }
        }
        Ok(session)
    }

    /// Reads what arrives next and sorts its events; `false` when `deadline` passed first.
    /// The end of the stream is an error.
    pub(crate) async fn read_event(&mut self, deadline: Instant) -> Result<bool> {
        let mut events: Vec<(String, Vec<u8>)> = Vec::new();
        let read = self.stream.next_events(|name, data| {
            events.push((name.to_owned(), data.to_vec()));
        });
        let Ok(open) = tokio::time::timeout_at(deadline, read).await else {
            return Ok(false);
        };
        if !open? {
            bail!("the server ended the stream");
        }
        for (name, data) in events {
            let data: Value = serde_json::from_slice(&data)
                .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&data)))?;
            if name == "subscribed" {
                let channel = data["channel"].as_str().unwrap_or_default();
                let epoch = data["epoch"].as_str().context("no epoch")?.to_owned();
                let offset = data["offset"].as_u64().context("no offset")?;
                match self.pushes.subscriptions.get_mut(channel) {
                    Some(received) => received.start = Some((epoch, offset)),
                    None => self
                        .pushes
                        .unexpected
                        .push(format!("subscribed to {channel}, never asked for")),
                }
            } else {
                self.pushes.take(data);
            }
        }
        Ok(true)
    }

    /// Reads and sorts events for `period`.
    pub(crate) async fn read_for(&mut self, period: Duration) -> Result<()> {
        let until = Instant::now() + period;
        while Instant::now() < until && self.read_event(until).await? {}
        Ok(())
    }
}
