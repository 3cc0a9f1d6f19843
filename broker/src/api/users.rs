//! `POST /api/users/{user}/disconnect`: Stud.IP logs a user out (or locks the
//! account) and wants every open tab of theirs cut off at once.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::access::check_api_key;
use super::ApiError;
use crate::server::AppState;

/// Longest user id accepted, in bytes (Stud.IP's are 32 hex characters).
const MAX_USER_LEN: usize = 255;

/// Closes every WebSocket of the user with 4003 (after a `disconnect` push) and
/// ends their SSE streams. A user with no connection is not an error: the
/// answer says `"disconnected": 0`, so PHP can call it on every logout.
pub(crate) async fn disconnect(
    State(app): State<AppState>,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    check_api_key(&app, &headers)?;
    let Path(user) = user.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_user(&user)?;
    let disconnected = app.hub.disconnect_user(&user).await?;
    tracing::info!(
        user,
        disconnected,
        "disconnected a user on request of the API"
    );
    Ok(Json(json!({"user": user, "disconnected": disconnected})))
}

/// A user id is a token's `sub`: any non-empty string. Refuse only what no
/// Stud.IP id looks like, so that a mangled URL is a 400 and not a silent 0.
fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(ApiError::bad_request(format!(
            "user id must be 1 to {MAX_USER_LEN} bytes"
        )));
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::bad_request(
            "user id must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_like_studip_ones_pass_mangled_ones_do_not() {
        for ok in [
            "e7a0a84b161f3e8c09b4a0a2e8a58147",
            "nobody",
            "ada@example.org",
            "ü",
        ] {
            assert!(check_user(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", " ", "ada lovelace", "a\nb", "a\u{0}b", &"x".repeat(256)] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }
}
