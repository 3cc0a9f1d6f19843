//! Hot reload: which version of each plugin file is live, and why a newer one
//! was refused.
//!
//! Every change (a file event, an admin call) goes through [`Reloader`]: it
//! reads and compiles the new version off the reactor, asks it to `describe`
//! itself, checks its namespaces against the other plugins, and only then
//! swaps a new [`Registry`] in. Calls already running keep the version they
//! started with. A version that fails leaves the running one live and is
//! remembered as `last_error`. After every swap the hub re-checks the
//! subscriptions of the namespaces involved.
//!
//! Changes are serialised by one lock, so that two reloads never build on the
//! same registry and lose each other's swap.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

mod watcher;

pub(crate) use watcher::watch;

use crate::hub::{Hub, Reauthorized};
use crate::plugins::{
    wasm_files, Plugin, PluginError, PluginLimits, PluginSource, PluginStats, Registry,
};

/// What became of one plugin file's latest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PluginState {
    /// The file's current content is live.
    Loaded,
    /// The file was never loaded: no version of it is live.
    Failed,
    /// An older version is live; the file's current content was refused.
    Stale,
}

impl PluginState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PluginState::Loaded => "loaded",
            PluginState::Failed => "failed",
            PluginState::Stale => "stale",
        }
    }
}

/// One plugin file as the admin API shows it.
#[derive(Debug, Clone)]
pub(crate) struct PluginStatus {
    /// The name the live version describes; the file name (without `.wasm`)
    /// while no version is live.
    pub(crate) name: String,
    pub(crate) file: PathBuf,
    pub(crate) state: PluginState,
    /// Why the file's current content is not live (`failed`, `stale`).
    pub(crate) last_error: Option<String>,
    /// The live version; `None` when `failed`.
    pub(crate) live: Option<LiveVersion>,
}

/// The version of a plugin that answers calls.
#[derive(Debug, Clone)]
pub(crate) struct LiveVersion {
    pub(crate) version: String,
    pub(crate) namespaces: Vec<String>,
    pub(crate) sha256: String,
    pub(crate) loaded_at: SystemTime,
    /// Counters of this version (they start at zero with every reload).
    pub(crate) stats: PluginStats,
}

/// What a reload, upload or removal did.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// A new version is live; the subscriptions of its namespaces were re-checked.
    Swapped {
        status: PluginStatus,
        reauthorized: Reauthorized,
    },
    /// The file's content is the one already live: nothing happened.
    Unchanged { status: PluginStatus },
    /// The plugin is gone; its subscribers were unsubscribed.
    Unloaded {
        name: String,
        reauthorized: Reauthorized,
    },
}

/// Why a reload, upload or removal did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    /// No plugin and no plugin file of that name.
    #[error("no plugin named {0:?}")]
    NotFound(String),
    /// The name cannot be a plugin file's name.
    #[error("{0:?} is not a valid plugin name (1 to 64 characters of A-Z a-z 0-9 _ - ., not starting with .)")]
    BadName(String),
    /// The new version was refused; the running one (if any) stays live.
    #[error("{0}")]
    Refused(String),
    /// The plugin directory could not be written.
    #[error("{0}")]
    Io(String),
}

/// A plugin file the reloader knows: what is live of it, and the last refusal.
struct Slot {
    file: PathBuf,
    live: Option<Arc<Plugin>>,
    last_error: Option<String>,
}

impl Slot {
    fn status(&self, stem: &str) -> PluginStatus {
        let state = match (&self.live, &self.last_error) {
            (Some(_), None) => PluginState::Loaded,
            (Some(_), Some(_)) => PluginState::Stale,
            (None, _) => PluginState::Failed,
        };
        PluginStatus {
            name: self
                .live
                .as_ref()
                .map_or_else(|| stem.to_owned(), |p| p.name().to_owned()),
            file: self.file.clone(),
            state,
            last_error: self.last_error.clone(),
            live: self.live.as_ref().map(|p| LiveVersion {
                version: p.version().to_owned(),
                namespaces: p.namespaces().iter().map(|(n, _)| n.clone()).collect(),
                sha256: p.sha256().to_owned(),
                loaded_at: p.loaded_at(),
                stats: p.stats(),
            }),
        }
    }
}

/// Reloads, uploads and removes plugins in the plugin directory. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    limits: PluginLimits,
    hub: Hub,
    /// Plugin files by file stem (`course` for `course.wasm`). Held across
    /// each whole change: see the module doc.
    slots: tokio::sync::Mutex<BTreeMap<String, Slot>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Takes over the plugins the hub's registry holds now (loaded from `dir`
    /// at start-up).
    pub(crate) fn new(dir: PathBuf, limits: PluginLimits, hub: Hub) -> Self {
        let slots = hub
            .registry()
            .snapshot()
            .plugins()
            .iter()
            .map(|plugin| {
                let stem = file_stem(plugin.file()).unwrap_or_else(|| plugin.name().to_owned());
                let slot = Slot {
                    file: plugin.file().to_owned(),
                    live: Some(plugin.clone()),
                    last_error: None,
                };
                (stem, slot)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                dir,
                limits,
                hub,
                slots: tokio::sync::Mutex::new(slots),
            }),
        }
    }

    /// The directory this reloader serves.
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Every plugin file known, by file name.
    pub(crate) async fn list(&self) -> Vec<PluginStatus> {
        let slots = self.inner.slots.lock().await;
        slots.iter().map(|(stem, slot)| slot.status(stem)).collect()
    }

    /// Loads the current content of `<dir>/<stem>.wasm` (and its sidecar
    /// config): swaps it in, leaves it (same content), or unloads the plugin
    /// if the file is gone. A refused version is recorded as `last_error`.
    pub(crate) async fn reload_file(&self, stem: &str) -> Result<Change, ReloadError> {
        let mut slots = self.inner.slots.lock().await;
        self.reload_locked(&mut slots, stem).await
    }

    /// [`Self::reload_file`] for the plugin called `name` (or, if none is
    /// live under that name, the file `<name>.wasm`).
    pub(crate) async fn reload(&self, name: &str) -> Result<Change, ReloadError> {
        let mut slots = self.inner.slots.lock().await;
        let stem = stem_of(&slots, name)
            .or_else(|| {
                is_file_stem(name)
                    .then(|| self.wasm_path(name))
                    .filter(|path| path.is_file())
                    .map(|_| name.to_owned())
            })
            .ok_or_else(|| ReloadError::NotFound(name.to_owned()))?;
        self.reload_locked(&mut slots, &stem).await
    }

    /// Reloads every plugin file in the directory and every plugin whose file
    /// is gone; one result per file stem.
    pub(crate) async fn reload_all(&self) -> Vec<(String, Result<Change, ReloadError>)> {
        let mut slots = self.inner.slots.lock().await;
        let dir = self.inner.dir.clone();
        let on_disk = tokio::task::spawn_blocking(move || wasm_files(&dir))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut stems: BTreeSet<String> = slots.keys().cloned().collect();
        stems.extend(on_disk.iter().filter_map(|f| file_stem(f)));
        let mut results = Vec::with_capacity(stems.len());
        for stem in stems {
            let result = self.reload_locked(&mut slots, &stem).await;
            results.push((stem, result));
        }
        results
    }

    /// Checks `bytes` as plugin `name` (compiles it, `describe`, namespaces),
    /// then writes it atomically as the plugin's file and swaps it in. A
    /// refused upload changes nothing, on disk or live.
    pub(crate) async fn upload(&self, name: &str, bytes: Vec<u8>) -> Result<Change, ReloadError> {
        if !is_file_stem(name) {
            return Err(ReloadError::BadName(name.to_owned()));
        }
        let mut slots = self.inner.slots.lock().await;
        let stem = stem_of(&slots, name).unwrap_or_else(|| name.to_owned());
        let file = slots
            .get(&stem)
            .map_or_else(|| self.wasm_path(&stem), |s| s.file.clone());

        let limits = self.inner.limits;
        let target = file.clone();
        let bytes = Arc::new(bytes);
        let checked = Arc::clone(&bytes);
        let plugin = blocking(move || {
            let source = PluginSource::from_bytes(&target, checked.to_vec())?;
            let plugin = Plugin::build(source, &limits)?;
            Ok::<_, PluginError>(plugin)
        })
        .await
        .map_err(|e| ReloadError::Refused(format!("upload refused: {e}")))?;
        if plugin.name() != name {
            return Err(ReloadError::Refused(format!(
                "upload refused: the uploaded plugin describes itself as {:?}, not {name:?}",
                plugin.name()
            )));
        }
        let plugin = Arc::new(plugin);
        let registry = next_registry(&slots, &stem, Some(&plugin))
            .map_err(|e| ReloadError::Refused(format!("upload refused: {e}")))?;

        let unchanged = slots
            .get(&stem)
            .and_then(|s| s.live.as_ref())
            .is_some_and(|live| {
                live.sha256() == plugin.sha256() && live.config_json() == plugin.config_json()
            });
        // Written before it goes live, so that what runs is what a restart
        // loads. The watcher then sees the same bytes and does nothing.
        let bytes_file = file.clone();
        blocking(move || write_atomically(&bytes_file, &bytes))
            .await
            .map_err(|e| ReloadError::Io(format!("cannot write {}: {e}", file.display())))?;

        let slot = slots.entry(stem.clone()).or_insert_with(|| Slot {
            file: file.clone(),
            live: None,
            last_error: None,
        });
        slot.last_error = None;
        if unchanged {
            tracing::info!(
                plugin = name,
                "upload is the version already live; nothing to swap"
            );
            return Ok(Change::Unchanged {
                status: slot.status(&stem),
            });
        }
        let old = slot.live.replace(plugin);
        let status = slot.status(&stem);
        let reauthorized = self.swap(registry, old.as_deref(), slots.get(&stem)).await;
        Ok(Change::Swapped {
            status,
            reauthorized,
        })
    }

    /// Deletes the plugin's file (its sidecar config stays) and unloads it.
    pub(crate) async fn remove(&self, name: &str) -> Result<Change, ReloadError> {
        let mut slots = self.inner.slots.lock().await;
        let stem = stem_of(&slots, name).ok_or_else(|| ReloadError::NotFound(name.to_owned()))?;
        let file = slots[&stem].file.clone();
        let target = file.clone();
        match blocking(move || std::fs::remove_file(&target)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ReloadError::Io(format!(
                    "cannot delete {}: {e}",
                    file.display()
                )))
            }
        }
        Ok(self.unload_locked(&mut slots, &stem).await)
    }

    fn wasm_path(&self, stem: &str) -> PathBuf {
        self.inner.dir.join(format!("{stem}.wasm"))
    }

    async fn reload_locked(
        &self,
        slots: &mut BTreeMap<String, Slot>,
        stem: &str,
    ) -> Result<Change, ReloadError> {
        let file = slots
            .get(stem)
            .map_or_else(|| self.wasm_path(stem), |s| s.file.clone());
        let read_from = file.clone();
        let source = match blocking(move || PluginSource::read(&read_from)).await {
            Ok(source) => source,
            Err(PluginError::Io { path, source }) if path == file => {
                if source.kind() == std::io::ErrorKind::NotFound {
                    if slots.contains_key(stem) {
                        return Ok(self.unload_locked(slots, stem).await);
                    }
                    return Err(ReloadError::NotFound(stem.to_owned()));
                }
                let error = PluginError::Io { path, source };
                return Err(self.refuse(slots, stem, &file, &error));
            }
            Err(e) => return Err(self.refuse(slots, stem, &file, &e)),
        };

        if let Some(slot) = slots.get_mut(stem) {
            if let Some(live) = slot.live.as_ref().filter(|p| p.is_built_from(&source)) {
                if slot.last_error.take().is_some() {
                    tracing::info!(plugin = live.name(), file = %file.display(), "plugin file is back to the live version");
                }
                return Ok(Change::Unchanged {
                    status: slot.status(stem),
                });
            }
        }

        let limits = self.inner.limits;
        let plugin = match blocking(move || Plugin::build(source, &limits)).await {
            Ok(plugin) => Arc::new(plugin),
            Err(e) => return Err(self.refuse(slots, stem, &file, &e)),
        };
        let registry = match next_registry(slots, stem, Some(&plugin)) {
            Ok(registry) => registry,
            Err(e) => return Err(self.refuse(slots, stem, &file, &e)),
        };
        let slot = slots.entry(stem.to_owned()).or_insert_with(|| Slot {
            file: file.clone(),
            live: None,
            last_error: None,
        });
        slot.last_error = None;
        let old = slot.live.replace(plugin);
        let status = slot.status(stem);
        let reauthorized = self.swap(registry, old.as_deref(), slots.get(stem)).await;
        Ok(Change::Swapped {
            status,
            reauthorized,
        })
    }

    /// Records why `file`'s new content was refused; the live version stays.
    fn refuse(
        &self,
        slots: &mut BTreeMap<String, Slot>,
        stem: &str,
        file: &Path,
        error: &PluginError,
    ) -> ReloadError {
        let message = crate::plugins::one_line(error);
        let slot = slots.entry(stem.to_owned()).or_insert_with(|| Slot {
            file: file.to_owned(),
            live: None,
            last_error: None,
        });
        match &slot.live {
            Some(live) => tracing::warn!(
                plugin = live.name(),
                version = live.version(),
                "plugin reload refused, the running version stays live: {message}"
            ),
            None => tracing::warn!(file = %file.display(), "plugin not loaded: {message}"),
        }
        slot.last_error = Some(message.clone());
        ReloadError::Refused(message)
    }

    async fn unload_locked(&self, slots: &mut BTreeMap<String, Slot>, stem: &str) -> Change {
        let Some(slot) = slots.get(stem) else {
            return Change::Unloaded {
                name: stem.to_owned(),
                reauthorized: Reauthorized::default(),
            };
        };
        let name = slot
            .live
            .as_ref()
            .map_or_else(|| stem.to_owned(), |p| p.name().to_owned());
        // The others formed a valid registry before, so without this plugin they still do;
        // should that ever fail, nothing is swapped rather than everything unloaded.
        let registry = match next_registry(slots, stem, None) {
            Ok(registry) => registry,
            Err(e) => {
                tracing::error!(plugin = name, "cannot unload: {e}");
                return Change::Unchanged {
                    status: slot.status(stem),
                };
            }
        };
        let old = slots.remove(stem).and_then(|s| s.live);
        let reauthorized = match old {
            Some(old) => {
                let r = self.swap(registry, Some(&old), None).await;
                tracing::info!(
                    plugin = name,
                    revoked = r.revoked,
                    "plugin unloaded: its file is gone"
                );
                r
            }
            None => Reauthorized::default(),
        };
        Change::Unloaded { name, reauthorized }
    }

    /// Puts `registry` in force and re-checks the subscriptions of every
    /// namespace the old or the new version governs.
    async fn swap(
        &self,
        registry: Registry,
        old: Option<&Plugin>,
        new: Option<&Slot>,
    ) -> Reauthorized {
        let new = new.and_then(|s| s.live.as_deref());
        let mut namespaces: BTreeSet<String> = BTreeSet::new();
        for plugin in old.into_iter().chain(new) {
            namespaces.extend(plugin.namespaces().iter().map(|(n, _)| n.clone()));
        }
        self.inner.hub.registry().replace(registry);
        if let Some(new) = new {
            tracing::info!(
                plugin = new.name(),
                version = new.version(),
                sha256 = new.sha256(),
                previous = old.map(Plugin::version),
                namespaces = ?new.namespaces().iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "plugin reloaded"
            );
        }
        let namespaces: Vec<String> = namespaces.into_iter().collect();
        let hub = self.inner.hub.clone();
        let reauthorized = tokio::task::spawn_blocking(move || hub.reauthorize(&namespaces))
            .await
            .unwrap_or_else(|e| {
                tracing::error!("re-authorisation after a plugin swap panicked: {e}");
                Reauthorized::default()
            });
        tracing::info!(
            kept = reauthorized.kept,
            revoked = reauthorized.revoked,
            "subscriptions re-authorised after plugin swap"
        );
        reauthorized
    }
}

/// The registry with `stem`'s version replaced by `plugin` (`None`: removed),
/// every other live plugin as it is, in file-name order.
fn next_registry(
    slots: &BTreeMap<String, Slot>,
    stem: &str,
    plugin: Option<&Arc<Plugin>>,
) -> Result<Registry, PluginError> {
    let mut plugins: Vec<(&str, Arc<Plugin>)> = slots
        .iter()
        .filter(|(s, _)| s.as_str() != stem)
        .filter_map(|(s, slot)| Some((s.as_str(), slot.live.clone()?)))
        .collect();
    if let Some(plugin) = plugin {
        plugins.push((stem, plugin.clone()));
    }
    plugins.sort_by(|a, b| a.0.cmp(b.0));
    Registry::from_plugins(plugins.into_iter().map(|(_, p)| p).collect())
}

/// The stem of the slot whose live plugin is called `name`, else of the
/// slot of file `<name>.wasm`.
fn stem_of(slots: &BTreeMap<String, Slot>, name: &str) -> Option<String> {
    slots
        .iter()
        .find(|(_, slot)| slot.live.as_ref().is_some_and(|p| p.name() == name))
        .map(|(stem, _)| stem.clone())
        .or_else(|| slots.contains_key(name).then(|| name.to_owned()))
}

/// `course` for `…/course.wasm`.
fn file_stem(file: &Path) -> Option<String> {
    file.file_stem()?.to_str().map(str::to_owned)
}

/// Plugin names double as file names: plain characters, no hidden files.
fn is_file_stem(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Writes `bytes` to a hidden temporary file beside `file`, then renames it
/// over `file`: readers (a restart, the watcher) see the old or the new
/// content, never half of it.
fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("plugin");
    let temp = dir.join(format!(".{name}.upload-{:08x}", rand::random::<u32>()));
    let result = (|| {
        let mut out = std::fs::File::create(&temp)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        std::fs::rename(&temp, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Runs blocking work (file I/O, compiling) off the reactor.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
