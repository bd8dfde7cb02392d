//! Every translated flow gets a tuple of its own: a source port of the
//! translated range, never one a direct flow of the client can use, and
//! never one another live translated flow holds.
use std::net::Ipv4Addr;

use mcs_common::{
    CT_DIR_FORWARD, CT_F_SEEN_REPLY, CT_STATE_ESTABLISHED, CT_STATE_SYN, CtValue, DatapathConfig, DropReason, Stat,
    ipv4_to_nbo, limits, program_names,
};
use mcs_tests::{
    datapath::{DROP, Datapath, NEXT, ServicePort, forward_key, monotonic_ns, next_tick, reply_key},
    packet::{ACK, FIN, PacketSpec, SYN, TCP, parse_and_verify},
};

use super::{BACKENDS, CLIENT, CLIENT_EP, CLIENT_PORT, VIP, syn};

const FROM_POD: &str = program_names::FROM_POD;
const TO_POD: &str = program_names::TO_POD;
const B: (Ipv4Addr, u16) = BACKENDS[0];

#[test]
fn a_clients_direct_and_cluster_set_ip_flows_from_one_port_never_share_a_tuple() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&[B]));
    // Linux reuses an ephemeral port for another destination: the client
    // talks to the pod directly and through the ClusterSetIP from port 40000.
    let direct = syn(CLIENT_EP, B);
    assert_eq!(dp.run(FROM_POD, &direct), (NEXT, direct.clone()), "direct traffic is not ours");
    let (verdict, out) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));
    let p = parse_and_verify(&out);
    assert_eq!((verdict, p.destination()), (NEXT, B));
    assert_ne!(p.sport, CLIENT_PORT, "the translated flow's tuple differs from the direct one's");
    assert!(
        !(32_768..=60_999).contains(&p.sport),
        "a port no ephemeral allocation of the client gives out: {}",
        p.sport
    );

    // The pod's answer to the direct flow is left alone; the answer to the
    // translated flow gets the ClusterSetIP back.
    let direct_reply = PacketSpec::tcp(B, CLIENT_EP, SYN | ACK).build();
    assert_eq!(dp.run(TO_POD, &direct_reply), (NEXT, direct_reply.clone()), "the direct flow keeps its replies");
    let (_, out) = dp.run(TO_POD, &PacketSpec::tcp(B, (CLIENT, p.sport), SYN | ACK).build());
    let q = parse_and_verify(&out);
    assert_eq!((q.source(), q.destination()), ((VIP, 80), CLIENT_EP));
}

#[test]
fn two_service_ports_on_one_target_port_get_tuples_of_their_own() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&[B]));
    dp.program(ServicePort::tcp(VIP, 8080).ready(&[B]));
    let (_, a) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));
    let (_, b) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 8080)));
    let (a, b) = (parse_and_verify(&a), parse_and_verify(&b));
    assert_eq!((a.destination(), b.destination()), (B, B));
    assert_ne!(a.sport, b.sport, "one client port, two service ports, one target port: two tuples");
    for (translated, service_port) in [(a.sport, 80), (b.sport, 8080)] {
        let (_, out) = dp.run(TO_POD, &PacketSpec::tcp(B, (CLIENT, translated), SYN | ACK).build());
        let r = parse_and_verify(&out);
        assert_eq!((r.source(), r.destination()), ((VIP, service_port), CLIENT_EP));
    }
}

/// Plants a live flow from `client` to `vip` that holds the translated port `port` towards `B`.
fn plant_live_flow(dp: &mut Datapath, client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), port: u16) {
    let now = monotonic_ns();
    let forward = forward_key(client, vip, TCP);
    let forward_value = CtValue {
        nat_saddr: ipv4_to_nbo(client.0),
        nat_daddr: ipv4_to_nbo(B.0),
        nat_sport: port.to_be(),
        nat_dport: B.1.to_be(),
        backend_id: 1,
        service_id: 1,
        peer_flags: CT_F_SEEN_REPLY,
        created_ns: now,
        last_seen_ns: now,
        ..CtValue::default()
    };
    let reply = forward.peer(&forward_value);
    let reply_value = CtValue {
        nat_saddr: forward.daddr,
        nat_daddr: forward.saddr,
        nat_sport: forward.dport,
        nat_dport: forward.sport,
        own_flags: CT_F_SEEN_REPLY,
        peer_flags: 0,
        ..forward_value
    };
    dp.set_ct(forward, forward_value);
    dp.set_ct(reply, reply_value);
}

#[test]
fn a_port_a_live_flow_holds_is_skipped() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&[B]));
    let first = dp.nat_port(CLIENT_EP, (VIP, 80), TCP, 0);
    plant_live_flow(&mut dp, (CLIENT, 39_999), (VIP, 81), first);

    let (verdict, out) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));

    let p = parse_and_verify(&out);
    assert_eq!(verdict, NEXT);
    assert_eq!(p.source(), (CLIENT, dp.nat_port(CLIENT_EP, (VIP, 80), TCP, 1)), "the next port of the walk");
    assert_eq!(dp.stat(Stat::NatPortProbed), 1);
    let other = dp.ct(&reply_key(B, (CLIENT, first), TCP)).expect("the other flow's reply entry");
    assert_eq!(u16::from_be(other.nat_dport), 39_999, "the other flow keeps its tuple");
}

/// Opens and closes (FIN both ways) the flow from `client`, returning its translated port.
fn open_and_close(dp: &mut Datapath, client: (Ipv4Addr, u16)) -> u16 {
    let (verdict, out) = dp.run(FROM_POD, &syn(client, (VIP, 80)));
    assert_eq!(verdict, NEXT, "opening the flow from {client:?}");
    let port = parse_and_verify(&out).sport;
    let _ = dp.run(TO_POD, &PacketSpec::tcp(B, (CLIENT, port), SYN | ACK).build());
    let _ = dp.run(FROM_POD, &PacketSpec::tcp(client, (VIP, 80), FIN | ACK).build());
    let _ = dp.run(TO_POD, &PacketSpec::tcp(B, (CLIENT, port), FIN | ACK).build());
    port
}

#[test]
fn a_new_syn_on_a_closed_flows_5_tuple_takes_its_port_back() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&[B]));
    let port = open_and_close(&mut dp, CLIENT_EP);
    let old = dp.ct(&reply_key(B, (CLIENT, port), TCP)).expect("reply entry").created_ns;
    next_tick();

    let (verdict, out) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));

    let p = parse_and_verify(&out);
    assert_eq!((verdict, p.source()), (NEXT, (CLIENT, port)), "the same tuple, as plain TCP port reuse");
    assert_eq!(dp.stat(Stat::CtReused), 1);
    assert_eq!(dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow").state, CT_STATE_SYN, "a new flow");
    assert!(dp.ct(&reply_key(B, (CLIENT, port), TCP)).expect("reply entry").created_ns > old);
}

#[test]
fn with_every_port_held_a_syn_takes_over_a_closed_flow_and_otherwise_is_refused() {
    // A range as long as the walk of a new flow: the walk covers all of it.
    let n = u16::try_from(limits::NAT_PORT_PROBES).expect("a few ports");
    let last = 61_000 + n - 1;
    let config = DatapathConfig { nat_port_min: 61_000, nat_port_max: last, ..DatapathConfig::DEFAULT };
    let mut dp = Datapath::load_with(config);
    dp.program(ServicePort::tcp(VIP, 80).ready(&[B]));
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..n {
        let (verdict, out) = dp.run(FROM_POD, &syn((CLIENT, 30_000 + i), (VIP, 80)));
        assert_eq!(verdict, NEXT, "flow {i}");
        let p = parse_and_verify(&out);
        let _ = dp.run(TO_POD, &PacketSpec::tcp(B, (CLIENT, p.sport), SYN | ACK).build());
        ports.insert(p.sport);
    }
    assert_eq!(ports, (61_000..=last).collect(), "{n} live flows, {n} tuples");

    let frame = syn(CLIENT_EP, (VIP, 80));
    assert_eq!(dp.run(FROM_POD, &frame), (DROP, frame.clone()), "no tuple is free");
    assert_eq!(dp.drops(DropReason::NatPortsExhausted), 1);

    // One of them closes: a SYN may take its tuple over (the backend's
    // TIME_WAIT accepts a SYN from the same client, as for any port reuse).
    let closed = (CLIENT, 30_003);
    let _ = dp.run(FROM_POD, &PacketSpec::tcp(closed, (VIP, 80), FIN | ACK).build());
    let flow = dp.flow(closed, (VIP, 80), TCP).expect("flow");
    let port = flow.translated_source().1;
    let _ = dp.run(TO_POD, &PacketSpec::tcp(B, (CLIENT, port), FIN | ACK).build());
    let (verdict, out) = dp.run(FROM_POD, &frame);
    assert_eq!((verdict, parse_and_verify(&out).sport), (NEXT, port));
    assert_eq!(dp.stat(Stat::NatPortReused), 1);
}

#[test]
fn a_flow_that_lost_its_forward_entry_is_picked_up_on_the_same_tuple() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let (_, out) = dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80)));
    let first = parse_and_verify(&out);
    let _ = dp.run(TO_POD, &PacketSpec::tcp(first.destination(), first.source(), SYN | ACK).build());
    dp.evict(&forward_key(CLIENT_EP, (VIP, 80), TCP));

    // A segment in the middle of the stream: the same backend (the table is
    // unchanged) and, since its old reply entry names this 5-tuple, the same port.
    let (verdict, out) = dp.run(FROM_POD, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build());

    let p = parse_and_verify(&out);
    assert_eq!((verdict, p.source(), p.destination()), (NEXT, first.source(), first.destination()));
    let flow = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("tracked again");
    assert_eq!(flow.state, CT_STATE_ESTABLISHED, "picked up mid-stream");
    assert_eq!(flow.reply.expect("reply").0.dir, mcs_common::CT_DIR_REPLY);
    assert_eq!(forward_key(CLIENT_EP, (VIP, 80), TCP).dir, CT_DIR_FORWARD);
}
