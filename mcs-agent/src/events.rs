//! Datapath events (`mcs_common::event`) on the agent's side: read from the
//! loaded object's ring buffer, written into the agent's log, and streamed
//! to `mcs-agent monitor` over a Unix socket.
//!
//! Why a ring buffer of our own typed struct, and a socket, rather than
//! aya-log: aya-log's reader attaches to the log map of the `Ebpf` that
//! loaded the programs, in that process, and turns each record into a text
//! line; `monitor` runs in another process and wants the fields (reason,
//! tuple, service) as data. A BPF ring buffer has a single consumer
//! position, so the agent, which must read the events for its log anyway,
//! is their one reader and hands them on: each `monitor` connects to the
//! socket next to nothing else of the agent's, and says which events it
//! wants.
//!
//! Switching: the programs write an event only while its bit is set in
//! `MCS_EVENT_FLAGS`. The bits are the agent's own `--datapath-events`
//! (what it logs) plus what the connected monitors ask for, so events are
//! off unless someone looks, and no program is reloaded to switch them.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, RingBuf},
};
use mcs_common::{
    DropReason,
    event::{
        EVENT_DROP, EVENT_FLAGS_MAP, EVENT_FROM_POD, EVENT_GATEWAY, EVENT_REFUSED, EVENT_RESET, EVENT_TRANSLATED,
        EVENTS_DROPS, EVENTS_MAP, EVENTS_TRANSLATIONS, Event,
    },
    ipv4_from_nbo,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::unix::AsyncFd,
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};
use tracing::{debug, info, warn};

use crate::translate::{DesiredServicePort, DesiredState, Protocol, ServicePortKey};

/// Which events the agent itself logs (`--datapath-events`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventLevel {
    /// None (the default): events are written only while a monitor asks.
    #[default]
    Off,
    /// Drops, refusals and resets.
    Drops,
    /// Those and each new translation (logged at debug level).
    All,
}

impl EventLevel {
    /// Every level.
    pub const ALL: [Self; 3] = [Self::Off, Self::Drops, Self::All];

    /// The name on the command line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Drops => "drops",
            Self::All => "all",
        }
    }

    /// The level named `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == name)
    }

    const fn bits(self) -> u32 {
        match self {
            Self::Off => 0,
            Self::Drops => EVENTS_DROPS,
            Self::All => EVENTS_DROPS | EVENTS_TRANSLATIONS,
        }
    }
}

/// Where the agent pinning under `pin_path` serves its events: one socket
/// per pin directory, `/run/mcs-agent/<pin directory's name>.monitor.sock`,
/// so `monitor --pin-path` finds its agent as `inspect` does.
#[must_use]
pub fn socket_path(pin_path: &Path) -> PathBuf {
    let name = pin_path.file_name().map_or_else(|| "mcs".into(), |n| n.to_string_lossy().into_owned());
    Path::new("/run/mcs-agent").join(format!("{name}.monitor.sock"))
}

/// One event as the agent logs it and streams it (a JSON line per event;
/// field names documented in docs/datapath.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// `drop`, `refused`, `reset` or `translated`.
    pub kind: String,
    /// The drop reason (`unknown-port`, `no-backend`, ...); `None` for translations.
    pub reason: Option<String>,
    /// `TCP`, `UDP`, `ICMP`, or the protocol number; `None` when the packet could not be parsed.
    pub protocol: Option<String>,
    /// The packet's source, `ip:port` (`ip` when it has no port).
    pub source: String,
    /// The packet's destination, as the source.
    pub destination: String,
    /// The backend, `ip:port`, for translations.
    pub backend: Option<String>,
    /// The import whose ClusterSetIP the packet was for, `namespace/name`, when known.
    pub service: Option<String>,
    /// The interface, by name when the agent attached to it (else `#ifindex`).
    pub interface: String,
    /// `from-pod` or `to-pod`.
    pub direction: String,
    /// `CLOCK_MONOTONIC` of the datapath, ns (the conntrack clock).
    pub time_ns: u64,
}

impl EventRecord {
    /// Whether this is a drop, a refusal or a reset (not a translation).
    #[must_use]
    pub fn is_drop(&self) -> bool {
        self.kind != "translated"
    }
}

/// What names the agent knows for what the datapath reports by number.
#[derive(Debug, Default)]
pub struct Names {
    ports: BTreeMap<(Ipv4Addr, u16, u8), String>,
    ips: BTreeMap<Ipv4Addr, String>,
    interfaces: BTreeMap<u32, String>,
}

impl Names {
    /// Takes the imports of a translation.
    pub fn set_services(&mut self, desired: &DesiredState) {
        self.update_services(desired, None);
    }

    /// Takes the imports of a translation of which only the ports in
    /// `changed` differ from the last one taken (all of them when `None`).
    /// An address is named by its last port in key order.
    pub fn update_services(&mut self, desired: &DesiredState, changed: Option<&BTreeSet<ServicePortKey>>) {
        let name = |port: &DesiredServicePort| format!("{}/{}", port.namespace, port.name);
        let Some(changed) = changed else {
            self.ports.clear();
            self.ips.clear();
            for (key, port) in &desired.services {
                self.ports.insert((key.ip, key.port, key.protocol.number()), name(port));
                self.ips.insert(key.ip, name(port));
            }
            return;
        };
        let mut addresses = BTreeSet::new();
        for key in changed {
            let at = (key.ip, key.port, key.protocol.number());
            match desired.services.get(key) {
                Some(port) => self.ports.insert(at, name(port)),
                None => self.ports.remove(&at),
            };
            addresses.insert(key.ip);
        }
        for ip in addresses {
            let first = ServicePortKey { ip, port: 0, protocol: Protocol::Tcp };
            let last = ServicePortKey { ip, port: u16::MAX, protocol: Protocol::Udp };
            match desired.services.range(first..=last).next_back() {
                Some((_, port)) => self.ips.insert(ip, name(port)),
                None => self.ips.remove(&ip),
            };
        }
    }

    /// Takes the attached interfaces (name to ifindex).
    pub fn set_interfaces(&mut self, attached: &BTreeMap<String, u32>) {
        self.interfaces = attached.iter().map(|(name, index)| (*index, name.clone())).collect();
    }

    fn service(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<String> {
        self.ports.get(&(ip, port, proto)).or_else(|| self.ips.get(&ip)).cloned()
    }

    /// What `event` says, with names.
    #[must_use]
    pub fn record(&self, event: &Event) -> EventRecord {
        let endpoint = |addr: u32, port: u16| {
            let ip = ipv4_from_nbo(addr);
            if port == 0 { ip.to_string() } else { format!("{ip}:{}", u16::from_be(port)) }
        };
        let kind = match event.kind {
            EVENT_DROP => "drop",
            EVENT_REFUSED => "refused",
            EVENT_RESET => "reset",
            EVENT_TRANSLATED => "translated",
            _ => "unknown",
        };
        let reason = (event.kind != EVENT_TRANSLATED).then(|| {
            DropReason::ALL
                .iter()
                .find(|r| **r as u32 == u32::from(event.reason))
                .map_or_else(|| format!("reason-{}", event.reason), |r| r.name().to_owned())
        });
        let protocol = (event.proto != 0).then(|| {
            Protocol::from_number(event.proto).map_or_else(|| proto_name(event.proto), |p| p.as_str().to_owned())
        });
        let daddr = ipv4_from_nbo(event.daddr);
        EventRecord {
            kind: kind.to_owned(),
            reason,
            protocol,
            source: endpoint(event.saddr, event.sport),
            destination: endpoint(event.daddr, event.dport),
            backend: (event.kind == EVENT_TRANSLATED).then(|| endpoint(event.backend_addr, event.backend_port)),
            service: self.service(daddr, u16::from_be(event.dport), event.proto),
            interface: self.interfaces.get(&event.ifindex).cloned().unwrap_or_else(|| format!("#{}", event.ifindex)),
            direction: match event.direction {
                EVENT_FROM_POD => "from-pod",
                EVENT_GATEWAY => "gateway",
                _ => "to-pod",
            }
            .to_owned(),
            time_ns: event.time_ns,
        }
    }
}

fn proto_name(number: u8) -> String {
    if number == mcs_common::proto::ICMP { "ICMP".to_owned() } else { number.to_string() }
}

/// What a monitor asks for, its first line on the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorRequest {
    /// Each new translation too, not only drops, refusals and resets.
    pub translations: bool,
}

/// The flag map and who wants what.
struct Flags {
    map: Array<MapData, u32>,
    own: u32,
    drop_watchers: usize,
    translation_watchers: usize,
}

impl Flags {
    fn bits(&self) -> u32 {
        let mut bits = self.own;
        if self.drop_watchers > 0 {
            bits |= EVENTS_DROPS;
        }
        if self.translation_watchers > 0 {
            bits |= EVENTS_TRANSLATIONS;
        }
        bits
    }

    fn write(&mut self) {
        let bits = self.bits();
        match self.map.set(0, bits, 0) {
            Ok(()) => debug!(bits, "datapath events switched"),
            Err(e) => warn!(error = %e, "switching datapath events failed"),
        }
    }

    fn watch(&mut self, request: MonitorRequest, delta: isize) {
        self.drop_watchers = self.drop_watchers.saturating_add_signed(delta);
        if request.translations {
            self.translation_watchers = self.translation_watchers.saturating_add_signed(delta);
        }
        self.write();
    }
}

/// The events side of a running agent.
#[derive(Clone)]
pub struct Events {
    names: Arc<Mutex<Names>>,
}

impl Events {
    /// The names the records are made with (the run loop keeps them current).
    pub fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes the event maps out of `bpf`, switches the agent's own `level` on,
/// and starts reading the ring buffer and serving monitors on `socket`
/// (`None`: no monitors; a socket that cannot be bound is logged).
///
/// # Errors
/// When a map is missing or of another type.
pub fn start(bpf: &mut Ebpf, level: EventLevel, socket: Option<&Path>) -> Result<Events> {
    let ring = RingBuf::try_from(bpf.take_map(EVENTS_MAP).context("map MCS_EVENTS is missing")?)
        .context("map MCS_EVENTS is not a ring buffer")?;
    let flags_map: Array<MapData, u32> =
        Array::try_from(bpf.take_map(EVENT_FLAGS_MAP).context("map MCS_EVENT_FLAGS is missing")?)
            .context("map MCS_EVENT_FLAGS is not an array of u32")?;
    let mut flags = Flags { map: flags_map, own: level.bits(), drop_watchers: 0, translation_watchers: 0 };
    flags.write();
    let flags = Arc::new(Mutex::new(flags));
    let names = Arc::new(Mutex::new(Names::default()));
    let (tx, _) = broadcast::channel::<Arc<EventRecord>>(4096);
    // Read-only interest: a ring buffer's fd is readable when events wait.
    // SAFETY: the ring buffer owns its map's fd, open and unchanged until it
    // is dropped, and the `AsyncFd` owns the ring buffer.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling MCS_EVENTS: {e}"))?;
    tokio::spawn(read(ring, level, Arc::clone(&names), tx.clone()));
    // Without the socket the datapath and the log work as before: not fatal.
    if let Some(path) = socket {
        match bind(path) {
            Ok(listener) => {
                info!(socket = %path.display(), "serving datapath events to `mcs-agent monitor`");
                tokio::spawn(serve(listener, flags, tx));
            }
            Err(e) => warn!(error = %format!("{e:#}"), "no `mcs-agent monitor` for this agent"),
        }
    }
    Ok(Events { names })
}

fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by an agent that was killed: nothing listens on it.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path)
        .with_context(|| format!("binding the monitor socket {} (is an agent using it?)", path.display()))
}

/// Removes the monitor socket of a stopping agent.
pub fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(socket = %path.display(), error = %e, "removing the monitor socket failed");
    }
}

async fn read(
    mut ring: AsyncFd<RingBuf<MapData>>,
    level: EventLevel,
    names: Arc<Mutex<Names>>,
    tx: broadcast::Sender<Arc<EventRecord>>,
) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!(error = %e, "reading datapath events failed; no more events");
                return;
            }
        };
        let buffer = guard.get_inner_mut();
        while let Some(item) = buffer.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the programs write whole `Event`s (48 bytes, checked
            // above); `Event` is plain integers, valid for any bits.
            let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let record = names.lock().unwrap_or_else(PoisonError::into_inner).record(&event);
            log(level, &record);
            // No monitor listening is not an error.
            let _ = tx.send(Arc::new(record));
        }
        guard.clear_ready();
    }
}

fn log(level: EventLevel, r: &EventRecord) {
    let service = r.service.as_deref().unwrap_or("-");
    match (level, r.is_drop()) {
        (EventLevel::Drops | EventLevel::All, true) => info!(
            target: "mcs_agent::datapath",
            kind = %r.kind,
            reason = r.reason.as_deref().unwrap_or("-"),
            protocol = r.protocol.as_deref().unwrap_or("-"),
            source = %r.source,
            destination = %r.destination,
            service,
            interface = %r.interface,
            "datapath {}", r.kind
        ),
        (EventLevel::All, false) => debug!(
            target: "mcs_agent::datapath",
            protocol = r.protocol.as_deref().unwrap_or("-"),
            source = %r.source,
            destination = %r.destination,
            backend = r.backend.as_deref().unwrap_or("-"),
            service,
            interface = %r.interface,
            "datapath translated"
        ),
        _ => {}
    }
}

async fn serve(listener: UnixListener, flags: Arc<Mutex<Flags>>, tx: broadcast::Sender<Arc<EventRecord>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(watch(stream, Arc::clone(&flags), tx.subscribe()));
            }
            Err(e) => {
                warn!(error = %e, "monitor socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One monitor: its request, then its events until it hangs up.
async fn watch(stream: UnixStream, flags: Arc<Mutex<Flags>>, mut rx: broadcast::Receiver<Arc<EventRecord>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let request = match tokio::time::timeout(std::time::Duration::from_secs(5), lines.next_line()).await {
        Ok(Ok(Some(line))) => match serde_json::from_str::<MonitorRequest>(&line) {
            Ok(request) => request,
            Err(e) => {
                let _ = write.write_all(format!("{{\"error\":\"bad request: {e}\"}}\n").as_bytes()).await;
                return;
            }
        },
        _ => return,
    };
    let lock = |f: &Arc<Mutex<Flags>>| f.lock().unwrap_or_else(PoisonError::into_inner).watch(request, 1);
    lock(&flags);
    info!(translations = request.translations, "a monitor connected");
    // Hang-ups show up as a read of end of file.
    let hung_up = async { while let Ok(Some(_)) = lines.next_line().await {} };
    tokio::pin!(hung_up);
    loop {
        tokio::select! {
            () = &mut hung_up => break,
            received = rx.recv() => match received {
                Ok(record) => {
                    if !request.translations && !record.is_drop() {
                        continue;
                    }
                    let mut line = serde_json::to_vec(&*record).expect("an event record always serializes");
                    line.push(b'\n');
                    if write.write_all(&line).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    let _ = write.write_all(format!("{{\"lost\":{lost}}}\n").as_bytes()).await;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    flags.lock().unwrap_or_else(PoisonError::into_inner).watch(request, -1);
    info!("a monitor went away");
}

#[cfg(test)]
mod tests {
    use mcs_common::ipv4_to_nbo;

    use super::*;

    fn port(namespace: &str, name: &str) -> DesiredServicePort {
        DesiredServicePort {
            namespace: namespace.into(),
            name: name.into(),
            port_name: "p".into(),
            session_affinity_timeout: None,
            backends: Vec::new(),
            draining: Vec::new(),
        }
    }

    /// Ports added (with their import's name), then ports removed.
    type Step = (Vec<(ServicePortKey, &'static str)>, Vec<ServicePortKey>);

    #[test]
    fn names_updated_port_by_port_are_the_names_taken_whole() {
        let key = |last: u8, port: u16, protocol: Protocol| ServicePortKey {
            ip: Ipv4Addr::new(198, 19, 0, last),
            port,
            protocol,
        };
        let mut desired = DesiredState::default();
        let mut updated = Names::default();
        // Each step: ports added (with their import's name), then ports removed.
        let steps: [Step; 4] = [
            (
                vec![
                    (key(1, 80, Protocol::Tcp), "a"),
                    (key(1, 53, Protocol::Udp), "a-dns"),
                    (key(2, 80, Protocol::Tcp), "b"),
                ],
                vec![],
            ),
            (vec![(key(1, 90, Protocol::Udp), "a-late")], vec![key(2, 80, Protocol::Tcp)]),
            (vec![], vec![key(1, 90, Protocol::Udp)]),
            (vec![(key(2, 80, Protocol::Tcp), "b2")], vec![key(1, 80, Protocol::Tcp), key(1, 53, Protocol::Udp)]),
        ];
        for (i, (added, removed)) in steps.into_iter().enumerate() {
            let mut changed = BTreeSet::new();
            for (k, name) in &added {
                desired.services.insert(*k, port("demo", name));
                changed.insert(*k);
            }
            for k in &removed {
                desired.services.remove(k);
                changed.insert(*k);
            }
            updated.update_services(&desired, Some(&changed));
            let mut whole = Names::default();
            whole.set_services(&desired);
            assert_eq!((&updated.ports, &updated.ips), (&whole.ports, &whole.ips), "step {i}");
        }
        assert_eq!(updated.ips.len(), 1, "198.19.0.1 lost all its ports: {:?}", updated.ips);
    }

    #[test]
    fn records_name_the_reason_tuple_service_and_interface() {
        let mut names = Names::default();
        let mut desired = DesiredState::default();
        desired.services.insert(
            ServicePortKey { ip: Ipv4Addr::new(198, 19, 0, 10), port: 80, protocol: Protocol::Tcp },
            DesiredServicePort {
                namespace: "demo".into(),
                name: "whoami".into(),
                port_name: "http".into(),
                session_affinity_timeout: None,
                backends: Vec::new(),
                draining: Vec::new(),
            },
        );
        names.set_services(&desired);
        names.set_interfaces(&[("cpod".to_owned(), 7)].into());
        let event = Event {
            kind: EVENT_DROP,
            reason: DropReason::UnknownPort as u8,
            proto: mcs_common::proto::TCP,
            direction: EVENT_FROM_POD,
            ifindex: 7,
            saddr: ipv4_to_nbo(Ipv4Addr::new(198, 18, 0, 2)),
            daddr: ipv4_to_nbo(Ipv4Addr::new(198, 19, 0, 10)),
            sport: 40_000u16.to_be(),
            dport: 81u16.to_be(),
            ..Event::default()
        };
        let r = names.record(&event);
        assert_eq!(
            (r.kind.as_str(), r.reason.as_deref(), r.protocol.as_deref()),
            ("drop", Some("unknown-port"), Some("TCP"))
        );
        assert_eq!((r.source.as_str(), r.destination.as_str()), ("198.18.0.2:40000", "198.19.0.10:81"));
        assert_eq!(r.service.as_deref(), Some("demo/whoami"), "an unlisted port of a known ClusterSetIP");
        assert_eq!((r.interface.as_str(), r.direction.as_str()), ("cpod", "from-pod"));
        assert!(r.backend.is_none() && r.is_drop());
        let other = names.record(&Event { daddr: ipv4_to_nbo(Ipv4Addr::new(198, 19, 0, 99)), ifindex: 9, ..event });
        assert_eq!((other.service, other.interface.as_str()), (None, "#9"));
    }

    #[test]
    fn levels_and_socket_paths() {
        assert_eq!(EventLevel::Off.bits(), 0);
        assert_eq!(EventLevel::All.bits(), EVENTS_DROPS | EVENTS_TRANSLATIONS);
        assert_eq!(socket_path(Path::new("/sys/fs/bpf/mcs")), Path::new("/run/mcs-agent/mcs.monitor.sock"));
    }
}
