//! Subscriptions and fan-out.
//!
//! The hub asks the governing plugin before anything is subscribed or
//! published, hands publications to the engine, and receives them back (as the
//! engine's [`Sink`]) to fan them out. Each publication is serialised once into
//! a shared [`Push`]; every subscriber's bounded queue gets a pointer to it. A
//! subscriber whose queue is full (in pushes or in bytes) is cut off, never
//! waited for: cutting a connection off detaches it from every channel at
//! once, whatever its transport is doing, so nothing more is queued to it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Semaphore;

use crate::auth::Identity;
use crate::channel::ChannelName;
use crate::engine::{
    Change, Engine, EngineError, EngineStats, HistoryPolicy, Position, PresenceEvent, Sink,
};
use crate::plugins::{Governor, LiveRegistry, SubscribeVerdict};
use crate::protocol::{ErrorCode, Refusal};

mod cluster;
mod connection;
mod fanout;
mod publish;
mod queue;
mod recheck;
mod subscribe;
mod subscribers;

pub(crate) use connection::{Admission, Connection, Refused, Registration};
pub(crate) use publish::single_line;
pub(crate) use recheck::Reauthorized;
pub(crate) use subscribe::Subscribed;

use fanout::Lane;

pub(crate) use queue::Queue;

pub(crate) use subscribers::Presence;
use subscribers::Subscribers;

const SHARDS: usize = 64;

/// One push as every subscriber of its channel receives it: a message, or
/// an event about the channel (join, leave, a server-side unsubscribe).
#[derive(Debug)]
pub(crate) struct Push {
    pub(crate) channel: ChannelName,
    /// The push's `type`: `message`, `join`, `leave` or `unsubscribed`
    /// (SSE uses it as the event name).
    pub(crate) kind: &'static str,
    /// Where a message sits in its channel; `None` for the other kinds,
    /// which are not kept in history and do not move a cursor.
    pub(crate) position: Option<Position>,
    /// The complete JSON push, shared, never copied per subscriber.
    pub(crate) frame: Utf8Bytes,
    /// The SSE transport's signed `position`, made by the first stream that
    /// sends this push and reused by every other one (same channel, same
    /// position, one key per installation).
    pub(crate) signed_position: OnceLock<Arc<str>>,
}

/// Why the hub cut a connection off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutOff {
    /// The outbound queue overflowed: the client does not read fast enough.
    SlowConsumer,
    /// Stud.IP asked to disconnect the user (`POST /api/users/{user}/disconnect`).
    Disconnected,
}

impl CutOff {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow consumer: outbound queue overflowed",
            Self::Disconnected => "disconnected by the server",
        }
    }
}

/// Limits the hub enforces per connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HubLimits {
    pub(crate) queue_capacity: usize,
    /// Bytes of pushes (frame lengths) one queue may hold; a push always
    /// fits into an empty queue.
    pub(crate) queue_max_bytes: usize,
    pub(crate) max_subscriptions: usize,
    /// The most history any channel keeps, whatever its plugin asks for.
    pub(crate) max_history: HistoryPolicy,
    /// WebSocket connections and SSE streams of the node, counted from
    /// before the upgrade (so unauthenticated sockets count too).
    pub(crate) max_connections: usize,
    /// Registered connections of one user.
    pub(crate) max_connections_per_user: usize,
}

/// Cheap-to-clone handle to the hub.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

/// One user's live connections with their ids: a few at most
/// (`limits.max_connections_per_user`), so a list, not a map (a map costs
/// every connected user about 80 bytes more).
type UserConnections = Vec<(u64, Weak<Connection>)>;

struct Inner {
    /// For the lane tasks [`Sink::deliver`] starts.
    me: Weak<Inner>,
    shards: Box<[Mutex<HashMap<ChannelName, Subscribers>>]>,
    /// Ordered fan-out lanes (see `fanout.rs`).
    lanes: Box<[Lane]>,
    /// Channel streams interrupted on this node (see `Sink::interrupted`).
    interruptions: AtomicU64,
    hasher: RandomState,
    engine: Arc<dyn Engine>,
    registry: Arc<LiveRegistry>,
    limits: HubLimits,
    next_id: AtomicU64,
    connections: AtomicUsize,
    /// Places taken under `limits.max_connections` ([`Admission`]).
    admitted: AtomicUsize,
    refused_node_full: AtomicU64,
    refused_user_full: AtomicU64,
    /// Live connections by user id, for `POST /api/users/{user}/disconnect`.
    users: Mutex<HashMap<Arc<str>, UserConnections>>,
    published: AtomicU64,
    deliveries: AtomicU64,
    cut_offs: AtomicU64,
    /// History and recovery `filter` batches that may run at once.
    filter_lanes: Arc<Semaphore>,
}

/// Counters of the hub, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HubStats {
    pub(crate) connections: u64,
    pub(crate) channels: u64,
    pub(crate) subscriptions: u64,
    pub(crate) published: u64,
    pub(crate) deliveries: u64,
    pub(crate) cut_offs: u64,
    /// Connections refused over `limits.max_connections`.
    pub(crate) refused_node_full: u64,
    /// Connections refused over `limits.max_connections_per_user`.
    pub(crate) refused_user_full: u64,
    /// Channel streams interrupted: their subscribers were told to recover.
    pub(crate) interruptions: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// Builds the hub and its engine; the engine gets the hub as its sink.
    pub(crate) fn new(
        registry: Arc<LiveRegistry>,
        limits: HubLimits,
        engine: impl FnOnce(Weak<dyn Sink>) -> Arc<dyn Engine>,
    ) -> Hub {
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let sink: Weak<dyn Sink> = weak.clone();
            Inner {
                me: weak.clone(),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                lanes: (0..fanout::LANES).map(|_| Lane::default()).collect(),
                interruptions: AtomicU64::new(0),
                hasher: RandomState::new(),
                engine: engine(sink),
                registry,
                limits,
                next_id: AtomicU64::new(1),
                connections: AtomicUsize::new(0),
                admitted: AtomicUsize::new(0),
                refused_node_full: AtomicU64::new(0),
                refused_user_full: AtomicU64::new(0),
                users: Mutex::new(HashMap::new()),
                published: AtomicU64::new(0),
                deliveries: AtomicU64::new(0),
                cut_offs: AtomicU64::new(0),
                filter_lanes: Arc::new(Semaphore::new(
                    std::thread::available_parallelism().map_or(2, usize::from),
                )),
            }
        });
        Hub { inner }
    }

    /// Resolves once no fan-out lane has work (for tests that publish and
    /// then look at queues).
    #[cfg(test)]
    pub(crate) async fn settled(&self) {
        while self.inner.lanes.iter().any(Lane::busy) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    pub(crate) fn registry(&self) -> &LiveRegistry {
        &self.inner.registry
    }

    /// WebSocket connections (authenticated or not) and SSE streams that
    /// hold a place under `limits.max_connections`.
    pub(crate) fn open_streams(&self) -> usize {
        self.inner.admitted.load(Ordering::Relaxed)
    }

    /// A consistent-enough snapshot for `/metrics` (each shard read once).
    pub(crate) fn stats(&self) -> HubStats {
        let (mut channels, mut subscriptions) = (0, 0);
        for shard in self.inner.shards.iter() {
            let shard = lock(shard);
            channels += shard.len() as u64;
            subscriptions += shard
                .values()
                .map(|s| s.by_connection.len() as u64)
                .sum::<u64>();
        }
        HubStats {
            connections: self.inner.connections.load(Ordering::Relaxed) as u64,
            channels,
            subscriptions,
            published: self.inner.published.load(Ordering::Relaxed),
            deliveries: self.inner.deliveries.load(Ordering::Relaxed),
            cut_offs: self.inner.cut_offs.load(Ordering::Relaxed),
            refused_node_full: self.inner.refused_node_full.load(Ordering::Relaxed),
            refused_user_full: self.inner.refused_user_full.load(Ordering::Relaxed),
            interruptions: self.inner.interruptions.load(Ordering::Relaxed),
        }
    }

    /// What the engine holds (channels, history), for `/metrics`.
    pub(crate) fn engine_stats(&self) -> EngineStats {
        self.inner.engine.stats()
    }

    fn governor(&self, channel: &ChannelName) -> Result<Governor, Refusal> {
        self.inner
            .registry
            .governing(channel.namespace())
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NotFound,
                    format!("no plugin governs the namespace `{}`", channel.namespace()),
                )
            })
    }
}

/// Parses a channel name from a client or the API; a bad one is `bad_request`.
pub(crate) fn parse_channel(name: &str) -> Result<ChannelName, Refusal> {
    ChannelName::parse(name)
        .map_err(|e| Refusal::bad_request(format!("invalid channel `{name}`: {e}")))
}

/// Asks the plugin whether `identity` may subscribe; on yes the audience
/// tag and the presence info.
fn authorize(
    governor: &Governor,
    channel: &ChannelName,
    identity: Option<&Identity>,
) -> Result<(Arc<str>, Option<serde_json::Value>), Refusal> {
    match governor.authorize_subscribe(channel, identity) {
        SubscribeVerdict::Allow {
            audience,
            presence_info,
        } => Ok((Arc::from(audience.unwrap_or_default()), presence_info)),
        SubscribeVerdict::Deny { reason } => Err(Refusal::new(ErrorCode::Forbidden, reason)),
        SubscribeVerdict::Fault => Err(plugin_fault(governor)),
    }
}

fn plugin_fault(governor: &Governor) -> Refusal {
    Refusal::new(
        ErrorCode::Internal,
        format!(
            "plugin `{}` failed; request refused",
            governor.plugin_name()
        ),
    )
}

/// What a client is told when the engine fails: a contract code, never the
/// engine's own text (that goes to the log).
fn engine_refusal(error: &EngineError) -> Refusal {
    tracing::warn!("engine: {error}");
    match error {
        EngineError::Unavailable(_) => Refusal::new(
            ErrorCode::Unavailable,
            "the message store is unreachable; nothing was done, try again",
        ),
    }
}

impl Inner {
    fn shard(
        &self,
        channel: &ChannelName,
    ) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Subscribers>> {
        let i = self.hasher.hash_one(channel) as usize % self.shards.len();
        lock(&self.shards[i])
    }

    /// The local subscribers of every channel whose name `matches`, by
    /// channel (a snapshot: one shard locked at a time).
    fn subscribed(
        &self,
        matches: impl Fn(&ChannelName) -> bool,
    ) -> Vec<(ChannelName, Vec<Arc<Connection>>)> {
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            found.extend(shard.iter().filter(|(name, _)| matches(name)).map(
                |(name, subscribers)| {
                    let connections = subscribers
                        .by_connection
                        .values()
                        .map(|s| s.connection.clone())
                        .collect();
                    (name.clone(), connections)
                },
            ));
        }
        found
    }

    /// What the governing plugin asks to keep, within the configured caps.
    fn history_policy(&self, governor: &Governor) -> HistoryPolicy {
        let options = governor.options();
        let max = &self.limits.max_history;
        HistoryPolicy {
            size: (options.history_size as usize).min(max.size),
            ttl: options.history_ttl.min(max.ttl),
        }
    }

    /// Ends `connection`'s subscription to `channel` (the caller has taken
    /// it out of the connection's own set): its presence leaves if it was
    /// its user's last connection here, and the engine is told.
    fn detach(&self, channel: &ChannelName, connection: u64) {
        let (removed, left) = self.remove_local(channel, connection);
        if let Some(member) = left {
            let event = self.presence_event(channel, Change::Leave, &member, connection);
            self.engine.presence().leave(event);
        }
        // After the hub's lock is released: the engine may call the sink
        // under its own locks.
        if removed {
            self.engine.detach(channel);
        }
    }

    /// Takes `connection` out of the channel's local subscribers; whether
    /// it was there, and its member if that was the user's last connection
    /// here. Neither the engine nor presence is told.
    fn remove_local(&self, channel: &ChannelName, connection: u64) -> (bool, Option<Presence>) {
        let mut shard = self.shard(channel);
        let Some(subscribers) = shard.get_mut(channel) else {
            return (false, None);
        };
        let removed = subscribers.by_connection.contains_key(&connection);
        let left = subscribers.remove(connection);
        if subscribers.is_empty() {
            shard.remove(channel);
        }
        (removed, left)
    }

    /// A presence change of `member` caused by `connection` on this node.
    fn presence_event(
        &self,
        channel: &ChannelName,
        change: Change,
        member: &Presence,
        connection: u64,
    ) -> PresenceEvent {
        PresenceEvent {
            channel: channel.clone(),
            change,
            user: member.user.clone(),
            info: Arc::from(member.info.to_string()),
            node: Arc::from(self.engine.presence().node()),
            connection,
        }
    }
}

/// Locks a mutex, ignoring poisoning: the hub's maps stay consistent across
/// a panic because every critical section is a single insert or remove.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod testing;
