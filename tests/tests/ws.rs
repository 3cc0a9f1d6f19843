//! WebSocket clients as a browser page uses them: connect, subscribe, receive what PHP publishes.

use serde_json::{json, Value};
use stellwerk_e2e::{Frame, Server};

/// What a subscriber must receive for a publish result and its data.
fn expected_push(result: &Value, data: &Value) -> Value {
    json!({
        "type": "message",
        "channel": result["channel"],
        "epoch": result["epoch"],
        "offset": result["offset"],
        "data": data,
    })
}

#[tokio::test]
async fn round_trip_with_connect_frame() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws").await;

    let connected = ws
        .request(json!({"id": 1, "type": "connect", "token": server.token("u-alice")}))
        .await;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["id"], 1);
    assert_eq!(connected["user"], "u-alice");
    assert!(
        connected["client"].as_str().is_some_and(|c| !c.is_empty()),
        "client id: {connected}"
    );

    let subscribed = ws
        .request(json!({"id": 2, "type": "subscribe", "channel": "public:news"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["id"], 2);
    assert_eq!(subscribed["channel"], "public:news");
    assert!(subscribed["epoch"].is_string(), "epoch: {subscribed}");
    let start = subscribed["offset"].as_u64().expect("numeric offset");

    // What a PHP observer of `NewsDidCreate` would send.
    let data = json!({"type": "news.created", "id": 42, "title": "Grüße aus Göttingen",
                      "nested": {"list": [1, 2.5, null, true, "x"]}});
    let (status, body) = server
        .publish(&json!({"channel": "public:news", "data": data}))
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results array");
    assert_eq!(results.len(), 1, "{body}");
    let result = &results[0];
    assert_eq!(result["channel"], "public:news");
    assert_eq!(result["epoch"], subscribed["epoch"], "same epoch: {body}");
    assert!(result["offset"].as_u64().expect("numeric offset") > start);

    let push = ws.recv_json().await;
    assert_eq!(push, expected_push(result, &data));
}

#[tokio::test]
async fn round_trip_with_token_in_url() {
    let server = Server::start().await;
    let token = server.token("u-bob");
    let mut ws = server.ws(&format!("/ws?token={token}")).await;

    // Commands work straight away …
    let subscribed = ws
        .request(json!({"id": 7, "type": "subscribe", "channel": "public:news"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    // … and `connect` without a token still tells the client who it is.
    let connected = ws.request(json!({"id": 8, "type": "connect"})).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["user"], "u-bob");
    assert!(connected["client"].as_str().is_some_and(|c| !c.is_empty()));

    let data = json!({"type": "news.updated", "id": 7});
    let result = server.publish_ok("public:news", &data).await;
    assert_eq!(ws.recv_json().await, expected_push(&result, &data));
}

#[tokio::test]
async fn data_may_be_any_json_value() {
    let server = Server::start().await;
    let (mut ws, _) = server.subscriber("u-carol", "public:news").await;
    for data in [
        json!("just a string"),
        json!(12.5),
        json!([1, "two", {"three": 3}]),
        json!(false),
        json!({"html": "<b>\"quoted\"\n</b>"}),
    ] {
        let result = server.publish_ok("public:news", &data).await;
        assert_eq!(ws.recv_json().await, expected_push(&result, &data));
    }
}

#[tokio::test]
async fn offsets_grow_by_one_and_subscribe_reports_the_latest() {
    let server = Server::start().await;
    let (mut ws, subscribed) = server.subscriber("u-dora", "public:counter").await;
    let epoch = subscribed["epoch"].clone();
    let start = subscribed["offset"].as_u64().unwrap();
    assert_eq!(
        start, 0,
        "a channel that never carried a message: {subscribed}"
    );

    for i in 1..=3u64 {
        let result = server.publish_ok("public:counter", &json!({"i": i})).await;
        assert_eq!(result["offset"], start + i, "{result}");
        assert_eq!(result["epoch"], epoch);
        let push = ws.recv_json().await;
        assert_eq!(push["offset"], start + i, "{push}");
    }

    let (_late, late_subscribed) = server.subscriber("u-emil", "public:counter").await;
    assert_eq!(late_subscribed["epoch"], epoch);
    assert_eq!(late_subscribed["offset"], start + 3, "{late_subscribed}");
}

#[tokio::test]
async fn multi_channel_publish_reaches_each_channel_in_request_order() {
    let server = Server::start().await;
    let (mut news, _) = server.subscriber("u-1", "public:news").await;
    let (mut ticker, _) = server.subscriber("u-2", "public:ticker").await;
    let (mut both, _) = server.subscriber("u-3", "public:news").await;
    let reply = both
        .request(json!({"type": "subscribe", "channel": "public:ticker"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let data = json!({"type": "announcement", "id": 5});
    let (status, body) = server
        .publish(&json!({"channels": ["public:ticker", "public:news"], "data": data}))
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{body}");
    assert_eq!(
        results[0]["channel"], "public:ticker",
        "request order: {body}"
    );
    assert_eq!(
        results[1]["channel"], "public:news",
        "request order: {body}"
    );

    assert_eq!(ticker.recv_json().await, expected_push(&results[0], &data));
    assert_eq!(news.recv_json().await, expected_push(&results[1], &data));
    let mut got = vec![both.recv_json().await, both.recv_json().await];
    got.sort_by_key(|p| p["channel"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        got,
        vec![
            expected_push(&results[1], &data),
            expected_push(&results[0], &data)
        ]
    );
}

#[tokio::test]
async fn ping_and_unsubscribe() {
    let server = Server::start().await;
    let (mut ws, _) = server.subscriber("u-fritz", "public:news").await;
    let pong = ws.request(json!({"id": 5, "type": "ping"})).await;
    assert_eq!(pong, json!({"id": 5, "type": "pong"}));

    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:ticker"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let reply = ws
        .request(json!({"id": 3, "type": "unsubscribe", "channel": "public:news"}))
        .await;
    assert_eq!(
        reply,
        json!({"id": 3, "type": "unsubscribed", "channel": "public:news"})
    );
    // Idempotent.
    let reply = ws
        .request(json!({"id": 4, "type": "unsubscribe", "channel": "public:news"}))
        .await;
    assert_eq!(
        reply,
        json!({"id": 4, "type": "unsubscribed", "channel": "public:news"})
    );

    // The news message must not arrive; the ticker message, published after it, must.
    server.publish_ok("public:news", &json!({"n": 1})).await;
    let marker = server.publish_ok("public:ticker", &json!({"n": 2})).await;
    assert_eq!(
        ws.recv_json().await,
        expected_push(&marker, &json!({"n": 2}))
    );
}

#[tokio::test]
async fn every_frame_without_batching_is_one_json_object() {
    const N: u64 = 300;
    let server = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 1024)
        .start()
        .await;
    let (mut plain, _) = server.subscriber("u-plain", "public:burst").await;

    let mut offsets = Vec::new();
    for n in 0..N {
        let result = server.publish_ok("public:burst", &json!({"n": n})).await;
        offsets.push(result["offset"].as_u64().unwrap());
    }
    // Read only now, so the broker had every chance to coalesce.
    for n in 0..N {
        let Frame::Text(text) = plain.recv_frame().await else {
            panic!("expected a text frame");
        };
        assert!(
            !text.contains('\n'),
            "frame {n} holds more than one line: {text:?}"
        );
        let push: Value = serde_json::from_str(&text).expect("one JSON object");
        assert_eq!(push["type"], "message");
        assert_eq!(push["data"]["n"], n, "{push}");
        assert_eq!(push["offset"], offsets[n as usize]);
    }
}

#[tokio::test]
async fn batching_clients_get_every_push_in_order() {
    const N: u64 = 300;
    let server = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 1024)
        .start()
        .await;
    let token = server.token("u-batch");
    let mut by_url = server.ws(&format!("/ws?token={token}&batch=1")).await;
    let reply = by_url
        .request(json!({"type": "subscribe", "channel": "public:burst"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let mut by_connect = server.ws("/ws").await;
    let reply = by_connect
        .request(json!({"type": "connect", "token": server.token("u-b2"), "batch": true}))
        .await;
    assert_eq!(reply["type"], "connected", "{reply}");
    by_connect.set_batch(true);
    let reply = by_connect
        .request(json!({"type": "subscribe", "channel": "public:burst"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let mut offsets = Vec::new();
    for n in 0..N {
        let result = server.publish_ok("public:burst", &json!({"n": n})).await;
        offsets.push(result["offset"].as_u64().unwrap());
    }
    for client in [&mut by_url, &mut by_connect] {
        let mut seen = 0u64;
        let mut frames = 0;
        while seen < N {
            let Frame::Text(text) = client.recv_frame().await else {
                panic!("expected a text frame");
            };
            frames += 1;
            assert!(!text.ends_with('\n'), "no trailing newline: {text:?}");
            for line in text.split('\n') {
                let push: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("line is not one JSON object ({e}): {line:?}"));
                assert_eq!(push["type"], "message", "{push}");
                assert_eq!(push["data"]["n"], seen, "in order: {push}");
                assert_eq!(push["offset"], offsets[seen as usize]);
                seen += 1;
            }
        }
        println!("{N} pushes arrived in {frames} frames");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_subscribers_get_thousand_messages_in_order() {
    const SUBSCRIBERS: usize = 100;
    const MESSAGES: u64 = 1000;
    // Ordering is under test here, not the slow-consumer cut-off: room for every message.
    let server = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 2048)
        .start()
        .await;
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (mut ws, subscribed) = server.subscriber(&format!("u-{i}"), "public:ordered").await;
        let epoch = subscribed["epoch"].clone();
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(MESSAGES as usize);
            for _ in 0..MESSAGES {
                let push = ws.recv_json().await;
                assert_eq!(push["type"], "message", "{push}");
                assert_eq!(push["epoch"], epoch, "{push}");
                got.push((
                    push["offset"].as_u64().expect("offset"),
                    push["data"]["n"].as_u64().expect("n"),
                ));
            }
            got
        }));
    }

    let mut expected = Vec::new();
    for n in 0..MESSAGES {
        let result = server.publish_ok("public:ordered", &json!({"n": n})).await;
        expected.push((result["offset"].as_u64().unwrap(), n));
    }
    for w in expected.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "publish offsets are contiguous");
    }

    let all = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures_util::future::join_all(readers),
    )
    .await
    .expect("subscribers finished within 60 s");
    for (i, got) in all.into_iter().enumerate() {
        let got = got.unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
        assert_eq!(got, expected, "subscriber {i} got every message in order");
    }
}
