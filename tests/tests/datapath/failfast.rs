//! A service port without a usable backend answers at once, from the
//! ClusterSetIP: a TCP RST, or an ICMP port unreachable.
use mcs_common::{DropReason, Stat, program_names};
use mcs_tests::{
    datapath::{DROP, Datapath, REDIRECT, ServicePort},
    packet::{ACK, ETH_LEN, FIN, PacketSpec, RST, SYN, TCP, UDP, parse_and_verify, parse_icmp_and_verify},
};

use super::{CLIENT, CLIENT_EP, CLIENT_PORT, VIP};

const FROM_POD: &str = program_names::FROM_POD;

/// Checks `out` is the RST a closed port would send to `original` (RFC 9293
/// §3.10.7.1), from the ClusterSetIP back to the client.
pub(crate) fn assert_rst_for(out: &[u8], original: &PacketSpec) {
    let p = parse_and_verify(out);
    assert_eq!(p.source(), (original.dst, original.dport), "the RST comes from the ClusterSetIP");
    assert_eq!(p.destination(), (original.src, original.sport), "to the client");
    assert!(p.payload.is_empty(), "an RST carries no data");
    let frame = original.build();
    assert_eq!(&out[..6], &frame[6..12], "destination MAC is the client's");
    assert_eq!(&out[6..12], &frame[..6], "source MAC is the one the client sent to");
    if original.tcp_flags & ACK != 0 {
        assert_eq!((p.tcp_flags, p.seq), (RST, original.ack), "RST with seq = SEG.ACK");
    } else {
        let len = u32::try_from(original.payload.len()).expect("small")
            + u32::from(original.tcp_flags & SYN != 0)
            + u32::from(original.tcp_flags & FIN != 0);
        assert_eq!((p.tcp_flags, p.seq, p.ack), (RST | ACK, 0, original.seq + len), "RST|ACK acking the segment");
    }
}

#[test]
fn a_service_without_backends_answers_tcp_with_an_rst_at_once() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80));
    // A SYN with IP options: the answer has none.
    let spec = PacketSpec { ip_options: vec![1, 1, 1, 0], ..PacketSpec::tcp(CLIENT_EP, (VIP, 80), SYN) };
    let (verdict, out) = dp.run(FROM_POD, &spec.build());
    assert_eq!(verdict, REDIRECT, "sent back out of the interface");
    assert_eq!(out.len(), 54, "Ethernet + IPv4 + TCP, no options, no payload");
    assert_rst_for(&out, &spec);
    // A segment with ACK (a client that thinks it is connected) gets seq = its ack.
    let spec = PacketSpec { ack: 777_777, ..PacketSpec::tcp((CLIENT, CLIENT_PORT + 1), (VIP, 80), ACK) };
    let (verdict, out) = dp.run(FROM_POD, &spec.build());
    assert_eq!(verdict, REDIRECT);
    assert_rst_for(&out, &spec);
    // An RST is never answered.
    let rst = PacketSpec::tcp(CLIENT_EP, (VIP, 80), RST).build();
    assert_eq!(dp.run(FROM_POD, &rst), (DROP, rst.clone()));
    assert_eq!(dp.stat(Stat::RejectTcp), 2);
    assert_eq!(dp.drops(DropReason::NoBackend), 3);
    assert!(dp.all_ct_entries().is_empty(), "nothing tracked");
    let stats = dp.service_stats(VIP, 80, TCP);
    assert_eq!((stats.rejected, stats.packets), (2, 0));
}

#[test]
fn a_service_without_backends_answers_udp_with_icmp_port_unreachable() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53));
    for options in [Vec::new(), vec![1, 1, 1, 0, 1, 1, 1, 0]] {
        let spec = PacketSpec { ip_options: options.clone(), ..PacketSpec::udp(CLIENT_EP, (VIP, 53)) };
        let frame = spec.build();
        let (verdict, out) = dp.run(FROM_POD, &frame);
        assert_eq!(verdict, REDIRECT, "options {options:?}");
        let icmp = parse_icmp_and_verify(&out);
        assert_eq!((icmp.src, icmp.dst), (VIP, CLIENT), "from the ClusterSetIP to the client");
        assert_eq!((icmp.icmp_type, icmp.code), (3, 3), "destination unreachable, port unreachable");
        let ip_len = 20 + options.len();
        assert_eq!(icmp.quoted, frame[ETH_LEN..ETH_LEN + ip_len + 8], "the original IPv4 header and 8 bytes of UDP");
        assert_eq!(&out[..6], &frame[6..12], "back to the client's MAC");
    }
    assert_eq!(dp.stat(Stat::RejectIcmp), 2);
    assert_eq!(dp.drops(DropReason::NoBackend), 2);
    let _ = UDP;
}
