//! The embedded engine: one process, everything in memory.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use super::{Attach, Engine, EngineFuture, HistoryPolicy, Position, Publication, Sink};
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
    #[allow(dead_code)] // read by history and recovery (next slice)
    offset: u64,
    #[allow(dead_code)]
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

    fn attach_now(&self, channel: &ChannelName, attach: Attach<'_>) -> Position {
        let mut shard = self
            .shard(channel)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let log = shard.entry(channel.clone()).or_insert_with(Log::new);
        let position = log.position();
        attach(&position);
        position
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
        attach: Attach<'a>,
    ) -> EngineFuture<'a, Position> {
        let position = self.attach_now(channel, attach);
        Box::pin(std::future::ready(Ok(position)))
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
        let fresh = engine.attach(&a, Box::new(|_| {})).await.unwrap();
        assert_eq!(fresh.offset, 0);
        engine
            .publish(&a, Arc::from("1"), policy(10))
            .await
            .unwrap();
        let mut seen = None;
        let pos = engine
            .attach(&a, Box::new(|p| seen = Some(p.offset)))
            .await
            .unwrap();
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
}
