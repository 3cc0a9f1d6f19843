//! Scenario `filter-exec`: where a plugin's `filter` call should run (issue #10).
//!
//! No broker process: the scenario loads the real plugin components with wasmtime itself,
//! with the broker's engine setup (`broker/src/plugins/host.rs`: pooling allocator with its
//! slot shape, 128 MiB memory reservation, a 64 MiB store limit, epoch interruption ticked
//! every 10 ms, a 100 ms call deadline, no fuel, up to 4 idle instances kept per plugin), and
//! drives `filter` calls from a tokio multi-thread runtime of the broker's shape in two ways:
//!
//! - `blocking`: synchronous bindings, a pooled instance per call, the call inside
//!   `tokio::task::spawn_blocking` and awaited by the channel's task: what the broker's
//!   `hub::fanout::per_audience` does today.
//! - `async`: the same bindings generated with `exports: { default: async }`, the call
//!   awaited directly on the tokio worker (`call_filter(..).await`, on a wasmtime fiber).
//!   The epoch deadline callback answers `UpdateDeadline::Yield(1)`, so a call running past a
//!   tick boundary goes back to the scheduler once per tick (what
//!   `epoch_deadline_async_yield_and_update(1)` installs), until the call has run for
//!   the call deadline since it started; then it traps like the synchronous one
//!   (`yield_and_update` alone has no deadline at all). Same instance pool policy.
//!
//! Every run has K ordered channels (each channel's task makes one `filter` call of the
//! `course` plugin at a time, the next when the last one answered), optionally H hostile
//! channels (the `slowfilter` test plugin asked to spin far longer than the deadline: every
//! call runs until the deadline traps it, and the next call gets a fresh instance), and a
//! probe task on the same runtime that sleeps 1 ms in a loop and records how late it wakes:
//! whether the filter load stalls the tokio workers. Figures come from a measuring window
//! after a warm-up; process CPU from `/proc/self/stat`. Modes alternate per configuration,
//! each on a fresh runtime, so both see the same machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Trap, UpdateDeadline,
};

use crate::fanout::ratio;
use crate::payload::{self, Percentiles};
use crate::plugin_cost::COURSE_ID;
use crate::procfs;

/// The broker's synchronous bindings, as `broker/src/plugins/host.rs` generates them.
mod sync_api {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        world: "channel-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// The same world with async exports (host imports stay synchronous: they never wait).
mod async_api {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        world: "channel-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        exports: { default: async },
    });
}

/// The broker's `MAX_MEMORY_LIMIT_BYTES`: memory reservation per slot and pool cap.
const MAX_MEMORY_BYTES: usize = 128 << 20;
/// The broker's default `plugins.memory_limit_bytes`.
const MEMORY_LIMIT_BYTES: usize = 64 << 20;
/// The broker's `CORE_INSTANCES_PER_SLOT`.
const CORE_INSTANCES_PER_SLOT: u32 = 4;
/// Upper bound of calls per channel and run, besides the time bound.
const MAX_CALLS_PER_CHANNEL: u64 = 50_000_000;
/// Upper bound of probe ticks per run, besides the time bound.
const MAX_PROBE_TICKS: usize = 1_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) channels: Vec<usize>,
    pub(crate) hostile: Vec<usize>,
    pub(crate) hostile_with: usize,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
    pub(crate) rounds: usize,
    pub(crate) workers: usize,
    pub(crate) call_timeout: Duration,
    pub(crate) epoch_tick: Duration,
    pub(crate) pool_size: usize,
    pub(crate) size: usize,
    pub(crate) course_wasm: PathBuf,
    pub(crate) hostile_wasm: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// (a) synchronous call in `spawn_blocking`.
    Blocking,
    /// (b) async call with epoch yield, awaited on the worker and nothing else: a call
    /// that ends within one poll never gives the worker back (the broker's lane loop has
    /// no other await point).
    Async,
    /// (b) with `tokio::task::coop::consume_budget()` before each call: the channel's task
    /// yields after tokio's budget of 128 calls, as it would after 128 channel receives.
    #[serde(rename = "async+budget")]
    AsyncBudget,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Blocking => "blocking",
            Mode::Async => "async",
            Mode::AsyncBudget => "async+budget",
        }
    }
}

/// One run's figures, measured over its window only.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    round: usize,
    mode: Mode,
    channels: usize,
    hostile: usize,
    window_s: f64,
    /// `course` filter calls answered within the window.
    calls: u64,
    calls_per_s: f64,
    cpu_s: f64,
    calls_per_cpu_s: f64,
    /// Time of one `course` call as its channel sees it (hop, queueing, instance, call).
    call: Percentiles,
    /// Lateness of the 1 ms probe sleep.
    probe: Percentiles,
    probe_ticks: usize,
    /// Hostile calls that ended within the window (each by the deadline, if all is well).
    hostile_calls: u64,
    hostile_timeouts: u64,
    hostile_call: Percentiles,
    /// `course` calls stopped by the deadline (wall-clock, as in the broker: a call whose
    /// thread waits for a CPU too long is stopped too) and other faults; both skip the
    /// message for everybody in the broker.
    course_timeouts: u64,
    course_faults: u64,
    instances_created: u64,
    /// Epoch callbacks that yielded to the scheduler (async mode).
    yields: u64,
    /// Threads of this process at the end of the window (blocking pool included).
    threads: u64,
    load_average: Option<f64>,
}

/// What a store carries for the host imports and the deadline callback.
struct HostState {
    limits: StoreLimits,
    /// When the current call started (async mode's deadline).
    call_started: Instant,
    call_timeout: Duration,
    yields: Arc<AtomicU64>,
}

impl HostState {
    fn new(call_timeout: Duration, yields: Arc<AtomicU64>) -> Self {
        Self {
            limits: StoreLimitsBuilder::new()
                .memory_size(MEMORY_LIMIT_BYTES)
                .trap_on_grow_failure(true)
                .build(),
            call_started: Instant::now(),
            call_timeout,
            yields,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl sync_api::stellwerk::plugin::host::Host for HostState {
    fn log(&mut self, _level: sync_api::stellwerk::plugin::host::Level, _message: String) {}
    fn now_ms(&mut self) -> u64 {
        now_ms()
    }
    fn config_json(&mut self) -> String {
        "{}".to_owned()
    }
}
impl sync_api::stellwerk::plugin::types::Host for HostState {}

impl async_api::stellwerk::plugin::host::Host for HostState {
    fn log(&mut self, _level: async_api::stellwerk::plugin::host::Level, _message: String) {}
    fn now_ms(&mut self) -> u64 {
        now_ms()
    }
    fn config_json(&mut self) -> String {
        "{}".to_owned()
    }
}
impl async_api::stellwerk::plugin::types::Host for HostState {}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The broker's engine (`Runtime::new`), with `slots` instance slots and as many fiber
/// stacks (the async mode needs one per call in flight; unused by the blocking mode).
fn engine(slots: u32) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
        .total_memories(slots)
        .total_tables(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
        .max_memory_size(MAX_MEMORY_BYTES)
        .total_stacks(slots);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_reservation(MAX_MEMORY_BYTES as u64)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| wasm_error(&e))
}

/// wasmtime's error (its `anyhow` feature is off) as this binary's.
fn wasm_error(e: &wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// The broker's epoch ticker: a thread that ends when the engine is dropped.
fn start_epoch_ticker(engine: &Engine, tick: Duration) -> Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })?;
    Ok(())
}

/// Ticks for `timeout`, as the broker computes them.
fn deadline_ticks(timeout: Duration, tick: Duration) -> u64 {
    let ticks = timeout.as_nanos().div_ceil(tick.as_nanos());
    u64::try_from(ticks).unwrap_or(u64::MAX - 1).max(1) + 1
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Answered with one delivery per audience; how many were `skip`.
    Answered {
        skipped: usize,
    },
    Timeout,
    Fault,
}

fn verdict_of_error(e: &wasmtime::Error) -> Verdict {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Verdict::Timeout,
        _ => Verdict::Fault,
    }
}

#[derive(Default)]
struct Counters {
    instances_created: AtomicU64,
    yields: Arc<AtomicU64>,
}

/// One plugin behind the synchronous bindings, pooled like the broker's `Plugin`.
struct SyncPlugin {
    engine: Engine,
    pre: sync_api::ChannelPluginPre<HostState>,
    idle: Mutex<Vec<(Store<HostState>, sync_api::ChannelPlugin)>>,
    max_idle: usize,
    deadline_ticks: u64,
    call_timeout: Duration,
    counters: Arc<Counters>,
}

impl SyncPlugin {
    fn instantiate(&self) -> wasmtime::Result<(Store<HostState>, sync_api::ChannelPlugin)> {
        let state = HostState::new(self.call_timeout, self.counters.yields.clone());
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        let exports = self.pre.instantiate(&mut store)?;
        self.counters.instances_created.fetch_add(1, Relaxed);
        Ok((store, exports))
    }

    fn filter(&self, channel: &str, data_json: &str, audiences: &[&str]) -> Verdict {
        let taken = lock(&self.idle).pop();
        let (mut store, exports) = match taken.map_or_else(|| self.instantiate(), Ok) {
            Ok(instance) => instance,
            Err(_) => return Verdict::Fault,
        };
        store.set_epoch_deadline(self.deadline_ticks);
        let request = sync_api::stellwerk::plugin::types::FilterRequest {
            channel,
            data_json,
            audiences,
        };
        let answer = match exports.call_filter(&mut store, request) {
            Ok(answer) => answer,
            Err(e) => return verdict_of_error(&e),
        };
        if answer.len() != audiences.len() {
            return Verdict::Fault;
        }
        let skipped = answer
            .iter()
            .filter(|d| matches!(d, sync_api::stellwerk::plugin::types::Delivery::Skip))
            .count();
        self.put_back((store, exports));
        Verdict::Answered { skipped }
    }

    fn put_back(&self, instance: (Store<HostState>, sync_api::ChannelPlugin)) {
        let surplus = {
            let mut idle = lock(&self.idle);
            if idle.len() < self.max_idle {
                idle.push(instance);
                None
            } else {
                Some(instance)
            }
        };
        drop(surplus);
    }
}

/// One plugin behind the async bindings: the same pool policy, async instantiation and
/// calls, and a deadline callback that yields once per epoch tick until the deadline.
struct AsyncPlugin {
    engine: Engine,
    pre: async_api::ChannelPluginPre<HostState>,
    idle: Mutex<Vec<(Store<HostState>, async_api::ChannelPlugin)>>,
    max_idle: usize,
    call_timeout: Duration,
    counters: Arc<Counters>,
}

impl AsyncPlugin {
    async fn instantiate(&self) -> wasmtime::Result<(Store<HostState>, async_api::ChannelPlugin)> {
        let state = HostState::new(self.call_timeout, self.counters.yields.clone());
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            if state.call_started.elapsed() >= state.call_timeout {
                return Err(Trap::Interrupt.into());
            }
            state.yields.fetch_add(1, Relaxed);
            Ok(UpdateDeadline::Yield(1))
        });
        store.data_mut().call_started = Instant::now();
        store.set_epoch_deadline(1);
        let exports = self.pre.instantiate_async(&mut store).await?;
        self.counters.instances_created.fetch_add(1, Relaxed);
        Ok((store, exports))
    }

    async fn filter(&self, channel: &str, data_json: &str, audiences: &[&str]) -> Verdict {
        let taken = lock(&self.idle).pop();
        let (mut store, exports) = match taken {
            Some(instance) => instance,
            None => match self.instantiate().await {
                Ok(instance) => instance,
                Err(_) => return Verdict::Fault,
            },
        };
        store.data_mut().call_started = Instant::now();
        store.set_epoch_deadline(1);
        let request = async_api::stellwerk::plugin::types::FilterRequest {
            channel,
            data_json,
            audiences,
        };
        let answer = match exports.call_filter(&mut store, request).await {
            Ok(answer) => answer,
            Err(e) => return verdict_of_error(&e),
        };
        if answer.len() != audiences.len() {
            return Verdict::Fault;
        }
        let skipped = answer
            .iter()
            .filter(|d| matches!(d, async_api::stellwerk::plugin::types::Delivery::Skip))
            .count();
        self.put_back((store, exports));
        Verdict::Answered { skipped }
    }

    fn put_back(&self, instance: (Store<HostState>, async_api::ChannelPlugin)) {
        let surplus = {
            let mut idle = lock(&self.idle);
            if idle.len() < self.max_idle {
                idle.push(instance);
                None
            } else {
                Some(instance)
            }
        };
        drop(surplus);
    }
}

/// A plugin compiled once, with both kinds of pre-instantiation.
struct Loaded {
    sync_pre: sync_api::ChannelPluginPre<HostState>,
    async_pre: async_api::ChannelPluginPre<HostState>,
}

fn load(
    engine: &Engine,
    sync_linker: &Linker<HostState>,
    async_linker: &Linker<HostState>,
    file: &Path,
) -> Result<Loaded> {
    let bytes = std::fs::read(file).with_context(|| {
        format!(
            "reading {} (build it with `cargo xtask build-plugins`)",
            file.display()
        )
    })?;
    let component = Component::new(engine, &bytes)
        .map_err(|e| anyhow::anyhow!("compiling {}: {e:#}", file.display()))?;
    let sync_pre = sync_linker
        .instantiate_pre(&component)
        .and_then(sync_api::ChannelPluginPre::new)
        .map_err(|e| anyhow::anyhow!("instantiating {}: {e:#}", file.display()))?;
    let async_pre = async_linker
        .instantiate_pre(&component)
        .and_then(async_api::ChannelPluginPre::new)
        .map_err(|e| anyhow::anyhow!("instantiating {}: {e:#}", file.display()))?;
    Ok(Loaded {
        sync_pre,
        async_pre,
    })
}

/// A plugin as one mode calls it.
#[derive(Clone)]
enum Exec {
    Blocking(Arc<SyncPlugin>),
    Async {
        plugin: Arc<AsyncPlugin>,
        budget: bool,
    },
}

/// What a channel asks its plugin, over and over (the data alternates between `data`s).
struct Request {
    channel: String,
    data: Vec<String>,
    audiences: Vec<String>,
}

impl Exec {
    fn new(mode: Mode, engine: &Engine, loaded: &Loaded, p: &Params) -> (Self, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let exec = match mode {
            Mode::Blocking => Exec::Blocking(Arc::new(SyncPlugin {
                engine: engine.clone(),
                pre: loaded.sync_pre.clone(),
                idle: Mutex::new(Vec::new()),
                max_idle: p.pool_size,
                deadline_ticks: deadline_ticks(p.call_timeout, p.epoch_tick),
                call_timeout: p.call_timeout,
                counters: counters.clone(),
            })),
            Mode::Async | Mode::AsyncBudget => Exec::Async {
                plugin: Arc::new(AsyncPlugin {
                    engine: engine.clone(),
                    pre: loaded.async_pre.clone(),
                    idle: Mutex::new(Vec::new()),
                    max_idle: p.pool_size,
                    call_timeout: p.call_timeout,
                    counters: counters.clone(),
                }),
                budget: mode == Mode::AsyncBudget,
            },
        };
        (exec, counters)
    }

    /// One `filter` call the way this mode makes it, from a tokio task.
    async fn call(&self, request: &Arc<Request>, n: usize) -> Verdict {
        match self {
            Exec::Blocking(plugin) => {
                let (plugin, request) = (plugin.clone(), request.clone());
                tokio::task::spawn_blocking(move || {
                    let audiences: Vec<&str> =
                        request.audiences.iter().map(String::as_str).collect();
                    let data = &request.data[n % request.data.len()];
                    plugin.filter(&request.channel, data, &audiences)
                })
                .await
                .unwrap_or(Verdict::Fault)
            }
            Exec::Async { plugin, budget } => {
                if *budget {
                    tokio::task::coop::consume_budget().await;
                }
                let audiences: Vec<&str> = request.audiences.iter().map(String::as_str).collect();
                let data = &request.data[n % request.data.len()];
                plugin.filter(&request.channel, data, &audiences).await
            }
        }
    }
}

/// The measuring window's switches, shared by every task of a run.
#[derive(Default)]
struct Window {
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// What one channel task saw within the window.
#[derive(Default)]
struct ChannelTally {
    calls: u64,
    timeouts: u64,
    faults: u64,
    samples_us: Vec<u32>,
}

async fn channel_task(exec: Exec, request: Arc<Request>, window: Arc<Window>) -> ChannelTally {
    let mut tally = ChannelTally::default();
    for n in 0..MAX_CALLS_PER_CHANNEL {
        if window.stop.load(Relaxed) {
            break;
        }
        let started = Instant::now();
        let verdict = exec.call(&request, n as usize).await;
        if window.measuring.load(Relaxed) {
            tally.calls += 1;
            tally
                .samples_us
                .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
            match verdict {
                Verdict::Answered { .. } => {}
                Verdict::Timeout => tally.timeouts += 1,
                Verdict::Fault => tally.faults += 1,
            }
        }
    }
    tally
}

/// Sleeps 1 ms over and over; records how much later than that it woke.
async fn probe_task(window: Arc<Window>) -> Vec<u32> {
    let period = Duration::from_millis(1);
    let mut late_us = Vec::new();
    for _ in 0..MAX_PROBE_TICKS {
        if window.stop.load(Relaxed) {
            break;
        }
        let started = Instant::now();
        tokio::time::sleep(period).await;
        if window.measuring.load(Relaxed) {
            let late = started.elapsed().saturating_sub(period);
            late_us.push(u32::try_from(late.as_micros()).unwrap_or(u32::MAX));
        }
    }
    late_us
}

fn threads() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Everything a run needs from the set-up.
struct Setup {
    engine: Engine,
    course: Loaded,
    hostile: Loaded,
    course_request: Arc<Request>,
    hostile_request: Arc<Request>,
}

/// One run: `channels` course channels and `hostile` spinning ones in `mode`, on a fresh
/// runtime of `p.workers` workers.
fn run_one(
    setup: &Setup,
    p: &Params,
    mode: Mode,
    channels: usize,
    hostile: usize,
    round: usize,
) -> Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(p.workers)
        .enable_all()
        .build()?;
    let (course, course_counters) = Exec::new(mode, &setup.engine, &setup.course, p);
    let (spinner, spinner_counters) = Exec::new(mode, &setup.engine, &setup.hostile, p);
    let window = Arc::new(Window::default());
    let outcome = runtime.block_on(async {
        let probe = tokio::spawn(probe_task(window.clone()));
        let normal: Vec<_> = (0..channels)
            .map(|_| {
                tokio::spawn(channel_task(
                    course.clone(),
                    setup.course_request.clone(),
                    window.clone(),
                ))
            })
            .collect();
        let hostile_tasks: Vec<_> = (0..hostile)
            .map(|_| {
                tokio::spawn(channel_task(
                    spinner.clone(),
                    setup.hostile_request.clone(),
                    window.clone(),
                ))
            })
            .collect();

        tokio::time::sleep(p.warmup).await;
        let instances_before = course_counters.instances_created.load(Relaxed)
            + spinner_counters.instances_created.load(Relaxed);
        let yields_before =
            course_counters.yields.load(Relaxed) + spinner_counters.yields.load(Relaxed);
        let cpu_before = procfs::own_cpu_seconds()?;
        let started = Instant::now();
        window.measuring.store(true, Relaxed);
        tokio::time::sleep(p.measure).await;
        window.measuring.store(false, Relaxed);
        let window_s = started.elapsed().as_secs_f64();
        let cpu_s = procfs::own_cpu_seconds()? - cpu_before;
        let threads = threads();
        let instances = course_counters.instances_created.load(Relaxed)
            + spinner_counters.instances_created.load(Relaxed)
            - instances_before;
        let yields = course_counters.yields.load(Relaxed) + spinner_counters.yields.load(Relaxed)
            - yields_before;
        window.stop.store(true, Relaxed);

        // Every task ends within one call (a hostile one: its deadline); bounded anyway.
        let join_bound = p.call_timeout * 4 + Duration::from_secs(10);
        let collect = async {
            let mut course_tally = ChannelTally::default();
            for task in normal {
                let t = task.await.unwrap_or_default();
                course_tally.calls += t.calls;
                course_tally.faults += t.faults;
                course_tally.timeouts += t.timeouts;
                course_tally.samples_us.extend(t.samples_us);
            }
            let mut hostile_tally = ChannelTally::default();
            for task in hostile_tasks {
                let t = task.await.unwrap_or_default();
                hostile_tally.calls += t.calls;
                hostile_tally.timeouts += t.timeouts;
                hostile_tally.samples_us.extend(t.samples_us);
            }
            let probe = probe.await.unwrap_or_default();
            (course_tally, hostile_tally, probe)
        };
        let (mut course_tally, mut hostile_tally, mut probe) =
            tokio::time::timeout(join_bound, collect)
                .await
                .context("the run's tasks did not end within their bound")?;
        anyhow::Ok(Outcome {
            round,
            mode,
            channels,
            hostile,
            window_s,
            calls: course_tally.calls,
            calls_per_s: course_tally.calls as f64 / window_s,
            cpu_s,
            calls_per_cpu_s: ratio(course_tally.calls as f64, cpu_s),
            call: Percentiles::of(&mut course_tally.samples_us),
            probe_ticks: probe.len(),
            probe: Percentiles::of(&mut probe),
            hostile_calls: hostile_tally.calls,
            hostile_timeouts: hostile_tally.timeouts,
            hostile_call: Percentiles::of(&mut hostile_tally.samples_us),
            course_timeouts: course_tally.timeouts,
            course_faults: course_tally.faults,
            instances_created: instances,
            yields,
            threads,
            load_average: procfs::load_average(),
        })
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

/// Sanity: both plugins answer as the scenario assumes, in both modes, before measuring.
fn check_plugins(setup: &Setup, p: &Params) -> Result<()> {
    let (course, _) = Exec::new(Mode::Blocking, &setup.engine, &setup.course, p);
    let (course_async, _) = Exec::new(Mode::Async, &setup.engine, &setup.course, p);
    let (spinner, _) = Exec::new(Mode::Async, &setup.engine, &setup.hostile, p);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(p.workers)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for exec in [&course, &course_async] {
            let plain = exec.call(&setup.course_request, 0).await;
            let staff = exec.call(&setup.course_request, 1).await;
            if plain != (Verdict::Answered { skipped: 0 }) || staff != (Verdict::Answered { skipped: 1 }) {
                bail!("the course plugin answered {plain:?} / {staff:?}, expected 0 and 1 audiences skipped");
            }
        }
        let started = Instant::now();
        let spun = spinner.call(&setup.hostile_request, 0).await;
        if spun != Verdict::Timeout {
            bail!("the hostile plugin answered {spun:?}, expected to be stopped by its deadline");
        }
        eprintln!(
            "checked: course filters as expected in both modes; the hostile call was stopped after {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

pub(crate) fn run(p: &Params) -> Result<serde_json::Value> {
    if p.workers == 0 || p.channels.is_empty() && p.hostile.is_empty() {
        bail!("nothing to run");
    }
    let most = p
        .channels
        .iter()
        .copied()
        .chain(p.hostile.iter().map(|h| h + p.hostile_with))
        .max()
        .unwrap_or(1);
    // Every call in flight may hold an instance, and surplus ones are dropped only after
    // their call: room for all, twice over, plus the idle pools.
    let slots = u32::try_from(2 * most + 4 * p.pool_size + 16).unwrap_or(u32::MAX);
    let engine = engine(slots)?;
    start_epoch_ticker(&engine, p.epoch_tick)?;
    let mut sync_linker = Linker::new(&engine);
    sync_api::ChannelPlugin::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut sync_linker,
        |s| s,
    )
    .map_err(|e| wasm_error(&e))?;
    let mut async_linker = Linker::new(&engine);
    async_api::ChannelPlugin::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut async_linker,
        |s| s,
    )
    .map_err(|e| wasm_error(&e))?;
    let message = payload::message(1, 0, p.size);
    let staff_only = format!("{{\"visibility\":\"staff\",{}", &message[1..]);
    let setup = Setup {
        course: load(&engine, &sync_linker, &async_linker, &p.course_wasm)?,
        hostile: load(&engine, &sync_linker, &async_linker, &p.hostile_wasm)?,
        engine,
        course_request: Arc::new(Request {
            channel: format!("course:{COURSE_ID}:bench"),
            data: vec![message, staff_only],
            audiences: vec!["members".into(), "staff".into()],
        }),
        hostile_request: Arc::new(Request {
            channel: "slow:bench".into(),
            // Far beyond any deadline: every call runs until it is stopped.
            data: vec![r#"{"spin_ms":3600000}"#.into()],
            audiences: vec!["everyone".into()],
        }),
    };
    check_plugins(&setup, p)?;

    // Idle first (the probe alone), then the load, then the hostile runs.
    let configs: Vec<(usize, usize)> = std::iter::once((0, 0))
        .chain(p.channels.iter().map(|&k| (k, 0)))
        .chain(p.hostile.iter().map(|&h| (p.hostile_with, h)))
        .collect();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for round in 1..=p.rounds.max(1) {
        for &(channels, hostile) in &configs {
            for mode in [Mode::Blocking, Mode::Async, Mode::AsyncBudget] {
                let what = format!(
                    "filter-exec round {round} {} K={channels} H={hostile}",
                    mode.name()
                );
                eprintln!("running {what} …");
                match run_one(&setup, p, mode, channels, hostile, round) {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        eprintln!("{what} failed: {e:#}");
                        failures.push(json!({"run": what, "error": format!("{e:#}")}));
                    }
                }
            }
        }
    }
    print(&outcomes);
    let ratios = ratios(&outcomes);
    print_ratios(&ratios);
    Ok(json!({
        "scenario": "filter-exec",
        "params": {
            "channels": p.channels, "hostile": p.hostile, "hostile_with": p.hostile_with,
            "warmup_s": p.warmup.as_secs_f64(), "seconds": p.measure.as_secs_f64(),
            "rounds": p.rounds, "workers": p.workers,
            "call_timeout_ms": p.call_timeout.as_millis() as u64,
            "epoch_tick_ms": p.epoch_tick.as_millis() as u64,
            "pool_size": p.pool_size, "size": p.size, "instance_slots": slots,
        },
        "results": outcomes,
        "failures": failures,
        "ratios": ratios,
    }))
}

fn print(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<2} {:<12} {:>4} {:>2} {:>9} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5} {:>8} {:>6} {:>6} {:>4}",
        "r", "mode", "K", "H", "calls", "calls/s", "CPU s", "calls/CPUs", "call p50", "call p99",
        "probe50", "probe99", "probemax", "traps", "spin p50", "inst", "yields", "thr"
    );
    for o in outcomes {
        println!(
            "{:<2} {:<12} {:>4} {:>2} {:>9} {:>9.0} {:>6.2} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>5} {:>8.1} {:>6} {:>6} {:>4}",
            o.round,
            o.mode.name(),
            o.channels,
            o.hostile,
            o.calls,
            o.calls_per_s,
            o.cpu_s,
            o.calls_per_cpu_s,
            o.call.p50_ms,
            o.call.p99_ms,
            o.probe.p50_ms,
            o.probe.p99_ms,
            o.probe.max_ms,
            o.hostile_timeouts,
            o.hostile_call.p50_ms,
            o.instances_created,
            o.yields,
            o.threads,
        );
        if o.course_faults + o.course_timeouts > 0 {
            println!(
                "    note: {} course calls stopped by the deadline, {} other faults",
                o.course_timeouts, o.course_faults
            );
        }
        if o.hostile_calls > o.hostile_timeouts {
            println!(
                "    note: {} hostile calls ended otherwise than by the deadline",
                o.hostile_calls - o.hostile_timeouts
            );
        }
    }
    println!("(times in ms; probe: lateness of a 1 ms sleep on the same runtime; traps: hostile calls stopped by the deadline)");
}

/// async / blocking of the same round and configuration.
fn ratios(outcomes: &[Outcome]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for b in outcomes.iter().filter(|o| o.mode != Mode::Blocking) {
        let Some(a) = outcomes.iter().find(|a| {
            a.mode == Mode::Blocking
                && a.round == b.round
                && a.channels == b.channels
                && a.hostile == b.hostile
        }) else {
            continue;
        };
        out.insert(
            format!(
                "round {} K={} H={} {}",
                b.round,
                b.channels,
                b.hostile,
                b.mode.name()
            ),
            json!({
                "calls_per_s": ratio(b.calls_per_s, a.calls_per_s),
                "calls_per_cpu_s": ratio(b.calls_per_cpu_s, a.calls_per_cpu_s),
                "call_p99": ratio(b.call.p99_ms, a.call.p99_ms),
                "probe_p99": ratio(b.probe.p99_ms, a.probe.p99_ms),
            }),
        );
    }
    serde_json::Value::Object(out)
}

fn print_ratios(ratios: &serde_json::Value) {
    let Some(map) = ratios.as_object().filter(|m| !m.is_empty()) else {
        return;
    };
    println!();
    println!(
        "Ratios async mode / blocking of the same round and configuration (>1: async higher):"
    );
    for (key, value) in map {
        let fields: Vec<String> = value
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, v)| format!("{name} {:.3}", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!("  {key:<32} {}", fields.join(", "));
    }
}
