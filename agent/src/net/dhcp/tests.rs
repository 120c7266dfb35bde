//! The DHCP state machine driven by hand: no socket, no clock.

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn reply(kind: ReplyKind, xid: u32) -> Reply {
    Reply {
        kind,
        xid,
        yiaddr: ADDR,
        server: Some(SERVER),
        mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
        routers: vec![SERVER],
        dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
        domain: Some("example.test".into()),
        mtu: None,
        lease_secs: Some(100),
        renew_secs: None,
        rebind_secs: None,
    }
}

fn sent(actions: &[Action]) -> Vec<(Outgoing, Destination)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { message, to } => Some((message.clone(), *to)),
            _ => None,
        })
        .collect()
}

/// The one message `actions` sends.
fn one(actions: &[Action]) -> (Outgoing, Destination) {
    let mut all = sent(actions);
    assert_eq!(all.len(), 1, "{actions:?}");
    all.remove(0)
}

/// A machine bound at t=10 s to a 100 s lease (T1 = 50 s, T2 = 87.5 s).
fn bound() -> (Machine, Lease) {
    let mut m = Machine::new(7);
    let discover = m.start(s(0));
    let xid = sent(&discover)[0].0.xid;
    m.on_reply(s(1), &reply(ReplyKind::Offer, xid));
    let actions = m.on_reply(s(10), &reply(ReplyKind::Ack, xid));
    let [Action::Configure(lease)] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    (m, lease.clone())
}

#[test]
fn discover_offer_request_ack_configures_the_lease() {
    let mut m = Machine::new(7);
    let actions = m.start(s(0));
    let (discover, to) = one(&actions);
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(discover.kind, RequestKind::Discover);
    assert_eq!(discover.ciaddr, Ipv4Addr::UNSPECIFIED);
    let xid = discover.xid;

    let actions = m.on_reply(s(1), &reply(ReplyKind::Offer, xid));
    let (request, to) = one(&actions);
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(request.kind, RequestKind::Request);
    assert_eq!(request.xid, xid);
    assert_eq!(request.requested, Some(ADDR));
    assert_eq!(request.server, Some(SERVER));

    let actions = m.on_reply(s(2), &reply(ReplyKind::Ack, xid));
    assert_eq!(
        actions,
        [Action::Configure(Lease {
            address: ADDR,
            prefix: 24,
            router: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: Some("example.test".into()),
            mtu: None,
            server: SERVER,
            lease_time: s(100),
            renew: s(50),
            rebind: Duration::from_millis(87_500),
        })]
    );
    assert_eq!(m.deadline(), Some(s(52)), "T1 after the ACK");
}

#[test]
fn offer_selection_skips_other_transactions_and_unusable_offers() {
    let mut m = Machine::new(1);
    let xid = sent(&m.start(s(0)))[0].0.xid;
    assert!(m
        .on_reply(s(1), &reply(ReplyKind::Offer, xid ^ 1))
        .is_empty());
    let mut no_address = reply(ReplyKind::Offer, xid);
    no_address.yiaddr = Ipv4Addr::UNSPECIFIED;
    assert!(m.on_reply(s(1), &no_address).is_empty());
    let mut no_server = reply(ReplyKind::Offer, xid);
    no_server.server = None;
    assert!(m.on_reply(s(1), &no_server).is_empty());
    // An ACK while selecting is not an answer to anything sent.
    assert!(m.on_reply(s(1), &reply(ReplyKind::Ack, xid)).is_empty());
    // The first usable offer wins; a second one is ignored.
    let mut first = reply(ReplyKind::Offer, xid);
    first.yiaddr = Ipv4Addr::new(10, 0, 2, 20);
    let actions = m.on_reply(s(2), &first);
    assert_eq!(sent(&actions)[0].0.requested, Some(first.yiaddr));
    assert!(m.on_reply(s(2), &reply(ReplyKind::Offer, xid)).is_empty());
    // An ACK from another server than the chosen one is not ours.
    let mut stranger = reply(ReplyKind::Ack, xid);
    stranger.server = Some(Ipv4Addr::new(10, 0, 2, 99));
    assert!(m.on_reply(s(3), &stranger).is_empty());
}

#[test]
fn discover_is_retransmitted_with_backoff() {
    let mut m = Machine::new(3);
    let xid = sent(&m.start(s(0)))[0].0.xid;
    assert_eq!(m.deadline(), Some(s(2)));
    assert!(m.on_timer(s(1)).is_empty(), "not due yet");
    let again = sent(&m.on_timer(s(2)));
    assert_eq!(again[0].0.kind, RequestKind::Discover);
    assert_eq!(again[0].0.xid, xid, "same transaction");
    assert_eq!(again[0].0.secs, 2);
    assert_eq!(m.deadline(), Some(s(6)));
    m.on_timer(s(6));
    assert_eq!(m.deadline(), Some(s(14)));
}

#[test]
fn nak_while_requesting_starts_over() {
    let mut m = Machine::new(5);
    let xid = sent(&m.start(s(0)))[0].0.xid;
    m.on_reply(s(1), &reply(ReplyKind::Offer, xid));
    let actions = m.on_reply(s(2), &reply(ReplyKind::Nak, xid));
    let (discover, to) = one(&actions);
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(discover.kind, RequestKind::Discover);
    assert_ne!(discover.xid, xid, "a new transaction");
    assert!(matches!(m.state(), State::Selecting { .. }));
}

#[test]
fn unanswered_requests_start_over() {
    let mut m = Machine::new(5);
    let xid = sent(&m.start(s(0)))[0].0.xid;
    m.on_reply(s(1), &reply(ReplyKind::Offer, xid));
    let mut now = s(1);
    for _ in 1..REQUEST_TRIES {
        now = m.deadline().unwrap();
        let actions = m.on_timer(now);
        assert_eq!(sent(&actions)[0].0.kind, RequestKind::Request);
    }
    now = m.deadline().unwrap().max(now);
    let actions = m.on_timer(now);
    assert_eq!(sent(&actions)[0].0.kind, RequestKind::Discover);
}

#[test]
fn renewal_at_t1_is_unicast_to_the_server_and_extends_the_lease() {
    let (mut m, lease) = bound();
    assert_eq!(m.deadline(), Some(s(60)));
    assert!(m.on_timer(s(59)).is_empty());
    let actions = m.on_timer(s(60));
    let (renew, Destination::Unicast(to)) = one(&actions) else {
        panic!("{actions:?}");
    };
    assert_eq!(to, SERVER);
    assert_eq!(renew.kind, RequestKind::Request);
    assert_eq!(renew.ciaddr, ADDR);
    assert_eq!((renew.requested, renew.server), (None, None));
    assert!(matches!(m.state(), State::Renewing { .. }));
    // No answer: retransmitted halfway to T2 (97.5 s).
    let retry = m.deadline().unwrap();
    assert!(
        retry > s(60) && retry < Duration::from_millis(97_500),
        "{retry:?}"
    );
    let again = sent(&m.on_timer(retry));
    assert_eq!(again[0].0.xid, renew.xid);
    let mut ack = reply(ReplyKind::Ack, renew.xid);
    ack.lease_secs = Some(200);
    let actions = m.on_reply(retry, &ack);
    let [Action::Renewed(renewed)] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(renewed.address, lease.address);
    assert_eq!(renewed.lease_time, s(200));
    // The new lease counts from the first renewal REQUEST (60 s): T1 at 160 s.
    assert_eq!(m.deadline(), Some(s(160)));
}

#[test]
fn rebinding_at_t2_broadcasts_and_any_server_may_answer() {
    let (mut m, _) = bound();
    m.on_timer(s(60));
    // Keep missing answers until T2 (97.5 s).
    let mut now = s(60);
    while matches!(m.state(), State::Renewing { .. }) {
        now = m.deadline().unwrap();
        m.on_timer(now);
    }
    assert_eq!(now, Duration::from_millis(97_500));
    let State::Rebinding { .. } = m.state() else {
        panic!("{:?}", m.state());
    };
    let actions = m.on_timer(now);
    assert!(actions.is_empty(), "the rebinding REQUEST went out already");
    let xid = m.xid;
    let mut other = reply(ReplyKind::Ack, xid);
    other.server = Some(Ipv4Addr::new(10, 0, 2, 4));
    let actions = m.on_reply(now, &other);
    let [Action::Renewed(lease)] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(
        lease.server,
        Ipv4Addr::new(10, 0, 2, 4),
        "renewals go there now"
    );
}

#[test]
fn the_rebinding_request_is_broadcast_with_ciaddr() {
    let (mut m, _) = bound();
    let actions = m.on_timer(s(60));
    assert!(matches!(sent(&actions)[0].1, Destination::Unicast(_)));
    let mut last = Vec::new();
    while !matches!(m.state(), State::Rebinding { .. }) {
        last = m.on_timer(m.deadline().unwrap());
    }
    let (rebind, to) = one(&last);
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(rebind.ciaddr, ADDR);
}

#[test]
fn expiry_deconfigures_and_rediscovers() {
    let (mut m, lease) = bound();
    let mut actions = Vec::new();
    let mut now = s(10);
    while !actions.iter().any(|a| matches!(a, Action::Deconfigure(_))) {
        now = m.deadline().unwrap();
        actions = m.on_timer(now);
    }
    assert_eq!(now, s(110), "the lease ends 100 s after it was granted");
    assert_eq!(actions[0], Action::Deconfigure(lease));
    assert_eq!(sent(&actions)[0].0.kind, RequestKind::Discover);
    assert!(m.lease().is_none());
}

#[test]
fn nak_while_renewing_deconfigures_and_rediscovers() {
    let (mut m, lease) = bound();
    let renew = sent(&m.on_timer(s(60)))[0].0.clone();
    let actions = m.on_reply(s(61), &reply(ReplyKind::Nak, renew.xid));
    assert_eq!(actions[0], Action::Deconfigure(lease));
    assert_eq!(sent(&actions)[0].0.kind, RequestKind::Discover);
}

#[test]
fn a_renewal_with_another_address_reconfigures() {
    let (mut m, lease) = bound();
    let renew = sent(&m.on_timer(s(60)))[0].0.clone();
    let mut moved = reply(ReplyKind::Ack, renew.xid);
    moved.yiaddr = Ipv4Addr::new(10, 0, 2, 16);
    let actions = m.on_reply(s(61), &moved);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0], Action::Deconfigure(lease));
    assert!(matches!(&actions[1], Action::Configure(l) if l.address == moved.yiaddr));
}

#[test]
fn lease_times_from_options_and_defaults() {
    let mut ack = reply(ReplyKind::Ack, 1);
    ack.renew_secs = Some(30);
    ack.rebind_secs = Some(60);
    ack.mtu = Some(1400);
    ack.mask = Some(Ipv4Addr::new(255, 255, 240, 0));
    let lease = lease_of(&ack, SERVER);
    assert_eq!((lease.renew, lease.rebind), (s(30), s(60)));
    assert_eq!((lease.prefix, lease.mtu), (20, Some(1400)));
    // Nonsense T1/T2 (past the lease) fall back to the defaults; no mask means /24.
    ack.renew_secs = Some(500);
    ack.rebind_secs = Some(10);
    ack.mask = None;
    let lease = lease_of(&ack, SERVER);
    assert_eq!(lease.renew, s(50));
    assert_eq!(lease.rebind, Duration::from_millis(87_500));
    assert_eq!(lease.prefix, 24);
}

/// A server's answer built with dhcproto, as a server would send it.
fn server_packet(kind: MessageType, xid: u32, chaddr: [u8; 6]) -> Vec<u8> {
    let mut msg = v4::Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        ADDR,
        SERVER,
        Ipv4Addr::UNSPECIFIED,
        &chaddr,
    );
    msg.set_opcode(v4::Opcode::BootReply);
    let o = msg.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::Router(vec![SERVER, Ipv4Addr::new(10, 0, 2, 1)]));
    o.insert(DhcpOption::DomainNameServer(vec![
        Ipv4Addr::new(10, 0, 2, 3),
        Ipv4Addr::new(1, 1, 1, 1),
    ]));
    o.insert(DhcpOption::DomainName("example.test".into()));
    o.insert(DhcpOption::InterfaceMtu(1450));
    o.insert(DhcpOption::AddressLeaseTime(86_400));
    o.insert(DhcpOption::Renewal(40_000));
    o.insert(DhcpOption::Rebinding(70_000));
    msg.to_vec().unwrap()
}

#[test]
fn requests_encode_to_what_a_server_reads() {
    let message = Outgoing {
        kind: RequestKind::Request,
        xid: 0xdead_beef,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        requested: Some(ADDR),
        server: Some(SERVER),
        secs: 3,
    };
    let bytes = encode(&message, MAC).unwrap();
    let msg = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
    assert_eq!(msg.opcode(), v4::Opcode::BootRequest);
    assert_eq!(msg.xid(), 0xdead_beef);
    assert_eq!(msg.secs(), 3);
    assert_eq!(&msg.chaddr()[..6], &MAC);
    assert!(
        msg.flags().broadcast(),
        "no address yet: answers must be broadcast"
    );
    let opts = msg.opts();
    assert_eq!(opts.msg_type(), Some(MessageType::Request));
    assert_eq!(
        opts.get(OptionCode::RequestedIpAddress),
        Some(&DhcpOption::RequestedIpAddress(ADDR))
    );
    assert_eq!(
        opts.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    let Some(DhcpOption::ParameterRequestList(wanted)) = opts.get(OptionCode::ParameterRequestList)
    else {
        panic!("{opts:?}");
    };
    assert!(wanted.contains(&OptionCode::DomainNameServer));
    assert!(wanted.contains(&OptionCode::InterfaceMtu));

    // Renewing: ciaddr set, unicast answers are fine.
    let renew = Outgoing {
        ciaddr: ADDR,
        requested: None,
        server: None,
        ..message
    };
    let msg = v4::Message::decode(&mut Decoder::new(&encode(&renew, MAC).unwrap())).unwrap();
    assert_eq!(msg.ciaddr(), ADDR);
    assert!(!msg.flags().broadcast());
    assert!(msg.opts().get(OptionCode::RequestedIpAddress).is_none());
}

#[test]
fn server_answers_decode_with_every_option() {
    let reply = decode(&server_packet(MessageType::Ack, 42, MAC), MAC).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(reply.xid, 42);
    assert_eq!(reply.yiaddr, ADDR);
    assert_eq!(reply.server, Some(SERVER));
    assert_eq!(reply.routers[0], SERVER);
    assert_eq!(reply.dns.len(), 2);
    assert_eq!(reply.domain.as_deref(), Some("example.test"));
    assert_eq!(reply.mtu, Some(1450));
    assert_eq!(
        (reply.lease_secs, reply.renew_secs, reply.rebind_secs),
        (Some(86_400), Some(40_000), Some(70_000))
    );
    let lease = lease_of(&reply, SERVER);
    assert_eq!((lease.prefix, lease.mtu), (24, Some(1450)));
    assert_eq!(
        decode(&server_packet(MessageType::Offer, 1, MAC), MAC).map(|r| r.kind),
        Some(ReplyKind::Offer)
    );
    assert_eq!(
        decode(&server_packet(MessageType::Nak, 1, MAC), MAC).map(|r| r.kind),
        Some(ReplyKind::Nak)
    );
}

#[test]
fn answers_for_others_and_garbage_are_ignored() {
    let other = [0x52, 0x54, 0, 0, 0, 1];
    assert!(decode(&server_packet(MessageType::Ack, 1, other), MAC).is_none());
    assert!(decode(b"not dhcp", MAC).is_none());
    // Our own broadcast REQUEST echoes back on some links: a BOOTREQUEST is no answer.
    let own = encode(
        &Outgoing {
            kind: RequestKind::Discover,
            xid: 1,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
            server: None,
            secs: 0,
        },
        MAC,
    )
    .unwrap();
    assert!(decode(&own, MAC).is_none());
    assert!(decode(&server_packet(MessageType::Inform, 1, MAC), MAC).is_none());
}
