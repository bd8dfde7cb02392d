//! End to end through the XDP gateway: a host outside the `ClusterSet`, which
//! runs no agent, reaches pods of two clusters through a `ClusterSetIP` that
//! its network routes to a gateway node.
//!
//! Topology (namespaces this test creates, 198.18.0.0/15 only):
//! - `ext` (198.18.250.2) routes the `ClusterSetIP` range to `node(0)`'s
//!   uplink `up0` (198.18.250.1); it is a plain host, with no agent and no
//!   program of ours;
//! - `node(0)` is a pure gateway node: the agent runs with
//!   `--xdp-interfaces=up0,fab0` and no `--interfaces`. `fab0` is where the
//!   backends' replies come in;
//! - clusters `east` and `west` (the demo's): their nodes have no route to
//!   198.18.250.0/24, so a reply reaches the client only when the gateway has
//!   source-NATed the flow to its own address and reverses it.
//!
//! Two things stand for the wire a real uplink has: the far ends of the
//! veths (`ext`'s `eth0`, the fabric's port `n0`) carry the no-op XDP
//! program, which a veth needs to receive frames sent with
//! `XDP_TX`/`XDP_REDIRECT` (see `mcs_tests::xdp`), and the hosts whose packets
//! the gateway forwards (the external client, the backend pods) send them
//! with complete checksums (`NetNs::disable_tx_checksum`).
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    time::Duration,
};

use mcs_tests::{
    agent::AgentGuard,
    client::{tcp_ask, udp_ask, udp_ask_connected},
    inspect_json,
    manifest::{self, import},
    netns::unique_prefix,
    topology::{EXTERNAL_CLIENT_IP, Topology, UPLINK_IFACE, node_fabric_ip},
    wait_until,
    xdp::XdpPass,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// A service with no endpoints anywhere.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const HTTP: u16 = 80;
const DNS: u16 = 53;
const EAST: usize = 1;
const WEST: usize = 2;
const TIMEOUT: Duration = Duration::from_millis(500);
const METRICS_PORT: u16 = 19465;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo")
}

/// The demo's clusters with an external client, and the no-op XDP program
/// on the far ends of the gateway's veths.
fn build(tag: &str) -> (Topology, XdpPass, String) {
    let prefix = unique_prefix(tag);
    let mut topology = Topology::demo(&prefix);
    topology.add_external_client();
    let pass = XdpPass::attach(&[(topology.external_client(), "eth0"), (topology.fabric(), "n0")]);
    // The hosts whose packets the gateway forwards send complete checksums,
    // as frames from a wire have them (see `NetNs::disable_tx_checksum`).
    topology.external_client().disable_tx_checksum("eth0");
    for c in [EAST, WEST] {
        for p in 0..topology.pods_in(c) {
            topology.pod(c, p).disable_tx_checksum("eth0");
        }
    }
    (topology, pass, prefix)
}

fn start_gateway(topology: &Topology, prefix: &str, uplinks: &str) -> AgentGuard {
    AgentGuard::builder(topology.node(0), prefix)
        .manifests(&examples())
        .cluster_id("local")
        .arg(&format!("--xdp-interfaces={uplinks}"))
        .arg(&format!("--metrics-addr=127.0.0.1:{METRICS_PORT}"))
        .start()
}

fn http_get(topology: &Topology, path: &str) -> String {
    topology.node(0).enter(|| {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to /metrics");
        stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        response
    })
}

fn counter(state: &serde_json::Value, group: &str, name: &str) -> u64 {
    state[group][name].as_u64().unwrap_or(0)
}

#[test]
fn an_external_client_reaches_both_clusters_through_the_xdp_gateway() {
    let (topology, _pass, prefix) = build("gateway");
    let ext = topology.external_client();
    let service = SocketAddrV4::new(VIP, HTTP);

    // Without the gateway the ClusterSetIP leads nowhere (node(0) blackholes it).
    let before = ext.enter(|| tcp_ask(service, TIMEOUT));
    assert!(before.is_err(), "answered before the gateway ran: {before:?}");

    let mut agent = start_gateway(&topology, &prefix, &format!("{UPLINK_IFACE},fab0"));
    manifest::write(
        &agent.manifests,
        "empty.json",
        &import("demo", "empty").ip(EMPTY_VIP).tcp("http", HTTP).udp("dns", DNS),
    );
    agent.wait_table(service, "TCP", &["east", "west"]);

    // 50 connections: every backend of both clusters answers, and the
    // client's socket has the ClusterSetIP as its peer. The first ones may
    // meet an unresolved neighbour on the gateway (handed to the stack).
    let answers = ext.enter(|| (0..50).map(|_| tcp_ask(service, Duration::from_secs(2))).collect::<Vec<_>>());
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (i, answer) in answers.into_iter().enumerate() {
        let (identity, peer) = answer.unwrap_or_else(|e| panic!("connection {i} through the gateway: {e}"));
        assert_eq!(peer, SocketAddr::V4(service), "connection {i} peer");
        *per_backend.entry(identity).or_default() += 1;
    }
    let expected: Vec<String> =
        [(EAST, 0), (EAST, 1), (WEST, 0), (WEST, 1)].iter().map(|(c, p)| topology.identity(*c, *p)).collect();
    assert_eq!(per_backend.keys().cloned().collect::<Vec<_>>(), expected, "answers per backend: {per_backend:?}");

    // UDP, answered from the ClusterSetIP.
    let (identity, from) = ext
        .enter(|| udp_ask(SocketAddrV4::new(VIP, DNS), Duration::from_secs(2)))
        .expect("UDP answer through the gateway");
    assert!(expected.contains(&identity), "UDP answered by {identity}");
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(VIP, DNS)));

    // The flows are the gateway's: source-NATed to node(0)'s fabric address.
    let flows = inspect_json(&agent.pin_path, &["--conntrack"]);
    let flows = flows["conntrack"].as_array().expect("inspect --conntrack lists flows");
    let ours: Vec<&serde_json::Value> = flows
        .iter()
        .filter(|f| f["client"].as_str().is_some_and(|c| c.starts_with(&format!("{EXTERNAL_CLIENT_IP}:"))))
        .collect();
    assert!(ours.len() >= 50, "gateway flows in inspect: {}", ours.len());
    let nat = format!("{}:", node_fabric_ip(0));
    for f in &ours {
        assert_eq!(f["gateway"].as_bool(), Some(true), "flow not marked as the gateway's: {f}");
        assert!(
            f["translatedClient"].as_str().is_some_and(|t| t.starts_with(&nat)),
            "flow not source-NATed to {nat}: {f}"
        );
    }

    // A port the import does not list is dropped (and counted); the service
    // without endpoints is refused at once, not left to time out.
    let drops_before = counter(&inspect_json(&agent.pin_path, &[]), "drops", "unknown-port");
    let unlisted =
        ext.enter(|| (tcp_ask(SocketAddrV4::new(VIP, 81), TIMEOUT), udp_ask(SocketAddrV4::new(VIP, 54), TIMEOUT)));
    assert!(unlisted.0.is_err(), "TCP/81 answered: {:?}", unlisted.0);
    assert!(unlisted.1.is_err(), "UDP/54 answered: {:?}", unlisted.1);
    let state = wait_until(Duration::from_secs(2), Duration::from_millis(50), "unknown-port drops counted", || {
        let state = inspect_json(&agent.pin_path, &[]);
        if counter(&state, "drops", "unknown-port") >= drops_before + 2 { Ok(state) } else { Err(state.to_string()) }
    });
    let refused_tcp = ext.enter(|| tcp_ask(SocketAddrV4::new(EMPTY_VIP, HTTP), Duration::from_secs(3)));
    assert_eq!(
        refused_tcp.as_ref().map_err(std::io::Error::kind).err(),
        Some(ErrorKind::ConnectionRefused),
        "TCP to a service without endpoints: {refused_tcp:?}"
    );
    let refused_udp = ext.enter(|| udp_ask_connected(SocketAddrV4::new(EMPTY_VIP, DNS), Duration::from_secs(3)));
    assert_eq!(
        refused_udp.as_ref().map_err(std::io::Error::kind).err(),
        Some(ErrorKind::ConnectionRefused),
        "UDP to a service without endpoints: {refused_udp:?}"
    );

    // The counters say where the packets went.
    let forwarded = counter(&state, "stats", "gateway-forwarded");
    let to_stack = counter(&state, "stats", "gateway-to-stack");
    let reversed = counter(&state, "stats", "reverse-nat");
    println!("gateway-forwarded {forwarded}, gateway-to-stack {to_stack}, reverse-nat {reversed}");
    assert!(forwarded > 100, "packets forwarded from XDP: {forwarded}");
    assert!(reversed > 50, "replies reversed: {reversed}");

    // /metrics shows the uplinks and their mode.
    let metrics = http_get(&topology, "/metrics");
    for line in [
        format!("mcs_xdp_interfaces_attached{{interface=\"{UPLINK_IFACE}\",mode=\"xdp-native\"}} 1"),
        "mcs_xdp_interfaces_attached{interface=\"fab0\",mode=\"xdp-native\"} 1".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "/metrics lacks {line}");
    }
    agent.assert_running();
}

/// The XDP program attached to an interface, as `ip -d link` shows it (`None`: none).
fn xdp_program(topology: &Topology, interface: &str) -> Option<String> {
    let out = topology.node(0).ip(&["-d", "-j", "link", "show", "dev", interface]);
    let links: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j link: {e}: {out}"));
    let xdp = &links[0]["xdp"];
    (!xdp.is_null()).then(|| xdp["prog"]["id"].to_string())
}

#[test]
fn an_uplink_with_another_xdp_program_is_left_alone() {
    let (topology, _pass, prefix) = build("gwbusy");
    // Someone else's XDP program on the uplink.
    let _theirs = XdpPass::attach(&[(topology.node(0), UPLINK_IFACE)]);
    let theirs = xdp_program(&topology, UPLINK_IFACE).expect("the other program is attached");

    let mut agent = start_gateway(&topology, &prefix, &format!("{UPLINK_IFACE},fab0"));
    agent.wait_table(SocketAddrV4::new(VIP, HTTP), "TCP", &["east", "west"]);
    let metrics = wait_until(Duration::from_secs(5), Duration::from_millis(100), "fab0 attached", || {
        let m = http_get(&topology, "/metrics");
        if m.contains("mcs_xdp_interfaces_attached{interface=\"fab0\"") { Ok(m) } else { Err(m) }
    });
    assert_eq!(xdp_program(&topology, UPLINK_IFACE), Some(theirs), "the other program was replaced");
    assert!(
        !metrics.contains(&format!("mcs_xdp_interfaces_attached{{interface=\"{UPLINK_IFACE}\"")),
        "the agent claims the busy uplink"
    );
    let answer = topology.external_client().enter(|| tcp_ask(SocketAddrV4::new(VIP, HTTP), TIMEOUT));
    assert!(answer.is_err(), "translated on an uplink the gateway is not on: {answer:?}");
    agent.assert_running();
}
