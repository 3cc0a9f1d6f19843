//! The requests a plugin decides on, already parsed: channel split into namespace and rest,
//! claims and message data as `serde_json::Value`.

use serde_json::Value;
use std::fmt;

/// A channel name, `namespace:rest` (the namespace ends at the first `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel {
    name: String,
    /// Byte index of the first `:`, or `name.len()` if there is none.
    colon: usize,
}

impl Channel {
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let colon = name.find(':').unwrap_or(name.len());
        Self { name, colon }
    }

    /// The full name, as the client wrote it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The part before the first `:` (`course` in `course:abc:chat`).
    pub fn namespace(&self) -> &str {
        &self.name[..self.colon]
    }

    /// Everything after the first `:` (`abc:chat` in `course:abc:chat`); empty if none.
    pub fn rest(&self) -> &str {
        self.name.get(self.colon + 1..).unwrap_or("")
    }

    /// An iterator over the `:`-separated parts of [`rest`](Self::rest): `abc`, then `chat`
    /// for `course:abc:chat` (`.segments().collect::<Vec<_>>()` for a list); none if `rest`
    /// is empty.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.rest().split(':').filter(|_| !self.rest().is_empty())
    }

    /// The `index`-th part of [`rest`](Self::rest), counted from 0: `Some("chat")` for
    /// `segment(1)` of `course:abc:chat`, `None` past the last one.
    pub fn segment(&self, index: usize) -> Option<&str> {
        self.segments().nth(index)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl PartialEq<str> for Channel {
    fn eq(&self, other: &str) -> bool {
        self.name == other
    }
}

impl PartialEq<&str> for Channel {
    fn eq(&self, other: &&str) -> bool {
        self.name == *other
    }
}

/// Who is asking: the verified token's subject and all its claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The token's `sub`: the Stud.IP user id.
    pub user: String,
    /// Every claim of the token, as a JSON object (`perm`, `courses`, `channels`, …).
    pub claims: Value,
}

impl Identity {
    pub fn new(user: impl Into<String>, claims: Value) -> Self {
        Self {
            user: user.into(),
            claims,
        }
    }

    /// One claim, whatever its type.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// A string claim (`identity.claim_str("perm") == Some("dozent")`).
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claim(name)?.as_str()
    }

    /// A boolean claim.
    pub fn claim_bool(&self, name: &str) -> Option<bool> {
        self.claim(name)?.as_bool()
    }

    /// An integer claim.
    pub fn claim_i64(&self, name: &str) -> Option<i64> {
        self.claim(name)?.as_i64()
    }

    /// Does the array claim `name` contain the string `value`? (`channels`, group lists.)
    pub fn claim_contains(&self, name: &str, value: &str) -> bool {
        self.claim(name)
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().any(|item| item.as_str() == Some(value)))
    }

    /// A string entry of the object claim `name` (`claim_entry("courses", id)` → the
    /// course status).
    pub fn claim_entry(&self, name: &str, key: &str) -> Option<&str> {
        self.claim(name)?.get(key)?.as_str()
    }
}

/// May this identity subscribe to this channel?
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SubscribeRequest {
    pub channel: Channel,
    /// `None` for anonymous connections (where the broker allows them at all).
    pub identity: Option<Identity>,
}

impl SubscribeRequest {
    /// The subscriber's user id; `None` when anonymous.
    pub fn user(&self) -> Option<&str> {
        self.identity.as_ref().map(|id| id.user.as_str())
    }
}

/// Where a publish comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The HTTP API: Stud.IP's server with the API key.
    Http,
    /// A connected client's `publish` (only where the namespace allows client publish).
    Client,
}

/// A message on its way into a channel.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PublishRequest {
    pub channel: Channel,
    pub data: Value,
    pub source: Source,
    /// The publishing client's identity; `None` for HTTP publishes.
    pub identity: Option<Identity>,
}

impl PublishRequest {
    /// The publishing client's user id; `None` for HTTP publishes.
    pub fn user(&self) -> Option<&str> {
        self.identity.as_ref().map(|id| id.user.as_str())
    }
}

/// A message on its way out to the channel's subscribers (see
/// [`ChannelPlugin::filter`](crate::ChannelPlugin::filter)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FilterRequest {
    pub channel: Channel,
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn channel_splits_at_the_first_colon() {
        let c = Channel::new("course:abc:chat");
        assert_eq!((c.namespace(), c.rest()), ("course", "abc:chat"));
        assert_eq!(c.segments().collect::<Vec<_>>(), ["abc", "chat"]);
        assert_eq!(
            (c.segment(0), c.segment(1), c.segment(2)),
            (Some("abc"), Some("chat"), None)
        );
        assert_eq!(c, "course:abc:chat");
        assert_eq!(c.to_string(), "course:abc:chat");

        let bare = Channel::new("public");
        assert_eq!((bare.namespace(), bare.rest()), ("public", ""));
        assert_eq!(bare.segments().count(), 0);
        assert_eq!(bare.segment(0), None);

        let trailing = Channel::new("public:");
        assert_eq!((trailing.namespace(), trailing.rest()), ("public", ""));
    }

    #[test]
    fn claim_helpers_read_studip_tokens() {
        let id = Identity::new(
            "u1",
            json!({"perm": "dozent", "courses": {"c1": "tutor"}, "channels": ["user:u1"], "n": 3, "ok": true}),
        );
        assert_eq!(id.claim_str("perm"), Some("dozent"));
        assert_eq!(id.claim_entry("courses", "c1"), Some("tutor"));
        assert_eq!(id.claim_entry("courses", "c2"), None);
        assert!(id.claim_contains("channels", "user:u1"));
        assert!(!id.claim_contains("channels", "user:u2"));
        assert!(!id.claim_contains("perm", "dozent"));
        assert_eq!(id.claim_i64("n"), Some(3));
        assert_eq!(id.claim_bool("ok"), Some(true));
        assert_eq!(id.claim_str("n"), None);
        assert_eq!(id.claim("missing"), None);
    }
}
