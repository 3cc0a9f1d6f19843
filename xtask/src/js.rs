//! JavaScript plugins: a directory with a `package.json` (and no `Cargo.toml`), built by the
//! JavaScript SDK's `stellwerk-plugin build` (`plugin-sdk/js`) into a component.
//!
//! The build tools come from npm, pinned by the SDK's `package-lock.json`; `npm ci` installs
//! them (and each plugin's own dependencies, from its lockfile) before the first build. No
//! network but the npm registry, and only when `node_modules` is missing or older than the
//! lockfile.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

use crate::shell::Cmd;

/// Is `dir` a JavaScript plugin (a `package.json`, no `Cargo.toml`)?
pub(crate) fn is_plugin(dir: &Path) -> bool {
    dir.join("package.json").is_file() && !dir.join("Cargo.toml").exists()
}

/// The JavaScript SDK of this checkout.
pub(crate) fn sdk_dir(root: &Path) -> PathBuf {
    root.join("plugin-sdk").join("js")
}

/// The JavaScript plugins directly under `dir` (`plugins/`, `tests/plugins/`), by name.
pub(crate) fn plugins_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() && is_plugin(&path) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Fails naming the Debian packages when Node.js or npm is missing.
pub(crate) fn check_node() -> Result<()> {
    for program in ["node", "npm"] {
        if Cmd::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .probe()
            .is_none()
        {
            bail!(
                "`{program}` is not installed; JavaScript plugins need Node.js ≥ 20 and npm \
                 (on Debian: apt-get install nodejs npm; .ci/run installs them)"
            );
        }
    }
    Ok(())
}

/// `npm ci` in `dir` unless its `node_modules` is already newer than its lockfile. A
/// directory without a lockfile gets `npm install` (a plugin author's fresh scaffold).
pub(crate) fn install(dir: &Path) -> Result<()> {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let fresh = match (
        modified(&installed),
        modified(&lock),
        modified(&dir.join("package.json")),
    ) {
        (Some(installed), Some(lock), Some(manifest)) => installed >= lock && installed >= manifest,
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    let command = if lock.is_file() { "ci" } else { "install" };
    Cmd::new("npm")
        .args([command, "--no-audit", "--no-fund"])
        .current_dir(dir)
        .run()
}

/// Builds the JavaScript plugin in `dir` into `out_dir/<name>.wasm`; returns its path.
pub(crate) fn build(root: &Path, dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    check_node()?;
    let sdk = sdk_dir(root);
    install(&sdk)?;
    install(dir)?;
    // The plugin's own SDK where it has one: the build must use the very module its
    // hooks import (their decision objects are that module's classes).
    let own = dir.join("node_modules/stellwerk-plugin-sdk/bin/stellwerk-plugin.js");
    let cli = if own.is_file() {
        own
    } else {
        sdk.join("bin/stellwerk-plugin.js")
    };
    let out = Cmd::new("node")
        .arg(cli)
        .arg("build")
        .arg(dir)
        .arg("--out-dir")
        .arg(out_dir)
        .current_dir(dir)
        .output()?;
    let Some(path) = out.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        bail!("stellwerk-plugin build printed no component path");
    };
    Ok(PathBuf::from(path))
}

/// `node --test` in the SDK and in each of `plugins`.
pub(crate) fn test(root: &Path, plugins: &[PathBuf]) -> Result<()> {
    check_node()?;
    let sdk = sdk_dir(root);
    install(&sdk)?;
    let mut failed = Vec::new();
    for dir in std::iter::once(&sdk).chain(plugins) {
        install(dir)?;
        if let Err(e) = Cmd::new("node").arg("--test").current_dir(dir).run() {
            eprintln!("{}: {e:#}", dir.display());
            failed.push(dir.display().to_string());
        }
    }
    if !failed.is_empty() {
        bail!("JavaScript suites failed: {}", failed.join(", "));
    }
    Ok(())
}
