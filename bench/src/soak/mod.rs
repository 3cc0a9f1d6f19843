//! Scenario `soak` (Stellwerk only): a steady, bounded mix of everything a Stud.IP
//! installation does to the broker, for minutes or hours, against a fresh
//! `stellwerk serve` with every default limit in force.
//!
//! - Witnesses (`witness`): long-lived WebSocket and SSE subscribers of `public:soak` and
//!   the course chat. Every publish that was acknowledged (a 200, a `published` reply) is
//!   in the `delivery::Ledger`; each witness must have received each one exactly once, in
//!   offset order, with the payload that was acknowledged for that offset.
//! - Churners (`churn`): WebSocket clients that connect, subscribe, chat, ask for presence
//!   and history, refresh their token and leave again, and SSE streams that come and go;
//!   while subscribed they must see contiguous offsets too.
//! - An HTTP publisher on the news, the chat and both at once; plugin reloads through the
//!   admin API (a new build of `course` uploaded, then a reload of the directory).
//! - Samples (`samples`) of RSS, descriptors and the engine's gauges; at the end the
//!   descriptors must return to the witnesses' level.
//!
//! Every rate stays far below the default `[rate_limits]`: a `rate_limited` is an error.

mod churn;
mod delivery;
mod samples;
mod session;
mod witness;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use self::delivery::{Faults, Ledger, Received, Tag};
use self::samples::{RssTrend, Sample};
use self::witness::Witness;
use crate::plugin_cost::PluginsDir;
use crate::procfs;
use crate::reconnect;
use crate::reload::{with_custom_section, Admin};
use crate::servers::{self, ServerSetup, API_KEY};
use crate::stellwerk::{http_client, metric_sum, Publisher};

/// The Stud.IP course whose chat the soak uses (presence, history, client publish).
pub(crate) const COURSE_ID: &str = "50a4e1c0ffee4b5c8d7e6f5a4b3c2d1e";
const CHAT: &str = "course:50a4e1c0ffee4b5c8d7e6f5a4b3c2d1e:chat";
/// A `public` channel: HTTP publishes only, no presence.
const NEWS: &str = "public:soak";

/// Descriptors the broker may hold at the end above its level with only the witnesses
/// connected: an HTTP keep-alive connection not yet closed, a plugin file being read.
pub(crate) const FD_SLACK: u64 = 5;
/// How long the descriptors get to come back to that level after the churn.
const FD_SETTLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) duration: Duration,
    /// WebSocket witnesses (every second one with `?batch=1`).
    pub(crate) witnesses: usize,
    pub(crate) sse_witnesses: usize,
    /// WebSocket clients churning at the same time.
    pub(crate) churners: usize,
    /// SSE streams churning at the same time.
    pub(crate) sse_churners: usize,
    /// HTTP publishes per second (news, chat, both, taking turns).
    pub(crate) http_rate: f64,
    /// Commands per second of one churning connection; every second one is a chat publish.
    pub(crate) command_rate: f64,
    /// Pause between two plugin reloads.
    pub(crate) reload_every: Duration,
    pub(crate) sample_every: Duration,
}

/// What the soak's tasks share: where the broker is, the ledger, and the tallies.
pub(crate) struct Shared {
    addr: SocketAddr,
    p: Params,
    churn_until: Instant,
    ledger: Ledger,
    /// Users every `presence` on the chat must list: the WebSocket witnesses.
    presence_members: Vec<String>,
    errors: Mutex<BTreeMap<String, ErrorTally>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    churn_faults: Mutex<Faults>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ErrorTally {
    count: u64,
    first: String,
}

impl Shared {
    /// Counts an error under the step it names (its outermost context), or as
    /// `rate_limited` when a limit answered.
    fn error(&self, e: &anyhow::Error) {
        let detail = format!("{e:#}");
        let kind = if detail.contains("rate_limited") {
            "rate_limited".to_owned()
        } else {
            e.to_string()
        };
        let mut errors = self.errors.lock().unwrap();
        errors
            .entry(kind)
            .and_modify(|t| t.count += 1)
            .or_insert(ErrorTally {
                count: 1,
                first: detail,
            });
    }

    fn count(&self, what: &'static str) {
        self.count_n(what, 1);
    }

    fn count_n(&self, what: &'static str, n: u64) {
        *self.counts.lock().unwrap().entry(what).or_default() += n;
    }

    /// Checks a churning subscription over what it received: contiguous from its start,
    /// each message the one acknowledged at its offset.
    fn churn_checked(&self, channel: &str, received: &Received) {
        if received.start.is_none() && received.arrivals.is_empty() {
            return;
        }
        let faults = self.ledger.check(channel, received, received.last());
        self.churn_faults.lock().unwrap().add(faults);
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct WitnessOutcome {
    name: String,
    received: u64,
    presence_pushes: u64,
    faults: Faults,
    failure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) duration_s: f64,
    /// Messages acknowledged per channel.
    acknowledged: BTreeMap<String, u64>,
    /// Each channel's last offset at the end (the history API), per channel.
    final_offsets: BTreeMap<String, u64>,
    witnesses: Vec<WitnessOutcome>,
    /// Over all witnesses.
    witness_faults: Faults,
    /// Over every churning subscription, while it was subscribed.
    churn_faults: Faults,
    /// Operations done, by kind.
    operations: BTreeMap<&'static str, u64>,
    /// Errors by the step that failed (`rate_limited` apart), each with its first message.
    errors: BTreeMap<String, ErrorTally>,
    /// `stellwerk_rate_limited_total`, `stellwerk_slow_consumers_total` and
    /// `stellwerk_connections_refused_total` at the end: all must be 0.
    server_rate_limited: Option<f64>,
    server_slow_consumers: Option<f64>,
    server_refused: Option<f64>,
    warmup_s: f64,
    rss_start_kib: u64,
    rss: RssTrend,
    rss_peak_kib: u64,
    fds_start: u64,
    fds_max: u64,
    fds_end: u64,
    fd_slack: u64,
    /// Connections the broker counted at the end (the witnesses').
    connections_end: Option<f64>,
    samples: Vec<Sample>,
    /// Why the run failed; empty when it passed.
    pub(crate) verdict: Vec<String>,
    server_log: String,
}

impl Outcome {
    pub(crate) fn passed(&self) -> bool {
        self.verdict.is_empty()
    }
}

pub(crate) async fn run(setup: &ServerSetup, p: &Params) -> Result<Outcome> {
    // A copy of the plugins: the run uploads new builds of `course` into the directory.
    let plugins = PluginsDir::copy_of(&setup.plugins_dir, "soak")?;
    let course = std::fs::read(plugins.path.join("course.wasm"))
        .context("reading course.wasm (run `cargo xtask build-plugins`)")?;
    let setup = ServerSetup {
        plugins_dir: plugins.path.clone(),
        ..setup.clone()
    };
    let server = servers::start_stellwerk(&setup, "soak", 1024, &[]).await?;
    let result = soak(server.pid(), server.ws_addr, p, &course).await;
    let server_log = server.log.display().to_string();
    server.stop().await;
    drop(plugins);
    let mut outcome = result?;
    outcome.server_log = server_log;
    Ok(outcome)
}

async fn soak(pid: u32, addr: SocketAddr, p: &Params, course: &[u8]) -> Result<Outcome> {
    eprintln!(
        "soak: {} WebSocket + {} SSE witnesses …",
        p.witnesses, p.sse_witnesses
    );
    let mut witnesses = Vec::new();
    for i in 0..p.witnesses {
        let w = Witness::ws(addr, i)
            .await
            .context("a witness could not subscribe")?;
        witnesses.push((witness::ws_user(i), w));
    }
    for i in 0..p.sse_witnesses {
        let w = Witness::sse(addr, i)
            .await
            .context("an SSE witness could not subscribe")?;
        witnesses.push((format!("soak-sse-witness-{i}"), w));
    }
    // Let the connections of the start-up (`/readyz`) close before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_start = procfs::open_fds(pid)?;
    let rss_start_kib = procfs::rss_kib(pid)?;

    let started = Instant::now();
    let churn_until = started + p.duration;
    let hard_stop = churn_until + Duration::from_secs(150);
    let shared = Arc::new(Shared {
        addr,
        p: p.clone(),
        churn_until,
        ledger: Ledger::default(),
        presence_members: (0..p.witnesses).map(witness::ws_user).collect(),
        errors: Mutex::new(BTreeMap::new()),
        counts: Mutex::new(BTreeMap::new()),
        churn_faults: Mutex::new(Faults::default()),
    });
    let (finals_tx, finals_rx) = watch::channel(None);
    let watching: Vec<_> = witnesses
        .into_iter()
        .map(|(name, w)| tokio::spawn(w.watch(name, finals_rx.clone(), hard_stop)))
        .collect();

    eprintln!(
        "soak: {:?} of {} WebSocket and {} SSE churners, {}/s HTTP publishes …",
        p.duration, p.churners, p.sse_churners, p.http_rate
    );
    let mut tasks = Vec::new();
    {
        let http = http_client();
        for slot in 0..p.churners {
            tasks.push(tokio::spawn(churn::ws_churner(
                slot,
                shared.clone(),
                http.clone(),
            )));
        }
        for i in 0..p.sse_churners {
            tasks.push(tokio::spawn(churn::sse_churner(i, shared.clone())));
        }
    }
    tasks.push(tokio::spawn(http_publisher(shared.clone())));
    tasks.push(tokio::spawn(reloader(shared.clone(), course.to_vec())));
    let sampling = tokio::spawn(sampler(shared.clone(), pid, started));

    for mut task in tasks {
        if tokio::time::timeout_at(hard_stop, &mut task).await.is_err() {
            task.abort();
            shared.error(&anyhow::anyhow!("a churn task did not end in time").context("churn"));
        }
    }
    let mut samples = tokio::time::timeout_at(hard_stop, sampling)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    eprintln!("soak: churn over, draining the witnesses …");

    // Where every channel ended: the history API, and what was acknowledged.
    let mut final_offsets = BTreeMap::new();
    for channel in [NEWS, CHAT] {
        let (_, latest) = reconnect::latest(addr, channel).await?;
        let acknowledged = shared.ledger.last(channel);
        if latest != acknowledged {
            shared.error(
                &anyhow::anyhow!(
                    "{channel}: last offset {latest}, last acknowledged {acknowledged}"
                )
                .context("unacknowledged messages"),
            );
        }
        final_offsets.insert(channel.to_owned(), latest.max(acknowledged));
    }
    let finals: HashMap<String, u64> = final_offsets.clone().into_iter().collect();
    let _ = finals_tx.send(Some(finals));
    let mut seen = Vec::new();
    for task in watching {
        seen.push(task.await.context("a witness task failed")?);
    }

    let mut witness_faults = Faults::default();
    let mut outcomes = Vec::new();
    for w in &seen {
        let mut faults = Faults::default();
        let mut received = 0;
        for (channel, r) in &w.subscriptions {
            let end = final_offsets.get(channel).copied().unwrap_or(0);
            faults.add(shared.ledger.check(channel, r, end));
            received += r.arrivals.len() as u64;
        }
        witness_faults.add(faults);
        outcomes.push(WitnessOutcome {
            name: w.name.clone(),
            received,
            presence_pushes: w.presence,
            faults,
            failure: w.failure.clone(),
        });
    }

    // The end: only the witnesses are connected, every other client is gone. Descriptors
    // and the broker's connection count get `FD_SETTLE` to come back to that level.
    let expected_connections = (p.witnesses + p.sse_witnesses) as f64;
    let settle_until = Instant::now() + FD_SETTLE;
    let mut fds_max = samples
        .iter()
        .map(|s| s.fds)
        .max()
        .unwrap_or(0)
        .max(fds_start);
    let mut end = samples::take(&http_client(), addr, pid, 0.0).await;
    while (end.fds > fds_start + FD_SLACK || end.connections != Some(expected_connections))
        && Instant::now() < settle_until
    {
        fds_max = fds_max.max(end.fds);
        tokio::time::sleep(Duration::from_millis(500)).await;
        end = samples::take(&http_client(), addr, pid, 0.0).await;
    }
    // The metrics client of that last sample may still hold a descriptor: count again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    end.fds = procfs::open_fds(pid)?;
    end.t_s = started.elapsed().as_secs_f64();
    fds_max = fds_max.max(end.fds);
    let fds_end = end.fds;
    let connections_end = end.connections;
    samples.push(end);
    let end_metrics = crate::stellwerk::metrics(&http_client(), addr).await.ok();
    let end_metric = |name: &str| end_metrics.as_deref().and_then(|t| metric_sum(t, name));
    let rss_peak_kib = procfs::peak_rss_kib(pid)?;
    drop(seen.into_iter().map(|w| w.connection).collect::<Vec<_>>());

    let warmup_s = samples::warmup_s(p.duration.as_secs_f64());
    let acknowledged = [NEWS, CHAT]
        .into_iter()
        .map(|c| (c.to_owned(), shared.ledger.acknowledged(c)))
        .collect();
    let mut outcome = Outcome {
        duration_s: p.duration.as_secs_f64(),
        acknowledged,
        final_offsets,
        witnesses: outcomes,
        witness_faults,
        churn_faults: *shared.churn_faults.lock().unwrap(),
        operations: shared.counts.lock().unwrap().clone(),
        errors: shared.errors.lock().unwrap().clone(),
        server_rate_limited: end_metric("stellwerk_rate_limited_total"),
        server_slow_consumers: end_metric("stellwerk_slow_consumers_total"),
        server_refused: end_metric("stellwerk_connections_refused_total"),
        warmup_s,
        rss_start_kib,
        rss: samples::rss_trend(&samples, warmup_s),
        rss_peak_kib,
        fds_start,
        fds_max,
        fds_end,
        fd_slack: FD_SLACK,
        connections_end,
        samples,
        verdict: Vec::new(),
        server_log: String::new(),
    };
    outcome.verdict = verdict(&outcome, p);
    Ok(outcome)
}

/// Why the run failed: every line is one broken promise.
fn verdict(o: &Outcome, p: &Params) -> Vec<String> {
    let mut why = Vec::new();
    if o.witness_faults.total() > 0 {
        why.push(format!("witnesses: {:?}", o.witness_faults));
    }
    if o.churn_faults.total() > 0 {
        why.push(format!("churning subscribers: {:?}", o.churn_faults));
    }
    for w in &o.witnesses {
        if let Some(failure) = &w.failure {
            why.push(format!("witness {}: {failure}", w.name));
        }
    }
    for (kind, tally) in &o.errors {
        why.push(format!("{} × {kind}: {}", tally.count, tally.first));
    }
    for (what, value) in [
        ("stellwerk_rate_limited_total", o.server_rate_limited),
        ("stellwerk_slow_consumers_total", o.server_slow_consumers),
        ("stellwerk_connections_refused_total", o.server_refused),
    ] {
        match value {
            Some(0.0) => {}
            Some(v) => why.push(format!("{what} is {v}")),
            None => why.push(format!("{what} could not be read from /metrics")),
        }
    }
    if o.fds_end > o.fds_start + o.fd_slack {
        why.push(format!(
            "open descriptors {} at the end, {} with only the witnesses (slack {})",
            o.fds_end, o.fds_start, o.fd_slack
        ));
    }
    let expected = (p.witnesses + p.sse_witnesses) as f64;
    if o.connections_end != Some(expected) {
        why.push(format!(
            "the broker counts {:?} connections at the end, the witnesses are {expected}",
            o.connections_end
        ));
    }
    if o.acknowledged.values().any(|&n| n == 0) {
        why.push(format!("a channel got no message: {:?}", o.acknowledged));
    }
    why
}

/// Publishes over HTTP at `http_rate` until the churn ends: news, chat, both, in turn.
async fn http_publisher(shared: Arc<Shared>) {
    let publisher = match Publisher::new(shared.addr, API_KEY, NEWS, 2) {
        Ok(p) => p,
        Err(e) => return shared.error(&e.context("HTTP publish")),
    };
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / shared.p.http_rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let most = ticks(shared.p.duration, 1.0 / shared.p.http_rate.max(0.1));
    for seq in 1..=most {
        tick.tick().await;
        if Instant::now() >= shared.churn_until {
            break;
        }
        let channels: &[&str] = match seq % 3 {
            0 => &[NEWS],
            1 => &[CHAT],
            _ => &[NEWS, CHAT],
        };
        let tag = Tag { publisher: 0, seq };
        match publisher
            .publish_to(channels, &tag.payload().to_string())
            .await
        {
            Ok(results) => {
                for r in results {
                    shared.ledger.record(&r.channel, r.offset, tag);
                }
                shared.count("HTTP publishes");
            }
            Err(e) => shared.error(&e.context("HTTP publish")),
        }
    }
}

/// Every `reload_every`: a new build of `course` uploaded (the two builds take turns, so
/// each upload is a real reload that checks every chat subscription again), then a reload
/// of the whole directory. No subscription may be revoked.
async fn reloader(shared: Arc<Shared>, course: Vec<u8>) {
    let admin = Admin::new(shared.addr);
    let builds = [with_custom_section(&course, "stellwerk-soak"), course];
    for round in 0..ticks(shared.p.duration, shared.p.reload_every.as_secs_f64()) {
        tokio::time::sleep(shared.p.reload_every / 2).await;
        if Instant::now() >= shared.churn_until {
            break;
        }
        let bytes = &builds[(round % 2) as usize];
        match admin.upload("course", bytes).await {
            Ok(change) if change["reauthorized"]["revoked"] == 0 => shared.count("plugin uploads"),
            Ok(change) => shared.error(
                &anyhow::anyhow!("a reload revoked subscriptions: {change}")
                    .context("plugin upload"),
            ),
            Err(e) => shared.error(&e.context("plugin upload")),
        }
        tokio::time::sleep(shared.p.reload_every / 2).await;
        if Instant::now() >= shared.churn_until {
            break;
        }
        match admin.reload_all().await {
            Ok(results) => match results.iter().find(|r| r["outcome"] == "refused") {
                None => shared.count("plugin reloads"),
                Some(refused) => {
                    shared.error(&anyhow::anyhow!("refused: {refused}").context("plugin reload"))
                }
            },
            Err(e) => shared.error(&e.context("plugin reload")),
        }
    }
}

/// Samples every `sample_every` until the churn ends.
async fn sampler(shared: Arc<Shared>, pid: u32, started: Instant) -> Vec<Sample> {
    let client = http_client();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(shared.p.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_report = Duration::from_secs(60);
    for _ in 0..ticks(shared.p.duration, shared.p.sample_every.as_secs_f64()) {
        tick.tick().await;
        if Instant::now() >= shared.churn_until {
            break;
        }
        let s = samples::take(&client, shared.addr, pid, started.elapsed().as_secs_f64()).await;
        if started.elapsed() >= next_report {
            next_report += Duration::from_secs(60);
            eprintln!(
                "soak: {:>5.0} s  RSS {} KiB  fds {}  connections {:?}  engine channels {:?}",
                s.t_s, s.rss_kib, s.fds, s.connections, s.engine_channels
            );
        }
        out.push(s);
    }
    out
}

/// How many periods of `period_s` fit into `duration`, plus two: the most a periodic loop
/// may run (it also stops when the churn ends).
fn ticks(duration: Duration, period_s: f64) -> u64 {
    (duration.as_secs_f64() / period_s.max(0.001)).ceil() as u64 + 2
}

pub(crate) fn print(o: &Outcome) {
    println!();
    println!("soak, {:.0} s:", o.duration_s);
    let ops: Vec<String> = o
        .operations
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("  operations: {}", ops.join(", "));
    println!(
        "  acknowledged messages: {}",
        o.acknowledged
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{:<26} {:>9} {:>6} {:>6} {:>9} {:>9}  failure",
        "witness", "received", "lost", "dups", "reordered", "mismatch"
    );
    for w in &o.witnesses {
        println!(
            "{:<26} {:>9} {:>6} {:>6} {:>9} {:>9}  {}",
            w.name,
            w.received,
            w.faults.lost,
            w.faults.duplicated,
            w.faults.reordered,
            w.faults.mismatched,
            w.failure.as_deref().unwrap_or("-")
        );
    }
    let f = o.churn_faults;
    println!(
        "  churning subscribers: lost {}, duplicated {}, reordered {}, mismatched {}",
        f.lost, f.duplicated, f.reordered, f.mismatched
    );
    let kib = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} KiB"));
    println!(
        "  RSS: start {} KiB, after warm-up ({:.0} s) {}, end {}, peak {} KiB, slope {} ({} samples)",
        o.rss_start_kib,
        o.warmup_s,
        kib(o.rss.after_warmup_kib),
        kib(o.rss.end_kib),
        o.rss_peak_kib,
        o.rss
            .slope_kib_per_min
            .map_or("-".to_owned(), |s| format!("{s:+.1} KiB/min")),
        o.rss.samples_used,
    );
    println!(
        "  open descriptors: start {} (witnesses only), max {}, end {} (slack {})",
        o.fds_start, o.fds_max, o.fds_end, o.fd_slack
    );
    println!(
        "  at the end: connections {:?}, rate limited {:?}, slow consumers {:?}, refused {:?}",
        o.connections_end, o.server_rate_limited, o.server_slow_consumers, o.server_refused
    );
    if let Some(last) = o.samples.last() {
        println!(
            "  engine at the end: channels {:?}, history messages {:?}, history bytes {:?}",
            last.engine_channels, last.history_messages, last.history_bytes
        );
    }
    if o.passed() {
        println!("  PASSED: nothing lost, duplicated or reordered, no errors, descriptors back");
    } else {
        println!("  FAILED:");
        for line in &o.verdict {
            println!("    {line}");
        }
    }
}

/// The JSON line's fields for this run.
pub(crate) fn json(p: &Params, outcome: Result<&Outcome, &anyhow::Error>) -> Value {
    let params = json!({
        "duration_s": p.duration.as_secs_f64(), "witnesses": p.witnesses,
        "sse_witnesses": p.sse_witnesses, "churners": p.churners,
        "sse_churners": p.sse_churners, "http_rate": p.http_rate, "command_rate": p.command_rate,
        "reload_every_s": p.reload_every.as_secs_f64(),
        "sample_every_s": p.sample_every.as_secs_f64(),
    });
    match outcome {
        Ok(o) => json!({"scenario": "soak", "params": params, "passed": o.passed(), "results": o}),
        Err(e) => {
            json!({"scenario": "soak", "params": params, "passed": false, "error": format!("{e:#}")})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_is_a_course_channel_of_the_soak_course() {
        assert_eq!(CHAT, format!("course:{COURSE_ID}:chat"));
        assert!(COURSE_ID.len() == 32 && COURSE_ID.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
