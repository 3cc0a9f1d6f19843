//! The `user` plugin against the real broker: `user:<id>` belongs to that user alone, and only
//! Stud.IP's server publishes on it.

use std::time::Duration;

use serde_json::json;
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{assert_http_error, assert_ws_error, Server};

const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const BOB: &str = "76ed43ef286fb55cf9e41beadb484a9f";
const ADA_CHANNEL: &str = "user:e7a0a84b161f3e8c09b4a0a2e8a58147";

#[tokio::test]
async fn the_owner_subscribes_and_receives_what_the_server_publishes() {
    let server = Server::start().await;
    let mut ada = server.ws_as(ADA, json!({"perm": "autor"})).await;
    let subscribed = ada
        .request(json!({"type": "subscribe", "channel": ADA_CHANNEL}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");

    let data = json!({"type": "message.created", "id": "4711"});
    let result = server.publish_ok(ADA_CHANNEL, &data).await;
    assert_eq!(result["epoch"], subscribed["epoch"], "{result}");
    assert_eq!(
        ada.recv_json().await,
        json!({
            "type": "message",
            "channel": ADA_CHANNEL,
            "epoch": result["epoch"],
            "offset": result["offset"],
            "data": data,
        })
    );
}

#[tokio::test]
async fn another_user_is_forbidden_even_root() {
    let server = Server::start().await;
    for perm in ["autor", "root"] {
        let mut bob = server.ws_as(BOB, json!({ "perm": perm })).await;
        let reply = bob
            .request(json!({"type": "subscribe", "channel": ADA_CHANNEL}))
            .await;
        assert_ws_error(&reply, "forbidden");
        assert!(
            reply["message"].as_str().unwrap().contains("another user"),
            "perm {perm}: {reply}"
        );
    }

    // The same over SSE, where the refusal is a 403 before the stream starts.
    let token = server.mint(BOB, json!({}), Duration::from_secs(3600));
    let resp = server
        .sse_response(&format!("/sse?channel={ADA_CHANNEL}&token={token}"), None)
        .await;
    let (status, body) = status_and_json(resp).await;
    assert_http_error(status, &body, 403, "forbidden");
}

#[tokio::test]
async fn client_publish_is_forbidden_even_for_the_owner() {
    let server = Server::start().await;
    let mut ada = server.ws_as(ADA, json!({"perm": "root"})).await;
    let subscribed = ada
        .request(json!({"type": "subscribe", "channel": ADA_CHANNEL}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");

    let reply = ada
        .request(
            json!({"type": "publish", "channel": ADA_CHANNEL, "data": {"text": "note to self"}}),
        )
        .await;
    assert_ws_error(&reply, "forbidden");

    // Nothing was published: the next message is the marker, right after the start offset.
    let marker = server.publish_ok(ADA_CHANNEL, &json!({"marker": 1})).await;
    assert_eq!(marker["offset"], subscribed["offset"].as_u64().unwrap() + 1);
    assert_eq!(ada.recv_json().await["data"], json!({"marker": 1}));
}

#[tokio::test]
async fn the_owner_receives_over_sse_too() {
    let server = Server::start().await;
    let token = server.mint(ADA, json!({}), Duration::from_secs(3600));
    let mut sse = server
        .sse(&format!("/sse?channel={ADA_CHANNEL}&token={token}"))
        .await;
    loop {
        if sse.next_event().await.event.as_deref() == Some("subscribed") {
            break;
        }
    }
    let data = json!({"type": "notification.created", "id": 9});
    let result = server.publish_ok(ADA_CHANNEL, &data).await;
    let push = sse.next_message().await.json();
    assert_eq!((&push["offset"], &push["data"]), (&result["offset"], &data));
}

#[tokio::test]
async fn anonymous_connections_are_refused() {
    let server = Server::builder()
        .env("STELLWERK_ALLOW_ANONYMOUS", "true")
        .start()
        .await;
    let mut ws = server.ws("/ws").await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": ADA_CHANNEL}))
        .await;
    assert_ws_error(&reply, "forbidden");
    assert!(
        reply["message"].as_str().unwrap().contains("login"),
        "{reply}"
    );
}
