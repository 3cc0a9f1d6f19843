//! Test plugin `slowfilter` (never deploy): `filter` spins as long as each message asks
//! (`spin_ms` by the clock, `work` rounds of computation).
//!
//! Governs `slow:*` with history (100 messages, an hour); anyone may subscribe, only the HTTP
//! API may publish. `filter` busy-waits `data.spin_ms` milliseconds (0 when absent) by the
//! host's clock, then answers `Original`. One such message is well within a call's deadline;
//! a history reply of many of them is not, which is what `tests/tests/sandbox.rs` checks: the
//! broker bounds the plugin CPU of one reply by one call's deadline, not one per message.

use std::hint::black_box;
use std::time::Duration;
use stellwerk_plugin_sdk::prelude::*;

pub struct SlowFilter;

impl ChannelPlugin for SlowFilter {
    fn describe() -> Description {
        Description::new("slowfilter", env!("CARGO_PKG_VERSION"))
            .namespace(
                "slow",
                ChannelOptions::new().history(100, Duration::from_secs(3600)),
            )
            .with_filter()
    }

    fn authorize_subscribe(_req: &SubscribeRequest) -> SubscribeDecision {
        SubscribeDecision::allow()
    }

    fn filter(req: &FilterRequest, _audience: &str) -> Delivery {
        let spin_ms = req.data.get("spin_ms").and_then(Value::as_u64).unwrap_or(0);
        let until = stellwerk_plugin_sdk::host::now_ms().saturating_add(spin_ms);
        while black_box(stellwerk_plugin_sdk::host::now_ms()) < until {}
        // `work`: rounds of pure computation, the same CPU time however busy the machine is.
        let work = req.data.get("work").and_then(Value::as_u64).unwrap_or(0);
        let mut x = 0u64;
        for i in 0..work {
            x = black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        black_box(x);
        Delivery::original()
    }
}

export_plugin!(SlowFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use stellwerk_plugin_sdk::testing;

    #[test]
    fn governs_slow_with_history_and_a_filter() {
        let description = testing::describe::<SlowFilter>();
        assert_eq!(description.name(), "slowfilter");
        assert!(description.options("slow").is_some());
        assert!(description.filters());
    }

    #[test]
    fn a_message_without_spin_ms_passes_at_once() {
        let deliveries = testing::filter::<SlowFilter>(
            &FilterRequest::for_channel("slow:x").with_data(json!({"text": "hi"})),
            &[""],
        );
        assert_eq!(deliveries, vec![Delivery::original()]);
    }
}
