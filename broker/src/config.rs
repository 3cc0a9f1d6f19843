//! Configuration: a TOML file, `STELLWERK_*` environment overrides, and the embedded
//! default that needs neither.
//!
//! # Sources, in order
//! 1. The defaults of the structs below ([`Config::default`]: in-memory engine,
//!    `./plugins`, `127.0.0.1:8080`, anonymous off).
//! 2. The TOML file, if any (`stellwerk serve --config stellwerk.toml`, or the file named
//!    by `STELLWERK_CONFIG`; the binary resolves that, [`Config::load`] takes the path).
//! 3. Environment variables. Every setting has one: `STELLWERK_<KEY>` for top-level keys
//!    (`STELLWERK_LISTEN`, `STELLWERK_API_KEY`, `STELLWERK_ADMIN_TOKEN`,
//!    `STELLWERK_ALLOW_ANONYMOUS`) and `STELLWERK_<SECTION>_<KEY>` for keys of a section
//!    (`STELLWERK_JWT_SECRET` → `[jwt] secret`, `STELLWERK_PLUGINS_DIR` → `[plugins] dir`,
//!    `STELLWERK_LIMITS_MAX_FRAME_BYTES` → `[limits] max_frame_bytes`). Booleans accept
//!    `true`/`false`/`1`/`0`/`yes`/`no`/`on`/`off`.
//!
//! Unknown keys in the file and unknown `STELLWERK_*` variables are errors, so that a typo
//! never passes silently. Every error is one line naming the file or variable.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use rand::RngCore as _;
use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};

/// The environment variable that names the config file (read by the binary, not by
/// [`Config::load`], which skips it).
pub const CONFIG_FILE_ENV: &str = "STELLWERK_CONFIG";

/// Every `STELLWERK_*` variable starts with this.
const ENV_PREFIX: &str = "STELLWERK_";

/// `STELLWERK_*` variables that are not settings, so they are not "unknown".
const NOT_SETTINGS: &[&str] = &[CONFIG_FILE_ENV];

/// Settings that a variable cannot express (`(section, key)`).
const FILE_ONLY: &[(&str, &str)] = &[("jwt", "keys")];

/// Upper bound for `jwt.leeway_seconds`: more skew than this means broken clocks, and a
/// huge value would make every expired token valid.
pub(crate) const MAX_LEEWAY_SECONDS: u64 = 3600;

/// The whole broker configuration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the public listener (HTTP API, `/ws`, `/sse`).
    pub listen: SocketAddr,
    /// The API key Stud.IP's PHP presents on `/api/*`.
    pub api_key: Option<String>,
    /// The operators' token for `/admin/*`; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// Own address for the admin API and `/metrics` (`/metrics` open there); `None`: both
    /// on the public listener, `/metrics` behind the admin token.
    pub admin_listen: Option<SocketAddr>,
    /// Whether connections without a token are accepted (as user `""`).
    pub allow_anonymous: bool,
    /// How long a SIGTERM/SIGINT shutdown may take before the connections left are dropped.
    pub shutdown_timeout_seconds: u64,
    /// `[http]`: timeouts of every listener.
    pub http: HttpConfig,
    /// Key material for SSE cursor signatures; `None`: derived from `api_key`. Its own
    /// secret lets the API key rotate without invalidating the cursors browsers hold.
    pub cursor_secret: Option<String>,
    /// Origins (`https://studip.example.org`) whose pages may open `/ws` and `/sse`;
    /// empty: any page may.
    pub allowed_origins: Vec<String>,
    /// `[jwt]`: how client tokens are verified.
    pub jwt: JwtConfig,
    /// `[plugins]`: where plugins live and how they are sandboxed.
    pub plugins: PluginsConfig,
    /// `[limits]`: sizes and counts per connection.
    pub limits: LimitsConfig,
    /// `[websocket]`: `/ws` timing and buffers.
    pub websocket: WebSocketConfig,
    /// `[sse]`: `/sse` timing.
    pub sse: SseConfig,
    /// `[engine]`: where offsets, epochs and history live.
    pub engine: EngineConfig,
    /// `[rate_limits]`: how often a connection or the API key may act.
    pub rate_limits: RateLimitsConfig,
}

/// `[jwt]`: at most one of `secret` (HS256) and `public_key_file` (RS256/ES256/EdDSA) for
/// tokens without `kid`, plus any number of `[[jwt.keys]]` selected by the token's `kid`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256 shared secret (its UTF-8 bytes are the HMAC key).
    pub secret: Option<String>,
    /// PEM public key; the algorithm follows from the key type.
    pub public_key_file: Option<PathBuf>,
    /// Keys selected by the token header's `kid`, so that a new key can be added before
    /// Stud.IP signs with it and the old one removed after its tokens have expired.
    pub keys: Vec<JwtKeyConfig>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat`, at most one hour.
    pub leeway_seconds: u64,
}

/// One `[[jwt.keys]]` entry: a `kid` and exactly one of `secret` and `public_key_file`,
/// which fixes the algorithm of the tokens it verifies.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// The `kid` a token's header names to be verified with this key.
    pub kid: String,
    /// HS256 shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// PEM public key (RS256, ES256 or EdDSA, by key type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

/// `[plugins]`: the plugin directory and the sandbox of every plugin call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directory watched for `*.wasm` plugins.
    pub dir: PathBuf,
    /// CPU deadline of one plugin call.
    pub call_timeout_ms: u64,
    /// Linear memory cap per plugin instance.
    pub memory_limit_bytes: u64,
    /// Cap on the bytes a plugin may return from one call.
    pub max_output_bytes: u64,
    /// Reload plugins when their files in `dir` change.
    pub watch: bool,
    /// Largest `.wasm` accepted by `PUT /admin/plugins/{name}` (HTTP 413 above).
    pub max_upload_bytes: u64,
    /// Plugin instances the process can hold at once, all plugins together
    /// (each reserves one memory slot of address space); read at start-up.
    pub instance_slots: u32,
    /// Idle instances kept per plugin for the next call; 0 makes every call
    /// instantiate afresh.
    pub pool_size: usize,
    /// Keep compiled plugins on disk, so that the next start or reload of an
    /// unchanged file loads them instead of compiling (seconds for a JavaScript plugin).
    pub compile_cache: bool,
    /// Where; unset: `$XDG_CACHE_HOME/stellwerk` or `$HOME/.cache/stellwerk`.
    pub compile_cache_dir: Option<PathBuf>,
}

impl PluginsConfig {
    /// The compile cache's directory, or `None` when it is off or no default
    /// exists (neither `XDG_CACHE_HOME` nor `HOME` is set, as for some services).
    /// A relative directory is taken from the working directory.
    pub fn compile_cache_dir(&self) -> Option<PathBuf> {
        self.compile_cache_dir_from(|name| std::env::var_os(name))
    }

    fn compile_cache_dir_from(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Option<PathBuf> {
        if !self.compile_cache {
            return None;
        }
        let dir = match &self.compile_cache_dir {
            Some(dir) => dir.clone(),
            None => {
                let from_env = |name| env(name).filter(|v| !v.is_empty());
                let base = from_env("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| from_env("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
                base.join("stellwerk")
            }
        };
        std::path::absolute(&dir).ok()
    }
}

/// `[http]`: what a TCP connection to a listener may cost before it is an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection must send a complete request head within this, from its accept and
    /// again after each answer on a keep-alive connection (so it is the idle timeout too).
    pub header_read_timeout_seconds: u64,
}

/// `[limits]`: what one client may cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest WebSocket frame accepted (close 1009 above), at least 1024.
    pub max_frame_bytes: usize,
    /// Largest publish body (HTTP 413 / `too_large` above).
    pub max_publish_bytes: usize,
    /// Outbound queue per connection, in messages; overflow cuts the slow consumer off.
    pub queue_capacity: usize,
    /// Outbound queue per connection, in bytes of queued frames; overflow cuts the slow
    /// consumer off like `queue_capacity` does. A push always fits into an empty queue.
    pub queue_max_bytes: usize,
    /// Channels one connection or SSE stream may subscribe to.
    pub max_subscriptions_per_connection: usize,
    /// WebSocket connections and SSE streams of the whole node (HTTP 503 above).
    pub max_connections: usize,
    /// WebSocket connections and SSE streams of one user (HTTP 429, or close 4009).
    pub max_connections_per_user: usize,
}

/// `[rate_limits]`: token buckets, each a sustained rate and a burst; a rate of 0 turns
/// that limit off. Over a limit a WebSocket command gets `rate_limited` (the connection
/// lives on), `POST /api/publish` gets 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Commands per second per WebSocket connection, whatever their type.
    pub commands_per_second: u32,
    /// Commands a connection may send at once (a page subscribing at load).
    pub commands_burst: u32,
    /// Client `publish` commands per second per connection.
    pub publishes_per_second: u32,
    /// Client publishes at once.
    pub publishes_burst: u32,
    /// `subscribe` plus `unsubscribe` per second per connection; bounds presence
    /// `join`/`leave` storms, since each needs one of them.
    pub subscriptions_per_second: u32,
    /// Subscribes and unsubscribes at once.
    pub subscriptions_burst: u32,
    /// `POST /api/publish` requests per second with the API key, all PHP workers together.
    pub api_publishes_per_second: u32,
    /// `POST /api/publish` requests at once.
    pub api_publishes_burst: u32,
}

/// `[websocket]`: keep-alive, authentication deadline and buffer sizes of `/ws`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// How often the server pings.
    pub ping_interval_seconds: u64,
    /// Close (4002) when no pong arrived for this long.
    pub pong_timeout_seconds: u64,
    /// Close (4001) when no successful `connect` arrived for this long: one deadline for
    /// the whole unauthenticated phase, its reads and its writes.
    pub connect_timeout_seconds: u64,
    /// Drop the connection when one write (a frame, or the flush) makes no progress for
    /// this long: the peer stopped reading. Also the socket-level write timeout of every
    /// connection of every listener (SSE streams, HTTP answers).
    pub write_timeout_seconds: u64,
    /// Read buffer per connection, allocated up front, and the most one read
    /// takes (a larger frame grows it): small buffers keep idle connections
    /// cheap; commands are rarely larger than 512 bytes.
    pub read_buffer_bytes: usize,
    /// Write buffer per connection.
    pub write_buffer_bytes: usize,
}

/// `[sse]`: `/sse` keep-alive and reconnect hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Interval of `: keep-alive` comments.
    pub keepalive_seconds: u64,
    /// The `retry:` hint sent at the start of a stream.
    pub retry_ms: u64,
}

/// `[engine]`: which engine keeps offsets, epochs and history.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The engine kind.
    pub kind: EngineKind,
    /// For `kind = "redis"`: `redis://[user:password@]host[:port][/db]`, or `rediss://…`
    /// for TLS. Holds a password: never logged.
    pub redis_url: Option<String>,
    /// Cap on the messages kept per channel, whatever the plugin asks for.
    pub max_history_size: u32,
    /// Cap on how long a message is kept, whatever the plugin asks for.
    pub max_history_age_seconds: u64,
    /// A channel without subscribers and without history is forgotten (its epoch too) this
    /// long after its last use, plus at most one sweep (half of it, at most 15 s).
    pub channel_idle_seconds: u64,
    /// What all channels' history may hold together, in bytes (message data plus a fixed
    /// overhead per message); above it the oldest messages of all channels are dropped.
    pub max_history_bytes: u64,
    /// With `kind = "redis"`: a node that has not renewed its heartbeat for this long is
    /// taken for dead, and its presence members leave (a third of it: the renewal interval).
    pub node_timeout_seconds: u64,
}

/// The engine implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In this process's memory: one node, history lost on restart.
    #[default]
    Memory,
    /// On a Redis server shared by several nodes (`engine.redis_url`).
    Redis,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Memory => "memory",
            EngineKind::Redis => "redis",
        })
    }
}

// ---- Defaults: the one place where they live. ----

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            api_key: None,
            admin_token: None,
            admin_listen: None,
            allow_anonymous: false,
            shutdown_timeout_seconds: 10,
            http: HttpConfig::default(),
            cursor_secret: None,
            allowed_origins: Vec::new(),
            jwt: JwtConfig::default(),
            plugins: PluginsConfig::default(),
            limits: LimitsConfig::default(),
            websocket: WebSocketConfig::default(),
            sse: SseConfig::default(),
            engine: EngineConfig::default(),
            rate_limits: RateLimitsConfig::default(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: None,
            public_key_file: None,
            keys: Vec::new(),
            audience: None,
            issuer: None,
            leeway_seconds: 30,
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("./plugins"),
            call_timeout_ms: 100,
            memory_limit_bytes: 64 * 1024 * 1024,
            max_output_bytes: 2 * 1024 * 1024,
            watch: true,
            max_upload_bytes: 32 * 1024 * 1024,
            instance_slots: 200,
            // Enough for every worker thread to find one; more would only hold memory.
            pool_size: (std::thread::available_parallelism().map_or(2, usize::from) * 2)
                .clamp(4, 16),
            compile_cache: true,
            compile_cache_dir: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_seconds: 10,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 64 * 1024,
            max_publish_bytes: 1024 * 1024,
            queue_capacity: 1024,
            // Eight of the largest publishes (`max_publish_bytes`): never reached by a
            // client that reads.
            queue_max_bytes: 8 * 1024 * 1024,
            max_subscriptions_per_connection: 128,
            max_connections: 50_000,
            max_connections_per_user: 64,
        }
    }
}

/// Far above what an honest page does (docs/configuration.md gives the reasoning): a course
/// page subscribing 30 channels with history and presence at load, a reconnect recovering
/// them, a chat; low enough that one client cannot make the broker push presence to a whole
/// lecture hall hundreds of times a second.
impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            commands_per_second: 50,
            commands_burst: 300,
            publishes_per_second: 10,
            publishes_burst: 50,
            subscriptions_per_second: 5,
            subscriptions_burst: 150,
            api_publishes_per_second: 5_000,
            api_publishes_burst: 10_000,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_seconds: 25,
            pong_timeout_seconds: 60,
            connect_timeout_seconds: 10,
            write_timeout_seconds: 10,
            read_buffer_bytes: 512,
            write_buffer_bytes: 4096,
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            keepalive_seconds: 15,
            retry_ms: 3000,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::Memory,
            redis_url: None,
            max_history_size: 10_000,
            max_history_age_seconds: 7 * 24 * 3600,
            channel_idle_seconds: 30,
            max_history_bytes: 256 * 1024 * 1024,
            node_timeout_seconds: 15,
        }
    }
}

// ---- Debug without secrets: configs end up in logs. ----

struct Redacted<'a>(&'a Option<String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<redacted>)"
        } else {
            "None"
        })
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("api_key", &Redacted(&self.api_key))
            .field("admin_token", &Redacted(&self.admin_token))
            .field("admin_listen", &self.admin_listen)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("shutdown_timeout_seconds", &self.shutdown_timeout_seconds)
            .field("http", &self.http)
            .field("cursor_secret", &Redacted(&self.cursor_secret))
            .field("allowed_origins", &self.allowed_origins)
            .field("jwt", &self.jwt)
            .field("plugins", &self.plugins)
            .field("limits", &self.limits)
            .field("websocket", &self.websocket)
            .field("sse", &self.sse)
            .field("engine", &self.engine)
            .field("rate_limits", &self.rate_limits)
            .finish()
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("kind", &self.kind)
            .field("redis_url", &Redacted(&self.redis_url))
            .field("max_history_size", &self.max_history_size)
            .field("max_history_age_seconds", &self.max_history_age_seconds)
            .field("channel_idle_seconds", &self.channel_idle_seconds)
            .field("max_history_bytes", &self.max_history_bytes)
            .field("node_timeout_seconds", &self.node_timeout_seconds)
            .finish()
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &Redacted(&self.secret))
            .field("public_key_file", &self.public_key_file)
            .field("keys", &self.keys)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

impl fmt::Debug for JwtKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeyConfig")
            .field("kid", &self.kid)
            .field("secret", &Redacted(&self.secret))
            .field("public_key_file", &self.public_key_file)
            .finish()
    }
}

/// Why the configuration could not be loaded. `Display` is one line that names the file or
/// variable at fault; the binary prints it and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not fit the settings.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Where and what, e.g. "line 3: unknown field `lisen` in the top level, …".
        message: String,
    },
    /// A `STELLWERK_*` variable is unknown or its value does not fit the setting.
    #[error("{var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// The settings parse but do not make sense together or out of range.
    #[error("{origin}: {message}")]
    Invalid {
        /// The variable or file that set the value, or `configuration` for defaults and
        /// configs built in code.
        origin: String,
        /// Which setting and what is wrong.
        message: String,
    },
}

impl Config {
    /// Loads the configuration: defaults, then `file` (if any), then every `STELLWERK_*`
    /// variable in `env` (pass `std::env::vars()`), then validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut origins = Origins::default();
        let mut merged = match file {
            Some(path) => {
                let table = read_file(path)?;
                origins.file = Some(path.to_path_buf());
                table
            }
            None => toml::Table::new(),
        };

        // Last one wins for duplicate names; sorted so that the first error is stable.
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !NOT_SETTINGS.contains(&&**name))
            .collect();
        let schema = Schema::new();
        for (var, raw) in env {
            let (section, key) = schema.resolve(&var)?;
            let value = schema.parse_env(&var, section, key, &raw)?;
            insert(&mut merged, section, key, value);
            origins.env.insert(setting_name(section, key), var);
        }

        let config =
            Config::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Invalid {
                origin: "configuration".into(),
                message: one_line(e.message()),
            })?;
        let rules = if file.is_some() {
            Rules::Production
        } else {
            Rules::Development
        };
        config
            .check(rules)
            .map_err(|problem| problem.into_error(&origins))?;
        Ok(config)
    }

    /// Checks the values that serde cannot: ranges and combinations. [`Config::load`] does
    /// this already; configs built in code are checked like the embedded default (missing
    /// and short secrets allowed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(Rules::Development)
            .map_err(|problem| problem.into_error(&Origins::default()))
    }

    /// What an operator should hear about at start-up but that does not stop it: short
    /// secrets on the embedded default (a config file refuses them), and pages of any origin
    /// allowed on a listener beyond loopback.
    pub fn warnings(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .secrets()
            .into_iter()
            .filter(|(_, secret)| secret.len() < MIN_SECRET_BYTES)
            .map(|(name, secret)| {
                format!(
                    "{name} is {} bytes long, fine for development only: a config file \
                     refuses secrets shorter than {MIN_SECRET_BYTES} bytes (make one with \
                     `{MAKE_SECRET}`)",
                    secret.len()
                )
            })
            .collect();
        if self.allowed_origins.is_empty() && !self.listen.ip().is_loopback() {
            lines.push(format!(
                "allowed_origins is empty and the broker listens on {}: pages of any web site \
                 may open /ws and /sse with their visitors' tokens; set allowed_origins \
                 (STELLWERK_ALLOWED_ORIGINS) to the Stud.IP origin",
                self.listen
            ));
        }
        lines
    }

    /// Every configured secret with the name of its setting.
    fn secrets(&self) -> Vec<(String, &str)> {
        let mut secrets: Vec<(String, &str)> = [
            ("api_key", &self.api_key),
            ("admin_token", &self.admin_token),
            ("cursor_secret", &self.cursor_secret),
            ("jwt.secret", &self.jwt.secret),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value.as_deref()?)))
        .collect();
        for key in &self.jwt.keys {
            if let Some(secret) = &key.secret {
                secrets.push((format!("jwt.keys secret of kid `{}`", key.kid), secret));
            }
        }
        secrets
    }

    /// Whether any key verifies client tokens.
    fn has_jwt_key(&self) -> bool {
        self.jwt.secret.is_some() || self.jwt.public_key_file.is_some() || !self.jwt.keys.is_empty()
    }

    /// Fills in what a developer on the embedded default lacks: a random API key and a
    /// random HS256 secret where none is configured. Returns one log line per decision,
    /// including the generated values (marked DEV ONLY), so they can be used right away.
    pub fn fill_dev_secrets(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.api_key.is_none() {
            let key = random_hex();
            lines.push(format!(
                "DEV ONLY: no api_key configured; generated a random one for this run: \
                 STELLWERK_API_KEY={key} (set api_key or STELLWERK_API_KEY in production)"
            ));
            self.api_key = Some(key);
        }
        if !self.has_jwt_key() {
            let secret = random_hex();
            lines.push(format!(
                "DEV ONLY: no jwt.secret or jwt.public_key_file configured; generated a random \
                 HS256 secret for this run: STELLWERK_JWT_SECRET={secret} (tokens from earlier \
                 runs are invalid; configure one in production)"
            ));
            self.jwt.secret = Some(secret);
        }
        if self.admin_token.is_none() {
            lines.push(
                "no admin_token configured: the admin API is disabled \
                 (set admin_token or STELLWERK_ADMIN_TOKEN to enable it)"
                    .to_owned(),
            );
        }
        lines
    }

    /// One line for the start-up log; never contains a secret.
    pub fn summary(&self) -> String {
        let mut jwt = match (&self.jwt.secret, &self.jwt.public_key_file) {
            (Some(_), _) => "hs256 secret".to_owned(),
            (None, Some(path)) => format!("public key file {}", path.display()),
            (None, None) => "none".to_owned(),
        };
        if !self.jwt.keys.is_empty() {
            let kids: Vec<&str> = self.jwt.keys.iter().map(|k| k.kid.as_str()).collect();
            jwt.push_str(&format!(" + keys by kid [{}]", kids.join(", ")));
        }
        for (claim, value) in [("aud", &self.jwt.audience), ("iss", &self.jwt.issuer)] {
            if let Some(value) = value {
                jwt.push_str(&format!(", {claim} {value:?}"));
            }
        }
        let origins = if self.allowed_origins.is_empty() {
            "any".to_owned()
        } else {
            self.allowed_origins.join(" ")
        };
        let on_off = |b: bool| if b { "on" } else { "off" };
        format!(
            "listen {}, engine {}, plugins dir {}, anonymous {}, jwt {}, api key {}, admin api {}, \
             origins {}",
            self.listen,
            self.engine.kind,
            self.plugins.dir.display(),
            on_off(self.allow_anonymous),
            jwt,
            if self.api_key.is_some() {
                "set"
            } else {
                "unset"
            },
            on_off(self.admin_token.is_some()),
            origins,
        )
    }

    fn check(&self, rules: Rules) -> Result<(), Problem> {
        for (key, value) in [
            (("", "api_key"), &self.api_key),
            (("", "admin_token"), &self.admin_token),
            (("", "cursor_secret"), &self.cursor_secret),
            (("jwt", "secret"), &self.jwt.secret),
            (("jwt", "audience"), &self.jwt.audience),
            (("jwt", "issuer"), &self.jwt.issuer),
        ] {
            if value.as_deref() == Some("") {
                return Err(Problem::new(&[key], "must not be empty"));
            }
        }
        if self.jwt.secret.is_some() && self.jwt.public_key_file.is_some() {
            return Err(Problem::new(
                &[("jwt", "secret"), ("jwt", "public_key_file")],
                "jwt.secret and jwt.public_key_file are both set; choose one \
                 (HS256 secret or public key)",
            ));
        }
        self.check_jwt_keys()?;
        if let Some(origin) = self
            .allowed_origins
            .iter()
            .find(|origin| !is_origin(origin))
        {
            return Err(Problem::new(
                &[("", "allowed_origins")],
                format!(
                    "entry {origin:?} is not an origin: scheme://host[:port] without path \
                     or trailing slash, e.g. https://studip.example.org"
                ),
            ));
        }
        if self.admin_token.is_some() && self.admin_token == self.api_key {
            return Err(Problem::new(
                &[("", "admin_token"), ("", "api_key")],
                "admin_token and api_key are the same; the admin token must be a secret of \
                 its own (PHP holds the API key)",
            ));
        }

        if self.jwt.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(Problem::new(
                &[("jwt", "leeway_seconds")],
                format!("must be at most {MAX_LEEWAY_SECONDS}"),
            ));
        }
        if self.plugins.dir.as_os_str().is_empty() {
            return Err(Problem::new(&[("plugins", "dir")], "must not be empty"));
        }
        let must_be_positive: [((&str, &str), u64); 19] = [
            (
                ("", "shutdown_timeout_seconds"),
                self.shutdown_timeout_seconds,
            ),
            (
                ("http", "header_read_timeout_seconds"),
                self.http.header_read_timeout_seconds,
            ),
            (
                ("limits", "max_connections"),
                self.limits.max_connections as u64,
            ),
            (
                ("limits", "max_connections_per_user"),
                self.limits.max_connections_per_user as u64,
            ),
            (("plugins", "call_timeout_ms"), self.plugins.call_timeout_ms),
            (
                ("plugins", "instance_slots"),
                u64::from(self.plugins.instance_slots),
            ),
            (
                ("plugins", "memory_limit_bytes"),
                self.plugins.memory_limit_bytes,
            ),
            (
                ("plugins", "max_output_bytes"),
                self.plugins.max_output_bytes,
            ),
            (
                ("limits", "max_frame_bytes"),
                self.limits.max_frame_bytes as u64,
            ),
            (
                ("limits", "max_publish_bytes"),
                self.limits.max_publish_bytes as u64,
            ),
            (
                ("limits", "queue_capacity"),
                self.limits.queue_capacity as u64,
            ),
            (
                ("limits", "queue_max_bytes"),
                self.limits.queue_max_bytes as u64,
            ),
            (
                ("limits", "max_subscriptions_per_connection"),
                self.limits.max_subscriptions_per_connection as u64,
            ),
            (
                ("websocket", "ping_interval_seconds"),
                self.websocket.ping_interval_seconds,
            ),
            (
                ("websocket", "pong_timeout_seconds"),
                self.websocket.pong_timeout_seconds,
            ),
            (
                ("websocket", "connect_timeout_seconds"),
                self.websocket.connect_timeout_seconds,
            ),
            (
                ("websocket", "write_timeout_seconds"),
                self.websocket.write_timeout_seconds,
            ),
            (
                ("websocket", "read_buffer_bytes"),
                self.websocket.read_buffer_bytes as u64,
            ),
            (("sse", "keepalive_seconds"), self.sse.keepalive_seconds),
        ];
        for (key, value) in must_be_positive {
            if value == 0 {
                return Err(Problem::new(&[key], "must be greater than 0"));
            }
        }
        for (key, value) in [
            (
                ("engine", "channel_idle_seconds"),
                self.engine.channel_idle_seconds,
            ),
            (
                ("engine", "max_history_bytes"),
                self.engine.max_history_bytes,
            ),
            (
                ("engine", "node_timeout_seconds"),
                self.engine.node_timeout_seconds,
            ),
        ] {
            if value == 0 {
                return Err(Problem::new(&[key], "must be greater than 0"));
            }
        }
        match (&self.engine.kind, &self.engine.redis_url) {
            (EngineKind::Redis, None) => {
                return Err(Problem::new(
                    &[("engine", "redis_url")],
                    "must be set when engine.kind is \"redis\" (redis://host:6379)",
                ))
            }
            (EngineKind::Redis, Some(url))
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) =>
            {
                return Err(Problem::new(
                    &[("engine", "redis_url")],
                    "must start with redis:// or rediss:// (TLS)",
                ))
            }
            (EngineKind::Memory, Some(_)) => {
                return Err(Problem::new(
                    &[("engine", "redis_url")],
                    "is set but engine.kind is \"memory\"; set engine.kind = \"redis\" to use it",
                ))
            }
            _ => {}
        }
        let rate_limits = &self.rate_limits;
        for (rate, burst, burst_key) in [
            (
                rate_limits.commands_per_second,
                rate_limits.commands_burst,
                "commands_burst",
            ),
            (
                rate_limits.publishes_per_second,
                rate_limits.publishes_burst,
                "publishes_burst",
            ),
            (
                rate_limits.subscriptions_per_second,
                rate_limits.subscriptions_burst,
                "subscriptions_burst",
            ),
            (
                rate_limits.api_publishes_per_second,
                rate_limits.api_publishes_burst,
                "api_publishes_burst",
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(Problem::new(
                    &[("rate_limits", burst_key)],
                    "must be at least 1 while its rate is on (a rate of 0 turns a limit off)",
                ));
            }
        }
        if self.limits.max_frame_bytes < 1024 {
            return Err(Problem::new(
                &[("limits", "max_frame_bytes")],
                format!("must be at least 1024, got {}", self.limits.max_frame_bytes),
            ));
        }
        if rules == Rules::Production {
            self.check_production_secrets()?;
        }
        Ok(())
    }

    fn check_jwt_keys(&self) -> Result<(), Problem> {
        let keys = &[("jwt", "keys")];
        for (i, key) in self.jwt.keys.iter().enumerate() {
            if key.kid.is_empty() {
                return Err(Problem::new(keys, "entry with an empty kid"));
            }
            if self.jwt.keys[..i].iter().any(|k| k.kid == key.kid) {
                return Err(Problem::new(
                    keys,
                    format!("kid `{}` is listed twice", key.kid),
                ));
            }
            match (&key.secret, &key.public_key_file) {
                (Some(_), Some(_)) => {
                    return Err(Problem::new(
                        keys,
                        format!(
                            "kid `{}` has both secret and public_key_file; choose one",
                            key.kid
                        ),
                    ))
                }
                (None, None) => {
                    return Err(Problem::new(
                        keys,
                        format!("kid `{}` needs a secret or a public_key_file", key.kid),
                    ))
                }
                (Some(secret), None) if secret.is_empty() => {
                    return Err(Problem::new(
                        keys,
                        format!("kid `{}` has an empty secret", key.kid),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// With a config file the broker never invents secrets and never runs on weak ones.
    fn check_production_secrets(&self) -> Result<(), Problem> {
        if self.api_key.is_none() {
            return Err(Problem::new(
                &[("", "api_key")],
                format!(
                    "is not set: with a config file no secret is generated; set api_key or \
                     STELLWERK_API_KEY (make one with `{MAKE_SECRET}`)"
                ),
            ));
        }
        if !self.has_jwt_key() {
            return Err(Problem::new(
                &[("jwt", "secret")],
                format!(
                    "is not set and neither is jwt.public_key_file or [[jwt.keys]]: with a \
                     config file no secret is generated; set one (an HS256 secret: \
                     `{MAKE_SECRET}`)"
                ),
            ));
        }
        let short = self
            .secrets()
            .into_iter()
            .find(|(_, secret)| secret.len() < MIN_SECRET_BYTES);
        if let Some((name, secret)) = short {
            let key = match name.as_str() {
                "api_key" => ("", "api_key"),
                "admin_token" => ("", "admin_token"),
                "cursor_secret" => ("", "cursor_secret"),
                "jwt.secret" => ("jwt", "secret"),
                _ => ("jwt", "keys"),
            };
            return Err(Problem::whole(
                &[key],
                format!(
                    "{name} is {} bytes long; at least {MIN_SECRET_BYTES} are required \
                     (make one with `{MAKE_SECRET}`)",
                    secret.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Which checks apply: a config file means production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// The embedded default, or a config built in code: missing secrets are generated by
    /// the binary, short ones only warned about.
    Development,
    /// A config file: every secret set and at least [`MIN_SECRET_BYTES`] long.
    Production,
}

/// Shortest secret a config file may hold: 256 bits, as HS256 wants (RFC 7518, 3.2).
const MIN_SECRET_BYTES: usize = 32;

/// The command that makes a good secret, quoted in errors and warnings.
const MAKE_SECRET: &str = "openssl rand -hex 32";

/// `scheme://host[:port]` as browsers send it in `Origin` (compared case-insensitively).
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    // `[::1]:8080`, `host:8080`, `host`.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, after)) if !addr.is_empty() => (addr, after.strip_prefix(':')),
            _ => return false,
        },
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    let v6_trailer_ok = !rest.starts_with('[') || rest.ends_with(']') || port.is_some();
    host_ok && port_ok && v6_trailer_ok
}

/// 32 random bytes from the OS, hex-encoded.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

// ---- Loading internals ----

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file_error = |e: toml::de::Error, section: Option<&str>| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let what = one_line(e.message());
        let location = section.map(|section| match section {
            "" => "in the top level".to_owned(),
            section => format!("in [{section}]"),
        });
        // The key whose value is at fault, for "line 2: limits.queue_capacity: invalid type …".
        let key = e.span().and_then(|span| key_before(&text, span.start));
        let message = match (line, location) {
            // "line 3: unknown field `x` in [jwt], expected one of …"
            (line, Some(location)) if what.starts_with("unknown field `") => {
                let what = insert_location(&what, &location);
                match line {
                    Some(line) => format!("line {line}: {what}"),
                    None => what,
                }
            }
            (Some(line), Some(_)) if key.is_some() => {
                let key = key.unwrap_or_default();
                let setting = match section {
                    Some(section) if !section.is_empty() && !key.contains('.') => {
                        format!("{section}.{key}")
                    }
                    _ => key.to_owned(),
                };
                format!("line {line}: {setting}: {what}")
            }
            (Some(line), Some(location)) => format!("line {line}, {location}: {what}"),
            (None, Some(location)) => format!("{location}: {what}"),
            (Some(line), None) => format!("line {line}: {what}"),
            (None, None) => what,
        };
        ConfigError::File {
            path: path.to_path_buf(),
            message,
        }
    };
    // Syntax first, then the settings (spans of the typed parse give the line numbers).
    let table: toml::Table = toml::from_str(&text).map_err(|e| file_error(e, None))?;
    if let Err(e) = toml::from_str::<Config>(&text) {
        return Err(file_error(e, Some(failing_section(&table))));
    }
    Ok(table)
}

/// The key of `key = value` when `value_start` is where the value begins, if that is
/// what the text looks like.
fn key_before(text: &str, value_start: usize) -> Option<&str> {
    let before = text.get(..value_start)?.trim_end().strip_suffix('=')?;
    let start = before.rfind(['\n', '{', ',']).map_or(0, |i| i + 1);
    let key = before[start..].trim();
    (!key.is_empty() && !key.contains(['[', ']', '"', '\''])).then_some(key)
}

/// Which section of a file that failed to deserialize is at fault (`""`: the top level).
fn failing_section(table: &toml::Table) -> &str {
    for (name, value) in table {
        let fits = match name.as_str() {
            "jwt" => JwtConfig::deserialize(value.clone()).is_ok(),
            "http" => HttpConfig::deserialize(value.clone()).is_ok(),
            "plugins" => PluginsConfig::deserialize(value.clone()).is_ok(),
            "limits" => LimitsConfig::deserialize(value.clone()).is_ok(),
            "websocket" => WebSocketConfig::deserialize(value.clone()).is_ok(),
            "sse" => SseConfig::deserialize(value.clone()).is_ok(),
            "engine" => EngineConfig::deserialize(value.clone()).is_ok(),
            "rate_limits" => RateLimitsConfig::deserialize(value.clone()).is_ok(),
            _ => true,
        };
        if !fits && value.is_table() {
            return name;
        }
    }
    ""
}

/// Puts `location` after the first backticked name of a serde message ("unknown field
/// `x` in [jwt], expected …").
fn insert_location(message: &str, location: &str) -> String {
    let mut ticks = message.match_indices('`');
    if let (Some(_), Some((end, _))) = (ticks.next(), ticks.next()) {
        format!("{} {location}{}", &message[..=end], &message[end + 1..])
    } else {
        format!("{message} {location}")
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn setting_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

fn insert(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let target = if section.is_empty() {
        table
    } else {
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => t,
            // The file was checked against the settings already: a section is a table.
            _ => unreachable!("section `{section}` is a table"),
        }
    };
    target.insert(key.to_owned(), value);
}

/// Where each setting came from, to name it in validation errors.
#[derive(Default)]
struct Origins {
    file: Option<PathBuf>,
    /// `section.key` → the variable that set it.
    env: HashMap<String, String>,
}

impl Origins {
    fn of(&self, section: &str, key: &str) -> String {
        if let Some(var) = self.env.get(&setting_name(section, key)) {
            return var.clone();
        }
        // Set in the file, or a default the file should change (a missing secret).
        match &self.file {
            Some(path) => path.display().to_string(),
            None => "configuration".to_owned(),
        }
    }
}

/// A failed check: the settings involved and what is wrong.
struct Problem {
    keys: Vec<(&'static str, &'static str)>,
    message: String,
    /// The message names the setting itself (no `section.key` prefix).
    whole: bool,
}

impl Problem {
    fn new(keys: &[(&'static str, &'static str)], message: impl Into<String>) -> Problem {
        Problem {
            keys: keys.to_vec(),
            message: message.into(),
            whole: false,
        }
    }

    fn whole(keys: &[(&'static str, &'static str)], message: impl Into<String>) -> Problem {
        Problem {
            whole: true,
            ..Problem::new(keys, message)
        }
    }

    fn into_error(self, origins: &Origins) -> ConfigError {
        let mut sources: Vec<String> = Vec::new();
        for (section, key) in &self.keys {
            let origin = origins.of(section, key);
            if !sources.contains(&origin) {
                sources.push(origin);
            }
        }
        let message = if self.keys.len() == 1 && !self.whole {
            let (section, key) = self.keys[0];
            format!("{} {}", setting_name(section, key), self.message)
        } else {
            self.message
        };
        ConfigError::Invalid {
            origin: sources.join(" and "),
            message,
        }
    }
}

/// What the environment mapping knows about the settings: their names (from the serde
/// derives, so a new field needs no second list) and their types (from the defaults).
struct Schema {
    top: &'static [&'static str],
    sections: Vec<(&'static str, &'static [&'static str])>,
    defaults: toml::Table,
}

impl Schema {
    fn new() -> Schema {
        let defaults = toml::Table::try_from(Config::default())
            .expect("the default config serialises to TOML");
        let top = field_names::<Config>();
        let mut sections: Vec<_> = top
            .iter()
            .filter_map(|&name| Some((name, section_fields(name)?)))
            .collect();
        // Longest section name first, so that the longest matching prefix wins.
        sections.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        Schema {
            top,
            sections,
            defaults,
        }
    }

    /// Maps a variable name to `(section, key)`; section `""` is the top level.
    fn resolve(&self, var: &str) -> Result<(&'static str, &'static str), ConfigError> {
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        for (section, fields) in &self.sections {
            if let Some(key) = rest.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
                if let Some(field) = fields.iter().find(|f| **f == key) {
                    return Ok((section, field));
                }
            }
        }
        if let Some(field) = self.top.iter().find(|f| **f == rest) {
            if self.sections.iter().any(|(s, _)| s == field) {
                return Err(ConfigError::Env {
                    var: var.to_owned(),
                    message: format!("[{field}] is a section; set its keys as {var}_<KEY>"),
                });
            }
            return Ok(("", field));
        }
        let mut message = "unknown setting".to_owned();
        if let Some(suggestion) = self.closest(var) {
            message.push_str(&format!(" (did you mean {suggestion}?)"));
        }
        Err(ConfigError::Env {
            var: var.to_owned(),
            message,
        })
    }

    /// Every variable name a setting answers to.
    fn all_vars(&self) -> Vec<String> {
        let top = self
            .top
            .iter()
            .filter(|f| !self.sections.iter().any(|(s, _)| s == *f))
            .map(|f| format!("{ENV_PREFIX}{}", f.to_ascii_uppercase()));
        let sections = self.sections.iter().flat_map(|(s, fields)| {
            fields
                .iter()
                .map(move |f| format!("{ENV_PREFIX}{}_{}", s, f).to_ascii_uppercase())
        });
        top.chain(sections).collect()
    }

    fn closest(&self, var: &str) -> Option<String> {
        self.all_vars()
            .into_iter()
            .map(|known| (edit_distance(var, &known), known))
            .filter(|(distance, _)| *distance <= 3)
            .min()
            .map(|(_, known)| known)
    }

    /// Turns the variable's text into a TOML value of the setting's type, and checks that
    /// the setting accepts it, so that errors name the variable.
    fn parse_env(
        &self,
        var: &str,
        section: &str,
        key: &str,
        raw: &str,
    ) -> Result<toml::Value, ConfigError> {
        let env_error = |message: String| ConfigError::Env {
            var: var.to_owned(),
            message,
        };
        let default = if section.is_empty() {
            self.defaults.get(key)
        } else {
            self.defaults
                .get(section)
                .and_then(toml::Value::as_table)
                .and_then(|t| t.get(key))
        };
        let value = match default {
            // Settings without a default are optional strings and paths.
            None | Some(toml::Value::String(_)) => {
                if raw.is_empty() {
                    return Err(env_error(
                        "empty value; unset the variable instead".to_owned(),
                    ));
                }
                toml::Value::String(raw.to_owned())
            }
            Some(toml::Value::Integer(_)) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| env_error(format!("expected an integer, got {raw:?}")))?,
            Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
                parse_bool(raw)
                    .ok_or_else(|| env_error(format!("expected true or false, got {raw:?}")))?,
            ),
            Some(toml::Value::Array(_)) if FILE_ONLY.contains(&(section, key)) => {
                return Err(env_error(format!(
                    "{} is a list of tables; set it in the config file",
                    setting_name(section, key)
                )))
            }
            // Lists of strings, comma-separated: `a,b , c` → ["a", "b", "c"].
            Some(toml::Value::Array(_)) => {
                let items: Vec<toml::Value> = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_owned()))
                    .collect();
                if items.is_empty() {
                    return Err(env_error(
                        "empty list; unset the variable instead".to_owned(),
                    ));
                }
                toml::Value::Array(items)
            }
            Some(_) => {
                return Err(env_error(
                    "this setting cannot be set from the environment".to_owned(),
                ))
            }
        };
        // Deserialize just this one setting (all others default) to check its value.
        let mut alone = toml::Table::new();
        insert(&mut alone, section, key, value.clone());
        Config::deserialize(toml::Value::Table(alone)).map_err(|e| {
            let mut message = one_line(e.message());
            if value.is_str() && !message.contains(raw) {
                message.push_str(&format!(", got {raw:?}"));
            }
            env_error(message)
        })?;
        Ok(value)
    }
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Levenshtein distance, for "did you mean" on misspelt variables.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The fields of a section struct, by the section's name in `Config`.
fn section_fields(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "jwt" => field_names::<JwtConfig>(),
        "http" => field_names::<HttpConfig>(),
        "plugins" => field_names::<PluginsConfig>(),
        "limits" => field_names::<LimitsConfig>(),
        "websocket" => field_names::<WebSocketConfig>(),
        "sse" => field_names::<SseConfig>(),
        "engine" => field_names::<EngineConfig>(),
        "rate_limits" => field_names::<RateLimitsConfig>(),
        _ => return None,
    })
}

/// The field names a serde-derived struct deserializes, read from the derive itself.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // Always "fails": the recorder stops as soon as the derive tells it the fields.
    let _ = T::deserialize(FieldRecorder(&mut fields));
    fields
}

struct FieldRecorder<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldRecorder<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs have field names"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A config file in a fresh temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> TempFile {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "stellwerk-config-test-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("stellwerk.toml");
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, env(vars))
    }

    /// Secrets good enough for a config file (64 hex characters each).
    const API_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const JWT_SECRET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    /// The lines a config file needs so that it is not refused for missing secrets.
    fn secrets_toml() -> String {
        format!("api_key = \"{API_KEY}\"\n[jwt]\nsecret = \"{JWT_SECRET}\"\n")
    }

    #[test]
    fn defaults_are_the_embedded_default() {
        let config = Config::load(None, Vec::new()).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.api_key, None);
        assert_eq!(config.admin_token, None);
        assert!(!config.allow_anonymous);
        assert_eq!(config.jwt.secret, None);
        assert_eq!(config.jwt.public_key_file, None);
        assert_eq!(config.jwt.leeway_seconds, 30);
        assert_eq!(config.plugins.dir, Path::new("./plugins"));
        assert_eq!(config.plugins.call_timeout_ms, 100);
        assert_eq!(config.plugins.memory_limit_bytes, 64 << 20);
        assert_eq!(config.plugins.max_output_bytes, 2 << 20);
        assert_eq!(config.limits.max_frame_bytes, 65536);
        assert_eq!(config.limits.max_publish_bytes, 1 << 20);
        assert_eq!(config.limits.queue_capacity, 1024);
        assert_eq!(config.limits.max_subscriptions_per_connection, 128);
        assert_eq!(config.websocket.ping_interval_seconds, 25);
        assert_eq!(config.websocket.pong_timeout_seconds, 60);
        assert_eq!(config.websocket.connect_timeout_seconds, 10);
        assert_eq!(config.websocket.write_timeout_seconds, 10);
        assert_eq!(config.limits.queue_max_bytes, 8 * 1024 * 1024);
        assert_eq!(config.websocket.read_buffer_bytes, 512);
        assert_eq!(config.websocket.write_buffer_bytes, 4096);
        assert_eq!(config.sse.keepalive_seconds, 15);
        assert_eq!(config.sse.retry_ms, 3000);
        assert_eq!(config.engine.kind, EngineKind::Memory);
        assert_eq!(config.engine.channel_idle_seconds, 30);
        assert_eq!(config.engine.max_history_bytes, 256 << 20);
    }

    #[test]
    fn file_settings_override_defaults_and_the_rest_stays_default() {
        let file = TempFile::new(
            r#"
listen = "0.0.0.0:9000"
api_key = "php-key-php-key-php-key-php-key-php-key"
allow_anonymous = true

[jwt]
public_key_file = "/etc/stellwerk/jwt.pem"
leeway_seconds = 5

[limits]
queue_capacity = 64

[engine]
kind = "memory"
"#,
        );
        let config = Config::load(Some(&file.0), Vec::new()).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            config.api_key.as_deref(),
            Some("php-key-php-key-php-key-php-key-php-key")
        );
        assert!(config.allow_anonymous);
        assert_eq!(
            config.jwt.public_key_file.as_deref(),
            Some(Path::new("/etc/stellwerk/jwt.pem"))
        );
        assert_eq!(config.jwt.leeway_seconds, 5);
        assert_eq!(config.limits.queue_capacity, 64);
        assert_eq!(config.limits.max_frame_bytes, 65536);
        assert_eq!(config.plugins, PluginsConfig::default());
    }

    #[test]
    fn the_five_named_variables_set_their_settings() {
        let config = load_env(&[
            ("STELLWERK_LISTEN", "0.0.0.0:7000"),
            ("STELLWERK_API_KEY", "k-123"),
            ("STELLWERK_JWT_SECRET", "s-456"),
            ("STELLWERK_PLUGINS_DIR", "/srv/stellwerk/plugins"),
            ("STELLWERK_ADMIN_TOKEN", "a-789"),
        ])
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(config.api_key.as_deref(), Some("k-123"));
        assert_eq!(config.jwt.secret.as_deref(), Some("s-456"));
        assert_eq!(config.plugins.dir, Path::new("/srv/stellwerk/plugins"));
        assert_eq!(config.admin_token.as_deref(), Some("a-789"));
    }

    #[test]
    fn the_redis_engine_needs_its_url_and_never_logs_the_password() {
        let message = load_env(&[("STELLWERK_ENGINE_KIND", "redis")])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("engine.redis_url must be set"),
            "{message}"
        );
        let message = load_env(&[
            ("STELLWERK_ENGINE_KIND", "redis"),
            ("STELLWERK_ENGINE_REDIS_URL", "localhost:6379"),
        ])
        .unwrap_err()
        .to_string();
        assert!(message.contains("redis:// or rediss://"), "{message}");
        let config = load_env(&[
            ("STELLWERK_ENGINE_KIND", "redis"),
            (
                "STELLWERK_ENGINE_REDIS_URL",
                "redis://:hunter2@10.0.0.5:6379/2",
            ),
        ])
        .unwrap();
        assert_eq!(config.engine.kind, EngineKind::Redis);
        assert_eq!(
            config.engine.redis_url.as_deref(),
            Some("redis://:hunter2@10.0.0.5:6379/2")
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(config.summary().contains("engine redis"));
    }

    #[test]
    fn section_integer_and_boolean_variables_are_typed() {
        let config = load_env(&[
            ("STELLWERK_LIMITS_MAX_FRAME_BYTES", "2048"),
            ("STELLWERK_WEBSOCKET_PING_INTERVAL_SECONDS", "5"),
            ("STELLWERK_ALLOW_ANONYMOUS", "yes"),
            ("STELLWERK_JWT_PUBLIC_KEY_FILE", "/keys/pub.pem"),
            ("STELLWERK_ENGINE_KIND", "memory"),
            ("STELLWERK_ENGINE_CHANNEL_IDLE_SECONDS", "2"),
            ("STELLWERK_ENGINE_MAX_HISTORY_BYTES", "65536"),
        ])
        .unwrap();
        assert_eq!(config.engine.channel_idle_seconds, 2);
        assert_eq!(config.engine.max_history_bytes, 65536);
        assert_eq!(config.limits.max_frame_bytes, 2048);
        assert_eq!(config.websocket.ping_interval_seconds, 5);
        assert!(config.allow_anonymous);
        assert_eq!(
            config.jwt.public_key_file.as_deref(),
            Some(Path::new("/keys/pub.pem"))
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = TempFile::new(&format!(
            "listen = \"0.0.0.0:9000\"\n{}[limits]\nqueue_capacity = 64\n",
            secrets_toml()
        ));
        let config = Config::load(
            Some(&file.0),
            env(&[
                ("STELLWERK_LIMITS_QUEUE_CAPACITY", "16"),
                ("HOME", "/root"),
                (CONFIG_FILE_ENV, "ignored-here.toml"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.limits.queue_capacity, 16);
    }

    #[test]
    fn unknown_key_in_the_file_is_an_error_naming_file_key_and_line() {
        let file = TempFile::new("# comment\nlisen = \"0.0.0.0:9000\"\n");
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(&file.0.display().to_string()),
            "{message}"
        );
        assert!(message.contains("unknown field `lisen`"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("top level"), "{message}");
        assert!(message.contains("`listen`"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn unknown_key_in_a_section_names_the_section() {
        let file = TempFile::new("[limits]\nqueue_capacity = 4\n\n[jwt]\nsecrte = \"x\"\n");
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("unknown field `secrte` in [jwt]"),
            "{message}"
        );
        assert!(message.contains("line 5"), "{message}");
    }

    #[test]
    fn invalid_toml_and_wrong_types_in_the_file_are_errors() {
        let file = TempFile::new("listen = \n");
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(message.contains("line 1"), "{message}");

        let file = TempFile::new("[limits]\nqueue_capacity = \"lots\"\n");
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.ends_with(
                "stellwerk.toml: line 2: limits.queue_capacity: invalid type: string \"lots\", \
                 expected usize"
            ),
            "{message}"
        );

        let file = TempFile::new("listen = 8080\n");
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 1: listen: invalid type"),
            "{message}"
        );

        let file = TempFile::new("engine.kind = \"nats\"\n");
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 1: engine.kind: unknown variant `nats`"),
            "{message}"
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let path = std::env::temp_dir().join("stellwerk-no-such-dir/stellwerk.toml");
        let err = Config::load(Some(&path), Vec::new()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("stellwerk-no-such-dir"));
    }

    #[test]
    fn unknown_stellwerk_variable_is_an_error_with_a_suggestion() {
        let message = load_env(&[("STELLWERK_LIMITS_MAX_FRAME_BYTE", "2048")])
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("STELLWERK_LIMITS_MAX_FRAME_BYTE: unknown setting"),
            "{message}"
        );
        assert!(
            message.contains("STELLWERK_LIMITS_MAX_FRAME_BYTES"),
            "{message}"
        );

        let message = load_env(&[("STELLWERK_FROBNICATE", "1")])
            .unwrap_err()
            .to_string();
        assert_eq!(message, "STELLWERK_FROBNICATE: unknown setting");

        let message = load_env(&[("STELLWERK_JWT", "x")]).unwrap_err().to_string();
        assert!(
            message.starts_with("STELLWERK_JWT: [jwt] is a section"),
            "{message}"
        );
    }

    #[test]
    fn bad_values_in_variables_are_errors_naming_the_variable() {
        let message = load_env(&[("STELLWERK_LIMITS_QUEUE_CAPACITY", "lots")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "STELLWERK_LIMITS_QUEUE_CAPACITY: expected an integer, got \"lots\""
        );
        for (var, value) in [
            ("STELLWERK_LIMITS_QUEUE_CAPACITY", "-1"),
            ("STELLWERK_LISTEN", "localhost"),
            ("STELLWERK_ALLOW_ANONYMOUS", "maybe"),
            ("STELLWERK_ENGINE_KIND", "nats"),
            ("STELLWERK_API_KEY", ""),
        ] {
            let message = load_env(&[(var, value)]).unwrap_err().to_string();
            assert!(message.starts_with(&format!("{var}: ")), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn validation_names_the_setting_and_its_source() {
        let message = load_env(&[("STELLWERK_LIMITS_QUEUE_CAPACITY", "0")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "STELLWERK_LIMITS_QUEUE_CAPACITY: limits.queue_capacity must be greater than 0"
        );
        let message = load_env(&[("STELLWERK_ENGINE_MAX_HISTORY_BYTES", "0")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "STELLWERK_ENGINE_MAX_HISTORY_BYTES: engine.max_history_bytes must be greater than 0"
        );

        let file = TempFile::new("[limits]\nmax_frame_bytes = 512\n");
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            format!(
                "{}: limits.max_frame_bytes must be at least 1024, got 512",
                file.0.display()
            )
        );

        let file = TempFile::new("[jwt]\npublic_key_file = \"/keys/pub.pem\"\n");
        let err = Config::load(Some(&file.0), env(&[("STELLWERK_JWT_SECRET", "s")])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("STELLWERK_JWT_SECRET"), "{message}");
        assert!(message.contains(&file.0.display().to_string()), "{message}");
        assert!(message.contains("both set"), "{message}");

        let message = load_env(&[("STELLWERK_JWT_LEEWAY_SECONDS", "99999999999")])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("jwt.leeway_seconds must be at most"),
            "{message}"
        );
    }

    #[test]
    fn every_section_of_the_config_is_reachable_from_the_environment() {
        let schema = Schema::new();
        let defaults = &schema.defaults;
        for (name, value) in defaults {
            if value.is_table() {
                assert!(
                    schema.sections.iter().any(|(s, _)| s == name),
                    "section [{name}] has no entry in section_fields"
                );
            }
        }
        let vars = schema.all_vars();
        for expected in [
            "STELLWERK_LISTEN",
            "STELLWERK_API_KEY",
            "STELLWERK_ADMIN_TOKEN",
            "STELLWERK_ALLOW_ANONYMOUS",
            "STELLWERK_JWT_SECRET",
            "STELLWERK_JWT_PUBLIC_KEY_FILE",
            "STELLWERK_PLUGINS_DIR",
            "STELLWERK_ADMIN_LISTEN",
            "STELLWERK_PLUGINS_WATCH",
            "STELLWERK_PLUGINS_MAX_UPLOAD_BYTES",
            "STELLWERK_PLUGINS_COMPILE_CACHE",
            "STELLWERK_PLUGINS_COMPILE_CACHE_DIR",
            "STELLWERK_SSE_RETRY_MS",
            "STELLWERK_ENGINE_KIND",
            "STELLWERK_RATE_LIMITS_COMMANDS_PER_SECOND",
            "STELLWERK_RATE_LIMITS_API_PUBLISHES_BURST",
        ] {
            assert!(vars.iter().any(|v| v == expected), "{expected} missing");
        }
        // Every variable the schema lists is accepted by `load` (values typed by default).
        let sample: Vec<(String, String)> = vars
            .iter()
            .map(|var| {
                let value = match var.as_str() {
                    "STELLWERK_LISTEN" | "STELLWERK_ADMIN_LISTEN" => "127.0.0.1:0",
                    "STELLWERK_ALLOW_ANONYMOUS"
                    | "STELLWERK_PLUGINS_WATCH"
                    | "STELLWERK_PLUGINS_COMPILE_CACHE" => "true",
                    "STELLWERK_ENGINE_KIND" => "redis",
                    "STELLWERK_ENGINE_REDIS_URL" => "redis://127.0.0.1:6379/",
                    "STELLWERK_JWT_PUBLIC_KEY_FILE" => "/keys/pub.pem",
                    "STELLWERK_JWT_LEEWAY_SECONDS" => "60",
                    "STELLWERK_ADMIN_TOKEN" => "admin",
                    "STELLWERK_ALLOWED_ORIGINS" => "https://a.example, https://b.example",
                    v if v.ends_with("_KEY") || v.ends_with("_TOKEN") || v.ends_with("_DIR") => "x",
                    _ => "4096",
                };
                (var.clone(), value.to_owned())
            })
            .filter(|(var, _)| var != "STELLWERK_JWT_SECRET" && var != "STELLWERK_JWT_KEYS")
            .collect();
        let config = Config::load(None, sample).unwrap();
        assert_eq!(config.sse.retry_ms, 4096);
        assert_eq!(config.limits.max_subscriptions_per_connection, 4096);
        assert_eq!(
            config.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn rate_limits_are_on_by_default_and_zero_turns_one_off() {
        let defaults = Config::default().rate_limits;
        for rate in [
            defaults.commands_per_second,
            defaults.publishes_per_second,
            defaults.subscriptions_per_second,
            defaults.api_publishes_per_second,
        ] {
            assert!(rate > 0, "{defaults:?}");
        }
        let config = load_env(&[
            ("STELLWERK_RATE_LIMITS_PUBLISHES_PER_SECOND", "0"),
            ("STELLWERK_RATE_LIMITS_SUBSCRIPTIONS_BURST", "7"),
        ])
        .unwrap();
        assert_eq!(config.rate_limits.publishes_per_second, 0);
        assert_eq!(config.rate_limits.subscriptions_burst, 7);
        // A burst of 0 is fine for a limit that is off, an error for one that is on.
        load_env(&[
            ("STELLWERK_RATE_LIMITS_PUBLISHES_PER_SECOND", "0"),
            ("STELLWERK_RATE_LIMITS_PUBLISHES_BURST", "0"),
        ])
        .unwrap();
        let message = load_env(&[("STELLWERK_RATE_LIMITS_PUBLISHES_BURST", "0")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "STELLWERK_RATE_LIMITS_PUBLISHES_BURST: rate_limits.publishes_burst must be at \
             least 1 while its rate is on (a rate of 0 turns a limit off)"
        );
        let file = TempFile::new("[rate_limits]\ncommands_per_second = -1\n");
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 2: rate_limits.commands_per_second"),
            "{message}"
        );
    }

    #[test]
    fn fill_dev_secrets_generates_only_what_is_missing() {
        let mut config = Config::default();
        let lines = config.fill_dev_secrets();
        let api_key = config.api_key.clone().unwrap();
        let secret = config.jwt.secret.clone().unwrap();
        assert_eq!(api_key.len(), 64);
        assert_ne!(api_key, secret);
        assert_eq!(config.admin_token, None);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("DEV ONLY") && lines[0].contains(&api_key));
        assert!(lines[1].contains("DEV ONLY") && lines[1].contains(&secret));
        assert!(lines[2].contains("admin API is disabled"));
        config.validate().unwrap();

        let mut configured = Config {
            api_key: Some("php-key".into()),
            admin_token: Some("admin".into()),
            jwt: JwtConfig {
                public_key_file: Some("/keys/pub.pem".into()),
                ..JwtConfig::default()
            },
            ..Config::default()
        };
        let before = configured.clone();
        assert!(configured.fill_dev_secrets().is_empty());
        assert_eq!(configured, before);
    }

    #[test]
    fn summary_and_debug_never_show_secrets() {
        let config = Config {
            api_key: Some("php-key-secret".into()),
            admin_token: Some("admin-token-secret".into()),
            cursor_secret: Some("cursor-secret-secret".into()),
            jwt: JwtConfig {
                secret: Some("jwt-secret-secret".into()),
                keys: vec![JwtKeyConfig {
                    kid: "k1".into(),
                    secret: Some("kid-secret-secret".into()),
                    public_key_file: None,
                }],
                ..JwtConfig::default()
            },
            ..Config::default()
        };
        let summary = config.summary();
        assert!(summary.contains("127.0.0.1:8080"), "{summary}");
        assert!(summary.contains("engine memory"), "{summary}");
        assert!(summary.contains("./plugins"), "{summary}");
        assert!(summary.contains("anonymous off"), "{summary}");
        assert!(summary.contains("hs256 secret"), "{summary}");
        assert!(!summary.contains('\n'));
        let debug = format!("{config:?}");
        for text in [&summary, &debug] {
            assert!(!text.contains("-secret"), "{text}");
        }
    }

    #[test]
    fn a_config_file_without_an_api_key_or_jwt_key_is_refused() {
        let file = TempFile::new(&format!("[jwt]\nsecret = \"{JWT_SECRET}\"\n"));
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(&format!("{}: api_key is not set", file.0.display())),
            "{message}"
        );
        assert!(message.contains("openssl rand -hex 32"), "{message}");

        let file = TempFile::new(&format!("api_key = \"{API_KEY}\"\n"));
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(message.contains("jwt.secret is not set"), "{message}");
        assert!(!message.contains('\n'), "{message}");

        // The environment may supply them; a key list or a public key file counts as well.
        let file = TempFile::new("[limits]\nqueue_capacity = 8\n");
        let config = Config::load(
            Some(&file.0),
            env(&[
                ("STELLWERK_API_KEY", API_KEY),
                ("STELLWERK_JWT_PUBLIC_KEY_FILE", "/keys/pub.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(config.limits.queue_capacity, 8);
        let file = TempFile::new(&format!(
            "api_key = \"{API_KEY}\"\n[[jwt.keys]]\nkid = \"k1\"\nsecret = \"{JWT_SECRET}\"\n"
        ));
        let config = Config::load(Some(&file.0), Vec::new()).unwrap();
        assert_eq!(config.jwt.keys[0].kid, "k1");
    }

    #[test]
    fn without_a_config_file_missing_secrets_are_left_to_the_dev_fill() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config.api_key, None);
        assert!(!config.has_jwt_key());
    }

    #[test]
    fn short_secrets_in_a_config_file_are_refused_with_the_command_that_makes_one() {
        type Case = (&'static str, String, Vec<(&'static str, &'static str)>);
        let short = "too-short-secret";
        let cases: [Case; 6] = [
            (
                "api_key",
                format!("api_key = \"{short}\"\n[jwt]\nsecret = \"{JWT_SECRET}\"\n"),
                vec![],
            ),
            (
                "jwt.secret",
                format!("api_key = \"{API_KEY}\"\n[jwt]\nsecret = \"{short}\"\n"),
                vec![],
            ),
            (
                "admin_token",
                format!("admin_token = \"{short}\"\n{}", secrets_toml()),
                vec![],
            ),
            (
                "cursor_secret",
                format!("cursor_secret = \"{short}\"\n{}", secrets_toml()),
                vec![],
            ),
            (
                "jwt.keys secret of kid `k2`",
                format!(
                    "{}[[jwt.keys]]\nkid = \"k2\"\nsecret = \"{short}\"\n",
                    secrets_toml()
                ),
                vec![],
            ),
            (
                "api_key",
                secrets_toml(),
                vec![("STELLWERK_API_KEY", short)],
            ),
        ];
        for (name, contents, vars) in cases {
            let file = TempFile::new(&contents);
            let message = Config::load(Some(&file.0), env(&vars))
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(&format!(
                    "{name} is 16 bytes long; at least 32 are required"
                )),
                "{name}: {message}"
            );
            assert!(message.contains("`openssl rand -hex 32`"), "{message}");
            assert!(
                !message.contains(short),
                "the secret itself is not shown: {message}"
            );
            let origin = vars
                .first()
                .map_or(file.0.display().to_string(), |(v, _)| v.to_string());
            assert!(message.starts_with(&format!("{origin}: ")), "{message}");
        }
    }

    #[test]
    fn short_secrets_on_the_embedded_default_are_only_warned_about() {
        let config = load_env(&[
            ("STELLWERK_API_KEY", "devkey"),
            ("STELLWERK_JWT_SECRET", "devsecret"),
        ])
        .unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("api_key is 6 bytes long"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("jwt.secret is 9 bytes long"),
            "{warnings:?}"
        );
        assert!(warnings.iter().all(|w| w.contains("openssl rand -hex 32")));
        assert!(warnings
            .iter()
            .all(|w| !w.contains("devkey") && !w.contains("devsecret")));
        assert!(Config::default().warnings().is_empty());
    }

    #[test]
    fn the_admin_token_must_differ_from_the_api_key() {
        let message = load_env(&[
            ("STELLWERK_API_KEY", API_KEY),
            ("STELLWERK_ADMIN_TOKEN", API_KEY),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("admin_token and api_key are the same"),
            "{message}"
        );
        assert!(message.contains("STELLWERK_ADMIN_TOKEN"), "{message}");
        assert!(!message.contains(API_KEY), "{message}");
    }

    #[test]
    fn allowed_origins_from_file_and_environment_are_checked() {
        let file = TempFile::new(&format!(
            "allowed_origins = [\"https://studip.example.org\", \"http://[::1]:8000\"]\n{}",
            secrets_toml()
        ));
        let config = Config::load(Some(&file.0), Vec::new()).unwrap();
        assert_eq!(
            config.allowed_origins,
            ["https://studip.example.org", "http://[::1]:8000"]
        );
        let config = load_env(&[(
            "STELLWERK_ALLOWED_ORIGINS",
            "https://a.example:8443,, https://b.example ",
        )])
        .unwrap();
        assert_eq!(
            config.allowed_origins,
            ["https://a.example:8443", "https://b.example"]
        );
        for bad in [
            "https://studip.example.org/",
            "https://studip.example.org/path",
            "studip.example.org",
            "ftp://studip.example.org",
            "https://host:port",
            "*",
            "null",
        ] {
            let message = load_env(&[("STELLWERK_ALLOWED_ORIGINS", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                message.starts_with("STELLWERK_ALLOWED_ORIGINS: allowed_origins entry"),
                "{bad}: {message}"
            );
        }
        let message = load_env(&[("STELLWERK_ALLOWED_ORIGINS", " , ")])
            .unwrap_err()
            .to_string();
        assert!(message.contains("empty list"), "{message}");
    }

    #[test]
    fn any_origin_on_a_public_listener_is_warned_about() {
        let public = load_env(&[("STELLWERK_LISTEN", "0.0.0.0:8080")]).unwrap();
        let warnings = public.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("allowed_origins is empty"),
            "{warnings:?}"
        );
        let listed = load_env(&[
            ("STELLWERK_LISTEN", "0.0.0.0:8080"),
            ("STELLWERK_ALLOWED_ORIGINS", "https://studip.example.org"),
        ])
        .unwrap();
        assert!(listed.warnings().is_empty());
        assert!(Config::default().warnings().is_empty(), "loopback");
    }

    #[test]
    fn jwt_key_lists_come_from_the_file_and_are_checked() {
        let file = TempFile::new(&format!(
            "api_key = \"{API_KEY}\"\n[jwt]\naudience = \"stellwerk\"\nissuer = \"studip\"\n\
             [[jwt.keys]]\nkid = \"2026-01\"\nsecret = \"{JWT_SECRET}\"\n\
             [[jwt.keys]]\nkid = \"2026-02\"\npublic_key_file = \"/keys/2026-02.pem\"\n"
        ));
        let config = Config::load(Some(&file.0), Vec::new()).unwrap();
        assert_eq!(config.jwt.audience.as_deref(), Some("stellwerk"));
        assert_eq!(config.jwt.issuer.as_deref(), Some("studip"));
        assert_eq!(config.jwt.keys.len(), 2);
        assert_eq!(
            config.jwt.keys[1].public_key_file.as_deref(),
            Some(Path::new("/keys/2026-02.pem"))
        );
        let message = load_env(&[("STELLWERK_JWT_KEYS", "k1")])
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("STELLWERK_JWT_KEYS: jwt.keys is a list of tables"),
            "{message}"
        );
        for (entries, expected) in [
            ("kid = \"a\"\n", "needs a secret or a public_key_file"),
            ("kid = \"\"\nsecret = \"s\"\n", "empty kid"),
            (
                "kid = \"a\"\nsecret = \"s\"\npublic_key_file = \"/k.pem\"\n",
                "both secret and public_key_file",
            ),
        ] {
            let file = TempFile::new(&format!("[[jwt.keys]]\n{entries}"));
            let message = Config::load(Some(&file.0), Vec::new())
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{message}");
        }
        let file = TempFile::new(
            "[[jwt.keys]]\nkid = \"a\"\nsecret = \"s\"\n[[jwt.keys]]\nkid = \"a\"\nsecret = \"t\"\n",
        );
        let message = Config::load(Some(&file.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(message.contains("kid `a` is listed twice"), "{message}");
        let message = load_env(&[("STELLWERK_JWT_AUDIENCE", "")])
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("STELLWERK_JWT_AUDIENCE: "), "{message}");
    }

    #[test]
    fn the_compile_cache_lives_under_the_users_cache_directory_unless_configured() {
        use std::ffi::OsString;
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let plugins = PluginsConfig::default();
        assert_eq!(
            plugins.compile_cache_dir_from(env(&[
                ("XDG_CACHE_HOME", "/var/cache/x"),
                ("HOME", "/home/a")
            ])),
            Some(PathBuf::from("/var/cache/x/stellwerk"))
        );
        assert_eq!(
            plugins.compile_cache_dir_from(env(&[("XDG_CACHE_HOME", ""), ("HOME", "/home/a")])),
            Some(PathBuf::from("/home/a/.cache/stellwerk"))
        );
        // A service without HOME: no cache rather than one in the working directory.
        assert_eq!(plugins.compile_cache_dir_from(env(&[])), None);

        let configured = PluginsConfig {
            compile_cache_dir: Some(PathBuf::from("cache")),
            ..PluginsConfig::default()
        };
        assert_eq!(
            configured.compile_cache_dir_from(env(&[("HOME", "/home/a")])),
            Some(std::env::current_dir().unwrap().join("cache"))
        );
        let off = PluginsConfig {
            compile_cache: false,
            ..configured
        };
        assert_eq!(
            off.compile_cache_dir_from(env(&[("HOME", "/home/a")])),
            None
        );
    }
}
