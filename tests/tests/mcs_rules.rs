//! The MCS rules of `docs/mcs-semantics.md`, end to end through the agent and the datapath
//! (ISSUE-3's integration tests): real sockets between network namespaces, the agent running
//! on the client's node, fed with manifests written by the test.
//!
//! - the exporting-cluster cap: six exporting clusters, exactly the five the ranking names
//!   answer, and the sixth is promoted when a selected one leaves;
//! - ports matched by name: http/80 and https/443 reach each cluster's own target ports;
//! - TCP/42 and UDP/42 on one import are two services and both work;
//! - SIGKILL and restart of the agent break no established connection, and new connections
//!   afterwards reach the right backends (including changes made while no agent ran).
//!
//! Addresses: pods 198.18.<cluster>.<10+pod>, the client 198.18.0.2, `ClusterSetIPs`
//! 198.19.3.x. Every wait is bounded; guards remove namespaces, processes, pins and manifest
//! directories on drop, also when a test panics.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use mcs_tests::{
    agent::AgentGuard,
    client::{HeldStream, ServerInfo, cluster_of, ping_all, tcp_info, udp_info},
    manifest::{self, ManifestDir, NOT_READY, import, slice},
    netns::unique_prefix,
    topology::{ClusterSpec, Topology, TopologySpec},
    wait_table_clusters, wait_until,
};

const NS: &str = "rules";
const TIMEOUT: Duration = Duration::from_secs(1);
const CONVERGE: Duration = Duration::from_secs(15);
const PAUSE: Duration = Duration::from_millis(100);

/// Builds the topology: cluster 0 `local` (the client, no backends) and then `clusters`
/// (name, pods).
fn build(tag: &str, clusters: &[(&str, usize)]) -> (Topology, String) {
    let prefix = unique_prefix(tag);
    let mut spec = vec![ClusterSpec::new("local", 0)];
    spec.extend(clusters.iter().map(|(name, pods)| ClusterSpec::new(name, *pods)));
    let topology = Topology::build(&prefix, &TopologySpec { clusters: spec });
    (topology, prefix)
}

/// `n` TCP `info` exchanges with `vip` from the client.
fn tcp_many(topology: &Topology, vip: SocketAddrV4, n: usize) -> Vec<std::io::Result<ServerInfo>> {
    topology.client().enter(|| (0..n).map(|_| tcp_info(vip, TIMEOUT)).collect())
}

/// `n` TCP `info` exchanges that must all succeed with `vip` as the peer the client sees.
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
        let batch: Vec<String> = tcp_many(topology, vip, 10)
            .into_iter()
            .map(|r| match r {
                Ok(info) if ok(&info) => Ok(()),
                Ok(info) => Err(format!("unwanted answer {info:?}")),
                Err(e) => Err(e.to_string()),
            })
            .filter_map(Result::err)
            .collect();
        if batch.is_empty() { Ok(()) } else { Err(format!("{batch:?}")) }
    });
}

fn clusters_answering(answers: &[ServerInfo]) -> BTreeSet<String> {
    answers.iter().map(|a| cluster_of(&a.identity).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------

/// Six clusters export `rules/capped`; `status.clusters` lists c9, c404 (no slices: not present)
/// and c3; the others are unlisted. Ranking: c9, c3 (listed, in that order), then c10, c11, c2
/// (unlisted, by byte order), so c7 is the sixth and excluded under the default cap of 5. (A
/// purely byte-ordered ranking would exclude c9, a numeric one c11.) When c3's endpoint goes
/// unready, c3 stays selected (readiness does not change membership); when c3's slices go, c7
/// is promoted.
#[test]
fn six_exporting_clusters_are_answered_by_the_five_the_ranking_names() {
    let names = ["c9", "c3", "c10", "c11", "c2", "c7"];
    let (mut topology, prefix) = build("cap", &names.map(|n| (n, 1)));
    let ports: Vec<(&[u16], &[u16])> =
        std::iter::once((&[][..], &[][..])).chain(names.iter().map(|_| (&[8080u16][..], &[][..]))).collect();
    topology.start_servers_per_cluster(&ports);

    let vip = SocketAddrV4::new(Ipv4Addr::new(198, 19, 3, 1), 80);
    let dir = ManifestDir::new(&prefix);
    dir.write(
        "import.json",
        &import(NS, "capped").ip(*vip.ip()).tcp("http", 80).status_clusters(&["c9", "c404", "c3"]),
    );
    for (i, name) in names.iter().enumerate() {
        let slice = slice(NS, "capped", name).tcp("http", 8080).ready_all([topology.pod_ip(i + 1, 0)]);
        dir.write(&format!("slice-{name}.json"), &slice);
    }
    let mut agent = AgentGuard::start(topology.node(0), &prefix, dir.path(), topology.client_iface(), "local");

    converge(&topology, &mut agent, vip, "agent programs rules/capped", |_| true);
    // 100 connections over 5 backends: each one is missed with probability 0.8^100 ≈ 2e-10.
    let answers = tcp_many_ok(&topology, vip, 100, "capped");
    for a in &answers {
        assert_eq!(a.port, 8080, "target port of {}", a.identity);
        assert_eq!(a.peer.ip(), topology.client_ip(), "the backend sees the client's own address");
    }
    let expected: BTreeSet<String> = ["c9", "c3", "c10", "c11", "c2"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(clusters_answering(&answers), expected, "clusters answering with the cap of 5");

    // Readiness does not change membership: c3's endpoint goes unready, c3 stays selected and
    // c7 is not promoted.
    let unready = slice(NS, "capped", "c3").tcp("http", 8080).with_conditions(topology.pod_ip(2, 0), NOT_READY);
    manifest::write(&agent.manifests, "slice-c3.json", &unready);
    wait_table_clusters(&agent.pin_path, *vip.ip(), 80, "TCP", &["c9", "c10", "c11", "c2"]);
    let answers = tcp_many_ok(&topology, vip, 100, "c3 unready");
    let expected: BTreeSet<String> = ["c9", "c10", "c11", "c2"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(clusters_answering(&answers), expected, "c3 unready: c7 must not be promoted");

    // A selected cluster leaves: the sixth is promoted.
    agent.remove_manifest("slice-c3.json");
    wait_table_clusters(&agent.pin_path, *vip.ip(), 80, "TCP", &["c9", "c10", "c11", "c2", "c7"]);
    let answers = tcp_many_ok(&topology, vip, 100, "after c3 left");
    let expected: BTreeSet<String> = ["c9", "c10", "c11", "c2", "c7"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(clusters_answering(&answers), expected, "c7 promoted when c3 left");
    agent.assert_running();
}

/// `rules/web` has http/80 and https/443, exported from east (two pods: 8080 and 8443), west
/// (9080, 9443, its slice listing https first) and north (7080 and 7443, in two slices with
/// one port each, as the EndpointSlice controller makes for pods with different port sets).
/// Every port of every cluster must be programmed with that cluster's own target port.
#[test]
fn http_and_https_reach_each_clusters_own_target_ports() {
    let (mut topology, prefix) = build("ports", &[("east", 2), ("west", 1), ("north", 1)]);
    topology.start_servers_per_cluster(&[(&[], &[]), (&[8080, 8443], &[]), (&[9080, 9443], &[]), (&[7080, 7443], &[])]);
    let target: BTreeMap<(&str, u16), u16> = [
        (("east", 80), 8080),
        (("east", 443), 8443),
        (("west", 80), 9080),
        (("west", 443), 9443),
        (("north", 80), 7080),
        (("north", 443), 7443),
    ]
    .into_iter()
    .collect();

    let ip = Ipv4Addr::new(198, 19, 3, 2);
    let dir = ManifestDir::new(&prefix);
    dir.write(
        "import.json",
        &import(NS, "web").ip(ip).tcp("http", 80).tcp("https", 443).status_clusters(&["east", "west", "north"]),
    );
    let east = slice(NS, "web", "east")
        .tcp("http", 8080)
        .tcp("https", 8443)
        .ready_all([topology.pod_ip(1, 0), topology.pod_ip(1, 1)]);
    let west = slice(NS, "web", "west").tcp("https", 9443).tcp("http", 9080).ready_all([topology.pod_ip(2, 0)]);
    let north_http =
        slice(NS, "web", "north").named("web-north-http").tcp("http", 7080).ready_all([topology.pod_ip(3, 0)]);
    let north_https =
        slice(NS, "web", "north").named("web-north-https").tcp("https", 7443).ready_all([topology.pod_ip(3, 0)]);
    for (name, slice) in [("east", east), ("west", west), ("north-http", north_http), ("north-https", north_https)] {
        dir.write(&format!("slice-{name}.json"), &slice);
    }
    let mut agent = AgentGuard::start(topology.node(0), &prefix, dir.path(), topology.client_iface(), "local");

    for port in [80, 443] {
        let vip = SocketAddrV4::new(ip, port);
        converge(&topology, &mut agent, vip, &format!("agent programs rules/web port {port}"), |_| true);
        // 80 connections over 4 backends: each one is missed with probability 0.75^80 ≈ 1e-10.
        let answers = tcp_many_ok(&topology, vip, 80, &format!("port {port}"));
        for a in &answers {
            let want = target[&(cluster_of(&a.identity), port)];
            assert_eq!(a.port, want, "{vip} answered by {} on its port {}, want {want}", a.identity, a.port);
        }
        let seen: BTreeSet<&str> = answers.iter().map(|a| a.identity.as_str()).collect();
        let all: BTreeSet<&str> = ["east/pod0", "east/pod1", "west/pod0", "north/pod0"].into_iter().collect();
        assert_eq!(seen, all, "backends answering on {vip}");
    }
    agent.assert_running();
}

/// `rules/dual` lists tcp 42/TCP and udp 42/UDP. East's pods listen on 42 for both protocols,
/// west's on 4242/TCP and 5242/UDP. Both entries work, each with its own backends' ports.
#[test]
fn tcp_and_udp_on_the_same_port_number_both_work() {
    let (mut topology, prefix) = build("dual", &[("east", 1), ("west", 1)]);
    topology.start_servers_per_cluster(&[(&[], &[]), (&[42], &[42]), (&[4242], &[5242])]);
    let ip = Ipv4Addr::new(198, 19, 3, 3);
    let vip = SocketAddrV4::new(ip, 42);
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &import(NS, "dual").ip(ip).tcp("tcp", 42).udp("udp", 42));
    dir.write(
        "slice-east.json",
        &slice(NS, "dual", "east").tcp("tcp", 42).udp("udp", 42).ready_all([topology.pod_ip(1, 0)]),
    );
    dir.write(
        "slice-west.json",
        &slice(NS, "dual", "west").udp("udp", 5242).tcp("tcp", 4242).ready_all([topology.pod_ip(2, 0)]),
    );
    let mut agent = AgentGuard::start(topology.node(0), &prefix, dir.path(), topology.client_iface(), "local");
    converge(&topology, &mut agent, vip, "agent programs rules/dual", |_| true);

    let want = |identity: &str, udp: bool| match (cluster_of(identity), udp) {
        ("east", _) => 42,
        ("west", false) => 4242,
        ("west", true) => 5242,
        (other, _) => panic!("unexpected backend {other}"),
    };
    let answers = tcp_many_ok(&topology, vip, 40, "TCP/42");
    for a in &answers {
        assert_eq!(a.port, want(&a.identity, false), "TCP/42 answered by {a:?}");
    }
    assert_eq!(clusters_answering(&answers).len(), 2, "TCP/42 reaches both clusters");

    let udp: Vec<ServerInfo> = topology.client().enter(|| {
        (0..40).map(|i| udp_info(vip, TIMEOUT).unwrap_or_else(|e| panic!("UDP/42 datagram {i}: {e}"))).collect()
    });
    for a in &udp {
        assert_eq!(a.server, SocketAddr::V4(vip), "UDP/42 answer comes from the ClusterSetIP");
        assert_eq!(a.port, want(&a.identity, true), "UDP/42 answered by {a:?}");
        assert_eq!(a.peer.ip(), topology.client_ip(), "the backend sees the client's own address");
    }
    assert_eq!(clusters_answering(&udp).len(), 2, "UDP/42 reaches both clusters");
    agent.assert_running();
}

/// Held TCP streams keep exchanging data across SIGKILL and restart of the agent, three times:
/// with nothing changed, with a cluster added while no agent ran, and with a cluster removed
/// while no agent ran (its own streams closed first). New connections right after each restart
/// reach only backends of the current slices, on their target ports.
#[test]
fn sigkill_and_restart_break_no_established_connection() {
    let (mut topology, prefix) = build("sigkill", &[("east", 2), ("west", 2), ("north", 1)]);
    topology.start_servers_per_cluster(&[(&[], &[]), (&[8080], &[]), (&[9080], &[]), (&[7080], &[])]);
    let port_of = |identity: &str| match cluster_of(identity) {
        "east" => 8080,
        "west" => 9080,
        "north" => 7080,
        other => panic!("unexpected backend {other}"),
    };
    let ip = Ipv4Addr::new(198, 19, 3, 4);
    let vip = SocketAddrV4::new(ip, 80);
    let slice = |c: usize, name: &str, port: u16| {
        let ips: Vec<Ipv4Addr> = (0..topology.pods_in(c)).map(|j| topology.pod_ip(c, j)).collect();
        slice(NS, "kept", name).tcp("http", port).ready_all(&ips)
    };
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &import(NS, "kept").ip(ip).tcp("http", 80));
    dir.write("slice-east.json", &slice(1, "east", 8080));
    dir.write("slice-west.json", &slice(2, "west", 9080));
    let mut agent = AgentGuard::start(topology.node(0), &prefix, dir.path(), topology.client_iface(), "local");
    converge(&topology, &mut agent, vip, "agent programs rules/kept", |_| true);

    let mut streams: Vec<HeldStream> = topology.client().enter(|| {
        (0..8).map(|i| HeldStream::open(vip, TIMEOUT).unwrap_or_else(|e| panic!("stream {i}: {e}"))).collect()
    });
    ping_all(&mut streams, "before SIGKILL");
    let check_new = |allowed: &[&str], when: &str| {
        let answers = tcp_many_ok(&topology, vip, 30, when);
        for a in &answers {
            assert!(allowed.contains(&cluster_of(&a.identity)), "{when}: new connection reached {}", a.identity);
            assert_eq!(a.port, port_of(&a.identity), "{when}: target port of {}", a.identity);
        }
        answers
    };

    // 1. SIGKILL, nothing changed.
    assert!(!agent.stop(libc::SIGKILL), "SIGKILL is not a clean exit");
    ping_all(&mut streams, "while the agent is dead");
    check_new(&["east", "west"], "while the agent is dead");
    agent.restart();
    check_new(&["east", "west"], "right after the first restart");
    agent.keep_pinging(&mut streams, Duration::from_secs(2), "after the first restart");

    // 2. SIGKILL, north added while no agent runs.
    assert!(!agent.stop(libc::SIGKILL), "SIGKILL is not a clean exit");
    manifest::write(&agent.manifests, "slice-north.json", &slice(3, "north", 7080));
    agent.restart();
    check_new(&["east", "west", "north"], "right after the second restart");
    agent.keep_pinging(&mut streams, Duration::from_secs(1), "after the second restart");
    wait_until(CONVERGE, PAUSE, "north answers after the second restart", || {
        let answers = check_new(&["east", "west", "north"], "after the second restart");
        if clusters_answering(&answers).contains("north") { Ok(()) } else { Err("no answer from north".into()) }
    });
    ping_all(&mut streams, "after north joined");

    // 3. SIGKILL, west removed while no agent runs; west's own streams are closed first.
    let (west, mut kept): (Vec<HeldStream>, Vec<HeldStream>) =
        streams.into_iter().partition(|s| cluster_of(s.identity()) == "west");
    for s in west {
        s.close().expect("close a west stream");
    }
    assert!(!agent.stop(libc::SIGKILL), "SIGKILL is not a clean exit");
    agent.remove_manifest("slice-west.json");
    agent.restart();
    check_new(&["east", "west", "north"], "right after the third restart");
    agent.keep_pinging(&mut kept, Duration::from_secs(1), "after the third restart");
    wait_table_clusters(&agent.pin_path, ip, 80, "TCP", &["east", "north"]);
    let answers = check_new(&["east", "north"], "after west was removed");
    assert_eq!(clusters_answering(&answers).len(), 2, "east and north both answer: {answers:?}");
    ping_all(&mut kept, "at the end");
    for s in kept {
        s.close().expect("close a stream");
    }
    agent.assert_running();
}
