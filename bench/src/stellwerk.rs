//! The Stellwerk side of the wire, as `docs/protocol.md` describes it: HS256 tokens,
//! `GET /ws?token=…` plus `subscribe`, and `POST /api/publish` with the API key.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::wsclient::{self, Ws};

/// A token for user `sub`, valid for an hour, with `extra` claims (an object) merged in:
/// what channel plugins read (`courses` for `course`, `group` for the `audiences` test plugin).
pub(crate) fn token(secret: &str, sub: &str, extra: Option<&serde_json::Value>) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({"sub": sub, "exp": now + 3600, "iat": now});
    if let (Some(serde_json::Value::Object(extra)), Some(map)) = (extra, claims.as_object_mut()) {
        map.extend(extra.clone());
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Connects as `user`, subscribes to `channel` and returns once `subscribed` has arrived,
/// i.e. once every later publish is guaranteed to reach this connection.
pub(crate) async fn subscriber(
    addr: SocketAddr,
    token: &str,
    channel: &str,
    batch: bool,
    read_buffer: usize,
) -> Result<Ws> {
    let query = if batch { "&batch=1" } else { "" };
    let mut ws = wsclient::connect(addr, &format!("/ws?token={token}{query}"), read_buffer).await?;
    let subscribe = serde_json::json!({"id": 1, "type": "subscribe", "channel": channel});
    ws.send(Message::text(subscribe.to_string())).await?;
    loop {
        let frame = ws
            .next()
            .await
            .context("stellwerk closed before `subscribed`")??;
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(c) => bail!("stellwerk closed: {c:?}"),
            _ => continue,
        };
        for line in text.as_str().split('\n') {
            let reply: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("not JSON from stellwerk: {line}"))?;
            if reply["id"] != 1 {
                continue;
            }
            match reply["type"].as_str() {
                Some("subscribed") => return Ok(ws),
                _ => bail!("subscribe refused: {line}"),
            }
        }
    }
}

/// `POST /api/publish`, one message per request, over kept-alive HTTP/1.1 connections.
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub(crate) struct Publisher {
    client: reqwest::Client,
    url: String,
    api_key: String,
    channel: String,
}

impl Publisher {
    /// `connections`: how many requests may be in flight, each on its own connection.
    pub(crate) fn new(
        addr: SocketAddr,
        api_key: &str,
        channel: &str,
        connections: usize,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(connections)
            .build()?;
        Ok(Self {
            client,
            url: format!("http://{addr}/api/publish"),
            api_key: api_key.to_owned(),
            channel: channel.to_owned(),
        })
    }

    /// `data` is already JSON (the benchmark message).
    pub(crate) async fn publish(&self, data: &str) -> Result<()> {
        let body = format!("{{\"channel\":\"{}\",\"data\":{data}}}", self.channel);
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.api_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("publish answered {status}: {text}");
        }
        // Read the body so that the connection goes back to the pool.
        response.bytes().await?;
        Ok(())
    }
}
