//! The embedded engine: one process, everything in memory.
//!
//! Channel state has a lifetime. A channel's log is created by its first
//! publish or subscriber (never by reading history), counts the subscribers
//! attached to it, and is freed by a background sweeper once it has none,
//! keeps no history and was not used for `channel_idle`. The sweeper also
//! drops history past its age. All history shares one byte budget: every kept
//! message is linked, in publish order, into one list ([`Ages`]), so the
//! oldest message of all channels is found in O(1) and evicted first.
//!
//! Locks: a shard lock may be held while taking the [`Ages`] lock, never the
//! other way round, and never two shard locks at once.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::presence::{MemoryPresence, Presence};
use super::{
    new_epoch, Attached, Engine, EngineFuture, EngineStats, HistoryPolicy, Outgoing, Position,
    Publication, Sink, Stored,
};
use crate::channel::ChannelName;

const SHARDS: usize = 64;

/// Channels the sweeper looks at per lock of a shard, so that no publish
/// waits long behind it.
const SWEEP_BATCH: usize = 256;

/// The sweeper runs at least this often, whatever `channel_idle` is, so
/// that expired history does not stay in memory for long.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// What a kept message costs beyond its data: its history entry, its node
/// in [`Ages`] and the data's reference-count header. Counted in the budget
/// so that many tiny messages cannot hide behind a small byte total.
pub(crate) const MESSAGE_OVERHEAD: u64 =
    (std::mem::size_of::<Entry>() + std::mem::size_of::<Node>() + 16) as u64;

/// How long channel state and history may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    /// A channel without subscribers and history is freed this long after
    /// its last use (plus at most one sweep interval).
    pub(crate) channel_idle: Duration,
    /// Bytes all history may hold together (data plus [`MESSAGE_OVERHEAD`]
    /// per message); above it the oldest messages of all channels go first.
    pub(crate) max_history_bytes: u64,
    /// With several nodes: how long a node that stopped renewing its
    /// heartbeat keeps its presence members (the memory engine has one node).
    pub(crate) node_timeout: Duration,
}

impl Lifetimes {
    /// How often the sweeper runs: half the idle time, at most 15 s.
    pub(crate) fn sweep_interval(&self) -> Duration {
        (self.channel_idle / 2).clamp(Duration::from_millis(10), MAX_SWEEP_INTERVAL)
    }
}

/// Channel logs in sharded mutexes; a publication is handed to the sink while
/// its shard is locked, which is what keeps deliveries in offset order (the
/// sink only queues it).
pub(crate) struct MemoryEngine {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    sink: Weak<dyn Sink>,
    lifetimes: Lifetimes,
    ages: Mutex<Ages>,
    /// Logs held, over all shards.
    channels: AtomicU64,
    /// Tells logs of the same name apart across a free and a re-creation.
    next_log: AtomicU64,
    /// Messages dropped to stay within the byte budget.
    evicted: AtomicU64,
    presence: MemoryPresence,
    /// Per shard, detaches that found the shard locked. The hub may detach
    /// while a publication of the same shard is being delivered (a slow
    /// consumer cut off from inside `Sink::deliver`), so `detach` must never
    /// wait for the shard; whoever locks it next applies these.
    deferred: Box<[Mutex<Vec<ChannelName>>]>,
}

#[derive(Default)]
struct Shard {
    logs: HashMap<ChannelName, Log>,
    /// Every log's name once, in the order the sweeper visits them.
    rota: VecDeque<ChannelName>,
}

struct Log {
    id: u64,
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Entry>,
    /// Subscriptions attached and not yet detached.
    subscribers: usize,
    /// The age limit of the latest policy seen, for the sweeper.
    ttl: Duration,
    used: Instant,
}

struct Entry {
    offset: u64,
    data: Arc<str>,
    at: Instant,
    /// This message's node in [`Ages`].
    node: usize,
}

/// Every kept message of every channel, oldest first: a doubly linked list
/// in a slab (free nodes are reused), so that appending, unlinking any
/// message and finding the oldest are O(1), and the slab never holds more
/// nodes than the most messages ever kept at once.
#[derive(Default)]
struct Ages {
    nodes: Vec<Node>,
    /// Head of the chain of free nodes (through `next`).
    free: Option<usize>,
    oldest: Option<usize>,
    newest: Option<usize>,
    messages: u64,
    bytes: u64,
}

struct Node {
    prev: Option<usize>,
    next: Option<usize>,
    /// `None` while the node is free.
    channel: Option<ChannelName>,
    log: u64,
    offset: u64,
    bytes: u64,
}

/// The oldest kept message, as [`Ages`] names it.
struct Oldest {
    node: usize,
    channel: ChannelName,
    log: u64,
    offset: u64,
}

impl Ages {
    fn push(&mut self, channel: &ChannelName, log: u64, offset: u64, bytes: u64) -> usize {
        let node = Node {
            prev: self.newest,
            next: None,
            channel: Some(channel.clone()),
            log,
            offset,
            bytes,
        };
        let index = match self.free {
            Some(index) => {
                self.free = self.nodes[index].next;
                self.nodes[index] = node;
                index
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        match self.newest {
            Some(newest) => self.nodes[newest].next = Some(index),
            None => self.oldest = Some(index),
        }
        self.newest = Some(index);
        self.messages += 1;
        self.bytes += bytes;
        index
    }

    fn unlink(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if node.channel.take().is_none() {
            return;
        }
        let (prev, next, bytes) = (node.prev, node.next, node.bytes);
        node.next = self.free;
        self.free = Some(index);
        match prev {
            Some(prev) => self.nodes[prev].next = next,
            None => self.oldest = next,
        }
        match next {
            Some(next) => self.nodes[next].prev = prev,
            None => self.newest = prev,
        }
        self.messages -= 1;
        self.bytes -= bytes;
    }

    fn oldest(&self) -> Option<Oldest> {
        let index = self.oldest?;
        let node = &self.nodes[index];
        Some(Oldest {
            node: index,
            channel: node.channel.clone()?,
            log: node.log,
            offset: node.offset,
        })
    }

    /// Whether `index` still holds that message (nodes are reused).
    fn holds(&self, index: usize, log: u64, offset: u64) -> bool {
        let node = &self.nodes[index];
        node.channel.is_some() && node.log == log && node.offset == offset
    }
}

impl Log {
    fn new(id: u64, now: Instant) -> Self {
        Self {
            id,
            epoch: new_epoch(),
            offset: 0,
            history: VecDeque::new(),
            subscribers: 0,
            ttl: Duration::ZERO,
            used: now,
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }

    /// Marks the log used now under `policy` (the latest one wins).
    fn touch(&mut self, policy: HistoryPolicy, now: Instant) {
        self.ttl = policy.ttl;
        self.used = now;
    }

    /// Keeps the message at the log's latest offset as `policy` says;
    /// returns whether all history is now over the byte budget.
    fn remember(
        &mut self,
        channel: &ChannelName,
        data: Arc<str>,
        policy: HistoryPolicy,
        now: Instant,
        ages: &Mutex<Ages>,
        budget: u64,
    ) -> bool {
        if policy.size == 0 && self.history.is_empty() {
            return false;
        }
        let mut ages = lock(ages);
        if policy.size == 0 {
            for entry in self.history.drain(..) {
                ages.unlink(entry.node);
            }
            return ages.bytes > budget;
        }
        let bytes = data.len() as u64 + MESSAGE_OVERHEAD;
        let node = ages.push(channel, self.id, self.offset, bytes);
        self.history.push_back(Entry {
            offset: self.offset,
            data,
            at: now,
            node,
        });
        while self.history.len() > policy.size {
            if let Some(entry) = self.history.pop_front() {
                ages.unlink(entry.node);
            }
        }
        self.expire(now, &mut ages);
        ages.bytes > budget
    }

    /// Drops the messages older than the log's ttl.
    fn expire(&mut self, now: Instant, ages: &mut Ages) {
        while self
            .history
            .front()
            .is_some_and(|e| now.duration_since(e.at) > self.ttl)
        {
            if let Some(entry) = self.history.pop_front() {
                ages.unlink(entry.node);
            }
        }
    }

    /// Freed by the sweeper: nobody attached, nothing kept, unused for `idle`.
    fn is_idle(&self, now: Instant, idle: Duration) -> bool {
        self.subscribers == 0 && self.history.is_empty() && now.duration_since(self.used) >= idle
    }

    /// The kept entries still inside the ttl, oldest first. The sweeper
    /// drops expired ones a little later, so reads skip them here.
    fn live(&self, ttl: Duration, now: Instant) -> impl DoubleEndedIterator<Item = &Entry> {
        let expired = self
            .history
            .iter()
            .take_while(|e| now.duration_since(e.at) > ttl)
            .count();
        self.history.iter().skip(expired)
    }

    /// Every message after `from`, or `None` unless all of them are kept.
    fn after(&self, from: &Position, policy: HistoryPolicy, now: Instant) -> Option<Vec<Stored>> {
        if from.epoch != self.epoch || from.offset > self.offset {
            return None;
        }
        if from.offset == self.offset {
            return Some(Vec::new());
        }
        let entries: Vec<&Entry> = self
            .live(policy.ttl, now)
            .filter(|e| e.offset > from.offset)
            .collect();
        // Offsets in history are contiguous, so covering the next offset
        // means covering everything up to the latest.
        match entries.first() {
            Some(first) if first.offset == from.offset + 1 => {
                Some(entries.into_iter().map(Entry::stored).collect())
            }
            _ => None,
        }
    }
}

impl Entry {
    fn stored(&self) -> Stored {
        Stored {
            offset: self.offset,
            data: self.data.clone(),
        }
    }
}

impl MemoryEngine {
    /// An engine without a sweeper (see [`Self::start`]).
    pub(crate) fn new(sink: Weak<dyn Sink>, lifetimes: Lifetimes) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            presence: MemoryPresence::new(sink.clone()),
            sink,
            lifetimes,
            ages: Mutex::default(),
            channels: AtomicU64::new(0),
            next_log: AtomicU64::new(1),
            evicted: AtomicU64::new(0),
            deferred: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The engine plus its sweeper, a task that holds only a weak reference
    /// and ends with the engine. Needs a tokio runtime.
    pub(crate) fn start(sink: Weak<dyn Sink>, lifetimes: Lifetimes) -> Arc<Self> {
        let engine = Arc::new(Self::new(sink, lifetimes));
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lifetimes.sweep_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { break };
                engine.sweep().await;
            }
        });
        engine
    }

    fn shard_index(&self, channel: &ChannelName) -> usize {
        self.hasher.hash_one(channel) as usize % self.shards.len()
    }

    fn shard(&self, channel: &ChannelName) -> MutexGuard<'_, Shard> {
        self.lock_shard(self.shard_index(channel))
    }

    /// Locks shard `i` and applies the detaches deferred while it was busy.
    fn lock_shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        let mut shard = lock(&self.shards[i]);
        let deferred = std::mem::take(&mut *lock(&self.deferred[i]));
        if !deferred.is_empty() {
            let now = Instant::now();
            for channel in &deferred {
                Self::apply_detach(&mut shard, channel, now);
            }
        }
        shard
    }

    fn apply_detach(shard: &mut Shard, channel: &ChannelName, now: Instant) {
        if let Some(log) = shard.logs.get_mut(channel) {
            log.subscribers = log.subscribers.saturating_sub(1);
            log.used = now;
        }
    }

    /// The channel's log, created if there is none.
    fn log<'s>(&self, shard: &'s mut Shard, channel: &ChannelName, now: Instant) -> &'s mut Log {
        if !shard.logs.contains_key(channel) {
            let id = self.next_log.fetch_add(1, Ordering::Relaxed);
            shard.rota.push_back(channel.clone());
            self.channels.fetch_add(1, Ordering::Relaxed);
            shard.logs.insert(channel.clone(), Log::new(id, now));
        }
        shard
            .logs
            .get_mut(channel)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    fn publish_now(
        &self,
        channel: &ChannelName,
        data: Arc<str>,
        history: HistoryPolicy,
    ) -> Position {
        let now = Instant::now();
        let (position, over_budget) = {
            let mut shard = self.shard(channel);
            let log = self.log(&mut shard, channel, now);
            log.touch(history, now);
            log.offset += 1;
            let over_budget = log.remember(
                channel,
                data.clone(),
                history,
                now,
                &self.ages,
                self.lifetimes.max_history_bytes,
            );
            let publication = Publication {
                channel: channel.clone(),
                epoch: log.epoch.clone(),
                offset: log.offset,
                data,
            };
            let position = log.position();
            if let Some(sink) = self.sink.upgrade() {
                sink.deliver(publication);
            }
            (position, over_budget)
        };
        if over_budget {
            self.evict_over_budget();
        }
        position
    }

    /// Drops the oldest messages of all channels until history fits the
    /// budget. Each round removes the oldest message or finds that somebody
    /// else did, so every message is evicted at most once: O(1) amortised.
    fn evict_over_budget(&self) {
        loop {
            let oldest = {
                let ages = lock(&self.ages);
                if ages.bytes <= self.lifetimes.max_history_bytes {
                    return;
                }
                match ages.oldest() {
                    Some(oldest) => oldest,
                    None => return,
                }
            };
            // The ages lock is released before the shard is locked (order).
            let mut shard = self.shard(&oldest.channel);
            let mut removed = 0;
            if let Some(log) = shard.logs.get_mut(&oldest.channel) {
                if log.id == oldest.log {
                    let mut ages = lock(&self.ages);
                    while log
                        .history
                        .front()
                        .is_some_and(|e| e.offset <= oldest.offset)
                    {
                        if let Some(entry) = log.history.pop_front() {
                            ages.unlink(entry.node);
                            removed += 1;
                        }
                    }
                }
            }
            if removed == 0 {
                // Not in its log any more: gone already, unless the list
                // still names it (it never should), then unlink it here.
                let mut ages = lock(&self.ages);
                if ages.holds(oldest.node, oldest.log, oldest.offset) {
                    ages.unlink(oldest.node);
                }
            }
            self.evicted.fetch_add(removed, Ordering::Relaxed);
        }
    }

    fn attach_now(
        &self,
        channel: &ChannelName,
        recover_from: Option<&Position>,
        policy: HistoryPolicy,
    ) -> Attached {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        let log = self.log(&mut shard, channel, now);
        log.touch(policy, now);
        log.subscribers += 1;
        let position = log.position();
        let missed = recover_from.and_then(|from| log.after(from, policy, now));
        Attached { position, missed }
    }

    /// Never waits for the shard (see `deferred`): a count that stays high
    /// for a moment only keeps a channel a little longer.
    fn detach_now(&self, channel: &ChannelName) {
        let i = self.shard_index(channel);
        match self.shards[i].try_lock() {
            Ok(mut shard) => Self::apply_detach(&mut shard, channel, Instant::now()),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                Self::apply_detach(&mut poisoned.into_inner(), channel, Instant::now());
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                lock(&self.deferred[i]).push(channel.clone());
            }
        }
    }

    fn history_now(
        &self,
        channel: &ChannelName,
        limit: usize,
        since: Option<u64>,
        policy: HistoryPolicy,
    ) -> (Arc<str>, Vec<Stored>) {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        // Reading creates nothing: a channel without a log has no history,
        // and its epoch is a fresh one that no message carries, so that a
        // recovery from it is honestly not recovered.
        let Some(log) = shard.logs.get_mut(channel) else {
            return (new_epoch(), Vec::new());
        };
        log.touch(policy, now);
        let since = since.unwrap_or(0);
        let mut latest: Vec<Stored> = log
            .live(policy.ttl, now)
            .rev()
            .take_while(|e| e.offset > since)
            .take(limit)
            .map(Entry::stored)
            .collect();
        latest.reverse();
        (log.epoch.clone(), latest)
    }

    /// One round of the sweeper: expires history and frees idle logs, a
    /// batch of channels per shard lock, yielding in between.
    pub(crate) async fn sweep(&self) {
        for i in 0..self.shards.len() {
            let mut left = self.lock_shard(i).rota.len();
            while left > 0 {
                let batch = left.min(SWEEP_BATCH);
                self.sweep_batch(i, batch);
                left -= batch;
                tokio::task::yield_now().await;
            }
        }
    }

    fn sweep_batch(&self, shard: usize, batch: usize) {
        let now = Instant::now();
        let idle = self.lifetimes.channel_idle;
        let mut shard = self.lock_shard(shard);
        let shard = &mut *shard;
        // Taken only once something has expired.
        let mut ages: Option<MutexGuard<'_, Ages>> = None;
        for _ in 0..batch {
            let Some(channel) = shard.rota.pop_front() else {
                return;
            };
            let Some(log) = shard.logs.get_mut(&channel) else {
                continue;
            };
            if log
                .history
                .front()
                .is_some_and(|e| now.duration_since(e.at) > log.ttl)
            {
                log.expire(now, ages.get_or_insert_with(|| lock(&self.ages)));
            }
            if log.is_idle(now, idle) {
                shard.logs.remove(&channel);
                self.channels.fetch_sub(1, Ordering::Relaxed);
            } else {
                shard.rota.push_back(channel);
            }
        }
    }
}

impl Engine for MemoryEngine {
    /// Cannot fail, so a batch is all-or-nothing without more ado.
    fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> EngineFuture<'a, Vec<Position>> {
        let positions = batch
            .iter()
            .map(|o| self.publish_now(&o.channel, o.data.clone(), o.history))
            .collect();
        Box::pin(std::future::ready(Ok(positions)))
    }

    /// The sink is called under the shard lock, so once the log is found
    /// attached every later publication reaches it: no wait needed.
    fn attach<'a>(
        &'a self,
        channel: &'a ChannelName,
        recover_from: Option<&'a Position>,
        history: HistoryPolicy,
    ) -> EngineFuture<'a, Attached> {
        let attached = self.attach_now(channel, recover_from, history);
        Box::pin(std::future::ready(Ok(attached)))
    }

    fn detach(&self, channel: &ChannelName) {
        self.detach_now(channel);
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        limit: usize,
        since: Option<u64>,
        history: HistoryPolicy,
    ) -> EngineFuture<'a, (Arc<str>, Vec<Stored>)> {
        let found = self.history_now(channel, limit, since, history);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn presence(&self) -> &dyn Presence {
        &self.presence
    }

    /// One node: nobody else to ask.
    fn ask_others<'a>(
        &'a self,
        _: &'a super::Question,
    ) -> EngineFuture<'a, Vec<serde_json::Value>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn stats(&self) -> EngineStats {
        let (history_messages, history_bytes) = {
            let ages = lock(&self.ages);
            (ages.messages, ages.bytes)
        };
        EngineStats {
            channels: self.channels.load(Ordering::Relaxed),
            history_messages,
            history_bytes,
            history_evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the
/// maps and the list consistent before it can panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64, String)>>);
    impl Sink for Recorder {
        fn deliver(&self, p: Publication) {
            self.0
                .lock()
                .unwrap()
                .push((p.channel.to_string(), p.offset, p.data.to_string()));
        }
        fn interrupted(&self, _: Option<&ChannelName>) {}
        fn presence(&self, _: super::super::PresenceEvent) {}
        fn answer(&self, _: &super::super::Question) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    impl MemoryEngine {
        async fn publish_one(
            &self,
            channel: &ChannelName,
            data: Arc<str>,
            history: HistoryPolicy,
        ) -> Result<Position, super::super::EngineError> {
            let outgoing = Outgoing {
                channel: channel.clone(),
                data,
                history,
            };
            Ok(self
                .publish(std::slice::from_ref(&outgoing))
                .await?
                .remove(0))
        }
    }

    const IDLE: Duration = Duration::from_secs(30);

    fn lifetimes(max_history_bytes: u64) -> Lifetimes {
        Lifetimes {
            channel_idle: IDLE,
            max_history_bytes,
            node_timeout: IDLE,
        }
    }

    fn policy(size: usize) -> HistoryPolicy {
        HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
        }
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    /// An engine whose sink is kept alive by the returned handle.
    fn engine(max_history_bytes: u64) -> (MemoryEngine, Arc<dyn Sink>) {
        let sink: Arc<dyn Sink> = Arc::new(Recorder::default());
        (
            MemoryEngine::new(Arc::downgrade(&sink), lifetimes(max_history_bytes)),
            sink,
        )
    }

    fn subscribers(engine: &MemoryEngine, channel: &ChannelName) -> Option<usize> {
        engine
            .shard(channel)
            .logs
            .get(channel)
            .map(|l| l.subscribers)
    }

    async fn attach(engine: &MemoryEngine, channel: &ChannelName) -> Position {
        engine
            .attach(channel, None, policy(10))
            .await
            .unwrap()
            .position
    }

    /// What a recovery from `from` replays, by offset.
    async fn recover(
        engine: &MemoryEngine,
        channel: &ChannelName,
        from: Position,
    ) -> Option<Vec<u64>> {
        let missed = engine
            .attach(channel, Some(&from), policy(10))
            .await
            .unwrap()
            .missed
            .map(|m| offsets(&m));
        engine.detach(channel);
        missed
    }

    #[tokio::test]
    async fn offsets_grow_per_channel_and_reach_the_sink_in_order() {
        let recorder: Arc<Recorder> = Arc::new(Recorder::default());
        let sink: Arc<dyn Sink> = recorder.clone();
        let engine = MemoryEngine::new(Arc::downgrade(&sink), lifetimes(u64::MAX));
        let a = channel("public:a");
        let b = channel("public:b");
        let p1 = engine
            .publish_one(&a, Arc::from("1"), policy(10))
            .await
            .unwrap();
        let p2 = engine
            .publish_one(&a, Arc::from("2"), policy(10))
            .await
            .unwrap();
        let q1 = engine
            .publish_one(&b, Arc::from("3"), policy(10))
            .await
            .unwrap();
        assert_eq!((p1.offset, p2.offset, q1.offset), (1, 2, 1));
        assert_eq!(p1.epoch, p2.epoch);
        assert_ne!(p1.epoch, q1.epoch, "each channel has its own epoch");
        let seen = recorder.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("public:a".into(), 1, "1".into()),
                ("public:a".into(), 2, "2".into()),
                ("public:b".into(), 1, "3".into())
            ]
        );
    }

    #[tokio::test]
    async fn attach_sees_the_latest_position() {
        let (engine, _sink) = engine(u64::MAX);
        let a = channel("public:a");
        let fresh = engine.attach(&a, None, policy(10)).await.unwrap();
        assert!(fresh.missed.is_none(), "no recovery was asked for");
        let fresh = fresh.position;
        assert_eq!(fresh.offset, 0);
        engine
            .publish_one(&a, Arc::from("1"), policy(10))
            .await
            .unwrap();
        let pos = engine.attach(&a, None, policy(10)).await.unwrap().position;
        assert_eq!(pos.offset, 1);
        assert_eq!(pos.epoch, fresh.epoch);
        assert_eq!(subscribers(&engine, &a), Some(2), "both attaches count");
    }

    #[tokio::test]
    async fn history_is_bounded_by_size_and_the_budget_counts_what_is_kept() {
        let (engine, _sink) = engine(u64::MAX);
        let a = channel("public:a");
        for i in 1..=1000 {
            engine
                .publish_one(&a, Arc::from(format!("{:03}", i % 1000)), policy(3))
                .await
                .unwrap();
        }
        let (_, kept) = engine.history(&a, 10, None, policy(3)).await.unwrap();
        assert_eq!(offsets(&kept), vec![998, 999, 1000]);
        let stats = engine.stats();
        assert_eq!(stats.history_messages, 3);
        assert_eq!(stats.history_bytes, 3 * (3 + MESSAGE_OVERHEAD));
        assert!(
            lock(&engine.ages).nodes.len() <= 4,
            "the age list reuses its nodes: it never holds more than were kept at once"
        );
        engine
            .publish_one(&a, Arc::from("x"), policy(0))
            .await
            .unwrap();
        let (_, kept) = engine.history(&a, 10, None, policy(0)).await.unwrap();
        assert!(kept.is_empty(), "size 0 keeps nothing");
        assert_eq!(
            (
                engine.stats().history_messages,
                engine.stats().history_bytes
            ),
            (0, 0)
        );
    }

    async fn engine_with(
        channel: &ChannelName,
        messages: u64,
        keep: usize,
    ) -> (MemoryEngine, Arc<dyn Sink>) {
        let (engine, sink) = engine(u64::MAX);
        for i in 1..=messages {
            engine
                .publish_one(channel, Arc::from(i.to_string()), policy(keep))
                .await
                .unwrap();
        }
        (engine, sink)
    }

    fn offsets(stored: &[Stored]) -> Vec<u64> {
        stored.iter().map(|s| s.offset).collect()
    }

    #[tokio::test]
    async fn history_gives_the_latest_oldest_first_after_since() {
        let a = channel("public:a");
        let (engine, _sink) = engine_with(&a, 10, 5).await;
        let (epoch, all) = engine.history(&a, 100, None, policy(5)).await.unwrap();
        assert_eq!(offsets(&all), vec![6, 7, 8, 9, 10]);
        assert_eq!(&*all[0].data, "6");
        let (_, two) = engine.history(&a, 2, None, policy(5)).await.unwrap();
        assert_eq!(offsets(&two), vec![9, 10]);
        let (_, since) = engine.history(&a, 100, Some(8), policy(5)).await.unwrap();
        assert_eq!(offsets(&since), vec![9, 10]);
        let position = attach(&engine, &a).await;
        assert_eq!(position.epoch, epoch, "history reports the channel's epoch");
        let expired = HistoryPolicy {
            size: 5,
            ttl: Duration::ZERO,
        };
        std::thread::sleep(Duration::from_millis(2));
        let (_, none) = engine.history(&a, 100, None, expired).await.unwrap();
        assert!(none.is_empty(), "expired messages are not history");
    }

    #[tokio::test]
    async fn recovery_is_all_or_nothing() {
        let a = channel("public:a");
        let (engine, _sink) = engine_with(&a, 10, 5).await;
        let (epoch, _) = engine.history(&a, 0, None, policy(5)).await.unwrap();
        let at = |offset: u64, epoch: &Arc<str>| Position {
            epoch: epoch.clone(),
            offset,
        };
        let missed = |from: Position| {
            let engine = &engine;
            let a = &a;
            async move {
                engine
                    .attach(a, Some(&from), policy(5))
                    .await
                    .unwrap()
                    .missed
                    .map(|m| offsets(&m))
            }
        };
        assert_eq!(missed(at(7, &epoch)).await, Some(vec![8, 9, 10]));
        assert_eq!(
            missed(at(5, &epoch)).await,
            Some(vec![6, 7, 8, 9, 10]),
            "the oldest kept message is exactly the next one"
        );
        assert_eq!(missed(at(10, &epoch)).await, Some(vec![]));
        assert_eq!(missed(at(4, &epoch)).await, None, "6 is the oldest kept");
        assert_eq!(missed(at(11, &epoch)).await, None, "from the future");
        let other: Arc<str> = Arc::from("another");
        assert_eq!(missed(at(9, &other)).await, None, "another epoch");
    }

    #[tokio::test]
    async fn reading_history_of_an_unknown_channel_creates_nothing() {
        let (engine, _sink) = engine(u64::MAX);
        let a = channel("public:never-used");
        let (epoch, messages) = engine.history(&a, 10, None, policy(10)).await.unwrap();
        assert!(messages.is_empty());
        let (again, _) = engine.history(&a, 10, None, policy(10)).await.unwrap();
        assert_eq!(engine.stats().channels, 0, "nothing is held for a read");
        assert_ne!(epoch, again, "each read of nothing gets a fresh epoch");
        let position = attach(&engine, &a).await;
        assert_ne!(position.epoch, epoch, "no message ever carries that epoch");
        assert_eq!(
            recover(&engine, &a, Position { epoch, offset: 0 }).await,
            None,
            "so a recovery from it is honestly not recovered"
        );
        assert_eq!(engine.stats().channels, 1, "subscribing holds the channel");
    }

    #[tokio::test]
    async fn an_idle_channel_is_freed_after_its_last_use_and_comes_back_with_a_new_epoch() {
        tokio::time::pause();
        let (engine, _sink) = engine(u64::MAX);
        let a = channel("public:a");
        let first = attach(&engine, &a).await;
        engine.detach(&a);
        assert_eq!(subscribers(&engine, &a), Some(0));
        tokio::time::advance(IDLE - Duration::from_secs(1)).await;
        // A read is a use, too.
        engine.history(&a, 10, None, policy(10)).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        engine.sweep().await;
        assert_eq!(
            engine.stats().channels,
            1,
            "used {:?} ago",
            Duration::from_secs(2)
        );
        tokio::time::advance(IDLE).await;
        engine.sweep().await;
        assert_eq!(engine.stats().channels, 0, "idle for {IDLE:?}: freed");
        assert!(engine.shard(&a).rota.is_empty());

        let again = attach(&engine, &a).await;
        assert_ne!(
            again.epoch, first.epoch,
            "a freed channel starts a new epoch"
        );
        assert_eq!(
            recover(&engine, &a, first).await,
            None,
            "recovering across the free is not recovered"
        );
    }

    #[tokio::test]
    async fn a_channel_with_a_subscriber_or_history_is_kept() {
        tokio::time::pause();
        let (engine, _sink) = engine(u64::MAX);
        let watched = channel("public:watched");
        let kept = channel("public:kept");
        attach(&engine, &watched).await;
        attach(&engine, &watched).await;
        engine.detach(&watched);
        engine
            .publish_one(&kept, Arc::from("1"), policy(10))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        engine.sweep().await;
        assert_eq!(
            engine.stats().channels,
            2,
            "a subscriber, and 59 s old history"
        );
        assert_eq!(subscribers(&engine, &watched), Some(1));
        // The history (60 s) expires; last used 61 s ago, `kept` goes at once.
        tokio::time::advance(Duration::from_secs(2)).await;
        engine.sweep().await;
        assert_eq!(engine.stats().channels, 1);
        assert_eq!(subscribers(&engine, &watched), Some(1), "still subscribed");
        engine.detach(&watched);
        tokio::time::advance(IDLE).await;
        engine.sweep().await;
        assert_eq!(engine.stats().channels, 0);
    }

    #[tokio::test]
    async fn history_expires_without_a_publish() {
        tokio::time::pause();
        let (engine, _sink) = engine(u64::MAX);
        let a = channel("public:quiet");
        let short = HistoryPolicy {
            size: 10,
            ttl: Duration::from_secs(5),
        };
        for i in 0..3 {
            engine
                .publish_one(&a, Arc::from(i.to_string()), short)
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(4)).await;
        engine.sweep().await;
        assert_eq!(engine.stats().history_messages, 3, "not yet 5 s old");
        tokio::time::advance(Duration::from_secs(2)).await;
        engine.sweep().await;
        let stats = engine.stats();
        assert_eq!((stats.history_messages, stats.history_bytes), (0, 0));
        assert_eq!(
            stats.channels,
            1,
            "expired, but used {:?} ago",
            Duration::from_secs(6)
        );
        tokio::time::advance(IDLE).await;
        engine.sweep().await;
        assert_eq!(engine.stats().channels, 0);
    }

    #[tokio::test]
    async fn the_budget_evicts_the_oldest_messages_of_all_channels_first() {
        let cost = 1 + MESSAGE_OVERHEAD;
        let (engine, _sink) = engine(3 * cost);
        let (a, b, c) = (
            channel("public:a"),
            channel("public:b"),
            channel("public:c"),
        );
        let mut epochs = HashMap::new();
        for (channel, data) in [(&a, "1"), (&b, "2"), (&a, "3"), (&c, "4"), (&b, "5")] {
            let position = engine
                .publish_one(channel, Arc::from(data), policy(10))
                .await
                .unwrap();
            epochs.insert(channel.clone(), position.epoch);
        }
        let kept = |channel: ChannelName| {
            let engine = &engine;
            async move {
                let (_, messages) = engine
                    .history(&channel, 10, None, policy(10))
                    .await
                    .unwrap();
                messages
                    .iter()
                    .map(|m| m.data.to_string())
                    .collect::<Vec<_>>()
            }
        };
        // "1" (a) and "2" (b) were the oldest: gone; the three latest fit.
        assert_eq!(kept(a.clone()).await, vec!["3"]);
        assert_eq!(kept(b.clone()).await, vec!["5"]);
        assert_eq!(kept(c.clone()).await, vec!["4"]);
        let stats = engine.stats();
        assert_eq!(
            (
                stats.history_messages,
                stats.history_bytes,
                stats.history_evicted
            ),
            (3, 3 * cost, 2)
        );
        let from = |channel: &ChannelName, offset| Position {
            epoch: epochs[channel].clone(),
            offset,
        };
        assert_eq!(
            recover(&engine, &a, from(&a, 0)).await,
            None,
            "offset 1 of `a` was evicted: not recovered"
        );
        assert_eq!(recover(&engine, &a, from(&a, 1)).await, Some(vec![2]));

        // A message larger than the whole budget evicts everything, itself too.
        engine
            .publish_one(&c, Arc::from("x".repeat(4 * cost as usize)), policy(10))
            .await
            .unwrap();
        let stats = engine.stats();
        assert_eq!((stats.history_messages, stats.history_bytes), (0, 0));
    }

    /// A sink that, like the hub cutting off a slow consumer, detaches
    /// from the channel it is being handed a publication of.
    #[derive(Default)]
    struct DetachingSink(std::sync::OnceLock<Weak<MemoryEngine>>);
    impl Sink for DetachingSink {
        fn deliver(&self, p: Publication) {
            if let Some(engine) = self.0.get().and_then(Weak::upgrade) {
                engine.detach(&p.channel);
            }
        }
        fn interrupted(&self, _: Option<&ChannelName>) {}
        fn presence(&self, _: super::super::PresenceEvent) {}
        fn answer(&self, _: &super::super::Question) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    #[tokio::test]
    async fn detaching_during_delivery_does_not_deadlock_and_is_applied_later() {
        let sink = Arc::new(DetachingSink::default());
        let dyn_sink: Arc<dyn Sink> = sink.clone();
        let engine = Arc::new(MemoryEngine::new(
            Arc::downgrade(&dyn_sink),
            lifetimes(u64::MAX),
        ));
        sink.0.set(Arc::downgrade(&engine)).ok().unwrap();
        let a = channel("public:cut-while-delivering");
        attach(&engine, &a).await;
        assert_eq!(subscribers(&engine, &a), Some(1));
        // Delivered under the shard lock; the detach inside must not wait for it.
        engine
            .publish_one(&a, Arc::from("1"), policy(10))
            .await
            .unwrap();
        assert_eq!(
            subscribers(&engine, &a),
            Some(0),
            "applied on the next lock"
        );
    }

    #[test]
    fn attach_and_detach_stay_balanced_under_concurrency() {
        let (engine, _sink) = engine(u64::MAX);
        let engine = Arc::new(engine);
        let a = channel("public:busy");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (engine, a) = (engine.clone(), a.clone());
                std::thread::spawn(move || {
                    for i in 0..500 {
                        engine.attach_now(&a, None, policy(10));
                        if i % 7 == 0 {
                            engine.publish_now(&a, Arc::from("1"), policy(10));
                        }
                        engine.detach_now(&a);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(subscribers(&engine, &a), Some(0));
    }

    #[tokio::test]
    async fn the_sweeper_frees_idle_channels_and_ends_with_the_engine() {
        tokio::time::pause();
        let sink: Arc<dyn Sink> = Arc::new(Recorder::default());
        let engine = MemoryEngine::start(Arc::downgrade(&sink), lifetimes(u64::MAX));
        for i in 0..1000 {
            let name = channel(&format!("public:flood-{i}"));
            engine.history(&name, 10, None, policy(10)).await.unwrap();
            attach(&engine, &name).await;
            engine.detach(&name);
        }
        assert_eq!(engine.stats().channels, 1000);
        // Idle time plus one sweep interval, and then some for the sweep itself.
        tokio::time::sleep(IDLE + lifetimes(0).sweep_interval() + Duration::from_secs(1)).await;
        assert_eq!(engine.stats().channels, 0, "freed by the sweeper alone");
        let weak = Arc::downgrade(&engine);
        drop(engine);
        assert_eq!(weak.strong_count(), 0, "the sweeper keeps no engine alive");
        tokio::time::sleep(IDLE).await;
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0,
            "the sweeper ended with the engine"
        );
    }
}
