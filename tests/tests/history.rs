//! History and recovery: `history` over WebSocket and HTTP, and `subscribe` with `recover`
//! resuming exactly where a client left off, even while messages keep being published.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{assert_http_error, assert_ws_error, Server, WsClient};

/// The `public` plugin keeps this many messages per channel.
const PUBLIC_HISTORY: u64 = 100;

/// Publishes `{"n": 1}` … `{"n": count}` to `channel`; returns the epoch.
async fn publish_numbered(server: &Server, channel: &str, count: u64) -> String {
    let mut epoch = String::new();
    for n in 1..=count {
        let result = server.publish_ok(channel, &json!({ "n": n })).await;
        assert_eq!(
            result["offset"], n,
            "a fresh channel counts from 1: {result}"
        );
        epoch = result["epoch"].as_str().expect("epoch").to_owned();
    }
    epoch
}

/// The offsets of a history answer, checking that every message carries its own `n`.
fn offsets(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("messages must be an array: {messages}"))
        .iter()
        .map(|m| {
            let offset = m["offset"].as_u64().expect("offset");
            assert_eq!(m["data"], json!({ "n": offset }), "data of {m}");
            offset
        })
        .collect()
}

/// `GET /api/channels/{channel}/history?…` with `api_key` (or none).
async fn http_history(server: &Server, path: &str, api_key: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(server.http_url(path));
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    status_and_json(req.send().await.expect("GET history")).await
}

/// Reads the next push and checks it is `channel`'s message at `offset` with `{"n": offset}`.
async fn expect_message(ws: &mut WsClient, channel: &str, offset: u64) {
    let push = ws.recv_json().await;
    assert_eq!(push["type"], "message", "{push}");
    assert_eq!(push["channel"], channel, "{push}");
    assert_eq!(push["offset"], offset, "expected offset {offset}: {push}");
    assert_eq!(push["data"], json!({ "n": offset }), "{push}");
}

#[tokio::test]
async fn history_returns_the_latest_messages_oldest_first_within_the_history_size() {
    let server = Server::start().await;
    let channel = "public:news";
    let epoch = publish_numbered(&server, channel, 120).await;
    let mut ws = server.ws_as("u-reader", json!({})).await;

    let all = ws
        .request(json!({"type": "history", "channel": channel}))
        .await;
    assert_eq!(all["type"], "history", "{all}");
    assert_eq!(all["channel"], channel);
    assert_eq!(all["epoch"], epoch.as_str());
    let kept: Vec<u64> = (120 - PUBLIC_HISTORY + 1..=120).collect();
    assert_eq!(
        offsets(&all["messages"]),
        kept,
        "public keeps the latest 100"
    );

    let latest = ws
        .request(json!({"type": "history", "channel": channel, "limit": 5}))
        .await;
    assert_eq!(offsets(&latest["messages"]), vec![116, 117, 118, 119, 120]);

    let capped = ws
        .request(json!({"type": "history", "channel": channel, "limit": 1000}))
        .await;
    assert_eq!(
        offsets(&capped["messages"]),
        kept,
        "limit is capped by the history size"
    );

    let since = ws
        .request(json!({"type": "history", "channel": channel, "since": 117}))
        .await;
    assert_eq!(offsets(&since["messages"]), vec![118, 119, 120]);

    // Reading a channel the broker holds nothing for creates nothing: empty, with a fresh
    // epoch no message carries, so recovering from it is (honestly) not recovered.
    let untouched = ws
        .request(json!({"type": "history", "channel": "public:quiet"}))
        .await;
    assert_eq!(untouched["type"], "history", "{untouched}");
    assert_eq!(untouched["messages"], json!([]));
    assert!(untouched["epoch"].is_string(), "{untouched}");
    let subscribed = ws
        .request(json!({"type": "subscribe", "channel": "public:quiet",
                        "recover": {"epoch": untouched["epoch"], "offset": 0}}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_ne!(subscribed["epoch"], untouched["epoch"], "{subscribed}");
    // Held now (it has a subscriber): history reports the subscription's epoch.
    let held = ws
        .request(json!({"type": "history", "channel": "public:quiet"}))
        .await;
    assert_eq!(
        held["epoch"], subscribed["epoch"],
        "history and subscribe report the same epoch"
    );
}

#[tokio::test]
async fn history_is_only_for_those_who_may_subscribe() {
    const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
    const BOB: &str = "76ed43ef286fb55cf9e41beadb484a9f";
    let server = Server::start().await;
    let ada_channel = format!("user:{ADA}");
    server
        .publish_ok(&ada_channel, &json!({"notification": "graded"}))
        .await;

    let mut bob = server.ws_as(BOB, json!({"perm": "autor"})).await;
    let refused = bob
        .request(json!({"type": "history", "channel": ada_channel}))
        .await;
    assert_ws_error(&refused, "forbidden");
    let ungoverned = bob
        .request(json!({"type": "history", "channel": "nobody:x"}))
        .await;
    assert_ws_error(&ungoverned, "not_found");
    let bad = bob
        .request(json!({"type": "history", "channel": "no colon"}))
        .await;
    assert_ws_error(&bad, "bad_request");
    let bad_limit = bob
        .request(json!({"type": "history", "channel": ada_channel, "limit": "ten"}))
        .await;
    assert_ws_error(&bad_limit, "bad_request");

    let mut ada = server.ws_as(ADA, json!({"perm": "autor"})).await;
    let own = ada
        .request(json!({"type": "history", "channel": ada_channel}))
        .await;
    assert_eq!(own["type"], "history", "{own}");
    assert_eq!(
        own["messages"][0]["data"],
        json!({"notification": "graded"})
    );
}

#[tokio::test]
async fn history_passes_the_plugins_filter_for_the_readers_audience() {
    const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
    const CHAT: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";
    let server = Server::start().await;
    let everyone = json!({"text": "Willkommen"});
    let staff_only = json!({"text": "Klausur korrigiert", "visibility": "staff"});
    server.publish_ok(CHAT, &everyone).await;
    server.publish_ok(CHAT, &staff_only).await;

    let member = |status: &str| json!({"perm": "autor", "courses": { COURSE: status }});
    let mut autor = server.ws_as("autor-1", member("autor")).await;
    let seen = autor
        .request(json!({"type": "history", "channel": CHAT}))
        .await;
    assert_eq!(seen["type"], "history", "{seen}");
    assert_eq!(
        seen["messages"],
        json!([{"offset": 1, "data": everyone}]),
        "an autor must not see the staff message in history"
    );

    let mut tutor = server.ws_as("tutor-1", member("tutor")).await;
    let seen = tutor
        .request(json!({"type": "history", "channel": CHAT}))
        .await;
    assert_eq!(
        seen["messages"],
        json!([{"offset": 1, "data": everyone}, {"offset": 2, "data": staff_only}])
    );

    let mut stranger = server.ws_as("stranger", json!({"perm": "autor"})).await;
    let refused = stranger
        .request(json!({"type": "history", "channel": CHAT}))
        .await;
    assert_ws_error(&refused, "forbidden");

    // Stud.IP's server (API key) sees everything kept.
    let (status, body) = http_history(
        &server,
        &format!("/api/channels/{CHAT}/history"),
        Some(server.api_key()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(2), "{body}");
}

#[tokio::test]
async fn recovery_replays_the_missed_messages_before_live_ones() {
    let server = Server::start().await;
    let channel = "public:recover";
    let epoch = publish_numbered(&server, channel, 3).await;
    let mut ws = server.ws_as("u-back", json!({})).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": channel,
                        "recover": {"epoch": epoch, "offset": 1}}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 3, "{reply}");
    expect_message(&mut ws, channel, 2).await;
    expect_message(&mut ws, channel, 3).await;
    server.publish_ok(channel, &json!({"n": 4})).await;
    expect_message(&mut ws, channel, 4).await;

    // Already up to date: recovered, nothing to replay.
    let mut current = server.ws_as("u-current", json!({})).await;
    let reply = current
        .request(json!({"type": "subscribe", "channel": channel,
                        "recover": {"epoch": epoch, "offset": 4}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    server.publish_ok(channel, &json!({"n": 5})).await;
    expect_message(&mut current, channel, 5).await;

    // A plain subscribe says nothing about recovery.
    let (_plain, reply) = server.subscriber("u-plain", channel).await;
    assert!(reply.get("recovered").is_none(), "{reply}");
}

#[tokio::test]
async fn another_epoch_is_not_recovered_and_nothing_is_replayed() {
    let server = Server::start().await;
    let channel = "public:epochs";
    let epoch = publish_numbered(&server, channel, 3).await;
    let mut ws = server.ws_as("u-stale", json!({})).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": channel,
                        "recover": {"epoch": format!("{epoch}x"), "offset": 1}}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["epoch"], epoch.as_str());
    assert_eq!(reply["offset"], 3);
    server.publish_ok(channel, &json!({"n": 4})).await;
    expect_message(&mut ws, channel, 4).await;
}

#[tokio::test]
async fn a_gap_older_than_the_history_is_not_recovered_and_nothing_is_replayed() {
    let server = Server::start().await;
    let channel = "public:long-gone";
    let published = PUBLIC_HISTORY + 10;
    let epoch = publish_numbered(&server, channel, published).await;
    // Kept: 11..=110. From 9, offset 10 is missing: not recoverable, not even partly.
    let mut late = server.ws_as("u-late", json!({})).await;
    let reply = late
        .request(json!({"type": "subscribe", "channel": channel,
                        "recover": {"epoch": epoch, "offset": 9}}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], published);
    server
        .publish_ok(channel, &json!({"n": published + 1}))
        .await;
    expect_message(&mut late, channel, published + 1).await;

    // From 11 (kept: 12..=111), the oldest kept message is exactly the next one.
    let mut just_in_time = server.ws_as("u-in-time", json!({})).await;
    let reply = just_in_time
        .request(json!({"type": "subscribe", "channel": channel,
                        "recover": {"epoch": epoch, "offset": 11}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for offset in 12..=published + 1 {
        expect_message(&mut just_in_time, channel, offset).await;
    }
}

/// Reads `count` messages of `channel` and checks they continue `last` without a gap.
async fn read_contiguous(ws: &mut WsClient, channel: &str, last: &mut u64, count: u64) {
    for _ in 0..count {
        let push = ws.recv_json().await;
        assert_eq!(push["type"], "message", "{push}");
        assert_eq!(push["channel"], channel, "{push}");
        let offset = push["offset"].as_u64().expect("offset");
        assert_eq!(offset, *last + 1, "no gap, no duplicate: {push}");
        assert_eq!(push["data"], json!({ "n": offset }), "{push}");
        *last = offset;
    }
}

#[tokio::test]
async fn clients_recover_exactly_while_publishing_continues() {
    const CLIENTS: usize = 50;
    /// Upper bounds for the publisher, whatever happens to the clients.
    const MAX_MESSAGES: u64 = 5_000;
    let server = Arc::new(Server::start().await);
    let channel = "public:busy";
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));

    let publisher = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            // Paced, so that a reconnecting client stays well inside the 100 kept messages.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < MAX_MESSAGES {
                tick.tick().await;
                n += 1;
                let result = server.publish_ok(channel, &json!({ "n": n })).await;
                assert_eq!(result["offset"], n, "{result}");
            }
            n
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (server, done) = (server.clone(), done.clone());
            tokio::spawn(async move {
                let token = server.token(&format!("u-{i}"));
                let mut ws = server.ws(&format!("/ws?token={token}")).await;
                let reply = ws
                    .request(json!({"type": "subscribe", "channel": channel}))
                    .await;
                assert_eq!(reply["type"], "subscribed", "{reply}");
                let epoch = reply["epoch"].clone();
                let first = reply["offset"].as_u64().expect("offset");
                let mut last = first;
                read_contiguous(&mut ws, channel, &mut last, 5).await;
                ws.close().await;
                // Away for a while, so that messages are missed.
                tokio::time::sleep(Duration::from_millis(20 + 3 * i as u64)).await;

                let mut ws = server.ws(&format!("/ws?token={token}")).await;
                let reply = ws
                    .request(json!({"type": "subscribe", "channel": channel,
                                    "recover": {"epoch": epoch, "offset": last}}))
                    .await;
                assert_eq!(reply["recovered"], true, "client {i}: {reply}");
                assert_eq!(reply["epoch"], epoch, "{reply}");
                let latest = reply["offset"].as_u64().expect("offset");
                assert!(latest >= last, "{reply}");
                // Everything missed, then live ones that arrived meanwhile, in order.
                let missed = latest - last;
                read_contiguous(&mut ws, channel, &mut last, missed + 10).await;
                done.fetch_add(1, Ordering::Relaxed);
                (first, missed, last)
            })
        })
        .collect();

    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.push(client.await.expect("client task"));
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.expect("publisher task");
    assert_eq!(done.load(Ordering::Relaxed), CLIENTS);
    for &(first, _, last) in &outcomes {
        assert!(
            last >= first + 15 && last <= published,
            "{first}..{last} of {published}"
        );
    }
    let replayed: u64 = outcomes.iter().map(|&(_, missed, _)| missed).sum();
    assert!(
        replayed > 0,
        "some clients must have missed (and recovered) messages while away"
    );
}

#[tokio::test]
async fn http_history_needs_the_api_key() {
    let server = Server::start().await;
    let channel = "public:api";
    let epoch = publish_numbered(&server, channel, 4).await;
    let path = format!("/api/channels/{channel}/history");

    let (status, body) = http_history(&server, &path, None).await;
    assert_http_error(status, &body, 401, "unauthorized");
    let (status, body) = http_history(&server, &path, Some("not-the-key")).await;
    assert_http_error(status, &body, 401, "unauthorized");

    let key = Some(server.api_key());
    let (status, body) = http_history(&server, &path, key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel"], channel);
    assert_eq!(body["epoch"], epoch.as_str());
    assert_eq!(offsets(&body["messages"]), vec![1, 2, 3, 4]);

    let (_, body) = http_history(&server, &format!("{path}?limit=2"), key).await;
    assert_eq!(offsets(&body["messages"]), vec![3, 4]);
    let (_, body) = http_history(&server, &format!("{path}?since=1&limit=2"), key).await;
    assert_eq!(offsets(&body["messages"]), vec![3, 4]);
    let (_, body) = http_history(&server, &format!("{path}?since=2"), key).await;
    assert_eq!(offsets(&body["messages"]), vec![3, 4]);

    // A `/` in a channel name travels as `%2F`.
    server.publish_ok("public:a/b", &json!({ "n": 1 })).await;
    let (status, body) = http_history(&server, "/api/channels/public:a%2Fb/history", key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel"], "public:a/b");
    assert_eq!(offsets(&body["messages"]), vec![1]);

    let (status, body) = http_history(&server, "/api/channels/nobody:x/history", key).await;
    assert_http_error(status, &body, 404, "not_found");
    let (status, body) = http_history(&server, "/api/channels/no-colon/history", key).await;
    assert_http_error(status, &body, 400, "bad_request");
    let (status, body) = http_history(&server, &format!("{path}?limit=ten"), key).await;
    assert_http_error(status, &body, 400, "bad_request");
}
