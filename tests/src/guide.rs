//! Following a guide literally, as a new user would: each step a real command, its output
//! kept in files for the failure message.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::Server;

/// Runs one step of a guide; fails the test (with the command's output) unless it exits
/// successfully within `timeout`. Returns stdout and stderr.
pub fn step(what: &str, cmd: &mut Command, logs: &Path, timeout: Duration) -> (String, String) {
    let slug: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let out_path = logs.join(format!("{slug}.stdout"));
    let err_path = logs.join(format!("{slug}.stderr"));
    // Output to files, not pipes: a chatty cargo or npm can never block on a full pipe.
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("step `{what}`: cannot start {cmd:?}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for step") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => {
            eprintln!(
                "guide step `{what}`: ok in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            (stdout, stderr)
        }
        outcome => {
            let outcome = match outcome {
                Some(status) => format!("failed ({status})"),
                None => format!("did not finish within {timeout:?}"),
            };
            panic!(
                "step `{what}` {outcome}\ncommand: {cmd:?}\n----- stdout -----\n{}\n----- stderr -----\n{}",
                tail(&stdout),
                tail(&stderr)
            );
        }
    }
}

/// The last 150 lines: where cargo or npm says what went wrong.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
}

/// A fresh directory `<name>-<pid>-<nanos>` under the system's temp dir (outside the
/// checkout, where a guide's reader works).
pub fn fresh_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("{name}-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Waits until the broker logs that it hot-reloaded `plugin` (the guides' last step: the
/// rebuilt file dropped into the plugin directory); fails the test after 20 s.
pub async fn wait_for_reload(server: &Server, plugin: &str) {
    let label = format!("plugin=\"{plugin}\"");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server
        .log()
        .lines()
        .any(|l| l.contains("plugin reloaded") && l.contains(&label))
    {
        assert!(
            Instant::now() < deadline,
            "no `plugin reloaded` of {plugin} within 20 s:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
