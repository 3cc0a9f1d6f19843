//! The crates of a plugin workspace (`plugins/`, `tests/plugins/`), read from its manifests.
//!
//! A deliberately small reader (xtask depends on nothing but anyhow): `members` must be a
//! list of plain directory names, which is how both workspaces' `Cargo.toml` are written.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

#[derive(Debug, PartialEq)]
pub(crate) struct Member {
    /// The crate name; the component is `<out dir>/<name>.wasm`.
    pub(crate) name: String,
    /// The library target's name, which names cargo's artifact (`<lib_name>.wasm`).
    pub(crate) lib_name: String,
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
            Member::from_manifest(&text)
                .with_context(|| format!("no `[package] name` in {}", manifest.display()))
        })
        .collect()
}

impl Member {
    /// The package of one crate's `Cargo.toml`; `None` if it has no `[package] name` (a
    /// virtual workspace manifest, say).
    pub(crate) fn from_manifest(manifest: &str) -> Option<Self> {
        let name = package_name(manifest)?;
        let lib_name = table(manifest, "lib")
            .and_then(|lib| string_value(lib, "name"))
            .unwrap_or_else(|| name.replace('-', "_"));
        Some(Self { name, lib_name })
    }
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
    string_value(table(manifest, "package")?, "name")
}

/// The value of `key = "value"` in the text of one table, quotes removed.
fn string_value(table: &str, key: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let (k, value) = line.split_once('=')?;
        (k.trim() == key).then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The `key = value` lines of one table, as written (comments and blank lines dropped).
#[cfg(test)]
pub(crate) fn entries(table: &str) -> Vec<(String, String)> {
    table
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// The text of one table (`"profile.release"` for `[profile.release]`), up to the next
/// table header; `None` if the manifest has no such header.
pub(crate) fn table<'a>(manifest: &'a str, name: &str) -> Option<&'a str> {
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

    #[test]
    fn the_artifact_is_named_after_the_lib_target() {
        let plain = Member::from_manifest("[package]\nname = \"my-plugin\"\n").unwrap();
        assert_eq!(
            (plain.name.as_str(), plain.lib_name.as_str()),
            ("my-plugin", "my_plugin")
        );
        let renamed = Member::from_manifest(
            "[package]\nname = \"my-plugin\"\n\n[lib]\nname = \"rules\"\ncrate-type = [\"cdylib\"]\n",
        )
        .unwrap();
        assert_eq!(renamed.lib_name, "rules");
        assert_eq!(Member::from_manifest("[workspace]\nmembers = []\n"), None);
    }

    #[test]
    fn reads_the_entries_of_a_dotted_table() {
        let manifest = "[profile.release]\nopt-level = \"s\" # small\nlto = true\n\n[profile.dev]\nlto = false\n";
        let release = table(manifest, "profile.release").unwrap();
        assert_eq!(
            entries(release),
            [
                ("opt-level".to_owned(), "\"s\"".to_owned()),
                ("lto".to_owned(), "true".to_owned())
            ]
        );
        assert_eq!(table(manifest, "profile.bench"), None);
    }
}
