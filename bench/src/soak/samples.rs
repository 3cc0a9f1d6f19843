//! The broker seen from outside every few seconds: resident memory and open descriptors
//! from `/proc`, connections and what the engine holds from `/metrics`; and what the
//! series say (RSS after warm-up versus at the end, its slope).

use std::net::SocketAddr;

use serde::Serialize;

use crate::procfs;
use crate::stellwerk::{self, metric_sum};

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the churn started.
    pub(crate) t_s: f64,
    pub(crate) rss_kib: u64,
    pub(crate) fds: u64,
    /// From `/metrics` (`None` when it could not be read).
    pub(crate) connections: Option<f64>,
    pub(crate) engine_channels: Option<f64>,
    pub(crate) history_messages: Option<f64>,
    pub(crate) history_bytes: Option<f64>,
}

/// One sample. Descriptors are counted before `/metrics` is asked, so that the request's
/// own connection is not among them when it is new.
pub(crate) async fn take(client: &reqwest::Client, addr: SocketAddr, pid: u32, t_s: f64) -> Sample {
    let fds = procfs::open_fds(pid).unwrap_or(0);
    let rss_kib = procfs::rss_kib(pid).unwrap_or(0);
    let text = stellwerk::metrics(client, addr).await.ok();
    let metric = |name: &str| text.as_deref().and_then(|t| metric_sum(t, name));
    Sample {
        t_s,
        rss_kib,
        fds,
        connections: metric("stellwerk_connections"),
        engine_channels: metric("stellwerk_engine_channels"),
        history_messages: metric("stellwerk_history_messages"),
        history_bytes: metric("stellwerk_history_bytes"),
    }
}

/// When the warm-up ends: 20 % of the run, but at least 10 s in.
pub(crate) fn warmup_s(duration_s: f64) -> f64 {
    (duration_s * 0.2).max(10.0)
}

/// RSS after the warm-up and at the end, and the least-squares slope in between.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct RssTrend {
    /// The first sample at or after the warm-up.
    pub(crate) after_warmup_kib: Option<u64>,
    pub(crate) end_kib: Option<u64>,
    /// KiB per minute over the samples from the warm-up on; `None` with fewer than two.
    pub(crate) slope_kib_per_min: Option<f64>,
    pub(crate) samples_used: usize,
}

pub(crate) fn rss_trend(samples: &[Sample], warmup_s: f64) -> RssTrend {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let points: Vec<(f64, f64)> = after
        .iter()
        .map(|s| (s.t_s / 60.0, s.rss_kib as f64))
        .collect();
    RssTrend {
        after_warmup_kib: after.first().map(|s| s.rss_kib),
        end_kib: after.last().map(|s| s.rss_kib),
        slope_kib_per_min: slope(&points),
        samples_used: points.len(),
    }
}

/// Least-squares slope of y over x; `None` for fewer than two distinct x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_kib: u64) -> Sample {
        Sample {
            t_s,
            rss_kib,
            ..Sample::default()
        }
    }

    #[test]
    fn slope_is_kib_per_minute_after_the_warmup() {
        // 600 KiB a minute = 10 KiB a second, after a warm-up that doubled the memory.
        let mut samples = vec![sample(0.0, 1000), sample(5.0, 2000)];
        samples.extend((0..10).map(|i| sample(10.0 + 5.0 * i as f64, 2000 + 50 * i)));
        let trend = rss_trend(&samples, 10.0);
        assert_eq!(trend.after_warmup_kib, Some(2000));
        assert_eq!(trend.end_kib, Some(2450));
        assert_eq!(trend.samples_used, 10);
        let slope = trend.slope_kib_per_min.unwrap();
        assert!((slope - 600.0).abs() < 1e-6, "{slope}");
    }

    #[test]
    fn flat_memory_has_zero_slope_and_one_sample_none() {
        let flat: Vec<Sample> = (0..5).map(|i| sample(20.0 + i as f64, 5000)).collect();
        assert_eq!(rss_trend(&flat, 10.0).slope_kib_per_min, Some(0.0));
        assert_eq!(rss_trend(&flat[..1], 10.0).slope_kib_per_min, None);
    }

    #[test]
    fn warmup_is_a_fifth_of_the_run_but_at_least_ten_seconds() {
        assert_eq!(warmup_s(25.0), 10.0);
        assert_eq!(warmup_s(1800.0), 360.0);
    }
}
