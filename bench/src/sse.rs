//! Stellwerk's Server-Sent Events transport, client side, as `docs/protocol.md` describes
//! it: `GET /sse?channel=…&token=…`. The request is HTTP/1.0, so the broker delimits the
//! endless body by the connection's end instead of chunking it, and events can be read
//! straight off the socket.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An open stream whose subscription is live.
pub(crate) struct SseStream {
    tcp: TcpStream,
    /// Bytes read but not yet part of a complete event.
    pending: Vec<u8>,
    read_buffer: usize,
}

/// Opens a stream on `channel` and returns once its `subscribed` event has arrived, i.e.
/// once every later publish is guaranteed to reach it.
pub(crate) async fn subscriber(
    addr: SocketAddr,
    token: &str,
    channel: &str,
    read_buffer: usize,
) -> Result<SseStream> {
    let mut stream = open(addr, token, &[channel], read_buffer).await?;
    let mut subscribed = false;
    while !subscribed {
        if !stream
            .next_events(|name, _| subscribed |= name == "subscribed")
            .await?
        {
            bail!("stellwerk closed the SSE stream before `subscribed`");
        }
    }
    Ok(stream)
}

/// Opens a stream on `channels` and returns once the `200` head has arrived; the
/// `subscribed` events are the first the caller reads.
pub(crate) async fn open(
    addr: SocketAddr,
    token: &str,
    channels: &[&str],
    read_buffer: usize,
) -> Result<SseStream> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("tcp connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let query: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    let request = format!(
        "GET /sse?{}&token={token} HTTP/1.0\r\nHost: {addr}\r\n\
         Accept: text/event-stream\r\n\r\n",
        query.join("&")
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut stream = SseStream {
        tcp,
        pending: Vec::with_capacity(read_buffer),
        read_buffer: read_buffer.max(512),
    };
    let head_end = loop {
        if let Some(end) = find(&stream.pending, b"\r\n\r\n") {
            break end;
        }
        if !stream.fill().await? {
            bail!("stellwerk closed the SSE request before answering");
        }
    };
    let head = String::from_utf8_lossy(&stream.pending[..head_end]).into_owned();
    stream.pending.drain(..head_end + 4);
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or_default().to_owned();
        bail!("SSE stream refused: {status}");
    }
    Ok(stream)
}

impl SseStream {
    /// Reads what arrives next and hands every complete event's name and data to `each`;
    /// `false` once the server has closed the stream. Cancel-safe: an event is handed out
    /// only by a call that completes.
    pub(crate) async fn next_events(&mut self, mut each: impl FnMut(&str, &[u8])) -> Result<bool> {
        // Events already read (with the response head, or in one read with others) first.
        let mut handed = false;
        self.take_events(|name, data| {
            handed = true;
            each(name, data);
        });
        if handed {
            return Ok(true);
        }
        if !self.fill().await? {
            return Ok(false);
        }
        self.take_events(each);
        Ok(true)
    }

    /// Reads into `pending`'s spare room. Cancel-safe (the soak reads under a deadline):
    /// bytes are appended only by a read that completed.
    async fn fill(&mut self) -> Result<bool> {
        self.pending.reserve(self.read_buffer);
        Ok(self.tcp.read_buf(&mut self.pending).await? > 0)
    }

    /// Hands out every complete event (`\n\n`-terminated) in `pending` and keeps the rest.
    fn take_events(&mut self, mut each: impl FnMut(&str, &[u8])) {
        let mut start = 0;
        while let Some(end) = find(&self.pending[start..], b"\n\n") {
            let event = &self.pending[start..start + end];
            let mut name = "message";
            let mut data: &[u8] = &[];
            for line in event.split(|b| *b == b'\n') {
                if let Some(value) = line.strip_prefix(b"event:") {
                    name = std::str::from_utf8(value).unwrap_or_default().trim();
                } else if let Some(value) = line.strip_prefix(b"data:") {
                    data = value.strip_prefix(b" ").unwrap_or(value);
                }
            }
            if !data.is_empty() {
                each(name, data);
            }
            start += end + 2;
        }
        self.pending.drain(..start);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn finds_the_first_occurrence() {
        assert_eq!(find(b"a\n\nb\n\n", b"\n\n"), Some(1));
        assert_eq!(find(b"abc", b"\n\n"), None);
    }
}
