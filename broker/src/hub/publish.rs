//! Publishing: every channel's plugin asked first, then one batch to the engine.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{engine_refusal, plugin_fault, Hub};
use crate::auth::Identity;
use crate::channel::ChannelName;
use crate::engine::{Outgoing, Position};
use crate::plugins::{PublishSource, PublishVerdict};
use crate::protocol::{ErrorCode, Refusal};

impl Hub {
    /// Publishes `data` (JSON text) to every channel, or to none: each
    /// channel's plugin is asked first, and one refusal refuses them all.
    pub(crate) async fn publish(
        &self,
        channels: &[ChannelName],
        data: &str,
        source: PublishSource,
        identity: Option<&Identity>,
    ) -> Result<Vec<Position>, Refusal> {
        let data = single_line(data);
        let mut approved = Vec::with_capacity(channels.len());
        for channel in channels {
            let governor = self.governor(channel)?;
            if source == PublishSource::Client && !governor.options().client_publish {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    format!(
                        "clients may not publish on `{}` channels",
                        channel.namespace()
                    ),
                ));
            }
            let data: Arc<str> = match governor.on_publish(channel, &data, source, identity) {
                PublishVerdict::Allow => Arc::from(&*data),
                PublishVerdict::Replace(replaced) => Arc::from(single_line(&replaced)),
                PublishVerdict::Deny { reason } => {
                    return Err(Refusal::new(ErrorCode::Forbidden, reason))
                }
                PublishVerdict::Fault => return Err(plugin_fault(&governor)),
            };
            approved.push(Outgoing {
                channel: channel.clone(),
                data,
                history: self.inner.history_policy(&governor),
            });
        }
        let positions = self
            .inner
            .engine
            .publish(&approved)
            .await
            .map_err(|e| engine_refusal(&e))?;
        self.inner
            .published
            .fetch_add(positions.len() as u64, Ordering::Relaxed);
        Ok(positions)
    }
}

/// JSON without line breaks. Pushes are `\n`-separated in batched frames
/// and SSE `data:` lines, and in valid JSON a line break can only be
/// insignificant whitespace (inside strings it is escaped), so dropping them
/// changes nothing but the layout of pretty-printed input.
pub(crate) fn single_line(json: &str) -> std::borrow::Cow<'_, str> {
    if json.contains(['\n', '\r']) {
        std::borrow::Cow::Owned(json.replace(['\n', '\r'], ""))
    } else {
        std::borrow::Cow::Borrowed(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::*;

    #[test]
    fn single_line_drops_only_layout() {
        let pretty = "{\n  \"text\": \"a\\nb\"\r\n}";
        assert_eq!(single_line(pretty), "{  \"text\": \"a\\nb\"}");
        assert!(matches!(
            single_line(r#"{"a":1}"#),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[tokio::test]
    async fn offsets_count_per_channel_and_the_plugin_sets_the_author() {
        let (hub, _dir) = hub(64, usize::MAX);
        let chat = course("chat");
        let both = [news(), chat.clone()];
        let first = hub
            .publish(&both, r#"{"text":"hi"}"#, PublishSource::Http, None)
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![1, 1]
        );
        let ann = member("ann", "autor");
        let second = hub
            .publish(
                std::slice::from_ref(&chat),
                r#"{"text":" hello ","author":"mallory"}"#,
                PublishSource::Client,
                Some(&ann),
            )
            .await
            .unwrap();
        assert_eq!(second[0].offset, 2);
        let kept = hub.history(&chat, None, Some(1)).await.unwrap();
        let data: serde_json::Value = serde_json::from_str(&kept.messages[0].data).unwrap();
        assert_eq!(
            data["author"], "ann",
            "the author is the sender, not what it claims"
        );
    }

    #[tokio::test]
    async fn one_refused_channel_refuses_the_whole_publish() {
        let (hub, _dir) = hub(64, usize::MAX);
        let unknown = ChannelName::parse("nobody:here").unwrap();
        let refusal = hub
            .publish(&[news(), unknown], "{}", PublishSource::Http, None)
            .await
            .unwrap_err();
        assert_eq!(refusal.code, ErrorCode::NotFound, "{}", refusal.message);
        // Clients may not publish where the plugin keeps publishing to the server.
        let ann = identity("ann");
        let refusal = hub
            .publish(&[news()], "{}", PublishSource::Client, Some(&ann))
            .await
            .unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Forbidden, "{}", refusal.message);
        assert!(hub
            .history(&news(), None, None)
            .await
            .unwrap()
            .messages
            .is_empty());
        assert_eq!(hub.stats().published, 0);
    }
}
