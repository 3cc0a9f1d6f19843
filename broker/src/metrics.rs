//! Counters and latency histograms, rendered as Prometheus text on
//! `GET /metrics` (names prefixed `stellwerk_`).
//!
//! Hand-rolled rather than a metrics crate: a handful of atomics is all the
//! broker needs, and recording must cost no more than an atomic add.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in nanoseconds: 1 µs … 100 ms.
const BUCKETS_NS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

/// A fixed-bucket latency histogram; lock-free to record.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_NS.partition_point(|&le| le < ns);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }
}

/// A histogram read at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LatencySnapshot {
    buckets: [u64; BUCKETS_NS.len() + 1],
    sum_ns: u64,
}

impl LatencySnapshot {
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (e.g. 0.99);
    /// `None` without samples, [`Duration::MAX`] when it is above 100 ms.
    #[allow(dead_code)] // p99 for the admin API (next slice)
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    BUCKETS_NS
                        .get(i)
                        .map_or(Duration::MAX, |ns| Duration::from_nanos(*ns)),
                );
            }
        }
        Some(Duration::MAX)
    }

    /// Appends `_bucket`, `_sum` and `_count` lines for `name{labels}`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS_NS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |ns| format!("{}", *ns as f64 / 1e9));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Builds a Prometheus text exposition, one metric family at a time.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    pub(crate) fn histogram(&mut self, name: &str, labels: &str, latency: &LatencySnapshot) {
        latency.render(&mut self.out, name, labels);
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value (`\`, `"` and newlines).
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(1_000)); // exactly 1 µs: first bucket
        h.record(Duration::from_micros(3)); // ≤ 5 µs
        h.record(Duration::from_secs(1)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count(), 3);
        assert_eq!(s.quantile(0.33), Some(Duration::from_micros(1)));
        assert_eq!(s.quantile(0.5), Some(Duration::from_micros(5)));
        assert_eq!(s.quantile(1.0), Some(Duration::MAX));
        assert_eq!(Histogram::default().snapshot().quantile(0.99), None);
    }

    #[test]
    fn renders_cumulative_buckets() {
        let h = Histogram::default();
        h.record(Duration::from_micros(2));
        h.record(Duration::from_micros(2));
        let mut e = Exposition::default();
        e.family("stellwerk_x_seconds", "histogram", "x");
        e.histogram("stellwerk_x_seconds", "plugin=\"p\"", &h.snapshot());
        let text = e.finish();
        assert!(
            text.contains("stellwerk_x_seconds_bucket{plugin=\"p\",le=\"0.000001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("stellwerk_x_seconds_bucket{plugin=\"p\",le=\"0.0000025\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("stellwerk_x_seconds_bucket{plugin=\"p\",le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("stellwerk_x_seconds_count{plugin=\"p\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
