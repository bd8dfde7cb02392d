//! Translation both ways, and what is left alone.
use etherparse::Ipv4HeaderSlice;
use mcs_common::{CT_STATE_ESTABLISHED, CT_STATE_SYN, CT_STATE_UDP, DatapathConfig, DropReason, Stat, program_names};
use mcs_tests::{
    datapath::{DROP, Datapath, NEXT, ServicePort, reply_key},
    packet::{ACK, ETH_LEN, PacketSpec, SYN, TCP, UDP, parse_and_verify},
};

use super::{BACKENDS, CLIENT, CLIENT_EP, CLIENT_PORT, NOT_A_VIP, OTHER_VIP, VIP, syn, udp};

const FROM_POD: &str = program_names::FROM_POD;
const TO_POD: &str = program_names::TO_POD;

#[test]
fn a_syn_to_a_cluster_set_ip_gets_its_backend_and_a_translated_source_port() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let frame = syn(CLIENT_EP, (VIP, 80));

    let (verdict, out) = dp.run(FROM_POD, &frame);

    assert_eq!(verdict, NEXT, "translated, and on to the next program on the interface");
    let p = parse_and_verify(&out);
    let backend = dp.predicted(CLIENT_EP, (VIP, 80), TCP);
    let port = dp.nat_port(CLIENT_EP, (VIP, 80), TCP, 0);
    assert_eq!(p.destination(), backend, "DNAT target");
    assert_eq!(p.source(), (CLIENT, port), "the client's address, a port of the translated range");
    assert!((1024..=32_767).contains(&port), "{port}");
    assert_eq!((p.payload.as_slice(), out.len()), (b"hello".as_slice(), frame.len()));
    assert_eq!(dp.stat(Stat::ForwardNew), 1);
    let flow = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("tracked");
    assert_eq!((flow.state, flow.backend(), flow.translated_source()), (CT_STATE_SYN, backend, (CLIENT, port)));
    let (key, reply) = flow.reply.expect("reply entry");
    assert_eq!(key, reply_key(backend, (CLIENT, port), TCP), "keyed as the backend will answer");
    assert_eq!(
        (reply.nat_saddr, reply.nat_sport, reply.nat_daddr, reply.nat_dport),
        (mcs_common::ipv4_to_nbo(VIP), 80u16.to_be(), mcs_common::ipv4_to_nbo(CLIENT), CLIENT_PORT.to_be()),
        "answers become ClusterSetIP:80 -> client:40000"
    );
    let stats = dp.service_stats(VIP, 80, TCP);
    assert_eq!((stats.packets, stats.bytes, stats.new_flows, stats.rejected), (1, frame.len() as u64, 1, 0));
}

#[test]
fn the_backends_reply_gets_the_cluster_set_ip_and_the_clients_port_back() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let backend = dp.predicted(CLIENT_EP, (VIP, 80), TCP);
    let port = dp.nat_port(CLIENT_EP, (VIP, 80), TCP, 0);
    assert_eq!(dp.run(FROM_POD, &syn(CLIENT_EP, (VIP, 80))).0, NEXT);

    let reply = PacketSpec::tcp(backend, (CLIENT, port), SYN | ACK).build();
    let (verdict, out) = dp.run(TO_POD, &reply);

    assert_eq!(verdict, NEXT);
    let p = parse_and_verify(&out);
    assert_eq!(p.source(), (VIP, 80), "the client sees the ClusterSetIP");
    assert_eq!(p.destination(), CLIENT_EP, "on the port it sent from");
    assert_eq!(dp.stat(Stat::ReverseNat), 1);
    assert_eq!(dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("flow").state, CT_STATE_ESTABLISHED);
    // Later packets of the client keep both rewrites.
    let (verdict, out) = dp.run(FROM_POD, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build());
    let p = parse_and_verify(&out);
    assert_eq!((verdict, p.source(), p.destination()), (NEXT, (CLIENT, port), backend));
    assert_eq!(dp.stat(Stat::ForwardEstablished), 1);
}

#[test]
fn udp_is_translated_both_ways() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let backend = dp.predicted(CLIENT_EP, (VIP, 53), UDP);
    let port = dp.nat_port(CLIENT_EP, (VIP, 53), UDP, 0);

    let (verdict, out) = dp.run(FROM_POD, &udp(CLIENT_EP, (VIP, 53)));
    assert_eq!(verdict, NEXT);
    let p = parse_and_verify(&out);
    assert_eq!((p.source(), p.destination()), ((CLIENT, port), backend));
    assert_ne!(p.l4_checksum, 0);
    assert_eq!(dp.flow(CLIENT_EP, (VIP, 53), UDP).expect("tracked").state, CT_STATE_UDP);
    assert!(dp.ct_entries(TCP).is_empty(), "UDP flows live in the non-TCP map");
    assert_eq!(dp.ct_entries(UDP).len(), 2);

    let (verdict, out) = dp.run(TO_POD, &udp(backend, (CLIENT, port)));
    let p = parse_and_verify(&out);
    assert_eq!((verdict, p.source(), p.destination()), (NEXT, (VIP, 53), CLIENT_EP));
}

#[test]
fn a_zero_udp_checksum_stays_zero() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let spec = PacketSpec { udp_zero_checksum: true, ..PacketSpec::udp(CLIENT_EP, (VIP, 53)) };

    let (verdict, out) = dp.run(FROM_POD, &spec.build());

    assert_eq!(verdict, NEXT);
    let p = parse_and_verify(&out);
    assert_eq!(p.l4_checksum, 0, "no checksum means no checksum");
    assert_eq!(p.destination(), dp.predicted(CLIENT_EP, (VIP, 53), UDP));
}

#[test]
fn ip_options_shift_the_l4_header_and_are_handled() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    // Two NOPs and an end-of-list, padded: one 32-bit word of options.
    let spec = PacketSpec { ip_options: vec![1, 1, 0, 0], ..PacketSpec::tcp(CLIENT_EP, (VIP, 80), SYN) };
    let (verdict, out) = dp.run(FROM_POD, &spec.build());
    assert_eq!(verdict, NEXT);
    let p = parse_and_verify(&out);
    assert_eq!(p.destination(), dp.predicted(CLIENT_EP, (VIP, 80), TCP));
    assert_eq!(&out[34..38], &[1, 1, 0, 0], "the options stay");
}

#[test]
fn a_port_the_service_does_not_list_is_dropped_and_counted() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    for frame in [syn(CLIENT_EP, (VIP, 81)), udp(CLIENT_EP, (VIP, 80)), PacketSpec::icmp_echo(CLIENT, VIP).build()] {
        let (verdict, out) = dp.run(FROM_POD, &frame);
        assert_eq!(verdict, DROP);
        assert_eq!(out, frame, "a dropped packet is not rewritten");
    }
    assert_eq!(dp.drops(DropReason::UnknownPort), 3);
    assert_eq!(dp.stat(Stat::ForwardNew), 0);
}

#[test]
fn traffic_that_is_not_for_a_service_passes_byte_for_byte() {
    let mut dp = Datapath::load_with(DatapathConfig::DEFAULT);
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let hairpin = mcs_common::DEFAULT_HAIRPIN_ADDR;
    let mut arp = PacketSpec::tcp((CLIENT, 1), (NOT_A_VIP, 2), SYN).build();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let frames = [
        syn(CLIENT_EP, (NOT_A_VIP, 80)),
        udp(CLIENT_EP, (NOT_A_VIP, 53)),
        syn(CLIENT_EP, (OTHER_VIP, 80)),
        PacketSpec::icmp_echo(CLIENT, NOT_A_VIP).build(),
        // To the hairpin address, but no hairpinned flow: not ours.
        PacketSpec::tcp(CLIENT_EP, (hairpin, 80), ACK).build(),
        // A backend answering a port of the translated range that no flow has.
        PacketSpec::tcp(BACKENDS[0], (CLIENT, 61_234), SYN | ACK).build(),
        arp,
    ];
    for frame in &frames {
        for program in [FROM_POD, TO_POD] {
            let (verdict, out) = dp.run(program, frame);
            assert_eq!(verdict, NEXT, "{program}");
            assert_eq!(&out, frame, "{program} changed a packet that is not for a service");
        }
    }
    assert_eq!(dp.total_drops(), 0);
    assert!(dp.all_ct_entries().is_empty(), "nothing tracked");
}

#[test]
fn truncated_packets_are_never_rewritten() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let to_vip = PacketSpec::tcp(CLIENT_EP, (VIP, 80), SYN).with_payload(Vec::new()).build();
    let to_other = PacketSpec::tcp(CLIENT_EP, (NOT_A_VIP, 80), SYN).with_payload(Vec::new()).build();
    // Ethernet (14) + IPv4 (20) + TCP (20) = 54: cut anywhere before the end.
    // The kernel's test_run itself refuses some frames too short for an IPv4
    // header; those can never reach the program, so they are noted, not run.
    let mut ran = Vec::new();
    for len in 14..to_vip.len() {
        let Ok((verdict, out)) = dp.try_run(FROM_POD, &to_vip[..len]) else {
            assert!(len < 34, "test_run refused a {len}-byte frame that holds a whole IPv4 header");
            continue;
        };
        ran.push(len);
        assert_eq!(out, &to_vip[..len], "cut at {len}: rewritten");
        // Without a whole IPv4 header nothing is known; with one, a packet for
        // a ClusterSetIP that cannot be translated is dropped as malformed.
        let expected = if len < 34 { NEXT } else { DROP };
        assert_eq!(verdict, expected, "cut at {len}");

        let (verdict, out) = dp.run(FROM_POD, &to_other[..len]);
        assert_eq!((verdict, out.as_slice()), (NEXT, &to_other[..len]), "cut at {len}, not a VIP");
        let (verdict, out) = dp.run(TO_POD, &to_vip[..len]);
        assert_eq!((verdict, out.as_slice()), (NEXT, &to_vip[..len]), "cut at {len}, reply path");
    }
    assert!((34..54).all(|len| ran.contains(&len)), "every cut inside the L4 header ran: {ran:?}");
    assert_eq!(dp.drops(DropReason::Malformed), (34..54).len() as u64);
    assert!(dp.all_ct_entries().is_empty());
}

/// Sets the IPv4 total length of `frame` and fixes the header checksum, so
/// that only the length is wrong.
fn with_total_length(mut frame: Vec<u8>, total: u16) -> Vec<u8> {
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    frame[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let header = Ipv4HeaderSlice::from_slice(&frame[ETH_LEN..]).expect("an IPv4 header").to_header();
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
    frame
}

#[test]
fn headers_are_bounded_by_the_ipv4_total_length_and_padding_is_left_alone() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let tcp = PacketSpec::tcp(CLIENT_EP, (VIP, 80), SYN).with_payload(Vec::new()).build();
    let udp = udp(CLIENT_EP, (VIP, 53));
    let ip_len = |frame: &[u8]| u16::try_from(frame.len() - ETH_LEN).expect("small");
    let mut udp_long = udp.clone();
    let udp_len = u16::try_from(udp.len() - ETH_LEN - 20 + 1).expect("small");
    udp_long[ETH_LEN + 24..ETH_LEN + 26].copy_from_slice(&udp_len.to_be_bytes());
    let mut udp_short = udp.clone();
    udp_short[ETH_LEN + 24..ETH_LEN + 26].copy_from_slice(&4u16.to_be_bytes());
    let malformed = [
        ("total length past the frame", with_total_length(tcp.clone(), ip_len(&tcp) + 1)),
        ("total length below the IPv4 header", with_total_length(tcp.clone(), 19)),
        ("total length inside the TCP header", with_total_length(tcp.clone(), 30)),
        ("total length of 0 without GSO", with_total_length(tcp.clone(), 0)),
        ("UDP length past the datagram", udp_long),
        ("UDP length below its header", udp_short),
    ];
    for (what, frame) in &malformed {
        let (verdict, out) = dp.run(FROM_POD, frame);
        assert_eq!((verdict, out.as_slice()), (DROP, frame.as_slice()), "{what}: dropped untouched");
    }
    assert_eq!(dp.drops(DropReason::Malformed), malformed.len() as u64);
    assert!(dp.all_ct_entries().is_empty(), "nothing tracked");

    // Ethernet padding after the total length: translated, the padding untouched.
    let padding = [0xa5u8; 12];
    let mut padded = tcp.clone();
    padded.extend_from_slice(&padding);
    let (verdict, out) = dp.run(FROM_POD, &padded);
    assert_eq!(verdict, NEXT);
    assert_eq!(parse_and_verify(&out).destination(), dp.predicted(CLIENT_EP, (VIP, 80), TCP));
    assert_eq!(&out[tcp.len()..], &padding, "the padding is not the packet's");
}
