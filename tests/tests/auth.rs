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
        // jsonwebtoken ignores an `nbf` that is not a number; found by fuzzing.
        (
            "nbf not a number",
            server.sign(&with(json!({"nbf": (now + 3600).to_string()}))),
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

/// Whether the broker accepts `token`: on the WebSocket (`connect`) and on SSE (`?token=`).
async fn accepted(server: &Server, token: &str) -> bool {
    let mut ws = server.ws("/ws").await;
    let reply = ws
        .request(json!({"id": 1, "type": "connect", "token": token}))
        .await;
    let ws_ok = reply["type"] == "connected";
    if !ws_ok {
        assert_ws_error(&reply, "unauthorized");
        assert_eq!(ws.expect_close().await.0, 4001);
    }
    let resp = server
        .sse_response(&format!("/sse?channel=public:news&token={token}"), None)
        .await;
    let sse_ok = resp.status().as_u16() == 200;
    assert_eq!(ws_ok, sse_ok, "WebSocket and SSE disagree: {reply}");
    ws_ok
}

#[tokio::test]
async fn configured_audience_and_issuer_are_checked() {
    let server = Server::builder()
        .env("STELLWERK_JWT_AUDIENCE", "stellwerk")
        .env("STELLWERK_JWT_ISSUER", "https://studip.example.org")
        .start()
        .await;
    let now = now_secs();
    let claims = |aud: Value, iss: Value| {
        let mut claims = json!({"sub": "u-ada", "iat": now, "exp": now + 600});
        for (name, value) in [("aud", aud), ("iss", iss)] {
            if !value.is_null() {
                claims[name] = value;
            }
        }
        claims
    };
    let good_iss = json!("https://studip.example.org");
    assert!(
        accepted(
            &server,
            &server.sign(&claims(json!("stellwerk"), good_iss.clone()))
        )
        .await
    );
    assert!(
        accepted(
            &server,
            &server.sign(&claims(json!(["x", "stellwerk"]), good_iss.clone()))
        )
        .await
    );
    for (what, aud, iss) in [
        ("no aud", Value::Null, good_iss.clone()),
        ("wrong aud", json!("another-service"), good_iss.clone()),
        ("no iss", json!("stellwerk"), Value::Null),
        (
            "wrong iss",
            json!("stellwerk"),
            json!("https://evil.example.net"),
        ),
    ] {
        assert!(
            !accepted(&server, &server.sign(&claims(aud, iss))).await,
            "{what} must be refused"
        );
    }
}

/// A config file with these `[[jwt.keys]]` (kid, secret) and nothing else for JWT.
fn key_config(keys: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = String::new();
    for (kid, secret) in keys {
        text.push_str(&format!(
            "[[jwt.keys]]\nkid = \"{kid}\"\nsecret = \"{secret}\"\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("stellwerk-e2e-keys-{}.toml", random_hex(8)));
    std::fs::write(&path, text).expect("write config");
    path
}

async fn start_with_keys(file: &std::path::Path) -> Server {
    Server::builder()
        .arg("--config")
        .arg(file.display())
        .unset("STELLWERK_JWT_SECRET")
        .start()
        .await
}

#[tokio::test]
async fn a_kid_rotation_accepts_both_keys_then_only_the_new_one() {
    let (old, new) = (random_hex(32), random_hex(32));
    let now = now_secs();
    let claims = json!({"sub": "u-ada", "iat": now, "exp": now + 600});
    let old_token = tokens::hs256_with_kid(&old, "2026-01", &claims);
    let new_token = tokens::hs256_with_kid(&new, "2026-02", &claims);

    // Step 1 of the rotation: both keys configured.
    let both = key_config(&[("2026-01", &old), ("2026-02", &new)]);
    let server = start_with_keys(&both).await;
    assert!(accepted(&server, &old_token).await, "old key by kid");
    assert!(accepted(&server, &new_token).await, "new key by kid");
    for (what, token) in [
        (
            "unknown kid",
            tokens::hs256_with_kid(&old, "2025-12", &claims),
        ),
        (
            "kid of the other key",
            tokens::hs256_with_kid(&new, "2026-01", &claims),
        ),
        ("no kid", tokens::hs256(&old, &claims)),
    ] {
        assert!(!accepted(&server, &token).await, "{what} must be refused");
    }
    let mut ws = server.ws("/ws").await;
    let reply = ws
        .request(json!({"id": 1, "type": "connect", "token": tokens::hs256_with_kid(&old, "2025-12", &claims)}))
        .await;
    assert_ws_error(&reply, "unauthorized");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("2025-12"),
        "names the unknown kid: {reply}"
    );
    drop(server);

    // Step 2, after the old tokens have expired: the old key removed, a restart.
    let only_new = key_config(&[("2026-02", &new)]);
    let server = start_with_keys(&only_new).await;
    assert!(
        !accepted(&server, &old_token).await,
        "a token of the removed key"
    );
    assert!(accepted(&server, &new_token).await);
    let _ = std::fs::remove_file(both);
    let _ = std::fs::remove_file(only_new);
}

#[tokio::test]
async fn tokens_never_reach_the_log_even_at_trace_level() {
    let server = Server::builder()
        .env("STELLWERK_ALLOWED_ORIGINS", "https://studip.example.org")
        // Everything the broker and its HTTP and WebSocket libraries can say (the plugin
        // compiler's own tracing would only make the log huge).
        .env(
            "RUST_LOG",
            "trace,cranelift=info,regalloc2=info,wasmtime=info,wasmparser=info,wit=info,\
             object=info,gimli=info,notify=info",
        )
        .start()
        .await;
    let valid = || server.token(&format!("u-{}", random_hex(4)));
    let bad = || {
        tokens::hs256(
            &random_hex(32),
            &json!({"sub": "u-x", "exp": now_secs() + 60}),
        )
    };
    let mut seen: Vec<String> = Vec::new();

    // WebSocket: `?token=` accepted and refused, a token in the connect frame.
    let token = valid();
    let mut ws = server.ws(&format!("/ws?token={token}")).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:news"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    seen.push(token);
    let token = bad();
    let mut ws = server.ws(&format!("/ws?token={token}")).await;
    assert_ws_error(&ws.recv_json().await, "unauthorized");
    assert_eq!(ws.expect_close().await.0, 4001);
    seen.push(token);
    let token = valid();
    let mut ws = server.ws("/ws").await;
    let reply = ws
        .request(json!({"id": 1, "type": "connect", "token": token}))
        .await;
    assert_eq!(reply["type"], "connected", "{reply}");
    seen.push(token);
    // Refused by Origin before the upgrade.
    let token = valid();
    let (status, _) = stellwerk_e2e::ws::refused_upgrade(
        &server.ws_url(&format!("/ws?token={token}")),
        "https://evil.example.net",
    )
    .await;
    assert_eq!(status, 403);
    seen.push(token);

    // SSE: accepted, refused token, refused origin, percent-encoded parameter name.
    for (token, origin, want) in [
        (valid(), None, 200),
        (bad(), None, 401),
        (valid(), Some("https://evil.example.net"), 403),
    ] {
        let mut req = reqwest::Client::new()
            .get(server.http_url(&format!("/sse?channel=public:news&token={token}")));
        if let Some(origin) = origin {
            req = req.header("Origin", origin);
        }
        let resp = req.send().await.expect("GET /sse");
        assert_eq!(resp.status().as_u16(), want);
        seen.push(token);
    }
    let token = valid();
    let resp = server
        .sse_response(&format!("/sse?channel=public:news&%74oken={token}"), None)
        .await;
    assert_eq!(
        resp.status().as_u16(),
        200,
        "the encoded name is a token too"
    );
    seen.push(token);

    // The request log lines are there (with the token replaced), the tokens are not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.log().contains("%74oken=[redacted]") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = server.log();
    assert!(
        log.contains("GET /ws?token=[redacted] → 101"),
        "request log for /ws"
    );
    assert!(
        log.contains("GET /ws?token=[redacted] → 403"),
        "request log for /ws"
    );
    assert!(log.contains("GET /sse?channel=public:news&token=[redacted] → 401"));
    assert!(log.contains("%74oken=[redacted]"));
    for token in &seen {
        // The signature alone would be enough to reuse nothing, but header and claims are
        // the part most often logged in pieces.
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(
            !log.contains(token.as_str()) && !log.contains(signature),
            "a token reached the log ({} bytes of log)",
            log.len()
        );
    }
}
