//! A plugin directory of a test's own, for tests that need other plugins than the examples
//! in `target/plugins/` or that change files (hot reload, the admin API). Removed when dropped.

use std::path::{Path, PathBuf};

use crate::binary::{default_plugins_dir, workspace_root};
use crate::random_hex;

/// A built component by crate name: an example plugin (`target/plugins/`) or a test plugin
/// (`target/test-plugins/`). Fails the test when it has not been built.
pub fn component(name: &str) -> PathBuf {
    let example = default_plugins_dir().join(format!("{name}.wasm"));
    let path = if example.is_file() {
        example
    } else {
        workspace_root()
            .join("target")
            .join("test-plugins")
            .join(format!("{name}.wasm"))
    };
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build-plugins` first",
        path.display()
    );
    path
}

/// A temporary plugin directory holding copies of some components.
pub struct PluginDir {
    path: PathBuf,
}

impl PluginDir {
    /// A fresh directory with `<name>.wasm` for every name in `components` (see [`component`]).
    pub fn with(components: &[&str]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "stellwerk-plugins-{}-{}",
            std::process::id(),
            random_hex(6)
        ));
        std::fs::create_dir_all(&path).expect("create the plugin directory");
        let dir = Self { path };
        for name in components {
            dir.add(name);
        }
        dir
    }

    /// Copies the component `name` in as `<name>.wasm`.
    pub fn add(&self, name: &str) {
        let wasm = component(name);
        std::fs::copy(&wasm, self.file(&format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", wasm.display()));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
