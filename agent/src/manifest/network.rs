//! Network keys of the manifest: `[host.network]` (how the host's NIC gets its address),
//! `[network] subnet` and a container's `network`, `ip` and `ports`, parsed into typed values
//! with messages that say what to write instead.
//!
//! They live apart from `rules.rs` because they carry their own value types (a subnet, a port
//! mapping) that the network module consumes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The container subnet when `[network] subnet` is not set.
pub const DEFAULT_SUBNET: Subnet = Subnet {
    network: Ipv4Addr::new(10, 88, 0, 0),
    prefix: 24,
};

/// An IPv4 network: the address with its host bits clear, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length, 8..=30.
    pub prefix: u8,
}

impl Subnet {
    /// The netmask of a prefix length, as a number.
    pub fn mask_of(prefix: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0)
    }

    fn mask(self) -> u32 {
        Subnet::mask_of(self.prefix)
    }

    /// Whether `ip` lies in this network (network and broadcast addresses included).
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The bridge's address: the first host address.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The broadcast address (the last one).
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// Addresses a container may get: all host addresses but the bridge's.
    pub fn container_addresses(self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let last = u32::from(self.broadcast());
        (first..last).map(Ipv4Addr::from)
    }

    /// Whether `ip` may be given to a container (inside, not network, bridge or broadcast).
    pub fn usable_for_container(self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.gateway() && ip != self.broadcast()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    /// `10.88.0.0/24`; the message of an error says what to write.
    fn from_str(s: &str) -> Result<Subnet, String> {
        let example = "write an IPv4 network in CIDR form, e.g. \"10.88.0.0/24\"";
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(format!("subnet {s:?} has no prefix length; {example}"));
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("subnet {s:?}: {addr:?} is not an IPv4 address; {example}"))?;
        let prefix: u8 = prefix.parse().map_err(|_| {
            format!("subnet {s:?}: prefix length {prefix:?} is not a number; {example}")
        })?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "subnet {s:?}: prefix length {prefix} is outside 8..=30 (a bridge needs room for itself and at least one container); {example}"
            ));
        }
        let candidate = Subnet {
            network: addr,
            prefix,
        };
        let network = Ipv4Addr::from(u32::from(addr) & candidate.mask());
        if network != addr {
            return Err(format!(
                "subnet {s:?} has host bits set; write \"{network}/{prefix}\""
            ));
        }
        Ok(candidate)
    }
}

/// `[host.network]`: how berthd configures the host's own network interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostNetwork {
    /// `mode` with its addressing keys.
    pub addressing: HostAddressing,
    /// `interface`: the NIC (default: the first Ethernet interface).
    pub interface: Option<String>,
    /// `dns`: the resolvers for /etc/resolv.conf (static), or instead of the lease's (DHCP).
    pub dns: Option<Vec<Ipv4Addr>>,
    /// `mtu`: the NIC's MTU (DHCP: instead of the lease's option 26).
    pub mtu: Option<u32>,
}

/// `[host.network] mode` and the keys that go with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostAddressing {
    /// `mode = "dhcp"` (the default): berthd's DHCPv4 client.
    #[default]
    Dhcp,
    /// `mode = "static"`: `address` (with prefix) and an optional `gateway`.
    Static {
        /// The host's address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
        /// The default route's gateway.
        gateway: Option<Ipv4Addr>,
    },
    /// `mode = "off"`: berthd leaves the NIC alone (something else configured it).
    Off,
}

impl HostAddressing {
    /// The manifest spellings of `mode`.
    pub const NAMES: [&'static str; 3] = ["dhcp", "static", "off"];

    /// Its `mode` spelling.
    pub fn mode(&self) -> &'static str {
        match self {
            HostAddressing::Dhcp => "dhcp",
            HostAddressing::Static { .. } => "static",
            HostAddressing::Off => "off",
        }
    }
}

/// A host address in CIDR form (`192.168.1.10/24`): the address and prefix length. It must be
/// a host address of its network (not the network or broadcast address).
pub fn host_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let example = "write the address with its prefix length, e.g. \"192.168.1.10/24\"";
    let Some((addr, prefix)) = s.split_once('/') else {
        return Err(format!("address {s:?} has no prefix length; {example}"));
    };
    let ip: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("address {s:?}: {addr:?} is not an IPv4 address; {example}"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| {
            format!(
                "address {s:?}: prefix length {prefix:?} is not a number from 1 to 32; {example}"
            )
        })?;
    if prefix <= 30 {
        let net = Subnet {
            network: Ipv4Addr::from(u32::from(ip) & Subnet::mask_of(prefix)),
            prefix,
        };
        if ip == net.network || ip == net.broadcast() {
            let which = if ip == net.network {
                "network"
            } else {
                "broadcast"
            };
            return Err(format!(
                "address {s:?} is the {which} address of {net}, not a host address; pick one from {} to {}",
                Ipv4Addr::from(u32::from(net.network) + 1),
                Ipv4Addr::from(u32::from(net.broadcast()) - 1)
            ));
        }
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!(
            "address {s:?} cannot be a host's address (unspecified, broadcast, multicast or loopback); {example}"
        ));
    }
    Ok((ip, prefix))
}

/// Whether `gateway` is on the network of `address`/`prefix`.
pub fn on_link(address: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> bool {
    let mask = Subnet::mask_of(prefix);
    u32::from(address) & mask == u32::from(gateway) & mask
}

/// A container's `network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Its own network namespace with `eth0` on the bridge `berth0` (the default).
    #[default]
    Bridge,
    /// The host's network namespace (no isolation).
    Host,
    /// Its own network namespace with only `lo`.
    None,
}

impl NetworkMode {
    /// The manifest spellings.
    pub const NAMES: [&'static str; 3] = ["bridge", "host", "none"];

    /// From its manifest spelling.
    pub fn parse(s: &str) -> Result<NetworkMode, String> {
        match s {
            "bridge" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            other => Err(format!(
                "network {other:?} is not known; write \"bridge\" (own address on berth0, the default), \"host\" (share the host's network) or \"none\" (loopback only)"
            )),
        }
    }

    /// Its manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` / `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The IP protocol number (6, 17).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// One `ports` entry: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// The host address it is published on; `None`: every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl PortMapping {
    /// Whether both claim the same host port (same protocol and port, overlapping addresses).
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}:{}", self.host_port, self.container_port)?;
        if self.protocol == Protocol::Udp {
            write!(f, "/udp")?;
        }
        Ok(())
    }
}

fn port(s: &str, which: &str, whole: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err(format!("port mapping {whole:?}: {which} port 0 is not a port; use 1..65535")),
        Ok(p) => Ok(p),
        Err(_) => Err(format!(
            "port mapping {whole:?}: {which} port {s:?} is not a number in 1..65535; write \"HOST:CONTAINER\" such as \"8080:80\""
        )),
    }
}

impl FromStr for PortMapping {
    type Err = String;

    fn from_str(s: &str) -> Result<PortMapping, String> {
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Protocol::Tcp),
            Some((spec, "udp")) => (spec, Protocol::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "port mapping {s:?}: protocol {other:?} is not known; write \"/tcp\" (the default) or \"/udp\""
                ))
            }
            None => (s, Protocol::Tcp),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host_ip, host, container) = match parts.as_slice() {
            [host, container] => (None, *host, *container),
            [ip, host, container] => {
                let ip: Ipv4Addr = ip.parse().map_err(|_| {
                    format!("port mapping {s:?}: {ip:?} is not an IPv4 address; write \"127.0.0.1:9000:9000\" to publish on one host address")
                })?;
                (Some(ip).filter(|ip| !ip.is_unspecified()), *host, *container)
            }
            _ => {
                return Err(format!(
                    "port mapping {s:?} is not \"HOST:CONTAINER\", \"IP:HOST:CONTAINER\" or either with \"/udp\"; e.g. \"8080:80\", \"127.0.0.1:9000:9000\", \"5353:53/udp\""
                ))
            }
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host, "host", s)?,
            container_port: port(container, "container", s)?,
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_compute() {
        let s: Subnet = "10.88.0.0/24".parse().unwrap();
        assert_eq!(s, DEFAULT_SUBNET);
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 88, 0, 255));
        assert!(s.contains(Ipv4Addr::new(10, 88, 0, 77)));
        assert!(!s.contains(Ipv4Addr::new(10, 88, 1, 1)));
        assert_eq!(
            s.container_addresses().next(),
            Some(Ipv4Addr::new(10, 88, 0, 2))
        );
        assert_eq!(s.container_addresses().count(), 253);
        assert!(!s.usable_for_container(Ipv4Addr::new(10, 88, 0, 1)));
        assert!(!s.usable_for_container(Ipv4Addr::new(10, 88, 0, 255)));
        assert!(s.usable_for_container(Ipv4Addr::new(10, 88, 0, 254)));
        let wide: Subnet = "172.20.0.0/16".parse().unwrap();
        assert_eq!(wide.broadcast(), Ipv4Addr::new(172, 20, 255, 255));
    }

    #[test]
    fn bad_subnets_say_what_to_write() {
        let e = "10.88.0.5/24".parse::<Subnet>().unwrap_err();
        assert!(e.contains("write \"10.88.0.0/24\""), "{e}");
        let e = "10.88.0.0".parse::<Subnet>().unwrap_err();
        assert!(e.contains("no prefix length"), "{e}");
        let e = "10.88.0.0/31".parse::<Subnet>().unwrap_err();
        assert!(e.contains("outside 8..=30"), "{e}");
        let e = "10.88.0/24".parse::<Subnet>().unwrap_err();
        assert!(e.contains("not an IPv4 address"), "{e}");
    }

    #[test]
    fn port_mappings_parse() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        let p: PortMapping = "5353:53/udp".parse().unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (5353, 53, Protocol::Udp)
        );
        let p: PortMapping = "127.0.0.1:9000:9000".parse().unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.to_string(), "127.0.0.1:9000:9000");
        let p: PortMapping = "0.0.0.0:53:53/udp".parse().unwrap();
        assert_eq!(p.host_ip, None);
        assert_eq!(p.to_string(), "53:53/udp");
    }

    #[test]
    fn bad_port_mappings_say_what_to_write() {
        for (text, expect) in [
            ("80", "is not \"HOST:CONTAINER\""),
            ("8080:80/sctp", "protocol \"sctp\""),
            ("70000:80", "host port \"70000\""),
            ("8080:0", "container port 0"),
            ("localhost:80:80", "not an IPv4 address"),
        ] {
            let e = text.parse::<PortMapping>().unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }

    #[test]
    fn conflicts_need_same_protocol_port_and_address() {
        let p = |s: &str| s.parse::<PortMapping>().unwrap();
        assert!(p("8080:80").conflicts_with(&p("8080:81")));
        assert!(p("8080:80").conflicts_with(&p("127.0.0.1:8080:80")));
        assert!(!p("127.0.0.2:8080:80").conflicts_with(&p("127.0.0.1:8080:80")));
        assert!(!p("53:53/udp").conflicts_with(&p("53:53")));
        assert!(!p("8080:80").conflicts_with(&p("8081:80")));
    }

    #[test]
    fn network_modes() {
        assert_eq!(NetworkMode::parse("host"), Ok(NetworkMode::Host));
        assert_eq!(
            NetworkMode::parse("none").map(NetworkMode::as_str),
            Ok("none")
        );
        assert!(NetworkMode::parse("nat")
            .unwrap_err()
            .contains("\"bridge\""));
        assert_eq!(NetworkMode::default(), NetworkMode::Bridge);
    }
}

#[cfg(test)]
mod manifest_tests {
    use std::path::Path;

    use crate::manifest::{Manifest, NetworkMode};

    const HEAD: &str =
        "version = 1\n[images]\nbusybox = { source = \"oci-layout:images/busybox\" }\n";

    fn parse(body: &str) -> Result<Manifest, String> {
        Manifest::parse(&format!("{HEAD}{body}"), Path::new("m.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn network_keys_are_read() {
        let m = parse(
            "[network]\nsubnet = \"172.30.0.0/16\"\n[containers.web]\nimage = \"busybox\"\nip = \"172.30.5.5\"\nports = [\"8080:80\", \"5353:53/udp\"]\n[containers.h]\nimage = \"busybox\"\nnetwork = \"host\"\n",
        )
        .unwrap();
        assert_eq!(m.network.subnet.to_string(), "172.30.0.0/16");
        assert_eq!(
            m.containers["web"].ip.map(|i| i.to_string()).as_deref(),
            Some("172.30.5.5")
        );
        assert_eq!(m.containers["web"].ports.len(), 2);
        assert_eq!(m.containers["h"].network, NetworkMode::Host);
        assert_eq!(m.containers["web"].network, NetworkMode::Bridge);
    }

    #[test]
    fn a_port_conflict_names_both_containers_and_the_first_position() {
        let e = parse(
            "[containers.a]\nimage = \"busybox\"\nports = [\"8080:80\"]\n[containers.b]\nimage = \"busybox\"\nports = [\"127.0.0.1:8080:81\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "m.toml:9:10: container \"b\": port \"127.0.0.1:8080:81\" publishes host port 8080/tcp already published by container \"a\" as \"8080:80\" (line 6, column 10); choose another host port"
        );
        // UDP and TCP on the same number do not clash.
        parse("[containers.a]\nimage = \"busybox\"\nports = [\"53:53\", \"53:53/udp\"]\n").unwrap();
    }

    #[test]
    fn bad_network_values_are_located() {
        let e = parse("[containers.a]\nimage = \"busybox\"\nip = \"10.99.0.5\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "m.toml:6:6: container \"a\": ip 10.99.0.5 is outside the subnet 10.88.0.0/24"
            ),
            "{e}"
        );
        let e = parse("[containers.a]\nimage = \"busybox\"\nip = \"10.88.0.1\"\n").unwrap_err();
        assert!(e.contains("bridge (10.88.0.1)"), "{e}");
        let e =
            parse("[containers.a]\nimage = \"busybox\"\nnetwork = \"host\"\nports = [\"80:80\"]\n")
                .unwrap_err();
        assert!(
            e.contains("`ports` needs the bridge network, but network = \"host\""),
            "{e}"
        );
        let e = parse("[containers.a]\nimage = \"busybox\"\nip = \"10.88.0.9\"\n[containers.b]\nimage = \"busybox\"\nip = \"10.88.0.9\"\n").unwrap_err();
        assert!(e.contains("already pinned by container \"a\""), "{e}");
        let e = parse("[network]\nsubnet = \"10.88.0.1/24\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "m.toml:5:10: subnet \"10.88.0.1/24\" has host bits set; write \"10.88.0.0/24\""
            ),
            "{e}"
        );
        let e = parse("[containers.a]\nimage = \"busybox\"\nnetwork = \"nat\"\n").unwrap_err();
        assert!(e.contains("network \"nat\" is not known"), "{e}");
    }
}
