//! A failing API server: the agent's Kubernetes source against the fake API
//! server while it fails in the ways real ones do, one fault after another:
//! open watches cut mid-stream, 500s, 429s with `Retry-After`, 410 Gone on a
//! compacted history, a stalled watch, a malformed object, and the server
//! down for a while (`MCS_API_DOWN_SECONDS`, default 5; `cargo xtask fuzz`'s
//! long runs use 60). Throughout each fault held TCP streams through the
//! ClusterSetIP keep exchanging data and the pinned maps keep the last good
//! service (never emptied); after it the agent follows a change of the API
//! without a restart (same process). What `/readyz` says during each fault
//! is printed.
//!
//! Addresses: pods 198.18.<cluster>.<10+pod>, the client 198.18.0.2, the
//! ClusterSetIP 198.19.5.1. Every wait is bounded; guards remove namespaces,
//! processes and pins on drop.
use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use mcs_tests::{
    agent::AgentGuard,
    client::{HeldStream, ping_all},
    fakeapi::{FakeApi, FakeApiOptions, Fault},
    inspected_backends,
    manifest::{import, slice},
    netns::unique_prefix,
    topology::Topology,
    try_inspect_json, wait_until,
};
use serde_json::{Value, json};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 5, 1);
const HTTP: u16 = 80;
const TIMEOUT: Duration = Duration::from_secs(1);
const METRICS_PORT: u16 = 19465;

fn to_json(object: &impl serde::Serialize) -> Value {
    serde_json::to_value(object).expect("a built object serializes")
}

/// `GET path` of the agent's metrics server, in the node namespace; the
/// status line, or what went wrong.
fn http_status(topology: &Topology, path: &str) -> String {
    topology.node(0).enter(|| {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, TIMEOUT) else { return "no answer".to_owned() };
        let _ = stream.set_read_timeout(Some(TIMEOUT));
        if write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").is_err() {
            return "no answer".to_owned();
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = response.lines().next().unwrap_or_default().to_owned();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned();
        format!("{status} {body}")
    })
}

/// The backends (cluster/ip) with slots in the table of the service, from the pins.
/// `mcs_source_api_up` of `/metrics` (`"1"`, `"0"`), or what went wrong.
fn api_up(topology: &Topology) -> String {
    let body = http_status(topology, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("mcs_source_api_up "))
        .map_or_else(|| format!("no mcs_source_api_up in {body:.200}"), str::to_owned)
}

fn table_backends(agent: &AgentGuard) -> Result<BTreeSet<String>, String> {
    let state = try_inspect_json(&agent.pin_path, &[])?;
    let backends = inspected_backends(&state, VIP, HTTP, "TCP").ok_or("the service port is not in the maps")?;
    Ok(backends.into_iter().filter(|b| b.slots > 0).map(|b| format!("{}/{}", b.cluster, b.ip)).collect())
}

/// What the table holds with or without the extra east endpoint.
fn expected(extra: bool) -> BTreeSet<String> {
    let mut want: BTreeSet<String> =
        ["east/198.18.1.10", "east/198.18.1.11", "west/198.18.2.10", "west/198.18.2.11"].map(str::to_owned).into();
    if extra {
        want.insert("east/198.18.1.12".to_owned());
    }
    want
}

/// One fault: how to start it, how long it lasts, how to end it.
struct Step {
    name: &'static str,
    start: Box<dyn Fn(&FakeApi)>,
    hold: Duration,
    end: Box<dyn Fn(&FakeApi)>,
}

/// The faults, in order; the server is down for `down` seconds.
fn steps(down: u64) -> Vec<Step> {
    let nothing = || -> Box<dyn Fn(&FakeApi)> { Box::new(|_| {}) };
    let clear = || -> Box<dyn Fn(&FakeApi)> { Box::new(|api: &FakeApi| api.set_fault(Fault::None)) };
    vec![
        Step {
            name: "watches cut mid-stream",
            start: Box::new(FakeApi::drop_watches),
            hold: Duration::from_secs(1),
            end: nothing(),
        },
        Step {
            name: "500 on every request",
            start: Box::new(|api: &FakeApi| api.set_fault(Fault::InternalError)),
            hold: Duration::from_secs(3),
            end: clear(),
        },
        Step {
            name: "429 with Retry-After: 1",
            start: Box::new(|api: &FakeApi| api.set_fault(Fault::TooManyRequests { retry_after_seconds: 1 })),
            hold: Duration::from_secs(3),
            end: clear(),
        },
        Step {
            name: "410 Gone (history compacted)",
            start: Box::new(FakeApi::compact),
            hold: Duration::from_secs(1),
            end: nothing(),
        },
        Step {
            name: "stalled watches",
            start: Box::new(|api: &FakeApi| api.set_fault(Fault::StalledWatches)),
            hold: Duration::from_secs(3),
            end: clear(),
        },
        Step {
            name: "a malformed slice",
            start: Box::new(|api: &FakeApi| {
                let mut broken = to_json(&slice("faults", "svc", "north").tcp("http", 7080).ready("198.18.3.10"));
                broken["endpoints"] = json!("not a list");
                api.apply(broken);
            }),
            hold: Duration::from_secs(1),
            end: nothing(),
        },
        Step {
            name: "server down",
            start: Box::new(|api: &FakeApi| api.set_fault(Fault::Down)),
            hold: Duration::from_secs(down),
            end: clear(),
        },
    ]
}

#[test]
fn the_agent_keeps_the_last_good_dataplane_through_api_faults_and_recovers_without_a_restart() {
    let down: u64 = std::env::var("MCS_API_DOWN_SECONDS").map_or(5, |v| v.parse().expect("seconds"));
    let prefix = unique_prefix("apifault");
    let topology = Topology::demo(&prefix);
    let listener = topology.node(0).enter(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind in node"));
    let api = FakeApi::start_with(listener, FakeApiOptions::default());
    let dir = tempfile::Builder::new().prefix("mcs-apifault-").tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    api.apply(to_json(&import("faults", "svc").ip(VIP).family("IPv4").tcp("http", HTTP)));
    // The change each fault is followed by: an east endpoint (no pod behind
    // it) comes or goes, which moves table slots but breaks no held stream.
    let east = |extra: bool| {
        let ips: &[&str] =
            if extra { &["198.18.1.10", "198.18.1.11", "198.18.1.12"] } else { &["198.18.1.10", "198.18.1.11"] };
        to_json(&slice("faults", "svc", "east").tcp("http", 8080).ready_all(ips))
    };
    let west = || to_json(&slice("faults", "svc", "west").tcp("http", 9080).ready_all(["198.18.2.10", "198.18.2.11"]));
    api.apply(east(false));
    api.apply(west());
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    let extra = ["--metrics-addr", metrics_addr.as_str(), "--backend-removal-grace-seconds", "1"];
    let mut agent =
        AgentGuard::start_kube(topology.node(0), &prefix, &kubeconfig, topology.client_iface(), "local", &extra);
    let wait_backends = |agent: &mut AgentGuard, want: &BTreeSet<String>, what: &str| {
        wait_until(Duration::from_secs(30), Duration::from_millis(100), what, || {
            agent.assert_running();
            let got = table_backends(agent)?;
            if &got == want { Ok(()) } else { Err(format!("{got:?}")) }
        });
    };
    wait_backends(&mut agent, &expected(false), "both clusters programmed");
    let pid = agent.pid().expect("running");
    let service = SocketAddrV4::new(VIP, HTTP);
    let mut streams: Vec<HeldStream> = topology.client().enter(|| {
        (0..4).map(|i| HeldStream::open(service, TIMEOUT).unwrap_or_else(|e| panic!("stream {i}: {e}"))).collect()
    });

    let steps = steps(down);
    let mut extra = false;
    let mut summary = Vec::new();
    for step in &steps {
        (step.start)(&api);
        let end = Instant::now() + step.hold;
        let mut ready_seen = BTreeSet::new();
        let mut api_seen = BTreeSet::new();
        for _ in 0..10_000 {
            agent.assert_running();
            ping_all(&mut streams, step.name);
            let got = table_backends(&agent).unwrap_or_else(|e| panic!("{}: {e}", step.name));
            assert_eq!(got, expected(extra), "{}: the last good dataplane is kept", step.name);
            ready_seen.insert(http_status(&topology, "/readyz"));
            api_seen.insert(api_up(&topology));
            if Instant::now() >= end {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        (step.end)(&api);
        if step.name == "server down" {
            assert!(api_seen.contains("0"), "while the server is down the metrics say so: {api_seen:?}");
        }
        // Recovery without a restart: a change made after the fault arrives.
        let recovering = Instant::now();
        extra = !extra;
        api.apply(east(extra));
        wait_backends(&mut agent, &expected(extra), &format!("after {}: the change is followed", step.name));
        assert_eq!(agent.pid(), Some(pid), "{}: the same agent, never restarted", step.name);
        wait_until(Duration::from_secs(40), Duration::from_millis(100), "the API server up again", || {
            let up = api_up(&topology);
            if up == "1" { Ok(()) } else { Err(up) }
        });
        summary.push(format!(
            "{} for {:?}: maps kept, /readyz {ready_seen:?}, mcs_source_api_up {api_seen:?}, next change followed {:.1} s after the fault ended",
            step.name,
            step.hold,
            recovering.elapsed().as_secs_f64()
        ));
    }
    ping_all(&mut streams, "at the end");
    assert!(api.gone_sent() > 0, "the compacted history answered a resumed watch with 410 Gone");
    let refused = api.requests().iter().filter(|r| r.contains("watch=true")).count();
    assert!(refused > steps.len(), "the agent watched again after the faults: {refused} watch requests");
    println!("api faults:\n  {}", summary.join("\n  "));
    for s in streams {
        s.close().expect("close a held stream");
    }
}
