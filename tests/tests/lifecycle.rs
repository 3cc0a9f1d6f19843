//! Connections that always end: a peer that stops reading at the TCP level is cut off and
//! deregistered at once, while the broker's write to it is blocked; nothing is written to it
//! after the cut; queues are bounded in bytes; the unauthenticated phase has one deadline for
//! reads and writes.

use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::raw::{RawFrame, RawWs};
use stellwerk_e2e::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The size of each published message: a few of them fill a 4 KiB receive buffer.
const PAD: usize = 16 * 1024;

/// `subscribers` of `channel` in `GET /api/channels` (0 when it is not listed).
async fn subscribers(server: &Server, channel: &str) -> u64 {
    let resp = reqwest::Client::new()
        .get(server.http_url(&format!("/api/channels?prefix={channel}")))
        .bearer_auth(server.api_key())
        .send()
        .await
        .expect("GET /api/channels");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["channel"] == channel)
        .map_or(0, |c| c["subscribers"].as_u64().expect("count"))
}

/// A raw WebSocket (4 KiB receive buffer) of `user`, subscribed to `channel`; the test then
/// stops reading from it.
async fn stalled_subscriber(server: &Server, user: &str, channel: &str) -> RawWs {
    let token = server.token(user);
    let mut raw = RawWs::connect(server.addr(), &format!("/ws?token={token}"), 4096)
        .await
        .expect("raw WebSocket");
    raw.send_text(&json!({"id": 1, "type": "subscribe", "channel": channel}).to_string())
        .await
        .expect("send subscribe");
    let reply = raw.read_frame().await.expect("subscribe reply");
    let reply: Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
    assert_eq!(reply["type"], "subscribed", "{reply}");
    raw
}

/// What a stalled client finds once it reads again.
#[derive(Debug, Default)]
struct Drained {
    /// Offsets of the message pushes, in arrival order.
    offsets: Vec<u64>,
    /// The `disconnect` push's code, if it arrived.
    disconnect: Option<u64>,
    /// The close frame's code, if it arrived (else the broker just dropped the socket).
    close: Option<u16>,
    /// Message pushes that arrived after the `disconnect` push.
    after_disconnect: usize,
}

/// Reads everything until the close frame or EOF; fails if neither comes within 30 s.
async fn drain(raw: &mut RawWs) -> Drained {
    let mut drained = Drained::default();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = raw.read_frame().await {
            match frame.opcode {
                RawFrame::TEXT => {
                    for line in String::from_utf8_lossy(&frame.payload).lines() {
                        let Ok(push) = serde_json::from_str::<Value>(line) else {
                            continue;
                        };
                        match push["type"].as_str() {
                            Some("message") => {
                                if drained.disconnect.is_some() {
                                    drained.after_disconnect += 1;
                                }
                                drained.offsets.push(push["offset"].as_u64().unwrap());
                            }
                            Some("disconnect") => drained.disconnect = push["code"].as_u64(),
                            _ => {}
                        }
                    }
                }
                RawFrame::CLOSE => {
                    drained.close = Some(frame.close_code());
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the broker ends a cut-off connection (close frame or EOF) within 30 s");
    drained
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_deregistered_at_the_cut_and_sent_nothing_after_it() {
    const MAX_MESSAGES: usize = 1500;
    const AFTER_CUT: usize = 20;
    let server = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 16)
        // Only the cut-off may end this connection, not the write timeout.
        .env("STELLWERK_WEBSOCKET_WRITE_TIMEOUT_SECONDS", 600)
        .start()
        .await;
    let channel = "public:firehose";
    let mut stalled = stalled_subscriber(&server, "u-stalled", channel).await;
    let (mut reader_ws, _) = server.subscriber("u-reader", channel).await;
    assert_eq!(subscribers(&server, channel).await, 2);

    // Publish until the broker has deregistered the stalled client; the reader keeps up.
    let pad = "x".repeat(PAD);
    let mut published = Vec::new();
    let mut deregistered = false;
    for n in 0..MAX_MESSAGES {
        let result = server
            .publish_ok(channel, &json!({"n": n, "pad": pad}))
            .await;
        published.push(result["offset"].as_u64().unwrap());
        let push = reader_ws.recv_json().await;
        assert_eq!(
            push["offset"], result["offset"],
            "the reader keeps up: {push}"
        );
        if subscribers(&server, channel).await == 1 {
            deregistered = true;
            break;
        }
    }
    assert!(
        deregistered,
        "after {MAX_MESSAGES} messages the stalled client is still subscribed"
    );
    // The broker's write to the stalled client is blocked right now (it has not read a byte
    // since subscribing), yet the cut took effect: messages from now on reach only the reader.
    let cut_at = published.len();
    for n in 0..AFTER_CUT {
        let result = server
            .publish_ok(channel, &json!({"after": n, "pad": pad}))
            .await;
        published.push(result["offset"].as_u64().unwrap());
        let push = reader_ws.recv_json().await;
        assert_eq!(push["offset"], result["offset"], "{push}");
    }
    assert_eq!(subscribers(&server, channel).await, 1);

    let drained = drain(&mut stalled).await;
    println!(
        "stalled client: {} messages before the cut at #{cut_at}, disconnect {:?}, close {:?}",
        drained.offsets.len(),
        drained.disconnect,
        drained.close
    );
    let first_after_cut = published[cut_at];
    assert!(
        drained.offsets.iter().all(|&o| o < first_after_cut),
        "messages published after the cut reached the stalled client: {:?}",
        drained
            .offsets
            .iter()
            .filter(|&&o| o >= first_after_cut)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        drained.after_disconnect, 0,
        "a message after the disconnect push"
    );
    assert!(
        drained.offsets.len() < cut_at,
        "the stalled client cannot have got everything"
    );
    if let Some(code) = drained.disconnect {
        assert_eq!(code, 4008);
    }
    if let Some(code) = drained.close {
        assert_eq!(code, 4008, "slow consumers are closed with 4008");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_deregistered_by_the_disconnect_api_at_once() {
    // Far below the queue bounds (1024 pushes, 8 MiB), far above what the sockets buffer: the
    // broker's write to the stalled client blocks, and its queue is not full.
    const MESSAGES: usize = 300;
    let server = Server::builder()
        .env("STELLWERK_ADMIN_TOKEN", "admin-secret")
        .env("STELLWERK_WEBSOCKET_WRITE_TIMEOUT_SECONDS", 600)
        .start()
        .await;
    let channel = "public:lecture";
    let mut stalled = stalled_subscriber(&server, "u-logged-out", channel).await;
    let reading = {
        let (ws, _) = server.subscriber("u-reader", channel).await;
        tokio::spawn(collect(ws, MESSAGES + 5))
    };

    let pad = "x".repeat(PAD);
    let mut published = Vec::new();
    for n in 0..MESSAGES {
        let result = server
            .publish_ok(channel, &json!({"n": n, "pad": pad}))
            .await;
        published.push(result["offset"].as_u64().unwrap());
    }
    assert_eq!(subscribers(&server, channel).await, 2);

    let body = server.disconnect_user("u-logged-out").await;
    assert_eq!(body["disconnected"], 1, "{body}");
    // No waiting: by the time the API answers, the subscription is gone.
    assert_eq!(
        subscribers(&server, channel).await,
        1,
        "the disconnected user is still subscribed while its socket write is blocked"
    );
    for n in 0..5 {
        let result = server.publish_ok(channel, &json!({"after": n})).await;
        published.push(result["offset"].as_u64().unwrap());
    }
    let got = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the reader finishes within 60 s")
        .expect("reader");
    assert_eq!(got, published, "the reader got everything in order");
    // Not a slow consumer: the queue never overflowed.
    let metrics = reqwest::Client::new()
        .get(server.http_url("/metrics"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics
            .lines()
            .any(|l| l == "stellwerk_slow_consumers_total 0"),
        "{metrics}"
    );

    let drained = drain(&mut stalled).await;
    println!(
        "disconnected client: {} of {MESSAGES} messages, disconnect {:?}, close {:?}",
        drained.offsets.len(),
        drained.disconnect,
        drained.close
    );
    let first_after_cut = published[MESSAGES];
    assert!(drained.offsets.iter().all(|&o| o < first_after_cut));
    assert_eq!(
        drained.after_disconnect, 0,
        "a message after the disconnect push"
    );
    if let Some(code) = drained.disconnect {
        assert_eq!(code, 4003);
    }
    if let Some(code) = drained.close {
        assert_eq!(code, 4003, "a disconnected user is closed with 4003");
    }
}

async fn collect(mut ws: stellwerk_e2e::WsClient, count: usize) -> Vec<u64> {
    let mut offsets = Vec::with_capacity(count);
    for _ in 0..count {
        let push = ws.recv_json().await;
        assert_eq!(push["type"], "message", "{push}");
        offsets.push(push["offset"].as_u64().unwrap());
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_over_its_byte_bound_is_cut_off_with_4008() {
    // 300 messages never reach the count bound (1024); 256 KiB of them do reach the byte bound.
    const MESSAGES: usize = 300;
    let server = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_MAX_BYTES", 256 * 1024)
        // Only the byte bound may end this connection, not the write timeout.
        .env("STELLWERK_WEBSOCKET_WRITE_TIMEOUT_SECONDS", 600)
        .env("STELLWERK_ADMIN_TOKEN", "admin-secret")
        .start()
        .await;
    let channel = "public:bytes";
    let mut stalled = stalled_subscriber(&server, "u-stalled", channel).await;
    let reading = {
        let (ws, _) = server.subscriber("u-reader", channel).await;
        tokio::spawn(collect(ws, MESSAGES))
    };

    let pad = "x".repeat(PAD);
    let mut published = Vec::new();
    let mut cut_at = None;
    for n in 0..MESSAGES {
        let result = server
            .publish_ok(channel, &json!({"n": n, "pad": pad}))
            .await;
        published.push(result["offset"].as_u64().unwrap());
        if cut_at.is_none() && subscribers(&server, channel).await == 1 {
            cut_at = Some(published.len());
        }
    }
    let cut_at = cut_at.expect("the stalled client was never cut off by the byte bound");
    let got = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the reader finishes within 60 s")
        .expect("reader");
    assert_eq!(got, published, "the reader got everything in order");
    let metrics = reqwest::Client::new()
        .get(server.http_url("/metrics"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics
            .lines()
            .any(|l| l == "stellwerk_slow_consumers_total 1"),
        "{metrics}"
    );

    let drained = drain(&mut stalled).await;
    println!(
        "byte-bound client: cut after #{cut_at}, {} messages, disconnect {:?}, close {:?}",
        drained.offsets.len(),
        drained.disconnect,
        drained.close
    );
    assert!(drained.offsets.len() < cut_at);
    assert_eq!(
        drained.after_disconnect, 0,
        "a message after the disconnect push"
    );
    if let Some(code) = drained.disconnect {
        assert_eq!(code, 4008);
    }
    if let Some(code) = drained.close {
        assert_eq!(code, 4008, "an overflowing byte bound closes with 4008");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_that_never_reads_is_closed_at_the_connect_deadline() {
    let server = Server::builder()
        .env("STELLWERK_WEBSOCKET_CONNECT_TIMEOUT_SECONDS", 2)
        .start()
        .await;
    // No token, no `connect`: every command gets an `unauthorized` reply, which this client
    // never reads. Once the sockets' buffers are full, the broker's reply write blocks; then it
    // stops reading and our writes block too, until the broker drops the connection.
    let mut raw = RawWs::connect(server.addr(), "/ws", 4096)
        .await
        .expect("raw WebSocket");
    let command = |id: u64| json!({"id": id, "type": "ping", "pad": "x".repeat(1000)}).to_string();
    let flood = tokio::time::timeout(Duration::from_secs(30), async {
        for id in 0..1_000_000u64 {
            if let Err(error) = raw.send_text(&command(id)).await {
                return Some((id, error));
            }
        }
        None
    })
    .await
    .expect("the broker did not drop the flooding client within 30 s");
    let (sent, error) = flood.expect("a million commands went through without the broker reading");
    println!("flood ended after {sent} commands: {error}");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error}"
    );
    // The broker still serves everybody else.
    let (mut ws, _) = server.subscriber("u-fine", "public:news").await;
    let reply = ws.request(json!({"id": 9, "type": "ping"})).await;
    assert_eq!(reply["type"], "pong", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_stream_is_deregistered_at_the_cut() {
    const MAX_MESSAGES: usize = 1500;
    let server = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 16)
        .start()
        .await;
    let channel = "public:sse-firehose";
    // An `EventSource` whose tab froze: it reads the response head, then nothing more.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(server.addr()).await.expect("connect");
    let token = server.token("u-frozen");
    let request = format!(
        "GET /sse?channel={channel}&token={token} HTTP/1.1\r\nHost: {}\r\n\
         Accept: text/event-stream\r\n\r\n",
        server.addr()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "closed before the response head");
            head.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("response head within 10 s");
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let (mut reader_ws, _) = server.subscriber("u-reader", channel).await;
    assert_eq!(subscribers(&server, channel).await, 2);

    let pad = "x".repeat(PAD);
    let mut deregistered = false;
    for n in 0..MAX_MESSAGES {
        let result = server
            .publish_ok(channel, &json!({"n": n, "pad": pad}))
            .await;
        let push = reader_ws.recv_json().await;
        assert_eq!(push["offset"], result["offset"], "{push}");
        if subscribers(&server, channel).await == 1 {
            deregistered = true;
            break;
        }
    }
    assert!(
        deregistered,
        "after {MAX_MESSAGES} messages the frozen SSE stream is still subscribed"
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_progress_ends_the_connection_at_the_write_timeout() {
    // Below both queue bounds, so only the write timeout can end the stalled connection.
    const MESSAGES: usize = 100;
    let server = Server::builder()
        .env("STELLWERK_WEBSOCKET_WRITE_TIMEOUT_SECONDS", 2)
        .start()
        .await;
    let channel = "public:stuck";
    let _stalled = stalled_subscriber(&server, "u-stuck", channel).await;
    let pad = "x".repeat(PAD);
    for n in 0..MESSAGES {
        server
            .publish_ok(channel, &json!({"n": n, "pad": pad}))
            .await;
    }
    let mut polls = 0;
    while subscribers(&server, channel).await > 0 {
        polls += 1;
        assert!(
            polls < 300,
            "the stalled connection is still subscribed 30 s after its write blocked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log();
    assert!(
        log.contains("write made no progress for 2s"),
        "the broker says why it dropped the connection:\n{log}"
    );
}
