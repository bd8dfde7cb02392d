//! End to end in namespaces: the client pod to a backend pod in another
//! cluster, through the client's node, where the translation happens.
//!
//! Each (path, service count) gets a fresh topology from the test harness
//! (`mcs_tests::topology`: client pod, its node, the fabric, a node and a pod of
//! cluster `east`), so no conntrack entry or rule of one measurement survives
//! into the next. The paths:
//! - direct: the backend's pod IP, nothing loaded on the node;
//! - ours: the ClusterSetIP, with the real `mcs-agent` attached to the client
//!   pod's interface on the node, programmed from N ServiceImports on disk,
//!   socket load balancing off (the tc path);
//! - socket: the same agent with its socket programs attached to a child cgroup
//!   the bench makes (`--cgroup-path`), and the bench process inside it while
//!   it measures, so every client `connect()` of the row runs the hook (the
//!   direct runs beside it included). It also measures the cost of one UDP
//!   `connect()` without the hook, with it for an address that is no service,
//!   and with it translating a ClusterSetIP;
//! - iptables / nftables: the ClusterSetIP, with kube-proxy's rule shape for N
//!   services loaded in the node namespace in one go (`iptables-restore`, `nft -f`).
//!
//! The measured service is the last of the N. Its one endpoint is the backend
//! pod, which runs `mcs-testsrv` (8080) and `iperf3 -s` (5201).
//!
//! New connections close with a FIN, as applications do, with `tcp_tw_reuse=1`
//! and the default port range; on every path but direct, each repetition
//! through the ClusterSetIP follows one to the pod IP from the same client, so
//! the ratio of the two comes from the same topology and the same minute, and a
//! client's direct and translated flows share its ports as in a real pod.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mcs_tests::{
    cgroup::ChildCgroup,
    client::{HeldStream, tcp_ask},
    netns::{NetNs, unique_prefix},
    topology::{ClusterSpec, Topology, TopologySpec},
};

use crate::{
    agent::{Agent, TempDir},
    interrupted, kproxy,
    mgen::{self, Export, Port, Service},
    stats,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const HTTP: u16 = 8080;
const IPERF: u16 = 5201;
const DNS: u16 = 5353;
/// The socket path's UDP service (53 -> 5353 on the backend pod), for the `connect()` cost.
const UDP_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Service counts.
    pub counts: Vec<u32>,
    /// Request/response round trips for the latency.
    pub pings: u32,
    /// iperf3 duration, seconds.
    pub iperf_secs: u32,
    /// Duration of one new-connection loop (one repetition of one target).
    pub conn_time: Duration,
    /// Repetitions of the new-connection loop, direct and through the path interleaved.
    pub conn_reps: u32,
}

/// The four paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// The pod IP.
    Direct,
    /// Our tc programs.
    Ours,
    /// Our socket programs (and the tc programs beside them, which then see direct flows).
    Socket,
    /// kube-proxy's iptables shape.
    Iptables,
    /// kube-proxy's nftables shape.
    Nftables,
}

impl PathKind {
    /// Every path, direct first.
    pub const ALL: [Self; 5] = [Self::Direct, Self::Ours, Self::Socket, Self::Iptables, Self::Nftables];

    /// Its name in tables and plots.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Ours => "ours",
            Self::Socket => "socket",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// One path at one service count.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The path.
    pub path: PathKind,
    /// Services loaded.
    pub services: u32,
    /// Request/response latency, microseconds.
    pub lat_p50: f64,
    /// 99th percentile.
    pub lat_p99: f64,
    /// iperf3 throughput, Gbit/s.
    pub gbps: f64,
    /// New connections per second through the path (for `Direct`, to the pod IP): each
    /// repetition's rate, in the order run.
    pub conn: Vec<f64>,
    /// New connections per second to the pod IP, from the same client in the same topology,
    /// each repetition run just before the matching one of `conn` (empty for `Direct`).
    pub conn_direct: Vec<f64>,
    /// Connect + first byte on a new connection through the path, microseconds, median over
    /// every repetition's connections.
    pub conn_p50: f64,
    /// 99th percentile.
    pub conn_p99: f64,
    /// Failed connection attempts through the path, all repetitions.
    pub conn_errors: u64,
    /// Failed connection attempts to the pod IP in the repetitions beside them (a direct flow
    /// whose replies were taken for a translated flow's fails here).
    pub conn_direct_errors: u64,
    /// Seconds from starting to load the path's state to a first answer.
    pub load_secs: f64,
    /// The cost of one `connect()` (the socket path only).
    pub connect: Option<ConnectCost>,
}

/// The cost of opening a UDP socket, `connect()`ing it and closing it, as a client does for
/// each query, ns, median over batches. No packet is sent; the three figures differ only in
/// the hook (and, when translated, its `MCS_SOCK_REV` entry for the new socket).
#[derive(Clone, Copy, Debug)]
pub struct ConnectCost {
    /// To the pod IP, the process outside the cgroup the hook is attached to.
    pub no_hook: f64,
    /// To the pod IP, inside the cgroup: the hook runs and finds no service.
    pub hook_not_a_service: f64,
    /// To the ClusterSetIP's UDP port, inside the cgroup: the hook selects a backend and
    /// rewrites the address (and records the reverse entry).
    pub hook_translated: f64,
}

/// The three `connect()` costs; leaves the process inside `cgroup` for the rest of the row.
fn measure_connect(topo: &Topology, cgroup: &mut ChildCgroup, s: &Settings) -> Result<ConnectCost> {
    let direct = SocketAddrV4::new(topo.pod_ip(1, 0), DNS);
    let (batches, batch) = (9, s.pings.max(100));
    let no_hook = topo.client().enter(|| connect_cost(direct, batches, batch))?;
    cgroup.enter();
    let (hook_not_a_service, hook_translated) = topo.client().enter(|| {
        Ok::<_, anyhow::Error>((
            connect_cost(direct, batches, batch)?,
            connect_cost(SocketAddrV4::new(UDP_VIP, 53), batches, batch)?,
        ))
    })?;
    Ok(ConnectCost { no_hook, hook_not_a_service, hook_translated })
}

/// Opens a UDP socket, `connect()`s it to `addr` and closes it, `batch` times, `batches`
/// times; ns per socket, median.
fn connect_cost(addr: SocketAddrV4, batches: u32, batch: u32) -> Result<f64> {
    let mut per_call = Vec::new();
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..batch {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("a UDP socket")?;
            socket.connect(addr).with_context(|| format!("connect() to {addr}"))?;
        }
        per_call.push(t.elapsed().as_secs_f64() * 1e9 / f64::from(batch));
    }
    Ok(stats::median(&per_call))
}

impl Sample {
    /// Median new-connection rate through the path.
    #[must_use]
    pub fn conn_rate(&self) -> f64 {
        stats::median(&self.conn)
    }

    /// Median of the per-repetition ratios path / direct (same client, same topology, one
    /// right after the other), when direct was measured beside it.
    #[must_use]
    pub fn conn_ratio(&self) -> Option<f64> {
        let ratios: Vec<f64> =
            self.conn.iter().zip(&self.conn_direct).filter(|(_, d)| **d > 0.0).map(|(p, d)| p / d).collect();
        (!ratios.is_empty()).then(|| stats::median(&ratios))
    }
}

/// The measured service, last of `n`.
fn services(n: u32) -> Vec<Service> {
    let mut v: Vec<Service> = (0..n.saturating_sub(1))
        .map(|i| mgen::filler(i, mgen::Shape { ports: 1, clusters: 1, per_cluster: 2 }))
        .collect();
    v.push(Service {
        name: "measured".into(),
        vip: VIP,
        ports: vec![Port::new("http", 80, HTTP), Port::new("iperf", IPERF, IPERF)],
        exports: vec![Export { cluster: "east".into(), addresses: vec![mcs_tests::topology::backend_ip(1, 0)] }],
    });
    v
}

/// Feeds `input` to `program` run in `node`.
pub(crate) fn load_rules(node: &NetNs, program: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", node.name()])
        .args(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program:?}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(input.as_bytes()).with_context(|| format!("feeding {program:?}"))?;
    drop(stdin);
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "{program:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Request/response round trips on one connection; microseconds each.
fn latency(addr: SocketAddrV4, pings: u32) -> Result<Vec<f64>> {
    let mut conn = HeldStream::open(addr, Duration::from_secs(2)).context("opening the ping-pong connection")?;
    for _ in 0..pings / 10 {
        conn.ping().context("warm-up ping")?;
    }
    let mut v = Vec::with_capacity(pings as usize);
    for _ in 0..pings {
        if interrupted() {
            bail!("interrupted");
        }
        let t = Instant::now();
        conn.ping().context("ping")?;
        v.push(micros(t.elapsed()));
    }
    let _ = conn.close();
    Ok(v)
}

/// New connections for `time`: connect, read the greeting, close as applications do (a FIN
/// from the client first, so the client keeps the `TIME_WAIT` and, with `tcp_tw_reuse=1`, the
/// kernel reuses its ports); returns the rate, each connection's connect + first byte time and
/// the failures.
pub(crate) fn connections(addr: SocketAddrV4, time: Duration) -> (f64, Vec<f64>, u64) {
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut buf = [0u8; 256];
    for _ in 0..5_000_000 {
        if start.elapsed() >= time || interrupted() {
            break;
        }
        let t = Instant::now();
        let Ok(mut stream) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)) else {
            errors += 1;
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut got = 0;
        for _ in 0..16 {
            match stream.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if buf[..got].contains(&b'\n') || got == buf.len() {
                break;
            }
        }
        if buf[..got].contains(&b'\n') {
            lat.push(micros(t.elapsed()));
        } else {
            errors += 1;
        }
        drop(stream);
    }
    #[expect(clippy::cast_precision_loss, reason = "connection counts")]
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    (rate, lat, errors)
}

/// iperf3 from the client pod, Gbit/s received.
fn iperf(client: &NetNs, addr: SocketAddrV4, secs: u32) -> Result<f64> {
    let mut last = String::new();
    for _attempt in 0..3 {
        let out = Command::new("timeout")
            .arg(format!("{}", secs + 20))
            .args(["ip", "netns", "exec", client.name(), "iperf3", "-J", "--connect-timeout", "3000", "-c"])
            .arg(addr.ip().to_string())
            .args(["-p", &addr.port().to_string(), "-t", &secs.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("running iperf3")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json.pointer("/end/sum_received/bits_per_second").and_then(serde_json::Value::as_f64) {
            return Ok(bps / 1e9);
        }
        last = json.get("error").map_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned(), ToString::to_string);
        thread::sleep(Duration::from_millis(300));
    }
    bail!("iperf3 to {addr} failed: {last}")
}

/// `tcp_tw_reuse=1` in the client pod, which lets the new-connection loop reuse its own ports
/// in `TIME_WAIT`. The ephemeral port range stays Linux's default (32768-60999): ports above it
/// are where the datapath remaps the source ports of translated flows.
fn set_client_sysctls(client: &NetNs) {
    client.sysctl("net.ipv4.tcp_tw_reuse", "1");
}

/// Where the new-connection loop connects: the pod IP, and the path's address (none for `Direct`).
struct Targets {
    direct: SocketAddrV4,
    through: Option<SocketAddrV4>,
}

/// What [`interleaved_connections`] measured: the path's rates (for `Direct`, the pod IP's),
/// the direct rates beside them, the path's latencies, its failures and those of the direct
/// runs beside it.
struct ConnRuns {
    path: Vec<f64>,
    direct: Vec<f64>,
    lat: Vec<f64>,
    errors: u64,
    direct_errors: u64,
}

/// The new-connection loop `s.conn_reps` times to the pod IP and, right after each, through
/// the path, from the same client.
fn interleaved_connections(client: &NetNs, targets: &Targets, s: &Settings) -> ConnRuns {
    let mut runs = ConnRuns { path: Vec::new(), direct: Vec::new(), lat: Vec::new(), errors: 0, direct_errors: 0 };
    for _ in 0..s.conn_reps {
        if interrupted() {
            break;
        }
        let (rate, lat, errors) = client.enter(|| connections(targets.direct, s.conn_time));
        let (rate, lat, errors) = match targets.through {
            None => (rate, lat, errors),
            Some(through) => {
                runs.direct.push(rate);
                runs.direct_errors += errors;
                client.enter(|| connections(through, s.conn_time))
            }
        };
        runs.path.push(rate);
        runs.lat.extend(lat);
        runs.errors += errors;
    }
    runs
}

/// Measures one path at one service count.
fn one(path: PathKind, n: u32, s: &Settings) -> Result<Sample> {
    let prefix = unique_prefix("bench");
    let spec = TopologySpec { clusters: vec![ClusterSpec::new("local", 0), ClusterSpec::new("east", 1)] };
    let mut topo = Topology::build(&prefix, &spec);
    topo.start_servers(HTTP, DNS);
    let pod = topo.pod(1, 0);
    let mut server = pod.nsenter_command("iperf3");
    server.args(["-s", "-p", &IPERF.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    #[expect(clippy::zombie_processes, reason = "registered with the namespace guard, which kills and reaps it")]
    let _server = pod.spawn_cmd(&mut server);
    set_client_sysctls(topo.client());
    let list = services(n);

    let started = Instant::now();
    // Dropped in reverse: the agent stops (its links go) before its manifests, and the
    // process leaves the cgroup (which is then removed) last.
    let mut cgroup = None;
    let mut _dir = None;
    let mut _agent = None;
    match path {
        PathKind::Direct => {}
        PathKind::Ours | PathKind::Socket => {
            let dir = TempDir::new(&format!("{prefix}-manifests"))?;
            let (fillers, measured) = list.split_at(list.len() - 1);
            mgen::write_services(&dir.0, fillers.iter().cloned(), 1000)?;
            mgen::write_list(&dir.0.join("zz-measured.json"), &measured[0].objects())?;
            let socket_arg;
            let extra: &[String] = if path == PathKind::Socket {
                let child = ChildCgroup::new(&prefix, "");
                socket_arg = vec![child.arg()];
                cgroup = Some(child);
                &socket_arg
            } else {
                &[]
            };
            let mut agent = Agent::start_with(topo.node(0), &dir.0, topo.client_iface(), &prefix, extra)?;
            if path == PathKind::Socket {
                // A UDP service for the connect() cost, beside the measured one.
                let import = mcs_tests::manifest::import("bench", "udp-probe").ip(UDP_VIP).udp("dns", 53);
                let slice = mcs_tests::manifest::slice("bench", "udp-probe", "east")
                    .udp("dns", DNS)
                    .ready(mcs_tests::topology::backend_ip(1, 0));
                mcs_tests::manifest::write(&dir.0, "zz-udp-probe-import.json", &import);
                mcs_tests::manifest::write(&dir.0, "zz-udp-probe-slice.json", &slice);
            }
            let expected = u64::from(n - 1) + 2 + u64::from(path == PathKind::Socket);
            agent.wait_synced(Duration::from_mins(5), |l| {
                l.number("service_ports") == Some(expected) && l.number("errors") == Some(0)
            })?;
            _agent = Some(agent);
            _dir = Some(dir);
        }
        PathKind::Iptables => load_rules(topo.node(0), &["iptables-restore"], &kproxy::iptables(&list))?,
        PathKind::Nftables => load_rules(topo.node(0), &["nft", "-f", "-"], &kproxy::nftables(&list))?,
    }
    let (http, iperf_addr) = if path == PathKind::Direct {
        let pod = topo.pod_ip(1, 0);
        (SocketAddrV4::new(pod, HTTP), SocketAddrV4::new(pod, IPERF))
    } else {
        (SocketAddrV4::new(VIP, 80), SocketAddrV4::new(VIP, IPERF))
    };
    let ready = Instant::now() + Duration::from_secs(20);
    while topo.client().enter(|| tcp_ask(http, Duration::from_millis(300))).is_err() {
        ensure!(Instant::now() < ready && !interrupted(), "{} at {n} services: {http} never answered", path.name());
        thread::sleep(Duration::from_millis(50));
    }
    let load_secs = started.elapsed().as_secs_f64();

    let connect = cgroup.as_mut().map(|cgroup| measure_connect(&topo, cgroup, s)).transpose()?;

    let lat = topo.client().enter(|| latency(http, s.pings))?;
    let gbps = iperf(topo.client(), iperf_addr, s.iperf_secs)?;
    let targets = Targets {
        direct: SocketAddrV4::new(topo.pod_ip(1, 0), HTTP),
        through: (path != PathKind::Direct).then_some(http),
    };
    let conn = interleaved_connections(topo.client(), &targets, s);
    let lat = stats::percentiles(&lat, &[50.0, 99.0]);
    let conn_lat = stats::percentiles(&conn.lat, &[50.0, 99.0]);
    Ok(Sample {
        path,
        services: n,
        lat_p50: lat[0],
        lat_p99: lat[1],
        gbps,
        conn: conn.path,
        conn_direct: conn.direct,
        conn_p50: conn_lat[0],
        conn_p99: conn_lat[1],
        conn_errors: conn.errors,
        conn_direct_errors: conn.direct_errors,
        load_secs,
        connect,
    })
}

/// Runs every path at every count.
///
/// # Errors
/// When a path cannot be set up or measured.
pub fn run(s: &Settings) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for &n in &s.counts {
        for path in PathKind::ALL {
            if interrupted() {
                bail!("interrupted");
            }
            let t = Instant::now();
            let sample = one(path, n, s).with_context(|| format!("{} at {n} services", path.name()))?;
            println!(
                "   {:<9} {n:>6} services: latency p50 {:>6.1} us p99 {:>6.1} us | {:>6.2} Gbit/s | {:>7.0} conn/s \
                 {} (p50 {:.0} us, {} errors, {} direct beside) | loaded in {:.2} s | {:.0} s",
                path.name(),
                sample.lat_p50,
                sample.lat_p99,
                sample.gbps,
                sample.conn_rate(),
                sample.conn_ratio().map_or_else(String::new, |r| format!("({r:.2}x direct)")),
                sample.conn_p50,
                sample.conn_errors,
                sample.conn_direct_errors,
                sample.load_secs,
                t.elapsed().as_secs_f64()
            );
            out.push(sample);
        }
    }
    Ok(out)
}
