//! One contract, two engines: every test here runs against the memory engine
//! and against the Redis engine on a real `redis-server` (started on a free
//! port in a temporary directory). What only one engine can do (a Redis
//! outage, two nodes on one store) is tested below the shared part.

use std::net::TcpListener;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use stellwerk_e2e::redis::RedisServer;
use tokio::sync::Notify;

use super::{
    Change, Engine, EngineError, HistoryPolicy, Lifetimes, MemoryEngine, Outgoing, Position,
    PresenceEvent, Publication, Question, RedisEngine, Sink, Stored,
};
use crate::channel::ChannelName;

/// What an engine handed to the hub.
#[derive(Default)]
pub(super) struct Recorder {
    delivered: Mutex<Vec<Publication>>,
    interrupted: Mutex<Vec<Option<ChannelName>>>,
    presence: Mutex<Vec<PresenceEvent>>,
    changed: Notify,
}

impl Sink for Recorder {
    fn deliver(&self, publication: Publication) {
        self.delivered.lock().unwrap().push(publication);
        self.changed.notify_waiters();
    }

    fn interrupted(&self, channel: Option<&ChannelName>) {
        self.interrupted.lock().unwrap().push(channel.cloned());
        self.changed.notify_waiters();
    }

    fn presence(&self, event: PresenceEvent) {
        self.presence.lock().unwrap().push(event);
        self.changed.notify_waiters();
    }

    /// Answers with what was asked, so that a test sees it arrived.
    fn answer(&self, question: &Question) -> serde_json::Value {
        serde_json::to_value(question).unwrap()
    }
}

impl Recorder {
    fn count(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    /// The offsets delivered for `channel` from index `from` on.
    fn offsets(&self, channel: &ChannelName, from: usize) -> Vec<u64> {
        self.delivered.lock().unwrap()[from..]
            .iter()
            .filter(|p| &p.channel == channel)
            .map(|p| p.offset)
            .collect()
    }

    /// Waits (10 s at most) until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if done(self) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    /// The presence changes seen, as `(change, user)`.
    fn changes(&self) -> Vec<(Change, String)> {
        self.presence
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.change, e.user.to_string()))
            .collect()
    }

    fn interruptions(&self) -> Vec<Option<ChannelName>> {
        self.interrupted.lock().unwrap().clone()
    }
}

/// An engine under test with its sink (kept alive here).
pub(super) struct Node {
    pub(super) engine: Arc<dyn Engine>,
    pub(super) sink: Arc<Recorder>,
}

/// Makes nodes of one engine kind.
pub(super) trait Backend {
    async fn node(&self, channel_idle: Duration) -> Node;
}

fn channel(name: &str) -> ChannelName {
    // Unique per run: a shared Redis keeps channels between tests.
    ChannelName::parse(&format!("{name}-{:x}", rand::random::<u32>())).unwrap()
}

fn policy(size: usize) -> HistoryPolicy {
    HistoryPolicy {
        size,
        ttl: Duration::from_secs(60),
    }
}

const IDLE: Duration = Duration::from_secs(30);

async fn publish(
    engine: &dyn Engine,
    channel: &ChannelName,
    data: &str,
    history: HistoryPolicy,
) -> Position {
    let batch = [Outgoing {
        channel: channel.clone(),
        data: Arc::from(data),
        history,
    }];
    engine.publish(&batch).await.unwrap().remove(0)
}

fn offsets(stored: &[Stored]) -> Vec<u64> {
    stored.iter().map(|s| s.offset).collect()
}

// ---- The contract, for any engine. ----

pub(super) async fn offsets_grow_per_channel_and_reach_the_sink_in_order(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let (a, b) = (channel("public:a"), channel("public:b"));
    node.engine.attach(&a, None, policy(10)).await.unwrap();
    node.engine.attach(&b, None, policy(10)).await.unwrap();
    let mut positions = Vec::new();
    for (c, d) in [(&a, "1"), (&a, "2"), (&b, "3"), (&a, "4")] {
        positions.push(publish(&*node.engine, c, d, policy(10)).await.offset);
    }
    assert_eq!(positions, [1, 2, 1, 3]);
    node.sink
        .until("four deliveries", |s| {
            s.offsets(&a, 0).len() == 3 && s.offsets(&b, 0).len() == 1
        })
        .await;
    assert_eq!(node.sink.offsets(&a, 0), [1, 2, 3]);
    let data: Vec<String> = node
        .sink
        .delivered
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.channel == a)
        .map(|p| p.data.to_string())
        .collect();
    assert_eq!(data, ["1", "2", "4"]);
}

pub(super) async fn a_batch_gives_every_channel_its_next_offset(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let (a, b) = (channel("public:a"), channel("public:b"));
    publish(&*node.engine, &a, "0", policy(10)).await;
    let batch: Vec<Outgoing> = [&a, &b]
        .into_iter()
        .map(|c| Outgoing {
            channel: c.clone(),
            data: Arc::from(r#"{"both":true}"#),
            history: policy(10),
        })
        .collect();
    let positions = node.engine.publish(&batch).await.unwrap();
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [2, 1]
    );
    let (_, kept) = node.engine.history(&b, 10, None, policy(10)).await.unwrap();
    assert_eq!(&*kept[0].data, r#"{"both":true}"#);
}

pub(super) async fn attach_sees_the_latest_position(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let a = channel("public:a");
    let fresh = node.engine.attach(&a, None, policy(10)).await.unwrap();
    assert!(fresh.missed.is_none(), "no recovery was asked for");
    assert_eq!(fresh.position.offset, 0);
    let published = publish(&*node.engine, &a, "1", policy(10)).await;
    assert_eq!(
        published.epoch, fresh.position.epoch,
        "the attach fixed the epoch"
    );
    let again = node.engine.attach(&a, None, policy(10)).await.unwrap();
    assert_eq!(again.position, published);
}

pub(super) async fn history_is_capped_and_gives_the_latest_oldest_first(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let a = channel("public:a");
    for i in 1..=10 {
        publish(&*node.engine, &a, &i.to_string(), policy(4)).await;
    }
    let (epoch, kept) = node.engine.history(&a, 100, None, policy(4)).await.unwrap();
    assert_eq!(offsets(&kept), [7, 8, 9, 10]);
    assert_eq!(&*kept[0].data, "7");
    let (same, latest) = node.engine.history(&a, 2, None, policy(4)).await.unwrap();
    assert_eq!((same, offsets(&latest)), (epoch, vec![9, 10]));
    let (_, since) = node
        .engine
        .history(&a, 100, Some(8), policy(4))
        .await
        .unwrap();
    assert_eq!(offsets(&since), [9, 10]);
    // No history kept: the offset still moves on.
    let p = publish(&*node.engine, &a, "x", policy(0)).await;
    assert_eq!(p.offset, 11);
    let (_, none) = node.engine.history(&a, 100, None, policy(0)).await.unwrap();
    assert!(none.is_empty());
}

pub(super) async fn history_expires_with_its_age(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let a = channel("public:a");
    let short = HistoryPolicy {
        size: 10,
        ttl: Duration::from_secs(1),
    };
    publish(&*node.engine, &a, "old", short).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    publish(&*node.engine, &a, "new", short).await;
    let (_, kept) = node.engine.history(&a, 10, None, short).await.unwrap();
    assert_eq!(offsets(&kept), [2], "the first message is past its age");
    let from = Position {
        epoch: node.engine.history(&a, 1, None, short).await.unwrap().0,
        offset: 0,
    };
    let attached = node.engine.attach(&a, Some(&from), short).await.unwrap();
    assert!(
        attached.missed.is_none(),
        "offset 1 is gone: not recoverable"
    );
}

pub(super) async fn recovery_is_all_or_nothing(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let a = channel("public:a");
    let mut latest = None;
    for i in 1..=5 {
        latest = Some(publish(&*node.engine, &a, &i.to_string(), policy(3)).await);
    }
    let latest = latest.unwrap();
    let at = |offset| Position {
        epoch: latest.epoch.clone(),
        offset,
    };
    let recover = |from: Position| {
        let engine = node.engine.clone();
        let a = a.clone();
        async move { engine.attach(&a, Some(&from), policy(3)).await.unwrap() }
    };
    let found = recover(at(2)).await;
    assert_eq!(found.position, latest);
    assert_eq!(offsets(&found.missed.unwrap()), [3, 4, 5]);
    assert_eq!(
        recover(at(5)).await.missed.unwrap(),
        Vec::new(),
        "nothing missed"
    );
    assert!(
        recover(at(1)).await.missed.is_none(),
        "offset 2 is no longer kept"
    );
    assert!(recover(at(6)).await.missed.is_none(), "from the future");
    let other = Position {
        epoch: Arc::from("another-epoch"),
        offset: 4,
    };
    assert!(recover(other).await.missed.is_none(), "another epoch");
}

pub(super) async fn reading_history_creates_nothing(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let a = channel("public:a");
    let (epoch, kept) = node.engine.history(&a, 10, None, policy(10)).await.unwrap();
    assert!(kept.is_empty());
    let attached = node.engine.attach(&a, None, policy(10)).await.unwrap();
    assert_eq!(attached.position.offset, 0);
    assert_ne!(
        attached.position.epoch, epoch,
        "the epoch read was nobody's"
    );
}

/// Missed (from history) plus delivered (after the attach began) is every
/// message exactly once, however publishing interleaves with the attach.
pub(super) async fn recovery_merges_with_concurrent_publishing(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let a = channel("public:a");
    let first = publish(&*node.engine, &a, "0", policy(1000)).await;
    let total = 300u64;
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let publisher = {
        let (engine, a, progress) = (node.engine.clone(), a.clone(), progress.clone());
        tokio::spawn(async move {
            for i in 1..total {
                publish(&*engine, &a, &i.to_string(), policy(1000)).await;
                progress.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    // Attach in the middle of the stream.
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 50 {
        tokio::task::yield_now().await;
    }
    let mark = node.sink.count();
    let attached = node
        .engine
        .attach(&a, Some(&first), policy(1000))
        .await
        .unwrap();
    publisher.await.unwrap();
    node.sink
        .until("the last delivery", |s| {
            s.offsets(&a, 0).last() == Some(&total)
        })
        .await;
    let mut seen = offsets(&attached.missed.expect("all kept"));
    seen.extend(
        node.sink
            .offsets(&a, mark)
            .into_iter()
            .filter(|o| *o > attached.position.offset),
    );
    assert_eq!(seen, (2..=total).collect::<Vec<_>>());
}

pub(super) async fn an_idle_channel_is_forgotten_and_comes_back_with_a_new_epoch(
    backend: &impl Backend,
) {
    let node = backend.node(Duration::from_secs(1)).await;
    let (a, watched) = (channel("public:idle"), channel("public:watched"));
    let before = publish(&*node.engine, &a, "x", policy(0)).await;
    let watched_before = node
        .engine
        .attach(&watched, None, policy(0))
        .await
        .unwrap()
        .position;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let after = publish(&*node.engine, &a, "y", policy(0)).await;
    assert_ne!(after.epoch, before.epoch, "a new stream generation");
    assert_eq!(after.offset, 1);
    let watched_after = publish(&*node.engine, &watched, "z", policy(0)).await;
    assert_eq!(
        (watched_after.epoch, watched_after.offset),
        (watched_before.epoch, 1),
        "a channel with a subscriber is kept"
    );
}

fn event(
    node: &Node,
    channel: &ChannelName,
    change: Change,
    user: &str,
    connection: u64,
) -> PresenceEvent {
    PresenceEvent {
        channel: channel.clone(),
        change,
        user: Arc::from(user),
        info: Arc::from(format!(r#"{{"name":"{user}"}}"#)),
        node: Arc::from(node.engine.presence().node()),
        connection,
    }
}

async fn members(node: &Node, channel: &ChannelName) -> Vec<String> {
    let members = node.engine.presence().members(channel).await.unwrap();
    members.iter().map(|m| m.user.to_string()).collect()
}

pub(super) async fn joins_and_leaves_reach_the_sink_and_members_list_them(backend: &impl Backend) {
    let node = backend.node(IDLE).await;
    let chat = channel("course:chat");
    node.engine.attach(&chat, None, policy(10)).await.unwrap();
    let presence = node.engine.presence();
    presence
        .join(event(&node, &chat, Change::Join, "zoe", 1))
        .await
        .unwrap();
    presence
        .join(event(&node, &chat, Change::Join, "ann", 2))
        .await
        .unwrap();
    node.sink
        .until("two joins", |s| s.changes().len() == 2)
        .await;
    assert_eq!(members(&node, &chat).await, ["ann", "zoe"], "by user id");
    let listed = presence.members(&chat).await.unwrap();
    assert_eq!(&*listed[0].info, r#"{"name":"ann"}"#);
    presence.leave(event(&node, &chat, Change::Leave, "zoe", 1));
    node.sink
        .until("the leave", |s| s.changes().len() == 3)
        .await;
    assert_eq!(
        node.sink.changes(),
        [
            (Change::Join, "zoe".to_owned()),
            (Change::Join, "ann".to_owned()),
            (Change::Leave, "zoe".to_owned())
        ]
    );
    assert_eq!(members(&node, &chat).await, ["ann"]);
    let seen = node.sink.presence.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.connection, &*seen.node),
        (1, presence.node()),
        "the origin travels along"
    );
}

// ---- The memory engine. ----

struct Memory;

impl Backend for Memory {
    async fn node(&self, channel_idle: Duration) -> Node {
        let sink = Arc::new(Recorder::default());
        let weak: Weak<dyn Sink> = Arc::downgrade(&(sink.clone() as Arc<dyn Sink>));
        let engine = MemoryEngine::start(
            weak,
            Lifetimes {
                channel_idle,
                max_history_bytes: u64::MAX,
                node_timeout: Duration::from_secs(1),
            },
        );
        Node { engine, sink }
    }
}

// ---- The Redis engine, on a real server. ----

struct Redis {
    server: RedisServer,
}

impl Redis {
    fn new() -> Self {
        Redis {
            server: RedisServer::start(),
        }
    }

    async fn node_at(url: &str, channel_idle: Duration) -> Node {
        let sink = Arc::new(Recorder::default());
        let weak: Weak<dyn Sink> = Arc::downgrade(&(sink.clone() as Arc<dyn Sink>));
        let lifetimes = Lifetimes {
            channel_idle,
            max_history_bytes: u64::MAX,
            node_timeout: Duration::from_secs(1),
        };
        let engine = RedisEngine::connect(url, lifetimes)
            .await
            .unwrap()
            .start(weak);
        Node { engine, sink }
    }
}

impl Backend for Redis {
    async fn node(&self, channel_idle: Duration) -> Node {
        Self::node_at(&self.server.url(), channel_idle).await
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(&super::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(&super::Redis::new()).await;
                }
            )*
        }
    };
}

conformance!(
    offsets_grow_per_channel_and_reach_the_sink_in_order,
    a_batch_gives_every_channel_its_next_offset,
    attach_sees_the_latest_position,
    history_is_capped_and_gives_the_latest_oldest_first,
    history_expires_with_its_age,
    recovery_is_all_or_nothing,
    reading_history_creates_nothing,
    recovery_merges_with_concurrent_publishing,
    an_idle_channel_is_forgotten_and_comes_back_with_a_new_epoch,
    joins_and_leaves_reach_the_sink_and_members_list_them,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_user_on_two_nodes_joins_once_and_leaves_with_the_last() {
    let redis = Redis::new();
    let (a, b) = (redis.node(IDLE).await, redis.node(IDLE).await);
    let chat = channel("course:chat");
    a.engine.attach(&chat, None, policy(10)).await.unwrap();
    b.engine.attach(&chat, None, policy(10)).await.unwrap();
    a.engine
        .presence()
        .join(event(&a, &chat, Change::Join, "ann", 1))
        .await
        .unwrap();
    b.engine
        .presence()
        .join(event(&b, &chat, Change::Join, "ann", 7))
        .await
        .unwrap();
    b.sink
        .until("ann's join on b", |s| s.changes().len() == 1)
        .await;
    assert_eq!(members(&b, &chat).await, ["ann"]);
    a.engine
        .presence()
        .leave(event(&a, &chat, Change::Leave, "ann", 1));
    // Still present through b: nobody is told anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(members(&a, &chat).await, ["ann"]);
    b.engine
        .presence()
        .leave(event(&b, &chat, Change::Leave, "ann", 7));
    a.sink
        .until("ann's leave on a", |s| s.changes().len() == 2)
        .await;
    assert_eq!(a.sink.changes()[1], (Change::Leave, "ann".to_owned()));
    assert!(members(&a, &chat).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_members_of_a_node_that_died_leave_after_the_node_timeout() {
    let redis = Redis::new();
    let (doomed, survivor) = (redis.node(IDLE).await, redis.node(IDLE).await);
    let chat = channel("course:chat");
    survivor
        .engine
        .attach(&chat, None, policy(10))
        .await
        .unwrap();
    doomed.engine.attach(&chat, None, policy(10)).await.unwrap();
    let presence = doomed.engine.presence();
    presence
        .join(event(&doomed, &chat, Change::Join, "ann", 1))
        .await
        .unwrap();
    survivor
        .sink
        .until("ann's join", |s| s.changes().len() == 1)
        .await;
    // Gone without a word: its heartbeat stops, its leaves are never sent.
    drop(doomed);
    survivor
        .sink
        .until("ann's leave, from the reaper", |s| s.changes().len() == 2)
        .await;
    assert_eq!(
        survivor.sink.changes()[1],
        (Change::Leave, "ann".to_owned())
    );
    assert!(members(&survivor, &chat).await.is_empty());
}

// ---- Only Redis: several nodes, outages, foreign writes. ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_message_published_on_one_node_reaches_the_others_in_order() {
    let redis = Redis::new();
    let (a, b) = (redis.node(IDLE).await, redis.node(IDLE).await);
    let news = channel("public:news");
    b.engine.attach(&news, None, policy(10)).await.unwrap();
    for i in 1..=50 {
        publish(&*a.engine, &news, &i.to_string(), policy(10)).await;
    }
    b.sink
        .until("50 deliveries on b", |s| s.offsets(&news, 0).len() == 50)
        .await;
    assert_eq!(b.sink.offsets(&news, 0), (1..=50).collect::<Vec<_>>());
    assert!(a.sink.offsets(&news, 0).is_empty(), "a never attached");
    // Detached: the node unsubscribes and receives nothing more.
    b.engine.detach(&news);
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&*a.engine, &news, "late", policy(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.sink.offsets(&news, 0).len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_outage_is_unavailable_then_interrupts_and_recovers() {
    let mut redis = Redis::new();
    let node = redis.node(IDLE).await;
    let news = channel("public:news");
    node.engine.attach(&news, None, policy(10)).await.unwrap();
    publish(&*node.engine, &news, "1", policy(10)).await;

    redis.server.stop();
    let batch = [Outgoing {
        channel: news.clone(),
        data: Arc::from("2"),
        history: policy(10),
    }];
    let error = node.engine.publish(&batch).await.unwrap_err();
    assert!(matches!(error, EngineError::Unavailable(_)), "{error:?}");
    node.sink
        .until("the interruption", |s| s.interruptions().contains(&None))
        .await;

    redis.server.restart();
    // Back: publishing works again, history is gone (no persistence), and
    // a recovery from before the restart is honestly not recovered.
    let mut published = None;
    for _ in 0..100 {
        match node.engine.publish(&batch).await {
            Ok(p) => {
                published = Some(p);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let published = published.expect("publishing works once Redis is back");
    assert_eq!(published[0].offset, 1, "a new stream generation");
    let before = Position {
        epoch: Arc::from("anything-before"),
        offset: 1,
    };
    let attached = node
        .engine
        .attach(&news, Some(&before), policy(10))
        .await
        .unwrap();
    assert!(attached.missed.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_epoch_change_under_a_subscriber_interrupts_its_channel() {
    let redis = Redis::new();
    let (a, b) = (redis.node(IDLE).await, redis.node(IDLE).await);
    let news = channel("public:news");
    b.engine.attach(&news, None, policy(10)).await.unwrap();
    publish(&*a.engine, &news, "1", policy(10)).await;
    b.sink.until("the first message", |s| s.count() == 1).await;
    // The channel's state vanishes under the subscriber (FLUSHALL, eviction).
    let client = ::redis::Client::open(redis.server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = ::redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    publish(&*a.engine, &news, "2", policy(10)).await;
    b.sink
        .until("the interruption", |s| {
            s.interruptions().contains(&Some(news.clone()))
        })
        .await;
}

#[tokio::test]
async fn redis_an_unreachable_server_fails_at_connect_with_its_address() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lifetimes = Lifetimes {
        channel_idle: IDLE,
        max_history_bytes: u64::MAX,
        node_timeout: Duration::from_secs(1),
    };
    let error = RedisEngine::connect(&format!("redis://127.0.0.1:{port}/"), lifetimes)
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::Unavailable(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_question_reaches_every_other_node_and_their_answers_come_back() {
    let redis = Redis::new();
    let (a, _b, _c) = (
        redis.node(IDLE).await,
        redis.node(IDLE).await,
        redis.node(IDLE).await,
    );
    let question = Question::Disconnect { user: "ann".into() };
    let answers = a.engine.ask_others(&question).await.unwrap();
    let want = serde_json::to_value(&question).unwrap();
    assert_eq!(
        answers,
        [want.clone(), want],
        "b and c answer, a does not ask itself"
    );
}

#[tokio::test]
async fn memory_has_nobody_else_to_ask() {
    let node = Memory.node(IDLE).await;
    let question = Question::Channels {
        prefix: String::new(),
    };
    assert!(node.engine.ask_others(&question).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_attach_given_up_while_redis_is_slow_leaves_no_subscription_behind() {
    let redis = Redis::new();
    let node = redis.node(IDLE).await;
    let news = channel("public:news");
    let client = ::redis::Client::open(redis.server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    // Redis holds every client's commands for a while: the SUBSCRIBE waits.
    let () = ::redis::cmd("CLIENT")
        .arg(&["PAUSE", "1500", "ALL"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let given_up = tokio::time::timeout(
        Duration::from_millis(200),
        node.engine.attach(&news, None, policy(10)),
    )
    .await;
    assert!(given_up.is_err(), "the attach was still waiting for Redis");
    // Once Redis answers, the subscription nobody waits for is given back.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subscribers: (String, u64) = ::redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("stellwerk:{{{news}}}"))
            .query_async(&mut admin)
            .await
            .unwrap();
        if node.engine.stats().channels == 0 && subscribers.1 == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still subscribed: {} channel(s) counted, {} Redis subscriber(s)",
            node.engine.stats().channels,
            subscribers.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
