//! `GET /api/channels/{channel}/history?limit=&since=`: what a channel still
//! keeps, for Stud.IP's server (behind the API key, so unfiltered).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::access::check_api_key;
use super::ApiError;
use crate::hub;
use crate::protocol;
use crate::server::AppState;

#[derive(Deserialize)]
pub(crate) struct HistoryParams {
    limit: Option<u64>,
    since: Option<u64>,
}

pub(crate) async fn history(
    State(app): State<AppState>,
    headers: HeaderMap,
    channel: Result<Path<String>, PathRejection>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_api_key(&app, &headers)?;
    let Path(name) = channel.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(format!(
            "`limit` and `since` must be non-negative integers: {}",
            e.body_text()
        ))
    })?;
    let channel = hub::parse_channel(&name)?;
    let history = app
        .hub
        .history(&channel, params.limit, params.since)
        .await?;
    let body = format!(
        "{{{}}}",
        protocol::history_fields(channel.as_str(), &history.epoch, &history.messages)
    );
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
