//! Channel state has a lifetime: a client flooding distinct channel names, a quiet channel's
//! old history and a small history budget must not make the broker hold memory for ever.
//! What the engine holds is read from `/metrics` (`stellwerk_engine_channels`,
//! `stellwerk_history_messages`, `stellwerk_history_bytes`, `stellwerk_history_evicted_total`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{Server, WsClient};

const ADMIN: &str = "admin-token-for-channel-lifetime";
/// Upper bound for anything the sweeper should have done by now.
const SWEEP_DEADLINE: Duration = Duration::from_secs(30);
/// Commands in flight before their replies are read (keeps both socket buffers small).
const WINDOW: usize = 250;

async fn start(extra: &[(&str, &str)]) -> Server {
    let mut builder = Server::builder()
        .env("STELLWERK_ADMIN_TOKEN", ADMIN)
        .env("STELLWERK_ENGINE_CHANNEL_IDLE_SECONDS", 1)
        // The floods below measure the engine's own bound, not the rate limits that would
        // otherwise stop them after a few hundred commands.
        .env("STELLWERK_RATE_LIMITS_COMMANDS_PER_SECOND", 0)
        .env("STELLWERK_RATE_LIMITS_SUBSCRIPTIONS_PER_SECOND", 0);
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    builder.start().await
}

/// The sample `name` (no labels) of the broker's `/metrics`.
async fn gauge(server: &Server, name: &str) -> u64 {
    let resp = reqwest::Client::new()
        .get(server.http_url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Polls `name` until it equals `want` (at most [`SWEEP_DEADLINE`]); returns the last value.
async fn settles_at(server: &Server, name: &str, want: u64) -> u64 {
    let deadline = Instant::now() + SWEEP_DEADLINE;
    loop {
        let value = gauge(server, name).await;
        if value == want || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("/proc/<pid>/status of the broker");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Sends every command, [`WINDOW`] at a time, and checks each reply's `type`.
async fn pipeline(ws: &mut WsClient, commands: Vec<Value>, want: &[&str]) {
    for chunk in commands.chunks(WINDOW) {
        for (i, command) in chunk.iter().enumerate() {
            let mut command = command.clone();
            command["id"] = json!(i + 1);
            ws.send_json(&command).await;
        }
        for _ in chunk {
            let reply = ws.recv_json().await;
            let kind = reply["type"].as_str().unwrap_or_default();
            assert!(want.contains(&kind), "unexpected reply {reply}");
        }
    }
}

#[tokio::test]
async fn a_flood_of_distinct_channels_is_freed_after_the_sweep() {
    const READ: usize = 10_000;
    const SUBSCRIBED: usize = 5_000;
    const HELD: usize = 100;
    let server = start(&[]).await;
    let mut ws = server.ws_as("u-flood", json!({})).await;
    let baseline = gauge(&server, "stellwerk_engine_channels").await;
    assert_eq!(baseline, 0, "a fresh broker holds no channel");
    let rss_before = rss_kib(&server);

    let run = stellwerk_e2e::random_hex(4);
    let reads = (0..READ)
        .map(|i| json!({"type": "history", "channel": format!("public:read-{run}-{i}")}))
        .collect();
    pipeline(&mut ws, reads, &["history"]).await;
    assert_eq!(
        gauge(&server, "stellwerk_engine_channels").await,
        0,
        "reading the history of {READ} channels creates none"
    );

    let churn = (0..SUBSCRIBED)
        .flat_map(|i| {
            let channel = format!("public:churn-{run}-{i}");
            [
                json!({"type": "subscribe", "channel": channel}),
                json!({"type": "unsubscribe", "channel": channel}),
            ]
        })
        .collect();
    pipeline(&mut ws, churn, &["subscribed", "unsubscribed"]).await;
    // A few stay subscribed: the sweep must keep exactly those.
    let held = (0..HELD)
        .map(|i| json!({"type": "subscribe", "channel": format!("public:held-{run}-{i}")}))
        .collect();
    pipeline(&mut ws, held, &["subscribed"]).await;
    let rss_flooded = rss_kib(&server);

    let held_count = HELD as u64;
    let settled = settles_at(&server, "stellwerk_engine_channels", held_count).await;
    assert_eq!(
        settled, held_count,
        "after the sweep only the {HELD} subscribed channels are held"
    );
    let unsubscribe = (0..HELD)
        .map(|i| json!({"type": "unsubscribe", "channel": format!("public:held-{run}-{i}")}))
        .collect();
    pipeline(&mut ws, unsubscribe, &["unsubscribed"]).await;
    let settled = settles_at(&server, "stellwerk_engine_channels", baseline).await;
    assert_eq!(settled, baseline, "every flooded channel is freed again");
    let rss_after = rss_kib(&server);
    eprintln!(
        "broker VmRSS: {rss_before} KiB before, {rss_flooded} KiB after {} distinct channels, \
         {rss_after} KiB after the sweep",
        READ + SUBSCRIBED + HELD
    );
    // Loosely: freed memory may stay with the allocator, but the flood must not have left
    // the broker tens of MiB bigger.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // The connection and the broker still work.
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:after"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

#[tokio::test]
async fn a_quiet_channels_history_is_gone_after_its_age_without_a_publish() {
    let server = start(&[("STELLWERK_ENGINE_MAX_HISTORY_AGE_SECONDS", "2")]).await;
    let channel = "public:quiet";
    for n in 1..=3 {
        server.publish_ok(channel, &json!({ "n": n })).await;
    }
    let mut ws = server.ws_as("u-quiet", json!({})).await;
    let history = ws
        .request(json!({"type": "history", "channel": channel}))
        .await;
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(3),
        "{history}"
    );
    assert_eq!(gauge(&server, "stellwerk_history_messages").await, 3);
    assert!(gauge(&server, "stellwerk_history_bytes").await > 0);

    // Nothing is published any more: the sweeper alone drops the messages, then the channel.
    assert_eq!(
        settles_at(&server, "stellwerk_history_messages", 0).await,
        0
    );
    assert_eq!(gauge(&server, "stellwerk_history_bytes").await, 0);
    assert_eq!(settles_at(&server, "stellwerk_engine_channels", 0).await, 0);
    let history = ws
        .request(json!({"type": "history", "channel": channel}))
        .await;
    assert_eq!(history["messages"], json!([]), "{history}");
}

/// `GET /api/channels/{channel}/history` with the API key: (epoch, offsets kept).
async fn kept(server: &Server, channel: &str) -> (String, Vec<u64>) {
    let resp = reqwest::Client::new()
        .get(server.http_url(&format!("/api/channels/{channel}/history")))
        .bearer_auth(server.api_key())
        .send()
        .await
        .expect("GET history");
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, 200, "{body}");
    let offsets = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect();
    (body["epoch"].as_str().expect("epoch").to_owned(), offsets)
}

#[tokio::test]
async fn the_history_budget_evicts_the_oldest_channel_first_and_recovery_says_so() {
    const BUDGET: u64 = 64 * 1024;
    const PAD: usize = 8_000;
    let server = start(&[("STELLWERK_ENGINE_MAX_HISTORY_BYTES", "65536")]).await;
    let (old, new) = ("public:budget-old", "public:budget-new");
    let pad = "x".repeat(PAD);
    let mut old_epoch = String::new();
    for n in 1..=4 {
        let result = server.publish_ok(old, &json!({"n": n, "pad": pad})).await;
        old_epoch = result["epoch"].as_str().expect("epoch").to_owned();
    }
    let (_, before) = kept(&server, old).await;
    assert_eq!(before, vec![1, 2, 3, 4], "32 KB fit into the 64 KiB budget");
    let mut new_epoch = String::new();
    for n in 1..=6 {
        let result = server.publish_ok(new, &json!({"n": n, "pad": pad})).await;
        new_epoch = result["epoch"].as_str().expect("epoch").to_owned();
    }

    // 80 KB were published: the oldest messages, all of `old`'s channel, went first.
    let (_, newer) = kept(&server, new).await;
    assert_eq!(
        newer,
        vec![1, 2, 3, 4, 5, 6],
        "the newest channel keeps all"
    );
    let (epoch, older) = kept(&server, old).await;
    assert_eq!(epoch, old_epoch, "eviction keeps the epoch");
    assert!(
        !older.contains(&1) && older.last() == Some(&4),
        "the oldest messages of the oldest channel go first; kept {older:?}"
    );
    assert!(gauge(&server, "stellwerk_history_bytes").await <= BUDGET);
    assert!(gauge(&server, "stellwerk_history_evicted_total").await >= 1);

    // A client that saw nothing of `old` cannot recover it any more, and is told so.
    let mut late = server.ws_as("u-late", json!({})).await;
    let reply = late
        .request(json!({"type": "subscribe", "channel": old,
                        "recover": {"epoch": old_epoch, "offset": 0}}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"], false, "offset 1 was evicted: {reply}");
    // One whose gap is still kept recovers exactly that.
    let from = older.first().copied().expect("something of `old` is kept") - 1;
    let mut back = server.ws_as("u-back", json!({})).await;
    let reply = back
        .request(json!({"type": "subscribe", "channel": old,
                        "recover": {"epoch": old_epoch, "offset": from}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for offset in older {
        let push = back.recv_json().await;
        assert_eq!(push["offset"], offset, "{push}");
    }
    let mut fresh = server.ws_as("u-fresh", json!({})).await;
    let reply = fresh
        .request(json!({"type": "subscribe", "channel": new,
                        "recover": {"epoch": new_epoch, "offset": 0}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
}
