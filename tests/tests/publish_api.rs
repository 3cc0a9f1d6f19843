//! `POST /api/publish` as Stud.IP's PHP calls it, and every way it can refuse.

use serde_json::json;
use stellwerk_e2e::{assert_http_error, Server, WsClient};

/// Asserts that nothing reached `ws` on `channel` since `start`: the next push is a fresh
/// marker whose offset directly follows `start`.
async fn assert_nothing_published(server: &Server, ws: &mut WsClient, channel: &str, start: u64) {
    let marker = server.publish_ok(channel, &json!({"marker": true})).await;
    assert_eq!(
        marker["offset"],
        start + 1,
        "no message may have been published to {channel}"
    );
    let push = ws.recv_json().await;
    assert_eq!(push["data"], json!({"marker": true}), "{push}");
}

#[tokio::test]
async fn missing_or_wrong_api_key_is_401() {
    let server = Server::start().await;
    let body = json!({"channel": "public:news", "data": 1}).to_string();
    let (status, resp) = server.publish_raw(body.clone(), None).await;
    assert_http_error(status, &resp, 401, "unauthorized");
    let (status, resp) = server.publish_raw(body.clone(), Some("wrong-key")).await;
    assert_http_error(status, &resp, 401, "unauthorized");
    let almost = format!("{}x", server.api_key());
    let (status, resp) = server.publish_raw(body, Some(&almost)).await;
    assert_http_error(status, &resp, 401, "unauthorized");
}

#[tokio::test]
async fn malformed_requests_are_400_and_publish_nothing() {
    let server = Server::start().await;
    let (mut ws, subscribed) = server.subscriber("u-php", "public:news").await;
    let start = subscribed["offset"].as_u64().unwrap();
    let key = server.api_key().to_owned();
    let cases = [
        ("not JSON", "{\"channel\": \"public:news\",".to_owned()),
        ("JSON but no object", "[1,2]".to_owned()),
        (
            "missing data",
            json!({"channel": "public:news"}).to_string(),
        ),
        (
            "neither channel nor channels",
            json!({"data": 1}).to_string(),
        ),
        (
            "both channel and channels",
            json!({"channel": "public:news", "channels": ["public:news"], "data": 1}).to_string(),
        ),
        (
            "empty channels",
            json!({"channels": [], "data": 1}).to_string(),
        ),
        (
            "bad channel name",
            json!({"channel": "news", "data": 1}).to_string(),
        ),
        (
            "one bad name among good ones",
            json!({"channels": ["public:news", "public:bad name"], "data": 1}).to_string(),
        ),
        // Data that strict JSON parsers (PHP's json_decode) refuse would make every history
        // reply holding it unreadable for them. Found by fuzzing (fuzz/README.md).
        (
            "data with an unpaired surrogate escape",
            r#"{"channel": "public:news", "data": {"t": "\udcf7"}}"#.to_owned(),
        ),
        (
            "data with a number beyond f64",
            r#"{"channel": "public:news", "data": [1e400]}"#.to_owned(),
        ),
    ];
    for (what, body) in cases {
        let (status, resp) = server.publish_raw(body, Some(&key)).await;
        assert_eq!(status, 400, "{what}: {resp}");
        assert_http_error(status, &resp, 400, "bad_request");
    }
    assert_nothing_published(&server, &mut ws, "public:news", start).await;
}

#[tokio::test]
async fn unknown_namespace_is_404_and_no_channel_gets_the_message() {
    let server = Server::start().await;
    let (mut ws, subscribed) = server.subscriber("u-php", "public:news").await;
    let start = subscribed["offset"].as_u64().unwrap();

    let (status, resp) = server
        .publish(&json!({"channel": "nope:x", "data": {"a": 1}}))
        .await;
    assert_http_error(status, &resp, 404, "not_found");

    // All or nothing: the valid channel listed first must not get it either.
    let (status, resp) = server
        .publish(&json!({"channels": ["public:news", "nope:x"], "data": {"a": 2}}))
        .await;
    assert_http_error(status, &resp, 404, "not_found");
    assert_nothing_published(&server, &mut ws, "public:news", start).await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let server = Server::builder()
        .env("STELLWERK_LIMITS_MAX_PUBLISH_BYTES", 1024)
        .start()
        .await;
    let (mut ws, subscribed) = server.subscriber("u-php", "public:news").await;
    let start = subscribed["offset"].as_u64().unwrap();

    let big = json!({"channel": "public:news", "data": "x".repeat(4096)});
    let (status, resp) = server.publish(&big).await;
    assert_http_error(status, &resp, 413, "too_large");

    // Just under the limit still goes through.
    let fits = json!({"channel": "public:news", "data": "x".repeat(900)});
    let (status, resp) = server.publish(&fits).await;
    assert_eq!(status, 200, "{resp}");
    let push = ws.recv_json().await;
    assert_eq!(push["data"], fits["data"]);
    assert_eq!(
        push["offset"],
        start + 1,
        "the refused publish took no offset"
    );
    let start = start + 1;

    assert_nothing_published(&server, &mut ws, "public:news", start).await;
}

#[tokio::test]
async fn content_type_is_optional_and_json_content_type_works() {
    let server = Server::start().await;
    let (mut ws, _) = server.subscriber("u-php", "public:news").await;
    // publish_raw sends no Content-Type, like PHP's curl often does.
    let (status, resp) = server
        .publish_raw(
            json!({"channel": "public:news", "data": {"v": 1}}).to_string(),
            Some(server.api_key()),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(ws.recv_json().await["data"], json!({"v": 1}));

    let resp = reqwest::Client::new()
        .post(server.http_url("/api/publish"))
        .bearer_auth(server.api_key())
        .json(&json!({"channel": "public:news", "data": {"v": 2}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(ws.recv_json().await["data"], json!({"v": 2}));
}
