//! The embedded engine: one process, everything in memory.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use super::{
    Attach, Attached, Engine, EngineFuture, HistoryPolicy, Position, Publication, Sink, Stored,
};
use crate::channel::ChannelName;

const SHARDS: usize = 64;

/// Channel logs in sharded mutexes; a publication is handed to the sink while
/// its shard is locked, which is what keeps deliveries in offset order.
pub(crate) struct MemoryEngine {
    shards: Box<[Mutex<HashMap<ChannelName, Log>>]>,
    hasher: RandomState,
    sink: Weak<dyn Sink>,
}

struct Log {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Entry>,
}

struct Entry {
    offset: u64,
    data: Arc<str>,
    at: Instant,
}

impl Log {
    fn new() -> Self {
        Self {
            epoch: new_epoch(),
            offset: 0,
            history: VecDeque::new(),
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }

    fn remember(&mut self, offset: u64, data: Arc<str>, policy: HistoryPolicy) {
        if policy.size == 0 {
            self.history.clear();
            return;
        }
        let now = Instant::now();
        self.history.push_back(Entry {
            offset,
            data,
            at: now,
        });
        while self.history.len() > policy.size {
            self.history.pop_front();
        }
        while self
            .history
            .front()
            .is_some_and(|e| now.duration_since(e.at) > policy.ttl)
        {
            self.history.pop_front();
        }
    }

    /// The kept entries still inside the ttl, oldest first. Expired ones
    /// are only dropped on the next publish, so reads skip them here.
    fn live(&self, ttl: std::time::Duration) -> impl DoubleEndedIterator<Item = &Entry> {
        let now = Instant::now();
        let expired = self
            .history
            .iter()
            .take_while(|e| now.duration_since(e.at) > ttl)
            .count();
        self.history.iter().skip(expired)
    }

    /// Every message after `from`, or `None` unless all of them are kept.
    fn after(&self, from: &Position, policy: HistoryPolicy) -> Option<Vec<Stored>> {
        if from.epoch != self.epoch || from.offset > self.offset {
            return None;
        }
        if from.offset == self.offset {
            return Some(Vec::new());
        }
        let entries: Vec<&Entry> = self
            .live(policy.ttl)
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

/// A fresh stream generation: random, so a restarted broker never reuses one.
fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:012x}", rand::random::<u64>() >> 16))
}

impl MemoryEngine {
    pub(crate) fn new(sink: Weak<dyn Sink>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            sink,
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, Log>> {
        let i = self.hasher.hash_one(channel) as usize % self.shards.len();
        &self.shards[i]
    }

    fn publish_now(
        &self,
        channel: &ChannelName,
        data: Arc<str>,
        history: HistoryPolicy,
    ) -> Position {
        let mut shard = self
            .shard(channel)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let log = shard.entry(channel.clone()).or_insert_with(Log::new);
        log.offset += 1;
        log.remember(log.offset, data.clone(), history);
        let publication = Publication {
            channel: channel.clone(),
            epoch: log.epoch.clone(),
            offset: log.offset,
            data,
        };
        let position = log.position();
        if let Some(sink) = self.sink.upgrade() {
            sink.deliver(&publication);
        }
        position
    }

    fn attach_now(
        &self,
        channel: &ChannelName,
        recover_from: Option<&Position>,
        policy: HistoryPolicy,
        attach: Attach<'_>,
    ) -> Attached {
        let mut shard = self
            .shard(channel)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let log = shard.entry(channel.clone()).or_insert_with(Log::new);
        let position = log.position();
        let missed = recover_from.and_then(|from| log.after(from, policy));
        attach(&position);
        Attached { position, missed }
    }

    fn history_now(
        &self,
        channel: &ChannelName,
        limit: usize,
        since: Option<u64>,
        policy: HistoryPolicy,
    ) -> (Arc<str>, Vec<Stored>) {
        let mut shard = self
            .shard(channel)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Created if new, so that the epoch returned is the one later
        // subscribers and recoveries see.
        let log = shard.entry(channel.clone()).or_insert_with(Log::new);
        let since = since.unwrap_or(0);
        let mut latest: Vec<Stored> = log
            .live(policy.ttl)
            .rev()
            .take_while(|e| e.offset > since)
            .take(limit)
            .map(Entry::stored)
            .collect();
        latest.reverse();
        (log.epoch.clone(), latest)
    }
}

impl Engine for MemoryEngine {
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: Arc<str>,
        history: HistoryPolicy,
    ) -> EngineFuture<'a, Position> {
        let position = self.publish_now(channel, data, history);
        Box::pin(std::future::ready(Ok(position)))
    }

    fn attach<'a>(
        &'a self,
        channel: &'a ChannelName,
        recover_from: Option<&'a Position>,
        history: HistoryPolicy,
        attach: Attach<'a>,
    ) -> EngineFuture<'a, Attached> {
        let attached = self.attach_now(channel, recover_from, history, attach);
        Box::pin(std::future::ready(Ok(attached)))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64, String)>>);
    impl Sink for Recorder {
        fn deliver(&self, p: &Publication) {
            self.0
                .lock()
                .unwrap()
                .push((p.channel.to_string(), p.offset, p.data.to_string()));
        }
    }

    fn policy(size: usize) -> HistoryPolicy {
        HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn offsets_grow_per_channel_and_reach_the_sink_in_order() {
        let recorder: Arc<Recorder> = Arc::new(Recorder::default());
        let sink: Arc<dyn Sink> = recorder.clone();
        let engine = MemoryEngine::new(Arc::downgrade(&sink));
        let a = ChannelName::parse("public:a").unwrap();
        let b = ChannelName::parse("public:b").unwrap();
        let p1 = engine
            .publish(&a, Arc::from("1"), policy(10))
            .await
            .unwrap();
        let p2 = engine
            .publish(&a, Arc::from("2"), policy(10))
            .await
            .unwrap();
        let q1 = engine
            .publish(&b, Arc::from("3"), policy(10))
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
        let sink: Arc<dyn Sink> = Arc::new(Recorder::default());
        let engine = MemoryEngine::new(Arc::downgrade(&sink));
        let a = ChannelName::parse("public:a").unwrap();
        let fresh = engine
            .attach(&a, None, policy(10), Box::new(|_| {}))
            .await
            .unwrap();
        assert!(fresh.missed.is_none(), "no recovery was asked for");
        let fresh = fresh.position;
        assert_eq!(fresh.offset, 0);
        engine
            .publish(&a, Arc::from("1"), policy(10))
            .await
            .unwrap();
        let mut seen = None;
        let pos = engine
            .attach(&a, None, policy(10), Box::new(|p| seen = Some(p.offset)))
            .await
            .unwrap()
            .position;
        assert_eq!((pos.offset, seen), (1, Some(1)));
        assert_eq!(pos.epoch, fresh.epoch);
    }

    #[test]
    fn history_is_bounded_by_size() {
        let mut log = Log::new();
        for i in 1..=5 {
            log.remember(i, Arc::from(i.to_string()), policy(3));
        }
        let kept: Vec<u64> = log.history.iter().map(|e| e.offset).collect();
        assert_eq!(kept, vec![3, 4, 5]);
        log.remember(6, Arc::from("6"), policy(0));
        assert!(log.history.is_empty());
    }

    async fn engine_with(channel: &ChannelName, messages: u64, keep: usize) -> MemoryEngine {
        let sink: Arc<dyn Sink> = Arc::new(Recorder::default());
        let engine = MemoryEngine::new(Arc::downgrade(&sink));
        for i in 1..=messages {
            engine
                .publish(channel, Arc::from(i.to_string()), policy(keep))
                .await
                .unwrap();
        }
        engine
    }

    fn offsets(stored: &[Stored]) -> Vec<u64> {
        stored.iter().map(|s| s.offset).collect()
    }

    #[tokio::test]
    async fn history_gives_the_latest_oldest_first_after_since() {
        let a = ChannelName::parse("public:a").unwrap();
        let engine = engine_with(&a, 10, 5).await;
        let (epoch, all) = engine.history(&a, 100, None, policy(5)).await.unwrap();
        assert_eq!(offsets(&all), vec![6, 7, 8, 9, 10]);
        assert_eq!(&*all[0].data, "6");
        let (_, two) = engine.history(&a, 2, None, policy(5)).await.unwrap();
        assert_eq!(offsets(&two), vec![9, 10]);
        let (_, since) = engine.history(&a, 100, Some(8), policy(5)).await.unwrap();
        assert_eq!(offsets(&since), vec![9, 10]);
        let position = engine
            .attach(&a, None, policy(5), Box::new(|_| {}))
            .await
            .unwrap()
            .position;
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
        let a = ChannelName::parse("public:a").unwrap();
        let engine = engine_with(&a, 10, 5).await;
        let (epoch, _) = engine.history(&a, 0, None, policy(5)).await.unwrap();
        let recover = |offset: u64, epoch: &Arc<str>| Position {
            epoch: epoch.clone(),
            offset,
        };
        let missed = |from: Position| {
            let engine = &engine;
            let a = &a;
            async move {
                engine
                    .attach(a, Some(&from), policy(5), Box::new(|_| {}))
                    .await
                    .unwrap()
                    .missed
                    .map(|m| offsets(&m))
            }
        };
        assert_eq!(missed(recover(7, &epoch)).await, Some(vec![8, 9, 10]));
        assert_eq!(
            missed(recover(5, &epoch)).await,
            Some(vec![6, 7, 8, 9, 10]),
            "the oldest kept message is exactly the next one"
        );
        assert_eq!(missed(recover(10, &epoch)).await, Some(vec![]));
        assert_eq!(
            missed(recover(4, &epoch)).await,
            None,
            "6 is the oldest kept"
        );
        assert_eq!(missed(recover(11, &epoch)).await, None, "from the future");
        let other: Arc<str> = Arc::from("another");
        assert_eq!(missed(recover(9, &other)).await, None, "another epoch");
    }
}
