//! A Server-Sent Events client that parses the stream the way `EventSource` does, but keeps
//! what a browser hides (comments, `retry:`) so the tests can check them.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::RECV_TIMEOUT;

/// One block of the stream, up to a blank line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`; `None` means the default type (`message` for a browser).
    pub event: Option<String>,
    /// All `data:` lines joined with `\n`.
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
    /// Comment lines (`: keep-alive`), without the colon.
    pub comments: Vec<String>,
}

impl SseEvent {
    /// `data:` parsed as JSON; fails the test if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// An open event stream.
pub struct SseStream {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: ByteStream,
    parser: Parser,
    timeout: Duration,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("status", &self.status)
            .finish()
    }
}

impl SseStream {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            parser: Parser::default(),
            timeout: RECV_TIMEOUT,
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// A response header as a string (empty when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The next block (event, comment or `retry:`); fails the test after the timeout or when
    /// the stream ends.
    pub async fn next_event(&mut self) -> SseEvent {
        match tokio::time::timeout(self.timeout, self.next_block()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("SSE stream ended"),
            Err(_) => panic!("no SSE event within {:?}", self.timeout),
        }
    }

    /// The next block, or `None` once the server ended the stream.
    pub async fn next_block(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.parser.events.pop_front() {
                return Some(event);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.parser.feed(&chunk),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next `event: message`, skipping keep-alives, `subscribed` and the like.
    pub async fn next_message(&mut self) -> SseEvent {
        loop {
            let event = self.next_event().await;
            if event.event.as_deref() == Some("message") {
                return event;
            }
        }
    }
}

/// The `text/event-stream` line protocol, fed with chunks as they arrive.
#[derive(Debug, Default)]
struct Parser {
    buf: Vec<u8>,
    current: SseEvent,
    data_lines: Vec<String>,
    events: VecDeque<SseEvent>,
}

impl Parser {
    fn feed(&mut self, chunk: &[u8]) {
        // Only the new bytes are searched, and complete lines leave the buffer at once, so
        // that a long line arriving in many chunks costs linear time.
        let scanned = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let Some(last_newline) = self.buf[scanned..].iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.buf.drain(..=scanned + last_newline).collect();
        for line in complete[..complete.len() - 1].split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            self.line(&line);
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            self.current.data = self.data_lines.join("\n");
            self.data_lines.clear();
            let event = std::mem::take(&mut self.current);
            if !event.is_empty() {
                self.events.push_back(event);
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            self.current.comments.push(comment.to_owned());
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = Some(value.to_owned()),
            "data" => self.data_lines.push(value.to_owned()),
            "id" => self.current.id = Some(value.to_owned()),
            "retry" => self.current.retry = value.parse().ok(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_split_across_chunks() {
        let mut p = Parser::default();
        let stream = "retry: 3000\n\nevent: subscribed\ndata: {\"a\":1}\n\n: keep-alive\n\n\
                      event: message\r\nid: c1\r\ndata: line1\r\ndata:line2\r\n\r\n";
        for chunk in stream.as_bytes().chunks(7) {
            p.feed(chunk);
        }
        let events: Vec<SseEvent> = p.events.drain(..).collect();
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[0].retry, Some(3000));
        assert_eq!(events[1].event.as_deref(), Some("subscribed"));
        assert_eq!(events[1].json(), serde_json::json!({"a": 1}));
        assert_eq!(events[2].comments, vec!["keep-alive".to_owned()]);
        assert_eq!(events[3].id.as_deref(), Some("c1"));
        assert_eq!(events[3].data, "line1\nline2");
    }

    #[test]
    fn incomplete_block_is_not_an_event_yet() {
        let mut p = Parser::default();
        p.feed(b"event: message\ndata: x\n");
        assert!(p.events.is_empty());
        p.feed(b"\n");
        assert_eq!(p.events.len(), 1);
    }
}
