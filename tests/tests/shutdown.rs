//! SIGTERM as an init system sends it, with WebSocket subscribers, an SSE stream, half-sent
//! requests and a subscriber that stopped reading: every WebSocket gets the `disconnect` push
//! and close 1001, the SSE stream ends with `event: disconnect`, and the process exits within
//! `shutdown_timeout_seconds` all the same.

use std::time::{Duration, Instant};

use serde_json::json;
use stellwerk_e2e::raw::{RawFrame, RawWs};
use stellwerk_e2e::Server;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CHANNEL: &str = "public:shutdown";
/// Where the subscriber that stopped reading gets its socket filled.
const STALLED: &str = "public:shutdown-stalled";

#[tokio::test]
async fn sigterm_says_goodbye_to_everyone_and_exits_within_the_bound() {
    let shutdown_timeout = Duration::from_secs(3);
    let mut server = Server::builder()
        .env(
            "STELLWERK_SHUTDOWN_TIMEOUT_SECONDS",
            shutdown_timeout.as_secs(),
        )
        // Neither the header timeout nor the write timeout may end the stuck sockets before
        // the shutdown bound does.
        .env("STELLWERK_HTTP_HEADER_READ_TIMEOUT_SECONDS", 600)
        .env("STELLWERK_WEBSOCKET_WRITE_TIMEOUT_SECONDS", 600)
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 100_000)
        .start()
        .await;

    let mut subscribers = Vec::new();
    for i in 0..3 {
        let (ws, _) = server.subscriber(&format!("user-{i}"), CHANNEL).await;
        subscribers.push(ws);
    }
    let mut sse = server
        .sse(&format!(
            "/sse?channel={CHANNEL}&token={}",
            server.token("sse-user")
        ))
        .await;
    // Half-sent requests: without a bound they would hold the shutdown for ever.
    let mut half_open = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        stream
            .write_all(b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .expect("half a request");
        half_open.push(stream);
    }
    // A subscriber that stopped reading, its socket full of 16 KiB messages.
    let _stalled = raw_subscriber(&server, "stalled").await;
    let blob = "x".repeat(16 * 1024);
    for i in 0..300 {
        server
            .publish_ok(STALLED, &json!({"i": i, "blob": blob}))
            .await;
    }
    server.publish_ok(CHANNEL, &json!({"i": 0})).await;
    for ws in &mut subscribers {
        assert_eq!(ws.recv_json().await["data"]["i"], 0);
    }
    assert_eq!(sse.next_message().await.json()["data"]["i"], 0);

    server.signal("TERM");
    let signalled = Instant::now();

    for ws in &mut subscribers {
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, 1001, "{reason}");
        let pushes = ws.take_pending();
        assert!(
            pushes
                .iter()
                .any(|p| p["type"] == "disconnect" && p["code"] == 1001),
            "no disconnect push before the close: {pushes:?}"
        );
    }
    let ended = loop {
        let event = sse.next_event().await;
        if event.event.as_deref() == Some("disconnect") {
            break event;
        }
    };
    assert_eq!(ended.json()["code"], 1001, "{:?}", ended.data);

    let bound = shutdown_timeout + Duration::from_secs(5);
    let status = server.wait_exit(bound).await;
    let Some(status) = status else {
        panic!(
            "still running {:?} after SIGTERM (shutdown_timeout_seconds = {})",
            signalled.elapsed(),
            shutdown_timeout.as_secs()
        );
    };
    assert!(status.success(), "exit status {status:?}");
    let log = server.log();
    assert!(log.contains("shutting down"), "{log}");
    drop(half_open);
}

#[tokio::test]
async fn sigint_with_nobody_connected_exits_at_once() {
    let mut server = Server::builder()
        .env("STELLWERK_SHUTDOWN_TIMEOUT_SECONDS", 30)
        .start()
        .await;
    server.signal("INT");
    // Nothing to wait for: far below the 30 s bound.
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
}

/// Messages PHP was told were accepted reach a subscriber that is behind (its socket full,
/// more queued in the broker) before its goodbye, when it reads on after the SIGTERM.
#[tokio::test]
async fn sigterm_writes_what_was_queued_before_the_goodbye() {
    const MESSAGES: usize = 400;
    let mut server = Server::builder()
        .env("STELLWERK_SHUTDOWN_TIMEOUT_SECONDS", 30)
        .start()
        .await;
    let mut behind = raw_subscriber(&server, "behind").await;
    // 6.4 MiB: more than the kernel's socket buffers hold (4 MiB at most on loopback), less
    // than the default queue bound (8 MiB), so the rest waits in the broker's queue.
    let blob = "x".repeat(16 * 1024);
    for i in 0..MESSAGES {
        server
            .publish_ok(STALLED, &json!({"i": i, "blob": blob}))
            .await;
    }

    server.signal("TERM");
    let mut received = Vec::new();
    let (code, goodbye) = loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), behind.read_frame())
            .await
            .expect("a frame within 30 s")
            .unwrap_or_else(|| panic!("socket ended after {} messages", received.len()));
        if frame.opcode == RawFrame::CLOSE {
            let goodbye = received.last().cloned();
            break (frame.close_code(), goodbye);
        }
        if frame.opcode != RawFrame::TEXT {
            continue;
        }
        let push: serde_json::Value = serde_json::from_slice(&frame.payload).expect("JSON push");
        received.push(push);
    };
    assert_eq!(code, 1001);
    let goodbye = goodbye.expect("pushes before the close");
    assert_eq!(goodbye["type"], "disconnect", "{goodbye}");
    assert_eq!(goodbye["code"], 1001, "{goodbye}");
    let numbers: Vec<u64> = received
        .iter()
        .filter(|p| p["type"] == "message")
        .map(|p| p["data"]["i"].as_u64().expect("i"))
        .collect();
    assert_eq!(
        numbers,
        (0..MESSAGES as u64).collect::<Vec<_>>(),
        "every accepted message, in order, before the goodbye"
    );
    let status = server.wait_exit(Duration::from_secs(40)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
}

/// A WebSocket on a raw socket with a 4 KiB receive buffer, subscribed to [`STALLED`]: its
/// `subscribed` reply (the first frame) has been read, nothing after it.
async fn raw_subscriber(server: &Server, user: &str) -> RawWs {
    let token = server.token(user);
    let mut ws = RawWs::connect(server.addr(), &format!("/ws?token={token}"), 4096)
        .await
        .expect("raw WebSocket");
    ws.send_text(&json!({"id": 1, "type": "subscribe", "channel": STALLED}).to_string())
        .await
        .expect("subscribe");
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.read_frame())
        .await
        .expect("subscribe reply in time")
        .expect("subscribe reply");
    assert!(
        String::from_utf8_lossy(&reply.payload).contains("subscribed"),
        "{reply:?}"
    );
    ws
}
