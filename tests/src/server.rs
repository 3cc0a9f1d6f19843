//! One real broker per test: a `stellwerk serve` child process on `127.0.0.1:0`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::{default_plugins_dir, stellwerk_binary, workspace_root};
use crate::sse::SseStream;
use crate::ws::WsClient;
use crate::{now_secs, random_hex, tokens};

/// Only stops a hung start: a broker loading JavaScript plugins compiles megabytes of QuickJS
/// with Cranelift first (seconds each in a debug build on 2 busy cores).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const LISTENING: &str = "listening on http://";

/// Everything the child wrote to stdout and stderr, ANSI colours removed.
type Log = Arc<Mutex<String>>;
type AddrSender = Arc<Mutex<Option<tokio::sync::oneshot::Sender<SocketAddr>>>>;

/// How to start a broker: extra environment, arguments, plugin directory.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    env: Vec<(String, String)>,
    /// Variables the harness would set but this test wants unset.
    unset: Vec<String>,
    args: Vec<String>,
    plugins_dir: PathBuf,
    /// `RLIMIT_NOFILE` (soft and hard) for the broker, through `prlimit`.
    open_files: Option<u32>,
    /// API key and JWT secret; random per broker unless shared ([`Self::shared_with`]).
    secrets: Option<(String, String)>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            unset: Vec::new(),
            args: Vec::new(),
            plugins_dir: examples_dir().to_path_buf(),
            open_files: None,
            secrets: None,
        }
    }
}

impl ServerBuilder {
    /// Sets an extra environment variable, e.g. `STELLWERK_LIMITS_QUEUE_CAPACITY`.
    #[allow(clippy::needless_pass_by_value)] // `.env("…", 16)` reads better than `&16`.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Leaves out a variable the harness sets by default (`STELLWERK_API_KEY`,
    /// `STELLWERK_JWT_SECRET`), e.g. for a config file that must supply it.
    pub fn unset(mut self, key: &str) -> Self {
        self.unset.push(key.to_owned());
        self
    }

    /// Appends an argument after `serve`, e.g. `--config`.
    #[allow(clippy::needless_pass_by_value)]
    pub fn arg(mut self, arg: impl ToString) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Serves plugins from `dir` instead of `target/plugins`.
    pub fn plugins_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugins_dir = dir.into();
        self
    }

    /// Runs the broker with at most `limit` open file descriptors (`prlimit --nofile`), to
    /// run it out of them on purpose.
    pub fn open_files_limit(mut self, limit: u32) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Uses `other`'s API key and JWT secret, as the nodes of one cluster do: one token and
    /// one key work on every node.
    pub fn shared_with(mut self, other: &Server) -> Self {
        self.secrets = Some((other.api_key.clone(), other.jwt_secret.clone()));
        self
    }

    /// Starts the broker and waits until it says where it listens.
    pub async fn start(self) -> Server {
        require_plugins(&self.plugins_dir);
        let (api_key, jwt_secret) = self
            .secrets
            .clone()
            .unwrap_or_else(|| (random_hex(24), random_hex(32)));
        let mut cmd = self.command(&api_key, &jwt_secret);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", stellwerk_binary().display()));

        let log: Log = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx: AddrSender = Arc::new(Mutex::new(Some(tx)));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        drain(stdout, log.clone(), tx.clone());
        drain(stderr, log.clone(), tx);

        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key,
            jwt_secret,
            log,
            http: reqwest::Client::new(),
        };
        match tokio::time::timeout(STARTUP_TIMEOUT, rx).await {
            Ok(Ok(addr)) => server.addr = addr,
            Ok(Err(_)) => {
                let status = server.child.wait().ok();
                panic!(
                    "stellwerk exited before listening ({status:?}); its log:\n{}",
                    server.log()
                );
            }
            Err(_) => panic!(
                "stellwerk did not log `{LISTENING}…` within {STARTUP_TIMEOUT:?}; its log:\n{}",
                server.log()
            ),
        }
        server
    }

    /// Runs the binary to completion (for start-up failures) and returns its exit code and
    /// stderr. Fails the test if it is still running after 30 s.
    pub async fn run_to_exit(self) -> (Option<i32>, String) {
        require_plugins(&self.plugins_dir);
        let mut cmd = self.command(&random_hex(24), &random_hex(32));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn stellwerk");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            strip_ansi(&String::from_utf8_lossy(&buf))
        });
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for stellwerk") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = reader.join().unwrap_or_default();
                panic!("stellwerk was expected to exit but kept running; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = reader.join().unwrap_or_default();
        (status.code(), log)
    }

    fn command(&self, api_key: &str, jwt_secret: &str) -> Command {
        let mut cmd = match self.open_files {
            // prlimit execs the broker: the child's pid stays the broker's.
            Some(limit) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(stellwerk_binary());
                cmd
            }
            None => Command::new(stellwerk_binary()),
        };
        cmd.arg("serve").args(&self.args);
        // Only what the test sets reaches the broker: no stray STELLWERK_* from the shell.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STELLWERK_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("STELLWERK_LISTEN", "127.0.0.1:0")
            .env("STELLWERK_API_KEY", api_key)
            .env("STELLWERK_JWT_SECRET", jwt_secret)
            .env("STELLWERK_PLUGINS_DIR", &self.plugins_dir)
            // One cache for every test's broker: each component is compiled once per run.
            .env("STELLWERK_PLUGINS_COMPILE_CACHE_DIR", compile_cache_dir())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        for key in &self.unset {
            cmd.env_remove(key);
        }
        cmd
    }
}

/// The example plugins every default-directory test may rely on: fail, never skip.
const EXAMPLE_PLUGINS: [&str; 3] = ["public", "course", "user"];

/// The default plugin directory of a test's broker: the Rust example plugins of
/// `target/plugins`, copied once per test process into `target/e2e-plugins`. Not
/// `target/plugins` itself, which also holds the JavaScript example `blubber`: every broker
/// would compile its 1.7 MiB component at start (seconds each); the tests that need it ask
/// for it (`PluginDir::with(&["blubber"])`).
pub fn examples_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = workspace_root().join("target").join("e2e-plugins");
        std::fs::create_dir_all(&dir).expect("create target/e2e-plugins");
        for plugin in EXAMPLE_PLUGINS {
            let built = default_plugins_dir().join(format!("{plugin}.wasm"));
            assert!(
                built.exists(),
                "{} is missing: run `cargo xtask build-plugins` first",
                built.display()
            );
            // Copied under a temporary name and renamed: test processes may overlap.
            let tmp = dir.join(format!(".{plugin}.{}.tmp", std::process::id()));
            std::fs::copy(&built, &tmp).expect("copy an example plugin");
            std::fs::rename(&tmp, dir.join(format!("{plugin}.wasm")))
                .expect("install an example plugin");
        }
        dir
    })
}

/// The compile cache the tests' brokers share (`target/compile-cache`).
pub fn compile_cache_dir() -> PathBuf {
    workspace_root().join("target").join("compile-cache")
}

fn require_plugins(dir: &Path) {
    if dir != default_plugins_dir() && dir != examples_dir() {
        return;
    }
    for plugin in EXAMPLE_PLUGINS {
        let wasm = dir.join(format!("{plugin}.wasm"));
        assert!(
            wasm.exists(),
            "{} is missing: run `cargo xtask build-plugins` first",
            wasm.display()
        );
    }
}

/// Copies one output stream of the child into `log` on a thread of its own (so the pipe never
/// fills up, even while the test is blocked), and reports the listening address once.
fn drain(stream: impl Read + Send + 'static, log: Log, tx: AddrSender) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = strip_ansi(&String::from_utf8_lossy(&raw));
            if let Some(addr) = listening_addr(&line) {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(addr);
                }
            }
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            if !line.ends_with('\n') {
                log.push('\n');
            }
        }
    });
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Removes ANSI escape sequences (`ESC [ … letter`), in case the logger colours its output.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running broker. Killed when dropped; its log is printed if the test is failing.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    api_key: String,
    jwt_secret: String,
    log: Log,
    http: reqwest::Client,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- stellwerk log ({}) -----\n{}", self.addr, self.log());
        }
    }
}

impl Server {
    /// A broker with the default settings.
    pub async fn start() -> Server {
        Self::builder().start().await
    }

    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's process id (for `/proc/<pid>/…`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the broker a signal (`"TERM"`, `"INT"`) as an init system would.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits up to `limit` for the broker to exit; its exit status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for stellwerk") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    /// What the broker has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// An HS256 token as Stud.IP mints it: `sub`, `iat`, `exp = now + ttl`, plus `extra_claims`
    /// (an object; its fields win).
    pub fn mint(&self, sub: &str, extra_claims: Value, ttl: Duration) -> String {
        let now = now_secs();
        let ttl = i64::try_from(ttl.as_secs()).expect("ttl fits");
        let mut claims = json!({"sub": sub, "iat": now, "exp": now + ttl});
        if let Value::Object(extra) = extra_claims {
            claims.as_object_mut().unwrap().extend(extra);
        }
        self.sign(&claims)
    }

    /// A token for `sub`, valid for an hour, no extra claims.
    pub fn token(&self, sub: &str) -> String {
        self.mint(sub, json!({}), Duration::from_secs(3600))
    }

    /// Signs arbitrary claims with the server's secret (for tokens Stud.IP would never mint).
    pub fn sign(&self, claims: &Value) -> String {
        tokens::hs256(&self.jwt_secret, claims)
    }

    /// Opens a WebSocket to `path_and_query` (e.g. `/ws?token=…`).
    pub async fn ws(&self, path_and_query: &str) -> WsClient {
        WsClient::connect(&self.ws_url(path_and_query))
            .await
            .unwrap_or_else(|e| panic!("WebSocket to {path_and_query}: {e:#}"))
    }

    /// A WebSocket authenticated with `?token=` as `sub` with these extra claims (1 h token).
    pub async fn ws_as(&self, sub: &str, claims: Value) -> WsClient {
        let token = self.mint(sub, claims, Duration::from_secs(3600));
        self.ws(&format!("/ws?token={token}")).await
    }

    /// A WebSocket authenticated with `?token=` and subscribed to `channel`; also returns the
    /// `subscribed` reply.
    pub async fn subscriber(&self, sub: &str, channel: &str) -> (WsClient, Value) {
        let mut ws = self.ws(&format!("/ws?token={}", self.token(sub))).await;
        let reply = ws
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(reply["type"], "subscribed", "subscribe {channel}: {reply}");
        (ws, reply)
    }

    /// `POST /api/publish` as Stud.IP's PHP does it: returns status and JSON body.
    pub async fn publish(&self, body: &Value) -> (u16, Value) {
        let key = self.api_key.clone();
        self.publish_raw(body.to_string(), Some(&key)).await
    }

    /// Publishes `data` to one channel and returns its result (`channel`, `epoch`, `offset`);
    /// fails the test unless the broker answers 200.
    pub async fn publish_ok(&self, channel: &str, data: &Value) -> Value {
        let (status, body) = self
            .publish(&json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(status, 200, "publish to {channel}: {body}");
        let result = body["results"][0].clone();
        assert_eq!(result["channel"], channel, "publish result: {body}");
        result
    }

    /// `POST /api/users/{user}/disconnect` with the API key, as Stud.IP does on logout;
    /// fails the test unless the broker answers 200. Returns the body.
    pub async fn disconnect_user(&self, user: &str) -> Value {
        let resp = self
            .http
            .post(self.http_url(&format!("/api/users/{user}/disconnect")))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("POST /api/users/{user}/disconnect");
        let (status, body) = status_and_json(resp).await;
        assert_eq!(status, 200, "disconnect {user}: {body}");
        body
    }

    /// `POST /api/publish` with any body and any (or no) API key; no `Content-Type`, as PHP's
    /// curl often sends it.
    pub async fn publish_raw(
        &self,
        body: impl Into<reqwest::Body>,
        api_key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.post(self.http_url("/api/publish")).body(body);
        if let Some(key) = api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.expect("POST /api/publish");
        status_and_json(resp).await
    }

    /// `GET path` with the API key, as Stud.IP's PHP asks: status and JSON body.
    pub async fn api_get(&self, path_and_query: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.http_url(path_and_query))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        status_and_json(resp).await
    }

    /// `GET path` without credentials: status and JSON body.
    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.http_url(path_and_query))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        status_and_json(resp).await
    }

    /// `GET /sse…`, optionally with `Authorization: Bearer`; the response as is.
    pub async fn sse_response(
        &self,
        path_and_query: &str,
        bearer: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .get(self.http_url(path_and_query))
            .header("Accept", "text/event-stream");
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"))
    }

    /// An accepted SSE stream (fails the test on any other status).
    pub async fn sse(&self, path_and_query: &str) -> SseStream {
        let resp = self.sse_response(path_and_query, None).await;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.text().await.unwrap_or_default();
            panic!("GET {path_and_query}: expected 200, got {status}: {body}");
        }
        SseStream::new(resp)
    }
}

/// Status and body; a body that is not JSON comes back as a JSON string so asserts show it.
pub async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Asserts the `{"error":{"code","message"}}` shape with the given code.
#[track_caller]
pub fn assert_http_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "status; body: {body}");
    assert_eq!(body["error"]["code"], want_code, "error code; body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error.message must be a non-empty string; body: {body}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_address_in_a_coloured_log_line() {
        let line = "\u{1b}[2m2025-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m stellwerk: \
                    listening on http://127.0.0.1:41234 (plugins: 3)";
        let plain = strip_ansi(line);
        assert!(!plain.contains('\u{1b}'), "{plain}");
        assert_eq!(
            listening_addr(&plain),
            Some(SocketAddr::from(([127, 0, 0, 1], 41234)))
        );
        assert_eq!(
            listening_addr("listening on http://127.0.0.1:9/"),
            Some(SocketAddr::from(([127, 0, 0, 1], 9)))
        );
        assert_eq!(listening_addr("starting up"), None);
    }
}
