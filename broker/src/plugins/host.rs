//! The wasmtime side: one engine for the process, and one [`Plugin`] per
//! loaded component with a small pool of ready instances.
//!
//! A hook call takes an idle instance (or instantiates one when all are busy),
//! runs under an epoch deadline, and puts the instance back. Instantiation
//! therefore happens at load and under concurrency, never per message. An
//! instance that faulted is dropped instead of returned: after a trap its
//! state is unknown, and wasmtime refuses to re-enter it anyway.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::error::Context as _;
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, Trap,
};

use super::{
    ChannelOptions, Delivery, PluginError, PluginLimits, PluginOrigin, PublishSource,
    PublishVerdict, SubscribeVerdict,
};
use crate::auth::Identity;
use crate::channel::is_namespace;
use crate::metrics::{Histogram, LatencySnapshot};

mod cpu_budget;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz_checks;

use cpu_budget::{thread_cpu_time, CpuBudget};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        world: "channel-plugin",
        // Requests borrow the hub's strings instead of copying them per call.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::stellwerk::plugin::{host as wit_host, types as wit};
use bindings::{ChannelPlugin, ChannelPluginPre};

/// How often the epoch advances; the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Core instances, memories and tables per component: a Rust component has its
/// main module plus a few small shim modules.
const CORE_INSTANCES_PER_SLOT: u32 = 4;
/// Log lines one call may write before the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 64;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE_BYTES: usize = 2048;

/// The process-wide engine, the linker with the host imports, and a cache of
/// compiled components so that an unchanged file is never compiled twice.
pub(super) struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    compiled: Mutex<HashMap<[u8; 32], Arc<Component>>>,
    /// Wasmtime's on-disk cache of compiled code, when one is configured:
    /// kept here for its hit counter, which tells a compile from a cache load.
    disk_cache: Option<Cache>,
}

/// Where compiled code is kept between processes, chosen before the runtime
/// exists (see [`use_compile_cache`]).
static COMPILE_CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Keeps compiled components in `dir` (wasmtime's cache, keyed by a hash of
/// the component's bytes and the engine's configuration and version), so that
/// a later process loads them instead of compiling again. Takes effect only
/// if called before the first plugin is loaded; `false` when that is too late.
pub(crate) fn use_compile_cache(dir: PathBuf) -> bool {
    COMPILE_CACHE_DIR.set(dir).is_ok()
}

/// Compiled components kept beyond their last user, so that a reload of an
/// unchanged file (or a test loading the same file again) costs no compile.
const COMPILE_CACHE_SPARE: usize = 16;

impl Runtime {
    /// The one runtime of this process, created on first use with room for
    /// `instance_slots` instances (`plugins.instance_slots`: a handful of
    /// plugins × their pools, twice over during a reload).
    pub(super) fn shared(instance_slots: u32) -> Result<&'static Runtime, PluginError> {
        static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| Runtime::new(instance_slots).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|reason| PluginError::Engine {
                reason: reason.clone(),
            })
    }

    fn new(instance_slots: u32) -> wasmtime::Result<Self> {
        let slots = instance_slots.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
            .total_memories(slots)
            .total_tables(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
            .max_memory_size(super::MAX_MEMORY_LIMIT_BYTES);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Address space per slot: the memory cap itself, not the default
            // 4 GiB (costs explicit bounds checks, saves ~1 TiB of reservation).
            .memory_reservation(super::MAX_MEMORY_LIMIT_BYTES as u64)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let disk_cache = match COMPILE_CACHE_DIR.get() {
            Some(dir) => {
                let mut cache = CacheConfig::new();
                cache.with_directory(dir);
                let cache = Cache::new(cache)
                    .with_context(|| format!("compile cache {}", dir.display()))?;
                config.cache(Some(cache.clone()));
                Some(cache)
            }
            None => None,
        };
        let engine = Engine::new(&config)?;
        start_epoch_ticker(&engine)?;

        let mut linker = Linker::new(&engine);
        ChannelPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            disk_cache,
        })
    }

    /// Compiles `bytes`, or returns the component compiled earlier from
    /// identical bytes.
    fn compile(&self, sha256: [u8; 32], bytes: &[u8]) -> wasmtime::Result<Arc<Component>> {
        // Held while compiling, so that concurrent loads of one file compile
        // it once. Loading is rare and off the hot path; hooks never take it.
        let mut cache = lock(&self.compiled);
        if let Some(c) = cache.get(&sha256) {
            return Ok(c.clone());
        }
        let hits_before = self.disk_cache.as_ref().map(Cache::cache_hits);
        let started = Instant::now();
        let component = Arc::new(Component::new(&self.engine, bytes)?);
        let from_disk = match (&self.disk_cache, hits_before) {
            (Some(cache), Some(before)) => cache.cache_hits() > before,
            _ => false,
        };
        tracing::info!(
            sha256 = %hex::encode(&sha256[..8]),
            bytes = bytes.len(),
            ms = started.elapsed().as_millis() as u64,
            "{}",
            if from_disk {
                "component loaded from the compile cache"
            } else {
                "component compiled"
            }
        );
        if cache.len() >= COMPILE_CACHE_SPARE {
            // Forget components that no loaded plugin uses any more.
            cache.retain(|_, c| Arc::strong_count(c) > 1);
        }
        cache.insert(sha256, component.clone());
        Ok(component)
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`]. Holds only a weak
/// reference, so the thread ends when the engine is dropped.
fn start_epoch_ticker(engine: &Engine) -> wasmtime::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while one of these locks is held; a poisoned lock still
    // holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a store carries for the host imports.
pub(super) struct HostState {
    plugin: Arc<str>,
    config_json: Arc<str>,
    limits: StoreLimits,
    log_lines: u32,
    /// The time limit of the call in progress, in CPU time.
    budget: CpuBudget,
}

impl wit_host::Host for HostState {
    fn log(&mut self, level: wit_host::Level, mut message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            if self.log_lines == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin logs too much; dropping the rest of this call's lines");
            }
            return;
        }
        if message.len() > MAX_LOG_LINE_BYTES {
            let mut end = MAX_LOG_LINE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let plugin = &*self.plugin;
        match level {
            wit_host::Level::Trace => tracing::trace!(plugin, "{message}"),
            wit_host::Level::Debug => tracing::debug!(plugin, "{message}"),
            wit_host::Level::Info => tracing::info!(plugin, "{message}"),
            wit_host::Level::Warn => tracing::warn!(plugin, "{message}"),
            wit_host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn config_json(&mut self) -> String {
        self.config_json.to_string()
    }
}

impl wit::Host for HostState {}

/// The hooks, for counters and log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    AuthorizeSubscribe,
    OnPublish,
    Filter,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Hook::AuthorizeSubscribe => "authorize-subscribe",
            Hook::OnPublish => "on-publish",
            Hook::Filter => "filter",
        }
    }
}

/// Counters of one hook, as read by [`Plugin::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HookCounts {
    pub(crate) calls: u64,
    /// Denied requests; for `filter`, audiences skipped.
    pub(crate) denials: u64,
    /// Traps, timeouts, oversized or malformed answers.
    pub(crate) faults: u64,
    /// Wall-clock time per call, including taking a pooled instance.
    pub(crate) latency: LatencySnapshot,
}

/// A snapshot of a plugin's counters (for `/metrics` and the admin API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PluginStats {
    pub(crate) authorize_subscribe: HookCounts,
    pub(crate) on_publish: HookCounts,
    pub(crate) filter: HookCounts,
    /// Instances created so far, including the one `describe` ran on. Stays
    /// small in steady state; grows with concurrency peaks and faults.
    pub(crate) instances_created: u64,
    /// Instances that exist now (pooled or running a call): each holds a
    /// memory slot and its resident pages.
    pub(crate) instances_live: u64,
    /// Of those, the ones waiting in the pool.
    pub(crate) instances_idle: u64,
}

#[derive(Default)]
struct HookCounters {
    calls: AtomicU64,
    denials: AtomicU64,
    faults: AtomicU64,
    latency: Histogram,
}

impl HookCounters {
    fn read(&self) -> HookCounts {
        HookCounts {
            calls: self.calls.load(Relaxed),
            denials: self.denials.load(Relaxed),
            faults: self.faults.load(Relaxed),
            latency: self.latency.snapshot(),
        }
    }
}

#[derive(Default)]
struct Counters {
    authorize_subscribe: HookCounters,
    on_publish: HookCounters,
    filter: HookCounters,
    instances_created: AtomicU64,
    instances_live: Arc<AtomicU64>,
}

impl Counters {
    fn hook(&self, hook: Hook) -> &HookCounters {
        match hook {
            Hook::AuthorizeSubscribe => &self.authorize_subscribe,
            Hook::OnPublish => &self.on_publish,
            Hook::Filter => &self.filter,
        }
    }
}

/// A plugin file's bytes and sidecar config, read but not yet compiled.
pub(crate) struct PluginSource {
    /// Where the plugin lives (for an upload: where it will be written).
    file: PathBuf,
    bytes: Vec<u8>,
    digest: [u8; 32],
    config_json: String,
}

impl PluginSource {
    /// Reads `file` and its sidecar `<name>.toml`.
    pub(crate) fn read(file: &Path) -> Result<Self, PluginError> {
        let bytes = std::fs::read(file).map_err(|source| PluginError::Io {
            path: file.to_owned(),
            source,
        })?;
        Self::from_bytes(file, bytes)
    }

    /// `bytes` as if they were the content of `file` (an upload, checked
    /// before it is written); the sidecar config is read from beside `file`.
    pub(crate) fn from_bytes(file: &Path, bytes: Vec<u8>) -> Result<Self, PluginError> {
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let config_json = read_sidecar_config(file)?;
        Ok(Self {
            file: file.to_owned(),
            bytes,
            digest,
            config_json,
        })
    }

    pub(super) fn sha256(&self) -> String {
        hex::encode(self.digest)
    }
}

/// A ready instance: its store and the typed exports.
struct Instance {
    store: Store<HostState>,
    exports: ChannelPlugin,
    _live: LiveInstance,
}

/// Counts an instance among its plugin's live ones for as long as it exists,
/// whichever way it ends (pooled and dropped, faulted, or its plugin unloaded).
struct LiveInstance(Arc<AtomicU64>);

impl LiveInstance {
    fn new(live: &Arc<AtomicU64>) -> Self {
        live.fetch_add(1, Relaxed);
        Self(live.clone())
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One loaded plugin: what it described, and how to run it.
pub(crate) struct Plugin {
    name: Arc<str>,
    version: String,
    file: PathBuf,
    sha256: String,
    loaded_at: SystemTime,
    namespaces: Vec<(String, ChannelOptions)>,
    filters: bool,
    engine: Engine,
    pre: ChannelPluginPre<HostState>,
    /// Keeps the compile cache entry alive while this plugin is loaded.
    _component: Arc<Component>,
    config_json: Arc<str>,
    limits: PluginLimits,
    idle: Mutex<Vec<Instance>>,
    max_idle: usize,
    counters: Counters,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Reads, compiles and instantiates `file`, and checks what its
    /// `describe` says. The instance `describe` ran on becomes the first
    /// pooled one.
    pub(super) fn load(
        runtime: &Runtime,
        file: &Path,
        limits: &PluginLimits,
    ) -> Result<Plugin, PluginError> {
        Self::from_source(runtime, PluginSource::read(file)?, limits)
    }

    /// [`Plugin::from_source`] on the process-wide runtime: how a new
    /// version of a plugin file is built for a hot reload.
    pub(crate) fn build(
        source: PluginSource,
        limits: &PluginLimits,
    ) -> Result<Plugin, PluginError> {
        Self::from_source(Runtime::shared(limits.instance_slots)?, source, limits)
    }

    /// Compiles and instantiates `source` (already read), and checks what
    /// its `describe` says.
    pub(super) fn from_source(
        runtime: &Runtime,
        source: PluginSource,
        limits: &PluginLimits,
    ) -> Result<Plugin, PluginError> {
        let PluginSource {
            file,
            bytes,
            digest,
            config_json,
        } = source;
        let file = file.as_path();
        let component = runtime
            .compile(digest, &bytes)
            .map_err(|e| PluginError::Compile {
                file: file.to_owned(),
                source: e.into_boxed_dyn_error(),
            })?;
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .and_then(ChannelPluginPre::new)
            .map_err(|e| PluginError::Instantiate {
                file: file.to_owned(),
                source: e.into_boxed_dyn_error(),
            })?;

        // Until `describe` has answered, log lines carry the file name.
        let file_label: Arc<str> = file.display().to_string().into();
        let config_json: Arc<str> = config_json.into();
        let counters = Counters::default();
        let mut instance = instantiate(
            &runtime.engine,
            &pre,
            HostState::new(file_label, config_json.clone(), limits),
            &counters.instances_live,
        )
        .map_err(|e| PluginError::Instantiate {
            file: file.to_owned(),
            source: e.into_boxed_dyn_error(),
        })?;

        let deadline = instance.store.data_mut().budget.start_call();
        instance.store.set_epoch_deadline(deadline);
        let description = instance
            .exports
            .call_describe(&mut instance.store)
            .map_err(|e| PluginError::Describe {
                file: file.to_owned(),
                reason: explain_error(&e, limits),
            })?;
        let Described {
            name,
            version,
            namespaces,
        } = check_description(&description, file, limits)?;

        let name: Arc<str> = name.into();
        instance.store.data_mut().plugin = name.clone();
        let plugin = Plugin {
            name,
            version,
            file: file.to_owned(),
            sha256: hex::encode(digest),
            loaded_at: SystemTime::now(),
            namespaces,
            filters: description.filters,
            engine: runtime.engine.clone(),
            pre,
            _component: component,
            config_json,
            limits: *limits,
            idle: Mutex::new(Vec::new()),
            max_idle: limits.pool_size,
            counters,
        };
        plugin.counters.instances_created.store(1, Relaxed);
        lock(&plugin.idle).push(instance);
        Ok(plugin)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    pub(crate) fn sha256(&self) -> &str {
        &self.sha256
    }

    pub(crate) fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The sidecar config this version runs with, as JSON.
    pub(crate) fn config_json(&self) -> &str {
        &self.config_json
    }

    /// Would loading `source` give this very plugin again (same bytes, same
    /// sidecar config)? Then a reload is a no-op.
    pub(crate) fn is_built_from(&self, source: &PluginSource) -> bool {
        self.sha256 == source.sha256() && *self.config_json == *source.config_json
    }

    pub(crate) fn namespaces(&self) -> &[(String, ChannelOptions)] {
        &self.namespaces
    }

    pub(super) fn filters(&self) -> bool {
        self.filters
    }

    pub(super) fn origin(&self) -> PluginOrigin {
        PluginOrigin {
            name: self.name.to_string(),
            file: self.file.clone(),
        }
    }

    pub(crate) fn stats(&self) -> PluginStats {
        PluginStats {
            authorize_subscribe: self.counters.authorize_subscribe.read(),
            on_publish: self.counters.on_publish.read(),
            filter: self.counters.filter.read(),
            instances_created: self.counters.instances_created.load(Relaxed),
            instances_live: self.counters.instances_live.load(Relaxed),
            instances_idle: lock(&self.idle).len() as u64,
        }
    }

    pub(super) fn authorize_subscribe(
        &self,
        channel: &str,
        identity: Option<&Identity>,
    ) -> SubscribeVerdict {
        let request = wit::SubscribeRequest {
            channel,
            identity: identity.map(wit_identity),
        };
        let max = self.limits.max_output_bytes;
        let verdict = self.call(
            Hook::AuthorizeSubscribe,
            |exports, store| exports.call_authorize_subscribe(store, request),
            |decision| subscribe_verdict(decision, max),
        );
        let verdict = verdict.unwrap_or(SubscribeVerdict::Fault);
        if matches!(verdict, SubscribeVerdict::Deny { .. }) {
            self.counters
                .authorize_subscribe
                .denials
                .fetch_add(1, Relaxed);
        }
        verdict
    }

    pub(super) fn on_publish(
        &self,
        channel: &str,
        data_json: &str,
        source: PublishSource,
        identity: Option<&Identity>,
    ) -> PublishVerdict {
        let request = wit::PublishRequest {
            channel,
            data_json,
            source: match source {
                PublishSource::Http => wit::PublishSource::Http,
                PublishSource::Client => wit::PublishSource::Client,
            },
            identity: identity.map(wit_identity),
        };
        let max = self.limits.max_output_bytes;
        let verdict = self.call(
            Hook::OnPublish,
            |exports, store| exports.call_on_publish(store, request),
            |decision| publish_verdict(decision, max),
        );
        let verdict = verdict.unwrap_or(PublishVerdict::Fault);
        if matches!(verdict, PublishVerdict::Deny { .. }) {
            self.counters.on_publish.denials.fetch_add(1, Relaxed);
        }
        verdict
    }

    /// One delivery per audience, in order; all `Skip` if the plugin fails.
    pub(super) fn filter(
        &self,
        channel: &str,
        data_json: &str,
        audiences: &[String],
    ) -> Vec<Delivery> {
        if !self.filters {
            return vec![Delivery::Original; audiences.len()];
        }
        let audience_refs: Vec<&str> = audiences.iter().map(String::as_str).collect();
        let request = wit::FilterRequest {
            channel,
            data_json,
            audiences: &audience_refs,
        };
        let max = self.limits.max_output_bytes;
        let deliveries = self.call(
            Hook::Filter,
            |exports, store| exports.call_filter(store, request),
            |answer| deliveries(answer, audiences.len(), max),
        );
        match deliveries {
            Some(deliveries) => {
                let skipped = deliveries.iter().filter(|d| **d == Delivery::Skip).count();
                self.counters
                    .filter
                    .denials
                    .fetch_add(skipped as u64, Relaxed);
                deliveries
            }
            None => vec![Delivery::Skip; audiences.len()],
        }
    }

    /// `filter` for each of `messages` and the one `audience`, all on one
    /// instance under one deadline: a history or recovery reply costs at most
    /// one call's CPU (`call_timeout`), however many messages it holds.
    /// `None` if the plugin faulted (counted and logged): then nothing of the
    /// batch may be shown.
    pub(super) fn filter_each(
        &self,
        channel: &str,
        messages: &[&str],
        audience: &str,
    ) -> Option<Vec<Delivery>> {
        if !self.filters {
            return Some(vec![Delivery::Original; messages.len()]);
        }
        let audiences = [audience];
        let max = self.limits.max_output_bytes;
        let deliveries = self.call(
            Hook::Filter,
            |exports, store| {
                messages
                    .iter()
                    .map(|data_json| {
                        let request = wit::FilterRequest {
                            channel,
                            data_json,
                            audiences: &audiences,
                        };
                        exports.call_filter(&mut *store, request)
                    })
                    .collect::<wasmtime::Result<Vec<_>>>()
            },
            |answers| {
                answers
                    .into_iter()
                    .map(|deliveries| {
                        let [delivery] =
                            <[wit::Delivery; 1]>::try_from(deliveries).map_err(|d| {
                                format!("answered {} deliveries for 1 audience", d.len())
                            })?;
                        match delivery {
                            wit::Delivery::Skip => Ok(Delivery::Skip),
                            wit::Delivery::Original => Ok(Delivery::Original),
                            wit::Delivery::Replace(text) => {
                                check_size(text.len(), max)?;
                                check_json(&text, "replacement data")?;
                                Ok(Delivery::Replace(text))
                            }
                        }
                    })
                    .collect::<Result<Vec<_>, String>>()
            },
        )?;
        let skipped = deliveries.iter().filter(|d| **d == Delivery::Skip).count();
        self.counters
            .filter
            .denials
            .fetch_add(skipped as u64, Relaxed);
        Some(deliveries)
    }

    /// Runs one hook on a pooled instance. `None` means the plugin faulted;
    /// that is already counted and logged, and the instance is gone.
    fn call<T, V>(
        &self,
        hook: Hook,
        invoke: impl FnOnce(&ChannelPlugin, &mut Store<HostState>) -> wasmtime::Result<T>,
        check: impl FnOnce(T) -> Result<V, String>,
    ) -> Option<V> {
        let counters = self.counters.hook(hook);
        counters.calls.fetch_add(1, Relaxed);
        let started = Instant::now();
        let verdict = self.call_on_instance(hook, invoke, check);
        counters.latency.record(started.elapsed());
        verdict
    }

    fn call_on_instance<T, V>(
        &self,
        hook: Hook,
        invoke: impl FnOnce(&ChannelPlugin, &mut Store<HostState>) -> wasmtime::Result<T>,
        check: impl FnOnce(T) -> Result<V, String>,
    ) -> Option<V> {
        let mut instance = match self.take_instance() {
            Ok(instance) => instance,
            Err(e) => return self.fault(hook, &format!("cannot instantiate: {e:#}")),
        };
        let deadline = instance.store.data_mut().budget.start_call();
        instance.store.set_epoch_deadline(deadline);
        instance.store.data_mut().log_lines = 0;
        let answer = match invoke(&instance.exports, &mut instance.store) {
            Ok(answer) => answer,
            Err(e) => return self.fault(hook, &explain_error(&e, &self.limits)),
        };
        match check(answer) {
            Ok(verdict) => {
                self.put_back(instance);
                Some(verdict)
            }
            Err(reason) => self.fault(hook, &format!("malformed answer: {reason}")),
        }
    }

    fn fault<V>(&self, hook: Hook, reason: &str) -> Option<V> {
        self.counters.hook(hook).faults.fetch_add(1, Relaxed);
        tracing::warn!(plugin = %self.name, hook = hook.as_str(), "plugin fault, request refused: {reason}");
        None
    }

    fn take_instance(&self) -> wasmtime::Result<Instance> {
        if let Some(instance) = lock(&self.idle).pop() {
            return Ok(instance);
        }
        let state = HostState::new(self.name.clone(), self.config_json.clone(), &self.limits);
        let instance = instantiate(
            &self.engine,
            &self.pre,
            state,
            &self.counters.instances_live,
        )?;
        self.counters.instances_created.fetch_add(1, Relaxed);
        Ok(instance)
    }

    fn put_back(&self, instance: Instance) {
        let surplus = {
            let mut idle = lock(&self.idle);
            if idle.len() < self.max_idle {
                idle.push(instance);
                None
            } else {
                Some(instance)
            }
        };
        // A surplus instance is dropped outside the lock: freeing a store
        // resets its memory slot, which is not free.
        drop(surplus);
    }
}

impl HostState {
    fn new(plugin: Arc<str>, config_json: Arc<str>, limits: &PluginLimits) -> Self {
        let memory = limits.memory_limit_bytes.min(super::MAX_MEMORY_LIMIT_BYTES);
        Self {
            plugin,
            config_json,
            limits: StoreLimitsBuilder::new()
                .memory_size(memory)
                .trap_on_grow_failure(true)
                .build(),
            log_lines: 0,
            budget: CpuBudget::new(limits.call_timeout, EPOCH_TICK),
        }
    }
}

fn instantiate(
    engine: &Engine,
    pre: &ChannelPluginPre<HostState>,
    state: HostState,
    live: &Arc<AtomicU64>,
) -> wasmtime::Result<Instance> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|mut store| {
        Ok(store.data_mut().budget.on_deadline(thread_cpu_time()))
    });
    // Start-up code of the component runs under the same limit as a call.
    let deadline = store.data_mut().budget.start_call();
    store.set_epoch_deadline(deadline);
    let exports = pre.instantiate(&mut store)?;
    Ok(Instance {
        store,
        exports,
        _live: LiveInstance::new(live),
    })
}

fn wit_identity(identity: &Identity) -> wit::Identity<'_> {
    wit::Identity {
        user: &identity.user,
        claims_json: &identity.claims_json,
    }
}

/// `authorize-subscribe`'s answer as a verdict; `Err` says why the answer is malformed.
fn subscribe_verdict(
    decision: wit::SubscribeDecision,
    max: usize,
) -> Result<SubscribeVerdict, String> {
    match decision {
        wit::SubscribeDecision::Allow(grant) => {
            let info_len = grant.presence_info_json.as_ref().map_or(0, String::len);
            let audience_len = grant.audience.as_ref().map_or(0, String::len);
            check_size(info_len + audience_len, max)?;
            let presence_info = grant
                .presence_info_json
                .map(|text| {
                    serde_json::from_str(&text)
                        .map_err(|e| format!("presence info is not valid JSON: {e}"))
                })
                .transpose()?;
            Ok(SubscribeVerdict::Allow {
                presence_info,
                audience: grant.audience,
            })
        }
        wit::SubscribeDecision::Deny(reason) => {
            check_size(reason.len(), max)?;
            Ok(SubscribeVerdict::Deny { reason })
        }
    }
}

/// `on-publish`'s answer as a verdict; `Err` says why the answer is malformed.
fn publish_verdict(decision: wit::PublishDecision, max: usize) -> Result<PublishVerdict, String> {
    match decision {
        wit::PublishDecision::Allow => Ok(PublishVerdict::Allow),
        wit::PublishDecision::Replace(text) => {
            check_size(text.len(), max)?;
            check_json(&text, "replacement data")?;
            Ok(PublishVerdict::Replace(text))
        }
        wit::PublishDecision::Deny(reason) => {
            check_size(reason.len(), max)?;
            Ok(PublishVerdict::Deny { reason })
        }
    }
}

/// `filter`'s answer for `audiences` audiences; `Err` says why the answer is malformed.
fn deliveries(
    answer: Vec<wit::Delivery>,
    audiences: usize,
    max: usize,
) -> Result<Vec<Delivery>, String> {
    if answer.len() != audiences {
        return Err(format!(
            "answered {} deliveries for {} audiences",
            answer.len(),
            audiences
        ));
    }
    let size = answer
        .iter()
        .map(|d| match d {
            wit::Delivery::Replace(text) => text.len(),
            _ => 0,
        })
        .sum();
    check_size(size, max)?;
    answer
        .into_iter()
        .map(|d| match d {
            wit::Delivery::Skip => Ok(Delivery::Skip),
            wit::Delivery::Original => Ok(Delivery::Original),
            wit::Delivery::Replace(text) => {
                check_json(&text, "replacement data")?;
                Ok(Delivery::Replace(text))
            }
        })
        .collect()
}

fn check_size(bytes: usize, max: usize) -> Result<(), String> {
    if bytes > max {
        Err(format!(
            "answer of {bytes} bytes exceeds the limit of {max} bytes"
        ))
    } else {
        Ok(())
    }
}

fn check_json(text: &str, what: &str) -> Result<(), String> {
    crate::protocol::check_json_text(text).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

/// A trap or error from a call, in words an operator understands.
fn explain_error(error: &wasmtime::Error, limits: &PluginLimits) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            format!("exceeded its time limit of {:?}", limits.call_timeout)
        }
        // One line: wasm backtraces come as extra lines of context.
        _ => format!("{error:#}")
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The sidecar `<name>.toml` next to `<name>.wasm`, as JSON; `{}` if none.
fn read_sidecar_config(wasm_file: &Path) -> Result<String, PluginError> {
    let file = wasm_file.with_extension("toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("{}".to_owned()),
        Err(source) => return Err(PluginError::Io { path: file, source }),
    };
    let table: toml::Table =
        toml::from_str(&text).map_err(|source| PluginError::Config { file, source })?;
    Ok(serde_json::to_string(&table).unwrap_or_else(|_| "{}".to_owned()))
}

/// `describe`'s answer, checked.
struct Described {
    name: String,
    version: String,
    namespaces: Vec<(String, ChannelOptions)>,
}

/// Checks `describe`'s answer: a usable name, valid and distinct namespaces.
fn check_description(
    d: &wit::Description,
    file: &Path,
    limits: &PluginLimits,
) -> Result<Described, PluginError> {
    let describe_error = |reason: String| PluginError::Describe {
        file: file.to_owned(),
        reason,
    };
    let size =
        d.name.len() + d.version.len() + d.namespaces.iter().map(|n| n.name.len()).sum::<usize>();
    check_size(size, limits.max_output_bytes).map_err(describe_error)?;
    if !is_plugin_name(&d.name) {
        return Err(describe_error(format!(
            "plugin name {:?} must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
            d.name
        )));
    }
    if d.namespaces.is_empty() {
        return Err(describe_error(format!(
            "plugin {:?} declares no namespace",
            d.name
        )));
    }
    let origin = || PluginOrigin {
        name: d.name.clone(),
        file: file.to_owned(),
    };
    let mut namespaces: Vec<(String, ChannelOptions)> = Vec::with_capacity(d.namespaces.len());
    for ns in &d.namespaces {
        if !is_namespace(&ns.name) {
            return Err(PluginError::BadNamespace {
                plugin: origin(),
                namespace: ns.name.clone(),
            });
        }
        if namespaces.iter().any(|(n, _)| *n == ns.name) {
            return Err(PluginError::NamespaceConflict {
                namespace: ns.name.clone(),
                first: origin(),
                second: origin(),
            });
        }
        let o = &ns.options;
        namespaces.push((
            ns.name.clone(),
            ChannelOptions {
                presence: o.presence,
                history_size: o.history_size,
                history_ttl: Duration::from_secs(o.history_ttl_seconds),
                client_publish: o.client_publish,
            },
        ));
    }
    Ok(Described {
        name: d.name.clone(),
        version: d.version.clone(),
        namespaces,
    })
}

/// Plugin names end up in log fields and metric labels: keep them plain.
fn is_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
