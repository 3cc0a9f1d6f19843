//! Starting and stopping the servers under test. Each run gets a fresh process so that its
//! CPU and memory figures start from a known state.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// Where to find the binaries and how to configure them.
#[derive(Debug, Clone)]
pub(crate) struct ServerSetup {
    pub(crate) stellwerk_bin: PathBuf,
    pub(crate) plugins_dir: PathBuf,
    /// Set on every Stellwerk started, after the bench's own settings (so they win).
    pub(crate) stellwerk_env: Vec<(String, String)>,
    pub(crate) nats_bin: PathBuf,
    pub(crate) log_dir: PathBuf,
}

/// A running server process, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pid: u32,
    /// The WebSocket listener (Stellwerk: `/ws`; nats-server: its `websocket` block).
    pub(crate) ws_addr: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// For a server from [`start_redis`]: where Stellwerk finds it.
    pub(crate) fn redis_url(&self) -> String {
        format!("redis://{}/", self.ws_addr)
    }
}

pub(crate) const API_KEY: &str = "bench-api-key";
pub(crate) const ADMIN_TOKEN: &str = "bench-admin-token";
pub(crate) const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef";

/// Starts `stellwerk serve` on a free loopback port and waits for `/readyz`.
pub(crate) async fn start_stellwerk(
    setup: &ServerSetup,
    label: &str,
    queue_capacity: usize,
    env: &[(String, String)],
) -> Result<Server> {
    if !setup.stellwerk_bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p stellwerk`",
            setup.stellwerk_bin.display()
        );
    }
    if !setup.plugins_dir.is_dir() {
        bail!(
            "plugins directory {} not found: run `cargo xtask build-plugins`",
            setup.plugins_dir.display()
        );
    }
    let addr = free_port()?;
    let log = log_file(setup, &format!("stellwerk-{label}"))?;
    let mut cmd = Command::new(&setup.stellwerk_bin);
    cmd.arg("serve")
        .env("STELLWERK_LISTEN", addr.to_string())
        .env("STELLWERK_API_KEY", API_KEY)
        .env("STELLWERK_JWT_SECRET", JWT_SECRET)
        .env("STELLWERK_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STELLWERK_PLUGINS_DIR", &setup.plugins_dir)
        .env(
            "STELLWERK_LIMITS_QUEUE_CAPACITY",
            queue_capacity.to_string(),
        )
        .env("RUST_LOG", "warn");
    for (k, v) in env.iter().chain(&setup.stellwerk_env) {
        cmd.env(k, v);
    }
    let mut child = spawn_logged(cmd, &log)?;
    let pid = child.id().context("stellwerk exited at once")?;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "stellwerk exited with {status}; log: {}\n{}",
                log.display(),
                tail(&log)
            );
        }
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            bail!(
                "stellwerk not ready after 60 s; log: {}\n{}",
                log.display(),
                tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Server {
        child,
        pid,
        ws_addr: addr,
        log,
    })
}

/// Starts nats-server with its WebSocket listener on a free loopback port.
pub(crate) async fn start_nats(setup: &ServerSetup, label: &str) -> Result<Server> {
    let client_addr = free_port()?;
    let ws_addr = free_port()?;
    let log = log_file(setup, &format!("nats-{label}"))?;
    let conf = setup.log_dir.join(format!("nats-{label}.conf"));
    // Limits raised so that neither side is cut off by a default the other does not have:
    // Stellwerk gets a queue as long as the run, nats a pending buffer and deadline to match.
    let config = format!(
        "listen: \"{client_addr}\"\n\
         max_payload: 1MB\n\
         max_pending: 512MB\n\
         max_connections: 1000000\n\
         write_deadline: \"60s\"\n\
         websocket {{\n  listen: \"{ws_addr}\"\n  no_tls: true\n  compression: false\n}}\n"
    );
    std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
    let mut cmd = Command::new(&setup.nats_bin);
    cmd.arg("-c").arg(&conf);
    let mut child = spawn_logged(cmd, &log).with_context(|| {
        format!(
            "starting {} (Debian package nats-server)",
            setup.nats_bin.display()
        )
    })?;
    let pid = child.id().context("nats-server exited at once")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "nats-server exited with {status}; log: {}\n{}",
                log.display(),
                tail(&log)
            );
        }
        if tokio::net::TcpStream::connect(ws_addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            bail!(
                "nats-server not listening after 20 s; log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Server {
        child,
        pid,
        ws_addr,
        log,
    })
}

/// Starts a fresh `redis-server` (Debian package) on a free loopback port, without
/// persistence, for the Redis engine's runs; `ws_addr` is its address.
pub(crate) async fn start_redis(setup: &ServerSetup, label: &str) -> Result<Server> {
    let addr = free_port()?;
    let log = log_file(setup, &format!("redis-{label}"))?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&setup.log_dir);
    let mut child =
        spawn_logged(cmd, &log).context("starting redis-server (Debian package redis-server)")?;
    let pid = child.id().context("redis-server exited at once")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("redis-server exited with {status}; log: {}", log.display());
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            bail!(
                "redis-server not listening after 20 s; log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Server {
        child,
        pid,
        ws_addr: addr,
        log,
    })
}

/// Finds `nats-server` on `PATH` or where Debian puts it.
pub(crate) fn default_nats_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| {
            ["/usr/bin/nats-server", "/usr/sbin/nats-server"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// `stellwerk` next to this binary (both live in `target/release/`), else the usual path.
pub(crate) fn default_stellwerk_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("stellwerk")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("target/release/stellwerk"))
}

/// `target/plugins` relative to the working directory, else relative to this binary.
pub(crate) fn default_plugins_dir() -> PathBuf {
    let local = PathBuf::from("target/plugins");
    if local.is_dir() {
        return local;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|target| target.join("plugins")))
        .filter(|p| p.is_dir())
        .unwrap_or(local)
}

fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

fn log_file(setup: &ServerSetup, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(&setup.log_dir)
        .with_context(|| format!("creating {}", setup.log_dir.display()))?;
    Ok(setup.log_dir.join(format!("{name}.log")))
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    Ok(cmd.spawn()?)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
