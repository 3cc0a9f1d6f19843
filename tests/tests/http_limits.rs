//! The HTTP front door under attack, against the real binary at the TCP level: half-sent
//! requests under a lowered descriptor limit (slowloris), idle keep-alive connections, an SSE
//! reader that stops reading, and the connection caps (global 503, per user 429 / 4009), each
//! counted in `/metrics`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{assert_http_error, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ADMIN: &str = "admin-token-for-http-limits";

/// A request line and one header, never finished: what a slowloris client sends.
const HALF_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n";

/// `GET /healthz` on a fresh connection, `None` if no answer came within `limit`.
async fn healthz_within(addr: SocketAddr, limit: Duration) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let head = String::from_utf8_lossy(&answer);
        head.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

/// The broker's CPU time so far (user + system), in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `) `.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Open descriptors of the broker.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

async fn scrape(server: &Server) -> String {
    let resp = reqwest::Client::new()
        .get(server.http_url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.expect("metrics text")
}

/// The value of one sample line (`name{labels} value`) in a scrape.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample `{series}` in:\n{text}"))
}

#[tokio::test]
async fn half_sent_requests_cannot_keep_the_broker_out_of_descriptors() {
    const LIMIT: u32 = 96;
    let header_timeout = Duration::from_secs(2);
    let server = Server::builder()
        .open_files_limit(LIMIT)
        .env(
            "STELLWERK_HTTP_HEADER_READ_TIMEOUT_SECONDS",
            header_timeout.as_secs(),
        )
        .start()
        .await;
    let addr = server.addr();
    let pid = server.pid();
    assert_eq!(
        healthz_within(addr, Duration::from_secs(5)).await,
        Some(200)
    );

    // More half-sent requests than the broker has descriptors: once they run out, the rest
    // wait in the listen backlog, and so does every honest request behind them.
    let mut attackers = Vec::new();
    for _ in 0..LIMIT + 40 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(HALF_REQUEST)
            .await
            .expect("half a request");
        attackers.push(stream);
    }
    let attacked = Instant::now();
    // Out of descriptors: accept fails, `/healthz` is unreachable.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) + 2 < LIMIT as usize {
        assert!(
            Instant::now() < deadline,
            "the broker never ran out of descriptors ({} open)",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_before = cpu_ticks(pid);
    let measured = Instant::now();
    assert_eq!(
        healthz_within(addr, Duration::from_millis(1000)).await,
        None,
        "/healthz answered although every descriptor was taken"
    );
    // While it cannot accept, the broker waits instead of spinning on the error.
    let ticks = cpu_ticks(pid) - cpu_before;
    let window = measured.elapsed();
    if attacked.elapsed() < header_timeout {
        // Still inside the first header timeout: nothing was freed yet. A busy loop would use
        // about 100 ticks per second of one core; allow a quarter of that.
        let allowed = (window.as_secs_f64() * 25.0).ceil() as u64 + 5;
        assert!(
            ticks <= allowed,
            "{ticks} CPU ticks in {window:?} while out of descriptors: the accept loop spins"
        );
    }

    // The attackers keep their sockets open and send nothing more. The header timeout closes
    // the ones the broker holds, it accepts the backlog, and those time out in turn: `/healthz`
    // is reachable again after a few header timeouts (never without them).
    let deadline = Instant::now() + header_timeout * 6 + Duration::from_secs(5);
    loop {
        if healthz_within(addr, Duration::from_secs(1)).await == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still unreachable {:?} after the attack began",
            attacked.elapsed()
        );
    }
    let log = server.log();
    let lines = log.matches("cannot accept connections").count();
    assert!(lines >= 1, "the accept errors were not logged:\n{log}");
    // At most one line per second of the attack (plus the first).
    let allowed = attacked.elapsed().as_secs() as usize + 2;
    assert!(
        lines <= allowed,
        "{lines} accept-error lines in {:?}: not rate-limited",
        attacked.elapsed()
    );
    // The broker closed every attacker: each reads end-of-stream.
    for mut stream in attackers {
        let mut buf = [0u8; 1024];
        let end = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "an attacker's socket is still open");
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = Server::builder()
        .env("STELLWERK_HTTP_HEADER_READ_TIMEOUT_SECONDS", 1)
        .start()
        .await;
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The answer, then (without a second request) the broker's close.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        closed.is_ok(),
        "an idle keep-alive connection was kept open for 10 s"
    );
}

/// An SSE client that sends its request and then never reads: a 4 KiB receive buffer.
async fn stalled_sse_client(addr: SocketAddr, path_and_query: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    // The response head, to know the stream was accepted.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert_eq!(n, 1, "closed before the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

async fn subscribers_of(server: &Server, channel: &str) -> u64 {
    let resp = reqwest::Client::new()
        .get(server.http_url("/api/channels"))
        .bearer_auth(server.api_key())
        .send()
        .await
        .expect("GET /api/channels");
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, 200, "{body}");
    body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["channel"] == channel)
        .map_or(0, |c| c["subscribers"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn an_sse_reader_that_stops_reading_is_dropped_after_the_write_timeout() {
    const CHANNEL: &str = "public:stalled-sse";
    let server = Server::builder()
        .env("STELLWERK_WEBSOCKET_WRITE_TIMEOUT_SECONDS", 2)
        // Far more than is published: only the write timeout can end the stream.
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 100_000)
        .start()
        .await;
    let token = server.token("stalled");
    let mut stalled = stalled_sse_client(
        server.addr(),
        &format!("/sse?channel={CHANNEL}&token={token}"),
    )
    .await;
    let (mut honest, _) = server.subscriber("honest", CHANNEL).await;
    assert_eq!(subscribers_of(&server, CHANNEL).await, 2);

    // 16 KiB messages until far more than the socket buffers hold (bounded: 640 = 10 MiB).
    let blob = "x".repeat(16 * 1024);
    let published = Instant::now();
    for i in 0..640 {
        server
            .publish_ok(CHANNEL, &json!({"i": i, "blob": blob}))
            .await;
        let got = honest.recv_json().await;
        assert_eq!(got["data"]["i"], i, "the honest subscriber misses nothing");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while subscribers_of(&server, CHANNEL).await > 1 {
        assert!(
            Instant::now() < deadline,
            "the stalled SSE stream is still subscribed {:?} after publishing began",
            published.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The broker closed the socket: reading now drains what the kernel buffered, then ends.
    let mut buf = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the stalled stream's socket was not closed"
    );
    // The honest subscriber is still served.
    server.publish_ok(CHANNEL, &json!({"i": "after"})).await;
    assert_eq!(honest.recv_json().await["data"]["i"], "after");
}

/// `GET /ws` with the upgrade headers, as a browser sends it; status and JSON body of a refusal.
async fn ws_upgrade(server: &Server, path_and_query: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(server.http_url(path_and_query))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("GET /ws");
    status_and_json(resp).await
}

#[tokio::test]
async fn over_the_global_cap_websocket_and_sse_get_503_unavailable() {
    let server = Server::builder()
        .env("STELLWERK_LIMITS_MAX_CONNECTIONS", 2)
        .env("STELLWERK_ADMIN_TOKEN", ADMIN)
        .start()
        .await;
    let (ws, _) = server.subscriber("ada", "public:cap").await;
    let sse = server
        .sse(&format!(
            "/sse?channel=public:cap&token={}",
            server.token("bob")
        ))
        .await;

    let token = server.token("carl");
    let (status, body) = ws_upgrade(&server, &format!("/ws?token={token}")).await;
    assert_http_error(status, &body, 503, "unavailable");
    // Unauthenticated sockets count too: the cap is checked before the upgrade.
    let (status, body) = ws_upgrade(&server, "/ws").await;
    assert_http_error(status, &body, 503, "unavailable");
    let resp = server
        .sse_response(&format!("/sse?channel=public:cap&token={token}"), None)
        .await;
    let (status, body) = status_and_json(resp).await;
    assert_http_error(status, &body, 503, "unavailable");
    // The HTTP API is not a streaming connection: it keeps working.
    server.publish_ok("public:cap", &json!(1)).await;

    let metrics = scrape(&server).await;
    assert_eq!(
        sample(
            &metrics,
            "stellwerk_connections_refused_total{reason=\"max_connections\"}"
        ),
        3
    );
    // A place freed is a place taken again.
    ws.close().await;
    drop(sse);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = ws_upgrade(&server, &format!("/ws?token={token}")).await;
        if status == 101 {
            break;
        }
        assert_http_error(status, &body, 503, "unavailable");
        assert!(Instant::now() < deadline, "the freed places were not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn over_the_per_user_cap_429_before_the_upgrade_or_4009_after_connect() {
    let server = Server::builder()
        .env("STELLWERK_LIMITS_MAX_CONNECTIONS_PER_USER", 2)
        .env("STELLWERK_ADMIN_TOKEN", ADMIN)
        .start()
        .await;
    let token = server.token("ada");
    let mut first = server.ws(&format!("/ws?token={token}")).await;
    // Answered once the connection is registered.
    let connected = first.request(json!({"type": "connect"})).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let _second = server
        .sse(&format!("/sse?channel=public:tabs&token={token}"))
        .await;

    // `?token=` and SSE: refused before the upgrade or the stream, with a clear message.
    let (status, body) = ws_upgrade(&server, &format!("/ws?token={token}")).await;
    assert_http_error(status, &body, 429, "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many connections")),
        "{body}"
    );
    let resp = server
        .sse_response(&format!("/sse?channel=public:tabs&token={token}"), None)
        .await;
    let (status, body) = status_and_json(resp).await;
    assert_http_error(status, &body, 429, "rate_limited");

    // The token in the `connect` frame: an error reply, then close 4009 with a reason.
    let mut third = server.ws("/ws").await;
    third
        .send_json(&json!({"id": 7, "type": "connect", "token": token}))
        .await;
    let (code, reason) = third.expect_close().await;
    assert_eq!(code, 4009, "{reason}");
    assert!(reason.contains("too many connections"), "{reason}");
    let seen = third.take_pending();
    let error = seen
        .iter()
        .find(|v| v["type"] == "error")
        .unwrap_or_else(|| panic!("no error reply before the close: {seen:?}"));
    assert_eq!(error["id"], 7);
    assert_eq!(error["code"], "rate_limited");

    // Other users are not affected.
    let (_bob, _) = server.subscriber("bob", "public:tabs").await;

    let metrics = scrape(&server).await;
    assert_eq!(
        sample(
            &metrics,
            "stellwerk_connections_refused_total{reason=\"max_connections_per_user\"}"
        ),
        3
    );
    assert_eq!(
        sample(
            &metrics,
            "stellwerk_connections_refused_total{reason=\"max_connections\"}"
        ),
        0
    );

    // Closing a tab frees its place.
    first.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = ws_upgrade(&server, &format!("/ws?token={token}")).await;
        if status == 101 {
            break;
        }
        assert_http_error(status, &body, 429, "rate_limited");
        assert!(
            Instant::now() < deadline,
            "the closed tab's place stayed taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
