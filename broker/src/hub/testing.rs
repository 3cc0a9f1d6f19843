//! What the hub's unit tests share: a hub over the real example plugins
//! (`target/plugins/*.wasm`, built by `cargo xtask build-plugins`) and the
//! memory engine, identities, and helpers to publish and read queues.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::sync::Weak;

use super::*;
use crate::engine::{Engine, HistoryPolicy, Sink};
use crate::engine::{Lifetimes, MemoryEngine};
use crate::plugins::{LiveRegistry, PublishSource};
use crate::plugins::{PluginLimits, Registry};

/// A hub over a directory holding `public.wasm` and `course.wasm`; the
/// directory is removed when the returned guard drops.
pub(super) fn hub(queue_capacity: usize, queue_max_bytes: usize) -> (Hub, TempDir) {
    capped_hub(queue_capacity, queue_max_bytes, usize::MAX, usize::MAX)
}

/// [`hub`] with connection caps.
pub(super) fn capped_hub(
    queue_capacity: usize,
    queue_max_bytes: usize,
    max_connections: usize,
    max_connections_per_user: usize,
) -> (Hub, TempDir) {
    let limits = HubLimits {
        queue_capacity,
        queue_max_bytes,
        max_subscriptions: 16,
        max_history: HistoryPolicy {
            size: 100,
            ttl: Duration::from_secs(60),
        },
        max_connections,
        max_connections_per_user,
    };
    hub_with(limits, |sink| {
        let lifetimes = Lifetimes {
            channel_idle: Duration::from_secs(60),
            max_history_bytes: u64::MAX,
            node_timeout: Duration::from_secs(1),
        };
        Arc::new(MemoryEngine::new(sink, lifetimes)) as Arc<dyn Engine>
    })
}

/// A hub with `limits` over the example plugins and the engine `engine` builds.
pub(super) fn hub_with(
    limits: HubLimits,
    engine: impl FnOnce(Weak<dyn Sink>) -> Arc<dyn Engine>,
) -> (Hub, TempDir) {
    let dir = TempDir::new();
    for plugin in ["public", "course"] {
        let built =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/plugins/{plugin}.wasm"));
        assert!(
            built.is_file(),
            "{} is missing: run `cargo xtask build-plugins` first",
            built.display()
        );
        std::fs::copy(&built, dir.0.join(format!("{plugin}.wasm"))).unwrap();
    }
    let registry = Registry::load_dir(&dir.0, PluginLimits::default()).unwrap();
    let hub = Hub::new(Arc::new(LiveRegistry::new(registry)), limits, engine);
    (hub, dir)
}

/// The default limits of [`hub`].
pub(super) fn limits() -> HubLimits {
    HubLimits {
        queue_capacity: 64,
        queue_max_bytes: usize::MAX,
        max_subscriptions: 16,
        max_history: HistoryPolicy {
            size: 100,
            ttl: Duration::from_secs(60),
        },
        max_connections: usize::MAX,
        max_connections_per_user: usize::MAX,
    }
}

pub(super) const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";

/// `course:<COURSE>:<topic>`.
pub(super) fn course(topic: &str) -> ChannelName {
    ChannelName::parse(&format!("course:{COURSE}:{topic}")).unwrap()
}

/// A user with `status` in [`COURSE`] (global perm `autor`).
pub(super) fn member(user: &str, status: &str) -> Identity {
    with_claims(
        user,
        &serde_json::json!({ "sub": user, "perm": "autor", "courses": { COURSE: status } }),
    )
}

pub(super) fn with_claims(user: &str, claims: &serde_json::Value) -> Identity {
    Identity {
        user: user.to_owned(),
        claims_json: claims.to_string().into(),
        expires_at: u64::MAX,
    }
}

pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "stellwerk-hub-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn identity(user: &str) -> Identity {
    Identity {
        user: user.to_owned(),
        claims_json: serde_json::json!({ "sub": user }).to_string().into(),
        expires_at: u64::MAX,
    }
}

pub(super) fn news() -> ChannelName {
    ChannelName::parse("public:news").unwrap()
}

/// Publishes and waits until the fan-out has run.
pub(super) async fn publish(hub: &Hub, data: &str) {
    hub.publish(&[news()], data, PublishSource::Http, None)
        .await
        .unwrap();
    hub.settled().await;
}

pub(super) fn drained(queue: &mut Queue) -> usize {
    std::iter::from_fn(|| queue.try_recv()).count()
}
