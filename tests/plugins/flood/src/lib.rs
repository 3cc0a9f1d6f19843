//! Test plugin `flood` (never deploy): `on_publish` replaces every message with ~3 MiB.
//!
//! Governs `flood:*` (client publish on). Subscribing works normally; every publish answers
//! with replacement data larger than the broker's `plugins.max_output_bytes` (2 MiB by
//! default), which the broker must refuse with `internal` instead of fanning it out.

use std::hint::black_box;
use stellwerk_plugin_sdk::prelude::*;

pub struct Flood;

/// Size of the replacement's padding: well above the default 2 MiB output cap.
const FLOOD_BYTES: usize = 3 << 20;

impl ChannelPlugin for Flood {
    fn describe() -> Description {
        Description::new("flood", env!("CARGO_PKG_VERSION"))
            .namespace("flood", ChannelOptions::new().client_publish())
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        match req.identity {
            Some(_) => SubscribeDecision::allow(),
            None => SubscribeDecision::deny("login required"),
        }
    }

    fn on_publish(req: &PublishRequest) -> PublishDecision {
        let padding = "x".repeat(black_box(FLOOD_BYTES));
        PublishDecision::replace(json!({ "original": req.data, "padding": padding }))
    }
}

export_plugin!(Flood);
