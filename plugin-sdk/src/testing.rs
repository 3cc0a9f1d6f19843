//! Unit-test plugin rules with plain `cargo test`, no broker and no wasm needed.
//!
//! ```
//! use stellwerk_plugin_sdk::prelude::*;
//! use stellwerk_plugin_sdk::testing;
//!
//! struct Staff;
//! impl ChannelPlugin for Staff {
//!     fn describe() -> Description {
//!         Description::new("staff", "1").namespace("staff", ChannelOptions::new())
//!     }
//!     fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
//!         let perm = req.identity.as_ref().and_then(|id| id.claim_str("perm"));
//!         match perm {
//!             Some("admin" | "root") => SubscribeDecision::allow(),
//!             _ => SubscribeDecision::deny("staff only"),
//!         }
//!     }
//! }
//!
//! testing::describe::<Staff>(); // panics if the broker would refuse the description
//! let root = SubscribeRequest::for_channel("staff:news").by_user("u1", json!({"perm": "root"}));
//! assert!(Staff::authorize_subscribe(&root).is_allowed());
//! let anonymous = SubscribeRequest::for_channel("staff:news");
//! assert_eq!(Staff::authorize_subscribe(&anonymous).deny_reason(), Some("staff only"));
//! ```
//!
//! The host functions ([`crate::host`]) work natively: logs go to stderr and are kept for
//! [`take_logs`], time is the system clock unless [`set_now_ms`] fixes it, and the
//! configuration is `{}` unless [`set_config`] sets one. All of that is per thread, so tests
//! running in parallel do not interfere.

use crate::host::imp::{CONFIG_JSON, LOGS, NOW_MS};
use crate::host::Level;
use crate::{
    Channel, ChannelPlugin, Delivery, Description, FilterRequest, Identity, PublishRequest, Source,
    SubscribeRequest,
};
use serde_json::Value;

impl SubscribeRequest {
    /// An anonymous subscribe request for `channel`; add a user with [`by_user`](Self::by_user).
    pub fn for_channel(channel: &str) -> Self {
        Self {
            channel: Channel::new(channel),
            identity: None,
        }
    }

    /// The same request from the user `user` with these token claims.
    #[must_use]
    pub fn by_user(self, user: &str, claims: Value) -> Self {
        Self {
            identity: Some(Identity::new(user, claims)),
            ..self
        }
    }
}

impl PublishRequest {
    /// An HTTP API publish of `null` to `channel`; see [`with_data`](Self::with_data) and
    /// [`by_user`](Self::by_user).
    pub fn for_channel(channel: &str) -> Self {
        Self {
            channel: Channel::new(channel),
            data: Value::Null,
            source: Source::Http,
            identity: None,
        }
    }

    /// The same publish carrying `data`.
    #[must_use]
    pub fn with_data(self, data: Value) -> Self {
        Self { data, ..self }
    }

    /// The same publish sent by a connected client of the user `user` (so
    /// [`Source::Client`]); HTTP publishes never carry an identity.
    #[must_use]
    pub fn by_user(self, user: &str, claims: Value) -> Self {
        Self {
            source: Source::Client,
            identity: Some(Identity::new(user, claims)),
            ..self
        }
    }
}

impl FilterRequest {
    /// A message of `null` on `channel`; see [`with_data`](Self::with_data).
    pub fn for_channel(channel: &str) -> Self {
        Self {
            channel: Channel::new(channel),
            data: Value::Null,
        }
    }

    /// The same message carrying `data`.
    #[must_use]
    pub fn with_data(self, data: Value) -> Self {
        Self { data, ..self }
    }
}

/// The plugin's description, checked as the broker checks it on load.
///
/// # Panics
/// With the reason if the broker would refuse it.
pub fn describe<P: ChannelPlugin>() -> Description {
    let description = P::describe();
    if let Err(reason) = description.validate() {
        panic!("the broker would refuse this description: {reason}");
    }
    description
}

/// Runs `filter` as the broker does: once per audience, in order.
///
/// # Panics
/// If the description lacks [`Description::with_filter`]: the broker would never call the
/// hook, so testing it would prove nothing.
pub fn filter<P: ChannelPlugin>(request: &FilterRequest, audiences: &[&str]) -> Vec<Delivery> {
    assert!(
        P::describe().filters(),
        "the broker never calls filter on this plugin: add `.with_filter()` to its description"
    );
    audiences
        .iter()
        .map(|audience| P::filter(request, audience))
        .collect()
}

/// Sets what [`host::config`](crate::host::config) returns on this thread.
pub fn set_config(config: &Value) {
    CONFIG_JSON.with(|slot| *slot.borrow_mut() = Some(config.to_string()));
}

/// Fixes [`host::now_ms`](crate::host::now_ms) on this thread (`None`: the system clock).
pub fn set_now_ms(now_ms: Option<u64>) {
    NOW_MS.with(|slot| slot.set(now_ms));
}

/// The lines logged on this thread since the last call, oldest first.
pub fn take_logs() -> Vec<(Level, String)> {
    LOGS.with(|logs| std::mem::take(&mut *logs.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;
    use crate::{ChannelOptions, SubscribeDecision};
    use serde_json::json;

    struct Filtered;
    impl ChannelPlugin for Filtered {
        fn describe() -> Description {
            Description::new("f", "1")
                .namespace("f", ChannelOptions::new())
                .with_filter()
        }
        fn filter(_: &FilterRequest, audience: &str) -> Delivery {
            if audience == "staff" {
                Delivery::Original
            } else {
                Delivery::Skip
            }
        }
    }

    struct Unfiltered;
    impl ChannelPlugin for Unfiltered {
        fn describe() -> Description {
            Description::new("u", "1").namespace("u", ChannelOptions::new())
        }
    }

    struct Broken;
    impl ChannelPlugin for Broken {
        fn describe() -> Description {
            Description::new("b", "1").namespace("Not Valid", ChannelOptions::new())
        }
    }

    #[test]
    fn builders_fill_the_requests() {
        let sub =
            SubscribeRequest::for_channel("public:news").by_user("u1", json!({"perm": "autor"}));
        assert_eq!(sub.channel.namespace(), "public");
        assert_eq!(sub.user(), Some("u1"));
        assert_eq!(sub.identity.unwrap().claim_str("perm"), Some("autor"));

        let http = PublishRequest::for_channel("public:news").with_data(json!({"a": 1}));
        assert_eq!(
            (http.source, http.user(), &http.data),
            (Source::Http, None, &json!({"a": 1}))
        );
        let client = http.by_user("u2", json!({}));
        assert_eq!((client.source, client.user()), (Source::Client, Some("u2")));
    }

    #[test]
    fn filter_runs_per_audience_and_insists_on_the_flag() {
        let msg = FilterRequest::for_channel("f:x").with_data(json!(1));
        assert_eq!(
            filter::<Filtered>(&msg, &["", "staff"]),
            [Delivery::Skip, Delivery::Original]
        );
        let unflagged = std::panic::catch_unwind(|| filter::<Unfiltered>(&msg, &[""]));
        assert!(unflagged.is_err());
    }

    #[test]
    #[should_panic(expected = "does not match")]
    fn describe_refuses_what_the_broker_refuses() {
        describe::<Broken>();
    }

    #[test]
    fn host_stand_ins_are_settable() {
        assert_eq!(host::config(), json!({}));
        set_config(&json!({"greeting": "moin"}));
        assert_eq!(host::config()["greeting"], "moin");

        set_now_ms(Some(42));
        assert_eq!(host::now_ms(), 42);
        set_now_ms(None);
        assert!(host::now_ms() > 1_600_000_000_000);

        host::warn("careful");
        let _ = SubscribeDecision::allow();
        assert_eq!(take_logs(), [(Level::Warn, "careful".to_owned())]);
        assert!(take_logs().is_empty());
    }
}
