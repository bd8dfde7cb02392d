//! `mcs-agent status`: one screen on a running agent, like `cilium-dbg
//! status`.
//!
//! Two sources, each read without writing anything:
//! - the agent's `/status` endpoint (on its `--metrics-addr`): what the run
//!   loop recorded, the same record its metrics are made of: readiness, the
//!   source and the syncs, skipped imports, the attached interfaces and the
//!   drops of the last minute, which only a process that has been watching
//!   the counters can tell;
//! - the pins: the service ports and their backends (as `inspect` reads
//!   them), the pinned TCX and cgroup links, the drop counters since load and how full
//!   each map is against its capacity, with a warning above 90%.
//!
//! An agent that does not answer (its metrics server is off, or it is not
//! running) leaves the pins' part, with a warning.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use mcs_common::map_names;
use serde::Serialize;

use crate::{
    dataplane::{MapFill, fill_levels},
    ebpf::{LINK_DIRECTIONS, pinned_interface},
    inspect::{Inspection, ServiceView, Snapshot},
    metrics::AgentStatus,
    output::OutputFormat,
};

/// Above this fill level (entries over capacity) a map gets a warning.
pub const FILL_WARNING: f64 = 0.9;

/// How long `status` waits for the agent's answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The configuration of `mcs-agent status`.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    /// Directory on bpffs where the agent pinned its maps.
    pub pin_path: PathBuf,
    /// Where the agent serves `/status`; `None`: do not ask it.
    pub agent_addr: Option<SocketAddr>,
    /// How the result is printed.
    pub output: OutputFormat,
}

/// What `status` shows (the JSON of `-o json`, field names in
/// docs/deploy.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The pin directory read.
    pub pin_path: String,
    /// The agent's own account.
    pub agent: AgentView,
    /// Every interface the programs are attached to, from the agent's
    /// account and from the pinned links.
    pub interfaces: Vec<InterfaceView>,
    /// The cgroup the socket programs are attached to, with their pinned links.
    pub cgroups: Vec<CgroupView>,
    /// The service ports and their backends, as `inspect` shows them.
    pub services: Vec<ServiceView>,
    /// The drop counters.
    pub drops: DropsView,
    /// How full each map is.
    pub maps: Vec<MapView>,
    /// What needs a look: maps above 90%, an agent that is not ready or
    /// does not answer, a sync that could not write everything.
    pub warnings: Vec<String>,
}

/// The agent's `/status`, or why it is missing.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    /// Where it was asked; `None` when not asked.
    pub address: Option<String>,
    /// Its answer.
    pub status: Option<AgentStatus>,
    /// Why there is no answer.
    pub error: Option<String>,
}

/// One attached interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceView {
    /// Its name.
    pub name: String,
    /// `tcx` or `clsact`: the agent's mode when it lists the interface, else
    /// `tcx` (only TCX links are pinned).
    pub mode: String,
    /// The directions whose link is pinned (`ingress`, `egress`); empty with clsact.
    pub pinned_links: Vec<String>,
    /// Whether the running agent lists it as attached.
    pub attached_by_agent: bool,
}

/// The cgroup of the socket programs (`--socket-lb`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupView {
    /// The cgroup v2 directory, as the agent reports it; `None` without its answer.
    pub path: Option<String>,
    /// `cgroup-link`: pinned `BPF_LINK_CREATE` links, one per program.
    pub mode: &'static str,
    /// The socket programs whose link is pinned (`connect4`, `sendmsg4`, ...).
    pub pinned_links: Vec<String>,
    /// Whether the running agent reports socket load balancing on.
    pub attached_by_agent: bool,
}

/// The drop counters, by reason name.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DropsView {
    /// The span of `recent` (a minute, less while the agent is younger).
    pub window_seconds: Option<f64>,
    /// Drops over that span, from the agent; `None` without its answer.
    pub recent: Option<BTreeMap<String, u64>>,
    /// Drops since the maps were created, from the pins.
    pub total: BTreeMap<String, u64>,
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MapView {
    /// The map (its pin).
    pub name: String,
    /// Entries it holds.
    pub entries: u64,
    /// Entries it was created for.
    pub capacity: u64,
    /// `entries / capacity`, rounded to 4 decimals.
    pub fill: f64,
    /// Whether the kernel evicts the oldest entries when it is full (LRU)
    /// rather than refusing new ones.
    pub evicts: bool,
    /// Whether it is above [`FILL_WARNING`].
    pub warning: bool,
}

/// The flag that sizes `map`, for the warning's advice.
fn sizing_flag(map: &str) -> Option<&'static str> {
    match map {
        map_names::SERVICES => Some("--services-max"),
        map_names::BACKENDS => Some("--backends-max"),
        map_names::MAGLEV => Some("--maglev-slots-max"),
        map_names::CONNTRACK_TCP => Some("--conntrack-max"),
        map_names::CONNTRACK_ANY => Some("--conntrack-max-non-tcp"),
        map_names::AFFINITY => Some("--affinity-max"),
        _ => None,
    }
}

fn map_view(fill: &MapFill) -> MapView {
    #[expect(clippy::cast_precision_loss, reason = "a ratio for display and a threshold")]
    let ratio = if fill.capacity == 0 { 0.0 } else { fill.entries as f64 / fill.capacity as f64 };
    MapView {
        name: fill.name.to_owned(),
        entries: fill.entries,
        capacity: fill.capacity,
        fill: (ratio * 10_000.0).round() / 10_000.0,
        evicts: fill.evicts,
        warning: ratio > FILL_WARNING,
    }
}

/// The socket programs whose cgroup link is pinned under `dir`
/// (`links/sock_<program>`, see [`crate::sockets::link_pin_path`]).
fn pinned_socket_links(dir: &Path) -> Result<Vec<String>> {
    let links = dir.join("links");
    if !links.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = fs::read_dir(&links)
        .with_context(|| format!("reading {}", links.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("sock_").map(str::to_owned))
        .collect();
    out.sort();
    Ok(out)
}

/// The interfaces named by the link pins under `dir`, with their directions.
fn pinned_links(dir: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let links = dir.join("links");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if !links.is_dir() {
        return Ok(out);
    }
    for entry in fs::read_dir(&links).with_context(|| format!("reading {}", links.display()))? {
        let name = entry?.file_name();
        let Some(file) = name.to_str() else { continue };
        let (Some(interface), Some((_, direction))) = (pinned_interface(file), file.rsplit_once('_')) else {
            continue;
        };
        out.entry(interface).or_default().push(direction.to_owned());
    }
    for directions in out.values_mut() {
        directions.sort_by_key(|d| LINK_DIRECTIONS.iter().position(|l| l == d));
    }
    Ok(out)
}

impl Status {
    /// Puts together what the pins hold (`snapshot`, `fills`, `links`) and
    /// the agent's answer.
    #[must_use]
    pub fn of(
        pin_path: &Path,
        snapshot: &Snapshot,
        fills: &[MapFill],
        (links, socket_links): (&BTreeMap<String, Vec<String>>, &[String]),
        agent: AgentView,
    ) -> Self {
        let inspection = Inspection::of(snapshot);
        let mut warnings = Vec::new();
        let maps: Vec<MapView> = fills.iter().map(map_view).collect();
        for m in maps.iter().filter(|m| m.warning) {
            let advice = match (m.evicts, sizing_flag(&m.name)) {
                (true, Some(flag)) => format!(": the oldest entries are evicted; raise {flag}"),
                (true, None) => ": the oldest entries are evicted".to_owned(),
                (false, Some(flag)) => format!(": new entries will be refused; raise {flag}"),
                (false, None) => ": new entries will be refused".to_owned(),
            };
            warnings.push(format!(
                "map {} is {:.1}% full ({} of {}){advice}",
                m.name,
                m.fill * 100.0,
                m.entries,
                m.capacity
            ));
        }
        let mut interfaces: BTreeMap<String, InterfaceView> = BTreeMap::new();
        if let Some(status) = &agent.status {
            let mode = status.attach_mode.clone().unwrap_or_else(|| "unknown".to_owned());
            for i in &status.interfaces {
                interfaces.insert(
                    i.name.clone(),
                    InterfaceView {
                        name: i.name.clone(),
                        mode: mode.clone(),
                        pinned_links: Vec::new(),
                        attached_by_agent: true,
                    },
                );
            }
            if let Some(why) = &status.not_ready {
                warnings.push(format!("the agent is not ready: {why}"));
            }
            for e in &status.sync_errors {
                warnings.push(format!("the last sync could not write: {e}"));
            }
        }
        if let Some(error) = &agent.error {
            warnings.push(format!("no answer from the agent: {error}"));
        }
        for (name, directions) in links {
            let view = interfaces.entry(name.clone()).or_insert_with(|| InterfaceView {
                name: name.clone(),
                mode: "tcx".to_owned(),
                pinned_links: Vec::new(),
                attached_by_agent: false,
            });
            view.pinned_links.clone_from(directions);
        }
        let socket_cgroup = agent.status.as_ref().and_then(|s| s.socket_cgroup.clone());
        let cgroups = if socket_cgroup.is_some() || !socket_links.is_empty() {
            vec![CgroupView {
                attached_by_agent: socket_cgroup.is_some(),
                path: socket_cgroup,
                mode: "cgroup-link",
                pinned_links: socket_links.to_vec(),
            }]
        } else {
            Vec::new()
        };
        let drops = DropsView {
            window_seconds: agent.status.as_ref().filter(|s| s.recent_drops.is_some()).map(|s| s.drops_window_seconds),
            recent: agent.status.as_ref().and_then(|s| s.recent_drops.clone()),
            total: inspection.drops,
        };
        Self {
            pin_path: pin_path.display().to_string(),
            agent,
            interfaces: interfaces.into_values().collect(),
            cgroups,
            services: inspection.services,
            drops,
            maps,
            warnings,
        }
    }

    /// The agent's lines of the table.
    fn agent_lines(&self, out: &mut String) {
        let now_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let address = self.agent.address.as_deref().unwrap_or("not asked");
        match &self.agent.status {
            Some(s) => {
                let ready = s.not_ready.as_ref().map_or_else(|| "ready".to_owned(), |why| format!("NOT READY: {why}"));
                let _ = writeln!(out, "agent {address}: {ready}");
                let count = |r: &str| s.syncs.get(r).copied().unwrap_or(0);
                let last = s
                    .last_success_unix_seconds
                    .map_or_else(|| "never".to_owned(), |t| format!("{:.0}s ago", (now_unix - t).max(0.0)));
                let _ = writeln!(
                    out,
                    "  source {}, {} problem(s); syncs: {} success, {} partial, {} error; last good sync {last} ({:.1} ms)",
                    if s.sources_synced { "synced" } else { "NOT synced" },
                    s.source_problems,
                    count("success"),
                    count("partial"),
                    count("error"),
                    s.last_sync_duration_seconds * 1e3,
                );
                if let Some(api) = &s.source_api {
                    let _ = writeln!(out, "  API server: {}", if api.up { "up" } else { "DOWN" });
                    for (resource, w) in &api.watches {
                        let heard = if w.last_event_unix > 0.0 {
                            format!("{:.0}s ago", (now_unix - w.last_event_unix).max(0.0))
                        } else {
                            "never".to_owned()
                        };
                        let error = w.last_error.as_ref().map_or_else(String::new, |e| format!("; last error: {e}"));
                        let _ = writeln!(out, "    {resource}: {} error(s), last heard {heard}{error}", w.errors);
                    }
                }
                let _ = writeln!(
                    out,
                    "  desired: {} service port(s), {} backend(s), {} draining; {} excluded cluster(s)",
                    s.service_ports, s.backends, s.draining, s.excluded_clusters
                );
                let skipped: Vec<String> =
                    s.skipped_imports.iter().map(|i| format!("{}/{} ({})", i.namespace, i.name, i.reason)).collect();
                let _ = writeln!(
                    out,
                    "  skipped imports: {}",
                    if skipped.is_empty() { "none".into() } else { skipped.join(", ") }
                );
            }
            None => {
                let _ = writeln!(out, "agent {address}: {}", self.agent.error.as_deref().unwrap_or("no answer"));
            }
        }
    }

    /// The table form, for people: one screen.
    #[must_use]
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        self.agent_lines(&mut out);
        let _ = writeln!(out, "\n{} interface(s)", self.interfaces.len());
        for i in &self.interfaces {
            let links = if i.pinned_links.is_empty() {
                String::new()
            } else {
                format!("  pinned {}", i.pinned_links.join("+"))
            };
            let agent = if i.attached_by_agent { "" } else { "  (not listed by the agent)" };
            let _ = writeln!(out, "  {:<16} {:<7}{links}{agent}", i.name, i.mode);
        }
        for c in &self.cgroups {
            let links = if c.pinned_links.is_empty() { "none".to_owned() } else { c.pinned_links.join("+") };
            let _ = writeln!(
                out,
                "  cgroup {} {}  pinned {links}{}",
                c.path.as_deref().unwrap_or("(path unknown)"),
                c.mode,
                if c.attached_by_agent { "" } else { "  (not listed by the agent)" }
            );
        }
        let _ = writeln!(out, "\n{} service port(s)", self.services.len());
        for svc in &self.services {
            let backends: Vec<String> = svc
                .backends
                .iter()
                .map(|b| {
                    let state = if b.state == "ready" { String::new() } else { format!(" {}", b.state) };
                    format!("{}:{} {}{state}", b.ip, b.port, b.cluster)
                })
                .collect();
            let _ = writeln!(
                out,
                "  {:<24} {}",
                format!("{}:{}/{}", svc.ip, svc.port, svc.protocol),
                if backends.is_empty() { "no backend".into() } else { backends.join(", ") }
            );
        }
        let nonzero = |m: &BTreeMap<String, u64>| -> String {
            let parts: Vec<String> = m.iter().filter(|(_, n)| **n != 0).map(|(k, n)| format!("{k} {n}")).collect();
            if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
        };
        match (&self.drops.recent, self.drops.window_seconds) {
            (Some(recent), Some(window)) => {
                let _ = writeln!(out, "\ndrops in the last {window:.0}s: {}", nonzero(recent));
            }
            _ => {
                let _ = writeln!(out, "\ndrops in the last minute: unknown (no answer from the agent)");
            }
        }
        let _ = writeln!(out, "drops since load: {}", nonzero(&self.drops.total));
        let _ = writeln!(out, "\n  {:<14} {:>9} {:>9} {:>7}", "MAP", "ENTRIES", "CAPACITY", "FILL");
        for m in &self.maps {
            let _ = writeln!(
                out,
                "  {:<14} {:>9} {:>9} {:>6.1}%{}{}",
                m.name,
                m.entries,
                m.capacity,
                m.fill * 100.0,
                if m.evicts { " lru" } else { "" },
                if m.warning { "  WARNING" } else { "" }
            );
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out, "\nwarnings:");
            for w in &self.warnings {
                let _ = writeln!(out, "  - {w}");
            }
        }
        out
    }
}

/// Asks the agent at `addr` for its `/status`.
async fn ask_agent(addr: SocketAddr) -> Result<AgentStatus> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = Request::get("/status").header(header::HOST, addr.to_string()).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await.context("GET /status")?;
    let code = response.status();
    let body = response.into_body().collect().await.context("reading the answer to GET /status")?.to_bytes();
    connection.abort();
    if !code.is_success() {
        bail!("GET /status answered {code}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).context("the answer to GET /status is not the agent's status JSON")
}

/// The agent's account at `addr` (`None`: not asked), within [`AGENT_TIMEOUT`].
fn agent_view(addr: Option<SocketAddr>) -> AgentView {
    let Some(addr) = addr else { return AgentView { address: None, status: None, error: None } };
    let asked =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(
            |runtime| {
                runtime.block_on(async {
                    tokio::time::timeout(AGENT_TIMEOUT, ask_agent(addr))
                        .await
                        .map_err(|_| anyhow!("no answer within {AGENT_TIMEOUT:?}"))?
                })
            },
        );
    match asked {
        Ok(status) => AgentView { address: Some(addr.to_string()), status: Some(status), error: None },
        Err(e) => AgentView { address: Some(addr.to_string()), status: None, error: Some(format!("{e:#}")) },
    }
}

/// Reads the pins under `config.pin_path` and asks the agent.
///
/// # Errors
/// When the pinned maps cannot be opened or read.
pub fn collect(config: &StatusConfig) -> Result<Status> {
    let dir = &config.pin_path;
    let context = || format!("reading the maps pinned under {}", dir.display());
    let snapshot = Snapshot::from_pins(dir, false).with_context(context)?;
    let fills = fill_levels(dir).with_context(context)?;
    let links = pinned_links(dir)?;
    let socket_links = pinned_socket_links(dir)?;
    Ok(Status::of(dir, &snapshot, &fills, (&links, &socket_links), agent_view(config.agent_addr)))
}

/// Runs `mcs-agent status`.
///
/// # Errors
/// When the pinned maps cannot be opened or read.
pub fn execute(config: &StatusConfig) -> Result<()> {
    let status = collect(config)?;
    match config.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        OutputFormat::Table => print!("{}", status.to_table()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AttachedInterface;

    fn fill(name: &'static str, entries: u64, capacity: u64, evicts: bool) -> MapFill {
        MapFill { name, entries, capacity, evicts }
    }

    #[test]
    fn maps_above_ninety_percent_are_warned_about_with_their_flag() {
        let fills = [
            fill(map_names::SERVICES, 3, 3, false),
            fill(map_names::BACKENDS, 90, 100, false),
            fill(map_names::CONNTRACK_ANY, 91, 100, true),
        ];
        let status = Status::of(
            Path::new("/p"),
            &Snapshot::default(),
            &fills,
            (&BTreeMap::new(), &[]),
            AgentView { address: None, status: None, error: None },
        );
        let warned: Vec<(&str, bool)> = status.maps.iter().map(|m| (m.name.as_str(), m.warning)).collect();
        assert_eq!(
            warned,
            [(map_names::SERVICES, true), (map_names::BACKENDS, false), (map_names::CONNTRACK_ANY, true)]
        );
        assert_eq!(status.warnings.len(), 2, "{:?}", status.warnings);
        assert!(status.warnings[0].contains("MCS_SERVICES is 100.0% full (3 of 3)"), "{:?}", status.warnings);
        assert!(status.warnings[0].contains("raise --services-max"), "{:?}", status.warnings);
        assert!(status.warnings[1].contains("evicted; raise --conntrack-max-non-tcp"), "{:?}", status.warnings);
        let table = status.to_table();
        assert!(table.contains("WARNING"), "{table}");
        assert!(table.contains("drops in the last minute: unknown"), "{table}");
    }

    #[test]
    fn interfaces_merge_the_agents_list_and_the_pinned_links() {
        let agent = AgentStatus {
            attach_mode: Some("tcx".into()),
            interfaces: vec![AttachedInterface { name: "veth0".into(), ifindex: 4 }],
            xdp_interfaces: Vec::new(),
            not_ready: Some("first sync not done".into()),
            recent_drops: Some([("unknown-port".to_owned(), 2)].into()),
            drops_window_seconds: 12.0,
            ..AgentStatus::default()
        };
        let links: BTreeMap<String, Vec<String>> =
            [("veth0".into(), vec!["ingress".into(), "egress".into()]), ("gone0".into(), vec!["ingress".into()])]
                .into();
        let status = Status::of(
            Path::new("/p"),
            &Snapshot::default(),
            &[],
            (&links, &["connect4".to_owned()]),
            AgentView { address: Some("127.0.0.1:9464".into()), status: Some(agent), error: None },
        );
        let seen: Vec<(&str, bool, usize)> =
            status.interfaces.iter().map(|i| (i.name.as_str(), i.attached_by_agent, i.pinned_links.len())).collect();
        assert_eq!(seen, [("gone0", false, 1), ("veth0", true, 2)]);
        let cgroups: Vec<(Option<&str>, bool, &[String])> = status
            .cgroups
            .iter()
            .map(|c| (c.path.as_deref(), c.attached_by_agent, c.pinned_links.as_slice()))
            .collect();
        assert_eq!(cgroups, [(None, false, &["connect4".to_owned()][..])], "a pinned link the agent does not report");
        assert_eq!(status.drops.window_seconds, Some(12.0));
        assert!(status.warnings.iter().any(|w| w.contains("not ready: first sync not done")), "{:?}", status.warnings);
        let table = status.to_table();
        assert!(table.contains("drops in the last 12s: unknown-port 2"), "{table}");
        assert!(table.contains("(not listed by the agent)"), "{table}");
    }
}
