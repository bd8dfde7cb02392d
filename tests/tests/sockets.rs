//! Socket-level load balancing (issue 10), end to end with real sockets.
//!
//! Every test makes a child cgroup under the cgroup2 mount (`mcs…-cg`), points the agent at it
//! with `--cgroup-path`, and moves the test process into it only while its clients run, so no
//! other process of the machine is translated; the guard moves the process back and removes the
//! cgroup, also on panic. The agent stays attached to the client pod's veth as it is deployed,
//! so the tests also show that a connection translated at the socket is not translated again in
//! tc: the backend sees the client's own ephemeral port, never one of the NAT range. The flows
//! issue's clash sequence in socket mode is in `flows.rs`, beside the tc one.
//!
//! Topology (namespaces the tests create, 198.18.0.0/15 only): the client pod 198.18.0.2 behind
//! the node of cluster `local`, where the agent runs; backend pods 198.18.<cluster>.<10+pod>;
//! ClusterSetIPs 198.19.10.x.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use mcs_common::{ServiceKey, ipv4_from_nbo, limits, maglev_slot, proto, socket_hash};
use mcs_tests::{
    agent::AgentGuard,
    apps::{Iperf3, iperf3_server},
    cgroup::{self, ChildCgroup},
    client::{HeldStream, ServerInfo, tcp_info, udp_ask_connected, udp_info},
    inspect_json,
    manifest::{self, ManifestDir},
    netns::{NetNs, cleanup_stale, unique_prefix},
    topology::{ClusterSpec, Topology, TopologySpec, node_fabric_ip},
    wait_until,
};

const NS: &str = "sockets";
const TIMEOUT: Duration = Duration::from_secs(1);
const HTTP_TARGET: u16 = 8080;
const DNS_TARGET: u16 = 5353;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 1);
const HTTP: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
const DNS: SocketAddrV4 = SocketAddrV4::new(VIP, 53);
/// The programs a socket-mode agent attaches to its cgroup, as bpftool names their attach types.
const HOOKS: [&str; 4] =
    ["cgroup_inet4_connect", "cgroup_inet4_getpeername", "cgroup_udp4_recvmsg", "cgroup_udp4_sendmsg"];

/// Everything one test owns, dropped in this order: the agent (its pins, so its links), then
/// the cgroup (the test process leaves it), then the manifests, then the namespaces.
struct Setup {
    agent: AgentGuard,
    cgroup: ChildCgroup,
    /// Kept for its guard: the manifests the agent's own directory was copied from.
    _dir: ManifestDir,
    topology: Topology,
    prefix: String,
}

/// Namespaces for `local` (the client's cluster, with `local_pods` pods) and the `exporters`
/// clusters, after removing what killed runs left.
fn topology(tag: &str, local_pods: usize, exporters: &[(&str, usize)]) -> (Topology, String) {
    for stale in cleanup_stale().into_iter().chain(cgroup::cleanup_stale()) {
        eprintln!("removed {stale} left by an earlier run");
    }
    let prefix = unique_prefix(tag);
    let mut clusters = vec![ClusterSpec::new("local", local_pods)];
    clusters.extend(exporters.iter().map(|(name, pods)| ClusterSpec::new(name, *pods)));
    (Topology::build(&prefix, &TopologySpec { clusters }), prefix)
}

/// Starts the agent in socket mode on a new child cgroup (plus `extra` arguments), reading
/// `dir`, attached to the client's veth and `interfaces`.
fn launch(topology: Topology, prefix: String, dir: ManifestDir, interfaces: &[String], extra: &[&str]) -> Setup {
    let cgroup = ChildCgroup::new(&prefix, "");
    let mut builder = AgentGuard::builder(topology.node(0), &prefix)
        .manifests(dir.path())
        .interface(topology.client_iface())
        .arg(&cgroup.arg());
    for interface in interfaces {
        builder = builder.interface(interface);
    }
    for arg in extra {
        builder = builder.arg(arg);
    }
    let agent = builder.start();
    Setup { agent, cgroup, _dir: dir, topology, prefix }
}

/// `local` (no pods) plus `exporters` clusters with servers on 8080/TCP and 5353/UDP in every
/// pod, the import `manifest::web_import(NS, name, VIP)` and each exporter's slice, and the agent.
fn setup(tag: &str, exporters: &[(&str, usize)], name: &str, affinity: Option<i64>, extra: &[&str]) -> Setup {
    let (mut topology, prefix) = topology(tag, 0, exporters);
    topology.start_servers(HTTP_TARGET, DNS_TARGET);
    let dir = ManifestDir::new(&prefix);
    let import = manifest::web_import(NS, name, VIP);
    match affinity {
        Some(timeout) => dir.write("import.json", &import.client_ip_affinity(timeout)),
        None => dir.write("import.json", &import),
    }
    for cluster in 1..=exporters.len() {
        dir.write(&format!("slice-{cluster}.json"), &manifest::web_slice(&topology, NS, name, cluster));
    }
    launch(topology, prefix, dir, &[], extra)
}

/// Runs `f` in `ns` with the test process inside `cgroup` (so sockets `f` makes, and programs
/// it starts, are the socket programs' to translate).
fn inside<T: Send>(cgroup: &mut ChildCgroup, ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    cgroup.enter();
    let out = ns.enter(f);
    cgroup.leave();
    out
}

impl Setup {
    /// Waits until the agent has programmed the import's TCP and UDP tables with `clusters`.
    fn wait_tables(&mut self, clusters: &[&str]) {
        self.agent.wait_table(HTTP, "TCP", clusters);
        self.agent.wait_table(DNS, "UDP", clusters);
    }

    /// Runs `f` in the client pod, inside the cgroup.
    fn in_client<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        inside(&mut self.cgroup, self.topology.client(), f)
    }

    /// Runs `f` in the node's own namespace, inside the cgroup.
    fn in_node<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        inside(&mut self.cgroup, self.topology.node(0), f)
    }

    /// The identity → pod address map of the topology's backends.
    fn pod_ips(&self) -> BTreeMap<String, Ipv4Addr> {
        let t = &self.topology;
        (0..t.clusters()).flat_map(|c| (0..t.pods_in(c)).map(move |p| (t.identity(c, p), t.pod_ip(c, p)))).collect()
    }

    /// The service port's counters in `mcs-agent inspect -o json`.
    fn counters(&self, service: SocketAddrV4, protocol: &str) -> serde_json::Value {
        let state = inspect_json(&self.agent.pin_path, &[]);
        find_service(&state, service, protocol)["counters"].clone()
    }

    /// A datapath event counter (`stats` of `inspect -o json`, by name).
    fn stat(&self, name: &str) -> u64 {
        let state = inspect_json(&self.agent.pin_path, &[]);
        state["stats"][name].as_u64().unwrap_or_else(|| panic!("no stat {name:?} in {}", state["stats"]))
    }
}

fn find_service(state: &serde_json::Value, service: SocketAddrV4, protocol: &str) -> serde_json::Value {
    state["services"]
        .as_array()
        .and_then(|list| {
            list.iter().find(|s| {
                s["ip"].as_str() == Some(&service.ip().to_string())
                    && s["port"].as_u64() == Some(u64::from(service.port()))
                    && s["protocol"] == protocol
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("{service}/{protocol} is not in inspect's services: {}", state["services"]))
}

fn count(counters: &serde_json::Value, field: &str) -> u64 {
    counters[field].as_u64().unwrap_or_else(|| panic!("no counter {field:?} in {counters}"))
}

/// `SO_COOKIE` of a socket: what the socket programs hash to pick its Maglev slot.
fn socket_cookie(fd: i32) -> u64 {
    /// `SO_COOKIE` from `asm-generic/socket.h`.
    const SO_COOKIE: libc::c_int = 57;
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).expect("8 fits");
    // SAFETY: the buffer and its length are valid for the call.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, SO_COOKIE, (&raw mut cookie).cast(), &raw mut len) };
    assert_eq!(rc, 0, "getsockopt(SO_COOKIE): {}", io::Error::last_os_error());
    cookie
}

/// Connects to `addr`, reads the server's greeting (its identity): (identity, peer as the
/// socket reports it, the socket's cookie).
fn tcp_greeting(addr: SocketAddrV4) -> io::Result<(String, SocketAddr, u64)> {
    let stream = TcpStream::connect_timeout(&addr.into(), TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let cookie = socket_cookie(stream.as_raw_fd());
    let peer = stream.peer_addr()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok((line.trim().to_owned(), peer, cookie))
}

/// The cluster part of an identity `<cluster>/<pod>`.
fn cluster(identity: &str) -> &str {
    identity.split('/').next().unwrap_or(identity)
}

/// A pod's TCP and UDP (connected and unconnected) reach backends of two clusters in socket
/// mode, with the ClusterSetIP as the peer the client sees; the backends see the client pod's
/// own ephemeral port (no tc translation on top); the counters say the socket path did it; and
/// every connection went to the backend that the agent's Maglev table names for the hash of its
/// socket cookie.
#[test]
fn a_pods_tcp_and_udp_reach_two_clusters_at_the_socket_with_the_cluster_set_ip_as_peer() {
    let mut s = setup("sock-basic", &[("east", 2), ("west", 2)], "web", None, &[]);
    s.wait_tables(&["east", "west"]);
    let (tcp, greetings, connected, unconnected) = s.in_client(|| {
        let tcp: Vec<io::Result<ServerInfo>> = (0..40).map(|_| tcp_info(HTTP, TIMEOUT)).collect();
        let greetings: Vec<io::Result<(String, SocketAddr, u64)>> = (0..60).map(|_| tcp_greeting(HTTP)).collect();
        let connected: Vec<io::Result<String>> = (0..40).map(|_| udp_ask_connected(DNS, TIMEOUT)).collect();
        let unconnected: Vec<io::Result<ServerInfo>> = (0..40).map(|_| udp_info(DNS, TIMEOUT)).collect();
        (tcp, greetings, connected, unconnected)
    });
    s.agent.assert_running();
    let client_ip = s.topology.client_ip();
    let mut clusters: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for info in &tcp {
        let info = info.as_ref().unwrap_or_else(|e| panic!("TCP to {HTTP} in socket mode: {e}"));
        assert_eq!(info.server, SocketAddr::V4(HTTP), "getpeername() shows the ClusterSetIP: {info:?}");
        assert_eq!(info.peer.ip(), IpAddr::V4(client_ip), "the backend sees the client pod: {info:?}");
        assert!(
            info.peer.port() > limits::NAT_PORT_MAX,
            "the backend sees the client's own ephemeral port, not one of the tc path's NAT range: {info:?}"
        );
        clusters.entry("tcp").or_default().insert(cluster(&info.identity).to_owned());
    }
    for answer in &connected {
        let identity = answer.as_ref().unwrap_or_else(|e| panic!("connected UDP to {DNS}: {e}"));
        clusters.entry("udp connected").or_default().insert(cluster(identity).to_owned());
    }
    for info in &unconnected {
        let info = info.as_ref().unwrap_or_else(|e| panic!("unconnected UDP to {DNS}: {e}"));
        assert_eq!(info.server, SocketAddr::V4(DNS), "recvfrom() shows the ClusterSetIP as the source: {info:?}");
        clusters.entry("udp unconnected").or_default().insert(cluster(&info.identity).to_owned());
    }
    for (kind, seen) in &clusters {
        assert_eq!(seen, &BTreeSet::from(["east".to_owned(), "west".to_owned()]), "{kind}: clusters answering");
    }

    // Agreement with the agent's table: slot = socket_hash(cookie) % table size.
    let snapshot = mcs_agent::inspect::Snapshot::from_pins(&s.agent.pin_path, false).expect("read the pins");
    let value = snapshot.services[&ServiceKey::new(VIP, 80, proto::TCP)];
    let table = &snapshot.tables[&value.service_id];
    let pods = s.pod_ips();
    let mut agree = 0;
    for greeting in &greetings {
        let (identity, peer, cookie) = greeting.as_ref().unwrap_or_else(|e| panic!("TCP greeting via {HTTP}: {e}"));
        assert_eq!(*peer, SocketAddr::V4(HTTP));
        let slot = maglev_slot(socket_hash(*cookie), value.table_size) as usize;
        let predicted = ipv4_from_nbo(snapshot.backends[&table[slot]].addr);
        assert_eq!(Some(&predicted), pods.get(identity), "socket {cookie}: slot {slot} names {predicted}");
        agree += 1;
    }
    println!("Maglev agreement at the socket: {agree} of {} connections", greetings.len());

    let http = s.counters(HTTP, "TCP");
    let dns = s.counters(DNS, "UDP");
    println!("counters: {HTTP}/TCP {http}, {DNS}/UDP {dns}");
    assert!(count(&http, "socketTranslated") >= 100, "every TCP connect() counted: {http}");
    assert!(count(&dns, "socketTranslated") >= 80, "every UDP connect() and sendto() counted: {dns}");
    assert_eq!(count(&http, "newFlows") + count(&dns, "newFlows"), 0, "the tc path translated nothing: {http} {dns}");
    assert!(s.stat("socket-reverse") >= 80, "getpeername() and recvfrom() were reversed");
}

/// A process in the node's own network namespace (a hostNetwork pod, a node daemon) reaches a
/// ClusterSetIP, over TCP and UDP; with `--socket-lb-host-only` it still does, while the pod's
/// connections are left to the tc programs (the backend then sees a port of the NAT range).
#[test]
fn the_nodes_own_processes_reach_a_cluster_set_ip_and_host_only_leaves_pods_to_tc() {
    let mut s = setup("sock-host", &[("east", 2)], "web", None, &[]);
    s.wait_tables(&["east"]);
    let from_node = s.in_node(|| (tcp_info(HTTP, TIMEOUT), udp_info(DNS, TIMEOUT)));
    let (tcp, udp) = (from_node.0.expect("TCP from the node"), from_node.1.expect("UDP from the node"));
    assert_eq!(cluster(&tcp.identity), "east");
    assert_eq!((tcp.server, udp.server), (SocketAddr::V4(HTTP), SocketAddr::V4(DNS)), "{tcp:?} {udp:?}");
    assert_eq!(tcp.peer.ip(), IpAddr::V4(node_fabric_ip(0)), "the node's own address: {tcp:?}");

    s.agent.stop(libc::SIGTERM);
    let cgroup_arg = s.cgroup.arg();
    s.agent.restart_with(&[&cgroup_arg, "--socket-lb-host-only"]);
    // The tables were there all along (pinned): wait for the new agent's programs instead.
    mcs_tests::wait_inspect(&s.agent.pin_path, "the agent loaded with --socket-lb-host-only", |state| {
        if state["config"]["socketLbHostOnly"] == true { Ok(()) } else { Err(format!("{}", state["config"])) }
    });
    s.agent.assert_running();
    let before = count(&s.counters(HTTP, "TCP"), "socketTranslated");
    let from_pod = s.in_client(|| (0..5).map(|_| tcp_info(HTTP, TIMEOUT)).collect::<Vec<_>>());
    for info in &from_pod {
        let info = info.as_ref().expect("TCP from the pod with --socket-lb-host-only");
        assert_eq!(info.server, SocketAddr::V4(HTTP));
        assert!(
            (limits::NAT_PORT_MIN..=limits::NAT_PORT_MAX).contains(&info.peer.port()),
            "with --socket-lb-host-only the pod's connection goes through tc (a NAT-range port): {info:?}"
        );
    }
    let from_node = s.in_node(|| tcp_info(HTTP, TIMEOUT)).expect("TCP from the node, host-only");
    assert!(from_node.peer.port() > limits::NAT_PORT_MAX, "the node is still translated at the socket");
    let http = s.counters(HTTP, "TCP");
    assert_eq!(count(&http, "socketTranslated"), before + 1, "only the node's connect() was translated: {http}");
    assert!(count(&http, "newFlows") >= 5, "the pod's connections were tc flows: {http}");
}

/// A TCP `connect()` to a service port without a usable backend fails with `ECONNREFUSED`
/// before any packet is sent (no SYN waits for a retransmit), as do a UDP `connect()` and an
/// unconnected `sendto()`; `inspect` and `/metrics` count the refusals on the service port.
#[test]
fn a_connect_to_a_service_without_backends_is_refused_at_once_and_counted() {
    let empty_ip = Ipv4Addr::new(198, 19, 10, 20);
    let metrics = SocketAddrV4::new(node_fabric_ip(0), 9465);
    let metrics_arg = format!("--metrics-addr={metrics}");
    let mut s = setup("sock-refuse", &[("east", 1)], "web", None, &[&metrics_arg]);
    manifest::write(&s.agent.manifests, "empty.json", &manifest::web_import(NS, "empty", empty_ip));
    s.wait_tables(&["east"]);
    let empty = SocketAddrV4::new(empty_ip, 80);
    mcs_tests::wait_inspect(&s.agent.pin_path, "the service port without backends is programmed", |state| {
        let found = state["services"].as_array().is_some_and(|list| {
            list.iter().any(|x| x["ip"].as_str() == Some(&empty_ip.to_string()) && x["protocol"] == "UDP")
        });
        if found { Ok(()) } else { Err(format!("{}", state["services"])) }
    });
    let (tcp, udp_connect, udp_sendto) = s.in_client(|| {
        let tcp: Vec<(Duration, io::Result<TcpStream>)> = (0..21)
            .map(|_| {
                let start = Instant::now();
                let result = TcpStream::connect_timeout(&empty.into(), Duration::from_secs(3));
                (start.elapsed(), result)
            })
            .collect();
        let udp = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        let udp_connect = udp.connect(SocketAddrV4::new(empty_ip, 53));
        let udp = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        let udp_sendto = udp.send_to(b"ask\n", SocketAddrV4::new(empty_ip, 53));
        (tcp, udp_connect, udp_sendto)
    });
    let mut times: Vec<Duration> = Vec::new();
    for (elapsed, result) in tcp {
        let e = result.expect_err("no backend: the connect must fail");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "ECONNREFUSED, after {elapsed:?}: {e}");
        // A SYN that had to be answered (or retransmitted) would take a round trip or a second.
        assert!(elapsed < Duration::from_secs(1), "refused only after {elapsed:?}");
        times.push(elapsed);
    }
    times.sort();
    println!(
        "connect() refused at the socket: fastest {:?}, median {:?}, slowest {:?}",
        times[0], times[10], times[20]
    );
    for (what, result) in [("UDP connect()", udp_connect), ("UDP sendto()", udp_sendto.map(drop))] {
        let e = result.expect_err("no backend: refused");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{what}: {e}");
    }
    let tcp_counters = s.counters(empty, "TCP");
    let udp_counters = s.counters(SocketAddrV4::new(empty_ip, 53), "UDP");
    assert_eq!(count(&tcp_counters, "socketRefused"), 21, "{tcp_counters}");
    assert_eq!(count(&udp_counters, "socketRefused"), 2, "{udp_counters}");
    assert_eq!(count(&tcp_counters, "rejected"), 0, "no packet reached tc: {tcp_counters}");

    let text = s.topology.node(0).enter(|| http_get_text(metrics)).expect("GET /metrics");
    let sample = format!(
        "mcs_service_events_total{{namespace=\"{NS}\",name=\"empty\",service=\"{empty_ip}:80/6\",event=\"socket-refused\"}} 21"
    );
    assert!(text.lines().any(|l| l == sample), "/metrics has {sample:?}:\n{text}");
}

fn http_get_text(addr: SocketAddrV4) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// With `ClientIP` affinity, every connection of one pod goes to one backend at the socket
/// (the client is the pod's network namespace), TCP and UDP.
#[test]
fn client_ip_affinity_holds_at_the_socket() {
    let mut s = setup("sock-affinity", &[("east", 2), ("west", 2)], "sticky", Some(600), &[]);
    s.wait_tables(&["east", "west"]);
    let (tcp, udp) = s.in_client(|| {
        let tcp: Vec<_> = (0..20).map(|_| tcp_info(HTTP, TIMEOUT)).collect();
        let udp: Vec<_> = (0..20).map(|_| udp_ask_connected(DNS, TIMEOUT)).collect();
        (tcp, udp)
    });
    let tcp: BTreeSet<String> = tcp.into_iter().map(|r| r.expect("TCP with affinity").identity).collect();
    let udp: BTreeSet<String> = udp.into_iter().map(|r| r.expect("UDP with affinity")).collect();
    assert_eq!(tcp.len(), 1, "20 TCP connections, one backend: {tcp:?}");
    assert_eq!(udp.len(), 1, "20 UDP sockets, one backend: {udp:?}");
    assert!(s.stat("affinity-hit") >= 38, "all but the first of each protocol followed affinity");
}

/// TCP streams opened through the ClusterSetIP in socket mode survive an agent stopped with
/// SIGTERM and one killed with SIGKILL; each new agent swaps its programs into the pinned links
/// (the cgroup holds exactly one program per hook throughout) and translates new connections.
#[test]
fn held_streams_survive_restarts_and_the_links_are_swapped_in_place() {
    let mut s = setup("sock-restart", &[("east", 2), ("west", 2)], "web", None, &[]);
    s.wait_tables(&["east", "west"]);
    let hooks = |s: &Setup| s.cgroup.attached().into_iter().map(|h| h.kind).collect::<Vec<_>>();
    let ids = |s: &Setup| s.cgroup.attached().into_iter().map(|h| h.id).collect::<BTreeSet<_>>();
    assert_eq!(hooks(&s), HOOKS, "one program per hook");
    let mut streams =
        s.in_client(|| (0..6).map(|_| HeldStream::open(HTTP, TIMEOUT).expect("a held stream")).collect::<Vec<_>>());
    for stream in &streams {
        assert_eq!(stream.peer_addr(), SocketAddr::V4(HTTP));
    }
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let before = ids(&s);
        s.agent.stop(signal);
        mcs_tests::client::ping_all(&mut streams, "with no agent running");
        s.agent.restart();
        wait_until(Duration::from_secs(15), Duration::from_millis(50), "the new agent's programs are attached", || {
            s.agent.assert_running();
            let now = ids(&s);
            if now.is_disjoint(&before) { Ok(()) } else { Err(format!("program ids {now:?}, before {before:?}")) }
        });
        s.wait_tables(&["east", "west"]);
        s.agent.keep_pinging(&mut streams, Duration::from_secs(1), "after the restart");
        assert_eq!(hooks(&s), HOOKS, "after signal {signal}: the programs were swapped into the pinned links");
        let info = s.in_client(|| tcp_info(HTTP, TIMEOUT)).expect("a new connection after the restart");
        assert!(info.peer.port() > limits::NAT_PORT_MAX, "translated at the socket: {info:?}");
    }
    for stream in streams {
        stream.close().expect("close a held stream");
    }
}

/// A restart with another `--cgroup-path` moves the links (the old cgroup has no program
/// left), and one with `--socket-lb=false` detaches them and removes their pins.
#[test]
fn the_cgroup_links_follow_cgroup_path_and_go_with_socket_lb_off() {
    let mut s = setup("sock-move", &[("east", 1)], "web", None, &[]);
    s.wait_tables(&["east"]);
    let other = ChildCgroup::new(&s.prefix, "other");
    assert_eq!(s.cgroup.attached().len(), 4);
    assert!(other.attached().is_empty());
    s.agent.stop(libc::SIGTERM);
    s.agent.restart_with(&[&other.arg()]);
    s.wait_tables(&["east"]);
    wait_until(Duration::from_secs(5), Duration::from_millis(50), "the links move to the other cgroup", || {
        let (old, new) = (s.cgroup.attached(), other.attached());
        if old.is_empty() && new.len() == 4 { Ok(()) } else { Err(format!("old {old:?}, new {new:?}")) }
    });
    s.agent.stop(libc::SIGTERM);
    s.agent.restart_with(&["--socket-lb=false"]);
    s.wait_tables(&["east"]);
    wait_until(Duration::from_secs(5), Duration::from_millis(50), "the links go", || {
        let left = other.attached();
        if left.is_empty() { Ok(()) } else { Err(format!("still attached: {left:?}")) }
    });
    let pins: Vec<String> = std::fs::read_dir(s.agent.pin_path.join("links"))
        .expect("the links directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sock_"))
        .collect();
    assert!(pins.is_empty(), "socket link pins left: {pins:?}");
}

/// The client's cached path MTU towards `dst` (`ip route get`), if it has one.
fn cached_mtu(client: &NetNs, dst: Ipv4Addr) -> Option<u16> {
    let route = client.ip(&["route", "get", &dst.to_string()]);
    let mut words = route.split_whitespace();
    words.by_ref().find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// PMTU discovery in socket mode: an `iperf3` upload from the client pod (MTU 1500) across a
/// fabric hop of MTU 1400 through the ClusterSetIP gets at least half the direct throughput,
/// and the client caches the hop's MTU for the pod its socket is connected to.
#[test]
fn an_upload_across_a_1400_byte_hop_gets_half_the_direct_throughput_in_socket_mode() {
    const PORT: u16 = 5201;
    const HOP_MTU: u16 = 1400;
    let vip = SocketAddrV4::new(Ipv4Addr::new(198, 19, 10, 40), PORT);
    let (topology, prefix) = topology("sock-pmtu", 0, &[("east", 1)]);
    iperf3_server(topology.pod(1, 0), PORT);
    for cluster in [0, 1] {
        topology.set_fabric_mtu(cluster, HOP_MTU);
    }
    topology.client().sysctl("net.ipv4.tcp_mtu_probing", "0");
    let pod = topology.pod_ip(1, 0);
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &manifest::import(NS, "upload").ip(vip.ip()).tcp("iperf", PORT));
    dir.write("slice.json", &manifest::slice(NS, "upload", "east").tcp("iperf", PORT).ready(pod));
    let mut s = launch(topology, prefix, dir, &[], &[]);
    s.agent.wait_table(vip, "TCP", &["east"]);
    let direct = SocketAddrV4::new(pod, PORT);
    let (mut best_direct, mut best_vip) = (0.0_f64, 0.0_f64);
    let mut figures = String::new();
    for round in 1..=2 {
        for (name, target) in [("direct", direct), ("socket", vip)] {
            s.cgroup.enter();
            let report = Iperf3::new(target).run(s.topology.client());
            s.cgroup.leave();
            let line = format!("round {round} {name:<6} {target}: {}", report.summary());
            println!("{line}");
            let _ = writeln!(figures, "{line}");
            let best = if target == vip { &mut best_vip } else { &mut best_direct };
            *best = best.max(report.gbps);
        }
    }
    let mtu = cached_mtu(s.topology.client(), pod);
    assert_eq!(mtu, Some(HOP_MTU), "the client cached the hop's MTU for the pod\n{figures}");
    assert!(
        best_direct > 0.0 && best_vip >= 0.5 * best_direct,
        "through the ClusterSetIP {best_vip:.2} Gbit/s, direct {best_direct:.2}\n{figures}"
    );
    assert!(
        count(&s.counters(vip, "TCP"), "socketTranslated") >= 2,
        "iperf3's connections were translated at the socket"
    );
}

/// Hairpin in socket mode: a pod whose only backend is itself is answered by itself through
/// the ClusterSetIP, 10 of 10 over TCP and UDP, from the ClusterSetIP, and sees its own
/// address as the peer: at the socket a pod connecting to itself needs no hairpin SNAT.
#[test]
fn a_pod_whose_only_backend_is_itself_is_answered_in_socket_mode() {
    let (mut topology, prefix) = topology("sock-hairpin", 1, &[]);
    topology.start_servers(HTTP_TARGET, DNS_TARGET);
    let dir = ManifestDir::new(&prefix);
    dir.write("import.json", &manifest::web_import(NS, "self", VIP));
    dir.write("slice.json", &manifest::web_slice(&topology, NS, "self", 0));
    let pod_iface = topology.pod_iface(0, 0);
    let mut s = launch(topology, prefix, dir, &[pod_iface], &[]);
    s.wait_tables(&["local"]);
    let me = s.topology.identity(0, 0);
    let my_ip = s.topology.pod_ip(0, 0);
    let (tcp, udp) = inside(&mut s.cgroup, s.topology.pod(0, 0), || {
        let tcp: Vec<_> = (0..10).map(|_| tcp_info(HTTP, TIMEOUT)).collect();
        let udp: Vec<_> = (0..10).map(|_| udp_info(DNS, TIMEOUT)).collect();
        (tcp, udp)
    });
    for (protocol, vip, list) in [("TCP", HTTP, tcp), ("UDP", DNS, udp)] {
        for info in list {
            let info = info.unwrap_or_else(|e| panic!("{protocol} from {me} to {vip}: {e}"));
            assert_eq!(
                (info.identity.as_str(), info.server),
                (me.as_str(), SocketAddr::V4(vip)),
                "{protocol}: {info:?}"
            );
            assert_eq!(info.peer.ip(), IpAddr::V4(my_ip), "{protocol}: the pod sees itself as the peer: {info:?}");
        }
    }
    assert_eq!(s.stat("hairpin-new"), 0, "nothing was hairpinned in tc");
}
