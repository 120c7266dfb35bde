//! The side effects of PID 1's main loop and shutdown, behind [`Sys`], and their real
//! implementation [`RealSys`] (signalfd + power button polling, waitpid, kill, umount,
//! reboot), plus the small one-shot host setup calls (hostname, loopback, Ctrl-Alt-Del).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{
    kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::power_button;

/// Power-off or reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// reboot(RB_POWER_OFF).
    PowerOff,
    /// reboot(RB_AUTOBOOT).
    Reboot,
}

impl Power {
    /// `poweroff` / `reboot`, as printed on the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Power::PowerOff => "poweroff",
            Power::Reboot => "reboot",
        }
    }
}

/// A shutdown request and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What was asked for.
    pub power: Power,
    /// The signal name or "power button".
    pub source: &'static str,
}

/// Map a signal to the request it stands for (SIGTERM/SIGUSR2 power off, SIGINT from
/// Ctrl-Alt-Del and SIGUSR1 reboot).
pub fn request_for(signal: Signal) -> Option<Request> {
    let (power, source) = match signal {
        Signal::SIGTERM => (Power::PowerOff, "SIGTERM"),
        Signal::SIGUSR2 => (Power::PowerOff, "SIGUSR2"),
        Signal::SIGINT => (Power::Reboot, "SIGINT"),
        Signal::SIGUSR1 => (Power::Reboot, "SIGUSR1"),
        _ => return None,
    };
    Some(Request { power, source })
}

/// Children reaped by one [`Sys::reap`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// `(pid, code)`; `code` is the exit status or 128+signal.
    pub exited: Vec<(i32, i32)>,
    /// waitpid reported ECHILD: PID 1 has no children left.
    pub no_children: bool,
}

/// How to start the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// Binary.
    pub path: PathBuf,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Descriptors of PID 1 the agent inherits (the fd store's ends); all others are closed.
    pub fds: Vec<i32>,
}

/// The environment variable naming the fd store's descriptors for the agent (`SEND,RECEIVE`).
pub const FDSTORE_ENV: &str = "BERTH_FDSTORE";

/// Where PID 1 records the exit code of each orphan it reaped (`PID` files holding the code):
/// containers re-parented to PID 1 while berthd was down, whose status berthd reads when it
/// re-adopted them (see the agent's `supervisor::adopt`).
pub const REAPED_DIR: &str = "/run/berth/reaped";

/// Every side effect the main loop and the shutdown sequence perform.
pub trait Sys {
    /// Print one `berth: ` console line (without the prefix).
    fn log(&mut self, line: &str);
    /// Monotonic clock.
    fn now(&self) -> Duration;
    /// Sleep until `timeout` (forever if `None`), a signal or a power button press; returns
    /// the shutdown requests that arrived. SIGCHLD just ends the wait.
    fn wait(&mut self, timeout: Option<Duration>) -> Vec<Request>;
    /// Reap every exited child without blocking.
    fn reap(&mut self) -> Reaped;
    /// Start the agent; returns its PID.
    fn spawn(&mut self, spec: &AgentSpec) -> Result<i32, String>;
    /// Create the agent's fd store: a Unix datagram socket pair whose two ends PID 1 keeps
    /// open for ever, so descriptors the agent sends to one end outlive the agent. Returns
    /// the ends' descriptors (send, receive).
    fn fd_store(&mut self) -> Result<(i32, i32), String>;
    /// Record the exit code of a reaped process that was not the agent (a container orphaned
    /// by a dead agent), for the next agent to read.
    fn record_reaped(&mut self, pid: i32, code: i32);
    /// kill(2); `pid` -1 means every process but PID 1.
    fn kill(&mut self, pid: i32, signal: Signal) -> Result<(), Errno>;
    /// sync(2).
    fn sync(&mut self);
    /// The text of /proc/self/mountinfo.
    fn mountinfo(&mut self) -> Result<String, String>;
    /// umount2(2), with MNT_DETACH when `detach`.
    fn umount(&mut self, path: &str, detach: bool) -> Result<(), Errno>;
    /// Remount `/` read-only.
    fn remount_root_readonly(&mut self) -> Result<(), Errno>;
    /// reboot(2); returns only on failure.
    fn reboot(&mut self, power: Power) -> Errno;
}

/// The signals PID 1 handles; they stay blocked and are read from a signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Block the handled signals (so none is lost before the signalfd exists) and give them a
/// no-op handler: the kernel drops signals to PID 1 that have the default disposition.
/// Children get an empty mask and default handlers back when they exec.
pub fn block_signals() -> Result<(), Errno> {
    let set = handled_signals();
    set.thread_block()?;
    let action = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in set.iter() {
        // SAFETY: the handler does nothing, so it is async-signal-safe; the signals are
        // blocked and consumed through a signalfd, so it normally never runs at all.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// The real implementation.
#[derive(Debug)]
pub struct RealSys {
    signals: SignalFd,
    buttons: Vec<(PathBuf, File)>,
    start: Instant,
    fd_store: Option<(OwnedFd, OwnedFd)>,
    reaped_dir: PathBuf,
}

impl RealSys {
    /// Block the handled signals, open a signalfd for them and open the power button nodes.
    pub fn new(power_buttons: &[PathBuf]) -> Result<RealSys, Errno> {
        let set = handled_signals();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let signals = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        let buttons = power_buttons
            .iter()
            .filter_map(|path| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path)
                    .map(|f| (path.clone(), f))
                    .map_err(|e| {
                        crate::console::log(&format!(
                            "warning: cannot open power button {}: {e}",
                            path.display()
                        ))
                    })
                    .ok()
            })
            .collect();
        Ok(RealSys {
            signals,
            buttons,
            start: Instant::now(),
            fd_store: None,
            reaped_dir: PathBuf::from(REAPED_DIR),
        })
    }

    /// The power button nodes being watched.
    pub fn buttons(&self) -> Vec<&Path> {
        self.buttons.iter().map(|(p, _)| p.as_path()).collect()
    }

    fn drain_signals(&mut self, requests: &mut Vec<Request>) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            requests.extend(request_for(signal));
        }
    }

    fn drain_button(file: &mut File) -> Result<bool, std::io::Error> {
        let mut pressed = false;
        let mut buf = [0u8; power_button::INPUT_EVENT_SIZE * 16];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    pressed |= power_button::contains_power_press(buf.get(..n).unwrap_or_default())
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(pressed),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn poll_timeout(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(t) => {
            // Round up so a sub-millisecond remainder does not turn into a busy loop.
            let ms = t.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms.min(i32::MAX as u128)).unwrap_or(PollTimeout::MAX)
        }
    }
}

impl Sys for RealSys {
    fn log(&mut self, line: &str) {
        crate::console::log(line);
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Vec<Request> {
        let mut requests = Vec::new();
        let (signal_ready, button_events) = {
            let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                self.buttons
                    .iter()
                    .map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, poll_timeout(timeout)) {
                Ok(0) | Err(_) => (false, Vec::new()),
                Ok(_) => {
                    let revents: Vec<PollFlags> = fds
                        .iter()
                        .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                        .collect();
                    let signal_ready = revents.first().is_some_and(|r| !r.is_empty());
                    (
                        signal_ready,
                        revents.into_iter().skip(1).collect::<Vec<_>>(),
                    )
                }
            }
        };
        if signal_ready {
            self.drain_signals(&mut requests);
        }
        let mut broken = Vec::new();
        for (i, revents) in button_events.iter().enumerate() {
            if revents.is_empty() {
                continue;
            }
            let Some((path, file)) = self.buttons.get_mut(i) else {
                continue;
            };
            match Self::drain_button(file) {
                Ok(true) => requests.push(Request {
                    power: Power::PowerOff,
                    source: "power button",
                }),
                Ok(false) => {}
                Err(e) => {
                    crate::console::log(&format!(
                        "warning: power button {} failed ({e}); no longer watching it",
                        path.display()
                    ));
                    broken.push(i);
                }
            }
        }
        // A node that errors or hangs up would make every poll return at once.
        for i in broken.into_iter().rev() {
            self.buttons.remove(i);
        }
        requests
    }

    fn reap(&mut self) -> Reaped {
        let mut reaped = Reaped::default();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(WaitStatus::Exited(pid, code)) => reaped.exited.push((pid.as_raw(), code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    reaped.exited.push((pid.as_raw(), 128 + signal as i32))
                }
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    reaped.no_children = true;
                    break;
                }
                Err(_) => break,
            }
        }
        reaped
    }

    fn spawn(&mut self, spec: &AgentSpec) -> Result<i32, String> {
        let mut command = Command::new(&spec.path);
        let fds = spec.fds.clone();
        // SAFETY: the closure runs between fork and exec and only calls the async-signal-safe
        // sigemptyset, sigprocmask and fcntl, and allocates nothing (`fds` was built before the
        // fork). The agent must not inherit PID 1's blocked signals (std resets SIGPIPE's
        // disposition but not the mask); caught handlers reset on exec. The fd store's ends
        // are close-on-exec in PID 1 and cleared here, in the child only.
        unsafe {
            command.pre_exec(move || {
                let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(empty.as_mut_ptr());
                if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        i32::try_from(child.id()).map_err(|e| e.to_string())
    }

    fn fd_store(&mut self) -> Result<(i32, i32), String> {
        if self.fd_store.is_none() {
            let pair = socketpair(
                AddressFamily::Unix,
                SockType::Datagram,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| e.to_string())?;
            self.fd_store = Some(pair);
        }
        match &self.fd_store {
            Some((send, receive)) => Ok((send.as_raw_fd(), receive.as_raw_fd())),
            None => Err("no fd store".to_string()),
        }
    }

    fn record_reaped(&mut self, pid: i32, code: i32) {
        if let Err(e) = write_reaped(&self.reaped_dir, pid, code) {
            crate::console::log(&format!(
                "warning: cannot record the exit of orphan pid={pid} in {}: {e}",
                self.reaped_dir.display()
            ));
        }
    }

    fn kill(&mut self, pid: i32, signal: Signal) -> Result<(), Errno> {
        kill(Pid::from_raw(pid), signal)
    }

    fn sync(&mut self) {
        nix::unistd::sync();
    }

    fn mountinfo(&mut self) -> Result<String, String> {
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())
    }

    fn umount(&mut self, path: &str, detach: bool) -> Result<(), Errno> {
        let flags = if detach {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        umount2(path, flags)
    }

    fn remount_root_readonly(&mut self) -> Result<(), Errno> {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
    }

    fn reboot(&mut self, power: Power) -> Errno {
        let mode = match power {
            Power::PowerOff => RebootMode::RB_POWER_OFF,
            Power::Reboot => RebootMode::RB_AUTOBOOT,
        };
        match reboot(mode) {
            Err(e) => e,
            Ok(never) => match never {},
        }
    }
}

/// Write `code` to `dir/PID` atomically (a temporary file renamed over it), so a reader never
/// sees a partial file.
pub fn write_reaped(dir: &Path, pid: i32, code: i32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{pid}.tmp"));
    std::fs::write(&tmp, format!("{code}\n"))?;
    std::fs::rename(&tmp, dir.join(pid.to_string()))
}

/// Errors of the one-shot host setup calls.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// sethostname failed.
    #[error("cannot set hostname {name:?}: {source}")]
    Hostname {
        /// The name.
        name: String,
        /// The error.
        #[source]
        source: Errno,
    },
    /// Bringing `lo` up failed.
    #[error("cannot bring up the loopback interface ({step}): {source}")]
    Loopback {
        /// Which call failed.
        step: &'static str,
        /// The error.
        #[source]
        source: Errno,
    },
    /// reboot(RB_DISABLE_CAD) failed.
    #[error("cannot make Ctrl-Alt-Del send SIGINT to PID 1: {source}")]
    CtrlAltDel {
        /// The error.
        #[source]
        source: Errno,
    },
}

/// sethostname(2).
pub fn set_hostname(name: &str) -> Result<(), HostError> {
    nix::unistd::sethostname(name).map_err(|source| HostError::Hostname {
        name: name.to_string(),
        source,
    })
}

/// Set IFF_UP on `lo` with SIOCGIFFLAGS/SIOCSIFFLAGS on a UDP socket.
pub fn loopback_up() -> Result<(), HostError> {
    let err = |step| move |source| HostError::Loopback { step, source };
    // SAFETY: plain socket(2) call; the descriptor is wrapped in an OwnedFd right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(err("socket")(Errno::last()));
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and fills ifru_flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(err("SIOCGIFFLAGS")(Errno::last()));
    }
    // SAFETY: after SIOCGIFFLAGS the flags member of the union is the initialised one.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(err("SIOCSIFFLAGS")(Errno::last()));
    }
    Ok(())
}

/// reboot(RB_DISABLE_CAD): Ctrl-Alt-Del becomes SIGINT to PID 1.
pub fn disable_ctrl_alt_del() -> Result<(), HostError> {
    set_cad_enabled(false).map_err(|source| HostError::CtrlAltDel { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_requests() {
        assert_eq!(request_for(Signal::SIGTERM).unwrap().power, Power::PowerOff);
        assert_eq!(request_for(Signal::SIGUSR2).unwrap().power, Power::PowerOff);
        assert_eq!(request_for(Signal::SIGINT).unwrap().power, Power::Reboot);
        assert_eq!(request_for(Signal::SIGUSR1).unwrap().power, Power::Reboot);
        assert_eq!(request_for(Signal::SIGCHLD), None);
        assert_eq!(request_for(Signal::SIGHUP), None);
    }

    #[test]
    fn poll_timeouts_round_up() {
        assert_eq!(poll_timeout(None), PollTimeout::NONE);
        assert_eq!(
            poll_timeout(Some(Duration::from_micros(1))).as_millis(),
            Some(1)
        );
        assert_eq!(poll_timeout(Some(Duration::ZERO)).as_millis(), Some(0));
        assert_eq!(
            poll_timeout(Some(Duration::from_millis(1500))).as_millis(),
            Some(1500)
        );
        assert_eq!(
            poll_timeout(Some(Duration::from_secs(u64::MAX))),
            PollTimeout::MAX
        );
    }

    #[test]
    fn handled_signals_are_the_shutdown_ones_and_sigchld() {
        let set = handled_signals();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
        ] {
            assert!(set.contains(s));
        }
        assert!(!set.contains(Signal::SIGHUP));
    }

    /// Set in the child process [`reaping_leaves_no_zombies_after_a_fork_storm`] runs itself
    /// in.
    const STORM_CHILD_ENV: &str = "BERTH_TEST_FORK_STORM_SUBREAPER";
    /// Iterations of the storm; each orphans three processes.
    const STORM_ROUNDS: usize = 200;
    /// Orphans still alive when the storm's shell exits.
    const SLEEPERS: usize = 50;

    /// `(pid, state)` of every live or zombie process whose parent is this process.
    fn children() -> Vec<(i32, char)> {
        let me = std::process::id().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...; comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
            if fields.next() == Some(me.as_str()) {
                found.push((pid, state));
            }
        }
        found
    }

    /// The child's side: become a child subreaper (what PID 1 is for the whole system), let a
    /// shell orphan hundreds of short-lived processes onto us while PID 1's own
    /// [`RealSys::wait`] + [`RealSys::reap`] loop runs, then count the zombies left.
    fn storm_subreaper() -> ! {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "prctl: {}", std::io::Error::last_os_error());
        let mut sys = RealSys {
            signals: SignalFd::with_flags(&SigSet::empty(), SfdFlags::SFD_CLOEXEC).unwrap(),
            buttons: Vec::new(),
            start: Instant::now(),
            fd_store: None,
            // Only `reap` runs here: nothing is recorded.
            reaped_dir: std::env::temp_dir().join("berth-storm-reaped"),
        };
        // `(true &)`: the subshell starts `true` in the background and exits at once, so
        // `true` is orphaned and reparented to the nearest subreaper: us. The sleepers at the
        // end are orphaned the same way and still alive when the shell exits.
        let script = format!(
            "i=0; while [ $i -lt {STORM_ROUNDS} ]; do (true &); (true & true &); i=$((i+1)); done; \
             i=0; while [ $i -lt {SLEEPERS} ]; do (exec sleep 1000 &); i=$((i+1)); done"
        );
        let storm = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .spawn()
            .unwrap();
        let storm_pid = i32::try_from(storm.id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut reaped = 0usize;
        let mut storm_done = false;
        while !storm_done {
            assert!(Instant::now() < deadline, "the fork storm did not end");
            sys.wait(Some(Duration::from_millis(20)));
            let r = sys.reap();
            reaped += r.exited.len();
            storm_done = r.exited.iter().any(|(pid, _)| *pid == storm_pid);
        }
        // Kill the sleepers all at once and let them die without reaping them: one reap call
        // must then clear every zombie.
        for (pid, _) in children() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        while children().iter().any(|(_, state)| *state != 'Z') {
            assert!(Instant::now() < deadline, "killed orphans still running");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pending = children().len();
        reaped += sys.reap().exited.len();
        let zombies = children().len();
        println!("storm: reaped={reaped} pending_before_last_reap={pending} zombies={zombies}");
        std::process::exit(0)
    }

    #[test]
    fn reaping_leaves_no_zombies_after_a_fork_storm() {
        if std::env::var_os(STORM_CHILD_ENV).is_some() {
            storm_subreaper();
        }
        // PR_SET_CHILD_SUBREAPER and waitpid(-1) act on the whole process: run them in a
        // child of our own, never in the test harness that runs other tests' children.
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "sys::tests::reaping_leaves_no_zombies_after_a_fork_storm",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STORM_CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("storm: ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no storm line in:\n{stdout}"));
        let value = |key: &str| -> usize {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        // Every orphan (three per round, and the sleepers) came to us and was reaped, plus the
        // storm's shell; the last reap call alone cleared every killed sleeper.
        assert_eq!(value("reaped"), 3 * STORM_ROUNDS + SLEEPERS + 1, "{line}");
        assert!(value("pending_before_last_reap") >= SLEEPERS, "{line}");
        assert_eq!(value("zombies"), 0, "{line}");
    }

    #[test]
    fn agent_starts_with_no_blocked_signals() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("status");
        let script = tmp.path().join("agent.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ngrep SigBlk /proc/self/status > {}\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut sys = RealSys {
            signals: SignalFd::with_flags(&SigSet::empty(), SfdFlags::SFD_CLOEXEC).unwrap(),
            buttons: Vec::new(),
            start: Instant::now(),
            fd_store: None,
            reaped_dir: tmp.path().join("reaped"),
        };
        // Block a signal in this thread, as PID 1 does, then spawn.
        let mut usr1 = SigSet::empty();
        usr1.add(Signal::SIGUSR1);
        usr1.thread_block().unwrap();
        let spec = AgentSpec {
            path: script,
            env: vec![("PATH".to_string(), "/usr/bin:/bin".to_string())],
            fds: Vec::new(),
        };
        let pid = sys.spawn(&spec).unwrap();
        usr1.thread_unblock().unwrap();
        nix::sys::wait::waitpid(Pid::from_raw(pid), None).unwrap();
        let status = std::fs::read_to_string(&out).unwrap();
        assert_eq!(status.trim(), "SigBlk:\t0000000000000000");
    }

    #[test]
    fn the_agent_inherits_the_fd_store_and_orphans_are_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("fds");
        let script = tmp.path().join("agent.sh");
        let mut sys = RealSys {
            signals: SignalFd::with_flags(&SigSet::empty(), SfdFlags::SFD_CLOEXEC).unwrap(),
            buttons: Vec::new(),
            start: Instant::now(),
            fd_store: None,
            reaped_dir: tmp.path().join("reaped"),
        };
        let (send, receive) = sys.fd_store().unwrap();
        // Created once: every agent gets the same pair.
        assert_eq!(sys.fd_store().unwrap(), (send, receive));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nfor fd in {send} {receive}; do test -e /proc/self/fd/$fd && echo $fd; done > {}\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let spec = AgentSpec {
            path: script,
            env: vec![("PATH".to_string(), "/usr/bin:/bin".to_string())],
            fds: vec![send, receive],
        };
        let pid = sys.spawn(&spec).unwrap();
        nix::sys::wait::waitpid(Pid::from_raw(pid), None).unwrap();
        let seen = std::fs::read_to_string(&out).unwrap();
        assert_eq!(seen, format!("{send}\n{receive}\n"));

        sys.record_reaped(4321, 137);
        sys.record_reaped(4321, 0);
        let dir = tmp.path().join("reaped");
        assert_eq!(std::fs::read_to_string(dir.join("4321")).unwrap(), "0\n");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }
}
