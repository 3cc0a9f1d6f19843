//! Which web pages may open `/ws` and `/sse` (`allowed_origins`), and the CORS headers that
//! let a page on the Stud.IP host read an SSE stream from the broker's host (`EventSource`
//! with `withCredentials`).
//!
//! Browsers send `Origin` on every WebSocket upgrade and cross-origin `EventSource`; a page of
//! another site could otherwise open a stream with a token it got hold of, or, with
//! `withCredentials`, ride on the visitor's cookies. Requests without `Origin` (PHP, other
//! non-browser clients) are not affected.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::protocol::ErrorCode;

/// The configured `allowed_origins`; empty: any origin.
#[derive(Debug, Clone)]
pub(crate) struct AllowedOrigins(Arc<[String]>);

impl AllowedOrigins {
    pub(crate) fn new(origins: &[String]) -> AllowedOrigins {
        AllowedOrigins(origins.iter().map(|o| o.to_ascii_lowercase()).collect())
    }

    /// Browsers send scheme and host in lower case; an operator may not have written them so.
    fn allows(&self, origin: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// Middleware for `/ws` and `/sse`: 403 `forbidden` for an `Origin` that is not allowed, and
/// CORS headers naming the origin on everything else (the answer depends on `Origin`,
/// hence `Vary`).
pub(crate) async fn guard(
    State(allowed): State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request.headers().get(ORIGIN).cloned();
    if let Some(origin) = &origin {
        let text = origin.to_str().unwrap_or_default();
        if !allowed.allows(text) {
            let shown: String = text
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(100)
                .collect();
            let mut response = ApiError::new(
                ErrorCode::Forbidden,
                format!("origin `{shown}` is not in allowed_origins"),
            )
            .into_response();
            response
                .headers_mut()
                .append(VARY, HeaderValue::from_static("origin"));
            return response;
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.append(VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// `OPTIONS /sse`: the CORS preflight that pages send when they set `Authorization` or
/// `Last-Event-ID` themselves (fetch-based `EventSource` replacements). [`guard`] has checked
/// the origin and adds the `Access-Control-Allow-Origin` part.
pub(crate) async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            (
                ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, last-event-id, cache-control",
            ),
            (ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_origins_match_case_insensitively_and_exactly() {
        let allowed = AllowedOrigins::new(&["https://StudIP.example.org".to_owned()]);
        assert!(allowed.allows("https://studip.example.org"));
        assert!(!allowed.allows("https://studip.example.org.evil.test"));
        assert!(!allowed.allows("http://studip.example.org"));
        assert!(!allowed.allows("https://studip.example.org:8443"));
        assert!(!allowed.allows("null"));
        assert!(!allowed.allows(""));
    }

    #[test]
    fn an_empty_list_allows_any_origin() {
        let allowed = AllowedOrigins::new(&[]);
        assert!(allowed.allows("https://anything.test"));
        assert!(allowed.allows("null"));
    }
}
