//! Service lookup, backend selection (session affinity, then Maglev), and
//! the check that a tracked flow's backend still exists. The tc programs and
//! the socket programs select with the same code from the same maps; they
//! differ only in what they hash and who the client is ([`Choice`]).
use aya_ebpf::bindings::BPF_ANY;
use mcs_common::{
    AffinityKey, AffinityValue, BACKEND_F_REMOVED, BACKEND_F_TERMINATING, Backend, CtValue, MAGLEV_ARRAY_KEY,
    NS_PER_SEC, SERVICE_F_FALLBACK, ServiceKey, ServiceValue, flow_hash, maglev_slot, socket_hash,
};

use crate::{
    maps::{MCS_AFFINITY, MCS_BACKENDS, MCS_MAGLEV, MCS_SERVICES},
    parse::Flow,
};

/// Whether `daddr` is a ClusterSetIP (has a wildcard entry).
#[inline(always)]
pub fn is_cluster_set_ip(daddr: u32) -> bool {
    MCS_SERVICES.get_ptr(ServiceKey::from_nbo(daddr, 0, 0)).is_some()
}

/// The service port the flow is addressed to.
#[inline(always)]
pub fn lookup(flow: &Flow) -> Option<ServiceValue> {
    lookup_port(flow.daddr, flow.dport, flow.proto)
}

/// The service port at `addr:port` (NBO) for protocol `proto`.
#[inline(always)]
pub fn lookup_port(addr: u32, port: u16, proto: u8) -> Option<ServiceValue> {
    let key = ServiceKey::from_nbo(addr, port, proto);
    // SAFETY: the value is copied out at once; the pointer is not kept.
    MCS_SERVICES.get_ptr(key).map(|v| unsafe { *v })
}

/// A backend by id (an array index the verifier inlines).
#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    MCS_BACKENDS.get(id).copied().filter(Backend::is_present)
}

/// Whether the backend a tracked flow was sent to still exists (in its
/// removal grace period included): same id, same address and port (ids are
/// reused), same service port. `entry` is the flow's forward entry.
#[inline(always)]
pub fn backend_still_there(entry: &CtValue) -> bool {
    backend(entry.backend_id)
        .is_some_and(|b| b.addr == entry.nat_daddr && b.port == entry.nat_dport && b.service_id == entry.service_id)
}

/// Why no backend could be selected.
pub enum SelectError {
    /// The service port has no usable backend.
    NoBackend,
    /// The table, or the backend a slot names, is missing (a bug, or a sync
    /// interrupted in a way the ordering should prevent).
    Missing,
}

/// A selected backend.
pub struct Selected {
    /// Its id.
    pub id: u32,
    /// The backend.
    pub backend: Backend,
    /// Chosen by the client's session affinity rather than by Maglev.
    pub by_affinity: bool,
}

/// The client's affinity backend, when the entry is still valid: not idle
/// for longer than the timeout, naming a backend of this service port that
/// exists, has not been removed, and is not terminating while ready backends exist. A valid entry's
/// last-seen time is set to `now` in place.
#[inline(always)]
fn affinity_backend(key: &AffinityKey, svc: &ServiceValue, now: u64) -> Option<(u32, Backend)> {
    let ptr = MCS_AFFINITY.get_ptr_mut(key)?;
    // SAFETY: the pointer came from a lookup in this program run; the value
    // is copied out, and the time written back in place, as conntrack does.
    let entry: AffinityValue = unsafe { *ptr };
    let timeout = u64::from(svc.affinity_timeout) * NS_PER_SEC;
    if now.saturating_sub(entry.last_seen_ns) > timeout {
        return None;
    }
    let b = backend(entry.backend_id)?;
    if b.service_id != svc.service_id {
        return None;
    }
    if b.flags & BACKEND_F_REMOVED != 0 || (b.flags & BACKEND_F_TERMINATING != 0 && svc.flags & SERVICE_F_FALLBACK == 0)
    {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*ptr).last_seen_ns = now };
    Some((entry.backend_id, b))
}

/// What a new connection is balanced by: the hash that picks its Maglev
/// slot, and the client its session affinity belongs to.
pub struct Choice {
    /// Picks the slot.
    pub hash: u32,
    /// The client's affinity entry, for service ports with `ClientIP` affinity.
    pub affinity: AffinityKey,
}

impl Choice {
    /// A packet's flow (tc): the 5-tuple, and the source address as client.
    #[inline(always)]
    pub const fn of_flow(flow: &Flow, svc: &ServiceValue) -> Self {
        Self {
            hash: flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto),
            affinity: AffinityKey::by_addr(flow.saddr, svc.service_id),
        }
    }

    /// A socket (cgroup programs): its cookie, and its network namespace as
    /// client (a socket has no source address before it connects).
    #[inline(always)]
    pub const fn of_socket(cookie: u64, netns_cookie: u64, svc: &ServiceValue) -> Self {
        Self { hash: socket_hash(cookie), affinity: AffinityKey::by_netns(netns_cookie, svc.service_id) }
    }
}

/// Picks the backend for a new connection of the service port `svc`.
#[inline(always)]
pub fn select_backend(choice: &Choice, svc: &ServiceValue, now: u64) -> Result<Selected, SelectError> {
    if svc.table_size == 0 {
        return Err(SelectError::NoBackend);
    }
    let affinity_key = choice.affinity;
    if svc.affinity_timeout != 0
        && let Some((id, backend)) = affinity_backend(&affinity_key, svc, now)
    {
        return Ok(Selected { id, backend, by_affinity: true });
    }
    // The slot in the flat array of every table (wrapping: a corrupt entry
    // lands somewhere the bounds check or the service check refuses).
    let slot = svc.table_start.wrapping_add(maglev_slot(choice.hash, svc.table_size));
    // SAFETY: the inner map is an array: its elements never move or alias;
    // the id is copied out at once.
    let pair = unsafe { MCS_MAGLEV.get_value(&MAGLEV_ARRAY_KEY, &(slot / 2)) }.copied().ok_or(SelectError::Missing)?;
    // Not `pair[slot & 1]`: LLVM may turn that stack offset into an OR the
    // verifier refuses on a pointer.
    let id = if slot & 1 == 0 { pair[0] } else { pair[1] };
    let backend = backend(id).filter(|b| b.service_id == svc.service_id).ok_or(SelectError::Missing)?;
    if svc.affinity_timeout != 0 {
        let entry = AffinityValue { backend_id: id, pad: 0, last_seen_ns: now };
        let _ = MCS_AFFINITY.insert(affinity_key, entry, u64::from(BPF_ANY));
    }
    Ok(Selected { id, backend, by_affinity: false })
}
