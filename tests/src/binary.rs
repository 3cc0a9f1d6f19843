//! Builds the `stellwerk` binary (and the `stellwerk-bench` load generator beside it) once
//! per test process, so the suite always tests the current code rather than whatever
//! happens to lie in `target/`.

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
    &built().stellwerk
}

/// Path of the `stellwerk-bench` load generator from the same build (for the soak test).
pub fn bench_binary() -> &'static Path {
    &built().bench
}

/// The workspace's binaries, built once per test process.
struct Built {
    stellwerk: PathBuf,
    bench: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| match build() {
        Ok(built) => built,
        Err(e) => panic!("could not build stellwerk: {e:#}"),
    })
}

fn build() -> anyhow::Result<Built> {
    // `cargo test` releases its build lock before it runs tests, so a nested build is fine.
    let mut cargo = Command::new(env!("CARGO"));
    // `cargo test` gave this process its package's variables (`CARGO_PKG_NAME=stellwerk-e2e`,
    // …); build scripts that watch them (ring's) would rebuild for the nested build and again
    // for the next plain one. Stripped as `cargo xtask` strips its own.
    for (key, _) in std::env::vars() {
        if is_package_env(&key) {
            cargo.env_remove(key);
        }
    }
    let output = cargo
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
    let (mut stellwerk, mut bench) = (None, None);
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Not a bin's unit-test harness, which `--tests` builds as well.
        if msg["reason"] != "compiler-artifact"
            || msg["target"]["kind"][0] != "bin"
            || msg["profile"]["test"] != false
        {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        match msg["target"]["name"].as_str() {
            Some("stellwerk") => stellwerk = Some(PathBuf::from(exe)),
            Some("stellwerk-bench") => bench = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    match (stellwerk, bench) {
        (Some(stellwerk), Some(bench)) => Ok(Built { stellwerk, bench }),
        _ => bail!(
            "cargo build reported no `stellwerk` or no `stellwerk-bench` executable:\n{stdout}"
        ),
    }
}

/// The variables cargo sets for one package's build or run.
fn is_package_env(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_MANIFEST_")
        || matches!(
            key,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
        )
}
