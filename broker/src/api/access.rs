//! Who may call what: the API key for Stud.IP's `/api/*`, the admin token for
//! `/admin/*` and `/metrics` on the public listener. Keys are compared in
//! constant time ([`ApiKey`]).

use axum::http::HeaderMap;

use super::ApiError;
use crate::auth::{self, ApiKey};
use crate::protocol::ErrorCode;
use crate::server::AppState;

/// `Authorization: Bearer <api key>`, or 401.
pub(super) fn check_api_key(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match auth::bearer_token(headers) {
        Some(presented) if app.api_key.matches(presented) => Ok(()),
        Some(_) => Err(ApiError::new(ErrorCode::Unauthorized, "wrong API key")),
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing API key (`Authorization: Bearer <api key>`)",
        )),
    }
}

/// `Authorization: Bearer <admin token>`, or 401; 404 while no admin token is
/// configured (`what` is off then). `what` names the endpoint in the message.
pub(super) fn check_admin_token(
    app: &AppState,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), ApiError> {
    let Some(admin_token) = app.config.admin_token.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{what} is off: configure admin_token (STELLWERK_ADMIN_TOKEN) to enable it"),
        ));
    };
    match auth::bearer_token(headers) {
        Some(presented) if ApiKey::new(admin_token).matches(presented) => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!("{what} needs `Authorization: Bearer <admin token>`"),
        )),
    }
}
