//! Builds the `stellwerk` binary once per test process, so the suite always tests the current
//! code rather than whatever happens to lie in `target/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// Where `cargo xtask build-plugins` puts the example plugins.
pub fn default_plugins_dir() -> PathBuf {
    workspace_root().join("target").join("plugins")
}

/// Path of a freshly built `stellwerk`. Panics (fails the test) when the build fails.
pub fn stellwerk_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match build() {
        Ok(path) => path,
        Err(e) => panic!("could not build stellwerk: {e:#}"),
    })
}

fn build() -> anyhow::Result<PathBuf> {
    // `cargo test` releases its build lock before it runs tests, so a nested build is fine.
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        // `--workspace --bins --tests`, not `-p stellwerk`: the same feature unification as
        // the `cargo test --workspace` that runs us (dev-dependencies such as tokio's
        // `test-util` only count when test targets are built), so the dependencies it just
        // compiled are reused instead of being rebuilt with another feature set (wasmtime:
        // many minutes on 2 cores). The test targets are already built: no extra work.
        .args([
            "build",
            "--workspace",
            "--bins",
            "--tests",
            "--message-format=json-render-diagnostics",
        ])
        .output()
        .context("running cargo build")?;
    if !output.status.success() {
        bail!(
            "cargo build --workspace --bins --tests failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Not the `stellwerk` bin's unit-test harness, which `--tests` builds as well.
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "stellwerk"
            && msg["target"]["kind"][0] == "bin"
            && msg["profile"]["test"] == false
        {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo build reported no `stellwerk` executable:\n{stdout}")
}
