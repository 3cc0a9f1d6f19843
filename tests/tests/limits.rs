//! Limits that protect the broker: oversized frames and slow consumers.

use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::raw::{RawFrame, RawWs};
use stellwerk_e2e::Server;

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let server = Server::builder()
        .env("STELLWERK_LIMITS_MAX_FRAME_BYTES", 4096)
        .start()
        .await;
    let (mut ws, _) = server.subscriber("u-big", "public:news").await;

    // Just under the limit is fine …
    let small = json!({"id": 1, "type": "ping", "pad": "x".repeat(3000)});
    let reply = ws.request(small).await;
    assert_eq!(reply["type"], "pong", "{reply}");

    // … over it ends the connection with 1009.
    let big = json!({"id": 2, "type": "ping", "pad": "x".repeat(8192)});
    ws.send_json(&big).await;
    let (code, _reason) = ws.expect_close().await;
    assert_eq!(code, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_while_the_others_get_everything() {
    const MESSAGES: u64 = 1500;
    const PAD: usize = 16 * 1024;
    let server = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 16)
        .start()
        .await;
    let channel = "public:firehose";

    // A client that subscribes and then never reads again: tiny receive buffer, so the
    // broker's socket send buffer fills up and its queue for this client overflows.
    let token = server.token("u-stalled");
    let mut stalled = RawWs::connect(server.addr(), &format!("/ws?token={token}"), 4096)
        .await
        .expect("raw WebSocket");
    stalled
        .send_text(&json!({"id": 1, "type": "subscribe", "channel": channel}).to_string())
        .await
        .expect("send subscribe");
    let reply = stalled.read_frame().await.expect("subscribe reply");
    let reply: Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let mut readers = Vec::new();
    for name in ["u-reader-1", "u-reader-2"] {
        let (mut ws, _) = server.subscriber(name, channel).await;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(MESSAGES as usize);
            for _ in 0..MESSAGES {
                let push = ws.recv_json().await;
                assert_eq!(push["type"], "message", "{name}: {push}");
                got.push((
                    push["offset"].as_u64().unwrap(),
                    push["data"]["n"].as_u64().unwrap(),
                ));
            }
            got
        }));
    }

    let pad = "x".repeat(PAD);
    let mut expected = Vec::new();
    for n in 0..MESSAGES {
        let result = server
            .publish_ok(channel, &json!({"n": n, "pad": pad}))
            .await;
        expected.push((result["offset"].as_u64().unwrap(), n));
    }

    for (i, reader) in readers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap_or_else(|_| panic!("reader {i} did not finish within 60 s"))
            .unwrap_or_else(|e| panic!("reader {i}: {e}"));
        assert_eq!(got, expected, "reader {i} got every message in order");
    }

    // Now read what the stalled client was sent: the broker must have given up on it, so
    // the stream ends (close frame or EOF) before all messages arrived.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        let mut messages = 0u64;
        let mut close = None;
        while let Some(frame) = stalled.read_frame().await {
            match frame.opcode {
                RawFrame::TEXT => {
                    let text = String::from_utf8_lossy(&frame.payload);
                    messages += text.lines().filter(|l| l.contains("\"message\"")).count() as u64;
                }
                RawFrame::CLOSE => {
                    close = Some(frame.close_code());
                    break;
                }
                _ => {}
            }
        }
        (messages, close)
    })
    .await;
    let (messages, close) =
        drained.expect("the stalled client's connection was not ended by the broker within 30 s");
    assert!(
        messages < MESSAGES,
        "the stalled client was cut off, yet it received all {messages} messages"
    );
    if let Some(code) = close {
        assert_eq!(code, 4008, "slow consumers are closed with 4008");
    }
    println!("stalled client got {messages} of {MESSAGES} messages, close frame {close:?}");
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_with_4002() {
    let server = Server::builder()
        .env("STELLWERK_WEBSOCKET_PING_INTERVAL_SECONDS", 1)
        .env("STELLWERK_WEBSOCKET_PONG_TIMEOUT_SECONDS", 2)
        .start()
        .await;
    // The raw client never answers pings, like a laptop that went to sleep.
    let token = server.token("u-asleep");
    let mut asleep = RawWs::connect(server.addr(), &format!("/ws?token={token}"), 64 * 1024)
        .await
        .expect("raw WebSocket");
    let mut pings = 0;
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let frame = asleep.read_frame().await.expect("server closes, not drops");
            match frame.opcode {
                RawFrame::PING => pings += 1,
                RawFrame::CLOSE => return frame,
                _ => {}
            }
        }
    })
    .await
    .expect("the broker drops a silent peer within the pong timeout");
    assert!(pings >= 1, "the broker pinged before giving up");
    assert_eq!(close.close_code(), 4002);

    // A client that keeps reading (tungstenite answers pings while it reads) stays
    // connected well past the pong timeout.
    let (mut awake, _) = server.subscriber("u-awake", "public:news").await;
    for id in 10..18 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reply = awake.request(json!({"id": id, "type": "ping"})).await;
        assert_eq!(reply["type"], "pong", "{reply}");
    }
}
