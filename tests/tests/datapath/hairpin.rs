//! A pod that reaches itself through a ClusterSetIP: hairpin by default,
//! through the link-local hairpin address, straight back to the pod.
use mcs_common::{DEFAULT_HAIRPIN_ADDR, DatapathConfig, Stat, program_names};
use mcs_tests::{
    datapath::{Datapath, NEXT, REDIRECT, ServicePort},
    packet::{ACK, NODE_MAC, POD_MAC, PacketSpec, SYN, UDP, parse_and_verify},
};

use super::{BACKENDS, VIP, syn, udp};

const FROM_POD: &str = program_names::FROM_POD;
const TO_POD: &str = program_names::TO_POD;

#[test]
fn by_default_a_pod_reaching_itself_is_hairpinned_straight_back_to_it() {
    let mut dp = Datapath::load();
    let pod = BACKENDS[0];
    dp.program(ServicePort::tcp(VIP, 80).ready(&[pod]));
    let client = (pod.0, 33_333);

    let (verdict, out) = dp.run(FROM_POD, &syn(client, (VIP, 80)));

    assert_eq!(verdict, REDIRECT, "sent back out of the pod's interface, not routed");
    let p = parse_and_verify(&out);
    assert_eq!(p.destination(), pod, "DNAT to itself");
    assert_eq!(p.src, DEFAULT_HAIRPIN_ADDR, "from the hairpin address, so the pod takes it for a peer");
    assert!(!(32_768..=60_999).contains(&p.sport), "outside the ephemeral range: {}", p.sport);
    assert_eq!((&out[..6], &out[6..12]), (POD_MAC.as_slice(), NODE_MAC.as_slice()), "to the pod, from the node side");
    assert_eq!(dp.stat(Stat::HairpinNew), 1);
    // On its way into the pod (egress) the packet is not a reply: untouched.
    assert_eq!(dp.run(TO_POD, &out).0, NEXT);

    // The pod answers the hairpin address; the answer comes in through mcs_from_pod.
    let (verdict, back) = dp.run(FROM_POD, &PacketSpec::tcp(pod, p.source(), SYN | ACK).build());
    assert_eq!(verdict, REDIRECT);
    let r = parse_and_verify(&back);
    assert_eq!((r.source(), r.destination()), ((VIP, 80), client), "from the ClusterSetIP to the pod as client");
    assert_eq!(dp.stat(Stat::ReverseNat), 1);
    // Later packets of the client keep both rewrites.
    let (verdict, out) = dp.run(FROM_POD, &PacketSpec::tcp(client, (VIP, 80), ACK).build());
    let q = parse_and_verify(&out);
    assert_eq!((verdict, q.source(), q.destination()), (REDIRECT, p.source(), pod));
}

#[test]
fn udp_is_hairpinned_too() {
    let mut dp = Datapath::load();
    let pod = BACKENDS[1];
    dp.program(ServicePort::udp(VIP, 53).ready(&[pod]));
    let client = (pod.0, 5000);
    let (verdict, out) = dp.run(FROM_POD, &udp(client, (VIP, 53)));
    let p = parse_and_verify(&out);
    assert_eq!((verdict, p.src, p.destination()), (REDIRECT, DEFAULT_HAIRPIN_ADDR, pod));
    let (verdict, back) = dp.run(FROM_POD, &udp(pod, p.source()));
    let r = parse_and_verify(&back);
    assert_eq!((verdict, r.source(), r.destination()), (REDIRECT, (VIP, 53), client));
    let _ = UDP;
}

#[test]
fn with_hairpin_off_a_pod_reaching_itself_is_only_dnated() {
    let mut dp = Datapath::load_with(DatapathConfig { hairpin_addr: 0, ..DatapathConfig::DEFAULT });
    let pod = BACKENDS[0];
    dp.program(ServicePort::tcp(VIP, 80).ready(&[pod]));
    let (verdict, out) = dp.run(FROM_POD, &syn((pod.0, 33_333), (VIP, 80)));
    let p = parse_and_verify(&out);
    assert_eq!((verdict, p.src, p.destination()), (NEXT, pod.0, pod));
    assert_eq!(dp.stat(Stat::HairpinNew), 0);
}
