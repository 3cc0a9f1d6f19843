//! A small WebSocket client for the wire protocol: commands with ids, pushes, close frames.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::RECV_TIMEOUT;

/// One frame as the client sees it (pings and pongs are answered and skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: code (1005 when the frame had none) and reason.
    Close(u16, String),
    /// The connection ended without a close frame, or failed; the error text.
    Ended(String),
}

/// A WebSocket connection to the broker.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// JSON objects read but not yet handed out (pushes seen while waiting for a reply, or the
    /// rest of a batched frame).
    pending: VecDeque<Value>,
    next_id: u64,
    batch: bool,
    timeout: Duration,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("pending", &self.pending.len())
            .field("batch", &self.batch)
            .finish()
    }
}

/// The status and JSON body of a refused WebSocket upgrade from a page of `origin` (the
/// upgrade request a browser sends, read as plain HTTP so that the whole body arrives); fails
/// the test if the upgrade is accepted.
pub async fn refused_upgrade(url: &str, origin: &str) -> (u16, Value) {
    let http_url = url.replacen("ws://", "http://", 1);
    let request = reqwest::Client::new()
        .get(&http_url)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Origin", origin)
        .send();
    let response = tokio::time::timeout(RECV_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| panic!("no answer to the upgrade within {RECV_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("the upgrade from {origin} failed: {e}"));
    assert_ne!(
        response.status().as_u16(),
        101,
        "the upgrade from {origin} was accepted"
    );
    crate::server::status_and_json(response).await
}

impl WsClient {
    /// Connects to a `ws://` URL. A URL with `batch=1` makes [`Self::recv_json`] accept
    /// several `\n`-separated pushes per frame.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_from(url, None).await
    }

    /// Connects sending `Origin: origin`, as a browser page of that origin does.
    pub async fn connect_from(url: &str, origin: Option<&str>) -> anyhow::Result<Self> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = url.into_client_request()?;
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse()?);
        }
        let (stream, _response) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self {
            stream,
            pending: VecDeque::new(),
            next_id: 1000,
            batch: url.contains("batch=1"),
            timeout: RECV_TIMEOUT,
        })
    }

    /// Whether frames may carry several pushes (set after `connect` with `"batch": true`).
    pub fn set_batch(&mut self, batch: bool) {
        self.batch = batch;
    }

    /// How long `recv_*` wait before failing the test.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.stream
            .send(Message::text(text.into()))
            .await
            .expect("send text frame");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::binary(bytes))
            .await
            .expect("send binary frame");
    }

    /// The next data or close frame; fails the test after the timeout.
    pub async fn recv_frame(&mut self) -> Frame {
        match tokio::time::timeout(self.timeout, self.next_frame()).await {
            Ok(frame) => frame,
            Err(_) => panic!("no WebSocket frame within {:?}", self.timeout),
        }
    }

    async fn next_frame(&mut self) -> Frame {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(text))) => return Frame::Text(text.to_string()),
                Some(Ok(Message::Binary(bytes))) => return Frame::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(Some(close)))) => {
                    return Frame::Close(u16::from(close.code), close.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return Frame::Close(1005, String::new()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(e)) => return Frame::Ended(e.to_string()),
                None => return Frame::Ended("stream ended".into()),
            }
        }
    }

    /// The next JSON object from the server (reply or push). Without batching a frame must be
    /// exactly one JSON object; with batching it may hold several, one per line.
    pub async fn recv_json(&mut self) -> Value {
        if let Some(value) = self.pending.pop_front() {
            return value;
        }
        loop {
            match self.recv_frame().await {
                Frame::Text(text) => {
                    self.queue_text(&text);
                    if let Some(value) = self.pending.pop_front() {
                        return value;
                    }
                }
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON object that is not a presence push (`join`/`leave`), for tests about
    /// messages on channels whose plugin turned presence on.
    pub async fn recv_skipping_presence(&mut self) -> Value {
        loop {
            let value = self.recv_json().await;
            if !matches!(value["type"].as_str(), Some("join" | "leave")) {
                return value;
            }
        }
    }

    fn queue_text(&mut self, text: &str) {
        if self.batch {
            for line in text.split('\n') {
                let value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("batched line is not JSON ({e}): {line:?}"));
                self.pending.push_back(value);
            }
        } else {
            let value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("frame is not exactly one JSON value ({e}): {text:?}"));
            self.pending.push_back(value);
        }
    }

    /// Sends a command (adding an `id` if it has none) and returns the reply with that `id`.
    /// Pushes that arrive meanwhile stay queued for [`Self::recv_json`].
    pub async fn request(&mut self, mut cmd: Value) -> Value {
        let id = match cmd.get("id").and_then(Value::as_u64) {
            Some(id) => id,
            None => {
                self.next_id += 1;
                cmd["id"] = Value::from(self.next_id);
                self.next_id
            }
        };
        self.send_json(&cmd).await;
        let mut skipped = VecDeque::new();
        let reply = loop {
            let value = if let Some(v) = self.pending.pop_front() {
                v
            } else {
                let Ok(frame) = tokio::time::timeout(self.timeout, self.next_frame()).await else {
                    panic!(
                        "no reply to {cmd} within {:?}; received meanwhile: {skipped:?}",
                        self.timeout
                    );
                };
                match frame {
                    Frame::Text(text) => {
                        self.queue_text(&text);
                        continue;
                    }
                    other => panic!("waiting for reply to {cmd}, got {other:?}"),
                }
            };
            if value.get("id").and_then(Value::as_u64) == Some(id) {
                break value;
            }
            skipped.push_back(value);
        };
        // Keep the order of everything that arrived around the reply.
        skipped.extend(self.pending.drain(..));
        self.pending = skipped;
        reply
    }

    /// Reads until the server's close frame and returns its code and reason. JSON seen on the
    /// way (a `disconnect` push, an error reply) is kept for [`Self::take_pending`].
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.recv_frame().await {
                Frame::Close(code, reason) => return (code, reason),
                Frame::Text(text) => {
                    for line in text.split('\n') {
                        self.pending.push_back(
                            serde_json::from_str(line).unwrap_or(Value::String(line.to_owned())),
                        );
                    }
                }
                Frame::Binary(bytes) => panic!("unexpected binary frame ({} bytes)", bytes.len()),
                Frame::Ended(why) => panic!("connection ended without a close frame: {why}"),
            }
        }
    }

    /// Everything queued but not yet handed out.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Closes politely (1000).
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
