//! Harness for Stellwerk's end-to-end tests.
//!
//! The tests run the real `stellwerk` binary as a child process and talk to it the way Stud.IP's
//! PHP and browsers do: HTTP with the API key, WebSocket and Server-Sent Events with JWTs. The
//! contract they check is `docs/protocol.md`.
//!
//! # Layout
//! - [`binary`]: builds the current `stellwerk` (and `stellwerk-bench`) once per test process.
//! - [`server`]: starts one broker per test on `127.0.0.1:0`, mints tokens, publishes.
//! - [`ws`]: a small WebSocket client (commands, pushes, close frames).
//! - [`sse`]: a Server-Sent Events client over a raw HTTP byte stream.
//! - [`plugin_dir`]: a temporary plugin directory with copies of built components.
//! - [`raw`]: a hand-rolled WebSocket over a plain TCP socket, for a client that stops reading.
//! - [`redis`]: a real `redis-server` on a free port, for the Redis engine and several nodes.
//! - [`tokens`]: hand-crafted tokens that no JWT library would produce (`alg: none`).

pub mod binary;
pub mod guide;
pub mod plugin_dir;
pub mod raw;
pub mod redis;
pub mod server;
pub mod sse;
pub mod tokens;
pub mod ws;

pub use server::{assert_http_error, Server, ServerBuilder};
pub use sse::{SseEvent, SseStream};
pub use ws::{Frame, WsClient};

use std::time::Duration;

/// How long a client waits for the next frame or event before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Seconds since the Unix epoch, as JWTs count time.
pub fn now_secs() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970");
    i64::try_from(now.as_secs()).expect("clock overflow")
}

/// A fresh random hex string (API keys, JWT secrets), so no test can lean on a fixed secret.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts a WebSocket `error` reply with `code` and a non-empty message.
#[track_caller]
pub fn assert_ws_error(reply: &serde_json::Value, code: &str) {
    assert_eq!(
        reply["type"], "error",
        "expected an error reply, got {reply}"
    );
    assert_eq!(reply["code"], code, "error code; reply: {reply}");
    assert!(
        reply["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error message must be a non-empty string; reply: {reply}"
    );
}
