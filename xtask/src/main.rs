//! `cargo xtask <command>`: the project's build tool.
//!
//! - `build-plugins`: every crate of the `plugins/` workspace, and every JavaScript plugin
//!   directory beside them (`plugins/<name>/package.json`), → a WebAssembly component at
//!   `target/plugins/<name>.wasm`; the same for `tests/plugins/` (misbehaving plugins for the
//!   sandbox tests) → `target/test-plugins/<name>.wasm`, kept apart so that no real broker
//!   ever loads them.
//! - `build-plugin <dir> [--out-dir DIR]`: one plugin from anywhere, a Rust crate or a
//!   JavaScript plugin (its `package.json`) → `<DIR, default target/plugins>/<name>.wasm`;
//!   prints the component's path.
//! - `test [args…]`: build-plugins, the plugins' native unit tests (`cargo test` for Rust,
//!   `node --test` for the JavaScript SDK and plugins), `cargo test --workspace [args…]`,
//!   then the clients' suites (`clients`: PHP with phpunit). Every suite runs even when an
//!   earlier one failed; the command fails if any did.
//! - `run [args…]`: builds the example plugins, then `stellwerk serve [args…]` with
//!   `STELLWERK_PLUGINS_DIR=target/plugins` (unless already set).
//!
//! All wasm builds share one target directory, `target/plugins-build`, so the wasm32
//! standard library (built from source where no prebuilt one exists) is built once.
//!
//! # Layout
//! - `members`: which plugin crates a workspace has (read from its `Cargo.toml`).
//! - `toolchain`: finds (or installs) a Rust that can build wasm32 and the component linker.
//! - `single_crate`: `build-plugin`, for a crate outside the plugin workspaces.
//! - `js`: JavaScript plugins (npm, `plugin-sdk/js`'s `stellwerk-plugin build`).
//! - `clients`: the client libraries' test suites.
//! - `component`: checks cargo's artifact is a component and installs it.
//! - `shell`: runs commands, printing each one first.

mod clients;
mod component;
mod js;
mod members;
mod shell;
mod single_crate;
mod toolchain;

use anyhow::{bail, ensure, Result};
use shell::Cmd;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
usage: cargo xtask <command> [args…]

commands:
  build-plugins    build every plugin in plugins/ (Rust crates and JavaScript directories) into
                   a component at target/plugins/<name>.wasm, and the sandbox tests' plugins
                   in tests/plugins/ into target/test-plugins/
  build-plugin <dir> [--out-dir DIR]
                   build one plugin (a Rust crate, or a JavaScript plugin with package.json;
                   any directory) into DIR/<name>.wasm (default DIR: target/plugins, which
                   `run` serves); prints its path
  test [args…]     build-plugins, the plugins' unit tests (cargo test, node --test),
                   `cargo test --workspace [args…]`, then the clients' suites (phpunit)
  run [args…]      build the example plugins, then `stellwerk serve [args…]` on target/plugins

environment:
  XTASK_WASM_TOOLCHAIN=prebuilt|build-std   force how the wasm32 standard library is obtained";

fn main() -> ExitCode {
    forget_own_package_env();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            // Keep a failing child's exit code (cargo test's 101) where there is one.
            let code = err
                .downcast_ref::<shell::Failed>()
                .and_then(|failed| failed.code);
            ExitCode::from(
                code.and_then(|c| u8::try_from(c).ok())
                    .filter(|c| *c != 0)
                    .unwrap_or(1),
            )
        }
    }
}

/// `cargo xtask` runs us through `cargo run`, which sets `CARGO_PKG_NAME=xtask` and the like.
/// Build scripts (ring's) declare such variables with `rerun-if-env-changed`, so every cargo
/// we start would see them differ from the last plain `cargo build` and rebuild half the
/// workspace. Our children see them unset, as a shell's cargo does (the e2e harness's nested
/// build strips the same ones: `tests/src/binary.rs`).
fn forget_own_package_env() {
    let ours: Vec<OsString> = std::env::vars_os()
        .map(|(key, _)| key)
        .filter(|key| key.to_str().is_some_and(is_package_env))
        .collect();
    for key in ours {
        std::env::remove_var(key);
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

fn run() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let command = args.next().map(|c| c.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let root = workspace_root();
    match command.as_deref() {
        Some("build-plugins") => {
            ensure!(
                rest.is_empty(),
                "build-plugins takes no arguments\n\n{USAGE}"
            );
            build_all_plugins(&root)
        }
        Some("build-plugin") => {
            let request = single_crate::Request::parse(&rest)
                .map_err(|e| anyhow::anyhow!("{e}\n\n{USAGE}"))?;
            let component = if js::is_plugin(&request.krate) {
                let out_dir = request
                    .out_dir
                    .clone()
                    .unwrap_or_else(|| plugins_out_dir(&root));
                js::build(&root, &request.krate, &out_dir)?
            } else {
                single_crate::build(&root, &request, &plugins_out_dir(&root))?
            };
            println!("{}", component.display());
            Ok(())
        }
        Some("test") => test(&root, &rest),
        Some("run") => run_broker(&root, &rest),
        Some("help" | "-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// The repository root: xtask lives in `<root>/xtask`.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Where the example plugins land (the broker's plugin directory for `run` and the tests).
pub(crate) fn plugins_out_dir(root: &Path) -> PathBuf {
    root.join("target").join("plugins")
}

pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A cargo workspace of plugin crates, and where its components go.
struct PluginWorkspace {
    dir: PathBuf,
    out_dir: PathBuf,
}

impl PluginWorkspace {
    /// `plugins/` → `target/plugins/`: what `run` serves.
    fn examples(root: &Path) -> Self {
        Self {
            dir: root.join("plugins"),
            out_dir: plugins_out_dir(root),
        }
    }

    /// `tests/plugins/` → `target/test-plugins/`: misbehaving plugins, for tests only.
    fn test_plugins(root: &Path) -> Self {
        Self {
            dir: root.join("tests").join("plugins"),
            out_dir: root.join("target").join("test-plugins"),
        }
    }
}

/// `build-plugins`: the example plugins, then the test plugins.
fn build_all_plugins(root: &Path) -> Result<()> {
    build_plugins(root, &PluginWorkspace::examples(root))?;
    build_plugins(root, &PluginWorkspace::test_plugins(root))
}

fn build_plugins(root: &Path, workspace: &PluginWorkspace) -> Result<()> {
    let started = Instant::now();
    let members = members::read(&workspace.dir)?;
    ensure!(
        !members.is_empty(),
        "{} lists no members",
        workspace.dir.join("Cargo.toml").display()
    );

    // Its own target dir: the wasm build never waits for (or invalidates) the host build.
    // Shared by every plugin workspace, whose equal release profiles let them share `std`.
    let build_dir = root.join("target").join("plugins-build");
    let toolchain = toolchain::find_or_install(&workspace.dir, &build_dir.join("wasm-ld"))?;
    let mut cmd = Cmd::new(cargo())
        .args([
            "build",
            "--release",
            "--workspace",
            "--target",
            toolchain::TARGET,
        ])
        .arg("--manifest-path")
        .arg(workspace.dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&build_dir)
        .current_dir(&workspace.dir);
    cmd = toolchain.configure(cmd);
    cmd.run()?;

    let built = build_dir.join(toolchain::TARGET).join("release");
    for member in &members {
        let installed = component::install(
            &built.join(format!("{}.wasm", member.lib_name)),
            &member.name,
            &workspace.out_dir.join(format!("{}.wasm", member.name)),
        )?;
        println!(
            "{:<12} {:>8.1} KiB  {}",
            member.name,
            installed.kib(),
            installed
                .path
                .strip_prefix(root)
                .unwrap_or(&installed.path)
                .display()
        );
    }
    let js_plugins = js::plugins_in(&workspace.dir)?;
    for dir in &js_plugins {
        let installed = js::build(root, dir, &workspace.out_dir)?;
        let kib = std::fs::metadata(&installed).map_or(0.0, |m| m.len() as f64 / 1024.0);
        println!(
            "{:<12} {:>8.1} KiB  {}  (JavaScript)",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            kib,
            installed.strip_prefix(root).unwrap_or(&installed).display()
        );
    }
    println!(
        "built {} plugin component(s) from {} in {:.1} s ({})",
        members.len() + js_plugins.len(),
        workspace
            .dir
            .strip_prefix(root)
            .unwrap_or(&workspace.dir)
            .display(),
        started.elapsed().as_secs_f64(),
        toolchain.describe()
    );
    Ok(())
}

fn test(root: &Path, extra: &[OsString]) -> Result<()> {
    build_all_plugins(root)?;
    // The plugins' rules, natively, in the plugins workspace's own target dir.
    let plugins = Cmd::new(cargo())
        .args(["test", "--workspace"])
        .current_dir(&root.join("plugins"))
        .run();
    // The JavaScript SDK's and plugins' rules, with `node --test`.
    // (The misbehaving test plugins have no rules worth a suite; the sandbox tests run them.)
    let javascript =
        js::plugins_in(&PluginWorkspace::examples(root).dir).and_then(|dirs| js::test(root, &dirs));
    let workspace = Cmd::new(cargo())
        .args(["test", "--workspace"])
        .args(extra)
        .current_dir(root)
        .run();
    let clients = clients::test(root);
    let failed: Vec<String> = [
        ("plugins", plugins),
        ("javascript plugins", javascript),
        ("workspace", workspace),
        ("clients", clients),
    ]
    .into_iter()
    .filter_map(|(name, result)| result.err().map(|e| format!("{name}: {e:#}")))
    .collect();
    ensure!(
        failed.is_empty(),
        "tests failed:\n  {}",
        failed.join("\n  ")
    );
    Ok(())
}

fn run_broker(root: &Path, extra: &[OsString]) -> Result<()> {
    // Only the example plugins: the test plugins are never served.
    build_plugins(root, &PluginWorkspace::examples(root))?;
    let mut cmd = Cmd::new(cargo())
        .args(["run", "--release", "-p", "stellwerk", "--", "serve"])
        .args(extra)
        .current_dir(root);
    if std::env::var_os("STELLWERK_PLUGINS_DIR").is_none() {
        cmd = cmd.env("STELLWERK_PLUGINS_DIR", plugins_out_dir(root));
    }
    // Hands the terminal (and Ctrl-C) straight to the broker, so it shuts down gracefully.
    cmd.exec()
}
