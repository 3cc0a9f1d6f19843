//! The component ABI: bindings generated from `wit/plugin.wit` and the adapter between
//! them and [`ChannelPlugin`]. Plugin authors never see this module.
//!
//! Malformed input from the host (claims or data that are not JSON) cannot come from a
//! correct broker; should it happen anyway, the adapter fails closed: deny, or skip.

use crate::host::{self, Level};
use crate::{
    Channel, ChannelPlugin, Delivery, Description, FilterRequest, Identity, PublishDecision,
    PublishRequest, Source, SubscribeDecision, SubscribeRequest,
};
use serde_json::Value;
use std::marker::PhantomData;

#[allow(unsafe_code, unreachable_pub, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "channel-plugin",
        pub_export_macro: true,
        export_macro_name: "__export",
        default_bindings_module: "$crate::__private::bindings",
    });
}

use bindings::stellwerk::plugin::types as wit;

/// Implements the generated `Guest` trait for any [`ChannelPlugin`]; `export_plugin!`
/// exports `Exported<YourPlugin>`.
pub struct Exported<P>(PhantomData<P>);

impl<P: ChannelPlugin> bindings::Guest for Exported<P> {
    fn describe() -> wit::Description {
        install_panic_log();
        description_to_wit(&P::describe())
    }

    fn authorize_subscribe(request: wit::SubscribeRequest) -> wit::SubscribeDecision {
        install_panic_log();
        let request = match subscribe_request(request) {
            Ok(request) => request,
            Err(reason) => return subscribe_decision_to_wit(refuse(reason)),
        };
        subscribe_decision_to_wit(P::authorize_subscribe(&request))
    }

    fn on_publish(request: wit::PublishRequest) -> wit::PublishDecision {
        install_panic_log();
        match publish_request(request) {
            Ok(request) => publish_decision_to_wit(P::on_publish(&request)),
            Err(reason) => wit::PublishDecision::Deny(refuse_reason(reason)),
        }
    }

    fn filter(request: wit::FilterRequest) -> Vec<wit::Delivery> {
        install_panic_log();
        let data = match parse_json("data", &request.data_json) {
            Ok(data) => data,
            Err(reason) => {
                host::log(Level::Error, &reason);
                return request
                    .audiences
                    .iter()
                    .map(|_| wit::Delivery::Skip)
                    .collect();
            }
        };
        let message = FilterRequest {
            channel: Channel::new(request.channel),
            data,
        };
        request
            .audiences
            .iter()
            .map(|audience| match P::filter(&message, audience) {
                Delivery::Skip => wit::Delivery::Skip,
                Delivery::Original => wit::Delivery::Original,
                Delivery::Replace(data) => wit::Delivery::Replace(data.to_string()),
            })
            .collect()
    }
}

fn description_to_wit(description: &Description) -> wit::Description {
    wit::Description {
        name: description.name().to_owned(),
        version: description.version().to_owned(),
        filters: description.filters(),
        namespaces: description
            .namespaces()
            .iter()
            .map(|ns| wit::Namespace {
                name: ns.name.clone(),
                options: wit::ChannelOptions {
                    presence: ns.options.presence,
                    history_size: ns.options.history_size,
                    history_ttl_seconds: ns.options.history_ttl.as_secs(),
                    client_publish: ns.options.client_publish,
                },
            })
            .collect(),
    }
}

fn subscribe_request(request: wit::SubscribeRequest) -> Result<SubscribeRequest, String> {
    Ok(SubscribeRequest {
        channel: Channel::new(request.channel),
        identity: request.identity.map(identity).transpose()?,
    })
}

fn publish_request(request: wit::PublishRequest) -> Result<PublishRequest, String> {
    Ok(PublishRequest {
        channel: Channel::new(request.channel),
        data: parse_json("data", &request.data_json)?,
        source: match request.source {
            wit::PublishSource::Http => Source::Http,
            wit::PublishSource::Client => Source::Client,
        },
        identity: request.identity.map(identity).transpose()?,
    })
}

fn identity(identity: wit::Identity) -> Result<Identity, String> {
    Ok(Identity {
        claims: parse_json("claims", &identity.claims_json)?,
        user: identity.user,
    })
}

fn parse_json(what: &str, json: &str) -> Result<Value, String> {
    serde_json::from_str(json)
        .map_err(|err| format!("the broker sent {what} that are not JSON: {err}"))
}

/// Logs why a request could not even be read, and refuses it.
fn refuse(reason: String) -> SubscribeDecision {
    SubscribeDecision::Deny(refuse_reason(reason))
}

fn refuse_reason(reason: String) -> String {
    host::log(Level::Error, &reason);
    reason
}

fn subscribe_decision_to_wit(decision: SubscribeDecision) -> wit::SubscribeDecision {
    match decision {
        SubscribeDecision::Allow(grant) => wit::SubscribeDecision::Allow(wit::SubscriptionGrant {
            presence_info_json: grant.presence_info.map(|info| info.to_string()),
            audience: grant.audience,
        }),
        SubscribeDecision::Deny(reason) => wit::SubscribeDecision::Deny(reason),
    }
}

fn publish_decision_to_wit(decision: PublishDecision) -> wit::PublishDecision {
    match decision {
        PublishDecision::Allow => wit::PublishDecision::Allow,
        PublishDecision::Replace(data) => wit::PublishDecision::Replace(data.to_string()),
        PublishDecision::Deny(reason) => wit::PublishDecision::Deny(reason),
    }
}

/// On wasm a panic aborts without a word; route its message to the broker's log first, so
/// the author learns *why* a call trapped.
fn install_panic_log() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                host::log(Level::Error, &format!("plugin panicked: {info}"))
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    //! The adapter, driven natively exactly as the component exports drive it.

    use super::bindings::Guest;
    use super::*;
    use serde_json::json;

    struct Rules;

    impl ChannelPlugin for Rules {
        fn describe() -> Description {
            Description::new("rules", "0.1.0")
                .namespace(
                    "course",
                    crate::ChannelOptions::new()
                        .presence()
                        .history(5, std::time::Duration::from_millis(90_500)),
                )
                .with_filter()
        }

        fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
            let Some(id) = &req.identity else {
                return SubscribeDecision::deny("login required");
            };
            match id.claim_entry("courses", req.channel.rest()) {
                Some("dozent") => SubscribeDecision::allow_with_audience("staff")
                    .with_presence(json!({"user": id.user})),
                Some(_) => SubscribeDecision::allow(),
                None => SubscribeDecision::deny("not a member"),
            }
        }

        fn on_publish(req: &PublishRequest) -> PublishDecision {
            match req.source {
                Source::Client => {
                    PublishDecision::replace(json!({"by": req.user(), "text": req.data["text"]}))
                }
                Source::Http => PublishDecision::allow(),
            }
        }

        fn filter(req: &FilterRequest, audience: &str) -> Delivery {
            match audience {
                "staff" => Delivery::Original,
                _ if req.data["internal"] == json!(true) => Delivery::Skip,
                _ => Delivery::replace(json!({"text": req.data["text"]})),
            }
        }
    }

    /// Plugin without any optional hook: the defaults must fail closed.
    struct Bare;

    impl ChannelPlugin for Bare {
        fn describe() -> Description {
            Description::new("bare", "1").namespace("bare", crate::ChannelOptions::new())
        }
    }

    fn wit_identity(user: &str, claims: &str) -> Option<wit::Identity> {
        Some(wit::Identity {
            user: user.into(),
            claims_json: claims.into(),
        })
    }

    #[test]
    fn describe_reaches_the_wire_format() {
        let d = Exported::<Rules>::describe();
        assert_eq!(
            (d.name.as_str(), d.version.as_str(), d.filters),
            ("rules", "0.1.0", true)
        );
        assert_eq!(d.namespaces.len(), 1);
        let ns = &d.namespaces[0];
        assert_eq!(ns.name, "course");
        assert!(ns.options.presence && !ns.options.client_publish);
        assert_eq!(
            (ns.options.history_size, ns.options.history_ttl_seconds),
            (5, 90)
        );
        assert!(!Exported::<Bare>::describe().filters);
    }

    #[test]
    fn subscribe_parses_claims_and_encodes_grant() {
        let allow = Exported::<Rules>::authorize_subscribe(wit::SubscribeRequest {
            channel: "course:c1".into(),
            identity: wit_identity("u1", r#"{"courses":{"c1":"dozent"}}"#),
        });
        let wit::SubscribeDecision::Allow(grant) = allow else {
            panic!("denied: {allow:?}")
        };
        assert_eq!(grant.audience.as_deref(), Some("staff"));
        let info: Value =
            serde_json::from_str(grant.presence_info_json.as_deref().unwrap()).unwrap();
        assert_eq!(info, json!({"user": "u1"}));

        let deny = Exported::<Rules>::authorize_subscribe(wit::SubscribeRequest {
            channel: "course:c2".into(),
            identity: wit_identity("u1", r#"{"courses":{"c1":"dozent"}}"#),
        });
        assert!(matches!(deny, wit::SubscribeDecision::Deny(reason) if reason == "not a member"));
    }

    #[test]
    fn malformed_claims_fail_closed() {
        let decision = Exported::<Rules>::authorize_subscribe(wit::SubscribeRequest {
            channel: "course:c1".into(),
            identity: wit_identity("u1", "{not json"),
        });
        assert!(
            matches!(decision, wit::SubscribeDecision::Deny(reason) if reason.contains("claims"))
        );
    }

    #[test]
    fn publish_replace_is_encoded_as_json() {
        let decision = Exported::<Rules>::on_publish(wit::PublishRequest {
            channel: "course:c1".into(),
            data_json: r#"{"text":"hi","spoof":1}"#.into(),
            source: wit::PublishSource::Client,
            identity: wit_identity("u1", "{}"),
        });
        let wit::PublishDecision::Replace(json) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            json!({"by": "u1", "text": "hi"})
        );

        let bad = Exported::<Rules>::on_publish(wit::PublishRequest {
            channel: "course:c1".into(),
            data_json: "".into(),
            source: wit::PublishSource::Http,
            identity: None,
        });
        assert!(matches!(bad, wit::PublishDecision::Deny(_)));
    }

    #[test]
    fn filter_answers_once_per_audience_in_order() {
        let request = |data: &str| wit::FilterRequest {
            channel: "course:c1".into(),
            data_json: data.into(),
            audiences: vec!["".into(), "staff".into(), "other".into()],
        };
        let out = Exported::<Rules>::filter(request(r#"{"text":"t","secret":1}"#));
        assert!(
            matches!(&out[..], [wit::Delivery::Replace(a), wit::Delivery::Original, wit::Delivery::Replace(b)]
            if a == r#"{"text":"t"}"# && a == b)
        );

        let internal = Exported::<Rules>::filter(request(r#"{"internal":true}"#));
        assert!(matches!(
            &internal[..],
            [
                wit::Delivery::Skip,
                wit::Delivery::Original,
                wit::Delivery::Skip
            ]
        ));

        let broken = Exported::<Rules>::filter(request("nope"));
        assert!(broken.iter().all(|d| matches!(d, wit::Delivery::Skip)) && broken.len() == 3);
    }

    #[test]
    fn defaults_fail_closed() {
        let sub = Exported::<Bare>::authorize_subscribe(wit::SubscribeRequest {
            channel: "bare:x".into(),
            identity: wit_identity("u1", r#"{"perm":"root"}"#),
        });
        assert!(matches!(sub, wit::SubscribeDecision::Deny(_)));
        let publish = |source| {
            Exported::<Bare>::on_publish(wit::PublishRequest {
                channel: "bare:x".into(),
                data_json: "{}".into(),
                source,
                identity: None,
            })
        };
        assert!(matches!(
            publish(wit::PublishSource::Http),
            wit::PublishDecision::Allow
        ));
        assert!(matches!(
            publish(wit::PublishSource::Client),
            wit::PublishDecision::Deny(_)
        ));
        let out = Exported::<Bare>::filter(wit::FilterRequest {
            channel: "bare:x".into(),
            data_json: "{}".into(),
            audiences: vec!["".into()],
        });
        assert!(matches!(&out[..], [wit::Delivery::Original]));
    }
}
