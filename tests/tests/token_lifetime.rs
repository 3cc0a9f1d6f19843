//! Token lifetime on the WebSocket: a page keeps its connection by sending `refresh` with a new
//! token from Stud.IP before the old one runs out; a connection whose token ran out is closed
//! with 4004. The brokers here have no clock leeway, so tokens end exactly at `exp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use stellwerk_e2e::{assert_ws_error, Server, WsClient};

const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const BOB: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const OTHER_COURSE: &str = "5b7e2c1d9f0a4e3b8c6d1a2f3e4b5c6d";

/// Lifetime of the short tokens: `exp` is 1–2 s away (JWT times are whole seconds).
const SHORT: Duration = Duration::from_secs(2);
const HOUR: Duration = Duration::from_secs(3600);

async fn start() -> Server {
    Server::builder()
        .env("STELLWERK_JWT_LEEWAY_SECONDS", 0)
        .start()
        .await
}

/// The `exp` claim of a token (the middle part, base64url JSON).
fn exp_of(token: &str) -> u64 {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("three-part JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["exp"].as_u64().expect("numeric exp")
}

/// Sleeps until the wall clock is `margin` past `exp` (at most a few seconds here).
async fn sleep_past(exp: u64, margin: Duration) {
    let end = UNIX_EPOCH + Duration::from_secs(exp) + margin;
    let left = end
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    assert!(left < Duration::from_secs(5), "bounded sleep, was {left:?}");
    tokio::time::sleep(left).await;
}

/// `token` with the first character of its signature changed.
fn tampered_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("three-part JWT");
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    format!("{signed}.{first}{}", &signature[1..])
}

async fn assert_alive(ws: &mut WsClient) {
    let pong = ws.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

/// Reads until the close frame; asserts 4004 and the `disconnect` push right before it.
async fn assert_closed_as_expired(ws: &mut WsClient) {
    let (code, reason) = ws.expect_close().await;
    assert_eq!((code, reason.as_str()), (4004, "token expired"));
    let pending = ws.take_pending();
    assert_eq!(
        pending.last(),
        Some(&json!({"type": "disconnect", "code": 4004, "reason": "token expired"})),
        "the disconnect push comes right before the close: {pending:?}"
    );
}

#[tokio::test]
async fn connection_is_closed_with_4004_when_its_token_runs_out() {
    let server = start().await;
    let token = server.mint(ADA, json!({}), SHORT);
    let exp = exp_of(&token);
    let mut ws = server.ws(&format!("/ws?token={token}")).await;
    assert_alive(&mut ws).await;

    assert_closed_as_expired(&mut ws).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    // (The broker's timer runs on the monotonic clock: allow for a little drift.)
    assert!(
        now + Duration::from_millis(100) >= Duration::from_secs(exp),
        "closed before exp ({exp}), at {now:?}"
    );
}

#[tokio::test]
async fn connected_reports_when_the_token_runs_out() {
    let server = start().await;
    let token = server.mint(ADA, json!({}), HOUR);
    let mut ws = server.ws("/ws").await;
    let reply = ws.request(json!({"type": "connect", "token": token})).await;
    assert_eq!(reply["type"], "connected", "{reply}");
    assert_eq!(reply["user"], ADA, "{reply}");
    assert_eq!(reply["expires_at"], exp_of(&token), "{reply}");
}

#[tokio::test]
async fn refresh_before_expiry_keeps_the_connection() {
    let server = start().await;
    let first = server.mint(ADA, json!({}), SHORT);
    let mut ws = server.ws("/ws").await;
    // Authenticated through the `connect` frame this time.
    let reply = ws.request(json!({"type": "connect", "token": first})).await;
    assert_eq!(reply["type"], "connected", "{reply}");
    let (mut subscribed, _) = server.subscriber(BOB, "public:lifetime").await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:lifetime"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let second = server.mint(ADA, json!({}), HOUR);
    let reply = ws
        .request(json!({"id": 7, "type": "refresh", "token": second}))
        .await;
    assert_eq!(
        reply,
        json!({"id": 7, "type": "refreshed", "expires_at": exp_of(&second)})
    );

    sleep_past(exp_of(&first), Duration::from_millis(600)).await;
    assert_alive(&mut ws).await;
    // Still subscribed and receiving.
    server
        .publish_ok(
            "public:lifetime",
            &json!({"after": "expiry of the first token"}),
        )
        .await;
    for client in [&mut ws, &mut subscribed] {
        let push = client.recv_json().await;
        assert_eq!(push["type"], "message", "{push}");
        assert_eq!(push["data"]["after"], "expiry of the first token");
    }
}

#[tokio::test]
async fn refresh_with_a_shorter_token_moves_the_end_earlier() {
    let server = start().await;
    let mut ws = server.ws_as(ADA, json!({})).await;
    let short = server.mint(ADA, json!({}), SHORT);
    let reply = ws.request(json!({"type": "refresh", "token": short})).await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    assert_closed_as_expired(&mut ws).await;
}

#[tokio::test]
async fn refresh_with_another_users_token_is_forbidden_and_changes_nothing() {
    let server = start().await;
    let token = server.mint(ADA, json!({}), SHORT);
    let mut ws = server.ws(&format!("/ws?token={token}")).await;

    let bobs = server.mint(BOB, json!({}), HOUR);
    let reply = ws.request(json!({"type": "refresh", "token": bobs})).await;
    assert_ws_error(&reply, "forbidden");
    assert_alive(&mut ws).await;
    let connected = ws.request(json!({"type": "connect"})).await;
    assert_eq!(connected["user"], ADA, "still Ada: {connected}");

    // Ada's short token is still the one in force: it runs out on time.
    assert_closed_as_expired(&mut ws).await;
}

#[tokio::test]
async fn refresh_with_a_bad_token_is_unauthorized_and_the_connection_lives() {
    let server = start().await;
    let mut ws = server.ws_as(ADA, json!({})).await;
    let wrong_secret = stellwerk_e2e::tokens::hs256(
        "not-the-secret",
        &json!({"sub": ADA, "exp": exp_of(&server.token(ADA))}),
    );
    let bad = [
        "garbage".to_owned(),
        tampered_signature(&server.token(ADA)),
        server.sign(&json!({"sub": ADA, "exp": 1_000_000_000})),
        wrong_secret,
    ];
    for token in bad {
        let reply = ws.request(json!({"type": "refresh", "token": token})).await;
        assert_ws_error(&reply, "unauthorized");
        assert_alive(&mut ws).await;
    }
    let reply = ws.request(json!({"type": "refresh"})).await;
    assert_ws_error(&reply, "bad_request");
    let reply = ws.request(json!({"type": "refresh", "token": 42})).await;
    assert_ws_error(&reply, "bad_request");

    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:still-here"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

#[tokio::test]
async fn refreshed_claims_govern_later_subscribes() {
    let server = start().await;
    let claims = |courses: Value| json!({"perm": "autor", "courses": courses});
    let mut ws = server.ws_as(ADA, claims(json!({ COURSE: "autor" }))).await;
    let other = format!("course:{OTHER_COURSE}:chat");
    let reply = ws
        .request(json!({"type": "subscribe", "channel": other}))
        .await;
    assert_ws_error(&reply, "forbidden");

    // Stud.IP added Ada to the other course; the page refreshes its token.
    let token = server.mint(
        ADA,
        claims(json!({ COURSE: "autor", OTHER_COURSE: "autor" })),
        HOUR,
    );
    let reply = ws.request(json!({"type": "refresh", "token": token})).await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    let reply = ws
        .request(json!({"type": "subscribe", "channel": other}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    // And removed her from the first one: presence and new subscribes there are refused.
    let token = server.mint(ADA, claims(json!({ OTHER_COURSE: "autor" })), HOUR);
    let reply = ws.request(json!({"type": "refresh", "token": token})).await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    let first = format!("course:{COURSE}:chat");
    let reply = ws
        .request(json!({"type": "subscribe", "channel": first}))
        .await;
    assert_ws_error(&reply, "forbidden");
    let reply = ws
        .request(json!({"type": "presence", "channel": first}))
        .await;
    assert_ws_error(&reply, "forbidden");
}

#[tokio::test]
async fn a_refresh_that_drops_a_course_ends_that_subscription_only() {
    let server = start().await;
    let claims = |courses: Value| json!({"perm": "autor", "courses": courses});
    let both = claims(json!({ COURSE: "autor", OTHER_COURSE: "autor" }));
    let mut ws = server.ws_as(ADA, both).await;
    let (kept, dropped) = (
        format!("course:{OTHER_COURSE}:chat"),
        format!("course:{COURSE}:chat"),
    );
    for channel in [&kept, &dropped] {
        let reply = ws
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    // Stud.IP removed Ada from COURSE; the page refreshes its token.
    let token = server.mint(ADA, claims(json!({ OTHER_COURSE: "autor" })), HOUR);
    let reply = ws.request(json!({"type": "refresh", "token": token})).await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    let push = ws.recv_json().await;
    assert_eq!(push["type"], "unsubscribed", "{push}");
    assert_eq!(push["channel"], dropped.as_str(), "{push}");
    assert!(
        push["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "the push says why: {push}"
    );

    // Publishing to both: only the kept channel still reaches her.
    server.publish_ok(&dropped, &json!({"n": 1})).await;
    server.publish_ok(&kept, &json!({"n": 2})).await;
    let message = ws.recv_json().await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["channel"], kept.as_str(), "{message}");
    assert_eq!(message["data"], json!({"n": 2}));
}

#[tokio::test]
async fn anonymous_connections_cannot_refresh() {
    let server = Server::builder()
        .env("STELLWERK_ALLOW_ANONYMOUS", "true")
        .start()
        .await;
    let mut ws = server.ws("/ws").await;
    let reply = ws
        .request(json!({"type": "refresh", "token": server.token(ADA)}))
        .await;
    assert_ws_error(&reply, "forbidden");
    let connected = ws.request(json!({"type": "connect"})).await;
    assert_eq!(connected["user"], "", "still anonymous: {connected}");
    assert!(connected.get("expires_at").is_none(), "{connected}");
}
