//! The host's DHCPv4 client as a pure state machine: time and packets in, actions out.
//!
//! [`Machine`] knows nothing of sockets or clocks. The caller feeds it the time since the
//! client started ([`Machine::start`], [`Machine::on_timer`] when [`Machine::deadline`] has
//! passed, [`Machine::on_reply`] for each parsed answer) and carries out the [`Action`]s it
//! returns: send a message, configure a lease, note a renewal, deconfigure a lost lease. So
//! selection, renewal at T1, rebinding at T2 and expiry are unit-tested without root or
//! waiting. [`encode`] and [`decode`] translate between these types and wire packets
//! (`dhcproto`); `super::host` owns the socket and applies leases.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;

/// First retransmission interval of DISCOVER and REQUEST (doubled on each retry).
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest retransmission interval while acquiring.
const MAX_RETRY: Duration = Duration::from_secs(32);
/// REQUESTs sent for one OFFER before starting over with DISCOVER.
const REQUEST_TRIES: u32 = 4;
/// Shortest wait between retransmissions while renewing or rebinding.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(1);

/// Why a packet could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// `dhcproto` refused to encode a message.
    #[error("cannot encode a DHCP {what}")]
    Encode {
        /// The message kind.
        what: &'static str,
        /// Why.
        #[source]
        source: dhcproto::error::EncodeError,
    },
}

/// A lease: what the server gave and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// The prefix length (from the subnet mask; 24 when the server sent none).
    pub prefix: u8,
    /// The first router, for the default route.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// The domain name (option 15), for resolv.conf's `search`.
    pub domain: Option<String>,
    /// The interface MTU (option 26).
    pub mtu: Option<u16>,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
    /// Lease time.
    pub lease_time: Duration,
    /// Renewal time T1 (default half the lease).
    pub renew: Duration,
    /// Rebinding time T2 (default 7/8 of the lease).
    pub rebind: Duration,
}

/// An answer from a server, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// OFFER, ACK or NAK.
    pub kind: ReplyKind,
    /// The transaction it answers.
    pub xid: u32,
    /// The address offered or acknowledged (`yiaddr`).
    pub yiaddr: Ipv4Addr,
    /// The server identifier (option 54).
    pub server: Option<Ipv4Addr>,
    /// Subnet mask (option 1).
    pub mask: Option<Ipv4Addr>,
    /// Routers (option 3).
    pub routers: Vec<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Lease time in seconds (option 51).
    pub lease_secs: Option<u32>,
    /// T1 in seconds (option 58).
    pub renew_secs: Option<u32>,
    /// T2 in seconds (option 59).
    pub rebind_secs: Option<u32>,
}

/// The kinds of server answers the client acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// DHCPOFFER.
    Offer,
    /// DHCPACK.
    Ack,
    /// DHCPNAK.
    Nak,
}

/// A message for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// DISCOVER or REQUEST.
    pub kind: RequestKind,
    /// Transaction id.
    pub xid: u32,
    /// `ciaddr`: our address while renewing or rebinding, else 0.0.0.0.
    pub ciaddr: Ipv4Addr,
    /// Option 50, while selecting.
    pub requested: Option<Ipv4Addr>,
    /// Option 54, while selecting.
    pub server: Option<Ipv4Addr>,
    /// Seconds since the exchange began (`secs`).
    pub secs: u16,
}

/// DISCOVER or REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// DHCPDISCOVER.
    Discover,
    /// DHCPREQUEST.
    Request,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:67 (no address yet, or rebinding).
    Broadcast,
    /// The server that granted the lease (renewing).
    Unicast(Ipv4Addr),
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to `to`.
    Send {
        /// The message.
        message: Outgoing,
        /// Where to.
        to: Destination,
    },
    /// A new lease: configure the interface.
    Configure(Lease),
    /// The lease was extended (same address); refresh what changed.
    Renewed(Lease),
    /// The lease is gone (expired or refused): remove its address and route.
    Deconfigure(Lease),
}

/// Where the client is in RFC 2131's state diagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not started.
    Init,
    /// DISCOVER sent, waiting for offers.
    Selecting {
        /// When the exchange began.
        began: Duration,
        /// The next retransmission.
        retry: Duration,
        /// The current interval.
        interval: Duration,
    },
    /// REQUEST sent for an offer, waiting for ACK or NAK.
    Requesting {
        /// When the exchange began.
        began: Duration,
        /// The offer being requested.
        offer: Box<Reply>,
        /// The next retransmission.
        retry: Duration,
        /// REQUESTs sent.
        tries: u32,
    },
    /// Holding a lease.
    Bound {
        /// The lease.
        lease: Lease,
        /// When it was granted (the REQUEST's time).
        since: Duration,
    },
    /// T1 passed: REQUESTs go to the server.
    Renewing {
        /// The lease.
        lease: Lease,
        /// When it was granted.
        since: Duration,
        /// The next retransmission.
        retry: Duration,
        /// When this REQUEST exchange began.
        asked: Duration,
    },
    /// T2 passed: REQUESTs are broadcast to any server.
    Rebinding {
        /// The lease.
        lease: Lease,
        /// When it was granted.
        since: Duration,
        /// The next retransmission.
        retry: Duration,
        /// When this REQUEST exchange began.
        asked: Duration,
    },
}

/// The DHCP client state machine for one interface.
#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    xid: u32,
}

/// A lease from an ACK, its times relative to the lease's start.
fn lease_of(ack: &Reply, server: Ipv4Addr) -> Lease {
    let lease_secs = ack.lease_secs.unwrap_or(u32::MAX);
    let lease_time = Duration::from_secs(u64::from(lease_secs));
    let renew = ack
        .renew_secs
        .map(|s| Duration::from_secs(u64::from(s)))
        .filter(|t| *t < lease_time)
        .unwrap_or(lease_time / 2);
    let rebind = ack
        .rebind_secs
        .map(|s| Duration::from_secs(u64::from(s)))
        .filter(|t| *t < lease_time && *t >= renew)
        .unwrap_or(lease_time * 7 / 8)
        .max(renew);
    let prefix = ack
        .mask
        .map(|m| u32::from(m).leading_ones() as u8)
        .filter(|p| (1..=32).contains(p))
        .unwrap_or(24);
    Lease {
        address: ack.yiaddr,
        prefix,
        router: ack.routers.first().copied(),
        dns: ack.dns.clone(),
        domain: ack.domain.clone(),
        mtu: ack.mtu.filter(|m| *m >= 68),
        server: ack.server.unwrap_or(server),
        lease_time,
        renew,
        rebind,
    }
}

/// Halfway from `now` to `until`, but at least [`MIN_RENEW_RETRY`] away (and not past it).
fn halfway(now: Duration, until: Duration) -> Duration {
    let half = now + until.saturating_sub(now) / 2;
    half.max(now + MIN_RENEW_RETRY).min(until.max(now))
}

fn secs(now: Duration, began: Duration) -> u16 {
    u16::try_from(now.saturating_sub(began).as_secs()).unwrap_or(u16::MAX)
}

impl Machine {
    /// A client that has not started; `xid` seeds its transaction ids.
    pub fn new(xid: u32) -> Self {
        Machine {
            state: State::Init,
            xid,
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease, .. }
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// When [`Machine::on_timer`] must be called next.
    pub fn deadline(&self) -> Option<Duration> {
        match &self.state {
            State::Init => None,
            State::Selecting { retry, .. } | State::Requesting { retry, .. } => Some(*retry),
            State::Bound { lease, since } => Some(*since + lease.renew),
            State::Renewing {
                lease,
                since,
                retry,
                ..
            } => Some((*retry).min(*since + lease.rebind)),
            State::Rebinding {
                lease,
                since,
                retry,
                ..
            } => Some((*retry).min(*since + lease.lease_time)),
        }
    }

    fn next_xid(&mut self) -> u32 {
        self.xid = self.xid.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        self.xid
    }

    /// Begin (or begin again): broadcast a DISCOVER.
    pub fn start(&mut self, now: Duration) -> Vec<Action> {
        let xid = self.next_xid();
        self.state = State::Selecting {
            began: now,
            retry: now + FIRST_RETRY,
            interval: FIRST_RETRY,
        };
        vec![discover(xid, 0)]
    }

    /// Time has reached [`Machine::deadline`]: retransmit, renew, rebind or give the lease up.
    pub fn on_timer(&mut self, now: Duration) -> Vec<Action> {
        let Some(deadline) = self.deadline() else {
            return Vec::new();
        };
        if now < deadline {
            return Vec::new();
        }
        match self.state.clone() {
            State::Init => Vec::new(),
            State::Selecting {
                began, interval, ..
            } => {
                let interval = (interval * 2).min(MAX_RETRY);
                self.state = State::Selecting {
                    began,
                    retry: now + interval,
                    interval,
                };
                vec![discover(self.xid, secs(now, began))]
            }
            State::Requesting {
                began,
                offer,
                tries,
                ..
            } => {
                if tries >= REQUEST_TRIES {
                    return self.start(now);
                }
                let interval = (FIRST_RETRY * 2u32.pow(tries)).min(MAX_RETRY);
                let message = select_request(&offer, secs(now, began));
                self.state = State::Requesting {
                    began,
                    offer,
                    retry: now + interval,
                    tries: tries + 1,
                };
                vec![Action::Send {
                    message,
                    to: Destination::Broadcast,
                }]
            }
            State::Bound { lease, since } => self.renew(now, lease, since),
            State::Renewing {
                lease,
                since,
                asked,
                ..
            } => {
                if now >= since + lease.rebind {
                    self.rebind(now, lease, since)
                } else {
                    let retry = halfway(now, since + lease.rebind);
                    let to = Destination::Unicast(lease.server);
                    let message = renew_request(self.xid, &lease, secs(now, asked));
                    self.state = State::Renewing {
                        lease,
                        since,
                        retry,
                        asked,
                    };
                    vec![Action::Send { message, to }]
                }
            }
            State::Rebinding {
                lease,
                since,
                asked,
                ..
            } => {
                if now >= since + lease.lease_time {
                    let mut actions = vec![Action::Deconfigure(lease)];
                    actions.extend(self.start(now));
                    actions
                } else {
                    let retry = halfway(now, since + lease.lease_time);
                    let message = renew_request(self.xid, &lease, secs(now, asked));
                    self.state = State::Rebinding {
                        lease,
                        since,
                        retry,
                        asked,
                    };
                    vec![Action::Send {
                        message,
                        to: Destination::Broadcast,
                    }]
                }
            }
        }
    }

    fn renew(&mut self, now: Duration, lease: Lease, since: Duration) -> Vec<Action> {
        let xid = self.next_xid();
        let retry = halfway(now, since + lease.rebind);
        let to = Destination::Unicast(lease.server);
        let message = renew_request(xid, &lease, 0);
        self.state = State::Renewing {
            lease,
            since,
            retry,
            asked: now,
        };
        vec![Action::Send { message, to }]
    }

    fn rebind(&mut self, now: Duration, lease: Lease, since: Duration) -> Vec<Action> {
        let xid = self.next_xid();
        let retry = halfway(now, since + lease.lease_time);
        let message = renew_request(xid, &lease, 0);
        self.state = State::Rebinding {
            lease,
            since,
            retry,
            asked: now,
        };
        vec![Action::Send {
            message,
            to: Destination::Broadcast,
        }]
    }

    /// An answer arrived. Answers to other transactions, and kinds the state does not expect,
    /// are ignored.
    pub fn on_reply(&mut self, now: Duration, reply: &Reply) -> Vec<Action> {
        if reply.xid != self.xid {
            return Vec::new();
        }
        match (self.state.clone(), reply.kind) {
            (State::Selecting { began, .. }, ReplyKind::Offer) => {
                let usable = reply.yiaddr != Ipv4Addr::UNSPECIFIED
                    && !reply.yiaddr.is_broadcast()
                    && reply.server.is_some();
                if !usable {
                    return Vec::new();
                }
                let message = select_request(reply, secs(now, began));
                self.state = State::Requesting {
                    began,
                    offer: Box::new(reply.clone()),
                    retry: now + FIRST_RETRY,
                    tries: 1,
                };
                vec![Action::Send {
                    message,
                    to: Destination::Broadcast,
                }]
            }
            (State::Requesting { offer, .. }, ReplyKind::Ack) => {
                if reply.server.is_some() && reply.server != offer.server {
                    return Vec::new();
                }
                if reply.yiaddr == Ipv4Addr::UNSPECIFIED {
                    return Vec::new();
                }
                let lease = lease_of(reply, offer.server.unwrap_or(Ipv4Addr::UNSPECIFIED));
                self.state = State::Bound {
                    lease: lease.clone(),
                    since: now,
                };
                vec![Action::Configure(lease)]
            }
            (State::Requesting { .. }, ReplyKind::Nak) => self.start(now),
            (
                State::Renewing { lease, asked, .. } | State::Rebinding { lease, asked, .. },
                ReplyKind::Ack,
            ) => {
                let fresh = lease_of(reply, lease.server);
                if fresh.address != lease.address || fresh.prefix != lease.prefix {
                    self.state = State::Bound {
                        lease: fresh.clone(),
                        since: asked,
                    };
                    return vec![Action::Deconfigure(lease), Action::Configure(fresh)];
                }
                self.state = State::Bound {
                    lease: fresh.clone(),
                    since: asked,
                };
                vec![Action::Renewed(fresh)]
            }
            (State::Renewing { lease, .. } | State::Rebinding { lease, .. }, ReplyKind::Nak) => {
                let mut actions = vec![Action::Deconfigure(lease)];
                actions.extend(self.start(now));
                actions
            }
            _ => Vec::new(),
        }
    }
}

fn discover(xid: u32, secs: u16) -> Action {
    Action::Send {
        message: Outgoing {
            kind: RequestKind::Discover,
            xid,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
            server: None,
            secs,
        },
        to: Destination::Broadcast,
    }
}

/// The REQUEST that takes an offer (SELECTING): requested address and server identifier.
fn select_request(offer: &Reply, secs: u16) -> Outgoing {
    Outgoing {
        kind: RequestKind::Request,
        xid: offer.xid,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        requested: Some(offer.yiaddr),
        server: offer.server,
        secs,
    }
}

/// The REQUEST that extends a lease (RENEWING, REBINDING): `ciaddr` only.
fn renew_request(xid: u32, lease: &Lease, secs: u16) -> Outgoing {
    Outgoing {
        kind: RequestKind::Request,
        xid,
        ciaddr: lease.address,
        requested: None,
        server: None,
        secs,
    }
}

/// The options the client asks for.
const WANTED: [OptionCode; 6] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::AddressLeaseTime,
];

/// The wire bytes of `message` from the interface with hardware address `mac`. Messages ask
/// for broadcast answers while the client has no address, because the socket cannot receive
/// unicast to an address the interface does not have yet.
pub fn encode(message: &Outgoing, mac: [u8; 6]) -> Result<Vec<u8>, DhcpError> {
    let mut msg = v4::Message::new_with_id(
        message.xid,
        message.ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    msg.set_secs(message.secs);
    if message.ciaddr == Ipv4Addr::UNSPECIFIED {
        msg.set_flags(v4::Flags::default().set_broadcast());
    }
    let (kind, what) = match message.kind {
        RequestKind::Discover => (MessageType::Discover, "DISCOVER"),
        RequestKind::Request => (MessageType::Request, "REQUEST"),
    };
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    opts.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
    opts.insert(DhcpOption::MaxMessageSize(1500));
    if let Some(ip) = message.requested {
        opts.insert(DhcpOption::RequestedIpAddress(ip));
    }
    if let Some(server) = message.server {
        opts.insert(DhcpOption::ServerIdentifier(server));
    }
    msg.to_vec()
        .map_err(|source| DhcpError::Encode { what, source })
}

/// A server's answer to the interface with hardware address `mac`; `None` for anything else
/// (not a BOOTREPLY, for another client, not an OFFER/ACK/NAK, undecodable).
pub fn decode(bytes: &[u8], mac: [u8; 6]) -> Option<Reply> {
    let msg = v4::Message::decode(&mut Decoder::new(bytes)).ok()?;
    if msg.opcode() != v4::Opcode::BootReply || msg.chaddr().get(..6) != Some(&mac[..]) {
        return None;
    }
    let opts = msg.opts();
    let kind = match opts.msg_type()? {
        MessageType::Offer => ReplyKind::Offer,
        MessageType::Ack => ReplyKind::Ack,
        MessageType::Nak => ReplyKind::Nak,
        _ => return None,
    };
    let mut reply = Reply {
        kind,
        xid: msg.xid(),
        yiaddr: msg.yiaddr(),
        server: None,
        mask: None,
        routers: Vec::new(),
        dns: Vec::new(),
        domain: None,
        mtu: None,
        lease_secs: None,
        renew_secs: None,
        rebind_secs: None,
    };
    for (_, opt) in opts.iter() {
        match opt {
            DhcpOption::ServerIdentifier(ip) => reply.server = Some(*ip),
            DhcpOption::SubnetMask(m) => reply.mask = Some(*m),
            DhcpOption::Router(r) => reply.routers.clone_from(r),
            DhcpOption::DomainNameServer(d) => reply.dns.clone_from(d),
            DhcpOption::DomainName(d) => reply.domain = Some(d.clone()),
            DhcpOption::InterfaceMtu(m) => reply.mtu = Some(*m),
            DhcpOption::AddressLeaseTime(s) => reply.lease_secs = Some(*s),
            DhcpOption::Renewal(s) => reply.renew_secs = Some(*s),
            DhcpOption::Rebinding(s) => reply.rebind_secs = Some(*s),
            _ => {}
        }
    }
    Some(reply)
}

#[cfg(test)]
mod tests;
