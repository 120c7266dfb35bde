//! The ordered shutdown, as a state machine driven through [`Sys`].
//!
//! Order: SIGTERM the agent (it stops its containers with their own grace periods) and wait up
//! to the grace period while reaping; SIGKILL it if still there; SIGTERM everything left, wait
//! up to 2 s, SIGKILL everything, reap; sync; unmount deepest first (lazily detaching what
//! refuses); remount `/` read-only; sync; print `berth: poweroff|reboot`; reboot(2).
//! The current phase is kept in [`Shutdown`], so a panic in the middle resumes where it was.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::mounts;
use crate::sys::{Power, Sys};

/// How long the remaining processes get between SIGTERM and SIGKILL.
pub const TERM_ALL_GRACE: Duration = Duration::from_secs(2);
/// How long to reap after SIGKILL before moving on.
pub const KILL_ALL_WAIT: Duration = Duration::from_secs(1);

/// Where the shutdown is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Print the request.
    Announce,
    /// SIGTERM the agent.
    StopAgent,
    /// Wait for the agent until `deadline`.
    WaitAgent {
        /// Agent PID.
        pid: i32,
        /// End of the grace period.
        deadline: Duration,
    },
    /// SIGKILL the agent.
    KillAgent {
        /// Agent PID.
        pid: i32,
    },
    /// SIGTERM every remaining process.
    TermAll,
    /// Wait for them until `deadline`.
    WaitAll {
        /// When to SIGKILL.
        deadline: Duration,
    },
    /// SIGKILL every remaining process.
    KillAll,
    /// Reap the killed processes until `deadline`.
    WaitKilled {
        /// When to move on regardless.
        deadline: Duration,
    },
    /// sync(2).
    Sync,
    /// Unmount everything but `/`.
    Unmount,
    /// Remount `/` read-only.
    RemountRoot,
    /// sync(2) again.
    FinalSync,
    /// reboot(2).
    Reboot,
    /// reboot(2) returned: nothing left to do.
    Halted,
}

/// An ordered shutdown in progress.
#[derive(Debug, Clone)]
pub struct Shutdown {
    power: Power,
    agent: Option<i32>,
    grace: Duration,
    phase: Phase,
}

impl Shutdown {
    /// A shutdown to `power` of a system whose agent is `agent`, with `grace` for the agent.
    pub fn new(power: Power, agent: Option<i32>, grace: Duration) -> Shutdown {
        Shutdown {
            power,
            agent,
            grace,
            phase: Phase::Announce,
        }
    }

    /// The current phase.
    #[cfg(test)]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Skip straight to the final steps (used when a phase keeps panicking).
    pub fn skip_to_sync(&mut self) {
        if !matches!(self.phase, Phase::Reboot | Phase::Halted) {
            self.phase = Phase::Sync;
        }
    }

    /// Run phases until [`Phase::Halted`] (reboot(2) failed); on success reboot(2) does not
    /// return, so neither does this.
    pub fn run(&mut self, sys: &mut dyn Sys) {
        while self.phase != Phase::Halted {
            self.phase = self.step(sys);
        }
    }

    /// Wait up to `until` for more exits, logging (and ignoring) shutdown requests.
    fn wait_until(&self, sys: &mut dyn Sys, until: Duration) {
        let left = until.saturating_sub(sys.now());
        for request in sys.wait(Some(left)) {
            sys.log(&format!(
                "shutdown already in progress ({}), ignoring {} ({})",
                self.power.as_str(),
                request.source,
                request.power.as_str()
            ));
        }
    }

    fn step(&self, sys: &mut dyn Sys) -> Phase {
        match self.phase {
            Phase::Announce => {
                sys.log(&format!("shutdown requested ({})", self.power.as_str()));
                Phase::StopAgent
            }
            Phase::StopAgent => match self.agent {
                None => Phase::TermAll,
                Some(pid) => {
                    sys.log(&format!(
                        "stopping agent pid={pid} (grace {}s)",
                        self.grace.as_secs()
                    ));
                    match sys.kill(pid, Signal::SIGTERM) {
                        Err(Errno::ESRCH) => Phase::TermAll,
                        _ => Phase::WaitAgent {
                            pid,
                            deadline: sys.now() + self.grace,
                        },
                    }
                }
            },
            Phase::WaitAgent { pid, deadline } => {
                let reaped = sys.reap();
                // Containers a restarted agent adopted are PID 1's children: the agent
                // stopping them reads their codes from these records.
                for (other, code) in &reaped.exited {
                    if *other != pid {
                        sys.record_reaped(*other, *code);
                    }
                }
                if reaped.exited.iter().any(|(p, _)| *p == pid) || reaped.no_children {
                    sys.log("agent stopped");
                    Phase::TermAll
                } else if sys.now() >= deadline {
                    Phase::KillAgent { pid }
                } else {
                    self.wait_until(sys, deadline);
                    self.phase.clone()
                }
            }
            Phase::KillAgent { pid } => {
                sys.log(&format!(
                    "agent pid={pid} did not stop within {}s, sending SIGKILL",
                    self.grace.as_secs()
                ));
                let _ = sys.kill(pid, Signal::SIGKILL);
                Phase::TermAll
            }
            Phase::TermAll => match sys.kill(-1, Signal::SIGTERM) {
                Err(Errno::ESRCH) => Phase::WaitKilled {
                    deadline: sys.now(),
                },
                _ => {
                    sys.log("sending SIGTERM to all processes");
                    Phase::WaitAll {
                        deadline: sys.now() + TERM_ALL_GRACE,
                    }
                }
            },
            Phase::WaitAll { deadline } => {
                if sys.reap().no_children {
                    Phase::Sync
                } else if sys.now() >= deadline {
                    Phase::KillAll
                } else {
                    self.wait_until(sys, deadline);
                    self.phase.clone()
                }
            }
            Phase::KillAll => {
                sys.log("sending SIGKILL to all processes");
                let _ = sys.kill(-1, Signal::SIGKILL);
                Phase::WaitKilled {
                    deadline: sys.now() + KILL_ALL_WAIT,
                }
            }
            Phase::WaitKilled { deadline } => {
                if sys.reap().no_children || sys.now() >= deadline {
                    Phase::Sync
                } else {
                    self.wait_until(sys, deadline);
                    self.phase.clone()
                }
            }
            Phase::Sync => {
                sys.sync();
                Phase::Unmount
            }
            Phase::Unmount => {
                match sys.mountinfo() {
                    Err(e) => sys.log(&format!("warning: cannot read mountinfo: {e}")),
                    Ok(text) => {
                        for path in mounts::unmount_order(&mounts::parse_mountinfo(&text)) {
                            if sys.umount(&path, false).is_ok() {
                                continue;
                            }
                            if let Err(e) = sys.umount(&path, true) {
                                sys.log(&format!("warning: cannot unmount {path}: {e}"));
                            }
                        }
                    }
                }
                Phase::RemountRoot
            }
            Phase::RemountRoot => {
                if let Err(e) = sys.remount_root_readonly() {
                    sys.log(&format!("warning: cannot remount / read-only: {e}"));
                }
                Phase::FinalSync
            }
            Phase::FinalSync => {
                sys.sync();
                Phase::Reboot
            }
            Phase::Reboot => {
                sys.log(self.power.as_str());
                let err = sys.reboot(self.power);
                sys.log(&format!("error: reboot(2) failed: {err}; halting"));
                Phase::Halted
            }
            Phase::Halted => Phase::Halted,
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording [`Sys`] with a virtual clock.

    use super::*;
    use crate::sys::{AgentSpec, Reaped, Request};
    use std::collections::VecDeque;

    /// A process the fake knows about.
    #[derive(Debug, Clone)]
    pub struct FakeProc {
        pub pid: i32,
        /// Dies this long after SIGTERM (`None`: ignores SIGTERM).
        pub dies_after_term: Option<Duration>,
        pub exit_at: Option<Duration>,
    }

    #[derive(Debug, Default)]
    pub struct FakeSys {
        pub now: Duration,
        pub calls: Vec<String>,
        pub procs: Vec<FakeProc>,
        pub mountinfo: String,
        /// Paths whose plain umount fails with EBUSY.
        pub busy: Vec<String>,
        /// Requests delivered by successive `wait` calls.
        pub requests: VecDeque<Vec<Request>>,
        /// PIDs handed out by `spawn`.
        pub next_pid: i32,
        /// Results of `spawn`: true = the process exits after that long.
        pub spawn_lifetimes: VecDeque<Result<Duration, String>>,
        /// The specs `spawn` was called with.
        pub spawned: Vec<AgentSpec>,
        /// `fd_store` fails with this.
        pub fd_store_error: Option<String>,
        /// This many `reap` calls panic (a bug injected into the main loop).
        pub panics_in_reap: u32,
    }

    impl FakeSys {
        pub fn log_lines(&self) -> Vec<&str> {
            self.calls
                .iter()
                .filter_map(|c| c.strip_prefix("log "))
                .collect()
        }
    }

    impl Sys for FakeSys {
        fn log(&mut self, line: &str) {
            self.calls.push(format!("log {line}"));
        }
        fn now(&self) -> Duration {
            self.now
        }
        fn wait(&mut self, timeout: Option<Duration>) -> Vec<Request> {
            // Advance to the earliest of the timeout and the next process exit.
            let next_exit = self.procs.iter().filter_map(|p| p.exit_at).min();
            let until = match (timeout.map(|t| self.now + t), next_exit) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => self.now + Duration::from_secs(3600),
            };
            self.now = self.now.max(until);
            self.calls.push(format!("wait {}", self.now.as_millis()));
            self.requests.pop_front().unwrap_or_default()
        }
        fn reap(&mut self) -> Reaped {
            if self.panics_in_reap > 0 {
                self.panics_in_reap -= 1;
                panic!("injected panic in reap");
            }
            let now = self.now;
            let (dead, alive): (Vec<_>, Vec<_>) = self
                .procs
                .drain(..)
                .partition(|p| p.exit_at.is_some_and(|t| t <= now));
            self.procs = alive;
            let exited: Vec<(i32, i32)> = dead.iter().map(|p| (p.pid, 0)).collect();
            for (pid, _) in &exited {
                self.calls.push(format!("reaped {pid}"));
            }
            Reaped {
                exited,
                no_children: self.procs.is_empty(),
            }
        }
        fn fd_store(&mut self) -> Result<(i32, i32), String> {
            self.calls.push("fd_store".to_string());
            match &self.fd_store_error {
                Some(e) => Err(e.clone()),
                None => Ok((10, 11)),
            }
        }
        fn record_reaped(&mut self, pid: i32, code: i32) {
            self.calls.push(format!("record-reaped {pid} {code}"));
        }
        fn spawn(&mut self, spec: &AgentSpec) -> Result<i32, String> {
            self.spawned.push(spec.clone());
            self.calls.push(format!(
                "spawn {} at {}",
                spec.path.display(),
                self.now.as_millis()
            ));
            let lifetime = self
                .spawn_lifetimes
                .pop_front()
                .unwrap_or(Ok(Duration::from_secs(1_000_000)))?;
            self.next_pid += 1;
            self.procs.push(FakeProc {
                pid: self.next_pid,
                dies_after_term: Some(Duration::ZERO),
                exit_at: Some(self.now + lifetime),
            });
            Ok(self.next_pid)
        }
        fn kill(&mut self, pid: i32, signal: Signal) -> Result<(), Errno> {
            self.calls.push(format!("kill {pid} {signal}"));
            let now = self.now;
            let mut hit = false;
            for p in self.procs.iter_mut().filter(|p| pid == -1 || p.pid == pid) {
                hit = true;
                let after = match signal {
                    Signal::SIGKILL => Some(Duration::ZERO),
                    Signal::SIGTERM => p.dies_after_term,
                    _ => None,
                };
                if let Some(after) = after {
                    let t = now + after;
                    p.exit_at = Some(p.exit_at.map_or(t, |e| e.min(t)));
                }
            }
            if hit {
                Ok(())
            } else {
                Err(Errno::ESRCH)
            }
        }
        fn sync(&mut self) {
            self.calls.push("sync".to_string());
        }
        fn mountinfo(&mut self) -> Result<String, String> {
            Ok(self.mountinfo.clone())
        }
        fn umount(&mut self, path: &str, detach: bool) -> Result<(), Errno> {
            if detach {
                self.calls.push(format!("umount-detach {path}"));
                return Ok(());
            }
            self.calls.push(format!("umount {path}"));
            if self.busy.iter().any(|b| b == path) {
                Err(Errno::EBUSY)
            } else {
                Ok(())
            }
        }
        fn remount_root_readonly(&mut self) -> Result<(), Errno> {
            self.calls.push("remount-ro /".to_string());
            Ok(())
        }
        fn reboot(&mut self, power: Power) -> Errno {
            self.calls.push(format!("reboot {}", power.as_str()));
            Errno::EPERM
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeProc, FakeSys};
    use super::*;
    use crate::sys::Request;

    const MOUNTINFO: &str = "\
1 0 0:1 / / rw - tmpfs tmpfs rw
2 1 0:2 / /proc rw - proc proc rw
3 1 0:3 / /dev rw - devtmpfs devtmpfs rw
4 1 8:1 / /var/lib/berth rw - ext4 /dev/vda1 rw
5 4 0:9 / /var/lib/berth/containers/web/rootfs rw - overlay overlay rw
";

    fn sys_with(procs: Vec<FakeProc>) -> FakeSys {
        FakeSys {
            procs,
            mountinfo: MOUNTINFO.to_string(),
            busy: vec!["/dev".to_string()],
            ..FakeSys::default()
        }
    }

    fn index(calls: &[String], needle: &str) -> usize {
        calls
            .iter()
            .position(|c| c == needle)
            .unwrap_or_else(|| panic!("{needle:?} not in {calls:#?}"))
    }

    fn proc(pid: i32, dies_after_term: Option<Duration>) -> FakeProc {
        FakeProc {
            pid,
            dies_after_term,
            exit_at: None,
        }
    }

    #[test]
    fn agent_that_stops_in_time_is_not_killed() {
        let mut sys = sys_with(vec![proc(10, Some(Duration::from_secs(3)))]);
        let mut sd = Shutdown::new(Power::PowerOff, Some(10), Duration::from_secs(20));
        sd.run(&mut sys);
        let calls = &sys.calls;
        assert_eq!(calls[0], "log shutdown requested (poweroff)");
        let term = index(calls, "kill 10 SIGTERM");
        let reaped = index(calls, "reaped 10");
        assert!(term < reaped);
        assert!(!calls.contains(&"kill 10 SIGKILL".to_string()));
        // Nothing left after the agent: the SIGTERM to all finds nobody.
        let term_all = index(calls, "kill -1 SIGTERM");
        assert!(reaped < term_all);
        assert!(!calls.contains(&"kill -1 SIGKILL".to_string()));
        assert_eq!(sys.now, Duration::from_secs(3));
        let tail: Vec<&str> = calls[term_all + 1..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            vec![
                "sync",
                "umount /var/lib/berth/containers/web/rootfs",
                "umount /var/lib/berth",
                "umount /dev",
                "umount-detach /dev",
                "umount /proc",
                "remount-ro /",
                "sync",
                "log poweroff",
                "reboot poweroff",
                "log error: reboot(2) failed: EPERM: Operation not permitted; halting",
            ]
        );
        assert_eq!(sd.phase(), &Phase::Halted);
    }

    #[test]
    fn agent_ignoring_sigterm_is_killed_after_the_grace_period() {
        let mut sys = sys_with(vec![proc(10, None), proc(11, None)]);
        let mut sd = Shutdown::new(Power::Reboot, Some(10), Duration::from_secs(5));
        sd.run(&mut sys);
        let calls = &sys.calls;
        assert_eq!(calls[0], "log shutdown requested (reboot)");
        let term = index(calls, "kill 10 SIGTERM");
        let kill = index(calls, "kill 10 SIGKILL");
        assert!(term < kill);
        // The SIGKILL comes exactly at the end of the grace period.
        assert!(calls[..kill].contains(&"wait 5000".to_string()));
        assert!(!calls[..kill].iter().any(|c| c.starts_with("kill -1")));
        // Then everything else: SIGTERM (ignored by 11), 2 s, SIGKILL.
        let term_all = index(calls, "kill -1 SIGTERM");
        let kill_all = index(calls, "kill -1 SIGKILL");
        assert!(kill < term_all && term_all < kill_all);
        assert!(calls[term_all..kill_all].contains(&"wait 7000".to_string()));
        let reaped_11 = index(calls, "reaped 11");
        let sync = index(calls, "sync");
        assert!(kill_all < reaped_11 && reaped_11 < sync);
        let last_log = index(calls, "log reboot");
        assert_eq!(calls[last_log + 1], "reboot reboot");
        assert!(sync < index(calls, "umount /var/lib/berth/containers/web/rootfs"));
    }

    #[test]
    fn no_agent_goes_straight_to_the_rest() {
        let mut sys = sys_with(vec![]);
        let mut sd = Shutdown::new(Power::PowerOff, None, Duration::from_secs(20));
        sd.run(&mut sys);
        assert_eq!(sys.calls[1], "kill -1 SIGTERM");
        assert_eq!(sys.calls[2], "sync");
    }

    #[test]
    fn second_request_during_shutdown_is_logged_and_ignored() {
        let mut sys = sys_with(vec![proc(10, Some(Duration::from_secs(1)))]);
        sys.requests.push_back(vec![Request {
            power: Power::Reboot,
            source: "SIGINT",
        }]);
        let mut sd = Shutdown::new(Power::PowerOff, Some(10), Duration::from_secs(20));
        sd.run(&mut sys);
        let logs = sys.log_lines();
        assert!(logs.contains(&"shutdown already in progress (poweroff), ignoring SIGINT (reboot)"));
        assert!(sys.calls.contains(&"reboot poweroff".to_string()));
        assert!(!sys.calls.contains(&"reboot reboot".to_string()));
    }

    #[test]
    fn skip_to_sync_jumps_over_the_waiting() {
        let mut sys = sys_with(vec![proc(10, None)]);
        let mut sd = Shutdown::new(Power::PowerOff, Some(10), Duration::from_secs(20));
        sd.skip_to_sync();
        sd.run(&mut sys);
        assert_eq!(sys.calls[0], "sync");
        assert!(!sys.calls.iter().any(|c| c.starts_with("kill")));
    }

    #[test]
    fn orphans_reaped_while_the_agent_stops_are_recorded_for_it() {
        let mut sys = sys_with(vec![
            proc(10, Some(Duration::from_secs(3))),
            FakeProc {
                pid: 12,
                dies_after_term: None,
                exit_at: Some(Duration::from_secs(1)),
            },
        ]);
        let mut sd = Shutdown::new(Power::PowerOff, Some(10), Duration::from_secs(20));
        sd.run(&mut sys);
        let recorded = index(&sys.calls, "record-reaped 12 0");
        assert!(recorded < index(&sys.calls, "reaped 10"));
        assert!(!sys.calls.contains(&"record-reaped 10 0".to_string()));
    }
}
