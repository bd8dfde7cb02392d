//! `mcs-agent inspect`: what a running agent's pinned maps hold.
//!
//! It reads the maps (never writes them) into a [`Snapshot`] and renders it
//! as JSON or as a table: every service port with its backends (cluster,
//! state, share of the Maglev table) and counters, the drop and event
//! counters, and with `--conntrack` every tracked flow.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData};
use mcs_common::{
    BACKEND_F_REMOVED, BACKEND_F_TERMINATING, Backend, CT_DIR_FORWARD, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
    CT_STATE_SYN, CtKey, CtValue, DatapathConfig, DropReason, GUARD_F_SOURCE_FIB, NS_PER_SEC, SERVICE_F_FALLBACK,
    SOCKET_F_HOST_ONLY, ServiceKey, ServiceStats, ServiceValue, Stat, ct_state, ipv4_from_nbo, map_names, proto,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    dataplane::{AyaDataplane, DatapathCounters, Dataplane as _, open_pinned},
    output::OutputFormat,
    translate::Protocol,
};

/// The configuration of `mcs-agent inspect`.
#[derive(Clone, Debug)]
pub struct InspectConfig {
    /// Directory on bpffs where the agent pinned its maps.
    pub pin_path: PathBuf,
    /// Whether the tracked connections are listed too.
    pub conntrack: bool,
    /// How the result is printed.
    pub output: OutputFormat,
}

/// Everything `inspect` shows, read from the maps.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The settings the programs were loaded with.
    pub config: Option<DatapathConfig>,
    /// Service entries, wildcards included.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// Backends by id.
    pub backends: BTreeMap<u32, Backend>,
    /// Cluster names by id.
    pub clusters: BTreeMap<u32, String>,
    /// Maglev tables by service id.
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// Per-service counters, summed over CPUs.
    pub service_stats: BTreeMap<u32, ServiceStats>,
    /// Drop counters by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// Event counters.
    pub stats: BTreeMap<Stat, u64>,
    /// Conntrack entries, when asked for.
    pub conntrack: Option<Vec<(CtKey, CtValue)>>,
    /// `CLOCK_MONOTONIC` when the snapshot was taken, in ns (the clock of the entries).
    pub now_ns: u64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * NS_PER_SEC + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl Snapshot {
    /// Reads the maps pinned under `dir`.
    ///
    /// # Errors
    /// When a pin is missing (is the agent running with this `--pin-path`?)
    /// or a map cannot be read.
    pub fn from_pins(dir: &Path, with_conntrack: bool) -> Result<Self> {
        let now_ns = monotonic_ns();
        let dp = AyaDataplane::from_pins(dir)?;
        let services: BTreeMap<ServiceKey, ServiceValue> = dp.services()?.into_iter().collect();
        let mut tables = BTreeMap::new();
        for value in services.iter().filter(|(k, v)| !k.is_wildcard() && v.table_size != 0).map(|(_, v)| v) {
            tables.insert(value.service_id, dp.slots(value.table_start, value.table_size)?);
        }
        let counters = DatapathCounters::from_pins(dir)?;
        let mut snapshot = Self {
            config: Some(dp.config()),
            services,
            backends: dp.backends()?.into_iter().collect(),
            clusters: dp
                .cluster_names()?
                .into_iter()
                .map(|(id, name)| (id, name.as_str().unwrap_or("<not utf-8>").to_owned()))
                .collect(),
            tables,
            service_stats: dp.all_service_stats()?.into_iter().collect(),
            drops: DropReason::ALL.iter().map(|r| Ok((*r, counters.drops(*r)?))).collect::<Result<_>>()?,
            stats: Stat::ALL.iter().map(|st| Ok((*st, counters.stat(*st)?))).collect::<Result<_>>()?,
            conntrack: None,
            now_ns,
        };
        if with_conntrack {
            let mut entries = Vec::new();
            for name in [map_names::CONNTRACK_TCP, map_names::CONNTRACK_ANY] {
                let ct: HashMap<MapData, CtKey, CtValue> = open_pinned(dir, name)?.try_into()?;
                // An LRU map changes while it is walked: skip what vanished.
                entries.extend(ct.iter().filter_map(Result::ok));
            }
            snapshot.conntrack = Some(entries);
        }
        Ok(snapshot)
    }
}

fn protocol_name(number: u8) -> String {
    Protocol::from_number(number).map_or_else(|| number.to_string(), |p| p.as_str().to_owned())
}

fn endpoint(addr: u32, port: u16) -> String {
    format!("{}:{}", ipv4_from_nbo(addr), u16::from_be(port))
}

fn state_name(state: u8, protocol: u8) -> &'static str {
    match (state, protocol) {
        (CT_STATE_SYN, _) => "syn",
        (CT_STATE_ESTABLISHED, _) => "established",
        (CT_STATE_CLOSING, _) => "closing",
        (_, proto::UDP) => "udp",
        _ => "unknown",
    }
}

#[expect(clippy::cast_precision_loss, reason = "display only")]
fn seconds(ns: u64) -> f64 {
    (ns as f64 / NS_PER_SEC as f64 * 10.0).round() / 10.0
}

/// What `inspect` shows: the form both the JSON (with these field names,
/// documented in docs/datapath.md) and the table are made from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// The settings the programs were loaded with.
    pub config: Option<ConfigView>,
    /// Every service port (wildcards left out), in key order.
    pub services: Vec<ServiceView>,
    /// Drop counters by reason name.
    pub drops: BTreeMap<String, u64>,
    /// Event counters by name.
    pub stats: BTreeMap<String, u64>,
    /// The tracked flows (forward entries), when asked for.
    pub conntrack: Option<Vec<FlowView>>,
}

/// The datapath's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    /// Idle timeout of a TCP flow that has only sent its SYN.
    pub tcp_syn_timeout_seconds: u64,
    /// Idle timeout of an established TCP flow.
    pub tcp_established_timeout_seconds: u64,
    /// Idle timeout of a closing TCP flow.
    pub tcp_closing_timeout_seconds: u64,
    /// Idle timeout of a UDP flow.
    pub udp_timeout_seconds: u64,
    /// The hairpin source address; `None` when hairpin is off.
    pub hairpin_ip: Option<String>,
    /// Slots of each Maglev table.
    pub maglev_table_size: u32,
    /// Entries of the TCP conntrack map.
    pub conntrack_max: u32,
    /// Entries of the conntrack map of other protocols.
    pub conntrack_max_non_tcp: u32,
    /// The source ports translated flows get, `first-last`.
    pub nat_port_range: String,
    /// Entries of the session-affinity map.
    pub affinity_max: u32,
    /// The socket programs translate only the node's own network namespace.
    pub socket_lb_host_only: bool,
    /// The cookie of the namespace the agent loaded the programs in (the node's).
    pub host_netns_cookie: u64,
    /// How new flows' sources are checked: `fib` or `off`.
    pub source_validation: &'static str,
    /// Fail-fast answers per second and interface; 0: no limit.
    pub reject_rate: u32,
    /// Fail-fast answers at once per interface.
    pub reject_burst: u32,
    /// Mid-stream pickups per second and interface; 0: no limit.
    pub pickup_rate: u32,
    /// Mid-stream pickups at once per interface.
    pub pickup_burst: u32,
}

/// One service port and its backends.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// The `ClusterSetIP`.
    pub ip: String,
    /// The service port.
    pub port: u16,
    /// `TCP`, `UDP`, or the protocol number.
    pub protocol: String,
    /// The id of its table, backends and counters.
    pub service_id: u32,
    /// `terminating-fallback`, `no-backend`.
    pub flags: Vec<&'static str>,
    /// `ClientIP` affinity timeout; `None` when affinity is off.
    pub session_affinity_timeout_seconds: Option<u32>,
    /// Slots new flows choose among; 0 when the port has no backend.
    pub table_size: u32,
    /// Whether its Maglev table exists.
    pub table_present: bool,
    /// Its backends, by id.
    pub backends: Vec<BackendView>,
    /// Its counters, summed over CPUs, when it has any.
    pub counters: Option<CountersView>,
}

/// One backend of a service port.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendView {
    /// Its id.
    pub id: u32,
    /// The pod's address.
    pub ip: String,
    /// The pod's port.
    pub port: u16,
    /// The exporting cluster's name (`#id` when it has none).
    pub cluster: String,
    /// `ready` or `terminating`.
    pub state: &'static str,
    /// Slots of the Maglev table it holds.
    pub slots: usize,
    /// Its share of the table, rounded to 4 decimals.
    pub table_share: f64,
}

/// A service port's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountersView {
    /// Packets translated.
    pub packets: u64,
    /// Bytes translated.
    pub bytes: u64,
    /// New flows.
    pub new_flows: u64,
    /// New flows refused (no backend).
    pub rejected: u64,
    /// `connect()`/`sendmsg()` calls the socket programs sent to a backend.
    pub socket_translated: u64,
    /// `connect()`/`sendmsg()` calls refused with `ECONNREFUSED` (no backend).
    pub socket_refused: u64,
}

/// One tracked flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[expect(clippy::struct_excessive_bools, reason = "independent yes/no fields of the JSON output, read by scripts")]
pub struct FlowView {
    /// The client's `ip:port`.
    pub client: String,
    /// The `ClusterSetIP:port` it connected to.
    pub service: String,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// The backend's `ip:port`.
    pub backend: String,
    /// The client's `ip:port` as the backend sees it (the translated source port).
    pub translated_client: String,
    /// The id of the service port.
    pub service_id: u32,
    /// `syn`, `established`, `closing`, `udp`.
    pub state: &'static str,
    /// Whether the client reached itself (source-NATed to the hairpin address).
    pub hairpin: bool,
    /// Whether the flow came through the XDP gateway: a client that runs no
    /// agent, source-NATed to this node's own address (`translatedClient`).
    pub gateway: bool,
    /// Whether the flow's reply entry is there (it is rebuilt when missing).
    pub reply_entry: bool,
    /// Seconds since the flow began, to a tenth.
    pub age_seconds: f64,
    /// Seconds since its last packet, to a tenth.
    pub idle_seconds: f64,
    /// Whether it is idle past its timeout (counts as absent).
    pub expired: bool,
}

impl Inspection {
    /// What `snapshot` shows.
    #[must_use]
    pub fn of(s: &Snapshot) -> Self {
        let config = s.config.map(|c| ConfigView {
            tcp_syn_timeout_seconds: c.tcp_syn_ns / NS_PER_SEC,
            tcp_established_timeout_seconds: c.tcp_established_ns / NS_PER_SEC,
            tcp_closing_timeout_seconds: c.tcp_closing_ns / NS_PER_SEC,
            udp_timeout_seconds: c.udp_ns / NS_PER_SEC,
            hairpin_ip: (c.hairpin_addr != 0).then(|| ipv4_from_nbo(c.hairpin_addr).to_string()),
            maglev_table_size: c.maglev_table_size,
            conntrack_max: c.conntrack_max,
            conntrack_max_non_tcp: c.conntrack_max_non_tcp,
            nat_port_range: format!("{}-{}", c.nat_port_min, c.nat_port_max),
            affinity_max: c.affinity_max,
            socket_lb_host_only: c.socket_flags & SOCKET_F_HOST_ONLY != 0,
            host_netns_cookie: c.host_netns_cookie,
            source_validation: if c.guard_flags & GUARD_F_SOURCE_FIB != 0 { "fib" } else { "off" },
            reject_rate: c.reject_rate,
            reject_burst: c.reject_burst,
            pickup_rate: c.pickup_rate,
            pickup_burst: c.pickup_burst,
        });
        let services =
            s.services.iter().filter(|(k, _)| !k.is_wildcard()).map(|(k, v)| service_view(s, *k, v)).collect();
        let drops = s.drops.iter().map(|(r, n)| (r.name().to_owned(), *n)).collect();
        let stats = s.stats.iter().map(|(st, n)| (st.name().to_owned(), *n)).collect();
        let conntrack = s.conntrack.as_ref().map(|entries| {
            let config = s.config.unwrap_or_default();
            let all: BTreeMap<CtKey, CtValue> = entries.iter().copied().collect();
            all.iter()
                .filter(|(k, _)| k.dir == CT_DIR_FORWARD)
                .map(|(k, v)| {
                    // The reply entry's flags and time complete the forward one's.
                    let reply = all.get(&k.peer(v)).filter(|r| k.peer(v).peer(r) == *k);
                    let flags = v.own_flags | reply.map_or(v.peer_flags, |r| r.own_flags);
                    let last_seen = reply.map_or(v.last_seen_ns, |r| r.last_seen_ns.max(v.last_seen_ns));
                    let flow_state = ct_state(k.proto, flags);
                    let idle = s.now_ns.saturating_sub(last_seen);
                    FlowView {
                        client: endpoint(k.saddr, k.sport),
                        service: endpoint(k.daddr, k.dport),
                        protocol: protocol_name(k.proto),
                        backend: endpoint(v.nat_daddr, v.nat_dport),
                        translated_client: endpoint(v.nat_saddr, v.nat_sport),
                        service_id: v.service_id,
                        state: state_name(flow_state, k.proto),
                        hairpin: v.nat_saddr != k.saddr && v.nat_saddr == config.hairpin_addr,
                        gateway: v.nat_saddr != k.saddr && v.nat_saddr != config.hairpin_addr,
                        reply_entry: reply.is_some(),
                        age_seconds: seconds(s.now_ns.saturating_sub(v.created_ns)),
                        idle_seconds: seconds(idle),
                        expired: idle > config.timeout_ns(flow_state),
                    }
                })
                .collect()
        });
        Self { config, services, drops, stats, conntrack }
    }
}

fn service_view(s: &Snapshot, key: ServiceKey, value: &ServiceValue) -> ServiceView {
    let table = s.tables.get(&value.service_id);
    let mut slots: BTreeMap<u32, usize> = BTreeMap::new();
    for id in table.map(Vec::as_slice).unwrap_or_default().iter().take(value.table_size as usize) {
        *slots.entry(*id).or_default() += 1;
    }
    let backends = s
        .backends
        .iter()
        .filter(|(_, b)| b.service_id == value.service_id)
        .map(|(id, b)| {
            let n = slots.get(id).copied().unwrap_or(0);
            #[expect(clippy::cast_precision_loss, reason = "display only")]
            let share = if value.table_size == 0 { 0.0 } else { n as f64 / f64::from(value.table_size) };
            BackendView {
                id: *id,
                ip: ipv4_from_nbo(b.addr).to_string(),
                port: u16::from_be(b.port),
                cluster: s.clusters.get(&b.cluster_id).cloned().unwrap_or_else(|| format!("#{}", b.cluster_id)),
                state: if b.flags & BACKEND_F_REMOVED != 0 {
                    "removed"
                } else if b.flags & BACKEND_F_TERMINATING != 0 {
                    "terminating"
                } else {
                    "ready"
                },
                slots: n,
                table_share: (share * 10_000.0).round() / 10_000.0,
            }
        })
        .collect();
    let counters = s.service_stats.get(&value.service_id).map(|c| CountersView {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
        rejected: c.rejected,
        socket_translated: c.socket_translated,
        socket_refused: c.socket_refused,
    });
    let mut flags = Vec::new();
    if value.flags & SERVICE_F_FALLBACK != 0 {
        flags.push("terminating-fallback");
    }
    if value.table_size == 0 {
        flags.push("no-backend");
    }
    ServiceView {
        ip: key.ip().to_string(),
        port: key.port_host(),
        protocol: protocol_name(key.proto),
        service_id: value.service_id,
        flags,
        session_affinity_timeout_seconds: (value.affinity_timeout != 0).then_some(value.affinity_timeout),
        table_size: value.table_size,
        table_present: table.is_some(),
        backends,
        counters,
    }
}

/// The JSON form of [`Inspection::of`] `s`.
///
/// # Panics
/// Never: the form holds only strings, numbers, booleans, lists and maps.
#[must_use]
pub fn to_json(s: &Snapshot) -> Value {
    serde_json::to_value(Inspection::of(s)).expect("an inspection always serializes")
}

/// A number as JSON writes it (`90.0`, not `90`), as the table always showed.
fn json_number(v: f64) -> String {
    serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string())
}

/// The table form, for people.
#[must_use]
pub fn to_table(s: &Snapshot) -> String {
    let v = Inspection::of(s);
    let mut out = String::new();
    if let Some(c) = &v.config {
        let _ = writeln!(
            out,
            "datapath: maglev table {} slots, conntrack max {}, timeouts syn {}s established {}s closing {}s udp {}s, hairpin {}{}",
            c.maglev_table_size,
            c.conntrack_max,
            c.tcp_syn_timeout_seconds,
            c.tcp_established_timeout_seconds,
            c.tcp_closing_timeout_seconds,
            c.udp_timeout_seconds,
            c.hairpin_ip.as_deref().unwrap_or("off"),
            if c.socket_lb_host_only { ", socket programs: node namespace only" } else { "" },
        );
    }
    let _ = writeln!(out, "\n{} service port(s)", v.services.len());
    for svc in &v.services {
        let affinity =
            svc.session_affinity_timeout_seconds.map_or_else(|| "none".to_owned(), |t| format!("ClientIP {t}s"));
        let _ = writeln!(
            out,
            "\n{}:{}/{}  id {}  table {}  affinity {}{}",
            svc.ip,
            svc.port,
            svc.protocol,
            svc.service_id,
            svc.table_size,
            affinity,
            if svc.flags.is_empty() { String::new() } else { format!("  [{}]", svc.flags.join(", ")) },
        );
        if let Some(c) = &svc.counters {
            let _ = writeln!(
                out,
                "  counters: packets {} bytes {} new flows {} rejected {}; sockets translated {} refused {}",
                c.packets, c.bytes, c.new_flows, c.rejected, c.socket_translated, c.socket_refused
            );
        }
        let _ = writeln!(out, "  {:<22} {:<20} {:<12} {:>7} {:>8}", "BACKEND", "CLUSTER", "STATE", "SLOTS", "SHARE");
        for b in &svc.backends {
            let _ = writeln!(
                out,
                "  {:<22} {:<20} {:<12} {:>7} {:>7.2}%",
                format!("{}:{}", b.ip, b.port),
                b.cluster,
                b.state,
                b.slots,
                b.table_share * 100.0,
            );
        }
    }
    let nonzero = |m: &BTreeMap<String, u64>| -> String {
        let parts: Vec<String> = m.iter().filter(|(_, n)| **n != 0).map(|(k, n)| format!("{k} {n}")).collect();
        if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
    };
    let _ = writeln!(out, "\ndrops: {}", nonzero(&v.drops));
    let _ = writeln!(out, "events: {}", nonzero(&v.stats));
    if let Some(flows) = &v.conntrack {
        let _ = writeln!(out, "\n{} tracked flow(s)", flows.len());
        let _ = writeln!(
            out,
            "{:<22} {:<22} {:<5} {:<22} {:<12} {:>8} {:>8} EXPIRED",
            "CLIENT", "SERVICE", "PROTO", "BACKEND", "STATE", "AGE", "IDLE"
        );
        for f in flows {
            let _ = writeln!(
                out,
                "{:<22} {:<22} {:<5} {:<22} {:<12} {:>7}s {:>7}s {}{}",
                f.client,
                f.service,
                f.protocol,
                f.backend,
                f.state,
                json_number(f.age_seconds),
                json_number(f.idle_seconds),
                if f.expired { "yes" } else { "no" },
                match (f.hairpin, f.gateway) {
                    (true, _) => " (hairpin)".to_owned(),
                    (false, true) => format!(" (gateway, as {})", f.translated_client),
                    (false, false) => String::new(),
                },
            );
        }
    }
    out
}

/// Runs `mcs-agent inspect`.
///
/// # Errors
/// When the pinned maps cannot be opened or read.
pub fn execute(args: &InspectConfig) -> Result<()> {
    let snapshot = Snapshot::from_pins(&args.pin_path, args.conntrack)
        .with_context(|| format!("inspecting the maps pinned under {}", args.pin_path.display()))?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&to_json(&snapshot))?),
        OutputFormat::Table => print!("{}", to_table(&snapshot)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use mcs_common::{CT_DIR_REPLY, ipv4_to_nbo};

    use mcs_core::fake::FakeDataplane;
    use serde_json::json;

    use super::*;
    use crate::{
        sync::Syncer,
        translate::{DesiredBackend, DesiredServicePort, DesiredState, EndpointState, Protocol, ServicePortKey},
    };

    const fn addr(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    /// What a fake dataplane holds.
    fn snapshot_of(dp: &FakeDataplane) -> Snapshot {
        Snapshot {
            config: Some(DatapathConfig { maglev_table_size: dp.table_size, ..DatapathConfig::DEFAULT }),
            services: dp.services.clone(),
            backends: dp.backends.clone(),
            clusters: dp.clusters.clone(),
            tables: dp.services.values().filter_map(|v| Some((v.service_id, dp.table_of(v.service_id)?))).collect(),
            service_stats: dp.service_stats.clone(),
            drops: DropReason::ALL.iter().map(|r| (*r, 0)).collect(),
            stats: Stat::ALL.iter().map(|s| (*s, 0)).collect(),
            conntrack: None,
            now_ns: 0,
        }
    }

    fn synced() -> FakeDataplane {
        let mut desired = DesiredState::default();
        let b = |cluster: &str, ip, state| DesiredBackend { cluster: cluster.into(), ip, port: 8080, state };
        desired.services.insert(
            ServicePortKey { ip: addr(198, 19, 0, 10), port: 80, protocol: Protocol::Tcp },
            DesiredServicePort {
                namespace: "demo".into(),
                name: "web".into(),
                port_name: "http".into(),
                session_affinity_timeout: Some(30),
                backends: vec![
                    b("east", addr(198, 18, 1, 10), EndpointState::Ready),
                    b("west", addr(198, 18, 2, 10), EndpointState::Ready),
                ],
                draining: vec![b("west", addr(198, 18, 2, 11), EndpointState::Terminating)],
            },
        );
        desired.services.insert(
            ServicePortKey { ip: addr(198, 19, 0, 10), port: 53, protocol: Protocol::Udp },
            DesiredServicePort {
                namespace: "demo".into(),
                name: "web".into(),
                port_name: "dns".into(),
                session_affinity_timeout: None,
                backends: Vec::new(),
                draining: Vec::new(),
            },
        );
        let mut dp = FakeDataplane::default();
        let outcome = Syncer::new().sync(&mut dp, &desired).expect("sync");
        assert!(outcome.errors.is_empty(), "{outcome:?}");
        dp
    }

    #[test]
    fn json_names_every_backend_with_cluster_state_and_share() {
        let dp = synced();
        let mut snapshot = snapshot_of(&dp);
        snapshot.service_stats.values_mut().for_each(|c| c.packets = 7);
        snapshot.drops.insert(DropReason::NoBackend, 3);
        let v = to_json(&snapshot);
        let services = v["services"].as_array().expect("services");
        assert_eq!(services.len(), 2, "{v:#}");
        let tcp = services.iter().find(|s| s["protocol"] == "TCP").expect("tcp port");
        assert_eq!(tcp["sessionAffinityTimeoutSeconds"], 30);
        // Two ready backends: the ladder's 223 slots (at least 100 each).
        assert_eq!(tcp["tableSize"], 223);
        assert_eq!(tcp["counters"]["packets"], 7);
        let backends = tcp["backends"].as_array().expect("backends");
        assert_eq!(backends.len(), 3);
        let shares: Vec<(String, String, u64)> = backends
            .iter()
            .map(|b| {
                (
                    b["cluster"].as_str().expect("cluster").into(),
                    b["state"].as_str().expect("state").into(),
                    b["slots"].as_u64().expect("slots"),
                )
            })
            .collect();
        assert!(shares.contains(&("west".into(), "terminating".into(), 0)), "{shares:?}");
        let ready_slots: u64 = shares.iter().filter(|s| s.1 == "ready").map(|s| s.2).sum();
        assert_eq!(ready_slots, 223, "the ready backends share the whole table");
        let udp = services.iter().find(|s| s["protocol"] == "UDP").expect("udp port");
        assert_eq!(udp["flags"], json!(["no-backend"]));
        assert_eq!(udp["tableSize"], 0);
        assert_eq!(v["drops"]["no-backend"], 3);
        assert!(v["conntrack"].is_null());
    }

    #[test]
    fn conntrack_lists_forward_entries_with_state_and_expiry() {
        let dp = synced();
        let mut snapshot = snapshot_of(&dp);
        snapshot.now_ns = 100 * NS_PER_SEC;
        let key = |port: u16, dir| CtKey {
            saddr: ipv4_to_nbo(addr(198, 18, 0, 2)),
            daddr: ipv4_to_nbo(addr(198, 19, 0, 10)),
            sport: port.to_be(),
            dport: 53u16.to_be(),
            proto: proto::UDP,
            dir,
            pad: [0; 2],
        };
        let value = |last_seen_s: u64| CtValue {
            nat_saddr: ipv4_to_nbo(addr(198, 18, 0, 2)),
            nat_daddr: ipv4_to_nbo(addr(198, 18, 1, 10)),
            nat_sport: 61_000u16.to_be(),
            nat_dport: 5353u16.to_be(),
            created_ns: 10 * NS_PER_SEC,
            last_seen_ns: last_seen_s * NS_PER_SEC,
            ..CtValue::default()
        };
        snapshot.conntrack = Some(vec![
            (key(1000, CT_DIR_FORWARD), value(90)),
            (key(1001, CT_DIR_FORWARD), value(20)),
            (key(1000, CT_DIR_REPLY), value(90)),
        ]);
        let v = to_json(&snapshot);
        let flows = v["conntrack"].as_array().expect("flows");
        assert_eq!(flows.len(), 2, "one line per flow: {v:#}");
        assert_eq!(flows[0]["client"], "198.18.0.2:1000");
        assert_eq!(flows[0]["service"], "198.19.0.10:53");
        assert_eq!(flows[0]["backend"], "198.18.1.10:5353");
        assert_eq!(flows[0]["state"], "udp");
        assert_eq!((flows[0]["ageSeconds"].as_f64(), flows[0]["expired"].as_bool()), (Some(90.0), Some(false)));
        assert_eq!(flows[1]["expired"], true, "idle 80 s past the 60 s UDP timeout");
        let table = to_table(&snapshot);
        assert!(table.contains("2 tracked flow(s)"), "{table}");
        assert!(table.contains("198.18.0.2:1001"), "{table}");
    }

    #[test]
    fn the_table_names_ports_backends_clusters_and_drops() {
        let mut snapshot = snapshot_of(&synced());
        snapshot.drops.insert(DropReason::UnknownPort, 2);
        let table = to_table(&snapshot);
        for needle in [
            "2 service port(s)",
            "198.19.0.10:80/TCP",
            "affinity ClientIP 30s",
            "198.19.0.10:53/UDP",
            "[no-backend]",
            "198.18.2.11:8080",
            "terminating",
            "east",
            "unknown-port 2",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
        }
    }
}
