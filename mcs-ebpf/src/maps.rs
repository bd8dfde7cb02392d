//! Every map of the datapath, declared with BTF so `bpftool map dump` shows
//! named fields. Layouts live in `mcs-common`; the agent pins these maps under
//! its pin directory by the same names, and sets the sizes of most at load.
use aya_ebpf::{
    btf_maps::{Array, HashMap, HashOfMaps, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use mcs_common::{
    AffinityKey, AffinityValue, Backend, ClusterName, CtKey, CtValue, DatapathConfig, FragKey, FragValue,
    MAGLEV_TABLE_FLAGS, MaglevPair, RateKey, RateValue, ServiceKey, ServiceStats, ServiceValue, SockRevKey,
    SockRevValue, limits, maglev_elements,
};

/// `BPF_F_NO_PREALLOC`: the service map is sized for the largest fleet but
/// holds few entries on most nodes, so memory follows use. For the hash of
/// maps it also makes replacing an inner map atomic for readers.
const NO_PREALLOC: usize = 1;

/// `BPF_F_MMAPABLE`: the agent reads and writes the backends array through a
/// shared mapping instead of a system call per element.
const MMAPABLE: usize = 1 << 10;

/// Service ports and ClusterSetIP wildcards (see `mcs_common::ServiceKey`).
#[btf_map]
pub static MCS_SERVICES: HashMap<ServiceKey, ServiceValue, { limits::SERVICES_MAX as usize }, NO_PREALLOC> =
    HashMap::new();

/// Backends by id: an array, so the per-packet check that a flow's backend
/// still exists is an inlined index, not a hash lookup.
#[btf_map]
pub static MCS_BACKENDS: Array<Backend, { limits::BACKENDS_MAX as usize }, MMAPABLE> = Array::new();

/// The flat Maglev array, the one entry of this hash of maps
/// (`mcs_common::MAGLEV_ARRAY_KEY`): every service port's table, slot →
/// backend id, two slots an element (`mcs_common::MaglevPair`); a port's
/// table is its entry's `table_size` slots from `table_start`. The agent
/// creates the array once at load (`--maglev-slots-max`; the template's size
/// does not bind it, `MAGLEV_TABLE_FLAGS`) and writes its slots in place
/// through a shared mapping. A plain array map in its place costs the
/// verifier more than its limit in `mcs_from_pod` (docs/datapath.md).
#[btf_map]
pub static MCS_MAGLEV: HashOfMaps<
    u32,
    Array<MaglevPair, { maglev_elements(limits::MAGLEV_TABLE_SIZE) as usize }, { MAGLEV_TABLE_FLAGS as usize }>,
    1,
    NO_PREALLOC,
> = HashOfMaps::new();

/// Connection tracking of TCP flows: forward and reply entries.
#[btf_map]
pub static MCS_CT_TCP: LruHashMap<CtKey, CtValue, { limits::CONNTRACK_MAX as usize }> = LruHashMap::new();

/// Connection tracking of every other protocol (UDP): a map of its own, so
/// that short UDP flows, however many, cannot evict idle TCP connections.
#[btf_map]
pub static MCS_CT_ANY: LruHashMap<CtKey, CtValue, { limits::CONNTRACK_NON_TCP_MAX as usize }> = LruHashMap::new();

/// The ports of fragmented datagrams, from their first fragment.
#[btf_map]
pub static MCS_FRAGS: LruHashMap<FragKey, FragValue, { limits::FRAGMENTS_MAX as usize }> = LruHashMap::new();

/// `ClientIP` session affinity: (client, service) → backend.
#[btf_map]
pub static MCS_AFFINITY: LruHashMap<AffinityKey, AffinityValue, { limits::AFFINITY_MAX as usize }> = LruHashMap::new();

/// The ClusterSetIP:port each socket-translated socket asked for, by socket
/// cookie and backend: `recvmsg` and `getpeername` show it.
#[btf_map]
pub static MCS_SOCK_REV: LruHashMap<SockRevKey, SockRevValue, { limits::SOCK_REV_MAX as usize }> = LruHashMap::new();

/// Token buckets of fail-fast answers and mid-stream pickups, per pod
/// interface (module `guard`). LRU: an interface that is gone, or quiet,
/// makes room; a bucket that comes back starts full.
#[btf_map]
pub static MCS_RATE: LruHashMap<RateKey, RateValue, { limits::RATE_BUCKETS_MAX as usize }> = LruHashMap::new();

/// Cluster names by id; written by the agent, read by `inspect`.
#[btf_map]
pub static MCS_CLUSTERS: HashMap<u32, ClusterName, { limits::CLUSTERS_MAX as usize }, NO_PREALLOC> = HashMap::new();

/// Per-service counters, indexed by service id (below `--service-ports-max`).
#[btf_map]
pub static MCS_SVC_STATS: PerCpuArray<ServiceStats, { limits::SERVICE_PORTS_MAX as usize }> = PerCpuArray::new();

/// The settings the programs were loaded with, copied here by the agent for
/// `inspect`. The programs read the `MCS_CFG` global instead.
#[btf_map]
pub static MCS_CONFIG: Array<DatapathConfig, 1> = Array::new();

/// Per-reason drop counters, indexed by `mcs_common::DropReason`.
#[btf_map]
pub static MCS_DROPS: PerCpuArray<u64, { limits::COUNTERS_MAX as usize }> = PerCpuArray::new();

/// Translation counters, indexed by `mcs_common::Stat`.
#[btf_map]
pub static MCS_STATS: PerCpuArray<u64, { limits::COUNTERS_MAX as usize }> = PerCpuArray::new();
