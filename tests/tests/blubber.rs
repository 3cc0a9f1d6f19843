//! The `blubber` plugin, written in JavaScript, against the real broker with real WebSocket
//! clients: Stud.IP's messenger threads governed by the per-page `channels` claim.

use serde_json::{json, Value};
use stellwerk_e2e::plugin_dir::PluginDir;
use stellwerk_e2e::{assert_ws_error, Server, WsClient};

const THREAD: &str = "blubber:0123456789abcdef0123456789abcdef";
const OTHER_THREAD: &str = "blubber:fedcba9876543210fedcba9876543210";
const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const GRACE: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";

/// A page token's claims: exactly the channels the page may subscribe to.
fn page(channels: &[&str]) -> Value {
    json!({ "channels": channels })
}

/// A broker serving `blubber` as `cargo xtask build-plugins` built it into `target/plugins`.
async fn start() -> (PluginDir, Server) {
    let dir = PluginDir::with(&["blubber"]);
    let server = Server::builder().plugins_dir(dir.path()).start().await;
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("plugin loaded") && l.contains(r#"plugin="blubber""#)),
        "{}",
        server.log()
    );
    (dir, server)
}

async fn join(server: &Server, sub: &str, claims: Value, channel: &str) -> (WsClient, Value) {
    let mut ws = server.ws_as(sub, claims).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(
        reply["type"], "subscribed",
        "{sub} joins {channel}: {reply}"
    );
    (ws, reply)
}

#[tokio::test]
async fn a_token_subscribes_only_to_the_exact_channels_of_its_claim() {
    let (_dir, server) = start().await;
    let mut ws = server.ws_as(ADA, page(&[THREAD, "user:x"])).await;
    let ok = ws
        .request(json!({"type": "subscribe", "channel": THREAD}))
        .await;
    assert_eq!(ok["type"], "subscribed", "{ok}");

    let other = ws
        .request(json!({"type": "subscribe", "channel": OTHER_THREAD}))
        .await;
    assert_ws_error(&other, "forbidden");
    assert!(
        other["message"]
            .as_str()
            .unwrap()
            .contains("is not in this token's channels"),
        "the plugin's reason reaches the client: {other}"
    );

    // A prefix of the name, a claim that is not a list, no claim: all refused.
    for claims in [
        page(&["blubber:"]),
        json!({ "channels": THREAD }),
        json!({"perm": "root"}),
    ] {
        let mut ws = server.ws_as(GRACE, claims.clone()).await;
        let reply = ws
            .request(json!({"type": "subscribe", "channel": THREAD}))
            .await;
        assert_ws_error(&reply, "forbidden");
        assert!(reply["message"].as_str().is_some(), "{claims}: {reply}");
    }
}

#[tokio::test]
async fn channels_that_are_no_thread_id_are_refused() {
    let (_dir, server) = start().await;
    for channel in [
        "blubber:ABCDEF0123456789abcdef0123456789",
        "blubber:0123456789abcdef",
        "blubber:0123456789abcdef0123456789abcdef:x",
    ] {
        let mut ws = server.ws_as(ADA, page(&[channel])).await;
        let reply = ws
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_ws_error(&reply, "forbidden");
        assert!(
            reply["message"].as_str().unwrap().contains("32 hex"),
            "{channel}: {reply}"
        );
    }
}

#[tokio::test]
async fn a_client_message_gets_its_author_from_sub_and_its_text_cut_to_5000_characters() {
    let (_dir, server) = start().await;
    let (mut ada, subscribed) = join(&server, ADA, page(&[THREAD]), THREAD).await;
    let (mut grace, _) = join(&server, GRACE, page(&[THREAD]), THREAD).await;

    let long = "ä".repeat(6000);
    let reply = ada
        .request(json!({
            "type": "publish",
            "channel": THREAD,
            "data": {"type": "blubber.comment.created", "text": long, "author": GRACE},
        }))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(reply["epoch"], subscribed["epoch"]);

    let want = json!({
        "type": "blubber.comment.created",
        "text": "ä".repeat(5000),
        "author": ADA,
    });
    for ws in [&mut ada, &mut grace] {
        let push = ws.recv_skipping_presence().await;
        assert_eq!(push["type"], "message", "{push}");
        assert_eq!(push["channel"], THREAD);
        assert_eq!(push["offset"], reply["offset"]);
        assert_eq!(push["data"], want, "author from sub, text cut");
    }
}

#[tokio::test]
async fn clients_publish_only_where_their_token_lets_them_subscribe() {
    let (_dir, server) = start().await;
    let (mut ada, subscribed) = join(&server, ADA, page(&[THREAD]), THREAD).await;

    let elsewhere = ada
        .request(json!({"type": "publish", "channel": OTHER_THREAD, "data": {"text": "hi"}}))
        .await;
    assert_ws_error(&elsewhere, "forbidden");
    for data in [json!("just text"), json!({"text": 5}), json!({})] {
        let reply = ada
            .request(json!({"type": "publish", "channel": THREAD, "data": data}))
            .await;
        assert_ws_error(&reply, "forbidden");
    }

    // Nothing of that was published: the server's next message follows the start offset.
    let marker = server.publish_ok(THREAD, &json!({"marker": 1})).await;
    assert_eq!(marker["offset"], subscribed["offset"].as_u64().unwrap() + 1);
    let push = ada.recv_skipping_presence().await;
    assert_eq!(
        push["data"],
        json!({"marker": 1}),
        "HTTP publishes pass unchanged"
    );
}

#[tokio::test]
async fn presence_shows_who_reads_the_thread() {
    let (_dir, server) = start().await;
    let (mut ada, _) = join(&server, ADA, page(&[THREAD]), THREAD).await;
    let (mut grace, _) = join(&server, GRACE, page(&[THREAD]), THREAD).await;

    let join_push = ada.recv_json().await;
    assert_eq!(join_push["type"], "join", "{join_push}");
    assert_eq!(join_push["user"], GRACE);

    let reply = grace
        .request(json!({"type": "presence", "channel": THREAD}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    let mut users: Vec<&str> = reply["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    let mut want = vec![ADA, GRACE];
    want.sort_unstable();
    assert_eq!(users, want, "{reply}");
}

#[tokio::test]
async fn history_keeps_the_latest_100_messages() {
    let (_dir, server) = start().await;
    for n in 1..=105u64 {
        let result = server.publish_ok(THREAD, &json!({ "n": n })).await;
        assert_eq!(result["offset"], n, "{result}");
    }
    let mut ws = server.ws_as(ADA, page(&[THREAD])).await;
    let reply = ws
        .request(json!({"type": "history", "channel": THREAD, "limit": 1000}))
        .await;
    assert_eq!(reply["type"], "history", "{reply}");
    let offsets: Vec<u64> = reply["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert_eq!(m["data"]["n"], m["offset"], "{m}");
            m["offset"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(offsets, (6..=105).collect::<Vec<_>>(), "the latest 100");

    // Only for readers of the thread.
    let mut stranger = server.ws_as(GRACE, page(&[OTHER_THREAD])).await;
    let refused = stranger
        .request(json!({"type": "history", "channel": THREAD}))
        .await;
    assert_ws_error(&refused, "forbidden");
}
