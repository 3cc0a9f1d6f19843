//! Presence: which users are subscribed to a channel, on any node.
//!
//! The hub counts a user's connections per channel on its own node and tells
//! the [`Presence`] only when a user becomes present on this node (its first
//! connection) or stops being present (its last). The implementation keeps
//! the cluster's members and decides what everybody sees: a `join` when the
//! user was present on no node before, a `leave` when it is present on none
//! any more. Those come back to every node's hub through [`Sink::presence`],
//! in order with the channel's messages, and each hub queues them for its
//! local subscribers (except the connection that caused them).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use super::{EngineFuture, Sink};
use crate::channel::ChannelName;

/// A join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Join,
    Leave,
}

impl Change {
    /// The push's `type`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Change::Join => "join",
            Change::Leave => "leave",
        }
    }
}

/// One user becoming present on a channel, or no longer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PresenceEvent {
    pub(crate) channel: ChannelName,
    pub(crate) change: Change,
    pub(crate) user: Arc<str>,
    /// What the plugin returned at subscribe time (`{}` when nothing), as
    /// JSON text.
    pub(crate) info: Arc<str>,
    /// The node whose subscription caused it ...
    pub(crate) node: Arc<str>,
    /// ... and the connection there, which is not told (0: none, e.g. a
    /// node that died).
    pub(crate) connection: u64,
}

impl PresenceEvent {
    /// `info` to embed in a frame as is: the text when it is JSON, else `{}` (it came
    /// through Redis, from another node's plugin).
    pub(crate) fn info_json(&self) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(self.info.to_string()).unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("{}".into()).expect("`{}` is JSON")
        })
    }
}

/// One member of a channel, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) user: Arc<str>,
    /// JSON text.
    pub(crate) info: Arc<str>,
}

pub(crate) trait Presence: Send + Sync {
    /// This node's id, as events name it.
    fn node(&self) -> &str;

    /// `event.user` is now present on this node (its first connection on
    /// the channel here). Resolves once recorded; on an error nothing was.
    fn join(&self, event: PresenceEvent) -> EngineFuture<'_, ()>;

    /// `event.user`'s last connection on the channel here has gone. Never
    /// blocks: the hub calls it while connections are being dropped; an
    /// implementation that cannot record it now retries.
    fn leave(&self, event: PresenceEvent);

    /// A present user's info changed (its subscription was checked again):
    /// listings show the new one, nobody is told. Never blocks.
    fn update(&self, event: PresenceEvent);

    /// The channel's members on all nodes, by user id.
    fn members<'a>(&'a self, channel: &'a ChannelName) -> EngineFuture<'a, Vec<Member>>;
}

/// One node: the members are the hub's, kept here by user id.
pub(crate) struct MemoryPresence {
    node: Arc<str>,
    sink: Weak<dyn Sink>,
    channels: Mutex<HashMap<ChannelName, Members>>,
}

/// One channel's members: user id → info JSON.
type Members = BTreeMap<Arc<str>, Arc<str>>;

impl MemoryPresence {
    pub(crate) fn new(sink: Weak<dyn Sink>) -> Self {
        Self {
            node: Arc::from("local"),
            sink,
            channels: Mutex::default(),
        }
    }

    fn record(&self, event: &PresenceEvent) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        match event.change {
            Change::Join => {
                channels
                    .entry(event.channel.clone())
                    .or_default()
                    .insert(event.user.clone(), event.info.clone());
            }
            Change::Leave => {
                if let Some(members) = channels.get_mut(&event.channel) {
                    members.remove(&event.user);
                    if members.is_empty() {
                        channels.remove(&event.channel);
                    }
                }
            }
        }
    }

    fn announce(&self, event: PresenceEvent) {
        self.record(&event);
        if let Some(sink) = self.sink.upgrade() {
            sink.presence(event);
        }
    }
}

impl Presence for MemoryPresence {
    fn node(&self) -> &str {
        &self.node
    }

    fn join(&self, event: PresenceEvent) -> EngineFuture<'_, ()> {
        self.announce(event);
        Box::pin(std::future::ready(Ok(())))
    }

    fn leave(&self, event: PresenceEvent) {
        self.announce(event);
    }

    fn update(&self, event: PresenceEvent) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(info) = channels
            .get_mut(&event.channel)
            .and_then(|members| members.get_mut(&event.user))
        {
            *info = event.info;
        }
    }

    fn members<'a>(&'a self, channel: &'a ChannelName) -> EngineFuture<'a, Vec<Member>> {
        let members = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(channel)
            .map(|m| {
                m.iter()
                    .map(|(user, info)| Member {
                        user: user.clone(),
                        info: info.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(members)))
    }
}
