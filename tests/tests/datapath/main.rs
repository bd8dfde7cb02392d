//! Packet tests of the tc programs with `BPF_PROG_TEST_RUN`, one module per
//! concern. Each test builds frames, programs services through the agent's
//! sync ([`mcs_tests::datapath::Datapath`]) and checks verdicts, rewritten
//! addresses and ports, checksums verified from scratch, counters and
//! conntrack.
mod balancing;
mod capacity;
mod conntrack;
mod failfast;
mod fragments;
mod gateway;
mod guard;
mod hairpin;
mod icmp;
mod maps;
mod nat;
mod tuples;

use std::net::Ipv4Addr;

use mcs_tests::packet::{PacketSpec, SYN};

// The address plan of every test here.
/// The client pod.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client's port of most flows.
const CLIENT_PORT: u16 = 40_000;
/// The client's address and port.
const CLIENT_EP: (Ipv4Addr, u16) = (CLIENT, CLIENT_PORT);
/// The ClusterSetIP of most tests.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// A second ClusterSetIP.
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
/// An address that is no ClusterSetIP.
const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 5);
/// A router on the way to the backends (another node).
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);
/// Backend pods of two clusters, with their target ports.
const BACKENDS: [(Ipv4Addr, u16); 3] = [
    (Ipv4Addr::new(198, 18, 1, 10), 8080),
    (Ipv4Addr::new(198, 18, 1, 11), 8080),
    (Ipv4Addr::new(198, 18, 2, 10), 9090),
];

/// A TCP SYN.
fn syn(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    PacketSpec::tcp(src, dst, SYN).build()
}

/// A UDP datagram.
fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    PacketSpec::udp(src, dst).build()
}
