//! Backend selection: Maglev agreement with the agent's table, backend-set
//! changes, session affinity, terminating and removed backends.
use std::{collections::BTreeMap, net::Ipv4Addr};

use mcs_agent::dataplane::Dataplane as _;
use mcs_common::{
    AffinityKey, BACKEND_F_REMOVED, DropReason, NS_PER_SEC, ServiceKey, Stat, ipv4_from_nbo, ipv4_to_nbo, program_names,
};
use mcs_tests::{
    datapath::{DROP, Datapath, NEXT, REDIRECT, ServicePort, forward_key, monotonic_ns},
    packet::{ACK, PacketSpec, TCP, UDP, parse_and_verify},
};

use super::{BACKENDS, CLIENT, CLIENT_EP, VIP, syn, udp};
use crate::failfast::assert_rst_for;

const FROM_POD: &str = program_names::FROM_POD;

fn destination(dp: &Datapath, frame: &[u8]) -> (Ipv4Addr, u16) {
    let (verdict, out) = dp.run(FROM_POD, frame);
    assert_eq!(verdict, NEXT);
    parse_and_verify(&out).destination()
}

#[test]
fn maglev_agreement_every_new_flow_lands_where_the_agents_table_says() {
    let mut dp = Datapath::load();
    let many: Vec<(Ipv4Addr, u16)> =
        (0..7u8).map(|i| (Ipv4Addr::new(198, 18, 1 + i % 3, 10 + i), 8000 + u16::from(i))).collect();
    dp.program(ServicePort::tcp(VIP, 443).ready(&many));
    dp.program(ServicePort::udp(VIP, 53).ready(&many));
    let mut per_backend: BTreeMap<(Ipv4Addr, u16), u32> = BTreeMap::new();
    let mut flows = 0u32;
    for i in 0..1500u16 {
        let src = (Ipv4Addr::new(198, 18, 0, 2 + u8::try_from(i % 50).expect("small")), 20_000 + i);
        for (port, protocol) in [(443, TCP), (53, UDP)] {
            let frame = if protocol == TCP { syn(src, (VIP, port)) } else { udp(src, (VIP, port)) };
            let expected = dp.predicted(src, (VIP, port), protocol);
            assert_eq!(destination(&dp, &frame), expected, "flow {src:?} -> {port}/{protocol}");
            *per_backend.entry(expected).or_default() += 1;
            flows += 1;
        }
    }
    assert_eq!(per_backend.len(), many.len(), "every backend gets flows");
    eprintln!(
        "maglev agreement: {flows} of {flows} synthetic flows picked the backend of the agent's table; per backend {per_backend:?}"
    );
}

#[test]
fn an_established_flow_keeps_its_backend_when_the_backend_set_changes() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let chosen = destination(&dp, &syn(CLIENT_EP, (VIP, 80)));
    // Add backends: the new table may send this flow's hash elsewhere.
    let more: Vec<_> = (20..30).map(|i| (Ipv4Addr::new(198, 18, 3, i), 7070)).collect();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS).ready(&more));
    let later = destination(&dp, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build());
    assert_eq!(later, chosen, "later packets follow conntrack while their backend exists");
    assert_eq!(dp.stat(Stat::ForwardEstablished), 1);
}

#[test]
fn a_tcp_flow_whose_backend_left_gets_an_rst_and_a_new_syn_starts_over() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let chosen = destination(&dp, &syn(CLIENT_EP, (VIP, 80)));
    let others: Vec<_> = BACKENDS.iter().copied().filter(|b| *b != chosen).collect();
    dp.program(ServicePort::tcp(VIP, 80).ready(&others));

    let spec = PacketSpec { seq: 5000, ack: 123_456, ..PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK) };
    let (verdict, out) = dp.run(FROM_POD, &spec.build());
    assert_eq!(verdict, REDIRECT, "reset, not left pointing at nothing");
    assert_rst_for(&out, &spec);
    assert_eq!(dp.drops(DropReason::BackendGone), 1);
    assert!(dp.flow(CLIENT_EP, (VIP, 80), TCP).is_none(), "the flow is forgotten");
    assert!(dp.all_ct_entries().is_empty(), "both entries");

    // The client's next SYN on the same port is a new connection to a backend that exists.
    assert!(others.contains(&destination(&dp, &syn(CLIENT_EP, (VIP, 80)))));
}

#[test]
fn a_udp_flow_whose_backend_left_moves_to_a_new_backend() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::udp(VIP, 53).ready(&BACKENDS));
    let chosen = destination(&dp, &udp(CLIENT_EP, (VIP, 53)));
    let others: Vec<_> = BACKENDS.iter().copied().filter(|b| *b != chosen).collect();
    dp.program(ServicePort::udp(VIP, 53).ready(&others));

    let now = destination(&dp, &udp(CLIENT_EP, (VIP, 53)));
    assert_eq!(now, dp.predicted(CLIENT_EP, (VIP, 53), UDP));
    assert_ne!(now, chosen);
    assert_eq!(dp.stat(Stat::CtReselected), 1);
    assert_eq!(dp.flow(CLIENT_EP, (VIP, 53), UDP).expect("re-tracked").backend(), now);
}

#[test]
fn a_removed_backend_in_its_grace_keeps_its_flows_and_gets_no_new_ones() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let chosen = destination(&dp, &syn(CLIENT_EP, (VIP, 80)));
    let others: Vec<_> = BACKENDS.iter().copied().filter(|b| *b != chosen).collect();
    // What the sync leaves of a backend that left the slices, in its grace:
    // out of the table, its element flagged.
    dp.program(ServicePort::tcp(VIP, 80).ready(&others).draining(chosen));
    let (id, mut b) = dp
        .dp
        .backends()
        .expect("read")
        .into_iter()
        .find(|(_, b)| (ipv4_from_nbo(b.addr), u16::from_be(b.port)) == chosen)
        .expect("the draining backend");
    b.flags |= BACKEND_F_REMOVED;
    dp.dp.put_backend(id, b).expect("flag it removed");

    assert_eq!(destination(&dp, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build()), chosen);
    for port in 41_000..41_100 {
        assert_ne!(destination(&dp, &syn((CLIENT, port), (VIP, 80))), chosen, "a new flow went to a removed backend");
    }
}

#[test]
fn session_affinity_keeps_a_client_on_its_backend_until_it_expires() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS).affinity(10));
    let first = dp.predicted((CLIENT, 30_000), (VIP, 80), TCP);
    // A source port whose Maglev choice differs from the first connection's.
    let other_port = (30_001..31_000)
        .find(|p| dp.predicted((CLIENT, *p), (VIP, 80), TCP) != first)
        .expect("some port hashes elsewhere");
    assert_eq!(destination(&dp, &syn((CLIENT, 30_000), (VIP, 80))), first, "first connection via Maglev");
    assert_eq!(destination(&dp, &syn((CLIENT, other_port), (VIP, 80))), first, "the second follows the affinity");
    assert_eq!(dp.stat(Stat::AffinityHit), 1);

    // Idle past the timeout: the next connection goes by Maglev again.
    let key = AffinityKey::by_addr(ipv4_to_nbo(CLIENT), dp.service_id(VIP, 80, TCP));
    let mut entry = dp.affinity().get(&key, 0).expect("affinity entry");
    entry.last_seen_ns = monotonic_ns() - 11 * NS_PER_SEC;
    dp.affinity().insert(key, entry, 0).expect("age affinity");
    let port = other_port + 1000;
    assert_eq!(destination(&dp, &syn((CLIENT, port), (VIP, 80))), dp.predicted((CLIENT, port), (VIP, 80), TCP));
    assert_eq!(dp.stat(Stat::AffinityHit), 1, "expired: Maglev decides");
}

#[test]
fn an_affinity_hit_refreshes_the_entry_in_place() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS).affinity(10));
    let first = destination(&dp, &syn((CLIENT, 30_000), (VIP, 80)));
    // Seen 5 s ago: still valid (timeout 10 s).
    let key = AffinityKey::by_addr(ipv4_to_nbo(CLIENT), dp.service_id(VIP, 80, TCP));
    let mut entry = dp.affinity().get(&key, 0).expect("affinity entry");
    let aged = monotonic_ns() - 5 * NS_PER_SEC;
    entry.last_seen_ns = aged;
    dp.affinity().insert(key, entry, 0).expect("age affinity");
    assert_eq!(destination(&dp, &syn((CLIENT, 30_001), (VIP, 80))), first, "the affinity is followed");
    assert_eq!(dp.stat(Stat::AffinityHit), 1);
    let refreshed = dp.affinity().get(&key, 0).expect("affinity entry kept");
    assert!(refreshed.last_seen_ns > aged + 4 * NS_PER_SEC, "last seen set to now: {refreshed:?}, aged {aged}");
    assert_eq!(refreshed.backend_id, entry.backend_id, "same backend");
}

#[test]
fn an_affinity_to_a_backend_that_left_or_is_terminating_is_replaced() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS).affinity(60));
    let first = destination(&dp, &syn((CLIENT, 30_000), (VIP, 80)));
    let key = AffinityKey::by_addr(ipv4_to_nbo(CLIENT), dp.service_id(VIP, 80, TCP));

    // The affinity backend turns terminating while ready ones exist: ignored.
    let rest: Vec<_> = BACKENDS.iter().copied().filter(|b| *b != first).collect();
    dp.program(ServicePort::tcp(VIP, 80).ready(&rest).draining(first).affinity(60));
    let replacement = destination(&dp, &syn((CLIENT, 30_001), (VIP, 80)));
    assert_eq!(replacement, dp.predicted((CLIENT, 30_001), (VIP, 80), TCP));
    assert_ne!(replacement, first);
    assert_eq!(dp.stat(Stat::AffinityHit), 0);

    // The replaced entry holds for the next connection.
    assert_eq!(destination(&dp, &syn((CLIENT, 30_002), (VIP, 80))), replacement, "the new affinity holds");
    assert_eq!(dp.stat(Stat::AffinityHit), 1);

    // The affinity backend leaves: ignored, Maglev decides, and the entry names the new choice.
    let last: Vec<_> = rest.iter().copied().filter(|b| *b != replacement).collect();
    dp.program(ServicePort::tcp(VIP, 80).ready(&last).affinity(60));
    assert_eq!(destination(&dp, &syn((CLIENT, 30_003), (VIP, 80))), last[0], "the only backend left");
    assert_eq!(dp.stat(Stat::AffinityHit), 1, "an affinity to a removed backend is no hit");
    let entry = dp.affinity().get(&key, 0).expect("affinity entry");
    let backends: BTreeMap<u32, _> = dp.dp.backends().expect("read").into_iter().collect();
    assert_eq!(ipv4_from_nbo(backends[&entry.backend_id].addr), last[0].0, "replaced");
}

#[test]
fn a_terminating_backend_gets_no_new_flows_but_keeps_its_established_ones() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let chosen = destination(&dp, &syn(CLIENT_EP, (VIP, 80)));
    let rest: Vec<_> = BACKENDS.iter().copied().filter(|b| *b != chosen).collect();
    dp.program(ServicePort::tcp(VIP, 80).ready(&rest).draining(chosen));

    assert_eq!(destination(&dp, &PacketSpec::tcp(CLIENT_EP, (VIP, 80), ACK).build()), chosen, "established continues");
    for port in 41_000..41_200 {
        assert_ne!(
            destination(&dp, &syn((CLIENT, port), (VIP, 80))),
            chosen,
            "a new flow went to the terminating backend"
        );
    }
}

#[test]
fn when_only_terminating_backends_remain_they_take_new_flows() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).terminating(BACKENDS[0]).terminating(BACKENDS[1]));
    let got = destination(&dp, &syn(CLIENT_EP, (VIP, 80)));
    assert!(BACKENDS[..2].contains(&got), "the KEP-1669 fallback: {got:?}");
}

#[test]
fn a_missing_table_is_dropped_not_forwarded() {
    let mut dp = Datapath::load();
    dp.program(ServicePort::tcp(VIP, 80).ready(&BACKENDS));
    let value = dp.dp.services().expect("read services").into_iter().find(|(k, _)| *k == ServiceKey::new(VIP, 80, TCP));
    let value = value.expect("the port's entry").1;
    // Slots that name no backend (id 0): the table is gone behind the sync's back.
    let zeros = vec![0; value.table_size as usize];
    dp.dp.write_slots(value.table_start, &zeros).expect("clear the table behind the sync's back");
    let frame = syn(CLIENT_EP, (VIP, 80));
    assert_eq!(dp.run(FROM_POD, &frame), (DROP, frame.clone()));
    assert_eq!(dp.drops(DropReason::BackendMissing), 1);
    assert!(dp.ct(&forward_key(CLIENT_EP, (VIP, 80), TCP)).is_none());
}
