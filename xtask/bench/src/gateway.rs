//! The gateway topology: a host outside the `ClusterSet` (no agent) sends to a
//! `ClusterSetIP` that its network routes to a gateway node, which translates
//! and forwards to a backend pod in another cluster.
//!
//! Each path gets a fresh topology from the test harness: the demo-shaped
//! `ClusterSet` with one backend pod in cluster `east` and an external client
//! on `node(0)`'s uplink `up0` (`Topology::add_external_client`). So that the
//! pod IP is reachable from the client for the baseline, the client routes
//! cluster `east`'s pods via `node(0)` and `node(1)` routes the client's
//! range back the same way. Paths:
//! - routing: the pod IP, nothing loaded on the gateway (plain forwarding);
//! - xdp: the `ClusterSetIP`, `mcs-agent` with `--xdp-interfaces=up0,fab0`
//!   and no `--interfaces` (the XDP gateway: DNAT, SNAT to the node,
//!   forwarding from XDP);
//! - tc: the `ClusterSetIP`, `mcs-agent` with `--interfaces=up0` (the tc
//!   programs on the uplink: DNAT on ingress, reverse NAT on egress; no SNAT,
//!   the backend's replies come back through the gateway by routing);
//! - iptables: the `ClusterSetIP`, `nat` rules in the gateway: DNAT to the
//!   backend in `PREROUTING`, `MASQUERADE` of what was translated in `POSTROUTING`.
//!
//! In every topology the client and the backend pod send complete checksums
//! (transmit checksum offload off, as frames from a wire have them) and the far
//! ends of the gateway's veths carry the no-op XDP program (a veth needs one to
//! receive frames redirected by XDP): the same for every path. Each repetition
//! of a path follows one to the pod IP in the same topology, and the ratios
//! are those pairs' (median).
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mcs_tests::{
    client::tcp_ask,
    manifest,
    netns::unique_prefix,
    topology::{ClusterSpec, Topology, TopologySpec, UPLINK_IFACE, UPLINK_IP, node_fabric_ip},
    xdp::XdpPass,
};

use crate::{
    agent::{Agent, TempDir},
    e2e, interrupted, stats,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 30);
const HTTP: u16 = 8080;
const DNS: u16 = 5353;
/// The UDP sink on the backend pod: a bound socket nobody reads, so every
/// datagram that arrives is counted (`IpInDelivers`) and none is answered.
const SINK: u16 = 9999;
/// UDP payload of the small packets: 18 bytes make a 60-byte Ethernet frame.
const PAYLOAD: usize = 18;
/// Datagrams per `sendmmsg`.
const BATCH: usize = 32;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Seconds of UDP sending per repetition.
    pub udp_time: Duration,
    /// Seconds of new connections per repetition.
    pub conn_time: Duration,
    /// Repetitions (each after one to the pod IP).
    pub reps: u32,
}

/// A path through the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The pod IP, nothing loaded.
    Routing,
    /// The XDP gateway.
    Xdp,
    /// The tc programs on the uplink.
    Tc,
    /// iptables DNAT and MASQUERADE.
    Iptables,
}

impl Path {
    /// Every path, in report order.
    pub const ALL: [Self; 4] = [Self::Routing, Self::Xdp, Self::Tc, Self::Iptables];

    /// Its name in the report.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Routing => "routing (pod IP)",
            Self::Xdp => "XDP gateway",
            Self::Tc => "tc on the uplink (no SNAT)",
            Self::Iptables => "iptables DNAT + MASQUERADE",
        }
    }
}

/// One path's figures.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Which.
    pub path: Path,
    /// Small UDP datagrams received by the backend pod per second, per repetition.
    pub udp_pps: Vec<f64>,
    /// The same to the pod IP, right before each.
    pub udp_pps_routing: Vec<f64>,
    /// Datagrams the client sent per second, per repetition.
    pub udp_sent_pps: Vec<f64>,
    /// New connections per second, per repetition.
    pub conn: Vec<f64>,
    /// The same to the pod IP, right before each.
    pub conn_routing: Vec<f64>,
    /// Failed connections (path, routing beside).
    pub conn_errors: (u64, u64),
}

impl Sample {
    /// Median of the per-repetition ratios `path / routing`.
    fn ratio(path: &[f64], routing: &[f64]) -> f64 {
        let r: Vec<f64> = path.iter().zip(routing).filter(|(_, d)| **d > 0.0).map(|(p, d)| p / d).collect();
        if r.is_empty() { 0.0 } else { stats::median(&r) }
    }

    /// UDP packets per second, as a ratio to routing in the same topology.
    #[must_use]
    pub fn udp_ratio(&self) -> f64 {
        Self::ratio(&self.udp_pps, &self.udp_pps_routing)
    }

    /// New connections per second, as a ratio to routing in the same topology.
    #[must_use]
    pub fn conn_ratio(&self) -> f64 {
        Self::ratio(&self.conn, &self.conn_routing)
    }
}

/// Sends small datagrams to `to` from the calling thread's namespace for
/// `time`, `BATCH` per `sendmmsg`: the datagrams sent.
fn blast(to: SocketAddrV4, time: Duration) -> Result<u64> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("UDP socket")?;
    sock.connect(to).with_context(|| format!("connect {to}"))?;
    let payload = [0x5au8; PAYLOAD];
    let mut iov: Vec<libc::iovec> =
        (0..BATCH).map(|_| libc::iovec { iov_base: payload.as_ptr().cast_mut().cast(), iov_len: PAYLOAD }).collect();
    // SAFETY: an all-zero `mmsghdr` is valid (no name, no control data).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = std::ptr::from_mut(v);
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent = 0u64;
    for _ in 0..100_000_000u64 {
        if start.elapsed() >= time || interrupted() {
            break;
        }
        #[expect(clippy::cast_possible_truncation, reason = "BATCH is 32")]
        // SAFETY: `msgs` holds BATCH valid headers whose iovecs point at `payload`, all live.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        // A full queue (ENOBUFS) or an ICMP error reported on the socket: go on.
        if let Ok(n) = u64::try_from(n) {
            sent += n;
        }
    }
    Ok(sent)
}

/// Small UDP packets from the client to `to` for `time`: (received by the
/// backend pod per second, sent per second).
fn udp_rate(topo: &Topology, to: SocketAddrV4, time: Duration) -> Result<(f64, f64)> {
    let pod = topo.pod(1, 0);
    let delivered = || pod.counter("IpInDelivers").context("IpInDelivers of the backend pod");
    let before = delivered()?;
    let start = Instant::now();
    let sent = topo.external_client().enter(|| blast(to, time))?;
    let secs = start.elapsed().as_secs_f64();
    // Let the queues drain.
    thread::sleep(Duration::from_millis(100));
    let got = delivered()?.saturating_sub(before);
    #[expect(clippy::cast_precision_loss, reason = "packet counts")]
    Ok((got as f64 / secs, sent as f64 / secs))
}

/// The gateway's iptables rules: DNAT to the backend, MASQUERADE what was translated.
fn iptables_rules(backend: Ipv4Addr) -> String {
    format!(
        "*nat\n\
         -A PREROUTING -d {VIP}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination {backend}:{HTTP}\n\
         -A PREROUTING -d {VIP}/32 -p udp -m udp --dport {SINK} -j DNAT --to-destination {backend}:{SINK}\n\
         -A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE\n\
         COMMIT\n"
    )
}

/// Builds the topology of one path.
fn topology(prefix: &str) -> (Topology, XdpPass) {
    let spec = TopologySpec { clusters: vec![ClusterSpec::new("local", 0), ClusterSpec::new("east", 1)] };
    let mut topo = Topology::build(prefix, &spec);
    topo.start_servers(HTTP, DNS);
    topo.add_external_client();
    let pass = XdpPass::attach(&[(topo.external_client(), "eth0"), (topo.fabric(), "n0")]);
    topo.external_client().disable_tx_checksum("eth0");
    topo.pod(1, 0).disable_tx_checksum("eth0");
    topo.node(1).ip(&["route", "add", "198.18.250.0/24", "via", &node_fabric_ip(0).to_string()]);
    topo.external_client().ip(&["route", "add", "198.18.1.0/24", "via", &UPLINK_IP.to_string()]);
    topo.external_client().sysctl("net.ipv4.tcp_tw_reuse", "1");
    (topo, pass)
}

/// Measures one path.
fn one(path: Path, s: Settings) -> Result<Sample> {
    let prefix = unique_prefix("bench");
    let (topo, _pass) = topology(&prefix);
    let backend = topo.pod_ip(1, 0);
    let _sink = topo.pod(1, 0).enter(|| UdpSocket::bind(("0.0.0.0", SINK))).context("the UDP sink")?;
    let mut _dir = None;
    let mut _agent = None;
    if matches!(path, Path::Xdp | Path::Tc) {
        let dir = TempDir::new(&format!("{prefix}-manifests"))?;
        let import = manifest::import("bench", "gateway").ip(VIP).tcp("http", 80).udp("sink", SINK);
        let slice = manifest::slice("bench", "gateway", "east").tcp("http", HTTP).udp("sink", SINK).ready(backend);
        manifest::write(&dir.0, "import.json", &import);
        manifest::write(&dir.0, "slice.json", &slice);
        let mut agent = if path == Path::Xdp {
            let extra = [format!("--xdp-interfaces={UPLINK_IFACE},fab0")];
            Agent::start_with(topo.node(0), &dir.0, "", &prefix, &extra)?
        } else {
            Agent::start_with(topo.node(0), &dir.0, UPLINK_IFACE, &prefix, &[])?
        };
        agent.wait_synced(Duration::from_mins(1), |l| {
            l.number("service_ports") == Some(2) && l.number("errors") == Some(0)
        })?;
        _agent = Some(agent);
        _dir = Some(dir);
    } else if path == Path::Iptables {
        e2e::load_rules(topo.node(0), &["iptables-restore", "--noflush"], &iptables_rules(backend))?;
    }
    let (http, udp) = if path == Path::Routing {
        (SocketAddrV4::new(backend, HTTP), SocketAddrV4::new(backend, SINK))
    } else {
        (SocketAddrV4::new(VIP, 80), SocketAddrV4::new(VIP, SINK))
    };
    let ready = Instant::now() + Duration::from_secs(20);
    while topo.external_client().enter(|| tcp_ask(http, Duration::from_millis(300))).is_err() {
        ensure!(Instant::now() < ready && !interrupted(), "{}: {http} never answered", path.name());
        thread::sleep(Duration::from_millis(50));
    }
    let direct = (SocketAddrV4::new(backend, HTTP), SocketAddrV4::new(backend, SINK));
    let mut sample = Sample {
        path,
        udp_pps: Vec::new(),
        udp_pps_routing: Vec::new(),
        udp_sent_pps: Vec::new(),
        conn: Vec::new(),
        conn_routing: Vec::new(),
        conn_errors: (0, 0),
    };
    for _ in 0..s.reps {
        if interrupted() {
            break;
        }
        let (routing, _) = udp_rate(&topo, direct.1, s.udp_time)?;
        let (got, sent) = udp_rate(&topo, udp, s.udp_time)?;
        sample.udp_pps_routing.push(routing);
        sample.udp_pps.push(got);
        sample.udp_sent_pps.push(sent);
        let (routing, _, routing_errors) = topo.external_client().enter(|| e2e::connections(direct.0, s.conn_time));
        let (rate, _, errors) = topo.external_client().enter(|| e2e::connections(http, s.conn_time));
        sample.conn_routing.push(routing);
        sample.conn.push(rate);
        sample.conn_errors.0 += errors;
        sample.conn_errors.1 += routing_errors;
    }
    Ok(sample)
}

/// Runs every path.
///
/// # Errors
/// When a path cannot be set up or measured.
pub fn run(s: Settings) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for path in Path::ALL {
        if interrupted() {
            break;
        }
        let sample = one(path, s).with_context(|| format!("gateway path {}", path.name()))?;
        println!(
            "   {:<28} UDP {:>9.0} pkt/s ({:.2} of routing), conn {:>6.0}/s ({:.2} of routing)",
            path.name(),
            stats::median(&sample.udp_pps),
            sample.udp_ratio(),
            stats::median(&sample.conn),
            sample.conn_ratio()
        );
        out.push(sample);
    }
    Ok(out)
}
