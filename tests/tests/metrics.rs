//! `GET /metrics` as an operator's Prometheus scrapes it: behind the admin token.

use serde_json::json;
use stellwerk_e2e::{assert_http_error, Server};

/// The value of the sample line `name{labels}` (or `name` alone).
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

async fn scrape(server: &Server, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(server.http_url("/metrics"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("GET /metrics");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

#[tokio::test]
async fn metrics_are_off_without_an_admin_token() {
    let server = Server::start().await;
    let (status, body) = server.get("/metrics").await;
    assert_http_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn metrics_count_connections_deliveries_and_plugin_calls() {
    let server = Server::builder()
        .env("STELLWERK_ADMIN_TOKEN", "admin-secret")
        .start()
        .await;
    let (status, _) = scrape(&server, None).await;
    assert_eq!(status, 401);
    let (status, _) = scrape(&server, Some(server.api_key())).await;
    assert_eq!(status, 401, "the publish key is not the admin token");

    let (mut a, _) = server.subscriber("u-a", "public:metrics").await;
    let (mut b, _) = server.subscriber("u-b", "public:metrics").await;
    for i in 0..3 {
        server.publish_ok("public:metrics", &json!({"i": i})).await;
    }
    for ws in [&mut a, &mut b] {
        for _ in 0..3 {
            assert_eq!(ws.recv_json().await["type"], "message");
        }
    }
    let (status, text) = scrape(&server, Some("admin-secret")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&text, "stellwerk_connections"), 2);
    assert_eq!(sample(&text, "stellwerk_subscriptions"), 2);
    assert_eq!(sample(&text, "stellwerk_messages_published_total"), 3);
    assert_eq!(sample(&text, "stellwerk_deliveries_total"), 6);
    let subscribe = r#"plugin="public",hook="authorize-subscribe""#;
    assert_eq!(
        sample(
            &text,
            &format!("stellwerk_plugin_calls_total{{{subscribe}}}")
        ),
        2
    );
    assert_eq!(
        sample(
            &text,
            &format!("stellwerk_plugin_faults_total{{{subscribe}}}")
        ),
        0
    );
    let publish = r#"plugin="public",hook="on-publish""#;
    assert_eq!(
        sample(&text, &format!("stellwerk_plugin_calls_total{{{publish}}}")),
        3
    );
    assert_eq!(
        sample(
            &text,
            &format!("stellwerk_plugin_call_duration_seconds_count{{{publish}}}")
        ),
        3
    );
}
