//! Rate limits, on by default: a client flooding publishes or subscribe churn gets
//! `rate_limited` and keeps its connection, the other members are unaffected and see only what
//! was accepted; PHP flooding `POST /api/publish` gets 429 with `Retry-After`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stellwerk_e2e::{assert_http_error, assert_ws_error, Server, WsClient};

const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const CHAT: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";

// Stud.IP user ids (32 hex characters), named after their role in the tests.
const MALLORY: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const BOB: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
const CARL: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

const ADMIN_TOKEN: &str = "rate-limits-admin";

/// The defaults of `[rate_limits]` (docs/configuration.md).
const PUBLISHES_PER_SECOND: u64 = 10;
const PUBLISHES_BURST: u64 = 50;
const SUBSCRIPTIONS_PER_SECOND: u64 = 5;
const SUBSCRIPTIONS_BURST: u64 = 150;

/// Frames sent before their replies are read: keeps both sides' socket buffers small.
const CHUNK: u64 = 100;

/// Claims of a course member with status `autor` (may chat).
fn member() -> Value {
    json!({"perm": "autor", "courses": { COURSE: "autor" }})
}

async fn start(builder: stellwerk_e2e::ServerBuilder) -> Server {
    builder
        .env("STELLWERK_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await
}

/// Sends `count` commands made by `command(id)` in chunks, returning every reply in order
/// (replies come in command order, since the connection gets no pushes here).
async fn flood(ws: &mut WsClient, count: u64, command: impl Fn(u64) -> Value) -> Vec<Value> {
    let mut replies = Vec::with_capacity(count as usize);
    let mut id = 1;
    while id <= count {
        let end = (id + CHUNK).min(count + 1);
        for n in id..end {
            ws.send_json(&command(n)).await;
        }
        for n in id..end {
            let reply = ws.recv_json().await;
            assert_eq!(reply["id"], n, "replies in command order: {reply}");
            replies.push(reply);
        }
        id = end;
    }
    replies
}

/// Every push to `ws` queued before the broker answered a `ping` sent now (the broker writes
/// queued pushes before it reads the next command).
async fn pushes_so_far(ws: &mut WsClient) -> Vec<Value> {
    let pong = ws.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    ws.take_pending()
}

/// `stellwerk_rate_limited_total{limit="…"}` from `/metrics`.
async fn refusals(server: &Server, limit: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(server.http_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let prefix = format!("stellwerk_rate_limited_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix}in /metrics:\n{text}"))
}

/// The most a bucket admits over `elapsed`: its burst plus its rate times the time, plus one
/// second of slack for the time between the test's clock and the broker's.
fn most_admitted(burst: u64, per_second: u64, elapsed: Duration) -> u64 {
    burst + per_second * (elapsed.as_secs() + 2)
}

#[tokio::test]
async fn a_publish_flood_is_rate_limited_and_the_others_get_exactly_what_was_accepted() {
    const PUBLISHES: u64 = 2000;
    let server = start(Server::builder()).await;
    let mut readers = Vec::new();
    for reader in [BOB, CARL] {
        let mut ws = server.ws_as(reader, member()).await;
        let reply = ws
            .request(json!({"type": "subscribe", "channel": CHAT}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        readers.push(ws);
    }
    let mut mallory = server.ws_as(MALLORY, member()).await;

    let started = Instant::now();
    let replies = flood(&mut mallory, PUBLISHES, |n| {
        json!({"id": n, "type": "publish", "channel": CHAT, "data": {"text": format!("spam {n}"), "n": n}})
    })
    .await;
    let elapsed = started.elapsed();

    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut named_publishes = false;
    for reply in &replies {
        if reply["type"] == "published" {
            accepted.push((
                reply["offset"].as_u64().expect("offset"),
                reply["id"].clone(),
            ));
        } else {
            assert_ws_error(reply, "rate_limited");
            let message = reply["message"].as_str().unwrap();
            assert!(message.contains("retry in"), "{message}");
            named_publishes |= message.contains("rate_limits.publishes_per_second");
            refused += 1;
        }
    }
    assert!(refused > 0, "2,000 publishes, none rate-limited");
    assert!(
        named_publishes,
        "some refusal names the publish limit: {replies:?}"
    );
    assert!(!accepted.is_empty(), "the first publishes are accepted");
    let most = most_admitted(PUBLISHES_BURST, PUBLISHES_PER_SECOND, elapsed);
    assert!(
        accepted.len() as u64 <= most,
        "{} publishes accepted in {elapsed:?}, the limit allows at most {most}",
        accepted.len()
    );

    // The connection lives on: after a pause it publishes again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pong = mallory.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    let last = mallory
        .request(json!({"id": 9999, "type": "publish", "channel": CHAT, "data": {"text": "sorry", "n": 9999}}))
        .await;
    assert_eq!(last["type"], "published", "{last}");
    accepted.push((last["offset"].as_u64().unwrap(), json!(9999)));

    // Every reader gets exactly the accepted publishes, in order, nothing refused.
    for (i, reader) in readers.iter_mut().enumerate() {
        let mut got = Vec::new();
        let mut pushes = Vec::new();
        while got.len() < accepted.len() {
            let push = reader.recv_skipping_presence().await;
            assert_eq!(push["type"], "message", "reader {i}: {push}");
            got.push((push["offset"].as_u64().unwrap(), push["data"]["n"].clone()));
            pushes.push(push);
        }
        assert_eq!(got, accepted, "reader {i}");
        let extra: Vec<Value> = pushes_so_far(reader)
            .await
            .into_iter()
            .filter(|p| p["type"] == "message")
            .collect();
        assert!(
            extra.is_empty(),
            "reader {i} got refused messages: {extra:?}"
        );
    }

    assert!(refusals(&server, "publishes").await > 0);
    assert_eq!(refusals(&server, "api_publishes").await, 0);
}

#[tokio::test]
async fn subscribe_churn_on_a_presence_channel_is_rate_limited_and_bounds_join_and_leave() {
    const COMMANDS: u64 = 2000;
    let server = start(Server::builder()).await;
    let mut watcher = server.ws_as(BOB, member()).await;
    let reply = watcher
        .request(json!({"type": "subscribe", "channel": CHAT}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut mallory = server.ws_as(MALLORY, member()).await;

    // subscribe, unsubscribe, subscribe, … as fast as the socket takes them.
    let started = Instant::now();
    let replies = flood(&mut mallory, COMMANDS, |n| {
        let kind = if n % 2 == 1 {
            "subscribe"
        } else {
            "unsubscribe"
        };
        json!({"id": n, "type": kind, "channel": CHAT})
    })
    .await;
    let elapsed = started.elapsed();

    // What the broker did, from its replies: each subscription that started or ended is one
    // presence change the watcher must see.
    let mut subscribed = false;
    let mut changes = Vec::new();
    let mut refused = 0;
    let mut admitted = 0;
    for reply in &replies {
        match reply["type"].as_str() {
            Some("subscribed") => {
                assert!(!subscribed, "{reply}");
                subscribed = true;
                changes.push("join");
                admitted += 1;
            }
            Some("unsubscribed") => {
                if subscribed {
                    changes.push("leave");
                }
                subscribed = false;
                admitted += 1;
            }
            _ if reply["code"] == "rate_limited" => {
                assert_ws_error(reply, "rate_limited");
                refused += 1;
            }
            // Subscribing while subscribed (the unsubscribe before it was refused): admitted
            // by the bucket, refused by the hub.
            _ => {
                assert_ws_error(reply, "bad_request");
                admitted += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "2,000 subscribes and unsubscribes, none rate-limited"
    );
    let most = most_admitted(SUBSCRIPTIONS_BURST, SUBSCRIPTIONS_PER_SECOND, elapsed);
    assert!(
        admitted <= most,
        "{admitted} subscribes/unsubscribes admitted in {elapsed:?}, the limit allows {most}"
    );

    // The watcher sees exactly those changes, no more: join, leave, join, …
    let seen: Vec<String> = pushes_so_far(&mut watcher)
        .await
        .into_iter()
        .filter(|p| p["type"] == "join" || p["type"] == "leave")
        .map(|p| {
            assert_eq!(p["user"], MALLORY, "{p}");
            p["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(seen, changes, "presence pushes to the other member");
    assert!(seen.len() as u64 <= most);

    // The connection lives on: after a pause, its state is what the replies said.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = mallory
        .request(json!({"type": "presence", "channel": CHAT}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    let members = reply["members"].as_array().expect("members").len();
    assert_eq!(members, if subscribed { 2 } else { 1 }, "{reply}");
    assert!(refusals(&server, "subscriptions").await > 0);
}

#[tokio::test]
async fn the_limits_are_configurable_and_zero_turns_one_off() {
    const PUBLISHES: u64 = 400;
    // Publishes unlimited, commands too (400 would exceed their default burst of 300) …
    let server = start(
        Server::builder()
            .env("STELLWERK_RATE_LIMITS_PUBLISHES_PER_SECOND", 0)
            .env("STELLWERK_RATE_LIMITS_COMMANDS_PER_SECOND", 0)
            // … and subscribe churn much tighter than by default.
            .env("STELLWERK_RATE_LIMITS_SUBSCRIPTIONS_PER_SECOND", 1)
            .env("STELLWERK_RATE_LIMITS_SUBSCRIPTIONS_BURST", 3),
    )
    .await;
    let mut ws = server.ws_as(MALLORY, member()).await;
    let replies = flood(
        &mut ws,
        PUBLISHES,
        |n| json!({"id": n, "type": "publish", "channel": CHAT, "data": {"n": n}}),
    )
    .await;
    for reply in &replies {
        assert_eq!(reply["type"], "published", "{reply}");
    }

    // A burst of 3 at once, then one a second: 20 at once cannot all pass.
    let outcomes = flood(&mut ws, 20, |n| {
        let kind = if n % 2 == 1 {
            "subscribe"
        } else {
            "unsubscribe"
        };
        json!({"id": n, "type": kind, "channel": CHAT})
    })
    .await;
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds[..3],
        ["subscribed", "unsubscribed", "subscribed"],
        "the burst passes: {outcomes:?}"
    );
    let refused = outcomes
        .iter()
        .find(|r| r["code"] == "rate_limited")
        .unwrap_or_else(|| panic!("20 subscribes at a burst of 3: {outcomes:?}"));
    assert_ws_error(refused, "rate_limited");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("rate_limits.subscriptions_burst = 3"),
        "{message}"
    );
    assert_eq!(refusals(&server, "publishes").await, 0);
    assert_eq!(refusals(&server, "commands").await, 0);
}

#[tokio::test]
async fn an_http_publish_flood_gets_429_with_retry_after_then_is_accepted_again() {
    const MAX_REQUESTS: u64 = 200;
    let server = start(
        Server::builder()
            .env("STELLWERK_RATE_LIMITS_API_PUBLISHES_PER_SECOND", 1)
            .env("STELLWERK_RATE_LIMITS_API_PUBLISHES_BURST", 5),
    )
    .await;
    let mut reader = server.ws_as(BOB, json!({})).await;
    let reply = reader
        .request(json!({"type": "subscribe", "channel": "public:news"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let http = reqwest::Client::new();
    let post = |n: u64, key: &str| {
        http.post(server.http_url("/api/publish"))
            .bearer_auth(key)
            .body(json!({"channel": "public:news", "data": {"n": n}}).to_string())
            .send()
    };

    // Publish as fast as PHP can until refused (bounded).
    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut refusal = None;
    for n in 0..MAX_REQUESTS {
        let resp = post(n, server.api_key()).await.expect("POST /api/publish");
        if resp.status() == 429 {
            refusal = Some(resp);
            break;
        }
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(status, 200, "{body}");
        accepted.push((body["results"][0]["offset"].as_u64().unwrap(), n));
    }
    let elapsed = started.elapsed();
    let refusal = refusal.expect("no 429 within 200 requests at 1 a second");
    let retry_after: u64 = refusal
        .headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    let body: Value = refusal.json().await.expect("JSON body");
    assert_http_error(429, &body, 429, "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate_limits.api_publishes_per_second"),
        "{body}"
    );
    assert!(accepted.len() >= 5, "the burst is accepted: {accepted:?}");
    assert!(accepted.len() as u64 <= most_admitted(5, 1, elapsed));

    // With the bucket empty, a request without the right key still gets 401, not 429: the key
    // is checked first, so strangers cannot use up PHP's budget.
    let (status, body) = server.publish_raw("{}", Some("wrong-key")).await;
    assert_http_error(status, &body, 401, "unauthorized");

    // After waiting as told, PHP publishes again.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    let result = server
        .publish_ok("public:news", &json!({"n": "after"}))
        .await;
    accepted.push((result["offset"].as_u64().unwrap(), u64::MAX));

    // The subscriber got the accepted ones and not the refused one.
    for (offset, n) in &accepted {
        let push = reader.recv_json().await;
        assert_eq!(push["type"], "message", "{push}");
        assert_eq!(push["offset"], *offset, "{push}");
        if *n != u64::MAX {
            assert_eq!(push["data"]["n"], *n, "{push}");
        }
    }
    let extra = pushes_so_far(&mut reader).await;
    assert!(extra.is_empty(), "the refused publish went out: {extra:?}");
    assert_eq!(refusals(&server, "api_publishes").await, 1);
}
