//! Service lookup and backend selection.
use mcs_common::{Backend, ServiceKey, ServiceValue, flow_hash, slot_for_hash};

use crate::{
    maps::{MCS_BACKENDS, MCS_SERVICES},
    parse::Flow,
};

/// Whether `daddr` is a ClusterSetIP (has a wildcard entry).
#[inline(always)]
pub fn is_cluster_set_ip(daddr: u32) -> bool {
    MCS_SERVICES.get_ptr(ServiceKey::from_nbo(daddr, 0, 0, 0)).is_some()
}

/// The master entry of the service port the flow is addressed to.
#[inline(always)]
pub fn lookup_master(flow: &Flow) -> Option<ServiceValue> {
    let key = ServiceKey::from_nbo(flow.daddr, flow.dport, flow.proto, 0);
    // SAFETY: the value is copied out at once; the pointer is not kept.
    MCS_SERVICES.get_ptr(key).map(|v| unsafe { *v })
}

/// Why no backend could be selected.
pub enum SelectError {
    /// The service has no backend slots.
    NoBackend,
    /// A slot or the backend it names is missing (a sync in progress, or a bug).
    Missing,
}

/// Picks the backend for a new flow of the service `master`.
#[inline(always)]
pub fn select_backend(flow: &Flow, master: &ServiceValue) -> Result<(u32, Backend), SelectError> {
    if master.count == 0 {
        return Err(SelectError::NoBackend);
    }
    let hash = flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto);
    let key = ServiceKey::from_nbo(flow.daddr, flow.dport, flow.proto, slot_for_hash(hash, master.count));
    // SAFETY: values are copied out at once; the pointers are not kept.
    let backend_id = MCS_SERVICES.get_ptr(key).map(|v| unsafe { (*v).backend_id }).ok_or(SelectError::Missing)?;
    let backend = MCS_BACKENDS.get_ptr(backend_id).map(|v| unsafe { *v }).ok_or(SelectError::Missing)?;
    Ok((backend_id, backend))
}
