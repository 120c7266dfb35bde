//! Host integration tests of container process security: capabilities, no_new_privs, the
//! seccomp filter, masked and read-only kernel paths, a read-only root and the user.
//!
//! Need root and a static busybox at /bin/busybox (Debian: `apt-get install busybox-static`).
//! Everything lives in temp dirs and throwaway namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use berth_agent::runtime::init::EXIT_SETUP_FAILED;
use berth_agent::runtime::output::copy_lines;
use berth_agent::runtime::security::{capabilities, SeccompProfile, SecuritySpec};
use berth_agent::runtime::userns::IdMap;
use berth_agent::runtime::{self, InitConfig, InitProgram, ProcessSpec, RootfsLayout};
use berth_agent::store::layerfs::HostLayerFs;
use berth_agent::store::shift::copy_shifted;
use nix::sys::wait::waitpid;
use std::os::unix::fs::MetadataExt;

/// Reaping is process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const APPLETS: [&str; 12] = [
    "sh", "echo", "cat", "grep", "id", "touch", "mount", "swapoff", "unshare", "wc", "true", "ls",
];

/// A one-layer image: busybox, its applets, and an /etc/passwd and /etc/group.
fn image_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    fs::create_dir_all(layer.join("bin")).unwrap();
    fs::create_dir_all(layer.join("etc")).unwrap();
    fs::create_dir_all(layer.join("tmp")).unwrap();
    assert!(
        Path::new("/bin/busybox").is_file(),
        "these tests need a static busybox at /bin/busybox: apt-get install -y busybox-static"
    );
    fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    fs::write(
        layer.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/:/bin/sh\n\
         nobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(
        layer.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n",
    )
    .unwrap();
    layer
}

fn config(
    state: &Path,
    name: &str,
    layer: &Path,
    script: &str,
    security: SecuritySpec,
) -> InitConfig {
    InitConfig {
        name: name.into(),
        process: ProcessSpec {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![format!("PATH={}", runtime::spec::DEFAULT_PATH)],
            cwd: "/".into(),
            hostname: name.into(),
        },
        rootfs: RootfsLayout::for_container(
            &state.join("containers"),
            name,
            &[layer.to_path_buf()],
        ),
        limits: Default::default(),
        rlimits: Vec::new(),
        cgroup: None,
        security,
        network: Default::default(),
        host_pid: false,
    }
}

fn collect(name: &str, fd: OwnedFd) -> JoinHandle<Vec<String>> {
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        copy_lines(&name, fs::File::from(fd), &mut |l| {
            let line = String::from_utf8_lossy(l);
            let line = line.trim_end_matches('\n');
            lines.push(
                line.strip_prefix(&format!("{name} | "))
                    .unwrap_or(line)
                    .to_string(),
            );
        });
        lines
    })
}

/// Run `script` in a container; (exit code, stdout lines, stderr lines).
fn run(script: &str, security: SecuritySpec) -> (i32, Vec<String>, Vec<String>) {
    let (code, out, err, _state) = run_keeping_state(script, security);
    (code, out, err)
}

/// [`run`], also returning the state directory (with the container's upper directory).
fn run_keeping_state(
    script: &str,
    security: SecuritySpec,
) -> (i32, Vec<String>, Vec<String>, tempfile::TempDir) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime::become_subreaper().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut layer = image_layer(tmp.path());
    if let Some(map) = security.userns {
        // What the store does for a `userns = true` container.
        let shifted = tmp.path().join("layer-shifted");
        copy_shifted(&layer, &shifted, &map, &HostLayerFs).unwrap();
        layer = shifted;
    }
    let owner = security.userns.map(|m| m.host);
    let mut cfg = config(tmp.path(), "sec", &layer, script, security);
    cfg.rootfs.owner = owner;
    cfg.rootfs.prepare_host_dirs().unwrap();
    let launched = runtime::launch(&InitProgram::berthd(env!("CARGO_BIN_EXE_berthd")), &cfg)
        .unwrap_or_else(|e| panic!("launch: {e}"));
    let out = collect("sec", launched.stdout);
    let err = collect("sec", launched.stderr);
    let code = runtime::exit_code(waitpid(launched.pid, None).unwrap()).unwrap();
    // Every mount (masks, read-only binds) lived in the container's namespace only.
    let dir = tmp.path().to_string_lossy().into_owned();
    let leaked: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect();
    assert!(leaked.is_empty(), "{leaked:#?}");
    (code, out.join().unwrap(), err.join().unwrap(), tmp)
}

fn status_field(lines: &[String], field: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {lines:#?}"))
        .trim()
        .to_string()
}

#[test]
fn default_set_no_new_privs_and_seccomp_are_in_place() {
    let (code, out, err) = run("cat /proc/self/status", SecuritySpec::default());
    assert_eq!(code, 0, "{err:#?}");
    assert_eq!(status_field(&out, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapBnd"), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapPrm"), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(status_field(&out, "Seccomp"), "2");
}

#[test]
fn cap_drop_all_and_cap_add_change_the_set() {
    let set = capabilities::effective_set(&["NET_ADMIN".into()], &["ALL".into()]).unwrap();
    let security = SecuritySpec {
        capabilities: capabilities::names(&set),
        seccomp: SeccompProfile::Unconfined,
        ..SecuritySpec::default()
    };
    let (code, out, err) = run("cat /proc/self/status", security);
    assert_eq!(code, 0, "{err:#?}");
    assert_eq!(status_field(&out, "CapEff"), "0000000000001000");
    assert_eq!(status_field(&out, "CapBnd"), "0000000000001000");
    assert_eq!(status_field(&out, "Seccomp"), "0");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");

    let security = SecuritySpec {
        capabilities: vec![],
        ..SecuritySpec::default()
    };
    let (_, out, _) = run("cat /proc/self/status", security);
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
}

#[test]
fn blocked_syscalls_fail_with_eperm() {
    let (code, out, err) = run(
        "swapoff /; echo swapoff=$?; mount -t tmpfs x /tmp; echo mount=$?",
        SecuritySpec::default(),
    );
    assert_eq!(code, 0, "{err:#?}");
    assert_eq!(out, ["swapoff=1", "mount=1"], "{err:#?}");
    assert_eq!(err[0], "swapoff: /: Operation not permitted");
    // busybox words EPERM from mount(2) its own way.
    assert_eq!(err[1], "mount: permission denied (are you root?)");
}

#[test]
fn the_filter_refuses_a_user_namespace_the_kernel_would_allow() {
    // An unprivileged user namespace needs no capability: only the filter stands in the way.
    let script = "unshare -U true; echo unshare=$?";
    let (_, out, err) = run(script, SecuritySpec::default());
    assert_eq!(out, ["unshare=1"], "{err:#?}");
    assert!(err[0].contains("Operation not permitted"), "{err:#?}");

    let unconfined = SecuritySpec {
        seccomp: SeccompProfile::Unconfined,
        ..SecuritySpec::default()
    };
    let (_, out, err) = run(script, unconfined);
    assert_eq!(
        out,
        ["unshare=0"],
        "the host must allow user namespaces: {err:#?}"
    );
}

#[test]
fn kernel_files_are_masked_and_read_only() {
    let script = "echo kcore=$(cat /proc/kcore | wc -c); \
                  echo timers=$(cat /proc/timer_list | wc -c); \
                  echo keys=$(cat /proc/keys | wc -c); \
                  echo x > /proc/sys/kernel/hostname; echo sys=$?; \
                  echo firmware=$(ls -A /sys/firmware | wc -l); \
                  grep -cE ' /proc/(kcore|keys|timer_list|sys|sysrq-trigger) ' /proc/mounts";
    let (_, out, err) = run(script, SecuritySpec::default());
    for line in ["kcore=0", "timers=0", "keys=0", "sys=1", "firmware=0"] {
        assert!(out.contains(&line.to_string()), "{line}: {out:#?} {err:#?}");
    }
    assert!(
        err.iter().any(|l| l.contains("Read-only file system")),
        "{err:#?}"
    );
    // One mount per path this kernel has (kernels without kcore or sysrq skip them).
    let present = ["kcore", "keys", "timer_list", "sys", "sysrq-trigger"]
        .iter()
        .filter(|p| Path::new("/proc").join(p).exists())
        .count();
    assert_eq!(out.last(), Some(&present.to_string()), "{out:#?}");
}

#[test]
fn read_only_root_refuses_writes_but_tmp_mounts_do_not() {
    let security = SecuritySpec {
        read_only: true,
        ..SecuritySpec::default()
    };
    let (_, out, err) = run(
        "touch /x; echo root=$?; touch /dev/shm/y; echo shm=$?",
        security,
    );
    assert_eq!(out, ["root=1", "shm=0"], "{err:#?}");
    assert!(err[0].contains("Read-only file system"), "{err:#?}");

    let (_, out, _) = run("touch /x; echo root=$?", SecuritySpec::default());
    assert_eq!(out, ["root=0"]);
}

#[test]
fn user_ids_and_groups_come_from_the_image() {
    let as_user = |user: &str| SecuritySpec {
        user: user.into(),
        ..SecuritySpec::default()
    };
    let (code, out, err) = run("id", as_user("1000:1000"));
    assert_eq!(code, 0, "{err:#?}");
    // An explicit group: no memberships from /etc/group (runc's rule).
    assert_eq!(out, ["uid=1000(app) gid=1000(app)"]);
    let (_, out, _) = run("id", as_user("app"));
    assert_eq!(out, ["uid=1000(app) gid=1000(app) groups=50(staff)"]);
    let (_, out, _) = run("id", as_user("nobody:nogroup"));
    assert_eq!(out, ["uid=65534(nobody) gid=65534(nogroup)"]);

    // A non-root user keeps the container's capabilities (ambient set).
    let (_, out, _) = run("cat /proc/self/status", as_user("app"));
    assert_eq!(status_field(&out, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapAmb"), "00000000a80425fb");
    assert_eq!(status_field(&out, "Uid"), "1000\t1000\t1000\t1000");
}

#[test]
fn unknown_user_is_a_setup_error_naming_container_and_user() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime::become_subreaper().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layer = image_layer(tmp.path());
    let security = SecuritySpec {
        user: "bob".into(),
        ..SecuritySpec::default()
    };
    let cfg = config(tmp.path(), "who", &layer, "true", security);
    cfg.rootfs.prepare_host_dirs().unwrap();
    let err =
        runtime::launch(&InitProgram::berthd(env!("CARGO_BIN_EXE_berthd")), &cfg).unwrap_err();
    assert_eq!(err.exit_code(), EXIT_SETUP_FAILED);
    assert_eq!(
        err.to_string(),
        "container=who: unable to find user \"bob\": no matching entry in the image's /etc/passwd"
    );
}

#[test]
fn user_namespace_maps_container_root_to_an_unprivileged_host_range() {
    let security = SecuritySpec {
        userns: Some(IdMap::DEFAULT),
        ..SecuritySpec::default()
    };
    let (code, out, err, state) = run_keeping_state(
        "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; \
         echo data > /etc/written && echo wrote; grep CapEff /proc/self/status; \
         touch /proc/sysrq-trigger 2>/dev/null && echo proc-writable; true",
        security,
    );
    assert_eq!(code, 0, "{out:#?} {err:#?}");
    assert_eq!(out[0], "0", "root inside: {out:#?}");
    assert_eq!(out[1], "0", "{out:#?}");
    let maps: Vec<Vec<&str>> = out[2..4]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(maps, vec![vec!["0", "100000", "65536"]; 2], "{out:#?}");
    assert!(
        out.contains(&"wrote".to_string()),
        "root can write its image: {out:#?} {err:#?}"
    );
    // Docker's default set, held inside the namespace only.
    assert_eq!(status_field(&out, "CapEff"), "00000000a80425fb");
    assert!(!out.contains(&"proc-writable".to_string()), "{out:#?}");
    // On the host the file belongs to the mapped range, not to root.
    let written = state.path().join("containers/sec/upper/etc/written");
    let meta = fs::metadata(&written).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100_000, 100_000));
    assert_eq!(fs::read_to_string(written).unwrap(), "data\n");
}
