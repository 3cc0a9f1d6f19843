//! Finds a Rust that can build `wasm32-unknown-unknown`, and the linker that turns the
//! result into a component; installs the missing piece where it can.
//!
//! In order of preference:
//! 1. a compiler whose sysroot has the wasm32 standard library (`rustup target add
//!    wasm32-unknown-unknown`, what plugin authors have);
//! 2. a compiler with the standard library's *sources*, building `std` with `-Zbuild-std`
//!    (Debian's `rustc-web` + `rust-web-src`, see `shared/notes/wasm-toolchain.md`);
//! 3. neither: `rustup target add`, else (as root) `apt-get install rustc-web rust-web-src`,
//!    else an error naming the command to run.
//!
//! Either way the linker is `wasm-component-ld` (shipped inside rustup toolchains), so the
//! build writes a component directly.

use crate::shell::{quote, Cmd};
use anyhow::{bail, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub(crate) const TARGET: &str = "wasm32-unknown-unknown";
const FORCE_VAR: &str = "XTASK_WASM_TOOLCHAIN";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_PACKAGES: [&str; 2] = ["rustc-web", "rust-web-src"];

/// How the wasm32 standard library is obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Std {
    /// Shipped in the compiler's sysroot.
    Prebuilt,
    /// Compiled from the sysroot's sources with `-Zbuild-std`.
    BuildStd,
}

/// One `rustc` and what its sysroot holds.
#[derive(Debug, Clone)]
struct Rustc {
    program: OsString,
    version: String,
    sysroot: PathBuf,
    host: String,
}

impl Rustc {
    fn inspect(program: impl Into<OsString>, dir: &Path) -> Option<Self> {
        let program = program.into();
        let verbose = Cmd::new(&program).arg("-vV").current_dir(dir).probe()?;
        let host = verbose
            .lines()
            .find_map(|l| l.strip_prefix("host: "))?
            .trim()
            .to_owned();
        let version = verbose.lines().next()?.trim().to_owned();
        let sysroot = Cmd::new(&program)
            .args(["--print", "sysroot"])
            .current_dir(dir)
            .probe()?;
        Some(Self {
            program,
            version,
            sysroot: PathBuf::from(sysroot.trim()),
            host,
        })
    }

    fn rustlib(&self) -> PathBuf {
        self.sysroot.join("lib").join("rustlib")
    }

    fn std(&self) -> Option<Std> {
        if self.rustlib().join(TARGET).join("lib").is_dir() {
            Some(Std::Prebuilt)
        } else if self.rustlib().join("src/rust/library/std").is_dir() {
            Some(Std::BuildStd)
        } else {
            None
        }
    }

    /// `wasm-component-ld` as rustup ships it, with `gcc-ld/` (its `wasm-ld`) beside it.
    fn component_linker(&self) -> Option<PathBuf> {
        let linker = self
            .rustlib()
            .join(&self.host)
            .join("bin")
            .join("wasm-component-ld");
        linker.is_file().then_some(linker)
    }
}

pub(crate) struct Toolchain {
    rustc: Rustc,
    std: Std,
    /// Whether `rustc` is the one cargo picks anyway (then `RUSTC` stays unset).
    is_default: bool,
    linker: PathBuf,
}

impl Toolchain {
    /// Adds what the wasm build needs to a `cargo build --target wasm32-unknown-unknown`.
    pub(crate) fn configure(&self, mut cmd: Cmd) -> Cmd {
        let linker_dir = self.linker.parent().unwrap_or(Path::new("."));
        // wasm-component-ld runs `wasm-ld`, which rustup ships as `gcc-ld/wasm-ld`.
        let added = [linker_dir.join("gcc-ld"), linker_dir.to_path_buf()];
        let inherited = std::env::var_os("PATH");
        let path = added
            .iter()
            .cloned()
            .chain(inherited.iter().flat_map(std::env::split_paths));
        if let Ok(joined) = std::env::join_paths(path) {
            let shown = added
                .iter()
                .map(|dir| quote(dir.as_os_str()))
                .collect::<Vec<_>>()
                .join(":");
            cmd = cmd.env_shown("PATH", joined, format!("{shown}:$PATH"));
        }
        cmd = cmd.env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", &self.linker);
        if !self.is_default {
            cmd = cmd.env("RUSTC", &self.rustc.program);
        }
        if self.std == Std::BuildStd {
            cmd = cmd
                .env("RUSTC_BOOTSTRAP", "1")
                .arg("-Zbuild-std=std,panic_abort");
        }
        cmd
    }

    pub(crate) fn describe(&self) -> String {
        let std = match self.std {
            Std::Prebuilt => "prebuilt wasm32 std",
            Std::BuildStd => "std built from source",
        };
        format!(
            "{} ({}), {std}",
            self.rustc.version,
            self.rustc.program.to_string_lossy()
        )
    }
}

/// The toolchain for the plugins in `plugins_dir` (whose `rust-toolchain` file, if any, the
/// default `rustc` honours).
pub(crate) fn find_or_install(plugins_dir: &Path) -> Result<Toolchain> {
    if let Some(toolchain) = find(plugins_dir)? {
        return Ok(toolchain);
    }
    eprintln!("xtask: no Rust compiler here can build {TARGET}; installing one");
    if install(plugins_dir) {
        if let Some(toolchain) = find(plugins_dir)? {
            return Ok(toolchain);
        }
    }
    let forced = match std::env::var(FORCE_VAR) {
        Ok(value) => format!(" ({FORCE_VAR}={value} narrows the choice)"),
        Err(_) => String::new(),
    };
    bail!(
        "cannot build {TARGET}{forced}. Run `rustup target add {TARGET}`, or on Debian/Ubuntu \
         `sudo apt-get install -y {}`, then try again",
        DEBIAN_PACKAGES.join(" ")
    )
}

fn find(plugins_dir: &Path) -> Result<Option<Toolchain>> {
    let default_program = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let default = Rustc::inspect(default_program, plugins_dir);
    let debian = Path::new(DEBIAN_RUSTC)
        .is_file()
        .then(|| Rustc::inspect(DEBIAN_RUSTC, plugins_dir))
        .flatten()
        .filter(|d| default.as_ref().is_none_or(|r| r.sysroot != d.sysroot));
    let candidates: Vec<(Rustc, bool)> = default
        .into_iter()
        .map(|r| (r, true))
        .chain(debian.map(|r| (r, false)))
        .collect();

    let wanted = match std::env::var(FORCE_VAR).as_deref() {
        Ok("prebuilt") => Some(Std::Prebuilt),
        Ok("build-std") => Some(Std::BuildStd),
        Ok(other) => bail!("{FORCE_VAR}={other}: expected `prebuilt` or `build-std`"),
        Err(_) => None,
    };
    // A prebuilt std wins: no nightly flags, and a far shorter cold build.
    let pick = |std: Std| {
        candidates.iter().find(|(rustc, _)| match std {
            Std::Prebuilt => rustc.std() == Some(Std::Prebuilt),
            // Any sysroot with sources can build std, even one that also has it prebuilt.
            Std::BuildStd => rustc.rustlib().join("src/rust/library/std").is_dir(),
        })
    };
    let chosen = match wanted {
        Some(std) => pick(std).map(|c| (c, std)),
        None => pick(Std::Prebuilt)
            .map(|c| (c, Std::Prebuilt))
            .or_else(|| pick(Std::BuildStd).map(|c| (c, Std::BuildStd))),
    };
    let Some(((rustc, is_default), std)) = chosen else {
        return Ok(None);
    };

    // Any toolchain's linker will do; the chosen compiler's own comes first.
    let linker = std::iter::once(rustc)
        .chain(candidates.iter().map(|(r, _)| r))
        .find_map(Rustc::component_linker);
    let Some(linker) = linker else {
        bail!(
            "found {} for {TARGET} but no `wasm-component-ld` to link a component; it ships \
             with rustup's Rust (≥ 1.82): run `rustup toolchain install stable`",
            rustc.version
        )
    };
    Ok(Some(Toolchain {
        rustc: rustc.clone(),
        std,
        is_default: *is_default,
        linker,
    }))
}

/// Tries to install a wasm32 toolchain; true if some install command succeeded.
fn install(plugins_dir: &Path) -> bool {
    let rustup = Cmd::new("rustup").arg("--version").probe().is_some();
    if rustup
        && Cmd::new("rustup")
            .args(["target", "add", TARGET])
            .current_dir(plugins_dir)
            .run()
            .is_ok()
    {
        return true;
    }
    let is_root = Cmd::new("id")
        .arg("-u")
        .probe()
        .is_some_and(|uid| uid.trim() == "0");
    let has_apt = Cmd::new("apt-get").arg("--version").probe().is_some();
    if !(is_root && has_apt) {
        return false;
    }
    let apt_install = || {
        Cmd::new("apt-get")
            .args(["install", "-y"])
            .args(DEBIAN_PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .is_ok()
    };
    // A fresh machine has no package lists yet: update only when the install needs it.
    apt_install() || (Cmd::new("apt-get").arg("update").run().is_ok() && apt_install())
}
