//! Test plugin `spin` (never deploy): `authorize_subscribe` never returns.
//!
//! Governs `spin:*`. Publishing works normally; subscribing loops until the broker's CPU
//! deadline (epoch interruption) stops the call, which the broker must answer with
//! `internal` and a fresh instance for the next call.

use std::hint::black_box;
use stellwerk_plugin_sdk::prelude::*;

pub struct Spin;

impl ChannelPlugin for Spin {
    fn describe() -> Description {
        Description::new("spin", env!("CARGO_PKG_VERSION")).namespace("spin", ChannelOptions::new())
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        // `black_box` hides from the optimiser that the condition never changes, so the
        // loop is really executed (and really has to be interrupted).
        let mut turns: u64 = 0;
        while black_box(req.channel.namespace() == "spin") {
            turns = black_box(turns.wrapping_add(1));
        }
        SubscribeDecision::deny(format!("unreachable after {turns} turns"))
    }
}

export_plugin!(Spin);
