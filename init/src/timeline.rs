//! PID 1's part of the boot timeline: CLOCK_BOOTTIME milliseconds (the kernel's start is 0)
//! when PID 1 started and when the state partition was mounted, printed as
//! `berth: timeline phase=NAME ms=N` and handed to the agent in `BERTH_TIMELINE`, which prints
//! the rest and the summary.
//!
//! The first exec's start time survives the re-exec onto the tmpfs root in the environment
//! ([`PID1_ENV`]), so `pid1_started` is the kernel handing over to `/init`, not the re-exec.

/// Set before the re-exec: when the first `/init` started.
pub const PID1_ENV: &str = "BERTH_PID1_STARTED_MS";
/// The agent's variable (see the agent's `timeline` module).
pub const AGENT_ENV: &str = "BERTH_TIMELINE";

/// Milliseconds since the kernel started (CLOCK_BOOTTIME); 0 if the clock is unreadable.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, owned `ts`.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

/// The console message (after `berth: `) of a phase.
pub fn phase_message(phase: &str, ms: u64) -> String {
    format!("timeline phase={phase} ms={ms}")
}

/// The value of [`AGENT_ENV`]: every phase as `NAME=MS`, comma-separated.
pub fn agent_value(phases: &[(&str, u64)]) -> String {
    phases
        .iter()
        .map(|(p, ms)| format!("{p}={ms}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_agent_value() {
        assert_eq!(
            phase_message("pid1_started", 310),
            "timeline phase=pid1_started ms=310"
        );
        assert_eq!(
            agent_value(&[("pid1_started", 310), ("state_mounted", 402)]),
            "pid1_started=310,state_mounted=402"
        );
        assert!(boottime_ms() > 0);
    }
}
