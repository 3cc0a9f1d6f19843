//! Scenarios `plugin-cost` and `filter`: what a WASM plugin on the channel costs the broker.
//!
//! - `plugin-cost`: the fan-out run three times against the same binary: on `public:bench`
//!   (the `public` plugin, no `filter`), on `course:<id>:bench` (the `course` plugin in Rust,
//!   whose `filter` runs once per message and distinct audience: two here) and on
//!   `blubber:<thread>` (the `blubber` plugin in JavaScript: `on-publish` per message, no
//!   `filter`).
//! - `filter`: 10,000 subscribers on `aud:bench` (the `audiences` test plugin), spread over
//!   G audiences; the figure is server CPU microseconds per published message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::clients::{Broker, Claims};
use crate::fanout::{self, ratio};
use crate::servers::ServerSetup;

/// The Stud.IP course id the `plugin-cost` subscribers are members of.
pub(crate) const COURSE_ID: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
/// The Blubber thread of the `plugin-cost` run on the JavaScript plugin.
const BLUBBER_THREAD: &str = "0123456789abcdef0123456789abcdef";

/// Runs one fan-out, bounded, and turns a failure into a JSON note.
async fn bounded_run(
    setup: &ServerSetup,
    params: &fanout::Params,
    what: &str,
    failures: &mut Vec<serde_json::Value>,
) -> Option<fanout::Outcome> {
    eprintln!("running {what} …");
    let bounded = tokio::time::timeout(
        params.timeout + Duration::from_secs(60),
        fanout::run(Broker::Stellwerk, setup, params),
    );
    match bounded.await {
        Ok(Ok(outcome)) => Some(outcome),
        Ok(Err(e)) => {
            eprintln!("{what} failed: {e:#}");
            failures.push(json!({"run": what, "error": format!("{e:#}")}));
            None
        }
        Err(_) => {
            eprintln!("{what} aborted: no result within the timeout");
            failures.push(json!({"run": what, "error": "aborted by timeout"}));
            None
        }
    }
}

/// `public:bench` versus `course:<id>:bench`, same parameters otherwise.
pub(crate) async fn run_plugin_cost(
    setup: &ServerSetup,
    base: &fanout::Params,
) -> serde_json::Value {
    let mut failures = Vec::new();
    let public = fanout::Params {
        channel: "public:bench".into(),
        claims: Claims::None,
        ..base.clone()
    };
    let course = fanout::Params {
        channel: format!("course:{COURSE_ID}:bench"),
        claims: Claims::Course(COURSE_ID.into()),
        ..base.clone()
    };
    let blubber_channel = format!("blubber:{BLUBBER_THREAD}");
    let blubber = fanout::Params {
        channel: blubber_channel.clone(),
        claims: Claims::Channels(blubber_channel),
        ..base.clone()
    };
    let mut outcomes = Vec::new();
    for (params, what) in [
        (&public, "plugin-cost public"),
        (&course, "plugin-cost course"),
        (&blubber, "plugin-cost blubber"),
    ] {
        if let Some(o) = bounded_run(setup, params, what, &mut failures).await {
            outcomes.push(o);
        }
    }
    println!();
    println!(
        "{:<44} {:>6} {:>6} {:>9} {:>7} {:>8} {:>11} {:>7} {:>7} {:>7}",
        "channel",
        "subs",
        "msgs",
        "delivered",
        "lost",
        "srv CPU",
        "deliv/CPU-s",
        "p50 ms",
        "p99 ms",
        "gen CPU"
    );
    for o in &outcomes {
        println!(
            "{:<44} {:>6} {:>6} {:>9} {:>7} {:>7.2}s {:>11.0} {:>7.2} {:>7.2} {:>6.2}s",
            o.channel,
            o.subscribers,
            o.published,
            o.delivered,
            o.lost,
            o.server_cpu_s,
            o.deliveries_per_cpu_s,
            o.latency.p50_ms,
            o.latency.p99_ms,
            o.generator_cpu_s,
        );
        print_notes(o);
    }
    let find = |prefix: &str| outcomes.iter().find(|o| o.channel.starts_with(prefix));
    let course_vs_public = match (find("course:"), find("public:")) {
        (Some(c), Some(p)) => {
            let r = ratio(c.deliveries_per_cpu_s, p.deliveries_per_cpu_s);
            println!();
            println!(
                "course / public deliveries per CPU-second: {r:.3} (throughput cost of the course plugin: {:.1} %)",
                (1.0 - r) * 100.0
            );
            Some(r)
        }
        _ => None,
    };
    let blubber_vs_course = match (find("blubber:"), find("course:")) {
        (Some(b), Some(c)) => {
            let r = ratio(b.deliveries_per_cpu_s, c.deliveries_per_cpu_s);
            println!("blubber (JavaScript) / course (Rust) deliveries per CPU-second: {r:.3}");
            Some(r)
        }
        _ => None,
    };
    json!({
        "scenario": "plugin-cost",
        "params": {
            "subscribers": base.subscribers, "messages": base.messages, "rate": base.rate,
            "size": base.size, "batch": base.batch, "timeout_s": base.timeout.as_secs(),
            "http_concurrency": base.http_concurrency, "course_id": COURSE_ID,
        },
        "results": outcomes,
        "failures": failures,
        "ratios": {
            "course_over_public_deliveries_per_cpu_s": course_vs_public,
            "blubber_over_course_deliveries_per_cpu_s": blubber_vs_course,
        },
    })
}

/// `aud:bench` with the subscribers spread over each of `groups` audiences in turn.
pub(crate) async fn run_filter(
    setup: &ServerSetup,
    test_plugins_dir: &Path,
    base: &fanout::Params,
    groups: &[usize],
) -> serde_json::Value {
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    match PluginsDir::with_test_plugin(&setup.plugins_dir, test_plugins_dir, "audiences") {
        Ok(dir) => {
            let setup = ServerSetup {
                plugins_dir: dir.path.clone(),
                ..setup.clone()
            };
            for &g in groups {
                let params = fanout::Params {
                    channel: "aud:bench".into(),
                    claims: Claims::Groups(g),
                    filter_metrics_of: Some("audiences".into()),
                    topology: fanout::Topology::SINGLE,
                    ..base.clone()
                };
                let what = format!("filter G={g}");
                if let Some(o) = bounded_run(&setup, &params, &what, &mut failures).await {
                    outcomes.push(o);
                }
            }
        }
        Err(e) => {
            eprintln!("filter: {e:#}");
            failures.push(json!({"run": "filter", "error": format!("{e:#}")}));
        }
    }
    let us_per_msg = |o: &fanout::Outcome| ratio(o.server_cpu_s * 1e6, o.published as f64);
    let baseline = outcomes.iter().find(|o| o.groups == 1).map(us_per_msg);
    println!();
    println!(
        "{:>6} {:>6} {:>6} {:>10} {:>7} {:>8} {:>11} {:>10} {:>8} {:>12} {:>12} {:>7}",
        "G",
        "subs",
        "msgs",
        "delivered",
        "lost",
        "srv CPU",
        "CPU µs/msg",
        "vs G=1",
        "filter#",
        "filter µs/msg",
        "µs/call",
        "p99 ms"
    );
    let mut rows = Vec::new();
    for o in &outcomes {
        let per_msg = us_per_msg(o);
        let vs = baseline.map(|b| ratio(per_msg, b));
        let (calls, filter_per_msg, per_call) = match o.filter_hook {
            Some(h) => (
                h.calls,
                ratio(h.seconds * 1e6, o.published as f64),
                ratio(h.seconds * 1e6, h.calls),
            ),
            None => (0.0, 0.0, 0.0),
        };
        println!(
            "{:>6} {:>6} {:>6} {:>10} {:>7} {:>7.2}s {:>11.0} {:>10} {:>8.0} {:>12.1} {:>12.2} {:>7.2}",
            o.groups,
            o.subscribers,
            o.published,
            o.delivered,
            o.lost,
            o.server_cpu_s,
            per_msg,
            vs.map_or("-".into(), |v| format!("{v:.3}")),
            calls,
            filter_per_msg,
            per_call,
            o.latency.p99_ms,
        );
        print_notes(o);
        rows.push(json!({
            "groups": o.groups,
            "server_cpu_us_per_message": per_msg,
            "ratio_to_g1": vs,
            "filter_calls": calls,
            "filter_us_per_message": filter_per_msg,
            "filter_us_per_call": per_call,
        }));
    }
    println!();
    println!(
        "CPU µs/msg: server CPU while publishing ÷ messages; filter µs: wall-clock time inside"
    );
    println!("the `filter` hook per /metrics (sum ÷ messages, sum ÷ calls).");
    json!({
        "scenario": "filter",
        "params": {
            "subscribers": base.subscribers, "messages": base.messages, "rate": base.rate,
            "size": base.size, "groups": groups, "timeout_s": base.timeout.as_secs(),
        },
        "results": outcomes,
        "per_message": rows,
        "failures": failures,
    })
}

fn print_notes(o: &fanout::Outcome) {
    if o.subscribers_failed > 0 {
        println!(
            "    note: {} subscribers failed to connect ({})",
            o.subscribers_failed,
            o.first_connect_error.as_deref().unwrap_or("")
        );
    }
    if o.publish_errors > 0 {
        println!(
            "    note: {} publish errors ({})",
            o.publish_errors,
            o.first_publish_error.as_deref().unwrap_or("")
        );
    }
    if o.subscribers_dropped > 0 {
        println!(
            "    note: {} subscribers dropped ({})",
            o.subscribers_dropped,
            o.first_drop_reason.as_deref().unwrap_or("")
        );
    }
    if o.timed_out {
        println!("    note: hit the timeout: partial figures");
    }
}

/// A temporary plugins directory, removed on drop: a copy of the real plugins, so that a
/// run may add test plugins or deploy new versions without touching `target/plugins`.
pub(crate) struct PluginsDir {
    pub(crate) path: PathBuf,
}

impl PluginsDir {
    /// Every `*.wasm` of `plugins`, copied into a fresh directory named after `label`.
    pub(crate) fn copy_of(plugins: &Path, label: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "stellwerk-bench-{label}-plugins-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = Self { path };
        for entry in
            std::fs::read_dir(plugins).with_context(|| format!("reading {}", plugins.display()))?
        {
            let from = entry?.path();
            if from.extension().is_some_and(|e| e == "wasm") {
                if let Some(file) = from.file_name() {
                    std::fs::copy(&from, dir.path.join(file))?;
                }
            }
        }
        Ok(dir)
    }

    /// The real plugins plus one test plugin. Only the named test plugin goes in: the
    /// others misbehave on purpose.
    fn with_test_plugin(plugins: &Path, test_plugins: &Path, name: &str) -> Result<Self> {
        let test_plugin = test_plugins.join(format!("{name}.wasm"));
        if !test_plugin.is_file() {
            bail!(
                "{} not found: run `cargo xtask build-plugins`",
                test_plugin.display()
            );
        }
        let dir = Self::copy_of(plugins, name)?;
        std::fs::copy(&test_plugin, dir.path.join(format!("{name}.wasm")))?;
        Ok(dir)
    }
}

impl Drop for PluginsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
