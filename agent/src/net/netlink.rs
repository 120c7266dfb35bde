//! The kernel side of container networking behind one narrow trait: links, addresses, routes
//! (rtnetlink), network namespaces and the few sysctls berth needs.
//!
//! [`Network`](super::Network) only talks to a [`NetlinkClient`], so what a container start or
//! stop sends is unit-tested with [`RecordingNetlink`]; [`super::rtnl::RtNetlink`] is the real
//! client on `netlink-packet-route`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A failed netlink request or namespace operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Kernel {
        /// The request, in words (`add bridge berth0`).
        what: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// A link that must exist does not.
    #[error("no network interface named {0:?}")]
    NoSuchLink(String),
    /// The kernel's answer could not be decoded.
    #[error("{what}: unreadable netlink answer: {detail}")]
    Decode {
        /// The request.
        what: String,
        /// What was wrong with the answer.
        detail: String,
    },
}

impl NetlinkError {
    /// A kernel error for `what`.
    pub fn kernel(what: impl Into<String>, source: std::io::Error) -> Self {
        NetlinkError::Kernel {
            what: what.into(),
            source,
        }
    }
}

/// A network interface as [`NetlinkClient::links`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its name (`eth0`).
    pub name: String,
    /// Its hardware address, when it has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Its MTU.
    pub mtu: u32,
    /// An Ethernet device the kernel's driver created (not loopback, and no software kind
    /// such as bridge or veth).
    pub ethernet: bool,
}

/// Links, addresses and routes of one network namespace, plus creating others.
pub trait NetlinkClient {
    /// Every link of the namespace, in index order.
    fn links(&mut self) -> Result<Vec<Link>, NetlinkError>;
    /// Set a link's MTU.
    fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError>;
    /// Remove an IPv4 address.
    fn delete_address(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError>;
    /// Add or replace the default route: via `gateway` out of link `name`.
    fn replace_default_route(&mut self, name: &str, gateway: Ipv4Addr) -> Result<(), NetlinkError>;
    /// Remove the default route via `gateway` out of link `name`.
    fn delete_default_route(&mut self, name: &str, gateway: Ipv4Addr) -> Result<(), NetlinkError>;
    /// Whether a link with this name exists.
    fn link_exists(&mut self, name: &str) -> Result<bool, NetlinkError>;
    /// Create a bridge (fails with EEXIST when it exists).
    fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError>;
    /// Create a veth pair: `name` here, `peer` created directly in the namespace bound at
    /// `peer_netns`.
    fn add_veth(&mut self, name: &str, peer: &str, peer_netns: &Path) -> Result<(), NetlinkError>;
    /// Attach a link to a bridge.
    fn set_master(&mut self, name: &str, master: &str) -> Result<(), NetlinkError>;
    /// Bring a link up.
    fn set_up(&mut self, name: &str) -> Result<(), NetlinkError>;
    /// Add an IPv4 address (EEXIST when it is already there).
    fn add_address(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError>;
    /// Add the default route via `gateway`.
    fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), NetlinkError>;
    /// Delete a link (deleting one end of a veth pair deletes both).
    fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError>;
    /// Write a sysctl of this namespace (`net/ipv4/ip_forward`).
    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError>;
    /// Create a new network namespace and bind it at `path` (like `ip netns add`).
    fn create_netns(&mut self, path: &Path) -> Result<(), NetlinkError>;
    /// Unbind and remove a namespace created by [`NetlinkClient::create_netns`]; it is
    /// destroyed with its last process.
    fn delete_netns(&mut self, path: &Path) -> Result<(), NetlinkError>;
    /// A client for the namespace bound at `path`.
    fn enter(&mut self, path: &Path) -> Result<Box<dyn NetlinkClient>, NetlinkError>;
}

/// A fake [`NetlinkClient`]: records every call as a line (`[ns] call args`) in a log shared
/// with the clients [`NetlinkClient::enter`] returns, and keeps just enough state (links,
/// namespaces) to answer `link_exists` and fail like the kernel on duplicates.
#[derive(Debug, Clone)]
pub struct RecordingNetlink {
    /// The namespace this client talks to (`host` or the bound path).
    pub ns: String,
    /// Every call, in order, across all clients of this fake.
    pub log: Arc<Mutex<Vec<String>>>,
    links: Arc<Mutex<Vec<(String, String)>>>,
    namespaces: Arc<Mutex<Vec<PathBuf>>>,
    /// Calls (prefix match on the log line without the namespace) that fail with EPERM.
    pub fail: Arc<Mutex<Vec<String>>>,
}

impl Default for RecordingNetlink {
    fn default() -> Self {
        RecordingNetlink {
            ns: "host".into(),
            log: Arc::default(),
            links: Arc::default(),
            namespaces: Arc::default(),
            fail: Arc::default(),
        }
    }
}

impl RecordingNetlink {
    /// The recorded calls.
    pub fn calls(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Forget the recorded calls (state is kept).
    pub fn clear(&self) {
        if let Ok(mut l) = self.log.lock() {
            l.clear();
        }
    }

    /// Links that exist, as `ns/name`.
    pub fn links(&self) -> Vec<String> {
        self.links
            .lock()
            .map(|l| l.iter().map(|(ns, n)| format!("{ns}/{n}")).collect())
            .unwrap_or_default()
    }

    /// Namespaces that exist.
    pub fn namespaces(&self) -> Vec<PathBuf> {
        self.namespaces
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }

    /// Make calls starting with `prefix` fail.
    pub fn fail_on(&self, prefix: &str) {
        if let Ok(mut f) = self.fail.lock() {
            f.push(prefix.to_owned());
        }
    }

    fn record(&self, call: String) -> Result<(), NetlinkError> {
        let failing = self
            .fail
            .lock()
            .map(|f| f.iter().any(|p| call.starts_with(p.as_str())))
            .unwrap_or(false);
        if let Ok(mut l) = self.log.lock() {
            l.push(format!("[{}] {call}", self.ns));
        }
        if failing {
            return Err(NetlinkError::kernel(
                call,
                std::io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        Ok(())
    }

    fn has(&self, ns: &str, name: &str) -> bool {
        self.links
            .lock()
            .map(|l| l.iter().any(|(n, x)| n == ns && x == name))
            .unwrap_or(false)
    }

    fn insert(&self, ns: &str, name: &str, what: &str) -> Result<(), NetlinkError> {
        if self.has(ns, name) {
            return Err(NetlinkError::kernel(
                what,
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        if let Ok(mut l) = self.links.lock() {
            l.push((ns.to_owned(), name.to_owned()));
        }
        Ok(())
    }

    fn need(&self, name: &str) -> Result<(), NetlinkError> {
        if self.has(&self.ns, name) || name == "lo" {
            Ok(())
        } else {
            Err(NetlinkError::NoSuchLink(name.to_owned()))
        }
    }
}

impl RecordingNetlink {
    /// Add a physical Ethernet link (as a NIC would appear) to this fake's namespace.
    pub fn add_nic(&self, name: &str) {
        let _ = self.insert(&self.ns.clone(), name, "add nic");
    }
}

impl NetlinkClient for RecordingNetlink {
    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let own: Vec<String> = self
            .links
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(ns, _)| ns == &self.ns)
                    .map(|(_, n)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut links = vec![Link {
            name: "lo".into(),
            mac: None,
            mtu: 65536,
            ethernet: false,
        }];
        for (i, name) in own.into_iter().enumerate() {
            let software = name.starts_with("bv") || name.starts_with("berth");
            links.push(Link {
                mac: Some([0x52, 0x54, 0, 0, 0, u8::try_from(i + 1).unwrap_or(0xff)]),
                mtu: 1500,
                ethernet: !software,
                name,
            });
        }
        Ok(links)
    }

    fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.record(format!("set_mtu {name} {mtu}"))?;
        self.need(name)
    }

    fn delete_address(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        self.record(format!("delete_address {name} {ip}/{prefix}"))?;
        self.need(name)
    }

    fn replace_default_route(&mut self, name: &str, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        self.record(format!("replace_default_route via {gateway} dev {name}"))?;
        self.need(name)
    }

    fn delete_default_route(&mut self, name: &str, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        self.record(format!("delete_default_route via {gateway} dev {name}"))?;
        self.need(name)
    }

    fn link_exists(&mut self, name: &str) -> Result<bool, NetlinkError> {
        Ok(self.has(&self.ns, name))
    }

    fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.record(format!("add_bridge {name}"))?;
        self.insert(&self.ns.clone(), name, "add bridge")
    }

    fn add_veth(&mut self, name: &str, peer: &str, peer_netns: &Path) -> Result<(), NetlinkError> {
        self.record(format!(
            "add_veth {name} peer {peer} in {}",
            peer_netns.display()
        ))?;
        let peer_ns = peer_netns.display().to_string();
        self.insert(&self.ns.clone(), name, "add veth")?;
        self.insert(&peer_ns, peer, "add veth peer")
    }

    fn set_master(&mut self, name: &str, master: &str) -> Result<(), NetlinkError> {
        self.record(format!("set_master {name} {master}"))?;
        self.need(name)?;
        self.need(master)
    }

    fn set_up(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.record(format!("set_up {name}"))?;
        self.need(name)
    }

    fn add_address(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        self.record(format!("add_address {name} {ip}/{prefix}"))?;
        self.need(name)
    }

    fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        self.record(format!("add_default_route via {gateway}"))
    }

    fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.record(format!("delete_link {name}"))?;
        self.need(name)?;
        // A veth pair goes as a whole: drop this end and any peer named after the pair.
        if let Ok(mut l) = self.links.lock() {
            l.retain(|(ns, n)| !(ns == &self.ns && n == name));
        }
        Ok(())
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError> {
        self.record(format!("sysctl {key}={value}"))
    }

    fn create_netns(&mut self, path: &Path) -> Result<(), NetlinkError> {
        self.record(format!("create_netns {}", path.display()))?;
        if let Ok(mut n) = self.namespaces.lock() {
            n.push(path.to_path_buf());
        }
        Ok(())
    }

    fn delete_netns(&mut self, path: &Path) -> Result<(), NetlinkError> {
        self.record(format!("delete_netns {}", path.display()))?;
        let ns = path.display().to_string();
        if let Ok(mut n) = self.namespaces.lock() {
            n.retain(|p| p != path);
        }
        // Links inside a destroyed namespace go with it.
        if let Ok(mut l) = self.links.lock() {
            l.retain(|(n, _)| n != &ns);
        }
        Ok(())
    }

    fn enter(&mut self, path: &Path) -> Result<Box<dyn NetlinkClient>, NetlinkError> {
        let known = self
            .namespaces
            .lock()
            .map(|n| n.iter().any(|p| p == path))
            .unwrap_or(false);
        if !known {
            return Err(NetlinkError::kernel(
                format!("enter {}", path.display()),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        let mut inner = self.clone();
        inner.ns = path.display().to_string();
        Ok(Box::new(inner))
    }
}
