//! Where publications get their place in a channel: per-channel `epoch` and
//! monotonically increasing `offset`, history, and cross-node fan-out.
//!
//! The hub talks to an [`Engine`] only through this trait; [`MemoryEngine`]
//! (one process) and [`RedisEngine`] (several nodes on one Redis) are its two
//! implementations, held to one contract by the conformance suite in
//! `conformance.rs`. An engine hands every publication of the channels this
//! node is attached to, in offset order per channel, to its [`Sink`] (the
//! hub), whichever node it was published on. The sink only queues it: the
//! fan-out (and the plugin's `filter`) runs off every engine lock.
//!
//! Subscribing without a gap works the way it must across processes: the hub
//! registers the subscriber first (buffering what arrives), then
//! [`Engine::attach`] makes sure this node receives the channel's stream and
//! only then reads the position (and what was missed); the hub merges by
//! offset and drops duplicates.

mod memory;
mod presence;
mod redis;

#[cfg(test)]
mod conformance;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::channel::ChannelName;

pub(crate) use self::redis::RedisEngine;
pub(crate) use memory::{Lifetimes, MemoryEngine};
pub(crate) use presence::{Change, Presence, PresenceEvent};

/// The pub/sub topic of questions between nodes.
const CONTROL: &str = "stellwerk:control";

/// A fresh stream generation: random, so a restarted broker (or a channel
/// whose state was freed) never reuses one.
fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:012x}", rand::random::<u64>() >> 16))
}

/// A channel's position: the stream generation and the latest offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
}

/// One message with its place in its channel.
#[derive(Debug, Clone)]
pub(crate) struct Publication {
    pub(crate) channel: ChannelName,
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
    /// The message data as JSON text (already validated).
    pub(crate) data: Arc<str>,
}

/// How much history a channel keeps (from its plugin's channel options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryPolicy {
    pub(crate) size: usize,
    pub(crate) ttl: Duration,
}

/// One message as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) offset: u64,
    /// The message data as JSON text, as it was published.
    pub(crate) data: Arc<str>,
}

/// What [`Engine::attach`] read once this node received the channel's stream.
#[derive(Debug)]
pub(crate) struct Attached {
    /// The channel's latest position, read after the stream was flowing.
    pub(crate) position: Position,
    /// Only when asked to recover: the messages after the given position,
    /// oldest first (possibly none), or `None` when they cannot all be given
    /// (another epoch, or history no longer reaches back that far).
    pub(crate) missed: Option<Vec<Stored>>,
}

/// One channel's part of a publish.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) channel: ChannelName,
    /// The message data as JSON text on one line (already validated).
    pub(crate) data: Arc<str>,
    pub(crate) history: HistoryPolicy,
}

/// What an engine holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EngineStats {
    /// Channels whose state (epoch, offset, history) is held.
    pub(crate) channels: u64,
    /// Messages kept in history over all channels.
    pub(crate) history_messages: u64,
    /// What they cost, as the history budget counts it.
    pub(crate) history_bytes: u64,
    /// Messages dropped to stay within the history budget, ever.
    pub(crate) history_evicted: u64,
}

/// What one node asks every other one (with several nodes): each hub answers
/// for its own connections.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub(crate) enum Question {
    /// Cut off every connection of `user`; the answer is how many there were.
    Disconnect { user: String },
    /// The channels with local subscribers whose name starts with `prefix`;
    /// the answer is `[[name, subscriptions], …]`.
    Channels { prefix: String },
}

/// Receives every publication of the channels the node is attached to, in
/// offset order per channel. Called from engine internals (possibly under an
/// engine lock): an implementation only queues.
pub(crate) trait Sink: Send + Sync {
    fn deliver(&self, publication: Publication);

    /// A user became present on the channel on some node, or is no longer
    /// present on any (see [`Presence`]).
    fn presence(&self, event: PresenceEvent);

    /// The engine lost (or may have lost) publications of `channel`, or of
    /// every channel when `None`: a Redis connection dropped, or an offset
    /// jumped or an epoch changed. Subscribers must recover from history.
    fn interrupted(&self, channel: Option<&ChannelName>);

    /// Another node asks; the answer for this node's connections.
    fn answer(&self, question: &Question) -> serde_json::Value;
}

/// Why an engine could not do what was asked. Its text is for the log only:
/// clients get a contract error code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    /// The backing store could not be reached or did not answer in time
    /// (never in memory).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

pub(crate) type EngineFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

pub(crate) trait Engine: Send + Sync {
    /// Gives each message the next offset of its channel, keeps it in
    /// history as its policy says and hands it to the sinks of every node
    /// attached to the channel. All channels or none: on an error nothing
    /// was published.
    fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> EngineFuture<'a, Vec<Position>>;

    /// Counts one subscription of this node to `channel` (keeping the
    /// channel alive) and resolves once the node receives the channel's
    /// publications, with the position read after that point: every
    /// publication with a larger offset reaches the sink after this call
    /// began (ones at or below it may reach it too; the hub drops them).
    ///
    /// With `recover_from`, also returns every kept message after that
    /// position up to the returned one, oldest first. All of them or none:
    /// if the epoch differs or history (per `history`) no longer covers the
    /// next offset, `missed` is `None`.
    ///
    /// On success the hub calls [`Engine::detach`] for it once; on an
    /// error nothing was counted.
    fn attach<'a>(
        &'a self,
        channel: &'a ChannelName,
        recover_from: Option<&'a Position>,
        history: HistoryPolicy,
    ) -> EngineFuture<'a, Attached>;

    /// Ends one subscription that [`Engine::attach`] counted. Never blocks:
    /// the hub calls it while a connection is being dropped.
    fn detach(&self, channel: &ChannelName);

    /// The channel's epoch and its latest `limit` kept messages with an
    /// offset greater than `since`, oldest first. Creates nothing: for a
    /// channel the engine holds no state of, an empty list and a fresh epoch
    /// that no message carries (so a recovery from it is not recovered).
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        limit: usize,
        since: Option<u64>,
        history: HistoryPolicy,
    ) -> EngineFuture<'a, (Arc<str>, Vec<Stored>)>;

    /// What the engine holds now (on this node).
    fn stats(&self) -> EngineStats;

    /// Who is present on the engine's channels.
    fn presence(&self) -> &dyn Presence;

    /// Asks every other node (none in memory) and collects their answers;
    /// a node that does not answer within two seconds is left out.
    fn ask_others<'a>(&'a self, question: &'a Question)
        -> EngineFuture<'a, Vec<serde_json::Value>>;
}
