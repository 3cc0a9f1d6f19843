//! Configuration as an operator meets it: a TOML file, `STELLWERK_*` variables, clear refusals.

use std::path::PathBuf;

use serde_json::json;
use stellwerk_e2e::{assert_http_error, random_hex, Server};

/// A config file in the temp dir, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("stellwerk-e2e-{}.toml", random_hex(8)));
        std::fs::write(&path, contents).expect("write config");
        Self(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Exit code 2 and exactly one non-empty line on stderr that mentions `needle`.
#[track_caller]
fn assert_refused(code: Option<i32>, stderr: &str, needle: &str) {
    assert_eq!(code, Some(2), "exit code; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line on stderr, got:\n{stderr}");
    assert!(
        lines[0].contains(needle),
        "the line should name {needle:?}: {}",
        lines[0]
    );
}

#[tokio::test]
async fn broken_config_files_exit_2_with_one_line() {
    let cases = [
        ("syntax error", "listen = \"127.0.0.1:0\"\n[limits\n", ""),
        (
            "unknown key",
            "[limits]\nqueue_capacityy = 5\n",
            "queue_capacityy",
        ),
        (
            "wrong type",
            "[limits]\nqueue_capacity = \"many\"\n",
            "queue_capacity",
        ),
        ("unknown section", "[nonsense]\nx = 1\n", "nonsense"),
    ];
    for (what, contents, needle) in cases {
        let file = TempConfig::new(contents);
        let (code, stderr) = Server::builder()
            .arg("--config")
            .arg(file.0.display())
            .run_to_exit()
            .await;
        println!("{what}: {stderr}");
        let name = file.0.file_name().unwrap().to_string_lossy().into_owned();
        // A syntax error can only point at the file; the others name the offending key.
        let needle = if needle.is_empty() {
            name.as_str()
        } else {
            needle
        };
        assert_refused(code, &stderr, needle);
    }
}

#[tokio::test]
async fn missing_config_file_exits_2_naming_it() {
    let path = std::env::temp_dir().join(format!("stellwerk-e2e-missing-{}.toml", random_hex(8)));
    let (code, stderr) = Server::builder()
        .arg("--config")
        .arg(path.display())
        .run_to_exit()
        .await;
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert_refused(code, &stderr, &name);
}

#[tokio::test]
async fn unknown_stellwerk_variable_exits_2() {
    let (code, stderr) = Server::builder()
        .env("STELLWERK_FOO", "1")
        .run_to_exit()
        .await;
    assert_refused(code, &stderr, "STELLWERK_FOO");
}

#[tokio::test]
async fn unparsable_variable_exits_2() {
    let (code, stderr) = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", "lots")
        .run_to_exit()
        .await;
    assert_refused(code, &stderr, "STELLWERK_LIMITS_QUEUE_CAPACITY");
}

#[tokio::test]
async fn config_file_settings_are_honoured() {
    let file = TempConfig::new("[limits]\nmax_publish_bytes = 2048\n");
    let server = Server::builder()
        .arg("--config")
        .arg(file.0.display())
        .start()
        .await;
    let (status, body) = server
        .publish(&json!({"channel": "public:news", "data": "x".repeat(100)}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .publish(&json!({"channel": "public:news", "data": "x".repeat(4096)}))
        .await;
    assert_http_error(status, &body, 413, "too_large");
}
