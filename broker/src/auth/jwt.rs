//! JWT verification for client identities, and HS256 minting for `stellwerk token`.
//!
//! Every key accepts exactly one algorithm, the one that follows from it (HS256 for a secret;
//! RS256, ES256 or EdDSA for a public key file). The key is chosen first (below), then the
//! header's `alg` is checked against that key's algorithm before anything else, which is
//! what refuses `alg: none` and algorithm confusion (an HS256 token "signed" with a public
//! key).
//!
//! Which key: without `[[jwt.keys]]` the one `jwt.secret` / `jwt.public_key_file` verifies
//! every token (`kid` ignored). With `[[jwt.keys]]`, a token naming a `kid` is verified by
//! that entry only (an unknown `kid` is refused), and a token without `kid` by
//! `jwt.secret` / `jwt.public_key_file` if set (refused otherwise).
//!
//! Checked: signature, `exp` (required), `nbf` and `iat` (both optional; NumericDates that
//! must not lie in the future), `sub` (required, a non-empty string), all with `jwt.leeway_seconds` of clock
//! leeway; `aud` and `iss` when `jwt.audience` / `jwt.issuer` are set (then required).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::Identity;
use crate::config::{JwtConfig, MAX_LEEWAY_SECONDS};

/// Why a token was refused. `Display` is short and safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or the header or claims are not JSON objects.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match the configured key.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` lies in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// The header's `alg` is not the one configured algorithm (includes `none`).
    #[error("token algorithm `{0}` not allowed")]
    AlgorithmNotAllowed(String),
    /// A required claim (`sub`, `exp`, and `aud`/`iss` where configured) is missing, has
    /// the wrong type, or (`sub`) is empty.
    #[error("token claim `{0}` missing or invalid")]
    MissingClaim(&'static str),
    /// `aud` or `iss` is not the configured one.
    #[error("token claim `{0}` is not the expected one")]
    WrongClaim(&'static str),
    /// The header names a `kid` that no `[[jwt.keys]]` entry has.
    #[error("token key id `{0}` unknown")]
    UnknownKey(String),
    /// Keys are selected by `kid`, the token has none and no key without `kid` is set.
    #[error("token has no `kid`")]
    MissingKeyId,
}

/// Why the JWT settings cannot be turned into a verifier (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Neither `jwt.secret` nor `jwt.public_key_file` nor `[[jwt.keys]]` is set.
    #[error("no JWT key configured: set jwt.secret, jwt.public_key_file or [[jwt.keys]]")]
    NoKey,
    /// A `[[jwt.keys]]` entry is unusable (no key, both keys, a `kid` twice).
    #[error("jwt.keys: kid `{kid}`: {reason}")]
    BadKeyEntry {
        /// The entry's `kid`.
        kid: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Both are set; the algorithm would be ambiguous.
    #[error("jwt.secret and jwt.public_key_file are both set; choose one")]
    BothKeys,
    /// `jwt.secret` is the empty string.
    #[error("jwt.secret is empty")]
    EmptySecret,
    /// The public key file cannot be read.
    #[error("{}: cannot read JWT public key: {source}", path.display())]
    KeyFileUnreadable {
        /// The configured `jwt.public_key_file`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is readable but not a public key this verifier supports.
    #[error("{}: {reason}", path.display())]
    UnrecognisedKey {
        /// The configured `jwt.public_key_file`.
        path: PathBuf,
        /// What is wrong with it, in one line.
        reason: String,
    },
}

/// Verifies client tokens against the configured keys, each with its one algorithm.
///
/// Cheap to clone; build it once at start-up with [`TokenVerifier::from_config`].
#[derive(Clone)]
pub struct TokenVerifier {
    /// `jwt.secret` / `jwt.public_key_file`: tokens without `kid` (all tokens when `by_kid`
    /// is empty).
    unnamed: Option<VerifyingKey>,
    /// `[[jwt.keys]]` by `kid`.
    by_kid: HashMap<String, VerifyingKey>,
    leeway: u64,
}

/// One key, the only algorithm it accepts, and the checks that go with it.
#[derive(Clone)]
struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys themselves stay out of logs.
        f.debug_struct("TokenVerifier")
            .field("keys", &self.describe())
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Builds the verifier: a secret → HS256; a public key file → the algorithm of the PEM
    /// public key in it (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    pub fn from_config(jwt: &JwtConfig) -> Result<TokenVerifier, AuthError> {
        // `Config::validate` refuses more; the clamp protects configs built in code, since
        // jsonwebtoken computes `now - leeway` and a huge leeway would accept expired tokens.
        let leeway = jwt.leeway_seconds.min(MAX_LEEWAY_SECONDS);
        let build = |secret: Option<&str>, file: Option<&Path>| {
            let (algorithm, key) = load_key(secret, file)?;
            Ok::<_, AuthError>(VerifyingKey {
                algorithm,
                key,
                validation: validation(algorithm, jwt, leeway),
            })
        };
        let unnamed = match (&jwt.secret, &jwt.public_key_file) {
            (Some(_), Some(_)) => return Err(AuthError::BothKeys),
            (None, None) => None,
            (secret, file) => Some(build(secret.as_deref(), file.as_deref())?),
        };
        let mut by_kid = HashMap::new();
        for entry in &jwt.keys {
            let bad = |reason| AuthError::BadKeyEntry {
                kid: entry.kid.clone(),
                reason,
            };
            let key = match (&entry.secret, &entry.public_key_file) {
                (Some(_), Some(_)) => return Err(bad("both secret and public_key_file")),
                (None, None) => return Err(bad("neither secret nor public_key_file")),
                (secret, file) => build(secret.as_deref(), file.as_deref())?,
            };
            if by_kid.insert(entry.kid.clone(), key).is_some() {
                return Err(bad("listed twice"));
            }
        }
        if unnamed.is_none() && by_kid.is_empty() {
            return Err(AuthError::NoKey);
        }
        Ok(TokenVerifier {
            unnamed,
            by_kid,
            leeway,
        })
    }

    /// The keys and their algorithms, for the start-up log, e.g.
    /// `"HS256; kid 2026-02 RS256"`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .unnamed
            .iter()
            .map(|key| algorithm_name(key.algorithm).to_owned())
            .collect();
        let mut kids: Vec<_> = self.by_kid.iter().collect();
        kids.sort_by(|a, b| a.0.cmp(b.0));
        for (kid, key) in kids {
            parts.push(format!("kid {kid} {}", algorithm_name(key.algorithm)));
        }
        parts.join("; ")
    }

    /// Checks `token` and returns who it identifies.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        // Read the header ourselves first: jsonwebtoken cannot even parse `none` or unknown
        // names, and the client deserves to hear which algorithm or key was refused.
        let header = token_header(token)?;
        let key = self.select(header.kid.as_deref())?;
        if header.alg != algorithm_name(key.algorithm) {
            return Err(TokenError::AlgorithmNotAllowed(printable(&header.alg)));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|e| map_jwt_error(e.kind(), &header.alg))?;
        let claims = data.claims;

        let user = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(TokenError::MissingClaim("sub")),
        };
        let expires_at = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(TokenError::MissingClaim("exp"))?;
        // jsonwebtoken checks `nbf` only when it is a number and ignores any other value, so
        // a not-before written as a string would not hold the token back: check both here.
        for name in ["nbf", "iat"] {
            if let Some(at) = claims.get(name) {
                let at = numeric_date(at).ok_or(TokenError::Malformed)?;
                if at > now().saturating_add(self.leeway) {
                    return Err(TokenError::NotYetValid);
                }
            }
        }

        let claims_json: Arc<str> = Value::Object(claims).to_string().into();
        Ok(Identity {
            user,
            claims_json,
            expires_at,
        })
    }

    fn select(&self, kid: Option<&str>) -> Result<&VerifyingKey, TokenError> {
        if self.by_kid.is_empty() {
            return self.unnamed.as_ref().ok_or(TokenError::MissingKeyId);
        }
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .ok_or_else(|| TokenError::UnknownKey(printable(kid))),
            None => self.unnamed.as_ref().ok_or(TokenError::MissingKeyId),
        }
    }
}

/// The checks for tokens of one key: its algorithm only, `exp` and `sub` always, `aud` and
/// `iss` when configured.
fn validation(algorithm: Algorithm, jwt: &JwtConfig, leeway: u64) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.algorithms = vec![algorithm];
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &jwt.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without this a token carrying `aud` would be refused for lack of an audience.
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &jwt.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation.leeway = leeway;
    validation
}

/// A secret (HS256) or the public key in a PEM file (its algorithm by key type).
fn load_key(
    secret: Option<&str>,
    file: Option<&Path>,
) -> Result<(Algorithm, DecodingKey), AuthError> {
    match (secret, file) {
        (Some(""), _) => Err(AuthError::EmptySecret),
        (Some(secret), _) => Ok((
            Algorithm::HS256,
            DecodingKey::from_secret(secret.as_bytes()),
        )),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|source| AuthError::KeyFileUnreadable {
                path: path.to_path_buf(),
                source,
            })?;
            public_key_from_pem(&pem).map_err(|reason| AuthError::UnrecognisedKey {
                path: path.to_path_buf(),
                reason,
            })
        }
        (None, None) => Err(AuthError::NoKey),
    }
}

/// Mints an HS256 token for `sub`, valid for `ttl` from now, with `extra_claims` added
/// (`sub`, `iat` and `exp` are always set by this function and win over extras).
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    extra_claims: Map<String, Value>,
    ttl: Duration,
) -> String {
    let iat = now();
    let mut claims = extra_claims;
    claims.insert("sub".into(), Value::from(sub));
    claims.insert("iat".into(), Value::from(iat));
    claims.insert("exp".into(), Value::from(iat.saturating_add(ttl.as_secs())));
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    // HMAC signing of a JSON object with an HMAC key has no failure path.
    .expect("HS256 encoding of a JSON object cannot fail")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A JWT NumericDate as whole seconds (fractions are rounded, as jsonwebtoken does for `exp`).
fn numeric_date(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// What the header says, read without trusting anything else in the token.
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

fn token_header(token: &str) -> Result<TokenHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(TokenError::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok(TokenHeader { alg, kid })
}

/// The client's `alg` or `kid` goes back into an error message: keep it short and printable.
fn printable(alg: &str) -> String {
    alg.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(16)
        .collect()
}

fn map_jwt_error(kind: &ErrorKind, alg: &str) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) | ErrorKind::InvalidEcdsaKey => {
            TokenError::BadSignature
        }
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::AlgorithmNotAllowed(printable(alg))
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => TokenError::MissingClaim("sub"),
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => TokenError::MissingClaim("exp"),
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::MissingClaim("aud"),
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::MissingClaim("iss"),
        ErrorKind::InvalidAudience => TokenError::WrongClaim("aud"),
        ErrorKind::InvalidIssuer => TokenError::WrongClaim("iss"),
        _ => TokenError::Malformed,
    }
}

/// The DER prefix of every P-256 SubjectPublicKeyInfo with an uncompressed point: SEQUENCE,
/// AlgorithmIdentifier { id-ecPublicKey, prime256v1 }, BIT STRING of 66 bytes, 0x04.
const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];

/// Detects the key type of a PEM public key; `Err` is a one-line reason.
fn public_key_from_pem(pem: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    let (label, der) = first_pem_block(text).ok_or("not a PEM file")?;
    match label {
        "RSA PUBLIC KEY" => DecodingKey::from_rsa_pem(pem)
            .map(|key| (Algorithm::RS256, key))
            .map_err(|e| format!("unreadable RSA public key: {e}")),
        "PUBLIC KEY" => {
            if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                Ok((Algorithm::RS256, key))
            } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                Ok((Algorithm::EdDSA, key))
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                if der.starts_with(&P256_SPKI_PREFIX) {
                    Ok((Algorithm::ES256, key))
                } else {
                    Err("EC public key is not on curve P-256 (only ES256 is supported)".into())
                }
            } else {
                Err("public key is neither RSA, EC P-256 nor Ed25519".into())
            }
        }
        label if label.contains("PRIVATE KEY") => Err(format!(
            "holds a private key (`{label}`); give the public key (openssl pkey -pubout)"
        )),
        "CERTIFICATE" => {
            Err("holds a certificate; extract its public key (openssl x509 -pubkey -noout)".into())
        }
        other => Err(format!("PEM block `{other}` is not a public key")),
    }
}

/// The label and DER bytes of the first PEM block in `text`.
fn first_pem_block(text: &str) -> Option<(&str, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + "-----".len()..];
    let body = &body[..body.find("-----END ")?];
    let base64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD.decode(base64).ok()?;
    Some((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtKeyConfig;
    use serde_json::json;
    use std::path::Path;

    const SECRET: &str = "test-secret-for-unit-tests-only";

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/auth/testdata")
            .join(name)
    }

    fn hs256_verifier(leeway: u64) -> TokenVerifier {
        TokenVerifier::from_config(&JwtConfig {
            secret: Some(SECRET.into()),
            public_key_file: None,
            leeway_seconds: leeway,
            ..JwtConfig::default()
        })
        .unwrap()
    }

    fn key_file_verifier(public: &str) -> TokenVerifier {
        TokenVerifier::from_config(&JwtConfig {
            secret: None,
            public_key_file: Some(testdata(public)),
            leeway_seconds: 30,
            ..JwtConfig::default()
        })
        .unwrap()
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn sign_hs256(secret: &str, claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret.as_bytes()),
            claims,
        )
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    fn valid_claims() -> Value {
        json!({"sub": "e7a0a84b161f3e8c09b4a0a2e8a58147", "exp": now() + 600, "perm": "autor",
               "courses": {"a07535cf2f8a72df33c12ddfa4b53dde": "dozent"}})
    }

    #[test]
    fn valid_hs256_token_yields_identity_with_all_claims() {
        let token = sign_hs256(SECRET, &valid_claims());
        let identity = hs256_verifier(30).verify(&token).unwrap();
        assert_eq!(identity.user, "e7a0a84b161f3e8c09b4a0a2e8a58147");
        assert_eq!(identity.claims()["perm"], "autor");
        assert_eq!(
            identity.claims()["courses"]["a07535cf2f8a72df33c12ddfa4b53dde"],
            "dozent"
        );
        assert_eq!(Some(identity.expires_at), valid_claims()["exp"].as_u64());
        let reparsed: Value = serde_json::from_str(&identity.claims_json).unwrap();
        assert_eq!(reparsed, Value::Object(identity.claims()));
    }

    #[test]
    fn token_with_audience_is_accepted_when_no_audience_is_configured() {
        let mut claims = valid_claims();
        claims["aud"] = json!("stellwerk");
        claims["iss"] = json!("studip");
        let token = sign_hs256(SECRET, &claims);
        assert!(hs256_verifier(30).verify(&token).is_ok());
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let token = sign_hs256("some-other-secret", &valid_claims());
        assert_eq!(
            hs256_verifier(30).verify(&token).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn tampered_claims_are_a_bad_signature() {
        let token = sign_hs256(SECRET, &valid_claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = valid_claims();
        claims["perm"] = json!("root");
        let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
        assert_eq!(
            hs256_verifier(30).verify(&forged).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn expired_beyond_leeway_is_refused_but_within_leeway_accepted() {
        let verifier = hs256_verifier(30);
        let mut claims = valid_claims();
        claims["exp"] = json!(now() - 120);
        let token = sign_hs256(SECRET, &claims);
        assert_eq!(verifier.verify(&token).unwrap_err(), TokenError::Expired);

        claims["exp"] = json!(now() - 5);
        let token = sign_hs256(SECRET, &claims);
        assert!(verifier.verify(&token).is_ok());
    }

    #[test]
    fn missing_exp_is_refused() {
        let token = sign_hs256(SECRET, &json!({"sub": "u1"}));
        assert_eq!(
            hs256_verifier(30).verify(&token).unwrap_err(),
            TokenError::MissingClaim("exp")
        );
    }

    #[test]
    fn non_numeric_exp_is_refused() {
        let token = sign_hs256(SECRET, &json!({"sub": "u1", "exp": "tomorrow"}));
        assert_eq!(
            hs256_verifier(30).verify(&token).unwrap_err(),
            TokenError::MissingClaim("exp")
        );
    }

    #[test]
    fn missing_empty_or_non_string_sub_is_refused() {
        let verifier = hs256_verifier(30);
        for claims in [
            json!({"exp": now() + 600}),
            json!({"sub": "", "exp": now() + 600}),
            json!({"sub": 42, "exp": now() + 600}),
        ] {
            let token = sign_hs256(SECRET, &claims);
            assert_eq!(
                verifier.verify(&token).unwrap_err(),
                TokenError::MissingClaim("sub"),
                "claims {claims}"
            );
        }
    }

    #[test]
    fn nbf_in_the_future_is_refused() {
        let mut claims = valid_claims();
        claims["nbf"] = json!(now() + 600);
        let token = sign_hs256(SECRET, &claims);
        assert_eq!(
            hs256_verifier(30).verify(&token).unwrap_err(),
            TokenError::NotYetValid
        );
    }

    #[test]
    fn nbf_or_iat_that_is_no_numeric_date_is_refused() {
        // Found by the jwt fuzz target: jsonwebtoken ignores an `nbf` it cannot read as a
        // number, so `"nbf": "<a date string>"` was accepted at once.
        for name in ["nbf", "iat"] {
            for value in [
                json!((now() + 100_000).to_string()),
                json!("2030-01-01T00:00:00Z"),
                json!(-1),
                json!(null),
                json!([now()]),
            ] {
                let mut claims = valid_claims();
                claims[name] = value.clone();
                let token = sign_hs256(SECRET, &claims);
                assert_eq!(
                    hs256_verifier(30).verify(&token).unwrap_err(),
                    TokenError::Malformed,
                    "{name}: {value}"
                );
            }
            let mut claims = valid_claims();
            claims[name] = json!(now() as f64 - 10.5);
            let token = sign_hs256(SECRET, &claims);
            assert!(
                hs256_verifier(30).verify(&token).is_ok(),
                "{name} as a float"
            );
        }
    }

    #[test]
    fn iat_in_the_future_is_refused() {
        let mut claims = valid_claims();
        claims["iat"] = json!(now() + 600);
        let token = sign_hs256(SECRET, &claims);
        assert_eq!(
            hs256_verifier(30).verify(&token).unwrap_err(),
            TokenError::NotYetValid
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(&json!({"alg": "none", "typ": "JWT"}));
        let token = format!("{header}.{}.", b64(&valid_claims()));
        assert_eq!(
            hs256_verifier(30).verify(&token).unwrap_err(),
            TokenError::AlgorithmNotAllowed("none".into())
        );
    }

    #[test]
    fn other_hmac_algorithm_is_refused() {
        let token = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &valid_claims(),
        );
        assert_eq!(
            hs256_verifier(30).verify(&token).unwrap_err(),
            TokenError::AlgorithmNotAllowed("HS512".into())
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let verifier = hs256_verifier(30);
        for garbage in [
            "",
            "garbage",
            "a.b.c",
            "a.b.c.d",
            "....",
            "eyJhbGciOiJIUzI1NiJ9",
            &format!(
                "{}.{}.sig",
                b64(&json!(["not", "an", "object"])),
                b64(&json!({}))
            ),
        ] {
            assert_eq!(
                verifier.verify(garbage).unwrap_err(),
                TokenError::Malformed,
                "token {garbage:?}"
            );
        }
    }

    #[test]
    fn correctly_signed_garbage_claims_are_malformed() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        for payload in ["!!!".to_owned(), b64(&json!(["not", "an", "object"]))] {
            let message = format!("{}.{payload}", b64(&json!({"alg": "HS256"})));
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
            let token = format!("{message}.{signature}");
            assert_eq!(
                hs256_verifier(30).verify(&token).unwrap_err(),
                TokenError::Malformed,
                "payload {payload:?}"
            );
        }
    }

    #[test]
    fn rs256_es256_and_eddsa_tokens_verify_against_their_public_key_files() {
        let cases = [
            ("rsa_private.pem", "rsa_public.pem", Algorithm::RS256),
            (
                "ec_p256_private.pem",
                "ec_p256_public.pem",
                Algorithm::ES256,
            ),
            (
                "ed25519_private.pem",
                "ed25519_public.pem",
                Algorithm::EdDSA,
            ),
        ];
        for (private, public, alg) in cases {
            let pem = std::fs::read(testdata(private)).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
                _ => EncodingKey::from_ed_pem(&pem),
            }
            .unwrap();
            let verifier = key_file_verifier(public);
            assert_eq!(verifier.describe(), algorithm_name(alg));
            let identity = verifier.verify(&sign(alg, &key, &valid_claims())).unwrap();
            assert_eq!(identity.user, "e7a0a84b161f3e8c09b4a0a2e8a58147");

            // The same verifier refuses a token signed by anyone else.
            let forged = sign_hs256(SECRET, &valid_claims());
            assert!(matches!(
                verifier.verify(&forged),
                Err(TokenError::AlgorithmNotAllowed(_))
            ));
        }
    }

    #[test]
    fn algorithm_confusion_with_the_rsa_public_key_as_hmac_secret_is_refused() {
        let public_pem = std::fs::read(testdata("rsa_public.pem")).unwrap();
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_pem),
            &valid_claims(),
        );
        assert_eq!(
            key_file_verifier("rsa_public.pem")
                .verify(&token)
                .unwrap_err(),
            TokenError::AlgorithmNotAllowed("HS256".into())
        );
    }

    #[test]
    fn es256_token_is_refused_by_an_rs256_verifier() {
        let pem = std::fs::read(testdata("ec_p256_private.pem")).unwrap();
        let token = sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(&pem).unwrap(),
            &valid_claims(),
        );
        assert_eq!(
            key_file_verifier("rsa_public.pem")
                .verify(&token)
                .unwrap_err(),
            TokenError::AlgorithmNotAllowed("ES256".into())
        );
    }

    #[test]
    fn key_files_that_are_not_supported_public_keys_are_refused_at_start_up() {
        for (file, expected) in [
            ("rsa_private.pem", "private key"),
            ("ec_p384_public.pem", "P-256"),
            ("does-not-exist.pem", "cannot read"),
        ] {
            let err = TokenVerifier::from_config(&JwtConfig {
                secret: None,
                public_key_file: Some(testdata(file)),
                leeway_seconds: 30,
                ..JwtConfig::default()
            })
            .unwrap_err();
            let message = err.to_string();
            assert!(message.contains(expected), "{file}: {message}");
            assert!(message.contains(file), "{file}: {message}");
        }
    }

    #[test]
    fn missing_or_ambiguous_jwt_settings_are_refused() {
        let none = JwtConfig {
            secret: None,
            public_key_file: None,
            leeway_seconds: 30,
            ..JwtConfig::default()
        };
        assert!(matches!(
            TokenVerifier::from_config(&none),
            Err(AuthError::NoKey)
        ));
        let both = JwtConfig {
            secret: Some(SECRET.into()),
            public_key_file: Some(testdata("rsa_public.pem")),
            leeway_seconds: 30,
            ..JwtConfig::default()
        };
        assert!(matches!(
            TokenVerifier::from_config(&both),
            Err(AuthError::BothKeys)
        ));
    }

    #[test]
    fn minted_token_round_trips_with_extra_claims() {
        let mut extra = Map::new();
        extra.insert("perm".into(), json!("dozent"));
        extra.insert("sub".into(), json!("ignored"));
        let token = mint_hs256(SECRET, "u1", extra, Duration::from_secs(3600));
        let identity = hs256_verifier(0).verify(&token).unwrap();
        assert_eq!(identity.user, "u1");
        assert_eq!(identity.claims()["perm"], "dozent");
        let iat = identity.claims()["iat"].as_u64().unwrap();
        assert_eq!(identity.expires_at, iat + 3600);
    }

    #[test]
    fn refused_algorithm_is_sanitised_before_it_reaches_the_client() {
        let header = b64(&json!({"alg": "x\n\u{1b}[31mAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}));
        let token = format!("{header}.{}.sig", b64(&valid_claims()));
        let TokenError::AlgorithmNotAllowed(alg) = hs256_verifier(30).verify(&token).unwrap_err()
        else {
            panic!("expected AlgorithmNotAllowed");
        };
        assert!(alg.len() <= 16 && alg.chars().all(|c| c.is_ascii_graphic()));
    }

    fn sign_with_kid(secret: &str, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn key(kid: &str, secret: &str) -> JwtKeyConfig {
        JwtKeyConfig {
            kid: kid.into(),
            secret: Some(secret.into()),
            public_key_file: None,
        }
    }

    #[test]
    fn configured_audience_and_issuer_are_required_and_must_match() {
        let verifier = TokenVerifier::from_config(&JwtConfig {
            secret: Some(SECRET.into()),
            audience: Some("stellwerk".into()),
            issuer: Some("https://studip.example.org".into()),
            ..JwtConfig::default()
        })
        .unwrap();
        let mut claims = valid_claims();
        claims["aud"] = json!("stellwerk");
        claims["iss"] = json!("https://studip.example.org");
        assert!(verifier.verify(&sign_hs256(SECRET, &claims)).is_ok());
        // An audience list that contains ours is fine too.
        let mut listed = claims.clone();
        listed["aud"] = json!(["other", "stellwerk"]);
        assert!(verifier.verify(&sign_hs256(SECRET, &listed)).is_ok());

        for (patch, expected) in [
            (json!({"aud": null}), TokenError::MissingClaim("aud")),
            (json!({"iss": null}), TokenError::MissingClaim("iss")),
            (
                json!({"aud": "other-service"}),
                TokenError::WrongClaim("aud"),
            ),
            (
                json!({"aud": ["other-service"]}),
                TokenError::WrongClaim("aud"),
            ),
            (
                json!({"iss": "https://evil.test"}),
                TokenError::WrongClaim("iss"),
            ),
        ] {
            let mut claims = claims.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            assert_eq!(
                verifier.verify(&sign_hs256(SECRET, &claims)).unwrap_err(),
                expected,
                "{patch}"
            );
        }
    }

    #[test]
    fn keys_are_selected_by_kid_and_an_unknown_kid_is_refused() {
        let (old, new) = (
            "old-secret-old-secret-old-secret!",
            "new-secret-new-secret-new-secret!",
        );
        let verifier = TokenVerifier::from_config(&JwtConfig {
            keys: vec![key("2026-01", old), key("2026-02", new)],
            ..JwtConfig::default()
        })
        .unwrap();
        assert_eq!(verifier.describe(), "kid 2026-01 HS256; kid 2026-02 HS256");
        let claims = valid_claims();
        for (kid, secret) in [("2026-01", old), ("2026-02", new)] {
            let token = sign_with_kid(secret, Some(kid), &claims);
            assert!(verifier.verify(&token).is_ok(), "{kid}");
        }
        // The kid picks the key: another entry's secret does not verify.
        let swapped = sign_with_kid(new, Some("2026-01"), &claims);
        assert_eq!(
            verifier.verify(&swapped).unwrap_err(),
            TokenError::BadSignature
        );
        let unknown = sign_with_kid(old, Some("2025-12"), &claims);
        assert_eq!(
            verifier.verify(&unknown).unwrap_err(),
            TokenError::UnknownKey("2025-12".into())
        );
        let without = sign_with_kid(old, None, &claims);
        assert_eq!(
            verifier.verify(&without).unwrap_err(),
            TokenError::MissingKeyId
        );
    }

    #[test]
    fn the_unnamed_key_verifies_tokens_without_kid_next_to_a_key_list() {
        let verifier = TokenVerifier::from_config(&JwtConfig {
            secret: Some(SECRET.into()),
            keys: vec![key("next", "next-secret-next-secret-next-secret")],
            ..JwtConfig::default()
        })
        .unwrap();
        let claims = valid_claims();
        assert!(verifier
            .verify(&sign_with_kid(SECRET, None, &claims))
            .is_ok());
        assert!(verifier
            .verify(&sign_with_kid(
                "next-secret-next-secret-next-secret",
                Some("next"),
                &claims
            ))
            .is_ok());
        // With a kid, only the listed keys count, even if the unnamed key would verify.
        assert_eq!(
            verifier
                .verify(&sign_with_kid(SECRET, Some("gone"), &claims))
                .unwrap_err(),
            TokenError::UnknownKey("gone".into())
        );
        // Without a key list, the one key verifies every token and `kid` is ignored.
        assert!(hs256_verifier(30)
            .verify(&sign_with_kid(SECRET, Some("anything"), &claims))
            .is_ok());
    }

    #[test]
    fn each_kid_fixes_its_algorithm() {
        let public_pem = std::fs::read(testdata("rsa_public.pem")).unwrap();
        let verifier = TokenVerifier::from_config(&JwtConfig {
            keys: vec![
                JwtKeyConfig {
                    kid: "rsa".into(),
                    secret: None,
                    public_key_file: Some(testdata("rsa_public.pem")),
                },
                key("hmac", SECRET),
            ],
            ..JwtConfig::default()
        })
        .unwrap();
        // HS256 "signed" with the RSA public key, naming the RSA kid: refused by algorithm.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa".into());
        let confused = jsonwebtoken::encode(
            &header,
            &valid_claims(),
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&confused).unwrap_err(),
            TokenError::AlgorithmNotAllowed("HS256".into())
        );
        let pem = std::fs::read(testdata("rsa_private.pem")).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa".into());
        let token = jsonwebtoken::encode(
            &header,
            &valid_claims(),
            &EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap();
        assert!(verifier.verify(&token).is_ok());
        header.kid = Some("hmac".into());
        let token = jsonwebtoken::encode(
            &header,
            &valid_claims(),
            &EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            TokenError::AlgorithmNotAllowed("RS256".into())
        );
    }

    #[test]
    fn bad_key_entries_are_refused_at_start_up() {
        for (keys, expected) in [
            (vec![key("a", SECRET), key("a", SECRET)], "listed twice"),
            (
                vec![JwtKeyConfig {
                    kid: "b".into(),
                    secret: None,
                    public_key_file: None,
                }],
                "neither",
            ),
        ] {
            let err = TokenVerifier::from_config(&JwtConfig {
                keys,
                ..JwtConfig::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
