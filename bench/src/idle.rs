//! Scenario `idle`: K authenticated, subscribed, silent connections; the figure is the
//! server's resident memory per connection.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clients::{self, Broker};
use crate::procfs;
use crate::servers::ServerSetup;

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) connections: usize,
    pub(crate) channel: String,
    pub(crate) timeout: Duration,
    /// Wait after the last connection before reading RSS, so that the server settles.
    pub(crate) settle: Duration,
    pub(crate) connect_concurrency: usize,
    pub(crate) read_buffer: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Outcome {
    pub(crate) target: Broker,
    pub(crate) requested: usize,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) kib_per_connection: f64,
    pub(crate) connect_s: f64,
    pub(crate) server_cpu_s: f64,
    pub(crate) generator_rss_kib: u64,
    /// Connections that had ended by the time the scenario stopped them.
    pub(crate) ended_early: usize,
    pub(crate) timed_out: bool,
    pub(crate) server_log: String,
}

pub(crate) async fn run(broker: Broker, setup: &ServerSetup, p: &Params) -> Result<Outcome> {
    let deadline = Instant::now() + p.timeout;
    let server = broker.start(setup, "idle", 1024).await?;
    let pid = server.pid();
    // Let start-up allocations (plugin compilation, thread pools) finish first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = procfs::rss_kib(pid)?;
    let cpu_before = procfs::cpu_seconds(pid)?;
    let start = Instant::now();
    let opened = clients::open_many(
        broker,
        server.ws_addr,
        p.connections,
        p.connect_concurrency,
        clients::SubscribeAs {
            channel: &p.channel,
            batch: false,
            read_buffer: p.read_buffer,
            claims: &clients::Claims::None,
        },
        deadline,
    )
    .await;
    let connect_s = start.elapsed().as_secs_f64();
    let connected = opened.connections.len();
    if connected == 0 {
        server.stop().await;
        bail!(
            "no connection could be opened: {}",
            opened.first_error.unwrap_or_default()
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let keepers: Vec<_> = opened
        .connections
        .into_iter()
        .map(|conn| {
            tokio::spawn(clients::read_until_stopped(
                conn,
                stop_rx.clone(),
                delivered.clone(),
                0,
            ))
        })
        .collect();
    let settle_until = (Instant::now() + p.settle).min(deadline);
    tokio::time::sleep_until(settle_until).await;
    let rss_after_kib = procfs::rss_kib(pid)?;
    let server_cpu_s = procfs::cpu_seconds(pid)? - cpu_before;
    let generator_rss_kib = procfs::rss_kib(std::process::id()).unwrap_or(0);

    let _ = stop_tx.send(true);
    let mut ended_early = 0;
    for keeper in keepers {
        if keeper.await?.ended.is_some() {
            ended_early += 1;
        }
    }
    let server_log = server.log.display().to_string();
    server.stop().await;
    Ok(Outcome {
        target: broker,
        requested: p.connections,
        connected,
        failed: opened.failed,
        first_error: opened.first_error,
        rss_before_kib,
        rss_after_kib,
        kib_per_connection: rss_after_kib.saturating_sub(rss_before_kib) as f64 / connected as f64,
        connect_s,
        server_cpu_s,
        generator_rss_kib,
        ended_early,
        timed_out: opened.timed_out,
        server_log,
    })
}
