//! The API key that Stud.IP's PHP presents on `/api/*`.

use sha2::{Digest, Sha256};

/// A configured API key, kept only as its SHA-256 digest.
///
/// Comparing digests makes the comparison independent of the presented key's length, and
/// the branch-free fold keeps its time independent of where the first difference is.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
    /// An empty configured key never matches (fail closed), even an empty presented one.
    empty: bool,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// Wraps the configured key.
    pub fn new(key: impl Into<String>) -> ApiKey {
        let key = key.into();
        ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
            empty: key.is_empty(),
        }
    }

    /// Whether `presented` is the configured key, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let difference = self
            .digest
            .iter()
            .zip(presented.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0 && !self.empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_configured_key() {
        let key = ApiKey::new("3f9a1c0e5b7d2468ace13579bdf02468");
        assert!(key.matches("3f9a1c0e5b7d2468ace13579bdf02468"));
        assert!(!key.matches("3f9a1c0e5b7d2468ace13579bdf02469"));
        assert!(!key.matches("3f9a1c0e5b7d2468ace13579bdf0246"));
        assert!(!key.matches("3F9A1C0E5B7D2468ACE13579BDF02468"));
        assert!(!key.matches(""));
    }

    #[test]
    fn empty_configured_key_matches_nothing() {
        let key = ApiKey::new("");
        assert!(!key.matches(""));
        assert!(!key.matches("anything"));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let shown = format!("{:?}", ApiKey::new("hunter2"));
        assert!(!shown.contains("hunter2"));
    }
}
