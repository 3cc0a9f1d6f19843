//! Subscribing (with recovery) and reading history.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::queue::Offered;
use super::subscribers::Membership;
use super::{
    authorize, engine_refusal, lock, plugin_fault, single_line, Connection, CutOff, Hub, Inner,
    Push, Reauthorized,
};
use crate::channel::ChannelName;
use crate::engine::{Change, Position, Publication, Stored};
use crate::plugins::{Delivery, Governor};
use crate::protocol::{ErrorCode, Refusal};

/// A live subscription and, when recovery was asked for, what was missed.
#[derive(Debug)]
pub(crate) struct Subscribed {
    /// The channel's position at the moment the subscription went live.
    pub(crate) position: Position,
    /// Every message after the recovery position, oldest first, as this
    /// subscriber's audience receives them; `None` when not all of them are
    /// kept any more (or the epoch changed), and when no recovery was asked.
    pub(crate) missed: Option<Vec<Arc<Push>>>,
}

/// A channel's kept messages as one reader may see them.
#[derive(Debug)]
pub(crate) struct History {
    pub(crate) epoch: Arc<str>,
    /// Oldest first.
    pub(crate) messages: Vec<Stored>,
}

impl Hub {
    /// Subscribes after the governing plugin allowed it. Returns the
    /// channel's position at the moment the subscription went live.
    pub(crate) async fn subscribe(
        &self,
        connection: &Arc<Connection>,
        channel: &ChannelName,
    ) -> Result<Position, Refusal> {
        self.subscribe_recovering(connection, channel, None)
            .await
            .map(|subscribed| subscribed.position)
    }

    /// Like [`Self::subscribe`], and with `recover_from` also returns every
    /// message after that position (or `None` if history no longer has all
    /// of them). The missed messages and the subscription are read and made
    /// in one critical section of the engine: every later message reaches
    /// the queue, so writing the missed ones first leaves no gap and no
    /// duplicate.
    pub(crate) async fn subscribe_recovering(
        &self,
        connection: &Arc<Connection>,
        channel: &ChannelName,
        recover_from: Option<&Position>,
    ) -> Result<Subscribed, Refusal> {
        if connection.is_subscribed(channel) {
            return Err(Refusal::bad_request(format!(
                "already subscribed to `{channel}`"
            )));
        }
        let max = self.inner.limits.max_subscriptions;
        if lock(&connection.channels).len() >= max {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("subscription limit reached ({max} per connection)"),
            ));
        }
        let governor = self.governor(channel)?;
        let identity = connection.identity();
        let (audience, presence_info) = authorize(&governor, channel, identity.as_deref())?;
        let membership = identity
            .filter(|_| governor.options().presence)
            .map(|identity| Membership {
                user: Arc::from(identity.user.as_str()),
                info: presence_info,
            });
        // Registered first, buffering: whatever arrives while the engine
        // attaches is kept, and sorted out once the position is known.
        let (replaced, joined) = {
            let mut shard = self.inner.shard(channel);
            let subscribers = shard.entry(channel.clone()).or_default();
            let replaced = subscribers.by_connection.contains_key(&connection.id);
            let joined = subscribers.insert(connection.clone(), audience.clone(), membership);
            subscribers.attaching.begin(connection.id);
            (replaced, joined)
        };
        // Until the subscription is live, an error or the caller giving up
        // (a closed socket drops this future) undoes what was done so far.
        let mut undo = Undo {
            inner: &self.inner,
            channel,
            connection: connection.id,
            counted: false,
            armed: true,
        };
        let attached = self
            .inner
            .engine
            .attach(channel, recover_from, self.inner.history_policy(&governor))
            .await
            .map_err(|e| engine_refusal(&e))?;
        undo.counted = true;
        if let Some(member) = joined {
            let event = self
                .inner
                .presence_event(channel, Change::Join, &member, connection.id);
            // Undone with a leave even if it failed: a leave of a join never
            // recorded changes nothing.
            self.inner
                .engine
                .presence()
                .join(event)
                .await
                .map_err(|e| engine_refusal(&e))?;
        }
        undo.armed = false;
        self.inner.go_live(channel, connection, &attached.position);
        if replaced {
            // One subscription, counted twice by the engine.
            self.inner.engine.detach(channel);
        }
        // A cut-off empties `channels` after marking the connection, both
        // under this lock: either it sees this channel, or we see the mark.
        let live = {
            let mut channels = lock(&connection.channels);
            let live = connection.cut_reason().is_none();
            if live {
                channels.insert(channel.clone());
            }
            live
        };
        if !live {
            self.inner.detach(channel, connection.id);
            let reason = connection.cut_reason().map_or("", CutOff::reason);
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("the connection was cut off: {reason}"),
            ));
        }
        // A reload may have swapped the plugin after we asked the old version,
        // and its re-check may have run before this subscription existed:
        // ask the version in force now (a refusal arrives as `unsubscribed`).
        let in_force = self.inner.registry.governing(channel.namespace());
        if !in_force
            .as_ref()
            .is_some_and(|g| g.is_same_version(&governor))
        {
            let mut outcome = Reauthorized::default();
            self.inner
                .recheck(in_force.as_ref(), channel, connection, &mut outcome);
        }
        let epoch = attached.position.epoch.clone();
        let missed = match attached.missed {
            // A plugin that fails on the missed messages leaves a gap the
            // client must know of: not recovered, so it reloads its state.
            Some(missed) => for_audience(
                &self.inner.filter_lanes,
                &governor,
                channel,
                missed,
                &audience,
            )
            .await
            .map(|missed| {
                missed
                    .into_iter()
                    .map(|stored| {
                        Arc::new(Push::new(
                            &Publication {
                                channel: channel.clone(),
                                epoch: epoch.clone(),
                                offset: stored.offset,
                                data: stored.data.clone(),
                            },
                            &stored.data,
                        ))
                    })
                    .collect()
            }),
            None => None,
        };
        Ok(Subscribed {
            position: attached.position,
            missed,
        })
    }

    /// The latest `limit` kept messages (all kept ones when `None`; never
    /// more than the channel keeps) with an offset after `since`, as
    /// `connection` may see them: the plugin must allow it to subscribe,
    /// and messages its `filter` skips for the connection's audience are
    /// left out (so fewer than `limit` may come back).
    pub(crate) async fn history_for(
        &self,
        connection: &Connection,
        channel: &ChannelName,
        limit: Option<u64>,
        since: Option<u64>,
    ) -> Result<History, Refusal> {
        let governor = self.governor(channel)?;
        let (audience, _) = authorize(&governor, channel, connection.identity().as_deref())?;
        let mut history = self.read_history(&governor, channel, limit, since).await?;
        let messages = std::mem::take(&mut history.messages);
        history.messages = for_audience(
            &self.inner.filter_lanes,
            &governor,
            channel,
            messages,
            &audience,
        )
        .await
        .ok_or_else(|| plugin_fault(&governor))?;
        Ok(history)
    }

    /// History as Stud.IP's server sees it (behind the API key): every kept
    /// message, unfiltered.
    pub(crate) async fn history(
        &self,
        channel: &ChannelName,
        limit: Option<u64>,
        since: Option<u64>,
    ) -> Result<History, Refusal> {
        let governor = self.governor(channel)?;
        self.read_history(&governor, channel, limit, since).await
    }

    pub(super) async fn read_history(
        &self,
        governor: &Governor,
        channel: &ChannelName,
        limit: Option<u64>,
        since: Option<u64>,
    ) -> Result<History, Refusal> {
        let policy = self.inner.history_policy(governor);
        let limit = limit.map_or(policy.size, |l| {
            usize::try_from(l).unwrap_or(usize::MAX).min(policy.size)
        });
        let (epoch, messages) = self
            .inner
            .engine
            .history(channel, limit, since, policy)
            .await
            .map_err(|e| engine_refusal(&e))?;
        Ok(History { epoch, messages })
    }

    /// Ends a subscription; unsubscribing from a channel one is not
    /// subscribed to is not an error (the outcome is the same). Pushes of
    /// the channel still queued are dropped: nothing of it follows the
    /// `unsubscribed` reply.
    pub(crate) fn unsubscribe(&self, connection: &Connection, channel: &ChannelName) {
        if lock(&connection.channels).remove(channel) {
            self.inner.detach(channel, connection.id);
            // Detached: no fan-out queues anything of the channel from here on.
            connection.pushes.forget(channel);
        }
    }
}

/// Kept messages as one audience receives them live: through the plugin's
/// `filter` when it has one (skipped ones left out, replaced ones replaced).
/// The plugin sees them in one batch on the blocking pool, at most one batch
/// per core at once (`lanes`), under one call's deadline: a history or
/// recovery reply cannot stall a tokio worker, and costs at most one call's
/// CPU however many messages it holds. `None` if the plugin failed.
async fn for_audience(
    lanes: &Arc<Semaphore>,
    governor: &Governor,
    channel: &ChannelName,
    messages: Vec<Stored>,
    audience: &str,
) -> Option<Vec<Stored>> {
    if !governor.filters() || messages.is_empty() {
        return Some(messages);
    }
    let _lane = lanes.acquire().await.ok()?;
    let (governor, channel, audience) = (governor.clone(), channel.clone(), audience.to_owned());
    let filtered = tokio::task::spawn_blocking(move || {
        let data: Vec<&str> = messages.iter().map(|m| &*m.data).collect();
        let deliveries = governor.filter_each(&channel, &data, &audience)?;
        Some(
            messages
                .into_iter()
                .zip(deliveries)
                .filter_map(|(stored, delivery)| match delivery {
                    Delivery::Skip => None,
                    Delivery::Original => Some(stored),
                    Delivery::Replace(data) => Some(Stored {
                        offset: stored.offset,
                        data: Arc::from(single_line(&data)),
                    }),
                })
                .collect(),
        )
    })
    .await;
    filtered.ok().flatten()
}

impl Inner {
    /// Ends the buffering of a subscriber whose attach returned `position`:
    /// queues what arrived meanwhile after that position, drops the rest
    /// (it is in the position, or in what the subscriber recovers).
    /// Under the shard lock, so that no later message overtakes them.
    pub(super) fn go_live(
        &self,
        channel: &ChannelName,
        connection: &Arc<Connection>,
        position: &Position,
    ) {
        let mut overflowed = false;
        if let Some(subscribers) = self.shard(channel).get_mut(channel) {
            if let Some(subscriber) = subscribers.by_connection.get_mut(&connection.id) {
                subscriber.start = position.offset;
            }
            match subscribers.attaching.end(connection.id) {
                None => overflowed = true,
                Some(buffered) => {
                    for push in buffered {
                        let after = push.position.as_ref().is_some_and(|p| {
                            p.epoch == position.epoch && p.offset > position.offset
                        });
                        if after && connection.offer(&push, &self.limits) == Offered::Overflowed {
                            overflowed = true;
                            break;
                        }
                    }
                }
            }
        }
        if overflowed {
            self.cut(connection, CutOff::SlowConsumer);
        }
    }
}

/// Undoes a subscription that did not go live, like [`Inner::detach`]: the
/// local entry, the presence (a leave if that was the user's last
/// connection here) and, once it counted, the engine's count.
struct Undo<'a> {
    inner: &'a Inner,
    channel: &'a ChannelName,
    connection: u64,
    counted: bool,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (_, left) = self.inner.remove_local(self.channel, self.connection);
        if let Some(member) = left {
            let event =
                self.inner
                    .presence_event(self.channel, Change::Leave, &member, self.connection);
            self.inner.engine.presence().leave(event);
        }
        if self.counted {
            self.inner.engine.detach(self.channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;
    use std::time::Duration;

    use super::*;
    use crate::engine::{
        Attached, Engine, EngineError, EngineFuture, EngineStats, HistoryPolicy, Lifetimes,
        MemoryEngine, Outgoing, Question, Sink,
    };
    use crate::hub::testing::*;
    use crate::plugins::PublishSource;

    /// Offsets and data of the pushes that are messages.
    fn messages(pushes: &[Arc<Push>]) -> Vec<u64> {
        pushes
            .iter()
            .filter_map(|p| p.position.as_ref().map(|p| p.offset))
            .collect()
    }

    #[tokio::test]
    async fn recovering_returns_exactly_what_was_missed_and_live_messages_follow_it() {
        let (hub, _dir) = hub(64, usize::MAX);
        let (first, _q) = hub.register(Some(identity("ann"))).unwrap();
        let position = hub.subscribe(&first, &news()).await.unwrap();
        for n in 1..=3 {
            publish(&hub, &format!(r#"{{"n":{n}}}"#)).await;
        }
        let (again, mut queue) = hub.register(Some(identity("ann"))).unwrap();
        let subscribed = hub
            .subscribe_recovering(&again, &news(), Some(&position))
            .await
            .unwrap();
        let missed = subscribed.missed.expect("history holds everything missed");
        assert_eq!(messages(&missed), vec![1, 2, 3]);
        assert_eq!(subscribed.position.offset, 3);
        publish(&hub, r#"{"n":4}"#).await;
        let live: Vec<_> = std::iter::from_fn(|| queue.try_recv()).collect();
        assert_eq!(messages(&live), vec![4], "no duplicate of the missed ones");
    }

    #[tokio::test]
    async fn recovering_from_another_epoch_is_not_recovered() {
        let (hub, _dir) = hub(64, usize::MAX);
        let (conn, _q) = hub.register(Some(identity("ann"))).unwrap();
        publish(&hub, "{}").await;
        let stale = Position {
            epoch: Arc::from("an-epoch-of-a-restarted-broker"),
            offset: 0,
        };
        let subscribed = hub
            .subscribe_recovering(&conn, &news(), Some(&stale))
            .await
            .unwrap();
        assert!(subscribed.missed.is_none());
    }

    #[tokio::test]
    async fn a_second_subscribe_and_one_over_the_limit_are_refused() {
        let (hub, _dir) = hub(64, usize::MAX);
        let (conn, _q) = hub.register(Some(identity("ann"))).unwrap();
        hub.subscribe(&conn, &news()).await.unwrap();
        let twice = hub.subscribe(&conn, &news()).await.unwrap_err();
        assert_eq!(twice.code, ErrorCode::BadRequest, "{}", twice.message);
        for n in 1..16 {
            let channel = ChannelName::parse(&format!("public:{n}")).unwrap();
            hub.subscribe(&conn, &channel).await.unwrap();
        }
        let over = ChannelName::parse("public:over").unwrap();
        let refusal = hub.subscribe(&conn, &over).await.unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Forbidden, "{}", refusal.message);
        assert!(refusal.message.contains("16"), "{}", refusal.message);
    }

    #[tokio::test]
    async fn history_for_a_member_leaves_out_what_its_audience_may_not_see() {
        let (hub, _dir) = hub(64, usize::MAX);
        let notes = course("notes");
        for data in [
            r#"{"n":1}"#,
            r#"{"n":2,"visibility":"staff"}"#,
            r#"{"n":3}"#,
        ] {
            hub.publish(
                std::slice::from_ref(&notes),
                data,
                PublishSource::Http,
                None,
            )
            .await
            .unwrap();
        }
        let (student, _q1) = hub.register(Some(member("ann", "autor"))).unwrap();
        let (tutor, _q2) = hub.register(Some(member("tim", "tutor"))).unwrap();
        let offsets = |h: History| h.messages.iter().map(|m| m.offset).collect::<Vec<_>>();
        let seen = hub.history_for(&student, &notes, None, None).await.unwrap();
        assert_eq!(offsets(seen), vec![1, 3]);
        let seen = hub.history_for(&tutor, &notes, None, None).await.unwrap();
        assert_eq!(offsets(seen), vec![1, 2, 3]);
        let latest = hub
            .history_for(&tutor, &notes, Some(1), None)
            .await
            .unwrap();
        assert_eq!(offsets(latest), vec![3]);
        let since = hub.history(&notes, None, Some(1)).await.unwrap();
        assert_eq!(offsets(since), vec![2, 3]);
        // Someone the plugin would not let subscribe reads nothing.
        let (outsider, _q3) = hub
            .register(Some(with_claims("eve", &serde_json::json!({"sub": "eve"}))))
            .unwrap();
        let refusal = hub
            .history_for(&outsider, &notes, None, None)
            .await
            .unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Forbidden);
    }

    /// The memory engine, except that every attach fails as an unreachable
    /// Redis would.
    struct Unreachable(MemoryEngine);

    impl Engine for Unreachable {
        fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> EngineFuture<'a, Vec<Position>> {
            self.0.publish(batch)
        }
        fn attach<'a>(
            &'a self,
            _: &'a ChannelName,
            _: Option<&'a Position>,
            _: HistoryPolicy,
        ) -> EngineFuture<'a, Attached> {
            Box::pin(async { Err(EngineError::Unavailable("connection refused".into())) })
        }
        fn detach(&self, channel: &ChannelName) {
            self.0.detach(channel);
        }
        fn history<'a>(
            &'a self,
            channel: &'a ChannelName,
            limit: usize,
            since: Option<u64>,
            history: HistoryPolicy,
        ) -> EngineFuture<'a, (Arc<str>, Vec<Stored>)> {
            self.0.history(channel, limit, since, history)
        }
        fn stats(&self) -> EngineStats {
            self.0.stats()
        }
        fn presence(&self) -> &dyn crate::engine::Presence {
            self.0.presence()
        }
        fn ask_others<'a>(
            &'a self,
            question: &'a Question,
        ) -> EngineFuture<'a, Vec<serde_json::Value>> {
            self.0.ask_others(question)
        }
    }

    #[tokio::test]
    async fn a_subscribe_the_engine_refuses_is_unavailable_and_leaves_nothing_behind() {
        let (hub, _dir) = hub_with(limits(), |sink: Weak<dyn Sink>| {
            let lifetimes = Lifetimes {
                channel_idle: Duration::from_secs(60),
                max_history_bytes: u64::MAX,
                node_timeout: Duration::from_secs(1),
            };
            Arc::new(Unreachable(MemoryEngine::new(sink, lifetimes))) as Arc<dyn Engine>
        });
        let chat = course("chat");
        let (conn, _q) = hub.register(Some(member("ann", "autor"))).unwrap();
        let refusal = hub.subscribe(&conn, &chat).await.unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Unavailable);
        assert!(
            !refusal.message.contains("connection refused"),
            "the engine's own text stays in the log: {}",
            refusal.message
        );
        assert_eq!(hub.stats().channels, 0, "no local entry left");
        assert_eq!(hub.stats().subscriptions, 0);
        assert!(hub.presence(&chat).await.unwrap().is_empty());
        assert!(!conn.is_subscribed(&chat));
    }
}
