//! A WebSocket spoken by hand over a plain TCP socket with a tiny receive buffer, so a test can
//! stop reading and let the broker's send buffer really fill up (a stalled browser tab).

use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub const TEXT: u8 = 0x1;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;

    /// The close code of a close frame (1005 when it carries none).
    pub fn close_code(&self) -> u16 {
        match self.payload.as_slice() {
            [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
            _ => 1005,
        }
    }
}

/// A WebSocket client whose reads the test controls.
#[derive(Debug)]
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects with `SO_RCVBUF = recv_buffer` and performs the upgrade for `path_and_query`.
    pub async fn connect(
        addr: SocketAddr,
        path_and_query: &str,
        recv_buffer: u32,
    ) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(recv_buffer)?;
        let mut stream = socket.connect(addr).await?;
        let key = STANDARD.encode(rand::random::<[u8; 16]>());
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let header_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed during the upgrade"));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(std::io::Error::other(format!("upgrade refused: {head}")));
        }
        buf.drain(..header_end);
        Ok(Self { stream, buf })
    }

    /// Sends a masked text frame, as every client must.
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        let payload = text.as_bytes();
        let mut frame = vec![0x80 | RawFrame::TEXT];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mask: [u8; 4] = rand::random();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await
    }

    /// The next frame, or `None` on EOF or a socket error (the server dropped us).
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`: the frame and its length.
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let opcode = b0 & 0x0F;
    let (len, mut pos) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let m: [u8; 4] = buf.get(pos..pos + 4)?.try_into().ok()?;
        pos += 4;
        Some(m)
    } else {
        None
    };
    let len = usize::try_from(len).ok()?;
    let mut payload = buf.get(pos..pos + len)?.to_vec();
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some((RawFrame { opcode, payload }, pos + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_and_extended_lengths() {
        let mut wire = vec![0x81, 3, b'a', b'b', b'c'];
        wire.extend_from_slice(&[0x88, 2, 0x0F, 0xA8]);
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        wire.extend_from_slice(&long);

        let (f1, n1) = parse_frame(&wire).unwrap();
        assert_eq!(
            (f1.opcode, f1.payload.as_slice()),
            (RawFrame::TEXT, &b"abc"[..])
        );
        let (f2, n2) = parse_frame(&wire[n1..]).unwrap();
        assert_eq!(f2.opcode, RawFrame::CLOSE);
        assert_eq!(f2.close_code(), 4008);
        let (f3, n3) = parse_frame(&wire[n1 + n2..]).unwrap();
        assert_eq!(f3.payload.len(), 256);
        assert_eq!(n1 + n2 + n3, wire.len());
        assert!(
            parse_frame(&wire[..wire.len() - 1][n1 + n2..]).is_none(),
            "incomplete"
        );
    }
}
