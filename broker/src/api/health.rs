//! `GET /healthz` and `GET /readyz`: open, for load balancers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::server::AppState;

/// The process is up and serving requests.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Plugins are loaded (the server only routes once they are) and it is not
/// shutting down.
pub(crate) async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    if *app.shutdown.borrow() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    }
}
