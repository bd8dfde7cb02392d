//! What a pod may send (module `guard` of the datapath): new flows only from
//! a source the node routes back out of the packet's interface, tracked
//! flows bound to their client's interface, and fail-fast answers and
//! mid-stream pickups within a budget per interface.
//!
//! `test_run` looks routes up in the calling thread's namespace and takes
//! the packet's interface from there: each test makes a namespace with two
//! pod interfaces (veths), `pod0` routing [`CLIENT`] and `pod1` routing
//! [`OTHER_POD`], and runs its packets inside it.
use std::{net::Ipv4Addr, time::Duration};

use mcs_common::{DatapathConfig, DropReason, GUARD_F_SOURCE_FIB, Stat, ifindex_tag, program_names};
use mcs_tests::{
    datapath::{DROP, Datapath, NEXT, REDIRECT, ServicePort},
    netns::{NetNs, unique_prefix},
    packet::{ACK, PacketSpec, SYN, TCP, UDP, parse_and_verify},
};

use super::{BACKENDS, CLIENT, CLIENT_EP, VIP, syn, udp};

const FROM_POD: &str = program_names::FROM_POD;
/// Another pod, behind `pod1`.
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// An address the node routes nowhere.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);

/// A node namespace with the pod interfaces `pod0` and `pod1`.
struct Node {
    ns: NetNs,
    pod0: u32,
    pod1: u32,
}

impl Node {
    fn new(tag: &str) -> Self {
        let ns = NetNs::new(&unique_prefix(tag));
        ns.sysctl("net.ipv4.ip_forward", "1");
        for (iface, pod) in [("pod0", CLIENT), ("pod1", OTHER_POD)] {
            let peer = format!("{iface}p");
            ns.ip(&["link", "add", iface, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["link", "set", &peer, "up"]);
            ns.ip(&["link", "set", iface, "up"]);
            ns.ip(&["route", "add", &format!("{pod}/32"), "dev", iface]);
        }
        let (pod0, pod1) = (ns.ifindex("pod0"), ns.ifindex("pod1"));
        Self { ns, pod0, pod1 }
    }

    /// Runs `f` with a datapath loaded with `config` (and its guard flags)
    /// inside the namespace.
    fn with<T: Send>(&self, config: DatapathConfig, f: impl FnOnce(&mut Datapath) -> T + Send) -> T {
        self.ns.enter(|| f(&mut Datapath::load_guarded(config)))
    }
}

/// The defaults, with the rate limits off unless a test sets them.
const GUARDED: DatapathConfig = DatapathConfig { reject_rate: 0, pickup_rate: 0, ..DatapathConfig::DEFAULT };

#[test]
fn a_new_flow_from_a_source_routed_elsewhere_is_dropped_and_writes_nothing() {
    let node = Node::new("guard-src");
    let (pod0, pod1) = (node.pod0, node.pod1);
    assert_eq!(GUARDED.guard_flags & GUARD_F_SOURCE_FIB, GUARD_F_SOURCE_FIB, "validation is on by default");
    node.with(GUARDED, |dp| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS).affinity(600));
        dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
        dp.program(ServicePort::tcp(VIP, 81));
        // The client from its own interface: translated and tracked there.
        let (verdict, out) = dp.run_on(FROM_POD, pod0, &syn(CLIENT_EP, (VIP, 80)));
        assert_eq!(verdict, NEXT, "the client's own SYN goes through");
        assert!(BACKENDS.contains(&parse_and_verify(&out).destination()), "to a backend");
        let flow = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("the client's flow is tracked");
        assert_eq!(flow.forward.client_ifindex, ifindex_tag(pod0), "bound to pod0");
        let affinity_before = dp.affinity().keys().count();
        assert_eq!(affinity_before, 1, "the client's affinity");

        // Another pod's address from pod0, an address routed nowhere, and
        // the other pod's address from its own interface.
        let spoofed = [
            syn((OTHER_POD, 40_001), (VIP, 80)),
            syn((NOWHERE, 40_002), (VIP, 80)),
            udp((OTHER_POD, 40_003), (VIP, 53)),
            // A service without backends: no RST for someone else either.
            syn((OTHER_POD, 40_004), (VIP, 81)),
        ];
        for (i, frame) in spoofed.iter().enumerate() {
            assert_eq!(dp.run_on(FROM_POD, pod0, frame), (DROP, frame.clone()), "spoofed frame {i} dropped untouched");
        }
        assert_eq!(dp.drops(DropReason::SourceInvalid), 4);
        assert_eq!(dp.stat(Stat::RejectTcp), 0, "nothing answered");
        assert!(dp.flow((OTHER_POD, 40_001), (VIP, 80), TCP).is_none(), "no entry planted for the other pod");
        assert!(dp.flow((NOWHERE, 40_002), (VIP, 80), TCP).is_none());
        assert!(dp.flow((OTHER_POD, 40_003), (VIP, 53), UDP).is_none());
        assert_eq!(dp.affinity().keys().count(), affinity_before, "no affinity planted");
        assert_eq!(dp.all_ct_entries().len(), 2, "only the client's pair");

        // The other pod from its own interface is served.
        let (verdict, _) = dp.run_on(FROM_POD, pod1, &syn((OTHER_POD, 40_001), (VIP, 80)));
        assert_eq!(verdict, NEXT);
        assert_eq!(dp.drops(DropReason::SourceInvalid), 4);
    });
}

#[test]
fn a_tracked_flow_takes_no_packets_of_its_tuple_from_another_interface() {
    let node = Node::new("guard-bind");
    let (pod0, pod1) = (node.pod0, node.pod1);
    node.with(GUARDED, |dp| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
        let (verdict, _) = dp.run_on(FROM_POD, pod0, &syn(CLIENT_EP, (VIP, 80)));
        assert_eq!(verdict, NEXT);
        let before = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("tracked");
        // The client's tuple from pod1 (where the client is not): a FIN
        // that would close the client's flow.
        let fin = PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK | mcs_tests::packet::FIN).build();
        assert_eq!(dp.run_on(FROM_POD, pod1, &fin), (DROP, fin.clone()));
        assert_eq!(dp.drops(DropReason::SourceInvalid), 1);
        let after = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("still tracked");
        assert_eq!(after.forward, before.forward, "the entry is untouched: no flag, no refresh");
        assert_eq!(after.state, before.state);
        // The client's own packets still go through.
        let ack = PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build();
        assert_eq!(dp.run_on(FROM_POD, pod0, &ack).0, NEXT);
    });
}

#[test]
fn a_flow_whose_client_moved_interface_starts_over_on_the_new_one() {
    let node = Node::new("guard-move");
    let (pod0, pod1) = (node.pod0, node.pod1);
    node.with(GUARDED, |dp| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
        assert_eq!(dp.run_on(FROM_POD, pod0, &syn(CLIENT_EP, (VIP, 80))).0, NEXT);
        // The pod is recreated behind pod1 with the same address.
        node.ns.ip(&["route", "replace", &format!("{CLIENT}/32"), "dev", "pod1"]);
        let reused = dp.stat(Stat::CtReused);
        assert_eq!(dp.run_on(FROM_POD, pod1, &syn(CLIENT_EP, (VIP, 80))).0, NEXT, "a new flow on the new interface");
        assert_eq!(dp.stat(Stat::CtReused), reused + 1, "the old entry was replaced");
        let flow = dp.flow(CLIENT_EP, (VIP, 80), TCP).expect("tracked");
        assert_eq!(flow.forward.client_ifindex, ifindex_tag(pod1));
        assert_eq!(dp.drops(DropReason::SourceInvalid), 0);
    });
}

#[test]
fn with_source_validation_off_any_source_is_taken() {
    let node = Node::new("guard-off");
    let pod0 = node.pod0;
    node.with(DatapathConfig { guard_flags: 0, ..GUARDED }, |dp| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
        for src in [CLIENT, OTHER_POD, NOWHERE] {
            assert_eq!(dp.run_on(FROM_POD, pod0, &syn((src, 40_000), (VIP, 80))).0, NEXT, "{src} taken");
        }
        assert_eq!(dp.drops(DropReason::SourceInvalid), 0);
    });
}

#[test]
fn fail_fast_answers_are_limited_per_interface_and_come_back_with_time() {
    let node = Node::new("guard-reject");
    let (pod0, pod1) = (node.pod0, node.pod1);
    let config = DatapathConfig { reject_rate: 10, reject_burst: 5, ..GUARDED };
    node.with(config, |dp| {
        dp.program(ServicePort::tcp(VIP, 81));
        let mut answered = 0;
        for port in 0..20u16 {
            let (verdict, _) = dp.run_on(FROM_POD, pod0, &syn((CLIENT, 41_000 + port), (VIP, 81)));
            assert!(verdict == REDIRECT || verdict == DROP, "answered or dropped, got {verdict}");
            answered += u64::from(verdict == REDIRECT);
        }
        // The burst, and at most one token earned while the loop ran.
        assert!((5..=6).contains(&answered), "a burst of 5 answered, got {answered}");
        assert_eq!(dp.drops(DropReason::RejectLimited), 20 - answered);
        assert_eq!(dp.drops(DropReason::NoBackend), answered, "each packet counted once");
        // Another interface has its own budget.
        let (verdict, _) = dp.run_on(FROM_POD, pod1, &syn((OTHER_POD, 41_000), (VIP, 81)));
        assert_eq!(verdict, REDIRECT, "pod1 is answered while pod0 is over its rate");
        // Ten a second: after 300 ms pod0 has earned about three.
        std::thread::sleep(Duration::from_millis(300));
        let (verdict, _) = dp.run_on(FROM_POD, pod0, &syn((CLIENT, 42_000), (VIP, 81)));
        assert_eq!(verdict, REDIRECT, "credit came back");
    });
}

#[test]
fn mid_stream_pickups_are_limited_per_interface_and_syns_are_not() {
    let node = Node::new("guard-pickup");
    let (pod0, pod1) = (node.pod0, node.pod1);
    let config = DatapathConfig { pickup_rate: 10, pickup_burst: 5, ..GUARDED };
    node.with(config, |dp| {
        dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
        let mut picked = 0;
        for port in 0..50u16 {
            let ack = PacketSpec::tcp((CLIENT, 43_000 + port), (VIP, 80), ACK).build();
            let (verdict, out) = dp.run_on(FROM_POD, pod0, &ack);
            if verdict == DROP {
                assert_eq!(out, ack, "dropped untouched");
            } else {
                assert_eq!(verdict, NEXT);
                picked += 1;
            }
        }
        assert!((5..=6).contains(&picked), "a burst of 5 picked up, got {picked}");
        assert_eq!(dp.drops(DropReason::PickupLimited), 50 - picked);
        assert_eq!(dp.all_ct_entries().len(), 2 * usize::try_from(picked).expect("small"), "no entry for the rest");
        // SYNs are new connections, not pickups; the tracked flows go on.
        assert_eq!(dp.run_on(FROM_POD, pod0, &syn((CLIENT, 44_000), (VIP, 80))).0, NEXT);
        let ack = PacketSpec::tcp((CLIENT, 43_000), (VIP, 80), ACK).build();
        assert_eq!(dp.run_on(FROM_POD, pod0, &ack).0, NEXT, "a picked-up flow's next segment");
        let ack = PacketSpec::tcp((OTHER_POD, 43_000), (VIP, 80), ACK).build();
        assert_eq!(dp.run_on(FROM_POD, pod1, &ack).0, NEXT, "pod1 has its own budget");
        let _ = SYN;
    });
}

/// 80% of the verifier's limit of 1,000,000 instructions walked.
const VERIFIER_BUDGET: u32 = 800_000;

#[test]
fn every_combination_of_guard_settings_passes_the_verifier() {
    // The settings are load-time constants: each combination is a program of
    // its own for the verifier, and each must load.
    for guard_flags in [0, GUARD_F_SOURCE_FIB] {
        for reject_rate in [0, 1000] {
            for pickup_rate in [0, 100] {
                let config = DatapathConfig { guard_flags, reject_rate, pickup_rate, ..DatapathConfig::DEFAULT };
                let dp = Datapath::load_guarded(config);
                let walked = dp.verified_insns(FROM_POD);
                println!(
                    "guard {guard_flags} reject {reject_rate} pickup {pickup_rate}: {walked} instructions verified"
                );
                // A margin below the kernel's limit, so that growth shows here
                // before a change of settings fails to load on a node.
                assert!(walked < VERIFIER_BUDGET, "{walked} instructions verified: within 20% of the kernel's limit");
            }
        }
    }
}
