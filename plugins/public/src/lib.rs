//! Channel plugin for the `public` namespace: announcements that every logged-in user may
//! read and only Stud.IP's server (the HTTP API) may write.
//!
//! Channels: `public:<anything>`, for example `public:news` or `public:maintenance`.
//! History keeps the last 100 messages for 10 minutes, so a page coming back from the
//! back/forward cache catches up; no presence (nobody needs to know who reads the news).

use stellwerk_plugin_sdk::prelude::*;

pub struct Public;

impl ChannelPlugin for Public {
    fn describe() -> Description {
        Description::new("public", env!("CARGO_PKG_VERSION")).namespace(
            "public",
            ChannelOptions::new().history(100, Duration::from_secs(600)),
        )
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        match req.identity {
            Some(_) => SubscribeDecision::allow(),
            None => SubscribeDecision::deny("login required"),
        }
    }

    fn on_publish(req: &PublishRequest) -> PublishDecision {
        match req.source {
            Source::Http => PublishDecision::allow(),
            Source::Client => PublishDecision::deny("clients may not publish on public channels"),
        }
    }
}

export_plugin!(Public);

#[cfg(test)]
mod tests {
    use super::*;
    use stellwerk_plugin_sdk::testing;

    #[test]
    fn governs_public_with_ten_minutes_of_history_and_nothing_else() {
        let description = testing::describe::<Public>();
        assert_eq!(description.name(), "public");
        assert_eq!(description.namespaces().len(), 1);
        let options = description.options("public").expect("governs `public`");
        assert_eq!(options.history_size, 100);
        assert_eq!(options.history_ttl, Duration::from_secs(600));
        assert!(!options.presence, "no presence on public channels");
        assert!(
            !options.client_publish,
            "clients do not publish on public channels"
        );
        assert!(!description.filters(), "every reader sees the same message");
    }

    #[test]
    fn any_logged_in_user_may_subscribe() {
        for perm in ["user", "autor", "dozent", "root"] {
            let req = SubscribeRequest::for_channel("public:news")
                .by_user("e7a0a84b161f3e8c09b4a0a2e8a58147", json!({ "perm": perm }));
            assert_eq!(
                Public::authorize_subscribe(&req),
                SubscribeDecision::allow(),
                "perm {perm}"
            );
        }
        let no_claims =
            SubscribeRequest::for_channel("public:maintenance").by_user("u1", json!({}));
        assert!(Public::authorize_subscribe(&no_claims).is_allowed());
    }

    #[test]
    fn anonymous_subscribers_are_refused() {
        let decision = Public::authorize_subscribe(&SubscribeRequest::for_channel("public:news"));
        assert_eq!(decision.deny_reason(), Some("login required"));
    }

    #[test]
    fn the_server_publishes_unchanged() {
        let req = PublishRequest::for_channel("public:news")
            .with_data(json!({"type": "news.created", "id": "4711"}));
        assert_eq!(Public::on_publish(&req), PublishDecision::allow());
    }

    #[test]
    fn clients_may_not_publish_even_when_logged_in() {
        let req = PublishRequest::for_channel("public:news")
            .with_data(json!({"text": "spam"}))
            .by_user("u1", json!({ "perm": "root" }));
        let decision = Public::on_publish(&req);
        assert!(!decision.is_allowed());
        assert_eq!(
            decision.deny_reason(),
            Some("clients may not publish on public channels")
        );
    }
}
