//! Subscriptions and fan-out.
//!
//! The hub asks the governing plugin before anything is subscribed or
//! published, hands publications to the engine, and receives them back (as the
//! engine's [`Sink`]) to fan them out. Each publication is serialised once into
//! a shared [`Push`]; every subscriber's bounded queue gets a pointer to it. A
//! subscriber whose queue is full (in pushes or in bytes) is cut off, never
//! waited for: cutting a connection off detaches it from every channel at
//! once, whatever its transport is doing, so nothing more is queued to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::auth::Identity;
use crate::channel::ChannelName;
use crate::engine::{
    Change, Engine, EngineError, EngineStats, HistoryPolicy, Outgoing, Position, PresenceEvent,
    Publication, Question, Sink, Stored,
};
use crate::plugins::{
    Delivery, Governor, LiveRegistry, PublishSource, PublishVerdict, SubscribeVerdict,
};
use crate::protocol::{ErrorCode, Refusal};

mod fanout;
mod queue;
mod subscribers;

use fanout::Lane;

pub(crate) use queue::Queue;
use queue::{Offered, Pushes};

pub(crate) use subscribers::Presence;
use subscribers::{unsubscribed_push, Membership, Subscribers};

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

/// A live subscription and, when recovery was asked for, what was missed.
#[derive(Debug)]
pub(crate) struct Subscribed {
    /// The channel's position at the moment the subscription went live.
    pub(crate) position: Position,
    /// Every message after the recovery position, oldest first, as this
    /// subscriber's audience receives them; `None` when not all of them are
    /// kept any more (or the epoch changed), and when no recovery was asked.
    pub(crate) missed: Option<Vec<Arc<Push>>>,
}

/// A channel's kept messages as one reader may see them.
#[derive(Debug)]
pub(crate) struct History {
    pub(crate) epoch: Arc<str>,
    /// Oldest first.
    pub(crate) messages: Vec<Stored>,
}

/// What [`Hub::reauthorize`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reauthorized {
    /// Subscriptions the new plugin still allows.
    pub(crate) kept: usize,
    /// Subscriptions ended with an `unsubscribed` push.
    pub(crate) revoked: usize,
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

/// Why a connection is refused before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `limits.max_connections` is reached.
    NodeFull { max: usize },
    /// The user has `limits.max_connections_per_user` connections already.
    UserFull { max: usize },
}

impl Refused {
    /// The `reason` label of `stellwerk_connections_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::NodeFull { .. } => "max_connections",
            Self::UserFull { .. } => "max_connections_per_user",
        }
    }

    /// What the client is told (`unavailable` or `rate_limited`).
    pub(crate) fn refusal(self) -> Refusal {
        match self {
            Self::NodeFull { max } => Refusal::new(
                ErrorCode::Unavailable,
                format!("the server is at its connection limit ({max}); try again later"),
            ),
            Self::UserFull { max } => Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "too many connections for this user (at most {max}); \
                     close another tab or connection first"
                ),
            ),
        }
    }
}

/// A place under `limits.max_connections`, held for the life of a WebSocket
/// or SSE stream; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Admission {
    hub: Weak<Inner>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(inner) = self.hub.upgrade() {
            inner.admitted.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A subscriber as the hub sees it (a WebSocket or an SSE stream).
#[derive(Debug)]
pub(crate) struct Connection {
    id: u64,
    /// Replaced by a WebSocket `refresh` (same user, new claims and expiry).
    identity: ArcSwapOption<Identity>,
    /// Pushes waiting for the transport, bounded in count and bytes.
    pushes: Pushes,
    channels: Mutex<HashSet<ChannelName>>,
    cut_off: OnceLock<CutOff>,
    cut_off_signal: Notify,
}

impl Connection {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Who is connected, as of the latest token; `None` when anonymous.
    pub(crate) fn identity(&self) -> Option<Arc<Identity>> {
        self.identity.load_full()
    }

    /// Puts a refreshed token's identity in force for every later
    /// authorisation. The caller checks that it is the same user.
    pub(crate) fn set_identity(&self, identity: Identity) {
        self.identity.store(Some(Arc::new(identity)));
    }

    /// Resolves once the hub has cut this connection off, with the reason.
    pub(crate) async fn cut_off(&self) -> CutOff {
        loop {
            if let Some(reason) = self.cut_off.get() {
                return *reason;
            }
            self.cut_off_signal.notified().await;
        }
    }

    /// Why the hub cut this connection off, once it has.
    pub(crate) fn cut_reason(&self) -> Option<CutOff> {
        self.cut_off.get().copied()
    }

    /// Queues `push` unless that overflows the queue's count or byte bound.
    fn offer(&self, push: &Arc<Push>, limits: &HubLimits) -> Offered {
        if self.cut_off.get().is_some() {
            return Offered::Refused;
        }
        self.pushes
            .offer(push, limits.queue_capacity, limits.queue_max_bytes)
    }

    /// True the first time only.
    fn cut(&self, reason: CutOff) -> bool {
        let first = self.cut_off.set(reason).is_ok();
        if first {
            self.cut_off_signal.notify_one();
        }
        first
    }

    fn is_subscribed(&self, channel: &ChannelName) -> bool {
        lock(&self.channels).contains(channel)
    }
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

/// Removes the connection's subscriptions when its transport drops it.
#[derive(Debug)]
pub(crate) struct Registration {
    connection: Arc<Connection>,
    hub: Weak<Inner>,
}

impl std::ops::Deref for Registration {
    type Target = Arc<Connection>;
    fn deref(&self) -> &Arc<Connection> {
        &self.connection
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(inner) = self.hub.upgrade() {
            inner.connections.fetch_sub(1, Ordering::Relaxed);
            if let Some(identity) = self.connection.identity() {
                let mut users = lock(&inner.users);
                if let Some(connections) = users.get_mut(identity.user.as_str()) {
                    connections.retain(|(id, _)| *id != self.connection.id);
                    if connections.is_empty() {
                        users.remove(identity.user.as_str());
                    }
                }
            }
            inner.detach_all(&self.connection);
        }
    }
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

    /// Takes a place under `limits.max_connections` for a WebSocket or SSE
    /// stream about to start, or refuses (and counts the refusal).
    pub(crate) fn admit(&self) -> Result<Admission, Refused> {
        let max = self.inner.limits.max_connections;
        self.inner
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| self.refused(Refused::NodeFull { max }))?;
        Ok(Admission {
            hub: Arc::downgrade(&self.inner),
        })
    }

    /// Refuses early (before an upgrade) when `user` has as many
    /// connections as allowed; [`Self::register`] checks again.
    pub(crate) fn check_user(&self, user: &str) -> Result<(), Refused> {
        let max = self.inner.limits.max_connections_per_user;
        let open = lock(&self.inner.users).get(user).map_or(0, Vec::len);
        if open >= max {
            return Err(self.refused(Refused::UserFull { max }));
        }
        Ok(())
    }

    fn refused(&self, refused: Refused) -> Refused {
        let counter = match refused {
            Refused::NodeFull { .. } => &self.inner.refused_node_full,
            Refused::UserFull { .. } => &self.inner.refused_user_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        refused
    }

    /// Registers an authenticated (or anonymous) connection, unless its
    /// user already has `limits.max_connections_per_user` connections
    /// (checked and counted under one lock, so concurrent connects cannot
    /// overshoot). Its pushes arrive on the returned receiver; dropping the
    /// registration ends all its subscriptions.
    pub(crate) fn register(
        &self,
        identity: Option<Identity>,
    ) -> Result<(Registration, Queue), Refused> {
        let Some(user) = identity.as_ref().map(|i| Arc::<str>::from(i.user.as_str())) else {
            return Ok(self.new_registration(None));
        };
        let max = self.inner.limits.max_connections_per_user;
        let mut users = lock(&self.inner.users);
        let connections = users.entry(user).or_insert_with(|| Vec::with_capacity(1));
        if connections.len() >= max {
            drop(users);
            return Err(self.refused(Refused::UserFull { max }));
        }
        let (registration, queue) = self.new_registration(identity);
        connections.push((registration.id, Arc::downgrade(&registration.connection)));
        Ok((registration, queue))
    }

    /// A registration, not yet listed under its user.
    fn new_registration(&self, identity: Option<Identity>) -> (Registration, Queue) {
        let connection = Arc::new(Connection {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            identity: ArcSwapOption::from_pointee(identity),
            pushes: Pushes::default(),
            channels: Mutex::new(HashSet::new()),
            cut_off: OnceLock::new(),
            cut_off_signal: Notify::new(),
        });
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
        let queue = Queue::new(connection.clone());
        let registration = Registration {
            connection,
            hub: Arc::downgrade(&self.inner),
        };
        (registration, queue)
    }

    /// Subscribes after the governing plugin allowed it. Returns the
    /// channel's position at the moment the subscription went live.
    pub(crate) async fn subscribe(
        &self,
        connection: &Arc<Connection>,
        channel: &ChannelName,
    ) -> Result<Position, Refusal> {
        self.subscribe_recovering(connection, channel, None)
            .await
            .map(|subscribed| subscribed.position)
    }

    /// Like [`Self::subscribe`], and with `recover_from` also returns every
    /// message after that position (or `None` if history no longer has all
    /// of them). The missed messages and the subscription are read and made
    /// in one critical section of the engine: every later message reaches
    /// the queue, so writing the missed ones first leaves no gap and no
    /// duplicate.
    pub(crate) async fn subscribe_recovering(
        &self,
        connection: &Arc<Connection>,
        channel: &ChannelName,
        recover_from: Option<&Position>,
    ) -> Result<Subscribed, Refusal> {
        if connection.is_subscribed(channel) {
            return Err(Refusal::bad_request(format!(
                "already subscribed to `{channel}`"
            )));
        }
        let max = self.inner.limits.max_subscriptions;
        if lock(&connection.channels).len() >= max {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("subscription limit reached ({max} per connection)"),
            ));
        }
        let governor = self.governor(channel)?;
        let identity = connection.identity();
        let (audience, presence_info) = authorize(&governor, channel, identity.as_deref())?;
        let membership = identity
            .filter(|_| governor.options().presence)
            .map(|identity| Membership {
                user: Arc::from(identity.user.as_str()),
                info: presence_info,
            });
        // Registered first, buffering: whatever arrives while the engine
        // attaches is kept, and sorted out once the position is known.
        let (replaced, joined) = {
            let mut shard = self.inner.shard(channel);
            let subscribers = shard.entry(channel.clone()).or_default();
            let replaced = subscribers.by_connection.contains_key(&connection.id);
            let joined = subscribers.insert(connection.clone(), audience.clone(), membership);
            subscribers.attaching.begin(connection.id);
            (replaced, joined)
        };
        // Until the subscription is live, an error or the caller giving up
        // (a closed socket drops this future) undoes what was done so far.
        let mut undo = Undo {
            inner: &self.inner,
            channel,
            connection: connection.id,
            counted: false,
            armed: true,
        };
        let attached = self
            .inner
            .engine
            .attach(channel, recover_from, self.inner.history_policy(&governor))
            .await
            .map_err(|e| engine_refusal(&e))?;
        undo.counted = true;
        if let Some(member) = joined {
            let event = self
                .inner
                .presence_event(channel, Change::Join, &member, connection.id);
            // Undone with a leave even if it failed: a leave of a join never
            // recorded changes nothing.
            self.inner
                .engine
                .presence()
                .join(event)
                .await
                .map_err(|e| engine_refusal(&e))?;
        }
        undo.armed = false;
        self.inner.go_live(channel, connection, &attached.position);
        if replaced {
            // One subscription, counted twice by the engine.
            self.inner.engine.detach(channel);
        }
        // A cut-off empties `channels` after marking the connection, both
        // under this lock: either it sees this channel, or we see the mark.
        let live = {
            let mut channels = lock(&connection.channels);
            let live = connection.cut_reason().is_none();
            if live {
                channels.insert(channel.clone());
            }
            live
        };
        if !live {
            self.inner.detach(channel, connection.id);
            let reason = connection.cut_reason().map_or("", CutOff::reason);
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("the connection was cut off: {reason}"),
            ));
        }
        // A reload may have swapped the plugin after we asked the old version,
        // and its re-check may have run before this subscription existed:
        // ask the version in force now (a refusal arrives as `unsubscribed`).
        let in_force = self.inner.registry.governing(channel.namespace());
        if !in_force
            .as_ref()
            .is_some_and(|g| g.is_same_version(&governor))
        {
            let mut outcome = Reauthorized::default();
            self.inner
                .recheck(in_force.as_ref(), channel, connection, &mut outcome);
        }
        let epoch = attached.position.epoch.clone();
        let missed = match attached.missed {
            // A plugin that fails on the missed messages leaves a gap the
            // client must know of: not recovered, so it reloads its state.
            Some(missed) => for_audience(
                &self.inner.filter_lanes,
                &governor,
                channel,
                missed,
                &audience,
            )
            .await
            .map(|missed| {
                missed
                    .into_iter()
                    .map(|stored| {
                        Arc::new(Push::new(
                            &Publication {
                                channel: channel.clone(),
                                epoch: epoch.clone(),
                                offset: stored.offset,
                                data: stored.data.clone(),
                            },
                            &stored.data,
                        ))
                    })
                    .collect()
            }),
            None => None,
        };
        Ok(Subscribed {
            position: attached.position,
            missed,
        })
    }

    /// The latest `limit` kept messages (all kept ones when `None`; never
    /// more than the channel keeps) with an offset after `since`, as
    /// `connection` may see them: the plugin must allow it to subscribe,
    /// and messages its `filter` skips for the connection's audience are
    /// left out (so fewer than `limit` may come back).
    pub(crate) async fn history_for(
        &self,
        connection: &Connection,
        channel: &ChannelName,
        limit: Option<u64>,
        since: Option<u64>,
    ) -> Result<History, Refusal> {
        let governor = self.governor(channel)?;
        let (audience, _) = authorize(&governor, channel, connection.identity().as_deref())?;
        let mut history = self.read_history(&governor, channel, limit, since).await?;
        let messages = std::mem::take(&mut history.messages);
        history.messages = for_audience(
            &self.inner.filter_lanes,
            &governor,
            channel,
            messages,
            &audience,
        )
        .await
        .ok_or_else(|| plugin_fault(&governor))?;
        Ok(history)
    }

    /// History as Stud.IP's server sees it (behind the API key): every kept
    /// message, unfiltered.
    pub(crate) async fn history(
        &self,
        channel: &ChannelName,
        limit: Option<u64>,
        since: Option<u64>,
    ) -> Result<History, Refusal> {
        let governor = self.governor(channel)?;
        self.read_history(&governor, channel, limit, since).await
    }

    async fn read_history(
        &self,
        governor: &Governor,
        channel: &ChannelName,
        limit: Option<u64>,
        since: Option<u64>,
    ) -> Result<History, Refusal> {
        let policy = self.inner.history_policy(governor);
        let limit = limit.map_or(policy.size, |l| {
            usize::try_from(l).unwrap_or(usize::MAX).min(policy.size)
        });
        let (epoch, messages) = self
            .inner
            .engine
            .history(channel, limit, since, policy)
            .await
            .map_err(|e| engine_refusal(&e))?;
        Ok(History { epoch, messages })
    }

    /// Ends a subscription; unsubscribing from a channel one is not
    /// subscribed to is not an error (the outcome is the same). Pushes of
    /// the channel still queued are dropped: nothing of it follows the
    /// `unsubscribed` reply.
    pub(crate) fn unsubscribe(&self, connection: &Connection, channel: &ChannelName) {
        if lock(&connection.channels).remove(channel) {
            self.inner.detach(channel, connection.id);
            // Detached: no fan-out queues anything of the channel from here on.
            connection.pushes.forget(channel);
        }
    }

    /// Publishes `data` (JSON text) to every channel, or to none: each
    /// channel's plugin is asked first, and one refusal refuses them all.
    pub(crate) async fn publish(
        &self,
        channels: &[ChannelName],
        data: &str,
        source: PublishSource,
        identity: Option<&Identity>,
    ) -> Result<Vec<Position>, Refusal> {
        let data = single_line(data);
        let mut approved = Vec::with_capacity(channels.len());
        for channel in channels {
            let governor = self.governor(channel)?;
            if source == PublishSource::Client && !governor.options().client_publish {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    format!(
                        "clients may not publish on `{}` channels",
                        channel.namespace()
                    ),
                ));
            }
            let data: Arc<str> = match governor.on_publish(channel, &data, source, identity) {
                PublishVerdict::Allow => Arc::from(&*data),
                PublishVerdict::Replace(replaced) => Arc::from(single_line(&replaced)),
                PublishVerdict::Deny { reason } => {
                    return Err(Refusal::new(ErrorCode::Forbidden, reason))
                }
                PublishVerdict::Fault => return Err(plugin_fault(&governor)),
            };
            approved.push(Outgoing {
                channel: channel.clone(),
                data,
                history: self.inner.history_policy(&governor),
            });
        }
        let positions = self
            .inner
            .engine
            .publish(&approved)
            .await
            .map_err(|e| engine_refusal(&e))?;
        self.inner
            .published
            .fetch_add(positions.len() as u64, Ordering::Relaxed);
        Ok(positions)
    }

    /// Who is subscribed to `channel` (on any node), for a client that may
    /// subscribe to it.
    pub(crate) async fn presence_for(
        &self,
        connection: &Connection,
        channel: &ChannelName,
    ) -> Result<Vec<Presence>, Refusal> {
        let governor = self.governor(channel)?;
        authorize(&governor, channel, connection.identity().as_deref())?;
        self.members(&governor, channel).await
    }

    /// Who is subscribed to `channel` (on any node), as Stud.IP's server sees it.
    pub(crate) async fn presence(&self, channel: &ChannelName) -> Result<Vec<Presence>, Refusal> {
        let governor = self.governor(channel)?;
        self.members(&governor, channel).await
    }

    async fn members(
        &self,
        governor: &Governor,
        channel: &ChannelName,
    ) -> Result<Vec<Presence>, Refusal> {
        if !governor.options().presence {
            return Err(Refusal::bad_request(format!(
                "presence is off for `{}` channels (plugin `{}`)",
                channel.namespace(),
                governor.plugin_name()
            )));
        }
        let members = self
            .inner
            .engine
            .presence()
            .members(channel)
            .await
            .map_err(|e| engine_refusal(&e))?;
        Ok(members
            .into_iter()
            .map(|member| Presence {
                user: member.user,
                info: Arc::new(
                    serde_json::from_str(&member.info).unwrap_or_else(|_| serde_json::json!({})),
                ),
            })
            .collect())
    }

    /// Channels with at least one subscriber (on any node) whose name
    /// starts with `prefix`, with their subscriber (connection) counts, by
    /// name.
    pub(crate) async fn channels(
        &self,
        prefix: &str,
    ) -> Result<Vec<(ChannelName, usize)>, Refusal> {
        let mut counts: BTreeMap<ChannelName, usize> =
            self.inner.local_channels(prefix).into_iter().collect();
        let question = Question::Channels {
            prefix: prefix.to_owned(),
        };
        for answer in self.ask_others(&question).await? {
            let Ok(listed) = serde_json::from_value::<Vec<(String, usize)>>(answer) else {
                continue;
            };
            for (name, count) in listed {
                if let Ok(channel) = ChannelName::parse(&name) {
                    *counts.entry(channel).or_default() += count;
                }
            }
        }
        Ok(counts.into_iter().collect())
    }

    /// Cuts off every connection of `user` on every node: each is detached
    /// from its channels at once and closes with a reason. Returns how many
    /// there were.
    pub(crate) async fn disconnect_user(&self, user: &str) -> Result<usize, Refusal> {
        let here = self.inner.disconnect_local(user);
        let question = Question::Disconnect {
            user: user.to_owned(),
        };
        let elsewhere: u64 = self
            .ask_others(&question)
            .await?
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .sum();
        Ok(here + usize::try_from(elsewhere).unwrap_or(usize::MAX))
    }

    async fn ask_others(&self, question: &Question) -> Result<Vec<serde_json::Value>, Refusal> {
        self.inner
            .engine
            .ask_others(question)
            .await
            .map_err(|e| engine_refusal(&e))
    }

    /// Checks every subscription of `namespaces` again with the plugin now
    /// governing it (after a reload). Subscribers it denies, or all of them
    /// where no plugin governs the namespace any more, are unsubscribed and
    /// told why; the others get their new audience. Calls the plugins:
    /// run it off the reactor.
    pub(crate) fn reauthorize(&self, namespaces: &[String]) -> Reauthorized {
        let mut outcome = Reauthorized::default();
        let affected = self
            .inner
            .subscribed(|name| namespaces.iter().any(|n| n == name.namespace()));
        for (channel, connections) in affected {
            let governor = self.inner.registry.governing(channel.namespace());
            for connection in connections {
                self.inner
                    .recheck(governor.as_ref(), &channel, &connection, &mut outcome);
            }
        }
        outcome
    }

    /// Checks every subscription of one connection again, after its token
    /// was refreshed with other claims; like [`Self::reauthorize`].
    pub(crate) fn reauthorize_connection(&self, connection: &Connection) -> Reauthorized {
        let mut outcome = Reauthorized::default();
        let channels: Vec<ChannelName> = lock(&connection.channels).iter().cloned().collect();
        for channel in channels {
            let governor = self.inner.registry.governing(channel.namespace());
            self.inner
                .recheck(governor.as_ref(), &channel, connection, &mut outcome);
        }
        outcome
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

/// JSON without line breaks. Pushes are `\n`-separated in batched frames
/// and SSE `data:` lines, and in valid JSON a line break can only be
/// insignificant whitespace (inside strings it is escaped), so dropping them
/// changes nothing but the layout of pretty-printed input.
pub(crate) fn single_line(json: &str) -> std::borrow::Cow<'_, str> {
    if json.contains(['\n', '\r']) {
        std::borrow::Cow::Owned(json.replace(['\n', '\r'], ""))
    } else {
        std::borrow::Cow::Borrowed(json)
    }
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

/// Kept messages as one audience receives them live: through the plugin's
/// `filter` when it has one (skipped ones left out, replaced ones replaced).
/// The plugin sees them in one batch on the blocking pool, at most one batch
/// per core at once (`lanes`), under one call's deadline: a history or
/// recovery reply cannot stall a tokio worker, and costs at most one call's
/// CPU however many messages it holds. `None` if the plugin failed.
async fn for_audience(
    lanes: &Arc<Semaphore>,
    governor: &Governor,
    channel: &ChannelName,
    messages: Vec<Stored>,
    audience: &str,
) -> Option<Vec<Stored>> {
    if !governor.filters() || messages.is_empty() {
        return Some(messages);
    }
    let _lane = lanes.acquire().await.ok()?;
    let (governor, channel, audience) = (governor.clone(), channel.clone(), audience.to_owned());
    let filtered = tokio::task::spawn_blocking(move || {
        let data: Vec<&str> = messages.iter().map(|m| &*m.data).collect();
        let deliveries = governor.filter_each(&channel, &data, &audience)?;
        Some(
            messages
                .into_iter()
                .zip(deliveries)
                .filter_map(|(stored, delivery)| match delivery {
                    Delivery::Skip => None,
                    Delivery::Original => Some(stored),
                    Delivery::Replace(data) => Some(Stored {
                        offset: stored.offset,
                        data: Arc::from(single_line(&data)),
                    }),
                })
                .collect(),
        )
    })
    .await;
    filtered.ok().flatten()
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

impl Inner {
    /// This node's channels with subscribers whose name starts with
    /// `prefix`, with their subscriber (connection) counts, by name.
    fn local_channels(&self, prefix: &str) -> Vec<(ChannelName, usize)> {
        let mut channels = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            channels.extend(
                shard
                    .iter()
                    .filter(|(name, _)| name.as_str().starts_with(prefix))
                    .map(|(name, subscribers)| (name.clone(), subscribers.by_connection.len())),
            );
        }
        channels.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        channels
    }

    /// Cuts off this node's connections of `user`; how many there were.
    fn disconnect_local(&self, user: &str) -> usize {
        let connections: Vec<Arc<Connection>> = lock(&self.users)
            .get(user)
            .map(|c| c.iter().filter_map(|(_, c)| c.upgrade()).collect())
            .unwrap_or_default();
        for connection in &connections {
            self.cut(connection, CutOff::Disconnected);
        }
        connections.len()
    }

    /// Another node's question, for this node's connections.
    fn answer_question(&self, question: &Question) -> serde_json::Value {
        match question {
            Question::Disconnect { user } => serde_json::json!(self.disconnect_local(user)),
            Question::Channels { prefix } => serde_json::json!(self
                .local_channels(prefix)
                .into_iter()
                .map(|(name, count)| (name.as_str().to_owned(), count))
                .collect::<Vec<_>>()),
        }
    }
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

    /// Ends the buffering of a subscriber whose attach returned `position`:
    /// queues what arrived meanwhile after that position, drops the rest
    /// (it is in the position, or in what the subscriber recovers).
    /// Under the shard lock, so that no later message overtakes them.
    fn go_live(&self, channel: &ChannelName, connection: &Arc<Connection>, position: &Position) {
        let mut overflowed = false;
        if let Some(subscribers) = self.shard(channel).get_mut(channel) {
            if let Some(subscriber) = subscribers.by_connection.get_mut(&connection.id) {
                subscriber.start = position.offset;
            }
            match subscribers.attaching.end(connection.id) {
                None => overflowed = true,
                Some(buffered) => {
                    for push in buffered {
                        let after = push.position.as_ref().is_some_and(|p| {
                            p.epoch == position.epoch && p.offset > position.offset
                        });
                        if after && connection.offer(&push, &self.limits) == Offered::Overflowed {
                            overflowed = true;
                            break;
                        }
                    }
                }
            }
        }
        if overflowed {
            self.cut(connection, CutOff::SlowConsumer);
        }
    }

    /// Ends every subscription of `connection` (and with them its presence).
    fn detach_all(&self, connection: &Connection) {
        let channels: Vec<ChannelName> = lock(&connection.channels).drain().collect();
        for channel in channels {
            self.detach(&channel, connection.id);
        }
    }

    /// Cuts `connection` off: marks it (its transport closes with `reason`)
    /// and detaches it from every channel right away, whether or not its
    /// transport is stuck in a write. Must be called with no shard locked.
    /// False if it was cut off already.
    fn cut(&self, connection: &Connection, reason: CutOff) -> bool {
        if !self.mark(connection, reason) {
            return false;
        }
        self.detach_all(connection);
        true
    }

    /// Cuts off slow consumers found under a shard lock.
    fn cut_overflowed(&self, overflowed: Vec<Arc<Connection>>) {
        for connection in overflowed {
            self.cut(&connection, CutOff::SlowConsumer);
        }
    }

    fn mark(&self, connection: &Connection, reason: CutOff) -> bool {
        let first = connection.cut(reason);
        if first && reason == CutOff::SlowConsumer {
            self.cut_offs.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Keeps `connection` on `channel` if `governor` (the one in force now)
    /// still allows it, with its new audience; else evicts it with the
    /// plugin's reason, or because no plugin governs the channel any more.
    fn recheck(
        &self,
        governor: Option<&Governor>,
        channel: &ChannelName,
        connection: &Connection,
        outcome: &mut Reauthorized,
    ) {
        let verdict = match governor {
            Some(governor) => authorize(governor, channel, connection.identity().as_deref()),
            None => Err(Refusal::new(
                ErrorCode::NotFound,
                format!(
                    "no plugin governs `{}` channels any more",
                    channel.namespace()
                ),
            )),
        };
        match verdict {
            Ok((audience, info)) => {
                let updated = self
                    .shard(channel)
                    .get_mut(channel)
                    .and_then(|subscribers| subscribers.reassign(connection.id, audience, info));
                if let Some(member) = updated {
                    let event = self.presence_event(channel, Change::Join, &member, connection.id);
                    self.engine.presence().update(event);
                }
                outcome.kept += 1;
            }
            Err(refusal) => {
                self.evict(connection, channel, &refusal.message);
                outcome.revoked += 1;
            }
        }
    }

    /// Ends a subscription from the server's side and tells the subscriber why.
    fn evict(&self, connection: &Connection, channel: &ChannelName, reason: &str) {
        if lock(&connection.channels).remove(channel) {
            self.detach(channel, connection.id);
            let push = unsubscribed_push(channel, reason);
            if connection.offer(&push, &self.limits) == Offered::Overflowed {
                self.cut(connection, CutOff::SlowConsumer);
            }
        }
    }
}

/// Undoes a subscription that did not go live, like [`Inner::detach`]: the
/// local entry, the presence (a leave if that was the user's last
/// connection here) and, once it counted, the engine's count.
struct Undo<'a> {
    inner: &'a Inner,
    channel: &'a ChannelName,
    connection: u64,
    counted: bool,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (_, left) = self.inner.remove_local(self.channel, self.connection);
        if let Some(member) = left {
            let event =
                self.inner
                    .presence_event(self.channel, Change::Leave, &member, self.connection);
            self.inner.engine.presence().leave(event);
        }
        if self.counted {
            self.inner.engine.detach(self.channel);
        }
    }
}

/// Locks a mutex, ignoring poisoning: the hub's maps stay consistent across
/// a panic because every critical section is a single insert or remove.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
