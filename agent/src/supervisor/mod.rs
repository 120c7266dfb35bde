//! The agent's main loop: start the manifest's containers, report their state changes on the
//! console, reap them, and stop them all on shutdown.
//!
//! Process side effects go through [`Runner`] so the start/stop/exit bookkeeping is unit-tested
//! with a fake. Each container is a [`Slot`] whose exit goes through [`Supervisor::on_exit`]:
//! that is where restart policies will decide what happens next.

pub mod boot;
pub mod signals;

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MntFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::console::{self, Event};
use crate::runtime::cgroup::{Cgroups, Leaf, Leaves};
use crate::runtime::init::error_chain;
use crate::runtime::output::Copier;
use crate::runtime::{self, InitConfig, InitProgram, LaunchError, Launched, RootfsLayout};

pub use boot::{prepare, Boot, BootError, ContainerPlan};
pub use signals::Signals;

/// Default time between the stop signal and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// How long an exit line waits for the container's last output lines.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Process side effects of the supervisor.
pub trait Runner {
    /// Start a container (see [`runtime::launch`]).
    fn launch(&mut self, init: &InitConfig) -> Result<Launched, LaunchError>;
    /// Send a signal to a container process.
    fn signal(&mut self, pid: Pid, signal: Signal) -> nix::Result<()>;
    /// Collect exited children without blocking: (pid, exit code).
    fn reap(&mut self) -> Vec<(Pid, i32)>;
    /// Remove what is left of a container's root after it exited.
    fn cleanup(&mut self, rootfs: &RootfsLayout);
    /// A container's process ended: release its cgroup and say why it ended when the kernel
    /// recorded a reason (`"oom"`).
    fn release(&mut self, _name: &str) -> Option<&'static str> {
        None
    }
}

/// How long a container's leaf cgroup may take to empty after its process ended.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(2);

/// The real [`Runner`]: cgroups, namespaces, the init shim, waitpid.
#[derive(Debug, Clone, Default)]
pub struct HostRunner {
    /// The init shim program.
    pub init: InitProgram,
    /// Whether cgroup v2 can hold the containers (see [`Cgroups::probe`]).
    pub cgroups: Cgroups,
    leaves: Leaves,
    /// Container networking (bridge, namespaces, NAT), when berthd set it up.
    pub network: Option<std::sync::Arc<std::sync::Mutex<crate::net::Network>>>,
}

impl HostRunner {
    /// A runner starting containers through `init`, in leaf cgroups of `cgroups` when
    /// available.
    pub fn new(init: InitProgram, cgroups: Cgroups) -> Self {
        HostRunner {
            init,
            cgroups,
            leaves: Leaves::new(),
            network: None,
        }
    }

    /// The container's leaf cgroup, `None` when cgroup v2 is unavailable and it asks for no
    /// limit. A container that asks for a limit berth cannot enforce is refused.
    fn leaf_for(&self, init: &InitConfig) -> Result<Option<Leaf>, LaunchError> {
        let refuse = |why: String| LaunchError::Container {
            message: format!(
                "container={}: {why}; not started rather than run without its limits",
                init.name
            ),
            code: runtime::init::EXIT_SETUP_FAILED,
        };
        match &self.cgroups {
            Cgroups::Available(hierarchy) => {
                match hierarchy.create_leaf(&init.name, &init.limits) {
                    Ok(leaf) => Ok(Some(leaf)),
                    Err(e) if init.limits.is_empty() => {
                        console::emit(&Event::Warning {
                            what: format!(
                                "container={}: runs without a cgroup: {}",
                                init.name,
                                error_chain(&e)
                            ),
                        });
                        Ok(None)
                    }
                    Err(e) => Err(refuse(error_chain(&e))),
                }
            }
            Cgroups::Unavailable { reason } => match init.limits.requirements().first() {
                None => Ok(None),
                Some((_, key)) => Err(refuse(format!("`{key}` needs cgroup v2, but {reason}"))),
            },
        }
    }
}

impl Runner for HostRunner {
    fn launch(&mut self, init: &InitConfig) -> Result<Launched, LaunchError> {
        init.rootfs
            .prepare_host_dirs()
            .map_err(|e| LaunchError::Container {
                message: format!("container={}: {}", init.name, error_chain(&e)),
                code: runtime::init::EXIT_SETUP_FAILED,
            })?;
        let leaf = self.leaf_for(init)?;
        let mut init = init.clone();
        init.cgroup = leaf.as_ref().map(|l| l.path().to_path_buf());
        let launched = crate::net::hook::start(self.network.as_ref(), &mut init)
            .and_then(|()| runtime::launch(&self.init, &init));
        if launched.is_err() {
            crate::net::hook::stop(self.network.as_ref(), &init.name);
        }
        if let Some(leaf) = leaf {
            if launched.is_ok() {
                self.leaves.insert(init.name.clone(), leaf);
            } else {
                let _ = leaf.remove(CGROUP_EMPTY_WAIT);
            }
        }
        launched
    }

    fn release(&mut self, name: &str) -> Option<&'static str> {
        crate::net::hook::stop(self.network.as_ref(), name);
        let leaf = self.leaves.remove(name)?;
        let reason = leaf.oom_killed().then_some("oom");
        if let Err(e) = leaf.remove(CGROUP_EMPTY_WAIT) {
            console::emit(&Event::Error {
                what: format!("container={name}: {}", error_chain(&e)),
            });
        }
        reason
    }

    fn signal(&mut self, pid: Pid, signal: Signal) -> nix::Result<()> {
        nix::sys::signal::kill(pid, signal)
    }

    fn reap(&mut self) -> Vec<(Pid, i32)> {
        reap_children()
    }

    fn cleanup(&mut self, rootfs: &RootfsLayout) {
        unmount_rootfs(&rootfs.target);
    }
}

/// Every exited child of this process, without blocking.
pub fn reap_children() -> Vec<(Pid, i32)> {
    let mut exits = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(status) => {
                if let (Some(pid), Some(code)) = (status.pid(), runtime::exit_code(status)) {
                    exits.push((pid, code));
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    exits
}

/// The container's root is mounted only in its own mount namespace, which goes away with its
/// last process; this detaches a root that is still visible here (it never should be).
pub fn unmount_rootfs(target: &Path) {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => console::emit(&Event::Error {
            what: format!("cannot unmount {}: {e}", target.display()),
        }),
    }
}

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Time between the stop signal and SIGKILL.
    pub stop_grace: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }
}

/// Where a container is in its life.
#[derive(Debug)]
pub enum State {
    /// Not started yet.
    Pending,
    /// Its process runs.
    Running {
        /// Host pid.
        pid: Pid,
        /// Output copiers (stdout, stderr).
        copiers: Vec<Copier>,
    },
    /// It ended (or never started) with this exit code.
    Exited {
        /// Exit code (128+N for signal N).
        code: i32,
        /// Why, when the kernel said so (`"oom"`).
        reason: Option<&'static str>,
    },
}

/// One declared container and its state.
#[derive(Debug)]
pub struct Slot {
    /// What to run.
    pub plan: ContainerPlan,
    /// Where it is.
    pub state: State,
}

/// Starts, watches and stops the containers of one manifest.
#[derive(Debug)]
pub struct Supervisor<R: Runner> {
    config: SupervisorConfig,
    runner: R,
    slots: Vec<Slot>,
}

impl<R: Runner> Supervisor<R> {
    /// A supervisor for `plans` (started in the given order).
    pub fn new(config: SupervisorConfig, runner: R, plans: Vec<ContainerPlan>) -> Self {
        let slots = plans
            .into_iter()
            .map(|plan| Slot {
                plan,
                state: State::Pending,
            })
            .collect();
        Supervisor {
            config,
            runner,
            slots,
        }
    }

    /// The containers and their states.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The runner (tests inspect their fake through it).
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Host pid of a running container.
    pub fn pid_of(&self, name: &str) -> Option<Pid> {
        self.slots.iter().find_map(|s| match &s.state {
            State::Running { pid, .. } if s.plan.name == name => Some(*pid),
            _ => None,
        })
    }

    /// Exit code of an exited container.
    pub fn exit_code_of(&self, name: &str) -> Option<i32> {
        self.slots.iter().find_map(|s| match s.state {
            State::Exited { code, .. } if s.plan.name == name => Some(code),
            _ => None,
        })
    }

    /// Why an exited container ended, when known (`"oom"`).
    pub fn exit_reason_of(&self, name: &str) -> Option<&'static str> {
        self.slots.iter().find_map(|s| match s.state {
            State::Exited { reason, .. } if s.plan.name == name => reason,
            _ => None,
        })
    }

    /// How many containers are running.
    pub fn running(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, State::Running { .. }))
            .count()
    }

    /// Start every pending container, then print the `ready` line. Returns how many started.
    pub fn start_all(&mut self) -> usize {
        let mut started = 0;
        for index in 0..self.slots.len() {
            if matches!(self.slots[index].state, State::Pending) && self.start(index) {
                started += 1;
            }
        }
        console::emit(&Event::Ready {
            running: started,
            declared: self.slots.len(),
        });
        started
    }

    fn start(&mut self, index: usize) -> bool {
        let slot = &mut self.slots[index];
        let name = slot.plan.name.clone();
        match self.runner.launch(&slot.plan.init) {
            Ok(launched) => {
                console::emit(&Event::Running {
                    container: &name,
                    pid: launched.pid.as_raw(),
                });
                let mut copiers = Vec::with_capacity(2);
                for fd in [launched.stdout, launched.stderr] {
                    match Copier::spawn(&name, fd) {
                        Ok(c) => copiers.push(c),
                        Err(e) => console::emit(&Event::Error {
                            what: format!("container={name}: cannot copy its output: {e}"),
                        }),
                    }
                }
                slot.state = State::Running {
                    pid: launched.pid,
                    copiers,
                };
                true
            }
            Err(err) => {
                let what = match &err {
                    LaunchError::Container { message, .. } => message.clone(),
                    other => format!("container={name}: {}", error_chain(other)),
                };
                console::emit(&Event::Error { what });
                let code = err.exit_code();
                console::emit(&Event::Exited {
                    container: &name,
                    code,
                    reason: None,
                });
                slot.state = State::Exited { code, reason: None };
                false
            }
        }
    }

    /// Reap exited children and report the containers among them. Returns how many ended.
    pub fn reap(&mut self) -> usize {
        let mut ended = 0;
        for (pid, code) in self.runner.reap() {
            let found = self
                .slots
                .iter()
                .position(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid));
            if let Some(index) = found {
                self.on_exit(index, code);
                ended += 1;
            }
        }
        ended
    }

    /// A container's process ended: drain its output, report, clean up. Restart policies
    /// (a later stage) decide here whether to put it back to `Pending`.
    fn on_exit(&mut self, index: usize, code: i32) {
        let slot = &mut self.slots[index];
        let previous = std::mem::replace(&mut slot.state, State::Exited { code, reason: None });
        if let State::Running { copiers, .. } = previous {
            for copier in copiers {
                copier.finish(OUTPUT_DRAIN);
            }
        }
        let reason = self.runner.release(&slot.plan.name);
        slot.state = State::Exited { code, reason };
        console::emit(&Event::Exited {
            container: &slot.plan.name,
            code,
            reason,
        });
        self.runner.cleanup(&slot.plan.init.rootfs);
    }

    /// Supervise until SIGTERM/SIGINT, then stop everything.
    pub fn run(&mut self, signals: &Signals) {
        loop {
            self.reap();
            if let Some(signal) = signals.wait(Duration::from_secs(1)) {
                if Signals::is_shutdown(signal) {
                    break;
                }
            }
        }
        self.stop_all();
    }

    /// Stop every running container: its stop signal, then SIGKILL once its own grace period
    /// (`stop_timeout`, else the configured default) has passed.
    pub fn stop_all(&mut self) {
        let started = Instant::now();
        let mut killed = false;
        let mut deadlines = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            if let State::Running { pid, .. } = slot.state {
                // ESRCH: it already exited and waits to be reaped.
                let _ = self.runner.signal(pid, slot.plan.stop_signal);
                let grace = slot.plan.stop_timeout.unwrap_or(self.config.stop_grace);
                deadlines.push((started + grace, index));
            }
        }
        deadlines.sort();
        for (deadline, index) in deadlines {
            self.wait_all_exited(deadline.saturating_duration_since(Instant::now()));
            if self.running() == 0 {
                return;
            }
            let slot = &self.slots[index];
            if let State::Running { pid, .. } = slot.state {
                let _ = self.runner.signal(pid, Signal::SIGKILL);
                killed = true;
            }
        }
        if killed {
            self.wait_all_exited(Duration::from_secs(10));
        }
        for slot in &self.slots {
            if let State::Running { .. } = slot.state {
                console::emit(&Event::Error {
                    what: format!(
                        "container={}: still running after SIGKILL; leaving it",
                        slot.plan.name
                    ),
                });
            }
        }
    }

    fn wait_all_exited(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.reap();
            if self.running() == 0 || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Set the machine's hostname from `[host] hostname`.
pub fn set_host_hostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runtime::ProcessSpec;

    /// Containers whose pid is in `term_exits` exit (143) on SIGTERM; others only on SIGKILL.
    #[derive(Default)]
    struct FakeRunner {
        next_pid: i32,
        fail: Vec<String>,
        term_exits: Vec<Pid>,
        signals: Vec<(Pid, Signal)>,
        pending_exits: Vec<(Pid, i32)>,
        cleaned: Vec<PathBuf>,
        oom: Vec<String>,
        released: Vec<String>,
    }

    impl Runner for FakeRunner {
        fn launch(&mut self, init: &InitConfig) -> Result<Launched, LaunchError> {
            if self.fail.contains(&init.name) {
                return Err(LaunchError::Container {
                    message: format!("container={}: exec \"/nope\": not found", init.name),
                    code: 127,
                });
            }
            self.next_pid += 1;
            let (stdout, w1) = nix::unistd::pipe().unwrap();
            let (stderr, w2) = nix::unistd::pipe().unwrap();
            drop((w1, w2));
            Ok(Launched {
                pid: Pid::from_raw(100 + self.next_pid),
                stdout,
                stderr,
            })
        }
        fn signal(&mut self, pid: Pid, signal: Signal) -> nix::Result<()> {
            self.signals.push((pid, signal));
            match signal {
                Signal::SIGKILL => self.pending_exits.push((pid, 137)),
                Signal::SIGTERM if self.term_exits.contains(&pid) => {
                    self.pending_exits.push((pid, 143))
                }
                _ => {}
            }
            Ok(())
        }
        fn reap(&mut self) -> Vec<(Pid, i32)> {
            std::mem::take(&mut self.pending_exits)
        }
        fn cleanup(&mut self, rootfs: &RootfsLayout) {
            self.cleaned.push(rootfs.target.clone());
        }
        fn release(&mut self, name: &str) -> Option<&'static str> {
            self.released.push(name.to_string());
            self.oom.iter().any(|n| n == name).then_some("oom")
        }
    }

    fn plan(name: &str, stop_signal: Signal) -> ContainerPlan {
        ContainerPlan {
            name: name.into(),
            init: InitConfig {
                name: name.into(),
                process: ProcessSpec {
                    args: vec!["/bin/true".into()],
                    env: vec![],
                    cwd: "/".into(),
                    hostname: name.into(),
                },
                rootfs: RootfsLayout::for_container(
                    Path::new("/state/containers"),
                    name,
                    &[PathBuf::from("/l")],
                ),
                limits: Default::default(),
                rlimits: Vec::new(),
                cgroup: None,
                security: Default::default(),
                network: Default::default(),
            },
            stop_signal,
            stop_timeout: None,
        }
    }

    fn supervisor(runner: FakeRunner, grace: Duration) -> Supervisor<FakeRunner> {
        Supervisor::new(
            SupervisorConfig { stop_grace: grace },
            runner,
            vec![
                plan("a", Signal::SIGTERM),
                plan("b", Signal::SIGTERM),
                plan("c", Signal::SIGQUIT),
            ],
        )
    }

    #[test]
    fn failed_start_is_counted_out_and_recorded_with_its_code() {
        let runner = FakeRunner {
            fail: vec!["b".into()],
            ..FakeRunner::default()
        };
        let mut sup = supervisor(runner, Duration::from_millis(10));
        assert_eq!(sup.start_all(), 2);
        assert_eq!(sup.running(), 2);
        assert_eq!(sup.exit_code_of("b"), Some(127));
        assert_eq!(sup.pid_of("a"), Some(Pid::from_raw(101)));
        assert_eq!(sup.pid_of("c"), Some(Pid::from_raw(102)));
    }

    #[test]
    fn exits_are_matched_to_containers_and_unknown_pids_ignored() {
        let mut sup = supervisor(FakeRunner::default(), Duration::from_millis(10));
        sup.start_all();
        sup.runner.pending_exits = vec![(Pid::from_raw(999), 0), (Pid::from_raw(102), 3)];
        assert_eq!(sup.reap(), 1);
        assert_eq!(sup.exit_code_of("b"), Some(3));
        assert_eq!(sup.running(), 2);
        assert_eq!(
            sup.runner().cleaned,
            vec![PathBuf::from("/state/containers/b/rootfs")]
        );
    }

    #[test]
    fn stop_sends_stop_signal_then_kills_after_grace() {
        let runner = FakeRunner {
            term_exits: vec![Pid::from_raw(101)],
            ..FakeRunner::default()
        };
        let mut sup = supervisor(runner, Duration::from_millis(50));
        sup.start_all();
        let started = Instant::now();
        sup.stop_all();
        assert!(started.elapsed() >= Duration::from_millis(50));
        let (a, b, c) = (Pid::from_raw(101), Pid::from_raw(102), Pid::from_raw(103));
        assert_eq!(
            sup.runner().signals,
            vec![
                (a, Signal::SIGTERM),
                (b, Signal::SIGTERM),
                (c, Signal::SIGQUIT),
                (b, Signal::SIGKILL),
                (c, Signal::SIGKILL),
            ]
        );
        assert_eq!(sup.exit_code_of("a"), Some(143));
        assert_eq!(sup.exit_code_of("b"), Some(137));
        assert_eq!(sup.exit_code_of("c"), Some(137));
        assert_eq!(sup.running(), 0);
        assert_eq!(sup.runner().cleaned.len(), 3);
    }

    #[test]
    fn oom_reason_is_recorded_and_every_exit_releases() {
        let runner = FakeRunner {
            oom: vec!["b".into()],
            ..FakeRunner::default()
        };
        let mut sup = supervisor(runner, Duration::from_millis(10));
        sup.start_all();
        sup.runner.pending_exits = vec![(Pid::from_raw(102), 137), (Pid::from_raw(101), 0)];
        assert_eq!(sup.reap(), 2);
        assert_eq!(sup.exit_code_of("b"), Some(137));
        assert_eq!(sup.exit_reason_of("b"), Some("oom"));
        assert_eq!(sup.exit_code_of("a"), Some(0));
        assert_eq!(sup.exit_reason_of("a"), None);
        assert_eq!(sup.runner().released, ["b", "a"]);
    }

    #[test]
    fn each_container_gets_its_own_stop_timeout() {
        let mut quick = plan("quick", Signal::SIGQUIT);
        quick.stop_timeout = Some(Duration::from_millis(30));
        let mut slow = plan("slow", Signal::SIGINT);
        slow.stop_timeout = Some(Duration::from_millis(400));
        let default = plan("default", Signal::SIGTERM);
        let mut sup = Supervisor::new(
            SupervisorConfig {
                stop_grace: Duration::from_millis(200),
            },
            FakeRunner::default(),
            vec![slow, quick, default],
        );
        sup.start_all();
        let started = Instant::now();
        sup.stop_all();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
        let (slow, quick, default) = (Pid::from_raw(101), Pid::from_raw(102), Pid::from_raw(103));
        assert_eq!(
            sup.runner().signals,
            vec![
                (slow, Signal::SIGINT),
                (quick, Signal::SIGQUIT),
                (default, Signal::SIGTERM),
                (quick, Signal::SIGKILL),
                (default, Signal::SIGKILL),
                (slow, Signal::SIGKILL),
            ]
        );
        assert_eq!(sup.running(), 0);
    }

    #[test]
    fn stop_without_kill_when_all_obey() {
        let runner = FakeRunner {
            term_exits: vec![Pid::from_raw(101)],
            ..FakeRunner::default()
        };
        let mut sup = Supervisor::new(
            SupervisorConfig {
                stop_grace: Duration::from_secs(30),
            },
            runner,
            vec![plan("a", Signal::SIGTERM)],
        );
        sup.start_all();
        let started = Instant::now();
        sup.stop_all();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            sup.runner().signals,
            vec![(Pid::from_raw(101), Signal::SIGTERM)]
        );
    }
}
