//! berth PID 1: switch out of the initramfs, mount the API filesystems, find the state
//! partition, start and supervise the agent, reap zombies, and shut down in order.
//!
//! PID 1 must never exit or panic (either is a kernel panic): every step is guarded, panics
//! are printed and the main loop is re-entered, and a failed reboot(2) ends in an idle loop.

mod agent;
mod cmdline;
mod console;
mod grow;
mod mounts;
mod pid1;
mod power_button;
mod shutdown;
mod state;
mod switch_root;
mod sys;
mod timeline;

// PID 1 survives its own panics only by unwinding to `catch_unwind`; with panic=abort a panic
// would end PID 1 and with it the kernel. Refuse to build that way.
#[cfg(not(panic = "unwind"))]
compile_error!(
    "berth-init must be built with panic = \"unwind\" (see [profile.release] in the workspace \
     Cargo.toml): PID 1 catches its panics, and an aborting PID 1 is a kernel panic"
);

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use crate::mounts::MountOutcome;
use crate::pid1::Pid1;
use crate::sys::{AgentSpec, RealSys, Sys};

/// PATH given to the agent.
const AGENT_PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn main() {
    console::ensure_stdio();
    if nix::unistd::getpid().as_raw() != 1 {
        log!("error: berth-init must run as PID 1 (it powers the machine off); exiting");
        std::process::exit(1);
    }
    if let Err(e) = sys::block_signals() {
        log!("error: cannot block signals: {e}");
    }
    std::panic::set_hook(Box::new(|info| {
        console::write_all(
            1,
            console::format_line(&format!("error: panic: {info}")).as_bytes(),
        );
    }));

    let pid1_started = match std::env::var(timeline::PID1_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(ms) => ms,
        None => {
            let ms = timeline::boottime_ms();
            // Single-threaded here: nothing else reads the environment concurrently. The
            // re-exec below passes it on.
            std::env::set_var(timeline::PID1_ENV, ms.to_string());
            ms
        }
    };
    if std::env::var_os(switch_root::MARKER_ENV).is_none() {
        log!("init started");
        console::log(&timeline::phase_message("pid1_started", pid1_started));
        guarded("switch_root", (), try_switch_root);
    } else {
        log!("init re-executed on a tmpfs root");
    }

    let mut pid1 = guarded("boot", None, || Some(boot(pid1_started))).unwrap_or_else(|| {
        Pid1::new(
            agent_spec(
                Path::new(cmdline::DEFAULT_AGENT),
                state::StateMode::Ephemeral,
                &timeline::agent_value(&[("pid1_started", pid1_started)]),
            ),
            cmdline::DEFAULT_STOP_TIMEOUT,
        )
    });
    let buttons = guarded("power button discovery", Vec::new(), || {
        let found = power_button::find(Path::new("/sys/class/input"), Path::new("/dev/input"));
        if found.is_empty() {
            log!("warning: no ACPI power button input device found; use SIGTERM to power off");
        }
        found
    });
    let mut sys = loop {
        match RealSys::new(&buttons) {
            Ok(sys) => break sys,
            Err(e) => {
                log!("error: cannot set up signal handling: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    for button in sys.buttons() {
        log!("watching power button {}", button.display());
    }

    pid1.run_caught(&mut sys, &|| std::thread::sleep(Duration::from_millis(500)));
    halt_forever(&mut sys)
}

/// Run `f`, printing and surviving a panic (then `fallback` is returned).
fn guarded<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(_) => {
            log!("error: {what} panicked; continuing");
            fallback
        }
    }
}

/// Nothing is left to do (reboot(2) failed): keep reaping, never exit.
fn halt_forever(sys: &mut RealSys) -> ! {
    log!("error: system halted; PID 1 idles");
    loop {
        let _ = catch_unwind(AssertUnwindSafe(|| sys.reap()));
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn try_switch_root() {
    let magic = match switch_root::fs_magic(Path::new("/")) {
        Ok(magic) => magic,
        Err(e) => {
            log!("warning: switch_root skipped: {e}");
            return;
        }
    };
    if !switch_root::should_switch(1, magic, false) {
        return;
    }
    match switch_root::switch(&|line| console::log(line)) {
        Ok(switch_root::Switched::WithoutReexec(e)) => {
            log!("warning: switched to a tmpfs root but could not re-execute: {e}");
        }
        Err(e) => log!(
            "warning: cannot leave the initramfs rootfs ({e}); containers using pivot_root \
             will fail"
        ),
    }
}

/// The agent writes the host's resolvers (DHCP lease or manifest) once / is read-only: link
/// `/etc/resolv.conf` to a file on the /run tmpfs first, unless the image ships its own.
fn link_resolv_conf() {
    let path = std::path::Path::new("/etc/resolv.conf");
    if std::fs::symlink_metadata(path).is_err() {
        if let Err(e) = std::os::unix::fs::symlink(RUN_RESOLV_CONF, path) {
            log!("warning: cannot link /etc/resolv.conf to {RUN_RESOLV_CONF}: {e}");
        }
    }
}

/// Where `/etc/resolv.conf` points; berthd writes it (the agent's `net::host::RUN_RESOLV_CONF`).
const RUN_RESOLV_CONF: &str = "/run/resolv.conf";

/// Remount the OS root (the tmpfs copy of the initramfs) read-only once everything that
/// changes has its own mount: the state directory, /run, /tmp, /dev. Skipped, with a warning,
/// when the state directory is not a mount of its own (the agent would write into the root).
fn seal_root() {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &str| std::fs::metadata(p).map(|m| m.dev());
    match (dev("/"), dev(state::STATE_DIR)) {
        (Ok(root), Ok(state)) if root != state => {
            match nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            ) {
                Ok(()) => log!("root filesystem is read-only"),
                Err(e) => log!("warning: cannot remount / read-only: {e}; it stays writable"),
            }
        }
        _ => log!(
            "warning: {} is not a mount of its own; / stays writable",
            state::STATE_DIR
        ),
    }
}

fn agent_spec(path: &Path, mode: state::StateMode, timeline: &str) -> AgentSpec {
    AgentSpec {
        path: path.to_path_buf(),
        env: vec![
            ("PATH".to_string(), AGENT_PATH_ENV.to_string()),
            ("BERTH_STATE_MODE".to_string(), mode.as_str().to_string()),
            ("BERTH_STATE_DIR".to_string(), state::STATE_DIR.to_string()),
            (timeline::AGENT_ENV.to_string(), timeline.to_string()),
        ],
        fds: Vec::new(),
    }
}

/// Everything between the root switch and the main loop; each step logs and survives failure.
fn boot(pid1_started: u64) -> Pid1 {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    for (spec, outcome) in mounts::mount_all(&mut mounts::RealMounts, mounts::EARLY_MOUNTS) {
        match outcome {
            MountOutcome::Mounted => {}
            MountOutcome::AlreadyMounted => log!("{} was already mounted", spec.target),
            MountOutcome::Failed(e) => log!("error: {e}"),
        }
    }
    console::ensure_stdio();
    match mounts::enable_controllers(Path::new("/sys/fs/cgroup")) {
        Ok(line) => log!("cgroup controllers enabled: {line}"),
        Err(e) => log!("warning: {e}"),
    }

    let (config, warnings) = match std::fs::read_to_string("/proc/cmdline") {
        Ok(text) => cmdline::parse(&text),
        Err(e) => (
            cmdline::Config::default(),
            vec![format!("cannot read /proc/cmdline ({e}); using defaults")],
        ),
    };
    for warning in warnings {
        log!("warning: {warning}");
    }
    if let Err(e) = sys::set_hostname(&config.hostname) {
        log!("error: {e}");
    }
    if let Err(e) = sys::loopback_up() {
        log!("error: {e}");
    }
    if let Err(e) = sys::disable_ctrl_alt_del() {
        log!("warning: {e}");
    }
    let mode = guarded("state partition setup", state::StateMode::Ephemeral, || {
        state::setup(&|line| console::log(line))
    });
    link_resolv_conf();
    seal_root();
    let state_mounted = timeline::boottime_ms();
    console::log(&timeline::phase_message("state_mounted", state_mounted));
    log!(
        "hostname={} state={} agent={} stop_timeout={}s",
        config.hostname,
        mode.as_str(),
        config.agent.display(),
        config.stop_timeout.as_secs()
    );
    let phases = [
        ("pid1_started", pid1_started),
        ("state_mounted", state_mounted),
    ];
    Pid1::new(
        agent_spec(&config.agent, mode, &timeline::agent_value(&phases)),
        config.stop_timeout,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_gets_path_and_state_env() {
        let spec = agent_spec(
            Path::new("/usr/bin/berthd"),
            state::StateMode::Persistent,
            "pid1_started=3",
        );
        assert_eq!(
            spec.env,
            vec![
                (
                    "PATH".to_string(),
                    "/usr/sbin:/usr/bin:/sbin:/bin".to_string()
                ),
                ("BERTH_STATE_MODE".to_string(), "persistent".to_string()),
                ("BERTH_STATE_DIR".to_string(), "/var/lib/berth".to_string()),
                ("BERTH_TIMELINE".to_string(), "pid1_started=3".to_string()),
            ]
        );
        assert_eq!(
            agent_spec(Path::new("/a"), state::StateMode::Ephemeral, "").env[1].1,
            "ephemeral"
        );
    }

    #[test]
    fn guarded_survives_panics() {
        let value = guarded("test", 7, || -> i32 { panic!("boom") });
        assert_eq!(value, 7);
        assert_eq!(guarded("test", 7, || 3), 3);
    }
}
