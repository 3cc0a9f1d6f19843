//! Test plugin `panicky` (never deploy): `on_publish` panics.
//!
//! Governs `panicky:*` (client publish on, so both the HTTP API and WebSocket clients reach
//! the hook). Subscribing works normally; every publish panics, which traps the instance:
//! the broker must refuse the publish with `internal` and log the panic message.

use std::hint::black_box;
use stellwerk_plugin_sdk::prelude::*;

pub struct Panicky;

impl ChannelPlugin for Panicky {
    fn describe() -> Description {
        Description::new("panicky", env!("CARGO_PKG_VERSION"))
            .namespace("panicky", ChannelOptions::new().client_publish())
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        match req.identity {
            Some(_) => SubscribeDecision::allow(),
            None => SubscribeDecision::deny("login required"),
        }
    }

    fn on_publish(req: &PublishRequest) -> PublishDecision {
        if black_box(true) {
            panic!("panicky: on_publish panics on purpose ({})", req.channel);
        }
        PublishDecision::allow()
    }
}

export_plugin!(Panicky);
