//! The crates of the `plugins/` workspace, read from its manifests.
//!
//! A deliberately small reader (xtask depends on nothing but anyhow): `members` must be a
//! list of plain directory names, which is how `plugins/Cargo.toml` is written.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

#[derive(Debug, PartialEq)]
pub(crate) struct Member {
    /// The crate name; the component is `target/plugins/<name>.wasm`.
    pub(crate) name: String,
}

pub(crate) fn read(plugins_dir: &Path) -> Result<Vec<Member>> {
    let manifest = plugins_dir.join("Cargo.toml");
    let text =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let dirs = workspace_members(&text).with_context(|| format!("in {}", manifest.display()))?;
    dirs.iter()
        .map(|dir| {
            let manifest = plugins_dir.join(dir).join("Cargo.toml");
            let text = fs::read_to_string(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let name = package_name(&text)
                .with_context(|| format!("no `[package] name` in {}", manifest.display()))?;
            Ok(Member { name })
        })
        .collect()
}

/// The `members = [...]` list of the `[workspace]` table.
fn workspace_members(manifest: &str) -> Result<Vec<String>> {
    let Some(table) = table(manifest, "workspace") else {
        bail!("no [workspace] table")
    };
    let Some(start) = table.find("members") else {
        bail!("no `members` in [workspace]")
    };
    let list = &table[start..];
    let (Some(open), Some(close)) = (list.find('['), list.find(']')) else {
        bail!("`members` is not a list")
    };
    let members: Vec<String> = list[open + 1..close]
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split(','))
        .map(|item| item.trim().trim_matches('"').to_owned())
        .filter(|item| !item.is_empty())
        .collect();
    if let Some(glob) = members.iter().find(|m| m.contains(['*', '?', '['])) {
        bail!("workspace member `{glob}` is a glob; list plugin crates by name");
    }
    Ok(members)
}

/// `name` of the `[package]` table.
fn package_name(manifest: &str) -> Option<String> {
    table(manifest, "package")?.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "name").then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The text of one top-level table, up to the next table header.
fn table<'a>(manifest: &'a str, name: &str) -> Option<&'a str> {
    let header = format!("[{name}]");
    let mut offset = 0;
    let mut start = None;
    for line in manifest.split_inclusive('\n') {
        let trimmed = line.trim();
        // A header is `[a.b]` or `[[a]]`; lines of a multi-line array hold quoted strings.
        let is_header =
            trimmed.starts_with('[') && trimmed.ends_with(']') && !trimmed.contains('"');
        if is_header {
            if let Some(start) = start {
                return Some(&manifest[start..offset]);
            }
            if trimmed == header {
                start = Some(offset + line.len());
            }
        }
        offset += line.len();
    }
    start.map(|s| &manifest[s..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_members_across_lines_with_comments() {
        let manifest = r#"
[workspace]
resolver = "2"
members = [
    "public", # announcements
    "course",
    "user"
]

[profile.release]
lto = true
"#;
        assert_eq!(
            workspace_members(manifest).unwrap(),
            ["public", "course", "user"]
        );
        assert_eq!(
            workspace_members("[workspace]\nmembers = [\"public\"]\n").unwrap(),
            ["public"]
        );
    }

    #[test]
    fn refuses_globs_and_missing_tables() {
        assert!(workspace_members("[workspace]\nmembers = [\"*\"]\n")
            .unwrap_err()
            .to_string()
            .contains("glob"));
        assert!(workspace_members("[package]\nname = \"x\"\n").is_err());
    }

    #[test]
    fn reads_the_package_name_not_a_dependency_name() {
        let manifest = "[package]\nname = \"public\"\nversion = \"0.1.0\"\n\n[dependencies]\nname = \"other\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("public"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }
}
