//! The conntrack lifecycle: TCP states from both directions, one writer per
//! flag, expiry, repair of a half-evicted pair, and TCP kept apart from UDP.
use mcs_common::{
    CT_F_FIN_FORWARD, CT_F_FIN_REPLY, CT_F_SEEN_REPLY, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN,
    DatapathConfig, NS_PER_SEC, Stat, program_names,
};
use mcs_tests::{
    datapath::{Datapath, NEXT, ServicePort, forward_key, next_tick},
    packet::{ACK, FIN, PacketSpec, RST, SYN, TCP, UDP, parse_and_verify},
};

use super::{BACKENDS, CLIENT, CLIENT_EP, VIP, syn, udp};

const FROM_POD: &str = program_names::FROM_POD;
const TO_POD: &str = program_names::TO_POD;

/// Opens a TCP flow from `CLIENT_EP` to VIP:80 and lets the backend answer;
/// returns the backend and the translated client endpoint.
fn established(dp: &mut Datapath) -> ((std::net::Ipv4Addr, u16), (std::net::Ipv4Addr, u16)) {
    let (_, out) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));
    let p = parse_and_verify(&out);
    let _ = dp.run(TO_POD, &PacketSpec::tcp(p.destination(), p.source(), SYN | ACK).build());
    (p.destination(), p.source())
}

#[test]
fn fin_both_ways_closes_the_flow_and_the_last_ack_still_goes_through() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let state = |dp: &mut Datapath| dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow").state;
    let (_, out) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));
    let p = parse_and_verify(&out);
    let (backend, translated) = (p.destination(), p.source());
    assert_eq!(state(&mut dp), CT_STATE_SYN);
    let _ = dp.run(TO_POD, &PacketSpec::tcp(backend, translated, SYN | ACK).build());
    assert_eq!(state(&mut dp), CT_STATE_ESTABLISHED);
    let _ = dp.run(FROM_POD, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), FIN | ACK).build());
    assert_eq!(state(&mut dp), CT_STATE_ESTABLISHED, "one FIN: half-closed");
    let _ = dp.run(TO_POD, &PacketSpec::tcp(backend, translated, FIN | ACK).build());
    assert_eq!(state(&mut dp), CT_STATE_CLOSING, "FIN both ways");
    let (verdict, out) = dp.run(FROM_POD, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build());
    assert_eq!((verdict, parse_and_verify(&out).destination()), (NEXT, backend), "the last ACK");
    assert_eq!(dp.stat(Stat::CtExpired), 0);
}

#[test]
fn an_rst_closes_the_flow() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let (_, out) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));
    let p = parse_and_verify(&out);
    let (verdict, out) = dp.run(TO_POD, &PacketSpec::tcp(p.destination(), p.source(), RST | ACK).build());
    assert_eq!((verdict, parse_and_verify(&out).source()), (NEXT, (VIP, 80)), "the RST reaches the client, translated");
    assert_eq!(dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow").state, CT_STATE_CLOSING);
}

#[test]
fn each_direction_writes_only_its_own_flags_so_crossing_fins_lose_nothing() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let (backend, translated) = established(&mut dp);
    // The backend's FIN, handled on another CPU, set its bit in the reply
    // entry after the forward entry last read it (the forward entry does not
    // know yet): exactly the moment a forward FIN crosses it.
    let flow = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow");
    let (reply_key, mut reply) = flow.reply.expect("reply entry");
    reply.own_flags |= CT_F_FIN_REPLY;
    dp.set_ct(reply_key, reply);
    assert_eq!(dp.ct(&forward_key(CLIENT_EP, (VIP, 80), TCP)).expect("forward").peer_flags & CT_F_FIN_REPLY, 0);

    let _ = dp.run(FROM_POD, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), FIN | ACK).build());

    let reply = dp.ct(&reply_key).expect("reply entry");
    assert_eq!(reply.own_flags, CT_F_SEEN_REPLY | CT_F_FIN_REPLY, "the forward packet never wrote the reply's flags");
    let forward = dp.ct(&forward_key(CLIENT_EP, (VIP, 80), TCP)).expect("forward");
    assert_eq!(forward.own_flags, CT_F_FIN_FORWARD, "its own bit only");
    assert_ne!(forward.peer_flags & CT_F_FIN_REPLY, 0, "and it read the reply's");
    assert_eq!(dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow").state, CT_STATE_CLOSING, "both FINs count");
    let _ = (backend, translated);
}

#[test]
fn a_new_syn_on_a_closing_flow_starts_a_new_flow() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let (backend, translated) = established(&mut dp);
    let _ = dp.run(FROM_POD, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), FIN | ACK).build());
    let _ = dp.run(TO_POD, &PacketSpec::tcp(backend, translated, FIN | ACK).build());
    let created = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow").forward.created_ns;
    next_tick();

    let (verdict, _) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));

    assert_eq!(verdict, NEXT);
    let flow = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow");
    assert_eq!(flow.state, CT_STATE_SYN);
    assert!(flow.forward.created_ns > created);
    assert_eq!((dp.stat(Stat::CtReused), dp.stat(Stat::CtExpired)), (1, 0), "a reused tuple, not an expired entry");
}

#[test]
fn expired_entries_are_treated_as_absent() {
    // Timeouts from the load-time global: 2 s for UDP.
    let mut dp = Datapath::load_with(DatapathConfig { udp_ns: 2 * NS_PER_SEC, ..DatapathConfig::DEFAULT });
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let forward = forward_key(CLIENT_EP, (VIP, 53), UDP);
    let (_, out) = dp.run(FROM_POD, &udp(CLIENT_EP, (VIP, 53)));
    let p = parse_and_verify(&out);
    let reply = udp(p.destination(), p.source());

    // Idle for 1 s: alive, the reply is translated.
    dp.age_flow(&forward, NS_PER_SEC);
    assert_ne!(dp.run(TO_POD, &reply).1, reply, "within the UDP timeout");
    // Idle for 3 s: expired. A reply is not translated; the next request is a new flow.
    dp.age_flow(&forward, 3 * NS_PER_SEC);
    assert_eq!(dp.run(TO_POD, &reply), (NEXT, reply.clone()), "an expired flow is absent");
    let before = dp.ct(&forward).expect("entry").created_ns;
    next_tick();
    assert_eq!(dp.run(FROM_POD, &udp(CLIENT_EP, (VIP, 53))).0, NEXT);
    assert!(dp.ct(&forward).expect("entry").created_ns > before, "replaced by a new flow");
    assert_eq!(dp.stat(Stat::CtExpired), 1);
}

#[test]
fn a_syn_only_flow_expires_after_the_configured_syn_timeout() {
    // A real wait against the load-time global (1 s), no aging by hand.
    let mut dp = Datapath::load_with(DatapathConfig { tcp_syn_ns: NS_PER_SEC, ..DatapathConfig::DEFAULT });
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let (_, out) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));
    let p = parse_and_verify(&out);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let reply = PacketSpec::tcp(p.destination(), p.source(), SYN | ACK).build();
    assert_eq!(dp.run(TO_POD, &reply), (NEXT, reply.clone()), "the SYN-only flow expired");
}

#[test]
fn a_missing_reply_entry_is_rebuilt_from_the_forward_one() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let (backend, translated) = established(&mut dp);
    let forward = forward_key(CLIENT_EP, (VIP, 80), TCP);
    let (reply_key, reply) = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow").reply.expect("reply");
    dp.evict(&reply_key);
    // The next client packet after the refresh interval looks at both entries.
    dp.age_flow(&forward, NS_PER_SEC / 5);

    let (verdict, out) = dp.run(FROM_POD, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build());

    assert_eq!((verdict, parse_and_verify(&out).destination()), (NEXT, backend));
    assert_eq!(dp.stat(Stat::CtRebuilt), 1);
    let rebuilt = dp.ct(&reply_key).expect("rebuilt");
    assert_eq!(
        (rebuilt.nat_saddr, rebuilt.nat_daddr, rebuilt.nat_sport, rebuilt.nat_dport, rebuilt.backend_id),
        (reply.nat_saddr, reply.nat_daddr, reply.nat_sport, reply.nat_dport, reply.backend_id)
    );
    assert_ne!(rebuilt.own_flags & CT_F_SEEN_REPLY, 0, "it keeps what the forward entry knew of it");
    let (_, out) = dp.run(TO_POD, &PacketSpec::tcp(backend, translated, ACK).build());
    assert_eq!(parse_and_verify(&out).source(), (VIP, 80), "replies are translated again");
}

#[test]
fn a_missing_forward_entry_is_rebuilt_from_the_reply_one() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let (backend, translated) = established(&mut dp);
    let forward = forward_key(CLIENT_EP, (VIP, 80), TCP);
    let (reply_key, _) = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow").reply.expect("reply");
    let before = dp.ct(&forward).expect("forward");
    dp.age_flow(&forward, NS_PER_SEC / 5);
    dp.evict(&forward);

    let (verdict, out) = dp.run(TO_POD, &PacketSpec::tcp(backend, translated, ACK).build());

    assert_eq!((verdict, parse_and_verify(&out).destination()), (NEXT, CLIENT_EP));
    assert_eq!(dp.stat(Stat::CtRebuilt), 1);
    let rebuilt = dp.ct(&forward).expect("rebuilt");
    assert_eq!((rebuilt.nat_daddr, rebuilt.nat_sport), (before.nat_daddr, before.nat_sport));
    let (_, out) = dp.run(FROM_POD, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build());
    assert_eq!(parse_and_verify(&out).source(), translated);
    assert_eq!((dp.stat(Stat::ForwardNew), dp.stat(Stat::ForwardEstablished)), (1, 1), "the same flow, not a new one");
    assert!(dp.ct(&reply_key).is_some());
}

#[test]
fn udp_churn_cannot_evict_tcp_flows() {
    let config = DatapathConfig { conntrack_max_non_tcp: 64, ..DatapathConfig::DEFAULT };
    let mut dp = Datapath::load_with(config);
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    for i in 0..10 {
        let (_, out) = dp.run(FROM_POD, &syn((CLIENT, 20_000 + i), (VIP, 80)));
        let p = parse_and_verify(&out);
        let _ = dp.run(TO_POD, &PacketSpec::tcp(p.destination(), p.source(), SYN | ACK).build());
    }
    // Three times the non-TCP map's size of UDP flows.
    for i in 0..192 {
        assert_eq!(dp.run(FROM_POD, &udp((CLIENT, 30_000 + i), (VIP, 53))).0, NEXT);
    }
    assert!(dp.ct_entries(UDP).len() <= 64, "the UDP map stays within its size");
    assert_eq!(dp.ct_entries(TCP).len(), 20, "every TCP entry is still there");
    for i in 0..10 {
        let (verdict, _) = dp.run(FROM_POD, &PacketSpec::tcp((CLIENT, 20_000 + i), (VIP, 80), ACK).build());
        assert_eq!(verdict, NEXT);
    }
    assert_eq!(dp.stat(Stat::ForwardEstablished), 10, "the TCP flows are established ones, not picked up again");
}
