//! `cargo xtask <command>`: the project's build tool.
//!
//! - `build-plugins`: every crate of the `plugins/` workspace → a WebAssembly component at
//!   `target/plugins/<crate>.wasm`.
//! - `test [args…]`: build-plugins, the plugins' native unit tests, then
//!   `cargo test --workspace [args…]`.
//! - `run [args…]`: build-plugins, then `stellwerk serve [args…]` with
//!   `STELLWERK_PLUGINS_DIR=target/plugins` (unless already set).
//!
//! # Layout
//! - `members`: which plugin crates there are (read from `plugins/Cargo.toml`).
//! - `toolchain`: finds (or installs) a Rust that can build wasm32 and the component linker.
//! - `shell`: runs commands, printing each one first.

mod members;
mod shell;
mod toolchain;

use anyhow::{bail, ensure, Context, Result};
use shell::Cmd;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
usage: cargo xtask <command> [args…]

commands:
  build-plugins    build every crate in plugins/ into a component at target/plugins/<name>.wasm
  test [args…]     build-plugins, the plugins' unit tests, then `cargo test --workspace [args…]`
  run [args…]      build-plugins, then `stellwerk serve [args…]` on target/plugins

environment:
  XTASK_WASM_TOOLCHAIN=prebuilt|build-std   force how the wasm32 standard library is obtained";

/// The first 8 bytes of a WebAssembly component (a core module has version `01 00 00 00`).
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const CORE_MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

fn main() -> ExitCode {
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
            build_plugins(&root)
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

/// Where the components land (the broker's plugin directory for `run` and the tests).
fn plugins_out_dir(root: &Path) -> PathBuf {
    root.join("target").join("plugins")
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn build_plugins(root: &Path) -> Result<()> {
    let started = Instant::now();
    let plugins_dir = root.join("plugins");
    let members = members::read(&plugins_dir)?;
    ensure!(
        !members.is_empty(),
        "{} lists no members",
        plugins_dir.join("Cargo.toml").display()
    );

    // Its own target dir: the wasm build never waits for (or invalidates) the host build.
    let build_dir = root.join("target").join("plugins-build");
    let toolchain = toolchain::find_or_install(&plugins_dir, &build_dir.join("wasm-ld"))?;
    let mut cmd = Cmd::new(cargo())
        .args([
            "build",
            "--release",
            "--workspace",
            "--target",
            toolchain::TARGET,
        ])
        .arg("--manifest-path")
        .arg(plugins_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&build_dir)
        .current_dir(&plugins_dir);
    cmd = toolchain.configure(cmd);
    cmd.run()?;

    let out_dir = plugins_out_dir(root);
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let built = build_dir.join(toolchain::TARGET).join("release");
    for member in &members {
        let wasm = built.join(format!("{}.wasm", member.name.replace('-', "_")));
        let bytes = fs::read(&wasm).with_context(|| {
            format!(
                "reading {} (is `{}` a `cdylib` crate?)",
                wasm.display(),
                member.name
            )
        })?;
        check_component(&wasm, &bytes)?;
        let dest = out_dir.join(format!("{}.wasm", member.name));
        install_atomically(&bytes, &dest)?;
        println!(
            "{:<12} {:>8.1} KiB  {}",
            member.name,
            bytes.len() as f64 / 1024.0,
            dest.strip_prefix(root).unwrap_or(&dest).display()
        );
    }
    println!(
        "built {} plugin component(s) in {:.1} s ({})",
        members.len(),
        started.elapsed().as_secs_f64(),
        toolchain.describe()
    );
    Ok(())
}

fn check_component(path: &Path, bytes: &[u8]) -> Result<()> {
    match bytes.get(..8) {
        Some(header) if header == COMPONENT_HEADER => Ok(()),
        Some(header) if header == CORE_MODULE_HEADER => bail!(
            "{} is a core wasm module, not a component: the build did not link with \
             wasm-component-ld",
            path.display()
        ),
        _ => bail!("{} is not WebAssembly at all", path.display()),
    }
}

/// Writes next to `dest` and renames, so the broker's directory watcher never loads half a
/// file.
fn install_atomically(bytes: &[u8], dest: &Path) -> Result<()> {
    let file_name = dest
        .file_name()
        .context("destination has no file name")?
        .to_string_lossy();
    let tmp = dest.with_file_name(format!(".{file_name}.tmp"));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

fn test(root: &Path, extra: &[OsString]) -> Result<()> {
    build_plugins(root)?;
    // The plugins' rules, natively, in the plugins workspace's own target dir.
    Cmd::new(cargo())
        .args(["test", "--workspace"])
        .current_dir(&root.join("plugins"))
        .run()?;
    Cmd::new(cargo())
        .args(["test", "--workspace"])
        .args(extra)
        .current_dir(root)
        .run()
}

fn run_broker(root: &Path, extra: &[OsString]) -> Result<()> {
    build_plugins(root)?;
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
