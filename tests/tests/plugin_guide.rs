//! `docs/plugin-guide.md`, followed literally: a plugin author's crate made with
//! `cargo new --lib`, the guide's `file=` blocks written into it, its unit tests run with plain
//! `cargo test`, the component built with `cargo xtask build-plugin`, then a real broker serving
//! only that component and real clients checking what the guide's section 6 promises.
//!
//! Every step that fails fails the test with the step's command and output; nothing is
//! skipped. The crate lives in a fresh directory outside the checkout (as the guide says);
//! its native build goes to `target/plugin-guide` and its wasm build to xtask's shared
//! `target/plugins-build`, so repeated runs are fast.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::binary::workspace_root;
use stellwerk_e2e::guide;
use stellwerk_e2e::{assert_ws_error, Server, WsClient};

/// The guide, relative to the workspace root.
const GUIDE: &str = "docs/plugin-guide.md";
/// The SDK dependency as the guide writes it (a checkout next to the plugin crate); the only
/// text of the guide the test replaces, with the real checkout's `plugin-sdk`.
const SDK_PATH_IN_GUIDE: &str = "\"../stellwerk/plugin-sdk\"";
/// Upper bound for one cargo step (a cold build compiles the SDK and perhaps wasm's `std`).
const STEP_TIMEOUT: Duration = Duration::from_secs(15 * 60);

// The values the guide's section 6 uses.
const THREAD: &str = "blubber:thread:6b1f0e2c9a8d4e7f8a9b0c1d2e3f4a5b";
const OTHER_THREAD: &str = "blubber:thread:0c4b9e7d2f1a4b3c8d9e0f1a2b3c4d5e";
const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const GRACE: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
/// Section 7's edit, as the guide writes it.
const RULE_BEFORE: &str = "\"browsers may only send blubber.typing\"";
const RULE_AFTER: &str = "\"browsers may only say that they are typing\"";

/// One fenced code block the reader is told to save as `file`.
#[derive(Debug)]
struct FileBlock {
    file: String,
    text: String,
}

/// Every fenced block whose info string carries `file=PATH` (e.g. ```` ```rust file=src/lib.rs ````).
fn file_blocks(markdown: &str) -> Vec<FileBlock> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let fence_len = trimmed.chars().take_while(|c| *c == '`').count();
        if fence_len < 3 {
            continue;
        }
        let fence = &trimmed[..fence_len];
        let info = &trimmed[fence_len..];
        let mut body = Vec::new();
        let mut closed = false;
        for inner in lines.by_ref() {
            if inner.trim() == fence {
                closed = true;
                break;
            }
            body.push(inner);
        }
        assert!(closed, "{GUIDE}: unclosed code block `{trimmed}`");
        let file = info
            .split_whitespace()
            .find_map(|word| word.strip_prefix("file="));
        if let Some(file) = file {
            blocks.push(FileBlock {
                file: file.to_owned(),
                text: body.join("\n") + "\n",
            });
        }
    }
    blocks
}

/// `name = "…"` of the `[package]` table.
fn package_name(cargo_toml: &str) -> String {
    let mut in_package = false;
    for line in cargo_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if let Some((key, value)) = line.split_once('=') {
            if in_package && key.trim() == "name" {
                return value.trim().trim_matches('"').to_owned();
            }
        }
    }
    panic!("{GUIDE}: the Cargo.toml block has no [package] name:\n{cargo_toml}");
}

fn step(what: &str, cmd: &mut Command, logs: &Path) -> (String, String) {
    guide::step(what, cmd, logs, STEP_TIMEOUT)
}

/// Sum of `N passed` over cargo test's `test result:` lines.
fn tests_passed(output: &str) -> usize {
    output
        .lines()
        .filter_map(|line| line.strip_prefix("test result: ok. "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum()
}

/// A fresh directory under the system's temp dir (outside the checkout, as the guide says).
fn fresh_dir() -> PathBuf {
    guide::fresh_dir("stellwerk-plugin-guide")
}

/// Sections 2–5 of the guide. Returns the plugins directory holding the built component
/// and the component's file name.
fn follow_the_tutorial(work: &Path) -> (PathBuf, String) {
    let root = workspace_root();
    let guide = fs::read_to_string(root.join(GUIDE)).expect("read the guide");
    let blocks = file_blocks(&guide);
    let files: Vec<&str> = blocks.iter().map(|b| b.file.as_str()).collect();
    for required in ["Cargo.toml", "src/lib.rs"] {
        assert!(
            files.contains(&required),
            "{GUIDE} has no ```… file={required} block; it has {files:?}"
        );
    }
    for (i, file) in files.iter().enumerate() {
        assert!(
            !files[..i].contains(file),
            "{GUIDE}: two blocks claim file={file}"
        );
        assert!(
            !file.starts_with('/') && !file.split('/').any(|part| part == ".."),
            "{GUIDE}: file={file} must be a path inside the crate"
        );
    }
    let manifest = &blocks.iter().find(|b| b.file == "Cargo.toml").unwrap().text;
    let name = package_name(manifest);

    // Section 2: `cargo new --lib <name>` outside the checkout.
    let new_cmd = format!("cargo new --lib {name}");
    assert!(
        guide.contains(&new_cmd),
        "{GUIDE} should tell the reader to run `{new_cmd}` (the Cargo.toml block names the crate `{name}`)"
    );
    let logs = work.join("logs");
    fs::create_dir_all(&logs).expect("create logs dir");
    step(
        "cargo new",
        Command::new(env!("CARGO"))
            .args(["new", "--lib", &name])
            .current_dir(work),
        &logs,
    );
    let krate = work.join(&name);

    // Sections 2–4: the blocks, as the reader saves them.
    assert_eq!(
        manifest.matches(SDK_PATH_IN_GUIDE).count(),
        1,
        "the Cargo.toml block should depend on the SDK at {SDK_PATH_IN_GUIDE}"
    );
    let sdk = root.join("plugin-sdk");
    let sdk = format!("{:?}", sdk.to_str().expect("checkout path is UTF-8"));
    for block in &blocks {
        let path = krate.join(&block.file);
        fs::create_dir_all(path.parent().unwrap()).expect("create directories");
        let text = match block.file.as_str() {
            "Cargo.toml" => block.text.replace(SDK_PATH_IN_GUIDE, &sdk),
            _ => block.text.clone(),
        };
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    // Section 4: `cargo test` in the crate; every test of the guide's blocks must run and pass.
    let (stdout, _) = step(
        "cargo test",
        Command::new(env!("CARGO"))
            .arg("test")
            .env("CARGO_TARGET_DIR", root.join("target").join("plugin-guide"))
            .current_dir(&krate),
        &logs,
    );
    let written_tests: usize = blocks
        .iter()
        .map(|b| b.text.matches("#[test]").count())
        .sum();
    assert!(written_tests > 0, "{GUIDE} shows no unit test");
    assert!(
        tests_passed(&stdout) >= written_tests,
        "the guide shows {written_tests} tests but `cargo test` passed {}:\n{stdout}",
        tests_passed(&stdout)
    );

    // Section 5: `cargo xtask build-plugin <crate>` from the checkout, into our own dir.
    let plugins_dir = work.join("plugins");
    fs::create_dir_all(&plugins_dir).expect("create plugins dir");
    step(
        "cargo xtask build-plugin",
        Command::new(env!("CARGO"))
            .args(["xtask", "build-plugin"])
            .arg(&krate)
            .arg("--out-dir")
            .arg(&plugins_dir)
            .current_dir(&root),
        &logs,
    );
    let wasm = format!("{name}.wasm");
    assert!(
        plugins_dir.join(&wasm).is_file(),
        "cargo xtask build-plugin did not write {}",
        plugins_dir.join(&wasm).display()
    );
    (plugins_dir, wasm)
}

/// A page's WebSocket, authenticated with the token Stud.IP mints for a page showing `THREAD`.
async fn page(server: &Server, user: &str, name: &str) -> WsClient {
    let claims = json!({ "name": name, "channels": [THREAD] });
    let token = server.mint(user, claims, Duration::from_secs(3600));
    server.ws(&format!("/ws?token={token}")).await
}

async fn subscribe(ws: &mut WsClient, channel: &str) -> Value {
    ws.request(json!({ "type": "subscribe", "channel": channel }))
        .await
}

/// The next push, which must be a `message` on `THREAD`; returns its `data`.
async fn next_message(ws: &mut WsClient) -> Value {
    let push = ws.recv_json().await;
    assert_eq!(push["type"], "message", "expected a message push: {push}");
    assert_eq!(push["channel"], THREAD, "{push}");
    push["data"].clone()
}

#[tokio::test]
async fn the_plugin_guide_works_as_written() {
    let work = fresh_dir();
    let (plugins_dir, wasm) = tokio::task::spawn_blocking({
        let work = work.clone();
        move || follow_the_tutorial(&work)
    })
    .await
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));

    // Section 6: a broker whose plugin directory holds the component, and nothing else.
    let server = Server::builder().plugins_dir(&plugins_dir).start().await;
    let log = server.log();
    assert!(
        log.lines().any(|line| line.contains("plugin loaded")
            && line.contains(r#"plugin="blubber""#)
            && line.contains(&wasm)
            && line.contains(r#"namespaces=["blubber"]"#)),
        "the log should announce the plugin as the guide shows:\n{log}"
    );

    // The page subscribes to the thread its token lists, and is refused any other.
    let mut ada = page(&server, ADA, "Ada Lovelace").await;
    let reply = subscribe(&mut ada, THREAD).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channel"], THREAD, "{reply}");
    let reply = subscribe(&mut ada, OTHER_THREAD).await;
    assert_ws_error(&reply, "forbidden");
    assert_eq!(reply["message"], "this page may not follow that thread");

    // A token without the thread in `channels` (the guide's step 6 needs one that has it).
    let token = server.mint(GRACE, json!({ "name": "Grace" }), Duration::from_secs(3600));
    let mut stranger = server.ws(&format!("/ws?token={token}")).await;
    assert_ws_error(&subscribe(&mut stranger, THREAD).await, "forbidden");

    // PHP's publish (the guide's curl) reaches the page unchanged.
    let comment = json!({
        "type": "blubber.comment.created",
        "comment_id": "9f2c4e1a7b3d5f6e8a0b1c2d3e4f5a6b",
    });
    let (status, body) = server
        .publish(&json!({ "channel": THREAD, "data": comment }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["channel"], THREAD, "{body}");
    assert_eq!(next_message(&mut ada).await, comment);

    // Another page of the thread says "I am typing", claiming to be somebody else: the plugin
    // replaces who and when.
    let mut grace = page(&server, GRACE, "Grace Hopper").await;
    assert_eq!(subscribe(&mut grace, THREAD).await["type"], "subscribed");
    let reply = grace
        .request(json!({
            "type": "publish",
            "channel": THREAD,
            "data": { "type": "blubber.typing", "user": "somebody else" },
        }))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");
    for ws in [&mut ada, &mut grace] {
        let typing = next_message(ws).await;
        let mut keys: Vec<&String> = typing.as_object().expect("an object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["at", "name", "type", "user"], "{typing}");
        assert_eq!(typing["type"], "blubber.typing", "{typing}");
        assert_eq!(typing["user"], GRACE, "{typing}");
        assert_eq!(typing["name"], "Grace Hopper", "{typing}");
        assert!(
            typing["at"]
                .as_u64()
                .is_some_and(|ms| ms > 1_600_000_000_000),
            "`at` should be the broker's clock in ms: {typing}"
        );
    }

    // Browsers may not post comments, nor type in a thread their page does not follow.
    let reply = grace
        .request(json!({
            "type": "publish",
            "channel": THREAD,
            "data": { "type": "blubber.comment.created" },
        }))
        .await;
    assert_ws_error(&reply, "forbidden");
    assert_eq!(reply["message"], "browsers may only send blubber.typing");
    let reply = grace
        .request(json!({
            "type": "publish",
            "channel": OTHER_THREAD,
            "data": { "type": "blubber.typing" },
        }))
        .await;
    assert_ws_error(&reply, "forbidden");

    // Nothing refused leaked: the next thing the page hears is PHP's next message.
    let marker = json!({ "type": "blubber.comment.created", "comment_id": "marker" });
    server.publish_ok(THREAD, &marker).await;
    assert_eq!(next_message(&mut ada).await, marker);

    // Section 7: the edit, built into the same directory while both pages stay connected.
    let guide = fs::read_to_string(workspace_root().join(GUIDE)).expect("read the guide");
    for literal in [RULE_BEFORE, RULE_AFTER] {
        assert!(guide.contains(literal), "{GUIDE} no longer shows {literal}");
    }
    let krate = work.join("blubber");
    for file in ["src/lib.rs", "tests/rules.rs"] {
        let path = krate.join(file);
        if let Ok(text) = fs::read_to_string(&path) {
            fs::write(&path, text.replace(RULE_BEFORE, RULE_AFTER)).expect("edit the crate");
        }
    }
    tokio::task::spawn_blocking({
        let (root, krate, plugins_dir, logs) = (
            workspace_root(),
            krate.clone(),
            plugins_dir.clone(),
            work.join("logs"),
        );
        move || {
            step(
                "cargo xtask build-plugin again",
                Command::new(env!("CARGO"))
                    .args(["xtask", "build-plugin"])
                    .arg(&krate)
                    .arg("--out-dir")
                    .arg(&plugins_dir)
                    .current_dir(&root),
                &logs,
            )
        }
    })
    .await
    .expect("the rebuild");
    guide::wait_for_reload(&server, "blubber").await;
    let reply = grace
        .request(json!({
            "type": "publish",
            "channel": THREAD,
            "data": { "type": "blubber.comment.created" },
        }))
        .await;
    assert_ws_error(&reply, "forbidden");
    assert_eq!(
        reply["message"],
        RULE_AFTER.trim_matches('"'),
        "the new rule is live"
    );
    let marker = json!({ "type": "blubber.comment.created", "comment_id": "after-reload" });
    server.publish_ok(THREAD, &marker).await;
    assert_eq!(
        next_message(&mut ada).await,
        marker,
        "Ada stayed subscribed"
    );

    drop(server);
    // Keep the directory of a failed run for inspection; remove it after success.
    let _ = fs::remove_dir_all(&work);
}

/// A crate that implements the trait but forgets `export_plugin!` still links (the SDK brings
/// the WIT world); `build-plugin` must refuse it, naming the macro, instead of writing a
/// component the broker refuses at load with "no export `authorize-subscribe`".
#[test]
fn build_plugin_refuses_a_crate_without_export_plugin() {
    let work = fresh_dir();
    let logs = work.join("logs");
    fs::create_dir_all(&logs).expect("create logs dir");
    let krate = work.join("forgetful");
    fs::create_dir_all(krate.join("src")).expect("create the crate");
    let sdk = workspace_root().join("plugin-sdk");
    fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"forgetful\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
             [dependencies]\nstellwerk-plugin-sdk = {{ path = {:?} }}\n",
            sdk.to_str().expect("checkout path is UTF-8")
        ),
    )
    .expect("write Cargo.toml");
    fs::write(
        krate.join("src/lib.rs"),
        "use stellwerk_plugin_sdk::prelude::*;\n\n\
         pub struct Forgetful;\n\n\
         impl ChannelPlugin for Forgetful {\n    fn describe() -> Description {\n        \
         Description::new(\"forgetful\", \"0.1.0\").namespace(\"forgetful\", ChannelOptions::new())\n    }\n}\n",
    )
    .expect("write src/lib.rs");
    let out_dir = work.join("plugins");
    let output = Command::new(env!("CARGO"))
        .args(["xtask", "build-plugin"])
        .arg(&krate)
        .arg("--out-dir")
        .arg(&out_dir)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .expect("run cargo xtask build-plugin");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the build must fail:\n{}",
        guide::tail(&stderr)
    );
    assert!(
        stderr.contains("export_plugin!(YourPlugin);") && stderr.contains("`authorize-subscribe`"),
        "the error names the macro and the missing export:\n{}",
        guide::tail(&stderr)
    );
    assert!(
        !out_dir.join("forgetful.wasm").exists(),
        "no component is written"
    );
    let _ = fs::remove_dir_all(&work);
}

#[test]
fn file_blocks_are_found_by_their_info_string() {
    let markdown = "\
text
```toml file=Cargo.toml
[package]
name = \"x\"
```
```sh
cargo new --lib x
```
````rust file=src/lib.rs
```not a fence end
````
";
    let blocks = file_blocks(markdown);
    let files: Vec<&str> = blocks.iter().map(|b| b.file.as_str()).collect();
    assert_eq!(files, ["Cargo.toml", "src/lib.rs"]);
    assert_eq!(blocks[0].text, "[package]\nname = \"x\"\n");
    assert_eq!(blocks[1].text, "```not a fence end\n");
    assert_eq!(package_name(&blocks[0].text), "x");
    assert_eq!(
        tests_passed("test result: ok. 0 passed; 0 failed\ntest result: ok. 5 passed; 0 failed"),
        5
    );
}
