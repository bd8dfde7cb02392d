//! The command line of `mcs-agent`: the only module that knows clap. It
//! parses the arguments, checks how they combine, and turns them into the
//! plain configuration of each command ([`run::RunConfig`],
//! [`plan::PlanConfig`], [`inspect::InspectConfig`]); nothing below it sees
//! an argument. It lives in the library so that tests can check that the
//! deployment manifests pass arguments the agent accepts.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{
    CommandFactory as _, Parser, Subcommand,
    builder::{PossibleValuesParser, TypedValueParser as _},
    error::ErrorKind,
};
use mcs_common::{DEFAULT_HAIRPIN_ADDR, limits};

use crate::{
    ebpf::{self, DatapathSettings, PortRange},
    events::{self, EventLevel},
    inspect::{self, InspectConfig},
    interfaces, maglev,
    monitor::{self, MonitorConfig},
    output::OutputFormat,
    plan::{self, PlanConfig, PlanSource},
    run::{self, RunConfig, SocketLb},
    sockets::DefaultCgroup,
    source::SourceConfig,
    status::{self, StatusConfig},
    translate::{self, Locality},
};

/// `-o json|table`.
fn output_format() -> impl clap::builder::TypedValueParser<Value = OutputFormat> {
    PossibleValuesParser::new(OutputFormat::ALL.map(OutputFormat::as_str))
        .map(|s| OutputFormat::parse(&s).expect("clap only passes the possible values"))
}

/// `--datapath-events off|drops|all`.
fn event_level() -> impl clap::builder::TypedValueParser<Value = EventLevel> {
    PossibleValuesParser::new(EventLevel::ALL.map(EventLevel::as_str))
        .map(|s| EventLevel::parse(&s).expect("clap only passes the possible values"))
}

/// `--locality none|local|remote`.
fn locality() -> impl clap::builder::TypedValueParser<Value = Locality> {
    PossibleValuesParser::new(Locality::ALL.map(Locality::as_str))
        .map(|s| Locality::parse(&s).expect("clap only passes the possible values"))
}

/// The translation's settings, shared by `run` and `plan`. `--cluster-id` is
/// required here; `plan` makes it optional (see [`PlanArgs`]).
#[derive(Clone, Debug, clap::Args)]
pub struct TranslateArgs {
    /// This cluster's id in the ClusterSet.
    #[arg(long)]
    pub cluster_id: String,
    /// At most this many exporting clusters contribute endpoints to one import; 0 means no cap.
    #[arg(long, default_value_t = translate::DEFAULT_MAX_EXPORTING_CLUSTERS)]
    pub max_exporting_clusters: usize,
    /// Locality preference of imports without the `mcs-ebpf.dev/locality` annotation.
    #[arg(long, value_parser = locality(), default_value = "none")]
    pub locality: Locality,
}

impl TranslateArgs {
    /// The translation settings these arguments ask for.
    #[must_use]
    pub fn config(&self) -> translate::Config {
        translate::Config {
            cluster_id: self.cluster_id.clone(),
            max_exporting_clusters: self.max_exporting_clusters,
            locality: self.locality,
        }
    }
}

/// Where `run` reads ServiceImports and EndpointSlices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// The Kubernetes API: in-cluster config, or `--kubeconfig`.
    Kubernetes,
    /// A directory of manifests (`--manifests`).
    File,
}

fn parse_table_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if !(3..=limits::MAGLEV_TABLE_SIZE_MAX).contains(&n) || !maglev::is_prime(n) {
        return Err(format!(
            "{n} is not a prime between 3 and {} (for example 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521)",
            limits::MAGLEV_TABLE_SIZE_MAX
        ));
    }
    Ok(n)
}

/// The datapath's settings on the command line of `run`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct DatapathFlags {
    /// Entries of the TCP conntrack map (LRU; two per connection).
    #[arg(long, default_value_t = limits::CONNTRACK_MAX, value_parser = clap::value_parser!(u32).range(2..))]
    pub conntrack_max: u32,
    /// Entries of the conntrack map of every other protocol (UDP; LRU; two
    /// per flow). A map of its own, so UDP churn cannot evict TCP flows.
    #[arg(long, default_value_t = limits::CONNTRACK_NON_TCP_MAX, value_parser = clap::value_parser!(u32).range(2..))]
    pub conntrack_max_non_tcp: u32,
    /// The source ports translated flows get, `FIRST-LAST`. It must lie
    /// outside the pods' ephemeral port range (`net.ipv4.ip_local_port_range`,
    /// 32768-60999 by default), so that a pod's direct connections and its
    /// ClusterSetIP connections can never share a tuple, and hold the new
    /// connections of a minute to one backend port (docs/datapath.md).
    #[arg(long, default_value = "1024-32767", value_parser = parse_port_range)]
    pub nat_port_range: PortRange,
    /// The largest Maglev table, a prime: a service port's table has the
    /// smallest size of a fixed ladder with at least 100 slots per usable
    /// backend, at most this (docs/datapath.md).
    #[arg(long, default_value_t = limits::MAGLEV_TABLE_SIZE, value_parser = parse_table_size)]
    pub maglev_table_size: u32,
    /// Slots of the one array that holds every Maglev table (4 bytes each;
    /// the default is 64 MiB). Applies when the maps are created.
    #[arg(long, default_value_t = limits::MAGLEV_SLOTS_MAX, value_parser = clap::value_parser!(u32).range(2..))]
    pub maglev_slots_max: u32,
    /// Idle timeout of a TCP connection that has only sent its SYN, in seconds.
    #[arg(long, default_value_t = limits::CT_TIMEOUT_TCP_SYN_SECS)]
    pub ct_timeout_tcp_syn: u64,
    /// Idle timeout of an established TCP connection, in seconds.
    #[arg(long, default_value_t = limits::CT_TIMEOUT_TCP_ESTABLISHED_SECS)]
    pub ct_timeout_tcp_established: u64,
    /// Idle timeout of a closing TCP connection (RST, or FIN both ways), in seconds.
    #[arg(long, default_value_t = limits::CT_TIMEOUT_TCP_CLOSING_SECS)]
    pub ct_timeout_tcp_closing: u64,
    /// Idle timeout of a UDP flow, in seconds.
    #[arg(long, default_value_t = limits::CT_TIMEOUT_UDP_SECS)]
    pub ct_timeout_udp: u64,
    /// Entries of the session-affinity map (LRU; one per client and service port).
    #[arg(long, default_value_t = limits::AFFINITY_MAX)]
    pub affinity_max: u32,
    /// Entries of the backends map: one per backend of each service port
    /// (draining ones included). A sync that needs more reports the service
    /// ports it could not write. Applies when the maps are created, not to
    /// maps adopted from the pin directory.
    #[arg(long, default_value_t = limits::BACKENDS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub backends_max: u32,
    /// Entries of the services map: one per service port and one per
    /// ClusterSetIP. Applies when the maps are created.
    #[arg(long, default_value_t = limits::SERVICES_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub services_max: u32,
    /// Service ports with a Maglev table and counters (the capacity of those
    /// two maps). Applies when the maps are created.
    #[arg(long, default_value_t = limits::SERVICE_PORTS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub service_ports_max: u32,
    /// The address a pod that reaches itself through a ClusterSetIP is
    /// source-NATed to, so its own stack takes the connection for a peer's.
    /// The packets go straight back to the pod, so it needs no route; a
    /// link-local address that no pod or node uses. `0.0.0.0` turns hairpin
    /// translation off.
    #[arg(long, default_value_t = DEFAULT_HAIRPIN_ADDR)]
    pub hairpin_ip: std::net::Ipv4Addr,
    /// Translate at the socket only in the node's own network namespace
    /// (hostNetwork pods, node daemons); pods keep the tc path, so a service
    /// mesh in the pod still sees the ClusterSetIP (as Cilium's
    /// `socketLB.hostNamespaceOnly`).
    #[arg(long)]
    pub socket_lb_host_only: bool,
    /// How a new flow's source address is checked: `fib` accepts it only
    /// when the node routes the address back out of the interface the packet
    /// came in on (strict reverse-path filtering), so a pod cannot open flows
    /// or session affinity with another pod's address; `off` checks nothing
    /// (for CNIs whose pod routes point at a bridge rather than the pod's
    /// own interface; docs/deploy.md).
    #[arg(long, value_enum, default_value_t = SourceValidation::Fib)]
    pub source_validation: SourceValidation,
    /// Fail-fast answers (TCP RST, ICMP port unreachable) each pod interface
    /// may get per second; refused packets over it are dropped
    /// (`reject-limited`). 0: no limit.
    #[arg(long, default_value_t = limits::REJECT_RATE)]
    pub reject_rate: u32,
    /// Fail-fast answers a pod interface may get at once.
    #[arg(long, default_value_t = limits::REJECT_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub reject_burst: u32,
    /// TCP segments other than SYNs that pick up an untracked flow mid-stream
    /// (after an eviction), per second and pod interface; those over it are
    /// dropped (`pickup-limited`) and the client's retransmission tries again,
    /// so a pod cannot fill the conntrack map with made-up flows. 0: no limit.
    #[arg(long, default_value_t = limits::PICKUP_RATE)]
    pub pickup_rate: u32,
    /// Mid-stream pickups a pod interface may make at once.
    #[arg(long, default_value_t = limits::PICKUP_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub pickup_burst: u32,
}

/// `--source-validation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceValidation {
    /// A FIB lookup of the source address must lead back to the interface.
    Fib,
    /// No check.
    Off,
}

fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let (first, last) = s.split_once('-').ok_or_else(|| format!("{s:?} is not FIRST-LAST (for example 1024-32767)"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?} in {s:?} is not a port: {e}"));
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || last < first {
        return Err(format!("{s:?}: the range must start above 0 and end at or after its start"));
    }
    if u32::from(last - first) + 1 < limits::NAT_PORT_PROBES {
        return Err(format!("{s:?}: at least {} ports are needed", limits::NAT_PORT_PROBES));
    }
    Ok(PortRange { first, last })
}

impl DatapathFlags {
    /// The datapath settings these flags ask for.
    #[must_use]
    pub const fn settings(&self) -> DatapathSettings {
        DatapathSettings {
            conntrack_max: self.conntrack_max,
            conntrack_max_non_tcp: self.conntrack_max_non_tcp,
            nat_port_range: self.nat_port_range,
            maglev_table_size: self.maglev_table_size,
            maglev_slots_max: self.maglev_slots_max,
            ct_timeout_tcp_syn: self.ct_timeout_tcp_syn,
            ct_timeout_tcp_established: self.ct_timeout_tcp_established,
            ct_timeout_tcp_closing: self.ct_timeout_tcp_closing,
            ct_timeout_udp: self.ct_timeout_udp,
            affinity_max: self.affinity_max,
            backends_max: self.backends_max,
            services_max: self.services_max,
            service_ports_max: self.service_ports_max,
            hairpin_ip: self.hairpin_ip,
            socket_lb_host_only: self.socket_lb_host_only,
            validate_sources: matches!(self.source_validation, SourceValidation::Fib),
            reject_rate: self.reject_rate,
            reject_burst: self.reject_burst,
            pickup_rate: self.pickup_rate,
            pickup_burst: self.pickup_burst,
        }
    }
}

/// Arguments of `mcs-agent run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Where ServiceImports and EndpointSlices come from: `file` when
    /// `--manifests` is given, else `kubernetes`.
    #[arg(long, value_enum)]
    pub source: Option<SourceKind>,
    /// Directory of manifests (selects `--source file`).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig file (with `--source kubernetes`); in-cluster config when unset.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Pod-facing interfaces: names and glob patterns, comma separated
    /// (for example `lxc*,veth*`). May be left out (or match nothing) on a
    /// pure gateway node, one with `--xdp-interfaces`.
    #[arg(long, value_delimiter = ',', required_unless_present = "xdp_interfaces")]
    pub interfaces: Vec<String>,
    /// Uplinks that carry the XDP gateway: ClusterSetIP traffic of clients
    /// that run no agent (VMs, other networks), routed to this node, is
    /// translated and forwarded in XDP; include the interfaces the backends'
    /// replies arrive on. Names and glob patterns, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub xdp_interfaces: Vec<String>,
    /// The translation's settings (`--cluster-id` is required).
    #[command(flatten)]
    pub translate: TranslateArgs,
    /// Directory on bpffs where maps and links are pinned.
    #[arg(long, default_value = ebpf::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// How often the file source checks the directory, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_interval_ms: u64,
    /// Minimum time between two syncs, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub min_sync_interval_ms: u64,
    /// Maximum time between two syncs, and the length of an audit round of
    /// the maps (the periodic resync, in parts), in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub max_sync_interval_ms: u64,
    /// How long a backend that left its slices keeps its established
    /// connections (it takes no new ones) before they are reset (TCP) or
    /// moved (UDP); one that comes back within it changes nothing. Long
    /// enough to ride out a relist or a remote cluster's export missing for
    /// a moment, short enough that clients of a pod that is really gone
    /// learn it in seconds rather than at TCP's retransmission timeout.
    #[arg(long, default_value_t = 30)]
    pub backend_removal_grace_seconds: u64,
    /// Address of the HTTP server for /metrics, /healthz and /readyz; empty disables it.
    #[arg(long, default_value = "0.0.0.0:9464")]
    pub metrics_addr: String,
    /// Socket-level load balancing: translate `connect()` and `sendmsg()` to
    /// a ClusterSetIP in cgroup programs, for pods and for the node's own
    /// processes. Default: on where a cgroup v2 hierarchy is found.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "true|false")]
    pub socket_lb: Option<bool>,
    /// The cgroup v2 directory the socket programs attach to; every process
    /// below it is translated. Default: the root of the cgroup2 mount in
    /// /proc/mounts (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid
    /// hosts). In a container, the host's cgroup2 root mounted in.
    #[arg(long)]
    pub cgroup_path: Option<PathBuf>,
    /// The datapath's settings.
    #[command(flatten)]
    pub datapath: DatapathFlags,
    /// Datapath events the agent writes into its log: `off`, `drops`
    /// (drops with reason and tuple, refused connections, resets of flows
    /// whose backend is gone; info level) or `all` (also each new
    /// translation, debug level). Switched in a map the programs read, so
    /// `mcs-agent monitor` turns them on for itself at run time.
    #[arg(long, value_parser = event_level(), default_value = "off")]
    pub datapath_events: EventLevel,
    /// The Unix socket `mcs-agent monitor` connects to; empty: none.
    /// Default: `/run/mcs-agent/<name of --pin-path>.monitor.sock`.
    #[arg(long)]
    pub monitor_socket: Option<PathBuf>,
}

impl RunArgs {
    /// The source these arguments select: `--source` when given, else `file`
    /// with `--manifests` and `kubernetes` without.
    #[must_use]
    pub const fn source_kind(&self) -> SourceKind {
        match (self.source, &self.manifests) {
            (Some(kind), _) => kind,
            (None, Some(_)) => SourceKind::File,
            (None, None) => SourceKind::Kubernetes,
        }
    }

    /// The configuration of `run`.
    ///
    /// # Errors
    /// When the arguments do not combine (each message names the fix), or a
    /// value is invalid.
    pub fn config(&self) -> Result<RunConfig, clap::Error> {
        let source = match (self.source_kind(), &self.manifests) {
            (SourceKind::File, Some(dir)) => {
                let poll_interval = Duration::from_millis(self.poll_interval_ms.max(10));
                SourceConfig::File { dir: dir.clone(), poll_interval }
            }
            (SourceKind::File, None) => {
                return Err(error(ErrorKind::MissingRequiredArgument, "--source file needs --manifests DIR"));
            }
            (SourceKind::Kubernetes, Some(_)) => {
                return Err(error(
                    ErrorKind::ArgumentConflict,
                    "--manifests is read only by --source file: drop --source kubernetes, or --manifests",
                ));
            }
            (SourceKind::Kubernetes, None) => SourceConfig::Kubernetes { kubeconfig: self.kubeconfig.clone() },
        };
        let xdp_interfaces = interfaces::parse_patterns_or_none(&self.xdp_interfaces)
            .map_err(|e| error(ErrorKind::ValueValidation, &format!("--xdp-interfaces: {e}")))?;
        let interfaces = if xdp_interfaces.is_empty() {
            interfaces::parse_patterns(&self.interfaces)
        } else {
            interfaces::parse_patterns_or_none(&self.interfaces)
        }
        .map_err(|e| error(ErrorKind::ValueValidation, &format!("--interfaces: {e}")))?;
        let metrics_addr = match self.metrics_addr.trim() {
            "" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|e| {
                error(ErrorKind::ValueValidation, &format!("--metrics-addr {addr:?} is not an address:port: {e}"))
            })?),
        };
        let socket_lb = socket_lb_cgroup(self.socket_lb, self.cgroup_path.as_deref(), DefaultCgroup::discover)
            .map_err(|e| error(ErrorKind::ArgumentConflict, &e))?;
        Ok(RunConfig {
            socket_lb,
            source,
            interfaces,
            xdp_interfaces,
            translate: self.translate.config(),
            pin_path: self.pin_path.clone(),
            min_sync_interval: Duration::from_millis(self.min_sync_interval_ms),
            max_sync_interval: Duration::from_millis(self.max_sync_interval_ms.max(1)),
            backend_removal_grace: Duration::from_secs(self.backend_removal_grace_seconds),
            metrics_addr,
            datapath: self.datapath.settings(),
            datapath_events: self.datapath_events,
            monitor_socket: match &self.monitor_socket {
                None => Some(events::socket_path(&self.pin_path)),
                Some(path) if path.as_os_str().is_empty() => None,
                Some(path) => Some(path.clone()),
            },
        })
    }
}

/// Where the socket programs attach, from `--socket-lb` (`None`: auto) and
/// `--cgroup-path`, with `discover` telling where the default would be.
/// Auto mode turns socket load balancing off, with a note, where it cannot
/// work; an explicit `--socket-lb` there is an error that names the fix.
///
/// # Errors
/// A message for the usage error.
pub fn socket_lb_cgroup(
    enabled: Option<bool>,
    path: Option<&Path>,
    discover: impl FnOnce() -> DefaultCgroup,
) -> Result<SocketLb, String> {
    if enabled == Some(false) {
        return Ok(SocketLb::Off { note: None });
    }
    if let Some(path) = path {
        return Ok(SocketLb::On { cgroup: path.to_path_buf() });
    }
    match (discover(), enabled) {
        (DefaultCgroup::Root(cgroup), _) => Ok(SocketLb::On { cgroup }),
        (DefaultCgroup::Namespaced(root), None) => Ok(SocketLb::Off {
            note: Some(format!(
                "socket load balancing is off: this agent runs in a cgroup namespace of its own, so {} is its container's cgroup, not the node's; mount the host's cgroup2 root and pass --cgroup-path (deploy/agent/daemonset.yaml does), or pass --socket-lb=false to silence this",
                root.display()
            )),
        }),
        (DefaultCgroup::Missing, None) => Ok(SocketLb::Off {
            note: Some(
                "socket load balancing is off: no cgroup2 file system in /proc/mounts (the tc programs still translate pods' traffic)"
                    .to_owned(),
            ),
        }),
        (DefaultCgroup::Namespaced(root), Some(_)) => Err(format!(
            "--socket-lb: this process is in a cgroup namespace of its own ({} is its container's cgroup); pass --cgroup-path with the host's cgroup2 root mounted in, or --socket-lb=false",
            root.display()
        )),
        (DefaultCgroup::Missing, Some(_)) => Err(
            "--socket-lb: no cgroup2 file system in /proc/mounts; pass --cgroup-path DIR or --socket-lb=false"
                .to_owned(),
        ),
    }
}

/// Arguments of `mcs-agent plan`. Unlike `run`, `--cluster-id` may be left
/// out (no cluster is local then).
#[derive(Clone, Debug, clap::Args)]
#[command(mut_arg("cluster_id", |arg| arg.required(false).default_value("")))]
pub struct PlanArgs {
    /// Directory of ServiceImport, EndpointSlice (and GKE ServiceImport and
    /// Endpoints) manifests. Without it the objects are listed from the
    /// Kubernetes API (in-cluster config, or `--kubeconfig`).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig file, when reading from the Kubernetes API.
    #[arg(long, conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// The translation's settings.
    #[command(flatten)]
    pub translate: TranslateArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_parser = output_format(), default_value = "json")]
    pub output: OutputFormat,
}

impl PlanArgs {
    /// The configuration of `plan`.
    #[must_use]
    pub fn config(&self) -> PlanConfig {
        let source = match &self.manifests {
            Some(dir) => PlanSource::Manifests(dir.clone()),
            None => PlanSource::Kubernetes { kubeconfig: self.kubeconfig.clone() },
        };
        PlanConfig { source, translate: self.translate.config(), output: self.output }
    }
}

/// Arguments of `mcs-agent inspect`.
#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    /// Directory on bpffs where the agent pinned its maps.
    #[arg(long, default_value = ebpf::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// List the tracked connections too.
    #[arg(long)]
    pub conntrack: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_parser = output_format(), default_value = "table")]
    pub output: OutputFormat,
}

impl InspectArgs {
    /// The configuration of `inspect`.
    #[must_use]
    pub fn config(&self) -> InspectConfig {
        InspectConfig { pin_path: self.pin_path.clone(), conntrack: self.conntrack, output: self.output }
    }
}

/// Arguments of `mcs-agent status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// Directory on bpffs where the agent pinned its maps.
    #[arg(long, default_value = ebpf::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Where the agent serves /status (its `--metrics-addr`, from this
    /// host); empty: show only what the pins hold.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub agent_addr: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_parser = output_format(), default_value = "table")]
    pub output: OutputFormat,
}

impl StatusArgs {
    /// The configuration of `status`.
    ///
    /// # Errors
    /// When `--agent-addr` is not an address and port.
    pub fn config(&self) -> Result<StatusConfig, clap::Error> {
        let agent_addr = match self.agent_addr.trim() {
            "" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|e| {
                subcommand_error(
                    "status",
                    ErrorKind::ValueValidation,
                    &format!("--agent-addr {addr:?} is not an address:port: {e}"),
                )
            })?),
        };
        Ok(StatusConfig { pin_path: self.pin_path.clone(), agent_addr, output: self.output })
    }
}

/// Arguments of `mcs-agent monitor`.
#[derive(Clone, Debug, clap::Args)]
pub struct MonitorArgs {
    /// Directory on bpffs where the agent pinned its maps: names the agent
    /// (its socket is `/run/mcs-agent/<name of this directory>.monitor.sock`).
    #[arg(long, default_value = ebpf::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// The agent's monitor socket, when it was started with `--monitor-socket`.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Only drops, refused connections and resets (no translations).
    #[arg(long)]
    pub drops: bool,
    /// Only events for this import, `NAMESPACE/NAME`.
    #[arg(long, value_name = "NS/NAME", value_parser = parse_service_name)]
    pub service: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Output format: `json` is one object per line.
    #[arg(short = 'o', long = "output", value_parser = output_format(), default_value = "table")]
    pub output: OutputFormat,
}

fn parse_service_name(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not NAMESPACE/NAME (for example demo/whoami)")),
    }
}

impl MonitorArgs {
    /// The configuration of `monitor`.
    #[must_use]
    pub fn config(&self) -> MonitorConfig {
        MonitorConfig {
            socket: self.socket.clone().unwrap_or_else(|| events::socket_path(&self.pin_path)),
            drops_only: self.drops,
            service: self.service.clone(),
            count: self.count,
            output: self.output,
        }
    }
}

/// The shells `mcs-agent completions` writes a script for.
pub type Shell = clap_complete::Shell;

/// `mcs-agent`.
#[derive(Parser, Debug)]
#[command(name = "mcs-agent", version, about = "eBPF dataplane agent for Kubernetes Multi-Cluster Services")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and attach the datapath and keep it in sync with the source.
    Run(Box<RunArgs>),
    /// Print the dataplane the agent would program from manifests, without
    /// touching the kernel.
    Plan(PlanArgs),
    /// Print what a running agent's pinned maps hold.
    Inspect(InspectArgs),
    /// One screen on a running agent: readiness, source and syncs,
    /// interfaces, service ports, the last minute's drops, map fill levels.
    Status(StatusArgs),
    /// Stream a running agent's datapath events (drops with reason and
    /// tuple, refusals, resets, new translations) as they happen.
    Monitor(MonitorArgs),
    /// Print a shell completion script (for example
    /// `mcs-agent completions bash > /etc/bash_completion.d/mcs-agent`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff: `mcs-agent man | man -l -`), or write it
    /// and one page per subcommand into a directory.
    Man {
        /// Write `mcs-agent.1` and `mcs-agent-<subcommand>.1` here instead
        /// (for example `/usr/local/share/man/man1`).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Detach the programs and remove the pinned maps. Tracked connections are lost.
    Cleanup {
        /// Directory on bpffs where maps and links are pinned.
        #[arg(long, default_value = ebpf::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
}

/// A clap error of `run`, with the usage line.
fn error(kind: ErrorKind, message: &str) -> clap::Error {
    subcommand_error("run", kind, message)
}

/// A clap error of the subcommand `name`, with its usage line.
fn subcommand_error(name: &str, kind: ErrorKind, message: &str) -> clap::Error {
    let mut command = Cli::command();
    let sub = command.find_subcommand_mut(name).expect("the subcommand exists");
    sub.error(kind, message)
}

/// The completion script of `shell` for the whole CLI.
#[must_use]
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "mcs-agent", &mut out);
    if shell == Shell::Bash {
        // clap_complete 4.6 spells the state of a subcommand of a hyphenated
        // binary one way where it sets it (`mcs__agent__subcmd__status`) and
        // another in the arm that completes its options
        // (`mcs__subcmd__agent__subcmd__status`), so no option after a
        // subcommand would ever complete (clap-rs/clap#6421). Spell the arms
        // as the state is set; a no-op once clap_complete is fixed.
        let script = String::from_utf8_lossy(&out).replace("mcs__subcmd__agent", "mcs__agent");
        return script.into_bytes();
    }
    out
}

/// The man page of `mcs-agent` itself (roff): name, synopsis, description,
/// and the subcommands, each of which has a page of its own ([`man_pages`]).
///
/// # Errors
/// Never in practice: writing into a `Vec` does not fail.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(man_command()).render(&mut out)?;
    Ok(out)
}

/// Writes `mcs-agent.1` and a page per subcommand (`mcs-agent-run.1`, ...)
/// into `dir`; returns their paths.
///
/// # Errors
/// When `dir` cannot be written.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    clap_mangen::generate_to(man_command(), dir)?;
    let mut names: Vec<PathBuf> = std::iter::once("mcs-agent.1".to_owned())
        .chain(man_command().get_subcommands().map(|s| format!("mcs-agent-{}.1", s.get_name())))
        .map(|name| dir.join(name))
        .collect();
    names.sort();
    Ok(names)
}

/// The command as the man pages show it (no `help` subcommand: `--help` is).
fn man_command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

/// A command with its configuration, ready to run.
#[derive(Debug)]
pub enum Job {
    /// `run` (boxed: by far the largest configuration).
    Run(Box<RunConfig>),
    /// `plan`.
    Plan(PlanConfig),
    /// `inspect`.
    Inspect(InspectConfig),
    /// `status`.
    Status(StatusConfig),
    /// `monitor`.
    Monitor(MonitorConfig),
    /// `completions` for this shell.
    Completions(Shell),
    /// `man`, into this directory or to stdout.
    Man(Option<PathBuf>),
    /// `cleanup` of this pin directory.
    Cleanup(PathBuf),
}

impl Command {
    /// The command's configuration.
    ///
    /// # Errors
    /// When its arguments do not combine (each message names the fix).
    pub fn job(&self) -> Result<Job, clap::Error> {
        Ok(match self {
            Self::Run(args) => Job::Run(Box::new(args.config()?)),
            Self::Plan(args) => Job::Plan(args.config()),
            Self::Inspect(args) => Job::Inspect(args.config()),
            Self::Status(args) => Job::Status(args.config()?),
            Self::Monitor(args) => Job::Monitor(args.config()),
            Self::Completions { shell } => Job::Completions(*shell),
            Self::Man { out_dir } => Job::Man(out_dir.clone()),
            Self::Cleanup { pin_path } => Job::Cleanup(pin_path.clone()),
        })
    }
}

impl Job {
    /// Runs the command.
    ///
    /// # Errors
    /// Whatever the command fails with.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Run(config) => {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(run::run(*config))
            }
            Self::Plan(config) => plan::execute(&config),
            Self::Inspect(config) => inspect::execute(&config),
            Self::Status(config) => status::execute(&config),
            Self::Monitor(config) => monitor::execute(&config),
            Self::Completions(shell) => Ok(std::io::Write::write_all(&mut std::io::stdout(), &completions(shell))?),
            Self::Man(None) => Ok(std::io::Write::write_all(&mut std::io::stdout(), &man_page()?)?),
            Self::Man(Some(dir)) => {
                for page in man_pages(&dir).with_context(|| format!("writing the man pages into {}", dir.display()))? {
                    println!("{}", page.display());
                }
                Ok(())
            }
            Self::Cleanup(pin_path) => ebpf::cleanup(&pin_path),
        }
    }
}

/// Parses the process's arguments and runs the command. Arguments that do
/// not parse or combine end the process with clap's usage error (exit code
/// 2) before anything is done.
///
/// # Errors
/// Whatever the command fails with.
pub fn main() -> Result<()> {
    Cli::parse().command.job().unwrap_or_else(|e| e.exit()).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--socket-lb`, `--cgroup-path`, what discovery finds, and the outcome
    /// (attach there, off with or without a note, or an error containing).
    type Case = (Option<bool>, Option<&'static str>, fn() -> DefaultCgroup, Result<SocketLb, &'static str>);

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["mcs-agent", "run", "--interfaces", "veth*", "--cluster-id", "c1"].iter().chain(args),
        )?;
        let Command::Run(run) = cli.command else { panic!("parsed {args:?} as another command") };
        Ok(*run)
    }

    #[test]
    fn manifests_alone_select_the_file_source() {
        let run = run_args(&["--manifests", "/m"]).expect("parses");
        assert_eq!(run.source_kind(), SourceKind::File);
        let config = run.config().expect("combines");
        assert!(matches!(config.source, SourceConfig::File { ref dir, .. } if dir == std::path::Path::new("/m")));
        let run = run_args(&[]).expect("parses");
        assert_eq!(run.source_kind(), SourceKind::Kubernetes);
        assert!(matches!(run.config().expect("combines").source, SourceConfig::Kubernetes { kubeconfig: None }));
    }

    #[test]
    fn socket_lb_attaches_to_the_node_root_or_says_why_not() {
        let root = || DefaultCgroup::Root(PathBuf::from("/sys/fs/cgroup/unified"));
        let namespaced = || DefaultCgroup::Namespaced(PathBuf::from("/sys/fs/cgroup"));
        let missing = || DefaultCgroup::Missing;
        let on = |p: &str| Ok(SocketLb::On { cgroup: PathBuf::from(p) });
        // (--socket-lb, --cgroup-path, what discovery finds) → attach here, off (with a note?), or an error containing.
        let cases: [Case; 9] = [
            (None, None, root, on("/sys/fs/cgroup/unified")),
            (Some(true), None, root, on("/sys/fs/cgroup/unified")),
            (None, Some("/run/mcs/cgroupv2"), namespaced, on("/run/mcs/cgroupv2")),
            (Some(true), Some("/x"), missing, on("/x")),
            (Some(false), Some("/x"), root, Ok(SocketLb::Off { note: None })),
            (None, None, namespaced, Ok(SocketLb::Off { note: Some(String::new()) })),
            (None, None, missing, Ok(SocketLb::Off { note: Some(String::new()) })),
            (Some(true), None, namespaced, Err("pass --cgroup-path")),
            (Some(true), None, missing, Err("--socket-lb=false")),
        ];
        for (enabled, path, discover, expected) in cases {
            let got = socket_lb_cgroup(enabled, path.map(Path::new), discover);
            let case = format!("--socket-lb {enabled:?} --cgroup-path {path:?}");
            match (got, expected) {
                (Ok(SocketLb::Off { note: Some(note) }), Ok(SocketLb::Off { note: Some(_) })) => {
                    assert!(note.contains("--cgroup-path") || note.contains("cgroup2"), "{case}: {note}");
                }
                (Err(e), Err(fix)) => assert!(e.contains(fix), "{case}: {e}"),
                (got, expected) => assert_eq!(got, expected.map_err(str::to_owned), "{case}"),
            }
        }
        let run = run_args(&["--socket-lb=false"]).expect("parses");
        assert_eq!(run.config().expect("combines").socket_lb, SocketLb::Off { note: None });
        let run = run_args(&["--socket-lb", "--cgroup-path", "/c"]).expect("a bare --socket-lb means true");
        assert_eq!(run.config().expect("combines").socket_lb, SocketLb::On { cgroup: PathBuf::from("/c") });
    }

    #[test]
    fn invalid_combinations_are_usage_errors_that_name_the_fix() {
        let cases: [(&[&str], &str); 4] = [
            (&["--source", "file"], "--source file needs --manifests DIR"),
            (&["--source", "kubernetes", "--manifests", "/m"], "drop --source kubernetes, or --manifests"),
            (&["--source", "file", "--manifests", "/m", "--kubeconfig", "/k"], "cannot be used with"),
            (&["--metrics-addr", "nowhere"], "--metrics-addr \"nowhere\" is not an address:port"),
        ];
        for (args, fix) in cases {
            let error = run_args(args).and_then(|run| run.config()).expect_err("an invalid combination");
            let text = error.to_string();
            assert!(text.contains(fix), "{args:?}: {text}");
            assert_eq!(error.exit_code(), 2, "{args:?}: a usage error");
        }
        let error = run_args(&["--interfaces", "pod[0-9"]).and_then(|run| run.config()).expect_err("a bad pattern");
        assert!(error.to_string().contains("--interfaces"), "{error}");
    }
}
