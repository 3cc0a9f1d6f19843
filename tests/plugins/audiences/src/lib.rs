//! Test plugin `audiences` (never deploy): the `filter` hook's cost, measured by
//! `stellwerk-bench filter`.
//!
//! Governs `aud:*`. Every authenticated user may subscribe; the subscriber's audience is the
//! token's `group` claim (a string; none → the untagged audience `""`), so the bench
//! chooses how many distinct audiences a channel has. `filter` is opted in and answers
//! `Original` for every audience: the bench measures what calling the hook costs the broker,
//! not what a replacement costs. The HTTP API may publish (the SDK default); clients may not.

use stellwerk_plugin_sdk::prelude::*;

pub struct Audiences;

impl ChannelPlugin for Audiences {
    fn describe() -> Description {
        Description::new("audiences", env!("CARGO_PKG_VERSION"))
            .namespace("aud", ChannelOptions::new())
            .with_filter()
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        let Some(identity) = &req.identity else {
            return SubscribeDecision::deny("login required");
        };
        match identity.claim_str("group") {
            Some(group) => SubscribeDecision::allow_with_audience(group),
            None => SubscribeDecision::allow(),
        }
    }

    fn filter(req: &FilterRequest, audience: &str) -> Delivery {
        let _ = (req, audience);
        Delivery::original()
    }
}

export_plugin!(Audiences);

#[cfg(test)]
mod tests {
    use super::*;
    use stellwerk_plugin_sdk::testing;

    #[test]
    fn governs_aud_with_a_filter() {
        let description = testing::describe::<Audiences>();
        assert_eq!(description.name(), "audiences");
        assert!(description.options("aud").is_some());
        assert!(description.filters());
    }

    #[test]
    fn the_group_claim_is_the_audience() {
        let decision = Audiences::authorize_subscribe(
            &SubscribeRequest::for_channel("aud:bench").by_user("u1", json!({"group": "g7"})),
        );
        assert_eq!(decision.audience(), Some("g7"));
        let anonymous = Audiences::authorize_subscribe(&SubscribeRequest::for_channel("aud:bench"));
        assert!(!anonymous.is_allowed());
    }
}
