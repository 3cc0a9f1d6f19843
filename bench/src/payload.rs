//! The benchmark message: a JSON object of a fixed size that carries its own send time.
//!
//! Both brokers carry the same bytes, so the receiver finds the timestamp the same way in a
//! Stellwerk push envelope and in a NATS `MSG` payload: by the `"ts":` key.

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the first call in this process. Publisher and subscribers live in the
/// same process, so a monotonic clock is exact and immune to wall-clock steps.
pub(crate) fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `{"seq":…,"ts":…,"pad":"xx…"}` padded to `size` bytes (or just over, for tiny sizes).
pub(crate) fn message(seq: u64, ts: u64, size: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"ts\":{ts},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + pad + 2);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// The send timestamp inside a delivered message, wherever the broker put the payload.
pub(crate) fn timestamp(bytes: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts\":";
    let at = bytes.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = &bytes[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Latency percentiles over all deliveries, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Percentiles {
    /// `samples_us` are latencies in microseconds; sorted in place.
    pub(crate) fn of(samples_us: &mut [u32]) -> Self {
        if samples_us.is_empty() {
            return Self::default();
        }
        samples_us.sort_unstable();
        let at = |q: f64| {
            let i = ((samples_us.len() as f64 * q).ceil() as usize).clamp(1, samples_us.len());
            f64::from(samples_us[i - 1]) / 1000.0
        };
        Self {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_requested_size_and_is_json() {
        let m = message(12, 345_678, 200);
        assert_eq!(m.len(), 200);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["seq"], 12);
        assert_eq!(v["ts"], 345_678);
    }

    #[test]
    fn timestamp_is_found_inside_an_envelope_with_reordered_keys() {
        let push = br#"{"type":"message","channel":"public:bench","epoch":"e","offset":3,"data":{"pad":"xx","seq":1,"ts":987654}}"#;
        assert_eq!(timestamp(push), Some(987_654));
        assert_eq!(timestamp(br#"{"type":"subscribed","offset":0}"#), None);
    }

    #[test]
    fn percentiles_pick_the_right_ranks() {
        let mut samples: Vec<u32> = (1..=1000).rev().map(|v| v * 1000).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.p50_ms, 500.0);
        assert_eq!(p.p99_ms, 990.0);
        assert_eq!(p.max_ms, 1000.0);
    }
}
