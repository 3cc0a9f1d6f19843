//! Scenario `reconnect-storm` (Stellwerk only; NATS core has no recovery): N WebSocket
//! subscribers of one channel drop their connections within `spread` (as after a network
//! blip or a server-side hiccup) and reconnect at once with `subscribe` + `recover`, while a
//! publisher keeps publishing. Figures: time until every client has recovered and caught
//! up, messages lost and duplicated (offsets are checked to be contiguous per client: both
//! must be 0), clients told `recovered: false`, and the server's peak RSS (`VmHWM`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::procfs;
use crate::servers::{self, ServerSetup};
use crate::stellwerk::{self, Publisher};
use crate::wsclient::{self, Ws};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) clients: usize,
    pub(crate) channel: String,
    /// Messages per second, published for the whole run (warm-up, storm, after).
    pub(crate) rate: f64,
    /// Publishing with every client connected, before the storm.
    pub(crate) warmup: Duration,
    /// Every client drops and reconnects once within this window.
    pub(crate) spread: Duration,
    /// Publishing goes on this long after the last client dropped.
    pub(crate) after: Duration,
    pub(crate) connect_concurrency: usize,
    pub(crate) read_buffer: usize,
    pub(crate) batch: bool,
    pub(crate) queue_capacity: usize,
    pub(crate) timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Outcome {
    pub(crate) clients: usize,
    pub(crate) connected: usize,
    pub(crate) connect_failed: usize,
    pub(crate) first_connect_error: Option<String>,
    pub(crate) published: u64,
    pub(crate) publish_errors: u64,
    pub(crate) rate: f64,
    pub(crate) spread_s: f64,
    /// Clients that reconnected and got `recovered: true` and caught up.
    pub(crate) recovered: usize,
    /// Clients answered `recovered: false`.
    pub(crate) unrecovered: usize,
    /// Clients whose reconnect failed outright (refused, timed out, closed).
    pub(crate) reconnect_failed: usize,
    pub(crate) first_reconnect_error: Option<String>,
    /// From the first client dropping to the last one caught up with what it missed.
    pub(crate) all_recovered_s: Option<f64>,
    /// Per client, from dropping to caught up (reconnect + subscribe + replay).
    pub(crate) recover_p50_ms: f64,
    pub(crate) recover_p99_ms: f64,
    pub(crate) recover_max_ms: f64,
    /// Offsets a client never received (over all clients).
    pub(crate) lost: u64,
    /// Offsets a client received twice or out of order (over all clients).
    pub(crate) duplicates: u64,
    /// Clients that had not seen the last published offset when the run ended.
    pub(crate) incomplete: usize,
    pub(crate) deliveries: u64,
    pub(crate) rss_idle_kib: u64,
    pub(crate) rss_connected_kib: u64,
    pub(crate) rss_peak_kib: u64,
    pub(crate) server_cpu_storm_s: f64,
    pub(crate) generator_cpu_s: f64,
    pub(crate) timed_out: bool,
    pub(crate) server_log: String,
}

/// What one client saw.
#[derive(Debug, Default)]
struct Report {
    lost: u64,
    duplicates: u64,
    deliveries: u64,
    unrecovered: bool,
    /// Dropped → caught up.
    recover: Option<Duration>,
    caught_up_at: Option<Instant>,
    dropped_at: Option<Instant>,
    last: u64,
    error: Option<String>,
}

/// Where a subscriber stands in the channel, and what it has seen.
struct Tracker {
    epoch: String,
    last: u64,
    report: Report,
}

impl Tracker {
    /// Checks every message push in `text` (one or several `\n`-separated pushes) for
    /// contiguity, and returns a command reply with `id` 1 if one is there.
    fn take(&mut self, text: &str) -> Result<Option<Value>> {
        let mut reply = None;
        for line in text.split('\n') {
            let push: Value = serde_json::from_str(line)
                .with_context(|| format!("not JSON from stellwerk: {line}"))?;
            if push["id"] == 1 {
                reply = Some(push);
                continue;
            }
            match push["type"].as_str() {
                Some("message") => {}
                Some("disconnect") => bail!("stellwerk disconnected the client: {line}"),
                _ => continue,
            }
            if push["epoch"] != self.epoch.as_str() {
                bail!("epoch changed under a live subscription: {line}");
            }
            let offset = push["offset"].as_u64().context("message without offset")?;
            self.report.deliveries += 1;
            if offset == self.last + 1 {
                self.last = offset;
            } else if offset > self.last {
                self.report.lost += offset - self.last - 1;
                self.last = offset;
            } else {
                self.report.duplicates += 1;
            }
        }
        Ok(reply)
    }

    /// Reads one frame and checks its pushes; returns a reply with `id` 1 if there was one.
    async fn read(&mut self, ws: &mut Ws, deadline: Instant) -> Result<Option<Value>> {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("nothing before the deadline")?
            .context("stellwerk closed the connection")??;
        match frame {
            Message::Text(text) => self.take(text.as_str()),
            Message::Close(c) => bail!("stellwerk closed: {c:?}"),
            _ => Ok(None),
        }
    }
}

/// Connects as `storm-<index>` and subscribes (with `recover` from where `tracker` stands,
/// if given); returns the socket and the `subscribed` reply.
async fn subscribe(
    addr: SocketAddr,
    index: usize,
    p: &Params,
    tracker: &mut Tracker,
    recover: bool,
    deadline: Instant,
) -> Result<(Ws, Value)> {
    let token = stellwerk::token(servers::JWT_SECRET, &format!("storm-{index}"), None)?;
    let query = if p.batch { "&batch=1" } else { "" };
    let mut ws = tokio::time::timeout_at(
        deadline,
        wsclient::connect(addr, &format!("/ws?token={token}{query}"), p.read_buffer),
    )
    .await
    .context("connect timed out")??;
    let mut command = json!({"id": 1, "type": "subscribe", "channel": p.channel});
    if recover {
        command["recover"] = json!({"epoch": tracker.epoch, "offset": tracker.last});
    }
    ws.send(Message::text(command.to_string())).await?;
    loop {
        if let Some(reply) = tracker.read(&mut ws, deadline).await? {
            if reply["type"] != "subscribed" {
                bail!("subscribe refused: {reply}");
            }
            return Ok((ws, reply));
        }
    }
}

/// A connected subscriber, ready for the storm.
struct Client {
    index: usize,
    ws: Ws,
    tracker: Tracker,
}

async fn open(addr: SocketAddr, index: usize, p: &Params, deadline: Instant) -> Result<Client> {
    let mut tracker = Tracker {
        epoch: String::new(),
        last: 0,
        report: Report::default(),
    };
    let (ws, reply) = subscribe(addr, index, p, &mut tracker, false, deadline).await?;
    tracker.epoch = reply["epoch"].as_str().context("no epoch")?.to_owned();
    tracker.last = reply["offset"].as_u64().context("no offset")?;
    Ok(Client { index, ws, tracker })
}

/// One client's storm: read until `drop_at`, drop the connection without a close
/// handshake (like a laptop going to sleep), reconnect with `recover`, read the replay,
/// then everything until the last published offset.
async fn storm(
    client: Client,
    addr: SocketAddr,
    p: Arc<Params>,
    drop_at: Instant,
    mut last_offset: watch::Receiver<Option<u64>>,
    deadline: Instant,
) -> Report {
    let Client {
        index,
        mut ws,
        mut tracker,
    } = client;
    let result = async {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(drop_at) => break,
                read = tracker.read(&mut ws, deadline) => { read?; }
            }
        }
        drop(ws);
        let dropped = Instant::now();
        tracker.report.dropped_at = Some(dropped);
        let (mut ws, reply) = subscribe(addr, index, &p, &mut tracker, true, deadline).await?;
        let live_offset = reply["offset"].as_u64().context("no offset")?;
        if reply["recovered"] != true {
            tracker.report.unrecovered = true;
            tracker.epoch = reply["epoch"].as_str().unwrap_or_default().to_owned();
            tracker.report.lost += live_offset.saturating_sub(tracker.last);
            tracker.last = live_offset;
        }
        while tracker.last < live_offset {
            tracker.read(&mut ws, deadline).await?;
        }
        let now = Instant::now();
        tracker.report.caught_up_at = Some(now);
        tracker.report.recover = Some(now - dropped);
        loop {
            let target = *last_offset.borrow_and_update();
            match target {
                Some(target) if tracker.last >= target => break,
                Some(_) => {
                    tracker.read(&mut ws, deadline).await?;
                }
                None => {
                    tokio::select! {
                        changed = last_offset.changed() => changed?,
                        read = tracker.read(&mut ws, deadline) => { read?; }
                    }
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        tracker.report.error = Some(format!("{e:#}"));
    }
    tracker.report.last = tracker.last;
    tracker.report
}

pub(crate) async fn run(setup: &ServerSetup, p: &Params) -> Result<Outcome> {
    let deadline = Instant::now() + p.timeout;
    let server = servers::start_stellwerk(setup, "reconnect-storm", p.queue_capacity, &[]).await?;
    let (pid, addr) = (server.pid(), server.ws_addr);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_kib = procfs::rss_kib(pid)?;

    eprintln!("opening {} subscribers …", p.clients);
    let mut pending = stream::iter(0..p.clients)
        .map(|i| open(addr, i, p, deadline))
        .buffer_unordered(p.connect_concurrency.max(1));
    let mut clients = Vec::with_capacity(p.clients);
    let (mut connect_failed, mut first_connect_error, mut timed_out) = (0, None, false);
    loop {
        match tokio::time::timeout_at(deadline, pending.next()).await {
            Ok(Some(Ok(client))) => clients.push(client),
            Ok(Some(Err(e))) => {
                connect_failed += 1;
                first_connect_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    drop(pending);
    let connected = clients.len();
    if connected == 0 {
        server.stop().await;
        bail!(
            "no subscriber could connect: {}",
            first_connect_error.unwrap_or_default()
        );
    }
    let rss_connected_kib = procfs::rss_kib(pid)?;
    let generator_cpu_before = procfs::own_cpu_seconds()?;

    // The publisher runs through warm-up, storm and `after`.
    let publisher = Publisher::new(addr, servers::API_KEY, &p.channel, 4)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let published = Arc::new(AtomicU64::new(0));
    let publish_errors = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (published, errors) = (published.clone(), publish_errors.clone());
        let period = Duration::from_secs_f64(1.0 / p.rate.max(0.1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tick.tick() => {}
                }
                seq += 1;
                match publisher.publish(&format!("{{\"seq\":{seq}}}")).await {
                    Ok(()) => published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let p = Arc::new(p.clone());
    let storm_start = Instant::now() + p.warmup;
    let (last_tx, last_rx) = watch::channel(None);
    let n = clients.len() as u32;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let drop_at = storm_start + p.spread * (i as u32) / n;
            tokio::spawn(storm(
                client,
                addr,
                p.clone(),
                drop_at,
                last_rx.clone(),
                deadline,
            ))
        })
        .collect();
    tokio::time::sleep_until(storm_start).await;
    eprintln!(
        "storm: {connected} clients drop and reconnect within {:?} …",
        p.spread
    );
    let cpu_before = procfs::cpu_seconds(pid)?;
    tokio::time::sleep_until((storm_start + p.spread + p.after).min(deadline)).await;
    let _ = stop_tx.send(true);
    let _ = publishing.await;

    let (epoch, last_offset) = latest(addr, &p.channel).await?;
    let _ = last_tx.send(Some(last_offset));
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await?);
    }
    let server_cpu_storm_s = procfs::cpu_seconds(pid)? - cpu_before;
    let rss_peak_kib = procfs::peak_rss_kib(pid)?;
    let generator_cpu_s = procfs::own_cpu_seconds()? - generator_cpu_before;
    let server_log = server.log.display().to_string();
    server.stop().await;

    let reconnect_failed = reports.iter().filter(|r| r.error.is_some()).count();
    let first_reconnect_error = reports.iter().find_map(|r| r.error.clone());
    let first_drop = reports.iter().filter_map(|r| r.dropped_at).min();
    let last_caught_up = reports.iter().filter_map(|r| r.caught_up_at).max();
    let all_caught_up = reports.iter().all(|r| r.caught_up_at.is_some());
    let all_recovered_s = match (first_drop, last_caught_up) {
        (Some(first), Some(last)) if all_caught_up => Some((last - first).as_secs_f64()),
        _ => None,
    };
    let mut recover_ms: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.recover)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    recover_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| -> f64 {
        if recover_ms.is_empty() {
            return 0.0;
        }
        let i = ((recover_ms.len() - 1) as f64 * q).round() as usize;
        recover_ms[i]
    };
    if reports.iter().any(|r| r.last < last_offset) {
        eprintln!("note: channel epoch {epoch}, last offset {last_offset}");
    }
    Ok(Outcome {
        clients: p.clients,
        connected,
        connect_failed,
        first_connect_error,
        published: published.load(Ordering::Relaxed),
        publish_errors: publish_errors.load(Ordering::Relaxed),
        rate: p.rate,
        spread_s: p.spread.as_secs_f64(),
        recovered: reports
            .iter()
            .filter(|r| r.caught_up_at.is_some() && !r.unrecovered)
            .count(),
        unrecovered: reports.iter().filter(|r| r.unrecovered).count(),
        reconnect_failed,
        first_reconnect_error,
        all_recovered_s,
        recover_p50_ms: pct(0.5),
        recover_p99_ms: pct(0.99),
        recover_max_ms: recover_ms.last().copied().unwrap_or(0.0),
        lost: reports.iter().map(|r| r.lost).sum(),
        duplicates: reports.iter().map(|r| r.duplicates).sum(),
        incomplete: reports.iter().filter(|r| r.last < last_offset).count(),
        deliveries: reports.iter().map(|r| r.deliveries).sum(),
        rss_idle_kib,
        rss_connected_kib,
        rss_peak_kib,
        server_cpu_storm_s,
        generator_cpu_s,
        timed_out: timed_out || Instant::now() >= deadline,
        server_log,
    })
}

/// The channel's epoch and latest offset, from its history (API key).
pub(crate) async fn latest(addr: SocketAddr, channel: &str) -> Result<(String, u64)> {
    let url = format!("http://{addr}/api/channels/{channel}/history?limit=1");
    let body: Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(servers::API_KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let epoch = body["epoch"].as_str().context("history without epoch")?;
    let offset = body["messages"][0]["offset"].as_u64().unwrap_or(0);
    Ok((epoch.to_owned(), offset))
}

pub(crate) fn print(o: &Outcome) {
    println!();
    println!(
        "{:>7} {:>9} {:>9} {:>11} {:>9} {:>9} {:>6} {:>5} {:>10} {:>8} {:>8} {:>8} {:>12} {:>12} {:>8}",
        "clients", "published", "recovered", "unrecovered", "failed", "all rec.", "lost", "dups",
        "incomplete", "p50 ms", "p99 ms", "max ms", "RSS conn.", "RSS peak", "srv CPU"
    );
    println!(
        "{:>7} {:>9} {:>9} {:>11} {:>9} {:>9} {:>6} {:>5} {:>10} {:>8.1} {:>8.1} {:>8.1} {:>8} KiB {:>8} KiB {:>7.2}s",
        o.connected,
        o.published,
        o.recovered,
        o.unrecovered,
        o.reconnect_failed,
        o.all_recovered_s
            .map_or("-".to_owned(), |s| format!("{s:.2}s")),
        o.lost,
        o.duplicates,
        o.incomplete,
        o.recover_p50_ms,
        o.recover_p99_ms,
        o.recover_max_ms,
        o.rss_connected_kib,
        o.rss_peak_kib,
        o.server_cpu_storm_s,
    );
    let notes = [
        (o.connect_failed > 0).then(|| {
            format!(
                "{} subscribers failed to connect ({})",
                o.connect_failed,
                o.first_connect_error.as_deref().unwrap_or("")
            )
        }),
        (o.reconnect_failed > 0).then(|| {
            format!(
                "{} reconnects failed ({})",
                o.reconnect_failed,
                o.first_reconnect_error.as_deref().unwrap_or("")
            )
        }),
        (o.publish_errors > 0).then(|| format!("{} publish errors", o.publish_errors)),
        o.timed_out
            .then(|| "hit the timeout: partial figures".to_owned()),
    ];
    for note in notes.into_iter().flatten() {
        println!("    note: {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(offset: u64) -> String {
        json!({"type": "message", "channel": "public:bench", "epoch": "e", "offset": offset, "data": {}})
            .to_string()
    }

    #[test]
    fn gaps_and_duplicates_are_counted() {
        let mut tracker = Tracker {
            epoch: "e".into(),
            last: 3,
            report: Report::default(),
        };
        let batch = [4, 5, 8, 8, 6, 9].map(push).join("\n");
        let reply = json!({"id": 1, "type": "subscribed"}).to_string();
        let got = tracker.take(&format!("{batch}\n{reply}")).unwrap();
        assert_eq!(got.map(|r| r["type"].clone()), Some(json!("subscribed")));
        assert_eq!(tracker.last, 9);
        assert_eq!(tracker.report.lost, 2, "6 and 7 were skipped when 8 came");
        assert_eq!(tracker.report.duplicates, 2, "8 twice, 6 late");
        assert_eq!(tracker.report.deliveries, 6);
        let other_epoch = push(10).replace("\"e\"", "\"f\"");
        assert!(tracker.take(&other_epoch).is_err());
    }
}
