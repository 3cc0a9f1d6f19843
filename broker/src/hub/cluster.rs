//! Presence, channel listings and disconnects, answered for every node.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{authorize, engine_refusal, lock, Connection, CutOff, Hub, Inner, Presence};
use crate::channel::ChannelName;
use crate::engine::Question;
use crate::plugins::Governor;
use crate::protocol::Refusal;

impl Hub {
    /// Who is subscribed to `channel` (on any node), for a client that may
    /// subscribe to it.
    pub(crate) async fn presence_for(
        &self,
        connection: &Connection,
        channel: &ChannelName,
    ) -> Result<Vec<Presence>, Refusal> {
        let governor = self.governor(channel)?;
        authorize(&governor, channel, connection.identity().as_deref())?;
        self.members(&governor, channel).await
    }

    /// Who is subscribed to `channel` (on any node), as Stud.IP's server sees it.
    pub(crate) async fn presence(&self, channel: &ChannelName) -> Result<Vec<Presence>, Refusal> {
        let governor = self.governor(channel)?;
        self.members(&governor, channel).await
    }

    pub(super) async fn members(
        &self,
        governor: &Governor,
        channel: &ChannelName,
    ) -> Result<Vec<Presence>, Refusal> {
        if !governor.options().presence {
            return Err(Refusal::bad_request(format!(
                "presence is off for `{}` channels (plugin `{}`)",
                channel.namespace(),
                governor.plugin_name()
            )));
        }
        let members = self
            .inner
            .engine
            .presence()
            .members(channel)
            .await
            .map_err(|e| engine_refusal(&e))?;
        Ok(members
            .into_iter()
            .map(|member| Presence {
                user: member.user,
                info: Arc::new(
                    serde_json::from_str(&member.info).unwrap_or_else(|_| serde_json::json!({})),
                ),
            })
            .collect())
    }

    /// Channels with at least one subscriber (on any node) whose name
    /// starts with `prefix`, with their subscriber (connection) counts, by
    /// name.
    pub(crate) async fn channels(
        &self,
        prefix: &str,
    ) -> Result<Vec<(ChannelName, usize)>, Refusal> {
        let mut counts: BTreeMap<ChannelName, usize> =
            self.inner.local_channels(prefix).into_iter().collect();
        let question = Question::Channels {
            prefix: prefix.to_owned(),
        };
        for answer in self.ask_others(&question).await? {
            let Ok(listed) = serde_json::from_value::<Vec<(String, usize)>>(answer) else {
                continue;
            };
            for (name, count) in listed {
                if let Ok(channel) = ChannelName::parse(&name) {
                    *counts.entry(channel).or_default() += count;
                }
            }
        }
        Ok(counts.into_iter().collect())
    }

    /// Cuts off every connection of `user` on every node: each is detached
    /// from its channels at once and closes with a reason. Returns how many
    /// there were.
    pub(crate) async fn disconnect_user(&self, user: &str) -> Result<usize, Refusal> {
        let here = self.inner.disconnect_local(user);
        let question = Question::Disconnect {
            user: user.to_owned(),
        };
        let answers = self.ask_others(&question).await.map_err(|mut refusal| {
            // Not "nothing was done": this node's part is.
            refusal.message = format!(
                "{here} connection(s) of the user on this node were cut off; the other nodes \
                 could not be asked (the message store is unreachable), try again"
            );
            refusal
        })?;
        let elsewhere: u64 = answers.iter().filter_map(serde_json::Value::as_u64).sum();
        Ok(here + usize::try_from(elsewhere).unwrap_or(usize::MAX))
    }

    pub(super) async fn ask_others(
        &self,
        question: &Question,
    ) -> Result<Vec<serde_json::Value>, Refusal> {
        self.inner
            .engine
            .ask_others(question)
            .await
            .map_err(|e| engine_refusal(&e))
    }
}

impl Inner {
    /// This node's channels with subscribers whose name starts with
    /// `prefix`, with their subscriber (connection) counts, by name.
    pub(super) fn local_channels(&self, prefix: &str) -> Vec<(ChannelName, usize)> {
        let mut channels = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            channels.extend(
                shard
                    .iter()
                    .filter(|(name, _)| name.as_str().starts_with(prefix))
                    .map(|(name, subscribers)| (name.clone(), subscribers.by_connection.len())),
            );
        }
        channels.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        channels
    }

    /// Cuts off this node's connections of `user`; how many there were.
    pub(super) fn disconnect_local(&self, user: &str) -> usize {
        let connections: Vec<Arc<Connection>> = lock(&self.users)
            .get(user)
            .map(|c| c.iter().filter_map(|(_, c)| c.upgrade()).collect())
            .unwrap_or_default();
        for connection in &connections {
            self.cut(connection, CutOff::Disconnected);
        }
        connections.len()
    }

    /// Another node's question, for this node's connections.
    pub(super) fn answer_question(&self, question: &Question) -> serde_json::Value {
        match question {
            Question::Disconnect { user } => serde_json::json!(self.disconnect_local(user)),
            Question::Channels { prefix } => serde_json::json!(self
                .local_channels(prefix)
                .into_iter()
                .map(|(name, count)| (name.as_str().to_owned(), count))
                .collect::<Vec<_>>()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::*;
    use crate::protocol::ErrorCode;

    #[tokio::test]
    async fn channels_count_connections_and_match_the_prefix() {
        let (hub, _dir) = hub(64, usize::MAX);
        let chat = course("chat");
        let (a, _qa) = hub.register(Some(member("ann", "autor"))).unwrap();
        let (b, _qb) = hub.register(Some(member("ann", "autor"))).unwrap();
        hub.subscribe(&a, &chat).await.unwrap();
        hub.subscribe(&b, &chat).await.unwrap();
        hub.subscribe(&a, &news()).await.unwrap();
        assert_eq!(
            hub.channels("course:").await.unwrap(),
            vec![(chat.clone(), 2)]
        );
        assert_eq!(
            hub.channels("").await.unwrap(),
            vec![(chat, 2), (news(), 1)],
            "by name"
        );
        assert!(hub.channels("user:").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn presence_lists_each_user_once_with_the_plugins_info() {
        let (hub, _dir) = hub(64, usize::MAX);
        let chat = course("chat");
        let named = with_claims(
            "ann",
            &serde_json::json!({"sub": "ann", "name": "Ann", "courses": { COURSE: "autor" }}),
        );
        let (tab1, _q1) = hub.register(Some(named.clone())).unwrap();
        let (tab2, _q2) = hub.register(Some(named)).unwrap();
        let (bob, _q3) = hub.register(Some(member("bob", "tutor"))).unwrap();
        for conn in [&tab1, &tab2, &bob] {
            hub.subscribe(conn, &chat).await.unwrap();
        }
        let mut present = hub.presence(&chat).await.unwrap();
        present.sort_by(|a, b| a.user.cmp(&b.user));
        let users: Vec<&str> = present.iter().map(|p| &*p.user).collect();
        assert_eq!(users, ["ann", "bob"]);
        assert_eq!(*present[0].info, serde_json::json!({"name": "Ann"}));
        // Still there while one tab is: leaves with the last one.
        hub.unsubscribe(&tab1, &chat);
        assert_eq!(hub.presence(&chat).await.unwrap().len(), 2);
        hub.unsubscribe(&tab2, &chat);
        assert_eq!(hub.presence(&chat).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn presence_is_refused_where_the_plugin_turned_it_off_or_may_not_subscribe() {
        let (hub, _dir) = hub(64, usize::MAX);
        let refusal = hub.presence(&news()).await.unwrap_err();
        assert_eq!(refusal.code, ErrorCode::BadRequest, "{}", refusal.message);
        let (outsider, _q) = hub
            .register(Some(with_claims("eve", &serde_json::json!({"sub": "eve"}))))
            .unwrap();
        let refusal = hub
            .presence_for(&outsider, &course("chat"))
            .await
            .unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Forbidden, "{}", refusal.message);
    }

    #[tokio::test]
    async fn a_question_from_another_node_is_answered_for_this_one() {
        let (hub, _dir) = hub(64, usize::MAX);
        let (conn, _q) = hub.register(Some(identity("ann"))).unwrap();
        hub.subscribe(&conn, &news()).await.unwrap();
        let listed = hub.inner.answer_question(&Question::Channels {
            prefix: "public:".into(),
        });
        assert_eq!(listed, serde_json::json!([["public:news", 1]]));
        let cut = hub
            .inner
            .answer_question(&Question::Disconnect { user: "ann".into() });
        assert_eq!(cut, serde_json::json!(1));
        assert_eq!(conn.cut_reason(), Some(CutOff::Disconnected));
    }
}
