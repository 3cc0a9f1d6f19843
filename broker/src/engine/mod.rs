//! Where publications get their place in a channel: per-channel `epoch` and
//! monotonically increasing `offset`, history, and (later) cross-node fan-out.
//!
//! The hub talks to an [`Engine`] only through this trait, so that a Redis
//! engine can sit beside [`MemoryEngine`] without the hub changing. An engine
//! hands every publication, in offset order per channel, to its [`Sink`] (the
//! hub), whichever node it was published on.
//!
//! The hub tells the engine when each of its subscriptions of a channel
//! starts ([`Engine::attach`]) and ends ([`Engine::detach`]), so that an
//! engine can free what nobody uses (and a Redis engine can subscribe a node
//! to a channel only while it has local subscribers).

mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::channel::ChannelName;

pub(crate) use memory::{Lifetimes, MemoryEngine};

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

/// What [`Engine::attach`] found while the channel was locked.
#[derive(Debug)]
pub(crate) struct Attached {
    /// The channel's latest position when the subscriber went live.
    pub(crate) position: Position,
    /// Only when asked to recover: the messages after the given position,
    /// oldest first (possibly none), or `None` when they cannot all be given
    /// (another epoch, or history no longer reaches back that far).
    pub(crate) missed: Option<Vec<Stored>>,
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

/// Receives every publication, in offset order per channel.
pub(crate) trait Sink: Send + Sync {
    fn deliver(&self, publication: &Publication);
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    /// The backing store could not be reached (not possible in memory).
    #[allow(dead_code)]
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

pub(crate) type EngineFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

/// Called with the channel's position at the instant a subscriber is attached.
pub(crate) type Attach<'a> = Box<dyn FnOnce(&Position) + Send + 'a>;

pub(crate) trait Engine: Send + Sync {
    /// Gives `data` the next offset of `channel`, keeps it in history as
    /// `history` says, and hands it to the sink before returning.
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: Arc<str>,
        history: HistoryPolicy,
    ) -> EngineFuture<'a, Position>;

    /// Runs `attach` with the channel's latest position such that no
    /// publication of the channel is delivered between reading the position
    /// and `attach` returning: every later publication has a larger offset.
    ///
    /// With `recover_from`, also returns every kept message after that
    /// position, read in the same critical section, so that missed plus live
    /// messages are exactly contiguous. All of them or none: if the epoch
    /// differs or history (per `history`) no longer covers the next offset,
    /// `missed` is `None`.
    ///
    /// On success the subscription counts for the channel (keeping it
    /// alive) until the hub calls [`Engine::detach`] for it, once.
    fn attach<'a>(
        &'a self,
        channel: &'a ChannelName,
        recover_from: Option<&'a Position>,
        history: HistoryPolicy,
        attach: Attach<'a>,
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

    /// What the engine holds now.
    fn stats(&self) -> EngineStats;
}
