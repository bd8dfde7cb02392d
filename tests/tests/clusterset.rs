//! End to end: a client pod connects to a ClusterSetIP and is answered by pods
//! of two other clusters, through the agent running on the client's node.
//!
//! Topology (all in namespaces this test creates, 198.18.0.0/15 only):
//! - cluster `local`: the client pod 198.18.0.2 and its node, where the agent
//!   runs and attaches to the client pod's veth;
//! - clusters `east` and `west`: a node and two pods each, serving their
//!   identity on different target ports (east 8080/5353, west 9080/5354);
//! - the nodes meet on a flat fabric and route each other's pod ranges.
//!
//! The agent is driven by the manifests in `deploy/examples/demo`.
use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use mcs_tests::{
    agent_path,
    client::{tcp_ask, udp_ask},
    netns::unique_prefix,
    topology::{ClusterSpec, Topology, TopologySpec},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const HTTP: u16 = 80;
const DNS: u16 = 53;
const EAST: usize = 1;
const WEST: usize = 2;
const TIMEOUT: Duration = Duration::from_millis(500);

/// The agent process with its manifest directory and pins; all removed on drop.
struct Agent {
    child: Option<Child>,
    manifests: PathBuf,
    pin_path: PathBuf,
}

impl Agent {
    fn start(topology: &Topology, prefix: &str) -> Self {
        let manifests = std::env::temp_dir().join(format!("{prefix}-manifests"));
        fs::create_dir_all(&manifests).expect("create manifest dir");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
        for entry in fs::read_dir(&examples).expect("read deploy/examples/demo") {
            let path = entry.expect("dir entry").path();
            fs::copy(&path, manifests.join(path.file_name().expect("file name"))).expect("copy manifest");
        }
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/mcs-test-{prefix}"));
        let mut agent = Self { child: None, manifests, pin_path };
        // Only the network namespace is entered, so the pins land in the shared bpffs.
        let mut cmd = topology.node(0).nsenter_command(agent_path());
        cmd.args(["run", "--manifests"])
            .arg(&agent.manifests)
            .args(["--interfaces", topology.client_iface(), "--cluster-id", "local", "--pin-path"])
            .arg(&agent.pin_path)
            .args(["--poll-interval-ms", "50"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        agent.child = Some(cmd.spawn().expect("start mcs-agent"));
        agent
    }

    fn remove_manifest(&self, name: &str) {
        fs::remove_file(self.manifests.join(name)).unwrap_or_else(|e| panic!("remove {name}: {e}"));
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("agent started");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("mcs-agent exited: {status}");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: the agent must exit cleanly on it.
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
            // SAFETY: the pid is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pin_path.exists()
            && let Err(e) = fs::remove_dir_all(&self.pin_path)
        {
            eprintln!("removing {}: {e}", self.pin_path.display());
        }
        let _ = fs::remove_dir_all(&self.manifests);
    }
}

fn build() -> (Topology, String) {
    let prefix = unique_prefix("clusterset");
    let spec = TopologySpec {
        clusters: vec![ClusterSpec::new("local", 0), ClusterSpec::new("east", 2), ClusterSpec::new("west", 2)],
    };
    let mut topology = Topology::build(&prefix, &spec);
    let server = mcs_tests::testsrv_path();
    for (cluster, tcp, udp) in [(EAST, 8080, 5353), (WEST, 9080, 5354)] {
        for pod in 0..2 {
            topology.start_server_with(&server, cluster, pod, tcp, udp);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (cluster, tcp, udp) in [(EAST, 8080, 5353), (WEST, 9080, 5354)] {
        for pod in 0..2 {
            topology.wait_server(cluster, pod, tcp, udp, deadline);
        }
    }
    (topology, prefix)
}

/// Asks the ClusterSetIP over TCP from the client pod, `n` connections.
fn ask_many(topology: &Topology, n: usize) -> Vec<std::io::Result<(String, SocketAddr)>> {
    topology.client().enter(|| (0..n).map(|_| tcp_ask(SocketAddrV4::new(VIP, HTTP), TIMEOUT)).collect())
}

/// Waits (at most `limit`) until `ok` holds for a batch of answers.
fn wait_for(topology: &Topology, agent: &mut Agent, limit: Duration, what: &str, ok: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    for _ in 0..200 {
        agent.assert_running();
        last =
            ask_many(topology, 8).into_iter().map(|r| r.map_or_else(|e| format!("error: {e}"), |(id, _)| id)).collect();
        if ok(&last) {
            return;
        }
        if Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}; last answers {last:?}");
}

#[test]
fn cluster_set_ip_reaches_pods_of_every_exporting_cluster() {
    let (topology, prefix) = build();
    let mut agent = Agent::start(&topology, &prefix);
    wait_for(&topology, &mut agent, Duration::from_secs(15), "agent programs the service", |answers| {
        answers.iter().all(|a| !a.starts_with("error"))
    });

    // 50 connections: every backend answers at least once, and the client's
    // socket sees the ClusterSetIP as its peer.
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (i, answer) in ask_many(&topology, 50).into_iter().enumerate() {
        let (identity, peer) = answer.unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(peer, SocketAddr::V4(SocketAddrV4::new(VIP, HTTP)), "connection {i} peer");
        *per_backend.entry(identity).or_default() += 1;
    }
    let expected: Vec<String> =
        [(EAST, 0), (EAST, 1), (WEST, 0), (WEST, 1)].iter().map(|(c, p)| topology.identity(*c, *p)).collect();
    assert_eq!(per_backend.keys().cloned().collect::<Vec<_>>(), expected, "answers per backend: {per_backend:?}");

    // UDP gets its answer, from the ClusterSetIP.
    let (identity, from) = topology
        .client()
        .enter(|| udp_ask(SocketAddrV4::new(VIP, DNS), Duration::from_secs(2)))
        .expect("UDP answer through the ClusterSetIP");
    assert!(expected.contains(&identity), "UDP answered by {identity}");
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(VIP, DNS)));

    // Ports the import does not list get no answer.
    let unlisted = topology.client().enter(|| {
        (
            tcp_ask(SocketAddrV4::new(VIP, 81), TIMEOUT),
            udp_ask(SocketAddrV4::new(VIP, 54), TIMEOUT),
            // TCP on the UDP port: listed for UDP only.
            tcp_ask(SocketAddrV4::new(VIP, DNS), TIMEOUT),
        )
    });
    assert!(unlisted.0.is_err(), "TCP/81 answered: {:?}", unlisted.0);
    assert!(unlisted.1.is_err(), "UDP/54 answered: {:?}", unlisted.1);
    assert!(unlisted.2.is_err(), "TCP/53 answered: {:?}", unlisted.2);

    // The services map dumps with named fields.
    let dump = std::process::Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(agent.pin_path.join("MCS_SERVICES"))
        .output()
        .expect("run bpftool");
    let dump = String::from_utf8_lossy(&dump.stdout);
    for field in ["\"addr\"", "\"slot\"", "\"backend_id\"", "\"count\""] {
        assert!(dump.contains(field), "bpftool dump lacks {field}: {dump}");
    }

    // West's EndpointSlice goes away: new connections stop reaching west.
    agent.remove_manifest("endpointslice-whoami-west.yaml");
    wait_for(&topology, &mut agent, Duration::from_secs(10), "west's backends removed", |answers| {
        answers.iter().all(|a| a.starts_with("east/"))
    });
    for (i, answer) in ask_many(&topology, 50).into_iter().enumerate() {
        let (identity, _) = answer.unwrap_or_else(|e| panic!("connection {i} after removal: {e}"));
        assert!(identity.starts_with("east/"), "connection {i} reached {identity} after west was removed");
    }
    agent.assert_running();
}
