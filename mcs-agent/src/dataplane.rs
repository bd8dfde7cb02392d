//! The narrow interface through which the sync writes the maps: the kernel
//! implementation over aya, and an in-memory fake for tests.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use mcs_common::{Backend, ServiceKey, ServiceValue, map_names};

/// The service and backend maps, as the sync sees them.
pub trait Dataplane {
    /// Every entry of the services map.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    /// Every entry of the backends map.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn backends(&self) -> Result<Vec<(u32, Backend)>>;
    /// Creates or replaces a services entry.
    ///
    /// # Errors
    /// When the kernel refuses (for example, the map is full).
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()>;
    /// Deletes a services entry; deleting a missing entry is not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Creates or replaces a backend.
    ///
    /// # Errors
    /// When the kernel refuses (for example, the map is full).
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<()>;
    /// Deletes a backend; deleting a missing one is not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_backend(&mut self, id: u32) -> Result<()>;
}

/// The maps of a loaded object (or of a running agent's pins).
pub struct AyaDataplane {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
}

fn take_hash<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Result<HashMap<MapData, K, V>> {
    let map = ebpf.take_map(name).with_context(|| format!("map {name} is missing from the eBPF object"))?;
    HashMap::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl AyaDataplane {
    /// Takes the service and backend maps out of `ebpf`.
    ///
    /// # Errors
    /// When a map is missing or of the wrong type.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self { services: take_hash(ebpf, map_names::SERVICES)?, backends: take_hash(ebpf, map_names::BACKENDS)? })
    }
}

fn is_not_found(error: &aya::maps::MapError) -> bool {
    matches!(error, aya::maps::MapError::KeyNotFound)
        || matches!(error, aya::maps::MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
}

impl Dataplane for AyaDataplane {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.services.iter().map(|r| r.with_context(|| format!("reading {}", map_names::SERVICES))).collect()
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        self.backends.iter().map(|r| r.with_context(|| format!("reading {}", map_names::BACKENDS))).collect()
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        self.services.insert(key, value, 0).with_context(|| format!("writing {} entry {key}", map_names::SERVICES))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        match self.services.remove(key) {
            Err(e) if !is_not_found(&e) => {
                Err(anyhow!(e).context(format!("deleting {} entry {key}", map_names::SERVICES)))
            }
            _ => Ok(()),
        }
    }

    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        self.backends.insert(id, backend, 0).with_context(|| format!("writing {} entry {id}", map_names::BACKENDS))
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        match self.backends.remove(&id) {
            Err(e) if !is_not_found(&e) => {
                Err(anyhow!(e).context(format!("deleting {} entry {id}", map_names::BACKENDS)))
            }
            _ => Ok(()),
        }
    }
}

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
}

/// An in-memory dataplane that records every write and can be told to fail.
#[derive(Clone, Debug, Default)]
pub struct FakeDataplane {
    /// The services map.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// The backends map.
    pub backends: BTreeMap<u32, Backend>,
    /// Every write, in order.
    pub ops: Vec<Op>,
    /// When set, the map holds at most this many service entries, as a full
    /// kernel map would.
    pub services_capacity: Option<usize>,
}

impl FakeDataplane {
    /// Checks what a packet would see: every master's slots exist and name
    /// existing backends. Returns the first inconsistency.
    ///
    /// # Errors
    /// Describes the half-written service.
    pub fn check_consistent(&self) -> Result<()> {
        for (key, value) in &self.services {
            if key.slot != 0 || key.is_wildcard() {
                continue;
            }
            for slot in 1..=value.count {
                let slot_key = ServiceKey { slot, ..*key };
                let Some(entry) = self.services.get(&slot_key) else {
                    bail!("{key:?} has count {} but slot {slot} is missing", value.count);
                };
                if !self.backends.contains_key(&entry.backend_id) {
                    bail!("{slot_key:?} names backend {} which is missing", entry.backend_id);
                }
            }
        }
        Ok(())
    }
}

impl Dataplane for FakeDataplane {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        if let Some(cap) = self.services_capacity
            && !self.services.contains_key(&key)
            && self.services.len() >= cap
        {
            bail!("writing {} entry {key}: no space left (E2BIG)", map_names::SERVICES);
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
        self.ops.push(Op::PutBackend(id, backend));
        self.backends.insert(id, backend);
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        self.ops.push(Op::DeleteBackend(id));
        self.backends.remove(&id);
        Ok(())
    }
}
