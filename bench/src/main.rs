//! `stellwerk-bench`: the load generator that measures Stellwerk against nats-server on the
//! same machine, in the same run (DESIGN.md §7).
//!
//! # Layout
//! - `procfs`: server CPU seconds and RSS from `/proc`, the fd limit.
//! - `servers`: start a fresh Stellwerk or nats-server per run.
//! - `wsclient`, `stellwerk`, `nats`: the client side of each broker's protocol.
//! - `payload`: the timestamped benchmark message and latency percentiles.
//! - `clients`: both brokers behind one face (subscribe, publish, read deliveries).
//! - `fanout`, `idle`: the scenarios; `plugin_cost`: `plugin-cost` and `filter`, built on
//!   the fan-out run; `reconnect`: `reconnect-storm` (recovery under load, Stellwerk only);
//!   `reload`: hot reload's time to live and its cost in throughput (Stellwerk only);
//!   `soak`: a steady mix of everything for minutes or hours, checking that no message is
//!   lost and that descriptors come back (Stellwerk only; it exits non-zero on a failure).
//! - `filter_exec`: `filter-exec`, no server: the `filter` hook run by wasmtime in this
//!   process, on the blocking pool versus async with epoch yield (issue #10).

mod clients;
mod fanout;
mod filter_exec;
mod idle;
mod nats;
mod payload;
mod plugin_cost;
mod plugin_load;
mod procfs;
mod reconnect;
mod reload;
mod servers;
mod soak;
mod sse;
mod stellwerk;
mod wsclient;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::clients::{Broker, Claims};
use crate::servers::ServerSetup;

#[derive(Debug, Parser)]
#[command(
    name = "stellwerk-bench",
    about = "Load generator: Stellwerk versus nats-server, side by side on this machine"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N subscribers on one channel, M messages: deliveries/s, latency, deliveries per server CPU-second.
    Fanout(FanoutArgs),
    /// K idle authenticated+subscribed connections: server KiB per connection.
    Idle(IdleArgs),
    /// Stellwerk only: fan-out on `public:bench`, `course:<id>:bench` (the Rust `course`
    /// plugin with its `filter`, two audiences) and `blubber:<thread>` (the JavaScript
    /// `blubber` plugin): deliveries per server CPU-second of each.
    PluginCost(PluginCostArgs),
    /// Stellwerk only: the `filter` hook with 10,000 subscribers in G audiences (the
    /// `audiences` test plugin): server CPU microseconds per message for each G.
    Filter(FilterArgs),
    /// Stellwerk only: N subscribers drop and reconnect with `recover` within `--spread`
    /// while publishing goes on: time until all recovered, messages lost (must be 0),
    /// server peak RSS.
    ReconnectStorm(ReconnectStormArgs),
    /// Stellwerk only: time from writing a plugin file to its rules being live (median,
    /// p99), and deliveries/s during a reload storm versus without one.
    Reload(ReloadArgs),
    /// Stellwerk only: each plugin's load at start-up, compiled cold versus from the
    /// compile cache (broker's own ms, spawn to ready, RSS), and what an instance slot costs.
    PluginLoad(PluginLoadArgs),
    /// Stellwerk only: a steady mix of connects, subscribes, publishes, presence, history,
    /// refreshes, plugin reloads and disconnects for `--minutes`; lost messages (must be
    /// 0), RSS after warm-up versus the end, open descriptors. Exits non-zero on a failure.
    Soak(SoakArgs),
    /// No server: the `course` plugin's `filter` run by wasmtime in this process, as the
    /// broker does (sync, in `spawn_blocking`) and async with epoch yield on the tokio
    /// workers; K ordered channels, optionally hostile channels spinning to their deadline,
    /// and a 1 ms probe task: calls per CPU-second, calls/s, probe lateness.
    FilterExec(FilterExecArgs),
}

#[derive(Debug, Args)]
struct FilterExecArgs {
    /// Numbers of concurrent `course` channels (each one's calls in order), one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64, 256])]
    channels: Vec<usize>,
    /// Numbers of hostile channels (the `slowfilter` test plugin spinning until its
    /// deadline), each run alongside `--hostile-with` course channels.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    hostile: Vec<usize>,
    /// Course channels running next to the hostile ones.
    #[arg(long, default_value_t = 16)]
    hostile_with: usize,
    /// Seconds of the measuring window of each run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds of load before the window opens.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Repetitions of the whole set (both modes, every configuration).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Tokio worker threads [default: the CPUs, as the broker's runtime].
    #[arg(long)]
    workers: Option<usize>,
    /// The plugin call deadline, milliseconds (the broker's default `plugins.call_timeout`).
    #[arg(long, default_value_t = 100)]
    call_timeout_ms: u64,
    /// Epoch tick, milliseconds (the broker's `EPOCH_TICK`).
    #[arg(long, default_value_t = 10)]
    epoch_tick_ms: u64,
    /// Idle instances kept per plugin (the broker's default `plugins.pool_size`).
    #[arg(long, default_value_t = 4)]
    pool_size: usize,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Where `slowfilter.wasm` is.
    #[arg(long, default_value = "target/test-plugins")]
    test_plugins_dir: PathBuf,
}

#[derive(Debug, Args)]
struct SoakArgs {
    #[command(flatten)]
    length: SoakLength,
    /// Long-lived WebSocket subscribers of the news and the chat (every second one batched)
    /// that must receive every acknowledged message.
    #[arg(long, default_value_t = 8)]
    witnesses: usize,
    /// Long-lived SSE streams on the news and the chat, checked like the witnesses.
    #[arg(long, default_value_t = 2)]
    sse_witnesses: usize,
    /// WebSocket clients connecting, working and leaving at the same time.
    #[arg(long, default_value_t = 16)]
    churners: usize,
    /// SSE streams opening and dropping at the same time.
    #[arg(long, default_value_t = 4)]
    sse_churners: usize,
    /// `POST /api/publish` requests per second (news, chat, both in turn).
    #[arg(long, default_value_t = 20.0)]
    http_rate: f64,
    /// Commands per second of one churning connection, every second one a chat publish
    /// (at most 20: the default limit is 10 publishes a second).
    #[arg(long, default_value_t = 4.0)]
    command_rate: f64,
    /// Seconds between two plugin reloads (an upload and a reload of the directory).
    #[arg(long, default_value_t = 10.0)]
    reload_every: f64,
    /// Seconds between two samples of RSS, descriptors and `/metrics`.
    #[arg(long, default_value_t = 5.0)]
    sample_every: f64,
}

/// How long the soak runs: exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct SoakLength {
    /// Minutes of the mix.
    #[arg(long)]
    minutes: Option<f64>,
    /// Seconds of the mix (short runs, CI).
    #[arg(long)]
    seconds: Option<f64>,
}

impl SoakArgs {
    fn params(&self) -> Result<soak::Params> {
        let seconds = match (self.length.minutes, self.length.seconds) {
            (Some(m), None) => m * 60.0,
            (None, Some(s)) => s,
            _ => bail!("give exactly one of --minutes and --seconds"),
        };
        if !(1.0..=7.0 * 24.0 * 3600.0).contains(&seconds) {
            bail!("the soak runs from 1 second to a week, not {seconds} s");
        }
        if !(0.1..=20.0).contains(&self.command_rate) {
            bail!("--command-rate must be within 0.1..=20: above, the default rate limit of 10 publishes a second is met");
        }
        if !(0.1..=1000.0).contains(&self.http_rate) {
            bail!("--http-rate must be within 0.1..=1000 (the default limit is 5,000 a second)");
        }
        if self.reload_every < 0.5 || self.sample_every < 0.5 {
            bail!("--reload-every and --sample-every are at least 0.5 s");
        }
        if self.witnesses == 0 {
            bail!("the soak needs at least one WebSocket witness");
        }
        Ok(soak::Params {
            duration: Duration::from_secs_f64(seconds),
            witnesses: self.witnesses,
            sse_witnesses: self.sse_witnesses,
            churners: self.churners,
            sse_churners: self.sse_churners,
            http_rate: self.http_rate,
            command_rate: self.command_rate,
            reload_every: Duration::from_secs_f64(self.reload_every),
            sample_every: Duration::from_secs_f64(self.sample_every),
        })
    }
}

#[derive(Debug, Args)]
struct PluginLoadArgs {
    /// Plugins by name, from the plugins directory (`<name>.wasm`).
    #[arg(long, value_delimiter = ',', default_value = "blubber,course")]
    plugins: Vec<String>,
    /// Starts of each kind (cold, from the cache) per plugin.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Instance slots of the larger broker in the slot comparison (the other has a tenth).
    #[arg(long, default_value_t = 1000)]
    slots: u32,
}

#[derive(Debug, Args)]
struct ReloadArgs {
    /// Reloads per time-to-live series (file rename; admin upload).
    #[arg(long, default_value_t = 50)]
    reloads: usize,
    /// Reloads with never-seen bytes, each a full compile.
    #[arg(long, default_value_t = 5)]
    fresh: usize,
    /// Subscribers on `gate:bench` in the throughput phases.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Seconds of publishing per throughput phase (quiet, storm).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Quiet + storm pairs, taking turns.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Pause between two reloads of the storm, milliseconds.
    #[arg(long, default_value_t = 20)]
    storm_interval_ms: u64,
    /// Where `gate.wasm` and `gate-v2.wasm` are.
    #[arg(long, default_value = "target/test-plugins")]
    test_plugins_dir: PathBuf,
}

#[derive(Debug, Args)]
struct ReconnectStormArgs {
    /// Subscribers on the channel; each drops and reconnects once.
    #[arg(long, default_value_t = 5000)]
    clients: usize,
    /// Publish rate for the whole run, messages per second. With `public:bench` (history
    /// 100) a client must be back within 100 / rate seconds to recover.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of publishing with everyone connected before the storm.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Every client drops and reconnects within this many seconds.
    #[arg(long, default_value_t = 1.0)]
    spread: f64,
    /// Seconds of publishing after the last client dropped.
    #[arg(long, default_value_t = 3.0)]
    after: f64,
    /// Stellwerk's opt-in batching (`?batch=1`).
    #[arg(long)]
    batch: bool,
    /// WebSocket handshakes in flight at once while opening (not during the storm, where
    /// every client reconnects as soon as it dropped).
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Read buffer per client connection, bytes.
    #[arg(long, default_value_t = 4 * 1024)]
    read_buffer: usize,
}

#[derive(Debug, Args)]
struct PluginCostArgs {
    /// Subscribers on the channel (half `autor`, half `tutor` on the course channel).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages published per run.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Publish rate, messages per second (paced: nothing queues up).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Stellwerk's opt-in batching (`?batch=1`).
    #[arg(long)]
    batch: bool,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// After the last publish, stop waiting once nothing arrived for this many seconds.
    #[arg(long, default_value_t = 5)]
    drain_idle: u64,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Subscribers on `aud:bench`.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Numbers of distinct audiences (`group` claims), one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 1000])]
    groups: Vec<usize>,
    /// Messages published per run.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Publish rate, messages per second (10/s = 100,000 deliveries/s at 10,000 subscribers).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// After the last publish, stop waiting once nothing arrived for this many seconds.
    #[arg(long, default_value_t = 5)]
    drain_idle: u64,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Read buffer per subscriber connection, bytes (small: 10,000 of them share the machine).
    #[arg(long, default_value_t = 4 * 1024)]
    read_buffer: usize,
    /// Where `audiences.wasm` is (only it is copied next to the real plugins).
    #[arg(long, default_value = "target/test-plugins")]
    test_plugins_dir: PathBuf,
}

#[derive(Debug, Args)]
struct Common {
    /// Which broker(s) to measure.
    #[arg(long, value_enum, default_value_t = Which::Both, global = true)]
    target: Which,
    /// Append one JSON line with all results of this invocation to this file.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Upper bound per run (one server start to stop), in seconds; a run that hits it
    /// reports what it has.
    #[arg(long, default_value_t = 120, global = true)]
    timeout: u64,
    /// Channel (Stellwerk) / subject (NATS, with `:` as `.`) used by every run.
    #[arg(long, default_value = "public:bench", global = true)]
    channel: String,
    /// Stellwerk binary [default: `stellwerk` next to this binary, else target/release/stellwerk].
    #[arg(long, global = true)]
    stellwerk_bin: Option<PathBuf>,
    /// Plugin directory for Stellwerk [default: target/plugins].
    #[arg(long, global = true)]
    plugins_dir: Option<PathBuf>,
    /// Extra environment for Stellwerk, e.g. `--stellwerk-env STELLWERK_LIMITS_X=5` (repeatable).
    #[arg(long = "stellwerk-env", value_parser = key_value, global = true)]
    stellwerk_env: Vec<(String, String)>,
    /// nats-server binary [default: from PATH, /usr/bin or /usr/sbin].
    #[arg(long, global = true)]
    nats_bin: Option<PathBuf>,
    /// Server logs and the generated nats config go here.
    #[arg(long, default_value = "target/bench-logs", global = true)]
    log_dir: PathBuf,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    /// Subscribers on the channel.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages published.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Publish rate of the paced runs, messages per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Paced (at --rate), unpaced (as fast as one publisher goes), or both.
    #[arg(long, value_enum, default_value_t = Pace::Both)]
    pace: Pace,
    /// Stellwerk's opt-in batching (`?batch=1`): off, on, or both.
    #[arg(long, value_enum, default_value_t = Batch::Both)]
    batch: Batch,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// After the last publish, stop waiting once nothing arrived for this many seconds.
    #[arg(long, default_value_t = 5)]
    drain_idle: u64,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Read buffer per subscriber connection, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    read_buffer: usize,
    /// Stellwerk `POST /api/publish` requests in flight at once (each on its own kept-alive
    /// connection). Publishing is open-loop: a message is sent when due, not when the
    /// previous answer came back, as long as fewer than this many are unanswered. High by
    /// default so that the unpaced runs measure the broker, not the HTTP round trip (the NATS
    /// publisher does not wait for answers at all).
    #[arg(long, default_value_t = 256)]
    http_concurrency: usize,
    /// Also run Stellwerk (WebSockets) on the Redis engine with this many nodes each, e.g.
    /// `1,2,3`: a fresh `redis-server` per run, subscribers and publishes spread evenly over
    /// the nodes, CPU counted for the brokers and Redis together.
    #[arg(long, value_delimiter = ',')]
    redis_nodes: Vec<usize>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Seconds to wait after the last connection before reading the server's RSS.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Read buffer per client connection, bytes.
    #[arg(long, default_value_t = 4 * 1024)]
    read_buffer: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Which {
    /// Stellwerk, subscribers on WebSockets.
    Stellwerk,
    Nats,
    /// Stellwerk (WebSockets) and NATS.
    Both,
    /// Stellwerk, subscribers on Server-Sent Events.
    Sse,
    /// Stellwerk over WebSockets and over SSE, for `fanout` and `idle`.
    WsAndSse,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Pace {
    Paced,
    Unpaced,
    Both,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Batch {
    Off,
    On,
    Both,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// The benchmarks publish as fast as the broker takes it: they measure the broker, not the
/// API key's rate limit (5,000 a second by default), which they turn off. The soak keeps
/// every default: an honest mix must never meet a limit. `--stellwerk-env` comes last.
fn stellwerk_env(scenario: &Scenario, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if !matches!(scenario, Scenario::Soak(_)) {
        env.push((
            "STELLWERK_RATE_LIMITS_API_PUBLISHES_PER_SECOND".to_owned(),
            "0".to_owned(),
        ));
    }
    env.extend(extra.iter().cloned());
    env
}

impl Which {
    fn brokers(self) -> Vec<Broker> {
        match self {
            Which::Stellwerk => vec![Broker::Stellwerk],
            Which::Nats => vec![Broker::Nats],
            Which::Both => vec![Broker::Stellwerk, Broker::Nats],
            Which::Sse => vec![Broker::StellwerkSse],
            Which::WsAndSse => vec![Broker::Stellwerk, Broker::StellwerkSse],
        }
    }
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    // Before the runtime and before any server is spawned: children inherit the limit.
    let fd_limit = procfs::raise_fd_limit(65_536);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli, fd_limit))
}

async fn run(cli: Cli, fd_limit: u64) -> Result<ExitCode> {
    let c = &cli.common;
    let setup = ServerSetup {
        stellwerk_bin: c
            .stellwerk_bin
            .clone()
            .unwrap_or_else(servers::default_stellwerk_bin),
        plugins_dir: c
            .plugins_dir
            .clone()
            .unwrap_or_else(servers::default_plugins_dir),
        stellwerk_env: stellwerk_env(&cli.scenario, &c.stellwerk_env),
        nats_bin: c.nats_bin.clone().unwrap_or_else(servers::default_nats_bin),
        log_dir: c.log_dir.clone(),
    };
    let brokers = c.target.brokers();
    let timeout = Duration::from_secs(c.timeout);
    let load_before = procfs::load_average();
    eprintln!(
        "stellwerk-bench: fd limit {fd_limit}, load average {}, CPUs {}",
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Only the soak judges: the other scenarios report.
    let mut failed = false;
    let report = match &cli.scenario {
        Scenario::Fanout(a) => run_fanout(a, c, &setup, &brokers, timeout).await,
        Scenario::Idle(a) => {
            if fd_limit < a.connections as u64 + 1000 {
                eprintln!(
                    "warning: fd limit {fd_limit} is below {} connections + 1000; run `ulimit -n 65536` first",
                    a.connections
                );
            }
            run_idle(a, c, &setup, &brokers, timeout).await
        }
        Scenario::PluginCost(a) => {
            let base = fanout::Params {
                subscribers: a.subscribers,
                messages: a.messages,
                rate: Some(a.rate),
                batch: a.batch,
                size: a.size,
                channel: c.channel.clone(),
                timeout,
                drain_idle: Duration::from_secs(a.drain_idle),
                connect_concurrency: a.connect_concurrency,
                read_buffer: 16 * 1024,
                http_concurrency: 256,
                claims: Claims::None,
                filter_metrics_of: None,
                topology: fanout::Topology::SINGLE,
            };
            plugin_cost::run_plugin_cost(&setup, &base).await
        }
        Scenario::Filter(a) => {
            if fd_limit < a.subscribers as u64 + 1000 {
                eprintln!(
                    "warning: fd limit {fd_limit} is below {} subscribers + 1000; run `ulimit -n 65536` first",
                    a.subscribers
                );
            }
            let base = fanout::Params {
                subscribers: a.subscribers,
                messages: a.messages,
                rate: Some(a.rate),
                batch: false,
                size: a.size,
                channel: c.channel.clone(),
                timeout,
                drain_idle: Duration::from_secs(a.drain_idle),
                connect_concurrency: a.connect_concurrency,
                read_buffer: a.read_buffer,
                http_concurrency: 256,
                claims: Claims::None,
                filter_metrics_of: None,
                topology: fanout::Topology::SINGLE,
            };
            plugin_cost::run_filter(&setup, &a.test_plugins_dir, &base, &a.groups).await
        }
        Scenario::ReconnectStorm(a) => run_reconnect_storm(a, c, &setup, fd_limit, timeout).await,
        Scenario::Reload(a) => {
            let params = reload::Params {
                reloads: a.reloads,
                fresh: a.fresh,
                subscribers: a.subscribers,
                seconds: a.seconds,
                rounds: a.rounds.max(1),
                publishers: a.publishers.max(1),
                storm_interval: Duration::from_millis(a.storm_interval_ms),
                test_plugins_dir: a.test_plugins_dir.clone(),
                timeout,
            };
            reload::run(&setup, &params).await
        }
        Scenario::PluginLoad(a) => {
            let params = plugin_load::Params {
                plugins: a.plugins.clone(),
                runs: a.runs.max(1),
                slots: a.slots.max(10),
            };
            plugin_load::run(&setup, &params)
                .await
                .unwrap_or_else(|e| json!({"scenario": "plugin-load", "error": format!("{e:#}")}))
        }
        Scenario::FilterExec(a) => {
            let params = filter_exec_params(a, &setup)?;
            // Its own runtimes, one per run: on a thread of its own, outside this runtime.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("filter-exec".into())
                .spawn(move || {
                    let _ = tx.send(filter_exec::run(&params));
                })?;
            match rx.await {
                Ok(Ok(report)) => report,
                Ok(Err(e)) => {
                    eprintln!("filter-exec failed: {e:#}");
                    failed = true;
                    json!({"scenario": "filter-exec", "error": format!("{e:#}")})
                }
                Err(_) => bail!("filter-exec panicked"),
            }
        }
        Scenario::Soak(a) => {
            let params = a.params()?;
            eprintln!("running soak stellwerk …");
            // The run bounds itself; this is the backstop should the server hang.
            let bounded = tokio::time::timeout(
                params.duration + Duration::from_secs(300),
                soak::run(&setup, &params),
            );
            let result = bounded
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("aborted: no result within the bound")));
            match &result {
                Ok(outcome) => soak::print(outcome),
                Err(e) => eprintln!("soak failed: {e:#}"),
            }
            failed = !result.as_ref().is_ok_and(soak::Outcome::passed);
            soak::json(&params, result.as_ref())
        }
    };
    if let Some(out) = &c.out {
        let mut line = report;
        line["unix_time"] = json!(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs());
        line["load_average_1m_before"] = json!(load_before);
        line["load_average_1m_after"] = json!(procfs::load_average());
        line["cpus"] = json!(std::thread::available_parallelism().map_or(0, |n| n.get()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("opening {}", out.display()))?;
        writeln!(file, "{line}")?;
        eprintln!("results appended to {}", out.display());
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn filter_exec_params(a: &FilterExecArgs, setup: &ServerSetup) -> Result<filter_exec::Params> {
    if !(0.1..=600.0).contains(&a.seconds) || !(0.0..=60.0).contains(&a.warmup) {
        bail!("--seconds must be within 0.1..=600 and --warmup within 0..=60");
    }
    if a.call_timeout_ms == 0 || a.epoch_tick_ms == 0 || a.rounds > 20 {
        bail!("--call-timeout-ms and --epoch-tick-ms must be positive, --rounds at most 20");
    }
    if a.channels.iter().chain(&a.hostile).any(|&n| n > 4096) {
        bail!("at most 4096 channels per run");
    }
    Ok(filter_exec::Params {
        channels: a.channels.clone(),
        hostile: a.hostile.clone(),
        hostile_with: a.hostile_with,
        warmup: Duration::from_secs_f64(a.warmup),
        measure: Duration::from_secs_f64(a.seconds),
        rounds: a.rounds,
        workers: a
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        call_timeout: Duration::from_millis(a.call_timeout_ms),
        epoch_tick: Duration::from_millis(a.epoch_tick_ms),
        pool_size: a.pool_size,
        size: a.size,
        course_wasm: setup.plugins_dir.join("course.wasm"),
        hostile_wasm: a.test_plugins_dir.join("slowfilter.wasm"),
    })
}

async fn run_fanout(
    a: &FanoutArgs,
    c: &Common,
    setup: &ServerSetup,
    brokers: &[Broker],
    timeout: Duration,
) -> serde_json::Value {
    let rates: Vec<Option<f64>> = match a.pace {
        Pace::Paced => vec![Some(a.rate)],
        Pace::Unpaced => vec![None],
        Pace::Both => vec![Some(a.rate), None],
    };
    let batches: Vec<bool> = match a.batch {
        Batch::Off => vec![false],
        Batch::On => vec![true],
        Batch::Both => vec![false, true],
    };
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    // The memory engine's single node, then each Redis cluster size asked for.
    let topologies: Vec<fanout::Topology> = std::iter::once(fanout::Topology::SINGLE)
        .chain(a.redis_nodes.iter().map(|&nodes| fanout::Topology {
            nodes: nodes.max(1),
            redis: true,
        }))
        .collect();
    for &rate in &rates {
        for &broker in brokers {
            // nats has no batching switch: it always packs what is queued into one frame;
            // SSE has none either (one event per push). Redis only with WebSockets.
            let variants = if broker != Broker::Stellwerk {
                &[false][..]
            } else {
                &batches[..]
            };
            let shapes = if broker == Broker::Stellwerk {
                &topologies[..]
            } else {
                &[fanout::Topology::SINGLE][..]
            };
            for (&batch, &topology) in variants
                .iter()
                .flat_map(|b| shapes.iter().map(move |t| (b, t)))
            {
                let params = fanout::Params {
                    subscribers: a.subscribers,
                    messages: a.messages,
                    rate,
                    batch,
                    size: a.size,
                    channel: c.channel.clone(),
                    timeout,
                    drain_idle: Duration::from_secs(a.drain_idle),
                    connect_concurrency: a.connect_concurrency,
                    read_buffer: a.read_buffer,
                    http_concurrency: a.http_concurrency,
                    claims: Claims::None,
                    filter_metrics_of: None,
                    topology,
                };
                let what = format!(
                    "fanout {} ({}) batch={} pace={}",
                    broker.name(),
                    topology.name(),
                    if batch { "on" } else { "off" },
                    rate.map_or("unpaced".into(), |r| format!("{r}/s"))
                );
                eprintln!("running {what} …");
                // The run bounds itself; this is the backstop should a server hang.
                let bounded = tokio::time::timeout(
                    timeout + Duration::from_secs(60),
                    fanout::run(broker, setup, &params),
                );
                match bounded.await {
                    Ok(Ok(outcome)) => outcomes.push(outcome),
                    Ok(Err(e)) => {
                        eprintln!("{what} failed: {e:#}");
                        failures.push(json!({"run": what, "error": format!("{e:#}")}));
                    }
                    Err(_) => {
                        eprintln!("{what} aborted: no result within the timeout");
                        failures.push(json!({"run": what, "error": "aborted by timeout"}));
                    }
                }
            }
        }
    }
    print_fanout(&outcomes);
    let ratios = fanout_ratios(&outcomes);
    print_ratios(&ratios);
    json!({
        "scenario": "fanout",
        "params": {
            "subscribers": a.subscribers, "messages": a.messages, "rate": a.rate,
            "size": a.size, "channel": c.channel, "timeout_s": c.timeout,
            "http_concurrency": a.http_concurrency, "redis_nodes": a.redis_nodes,
        },
        "results": outcomes,
        "failures": failures,
        "ratios": ratios,
    })
}

fn print_fanout(outcomes: &[fanout::Outcome]) {
    println!();
    println!(
        "{:<10} {:<10} {:<5} {:<8} {:>6} {:>6} {:>9} {:>7} {:>8} {:>10} {:>8} {:>8} {:>11} {:>7} {:>7} {:>7} {:>7}",
        "target", "engine", "batch", "pace", "subs", "msgs", "delivered", "lost", "elapsed", "deliv/s",
        "srv CPU", "redis", "deliv/CPU-s", "p50 ms", "p99 ms", "max ms", "gen CPU"
    );
    for o in outcomes {
        println!(
            "{:<10} {:<10} {:<5} {:<8} {:>6} {:>6} {:>9} {:>7} {:>7.2}s {:>10.0} {:>7.2}s {:>7.2}s {:>11.0} {:>7.2} {:>7.2} {:>7.2} {:>6.2}s",
            o.target.name(),
            if o.target == Broker::Nats { "-".to_string() } else { o.topology.name() },
            if o.batch { "on" } else { "off" },
            o.pace(),
            o.subscribers,
            o.published,
            o.delivered,
            o.lost,
            o.elapsed_s,
            o.deliveries_per_s,
            o.server_cpu_s,
            o.redis_cpu_s,
            o.deliveries_per_cpu_s,
            o.latency.p50_ms,
            o.latency.p99_ms,
            o.latency.max_ms,
            o.generator_cpu_s,
        );
        let notes = [
            (o.subscribers_failed > 0).then(|| {
                format!(
                    "{} subscribers failed to connect ({})",
                    o.subscribers_failed,
                    o.first_connect_error.as_deref().unwrap_or("")
                )
            }),
            (o.publish_errors > 0).then(|| {
                format!(
                    "{} publish errors ({})",
                    o.publish_errors,
                    o.first_publish_error.as_deref().unwrap_or("")
                )
            }),
            (o.subscribers_dropped > 0).then(|| {
                format!(
                    "{} subscribers dropped ({})",
                    o.subscribers_dropped,
                    o.first_drop_reason.as_deref().unwrap_or("")
                )
            }),
            o.timed_out
                .then(|| "hit the timeout: partial figures".to_string()),
        ];
        for note in notes.into_iter().flatten() {
            println!("    note: {note}");
        }
    }
}

/// Stellwerk / NATS per pace and Stellwerk batching mode, from runs of this invocation only.
fn fanout_ratios(outcomes: &[fanout::Outcome]) -> serde_json::Value {
    let mut ratios = serde_json::Map::new();
    let single = |o: &&fanout::Outcome| o.topology == fanout::Topology::SINGLE;
    for nats in outcomes.iter().filter(|o| o.target == Broker::Nats) {
        for sw in outcomes
            .iter()
            .filter(|o| o.target == Broker::Stellwerk && o.rate == nats.rate)
        {
            let key = format!(
                "{} batch={}{}",
                nats.pace(),
                if sw.batch { "on" } else { "off" },
                if single(&sw) {
                    String::new()
                } else {
                    format!(" {}", sw.topology.name())
                }
            );
            ratios.insert(key, fanout_ratio(sw, nats));
        }
    }
    // Each Redis cluster size against the memory engine's single node, same pace and batching.
    for memory in outcomes
        .iter()
        .filter(|o| o.target == Broker::Stellwerk)
        .filter(single)
    {
        for redis in outcomes.iter().filter(|o| {
            o.target == Broker::Stellwerk
                && o.topology.redis
                && o.rate == memory.rate
                && o.batch == memory.batch
        }) {
            let key = format!(
                "{}/memory {} batch={}",
                redis.topology.name(),
                memory.pace(),
                if memory.batch { "on" } else { "off" }
            );
            ratios.insert(key, fanout_ratio(redis, memory));
        }
    }
    // SSE against WebSockets, both Stellwerk, unbatched (SSE has no batching).
    for sse in outcomes.iter().filter(|o| o.target == Broker::StellwerkSse) {
        for ws in outcomes
            .iter()
            .filter(|o| o.target == Broker::Stellwerk && o.rate == sse.rate && !o.batch)
            .filter(single)
        {
            ratios.insert(format!("sse/ws {}", sse.pace()), fanout_ratio(sse, ws));
        }
    }
    serde_json::Value::Object(ratios)
}

/// `a` / `b` of the figures that decide.
fn fanout_ratio(a: &fanout::Outcome, b: &fanout::Outcome) -> serde_json::Value {
    json!({
        "deliveries_per_cpu_s": fanout::ratio(a.deliveries_per_cpu_s, b.deliveries_per_cpu_s),
        "deliveries_per_s": fanout::ratio(a.deliveries_per_s, b.deliveries_per_s),
        "p99_latency": fanout::ratio(a.latency.p99_ms, b.latency.p99_ms),
    })
}

fn print_ratios(ratios: &serde_json::Value) {
    let Some(map) = ratios.as_object().filter(|m| !m.is_empty()) else {
        return;
    };
    println!();
    println!(
        "Ratios of this run (Stellwerk / NATS by pace and batching, `sse/ws`: Stellwerk's SSE \
         / its WebSockets, `redis xN/memory`: N nodes on Redis / one on memory; >1 means the \
         first is higher):"
    );
    for (key, value) in map {
        let fields: Vec<String> = value
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, v)| format!("{name} {:.2}", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!("  {key:<34} {}", fields.join(", "));
    }
}

async fn run_idle(
    a: &IdleArgs,
    c: &Common,
    setup: &ServerSetup,
    brokers: &[Broker],
    timeout: Duration,
) -> serde_json::Value {
    let params = idle::Params {
        connections: a.connections,
        channel: c.channel.clone(),
        timeout,
        settle: Duration::from_secs(a.settle),
        connect_concurrency: a.connect_concurrency,
        read_buffer: a.read_buffer,
    };
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for &broker in brokers {
        eprintln!("running idle {} …", broker.name());
        let bounded = tokio::time::timeout(
            timeout + Duration::from_secs(60),
            idle::run(broker, setup, &params),
        );
        match bounded.await {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) => {
                eprintln!("idle {} failed: {e:#}", broker.name());
                failures.push(json!({"run": broker.name(), "error": format!("{e:#}")}));
            }
            Err(_) => {
                eprintln!(
                    "idle {} aborted: no result within the timeout",
                    broker.name()
                );
                failures.push(json!({"run": broker.name(), "error": "aborted by timeout"}));
            }
        }
    }
    println!();
    println!(
        "{:<10} {:>9} {:>7} {:>12} {:>12} {:>10} {:>9} {:>8} {:>12}",
        "target",
        "connected",
        "failed",
        "RSS before",
        "RSS after",
        "KiB/conn",
        "connect",
        "srv CPU",
        "gen RSS"
    );
    for o in &outcomes {
        println!(
            "{:<10} {:>9} {:>7} {:>8} KiB {:>8} KiB {:>10.2} {:>8.2}s {:>7.2}s {:>8} KiB",
            o.target.name(),
            o.connected,
            o.failed,
            o.rss_before_kib,
            o.rss_after_kib,
            o.kib_per_connection,
            o.connect_s,
            o.server_cpu_s,
            o.generator_rss_kib,
        );
        if let Some(e) = &o.first_error {
            println!("    note: first connect error: {e}");
        }
        if o.ended_early > 0 {
            println!(
                "    note: {} connections ended before the measurement finished",
                o.ended_early
            );
        }
        if o.timed_out {
            println!("    note: hit the timeout: partial figures");
        }
    }
    let find = |b: Broker| outcomes.iter().find(|o| o.target == b);
    let ratio = match (find(Broker::Stellwerk), find(Broker::Nats)) {
        (Some(sw), Some(nats)) => {
            let r = fanout::ratio(sw.kib_per_connection, nats.kib_per_connection);
            println!();
            println!(
                "Stellwerk / NATS KiB per idle connection: {r:.2} (<1 means Stellwerk uses less)"
            );
            Some(r)
        }
        _ => None,
    };
    if let (Some(sse), Some(ws)) = (find(Broker::StellwerkSse), find(Broker::Stellwerk)) {
        println!(
            "SSE / WebSocket KiB per idle connection: {:.2}",
            fanout::ratio(sse.kib_per_connection, ws.kib_per_connection)
        );
    }
    json!({
        "scenario": "idle",
        "params": {"connections": a.connections, "channel": c.channel, "settle_s": a.settle, "timeout_s": c.timeout},
        "results": outcomes,
        "failures": failures,
        "ratios": {"kib_per_connection": ratio},
    })
}

async fn run_reconnect_storm(
    a: &ReconnectStormArgs,
    c: &Common,
    setup: &ServerSetup,
    fd_limit: u64,
    timeout: Duration,
) -> serde_json::Value {
    if fd_limit < a.clients as u64 + 1000 {
        eprintln!(
            "warning: fd limit {fd_limit} is below {} clients + 1000; run `ulimit -n 65536` first",
            a.clients
        );
    }
    let params = reconnect::Params {
        clients: a.clients,
        channel: c.channel.clone(),
        rate: a.rate,
        warmup: Duration::from_secs_f64(a.warmup),
        spread: Duration::from_secs_f64(a.spread),
        after: Duration::from_secs_f64(a.after),
        connect_concurrency: a.connect_concurrency,
        read_buffer: a.read_buffer,
        batch: a.batch,
        queue_capacity: 1024,
        timeout,
    };
    eprintln!("running reconnect-storm stellwerk …");
    let bounded = tokio::time::timeout(
        timeout + Duration::from_secs(60),
        reconnect::run(setup, &params),
    );
    let (results, failures) = match bounded.await {
        Ok(Ok(outcome)) => {
            reconnect::print(&outcome);
            (vec![outcome], vec![])
        }
        Ok(Err(e)) => {
            eprintln!("reconnect-storm failed: {e:#}");
            (
                vec![],
                vec![json!({"run": "reconnect-storm", "error": format!("{e:#}")})],
            )
        }
        Err(_) => {
            eprintln!("reconnect-storm aborted: no result within the timeout");
            (
                vec![],
                vec![json!({"run": "reconnect-storm", "error": "aborted by timeout"})],
            )
        }
    };
    json!({
        "scenario": "reconnect-storm",
        "params": {
            "clients": a.clients, "rate": a.rate, "warmup_s": a.warmup, "spread_s": a.spread,
            "after_s": a.after, "batch": a.batch, "channel": c.channel, "timeout_s": c.timeout,
        },
        "results": results,
        "failures": failures,
    })
}
