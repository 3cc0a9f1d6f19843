//! The WebAssembly host that runs the channel plugins.
//!
//! Every `*.wasm` in the plugin directory is a component of the
//! `stellwerk:plugin/channel-plugin` world (`plugin-sdk/wit/plugin.wit`). At
//! start-up [`Registry::load_dir`] compiles each one once, asks it to
//! `describe` itself and maps its namespaces to it. The hub then asks the
//! [`Governor`] of a channel's namespace before anything is subscribed,
//! published or delivered.
//!
//! # Sandbox
//! Calls are synchronous and short: each runs on a pooled, ready instance
//! under a CPU deadline (epoch interruption), a memory cap and an output cap.
//! Whatever goes wrong inside a plugin (trap, timeout, memory exhaustion,
//! oversized or malformed answer) becomes a `Fault` verdict, which the hub
//! treats as a refusal: plugins fail closed. The faulty instance is thrown
//! away, the fault is counted and logged with the plugin's name, and the next
//! call gets a fresh instance.
//!
//! # Layout
//! - `host`: the process-wide wasmtime engine, the bindings, and one loaded
//!   plugin with its pool of instances and its counters.
//! - `registry`: loading a directory, namespace → plugin, the [`Governor`]
//!   the hub calls.
//!
//! Hot reload (which file version is live, the directory watcher, the
//! re-check of subscriptions after a swap) lives above this module and the
//! hub, in `crate::reload`: plugins know nothing of subscriptions.

mod host;
mod registry;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use host::fuzz_checks;
pub(crate) use host::{use_compile_cache, HookCounts, Plugin, PluginSource, PluginStats};
pub(crate) use registry::{wasm_files, Governor, LiveRegistry, Registry};

/// Sandbox limits applied to every plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PluginLimits {
    /// CPU time one hook call may take before it is interrupted (granularity
    /// about 10 ms).
    pub(crate) call_timeout: Duration,
    /// Linear memory one plugin instance may grow to. Capped at
    /// [`MAX_MEMORY_LIMIT_BYTES`], the size of an engine memory slot.
    pub(crate) memory_limit_bytes: usize,
    /// Total size of the strings one hook call may answer with.
    pub(crate) max_output_bytes: usize,
    /// Idle instances kept per plugin.
    pub(crate) pool_size: usize,
    /// Instances the process can hold, all plugins together; the first
    /// load fixes it for the life of the process.
    pub(crate) instance_slots: u32,
}

/// Largest `memory_limit_bytes` that takes effect: the engine reserves this
/// much address space per instance slot, so it cannot grow beyond it anyway.
pub(crate) const MAX_MEMORY_LIMIT_BYTES: usize = 128 << 20;

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(100),
            memory_limit_bytes: 64 << 20,
            max_output_bytes: 2 << 20,
            pool_size: 4,
            instance_slots: 200,
        }
    }
}

/// What a plugin decided for every channel of one of its namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelOptions {
    /// Track who is subscribed and push join/leave.
    pub(crate) presence: bool,
    /// Messages kept for history and recovery (0 = no history).
    pub(crate) history_size: u32,
    /// How long a message stays in history.
    pub(crate) history_ttl: Duration,
    /// May connected clients publish (each publish still passes `on_publish`)?
    pub(crate) client_publish: bool,
}

/// The answer of `authorize_subscribe`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SubscribeVerdict {
    Allow {
        /// Shown to other members where presence is on; already parsed.
        presence_info: Option<serde_json::Value>,
        /// Subscribers with equal audience receive identical data (see `filter`).
        audience: Option<String>,
    },
    Deny {
        reason: String,
    },
    /// The plugin failed; refuse with `internal` (already logged and counted).
    Fault,
}

/// The answer of `on_publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublishVerdict {
    Allow,
    /// Publish this instead; checked to be valid JSON text.
    Replace(String),
    Deny {
        reason: String,
    },
    /// The plugin failed; refuse with `internal` (already logged and counted).
    Fault,
}

/// Where a publish comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishSource {
    /// `POST /api/publish` (Stud.IP's PHP).
    Http,
    /// A connected client's `publish` command.
    Client,
}

/// What one audience receives of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    Skip,
    Original,
    /// Send this instead; checked to be valid JSON text.
    Replace(String),
}

/// Why the plugin directory could not be loaded. Every variant names the file
/// (and, once known, the plugin) so that an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PluginError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the WebAssembly engine: {reason}")]
    Engine { reason: String },
    #[error("plugin file {} is not a valid component", file.display())]
    Compile {
        file: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("plugin config {} is not valid TOML", file.display())]
    Config {
        file: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("plugin file {} cannot be instantiated (does it implement stellwerk:plugin/channel-plugin@1.0.0?)", file.display())]
    Instantiate {
        file: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("plugin file {}: describe failed: {reason}", file.display())]
    Describe { file: PathBuf, reason: String },
    #[error("{plugin} declares invalid namespace {namespace:?} (must match [a-z0-9_-]{{1,64}})")]
    BadNamespace {
        plugin: PluginOrigin,
        namespace: String,
    },
    #[error("namespace {namespace:?} is claimed by both {first} and {second}")]
    NamespaceConflict {
        namespace: String,
        first: PluginOrigin,
        second: PluginOrigin,
    },
    #[error("two plugins are named {:?}: {first} and {second}", first.name)]
    DuplicateName {
        first: PluginOrigin,
        second: PluginOrigin,
    },
}

/// A plugin's name together with the file it came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginOrigin {
    pub(crate) name: String,
    pub(crate) file: PathBuf,
}

impl std::fmt::Display for PluginOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {:?} ({})", self.name, self.file.display())
    }
}

/// `error: cause: cause` on one line: operators grep logs, and the admin API
/// shows it as `last_error`.
pub(crate) fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    // Some causes (wasmtime's parser) span lines.
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}
