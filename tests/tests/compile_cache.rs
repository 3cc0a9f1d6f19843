//! The plugin compile cache (`[plugins] compile_cache`, `compile_cache_dir`): a broker that
//! starts again loads its compiled plugins from disk instead of compiling them, and a cache
//! that is damaged, switched off or cannot be created never costs a plugin.

use std::path::Path;

use serde_json::json;
use stellwerk_e2e::plugin_dir::PluginDir;
use stellwerk_e2e::{assert_ws_error, Server, ServerBuilder};

const COMPILED: &str = "component compiled";
const FROM_CACHE: &str = "component loaded from the compile cache";

/// A broker on `plugins` with its own compile cache in `cache`.
fn broker(plugins: &PluginDir, cache: &Path) -> ServerBuilder {
    Server::builder()
        .plugins_dir(plugins.path())
        .env("STELLWERK_PLUGINS_COMPILE_CACHE_DIR", cache.display())
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// A course member subscribes and receives a publish: the plugin really runs.
async fn course_works(server: &Server) {
    let course = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";
    let mut ws = server
        .ws_as(
            "e7a0a84b161f3e8c09b4a0a2e8a58147",
            json!({"perm": "autor", "courses": {"a07535cf2f8a72df33c12ddfa4b53dde": "autor"}}),
        )
        .await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": course}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let (status, body) = server
        .publish(&json!({"channel": course, "data": {"text": "hallo"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let push = ws.recv_skipping_presence().await;
    assert_eq!(push["data"]["text"], "hallo", "{push}");
}

#[tokio::test]
async fn a_javascript_plugin_is_compiled_once_and_loaded_from_disk_after_a_restart() {
    let plugins = PluginDir::with(&["blubber"]);
    let cache = PluginDir::with(&[]);

    let first = broker(&plugins, cache.path()).start().await;
    let log = first.log();
    assert_eq!(count(&log, COMPILED), 1, "{log}");
    assert_eq!(count(&log, FROM_CACHE), 0, "{log}");
    drop(first);
    assert!(
        !files_in(cache.path()).is_empty(),
        "the compiled component was written to {}",
        cache.path().display()
    );

    let second = broker(&plugins, cache.path()).start().await;
    let log = second.log();
    assert_eq!(count(&log, FROM_CACHE), 1, "{log}");
    assert_eq!(count(&log, COMPILED), 0, "{log}");
    // The cached code enforces the rules: an exact channel of the claim, nothing else.
    let thread = "blubber:0123456789abcdef0123456789abcdef";
    let mut ws = second
        .ws_as(
            "e7a0a84b161f3e8c09b4a0a2e8a58147",
            json!({ "channels": [thread] }),
        )
        .await;
    let ok = ws
        .request(json!({"type": "subscribe", "channel": thread}))
        .await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    let refused = ws
        .request(
            json!({"type": "subscribe", "channel": "blubber:fedcba9876543210fedcba9876543210"}),
        )
        .await;
    assert_ws_error(&refused, "forbidden");
}

#[tokio::test]
async fn a_damaged_cache_is_compiled_over_and_the_plugin_still_runs() {
    let plugins = PluginDir::with(&["course"]);
    let cache = PluginDir::with(&[]);
    drop(broker(&plugins, cache.path()).start().await);

    let entries = files_in(cache.path());
    assert!(!entries.is_empty(), "nothing was cached");
    for file in &entries {
        std::fs::write(file, b"not compiled code").unwrap();
    }

    let server = broker(&plugins, cache.path()).start().await;
    let log = server.log();
    assert_eq!(count(&log, COMPILED), 1, "{log}");
    assert_eq!(count(&log, FROM_CACHE), 0, "{log}");
    course_works(&server).await;
}

#[tokio::test]
async fn with_the_cache_off_nothing_is_written_and_every_start_compiles() {
    let plugins = PluginDir::with(&["course"]);
    let cache = PluginDir::with(&[]);
    for _ in 0..2 {
        let server = broker(&plugins, cache.path())
            .env("STELLWERK_PLUGINS_COMPILE_CACHE", "false")
            .start()
            .await;
        let log = server.log();
        assert_eq!(count(&log, COMPILED), 1, "{log}");
        assert!(log.contains("plugin compile cache off"), "{log}");
        course_works(&server).await;
    }
    assert_eq!(files_in(cache.path()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn a_configured_cache_directory_that_cannot_be_created_stops_the_start() {
    let plugins = PluginDir::with(&["course"]);
    // A directory cannot be made inside a regular file.
    let other = PluginDir::with(&["course"]);
    let blocker = other.file("course.wasm");
    let wanted = blocker.join("cache");
    let (code, log) = broker(&plugins, &wanted).run_to_exit().await;
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("cannot create the compile cache") && log.contains(&*wanted.to_string_lossy()),
        "the error names the directory: {log}"
    );
}

#[tokio::test]
async fn the_cache_directory_is_the_brokers_alone_and_a_shared_one_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let plugins = PluginDir::with(&["course"]);
    let parent = PluginDir::with(&[]);
    let created = parent.path().join("stellwerk").join("cache");
    let server = broker(&plugins, &created).start().await;
    let mode = std::fs::metadata(&created).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
    assert!(
        !server.log().contains("writable by other users"),
        "{}",
        server.log()
    );
    drop(server);

    let shared = parent.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let server = broker(&plugins, &shared).start().await;
    let log = server.log();
    assert!(log.contains("writable by other users"), "{log}");
    course_works(&server).await;
}
