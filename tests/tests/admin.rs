//! The admin API for plugins (DESIGN §3 "Admin", issue #4): `GET /admin/plugins`,
//! `POST /admin/plugins/reload`, `POST /admin/plugins/{name}/reload`,
//! `PUT /admin/plugins/{name}`, `DELETE /admin/plugins/{name}`, behind the admin token,
//! optionally on their own listener; and the `stellwerk plugins …` CLI that calls them.

mod deploy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use deploy::{bytes_of, plugin_dir, sha256, start, Admin, Deploy, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use stellwerk_e2e::{assert_http_error, assert_ws_error, Server};

#[tokio::test]
async fn the_admin_api_needs_the_admin_token_and_never_accepts_the_api_key() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let base = server.http_url("");
    let v2 = bytes_of("gate-v2");
    for token in [None, Some(server.api_key()), Some("wrong-token")] {
        let admin = Admin::at(&base, token);
        let calls: [(Method, &str, Option<Vec<u8>>); 5] = [
            (Method::GET, "/admin/plugins", None),
            (Method::POST, "/admin/plugins/reload", None),
            (Method::POST, "/admin/plugins/gate/reload", None),
            (Method::PUT, "/admin/plugins/gate", Some(v2.clone())),
            (Method::DELETE, "/admin/plugins/gate", None),
        ];
        for (method, path, body) in calls {
            let (status, body) = admin.send(method, path, body).await;
            assert_http_error(status, &body, 401, "unauthorized");
        }
    }
    // Nothing changed.
    let gate = Admin::new(&server)
        .plugin("gate")
        .await
        .expect("gate listed");
    assert_eq!(gate["version"], "1.0.0", "{gate}");
    assert!(dir.file("gate.wasm").is_file());
}

#[tokio::test]
async fn without_an_admin_token_the_admin_api_is_off() {
    let dir = plugin_dir();
    let server = Server::builder().plugins_dir(dir.path()).start().await;
    let admin = Admin::at(&server.http_url(""), Some("anything"));
    let (status, body) = admin.send(Method::GET, "/admin/plugins", None).await;
    assert_http_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn the_list_shows_what_runs_with_its_counters() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let (mut ws, _) = server.subscriber("u1", "gate:room").await;
    server.publish_ok("gate:room", &json!({"n": 1})).await;
    ws.recv_json().await;

    let plugins = admin.plugins().await;
    let names: Vec<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["gate", "public"], "{plugins:?}");
    let gate = &plugins[0];
    assert_eq!(gate["state"], "loaded");
    assert_eq!(gate["version"], "1.0.0");
    assert_eq!(gate["namespaces"], json!(["gate"]));
    assert_eq!(gate["sha256"], sha256(&bytes_of("gate")));
    assert_eq!(gate["last_error"], Value::Null);
    assert!(
        gate["loaded_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "RFC 3339 UTC: {gate}"
    );
    assert!(
        gate["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("gate.wasm")),
        "{gate}"
    );
    // One subscribe, one publish (filter is not used by gate).
    assert_eq!(gate["calls"], 2, "{gate}");
    assert_eq!(gate["faults"], 0, "{gate}");
    assert_eq!(gate["hooks"]["authorize-subscribe"]["calls"], 1, "{gate}");
    assert_eq!(gate["hooks"]["on-publish"]["calls"], 1, "{gate}");
    assert!(
        gate["latency_p99_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{gate}"
    );
    // Calls one after another: the instance `describe` ran on served both, back in the pool.
    assert_eq!(
        gate["instances"],
        json!({"live": 1, "idle": 1, "created": 1}),
        "{gate}"
    );
}

#[tokio::test]
async fn an_upload_goes_live_is_written_atomically_and_survives_a_restart() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let (mut ws, _) = server.subscriber("u1", "gate:room").await;

    let v2 = bytes_of("gate-v2");
    let (status, body) = admin.upload("gate", v2.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "loaded", "{body}");
    assert_eq!(body["plugin"]["version"], "2.0.0", "{body}");
    assert_eq!(body["plugin"]["sha256"], sha256(&v2), "{body}");
    assert_eq!(
        body["reauthorized"],
        json!({"kept": 1, "revoked": 0}),
        "{body}"
    );
    // On disk, complete, and no temporary file left behind.
    assert_eq!(std::fs::read(dir.file("gate.wasm")).unwrap(), v2);
    assert_eq!(dir.entries(), ["gate.wasm", "public.wasm"]);

    server.publish_ok("gate:room", &json!({"n": 1})).await;
    let push = ws.recv_json().await;
    assert_eq!(push["data"]["version"], "2.0.0", "{push}");

    // The watcher sees the renamed file too, finds the same bytes and does not load again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let listed = admin.plugin("gate").await.expect("gate listed");
    assert_eq!(listed["loaded_at"], body["plugin"]["loaded_at"], "{listed}");
    assert_eq!(
        server.log().matches("plugin reloaded").count(),
        1,
        "{}",
        server.log()
    );

    // Uploading the same bytes again changes nothing.
    let (status, again) = admin.upload("gate", v2.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["outcome"], "unchanged", "{again}");

    // A new plugin by upload.
    let (status, user) = admin.upload("user", bytes_of("user")).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["outcome"], "loaded", "{user}");
    assert!(dir.file("user.wasm").is_file());

    drop(ws);
    drop(server);
    let restarted = start(&dir, &[]).await;
    let admin = Admin::new(&restarted);
    let gate = admin
        .plugin("gate")
        .await
        .expect("gate listed after restart");
    assert_eq!(gate["version"], "2.0.0", "{gate}");
    assert!(
        admin.plugin("user").await.is_some(),
        "user survives the restart"
    );
}

#[tokio::test]
async fn a_refused_upload_changes_nothing_and_says_why() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let v1 = bytes_of("gate");

    let (status, body) = admin.upload("gate", b"not a component".to_vec()).await;
    assert_http_error(status, &body, 400, "bad_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not a valid component"), "{body}");

    // The public plugin's bytes under gate's name.
    let (status, body) = admin.upload("gate", bytes_of("public")).await;
    assert_http_error(status, &body, 400, "bad_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"public\""),
        "{body}"
    );

    // A plugin whose namespace is taken: gate configured as gate2 on `public`.
    std::fs::write(
        dir.file("gate2.toml"),
        "name = \"gate2\"\nnamespaces = [\"public\"]\n",
    )
    .unwrap();
    let (status, body) = admin.upload("gate2", v1.clone()).await;
    assert_http_error(status, &body, 400, "bad_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("plugin \"public\"") && message.contains("plugin \"gate2\""),
        "names both plugins: {body}"
    );

    let (status, body) = admin.upload(".hidden", v1.clone()).await;
    assert_http_error(status, &body, 400, "bad_request");

    // Nothing was written or swapped.
    assert_eq!(std::fs::read(dir.file("gate.wasm")).unwrap(), v1);
    assert_eq!(dir.entries(), ["gate.wasm", "gate2.toml", "public.wasm"]);
    let gate = admin.plugin("gate").await.expect("gate listed");
    assert_eq!(
        (&gate["state"], &gate["version"]),
        (&json!("loaded"), &json!("1.0.0"))
    );
    assert!(admin.plugin("gate2").await.is_none());
}

#[tokio::test]
async fn an_oversized_upload_is_refused_with_413() {
    let dir = plugin_dir();
    let server = start(&dir, &[("STELLWERK_PLUGINS_MAX_UPLOAD_BYTES", "1048576")]).await;
    let admin = Admin::new(&server);
    // Far more than the socket buffers hold: the client still gets the answer, not a reset.
    let (status, body) = admin.upload("gate", vec![0; 8 << 20]).await;
    assert_http_error(status, &body, 413, "too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_upload_bytes"),
        "{body}"
    );
    assert_eq!(
        std::fs::read(dir.file("gate.wasm")).unwrap(),
        bytes_of("gate")
    );
    // Under the limit, the same server takes it.
    let (status, body) = admin.upload("gate", bytes_of("gate-v2")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn reload_endpoints_load_what_is_on_disk_on_demand() {
    let dir = plugin_dir();
    // Without the watcher, only the admin calls reload.
    let server = start(&dir, &[("STELLWERK_PLUGINS_WATCH", "false")]).await;
    let admin = Admin::new(&server);
    let (mut ws, _) = server.subscriber("u2", "gate:room").await;

    let (status, body) = admin.reload("gate").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "unchanged", "{body}");

    std::fs::write(
        dir.file("gate.toml"),
        "revision = \"r3\"\ndeny = [\"u2\"]\n",
    )
    .unwrap();
    let (status, body) = admin.reload("gate").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "loaded", "{body}");
    assert_eq!(body["plugin"]["version"], "1.0.0+r3", "{body}");
    assert_eq!(
        body["reauthorized"],
        json!({"kept": 0, "revoked": 1}),
        "{body}"
    );
    let push = ws.recv_json().await;
    assert_eq!(push["type"], "unsubscribed", "{push}");

    // A broken file: 400 with the reason, the running version stays and shows it.
    dir.replace_atomically("gate.wasm", b"garbage");
    let (status, body) = admin.reload("gate").await;
    assert_http_error(status, &body, 400, "bad_request");
    let gate = admin.plugin("gate").await.expect("gate listed");
    assert_eq!(gate["state"], "stale", "{gate}");
    assert_eq!(gate["version"], "1.0.0+r3", "{gate}");

    // Reload all: the new file is picked up, the broken one reported.
    dir.replace_atomically("user.wasm", &bytes_of("user"));
    let (status, body) = admin.reload_all().await;
    assert_eq!(status, 200, "{body}");
    let outcome = |name: &str| {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["outcome"].clone())
    };
    assert_eq!(outcome("user"), Some(json!("loaded")), "{body}");
    assert_eq!(outcome("public"), Some(json!("unchanged")), "{body}");
    assert_eq!(outcome("gate"), Some(json!("refused")), "{body}");

    let (status, body) = admin.reload("nosuch").await;
    assert_http_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn delete_removes_the_file_and_unloads_the_plugin() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);
    let (mut ws, _) = server.subscriber("u1", "gate:room").await;

    let (status, body) = admin.remove("gate").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "unloaded", "{body}");
    assert_eq!(
        body["reauthorized"],
        json!({"kept": 0, "revoked": 1}),
        "{body}"
    );
    assert!(!dir.file("gate.wasm").exists());

    let push = ws.recv_json().await;
    assert_eq!(push["type"], "unsubscribed", "{push}");
    assert_eq!(push["channel"], "gate:room", "{push}");
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "gate:room"}))
        .await;
    assert_ws_error(&reply, "not_found");
    let (status, body) = server
        .publish(&json!({"channel": "gate:room", "data": {}}))
        .await;
    assert_http_error(status, &body, 404, "not_found");

    let (status, body) = admin.remove("gate").await;
    assert_http_error(status, &body, 404, "not_found");
    assert!(admin.plugin("gate").await.is_none());
}

/// The admin listener's address, from the broker's log.
async fn admin_addr(server: &Server) -> SocketAddr {
    const LINE: &str = "admin API and /metrics on http://";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        if let Some(rest) = log.find(LINE).map(|i| &log[i + LINE.len()..]) {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            return rest[..end].parse().expect("admin address");
        }
        assert!(
            Instant::now() < deadline,
            "no admin listener in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn on_its_own_listener_the_admin_api_moves_there_and_metrics_are_open() {
    let dir = plugin_dir();
    let server = start(&dir, &[("STELLWERK_ADMIN_LISTEN", "127.0.0.1:0")]).await;
    let addr = admin_addr(&server).await;
    let base = format!("http://{addr}");

    let admin = Admin::at(&base, Some(ADMIN_TOKEN));
    assert_eq!(admin.plugins().await.len(), 2);
    let (status, body) = Admin::at(&base, None)
        .send(Method::GET, "/admin/plugins", None)
        .await;
    assert_http_error(status, &body, 401, "unauthorized");

    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("stellwerk_connections"), "{text}");

    // Neither is on the public listener any more.
    let public = Admin::new(&server);
    let (status, _) = public.send(Method::GET, "/admin/plugins", None).await;
    assert_eq!(status, 404);
    let (status, _) = public.send(Method::GET, "/metrics", None).await;
    assert_eq!(status, 404);
}

/// Runs `stellwerk plugins <args>` against `server` and returns (exit code, stdout, stderr).
async fn cli(server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(stellwerk_e2e::binary::stellwerk_binary());
    cmd.arg("plugins")
        .args(args)
        .arg("--url")
        .arg(server.http_url(""))
        .arg("--token")
        .arg(token);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STELLWERK_") {
            cmd.env_remove(key);
        }
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run stellwerk plugins");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_plugins_cli_lists_uploads_reloads_and_removes() {
    let dir = plugin_dir();
    let server = start(&dir, &[]).await;
    let admin = Admin::new(&server);

    let (code, out, err) = cli(&server, ADMIN_TOKEN, &["list"]).await;
    assert_eq!(code, 0, "{err}");
    let gate_line = out.lines().find(|l| l.starts_with("gate ")).expect(&out);
    assert!(
        gate_line.contains("loaded") && gate_line.contains("1.0.0"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("public ")), "{out}");

    let v2 = stellwerk_e2e::binary::workspace_root().join("target/test-plugins/gate-v2.wasm");
    let v2 = v2.to_str().unwrap();
    let (code, out, err) = cli(&server, ADMIN_TOKEN, &["upload", v2, "--name", "gate"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gate: loaded 2.0.0"), "{out}");
    assert_eq!(admin.plugin("gate").await.unwrap()["version"], "2.0.0");

    let (code, out, err) = cli(&server, ADMIN_TOKEN, &["reload", "gate"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gate: unchanged"), "{out}");
    let (code, out, err) = cli(&server, ADMIN_TOKEN, &["reload"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("public: unchanged"), "{out}");

    let (code, out, err) = cli(&server, ADMIN_TOKEN, &["remove", "gate", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(answer["outcome"], "unloaded", "{answer}");
    assert!(!dir.file("gate.wasm").exists());

    // Refusals: a message and a non-zero exit code.
    let (code, _, err) = cli(&server, server.api_key(), &["list"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = cli(&server, ADMIN_TOKEN, &["remove", "gate"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no plugin named"), "{err}");
}
