//! `mcs-demo`, run by `cargo xtask demo`: a ClusterSet in network namespaces,
//! driven by the manifests in `deploy/examples/demo`.
//!
//! It lives in the tests crate, not in xtask, because it links the test kit,
//! whose build script needs bpf-linker: xtask itself must build on a fresh
//! machine before `cargo xtask setup` has installed it.
//!
//! 1. Three clusters: `local` holds the client pod and the node where the agent
//!    runs; `east` and `west` each hold two pods serving their identity (east on
//!    8080/TCP and 5353/UDP, west on 9080/TCP and 5354/UDP).
//! 2. The agent attaches to the client pod's veth and programs the ServiceImport
//!    demo/whoami (ClusterSetIP 198.19.0.10, http 80/TCP and dns 53/UDP).
//! 3. The client connects to the ClusterSetIP; each answer names its pod.
//! 4. Everything is torn down, even on error.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use mcs_tests::{
    agent::AgentGuard,
    client::{tcp_ask, udp_ask},
    netns::cleanup_stale,
    topology::Topology,
};

/// The workspace root.
fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Runs `cmd` and returns its standard output, failing with the command line.
fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `mcs-demo [--connections N] [--hold SECONDS]`.
#[derive(clap::Parser)]
struct Args {
    /// Connections to send.
    #[arg(long, default_value_t = 12)]
    connections: usize,
    /// Keep the demo running this many seconds after the traffic, to look around with bpftool.
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    demo(args.connections, args.hold)
}

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const PIN_PATH: &str = "/sys/fs/bpf/mcs-demo";
/// (cluster index, name, TCP port, UDP port) of the exporting clusters.
const EXPORTERS: [(usize, &str, u16, u16); 2] = [(1, "east", 8080, 5353), (2, "west", 9080, 5354)];

/// Runs the demo.
fn demo(connections: usize, hold: u64) -> Result<()> {
    for stale in cleanup_stale() {
        eprintln!("demo: removed {stale} left by an earlier run");
    }
    if Path::new(PIN_PATH).exists() {
        std::fs::remove_dir_all(PIN_PATH).with_context(|| format!("removing stale {PIN_PATH}"))?;
    }
    let manifests = workspace().join("deploy/examples/demo");

    println!("== building the ClusterSet: clusters local (client), east and west (2 pods each)");
    let topology = Topology::demo("mcsdemo");
    for (cluster, name, tcp, udp) in EXPORTERS {
        for pod in 0..2 {
            println!(
                "   {name}/pod{pod}  {:<13} serving {tcp}/TCP {udp}/UDP",
                topology.pod_ip(cluster, pod).to_string()
            );
        }
    }
    println!("   client pod   {}  on node {}", topology.client_ip(), topology.node(0).name());

    println!("== starting mcs-agent on the client's node with {}", manifests.display());
    // Stopped, and its pins removed, when the demo ends, even on error.
    let _agent = AgentGuard::start_pinned(
        topology.node(0),
        "mcsdemo",
        &manifests,
        topology.client_iface(),
        "local",
        PathBuf::from(PIN_PATH),
    );
    let http = SocketAddrV4::new(VIP, 80);
    let ready = Instant::now() + Duration::from_secs(15);
    while topology.client().enter(|| tcp_ask(http, Duration::from_millis(300))).is_err() {
        if Instant::now() > ready {
            bail!("the ClusterSetIP did not answer within 15 s of starting the agent");
        }
        thread::sleep(Duration::from_millis(100));
    }

    println!("== {connections} TCP connections from {} to {http}", topology.client_ip());
    let mut per_cluster: BTreeMap<String, usize> = BTreeMap::new();
    for i in 1..=connections {
        let (identity, peer) = topology
            .client()
            .enter(|| tcp_ask(http, Duration::from_secs(2)))
            .with_context(|| format!("connection {i} to {http}"))?;
        let (cluster_name, pod) = identity.split_once('/').unwrap_or((identity.as_str(), ""));
        let pod_addr = EXPORTERS
            .iter()
            .find(|(_, name, _, _)| *name == cluster_name)
            .and_then(|(c, _, tcp, _)| {
                let j: usize = pod.trim_start_matches("pod").parse().ok()?;
                Some(format!("{}:{tcp}", topology.pod_ip(*c, j)))
            })
            .unwrap_or_default();
        println!("   connection {i:>2}: peer {peer}  answered by cluster {cluster_name:<5} {pod} ({pod_addr})");
        *per_cluster.entry(cluster_name.to_owned()).or_default() += 1;
    }
    let dns = SocketAddrV4::new(VIP, 53);
    let (identity, from) =
        topology.client().enter(|| udp_ask(dns, Duration::from_secs(2))).with_context(|| format!("UDP to {dns}"))?;
    println!("   UDP query to {dns}: answered by {identity}, reply from {from}");
    let summary: Vec<String> = per_cluster.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    println!("== answers per cluster: {}", summary.join(", "));
    if per_cluster.len() < 2 {
        bail!("only {} cluster(s) answered; expected both east and west", per_cluster.len());
    }

    show_maps()?;
    if hold > 0 {
        println!(
            "== holding for {hold} s: try `mcs-agent inspect --pin-path {PIN_PATH} --conntrack` or \
             `bpftool map dump pinned {PIN_PATH}/MCS_CT`"
        );
        thread::sleep(Duration::from_secs(hold));
    }
    println!("== tearing down");
    Ok(())
}

/// Prints what the kernel holds: a bpftool dump and `mcs-agent inspect`.
fn show_maps() -> Result<()> {
    println!("== bpftool map dump pinned {PIN_PATH}/MCS_SERVICES (first entries)");
    let dump =
        cmd_output(Command::new("bpftool").args(["map", "dump", "pinned", &format!("{PIN_PATH}/MCS_SERVICES")]))?;
    for line in dump.lines().take(16) {
        println!("   {line}");
    }
    println!("== mcs-agent inspect --pin-path {PIN_PATH} --conntrack (what the kernel holds)");
    let inspect = cmd_output(Command::new(mcs_tests::agent_path()).args([
        "inspect",
        "--pin-path",
        PIN_PATH,
        "--conntrack",
        "-o",
        "table",
    ]))?;
    for line in inspect.lines().take(40) {
        println!("   {line}");
    }
    Ok(())
}
