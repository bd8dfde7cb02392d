//! The XDP gateway (`mcs_gateway`) with `test_run`: every branch, in a
//! network namespace of the test's own, since the program routes with
//! `bpf_fib_lookup` in the namespace of the thread that runs it.
//!
//! ```text
//!  external client 198.18.100.2 ── up0 198.18.100.1/24 [gateway] dn0 198.18.1.1/24 ── backends 198.18.1.10, .11
//!  (and 198.18.100.20, a backend on the uplink's own subnet)        └─ router 198.18.1.254 ── 198.18.2.0/24
//! ```
//! Neighbours are permanent entries, but 198.18.1.12 has none (the next
//! hop not resolved yet) and 198.18.3.0/24 has no route.
use std::net::Ipv4Addr;

use etherparse::Ipv4HeaderSlice;
use mcs_common::{DropReason, Stat, program_names};
use mcs_tests::{
    datapath::{Datapath, NEXT, ServicePort, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, reply_key},
    netns::{NetNs, unique_prefix},
    packet::{
        ACK, ETH_LEN, IcmpErrorSpec, PacketSpec, SYN, TCP, parse_and_verify, parse_icmp_and_verify,
        reassemble_and_verify,
    },
};

use super::{VIP, failfast::assert_rst_for};

const GATEWAY: &str = program_names::GATEWAY;

/// The external client (runs no agent).
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
const EXT_EP: (Ipv4Addr, u16) = (EXT, 40_000);
/// The gateway's uplink address, and its address towards the backends.
const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const DOWNLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
/// Backends on the downlink, behind the router, and on the uplink's subnet.
const EAST: [(Ipv4Addr, u16); 2] = [(Ipv4Addr::new(198, 18, 1, 10), 8080), (Ipv4Addr::new(198, 18, 1, 11), 8080)];
const WEST: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 2, 10), 9090);
const ON_UPLINK: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 100, 20), 8080);
const UNRESOLVED: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 1, 12), 8080);
const UNROUTABLE: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 3, 10), 8080);

const EXT_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
const UP_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const DN_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0xfe];
const ON_UPLINK_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x20];

/// The MAC of backend `addr` on the downlink (its last octet).
fn backend_mac(addr: Ipv4Addr) -> [u8; 6] {
    [0x02, 0xbb, 0, 0, 0, addr.octets()[3]]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The interfaces the programs run on.
#[derive(Clone, Copy)]
struct Links {
    up: u32,
    dn: u32,
}

/// Builds the gateway's namespace (the guard removes it).
fn gateway_ns() -> (NetNs, Links) {
    let ns = NetNs::new(&unique_prefix("gwpkt"));
    for (a, b, mac, addr) in [("up0", "up1", UP_MAC, "198.18.100.1/24"), ("dn0", "dn1", DN_MAC, "198.18.1.1/24")] {
        ns.ip(&["link", "add", a, "address", &mac_text(mac), "type", "veth", "peer", "name", b]);
        ns.ip(&["addr", "add", addr, "dev", a]);
        ns.ip(&["link", "set", a, "up"]);
        ns.ip(&["link", "set", b, "up"]);
    }
    let mut neighbours = vec![(EXT, EXT_MAC, "up0"), (ON_UPLINK.0, ON_UPLINK_MAC, "up0"), (ROUTER, ROUTER_MAC, "dn0")];
    neighbours.extend(EAST.iter().map(|(ip, _)| (*ip, backend_mac(*ip), "dn0")));
    for (ip, mac, dev) in neighbours {
        ns.ip(&["neigh", "replace", &ip.to_string(), "lladdr", &mac_text(mac), "dev", dev, "nud", "permanent"]);
    }
    ns.ip(&["route", "add", "198.18.2.0/24", "via", &ROUTER.to_string(), "dev", "dn0"]);
    let links = Links { up: ns.ifindex("up0"), dn: ns.ifindex("dn0") };
    (ns, links)
}

/// Runs `f` with a fresh datapath inside the gateway's namespace.
fn with_gateway<T: Send>(f: impl FnOnce(&mut Datapath, Links) -> T + Send) -> T {
    let (ns, links) = gateway_ns();
    ns.enter(move || {
        let mut dp = Datapath::load();
        dp.load_xdp(GATEWAY);
        f(&mut dp, links)
    })
}

/// `frame` (built by the kit, to the node's MAC) as it arrives on the uplink.
fn from_uplink(mut frame: Vec<u8>) -> Vec<u8> {
    frame[..6].copy_from_slice(&UP_MAC);
    frame[6..12].copy_from_slice(&EXT_MAC);
    frame
}

/// The TTL of a frame.
fn ttl(frame: &[u8]) -> u8 {
    frame[ETH_LEN + 8]
}

#[test]
fn a_new_tcp_flow_is_dnated_snated_to_the_gateway_and_redirected_and_its_reply_comes_back() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&[EAST[0], EAST[1], WEST]));
        let frame = from_uplink(PacketSpec::tcp(EXT_EP, (VIP, 80), SYN).build());
        let (verdict, out) = dp.run_xdp(GATEWAY, &frame, links.up);
        assert_eq!(verdict, XDP_REDIRECT, "out of the downlink");
        let p = parse_and_verify(&out);
        let backend = dp.predicted(EXT_EP, (VIP, 80), TCP);
        let port = dp.nat_port(EXT_EP, (VIP, 80), TCP, 0);
        assert_eq!(p.destination(), backend, "DNAT to the backend Maglev picks");
        assert_eq!(p.source(), (DOWNLINK_IP, port), "SNAT to the gateway's address towards the backend");
        assert_eq!(ttl(&out), 63, "a router decrements the TTL");
        let next_hop = if backend == WEST { ROUTER_MAC } else { backend_mac(backend.0) };
        assert_eq!((&out[..6], &out[6..12]), (next_hop.as_slice(), DN_MAC.as_slice()), "next hop's MAC, from dn0's");
        assert_eq!((dp.stat(Stat::ForwardNew), dp.stat(Stat::GatewayForwarded)), (1, 1));
        let flow = dp.flow(EXT_EP, (VIP, 80), TCP).expect("tracked");
        assert_eq!(flow.translated_source(), (DOWNLINK_IP, port));
        let (key, _) = flow.reply.expect("reply entry");
        assert_eq!(key, reply_key(backend, (DOWNLINK_IP, port), TCP), "the backend answers the gateway");

        // The backend's SYN-ACK arrives on the downlink.
        let answer = PacketSpec { ack: 1001, ..PacketSpec::tcp(backend, (DOWNLINK_IP, port), SYN | ACK) };
        let (verdict, out) = dp.run_xdp(GATEWAY, &answer.build(), links.dn);
        assert_eq!(verdict, XDP_REDIRECT, "out of the uplink");
        let p = parse_and_verify(&out);
        assert_eq!(
            (p.source(), p.destination()),
            ((VIP, 80), EXT_EP),
            "from the ClusterSetIP to the client's own port"
        );
        assert_eq!((&out[..6], &out[6..12]), (EXT_MAC.as_slice(), UP_MAC.as_slice()));
        assert_eq!(ttl(&out), 63);
        assert_eq!(dp.stat(Stat::ReverseNat), 1);

        // The client's next segment follows the entry.
        let ack = from_uplink(PacketSpec { ack: 5000, ..PacketSpec::tcp(EXT_EP, (VIP, 80), ACK) }.build());
        let (verdict, out) = dp.run_xdp(GATEWAY, &ack, links.up);
        assert_eq!(verdict, XDP_REDIRECT);
        let p = parse_and_verify(&out);
        assert_eq!((p.source(), p.destination()), ((DOWNLINK_IP, port), backend));
        assert_eq!((dp.stat(Stat::ForwardEstablished), dp.stat(Stat::GatewayForwarded)), (1, 3));
        assert_eq!(dp.flow(EXT_EP, (VIP, 80), TCP).expect("tracked").state, mcs_common::CT_STATE_ESTABLISHED);
        let stats = dp.service_stats(VIP, 80, TCP);
        assert_eq!((stats.packets, stats.new_flows), (2, 1));
        assert_eq!(dp.total_drops(), 0);
    });
}

#[test]
fn udp_flows_of_many_clients_share_the_gateway_address_with_ports_unique_per_backend() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::udp(VIP, 53).ready(&[EAST[0]]));
        let mut ports = std::collections::BTreeSet::new();
        for i in 0..40u16 {
            let client = (Ipv4Addr::new(198, 18, 100, 2 + u8::try_from(i % 4).expect("small")), 40_000 + i / 4);
            let mut spec = PacketSpec::udp(client, (VIP, 53));
            spec.udp_zero_checksum = i == 0;
            let (verdict, out) = dp.run_xdp(GATEWAY, &from_uplink(spec.build()), links.up);
            assert_eq!(verdict, XDP_REDIRECT, "client {client:?}");
            let p = parse_and_verify(&out);
            assert_eq!(p.destination(), EAST[0]);
            assert_eq!(p.source().0, DOWNLINK_IP);
            if i == 0 {
                assert_eq!(p.l4_checksum, 0, "a zero UDP checksum stays zero");
            }
            assert!(ports.insert(p.source().1), "port {} given twice towards one backend", p.source().1);
        }
        // A reply with a UDP checksum.
        let port = *ports.iter().next().expect("a port");
        let flow = dp
            .all_ct_entries()
            .into_iter()
            .find(|(k, _)| k.dir == mcs_common::CT_DIR_REPLY && k.dport == port.to_be())
            .expect("reply entry");
        let client = (mcs_common::ipv4_from_nbo(flow.1.nat_daddr), u16::from_be(flow.1.nat_dport));
        let (verdict, out) = dp.run_xdp(GATEWAY, &PacketSpec::udp(EAST[0], (DOWNLINK_IP, port)).build(), links.dn);
        assert_eq!(verdict, XDP_REDIRECT);
        let p = parse_and_verify(&out);
        assert_eq!((p.source(), p.destination()), ((VIP, 53), client));
    });
}

#[test]
fn a_backend_on_the_uplinks_own_subnet_is_reached_with_xdp_tx() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&[ON_UPLINK]));
        let (verdict, out) =
            dp.run_xdp(GATEWAY, &from_uplink(PacketSpec::tcp(EXT_EP, (VIP, 80), SYN).build()), links.up);
        assert_eq!(verdict, XDP_TX, "back out of the interface it came in on");
        let p = parse_and_verify(&out);
        assert_eq!((p.source().0, p.destination()), (UPLINK_IP, ON_UPLINK));
        assert_eq!((&out[..6], &out[6..12]), (ON_UPLINK_MAC.as_slice(), UP_MAC.as_slice()));
    });
}

#[test]
fn everything_else_passes_untouched_and_unlisted_ports_are_dropped() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&[EAST[0]]));
        for frame in [
            PacketSpec::tcp(EXT_EP, (UPLINK_IP, 22), SYN).build(),
            PacketSpec::udp(EXT_EP, (DOWNLINK_IP, 5000)).build(),
            PacketSpec::icmp_echo(EXT, UPLINK_IP).build(),
            PacketSpec::tcp(EAST[0], (DOWNLINK_IP, 5000), ACK).build(),
        ] {
            let frame = from_uplink(frame);
            assert_eq!(dp.run_xdp(GATEWAY, &frame, links.up), (XDP_PASS, frame.clone()), "left alone");
        }
        let mut arp = from_uplink(PacketSpec::udp(EXT_EP, (VIP, 80)).build());
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(dp.run_xdp(GATEWAY, &arp, links.up).0, XDP_PASS);
        assert_eq!(dp.total_drops(), 0);
        for frame in [
            PacketSpec::tcp(EXT_EP, (VIP, 81), SYN).build(),
            PacketSpec::udp(EXT_EP, (VIP, 80)).build(),
            PacketSpec::icmp_echo(EXT, VIP).build(),
        ] {
            let frame = from_uplink(frame);
            assert_eq!(dp.run_xdp(GATEWAY, &frame, links.up).0, XDP_DROP);
        }
        assert_eq!(dp.drops(DropReason::UnknownPort), 3);
        let mut cut = from_uplink(PacketSpec::tcp(EXT_EP, (VIP, 80), SYN).build());
        cut.truncate(ETH_LEN + 20 + 10);
        cut[ETH_LEN + 3] = 30; // total length: the IPv4 header and a cut TCP header
        fix_ip_checksum(&mut cut);
        assert_eq!(dp.run_xdp(GATEWAY, &cut, links.up).0, XDP_DROP);
        assert_eq!(dp.drops(DropReason::Malformed), 1);
        assert!(dp.all_ct_entries().is_empty());
    });
}

fn fix_ip_checksum(frame: &mut [u8]) {
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
    let ip = Ipv4HeaderSlice::from_slice(&frame[ETH_LEN..]).expect("an IPv4 header").to_header();
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&ip.calc_header_checksum().to_be_bytes());
}

#[test]
fn a_service_without_backends_is_refused_at_once_back_out_of_the_uplink() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::tcp(VIP, 80));
        dp.program(ServicePort::udp(VIP, 53));
        let spec = PacketSpec::tcp(EXT_EP, (VIP, 80), SYN);
        let frame = from_uplink(spec.build());
        let (verdict, out) = dp.run_xdp(GATEWAY, &frame, links.up);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out.len(), 54);
        assert_rst_for_uplink(&out, &spec);
        let udp = from_uplink(PacketSpec::udp(EXT_EP, (VIP, 53)).build());
        let (verdict, out) = dp.run_xdp(GATEWAY, &udp, links.up);
        assert_eq!(verdict, XDP_TX);
        let icmp = parse_icmp_and_verify(&out);
        assert_eq!((icmp.src, icmp.dst, icmp.icmp_type, icmp.code), (VIP, EXT, 3, 3));
        assert_eq!(icmp.quoted, udp[ETH_LEN..ETH_LEN + 28], "the original IPv4 header and 8 bytes of UDP");
        assert_eq!(&out[..6], EXT_MAC.as_slice(), "to the client's MAC");
        assert_eq!((dp.stat(Stat::RejectTcp), dp.stat(Stat::RejectIcmp)), (1, 1));
        assert_eq!(dp.drops(DropReason::NoBackend), 2);
    });
}

/// [`assert_rst_for`], for a frame that came in on the uplink (its MACs are the uplink's).
fn assert_rst_for_uplink(out: &[u8], original: &PacketSpec) {
    let mut local = out.to_vec();
    // `assert_rst_for` checks the MACs against the kit's frame: map them back.
    let frame = original.build();
    local[..6].copy_from_slice(&frame[6..12]);
    local[6..12].copy_from_slice(&frame[..6]);
    assert_eq!((&out[..6], &out[6..12]), (EXT_MAC.as_slice(), UP_MAC.as_slice()), "back to the client's MAC");
    assert_rst_for(&local, original);
}

#[test]
fn an_unresolved_next_hop_goes_to_the_stack_translated_and_no_route_is_dropped() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&[UNRESOLVED]));
        dp.program(ServicePort::tcp(VIP, 81).ready(&[UNROUTABLE]));
        let (verdict, out) =
            dp.run_xdp(GATEWAY, &from_uplink(PacketSpec::tcp(EXT_EP, (VIP, 80), SYN).build()), links.up);
        assert_eq!(verdict, XDP_PASS, "the stack resolves the neighbour and forwards");
        let p = parse_and_verify(&out);
        assert_eq!((p.source().0, p.destination()), (DOWNLINK_IP, UNRESOLVED), "already translated");
        assert_eq!(ttl(&out), 64, "the stack decrements it");
        assert_eq!(dp.stat(Stat::GatewayToStack), 1);
        let frame = from_uplink(PacketSpec::tcp(EXT_EP, (VIP, 81), SYN).build());
        assert_eq!(dp.run_xdp(GATEWAY, &frame, links.up), (XDP_DROP, frame.clone()));
        assert_eq!(dp.drops(DropReason::NoRoute), 1);
        assert!(dp.flow(EXT_EP, (VIP, 81), TCP).is_none(), "nothing tracked without a route");
    });
}

#[test]
fn a_packet_whose_ttl_would_expire_goes_to_the_stack_untouched() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&[EAST[0]]));
        let mut frame = from_uplink(PacketSpec::tcp(EXT_EP, (VIP, 80), SYN).build());
        frame[ETH_LEN + 8] = 1;
        fix_ip_checksum(&mut frame);
        assert_eq!(dp.run_xdp(GATEWAY, &frame, links.up), (XDP_PASS, frame.clone()), "for its time exceeded");
        assert!(dp.all_ct_entries().is_empty());
    });
}

#[test]
fn icmp_errors_are_translated_both_ways() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::udp(VIP, 53).ready(&[EAST[0]]));
        let (verdict, translated) =
            dp.run_xdp(GATEWAY, &from_uplink(PacketSpec::udp(EXT_EP, (VIP, 53)).build()), links.up);
        assert_eq!(verdict, XDP_REDIRECT);
        let port = parse_and_verify(&translated).sport;
        // A router on the way to the backend: fragmentation needed, to the gateway.
        let err = IcmpErrorSpec::frag_needed(ROUTER, DOWNLINK_IP, 1400, &translated).build();
        let (verdict, out) = dp.run_xdp(GATEWAY, &err, links.dn);
        assert_eq!(verdict, XDP_REDIRECT, "out of the uplink");
        let icmp = parse_icmp_and_verify(&out);
        assert_eq!(
            (icmp.src, icmp.dst, icmp.icmp_type, icmp.code),
            (ROUTER, EXT, 3, 4),
            "the router stays, to the client"
        );
        assert_eq!(icmp.quoted_flow(), (EXT_EP, (VIP, 53)), "quoting the datagram as the client sent it");
        assert_eq!(dp.stat(Stat::IcmpToClient), 1);
        // The client has no socket for a reply: port unreachable, to the ClusterSetIP.
        let reply = PacketSpec::udp((VIP, 53), EXT_EP).build();
        let err = from_uplink(IcmpErrorSpec::about(EXT, VIP, (3, 3), &reply, 8).build());
        let (verdict, out) = dp.run_xdp(GATEWAY, &err, links.up);
        assert_eq!(verdict, XDP_REDIRECT, "to the backend");
        let icmp = parse_icmp_and_verify(&out);
        assert_eq!((icmp.src, icmp.dst), (DOWNLINK_IP, EAST[0].0), "from the gateway to the backend");
        assert_eq!(icmp.quoted_flow(), (EAST[0], (DOWNLINK_IP, port)), "quoting the reply as the backend sent it");
        assert_eq!(dp.stat(Stat::IcmpToBackend), 1);
        // An error about nothing we track.
        let stray = PacketSpec::udp((VIP, 53), (EXT, 1)).build();
        let err = from_uplink(IcmpErrorSpec::about(EXT, VIP, (3, 3), &stray, 8).build());
        assert_eq!(dp.run_xdp(GATEWAY, &err, links.up).0, XDP_DROP);
        assert_eq!(dp.drops(DropReason::IcmpNoFlow), 1);
        // To the gateway's own address, about no flow: the stack's.
        let own = PacketSpec::udp((DOWNLINK_IP, 9), (EAST[0].0, 9)).build();
        let err = IcmpErrorSpec::about(EAST[0].0, DOWNLINK_IP, (3, 3), &own, 8).build();
        assert_eq!(dp.run_xdp(GATEWAY, &err, links.dn), (XDP_PASS, err.clone()));
    });
}

#[test]
fn fragments_follow_their_first_both_ways() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::udp(VIP, 53).ready(&[EAST[0]]));
        let spec = PacketSpec::udp(EXT_EP, (VIP, 53)).with_payload((0..3000u16).map(|i| i.to_le_bytes()[0]).collect());
        let mut out = Vec::new();
        for frag in spec.fragments(1480) {
            let (verdict, o) = dp.run_xdp(GATEWAY, &from_uplink(frag), links.up);
            assert_eq!(verdict, XDP_REDIRECT);
            out.push(o);
        }
        let whole = reassemble_and_verify(&out);
        assert_eq!(whole.destination(), EAST[0], "every fragment to the backend, the checksum right over the datagram");
        assert_eq!(whole.src, DOWNLINK_IP);
        assert_eq!(whole.payload, spec.payload);
        assert_eq!(dp.stat(Stat::FragmentTranslated), 2);
        // The backend's fragmented reply.
        let reply = PacketSpec::udp(EAST[0], (DOWNLINK_IP, whole.sport)).with_payload(spec.payload.clone());
        let mut back = Vec::new();
        for frag in reply.fragments(1480) {
            let (verdict, o) = dp.run_xdp(GATEWAY, &frag, links.dn);
            assert_eq!(verdict, XDP_REDIRECT);
            back.push(o);
        }
        let whole = reassemble_and_verify(&back);
        assert_eq!((whole.source(), whole.destination()), ((VIP, 53), EXT_EP));
        // A later fragment whose first was not seen.
        let other = PacketSpec { ip_id: 0x4321, ..spec.clone() };
        let later = from_uplink(other.fragments(1480).remove(1));
        assert_eq!(dp.run_xdp(GATEWAY, &later, links.up).0, XDP_DROP);
        assert_eq!(dp.drops(DropReason::Fragment), 1);
    });
}

#[test]
fn replies_of_a_pods_own_tc_flow_are_left_to_the_tc_program() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&[EAST[0]]));
        // A pod of this node opens a flow through the tc path.
        let pod = (Ipv4Addr::new(198, 18, 0, 2), 40_000);
        let (verdict, out) = dp.run(program_names::FROM_POD, &PacketSpec::tcp(pod, (VIP, 80), SYN).build());
        assert_eq!(verdict, NEXT);
        let port = parse_and_verify(&out).sport;
        // Its backend's answer arrives on an XDP uplink.
        let answer = PacketSpec::tcp(EAST[0], (pod.0, port), SYN | ACK).build();
        assert_eq!(
            dp.run_xdp(GATEWAY, &answer, links.dn),
            (XDP_PASS, answer.clone()),
            "the pod's egress translates it"
        );
        assert_eq!(dp.stat(Stat::GatewayForwarded), 0);
    });
}

#[test]
fn a_tcp_flow_whose_backend_is_gone_is_reset_from_the_gateway() {
    with_gateway(|dp, links| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&[EAST[0]]));
        let (verdict, _) = dp.run_xdp(GATEWAY, &from_uplink(PacketSpec::tcp(EXT_EP, (VIP, 80), SYN).build()), links.up);
        assert_eq!(verdict, XDP_REDIRECT);
        // The backend's element goes (as after its removal grace).
        let mut forward = dp.flow(EXT_EP, (VIP, 80), TCP).expect("tracked").forward;
        forward.backend_id += 1000;
        dp.set_ct(mcs_tests::datapath::forward_key(EXT_EP, (VIP, 80), TCP), forward);
        let spec = PacketSpec { ack: 4242, ..PacketSpec::tcp(EXT_EP, (VIP, 80), ACK) };
        let (verdict, out) = dp.run_xdp(GATEWAY, &from_uplink(spec.build()), links.up);
        assert_eq!(verdict, XDP_TX);
        assert_rst_for_uplink(&out, &spec);
        assert_eq!(dp.drops(DropReason::BackendGone), 1);
        assert!(dp.flow(EXT_EP, (VIP, 80), TCP).is_none(), "the flow is forgotten");
    });
}
