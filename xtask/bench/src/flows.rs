//! Two scenarios where translated flows used to break (issue 9), measured with ordinary
//! clients, kube-proxy's iptables shape beside ours and the pod IP beside both:
//!
//! - **the clash sequence**: `ab -c 1 -n N` (one new connection per request, closed by the
//!   server) to the pod IP, then the ClusterSetIP, then the pod IP, then the ClusterSetIP, from
//!   one client pod with `tcp_tw_reuse=1`. Ours and iptables each get a fresh topology, built
//!   side by side and run alternately, so both see the same machine at the same time;
//! - **the PMTU upload**: one `iperf3` stream from the client pod (MTU 1500) to the backend
//!   across a fabric with an MTU of 1400 between the nodes, so the client's node must answer
//!   with ICMP "fragmentation needed" and the client must take it (PMTU discovery). Direct and
//!   through the ClusterSetIP, alternately, in the topology of ours and in that of iptables.
//!
//! Every topology is the harness's: the client pod and its node (cluster `local`), the fabric,
//! and one node and pod of cluster `east`, all in namespaces, all addresses in 198.18.0.0/15.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use mcs_tests::{
    apps::{Ab, AbReport, Iperf3, Nginx, http_get_from, iperf3_server},
    netns::unique_prefix,
    topology::{ClusterSpec, Topology, TopologySpec},
};

use crate::{
    agent::{Agent, TempDir},
    e2e::load_rules,
    interrupted, kproxy,
    mgen::{self, Export, Port, Service},
};

const HTTP: u16 = 8080;
const IPERF: u16 = 5201;
const CLASH_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
const PMTU_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 21);
/// The MTU of the fabric links between the two nodes in the PMTU upload.
pub const HOP_MTU: u16 = 1400;
/// The initial retransmission timeout: a request this slow waited for a lost SYN.
pub const SYN_RTO_MS: u32 = 1000;
/// A SYN refused by the backend's `TIME_WAIT` (PAWS: a reused tuple with older timestamps) is
/// retransmitted after `TCP_TIMEOUT_MIN`, 2 jiffies (8 ms at `HZ=250`): a request this slow
/// may have paid that. The 99th percentile must stay below it.
pub const SYN_FAST_RETRANSMIT_MS: u32 = 8;
/// The clash sequence: to the pod IP (false) or the ClusterSetIP (true), in this order.
pub const CLASH_SEQUENCE: [bool; 4] = [false, true, false, true];

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Requests of each ab run.
    pub clash_requests: u32,
    /// Seconds of each iperf3 run.
    pub pmtu_secs: u32,
    /// iperf3 runs of each target.
    pub pmtu_reps: u32,
}

/// One run of the clash sequence, on both sides.
#[derive(Clone, Debug)]
pub struct ClashRun {
    /// To the ClusterSetIP (else the pod IP).
    pub through_vip: bool,
    /// Our agent's topology.
    pub ours: AbReport,
    /// The iptables topology.
    pub iptables: AbReport,
    /// SYN retransmits of the client during the run (`TcpExtTCPSynRetrans`), ours and iptables.
    pub syn_retransmits: (u64, u64),
    /// SYNs the backend refused in `TIME_WAIT` during the run (`TcpExtPAWSTimewait`), ours and
    /// iptables.
    pub refused: (u64, u64),
}

/// The PMTU upload on one side: Gbit/s of each run, in the order run.
#[derive(Clone, Debug, Default)]
pub struct PmtuSide {
    /// Through the ClusterSetIP.
    pub through: Vec<f64>,
    /// To the pod IP, each right before the matching `through` run, same client.
    pub direct: Vec<f64>,
    /// Runs that failed, with what iperf3 said.
    pub errors: Vec<String>,
}

/// Both scenarios.
#[derive(Clone, Debug)]
pub struct Report {
    /// The four runs, in order.
    pub clash: Vec<ClashRun>,
    /// Ours.
    pub pmtu_ours: PmtuSide,
    /// iptables.
    pub pmtu_iptables: PmtuSide,
}

impl Report {
    /// Whether the clash sequence met its promise: every run clean, no request as slow as a lost
    /// SYN's RTO, 99% faster than a refused SYN's retransmit, every ClusterSetIP run at least
    /// `share` times the iptables run's rate.
    #[must_use]
    pub fn clash_met(&self, share: f64) -> bool {
        self.clash.iter().all(|r| {
            let clean =
                |a: &AbReport| a.clean().is_ok() && a.longest_ms < SYN_RTO_MS && a.p99_ms < SYN_FAST_RETRANSMIT_MS;
            clean(&r.ours) && clean(&r.iptables) && (!r.through_vip || r.ours.rate >= share * r.iptables.rate)
        })
    }
}

/// Who carries the ClusterSetIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    Ours,
    Iptables,
}

/// A topology with the ClusterSetIP carried by ours or by iptables.
struct Side {
    // Drop order: agent, manifests, nginx, namespaces.
    _agent: Option<Agent>,
    _dir: Option<TempDir>,
    _nginx: Option<Nginx>,
    topology: Topology,
    direct: SocketAddrV4,
    vip: SocketAddrV4,
}

/// `name` (one port, `port` -> `port` on the east pod) at `vip`.
fn service(name: &str, vip: Ipv4Addr, port: (u16, u16)) -> Service {
    Service {
        name: name.into(),
        vip,
        ports: vec![Port::new(name, port.0, port.1)],
        exports: vec![Export { cluster: "east".into(), addresses: vec![mcs_tests::topology::backend_ip(1, 0)] }],
    }
}

impl Side {
    /// A fresh topology; `prepare` sets up the backend pod (a server) and the links before the
    /// ClusterSetIP is programmed.
    fn build(carrier: Carrier, service: &Service, prepare: impl FnOnce(&Topology) -> Option<Nginx>) -> Result<Self> {
        let prefix = unique_prefix(if carrier == Carrier::Ours { "bench-fl-ours" } else { "bench-fl-ipt" });
        let spec = TopologySpec { clusters: vec![ClusterSpec::new("local", 0), ClusterSpec::new("east", 1)] };
        let topology = Topology::build(&prefix, &spec);
        let nginx = prepare(&topology);
        topology.client().sysctl("net.ipv4.tcp_tw_reuse", "1");
        let port = &service.ports[0];
        let (direct, vip) =
            (SocketAddrV4::new(topology.pod_ip(1, 0), port.target), SocketAddrV4::new(service.vip, port.port));
        let (mut agent, mut dir) = (None, None);
        match carrier {
            Carrier::Ours => {
                let manifests = TempDir::new(&format!("{prefix}-manifests"))?;
                mgen::write_list(&manifests.0.join("service.json"), &service.objects())?;
                let mut started = Agent::start(topology.node(0), &manifests.0, topology.client_iface(), &prefix)?;
                started.wait_synced(Duration::from_secs(30), |l| {
                    l.number("service_ports") == Some(1) && l.number("errors") == Some(0)
                })?;
                agent = Some(started);
                dir = Some(manifests);
            }
            Carrier::Iptables => {
                load_rules(topology.node(0), &["iptables-restore"], &kproxy::iptables(std::slice::from_ref(service)))?;
            }
        }
        Ok(Side { _agent: agent, _dir: dir, _nginx: nginx, topology, direct, vip })
    }

    fn target(&self, through_vip: bool) -> SocketAddrV4 {
        if through_vip { self.vip } else { self.direct }
    }

    /// Waits (at most 20 s) for the page through the ClusterSetIP, fetched from source ports
    /// below the ephemeral range so the measured runs start with no port used through it yet.
    fn wait_page(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in 20_000..30_000 {
            let (local, vip) = (SocketAddrV4::new(self.topology.client_ip(), port), self.vip);
            match self.topology.client().enter(|| http_get_from(local, vip, Duration::from_millis(500))) {
                Ok(()) => return Ok(()),
                Err(e) => ensure!(Instant::now() < deadline && !interrupted(), "no page through {}: {e}", self.vip),
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("no page through {}", self.vip)
    }
}

/// The clash sequence on both sides, alternately.
fn clash(s: &Settings) -> Result<Vec<ClashRun>> {
    let svc = service("clash", CLASH_VIP, (80, HTTP));
    let with_nginx = |t: &Topology| Some(Nginx::start(t.pod(1, 0), HTTP));
    let ours = Side::build(Carrier::Ours, &svc, with_nginx)?;
    let iptables = Side::build(Carrier::Iptables, &svc, with_nginx)?;
    ours.wait_page()?;
    iptables.wait_page()?;
    let mut runs = Vec::new();
    for (i, &through_vip) in CLASH_SEQUENCE.iter().enumerate() {
        let mut reports = Vec::new();
        for (name, side) in [("ours", &ours), ("iptables", &iptables)] {
            if interrupted() {
                bail!("interrupted");
            }
            let target = side.target(through_vip);
            let (client, pod) = (side.topology.client(), side.topology.pod(1, 0));
            let count =
                || (client.counter("TcpExtTCPSynRetrans").unwrap_or(0), pod.counter("TcpExtPAWSTimewait").unwrap_or(0));
            let before = count();
            let report = Ab::new(target).requests(s.clash_requests).run(client);
            let after = count();
            let (syn, refused) = (after.0 - before.0, after.1 - before.1);
            println!(
                "   clash run {} {name:<8} {:<6} {} | {syn} SYN retransmits, {refused} refused in TIME_WAIT",
                i + 1,
                if through_vip { "vip" } else { "direct" },
                report.summary()
            );
            reports.push((report, syn, refused));
        }
        let (iptables, ipt_syn, ipt_refused) = reports.pop().unwrap_or_default();
        let (ours, ours_syn, ours_refused) = reports.pop().unwrap_or_default();
        runs.push(ClashRun {
            through_vip,
            ours,
            iptables,
            syn_retransmits: (ours_syn, ipt_syn),
            refused: (ours_refused, ipt_refused),
        });
    }
    Ok(runs)
}

/// The PMTU upload on one side: direct, then through the ClusterSetIP, `pmtu_reps` times.
fn pmtu(carrier: Carrier, s: &Settings) -> Result<PmtuSide> {
    let svc = service("upload", PMTU_VIP, (IPERF, IPERF));
    let side = Side::build(carrier, &svc, |t| {
        iperf3_server(t.pod(1, 0), IPERF);
        for cluster in [0, 1] {
            t.set_fabric_mtu(cluster, HOP_MTU);
        }
        t.client().sysctl("net.ipv4.tcp_mtu_probing", "0");
        None
    })?;
    let mut out = PmtuSide::default();
    let name = if carrier == Carrier::Ours { "ours" } else { "iptables" };
    for rep in 1..=s.pmtu_reps {
        for through_vip in [false, true] {
            if interrupted() {
                bail!("interrupted");
            }
            let report = Iperf3::new(side.target(through_vip)).seconds(s.pmtu_secs).run(side.topology.client());
            let what = if through_vip { name } else { "direct" };
            println!("   pmtu ({name}'s topology) run {rep} {what:<8} {}", report.summary());
            if let Some(e) = &report.error {
                out.errors.push(format!("{what}: {e}"));
            }
            if through_vip { &mut out.through } else { &mut out.direct }.push(report.gbps);
        }
    }
    Ok(out)
}

/// Runs both scenarios.
///
/// # Errors
/// When a topology cannot be set up or the run is interrupted. Failed runs are measured, not
/// errors.
pub fn run(s: &Settings) -> Result<Report> {
    let clash = clash(s)?;
    let pmtu_ours = pmtu(Carrier::Ours, s)?;
    let pmtu_iptables = pmtu(Carrier::Iptables, s)?;
    Ok(Report { clash, pmtu_ours, pmtu_iptables })
}
