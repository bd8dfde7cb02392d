//! One idempotent sync: writes the difference between the desired state and
//! what the maps hold, in an order that never lets a packet see a half-written
//! service.
//!
//! Order of writes:
//! 1. cluster names that are new;
//! 2. backends that are new or changed (usable ones, and draining ones
//!    flagged `TERMINATING`, which keep their established flows);
//! 3. per service port: its counters (when new), the address's wildcard, then
//!    its Maglev table (built in full and swapped in with one update) and its
//!    service entry, in the order that keeps every slot index the entry
//!    allows inside the live table;
//! 4. deletions in reverse: entries of removed ports, then their tables,
//!    affinity entries and counters, wildcards of addresses with no port
//!    left, tables nothing names, backends no port wants (after their
//!    removal grace, see below), cluster names no backend uses.
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
//! of them from the maps, reads the tables back, and rewrites only the tables
//! whose content differs from what it would build.
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
    /// Maglev tables built and published.
    pub tables_written: usize,
}

/// What the syncer knows of a published Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TableState {
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
    backends: BTreeMap<u32, Backend>,
    backend_ids: HashMap<BackendIdentity, u32>,
    /// Cluster names by id, as in the clusters map.
    clusters: BTreeMap<u32, String>,
    cluster_ids: HashMap<String, u32>,
    /// Published tables by service id.
    tables: BTreeMap<u32, TableState>,
    next_backend_id: u32,
    /// Whether `next_backend_id` has wrapped around: ids above it may be in use.
    ids_wrapped: bool,
    /// Re-read the maps before the next sync.
    stale: bool,
    /// How long a removed backend keeps its established flows.
    removal_grace: Duration,
    /// Backends in their removal grace, by id, with the end of it.
    removed: HashMap<u32, Instant>,
}

/// Cluster names a sync's plan adds, and the ids they get.
struct NewClusters {
    names: BTreeMap<u32, String>,
    ids: LowestFree,
}

/// The service ids in use while a sync plans, and the next free ones.
struct ServiceIds {
    used: BTreeSet<u32>,
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
    /// The table to publish, when it differs from the live one.
    table: Option<(Vec<u32>, TableState)>,
    /// Why the port cannot be written at all.
    error: Option<Rejection>,
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

    /// Forces the next sync to re-read the maps.
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    fn reload(&mut self, dp: &impl Dataplane) -> Result<(), DataplaneError> {
        self.services = dp.services()?.into_iter().collect();
        self.backends = dp.backends()?.into_iter().collect();
        self.backend_ids = self.backends.iter().map(|(id, b)| (BackendIdentity::from(b), *id)).collect();
        let max_id = self.backends.keys().next_back().copied().unwrap_or(0);
        self.next_backend_id = max_id.checked_add(1).unwrap_or(1);
        self.ids_wrapped = max_id == u32::MAX;
        self.clusters = dp.clusters()?.into_iter().collect();
        self.cluster_ids = self.clusters.iter().map(|(id, name)| (name.clone(), *id)).collect();
        // A table that still holds what this syncer last published keeps
        // what it was built from, so an unchanged port is not rebuilt.
        let known = std::mem::take(&mut self.tables);
        for id in dp.table_ids()? {
            if let Some((size, digest)) = dp.table_digest(id)? {
                let inputs = known.get(&id).filter(|t| t.size == size && t.digest == digest).and_then(|t| t.inputs);
                self.tables.insert(id, TableState { size, digest, inputs });
            }
        }
        self.stale = false;
        Ok(())
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

    fn allocate_backend_id(&mut self, identity: BackendIdentity) -> u32 {
        if let Some(id) = self.backend_ids.get(&identity) {
            return *id;
        }
        // The counter only moves forward, so ids handed out in one sync never
        // collide: until it wraps, every id in use is below it. After it wraps
        // (four billion ids later) it skips ids in use, at the cost of a scan.
        let mut id = self.next_backend_id.max(1);
        if self.ids_wrapped {
            while self.backends.contains_key(&id) || self.backend_ids.values().any(|v| *v == id) {
                id = id.wrapping_add(1).max(1);
            }
        }
        self.next_backend_id = id.wrapping_add(1);
        if self.next_backend_id == 0 {
            self.next_backend_id = 1;
            self.ids_wrapped = true;
        }
        self.backend_ids.insert(identity, id);
        id
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
        let mut outcome = SyncOutcome { full: self.stale, ..SyncOutcome::default() };
        if self.stale {
            self.reload(dp).map_err(SyncError::Reload)?;
        }
        let table_size = dp.maglev_table_size();

        // Plan: ids, backends and tables of every desired port.
        let mut new_clusters = NewClusters { names: BTreeMap::new(), ids: LowestFree::new() };
        let mut wanted_backends: HashMap<u32, Backend> = HashMap::with_capacity(self.backends.len());
        let mut service_ids = ServiceIds {
            used: self
                .services
                .values()
                .map(|v| v.service_id)
                .chain(self.tables.keys().copied())
                .chain(self.backends.values().map(|b| b.service_id))
                .collect(),
            free: LowestFree::new(),
        };
        let mut plans = Vec::with_capacity(desired.services.len());
        for (key, port) in &desired.services {
            let plan = self.plan_port(*key, port, table_size, &mut service_ids, &mut new_clusters);
            if plan.error.is_none() {
                for id in &plan.backend_ids {
                    wanted_backends.insert(*id, Backend::default());
                }
            }
            plans.push(plan);
        }
        // The backend values, now that every id is known.
        self.backend_values(&plans, &mut wanted_backends);

        // 1. Cluster names.
        let mut failed_clusters = BTreeSet::new();
        for (id, name) in &new_clusters.names {
            match dp.put_cluster(*id, name) {
                Ok(()) => {
                    self.clusters.insert(*id, name.clone());
                    outcome.writes += 1;
                }
                Err(error) => {
                    failed_clusters.insert(*id);
                    self.cluster_ids.remove(name);
                    outcome.errors.push(SyncError::Cluster { name: name.clone(), error });
                }
            }
        }

        // 2. Backends.
        let mut failed_backends = BTreeSet::new();
        let mut changed: Vec<(u32, Backend)> = wanted_backends
            .iter()
            .filter(|(id, b)| self.backends.get(id) != Some(b))
            .map(|(id, b)| (*id, *b))
            .collect();
        changed.sort_unstable_by_key(|(id, _)| *id);
        for (id, backend) in &changed {
            if failed_clusters.contains(&backend.cluster_id) {
                failed_backends.insert(*id);
                continue;
            }
            match dp.put_backend(*id, *backend) {
                Ok(()) => {
                    self.backends.insert(*id, *backend);
                    outcome.writes += 1;
                }
                Err(error) => {
                    failed_backends.insert(*id);
                    outcome.errors.push(SyncError::Backend { id: *id, error });
                }
            }
        }

        // 3. Per service port: counters, wildcard, table and entry.
        let mut written_ports: BTreeSet<ServiceKey> = BTreeSet::new();
        // Ports left as they were keep their backends: their live table may name them.
        let mut failed_services: BTreeSet<u32> = BTreeSet::new();
        for plan in plans {
            written_ports.insert(plan.service_key);
            if let Some(reason) = &plan.error {
                outcome
                    .errors
                    .push(SyncError::Rejected { port: describe(plan.key, plan.port), reason: reason.clone() });
                failed_services.insert(plan.value.service_id);
                continue;
            }
            if let Some(id) = plan.backend_ids.iter().find(|id| failed_backends.contains(id)) {
                outcome.errors.push(SyncError::BackendNotWritten { port: describe(plan.key, plan.port), id: *id });
                failed_services.insert(plan.value.service_id);
                continue;
            }
            let (key, port, service_id) = (plan.key, plan.port, plan.value.service_id);
            if let Err(error) = self.write_port(dp, &plan, &mut outcome) {
                outcome.errors.push(SyncError::Port { port: describe(key, port), error });
                failed_services.insert(service_id);
            }
        }

        // 4. Deletions, in reverse.
        self.delete_stale(dp, (&written_ports, &wanted_backends, &failed_services), now, &mut outcome);

        if !outcome.errors.is_empty() {
            // After any failure the next sync re-reads the maps.
            self.stale = true;
        }
        Ok(outcome)
    }

    /// Fills in the values of the backends `plans` need, now that every id is known.
    fn backend_values(&self, plans: &[PortPlan<'_>], wanted_backends: &mut HashMap<u32, Backend>) {
        for plan in plans {
            if plan.error.is_some() {
                continue;
            }
            let all = plan.port.backends.iter().map(|b| (b, false)).chain(plan.port.draining.iter().map(|b| (b, true)));
            for ((b, draining), id) in all.zip(&plan.backend_ids) {
                let flags = if draining || b.state == EndpointState::Terminating { BACKEND_F_TERMINATING } else { 0 };
                let cluster_id = self.cluster_ids[&b.cluster];
                let backend =
                    Backend::new(b.ip, b.port, plan.key.protocol.number(), flags, cluster_id, plan.value.service_id);
                wanted_backends.insert(*id, backend);
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
                let id = service_ids.free.take(|id| service_ids.used.contains(&id));
                service_ids.used.insert(id);
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
                affinity_timeout: port.session_affinity_timeout.unwrap_or(0),
                flags: 0,
                pad: 0,
            },
            backend_ids: Vec::new(),
            table: None,
            error: None,
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
        let mut usable: Vec<(&DesiredBackend, u32)> = Vec::with_capacity(port.backends.len());
        for (b, in_table) in port.backends.iter().map(|b| (b, true)).chain(port.draining.iter().map(|b| (b, false))) {
            if let Err(rejection) = self.cluster_id(&b.cluster, new_clusters) {
                plan.error = Some(rejection);
                return plan;
            }
            let id = self.allocate_backend_id(identity_of(b, proto, service_id));
            plan.backend_ids.push(id);
            if in_table {
                usable.push((b, id));
            }
        }
        if usable.is_empty() {
            return plan;
        }
        plan.value.table_size = table_size;
        if port.backends.iter().all(|b| b.state == EndpointState::Terminating) {
            plan.value.flags |= SERVICE_F_FALLBACK;
        }
        let inputs = digest_inputs(table_size, &usable);
        let live = self.tables.get(&service_id).copied();
        if live.is_some_and(|t| t.inputs == Some(inputs)) {
            return plan;
        }
        // Sorted identities give every node the same table.
        let mut usable: Vec<(String, u32)> =
            usable.iter().map(|(b, id)| (maglev::identity(&b.cluster, b.ip, b.port), *id)).collect();
        usable.sort();
        let identities: Vec<&str> = usable.iter().map(|(identity, _)| identity.as_str()).collect();
        let table: Vec<u32> = maglev::build(&identities, table_size).iter().map(|i| usable[*i as usize].1).collect();
        let state = TableState { size: table_size, digest: maglev::digest_table(&table), inputs: Some(inputs) };
        if live.is_some_and(|t| t.size == state.size && t.digest == state.digest) {
            // Adopted from the maps and unchanged: remember what it was built from.
            self.tables.insert(service_id, state);
        } else {
            plan.table = Some((table, state));
        }
        plan
    }

    fn write_port(
        &mut self,
        dp: &mut impl Dataplane,
        plan: &PortPlan<'_>,
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
        // Every slot index the live entry allows must stay inside the live
        // table: a smaller table goes in after the entry shrinks, a larger
        // one before the entry grows.
        let live_size = existing.map_or(0, |v| v.table_size);
        let entry_first = plan.table.as_ref().is_some_and(|(t, _)| t.len() < live_size as usize);
        if entry_first {
            self.put_entry(dp, plan.service_key, plan.value, outcome)?;
        }
        if let Some((table, state)) = &plan.table {
            dp.put_table(service_id, table)?;
            self.tables.insert(service_id, *state);
            outcome.writes += 1;
            outcome.tables_written += 1;
        }
        self.put_entry(dp, plan.service_key, plan.value, outcome)?;
        if plan.value.table_size == 0 && self.tables.contains_key(&service_id) {
            dp.delete_table(service_id)?;
            self.tables.remove(&service_id);
            outcome.writes += 1;
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
        (written_ports, wanted_backends, failed_services): (
            &BTreeSet<ServiceKey>,
            &HashMap<u32, Backend>,
            &BTreeSet<u32>,
        ),
        now: Instant,
        outcome: &mut SyncOutcome,
    ) {
        let stale_ports: Vec<(ServiceKey, u32)> = self
            .services
            .iter()
            .filter(|(k, _)| !k.is_wildcard() && !written_ports.contains(k))
            .map(|(k, v)| (*k, v.service_id))
            .collect();
        for (key, service_id) in stale_ports {
            let result = dp
                .delete_service(&key)
                .and_then(|()| {
                    self.services.remove(&key);
                    outcome.writes += 1;
                    dp.delete_table(service_id)
                })
                .and_then(|()| {
                    self.tables.remove(&service_id);
                    outcome.writes += 1;
                    dp.forget_affinity(service_id)
                })
                .and_then(|()| dp.delete_service_stats(service_id));
            match result {
                Ok(()) => outcome.writes += 1,
                Err(error) => outcome.errors.push(SyncError::Delete { what: key.to_string(), error }),
            }
        }
        let live_vips: BTreeSet<u32> = self.services.keys().filter(|k| !k.is_wildcard()).map(|k| k.addr).collect();
        let stale_wildcards: Vec<ServiceKey> =
            self.services.keys().filter(|k| k.is_wildcard() && !live_vips.contains(&k.addr)).copied().collect();
        for key in stale_wildcards {
            match dp.delete_service(&key) {
                Ok(()) => {
                    self.services.remove(&key);
                    outcome.writes += 1;
                }
                Err(error) => outcome.errors.push(SyncError::Delete { what: key.to_string(), error }),
            }
        }
        let named: BTreeSet<u32> = self.services.values().filter(|v| v.table_size != 0).map(|v| v.service_id).collect();
        let orphan_tables: Vec<u32> = self.tables.keys().filter(|id| !named.contains(id)).copied().collect();
        for id in orphan_tables {
            match dp.delete_table(id) {
                Ok(()) => {
                    self.tables.remove(&id);
                    outcome.writes += 1;
                }
                Err(error) => {
                    outcome.errors.push(SyncError::Delete { what: format!("the Maglev table of service {id}"), error });
                }
            }
        }
        let unwanted: Vec<u32> = self
            .backends
            .iter()
            .filter(|(id, b)| !wanted_backends.contains_key(id) && !failed_services.contains(&b.service_id))
            .map(|(id, _)| *id)
            .collect();
        for id in wanted_backends.keys() {
            self.removed.remove(id);
        }
        for id in self.end_of_grace(dp, unwanted, now, outcome) {
            match dp.delete_backend(id) {
                Ok(()) => {
                    if let Some(b) = self.backends.remove(&id) {
                        self.backend_ids.remove(&BackendIdentity::from(&b));
                    }
                    outcome.writes += 1;
                }
                Err(error) => outcome.errors.push(SyncError::Delete { what: format!("backend {id}"), error }),
            }
        }
        // Ids handed out for backends that were never written are free again.
        let backends = &self.backends;
        self.backend_ids.retain(|_, id| backends.contains_key(id));
        let used_clusters: BTreeSet<u32> = self.backends.values().map(|b| b.cluster_id).collect();
        let unused_clusters: Vec<u32> =
            self.clusters.keys().filter(|id| !used_clusters.contains(id)).copied().collect();
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
        self.removed.retain(|id, _| backends.contains_key(id));
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
            let Some(backend) = self.backends.get(&id).copied() else { continue };
            if backend.flags & BACKEND_F_REMOVED == 0 {
                let flagged = Backend { flags: backend.flags | BACKEND_F_REMOVED, ..backend };
                match dp.put_backend(id, flagged) {
                    Ok(()) => {
                        self.backends.insert(id, flagged);
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
