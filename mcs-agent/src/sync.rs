//! One idempotent sync: writes the difference between the desired state and
//! what the maps hold, in an order that never lets a packet see a half-written
//! service.
//!
//! Order of writes:
//! 1. backends that are new or changed;
//! 2. per service port: its backend slots, then its master entry (which holds
//!    the slot count), then the address's wildcard entry;
//! 3. deletions in reverse: masters of removed service ports, then surplus
//!    slots, then wildcards of addresses with no port left, then backends no
//!    slot names any more.
//!
//! A failure on one service port (a full map, say) is reported with the
//! service's name and leaves that port as it was; the others are still
//! written. After any failure the next sync re-reads the maps in full.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context as _, Result};
use mcs_common::{BACKEND_F_TERMINATING, Backend, SERVICE_F_WILDCARD, ServiceKey, ServiceValue, limits};
use tracing::{debug, warn};

use crate::{
    dataplane::Dataplane,
    translate::{DesiredServicePort, DesiredState, EndpointState, ServicePortKey},
};

/// What identifies a backend entry: the same pod address, port and protocol
/// is one backend, whichever service ports use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BackendIdentity {
    addr: u32,
    port: u16,
    proto: u8,
}

impl From<&Backend> for BackendIdentity {
    fn from(b: &Backend) -> Self {
        Self { addr: b.addr, port: b.port, proto: b.proto }
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Map writes (puts and deletes) made.
    pub writes: usize,
    /// Service ports that could not be written, each with the reason, naming
    /// the service.
    pub errors: Vec<String>,
    /// Whether this sync started by re-reading the maps.
    pub full: bool,
}

/// The sync's memory of what is in the maps, and the ids it handed out.
#[derive(Debug, Default)]
pub struct Syncer {
    /// What the services map holds, as far as the syncer knows.
    services: BTreeMap<ServiceKey, ServiceValue>,
    /// What the backends map holds.
    backends: BTreeMap<u32, Backend>,
    backend_ids: HashMap<BackendIdentity, u32>,
    clusters: BTreeMap<String, u32>,
    next_backend_id: u32,
    next_service_id: u32,
    /// Re-read the maps before the next sync.
    stale: bool,
}

impl Syncer {
    /// A syncer that reads the maps at its first sync, adopting whatever an
    /// earlier agent left there.
    #[must_use]
    pub fn new() -> Self {
        Self { stale: true, next_backend_id: 1, next_service_id: 1, ..Self::default() }
    }

    /// Forces the next sync to re-read the maps.
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    fn reload(&mut self, dp: &impl Dataplane) -> Result<()> {
        self.services = dp.services()?.into_iter().collect();
        self.backends = dp.backends()?.into_iter().collect();
        self.backend_ids = self.backends.iter().map(|(id, b)| (BackendIdentity::from(b), *id)).collect();
        self.next_backend_id = self.backends.keys().max().map_or(1, |m| m.saturating_add(1));
        self.next_service_id = self.services.values().map(|v| v.service_id).max().map_or(1, |m| m.saturating_add(1));
        self.stale = false;
        Ok(())
    }

    fn cluster_id(&mut self, cluster: &str) -> u32 {
        let next = u32::try_from(self.clusters.len() + 1).unwrap_or(u32::MAX);
        *self.clusters.entry(cluster.to_owned()).or_insert(next)
    }

    fn allocate_backend_id(&mut self, identity: BackendIdentity) -> u32 {
        if let Some(id) = self.backend_ids.get(&identity) {
            return *id;
        }
        // The counter only moves forward, so ids handed out in one sync never
        // collide; after it wraps (four billion ids later) it skips ids in use.
        let mut id = self.next_backend_id.max(1);
        while self.backends.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        self.next_backend_id = id.wrapping_add(1).max(1);
        self.backend_ids.insert(identity, id);
        id
    }

    /// Brings the maps to `desired`.
    ///
    /// # Errors
    /// Only when the maps cannot be read at all; failures to write one service
    /// port are reported in the outcome and do not stop the others.
    pub fn sync(&mut self, dp: &mut impl Dataplane, desired: &DesiredState) -> Result<SyncOutcome> {
        let mut outcome = SyncOutcome { full: self.stale, ..SyncOutcome::default() };
        if self.stale {
            self.reload(dp).context("reading the maps for a full sync")?;
        }

        // The backends every desired service port needs, with their ids.
        let mut wanted_backends: BTreeMap<u32, Backend> = BTreeMap::new();
        let mut plans = Vec::with_capacity(desired.services.len());
        for (key, port) in &desired.services {
            let mut slots = Vec::with_capacity(port.backends.len());
            for b in &port.backends {
                let cluster_id = self.cluster_id(&b.cluster);
                let flags = if b.state == EndpointState::Terminating { BACKEND_F_TERMINATING } else { 0 };
                let backend = Backend::new(b.ip, b.port, key.protocol.number(), flags, cluster_id);
                let id = self.allocate_backend_id(BackendIdentity::from(&backend));
                wanted_backends.insert(id, backend);
                slots.push(id);
            }
            plans.push((key, port, slots));
        }

        // 1. Backends.
        let mut failed_backends = BTreeSet::new();
        for (id, backend) in &wanted_backends {
            if self.backends.get(id) == Some(backend) {
                continue;
            }
            match dp.put_backend(*id, *backend) {
                Ok(()) => {
                    self.backends.insert(*id, *backend);
                    outcome.writes += 1;
                }
                Err(e) => {
                    failed_backends.insert(*id);
                    outcome.errors.push(format!("backend {id}: {e:#}"));
                }
            }
        }

        // 2. Slots, master, wildcard, per service port.
        let mut written_ports: BTreeSet<ServiceKey> = BTreeSet::new();
        for (key, port, slots) in &plans {
            let master_key = ServiceKey::master(key.ip, key.port, key.protocol.number());
            written_ports.insert(master_key);
            if let Some(id) = slots.iter().find(|id| failed_backends.contains(id)) {
                outcome
                    .errors
                    .push(format!("{}: backend {id} could not be written; left as it was", describe(**key, port)));
                continue;
            }
            let existed = self.services.contains_key(&master_key);
            if let Err(e) = self.write_port(dp, **key, port, slots, &mut outcome) {
                outcome.errors.push(format!("{}: {e:#}", describe(**key, port)));
                if !existed {
                    // A new port that could not be completed: take back the
                    // slots it got, so they hold no room in the map.
                    self.remove_orphan_slots(dp, &master_key, &mut outcome);
                }
            }
        }
        // 3. Deletions, in reverse.
        self.delete_stale(dp, &written_ports, &mut outcome);

        if !outcome.errors.is_empty() {
            for error in &outcome.errors {
                warn!(%error, "sync incomplete");
            }
            self.stale = true;
        }
        debug!(writes = outcome.writes, full = outcome.full, errors = outcome.errors.len(), "synced");
        Ok(outcome)
    }

    /// Deletes, in order: masters of removed ports, slots beyond each master's
    /// count (or of removed ports), wildcards of addresses with no port left,
    /// and backends no slot names.
    fn delete_stale(
        &mut self,
        dp: &mut impl Dataplane,
        written_ports: &BTreeSet<ServiceKey>,
        outcome: &mut SyncOutcome,
    ) {
        let stale_masters: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| k.slot == 0 && !k.is_wildcard() && !written_ports.contains(k))
            .copied()
            .collect();
        for key in stale_masters {
            self.delete(dp, &key, outcome);
        }
        let stale_slots: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| k.slot != 0)
            .filter(|k| {
                let master = ServiceKey { slot: 0, ..**k };
                self.services.get(&master).is_none_or(|m| k.slot > m.count)
            })
            .copied()
            .collect();
        for key in stale_slots {
            self.delete(dp, &key, outcome);
        }
        let live_vips: BTreeSet<u32> = self.services.keys().filter(|k| !k.is_wildcard()).map(|k| k.addr).collect();
        let stale_wildcards: Vec<ServiceKey> =
            self.services.keys().filter(|k| k.is_wildcard() && !live_vips.contains(&k.addr)).copied().collect();
        for key in stale_wildcards {
            self.delete(dp, &key, outcome);
        }
        let referenced: BTreeSet<u32> =
            self.services.iter().filter(|(k, _)| k.slot != 0).map(|(_, v)| v.backend_id).collect();
        let unreferenced: Vec<u32> = self.backends.keys().filter(|id| !referenced.contains(id)).copied().collect();
        for id in unreferenced {
            match dp.delete_backend(id) {
                Ok(()) => {
                    if let Some(b) = self.backends.remove(&id) {
                        self.backend_ids.remove(&BackendIdentity::from(&b));
                    }
                    outcome.writes += 1;
                }
                Err(e) => outcome.errors.push(format!("deleting backend {id}: {e:#}")),
            }
        }
        // Ids handed out for backends that were never written are free again.
        let backends = &self.backends;
        self.backend_ids.retain(|_, id| backends.contains_key(id));
    }

    fn write_port(
        &mut self,
        dp: &mut impl Dataplane,
        key: ServicePortKey,
        port: &DesiredServicePort,
        slots: &[u32],
        outcome: &mut SyncOutcome,
    ) -> Result<()> {
        let proto = key.protocol.number();
        let master_key = ServiceKey::master(key.ip, key.port, proto);
        let count =
            u16::try_from(slots.len()).ok().filter(|c| *c <= limits::BACKENDS_PER_SERVICE_MAX).with_context(|| {
                format!("{} backends exceed the limit of {}", slots.len(), limits::BACKENDS_PER_SERVICE_MAX)
            })?;
        let service_id = if let Some(existing) = self.services.get(&master_key) {
            existing.service_id
        } else {
            let id = self.next_service_id;
            self.next_service_id = self.next_service_id.wrapping_add(1).max(1);
            id
        };
        for (index, backend_id) in slots.iter().enumerate() {
            let slot = u16::try_from(index + 1).expect("count fits u16, checked above");
            let slot_key = ServiceKey::slot(key.ip, key.port, proto, slot);
            let value = ServiceValue { backend_id: *backend_id, service_id, ..ServiceValue::default() };
            if self.services.get(&slot_key) != Some(&value) {
                dp.put_service(slot_key, value)?;
                self.services.insert(slot_key, value);
                outcome.writes += 1;
            }
        }
        // The datapath looks for the wildcard before the master: it must be
        // there before the master makes the port live.
        let wildcard = ServiceKey::wildcard(key.ip);
        let wildcard_value = ServiceValue { flags: SERVICE_F_WILDCARD, ..ServiceValue::default() };
        if self.services.get(&wildcard) != Some(&wildcard_value) {
            dp.put_service(wildcard, wildcard_value)?;
            self.services.insert(wildcard, wildcard_value);
            outcome.writes += 1;
        }
        let master = ServiceValue {
            backend_id: 0,
            count,
            flags: 0,
            service_id,
            affinity_timeout: port.session_affinity_timeout.unwrap_or(0),
        };
        if self.services.get(&master_key) != Some(&master) {
            dp.put_service(master_key, master)?;
            self.services.insert(master_key, master);
            outcome.writes += 1;
        }
        Ok(())
    }

    fn remove_orphan_slots(&mut self, dp: &mut impl Dataplane, master_key: &ServiceKey, outcome: &mut SyncOutcome) {
        let orphans: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| k.slot != 0 && ServiceKey { slot: 0, ..**k } == *master_key)
            .copied()
            .collect();
        for key in orphans {
            self.delete(dp, &key, outcome);
        }
    }

    fn delete(&mut self, dp: &mut impl Dataplane, key: &ServiceKey, outcome: &mut SyncOutcome) {
        match dp.delete_service(key) {
            Ok(()) => {
                self.services.remove(key);
                outcome.writes += 1;
            }
            Err(e) => outcome.errors.push(format!("deleting {key}: {e:#}")),
        }
    }
}

fn describe(key: ServicePortKey, port: &DesiredServicePort) -> String {
    format!("ServiceImport {}/{} port {}/{} ({})", port.namespace, port.name, key.port, key.protocol.as_str(), key.ip)
}

#[cfg(test)]
mod tests;
