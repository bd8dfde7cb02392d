//! Counters. Per-CPU, so incrementing needs no atomics.
use mcs_common::{DropReason, Stat};

use crate::maps::{MCS_DROPS, MCS_STATS};

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
