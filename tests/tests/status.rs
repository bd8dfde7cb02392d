//! `mcs-agent status` against a running agent: the demo ClusterSet in
//! namespaces this test creates (198.18.0.0/15 only), the agent on the
//! client's node with a services map just big enough for the demo (three
//! entries: two service ports and the ClusterSetIP's wildcard), so that map
//! is full and must be warned about; a packet to a port the import does not
//! list must show up in the drops of the last minute. The socket programs
//! are attached to a child cgroup the test makes (never the machine's root).
//!
//! Needs root and the binaries (`cargo build --bins`).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Output,
    time::Duration,
};

use mcs_tests::{
    agent::AgentGuard, agent_path, cgroup::ChildCgroup, client::tcp_ask, netns::unique_prefix, topology::Topology,
    wait_table_clusters, wait_until,
};
use serde_json::Value;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

/// Runs `mcs-agent status --pin-path <agent's> <args>` in the agent's node namespace (where its
/// metrics server listens).
fn run_status(topology: &Topology, agent: &AgentGuard, args: &[&str]) -> Output {
    topology
        .node(0)
        .nsenter_command(agent_path())
        .arg("status")
        .arg("--pin-path")
        .arg(&agent.pin_path)
        .args(args)
        .output()
        .expect("run mcs-agent status")
}

fn status_json(topology: &Topology, agent: &AgentGuard, args: &[&str]) -> Result<Value, String> {
    let out = run_status(topology, agent, &[&["-o", "json"], args].concat());
    if !out.status.success() {
        return Err(format!("mcs-agent status failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn map<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["maps"].as_array().and_then(|maps| maps.iter().find(|m| m["name"] == name)).unwrap_or_else(|| {
        panic!("map {name} missing from {status:#}");
    })
}

#[test]
fn status_shows_sync_state_interfaces_backends_recent_drops_and_a_full_map() {
    let prefix = unique_prefix("status");
    let topology = Topology::demo(&prefix);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let cgroup = ChildCgroup::new(&prefix, "");
    let mut agent = AgentGuard::start_with_args(
        topology.node(0),
        &prefix,
        &examples,
        topology.client_iface(),
        "local",
        &["--services-max", "3", &cgroup.arg()],
    );
    wait_table_clusters(&agent.pin_path, VIP, 80, "TCP", &["east", "west"]);
    agent.assert_running();

    // A SYN to a port the import does not list: dropped as unknown-port.
    let unlisted = topology.client().enter(|| tcp_ask(SocketAddrV4::new(VIP, 81), Duration::from_millis(300)));
    assert!(unlisted.is_err(), "TCP/81 answered: {unlisted:?}");

    let status = wait_until(Duration::from_secs(10), Duration::from_millis(100), "status shows the drop", || {
        let s = status_json(&topology, &agent, &[])?;
        let recent = s["drops"]["recent"]["unknown-port"].as_u64().unwrap_or(0);
        if s["agent"]["status"]["ready"] == true && recent > 0 { Ok(s) } else { Err(format!("{s:#}")) }
    });

    // The agent's account: ready, synced, no errors.
    let own = &status["agent"]["status"];
    assert_eq!(own["sourcesSynced"], true, "{own:#}");
    assert!(own["syncs"]["success"].as_u64() >= Some(1), "{own:#}");
    assert_eq!(own["syncs"]["error"], 0, "{own:#}");
    assert_eq!(own["syncErrors"], serde_json::json!([]), "{own:#}");
    assert_eq!(own["servicePorts"], 2, "{own:#}");
    // Every drop of this fresh agent happened within the window: the last
    // minute's count is the total since the maps were created.
    let window = status["drops"]["windowSeconds"].as_f64().expect("a window");
    assert!(window > 0.0 && window <= 70.0, "window {window}");
    assert_eq!(
        status["drops"]["recent"]["unknown-port"], status["drops"]["total"]["unknown-port"],
        "{:#}",
        status["drops"]
    );
    assert_eq!(status["drops"]["recent"]["no-backend"], 0);

    // The client's interface, attached by the agent, with both TCX links pinned.
    let interfaces = status["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 1, "{interfaces:#?}");
    let iface = &interfaces[0];
    assert_eq!(iface["name"], topology.client_iface());
    assert_eq!(iface["attachedByAgent"], true);
    assert_eq!(iface["mode"], "tcx", "this kernel has TCX (6.6+)");
    assert_eq!(iface["pinnedLinks"], serde_json::json!(["ingress", "egress"]));

    // The socket programs' cgroup, as the agent reports it, with one pinned link per program.
    let cgroups = status["cgroups"].as_array().expect("cgroups");
    assert_eq!(cgroups.len(), 1, "{cgroups:#?}");
    assert_eq!(cgroups[0]["path"], cgroup.path().display().to_string(), "{cgroups:#?}");
    assert_eq!(cgroups[0]["attachedByAgent"], true);
    assert_eq!(cgroups[0]["pinnedLinks"], serde_json::json!(["connect4", "getpeername4", "recvmsg4", "sendmsg4"]));

    // Both service ports with their backends: two pods of each exporting cluster.
    let services = status["services"].as_array().expect("services");
    assert_eq!(services.len(), 2, "{services:#?}");
    for svc in services {
        let clusters: Vec<&str> =
            svc["backends"].as_array().expect("backends").iter().filter_map(|b| b["cluster"].as_str()).collect();
        assert_eq!(clusters.iter().filter(|c| **c == "east").count(), 2, "{svc:#}");
        assert_eq!(clusters.iter().filter(|c| **c == "west").count(), 2, "{svc:#}");
    }

    // The services map is full (3 of 3) and warned about; the others are not.
    let services_map = map(&status, "MCS_SERVICES");
    assert_eq!((services_map["entries"].as_u64(), services_map["capacity"].as_u64()), (Some(3), Some(3)));
    assert_eq!(services_map["warning"], true);
    let backends_map = map(&status, "MCS_BACKENDS");
    assert_eq!(backends_map["entries"], 8, "4 pods × 2 ports: {backends_map:#}");
    assert_eq!(backends_map["warning"], false);
    // The Maglev array's entries are the slots live tables use: each port's
    // table size, summed.
    let inspected = mcs_tests::inspect_json(&agent.pin_path, &[]);
    let table_slots: u64 =
        inspected["services"].as_array().expect("services").iter().filter_map(|s| s["tableSize"].as_u64()).sum();
    assert!(table_slots > 0, "the ports have tables: {inspected:#}");
    assert_eq!(map(&status, "MCS_MAGLEV")["entries"], table_slots, "the slots of both ports' tables");
    // The SYN to port 81 is dropped before conntrack: no flow is tracked.
    assert_eq!(map(&status, "MCS_CT_TCP")["entries"], 0);
    let warnings: Vec<&str> =
        status["warnings"].as_array().expect("warnings").iter().filter_map(Value::as_str).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("MCS_SERVICES is 100.0% full (3 of 3)"), "{warnings:?}");
    assert!(warnings[0].contains("--services-max"), "{warnings:?}");

    // The table names the same things.
    let out = run_status(&topology, &agent, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in [": ready", topology.client_iface(), "198.19.0.10:80/TCP", "unknown-port", "MCS_SERVICES", "WARNING"]
    {
        assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }

    // With no agent at the address, the pins' part is still shown, with a warning.
    let alone = status_json(&topology, &agent, &["--agent-addr", "127.0.0.1:1"]).expect("status without the agent");
    assert!(alone["agent"]["status"].is_null(), "{alone:#}");
    assert!(alone["agent"]["error"].as_str().is_some_and(|e| e.contains("127.0.0.1:1")), "{alone:#}");
    assert!(alone["drops"]["recent"].is_null());
    assert_eq!(alone["drops"]["total"]["unknown-port"], status["drops"]["total"]["unknown-port"]);
    assert!(
        alone["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("no answer"))),
        "{alone:#}"
    );
    agent.assert_running();
}
