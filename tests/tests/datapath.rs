//! Packet tests of the tc programs with `BPF_PROG_TEST_RUN`.
//!
//! Each test has three phases, as in Cilium's `bpf/tests`:
//! 1. build: craft the frame ([`PacketSpec`]);
//! 2. setup: fill the maps with the helpers below;
//! 3. check: verdict, rewritten addresses and ports, checksums verified from
//!    scratch ([`parse_and_verify`]), counters and conntrack.
//!
//! Every test loads its own copy of the object with private (unpinned) maps.
use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use mcs_agent::ebpf::{self, LoadOptions};
use mcs_common::{
    Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CtKey, CtValue, DropReason, SERVICE_F_WILDCARD, ServiceKey, ServiceValue,
    Stat, flow_hash, ipv4_to_nbo, map_names, program_names, proto, slot_for_hash,
};
use mcs_tests::packet::{ACK, PacketSpec, SYN, parse_and_verify};

// Fixtures: the address plan of every test here.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_PORT: u16 = 40_000;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 5);
const BACKENDS: [(Ipv4Addr, u16); 3] = [
    (Ipv4Addr::new(198, 18, 1, 10), 8080),
    (Ipv4Addr::new(198, 18, 1, 11), 8080),
    (Ipv4Addr::new(198, 18, 2, 10), 9090),
];

/// `TC_ACT_UNSPEC` as `test_run` reports it: not ours, next program decides.
const NEXT: u32 = u32::MAX;
/// `TC_ACT_OK`: translated.
const PASS: u32 = 0;
/// `TC_ACT_SHOT`.
const DROP: u32 = 2;

struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    fn load() -> Self {
        let ebpf = ebpf::load(&LoadOptions::default()).expect("load the embedded object (are you root?)");
        Self { ebpf }
    }

    fn services(&mut self) -> HashMap<&mut MapData, ServiceKey, ServiceValue> {
        HashMap::try_from(self.ebpf.map_mut(map_names::SERVICES).expect("services map")).expect("hash map")
    }

    fn backends(&mut self) -> HashMap<&mut MapData, u32, Backend> {
        HashMap::try_from(self.ebpf.map_mut(map_names::BACKENDS).expect("backends map")).expect("hash map")
    }

    fn conntrack(&self) -> HashMap<&MapData, CtKey, CtValue> {
        HashMap::try_from(self.ebpf.map(map_names::CONNTRACK).expect("ct map")).expect("lru hash map")
    }

    /// Programs a service port whose slots name `backends`, in order, with
    /// backend ids starting at `first_id`.
    fn service(&mut self, vip: Ipv4Addr, port: u16, protocol: u8, backends: &[(Ipv4Addr, u16)], first_id: u32) {
        for (i, (ip, bport)) in backends.iter().enumerate() {
            let id = first_id + u32::try_from(i).expect("few backends");
            self.backends().insert(id, Backend::new(*ip, *bport, protocol, 0, 1), 0).expect("write backend");
            let slot = u16::try_from(i + 1).expect("few backends");
            let value = ServiceValue { backend_id: id, service_id: 7, ..ServiceValue::default() };
            self.services().insert(ServiceKey::slot(vip, port, protocol, slot), value, 0).expect("write slot");
        }
        let master = ServiceValue {
            count: u16::try_from(backends.len()).expect("few backends"),
            service_id: 7,
            ..ServiceValue::default()
        };
        self.services().insert(ServiceKey::master(vip, port, protocol), master, 0).expect("write master");
        let wildcard = ServiceValue { flags: SERVICE_F_WILDCARD, ..ServiceValue::default() };
        self.services().insert(ServiceKey::wildcard(vip), wildcard, 0).expect("write wildcard");
    }

    fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(program, frame)
            .unwrap_or_else(|e| panic!("test_run of {program} on a {}-byte frame: {e}", frame.len()))
    }

    fn try_run(&self, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let prog: &SchedClassifier = self.ebpf.program(program).expect("program").try_into().expect("tc program");
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    fn counter(&self, map: &str, index: u32) -> u64 {
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(map).expect("counter map")).expect("per-cpu array");
        array.get(&index, 0).expect("read counter").iter().sum()
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.counter(map_names::DROPS, reason as u32)
    }

    fn stat(&self, stat: Stat) -> u64 {
        self.counter(map_names::STATS, stat as u32)
    }

    fn total_drops(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.drops(*r)).sum()
    }
}

/// The backend the datapath must pick for a new flow, predicted in userspace.
fn predicted(
    src: (Ipv4Addr, u16),
    vip: (Ipv4Addr, u16),
    protocol: u8,
    backends: &[(Ipv4Addr, u16)],
) -> (Ipv4Addr, u16) {
    let hash = flow_hash(ipv4_to_nbo(src.0), ipv4_to_nbo(vip.0), src.1.to_be(), vip.1.to_be(), protocol);
    let slot = slot_for_hash(hash, u16::try_from(backends.len()).expect("few backends"));
    backends[usize::from(slot) - 1]
}

#[test]
fn tcp_syn_to_cluster_set_ip_is_dnated_to_the_chosen_backend() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &BACKENDS, 1);
    let frame = PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 80), SYN).build();

    let (verdict, out) = dp.run(program_names::FROM_POD, &frame);

    assert_eq!(verdict, PASS);
    let expected = predicted((CLIENT, CLIENT_PORT), (VIP, 80), proto::TCP, &BACKENDS);
    let p = parse_and_verify(&out);
    assert_eq!((p.dst, p.dport), expected, "DNAT target");
    assert_eq!((p.src, p.sport), (CLIENT, CLIENT_PORT), "source untouched");
    assert_eq!(p.payload, b"hello");
    assert_eq!(out.len(), frame.len());
    assert_eq!(dp.stat(Stat::ForwardNew), 1);
    // Both conntrack entries exist: forward and reply.
    let ct = dp.conntrack();
    let forward = CtKey {
        saddr: ipv4_to_nbo(CLIENT),
        daddr: ipv4_to_nbo(VIP),
        sport: CLIENT_PORT.to_be(),
        dport: 80u16.to_be(),
        proto: proto::TCP,
        dir: CT_DIR_FORWARD,
        pad: [0; 2],
    };
    let entry = ct.get(&forward, 0).expect("forward entry");
    assert_eq!((entry.nat_addr, entry.nat_port), (ipv4_to_nbo(expected.0), expected.1.to_be()));
    let reply = CtKey {
        saddr: ipv4_to_nbo(expected.0),
        daddr: ipv4_to_nbo(CLIENT),
        sport: expected.1.to_be(),
        dport: CLIENT_PORT.to_be(),
        proto: proto::TCP,
        dir: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let entry = ct.get(&reply, 0).expect("reply entry");
    assert_eq!((entry.nat_addr, entry.nat_port), (ipv4_to_nbo(VIP), 80u16.to_be()));
}

#[test]
fn backend_reply_is_reverse_nated_to_the_cluster_set_ip() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &BACKENDS, 1);
    let (backend_ip, backend_port) = predicted((CLIENT, CLIENT_PORT), (VIP, 80), proto::TCP, &BACKENDS);
    let (verdict, _) = dp.run(program_names::FROM_POD, &PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 80), SYN).build());
    assert_eq!(verdict, PASS);

    let reply = PacketSpec::tcp((backend_ip, backend_port), (CLIENT, CLIENT_PORT), SYN | ACK).build();
    let (verdict, out) = dp.run(program_names::TO_POD, &reply);

    assert_eq!(verdict, PASS);
    let p = parse_and_verify(&out);
    assert_eq!((p.src, p.sport), (VIP, 80), "the client sees the ClusterSetIP");
    assert_eq!((p.dst, p.dport), (CLIENT, CLIENT_PORT));
    assert_eq!(dp.stat(Stat::ReverseNat), 1);
}

#[test]
fn udp_is_translated_both_ways() {
    let mut dp = Datapath::load();
    dp.service(VIP, 53, proto::UDP, &BACKENDS, 1);
    let request = PacketSpec::udp((CLIENT, CLIENT_PORT), (VIP, 53)).build();
    let expected = predicted((CLIENT, CLIENT_PORT), (VIP, 53), proto::UDP, &BACKENDS);

    let (verdict, out) = dp.run(program_names::FROM_POD, &request);
    assert_eq!(verdict, PASS);
    let p = parse_and_verify(&out);
    assert_eq!((p.dst, p.dport), expected);
    assert_ne!(p.l4_checksum, 0);

    let reply = PacketSpec::udp(expected, (CLIENT, CLIENT_PORT)).build();
    let (verdict, out) = dp.run(program_names::TO_POD, &reply);
    assert_eq!(verdict, PASS);
    let p = parse_and_verify(&out);
    assert_eq!((p.src, p.sport), (VIP, 53));
}

#[test]
fn a_zero_udp_checksum_stays_zero() {
    let mut dp = Datapath::load();
    dp.service(VIP, 53, proto::UDP, &BACKENDS, 1);
    let spec = PacketSpec { udp_zero_checksum: true, ..PacketSpec::udp((CLIENT, CLIENT_PORT), (VIP, 53)) };

    let (verdict, out) = dp.run(program_names::FROM_POD, &spec.build());

    assert_eq!(verdict, PASS);
    let p = parse_and_verify(&out);
    assert_eq!(p.l4_checksum, 0, "no checksum means no checksum");
    assert_eq!((p.dst, p.dport), predicted((CLIENT, CLIENT_PORT), (VIP, 53), proto::UDP, &BACKENDS));
}

#[test]
fn a_port_the_service_does_not_list_is_dropped_and_counted() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &BACKENDS, 1);
    for frame in [
        PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 81), SYN).build(),
        PacketSpec::udp((CLIENT, CLIENT_PORT), (VIP, 80)).build(),
        PacketSpec::icmp_echo(CLIENT, VIP).build(),
    ] {
        let (verdict, out) = dp.run(program_names::FROM_POD, &frame);
        assert_eq!(verdict, DROP);
        assert_eq!(out, frame, "a dropped packet is not rewritten");
    }
    assert_eq!(dp.drops(DropReason::UnknownPort), 3);
    assert_eq!(dp.stat(Stat::ForwardNew), 0);
}

#[test]
fn traffic_that_is_not_for_a_service_passes_byte_for_byte() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &BACKENDS, 1);
    let mut arp = PacketSpec::tcp((CLIENT, 1), (NOT_A_VIP, 2), SYN).build();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let frames = [
        PacketSpec::tcp((CLIENT, CLIENT_PORT), (NOT_A_VIP, 80), SYN).build(),
        PacketSpec::udp((CLIENT, CLIENT_PORT), (NOT_A_VIP, 53)).build(),
        PacketSpec::tcp((CLIENT, CLIENT_PORT), (OTHER_VIP, 80), SYN).build(),
        PacketSpec::icmp_echo(CLIENT, NOT_A_VIP).build(),
        arp,
    ];
    for frame in &frames {
        for program in [program_names::FROM_POD, program_names::TO_POD] {
            let (verdict, out) = dp.run(program, frame);
            assert_eq!(verdict, NEXT, "{program}");
            assert_eq!(&out, frame, "{program} changed a packet that is not for a service");
        }
    }
    assert_eq!(dp.total_drops(), 0);
    assert_eq!(dp.conntrack().keys().count(), 0, "nothing tracked");
}

#[test]
fn truncated_packets_are_never_rewritten() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &BACKENDS, 1);
    let to_vip = PacketSpec { payload: Vec::new(), ..PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 80), SYN) }.build();
    let to_other =
        PacketSpec { payload: Vec::new(), ..PacketSpec::tcp((CLIENT, CLIENT_PORT), (NOT_A_VIP, 80), SYN) }.build();
    // Ethernet (14) + IPv4 (20) + TCP (20) = 54: cut anywhere before the end.
    // The kernel's test_run itself refuses some frames too short for an IPv4
    // header; those can never reach the program, so they are noted, not run.
    let mut ran = Vec::new();
    for len in 14..to_vip.len() {
        let Ok((verdict, out)) = dp.try_run(program_names::FROM_POD, &to_vip[..len]) else {
            assert!(len < 34, "test_run refused a {len}-byte frame that holds a whole IPv4 header");
            continue;
        };
        ran.push(len);
        assert_eq!(out, &to_vip[..len], "cut at {len}: rewritten");
        // Without a whole IPv4 header nothing is known; with one, a packet for
        // a ClusterSetIP that cannot be translated is dropped as malformed.
        let expected = if len < 34 { NEXT } else { DROP };
        assert_eq!(verdict, expected, "cut at {len}");

        let (verdict, out) = dp.run(program_names::FROM_POD, &to_other[..len]);
        assert_eq!((verdict, out.as_slice()), (NEXT, &to_other[..len]), "cut at {len}, not a VIP");
        let (verdict, out) = dp.run(program_names::TO_POD, &to_vip[..len]);
        assert_eq!((verdict, out.as_slice()), (NEXT, &to_vip[..len]), "cut at {len}, reply path");
    }
    assert!((34..54).all(|len| ran.contains(&len)), "every cut inside the L4 header ran: {ran:?}");
    assert_eq!(dp.drops(DropReason::Malformed), (34..54).len() as u64);
    assert_eq!(dp.conntrack().keys().count(), 0);
}

#[test]
fn fragments_to_a_cluster_set_ip_are_dropped() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::UDP, &BACKENDS, 1);
    let first = PacketSpec { frag: 0x2000, ..PacketSpec::udp((CLIENT, CLIENT_PORT), (VIP, 80)) }.build();
    let later = PacketSpec { frag: 0x0010, ..PacketSpec::udp((CLIENT, CLIENT_PORT), (VIP, 80)) }.build();
    for frame in [first, later] {
        let (verdict, out) = dp.run(program_names::FROM_POD, &frame);
        assert_eq!((verdict, &out), (DROP, &frame));
    }
    assert_eq!(dp.drops(DropReason::Fragment), 2);
}

#[test]
fn a_service_without_backends_drops_new_connections() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &[], 1);
    let frame = PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 80), SYN).build();
    let (verdict, _) = dp.run(program_names::FROM_POD, &frame);
    assert_eq!(verdict, DROP);
    assert_eq!(dp.drops(DropReason::NoBackend), 1);
}

#[test]
fn ip_options_shift_the_l4_header_and_are_handled() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &BACKENDS, 1);
    // Two NOPs and an end-of-list, padded: one 32-bit word of options.
    let spec = PacketSpec { ip_options: vec![1, 1, 0, 0], ..PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 80), SYN) };
    let (verdict, out) = dp.run(program_names::FROM_POD, &spec.build());
    assert_eq!(verdict, PASS);
    let p = parse_and_verify(&out);
    assert_eq!((p.dst, p.dport), predicted((CLIENT, CLIENT_PORT), (VIP, 80), proto::TCP, &BACKENDS));
}

#[test]
fn an_established_flow_keeps_its_backend_when_the_backend_set_changes() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &BACKENDS, 1);
    let chosen = predicted((CLIENT, CLIENT_PORT), (VIP, 80), proto::TCP, &BACKENDS);
    let (verdict, _) = dp.run(program_names::FROM_POD, &PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 80), SYN).build());
    assert_eq!(verdict, PASS);

    // Replace the backend set with one that no longer holds the chosen backend.
    let others: Vec<_> = BACKENDS.iter().copied().filter(|b| *b != chosen).collect();
    dp.service(VIP, 80, proto::TCP, &others, 10);

    let (verdict, out) =
        dp.run(program_names::FROM_POD, &PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 80), ACK).build());
    assert_eq!(verdict, PASS);
    let p = parse_and_verify(&out);
    assert_eq!((p.dst, p.dport), chosen, "later packets follow conntrack, not the new set");
    assert_eq!(dp.stat(Stat::ForwardEstablished), 1);

    // A new flow uses the new set.
    let (_, out) = dp.run(program_names::FROM_POD, &PacketSpec::tcp((CLIENT, CLIENT_PORT + 1), (VIP, 80), SYN).build());
    let p = parse_and_verify(&out);
    assert_eq!((p.dst, p.dport), predicted((CLIENT, CLIENT_PORT + 1), (VIP, 80), proto::TCP, &others));
}

#[test]
fn new_flows_land_where_userspace_predicts_and_reach_every_backend() {
    let mut dp = Datapath::load();
    dp.service(VIP, 443, proto::TCP, &BACKENDS, 1);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..64u16 {
        let src = (Ipv4Addr::new(198, 18, 0, 2 + u8::try_from(i % 8).expect("small")), 30_000 + i);
        let (verdict, out) = dp.run(program_names::FROM_POD, &PacketSpec::tcp(src, (VIP, 443), SYN).build());
        assert_eq!(verdict, PASS);
        let p = parse_and_verify(&out);
        assert_eq!((p.dst, p.dport), predicted(src, (VIP, 443), proto::TCP, &BACKENDS), "flow {src:?}");
        seen.insert((p.dst, p.dport));
    }
    assert_eq!(seen.len(), BACKENDS.len(), "every backend gets flows");
}

#[test]
fn a_slot_naming_a_missing_backend_is_dropped_not_forwarded() {
    let mut dp = Datapath::load();
    dp.service(VIP, 80, proto::TCP, &BACKENDS, 1);
    for id in 1..=3 {
        dp.backends().remove(&id).expect("remove backend");
    }
    let frame = PacketSpec::tcp((CLIENT, CLIENT_PORT), (VIP, 80), SYN).build();
    let (verdict, out) = dp.run(program_names::FROM_POD, &frame);
    assert_eq!((verdict, &out), (DROP, &frame));
    assert_eq!(dp.drops(DropReason::BackendMissing), 1);
}
