//! Scenario `plugin-load`: what loading a plugin costs, cold and from the compile cache.
//!
//! For each plugin (a JavaScript one and a Rust one by default), on a plugin directory of its
//! own: `runs` starts on an empty compile cache (a full Cranelift compile) and `runs` starts on
//! the cache the first one filled, as a restarted or second broker finds it. From each start:
//! the broker's own compile or cache-load time (its `component compiled` / `component loaded
//! from the compile cache` log line), the time from spawning the process to `/readyz`, and
//! its resident memory (one instance of the plugin exists: the one `describe` ran on, pooled).
//! Then what one instance slot of the pooling allocator costs: two starts with `slots / 10`
//! and `slots` slots, address space and resident memory per slot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::procfs;
use crate::servers::{self, ServerSetup};

/// What one start measured.
struct Start {
    /// The broker's own figure for compiling or loading the component, in ms.
    load_ms: f64,
    /// Spawn to `/readyz`, in ms (polled every 100 ms).
    ready_ms: f64,
    rss_kib: u64,
}

pub(crate) struct Params {
    pub(crate) plugins: Vec<String>,
    pub(crate) runs: usize,
    /// Instance slots of the second broker in the slot comparison (the first has a tenth).
    pub(crate) slots: u32,
}

pub(crate) async fn run(setup: &ServerSetup, params: &Params) -> Result<Value> {
    let mut report = Vec::new();
    for plugin in &params.plugins {
        eprintln!("plugin-load: {plugin} …");
        report.push(measure(setup, plugin, params).await?);
    }
    let report = json!({ "scenario": "plugin-load", "plugins": report });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(report)
}

async fn measure(setup: &ServerSetup, plugin: &str, params: &Params) -> Result<Value> {
    let wasm = setup.plugins_dir.join(format!("{plugin}.wasm"));
    let bytes = std::fs::metadata(&wasm)
        .with_context(|| format!("{}: run `cargo xtask build-plugins`", wasm.display()))?
        .len();
    let scratch = Scratch::new(plugin)?;
    std::fs::copy(&wasm, scratch.plugins.join(format!("{plugin}.wasm")))?;
    let setup = ServerSetup {
        plugins_dir: scratch.plugins.clone(),
        ..setup.clone()
    };

    let mut cold = Vec::new();
    for run in 0..params.runs {
        let cache = scratch.root.join(format!("cold-{run}"));
        let (start, server) = start(&setup, plugin, &cache, "component compiled").await?;
        server.stop().await;
        cold.push(start);
    }
    // The first cold run's cache, as a restarted broker finds it.
    let warm_cache = scratch.root.join("cold-0");
    let mut warm = Vec::new();
    let mut last = None;
    for _ in 0..params.runs {
        let (start, server) = start(
            &setup,
            plugin,
            &warm_cache,
            "component loaded from the compile cache",
        )
        .await?;
        if let Some(previous) = last.replace(server) {
            previous.stop().await;
        }
        warm.push(start);
    }
    if let Some(server) = last {
        server.stop().await;
    }
    let (few, many) = (params.slots / 10, params.slots);
    let ((rss_few, vm_few), (rss_many, vm_many)) = (
        with_slots(&setup, plugin, &warm_cache, few).await?,
        with_slots(&setup, plugin, &warm_cache, many).await?,
    );
    let per_slot = |a: u64, b: u64| (b as f64 - a as f64) / f64::from(many - few);

    let summary = |starts: &[Start]| {
        json!({
            "load_ms_median": median(starts.iter().map(|s| s.load_ms)),
            "ready_ms_median": median(starts.iter().map(|s| s.ready_ms)),
            "rss_kib_median": median(starts.iter().map(|s| s.rss_kib as f64)),
            "load_ms": starts.iter().map(|s| s.load_ms).collect::<Vec<_>>(),
        })
    };
    let (cold_ms, warm_ms) = (
        median(cold.iter().map(|s| s.load_ms)),
        median(warm.iter().map(|s| s.load_ms)),
    );
    Ok(json!({
        "plugin": plugin,
        "component_bytes": bytes,
        "cold": summary(&cold),
        "from_cache": summary(&warm),
        "cache_load_to_compile_ratio": warm_ms / cold_ms,
        "slots": {
            "compared": [few, many],
            "address_space_kib_per_slot": per_slot(vm_few, vm_many),
            "resident_kib_per_slot": per_slot(rss_few, rss_many),
        },
    }))
}

/// Starts a broker on `cache` and reads the `ms=` of the log line `what`.
async fn start(
    setup: &ServerSetup,
    plugin: &str,
    cache: &Path,
    what: &str,
) -> Result<(Start, servers::Server)> {
    let env = [
        ("RUST_LOG".to_owned(), "info".to_owned()),
        (
            "STELLWERK_PLUGINS_COMPILE_CACHE_DIR".to_owned(),
            cache.display().to_string(),
        ),
        // Room for the burst's instances in the pool.
        ("STELLWERK_PLUGINS_POOL_SIZE".to_owned(), "64".to_owned()),
    ];
    let spawned = Instant::now();
    let server = servers::start_stellwerk(setup, &format!("load-{plugin}"), 1024, &env).await?;
    let ready_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    let log = std::fs::read_to_string(&server.log)?;
    let Some(load_ms) = log
        .lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split(" ms=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse::<f64>().ok())
    else {
        bail!("no `{what} … ms=` line in {}", server.log.display());
    };
    let rss_kib = procfs::rss_kib(server.pid())?;
    Ok((
        Start {
            load_ms,
            ready_ms,
            rss_kib,
        },
        server,
    ))
}

/// Resident memory and address space of a broker started from the cache with `slots`
/// instance slots (`plugins.instance_slots`): the cost of a pooled slot is the difference.
async fn with_slots(
    setup: &ServerSetup,
    plugin: &str,
    cache: &Path,
    slots: u32,
) -> Result<(u64, u64)> {
    let setup = ServerSetup {
        stellwerk_env: [
            setup.stellwerk_env.clone(),
            vec![(
                "STELLWERK_PLUGINS_INSTANCE_SLOTS".to_owned(),
                slots.to_string(),
            )],
        ]
        .concat(),
        ..setup.clone()
    };
    let (_, server) = start(
        &setup,
        plugin,
        cache,
        "component loaded from the compile cache",
    )
    .await?;
    let figures = (
        procfs::rss_kib(server.pid())?,
        procfs::vm_size_kib(server.pid())?,
    );
    server.stop().await;
    Ok(figures)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A temporary directory for one plugin's runs: its plugin directory and the caches.
struct Scratch {
    root: PathBuf,
    plugins: PathBuf,
}

impl Scratch {
    fn new(plugin: &str) -> Result<Self> {
        let root = std::env::temp_dir().join(format!(
            "stellwerk-bench-load-{plugin}-{}",
            std::process::id()
        ));
        let plugins = root.join("plugins");
        std::fs::create_dir_all(&plugins)?;
        Ok(Self { root, plugins })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
