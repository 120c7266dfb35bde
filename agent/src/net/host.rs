//! The host's own network: the primary NIC gets its address from berthd's DHCPv4 client
//! (default) or from the manifest's `[host.network]` (static), and `/etc/resolv.conf` lists its
//! resolvers. Containers reach the world through this NIC, and IMDS and registries need it.
//!
//! The DHCP protocol itself is the pure [`super::dhcp::Machine`]; this module owns the socket
//! and applies what it decides through the [`NetlinkClient`] trait, so what a lease sends to
//! the kernel is unit-tested with the recording fake.
//!
//! The client talks over a UDP socket bound to port 68 and to the interface
//! (`SO_BINDTODEVICE`), not a packet socket: the kernel builds the IP and UDP headers, and the
//! limited broadcast 255.255.255.255 is both sent and received on an interface that has no
//! address yet. Requests set the BOOTP broadcast flag so servers broadcast their answers until
//! the client has an address (a unicast answer to an address the interface does not yet have
//! would never reach the socket); renewals are unicast to the server from the leased address.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::dhcp::{self, Action, Destination, Lease, Machine};
use super::netlink::{Link, NetlinkClient, NetlinkError};
use crate::manifest::{HostAddressing, HostNetwork};

/// Why the host network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    /// No interface to configure.
    #[error("{}", no_interface(.wanted.as_deref(), .list))]
    NoInterface {
        /// The manifest's `interface`, if any.
        wanted: Option<String>,
        /// The interfaces that exist.
        list: Vec<String>,
    },
    /// The interface has no 6-byte hardware address (DHCP needs one).
    #[error("interface {0} has no Ethernet address; DHCP cannot run on it: use mode = \"static\"")]
    NoMac(String),
    /// A netlink request failed.
    #[error("nic={nic}: cannot {what}")]
    Netlink {
        /// The interface.
        nic: String,
        /// What berth was doing.
        what: String,
        /// Why.
        #[source]
        source: NetlinkError,
    },
    /// resolv.conf could not be written.
    #[error("cannot write {}", path.display())]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The DHCP socket could not be set up.
    #[error("nic={nic}: cannot open the DHCP client socket (UDP port 68)")]
    Socket {
        /// The interface.
        nic: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A DHCP packet could not be built.
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
}

fn no_interface(wanted: Option<&str>, list: &[String]) -> String {
    match wanted {
        Some(name) => format!(
            "[host.network] interface {name:?} does not exist; interfaces: {}",
            list.join(", ")
        ),
        None => format!(
            "no Ethernet interface to configure (interfaces: {}); set [host.network] interface, or mode = \"off\"",
            list.join(", ")
        ),
    }
}

/// What the interface was given: an address and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The interface.
    pub nic: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// The default route's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Resolvers written to resolv.conf.
    pub dns: Vec<Ipv4Addr>,
    /// The interface's MTU now.
    pub mtu: u32,
    /// The lease time (DHCP only).
    pub lease: Option<Duration>,
    /// `dhcp` or `static`.
    pub source: &'static str,
}

impl Configured {
    /// `berth: network nic=eth0 address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3
    /// lease=86400s source=dhcp` (`renewed` after `nic=` for a renewal).
    pub fn console_line(&self, renewed: bool) -> String {
        let mut line = format!("berth: network nic={}", self.nic);
        if renewed {
            line.push_str(" renewed");
        }
        line.push_str(&format!(" address={}/{}", self.address, self.prefix));
        let show = |v: Option<Ipv4Addr>| v.map_or_else(|| "none".to_owned(), |g| g.to_string());
        line.push_str(&format!(" gateway={}", show(self.gateway)));
        let dns: Vec<String> = self.dns.iter().map(ToString::to_string).collect();
        let dns = if dns.is_empty() {
            "none".to_owned()
        } else {
            dns.join(",")
        };
        line.push_str(&format!(" dns={dns} mtu={}", self.mtu));
        if let Some(lease) = self.lease {
            line.push_str(&format!(" lease={}s", lease.as_secs()));
        }
        line.push_str(&format!(" source={}", self.source));
        line
    }
}

/// What happened to the host network, for the console (or a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// The interface has an address.
    Configured(Configured),
    /// A DHCP lease was extended.
    Renewed(Configured),
    /// A DHCP lease ended without renewal; the address is removed and DHCP starts over.
    Lost {
        /// The interface.
        nic: String,
        /// The address removed.
        address: Ipv4Addr,
    },
    /// Something failed; the client keeps trying where it can.
    Failed(String),
}

/// The interface to configure: `wanted`, else the first Ethernet interface.
pub fn choose_interface(
    netlink: &mut dyn NetlinkClient,
    wanted: Option<&str>,
) -> Result<Link, HostNetError> {
    let links = netlink.links().map_err(|source| HostNetError::Netlink {
        nic: wanted.unwrap_or("?").to_owned(),
        what: "list the network interfaces".into(),
        source,
    })?;
    let found = match wanted {
        Some(name) => links.iter().find(|l| l.name == name),
        None => links.iter().find(|l| l.ethernet),
    };
    found.cloned().ok_or_else(|| HostNetError::NoInterface {
        wanted: wanted.map(str::to_owned),
        list: links.iter().map(|l| l.name.clone()).collect(),
    })
}

/// An address, route and MTU to give an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// The default route's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// The MTU to set (`None`: leave it).
    pub mtu: Option<u32>,
}

impl Addressing {
    /// From a DHCP lease, the manifest's `mtu` winning over the lease's.
    pub fn of_lease(lease: &Lease, settings: &HostNetwork) -> Self {
        Addressing {
            address: lease.address,
            prefix: lease.prefix,
            gateway: lease.router,
            mtu: settings.mtu.or(lease.mtu.map(u32::from)),
        }
    }
}

/// Configure `nic`: MTU, up, address, default route. Returns the MTU the interface has.
/// Repeating it (a renewal) is harmless: an address that is there already is kept.
pub fn apply(
    netlink: &mut dyn NetlinkClient,
    nic: &Link,
    how: &Addressing,
) -> Result<u32, HostNetError> {
    let fail = |what: String| {
        let nic = nic.name.clone();
        move |source| HostNetError::Netlink { nic, what, source }
    };
    let mut mtu = nic.mtu;
    if let Some(wanted) = how.mtu.filter(|m| *m != nic.mtu) {
        netlink
            .set_mtu(&nic.name, wanted)
            .map_err(fail(format!("set its MTU to {wanted}")))?;
        mtu = wanted;
    }
    netlink
        .set_up(&nic.name)
        .map_err(fail("bring it up".into()))?;
    match netlink.add_address(&nic.name, how.address, how.prefix) {
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
        }
        other => other.map_err(fail(format!(
            "give it the address {}/{}",
            how.address, how.prefix
        )))?,
    }
    if let Some(gateway) = how.gateway {
        netlink
            .replace_default_route(&nic.name, gateway)
            .map_err(fail(format!("route via {gateway}")))?;
    }
    Ok(mtu)
}

/// Remove what [`apply`] added (the MTU stays). Missing pieces are fine.
pub fn deconfigure(
    netlink: &mut dyn NetlinkClient,
    nic: &str,
    how: &Addressing,
) -> Result<(), HostNetError> {
    let gone = |e: &NetlinkError| match e {
        NetlinkError::Kernel { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT)
        ),
        _ => false,
    };
    if let Some(gateway) = how.gateway {
        match netlink.delete_default_route(nic, gateway) {
            Err(e) if !gone(&e) => {
                return Err(HostNetError::Netlink {
                    nic: nic.to_owned(),
                    what: format!("remove the route via {gateway}"),
                    source: e,
                })
            }
            _ => {}
        }
    }
    match netlink.delete_address(nic, how.address, how.prefix) {
        Err(e) if !gone(&e) => Err(HostNetError::Netlink {
            nic: nic.to_owned(),
            what: format!("remove the address {}/{}", how.address, how.prefix),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Where a berth host's `/etc/resolv.conf` link points (PID 1 makes the link; /etc is
/// read-only).
pub const RUN_RESOLV_CONF: &str = "/run/resolv.conf";

/// The host's resolv.conf for these resolvers and search domain.
pub fn resolv_conf_text(dns: &[Ipv4Addr], domain: Option<&str>, source: &str) -> String {
    let mut text = format!("# Written by berthd from the {source} configuration.\n");
    if let Some(domain) = domain.map(str::trim).filter(|d| {
        !d.is_empty()
            && d.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_'))
    }) {
        text.push_str(&format!("search {domain}\n"));
    }
    for server in dns {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text
}

/// Write `text` to `path` atomically: a temporary file next to it, then a rename. When `path`
/// is a symlink, the file it names is the one replaced: on a berth host /etc is read-only and
/// PID 1 links `/etc/resolv.conf` to [`RUN_RESOLV_CONF`] on the /run tmpfs.
pub fn write_resolv_conf(path: &Path, text: &str) -> Result<(), HostNetError> {
    let linked;
    let path = match std::fs::read_link(path) {
        Ok(target) => {
            // A relative link is relative to the link's directory.
            linked = path.parent().unwrap_or(Path::new("/")).join(target);
            linked.as_path()
        }
        Err(_) => path,
    };
    let fail = |source| HostNetError::ResolvConf {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "resolv.conf".into());
    let tmp = dir.join(format!(".{name}.berth-tmp"));
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Shared between the client thread and its handle.
#[derive(Debug, Default)]
struct Status {
    current: Mutex<Option<Configured>>,
    changed: Condvar,
    stop: AtomicBool,
}

/// The running host network: what it was started with, its state, and the DHCP client
/// thread when there is one.
#[derive(Debug)]
pub struct HostNet {
    settings: HostNetwork,
    status: Arc<Status>,
    socket: Option<Arc<UdpSocket>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where the host network writes: resolv.conf's path.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// `/etc/resolv.conf` on a berth host; tests choose their own.
    pub resolv_conf: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// Something that hears about [`HostEvent`]s (the console in berthd, a channel in tests).
pub type Observer = Box<dyn FnMut(&HostEvent) + Send>;

impl HostNet {
    /// Configure the host network as `settings` says: static right away, DHCP on a thread
    /// that keeps the lease (renewing, rebinding, starting over), nothing for `off` but the
    /// resolvers when `dns` is given. `netlink` talks to the namespace the interface is in.
    pub fn start(
        settings: &HostNetwork,
        paths: &HostPaths,
        mut netlink: Box<dyn NetlinkClient + Send>,
        mut observer: Observer,
    ) -> Result<HostNet, HostNetError> {
        let status = Arc::new(Status::default());
        let mut host = HostNet {
            settings: settings.clone(),
            status: status.clone(),
            socket: None,
            thread: None,
        };
        match &settings.addressing {
            HostAddressing::Off => {
                if let Some(dns) = &settings.dns {
                    write_resolv_conf(
                        &paths.resolv_conf,
                        &resolv_conf_text(dns, None, "manifest's"),
                    )?;
                }
            }
            HostAddressing::Static {
                address,
                prefix,
                gateway,
            } => {
                let nic = choose_interface(netlink.as_mut(), settings.interface.as_deref())?;
                let how = Addressing {
                    address: *address,
                    prefix: *prefix,
                    gateway: *gateway,
                    mtu: settings.mtu,
                };
                let mtu = apply(netlink.as_mut(), &nic, &how)?;
                let dns = settings.dns.clone().unwrap_or_default();
                write_resolv_conf(
                    &paths.resolv_conf,
                    &resolv_conf_text(&dns, None, "manifest's static"),
                )?;
                let done = Configured {
                    nic: nic.name.clone(),
                    address: *address,
                    prefix: *prefix,
                    gateway: *gateway,
                    dns,
                    mtu,
                    lease: None,
                    source: "static",
                };
                observer(&HostEvent::Configured(done.clone()));
                status.set(Some(done));
            }
            HostAddressing::Dhcp => {
                let nic = choose_interface(netlink.as_mut(), settings.interface.as_deref())?;
                let mac = nic
                    .mac
                    .ok_or_else(|| HostNetError::NoMac(nic.name.clone()))?;
                netlink
                    .set_up(&nic.name)
                    .map_err(|source| HostNetError::Netlink {
                        nic: nic.name.clone(),
                        what: "bring it up".into(),
                        source,
                    })?;
                let socket =
                    Arc::new(
                        client_socket(&nic.name).map_err(|source| HostNetError::Socket {
                            nic: nic.name.clone(),
                            source,
                        })?,
                    );
                let client = Client {
                    nic,
                    mac,
                    settings: settings.clone(),
                    resolv_conf: paths.resolv_conf.clone(),
                    netlink,
                    socket: socket.clone(),
                    status: status.clone(),
                    observer,
                    applied: None,
                };
                host.socket = Some(socket);
                host.thread = Some(
                    std::thread::Builder::new()
                        .name("dhcp".into())
                        .spawn(move || client.run())
                        .map_err(|source| HostNetError::Socket {
                            nic: "?".into(),
                            source,
                        })?,
                );
            }
        }
        Ok(host)
    }

    /// The settings it was started with.
    pub fn settings(&self) -> &HostNetwork {
        &self.settings
    }

    /// What the interface has now (`None` before the first lease, after losing it, or for
    /// mode `off`).
    pub fn current(&self) -> Option<Configured> {
        self.status.current.lock().ok().and_then(|c| c.clone())
    }

    /// Wait up to `timeout` for the interface to have an address.
    pub fn wait_configured(&self, timeout: Duration) -> Option<Configured> {
        if self.thread.is_none() {
            return self.current();
        }
        let end = Instant::now() + timeout;
        let mut guard = self.status.current.lock().ok()?;
        while guard.is_none() {
            let left = end.checked_duration_since(Instant::now())?;
            guard = self.status.changed.wait_timeout(guard, left).ok()?.0;
        }
        guard.clone()
    }

    /// Stop the DHCP client and remove the address it configured.
    pub fn stop(mut self) {
        self.status.stop.store(true, Ordering::SeqCst);
        if let Some(socket) = &self.socket {
            // SAFETY: shutdown on a socket fd this handle keeps open; it wakes the client's
            // blocked recv.
            unsafe {
                libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Status {
    fn set(&self, value: Option<Configured>) {
        if let Ok(mut c) = self.current.lock() {
            *c = value;
        }
        self.changed.notify_all();
    }
}

/// A UDP socket on port 68 of `nic` that may broadcast.
fn client_socket(nic: &str) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT))?;
    socket.set_broadcast(true)?;
    let name = nic.as_bytes();
    // SAFETY: setsockopt reads `name.len()` bytes from a live slice; the fd is open.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            libc::socklen_t::try_from(name.len()).unwrap_or(0),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// A random transaction id seed (from the standard library's randomly keyed hasher).
fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    (h.finish() & 0xffff_ffff) as u32
}

/// The DHCP client thread's state.
struct Client {
    nic: Link,
    mac: [u8; 6],
    settings: HostNetwork,
    resolv_conf: PathBuf,
    netlink: Box<dyn NetlinkClient + Send>,
    socket: Arc<UdpSocket>,
    status: Arc<Status>,
    observer: Observer,
    applied: Option<Addressing>,
}

impl Client {
    fn run(mut self) {
        let start = Instant::now();
        let mut machine = Machine::new(random_seed());
        let mut actions = machine.start(Duration::ZERO);
        let mut buf = vec![0u8; 1500];
        loop {
            for action in actions.drain(..) {
                self.perform(action);
            }
            if self.status.stop.load(Ordering::SeqCst) {
                break;
            }
            let now = start.elapsed();
            let wait = machine
                .deadline()
                .map_or(Duration::from_secs(3600), |d| d.saturating_sub(now))
                .max(Duration::from_millis(10));
            let _ = self.socket.set_read_timeout(Some(wait));
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Some(reply) = dhcp::decode(&buf[..n], self.mac) {
                        actions = machine.on_reply(start.elapsed(), &reply);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    (self.observer)(&HostEvent::Failed(format!(
                        "nic={}: DHCP receive failed: {e}",
                        self.nic.name
                    )));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            if self.status.stop.load(Ordering::SeqCst) {
                break;
            }
            if machine.deadline().is_some_and(|d| d <= start.elapsed()) {
                actions.extend(machine.on_timer(start.elapsed()));
            }
        }
        if let Some(how) = self.applied.take() {
            let _ = deconfigure(self.netlink.as_mut(), &self.nic.name, &how);
        }
        self.status.set(None);
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Send { message, to } => {
                let target = match to {
                    Destination::Broadcast => Ipv4Addr::BROADCAST,
                    Destination::Unicast(server) => server,
                };
                let sent = dhcp::encode(&message, self.mac)
                    .map_err(|e| crate::runtime::init::error_chain(&e))
                    .and_then(|bytes| {
                        self.socket
                            .send_to(&bytes, SocketAddrV4::new(target, dhcp::SERVER_PORT))
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = sent {
                    (self.observer)(&HostEvent::Failed(format!(
                        "nic={}: cannot send a DHCP message to {target}: {e}",
                        self.nic.name
                    )));
                }
            }
            Action::Configure(lease) => self.configure(&lease, false),
            Action::Renewed(lease) => self.configure(&lease, true),
            Action::Deconfigure(lease) => {
                let how = self
                    .applied
                    .take()
                    .unwrap_or_else(|| Addressing::of_lease(&lease, &self.settings));
                if let Err(e) = deconfigure(self.netlink.as_mut(), &self.nic.name, &how) {
                    (self.observer)(&HostEvent::Failed(crate::runtime::init::error_chain(&e)));
                }
                self.status.set(None);
                (self.observer)(&HostEvent::Lost {
                    nic: self.nic.name.clone(),
                    address: lease.address,
                });
            }
        }
    }

    fn configure(&mut self, lease: &Lease, renewed: bool) {
        let how = Addressing::of_lease(lease, &self.settings);
        let dns = self
            .settings
            .dns
            .clone()
            .unwrap_or_else(|| lease.dns.clone());
        let result = apply(self.netlink.as_mut(), &self.nic, &how).and_then(|mtu| {
            write_resolv_conf(
                &self.resolv_conf,
                &resolv_conf_text(&dns, lease.domain.as_deref(), "DHCP"),
            )?;
            Ok(mtu)
        });
        match result {
            Ok(mtu) => {
                self.nic.mtu = mtu;
                self.applied = Some(how);
                let done = Configured {
                    nic: self.nic.name.clone(),
                    address: lease.address,
                    prefix: lease.prefix,
                    gateway: lease.router,
                    dns,
                    mtu,
                    lease: Some(lease.lease_time),
                    source: "dhcp",
                };
                let event = if renewed {
                    HostEvent::Renewed(done.clone())
                } else {
                    HostEvent::Configured(done.clone())
                };
                self.status.set(Some(done));
                (self.observer)(&event);
            }
            Err(e) => (self.observer)(&HostEvent::Failed(crate::runtime::init::error_chain(&e))),
        }
    }
}

/// The console's observer: one `berth: network ...` line per configuration and renewal,
/// errors as error lines, and the `network_up` timeline phase at the first address.
pub fn console_observer() -> Observer {
    let mut marked = false;
    Box::new(move |event| {
        match event {
        HostEvent::Configured(c) => {
            crate::console::emit_line(&c.console_line(false));
            if !marked {
                marked = true;
                crate::timeline::mark("network_up");
            }
        }
        HostEvent::Renewed(c) => crate::console::emit_line(&c.console_line(true)),
        HostEvent::Lost { nic, address } => crate::console::emit(&crate::console::Event::Warning {
            what: format!("nic={nic}: the DHCP lease of {address} ended without renewal; the address is removed and DHCP starts over"),
        }),
        HostEvent::Failed(what) => crate::console::emit(&crate::console::Event::Error {
            what: format!("host network: {what}"),
        }),
    }
    })
}

#[cfg(test)]
mod tests;
