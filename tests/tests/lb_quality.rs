//! Load-balancing quality end to end (ISSUE-4's integration tests): session affinity, fail-fast,
//! conntrack across backend changes, terminating endpoints, locality and hairpin, with real
//! sockets between network namespaces and the agent on the client's node (cluster 0, `local`).
//!
//! Addresses: pods 198.18.<cluster>.<10+pod>, the client 198.18.0.2 (and 198.18.0.3..=9 where a
//! test needs several client IPs), `ClusterSetIPs` 198.19.4.x, the hairpin address
//! 198.19.255.1. Every wait is bounded; guards remove namespaces, processes, pins and manifest
//! directories on drop, also when a test panics.
use std::{
    collections::BTreeSet,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use mcs_tests::{
    agent::AgentGuard,
    client::{HeldStream, ServerInfo, cluster_of, ping_all, tcp_info, tcp_info_from, udp_ask_connected, udp_info},
    inspect_json, inspected_backends,
    manifest::{self, EndpointConditions, ImportBuilder, ManifestDir, NOT_READY, READY, SliceBuilder, TERMINATING},
    netns::unique_prefix,
    topology::{ClusterSpec, Topology, TopologySpec},
    wait_inspect, wait_table_clusters, wait_until,
};

const NS: &str = "lbq";
const TIMEOUT: Duration = Duration::from_secs(1);
const CONVERGE: Duration = Duration::from_secs(15);
const PAUSE: Duration = Duration::from_millis(100);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const HAIRPIN_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);

/// Builds cluster 0 `local` (the client and `local_pods` backends) and then `clusters`
/// (name, pods); every backend pod serves 8080/TCP and 5353/UDP.
fn build(tag: &str, local_pods: usize, clusters: &[(&str, usize)]) -> (Topology, String) {
    let prefix = unique_prefix(tag);
    let mut spec = vec![ClusterSpec::new("local", local_pods)];
    spec.extend(clusters.iter().map(|(name, pods)| ClusterSpec::new(name, *pods)));
    let mut topology = Topology::build(&prefix, &TopologySpec { clusters: spec });
    let ports: Vec<(&[u16], &[u16])> = (0..topology.clusters()).map(|_| (&[TCP_PORT][..], &[UDP_PORT][..])).collect();
    topology.start_servers_per_cluster(&ports);
    (topology, prefix)
}

/// Every pod address of `cluster`.
fn pod_ips(topology: &Topology, cluster: usize) -> Vec<Ipv4Addr> {
    (0..topology.pods_in(cluster)).map(|j| topology.pod_ip(cluster, j)).collect()
}

/// An import with one port `http` 80/TCP (and `dns` 53/UDP).
fn import(name: &str, ip: Ipv4Addr) -> ImportBuilder {
    manifest::import(NS, name).ip(ip).tcp("http", 80).udp("dns", 53)
}

/// A slice of `cluster` for `service` with the given endpoints, on the servers' ports.
fn slice(service: &str, cluster: &str, endpoints: &[(Ipv4Addr, EndpointConditions)]) -> SliceBuilder {
    manifest::slice(NS, service, cluster).tcp("http", TCP_PORT).udp("dns", UDP_PORT).endpoints(endpoints)
}

/// A slice of `cluster` (topology index `c`) for `service` with all its pods ready.
fn ready_slice(topology: &Topology, service: &str, c: usize) -> SliceBuilder {
    let eps: Vec<(Ipv4Addr, EndpointConditions)> = pod_ips(topology, c).into_iter().map(|ip| (ip, READY)).collect();
    slice(service, topology.cluster_name(c), &eps)
}

fn start_agent(topology: &Topology, prefix: &str, dir: &ManifestDir, interfaces: &str, extra: &[&str]) -> AgentGuard {
    AgentGuard::start_with_args(topology.node(0), prefix, dir.path(), interfaces, "local", extra)
}

/// `n` TCP `info` exchanges with `vip` from the client pod.
fn tcp_many(topology: &Topology, vip: SocketAddrV4, n: usize) -> Vec<io::Result<ServerInfo>> {
    topology.client().enter(|| (0..n).map(|_| tcp_info(vip, TIMEOUT)).collect())
}

/// `n` TCP `info` exchanges that must all succeed, with `vip` as the peer the client sees.
fn tcp_many_ok(topology: &Topology, vip: SocketAddrV4, n: usize, when: &str) -> Vec<ServerInfo> {
    tcp_many(topology, vip, n)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let info = r.unwrap_or_else(|e| panic!("{when}: TCP connection {i} to {vip}: {e}"));
            assert_eq!(info.server, SocketAddr::V4(vip), "{when}: connection {i} peer");
            info
        })
        .collect()
}

/// Waits until a batch of 10 TCP connections to `vip` all succeed and satisfy `ok`.
fn converge(
    topology: &Topology,
    agent: &mut AgentGuard,
    vip: SocketAddrV4,
    what: &str,
    ok: impl Fn(&ServerInfo) -> bool,
) {
    wait_until(CONVERGE, PAUSE, what, || {
        agent.assert_running();
        let bad: Vec<String> = tcp_many(topology, vip, 10)
            .into_iter()
            .filter_map(|r| match r {
                Ok(info) if ok(&info) => None,
                Ok(info) => Some(format!("unwanted answer {info:?}")),
                Err(e) => Some(e.to_string()),
            })
            .collect();
        if bad.is_empty() { Ok(()) } else { Err(format!("{bad:?}")) }
    });
}

fn identities(answers: &[ServerInfo]) -> BTreeSet<String> {
    answers.iter().map(|a| a.identity.clone()).collect()
}

fn clusters(answers: &[ServerInfo]) -> BTreeSet<String> {
    answers.iter().map(|a| cluster_of(&a.identity).to_owned()).collect()
}

/// An event counter of `mcs-agent inspect` (`stats`, `MCS_STATS`) or a drop reason (`drops`).
fn counter(state: &serde_json::Value, group: &str, name: &str) -> u64 {
    state[group][name].as_u64().unwrap_or_else(|| panic!("inspect has no {group}.{name}: {state:#}"))
}

/// The service port `ip:port/protocol` in `mcs-agent inspect` output.
fn inspected_service<'a>(
    state: &'a serde_json::Value,
    ip: Ipv4Addr,
    port: u16,
    protocol: &str,
) -> &'a serde_json::Value {
    state["services"]
        .as_array()
        .and_then(|s| {
            s.iter().find(|x| x["ip"] == ip.to_string().as_str() && x["port"] == port && x["protocol"] == protocol)
        })
        .unwrap_or_else(|| panic!("inspect lists no {ip}:{port}/{protocol}: {state:#}"))
}

/// The backend `ip:port` of an inspected service port.
fn inspected_backend(service: &serde_json::Value, ip: Ipv4Addr, port: u16) -> &serde_json::Value {
    service["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|x| x["ip"] == ip.to_string().as_str() && x["port"] == port))
        .unwrap_or_else(|| panic!("no backend {ip}:{port} in {service:#}"))
}

// ---------------------------------------------------------------------------------------------

/// `lbq/sticky` has `sessionAffinity: ClientIP` with `timeoutSeconds: 2` and four backends.
/// Seven client addresses each connect repeatedly, gaps below the timeout (one of 1.3 s):
/// every address keeps one backend, for longer than the timeout in total. After 3.5 s of
/// silence the affinity is released: the next connection of each address is balanced afresh
/// (over 2 rounds × 7 addresses, at least 3 of the 14 must move; a correct datapath moves about
/// 3 in 4, one that never releases moves none), and then sticks again.
#[test]
fn client_ip_affinity_holds_for_the_timeout_and_is_released_after_it() {
    const AFFINITY_SECS: u32 = 2;
    let (topology, prefix) = build("affinity", 0, &[("east", 2), ("west", 2)]);
    let mut sources = vec![topology.client_ip()];
    sources.extend((3..=8).map(|o| topology.add_client_ip(o)));
    let ip = Ipv4Addr::new(198, 19, 4, 1);
    let vip = SocketAddrV4::new(ip, 80);
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &import("sticky", ip).client_ip_affinity(AFFINITY_SECS));
    dir.write("slice-east.json", &ready_slice(&topology, "sticky", 1));
    dir.write("slice-west.json", &ready_slice(&topology, "sticky", 2));
    let mut agent = start_agent(&topology, &prefix, &dir, topology.client_iface(), &[]);
    converge(&topology, &mut agent, vip, "agent programs lbq/sticky", |_| true);
    // Let the affinity entries the convergence check created expire.
    thread::sleep(Duration::from_secs(u64::from(AFFINITY_SECS) + 2));

    let round = |when: &str| -> Vec<String> {
        topology.client().enter(|| {
            sources
                .iter()
                .map(|src| {
                    let info = tcp_info_from(Some(*src), vip, TIMEOUT)
                        .unwrap_or_else(|e| panic!("{when}: connection from {src}: {e}"));
                    assert_eq!(info.peer.ip(), std::net::IpAddr::V4(*src), "{when}: the backend sees {src}");
                    info.identity
                })
                .collect()
        })
    };

    // Holding: 8 rounds, gaps of 0.3 s and one of 1.3 s; about 3.5 s in all.
    let start = Instant::now();
    let first = round("hold round 0");
    for r in 1..8 {
        thread::sleep(if r == 4 { Duration::from_millis(1300) } else { Duration::from_millis(300) });
        let now = round(&format!("hold round {r}"));
        for (i, src) in sources.iter().enumerate() {
            assert_eq!(now[i], first[i], "round {r}: {src} moved from {} to {} within the timeout", first[i], now[i]);
        }
    }
    assert!(start.elapsed() > Duration::from_secs(u64::from(AFFINITY_SECS)), "held longer than one timeout");
    let state = inspect_json(&agent.pin_path, &[]);
    assert!(counter(&state, "stats", "affinity-hit") >= 49, "7 rounds × 7 addresses used their affinity: {state:#}");
    let svc = inspected_service(&state, ip, 80, "TCP");
    assert_eq!(svc["sessionAffinityTimeoutSeconds"], AFFINITY_SECS, "inspect: {svc:#}");
    let distinct: BTreeSet<&String> = first.iter().collect();
    assert!(distinct.len() >= 2, "seven client addresses all got one backend: {first:?}");

    // Releasing: silence for timeout + 1.5 s, then one connection per address.
    let mut previous = first;
    let mut moved = 0;
    for r in 0..2 {
        thread::sleep(Duration::from_millis(u64::from(AFFINITY_SECS) * 1000 + 1500));
        let now = round(&format!("release round {r}"));
        moved += now.iter().zip(&previous).filter(|(a, b)| a != b).count();
        // The new choice sticks again.
        for again in 0..2 {
            let sticky = round(&format!("release round {r}, again {again}"));
            assert_eq!(sticky, now, "release round {r}: the new backend did not stick");
        }
        previous = now;
    }
    assert!(moved >= 3, "after the timeout only {moved} of 14 client addresses got a new backend");
    agent.assert_running();
}

/// Measures one TCP connect.
fn timed_connect(addr: SocketAddrV4, limit: Duration) -> (io::Result<TcpStream>, Duration) {
    let start = Instant::now();
    let r = TcpStream::connect_timeout(&addr.into(), limit);
    (r, start.elapsed())
}

/// Measures one UDP exchange on a connected socket.
fn timed_udp(addr: SocketAddrV4, limit: Duration) -> (io::Result<String>, Duration) {
    let start = Instant::now();
    let r = udp_ask_connected(addr, limit);
    (r, start.elapsed())
}

fn slowest<T>(tries: &[(T, Duration)]) -> Duration {
    tries.iter().map(|(_, d)| *d).max().unwrap_or_default()
}

/// Asserts that TCP to `vip`:80 is refused and UDP to `vip`:53 gets ICMP unreachable, each well
/// within 200 ms (5 tries each), and returns the slowest times.
fn assert_refused_fast(topology: &Topology, ip: Ipv4Addr, when: &str) -> (Duration, Duration) {
    let (tcp, udp) = topology.client().enter(|| {
        let tcp: Vec<_> = (0..5).map(|_| timed_connect(SocketAddrV4::new(ip, 80), Duration::from_secs(2))).collect();
        let udp: Vec<_> = (0..5).map(|_| timed_udp(SocketAddrV4::new(ip, 53), Duration::from_secs(2))).collect();
        (tcp, udp)
    });
    let limit = Duration::from_millis(200);
    for (i, (r, took)) in tcp.iter().enumerate() {
        match r {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            other => panic!("{when}: TCP {ip}:80 try {i}: want ECONNREFUSED, got {other:?} after {took:?}"),
        }
        assert!(*took < limit, "{when}: TCP {ip}:80 try {i}: refused only after {took:?}");
    }
    for (i, (r, took)) in udp.iter().enumerate() {
        match r {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            other => panic!(
                "{when}: UDP {ip}:53 try {i}: want ICMP unreachable (ECONNREFUSED), got {other:?} after {took:?}"
            ),
        }
        assert!(*took < limit, "{when}: UDP {ip}:53 try {i}: refused only after {took:?}");
    }
    (slowest(&tcp), slowest(&udp))
}

/// `lbq/empty` has no slice at all, `lbq/unready` one whose endpoints are all unready (not
/// serving either), `lbq/control` a ready backend (to know the agent has synced). TCP to the
/// first two is refused and UDP gets ICMP port unreachable, at once. When `unready`'s endpoint
/// becomes ready it answers; when it goes unready again, refusal is immediate again.
#[test]
fn connections_to_a_service_without_backends_are_refused_at_once() {
    let (topology, prefix) = build("failfast", 0, &[("east", 1)]);
    let empty = Ipv4Addr::new(198, 19, 4, 2);
    let unready = Ipv4Addr::new(198, 19, 4, 3);
    let control = Ipv4Addr::new(198, 19, 4, 4);
    let east = topology.pod_ip(1, 0);
    let dir = ManifestDir::new(&prefix);
    dir.write("import-empty.json", &import("empty", empty));
    dir.write("import-unready.json", &import("unready", unready));
    dir.write("import-control.json", &import("control", control));
    dir.write("slice-unready.json", &slice("unready", "east", &[(east, NOT_READY)]));
    dir.write("slice-control.json", &ready_slice(&topology, "control", 1));
    let mut agent = start_agent(&topology, &prefix, &dir, topology.client_iface(), &[]);
    converge(&topology, &mut agent, SocketAddrV4::new(control, 80), "agent programs lbq/control", |_| true);

    let (t1, u1) = assert_refused_fast(&topology, empty, "service without slices");
    let (t2, u2) = assert_refused_fast(&topology, unready, "service with unready endpoints only");
    eprintln!("slowest refusal: no slices TCP {t1:?} UDP {u1:?}; unready TCP {t2:?} UDP {u2:?}");
    let state = inspect_json(&agent.pin_path, &[]);
    assert!(counter(&state, "stats", "reject-tcp-rst") >= 10, "RSTs sent: {state:#}");
    assert!(counter(&state, "stats", "reject-icmp") >= 10, "ICMP unreachables sent: {state:#}");
    for vip in [empty, unready] {
        for (port, proto) in [(80, "TCP"), (53, "UDP")] {
            let svc = inspected_service(&state, vip, port, proto);
            assert!(svc["counters"]["rejected"].as_u64() >= Some(5), "{vip}:{port}/{proto} rejections: {svc:#}");
            assert_eq!(svc["flags"], serde_json::json!(["no-backend"]), "{vip}:{port}/{proto}: {svc:#}");
        }
    }

    manifest::write(&agent.manifests, "slice-unready.json", &ready_slice(&topology, "unready", 1));
    converge(&topology, &mut agent, SocketAddrV4::new(unready, 80), "lbq/unready gets its backend", |_| true);
    manifest::write(&agent.manifests, "slice-unready.json", &slice("unready", "east", &[(east, NOT_READY)]));
    wait_until(CONVERGE, PAUSE, "lbq/unready refused again", || {
        match topology.client().enter(|| timed_connect(SocketAddrV4::new(unready, 80), Duration::from_millis(500))) {
            (Err(e), _) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            (r, took) => Err(format!("{r:?} after {took:?}")),
        }
    });
    assert_refused_fast(&topology, unready, "service whose endpoints went unready");
    agent.assert_running();
}

/// Twelve held streams to `lbq/moving` (east and west); then north's endpoints are added and
/// west's removed. Every stream whose backend stays keeps exchanging data with it.
#[test]
fn established_streams_survive_a_backend_set_change_that_keeps_their_backend() {
    let (topology, prefix) = build("bset", 0, &[("east", 2), ("west", 2), ("north", 2)]);
    let ip = Ipv4Addr::new(198, 19, 4, 5);
    let vip = SocketAddrV4::new(ip, 80);
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &import("moving", ip));
    dir.write("slice-east.json", &ready_slice(&topology, "moving", 1));
    dir.write("slice-west.json", &ready_slice(&topology, "moving", 2));
    let mut agent = start_agent(&topology, &prefix, &dir, topology.client_iface(), &[]);
    converge(&topology, &mut agent, vip, "agent programs lbq/moving", |_| true);

    let mut streams: Vec<HeldStream> = topology.client().enter(|| {
        (0..12).map(|i| HeldStream::open(vip, TIMEOUT).unwrap_or_else(|e| panic!("stream {i}: {e}"))).collect()
    });
    let on: BTreeSet<&str> = streams.iter().map(|s| cluster_of(s.identity())).collect();
    assert_eq!(on, ["east", "west"].into_iter().collect(), "twelve streams spread over east and west");
    ping_all(&mut streams, "before the change");

    // North joins.
    manifest::write(&agent.manifests, "slice-north.json", &ready_slice(&topology, "moving", 3));
    wait_until(CONVERGE, PAUSE, "north answers", || {
        ping_all(&mut streams, "while north joins");
        let answers = tcp_many_ok(&topology, vip, 10, "while north joins");
        if clusters(&answers).contains("north") { Ok(()) } else { Err(format!("{:?}", clusters(&answers))) }
    });
    agent.keep_pinging(&mut streams, Duration::from_secs(1), "after north joined");

    // West leaves; its own streams are closed first, the others must not notice.
    let (west, mut kept): (Vec<HeldStream>, Vec<HeldStream>) =
        streams.into_iter().partition(|s| cluster_of(s.identity()) == "west");
    for s in west {
        s.close().expect("close a west stream");
    }
    agent.remove_manifest("slice-west.json");
    wait_table_clusters(&agent.pin_path, ip, 80, "TCP", &["east", "north"]);
    agent.keep_pinging(&mut kept, Duration::from_secs(1), "after west left");
    let answers = tcp_many_ok(&topology, vip, 40, "after west left");
    assert_eq!(clusters(&answers), ["east", "north"].into_iter().map(String::from).collect(), "new connections");
    for s in kept {
        s.close().expect("close a stream");
    }
    agent.assert_running();
}

/// The datapath's rule for a flow whose backend was removed, once the removal grace is over
/// (docs/datapath.md, conntrack): a TCP stream is reset, not left pointing at a backend that is
/// no longer there; a UDP flow (same socket, same 5-tuple) is re-selected onto a remaining
/// backend.
#[test]
fn a_tcp_stream_whose_backend_was_removed_is_reset() {
    let (topology, prefix) = build("removed", 0, &[("east", 1), ("west", 1)]);
    let ip = Ipv4Addr::new(198, 19, 4, 6);
    let vip = SocketAddrV4::new(ip, 80);
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &import("gone", ip));
    dir.write("slice-east.json", &ready_slice(&topology, "gone", 1));
    dir.write("slice-west.json", &ready_slice(&topology, "gone", 2));
    let grace = ["--backend-removal-grace-seconds", "1"];
    let mut agent = start_agent(&topology, &prefix, &dir, topology.client_iface(), &grace);
    converge(&topology, &mut agent, vip, "agent programs lbq/gone", |_| true);
    let mut streams: Vec<HeldStream> = topology.client().enter(|| {
        (0..8).map(|i| HeldStream::open(vip, TIMEOUT).unwrap_or_else(|e| panic!("stream {i}: {e}"))).collect()
    });
    ping_all(&mut streams, "before the removal");
    let (mut west, mut east): (Vec<HeldStream>, Vec<HeldStream>) =
        streams.into_iter().partition(|s| cluster_of(s.identity()) == "west");
    assert!(!west.is_empty() && !east.is_empty(), "eight streams spread over east and west");
    // A UDP flow on west: fresh sockets (at most 24) until one is answered by west.
    let dns = SocketAddrV4::new(ip, 53);
    let udp = topology.client().enter(|| {
        for i in 0..24 {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind UDP");
            sock.connect(dns).expect("connect UDP");
            if udp_exchange(&sock).unwrap_or_else(|e| panic!("UDP socket {i}: {e}")).starts_with("west/") {
                return sock;
            }
        }
        panic!("24 UDP flows and none on west");
    });

    agent.remove_manifest("slice-west.json");
    wait_table_clusters(&agent.pin_path, ip, 80, "TCP", &["east"]);
    wait_table_clusters(&agent.pin_path, ip, 53, "UDP", &["east"]);
    // West's backends keep their flows for the grace (1 s), then leave.
    wait_inspect(&agent.pin_path, "west's backends gone after their grace", |state| {
        let left: Vec<_> = [(80, "TCP"), (53, "UDP")]
            .iter()
            .flat_map(|(port, protocol)| inspected_backends(state, ip, *port, protocol).unwrap_or_default())
            .filter(|b| b.cluster == "west")
            .collect();
        if left.is_empty() { Ok(()) } else { Err(format!("still there: {left:?}")) }
    });
    for (i, s) in west.iter_mut().enumerate() {
        match s.ping() {
            Ok(who) => panic!("stream {i} to the removed backend {who} still works"),
            Err(e) => assert_ne!(e.kind(), io::ErrorKind::TimedOut, "stream {i}: left hanging, not reset: {e}"),
        }
    }
    ping_all(&mut east, "east streams after west's removal");
    let who = udp_exchange(&udp).expect("the UDP flow whose backend was removed is answered again");
    assert!(who.starts_with("east/"), "the UDP flow went to {who} after west was removed");
    let state = inspect_json(&agent.pin_path, &[]);
    assert!(counter(&state, "drops", "backend-gone") >= 1, "TCP segments to the gone backend: {state:#}");
    assert!(counter(&state, "stats", "ct-reselected") >= 1, "UDP flow re-selected: {state:#}");
    agent.assert_running();
}

/// One datagram on a connected socket, one answer (1 s at most).
fn udp_exchange(sock: &UdpSocket) -> io::Result<String> {
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.send(b"ask\n")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// Opens held streams (at most 24) until `want` of them are on `identity`.
fn streams_until_on(topology: &Topology, vip: SocketAddrV4, identity: &str, want: usize) -> Vec<HeldStream> {
    topology.client().enter(|| {
        let mut streams = Vec::new();
        // Backends are picked by the flow's hash: with four backends, fewer than
        // two of 64 streams on one has a chance below 1e-6 (of 24: about 1e-2).
        for i in 0..64 {
            streams.push(HeldStream::open(vip, TIMEOUT).unwrap_or_else(|e| panic!("stream {i}: {e}")));
            if streams.iter().filter(|s| s.identity() == identity).count() >= want {
                return streams;
            }
        }
        panic!("64 streams and fewer than {want} on {identity}");
    })
}

/// East/pod0 of `lbq/drain` turns terminating (ready false, serving true) while east/pod1 and
/// west's pods stay ready: its held streams keep working and close cleanly, and it gets no new
/// connection. When every other endpoint goes unready too, the terminating one takes new
/// connections (the KEP-1669 fallback).
#[test]
fn a_terminating_backend_finishes_its_streams_and_gets_no_new_ones() {
    let (topology, prefix) = build("drain", 0, &[("east", 2), ("west", 2)]);
    let ip = Ipv4Addr::new(198, 19, 4, 7);
    let vip = SocketAddrV4::new(ip, 80);
    let (e0, e1) = (topology.pod_ip(1, 0), topology.pod_ip(1, 1));
    let dying = topology.identity(1, 0);
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &import("drain", ip));
    dir.write("slice-east.json", &ready_slice(&topology, "drain", 1));
    dir.write("slice-west.json", &ready_slice(&topology, "drain", 2));
    let mut agent = start_agent(&topology, &prefix, &dir, topology.client_iface(), &[]);
    converge(&topology, &mut agent, vip, "agent programs lbq/drain", |_| true);
    let mut streams = streams_until_on(&topology, vip, &dying, 2);
    ping_all(&mut streams, "before terminating");

    manifest::write(&agent.manifests, "slice-east.json", &slice("drain", "east", &[(e0, TERMINATING), (e1, READY)]));
    wait_inspect(&agent.pin_path, "east/pod0 terminating in the maps", |state| {
        let backends = inspected_backends(state, ip, 80, "TCP").ok_or("lbq/drain not in the maps")?;
        let e0 = e0.to_string();
        if backends.iter().any(|b| b.ip == e0 && b.state == "terminating" && b.slots == 0) {
            Ok(())
        } else {
            Err(format!("{backends:?}"))
        }
    });
    ping_all(&mut streams, "right after it turned terminating");
    agent.keep_pinging(&mut streams, Duration::from_secs(2), "while terminating");
    let state = inspect_json(&agent.pin_path, &[]);
    let svc = inspected_service(&state, ip, 80, "TCP");
    let b = inspected_backend(svc, e0, TCP_PORT);
    assert_eq!((b["state"].as_str(), b["slots"].as_u64()), (Some("terminating"), Some(0)), "draining: {svc:#}");
    let answers = tcp_many_ok(&topology, vip, 60, "while terminating");
    assert!(!identities(&answers).contains(&dying), "{dying} got a new connection while terminating");
    assert_eq!(identities(&answers).len(), 3, "the three ready pods take the new connections: {answers:?}");
    let (draining, others): (Vec<HeldStream>, Vec<HeldStream>) =
        streams.into_iter().partition(|s| s.identity() == dying);
    for (i, mut s) in draining.into_iter().enumerate() {
        assert_eq!(s.ping().expect("last ping on the terminating pod"), dying);
        s.close().unwrap_or_else(|e| panic!("stream {i} on the terminating pod closes cleanly: {e}"));
    }

    // Nothing else ready: the terminating endpoint is the fallback. (Streams to endpoints that
    // stop being backends are reset by contract, so close them first.)
    for s in others {
        s.close().expect("close a stream");
    }
    manifest::write(
        &agent.manifests,
        "slice-east.json",
        &slice("drain", "east", &[(e0, TERMINATING), (e1, NOT_READY)]),
    );
    let west_unready: Vec<(Ipv4Addr, EndpointConditions)> =
        pod_ips(&topology, 2).into_iter().map(|ip| (ip, NOT_READY)).collect();
    manifest::write(&agent.manifests, "slice-west.json", &slice("drain", "west", &west_unready));
    converge(&topology, &mut agent, vip, "fallback to the terminating pod", |a| a.identity == dying);
    let state = inspect_json(&agent.pin_path, &[]);
    let svc = inspected_service(&state, ip, 80, "TCP");
    assert_eq!(svc["flags"], serde_json::json!(["terminating-fallback"]), "fallback: {svc:#}");
    assert!(inspected_backend(svc, e0, TCP_PORT)["slots"].as_u64() > Some(0), "fallback in the table: {svc:#}");
    agent.assert_running();
}

/// `lbq/near` (annotation `mcs-ebpf.dev/locality: local`) is served by local's own pods while
/// any is ready, by east's when they all go unready, and by local's again when they come back.
/// `lbq/far` (`remote`) is served by east only; `lbq/any` (no annotation, agent default none) by
/// both clusters.
#[test]
fn local_locality_prefers_local_endpoints_and_fails_over_when_they_go_unready() {
    let (topology, prefix) = build("locality", 2, &[("east", 2)]);
    let near = Ipv4Addr::new(198, 19, 4, 8);
    let far = Ipv4Addr::new(198, 19, 4, 9);
    let any = Ipv4Addr::new(198, 19, 4, 10);
    let dir = ManifestDir::new(&prefix);
    for (name, ip, locality) in [("near", near, Some("local")), ("far", far, Some("remote")), ("any", any, None)] {
        let mut imp = import(name, ip);
        if let Some(l) = locality {
            imp = imp.annotation("mcs-ebpf.dev/locality", l);
        }
        dir.write(&format!("import-{name}.json"), &imp);
        dir.write(&format!("slice-{name}-local.json"), &ready_slice(&topology, name, 0));
        dir.write(&format!("slice-{name}-east.json"), &ready_slice(&topology, name, 1));
    }
    let mut agent = start_agent(&topology, &prefix, &dir, topology.client_iface(), &[]);
    let near_vip = SocketAddrV4::new(near, 80);
    converge(&topology, &mut agent, near_vip, "lbq/near served locally", |a| cluster_of(&a.identity) == "local");

    let local_pods: BTreeSet<String> = [topology.identity(0, 0), topology.identity(0, 1)].into();
    let east_pods: BTreeSet<String> = [topology.identity(1, 0), topology.identity(1, 1)].into();
    let both: BTreeSet<String> = local_pods.union(&east_pods).cloned().collect();
    assert_eq!(identities(&tcp_many_ok(&topology, near_vip, 40, "near")), local_pods, "lbq/near (local)");
    let far_vip = SocketAddrV4::new(far, 80);
    assert_eq!(identities(&tcp_many_ok(&topology, far_vip, 40, "far")), east_pods, "lbq/far (remote)");
    let any_vip = SocketAddrV4::new(any, 80);
    assert_eq!(identities(&tcp_many_ok(&topology, any_vip, 60, "any")), both, "lbq/any (none)");

    // Local's pods go unready: near fails over to east.
    let unready: Vec<(Ipv4Addr, EndpointConditions)> =
        pod_ips(&topology, 0).into_iter().map(|ip| (ip, NOT_READY)).collect();
    manifest::write(&agent.manifests, "slice-near-local.json", &slice("near", "local", &unready));
    converge(&topology, &mut agent, near_vip, "lbq/near fails over to east", |a| cluster_of(&a.identity) == "east");
    assert_eq!(identities(&tcp_many_ok(&topology, near_vip, 40, "near, failed over")), east_pods);
    // UDP fails over alike.
    let udp: Vec<ServerInfo> = topology.client().enter(|| {
        (0..10)
            .map(|i| udp_info(SocketAddrV4::new(near, 53), TIMEOUT).unwrap_or_else(|e| panic!("UDP {i}: {e}")))
            .collect()
    });
    assert_eq!(clusters(&udp), ["east".to_owned()].into(), "UDP to lbq/near after failover: {udp:?}");

    // And back.
    manifest::write(&agent.manifests, "slice-near-local.json", &ready_slice(&topology, "near", 0));
    converge(&topology, &mut agent, near_vip, "lbq/near back to local", |a| cluster_of(&a.identity) == "local");
    assert_eq!(identities(&tcp_many_ok(&topology, near_vip, 40, "near, back")), local_pods);
    agent.assert_running();
}

/// local/pod0, behind the agent's node, connects to `lbq/self`, whose only backend is itself:
/// the connection lands on itself, works (request/response, a held stream, UDP), and the pod
/// sees the hairpin address as the source. From the same pod, `lbq/pair` (local/pod0 and
/// east/pod0) works whichever backend is chosen.
#[test]
fn a_pod_reaching_itself_through_the_cluster_set_ip_works() {
    let (topology, prefix) = build("hairpin", 1, &[("east", 1)]);
    let own = Ipv4Addr::new(198, 19, 4, 11);
    let pair = Ipv4Addr::new(198, 19, 4, 12);
    let me = topology.identity(0, 0);
    let dir = ManifestDir::new(&prefix);
    dir.write("import-self.json", &import("self", own));
    dir.write("slice-self.json", &ready_slice(&topology, "self", 0));
    dir.write("import-pair.json", &import("pair", pair));
    dir.write("slice-pair-local.json", &ready_slice(&topology, "pair", 0));
    dir.write("slice-pair-east.json", &ready_slice(&topology, "pair", 1));
    let interfaces = format!("{},{}", topology.client_iface(), topology.pod_iface(0, 0));
    let hairpin = HAIRPIN_IP.to_string();
    let mut agent = start_agent(&topology, &prefix, &dir, &interfaces, &["--hairpin-ip", &hairpin]);
    let own_vip = SocketAddrV4::new(own, 80);
    converge(&topology, &mut agent, own_vip, "lbq/self programmed", |a| a.identity == me);

    let pod = topology.pod(0, 0);
    let answers: Vec<ServerInfo> = wait_until(CONVERGE, PAUSE, "hairpin TCP from local/pod0", || {
        agent.assert_running();
        pod.enter(|| (0..5).map(|_| tcp_info(own_vip, TIMEOUT)).collect::<io::Result<Vec<_>>>())
            .map_err(|e| e.to_string())
    });
    for a in &answers {
        assert_eq!(a.identity, me, "hairpin lands on the pod itself");
        assert_eq!(a.server, SocketAddr::V4(own_vip), "the pod sees the ClusterSetIP as its peer");
        assert_eq!(a.peer.ip(), std::net::IpAddr::V4(HAIRPIN_IP), "the pod sees the hairpin address as the source");
    }
    let mut held = pod.enter(|| HeldStream::open(own_vip, TIMEOUT)).expect("held hairpin stream");
    for _ in 0..5 {
        assert_eq!(held.ping().expect("hairpin ping"), me);
    }
    let flows = inspect_json(&agent.pin_path, &["--conntrack"]);
    let local = held.local_addr().to_string();
    let flow = flows["conntrack"]
        .as_array()
        .and_then(|c| c.iter().find(|f| f["client"] == local.as_str()))
        .unwrap_or_else(|| panic!("no conntrack entry for the held hairpin flow from {local}: {flows:#}"));
    assert_eq!(flow["hairpin"], true, "{flow:#}");
    assert!(counter(&flows, "stats", "hairpin-new") >= 6, "hairpin flows counted: {flows:#}");
    held.close().expect("close the hairpin stream");
    let udp = pod.enter(|| udp_info(SocketAddrV4::new(own, 53), TIMEOUT)).expect("hairpin UDP");
    assert_eq!((udp.identity.as_str(), udp.server), (me.as_str(), SocketAddr::V4(SocketAddrV4::new(own, 53))));

    let pair_vip = SocketAddrV4::new(pair, 80);
    let answers: Vec<ServerInfo> = pod.enter(|| {
        (0..30).map(|i| tcp_info(pair_vip, TIMEOUT).unwrap_or_else(|e| panic!("lbq/pair {i}: {e}"))).collect()
    });
    let want: BTreeSet<String> = [me.clone(), topology.identity(1, 0)].into();
    assert_eq!(identities(&answers), want, "lbq/pair from local/pod0 reaches both backends");
    for a in &answers {
        assert_eq!(a.server, SocketAddr::V4(pair_vip));
        let src = if a.identity == me { HAIRPIN_IP } else { topology.pod_ip(0, 0) };
        assert_eq!(a.peer.ip(), std::net::IpAddr::V4(src), "source seen by {}", a.identity);
    }
    // The client still gets the normal path.
    assert_eq!(identities(&tcp_many_ok(&topology, own_vip, 5, "client to lbq/self")), [me.clone()].into());
    agent.assert_running();
}

/// `mcs-agent inspect -o json` shows what the kernel holds: both service ports of the
/// `ClusterSetIP`, each backend with its cluster and state (the terminating one out of the Maglev
/// table), counters, and (with `--conntrack`) the held flow with its backend and state.
#[test]
fn inspect_shows_services_backends_clusters_and_flows() {
    let (topology, prefix) = build("inspect", 0, &[("east", 2), ("west", 1)]);
    let ip = Ipv4Addr::new(198, 19, 4, 13);
    let vip = SocketAddrV4::new(ip, 80);
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &import("shown", ip));
    dir.write(
        "slice-east.json",
        &slice("shown", "east", &[(topology.pod_ip(1, 0), READY), (topology.pod_ip(1, 1), TERMINATING)]),
    );
    dir.write("slice-west.json", &ready_slice(&topology, "shown", 2));
    let mut agent = start_agent(&topology, &prefix, &dir, topology.client_iface(), &[]);
    converge(&topology, &mut agent, vip, "agent programs lbq/shown", |_| true);
    let mut held = topology.client().enter(|| HeldStream::open(vip, TIMEOUT)).expect("held stream");
    held.ping().expect("ping");

    let state = inspect_json(&agent.pin_path, &[]);
    let svc = inspected_service(&state, ip, 80, "TCP");
    let want = [((1, 0), "east", "ready"), ((1, 1), "east", "terminating"), ((2, 0), "west", "ready")];
    assert_eq!(svc["backends"].as_array().map(Vec::len), Some(want.len()), "backends of {ip}:80: {svc:#}");
    for ((c, j), cluster, wanted_state) in want {
        let b = inspected_backend(svc, topology.pod_ip(c, j), TCP_PORT);
        assert_eq!((b["cluster"].as_str(), b["state"].as_str()), (Some(cluster), Some(wanted_state)), "{b:#}");
        let in_table = b["slots"].as_u64().expect("slots") > 0;
        assert_eq!(in_table, wanted_state == "ready", "only ready backends are in the Maglev table: {b:#}");
    }
    assert!(svc["counters"]["newFlows"].as_u64() >= Some(10), "new flows counted: {svc:#}");
    inspected_service(&state, ip, 53, "UDP");

    let flows = inspect_json(&agent.pin_path, &["--conntrack"]);
    let local = held.local_addr().to_string();
    let flow = flows["conntrack"]
        .as_array()
        .and_then(|c| c.iter().find(|f| f["client"] == local.as_str()))
        .unwrap_or_else(|| panic!("inspect --conntrack lacks the held flow from {local}: {flows:#}"));
    let pod = if held.identity() == topology.identity(1, 0) { topology.pod_ip(1, 0) } else { topology.pod_ip(2, 0) };
    assert_eq!(flow["backend"], format!("{pod}:{TCP_PORT}").as_str(), "held stream to {}: {flow:#}", held.identity());
    assert_eq!(flow["service"], vip.to_string().as_str(), "{flow:#}");
    assert_eq!(flow["state"], "established", "{flow:#}");
    held.close().expect("close");
    agent.assert_running();
}
