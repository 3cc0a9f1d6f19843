//! Fan-out: from what the engine hands over (messages, presence changes)
//! to the queues of the node's subscribers.
//!
//! The engine calls [`Sink::deliver`] and [`Sink::presence`] in order per
//! channel, possibly under one of its locks. Each channel belongs to one of
//! [`LANES`] ordered lanes. Work that needs no plugin call (a message on a
//! channel without a `filter`, a join or a leave) is done at once by the
//! caller when its lane is idle: offering a shared pointer to each queue is
//! cheap, and the push is queued before `publish` returns (as a client that
//! publishes and then asks expects). Anything else, and anything that
//! arrives while the lane is busy, waits in the lane, which a tokio task
//! drains in order; a `filter` call runs on the blocking pool, so a slow
//! plugin holds up its lane only, never an engine lock, another lane or a
//! tokio worker.
//!
//! A lane's backlog is bounded: past [`LANE_BACKLOG`] items waiting, the
//! lane's channels are interrupted (their subscribers told to recover) and
//! the backlog dropped, rather than queueing without end behind a plugin
//! that cannot keep up.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;

use super::queue::Offered;
use super::subscribers::presence_push;
use super::{lock, single_line, Connection, Inner, Push};
use crate::channel::ChannelName;
use crate::engine::{Position, PresenceEvent, Publication, Sink};
use crate::plugins::{Delivery, Governor};
use crate::protocol;

/// Ordered delivery lanes per node.
pub(super) const LANES: usize = 64;

/// Items one lane may hold before its channels are interrupted.
pub(super) const LANE_BACKLOG: usize = 65_536;

/// One ordered lane of work waiting for its fan-out.
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
    waiting: VecDeque<Work>,
    /// Somebody (a task, or a caller doing plain work) is working the lane.
    running: bool,
}

/// What a lane carries.
enum Work {
    Message(Publication),
    Presence(PresenceEvent),
}

impl Work {
    fn channel(&self) -> &ChannelName {
        match self {
            Work::Message(p) => &p.channel,
            Work::Presence(e) => &e.channel,
        }
    }
}

/// How a lane took new work.
enum Taken {
    /// Queued behind other work (a task drains it).
    Queued,
    /// The lane was idle and is now the caller's: do the work, then release.
    Claimed(Work),
    /// The backlog overflowed and was dropped, with these channels.
    Overflowed(Vec<ChannelName>),
}

impl Inner {
    pub(super) fn lane_of(&self, channel: &ChannelName) -> usize {
        // Another hash than the shards' would do as well; the same one is free.
        self.hasher.hash_one(channel) as usize % self.lanes.len()
    }

    /// Hands `work` to its lane: done here and now when the lane is idle and
    /// the work is plain, else queued for the lane's task.
    fn take(&self, work: Work) {
        let i = self.lane_of(work.channel());
        let plain = match &work {
            Work::Message(p) => !self.filters(&p.channel),
            Work::Presence(_) => true,
        };
        let taken = {
            let mut state = lock(&self.lanes[i].state);
            if state.waiting.len() >= LANE_BACKLOG {
                let mut dropped: Vec<ChannelName> = state
                    .waiting
                    .drain(..)
                    .map(|w| w.channel().clone())
                    .collect();
                dropped.push(work.channel().clone());
                Taken::Overflowed(dropped)
            } else if !state.running && plain {
                state.running = true;
                Taken::Claimed(work)
            } else {
                state.waiting.push_back(work);
                if std::mem::replace(&mut state.running, true) {
                    Taken::Queued
                } else {
                    drop(state);
                    self.start_lane(i);
                    Taken::Queued
                }
            }
        };
        match taken {
            Taken::Queued => {}
            Taken::Claimed(work) => {
                match work {
                    Work::Message(publication) => {
                        self.offer_all(
                            &publication.channel,
                            &Variants::Everyone(message(&publication)),
                        );
                    }
                    Work::Presence(event) => self.announce(&event),
                }
                self.release(i);
            }
            Taken::Overflowed(dropped) => {
                // Dropping a whole backlog leaves no subscriber of these
                // channels with a silent gap: they are all told to recover.
                let mut seen = HashSet::new();
                for channel in dropped {
                    if seen.insert(channel.clone()) {
                        self.interrupt(Some(&channel));
                    }
                }
            }
        }
    }

    /// Ends a caller's turn on lane `i`: work queued meanwhile goes to a task.
    fn release(&self, i: usize) {
        let mut state = lock(&self.lanes[i].state);
        if state.waiting.is_empty() {
            state.running = false;
        } else {
            drop(state);
            self.start_lane(i);
        }
    }

    fn start_lane(&self, i: usize) {
        match self.me.upgrade() {
            Some(me) => {
                tokio::spawn(me.run_lane(i));
            }
            None => lock(&self.lanes[i].state).running = false,
        }
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
            for work in batch {
                match work {
                    Work::Message(publication) => self.fan_out(publication).await,
                    Work::Presence(event) => self.announce(&event),
                }
            }
        }
    }

    fn filters(&self, channel: &ChannelName) -> bool {
        self.registry
            .governing(channel.namespace())
            .is_some_and(|g| g.filters())
    }

    /// Queues `publication` for every local subscriber of its channel (as
    /// its audience gets it); buffers it for subscribers still attaching.
    async fn fan_out(&self, publication: Publication) {
        let original = message(&publication);
        let governor = self
            .registry
            .governing(publication.channel.namespace())
            .filter(Governor::filters);
        let variants = match governor {
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
        self.offer_all(&publication.channel, &variants);
    }

    /// Offers a message to every subscriber of `channel` (buffering it for
    /// those still attaching), cutting off whoever overflows.
    fn offer_all(&self, channel: &ChannelName, variants: &Variants) {
        let mut overflowed = Vec::new();
        let mut delivered = 0;
        {
            let mut shard = self.shard(channel);
            let Some(subscribers) = shard.get_mut(channel) else {
                return;
            };
            for (id, subscriber) in &subscribers.by_connection {
                let push = match variants {
                    Variants::Everyone(push) => push,
                    Variants::PerAudience(map) => match map.get(&subscriber.audience) {
                        Some(push) => push,
                        None => continue,
                    },
                };
                if subscribers
                    .attaching
                    .buffer(*id, push, self.limits.queue_capacity)
                {
                    continue;
                }
                if push
                    .position
                    .as_ref()
                    .is_some_and(|p| p.offset <= subscriber.start)
                {
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

    /// Queues a `join` or `leave` for every local subscriber of the channel
    /// but the connection that caused it. Under the shard lock, so everybody
    /// here sees one channel's joins and leaves in the same order.
    fn announce(&self, event: &PresenceEvent) {
        let push = presence_push(event);
        let own = event.node.as_ref() == self.engine.presence().node();
        let mut overflowed: Vec<Arc<Connection>> = Vec::new();
        {
            let shard = self.shard(&event.channel);
            let Some(subscribers) = shard.get(&event.channel) else {
                return;
            };
            for (id, subscriber) in &subscribers.by_connection {
                if own && *id == event.connection {
                    continue;
                }
                let connection = &subscriber.connection;
                if connection.offer(&push, &self.limits) == Offered::Overflowed {
                    overflowed.push(connection.clone());
                }
            }
        }
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
        self.take(Work::Message(publication));
    }

    fn presence(&self, event: PresenceEvent) {
        self.take(Work::Presence(event));
    }

    fn interrupted(&self, channel: Option<&ChannelName>) {
        self.interrupt(channel);
    }

    fn answer(&self, question: &crate::engine::Question) -> serde_json::Value {
        self.answer_question(question)
    }
}

/// What the subscribers of one message get.
enum Variants {
    Everyone(Arc<Push>),
    /// Audiences missing from the map were skipped by the plugin's `filter`.
    PerAudience(HashMap<Arc<str>, Arc<Push>>),
}

fn message(publication: &Publication) -> Arc<Push> {
    Arc::new(Push::new(publication, &publication.data))
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
