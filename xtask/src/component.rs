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

    #[test]
    fn installs_components_and_refuses_core_modules() {
        let dir = std::env::temp_dir().join(format!("xtask-component-{}", std::process::id()));
        let built = dir.join("built.wasm");
        fs::create_dir_all(&dir).unwrap();

        fs::write(&built, [&COMPONENT_HEADER[..], b"rest"].concat()).unwrap();
        let dest = dir.join("out").join("p.wasm");
        let installed = install(&built, "p", &dest).unwrap();
        assert_eq!(
            (installed.path.as_path(), installed.bytes),
            (dest.as_path(), 12)
        );
        assert_eq!(fs::read(&dest).unwrap(), fs::read(&built).unwrap());

        fs::write(&built, CORE_MODULE_HEADER).unwrap();
        let err = install(&built, "p", &dir.join("core.wasm")).unwrap_err();
        assert!(err.to_string().contains("not a component"), "{err:#}");
        assert!(!dir.join("core.wasm").exists());

        let err = install(&dir.join("missing.wasm"), "p", &dest).unwrap_err();
        assert!(format!("{err:#}").contains("cdylib"), "{err:#}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
