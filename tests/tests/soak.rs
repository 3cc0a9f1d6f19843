//! The soak's short version (issue #9, scope 12): `stellwerk-bench soak --seconds 25` against
//! the real binary, with a small mix (2 WebSocket and 1 SSE witness, 4 churning WebSocket
//! clients and 1 SSE stream, 10 HTTP publishes a second, a plugin reload every 5 s), every
//! default limit in force. The bench judges: exit status 0 means no acknowledged message was
//! lost, duplicated or reordered at any witness, no churning subscriber saw a gap, no error
//! (a `rate_limited` included) happened, and the broker's descriptors and connections came
//! back to the witnesses' level. The test also reads the JSON line to see that every part of
//! the mix really ran. Nothing about speed is asserted.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use stellwerk_e2e::binary::{bench_binary, default_plugins_dir, stellwerk_binary};

/// The run takes 25 s plus start-up and draining; this only stops a hung run.
const BOUND: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread")]
async fn a_short_soak_loses_nothing_and_gives_every_descriptor_back() {
    let plugins = default_plugins_dir();
    assert!(
        plugins.join("course.wasm").is_file(),
        "run `cargo xtask build-plugins` first"
    );
    let dir = std::env::temp_dir().join(format!("stellwerk-soak-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("soak.jsonl");
    let child = tokio::process::Command::new(bench_binary())
        .arg("--stellwerk-bin")
        .arg(stellwerk_binary())
        .arg("--plugins-dir")
        .arg(&plugins)
        .arg("--log-dir")
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .args([
            "soak",
            "--seconds",
            "25",
            "--witnesses",
            "2",
            "--sse-witnesses",
            "1",
        ])
        .args([
            "--churners",
            "4",
            "--sse-churners",
            "1",
            "--http-rate",
            "10",
        ])
        .args([
            "--command-rate",
            "4",
            "--reload-every",
            "5",
            "--sample-every",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting stellwerk-bench");
    let output = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("the soak did not end within its bound")
        .expect("waiting for stellwerk-bench");
    let report = format!(
        "stdout:\n{}\nstderr:\n{}\nbroker log (tail):\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        tail(&dir.join("stellwerk-soak.log"))
    );
    assert!(output.status.success(), "the soak failed\n{report}");

    let line = std::fs::read_to_string(&out).expect("the soak wrote no JSON line");
    let run: Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(run["scenario"], "soak");
    assert_eq!(run["passed"], true, "{report}");
    let results = &run["results"];

    // Every part of the mix ran at least once.
    for operation in [
        "ws connects",
        "client closes",
        "API disconnects",
        "socket drops",
        "sse streams",
        "subscribes",
        "unsubscribes",
        "HTTP publishes",
        "client publishes",
        "presence",
        "history reads",
        "refreshes",
        "plugin uploads",
        "plugin reloads",
    ] {
        let done = results["operations"][operation].as_u64().unwrap_or(0);
        assert!(done > 0, "no {operation} in the run\n{report}");
    }

    // Each witness received every message of both channels, and nothing else.
    let total: u64 = results["acknowledged"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    let witnesses = results["witnesses"].as_array().unwrap();
    assert_eq!(witnesses.len(), 3, "2 WebSocket witnesses and 1 SSE");
    for w in witnesses {
        assert_eq!(w["received"], total, "{w}\n{report}");
        assert_eq!(w["faults"]["lost"], 0, "{w}");
        assert_eq!(w["failure"], Value::Null, "{w}");
    }
    let fds_start = results["fds_start"].as_u64().unwrap();
    let fds_end = results["fds_end"].as_u64().unwrap();
    let slack = results["fd_slack"].as_u64().unwrap();
    assert!(
        fds_end <= fds_start + slack,
        "{fds_end} > {fds_start} + {slack}"
    );
    assert_eq!(
        results["connections_end"], 3.0,
        "only the witnesses are left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
