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
//! Either way the linker is `wasm-component-ld` (shipped in rustup toolchains and in
//! Debian's `rust-web-llvm`), so the build writes a component directly. It runs `wasm-ld`:
//! rustup ships one in `gcc-ld/`; for Debian's, which lacks it, a `wasm-ld` symlink to
//! `rust-lld` is made in the build directory (lld picks its flavour from its name).

use crate::shell::{quote, Cmd};
use anyhow::{bail, Context, Result};
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

    /// Where the toolchain keeps its linkers (`wasm-component-ld`, `rust-lld`, `gcc-ld/`).
    fn tools(&self) -> PathBuf {
        self.rustlib().join(&self.host).join("bin")
    }
}

/// `wasm-component-ld`, and a directory with the `wasm-ld` it runs (put first on `PATH`).
#[derive(Debug)]
struct Linker {
    component_ld: PathBuf,
    wasm_ld_dir: PathBuf,
}

impl Linker {
    fn find<'a>(
        rustcs: impl Iterator<Item = &'a Rustc> + Clone,
        shim_dir: &Path,
    ) -> Result<Option<Self>> {
        let component_lds: Vec<PathBuf> = rustcs
            .clone()
            .map(|rustc| rustc.tools().join("wasm-component-ld"))
            .chain(which("wasm-component-ld"))
            .filter(|path| path.is_file())
            .collect();
        // A rustup toolchain brings everything.
        for component_ld in &component_lds {
            let gcc_ld = component_ld.with_file_name("gcc-ld");
            if gcc_ld.join("wasm-ld").is_file() {
                return Ok(Some(Self {
                    component_ld: component_ld.clone(),
                    wasm_ld_dir: gcc_ld,
                }));
            }
        }
        let Some(component_ld) = component_lds.into_iter().next() else {
            return Ok(None);
        };
        if let Some(wasm_ld) = which("wasm-ld") {
            let wasm_ld_dir = wasm_ld.parent().unwrap_or(Path::new("/")).to_path_buf();
            return Ok(Some(Self {
                component_ld,
                wasm_ld_dir,
            }));
        }
        // Debian: `rust-lld` (also the target of `gcc-ld/ld`) under another name. rustup's
        // `gcc-ld/ld` is a wrapper for the `ld` flavour, hence symlinks only.
        let tools: Vec<PathBuf> = rustcs.map(Rustc::tools).collect();
        let rust_lld = tools
            .iter()
            .map(|dir| dir.join("rust-lld"))
            .chain(which("rust-lld"))
            .chain(
                tools
                    .iter()
                    .map(|dir| dir.join("gcc-ld/ld"))
                    .filter(|p| p.is_symlink()),
            )
            .find(|path| path.is_file());
        let Some(rust_lld) = rust_lld else {
            return Ok(None);
        };
        let shim = shim_dir.join(format!("wasm-ld{}", std::env::consts::EXE_SUFFIX));
        link_or_copy(&rust_lld, &shim)?;
        Ok(Some(Self {
            component_ld,
            wasm_ld_dir: shim_dir.to_path_buf(),
        }))
    }
}

fn link_or_copy(original: &Path, link: &Path) -> Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::fs::symlink_metadata(link).is_ok() {
        std::fs::remove_file(link).with_context(|| format!("replacing {}", link.display()))?;
    }
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(original, link);
    #[cfg(not(unix))]
    let made = std::fs::copy(original, link).map(drop);
    made.with_context(|| format!("linking {} to {}", link.display(), original.display()))
}

/// The first `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(&file))
        .find(|p| p.is_file())
}

pub(crate) struct Toolchain {
    rustc: Rustc,
    std: Std,
    /// Whether `rustc` is the one cargo picks anyway (then `RUSTC` stays unset).
    is_default: bool,
    linker: Linker,
}

impl Toolchain {
    /// Adds what the wasm build needs to a `cargo build --target wasm32-unknown-unknown`.
    pub(crate) fn configure(&self, mut cmd: Cmd) -> Cmd {
        let inherited = std::env::var_os("PATH");
        let dirs = std::iter::once(self.linker.wasm_ld_dir.clone())
            .chain(inherited.iter().flat_map(std::env::split_paths));
        if let Ok(joined) = std::env::join_paths(dirs) {
            let shown = format!("{}:$PATH", quote(self.linker.wasm_ld_dir.as_os_str()));
            cmd = cmd.env_shown("PATH", joined, shown);
        }
        cmd = cmd.env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER",
            &self.linker.component_ld,
        );
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
            "{} ({}), {std}, linked by {}",
            self.rustc.version,
            self.rustc.program.to_string_lossy(),
            self.linker.component_ld.display()
        )
    }
}

/// The toolchain for the plugins in `plugins_dir` (whose `rust-toolchain` file, if any, the
/// default `rustc` honours).
/// A `wasm-ld` that has to be made goes to `shim_dir`.
pub(crate) fn find_or_install(plugins_dir: &Path, shim_dir: &Path) -> Result<Toolchain> {
    if let Some(toolchain) = find(plugins_dir, shim_dir)? {
        return Ok(toolchain);
    }
    eprintln!("xtask: no Rust compiler here can build {TARGET}; installing one");
    if install(plugins_dir) {
        if let Some(toolchain) = find(plugins_dir, shim_dir)? {
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

fn find(plugins_dir: &Path, shim_dir: &Path) -> Result<Option<Toolchain>> {
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
    let rustcs = std::iter::once(rustc).chain(candidates.iter().map(|(r, _)| r));
    let mut linker = Linker::find(rustcs.clone(), shim_dir)?;
    // Debian's `rust-lld` points into a package of its own (`lld-22`) that nothing pulls in.
    let missing_lld = missing_lld_package();
    if let (None, Some(package)) = (&linker, &missing_lld) {
        if can_apt() && apt_install(&[package.as_str()]) {
            linker = Linker::find(rustcs, shim_dir)?;
        }
    }
    let Some(linker) = linker else {
        let debian_hint = missing_lld
            .map(|package| format!(", or on Debian `sudo apt-get install -y {package}`"))
            .unwrap_or_default();
        bail!(
            "found {} for {TARGET} but no `wasm-component-ld` and `wasm-ld` to link a \
             component; both ship with rustup's Rust (≥ 1.82): run `rustup toolchain install \
             stable`{debian_hint}",
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
    can_apt() && apt_install(&DEBIAN_PACKAGES)
}

fn can_apt() -> bool {
    let is_root = Cmd::new("id")
        .arg("-u")
        .probe()
        .is_some_and(|uid| uid.trim() == "0");
    is_root && Cmd::new("apt-get").arg("--version").probe().is_some()
}

/// `apt-get install -y <packages>`, updating the package lists first only if that fails (a
/// fresh machine has none).
fn apt_install(packages: &[&str]) -> bool {
    let install = || {
        Cmd::new("apt-get")
            .args(["install", "-y"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .is_ok()
    };
    install() || (Cmd::new("apt-get").arg("update").run().is_ok() && install())
}

/// The package behind a dangling `rust-lld` symlink on `PATH` (Debian: `lld-22`).
fn missing_lld_package() -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("rust-lld"))
        .find_map(|link| {
            let target = std::fs::read_link(&link).ok()?;
            let dangling = !link.exists();
            let name = target.file_name()?.to_str()?.to_owned();
            (dangling && name.starts_with("lld")).then_some(name)
        })
}
