//! Scenario `reload` (Stellwerk only): what hot reload costs, in time and in throughput.
//!
//! The broker serves a plugin directory of its own with the example `public` plugin and
//! the `gate` test plugin (`tests/plugins/gate`; `gate-v2` is the same source as 2.0.0).
//!
//! 1. **Time to live**: a new `gate.wasm` is renamed into place (the recommended deploy),
//!    and the clock runs until `GET /admin/plugins` shows its SHA-256 live. Alternating the
//!    two builds keeps the compile cache warm, so this is the watcher's settle time plus
//!    instantiate, `describe`, swap and re-authorisation. The same through
//!    `PUT /admin/plugins/gate` (no watcher), and with bytes never seen before (a full
//!    compile; the build gets a unique custom section).
//! 2. **Throughput during a reload storm**: `--subscribers` on `gate:bench`, publishers going
//!    as fast as they can for `--seconds`, once quiet and once while `gate` is replaced
//!    every `--storm-interval-ms` through the admin API, in `--rounds` alternating pairs.
//!    Every subscriber must receive every message once and in order (contiguous offsets)
//!    and never be unsubscribed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::servers::{self, ServerSetup, ADMIN_TOKEN, API_KEY, JWT_SECRET};
use crate::stellwerk::{self, Publisher};
use crate::wsclient::Ws;

#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Reloads per time-to-live series.
    pub(crate) reloads: usize,
    /// Reloads with never-seen bytes (each a full compile).
    pub(crate) fresh: usize,
    pub(crate) subscribers: usize,
    /// Publishing time per throughput phase.
    pub(crate) seconds: f64,
    /// Quiet + storm pairs.
    pub(crate) rounds: usize,
    /// Publish requests in flight at once.
    pub(crate) publishers: usize,
    pub(crate) storm_interval: Duration,
    pub(crate) test_plugins_dir: PathBuf,
    pub(crate) timeout: Duration,
}

/// One throughput phase.
#[derive(Debug, Default)]
struct Phase {
    published: u64,
    delivered: u64,
    seconds: f64,
    reloads: u64,
    /// Subscribers that missed, reordered or were unsubscribed, with the first reason.
    broken: usize,
    first_break: Option<String>,
}

impl Phase {
    fn add(&mut self, other: Phase) {
        self.published += other.published;
        self.delivered += other.delivered;
        self.seconds += other.seconds;
        self.reloads += other.reloads;
        self.broken += other.broken;
        if self.first_break.is_none() {
            self.first_break = other.first_break;
        }
    }

    fn deliveries_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.delivered as f64 / self.seconds
        } else {
            0.0
        }
    }
}

pub(crate) async fn run(setup: &ServerSetup, p: &Params) -> Value {
    match tokio::time::timeout(p.timeout + Duration::from_secs(60), run_inner(setup, p)).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("reload failed: {e:#}");
            json!({"scenario": "reload", "error": format!("{e:#}")})
        }
        Err(_) => {
            eprintln!("reload aborted: no result within the timeout");
            json!({"scenario": "reload", "error": "aborted by timeout"})
        }
    }
}

async fn run_inner(setup: &ServerSetup, p: &Params) -> Result<Value> {
    let v1 = read(&p.test_plugins_dir.join("gate.wasm"))?;
    let v2 = read(&p.test_plugins_dir.join("gate-v2.wasm"))?;
    let dir = std::env::temp_dir().join(format!("stellwerk-bench-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        setup.plugins_dir.join("public.wasm"),
        dir.join("public.wasm"),
    )
    .context("copying public.wasm (run `cargo xtask build-plugins`)")?;
    std::fs::write(dir.join("gate.wasm"), &v1)?;
    let setup = ServerSetup {
        plugins_dir: dir.clone(),
        ..setup.clone()
    };
    let server = servers::start_stellwerk(&setup, "reload", 1 << 16, &[]).await?;
    let admin = Admin::new(server.ws_addr);
    let result = measure(&admin, &dir, server.ws_addr, p, &v1, &v2).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    admin: &Admin,
    dir: &Path,
    addr: SocketAddr,
    p: &Params,
    v1: &[u8],
    v2: &[u8],
) -> Result<Value> {
    // Warm the compile cache for both builds, so the series measures the reload path.
    admin.upload("gate", v2).await?;
    admin.upload("gate", v1).await?;

    eprintln!("reload: {} file renames …", p.reloads);
    let mut by_file = Vec::with_capacity(p.reloads);
    for i in 0..p.reloads {
        let bytes = if i % 2 == 0 { v2 } else { v1 };
        by_file.push(rename_until_live(admin, dir, bytes).await?);
    }
    eprintln!("reload: {} uploads …", p.reloads);
    let mut by_upload = Vec::with_capacity(p.reloads);
    for i in 0..p.reloads {
        let bytes = if i % 2 == 0 { v2 } else { v1 };
        let started = Instant::now();
        admin.upload("gate", bytes).await?;
        by_upload.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!(
        "reload: {} renames of never-seen bytes (full compile) …",
        p.fresh
    );
    let mut fresh = Vec::with_capacity(p.fresh);
    for i in 0..p.fresh {
        let bytes = with_custom_section(v2, &format!("bench-{}-{i}", std::process::id()));
        fresh.push(rename_until_live(admin, dir, &bytes).await?);
    }
    // Back to a build the storm alternates with.
    admin.upload("gate", v1).await?;

    eprintln!("reload: throughput, {} subscribers …", p.subscribers);
    let mut subscribers = Vec::with_capacity(p.subscribers);
    for i in 0..p.subscribers {
        let token = stellwerk::token(JWT_SECRET, &format!("bench{i}"), None)?;
        subscribers
            .push(stellwerk::subscriber(addr, &token, "gate:bench", false, 16 * 1024).await?);
    }
    // Quiet and storm take turns, so that a machine that gets busier or quieter during the
    // run (other load, warm-up) does not favour one of them.
    let (mut quiet, mut storm) = (Phase::default(), Phase::default());
    let mut subscribers = subscribers;
    for round in 0..p.rounds {
        eprintln!("reload: round {}: {} s quiet …", round + 1, p.seconds);
        let (s, q) = phase(admin, addr, subscribers, p, None).await?;
        quiet.add(q);
        eprintln!(
            "reload: round {}: {} s with a reload every {:?} …",
            round + 1,
            p.seconds,
            p.storm_interval
        );
        let (s, st) = phase(admin, addr, s, p, Some((v1, v2))).await?;
        storm.add(st);
        subscribers = s;
    }

    let file = Series::of(&mut by_file);
    let upload = Series::of(&mut by_upload);
    let compile = Series::of(&mut fresh);
    let ratio = if quiet.deliveries_per_s() > 0.0 {
        storm.deliveries_per_s() / quiet.deliveries_per_s()
    } else {
        0.0
    };
    println!();
    println!("time from write to new rules live, ms:");
    println!(
        "{:<38} {:>4} {:>8} {:>8} {:>8}",
        "", "n", "median", "p99", "max"
    );
    for (what, s) in [
        ("file rename (watcher), cached compile", &file),
        ("PUT /admin/plugins/gate, cached", &upload),
        ("file rename, new bytes (full compile)", &compile),
    ] {
        println!(
            "{what:<38} {:>4} {:>8.1} {:>8.1} {:>8.1}",
            s.n, s.median, s.p99, s.max
        );
    }
    println!();
    println!(
        "{:<10} {:>9} {:>10} {:>7} {:>8} {:>12} {:>7}",
        "phase", "published", "delivered", "reloads", "seconds", "deliveries/s", "broken"
    );
    for (name, ph) in [("quiet", &quiet), ("storm", &storm)] {
        println!(
            "{name:<10} {:>9} {:>10} {:>7} {:>8.2} {:>12.0} {:>7}",
            ph.published,
            ph.delivered,
            ph.reloads,
            ph.seconds,
            ph.deliveries_per_s(),
            ph.broken
        );
        if let Some(why) = &ph.first_break {
            println!("  first broken subscriber: {why}");
        }
    }
    println!();
    println!("storm / quiet deliveries per second: {ratio:.3}");
    let phase_json = |ph: &Phase| {
        json!({"published": ph.published, "delivered": ph.delivered, "reloads": ph.reloads,
               "seconds": ph.seconds, "deliveries_per_s": ph.deliveries_per_s(),
               "broken_subscribers": ph.broken, "first_break": ph.first_break})
    };
    Ok(json!({
        "scenario": "reload",
        "params": {"reloads": p.reloads, "fresh": p.fresh, "subscribers": p.subscribers,
                   "seconds": p.seconds, "rounds": p.rounds, "publishers": p.publishers,
                   "storm_interval_ms": p.storm_interval.as_millis() as u64},
        "time_to_live_ms": {"file_rename": file.json(), "upload": upload.json(),
                            "full_compile": compile.json()},
        "quiet": phase_json(&quiet),
        "storm": phase_json(&storm),
        "storm_vs_quiet": ratio,
    }))
}

/// Renames `bytes` into place as `gate.wasm` and returns the milliseconds until the admin
/// API shows them live.
async fn rename_until_live(admin: &Admin, dir: &Path, bytes: &[u8]) -> Result<f64> {
    let want = admin.sha_of(bytes).await?;
    let temp = dir.join(".gate.wasm.bench");
    std::fs::write(&temp, bytes)?;
    let started = Instant::now();
    std::fs::rename(&temp, dir.join("gate.wasm"))?;
    let deadline = started + Duration::from_secs(60);
    loop {
        let gate = admin.gate().await?;
        if gate["sha256"] == want.as_str() {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        if gate["state"] != "loaded" && gate["last_error"].is_string() {
            bail!("gate refused: {gate}");
        }
        if Instant::now() > deadline {
            bail!("gate not live within 60 s: {gate}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One throughput phase on `subscribers`; with `storm`, `gate` is replaced (alternating the
/// two builds) every `storm_interval` meanwhile. Returns the connections for the next phase.
async fn phase(
    admin: &Admin,
    addr: SocketAddr,
    subscribers: Vec<Ws>,
    p: &Params,
    storm: Option<(&[u8], &[u8])>,
) -> Result<(Vec<Ws>, Phase)> {
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|ws| tokio::spawn(read_until_end(ws)))
        .collect();
    let publishing = Arc::new(AtomicBool::new(true));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = Publisher::new(addr, API_KEY, "gate:bench", p.publishers)?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..p.publishers {
        let (publisher, publishing, published) =
            (publisher.clone(), publishing.clone(), published.clone());
        workers.push(tokio::spawn(async move {
            while publishing.load(Relaxed) {
                publisher.publish("{\"n\":1}").await?;
                published.fetch_add(1, Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let mut reloads = 0;
    let until = started + Duration::from_secs_f64(p.seconds);
    match storm {
        Some((v1, v2)) => {
            while Instant::now() < until {
                let bytes = if reloads % 2 == 0 { v2 } else { v1 };
                admin.upload("gate", bytes).await?;
                reloads += 1;
                tokio::time::sleep(p.storm_interval).await;
            }
        }
        None => tokio::time::sleep_until(until.into()).await,
    }
    publishing.store(false, Relaxed);
    for worker in workers {
        worker.await??;
    }
    publisher.publish("{\"end\":true}").await?;
    let mut phase = Phase {
        published: published.load(Relaxed),
        reloads,
        ..Phase::default()
    };
    let mut connections = Vec::new();
    for reader in readers {
        let (ws, outcome) = reader.await?;
        connections.push(ws);
        match outcome {
            Ok(received) => {
                phase.delivered += received;
                if received != phase.published {
                    phase.broken += 1;
                    phase.first_break.get_or_insert_with(|| {
                        format!("received {received} of {} messages", phase.published)
                    });
                }
            }
            Err(why) => {
                phase.broken += 1;
                phase.first_break.get_or_insert(why);
            }
        }
    }
    phase.seconds = started.elapsed().as_secs_f64();
    Ok((connections, phase))
}

/// Counts messages until the `end` marker, checking that offsets are contiguous; an
/// `unsubscribed`, a close or a gap ends it with the reason.
async fn read_until_end(mut ws: Ws) -> (Ws, Result<u64, String>) {
    let mut received = 0u64;
    let mut last_offset: Option<u64> = None;
    let outcome = loop {
        let frame = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => break Err(format!("connection error: {e}")),
            Ok(None) => break Err("connection closed".to_owned()),
            Err(_) => break Err("nothing received for 30 s".to_owned()),
        };
        let Message::Text(text) = frame else {
            if let Message::Close(c) = frame {
                break Err(format!("closed: {c:?}"));
            }
            continue;
        };
        let push: Value = match serde_json::from_str(text.as_str()) {
            Ok(v) => v,
            Err(e) => break Err(format!("not JSON ({e}): {text}")),
        };
        if push["type"] != "message" {
            break Err(format!("unexpected push: {push}"));
        }
        let offset = push["offset"].as_u64().unwrap_or(0);
        if let Some(last) = last_offset {
            if offset != last + 1 {
                break Err(format!("offset {offset} after {last}: lost or reordered"));
            }
        }
        last_offset = Some(offset);
        if push["data"]["data"]["end"] == true {
            break Ok(received);
        }
        received += 1;
    };
    (ws, outcome)
}

/// The admin API, as the bench uses it.
pub(crate) struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: stellwerk::http_client(),
        }
    }

    /// `PUT /admin/plugins/{name}`: the answer (`outcome`, `reauthorized`) of a 200.
    pub(crate) async fn upload(&self, name: &str, bytes: &[u8]) -> Result<Value> {
        let request = self
            .http
            .put(format!("{}/admin/plugins/{name}", self.base))
            .body(bytes.to_vec());
        Self::call(request, "upload").await
    }

    /// `POST /admin/plugins/reload`: one result per plugin file.
    pub(crate) async fn reload_all(&self) -> Result<Vec<Value>> {
        let request = self
            .http
            .post(format!("{}/admin/plugins/reload", self.base));
        let body = Self::call(request, "reload").await?;
        body["results"]
            .as_array()
            .cloned()
            .with_context(|| format!("reload answer without results: {body}"))
    }

    /// Sends `request` with the admin token; the JSON answer of a 2xx, else an error.
    async fn call(request: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let resp = request.bearer_auth(ADMIN_TOKEN).send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("{what} answered {status}: {body}");
        }
        Ok(body)
    }

    async fn gate(&self) -> Result<Value> {
        let body: Value = self
            .http
            .get(format!("{}/admin/plugins", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        body["plugins"]
            .as_array()
            .and_then(|list| list.iter().find(|p| p["name"] == "gate"))
            .cloned()
            .context("gate not listed")
    }

    /// The SHA-256 the broker will show for `bytes` (computed by `sha256sum`: the bench has
    /// no hash crate).
    async fn sha_of(&self, bytes: &[u8]) -> Result<String> {
        let file = std::env::temp_dir().join(format!("stellwerk-bench-sha-{}", std::process::id()));
        std::fs::write(&file, bytes)?;
        let out = tokio::process::Command::new("sha256sum")
            .arg(&file)
            .output()
            .await
            .context("running sha256sum")?;
        let _ = std::fs::remove_file(&file);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .map(str::to_owned)
            .context("no output from sha256sum")
    }
}

/// `bytes` plus a custom section named `name`: the same plugin, bytes never seen before.
pub(crate) fn with_custom_section(bytes: &[u8], name: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    leb128(&mut payload, name.len() as u64);
    payload.extend_from_slice(name.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    leb128(&mut out, payload.len() as u64);
    out.extend_from_slice(&payload);
    out
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "reading {} (run `cargo xtask build-plugins`)",
            path.display()
        )
    })
}

/// Median, p99 and max of a series of milliseconds.
struct Series {
    n: usize,
    median: f64,
    p99: f64,
    max: f64,
}

impl Series {
    fn of(samples: &mut [f64]) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((samples.len() as f64) * q).ceil().max(1.0) as usize;
            samples[rank.min(samples.len()) - 1]
        };
        Self {
            n: samples.len(),
            median: at(0.5),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or(0.0),
        }
    }

    fn json(&self) -> Value {
        json!({"n": self.n, "median": self.median, "p99": self.p99, "max": self.max})
    }
}
