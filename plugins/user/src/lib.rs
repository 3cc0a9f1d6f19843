//! Channel plugin for the `user` namespace: one private channel per Stud.IP user, for
//! notifications, new messages and the like.
//!
//! Channels: `user:<user_id>`, for example `user:e7a0a84b161f3e8c09b4a0a2e8a58147`.
//!
//! Rules:
//! - Only the user whose id is in the channel name subscribes: the token's `sub` must equal
//!   `<user_id>`. Everybody else, and anonymous connections, are refused.
//! - Only Stud.IP's server (the HTTP API) publishes; clients never do.
//!
//! History keeps 50 messages for a day, so a user who comes back after a while still gets
//! recent notifications; no presence (a private channel has one member).

use stellwerk_plugin_sdk::prelude::*;

pub struct User;

impl ChannelPlugin for User {
    fn describe() -> Description {
        Description::new("user", env!("CARGO_PKG_VERSION")).namespace(
            "user",
            ChannelOptions::new().history(50, Duration::from_secs(24 * 3600)),
        )
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        let Some(user) = req.user() else {
            return SubscribeDecision::deny("login required");
        };
        match owner(&req.channel) {
            Err(reason) => SubscribeDecision::deny(reason),
            Ok(owner) if owner == user => SubscribeDecision::allow(),
            Ok(_) => SubscribeDecision::deny("this is another user's channel"),
        }
    }

    fn on_publish(req: &PublishRequest) -> PublishDecision {
        if let Err(reason) = owner(&req.channel) {
            return PublishDecision::deny(reason);
        }
        match req.source {
            Source::Http => PublishDecision::allow(),
            Source::Client => PublishDecision::deny("clients may not publish on user channels"),
        }
    }
}

export_plugin!(User);

/// The `<user_id>` of `user:<user_id>`, or says what is wrong with the name.
fn owner(channel: &Channel) -> Result<&str, &'static str> {
    let mut segments = channel.segments();
    match (segments.next(), segments.next()) {
        (Some(user_id), None) if !user_id.is_empty() => Ok(user_id),
        _ => Err("user channels are named user:<user_id>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellwerk_plugin_sdk::testing;

    const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
    const BOB: &str = "76ed43ef286fb55cf9e41beadb484a9f";
    const ADA_CHANNEL: &str = "user:e7a0a84b161f3e8c09b4a0a2e8a58147";

    fn subscribe(channel: &str, user: &str, claims: Value) -> SubscribeDecision {
        User::authorize_subscribe(&SubscribeRequest::for_channel(channel).by_user(user, claims))
    }

    #[test]
    fn governs_user_with_a_day_of_history_and_nothing_else() {
        let description = testing::describe::<User>();
        assert_eq!(description.name(), "user");
        assert_eq!(description.namespaces().len(), 1);
        let options = description.options("user").expect("governs `user`");
        assert_eq!(options.history_size, 50);
        assert_eq!(options.history_ttl, Duration::from_secs(86_400));
        assert!(!options.presence, "no presence on private channels");
        assert!(
            !options.client_publish,
            "clients do not publish on user channels"
        );
        assert!(!description.filters());
    }

    #[test]
    fn the_owner_subscribes() {
        assert_eq!(
            subscribe(ADA_CHANNEL, ADA, json!({"perm": "user"})),
            SubscribeDecision::allow()
        );
    }

    #[test]
    fn everybody_else_is_refused_even_root() {
        for perm in ["autor", "dozent", "admin", "root"] {
            let decision = subscribe(ADA_CHANNEL, BOB, json!({ "perm": perm }));
            assert_eq!(
                decision.deny_reason(),
                Some("this is another user's channel"),
                "perm {perm}"
            );
        }
        // A claim that merely mentions the channel does not make it yours.
        let decision = subscribe(
            ADA_CHANNEL,
            BOB,
            json!({"channels": [ADA_CHANNEL], "sub": ADA}),
        );
        assert!(!decision.is_allowed());
    }

    #[test]
    fn anonymous_subscribers_are_refused() {
        let decision = User::authorize_subscribe(&SubscribeRequest::for_channel(ADA_CHANNEL));
        assert_eq!(decision.deny_reason(), Some("login required"));
    }

    #[test]
    fn malformed_channels_are_refused_with_a_reason() {
        for channel in [
            "user:",
            "user",
            "user:e7a0a84b161f3e8c09b4a0a2e8a58147:inbox",
        ] {
            let decision = subscribe(channel, ADA, json!({}));
            assert_eq!(
                decision.deny_reason(),
                Some("user channels are named user:<user_id>"),
                "{channel}"
            );
        }
    }

    #[test]
    fn the_server_publishes_unchanged() {
        let req = PublishRequest::for_channel(ADA_CHANNEL)
            .with_data(json!({"type": "message.created", "id": "4711"}));
        assert_eq!(User::on_publish(&req), PublishDecision::allow());
        let malformed = PublishRequest::for_channel("user:a:b");
        assert!(!User::on_publish(&malformed).is_allowed());
    }

    #[test]
    fn clients_may_not_publish_not_even_the_owner() {
        let req = PublishRequest::for_channel(ADA_CHANNEL)
            .with_data(json!({"text": "note to self"}))
            .by_user(ADA, json!({"perm": "root"}));
        assert_eq!(
            User::on_publish(&req).deny_reason(),
            Some("clients may not publish on user channels")
        );
    }
}
