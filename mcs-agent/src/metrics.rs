//! The agent's HTTP endpoint (hyper): `/metrics` (`OpenMetrics` text, written
//! by `prometheus-client`), `/healthz` (the process is alive) and `/readyz`
//! (the datapath is loaded, every source has synced and the first sync is
//! done).
//!
//! The run loop records what it did in [`Metrics`]; a collector reads that
//! record, and the datapath's per-CPU counters `MCS_DROPS` and `MCS_STATS`
//! (summed over CPUs), at each scrape. Metric names are documented in
//! `docs/metrics.md`. The same record, with the attached interfaces and the
//! drops of the last minute, is served as JSON on `/status` ([`AgentStatus`],
//! what `mcs-agent status` shows).
use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use mcs_common::{DropReason, ServiceKey, Stat};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::{
    dataplane::DatapathCounters,
    source::health::ApiHealth,
    translate::{DesiredServicePort, DesiredState, Report, ServicePortKey},
};

/// The result of one sync, as counted in `mcs_syncs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncResult {
    /// Everything was written.
    Success,
    /// Some service ports could not be written.
    Partial,
    /// The sync failed as a whole.
    Error,
}

impl SyncResult {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Partial => "partial",
            Self::Error => "error",
        }
    }
}

/// What the run loop reports.
#[derive(Debug, Default)]
struct State {
    datapath_loaded: bool,
    sources_synced: bool,
    first_sync_done: bool,
    syncs: BTreeMap<SyncResult, u64>,
    /// Audit rounds that ended without drift, and drifts the audit found.
    audit_rounds: u64,
    audit_drifts: u64,
    last_sync_seconds: f64,
    last_success_unix: f64,
    service_ports: usize,
    backends: usize,
    draining: usize,
    interfaces: usize,
    /// The attached interfaces by name, with their ifindex.
    attached: BTreeMap<String, u32>,
    /// How the programs are attached (`tcx`, `clsact`).
    attach_mode: Option<&'static str>,
    /// The uplinks the XDP gateway is attached to, with its mode.
    xdp: BTreeMap<String, &'static str>,
    /// The cgroup the socket programs are attached to, when socket load balancing is on.
    socket_cgroup: Option<String>,
    /// What the last sync could not write (empty after a complete one).
    sync_errors: Vec<String>,
    source_problems: usize,
    /// The source's API server (none for the file source).
    source_api: Option<ApiHealth>,
    skipped: Vec<[String; 3]>,
    excluded: Vec<[String; 4]>,
    /// The import (namespace, name) of each service port desired.
    imports: BTreeMap<ServiceKey, (String, String)>,
    /// Drop counters (in [`DropReason::ALL`] order) sampled over the last
    /// [`DROP_WINDOW`], oldest first.
    drop_samples: VecDeque<(Instant, Vec<u64>)>,
}

/// The span of `/status`'s `recentDrops`.
pub const DROP_WINDOW: Duration = Duration::from_mins(1);

/// What the run loop recorded, and the datapath's counters.
#[derive(Default)]
struct Recorded {
    state: Mutex<State>,
    counters: Mutex<Option<DatapathCounters>>,
}

impl Recorded {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Shared between the run loop and the HTTP server: the record, and the
/// registry whose collector reads it at each scrape.
pub struct Metrics {
    recorded: Arc<Recorded>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let recorded = Arc::new(Recorded::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(Arc::clone(&recorded))));
        Self { recorded, registry }
    }
}

impl Metrics {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.recorded.state()
    }

    /// Takes the counter maps out of the loaded object and marks the datapath
    /// loaded.
    ///
    /// # Errors
    /// When a map is missing or of another type.
    pub fn set_datapath(&self, bpf: &mut Ebpf, pin_path: &std::path::Path) -> Result<()> {
        let counters = DatapathCounters::from_ebpf(bpf)?.with_service_maps(pin_path)?;
        *self.recorded.counters.lock().unwrap_or_else(PoisonError::into_inner) = Some(counters);
        self.state().datapath_loaded = true;
        // The baseline of the drops of the first minute.
        self.sample_drops();
        Ok(())
    }

    /// Records whether every source has synced.
    pub fn set_sources_synced(&self, synced: bool) {
        self.state().sources_synced = synced;
    }

    /// Records how the source's connection to the API server is doing.
    pub fn set_source_api(&self, api: Option<ApiHealth>) {
        self.state().source_api = api;
    }

    /// Records the attached interfaces (name to ifindex) and how they are attached.
    pub fn set_interfaces(&self, attached: &BTreeMap<String, u32>, mode: &'static str) {
        let mut state = self.state();
        state.interfaces = attached.len();
        state.attached.clone_from(attached);
        state.attach_mode = Some(mode);
    }

    /// Records the uplinks the XDP gateway is attached to, with their mode.
    pub fn set_xdp_interfaces(&self, attached: &BTreeMap<String, crate::ebpf::XdpAttach>) {
        self.state().xdp = attached.iter().map(|(name, mode)| (name.clone(), mode.as_str())).collect();
    }

    /// Records the cgroup the socket programs are attached to (`None`: socket load balancing off).
    pub fn set_socket_cgroup(&self, cgroup: Option<&std::path::Path>) {
        self.state().socket_cgroup = cgroup.map(|c| c.display().to_string());
    }

    /// Records what the last sync could not write (nothing after a complete one).
    pub fn set_sync_errors(&self, errors: Vec<String>) {
        self.state().sync_errors = errors;
    }

    /// Reads the drop counters and keeps the sample, with the older ones
    /// back to [`DROP_WINDOW`] ago (the newest sample at least that old is
    /// the baseline of `recentDrops`). The run loop calls it every few
    /// seconds; does nothing before the datapath is loaded.
    pub fn sample_drops(&self) {
        let Some(totals) = self.drop_totals() else { return };
        let now = Instant::now();
        let mut state = self.state();
        state.drop_samples.push_back((now, totals));
        while state.drop_samples.get(1).is_some_and(|(t, _)| now.duration_since(*t) >= DROP_WINDOW) {
            state.drop_samples.pop_front();
        }
    }

    fn drop_totals(&self) -> Option<Vec<u64>> {
        let counters = self.recorded.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters.as_ref().map(|c| DropReason::ALL.iter().map(|r| or_zero(c.drops(*r))).collect())
    }

    /// What `/status` answers, read now.
    #[must_use]
    pub fn status(&self) -> AgentStatus {
        let totals = self.drop_totals();
        let not_ready = self.not_ready();
        let s = self.state();
        let (drops_window_seconds, recent_drops) = match (s.drop_samples.front(), totals) {
            (Some((since, base)), Some(now)) => (
                (since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                Some(
                    DropReason::ALL
                        .iter()
                        .zip(now.iter().zip(base))
                        .map(|(r, (n, b))| (r.name().to_owned(), n.wrapping_sub(*b)))
                        .collect(),
                ),
            ),
            _ => (0.0, None),
        };
        AgentStatus {
            ready: not_ready.is_none(),
            not_ready,
            datapath_loaded: s.datapath_loaded,
            sources_synced: s.sources_synced,
            source_problems: s.source_problems,
            source_api: s.source_api.clone(),
            syncs: [SyncResult::Success, SyncResult::Partial, SyncResult::Error]
                .into_iter()
                .map(|r| (r.as_str().to_owned(), s.syncs.get(&r).copied().unwrap_or(0)))
                .collect(),
            last_sync_duration_seconds: s.last_sync_seconds,
            last_success_unix_seconds: (s.last_success_unix > 0.0).then_some(s.last_success_unix),
            sync_errors: s.sync_errors.clone(),
            service_ports: s.service_ports,
            backends: s.backends,
            draining: s.draining,
            attach_mode: s.attach_mode.map(str::to_owned),
            socket_cgroup: s.socket_cgroup.clone(),
            interfaces: s
                .attached
                .iter()
                .map(|(name, index)| AttachedInterface { name: name.clone(), ifindex: *index })
                .collect(),
            xdp_interfaces: s
                .xdp
                .iter()
                .map(|(name, mode)| XdpInterface { name: name.clone(), mode: (*mode).to_owned() })
                .collect(),
            skipped_imports: s
                .skipped
                .iter()
                .map(|[namespace, name, reason]| SkippedImport {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            excluded_clusters: s.excluded.len(),
            drops_window_seconds,
            recent_drops,
        }
    }

    /// Records the objects the source could not read.
    pub fn set_source_problems(&self, problems: usize) {
        self.state().source_problems = problems;
    }

    /// Records a translation: what is programmed, skipped and excluded.
    pub fn set_translation(&self, desired: &DesiredState, report: &Report) {
        self.update_translation(desired, report, None);
    }

    /// Takes a translation of which only the ports in `changed` differ
    /// from the last one taken (all of them when `None`).
    pub fn update_translation(
        &self,
        desired: &DesiredState,
        report: &Report,
        changed: Option<&std::collections::BTreeSet<ServicePortKey>>,
    ) {
        let mut state = self.state();
        state.service_ports = desired.services.len();
        state.backends = desired.services.values().map(|p| p.backends.len()).sum();
        state.draining = desired.services.values().map(|p| p.draining.len()).sum();
        let names = |p: &DesiredServicePort| (p.namespace.clone(), p.name.clone());
        let entry = |k: &ServicePortKey| ServiceKey::new(k.ip, k.port, k.protocol.number());
        match changed {
            None => state.imports = desired.services.iter().map(|(k, p)| (entry(k), names(p))).collect(),
            Some(changed) => {
                for key in changed {
                    match desired.services.get(key) {
                        Some(port) => state.imports.insert(entry(key), names(port)),
                        None => state.imports.remove(&entry(key)),
                    };
                }
            }
        }
        state.skipped = report
            .skipped
            .iter()
            .map(|s| [s.namespace.clone(), s.name.clone(), s.reason.as_str().to_owned()])
            .collect();
        state.excluded = report
            .excluded_clusters
            .iter()
            .map(|e| [e.namespace.clone(), e.name.clone(), e.cluster.clone(), e.reason.as_str().to_owned()])
            .collect();
    }

    /// Records the end of an audit round (`drift`: the round found a drift).
    pub fn record_audit(&self, drift: bool) {
        let mut state = self.state();
        if drift {
            state.audit_drifts += 1;
        } else {
            state.audit_rounds += 1;
        }
    }

    /// Records one sync.
    pub fn record_sync(&self, result: SyncResult, duration: Duration) {
        let mut state = self.state();
        *state.syncs.entry(result).or_default() += 1;
        state.last_sync_seconds = duration.as_secs_f64();
        if result != SyncResult::Error {
            state.first_sync_done = true;
            state.last_success_unix =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        }
    }

    /// Why the agent is not ready, or `None` when it is.
    #[must_use]
    pub fn not_ready(&self) -> Option<String> {
        let state = self.state();
        let mut missing = Vec::new();
        if !state.datapath_loaded {
            missing.push("datapath not loaded");
        }
        if !state.sources_synced {
            missing.push("sources not synced");
        }
        if !state.first_sync_done {
            missing.push("first sync not done");
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// The `OpenMetrics` text exposition, read now.
    ///
    /// # Panics
    /// Never: writing into a `String` does not fail.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("encoding into a String does not fail");
        out
    }
}

/// What `/status` answers: the run loop's record (the same the metrics
/// are made of), in the JSON `mcs-agent status` reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// What is missing when not ready.
    pub not_ready: Option<String>,
    /// The programs are loaded and the maps open.
    pub datapath_loaded: bool,
    /// Every source has completed its first list.
    pub sources_synced: bool,
    /// Objects the source could not read.
    pub source_problems: usize,
    /// How the source's connection to the API server is doing (none for the
    /// file source).
    #[serde(default)]
    pub source_api: Option<ApiHealth>,
    /// Syncs by result (`success`, `partial`, `error`).
    pub syncs: BTreeMap<String, u64>,
    /// Duration of the last sync.
    pub last_sync_duration_seconds: f64,
    /// Unix time of the last sync that was not an error.
    pub last_success_unix_seconds: Option<f64>,
    /// What the last sync could not write.
    pub sync_errors: Vec<String>,
    /// Service ports desired.
    pub service_ports: usize,
    /// Backends new connections may use.
    pub backends: usize,
    /// Terminating backends kept for established connections.
    pub draining: usize,
    /// `tcx` or `clsact`; `None` before the datapath is loaded.
    pub attach_mode: Option<String>,
    /// The interfaces the programs are attached to.
    pub interfaces: Vec<AttachedInterface>,
    /// The uplinks the XDP gateway is attached to.
    #[serde(default)]
    pub xdp_interfaces: Vec<XdpInterface>,
    /// The cgroup v2 directory the socket programs are attached to; `None`
    /// when socket load balancing is off.
    pub socket_cgroup: Option<String>,
    /// Imports the translation skipped.
    pub skipped_imports: Vec<SkippedImport>,
    /// Exporting clusters left out of imports (by the cap).
    pub excluded_clusters: usize,
    /// The span `recentDrops` covers: up to a minute (less while the agent is younger).
    pub drops_window_seconds: f64,
    /// Drops by reason over that span; `None` before the datapath is loaded.
    pub recent_drops: Option<BTreeMap<String, u64>>,
}

/// An interface the programs are attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedInterface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub ifindex: u32,
}

/// An uplink the XDP gateway is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XdpInterface {
    /// Its name.
    pub name: String,
    /// `xdp-native`, `xdp-generic`, or `xdp` (a pinned link of an earlier agent, swapped).
    pub mode: String,
}

/// An import the translation skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedImport {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Why (`headless`, `no-ips`, `invalid`).
    pub reason: String,
}

/// The collector: reads the record and the counters at each scrape.
struct Scrape(Arc<Recorded>);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help): (&str, &str),
    value: N,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// The syncs' and the audit's counters, and the last sync's times.
fn encode_syncs(encoder: &mut DescriptorEncoder<'_>, s: &State) -> fmt::Result {
    let mut syncs =
        encoder.encode_descriptor("mcs_syncs", "Syncs of the maps, by result.", None, MetricType::Counter)?;
    for result in [SyncResult::Success, SyncResult::Partial, SyncResult::Error] {
        let count = ConstCounter::new(s.syncs.get(&result).copied().unwrap_or(0));
        count.encode(syncs.encode_family(&[("result", result.as_str())])?)?;
    }
    let rounds = "Audit rounds of the maps (the periodic resync, in parts) that found nothing drifted.";
    counter(encoder, ("mcs_audit_rounds", rounds), s.audit_rounds)?;
    let drifts = "Times the audit found the maps differing from what the agent wrote (the next sync is full).";
    counter(encoder, ("mcs_audit_drifts", drifts), s.audit_drifts)?;
    let duration = ("mcs_sync_last_duration_seconds", "Duration of the last sync (translation and map writes).");
    gauge(encoder, duration, s.last_sync_seconds)?;
    let success = ("mcs_sync_last_success_timestamp_seconds", "Unix time of the last sync that was not an error.");
    gauge(encoder, success, s.last_success_unix)?;
    Ok(())
}

/// One counter without labels.
fn counter(encoder: &mut DescriptorEncoder<'_>, (name, help): (&str, &str), value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// The source's API server state (`mcs_source_api_up`, the watches' errors
/// and last events).
fn encode_api(encoder: &mut DescriptorEncoder<'_>, api: &ApiHealth) -> fmt::Result {
    let help = "1 when the last request to the API server (a watch event or list, or discovery) succeeded.";
    gauge(encoder, ("mcs_source_api_up", help), u32::from(api.up))?;
    let help = "Errors of the source's watches and discovery (failed requests, cut streams), by resource.";
    let mut errors = encoder.encode_descriptor("mcs_source_watch_errors", help, None, MetricType::Counter)?;
    for (resource, w) in &api.watches {
        ConstCounter::new(w.errors).encode(errors.encode_family(&[("resource", resource.as_str())])?)?;
    }
    let help = "Unix time a watch (or discovery) last heard from the API server, by resource.";
    let name = "mcs_source_watch_last_event_timestamp_seconds";
    let mut last = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (resource, w) in &api.watches {
        let labels = [("resource", resource.as_str())];
        ConstGauge::new(w.last_event_unix).encode(last.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `mcs_xdp_interfaces_attached{interface, mode}`: one per uplink of the XDP gateway.
fn encode_xdp_interfaces(encoder: &mut DescriptorEncoder<'_>, xdp: &BTreeMap<String, &'static str>) -> fmt::Result {
    let help =
        "Uplinks the XDP gateway is attached to, by mode (xdp-native, xdp-generic, xdp: swapped into a pinned link).";
    let mut family = encoder.encode_descriptor("mcs_xdp_interfaces_attached", help, None, MetricType::Gauge)?;
    for (name, mode) in xdp {
        ConstGauge::new(1_u32).encode(family.encode_family(&[("interface", name.as_str()), ("mode", mode)])?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        {
            let s = self.0.state();
            let ready = u32::from(s.datapath_loaded && s.sources_synced && s.first_sync_done);
            gauge(&mut encoder, ("mcs_agent_ready", "1 when the agent is ready (see /readyz)."), ready)?;
            let synced = ("mcs_sources_synced", "1 when every source has completed its first list.");
            gauge(&mut encoder, synced, u32::from(s.sources_synced))?;
            let problems = ("mcs_source_problems", "Objects the source could not read (malformed), skipped.");
            gauge(&mut encoder, problems, s.source_problems)?;
            if let Some(api) = &s.source_api {
                encode_api(&mut encoder, api)?;
            }
            encode_syncs(&mut encoder, &s)?;
            let ports = ("mcs_service_ports", "Service ports (ClusterSetIP, port, protocol) desired.");
            gauge(&mut encoder, ports, s.service_ports)?;
            let backends = ("mcs_backends", "Backends new connections may use, summed over service ports.");
            gauge(&mut encoder, backends, s.backends)?;
            let draining = (
                "mcs_backends_draining",
                "Terminating backends kept for established connections, summed over service ports.",
            );
            gauge(&mut encoder, draining, s.draining)?;
            let interfaces = ("mcs_interfaces_attached", "Interfaces the datapath is attached to.");
            gauge(&mut encoder, interfaces, s.interfaces)?;
            encode_xdp_interfaces(&mut encoder, &s.xdp)?;
            let help = "ServiceImports skipped by the translation, by reason.";
            let mut skipped = encoder.encode_descriptor("mcs_skipped_imports", help, None, MetricType::Gauge)?;
            for [namespace, name, reason] in &s.skipped {
                let labels = [("namespace", namespace.as_str()), ("name", name), ("reason", reason)];
                ConstGauge::new(1_u32).encode(skipped.encode_family(&labels)?)?;
            }
            let help = "Exporting clusters left out of an import, by reason.";
            let mut excluded = encoder.encode_descriptor("mcs_excluded_clusters", help, None, MetricType::Gauge)?;
            for [namespace, name, cluster, reason] in &s.excluded {
                let labels =
                    [("namespace", namespace.as_str()), ("name", name), ("cluster", cluster), ("reason", reason)];
                ConstGauge::new(1_u32).encode(excluded.encode_family(&labels)?)?;
            }
        }
        if let Some(counters) = self.0.counters.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let help = "Packets the datapath dropped, by reason.";
            let mut drops = encoder.encode_descriptor("mcs_datapath_drops", help, None, MetricType::Counter)?;
            for reason in DropReason::ALL {
                let count = ConstCounter::new(or_zero(counters.drops(reason)));
                count.encode(drops.encode_family(&[("reason", reason.name())])?)?;
            }
            let help = "Packets the datapath translated, by kind.";
            let mut packets = encoder.encode_descriptor("mcs_datapath_packets", help, None, MetricType::Counter)?;
            for stat in Stat::ALL {
                let count = ConstCounter::new(or_zero(counters.stat(stat)));
                count.encode(packets.encode_family(&[("kind", stat.name())])?)?;
            }
            let rows = counters.per_service().unwrap_or_else(|e| {
                debug!(error = %format!("{e:#}"), "reading the per-service counters failed");
                Vec::new()
            });
            let labelled: Vec<_> = {
                let state = self.0.state();
                rows.iter()
                    .map(|(key, stats)| {
                        let (namespace, name) = state.imports.get(key).cloned().unwrap_or_default();
                        ([namespace, name, key.to_string()], stats)
                    })
                    .collect()
            };
            let labels =
                |l: &[String; 3]| [("namespace", l[0].clone()), ("name", l[1].clone()), ("service", l[2].clone())];
            let help = "Events of one service port: packets translated by the tc programs, new flows, refused \
                        packets, and connect()/sendmsg() calls translated or refused by the socket programs.";
            let mut events = encoder.encode_descriptor("mcs_service_events", help, None, MetricType::Counter)?;
            for (l, s) in &labelled {
                for (event, value) in [
                    ("packets", s.packets),
                    ("new-flows", s.new_flows),
                    ("rejected", s.rejected),
                    ("socket-translated", s.socket_translated),
                    ("socket-refused", s.socket_refused),
                ] {
                    let [a, b, c] = labels(l);
                    let family = [a, b, c, ("event", event.to_owned())];
                    ConstCounter::new(value).encode(events.encode_family(&family)?)?;
                }
            }
            let help = "Bytes of the packets the tc programs translated for one service port (whole frames).";
            let mut bytes = encoder.encode_descriptor("mcs_service_bytes", help, None, MetricType::Counter)?;
            for (l, s) in &labelled {
                ConstCounter::new(s.bytes).encode(bytes.encode_family(&labels(l))?)?;
            }
        }
        Ok(())
    }
}

/// A counter's value, or 0 (logged) when it cannot be read: one unreadable
/// counter does not spoil the scrape.
fn or_zero(value: Result<u64>) -> u64 {
    value.unwrap_or_else(|e| {
        debug!(error = %format!("{e:#}"), "reading a counter failed");
        0
    })
}

/// Binds `addr` and serves the endpoints in a background task.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the metrics server to {addr}"))?;
    let local = listener.local_addr()?;
    info!(addr = %local, "serving /metrics, /status, /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        let service = service_fn(|request| {
                            let response = respond(&metrics, &request);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        // One request per connection, as scrapers and probes make them.
                        let connection = http1::Builder::new()
                            .keep_alive(false)
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(5))
                            .serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = connection.await {
                            debug!(error = %e, "metrics connection failed");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(local)
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The answer to one request (hyper leaves out the body of a HEAD answer).
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, OPENMETRICS, metrics.render()),
        (&Method::GET | &Method::HEAD, "/status") => {
            let body = serde_json::to_string(&metrics.status()).expect("a status always serializes");
            (StatusCode::OK, JSON, body)
        }
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        (&Method::GET | &Method::HEAD, "/readyz") => match metrics.not_ready() {
            None => (StatusCode::OK, TEXT, "ready\n".to_owned()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {why}\n")),
        },
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;
    use crate::translate::{ExcludedCluster, ExclusionReason};

    #[test]
    fn renders_labels_escaped_and_counts_syncs() {
        let metrics = Metrics::default();
        let report = Report {
            excluded_clusters: vec![ExcludedCluster {
                namespace: "demo".into(),
                name: "we\"b".into(),
                cluster: "c6".into(),
                reason: ExclusionReason::ExporterCap,
            }],
            ..Report::default()
        };
        metrics.set_translation(&DesiredState::default(), &report);
        metrics.record_sync(SyncResult::Success, Duration::from_millis(3));
        metrics.record_sync(SyncResult::Error, Duration::from_millis(1));
        let text = metrics.render();
        assert!(text.contains("mcs_syncs_total{result=\"success\"} 1\n"), "{text}");
        assert!(text.contains("mcs_syncs_total{result=\"error\"} 1\n"), "{text}");
        assert!(text.contains("mcs_syncs_total{result=\"partial\"} 0\n"), "{text}");
        metrics.record_audit(false);
        metrics.record_audit(true);
        metrics.record_audit(false);
        let text = metrics.render();
        assert!(text.contains("mcs_audit_rounds_total 2\n") && text.contains("mcs_audit_drifts_total 1\n"), "{text}");
        assert!(
            text.contains(
                "mcs_excluded_clusters{namespace=\"demo\",name=\"we\\\"b\",cluster=\"c6\",reason=\"exporter-cap\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("mcs_sync_last_duration_seconds 0.001\n"), "{text}");
        // Every sample line belongs to a declared metric (OpenMetrics names a
        // counter's family without the `_total` of its samples).
        let declared: Vec<(&str, &str)> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')).collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().expect("a name");
            let family = declared.iter().find(|(family, kind)| {
                *family == name || (*kind == "counter" && name.strip_suffix("_total") == Some(family))
            });
            assert!(family.is_some(), "{line} has no TYPE line");
        }
    }

    /// Ports added (with their import's name), then ports removed.
    type Step = (Vec<(ServicePortKey, &'static str)>, Vec<ServicePortKey>);

    #[test]
    fn a_translation_taken_port_by_port_renders_as_one_taken_whole() {
        use std::net::Ipv4Addr;

        use crate::translate::{DesiredServicePort, Protocol};
        let key =
            |last: u8, port: u16| ServicePortKey { ip: Ipv4Addr::new(198, 19, 0, last), port, protocol: Protocol::Tcp };
        let port = |name: &str| DesiredServicePort {
            namespace: "demo".into(),
            name: name.into(),
            port_name: "http".into(),
            session_affinity_timeout: None,
            backends: Vec::new(),
            draining: Vec::new(),
        };
        let updated = Metrics::default();
        let mut desired = DesiredState::default();
        // Each step: ports added (with their import's name), then ports removed.
        let steps: [Step; 3] = [
            (vec![(key(1, 80), "a"), (key(2, 80), "b"), (key(2, 81), "b")], vec![]),
            (vec![(key(1, 80), "a2")], vec![key(2, 81)]),
            (vec![(key(3, 80), "c")], vec![key(2, 80)]),
        ];
        for (i, (added, removed)) in steps.into_iter().enumerate() {
            let mut changed = std::collections::BTreeSet::new();
            for (k, name) in &added {
                desired.services.insert(*k, port(name));
                changed.insert(*k);
            }
            for k in &removed {
                desired.services.remove(k);
                changed.insert(*k);
            }
            updated.update_translation(&desired, &Report::default(), Some(&changed));
            let whole = Metrics::default();
            whole.set_translation(&desired, &Report::default());
            assert_eq!(updated.state().imports, whole.state().imports, "step {i}");
            assert_eq!(updated.render(), whole.render(), "step {i}");
        }
    }

    #[test]
    fn readiness_needs_datapath_sources_and_a_sync() {
        let metrics = Metrics::default();
        assert_eq!(
            metrics.not_ready().as_deref(),
            Some("datapath not loaded, sources not synced, first sync not done")
        );
        metrics.recorded.state().datapath_loaded = true;
        metrics.set_sources_synced(true);
        metrics.record_sync(SyncResult::Error, Duration::ZERO);
        assert_eq!(metrics.not_ready().as_deref(), Some("first sync not done"));
        metrics.record_sync(SyncResult::Partial, Duration::ZERO);
        assert_eq!(metrics.not_ready(), None);
    }

    #[tokio::test]
    async fn serves_the_endpoints() {
        let metrics = Arc::new(Metrics::default());
        let addr = serve(([127, 0, 0, 1], 0).into(), Arc::clone(&metrics)).await.expect("bind");
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            response
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200 OK"));
        let ready = get("/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        let body = get("/metrics").await;
        assert!(body.contains("mcs_agent_ready 0"), "{body}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    }
}
