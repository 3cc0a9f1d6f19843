//! A broker on a machine whose cores are busy with other work (a compile, a backup, another
//! service): a plugin call that waits for a core is not mistaken for a loop. The time limit
//! of a call counts the CPU it uses, so an honest call is not stopped, however long the broker
//! waits for the CPU (up to 10 × the limit), and its message is delivered.

use std::process::{Child, Command, Stdio};

use serde_json::json;
use stellwerk_e2e::plugin_dir::PluginDir;
use stellwerk_e2e::Server;

/// Processes that keep CPU 0 busy until dropped, and end by themselves after two minutes
/// should the test die without dropping them.
struct Spinners(Vec<Child>);

/// A busy loop that looks at the clock every 100,000 rounds.
const SPIN: &str = "end=$(($(date +%s) + 120)); i=0; \
    while :; do i=$((i + 1)); if [ $i -ge 100000 ]; then i=0; [ $(date +%s) -ge $end ] && exit 0; fi; done";

impl Spinners {
    fn on_cpu0(count: usize) -> Self {
        Self(
            (0..count)
                .map(|_| {
                    // taskset execs sh: the child is the loop itself, so killing it ends it.
                    Command::new("taskset")
                        .args(["-c", "0", "sh", "-c", SPIN])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("spawn a spinner (taskset)")
                })
                .collect(),
        )
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Moves every thread of `pid` to CPU 0 at a lower priority; threads it starts later inherit
/// both.
fn starve(pid: u32) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run taskset");
    assert!(status.success(), "taskset -a -p -c 0 {pid}");
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid = task.file_name().to_string_lossy().into_owned();
        let status = Command::new("renice")
            .args(["-n", "5", "-p", &tid])
            .stdout(Stdio::null())
            .status()
            .expect("run renice");
        assert!(status.success(), "renice -n 5 -p {tid}");
    }
}

const ADMIN_TOKEN: &str = "busy-machine-admin-token";

/// Seconds `slowfilter`'s `filter` has spent in calls so far (`/metrics`).
async fn filter_seconds(server: &Server) -> f64 {
    let text = reqwest::Client::new()
        .get(server.http_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the /metrics body");
    let series =
        "stellwerk_plugin_call_duration_seconds_sum{plugin=\"slowfilter\",hook=\"filter\"}";
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse()
        .expect("a number of seconds")
}

/// Publishes on `slow:busy` a message whose `filter` computes `work` rounds; the subscriber
/// must receive it.
async fn publish_work(server: &Server, ws: &mut stellwerk_e2e::WsClient, n: u64, work: u64) {
    let (status, body) = server
        .publish(&json!({"channel": "slow:busy", "data": {"n": n, "work": work}}))
        .await;
    assert_eq!(status, 200, "publish {n}: {body}");
    let push = ws.recv_skipping_presence().await;
    assert_eq!(
        push["data"]["n"],
        n,
        "message {n} was filtered away: {push}\n{}",
        server.log()
    );
}

#[tokio::test]
async fn honest_calls_that_wait_for_a_core_are_not_stopped_as_loops() {
    let dir = PluginDir::with(&["public", "slowfilter"]);
    let server = Server::builder()
        .plugins_dir(dir.path())
        .env("STELLWERK_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    let (mut ws, _) = server.subscriber("reader", "slow:busy").await;

    // On the idle machine: enough work for a filter call of about 30 ms of CPU, well within
    // the 100 ms limit.
    let mut work = 1_000_000;
    let mut n = 0;
    let per_call = loop {
        let before = filter_seconds(&server).await;
        publish_work(&server, &mut ws, n, work).await;
        n += 1;
        let took = filter_seconds(&server).await - before;
        if took >= 0.015 || work >= 1 << 36 {
            break took;
        }
        work *= 2;
    };
    let work = ((work as f64) * 0.030 / per_call) as u64;

    // Now the broker gets about a tenth of one core: the same call takes some 300 ms of wall
    // time, three times the limit, while computing for 30 ms.
    starve(server.pid());
    let spinners = Spinners::on_cpu0(3);
    for _ in 0..3 {
        publish_work(&server, &mut ws, n, work).await;
        n += 1;
    }
    drop(spinners);
    let log = server.log();
    assert!(
        !log.contains("exceeded its time limit"),
        "an honest call was stopped:\n{log}"
    );
}
