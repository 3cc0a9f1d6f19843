//! Registration: admitting a connection under the node's and its user's
//! caps, and cutting it off (a slow consumer, a disconnect).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use super::queue::{Offered, Pushes};
use super::{lock, CutOff, Hub, HubLimits, Inner, Push, Queue};
use crate::auth::Identity;
use crate::channel::ChannelName;
use crate::protocol::{ErrorCode, Refusal};

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
    pub(super) hub: Weak<Inner>,
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
    pub(super) id: u64,
    /// Replaced by a WebSocket `refresh` (same user, new claims and expiry).
    pub(super) identity: ArcSwapOption<Identity>,
    /// Pushes waiting for the transport, bounded in count and bytes.
    pub(super) pushes: Pushes,
    pub(super) channels: Mutex<HashSet<ChannelName>>,
    pub(super) cut_off: OnceLock<CutOff>,
    pub(super) cut_off_signal: Notify,
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
    pub(super) fn offer(&self, push: &Arc<Push>, limits: &HubLimits) -> Offered {
        if self.cut_off.get().is_some() {
            return Offered::Refused;
        }
        self.pushes
            .offer(push, limits.queue_capacity, limits.queue_max_bytes)
    }

    /// True the first time only.
    pub(super) fn cut(&self, reason: CutOff) -> bool {
        let first = self.cut_off.set(reason).is_ok();
        if first {
            self.cut_off_signal.notify_one();
        }
        first
    }

    pub(super) fn is_subscribed(&self, channel: &ChannelName) -> bool {
        lock(&self.channels).contains(channel)
    }
}

/// Removes the connection's subscriptions when its transport drops it.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(super) connection: Arc<Connection>,
    pub(super) hub: Weak<Inner>,
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

impl Hub {
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

    pub(super) fn refused(&self, refused: Refused) -> Refused {
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
    pub(super) fn new_registration(&self, identity: Option<Identity>) -> (Registration, Queue) {
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
}

impl Inner {
    /// Ends every subscription of `connection` (and with them its presence).
    pub(super) fn detach_all(&self, connection: &Connection) {
        let channels: Vec<ChannelName> = lock(&connection.channels).drain().collect();
        for channel in channels {
            self.detach(&channel, connection.id);
        }
    }

    /// Cuts `connection` off: marks it (its transport closes with `reason`)
    /// and detaches it from every channel right away, whether or not its
    /// transport is stuck in a write. Must be called with no shard locked.
    /// False if it was cut off already.
    pub(super) fn cut(&self, connection: &Connection, reason: CutOff) -> bool {
        if !self.mark(connection, reason) {
            return false;
        }
        self.detach_all(connection);
        true
    }

    /// Cuts off slow consumers found under a shard lock.
    pub(super) fn cut_overflowed(&self, overflowed: Vec<Arc<Connection>>) {
        for connection in overflowed {
            self.cut(&connection, CutOff::SlowConsumer);
        }
    }

    pub(super) fn mark(&self, connection: &Connection, reason: CutOff) -> bool {
        let first = connection.cut(reason);
        if first && reason == CutOff::SlowConsumer {
            self.cut_offs.fetch_add(1, Ordering::Relaxed);
        }
        first
    }
}

/// Cutting a connection off: deregistered at once, nothing queued after the
/// cut; the node's and the user's caps.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::*;
    use crate::plugins::PublishSource;

    #[tokio::test]
    async fn a_full_queue_detaches_the_connection_at_once() {
        let (hub, _dir) = hub(4, usize::MAX);
        let (stalled, mut stalled_queue) = hub.register(Some(identity("ann"))).unwrap();
        let (reader, mut reader_queue) = hub.register(Some(identity("bob"))).unwrap();
        hub.subscribe(&stalled, &news()).await.unwrap();
        hub.subscribe(&reader, &news()).await.unwrap();
        for n in 0..10 {
            publish(&hub, &format!(r#"{{"n":{n}}}"#)).await;
            assert!(reader_queue.try_recv().is_some(), "the reader gets #{n}");
        }
        assert_eq!(stalled.cut_reason(), Some(CutOff::SlowConsumer));
        // Deregistered while its transport has not even looked: no channel
        // counts it, and nothing after the overflow was queued.
        assert_eq!(hub.channels("public:").await.unwrap(), vec![(news(), 1)]);
        assert!(lock(&stalled.channels).is_empty());
        assert_eq!(drained(&mut stalled_queue), 4);
        assert_eq!(hub.stats().cut_offs, 1);
        // Its transport's drop later changes nothing for the others.
        drop(stalled);
        publish(&hub, "{}").await;
        assert_eq!(drained(&mut reader_queue), 1);
    }

    #[tokio::test]
    async fn unsubscribing_drops_what_is_still_queued_for_the_channel_only() {
        let (hub, _dir) = hub(16, usize::MAX);
        let (conn, mut queue) = hub.register(Some(identity("ann"))).unwrap();
        let other = ChannelName::parse("public:other").unwrap();
        hub.subscribe(&conn, &news()).await.unwrap();
        hub.subscribe(&conn, &other).await.unwrap();
        // Queued, not yet taken off by the transport (a fan-out that raced the
        // unsubscribe looks the same to the queue).
        publish(&hub, r#"{"n":1}"#).await;
        hub.publish(
            std::slice::from_ref(&other),
            r#"{"n":2}"#,
            PublishSource::Http,
            None,
        )
        .await
        .unwrap();
        hub.settled().await;
        publish(&hub, r#"{"n":3}"#).await;
        hub.unsubscribe(&conn, &news());
        let left: Vec<_> = std::iter::from_fn(|| queue.try_recv()).collect();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].channel, other);
        assert_eq!(conn.pushes.bytes(), 0);
        // And nothing new arrives for it.
        publish(&hub, r#"{"n":4}"#).await;
        assert_eq!(drained(&mut queue), 0);
    }

    #[tokio::test]
    async fn the_byte_bound_cuts_off_like_the_count_and_is_released_on_receipt() {
        let (hub, _dir) = hub(1024, 2000);
        let (conn, mut queue) = hub.register(Some(identity("ann"))).unwrap();
        hub.subscribe(&conn, &news()).await.unwrap();
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(800));
        // Taken off as it comes: the bytes are released, no cut-off.
        for _ in 0..10 {
            publish(&hub, &big).await;
            assert!(queue.try_recv().is_some());
        }
        assert_eq!(conn.cut_reason(), None);
        assert_eq!(conn.pushes.bytes(), 0);
        // Not taken off: two fit (about 1.8 KB), the third overflows 2000 bytes.
        for _ in 0..3 {
            publish(&hub, &big).await;
        }
        assert_eq!(conn.cut_reason(), Some(CutOff::SlowConsumer));
        assert!(hub.channels("public:").await.unwrap().is_empty());
        assert_eq!(drained(&mut queue), 2);
    }

    #[tokio::test]
    async fn one_push_larger_than_the_byte_bound_fits_an_empty_queue() {
        let (hub, _dir) = hub(1024, 100);
        let (conn, mut queue) = hub.register(Some(identity("ann"))).unwrap();
        hub.subscribe(&conn, &news()).await.unwrap();
        publish(&hub, &format!(r#"{{"pad":"{}"}}"#, "x".repeat(500))).await;
        assert_eq!(conn.cut_reason(), None);
        assert_eq!(drained(&mut queue), 1);
    }

    #[tokio::test]
    async fn disconnecting_a_user_detaches_every_connection_and_refuses_later_subscribes() {
        let (hub, _dir) = hub(16, usize::MAX);
        let (tab1, mut queue1) = hub.register(Some(identity("ann"))).unwrap();
        let (tab2, _queue2) = hub.register(Some(identity("ann"))).unwrap();
        let (other, mut other_queue) = hub.register(Some(identity("bob"))).unwrap();
        for connection in [&tab1, &tab2, &other] {
            hub.subscribe(connection, &news()).await.unwrap();
        }
        assert_eq!(hub.disconnect_user("ann").await.unwrap(), 2);
        assert_eq!(tab1.cut_reason(), Some(CutOff::Disconnected));
        assert_eq!(hub.channels("public:").await.unwrap(), vec![(news(), 1)]);
        assert_eq!(hub.stats().cut_offs, 0, "a disconnect is no slow consumer");

        publish(&hub, "{}").await;
        assert_eq!(drained(&mut queue1), 0, "nothing queued after the cut");
        assert_eq!(drained(&mut other_queue), 1);

        let channel = ChannelName::parse("public:later").unwrap();
        let refusal = hub.subscribe(&tab1, &channel).await.unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Forbidden, "{}", refusal.message);
        assert_eq!(hub.channels("public:later").await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn the_global_cap_counts_admissions_and_frees_them_on_drop() {
        let (hub, _dir) = capped_hub(16, usize::MAX, 2, usize::MAX);
        let first = hub.admit().unwrap();
        let _second = hub.admit().unwrap();
        assert_eq!(hub.admit().unwrap_err(), Refused::NodeFull { max: 2 });
        assert_eq!(hub.open_streams(), 2);
        drop(first);
        let _third = hub.admit().unwrap();
        assert_eq!(hub.stats().refused_node_full, 1);
        assert_eq!(
            hub.admit().unwrap_err().refusal().code,
            ErrorCode::Unavailable
        );
    }

    #[tokio::test]
    async fn the_per_user_cap_is_per_user_and_freed_when_a_connection_goes() {
        let (hub, _dir) = capped_hub(16, usize::MAX, usize::MAX, 2);
        let (tab1, _q1) = hub.register(Some(identity("ann"))).unwrap();
        let (_tab2, _q2) = hub.register(Some(identity("ann"))).unwrap();
        assert!(hub.check_user("ann").is_err());
        let refused = hub.register(Some(identity("ann"))).unwrap_err();
        assert_eq!(refused, Refused::UserFull { max: 2 });
        assert_eq!(refused.refusal().code, ErrorCode::RateLimited);
        // Other users and anonymous connections are not counted against ann.
        assert!(hub.check_user("bob").is_ok());
        let (_bob, _qb) = hub.register(Some(identity("bob"))).unwrap();
        for _ in 0..3 {
            let _anonymous = hub.register(None).unwrap();
        }
        drop(tab1);
        assert!(hub.check_user("ann").is_ok());
        let (_tab3, _q3) = hub.register(Some(identity("ann"))).unwrap();
        assert_eq!(hub.stats().refused_user_full, 2);
    }
}
