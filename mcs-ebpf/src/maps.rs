//! Every map of the datapath, declared with BTF so `bpftool map dump` shows
//! named fields. Layouts live in `mcs-common`; the agent pins these maps under
//! its pin directory by the same names.
use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use mcs_common::{Backend, CtKey, CtValue, ServiceKey, ServiceValue, limits};

/// `BPF_F_NO_PREALLOC`: the service and backend maps are sized for the largest
/// fleet but hold few entries on most nodes, so memory follows use.
const NO_PREALLOC: usize = 1;

/// Service masters, wildcards and backend slots (see `mcs_common::ServiceKey`).
#[btf_map]
pub static MCS_SERVICES: HashMap<ServiceKey, ServiceValue, { limits::SERVICES_MAX as usize }, NO_PREALLOC> =
    HashMap::new();

/// Backends by id.
#[btf_map]
pub static MCS_BACKENDS: HashMap<u32, Backend, { limits::BACKENDS_MAX as usize }, NO_PREALLOC> = HashMap::new();

/// Connection tracking: forward and reply entries of translated flows.
#[btf_map]
pub static MCS_CT: LruHashMap<CtKey, CtValue, { limits::CONNTRACK_MAX as usize }> = LruHashMap::new();

/// Per-reason drop counters, indexed by `mcs_common::DropReason`.
#[btf_map]
pub static MCS_DROPS: PerCpuArray<u64, { limits::COUNTERS_MAX as usize }> = PerCpuArray::new();

/// Translation counters, indexed by `mcs_common::Stat`.
#[btf_map]
pub static MCS_STATS: PerCpuArray<u64, { limits::COUNTERS_MAX as usize }> = PerCpuArray::new();
