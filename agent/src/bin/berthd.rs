//! berthd: the berth agent daemon PID 1 starts.
//!
//! Loads the host manifest, imports its images, starts its containers and supervises them
//! until SIGTERM/SIGINT. A rejected manifest starts nothing and berthd stays up idle (PID 1
//! would otherwise restart it in a loop). `berthd __container-init` is the container init
//! shim berthd re-executes itself as (see `berth_agent::runtime::init`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::console::{self, Event};
use berth_agent::net;
use berth_agent::runtime::cgroup::{self, Cgroups};
use berth_agent::runtime::{self, init::error_chain, InitProgram, INIT_ARG};
use berth_agent::supervisor::{
    self, HostRunner, Signals, Supervisor, SupervisorConfig, DEFAULT_STOP_GRACE,
};
use clap::Parser;

/// Default manifest location (env `BERTH_MANIFEST`).
const DEFAULT_MANIFEST: &str = "/etc/berth/manifest.toml";
/// Default state directory (env `BERTH_STATE_DIR`).
const DEFAULT_STATE_DIR: &str = "/var/lib/berth";

#[derive(Debug, Parser)]
#[command(
    name = "berthd",
    about = "berth agent: runs the host manifest's containers"
)]
struct Cli {
    /// Host manifest (default: $BERTH_MANIFEST, else /etc/berth/manifest.toml).
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// State directory holding the store and containers (default: $BERTH_STATE_DIR, else
    /// /var/lib/berth).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// cgroup v2 mount point (default: $BERTH_CGROUP_ROOT, else /sys/fs/cgroup).
    #[arg(long, value_name = "DIR")]
    cgroup_root: Option<PathBuf>,
    /// Runtime directory for network namespaces and name files (default: $BERTH_RUN_DIR, else
    /// /run/berth).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Seconds between a container's stop signal and SIGKILL at shutdown, for containers
    /// without `stop_timeout`.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_STOP_GRACE.as_secs_f64())]
    stop_grace: f64,
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
    let run_dir = from_env_or(cli.run_dir, "BERTH_RUN_DIR", net::DEFAULT_RUN_DIR);
    let stop_grace = Duration::try_from_secs_f64(cli.stop_grace).unwrap_or(DEFAULT_STOP_GRACE);

    let boot = match supervisor::prepare(&manifest, &state_dir) {
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
    let network = setup_network(&boot.manifest, &state_dir, &run_dir);
    let mut runner = HostRunner::new(InitProgram::current_exe(), cgroups);
    runner.network = network.clone();
    let mut sup = Supervisor::new(SupervisorConfig { stop_grace }, runner, boot.plans);
    sup.start_all();
    sup.run(&signals);
    if let Some(Ok(mut net)) = network.as_ref().map(|n| n.lock()) {
        if let Err(e) = net.teardown() {
            console::emit(&Event::Error {
                what: error_chain(&e),
            });
        }
    }
    ExitCode::SUCCESS
}

/// The container network (bridge, NAT) for the manifest; on failure containers still start,
/// each in an empty network namespace, and the console says why.
fn setup_network(
    manifest: &berth_agent::manifest::Manifest,
    state_dir: &std::path::Path,
    run_dir: &std::path::Path,
) -> Option<Arc<Mutex<net::Network>>> {
    let config = net::NetworkConfig::new(state_dir, run_dir);
    let clients = net::RtNetlink::new()
        .map_err(|e| error_chain(&e))
        .and_then(|rt| Ok((rt, net::NfTables::new().map_err(|e| error_chain(&e))?)));
    let result = clients.and_then(|(rt, nft)| {
        net::Network::setup(manifest, config, Box::new(rt), Box::new(nft))
            .map_err(|e| error_chain(&e))
    });
    match result {
        Ok(network) => Some(Arc::new(Mutex::new(network))),
        Err(what) => {
            console::emit(&Event::Error {
                what: format!("container network unavailable, containers get no network: {what}"),
            });
            None
        }
    }
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
