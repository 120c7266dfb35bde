//! One container: namespaces, overlay rootfs, pivot_root, process start, output capture.
//!
//! The supervisor decides *which* containers run and *when*; this module knows *how* to run
//! one: [`spec`] merges image and manifest into the process, [`rootfs`] plans the mounts,
//! [`launch`] starts the process in new namespaces via the [`init`] shim, [`security`] locks
//! the process down (user, capabilities, seccomp) just before exec, and [`output`] puts its
//! stdout/stderr on the console and in its rotated [`logfile`]. [`exec`] runs a command
//! inside a running container and [`probe`] runs its health checks.

pub mod cgroup;
pub mod exec;
pub mod fdstore;
pub mod init;
pub mod launch;
pub mod logfile;
pub mod output;
pub mod probe;
pub mod rlimit;
pub mod rootfs;
pub mod security;
pub mod spec;
pub mod userns;

use nix::sys::wait::WaitStatus;

pub use init::{InitConfig, NetworkNamespace, INIT_ARG};
pub use launch::{launch, InitProgram, LaunchError, Launched};
pub use rootfs::RootfsLayout;
pub use spec::{merge, ProcessSpec, SpecError};

/// The exit code a shell would report: the status, or 128+N when killed by signal N.
/// `None` for stop/continue notifications.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22): with the
/// pid it names one process for good, since a reused pid gets a later start time.
pub fn process_start_time(pid: i32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state): field 22 is the 20th after it.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Make this process adopt orphaned descendants (the container processes whose init shim
/// exited), so it can `waitpid` them.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat =
            "123 (a) b (c)) S 1 123 123 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(super::parse_start_time(stat), Some(98765));
        assert_eq!(super::parse_start_time("123 (x) S 1"), None);
        assert_eq!(super::parse_start_time("garbage"), None);
        let own = super::process_start_time(std::process::id() as i32);
        assert!(own.is_some());
    }

    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let pid = Pid::from_raw(7);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, true)),
            Some(143)
        );
        assert_eq!(exit_code(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }
}
