//! `allowed_origins` and CORS as browsers meet them: a page of another site is refused on
//! `/ws` and `/sse`, the Stud.IP page gets its stream with the CORS headers that
//! `EventSource` with `withCredentials` needs, and clients without `Origin` (PHP) are not
//! affected.

use serde_json::json;
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::ws::refused_upgrade;
use stellwerk_e2e::{assert_http_error, Server, WsClient};

const STUDIP: &str = "https://studip.example.org";
const EVIL: &str = "https://evil.example.net";

async fn server_for_studip() -> Server {
    Server::builder()
        .env(
            "STELLWERK_ALLOWED_ORIGINS",
            format!("{STUDIP}, https://other.example.org:8443"),
        )
        .start()
        .await
}

/// `GET path` (or another method) with an `Origin` header.
async fn request(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .request(method, server.http_url(path))
        .header("Accept", "text/event-stream");
    if let Some(origin) = origin {
        req = req.header("Origin", origin);
    }
    req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_websocket_from_an_origin_not_listed_is_refused_with_403() {
    let server = server_for_studip().await;
    let token = server.token("u-mallory");
    for origin in [EVIL, "null", "https://studip.example.org.evil.example.net"] {
        let (status, body) =
            refused_upgrade(&server.ws_url(&format!("/ws?token={token}")), origin).await;
        assert_http_error(status, &body, 403, "forbidden");
    }
    // Listed origins (any case) and clients without Origin get their WebSocket.
    for origin in [Some(STUDIP), Some("HTTPS://StudIP.example.org"), None] {
        let mut ws = WsClient::connect_from(&server.ws_url(&format!("/ws?token={token}")), origin)
            .await
            .unwrap_or_else(|e| panic!("{origin:?}: {e:#}"));
        let reply = ws
            .request(json!({"type": "subscribe", "channel": "public:news"}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{origin:?}: {reply}");
    }
}

#[tokio::test]
async fn an_sse_stream_from_an_origin_not_listed_is_refused_with_403() {
    let server = server_for_studip().await;
    let path = format!(
        "/sse?channel=public:news&token={}",
        server.token("u-mallory")
    );
    let resp = request(&server, reqwest::Method::GET, &path, Some(EVIL)).await;
    assert!(header(&resp, "access-control-allow-origin").is_none());
    let (status, body) = status_and_json(resp).await;
    assert_http_error(status, &body, 403, "forbidden");
    // The same request from the Stud.IP page, or without Origin, is served.
    for origin in [Some(STUDIP), None] {
        let resp = request(&server, reqwest::Method::GET, &path, origin).await;
        assert_eq!(resp.status().as_u16(), 200, "{origin:?}");
    }
}

#[tokio::test]
async fn sse_answers_carry_the_cors_headers_for_credentialed_event_source() {
    let server = server_for_studip().await;
    let path = format!("/sse?channel=public:news&token={}", server.token("u-ada"));
    let resp = request(&server, reqwest::Method::GET, &path, Some(STUDIP)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(STUDIP)
    );
    assert_eq!(
        header(&resp, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(
        header(&resp, "vary").is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
        "{:?}",
        resp.headers()
    );
    // Refusals a page must be able to read (a 401 for an expired token) carry them too.
    let resp = request(
        &server,
        reqwest::Method::GET,
        "/sse?channel=public:news&token=not.a.jwt",
        Some("https://other.example.org:8443"),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("https://other.example.org:8443")
    );
    // Without Origin there is nothing to allow.
    let resp = request(&server, reqwest::Method::GET, &path, None).await;
    assert!(header(&resp, "access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_sse_preflight_is_answered_for_listed_origins_only() {
    let server = server_for_studip().await;
    let resp = request(
        &server,
        reqwest::Method::OPTIONS,
        "/sse?channel=public:news",
        Some(STUDIP),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(STUDIP)
    );
    assert_eq!(
        header(&resp, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&resp, "access-control-allow-methods").as_deref(),
        Some("GET")
    );
    let allowed_headers = header(&resp, "access-control-allow-headers").unwrap_or_default();
    for needed in ["authorization", "last-event-id"] {
        assert!(allowed_headers.contains(needed), "{allowed_headers}");
    }
    let resp = request(
        &server,
        reqwest::Method::OPTIONS,
        "/sse?channel=public:news",
        Some(EVIL),
    )
    .await;
    let (status, body) = status_and_json(resp).await;
    assert_http_error(status, &body, 403, "forbidden");
}

#[tokio::test]
async fn without_allowed_origins_any_page_may_connect() {
    let server = Server::start().await;
    let token = server.token("u-ada");
    let mut ws = WsClient::connect_from(&server.ws_url(&format!("/ws?token={token}")), Some(EVIL))
        .await
        .expect("any origin is allowed by default");
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "public:news"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let path = format!("/sse?channel=public:news&token={token}");
    let resp = request(&server, reqwest::Method::GET, &path, Some(EVIL)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(EVIL)
    );
    // Loopback only: no warning about it.
    assert!(
        !server.log().contains("allowed_origins is empty"),
        "{}",
        server.log()
    );
}
