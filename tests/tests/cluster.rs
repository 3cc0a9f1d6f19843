//! Several real brokers on one real Redis (`engine.kind = "redis"`): what a
//! Stud.IP site behind a load balancer relies on. Each test starts its own
//! `redis-server` on a free port and two or three `stellwerk serve` processes.

use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::redis::RedisServer;
use stellwerk_e2e::{assert_http_error, Server, ServerBuilder, WsClient};

/// One cluster at a time: each test starts up to three brokers plus a Redis, and on two cores
/// several such tests at once starve each other past the clients' receive timeout.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A broker on `redis`'s engine, not started yet (trusting `redis`'s CA when it speaks TLS).
fn on(redis: &RedisServer) -> ServerBuilder {
    let builder = Server::builder()
        .env("STELLWERK_ENGINE_KIND", "redis")
        .env("STELLWERK_ENGINE_REDIS_URL", redis.url());
    match redis.ca_file() {
        Some(ca) => builder.env("SSL_CERT_FILE", ca.display()),
        None => builder,
    }
}

async fn node(redis: &RedisServer, shared: Option<&Server>) -> Server {
    match shared {
        Some(first) => on(redis).shared_with(first).start().await,
        None => on(redis).start().await,
    }
}

async fn cluster(redis: &RedisServer, nodes: usize) -> Vec<Server> {
    let first = node(redis, None).await;
    let mut all = vec![];
    for _ in 1..nodes {
        all.push(node(redis, Some(&first)).await);
    }
    all.insert(0, first);
    all
}

/// The next `message` push (presence pushes skipped).
async fn message(ws: &mut WsClient) -> Value {
    let push = ws.recv_skipping_presence().await;
    assert_eq!(push["type"], "message", "{push}");
    push
}

#[tokio::test]
async fn a_message_published_on_one_node_reaches_every_node_in_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 3).await;
    let (mut on_b, _) = nodes[1].subscriber("ann", "public:cluster").await;
    let (mut on_c, _) = nodes[2].subscriber("bob", "public:cluster").await;
    for n in 1..=30 {
        // Stud.IP's PHP publishes to whichever node the load balancer picks.
        let result = nodes[n % 3]
            .publish_ok("public:cluster", &json!({"n": n}))
            .await;
        assert_eq!(result["offset"], n);
    }
    for ws in [&mut on_b, &mut on_c] {
        for n in 1..=30 {
            let push = message(ws).await;
            assert_eq!(
                (push["offset"].as_u64(), push["data"]["n"].as_u64()),
                (Some(n), Some(n))
            );
        }
    }
    // History is the cluster's: any node answers it.
    let (status, body) = nodes[0]
        .api_get("/api/channels/public:cluster/history?limit=3")
        .await;
    assert_eq!(status, 200, "{body}");
    let offsets: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [28, 29, 30]);
}

#[tokio::test]
async fn a_browser_whose_node_went_away_recovers_on_another() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2).await;
    let (mut ws, subscribed) = nodes[0].subscriber("ann", "public:recover").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    nodes[1]
        .publish_ok("public:recover", &json!({"n": 1}))
        .await;
    assert_eq!(message(&mut ws).await["offset"], 1);
    ws.close().await;
    for n in 2..=6 {
        nodes[1]
            .publish_ok("public:recover", &json!({"n": n}))
            .await;
    }
    // The load balancer sends the reconnect to the other node.
    let mut ws = nodes[1]
        .ws(&format!("/ws?token={}", nodes[1].token("ann")))
        .await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:recover",
                        "recover": {"epoch": epoch, "offset": 1}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 6, "{reply}");
    for n in 2..=6 {
        assert_eq!(message(&mut ws).await["data"]["n"], n);
    }
    nodes[0]
        .publish_ok("public:recover", &json!({"n": 7}))
        .await;
    assert_eq!(message(&mut ws).await["offset"], 7, "then live");
}

#[tokio::test]
async fn without_redis_publishing_is_unavailable_and_subscribers_are_told_to_recover() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut redis = RedisServer::start();
    let nodes = cluster(&redis, 2).await;
    let (mut ws, _) = nodes[1].subscriber("ann", "public:outage").await;
    let first = nodes[0].publish_ok("public:outage", &json!({"n": 1})).await;
    assert_eq!(message(&mut ws).await["offset"], 1);

    redis.stop();
    let (status, body) = nodes[0]
        .publish(&json!({"channel": "public:outage", "data": {"n": 2}}))
        .await;
    assert_http_error(status, &body, 503, "unavailable");
    assert!(
        !body.to_string().contains("redis"),
        "no engine text reaches the client: {body}"
    );
    let push = ws.recv_json().await;
    assert_eq!(push["type"], "unsubscribed", "{push}");
    assert!(
        push["reason"].as_str().unwrap().contains("recover"),
        "{push}"
    );
    // Subscribing cannot work either, and says so with the contract's code.
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:outage"}))
        .await;
    stellwerk_e2e::assert_ws_error(&reply, "unavailable");
    // A disconnect still cuts this node's connections, and says the others were not reached.
    let resp = reqwest::Client::new()
        .post(nodes[1].http_url("/api/users/ann/disconnect"))
        .bearer_auth(nodes[1].api_key())
        .send()
        .await
        .expect("disconnect");
    let (status, body) = stellwerk_e2e::server::status_and_json(resp).await;
    assert_http_error(status, &body, 503, "unavailable");
    let said = body["error"]["message"].as_str().unwrap();
    assert!(said.contains("1 connection(s)"), "{body}");
    assert_eq!(ws.expect_close().await.0, 4003);

    redis.restart();
    // The browser reconnects, and recovers from its last position.
    let mut ws = nodes[1]
        .ws(&format!("/ws?token={}", nodes[1].token("ann")))
        .await;
    let mut recovered = None;
    for _ in 0..100 {
        let reply = ws
            .request(json!({"type": "subscribe", "channel": "public:outage",
                            "recover": {"epoch": first["epoch"], "offset": 1}}))
            .await;
        if reply["type"] == "subscribed" {
            recovered = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = recovered.expect("subscribing works again once Redis is back");
    // Redis ran without persistence: the history is gone, and the client is told.
    assert_eq!(reply["recovered"], false, "{reply}");
    let result = nodes[0].publish_ok("public:outage", &json!({"n": 3})).await;
    assert_eq!(message(&mut ws).await["offset"], result["offset"]);
}

/// A position in a channel: epoch and offset.
type At = (String, u64);

/// What one subscriber saw while Redis restarted under it.
#[derive(Debug, Default)]
struct Seen {
    /// Every message, as (epoch, offset) → the publisher's `seq`.
    messages: Vec<(At, u64)>,
    /// Each `recovered: false`: the last position before it (if any) and the position the
    /// new subscription started at. Everything in between is what the client was told it
    /// missed.
    unrecovered: Vec<(Option<At>, At)>,
}

impl Seen {
    fn told_missing(&self, at: &At) -> bool {
        self.unrecovered.iter().any(|(before, after)| {
            let after_before = before
                .as_ref()
                .is_some_and(|(epoch, offset)| *epoch == at.0 && at.1 > *offset);
            let before_after = after.0 == at.0 && at.1 <= after.1;
            after_before || before_after
        })
    }
}

/// Reads `channel` until the `end` marker the way a client library does: on an `unsubscribed`
/// that says to recover, it subscribes again with `recover` from its last position (retrying
/// while the broker answers `unavailable`). Fails on any gap it was not told about.
async fn read_recovering(mut ws: WsClient, channel: &str, start: At) -> Seen {
    let mut seen = Seen::default();
    let mut last = Some(start);
    loop {
        let push = ws.recv_json().await;
        match push["type"].as_str() {
            Some("message") => {
                let at = (
                    push["epoch"].as_str().unwrap().to_owned(),
                    push["offset"].as_u64().unwrap(),
                );
                if let Some((epoch, offset)) = &last {
                    assert_eq!(
                        (&at.0, at.1),
                        (epoch, offset + 1),
                        "a gap nobody was told about: {push}"
                    );
                }
                last = Some(at.clone());
                if push["data"]["end"] == true {
                    return seen;
                }
                seen.messages
                    .push((at, push["data"]["seq"].as_u64().unwrap()));
            }
            Some("unsubscribed") => {
                assert!(
                    push["reason"].as_str().unwrap().contains("recover"),
                    "{push}"
                );
                let mut reply = Value::Null;
                for _ in 0..300 {
                    let mut subscribe = json!({"type": "subscribe", "channel": channel});
                    if let Some((epoch, offset)) = &last {
                        subscribe["recover"] = json!({"epoch": epoch, "offset": offset});
                    }
                    reply = ws.request(subscribe).await;
                    if reply["type"] == "subscribed" {
                        break;
                    }
                    stellwerk_e2e::assert_ws_error(&reply, "unavailable");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert_eq!(
                    reply["type"], "subscribed",
                    "never subscribed again: {reply}"
                );
                if reply["recovered"] == false {
                    let at = (
                        reply["epoch"].as_str().unwrap().to_owned(),
                        reply["offset"].as_u64().unwrap(),
                    );
                    seen.unrecovered.push((last.take(), at.clone()));
                    last = Some(at);
                }
            }
            _ => panic!("unexpected push: {push}"),
        }
    }
}

/// Redis (without persistence) killed and started again while PHP publishes without pause:
/// publishes during the outage answer 503, delivery resumes on both nodes, and every message
/// answered with 200 reached every subscriber or is inside a span the subscriber was told
/// it missed (`recovered: false`), never dropped without a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_load_loses_nothing_without_telling() {
    const CHANNEL: &str = "public:restart";
    const BEFORE: u64 = 200;
    const AFTER: u64 = 200;
    let _one = ONE_AT_A_TIME.lock().await;
    let mut redis = RedisServer::start();
    let nodes = cluster(&redis, 2).await;
    let mut readers = vec![];
    for i in 0..4 {
        let (ws, reply) = nodes[i % 2].subscriber(&format!("user{i}"), CHANNEL).await;
        let start = (
            reply["epoch"].as_str().unwrap().to_owned(),
            reply["offset"].as_u64().unwrap(),
        );
        readers.push(tokio::spawn(read_recovering(ws, CHANNEL, start)));
    }

    let mut acked: Vec<(At, u64)> = vec![];
    let (mut refused, mut restarted_at) = (0, None);
    for seq in 0..5_000u64 {
        if seq == BEFORE {
            redis.stop();
        }
        if redis_stopped(&redis) && refused >= 3 {
            tokio::task::block_in_place(|| redis.restart());
            restarted_at = Some(acked.len() as u64);
        }
        let (status, body) = nodes[seq as usize % 2]
            .publish(&json!({"channel": CHANNEL, "data": {"seq": seq}}))
            .await;
        match status {
            200 => {
                let result = &body["results"][0];
                let at = (
                    result["epoch"].as_str().unwrap().to_owned(),
                    result["offset"].as_u64().unwrap(),
                );
                acked.push((at, seq));
            }
            503 => {
                assert_http_error(status, &body, 503, "unavailable");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => panic!("publish {seq}: {status} {body}"),
        }
        if restarted_at.is_some_and(|n| acked.len() as u64 >= n + AFTER) {
            break;
        }
    }
    let restarted_at = restarted_at.expect("Redis was restarted");
    assert!(
        acked.len() as u64 >= restarted_at + AFTER,
        "publishing works again after the restart: {} acknowledged",
        acked.len()
    );
    nodes[0].publish_ok(CHANNEL, &json!({"end": true})).await;

    for (i, reader) in readers.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap_or_else(|_| panic!("subscriber {i} did not get the end marker"))
            .expect("reader");
        assert!(
            !seen.unrecovered.is_empty(),
            "subscriber {i}: Redis lost the history, the client must be told"
        );
        let received: std::collections::HashMap<&At, u64> =
            seen.messages.iter().map(|(at, seq)| (at, *seq)).collect();
        for (at, seq) in &acked {
            match received.get(at) {
                Some(got) => assert_eq!(got, seq, "subscriber {i}: {at:?} carries another message"),
                None => assert!(
                    seen.told_missing(at),
                    "subscriber {i}: message {seq} at {at:?} was answered 200 but neither \
                     delivered nor reported missing; seen {seen:?}"
                ),
            }
        }
        eprintln!(
            "subscriber {i}: {} of {} acknowledged messages delivered, told of {:?}",
            received.len(),
            acked.len(),
            seen.unrecovered
        );
    }
    eprintln!("{refused} publishes refused with 503 while Redis was away");
}

/// Whether [`RedisServer::stop`] ran and no restart since.
fn redis_stopped(redis: &RedisServer) -> bool {
    std::net::TcpStream::connect(
        redis
            .url()
            .trim_start_matches("redis://")
            .trim_end_matches('/'),
    )
    .is_err()
}

#[tokio::test]
async fn a_node_that_cannot_reach_redis_at_start_exits_naming_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    let url = redis.url();
    drop(redis);
    let (code, log) = Server::builder()
        .env("STELLWERK_ENGINE_KIND", "redis")
        .env("STELLWERK_ENGINE_REDIS_URL", &url)
        .run_to_exit()
        .await;
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("redis"), "{log}");
}

/// `rediss://` with a password in the URL (pinned: `engine.redis_url` carries both): two
/// nodes work as on plain Redis; a wrong password stops a node at start, and neither
/// password ever reaches the log.
#[tokio::test]
async fn nodes_reach_redis_over_tls_with_the_password_in_the_url() {
    const PASSWORD: &str = "s3cret-redis-pass";
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start_tls(PASSWORD);
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let nodes = cluster(&redis, 2).await;
    let (mut ws, _) = nodes[1].subscriber("ann", "public:tls").await;
    let sent = nodes[0].publish_ok("public:tls", &json!({"n": 1})).await;
    assert_eq!(message(&mut ws).await["offset"], sent["offset"]);
    for node in &nodes {
        assert!(!node.log().contains(PASSWORD), "{}", node.log());
    }

    let wrong = redis.url().replace(PASSWORD, "not-the-password");
    let (code, log) = on(&redis)
        .env("STELLWERK_ENGINE_REDIS_URL", &wrong)
        .run_to_exit()
        .await;
    assert_ne!(code, Some(0), "{log}");
    assert!(log.to_lowercase().contains("redis"), "{log}");
    assert!(!log.contains("not-the-password"), "{log}");
}

const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const CHAT: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";
const ANN: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const BOB: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";

/// A course member on `node`'s chat (presence on), named `name`.
async fn chat_member(node: &Server, user: &str, name: &str) -> WsClient {
    let claims = json!({"perm": "autor", "courses": { COURSE: "autor" }, "name": name});
    let mut ws = node.ws_as(user, claims).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": CHAT}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    ws
}

/// The next `join` or `leave` push as `(type, user, info.name)`.
async fn presence_change(ws: &mut WsClient) -> (String, String, String) {
    loop {
        let push = ws.recv_json().await;
        if push["type"] == "join" || push["type"] == "leave" {
            return (
                push["type"].as_str().unwrap().to_owned(),
                push["user"].as_str().unwrap().to_owned(),
                push["info"]["name"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
}

async fn members(ws: &mut WsClient) -> Vec<String> {
    let reply = ws
        .request(json!({"type": "presence", "channel": CHAT}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    reply["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn presence_is_the_clusters_with_joins_and_leaves_across_nodes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2).await;
    let mut ann = chat_member(&nodes[0], ANN, "Ann").await;
    let mut bob = chat_member(&nodes[1], BOB, "Bob").await;
    assert_eq!(
        presence_change(&mut ann).await,
        ("join".into(), BOB.into(), "Bob".into()),
        "ann, on the other node, sees bob arrive"
    );
    let mut everyone = vec![ANN.to_owned(), BOB.to_owned()];
    everyone.sort();
    assert_eq!(members(&mut bob).await, everyone);
    assert_eq!(members(&mut ann).await, everyone);
    // A second tab of ann's on bob's node: still one member, no join.
    let mut ann_again = chat_member(&nodes[1], ANN, "Ann").await;
    assert_eq!(members(&mut ann_again).await, everyone);
    ann.close().await;
    ann_again.close().await;
    assert_eq!(
        presence_change(&mut bob).await,
        ("leave".into(), ANN.into(), "Ann".into()),
        "one leave, once ann's last connection anywhere went"
    );
    assert_eq!(members(&mut bob).await, [BOB]);
    let (status, body) = nodes[0]
        .api_get(&format!("/api/channels/{CHAT}/presence"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"][0]["user"], BOB, "{body}");
}

#[tokio::test]
async fn the_members_of_a_node_killed_with_sigkill_leave_for_the_others() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    let first = on(&redis)
        .env("STELLWERK_ENGINE_NODE_TIMEOUT_SECONDS", 2)
        .start()
        .await;
    let doomed = on(&redis)
        .env("STELLWERK_ENGINE_NODE_TIMEOUT_SECONDS", 2)
        .shared_with(&first)
        .start()
        .await;
    let mut bob = chat_member(&first, BOB, "Bob").await;
    let _ann = chat_member(&doomed, ANN, "Ann").await;
    assert_eq!(presence_change(&mut bob).await.0, "join");
    doomed.signal("KILL");
    // Nobody on the dead node could say goodbye: the survivors reap it.
    assert_eq!(
        presence_change(&mut bob).await,
        ("leave".into(), ANN.into(), "Ann".into())
    );
    assert_eq!(members(&mut bob).await, [BOB]);
    // The survivor carries on.
    let result = first.publish_ok(CHAT, &json!({"text": "still here"})).await;
    let push = bob.recv_skipping_presence().await;
    assert_eq!(push["offset"], result["offset"], "{push}");
}

#[tokio::test]
async fn disconnecting_a_user_and_listing_channels_answer_for_the_whole_cluster() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 3).await;
    let (mut ann_on_a, _) = nodes[0].subscriber("ann", "public:x").await;
    let (mut ann_on_c, _) = nodes[2].subscriber("ann", "public:x").await;
    let (_bob_on_b, _) = nodes[1].subscriber("bob", "public:y").await;

    let (status, body) = nodes[1].api_get("/api/channels?prefix=public:").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["channels"],
        json!([{"channel": "public:x", "subscribers": 2},
               {"channel": "public:y", "subscribers": 1}]),
        "every node's subscribers, summed per channel"
    );

    // Stud.IP logs ann out through whichever node the load balancer picks.
    let body = nodes[1].disconnect_user("ann").await;
    assert_eq!(body["disconnected"], 2, "{body}");
    for ws in [&mut ann_on_a, &mut ann_on_c] {
        let (code, _) = ws.expect_close().await;
        assert_eq!(code, 4003);
    }
    let (_, body) = nodes[0].api_get("/api/channels?prefix=public:").await;
    assert_eq!(
        body["channels"],
        json!([{"channel": "public:y", "subscribers": 1}])
    );
}
