//! A call's time limit counted in CPU time of the calling thread, not wall-clock time.
//!
//! Wasmtime's epoch interruption is wall-clock: on a machine that is busy with other work a
//! hook of a few microseconds can wait 100 ms for a core and be killed as if it had looped,
//! and PHP gets a 500 for an honest publish. So the epoch deadline only *checks*: it comes
//! every half limit, reads how much CPU the thread used since the last check
//! (`/proc/thread-self/schedstat`, read at deadlines only, never per call), and stops the call
//! when it computed for at least half of that window. A looping plugin on an idle machine is
//! stopped after about its limit (the first half-window's CPU is not known, so it is let run);
//! a starved call goes on until it is done, or until [`MAX_WINDOWS`] windows have passed
//! (10 × the limit in wall-clock time), whichever comes first.

use std::time::Duration;

use wasmtime::UpdateDeadline;

/// Half-limit windows a call may take in wall-clock time: 10 × the limit.
const MAX_WINDOWS: u32 = 20;

/// The check state of the call in progress on one store.
#[derive(Debug)]
pub(super) struct CpuBudget {
    /// Epoch ticks of one window (half the limit, rounded up, plus the tick in progress).
    window_ticks: u64,
    window: Duration,
    /// Thread CPU time at the previous check of this call.
    mark: Option<Duration>,
    windows: u32,
}

impl CpuBudget {
    pub(super) fn new(limit: Duration, tick: Duration) -> Self {
        let window = limit / 2;
        let ticks = window.as_nanos().div_ceil(tick.as_nanos()).max(1);
        Self {
            window_ticks: u64::try_from(ticks).unwrap_or(u64::MAX - 1) + 1,
            window,
            mark: None,
            windows: 0,
        }
    }

    /// The epoch deadline to set when a call starts (also resets the checks).
    pub(super) fn start_call(&mut self) -> u64 {
        self.mark = None;
        self.windows = 0;
        self.window_ticks
    }

    /// At an epoch deadline: go on for another window, or stop the call. `now` is the
    /// thread's CPU time; `None` (not measurable) stops it, as a wall-clock limit would.
    pub(super) fn on_deadline(&mut self, now: Option<Duration>) -> UpdateDeadline {
        self.windows += 1;
        let Some(now) = now else {
            // Two windows: the limit, as a wall-clock deadline.
            return if self.windows >= 2 {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(self.window_ticks)
            };
        };
        let busy = self
            .mark
            .replace(now)
            .is_some_and(|before| now.saturating_sub(before) >= self.window / 2);
        if busy || self.windows >= MAX_WINDOWS {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(self.window_ticks)
        }
    }
}

/// CPU time the calling thread has run, from `/proc/thread-self/schedstat` (nanoseconds on
/// the CPU, first field). `None` where the kernel does not offer it.
pub(super) fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    fn stops(decision: &UpdateDeadline) -> bool {
        matches!(decision, UpdateDeadline::Interrupt)
    }

    #[test]
    fn a_window_is_half_the_limit_plus_the_tick_in_progress() {
        let mut budget = CpuBudget::new(Duration::from_millis(100), TICK);
        assert_eq!(budget.start_call(), 6);
        let mut tiny = CpuBudget::new(Duration::from_millis(1), TICK);
        assert_eq!(tiny.start_call(), 2);
    }

    #[test]
    fn a_call_that_computes_through_a_window_is_stopped_at_the_second_deadline() {
        let mut budget = CpuBudget::new(Duration::from_millis(100), TICK);
        budget.start_call();
        let t0 = Duration::from_secs(7);
        assert!(!stops(&budget.on_deadline(Some(t0))));
        assert!(stops(
            &budget.on_deadline(Some(t0 + Duration::from_millis(50)))
        ));
    }

    #[test]
    fn a_starved_call_goes_on_until_ten_times_its_limit() {
        let mut budget = CpuBudget::new(Duration::from_millis(100), TICK);
        budget.start_call();
        let mut cpu = Duration::from_secs(7);
        let mut windows = 0;
        // A few milliseconds of CPU per 50 ms window: waiting for a core, not looping.
        while !stops(&budget.on_deadline(Some(cpu))) {
            cpu += Duration::from_millis(3);
            windows += 1;
            assert!(windows < 100, "never stopped");
        }
        assert_eq!(windows + 1, MAX_WINDOWS as usize);
    }

    #[test]
    fn every_call_starts_with_a_fresh_budget() {
        let mut budget = CpuBudget::new(Duration::from_millis(100), TICK);
        budget.start_call();
        for _ in 0..10 {
            budget.on_deadline(Some(Duration::from_secs(1)));
        }
        budget.start_call();
        let t0 = Duration::from_secs(2);
        assert!(!stops(&budget.on_deadline(Some(t0))));
        assert!(!stops(
            &budget.on_deadline(Some(t0 + Duration::from_millis(1)))
        ));
    }

    #[test]
    fn without_a_cpu_clock_the_deadline_is_wall_clock_as_before() {
        let mut budget = CpuBudget::new(Duration::from_millis(100), TICK);
        budget.start_call();
        assert!(!stops(&budget.on_deadline(None)));
        assert!(stops(&budget.on_deadline(None)));
    }

    #[test]
    fn this_thread_has_a_cpu_clock_that_advances() {
        let before = thread_cpu_time().expect("/proc/thread-self/schedstat");
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time().unwrap() > before);
    }
}
