//! Shared by `reload.rs` and `admin.rs`: a plugin directory of their own, the ways an
//! operator puts a file into it, and an admin API client.
//!
//! The directory starts with the example `public` plugin and the test plugin `gate`
//! (`tests/plugins/gate`: rules from its sidecar `gate.toml`, HTTP publishes stamped with
//! the version that let them through); `gate-v2` is the same plugin built as 2.0.0.

#![allow(dead_code)] // Each test file uses its own part of this.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use stellwerk_e2e::plugin_dir::component;
pub(crate) use stellwerk_e2e::plugin_dir::PluginDir;
use stellwerk_e2e::server::status_and_json;
use stellwerk_e2e::{random_hex, Server, ServerBuilder};

pub(crate) const ADMIN_TOKEN: &str = "reload-admin-token";
/// How long a change may take to show up before the test fails (never a speed assertion:
/// reloads take milliseconds, the watcher waits 150 ms for a burst to settle).
pub(crate) const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn bytes_of(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).expect("read the component")
}

/// SHA-256 of `bytes`, hex, as `GET /admin/plugins` shows it (computed by `sha256sum`, so
/// that the test does not share code with the broker).
pub(crate) fn sha256(bytes: &[u8]) -> String {
    let file = std::env::temp_dir().join(format!("stellwerk-sha-{}", random_hex(6)));
    std::fs::write(&file, bytes).expect("write temp file");
    let out = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("run sha256sum");
    let _ = std::fs::remove_file(&file);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned()
}

/// What `cp new.wasm gate.wasm` does: truncate and write in place, here in `chunks` pieces
/// with `pause` between them, so that the watcher sees a half-written file. Blocking: run it
/// on a thread of its own.
pub(crate) fn overwrite_in_place(file: &Path, bytes: &[u8], chunks: usize, pause: Duration) {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .expect("open for writing");
    let size = bytes.len().div_ceil(chunks);
    for (i, chunk) in bytes.chunks(size).enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        out.write_all(chunk).expect("write chunk");
        out.flush().expect("flush");
    }
}

/// A plugin directory of the test's own: `public.wasm` and `gate.wasm` (version 1.0.0), no
/// sidecar.
pub(crate) fn plugin_dir() -> PluginDir {
    PluginDir::with(&["public", "gate"])
}

/// How an operator changes files in the plugin directory.
pub(crate) trait Deploy {
    /// The recommended way: write a hidden temporary file in the same directory, then
    /// rename it over `name` (what `mv` does).
    fn replace_atomically(&self, name: &str, bytes: &[u8]);
    /// Everything in the directory, hidden files included.
    fn entries(&self) -> Vec<String>;
}

impl Deploy for PluginDir {
    fn replace_atomically(&self, name: &str, bytes: &[u8]) {
        let temp = self.file(&format!(".{name}.tmp-{}", random_hex(4)));
        std::fs::write(&temp, bytes).expect("write temp file");
        std::fs::rename(&temp, self.file(name)).expect("rename into place");
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .expect("list the plugin directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A broker on `dir` with the admin token set, plus `env`.
pub(crate) async fn start(dir: &PluginDir, env: &[(&str, &str)]) -> Server {
    builder(dir, env).start().await
}

/// [`start`], not started yet.
pub(crate) fn builder(dir: &PluginDir, env: &[(&str, &str)]) -> ServerBuilder {
    let mut builder = Server::builder()
        .plugins_dir(dir.path())
        .env("STELLWERK_ADMIN_TOKEN", ADMIN_TOKEN);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    builder
}

/// The admin API of one broker, as an operator's script would call it.
pub(crate) struct Admin {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Admin {
    pub(crate) fn new(server: &Server) -> Self {
        Self::at(&server.http_url(""), Some(ADMIN_TOKEN))
    }

    /// `base` like `http://127.0.0.1:1234`; `token` `None` sends no `Authorization`.
    pub(crate) fn at(base: &str, token: Option<&str>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = tokio::time::timeout(HTTP_TIMEOUT, req.send())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {HTTP_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        status_and_json(resp).await
    }

    /// `GET /admin/plugins`, asserting 200.
    pub(crate) async fn plugins(&self) -> Vec<Value> {
        let (status, body) = self
            .send(reqwest::Method::GET, "/admin/plugins", None)
            .await;
        assert_eq!(status, 200, "GET /admin/plugins: {body}");
        body["plugins"]
            .as_array()
            .expect("`plugins` is a list")
            .clone()
    }

    /// The entry of plugin (or file) `name`, if listed.
    pub(crate) async fn plugin(&self, name: &str) -> Option<Value> {
        self.plugins().await.into_iter().find(|p| p["name"] == name)
    }

    /// Polls `GET /admin/plugins` until `name`'s entry satisfies `done`; fails the test
    /// with the last entry after [`CHANGE_TIMEOUT`].
    pub(crate) async fn wait_for(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        loop {
            let entry = self.plugin(name).await;
            if let Some(entry) = entry.as_ref().filter(|e| done(e)) {
                return entry.clone();
            }
            assert!(
                Instant::now() < deadline,
                "plugin {name}: {what} did not happen within {CHANGE_TIMEOUT:?}; entry: {entry:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until `name` is no longer listed.
    pub(crate) async fn wait_until_gone(&self, name: &str) {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        while let Some(entry) = self.plugin(name).await {
            assert!(
                Instant::now() < deadline,
                "plugin {name} still listed after {CHANGE_TIMEOUT:?}: {entry}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn upload(&self, name: &str, bytes: Vec<u8>) -> (u16, Value) {
        self.send(
            reqwest::Method::PUT,
            &format!("/admin/plugins/{name}"),
            Some(bytes),
        )
        .await
    }

    pub(crate) async fn reload(&self, name: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("/admin/plugins/{name}/reload"),
            None,
        )
        .await
    }

    pub(crate) async fn reload_all(&self) -> (u16, Value) {
        self.send(reqwest::Method::POST, "/admin/plugins/reload", None)
            .await
    }

    pub(crate) async fn remove(&self, name: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::DELETE,
            &format!("/admin/plugins/{name}"),
            None,
        )
        .await
    }
}
