//! The Stellwerk side of the wire, as `docs/protocol.md` describes it: HS256 tokens,
//! `GET /ws?token=…` plus `subscribe`, and `POST /api/publish` with the API key.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// How long an idle kept-alive HTTP connection is reused. The broker closes one after
/// `http.header_read_timeout_seconds` (10 s by default); a client that reuses it just then
/// gets a failed request, which the soak would count as an error. Well below that, a
/// connection is dropped by the client first.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(4);

/// An HTTP client for the broker's API whose idle connections never meet the broker's
/// idle timeout (`POOL_IDLE`).
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .unwrap_or_default()
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
            .pool_idle_timeout(POOL_IDLE)
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
        let response = self.send(body).await?;
        // Read the body so that the connection goes back to the pool.
        response.bytes().await?;
        Ok(())
    }

    /// Publishes `data` (JSON) to `channels` in one request, whatever channel this publisher
    /// was made for, and returns where each channel put it.
    pub(crate) async fn publish_to(&self, channels: &[&str], data: &str) -> Result<Vec<Published>> {
        let body = serde_json::json!({"channels": channels, "data": serde_json::from_str::<serde_json::Value>(data)?});
        let answer: serde_json::Value = self.send(body.to_string()).await?.json().await?;
        let results = answer["results"]
            .as_array()
            .with_context(|| format!("publish answer without results: {answer}"))?;
        results
            .iter()
            .map(|r| {
                Ok(Published {
                    channel: r["channel"]
                        .as_str()
                        .context("result without channel")?
                        .to_owned(),
                    offset: r["offset"].as_u64().context("result without offset")?,
                })
            })
            .collect()
    }

    /// Sends one publish request; a non-2xx answer is an error that quotes its body (with
    /// its `code`, e.g. `rate_limited`).
    async fn send(&self, body: String) -> Result<reqwest::Response> {
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
        Ok(response)
    }
}

/// Where one channel put a published message (an entry of `POST /api/publish`'s `results`).
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) channel: String,
    pub(crate) offset: u64,
}

/// `GET /metrics` (admin token): the Prometheus text.
pub(crate) async fn metrics(client: &reqwest::Client, addr: SocketAddr) -> Result<String> {
    Ok(client
        .get(format!("http://{addr}/metrics"))
        .bearer_auth(crate::servers::ADMIN_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The sum over every sample of the metric `name` (all its label sets) in Prometheus
/// text; `None` when it has none.
pub(crate) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b' ') => rest,
            Some(b'{') => rest.rsplit_once('}').map_or("", |(_, v)| v),
            _ => continue,
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets_and_skips_longer_names() {
        let text = "# TYPE stellwerk_connections gauge\n\
                    stellwerk_connections 7\n\
                    stellwerk_connections_refused_total{reason=\"max_connections\"} 2\n\
                    stellwerk_rate_limited_total{limit=\"commands\"} 1\n\
                    stellwerk_rate_limited_total{limit=\"publishes\"} 3\n";
        assert_eq!(metric_sum(text, "stellwerk_connections"), Some(7.0));
        assert_eq!(metric_sum(text, "stellwerk_rate_limited_total"), Some(4.0));
        assert_eq!(
            metric_sum(text, "stellwerk_connections_refused_total"),
            Some(2.0)
        );
        assert_eq!(metric_sum(text, "stellwerk_channels"), None);
    }
}
