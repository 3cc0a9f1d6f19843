//! Watches the plugin directory (`notify`: inotify on Linux) and reloads the
//! plugin files that changed.
//!
//! Copying a file in place produces a burst of events (create, several
//! writes, close); so does `cp x.wasm .x.tmp && mv .x.tmp x.wasm`. Events are
//! collected per file until [`SETTLE`] passes without a new one, then each
//! changed file is reloaded once. A file caught half-written does not compile
//! and is refused (the running version stays); the write that completes it
//! brings another event and a retry.
//!
//! Only `<name>.wasm` and its sidecar `<name>.toml` count. Hidden files (the
//! temporary files of editors, `rsync` and our own uploads) and any other
//! extension (`.tmp`, `.swp`, `~`) are ignored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{file_stem, Change, ReloadError, Reloader};

/// Stands for "every file" in the channel of changed stems (no stem is empty).
const RESCAN: &str = "";

/// Quiet time after the last event of a burst before the files are reloaded.
const SETTLE: Duration = Duration::from_millis(150);
/// A file written continuously is still reloaded this long after its first event.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Watches `reloader`'s directory until the returned watcher is dropped.
/// Fails if the directory cannot be watched (for example, it does not exist).
pub(crate) fn watch(reloader: Reloader) -> notify::Result<RecommendedWatcher> {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        match event {
            Ok(event) if event.need_rescan() => {
                // The kernel dropped events (queue overflow): look at every file.
                let _ = tx.send(RESCAN.to_owned());
            }
            Ok(event) => {
                for stem in changed_plugins(&event) {
                    // The receiver only ends with the runtime.
                    let _ = tx.send(stem);
                }
            }
            Err(e) => tracing::warn!("plugin directory watch error: {e}"),
        }
    })?;
    watcher.watch(reloader.dir(), RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %reloader.dir().display(), "watching the plugin directory for changes");
    // A file changed between the start-up load and now sent no event we saw: catch up once
    // (unchanged files cost a read and a hash).
    tokio::spawn(async move {
        reloader.reload_all().await;
        settle_and_reload(rx, reloader).await;
    });
    Ok(watcher)
}

/// Collects changed file stems until a burst settles, then reloads each.
async fn settle_and_reload(mut rx: mpsc::UnboundedReceiver<String>, reloader: Reloader) {
    while let Some(first) = rx.recv().await {
        let mut stems = BTreeSet::from([first]);
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let wait = SETTLE.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(stem)) => {
                    stems.insert(stem);
                }
                Ok(None) => return,
                Err(_) => break,
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if stems.contains(RESCAN) {
            reloader.reload_all().await;
            continue;
        }
        for stem in stems {
            match reloader.reload_file(&stem).await {
                Ok(Change::Unchanged { .. }) => {
                    tracing::debug!(file = stem, "plugin file event, content unchanged");
                }
                Ok(_) => {}
                // A sidecar `.toml` without a plugin, or a file that came and went.
                Err(ReloadError::NotFound(_)) => {}
                // Logged and recorded by the reloader.
                Err(_) => {}
            }
        }
    }
}

/// The plugins (by file stem) an event may have changed.
fn changed_plugins(event: &Event) -> Vec<String> {
    match event.kind {
        // Opening and reading (our own loads among them) change nothing; a
        // close after writing is the surest sign that a write is complete.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return Vec::new(),
        _ => {}
    }
    event
        .paths
        .iter()
        .filter_map(|path| plugin_stem(path))
        .collect()
}

/// `course` for `course.wasm` and `course.toml`; `None` for anything else.
fn plugin_stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    let extension = path.extension()?.to_str()?;
    if extension != "wasm" && extension != "toml" {
        return None;
    }
    file_stem(&PathBuf::from(name)).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plugin_files_and_their_sidecars_count() {
        let stem = |p: &str| plugin_stem(Path::new(p));
        assert_eq!(stem("/p/course.wasm").as_deref(), Some("course"));
        assert_eq!(stem("/p/course.toml").as_deref(), Some("course"));
        assert_eq!(stem("/p/my.plugin.wasm").as_deref(), Some("my.plugin"));
        for ignored in [
            "/p/.course.wasm.upload-1234abcd",
            "/p/.course.wasm",
            "/p/course.wasm.tmp",
            "/p/course.wasm~",
            "/p/.course.toml.swp",
            "/p/4913",
            "/p/README.md",
        ] {
            assert_eq!(stem(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn reads_do_not_trigger_a_reload() {
        let event = |kind| Event::new(kind).add_path(PathBuf::from("/p/course.wasm"));
        assert!(
            changed_plugins(&event(EventKind::Access(AccessKind::Open(AccessMode::Any))))
                .is_empty()
        );
        assert!(changed_plugins(&event(EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))))
        .is_empty());
        assert_eq!(
            changed_plugins(&event(EventKind::Access(AccessKind::Close(
                AccessMode::Write
            )))),
            ["course"]
        );
        assert_eq!(
            changed_plugins(&event(EventKind::Remove(notify::event::RemoveKind::File))),
            ["course"]
        );
    }
}
