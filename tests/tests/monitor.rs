//! `mcs-agent monitor` against a running agent: the demo ClusterSet in
//! namespaces this test creates (198.18.0.0/15 only). Datapath events are
//! off by default (the flag the programs read is 0), a monitor switches the
//! events it asks for on while it is connected and off when it leaves, and
//! it sees a datagram to a port the import does not list as a drop with its
//! reason and tuple, and a new connection as a translation to a backend.
//!
//! Needs root, bpftool and the binaries (`cargo build --bins`).
use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mcs_tests::{
    agent::AgentGuard, agent_path, client::tcp_ask, netns::unique_prefix, topology::Topology, wait_table_clusters,
    wait_until,
};
use serde_json::Value;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

/// The ids of the BPF maps process `pid` holds open (`map_id` in its fds' fdinfo).
fn map_ids_of(pid: u32) -> Vec<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|id| id.trim().parse().ok()))
        .collect()
}

/// The value of the agent's `MCS_EVENT_FLAGS` (the map of the object process `pid` loaded),
/// read with bpftool.
fn event_flags(pid: u32) -> Result<u32, String> {
    let run = |args: &[&str]| -> Result<Value, String> {
        let out = Command::new("bpftool").arg("-j").args(args).output().map_err(|e| format!("bpftool: {e}"))?;
        if !out.status.success() {
            return Err(format!("bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bpftool {args:?}: not JSON: {e}"))
    };
    let held = map_ids_of(pid);
    let maps = run(&["map", "show"])?;
    let id = maps
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "MCS_EVENT_FLAGS" && m["id"].as_u64().is_some_and(|id| held.contains(&id)))
        .and_then(|m| m["id"].as_u64())
        .ok_or_else(|| format!("no MCS_EVENT_FLAGS map held by pid {pid} (it holds {held:?})"))?;
    let entry = run(&["map", "lookup", "id", &id.to_string(), "key", "0", "0", "0", "0"])?;
    let bytes: Vec<u8> = entry["value"]
        .as_array()
        .ok_or_else(|| format!("no value in {entry}"))?
        .iter()
        .filter_map(|b| b.as_str().and_then(|h| u8::from_str_radix(h.trim_start_matches("0x"), 16).ok()))
        .collect();
    let bytes: [u8; 4] = bytes.try_into().map_err(|b| format!("value {b:?} is not 4 bytes"))?;
    Ok(u32::from_ne_bytes(bytes))
}

fn wait_flags(agent: &AgentGuard, want: u32, what: &str) {
    let pid = agent.pid().expect("the agent runs");
    wait_until(Duration::from_secs(10), Duration::from_millis(50), what, || match event_flags(pid)? {
        flags if flags == want => Ok(()),
        flags => Err(format!("flags are {flags:#x}")),
    });
}

/// A running `mcs-agent monitor`, killed on drop if it has not exited.
struct Monitor(Child);

impl Monitor {
    fn start(pin_path: &Path, args: &[&str]) -> Self {
        let child = Command::new(agent_path())
            .arg("monitor")
            .arg("--pin-path")
            .arg(pin_path)
            .args(["-o", "json", "--count", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcs-agent monitor");
        Self(child)
    }

    /// Waits (at most `limit`) for it to exit after its one event; returns the event.
    fn event(mut self, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        for _ in 0..1000 {
            if let Some(status) = self.0.try_wait().expect("poll the monitor") {
                let mut out = String::new();
                let mut err = String::new();
                self.0.stdout.take().expect("stdout").read_to_string(&mut out).expect("read stdout");
                self.0.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
                assert!(status.success(), "monitor failed ({status}): {err}");
                assert_eq!(out.lines().count(), 1, "--count 1 prints one event: {out}");
                return serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the monitor printed no event within {limit:?}");
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn monitor_sees_a_drop_with_reason_and_tuple_and_switches_events_at_run_time() {
    let prefix = unique_prefix("monitor");
    let topology = Topology::demo(&prefix);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let mut agent = AgentGuard::start(topology.node(0), &prefix, &examples, topology.client_iface(), "local");
    wait_table_clusters(&agent.pin_path, VIP, 80, "TCP", &["east", "west"]);
    wait_flags(&agent, 0, "events are off by default");

    // Drops only: the monitor turns drop events (bit 0) on while it is connected.
    let monitor = Monitor::start(&agent.pin_path, &["--drops", "--service", "demo/whoami"]);
    wait_flags(&agent, 1, "the monitor switches drop events on");
    // One datagram to UDP/54, a port the import does not list, from a port we know.
    let source = topology.client().enter(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.send_to(b"ask\n", SocketAddrV4::new(VIP, 54)).expect("send");
        socket.local_addr().expect("local address")
    });
    let event = monitor.event(Duration::from_secs(10));
    assert_eq!(event["kind"], "drop", "{event:#}");
    assert_eq!(event["reason"], "unknown-port", "{event:#}");
    assert_eq!(event["protocol"], "UDP", "{event:#}");
    assert_eq!(event["source"], format!("{}:{}", topology.client_ip(), source.port()), "{event:#}");
    assert_eq!(event["destination"], "198.19.0.10:54", "{event:#}");
    assert_eq!(event["service"], "demo/whoami", "the import of that ClusterSetIP: {event:#}");
    assert_eq!(event["interface"], topology.client_iface(), "{event:#}");
    assert_eq!(event["direction"], "from-pod", "{event:#}");
    assert!(event["backend"].is_null(), "{event:#}");
    wait_flags(&agent, 0, "events go off when the monitor leaves");

    // Everything: a new connection is reported as a translation to one of the backends.
    let monitor = Monitor::start(&agent.pin_path, &[]);
    wait_flags(&agent, 3, "the monitor switches drop and translation events on");
    let (identity, _) = topology
        .client()
        .enter(|| tcp_ask(SocketAddrV4::new(VIP, 80), Duration::from_secs(2)))
        .expect("a connection through the ClusterSetIP");
    let event = monitor.event(Duration::from_secs(10));
    assert_eq!(event["kind"], "translated", "{event:#}");
    assert!(event["reason"].is_null(), "{event:#}");
    assert_eq!(event["destination"], "198.19.0.10:80", "{event:#}");
    assert_eq!(event["service"], "demo/whoami", "{event:#}");
    let backend = event["backend"].as_str().expect("a backend");
    let pods: Vec<String> = [(1, 0, 8080), (1, 1, 8080), (2, 0, 9080), (2, 1, 9080)]
        .iter()
        .map(|(c, p, port)| format!("{}:{port}", topology.pod_ip(*c, *p)))
        .collect();
    assert!(pods.iter().any(|p| p == backend), "{backend} is not a backend pod {pods:?}");
    let answered_by =
        (1..=2).flat_map(|c| (0..2).map(move |p| (c, p))).find(|(c, p)| topology.identity(*c, *p) == identity);
    let (c, p) = answered_by.unwrap_or_else(|| panic!("{identity} is not a pod's identity"));
    assert!(backend.starts_with(&format!("{}:", topology.pod_ip(c, p))), "the event names the pod that answered");
    wait_flags(&agent, 0, "events go off when the monitor leaves");
    agent.assert_running();

    // A monitor of an agent that is not there says so.
    let out = Command::new(agent_path())
        .args(["monitor", "--pin-path", "/sys/fs/bpf/mcs-test-nothing-here", "--count", "1"])
        .output()
        .expect("run monitor");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("mcs-test-nothing-here.monitor.sock") && said.contains("--pin-path"), "{said}");
}
