//! One channel's local subscribers: who gets its pushes, how many of them are
//! in each audience (the plugin's `filter` runs once per distinct audience),
//! and, where the plugin turned presence on, which users are here.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde_json::json;

use super::{Connection, Push};
use crate::channel::ChannelName;
use crate::engine::PresenceEvent;

#[derive(Default)]
pub(super) struct Subscribers {
    pub(super) by_connection: HashMap<u64, Subscriber>,
    pub(super) audiences: HashMap<Arc<str>, usize>,
    /// Subscribers whose engine attach is under way, with the messages that
    /// arrived meanwhile.
    pub(super) attaching: Attaching,
    /// By user id. A user with several connections on the channel is one
    /// member; the info is the one given for the first of them.
    members: HashMap<Arc<str>, Member>,
}

pub(super) struct Subscriber {
    pub(super) connection: Arc<Connection>,
    /// The audience tag the plugin gave at subscribe time; `""` for none.
    pub(super) audience: Arc<str>,
    /// The user this subscription counts for in presence; `None` where
    /// presence is off or the connection is anonymous.
    member: Option<Arc<str>>,
    /// The channel's offset when the subscription went live: messages at or
    /// below it are in that position (or were replayed) and are skipped; a
    /// fan-out still running for one of them must not deliver it twice.
    pub(super) start: u64,
}

/// Messages for subscribers that are registered but not live yet: they go
/// to the queue only once the subscriber knows its position, and only those
/// after it (the rest are in that position or in what it recovers).
/// Usually empty: a `Vec`, searched linearly.
#[derive(Default)]
pub(super) struct Attaching(Vec<(u64, Buffered)>);

/// What arrived for one attaching subscriber; `None` once more arrived than
/// its queue could hold (it is then cut off as a slow consumer).
type Buffered = Option<Vec<Arc<Push>>>;

impl Attaching {
    pub(super) fn begin(&mut self, connection: u64) {
        self.0.push((connection, Some(Vec::new())));
    }

    /// Keeps `push` for `connection` if it is attaching, at most `max` of
    /// them; false if it is live.
    pub(super) fn buffer(&mut self, connection: u64, push: &Arc<Push>, max: usize) -> bool {
        let Some((_, buffered)) = self.0.iter_mut().find(|(id, _)| *id == connection) else {
            return false;
        };
        match buffered {
            Some(pushes) if pushes.len() < max => pushes.push(push.clone()),
            _ => *buffered = None,
        }
        true
    }

    /// Makes `connection` live; returns what was buffered for it, in order
    /// (`None` if that overflowed).
    pub(super) fn end(&mut self, connection: u64) -> Buffered {
        match self.0.iter().position(|(id, _)| *id == connection) {
            Some(i) => self.0.swap_remove(i).1,
            None => Some(Vec::new()),
        }
    }
}

struct Member {
    connections: usize,
    info: Arc<serde_json::Value>,
}

/// One entry of a presence listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Presence {
    pub(crate) user: Arc<str>,
    /// What the plugin returned at subscribe time; `{}` when nothing.
    pub(crate) info: Arc<serde_json::Value>,
}

/// How a subscription counts in presence.
pub(super) struct Membership {
    pub(super) user: Arc<str>,
    pub(super) info: Option<serde_json::Value>,
}

impl Subscribers {
    /// Adds (or replaces) `connection`'s subscription. Returns the member
    /// when this makes its user present here (its first connection).
    pub(super) fn insert(
        &mut self,
        connection: Arc<Connection>,
        audience: Arc<str>,
        membership: Option<Membership>,
    ) -> Option<Presence> {
        let id = connection.id();
        // A replaced subscription keeps its user present: no join, no leave.
        let replaced = self.by_connection.contains_key(&id);
        if replaced {
            self.remove(id);
        }
        *self.audiences.entry(audience.clone()).or_default() += 1;
        let mut joined = None;
        let member = membership.map(|Membership { user, info }| {
            let member = self.members.entry(user.clone()).or_insert_with(|| {
                let info = Arc::new(info.unwrap_or_else(|| json!({})));
                joined = Some(Presence {
                    user: user.clone(),
                    info: info.clone(),
                });
                Member {
                    connections: 0,
                    info,
                }
            });
            member.connections += 1;
            user
        });
        self.by_connection.insert(
            id,
            Subscriber {
                connection,
                audience,
                member,
                start: 0,
            },
        );
        joined.filter(|_| !replaced)
    }

    /// Ends `connection`'s subscription. Returns the member when its user
    /// has no other connection here any more.
    pub(super) fn remove(&mut self, connection: u64) -> Option<Presence> {
        let old = self.by_connection.remove(&connection)?;
        self.attaching.end(connection);
        self.forget_audience(&old.audience);
        let user = old.member?;
        let member = self.members.get_mut(&user)?;
        member.connections -= 1;
        if member.connections > 0 {
            return None;
        }
        let member = self.members.remove(&user)?;
        Some(Presence {
            user,
            info: member.info,
        })
    }

    /// Changes the audience of a subscription (after a plugin reload); the
    /// member's info is replaced too, without a push. Returns the member
    /// when its info was replaced.
    pub(super) fn reassign(
        &mut self,
        connection: u64,
        audience: Arc<str>,
        info: Option<serde_json::Value>,
    ) -> Option<Presence> {
        let subscriber = self.by_connection.get_mut(&connection)?;
        let old = std::mem::replace(&mut subscriber.audience, audience.clone());
        let member = subscriber.member.clone();
        *self.audiences.entry(audience).or_default() += 1;
        self.forget_audience(&old);
        let (user, info) = (member?, info?);
        let member = self.members.get_mut(&user)?;
        member.info = Arc::new(info);
        Some(Presence {
            user,
            info: member.info.clone(),
        })
    }

    fn forget_audience(&mut self, audience: &Arc<str>) {
        if let Some(count) = self.audiences.get_mut(audience) {
            *count -= 1;
            if *count == 0 {
                self.audiences.remove(audience);
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_connection.is_empty()
    }

    /// Members sorted by user id (the node's own; listings ask the engine).
    #[cfg(test)]
    pub(super) fn members(&self) -> Vec<Presence> {
        let mut members: Vec<Presence> = self
            .members
            .iter()
            .map(|(user, member)| Presence {
                user: user.clone(),
                info: member.info.clone(),
            })
            .collect();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        members
    }
}

/// The `join` or `leave` push of `event`.
pub(super) fn presence_push(event: &PresenceEvent) -> Arc<Push> {
    let info = event.info_json();
    let frame = json!({
        "type": event.change.as_str(),
        "channel": event.channel.as_str(),
        "user": &*event.user,
        "info": info,
    });
    Arc::new(Push {
        channel: event.channel.clone(),
        kind: event.change.as_str(),
        position: None,
        frame: frame.to_string().into(),
        signed_position: OnceLock::new(),
    })
}

/// The push telling a subscriber the server ended its subscription.
pub(super) fn unsubscribed_push(channel: &ChannelName, reason: &str) -> Arc<Push> {
    let frame = json!({"type": "unsubscribed", "channel": channel.as_str(), "reason": reason});
    Arc::new(Push {
        channel: channel.clone(),
        kind: "unsubscribed",
        position: None,
        frame: frame.to_string().into(),
        signed_position: OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};

    use tokio::sync::Notify;

    use super::*;

    fn connection(id: u64) -> Arc<Connection> {
        Arc::new(Connection {
            id,
            identity: Default::default(),
            pushes: Default::default(),
            channels: Mutex::new(HashSet::new()),
            cut_off: OnceLock::new(),
            cut_off_signal: Notify::new(),
        })
    }

    fn member(user: &str, name: &str) -> Option<Membership> {
        Some(Membership {
            user: Arc::from(user),
            info: Some(json!({ "name": name })),
        })
    }

    fn user(member: Option<Presence>) -> Option<String> {
        member.map(|m| m.user.to_string())
    }

    #[test]
    fn a_user_joins_once_and_leaves_with_the_last_connection() {
        let mut subscribers = Subscribers::default();
        let joined = subscribers
            .insert(connection(1), Arc::from(""), member("ann", "Ann"))
            .unwrap();
        assert_eq!(
            (&*joined.user, &*joined.info),
            ("ann", &json!({"name": "Ann"}))
        );
        assert!(subscribers
            .insert(connection(2), Arc::from(""), member("ann", "Ann again"))
            .is_none());
        assert_eq!(subscribers.members().len(), 1);
        assert_eq!(*subscribers.members()[0].info, json!({"name": "Ann"}));

        assert!(subscribers.remove(1).is_none(), "ann is still here");
        assert_eq!(
            user(subscribers.remove(2)).as_deref(),
            Some("ann"),
            "the last connection leaves"
        );
        assert!(subscribers.members().is_empty());
        assert!(subscribers.is_empty());
    }

    #[test]
    fn subscribers_without_membership_are_not_members() {
        let mut subscribers = Subscribers::default();
        assert!(subscribers
            .insert(connection(1), Arc::from(""), None)
            .is_none());
        assert!(subscribers.members().is_empty());
        assert!(subscribers.remove(1).is_none());
    }

    #[test]
    fn members_are_sorted_and_info_defaults_to_an_empty_object() {
        let mut subscribers = Subscribers::default();
        for (id, user) in [(1, "zoe"), (2, "bob"), (3, "max")] {
            let membership = Membership {
                user: Arc::from(user),
                info: None,
            };
            subscribers.insert(connection(id), Arc::from(""), Some(membership));
        }
        let members = subscribers.members();
        let users: Vec<&str> = members.iter().map(|m| &*m.user).collect();
        assert_eq!(users, ["bob", "max", "zoe"]);
        assert_eq!(*members[0].info, json!({}));
    }

    #[test]
    fn reassigning_moves_the_audience_count() {
        let mut subscribers = Subscribers::default();
        subscribers.insert(connection(1), Arc::from("a"), member("ann", "Ann"));
        subscribers.insert(connection(2), Arc::from("a"), member("bob", "Bob"));
        subscribers.reassign(1, Arc::from("b"), Some(json!({"name": "Ann B."})));
        assert_eq!(subscribers.audiences.get("a"), Some(&1));
        assert_eq!(subscribers.audiences.get("b"), Some(&1));
        assert_eq!(*subscribers.members()[0].info, json!({"name": "Ann B."}));
        subscribers.remove(2);
        assert_eq!(subscribers.audiences.get("a"), None);
    }
}
