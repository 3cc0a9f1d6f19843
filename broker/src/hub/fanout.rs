//! Fan-out: from a publication the engine hands over to the queues of the
//! node's subscribers.
//!
//! The engine calls [`Sink::deliver`] in offset order per channel, possibly
//! under one of its locks, so delivering only appends to one of [`LANES`]
//! ordered lanes (chosen by channel). A lane's work runs as a tokio task,
//! started when the lane gets work and ending when it is empty: one channel's
//! publications stay in order, and a channel whose plugin `filter`s runs
//! that call on the blocking pool, so a slow plugin holds up its lane only,
//! never an engine lock, another lane or a tokio worker.
//!
//! A lane's backlog is bounded: past [`LANE_BACKLOG`] publications waiting,
//! the lane's channels are interrupted (their subscribers told to recover)
//! and the backlog dropped, rather than queueing without end behind a plugin
//! that cannot keep up.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;

use super::queue::Offered;
use super::{lock, single_line, Inner, Push};
use crate::channel::ChannelName;
use crate::engine::{Position, Publication, Sink};
use crate::plugins::{Delivery, Governor};
use crate::protocol;

/// Ordered delivery lanes per node.
pub(super) const LANES: usize = 64;

/// Publications one lane may hold before its channels are interrupted.
pub(super) const LANE_BACKLOG: usize = 65_536;

/// One ordered lane of publications waiting for their fan-out.
#[derive(Default)]
pub(super) struct Lane {
    state: Mutex<LaneState>,
}

impl Lane {
    #[cfg(test)]
    pub(super) fn busy(&self) -> bool {
        let state = lock(&self.state);
        state.running || !state.waiting.is_empty()
    }
}

#[derive(Default)]
struct LaneState {
    waiting: VecDeque<Publication>,
    /// A task is draining this lane.
    running: bool,
}

impl Inner {
    pub(super) fn lane_of(&self, channel: &ChannelName) -> usize {
        // Another hash than the shards' would do as well; the same one is free.
        self.hasher.hash_one(channel) as usize % self.lanes.len()
    }

    /// Drains lane `i` until it is empty, then ends.
    async fn run_lane(self: Arc<Self>, i: usize) {
        loop {
            let batch = {
                let mut state = lock(&self.lanes[i].state);
                if state.waiting.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            for publication in batch {
                self.fan_out(publication).await;
            }
        }
    }

    /// Queues `publication` for every local subscriber of its channel (as
    /// its audience gets it); buffers it for subscribers still attaching.
    pub(super) async fn fan_out(&self, publication: Publication) {
        let original = Arc::new(Push::new(&publication, &publication.data));
        let governor = self
            .registry
            .governing(publication.channel.namespace())
            .filter(Governor::filters);
        let variants = match governor {
            // The common case: one frame for everybody.
            None => Variants::Everyone(original),
            Some(governor) => {
                let audiences: Vec<String> = {
                    let shard = self.shard(&publication.channel);
                    let Some(subscribers) = shard.get(&publication.channel) else {
                        return;
                    };
                    subscribers
                        .audiences
                        .keys()
                        .map(|a| a.to_string())
                        .collect()
                };
                // A subscriber attaching meanwhile has an audience missing
                // here and is skipped: the position it reads covers this
                // message (it was published before the subscriber existed).
                Variants::PerAudience(
                    per_audience(governor, &publication, &original, audiences).await,
                )
            }
        };
        let mut overflowed = Vec::new();
        let mut delivered = 0;
        {
            let mut shard = self.shard(&publication.channel);
            let Some(subscribers) = shard.get_mut(&publication.channel) else {
                return;
            };
            for (id, subscriber) in &subscribers.by_connection {
                let push = match &variants {
                    Variants::Everyone(push) => push,
                    Variants::PerAudience(map) => match map.get(&subscriber.audience) {
                        Some(push) => push,
                        None => continue,
                    },
                };
                if subscribers.attaching.buffer(*id, push) {
                    continue;
                }
                let connection = &subscriber.connection;
                match connection.offer(push, &self.limits) {
                    Offered::Queued => delivered += 1,
                    Offered::Overflowed => overflowed.push(connection.clone()),
                    Offered::Refused => {}
                }
            }
        }
        self.deliveries.fetch_add(delivered, Ordering::Relaxed);
        self.cut_overflowed(overflowed);
    }

    /// Ends every local subscription of `channel` (of all channels when
    /// `None`) with an `unsubscribed` push that says to recover.
    fn interrupt(&self, channel: Option<&ChannelName>) {
        let affected = self.subscribed(|name| channel.is_none_or(|c| c == name));
        for (channel, connections) in affected {
            self.interruptions.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                channel = %channel,
                subscribers = connections.len(),
                "stream interrupted: subscribers told to recover"
            );
            for connection in connections {
                self.evict(&connection, &channel, INTERRUPTED);
            }
        }
    }
}

/// The `reason` of the `unsubscribed` push after an interruption.
pub(crate) const INTERRUPTED: &str =
    "the channel's stream was interrupted; subscribe again with `recover` to get what was missed";

impl Sink for Inner {
    fn deliver(&self, publication: Publication) {
        let i = self.lane_of(&publication.channel);
        let start = {
            let mut state = lock(&self.lanes[i].state);
            if state.waiting.len() >= LANE_BACKLOG {
                // Dropping a whole backlog leaves no subscriber of these
                // channels with a silent gap: they are all told to recover.
                let dropped: Vec<ChannelName> =
                    state.waiting.drain(..).map(|p| p.channel).collect();
                drop(state);
                let mut seen = std::collections::HashSet::new();
                for channel in dropped.iter().chain([&publication.channel]) {
                    if seen.insert(channel.clone()) {
                        self.interrupt(Some(channel));
                    }
                }
                return;
            }
            state.waiting.push_back(publication);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            if let Some(me) = self.me.upgrade() {
                tokio::spawn(me.run_lane(i));
            }
        }
    }

    fn interrupted(&self, channel: Option<&ChannelName>) {
        self.interrupt(channel);
    }
}

/// What the subscribers of one message get.
enum Variants {
    Everyone(Arc<Push>),
    /// Audiences missing from the map were skipped by the plugin's `filter`.
    PerAudience(HashMap<Arc<str>, Arc<Push>>),
}

/// One push per audience, from the plugin's `filter` called on the blocking
/// pool. A plugin that fails skips the message for everybody (fail closed;
/// the plugin host counts and logs the fault).
async fn per_audience(
    governor: Governor,
    publication: &Publication,
    original: &Arc<Push>,
    audiences: Vec<String>,
) -> HashMap<Arc<str>, Arc<Push>> {
    let (channel, data) = (publication.channel.clone(), publication.data.clone());
    let filtered = tokio::task::spawn_blocking(move || {
        let deliveries = governor.filter(&channel, &data, &audiences);
        (audiences, deliveries)
    })
    .await;
    let Ok((audiences, deliveries)) = filtered else {
        return HashMap::new();
    };
    audiences
        .into_iter()
        .zip(deliveries)
        .filter_map(|(audience, delivery)| {
            let push = match delivery {
                Delivery::Skip => return None,
                Delivery::Original => original.clone(),
                Delivery::Replace(data) => Arc::new(Push::new(publication, &single_line(&data))),
            };
            Some((Arc::<str>::from(audience), push))
        })
        .collect()
}

impl Push {
    pub(super) fn new(publication: &Publication, data: &str) -> Push {
        Push {
            channel: publication.channel.clone(),
            kind: "message",
            position: Some(Position {
                epoch: publication.epoch.clone(),
                offset: publication.offset,
            }),
            frame: Utf8Bytes::from(protocol::message_push(
                publication.channel.as_str(),
                &publication.epoch,
                publication.offset,
                data,
            )),
            signed_position: OnceLock::new(),
        }
    }
}
