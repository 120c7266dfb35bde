//! berthd's side of starting a container: pipes, new namespaces, the init shim, its report.
//!
//! The forked child of (multi-threaded) berthd does only async-signal-safe work in `pre_exec`
//! — `dup2` of the report pipe, entering the container's leaf cgroup (`open`/`write` of `0` to
//! its `cgroup.procs`) and `unshare` of the namespaces, in that order so the new cgroup
//! namespace is rooted at the leaf — before exec'ing the shim.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::Pid;

use super::init::{InitConfig, NetworkNamespace, Report, EXIT_SETUP_FAILED, INIT_ARG, REPORT_FD};

/// Namespaces every container gets; the network namespace is chosen per container (see
/// [`NetworkNamespace`]) and `pid = "host"` leaves out the PID namespace.
pub const NAMESPACES: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWPID;

/// The program that acts as the container init shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProgram {
    /// Executable.
    pub path: PathBuf,
    /// Arguments (the first one is normally [`INIT_ARG`]).
    pub args: Vec<OsString>,
}

impl InitProgram {
    /// berthd itself: `/proc/self/exe __container-init`.
    pub fn current_exe() -> Self {
        InitProgram {
            path: PathBuf::from("/proc/self/exe"),
            args: vec![OsString::from(INIT_ARG)],
        }
    }

    /// Another berthd binary (tests use the freshly built one).
    pub fn berthd(path: impl Into<PathBuf>) -> Self {
        InitProgram {
            path: path.into(),
            args: vec![OsString::from(INIT_ARG)],
        }
    }
}

impl Default for InitProgram {
    fn default() -> Self {
        Self::current_exe()
    }
}

/// A container process that reached exec.
#[derive(Debug)]
pub struct Launched {
    /// Its pid in berthd's PID namespace (PID 1 inside its own).
    pub pid: Pid,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
    /// Its start time (see [`super::process_start_time`]; 0 when unreadable).
    pub start_time: u64,
}

/// Why a container did not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// pipe2 failed.
    #[error("cannot create a pipe for the container")]
    Pipe(#[source] io::Error),
    /// The shim could not be started.
    #[error("cannot start the container init {program} in its cgroup and new namespaces (this needs root)")]
    Spawn {
        /// The shim program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The config could not be serialized.
    #[error("cannot encode the container config")]
    Encode(#[source] serde_json::Error),
    /// The shim's report was unreadable.
    #[error("container init gave no usable report (it exited with {status})")]
    NoReport {
        /// The shim's exit status.
        status: String,
        /// Why the report was unusable.
        #[source]
        source: io::Error,
    },
    /// The container failed before exec.
    #[error("{message}")]
    Container {
        /// What went wrong (already prefixed `container=NAME:`).
        message: String,
        /// Its exit code.
        code: i32,
    },
}

impl LaunchError {
    /// The exit code to report for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Container { code, .. } => *code,
            _ => EXIT_SETUP_FAILED,
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::Pipe(io::Error::from(e)))
}

/// Start one container. The caller must be a child subreaper (see
/// [`super::become_subreaper`]) so the container is re-parented to it when the shim exits, and
/// must be the only one reaping children while this runs.
pub fn launch(program: &InitProgram, cfg: &InitConfig) -> Result<Launched, LaunchError> {
    let config = serde_json::to_vec(cfg).map_err(LaunchError::Encode)?;
    let (cfg_r, cfg_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    let mut cmd = Command::new(&program.path);
    cmd.args(&program.args)
        .env_clear()
        .stdin(Stdio::from(cfg_r))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let rep_fd = rep_w.as_raw_fd();
    // Opened before the fork: the child only calls setns on it.
    let netns = match &cfg.network {
        NetworkNamespace::Join(path) => {
            Some(File::open(path).map_err(|source| LaunchError::Spawn {
                program: path.clone(),
                source,
            })?)
        }
        NetworkNamespace::New | NetworkNamespace::Host => None,
    };
    let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
    let mut namespaces = match cfg.network {
        NetworkNamespace::New => NAMESPACES | libc::CLONE_NEWNET,
        NetworkNamespace::Host | NetworkNamespace::Join(_) => NAMESPACES,
    };
    if cfg.host_pid {
        namespaces &= !libc::CLONE_NEWPID;
    }
    let cgroup_procs = match &cfg.cgroup {
        Some(dir) => Some(
            CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).map_err(|e| {
                LaunchError::Spawn {
                    program: dir.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, e),
                }
            })?,
        ),
        None => None,
    };
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (dup2, fcntl, open, write, close, setns, unshare); it allocates
    // nothing (the cgroup.procs path was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            if rep_fd == REPORT_FD {
                if libc::fcntl(REPORT_FD, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(rep_fd, REPORT_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(procs) = &cgroup_procs {
                // "0" moves the writing process itself into the leaf.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            if let Some(fd) = netns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::unshare(namespaces) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // Close our copies of the child's ends so EOFs arrive when the child's copies close.
    drop(cmd);
    drop(rep_w);
    drop(netns);
    let mut shim = spawned.map_err(|source| LaunchError::Spawn {
        program: program.path.clone(),
        source,
    })?;

    // A shim that died early makes this fail with EPIPE; its report then says why.
    let sent = File::from(cfg_w).write_all(&config);
    let mut report = Vec::new();
    let read = File::from(rep_r).read_to_end(&mut report);
    let status = shim
        .wait()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| format!("unknown status ({e})"));
    let no_report = |source: io::Error| LaunchError::NoReport {
        status: status.clone(),
        source,
    };
    read.map_err(&no_report)?;
    let parsed: Report = match serde_json::from_slice(&report) {
        Ok(r) => r,
        Err(e) => {
            return Err(no_report(match sent {
                Err(send) => send,
                Ok(()) => io::Error::new(io::ErrorKind::InvalidData, e),
            }))
        }
    };
    match parsed {
        Report::Started { pid } => Ok(Launched {
            pid: Pid::from_raw(pid),
            stdout: out_r,
            stderr: err_r,
            start_time: super::process_start_time(pid).unwrap_or(0),
        }),
        Report::Failed { message, code } => Err(LaunchError::Container { message, code }),
    }
}
