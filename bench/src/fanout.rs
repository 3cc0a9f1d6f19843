//! Scenario `fanout`: N subscribers on one channel, M published messages, every message to
//! every subscriber. The deciding figure is deliveries per server CPU-second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clients::{self, Broker, Claims};
use crate::payload::{self, Percentiles};
use crate::procfs;
use crate::servers::ServerSetup;

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) subscribers: usize,
    pub(crate) messages: usize,
    /// Messages per second, or `None` to publish as fast as the publisher can.
    pub(crate) rate: Option<f64>,
    /// Stellwerk's opt-in batching (`?batch=1`); nats always packs.
    pub(crate) batch: bool,
    pub(crate) size: usize,
    pub(crate) channel: String,
    pub(crate) timeout: Duration,
    /// After the last publish, stop waiting once nothing has arrived for this long.
    pub(crate) drain_idle: Duration,
    pub(crate) connect_concurrency: usize,
    pub(crate) read_buffer: usize,
    /// Stellwerk publish requests in flight at once (NATS publishes fire-and-forget).
    pub(crate) http_concurrency: usize,
    /// Token claims of the subscribers (Stellwerk), for plugins that read them.
    pub(crate) claims: Claims,
    /// Read this plugin's `filter` hook figures from Stellwerk's `GET /metrics` before and
    /// after publishing.
    pub(crate) filter_metrics_of: Option<String>,
}

/// A plugin hook's calls during the publishing phase, from `/metrics`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct HookCost {
    pub(crate) calls: f64,
    /// Sum of the calls' wall-clock durations.
    pub(crate) seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Outcome {
    pub(crate) target: Broker,
    pub(crate) batch: bool,
    pub(crate) rate: Option<f64>,
    pub(crate) subscribers: usize,
    pub(crate) subscribers_failed: usize,
    pub(crate) first_connect_error: Option<String>,
    pub(crate) published: u64,
    pub(crate) publish_errors: u64,
    pub(crate) first_publish_error: Option<String>,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    /// First publish to last delivery.
    pub(crate) elapsed_s: f64,
    pub(crate) publish_s: f64,
    pub(crate) deliveries_per_s: f64,
    pub(crate) server_cpu_s: f64,
    pub(crate) deliveries_per_cpu_s: f64,
    #[serde(flatten)]
    pub(crate) latency: Percentiles,
    pub(crate) generator_cpu_s: f64,
    pub(crate) server_rss_kib: u64,
    /// Subscribers whose connection ended during the run (e.g. cut off as slow consumers).
    pub(crate) subscribers_dropped: usize,
    pub(crate) first_drop_reason: Option<String>,
    pub(crate) timed_out: bool,
    pub(crate) server_log: String,
    pub(crate) channel: String,
    /// Distinct `group` claims among the subscribers (`filter` scenario), else 0.
    pub(crate) groups: usize,
    /// The `filter` hook's calls while publishing, if asked for and readable.
    pub(crate) filter_hook: Option<HookCost>,
}

impl Outcome {
    pub(crate) fn pace(&self) -> String {
        match self.rate {
            Some(r) => format!("{r}/s"),
            None => "unpaced".into(),
        }
    }
}

pub(crate) async fn run(broker: Broker, setup: &ServerSetup, p: &Params) -> Result<Outcome> {
    let deadline = Instant::now() + p.timeout;
    let label = format!(
        "fanout-{}-{}-{}",
        p.channel.split(':').next().unwrap_or_default(),
        if p.batch { "batch" } else { "nobatch" },
        p.rate.map_or("unpaced".to_string(), |r| format!("{r}"))
    );
    // Queue long enough for the whole run: a cut-off would measure the queue, not the broker.
    let server = broker.start(setup, &label, p.messages + 1024).await?;
    let pid = server.pid();
    let addr = server.ws_addr;

    let opened = clients::open_many(
        broker,
        addr,
        p.subscribers,
        p.connect_concurrency,
        clients::SubscribeAs {
            channel: &p.channel,
            batch: p.batch,
            read_buffer: p.read_buffer,
            claims: &p.claims,
        },
        deadline,
    )
    .await;
    if opened.connections.is_empty() {
        server.stop().await;
        bail!(
            "no subscriber could connect: {}",
            opened.first_error.unwrap_or_default()
        );
    }
    let subscribers = opened.connections.len();
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers: Vec<_> = opened
        .connections
        .into_iter()
        .map(|conn| {
            tokio::spawn(clients::read_until_stopped(
                conn,
                stop_rx.clone(),
                delivered.clone(),
                p.messages,
            ))
        })
        .collect();
    let mut publisher = broker
        .publisher(addr, &p.channel, p.http_concurrency)
        .await?;

    let hook_before = match &p.filter_metrics_of {
        Some(plugin) => filter_hook(addr, plugin).await,
        None => None,
    };
    let cpu_before = procfs::cpu_seconds(pid)?;
    let gen_before = procfs::own_cpu_seconds()?;
    let t0 = payload::now_nanos();
    let start = Instant::now();
    let report = publisher
        .run(p.messages as u64, p.rate, p.size, deadline)
        .await;
    let mut timed_out = opened.timed_out || report.timed_out;
    let published = report.ok;
    let publish_s = start.elapsed().as_secs_f64();

    // Drain: until everything arrived, nothing arrives any more, or time is up.
    let expected = published * subscribers as u64;
    let (mut last_count, mut last_progress) = (0, Instant::now());
    loop {
        let now_count = delivered.load(Ordering::Relaxed);
        let now = Instant::now();
        if now_count >= expected {
            break;
        }
        if now_count != last_count {
            (last_count, last_progress) = (now_count, now);
        } else if now.duration_since(last_progress) >= p.drain_idle {
            break;
        }
        if now >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server_cpu_s = procfs::cpu_seconds(pid)? - cpu_before;
    let generator_cpu_s = procfs::own_cpu_seconds()? - gen_before;
    let server_rss_kib = procfs::rss_kib(pid).unwrap_or(0);
    let filter_hook = match (&p.filter_metrics_of, hook_before) {
        (Some(plugin), Some(before)) => filter_hook(addr, plugin).await.map(|after| HookCost {
            calls: after.calls - before.calls,
            seconds: after.seconds - before.seconds,
        }),
        _ => None,
    };

    drop(publisher);
    let _ = stop_tx.send(true);
    let (mut received, mut last_ns, mut dropped, mut first_drop_reason) = (0u64, t0, 0, None);
    let mut latencies = Vec::with_capacity(expected as usize);
    for reader in readers {
        let tally = reader.await?;
        received += tally.received;
        last_ns = last_ns.max(tally.last_ns);
        latencies.extend_from_slice(&tally.latencies_us);
        if let Some(reason) = tally.ended {
            dropped += 1;
            first_drop_reason.get_or_insert(reason);
        }
    }
    let server_log = server.log.display().to_string();
    server.stop().await;

    let elapsed_s = (last_ns.saturating_sub(t0)) as f64 / 1e9;
    Ok(Outcome {
        target: broker,
        batch: p.batch,
        rate: p.rate,
        subscribers,
        subscribers_failed: opened.failed,
        first_connect_error: opened.first_error,
        published,
        publish_errors: report.errors,
        first_publish_error: report.first_error,
        expected,
        delivered: received,
        lost: expected.saturating_sub(received),
        elapsed_s,
        publish_s,
        deliveries_per_s: ratio(received as f64, elapsed_s),
        server_cpu_s,
        deliveries_per_cpu_s: ratio(received as f64, server_cpu_s),
        latency: Percentiles::of(&mut latencies),
        generator_cpu_s,
        server_rss_kib,
        subscribers_dropped: dropped,
        first_drop_reason,
        timed_out,
        server_log,
        channel: p.channel.clone(),
        groups: match p.claims {
            Claims::Groups(n) => n,
            _ => 0,
        },
        filter_hook,
    })
}

/// `stellwerk_plugin_call_duration_seconds_{sum,count}{plugin=…,hook="filter"}` from
/// `GET /metrics` (admin token); `None` if the endpoint or the series is missing.
async fn filter_hook(addr: std::net::SocketAddr, plugin: &str) -> Option<HookCost> {
    let text = crate::stellwerk::metrics(&reqwest::Client::new(), addr)
        .await
        .ok()?;
    let labels = format!("{{plugin=\"{plugin}\",hook=\"filter\"}}");
    let value = |suffix: &str| {
        let prefix = format!("stellwerk_plugin_call_duration_seconds_{suffix}{labels}");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(HookCost {
        calls: value("count")?,
        seconds: value("sum")?,
    })
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}
