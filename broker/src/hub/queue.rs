//! A connection's outbound push queue: bounded in pushes and in bytes, filled
//! by the hub (from any task), drained by the connection's transport task.
//!
//! Hand-rolled rather than tokio's bounded `mpsc`: that one costs an idle
//! connection about 800 bytes of heap (a cache-padded channel and a first
//! block of 32 slots) whether or not anything is ever queued; this one is a
//! mutex, an empty `VecDeque` (no allocation) and a `Notify`, inline in the
//! [`Connection`](super::Connection). Idle connections are most of what a
//! broker holds (docs/performance.md).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{lock, Connection, Push};
use crate::channel::ChannelName;

/// A drained queue keeps up to this many slots; a larger buffer left by a
/// burst is freed once the queue is empty again.
const KEPT_SLOTS: usize = 16;

/// What became of one push offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offered {
    Queued,
    /// The queue is full in pushes or in bytes: the connection must be cut off.
    Overflowed,
    /// Its transport is gone: nothing is queued.
    Refused,
}

/// The shared half, inside the connection.
#[derive(Debug, Default)]
pub(super) struct Pushes {
    state: Mutex<State>,
    /// Wakes the consumer. `notify_one` stores a permit when nobody waits, so
    /// a push between the consumer's look and its wait is not missed.
    pushed: Notify,
}

#[derive(Debug, Default)]
struct State {
    pushes: VecDeque<Arc<Push>>,
    /// Sum of `frame.len()` over `pushes`.
    bytes: usize,
    /// The consumer ([`Queue`]) is gone.
    closed: bool,
}

impl Pushes {
    /// Queues `push` unless that makes more than `max_pushes` pushes or
    /// `max_bytes` bytes; a push always fits into an empty queue.
    pub(super) fn offer(&self, push: &Arc<Push>, max_pushes: usize, max_bytes: usize) -> Offered {
        let mut state = lock(&self.state);
        if state.closed {
            return Offered::Refused;
        }
        let len = push.frame.len();
        if !state.pushes.is_empty()
            && (state.pushes.len() >= max_pushes || state.bytes + len > max_bytes)
        {
            return Offered::Overflowed;
        }
        state.pushes.push_back(push.clone());
        state.bytes += len;
        drop(state);
        self.pushed.notify_one();
        Offered::Queued
    }

    /// Drops what is queued for `channel`: called once the connection has
    /// left it, so that nothing of the channel follows the `unsubscribed`
    /// reply (a fan-out that raced the unsubscribe may have queued a push).
    pub(super) fn forget(&self, channel: &ChannelName) {
        let mut state = lock(&self.state);
        let mut freed = 0;
        state.pushes.retain(|push| {
            let keep = push.channel != *channel;
            if !keep {
                freed += push.frame.len();
            }
            keep
        });
        state.bytes -= freed;
    }

    /// Frame bytes queued right now.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    fn take(&self) -> Option<Arc<Push>> {
        let mut state = lock(&self.state);
        let push = state.pushes.pop_front()?;
        state.bytes -= push.frame.len();
        if state.pushes.is_empty() && state.pushes.capacity() > KEPT_SLOTS {
            state.pushes = VecDeque::new();
        }
        Some(push)
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.bytes = 0;
        // Freed now, not when the last `Arc<Connection>` goes.
        state.pushes = VecDeque::new();
    }
}

/// A connection's receiving end of its push queue (one per connection,
/// owned by its transport task). Dropping it closes the queue.
#[derive(Debug)]
pub(crate) struct Queue {
    connection: Arc<Connection>,
}

impl Queue {
    pub(super) fn new(connection: Arc<Connection>) -> Self {
        Self { connection }
    }

    /// The next push, once there is one. Cancel-safe: a push is only taken
    /// off when this returns it.
    pub(crate) async fn recv(&mut self) -> Arc<Push> {
        let pushes = &self.connection.pushes;
        loop {
            if let Some(push) = pushes.take() {
                return push;
            }
            pushes.pushed.notified().await;
        }
    }

    /// The next push if one is queued right now.
    pub(crate) fn try_recv(&mut self) -> Option<Arc<Push>> {
        self.connection.pushes.take()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.connection.pushes.close();
    }
}
