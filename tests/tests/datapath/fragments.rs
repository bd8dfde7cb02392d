//! Fragmented datagrams of translated flows, both ways.
use mcs_common::{DropReason, Stat, program_names};
use mcs_tests::{
    datapath::{DROP, Datapath, NEXT, ServicePort},
    packet::{PacketSpec, UDP, parse_and_verify, reassemble_and_verify},
};

use super::{BACKENDS, CLIENT, CLIENT_EP, VIP, udp};

const FROM_POD: &str = program_names::FROM_POD;
const TO_POD: &str = program_names::TO_POD;

fn big(src: (std::net::Ipv4Addr, u16), dst: (std::net::Ipv4Addr, u16), id: u16) -> PacketSpec {
    let payload: Vec<u8> = (0..3000u32).map(|i| u8::try_from(i % 251).expect("small")).collect();
    PacketSpec { frag: 0, ip_id: id, ..PacketSpec::udp(src, dst).with_payload(payload) }
}

#[test]
fn a_fragmented_datagram_to_a_cluster_set_ip_is_translated_fragment_by_fragment() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let fragments = big(CLIENT_EP, (VIP, 53), 0x4242).fragments(1480);
    assert_eq!(fragments.len(), 3);

    let out: Vec<Vec<u8>> = fragments
        .iter()
        .map(|f| {
            let (verdict, out) = dp.run(FROM_POD, f);
            assert_eq!(verdict, NEXT);
            out
        })
        .collect();

    let p = reassemble_and_verify(&out);
    assert_eq!(p.destination(), dp.predicted(CLIENT_EP, (VIP, 53), UDP));
    assert_eq!(p.source(), (CLIENT, dp.nat_port(CLIENT_EP, (VIP, 53), UDP, 0)));
    assert_eq!(p.payload.len(), 3000);
    assert_eq!((dp.stat(Stat::ForwardNew), dp.stat(Stat::FragmentTranslated)), (1, 2));
}

#[test]
fn a_backends_fragmented_answer_is_translated_back() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let (_, out) = dp.run(FROM_POD, &udp(CLIENT_EP, (VIP, 53)));
    let t = parse_and_verify(&out);

    let answer: Vec<Vec<u8>> = big(t.destination(), t.source(), 0x5151)
        .fragments(1480)
        .iter()
        .map(|f| {
            let (verdict, out) = dp.run(TO_POD, f);
            assert_eq!(verdict, NEXT);
            out
        })
        .collect();

    let p = reassemble_and_verify(&answer);
    assert_eq!((p.source(), p.destination()), ((VIP, 53), CLIENT_EP));
    assert_eq!(dp.stat(Stat::FragmentTranslated), 2);
}

#[test]
fn a_later_fragment_without_its_first_is_dropped_at_a_cluster_set_ip_and_left_alone_elsewhere() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let to_vip = big(CLIENT_EP, (VIP, 53), 1).fragments(1480);
    assert_eq!(dp.run(FROM_POD, &to_vip[1]), (DROP, to_vip[1].clone()), "its ports, so its flow, are unknown");
    assert_eq!(dp.drops(DropReason::Fragment), 1);
    let elsewhere = big(BACKENDS[0], CLIENT_EP, 2).fragments(1480);
    for program in [FROM_POD, TO_POD] {
        assert_eq!(dp.run(program, &elsewhere[1]), (NEXT, elsewhere[1].clone()), "{program}");
    }
}
