//! The `stellwerk` binary: parses the command line, sets up logging, and
//! hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use stellwerk::config::Config;

#[derive(Parser)]
#[command(name = "stellwerk", version, about = "Realtime broker for Stud.IP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. Without a config file it runs on the embedded default
    /// (127.0.0.1:8080, in-memory engine, ./plugins) and says what it chose.
    Serve {
        /// TOML config file; every setting can also be set as STELLWERK_<SECTION>_<KEY>.
        #[arg(long, env = "STELLWERK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Mint an HS256 client token with the configured `jwt.secret` (for development and tests;
    /// in production Stud.IP mints tokens).
    Token {
        /// The Stud.IP user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Extra claims as a JSON object, e.g. '{"perm":"autor","courses":{"…":"autor"}}'.
        #[arg(long, default_value = "{}")]
        claims: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[arg(long, env = "STELLWERK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List, reload, upload or remove plugins of a running broker (through its admin API).
    Plugins {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        action: PluginsAction,
    },
}

/// Which broker the `plugins` commands talk to. Without `--url` and `--token` they come from
/// the broker's own config (`admin_listen` or `listen`, and `admin_token`), so that on the
/// broker's host, with its config and environment, no option is needed.
#[derive(clap::Args)]
struct AdminTarget {
    /// Base URL of the admin API, e.g. http://127.0.0.1:8081.
    #[arg(long, global = true)]
    url: Option<String>,
    /// The admin token (never the API key).
    #[arg(
        long,
        global = true,
        env = "STELLWERK_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print the admin API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    /// The broker's config file, for the defaults of --url and --token.
    #[arg(long, global = true, env = "STELLWERK_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PluginsAction {
    /// What runs: state, version, namespaces, counters, last error.
    List,
    /// Load what is on disk again: one plugin, or (without a name) every plugin file.
    Reload { name: Option<String> },
    /// Check a .wasm and, if it passes, write it into the plugin directory and swap it in.
    Upload {
        file: PathBuf,
        /// The plugin's name (default: the file name without .wasm).
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete the plugin's file and unload it; its subscribers are unsubscribed.
    Remove { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Plugins { target, action } => match plugins(&target, &action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stellwerk: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Token {
            sub,
            claims,
            ttl,
            config,
        } => match token(config.as_deref(), &sub, &claims, ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stellwerk: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn load_config(file: Option<&Path>) -> Result<Config, stellwerk::config::ConfigError> {
    // `vars()` would panic on a non-UTF-8 variable anywhere in the environment.
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    Config::load(file, env)
}

fn serve(file: Option<&Path>) -> ExitCode {
    let embedded = file.is_none();
    let mut config = match load_config(file) {
        Ok(config) => config,
        Err(e) => {
            // One clear line and exit code 2: the operator's typo, not a crash.
            eprintln!("stellwerk: config error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    for line in config.warnings() {
        tracing::warn!("{line}");
    }
    // Generated secrets only for the embedded default: `Config::load` refuses a config file
    // that leaves one unset.
    if embedded {
        tracing::info!(
            "no config file given: running on the embedded default plus STELLWERK_* overrides"
        );
        let secret_was_set = config.jwt.secret.is_some()
            || config.jwt.public_key_file.is_some()
            || !config.jwt.keys.is_empty();
        for line in config.fill_dev_secrets() {
            tracing::warn!("{line}");
        }
        if let Some(secret) = config.jwt.secret.as_deref().filter(|_| !secret_was_set) {
            let dev_token = stellwerk::auth::mint_hs256(
                secret,
                "dev",
                Default::default(),
                Duration::from_secs(24 * 3600),
            );
            tracing::warn!("DEV ONLY: a token for user `dev`, valid 24 h: {dev_token}");
        }
    }
    tracing::info!("config: {}", config.summary());

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stellwerk: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let listener = stellwerk::listen(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        stellwerk::run(listener, config, shutdown_signal()).await?;
        Ok(())
    });
    // `run` returned within `shutdown_timeout_seconds`: whatever task is still
    // alive (a session that ignored the deadline) must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stellwerk: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(file: Option<&Path>, sub: &str, claims: &str, ttl: u64) -> anyhow::Result<String> {
    let config = load_config(file)?;
    let secret = config
        .jwt
        .secret
        .context("no jwt.secret configured (set STELLWERK_JWT_SECRET)")?;
    let claims: serde_json::Value = serde_json::from_str(claims).context("--claims is not JSON")?;
    let serde_json::Value::Object(claims) = claims else {
        anyhow::bail!("--claims must be a JSON object");
    };
    Ok(stellwerk::auth::mint_hs256(
        &secret,
        sub,
        claims,
        Duration::from_secs(ttl),
    ))
}

/// `stellwerk plugins …`: one admin API call, its answer printed.
fn plugins(target: &AdminTarget, action: &PluginsAction) -> anyhow::Result<()> {
    let (url, token) = admin_endpoint(target)?;
    let (method, path, body) = match action {
        PluginsAction::List => (reqwest::Method::GET, "/admin/plugins".to_owned(), None),
        PluginsAction::Reload { name: None } => (
            reqwest::Method::POST,
            "/admin/plugins/reload".to_owned(),
            None,
        ),
        PluginsAction::Reload { name: Some(name) } => (
            reqwest::Method::POST,
            format!("/admin/plugins/{name}/reload"),
            None,
        ),
        PluginsAction::Upload { file, name } => {
            let name = match name {
                Some(name) => name.clone(),
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context("cannot tell the plugin's name from the file name; pass --name")?
                    .to_owned(),
            };
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            (
                reqwest::Method::PUT,
                format!("/admin/plugins/{name}"),
                Some(bytes),
            )
        }
        PluginsAction::Remove { name } => (
            reqwest::Method::DELETE,
            format!("/admin/plugins/{name}"),
            None,
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let (status, answer) = runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .request(method.clone(), format!("{url}{path}"))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(120));
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}{path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        anyhow::Ok((status, text))
    })?;
    let answer: serde_json::Value = serde_json::from_str(&answer)
        .unwrap_or_else(|_| serde_json::json!({"error": {"code": "", "message": answer}}));
    if !status.is_success() {
        let error = &answer["error"];
        anyhow::bail!(
            "{method} {path}: {status}: {}",
            error["message"].as_str().unwrap_or_default()
        );
    }
    if target.json {
        println!("{answer:#}");
        return Ok(());
    }
    match action {
        PluginsAction::List => print_plugins(&answer["plugins"]),
        PluginsAction::Reload { name: None } => {
            for result in answer["results"].as_array().into_iter().flatten() {
                print_change(result);
            }
        }
        _ => print_change(&answer),
    }
    Ok(())
}

/// `--url`/`--token`, or what the broker's config says.
fn admin_endpoint(target: &AdminTarget) -> anyhow::Result<(String, String)> {
    let config =
        if target.url.is_none() || target.token.is_none() {
            Some(load_config(target.config.as_deref()).context(
                "no --url/--token given and the broker's config cannot be read for them",
            )?)
        } else {
            None
        };
    let url = match (&target.url, &config) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(config)) => {
            let mut addr = config.admin_listen.unwrap_or(config.listen);
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
        (None, None) => unreachable!("config is loaded when --url is missing"),
    };
    let token = match (&target.token, &config) {
        (Some(token), _) => token.clone(),
        (None, Some(config)) => config.admin_token.clone().context(
            "no admin token: pass --token or set STELLWERK_ADMIN_TOKEN (the broker's admin_token)",
        )?,
        (None, None) => unreachable!("config is loaded when --token is missing"),
    };
    Ok((url, token))
}

fn print_plugins(plugins: &serde_json::Value) {
    println!(
        "{:<16} {:<7} {:<12} {:<20} {:>9} {:>6} {:>9}  SHA256",
        "NAME", "STATE", "VERSION", "NAMESPACES", "CALLS", "FAULTS", "P99 MS"
    );
    for p in plugins.as_array().into_iter().flatten() {
        let text = |key: &str| p[key].as_str().unwrap_or("-").to_owned();
        let namespaces = p["namespaces"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        let p99 = p["latency_p99_ms"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.3}"));
        let sha = text("sha256");
        println!(
            "{:<16} {:<7} {:<12} {:<20} {:>9} {:>6} {:>9}  {}",
            text("name"),
            text("state"),
            text("version"),
            namespaces,
            p["calls"],
            p["faults"],
            p99,
            &sha[..sha.len().min(12)],
        );
        if let Some(error) = p["last_error"].as_str() {
            println!("  last error: {error}");
        }
    }
}

fn print_change(change: &serde_json::Value) {
    let name = change["name"].as_str().unwrap_or("?");
    let outcome = change["outcome"].as_str().unwrap_or("?");
    let mut line = format!("{name}: {outcome}");
    if let Some(version) = change["plugin"]["version"].as_str() {
        line.push_str(&format!(" {version}"));
    }
    if let Some(r) = change.get("reauthorized") {
        line.push_str(&format!(
            " (subscriptions kept {}, revoked {})",
            r["kept"], r["revoked"]
        ));
    }
    if let Some(error) = change["error"].as_str() {
        line.push_str(&format!(": {error}"));
    }
    println!("{line}");
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{filter_fn, FilterExt as _};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The WebSocket library traces every frame it reads, `connect` frames with their tokens
    // included: never log those, whatever RUST_LOG asks for.
    let no_frames = filter_fn(|meta| {
        !(*meta.level() == tracing::Level::TRACE
            && (meta.target().starts_with("tungstenite")
                || meta.target().starts_with("tokio_tungstenite")))
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter.and(no_frames)),
        )
        .init();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: that happens only after the server logged where it
/// listens, and a signal sent right after that line would otherwise meet the default action
/// and kill the process without its graceful shutdown.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
