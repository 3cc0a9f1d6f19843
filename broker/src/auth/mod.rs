//! Who is talking to the broker: JWT identities for clients (browsers), the
//! API key for Stud.IP's server side, the admin token for operators.

use std::sync::Arc;

use axum::http::{header::AUTHORIZATION, HeaderMap};

mod api_key;
mod jwt;

pub use api_key::ApiKey;
pub use jwt::{mint_hs256, AuthError, TokenError, TokenVerifier};

/// A verified client identity: the token's `sub` plus all its claims.
///
/// Claims are kept as JSON text too, because every plugin call hands them over
/// as a string; serialising once per connection beats once per call.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`: the Stud.IP user id.
    pub user: String,
    /// Every claim of the token as a JSON object: the form plugins receive.
    /// Kept as text only (a parsed map would cost every idle connection a
    /// few hundred bytes more); [`Identity::claims`] parses it.
    pub claims_json: Arc<str>,
    /// The token's `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Identity {
    /// The identity of a connection without a token (only where `allow_anonymous` is on):
    /// user `""`, no claims, never expires.
    pub fn anonymous() -> Identity {
        Identity {
            user: String::new(),
            claims_json: Arc::from("{}"),
            expires_at: u64::MAX,
        }
    }

    /// Every claim of the token, parsed from [`Identity::claims_json`].
    pub fn claims(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.claims_json).expect("claims_json is made from a JSON object")
    }

    /// Whether this is the anonymous identity.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty()
    }
}

/// Extracts the token from an `Authorization: Bearer …` header (case-insensitive scheme).
///
/// `None` when the header is missing, not visible ASCII, another scheme, or has an empty
/// token.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(authorization: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static(authorization));
        headers
    }

    #[test]
    fn bearer_token_is_extracted_with_any_scheme_case() {
        assert_eq!(
            bearer_token(&headers("Bearer abc.def.ghi")),
            Some("abc.def.ghi")
        );
        assert_eq!(bearer_token(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("BEARER  abc ")), Some("abc"));
    }

    #[test]
    fn other_schemes_and_empty_tokens_give_none() {
        assert_eq!(bearer_token(&HeaderMap::new()), None);
        assert_eq!(bearer_token(&headers("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("Bearerabc")), None);
        assert_eq!(bearer_token(&headers("Bearer a b")), None);
    }

    #[test]
    fn anonymous_identity_has_no_user_and_empty_claims() {
        let anonymous = Identity::anonymous();
        assert!(anonymous.is_anonymous());
        assert_eq!(&*anonymous.claims_json, "{}");
    }
}
