//! Wires config, auth, plugins, engine, hub and transports together and
//! serves until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{ApiKey, AuthError, TokenVerifier};
use crate::config::{Config, EngineKind};
use crate::engine::{Engine, HistoryPolicy, Lifetimes, MemoryEngine, RedisEngine};
use crate::hub::{Hub, HubLimits};
use crate::listener::{self, Timeouts};
use crate::plugins::{LiveRegistry, PluginError, PluginLimits, Registry};
use crate::rate::RateLimits;
use crate::reload::Reloader;
use crate::{api, plugins, transport};

/// Why the server could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no API key configured (set api_key or STELLWERK_API_KEY)")]
    MissingApiKey,
    #[error("token verification: {0}")]
    Auth(#[from] AuthError),
    /// A plugin failed to load (the message names the file and why).
    #[error("plugins: {0}")]
    Plugins(String),
    /// The engine's store could not be reached at start (Redis).
    #[error("{0}")]
    Engine(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// What every request handler can reach: one pointer, cloned into every
/// connection's task (a copy of the fields would be 96 bytes per connection).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) config: Arc<Config>,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) api_key: Arc<ApiKey>,
    /// Hot reload of the plugins (the watcher and `/admin/plugins`).
    pub(crate) plugins: Reloader,
    /// The configured rates, the API key's bucket, refusal counts.
    pub(crate) rate: Arc<RateLimits>,
    /// Flips to `true` once shutdown begins; sessions close with 1001.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Random per process, so that client ids are unique across restarts and nodes.
    node: Arc<str>,
    /// When the server started serving, for `uptime_seconds` in `GET /api/info`.
    pub(crate) started: std::time::Instant,
}

impl Shared {
    /// The `client` id reported in `connected`.
    pub(crate) fn client_id(&self, connection: u64) -> String {
        format!("{}-{connection}", self.node)
    }
}

/// Pending connections the kernel queues for us (it caps this at
/// `net.core.somaxconn`). Above tokio's 1,024 so that thousands of browsers
/// reconnecting at once after a network blip are not made to retry their
/// handshake a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`,
/// so that a restart does not wait for old connections in `TIME_WAIT`).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Loads the plugins, then serves on `listener` until `shutdown` resolves.
///
/// `config` must be complete: dev secrets are filled in by the caller (the
/// binary does it, so that it can log them).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let api_key = config.api_key.clone().ok_or(ServeError::MissingApiKey)?;
    let verifier = TokenVerifier::from_config(&config.jwt)?;
    let limits = PluginLimits {
        call_timeout: Duration::from_millis(config.plugins.call_timeout_ms),
        memory_limit_bytes: usize::try_from(config.plugins.memory_limit_bytes)
            .unwrap_or(usize::MAX),
        max_output_bytes: usize::try_from(config.plugins.max_output_bytes).unwrap_or(usize::MAX),
        pool_size: config.plugins.pool_size,
        instance_slots: config.plugins.instance_slots,
    };
    use_compile_cache(&config.plugins)?;
    let dir = config.plugins.dir.clone();
    // Compiling components is CPU-heavy and blocking: keep it off the reactor.
    let registry = tokio::task::spawn_blocking(move || Registry::load_dir(&dir, limits))
        .await
        .map_err(|e| std::io::Error::other(format!("plugin loader panicked: {e}")))?
        .map_err(|e: PluginError| ServeError::Plugins(plugins::one_line(&e)))?;
    let lifetimes = Lifetimes {
        channel_idle: Duration::from_secs(config.engine.channel_idle_seconds),
        max_history_bytes: config.engine.max_history_bytes,
        node_timeout: Duration::from_secs(config.engine.node_timeout_seconds),
    };
    let redis = match (&config.engine.kind, &config.engine.redis_url) {
        (EngineKind::Redis, Some(url)) => Some(
            RedisEngine::connect(url, lifetimes)
                .await
                .map_err(|e| ServeError::Engine(e.to_string()))?,
        ),
        _ => None,
    };
    let hub = Hub::new(
        Arc::new(LiveRegistry::new(registry)),
        HubLimits {
            queue_capacity: config.limits.queue_capacity,
            queue_max_bytes: config.limits.queue_max_bytes,
            max_subscriptions: config.limits.max_subscriptions_per_connection,
            max_history: HistoryPolicy {
                size: config.engine.max_history_size as usize,
                ttl: Duration::from_secs(config.engine.max_history_age_seconds),
            },
            max_connections: config.limits.max_connections,
            max_connections_per_user: config.limits.max_connections_per_user,
        },
        |sink| -> Arc<dyn Engine> {
            match redis {
                Some(connected) => connected.start(sink),
                None => MemoryEngine::start(sink, lifetimes),
            }
        },
    );
    let plugins = Reloader::new(config.plugins.dir.clone(), limits, hub.clone());
    // Held until the server stops: dropping it ends the watch.
    let _watcher = if config.plugins.watch {
        crate::reload::watch(plugins.clone())
            .map_err(|e| {
                tracing::warn!(
                    dir = %config.plugins.dir.display(),
                    "cannot watch the plugin directory, reload with POST /admin/plugins/reload: {e}"
                );
            })
            .ok()
    } else {
        None
    };
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(listen(addr)?),
        None => None,
    };
    let timeouts = Timeouts {
        header_read: Duration::from_secs(config.http.header_read_timeout_seconds),
        write: Duration::from_secs(config.websocket.write_timeout_seconds),
    };
    let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_seconds);
    let (stop, stopped) = watch::channel(false);
    let app = AppState(Arc::new(Shared {
        plugins,
        rate: Arc::new(RateLimits::new(&config.rate_limits)),
        hub: hub.clone(),
        config: Arc::new(config),
        verifier: Arc::new(verifier),
        api_key: Arc::new(ApiKey::new(api_key)),
        shutdown: stopped.clone(),
        node: Arc::from(format!("{:08x}", rand::random::<u32>())),
        started: std::time::Instant::now(),
    }));
    let origins = transport::origin::AllowedOrigins::new(&app.config.allowed_origins);
    // The browser-facing routes: `Origin` checked, CORS headers on the way out.
    let router = Router::new()
        .route("/ws", get(transport::ws::upgrade))
        .route(
            "/sse",
            get(transport::sse::stream).options(transport::origin::preflight),
        )
        .route_layer(middleware::from_fn_with_state(
            origins,
            transport::origin::guard,
        ))
        .route("/api/publish", post(api::publish))
        .route("/api/channels", get(api::channels))
        .route("/api/channels/{channel}/presence", get(api::presence))
        .route("/api/channels/{channel}/history", get(api::history))
        .route("/api/users/{user}/disconnect", post(api::disconnect))
        .route("/api/info", get(api::info))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz));
    // The admin API and `/metrics` live on the admin listener if there is one.
    let admin = Router::new()
        .route("/admin/plugins", get(api::admin::list))
        .route("/admin/plugins/reload", post(api::admin::reload_all))
        .route("/admin/plugins/{name}/reload", post(api::admin::reload))
        .route(
            "/admin/plugins/{name}",
            put(api::admin::upload).delete(api::admin::remove),
        );
    let (router, admin_router) = match admin_listener {
        Some(listener) => {
            let admin = admin
                .route("/metrics", get(api::open_metrics))
                .with_state(app.clone());
            (router.with_state(app), Some((listener, admin)))
        }
        None => (
            router
                .merge(admin)
                .route("/metrics", get(api::metrics))
                .with_state(app),
            None,
        ),
    };

    let logged = |router: Router| router.layer(middleware::from_fn(crate::request_log::log));
    let router = logged(router);
    let admin_router = admin_router.map(|(listener, admin)| (listener, logged(admin)));
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let public = tokio::spawn(listener::serve(listener, router, timeouts, stopped.clone()));
    let admin = match admin_router {
        Some((listener, router)) => {
            // Worded so that it is not mistaken for the public "listening on" line.
            tracing::info!(
                "admin API and /metrics on http://{}",
                listener.local_addr()?
            );
            Some(tokio::spawn(listener::serve(
                listener, router, timeouts, stopped,
            )))
        }
        None => None,
    };

    shutdown.await;
    tracing::info!(
        "shutting down: no new connections; open ones get {} s to finish",
        shutdown_timeout.as_secs()
    );
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    // Sessions send `disconnect` (1001) on this; idle HTTP connections close.
    let _ = stop.send(true);
    let mut dropped = 0;
    for server in std::iter::once(public).chain(admin) {
        let remaining = server
            .await
            .map_err(|e| std::io::Error::other(format!("accept loop failed: {e}")))?;
        dropped += remaining.finish_by(deadline).await;
    }
    // Upgraded WebSockets have left the HTTP server: wait for their sessions.
    while hub.open_streams() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let streams = hub.open_streams();
    if dropped + streams > 0 {
        tracing::warn!(
            "shutdown timeout: dropping {dropped} HTTP connection(s) and {streams} \
             WebSocket/SSE stream(s) that did not finish"
        );
    }
    Ok(())
}

/// Points the plugin runtime at the compile cache. A directory that was
/// configured and cannot be created stops the start; the default one only
/// warns, and plugins are then compiled at every start.
fn use_compile_cache(config: &crate::config::PluginsConfig) -> Result<(), ServeError> {
    let Some(dir) = config.compile_cache_dir() else {
        if config.compile_cache {
            tracing::warn!("no directory for the plugin compile cache (set plugins.compile_cache_dir, or HOME); plugins are compiled at every start");
        } else {
            tracing::info!("plugin compile cache off: plugins are compiled at every start");
        }
        return Ok(());
    };
    // Only the broker's user may write native code it will run: a directory it creates is
    // 0700; one that others may write to is used, with a warning.
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let created = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    if let Err(e) = created {
        let what = format!("cannot create the compile cache {}: {e}", dir.display());
        if config.compile_cache_dir.is_some() {
            return Err(ServeError::Plugins(what));
        }
        tracing::warn!("{what}; plugins are compiled at every start");
        return Ok(());
    }
    if let Ok(meta) = std::fs::metadata(&dir) {
        if meta.permissions().mode() & 0o022 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "the plugin compile cache is writable by other users: whoever can write there can run code as the broker (chmod go-w, or set plugins.compile_cache = false)"
            );
        }
    }
    tracing::info!(dir = %dir.display(), "plugin compile cache");
    plugins::use_compile_cache(dir);
    Ok(())
}
