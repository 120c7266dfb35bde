//! The boot timeline: when each boot phase was reached, as CLOCK_BOOTTIME milliseconds (the
//! kernel's start is 0), printed on the console on every boot so boot time is measured, not
//! guessed.
//!
//! PID 1 prints `pid1_started` and `state_mounted` itself and hands both to berthd in
//! `BERTH_TIMELINE`; berthd adds `agent_started`, `manifest_loaded`, `network_up` (when the
//! host NIC has its address: `net::host` marks it), `container_running name=...` per container and `ready`, derived
//! from the console events as they are printed, then one summary line and a footprint line
//! (PID 1 and agent RSS). Only a berthd started by PID 1 (which sets the variable) prints
//! them. The clock and /proc reads sit behind [`Clock`] and plain functions so the lines are
//! unit-tested.

use std::sync::Mutex;

use crate::console::Event;

/// The environment variable PID 1 passes its phases in (`pid1_started=N,state_mounted=M`).
pub const ENV: &str = "BERTH_TIMELINE";

/// Milliseconds since the kernel started.
pub trait Clock {
    /// CLOCK_BOOTTIME in milliseconds.
    fn boottime_ms(&self) -> u64;
}

/// The real clock: `clock_gettime(CLOCK_BOOTTIME)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn boottime_ms(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the valid, owned `ts`.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc != 0 {
            return 0;
        }
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
        secs * 1000 + nanos / 1_000_000
    }
}

/// The phases reached so far, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    phases: Vec<(String, u64)>,
    first_container: Option<u64>,
    summarized: bool,
}

impl Timeline {
    /// A timeline continuing PID 1's phases (`pid1_started=N,state_mounted=M`); malformed
    /// entries are skipped.
    pub fn from_env(value: &str) -> Timeline {
        let phases = value
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?)))
            .collect();
        Timeline {
            phases,
            ..Timeline::default()
        }
    }

    /// Record `phase` at `ms`; returns its console line.
    pub fn mark(&mut self, phase: &str, name: Option<&str>, ms: u64) -> String {
        if name.is_none() {
            self.phases.push((phase.to_owned(), ms));
        }
        match name {
            Some(name) => format!("berth: timeline phase={phase} name={name} ms={ms}"),
            None => format!("berth: timeline phase={phase} ms={ms}"),
        }
    }

    /// The timeline lines `event`, printed at `ms`, adds.
    pub fn observe(&mut self, event: &Event<'_>, ms: u64) -> Vec<String> {
        match event {
            Event::AgentStarted => vec![self.mark("agent_started", None, ms)],
            Event::ManifestSource { .. } => vec![self.mark("manifest_loaded", None, ms)],
            Event::Running { container, .. } => {
                self.first_container.get_or_insert(ms);
                vec![self.mark("container_running", Some(container), ms)]
            }
            Event::Ready { .. } => {
                let mut lines = vec![self.mark("ready", None, ms)];
                if !self.summarized {
                    self.summarized = true;
                    lines.push(self.summary());
                }
                lines
            }
            _ => Vec::new(),
        }
    }

    /// `berth: timeline summary PHASE=MS ... first_container_running=MS
    /// pid1_to_first_container=MS` (first time each phase was reached).
    pub fn summary(&self) -> String {
        let mut line = String::from("berth: timeline summary kernel_started=0");
        let mut seen: Vec<&str> = Vec::new();
        for (phase, ms) in &self.phases {
            if seen.contains(&phase.as_str()) {
                continue;
            }
            seen.push(phase);
            line.push_str(&format!(" {phase}={ms}"));
        }
        if let Some(first) = self.first_container {
            line.push_str(&format!(" first_container_running={first}"));
            if let Some((_, pid1)) = self.phases.iter().find(|(p, _)| p == "pid1_started") {
                line.push_str(&format!(
                    " pid1_to_first_container={}",
                    first.saturating_sub(*pid1)
                ));
            }
        }
        line
    }
}

/// The resident set in KiB from a `/proc/PID/smaps_rollup` text (`Rss:`, counted from the
/// page tables) or a `/proc/PID/status` text (`VmRSS:`, which kernels before 6.2 may report
/// stale for a process that rarely faults).
pub fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Rss:").or_else(|| l.strip_prefix("VmRSS:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `berth: footprint pid1_rss_kib=N agent_rss_kib=M` from the two smaps_rollup or status
/// texts.
pub fn footprint_line(pid1_status: &str, agent_status: &str) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "unknown".to_owned(), |v| v.to_string());
    format!(
        "berth: footprint pid1_rss_kib={} agent_rss_kib={}",
        show(rss_kib(pid1_status)),
        show(rss_kib(agent_status))
    )
}

/// `berth: footprint-state containers=N disk_kib=D agent_cpu_ms=C`: the per-container state
/// (upper, work, log; not the mounted roots) below `containers_dir` and berthd's CPU time so
/// far, from its `/proc/self/stat` text.
pub fn state_line(containers_dir: &std::path::Path, self_stat: &str) -> String {
    let mut count = 0;
    let mut bytes = 0;
    if let Ok(entries) = std::fs::read_dir(containers_dir) {
        for entry in entries.flatten() {
            count += 1;
            bytes += disk_bytes(&entry.path());
        }
    }
    // Fields 14 and 15 (utime, stime) follow the parenthesised command name.
    let ticks: Option<u64> = self_stat.rsplit_once(") ").and_then(|(_, rest)| {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let cpu = match (ticks, u64::try_from(hz).ok().filter(|h| *h > 0)) {
        (Some(t), Some(hz)) => (t * 1000 / hz).to_string(),
        _ => "unknown".to_owned(),
    };
    format!(
        "berth: footprint-state containers={count} disk_kib={} agent_cpu_ms={cpu}",
        bytes / 1024
    )
}

/// Bytes allocated on disk below `path`, not descending into `rootfs` (a mounted overlay).
fn disk_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            if entry.file_name() != "rootfs" {
                total += disk_bytes(&entry.path());
            }
        }
    }
    total
}

static TIMELINE: Mutex<Option<Timeline>> = Mutex::new(None);

/// The timeline lines to print after `event` (none unless PID 1 set [`ENV`]); called by
/// [`crate::console::emit`].
pub fn after(event: &Event<'_>) -> Vec<String> {
    let Ok(mut guard) = TIMELINE.lock() else {
        return Vec::new();
    };
    if guard.is_none() {
        let Some(value) = std::env::var_os(ENV) else {
            return Vec::new();
        };
        *guard = Some(Timeline::from_env(&value.to_string_lossy()));
    }
    let Some(timeline) = guard.as_mut() else {
        return Vec::new();
    };
    let first_ready = matches!(event, Event::Ready { .. }) && !timeline.summarized;
    let mut lines = timeline.observe(event, BootClock.boottime_ms());
    if first_ready {
        let read = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .or_else(|_| std::fs::read_to_string(format!("/proc/{pid}/status")))
                .unwrap_or_default()
        };
        lines.push(footprint_line(&read("1"), &read("self")));
        if let Some(state) = std::env::var_os("BERTH_STATE_DIR") {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let dir = std::path::Path::new(&state).join("containers");
            lines.push(state_line(&dir, &stat));
        }
    }
    lines
}

/// Print and record a phase the console events do not show (e.g. `network_up`, marked by
/// `net::host` once the host NIC has its address). Does nothing unless PID 1 set
/// [`ENV`].
pub fn mark(phase: &str) {
    let Ok(mut guard) = TIMELINE.lock() else {
        return;
    };
    if guard.is_none() {
        let Some(value) = std::env::var_os(ENV) else {
            return;
        };
        *guard = Some(Timeline::from_env(&value.to_string_lossy()));
    }
    if let Some(timeline) = guard.as_mut() {
        let line = timeline.mark(phase, None, BootClock.boottime_ms());
        crate::console::emit_line(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_from_pid1_then_the_agent_then_one_summary() {
        let mut t = Timeline::from_env("pid1_started=310,state_mounted=402,bogus,x=y");
        assert_eq!(
            t.observe(&Event::AgentStarted, 520),
            ["berth: timeline phase=agent_started ms=520"]
        );
        let source = Event::ManifestSource {
            source: "image",
            origin: "/etc/berth/manifest.toml",
            fallback_from: None,
        };
        assert_eq!(
            t.observe(&source, 600),
            ["berth: timeline phase=manifest_loaded ms=600"]
        );
        assert_eq!(
            t.observe(
                &Event::Running {
                    container: "web",
                    pid: 7,
                    adopted: false,
                },
                700
            ),
            ["berth: timeline phase=container_running name=web ms=700"]
        );
        t.observe(
            &Event::Running {
                container: "db",
                pid: 8,
                adopted: false,
            },
            710,
        );
        assert!(t
            .observe(&Event::Warning { what: "x".into() }, 711)
            .is_empty());
        let ready = Event::Ready {
            running: 2,
            declared: 2,
        };
        assert_eq!(
            t.observe(&ready, 750),
            [
                "berth: timeline phase=ready ms=750",
                "berth: timeline summary kernel_started=0 pid1_started=310 state_mounted=402 \
                 agent_started=520 manifest_loaded=600 ready=750 first_container_running=700 \
                 pid1_to_first_container=390"
            ]
        );
        // A later ready (after a restart) is a phase line only.
        assert_eq!(
            t.observe(&ready, 900),
            ["berth: timeline phase=ready ms=900"]
        );
    }

    #[test]
    fn clock_is_monotonic_and_after_boot() {
        let a = BootClock.boottime_ms();
        let b = BootClock.boottime_ms();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn state_line_counts_containers_and_skips_mounted_roots() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(dir.join("upper")).unwrap();
            std::fs::create_dir_all(dir.join("rootfs")).unwrap();
            std::fs::write(dir.join("rootfs/big"), vec![1u8; 1 << 20]).unwrap();
            std::fs::write(dir.join("log"), vec![1u8; 8192]).unwrap();
        }
        let stat = "42 (berthd) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0";
        let line = state_line(tmp.path(), stat);
        let disk: u64 = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("disk_kib="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            line.starts_with("berth: footprint-state containers=2 "),
            "{line}"
        );
        // Two 8 KiB logs and directories, not the 1 MiB files under rootfs/.
        assert!((16..512).contains(&disk), "{line}");
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert!(
            line.ends_with(&format!("agent_cpu_ms={}", 200 * 1000 / hz)),
            "{line}"
        );
        assert!(state_line(&tmp.path().join("none"), "")
            .ends_with("containers=0 disk_kib=0 agent_cpu_ms=unknown"));
    }

    #[test]
    fn rss_from_proc_status() {
        let status = "Name:\tberthd\nVmPeak:\t  9000 kB\nVmRSS:\t    3120 kB\n";
        assert_eq!(rss_kib(status), Some(3120));
        assert_eq!(rss_kib("Name: x\n"), None);
        let rollup =
            "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:                 812 kB\nPss: 700 kB\n";
        assert_eq!(rss_kib(rollup), Some(812));
        assert_eq!(
            footprint_line("VmRSS:\t 600 kB\n", status),
            "berth: footprint pid1_rss_kib=600 agent_rss_kib=3120"
        );
        assert_eq!(
            footprint_line("", status),
            "berth: footprint pid1_rss_kib=unknown agent_rss_kib=3120"
        );
    }
}
