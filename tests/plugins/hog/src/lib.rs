//! Test plugin `hog` (never deploy): `authorize_subscribe` allocates and touches 1 GiB.
//!
//! Governs `hog:*`. Publishing works normally; subscribing grows the instance's memory far
//! beyond the broker's memory cap, which must turn the growth into a trap (not into 1 GiB
//! of broker memory) and answer `internal`.

use std::hint::black_box;
use stellwerk_plugin_sdk::prelude::*;

pub struct Hog;

/// What one subscribe tries to allocate.
const HOG_BYTES: usize = 1 << 30;

impl ChannelPlugin for Hog {
    fn describe() -> Description {
        Description::new("hog", env!("CARGO_PKG_VERSION")).namespace("hog", ChannelOptions::new())
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        // Size and contents through `black_box`, and every page read back, so the optimiser
        // can neither shrink nor drop the allocation.
        let mut memory = vec![black_box(1u8); black_box(HOG_BYTES)];
        let mut sum: u64 = 0;
        for page in memory.chunks_mut(4096) {
            page[0] = black_box(page[0].wrapping_add(1));
            sum += u64::from(page[0]);
        }
        black_box(&memory);
        match req.identity {
            Some(_) => SubscribeDecision::allow().with_presence(json!({ "touched": sum })),
            None => SubscribeDecision::deny("login required"),
        }
    }
}

export_plugin!(Hog);
