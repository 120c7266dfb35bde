//! The real [`NetlinkClient`]: rtnetlink messages built with `netlink-packet-route`, sent on a
//! synchronous `netlink-sys` socket, and network namespaces bound to files like `ip netns`.
//!
//! A netlink socket talks to the namespace it was created in, so a client for another
//! namespace is a socket created by a short-lived thread that first `setns`es into it.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::netlink::{Link, NetlinkClient, NetlinkError};

/// A route netlink socket in one network namespace.
#[derive(Debug)]
pub struct RtNetlink {
    socket: Socket,
    seq: u32,
    /// `/proc/sys` as this namespace sees it: a client for another namespace writes sysctls
    /// from a thread inside it.
    netns: Option<std::path::PathBuf>,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> NetlinkError + '_ {
    move |e| NetlinkError::kernel(what, e)
}

impl RtNetlink {
    /// A client for the calling thread's network namespace.
    pub fn new() -> Result<RtNetlink, NetlinkError> {
        let what = "open a route netlink socket";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io(what))?;
        socket.bind_auto().map_err(io(what))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io(what))?;
        Ok(RtNetlink {
            socket,
            seq: 0,
            netns: None,
        })
    }

    /// A client for the namespace bound at `path`.
    pub fn in_netns(path: &Path) -> Result<RtNetlink, NetlinkError> {
        let path = path.to_path_buf();
        let what = format!("open a netlink socket in {}", path.display());
        let mut client = in_namespace(&path, RtNetlink::new).map_err(|e| match e {
            Entered::Setns(source) => NetlinkError::kernel(what.clone(), source),
            Entered::Ran(inner) => inner,
        })??;
        client.netns = Some(path);
        Ok(client)
    }

    /// Send one request and wait for its acknowledgement; returns the answers before it.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io(what))?;
        let mut answers = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(io(what))?;
            let mut offset = 0;
            while offset < data.len() {
                let bytes = &data[offset..];
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                        NetlinkError::Decode {
                            what: what.to_owned(),
                            detail: e.to_string(),
                        }
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode {
                        what: what.to_owned(),
                        detail: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(_) => Err(NetlinkError::kernel(what, e.to_io())),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    }

    /// The index of a link, `None` when there is none by that name.
    fn index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(
            &format!("look up interface {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })),
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn need(&mut self, name: &str) -> Result<u32, NetlinkError> {
        self.index(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))
    }

    fn set_link(
        &mut self,
        what: &str,
        name: &str,
        edit: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), NetlinkError> {
        let index = self.need(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        edit(&mut msg);
        self.request(what, RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }
}

/// Why running something inside a namespace failed.
enum Entered<T> {
    Setns(std::io::Error),
    Ran(T),
}

/// Run `f` on a thread that has joined the network namespace bound at `path`.
fn in_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Entered<NetlinkError>> {
    let file = File::open(path).map_err(Entered::Setns)?;
    let handle = std::thread::spawn(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        Ok(f())
    });
    match handle.join() {
        Ok(result) => result.map_err(Entered::Setns),
        Err(_) => Err(Entered::Ran(NetlinkError::Decode {
            what: format!("work in {}", path.display()),
            detail: "the worker thread panicked".into(),
        })),
    }
}

/// The default route via `gateway` out of link `index`, for adding or deleting.
fn default_route(index: u32, gateway: Ipv4Addr, scope: RouteScope) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Dhcp;
    msg.header.scope = scope;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}

impl NetlinkClient for RtNetlink {
    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answers = self.request(
            "list network interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut links: Vec<(u32, Link)> = answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .map(|link| {
                let mut name = String::new();
                let mut mac = None;
                let mut mtu = 0;
                let mut software = false;
                for attr in &link.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => name.clone_from(n),
                        LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                        LinkAttribute::Mtu(m) => mtu = *m,
                        LinkAttribute::LinkInfo(info) => {
                            software |= info.iter().any(|i| matches!(i, LinkInfo::Kind(_)));
                        }
                        _ => {}
                    }
                }
                let ethernet = link.header.link_layer_type == LinkLayerType::Ether && !software;
                (
                    link.header.index,
                    Link {
                        name,
                        mac,
                        mtu,
                        ethernet,
                    },
                )
            })
            .collect();
        links.sort_by_key(|(index, _)| *index);
        Ok(links.into_iter().map(|(_, l)| l).collect())
    }

    fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link(&format!("set the MTU of {name} to {mtu}"), name, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        })
    }

    fn delete_address(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let index = self.need(name)?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        self.request(
            &format!("delete address {ip}/{prefix} from {name}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        )
        .map(drop)
    }

    fn replace_default_route(&mut self, name: &str, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let index = self.need(name)?;
        self.request(
            &format!("set the default route via {gateway} dev {name}"),
            RouteNetlinkMessage::NewRoute(default_route(index, gateway, RouteScope::Universe)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    fn delete_default_route(&mut self, name: &str, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let index = self.need(name)?;
        let mut msg = default_route(index, gateway, RouteScope::NoWhere);
        msg.header.protocol = RouteProtocol::Unspec;
        self.request(
            &format!("delete the default route via {gateway} dev {name}"),
            RouteNetlinkMessage::DelRoute(msg),
            0,
        )
        .map(drop)
    }

    fn link_exists(&mut self, name: &str) -> Result<bool, NetlinkError> {
        Ok(self.index(name)?.is_some())
    }

    fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("add bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    fn add_veth(&mut self, name: &str, peer: &str, peer_netns: &Path) -> Result<(), NetlinkError> {
        let what = format!("add veth pair {name}/{peer}");
        let netns = File::open(peer_netns).map_err(io(&what))?;
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        let result = self.request(
            &what,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        );
        drop(netns);
        result.map(drop)
    }

    fn set_master(&mut self, name: &str, master: &str) -> Result<(), NetlinkError> {
        let master_index = self.need(master)?;
        self.set_link(&format!("attach {name} to {master}"), name, |m| {
            m.attributes.push(LinkAttribute::Controller(master_index));
        })
    }

    fn set_up(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.set_link(&format!("bring {name} up"), name, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    fn add_address(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let index = self.need(name)?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        msg.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                u32::from(ip) | host_bits,
            )));
        self.request(
            &format!("add address {ip}/{prefix} to {name}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(
            &format!("add default route via {gateway}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        let index = self.need(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            &format!("delete interface {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
        .map(drop)
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError> {
        let path = Path::new("/proc/sys").join(key);
        let what = format!("write {value} to {}", path.display());
        let value = value.to_owned();
        let write = move || std::fs::write(&path, value);
        match &self.netns {
            None => write().map_err(io(&what)),
            Some(ns) => match in_namespace(ns, write) {
                Ok(result) => result.map_err(io(&what)),
                Err(Entered::Setns(e)) => Err(NetlinkError::kernel(what, e)),
                Err(Entered::Ran(e)) => Err(e),
            },
        }
    }

    fn create_netns(&mut self, path: &Path) -> Result<(), NetlinkError> {
        let what = format!("create network namespace {}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(&what))?;
        }
        File::create(path).map_err(io(&what))?;
        let target = path.to_path_buf();
        // A fresh thread unshares (only itself) and binds its new namespace to the file.
        let handle = std::thread::spawn(move || -> std::io::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        });
        let bound = handle
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")));
        if let Err(e) = bound {
            let _ = std::fs::remove_file(path);
            return Err(NetlinkError::kernel(what, e));
        }
        Ok(())
    }

    fn delete_netns(&mut self, path: &Path) -> Result<(), NetlinkError> {
        let what = format!("remove network namespace {}", path.display());
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(NetlinkError::kernel(what, e.into())),
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NetlinkError::kernel(what, e))
            }
            _ => Ok(()),
        }
    }

    fn enter(&mut self, path: &Path) -> Result<Box<dyn NetlinkClient>, NetlinkError> {
        Ok(Box::new(RtNetlink::in_netns(path)?))
    }
}
