//! SIGKILL of the agent at random (seeded) moments, under live traffic: in
//! the middle of a sync (a change of many tables just written to its
//! manifests) and during a cold start (from the moment it is spawned: while
//! it loads, attaches, adopts the pins, and syncs). Held TCP streams through
//! a ClusterSetIP exchange data across every kill; new connections are made
//! while no agent runs. After every kill the pinned maps hold no
//! half-written service port (every entry's table is there and every slot
//! names a backend of that port), and after every restart `mcs-agent
//! inspect -o json` converges to `mcs-agent plan -o json` of the same
//! manifests.
//!
//! `MCS_KILLS` (default 20) and `MCS_KILL_SEED` pick the number of kills and
//! the seed. Addresses: pods 198.18.<cluster>.<10+pod>, the client
//! 198.18.0.2, ClusterSetIPs 198.19.4.x. Every wait is bounded; guards
//! remove namespaces, processes and pins on drop.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use mcs_tests::{
    agent::AgentGuard,
    agent_path,
    client::{HeldStream, ping_all, tcp_info},
    manifest::{self, ManifestDir, import, slice},
    netns::unique_prefix,
    topology::{ClusterSpec, Topology, TopologySpec},
    try_inspect_json, wait_until,
};
use serde_json::Value;

const NS: &str = "kills";
const TIMEOUT: Duration = Duration::from_secs(1);
/// Imports programmed (each one port, two clusters).
const IMPORTS: u8 = 32;
/// The import the held streams and new connections use; it never changes.
const STEADY: u8 = 0;

fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 4, 1 + i)
}

/// (ClusterSetIP, port, protocol) → backends (ip, port, cluster) in the table.
type Programmed = BTreeMap<(String, u64, String), BTreeSet<(String, u64, String)>>;

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// What `mcs-agent plan` says the maps should hold for `manifests`.
fn planned(manifests: &Path) -> Programmed {
    let out = std::process::Command::new(agent_path())
        .args(["plan", "--cluster-id", "local", "-o", "json", "--manifests"])
        .arg(manifests)
        .output()
        .expect("run mcs-agent plan");
    assert!(out.status.success(), "plan failed: {}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan prints JSON");
    let mut want = Programmed::new();
    for s in plan["services"].as_array().expect("services") {
        let backends = s["backends"].as_array().expect("backends");
        let set = backends.iter().map(|b| (text(&b["ip"]), b["port"].as_u64().unwrap_or(0), text(&b["cluster"])));
        want.insert((text(&s["ip"]), s["port"].as_u64().unwrap_or(0), text(&s["protocol"])), set.collect());
    }
    want
}

/// What the pinned maps hold, after checking that no service port in them is
/// half-written: every entry with a table size has its table, and its slots
/// all name backends of its own port.
fn programmed(state: &Value) -> Result<Programmed, String> {
    let mut got = Programmed::new();
    for s in state["services"].as_array().ok_or("no services")? {
        let key = (text(&s["ip"]), s["port"].as_u64().unwrap_or(0), text(&s["protocol"]));
        let size = s["tableSize"].as_u64().unwrap_or(0);
        let backends = s["backends"].as_array().ok_or("no backends")?;
        let slots: u64 = backends.iter().map(|b| b["slots"].as_u64().unwrap_or(0)).sum();
        if size > 0 && (s["tablePresent"] != true || slots != size) {
            return Err(format!("{key:?} is half-written: table size {size}, {slots} slots name its backends: {s}"));
        }
        let live = backends.iter().filter(|b| b["slots"].as_u64().unwrap_or(0) > 0);
        got.insert(key, live.map(|b| (text(&b["ip"]), b["port"].as_u64().unwrap_or(0), text(&b["cluster"]))).collect());
    }
    Ok(got)
}

/// `/readyz` of the agent (in the node namespace, on its default metrics
/// port): loaded, sources synced and its first sync done.
fn ready(topology: &Topology) -> Result<(), String> {
    topology.node(0).enter(|| {
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 9464));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("/readyz: {e}"))?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        write!(stream, "GET /readyz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream.read_to_string(&mut response).map_err(|e| format!("/readyz: {e}"))?;
        if response.starts_with("HTTP/1.1 200") { Ok(()) } else { Err(format!("/readyz: {response}")) }
    })
}

/// One manifest file holding `items` as a `List`: the agent reads a change
/// written this way all at once.
fn write_list(agent: &AgentGuard, name: &str, items: &[Value]) {
    manifest::write(&agent.manifests, name, &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}));
}

fn west_slices(topology: &Topology) -> Vec<Value> {
    let west_ips: Vec<Ipv4Addr> = (0..topology.pods_in(2)).map(|j| topology.pod_ip(2, j)).collect();
    (0..IMPORTS)
        .filter(|i| *i != STEADY)
        .map(|i| {
            let s = slice(NS, &format!("svc{i}"), "west").named(&format!("svc{i}-west")).tcp("http", 9080);
            serde_json::to_value(s.ready_all(&west_ips)).expect("a slice serializes")
        })
        .collect()
}

fn tail_imports() -> Vec<Value> {
    (IMPORTS * 2 / 3..IMPORTS)
        .map(|i| serde_json::to_value(import(NS, &format!("svc{i}")).ip(vip(i)).tcp("http", 80)).expect("serializes"))
        .collect()
}

/// The change a kill interrupts, written in one file: the west slices of
/// every import but the steady one come or go, or the last third of the
/// imports do.
fn change(agent: &AgentGuard, topology: &Topology, rng: &mut fastrand::Rng, west_on: &mut bool, tail_on: &mut bool) {
    if rng.bool() {
        *west_on = !*west_on;
        write_list(agent, "west.json", &if *west_on { west_slices(topology) } else { Vec::new() });
    } else {
        *tail_on = !*tail_on;
        write_list(agent, "tail.json", &if *tail_on { tail_imports() } else { Vec::new() });
    }
}

#[test]
fn twenty_sigkills_mid_sync_and_in_cold_starts_break_no_flow_and_leave_no_half_written_service() {
    let kills: usize = std::env::var("MCS_KILLS").map_or(20, |v| v.parse().expect("MCS_KILLS is a count"));
    let seed: u64 = std::env::var("MCS_KILL_SEED").map_or(0x6b11_15ed, |v| v.parse().expect("MCS_KILL_SEED is a u64"));
    let mut rng = fastrand::Rng::with_seed(seed);
    let prefix = unique_prefix("kills");
    let spec = TopologySpec {
        clusters: vec![ClusterSpec::new("local", 0), ClusterSpec::new("east", 2), ClusterSpec::new("west", 2)],
    };
    let mut topology = Topology::build(&prefix, &spec);
    topology.start_servers_per_cluster(&[(&[], &[]), (&[8080], &[]), (&[9080], &[])]);
    let ips = |c: usize| -> Vec<Ipv4Addr> { (0..topology.pods_in(c)).map(|j| topology.pod_ip(c, j)).collect() };
    let dir = ManifestDir::new(&prefix);
    for i in 0..IMPORTS * 2 / 3 {
        dir.write(&format!("import-{i}.json"), &import(NS, &format!("svc{i}")).ip(vip(i)).tcp("http", 80));
    }
    for i in 0..IMPORTS {
        let east = slice(NS, &format!("svc{i}"), "east").named(&format!("svc{i}-east")).tcp("http", 8080);
        dir.write(&format!("slice-{i}-east.json"), &east.ready_all(ips(1)));
    }
    let west = slice(NS, &format!("svc{STEADY}"), "west").named("steady-west").tcp("http", 9080);
    dir.write("slice-steady-west.json", &west.ready_all(ips(2)));
    let as_list = |items: Vec<Value>| serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    dir.write("west.json", &as_list(west_slices(&topology)));
    dir.write("tail.json", &as_list(tail_imports()));
    let (mut west_on, mut tail_on) = (true, true);
    // The guard has the agent read its directory every 50 ms, so a change is
    // picked up at once and the kills, 0 to 200 ms after it, land before,
    // inside or after its sync.
    let mut agent = AgentGuard::start(topology.node(0), &prefix, dir.path(), topology.client_iface(), "local");
    let converge = |agent: &mut AgentGuard, when: &str| {
        wait_until(Duration::from_secs(20), Duration::from_millis(50), when, || {
            agent.assert_running();
            // The restarted agent itself has synced, not only its predecessor.
            ready(&topology)?;
            let got = programmed(&try_inspect_json(&agent.pin_path, &[])?)?;
            let want = planned(&agent.manifests);
            if got == want { Ok(()) } else { Err(format!("inspect {got:?}\nplan {want:?}")) }
        });
    };
    converge(&mut agent, "the first sync");
    let steady = SocketAddrV4::new(vip(STEADY), 80);
    let mut streams: Vec<HeldStream> = topology.client().enter(|| {
        (0..8).map(|i| HeldStream::open(steady, TIMEOUT).unwrap_or_else(|e| panic!("stream {i}: {e}"))).collect()
    });
    ping_all(&mut streams, "before the first kill");

    let (mut done, mut mid_sync, mut cold, mut new_connections) = (0, 0, 0, 0);
    let mut before_kill = planned(&agent.manifests);
    let mut caught: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    while done < kills {
        let when = format!("kill {} of {kills} (seed {seed})", done + 1);
        if kills - done < 2 || rng.bool() {
            // Mid-sync: a change of many tables, the kill a moment later.
            change(&agent, &topology, &mut rng, &mut west_on, &mut tail_on);
            thread::sleep(Duration::from_millis(rng.u64(0..200)));
            mid_sync += 1;
        } else {
            // Cold start: a restart (after a kill of the running agent, with
            // or without a change), killed a moment after it was spawned.
            assert!(!agent.stop(libc::SIGKILL), "{when}: SIGKILL is not a clean exit");
            done += 1;
            if rng.bool() {
                change(&agent, &topology, &mut rng, &mut west_on, &mut tail_on);
            }
            agent.restart();
            thread::sleep(Duration::from_millis(rng.u64(0..1500)));
            cold += 1;
        }
        assert!(!agent.stop(libc::SIGKILL), "{when}: SIGKILL is not a clean exit");
        done += 1;
        // What the kill left: flows go on, new ones are made, nothing is half-written.
        ping_all(&mut streams, &format!("{when}, while no agent runs"));
        for _ in 0..3 {
            let info = topology.client().enter(|| tcp_info(steady, TIMEOUT));
            info.unwrap_or_else(|e| panic!("{when}: a new connection while no agent runs: {e}"));
            new_connections += 1;
        }
        let state = try_inspect_json(&agent.pin_path, &[]).unwrap_or_else(|e| panic!("{when}: inspect: {e}"));
        let left = programmed(&state).unwrap_or_else(|e| panic!("{when}: {e}"));
        // Where the kill caught the sync: not started, done, or in between.
        let outcome = if left == before_kill {
            "before"
        } else if left == planned(&agent.manifests) {
            "after"
        } else {
            "during"
        };
        *caught.entry(outcome).or_insert(0) += 1;
        agent.restart();
        converge(&mut agent, &format!("{when}: inspect matches plan after the restart"));
        before_kill = planned(&agent.manifests);
        ping_all(&mut streams, &format!("{when}, after the restart"));
    }
    println!(
        "kills: {done} SIGKILLs ({mid_sync} mid-sync, {cold} in cold starts with a kill before each) in {:.0} s; \
         {} held streams unbroken; {new_connections} new connections while no agent ran; the kills caught the \
         sync of a change {caught:?}",
        started.elapsed().as_secs_f64(),
        streams.len()
    );
    // Since tables are written in place a sync's writes take microseconds,
    // so a kill seldom lands inside them ("during"); every intermediate state
    // of a sync is checked instead by the sync tests, which replay each write.
    // Here the kills must at least have caught changes both before and after
    // their sync.
    assert!(
        caught.get("before").copied().unwrap_or(0) > 0 && caught.get("after").copied().unwrap_or(0) > 0,
        "the kills caught changes before and after their sync: {caught:?}"
    );
    for s in streams {
        s.close().expect("close a held stream");
    }
}
