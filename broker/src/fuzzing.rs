//! Entry points for the fuzz targets in `fuzz/` (and their smoke run in `cargo test`): each
//! takes the fuzzer's bytes, runs the broker's real parsing code on them and panics when a
//! property of the result does not hold. Not part of the broker's API; see `fuzz/README.md`.
//!
//! The checks that need private items live next to the code they check
//! (`transport::sse::fuzz_checks`, `plugins::host::fuzz_checks`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::{Result as ArbitraryResult, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::auth::TokenVerifier;
use crate::channel::{ChannelName, ChannelNameError, MAX_CHANNEL_LEN, MAX_NAMESPACE_LEN};
use crate::config::{JwtConfig, JwtKeyConfig};
use crate::engine::Stored;
use crate::protocol::{self, Command, CommandKind};

/// A target's body: `true` when the input was accepted.
pub type Target = fn(&[u8]) -> bool;

/// Every target by the name of its `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
/// Each returns whether the input was accepted (and so the properties of an accepted input
/// were checked), so that the smoke run can tell that it reaches past the refusals.
pub const TARGETS: &[(&str, Target)] = &[
    ("ws_command", ws_command),
    ("channel_name", channel_name),
    ("sse_cursor", sse_cursor),
    ("jwt", jwt),
    ("plugin_answer", plugin_answer),
];

/// A WebSocket text frame as `transport/ws.rs` parses it.
///
/// Properties: an error reply is valid JSON carrying the frame's `id` where one was readable;
/// a parsed command has the frame's `id`, `type` and fields; whatever it names as channel
/// and data, once the channel is valid, makes valid single-line push frames.
pub fn ws_command(data: &[u8]) -> bool {
    // Text frames are UTF-8 (the WebSocket layer refuses others before the parser).
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    // The frame's members, values unparsed: the broker ignores members it does not know,
    // whatever they hold (a strict parse of the whole frame would refuse some of them).
    let members: Option<BTreeMap<String, Box<RawValue>>> = serde_json::from_str(text).ok();
    let member = |name: &str| -> Option<Value> {
        let raw = members.as_ref()?.get(name)?;
        serde_json::from_str(raw.get()).ok()
    };
    match Command::parse(text) {
        Err(e) => {
            assert_eq!(e.refusal.code, protocol::ErrorCode::BadRequest);
            if let Some(id) = e.id {
                assert_eq!(member("id").and_then(|id| id.as_u64()), Some(id));
            }
            let reply = json_object(&protocol::error_reply(e.id, &e.refusal));
            assert_eq!(reply["type"], "error");
            assert_eq!(reply["code"], "bad_request");
            assert_eq!(reply.get("id").and_then(Value::as_u64), e.id);
            false
        }
        Ok(command) => {
            let object: Map<String, Value> = [
                "id", "type", "channel", "token", "batch", "data", "recover", "limit", "since",
            ]
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), member(name)?)))
            .collect();
            assert_eq!(object.get("id").and_then(Value::as_u64), Some(command.id));
            let field = |name: &str| object.get(name).and_then(Value::as_str);
            let (kind, channel) = match &command.kind {
                CommandKind::Connect { token, batch } => {
                    assert_eq!(token.as_deref(), field("token"));
                    assert_eq!(*batch, object.get("batch") == Some(&Value::Bool(true)));
                    ("connect", None)
                }
                CommandKind::Subscribe { channel, recover } => {
                    if let Some(recover) = recover {
                        assert_eq!(object["recover"]["epoch"], recover.epoch.as_str());
                        assert_eq!(object["recover"]["offset"], recover.offset);
                    }
                    ("subscribe", Some(channel))
                }
                CommandKind::Unsubscribe { channel } => ("unsubscribe", Some(channel)),
                CommandKind::Publish { channel, data } => {
                    let value: Value = serde_json::from_str(data.get())
                        .expect("publish data is JSON text (serde_json)");
                    assert_eq!(Some(&value), object.get("data"));
                    if let Ok(name) = ChannelName::parse(channel) {
                        check_push(&name, data.get());
                    }
                    ("publish", Some(channel))
                }
                CommandKind::History {
                    channel,
                    limit,
                    since,
                } => {
                    assert_eq!(*limit, object.get("limit").and_then(Value::as_u64));
                    assert_eq!(*since, object.get("since").and_then(Value::as_u64));
                    ("history", Some(channel))
                }
                CommandKind::Presence { channel } => ("presence", Some(channel)),
                CommandKind::Refresh { token } => {
                    assert_eq!(Some(token.as_str()), field("token"));
                    ("refresh", None)
                }
                CommandKind::Ping => ("ping", None),
            };
            assert_eq!(field("type"), Some(kind));
            if let Some(channel) = channel {
                assert_eq!(field("channel"), Some(channel.as_str()));
                // The refusal of a bad name quotes it back to the client.
                if let Err(refusal) = crate::hub::parse_channel(channel) {
                    json_object(&protocol::error_reply(Some(command.id), &refusal));
                }
            }
            true
        }
    }
}

/// A channel name as `channel.rs` parses it (every way in: WS, SSE, HTTP).
///
/// Properties: it parses exactly when the contract's rule (below, written independently)
/// accepts it, with the error of the first rule broken; a parsed name re-serialises to the
/// same string, splits at the first `:`, parses again to an equal name, and goes into push
/// frames without escaping.
pub fn channel_name(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let parsed = ChannelName::parse(text);
    assert_eq!(
        parsed.as_ref().err(),
        channel_rule(text).err().as_ref(),
        "{text:?}"
    );
    let Ok(name) = parsed else {
        return false;
    };
    assert_eq!(name.as_str(), text);
    assert_eq!(name.to_string(), text);
    let (namespace, rest) = text.split_once(':').expect("a parsed name has a `:`");
    assert_eq!(name.namespace(), namespace);
    assert!(crate::channel::is_namespace(namespace) && !rest.is_empty());
    assert!(ChannelName::parse(name.as_str()) == Ok(name.clone()));
    check_push(&name, "null");
    let history = format!(
        "{{{}}}",
        protocol::history_fields(name.as_str(), "0a1b", &[])
    );
    assert_eq!(json_object(&history)["channel"], text);
    true
}

/// The contract's channel rule, for [`channel_name`]: checked in the order the errors are
/// reported, with `char`s rather than bytes, so that it is not the parser's own code.
fn channel_rule(text: &str) -> Result<(), ChannelNameError> {
    const SPECIAL: &str = "_-.:@=,/";
    if text.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if text.len() > MAX_CHANNEL_LEN {
        return Err(ChannelNameError::TooLong);
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || SPECIAL.contains(c))
    {
        return Err(ChannelNameError::BadCharacter);
    }
    let Some(colon) = text.chars().position(|c| c == ':') else {
        return Err(ChannelNameError::MissingNamespace);
    };
    if colon + 1 == text.chars().count() {
        return Err(ChannelNameError::MissingNamespace);
    }
    let namespace: String = text.chars().take(colon).collect();
    let good = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_LEN || !namespace.chars().all(good) {
        return Err(ChannelNameError::BadNamespace);
    }
    Ok(())
}

/// An SSE cursor (`Last-Event-ID` / `?lastEventId=`) as `transport/sse.rs` decodes it, with
/// its signature check.
///
/// Properties: a cursor the broker signed decodes to the same positions, only for its own
/// channel set and key, and not after any byte of it changed; attacker text never decodes
/// without the key; a payload carrying a valid MAC is refused as malformed (never a panic),
/// or decodes to one position per channel that encode and decode to themselves.
pub fn sse_cursor(data: &[u8]) -> bool {
    crate::transport::sse::fuzz_checks::cursor(&mut Unstructured::new(data)).unwrap_or(false)
}

/// A client token (`?token=`, `connect`, `refresh`, `Authorization: Bearer`) as
/// `auth/jwt.rs` verifies it: either the fuzzer's text as it is, or a header and claims of
/// the fuzzer's choosing signed with one of the configured keys (or a wrong one), so that
/// the claim checks behind the signature are reached.
///
/// Properties: a token that verifies was signed with the key its `kid` selects, has
/// `alg: HS256`, a non-empty string `sub`, an `exp` not past, an `nbf` and an `iat` not in
/// the future (NumericDates where present), the configured `aud` and `iss`, and its claims
/// are handed on unchanged.
pub fn jwt(data: &[u8]) -> bool {
    jwt_case(&mut Unstructured::new(data)).unwrap_or(false)
}

/// The keys [`jwt`] configures: one without `kid`, one for `kid: "k1"`.
const JWT_SECRET: &str = "fuzz-secret-without-kid-0123456789abcdef";
const JWT_K1_SECRET: &str = "fuzz-secret-for-kid-k1-0123456789abcdef";
const JWT_WRONG_SECRET: &str = "fuzz-secret-nobody-configured-0123456789";
const JWT_AUDIENCE: &str = "stellwerk";
const JWT_ISSUER: &str = "studip";
const JWT_LEEWAY: u64 = 30;

fn jwt_case(u: &mut Unstructured<'_>) -> ArbitraryResult<bool> {
    static VERIFIER: std::sync::OnceLock<TokenVerifier> = std::sync::OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        TokenVerifier::from_config(&JwtConfig {
            secret: Some(JWT_SECRET.into()),
            keys: vec![JwtKeyConfig {
                kid: "k1".into(),
                secret: Some(JWT_K1_SECRET.into()),
                public_key_file: None,
            }],
            audience: Some(JWT_AUDIENCE.into()),
            issuer: Some(JWT_ISSUER.into()),
            leeway_seconds: JWT_LEEWAY,
            ..JwtConfig::default()
        })
        .expect("the fuzz verifier's config is valid")
    });
    let (token, signed_with) = if u.arbitrary()? {
        (
            String::from_utf8_lossy(u.bytes(u.len())?).into_owned(),
            None,
        )
    } else {
        let header = jwt_header_value(u)?;
        // Mostly the key the `kid` selects, so that the claim checks are reached.
        let secret = if u.ratio(3, 4)? {
            match header.get("kid") {
                Some(kid) if kid == "k1" => JWT_K1_SECRET,
                _ => JWT_SECRET,
            }
        } else {
            *u.choose(&[JWT_SECRET, JWT_K1_SECRET, JWT_WRONG_SECRET])?
        };
        let header = json_text(u, &|_| Ok(header.clone()))?;
        let claims = json_text(u, &jwt_claims_value)?;
        (sign_hs256(secret, &header, &claims), Some(secret))
    };
    let before = unix_now();
    let verified = verifier.verify(&token);
    let after = unix_now();
    let Ok(identity) = verified else {
        return Ok(false);
    };

    let parts: Vec<&str> = token.split('.').collect();
    let [header_part, claims_part, signature_part] = parts[..] else {
        panic!("a verified token has three parts: {token}");
    };
    let part = |part: &str| -> Map<String, Value> {
        let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("a JSON object")
    };
    let (header, claims) = (part(header_part), part(claims_part));
    assert_eq!(header.get("alg"), Some(&Value::from("HS256")));
    let expected_secret = match header.get("kid") {
        None => JWT_SECRET,
        Some(kid) if kid == "k1" => JWT_K1_SECRET,
        Some(kid) => panic!("verified with unknown kid {kid}"),
    };
    // The signature is the HMAC of the key that the `kid` selects, over the first two parts.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(expected_secret.as_bytes()).expect("any key length");
    mac.update(format!("{header_part}.{claims_part}").as_bytes());
    let signature = URL_SAFE_NO_PAD.decode(signature_part).expect("base64url");
    assert!(mac.verify_slice(&signature).is_ok(), "{token}");
    if let Some(secret) = signed_with {
        assert_eq!(secret, expected_secret, "{token}");
    }

    assert_eq!(claims.get("sub"), Some(&Value::from(identity.user.clone())));
    assert!(!identity.user.is_empty());
    let exp = claims.get("exp").and_then(numeric_date).expect("exp");
    assert_eq!(identity.expires_at, exp);
    assert!(
        exp + JWT_LEEWAY >= before,
        "expired token accepted: {claims:?}"
    );
    for name in ["nbf", "iat"] {
        if let Some(value) = claims.get(name) {
            let at = numeric_date(value)
                .unwrap_or_else(|| panic!("`{name}` is not a NumericDate: {value}"));
            assert!(
                at <= after + JWT_LEEWAY,
                "`{name}` in the future: {claims:?}"
            );
        }
    }
    let names = |value: Option<&Value>, want: &str| match value {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(items)) => items.iter().any(|item| item == want),
        _ => false,
    };
    assert!(names(claims.get("aud"), JWT_AUDIENCE), "{claims:?}");
    assert!(names(claims.get("iss"), JWT_ISSUER), "{claims:?}");
    assert_eq!(identity.claims(), claims);
    let handed_on: Map<String, Value> =
        serde_json::from_str(&identity.claims_json).expect("claims_json is a JSON object");
    assert_eq!(handed_on, claims);
    Ok(true)
}

fn sign_hs256(secret: &str, header: &str, claims: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// A JWT NumericDate as the contract reads it: a non-negative number, rounded.
fn numeric_date(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
        }),
        _ => None,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn jwt_header_value(u: &mut Unstructured<'_>) -> ArbitraryResult<Value> {
    let mut header = Map::new();
    if u.ratio(7, 8)? {
        let alg = match u.int_in_range(0..=7)? {
            0 => Value::from(*u.choose(&["HS384", "none", "RS256", "hs256", "EdDSA"])?),
            1 => json_value(u, 2)?,
            _ => Value::from("HS256"),
        };
        header.insert("alg".into(), alg);
    }
    if u.ratio(1, 2)? {
        let kid = match u.int_in_range(0..=3)? {
            0 => json_value(u, 2)?,
            1 => Value::from(u.arbitrary::<String>()?),
            _ => Value::from("k1"),
        };
        header.insert("kid".into(), kid);
    }
    if u.ratio(1, 2)? {
        header.insert("typ".into(), Value::from("JWT"));
    }
    if u.ratio(1, 4)? {
        extra_members(u, &mut header, &["jwk", "crit", "x5c", "cty", "b64"], 1)?;
    }
    Ok(Value::Object(header))
}

/// Claims that would verify, then up to three of them removed or changed.
fn jwt_claims_value(u: &mut Unstructured<'_>) -> ArbitraryResult<Value> {
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from("user-42"));
    claims.insert("exp".into(), Value::from(now + 300));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("aud".into(), Value::from(JWT_AUDIENCE));
    claims.insert("iss".into(), Value::from(JWT_ISSUER));
    if u.ratio(1, 4)? {
        claims.insert("nbf".into(), Value::from(now - 5));
    }
    for _ in 0..u.int_in_range(0..=3)? {
        let name = *u.choose(&["sub", "exp", "nbf", "iat", "aud", "iss"])?;
        let value = match (name, u.int_in_range(0..=7)?) {
            (_, 0) => {
                claims.remove(name);
                continue;
            }
            (_, 1) => json_value(u, 2)?,
            (_, 2) => Value::from(u.arbitrary::<String>()?),
            ("aud" | "iss", 3..=4) => {
                let wanted = if name == "aud" {
                    JWT_AUDIENCE
                } else {
                    JWT_ISSUER
                };
                Value::from(vec![json_value(u, 1)?, Value::from(wanted)])
            }
            (_, 3..=4) => Value::from(now.saturating_add(u.int_in_range(-120..=120)?)),
            (_, 5) => Value::from(now as f64 + f64::from(u.int_in_range(-120..=120)?) + 0.5),
            (_, 6) => Value::from(*u.choose(&[-1.0, 1e300, -0.0, 0.4, 1.8e19])?),
            _ => Value::from((now + 100_000).to_string()),
        };
        claims.insert(name.into(), value);
    }
    extra_members(u, &mut claims, &["roles", "course", "perm"], 1)?;
    Ok(Value::Object(claims))
}

/// Plugin answers as `plugins/host.rs` checks and converts them (the WIT results of
/// `describe`, `authorize-subscribe`, `on-publish` and `filter`, not the wasm call).
///
/// Properties: an answer is accepted exactly when it is within the size limit and every
/// JSON it carries is JSON; what is accepted is carried over unchanged and makes valid
/// single-line push frames; a description is accepted exactly when its name and namespaces
/// are usable, and its namespaces then make valid channel names.
pub fn plugin_answer(data: &[u8]) -> bool {
    crate::plugins::fuzz_checks::answer(&mut Unstructured::new(data)).unwrap_or(false)
}

/// Checks that `data` (JSON text as a plugin or client gave it) goes into a message push for
/// `channel` as the hub builds one: valid JSON on one line, with the same `data`.
pub(crate) fn check_push(channel: &ChannelName, data: &str) {
    let value: Value = serde_json::from_str(data).expect("check_push takes JSON text");
    let line = crate::hub::single_line(data);
    let frame = protocol::message_push(channel.as_str(), "0a1b2c", u64::MAX, &line);
    assert!(!frame.contains(['\n', '\r']), "push spans lines: {frame:?}");
    let push = json_object(&frame);
    assert_eq!(push["channel"], channel.as_str());
    assert_eq!(push["data"], value, "{frame}");
    let stored = [Stored {
        offset: 1,
        data: line.as_ref().into(),
    }];
    let history = format!(
        "{{{}}}",
        protocol::history_fields(channel.as_str(), "0a1b2c", &stored)
    );
    assert_eq!(json_object(&history)["messages"][0]["data"], value);
}

/// Parses `text` that the broker built as a JSON object, or panics.
pub(crate) fn json_object(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON object ({e}): {text:?}"))
}

/// Text for a place where JSON is expected: mostly JSON made by `value` (compact or pretty,
/// so with line breaks), sometimes with a byte changed, a bare string escape of the
/// fuzzer's choosing, or any text at all.
pub(crate) fn json_text(
    u: &mut Unstructured<'_>,
    value: &dyn Fn(&mut Unstructured<'_>) -> ArbitraryResult<Value>,
) -> ArbitraryResult<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => u.arbitrary()?,
        1 => {
            // `\uXXXX` escapes, lone surrogates included.
            let units: Vec<u16> = u.arbitrary()?;
            let escapes: String = units.iter().map(|unit| format!("\\u{unit:04x}")).collect();
            format!("\"{escapes}\"")
        }
        2 => {
            let mut text = serde_json::to_string(&value(u)?).expect("a Value serialises");
            if !text.is_empty() {
                let at = u.choose_index(text.len())?;
                let byte: u8 = u.int_in_range(0x20..=0x7e)?;
                if text.is_char_boundary(at) && text.is_char_boundary(at + 1) {
                    text.replace_range(at..at + 1, &char::from(byte).to_string());
                }
            }
            text
        }
        3..=4 => serde_json::to_string_pretty(&value(u)?).expect("a Value serialises"),
        _ => serde_json::to_string(&value(u)?).expect("a Value serialises"),
    })
}

/// Any JSON value, nested at most `depth` deep.
pub(crate) fn json_value(u: &mut Unstructured<'_>, depth: u32) -> ArbitraryResult<Value> {
    let kinds = if depth == 0 { 5 } else { 7 };
    Ok(match u.choose_index(kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        4 => Value::String(u.arbitrary()?),
        5 => {
            let len = u.int_in_range(0..=4)?;
            Value::Array(
                (0..len)
                    .map(|_| json_value(u, depth - 1))
                    .collect::<ArbitraryResult<_>>()?,
            )
        }
        _ => {
            let mut object = Map::new();
            extra_members(u, &mut object, &["a", "text", "type"], depth - 1)?;
            if u.arbitrary()? {
                object.insert(u.arbitrary()?, json_value(u, depth - 1)?);
            }
            Value::Object(object)
        }
    })
}

/// Up to two members named from `names` or by the fuzzer, with values nested at most
/// `depth` deep.
fn extra_members(
    u: &mut Unstructured<'_>,
    object: &mut Map<String, Value>,
    names: &[&str],
    depth: u32,
) -> ArbitraryResult<()> {
    for _ in 0..u.int_in_range(0..=2)? {
        let name = match u.choose(names) {
            Ok(name) if u.arbitrary()? => (*name).to_owned(),
            _ => u.arbitrary()?,
        };
        object.insert(name, json_value(u, depth)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
