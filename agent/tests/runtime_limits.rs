//! Host integration tests of container limits: rlimits applied before exec, containers asking
//! for limits refused without cgroup v2, and — where this machine has a cgroup v2 hierarchy
//! with the memory controller — a real leaf cgroup with limits and OOM reporting.
//!
//! Need root and a static busybox at /bin/busybox (`apt-get install busybox-static`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_agent::runtime::cgroup::{CgroupLimits, Cgroups, Hierarchy};
use berth_agent::runtime::output::copy_lines;
use berth_agent::runtime::rlimit::RlimitSetting;
use berth_agent::runtime::{self, InitConfig, InitProgram, LaunchError, ProcessSpec, RootfsLayout};
use berth_agent::supervisor::{HostRunner, Runner};
use nix::sys::wait::waitpid;

/// Reaping is process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> (
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    PathBuf,
) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime::become_subreaper().unwrap();
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "these tests need a static busybox at /bin/busybox: `apt-get install -y busybox-static`"
    );
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    fs::create_dir_all(layer.join("bin")).unwrap();
    fs::copy(busybox, layer.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "head", "tr", "echo"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    (guard, tmp, layer)
}

fn config(state: &Path, name: &str, layer: &Path, script: &str) -> InitConfig {
    InitConfig {
        name: name.into(),
        process: ProcessSpec {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![format!("PATH={}", runtime::spec::DEFAULT_PATH)],
            cwd: "/".into(),
            hostname: name.into(),
        },
        rootfs: RootfsLayout::for_container(&state.join("containers"), name, &[layer.into()]),
        limits: CgroupLimits::default(),
        rlimits: Vec::new(),
        cgroup: None,
        security: Default::default(),
        network: Default::default(),
        host_pid: false,
    }
}

fn collect(fd: OwnedFd) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        copy_lines("t", fs::File::from(fd), &mut |l| {
            lines.push(String::from_utf8_lossy(l).trim_end().to_string())
        });
        lines
    })
}

fn shim() -> InitProgram {
    InitProgram::berthd(env!("CARGO_BIN_EXE_berthd"))
}

#[test]
fn rlimits_bind_the_container_process() {
    let (_guard, tmp, layer) = setup();
    let mut cfg = config(tmp.path(), "rl", &layer, "ulimit -n; ulimit -Hn; ulimit -c");
    cfg.rlimits = vec![
        RlimitSetting {
            name: "nofile".into(),
            soft: 64,
            hard: 128,
        },
        RlimitSetting {
            name: "core".into(),
            soft: 0,
            hard: 0,
        },
    ];
    cfg.rootfs.prepare_host_dirs().unwrap();
    let launched = runtime::launch(&shim(), &cfg).unwrap();
    let out = collect(launched.stdout);
    drop(launched.stderr);
    let status = waitpid(launched.pid, None).unwrap();
    assert_eq!(runtime::exit_code(status), Some(0));
    assert_eq!(out.join().unwrap(), ["t | 64", "t | 128", "t | 0"]);
}

#[test]
fn limits_without_cgroup_v2_are_refused_naming_container_and_key() {
    let (_guard, tmp, layer) = setup();
    let unavailable = Cgroups::Unavailable {
        reason: "cgroup v2 is not mounted at /nowhere".into(),
    };
    let mut runner = HostRunner::new(shim(), unavailable);
    let mut cfg = config(tmp.path(), "capped", &layer, "exit 0");
    cfg.limits.pids_max = Some(10);
    match runner.launch(&cfg) {
        Err(LaunchError::Container { message, code }) => {
            assert_eq!(code, 125);
            assert!(
                message.starts_with("container=capped: `pids` needs cgroup v2"),
                "{message}"
            );
            assert!(message.contains("not mounted at /nowhere"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Without limits it runs, and nothing is reported about its end.
    let free = config(tmp.path(), "free", &layer, "exit 4");
    let launched = runner.launch(&free).unwrap();
    drop((launched.stdout, launched.stderr));
    let status = waitpid(launched.pid, None).unwrap();
    assert_eq!(runtime::exit_code(status), Some(4));
    assert_eq!(runner.release("free"), None);
}

/// A cgroup v2 hierarchy with the memory and pids controllers on this machine, if any.
fn usable_v2() -> Result<Hierarchy, String> {
    let mut why = Vec::new();
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        match Hierarchy::probe(Path::new(root)) {
            Ok(h)
                if ["memory", "pids"]
                    .iter()
                    .all(|c| h.available().contains(*c)) =>
            {
                return Ok(h)
            }
            Ok(h) => why.push(format!(
                "{root} is cgroup v2 but offers only [{}]",
                h.available().iter().cloned().collect::<Vec<_>>().join(" ")
            )),
            Err(e) => why.push(format!("{root}: {e}")),
        }
    }
    Err(why.join("; "))
}

#[test]
fn cgroup_v2_limits_and_oom_on_this_host() {
    let hierarchy = match usable_v2() {
        Ok(h) => h,
        Err(why) => {
            println!(
                "SKIPPED: no cgroup v2 hierarchy with the memory and pids controllers here ({why})"
            );
            return;
        }
    };
    let (_guard, tmp, layer) = setup();
    let slice_existed = hierarchy.slice().exists();
    let mut runner = HostRunner::new(shim(), Cgroups::Available(hierarchy.clone()));
    let name = format!("limits-test-{}", std::process::id());

    // The container sees its own leaf as the root of its cgroup namespace.
    let mut cfg = config(
        tmp.path(),
        &name,
        &layer,
        "cat /proc/self/cgroup /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max",
    );
    cfg.limits = CgroupLimits {
        memory_max: Some(32 << 20),
        cpu_quota_us: None,
        pids_max: Some(20),
    };
    let launched = runner.launch(&cfg).unwrap();
    let out = collect(launched.stdout);
    drop(launched.stderr);
    assert_eq!(
        fs::read_to_string(hierarchy.leaf_path(&name).join("pids.max"))
            .unwrap()
            .trim(),
        "20"
    );
    let status = waitpid(launched.pid, None).unwrap();
    assert_eq!(runtime::exit_code(status), Some(0));
    assert_eq!(runner.release(&name), None);
    assert_eq!(out.join().unwrap(), ["t | 0::/", "t | 33554432", "t | 20"]);
    assert!(
        !hierarchy.leaf_path(&name).exists(),
        "the leaf was not removed"
    );

    // Over its memory limit: OOM-killed, and the release says so.
    cfg.process.args[2] = "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived".into();
    cfg.limits.memory_max = Some(16 << 20);
    let launched = runner.launch(&cfg).unwrap();
    let out = collect(launched.stdout);
    drop(launched.stderr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = waitpid(launched.pid, None).unwrap();
    assert!(Instant::now() < deadline);
    assert_eq!(runtime::exit_code(status), Some(137));
    assert_eq!(runner.release(&name), Some("oom"));
    assert!(out.join().unwrap().is_empty());
    if !slice_existed {
        let _ = fs::remove_dir(hierarchy.slice());
    }
}
