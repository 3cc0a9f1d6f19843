//! The answers a plugin gives: written so that a rule reads like the sentence it implements.

use serde_json::Value;

/// The answer to a subscribe request.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeDecision {
    /// Subscribe, with what the broker needs to know about this subscriber.
    Allow(Grant),
    /// Refuse; the reason reaches the client in its `forbidden` error.
    Deny(String),
}

/// What an allowed subscriber is granted besides the subscription itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grant {
    /// Subscribers with equal audience tags receive identical data (see
    /// [`ChannelPlugin::filter`](crate::ChannelPlugin::filter)).
    pub audience: Option<String>,
    /// Shown to the channel's other members in presence, where presence is on.
    pub presence_info: Option<Value>,
}

impl SubscribeDecision {
    /// Subscribe, in the default audience.
    pub fn allow() -> Self {
        Self::Allow(Grant::default())
    }

    /// Subscribe, tagged with an audience for [`filter`](crate::ChannelPlugin::filter).
    pub fn allow_with_audience(audience: impl Into<String>) -> Self {
        Self::Allow(Grant {
            audience: Some(audience.into()),
            presence_info: None,
        })
    }

    /// Refuse with a reason the client may see.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self::Deny(reason.into())
    }

    /// Adds the info other members see in presence (for example `{"name": "Ada"}`).
    /// Does nothing to a denial.
    #[must_use]
    pub fn with_presence(self, info: Value) -> Self {
        match self {
            Self::Allow(grant) => Self::Allow(Grant {
                presence_info: Some(info),
                ..grant
            }),
            deny @ Self::Deny(_) => deny,
        }
    }

    /// True for every kind of allow.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }

    /// The audience tag of an allow, if any.
    pub fn audience(&self) -> Option<&str> {
        match self {
            Self::Allow(grant) => grant.audience.as_deref(),
            Self::Deny(_) => None,
        }
    }

    /// The presence info of an allow, if any.
    pub fn presence_info(&self) -> Option<&Value> {
        match self {
            Self::Allow(grant) => grant.presence_info.as_ref(),
            Self::Deny(_) => None,
        }
    }

    /// The reason of a denial.
    pub fn deny_reason(&self) -> Option<&str> {
        match self {
            Self::Allow(_) => None,
            Self::Deny(reason) => Some(reason),
        }
    }
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishDecision {
    /// Publish the data as it is.
    Allow,
    /// Publish this data instead (for example with server-side fields added or removed).
    Replace(Value),
    /// Refuse; the reason reaches the publisher.
    Deny(String),
}

impl PublishDecision {
    /// Publish the data as it is.
    pub fn allow() -> Self {
        Self::Allow
    }

    /// Publish `data` instead of what was sent.
    pub fn replace(data: Value) -> Self {
        Self::Replace(data)
    }

    /// Refuse with a reason the publisher may see.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self::Deny(reason.into())
    }

    /// True for [`Allow`](Self::Allow) and [`Replace`](Self::Replace).
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::Deny(_))
    }

    /// The reason of a denial.
    pub fn deny_reason(&self) -> Option<&str> {
        match self {
            Self::Deny(reason) => Some(reason),
            Self::Allow | Self::Replace(_) => None,
        }
    }
}

/// What one audience receives of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Nothing: this audience does not see the message.
    Skip,
    /// The message as published.
    Original,
    /// This data instead (for example with fields removed).
    Replace(Value),
}

impl Delivery {
    /// Nothing: this audience does not see the message.
    pub fn skip() -> Self {
        Self::Skip
    }

    /// The message as published.
    pub fn original() -> Self {
        Self::Original
    }

    /// This data instead of the published one.
    pub fn replace(data: Value) -> Self {
        Self::Replace(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn presence_info_attaches_to_allows_only() {
        let allowed =
            SubscribeDecision::allow_with_audience("staff").with_presence(json!({"name": "Ada"}));
        assert_eq!(allowed.audience(), Some("staff"));
        assert_eq!(allowed.presence_info(), Some(&json!({"name": "Ada"})));

        let denied = SubscribeDecision::deny("no").with_presence(json!({"name": "Ada"}));
        assert_eq!(denied, SubscribeDecision::Deny("no".into()));
        assert_eq!(denied.presence_info(), None);
    }

    #[test]
    fn replace_counts_as_allowed_publish() {
        assert!(PublishDecision::replace(json!(1)).is_allowed());
        assert!(!PublishDecision::deny("x").is_allowed());
        assert_eq!(PublishDecision::deny("x").deny_reason(), Some("x"));
        assert_eq!(PublishDecision::allow().deny_reason(), None);
    }
}
