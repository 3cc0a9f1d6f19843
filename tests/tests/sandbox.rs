//! The plugin sandbox, proven with plugins built to misbehave (`tests/plugins/`, built by
//! `cargo xtask build-plugins` into `target/test-plugins/`).
//!
//! Every test starts a broker whose plugin directory holds the example `public` plugin and
//! all the misbehaving ones, provokes one of them, and checks what an operator and a client
//! would: the request is refused with `internal` (WebSocket) or 500 `internal` (HTTP), the
//! same and other connections keep working, a second fault is refused the same way (a fresh
//! instance replaced the broken one), `public` works after every fault, the log names the
//! plugin and the hook, and `GET /metrics` counts the faults.
//!
//! | plugin | misbehaving hook | what stops it |
//! |---|---|---|
//! | `spin` | `authorize-subscribe` loops forever | the CPU deadline |
//! | `hog` | `authorize-subscribe` allocates 1 GiB | the memory cap |
//! | `panicky` | `on-publish` panics | the trap |
//! | `flood` | `on-publish` answers ~3 MiB | the output cap (2 MiB) |
//! | `liar` | `filter` answers data that is not JSON | the answer check: delivery skipped |
//! | `slowfilter` | `filter` takes as long as each message asks | one deadline per history or recovery reply |
//!
//! The same faults from plugins written in JavaScript (`tests/plugins/js-*`, built with the
//! JavaScript SDK into QuickJS components) are contained, refused and counted the same way:
//!
//! | plugin | misbehaving hook | what stops it |
//! |---|---|---|
//! | `js-spin` | `authorizeSubscribe` loops forever | the CPU deadline |
//! | `js-hog` | `authorizeSubscribe` allocates without bound | the memory cap |
//! | `js-throw` | `onPublish` throws | the trap (the SDK logs the exception first) |
//! | `js-liar` | `filter` answers something that is no `Delivery` | the SDK refuses it: a trap, the delivery skipped |

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stellwerk_e2e::plugin_dir::PluginDir;
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{assert_http_error, assert_ws_error, Server, WsClient};

const ADMIN_TOKEN: &str = "sandbox-admin-token";
const MISBEHAVING: [&str; 5] = ["spin", "hog", "panicky", "flood", "liar"];
const MISBEHAVING_JS: [&str; 4] = ["js-spin", "js-hog", "js-throw", "js-liar"];
/// Upper bound for one HTTP round trip: the test fails instead of hanging.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a log line (the log is copied from the child on another thread).
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

// ----- the cases -----------------------------------------------------------------------

/// What one client command may make a plugin compute is one call's deadline, however much
/// history there is: 20 messages that each take `slowfilter` 20 ms to filter (well within
/// the 100 ms deadline, so each is delivered live) make a history reply of 400 ms, which the
/// broker cuts at the deadline: `history` is refused with `internal` and a recovery over them
/// says `recovered: false` instead of replaying an unvetted list. A short history still works.
#[tokio::test]
async fn a_history_reply_costs_the_plugin_one_deadline_not_one_per_message() {
    const SLOW: &str = "slow:long";
    const MESSAGES: u64 = 20;
    let dir = PluginDir::with(&["public", "slowfilter"]);
    let server = Server::builder()
        .plugins_dir(dir.path())
        .env("STELLWERK_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    let (mut live, subscribed) = server.subscriber("live", SLOW).await;
    for i in 0..MESSAGES {
        server
            .publish_ok(SLOW, &json!({"i": i, "spin_ms": 20}))
            .await;
    }
    for i in 0..MESSAGES {
        let push = within("a live message", live.recv_json()).await;
        assert_eq!(push["data"]["i"], i, "{push}");
    }

    let mut reader = connect(&server, "reader").await;
    let started = Instant::now();
    let reply = reader
        .request(json!({"type": "history", "channel": SLOW}))
        .await;
    assert_ws_error(&reply, "internal");
    println!("history refused after {:?}", started.elapsed());
    let reply = reader
        .request(json!({
            "type": "subscribe",
            "channel": SLOW,
            "recover": {"epoch": subscribed["epoch"], "offset": subscribed["offset"]},
        }))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_fault_logged(&server, "slowfilter", "filter", "time limit").await;

    // A short history is filtered and answered as usual.
    server
        .publish_ok("slow:short", &json!({"spin_ms": 5}))
        .await;
    server
        .publish_ok("slow:short", &json!({"spin_ms": 5}))
        .await;
    let reply = reader
        .request(json!({"type": "history", "channel": "slow:short"}))
        .await;
    assert_eq!(reply["type"], "history", "{reply}");
    assert_eq!(
        reply["messages"].as_array().map(Vec::len),
        Some(2),
        "{reply}"
    );

    let metrics = scrape_metrics(&server).await;
    assert_eq!(
        sample(&metrics, &series("faults", "slowfilter", "filter")),
        2,
        "the history and the recovery: {metrics}"
    );
}

#[tokio::test]
async fn spin_is_stopped_by_the_cpu_deadline_and_the_broker_carries_on() {
    let dir = plugins_dir();
    let server = start(&dir).await;
    let faults = subscribe_faults(&server, "spin").await;
    assert_fault_logged(&server, "spin", "authorize-subscribe", "time limit").await;
    assert_fault_counts(&server, "spin", "authorize-subscribe", faults).await;
}

#[tokio::test]
async fn hog_is_stopped_by_the_memory_cap_and_the_broker_stays_small() {
    let dir = plugins_dir();
    let server = start(&dir).await;
    let faults = subscribe_faults(&server, "hog").await;
    assert_fault_logged(&server, "hog", "authorize-subscribe", "memory").await;
    assert_fault_counts(&server, "hog", "authorize-subscribe", faults).await;
    assert_broker_memory_well_below_1_gib(&dir);
}

#[tokio::test]
async fn panicky_publishes_are_refused_and_the_panic_message_is_logged() {
    let dir = plugins_dir();
    let server = start(&dir).await;
    let faults = publish_faults(&server, "panicky").await;
    assert_fault_logged(&server, "panicky", "on-publish", "").await;
    // The SDK routes the panic message to the broker's log before the trap.
    wait_for_log_line(&server, "the panic message of `panicky`", |line| {
        names_plugin(line, "panicky") && line.contains("on_publish panics on purpose")
    })
    .await;
    assert_fault_counts(&server, "panicky", "on-publish", faults).await;
}

#[tokio::test]
async fn flood_answers_over_the_output_cap_are_refused() {
    let dir = plugins_dir();
    let server = start(&dir).await;
    let faults = publish_faults(&server, "flood").await;
    assert_fault_logged(&server, "flood", "on-publish", "exceeds the limit").await;
    assert_fault_counts(&server, "flood", "on-publish", faults).await;
}

#[tokio::test]
async fn liar_filter_answers_that_are_not_json_skip_the_delivery() {
    let dir = plugins_dir();
    let server = start(&dir).await;
    let (faults, calls) = filter_faults(&server, "liar").await;
    assert_fault_logged(&server, "liar", "filter", "not valid JSON").await;
    let metrics = scrape_metrics(&server).await;
    assert_eq!(
        sample(&metrics, &series("faults", "liar", "filter")),
        faults,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &series("calls", "liar", "filter")),
        calls,
        "{metrics}"
    );
    assert_public_never_faulted(&metrics);
}

/// All of them against one broker, one after the other: no fault leaves anything behind
/// that hurts the next plugin or `public`.
#[tokio::test]
async fn one_broker_survives_every_misbehaving_plugin_in_turn() {
    let dir = plugins_dir();
    let server = start(&dir).await;
    let spin = subscribe_faults(&server, "spin").await;
    let hog = subscribe_faults(&server, "hog").await;
    let panicky = publish_faults(&server, "panicky").await;
    let flood = publish_faults(&server, "flood").await;
    let (liar, _) = filter_faults(&server, "liar").await;

    let metrics = scrape_metrics(&server).await;
    for (plugin, hook, faults) in [
        ("spin", "authorize-subscribe", spin),
        ("hog", "authorize-subscribe", hog),
        ("panicky", "on-publish", panicky),
        ("flood", "on-publish", flood),
        ("liar", "filter", liar),
    ] {
        assert_eq!(
            sample(&metrics, &series("faults", plugin, hook)),
            faults,
            "{plugin}: {metrics}"
        );
        assert_fault_logged(&server, plugin, hook, "").await;
    }
    assert_public_never_faulted(&metrics);
    assert_broker_memory_well_below_1_gib(&dir);
}

/// The misbehaving JavaScript plugins against one broker, one after the other (one broker:
/// each QuickJS component takes seconds to compile): every fault is contained, refused,
/// logged with the plugin and the hook, and counted, exactly as for the Rust plugins.
#[tokio::test]
async fn javascript_plugins_that_loop_hog_throw_or_lie_are_contained_and_counted() {
    let dir = PluginDir::with(&[&["public"][..], &MISBEHAVING_JS[..]].concat());
    let server = start_with(&dir, &MISBEHAVING_JS).await;

    let spin = subscribe_faults(&server, "js-spin").await;
    assert_fault_logged(&server, "js-spin", "authorize-subscribe", "time limit").await;
    assert_fault_counts(&server, "js-spin", "authorize-subscribe", spin).await;

    let hog = subscribe_faults(&server, "js-hog").await;
    assert_fault_logged(&server, "js-hog", "authorize-subscribe", "").await;
    assert_fault_counts(&server, "js-hog", "authorize-subscribe", hog).await;
    assert_broker_memory_well_below_1_gib(&dir);

    let throw = publish_faults(&server, "js-throw").await;
    assert_fault_logged(&server, "js-throw", "on-publish", "").await;
    // The SDK logs the exception with its stack before the trap.
    wait_for_log_line(&server, "the exception of `js-throw`", |line| {
        names_plugin(line, "js-throw")
            && line.contains("plugin threw in onPublish: Error: onPublish throws on purpose")
    })
    .await;
    assert_fault_counts(&server, "js-throw", "on-publish", throw).await;

    let (liar, calls) = filter_faults(&server, "js-liar").await;
    assert_fault_logged(&server, "js-liar", "filter", "").await;
    wait_for_log_line(&server, "why `js-liar`'s answer was refused", |line| {
        names_plugin(line, "js-liar")
            && line.contains("filter answered an object (Object), not a Delivery")
    })
    .await;
    let metrics = scrape_metrics(&server).await;
    assert_eq!(
        sample(&metrics, &series("faults", "js-liar", "filter")),
        liar,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &series("calls", "js-liar", "filter")),
        calls,
        "{metrics}"
    );
    assert_public_never_faulted(&metrics);
}

// ----- provoking faults ------------------------------------------------------------------

/// `plugin`'s `authorize-subscribe` misbehaves: subscribing over WebSocket (twice on one
/// connection, once on another) and over SSE is refused with `internal`, and the broker
/// keeps serving. Returns the number of faulting calls made.
async fn subscribe_faults(server: &Server, plugin: &str) -> u64 {
    let mut ws = connect(server, &format!("u-{plugin}-victim")).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": format!("{plugin}:first")}))
        .await;
    assert_ws_error(&reply, "internal");
    assert!(
        reply["message"].as_str().unwrap_or("").contains(plugin),
        "the error names the plugin: {reply}"
    );
    assert_public_works(server, &mut ws, &format!("{plugin}-after-first")).await;

    // A fresh instance replaced the discarded one, and it misbehaves the same way.
    let reply = ws
        .request(json!({"type": "subscribe", "channel": format!("{plugin}:second")}))
        .await;
    assert_ws_error(&reply, "internal");

    let mut other = connect(server, &format!("u-{plugin}-other")).await;
    let reply = other
        .request(json!({"type": "subscribe", "channel": format!("{plugin}:first")}))
        .await;
    assert_ws_error(&reply, "internal");
    assert_public_works(server, &mut other, &format!("{plugin}-after-other")).await;

    // A browser's EventSource is refused before the stream starts.
    let token = server.token(&format!("u-{plugin}-sse"));
    let path = format!("/sse?channel={plugin}:sse&token={token}");
    let resp = within("GET /sse", server.sse_response(&path, None)).await;
    let (status, body) = within("the SSE refusal", status_and_json(resp)).await;
    assert_http_error(status, &body, 500, "internal");

    // The plugin's other hooks still work: the HTTP API may publish on its channels.
    let published = within(
        "publish",
        server.publish(&json!({"channel": format!("{plugin}:first"), "data": {"ok": true}})),
    )
    .await;
    assert_eq!(published.0, 200, "publish on {plugin}: {}", published.1);

    assert_public_works(server, &mut ws, &format!("{plugin}-at-the-end")).await;
    4
}

/// `plugin`'s `on-publish` misbehaves: HTTP and WebSocket publishes are refused with
/// `internal`, a multi-channel publish that includes it publishes nothing, subscribers of
/// the plugin's channel receive nothing, and the broker keeps serving. Returns the number
/// of faulting calls made.
async fn publish_faults(server: &Server, plugin: &str) -> u64 {
    let channel = format!("{plugin}:room");
    let also = format!("public:{plugin}-together");
    // Subscribing works normally; this subscriber must never see a refused message.
    let (mut watcher, _) = server
        .subscriber(&format!("u-{plugin}-watcher"), &channel)
        .await;
    let reply = watcher
        .request(json!({"type": "subscribe", "channel": also}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let mut faults = 0;
    let mut publisher = connect(server, &format!("u-{plugin}-publisher")).await;
    for round in ["first", "second"] {
        let (status, body) = within(
            "publish",
            server.publish(&json!({"channel": channel, "data": {"round": round}})),
        )
        .await;
        assert_http_error(status, &body, 500, "internal");
        faults += 1;

        let reply = publisher
            .request(json!({"type": "publish", "channel": channel, "data": {"round": round}}))
            .await;
        assert_ws_error(&reply, "internal");
        faults += 1;

        assert_public_works(server, &mut publisher, &format!("{plugin}-{round}")).await;
    }

    // All or nothing: the public channel named first is not published either.
    let (status, body) = within(
        "publish",
        server.publish(&json!({"channels": [also, channel], "data": {"together": true}})),
    )
    .await;
    assert_http_error(status, &body, 500, "internal");
    faults += 1;

    // Nothing reached the watcher: its next push is the public message sent now.
    assert_public_works(server, &mut watcher, &format!("{plugin}-watcher")).await;
    faults
}

/// `plugin`'s (`liar`'s) `filter` answers garbage for data containing `"lie"`: that delivery
/// is skipped (the publish itself succeeds), honest messages before and after are delivered.
/// Returns the faulting and the total `filter` calls made.
async fn filter_faults(server: &Server, plugin: &str) -> (u64, u64) {
    let channel = format!("{plugin}:news");
    let channel = channel.as_str();
    let (mut reader, _) = server
        .subscriber(&format!("u-{plugin}-reader"), channel)
        .await;
    let mut faults = 0;
    let mut calls = 0;
    for round in ["first", "second"] {
        let honest = json!({"text": format!("honest {round}")});
        within("publish", server.publish_ok(channel, &honest)).await;
        calls += 1;
        assert_next_message(&mut reader, channel, &honest).await;

        let (status, body) = within(
            "publish",
            server.publish(&json!({"channel": channel, "data": {"lie": round}})),
        )
        .await;
        assert_eq!(status, 200, "the publish itself is accepted: {body}");
        calls += 1;
        faults += 1;
        // The lie was skipped: the next push is the public message sent now.
        assert_public_works(server, &mut reader, &format!("{plugin}-{round}")).await;
    }
    (faults, calls)
}

// ----- what a client, an operator and the machine see ----------------------------------

/// The broker still serves `public`: `ws` (an existing connection) and a new connection
/// subscribe to a fresh public channel and both receive a message published to it as
/// their very next push.
async fn assert_public_works(server: &Server, ws: &mut WsClient, tag: &str) {
    let channel = format!("public:{tag}");
    let reply = ws
        .request(json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(reply["type"], "subscribed", "subscribe {channel}: {reply}");
    let (mut fresh, _) = server.subscriber(&format!("u-fresh-{tag}"), &channel).await;
    let data = json!({"tag": tag});
    within("publish", server.publish_ok(&channel, &data)).await;
    assert_next_message(ws, &channel, &data).await;
    assert_next_message(&mut fresh, &channel, &data).await;
}

/// The next push of `ws` is a message on `channel` carrying `data`.
async fn assert_next_message(ws: &mut WsClient, channel: &str, data: &Value) {
    let push = ws.recv_json().await;
    assert_eq!(
        push["type"], "message",
        "expected a message on {channel}, got {push}"
    );
    assert_eq!(push["channel"], channel, "{push}");
    assert_eq!(&push["data"], data, "{push}");
}

/// A log line reports the fault and names the plugin, the hook and (if not empty) `reason`.
async fn assert_fault_logged(server: &Server, plugin: &str, hook: &str, reason: &str) {
    let what = format!("a fault of plugin `{plugin}` in hook `{hook}` ({reason:?})");
    wait_for_log_line(server, &what, |line| {
        line.contains("fault")
            && names_plugin(line, plugin)
            && line.contains(hook)
            && line.contains(reason)
    })
    .await;
}

/// The plugin as a log field, however the logger quotes it.
fn names_plugin(line: &str, plugin: &str) -> bool {
    line.contains(&format!("plugin={plugin}")) || line.contains(&format!("plugin=\"{plugin}\""))
}

async fn wait_for_log_line(server: &Server, what: &str, matches: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        let log = server.log();
        if log.lines().any(&matches) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker's log has no line with {what}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/metrics` counts exactly `faults` faults for the hook, and as many calls (every call of
/// the misbehaving hook faulted).
async fn assert_fault_counts(server: &Server, plugin: &str, hook: &str, faults: u64) {
    let metrics = scrape_metrics(server).await;
    assert_eq!(
        sample(&metrics, &series("faults", plugin, hook)),
        faults,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &series("calls", plugin, hook)),
        faults,
        "{metrics}"
    );
    assert_public_never_faulted(&metrics);
}

fn assert_public_never_faulted(metrics: &str) {
    for hook in ["authorize-subscribe", "on-publish"] {
        assert!(
            sample(metrics, &series("calls", "public", hook)) > 0,
            "public's {hook} was used: {metrics}"
        );
        assert_eq!(
            sample(metrics, &series("faults", "public", hook)),
            0,
            "{metrics}"
        );
    }
}

fn series(counter: &str, plugin: &str, hook: &str) -> String {
    format!("stellwerk_plugin_{counter}_total{{plugin=\"{plugin}\",hook=\"{hook}\"}}")
}

async fn scrape_metrics(server: &Server) -> String {
    let request = reqwest::Client::new()
        .get(server.http_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send();
    let resp = within("GET /metrics", request).await.expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
    within("the /metrics body", resp.text())
        .await
        .expect("/metrics body")
}

/// The value of the sample line `series` (a name with its labels).
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

/// After `hog` asked for 1 GiB, the broker process never held anything near it: its peak
/// and current resident set stay under half a GiB.
fn assert_broker_memory_well_below_1_gib(dir: &PluginDir) {
    const LIMIT_KIB: u64 = 512 * 1024;
    // The harness does not expose the child's pid; find the child of this test process
    // that serves this test's (unique) plugin directory.
    let pid = broker_pid(dir.path()).unwrap_or_else(|| {
        panic!(
            "no child process with STELLWERK_PLUGINS_DIR={}",
            dir.path().display()
        )
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    for field in ["VmHWM", "VmRSS"] {
        let kib = status_kib(&status, field)
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"));
        eprintln!("broker (pid {pid}) {field}: {kib} KiB");
        assert!(
            kib < LIMIT_KIB,
            "broker {field} is {kib} KiB, not well below 1 GiB"
        );
    }
}

/// `VmRSS:   12345 kB` → 12345.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The pid of this process's child whose environment names `plugins_dir`.
fn broker_pid(plugins_dir: &Path) -> Option<u32> {
    let me = std::process::id();
    let wanted = format!("STELLWERK_PLUGINS_DIR={}", plugins_dir.display());
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        if ppid != me {
            return None;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
            .then_some(pid)
    })
}

// ----- set-up ------------------------------------------------------------------------------

/// A plugin directory of its own for one test: `public` plus every misbehaving plugin.
fn plugins_dir() -> PluginDir {
    PluginDir::with(&[&["public"][..], &MISBEHAVING[..]].concat())
}

async fn start(dir: &PluginDir) -> Server {
    start_with(dir, &MISBEHAVING).await
}

async fn start_with(dir: &PluginDir, misbehaving: &[&str]) -> Server {
    let server = Server::builder()
        .plugins_dir(dir.path())
        .env("STELLWERK_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    // Everything loaded, the misbehaving plugins included (their `describe` is sane).
    let metrics = scrape_metrics(&server).await;
    for plugin in misbehaving.iter().chain(&["public"]) {
        let calls = series("calls", plugin, "authorize-subscribe");
        assert_eq!(sample(&metrics, &calls), 0, "{plugin} is loaded: {metrics}");
    }
    server
}

async fn connect(server: &Server, user: &str) -> WsClient {
    server
        .ws(&format!("/ws?token={}", server.token(user)))
        .await
}

/// Awaits `future`, failing the test instead of hanging when the broker never answers.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HTTP_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {HTTP_TIMEOUT:?}"))
}
