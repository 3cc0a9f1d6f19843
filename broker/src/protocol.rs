//! The JSON frames of wire contract v1 (`docs/protocol.md`).
//!
//! Inbound frames are parsed leniently enough to find an `id` for the error
//! reply; outbound frames are built as text once and shared.

use std::fmt::Write as _;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::engine::Stored;

/// Error codes of the wire contract; also the `code` of HTTP API errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Internal,
    /// The server cannot take this now (e.g. at its connection limit); try later.
    Unavailable,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A refusal with a code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// A command a WebSocket client sent, with its `id`.
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) id: u64,
    pub(crate) kind: CommandKind,
}

#[derive(Debug)]
pub(crate) enum CommandKind {
    Connect {
        token: Option<String>,
        batch: bool,
    },
    Subscribe {
        channel: String,
        /// `recover`: the last position the client saw.
        recover: Option<Recover>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
    },
    History {
        channel: String,
        limit: Option<u64>,
        since: Option<u64>,
    },
    Presence {
        channel: String,
    },
    /// A new token for the same user, replacing the connection's identity.
    Refresh {
        token: String,
    },
    Ping,
}

/// `"recover":{"epoch":"e","offset":12}` of a `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recover {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

/// Every field any command may carry; unknown fields are ignored so that
/// newer clients keep working against this broker.
/// Field types are checked after the `id` is known, so that even a frame
/// with a wrongly typed field gets an error reply carrying its `id`.
#[derive(Deserialize)]
struct RawCommand {
    id: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    channel: Option<Value>,
    token: Option<Value>,
    batch: Option<Value>,
    data: Option<Box<RawValue>>,
    recover: Option<Value>,
    limit: Option<Value>,
    since: Option<Value>,
}

/// Why a frame could not become a [`Command`]: the refusal plus the `id`, if
/// one could be read, for the reply.
#[derive(Debug)]
pub(crate) struct FrameError {
    pub(crate) id: Option<u64>,
    pub(crate) refusal: Refusal,
}

impl Command {
    pub(crate) fn parse(text: &str) -> Result<Command, FrameError> {
        let raw: RawCommand = serde_json::from_str(text).map_err(|e| FrameError {
            id: None,
            refusal: Refusal::bad_request(if e.is_data() {
                "frame must be a JSON object with fields of the right types".to_string()
            } else {
                format!("malformed JSON: {e}")
            }),
        })?;
        let id = match raw.id {
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
            _ => {
                return Err(FrameError {
                    id: None,
                    refusal: Refusal::bad_request("every command needs a numeric `id`"),
                })
            }
        };
        let refuse = |message: &str| FrameError {
            id: Some(id),
            refusal: Refusal::bad_request(message),
        };
        let string = |field: Option<Value>, name: &str| match field {
            Some(Value::String(s)) => Ok(Some(s)),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(refuse(&format!("`{name}` must be a string"))),
        };
        let count = |field: Option<Value>, name: &str| match field {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(_) => Err(refuse(&format!("`{name}` must be a non-negative integer"))),
        };
        let channel = |field: Option<Value>| {
            string(field, "channel")?.ok_or_else(|| refuse("`channel` is missing"))
        };
        let kind = match string(raw.kind, "type")?.as_deref() {
            Some("connect") => CommandKind::Connect {
                token: string(raw.token, "token")?,
                batch: match raw.batch {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => b,
                    Some(_) => return Err(refuse("`batch` must be true or false")),
                },
            },
            Some("subscribe") => CommandKind::Subscribe {
                channel: channel(raw.channel)?,
                recover: match raw.recover {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(mut recover)) => {
                        let bad =
                            || refuse("`recover` needs a string `epoch` and an integer `offset`");
                        let epoch = match recover.remove("epoch") {
                            Some(Value::String(epoch)) => epoch,
                            _ => return Err(bad()),
                        };
                        let offset = recover
                            .get("offset")
                            .and_then(Value::as_u64)
                            .ok_or_else(bad)?;
                        Some(Recover { epoch, offset })
                    }
                    Some(_) => return Err(refuse("`recover` must be an object")),
                },
            },
            Some("history") => CommandKind::History {
                channel: channel(raw.channel)?,
                limit: count(raw.limit, "limit")?,
                since: count(raw.since, "since")?,
            },
            Some("unsubscribe") => CommandKind::Unsubscribe {
                channel: channel(raw.channel)?,
            },
            Some("publish") => {
                let channel = channel(raw.channel)?;
                let data = raw.data.ok_or_else(|| refuse("`data` is missing"))?;
                check_json_text(data.get())
                    .map_err(|e| refuse(&format!("`data` is not valid JSON: {e}")))?;
                CommandKind::Publish { channel, data }
            }
            Some("presence") => CommandKind::Presence {
                channel: channel(raw.channel)?,
            },
            Some("refresh") => CommandKind::Refresh {
                token: string(raw.token, "token")?.ok_or_else(|| refuse("`token` is missing"))?,
            },
            Some("ping") => CommandKind::Ping,
            Some(other) => return Err(refuse(&format!("unknown command type `{other}`"))),
            None => return Err(refuse("`type` is missing")),
        };
        Ok(Command { id, kind })
    }
}

/// Checks that `text` is JSON as a strict parser reads it, before the broker stores or
/// forwards it as message data.
///
/// serde_json's `RawValue` and `IgnoredAny` skip strings and numbers without decoding them,
/// and so let through an unpaired surrogate escape (`"\ud800"`) and numbers beyond `f64`
/// (`1e400`), which PHP's `json_decode`, serde_json's `Value` and others refuse: one such
/// message would make every history reply that contains it unreadable for them.
pub(crate) fn check_json_text(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<StrictJson>(text).map(drop)
}

/// Any JSON value, read through `deserialize_any` so that every string and number is decoded.
struct StrictJson;

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictJsonVisitor)
    }
}

struct StrictJsonVisitor;

impl<'de> Visitor<'de> for StrictJsonVisitor {
    type Value = StrictJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_i64<E>(self, _: i64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_u64<E>(self, _: u64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_f64<E>(self, _: f64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_str<E>(self, _: &str) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_unit<E>(self) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictJson, A::Error> {
        while seq.next_element::<StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictJson, A::Error> {
        while map.next_key::<StrictJson>()?.is_some() {
            map.next_value::<StrictJson>()?;
        }
        Ok(StrictJson)
    }
}

/// The fields of a history answer, `"channel":…,"epoch":…,"messages":[…]`,
/// without braces: the WebSocket reply and the HTTP body wrap them.
/// (Channel names and epochs need no escaping; `data` is validated JSON.)
pub(crate) fn history_fields(channel: &str, epoch: &str, messages: &[Stored]) -> String {
    let size: usize = messages.iter().map(|m| m.data.len() + 32).sum();
    let mut fields = String::with_capacity(64 + channel.len() + epoch.len() + size);
    fields.push_str(r#""channel":""#);
    fields.push_str(channel);
    fields.push_str(r#"","epoch":""#);
    fields.push_str(epoch);
    fields.push_str(r#"","messages":["#);
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            fields.push(',');
        }
        let _ = write!(fields, r#"{{"offset":{},"data":"#, message.offset);
        fields.push_str(&message.data);
        fields.push('}');
    }
    fields.push(']');
    fields
}

/// `{"id":N,"type":"error","code":…,"message":…}`; without `id` when none was readable.
pub(crate) fn error_reply(id: Option<u64>, refusal: &Refusal) -> String {
    let mut reply = json!({
        "type": "error",
        "code": refusal.code.as_str(),
        "message": refusal.message,
    });
    if let Some(id) = id {
        reply["id"] = json!(id);
    }
    reply.to_string()
}

/// `{"type":"disconnect","code":…,"reason":…}`, pushed right before a close.
pub(crate) fn disconnect_push(code: u16, reason: &str) -> String {
    json!({"type": "disconnect", "code": code, "reason": reason}).to_string()
}

/// The message push, built once per publication and shared by every
/// subscriber. Channel names and epochs never need JSON escaping (their
/// alphabets exclude `"` and `\`), and `data` is already validated JSON.
pub(crate) fn message_push(channel: &str, epoch: &str, offset: u64, data: &str) -> String {
    let mut frame = String::with_capacity(64 + channel.len() + epoch.len() + data.len());
    frame.push_str(r#"{"type":"message","channel":""#);
    frame.push_str(channel);
    frame.push_str(r#"","epoch":""#);
    frame.push_str(epoch);
    frame.push_str(r#"","offset":"#);
    let _ = write!(frame, "{offset}");
    frame.push_str(r#","data":"#);
    frame.push_str(data);
    frame.push('}');
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_command() {
        let c = Command::parse(r#"{"id":1,"type":"connect","token":"t","batch":true}"#).unwrap();
        assert_eq!(c.id, 1);
        assert!(matches!(c.kind, CommandKind::Connect { token: Some(t), batch: true } if t == "t"));
        let c = Command::parse(r#"{"id":2,"type":"subscribe","channel":"public:x"}"#).unwrap();
        assert!(
            matches!(c.kind, CommandKind::Subscribe { channel, recover: None } if channel == "public:x")
        );
        let c = Command::parse(
            r#"{"id":3,"type":"subscribe","channel":"public:x","recover":{"epoch":"e","offset":12}}"#,
        )
        .unwrap();
        assert!(
            matches!(c.kind, CommandKind::Subscribe { recover: Some(r), .. } if r == Recover { epoch: "e".into(), offset: 12 })
        );
        let c =
            Command::parse(r#"{"id":6,"type":"history","channel":"public:x","limit":50}"#).unwrap();
        assert!(matches!(
            c.kind,
            CommandKind::History {
                limit: Some(50),
                since: None,
                ..
            }
        ));
        let c = Command::parse(r#"{"id":5,"type":"presence","channel":"course:x"}"#).unwrap();
        assert!(matches!(c.kind, CommandKind::Presence { channel } if channel == "course:x"));
        let c = Command::parse(r#"{"id":7,"type":"refresh","token":"t2"}"#).unwrap();
        assert!(matches!(c.kind, CommandKind::Refresh { token } if token == "t2"));
        let c = Command::parse(r#"{"id":4,"type":"publish","channel":"c:x","data":{"a":[1,2]}}"#)
            .unwrap();
        match c.kind {
            CommandKind::Publish { data, .. } => assert_eq!(data.get(), r#"{"a":[1,2]}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_frames_keep_the_id_when_readable() {
        let e = Command::parse("{not json").unwrap_err();
        assert_eq!(e.id, None);
        assert_eq!(e.refusal.code, ErrorCode::BadRequest);
        let e = Command::parse("[1,2]").unwrap_err();
        assert_eq!(e.id, None);
        let e = Command::parse(r#"{"id":"7","type":"ping"}"#).unwrap_err();
        assert_eq!(e.id, None);
        let e = Command::parse(r#"{"id":7,"type":"dance"}"#).unwrap_err();
        assert_eq!(e.id, Some(7));
        assert!(e.refusal.message.contains("dance"));
        let e = Command::parse(r#"{"id":8,"type":"subscribe"}"#).unwrap_err();
        assert_eq!(e.id, Some(8));
        let e = Command::parse(r#"{"id":9,"type":"publish","channel":"a:b"}"#).unwrap_err();
        assert_eq!(e.id, Some(9));
        let e = Command::parse(r#"{"id":10,"type":"subscribe","channel":42}"#).unwrap_err();
        assert_eq!(e.id, Some(10));
        assert!(e.refusal.message.contains("channel"));
        let e = Command::parse(r#"{"id":11,"type":"connect","token":5}"#).unwrap_err();
        assert_eq!(e.id, Some(11));
        let e = Command::parse(
            r#"{"id":12,"type":"subscribe","channel":"a:b","recover":{"epoch":"e"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.id, Some(12));
        assert!(e.refusal.message.contains("recover"));
        let e =
            Command::parse(r#"{"id":13,"type":"history","channel":"a:b","limit":-1}"#).unwrap_err();
        assert_eq!(e.id, Some(13));
        assert!(e.refusal.message.contains("limit"));
        let e = Command::parse(r#"{"id":14,"type":"refresh"}"#).unwrap_err();
        assert_eq!(e.id, Some(14));
        assert!(e.refusal.message.contains("token"));
        let e = Command::parse(r#"{"id":15,"type":"presence"}"#).unwrap_err();
        assert_eq!(e.id, Some(15));
        assert!(e.refusal.message.contains("channel"));
    }

    #[test]
    fn publish_data_that_strict_parsers_refuse_is_refused() {
        // Found by the ws_command fuzz target: serde_json's RawValue lets these through.
        for data in [
            r#""\udcf7""#,
            r#"{"a":["\ud800x"]}"#,
            r#"{"\udfff":1}"#,
            "1e400",
        ] {
            let frame =
                format!(r#"{{"id":3,"type":"publish","channel":"public:x","data":{data}}}"#);
            let e = Command::parse(&frame).unwrap_err();
            assert_eq!(e.id, Some(3), "{data}");
            assert!(
                e.refusal.message.contains("`data` is not valid JSON"),
                "{data}"
            );
            assert!(check_json_text(data).is_err());
        }
        for data in [
            r#""\ud83d\ude00 \u00e4""#,
            "1e300",
            r#"{"a":[1,-2.5,null,{}]}"#,
        ] {
            assert!(check_json_text(data).is_ok(), "{data}");
            let frame =
                format!(r#"{{"id":4,"type":"publish","channel":"public:x","data":{data}}}"#);
            assert!(Command::parse(&frame).is_ok(), "{data}");
        }
        assert!(check_json_text("{\"a\":1} x").is_err());
        assert!(check_json_text(&"[".repeat(200)).is_err());
    }

    #[test]
    fn message_push_is_valid_json() {
        let frame = message_push("public:news", "a1b2", 13, r#"{"t":"x\"y"}"#);
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            v,
            json!({"type":"message","channel":"public:news","epoch":"a1b2","offset":13,"data":{"t":"x\"y"}})
        );
    }

    #[test]
    fn history_fields_make_valid_json() {
        let messages = [
            Stored {
                offset: 7,
                data: "{\"t\":\"a\"}".into(),
            },
            Stored {
                offset: 8,
                data: "[1,2]".into(),
            },
        ];
        let body = format!("{{{}}}", history_fields("public:x", "e1", &messages));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"channel":"public:x","epoch":"e1","messages":[{"offset":7,"data":{"t":"a"}},{"offset":8,"data":[1,2]}]})
        );
        let empty = format!("{{{}}}", history_fields("public:x", "e1", &[]));
        let v: Value = serde_json::from_str(&empty).unwrap();
        assert_eq!(v["messages"], json!([]));
    }

    #[test]
    fn error_reply_shape() {
        let r = error_reply(Some(3), &Refusal::new(ErrorCode::NotFound, "no plugin"));
        let v: Value = serde_json::from_str(&r).unwrap();
        assert_eq!(
            v,
            json!({"id":3,"type":"error","code":"not_found","message":"no plugin"})
        );
        let r = error_reply(None, &Refusal::bad_request("x"));
        assert!(serde_json::from_str::<Value>(&r)
            .unwrap()
            .get("id")
            .is_none());
    }
}
