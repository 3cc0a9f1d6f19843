//! `GET /api/info`: what this node runs and how busy it is, for Stud.IP's
//! admin pages and for operators checking a deployment (behind the API key).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::access::check_api_key;
use super::ApiError;
use crate::server::AppState;

pub(crate) async fn info(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_api_key(&app, &headers)?;
    let stats = app.hub.stats();
    let plugins: Vec<Value> = app
        .hub
        .registry()
        .list()
        .into_iter()
        .map(|p| json!({"name": p.name, "version": p.version, "namespaces": p.namespaces}))
        .collect();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "connections": stats.connections,
        "channels": stats.channels,
        "subscriptions": stats.subscriptions,
        "plugins": plugins,
    })))
}
