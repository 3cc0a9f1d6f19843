//! What the kernel tells about a process: CPU time, resident memory, fd limits, load.
//!
//! The benchmark's deciding figures are per *server* CPU-second and per *server* KiB, so
//! they come from `/proc/<pid>`, not from wall-clock guesses.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// CPU time (user + system) a process has consumed so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    // After ')' come field 3 (state) onwards; utime is field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("short /proc/{pid}/stat");
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok((utime + stime) as f64 / clock_ticks_per_second())
}

/// CPU time of this load generator, to show how much of the 2 cores it took.
pub(crate) fn own_cpu_seconds() -> Result<f64> {
    cpu_seconds(std::process::id())
}

/// Resident set size of a process in KiB (`VmRSS`).
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// The most the process was ever resident (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS:`.
/// Address space of a process in KiB (`VmSize`): reserved, not necessarily resident.
pub(crate) fn vm_size_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmSize:")
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`): one per socket, so
/// a leaked connection shows here even when the broker's own gauges miss it.
pub(crate) fn open_fds(pid: u32) -> Result<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?;
    Ok(entries.count() as u64)
}

/// `sysconf(_SC_CLK_TCK)`, read through `getconf` because the workspace forbids `unsafe`.
fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Raises this process's open-file limit as far as allowed; children spawned afterwards
/// (the servers under test) inherit it. Returns the soft limit now in force.
pub(crate) fn raise_fd_limit(wanted: u64) -> u64 {
    let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return 0;
    };
    if soft >= wanted {
        return soft;
    }
    // As root the hard limit itself may go up; otherwise the soft one goes as far as the hard.
    let new_hard = hard.max(wanted);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, new_hard).is_ok() {
        return wanted;
    }
    rlimit::increase_nofile_limit(wanted).unwrap_or(soft)
}

/// The 1-minute load average, recorded with every result because the generator and the
/// servers share the machine's cores with whatever else runs.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
