//! An in-memory [`Dataplane`] that records every write and can be told to
//! fail as a full kernel map would: the sync's tests replay its writes one by
//! one and check what a packet would see after each.
use std::collections::BTreeMap;

use mcs_common::{
    AffinityKey, AffinityValue, Backend, ClusterName, SERVICE_F_WILDCARD, ServiceKey, ServiceStats, ServiceValue,
    map_names,
};

use crate::dataplane::{Dataplane, DataplaneError, Result, cluster_name_reason, table_len};

/// One write the fake saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `put_service`.
    PutService(ServiceKey, ServiceValue),
    /// `delete_service`.
    DeleteService(ServiceKey),
    /// `put_backend`.
    PutBackend(u32, Backend),
    /// `delete_backend`.
    DeleteBackend(u32),
    /// One slot of the flat Maglev array written in place (by
    /// `write_slots`): the slot and the backend id it names now.
    PutSlot(u32, u32),
    /// `put_cluster`.
    PutCluster(u32, String),
    /// `delete_cluster`.
    DeleteCluster(u32),
    /// `reset_service_stats`.
    ResetServiceStats(u32),
    /// `delete_service_stats`.
    DeleteServiceStats(u32),
    /// `forget_affinity`.
    ForgetAffinity(u32),
}

/// An in-memory dataplane that records every write and can be told to fail.
#[derive(Clone, Debug)]
pub struct FakeDataplane {
    /// The services map.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// The backends map.
    pub backends: BTreeMap<u32, Backend>,
    /// The flat Maglev array (`MCS_MAGLEV`): its length is its capacity.
    pub maglev: Vec<u32>,
    /// Cluster names by id.
    pub clusters: BTreeMap<u32, String>,
    /// Service ids with counters, and the counters (summed over CPUs).
    pub service_stats: BTreeMap<u32, ServiceStats>,
    /// Affinity entries.
    pub affinity: BTreeMap<AffinityKey, AffinityValue>,
    /// The table size the "object" was loaded with.
    pub table_size: u32,
    /// Every write, in order.
    pub ops: Vec<Op>,
    /// When set, the services map holds at most this many entries, as a
    /// full kernel map would.
    pub services_capacity: Option<usize>,
    /// When set, backend ids are below this, as the backends array's are.
    pub backends_capacity: Option<u32>,
    /// When set, the clusters map holds at most this many names.
    pub clusters_capacity: Option<usize>,
}

impl Default for FakeDataplane {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            maglev: vec![0; 1 << 16],
            clusters: BTreeMap::new(),
            service_stats: BTreeMap::new(),
            affinity: BTreeMap::new(),
            // The agent's default largest size: tables are sized by the ladder.
            table_size: mcs_common::limits::MAGLEV_TABLE_SIZE,
            ops: Vec::new(),
            services_capacity: None,
            backends_capacity: None,
            clusters_capacity: None,
        }
    }
}

impl FakeDataplane {
    /// Applies a recorded write (for replaying a sync step by step).
    ///
    /// # Errors
    /// As the write itself.
    pub fn apply(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::PutService(k, v) => self.put_service(*k, *v),
            Op::DeleteService(k) => self.delete_service(k),
            Op::PutBackend(id, b) => self.put_backend(*id, *b),
            Op::DeleteBackend(id) => self.delete_backend(*id),
            Op::PutSlot(slot, id) => self.write_slots(*slot, &[*id]).map(|_| ()),
            Op::PutCluster(id, n) => self.put_cluster(*id, n),
            Op::DeleteCluster(id) => self.delete_cluster(*id),
            Op::ResetServiceStats(id) => self.reset_service_stats(*id),
            Op::DeleteServiceStats(id) => self.delete_service_stats(*id),
            Op::ForgetAffinity(id) => self.forget_affinity(*id),
        }
    }

    /// Checks what a packet would see: every service port's address has a
    /// wildcard; a port with a table size has that many slots from its table
    /// start, inside the flat array and shared with no other port, and every
    /// one names an existing backend of that port; every backend's cluster
    /// has a name; every port has counters. Returns the first inconsistency.
    ///
    /// # Errors
    /// Describes the half-written service.
    pub fn check_consistent(&self) -> Result<(), String> {
        // Live regions by start: (end, key), to find overlaps.
        let mut regions: BTreeMap<u32, (u32, ServiceKey)> = BTreeMap::new();
        for (key, value) in &self.services {
            if key.is_wildcard() {
                check(value.flags & SERVICE_F_WILDCARD != 0, || format!("{key} has no wildcard flag"))?;
                continue;
            }
            check(self.services.contains_key(&ServiceKey::wildcard(key.ip())), || {
                format!("{key} has no wildcard entry")
            })?;
            check(self.service_stats.contains_key(&value.service_id), || format!("{key} has no counters"))?;
            if value.table_size == 0 {
                continue;
            }
            let (start, size) = (value.table_start as usize, value.table_size as usize);
            let Some(table) = self.maglev.get(start..start + size) else {
                return Err(format!(
                    "{key} has table slots {start}..{} beyond the array of {}",
                    start + size,
                    self.maglev.len()
                ));
            };
            for (slot, id) in table.iter().enumerate() {
                let Some(backend) = self.backends.get(id) else {
                    return Err(format!("{key} slot {slot} names backend {id} which is missing"));
                };
                check(backend.service_id == value.service_id, || {
                    format!("{key} slot {slot} names backend {id} of service {}", backend.service_id)
                })?;
            }
            regions.insert(value.table_start, (value.table_start + value.table_size, *key));
        }
        let mut last: Option<(u32, ServiceKey)> = None;
        for (start, (end, key)) in regions {
            if let Some((last_end, last_key)) = last
                && start < last_end
            {
                return Err(format!("{key}'s table overlaps {last_key}'s"));
            }
            last = Some((end, key));
        }
        for (id, backend) in &self.backends {
            check(self.clusters.contains_key(&backend.cluster_id), || {
                format!("backend {id} names cluster {} which has no name", backend.cluster_id)
            })?;
        }
        Ok(())
    }

    /// The Maglev table of service port `service_id`, if its entry has one.
    #[must_use]
    pub fn table_of(&self, service_id: u32) -> Option<Vec<u32>> {
        self.services
            .iter()
            .find(|(k, v)| !k.is_wildcard() && v.service_id == service_id && v.table_size != 0)
            .map(|(_, v)| self.maglev[v.table_start as usize..(v.table_start + v.table_size) as usize].to_vec())
    }
}

impl Dataplane for FakeDataplane {
    fn backend_id_limit(&self) -> u32 {
        self.backends_capacity.unwrap_or(u32::MAX)
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn backends_in(&self, ids: std::ops::Range<u32>) -> Result<Vec<(u32, Backend)>> {
        Ok(self.backends.range(ids).map(|(k, v)| (*k, *v)).collect())
    }

    fn clusters(&self) -> Result<Vec<(u32, String)>> {
        Ok(self.clusters.iter().map(|(k, v)| (*k, v.clone())).collect())
    }

    fn maglev_slots(&self) -> u32 {
        u32::try_from(self.maglev.len()).unwrap_or(u32::MAX)
    }

    fn slots(&self, start: u32, len: u32) -> Result<Vec<u32>> {
        let range = start as usize..start as usize + len as usize;
        self.maglev.get(range).map(<[u32]>::to_vec).ok_or_else(|| out_of_bounds(start, len))
    }

    fn maglev_table_size(&self) -> u32 {
        self.table_size
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        if let Some(cap) = self.services_capacity
            && !self.services.contains_key(&key)
            && self.services.len() >= cap
        {
            return Err(DataplaneError::Full { map: map_names::SERVICES, what: format!("writing entry {key}") });
        }
        self.ops.push(Op::PutService(key, value));
        self.services.insert(key, value);
        Ok(())
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.ops.push(Op::DeleteService(*key));
        self.services.remove(key);
        Ok(())
    }

    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        if self.backends_capacity.is_some_and(|cap| id >= cap) {
            return Err(DataplaneError::Full {
                map: map_names::BACKENDS,
                what: format!("writing backend {id} (raise --backends-max)"),
            });
        }
        self.ops.push(Op::PutBackend(id, backend));
        self.backends.insert(id, backend);
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        self.ops.push(Op::DeleteBackend(id));
        self.backends.remove(&id);
        Ok(())
    }

    fn write_slots(&mut self, start: u32, table: &[u32]) -> Result<usize> {
        let len = table_len(table)?;
        if u64::from(start) + u64::from(len) > self.maglev.len() as u64 {
            return Err(out_of_bounds(start, len));
        }
        let mut written = 0;
        for (slot, id) in (start..).zip(table) {
            if self.maglev[slot as usize] != *id {
                self.ops.push(Op::PutSlot(slot, *id));
                self.maglev[slot as usize] = *id;
                written += 1;
            }
        }
        Ok(written)
    }

    fn put_cluster(&mut self, id: u32, name: &str) -> Result<()> {
        if ClusterName::new(name).is_none() {
            return Err(DataplaneError::Invalid {
                what: format!("cluster name {name:?}"),
                reason: cluster_name_reason(),
            });
        }
        if let Some(cap) = self.clusters_capacity
            && !self.clusters.contains_key(&id)
            && self.clusters.len() >= cap
        {
            return Err(DataplaneError::Full {
                map: map_names::CLUSTERS,
                what: format!("writing cluster name {name:?}"),
            });
        }
        self.ops.push(Op::PutCluster(id, name.to_owned()));
        self.clusters.insert(id, name.to_owned());
        Ok(())
    }

    fn delete_cluster(&mut self, id: u32) -> Result<()> {
        self.ops.push(Op::DeleteCluster(id));
        self.clusters.remove(&id);
        Ok(())
    }

    fn reset_service_stats(&mut self, service_id: u32) -> Result<()> {
        self.ops.push(Op::ResetServiceStats(service_id));
        self.service_stats.insert(service_id, ServiceStats::default());
        Ok(())
    }

    fn delete_service_stats(&mut self, service_id: u32) -> Result<()> {
        self.ops.push(Op::DeleteServiceStats(service_id));
        self.service_stats.remove(&service_id);
        Ok(())
    }

    fn forget_affinity(&mut self, service_id: u32) -> Result<()> {
        self.ops.push(Op::ForgetAffinity(service_id));
        self.affinity.retain(|k, _| k.service_id != service_id);
        Ok(())
    }
}

/// The error of slots beyond the flat Maglev array.
fn out_of_bounds(start: u32, len: u32) -> DataplaneError {
    DataplaneError::Full {
        map: map_names::MAGLEV,
        what: format!("writing Maglev slots {start}..{}", u64::from(start) + u64::from(len)),
    }
}

/// `Ok` when `ok`, else the message `what` makes.
fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}
