//! ICMP errors about translated flows, both ways: the error names the flow
//! as its receiver knows it, with every checksum right.
use std::net::Ipv4Addr;

use mcs_common::{DropReason, Stat, program_names};
use mcs_tests::{
    datapath::{DROP, Datapath, NEXT, ServicePort},
    packet::{ETH_LEN, IcmpErrorSpec, PacketSpec, SYN, TCP, UDP, parse_and_verify, parse_icmp_and_verify},
};

use super::{BACKENDS, CLIENT, CLIENT_EP, ROUTER, VIP, udp};

const FROM_POD: &str = program_names::FROM_POD;
const TO_POD: &str = program_names::TO_POD;

/// A new flow from the client to `vip`: the packet as the client sent it and as it left translated.
fn open(dp: &mut Datapath, spec: &PacketSpec) -> (Vec<u8>, Vec<u8>) {
    let sent = spec.build();
    let (verdict, out) = dp.run(FROM_POD, &sent);
    assert_eq!(verdict, NEXT, "opening the flow");
    (sent, out)
}

#[test]
fn a_routers_fragmentation_needed_reaches_the_client_about_its_own_flow() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let spec = PacketSpec::tcp(CLIENT_EP, (VIP, 80), SYN).with_payload(vec![7; 1400]);
    let (_, translated) = open(&mut dp, &spec);
    // A hop towards the backend has an MTU of 1400 and the packet had DF set.
    let error = IcmpErrorSpec::frag_needed(ROUTER, CLIENT, 1400, &translated).build();

    let (verdict, out) = dp.run(TO_POD, &error);

    assert_eq!(verdict, NEXT);
    let icmp = parse_icmp_and_verify(&out);
    assert_eq!((icmp.src, icmp.dst), (ROUTER, CLIENT), "a router's address stays");
    assert_eq!((icmp.icmp_type, icmp.code, icmp.rest), (3, 4, [0, 0, 0x05, 0x78]), "the MTU is kept");
    // The whole segment is quoted: its TCP checksum is verified too.
    assert_eq!(icmp.quoted_flow(), (CLIENT_EP, (VIP, 80)), "the client's socket finds its own connection");
    assert_eq!(dp.stat(Stat::IcmpToClient), 1);
}

#[test]
fn every_error_type_from_the_backend_comes_from_the_cluster_set_ip() {
    for (icmp_type, code) in [(3, 3), (3, 1), (3, 4), (11, 0), (12, 0)] {
        let mut dp = Datapath::load();
        dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
        let (sent, translated) = open(&mut dp, &PacketSpec::udp(CLIENT_EP, (VIP, 53)));
        let backend = parse_and_verify(&translated).destination();
        // The minimum quote: the IPv4 header and 8 bytes of UDP.
        let error = IcmpErrorSpec::about(backend.0, CLIENT, (icmp_type, code), &translated, 8).build();

        let (verdict, out) = dp.run(TO_POD, &error);

        assert_eq!(verdict, NEXT, "type {icmp_type}/{code}");
        let icmp = parse_icmp_and_verify(&out);
        assert_eq!((icmp.src, icmp.dst, icmp.icmp_type, icmp.code), (VIP, CLIENT, icmp_type, code));
        assert_eq!(icmp.quoted_flow(), (CLIENT_EP, (VIP, 53)), "type {icmp_type}/{code}");
        // The quoted UDP checksum is the client's own again (the quote is the
        // packet it sent), though only 8 bytes are quoted.
        assert_eq!(&icmp.quoted[20..28], &sent[ETH_LEN + 20..ETH_LEN + 28], "the quoted UDP header, checksum included");
    }
}

#[test]
fn an_error_from_the_client_about_a_reply_reaches_the_backend_translated() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let (_, translated) = open(&mut dp, &PacketSpec::udp(CLIENT_EP, (VIP, 53)));
    let t = parse_and_verify(&translated);
    let backend_reply = udp(t.destination(), t.source());
    let (_, reply) = dp.run(TO_POD, &backend_reply);
    // The client has no socket for it any more: port unreachable, to the ClusterSetIP.
    let error = IcmpErrorSpec::about(CLIENT, VIP, (3, 3), &reply, 8).build();

    let (verdict, out) = dp.run(FROM_POD, &error);

    assert_eq!(verdict, NEXT);
    let icmp = parse_icmp_and_verify(&out);
    assert_eq!((icmp.src, icmp.dst), (CLIENT, t.dst), "to the backend");
    assert_eq!(icmp.quoted_flow(), (t.destination(), t.source()), "about the reply as the backend sent it");
    assert_eq!(&icmp.quoted[20..28], &backend_reply[ETH_LEN + 20..ETH_LEN + 28]);
    assert_eq!(dp.stat(Stat::IcmpToBackend), 1);
}

#[test]
fn a_quote_with_ip_options_and_a_short_tcp_header_is_translated() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let spec = PacketSpec { ip_options: vec![1, 1, 1, 0], ..PacketSpec::tcp(CLIENT_EP, (VIP, 80), SYN) };
    let (sent, translated) = open(&mut dp, &spec);
    // 8 bytes of TCP: the ports and the sequence number, not the checksum.
    let error = IcmpErrorSpec::about(ROUTER, CLIENT, (11, 0), &translated, 8).build();

    let (verdict, out) = dp.run(TO_POD, &error);

    assert_eq!(verdict, NEXT);
    let icmp = parse_icmp_and_verify(&out);
    assert_eq!(icmp.quoted_flow(), (CLIENT_EP, (VIP, 80)));
    assert_eq!(&icmp.quoted[20..24], &[1, 1, 1, 0], "the quoted options stay");
    assert_eq!(&icmp.quoted[24..32], &sent[ETH_LEN + 24..ETH_LEN + 32], "ports and sequence number as sent");
}

#[test]
fn an_error_that_quotes_no_tracked_flow_is_dropped_at_a_cluster_set_ip_and_left_alone_elsewhere() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let stray = udp((VIP, 53), CLIENT_EP);
    let to_vip = IcmpErrorSpec::about(CLIENT, VIP, (3, 3), &stray, 8).build();
    assert_eq!(dp.run(FROM_POD, &to_vip), (DROP, to_vip.clone()));
    assert_eq!(dp.drops(DropReason::IcmpNoFlow), 1);
    let to_client =
        IcmpErrorSpec::about(ROUTER, CLIENT, (3, 4), &udp(CLIENT_EP, (Ipv4Addr::new(198, 18, 9, 9), 53)), 8);
    let frame = to_client.build();
    for program in [FROM_POD, TO_POD] {
        assert_eq!(dp.run(program, &frame), (NEXT, frame.clone()), "{program}: not about a translated flow");
    }
    let _ = TCP;
    let _ = UDP;
}
