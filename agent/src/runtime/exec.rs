//! Running a command inside a running container: `berthctl exec` and `exec` health checks.
//!
//! `setns` into a mount namespace needs a single-threaded caller and a PID namespace only
//! applies to children, so berthd (or berthctl) re-executes itself as a small shim
//! (`__container-exec CONFIG`): it joins the container's cgroup, enters its IPC, UTS, network,
//! cgroup, PID and mount namespaces, and spawns the command there (a child, so it is inside
//! the PID namespace) with the container's environment and working directory, then exits
//! with the command's status. The command runs as root with berthd's capabilities: it is an
//! operator's tool, not the container's own process.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::launch::InitProgram;

/// The argument that makes berthd/berthctl act as the exec shim.
pub const EXEC_ARG: &str = "__container-exec";

/// Exit code when the shim cannot enter the container (like `docker exec`'s 126/127).
pub const EXIT_CANNOT_ENTER: i32 = 126;
/// Exit code when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// What to run where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Host pid of the container's init process.
    pub pid: i32,
    /// argv.
    pub args: Vec<String>,
    /// Environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
}

/// A shim command for `cfg` (stdio to be set by the caller).
pub fn command(program: &InitProgram, cfg: &ExecConfig) -> io::Result<Command> {
    let json = serde_json::to_string(cfg).map_err(io::Error::other)?;
    let mut cmd = Command::new(&program.path);
    cmd.arg(EXEC_ARG).arg(json);
    Ok(cmd)
}

/// Exit codes of children reaped by berthd's reaper (it collects every child, being a
/// subreaper), kept so the thread that spawned a child can still learn how it ended.
#[derive(Debug, Clone, Default)]
pub struct Reaped(Arc<Mutex<VecDeque<(i32, i32)>>>);

/// Exits kept in [`Reaped`] (the oldest are forgotten).
const REAPED_KEPT: usize = 1024;

impl Reaped {
    /// Remember that `pid` ended with `code`.
    pub fn record(&self, pid: i32, code: i32) {
        let mut exits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if exits.len() == REAPED_KEPT {
            exits.pop_front();
        }
        exits.push_back((pid, code));
    }

    /// How `pid` ended, if the reaper collected it.
    pub fn take(&self, pid: i32) -> Option<i32> {
        let mut exits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = exits.iter().position(|(p, _)| *p == pid)?;
        exits.remove(at).map(|(_, code)| code)
    }
}

/// Wait for `child` until `deadline` (`None`: no limit); its exit code, `None` on timeout
/// (the child is then killed). Works whether this thread or berthd's reaper collects it.
pub fn wait_child(child: &mut Child, deadline: Option<Instant>, reaped: &Reaped) -> Option<i32> {
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Some(status.code().unwrap_or_else(|| {
                    std::os::unix::process::ExitStatusExt::signal(&status).map_or(1, |s| 128 + s)
                }))
            }
            Ok(None) => {}
            Err(_) => {
                if let Some(code) = reaped.take(pid) {
                    return Some(code);
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.try_wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The program to re-execute as the shim: this very binary.
pub fn shim_program() -> InitProgram {
    InitProgram {
        path: PathBuf::from("/proc/self/exe"),
        args: Vec::new(),
    }
}

/// Why the shim could not enter the container.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The config argument is unusable.
    #[error("bad exec config")]
    Config(#[source] serde_json::Error),
    /// A namespace file cannot be opened (the container is gone?).
    #[error("cannot open {} (is the container still running?)", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// setns failed.
    #[error("cannot enter the container's {kind} namespace")]
    Setns {
        /// Which namespace.
        kind: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The command could not be started.
    #[error("cannot run {command:?} in the container")]
    Spawn {
        /// argv[0].
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The namespaces entered, in order (mount last: after it, the host's /proc is gone).
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The shim's entry point (argv: `PROGRAM __container-exec CONFIG`): returns the exit code.
pub fn shim_main() -> i32 {
    let config = std::env::args().nth(2).unwrap_or_default();
    match run(&config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth exec: {}", super::init::error_chain(&e));
            match e {
                ExecError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                    EXIT_NOT_FOUND
                }
                _ => EXIT_CANNOT_ENTER,
            }
        }
    }
}

fn run(config: &str) -> Result<i32, ExecError> {
    let cfg: ExecConfig = serde_json::from_str(config).map_err(ExecError::Config)?;
    let proc_dir = PathBuf::from(format!("/proc/{}", cfg.pid));
    join_cgroup(&proc_dir);
    let mut files = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = proc_dir.join("ns").join(name);
        let file = File::open(&path).map_err(|source| ExecError::Open { path, source })?;
        files.push((name, flag, file));
    }
    for (name, flag, file) in &files {
        nix::sched::setns(file, *flag).map_err(|source| ExecError::Setns { kind: name, source })?;
    }
    let argv0 = cfg.args.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&argv0);
    cmd.args(cfg.args.iter().skip(1)).env_clear();
    for pair in &cfg.env {
        if let Some((k, v)) = pair.split_once('=') {
            cmd.env(k, v);
        }
    }
    let cwd = if Path::new(&cfg.cwd).is_dir() {
        cfg.cwd.clone()
    } else {
        "/".to_owned()
    };
    cmd.current_dir(cwd);
    // The container's init gets SIGKILL when it ends; so should what runs beside it.
    // SAFETY: prctl is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(|source| ExecError::Spawn {
        command: argv0,
        source,
    })?;
    Ok(status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(EXIT_CANNOT_ENTER))
}

/// Move this process into the container's cgroup (best effort: without cgroup v2 there is
/// nothing to join).
fn join_cgroup(proc_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(proc_dir.join("cgroup")) else {
        return;
    };
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        return;
    };
    let procs = Path::new(super::cgroup::DEFAULT_ROOT)
        .join(path.trim_start_matches('/'))
        .join("cgroup.procs");
    let _ = std::fs::write(procs, std::process::id().to_string());
}
