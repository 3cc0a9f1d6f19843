//! One `debug` line per HTTP request (`RUST_LOG=stellwerk::request_log=debug`), with the
//! credentials in its query string redacted: browsers put their token into the URL
//! (`/ws?token=…`, `/sse?token=…`), and logs are read by more people than tokens should be.

use std::fmt;

use axum::extract::Request;
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::Response;

/// Query parameters whose values never reach a log (compared after percent-decoding the
/// name, case-insensitively, so that `%74oken=` is caught too).
const SECRET_PARAMS: &[&str] = &["token", "access_token", "api_key", "key", "secret"];

/// Middleware: logs method, path, redacted query and status of every request.
pub(crate) async fn log(request: Request, next: Next) -> Response {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    tracing::debug!(
        "{method} {} → {}",
        RedactedUri(&uri),
        response.status().as_u16()
    );
    response
}

/// A URI's path and query, secret parameter values replaced by `[redacted]`.
pub(crate) struct RedactedUri<'a>(pub(crate) &'a Uri);

impl fmt::Display for RedactedUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.path())?;
        if let Some(query) = self.0.query() {
            write!(f, "?{}", redact_query(query))?;
        }
        Ok(())
    }
}

/// `channel=a&token=eyJ…` → `channel=a&token=[redacted]`; every other byte as it came.
pub(crate) fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(name, _)| name.to_ascii_lowercase())
                .unwrap_or_default();
            if SECRET_PARAMS.contains(&decoded.as_str()) {
                format!("{name}=[redacted]")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_values_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_query("channel=public:a&token=eyJhbGciOi.x.y&lastEventId=AQ"),
            "channel=public:a&token=[redacted]&lastEventId=AQ"
        );
        assert_eq!(redact_query("token"), "token=[redacted]");
        assert_eq!(redact_query("batch=1"), "batch=1");
    }

    #[test]
    fn encoded_or_differently_cased_names_are_redacted_too() {
        for query in [
            "%74oken=abc",
            "TOKEN=abc",
            "To%6Ben=abc",
            "access_token=abc",
        ] {
            let redacted = redact_query(query);
            assert!(!redacted.contains("abc"), "{query} → {redacted}");
            assert!(redacted.ends_with("=[redacted]"), "{query} → {redacted}");
        }
    }

    #[test]
    fn redacted_uri_shows_path_and_redacted_query() {
        let uri: Uri = "/sse?channel=public:a&token=secret.token.value"
            .parse()
            .unwrap();
        assert_eq!(
            RedactedUri(&uri).to_string(),
            "/sse?channel=public:a&token=[redacted]"
        );
        let uri: Uri = "/healthz".parse().unwrap();
        assert_eq!(RedactedUri(&uri).to_string(), "/healthz");
    }
}
