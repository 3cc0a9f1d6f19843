//! Tokens the broker must refuse, on every way in: `connect` frame, `?token=`, SSE.

use serde_json::{json, Value};
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{assert_http_error, assert_ws_error, now_secs, random_hex, tokens, Server};

/// Tokens that must be refused, with a name for the failure message.
fn bad_tokens(server: &Server) -> Vec<(&'static str, String)> {
    let now = now_secs();
    let valid = json!({"sub": "u-mallory", "iat": now, "exp": now + 3600});
    let with = |patch: Value| {
        let mut claims = valid.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    vec![
        ("bad signature", tokens::hs256(&random_hex(32), &valid)),
        // Well beyond the default 30 s leeway.
        ("expired", server.sign(&with(json!({"exp": now - 600})))),
        ("alg none", tokens::alg_none(&valid)),
        ("missing sub", server.sign(&with(json!({"sub": null})))),
        ("empty sub", server.sign(&with(json!({"sub": ""})))),
        ("missing exp", server.sign(&with(json!({"exp": null})))),
        (
            "not yet valid",
            server.sign(&with(json!({"nbf": now + 3600}))),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ]
}

#[tokio::test]
async fn refused_token_in_connect_frame_gets_unauthorized_then_4001() {
    let server = Server::start().await;
    for (what, token) in bad_tokens(&server) {
        let mut ws = server.ws("/ws").await;
        ws.send_json(&json!({"id": 1, "type": "connect", "token": token}))
            .await;
        let reply = ws.recv_json().await;
        assert_ws_error(&reply, "unauthorized");
        assert_eq!(reply["id"], 1, "{what}: {reply}");
        let (code, _reason) = ws.expect_close().await;
        assert_eq!(code, 4001, "{what}: close code");
    }
}

#[tokio::test]
async fn refused_token_in_url_gets_unauthorized_then_4001() {
    let server = Server::start().await;
    for (what, token) in bad_tokens(&server) {
        let mut ws = server.ws(&format!("/ws?token={token}")).await;
        let reply = ws.recv_json().await;
        assert_ws_error(&reply, "unauthorized");
        assert!(reply.get("id").is_none(), "{what}: no id: {reply}");
        let (code, _reason) = ws.expect_close().await;
        assert_eq!(code, 4001, "{what}: close code");
    }
}

#[tokio::test]
async fn refused_token_on_sse_is_401() {
    let server = Server::start().await;
    for (what, token) in bad_tokens(&server) {
        let resp = server
            .sse_response(&format!("/sse?channel=public:news&token={token}"), None)
            .await;
        let (status, body) = status_and_json(resp).await;
        assert_http_error(status, &body, 401, "unauthorized");
        let resp = server
            .sse_response("/sse?channel=public:news", Some(&token))
            .await;
        let (status, body) = status_and_json(resp).await;
        assert_eq!(status, 401, "{what} as Bearer: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
}

#[tokio::test]
async fn invalid_token_is_refused_even_when_anonymous_is_allowed() {
    let server = Server::builder()
        .env("STELLWERK_ALLOW_ANONYMOUS", "true")
        .start()
        .await;
    let token = tokens::hs256(
        &random_hex(32),
        &json!({"sub": "u-x", "exp": now_secs() + 60}),
    );
    let mut ws = server.ws(&format!("/ws?token={token}")).await;
    assert_ws_error(&ws.recv_json().await, "unauthorized");
    assert_eq!(ws.expect_close().await.0, 4001);
    let resp = server
        .sse_response(&format!("/sse?channel=public:news&token={token}"), None)
        .await;
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn token_expired_within_leeway_is_accepted() {
    let server = Server::start().await;
    let now = now_secs();
    // Five seconds late is inside the default 30 s leeway for clock skew.
    let token = server.sign(&json!({"sub": "u-late", "iat": now - 60, "exp": now - 5}));
    let mut ws = server.ws("/ws").await;
    let reply = ws
        .request(json!({"id": 1, "type": "connect", "token": token}))
        .await;
    assert_eq!(reply["type"], "connected", "{reply}");
    assert_eq!(reply["user"], "u-late");
}

#[tokio::test]
async fn extra_claims_do_not_get_in_the_way() {
    let server = Server::start().await;
    let token = server.mint(
        "0123456789abcdef0123456789abcdef",
        json!({"perm": "autor", "name": "Ada", "courses": {"fedcba9876543210fedcba9876543210": "dozent"}}),
        std::time::Duration::from_secs(600),
    );
    let mut ws = server.ws(&format!("/ws?token={token}")).await;
    let reply = ws.request(json!({"type": "connect"})).await;
    assert_eq!(reply["user"], "0123456789abcdef0123456789abcdef", "{reply}");
}

#[tokio::test]
async fn connection_that_never_authenticates_is_closed_with_4001() {
    let server = Server::builder()
        .env("STELLWERK_WEBSOCKET_CONNECT_TIMEOUT_SECONDS", 1)
        .start()
        .await;
    let mut ws = server.ws("/ws").await;
    let (code, _reason) = ws.expect_close().await;
    assert_eq!(code, 4001);
}
