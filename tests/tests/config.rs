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

/// A secret a config file accepts (64 hex characters).
fn good_secret() -> String {
    random_hex(32)
}

#[tokio::test]
async fn a_config_file_without_secrets_exits_2_instead_of_generating_them() {
    let file = TempConfig::new("[limits]\nqueue_capacity = 64\n");
    let (code, stderr) = Server::builder()
        .arg("--config")
        .arg(file.0.display())
        .unset("STELLWERK_API_KEY")
        .unset("STELLWERK_JWT_SECRET")
        .run_to_exit()
        .await;
    assert_refused(code, &stderr, "api_key is not set");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
    assert!(!stderr.contains("DEV ONLY"), "{stderr}");

    // The API key from the environment is not enough: the JWT key is missing too.
    let (code, stderr) = Server::builder()
        .arg("--config")
        .arg(file.0.display())
        .unset("STELLWERK_JWT_SECRET")
        .run_to_exit()
        .await;
    assert_refused(code, &stderr, "jwt.secret is not set");
}

#[tokio::test]
async fn short_secrets_with_a_config_file_exit_2_naming_the_setting_and_the_command() {
    let short = "sixteen-bytes!!!";
    let in_file = TempConfig::new(&format!("api_key = \"{short}\"\n"));
    let plain = TempConfig::new("[limits]\nqueue_capacity = 64\n");
    let cases = [
        (
            "api_key in the file",
            &in_file,
            None,
            "api_key is 16 bytes long",
        ),
        (
            "jwt.secret from the environment",
            &plain,
            Some("STELLWERK_JWT_SECRET"),
            "STELLWERK_JWT_SECRET: jwt.secret is 16 bytes long",
        ),
        (
            "admin_token from the environment",
            &plain,
            Some("STELLWERK_ADMIN_TOKEN"),
            "STELLWERK_ADMIN_TOKEN: admin_token is 16 bytes long",
        ),
    ];
    for (what, file, var, needle) in cases {
        let mut builder = Server::builder().arg("--config").arg(file.0.display());
        if file.0 == in_file.0 {
            builder = builder.unset("STELLWERK_API_KEY");
        }
        if let Some(var) = var {
            builder = builder.env(var, short);
        }
        let (code, stderr) = builder.run_to_exit().await;
        println!("{what}: {stderr}");
        assert_refused(code, &stderr, needle);
        assert!(
            stderr.contains("`openssl rand -hex 32`"),
            "{what}: {stderr}"
        );
        assert!(
            !stderr.contains(short),
            "{what}: the secret is not echoed: {stderr}"
        );
    }
}

#[tokio::test]
async fn an_admin_token_equal_to_the_api_key_exits_2() {
    let key = good_secret();
    let file = TempConfig::new(&format!("api_key = \"{key}\"\nadmin_token = \"{key}\"\n"));
    let (code, stderr) = Server::builder()
        .arg("--config")
        .arg(file.0.display())
        .unset("STELLWERK_API_KEY")
        .run_to_exit()
        .await;
    assert_refused(code, &stderr, "admin_token and api_key are the same");
    assert!(!stderr.contains(&key), "{stderr}");
}

#[tokio::test]
async fn secrets_from_a_config_file_are_used_and_nothing_is_generated() {
    let (api_key, admin) = (good_secret(), good_secret());
    let file = TempConfig::new(&format!(
        "api_key = \"{api_key}\"\nadmin_token = \"{admin}\"\n"
    ));
    let server = Server::builder()
        .arg("--config")
        .arg(file.0.display())
        .unset("STELLWERK_API_KEY")
        .start()
        .await;
    let resp = reqwest::Client::new()
        .post(server.http_url("/api/publish"))
        .bearer_auth(&api_key)
        .body(json!({"channel": "public:news", "data": 1}).to_string())
        .send()
        .await
        .expect("POST /api/publish");
    assert_eq!(resp.status().as_u16(), 200);
    let log = server.log();
    assert!(!log.contains("DEV ONLY"), "{log}");
    assert!(!log.contains(&api_key) && !log.contains(&admin), "{log}");
}

#[tokio::test]
async fn short_secrets_on_the_embedded_default_only_warn() {
    let server = Server::builder()
        .env("STELLWERK_ADMIN_TOKEN", "dev-admin")
        .start()
        .await;
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("admin_token is 9 bytes long")
            && l.contains("openssl rand -hex 32")),
        "{log}"
    );
    assert!(!log.contains("dev-admin"), "{log}");
}
