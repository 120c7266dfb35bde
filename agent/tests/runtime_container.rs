//! Host integration tests of the container runtime: real namespaces, overlay and pivot_root.
//!
//! Need root (they create namespaces and mounts) and a static busybox at /bin/busybox (Debian:
//! `apt-get install busybox-static`). Everything lives in temp dirs and throwaway namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_agent::runtime::cgroup::Cgroups;
use berth_agent::runtime::init::{EXIT_NOT_FOUND, EXIT_SETUP_FAILED};
use berth_agent::runtime::output::copy_lines;
use berth_agent::runtime::{self, InitConfig, InitProgram, LaunchError, ProcessSpec, RootfsLayout};
use berth_agent::supervisor::{ContainerPlan, HostRunner, Supervisor, SupervisorConfig};
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;

/// Reaping is process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const APPLETS: [&str; 10] = [
    "sh", "echo", "hostname", "ls", "cat", "sleep", "grep", "test", "true", "mount",
];

fn busybox() -> PathBuf {
    let path = PathBuf::from("/bin/busybox");
    assert!(
        path.is_file(),
        "these tests need a static busybox at /bin/busybox to build a container image: \
         install it with `apt-get install -y busybox-static`"
    );
    path
}

/// A one-layer image: /bin/busybox plus applet symlinks, nothing else.
fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    fs::create_dir_all(layer.join("bin")).unwrap();
    fs::copy(busybox(), layer.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    layer
}

fn init_config(state: &Path, name: &str, layer: &Path, args: &[&str]) -> InitConfig {
    InitConfig {
        name: name.into(),
        process: ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![
                format!("PATH={}", runtime::spec::DEFAULT_PATH),
                format!("HOSTNAME={name}-host"),
            ],
            cwd: "/".into(),
            hostname: format!("{name}-host"),
        },
        rootfs: RootfsLayout::for_container(
            &state.join("containers"),
            name,
            &[layer.to_path_buf()],
        ),
        limits: Default::default(),
        rlimits: Vec::new(),
        cgroup: None,
        security: Default::default(),
        network: Default::default(),
        host_pid: false,
    }
}

fn shim() -> InitProgram {
    InitProgram::berthd(env!("CARGO_BIN_EXE_berthd"))
}

fn collect(name: &str, fd: OwnedFd) -> JoinHandle<Vec<String>> {
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        copy_lines(&name, fs::File::from(fd), &mut |l| {
            lines.push(
                String::from_utf8_lossy(l)
                    .trim_end_matches('\n')
                    .to_string(),
            )
        });
        lines
    })
}

fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect()
}

fn setup() -> (
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    PathBuf,
) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime::become_subreaper().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layer = busybox_layer(tmp.path());
    (guard, tmp, layer)
}

#[test]
fn container_is_pid1_with_own_hostname_root_and_prefixed_output() {
    let (_guard, tmp, layer) = setup();
    let host_name = nix::unistd::gethostname().unwrap();
    let script = "echo $$; hostname; ls /; \
                  test -c /dev/null && test -c /dev/urandom && test -c /dev/tty && echo devs-ok; \
                  test -L /dev/ptmx && test -d /dev/pts && test -d /dev/shm && echo dev-tree-ok; \
                  grep ' /sys ' /proc/mounts; echo err-line >&2; \
                  cat /proc/1/cmdline; exit 0";
    let cfg = init_config(tmp.path(), "t1", &layer, &["/bin/sh", "-c", script]);
    cfg.rootfs.prepare_host_dirs().unwrap();

    let launched = runtime::launch(&shim(), &cfg).unwrap();
    let out = collect("t1", launched.stdout);
    let err = collect("t1", launched.stderr);
    let status = waitpid(launched.pid, None).unwrap();
    assert_eq!(runtime::exit_code(status), Some(0));
    let out = out.join().unwrap();
    let err = err.join().unwrap();

    assert_eq!(
        out[0], "t1 | 1",
        "the shell is PID 1 in its namespace: {out:#?}"
    );
    assert_eq!(out[1], "t1 | t1-host", "{out:#?}");
    // / is the image (plus the mount points the runtime adds), no host files.
    let listing: Vec<&str> = out[2..6]
        .iter()
        .map(|l| l.trim_start_matches("t1 | "))
        .collect();
    assert_eq!(listing, ["bin", "dev", "proc", "sys"], "{out:#?}");
    assert_eq!(out[6], "t1 | devs-ok", "{out:#?}");
    assert_eq!(out[7], "t1 | dev-tree-ok", "{out:#?}");
    assert!(out[8].starts_with("t1 | sysfs /sys sysfs ro,"), "{out:#?}");
    // /proc/1/cmdline has no trailing newline: the partial last line is still flushed.
    assert_eq!(out.len(), 10, "{out:#?}");
    assert!(out[9].starts_with("t1 | /bin/sh\0-c\0echo $$"), "{out:#?}");
    assert_eq!(err, ["t1 | err-line"]);

    // The host kept its hostname and sees none of the container's mounts.
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);
    assert_eq!(mounts_below(tmp.path()), Vec::<String>::new());
    // The container wrote into its own upper layer, never into the image layer.
    assert!(cfg.rootfs.upper.join("proc").is_dir());
    assert!(!layer.join("proc").exists());
}

#[test]
fn exec_failures_report_a_clear_message_and_shell_codes() {
    let (_guard, tmp, layer) = setup();
    let cfg = init_config(tmp.path(), "bad", &layer, &["/bin/nope"]);
    cfg.rootfs.prepare_host_dirs().unwrap();
    match runtime::launch(&shim(), &cfg) {
        Err(LaunchError::Container { message, code }) => {
            assert_eq!(code, EXIT_NOT_FOUND);
            assert!(
                message.starts_with("container=bad: exec \"/bin/nope\""),
                "{message}"
            );
            assert!(message.contains("No such file or directory"), "{message}");
        }
        other => panic!("expected a container error, got {other:?}"),
    }

    let cfg = init_config(tmp.path(), "bad2", &layer, &["nope"]);
    cfg.rootfs.prepare_host_dirs().unwrap();
    let err = runtime::launch(&shim(), &cfg).unwrap_err();
    assert_eq!(err.exit_code(), EXIT_NOT_FOUND);
    assert!(
        err.to_string()
            .contains("executable file not found in $PATH"),
        "{err}"
    );

    // A missing layer: the overlay mount fails before anything runs.
    let cfg = init_config(
        tmp.path(),
        "bad3",
        &tmp.path().join("missing"),
        &["/bin/true"],
    );
    cfg.rootfs.prepare_host_dirs().unwrap();
    let err = runtime::launch(&shim(), &cfg).unwrap_err();
    assert_eq!(err.exit_code(), EXIT_SETUP_FAILED);
    assert!(err.to_string().contains("mount overlay"), "{err}");
    assert_eq!(mounts_below(tmp.path()), Vec::<String>::new());
}

fn plan(state: &Path, name: &str, layer: &Path, args: &[&str]) -> ContainerPlan {
    ContainerPlan {
        name: name.into(),
        init: init_config(state, name, layer, args),
        stop_signal: Signal::SIGTERM,
        stop_timeout: None,
        supervision: Default::default(),
    }
}

#[test]
fn stop_kills_a_pid1_that_ignores_term_and_honours_a_trap() {
    let (_guard, tmp, layer) = setup();
    let grace = Duration::from_millis(500);
    let mut sup = Supervisor::new(
        SupervisorConfig { stop_grace: grace },
        HostRunner::new(shim(), Cgroups::default()),
        vec![
            // A shell as PID 1 without a trap ignores SIGTERM: it takes the SIGKILL.
            plan(tmp.path(), "sleeper", &layer, &["/bin/sleep", "1000"]),
            plan(
                tmp.path(),
                "trapper",
                &layer,
                &[
                    "/bin/sh",
                    "-c",
                    "trap 'exit 7' TERM; while true; do sleep 0.05; done",
                ],
            ),
        ],
    );
    assert_eq!(sup.start_all(), 2);
    let sleeper = sup.pid_of("sleeper").unwrap();
    assert!(Path::new(&format!("/proc/{sleeper}")).exists());
    std::thread::sleep(Duration::from_millis(300));
    sup.reap();
    assert_eq!(sup.running(), 2);

    let started = Instant::now();
    sup.stop_all();
    let took = started.elapsed();
    assert!(
        took >= grace,
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(5), "stop took {took:?}");
    assert_eq!(sup.exit_code_of("sleeper"), Some(137));
    assert_eq!(sup.exit_code_of("trapper"), Some(7));
    assert_eq!(sup.running(), 0);
    assert!(!Path::new(&format!("/proc/{sleeper}")).exists());
    assert_eq!(mounts_below(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_container_that_exits_is_reaped_with_its_code() {
    let (_guard, tmp, layer) = setup();
    let mut sup = Supervisor::new(
        SupervisorConfig::default(),
        HostRunner::new(shim(), Cgroups::default()),
        vec![
            plan(tmp.path(), "quick", &layer, &["/bin/sh", "-c", "exit 3"]),
            plan(tmp.path(), "missing", &layer, &["/bin/missing"]),
        ],
    );
    assert_eq!(sup.start_all(), 1);
    assert_eq!(sup.exit_code_of("missing"), Some(127));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sup.running() > 0 && Instant::now() < deadline {
        sup.reap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sup.exit_code_of("quick"), Some(3));
}

/// Runs one container to completion and returns its exit code and stdout lines.
fn run_to_end(cfg: &InitConfig) -> (Option<i32>, Vec<String>) {
    cfg.rootfs.prepare_host_dirs().unwrap();
    let launched = runtime::launch(&shim(), cfg).unwrap();
    let out = collect(&cfg.name, launched.stdout);
    let _err = collect(&cfg.name, launched.stderr);
    let status = waitpid(launched.pid, None).unwrap();
    (runtime::exit_code(status), out.join().unwrap())
}

#[test]
fn volumes_survive_container_restarts_and_mounts_apply() {
    use berth_agent::manifest::MountDecl;
    use berth_agent::supervisor::boot::container_mount;

    let (_guard, tmp, layer) = setup();
    let state = tmp.path().join("state");
    fs::create_dir_all(state.join("shared/cfg")).unwrap();
    fs::write(state.join("shared/cfg/motd"), "from the host\n").unwrap();
    let mounts: Vec<_> = [
        MountDecl::Volume {
            name: "data".into(),
            target: "/data".into(),
            read_only: false,
        },
        MountDecl::Bind {
            source: "/var/lib/berth/shared/cfg".into(),
            target: "/etc/cfg".into(),
            read_only: true,
        },
        MountDecl::Tmpfs {
            target: "/scratch".into(),
            size: Some(1 << 20),
            mode: Some(0o750),
        },
    ]
    .iter()
    .map(|m| container_mount(m, &state))
    .collect();

    let mut writer = init_config(
        &state,
        "writer",
        &layer,
        &[
            "/bin/sh",
            "-c",
            "echo persisted > /data/x && cat /etc/cfg/motd && \
             (echo no > /etc/cfg/motd 2>/dev/null && echo writable || echo read-only) && \
             grep ' /scratch ' /proc/mounts",
        ],
    );
    writer.rootfs.mounts = mounts.clone();
    let (code, out) = run_to_end(&writer);
    assert_eq!(code, Some(0), "{out:#?}");
    assert_eq!(out[0], "writer | from the host", "{out:#?}");
    assert_eq!(out[1], "writer | read-only", "{out:#?}");
    assert!(
        out[2].starts_with("writer | tmpfs /scratch tmpfs rw,nosuid,nodev")
            && out[2].contains("size=1024k")
            && out[2].contains("mode=750"),
        "{out:#?}"
    );
    assert_eq!(
        fs::read_to_string(state.join("volumes/data/x")).unwrap(),
        "persisted\n"
    );
    assert_eq!(
        fs::read_to_string(state.join("shared/cfg/motd")).unwrap(),
        "from the host\n"
    );

    // A new container (fresh upper layer) sees what the first one wrote to the volume.
    let mut reader = init_config(&state, "reader", &layer, &["/bin/cat", "/data/x"]);
    reader.rootfs.mounts = mounts;
    let (code, out) = run_to_end(&reader);
    assert_eq!(code, Some(0), "{out:#?}");
    assert_eq!(out, ["reader | persisted"]);
    assert_eq!(mounts_below(tmp.path()), Vec::<String>::new());

    // A bind source that is a symlink out of the state directory is refused at start.
    std::os::unix::fs::symlink(tmp.path(), state.join("shared/escape")).unwrap();
    let mut sneaky = init_config(&state, "sneaky", &layer, &["/bin/true"]);
    sneaky.rootfs.mounts = vec![container_mount(
        &MountDecl::Bind {
            source: "/var/lib/berth/shared/escape".into(),
            target: "/x".into(),
            read_only: false,
        },
        &state,
    )];
    sneaky.rootfs.prepare_host_dirs().unwrap();
    let err = runtime::launch(&shim(), &sneaky).unwrap_err();
    assert_eq!(err.exit_code(), EXIT_SETUP_FAILED);
    assert!(err.to_string().contains("outside"), "{err}");
}
