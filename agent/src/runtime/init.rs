//! The container init shim: `berthd __container-init`, run in the container's fresh namespaces.
//!
//! berthd is multi-threaded (output copiers), and a forked child of a threaded process may not
//! allocate. So berthd only `unshare`s and re-executes itself; this freshly exec'd,
//! single-threaded shim forks the container's PID 1 (which may allocate freely), reports its
//! host pid — or the reason it failed before exec — on fd 3 and exits. berthd, a child
//! subreaper, then adopts and reaps the container process.
//!
//! Protocol: stdin carries the JSON [`InitConfig`] (read to EOF); fd 3 receives one JSON
//! [`Report`]; stdout/stderr are the container's.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};

use super::cgroup::CgroupLimits;
use super::rlimit::RlimitSetting;
use super::rootfs::{self, RealSys, RootfsLayout, Sys};
use super::security::{self, Prepared, SecuritySpec};
use super::spec::{ProcessSpec, DEFAULT_PATH};
use super::userns;

/// argv[1] that makes berthd act as the container init shim.
pub const INIT_ARG: &str = "__container-init";

/// The fd the shim writes its [`Report`] to.
pub const REPORT_FD: RawFd = 3;

/// Exit code of a container whose setup failed before exec (Docker's "runtime error" code).
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit code when the program exists but cannot be executed (shell convention).
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit code when the program is not found (shell convention).
pub const EXIT_NOT_FOUND: i32 = 127;

/// Everything the shim needs to start one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// Container name (for messages).
    pub name: String,
    /// What to run.
    pub process: ProcessSpec,
    /// The root filesystem to build and enter.
    pub rootfs: RootfsLayout,
    /// cgroup v2 limits, written by berthd into the container's leaf cgroup.
    #[serde(default)]
    pub limits: CgroupLimits,
    /// rlimits the process starts with.
    #[serde(default)]
    pub rlimits: Vec<RlimitSetting>,
    /// The container's leaf cgroup directory, set by berthd when it created one: the process
    /// enters it before the cgroup namespace is unshared (see `cgroup.rs`), and the shim
    /// mounts the namespace's cgroup2 view read-only at `/sys/fs/cgroup`.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// User, capabilities, seccomp, read-only root.
    #[serde(default)]
    pub security: SecuritySpec,
    /// The network namespace: a new one (default), the host's, or one prepared by berthd's
    /// network module. Entered by berthd's forked child before the shim runs.
    #[serde(default)]
    pub network: NetworkNamespace,
    /// Run in the host's PID namespace (`pid = "host"`) instead of a new one.
    #[serde(default)]
    pub host_pid: bool,
}

/// Which network namespace a container runs in.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum NetworkNamespace {
    /// A fresh, empty one (only a down `lo`).
    #[default]
    New,
    /// The host's (`network = "host"`).
    Host,
    /// The namespace bound at this path (set up by `net::Network`).
    Join(PathBuf),
}

/// What the shim tells berthd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Report {
    /// The container process exec'd; `pid` is its pid in berthd's PID namespace.
    Started {
        /// Host pid.
        pid: i32,
    },
    /// The container never reached exec.
    Failed {
        /// What went wrong, in words.
        message: String,
        /// The exit code to report (125, 126 or 127).
        code: i32,
    },
}

/// Why the container process did not reach its program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildFailure {
    /// What went wrong.
    pub message: String,
    /// Exit code (see the `EXIT_*` constants).
    pub code: i32,
}

/// In the container's namespaces: build and enter the root, set the hostname, change to the
/// working directory, make the root read-only if asked, lock the process down
/// ([`security::apply`]) and exec. Returns only on failure.
pub fn enter_and_exec(cfg: &InitConfig, prepared: &Prepared, sys: &mut dyn Sys) -> ChildFailure {
    let setup = |message: String| ChildFailure {
        message,
        code: EXIT_SETUP_FAILED,
    };
    let steps = match rootfs::plan(&cfg.rootfs) {
        Ok(steps) => steps,
        Err(e) => return setup(format!("root filesystem: {e}")),
    };
    if let Err(e) = rootfs::apply(&steps, sys) {
        return setup(error_chain(&e));
    }
    if cfg.cgroup.is_some() {
        // The cgroup namespace is rooted at the container's leaf: it sees its own limits.
        let target = Path::new("/sys/fs/cgroup");
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if let Err(e) = sys.mount(Some("cgroup2"), target, Some("cgroup2"), flags, None) {
            return setup(format!("mount cgroup2 on {}: {e}", target.display()));
        }
    }
    if let Err(e) = sys.sethostname(&cfg.process.hostname) {
        return setup(format!("sethostname {:?}: {e}", cfg.process.hostname));
    }
    let cwd = Path::new(&cfg.process.cwd);
    if let Err(e) = sys.mkdir_all(cwd).and_then(|()| sys.chdir(cwd)) {
        return setup(format!("working directory {:?}: {e}", cfg.process.cwd));
    }
    for r in &cfg.rlimits {
        if let Err(e) = sys.setrlimit(&r.name, r.soft, r.hard) {
            return setup(format!(
                "rlimit {} = [{}, {}]: {e}",
                r.name,
                show_rlimit(r.soft),
                show_rlimit(r.hard)
            ));
        }
    }
    if cfg.security.read_only {
        // Only the root mount: /proc, /dev, /sys and their submounts keep their own flags.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = sys.mount(None, Path::new("/"), None, flags, None) {
            return setup(format!("remounting the root filesystem read-only: {e}"));
        }
    }
    if cfg.security.userns.is_some() {
        // Last step as the host's root: from here on capabilities count only inside.
        if let Err(e) = sys.enter_user_namespace() {
            return setup(format!("entering the user namespace: {e}"));
        }
    }
    if let Err(message) = security::apply(prepared, sys) {
        return setup(message);
    }
    exec(sys, &cfg.process.args, &cfg.process.env)
}

fn show_rlimit(value: u64) -> String {
    if value == u64::MAX {
        "\"unlimited\"".into()
    } else {
        value.to_string()
    }
}

/// exec `args` like execvp with the *container's* PATH (Docker resolves in the container).
fn exec(sys: &mut dyn Sys, args: &[String], env: &[String]) -> ChildFailure {
    let Some(program) = args.first() else {
        return ChildFailure {
            message: "no program to run".into(),
            code: EXIT_NOT_FOUND,
        };
    };
    let fail = |path: &str, e: std::io::Error| ChildFailure {
        message: format!("exec {path:?}: {e}"),
        code: if e.kind() == std::io::ErrorKind::NotFound {
            EXIT_NOT_FOUND
        } else {
            EXIT_CANNOT_EXEC
        },
    };
    if program.contains('/') {
        return fail(program, sys.execve(program, args, env));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let mut denied = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = format!("{}/{program}", dir.trim_end_matches('/'));
        let err = sys.execve(&candidate, args, env);
        match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => continue,
            Some(libc::EACCES) => {
                denied.get_or_insert((candidate, err));
            }
            _ => return fail(&candidate, err),
        }
    }
    match denied {
        Some((candidate, err)) => fail(&candidate, err),
        None => ChildFailure {
            message: format!("exec {program:?}: executable file not found in $PATH ({path_var})"),
            code: EXIT_NOT_FOUND,
        },
    }
}

/// "outer: inner: innermost" for an error and its sources.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Entry point of `berthd __container-init`; returns the shim's exit code. Must run before
/// berthd starts any thread.
pub fn shim_main() -> i32 {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(REPORT_FD, libc::F_GETFD) } < 0 {
        eprintln!("berth: {INIT_ARG} is started by berthd only (no report pipe on fd {REPORT_FD})");
        return 2;
    }
    // SAFETY: fd 3 is the report pipe berthd placed there for us and nothing else owns it.
    let mut report = unsafe { File::from_raw_fd(REPORT_FD) };
    // SAFETY: setting FD_CLOEXEC on our own descriptor; the container must not inherit it.
    unsafe { libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let outcome = run_shim().unwrap_or_else(|message| Report::Failed {
        message,
        code: EXIT_SETUP_FAILED,
    });
    match serde_json::to_vec(&outcome) {
        Ok(bytes) if report.write_all(&bytes).is_ok() => 0,
        _ => 1,
    }
}

fn run_shim() -> Result<Report, String> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading the container config: {e}"))?;
    let cfg: InitConfig = serde_json::from_slice(&input)
        .map_err(|e| format!("decoding the container config: {e}"))?;
    // Compiling the seccomp filter allocates: do it here, before the fork.
    let prepared = security::prepare(&cfg.name, &cfg.security).map_err(|e| error_chain(&e))?;
    // The container reads nothing from berthd: give it /dev/null as stdin.
    let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0)
        .map_err(|e| format!("dup2 /dev/null: {e}"))?;
    drop(null);

    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("creating the sync pipe: {e}"))?;
    // A user namespace is mapped by this process through the host's /proc: open it now, since
    // the container's pivot_root also replaces this process's root.
    let userns = match cfg.security.userns {
        Some(map) => {
            let proc = File::open("/proc").map_err(|e| format!("opening /proc: {e}"))?;
            let (child, shim) = userns::handshake()
                .map_err(|e| format!("creating the user namespace handshake: {e}"))?;
            Some((map, proc, child, shim))
        }
        None => None,
    };
    let (child_sync, shim_side) = match userns {
        Some((map, proc, child, shim)) => (Some(child), Some((map, proc, shim))),
        None => (None, None),
    };
    // SAFETY: the shim is a freshly exec'd process that never started a thread, so the child
    // is a full copy of a single-threaded process and may allocate.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(err_r);
            let _ = nix::unistd::close(REPORT_FD);
            reset_signals();
            drop(shim_side);
            let mut sys = RealSys { userns: child_sync };
            let failure = enter_and_exec(&cfg, &prepared, &mut sys);
            let mut pipe = File::from(err_w);
            let _ = pipe.write_all(failure.message.as_bytes());
            drop(pipe);
            // SAFETY: _exit ends this forked child without running the parent's atexit hooks.
            unsafe { libc::_exit(failure.code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(err_w);
            drop(child_sync);
            let mut mapping_error = None;
            if let Some((map, proc, shim)) = shim_side {
                if let Err(e) = shim.serve(&proc, child.as_raw(), &map) {
                    // The child reads EOF and fails; its message follows.
                    mapping_error = Some(format!("mapping the user namespace: {e}"));
                }
            }
            let mut message = String::new();
            // EOF without data means the CLOEXEC write end closed at a successful exec.
            let _ = File::from(err_r).read_to_string(&mut message);
            if let Some(e) = mapping_error {
                message = format!("{e}; {message}");
            }
            if message.is_empty() {
                return Ok(Report::Started {
                    pid: child.as_raw(),
                });
            }
            let code = match waitpid(child, None) {
                Ok(status) => super::exit_code(status).unwrap_or(EXIT_SETUP_FAILED),
                Err(_) => EXIT_SETUP_FAILED,
            };
            Ok(Report::Failed {
                message: format!("container={}: {message}", cfg.name),
                code,
            })
        }
    }
}

/// Undo what a Rust runtime and berthd set up: the workload starts with no blocked signals
/// and default SIGPIPE.
fn reset_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: restoring the default disposition installs no handler.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runtime::rootfs::FakeSys;

    fn cfg(args: &[&str], env: &[&str]) -> InitConfig {
        InitConfig {
            name: "web".into(),
            process: ProcessSpec {
                args: args.iter().map(|s| s.to_string()).collect(),
                env: env.iter().map(|s| s.to_string()).collect(),
                cwd: "/srv".into(),
                hostname: "webhost".into(),
            },
            rootfs: RootfsLayout::for_container(
                Path::new("/state/containers"),
                "web",
                &[PathBuf::from("/layers/a")],
            ),
            limits: CgroupLimits::default(),
            rlimits: Vec::new(),
            cgroup: None,
            security: SecuritySpec::default(),
            network: Default::default(),
            host_pid: false,
        }
    }

    fn run(c: &InitConfig, sys: &mut FakeSys) -> ChildFailure {
        enter_and_exec(c, &security::prepare(&c.name, &c.security).unwrap(), sys)
    }

    fn fake(failures: &[(&str, i32)]) -> FakeSys {
        FakeSys {
            failures: failures.iter().map(|(p, e)| (p.to_string(), *e)).collect(),
            ..FakeSys::default()
        }
    }

    #[test]
    fn full_sequence_ends_with_hostname_cwd_and_exec() {
        let mut sys = fake(&[]);
        let f = run(&cfg(&["/bin/sh", "-c", "x"], &["A=1"]), &mut sys);
        // The fake "succeeds" at exec, which the shim reports as a failure to exec.
        assert_eq!(f.code, EXIT_CANNOT_EXEC);
        let tail: Vec<&str> = sys
            .calls
            .iter()
            .rev()
            .take(10)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "chdir /",
                "sethostname webhost",
                "mkdir /srv",
                "chdir /srv",
                "drop_bounding keep 0xa80425fb",
                "set_ids uid=0 gid=0 groups=[]",
                "set_caps 0xa80425fb ambient=false",
                "no_new_privs",
                "seccomp 2 programs",
                r#"execve /bin/sh ["/bin/sh", "-c", "x"] ["A=1"]"#
            ]
        );
        // A writable root is never remounted.
        assert!(!sys
            .calls
            .iter()
            .any(|c| c.starts_with("mount - / - MS_RDONLY")));
    }

    #[test]
    fn read_only_root_is_remounted_after_the_workdir_exists() {
        let mut c = cfg(&["/bin/true"], &[]);
        c.security.read_only = true;
        c.security.seccomp = crate::runtime::security::SeccompProfile::Unconfined;
        let mut sys = fake(&[]);
        run(&c, &mut sys);
        let at = |line: &str| sys.calls.iter().position(|c| c == line).unwrap();
        let remount = at("mount - / - MS_RDONLY|MS_REMOUNT|MS_BIND -");
        assert!(at("mkdir /srv") < remount && remount < at("no_new_privs"));
        assert!(!sys.calls.iter().any(|c| c.starts_with("seccomp")));
    }

    #[test]
    fn user_namespace_is_entered_after_the_root_is_built_and_before_the_user_switch() {
        let mut c = cfg(&["/bin/true"], &[]);
        c.security.read_only = true;
        c.security.userns = Some(crate::runtime::userns::IdMap::DEFAULT);
        let mut sys = fake(&[]);
        run(&c, &mut sys);
        let at = |prefix: &str| {
            sys.calls
                .iter()
                .position(|c| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {:#?}", sys.calls))
        };
        let userns = at("unshare user");
        assert!(at("pivot_root") < userns && at("sethostname") < userns);
        assert!(at("mount - / - MS_RDONLY") < userns);
        assert!(userns < at("drop_bounding") && userns < at("set_ids"));

        // Without `userns` there is no such step; a failed one stops before the user switch.
        let mut sys = fake(&[]);
        run(&cfg(&["/bin/true"], &[]), &mut sys);
        assert!(!sys.calls.iter().any(|c| c == "unshare user"));
        let mut sys = fake(&[("unshare user", libc::EPERM)]);
        let f = run(&c, &mut sys);
        assert_eq!(f.code, EXIT_SETUP_FAILED);
        assert!(
            f.message.starts_with("entering the user namespace:"),
            "{}",
            f.message
        );
        assert!(!sys
            .calls
            .iter()
            .any(|c| c.starts_with("set_ids") || c.starts_with("execve")));
    }

    #[test]
    fn unknown_user_is_a_setup_error_naming_the_user() {
        let mut c = cfg(&["/bin/true"], &[]);
        c.security.user = "nobody:nogroup".into();
        let mut sys = fake(&[]);
        sys.files.insert(
            PathBuf::from("/etc/passwd"),
            "root:x:0:0::/:/bin/sh\n".into(),
        );
        let f = run(&c, &mut sys);
        assert_eq!(f.code, EXIT_SETUP_FAILED);
        assert!(
            f.message.contains("unable to find user \"nobody\""),
            "{}",
            f.message
        );
        assert!(!sys
            .calls
            .iter()
            .any(|c| c.starts_with("execve") || c.starts_with("set_ids")));
    }

    #[test]
    fn cgroup_view_and_rlimits_come_right_before_exec() {
        let mut c = cfg(&["/bin/sh"], &[]);
        c.cgroup = Some(PathBuf::from("/sys/fs/cgroup/berth.slice/web"));
        c.rlimits = vec![
            RlimitSetting {
                name: "nofile".into(),
                soft: 64,
                hard: 128,
            },
            RlimitSetting {
                name: "core".into(),
                soft: 0,
                hard: u64::MAX,
            },
        ];
        let mut sys = fake(&[]);
        run(&c, &mut sys);
        let pivot = sys
            .calls
            .iter()
            .position(|l| l.starts_with("pivot_root"))
            .unwrap();
        let mount = sys
            .calls
            .iter()
            .position(|l| {
                l.starts_with(
                    "mount cgroup2 /sys/fs/cgroup cgroup2 MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC",
                )
            })
            .unwrap();
        assert!(mount > pivot);
        let at = |line: &str| sys.calls.iter().position(|c| c == line).unwrap();
        let nofile = at("setrlimit nofile 64 128");
        let core = at(&format!("setrlimit core 0 {}", u64::MAX));
        // rlimits are set while the process still holds CAP_SYS_RESOURCE: before the
        // capability drop and seccomp, which end with the exec.
        assert!(mount < nofile && nofile < core && core < at("no_new_privs"));
        assert!(sys.calls.last().unwrap().starts_with("execve /bin/sh"));

        // Without a leaf there is no cgroup mount; a refused rlimit stops before exec.
        let mut c = cfg(&["/bin/sh"], &[]);
        c.rlimits = vec![RlimitSetting {
            name: "nproc".into(),
            soft: 1,
            hard: 1,
        }];
        let mut sys = fake(&[("setrlimit nproc", libc::EPERM)]);
        let f = run(&c, &mut sys);
        assert_eq!(f.code, EXIT_SETUP_FAILED);
        assert!(
            f.message.starts_with("rlimit nproc = [1, 1]:"),
            "{}",
            f.message
        );
        assert!(!sys
            .calls
            .iter()
            .any(|l| l.contains("cgroup2") || l.starts_with("execve")));
    }

    #[test]
    fn bare_program_is_searched_in_container_path() {
        let mut sys = fake(&[
            ("execve /a/ls", libc::ENOENT),
            ("execve /b/ls", libc::EACCES),
        ]);
        let f = run(&cfg(&["ls"], &["PATH=/a:/b:/c"]), &mut sys);
        let execs: Vec<&String> = sys
            .calls
            .iter()
            .filter(|c| c.starts_with("execve"))
            .collect();
        assert_eq!(execs.len(), 3);
        assert!(execs[2].starts_with("execve /c/ls "));
        assert_eq!(f.code, EXIT_CANNOT_EXEC);
    }

    #[test]
    fn program_not_found_is_127_with_a_clear_message() {
        let mut sys = fake(&[
            ("execve /a/nope", libc::ENOENT),
            ("execve /b/nope", libc::ENOENT),
        ]);
        let f = run(&cfg(&["nope"], &["PATH=/a:/b"]), &mut sys);
        assert_eq!(f.code, EXIT_NOT_FOUND);
        assert!(
            f.message.contains("executable file not found in $PATH"),
            "{}",
            f.message
        );

        let mut sys = fake(&[("execve /bin/nope", libc::ENOENT)]);
        let f = run(&cfg(&["/bin/nope"], &[]), &mut sys);
        assert_eq!(f.code, EXIT_NOT_FOUND);
        assert!(f.message.starts_with("exec \"/bin/nope\""), "{}", f.message);
    }

    #[test]
    fn permission_denied_everywhere_is_126() {
        let mut sys = fake(&[("execve /a/x", libc::EACCES), ("execve /b/x", libc::ENOENT)]);
        let f = run(&cfg(&["x"], &["PATH=/a:/b"]), &mut sys);
        assert_eq!(f.code, EXIT_CANNOT_EXEC);
        assert!(f.message.contains("/a/x"), "{}", f.message);
    }

    #[test]
    fn mount_failure_is_a_setup_error_and_nothing_is_executed() {
        let mut sys = fake(&[("mount overlay", libc::EINVAL)]);
        let f = run(&cfg(&["/bin/sh"], &[]), &mut sys);
        assert_eq!(f.code, EXIT_SETUP_FAILED);
        assert!(
            f.message
                .contains("mount overlay on /state/containers/web/rootfs"),
            "{}",
            f.message
        );
        assert!(f.message.contains("Invalid argument"), "{}", f.message);
        assert!(!sys.calls.iter().any(|c| c.starts_with("execve")));
    }

    #[test]
    fn protocol_round_trips_and_rejects_unknown_fields() {
        let c = cfg(&["/bin/true"], &[]);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<InitConfig>(&text).unwrap(), c);
        let r = Report::Failed {
            message: "m".into(),
            code: 127,
        };
        assert_eq!(
            serde_json::from_str::<Report>(&serde_json::to_string(&r).unwrap()).unwrap(),
            r
        );
        assert!(serde_json::from_str::<Report>(r#"{"started":{"pid":1,"x":2}}"#).is_err());
    }
}
