//! berthd: the berth agent daemon PID 1 starts.
//!
//! Loads the host manifest, imports its images, starts its containers and supervises them
//! until SIGTERM/SIGINT. A rejected manifest starts nothing and berthd stays up idle (PID 1
//! would otherwise restart it in a loop). `berthd __container-init` is the container init
//! shim berthd re-executes itself as (see `berth_agent::runtime::init`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use berth_agent::config_source;
use berth_agent::console::{self, Event};
use berth_agent::runtime::cgroup::{self, Cgroups};
use berth_agent::runtime::{self, init::error_chain, InitProgram, INIT_ARG};
use berth_agent::supervisor::{
    self, HostRunner, Signals, Supervisor, SupervisorConfig, DEFAULT_STOP_GRACE,
};
use clap::Parser;

/// The manifest built into the image (env `BERTH_MANIFEST`), used when no config source
/// (kernel command line, fw_cfg, config drive, cloud metadata) has one and the state partition
/// holds no last good one.
const DEFAULT_MANIFEST: &str = "/etc/berth/manifest.toml";
/// Default state directory (env `BERTH_STATE_DIR`).
const DEFAULT_STATE_DIR: &str = "/var/lib/berth";

#[derive(Debug, Parser)]
#[command(
    name = "berthd",
    about = "berth agent: runs the host manifest's containers"
)]
struct Cli {
    /// Built-in host manifest (default: $BERTH_MANIFEST, else /etc/berth/manifest.toml); config
    /// sources take precedence, and image sources are relative to its directory.
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// State directory holding the store and containers (default: $BERTH_STATE_DIR, else
    /// /var/lib/berth).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// cgroup v2 mount point (default: $BERTH_CGROUP_ROOT, else /sys/fs/cgroup).
    #[arg(long, value_name = "DIR")]
    cgroup_root: Option<PathBuf>,
    /// Seconds between a container's stop signal and SIGKILL at shutdown, for containers
    /// without `stop_timeout`.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_STOP_GRACE.as_secs_f64())]
    stop_grace: f64,
    /// Where the manifest may come from: `on` asks the kernel command line, fw_cfg, config
    /// drives and cloud metadata before the last good and the built-in manifest; `off` reads
    /// only the built-in one; `auto` (default) is `on` when PID 1 started berthd.
    #[arg(long, value_enum, default_value_t = ConfigSources::Auto)]
    config_sources: ConfigSources,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConfigSources {
    Auto,
    On,
    Off,
}

fn from_env_or(flag: Option<PathBuf>, var: &str, default: &str) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(default))
}

fn main() -> ExitCode {
    // The shim must stay single-threaded: decide before anything else runs.
    if std::env::args_os().nth(1).is_some_and(|a| a == INIT_ARG) {
        std::process::exit(runtime::init::shim_main());
    }
    let cli = Cli::parse();
    // Before any thread exists, so all of them inherit the mask.
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            console::emit(&Event::Error {
                what: format!("cannot block SIGTERM/SIGINT/SIGCHLD: {e}"),
            });
            return ExitCode::FAILURE;
        }
    };
    console::emit(&Event::AgentStarted);
    if let Err(e) = runtime::become_subreaper() {
        console::emit(&Event::Error {
            what: format!("cannot become a child subreaper, containers cannot be reaped: {e}"),
        });
    }

    let manifest = from_env_or(cli.manifest, "BERTH_MANIFEST", DEFAULT_MANIFEST);
    let state_dir = from_env_or(cli.state_dir, "BERTH_STATE_DIR", DEFAULT_STATE_DIR);
    let cgroup_root = from_env_or(cli.cgroup_root, "BERTH_CGROUP_ROOT", cgroup::DEFAULT_ROOT);
    let stop_grace = Duration::try_from_secs_f64(cli.stop_grace).unwrap_or(DEFAULT_STOP_GRACE);

    let outside = match cli.config_sources {
        ConfigSources::On => true,
        ConfigSources::Off => false,
        ConfigSources::Auto => nix::unistd::getppid().as_raw() == 1,
    };
    let paths = config_source::boot::BootPaths::host(manifest, state_dir.clone(), outside);
    let Some(selection) = config_source::boot::load(&paths) else {
        console::emit(&Event::ManifestRejected);
        idle(&signals);
        return ExitCode::SUCCESS;
    };
    let boot = match supervisor::boot::prepare_manifest(
        selection.manifest,
        paths.images_dir(),
        &state_dir,
    ) {
        Ok(boot) => boot,
        Err(e) => {
            console::emit(&Event::Error {
                what: error_chain(&e),
            });
            console::emit(&Event::ManifestRejected);
            idle(&signals);
            return ExitCode::SUCCESS;
        }
    };

    if let Err(e) = supervisor::set_host_hostname(&boot.manifest.host.hostname) {
        console::emit(&Event::Error {
            what: format!(
                "cannot set the hostname to {:?}: {e}",
                boot.manifest.host.hostname
            ),
        });
    }

    let cgroups = Cgroups::probe(&cgroup_root);
    if let Some(what) = cgroups.warning() {
        console::emit(&Event::Warning { what });
    }
    let mut sup = Supervisor::new(
        SupervisorConfig { stop_grace },
        HostRunner::new(InitProgram::current_exe(), cgroups),
        boot.plans,
    );
    sup.start_all();
    sup.run(&signals);
    ExitCode::SUCCESS
}

/// Wait for SIGTERM/SIGINT, doing nothing else.
fn idle(signals: &Signals) {
    loop {
        if let Some(signal) = signals.wait(Duration::from_secs(3600)) {
            if Signals::is_shutdown(signal) {
                return;
            }
        }
        let _ = supervisor::reap_children();
    }
}
