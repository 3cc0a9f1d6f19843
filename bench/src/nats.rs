//! Just enough of the NATS text protocol, spoken over nats-server's WebSocket listener.
//!
//! WebSocket frames carry a byte stream: one frame may hold several `MSG`s and one `MSG` may
//! span frames, so [`Parser`] buffers across frames.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::wsclient::{self, Ws};

/// What the server said, as far as the benchmark cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A `MSG` payload.
    Msg(&'a [u8]),
    /// The server's keep-alive: must be answered with `PONG`.
    Ping,
    /// The answer to our `PING`: everything we sent before it has been processed.
    Pong,
    /// `-ERR '…'`.
    Err(String),
}

/// Incremental parser of the server-to-client NATS protocol.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Feeds one WebSocket frame's bytes and reports every complete protocol item in it.
    pub(crate) fn feed(&mut self, data: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        if self.buf.is_empty() {
            // The common case: parse straight from the frame and keep only an incomplete tail.
            let used = parse(data, &mut on_event);
            self.buf.extend_from_slice(&data[used..]);
        } else {
            self.buf.extend_from_slice(data);
            let used = parse(&self.buf, &mut on_event);
            self.buf.drain(..used);
        }
    }
}

/// Parses complete items from `data`; returns how many bytes they took.
fn parse(data: &[u8], on_event: &mut impl FnMut(Event<'_>)) -> usize {
    let mut pos = 0;
    while let Some(eol) = find_crlf(&data[pos..]) {
        let line = &data[pos..pos + eol];
        let after_line = pos + eol + 2;
        if let Some(args) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len = args
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            let end = after_line + len;
            if data.len() < end + 2 {
                return pos; // payload not complete yet
            }
            on_event(Event::Msg(&data[after_line..end]));
            pos = end + 2;
            continue;
        }
        if line == b"PING" {
            on_event(Event::Ping);
        } else if line == b"PONG" {
            on_event(Event::Pong);
        } else if let Some(err) = line.strip_prefix(b"-ERR") {
            on_event(Event::Err(String::from_utf8_lossy(err).trim().to_owned()));
        }
        // INFO and +OK need no action.
        pos = after_line;
    }
    pos
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

const CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"stellwerk-bench\"}\r\n";

/// Connects, subscribes to `subject` and waits until the server has registered the
/// subscription (a `PING` answered by `PONG` is NATS's barrier).
pub(crate) async fn subscriber(
    addr: SocketAddr,
    subject: &str,
    read_buffer: usize,
) -> Result<(Ws, Parser)> {
    let mut ws = wsclient::connect(addr, "/", read_buffer).await?;
    ws.send(Message::binary(
        format!("{CONNECT}SUB {subject} 1\r\nPING\r\n").into_bytes(),
    ))
    .await?;
    let mut parser = Parser::default();
    loop {
        let frame = ws.next().await.context("nats closed before PONG")??;
        let data = match frame {
            Message::Binary(b) => b,
            Message::Text(t) => t.into(),
            Message::Close(c) => bail!("nats closed: {c:?}"),
            _ => continue,
        };
        let (mut pong, mut ping, mut err) = (false, false, None);
        parser.feed(&data, |ev| match ev {
            Event::Pong => pong = true,
            Event::Ping => ping = true,
            Event::Err(e) => err = Some(e),
            Event::Msg(_) => {}
        });
        if let Some(e) = err {
            bail!("nats refused: {e}");
        }
        if ping {
            ws.send(Message::binary(&b"PONG\r\n"[..])).await?;
        }
        if pong {
            return Ok((ws, parser));
        }
    }
}

/// One publishing connection: NATS has no HTTP publish, so this is its equivalent.
pub(crate) struct Publisher {
    ws: Ws,
    subject: String,
}

impl Publisher {
    pub(crate) async fn connect(addr: SocketAddr, subject: &str) -> Result<Self> {
        let mut ws = wsclient::connect(addr, "/", 8 * 1024).await?;
        ws.send(Message::binary(CONNECT.as_bytes())).await?;
        Ok(Self {
            ws,
            subject: subject.to_owned(),
        })
    }

    /// One `PUB` per WebSocket frame, flushed: the same one-message-per-request shape as
    /// Stellwerk's HTTP publish.
    pub(crate) async fn publish(&mut self, payload: &str) -> Result<()> {
        let frame = format!("PUB {} {}\r\n{payload}\r\n", self.subject, payload.len());
        self.ws.send(Message::binary(frame.into_bytes())).await?;
        Ok(())
    }

    /// Waits until the server has processed every `PUB` sent so far (`PING` → `PONG`).
    /// Also reads what the server sent meanwhile: closing a socket with unread input makes
    /// the kernel reset the connection, and the server would lose `PUB`s it had not read yet.
    pub(crate) async fn barrier(&mut self) -> Result<()> {
        self.ws.send(Message::binary(&b"PING\r\n"[..])).await?;
        let mut parser = Parser::default();
        loop {
            let data = match self.ws.next().await.context("nats closed before PONG")?? {
                Message::Binary(b) => b,
                Message::Text(t) => t.into(),
                Message::Close(c) => bail!("nats closed: {c:?}"),
                _ => continue,
            };
            let (mut pong, mut ping, mut err) = (false, false, None);
            parser.feed(&data, |ev| match ev {
                Event::Pong => pong = true,
                Event::Ping => ping = true,
                Event::Err(e) => err = Some(e),
                Event::Msg(_) => {}
            });
            if let Some(e) = err {
                bail!("nats: -ERR {e}");
            }
            if ping {
                self.ws.send(Message::binary(&b"PONG\r\n"[..])).await?;
            }
            if pong {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(parser: &mut Parser, frame: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        parser.feed(frame, |ev| {
            out.push(match ev {
                Event::Msg(p) => format!("msg:{}", String::from_utf8_lossy(p)),
                Event::Ping => "ping".into(),
                Event::Pong => "pong".into(),
                Event::Err(e) => format!("err:{e}"),
            })
        });
        out
    }

    #[test]
    fn several_messages_in_one_frame() {
        let mut p = Parser::default();
        let got = collect(
            &mut p,
            b"INFO {\"x\":1}\r\nMSG a 1 3\r\nabc\r\nPING\r\nMSG a 1 r.x 2\r\nhi\r\n",
        );
        assert_eq!(got, ["msg:abc", "ping", "msg:hi"]);
    }

    #[test]
    fn a_message_split_across_frames_is_reassembled() {
        let mut p = Parser::default();
        assert!(collect(&mut p, b"MSG a 1 5\r\nhe").is_empty());
        assert!(collect(&mut p, b"llo").is_empty());
        assert_eq!(collect(&mut p, b"\r\nPO"), ["msg:hello"]);
        assert_eq!(
            collect(&mut p, b"NG\r\n-ERR 'Slow Consumer'\r\n"),
            ["pong", "err:'Slow Consumer'"]
        );
    }

    #[test]
    fn payload_may_contain_crlf() {
        let mut p = Parser::default();
        assert_eq!(
            collect(&mut p, b"MSG a 1 4\r\n\r\n\r\n\r\n"),
            ["msg:\r\n\r\n"]
        );
    }
}
