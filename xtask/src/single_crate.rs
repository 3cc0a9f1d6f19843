//! `build-plugin <crate> [--out-dir DIR]`: one plugin crate that may live anywhere (a plugin
//! author's own `cargo new --lib` crate, say) → `<DIR>/<crate name>.wasm`.
//!
//! It is built with the same toolchain logic and in the same wasm target directory as the
//! example plugins, so the wasm32 standard library is built once for all of them. The crate
//! need not declare `crate-type = ["cdylib"]`: `cargo rustc --crate-type cdylib` asks for
//! one. Where its workspace sets no `[profile.release]`, the example plugins' profile is
//! used ([`PLUGIN_PROFILE`]): small components, and the standard library already built.

use crate::component;
use crate::members::{self, Member};
use crate::shell::Cmd;
use crate::toolchain;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The release profile of `plugins/Cargo.toml` (and `tests/plugins/Cargo.toml`), as
/// `--config` values; a unit test keeps them equal.
pub(crate) const PLUGIN_PROFILE: [(&str, &str); 5] = [
    ("opt-level", "\"s\""),
    ("lto", "true"),
    ("panic", "\"abort\""),
    ("codegen-units", "1"),
    ("strip", "true"),
];

/// What `build-plugin` was asked to do.
#[derive(Debug, PartialEq)]
pub(crate) struct Request {
    /// The crate's directory or its `Cargo.toml`.
    pub(crate) krate: PathBuf,
    pub(crate) out_dir: Option<PathBuf>,
}

impl Request {
    pub(crate) fn parse(args: &[OsString]) -> Result<Self> {
        let mut krate = None;
        let mut out_dir = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let text = arg.to_string_lossy();
            if text == "--out-dir" {
                let Some(dir) = args.next() else {
                    bail!("--out-dir needs a directory")
                };
                out_dir = Some(PathBuf::from(dir));
            } else if let Some(dir) = text.strip_prefix("--out-dir=") {
                out_dir = Some(PathBuf::from(dir));
            } else if text.starts_with('-') {
                bail!("build-plugin: unknown option `{text}`");
            } else if krate.is_some() {
                bail!("build-plugin builds one crate; got a second path `{text}`");
            } else {
                krate = Some(PathBuf::from(arg));
            }
        }
        let Some(krate) = krate else {
            bail!("build-plugin needs the path of a plugin crate")
        };
        Ok(Self { krate, out_dir })
    }
}

/// Builds the crate and returns the absolute path of its component.
pub(crate) fn build(root: &Path, request: &Request, default_out_dir: &Path) -> Result<PathBuf> {
    let started = Instant::now();
    if !request.krate.exists() {
        bail!("there is no plugin crate at {}", request.krate.display());
    }
    let manifest = if request.krate.is_dir() {
        request.krate.join("Cargo.toml")
    } else {
        request.krate.clone()
    };
    let manifest = std::path::absolute(&manifest)
        .with_context(|| format!("resolving {}", manifest.display()))?;
    let text = fs::read_to_string(&manifest).with_context(|| {
        format!(
            "reading {} (build-plugin takes a crate directory or its Cargo.toml)",
            manifest.display()
        )
    })?;
    let Some(member) = Member::from_manifest(&text) else {
        bail!(
            "{} has no [package]: point build-plugin at one plugin crate, not a workspace",
            manifest.display()
        )
    };
    let crate_dir = manifest.parent().unwrap_or(Path::new("/")).to_path_buf();

    let build_dir = root.join("target").join("plugins-build");
    let toolchain = toolchain::find_or_install(&crate_dir, &build_dir.join("wasm-ld"))?;
    let mut cmd = Cmd::new(crate::cargo())
        .args(["rustc", "--release", "--lib", "--crate-type", "cdylib"])
        .args(["--target", toolchain::TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &build_dir)
        .current_dir(&crate_dir);
    if let Some(workspace) = workspace_without_release_profile(&manifest) {
        eprintln!(
            "xtask: {} sets no [profile.release]; using the example plugins' ({})",
            workspace.display(),
            PLUGIN_PROFILE
                .iter()
                .map(|(key, value)| format!("{key} = {value}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (key, value) in PLUGIN_PROFILE {
            cmd = cmd
                .arg("--config")
                .arg(format!("profile.release.{key}={value}"));
        }
    }
    cmd = toolchain.configure(cmd);
    cmd.run()?;

    let built = build_dir
        .join(toolchain::TARGET)
        .join("release")
        .join(format!("{}.wasm", member.lib_name));
    let out_dir = request.out_dir.as_deref().unwrap_or(default_out_dir);
    let dest = std::path::absolute(out_dir.join(format!("{}.wasm", member.name)))
        .with_context(|| format!("resolving {}", out_dir.display()))?;
    let installed = component::install(&built, &member.name, &dest)?;
    eprintln!(
        "xtask: built plugin `{}` ({:.1} KiB) in {:.1} s ({})",
        member.name,
        installed.kib(),
        started.elapsed().as_secs_f64(),
        toolchain.describe()
    );
    Ok(installed.path)
}

/// The root manifest of the crate's workspace (the crate's own if it has none), if it sets
/// no `[profile.release]`. Asks cargo where the root is; if cargo cannot tell, the build
/// that follows reports why.
fn workspace_without_release_profile(manifest: &Path) -> Option<PathBuf> {
    let located = Cmd::new(crate::cargo())
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .arg("--manifest-path")
        .arg(manifest)
        .probe()?;
    let root_manifest = PathBuf::from(located.trim());
    let text = fs::read_to_string(&root_manifest).ok()?;
    members::table(&text, "profile.release")
        .is_none()
        .then_some(root_manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_a_crate_and_an_optional_out_dir() {
        assert_eq!(
            Request::parse(&args(&["../my-plugin"])).unwrap(),
            Request {
                krate: "../my-plugin".into(),
                out_dir: None
            }
        );
        for given in [
            &["--out-dir", "/srv/plugins", "p"][..],
            &["p", "--out-dir", "/srv/plugins"],
            &["p", "--out-dir=/srv/plugins"],
        ] {
            assert_eq!(
                Request::parse(&args(given)).unwrap(),
                Request {
                    krate: "p".into(),
                    out_dir: Some("/srv/plugins".into())
                },
                "{given:?}"
            );
        }
        for wrong in [
            &[][..],
            &["p", "q"],
            &["p", "--out-dir"],
            &["p", "--release"],
        ] {
            assert!(Request::parse(&args(wrong)).is_err(), "{wrong:?}");
        }
    }

    /// Both plugin workspaces share the wasm std build only while their release profiles are
    /// equal, and `build-plugin` promises "the example plugins' profile".
    #[test]
    fn the_plugin_profile_is_the_one_of_both_plugin_workspaces() {
        let root = crate::workspace_root();
        let expected: Vec<(String, String)> = PLUGIN_PROFILE
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for workspace in ["plugins", "tests/plugins"] {
            let manifest = root.join(workspace).join("Cargo.toml");
            let text = fs::read_to_string(&manifest).unwrap();
            let profile = members::table(&text, "profile.release")
                .unwrap_or_else(|| panic!("no [profile.release] in {}", manifest.display()));
            assert_eq!(
                members::entries(profile),
                expected,
                "{}",
                manifest.display()
            );
        }
    }
}
