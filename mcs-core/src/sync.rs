//! One idempotent sync: writes the difference between the desired state and
//! what the maps hold, in an order that never lets a packet see a half-written
//! service.
//!
//! Order of writes:
//! 1. cluster names that are new;
//! 2. for a chunk of service ports at a time, their backends that are new or
//!    changed (usable ones, and draining ones flagged `TERMINATING`, which
//!    keep their established flows); a backend belongs to one service port,
//!    so each port's backends are written before anything names them;
//! 3. then per service port of the chunk: its counters (when new), the
//!    address's wildcard, then its Maglev table's slots, then its service
//!    entry;
//! 4. deletions in reverse: entries of removed ports, then their affinity
//!    entries and counters (their tables' slots are left to wait, see
//!    below), wildcards of addresses with no port left, backends no port
//!    wants (after their removal grace, see below), cluster names no backend
//!    uses.
//!
//! **Tables, in place.** Every table is a run of slots of one flat array
//! (`MCS_MAGLEV`), named by its entry (`table_start`, `table_size`); the
//! size comes from the usable backend count ([`maglev::table_size_for`]).
//! A table of the size it had is rewritten where it is, one slot at a time,
//! and only the slots that change: no new map, no RCU grace period. What a
//! packet sees is then always consistent by this rule: *every slot names
//! the old or the new backend of its slot, never a removed one*, because a
//! new backend is written (step 2) before any slot names it, and a removed
//! backend leaves the backends map (step 4) only after no slot names it. A
//! table of another size goes to a free run, written in full while nothing
//! names it; the entry then moves to it with one update, and the old run
//! waits [`slots::REUSE_DELAY`] before another table may take it (a packet
//! that read the old entry may still read it). A table no port needs any
//! more waits the same way.
//!
//! **Removal grace.** A backend that leaves the desired state is, by then,
//! in no table: it takes no new connection. Its element stays, flagged
//! `REMOVED`, for the grace period (`--backend-removal-grace-seconds`), so
//! its established flows keep their translation through a blip of the
//! source (a relist, an exporting cluster's slices missing for a moment);
//! kube-proxy likewise leaves established connections alone. A backend that
//! comes back within the grace gets its old id back, so the tables are the
//! ones they were and nothing changes for its flows. After the grace the
//! element is cleared: the datapath resets that backend's TCP flows and
//! moves its UDP flows. The deadline is the syncer's; a restarted agent
//! starts the grace of what it finds flagged afresh.
//!
//! A failure on one service port (a full map, say) is reported with the
//! service's name and leaves that port as it was; the others are still
//! written. After any failure the next sync re-reads the maps in full.
//!
//! Ids: a service port keeps its id (the key of its table, counters and
//! affinity) while it exists; a backend entry belongs to one service port;
//! cluster ids are persisted in `MCS_CLUSTERS`. A restarted agent adopts all
//! of them from the maps, finds the tables through the entries, and writes
//! only the slots that differ from what it would build.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use mcs_common::{
    BACKEND_F_REMOVED, BACKEND_F_TERMINATING, Backend, ClusterName, SERVICE_F_FALLBACK, SERVICE_F_WILDCARD, ServiceKey,
    ServiceValue, limits,
};

use crate::{
    dataplane::{Dataplane, DataplaneError, cluster_name_reason},
    maglev,
    translate::{DesiredBackend, DesiredServicePort, DesiredState, EndpointState, ServicePortKey},
};

mod backends;
mod slots;
use backends::BackendTable;
pub use slots::REUSE_DELAY;
use slots::SlotSpace;

/// What one sync could not do. Each names the service port, backend or
/// cluster, so that it can be logged as it is.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The maps could not be read for a full sync: nothing was written.
    #[error("reading the maps for a full sync: {0}")]
    Reload(DataplaneError),
    /// A new cluster name could not be written.
    #[error("cluster {name:?}: {error}")]
    Cluster {
        /// The cluster.
        name: String,
        /// Why.
        error: DataplaneError,
    },
    /// A backend could not be written.
    #[error("backend {id}: {error}")]
    Backend {
        /// The backend's id.
        id: u32,
        /// Why.
        error: DataplaneError,
    },
    /// A service port that cannot be programmed as it is; it was left as it was.
    #[error("{port}: {reason}; left as it was")]
    Rejected {
        /// The service port (import, port, protocol and `ClusterSetIP`).
        port: String,
        /// Why.
        reason: Rejection,
    },
    /// A backend the service port needs could not be written; the port was
    /// left as it was.
    #[error("{port}: backend {id} could not be written; left as it was")]
    BackendNotWritten {
        /// The service port.
        port: String,
        /// The backend's id.
        id: u32,
    },
    /// Writing the service port (its counters, wildcard, table or entry) failed.
    #[error("{port}: {error}")]
    Port {
        /// The service port.
        port: String,
        /// Why.
        error: DataplaneError,
    },
    /// Deleting something no longer wanted failed.
    #[error("deleting {what}: {error}")]
    Delete {
        /// What was deleted.
        what: String,
        /// Why.
        error: DataplaneError,
    },
}

impl SyncError {
    /// Whether the message (as displayed) contains `text`, say a service's
    /// name: how logs and tests find the failures of one service.
    #[must_use]
    pub fn contains(&self, text: &str) -> bool {
        self.to_string().contains(text)
    }
}

/// Why a service port cannot be programmed at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// More backends than a service port may have, or more usable ones than
    /// the Maglev table has slots.
    #[error(
        "{total} backends exceed the limit of {limit} (and {usable} usable ones the Maglev table size {table_size})"
    )]
    TooManyBackends {
        /// Usable and draining backends.
        total: usize,
        /// [`limits::BACKENDS_PER_SERVICE_MAX`].
        limit: usize,
        /// Usable backends.
        usable: usize,
        /// The Maglev table size.
        table_size: u32,
    },
    /// A backend's cluster name cannot be stored.
    #[error("cluster name {name:?} is {}", cluster_name_reason())]
    ClusterName {
        /// The name.
        name: String,
    },
}

/// What identifies a backend entry: a pod address, port and protocol, in
/// one service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BackendIdentity {
    service_id: u32,
    addr: u32,
    port: u16,
    proto: u8,
}

impl From<&Backend> for BackendIdentity {
    fn from(b: &Backend) -> Self {
        Self { service_id: b.service_id, addr: b.addr, port: b.port, proto: b.proto }
    }
}

/// What one sync did. The syncer logs nothing: its caller reports this.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// Map writes (puts and deletes) made.
    pub writes: usize,
    /// What could not be written, each naming the service port, backend or
    /// cluster.
    pub errors: Vec<SyncError>,
    /// Whether this sync started by re-reading the maps.
    pub full: bool,
    /// Maglev tables that had slots written (in place or in a new run).
    pub tables_written: usize,
    /// Maglev slots written.
    pub slots_written: usize,
}

/// What one part of an audit ([`Syncer::audit`]) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audited {
    /// The first thing found to differ from what the syncer last wrote (or
    /// that could not be read). The syncer then re-reads the maps at its
    /// next sync, which rewrites what drifted.
    pub drift: Option<String>,
    /// Whether this part ended a round: every entry, cluster name, backend
    /// and table has been checked since the round's first part.
    pub round_done: bool,
    /// Backend ids this part looked at.
    pub backend_ids: u64,
    /// Maglev slots this part digested.
    pub slots: u64,
}

/// Where an audit round is.
#[derive(Clone, Copy, Debug, Default)]
struct AuditRound {
    /// The next part.
    part: u32,
    /// Backend ids and service ids the round covers (fixed at its first part).
    backend_ids: u32,
    service_ids: u32,
}

/// What the syncer knows of a published Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TableState {
    /// Its first slot in the flat array.
    start: u32,
    /// Its slots.
    size: u32,
    /// A digest of its content ([`maglev::digest_table`]).
    digest: u64,
    /// A digest of what it was built from (size, backend identities and
    /// ids); `None` for a table read back from the maps that this syncer
    /// did not build.
    inputs: Option<u64>,
}

/// The sync's memory of what is in the maps, and the ids it handed out.
#[derive(Debug, Default)]
pub struct Syncer {
    /// What the services map holds, as far as the syncer knows.
    services: BTreeMap<ServiceKey, ServiceValue>,
    /// What the backends map holds.
    backends: BackendTable,
    /// Ids handed out in this sync and not written yet (a bit an id), and
    /// how many.
    reserved: Vec<u64>,
    reserved_count: usize,
    /// Ids below this one fit the backends map ([`Dataplane::backend_id_limit`]).
    id_limit: u32,
    /// Cluster names by id, as in the clusters map.
    clusters: BTreeMap<u32, String>,
    cluster_ids: HashMap<String, u32>,
    /// Published tables by service id.
    tables: BTreeMap<u32, TableState>,
    /// The free slots of the flat Maglev array.
    slots: SlotSpace,
    /// Where the search for a free backend id starts (next fit: an id
    /// freed is taken again only after every other free one was).
    next_backend_id: u32,
    /// Re-read the maps before the next sync.
    stale: bool,
    /// How long a removed backend keeps its established flows.
    removal_grace: Duration,
    /// Backends in their removal grace, by id, with the end of it.
    removed: HashMap<u32, Instant>,
    /// What each service port was last written from, so that a sync that is
    /// not a full one skips the ports whose desired state did not change.
    memo: HashMap<ServiceKey, PortMemo>,
    /// Backends (in `backends`) per cluster id: a cluster name goes when
    /// its count drops to zero.
    cluster_refs: HashMap<u32, usize>,
    /// The audit round in progress.
    audit: AuditRound,
}

/// What a service port was last written from.
#[derive(Debug)]
struct PortMemo {
    /// [`port_digest`] of its desired state.
    digest: u64,
    /// Its backend ids, usable and draining.
    backend_ids: Vec<u32>,
}

/// A digest of everything the sync reads of a desired port (its names
/// only appear in messages), and the largest table size.
fn port_digest(port: &DesiredServicePort, max_table_size: u32) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    max_table_size.hash(&mut hasher);
    port.session_affinity_timeout.hash(&mut hasher);
    port.backends.hash(&mut hasher);
    port.draining.hash(&mut hasher);
    hasher.finish()
}

/// Cluster names a sync's plan adds, and the ids they get.
struct NewClusters {
    names: BTreeMap<u32, String>,
    ids: LowestFree,
}

/// The service ids in use while a sync plans, and the next free ones.
struct ServiceIds {
    /// Found when the first new id is needed: a sync that gives no port a
    /// new id does not look at every entry.
    used: Option<BTreeSet<u32>>,
    /// Whether the sync is a full one (every backend's service id counts).
    full: bool,
    free: LowestFree,
}

/// One service port's plan for this sync.
struct PortPlan<'a> {
    key: ServicePortKey,
    port: &'a DesiredServicePort,
    service_key: ServiceKey,
    value: ServiceValue,
    /// The backend ids the port needs, usable and draining.
    backend_ids: Vec<u32>,
    /// The table to write, when it may differ from the live one (its
    /// state's start is the live table's, or 0 for a table still to place).
    table: Option<(Vec<u32>, TableState)>,
    /// Why the port cannot be written at all.
    error: Option<Rejection>,
    /// The table to build (filled into `table` by [`Syncer::build_tables`]).
    job: Option<TableJob>,
}

/// A Maglev table to build: its size and the digest of what it is built
/// from. Its backends are the port's usable ones, with the first of the
/// plan's backend ids.
struct TableJob {
    size: u32,
    inputs: u64,
}

impl TableJob {
    /// The table of `backends` (sorted by identity, which gives every node
    /// the same table) with ids `ids`. The identities live only while the
    /// table is built: a cold start builds 20,000 tables, and keeping every
    /// plan's identities until its chunk was built held millions of strings.
    fn build(&self, backends: &[DesiredBackend], ids: &[u32]) -> Vec<u32> {
        let mut named: Vec<(String, u32)> =
            backends.iter().zip(ids).map(|(b, id)| (maglev::identity(&b.cluster, b.ip, b.port), *id)).collect();
        named.sort_unstable();
        let identities: Vec<&str> = named.iter().map(|(identity, _)| identity.as_str()).collect();
        maglev::build(&identities, self.size).iter().map(|i| named[*i as usize].1).collect()
    }
}

/// A table to build with what it is built from.
type BuildInput<'p> = (&'p TableJob, &'p [DesiredBackend], &'p [u32]);

/// Ports whose tables are built together, then written: enough for both
/// cores ([`PARALLEL_SLOTS`] at the ladder's size for 100 backends), few
/// enough that a cold start holds little of what it builds (a chunk of
/// 10,007-slot tables is 5 MiB).
const BUILD_CHUNK: usize = 128;

/// What step 3 of a sync keeps track of across ports.
struct PortWrites {
    /// Backends that could not be written: their ports are left as they were.
    failed_backends: BTreeSet<u32>,
    now: Instant,
    /// Ports left as they were keep their backends: their live table may name them.
    failed_services: BTreeSet<u32>,
    /// Backends the written ports had and may no longer want.
    left: Vec<u32>,
}

/// Slots to build in one sync from which a second thread pays for itself.
const PARALLEL_SLOTS: usize = 1 << 20;

/// Builds the tables of `jobs`, on every core when there are enough slots.
fn build_all(jobs: &[BuildInput<'_>]) -> Vec<Vec<u32>> {
    let slots: usize = jobs.iter().map(|(j, _, _)| j.size as usize).sum();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).min(jobs.len());
    if threads < 2 || slots < PARALLEL_SLOTS {
        return jobs.iter().map(|(j, backends, ids)| j.build(backends, ids)).collect();
    }
    let chunk = jobs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().map(|(j, backends, ids)| j.build(backends, ids)).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("building a Maglev table does not panic")).collect()
    })
}

/// A digest of what a table is built from: its size and each usable
/// backend's identity (cluster, address, port) and id, in order.
fn digest_inputs(size: u32, backends: &[(&DesiredBackend, u32)]) -> u64 {
    let mut bytes = Vec::with_capacity(4 + backends.len() * 24);
    bytes.extend_from_slice(&size.to_le_bytes());
    for (b, id) in backends {
        bytes.extend_from_slice(b.cluster.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&b.ip.octets());
        bytes.extend_from_slice(&b.port.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    maglev::siphash24(0x696e_7075_7473, 0x6469_6765_7374, &bytes)
}

/// Hands out the lowest ids (from 1 up) that are free, within one sync.
///
/// Ids are only ever taken while a sync plans, never freed, so every id
/// below the cursor stays taken: each search resumes where the last one
/// stopped, and handing out n ids costs O(n) lookups, not O(n²).
#[derive(Debug)]
struct LowestFree {
    next: u32,
}

impl LowestFree {
    const fn new() -> Self {
        Self { next: 1 }
    }

    /// The lowest id from the cursor up that `taken` does not hold.
    fn take(&mut self, taken: impl Fn(u32) -> bool) -> u32 {
        let id = (self.next..=u32::MAX).find(|id| !taken(*id)).unwrap_or(u32::MAX);
        self.next = id.saturating_add(1);
        id
    }
}

impl Syncer {
    /// A syncer that reads the maps at its first sync, adopting whatever an
    /// earlier agent left there.
    #[must_use]
    pub fn new() -> Self {
        Self { stale: true, next_backend_id: 1, ..Self::default() }
    }

    /// A syncer that keeps removed backends for `grace` before it deletes
    /// them (see the module docs); [`Syncer::new`] deletes them at once.
    #[must_use]
    pub fn with_removal_grace(grace: Duration) -> Self {
        Self { removal_grace: grace, ..Self::new() }
    }

    /// When the earliest removal grace ends: a sync is due then, changes or not.
    #[must_use]
    pub fn next_removal(&self) -> Option<Instant> {
        self.removed.values().min().copied()
    }

    /// Backends in their removal grace.
    #[must_use]
    pub fn backends_in_grace(&self) -> usize {
        self.removed.len()
    }

    /// Slots of the flat Maglev array free now, and slots that tables left
    /// and that wait [`REUSE_DELAY`] before they are free.
    #[must_use]
    pub fn maglev_slots_free(&self) -> (u64, u64) {
        self.slots.free_slots()
    }

    /// Forces the next sync to re-read the maps.
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// Checks one part of the maps against what the syncer last wrote: the
    /// periodic resync, spread over `parts` calls so that no call holds up a
    /// change for long. Part 0 of a round reads every services entry and
    /// cluster name; every part reads `1/parts` of the backend ids and
    /// digests the tables of `1/parts` of the service ids. What drifted
    /// makes the next sync re-read the maps (a full sync, which rewrites
    /// it), and the round starts again. Nothing is written here.
    ///
    /// Between syncs the syncer's memory is what the maps hold (a failed
    /// write makes the next sync a full one instead), so a round without
    /// drift ends where a full sync would have found nothing to do.
    pub fn audit(&mut self, dp: &impl Dataplane, parts: u32) -> Audited {
        let parts = parts.max(1);
        let mut audited = Audited::default();
        if self.stale {
            // The next sync re-reads everything anyway.
            self.audit = AuditRound::default();
            return audited;
        }
        if self.audit.part == 0 || self.audit.part >= parts {
            let service_ids = self.tables.keys().next_back().map_or(0, |id| id.saturating_add(1));
            self.audit = AuditRound { part: 0, backend_ids: dp.backend_id_limit(), service_ids };
        }
        let round = self.audit;
        let window = |limit: u32| {
            let at = |part: u32| u32::try_from(u64::from(limit) * u64::from(part) / u64::from(parts)).unwrap_or(limit);
            at(round.part)..at(round.part + 1)
        };
        audited.drift =
            self.audit_part(dp, round.part == 0, window(round.backend_ids), window(round.service_ids), &mut audited);
        if audited.drift.is_some() {
            self.stale = true;
            self.audit = AuditRound::default();
        } else if round.part + 1 >= parts {
            audited.round_done = true;
            self.audit = AuditRound::default();
        } else {
            self.audit.part += 1;
        }
        audited
    }

    /// [`Syncer::audit`]'s checks of one part; the first drift found.
    fn audit_part(
        &self,
        dp: &impl Dataplane,
        entries: bool,
        backend_ids: std::ops::Range<u32>,
        service_ids: std::ops::Range<u32>,
        audited: &mut Audited,
    ) -> Option<String> {
        if entries {
            let services: BTreeMap<ServiceKey, ServiceValue> = match dp.services() {
                Ok(entries) => entries.into_iter().collect(),
                Err(e) => return Some(format!("reading the services map: {e}")),
            };
            if services != self.services {
                let differs = services
                    .iter()
                    .find(|(k, v)| self.services.get(k) != Some(v))
                    .map(|(k, _)| *k)
                    .or_else(|| self.services.keys().find(|k| !services.contains_key(k)).copied());
                return Some(differs.map_or_else(|| "the services map".to_owned(), |k| format!("entry {k}")));
            }
            let clusters: BTreeMap<u32, String> = match dp.clusters() {
                Ok(names) => names.into_iter().collect(),
                Err(e) => return Some(format!("reading the cluster names: {e}")),
            };
            if clusters != self.clusters {
                return Some("the cluster names".to_owned());
            }
        }
        audited.backend_ids = u64::from(backend_ids.end - backend_ids.start);
        let live = match dp.backends_in(backend_ids.clone()) {
            Ok(live) => live,
            Err(e) => return Some(format!("reading backends {backend_ids:?}: {e}")),
        };
        let known = self.backends.range(backend_ids.clone());
        if live.len() != known.clone().count() || live.iter().zip(known).any(|((a, x), (b, y))| *a != b || x != y) {
            let first =
                live.iter().find(|(id, b)| self.backends.get(*id) != Some(b)).map(|(id, _)| *id).or_else(|| {
                    self.backends.range(backend_ids).map(|(id, _)| id).find(|id| !live.iter().any(|(l, _)| l == id))
                });
            return Some(first.map_or_else(|| "the backends".to_owned(), |id| format!("backend {id}")));
        }
        for (service_id, table) in self.tables.range(service_ids) {
            audited.slots += u64::from(table.size);
            match dp.slots_digest(table.start, table.size) {
                Ok(digest) if digest == table.digest => {}
                Ok(_) => return Some(format!("the Maglev table of service id {service_id}")),
                Err(e) => return Some(format!("reading the Maglev table of service id {service_id}: {e}")),
            }
        }
        None
    }

    fn reload(&mut self, dp: &impl Dataplane) -> Result<(), DataplaneError> {
        let old_services = std::mem::replace(&mut self.services, dp.services()?.into_iter().collect());
        let old_backends = std::mem::replace(&mut self.backends, dp.backends()?.into_iter().collect());
        let old_clusters = std::mem::take(&mut self.clusters);
        self.cluster_refs.clear();
        for (_, b) in self.backends.iter() {
            *self.cluster_refs.entry(b.cluster_id).or_insert(0) += 1;
        }
        self.next_backend_id = self.backends.last_id().map_or(1, |id| id.wrapping_add(1));
        self.clusters = dp.clusters()?.into_iter().collect();
        self.cluster_ids = self.clusters.iter().map(|(id, name)| (name.clone(), *id)).collect();
        // The tables are where the entries say. One that still holds what
        // this syncer last wrote keeps what it was built from, so an
        // unchanged port is not rebuilt.
        let known = std::mem::take(&mut self.tables);
        let capacity = dp.maglev_slots();
        for value in self.services.values().filter(|v| v.table_size != 0 && v.service_id != 0) {
            let (start, size) = (value.table_start, value.table_size);
            if u64::from(start) + u64::from(size) > u64::from(capacity) {
                continue; // Not a table this array can hold: rewritten elsewhere.
            }
            let digest = dp.slots_digest(start, size)?;
            let inputs = known
                .get(&value.service_id)
                .filter(|t| t.start == start && t.size == size && t.digest == digest)
                .and_then(|t| t.inputs);
            self.tables.insert(value.service_id, TableState { start, size, digest, inputs });
        }
        self.slots.reset(capacity, self.tables.values().map(|t| (t.start, t.size)));
        self.forget_drifted(&old_services, &old_backends, &old_clusters);
        self.stale = false;
        Ok(())
    }

    /// Keeps what each port was written from only where the maps still hold
    /// what the syncer wrote: its entry, its backends and its table. A port
    /// that drifted is planned again in full; the others are skipped, so a
    /// full sync costs the reading of the maps and what drifted.
    fn forget_drifted(
        &mut self,
        old_services: &BTreeMap<ServiceKey, ServiceValue>,
        old_backends: &BackendTable,
        old_clusters: &BTreeMap<u32, String>,
    ) {
        if *old_clusters != self.clusters {
            self.memo.clear();
            return;
        }
        let mut drifted: std::collections::HashSet<u32> = std::collections::HashSet::new();
        if *old_backends != self.backends {
            drifted.extend(self.backends.iter().filter(|(id, b)| old_backends.get(*id) != Some(b)).map(|(id, _)| id));
            drifted.extend(old_backends.ids().filter(|id| !self.backends.contains(*id)));
        }
        let (services, tables) = (&self.services, &self.tables);
        self.memo.retain(|key, memo| {
            let Some(value) = services.get(key) else { return false };
            old_services.get(key) == Some(value)
                && (value.table_size == 0 || tables.get(&value.service_id).is_some_and(|t| t.inputs.is_some()))
                && (drifted.is_empty() || !memo.backend_ids.iter().any(|id| drifted.contains(id)))
        });
    }

    fn cluster_id(&mut self, cluster: &str, new_clusters: &mut NewClusters) -> Result<u32, Rejection> {
        if let Some(id) = self.cluster_ids.get(cluster) {
            return Ok(*id);
        }
        if ClusterName::new(cluster).is_none() {
            return Err(Rejection::ClusterName { name: cluster.to_owned() });
        }
        let id = new_clusters.ids.take(|id| self.clusters.contains_key(&id) || new_clusters.names.contains_key(&id));
        new_clusters.names.insert(id, cluster.to_owned());
        self.cluster_ids.insert(cluster.to_owned(), id);
        Ok(id)
    }

    /// A free backend id below the map's limit: the first from where the
    /// last search stopped (next fit, wrapping round), so that an id freed
    /// is taken again as late as can be. Every id in use: the limit itself,
    /// whose write fails as a full map does.
    fn allocate_backend_id(&mut self) -> u32 {
        let limit = self.id_limit.max(2);
        // Every id taken: no search (a full map would otherwise cost a scan
        // of the whole id space per backend).
        if self.backends.len() + self.reserved_count >= (limit - 1) as usize {
            return limit;
        }
        let mut id = self.next_backend_id;
        // Bounded: each id below the limit is looked at once at most.
        for _ in 1..limit {
            if id == 0 || id >= limit {
                id = 1;
            }
            if !self.backends.contains(id) && !self.is_reserved(id) {
                self.reserve(id);
                self.next_backend_id = id + 1;
                return id;
            }
            id += 1;
        }
        limit
    }

    fn is_reserved(&self, id: u32) -> bool {
        self.reserved.get(id as usize / 64).is_some_and(|word| word & (1 << (id % 64)) != 0)
    }

    fn reserve(&mut self, id: u32) {
        let word = id as usize / 64;
        if self.reserved.len() <= word {
            self.reserved.resize(word + 1, 0);
        }
        self.reserved[word] |= 1 << (id % 64);
        self.reserved_count += 1;
    }

    /// Service ids in use: the entries', the tables', and the backends'. In
    /// a sync that is not a full one, every backend belongs to an entry's
    /// port but those in their removal grace (the previous sync had no
    /// failure, or this one would be full), so only those are looked at.
    fn service_ids_in_use(&self, full: bool) -> BTreeSet<u32> {
        let backends: Vec<u32> = if full {
            self.backends.iter().map(|(_, b)| b.service_id).collect()
        } else {
            self.removed.keys().filter_map(|id| self.backends.get(*id)).map(|b| b.service_id).collect()
        };
        self.services.values().map(|v| v.service_id).chain(self.tables.keys().copied()).chain(backends).collect()
    }

    /// Records that the backends map holds `backend` at `id`.
    fn remember_backend(&mut self, id: u32, backend: Backend) {
        *self.cluster_refs.entry(backend.cluster_id).or_insert(0) += 1;
        if let Some(old) = self.backends.insert(id, backend) {
            self.forget_cluster_ref(old.cluster_id);
        }
    }

    /// Records that the backends map no longer holds `id`.
    fn forget_backend(&mut self, id: u32) -> Option<Backend> {
        let old = self.backends.remove(id)?;
        self.forget_cluster_ref(old.cluster_id);
        Some(old)
    }

    fn forget_cluster_ref(&mut self, cluster_id: u32) {
        if let Some(n) = self.cluster_refs.get_mut(&cluster_id) {
            *n = n.saturating_sub(1);
        }
    }

    /// Brings the maps to `desired`.
    ///
    /// # Errors
    /// Only when the maps cannot be read at all; failures to write one service
    /// port are reported in the outcome and do not stop the others.
    pub fn sync(&mut self, dp: &mut impl Dataplane, desired: &DesiredState) -> Result<SyncOutcome, SyncError> {
        self.sync_at(dp, desired, Instant::now())
    }

    /// [`Syncer::sync`] at the time `now` (for removal graces).
    ///
    /// # Errors
    /// As [`Syncer::sync`].
    pub fn sync_at(
        &mut self,
        dp: &mut impl Dataplane,
        desired: &DesiredState,
        now: Instant,
    ) -> Result<SyncOutcome, SyncError> {
        self.sync_changed_at(dp, desired, None, now)
    }

    /// [`Syncer::sync`], told which service ports may differ from the
    /// desired state of the previous call: `changed` lists every port that
    /// was added, changed or removed since then (it may list more). A sync
    /// that is not a full one then looks only at those, and at the ports
    /// whose last write failed; `None` means any port may have changed.
    ///
    /// # Errors
    /// As [`Syncer::sync`].
    pub fn sync_changed(
        &mut self,
        dp: &mut impl Dataplane,
        desired: &DesiredState,
        changed: Option<&BTreeSet<ServicePortKey>>,
    ) -> Result<SyncOutcome, SyncError> {
        self.sync_changed_at(dp, desired, changed, Instant::now())
    }

    /// [`Syncer::sync_changed`] at the time `now`.
    ///
    /// # Errors
    /// As [`Syncer::sync`].
    pub fn sync_changed_at(
        &mut self,
        dp: &mut impl Dataplane,
        desired: &DesiredState,
        changed: Option<&BTreeSet<ServicePortKey>>,
        now: Instant,
    ) -> Result<SyncOutcome, SyncError> {
        let mut outcome = SyncOutcome { full: self.stale, ..SyncOutcome::default() };
        if self.stale {
            self.reload(dp).map_err(SyncError::Reload)?;
        }
        self.slots.reclaim(now);
        self.id_limit = dp.backend_id_limit();
        let table_size = dp.maglev_table_size();

        // Plan: ids, backends and tables of every desired port that changed
        // since it was last written (every port, in a full sync).
        let full = outcome.full;
        let mut new_clusters = NewClusters { names: BTreeMap::new(), ids: LowestFree::new() };
        let mut service_ids = ServiceIds { used: None, full, free: LowestFree::new() };
        let mut plans = Vec::new();
        let mut digests = Vec::new();
        let mut written_ports: BTreeSet<ServiceKey> = BTreeSet::new();
        // Backends of the ports skipped in a full sync: wanted as they are.
        let mut kept: Vec<u32> = Vec::new();
        // A port the caller says is unchanged, whose last write succeeded
        // (it has a memo), is as it was written: no digest is needed.
        // Told which ports may differ (and not a full sync), only those are
        // looked at: the others, and their entries, stay as they are.
        let only = changed.filter(|_| !full);
        let ports: Box<dyn Iterator<Item = (&ServicePortKey, &DesiredServicePort)>> = match only {
            Some(listed) => Box::new(listed.iter().filter_map(|key| Some((key, desired.services.get(key)?)))),
            None => Box::new(desired.services.iter()),
        };
        let listed = |key: &ServicePortKey| full || changed.is_none_or(|c| c.contains(key));
        for (key, port) in ports {
            let service_key = ServiceKey::new(key.ip, key.port, key.protocol.number());
            if !listed(key) && self.memo.contains_key(&service_key) && self.services.contains_key(&service_key) {
                written_ports.insert(service_key);
                continue;
            }
            let digest = port_digest(port, table_size);
            if let Some(memo) = self.memo.get(&service_key).filter(|m| m.digest == digest)
                && self.services.contains_key(&service_key)
            {
                written_ports.insert(service_key);
                if full {
                    kept.extend(memo.backend_ids.iter().copied());
                }
                continue;
            }
            digests.push(digest);
            plans.push(self.plan_port(*key, port, table_size, &mut service_ids, &mut new_clusters));
        }
        // The backends the desired ports want (sorted, for the deletions).
        let mut wanted: Vec<u32> = plans
            .iter()
            .filter(|p| p.error.is_none())
            .flat_map(|p| p.backend_ids.iter().copied())
            .chain(kept)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();

        // 1. Cluster names.
        self.write_clusters(dp, &new_clusters, &mut outcome);

        // 2. and 3., a chunk of ports at a time: their backends that are
        // new or changed; then per port its counters, wildcard, table and
        // entry. A chunk's tables are built (on both cores when it pays)
        // just before they are written, so that a cold start holds neither
        // every built table nor every backend's value at once. A backend
        // belongs to one service port, so it is written before any slot
        // names it.
        let mut step =
            PortWrites { failed_backends: BTreeSet::new(), now, failed_services: BTreeSet::new(), left: Vec::new() };
        let mut digests = digests.into_iter();
        for chunk in plans.chunks_mut(BUILD_CHUNK) {
            self.write_backends(dp, chunk, &mut step.failed_backends, &mut outcome);
            self.build_tables(chunk);
            for plan in chunk.iter_mut() {
                written_ports.insert(plan.service_key);
                let digest = digests.next().unwrap_or_default();
                self.write_planned(dp, plan, digest, &mut step, &mut outcome);
                plan.table = None;
            }
        }
        let PortWrites { failed_services, left, .. } = step;

        // 4. Deletions, in reverse.
        let candidates = (!full).then_some(left);
        // The ports that may have gone: the listed ones, or every one.
        let gone: Option<Vec<ServiceKey>> = only.map(|listed| {
            listed
                .iter()
                .map(|key| ServiceKey::new(key.ip, key.port, key.protocol.number()))
                .filter(|key| self.services.contains_key(key))
                .collect()
        });
        self.delete_stale(
            dp,
            (&written_ports, &wanted, &failed_services),
            (candidates, gone.as_deref()),
            now,
            &mut outcome,
        );

        // Ids handed out for backends that were not written are free again
        // (the written ones are in the table).
        self.reserved.clear();
        self.reserved_count = 0;
        if !outcome.errors.is_empty() {
            // After any failure the next sync re-reads the maps.
            self.stale = true;
        }
        Ok(outcome)
    }

    /// Step 3 for one planned port: reports why it cannot be written, or
    /// writes it and remembers what it was written from.
    fn write_planned(
        &mut self,
        dp: &mut impl Dataplane,
        plan: &mut PortPlan<'_>,
        digest: u64,
        step: &mut PortWrites,
        outcome: &mut SyncOutcome,
    ) {
        let old = self.memo.remove(&plan.service_key);
        if let Some(reason) = &plan.error {
            outcome.errors.push(SyncError::Rejected { port: describe(plan.key, plan.port), reason: reason.clone() });
            step.failed_services.insert(plan.value.service_id);
            return;
        }
        if let Some(id) = plan.backend_ids.iter().find(|id| step.failed_backends.contains(id)) {
            outcome.errors.push(SyncError::BackendNotWritten { port: describe(plan.key, plan.port), id: *id });
            step.failed_services.insert(plan.value.service_id);
            return;
        }
        if let Err(error) = self.write_port(dp, plan, step.now, outcome) {
            outcome.errors.push(SyncError::Port { port: describe(plan.key, plan.port), error });
            step.failed_services.insert(plan.value.service_id);
            return;
        }
        step.left.extend(old.into_iter().flat_map(|m| m.backend_ids));
        self.memo.insert(plan.service_key, PortMemo { digest, backend_ids: std::mem::take(&mut plan.backend_ids) });
    }

    /// Writes the cluster names a sync's plan adds. A name that fails loses
    /// its id, so its backends are not written (see `write_backends`).
    fn write_clusters(&mut self, dp: &mut impl Dataplane, new_clusters: &NewClusters, outcome: &mut SyncOutcome) {
        for (id, name) in &new_clusters.names {
            match dp.put_cluster(*id, name) {
                Ok(()) => {
                    self.clusters.insert(*id, name.clone());
                    outcome.writes += 1;
                }
                Err(error) => {
                    self.cluster_ids.remove(name);
                    outcome.errors.push(SyncError::Cluster { name: name.clone(), error });
                }
            }
        }
    }

    /// Step 2 for the ports of `plans`: writes the backends they need that
    /// the map does not hold as wanted, in one call (by id). A backend whose
    /// cluster name could not be written, or whose write failed, is added
    /// to `failed_backends`.
    fn write_backends(
        &mut self,
        dp: &mut impl Dataplane,
        plans: &[PortPlan<'_>],
        failed_backends: &mut BTreeSet<u32>,
        outcome: &mut SyncOutcome,
    ) {
        let mut changed: Vec<(u32, Backend)> = Vec::new();
        for plan in plans.iter().filter(|p| p.error.is_none()) {
            let all = plan.port.backends.iter().map(|b| (b, false)).chain(plan.port.draining.iter().map(|b| (b, true)));
            for ((b, draining), id) in all.zip(&plan.backend_ids) {
                let flags = if draining || b.state == EndpointState::Terminating { BACKEND_F_TERMINATING } else { 0 };
                // A cluster whose name could not be written has no id: its
                // backends are not written, and their ports stay as they were.
                let Some(cluster_id) = self.cluster_ids.get(&*b.cluster).copied() else {
                    failed_backends.insert(*id);
                    continue;
                };
                let backend =
                    Backend::new(b.ip, b.port, plan.key.protocol.number(), flags, cluster_id, plan.value.service_id);
                if self.backends.get(*id) == Some(&backend) {
                    continue;
                }
                changed.push((*id, backend));
            }
        }
        changed.sort_unstable_by_key(|(id, _)| *id);
        let mut results = dp.put_backends(&changed).into_iter();
        for (id, backend) in &changed {
            let result = results.next().unwrap_or_else(|| {
                Err(DataplaneError::Invalid {
                    what: format!("backend {id}"),
                    reason: "the write gave no result".into(),
                })
            });
            match result {
                Ok(()) => {
                    self.remember_backend(*id, *backend);
                    outcome.writes += 1;
                }
                Err(error) => {
                    failed_backends.insert(*id);
                    outcome.errors.push(SyncError::Backend { id: *id, error });
                }
            }
        }
    }

    fn plan_port<'a>(
        &mut self,
        key: ServicePortKey,
        port: &'a DesiredServicePort,
        table_size: u32,
        service_ids: &mut ServiceIds,
        new_clusters: &mut NewClusters,
    ) -> PortPlan<'a> {
        let proto = key.protocol.number();
        let service_key = ServiceKey::new(key.ip, key.port, proto);
        let existing = self.services.get(&service_key).copied();
        let service_id = existing.map_or_else(
            || {
                let used = service_ids.used.get_or_insert_with(|| self.service_ids_in_use(service_ids.full));
                let id = service_ids.free.take(|id| used.contains(&id));
                used.insert(id);
                id
            },
            |v| v.service_id,
        );
        let mut plan = PortPlan {
            key,
            port,
            service_key,
            value: ServiceValue {
                service_id,
                table_size: 0,
                table_start: 0,
                affinity_timeout: port.session_affinity_timeout.unwrap_or(0),
                flags: 0,
                pad: 0,
                pad2: 0,
            },
            backend_ids: Vec::new(),
            table: None,
            error: None,
            job: None,
        };
        let total = port.backends.len() + port.draining.len();
        if total > limits::BACKENDS_PER_SERVICE_MAX || port.backends.len() > table_size as usize {
            plan.error = Some(Rejection::TooManyBackends {
                total,
                limit: limits::BACKENDS_PER_SERVICE_MAX,
                usable: port.backends.len(),
                table_size,
            });
            return plan;
        }
        plan.backend_ids.reserve_exact(total);
        // The port's backends keep their ids (a backend that comes back in
        // its removal grace gets its old one).
        let mut known: HashMap<BackendIdentity, u32> = self
            .backends
            .of_service(service_id)
            .iter()
            .filter_map(|id| Some((BackendIdentity::from(self.backends.get(*id)?), *id)))
            .collect();
        let mut usable: Vec<(&DesiredBackend, u32)> = Vec::with_capacity(port.backends.len());
        for (b, in_table) in port.backends.iter().map(|b| (b, true)).chain(port.draining.iter().map(|b| (b, false))) {
            if let Err(rejection) = self.cluster_id(&b.cluster, new_clusters) {
                plan.error = Some(rejection);
                return plan;
            }
            let identity = identity_of(b, proto, service_id);
            let id = if let Some(id) = known.get(&identity) {
                *id
            } else {
                let id = self.allocate_backend_id();
                known.insert(identity, id);
                id
            };
            plan.backend_ids.push(id);
            if in_table {
                usable.push((b, id));
            }
        }
        if usable.is_empty() {
            return plan;
        }
        let size = maglev::table_size_for(usable.len(), table_size);
        plan.value.table_size = size;
        if port.backends.iter().all(|b| b.state == EndpointState::Terminating) {
            plan.value.flags |= SERVICE_F_FALLBACK;
        }
        let inputs = digest_inputs(size, &usable);
        let live = self.tables.get(&service_id).copied();
        if let Some(live) = live.filter(|t| t.size == size) {
            plan.value.table_start = live.start;
            if live.inputs == Some(inputs) {
                return plan;
            }
        }
        plan.job = Some(TableJob { size, inputs });
        plan
    }

    /// Builds the tables the plans need (on both cores when it pays) and
    /// keeps those that differ from the live ones.
    fn build_tables(&mut self, plans: &mut [PortPlan<'_>]) {
        let jobs: Vec<BuildInput<'_>> = plans
            .iter()
            .filter_map(|p| {
                Some((p.job.as_ref()?, p.port.backends.as_slice(), &p.backend_ids[..p.port.backends.len()]))
            })
            .collect();
        let tables = build_all(&jobs);
        let mut tables = tables.into_iter();
        for plan in plans.iter_mut() {
            let Some(job) = plan.job.take() else { continue };
            let Some(table) = tables.next() else { break };
            let service_id = plan.value.service_id;
            let live = self.tables.get(&service_id).copied();
            let state = TableState {
                start: plan.value.table_start,
                size: job.size,
                digest: maglev::digest_table(&table),
                inputs: Some(job.inputs),
            };
            if live.is_some_and(|t| t.size == state.size && t.digest == state.digest) {
                // Adopted from the maps and unchanged: remember what it was built from.
                self.tables.insert(service_id, state);
            } else {
                plan.table = Some((table, state));
            }
        }
    }

    fn write_port(
        &mut self,
        dp: &mut impl Dataplane,
        plan: &PortPlan<'_>,
        now: Instant,
        outcome: &mut SyncOutcome,
    ) -> Result<(), DataplaneError> {
        let service_id = plan.value.service_id;
        let existing = self.services.get(&plan.service_key).copied();
        if existing.is_none() {
            dp.reset_service_stats(service_id)?;
            outcome.writes += 1;
        }
        // The datapath looks for the wildcard before the entry: it must be
        // there before the entry makes the port live.
        let wildcard = ServiceKey::wildcard(plan.key.ip);
        let wildcard_value = ServiceValue { flags: SERVICE_F_WILDCARD, ..ServiceValue::default() };
        if self.services.get(&wildcard) != Some(&wildcard_value) {
            dp.put_service(wildcard, wildcard_value)?;
            self.services.insert(wildcard, wildcard_value);
            outcome.writes += 1;
        }
        let live = self.tables.get(&service_id).copied();
        let mut value = plan.value;
        if let Some((table, state)) = &plan.table {
            let in_place = live.filter(|t| t.size == state.size);
            let start = match in_place {
                Some(t) => t.start,
                // A table of a new size goes to a free run nothing names.
                None => self.slots.allocate(state.size).ok_or_else(|| DataplaneError::Full {
                    map: mcs_common::map_names::MAGLEV,
                    what: format!("placing a Maglev table of {} slots (raise --maglev-slots-max)", state.size),
                })?,
            };
            let written = match dp.write_slots(start, table) {
                Ok(written) => written,
                Err(error) => {
                    if in_place.is_none() {
                        self.slots.give_back(start, state.size);
                    } else {
                        // Partly rewritten: each slot names an old or a new
                        // backend of the port, both kept; rebuilt next time.
                        self.tables.insert(service_id, TableState { inputs: None, ..live.unwrap_or(*state) });
                    }
                    return Err(error);
                }
            };
            value.table_start = start;
            if in_place.is_some() {
                self.tables.insert(service_id, TableState { start, ..*state });
            }
            outcome.writes += written;
            outcome.slots_written += written;
            if written > 0 {
                outcome.tables_written += 1;
            }
            if in_place.is_none() {
                if let Err(error) = self.put_entry(dp, plan.service_key, value, outcome) {
                    self.slots.give_back(start, state.size);
                    return Err(error);
                }
                self.tables.insert(service_id, TableState { start, ..*state });
                if let Some(old) = live {
                    self.slots.release(old.start, old.size, now);
                }
                return Ok(());
            }
        }
        self.put_entry(dp, plan.service_key, value, outcome)?;
        if value.table_size == 0
            && let Some(old) = self.tables.remove(&service_id)
        {
            self.slots.release(old.start, old.size, now);
        }
        Ok(())
    }

    fn put_entry(
        &mut self,
        dp: &mut impl Dataplane,
        key: ServiceKey,
        value: ServiceValue,
        outcome: &mut SyncOutcome,
    ) -> Result<(), DataplaneError> {
        if self.services.get(&key) != Some(&value) {
            dp.put_service(key, value)?;
            self.services.insert(key, value);
            outcome.writes += 1;
        }
        Ok(())
    }

    /// Deletes, in order: entries of removed ports with their tables,
    /// affinity and counters; wildcards of addresses with no port left;
    /// tables no entry names; backends nothing wants; unused cluster names.
    fn delete_stale(
        &mut self,
        dp: &mut impl Dataplane,
        (written_ports, wanted, failed_services): (&BTreeSet<ServiceKey>, &[u32], &BTreeSet<u32>),
        (candidates, listed): (Option<Vec<u32>>, Option<&[ServiceKey]>),
        now: Instant,
        outcome: &mut SyncOutcome,
    ) {
        // Entries no written port kept: among the listed ports when the
        // sync was told which may differ, else among all.
        let stale = |(k, v): (&ServiceKey, &ServiceValue)| {
            (!k.is_wildcard() && !written_ports.contains(k)).then_some((*k, v.service_id))
        };
        let stale_ports: Vec<(ServiceKey, u32)> = match listed {
            Some(keys) => keys.iter().filter_map(|k| self.services.get_key_value(k)).filter_map(stale).collect(),
            None => self.services.iter().filter_map(stale).collect(),
        };
        let addresses: Option<BTreeSet<u32>> = listed.map(|_| stale_ports.iter().map(|(k, _)| k.addr).collect());
        let mut candidates = candidates;
        for (key, service_id) in stale_ports {
            if let Some(memo) = self.memo.remove(&key)
                && let Some(c) = &mut candidates
            {
                c.extend(memo.backend_ids);
            }
            let result = dp
                .delete_service(&key)
                .and_then(|()| {
                    self.services.remove(&key);
                    outcome.writes += 1;
                    if let Some(old) = self.tables.remove(&service_id) {
                        self.slots.release(old.start, old.size, now);
                    }
                    dp.forget_affinity(service_id)
                })
                .and_then(|()| dp.delete_service_stats(service_id));
            match result {
                Ok(()) => outcome.writes += 1,
                Err(error) => outcome.errors.push(SyncError::Delete { what: key.to_string(), error }),
            }
        }
        let stale_wildcards = self.stale_wildcards(addresses);
        for key in stale_wildcards {
            match dp.delete_service(&key) {
                Ok(()) => {
                    self.services.remove(&key);
                    outcome.writes += 1;
                }
                Err(error) => outcome.errors.push(SyncError::Delete { what: key.to_string(), error }),
            }
        }
        // Which backends may be unwanted now: every one in a full sync; else
        // those the written and the deleted ports had, and those in grace.
        let unwanted: Vec<u32> = match candidates {
            None => self.backends.ids().collect(),
            Some(mut c) => {
                c.extend(self.removed.keys().copied());
                c.sort_unstable();
                c.dedup();
                c
            }
        };
        let unwanted: Vec<u32> = unwanted
            .into_iter()
            .filter(|id| {
                self.backends
                    .get(*id)
                    .is_some_and(|b| wanted.binary_search(id).is_err() && !failed_services.contains(&b.service_id))
            })
            .collect();
        for id in wanted {
            self.removed.remove(id);
        }
        for id in self.end_of_grace(dp, unwanted, now, outcome) {
            match dp.delete_backend(id) {
                Ok(()) => {
                    self.forget_backend(id);
                    outcome.writes += 1;
                }
                Err(error) => outcome.errors.push(SyncError::Delete { what: format!("backend {id}"), error }),
            }
        }
        let refs = &self.cluster_refs;
        let unused_clusters: Vec<u32> =
            self.clusters.keys().filter(|id| refs.get(id).is_none_or(|n| *n == 0)).copied().collect();
        for id in unused_clusters {
            match dp.delete_cluster(id) {
                Ok(()) => {
                    if let Some(name) = self.clusters.remove(&id) {
                        self.cluster_ids.remove(&name);
                    }
                    outcome.writes += 1;
                }
                Err(error) => outcome.errors.push(SyncError::Delete { what: format!("cluster {id}"), error }),
            }
        }
        let clusters = &self.clusters;
        self.cluster_ids.retain(|_, id| clusters.contains_key(id));
        let backends = &self.backends;
        self.removed.retain(|id, _| backends.contains(*id));
    }

    /// Wildcards of addresses left with no port: of `addresses` (those whose
    /// ports went, when the sync was told which may differ), or of all.
    fn stale_wildcards(&self, addresses: Option<BTreeSet<u32>>) -> Vec<ServiceKey> {
        let Some(addresses) = addresses else {
            let live_vips: BTreeSet<u32> = self.services.keys().filter(|k| !k.is_wildcard()).map(|k| k.addr).collect();
            return self.services.keys().filter(|k| k.is_wildcard() && !live_vips.contains(&k.addr)).copied().collect();
        };
        addresses
            .into_iter()
            .map(|addr| ServiceKey::from_nbo(addr, 0, 0))
            .filter(|wildcard| {
                let last = ServiceKey { addr: wildcard.addr, port: u16::MAX, proto: u8::MAX, pad: u8::MAX };
                self.services.contains_key(wildcard)
                    && !self.services.range(*wildcard..=last).any(|(k, _)| !k.is_wildcard())
            })
            .collect()
    }

    /// Which backends no port wants may go now (their grace is over, or
    /// there is none). The others are flagged `REMOVED` (once) and their
    /// grace starts; a flagging that fails is reported.
    fn end_of_grace(
        &mut self,
        dp: &mut impl Dataplane,
        unwanted: Vec<u32>,
        now: Instant,
        outcome: &mut SyncOutcome,
    ) -> Vec<u32> {
        if self.removal_grace.is_zero() {
            return unwanted;
        }
        let mut expired = Vec::new();
        for id in unwanted {
            let deadline = *self.removed.entry(id).or_insert(now + self.removal_grace);
            if now >= deadline {
                expired.push(id);
                continue;
            }
            let Some(backend) = self.backends.get(id).copied() else { continue };
            if backend.flags & BACKEND_F_REMOVED == 0 {
                let flagged = Backend { flags: backend.flags | BACKEND_F_REMOVED, ..backend };
                match dp.put_backend(id, flagged) {
                    Ok(()) => {
                        self.remember_backend(id, flagged);
                        outcome.writes += 1;
                    }
                    Err(error) => outcome.errors.push(SyncError::Backend { id, error }),
                }
            }
        }
        expired
    }
}

fn identity_of(b: &DesiredBackend, proto: u8, service_id: u32) -> BackendIdentity {
    BackendIdentity { service_id, addr: mcs_common::ipv4_to_nbo(b.ip), port: b.port.to_be(), proto }
}

fn describe(key: ServicePortKey, port: &DesiredServicePort) -> String {
    format!("ServiceImport {}/{} port {}/{} ({})", port.namespace, port.name, key.port, key.protocol.as_str(), key.ip)
}

#[cfg(test)]
mod tests;
