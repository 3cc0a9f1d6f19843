//! Hot reload by file: an operator changes the plugin directory of a running broker and
//! connected clients keep working (DESIGN §4 "Hot reload", issue #4).
//!
//! Each test runs a broker on a plugin directory of its own (see `deploy/mod.rs`) and checks
//! what a subscriber and an operator see: the new version's stamp on the next message, the
//! `unsubscribed` push where access was lost, and `GET /admin/plugins`.

mod deploy;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deploy::{builder, bytes_of, overwrite_in_place, plugin_dir, sha256, start, Admin, Deploy};
use serde_json::{json, Value};
use stellwerk_e2e::{assert_ws_error, Server, WsClient};

/// Publishes `seq` to `channel` and returns the stamp the plugin put on it.
async fn publish(server: &Server, channel: &str, seq: u64) -> Value {
    server.publish_ok(channel, &json!({"seq": seq})).await
}

/// The next push must be `channel`'s message with `seq`; returns the version that stamped it.
async fn expect_message(ws: &mut WsClient, channel: &str, seq: u64) -> String {
    let push = ws.recv_json().await;
    assert_eq!(push["type"], "message", "expected a message, got {push}");
    assert_eq!(push["channel"], channel, "{push}");
    assert_eq!(push["data"]["data"]["seq"], seq, "{push}");
    push["data"]["version"]
        .as_str()
        .unwrap_or_else(|| panic!("message without the gate's version stamp: {push}"))
        .to_owned()
}

/// The next push must be the server-side `unsubscribed` for `channel`; returns its reason.
async fn expect_unsubscribed(ws: &mut WsClient, channel: &str) -> String {
    let push = ws.recv_json().await;
    assert_eq!(
        push["type"], "unsubscribed",
        "expected unsubscribed, got {push}"
    );
    assert_eq!(push["channel"], channel, "{push}");
    assert!(
        push.get("id").is_none(),
        "a server-side push has no id: {push}"
    );
    let reason = push["reason"].as_str().unwrap_or_default().to_owned();
    assert!(!reason.is_empty(), "unsubscribed needs a reason: {push}");
    reason
}

#[tokio::test]
async fn replacing_the_file_by_atomic_rename_puts_the_new_version_live_for_connected_subscribers() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let (mut ws, _) = server.subscriber("u1", "gate:room").await;
    publish(&server, "gate:room", 1).await;
    assert_eq!(expect_message(&mut ws, "gate:room", 1).await, "1.0.0");
    let before = admin.plugin("gate").await.expect("gate listed");
    assert_eq!(before["state"], "loaded", "{before}");

    let v2 = bytes_of("gate-v2");
    dir.replace_atomically("gate.wasm", &v2);
    let after = admin
        .wait_for("gate", "version 2.0.0 live", |p| p["version"] == "2.0.0")
        .await;
    assert_eq!(after["state"], "loaded", "{after}");
    assert_eq!(after["sha256"], sha256(&v2), "{after}");
    assert_eq!(after["last_error"], Value::Null, "{after}");
    assert_eq!(after["namespaces"], json!(["gate"]), "{after}");

    // The same connection, the same subscription: the next message went through 2.0.0.
    publish(&server, "gate:room", 2).await;
    assert_eq!(expect_message(&mut ws, "gate:room", 2).await, "2.0.0");
    assert!(server.log().contains("plugin reloaded"), "{}", server.log());
}

#[tokio::test]
async fn a_file_written_in_place_is_loaded_once_complete_and_never_half_written() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let (mut ws, _) = server.subscriber("u1", "gate:room").await;

    // Four pieces, 600 ms apart: much longer than the watcher's settle time (150 ms), so
    // that it does try the half-written file.
    let v2 = bytes_of("gate-v2");
    let writer = {
        let file = dir.file("gate.wasm");
        let v2 = v2.clone();
        std::thread::spawn(move || {
            overwrite_in_place(&file, &v2, 4, Duration::from_millis(600));
        })
    };
    // While the file is incomplete, the old version keeps serving.
    let stale = admin
        .wait_for("gate", "the half-written file refused", |p| {
            p["state"] == "stale"
        })
        .await;
    assert_eq!(stale["version"], "1.0.0", "{stale}");
    assert!(
        stale["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("gate.wasm")),
        "last_error names the file: {stale}"
    );
    publish(&server, "gate:room", 1).await;
    assert_eq!(expect_message(&mut ws, "gate:room", 1).await, "1.0.0");

    writer.join().expect("writer thread");
    let loaded = admin
        .wait_for("gate", "the complete file loaded", |p| {
            p["version"] == "2.0.0" && p["state"] == "loaded"
        })
        .await;
    assert_eq!(loaded["sha256"], sha256(&v2), "{loaded}");
    assert_eq!(loaded["last_error"], Value::Null, "{loaded}");
    publish(&server, "gate:room", 2).await;
    assert_eq!(expect_message(&mut ws, "gate:room", 2).await, "2.0.0");
}

#[tokio::test]
async fn a_garbage_file_keeps_the_running_version_and_says_why() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let (mut ws, _) = server.subscriber("u1", "gate:room").await;
    let v1 = admin.plugin("gate").await.expect("gate listed");

    dir.replace_atomically("gate.wasm", b"this is not a WebAssembly component");
    let stale = admin
        .wait_for("gate", "garbage refused", |p| p["state"] == "stale")
        .await;
    assert_eq!(stale["version"], "1.0.0", "{stale}");
    assert_eq!(
        stale["sha256"], v1["sha256"],
        "the old version stays live: {stale}"
    );
    let error = stale["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("not a valid component"), "{stale}");
    assert!(
        server.log().contains("the running version stays live"),
        "{}",
        server.log()
    );
    publish(&server, "gate:room", 1).await;
    assert_eq!(expect_message(&mut ws, "gate:room", 1).await, "1.0.0");

    // A file that never loaded is listed as failed, with no live version.
    dir.replace_atomically("junk.wasm", b"\0asm garbage");
    let failed = admin
        .wait_for("junk", "junk refused", |p| p["state"] == "failed")
        .await;
    assert_eq!(failed["version"], Value::Null, "{failed}");
    assert_eq!(failed["namespaces"], json!([]), "{failed}");
    assert!(failed["last_error"].is_string(), "{failed}");

    // Rollback: putting the running bytes back is instant and clears the error.
    dir.replace_atomically("gate.wasm", &bytes_of("gate"));
    let back = admin
        .wait_for("gate", "rollback", |p| p["state"] == "loaded")
        .await;
    assert_eq!(back["last_error"], Value::Null, "{back}");
    assert_eq!(
        back["loaded_at"], v1["loaded_at"],
        "same version, not reloaded: {back}"
    );
    publish(&server, "gate:room", 2).await;
    assert_eq!(expect_message(&mut ws, "gate:room", 2).await, "1.0.0");
}

#[tokio::test]
async fn a_namespace_conflict_is_refused_naming_both_plugins() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);

    // A second copy of gate that claims `public`, which the public plugin governs.
    std::fs::write(
        dir.file("gate2.toml"),
        "name = \"gate2\"\nnamespaces = [\"public\"]\n",
    )
    .unwrap();
    dir.replace_atomically("gate2.wasm", &bytes_of("gate"));
    let failed = admin
        .wait_for("gate2", "conflict refused", |p| p["state"] == "failed")
        .await;
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"public\""),
        "names the namespace: {failed}"
    );
    assert!(
        error.contains("plugin \"public\""),
        "names the holder: {failed}"
    );
    assert!(
        error.contains("plugin \"gate2\""),
        "names the newcomer: {failed}"
    );

    // `public` still belongs to the public plugin.
    let (_ws, reply) = server.subscriber("u1", "public:news").await;
    assert_eq!(reply["type"], "subscribed");
    let public = admin.plugin("public").await.expect("public listed");
    assert_eq!(public["state"], "loaded", "{public}");
}

#[tokio::test]
async fn deleting_the_file_unloads_the_plugin_and_tells_its_subscribers() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let (mut a, _) = server.subscriber("u1", "gate:room").await;
    let (mut b, _) = server.subscriber("u2", "gate:other").await;
    let (mut p, _) = server.subscriber("u3", "public:news").await;

    std::fs::remove_file(dir.file("gate.wasm")).unwrap();
    let reason = expect_unsubscribed(&mut a, "gate:room").await;
    assert!(reason.contains("gate"), "{reason}");
    expect_unsubscribed(&mut b, "gate:other").await;
    admin.wait_until_gone("gate").await;

    let reply = a
        .request(json!({"type": "subscribe", "channel": "gate:room"}))
        .await;
    assert_ws_error(&reply, "not_found");
    // The connections live on; other plugins are untouched.
    server.publish_ok("public:news", &json!({"n": 1})).await;
    let push = p.recv_json().await;
    assert_eq!(push["type"], "message", "{push}");
}

#[tokio::test]
async fn a_rule_change_unsubscribes_exactly_the_subscribers_who_lost_access() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let mut clients = HashMap::new();
    for user in ["u1", "u2", "u3", "u4"] {
        let (ws, _) = server.subscriber(user, "gate:room").await;
        clients.insert(user, ws);
    }
    // u2 also listens on a second gate channel; both go.
    let reply = clients
        .get_mut("u2")
        .unwrap()
        .request(json!({"type": "subscribe", "channel": "gate:other"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    std::fs::write(
        dir.file("gate.toml"),
        "revision = \"r2\"\ndeny = [\"u2\", \"u4\"]\n",
    )
    .unwrap();
    admin
        .wait_for("gate", "the new rules", |p| p["version"] == "1.0.0+r2")
        .await;

    // u2 loses both channels (in no particular order), u4 its one.
    for (user, channels) in [
        ("u2", vec!["gate:other", "gate:room"]),
        ("u4", vec!["gate:room"]),
    ] {
        let ws = clients.get_mut(user).unwrap();
        let mut lost = Vec::new();
        for _ in &channels {
            let push = ws.recv_json().await;
            assert_eq!(push["type"], "unsubscribed", "{user}: {push}");
            let reason = push["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("not admitted"), "{user}: {push}");
            lost.push(push["channel"].as_str().unwrap_or_default().to_owned());
        }
        lost.sort();
        assert_eq!(lost, channels, "{user}");
    }

    publish(&server, "gate:room", 7).await;
    for user in ["u1", "u3"] {
        let ws = clients.get_mut(user).unwrap();
        // The next thing they see is the message: no unsubscribed on the way.
        assert_eq!(
            expect_message(ws, "gate:room", 7).await,
            "1.0.0+r2",
            "{user}"
        );
    }
    for user in ["u2", "u4"] {
        let ws = clients.get_mut(user).unwrap();
        // Nothing arrived for them; subscribing again is refused by the new rules.
        let reply = ws
            .request(json!({"type": "subscribe", "channel": "gate:room"}))
            .await;
        assert_ws_error(&reply, "forbidden");
        let queued = ws.take_pending();
        assert!(
            queued.is_empty(),
            "{user} received after revocation: {queued:?}"
        );
    }
}

/// The two reload storms share the machine's two cores with nothing else of theirs.
static ONE_STORM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 100 reloads (two versions, alternating) while a publisher sends without pause and 100
/// subscribers receive: every subscriber gets every message exactly once, in order, and
/// no one is unsubscribed or disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_lose_reorder_and_drop_nothing() {
    let _one = ONE_STORM_AT_A_TIME.lock().await;
    let dir = plugin_dir();
    // Room for the test's own readers to fall behind on a busy machine: this test is about
    // reloads, not slow consumers.
    let server = start(&dir, &[("STELLWERK_LIMITS_QUEUE_CAPACITY", "16384")]).await;
    reload_storm(&[server]).await;
}

/// The same on two nodes over one real Redis, each with its own plugin directory (as
/// operations.md says to deploy): each node is reloaded 50 times while the publisher
/// alternates between the nodes and half of the subscribers sit on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_on_two_nodes_over_redis_lose_reorder_and_drop_nothing() {
    let _one = ONE_STORM_AT_A_TIME.lock().await;
    let redis = stellwerk_e2e::redis::RedisServer::start();
    let url = redis.url();
    let env = [
        ("STELLWERK_LIMITS_QUEUE_CAPACITY", "16384"),
        ("STELLWERK_ENGINE_KIND", "redis"),
        ("STELLWERK_ENGINE_REDIS_URL", &url),
    ];
    let (dir_a, dir_b) = (plugin_dir(), plugin_dir());
    let a = builder(&dir_a, &env).start().await;
    let b = builder(&dir_b, &env).shared_with(&a).start().await;
    reload_storm(&[a, b]).await;
}

/// Reload `i` of 100 goes to node `i % n`; each node alternates between `gate` 2.0.0 and
/// 1.0.0, ending on 1.0.0.
async fn reload_storm(nodes: &[Server]) {
    const SUBSCRIBERS: usize = 100;
    const RELOADS: usize = 100;
    const MAX_MESSAGES: u64 = 20_000;
    const CHANNEL: &str = "gate:storm";
    let admins: Vec<Admin> = nodes.iter().map(Admin::new).collect();

    let mut readers = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let node = &nodes[i % nodes.len()];
        let (mut ws, reply) = node.subscriber(&format!("user{i}"), CHANNEL).await;
        let first_offset = reply["offset"]
            .as_u64()
            .expect("subscribed carries an offset");
        readers.push(tokio::spawn(async move {
            // Reads until the end marker; returns (messages, versions seen).
            let mut seen: Vec<u64> = Vec::new();
            let mut versions: HashMap<String, u64> = HashMap::new();
            let mut offset = first_offset;
            loop {
                let push = ws.recv_json().await;
                assert_eq!(push["type"], "message", "subscriber {i}: {push}");
                offset += 1;
                assert_eq!(
                    push["offset"], offset,
                    "subscriber {i}: offsets skip: {push}"
                );
                let data = &push["data"]["data"];
                if data["end"] == true {
                    return (seen, versions);
                }
                let seq = data["seq"].as_u64().expect("seq");
                assert_eq!(seq, seen.len() as u64, "subscriber {i}: lost or reordered");
                seen.push(seq);
                let version = push["data"]["version"].as_str().unwrap_or("?").to_owned();
                *versions.entry(version).or_default() += 1;
            }
        }));
    }

    let publishing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = {
        let publishing = publishing.clone();
        let http = reqwest::Client::new();
        // Stud.IP's PHP publishes to whichever node the load balancer picks.
        let urls: Vec<String> = nodes.iter().map(|n| n.http_url("/api/publish")).collect();
        let key = nodes[0].api_key().to_owned();
        tokio::spawn(async move {
            let mut seq = 0;
            while publishing.load(std::sync::atomic::Ordering::Relaxed) && seq < MAX_MESSAGES {
                let resp = http
                    .post(&urls[seq as usize % urls.len()])
                    .bearer_auth(&key)
                    .body(json!({"channel": CHANNEL, "data": {"seq": seq}}).to_string())
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status().as_u16(), 200, "publish {seq}");
                seq += 1;
            }
            seq
        })
    };

    let (v1, v2) = (bytes_of("gate"), bytes_of("gate-v2"));
    let started = Instant::now();
    for i in 0..RELOADS {
        let node = i % nodes.len();
        let bytes = if (i / nodes.len()).is_multiple_of(2) {
            v2.clone()
        } else {
            v1.clone()
        };
        let (status, body) = admins[node].upload("gate", bytes).await;
        assert_eq!(status, 200, "reload {i}: {body}");
        assert_eq!(body["outcome"], "loaded", "reload {i}: {body}");
        // Each node re-checks its own subscribers only.
        assert_eq!(
            body["reauthorized"],
            json!({"kept": SUBSCRIBERS / nodes.len(), "revoked": 0}),
            "reload {i} on node {node}: {body}"
        );
    }
    let reload_time = started.elapsed();
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.await.expect("publisher");
    nodes[0].publish_ok(CHANNEL, &json!({"end": true})).await;

    let mut by_version: HashMap<String, u64> = HashMap::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let (seen, versions) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap_or_else(|_| panic!("subscriber {i} did not get the end marker"))
            .expect("reader task");
        assert_eq!(
            seen.len() as u64,
            published,
            "subscriber {i}: messages received"
        );
        for (version, n) in versions {
            *by_version.entry(version).or_default() += n;
        }
    }
    eprintln!(
        "{RELOADS} reloads in {reload_time:?} while {published} messages reached \
         {SUBSCRIBERS} subscribers; stamped by version: {by_version:?}"
    );
    // Both versions let messages through: the reloads happened while the stream flowed.
    assert!(
        by_version.contains_key("1.0.0") && by_version.contains_key("2.0.0"),
        "{by_version:?}"
    );
    for (admin, node) in admins.iter().zip(nodes) {
        let after = admin.plugin("gate").await.expect("gate listed");
        assert_eq!(after["state"], "loaded", "{after}");
        assert_eq!(
            after["version"], "1.0.0",
            "the last reload put 1.0.0 back: {after}"
        );
        assert!(
            !node.log().contains("slow consumer"),
            "no subscriber was cut off: {}",
            node.log()
        );
    }
}
