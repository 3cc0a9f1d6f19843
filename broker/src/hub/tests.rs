//! Cutting a connection off, against the real `public` plugin and the
//! memory engine: deregistered at once, nothing queued after the cut.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::engine::{Lifetimes, MemoryEngine};
use crate::plugins::{PluginLimits, Registry};

/// A hub over a directory holding only `public.wasm`; the directory is
/// removed when the returned guard drops.
fn hub(queue_capacity: usize, queue_max_bytes: usize) -> (Hub, TempDir) {
    capped_hub(queue_capacity, queue_max_bytes, usize::MAX, usize::MAX)
}

/// [`hub`] with connection caps.
fn capped_hub(
    queue_capacity: usize,
    queue_max_bytes: usize,
    max_connections: usize,
    max_connections_per_user: usize,
) -> (Hub, TempDir) {
    let public = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/public.wasm");
    assert!(
        public.is_file(),
        "{} is missing: run `cargo xtask build-plugins` first",
        public.display()
    );
    let dir = TempDir::new();
    std::fs::copy(&public, dir.0.join("public.wasm")).unwrap();
    let registry = Registry::load_dir(&dir.0, PluginLimits::default()).unwrap();
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
    let hub = Hub::new(Arc::new(LiveRegistry::new(registry)), limits, |sink| {
        let lifetimes = Lifetimes {
            channel_idle: Duration::from_secs(60),
            max_history_bytes: u64::MAX,
            node_timeout: Duration::from_secs(1),
        };
        Arc::new(MemoryEngine::new(sink, lifetimes)) as Arc<dyn Engine>
    });
    (hub, dir)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
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

fn identity(user: &str) -> Identity {
    Identity {
        user: user.to_owned(),
        claims_json: serde_json::json!({ "sub": user }).to_string().into(),
        expires_at: u64::MAX,
    }
}

fn news() -> ChannelName {
    ChannelName::parse("public:news").unwrap()
}

/// Publishes and waits until the fan-out has run.
async fn publish(hub: &Hub, data: &str) {
    hub.publish(&[news()], data, PublishSource::Http, None)
        .await
        .unwrap();
    hub.settled().await;
}

fn drained(queue: &mut Queue) -> usize {
    std::iter::from_fn(|| queue.try_recv()).count()
}

#[tokio::test]
async fn a_full_queue_detaches_the_connection_at_once() {
    let (hub, _dir) = hub(4, usize::MAX);
    let (stalled, mut stalled_queue) = hub.register(Some(identity("ann"))).unwrap();
    let (reader, mut reader_queue) = hub.register(Some(identity("bob"))).unwrap();
    hub.subscribe(&stalled, &news()).await.unwrap();
    hub.subscribe(&reader, &news()).await.unwrap();
    for n in 0..10 {
        publish(&hub, &format!(r#"{{"n":{n}}}"#)).await;
        assert!(reader_queue.try_recv().is_some(), "the reader gets #{n}");
    }
    assert_eq!(stalled.cut_reason(), Some(CutOff::SlowConsumer));
    // Deregistered while its transport has not even looked: no channel
    // counts it, and nothing after the overflow was queued.
    assert_eq!(hub.channels("public:").await.unwrap(), vec![(news(), 1)]);
    assert!(lock(&stalled.channels).is_empty());
    assert_eq!(drained(&mut stalled_queue), 4);
    assert_eq!(hub.stats().cut_offs, 1);
    // Its transport's drop later changes nothing for the others.
    drop(stalled);
    publish(&hub, "{}").await;
    assert_eq!(drained(&mut reader_queue), 1);
}

#[tokio::test]
async fn unsubscribing_drops_what_is_still_queued_for_the_channel_only() {
    let (hub, _dir) = hub(16, usize::MAX);
    let (conn, mut queue) = hub.register(Some(identity("ann"))).unwrap();
    let other = ChannelName::parse("public:other").unwrap();
    hub.subscribe(&conn, &news()).await.unwrap();
    hub.subscribe(&conn, &other).await.unwrap();
    // Queued, not yet taken off by the transport (a fan-out that raced the
    // unsubscribe looks the same to the queue).
    publish(&hub, r#"{"n":1}"#).await;
    hub.publish(
        std::slice::from_ref(&other),
        r#"{"n":2}"#,
        PublishSource::Http,
        None,
    )
    .await
    .unwrap();
    hub.settled().await;
    publish(&hub, r#"{"n":3}"#).await;
    hub.unsubscribe(&conn, &news());
    let left: Vec<_> = std::iter::from_fn(|| queue.try_recv()).collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].channel, other);
    assert_eq!(conn.pushes.bytes(), 0);
    // And nothing new arrives for it.
    publish(&hub, r#"{"n":4}"#).await;
    assert_eq!(drained(&mut queue), 0);
}

#[tokio::test]
async fn the_byte_bound_cuts_off_like_the_count_and_is_released_on_receipt() {
    let (hub, _dir) = hub(1024, 2000);
    let (conn, mut queue) = hub.register(Some(identity("ann"))).unwrap();
    hub.subscribe(&conn, &news()).await.unwrap();
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(800));
    // Taken off as it comes: the bytes are released, no cut-off.
    for _ in 0..10 {
        publish(&hub, &big).await;
        assert!(queue.try_recv().is_some());
    }
    assert_eq!(conn.cut_reason(), None);
    assert_eq!(conn.pushes.bytes(), 0);
    // Not taken off: two fit (about 1.8 KB), the third overflows 2000 bytes.
    for _ in 0..3 {
        publish(&hub, &big).await;
    }
    assert_eq!(conn.cut_reason(), Some(CutOff::SlowConsumer));
    assert!(hub.channels("public:").await.unwrap().is_empty());
    assert_eq!(drained(&mut queue), 2);
}

#[tokio::test]
async fn one_push_larger_than_the_byte_bound_fits_an_empty_queue() {
    let (hub, _dir) = hub(1024, 100);
    let (conn, mut queue) = hub.register(Some(identity("ann"))).unwrap();
    hub.subscribe(&conn, &news()).await.unwrap();
    publish(&hub, &format!(r#"{{"pad":"{}"}}"#, "x".repeat(500))).await;
    assert_eq!(conn.cut_reason(), None);
    assert_eq!(drained(&mut queue), 1);
}

#[tokio::test]
async fn disconnecting_a_user_detaches_every_connection_and_refuses_later_subscribes() {
    let (hub, _dir) = hub(16, usize::MAX);
    let (tab1, mut queue1) = hub.register(Some(identity("ann"))).unwrap();
    let (tab2, _queue2) = hub.register(Some(identity("ann"))).unwrap();
    let (other, mut other_queue) = hub.register(Some(identity("bob"))).unwrap();
    for connection in [&tab1, &tab2, &other] {
        hub.subscribe(connection, &news()).await.unwrap();
    }
    assert_eq!(hub.disconnect_user("ann").await.unwrap(), 2);
    assert_eq!(tab1.cut_reason(), Some(CutOff::Disconnected));
    assert_eq!(hub.channels("public:").await.unwrap(), vec![(news(), 1)]);
    assert_eq!(hub.stats().cut_offs, 0, "a disconnect is no slow consumer");

    publish(&hub, "{}").await;
    assert_eq!(drained(&mut queue1), 0, "nothing queued after the cut");
    assert_eq!(drained(&mut other_queue), 1);

    let channel = ChannelName::parse("public:later").unwrap();
    let refusal = hub.subscribe(&tab1, &channel).await.unwrap_err();
    assert_eq!(refusal.code, ErrorCode::Forbidden, "{}", refusal.message);
    assert_eq!(hub.channels("public:later").await.unwrap(), vec![]);
}

#[tokio::test]
async fn the_global_cap_counts_admissions_and_frees_them_on_drop() {
    let (hub, _dir) = capped_hub(16, usize::MAX, 2, usize::MAX);
    let first = hub.admit().unwrap();
    let _second = hub.admit().unwrap();
    assert_eq!(hub.admit().unwrap_err(), Refused::NodeFull { max: 2 });
    assert_eq!(hub.open_streams(), 2);
    drop(first);
    let _third = hub.admit().unwrap();
    assert_eq!(hub.stats().refused_node_full, 1);
    assert_eq!(
        hub.admit().unwrap_err().refusal().code,
        ErrorCode::Unavailable
    );
}

#[tokio::test]
async fn the_per_user_cap_is_per_user_and_freed_when_a_connection_goes() {
    let (hub, _dir) = capped_hub(16, usize::MAX, usize::MAX, 2);
    let (tab1, _q1) = hub.register(Some(identity("ann"))).unwrap();
    let (_tab2, _q2) = hub.register(Some(identity("ann"))).unwrap();
    assert!(hub.check_user("ann").is_err());
    let refused = hub.register(Some(identity("ann"))).unwrap_err();
    assert_eq!(refused, Refused::UserFull { max: 2 });
    assert_eq!(refused.refusal().code, ErrorCode::RateLimited);
    // Other users and anonymous connections are not counted against ann.
    assert!(hub.check_user("bob").is_ok());
    let (_bob, _qb) = hub.register(Some(identity("bob"))).unwrap();
    for _ in 0..3 {
        let _anonymous = hub.register(None).unwrap();
    }
    drop(tab1);
    assert!(hub.check_user("ann").is_ok());
    let (_tab3, _q3) = hub.register(Some(identity("ann"))).unwrap();
    assert_eq!(hub.stats().refused_user_full, 2);
}
