//! What a plugin says about itself: its name, version and the namespaces it governs.

use std::time::Duration;

/// The answer to `describe`: built with [`Description::new`] and chained calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    name: String,
    version: String,
    namespaces: Vec<Namespace>,
    filters: bool,
}

/// One governed namespace and the options of all its channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    /// `[a-z0-9_-]{1,64}`: the part of a channel name before its first `:`.
    pub name: String,
    pub options: ChannelOptions,
}

impl Description {
    /// A plugin called `name` (use the `.wasm` file's name) in `version` (usually
    /// `env!("CARGO_PKG_VERSION")`), governing no namespace yet.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            namespaces: Vec::new(),
            filters: false,
        }
    }

    /// Governs the namespace `name` with these channel options.
    #[must_use]
    pub fn namespace(mut self, name: impl Into<String>, options: ChannelOptions) -> Self {
        self.namespaces.push(Namespace {
            name: name.into(),
            options,
        });
        self
    }

    /// Asks the broker to run [`ChannelPlugin::filter`](crate::ChannelPlugin::filter) for
    /// every message. Without it the hook is never called, which spares one plugin call per
    /// message.
    #[must_use]
    pub fn with_filter(mut self) -> Self {
        self.filters = true;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// Whether the broker calls `filter` (see [`with_filter`](Self::with_filter)).
    pub fn filters(&self) -> bool {
        self.filters
    }

    /// The options of one governed namespace.
    pub fn options(&self, namespace: &str) -> Option<&ChannelOptions> {
        self.namespaces
            .iter()
            .find(|ns| ns.name == namespace)
            .map(|ns| &ns.options)
    }

    /// Checks what the broker checks on load, so that a plugin's unit tests catch it first:
    /// a name and version, at least one namespace, valid and distinct namespace names.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("the plugin name is empty".into());
        }
        if self.version.is_empty() {
            return Err("the plugin version is empty".into());
        }
        if self.namespaces.is_empty() {
            return Err("the plugin governs no namespace".into());
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !is_namespace_name(&ns.name) {
                return Err(format!(
                    "namespace {:?} does not match [a-z0-9_-]{{1,64}}",
                    ns.name
                ));
            }
            if self.namespaces[..i]
                .iter()
                .any(|earlier| earlier.name == ns.name)
            {
                return Err(format!("namespace {:?} is declared twice", ns.name));
            }
        }
        Ok(())
    }
}

fn is_namespace_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Behaviour the broker applies to every channel of a namespace. [`ChannelOptions::new`]
/// starts with everything off: no presence, no history, no client publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelOptions {
    /// Track who is subscribed and push join/leave.
    pub presence: bool,
    /// Messages kept for history and recovery (0 = no history).
    pub history_size: u32,
    /// How long a message stays in history (whole seconds reach the broker).
    pub history_ttl: Duration,
    /// May connected clients publish (each publish still passes `on_publish`)?
    pub client_publish: bool,
}

impl ChannelOptions {
    /// Everything off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns presence on.
    #[must_use]
    pub fn presence(mut self) -> Self {
        self.presence = true;
        self
    }

    /// Keeps the last `size` messages for at most `ttl`, for history and recovery.
    #[must_use]
    pub fn history(mut self, size: u32, ttl: Duration) -> Self {
        self.history_size = size;
        self.history_ttl = ttl;
        self
    }

    /// Lets connected clients publish (each publish still passes `on_publish`).
    #[must_use]
    pub fn client_publish(mut self) -> Self {
        self.client_publish = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_collects_namespaces_and_options() {
        let d = Description::new("course", "1.2.3")
            .namespace(
                "course",
                ChannelOptions::new()
                    .presence()
                    .history(200, Duration::from_secs(3600)),
            )
            .namespace("course-chat", ChannelOptions::new().client_publish())
            .with_filter();
        assert_eq!(d.validate(), Ok(()));
        assert!(d.filters());
        let course = d.options("course").unwrap();
        assert!(course.presence && !course.client_publish);
        assert_eq!(
            (course.history_size, course.history_ttl.as_secs()),
            (200, 3600)
        );
        assert!(d.options("course-chat").unwrap().client_publish);
        assert_eq!(d.options("user"), None);
    }

    #[test]
    fn validate_names_what_is_wrong() {
        let ok = ChannelOptions::new();
        assert!(Description::new("p", "1")
            .validate()
            .unwrap_err()
            .contains("no namespace"));
        let upper = Description::new("p", "1")
            .namespace("Public", ok)
            .validate()
            .unwrap_err();
        assert!(upper.contains("\"Public\""), "{upper}");
        let long = Description::new("p", "1")
            .namespace("a".repeat(65), ok)
            .validate();
        assert!(long.is_err());
        let twice = Description::new("p", "1")
            .namespace("a", ok)
            .namespace("a", ok)
            .validate();
        assert!(twice.unwrap_err().contains("twice"));
        assert!(Description::new("", "1")
            .namespace("a", ok)
            .validate()
            .is_err());
        assert_eq!(
            Description::new("p", "1").namespace("a_b-9", ok).validate(),
            Ok(())
        );
    }
}
