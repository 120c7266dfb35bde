//! The agent's main loop: start the manifest's containers in dependency order, report every
//! state change as an event, reap them, restart them by policy with growing delays, and stop
//! them all on shutdown.
//!
//! Process side effects go through [`Runner`] and time through [`Clock`], so start/stop/exit,
//! restart delays and dependency ordering are unit-tested with fakes. Each container is a
//! [`Slot`]; nothing in the loop ever sleeps for one container (a restart delay is a deadline
//! the loop wakes up for), so a crash-looping container never delays the others. A container
//! comes to life only in `Supervisor::start` and goes away only in `Supervisor::on_exit`.

pub mod adopt;
pub mod boot;
pub mod clock;
pub mod control;
pub mod deps;
pub mod events;
pub mod health;
pub mod images;
pub mod restart;
pub mod signals;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MntFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::console::{self, Event};
use crate::manifest::supervision;
use crate::manifest::Probe;
use crate::runtime::cgroup::{Cgroups, Leaf, Leaves};
use crate::runtime::exec::{self, ExecConfig, Reaped};
use crate::runtime::fdstore::{FdStore, Key};
use crate::runtime::init::error_chain;
use crate::runtime::logfile::{LogFile, Stream};
use crate::runtime::output::Copier;
use crate::runtime::{self, probe, InitConfig, InitProgram, LaunchError, Launched, RootfsLayout};
use clock::{Clock, SystemClock};
use deps::{DepStatus, DepView};
use events::{EventKind, Events};
use restart::Decision;

pub use boot::{prepare, Boot, BootError, ContainerPlan, Supervision};
pub use clock::FakeClock;
pub use control::Control;
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
    /// A container was removed (by `apply`): delete what it left on the state partition.
    fn forget(&mut self, _plan: &ContainerPlan) {}
    /// Start a health check off the supervisor's thread; its result comes back from
    /// [`Runner::probe_results`].
    fn probe(&mut self, _request: ProbeRequest) {}
    /// The container's own address, when it has one on the bridge.
    fn address_of(&self, _name: &str) -> Option<std::net::Ipv4Addr> {
        None
    }
    /// Health checks that ended since the last call.
    fn probe_results(&mut self) -> Vec<ProbeResult> {
        Vec::new()
    }
    /// Take over container `plan`, running as `pid` since before berthd started (see
    /// [`adopt`]): its cgroup leaf and network become this runner's, and its end is seen on
    /// `pidfd`.
    fn adopt(&mut self, _plan: &ContainerPlan, _pid: Pid, _pidfd: OwnedFd) {}
    /// The running containers changed: record them so that a restarted berthd can adopt them.
    fn persist(&mut self, _saved: &adopt::Saved) {}
}

/// A health check to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    /// Container name.
    pub name: String,
    /// Which run of the container it is for (results of an earlier run are ignored).
    pub run: u64,
    /// The check.
    pub probe: Probe,
    /// Its time limit.
    pub timeout: Duration,
    /// Where an exec check runs (pid, env, cwd).
    pub exec: ExecConfig,
}

/// A health check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Container name.
    pub name: String,
    /// The run it was for.
    pub run: u64,
    /// Whether it passed.
    pub passed: bool,
}

/// How long a container's leaf cgroup may take to empty after its process ended.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(2);

/// The real [`Runner`]: cgroups, namespaces, the init shim, waitpid.
#[derive(Debug, Default)]
pub struct HostRunner {
    /// The init shim program.
    pub init: InitProgram,
    /// Whether cgroup v2 can hold the containers (see [`Cgroups::probe`]).
    pub cgroups: Cgroups,
    leaves: Leaves,
    probes: Arc<Mutex<Vec<ProbeResult>>>,
    /// Exits the reaper collected, for threads waiting on their own children.
    pub reaped: Reaped,
    /// Container networking (bridge, namespaces, NAT), when berthd set it up.
    pub network: Option<std::sync::Arc<std::sync::Mutex<crate::net::Network>>>,
    /// Where the runtime state file is kept, when berthd records it (see [`adopt`]).
    state_file: Option<PathBuf>,
    /// PID 1's fd store holding the containers' output pipes.
    fdstore: Option<FdStore>,
    /// Adopted containers (PID 1's children).
    orphans: adopt::Orphans,
}

impl HostRunner {
    /// A runner starting containers through `init`, in leaf cgroups of `cgroups` when
    /// available.
    pub fn new(init: InitProgram, cgroups: Cgroups) -> Self {
        HostRunner {
            init,
            cgroups,
            leaves: Leaves::new(),
            probes: Arc::default(),
            reaped: Reaped::default(),
            network: None,
            state_file: None,
            fdstore: None,
            orphans: adopt::Orphans::default(),
        }
    }

    /// Record the running containers in `run_dir` and their pipes in `store`, and watch
    /// adopted ones, so that containers survive a berthd restart (see [`adopt`]).
    pub fn enable_adoption(&mut self, run_dir: &Path, store: Option<FdStore>) {
        self.state_file = Some(run_dir.join(adopt::STATE_FILE));
        self.fdstore = store;
        self.orphans = adopt::Orphans::new(run_dir.join(adopt::REAPED_DIR));
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
        if let (Ok(l), Some(store)) = (&launched, &mut self.fdstore) {
            let key = Key {
                container: init.name.clone(),
                pid: l.pid.as_raw(),
                start_time: l.start_time,
            };
            if let Err(e) = store.put(&key, l.stdout.as_fd(), l.stderr.as_fd()) {
                console::emit(&Event::Warning {
                    what: format!(
                        "{}; it is started again if berthd restarts",
                        error_chain(&e)
                    ),
                });
            }
        }
        launched
    }

    fn adopt(&mut self, plan: &ContainerPlan, pid: Pid, pidfd: OwnedFd) {
        if let Cgroups::Available(hierarchy) = &self.cgroups {
            let path = hierarchy.leaf_path(&plan.name);
            if path.is_dir() {
                self.leaves.insert(plan.name.clone(), Leaf::existing(path));
            }
        }
        if let Some(Ok(mut net)) = self.network.as_ref().map(|n| n.lock()) {
            if let Err(e) = net.adopt(&plan.name) {
                console::emit(&Event::Error {
                    what: format!("container={}: {}", plan.name, error_chain(&e)),
                });
            }
        }
        self.orphans.watch(pid, pidfd);
    }

    fn persist(&mut self, saved: &adopt::Saved) {
        let Some(path) = &self.state_file else {
            return;
        };
        let running = &saved.running;
        if let Err(e) = adopt::save(path, saved) {
            console::emit(&Event::Warning {
                what: error_chain(&e),
            });
        }
        // Drop the pipes of containers that ended from the store.
        if let Some(store) = &mut self.fdstore {
            let kept = store.rotate(|key| {
                running.iter().any(|r| {
                    r.name == key.container && r.pid == key.pid && r.start_time == key.start_time
                })
            });
            if let Err(e) = kept {
                console::emit(&Event::Warning {
                    what: error_chain(&e),
                });
            }
        }
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
        let mut exits = reap_children();
        for (pid, code) in &exits {
            self.reaped.record(pid.as_raw(), *code);
        }
        exits.extend(self.orphans.reap(Instant::now()));
        exits
    }

    fn cleanup(&mut self, rootfs: &RootfsLayout) {
        unmount_rootfs(&rootfs.target);
    }

    fn address_of(&self, name: &str) -> Option<std::net::Ipv4Addr> {
        self.network.as_ref()?.lock().ok()?.address_of(name)
    }

    fn probe(&mut self, request: ProbeRequest) {
        let results = self.probes.clone();
        let shim = exec::shim_program();
        let reaped = self.reaped.clone();
        // A bridge container is checked on its own address.
        let address = self.address_of(&request.name);
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{}", request.name))
            .spawn(move || {
                let passed = probe::check(
                    &request.probe,
                    address,
                    request.timeout,
                    &shim,
                    &request.exec,
                    &reaped,
                );
                let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
                results.push(ProbeResult {
                    name: request.name,
                    run: request.run,
                    passed,
                });
            });
        if let Err(e) = spawned {
            console::emit(&Event::Error {
                what: format!("cannot start a health check thread: {e}"),
            });
        }
    }

    fn probe_results(&mut self) -> Vec<ProbeResult> {
        let mut results = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *results)
    }

    fn forget(&mut self, plan: &ContainerPlan) {
        if let Some(dir) = plan.log_path().parent() {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    console::emit(&Event::Error {
                        what: format!(
                            "container={}: cannot remove {}: {e}",
                            plan.name,
                            dir.display()
                        ),
                    });
                }
            }
        }
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

/// What decides whether the runtime state must be written again: name, state, pid, restarts.
type PersistKey = (String, &'static str, Option<Pid>, u32);

/// Where a container is in its life.
#[derive(Debug)]
pub enum State {
    /// Not started yet (waiting for its dependencies, or for the next tick).
    Pending,
    /// Its process runs.
    Running {
        /// Host pid.
        pid: Pid,
        /// The process's start time (see [`crate::runtime::process_start_time`]).
        start_time: u64,
        /// Output copiers (stdout, stderr).
        copiers: Vec<Copier>,
        /// When it started.
        since: Instant,
        /// When it is killed if it has not exited (after a stop request).
        kill_at: Option<Instant>,
    },
    /// It ended and starts again at `at`.
    Restarting {
        /// When it is started again.
        at: Instant,
        /// How its last run ended.
        code: i32,
    },
    /// It ended (or never started) with this exit code and stays down.
    Exited {
        /// Exit code (128+N for signal N).
        code: i32,
        /// Why, when the kernel said so (`"oom"`).
        reason: Option<&'static str>,
    },
    /// Its restart policy gave up (`max_restarts` in a row).
    Failed {
        /// Its last exit code.
        code: i32,
    },
    /// An operator stopped it (or the host is shutting down).
    Stopped {
        /// Its exit code, when it was running.
        code: Option<i32>,
    },
}

impl State {
    /// The state's name as `berthctl ps` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running { .. } => "running",
            State::Restarting { .. } => "restarting",
            State::Exited { .. } => "exited",
            State::Failed { .. } => "failed",
            State::Stopped { .. } => "stopped",
        }
    }

    /// The exit code when it is down for good (no restart coming).
    pub fn final_code(&self) -> Option<i32> {
        match self {
            State::Exited { code, .. } | State::Failed { code } => Some(*code),
            State::Stopped { code } => Some(code.unwrap_or(0).max(1)),
            _ => None,
        }
    }
}

/// A container's health, as its health check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// It has no health check.
    None,
    /// Checks have not passed yet (within `start_period`, or not run yet).
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks failed in a row.
    Unhealthy,
}

impl Health {
    /// The name `berthctl ps` shows (`-` for no check).
    pub fn name(self) -> &'static str {
        match self {
            Health::None => "-",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// One declared container and its state.
#[derive(Debug)]
pub struct Slot {
    /// What to run.
    pub plan: ContainerPlan,
    /// Where it is.
    pub state: State,
    /// Its health while running.
    pub health: Health,
    /// Restarts since berthd started it first.
    pub restarts: u32,
    /// Restarts in a row without a stable run (drives delays and `max_restarts`).
    in_a_row: u32,
    /// Its process was started at least once.
    pub started_once: bool,
    /// When its current run started (Unix ms), for uptimes.
    pub started_ms: Option<u64>,
    /// How its last run ended.
    pub last_exit: Option<i32>,
    /// The last dependency status reported while pending.
    waiting: Option<DepStatus>,
    /// An operator (or shutdown) asked it to stop: it is not restarted.
    stop_requested: bool,
    /// Start it again once it stopped (`berthctl restart`).
    start_after_stop: bool,
    /// Once stopped, run this plan instead (`apply` changed it).
    replacement: Option<Box<ContainerPlan>>,
    /// Once stopped, remove it (`apply` removed it).
    remove: bool,
    /// Runs so far (each start is a new run; health results carry it).
    run: u64,
    /// The current run's health checks.
    tracker: Option<health::Tracker>,
}

impl Slot {
    fn new(plan: ContainerPlan) -> Slot {
        Slot {
            plan,
            state: State::Pending,
            health: Health::None,
            restarts: 0,
            in_a_row: 0,
            started_once: false,
            started_ms: None,
            last_exit: None,
            waiting: None,
            stop_requested: false,
            start_after_stop: false,
            replacement: None,
            remove: false,
            run: 0,
            tracker: None,
        }
    }

    /// The host pid while it runs.
    pub fn pid(&self) -> Option<Pid> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// What it waits for or why it cannot start, while pending.
    pub fn waiting(&self) -> Option<&DepStatus> {
        match self.state {
            State::Pending => self.waiting.as_ref(),
            _ => None,
        }
    }

    fn dep_view(&self) -> DepView {
        let running = matches!(self.state, State::Running { .. });
        DepView {
            started_once: self.started_once,
            running,
            healthy: running && matches!(self.health, Health::None | Health::Healthy),
            final_exit: self.state.final_code(),
            blocked: matches!(self.waiting(), Some(DepStatus::Blocked { .. })),
        }
    }

    /// An essential container that is not doing well: down for good with a failure, in a
    /// restart loop not yet stable, or unable to start.
    fn failing(&self) -> bool {
        match &self.state {
            State::Exited { code, .. } => *code != 0,
            State::Failed { .. } | State::Restarting { .. } => true,
            State::Running { .. } => self.in_a_row > 0 || self.health == Health::Unhealthy,
            State::Pending => matches!(self.waiting, Some(DepStatus::Blocked { .. })),
            State::Stopped { .. } => false,
        }
    }
}

/// Starts, watches, restarts and stops the containers of one manifest.
#[derive(Debug)]
pub struct Supervisor<R: Runner, C: Clock = SystemClock> {
    config: SupervisorConfig,
    runner: R,
    clock: C,
    slots: Vec<Slot>,
    events: Events,
    /// Essential containers currently failing (non-empty: the host is degraded).
    degraded: Vec<String>,
    shutting_down: bool,
    /// What was last given to [`Runner::persist`], in short (name, state, pid, restarts).
    persisted: Option<Vec<PersistKey>>,
}

impl<R: Runner> Supervisor<R, SystemClock> {
    /// A supervisor for `plans` on the real clock.
    pub fn new(config: SupervisorConfig, runner: R, plans: Vec<ContainerPlan>) -> Self {
        Supervisor::with_clock(config, runner, SystemClock, plans)
    }
}

impl<R: Runner, C: Clock> Supervisor<R, C> {
    /// A supervisor for `plans`, reading time from `clock`. Plans are started dependencies
    /// first, otherwise in the given order.
    pub fn with_clock(
        config: SupervisorConfig,
        runner: R,
        clock: C,
        plans: Vec<ContainerPlan>,
    ) -> Self {
        Supervisor {
            config,
            runner,
            clock,
            slots: order_plans(plans).into_iter().map(Slot::new).collect(),
            events: Events::default(),
            degraded: Vec::new(),
            shutting_down: false,
            persisted: None,
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

    /// The event history and subscribers.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The event history and subscribers, to subscribe or silence.
    pub fn events_mut(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The essential containers that are failing (empty: the host is `ok`).
    pub fn degraded(&self) -> &[String] {
        &self.degraded
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.plan.name == name)
    }

    /// A container's slot by name.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.plan.name == name)
    }

    /// Host pid of a running container.
    pub fn pid_of(&self, name: &str) -> Option<Pid> {
        self.slot(name).and_then(Slot::pid)
    }

    /// Exit code of a container that is down for good after exiting.
    pub fn exit_code_of(&self, name: &str) -> Option<i32> {
        match self.slot(name)?.state {
            State::Exited { code, .. } | State::Failed { code } => Some(code),
            State::Stopped { code } => code,
            _ => None,
        }
    }

    /// Why an exited container ended, when known (`"oom"`).
    pub fn exit_reason_of(&self, name: &str) -> Option<&'static str> {
        match self.slot(name)?.state {
            State::Exited { reason, .. } => reason,
            _ => None,
        }
    }

    /// How many containers are running.
    pub fn running(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, State::Running { .. }))
            .count()
    }

    fn event(&mut self, container: Option<&str>, kind: EventKind) {
        let now = self.clock.unix_millis();
        self.events.record(now, container, kind);
    }

    /// Start every container that can start now, then print the `ready` line. Returns how
    /// many run. Containers waiting for dependencies start on later [`Supervisor::tick`]s.
    pub fn start_all(&mut self) -> usize {
        self.tick();
        let running = self.running();
        console::emit(&Event::Ready {
            running,
            declared: self.slots.len(),
        });
        running
    }

    /// One round of supervision: collect exits, kill containers whose stop grace ran out,
    /// start what is due (restarts whose delay passed, pending containers whose dependencies
    /// are met) and update the host state. Returns when the next timed action is due.
    pub fn tick(&mut self) -> Option<Instant> {
        self.reap();
        let now = self.clock.now();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            match slot.state {
                State::Running {
                    pid,
                    kill_at: Some(at),
                    ..
                } if at <= now => {
                    let _ = self.runner.signal(pid, Signal::SIGKILL);
                    if let State::Running { kill_at, .. } = &mut slot.state {
                        *kill_at = None;
                    }
                }
                State::Running { since, .. }
                    if slot.in_a_row > 0
                        && now.saturating_duration_since(since) >= restart::STABLE_RUN =>
                {
                    slot.in_a_row = 0;
                }
                State::Restarting { at, .. } if at <= now && !self.shutting_down => {
                    self.start(index);
                }
                _ => {}
            }
        }
        self.check_health();
        self.drop_removed();
        self.start_pending();
        self.update_host_state();
        self.persist();
        self.next_deadline()
    }

    /// Give the running containers to [`Runner::persist`] when they changed since last time.
    fn persist(&mut self) {
        let key: Vec<PersistKey> = self
            .slots
            .iter()
            .map(|s| (s.plan.name.clone(), s.state.name(), s.pid(), s.restarts))
            .collect();
        if self.persisted.as_ref() == Some(&key) {
            return;
        }
        let ended: Vec<adopt::Ended> = self
            .slots
            .iter()
            .filter_map(|s| {
                let outcome = match s.state {
                    State::Exited { code, reason } => adopt::Outcome::Exited {
                        code,
                        oom: reason == Some("oom"),
                    },
                    State::Failed { code } => adopt::Outcome::Failed { code },
                    State::Stopped { code } if !self.shutting_down => {
                        adopt::Outcome::Stopped { code }
                    }
                    _ => return None,
                };
                Some(adopt::Ended {
                    name: s.plan.name.clone(),
                    spec: adopt::spec_hash(&s.plan),
                    restarts: s.restarts,
                    outcome,
                })
            })
            .collect();
        let running: Vec<adopt::Record> = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                State::Running {
                    pid, start_time, ..
                } => Some(adopt::Record {
                    name: s.plan.name.clone(),
                    pid: pid.as_raw(),
                    start_time,
                    spec: adopt::spec_hash(&s.plan),
                    restarts: s.restarts,
                    started_ms: s.started_ms,
                }),
                _ => None,
            })
            .collect();
        self.runner.persist(&adopt::Saved { running, ended });
        self.persisted = Some(key);
    }

    /// Take over what the previous berthd left (see [`adopt::recover`]). Each running
    /// container is running again with its pid, restart count and output, its health checks
    /// start over, and `container=NAME state=running pid=N adopted` is reported. A container
    /// that had ended and stayed down keeps that state (a completed one-shot is not run again);
    /// one that ended while no berthd ran is reported exited and its restart policy applies.
    /// What names an undeclared container is ignored (its pipes close).
    pub fn adopt(&mut self, recovered: adopt::Recovered) {
        for ended in recovered.ended {
            let Some(index) = self.index_of(&ended.name) else {
                continue;
            };
            let slot = &mut self.slots[index];
            if !matches!(slot.state, State::Pending) {
                continue;
            }
            slot.started_once = true;
            slot.restarts = ended.restarts;
            match ended.outcome {
                adopt::Outcome::Exited { code, oom } => {
                    slot.last_exit = Some(code);
                    slot.state = State::Exited {
                        code,
                        reason: oom.then_some("oom"),
                    };
                }
                adopt::Outcome::Failed { code } => {
                    slot.last_exit = Some(code);
                    slot.state = State::Failed { code };
                }
                adopt::Outcome::Stopped { code } => {
                    slot.last_exit = code;
                    slot.state = State::Stopped { code };
                }
                adopt::Outcome::EndedWhileDown { code } => self.ended(index, code, None),
            }
        }
        for adoption in recovered.adopted {
            let record = adoption.record;
            let Some(index) = self.index_of(&record.name) else {
                continue;
            };
            let pid = Pid::from_raw(record.pid);
            let name = record.name.clone();
            let copiers = self.copiers(index, adoption.stdout, adoption.stderr);
            let now = self.clock.now();
            let slot = &mut self.slots[index];
            slot.state = State::Running {
                pid,
                start_time: record.start_time,
                copiers,
                since: now,
                kill_at: None,
            };
            slot.started_once = true;
            slot.started_ms = record.started_ms;
            slot.restarts = record.restarts;
            slot.run += 1;
            slot.tracker = slot
                .plan
                .supervision
                .healthcheck
                .clone()
                .map(|check| health::Tracker::new(check, now));
            slot.health = if slot.tracker.is_some() {
                Health::Starting
            } else {
                Health::None
            };
            self.runner
                .adopt(&self.slots[index].plan, pid, adoption.pidfd);
            self.event(
                Some(&name),
                EventKind::Running {
                    pid: record.pid,
                    adopted: true,
                },
            );
        }
        self.persist();
    }

    /// Output copiers for the container at `index` (console and its log file).
    fn copiers(&self, index: usize, stdout: OwnedFd, stderr: OwnedFd) -> Vec<Copier> {
        let slot = &self.slots[index];
        let name = &slot.plan.name;
        let settings = slot.plan.supervision.log;
        let log = LogFile::new(
            name,
            slot.plan.log_path(),
            settings.max_size,
            settings.files,
        )
        .shared();
        let mut copiers = Vec::with_capacity(2);
        for (fd, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
            match Copier::spawn_logged(name, fd, stream, Some(log.clone())) {
                Ok(c) => copiers.push(c),
                Err(e) => console::emit(&Event::Error {
                    what: format!("container={name}: cannot copy its output: {e}"),
                }),
            }
        }
        copiers
    }

    /// Record health check results (changes become events; an unhealthy container with
    /// `restart_on_unhealthy` is restarted) and start the checks that are due.
    fn check_health(&mut self) {
        for result in self.runner.probe_results() {
            let now = self.clock.now();
            let Some(index) = self.index_of(&result.name) else {
                continue;
            };
            let slot = &mut self.slots[index];
            if slot.run != result.run || slot.pid().is_none() {
                continue;
            }
            let Some(tracker) = &mut slot.tracker else {
                continue;
            };
            let Some(health) = tracker.record(result.passed, now) else {
                continue;
            };
            slot.health = health;
            let restart = health == Health::Unhealthy
                && slot.plan.supervision.restart_on_unhealthy
                && !slot.stop_requested;
            let kind = match health {
                Health::Unhealthy => EventKind::Unhealthy,
                _ => EventKind::Healthy,
            };
            self.event(Some(&result.name), kind);
            if restart {
                self.slots[index].restarts += 1;
                let _ = self.restart_container(&result.name);
            }
        }
        let now = self.clock.now();
        for slot in &mut self.slots {
            let Some(pid) = slot.pid() else { continue };
            let Some(tracker) = &mut slot.tracker else {
                continue;
            };
            if tracker.start_due(now) {
                let process = &slot.plan.init.process;
                self.runner.probe(ProbeRequest {
                    name: slot.plan.name.clone(),
                    run: slot.run,
                    probe: tracker.check.probe.clone(),
                    timeout: tracker.check.timeout,
                    exec: ExecConfig {
                        pid: pid.as_raw(),
                        args: Vec::new(),
                        env: process.env.clone(),
                        cwd: process.cwd.clone(),
                    },
                });
            }
        }
    }

    /// Start pending containers whose dependencies are met, repeating while starts unblock
    /// others (a `started` condition is met at once); report what the rest wait for.
    fn start_pending(&mut self) {
        if self.shutting_down {
            return;
        }
        loop {
            let mut progressed = false;
            for index in 0..self.slots.len() {
                if !matches!(self.slots[index].state, State::Pending) {
                    continue;
                }
                let status = deps::evaluate(&self.slots[index].plan.supervision.depends_on, |n| {
                    self.slot(n).map(Slot::dep_view)
                });
                if status == DepStatus::Ready {
                    self.slots[index].waiting = None;
                    self.start(index);
                    progressed = true;
                    continue;
                }
                if self.slots[index].waiting.as_ref() != Some(&status) {
                    let name = self.slots[index].plan.name.clone();
                    let kind = match &status {
                        DepStatus::Waiting { on, condition } => EventKind::Pending {
                            waiting: on.clone(),
                            condition: *condition,
                        },
                        DepStatus::Blocked {
                            on,
                            condition,
                            reason,
                        } => EventKind::Blocked {
                            waiting: on.clone(),
                            condition: *condition,
                            reason: reason.clone(),
                        },
                        DepStatus::Ready => continue,
                    };
                    self.slots[index].waiting = Some(status);
                    self.event(Some(&name), kind);
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn update_host_state(&mut self) {
        let failing: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.plan.supervision.essential && s.failing())
            .map(|s| s.plan.name.clone())
            .collect();
        if failing != self.degraded {
            let host = if failing.is_empty() { "ok" } else { "degraded" };
            self.degraded = failing.clone();
            self.event(
                None,
                EventKind::Host {
                    host: host.into(),
                    failed: failing,
                },
            );
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                State::Restarting { at, .. } => Some(at),
                State::Running {
                    kill_at: Some(at), ..
                } => Some(at),
                State::Running { since, .. } if s.in_a_row > 0 => Some(since + restart::STABLE_RUN),
                _ => None,
            })
            .chain(self.slots.iter().filter_map(|s| s.tracker.as_ref()?.next()))
            .min()
    }

    /// Start one container: the single place a container process comes to life (first start,
    /// restart, operator start), so per-start setup hooks in here.
    fn start(&mut self, index: usize) -> bool {
        let name = self.slots[index].plan.name.clone();
        self.event(Some(&name), EventKind::Created);
        let slot = &mut self.slots[index];
        match self.runner.launch(&slot.plan.init) {
            Ok(launched) => {
                let slot = &mut self.slots[index];
                slot.state = State::Running {
                    pid: launched.pid,
                    start_time: launched.start_time,
                    copiers: Vec::new(),
                    since: self.clock.now(),
                    kill_at: None,
                };
                slot.started_once = true;
                slot.started_ms = Some(self.clock.unix_millis());
                slot.run += 1;
                slot.tracker = slot
                    .plan
                    .supervision
                    .healthcheck
                    .clone()
                    .map(|check| health::Tracker::new(check, self.clock.now()));
                slot.health = if slot.tracker.is_some() {
                    Health::Starting
                } else {
                    Health::None
                };
                self.event(
                    Some(&name),
                    EventKind::Running {
                        pid: launched.pid.as_raw(),
                        adopted: false,
                    },
                );
                // Copying starts only now, so the container's first lines always come after
                // its `state=running` line on the console (the pipe holds them meanwhile).
                let copiers = self.copiers(index, launched.stdout, launched.stderr);
                if let State::Running {
                    copiers: slot_copiers,
                    ..
                } = &mut self.slots[index].state
                {
                    *slot_copiers = copiers;
                }
                true
            }
            Err(err) => {
                let what = match &err {
                    LaunchError::Container { message, .. } => message.clone(),
                    other => format!("container={name}: {}", error_chain(other)),
                };
                console::emit(&Event::Error { what });
                self.ended(index, err.exit_code(), None);
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

    /// A container's process ended: drain its output, release and clean up what it held —
    /// the single place a container process goes away — then decide what comes next.
    fn on_exit(&mut self, index: usize, code: i32) {
        let slot = &mut self.slots[index];
        let previous = std::mem::replace(&mut slot.state, State::Exited { code, reason: None });
        let mut ran_for = Duration::ZERO;
        if let State::Running { copiers, since, .. } = previous {
            ran_for = self.clock.now().saturating_duration_since(since);
            for copier in copiers {
                copier.finish(OUTPUT_DRAIN);
            }
        }
        let reason = self.runner.release(&slot.plan.name);
        self.runner.cleanup(&slot.plan.init.rootfs);
        if ran_for >= restart::STABLE_RUN {
            slot.in_a_row = 0;
        }
        self.ended(index, code, reason);
    }

    /// Report an end (or a failed start) and apply the restart policy.
    fn ended(&mut self, index: usize, code: i32, reason: Option<&'static str>) {
        let name = self.slots[index].plan.name.clone();
        self.slots[index].last_exit = Some(code);
        self.slots[index].health = Health::None;
        self.slots[index].tracker = None;
        self.event(
            Some(&name),
            EventKind::Exited {
                code,
                reason: reason.map(str::to_owned),
            },
        );
        let slot = &mut self.slots[index];
        if slot.stop_requested || self.shutting_down {
            slot.stop_requested = false;
            slot.state = State::Stopped { code: Some(code) };
            self.event(Some(&name), EventKind::Stopped);
            if !self.shutting_down {
                self.after_stop(index);
            }
            return;
        }
        let sup = &slot.plan.supervision;
        match restart::decide(sup.restart, sup.max_restarts, code, slot.in_a_row) {
            Decision::Stay => slot.state = State::Exited { code, reason },
            Decision::GiveUp => {
                slot.state = State::Failed { code };
                let restarts = slot.restarts;
                self.event(Some(&name), EventKind::Failed { restarts });
            }
            Decision::Restart { delay, attempt } => {
                slot.in_a_row = attempt;
                slot.restarts += 1;
                slot.state = State::Restarting {
                    at: self.clock.now() + delay,
                    code,
                };
                let restarts = slot.restarts;
                self.event(
                    Some(&name),
                    EventKind::Restarting {
                        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        restarts,
                    },
                );
            }
        }
    }

    /// What an operator or `apply` asked for once a container stopped: start it again, run a
    /// new plan, or remove it (done on the next tick).
    fn after_stop(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.remove {
            return;
        }
        if let Some(plan) = slot.replacement.take() {
            *slot = Slot::new(*plan);
        } else if std::mem::take(&mut slot.start_after_stop) {
            slot.state = State::Pending;
            slot.in_a_row = 0;
        }
    }

    /// Remove the slots `apply` removed once their process is gone.
    fn drop_removed(&mut self) {
        let mut index = 0;
        while index < self.slots.len() {
            let slot = &self.slots[index];
            if slot.remove && !matches!(slot.state, State::Running { .. }) {
                let slot = self.slots.remove(index);
                self.runner.forget(&slot.plan);
                self.event(Some(&slot.plan.name), EventKind::Removed);
            } else {
                index += 1;
            }
        }
    }

    /// What reconciling with `plans` would change: containers added, changed (their plan
    /// differs: spec, image content, supervision), removed and unchanged, each in name order.
    pub fn diff(&self, plans: &[ContainerPlan]) -> crate::api::ApplyReport {
        let mut report = crate::api::ApplyReport::default();
        for plan in plans {
            match self.slot(&plan.name) {
                // One an earlier apply removed and that is still going away comes back new.
                None => report.added.push(plan.name.clone()),
                Some(slot) if slot.remove => report.added.push(plan.name.clone()),
                Some(slot) if slot.plan == *plan => report.unchanged.push(plan.name.clone()),
                Some(_) => report.changed.push(plan.name.clone()),
            }
        }
        for slot in &self.slots {
            if !slot.remove && !plans.iter().any(|p| p.name == slot.plan.name) {
                report.removed.push(slot.plan.name.clone());
            }
        }
        for list in [
            &mut report.added,
            &mut report.changed,
            &mut report.removed,
            &mut report.unchanged,
        ] {
            list.sort();
        }
        report
    }

    /// Reconcile with `plans` (a new manifest): unchanged containers are not touched; changed
    /// ones are stopped and started with their new plan; removed ones are stopped, removed
    /// and their directory deleted; new ones are added and start when their dependencies
    /// allow.
    pub fn reconcile(&mut self, plans: Vec<ContainerPlan>) -> crate::api::ApplyReport {
        let mut report = self.diff(&plans);
        for name in report.removed.clone() {
            if let Some(index) = self.index_of(&name) {
                self.slots[index].remove = true;
                let _ = self.stop(&name);
            }
        }
        for plan in order_plans(plans) {
            let Some(index) = self.index_of(&plan.name) else {
                self.slots.push(Slot::new(plan));
                continue;
            };
            // An earlier apply removed it and it has not gone yet (applies in quick
            // succession): it stays, restarted with this plan once stopped.
            let coming_back = std::mem::take(&mut self.slots[index].remove);
            if self.slots[index].plan == plan && !coming_back {
                continue;
            }
            let name = plan.name.clone();
            if matches!(self.slots[index].state, State::Running { .. }) {
                self.slots[index].replacement = Some(Box::new(plan));
                let _ = self.stop(&name);
            } else {
                self.slots[index] = Slot::new(plan);
            }
        }
        report.applied = true;
        report
    }

    /// Ask one container to stop (operator `stop`): its stop signal now, SIGKILL after its
    /// grace period (on a later tick); it is not restarted. A pending or restarting container
    /// is stopped at once. The single place a running container is asked to stop.
    pub fn stop(&mut self, name: &str) -> Result<(), ControlError> {
        let index = self
            .index_of(name)
            .ok_or_else(|| ControlError::unknown(name))?;
        let now = self.clock.now();
        let grace = self.slots[index]
            .plan
            .stop_timeout
            .unwrap_or(self.config.stop_grace);
        let slot = &mut self.slots[index];
        match &mut slot.state {
            State::Running { pid, kill_at, .. } => {
                slot.stop_requested = true;
                if kill_at.is_none() {
                    *kill_at = Some(now + grace);
                    // ESRCH: it already exited and waits to be reaped.
                    let _ = self.runner.signal(*pid, slot.plan.stop_signal);
                }
            }
            State::Pending | State::Restarting { .. } => {
                slot.state = State::Stopped { code: None };
                slot.waiting = None;
                self.event(Some(name), EventKind::Stopped);
            }
            _ => {}
        }
        Ok(())
    }

    /// Start a container that is down (operator `start`); its restart count in a row starts
    /// over. A running or pending container is left as it is.
    pub fn start_container(&mut self, name: &str) -> Result<(), ControlError> {
        let index = self
            .index_of(name)
            .ok_or_else(|| ControlError::unknown(name))?;
        let slot = &mut self.slots[index];
        match slot.state {
            State::Exited { .. } | State::Failed { .. } | State::Stopped { .. } => {
                slot.state = State::Pending;
                slot.in_a_row = 0;
                slot.waiting = None;
            }
            State::Restarting { .. } => slot.state = State::Pending,
            State::Running { .. } => slot.start_after_stop = false,
            State::Pending => {}
        }
        Ok(())
    }

    /// Stop a container and start it again (operator `restart`).
    pub fn restart_container(&mut self, name: &str) -> Result<(), ControlError> {
        let index = self
            .index_of(name)
            .ok_or_else(|| ControlError::unknown(name))?;
        if matches!(self.slots[index].state, State::Running { .. }) {
            self.slots[index].start_after_stop = true;
            self.stop(name)
        } else {
            self.start_container(name)
        }
    }

    /// Supervise until SIGTERM/SIGINT, then stop everything. `between` runs after each
    /// round (the API server's requests are handled there).
    pub fn run(&mut self, signals: &Signals, mut between: impl FnMut(&mut Self) -> bool) {
        loop {
            let next = self.tick();
            if !between(self) {
                break;
            }
            let wait = next
                .map(|at| at.saturating_duration_since(self.clock.now()))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            if let Some(signal) = signals.wait(wait) {
                if Signals::is_shutdown(signal) {
                    break;
                }
            }
        }
        self.stop_all();
    }

    /// Stop every running container, dependents before their dependencies: its stop signal,
    /// then SIGKILL once its own grace period (`stop_timeout`, else the configured default)
    /// has passed. Nothing restarts after this.
    pub fn stop_all(&mut self) {
        self.shutting_down = true;
        for slot in &mut self.slots {
            if matches!(slot.state, State::Pending | State::Restarting { .. }) {
                slot.state = State::Stopped { code: None };
            }
        }
        // Dependents stop before what they depend on: each round stops the running containers
        // no other running container depends on (all of them if a cycle is left).
        loop {
            let running: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots[i].pid().is_some())
                .collect();
            if running.is_empty() {
                break;
            }
            let depended_on = |i: usize| {
                running.iter().any(|&j| {
                    j != i
                        && self.slots[j]
                            .plan
                            .supervision
                            .depends_on
                            .contains_key(&self.slots[i].plan.name)
                })
            };
            let mut layer: Vec<usize> = running
                .iter()
                .copied()
                .filter(|&i| !depended_on(i))
                .collect();
            if layer.is_empty() {
                layer = running;
            }
            self.stop_layer(&layer);
            if layer.iter().any(|&i| self.slots[i].pid().is_some()) {
                break;
            }
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
        self.persist();
    }

    /// Stop the containers at `layer` together: their stop signals, then SIGKILL to each once
    /// its own grace period (`stop_timeout`, else the configured default) has passed.
    fn stop_layer(&mut self, layer: &[usize]) {
        let started = Instant::now();
        let mut killed = false;
        let mut deadlines = Vec::new();
        for &index in layer {
            let slot = &self.slots[index];
            if let State::Running { pid, .. } = slot.state {
                // ESRCH: it already exited and waits to be reaped.
                let _ = self.runner.signal(pid, slot.plan.stop_signal);
                let grace = slot.plan.stop_timeout.unwrap_or(self.config.stop_grace);
                deadlines.push((started + grace, index));
            }
        }
        deadlines.sort();
        for (deadline, index) in deadlines {
            self.wait_exited(layer, deadline.saturating_duration_since(Instant::now()));
            if layer.iter().all(|&i| self.slots[i].pid().is_none()) {
                return;
            }
            let slot = &self.slots[index];
            if let State::Running { pid, .. } = slot.state {
                let _ = self.runner.signal(pid, Signal::SIGKILL);
                killed = true;
            }
        }
        if killed {
            self.wait_exited(layer, Duration::from_secs(10));
        }
    }

    fn wait_exited(&mut self, layer: &[usize], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.reap();
            if layer.iter().all(|&i| self.slots[i].pid().is_none()) || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The longest the main loop sleeps without a timed action (it also wakes on signals).
const MAX_WAIT: Duration = Duration::from_millis(100);

/// Plans with every dependency before its dependents, otherwise in the given order.
fn order_plans(mut plans: Vec<ContainerPlan>) -> Vec<ContainerPlan> {
    let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
    let order: Vec<String> = {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let deps: BTreeMap<&str, Vec<&str>> = plans
            .iter()
            .map(|p| {
                let on = p
                    .supervision
                    .depends_on
                    .keys()
                    .map(String::as_str)
                    .collect();
                (p.name.as_str(), on)
            })
            .collect();
        supervision::start_order(&refs, &deps)
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let mut out = Vec::with_capacity(plans.len());
    for name in order {
        if let Some(i) = plans.iter().position(|p| p.name == name) {
            out.push(plans.remove(i));
        }
    }
    out
}

/// An operator request that cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No container has this name.
    #[error("no container named {name:?}; `berthctl ps` lists them")]
    Unknown {
        /// The name asked for.
        name: String,
    },
}

impl ControlError {
    fn unknown(name: &str) -> Self {
        ControlError::Unknown {
            name: name.to_owned(),
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
    use crate::manifest::{Condition, RestartPolicy};
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
        probes: Vec<ProbeRequest>,
        results: Vec<ProbeResult>,
        forgotten: Vec<String>,
        launched: Vec<String>,
        adopted: Vec<(String, Pid)>,
        persisted: Vec<Vec<adopt::Record>>,
        persisted_ended: Vec<Vec<adopt::Ended>>,
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
            self.launched.push(init.name.clone());
            Ok(Launched {
                pid: Pid::from_raw(100 + self.next_pid),
                stdout,
                stderr,
                start_time: 5000 + self.next_pid as u64,
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
        fn probe(&mut self, request: ProbeRequest) {
            self.probes.push(request);
        }
        fn forget(&mut self, plan: &ContainerPlan) {
            self.forgotten.push(plan.name.clone());
        }
        fn adopt(&mut self, plan: &ContainerPlan, pid: Pid, _pidfd: OwnedFd) {
            self.adopted.push((plan.name.clone(), pid));
        }
        fn persist(&mut self, saved: &adopt::Saved) {
            self.persisted.push(saved.running.clone());
            self.persisted_ended.push(saved.ended.clone());
        }
        fn probe_results(&mut self) -> Vec<ProbeResult> {
            std::mem::take(&mut self.results)
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
                host_pid: false,
            },
            stop_signal,
            stop_timeout: None,
            supervision: Supervision::default(),
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

    fn supervised(
        plans: Vec<ContainerPlan>,
        runner: FakeRunner,
    ) -> (Supervisor<FakeRunner, FakeClock>, FakeClock) {
        let clock = FakeClock::new();
        let mut sup = Supervisor::with_clock(
            SupervisorConfig {
                stop_grace: Duration::from_secs(5),
            },
            runner,
            clock.clone(),
            plans,
        );
        sup.events_mut().quiet = true;
        (sup, clock)
    }

    fn with(name: &str, f: impl FnOnce(&mut Supervision)) -> ContainerPlan {
        let mut p = plan(name, Signal::SIGTERM);
        f(&mut p.supervision);
        p
    }

    fn exit(sup: &mut Supervisor<FakeRunner, FakeClock>, name: &str, code: i32) {
        let pid = sup.pid_of(name).unwrap();
        sup.runner.pending_exits.push((pid, code));
    }

    fn kinds(sup: &Supervisor<FakeRunner, FakeClock>, name: &str) -> Vec<EventKind> {
        sup.events()
            .history()
            .filter(|e| e.container.as_deref() == Some(name))
            .map(|e| e.kind.clone())
            .collect()
    }

    fn delays(sup: &Supervisor<FakeRunner, FakeClock>, name: &str) -> Vec<u64> {
        kinds(sup, name)
            .into_iter()
            .filter_map(|k| match k {
                EventKind::Restarting { delay_ms, .. } => Some(delay_ms),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_crash_loop_backs_off_exponentially_without_touching_others() {
        let crash = with("crash", |s| s.restart = RestartPolicy::Always);
        let (mut sup, clock) = supervised(
            vec![crash, plan("web", Signal::SIGTERM)],
            FakeRunner::default(),
        );
        assert_eq!(sup.start_all(), 2);
        let web = sup.pid_of("web").unwrap();
        let mut expected = Vec::new();
        for round in 0..6u32 {
            exit(&mut sup, "crash", 1);
            let next = sup.tick().unwrap();
            let delay = Duration::from_millis(100 * (1 << round));
            expected.push(u64::try_from(delay.as_millis()).unwrap());
            assert_eq!(next, clock.now() + delay);
            assert_eq!(sup.slot("crash").unwrap().state.name(), "restarting");
            // Not yet: just before the delay ends it is still down; web is untouched.
            clock.advance(delay - Duration::from_millis(1));
            sup.tick();
            assert_eq!(sup.pid_of("crash"), None);
            assert_eq!(sup.pid_of("web"), Some(web));
            clock.advance(Duration::from_millis(1));
            sup.tick();
            assert!(sup.pid_of("crash").is_some(), "round {round}");
        }
        assert_eq!(delays(&sup, "crash"), expected);
        assert_eq!(sup.slot("crash").unwrap().restarts, 6);
        assert_eq!(sup.pid_of("web"), Some(web));
        assert_eq!(sup.runner().next_pid, 8);
    }

    #[test]
    fn delays_cap_at_30s_and_reset_after_a_stable_run() {
        let crash = with("crash", |s| s.restart = RestartPolicy::OnFailure);
        let (mut sup, clock) = supervised(vec![crash], FakeRunner::default());
        sup.start_all();
        for _ in 0..12 {
            exit(&mut sup, "crash", 2);
            let next = sup.tick().unwrap();
            clock.advance(next - clock.now());
            sup.tick();
        }
        let d = delays(&sup, "crash");
        assert_eq!(d[9..], [30_000, 30_000, 30_000]);
        // A run of 10 s is stable: the next failure starts again at 100 ms.
        clock.advance(restart::STABLE_RUN);
        sup.tick();
        exit(&mut sup, "crash", 2);
        sup.tick();
        assert_eq!(delays(&sup, "crash").last(), Some(&100));
    }

    #[test]
    fn policies_decide_who_comes_back() {
        let plans = vec![
            with("once", |_| {}),
            with("fail", |s| s.restart = RestartPolicy::OnFailure),
            with("ok", |s| s.restart = RestartPolicy::OnFailure),
            with("limited", |s| {
                s.restart = RestartPolicy::Always;
                s.max_restarts = Some(2);
            }),
        ];
        let (mut sup, clock) = supervised(plans, FakeRunner::default());
        sup.start_all();
        exit(&mut sup, "once", 1);
        exit(&mut sup, "fail", 1);
        exit(&mut sup, "ok", 0);
        sup.tick();
        assert_eq!(sup.slot("once").unwrap().state.name(), "exited");
        assert_eq!(sup.slot("fail").unwrap().state.name(), "restarting");
        assert_eq!(sup.slot("ok").unwrap().state.name(), "exited");
        for _ in 0..2 {
            exit(&mut sup, "limited", 0);
            sup.tick();
            clock.advance(Duration::from_secs(1));
            sup.tick();
        }
        exit(&mut sup, "limited", 0);
        sup.tick();
        assert_eq!(sup.slot("limited").unwrap().state.name(), "failed");
        assert_eq!(
            kinds(&sup, "limited").last(),
            Some(&EventKind::Failed { restarts: 2 })
        );
    }

    #[test]
    fn a_failed_start_is_restarted_by_policy_too() {
        let runner = FakeRunner {
            fail: vec!["bad".into()],
            ..FakeRunner::default()
        };
        let bad = with("bad", |s| {
            s.restart = RestartPolicy::OnFailure;
            s.max_restarts = Some(1);
        });
        let (mut sup, clock) = supervised(vec![bad], runner);
        assert_eq!(sup.start_all(), 0);
        assert_eq!(sup.slot("bad").unwrap().state.name(), "restarting");
        clock.advance(Duration::from_millis(100));
        sup.tick();
        assert_eq!(sup.slot("bad").unwrap().state.name(), "failed");
        assert_eq!(sup.exit_code_of("bad"), Some(127));
    }

    #[test]
    fn dependencies_order_start_up_and_block_on_failure() {
        let plans = vec![
            with("app", |s| {
                s.depends_on.insert("db".into(), Condition::Healthy);
                s.depends_on.insert("migrate".into(), Condition::Completed);
            }),
            with("db", |s| s.restart = RestartPolicy::Always),
            with("migrate", |s| {
                s.depends_on.insert("db".into(), Condition::Started);
            }),
        ];
        let (mut sup, _clock) = supervised(plans, FakeRunner::default());
        let order: Vec<&str> = sup.slots().iter().map(|s| s.plan.name.as_str()).collect();
        assert_eq!(order, ["db", "migrate", "app"]);
        assert_eq!(sup.start_all(), 2);
        assert_eq!(sup.pid_of("db"), Some(Pid::from_raw(101)));
        assert_eq!(sup.pid_of("migrate"), Some(Pid::from_raw(102)));
        assert_eq!(
            sup.slot("app").unwrap().waiting(),
            Some(&DepStatus::Waiting {
                on: "migrate".into(),
                condition: Condition::Completed
            })
        );
        assert_eq!(
            kinds(&sup, "app"),
            [EventKind::Pending {
                waiting: "migrate".into(),
                condition: Condition::Completed
            }]
        );
        // Ticks without change report nothing new.
        sup.tick();
        assert_eq!(kinds(&sup, "app").len(), 1);
        exit(&mut sup, "migrate", 0);
        sup.tick();
        assert_eq!(sup.pid_of("app"), Some(Pid::from_raw(103)));

        // A failed one-shot blocks its dependent, with the reason, until it is fixed.
        let plans = vec![
            with("app", |s| {
                s.depends_on.insert("migrate".into(), Condition::Completed);
            }),
            with("migrate", |_| {}),
        ];
        let (mut sup, _clock) = supervised(plans, FakeRunner::default());
        sup.start_all();
        exit(&mut sup, "migrate", 3);
        sup.tick();
        assert_eq!(sup.slot("app").unwrap().state.name(), "pending");
        assert_eq!(
            kinds(&sup, "app").last(),
            Some(&EventKind::Blocked {
                waiting: "migrate".into(),
                condition: Condition::Completed,
                reason: "exited code=3".into()
            })
        );
        sup.start_container("migrate").unwrap();
        sup.tick();
        assert!(sup.pid_of("migrate").is_some());
        assert!(matches!(
            sup.slot("app").unwrap().waiting(),
            Some(DepStatus::Waiting { .. })
        ));
    }

    #[test]
    fn an_essential_failure_degrades_the_host_until_it_runs_stably() {
        let db = with("db", |s| {
            s.restart = RestartPolicy::Always;
            s.essential = true;
        });
        let (mut sup, clock) = supervised(
            vec![db, plan("web", Signal::SIGTERM)],
            FakeRunner::default(),
        );
        sup.start_all();
        assert!(sup.degraded().is_empty());
        exit(&mut sup, "db", 1);
        sup.tick();
        assert_eq!(sup.degraded(), ["db"]);
        clock.advance(Duration::from_millis(100));
        sup.tick();
        assert!(sup.pid_of("db").is_some());
        assert_eq!(sup.degraded(), ["db"], "not yet stable");
        clock.advance(restart::STABLE_RUN);
        sup.tick();
        assert!(sup.degraded().is_empty());
        let host: Vec<EventKind> = sup
            .events()
            .history()
            .filter(|e| e.container.is_none())
            .map(|e| e.kind.clone())
            .collect();
        assert_eq!(
            host,
            [
                EventKind::Host {
                    host: "degraded".into(),
                    failed: vec!["db".into()]
                },
                EventKind::Host {
                    host: "ok".into(),
                    failed: vec![]
                }
            ]
        );
        // A non-essential container failing changes nothing.
        exit(&mut sup, "web", 1);
        sup.tick();
        assert!(sup.degraded().is_empty());
    }

    #[test]
    fn operator_stop_start_and_restart() {
        let runner = FakeRunner {
            term_exits: vec![Pid::from_raw(101)],
            ..FakeRunner::default()
        };
        let always = with("web", |s| s.restart = RestartPolicy::Always);
        let stubborn = with("stubborn", |s| s.restart = RestartPolicy::Always);
        let (mut sup, clock) = supervised(vec![always, stubborn], runner);
        sup.start_all();
        sup.stop("web").unwrap();
        sup.tick();
        assert_eq!(sup.slot("web").unwrap().state.name(), "stopped");
        clock.advance(Duration::from_secs(60));
        sup.tick();
        assert_eq!(
            sup.pid_of("web"),
            None,
            "a stopped container is not restarted"
        );

        // One that ignores SIGTERM is killed after its grace period, on a later tick.
        sup.stop("stubborn").unwrap();
        sup.tick();
        assert!(sup.pid_of("stubborn").is_some());
        clock.advance(Duration::from_secs(5));
        sup.tick();
        sup.tick();
        assert_eq!(sup.slot("stubborn").unwrap().state.name(), "stopped");
        assert_eq!(
            sup.runner().signals,
            [
                (Pid::from_raw(101), Signal::SIGTERM),
                (Pid::from_raw(102), Signal::SIGTERM),
                (Pid::from_raw(102), Signal::SIGKILL)
            ]
        );

        sup.start_container("web").unwrap();
        sup.tick();
        assert_eq!(sup.pid_of("web"), Some(Pid::from_raw(103)));
        sup.restart_container("web").unwrap();
        sup.tick();
        clock.advance(Duration::from_secs(5));
        sup.tick();
        sup.tick();
        assert_eq!(sup.pid_of("web"), Some(Pid::from_raw(104)));
        assert!(matches!(
            sup.stop("nope"),
            Err(ControlError::Unknown { .. })
        ));
    }

    fn tcp_check(retries: u32) -> crate::manifest::HealthCheck {
        crate::manifest::HealthCheck {
            probe: Probe::Tcp { port: 5432 },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            retries,
            start_period: Duration::ZERO,
        }
    }

    #[test]
    fn healthy_dependency_gates_start_and_unhealthy_restarts() {
        let db = with("db", |s| {
            s.healthcheck = Some(tcp_check(2));
            s.restart_on_unhealthy = true;
        });
        let app = with("app", |s| {
            s.depends_on.insert("db".into(), Condition::Healthy);
        });
        let runner = FakeRunner {
            term_exits: vec![Pid::from_raw(101)],
            ..FakeRunner::default()
        };
        let (mut sup, clock) = supervised(vec![app, db], runner);
        assert_eq!(sup.start_all(), 1);
        assert_eq!(sup.slot("db").unwrap().health, Health::Starting);
        assert!(
            sup.runner().probes.is_empty(),
            "first check after one interval"
        );
        let next = sup.tick().unwrap();
        assert_eq!(next, clock.now() + Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        sup.tick();
        let probe = sup.runner().probes[0].clone();
        assert_eq!((probe.name.as_str(), probe.run), ("db", 1));
        assert_eq!(probe.exec.pid, 101);
        assert_eq!(probe.probe, Probe::Tcp { port: 5432 });
        // No second check while one runs.
        clock.advance(Duration::from_secs(5));
        sup.tick();
        assert_eq!(sup.runner().probes.len(), 1);
        assert_eq!(sup.pid_of("app"), None);
        sup.runner.results.push(ProbeResult {
            name: "db".into(),
            run: 1,
            passed: true,
        });
        sup.tick();
        assert_eq!(sup.slot("db").unwrap().health, Health::Healthy);
        assert_eq!(sup.pid_of("app"), Some(Pid::from_raw(102)));

        // Two failures in a row: unhealthy, then restarted (stop signal, exit, new run).
        for _ in 0..2 {
            clock.advance(Duration::from_secs(1));
            sup.tick();
            let run = sup.runner().probes.last().unwrap().run;
            sup.runner.results.push(ProbeResult {
                name: "db".into(),
                run,
                passed: false,
            });
            sup.tick();
        }
        assert_eq!(
            sup.runner().signals,
            [(Pid::from_raw(101), Signal::SIGTERM)]
        );
        sup.tick();
        assert_eq!(sup.pid_of("db"), Some(Pid::from_raw(103)));
        assert_eq!(sup.slot("db").unwrap().health, Health::Starting);
        assert_eq!(sup.slot("db").unwrap().restarts, 1);
        let db_events: Vec<&str> = kinds(&sup, "db")
            .iter()
            .map(|k| match k {
                EventKind::Healthy => "healthy",
                EventKind::Unhealthy => "unhealthy",
                EventKind::Stopped => "stopped",
                EventKind::Running { .. } => "running",
                _ => "",
            })
            .filter(|k| !k.is_empty())
            .collect();
        assert_eq!(
            db_events,
            ["running", "healthy", "unhealthy", "stopped", "running"]
        );
        // A late result of the old run is ignored.
        sup.runner.results.push(ProbeResult {
            name: "db".into(),
            run: 1,
            passed: true,
        });
        sup.tick();
        assert_eq!(sup.slot("db").unwrap().health, Health::Starting);
    }

    #[test]
    fn reconcile_keeps_unchanged_replaces_changed_removes_and_adds() {
        let runner = FakeRunner {
            term_exits: vec![Pid::from_raw(102), Pid::from_raw(103)],
            ..FakeRunner::default()
        };
        let plans = vec![
            plan("keep", Signal::SIGTERM),
            plan("change", Signal::SIGTERM),
            plan("drop", Signal::SIGTERM),
        ];
        let (mut sup, _clock) = supervised(plans, runner);
        sup.start_all();
        let mut changed = plan("change", Signal::SIGTERM);
        changed.init.process.args = vec!["/bin/false".into()];
        let next = vec![
            plan("keep", Signal::SIGTERM),
            changed.clone(),
            plan("new", Signal::SIGTERM),
        ];
        let report = sup.diff(&next);
        assert_eq!(
            (
                report.added.clone(),
                report.changed.clone(),
                report.removed.clone(),
                report.unchanged.clone()
            ),
            (
                vec!["new".to_string()],
                vec!["change".to_string()],
                vec!["drop".to_string()],
                vec!["keep".to_string()]
            )
        );
        assert!(!report.applied);
        assert!(sup.runner().signals.is_empty(), "diff changes nothing");

        let report = sup.reconcile(next);
        assert!(report.applied);
        sup.tick();
        sup.tick();
        assert_eq!(sup.pid_of("keep"), Some(Pid::from_raw(101)), "untouched");
        assert_eq!(
            sup.runner().signals,
            [
                (Pid::from_raw(103), Signal::SIGTERM),
                (Pid::from_raw(102), Signal::SIGTERM)
            ]
        );
        assert!(sup.slot("drop").is_none());
        assert_eq!(sup.runner().forgotten, ["drop"]);
        assert_eq!(kinds(&sup, "drop").last(), Some(&EventKind::Removed));
        let new_change = sup.slot("change").unwrap();
        assert_eq!(new_change.plan, changed);
        assert!(new_change.pid().is_some());
        assert_ne!(new_change.pid(), Some(Pid::from_raw(102)));
        assert!(sup.pid_of("new").is_some());
        assert!(sup
            .diff(&[
                plan("keep", Signal::SIGTERM),
                changed,
                plan("new", Signal::SIGTERM)
            ])
            .changed
            .is_empty());
    }

    #[test]
    fn a_container_removed_and_applied_again_before_it_is_gone_comes_back() {
        let runner = FakeRunner {
            term_exits: vec![Pid::from_raw(101)],
            ..FakeRunner::default()
        };
        let (mut sup, _clock) = supervised(vec![plan("a", Signal::SIGTERM)], runner);
        sup.start_all();
        let pending = plan("p", Signal::SIGTERM);
        // a removed (still stopping), then applied again before any tick; p is added,
        // removed while pending, and applied again, all before a tick.
        sup.reconcile(vec![pending.clone()]);
        sup.reconcile(vec![]);
        let report = sup.diff(&[plan("a", Signal::SIGTERM), pending.clone()]);
        assert_eq!(report.added, ["a", "p"]);
        assert!(report.removed.is_empty() && report.unchanged.is_empty());
        sup.reconcile(vec![plan("a", Signal::SIGTERM), pending]);
        sup.tick();
        sup.tick();
        assert!(sup.pid_of("a").is_some(), "a runs again");
        assert_ne!(sup.pid_of("a"), Some(Pid::from_raw(101)));
        assert!(sup.pid_of("p").is_some(), "p runs");
        assert!(sup.runner().forgotten.is_empty());
    }

    #[test]
    fn shutdown_stops_dependents_before_their_dependencies() {
        let runner = FakeRunner {
            term_exits: vec![Pid::from_raw(101), Pid::from_raw(102), Pid::from_raw(103)],
            ..FakeRunner::default()
        };
        let app = with("app", |s| {
            s.depends_on.insert("db".into(), Condition::Started);
        });
        let (mut sup, _clock) = supervised(
            vec![
                app,
                plan("db", Signal::SIGTERM),
                plan("web", Signal::SIGTERM),
            ],
            runner,
        );
        sup.start_all();
        // Started dependencies first: db, app, web.
        let (db, app, web) = (Pid::from_raw(101), Pid::from_raw(102), Pid::from_raw(103));
        assert_eq!(sup.pid_of("app"), Some(app));
        sup.stop_all();
        assert_eq!(
            sup.runner().signals,
            [
                (app, Signal::SIGTERM),
                (web, Signal::SIGTERM),
                (db, Signal::SIGTERM)
            ]
        );
        assert_eq!(sup.running(), 0);
    }

    #[test]
    fn spec_hash_follows_the_plan() {
        let web = plan("web", Signal::SIGTERM);
        let hash = adopt::spec_hash(&web);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, adopt::spec_hash(&web.clone()));
        let mut changed = web.clone();
        changed.init.process.args.push("--more".into());
        assert_ne!(hash, adopt::spec_hash(&changed));
        let mut restarted = web;
        restarted.supervision.restart = RestartPolicy::Always;
        assert_ne!(hash, adopt::spec_hash(&restarted));
    }

    #[test]
    fn a_restarted_berthd_keeps_ended_containers_down_and_applies_policies_to_exits_it_missed() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        let migrate = plan("migrate", Signal::SIGTERM);
        let mut worker = plan("worker", Signal::SIGTERM);
        worker.supervision.restart = RestartPolicy::OnFailure;
        let mut oneshot = plan("oneshot", Signal::SIGTERM);
        oneshot.supervision.restart = RestartPolicy::No;
        let changed = plan("changed", Signal::SIGTERM);
        let fresh = plan("fresh", Signal::SIGTERM);
        let plans = vec![
            migrate.clone(),
            worker.clone(),
            oneshot.clone(),
            changed.clone(),
            fresh.clone(),
        ];
        // Pids of processes that are gone: children that ran and were reaped.
        let dead = || {
            let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
            let pid = child.id() as i32;
            child.wait().unwrap();
            pid
        };
        let (worker_pid, oneshot_pid) = (dead(), dead());
        let running = |p: &ContainerPlan, pid: i32| adopt::Record {
            name: p.name.clone(),
            pid,
            start_time: 1,
            spec: adopt::spec_hash(p),
            restarts: 2,
            started_ms: None,
        };
        let saved = adopt::Saved {
            running: vec![running(&worker, worker_pid), running(&oneshot, oneshot_pid)],
            ended: vec![
                adopt::Ended {
                    name: "migrate".into(),
                    spec: adopt::spec_hash(&migrate),
                    restarts: 0,
                    outcome: adopt::Outcome::Exited {
                        code: 0,
                        oom: false,
                    },
                },
                adopt::Ended {
                    name: "changed".into(),
                    spec: "not-its-spec-any-more".into(),
                    restarts: 0,
                    outcome: adopt::Outcome::Exited {
                        code: 0,
                        oom: false,
                    },
                },
            ],
        };
        adopt::save(&run.join(adopt::STATE_FILE), &saved).unwrap();
        // PID 1 recorded the worker's crash (code 3); the one-shot's code was not recorded.
        std::fs::create_dir_all(run.join(adopt::REAPED_DIR)).unwrap();
        std::fs::write(
            run.join(adopt::REAPED_DIR).join(worker_pid.to_string()),
            "3\n",
        )
        .unwrap();

        let recovered = adopt::recover(run, None, &plans);
        assert!(recovered.adopted.is_empty());
        let mut ended: Vec<(String, adopt::Outcome)> = recovered
            .ended
            .iter()
            .map(|e| (e.name.clone(), e.outcome))
            .collect();
        ended.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            ended,
            vec![
                (
                    "migrate".into(),
                    adopt::Outcome::Exited {
                        code: 0,
                        oom: false
                    }
                ),
                (
                    "oneshot".into(),
                    adopt::Outcome::EndedWhileDown {
                        code: adopt::UNKNOWN_EXIT
                    }
                ),
                ("worker".into(), adopt::Outcome::EndedWhileDown { code: 3 }),
            ]
        );
        assert!(std::fs::read_dir(run.join(adopt::REAPED_DIR))
            .unwrap()
            .next()
            .is_none());

        let mut sup = Supervisor::new(SupervisorConfig::default(), FakeRunner::default(), plans);
        sup.adopt(recovered);
        sup.start_all();
        // The completed migration and the one-shot stay down; the crashed worker is restarted
        // by its policy (after its delay); the changed and the new container start now.
        assert_eq!(
            sup.runner().launched,
            vec!["changed".to_string(), "fresh".to_string()]
        );
        assert_eq!(sup.slot("migrate").unwrap().state.name(), "exited");
        assert_eq!(sup.slot("oneshot").unwrap().state.name(), "exited");
        let worker = sup.slot("worker").unwrap();
        assert_eq!(worker.state.name(), "restarting");
        assert_eq!(worker.restarts, 3);
        assert_eq!(worker.last_exit, Some(3));
        // What stays down is recorded for the next berthd.
        let names: Vec<String> = sup
            .runner()
            .persisted_ended
            .last()
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(names, vec!["migrate".to_string(), "oneshot".to_string()]);
    }

    #[test]
    fn adopted_containers_keep_pid_and_restarts_and_are_not_started_again() {
        let web = plan("web", Signal::SIGTERM);
        let mut sup = Supervisor::new(
            SupervisorConfig::default(),
            FakeRunner::default(),
            vec![web.clone(), plan("db", Signal::SIGTERM)],
        );
        let (stdout, _w1) = nix::unistd::pipe().unwrap();
        let (stderr, _w2) = nix::unistd::pipe().unwrap();
        let (pidfd, _w3) = nix::unistd::pipe().unwrap();
        let record = adopt::Record {
            name: "web".into(),
            pid: 77,
            start_time: 4242,
            spec: adopt::spec_hash(&web),
            restarts: 3,
            started_ms: Some(1234),
        };
        sup.adopt(adopt::Recovered {
            adopted: vec![adopt::Adoption {
                record: record.clone(),
                stdout,
                stderr,
                pidfd,
            }],
            ended: Vec::new(),
        });
        assert_eq!(sup.pid_of("web"), Some(Pid::from_raw(77)));
        let slot = sup.slot("web").unwrap();
        assert_eq!((slot.restarts, slot.started_ms), (3, Some(1234)));
        assert_eq!(
            sup.runner().adopted,
            vec![("web".to_string(), Pid::from_raw(77))]
        );
        let last = sup.events().history().last().unwrap();
        assert_eq!(
            last.kind,
            EventKind::Running {
                pid: 77,
                adopted: true
            }
        );
        assert_eq!(
            last.console_line(),
            "berth: container=web state=running pid=77 adopted"
        );
        assert_eq!(
            sup.runner().persisted.last().unwrap(),
            &vec![record.clone()]
        );

        // Starting the rest leaves web alone.
        sup.start_all();
        assert_eq!(sup.runner().launched, vec!["db".to_string()]);
        let running: Vec<(String, i32, u64)> = sup
            .runner()
            .persisted
            .last()
            .unwrap()
            .iter()
            .map(|r| (r.name.clone(), r.pid, r.start_time))
            .collect();
        assert_eq!(
            running,
            vec![("web".to_string(), 77, 4242), ("db".to_string(), 101, 5001)]
        );
        // Nothing changed: nothing is written again.
        let writes = sup.runner().persisted.len();
        sup.tick();
        assert_eq!(sup.runner().persisted.len(), writes);

        // The adopted container ends like any other: it leaves the state file.
        sup.runner.pending_exits.push((Pid::from_raw(77), 0));
        sup.tick();
        assert_eq!(sup.slot("web").unwrap().state.name(), "exited");
        let names: Vec<&str> = sup
            .runner()
            .persisted
            .last()
            .unwrap()
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, vec!["db"]);
    }
}
