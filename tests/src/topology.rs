//! A fake `ClusterSet` built from network namespaces.
//!
//! ```text
//!                       fabric ns: bridge br0 (198.18.255.0/24)
//!            n0 |                 n1 |                 n2 |
//!        fab0 .255.1          fab0 .255.2          fab0 .255.3
//!   node ns (cluster 0)   node ns (cluster 1)   node ns (cluster 2)
//!   cpod   pod0 ...       pod0   pod1 ...       pod0   pod1 ...
//!    |      |              |      |              |      |
//!  client  (backends)    pod ns  pod ns        pod ns  pod ns
//! 198.18.0.2 198.18.0.10  198.18.1.10 .1.11    198.18.2.10 .2.11
//! ```
//!
//! Flat routing, no overlay: each node routes the other clusters' pod /24 via that node's fabric
//! address and its own pods as `/32 dev <hostside>`. Pods have a /32 on `eth0`, a default
//! route `via 198.18.254.1 dev eth0 onlink` and a permanent neighbour entry for that gateway with
//! the host-side veth's MAC; nodes likewise have permanent neighbour entries for their pods, so
//! no ARP happens on pod links. Every node blackholes 198.19.0.0/16 (ClusterSetIPs): without the
//! eBPF program, traffic to a `ClusterSetIP` dies in the client's node.
//!
//! Cluster 0 is the client's cluster, the one whose node runs the agent. It may have backend pods
//! too (`ClusterSpec::new("local", 2)`), behind the same node as the client: then a connection
//! from the client to a local backend enters the node through `cpod` (where the agent's program
//! translates it) and its replies leave through `cpod` (where they get the `ClusterSetIP` back), so
//! attaching to `cpod` alone covers local and remote backends alike. For traffic that a local
//! backend pod itself sends to a `ClusterSetIP` (hairpin), attach the agent to that pod's
//! host-side veth as well ([`Topology::pod_iface`], `pod<j>`). [`Topology::add_client_ip`] gives
//! the client more source addresses (198.18.0.3..=9) for tests that need several client IPs.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::client::{tcp_ask, udp_ask};
use crate::netns::NetNs;

/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The (virtual) gateway every pod routes through; never assigned to an interface.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 254, 1);
/// `ClusterSetIP` range, blackholed in every node.
pub const CLUSTERSET_CIDR: &str = "198.19.0.0/16";
/// The external client's address ([`Topology::add_external_client`]): a host
/// outside the `ClusterSet` that runs no agent.
pub const EXTERNAL_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);
/// `node(0)`'s address on the uplink to the external client.
pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
/// Name, inside `node(0)`, of the uplink to the external client.
pub const UPLINK_IFACE: &str = "up0";
/// Name, inside `node(0)`, of the host side of the client pod's veth.
pub const CLIENT_IFACE: &str = "cpod";
/// Pod-side interface name in every pod namespace.
pub const POD_IFACE: &str = "eth0";
/// Node-side interface name towards the fabric bridge.
pub const FABRIC_IFACE: &str = "fab0";

/// How long [`Topology::start_servers`] waits for all servers to answer.
const SERVER_READY: Duration = Duration::from_secs(5);

/// What to build.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    /// Cluster 0 is the client's cluster.
    pub clusters: Vec<ClusterSpec>,
}

/// One cluster: a node and `pods` backend pods.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Cluster name (used in server identities `<cluster>/<pod-name>`).
    pub name: String,
    /// Number of backend pods (cluster 0 additionally has the client pod).
    pub pods: usize,
}

impl ClusterSpec {
    /// Convenience constructor.
    #[must_use]
    pub fn new(name: &str, pods: usize) -> ClusterSpec {
        ClusterSpec { name: name.to_owned(), pods }
    }
}

/// The built network. Dropping it kills the servers and deletes the pod namespaces, then the
/// node namespaces, then the fabric.
#[derive(Debug)]
pub struct Topology {
    // NOTE: fields drop in declaration order; this order IS the teardown order.
    servers: Vec<(usize, usize, Child)>,
    external: Option<NetNs>,
    client: NetNs,
    pods: Vec<Vec<NetNs>>,
    nodes: Vec<NetNs>,
    fabric: NetNs,
    prefix: String,
    spec: TopologySpec,
}

fn mac(kind: u8, cluster: usize, pod: u8) -> String {
    let c = u8::try_from(cluster).expect("cluster index fits u8");
    format!("02:{kind:02x}:00:{c:02x}:{pod:02x}:01")
}

/// MAC of a pod's host-side veth (node side). `pod` is 0xff for the client.
fn host_mac(cluster: usize, pod: u8) -> String {
    mac(0xfe, cluster, pod)
}

/// MAC of a pod's `eth0`.
fn pod_mac(cluster: usize, pod: u8) -> String {
    mac(0xfd, cluster, pod)
}

/// Index used in MACs for pod `pod` (client = 0xff).
fn pod_octet(pod: usize) -> u8 {
    u8::try_from(pod).expect("pod index fits u8")
}

/// Fabric address of cluster `c`'s node.
///
/// # Panics
/// If `cluster >= 254`.
#[must_use]
pub fn node_fabric_ip(cluster: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 255, u8::try_from(cluster + 1).expect("cluster index < 254"))
}

/// Address of backend pod `pod` of cluster `cluster`: 198.18.<cluster>.<pod+10>.
///
/// # Panics
/// If `cluster > 255` or `pod > 245`.
#[must_use]
pub fn backend_ip(cluster: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        198,
        18,
        u8::try_from(cluster).expect("cluster index < 254"),
        u8::try_from(pod + 10).expect("pod index < 245"),
    )
}

/// Connects pod namespace `pod` to `node` with a veth (`hostside` in the node, `eth0` in the
/// pod) and sets up addresses, routes and static neighbours on both sides.
fn wire_pod(node: &NetNs, pod: &NetNs, hostside: &str, ip: Ipv4Addr, hmac: &str, pmac: &str) {
    let ip_s = ip.to_string();
    let gw = GATEWAY_IP.to_string();
    node.ip(&[
        "link",
        "add",
        hostside,
        "address",
        hmac,
        "type",
        "veth",
        "peer",
        "name",
        POD_IFACE,
        "address",
        pmac,
        "netns",
        pod.name(),
    ]);
    // Pod side.
    pod.ip(&["addr", "add", &format!("{ip_s}/32"), "dev", POD_IFACE]);
    pod.ip(&["link", "set", POD_IFACE, "up"]);
    pod.ip(&["neigh", "replace", &gw, "lladdr", hmac, "dev", POD_IFACE, "nud", "permanent"]);
    pod.ip(&["route", "add", "default", "via", &gw, "dev", POD_IFACE, "onlink"]);
    // Node side.
    node.ip(&["link", "set", hostside, "up"]);
    node.ip(&["neigh", "replace", &ip_s, "lladdr", pmac, "dev", hostside, "nud", "permanent"]);
    node.ip(&["route", "add", &format!("{ip_s}/32"), "dev", hostside]);
    for (ns, dev) in [(node, hostside), (pod, POD_IFACE)] {
        ns.enter(|| {
            let key = format!("net/ipv4/conf/{dev}/rp_filter");
            std::fs::write(format!("/proc/sys/{key}"), "0")
                .unwrap_or_else(|e| panic!("netns {}: sysctl {key}=0: {e}", ns.name()));
        });
    }
}

impl Topology {
    /// Builds the namespaces and wiring. Namespace names are `<prefix>-fab`, `<prefix>-n<c>`,
    /// `<prefix>-client` and `<prefix>-c<c>p<j>`; pass a [`crate::netns::unique_prefix`].
    ///
    /// # Panics
    /// On any setup failure (everything built so far is torn down), or if the spec has no
    /// clusters, more than 250 clusters or more than 240 pods in a cluster.
    #[must_use]
    pub fn build(prefix: &str, spec: &TopologySpec) -> Topology {
        let n = spec.clusters.len();
        assert!((1..=250).contains(&n), "need 1..=250 clusters, got {n}");
        for c in &spec.clusters {
            assert!(c.pods <= 240, "cluster {}: at most 240 pods", c.name);
        }

        // Locals drop in reverse order on a panic: pods, client, nodes, fabric.
        let fabric = NetNs::new(&format!("{prefix}-fab"));
        fabric.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0"]);
        fabric.ip(&["link", "set", "br0", "up"]);

        let mut nodes = Vec::with_capacity(n);
        for c in 0..n {
            let node = NetNs::new(&format!("{prefix}-n{c}"));
            let port = format!("n{c}");
            node.ip(&["link", "add", FABRIC_IFACE, "type", "veth", "peer", "name", &port, "netns", fabric.name()]);
            fabric.ip(&["link", "set", &port, "master", "br0"]);
            fabric.ip(&["link", "set", &port, "up"]);
            node.ip(&["addr", "add", &format!("{}/24", node_fabric_ip(c)), "dev", FABRIC_IFACE]);
            node.ip(&["link", "set", FABRIC_IFACE, "up"]);
            node.ip(&["route", "add", "blackhole", CLUSTERSET_CIDR]);
            nodes.push(node);
        }
        for (c, node) in nodes.iter().enumerate() {
            for d in (0..n).filter(|&d| d != c) {
                node.ip(&[
                    "route",
                    "add",
                    &format!("198.18.{d}.0/24"),
                    "via",
                    &node_fabric_ip(d).to_string(),
                    "dev",
                    FABRIC_IFACE,
                ]);
            }
        }

        let client = NetNs::new(&format!("{prefix}-client"));
        wire_pod(&nodes[0], &client, CLIENT_IFACE, CLIENT_IP, &host_mac(0, 0xff), &pod_mac(0, 0xff));

        let mut pods: Vec<Vec<NetNs>> = Vec::with_capacity(n);
        for (c, cs) in spec.clusters.iter().enumerate() {
            let mut list = Vec::with_capacity(cs.pods);
            for j in 0..cs.pods {
                let pod = NetNs::new(&format!("{prefix}-c{c}p{j}"));
                wire_pod(
                    &nodes[c],
                    &pod,
                    &format!("pod{j}"),
                    backend_ip(c, j),
                    &host_mac(c, pod_octet(j)),
                    &pod_mac(c, pod_octet(j)),
                );
                list.push(pod);
            }
            pods.push(list);
        }

        Topology {
            servers: Vec::new(),
            external: None,
            client,
            pods,
            nodes,
            fabric,
            prefix: prefix.to_owned(),
            spec: spec.clone(),
        }
    }

    /// The prefix passed to [`Topology::build`].
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The spec this topology was built from.
    #[must_use]
    pub fn spec(&self) -> &TopologySpec {
        &self.spec
    }

    /// Number of clusters.
    #[must_use]
    pub fn clusters(&self) -> usize {
        self.nodes.len()
    }

    /// Number of backend pods in `cluster`.
    ///
    /// # Panics
    /// If `cluster` is out of range.
    #[must_use]
    pub fn pods_in(&self, cluster: usize) -> usize {
        self.pods[cluster].len()
    }

    /// Name of `cluster`.
    ///
    /// # Panics
    /// If `cluster` is out of range.
    #[must_use]
    pub fn cluster_name(&self, cluster: usize) -> &str {
        &self.spec.clusters[cluster].name
    }

    /// The client pod (in cluster 0).
    #[must_use]
    pub fn client(&self) -> &NetNs {
        &self.client
    }

    /// Adds a host outside the `ClusterSet` (`<prefix>-ext`, 198.18.250.2 on
    /// `eth0`), linked to `node(0)`'s uplink `up0` (198.18.250.1/24) like a
    /// VM or a host of another network routed to a gateway node: it routes
    /// the `ClusterSetIP` range via `node(0)`, and no other node has a route
    /// back to it, so only a gateway that source-NATs gets answers to it.
    /// Plain ARP on the link; dropping the topology removes it first.
    ///
    /// # Panics
    /// When it exists already or cannot be built.
    pub fn add_external_client(&mut self) -> &NetNs {
        assert!(self.external.is_none(), "the topology has its external client already");
        let ext = NetNs::new(&format!("{}-ext", self.prefix));
        let node = &self.nodes[0];
        node.ip(&["link", "add", UPLINK_IFACE, "type", "veth", "peer", "name", POD_IFACE, "netns", ext.name()]);
        node.ip(&["addr", "add", &format!("{UPLINK_IP}/24"), "dev", UPLINK_IFACE]);
        node.ip(&["link", "set", UPLINK_IFACE, "up"]);
        ext.ip(&["addr", "add", &format!("{EXTERNAL_CLIENT_IP}/24"), "dev", POD_IFACE]);
        ext.ip(&["link", "set", POD_IFACE, "up"]);
        ext.ip(&["route", "add", CLUSTERSET_CIDR, "via", &UPLINK_IP.to_string(), "dev", POD_IFACE]);
        self.external.insert(ext)
    }

    /// The external client ([`Topology::add_external_client`]).
    ///
    /// # Panics
    /// When it was not added.
    #[must_use]
    pub fn external_client(&self) -> &NetNs {
        self.external.as_ref().expect("the topology has no external client (add_external_client)")
    }

    /// 198.18.0.2.
    #[must_use]
    pub fn client_ip(&self) -> Ipv4Addr {
        CLIENT_IP
    }

    /// Gives the client pod one more address, `198.18.0.<last_octet>` (3..=9), so tests can
    /// stand for several clients: sockets bound to it (see [`crate::client::connect_from`]) leave
    /// through the same veth, `cpod`, and the node routes the replies back there.
    ///
    /// # Panics
    /// If `last_octet` is outside 3..=9 (2 is the client's own address, 10 and up are backend
    /// pods) or the address cannot be added.
    pub fn add_client_ip(&self, last_octet: u8) -> Ipv4Addr {
        assert!((3..=9).contains(&last_octet), "extra client addresses are 198.18.0.3..=198.18.0.9");
        let ip = Ipv4Addr::new(198, 18, 0, last_octet);
        let ip_s = ip.to_string();
        self.client.ip(&["addr", "add", &format!("{ip_s}/32"), "dev", POD_IFACE]);
        let node = &self.nodes[0];
        node.ip(&["neigh", "replace", &ip_s, "lladdr", &pod_mac(0, 0xff), "dev", CLIENT_IFACE, "nud", "permanent"]);
        node.ip(&["route", "add", &format!("{ip_s}/32"), "dev", CLIENT_IFACE]);
        ip
    }

    /// Name, inside `node(0)`, of the host side of the client pod's veth (`cpod`).
    #[must_use]
    pub fn client_iface(&self) -> &str {
        CLIENT_IFACE
    }

    /// Cluster `cluster`'s node.
    ///
    /// # Panics
    /// If `cluster` is out of range.
    #[must_use]
    pub fn node(&self, cluster: usize) -> &NetNs {
        &self.nodes[cluster]
    }

    /// The fabric namespace (bridge `br0`, ports `n<c>`).
    #[must_use]
    pub fn fabric(&self) -> &NetNs {
        &self.fabric
    }

    /// Sets the MTU of `cluster`'s link to the fabric, both ends (the node's `fab0` and the
    /// bridge's port `n<cluster>`). Lowered on two nodes, it makes the fabric between them a
    /// hop with a smaller MTU than the pods': the sending node then answers a larger packet
    /// that may not be fragmented with an ICMP "fragmentation needed", the ordinary PMTU
    /// discovery of a routed path.
    ///
    /// # Panics
    /// If `cluster` is out of range or `ip link` refuses the MTU.
    pub fn set_fabric_mtu(&self, cluster: usize, mtu: u16) {
        let mtu = mtu.to_string();
        self.nodes[cluster].ip(&["link", "set", FABRIC_IFACE, "mtu", &mtu]);
        self.fabric.ip(&["link", "set", &format!("n{cluster}"), "mtu", &mtu]);
    }

    /// Backend pod `pod` of `cluster`.
    ///
    /// # Panics
    /// If out of range.
    #[must_use]
    pub fn pod(&self, cluster: usize, pod: usize) -> &NetNs {
        &self.pods[cluster][pod]
    }

    /// 198.18.<cluster>.<pod+10>.
    ///
    /// # Panics
    /// If out of range.
    #[must_use]
    pub fn pod_ip(&self, cluster: usize, pod: usize) -> Ipv4Addr {
        assert!(pod < self.pods[cluster].len(), "no pod {pod} in cluster {cluster}");
        backend_ip(cluster, pod)
    }

    /// Name of `pod`'s host-side veth inside `node(cluster)` (`pod<j>`).
    #[must_use]
    pub fn pod_iface(&self, _cluster: usize, pod: usize) -> String {
        format!("pod{pod}")
    }

    /// Pod name used in identities: `pod<j>`.
    #[must_use]
    pub fn pod_name(&self, _cluster: usize, pod: usize) -> String {
        format!("pod{pod}")
    }

    /// The identity the server in that pod announces: `<cluster-name>/pod<j>`.
    ///
    /// # Panics
    /// If `cluster` is out of range.
    #[must_use]
    pub fn identity(&self, cluster: usize, pod: usize) -> String {
        format!("{}/{}", self.cluster_name(cluster), self.pod_name(cluster, pod))
    }

    /// Every namespace name of this topology.
    #[must_use]
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v = vec![self.fabric.name().to_owned(), self.client.name().to_owned()];
        v.extend(self.nodes.iter().map(|n| n.name().to_owned()));
        v.extend(self.pods.iter().flatten().map(|p| p.name().to_owned()));
        v.extend(self.external.iter().map(|e| e.name().to_owned()));
        v
    }

    /// Starts `mcs-testsrv` (found by [`crate::testsrv_path`]) in every backend pod.
    ///
    /// # Panics
    /// See [`Topology::start_servers_with`].
    pub fn start_servers(&mut self, tcp_port: u16, udp_port: u16) {
        let bin = crate::testsrv_path();
        self.start_servers_with(&bin, tcp_port, udp_port);
    }

    /// Starts `bin --name <identity> --tcp <tcp_port> --udp <udp_port>` in every backend pod and
    /// waits (at most 5 s overall) until each answers TCP and UDP on 127.0.0.1 inside its pod.
    ///
    /// # Panics
    /// If a server cannot be started, exits, or does not answer in time.
    pub fn start_servers_with(&mut self, bin: &Path, tcp_port: u16, udp_port: u16) {
        let mut started = Vec::new();
        for c in 0..self.clusters() {
            for j in 0..self.pods_in(c) {
                self.start_server_with(bin, c, j, tcp_port, udp_port);
                started.push((c, j));
            }
        }
        let deadline = Instant::now() + SERVER_READY;
        for (c, j) in started {
            self.wait_server(c, j, tcp_port, udp_port, deadline);
        }
    }

    /// The ClusterSet of `deploy/examples/demo`: cluster 0 `local` (the client, no pods),
    /// `east` and `west` with two pods each, serving east 8080/TCP 5353/UDP and west 9080/TCP
    /// 5354/UDP (the demo EndpointSlices' ports). Returns once every server answers.
    ///
    /// # Panics
    /// As [`Topology::build`] and [`Topology::start_servers_per_cluster`].
    #[must_use]
    pub fn demo(prefix: &str) -> Self {
        let spec = TopologySpec {
            clusters: vec![ClusterSpec::new("local", 0), ClusterSpec::new("east", 2), ClusterSpec::new("west", 2)],
        };
        let mut topology = Self::build(prefix, &spec);
        topology.start_servers_per_cluster(&[(&[], &[]), (&[8080], &[5353]), (&[9080], &[5354])]);
        topology
    }

    /// Starts `mcs-testsrv` in every backend pod, those of cluster `c` listening on the TCP
    /// ports `ports[c].0` and the UDP ports `ports[c].1`, and waits (at most 5 s overall) until
    /// all answer on every port. Clusters beyond `ports` (or with no port at all) get no server.
    ///
    /// # Panics
    /// If a server cannot be started or does not answer in time.
    pub fn start_servers_per_cluster(&mut self, ports: &[(&[u16], &[u16])]) {
        let bin = crate::testsrv_path();
        let mut started = Vec::new();
        for (c, (tcp, udp)) in ports.iter().enumerate().take(self.clusters()) {
            if tcp.is_empty() && udp.is_empty() {
                continue;
            }
            for j in 0..self.pods_in(c) {
                self.start_server_ports(&bin, c, j, tcp, udp);
                started.push((c, j, *tcp, *udp));
            }
        }
        let deadline = Instant::now() + SERVER_READY;
        for (c, j, tcp, udp) in started {
            self.wait_server_ports(c, j, tcp, udp, deadline);
        }
    }

    /// Starts one server (without waiting for it) in pod `(cluster, pod)`. A server already
    /// running there should be stopped first with [`Topology::stop_server`].
    ///
    /// # Panics
    /// If it cannot be spawned.
    pub fn start_server_with(&mut self, bin: &Path, cluster: usize, pod: usize, tcp_port: u16, udp_port: u16) {
        self.start_server_ports(bin, cluster, pod, &[tcp_port], &[udp_port]);
    }

    /// Starts one server (without waiting for it) in pod `(cluster, pod)`, listening on every
    /// port of `tcp` and `udp` (at least one port in all).
    ///
    /// # Panics
    /// If it cannot be spawned or no port is given.
    pub fn start_server_ports(&mut self, bin: &Path, cluster: usize, pod: usize, tcp: &[u16], udp: &[u16]) {
        assert!(!tcp.is_empty() || !udp.is_empty(), "mcs-testsrv needs a port");
        let ns = &self.pods[cluster][pod];
        let mut cmd = ns.nsenter_command(bin);
        cmd.args(["--name", &self.identity(cluster, pod)]);
        for p in tcp {
            cmd.args(["--tcp", &p.to_string()]);
        }
        for p in udp {
            cmd.args(["--udp", &p.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = ns.spawn_cmd(&mut cmd);
        self.servers.push((cluster, pod, child));
    }

    /// Waits until the server in `(cluster, pod)` answers on 127.0.0.1 (inside the pod).
    ///
    /// # Panics
    /// If it exited or did not answer before `deadline`.
    pub fn wait_server(&mut self, cluster: usize, pod: usize, tcp_port: u16, udp_port: u16, deadline: Instant) {
        self.wait_server_ports(cluster, pod, &[tcp_port], &[udp_port], deadline);
    }

    /// Waits until the server in `(cluster, pod)` answers on every port of `tcp` and `udp` on
    /// 127.0.0.1 (inside the pod).
    ///
    /// # Panics
    /// If it exited or did not answer before `deadline`.
    pub fn wait_server_ports(&mut self, cluster: usize, pod: usize, tcp: &[u16], udp: &[u16], deadline: Instant) {
        let want = self.identity(cluster, pod);
        let ns = &self.pods[cluster][pod];
        let short = Duration::from_millis(200);
        let mut last_err = String::from("never tried");
        for _ in 0..500 {
            if let Some((_, _, child)) = self.servers.iter_mut().rev().find(|(c, j, _)| *c == cluster && *j == pod)
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("mcs-testsrv {want} in {} exited early: {status}", ns.name());
            }
            let res = ns.enter(|| {
                let mut ids = Vec::new();
                for p in tcp {
                    ids.push(tcp_ask(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *p), short)?.0);
                }
                for p in udp {
                    ids.push(udp_ask(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *p), short)?.0);
                }
                Ok::<_, std::io::Error>(ids)
            });
            match res {
                Ok(ids) if ids.iter().all(|id| *id == want) => return,
                Ok(ids) => last_err = format!("wrong identity: {ids:?}"),
                Err(e) => last_err = e.to_string(),
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mcs-testsrv {want} in {} not answering on tcp {tcp:?}/udp {udp:?}: {last_err}", ns.name());
    }

    /// Kills the server(s) started in `(cluster, pod)` (SIGKILL) and reaps them.
    pub fn stop_server(&mut self, cluster: usize, pod: usize) {
        let mut keep = Vec::new();
        for (c, j, mut child) in std::mem::take(&mut self.servers) {
            if c == cluster && j == pod {
                let _ = child.kill();
                let _ = child.wait();
            } else {
                keep.push((c, j, child));
            }
        }
        self.servers = keep;
    }
}
