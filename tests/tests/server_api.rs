//! The server API Stud.IP's PHP uses besides publishing: which channels are active, who is in
//! a course channel, cutting off a user, and what a node runs — with real WebSocket and SSE
//! clients on the other side.

use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{assert_http_error, random_hex, Server, WsClient};

const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const CHAT: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";
const NEWS: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:news";
const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const TOM: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const BOB: &str = "76ed43ef286fb55cf9e41beadb484a9f";

/// How often, and how far apart, a test looks again for something that happens after a
/// connection closes (the broker notices that asynchronously).
const POLLS: usize = 200;
const POLL_EVERY: Duration = Duration::from_millis(25);

/// Claims of a course member with a display name.
fn member(status: &str, name: &str) -> Value {
    json!({"perm": "autor", "name": name, "courses": { COURSE: status }})
}

async fn subscribe(ws: &mut WsClient, channel: &str) {
    let reply = ws
        .request(json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(reply["type"], "subscribed", "subscribe {channel}: {reply}");
}

/// `method path` with `bearer` (or none): status and JSON body.
async fn call(server: &Server, method: &str, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let verb = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut req = reqwest::Client::new().request(verb, server.http_url(path));
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    status_and_json(resp).await
}

/// `method path` with the API key; fails the test unless it is 200.
async fn api_ok(server: &Server, method: &str, path: &str) -> Value {
    let (status, body) = call(server, method, path, Some(server.api_key())).await;
    assert_eq!(status, 200, "{method} {path}: {body}");
    body
}

/// Asks `path` until `done` holds for the answer (bounded); returns the last answer.
async fn api_until(server: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut body = Value::Null;
    for _ in 0..POLLS {
        body = api_ok(server, "GET", path).await;
        if done(&body) {
            return body;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    panic!("GET {path} never reached the expected state; last answer: {body}");
}

fn channel_list(entries: &[(&str, u64)]) -> Value {
    let channels: Vec<Value> = entries
        .iter()
        .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
        .collect();
    json!({ "channels": channels })
}

#[tokio::test]
async fn channels_lists_active_channels_with_subscriber_counts_and_filters_by_prefix() {
    let server = Server::start().await;
    assert_eq!(
        api_ok(&server, "GET", "/api/channels").await,
        channel_list(&[])
    );

    // Ada in two tabs (both on the chat), Tom once, Bob on public news over SSE.
    let mut ada_1 = server.ws_as(ADA, member("autor", "Ada")).await;
    let mut ada_2 = server.ws_as(ADA, member("autor", "Ada")).await;
    let mut tom = server.ws_as(TOM, member("tutor", "Tom")).await;
    subscribe(&mut ada_1, CHAT).await;
    subscribe(&mut ada_1, NEWS).await;
    subscribe(&mut ada_2, CHAT).await;
    subscribe(&mut tom, CHAT).await;
    let token = server.token(BOB);
    let mut bob = server
        .sse(&format!("/sse?channel=public:news&token={token}"))
        .await;
    loop {
        let event = bob.next_event().await;
        if event.event.as_deref() == Some("subscribed") {
            break;
        }
    }

    assert_eq!(
        api_ok(&server, "GET", "/api/channels").await,
        channel_list(&[(CHAT, 3), (NEWS, 1), ("public:news", 1)]),
        "every channel with a subscriber, by name; connections counted"
    );
    assert_eq!(
        api_ok(&server, "GET", "/api/channels?prefix=public:").await,
        channel_list(&[("public:news", 1)])
    );
    assert_eq!(
        api_ok(&server, "GET", &format!("/api/channels?prefix={CHAT}")).await,
        channel_list(&[(CHAT, 3)])
    );
    assert_eq!(
        api_ok(&server, "GET", "/api/channels?prefix=user:").await,
        channel_list(&[])
    );
    assert_eq!(
        api_ok(&server, "GET", "/api/channels?prefix=").await,
        channel_list(&[(CHAT, 3), (NEWS, 1), ("public:news", 1)]),
        "an empty prefix lists everything"
    );
    let (status, body) = call(
        &server,
        "GET",
        "/api/channels?prefix=course%20x",
        Some(server.api_key()),
    )
    .await;
    assert_http_error(status, &body, 400, "bad_request");

    // Unsubscribing and closing count down; the last one leaving removes the channel.
    let reply = ada_1
        .request(json!({"type": "unsubscribe", "channel": NEWS}))
        .await;
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    assert_eq!(
        api_ok(&server, "GET", "/api/channels?prefix=course:").await,
        channel_list(&[(CHAT, 3)])
    );
    ada_2.close().await;
    api_until(&server, "/api/channels?prefix=course:", |b| {
        *b == channel_list(&[(CHAT, 2)])
    })
    .await;
    ada_1.close().await;
    tom.close().await;
    drop(bob);
    api_until(&server, "/api/channels", |b| *b == channel_list(&[])).await;
}

#[tokio::test]
async fn presence_lists_each_user_once_with_the_info_the_plugin_gave() {
    let server = Server::start().await;
    let path = format!("/api/channels/{CHAT}/presence");
    assert_eq!(
        api_ok(&server, "GET", &path).await,
        json!({"channel": CHAT, "members": []})
    );

    let mut ada_1 = server.ws_as(ADA, member("autor", "Ada")).await;
    let mut ada_2 = server.ws_as(ADA, member("autor", "Ada")).await;
    let mut tom = server.ws_as(TOM, member("tutor", "Tom")).await;
    for ws in [&mut ada_1, &mut ada_2, &mut tom] {
        subscribe(ws, CHAT).await;
    }
    let members = |body: &Value| -> Vec<Value> {
        let mut members = body["members"].as_array().expect("members").clone();
        members.sort_by_key(|m| m["user"].as_str().unwrap_or_default().to_owned());
        members
    };
    let body = api_ok(&server, "GET", &path).await;
    assert_eq!(body["channel"], CHAT);
    assert_eq!(
        members(&body),
        vec![
            json!({"user": TOM, "info": {"name": "Tom"}}),
            json!({"user": ADA, "info": {"name": "Ada"}}),
        ],
        "two users, Ada once although she has two connections: {body}"
    );

    // Ada stays while one of her connections does.
    ada_1.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(members(&api_ok(&server, "GET", &path).await).len(), 2);
    ada_2.close().await;
    let body = api_until(&server, &path, |b| {
        b["members"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert_eq!(
        body,
        json!({"channel": CHAT, "members": [{"user": TOM, "info": {"name": "Tom"}}]})
    );
    drop(tom);

    let key = Some(server.api_key());
    for (path, status, code) in [
        ("/api/channels/public:news/presence", 400, "bad_request"),
        ("/api/channels/no-namespace/presence", 400, "bad_request"),
        ("/api/channels/nobody:x/presence", 404, "not_found"),
    ] {
        let (got, body) = call(&server, "GET", path, key).await;
        assert_http_error(got, &body, status, code);
    }
    let (_, body) = call(&server, "GET", "/api/channels/public:news/presence", key).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("presence")),
        "the message says why: {body}"
    );
}

#[tokio::test]
async fn disconnect_cuts_off_every_connection_of_the_user_and_nobody_else() {
    let server = Server::start().await;
    let mut ada_1 = server.ws_as(ADA, member("autor", "Ada")).await;
    let mut ada_2 = server.ws_as(ADA, member("autor", "Ada")).await;
    subscribe(&mut ada_1, CHAT).await;
    let token = server.token(ADA);
    let mut ada_sse = server
        .sse(&format!("/sse?channel=public:news&token={token}"))
        .await;
    loop {
        let event = ada_sse.next_event().await;
        if event.event.as_deref() == Some("subscribed") {
            break;
        }
    }
    let mut tom = server.ws_as(TOM, member("tutor", "Tom")).await;
    subscribe(&mut tom, CHAT).await;

    let body = api_ok(&server, "POST", &format!("/api/users/{ADA}/disconnect")).await;
    assert_eq!(body, json!({"user": ADA, "disconnected": 3}));

    for ws in [&mut ada_1, &mut ada_2] {
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, 4003, "close code; reason {reason:?}");
        assert_eq!(reason, "disconnected by the server");
        let pushes = ws.take_pending();
        assert!(
            pushes.contains(
                &json!({"type": "disconnect", "code": 4003, "reason": "disconnected by the server"})
            ),
            "a disconnect push before the close: {pushes:?}"
        );
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while ada_sse.next_block().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "Ada's SSE stream must end");

    // Tom is still there and still gets messages; Ada has left the chat.
    let reply = tom
        .request(json!({"type": "presence", "channel": CHAT}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    let users: Vec<&str> = reply["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert_eq!(users, vec![TOM], "{reply}");
    server
        .publish_ok(CHAT, &json!({"after": "disconnect"}))
        .await;
    loop {
        let push = tom.recv_json().await;
        if push["type"] == "message" {
            assert_eq!(push["data"], json!({"after": "disconnect"}));
            break;
        }
    }

    // Nobody left to cut off: not an error.
    let body = api_ok(&server, "POST", &format!("/api/users/{ADA}/disconnect")).await;
    assert_eq!(body, json!({"user": ADA, "disconnected": 0}));
    let body = api_ok(&server, "POST", "/api/users/never-connected/disconnect").await;
    assert_eq!(body, json!({"user": "never-connected", "disconnected": 0}));
    let (status, body) = call(
        &server,
        "POST",
        "/api/users/ada%20lovelace/disconnect",
        Some(server.api_key()),
    )
    .await;
    assert_http_error(status, &body, 400, "bad_request");
}

#[tokio::test]
async fn info_reports_version_load_and_plugins() {
    let server = Server::start().await;
    let info = api_ok(&server, "GET", "/api/info").await;
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info}");
    assert!(info["uptime_seconds"].is_u64(), "{info}");
    assert_eq!(info["connections"], 0, "{info}");
    assert_eq!(info["channels"], 0, "{info}");
    assert_eq!(info["subscriptions"], 0, "{info}");
    let mut plugins: Vec<(String, Value)> = info["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| {
            assert!(p["version"].as_str().is_some_and(|v| !v.is_empty()), "{p}");
            (
                p["name"].as_str().expect("name").to_owned(),
                p["namespaces"].clone(),
            )
        })
        .collect();
    plugins.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        plugins,
        vec![
            ("course".to_owned(), json!(["course"])),
            ("public".to_owned(), json!(["public"])),
            ("user".to_owned(), json!(["user"])),
        ]
    );

    let mut ada = server.ws_as(ADA, member("autor", "Ada")).await;
    subscribe(&mut ada, CHAT).await;
    subscribe(&mut ada, "public:news").await;
    let (mut tom, _) = server.subscriber(TOM, "public:news").await;
    let info = api_ok(&server, "GET", "/api/info").await;
    assert_eq!(info["connections"], 2, "{info}");
    assert_eq!(info["channels"], 2, "{info}");
    assert_eq!(info["subscriptions"], 3, "{info}");

    let reply = tom
        .request(json!({"type": "unsubscribe", "channel": "public:news"}))
        .await;
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    let info = api_ok(&server, "GET", "/api/info").await;
    assert_eq!(info["subscriptions"], 2, "{info}");
    ada.close().await;
    api_until(&server, "/api/info", |i| i["connections"] == 1).await;
}

#[tokio::test]
async fn every_server_api_endpoint_needs_the_api_key_not_the_admin_token() {
    let admin = random_hex(16);
    let server = Server::builder()
        .env("STELLWERK_ADMIN_TOKEN", &admin)
        .start()
        .await;
    let (_ada, _) = server.subscriber(ADA, "public:news").await;
    let endpoints = [
        ("GET", "/api/channels".to_owned()),
        ("GET", "/api/channels?prefix=public:".to_owned()),
        ("GET", format!("/api/channels/{CHAT}/presence")),
        ("POST", format!("/api/users/{ADA}/disconnect")),
        ("GET", "/api/info".to_owned()),
    ];
    for (method, path) in &endpoints {
        for bearer in [None, Some("not-the-key"), Some(admin.as_str())] {
            let (status, body) = call(&server, method, path, bearer).await;
            assert_http_error(status, &body, 401, "unauthorized");
        }
    }
    // Nothing was done on the way: Ada is still connected and subscribed.
    assert_eq!(
        api_ok(&server, "GET", "/api/channels").await,
        channel_list(&[("public:news", 1)])
    );
    for (method, path) in &endpoints {
        if *method == "GET" {
            api_ok(&server, method, path).await;
        }
    }
}
