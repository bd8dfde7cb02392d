//! `mcs-agent run`: load the datapath, attach it, and keep the maps in sync
//! with a source (the Kubernetes API, or a directory of manifests).
//!
//! The source only records changes. The loop here decides when to sync:
//! - never before every source has synced (nothing is written until then);
//! - at most every `--min-sync-interval-ms`: changes arriving sooner wait for
//!   the interval (they are coalesced, never dropped);
//! - at least every `--max-sync-interval-ms` a sync runs, changes or not;
//! - the periodic resync is an audit spread over that interval: every
//!   `1/AUDIT_PARTS` of it, one part of the maps is compared with what the
//!   syncer wrote (see `Syncer::audit`), so that no part holds up a change
//!   for long; what drifted makes the next sync a full one, which re-reads
//!   the maps and rewrites it;
//! - after any failure the next sync is retried with an exponential backoff
//!   bounded by the maximum interval (the syncer itself makes it a full one).
//!
//! Interfaces are attached as they appear (see [`crate::interfaces`]), and the
//! metrics server reports what happened (see [`crate::metrics`]). On SIGTERM
//! or SIGINT the agent stops and leaves the datapath in place: maps and TCX
//! links stay pinned, so traffic keeps flowing until a new agent takes over or
//! `mcs-agent cleanup` removes them. After a SIGKILL the same holds; the next
//! agent adopts the pinned maps.
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::Instant,
};
use tracing::{debug, error, info, warn};

use crate::{
    dataplane::AyaDataplane,
    ebpf::{self, AttachMode, DatapathSettings},
    events::{self, EventLevel, Events},
    interfaces::{Interfaces, Pattern, Target},
    metrics::{self, Metrics, SyncResult},
    sockets,
    source::{Snapshot, Source, SourceConfig},
    sync::Syncer,
    translate::{self, incremental::Incremental},
};

/// How often the interface list is rescanned without a link event.
const INTERFACE_RESCAN: Duration = Duration::from_secs(5);

/// Socket-level load balancing, as `--socket-lb` and `--cgroup-path` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketLb {
    /// Attach the socket programs to this cgroup v2 directory.
    On {
        /// The cgroup.
        cgroup: PathBuf,
    },
    /// Not attached (links a previous agent pinned are removed).
    Off {
        /// Why, when it was not asked for: logged as a warning.
        note: Option<String>,
    },
}

/// The configuration of `mcs-agent run`: what its flags ask for, checked.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Socket-level load balancing.
    pub socket_lb: SocketLb,
    /// Where ServiceImports and EndpointSlices come from.
    pub source: SourceConfig,
    /// Pod-facing interfaces: names and glob patterns (empty on a pure gateway node).
    pub interfaces: Vec<Pattern>,
    /// Uplinks that carry the XDP gateway: names and glob patterns.
    pub xdp_interfaces: Vec<Pattern>,
    /// The translation's settings.
    pub translate: translate::Config,
    /// Directory on bpffs where maps and links are pinned.
    pub pin_path: PathBuf,
    /// Minimum time between two syncs.
    pub min_sync_interval: Duration,
    /// Maximum time between two syncs (a periodic full resync).
    pub max_sync_interval: Duration,
    /// How long a backend that left its slices keeps its established flows.
    pub backend_removal_grace: Duration,
    /// Address of the HTTP server for /metrics, /healthz and /readyz; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// The datapath's settings.
    pub datapath: DatapathSettings,
    /// Which datapath events the agent logs.
    pub datapath_events: EventLevel,
    /// Where `mcs-agent monitor` connects; `None`: nowhere.
    pub monitor_socket: Option<PathBuf>,
}

/// When the next sync is due, and whether it is a full one.
#[derive(Debug)]
struct Schedule {
    min: Duration,
    max: Duration,
    /// When the last sync ran (successful or not).
    last: Option<Instant>,
    /// A change arrived since the last sync.
    pending: bool,
    /// Failed syncs in a row.
    failures: u32,
}

impl Schedule {
    fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), last: None, pending: false, failures: 0 }
    }

    fn changed(&mut self) {
        self.pending = true;
    }

    /// The wait after `failures` failed syncs in a row: doubling from the
    /// minimum interval (at least 100 ms), at most the maximum interval.
    fn backoff(&self) -> Duration {
        let base = self.min.max(Duration::from_millis(100));
        let factor = 1_u32 << self.failures.saturating_sub(1).min(16);
        base.saturating_mul(factor).min(self.max)
    }

    /// When the next sync should run.
    fn due(&self, now: Instant) -> Instant {
        let Some(last) = self.last else { return now };
        if self.failures > 0 {
            last + self.backoff()
        } else if self.pending {
            last + self.min
        } else {
            last + self.max
        }
    }

    fn done(&mut self, started: Instant, ok: bool) {
        self.last = Some(started);
        self.pending = false;
        self.failures = if ok { 0 } else { self.failures.saturating_add(1) };
    }
}

/// Lines already logged, keyed so that a change is logged once.
#[derive(Debug, Default)]
struct Logged {
    skipped: BTreeMap<String, String>,
    excluded: BTreeMap<String, String>,
    problems: BTreeMap<String, String>,
    warnings: BTreeMap<String, String>,
}

/// Logs what appeared (or changed) in `now` compared with `before`, and what
/// went away, one line each; then remembers `now`.
fn log_changes(before: &mut BTreeMap<String, String>, now: BTreeMap<String, String>, gone: &str) {
    for (key, line) in &now {
        if before.get(key) != Some(line) {
            warn!("{line}");
        }
    }
    for key in before.keys() {
        if !now.contains_key(key) {
            info!("{key}: {gone}");
        }
    }
    *before = now;
}

impl Logged {
    fn update(&mut self, snapshot: &Snapshot, report: &translate::Report) {
        let skipped = report
            .skipped
            .iter()
            .map(|s| {
                let key = format!("ServiceImport {}/{}", s.namespace, s.name);
                let line = format!("{key} skipped ({}): {}", s.reason.as_str(), s.message);
                (key, line)
            })
            .collect();
        log_changes(&mut self.skipped, skipped, "no longer skipped");
        let excluded = report
            .excluded_clusters
            .iter()
            .map(|e| {
                let key = format!("ServiceImport {}/{} cluster {}", e.namespace, e.name, e.cluster);
                let line = format!("{key} excluded ({})", e.reason.as_str());
                (key, line)
            })
            .collect();
        log_changes(&mut self.excluded, excluded, "no longer excluded");
        let problems = snapshot.problems.iter().map(|p| (p.to_string(), p.to_string())).collect();
        log_changes(&mut self.problems, problems, "resolved");
        let warnings = report.warnings.iter().map(|w| (w.clone(), w.clone())).collect();
        log_changes(&mut self.warnings, warnings, "resolved");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The state of the sync side of the loop.
struct Syncing {
    translator: Incremental,
    syncer: Syncer,
    schedule: Schedule,
    logged: Logged,
    metrics: Arc<Metrics>,
    events: Events,
    audit: Audit,
}

/// How many parts an audit round (the periodic resync) has.
const AUDIT_PARTS: u32 = 128;

/// The audit's timing and the round in progress.
#[derive(Debug)]
struct Audit {
    /// Time between two parts: the maximum sync interval over the parts.
    every: Duration,
    /// When the next part runs; `None` before the first sync.
    next: Option<Instant>,
    /// The round's parts so far: how many, the longest, and the total time.
    parts: u32,
    longest: Duration,
    total: Duration,
}

impl Audit {
    fn new(max_sync_interval: Duration) -> Self {
        Self {
            every: max_sync_interval / AUDIT_PARTS,
            next: None,
            parts: 0,
            longest: Duration::ZERO,
            total: Duration::ZERO,
        }
    }
}

impl Syncing {
    /// When the next sync or audit part is due: the schedule's time, the
    /// end of a backend's removal grace, or the next audit part, whichever
    /// comes first.
    fn due(&self, now: Instant) -> Instant {
        let due = self.schedule.due(now);
        let due = self.audit.next.map_or(due, |next| due.min(next));
        self.syncer.next_removal().map_or(due, |end| due.min(Instant::from_std(end)))
    }

    /// When the next sync is due (the audit's parts aside).
    fn schedule_due(&self, now: Instant) -> Instant {
        let due = self.schedule.due(now);
        self.syncer.next_removal().map_or(due, |end| due.min(Instant::from_std(end)))
    }

    /// Runs one part of the audit when it is due (never before the first sync).
    fn audit_part(&mut self, dataplane: &AyaDataplane, now: Instant) {
        let Some(next) = self.audit.next.filter(|next| now >= *next) else { return };
        let started = Instant::now();
        let audited = self.syncer.audit(dataplane, AUDIT_PARTS);
        let took = started.elapsed();
        self.audit.next = Some(next.max(now) + self.audit.every);
        self.audit.parts += 1;
        self.audit.longest = self.audit.longest.max(took);
        self.audit.total += took;
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        if let Some(drift) = &audited.drift {
            warn!(drift = %drift, "the maps differ from what was written; the next sync re-reads them");
            self.metrics.record_audit(true);
            self.schedule.changed();
        } else if audited.round_done {
            info!(
                parts = self.audit.parts,
                longest_part_ms = ms(self.audit.longest),
                total_ms = ms(self.audit.total),
                "maps audited; nothing drifted"
            );
            self.metrics.record_audit(false);
        } else {
            debug!(backend_ids = audited.backend_ids, slots = audited.slots, ms = ms(took), "audit part");
            return;
        }
        self.audit = Audit { next: self.audit.next, ..Audit::new(self.audit.every * AUDIT_PARTS) };
    }

    /// Translates what `source` holds and writes the difference.
    fn sync(&mut self, source: &Source, dataplane: &mut AyaDataplane) {
        let started = Instant::now();
        let (snapshot, changes) = source.take();
        let translate_started = Instant::now();
        let updated = self.translator.update_with(&snapshot.inputs, snapshot.index.as_ref(), &changes);
        let translate_ms = translate_started.elapsed().as_secs_f64() * 1e3;
        let (desired, report) = (self.translator.state(), self.translator.report());
        self.logged.update(&snapshot, report);
        self.metrics.set_source_problems(snapshot.problems.len());
        // Let the source take its objects back without copying them.
        drop(snapshot);
        let unchanged = updated.changed.as_ref().is_some_and(std::collections::BTreeSet::is_empty);
        if !unchanged {
            self.metrics.update_translation(desired, report, updated.changed.as_ref());
            self.events.names().update_services(desired, updated.changed.as_ref());
        }
        debug!(groups = updated.groups, mode = ?updated.mode, translate_ms, "translated");
        let sync_started = Instant::now();
        let synced = self.syncer.sync_changed(dataplane, desired, updated.changed.as_ref());
        let sync_ms = sync_started.elapsed().as_secs_f64() * 1e3;
        let errors = match &synced {
            Ok(outcome) => outcome.errors.iter().map(ToString::to_string).collect(),
            Err(e) => vec![format!("{e:#}")],
        };
        self.metrics.set_sync_errors(errors);
        let (result, ok) = match synced {
            Ok(outcome) if outcome.errors.is_empty() => {
                let fields = (desired.services.len(), outcome.writes, outcome.full, outcome.tables_written);
                let (translate_ms, sync_ms) = ((translate_ms * 10.0).round() / 10.0, (sync_ms * 10.0).round() / 10.0);
                if outcome.writes > 0 || outcome.full {
                    info!(
                        service_ports = fields.0,
                        writes = fields.1,
                        full = fields.2,
                        tables = fields.3,
                        in_removal_grace = self.syncer.backends_in_grace(),
                        errors = 0usize,
                        translate_ms,
                        sync_ms,
                        "synced"
                    );
                } else {
                    debug!(service_ports = fields.0, translate_ms, sync_ms, "synced; nothing to write");
                }
                (SyncResult::Success, true)
            }
            Ok(outcome) => {
                for e in &outcome.errors {
                    error!(error = %e, "service port not written");
                }
                warn!(
                    service_ports = desired.services.len(),
                    writes = outcome.writes,
                    full = outcome.full,
                    errors = outcome.errors.len(),
                    translate_ms = (translate_ms * 10.0).round() / 10.0,
                    sync_ms = (sync_ms * 10.0).round() / 10.0,
                    "sync incomplete; the next one is a full one"
                );
                (SyncResult::Partial, false)
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "sync failed; the next one is a full one");
                (SyncResult::Error, false)
            }
        };
        self.schedule.done(started, ok);
        if self.audit.next.is_none() {
            self.audit.next = Some(Instant::now() + self.audit.every);
        }
        self.metrics.record_sync(result, started.elapsed());
    }
}

/// The interfaces of both kinds, by name (for the events' interface names).
fn all_attached(pods: &Interfaces, uplinks: &Interfaces) -> BTreeMap<String, u32> {
    let mut all = pods.attached().clone();
    all.extend(uplinks.attached().iter().map(|(name, index)| (name.clone(), *index)));
    all
}

/// The settings a gateway node needs, on the interfaces matching the XDP
/// patterns: `accept_local`, because a translated packet the XDP gateway
/// hands to the stack (its next hop not resolved yet) carries this node's
/// own address as its source, which the stack otherwise drops as a martian;
/// and a warning when forwarding is off (`bpf_fib_lookup` then refuses to
/// route, and the flows are dropped as `no-route`).
fn gateway_sysctls(patterns: &[Pattern]) {
    let Ok(present) = crate::interfaces::list_interfaces() else { return };
    for (_, name) in present.iter().filter(|(_, n)| patterns.iter().any(|p| p.matches(n))) {
        let dir = std::path::Path::new("/proc/sys/net/ipv4/conf").join(name);
        let accept_local = dir.join("accept_local");
        if std::fs::read_to_string(&accept_local).is_ok_and(|v| v.trim() != "1") {
            match std::fs::write(&accept_local, "1") {
                Ok(()) => info!(interface = %name, "set net.ipv4.conf.{name}.accept_local=1 for the XDP gateway"),
                Err(e) => {
                    warn!(interface = %name, error = %e, "cannot set accept_local; packets handed to the stack may be dropped");
                }
            }
        }
        if std::fs::read_to_string(dir.join("forwarding")).is_ok_and(|v| v.trim() == "0") {
            warn!(
                interface = %name,
                "forwarding is off on this uplink: the XDP gateway cannot route (net.ipv4.conf.{name}.forwarding=1)"
            );
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
///
/// # Errors
/// When the metrics address cannot be bound, the source cannot start (a
/// kubeconfig that cannot be read, a manifest directory that cannot be
/// listed), or the datapath cannot be loaded; in that order, so nothing
/// touches the kernel before the configuration is known to work. Errors
/// after that (a bad object, a failed write, a missing interface, an
/// unreachable API server) are logged and retried, never fatal.
#[expect(clippy::too_many_lines, reason = "the agent's start-up in order, then its one loop")]
pub async fn run(options: RunConfig) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = options.metrics_addr {
        metrics::serve(addr, Arc::clone(&metrics)).await?;
    }
    let mut source = Source::start(&options.source).await?;

    // Loaded on a thread of its own: the verifier and the kernel's zeroing
    // of the maps take seconds at scale, while the source reads and parses
    // its objects here. Nothing is written before both are done.
    let load_options = options.datapath.load_options(Some(options.pin_path.clone()));
    let mut bpf = tokio::task::spawn_blocking(move || ebpf::load(&load_options))
        .await
        .context("the datapath loading thread")??;
    let mut dataplane = AyaDataplane::from_ebpf(&mut bpf)?;
    metrics.set_datapath(&mut bpf, &options.pin_path)?;
    let events = events::start(&mut bpf, options.datapath_events, options.monitor_socket.as_deref())?;
    let mode = AttachMode::detect();
    info!(pin_path = %options.pin_path.display(), ?mode, "datapath loaded");
    match &options.socket_lb {
        SocketLb::On { cgroup } => {
            sockets::attach(&mut bpf, cgroup, &options.pin_path)?;
            metrics.set_socket_cgroup(Some(cgroup));
        }
        SocketLb::Off { note } => {
            if let Some(note) = note {
                warn!("{note}");
            }
            sockets::cleanup(&options.pin_path)?;
        }
    }

    // The first rescan also removes the pins of interfaces deleted while no agent ran.
    let mut interfaces = Interfaces::new(options.interfaces.clone(), Some(options.pin_path.clone()), Target::Tc(mode));
    let mut uplinks = Interfaces::new(options.xdp_interfaces.clone(), Some(options.pin_path.clone()), Target::Xdp);
    if !uplinks.is_empty() {
        gateway_sysctls(&options.xdp_interfaces);
    }
    interfaces.rescan(&mut bpf);
    uplinks.rescan(&mut bpf);
    metrics.set_interfaces(interfaces.attached(), mode.as_str());
    metrics.set_xdp_interfaces(uplinks.xdp_modes());
    events.names().set_interfaces(&all_attached(&interfaces, &uplinks));

    let mut syncing = Syncing {
        translator: Incremental::new(options.translate.clone()),
        syncer: Syncer::with_removal_grace(options.backend_removal_grace),
        schedule: Schedule::new(options.min_sync_interval, options.max_sync_interval),
        logged: Logged::default(),
        metrics: Arc::clone(&metrics),
        events: events.clone(),
        audit: Audit::new(options.max_sync_interval),
    };
    // The interfaces were just listed: the first periodic rescan is one period away.
    let mut rescan = tokio::time::interval_at(Instant::now() + INTERFACE_RESCAN, INTERFACE_RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_synced = false;
    info!("waiting for the source to sync before writing anything");

    loop {
        let synced = source.synced();
        let deadline = synced.then(|| syncing.due(Instant::now()));
        // A link event, or the periodic rescan that backs the events up.
        let mut relist = false;
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping; maps and links stay pinned"); break; }
            _ = int.recv() => { info!("SIGINT: stopping; maps and links stay pinned"); break; }
            changed = source.changed() => {
                changed?;
                syncing.schedule.changed();
            }
            () = interfaces.changed() => relist = true,
            _ = rescan.tick() => {
                relist = true;
                metrics.sample_drops();
            }
            () = sleep_until(deadline) => {}
        }
        if relist {
            interfaces.rescan(&mut bpf);
            uplinks.rescan(&mut bpf);
            if !uplinks.is_empty() {
                gateway_sysctls(&options.xdp_interfaces);
            }
            metrics.set_interfaces(interfaces.attached(), mode.as_str());
            metrics.set_xdp_interfaces(uplinks.xdp_modes());
            events.names().set_interfaces(&all_attached(&interfaces, &uplinks));
        }
        let synced = source.synced();
        metrics.set_sources_synced(synced);
        metrics.set_source_api(source.health());
        if synced != was_synced {
            if synced {
                info!("source synced");
            } else {
                warn!("source no longer synced (its watchers restarted); holding the maps as they are");
            }
            was_synced = synced;
        }
        let now = Instant::now();
        if synced {
            syncing.audit_part(&dataplane, now);
        }
        if synced && now >= syncing.schedule_due(now) {
            syncing.sync(&source, &mut dataplane);
        }
    }
    if let Some(socket) = &options.monitor_socket {
        events::remove_socket(socket);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn the_first_sync_is_due_at_once() {
        let s = Schedule::new(MIN, MAX);
        let now = Instant::now();
        assert_eq!(s.due(now), now);
    }

    #[test]
    fn changes_wait_for_the_minimum_interval() {
        let mut s = Schedule::new(MIN, MAX);
        let t0 = Instant::now();
        s.done(t0, true);
        assert_eq!(s.due(t0), t0 + MAX, "without changes the next sync is the periodic one");
        s.changed();
        assert_eq!(s.due(t0), t0 + MIN, "a change is delayed to the minimum interval, not dropped");
        s.done(t0 + MIN, true);
        assert_eq!(s.due(t0 + MIN), t0 + MIN + MAX);
    }

    #[test]
    fn an_audit_round_spans_the_maximum_interval() {
        let audit = Audit::new(MAX);
        let short = MAX.checked_sub(audit.every * AUDIT_PARTS).expect("the parts do not last longer than the interval");
        assert!(short < Duration::from_micros(1), "{:?} a part", audit.every);
        assert!(audit.next.is_none(), "no part before the first sync");
    }

    #[test]
    fn failures_back_off_up_to_the_maximum() {
        let mut s = Schedule::new(MIN, Duration::from_secs(1));
        let t0 = Instant::now();
        s.done(t0, true);
        let mut waits = Vec::new();
        let mut t = t0;
        for _ in 0..6 {
            s.changed();
            // The syncer makes the sync after a failure a full one by itself.
            s.done(t, false);
            let due = s.due(t);
            waits.push(due - t);
            t = due;
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        s.done(t, true);
        assert_eq!(s.due(t), t + Duration::from_secs(1));
    }

    #[test]
    fn changes_are_logged_once() {
        let mut before = BTreeMap::new();
        let now: BTreeMap<String, String> = [("a".to_owned(), "a is bad".to_owned())].into();
        log_changes(&mut before, now.clone(), "gone");
        assert_eq!(before, now);
        log_changes(&mut before, BTreeMap::new(), "gone");
        assert!(before.is_empty());
    }
}
