//! Re-checking live subscriptions with the plugin in force now: after a
//! reload, or a token refreshed with other claims.

use super::queue::Offered;
use super::subscribers::unsubscribed_push;
use super::{authorize, lock, Connection, CutOff, Hub, Inner};
use crate::channel::ChannelName;
use crate::engine::Change;
use crate::plugins::Governor;
use crate::protocol::{ErrorCode, Refusal};

/// What [`Hub::reauthorize`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reauthorized {
    /// Subscriptions the new plugin still allows.
    pub(crate) kept: usize,
    /// Subscriptions ended with an `unsubscribed` push.
    pub(crate) revoked: usize,
}

impl Hub {
    /// Checks every subscription of `namespaces` again with the plugin now
    /// governing it (after a reload). Subscribers it denies, or all of them
    /// where no plugin governs the namespace any more, are unsubscribed and
    /// told why; the others get their new audience. Calls the plugins:
    /// run it off the reactor.
    pub(crate) fn reauthorize(&self, namespaces: &[String]) -> Reauthorized {
        let mut outcome = Reauthorized::default();
        let affected = self
            .inner
            .subscribed(|name| namespaces.iter().any(|n| n == name.namespace()));
        for (channel, connections) in affected {
            let governor = self.inner.registry.governing(channel.namespace());
            for connection in connections {
                self.inner
                    .recheck(governor.as_ref(), &channel, &connection, &mut outcome);
            }
        }
        outcome
    }

    /// Checks every subscription of one connection again, after its token
    /// was refreshed with other claims; like [`Self::reauthorize`].
    pub(crate) fn reauthorize_connection(&self, connection: &Connection) -> Reauthorized {
        let mut outcome = Reauthorized::default();
        let channels: Vec<ChannelName> = lock(&connection.channels).iter().cloned().collect();
        for channel in channels {
            let governor = self.inner.registry.governing(channel.namespace());
            self.inner
                .recheck(governor.as_ref(), &channel, connection, &mut outcome);
        }
        outcome
    }
}

impl Inner {
    /// Keeps `connection` on `channel` if `governor` (the one in force now)
    /// still allows it, with its new audience; else evicts it with the
    /// plugin's reason, or because no plugin governs the channel any more.
    pub(super) fn recheck(
        &self,
        governor: Option<&Governor>,
        channel: &ChannelName,
        connection: &Connection,
        outcome: &mut Reauthorized,
    ) {
        let verdict = match governor {
            Some(governor) => authorize(governor, channel, connection.identity().as_deref()),
            None => Err(Refusal::new(
                ErrorCode::NotFound,
                format!(
                    "no plugin governs `{}` channels any more",
                    channel.namespace()
                ),
            )),
        };
        match verdict {
            Ok((audience, info)) => {
                let updated = self
                    .shard(channel)
                    .get_mut(channel)
                    .and_then(|subscribers| subscribers.reassign(connection.id, audience, info));
                if let Some(member) = updated {
                    let event = self.presence_event(channel, Change::Join, &member, connection.id);
                    self.engine.presence().update(event);
                }
                outcome.kept += 1;
            }
            Err(refusal) => {
                self.evict(connection, channel, &refusal.message);
                outcome.revoked += 1;
            }
        }
    }

    /// Ends a subscription from the server's side and tells the subscriber why.
    pub(super) fn evict(&self, connection: &Connection, channel: &ChannelName, reason: &str) {
        if lock(&connection.channels).remove(channel) {
            self.detach(channel, connection.id);
            let push = unsubscribed_push(channel, reason);
            if connection.offer(&push, &self.limits) == Offered::Overflowed {
                self.cut(connection, CutOff::SlowConsumer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::*;
    use crate::plugins::{PublishSource, Registry};

    /// The reason of the `unsubscribed` push waiting in `queue`.
    fn unsubscribed_reason(queue: &mut crate::hub::Queue) -> String {
        let push = queue.try_recv().expect("an unsubscribed push");
        assert_eq!(push.kind, "unsubscribed");
        let frame: serde_json::Value = serde_json::from_str(push.frame.as_str()).unwrap();
        frame["reason"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_namespace_left_without_a_plugin_loses_its_subscribers_others_stay() {
        let (hub, _dir) = hub(64, usize::MAX);
        let (ann, mut queue) = hub.register(Some(member("ann", "autor"))).unwrap();
        hub.subscribe(&ann, &news()).await.unwrap();
        hub.subscribe(&ann, &course("chat")).await.unwrap();
        // Only `public` is left: the `course` plugin was removed.
        let public: Vec<_> = hub
            .registry()
            .snapshot()
            .plugins()
            .iter()
            .filter(|p| p.name() == "public")
            .cloned()
            .collect();
        hub.registry()
            .replace(Registry::from_plugins(public).unwrap());
        let outcome = hub.reauthorize(&["course".into(), "public".into()]);
        assert_eq!(
            outcome,
            Reauthorized {
                kept: 1,
                revoked: 1
            }
        );
        assert!(unsubscribed_reason(&mut queue).contains("no plugin governs"));
        assert!(!ann.is_subscribed(&course("chat")));
        assert!(ann.is_subscribed(&news()));
        assert_eq!(hub.stats().subscriptions, 1);
    }

    #[tokio::test]
    async fn a_token_refreshed_without_the_course_ends_that_subscription_only() {
        let (hub, _dir) = hub(64, usize::MAX);
        let (ann, mut queue) = hub.register(Some(member("ann", "autor"))).unwrap();
        hub.subscribe(&ann, &news()).await.unwrap();
        hub.subscribe(&ann, &course("chat")).await.unwrap();
        ann.set_identity(with_claims(
            "ann",
            &serde_json::json!({"sub": "ann", "perm": "autor", "courses": {}}),
        ));
        let outcome = hub.reauthorize_connection(&ann);
        assert_eq!(
            outcome,
            Reauthorized {
                kept: 1,
                revoked: 1
            }
        );
        let reason = unsubscribed_reason(&mut queue);
        assert!(!reason.is_empty());
        assert!(hub.presence(&course("chat")).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_status_change_moves_the_subscriber_to_its_new_audience() {
        let (hub, _dir) = hub(64, usize::MAX);
        let notes = course("notes");
        let (ann, mut queue) = hub.register(Some(member("ann", "autor"))).unwrap();
        hub.subscribe(&ann, &notes).await.unwrap();
        let staff_only = r#"{"visibility":"staff"}"#;
        hub.publish(
            std::slice::from_ref(&notes),
            staff_only,
            PublishSource::Http,
            None,
        )
        .await
        .unwrap();
        hub.settled().await;
        assert!(
            queue.try_recv().is_none(),
            "a member does not see staff notes"
        );
        ann.set_identity(member("ann", "tutor"));
        assert_eq!(
            hub.reauthorize_connection(&ann),
            Reauthorized {
                kept: 1,
                revoked: 0
            }
        );
        hub.publish(
            std::slice::from_ref(&notes),
            staff_only,
            PublishSource::Http,
            None,
        )
        .await
        .unwrap();
        hub.settled().await;
        assert!(queue.try_recv().is_some(), "a tutor does");
    }
}
