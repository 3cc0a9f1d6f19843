//! Server-Sent Events as `EventSource` in a browser uses them.

use serde_json::{json, Value};
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{assert_http_error, Server, SseEvent, SseStream};

/// Reads the preamble: `retry:` first, then one `subscribed` event per channel (in any order).
/// Returns the `subscribed` payloads.
async fn read_preamble(sse: &mut SseStream, channels: &[&str]) -> Vec<Value> {
    let first = sse.next_event().await;
    assert_eq!(
        first.retry,
        Some(3000),
        "stream starts with `retry: 3000`: {first:?}"
    );
    let mut pending = vec![first];
    let mut subscribed = Vec::new();
    while subscribed.len() < channels.len() {
        let event = match pending.pop() {
            Some(e) => e,
            None => sse.next_event().await,
        };
        match event.event.as_deref() {
            Some("subscribed") => subscribed.push(event.json()),
            // The `retry:` block on its own, or a keep-alive comment.
            None if event.data.is_empty() => {}
            other => panic!("expected `subscribed`, got {other:?}: {event:?}"),
        }
    }
    for s in &subscribed {
        assert_eq!(s["type"], "subscribed", "{s}");
        assert!(s["epoch"].is_string(), "{s}");
        assert!(s["offset"].is_u64(), "{s}");
    }
    let mut names: Vec<&str> = subscribed
        .iter()
        .map(|s| s["channel"].as_str().unwrap_or_default())
        .collect();
    names.sort_unstable();
    let mut want = channels.to_vec();
    want.sort_unstable();
    assert_eq!(names, want, "one `subscribed` per channel");
    subscribed
}

fn assert_message_event(event: &SseEvent) {
    assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
    assert!(
        event.id.as_deref().is_some_and(|id| !id.is_empty()),
        "message events carry an id: {event:?}"
    );
}

#[tokio::test]
async fn sse_receives_exactly_what_websocket_receives() {
    let server = Server::start().await;
    let (mut ws, _) = server.subscriber("u-ws", "public:news").await;
    let token = server.token("u-sse");
    let mut sse = server
        .sse(&format!("/sse?channel=public:news&token={token}"))
        .await;
    assert_eq!(sse.status(), 200);
    assert!(
        sse.header("content-type").starts_with("text/event-stream"),
        "content-type: {}",
        sse.header("content-type")
    );
    assert_eq!(sse.header("cache-control"), "no-cache");
    assert_eq!(sse.header("x-accel-buffering"), "no");
    read_preamble(&mut sse, &["public:news"]).await;

    let data = json!({"type": "news.created", "id": 42, "text": "line one\nline two"});
    let result = server.publish_ok("public:news", &data).await;
    let push = ws.recv_json().await;
    let event = sse.next_message().await;
    assert_message_event(&event);
    assert_eq!(event.json(), push, "SSE data is the WebSocket push");
    assert_eq!(push["offset"], result["offset"]);
    assert_eq!(push["data"], data);
}

#[tokio::test]
async fn sse_with_bearer_header_and_two_channels() {
    let server = Server::start().await;
    let token = server.token("u-two");
    let resp = server
        .sse_response("/sse?channel=public:a&channel=public:b", Some(&token))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut sse = SseStream::new(resp);
    read_preamble(&mut sse, &["public:a", "public:b"]).await;

    let ra = server.publish_ok("public:a", &json!({"to": "a"})).await;
    let rb = server.publish_ok("public:b", &json!({"to": "b"})).await;
    let ea = sse.next_message().await;
    let eb = sse.next_message().await;
    assert_message_event(&ea);
    assert_message_event(&eb);
    assert_eq!(
        ea.json(),
        json!({"type": "message", "channel": "public:a", "epoch": ra["epoch"],
               "offset": ra["offset"], "data": {"to": "a"}})
    );
    assert_eq!(
        eb.json(),
        json!({"type": "message", "channel": "public:b", "epoch": rb["epoch"],
               "offset": rb["offset"], "data": {"to": "b"}})
    );
    assert_ne!(ea.id, eb.id, "the cursor moves with every message");
}

#[tokio::test]
async fn sse_refusals_are_json_errors() {
    let server = Server::start().await;
    let token = server.token("u-ref");
    let cases = [
        ("/sse?channel=public:news".to_owned(), 401, "unauthorized"),
        (
            "/sse?channel=public:news&token=not-a-token".to_owned(),
            401,
            "unauthorized",
        ),
        (format!("/sse?token={token}"), 400, "bad_request"),
        (
            format!("/sse?channel=nocolon&token={token}"),
            400,
            "bad_request",
        ),
        (
            format!("/sse?channel=public:news&channel=Bad:x&token={token}"),
            400,
            "bad_request",
        ),
        (
            format!("/sse?channel=nope:x&token={token}"),
            404,
            "not_found",
        ),
        (
            format!("/sse?channel=public:a&channel=public:a&token={token}"),
            400,
            "bad_request",
        ),
    ];
    for (path, status, code) in cases {
        let (got_status, body) = status_and_json(server.sse_response(&path, None).await).await;
        assert_eq!(got_status, status, "{path}: {body}");
        assert_http_error(got_status, &body, status, code);
    }
}

#[tokio::test]
async fn sse_anonymous_is_denied_by_the_public_plugin() {
    let server = Server::builder()
        .env("STELLWERK_ALLOW_ANONYMOUS", "true")
        .start()
        .await;
    let (status, body) =
        status_and_json(server.sse_response("/sse?channel=public:news", None).await).await;
    assert_http_error(status, &body, 403, "forbidden");
}

#[tokio::test]
async fn idle_stream_gets_keep_alive_comments() {
    let server = Server::builder()
        .env("STELLWERK_SSE_KEEPALIVE_SECONDS", 1)
        .start()
        .await;
    let token = server.token("u-idle");
    let mut sse = server
        .sse(&format!("/sse?channel=public:quiet&token={token}"))
        .await;
    read_preamble(&mut sse, &["public:quiet"]).await;
    let event = sse.next_event().await;
    assert_eq!(event.comments, vec!["keep-alive".to_owned()], "{event:?}");
    assert_eq!(event.event, None);
}
