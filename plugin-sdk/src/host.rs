//! What the broker offers a plugin, and nothing else: log, time, configuration.
//!
//! Inside the broker these call the host; in native builds (`cargo test`) they fall back to
//! stderr, the system clock and a per-thread configuration that [`crate::testing`] sets.

use serde_json::Value;

/// Severity of a log line; the broker records it in its own log under the plugin's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes one log line.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// [`log`] at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// [`log`] at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// [`log`] at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// [`log`] at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// The plugin's configuration from its sidecar `<name>.toml`, as JSON text (`"{}"` if none).
pub fn config_json() -> String {
    imp::config_json()
}

/// The plugin's configuration, parsed; an empty object if there is none.
///
/// Parses on every call: a hot hook that needs it should keep what it reads (a
/// `thread_local!` or `OnceLock`; a reloaded configuration comes with a fresh instance).
pub fn config() -> Value {
    match serde_json::from_str(&config_json()) {
        Ok(value) => value,
        Err(err) => {
            error(&format!(
                "the plugin configuration is not valid JSON: {err}"
            ));
            Value::Object(Default::default())
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::abi::bindings::stellwerk::plugin::host as wit;

    pub(super) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }

    pub(super) fn now_ms() -> u64 {
        wit::now_ms()
    }

    pub(super) fn config_json() -> String {
        wit::config_json()
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    //! Native stand-ins. State is per thread, so parallel tests do not see each other's.

    use super::Level;
    use std::cell::{Cell, RefCell};
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        pub(crate) static CONFIG_JSON: RefCell<Option<String>> = const { RefCell::new(None) };
        pub(crate) static NOW_MS: Cell<Option<u64>> = const { Cell::new(None) };
        pub(crate) static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn log(level: Level, message: &str) {
        eprintln!("[plugin {level:?}] {message}");
        LOGS.with(|logs| logs.borrow_mut().push((level, message.to_owned())));
    }

    pub(super) fn now_ms() -> u64 {
        NOW_MS.with(Cell::get).unwrap_or_else(|| {
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
        })
    }

    pub(super) fn config_json() -> String {
        CONFIG_JSON
            .with(|config| config.borrow().clone())
            .unwrap_or_else(|| "{}".to_owned())
    }
}
