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
use crate::servers::{self, Server, ServerSetup};

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
    /// Stellwerk only: how many nodes, and on which engine.
    pub(crate) topology: Topology,
}

/// The brokers of one run: one node on the memory engine, or `nodes` on one Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Topology {
    pub(crate) nodes: usize,
    pub(crate) redis: bool,
}

impl Topology {
    pub(crate) const SINGLE: Topology = Topology {
        nodes: 1,
        redis: false,
    };

    pub(crate) fn name(self) -> String {
        if self.redis {
            format!("redis x{}", self.nodes)
        } else {
            "memory".into()
        }
    }
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
    pub(crate) topology: Topology,
    /// Redis's share of `server_cpu_s` (0 without Redis).
    pub(crate) redis_cpu_s: f64,
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
    let topology = p.topology;
    let label = match topology.redis {
        true => format!("{label}-redis{}", topology.nodes),
        false => label,
    };
    let redis = match topology.redis {
        true => Some(servers::start_redis(setup, &label).await?),
        false => None,
    };
    let engine_env: Vec<(String, String)> = match &redis {
        Some(redis) => vec![
            ("STELLWERK_ENGINE_KIND".into(), "redis".into()),
            ("STELLWERK_ENGINE_REDIS_URL".into(), redis.redis_url()),
        ],
        None => vec![],
    };
    let mut nodes = Vec::with_capacity(topology.nodes);
    for node in 0..topology.nodes.max(1) {
        // Queue long enough for the whole run: a cut-off would measure the queue, not the
        // broker.
        let label = format!("{label}-node{node}");
        nodes.push(
            broker
                .start_with(setup, &label, p.messages + 1024, &engine_env)
                .await?,
        );
    }
    let pids: Vec<u32> = nodes
        .iter()
        .chain(redis.as_ref())
        .map(Server::pid)
        .collect();
    let redis_pid = redis.as_ref().map(Server::pid);

    // Subscribers spread evenly over the nodes, as a load balancer would.
    let mut opened = clients::Opened::default();
    for (i, node) in nodes.iter().enumerate() {
        let share = p.subscribers / nodes.len() + usize::from(i < p.subscribers % nodes.len());
        let more = clients::open_many(
            broker,
            node.ws_addr,
            share,
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
        opened.merge(more);
    }
    if opened.connections.is_empty() {
        stop_all(nodes, redis).await;
        bail!(
            "no subscriber could connect: {}",
            opened.first_error.unwrap_or_default()
        );
    }
    let addr = nodes[0].ws_addr;
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
    // One publisher per node, each with its share of the messages and of the rate: PHP
    // publishes through the load balancer too.
    let mut publishers = Vec::with_capacity(nodes.len());
    for node in &nodes {
        publishers.push(
            broker
                .publisher(
                    node.ws_addr,
                    &p.channel,
                    (p.http_concurrency / nodes.len()).max(1),
                )
                .await?,
        );
    }

    let hook_before = match &p.filter_metrics_of {
        Some(plugin) => filter_hook(addr, plugin).await,
        None => None,
    };
    let cpu_before = cpu_seconds(&pids)?;
    let redis_before = cpu_seconds(redis_pid.as_slice())?;
    let gen_before = procfs::own_cpu_seconds()?;
    let t0 = payload::now_nanos();
    let start = Instant::now();
    let shares = publishers.len();
    let reports =
        futures_util::future::join_all(publishers.iter_mut().enumerate().map(|(i, publisher)| {
            let share = p.messages / shares + usize::from(i < p.messages % shares);
            let rate = p.rate.map(|r| r / shares as f64);
            publisher.run(share as u64, rate, p.size, deadline)
        }))
        .await;
    let report = clients::Published::sum(reports);
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
    let server_cpu_s = cpu_seconds(&pids)? - cpu_before;
    let redis_cpu_s = cpu_seconds(redis_pid.as_slice())? - redis_before;
    let generator_cpu_s = procfs::own_cpu_seconds()? - gen_before;
    let server_rss_kib = pids
        .iter()
        .map(|&pid| procfs::rss_kib(pid).unwrap_or(0))
        .sum();
    let filter_hook = match (&p.filter_metrics_of, hook_before) {
        (Some(plugin), Some(before)) => filter_hook(addr, plugin).await.map(|after| HookCost {
            calls: after.calls - before.calls,
            seconds: after.seconds - before.seconds,
        }),
        _ => None,
    };

    drop(publishers);
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
    let server_log = nodes[0].log.display().to_string();
    stop_all(nodes, redis).await;

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
        topology,
        redis_cpu_s,
    })
}

/// CPU seconds of all `pids` together.
fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| procfs::cpu_seconds(pid)).sum()
}

async fn stop_all(nodes: Vec<Server>, redis: Option<Server>) {
    for server in nodes.into_iter().chain(redis) {
        server.stop().await;
    }
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
