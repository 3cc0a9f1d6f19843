//! Channel names: `namespace:rest`, validated once at the edge.
//!
//! The namespace selects the plugin that governs the channel, so a name that
//! does not parse never reaches a plugin or the hub.

use std::fmt;
use std::sync::Arc;

/// Longest channel name accepted, in bytes (wire contract v1).
pub(crate) const MAX_CHANNEL_LEN: usize = 255;
/// Longest namespace accepted, in bytes.
pub(crate) const MAX_NAMESPACE_LEN: usize = 64;

/// A validated channel name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChannelName {
    full: Arc<str>,
    namespace_len: usize,
}

/// Why a channel name was refused; the message is shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name must be `namespace:rest`")]
    MissingNamespace,
    #[error("namespace must match [a-z0-9_-]{{1,{MAX_NAMESPACE_LEN}}}")]
    BadNamespace,
    #[error("channel name may only contain A-Z a-z 0-9 _ - . : @ = , /")]
    BadCharacter,
}

impl ChannelName {
    pub(crate) fn parse(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        if !name.bytes().all(is_channel_byte) {
            return Err(ChannelNameError::BadCharacter);
        }
        let Some((namespace, rest)) = name.split_once(':') else {
            return Err(ChannelNameError::MissingNamespace);
        };
        if rest.is_empty() {
            return Err(ChannelNameError::MissingNamespace);
        }
        if !is_namespace(namespace) {
            return Err(ChannelNameError::BadNamespace);
        }
        Ok(Self {
            full: Arc::from(name),
            namespace_len: namespace.len(),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.full
    }

    /// The part before the first `:`; selects the governing plugin.
    pub(crate) fn namespace(&self) -> &str {
        &self.full[..self.namespace_len]
    }
}

/// True if `name` is a valid namespace (`[a-z0-9_-]{1,64}`).
pub(crate) fn is_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAMESPACE_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'=' | b',' | b'/')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_namespace_and_rest_at_first_colon() {
        let c = ChannelName::parse("course:0123abcd:chat:v2").unwrap();
        assert_eq!(c.namespace(), "course");
        assert_eq!(c.as_str(), "course:0123abcd:chat:v2");
    }

    #[test]
    fn accepts_every_allowed_character() {
        assert!(ChannelName::parse("a_b-9:AZaz09_-.:@=,/").is_ok());
    }

    #[test]
    fn refuses_malformed_names() {
        use ChannelNameError::*;
        assert_eq!(ChannelName::parse(""), Err(Empty));
        assert_eq!(ChannelName::parse("news"), Err(MissingNamespace));
        assert_eq!(ChannelName::parse("public:"), Err(MissingNamespace));
        assert_eq!(ChannelName::parse(":news"), Err(BadNamespace));
        assert_eq!(ChannelName::parse("Public:news"), Err(BadNamespace));
        assert_eq!(ChannelName::parse("pub.lic:news"), Err(BadNamespace));
        assert_eq!(ChannelName::parse("public:new s"), Err(BadCharacter));
        assert_eq!(ChannelName::parse("public:nëws"), Err(BadCharacter));
        assert_eq!(ChannelName::parse("public:a\"b"), Err(BadCharacter));
    }

    #[test]
    fn enforces_length_limits() {
        let ns = "n".repeat(64);
        assert!(ChannelName::parse(&format!("{ns}:x")).is_ok());
        let ns = "n".repeat(65);
        assert_eq!(
            ChannelName::parse(&format!("{ns}:x")),
            Err(ChannelNameError::BadNamespace)
        );
        let long = format!("public:{}", "x".repeat(MAX_CHANNEL_LEN - 7));
        assert_eq!(long.len(), MAX_CHANNEL_LEN);
        assert!(ChannelName::parse(&long).is_ok());
        let too_long = format!("{long}x");
        assert_eq!(
            ChannelName::parse(&too_long),
            Err(ChannelNameError::TooLong)
        );
    }
}
