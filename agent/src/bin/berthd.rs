//! berthd: the berth agent daemon PID 1 starts.
//!
//! Loads the host manifest, imports its images, starts its containers and supervises them
//! until SIGTERM/SIGINT, serving its API meanwhile. A rejected manifest starts nothing and
//! berthd stays up with its local API, so a fixed manifest can be applied (PID 1 would
//! otherwise restart it in a loop). `berthd __container-init` is the container init
//! shim berthd re-executes itself as (see `berth_agent::runtime::init`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::api::{self, server};
use berth_agent::config_source;
use berth_agent::console::{self, Event};
use berth_agent::manifest::{HostNetwork, Manifest};
use berth_agent::net;
use berth_agent::runtime::cgroup::{self, Cgroups};
use berth_agent::runtime::fdstore::FdStore;
use berth_agent::runtime::{self, init::error_chain, InitProgram, INIT_ARG};
use berth_agent::supervisor::control::SAVED_MANIFEST;
use berth_agent::supervisor::{
    self, Control, HostRunner, Signals, Supervisor, SupervisorConfig, DEFAULT_STOP_GRACE,
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
    /// Runtime directory for network namespaces and name files (default: $BERTH_RUN_DIR, else
    /// /run/berth).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Seconds between a container's stop signal and SIGKILL at shutdown, for containers
    /// without `stop_timeout`.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_STOP_GRACE.as_secs_f64())]
    stop_grace: f64,
    /// The API's Unix socket (default: $BERTH_API_SOCKET, else /run/berth/api.sock).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// The address the remote API (the manifest's `api_port`) listens on.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    remote_api_address: std::net::IpAddr,
    /// Where the manifest may come from: `on` asks the kernel command line, fw_cfg, config
    /// drives and cloud metadata before the last good and the built-in manifest; `off` reads
    /// only the built-in one; `auto` (default) is `on` when PID 1 started berthd.
    #[arg(long, value_enum, default_value_t = ConfigSources::Auto)]
    config_sources: ConfigSources,
    /// Whether berthd configures the host's NIC as the manifest's [host.network] says (DHCP by
    /// default) and writes /etc/resolv.conf; `auto` (default) is `on` when PID 1 started
    /// berthd.
    #[arg(long, value_enum, default_value_t = ConfigSources::Auto)]
    host_network: ConfigSources,
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
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == runtime::exec::EXEC_ARG)
    {
        std::process::exit(runtime::exec::shim_main());
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
    // PID 1's fd store, made close-on-exec before any child is started.
    let mut store = match FdStore::from_env() {
        Ok(store) => store,
        Err(e) => {
            console::emit(&Event::Warning {
                what: format!(
                    "{}; containers are started again if berthd restarts",
                    error_chain(&e)
                ),
            });
            None
        }
    };
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

    let api_socket = from_env_or(cli.api_socket, "BERTH_API_SOCKET", api::DEFAULT_SOCKET);
    let base_dir = supervisor::boot::base_dir_of(&manifest).to_path_buf();

    // The manifest comes from the first config source that has one (command line, fw_cfg,
    // config drive, IMDS, the last good one in the state directory, the built-in one). A
    // rejected manifest starts nothing; berthd still serves its local API, so an operator can
    // `berthctl apply` a fixed manifest without a rebuild.
    let outside = match cli.config_sources {
        ConfigSources::On => true,
        ConfigSources::Off => false,
        ConfigSources::Auto => nix::unistd::getppid().as_raw() == 1,
    };
    let paths = config_source::boot::BootPaths::host(manifest.clone(), state_dir.clone(), outside);
    let host_network = match cli.host_network {
        ConfigSources::On => true,
        ConfigSources::Off => false,
        ConfigSources::Auto => nix::unistd::getppid().as_raw() == 1,
    };
    // Cloud metadata is reached over the network: DHCP first (the default [host.network]); a
    // manifest that asks for something else gets it below.
    let mut host_net = None;
    if host_network && config_source::boot::needs_network(&paths) {
        host_net = start_host_network(&HostNetwork::default());
        if let Some(host) = &host_net {
            host.wait_configured(HOST_NETWORK_WAIT);
        }
    }
    let mut waiter = None;
    let mut network_manifest = None;
    let selection = config_source::boot::load(&paths);
    // The host NIC as the chosen manifest says (DHCP without one), before images are pulled.
    if host_network {
        let wanted = selection
            .as_ref()
            .map(|s| s.manifest.host.network.clone())
            .unwrap_or_default();
        host_net = match host_net {
            Some(running) if running.settings() == &wanted => Some(running),
            Some(running) => {
                running.stop();
                start_host_network(&wanted)
            }
            None => start_host_network(&wanted),
        };
    }
    let host_mtu = host_net
        .as_ref()
        .and_then(|h| h.wait_configured(HOST_NETWORK_WAIT))
        .map(|c| c.mtu);
    let loaded = selection.map(|selection| {
        supervisor::boot::prepare_manifest(selection.manifest, &base_dir, &state_dir)
    });
    let (plans, remote_api) = match loaded {
        Some(Ok(boot)) => {
            if !boot.waiting.is_empty() {
                waiter = Some(supervisor::images::ImageWaiter::spawn(
                    &boot.manifest,
                    &base_dir,
                    &state_dir,
                    &boot.waiting,
                ));
            }
            if let Err(e) = supervisor::set_host_hostname(&boot.manifest.host.hostname) {
                console::emit(&Event::Error {
                    what: format!(
                        "cannot set the hostname to {:?}: {e}",
                        boot.manifest.host.hostname
                    ),
                });
            }
            network_manifest = Some(boot.manifest.clone());
            (Some(boot.plans), boot.manifest.host.api)
        }
        Some(Err(e)) => {
            console::emit(&Event::Error {
                what: error_chain(&e),
            });
            console::emit(&Event::ManifestRejected);
            (None, None)
        }
        // No source had a valid manifest (the reasons are on the console).
        None => {
            console::emit(&Event::ManifestRejected);
            (None, None)
        }
    };

    let cgroups = Cgroups::probe(&cgroup_root);
    if let Some(what) = cgroups.warning() {
        console::emit(&Event::Warning { what });
    }
    let network = network_manifest
        .as_ref()
        .and_then(|m| setup_network(m, &state_dir, &run_dir, host_mtu));
    let mut runner = HostRunner::new(InitProgram::current_exe(), cgroups);
    runner.network = network.clone();
    // Containers the previous berthd left running (it was killed and PID 1 restarted it)
    // are taken over; the others in its state file are killed and start again below.
    let recovered = supervisor::adopt::recover(
        &run_dir,
        store.as_mut(),
        plans.as_deref().unwrap_or_default(),
    );
    runner.enable_adoption(&run_dir, store);
    let reaped = runner.reaped.clone();
    let remote = remote_api.as_ref().map(|api| {
        let addr = std::net::SocketAddr::new(cli.remote_api_address, api.port);
        (addr.to_string(), api.token.clone())
    });
    let started = plans.is_some();
    let mut sup = Supervisor::new(
        SupervisorConfig { stop_grace },
        runner,
        plans.unwrap_or_default(),
    );
    let (tx, requests) = std::sync::mpsc::channel();
    let listen = server::Listen {
        socket: api_socket.clone(),
        tcp: remote.clone(),
    };
    match server::spawn(&listen, tx, reaped) {
        Ok(()) => {
            console::emit(&Event::ApiListening {
                at: api_socket.display().to_string(),
            });
            if let Some((addr, _)) = &remote {
                console::emit(&Event::ApiListening {
                    at: format!("tcp {addr} (token required)"),
                });
            }
        }
        Err(e) => console::emit(&Event::Error {
            what: format!("the API is not available: {}", error_chain(&e)),
        }),
    }
    let control = Control {
        requests,
        state_dir: state_dir.clone(),
        base_dir: base_dir.clone(),
        init: (nix::unistd::getppid() == nix::unistd::Pid::from_raw(1))
            .then(|| nix::unistd::Pid::from_raw(1)),
        network: network.clone(),
    };
    sup.adopt(recovered);
    if started {
        sup.start_all();
    }
    sup.run(&signals, |sup| {
        control.serve(sup);
        // An image that was waiting arrived: plan again, its containers join, nothing else
        // changes.
        if waiter.as_ref().is_some_and(|w| !w.arrived().is_empty()) {
            match Manifest::load(&active_manifest(&manifest, &state_dir))
                .map_err(Into::into)
                .and_then(|m| {
                    supervisor::boot::prepare_manifest_with(m, &base_dir, &state_dir, false)
                }) {
                Ok(boot) => {
                    sup.reconcile(boot.plans);
                }
                Err(e) => console::emit(&Event::Error {
                    what: error_chain(&e),
                }),
            }
        }
        true
    });
    if let Some(Ok(mut net)) = network.as_ref().map(|n| n.lock()) {
        if let Err(e) = net.teardown() {
            console::emit(&Event::Error {
                what: error_chain(&e),
            });
        }
    }
    ExitCode::SUCCESS
}

/// How long boot waits for the host NIC's first address before starting containers (the
/// DHCP client keeps trying afterwards).
const HOST_NETWORK_WAIT: Duration = Duration::from_secs(15);

/// Configure the host NIC (`[host.network]`); a failure is on the console and boot goes on.
fn start_host_network(settings: &HostNetwork) -> Option<net::host::HostNet> {
    let started = net::RtNetlink::new()
        .map_err(|e| error_chain(&e))
        .and_then(|rt| {
            net::host::HostNet::start(
                settings,
                &net::host::HostPaths::default(),
                Box::new(rt),
                net::host::console_observer(),
            )
            .map_err(|e| error_chain(&e))
        });
    match started {
        Ok(host) => Some(host),
        Err(what) => {
            console::emit(&Event::Error {
                what: format!("host network: {what}"),
            });
            None
        }
    }
}

/// The container network (bridge, NAT) for the manifest; on failure containers still start,
/// each in an empty network namespace, and the console says why.
fn setup_network(
    manifest: &berth_agent::manifest::Manifest,
    state_dir: &std::path::Path,
    run_dir: &std::path::Path,
    mtu: Option<u32>,
) -> Option<Arc<Mutex<net::Network>>> {
    let mut config = net::NetworkConfig::new(state_dir, run_dir);
    config.mtu = mtu;
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

/// The manifest file in force: the applied one when saved, else the boot manifest.
fn active_manifest(manifest: &Path, state_dir: &Path) -> PathBuf {
    let saved = state_dir.join(SAVED_MANIFEST);
    if saved.exists() {
        saved
    } else {
        manifest.to_path_buf()
    }
}
