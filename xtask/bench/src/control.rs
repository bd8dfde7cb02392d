//! Control plane, from the file source: cold start of a large ClusterSet,
//! the latency of one EndpointSlice change, peak RSS, and the maps' memory.
//!
//! - Cold start: from spawning `mcs-agent run --source file` to its first
//!   `synced` log line that reports every service port (`service_ports`) and no
//!   errors. The maps are then counted (keys walked in the pinned
//!   `MCS_SERVICES`, layout-free; the present slots of the `MCS_BACKENDS`
//!   array, through the agent's own reader) and reported beside it.
//! - One change: a probe service (one port, one endpoint) is rewritten on disk
//!   with a new endpoint address (written aside, renamed into place). Its
//!   latency ends when the datapath, reading the agent's pinned maps, sends a
//!   new flow to the new address: a private copy of the programs, loaded over
//!   the pins, is run with `BPF_PROG_TEST_RUN` on a SYN from a fresh source
//!   port every 200 us. This observes the map update itself, whatever the
//!   services map looks like inside. The arrival of the agent's next `synced`
//!   line is recorded too.
//! - Peak RSS: `VmHWM` of the agent at the end. Maps' memory: `memlock` of
//!   every map the agent holds or pinned (fdinfo and `bpftool -f map show`).
use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use mcs_agent::ebpf::{self, LoadOptions};
use mcs_common::{map_names, program_names};
use mcs_tests::{
    netns::{NetNs, unique_prefix},
    packet::{PacketSpec, SYN},
};

use mcs_tests::fakeapi::{FakeApi, FakeApiOptions};

use crate::{
    agent::{Agent, AgentSource, TempDir},
    interrupted,
    mgen::{self, Export, Port, Service},
    stats,
};

const PROBE_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const PROBE_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// ServiceImports (the probe is one of them).
    pub imports: u32,
    /// Ports per import.
    pub ports: u16,
    /// Exporting clusters per import.
    pub clusters: u32,
    /// Endpoints per cluster.
    pub per_cluster: u32,
    /// EndpointSlice changes.
    pub changes: u32,
    /// Longest wait for the cold start.
    pub cold_timeout: Duration,
    /// Longest wait for one change.
    pub change_timeout: Duration,
    /// Longest time for all the changes together (fewer are made if it runs out).
    pub change_budget: Duration,
}

/// Which source the agent reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// Manifest files, polled every 10 ms.
    #[default]
    File,
    /// The Kubernetes API: the fake API server of the tests
    /// (`mcs_tests::fakeapi`: list, then watch), in the agent's namespace.
    Kube,
}

impl Source {
    /// Its `--only` selector (`control` selects both).
    #[must_use]
    pub const fn selector(self) -> &'static str {
        match self {
            Self::File => "control-file",
            Self::Kube => "control-kube",
        }
    }

    /// Its name in the report.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::File => "file source",
            Self::Kube => "Kubernetes source, fake API server",
        }
    }
}

impl Settings {
    /// The quick run's settings (small enough for CI) or the full run's.
    #[must_use]
    pub const fn for_run(quick: bool) -> Self {
        if quick {
            Self {
                imports: 1000,
                ports: 2,
                clusters: 5,
                per_cluster: 20,
                changes: 20,
                cold_timeout: Duration::from_mins(1),
                change_timeout: Duration::from_secs(5),
                change_budget: Duration::from_secs(30),
            }
        } else {
            Self {
                imports: 10_000,
                ports: 2,
                clusters: 5,
                per_cluster: 20,
                changes: 100,
                cold_timeout: Duration::from_mins(5),
                change_timeout: Duration::from_secs(30),
                change_budget: Duration::from_mins(8),
            }
        }
    }
}

/// The control-plane section of the report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The source measured.
    pub source: Source,
    /// What was loaded.
    pub setup: String,
    /// Service ports expected.
    pub expected_ports: u64,
    /// Seconds to the first `synced` line.
    pub first_sync_secs: f64,
    /// `service_ports` and `errors` of that line.
    pub first_sync: (u64, u64),
    /// Seconds to fully programmed (every port, no errors), if reached.
    pub cold_start_secs: Option<f64>,
    /// Entries in the services and backends maps after the cold start.
    pub entries: (u64, u64),
    /// Change latency through the datapath, ms, per change.
    pub change_ms: Vec<f64>,
    /// Change latency to the `synced` log line, ms.
    pub change_log_ms: Vec<f64>,
    /// `translate_ms` and `sync_ms` of the cold start's last `synced` line.
    pub cold_phases: (f64, f64),
    /// `translate_ms` and `sync_ms` of each change's `synced` line.
    pub change_phases: Vec<(f64, f64)>,
    /// `translate_ms` and `sync_ms` of each periodic full resync seen
    /// while the changes ran.
    pub full_resyncs: Vec<(f64, f64)>,
    /// Audit rounds (the periodic resync, in parts) that ended while the
    /// changes ran: the longest part and all parts' time, ms.
    pub audits: Vec<(f64, f64)>,
    /// Drifts the audit reported while the changes ran.
    pub drifts: u32,
    /// The map capacities the agent was given.
    pub capacities: String,
    /// Changes that were not seen within the timeout.
    pub change_timeouts: u32,
    /// Agent peak RSS, MiB.
    pub peak_rss_mib: f64,
    /// memlock per map name, bytes.
    pub memlock: BTreeMap<String, u64>,
    /// Maglev slots the tables use after the cold start (the sum of the
    /// entries' table sizes).
    pub table_slots: u64,
}

impl Report {
    /// Median and 99th percentile of the change latency, ms.
    #[must_use]
    pub fn change(&self) -> (f64, f64) {
        {
            let p = stats::percentiles(&self.change_ms, &[50.0, 99.0]);
            (p[0], p[1])
        }
    }

    /// Medians of the translate and sync phases of a change, ms.
    #[must_use]
    pub fn change_phases(&self) -> (f64, f64) {
        let t: Vec<f64> = self.change_phases.iter().map(|p| p.0).collect();
        let s: Vec<f64> = self.change_phases.iter().map(|p| p.1).collect();
        (stats::median(&t), stats::median(&s))
    }

    /// The 99th percentile of the agent's own time per change (translate
    /// and sync of the change's `synced` line), ms.
    #[must_use]
    pub fn agent_p99(&self) -> f64 {
        let own: Vec<f64> = self.change_phases.iter().map(|p| p.0 + p.1).collect();
        stats::percentile(&own, 99.0)
    }

    /// The same for the log line.
    #[must_use]
    pub fn change_log(&self) -> (f64, f64) {
        {
            let p = stats::percentiles(&self.change_log_ms, &[50.0, 99.0]);
            (p[0], p[1])
        }
    }

    /// Total memlock, MiB.
    #[must_use]
    pub fn memlock_mib(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "bytes to MiB")]
        let total = self.memlock.values().sum::<u64>() as f64;
        total / (1024.0 * 1024.0)
    }
}

/// Keys of the pinned hash map `name` (key type `K`, value type `V`) under `pin_path`.
fn count_keys<K: aya::Pod, V: aya::Pod>(pin_path: &Path, name: &str) -> Result<u64> {
    use aya::maps::{HashMap, MapData};
    let map: HashMap<MapData, K, V> = HashMap::try_from(mcs_agent::dataplane::open_pinned(pin_path, name)?)
        .with_context(|| format!("{name} as a hash map"))?;
    Ok(map.keys().flatten().count() as u64)
}

/// Slots the live tables use: the sum of the pinned entries' table sizes.
fn table_slots(pin_path: &Path) -> Result<u64> {
    use mcs_agent::dataplane::Dataplane as _;
    let dp = mcs_agent::dataplane::AyaDataplane::from_pins(pin_path)?;
    let services = dp.services().context("reading MCS_SERVICES")?;
    Ok(services.iter().filter(|(k, _)| !k.is_wildcard()).map(|(_, v)| u64::from(v.table_size)).sum())
}

/// Backends in the pinned `MCS_BACKENDS` array (elements that hold one).
fn present_backends(pin_path: &Path) -> Result<u64> {
    use mcs_agent::dataplane::Dataplane as _;
    let dp = mcs_agent::dataplane::AyaDataplane::from_pins(pin_path)?;
    Ok(dp.backends().context("reading MCS_BACKENDS")?.len() as u64)
}

/// The memlock of the flat Maglev array (every table's slots): it is the
/// inner map of `MCS_MAGLEV`, neither pinned nor held by the agent as a pin,
/// so it is counted here. Returns its map id, slots and memlock.
fn maglev_memlock(pin_path: &Path) -> Result<(u32, u64, u64)> {
    use aya::maps::{HashOfMaps, IterableMap as _, MapData};
    let outer: HashOfMaps<MapData, u32, aya::maps::Array<MapData, mcs_common::MaglevPair>> =
        HashOfMaps::try_from(mcs_agent::dataplane::open_pinned(pin_path, map_names::MAGLEV)?)
            .context("MCS_MAGLEV as a hash of maps")?;
    let inner = outer.get(&mcs_common::MAGLEV_ARRAY_KEY, 0).context("the Maglev array")?;
    let info = inner.map().info().context("the array's map info")?;
    let out = Command::new("bpftool").args(["-j", "map", "show", "id", &info.id().to_string()]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok((info.id(), u64::from(info.max_entries()) * 2, v["bytes_memlock"].as_u64().unwrap_or(0)))
}

/// memlock of every map the agent holds an fd of, or pinned under its directory.
fn memlock(agent: &Agent) -> BTreeMap<String, u64> {
    let mut by_id: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    if let Ok(out) = Command::new("bpftool").args(["-j", "-f", "map", "show"]).output() {
        let maps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let pin = agent.pin_path.to_string_lossy().into_owned();
        for m in maps.as_array().into_iter().flatten() {
            let pinned = m.get("pinned").and_then(|p| p.as_array()).into_iter().flatten();
            if pinned.filter_map(|p| p.as_str()).any(|p| p.starts_with(&pin))
                && let (Some(id), Some(bytes)) = (m["id"].as_u64(), m["bytes_memlock"].as_u64())
            {
                by_id.insert(id, (m["name"].as_str().unwrap_or("?").to_owned(), bytes));
            }
        }
    }
    // fdinfo also shows maps that are held but not pinned (inner maps, say).
    if let Ok(dir) = fs::read_dir(format!("/proc/{}/fdinfo", agent.pid())) {
        for entry in dir.flatten() {
            let Ok(text) = fs::read_to_string(entry.path()) else { continue };
            let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok());
            if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
                by_id.entry(id).or_insert_with(|| (format!("map id {id}"), bytes));
            }
        }
    }
    let mut out = BTreeMap::new();
    for (name, bytes) in by_id.into_values() {
        *out.entry(name).or_insert(0) += bytes;
    }
    out
}

fn probe_service(address: Ipv4Addr) -> Service {
    Service {
        name: "probe".into(),
        vip: PROBE_VIP,
        ports: vec![Port::new("http", 80, 8080)],
        exports: vec![Export { cluster: "c0".into(), addresses: vec![address] }],
    }
}

/// The probe's endpoint for change `i`: never the same twice in a row.
fn probe_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, u8::try_from(1 + i % 250).unwrap_or(1))
}

/// Where the datapath sends a new flow to the probe service now.
fn probe(prog: &SchedClassifier, port: u16) -> Option<Ipv4Addr> {
    let frame = PacketSpec::tcp((PROBE_CLIENT, port), (PROBE_VIP, 80), SYN).build();
    let mut out = vec![0u8; frame.len() + 64];
    let r =
        prog.test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..Default::default() }).ok()?;
    // Translated packets go on with TCX_NEXT (`TC_ACT_UNSPEC`, -1), as untouched ones do.
    (r.return_value == u32::MAX && r.data_size_out as usize >= 34)
        .then(|| Ipv4Addr::new(out[30], out[31], out[32], out[33]))
        .filter(|dst| *dst != PROBE_VIP)
}

/// The `--max-sync-interval-ms` the agent is given: the length of an audit round.
pub const AUDIT_ROUND: Duration = Duration::from_secs(8);

/// Records an audit round's end or a drift it found, if `line` is one.
fn audited(line: &crate::agent::Line, report: &mut Report) {
    let f = |k: &str| line.field(k).and_then(|v| v.trim_matches('"').parse::<f64>().ok()).unwrap_or(f64::NAN);
    if line.text.contains("maps audited") {
        report.audits.push((f("longest_part_ms"), f("total_ms")));
    } else if line.text.contains("the maps differ from what was written") {
        report.drifts += 1;
    }
}

/// Runs the control-plane benchmarks.
///
/// # Errors
/// When the agent cannot start or the manifests cannot be written.
#[expect(clippy::too_many_lines, reason = "one sequential procedure: set up, cold start, changes, read-out")]
pub fn run(s: Settings, source: Source) -> Result<Report> {
    let prefix = unique_prefix("bench");
    let node = NetNs::new(&format!("{prefix}-cp"));
    node.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    node.ip(&["link", "set", "d0", "up"]);
    node.ip(&["link", "set", "lo", "up"]);
    let dir = TempDir::new(&format!("{prefix}-manifests"))?;
    let t = Instant::now();
    let fillers = s.imports.saturating_sub(1);
    let shape = mgen::Shape { ports: s.ports, clusters: s.clusters, per_cluster: s.per_cluster };
    let probe_file = dir.0.join("zz-probe.json");
    let kubeconfig = dir.0.join("kubeconfig");
    // The fake API server listens in the agent's namespace.
    let api = match source {
        Source::File => {
            mgen::write_services(&dir.0, (0..fillers).map(|i| mgen::filler(i, shape)), 500)?;
            mgen::write_list(&probe_file, &probe_service(probe_address(0)).objects())?;
            None
        }
        Source::Kube => {
            let listener = node.enter(|| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
            let api = FakeApi::start_with(listener, FakeApiOptions::default());
            for object in (0..fillers).flat_map(|i| mgen::filler(i, shape).objects()) {
                api.apply(object);
            }
            for object in probe_service(probe_address(0)).objects() {
                api.apply(object);
            }
            api.write_kubeconfig(&kubeconfig);
            Some(api)
        }
    };
    let mut report = Report {
        source,
        setup: format!(
            "{} imports ({} x {} ports x {} clusters x {} endpoints, plus the probe import of 1 port and 1 endpoint), \
             generated in {:.1} s",
            s.imports,
            fillers,
            s.ports,
            s.clusters,
            s.per_cluster,
            t.elapsed().as_secs_f64()
        ),
        expected_ports: u64::from(fillers) * u64::from(s.ports) + 1,
        ..Report::default()
    };
    println!("   {}", report.setup);

    // Capacities for the set, with room for the changes (a new backend is
    // written before the old one goes).
    let backends = u64::from(fillers) * u64::from(s.ports) * u64::from(s.clusters) * u64::from(s.per_cluster) + 1;
    // Every filler port's table has the ladder's size for its backends; room
    // for the probe's and for tables that wait before their run is reused.
    let table = u64::from(mcs_agent::maglev::table_size_for(
        usize::try_from(s.clusters * s.per_cluster).unwrap_or(usize::MAX),
        mcs_common::limits::MAGLEV_TABLE_SIZE,
    ));
    let slots = u64::from(fillers) * u64::from(s.ports) * table + (1 << 20);
    let capacities = [
        ("--backends-max", backends + 1024),
        ("--services-max", report.expected_ports + u64::from(s.imports) + 1024),
        ("--service-ports-max", report.expected_ports + 1024),
        ("--maglev-slots-max", slots),
    ];
    report.capacities = capacities.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(" ");
    let mut extra: Vec<String> = capacities.iter().flat_map(|(k, v)| [(*k).to_owned(), v.to_string()]).collect();
    // An audit round (the periodic resync) every AUDIT_ROUND instead of the
    // default 30 s: its parts come four times as often, so the changes meet
    // more of them, and rounds end within the changes.
    extra.extend(["--max-sync-interval-ms".to_owned(), AUDIT_ROUND.as_millis().to_string()]);
    let agent_source = match source {
        Source::File => AgentSource::File(&dir.0),
        Source::Kube => AgentSource::Kube(&kubeconfig),
    };
    let mut agent = Agent::start_source(&node, agent_source, "d0", &prefix, &extra)?;
    let first = agent.wait_synced(s.cold_timeout, |_| true)?;
    let phases = |l: &crate::agent::Line| {
        let f = |k: &str| l.field(k).and_then(|v| v.trim_matches('"').parse::<f64>().ok()).unwrap_or(f64::NAN);
        (f("translate_ms"), f("sync_ms"))
    };
    report.cold_phases = phases(&first);
    report.first_sync_secs = (first.at - agent.started).as_secs_f64();
    report.first_sync = (first.number("service_ports").unwrap_or(0), first.number("errors").unwrap_or(0));
    let expected = report.expected_ports;
    let complete =
        |l: &crate::agent::Line| l.number("service_ports") == Some(expected) && l.number("errors") == Some(0);
    if complete(&first) {
        report.cold_start_secs = Some(report.first_sync_secs);
    } else if let Ok(line) = agent.wait_synced(Duration::from_secs(20), complete) {
        report.cold_start_secs = Some((line.at - agent.started).as_secs_f64());
        report.cold_phases = phases(&line);
    }
    report.entries = (
        count_keys::<mcs_common::ServiceKey, mcs_common::ServiceValue>(&agent.pin_path, map_names::SERVICES)?,
        present_backends(&agent.pin_path)?,
    );
    report.table_slots = table_slots(&agent.pin_path)?;
    println!(
        "   first sync after {:.2} s: {} of {expected} service ports, {} errors; fully programmed: {}; maps hold {} \
         service and {} backend entries",
        report.first_sync_secs,
        report.first_sync.0,
        report.first_sync.1,
        report.cold_start_secs.map_or_else(|| "never".to_owned(), |c| format!("{c:.2} s")),
        report.entries.0,
        report.entries.1
    );

    // Changes, observed through a private copy of the programs over the pins.
    let ebpf = ebpf::load(&LoadOptions { pin_path: Some(agent.pin_path.clone()), ..LoadOptions::default() })?;
    let prog: &SchedClassifier =
        ebpf.program(program_names::FROM_POD).context("from_pod program")?.try_into().context("tc program")?;
    let mut port: u16 = 1024;
    let mut next_port = || {
        port = if port == u16::MAX { 1024 } else { port + 1 };
        port
    };
    if probe(prog, next_port()) != Some(probe_address(0)) {
        bail!("the probe service is not programmed after the cold start");
    }
    let aside_dir = TempDir::new(&format!("{prefix}-aside"))?;
    let aside = aside_dir.0.join("probe.json");
    let budget = Instant::now() + s.change_budget;
    for i in 1..=s.changes {
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() > budget {
            println!("   change budget of {:?} spent after {} changes", s.change_budget, i - 1);
            break;
        }
        while let Ok(line) = agent.lines.try_recv() {
            if line.is_synced() && line.field("full") == Some("true") {
                report.full_resyncs.push(phases(&line));
            }
            audited(&line, &mut report);
        }
        let want = probe_address(i);
        let objects = probe_service(want).objects();
        let written = if let Some(api) = &api {
            // The slice only (the import is as it was): one watch event.
            for object in objects.into_iter().skip(1) {
                api.apply(object);
            }
            Instant::now()
        } else {
            mgen::write_list(&aside, &objects)?;
            fs::rename(&aside, &probe_file).context("renaming the probe manifest into place")?;
            Instant::now()
        };
        let deadline = written + s.change_timeout;
        let mut seen = None;
        for _ in 0..10_000_000 {
            if probe(prog, next_port()) == Some(want) {
                seen = Some(written.elapsed());
                break;
            }
            if Instant::now() > deadline || interrupted() {
                break;
            }
            thread::sleep(Duration::from_micros(200));
        }
        match seen {
            Some(d) => report.change_ms.push(d.as_secs_f64() * 1e3),
            None => report.change_timeouts += 1,
        }
        // The synced line that followed the write, if it came.
        let log_deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(line) = agent.lines.recv_timeout(log_deadline.saturating_duration_since(Instant::now())) {
            if line.is_synced() && line.field("full") == Some("true") {
                report.full_resyncs.push(phases(&line));
            }
            audited(&line, &mut report);
            if line.is_synced() && line.at >= written {
                report.change_log_ms.push((line.at - written).as_secs_f64() * 1e3);
                report.change_phases.push(phases(&line));
                break;
            }
        }
        // Let the agent settle (and any minimum sync interval pass) before the next change.
        thread::sleep(Duration::from_millis(150));
    }
    report.peak_rss_mib = agent.peak_rss_kib().map_or(0.0, |k| {
        #[expect(clippy::cast_precision_loss, reason = "KiB to MiB")]
        let k = k as f64;
        k / 1024.0
    });
    report.memlock = memlock(&agent);
    match maglev_memlock(&agent.pin_path) {
        Ok((id, slots, bytes)) => {
            // The agent holds its fd: fdinfo found it too, under its id.
            report.memlock.remove(&format!("map id {id}"));
            report
                .memlock
                .insert(format!("the Maglev array ({slots} slots, {} used by tables)", report.table_slots), bytes);
        }
        Err(e) => eprintln!("   the Maglev array's memlock not measured: {e:#}"),
    }
    drop(ebpf);
    drop(agent);
    drop(api);
    Ok(report)
}
