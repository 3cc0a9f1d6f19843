//! The loaded plugins and which namespace each governs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::host::{Plugin, Runtime};
use super::{
    ChannelOptions, Delivery, PluginError, PluginLimits, PluginStats, PublishSource,
    PublishVerdict, SubscribeVerdict,
};
use crate::auth::Identity;
use crate::channel::ChannelName;

/// Every loaded plugin, by namespace. Built once and shared as `Arc<Registry>`.
pub(crate) struct Registry {
    plugins: Vec<Arc<Plugin>>,
    by_namespace: HashMap<String, Governor>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("plugins", &self.plugins)
            .finish_non_exhaustive()
    }
}

/// What the admin API and `/metrics` show about a loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginSummary {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) namespaces: Vec<String>,
    /// SHA-256 of the `.wasm` file, hex.
    pub(crate) sha256: String,
    pub(crate) file: PathBuf,
    pub(crate) stats: PluginStats,
}

impl Registry {
    /// Loads every `*.wasm` directly in `dir`; other files and directories are
    /// ignored. A missing or empty directory gives an empty registry (every
    /// channel is then `not_found`) and a warning. Any broken plugin fails the
    /// whole load: at start-up the operator should see it at once.
    ///
    /// Compiling takes seconds per plugin; call it from a blocking context.
    pub(crate) fn load_dir(dir: &Path, limits: PluginLimits) -> Result<Registry, PluginError> {
        let files = match wasm_files(dir) {
            Ok(files) => files,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), "plugin directory does not exist; no channel can be used");
                return Ok(Self::empty());
            }
            Err(source) => {
                return Err(PluginError::Io {
                    path: dir.to_owned(),
                    source,
                })
            }
        };
        if files.is_empty() {
            tracing::warn!(dir = %dir.display(), "plugin directory holds no *.wasm; no channel can be used");
            return Ok(Self::empty());
        }
        if limits.memory_limit_bytes > super::MAX_MEMORY_LIMIT_BYTES {
            tracing::warn!(
                "plugin memory limit {} bytes exceeds the engine's {} bytes; using the latter",
                limits.memory_limit_bytes,
                super::MAX_MEMORY_LIMIT_BYTES
            );
        }
        let runtime = Runtime::shared(limits.instance_slots)?;
        let mut plugins = Vec::with_capacity(files.len());
        for file in &files {
            let plugin = Plugin::load(runtime, file, &limits)?;
            tracing::info!(
                plugin = plugin.name(),
                version = plugin.version(),
                file = %file.display(),
                namespaces = ?plugin.namespaces().iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "plugin loaded"
            );
            plugins.push(Arc::new(plugin));
        }
        Self::from_plugins(plugins)
    }

    fn empty() -> Self {
        Self {
            plugins: Vec::new(),
            by_namespace: HashMap::new(),
        }
    }

    /// Maps the namespaces of `plugins`; a namespace or plugin name claimed
    /// twice is refused, naming both plugins.
    pub(crate) fn from_plugins(plugins: Vec<Arc<Plugin>>) -> Result<Self, PluginError> {
        let mut by_namespace: HashMap<String, Governor> = HashMap::new();
        for (i, plugin) in plugins.iter().enumerate() {
            for (index, (namespace, _)) in plugin.namespaces().iter().enumerate() {
                if let Some(first) = by_namespace.get(namespace) {
                    return Err(PluginError::NamespaceConflict {
                        namespace: namespace.clone(),
                        first: first.plugin.origin(),
                        second: plugin.origin(),
                    });
                }
                let governor = Governor {
                    plugin: plugin.clone(),
                    index,
                };
                by_namespace.insert(namespace.clone(), governor);
            }
            if let Some(first) = plugins[..i].iter().find(|p| p.name() == plugin.name()) {
                return Err(PluginError::DuplicateName {
                    first: first.origin(),
                    second: plugin.origin(),
                });
            }
        }
        Ok(Self {
            plugins,
            by_namespace,
        })
    }

    /// The plugin governing `namespace`; `None` means no plugin claims it and
    /// the channel does not exist (`not_found`).
    pub(crate) fn governing(&self, namespace: &str) -> Option<Governor> {
        self.by_namespace.get(namespace).cloned()
    }

    /// The loaded plugins themselves, in load order.
    pub(crate) fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// Every loaded plugin, in load order (file name).
    pub(crate) fn list(&self) -> Vec<PluginSummary> {
        self.plugins
            .iter()
            .map(|p| PluginSummary {
                name: p.name().to_owned(),
                version: p.version().to_owned(),
                namespaces: p.namespaces().iter().map(|(n, _)| n.clone()).collect(),
                sha256: p.sha256().to_owned(),
                file: p.file().to_owned(),
                stats: p.stats(),
            })
            .collect()
    }
}

/// The registry in force. Reloading builds a new [`Registry`] off the hot
/// path and swaps it in whole; a call already running keeps the
/// [`Governor`] (and so the plugin version) it started with.
pub(crate) struct LiveRegistry {
    current: ArcSwap<Registry>,
}

impl fmt::Debug for LiveRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LiveRegistry")
            .field(&*self.current.load())
            .finish()
    }
}

impl LiveRegistry {
    pub(crate) fn new(registry: Registry) -> Self {
        Self {
            current: ArcSwap::from_pointee(registry),
        }
    }

    /// The registry as it is now; later swaps do not change it.
    pub(crate) fn snapshot(&self) -> Arc<Registry> {
        self.current.load_full()
    }

    /// Puts `registry` in force; returns the one it replaced.
    pub(crate) fn replace(&self, registry: Registry) -> Arc<Registry> {
        self.current.swap(Arc::new(registry))
    }

    /// See [`Registry::governing`].
    pub(crate) fn governing(&self, namespace: &str) -> Option<Governor> {
        self.current.load().governing(namespace)
    }

    /// See [`Registry::list`].
    pub(crate) fn list(&self) -> Vec<PluginSummary> {
        self.current.load().list()
    }
}

/// The `*.wasm` files directly in `dir`, sorted so that load order (and thus
/// which plugin an error names first) does not depend on the file system.
pub(crate) fn wasm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // `metadata` follows symlinks: a link to a plugin counts as one.
        if path.extension().is_some_and(|e| e == "wasm")
            && std::fs::metadata(&path).is_ok_and(|m| m.is_file())
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The plugin that governs one namespace, with that namespace's options.
/// Cheap to clone; keeps its plugin loaded while held.
#[derive(Clone)]
pub(crate) struct Governor {
    plugin: Arc<Plugin>,
    index: usize,
}

impl fmt::Debug for Governor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Governor")
            .field("plugin", &self.plugin.name())
            .field("namespace", &self.plugin.namespaces()[self.index].0)
            .finish()
    }
}

impl Governor {
    /// Whether both answer with the same loaded version of the same plugin.
    pub(crate) fn is_same_version(&self, other: &Governor) -> bool {
        Arc::ptr_eq(&self.plugin, &other.plugin)
    }

    pub(crate) fn plugin_name(&self) -> &str {
        self.plugin.name()
    }

    pub(crate) fn options(&self) -> &ChannelOptions {
        &self.plugin.namespaces()[self.index].1
    }

    /// May `identity` (`None`: anonymous) subscribe to `channel`?
    pub(crate) fn authorize_subscribe(
        &self,
        channel: &ChannelName,
        identity: Option<&Identity>,
    ) -> SubscribeVerdict {
        self.plugin.authorize_subscribe(channel.as_str(), identity)
    }

    /// Asked for every publish before it is stored or delivered.
    pub(crate) fn on_publish(
        &self,
        channel: &ChannelName,
        data_json: &str,
        source: PublishSource,
        identity: Option<&Identity>,
    ) -> PublishVerdict {
        self.plugin
            .on_publish(channel.as_str(), data_json, source, identity)
    }

    /// Whether the plugin filters per audience; if not, skip [`Self::filter`]
    /// and deliver the original to everyone.
    pub(crate) fn filters(&self) -> bool {
        self.plugin.filters()
    }

    /// One delivery per entry of `audiences`, in the same order. If the plugin
    /// fails, every audience gets `Skip` (fail closed).
    pub(crate) fn filter(
        &self,
        channel: &ChannelName,
        data_json: &str,
        audiences: &[String],
    ) -> Vec<Delivery> {
        self.plugin.filter(channel.as_str(), data_json, audiences)
    }

    /// One delivery per message for one audience, on one plugin instance
    /// under one call's deadline (history and recovery replies). `None` if the
    /// plugin failed: nothing of the batch may be shown (fail closed).
    pub(crate) fn filter_each(
        &self,
        channel: &ChannelName,
        messages: &[&str],
        audience: &str,
    ) -> Option<Vec<Delivery>> {
        self.plugin
            .filter_each(channel.as_str(), messages, audience)
    }

    /// The governing plugin's counters (`/metrics` reads them via `Registry::list`).
    #[cfg(test)]
    pub(crate) fn stats(&self) -> PluginStats {
        self.plugin.stats()
    }
}
