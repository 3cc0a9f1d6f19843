//! `docs/plugin-guide-js.md`, followed literally: `npm ci` in the SDK, `stellwerk-plugin init`
//! in a fresh directory outside the checkout, the guide's `file=` blocks written into the
//! plugin, `npm install`, `npm test` (`node --test`), `npx stellwerk-plugin build --out-dir`,
//! then a real broker serving only that directory and real clients checking what sections 6
//! and 7 promise: the rules, and the edit → build → hot reload loop with the subscribers
//! staying connected.
//!
//! Every step that fails fails the test with the step's command and output; nothing is skipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::binary::workspace_root;
use stellwerk_e2e::guide;
use stellwerk_e2e::{assert_ws_error, Server, WsClient};

const GUIDE: &str = "docs/plugin-guide-js.md";
/// Upper bound for one npm or build step.
const STEP_TIMEOUT: Duration = Duration::from_secs(5 * 60);

// The values the guide uses.
const NAME: &str = "forum";
const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const OTHER_COURSE: &str = "5b7e2c1d9f0a4e3b8c6d1a2f3e4b5c6d";
const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const BOB: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
/// Section 7's edit, as the guide writes it.
const BEFORE: &str = "const SHOW_NAMES = true;";
const AFTER: &str = "const SHOW_NAMES = false;";

fn topic() -> String {
    format!("forum:{COURSE}:7")
}

/// Every fenced block whose info string carries `file=PATH`, as (path, text).
fn file_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut body = Vec::new();
        for inner in lines.by_ref() {
            if inner.trim() == "```" {
                break;
            }
            body.push(inner);
        }
        if let Some(file) = info
            .split_whitespace()
            .find_map(|w| w.strip_prefix("file="))
        {
            blocks.push((file.to_owned(), body.join("\n") + "\n"));
        }
    }
    blocks
}

fn step(what: &str, cmd: &mut Command, logs: &Path) -> String {
    guide::step(what, cmd, logs, STEP_TIMEOUT).0
}

fn fresh_dir() -> PathBuf {
    let dir = guide::fresh_dir("stellwerk-plugin-guide-js");
    fs::create_dir_all(dir.join("logs")).expect("create the logs directory");
    dir
}

/// `# pass N` of node's test runner, and that it reported `# fail 0`.
fn node_passed(output: &str) -> usize {
    assert!(
        output.lines().any(|l| l.trim() == "# fail 0"),
        "node --test reported failures:\n{output}"
    );
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `# pass N` in:\n{output}"))
}

fn npx_build(plugin: &Path, plugins_dir: &Path, logs: &Path, what: &str) {
    let out = step(
        what,
        Command::new("npx")
            .args(["stellwerk-plugin", "build", "--out-dir"])
            .arg(plugins_dir)
            .current_dir(plugin),
        logs,
    );
    let wasm = plugins_dir.join(format!("{NAME}.wasm"));
    assert_eq!(
        out.trim(),
        wasm.to_str().unwrap(),
        "the build prints the component's path"
    );
}

/// Sections 1–5. Returns the plugin's directory and the plugins directory.
fn follow_the_tutorial(work: &Path, guide: &str) -> (PathBuf, PathBuf) {
    let root = workspace_root();
    let logs = work.join("logs");
    for literal in [
        "npm ci",
        "node ~/src/stellwerk/plugin-sdk/js/bin/stellwerk-plugin.js init forum",
        "npm install",
        "npm test",
        "npx stellwerk-plugin build --out-dir ~/stellwerk-plugins",
        "STELLWERK_LISTEN=127.0.0.1:8080 STELLWERK_PLUGINS_DIR=~/stellwerk-plugins",
        BEFORE,
        AFTER,
    ] {
        assert!(
            guide.contains(literal),
            "{GUIDE} no longer says `{literal}`"
        );
    }

    // Section 1: the build tools, from the SDK's lockfile.
    step(
        "npm ci in the SDK",
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(root.join("plugin-sdk/js")),
        &logs,
    );
    // Section 2: scaffold, then link the SDK.
    step(
        "stellwerk-plugin init",
        Command::new("node")
            .arg(root.join("plugin-sdk/js/bin/stellwerk-plugin.js"))
            .args(["init", NAME])
            .current_dir(work),
        &logs,
    );
    let plugin = work.join(NAME);
    for scaffolded in [
        "package.json",
        "plugin.js",
        "test/plugin.test.js",
        ".gitignore",
    ] {
        assert!(
            plugin.join(scaffolded).is_file(),
            "init wrote no {scaffolded}"
        );
    }
    step(
        "npm install",
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&plugin),
        &logs,
    );
    // Sections 3–4: the blocks, as the reader saves them; `npm test` runs every test shown.
    let blocks = file_blocks(guide);
    let files: Vec<&str> = blocks.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        ["plugin.js", "test/plugin.test.js"],
        "{GUIDE}'s file= blocks"
    );
    for (file, text) in &blocks {
        fs::write(plugin.join(file), text).unwrap_or_else(|e| panic!("write {file}: {e}"));
    }
    let shown = blocks
        .iter()
        .map(|(_, t)| t.matches("\ntest(").count())
        .sum::<usize>();
    let out = step(
        "npm test",
        Command::new("npm").arg("test").current_dir(&plugin),
        &logs,
    );
    assert_eq!(
        node_passed(&out),
        shown,
        "every test the guide shows ran:\n{out}"
    );

    // Section 5: into a plugin directory of our own.
    let plugins_dir = work.join("stellwerk-plugins");
    fs::create_dir_all(&plugins_dir).expect("create plugins dir");
    npx_build(&plugin, &plugins_dir, &logs, "npx stellwerk-plugin build");
    (plugin, plugins_dir)
}

async fn page(server: &Server, user: &str, claims: Value) -> WsClient {
    let token = server.mint(user, claims, Duration::from_secs(3600));
    server.ws(&format!("/ws?token={token}")).await
}

async fn subscribe(ws: &mut WsClient, channel: &str) -> Value {
    ws.request(json!({ "type": "subscribe", "channel": channel }))
        .await
}

/// The next push, which must be a message on the topic; returns its data.
async fn next_message(ws: &mut WsClient) -> Value {
    let push = ws.recv_json().await;
    assert_eq!(push["type"], "message", "expected a message: {push}");
    assert_eq!(push["channel"], topic(), "{push}");
    push["data"].clone()
}

async fn type_as(ws: &mut WsClient) -> Value {
    let reply = ws
        .request(json!({
            "type": "publish",
            "channel": topic(),
            "data": { "type": "forum.typing", "user": "x" },
        }))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");
    next_message(ws).await
}

#[tokio::test]
async fn the_javascript_plugin_guide_works_as_written() {
    let guide = fs::read_to_string(workspace_root().join(GUIDE)).expect("read the guide");
    let work = fresh_dir();
    let (plugin, plugins_dir) = tokio::task::spawn_blocking({
        let (work, guide) = (work.clone(), guide.clone());
        move || follow_the_tutorial(&work, &guide)
    })
    .await
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));

    // Section 6: `stellwerk serve` on that directory, and nothing else.
    let server = Server::builder().plugins_dir(&plugins_dir).start().await;
    let log = server.log();
    assert!(
        log.lines().any(|line| line.contains("plugin loaded")
            && line.contains(r#"plugin="forum""#)
            && line.contains(r#"namespaces=["forum"]"#)),
        "the log announces the plugin as the guide shows:\n{log}"
    );

    let topic = topic();
    let mut ada = page(
        &server,
        ADA,
        json!({"name": "Ada Lovelace", "courses": { COURSE: "tutor" }}),
    )
    .await;
    assert_eq!(subscribe(&mut ada, &topic).await["type"], "subscribed");
    let refused = subscribe(&mut ada, &format!("forum:{OTHER_COURSE}:1")).await;
    assert_ws_error(&refused, "forbidden");
    assert_eq!(refused["message"], "not a member of this course");
    let mut bob = page(&server, BOB, json!({"courses": { COURSE: "autor" }})).await;
    assert_eq!(subscribe(&mut bob, &topic).await["type"], "subscribed");

    // The typing notice, with who and when from the plugin.
    let typing = type_as(&mut ada).await;
    assert_eq!(typing["user"], ADA, "{typing}");
    assert_eq!(typing["name"], "Ada Lovelace", "{typing}");
    assert!(
        typing["at"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000),
        "{typing}"
    );
    assert_eq!(next_message(&mut bob).await, typing);

    // The server's staff posting reaches Ada (tutor), not Bob (autor).
    let posting = json!({"type": "forum.posting.created", "visibility": "staff"});
    server.publish_ok(&topic, &posting).await;
    assert_eq!(next_message(&mut ada).await, posting);
    let marker = json!({"type": "forum.posting.created", "id": "marker"});
    server.publish_ok(&topic, &marker).await;
    assert_eq!(
        next_message(&mut bob).await,
        marker,
        "Bob never saw the staff posting"
    );
    assert_eq!(next_message(&mut ada).await, marker);

    // Section 7: the edit, built into the same directory; the broker reloads it while Ada and
    // Bob stay connected and subscribed.
    let file = plugin.join("plugin.js");
    let source = fs::read_to_string(&file).expect("read plugin.js");
    assert_eq!(
        source.matches(BEFORE).count(),
        1,
        "plugin.js has `{BEFORE}` once"
    );
    fs::write(&file, source.replace(BEFORE, AFTER)).expect("edit plugin.js");
    let logs = work.join("logs");
    tokio::task::spawn_blocking({
        let (plugin, plugins_dir) = (plugin.clone(), plugins_dir.clone());
        move || {
            npx_build(
                &plugin,
                &plugins_dir,
                &logs,
                "npx stellwerk-plugin build again",
            )
        }
    })
    .await
    .expect("the rebuild");
    guide::wait_for_reload(&server, "forum").await;
    let anonymous = type_as(&mut ada).await;
    assert_eq!(anonymous["user"], ADA, "{anonymous}");
    assert_eq!(
        anonymous["name"],
        Value::Null,
        "the new rule is live: {anonymous}"
    );
    assert_eq!(
        next_message(&mut bob).await,
        anonymous,
        "Bob is still subscribed"
    );

    drop(server);
    let _ = fs::remove_dir_all(&work);
}
