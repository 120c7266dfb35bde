//! Container networking: the bridge `berth0`, a network namespace and veth pair per container,
//! addresses from the subnet (persisted), NAT for egress and published ports, and the
//! `/etc/hosts` / `/etc/resolv.conf` every container sees.
//!
//! [`Network`] is built once per manifest ([`Network::setup`]) and is called exactly twice per
//! container run: [`Network::attach`] before the container starts (it returns the namespace to
//! join and the name files to mount) and [`Network::detach`] after its process ended. All
//! kernel work goes through [`NetlinkClient`] and [`Firewall`], so the sequence is unit-tested
//! with fakes.

pub mod dhcp;
pub mod hook;
pub mod host;
pub mod hosts;
pub mod ipam;
pub mod netlink;
pub mod nft;
pub mod rtnl;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, NetworkMode, PortMapping, Subnet};
use crate::runtime::init::NetworkNamespace;
use crate::runtime::rootfs::ContainerMount;

pub use netlink::{Link, NetlinkClient, NetlinkError, RecordingNetlink};
pub use nft::{Firewall, FirewallError, NfTables, RecordingFirewall, Ruleset};
pub use rtnl::RtNetlink;

/// The bridge every container's veth is attached to.
pub const BRIDGE: &str = "berth0";

/// Default directory for runtime state (namespaces, name files): `/run/berth`.
pub const DEFAULT_RUN_DIR: &str = "/run/berth";

/// Why networking could not be set up for the host or a container.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `apply` asked for another subnet while containers use this one.
    #[error("[network] subnet {wanted} differs from the running {running}; a new subnet takes effect at the next boot")]
    SubnetChange {
        /// The subnet in use.
        running: String,
        /// The one asked for.
        wanted: String,
    },
    /// A netlink request failed.
    #[error("{context}")]
    Netlink {
        /// What berth was doing.
        context: String,
        /// The failed request.
        #[source]
        source: NetlinkError,
    },
    /// nftables refused the NAT rules.
    #[error("{context}")]
    Firewall {
        /// What berth was doing.
        context: String,
        /// Why.
        #[source]
        source: FirewallError,
    },
    /// Addresses could not be assigned.
    #[error("cannot assign container addresses")]
    Ipam(#[source] ipam::IpamError),
    /// A name file could not be written.
    #[error("cannot write {}", path.display())]
    Files {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The container is not in the manifest this network was set up for.
    #[error("container {0:?} is not declared in the manifest")]
    Unknown(String),
}

/// Where a [`Network`] keeps its files.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The state directory (`/var/lib/berth`): addresses live in `network/addresses.json`.
    pub state_dir: PathBuf,
    /// Runtime directory (`/run/berth`): `netns/NAME` and `containers/NAME/{hosts,resolv.conf}`.
    pub run_dir: PathBuf,
    /// The host's resolv.conf (`/etc/resolv.conf`).
    pub host_resolv_conf: PathBuf,
    /// The host NIC's MTU: both ends of every container's veth get it (`None`: the kernel's
    /// default, 1500).
    pub mtu: Option<u32>,
}

impl NetworkConfig {
    /// The usual paths below `state_dir` and `run_dir`.
    pub fn new(state_dir: &Path, run_dir: &Path) -> Self {
        NetworkConfig {
            state_dir: state_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            mtu: None,
        }
    }
}

/// What a container gets from [`Network::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The network namespace it runs in.
    pub netns: NetworkNamespace,
    /// `/etc/hosts` and `/etc/resolv.conf`, bind-mounted read-only.
    pub mounts: Vec<ContainerMount>,
    /// Its address on the bridge (bridge network only).
    pub ip: Option<Ipv4Addr>,
}

/// A container's network settings from the manifest.
#[derive(Debug, Clone)]
struct Declared {
    mode: NetworkMode,
    hostname: String,
    ports: Vec<PortMapping>,
}

/// A container whose network is set up.
#[derive(Debug, Clone)]
struct Active {
    netns: Option<PathBuf>,
    veth: Option<String>,
}

/// The host's container network for one manifest.
pub struct Network {
    netlink: Box<dyn NetlinkClient + Send>,
    firewall: Box<dyn Firewall + Send>,
    config: NetworkConfig,
    subnet: Subnet,
    declared: BTreeMap<String, Declared>,
    addresses: BTreeMap<String, Ipv4Addr>,
    active: BTreeMap<String, Active>,
    bridge_up: bool,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("subnet", &self.subnet)
            .field("addresses", &self.addresses)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

fn netlink_err(context: String) -> impl FnOnce(NetlinkError) -> NetError {
    move |source| NetError::Netlink { context, source }
}

/// The host side of a container's veth pair: `bv` and the address in hex (unique, and within
/// the kernel's 15-character limit).
pub fn veth_name(ip: Ipv4Addr) -> String {
    format!("bv{:08x}", u32::from(ip))
}

/// Each container's network declaration, by name.
fn declared_of(manifest: &Manifest) -> BTreeMap<String, Declared> {
    manifest
        .containers
        .iter()
        .map(|(name, c)| {
            (
                name.clone(),
                Declared {
                    mode: c.network,
                    hostname: c.hostname_or(name).to_owned(),
                    ports: c.ports.clone(),
                },
            )
        })
        .collect()
}

/// An address request per bridge container (pinned `ip` when given).
fn ipam_requests(manifest: &Manifest) -> Vec<ipam::Request> {
    manifest
        .containers
        .iter()
        .filter(|(_, c)| c.network == NetworkMode::Bridge)
        .map(|(name, c)| ipam::Request {
            name: name.clone(),
            pinned: c.ip,
        })
        .collect()
}

impl Network {
    /// Assign addresses to the manifest's bridge containers and, when there is any, create the
    /// bridge with the subnet's first address, turn IP forwarding on and install the NAT table.
    pub fn setup(
        manifest: &Manifest,
        config: NetworkConfig,
        netlink: Box<dyn NetlinkClient + Send>,
        firewall: Box<dyn Firewall + Send>,
    ) -> Result<Network, NetError> {
        let subnet = manifest.network.subnet;
        let declared = declared_of(manifest);
        let requests = ipam_requests(manifest);
        let addresses = ipam::assign(&ipam::addresses_file(&config.state_dir), subnet, &requests)
            .map_err(NetError::Ipam)?;
        let mut network = Network {
            netlink,
            firewall,
            config,
            subnet,
            declared,
            addresses,
            active: BTreeMap::new(),
            bridge_up: false,
        };
        if !requests.is_empty() {
            network.bridge()?;
        }
        Ok(network)
    }

    fn bridge(&mut self) -> Result<(), NetError> {
        let ctx = |what: &str| format!("cannot set up the container bridge {BRIDGE}: {what}");
        if !self
            .netlink
            .link_exists(BRIDGE)
            .map_err(netlink_err(ctx("look it up")))?
        {
            self.netlink
                .add_bridge(BRIDGE)
                .map_err(netlink_err(ctx("create it")))?;
        }
        let gateway = self.subnet.gateway();
        match self
            .netlink
            .add_address(BRIDGE, gateway, self.subnet.prefix)
        {
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) => {}
            other => other.map_err(netlink_err(ctx("give it its address")))?,
        }
        self.netlink
            .set_up(BRIDGE)
            .map_err(netlink_err(ctx("bring it up")))?;
        self.netlink
            .sysctl("net/ipv4/ip_forward", "1")
            .map_err(netlink_err(ctx("turn IP forwarding on")))?;
        // Published ports answer the host's own connections to 127.0.0.1 too.
        self.netlink
            .sysctl(&format!("net/ipv4/conf/{BRIDGE}/route_localnet"), "1")
            .map_err(netlink_err(ctx("allow 127.0.0.1 to reach published ports")))?;
        self.bridge_up = true;
        self.apply_rules()
    }

    /// The NAT table for the containers now attached.
    pub fn ruleset(&self) -> Ruleset {
        let mut published = Vec::new();
        for name in self.active.keys() {
            let (Some(decl), Some(ip)) = (self.declared.get(name), self.addresses.get(name)) else {
                continue;
            };
            for p in &decl.ports {
                published.push(nft::Published {
                    container: name.clone(),
                    host_ip: p.host_ip,
                    host_port: p.host_port,
                    container_ip: *ip,
                    container_port: p.container_port,
                    protocol: p.protocol,
                });
            }
        }
        Ruleset {
            subnet: self.subnet,
            bridge: BRIDGE.to_owned(),
            published,
        }
    }

    fn apply_rules(&mut self) -> Result<(), NetError> {
        let rules = self.ruleset();
        self.firewall
            .apply(&rules)
            .map_err(|source| NetError::Firewall {
                context: "cannot install the NAT rules for the containers".into(),
                source,
            })
    }

    /// The address a bridge container has (assigned at setup).
    pub fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.addresses.get(name).copied()
    }

    fn netns_path(&self, name: &str) -> PathBuf {
        self.config.run_dir.join("netns").join(name)
    }

    fn files_dir(&self, name: &str) -> PathBuf {
        self.config.run_dir.join("containers").join(name)
    }

    /// Every container's name and address: bridge containers by their address, host-network
    /// ones by the bridge's (which is the host).
    fn names(&self) -> Vec<(String, Ipv4Addr)> {
        self.declared
            .iter()
            .filter_map(|(name, d)| {
                let label = if d.hostname == *name {
                    name.clone()
                } else {
                    format!("{name} {}", d.hostname)
                };
                match d.mode {
                    NetworkMode::Bridge => self.addresses.get(name).map(|ip| (label, *ip)),
                    NetworkMode::Host if self.bridge_up => Some((label, self.subnet.gateway())),
                    NetworkMode::Host | NetworkMode::None => None,
                }
            })
            .collect()
    }

    fn write_files(&self, name: &str, hostname: &str) -> Result<Vec<ContainerMount>, NetError> {
        let dir = self.files_dir(name);
        let fail = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NetError::Files { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(fail(&dir))?;
        let host = std::fs::read_to_string(&self.config.host_resolv_conf).unwrap_or_default();
        let pnp = std::fs::read_to_string("/proc/net/pnp").unwrap_or_default();
        let files = [
            ("hosts", hosts::hosts_file(name, hostname, &self.names())),
            ("resolv.conf", hosts::resolv_conf(&host, &pnp)),
        ];
        let mut mounts = Vec::new();
        for (file, text) in files {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(fail(&path))?;
            mounts.push(ContainerMount::Bind {
                source: path,
                within: dir.clone(),
                target: Path::new("/etc").join(file),
                read_only: true,
                create: false,
            });
        }
        Ok(mounts)
    }

    /// Set up the network of container `name` before it starts.
    /// Take in a new manifest (`berthctl apply`): containers it adds get addresses (kept ones
    /// keep theirs) and can attach; removed ones give theirs back. The subnet is fixed until
    /// the next boot.
    pub fn update(&mut self, manifest: &Manifest) -> Result<(), NetError> {
        if manifest.network.subnet != self.subnet {
            return Err(NetError::SubnetChange {
                running: self.subnet.to_string(),
                wanted: manifest.network.subnet.to_string(),
            });
        }
        let requests = ipam_requests(manifest);
        self.addresses = ipam::assign(
            &ipam::addresses_file(&self.config.state_dir),
            self.subnet,
            &requests,
        )
        .map_err(NetError::Ipam)?;
        self.declared = declared_of(manifest);
        if !requests.is_empty() && !self.bridge_up {
            self.bridge()?;
        }
        self.refresh_hosts()
    }

    /// Rewrite every attached container's `/etc/hosts` for the names declared now. Written in
    /// place (same inode), so the file bind-mounted into the running container changes too.
    fn refresh_hosts(&self) -> Result<(), NetError> {
        let names = self.names();
        for name in self.active.keys() {
            let Some(decl) = self.declared.get(name) else {
                continue;
            };
            let path = self.files_dir(name).join("hosts");
            if !path.exists() {
                continue;
            }
            std::fs::write(&path, hosts::hosts_file(name, &decl.hostname, &names))
                .map_err(|source| NetError::Files { path, source })?;
        }
        Ok(())
    }

    pub fn attach(&mut self, name: &str) -> Result<Attachment, NetError> {
        let decl = self
            .declared
            .get(name)
            .cloned()
            .ok_or_else(|| NetError::Unknown(name.to_owned()))?;
        // A leftover from a run that was not detached (berthd restarted) goes first.
        if self.active.contains_key(name) {
            self.detach(name);
        }
        let mounts = self.write_files(name, &decl.hostname)?;
        if decl.mode == NetworkMode::Host {
            self.active.insert(
                name.to_owned(),
                Active {
                    netns: None,
                    veth: None,
                },
            );
            return Ok(Attachment {
                netns: NetworkNamespace::Host,
                mounts,
                ip: None,
            });
        }
        let path = self.netns_path(name);
        if path.exists() {
            let _ = self.netlink.delete_netns(&path);
        }
        let ip = match decl.mode {
            NetworkMode::Bridge => self.address_of(name),
            _ => None,
        };
        let veth = ip.map(veth_name);
        if let Some(v) = &veth {
            // A stale host end (berthd killed before it detached) would block the new pair.
            if self.netlink.link_exists(v).unwrap_or(false) {
                let _ = self.netlink.delete_link(v);
            }
        }
        self.netlink
            .create_netns(&path)
            .map_err(netlink_err(format!(
                "container={name}: cannot create its network namespace"
            )))?;
        self.active.insert(
            name.to_owned(),
            Active {
                netns: Some(path.clone()),
                veth: veth.clone(),
            },
        );
        let wired = self.wire(name, &path, ip, veth.as_deref());
        if let Err(e) = wired {
            self.detach(name);
            return Err(e);
        }
        Ok(Attachment {
            netns: NetworkNamespace::Join(path),
            mounts,
            ip,
        })
    }

    /// Take over the network of container `name`, which was attached by the previous berthd
    /// and still runs (see `supervisor::adopt`): its namespace, veth pair and address stay as
    /// they are, its name files are rewritten in place and its published ports are added back
    /// to the NAT table.
    pub fn adopt(&mut self, name: &str) -> Result<(), NetError> {
        let decl = self
            .declared
            .get(name)
            .cloned()
            .ok_or_else(|| NetError::Unknown(name.to_owned()))?;
        self.write_files(name, &decl.hostname)?;
        let (netns, veth) = match decl.mode {
            NetworkMode::Host => (None, None),
            NetworkMode::Bridge => (
                Some(self.netns_path(name)),
                self.address_of(name).map(veth_name),
            ),
            NetworkMode::None => (Some(self.netns_path(name)), None),
        };
        self.active.insert(name.to_owned(), Active { netns, veth });
        if self.bridge_up && !decl.ports.is_empty() {
            self.apply_rules()?;
        }
        Ok(())
    }

    /// `lo` up; for a bridge container the veth pair, its address, its default route and its
    /// published ports.
    fn wire(
        &mut self,
        name: &str,
        netns: &Path,
        ip: Option<Ipv4Addr>,
        veth: Option<&str>,
    ) -> Result<(), NetError> {
        let ctx = |what: &str| format!("container={name}: cannot {what}");
        let mut inside = self
            .netlink
            .enter(netns)
            .map_err(netlink_err(ctx("enter its network namespace")))?;
        inside
            .set_up("lo")
            .map_err(netlink_err(ctx("bring up its loopback interface")))?;
        let (Some(ip), Some(veth)) = (ip, veth) else {
            return Ok(());
        };
        self.netlink
            .add_veth(veth, "eth0", netns)
            .map_err(netlink_err(ctx("create its veth pair")))?;
        if let Some(mtu) = self.config.mtu {
            self.netlink
                .set_mtu(veth, mtu)
                .map_err(netlink_err(ctx(&format!("set the MTU of {veth} to {mtu}"))))?;
            inside
                .set_mtu("eth0", mtu)
                .map_err(netlink_err(ctx(&format!("set the MTU of eth0 to {mtu}"))))?;
        }
        self.netlink
            .set_master(veth, BRIDGE)
            .map_err(netlink_err(ctx(&format!("attach {veth} to {BRIDGE}"))))?;
        self.netlink
            .set_up(veth)
            .map_err(netlink_err(ctx(&format!("bring {veth} up"))))?;
        inside
            .add_address("eth0", ip, self.subnet.prefix)
            .map_err(netlink_err(ctx(&format!("give eth0 the address {ip}"))))?;
        inside
            .set_up("eth0")
            .map_err(netlink_err(ctx("bring eth0 up")))?;
        inside
            .add_default_route(self.subnet.gateway())
            .map_err(netlink_err(ctx("add its default route")))?;
        let publishes = self.declared.get(name).is_some_and(|d| !d.ports.is_empty());
        if publishes {
            self.apply_rules()?;
        }
        Ok(())
    }

    /// Remove what [`Network::attach`] set up: the veth pair, the namespace, the published
    /// ports' rules and the name files. Failures are reported on the console and the rest
    /// goes on. The container keeps its address assignment for its next start.
    pub fn detach(&mut self, name: &str) {
        let Some(active) = self.active.remove(name) else {
            return;
        };
        let mut problems = Vec::new();
        if let Some(veth) = &active.veth {
            match self.netlink.delete_link(veth) {
                Ok(()) | Err(NetlinkError::NoSuchLink(_)) => {}
                Err(e) => problems.push(crate::runtime::init::error_chain(&e)),
            }
        }
        if let Some(path) = &active.netns {
            if let Err(e) = self.netlink.delete_netns(path) {
                problems.push(crate::runtime::init::error_chain(&e));
            }
        }
        let publishes = self.declared.get(name).is_some_and(|d| !d.ports.is_empty());
        if publishes && self.bridge_up {
            if let Err(e) = self.apply_rules() {
                problems.push(crate::runtime::init::error_chain(&e));
            }
        }
        let _ = std::fs::remove_dir_all(self.files_dir(name));
        for what in problems {
            crate::console::emit(&crate::console::Event::Error {
                what: format!("container={name}: network teardown: {what}"),
            });
        }
    }

    /// Detach every container, delete the NAT table and the bridge.
    pub fn teardown(&mut self) -> Result<(), NetError> {
        let names: Vec<String> = self.active.keys().cloned().collect();
        for name in names {
            self.detach(&name);
        }
        if self.bridge_up {
            self.firewall
                .remove()
                .map_err(|source| NetError::Firewall {
                    context: "cannot remove the NAT rules".into(),
                    source,
                })?;
            match self.netlink.delete_link(BRIDGE) {
                Ok(()) | Err(NetlinkError::NoSuchLink(_)) => {}
                Err(source) => {
                    return Err(NetError::Netlink {
                        context: format!("cannot delete the bridge {BRIDGE}"),
                        source,
                    })
                }
            }
            self.bridge_up = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
