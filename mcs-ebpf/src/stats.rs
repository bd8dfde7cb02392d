//! Counters. Per-CPU, so incrementing needs no atomics.
use mcs_common::{DropReason, Stat};

use crate::maps::{MCS_DROPS, MCS_STATS, MCS_SVC_STATS};

#[inline(always)]
fn bump(map: &aya_ebpf::btf_maps::PerCpuArray<u64, { mcs_common::limits::COUNTERS_MAX as usize }>, index: u32) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array; nothing
        // else on this CPU runs concurrently with the program.
        unsafe { *counter += 1 };
    }
}

/// Counts a drop under its reason.
#[inline(always)]
pub fn drop(reason: DropReason) {
    bump(&MCS_DROPS, reason as u32);
}

/// Counts a translation event.
#[inline(always)]
pub fn stat(stat: Stat) {
    bump(&MCS_STATS, stat as u32);
}

/// What to add to a service port's counters.
#[derive(Clone, Copy)]
pub enum ServiceEvent {
    /// A packet of `bytes` was translated; `new` when it opened a flow.
    Forwarded { bytes: u32, new: bool },
    /// The packet was answered with an RST or ICMP error.
    Rejected,
    /// A `connect()` or `sendmsg()` was sent to a backend.
    SocketTranslated,
    /// A `connect()` or `sendmsg()` was refused (no usable backend).
    SocketRefused,
}

/// Counts an event of service port `service_id` (an index of the per-CPU array).
#[inline(always)]
pub fn service(service_id: u32, event: ServiceEvent) {
    let Some(counters) = MCS_SVC_STATS.get_ptr_mut(service_id) else {
        return;
    };
    // SAFETY: this CPU's element of a per-CPU array; nothing else on this
    // CPU runs concurrently with the program.
    unsafe {
        match event {
            ServiceEvent::Forwarded { bytes, new } => {
                (*counters).packets += 1;
                (*counters).bytes += u64::from(bytes);
                if new {
                    (*counters).new_flows += 1;
                }
            }
            ServiceEvent::Rejected => (*counters).rejected += 1,
            ServiceEvent::SocketTranslated => (*counters).socket_translated += 1,
            ServiceEvent::SocketRefused => (*counters).socket_refused += 1,
        }
    }
}
