//! Test plugin `liar` (never deploy): its `filter` answers replacement data that is not JSON.
//!
//! Governs `liar:*` and asks for `filter`. Subscribing and publishing work normally;
//! `filter` delivers a message as published unless its data contains `"lie"`, in which case
//! it "replaces" it with text that is not JSON. The broker must treat that answer as a fault
//! and skip the delivery (fail closed) rather than send garbage to subscribers.
//!
//! Written against the raw WIT world instead of the SDK: the SDK's `Delivery::Replace`
//! takes a `serde_json::Value`, so an SDK plugin cannot produce this fault at all.

use std::hint::black_box;

#[allow(unsafe_code, unreachable_pub, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../plugin-sdk/wit",
        world: "channel-plugin",
    });
}

use bindings::stellwerk::plugin::types::{
    ChannelOptions, Delivery, Description, FilterRequest, Namespace, PublishDecision,
    PublishRequest, PublishSource, SubscribeDecision, SubscribeRequest, SubscriptionGrant,
};

pub struct Liar;

impl bindings::Guest for Liar {
    fn describe() -> Description {
        Description {
            name: "liar".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            namespaces: vec![Namespace {
                name: "liar".into(),
                options: ChannelOptions {
                    presence: false,
                    history_size: 0,
                    history_ttl_seconds: 0,
                    client_publish: false,
                },
            }],
            filters: true,
        }
    }

    fn authorize_subscribe(request: SubscribeRequest) -> SubscribeDecision {
        match request.identity {
            Some(_) => SubscribeDecision::Allow(SubscriptionGrant {
                presence_info_json: None,
                audience: Some("readers".into()),
            }),
            None => SubscribeDecision::Deny("login required".into()),
        }
    }

    fn on_publish(request: PublishRequest) -> PublishDecision {
        match request.source {
            PublishSource::Http => PublishDecision::Allow,
            PublishSource::Client => PublishDecision::Deny("clients may not publish".into()),
        }
    }

    fn filter(request: FilterRequest) -> Vec<Delivery> {
        /// What the liar sends instead of a message it lies about: JSON's opening, never
        /// closed.
        const NOT_JSON: &str = "{\"text\": \"this is not JSON";
        let lie = black_box(request.data_json.contains("\"lie\""));
        request
            .audiences
            .iter()
            .map(|_| {
                if lie {
                    Delivery::Replace(black_box(NOT_JSON).to_owned())
                } else {
                    Delivery::Original
                }
            })
            .collect()
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Liar;
    super::bindings::export!(Liar with_types_in super::bindings);
}
