//! Health endpoints, as a load balancer calls them: no credentials.

use serde_json::json;
use stellwerk_e2e::Server;

#[tokio::test]
async fn healthz_and_readyz_answer_without_a_token() {
    let server = Server::start().await;
    assert_eq!(server.get("/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(
        server.get("/readyz").await,
        (200, json!({"status": "ready"}))
    );
}
