//! PID 1's main loop: supervise the agent, reap zombies, turn requests into a shutdown.
//!
//! All state lives in [`Pid1`] so that after a caught panic the loop is re-entered where it
//! was (a running agent stays supervised, a shutdown in progress resumes).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::agent::Supervisor;
use crate::shutdown::Shutdown;
use crate::sys::{AgentSpec, Sys, FDSTORE_ENV};

/// After this many panics during one shutdown, skip to sync + unmount + reboot.
const SHUTDOWN_PANIC_LIMIT: u32 = 3;

/// PID 1's long-lived state.
#[derive(Debug)]
pub struct Pid1 {
    agent: AgentSpec,
    grace: Duration,
    supervisor: Supervisor,
    shutdown: Option<Shutdown>,
    shutdown_panics: u32,
    /// The agent's fd store (send, receive), created before the first start: `None` until
    /// then, `Some(None)` when it could not be created.
    fd_store: Option<Option<(i32, i32)>>,
}

impl Pid1 {
    /// A PID 1 that will start `agent` and give it `grace` to stop at shutdown.
    pub fn new(agent: AgentSpec, grace: Duration) -> Pid1 {
        Pid1 {
            agent,
            grace,
            supervisor: Supervisor::default(),
            shutdown: None,
            shutdown_panics: 0,
            fd_store: None,
        }
    }

    /// How to start the agent this time: the configured spec plus the fd store (created on
    /// the first call and handed to every agent after it).
    fn agent_spec(&mut self, sys: &mut dyn Sys) -> AgentSpec {
        let store = *self.fd_store.get_or_insert_with(|| match sys.fd_store() {
            Ok(pair) => Some(pair),
            Err(e) => {
                sys.log(&format!(
                    "warning: cannot create the agent's fd store ({e}); a restarted agent \
                     restarts its containers"
                ));
                None
            }
        });
        let mut spec = self.agent.clone();
        if let Some((send, receive)) = store {
            spec.env
                .push((FDSTORE_ENV.to_string(), format!("{send},{receive}")));
            spec.fds = vec![send, receive];
        }
        spec
    }

    /// Record that the loop panicked (called by the panic catcher before re-entering).
    pub fn panicked(&mut self) {
        if let Some(shutdown) = &mut self.shutdown {
            self.shutdown_panics += 1;
            if self.shutdown_panics >= SHUTDOWN_PANIC_LIMIT {
                shutdown.skip_to_sync();
            }
        }
    }

    /// Whether a shutdown is in progress.
    #[cfg(test)]
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Run until the system is halted (reboot(2) failed). Never returns otherwise.
    pub fn run(&mut self, sys: &mut dyn Sys) {
        while self.step(sys) {}
    }

    /// [`Pid1::run`] with every panic caught: a panic is logged, `pause` is called (so a panic
    /// that repeats cannot spin the CPU) and the loop is re-entered with its state. Returns
    /// only when the system is halted (reboot(2) failed), never because of a panic.
    pub fn run_caught(&mut self, sys: &mut dyn Sys, pause: &dyn Fn()) {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.run(sys))) {
                Ok(()) => return,
                Err(_) => {
                    sys.log("error: main loop panicked; re-entering it");
                    self.panicked();
                    pause();
                }
            }
        }
    }

    /// One iteration; `false` once the shutdown finished without rebooting.
    pub fn step(&mut self, sys: &mut dyn Sys) -> bool {
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.run(sys);
            return false;
        }
        let now = sys.now();
        for (pid, code) in sys.reap().exited {
            match self.supervisor.reaped(pid, now) {
                Some(delay) => sys.log(&format!(
                    "agent exited code={code}, restarting in {}ms",
                    delay.as_millis()
                )),
                // An orphan: a container whose agent died. The next agent reads its status.
                None => sys.record_reaped(pid, code),
            }
        }
        if self.supervisor.start_due(now) {
            let spec = self.agent_spec(sys);
            match sys.spawn(&spec) {
                Ok(pid) => {
                    self.supervisor.started(pid, now);
                    sys.log(&format!(
                        "started agent {} pid={pid}",
                        self.agent.path.display()
                    ));
                }
                Err(e) => {
                    let delay = self.supervisor.start_failed(now);
                    sys.log(&format!(
                        "error: cannot start agent {}: {e}; retrying in {}ms",
                        self.agent.path.display(),
                        delay.as_millis()
                    ));
                }
            }
        }
        let mut requests = sys.wait(self.supervisor.wait_hint(sys.now())).into_iter();
        if let Some(first) = requests.next() {
            sys.log(&format!(
                "{} received: {}",
                first.source,
                first.power.as_str()
            ));
            self.shutdown = Some(Shutdown::new(
                first.power,
                self.supervisor.pid(),
                self.grace,
            ));
            for other in requests {
                sys.log(&format!(
                    "shutdown already in progress ({}), ignoring {} ({})",
                    first.power.as_str(),
                    other.source,
                    other.power.as_str()
                ));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::fake::FakeSys;
    use crate::sys::{Power, Request};
    use std::path::PathBuf;

    fn spec() -> AgentSpec {
        AgentSpec {
            path: PathBuf::from("/usr/bin/berthd"),
            env: vec![("PATH".to_string(), "/usr/bin".to_string())],
            fds: Vec::new(),
        }
    }

    #[test]
    fn restarts_a_crashing_agent_with_backoff() {
        let mut sys = FakeSys::default();
        for _ in 0..4 {
            sys.spawn_lifetimes.push_back(Ok(Duration::from_millis(10)));
        }
        let mut pid1 = Pid1::new(spec(), Duration::from_secs(20));
        for _ in 0..9 {
            assert!(pid1.step(&mut sys));
        }
        let logs = sys.log_lines();
        let restarts: Vec<&str> = logs
            .iter()
            .copied()
            .filter(|l| l.starts_with("agent exited"))
            .collect();
        assert_eq!(
            restarts,
            vec![
                "agent exited code=0, restarting in 100ms",
                "agent exited code=0, restarting in 200ms",
                "agent exited code=0, restarting in 400ms",
                "agent exited code=0, restarting in 800ms",
            ]
        );
        // Each start comes after the previous 10 ms run plus the delay: never a busy loop.
        let spawns: Vec<&str> = sys
            .calls
            .iter()
            .filter(|c| c.starts_with("spawn"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            spawns,
            vec![
                "spawn /usr/bin/berthd at 0",
                "spawn /usr/bin/berthd at 110",
                "spawn /usr/bin/berthd at 320",
                "spawn /usr/bin/berthd at 730",
                "spawn /usr/bin/berthd at 1540",
            ]
        );
    }

    #[test]
    fn a_panic_in_the_main_loop_is_caught_and_the_loop_goes_on() {
        let mut sys = FakeSys {
            panics_in_reap: 3,
            ..FakeSys::default()
        };
        // The power button, at the loop's first wait.
        sys.requests.push_back(vec![Request {
            power: Power::PowerOff,
            source: "power button",
        }]);
        let pauses = std::cell::Cell::new(0);
        let mut pid1 = Pid1::new(spec(), Duration::from_secs(20));
        pid1.run_caught(&mut sys, &|| pauses.set(pauses.get() + 1));
        assert_eq!(pauses.get(), 3);
        let logs = sys.log_lines();
        assert_eq!(
            logs.iter()
                .filter(|l| **l == "error: main loop panicked; re-entering it")
                .count(),
            3
        );
        // After the panics the loop went on: the agent started, and the power button led
        // through the ordered shutdown to reboot(2) (which the fake fails, so the loop ends).
        let spawn = sys
            .calls
            .iter()
            .position(|c| c.starts_with("spawn"))
            .unwrap();
        let term = sys
            .calls
            .iter()
            .position(|c| c == "kill 1 SIGTERM")
            .unwrap();
        let reboot = sys
            .calls
            .iter()
            .position(|c| c == "reboot poweroff")
            .unwrap();
        assert!(spawn < term && term < reboot);
        assert!(logs.contains(&"power button received: poweroff"));
    }

    #[test]
    fn panics_during_shutdown_skip_to_sync_and_reboot() {
        let mut sys = FakeSys::default();
        sys.requests.push_back(vec![Request {
            power: Power::PowerOff,
            source: "SIGTERM",
        }]);
        let mut pid1 = Pid1::new(spec(), Duration::from_secs(20));
        assert!(pid1.step(&mut sys));
        // Every reap during the shutdown panics from now on.
        sys.panics_in_reap = u32::MAX;
        pid1.run_caught(&mut sys, &|| {});
        assert!(sys.calls.contains(&"reboot poweroff".to_string()));
        assert_eq!(
            sys.log_lines()
                .iter()
                .filter(|l| l.contains("main loop panicked"))
                .count(),
            SHUTDOWN_PANIC_LIMIT as usize
        );
    }

    #[test]
    fn failed_spawns_back_off_too() {
        let mut sys = FakeSys::default();
        sys.spawn_lifetimes
            .push_back(Err("No such file or directory".to_string()));
        let mut pid1 = Pid1::new(spec(), Duration::from_secs(20));
        pid1.step(&mut sys);
        pid1.step(&mut sys);
        let logs = sys.log_lines();
        assert_eq!(
            logs[0],
            "error: cannot start agent /usr/bin/berthd: No such file or directory; retrying in 100ms"
        );
        assert_eq!(logs[1], "started agent /usr/bin/berthd pid=1");
        assert!(sys
            .calls
            .contains(&"spawn /usr/bin/berthd at 100".to_string()));
    }

    #[test]
    fn a_signal_starts_the_ordered_shutdown_of_the_running_agent() {
        let mut sys = FakeSys::default();
        sys.requests.push_back(vec![
            Request {
                power: Power::PowerOff,
                source: "power button",
            },
            Request {
                power: Power::Reboot,
                source: "SIGINT",
            },
        ]);
        let mut pid1 = Pid1::new(spec(), Duration::from_secs(20));
        assert!(pid1.step(&mut sys));
        assert!(pid1.shutting_down());
        assert!(!pid1.step(&mut sys));
        let logs = sys.log_lines();
        assert!(logs.contains(&"power button received: poweroff"));
        assert!(logs.contains(&"shutdown already in progress (poweroff), ignoring SIGINT (reboot)"));
        let term = sys
            .calls
            .iter()
            .position(|c| c == "kill 1 SIGTERM")
            .unwrap();
        let reboot = sys
            .calls
            .iter()
            .position(|c| c == "reboot poweroff")
            .unwrap();
        assert!(term < reboot);
        // The agent is not restarted during shutdown.
        assert_eq!(
            sys.calls.iter().filter(|c| c.starts_with("spawn")).count(),
            1
        );
    }

    #[test]
    fn every_agent_gets_the_same_fd_store_and_orphans_are_recorded() {
        let mut sys = FakeSys::default();
        sys.spawn_lifetimes.push_back(Ok(Duration::from_millis(10)));
        // A container orphaned by the agent, reaped by PID 1.
        sys.procs.push(crate::shutdown::fake::FakeProc {
            pid: 500,
            dies_after_term: None,
            exit_at: Some(Duration::from_millis(5)),
        });
        let mut pid1 = Pid1::new(spec(), Duration::from_secs(20));
        for _ in 0..4 {
            assert!(pid1.step(&mut sys));
        }
        assert_eq!(sys.spawned.len(), 2);
        for spawned in &sys.spawned {
            assert_eq!(spawned.fds, vec![10, 11]);
            assert!(spawned
                .env
                .contains(&("BERTH_FDSTORE".to_string(), "10,11".to_string())));
            assert_eq!(spawned.env[0], ("PATH".to_string(), "/usr/bin".to_string()));
        }
        // Created once, before the first start.
        assert_eq!(sys.calls.iter().filter(|c| *c == "fd_store").count(), 1);
        assert!(sys.calls.contains(&"record-reaped 500 0".to_string()));
        // The agent's own exit is not recorded as an orphan's.
        assert!(!sys.calls.iter().any(|c| c.starts_with("record-reaped 1 ")));
    }

    #[test]
    fn no_fd_store_still_starts_the_agent() {
        let mut sys = FakeSys {
            fd_store_error: Some("EMFILE".to_string()),
            ..FakeSys::default()
        };
        let mut pid1 = Pid1::new(spec(), Duration::from_secs(20));
        pid1.step(&mut sys);
        assert_eq!(sys.spawned.len(), 1);
        assert!(sys.spawned[0].fds.is_empty());
        assert!(
            sys.log_lines()[0].starts_with("warning: cannot create the agent's fd store (EMFILE)")
        );
    }
}
