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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
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
    if embedded {
        tracing::info!(
            "no config file given: running on the embedded default plus STELLWERK_* overrides"
        );
    }
    let secret_was_set = config.jwt.secret.is_some() || config.jwt.public_key_file.is_some();
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
    tracing::info!("config: {}", config.summary());

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stellwerk: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        stellwerk::run(listener, config, shutdown_signal()).await?;
        Ok(())
    });
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

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
