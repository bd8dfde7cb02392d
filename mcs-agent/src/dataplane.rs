//! The narrow interface through which the sync writes the maps: the kernel
//! implementation over aya, and an in-memory fake for tests.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, HashMap, HashOfMaps, IterableMap as _, Map, MapData, PerCpuArray, PerCpuValues},
};
use mcs_common::{
    AffinityKey, AffinityValue, Backend, ClusterName, DatapathConfig, DropReason, MAGLEV_PAD, MaglevPair,
    SERVICE_F_WILDCARD, ServiceKey, ServiceStats, ServiceValue, Stat, limits, maglev_elements, map_names,
};

use crate::maglev;

/// The maps the sync reads and writes, as it sees them.
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
    /// Every cluster name by id.
    ///
    /// # Errors
    /// When the map cannot be read or holds a name that is not UTF-8.
    fn clusters(&self) -> Result<Vec<(u32, String)>>;
    /// The service ids that have a Maglev table.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn table_ids(&self) -> Result<Vec<u32>>;
    /// The Maglev table of a service port (backend id per slot), if any.
    ///
    /// # Errors
    /// When the table cannot be read.
    fn table(&self, service_id: u32) -> Result<Option<Vec<u32>>>;
    /// The size (slots) and [`maglev::digest_table`] of the Maglev table of a
    /// service port, if it has one, read without copying the table.
    ///
    /// # Errors
    /// When the table cannot be read.
    fn table_digest(&self, service_id: u32) -> Result<Option<(u32, u64)>>;
    /// The size new Maglev tables are built with.
    fn maglev_table_size(&self) -> u32;
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
    /// Publishes `table` as the Maglev table of `service_id`: a new table is
    /// created and filled completely, then swapped in with one update.
    ///
    /// # Errors
    /// When the table cannot be created or the map is full.
    fn put_table(&mut self, service_id: u32, table: &[u32]) -> Result<()>;
    /// Deletes the Maglev table of `service_id`; a missing one is not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_table(&mut self, service_id: u32) -> Result<()>;
    /// Records the name of cluster `id`.
    ///
    /// # Errors
    /// When the name does not fit or the kernel refuses.
    fn put_cluster(&mut self, id: u32, name: &str) -> Result<()>;
    /// Deletes cluster `id`'s name; a missing one is not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_cluster(&mut self, id: u32) -> Result<()>;
    /// Creates (or zeroes) the counters of service port `service_id`.
    ///
    /// # Errors
    /// When the kernel refuses (for example, the map is full).
    fn reset_service_stats(&mut self, service_id: u32) -> Result<()>;
    /// Deletes the counters of `service_id`; missing ones are not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_service_stats(&mut self, service_id: u32) -> Result<()>;
    /// Forgets every session-affinity entry of `service_id`, so an id
    /// handed out again starts clean.
    ///
    /// # Errors
    /// When the map cannot be read or written.
    fn forget_affinity(&mut self, service_id: u32) -> Result<()>;
}

/// `BPF_F_MMAPABLE | BPF_F_INNER_MAP`: the flags of the template Maglev table
/// in the object (`mcs-ebpf/src/maps.rs`); every table must have the same.
pub const MAGLEV_TABLE_FLAGS: u32 = mcs_common::MAGLEV_TABLE_FLAGS;

/// The maps of a loaded object (or of a running agent's pins).
pub struct AyaDataplane {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: BackendArray,
    maglev: HashOfMaps<MapData, u32, Array<MapData, MaglevPair>>,
    clusters: HashMap<MapData, u32, ClusterName>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// The settings the programs were loaded with (`MCS_CONFIG`).
    config: DatapathConfig,
    /// Possible CPUs: the length of every per-CPU value.
    cpus: usize,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).with_context(|| format!("map {name} is missing from the eBPF object"))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(map: Map, name: &str) -> Result<T> {
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

/// Opens a pinned map of `dir`.
///
/// # Errors
/// When the pin is missing or is not a map.
pub fn open_pinned(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("pinned map {} has an unknown type", path.display()))
}

/// The number of possible CPUs (the length of per-CPU values).
fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, e)| anyhow!(e).context(format!("reading {path}")))
}

impl AyaDataplane {
    /// Takes the maps the sync writes out of `ebpf`. The Maglev table size
    /// is the one the object was loaded with (`MCS_CONFIG`).
    ///
    /// # Errors
    /// When a map is missing or of the wrong type.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Self::from_maps(|name| take(ebpf, name))
    }

    /// Opens the maps a running agent pinned under `dir`.
    ///
    /// # Errors
    /// When a pin is missing (is the agent running with this pin path?) or a
    /// map is of the wrong type.
    pub fn from_pins(dir: &Path) -> Result<Self> {
        Self::from_maps(|name| open_pinned(dir, name))
    }

    /// The dataplane's maps, each obtained by name from `map`.
    fn from_maps(mut open: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        let config: Array<MapData, DatapathConfig> = typed(open(map_names::CONFIG)?, map_names::CONFIG)?;
        let config = config.get(&0, 0).with_context(|| format!("reading {}", map_names::CONFIG))?;
        Ok(Self {
            services: typed(open(map_names::SERVICES)?, map_names::SERVICES)?,
            backends: BackendArray::new(typed(open(map_names::BACKENDS)?, map_names::BACKENDS)?)?,
            maglev: typed(open(map_names::MAGLEV)?, map_names::MAGLEV)?,
            clusters: typed(open(map_names::CLUSTERS)?, map_names::CLUSTERS)?,
            service_stats: typed(open(map_names::SERVICE_STATS)?, map_names::SERVICE_STATS)?,
            affinity: typed(open(map_names::AFFINITY)?, map_names::AFFINITY)?,
            config,
            cpus: possible_cpus()?,
        })
    }
}

impl AyaDataplane {
    /// The settings the programs were loaded with.
    #[must_use]
    pub const fn config(&self) -> DatapathConfig {
        self.config
    }

    /// Every cluster name by id, as stored (possibly not UTF-8).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn cluster_names(&self) -> Result<Vec<(u32, ClusterName)>> {
        self.clusters.iter().map(|r| r.with_context(|| format!("reading {}", map_names::CLUSTERS))).collect()
    }

    /// The counters of every service port (every service id the services
    /// map names), summed over CPUs.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn all_service_stats(&self) -> Result<Vec<(u32, ServiceStats)>> {
        let mut ids: Vec<u32> = self.services()?.into_iter().map(|(_, v)| v.service_id).filter(|id| *id != 0).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().filter_map(|id| self.service_stats(id).transpose().map(|r| r.map(|s| (id, s)))).collect()
    }

    /// The session-affinity map (for tests and diagnostics).
    pub const fn affinity_map(&mut self) -> &mut HashMap<MapData, AffinityKey, AffinityValue> {
        &mut self.affinity
    }

    /// The counters of a service port, summed over CPUs; `None` when its id
    /// is beyond the counters array.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn service_stats(&self, service_id: u32) -> Result<Option<ServiceStats>> {
        match self.service_stats.get(&service_id, 0) {
            Ok(per_cpu) => Ok(Some(sum_stats(per_cpu.iter()))),
            Err(e) if is_not_found(&e) || matches!(e, aya::maps::MapError::OutOfBounds { .. }) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("reading {} entry {service_id}", map_names::SERVICE_STATS))),
        }
    }
}

/// `MCS_BACKENDS`: an mmapable array of [`Backend`]s indexed by id, read and
/// written through a shared mapping (no system call per backend). An
/// all-zero element is no backend.
///
/// A packet reads an element while the agent may write it; that is safe
/// because of what the agent writes when: a new backend's element is filled
/// before any table names it (the table is published by a system call
/// after), a backend's only field that changes in place is its one-byte
/// flags, and a removed backend's element is zeroed only after no table
/// names it, service id first, so a half-zeroed element never matches a
/// flow (its service id no longer does).
struct BackendArray {
    /// Keeps the map open (the mapping needs the file to stay valid).
    _map: Array<MapData, Backend>,
    mapping: Mapping,
    len: u32,
}

impl BackendArray {
    fn new(map: Array<MapData, Backend>) -> Result<Self> {
        let len = map.len();
        let bytes = len as usize * size_of::<Backend>();
        let mapping = Mapping::new_bytes(map.map().fd().as_fd(), bytes, true)
            .with_context(|| format!("mapping {} (is it BPF_F_MMAPABLE?)", map_names::BACKENDS))?;
        Ok(Self { _map: map, mapping, len })
    }

    fn slots(&self) -> &[Backend] {
        // SAFETY: the mapping holds `len` elements of 16 bytes from its
        // page-aligned start (the array's values are contiguous), and
        // `Backend` is plain integers, valid for any bit pattern.
        unsafe { std::slice::from_raw_parts(self.mapping.ptr.cast::<Backend>(), self.len as usize) }
    }

    fn write(&mut self, id: u32, backend: Backend) -> Result<()> {
        if id >= self.len {
            bail!(
                "{}: backend id {id} is beyond its {} elements (raise --backends-max)",
                map_names::BACKENDS,
                self.len
            );
        }
        // SAFETY: `id` is in bounds (checked above); the element is written
        // with volatile stores because the kernel reads it concurrently.
        unsafe {
            let slot = self.mapping.ptr.cast::<Backend>().add(id as usize);
            if !backend.is_present() {
                // Zero the service id first: see the type's docs.
                std::ptr::write_volatile(&raw mut (*slot).service_id, 0);
            }
            std::ptr::write_volatile(slot, backend);
        }
        Ok(())
    }
}

/// Sums per-CPU service counters (wrapping, as the counters themselves do).
fn sum_stats<'a>(values: impl Iterator<Item = &'a ServiceStats>) -> ServiceStats {
    values.fold(ServiceStats::default(), |a, b| ServiceStats {
        packets: a.packets.wrapping_add(b.packets),
        bytes: a.bytes.wrapping_add(b.bytes),
        new_flows: a.new_flows.wrapping_add(b.new_flows),
        rejected: a.rejected.wrapping_add(b.rejected),
    })
}

/// The datapath's drop and event counters (`MCS_DROPS`, `MCS_STATS`): per-CPU
/// arrays indexed by [`DropReason`] and [`Stat`], read summed over CPUs.
pub struct DatapathCounters {
    drops: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
}

impl DatapathCounters {
    /// Takes the counter maps out of `ebpf`.
    ///
    /// # Errors
    /// When a map is missing or of the wrong type.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Self::from_maps(|name| take(ebpf, name))
    }

    /// Opens the counter maps a running agent pinned under `dir`.
    ///
    /// # Errors
    /// When a pin is missing or a map is of the wrong type.
    pub fn from_pins(dir: &Path) -> Result<Self> {
        Self::from_maps(|name| open_pinned(dir, name))
    }

    fn from_maps(mut map: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            drops: typed(map(map_names::DROPS)?, map_names::DROPS)?,
            stats: typed(map(map_names::STATS)?, map_names::STATS)?,
        })
    }

    /// Packets dropped for `reason`, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn drops(&self, reason: DropReason) -> Result<u64> {
        per_cpu_sum(&self.drops, reason as u32, map_names::DROPS)
    }

    /// Packets counted as `stat`, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn stat(&self, stat: Stat) -> Result<u64> {
        per_cpu_sum(&self.stats, stat as u32, map_names::STATS)
    }
}

/// Entry `index` of a per-CPU counter array, summed over CPUs (wrapping, as
/// the counters themselves do).
fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32, name: &str) -> Result<u64> {
    let values = map.get(&index, 0).with_context(|| format!("reading {name}[{index}]"))?;
    Ok(values.iter().fold(0_u64, |sum, v| sum.wrapping_add(*v)))
}

fn is_not_found(error: &aya::maps::MapError) -> bool {
    matches!(error, aya::maps::MapError::KeyNotFound)
        || matches!(error, aya::maps::MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn ignore_missing(result: Result<(), aya::maps::MapError>, what: impl FnOnce() -> String) -> Result<()> {
    match result {
        Err(e) if !is_not_found(&e) => Err(anyhow!(e).context(what())),
        _ => Ok(()),
    }
}

/// A shared mapping of a `BPF_F_MMAPABLE` array's values, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Maps the first `entries` `u32` values of the array behind `fd`.
    fn new(fd: BorrowedFd<'_>, entries: usize, writable: bool) -> Result<Self> {
        Self::new_bytes(fd, entries * size_of::<u32>(), writable)
    }

    /// Maps the first `bytes` bytes of values of the array behind `fd`.
    fn new_bytes(fd: BorrowedFd<'_>, bytes: usize, writable: bool) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        let len = bytes.div_ceil(page).max(1) * page;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks
        // that the map is mmapable and at least `len` bytes long.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, std::os::fd::AsRawFd::as_raw_fd(&fd), 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of an array map");
        }
        Ok(Self { ptr, len })
    }

    fn values(&mut self, entries: usize) -> &mut [u32] {
        assert!(entries * size_of::<u32>() <= self.len, "mapping too short");
        // SAFETY: the mapping is at least `entries` u32s long, page-aligned,
        // and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u32>(), entries) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Calls `f` with a Maglev table's slots, mapped read-only (no copy),
/// without the padding slot of an odd-sized table.
fn with_table<T>(table: &Array<MapData, MaglevPair>, f: impl FnOnce(&[u32]) -> T) -> Result<T> {
    let slots = table.len() as usize * 2;
    let mut mapping = Mapping::new(table.map().fd().as_fd(), slots, false)?;
    let values: &[u32] = mapping.values(slots);
    let values = match values.split_last() {
        Some((&MAGLEV_PAD, rest)) => rest,
        _ => values,
    };
    Ok(f(values))
}

impl AyaDataplane {
    /// Runs `f` on the live Maglev table of `service_id`, if it has one.
    fn with_live_table<T>(&self, service_id: u32, f: impl FnOnce(&[u32]) -> T) -> Result<Option<T>> {
        match self.maglev.get(&service_id, 0) {
            Ok(table) => with_table(&table, f).map(Some),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("reading the Maglev table of service {service_id}"))),
        }
    }
}

impl Dataplane for AyaDataplane {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.services.iter().map(|r| r.with_context(|| format!("reading {}", map_names::SERVICES))).collect()
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok((0u32..).zip(self.backends.slots()).filter(|(_, b)| b.is_present()).map(|(id, b)| (id, *b)).collect())
    }

    fn clusters(&self) -> Result<Vec<(u32, String)>> {
        self.cluster_names()?
            .into_iter()
            .map(|(id, name)| {
                let name = name.as_str().with_context(|| format!("cluster {id}'s name is not UTF-8"))?;
                Ok((id, name.to_owned()))
            })
            .collect()
    }

    fn table_ids(&self) -> Result<Vec<u32>> {
        self.maglev.keys().map(|r| r.with_context(|| format!("reading {}", map_names::MAGLEV))).collect()
    }

    fn table(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        self.with_live_table(service_id, <[u32]>::to_vec)
    }

    fn table_digest(&self, service_id: u32) -> Result<Option<(u32, u64)>> {
        self.with_live_table(service_id, |table| {
            let size = u32::try_from(table.len()).context("Maglev table too large")?;
            Ok((size, maglev::digest_table(table)))
        })?
        .transpose()
    }

    fn maglev_table_size(&self) -> u32 {
        self.config.maglev_table_size
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        self.services.insert(key, value, 0).with_context(|| format!("writing {} entry {key}", map_names::SERVICES))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        ignore_missing(self.services.remove(key), || format!("deleting {} entry {key}", map_names::SERVICES))
    }

    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        ensure!(backend.is_present(), "backend {id} names no service port");
        self.backends.write(id, backend)
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        self.backends.write(id, Backend::default())
    }

    fn put_table(&mut self, service_id: u32, table: &[u32]) -> Result<()> {
        let slots = u32::try_from(table.len()).context("Maglev table too large")?;
        let context = || format!("Maglev table of service {service_id} ({slots} slots)");
        let elements = maglev_elements(slots);
        let inner = Array::<MapData, MaglevPair>::create(elements, MAGLEV_TABLE_FLAGS).with_context(context)?;
        {
            let all = elements as usize * 2;
            let mut mapping = Mapping::new(inner.map().fd().as_fd(), all, true).with_context(context)?;
            let values = mapping.values(all);
            values[..table.len()].copy_from_slice(table);
            values[table.len()..].fill(MAGLEV_PAD);
        }
        // One update of the outer map publishes the complete table; the old
        // one is freed when the last program run using it ends.
        self.maglev.insert(service_id, &inner, 0).with_context(|| format!("publishing the {}", context()))
    }

    fn delete_table(&mut self, service_id: u32) -> Result<()> {
        ignore_missing(self.maglev.remove(&service_id), || format!("deleting the Maglev table of service {service_id}"))
    }

    fn put_cluster(&mut self, id: u32, name: &str) -> Result<()> {
        let value = ClusterName::new(name).with_context(|| {
            format!("cluster name {name:?} is longer than {} bytes or holds a NUL", limits::CLUSTER_NAME_MAX)
        })?;
        self.clusters.insert(id, value, 0).with_context(|| format!("writing {} entry {id}", map_names::CLUSTERS))
    }

    fn delete_cluster(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.clusters.remove(&id), || format!("deleting {} entry {id}", map_names::CLUSTERS))
    }

    fn reset_service_stats(&mut self, service_id: u32) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![ServiceStats::default(); self.cpus])?;
        self.service_stats.set(service_id, zeros, 0).with_context(|| {
            format!(
                "writing {} element {service_id} (of {}; raise --service-ports-max)",
                map_names::SERVICE_STATS,
                self.service_stats.len()
            )
        })
    }

    fn delete_service_stats(&mut self, service_id: u32) -> Result<()> {
        // An array element cannot be deleted: zero it, as a new port finds it.
        self.reset_service_stats(service_id)
    }

    fn forget_affinity(&mut self, service_id: u32) -> Result<()> {
        let keys: Vec<AffinityKey> =
            self.affinity.keys().filter_map(Result::ok).filter(|k| k.service_id == service_id).collect();
        for key in keys {
            ignore_missing(self.affinity.remove(&key), || format!("deleting an {} entry", map_names::AFFINITY))?;
        }
        Ok(())
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
    /// `put_table`.
    PutTable(u32, Vec<u32>),
    /// `delete_table`.
    DeleteTable(u32),
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
    /// Maglev tables by service id.
    pub tables: BTreeMap<u32, Vec<u32>>,
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
    /// When set, at most this many Maglev tables exist.
    pub tables_capacity: Option<usize>,
}

impl Default for FakeDataplane {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            tables: BTreeMap::new(),
            clusters: BTreeMap::new(),
            service_stats: BTreeMap::new(),
            affinity: BTreeMap::new(),
            // Small, so tests are quick; the algorithm is the same.
            table_size: 251,
            ops: Vec::new(),
            services_capacity: None,
            tables_capacity: None,
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
            Op::PutTable(id, t) => self.put_table(*id, t),
            Op::DeleteTable(id) => self.delete_table(*id),
            Op::PutCluster(id, n) => self.put_cluster(*id, n),
            Op::DeleteCluster(id) => self.delete_cluster(*id),
            Op::ResetServiceStats(id) => self.reset_service_stats(*id),
            Op::DeleteServiceStats(id) => self.delete_service_stats(*id),
            Op::ForgetAffinity(id) => self.forget_affinity(*id),
        }
    }

    /// Checks what a packet would see: every service port's address has a
    /// wildcard; a port with a table size has a table of that size whose
    /// slots name existing backends of that port; every backend's cluster
    /// has a name; every port has counters. Returns the first inconsistency.
    ///
    /// # Errors
    /// Describes the half-written service.
    pub fn check_consistent(&self) -> Result<()> {
        for (key, value) in &self.services {
            if key.is_wildcard() {
                ensure!(value.flags & SERVICE_F_WILDCARD != 0, "{key} has no wildcard flag");
                continue;
            }
            ensure!(self.services.contains_key(&ServiceKey::wildcard(key.ip())), "{key} has no wildcard entry");
            ensure!(self.service_stats.contains_key(&value.service_id), "{key} has no counters");
            if value.table_size == 0 {
                continue;
            }
            let Some(table) = self.tables.get(&value.service_id) else {
                bail!("{key} has table size {} but no table", value.table_size);
            };
            ensure!(
                table.len() >= value.table_size as usize,
                "{key} has table size {} but its table has {} slots",
                value.table_size,
                table.len()
            );
            for (slot, id) in table.iter().enumerate().take(value.table_size as usize) {
                let Some(backend) = self.backends.get(id) else {
                    bail!("{key} slot {slot} names backend {id} which is missing");
                };
                ensure!(
                    backend.service_id == value.service_id,
                    "{key} slot {slot} names backend {id} of service {}",
                    backend.service_id
                );
            }
        }
        for (id, backend) in &self.backends {
            ensure!(
                self.clusters.contains_key(&backend.cluster_id),
                "backend {id} names cluster {} which has no name",
                backend.cluster_id
            );
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

    fn clusters(&self) -> Result<Vec<(u32, String)>> {
        Ok(self.clusters.iter().map(|(k, v)| (*k, v.clone())).collect())
    }

    fn table_ids(&self) -> Result<Vec<u32>> {
        Ok(self.tables.keys().copied().collect())
    }

    fn table(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        Ok(self.tables.get(&service_id).cloned())
    }

    fn table_digest(&self, service_id: u32) -> Result<Option<(u32, u64)>> {
        self.tables
            .get(&service_id)
            .map(|t| Ok((u32::try_from(t.len()).context("Maglev table too large")?, maglev::digest_table(t))))
            .transpose()
    }

    fn maglev_table_size(&self) -> u32 {
        self.table_size
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

    fn put_table(&mut self, service_id: u32, table: &[u32]) -> Result<()> {
        if let Some(cap) = self.tables_capacity
            && !self.tables.contains_key(&service_id)
            && self.tables.len() >= cap
        {
            bail!("publishing the Maglev table of service {service_id}: no space left (E2BIG)");
        }
        self.ops.push(Op::PutTable(service_id, table.to_vec()));
        self.tables.insert(service_id, table.to_vec());
        Ok(())
    }

    fn delete_table(&mut self, service_id: u32) -> Result<()> {
        self.ops.push(Op::DeleteTable(service_id));
        self.tables.remove(&service_id);
        Ok(())
    }

    fn put_cluster(&mut self, id: u32, name: &str) -> Result<()> {
        ensure!(ClusterName::new(name).is_some(), "cluster name {name:?} does not fit");
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
