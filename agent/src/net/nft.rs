//! NAT for containers with nftables, spoken directly over netfilter netlink (no `nft` binary):
//! masquerade of the subnet's egress, DNAT of published ports (with hairpin), all in one table
//! `ip berth` that berth owns.
//!
//! The whole table is rebuilt in one atomic batch whenever the set of published ports changes
//! (create-if-missing, delete, create, chains, rules), so teardown is exact and a half-applied
//! ruleset cannot exist. [`Ruleset`] says what the table holds; [`encode_batch`] turns it into
//! netlink bytes; a [`Firewall`] applies it ([`NfTables`] for real, [`RecordingFirewall`] in
//! unit tests).

use std::net::Ipv4Addr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::manifest::{Protocol, Subnet};

/// Name of berth's table (family `ip`).
pub const TABLE: &str = "berth";

/// One published port, resolved to the container's address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    /// Container name (for messages).
    pub container: String,
    /// Host address it is published on; `None`: every local address.
    pub host_ip: Option<Ipv4Addr>,
    /// Port on the host.
    pub host_port: u16,
    /// The container's address.
    pub container_ip: Ipv4Addr,
    /// Port in the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// What berth's table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The container subnet (masqueraded on egress).
    pub subnet: Subnet,
    /// The bridge's name.
    pub bridge: String,
    /// Published ports.
    pub published: Vec<Published>,
}

/// Why the firewall could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The socket failed.
    #[error("nftables: {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the batch.
    #[error("nftables refused {what} (is nf_tables with NAT, masquerade and fib support in the kernel?)")]
    Refused {
        /// The message it refused.
        what: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// Applies berth's table.
pub trait Firewall {
    /// Replace the table with `rules`.
    fn apply(&mut self, rules: &Ruleset) -> Result<(), FirewallError>;
    /// Delete the table (nothing left behind).
    fn remove(&mut self) -> Result<(), FirewallError>;
    /// Whether the table exists.
    fn exists(&mut self) -> Result<bool, FirewallError>;
}

/// A fake [`Firewall`] that keeps the last ruleset applied.
#[derive(Debug, Default, Clone)]
pub struct RecordingFirewall {
    /// The table's content, `None` when removed.
    pub current: Option<Ruleset>,
    /// How many times it was applied or removed.
    pub changes: usize,
}

impl Firewall for RecordingFirewall {
    fn apply(&mut self, rules: &Ruleset) -> Result<(), FirewallError> {
        self.current = Some(rules.clone());
        self.changes += 1;
        Ok(())
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        self.current = None;
        self.changes += 1;
        Ok(())
    }

    fn exists(&mut self) -> Result<bool, FirewallError> {
        Ok(self.current.is_some())
    }
}

// Constants from linux/netfilter/nf_tables.h and friends.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NFT_REG_1: u32 = 1;
const IPS_DST_NAT: u32 = 1 << 5;
const RTN_LOCAL: u32 = 2;
const IFNAMSIZ: usize = 16;

/// Hooks.
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;

/// A netlink attribute tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attr {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

impl Attr {
    fn str(kind: u16, s: &str) -> Attr {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        Attr::Bytes(kind, v)
    }

    fn be32(kind: u16, n: u32) -> Attr {
        Attr::Bytes(kind, n.to_be_bytes().to_vec())
    }

    fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let kind = match self {
            Attr::Bytes(kind, data) => {
                out.extend_from_slice(data);
                *kind
            }
            Attr::Nested(kind, children) => {
                for c in children {
                    c.emit(out);
                }
                *kind | NLA_F_NESTED
            }
        };
        let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
        out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        out[start + 2..start + 4].copy_from_slice(&kind.to_ne_bytes());
        while out.len() & 3 != 0 {
            out.push(0);
        }
    }
}

/// One expression: `name` and its data attributes.
fn expr(name: &str, data: Vec<Attr>) -> Attr {
    let mut attrs = vec![Attr::str(1, name)];
    if !data.is_empty() {
        attrs.push(Attr::Nested(2, data));
    }
    Attr::Nested(1, attrs)
}

fn data_value(kind: u16, bytes: Vec<u8>) -> Attr {
    Attr::Nested(kind, vec![Attr::Bytes(1, bytes)])
}

fn payload(base: u32, offset: u32, len: u32) -> Attr {
    expr(
        "payload",
        vec![
            Attr::be32(1, NFT_REG_1),
            Attr::be32(2, base),
            Attr::be32(3, offset),
            Attr::be32(4, len),
        ],
    )
}

fn cmp(op: u32, bytes: Vec<u8>) -> Attr {
    expr(
        "cmp",
        vec![
            Attr::be32(1, NFT_REG_1),
            Attr::be32(2, op),
            data_value(3, bytes),
        ],
    )
}

const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;

fn meta(key: u32) -> Attr {
    expr("meta", vec![Attr::be32(1, NFT_REG_1), Attr::be32(2, key)])
}

const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_L4PROTO: u32 = 16;

fn bitwise(len: u32, mask: Vec<u8>) -> Attr {
    let xor = vec![0; mask.len()];
    expr(
        "bitwise",
        vec![
            Attr::be32(1, NFT_REG_1),
            Attr::be32(2, NFT_REG_1),
            Attr::be32(3, len),
            data_value(4, mask),
            data_value(5, xor),
        ],
    )
}

fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(IFNAMSIZ, 0);
    v
}

/// `ip saddr SUBNET`.
fn saddr_in(subnet: Subnet) -> Vec<Attr> {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(subnet.prefix))
        .unwrap_or(0);
    vec![
        payload(1, 12, 4),
        bitwise(4, mask.to_be_bytes().to_vec()),
        cmp(CMP_EQ, subnet.network.octets().to_vec()),
    ]
}

/// `fib daddr type local`.
fn daddr_is_local() -> Vec<Attr> {
    vec![
        expr(
            "fib",
            vec![
                Attr::be32(1, NFT_REG_1),
                Attr::be32(2, 3),      // NFT_FIB_RESULT_ADDRTYPE
                Attr::be32(3, 1 << 1), // NFTA_FIB_F_DADDR
            ],
        ),
        cmp(CMP_EQ, RTN_LOCAL.to_ne_bytes().to_vec()),
    ]
}

fn masquerade() -> Attr {
    expr("masq", Vec::new())
}

/// `[ip daddr HOST | fib daddr type local] l4proto P th dport N dnat to IP:PORT`.
fn dnat_rule(p: &Published) -> Vec<Attr> {
    let mut e = match p.host_ip {
        Some(ip) => vec![payload(1, 16, 4), cmp(CMP_EQ, ip.octets().to_vec())],
        None => daddr_is_local(),
    };
    e.push(meta(META_L4PROTO));
    e.push(cmp(CMP_EQ, vec![p.protocol.number()]));
    e.push(payload(2, 2, 2));
    e.push(cmp(CMP_EQ, p.host_port.to_be_bytes().to_vec()));
    e.push(expr(
        "immediate",
        vec![
            Attr::be32(1, NFT_REG_1),
            data_value(2, p.container_ip.octets().to_vec()),
        ],
    ));
    e.push(expr(
        "immediate",
        vec![
            Attr::be32(1, 2), // NFT_REG_2
            data_value(2, p.container_port.to_be_bytes().to_vec()),
        ],
    ));
    e.push(expr(
        "nat",
        vec![
            Attr::be32(1, 1), // NFT_NAT_DNAT
            Attr::be32(2, u32::from(NFPROTO_IPV4)),
            Attr::be32(3, NFT_REG_1),
            Attr::be32(5, 2),
        ],
    ));
    e
}

/// The chains of the table: (name, hook, priority) and their rules.
fn chains(rules: &Ruleset) -> Vec<(&'static str, u32, i32, Vec<Vec<Attr>>)> {
    let published: Vec<Vec<Attr>> = rules.published.iter().map(dnat_rule).collect();
    let bridge = ifname(&rules.bridge);
    let mut post = Vec::new();
    // Egress: the subnet leaving by any interface but the bridge takes the host's address.
    let mut egress = saddr_in(rules.subnet);
    egress.push(meta(META_OIFNAME));
    egress.push(cmp(CMP_NEQ, bridge.clone()));
    egress.push(masquerade());
    post.push(egress);
    // Hairpin: a container reaching a published port of the host, DNATed back onto the
    // bridge, must see the answer come from the host, not straight from its neighbour.
    post.push(vec![
        meta(META_IIFNAME),
        cmp(CMP_EQ, bridge.clone()),
        meta(META_OIFNAME),
        cmp(CMP_EQ, bridge.clone()),
        expr("ct", vec![Attr::be32(1, NFT_REG_1), Attr::be32(2, 2)]), // NFT_CT_STATUS
        bitwise(4, IPS_DST_NAT.to_ne_bytes().to_vec()),
        cmp(CMP_NEQ, vec![0; 4]),
        masquerade(),
    ]);
    // The host's own connections to a published port on 127.0.0.1 (route_localnet is on for
    // the bridge): give them a source the container can answer.
    post.push(vec![
        meta(META_OIFNAME),
        cmp(CMP_EQ, bridge),
        payload(1, 12, 1),
        cmp(CMP_EQ, vec![127]),
        masquerade(),
    ]);
    vec![
        ("prerouting", NF_INET_PRE_ROUTING, -100, published.clone()),
        ("output", NF_INET_LOCAL_OUT, -100, published),
        ("postrouting", NF_INET_POST_ROUTING, 100, post),
    ]
}

/// One netfilter message: header, nfgenmsg, attributes.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[Attr],
) {
    let start = out.len();
    out.extend_from_slice(&[0; 16]);
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    for a in attrs {
        a.emit(out);
    }
    let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    out[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
    out[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    out[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
}

fn nft_type(cmd: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | cmd
}

/// The batch that makes the table hold exactly `rules` (`None`: that deletes the table).
/// Returns the bytes and, per sequence number from `first_seq`, what the message does.
pub fn encode_batch(rules: Option<&Ruleset>, first_seq: u32) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::new();
    let mut what = Vec::new();
    let mut seq = first_seq;
    let table = [Attr::str(1, TABLE)];
    let ack = NLM_F_REQUEST | NLM_F_ACK;
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    what.push("batch begin".to_owned());
    let mut push =
        |out: &mut Vec<u8>, what: &mut Vec<String>, cmd, flags, attrs: &[Attr], text: String| {
            seq += 1;
            message(out, nft_type(cmd), flags, seq, NFPROTO_IPV4, 0, attrs);
            what.push(text);
        };
    // Create if missing, so the delete that follows always has a table to delete.
    push(
        &mut out,
        &mut what,
        NFT_MSG_NEWTABLE,
        ack | NLM_F_CREATE,
        &table,
        format!("create table ip {TABLE}"),
    );
    push(
        &mut out,
        &mut what,
        NFT_MSG_DELTABLE,
        ack,
        &table,
        format!("delete table ip {TABLE}"),
    );
    if let Some(rules) = rules {
        push(
            &mut out,
            &mut what,
            NFT_MSG_NEWTABLE,
            ack | NLM_F_CREATE,
            &table,
            format!("create table ip {TABLE}"),
        );
        for (name, hook, priority, chain_rules) in chains(rules) {
            let chain = [
                Attr::str(1, TABLE),
                Attr::str(3, name),
                Attr::Nested(
                    4,
                    vec![
                        Attr::be32(1, hook),
                        Attr::Bytes(2, priority.to_be_bytes().to_vec()),
                    ],
                ),
                Attr::str(7, "nat"),
            ];
            push(
                &mut out,
                &mut what,
                NFT_MSG_NEWCHAIN,
                ack | NLM_F_CREATE,
                &chain,
                format!("create chain {name}"),
            );
            for (i, exprs) in chain_rules.into_iter().enumerate() {
                let rule = [
                    Attr::str(1, TABLE),
                    Attr::str(2, name),
                    Attr::Nested(4, exprs),
                ];
                push(
                    &mut out,
                    &mut what,
                    NFT_MSG_NEWRULE,
                    ack | NLM_F_CREATE | NLM_F_APPEND,
                    &rule,
                    format!("add rule {i} to chain {name}"),
                );
            }
        }
    }
    seq += 1;
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    what.push("batch end".to_owned());
    (out, what)
}

/// The real [`Firewall`]: a netfilter netlink socket in the caller's network namespace.
#[derive(Debug)]
pub struct NfTables {
    socket: Socket,
    seq: u32,
}

impl NfTables {
    /// Open the socket.
    pub fn new() -> Result<NfTables, FirewallError> {
        let io = |source| FirewallError::Io {
            what: "cannot open a netfilter netlink socket",
            source,
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        Ok(NfTables { socket, seq: 1 })
    }

    /// Send `bytes` and collect the kernel's acknowledgements for `count` messages starting
    /// at sequence `first`; the first error wins.
    fn exchange(&mut self, bytes: &[u8], first: u32, what: &[String]) -> Result<(), FirewallError> {
        let io = |source| FirewallError::Io {
            what: "cannot talk to nf_tables",
            source,
        };
        self.socket.send(bytes, 0).map_err(io)?;
        // Every message with NLM_F_ACK gets an answer; the batch markers do not.
        let expected = what.len().saturating_sub(2);
        let mut acked = 0;
        while acked < expected {
            let (data, _) = self.socket.recv_from_full().map_err(io)?;
            let mut offset = 0;
            while offset + 16 <= data.len() {
                let len = u32_at(&data, offset) as usize;
                let kind = u16::from_ne_bytes([data[offset + 4], data[offset + 5]]);
                let seq = u32_at(&data, offset + 8);
                if len < 16 {
                    break;
                }
                if kind == NLMSG_ERROR && offset + 20 <= data.len() {
                    let code = i32::from_ne_bytes([
                        data[offset + 16],
                        data[offset + 17],
                        data[offset + 18],
                        data[offset + 19],
                    ]);
                    acked += 1;
                    if code != 0 {
                        let index = seq.wrapping_sub(first) as usize;
                        let step = what
                            .get(index)
                            .cloned()
                            .unwrap_or_else(|| format!("message {seq}"));
                        // The batch is aborted: the kernel answers nothing more for it.
                        return Err(FirewallError::Refused {
                            what: step,
                            source: std::io::Error::from_raw_os_error(-code),
                        });
                    }
                }
                offset += (len + 3) & !3;
            }
        }
        Ok(())
    }

    fn batch(&mut self, rules: Option<&Ruleset>) -> Result<(), FirewallError> {
        let first = self.seq;
        let (bytes, what) = encode_batch(rules, first);
        self.seq = self
            .seq
            .wrapping_add(u32::try_from(what.len()).unwrap_or(0) + 1);
        self.exchange(&bytes, first, &what)
    }
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

impl Firewall for NfTables {
    fn apply(&mut self, rules: &Ruleset) -> Result<(), FirewallError> {
        self.batch(Some(rules))
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        self.batch(None)
    }

    fn exists(&mut self) -> Result<bool, FirewallError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        message(
            &mut out,
            nft_type(NFT_MSG_GETTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_IPV4,
            0,
            &[Attr::str(1, TABLE)],
        );
        let io = |source| FirewallError::Io {
            what: "cannot ask nf_tables for berth's table",
            source,
        };
        self.socket.send(&out, 0).map_err(io)?;
        let mut found = false;
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(io)?;
            let mut offset = 0;
            while offset + 16 <= data.len() {
                let len = u32_at(&data, offset) as usize;
                let kind = u16::from_ne_bytes([data[offset + 4], data[offset + 5]]);
                if len < 16 {
                    return Ok(found);
                }
                if kind == NLMSG_ERROR && offset + 20 <= data.len() {
                    let code = i32::from_ne_bytes([
                        data[offset + 16],
                        data[offset + 17],
                        data[offset + 18],
                        data[offset + 19],
                    ]);
                    return match code {
                        0 => Ok(found),
                        c if -c == libc::ENOENT => Ok(false),
                        c => Err(io(std::io::Error::from_raw_os_error(-c))),
                    };
                }
                if kind == nft_type(NFT_MSG_NEWTABLE) {
                    found = true;
                }
                offset += (len + 3) & !3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::DEFAULT_SUBNET;

    fn ruleset() -> Ruleset {
        Ruleset {
            subnet: DEFAULT_SUBNET,
            bridge: "berth0".into(),
            published: vec![Published {
                container: "web".into(),
                host_ip: None,
                host_port: 8080,
                container_ip: Ipv4Addr::new(10, 88, 0, 2),
                container_port: 80,
                protocol: Protocol::Tcp,
            }],
        }
    }

    #[test]
    fn attributes_are_padded_and_nested_flagged() {
        let mut out = Vec::new();
        Attr::str(1, "ab").emit(&mut out);
        assert_eq!(out, [7, 0, 1, 0, b'a', b'b', 0, 0]);
        let mut out = Vec::new();
        Attr::Nested(4, vec![Attr::be32(1, 1)]).emit(&mut out);
        assert_eq!(out, [12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn a_batch_replaces_the_table_atomically() {
        let (bytes, what) = encode_batch(Some(&ruleset()), 100);
        assert_eq!(
            what,
            [
                "batch begin",
                "create table ip berth",
                "delete table ip berth",
                "create table ip berth",
                "create chain prerouting",
                "add rule 0 to chain prerouting",
                "create chain output",
                "add rule 0 to chain output",
                "create chain postrouting",
                "add rule 0 to chain postrouting",
                "add rule 1 to chain postrouting",
                "add rule 2 to chain postrouting",
                "batch end",
            ]
        );
        // Walk the messages: lengths add up, sequence numbers count up from 100, the batch
        // markers carry the nftables subsystem id.
        let mut offset = 0;
        let mut seqs = Vec::new();
        let mut kinds = Vec::new();
        while offset < bytes.len() {
            let len = u32_at(&bytes, offset) as usize;
            kinds.push(u16::from_ne_bytes([bytes[offset + 4], bytes[offset + 5]]));
            seqs.push(u32_at(&bytes, offset + 8));
            offset += len;
        }
        assert_eq!(offset, bytes.len());
        assert_eq!(seqs, (100..113).collect::<Vec<_>>());
        assert_eq!(kinds.first(), Some(&NFNL_MSG_BATCH_BEGIN));
        assert_eq!(kinds.last(), Some(&NFNL_MSG_BATCH_END));
        assert_eq!(kinds[5], (10 << 8) | NFT_MSG_NEWRULE);
        assert_eq!(&bytes[18..20], &10u16.to_be_bytes());
    }

    #[test]
    fn the_dnat_rule_matches_local_addresses_port_and_protocol() {
        let rule = dnat_rule(&ruleset().published[0]);
        let names: Vec<String> = rule
            .iter()
            .map(|a| match a {
                Attr::Nested(1, inner) => match &inner[0] {
                    Attr::Bytes(1, name) => {
                        String::from_utf8_lossy(&name[..name.len() - 1]).into_owned()
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "fib",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "cmp",
                "immediate",
                "immediate",
                "nat"
            ]
        );
        assert!(rule.contains(&cmp(CMP_EQ, 8080u16.to_be_bytes().to_vec())));
        assert!(rule.contains(&cmp(CMP_EQ, vec![6])));
        let mut pinned = ruleset().published[0].clone();
        pinned.host_ip = Some(Ipv4Addr::LOCALHOST);
        pinned.protocol = Protocol::Udp;
        let rule = dnat_rule(&pinned);
        assert_eq!(rule[0], payload(1, 16, 4));
        assert_eq!(rule[1], cmp(CMP_EQ, vec![127, 0, 0, 1]));
        assert!(rule.contains(&cmp(CMP_EQ, vec![17])));
    }

    #[test]
    fn removal_is_create_then_delete() {
        let (_, what) = encode_batch(None, 1);
        assert_eq!(
            what,
            [
                "batch begin",
                "create table ip berth",
                "delete table ip berth",
                "batch end"
            ]
        );
    }
}
