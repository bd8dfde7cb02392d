//! The kernel side of [`Dataplane`]: the pinned maps of a loaded object (or
//! of a running agent), read and written through aya. The trait and its
//! errors are `mcs-core`'s (re-exported here); every kernel error becomes a
//! [`DataplaneError`] that names the map and the entry.
use std::{
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, HashOfMaps, IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuValues},
};
use mcs_common::{
    AffinityKey, AffinityValue, Backend, ClusterName, DatapathConfig, DropReason, MaglevPair, ServiceKey, ServiceStats,
    ServiceValue, Stat, map_names,
};

pub use mcs_core::dataplane::{Dataplane, DataplaneError};
use mcs_core::dataplane::{cluster_name_reason, table_len};

use crate::maglev;

/// The result of a map operation.
type MapResult<T> = Result<T, DataplaneError>;

/// A map error of aya as a [`DataplaneError`] of the operation `what` on `map`.
fn map_error(map: &'static str, what: String, error: MapError) -> DataplaneError {
    match error {
        MapError::KeyNotFound => DataplaneError::Missing { map, what },
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            DataplaneError::Full { map, what }
        }
        MapError::SyscallError(e) => DataplaneError::Kernel { what: format!("{what} of {map}"), error: e.io_error },
        other => DataplaneError::Invalid { what: format!("{what} of {map}"), reason: other.to_string() },
    }
}

/// Reads every entry of an iterable map.
fn read_all<K, V>(
    map: &'static str,
    entries: impl Iterator<Item = Result<(K, V), MapError>>,
) -> MapResult<Vec<(K, V)>> {
    entries.map(|r| r.map_err(|e| map_error(map, "reading".into(), e))).collect()
}

/// `BPF_MAP_LOOKUP_BATCH` (`include/uapi/linux/bpf.h`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`, as `BPF_MAP_*_BATCH` reads it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads every entry of the hash map behind `fd` with `BPF_MAP_LOOKUP_BATCH`:
/// a few system calls for the whole map, where iterating takes two per
/// entry (`get_next_key`, `lookup`). aya 0.14 has no batch operations, so
/// the call is made here. `Ok(None)` when the kernel does not do batches
/// for this map (the caller iterates instead).
fn lookup_batch<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> std::io::Result<Option<Vec<(K, V)>>> {
    use std::os::fd::AsRawFd as _;
    // Large enough for any hash bucket; a bucket larger than the chunk is
    // ENOSPC, and the chunk grows.
    let mut chunk: u32 = 4096;
    let mut out = Vec::new();
    // For hash maps the batch position is a bucket index (a u32).
    let (mut position, mut next) = (0u32, 0u32);
    let mut first = true;
    for _ in 0..1_000_000 {
        let mut keys = vec![std::mem::MaybeUninit::<K>::uninit(); chunk as usize];
        let mut values = vec![std::mem::MaybeUninit::<V>::uninit(); chunk as usize];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { std::ptr::from_mut(&mut position) as u64 },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `batch` attribute: the buffers hold
        // `count` keys and values of the map's sizes (checked by the caller's
        // types, which aya checked against the map), the positions are u32s.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, std::ptr::from_mut(&mut attr), size_of::<BatchAttr>())
        };
        let error = (rc < 0).then(std::io::Error::last_os_error);
        let errno = error.as_ref().and_then(std::io::Error::raw_os_error);
        match errno {
            None | Some(libc::ENOENT) => {
                let filled = (attr.count as usize).min(chunk as usize);
                for i in 0..filled {
                    // SAFETY: the kernel filled the first `count` elements.
                    out.push(unsafe { (keys[i].assume_init(), values[i].assume_init()) });
                }
                if errno == Some(libc::ENOENT) {
                    return Ok(Some(out));
                }
                position = next;
                first = false;
            }
            Some(libc::ENOSPC) => chunk = chunk.saturating_mul(2),
            Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP) if first && out.is_empty() => return Ok(None),
            Some(_) => return Err(error.unwrap_or_else(std::io::Error::last_os_error)),
        }
    }
    Err(std::io::Error::other("the batch lookup did not end"))
}

/// `BPF_F_MMAPABLE`: the flags of the flat Maglev array in the object
/// (`mcs-ebpf/src/maps.rs`).
pub const MAGLEV_TABLE_FLAGS: u32 = mcs_common::MAGLEV_TABLE_FLAGS;

/// The maps of a loaded object (or of a running agent's pins).
pub struct AyaDataplane {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: BackendArray,
    maglev: MaglevArray,
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

fn typed<T: TryFrom<Map, Error = MapError>>(map: Map, name: &str) -> Result<T> {
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
            maglev: MaglevArray::new(typed(open(map_names::MAGLEV)?, map_names::MAGLEV)?)?,
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
        read_service_stats(&self.service_stats, service_id)
    }
}

/// Entry `service_id` of `MCS_SVC_STATS`, summed over CPUs; `None` when the
/// id is beyond the array.
fn read_service_stats(map: &PerCpuArray<MapData, ServiceStats>, service_id: u32) -> Result<Option<ServiceStats>> {
    match map.get(&service_id, 0) {
        Ok(per_cpu) => Ok(Some(sum_stats(per_cpu.iter()))),
        Err(e) if is_not_found(&e) || matches!(e, MapError::OutOfBounds { .. }) => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("reading {} entry {service_id}", map_names::SERVICE_STATS))),
    }
}

/// `MCS_BACKENDS`: an mmapable array of [`Backend`]s indexed by id, read and
/// written through short-lived shared mappings of the pages a call touches
/// (a run of ids per mapping, no system call per backend). An all-zero
/// element is no backend. Not kept mapped, as the Maglev array is not (see
/// there): a standing mapping put all of its pages in the agent's resident
/// set.
///
/// A packet reads an element while the agent may write it; that is safe
/// because of what the agent writes when: a new backend's element is filled
/// before any table names it (the table is published by a system call
/// after), a backend's only field that changes in place is its one-byte
/// flags, and a removed backend's element is zeroed only after no table
/// names it, service id first, so a half-zeroed element never matches a
/// flow (its service id no longer does).
struct BackendArray {
    map: Array<MapData, Backend>,
    len: u32,
}

/// Ids a window of the backends array covers at most when read whole.
const BACKEND_READ_WINDOW: u32 = 1 << 16;
/// Ids between two writes that still share one window (a page of elements).
const BACKEND_WRITE_GAP: u32 = 256;

impl BackendArray {
    fn new(map: Array<MapData, Backend>) -> Result<Self> {
        // The kernel's size, not the object's: a pinned array adopted from an
        // agent started with another --backends-max keeps its own, and
        // elements past it are no backends to the datapath.
        let len =
            map.map().info().with_context(|| format!("reading the size of {}", map_names::BACKENDS))?.max_entries();
        // One window up front: an array that cannot be mapped fails here.
        Mapping::window(map.map().fd().as_fd(), 0, size_of::<Backend>(), false)
            .with_context(|| format!("mapping {} (is it BPF_F_MMAPABLE?)", map_names::BACKENDS))?;
        Ok(Self { map, len })
    }

    /// Maps elements `ids` and gives the mapping with a pointer to the first.
    fn window(&self, ids: std::ops::Range<u32>, writable: bool) -> MapResult<(Mapping, *mut Backend)> {
        let bytes = ids.start as usize * size_of::<Backend>()..ids.end as usize * size_of::<Backend>();
        let mapping =
            Mapping::window(self.map.map().fd().as_fd(), bytes.start, bytes.len(), writable).map_err(|error| {
                DataplaneError::Kernel { what: format!("mapping {} elements {ids:?}", map_names::BACKENDS), error }
            })?;
        // SAFETY: the mapping starts at the page holding byte `bytes.start`,
        // `skip` is that byte's offset in it (a multiple of the element's
        // 16 bytes, as a page is), so the pointer is inside and aligned.
        let first = unsafe { mapping.ptr.cast::<Backend>().add(mapping.skip / size_of::<Backend>()) };
        Ok((mapping, first))
    }

    /// The backends with ids in `ids` (cut at the array's end).
    fn read(&self, ids: std::ops::Range<u32>) -> MapResult<Vec<(u32, Backend)>> {
        let (start, end) = (ids.start.min(self.len), ids.end.min(self.len));
        let mut out = Vec::new();
        let mut at = start;
        // Bounded: each window covers BACKEND_READ_WINDOW ids or the rest.
        while at < end {
            let until = at.saturating_add(BACKEND_READ_WINDOW).min(end);
            let (_mapping, first) = self.window(at..until, false)?;
            // SAFETY: the window holds `until - at` elements from `first` and
            // lives until the end of this iteration; `Backend` is plain
            // integers, valid for any bit pattern.
            let slots = unsafe { std::slice::from_raw_parts(first, (until - at) as usize) };
            out.extend((at..).zip(slots).filter(|(_, b)| b.is_present()).map(|(id, b)| (id, *b)));
            at = until;
        }
        Ok(out)
    }

    /// Writes `backends` (sorted by id), a mapping per run of nearby ids.
    fn write(&mut self, backends: &[(u32, Backend)]) -> Vec<MapResult<()>> {
        let mut results = Vec::with_capacity(backends.len());
        let mut rest = backends;
        // Bounded: each turn takes at least one backend.
        while let Some(&(first_id, _)) = rest.first() {
            if first_id >= self.len {
                results.push(Err(DataplaneError::Full {
                    map: map_names::BACKENDS,
                    what: format!(
                        "writing backend {first_id} (the array has {} elements; raise --backends-max)",
                        self.len
                    ),
                }));
                rest = &rest[1..];
                continue;
            }
            let mut run = 1;
            while let Some(&(id, _)) = rest.get(run) {
                let last = rest[run - 1].0;
                if id >= self.len || id > last.saturating_add(BACKEND_WRITE_GAP) {
                    break;
                }
                run += 1;
            }
            let (batch, later) = rest.split_at(run);
            let last_id = batch[batch.len() - 1].0;
            match self.window(first_id..last_id + 1, true) {
                Ok((_mapping, first)) => {
                    for (id, backend) in batch {
                        // SAFETY: `id - first_id` is below the window's
                        // length; elements are written with volatile stores
                        // because the kernel reads them concurrently.
                        unsafe {
                            let slot = first.add((id - first_id) as usize);
                            if !backend.is_present() {
                                // Zero the service id first: see the type's docs.
                                std::ptr::write_volatile(&raw mut (*slot).service_id, 0);
                            }
                            std::ptr::write_volatile(slot, *backend);
                        }
                        results.push(Ok(()));
                    }
                }
                Err(error) => {
                    let message = error.to_string();
                    results.push(Err(error));
                    for _ in 1..batch.len() {
                        results.push(Err(DataplaneError::Invalid {
                            what: format!("{} elements {first_id}..={last_id}", map_names::BACKENDS),
                            reason: message.clone(),
                        }));
                    }
                }
            }
            rest = later;
        }
        results
    }
}

/// The flat Maglev array (the one inner map of `MCS_MAGLEV`, created at
/// load by `ebpf::load_object`): every Maglev table's slots, read and
/// written through short-lived shared mappings of just the pages a call
/// touches. A slot is a `u32` backend id; the kernel reads whole elements of
/// two slots, and a slot written with one aligned 4-byte store is never seen
/// torn. What is written when (so that every slot a live entry names holds
/// an old or a new backend of its port) is the sync's: see `mcs_core::sync`.
///
/// The array is not kept mapped: the kernel maps every page of an mmapable
/// array into the process when it is mapped (`remap_vmalloc_range`), so a
/// standing mapping of a large array adds all of its pages to the agent's
/// resident set although they are the map's memory, counted once already.
/// A window costs two system calls per table written.
struct MaglevArray {
    /// Keeps `MCS_MAGLEV` itself open: when it was taken out of the loaded
    /// object, its fd is the one the programs loaded later (the socket
    /// programs) were relocated with; closed, the number would be reused by
    /// the next map opened, and those programs would name that map instead.
    _outer: HashOfMaps<MapData, u32, Array<MapData, MaglevPair>>,
    /// The array the windows map.
    map: Array<MapData, MaglevPair>,
    /// Slots: twice the kernel's element count (the pin's own, not the
    /// object's, when an older agent's array is adopted).
    len: u32,
}

impl MaglevArray {
    fn new(outer: HashOfMaps<MapData, u32, Array<MapData, MaglevPair>>) -> Result<Self> {
        let map = outer.get(&mcs_common::MAGLEV_ARRAY_KEY, 0).with_context(|| {
            format!("{} holds no Maglev array (the agent creates it when it loads the programs)", map_names::MAGLEV)
        })?;
        let elements =
            map.map().info().with_context(|| format!("reading the size of {}", map_names::MAGLEV))?.max_entries();
        let len = elements.saturating_mul(2);
        // One window up front: an array that cannot be mapped fails here, not
        // at the first table.
        Mapping::window(map.map().fd().as_fd(), 0, size_of::<u32>(), false)
            .with_context(|| format!("mapping {} (is it BPF_F_MMAPABLE?)", map_names::MAGLEV))?;
        Ok(Self { _outer: outer, map, len })
    }

    fn range(&self, start: u32, len: u32) -> MapResult<std::ops::Range<usize>> {
        let end = u64::from(start) + u64::from(len);
        if end > u64::from(self.len) {
            return Err(DataplaneError::Full {
                map: map_names::MAGLEV,
                what: format!(
                    "Maglev slots {start}..{end} (the array has {} slots; raise --maglev-slots-max)",
                    self.len
                ),
            });
        }
        Ok(start as usize..start as usize + len as usize)
    }

    /// Maps the pages of slots `start..start + len` and gives the mapping
    /// with a pointer to slot `start` in it.
    fn window(&self, start: u32, len: u32, writable: bool) -> MapResult<(Mapping, *mut u32)> {
        let range = self.range(start, len)?;
        let bytes = range.start * size_of::<u32>()..range.end * size_of::<u32>();
        let mapping =
            Mapping::window(self.map.map().fd().as_fd(), bytes.start, bytes.len(), writable).map_err(|error| {
                DataplaneError::Kernel {
                    what: format!("mapping {} slots {start}..{}", map_names::MAGLEV, range.end),
                    error,
                }
            })?;
        // SAFETY: the mapping starts at the page holding byte `bytes.start`
        // and `skip` is that byte's offset in the page (a multiple of 4: a
        // page is, and so is the slot's offset), so the pointer is inside
        // the mapping and aligned.
        let first = unsafe { mapping.ptr.cast::<u32>().add(mapping.skip / size_of::<u32>()) };
        Ok((mapping, first))
    }

    /// Runs `f` on slots `start..start + len`.
    fn read<T>(&self, start: u32, len: u32, f: impl FnOnce(&[u32]) -> T) -> MapResult<T> {
        // An empty range maps nothing (its page may be past the array's end).
        if self.range(start, len)?.is_empty() {
            return Ok(f(&[]));
        }
        let (_mapping, first) = self.window(start, len, false)?;
        // SAFETY: the window holds `len` u32 slots from `first` and lives
        // until the end of this function; the kernel's concurrent reads do
        // not write.
        let slots = unsafe { std::slice::from_raw_parts(first, len as usize) };
        Ok(f(slots))
    }

    fn write(&mut self, start: u32, table: &[u32]) -> MapResult<usize> {
        let len = table_len(table)?;
        if self.range(start, len)?.is_empty() {
            return Ok(0);
        }
        let (_mapping, first) = self.window(start, len, true)?;
        let mut written = 0;
        for (i, id) in table.iter().enumerate() {
            // SAFETY: `i` < `len`, so the slot is inside the window; slots are
            // read and written with single aligned 4-byte accesses, volatile
            // because the kernel reads them concurrently.
            unsafe {
                let slot = first.add(i);
                if std::ptr::read_volatile(slot) != *id {
                    std::ptr::write_volatile(slot, *id);
                    written += 1;
                }
            }
        }
        Ok(written)
    }
}

/// Sums per-CPU service counters (wrapping, as the counters themselves do).
fn sum_stats<'a>(values: impl Iterator<Item = &'a ServiceStats>) -> ServiceStats {
    values.fold(ServiceStats::default(), |a, b| ServiceStats {
        packets: a.packets.wrapping_add(b.packets),
        bytes: a.bytes.wrapping_add(b.bytes),
        new_flows: a.new_flows.wrapping_add(b.new_flows),
        rejected: a.rejected.wrapping_add(b.rejected),
        socket_translated: a.socket_translated.wrapping_add(b.socket_translated),
        socket_refused: a.socket_refused.wrapping_add(b.socket_refused),
    })
}

/// The datapath's drop and event counters (`MCS_DROPS`, `MCS_STATS`): per-CPU
/// arrays indexed by [`DropReason`] and [`Stat`], read summed over CPUs.
pub struct DatapathCounters {
    drops: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    /// The services map and the per-service counters, when opened from pins
    /// ([`Self::with_service_maps`]).
    services: Option<ServiceMaps>,
}

/// The services map and the per-service counters.
type ServiceMaps = (HashMap<MapData, ServiceKey, ServiceValue>, PerCpuArray<MapData, ServiceStats>);

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
            services: None,
        })
    }

    /// Also opens the services map and the per-service counters pinned
    /// under `dir`, for [`Self::per_service`].
    ///
    /// # Errors
    /// When a pin is missing or a map is of the wrong type.
    pub fn with_service_maps(mut self, dir: &Path) -> Result<Self> {
        let services = typed(open_pinned(dir, map_names::SERVICES)?, map_names::SERVICES)?;
        let stats = typed(open_pinned(dir, map_names::SERVICE_STATS)?, map_names::SERVICE_STATS)?;
        self.services = Some((services, stats));
        Ok(self)
    }

    /// Every service port the services map holds (wildcards left out), with
    /// its counters summed over CPUs; empty without [`Self::with_service_maps`].
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn per_service(&self) -> Result<Vec<(ServiceKey, ServiceStats)>> {
        let Some((services, stats)) = &self.services else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for entry in services {
            let (key, value) = entry.with_context(|| format!("reading {}", map_names::SERVICES))?;
            if key.is_wildcard() || value.service_id == 0 {
                continue;
            }
            if let Some(counters) = read_service_stats(stats, value.service_id)? {
                out.push((key, counters));
            }
        }
        out.sort_unstable_by_key(|(key, _)| *key);
        Ok(out)
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

/// How full one pinned map is: its entries against the capacity it was
/// created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    /// The map's name (its pin).
    pub name: &'static str,
    /// Entries it holds now (elements that hold a backend, for the array).
    pub entries: u64,
    /// Entries it was created for (`max_entries`).
    pub capacity: u64,
    /// Whether the kernel evicts its oldest entries when it is full (an LRU
    /// hash) rather than refusing new ones.
    pub evicts: bool,
}

/// Counts the keys of a hash map, at most `limit` (an LRU map changes while
/// it is walked; a key that vanished mid-walk is skipped).
fn count_keys<K: aya::Pod>(keys: impl Iterator<Item = Result<K, MapError>>, limit: u64) -> u64 {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    keys.take(limit).flatten().count() as u64
}

/// The fill level of every map that holds entries (the counter and config
/// arrays are always full and left out), read from the pins under `dir`.
///
/// # Errors
/// When a pin is missing or cannot be read.
pub fn fill_levels(dir: &Path) -> Result<Vec<MapFill>> {
    use mcs_common::{CtKey, CtValue, FragKey, FragValue};
    let capacity = |name: &str| -> Result<u64> {
        let path = dir.join(name);
        let info = aya::maps::MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(u64::from(info.max_entries()))
    };
    let mut out = Vec::new();
    let mut hash = |name: &'static str, evicts: bool, count: &dyn Fn(Map, u64) -> Result<u64>| -> Result<()> {
        let capacity = capacity(name)?;
        let entries = count(open_pinned(dir, name)?, capacity)?;
        out.push(MapFill { name, entries, capacity, evicts });
        Ok(())
    };
    hash(map_names::SERVICES, false, &|map, cap| {
        let map: HashMap<MapData, ServiceKey, ServiceValue> = typed(map, map_names::SERVICES)?;
        Ok(count_keys(map.keys(), cap))
    })?;
    hash(map_names::BACKENDS, false, &|map, _| {
        let array = BackendArray::new(typed(map, map_names::BACKENDS)?)?;
        Ok(array.read(0..array.len)?.len() as u64)
    })?;
    hash(map_names::CLUSTERS, false, &|map, cap| {
        let map: HashMap<MapData, u32, ClusterName> = typed(map, map_names::CLUSTERS)?;
        Ok(count_keys(map.keys(), cap))
    })?;
    for name in [map_names::CONNTRACK_TCP, map_names::CONNTRACK_ANY] {
        hash(name, true, &|map, cap| {
            let map: HashMap<MapData, CtKey, CtValue> = typed(map, name)?;
            Ok(count_keys(map.keys(), cap))
        })?;
    }
    hash(map_names::FRAGMENTS, true, &|map, cap| {
        let map: HashMap<MapData, FragKey, FragValue> = typed(map, map_names::FRAGMENTS)?;
        Ok(count_keys(map.keys(), cap))
    })?;
    hash(map_names::AFFINITY, true, &|map, cap| {
        let map: HashMap<MapData, AffinityKey, AffinityValue> = typed(map, map_names::AFFINITY)?;
        Ok(count_keys(map.keys(), cap))
    })?;
    // The Maglev array: slots that live tables use, of its slots.
    let outer: HashOfMaps<MapData, u32, Array<MapData, MaglevPair>> =
        typed(open_pinned(dir, map_names::MAGLEV)?, map_names::MAGLEV)?;
    let slots = MaglevArray::new(outer)?.len;
    let services: HashMap<MapData, ServiceKey, ServiceValue> =
        typed(open_pinned(dir, map_names::SERVICES)?, map_names::SERVICES)?;
    let used =
        services.iter().filter_map(Result::ok).filter(|(k, _)| !k.is_wildcard()).map(|(_, v)| u64::from(v.table_size));
    let fill = MapFill { name: map_names::MAGLEV, entries: used.sum(), capacity: u64::from(slots), evicts: false };
    out.insert(2.min(out.len()), fill);
    Ok(out)
}

/// Entry `index` of a per-CPU counter array, summed over CPUs (wrapping, as
/// the counters themselves do).
fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32, name: &str) -> Result<u64> {
    let values = map.get(&index, 0).with_context(|| format!("reading {name}[{index}]"))?;
    Ok(values.iter().fold(0_u64, |sum, v| sum.wrapping_add(*v)))
}

fn is_not_found(error: &MapError) -> bool {
    matches!(error, MapError::KeyNotFound)
        || matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn ignore_missing(map: &'static str, result: Result<(), MapError>, what: impl FnOnce() -> String) -> MapResult<()> {
    match result {
        Err(e) if !is_not_found(&e) => Err(map_error(map, what(), e)),
        _ => Ok(()),
    }
}

/// A shared mapping of a `BPF_F_MMAPABLE` array's values, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    /// The offset, in the mapping, of the first byte asked for.
    skip: usize,
}

impl Mapping {
    /// Maps the pages holding bytes `offset..offset + bytes` of the values
    /// of the array behind `fd`.
    fn window(fd: BorrowedFd<'_>, offset: usize, bytes: usize, writable: bool) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        let first_page = offset / page;
        let skip = offset - first_page * page;
        let len = (skip + bytes).div_ceil(page).max(1) * page;
        let file_offset = libc::off_t::try_from(first_page * page)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks
        // that the map is mmapable and that the pages asked for are inside it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len, skip })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

impl Dataplane for AyaDataplane {
    fn services(&self) -> MapResult<Vec<(ServiceKey, ServiceValue)>> {
        match lookup_batch(self.services.map().fd().as_fd()) {
            Ok(Some(entries)) => Ok(entries),
            Ok(None) => read_all(map_names::SERVICES, self.services.iter()),
            Err(error) => Err(DataplaneError::Kernel { what: format!("reading {}", map_names::SERVICES), error }),
        }
    }

    fn backends(&self) -> MapResult<Vec<(u32, Backend)>> {
        self.backends.read(0..self.backends.len)
    }

    fn backend_id_limit(&self) -> u32 {
        self.backends.len
    }

    fn backends_in(&self, ids: std::ops::Range<u32>) -> MapResult<Vec<(u32, Backend)>> {
        self.backends.read(ids)
    }

    fn clusters(&self) -> MapResult<Vec<(u32, String)>> {
        read_all(map_names::CLUSTERS, self.clusters.iter())?
            .into_iter()
            .map(|(id, name)| match name.as_str() {
                Some(name) => Ok((id, name.to_owned())),
                None => {
                    Err(DataplaneError::Invalid { what: format!("cluster {id}'s name"), reason: "not UTF-8".into() })
                }
            })
            .collect()
    }

    fn maglev_slots(&self) -> u32 {
        self.maglev.len
    }

    fn slots(&self, start: u32, len: u32) -> MapResult<Vec<u32>> {
        self.maglev.read(start, len, <[u32]>::to_vec)
    }

    fn slots_digest(&self, start: u32, len: u32) -> MapResult<u64> {
        self.maglev.read(start, len, maglev::digest_table)
    }

    fn maglev_table_size(&self) -> u32 {
        self.config.maglev_table_size
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> MapResult<()> {
        let what = || format!("writing entry {key}");
        self.services.insert(key, value, 0).map_err(|e| map_error(map_names::SERVICES, what(), e))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> MapResult<()> {
        ignore_missing(map_names::SERVICES, self.services.remove(key), || format!("deleting entry {key}"))
    }

    fn put_backend(&mut self, id: u32, backend: Backend) -> MapResult<()> {
        if !backend.is_present() {
            return Err(DataplaneError::Invalid {
                what: format!("backend {id}"),
                reason: "names no service port".into(),
            });
        }
        self.backends.write(&[(id, backend)]).pop().unwrap_or(Ok(()))
    }

    fn put_backends(&mut self, backends: &[(u32, Backend)]) -> Vec<MapResult<()>> {
        if backends.iter().any(|(_, b)| !b.is_present()) {
            // Each refused on its own, as one write would be.
            return backends.iter().map(|(id, backend)| self.put_backend(*id, *backend)).collect();
        }
        self.backends.write(backends)
    }

    fn delete_backend(&mut self, id: u32) -> MapResult<()> {
        self.backends.write(&[(id, Backend::default())]).pop().unwrap_or(Ok(()))
    }

    fn write_slots(&mut self, start: u32, table: &[u32]) -> MapResult<usize> {
        self.maglev.write(start, table)
    }

    fn put_cluster(&mut self, id: u32, name: &str) -> MapResult<()> {
        let value = ClusterName::new(name).ok_or_else(|| DataplaneError::Invalid {
            what: format!("cluster name {name:?}"),
            reason: cluster_name_reason(),
        })?;
        self.clusters.insert(id, value, 0).map_err(|e| map_error(map_names::CLUSTERS, format!("writing entry {id}"), e))
    }

    fn delete_cluster(&mut self, id: u32) -> MapResult<()> {
        ignore_missing(map_names::CLUSTERS, self.clusters.remove(&id), || format!("deleting entry {id}"))
    }

    fn reset_service_stats(&mut self, service_id: u32) -> MapResult<()> {
        let what = || format!("writing entry {service_id}");
        let zeros = PerCpuValues::try_from(vec![ServiceStats::default(); self.cpus])
            .map_err(|error| DataplaneError::Kernel { what: what(), error })?;
        self.service_stats.set(service_id, zeros, 0).map_err(|e| match e {
            MapError::OutOfBounds { max_entries, .. } => DataplaneError::Full {
                map: map_names::SERVICE_STATS,
                what: format!("{} (of {max_entries}; raise --service-ports-max)", what()),
            },
            other => map_error(map_names::SERVICE_STATS, what(), other),
        })
    }

    fn delete_service_stats(&mut self, service_id: u32) -> MapResult<()> {
        // An array element cannot be deleted: zero it, as a new port finds it.
        self.reset_service_stats(service_id)
    }

    fn forget_affinity(&mut self, service_id: u32) -> MapResult<()> {
        let keys: Vec<AffinityKey> =
            self.affinity.keys().filter_map(Result::ok).filter(|k| k.service_id == service_id).collect();
        for key in keys {
            ignore_missing(map_names::AFFINITY, self.affinity.remove(&key), || "deleting an entry".to_owned())?;
        }
        Ok(())
    }
}
