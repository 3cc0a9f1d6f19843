//! Every WebSocket error code, and that a malformed frame never costs the connection.

use serde_json::{json, Value};
use stellwerk_e2e::{assert_ws_error, Server, WsClient};

/// The connection still works: a ping is answered.
async fn assert_alive(ws: &mut WsClient) {
    let pong = ws.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_lives_on() {
    let server = Server::start().await;
    let mut ws = server
        .ws(&format!("/ws?token={}", server.token("u-anna")))
        .await;

    // Frames without a usable id: the error carries no id.
    for frame in [
        r#"{"id":1,"type":"#,
        "not json at all",
        "[1,2,3]",
        r#""a string""#,
        "42",
        r#"{"type":"ping"}"#,
    ] {
        ws.send_text(frame).await;
        let reply = ws.recv_json().await;
        assert_ws_error(&reply, "bad_request");
        assert!(reply.get("id").is_none(), "no id for {frame:?}: {reply}");
        assert_alive(&mut ws).await;
    }

    // A non-numeric id is not an id.
    ws.send_text(r#"{"id":"one","type":"ping"}"#).await;
    assert_ws_error(&ws.recv_json().await, "bad_request");
    assert_alive(&mut ws).await;

    // A binary frame.
    ws.send_binary(b"{\"id\":9,\"type\":\"ping\"}".to_vec())
        .await;
    assert_ws_error(&ws.recv_json().await, "bad_request");
    assert_alive(&mut ws).await;

    // Frames with an id: the error answers that id.
    let cases: Vec<(u64, Value)> = vec![
        (10, json!({"id": 10, "type": "dance"})),
        (11, json!({"id": 11, "type": "subscribe"})),
        (
            13,
            json!({"id": 13, "type": "subscribe", "channel": "nocolon"}),
        ),
        (
            14,
            json!({"id": 14, "type": "subscribe", "channel": "public:"}),
        ),
        (
            15,
            json!({"id": 15, "type": "subscribe", "channel": ":news"}),
        ),
        (
            16,
            json!({"id": 16, "type": "subscribe", "channel": "Public:news"}),
        ),
        (
            17,
            json!({"id": 17, "type": "subscribe", "channel": "public:with space"}),
        ),
        (
            18,
            json!({"id": 18, "type": "subscribe", "channel": "public:ümlaut"}),
        ),
        (
            19,
            json!({"id": 19, "type": "subscribe", "channel": format!("public:{}", "a".repeat(250))}),
        ),
        (
            20,
            json!({"id": 20, "type": "subscribe", "channel": format!("{}:x", "n".repeat(65))}),
        ),
        (21, json!({"id": 21, "type": "unsubscribe"})),
        (22, json!({"id": 22, "type": "publish", "data": {}})),
    ];
    for (id, cmd) in cases {
        let reply = ws.request(cmd.clone()).await;
        assert_ws_error(&reply, "bad_request");
        assert_eq!(reply["id"], id, "for {cmd}: {reply}");
        assert_alive(&mut ws).await;
    }

    // Publish data that strict JSON parsers (PHP's json_decode, serde_json's Value) refuse:
    // an unpaired surrogate escape, a number beyond f64. Found by fuzzing (fuzz/README.md);
    // refused while parsing, before the plugin is asked (which would say `forbidden` here).
    for (id, data) in [
        (23, r#"{"t":"\udcf7"}"#),
        (24, r#"["\ud800x"]"#),
        (25, "1e400"),
    ] {
        ws.send_text(&format!(
            r#"{{"id":{id},"type":"publish","channel":"public:news","data":{data}}}"#
        ))
        .await;
        let reply = ws.recv_json().await;
        assert_ws_error(&reply, "bad_request");
        assert_eq!(reply["id"], id, "for {data}: {reply}");
        assert_alive(&mut ws).await;
    }

    // After all that, a subscription still works end to end.
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:news"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let result = server.publish_ok("public:news", &json!({"ok": true})).await;
    let push = ws.recv_json().await;
    assert_eq!(push["offset"], result["offset"], "{push}");
    assert_eq!(push["data"], json!({"ok": true}));
}

#[tokio::test]
async fn wrongly_typed_field_is_bad_request_answering_the_id() {
    let server = Server::start().await;
    let mut ws = server
        .ws(&format!("/ws?token={}", server.token("u-typed")))
        .await;
    // The id is plain to see, so the error must carry it (the client is waiting for it).
    for (id, cmd) in [
        (12, json!({"id": 12, "type": "subscribe", "channel": 42})),
        (
            13,
            json!({"id": 13, "type": "unsubscribe", "channel": ["public:news"]}),
        ),
        (14, json!({"id": 14, "type": "connect", "token": 5})),
    ] {
        ws.send_json(&cmd).await;
        let reply = ws.recv_json().await;
        assert_ws_error(&reply, "bad_request");
        assert_eq!(reply["id"], id, "for {cmd}: {reply}");
    }
    assert_alive(&mut ws).await;
}

#[tokio::test]
async fn longest_valid_channel_name_is_accepted() {
    let server = Server::start().await;
    // 255 bytes, using every allowed punctuation character.
    let prefix = "public:A-z_0.9:@=,/";
    let name = format!("{prefix}{}", "x".repeat(255 - prefix.len()));
    assert_eq!(name.len(), 255);
    let (_ws, subscribed) = server.subscriber("u-long", &name).await;
    assert_eq!(subscribed["channel"], name.as_str());
}

#[tokio::test]
async fn subscribing_twice_is_bad_request_and_delivers_once() {
    let server = Server::start().await;
    let (mut ws, _) = server.subscriber("u-ben", "public:news").await;
    let reply = ws
        .request(json!({"id": 2, "type": "subscribe", "channel": "public:news"}))
        .await;
    assert_ws_error(&reply, "bad_request");
    assert_eq!(reply["id"], 2);

    let first = server.publish_ok("public:news", &json!({"n": 1})).await;
    let second = server.publish_ok("public:news", &json!({"n": 2})).await;
    // A duplicate subscription would deliver the first message twice.
    assert_eq!(ws.recv_json().await["offset"], first["offset"]);
    assert_eq!(ws.recv_json().await["offset"], second["offset"]);
}

#[tokio::test]
async fn connect_twice_is_bad_request() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws").await;
    let token = server.token("u-cleo");
    let reply = ws
        .request(json!({"id": 1, "type": "connect", "token": token}))
        .await;
    assert_eq!(reply["type"], "connected", "{reply}");
    let reply = ws
        .request(json!({"id": 2, "type": "connect", "token": token}))
        .await;
    assert_ws_error(&reply, "bad_request");
    assert_eq!(reply["id"], 2);
    assert_alive(&mut ws).await;
}

#[tokio::test]
async fn commands_before_connect_are_unauthorized_and_the_connection_stays() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws").await;
    let reply = ws
        .request(json!({"id": 1, "type": "subscribe", "channel": "public:news"}))
        .await;
    assert_ws_error(&reply, "unauthorized");
    assert_eq!(reply["id"], 1);

    let reply = ws
        .request(json!({"id": 2, "type": "connect", "token": server.token("u-dirk")}))
        .await;
    assert_eq!(reply["type"], "connected", "{reply}");
    let reply = ws
        .request(json!({"id": 3, "type": "subscribe", "channel": "public:news"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

#[tokio::test]
async fn connect_without_token_is_unauthorized_when_anonymous_is_off() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws").await;
    let reply = ws.request(json!({"id": 1, "type": "connect"})).await;
    assert_ws_error(&reply, "unauthorized");
    assert_eq!(reply["id"], 1);
}

#[tokio::test]
async fn client_publish_on_public_is_forbidden_and_publishes_nothing() {
    let server = Server::start().await;
    let (mut reader, subscribed) = server.subscriber("u-eva", "public:news").await;
    let (mut writer, _) = server.subscriber("u-finn", "public:news").await;
    let reply = writer
        .request(json!({"id": 4, "type": "publish", "channel": "public:news", "data": {"x": 1}}))
        .await;
    assert_ws_error(&reply, "forbidden");
    assert_eq!(reply["id"], 4);

    // Nothing was published: the next message is the marker, right after the start offset.
    let marker = server
        .publish_ok("public:news", &json!({"marker": true}))
        .await;
    assert_eq!(marker["offset"], subscribed["offset"].as_u64().unwrap() + 1);
    let push = reader.recv_json().await;
    assert_eq!(push["data"], json!({"marker": true}), "{push}");
}

#[tokio::test]
async fn anonymous_subscribe_is_denied_by_the_public_plugin() {
    let server = Server::builder()
        .env("STELLWERK_ALLOW_ANONYMOUS", "true")
        .start()
        .await;
    let mut ws = server.ws("/ws").await;
    let reply = ws
        .request(json!({"id": 1, "type": "subscribe", "channel": "public:news"}))
        .await;
    // Authenticated as anonymous, so the plugin decides: it says no, with its reason.
    assert_ws_error(&reply, "forbidden");
    assert_eq!(reply["id"], 1);

    let reply = ws.request(json!({"id": 2, "type": "connect"})).await;
    assert_eq!(reply["type"], "connected", "{reply}");
    assert_eq!(reply["user"], "", "anonymous user: {reply}");
    assert_alive(&mut ws).await;
}

#[tokio::test]
async fn unknown_namespace_is_not_found() {
    let server = Server::start().await;
    let mut ws = server
        .ws(&format!("/ws?token={}", server.token("u-gus")))
        .await;
    let reply = ws
        .request(json!({"id": 1, "type": "subscribe", "channel": "nope:x"}))
        .await;
    assert_ws_error(&reply, "not_found");
    assert_eq!(reply["id"], 1);
    let reply = ws
        .request(json!({"id": 2, "type": "publish", "channel": "nope:x", "data": 1}))
        .await;
    assert_ws_error(&reply, "not_found");
    assert_alive(&mut ws).await;
}
