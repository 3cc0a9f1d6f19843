//! What happens to a built plugin: checked to be a component, then put where the broker
//! reads it.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// The first 8 bytes of a WebAssembly component (a core module has version `01 00 00 00`).
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const CORE_MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// A component that was installed.
#[derive(Debug)]
pub(crate) struct Installed {
    pub(crate) path: PathBuf,
    pub(crate) bytes: usize,
}

impl Installed {
    pub(crate) fn kib(&self) -> f64 {
        self.bytes as f64 / 1024.0
    }
}

/// Checks cargo's artifact `built` (the crate `name`) and copies it to `dest`.
pub(crate) fn install(built: &Path, name: &str, dest: &Path) -> Result<Installed> {
    let bytes = fs::read(built).with_context(|| {
        format!(
            "reading {} (is `{name}` a `cdylib` crate?)",
            built.display()
        )
    })?;
    check(built, &bytes)?;
    check_exports(name, &bytes)?;
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    install_atomically(&bytes, dest)?;
    Ok(Installed {
        path: dest.to_owned(),
        bytes: bytes.len(),
    })
}

fn check(path: &Path, bytes: &[u8]) -> Result<()> {
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

/// The functions of the world `channel-plugin` every plugin component exports.
const HOOK_EXPORTS: [&str; 4] = ["describe", "authorize-subscribe", "on-publish", "filter"];
/// A component's export section id (top level).
const COMPONENT_EXPORT_SECTION: u8 = 11;

/// Refuses a component that lacks the world's exports: a Rust crate that forgot
/// `export_plugin!` still links (the SDK brings the WIT world), but the broker would refuse it
/// at load with "no export `authorize-subscribe`".
fn check_exports(name: &str, bytes: &[u8]) -> Result<()> {
    let sections = top_level_sections(bytes, COMPONENT_EXPORT_SECTION);
    let missing: Vec<&str> = HOOK_EXPORTS
        .iter()
        .copied()
        .filter(|export| !sections.iter().any(|section| exports_name(section, export)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "the plugin `{name}` exports no {}: its crate never calls `export_plugin!`. \
         End its src/lib.rs with `export_plugin!(YourPlugin);` (from \
         `stellwerk_plugin_sdk::prelude::*`, once, at the top level); without it the broker \
         refuses the component with \"no export `{}`\"",
        missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", "),
        missing[0]
    )
}

/// The payloads of the top-level sections with id `id` (nested modules and components are
/// inside other sections' payloads and so never seen). Stops at the first malformed section.
fn top_level_sections(bytes: &[u8], id: u8) -> Vec<&[u8]> {
    let mut found = Vec::new();
    let mut rest = bytes.get(8..).unwrap_or_default();
    while let Some((&section, after_id)) = rest.split_first() {
        let Some((size, after_size)) = leb_u32(after_id) else {
            break;
        };
        let Some(payload) = after_size.get(..size as usize) else {
            break;
        };
        if section == id {
            found.push(payload);
        }
        rest = &after_size[size as usize..];
    }
    found
}

/// Does an export section name `export` (a length-prefixed string)?
fn exports_name(section: &[u8], export: &str) -> bool {
    let mut needle = vec![export.len() as u8];
    needle.extend_from_slice(export.as_bytes());
    section.windows(needle.len()).any(|w| w == needle)
}

fn leb_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value = 0u32;
    for (i, byte) in bytes.iter().enumerate().take(5) {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A component header, a nested core module section that mentions every name (it must
    /// not count), and a top-level export section naming `exports`.
    fn with_exports(exports: &[&str]) -> Vec<u8> {
        let mut bytes = COMPONENT_HEADER.to_vec();
        let mut nested = Vec::new();
        for name in HOOK_EXPORTS {
            nested.push(name.len() as u8);
            nested.extend_from_slice(name.as_bytes());
        }
        bytes.push(1);
        bytes.push(nested.len() as u8);
        bytes.extend_from_slice(&nested);
        let mut section = vec![exports.len() as u8];
        for name in exports {
            section.extend_from_slice(&[0x00, name.len() as u8]);
            section.extend_from_slice(name.as_bytes());
            section.extend_from_slice(&[0x01, 0x00, 0x00]);
        }
        bytes.push(COMPONENT_EXPORT_SECTION);
        bytes.push(section.len() as u8);
        bytes.extend_from_slice(&section);
        bytes
    }

    #[test]
    fn installs_components_and_refuses_core_modules() {
        let dir = std::env::temp_dir().join(format!("xtask-component-{}", std::process::id()));
        let built = dir.join("built.wasm");
        fs::create_dir_all(&dir).unwrap();

        let component = with_exports(&HOOK_EXPORTS);
        fs::write(&built, &component).unwrap();
        let dest = dir.join("out").join("p.wasm");
        let installed = install(&built, "p", &dest).unwrap();
        assert_eq!(
            (installed.path.as_path(), installed.bytes),
            (dest.as_path(), component.len())
        );
        assert_eq!(fs::read(&dest).unwrap(), fs::read(&built).unwrap());

        fs::write(&built, CORE_MODULE_HEADER).unwrap();
        let err = install(&built, "p", &dir.join("core.wasm")).unwrap_err();
        assert!(err.to_string().contains("not a component"), "{err:#}");
        assert!(!dir.join("core.wasm").exists());

        fs::write(&built, with_exports(&["describe"])).unwrap();
        let err = install(&built, "p", &dir.join("no-macro.wasm")).unwrap_err();
        assert!(err.to_string().contains("export_plugin!"), "{err:#}");
        assert!(
            err.to_string()
                .contains("`authorize-subscribe`, `on-publish`, `filter`"),
            "{err:#}"
        );
        assert!(!dir.join("no-macro.wasm").exists());

        let err = install(&dir.join("missing.wasm"), "p", &dest).unwrap_err();
        assert!(format!("{err:#}").contains("cdylib"), "{err:#}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
