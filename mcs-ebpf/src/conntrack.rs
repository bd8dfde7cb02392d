//! Connection tracking of translated flows.
//!
//! Each flow has two entries in `MCS_CT`: the forward one, keyed as the client
//! sends (client → ClusterSetIP), and the reply one, keyed as the backend
//! answers (backend → client). Later packets of the flow follow the forward
//! entry even when the backend set changes.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use mcs_common::{
    Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_CLOSING, CT_F_SEEN_REPLY, CT_F_SYN, CtKey, CtValue, proto,
};

use crate::{
    maps::MCS_CT,
    parse::{Flow, TCP_FIN, TCP_RST, TCP_SYN},
};

/// `last_seen_ns` is refreshed at most this often, to spare a map write per packet.
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

const BPF_ANY: u64 = 0;

#[inline(always)]
fn key(flow: &Flow, dir: u8) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        dir,
        pad: [0; 2],
    }
}

#[inline(always)]
fn flags_from_packet(flow: &Flow) -> u8 {
    if flow.proto != proto::TCP {
        return 0;
    }
    let mut flags = 0;
    if flow.tcp_flags & TCP_SYN != 0 {
        flags |= CT_F_SYN;
    }
    if flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= CT_F_CLOSING;
    }
    flags
}

/// Looks up the entry of `flow` in direction `dir` and refreshes it. Returns
/// the address and port to translate to.
#[inline(always)]
fn lookup(flow: &Flow, dir: u8, extra_flags: u8) -> Option<(u32, u16)> {
    let entry = MCS_CT.get_ptr_mut(key(flow, dir))?;
    let flags = flags_from_packet(flow) | extra_flags;
    // SAFETY: the entry pointer came from a lookup in this program run; fields
    // are read and written in place, as the kernel's own conntrack helpers do.
    unsafe {
        let now = bpf_ktime_get_ns();
        if (*entry).flags & flags != flags {
            (*entry).flags |= flags;
        }
        if now.wrapping_sub((*entry).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*entry).last_seen_ns = now;
        }
        Some(((*entry).nat_addr, (*entry).nat_port))
    }
}

/// The backend address and port of a tracked forward flow.
#[inline(always)]
pub fn lookup_forward(flow: &Flow) -> Option<(u32, u16)> {
    lookup(flow, CT_DIR_FORWARD, 0)
}

/// The ClusterSetIP and port to restore on a tracked reply.
#[inline(always)]
pub fn lookup_reply(flow: &Flow) -> Option<(u32, u16)> {
    lookup(flow, CT_DIR_REPLY, CT_F_SEEN_REPLY)
}

/// Records a new flow to `backend`. The reply entry is written first, so a
/// forward entry never exists without its reply entry.
#[inline(always)]
pub fn create(flow: &Flow, backend_id: u32, backend: &Backend, service_id: u32) -> Result<(), ()> {
    let now = unsafe { bpf_ktime_get_ns() };
    let flags = flags_from_packet(flow);
    let reply_key = CtKey {
        saddr: backend.addr,
        daddr: flow.saddr,
        sport: backend.port,
        dport: flow.sport,
        proto: flow.proto,
        dir: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let reply = CtValue {
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        flags,
        pad: 0,
        backend_id,
        service_id,
        created_ns: now,
        last_seen_ns: now,
    };
    MCS_CT.insert(reply_key, reply, BPF_ANY).map_err(|_| ())?;
    let forward = CtValue { nat_addr: backend.addr, nat_port: backend.port, ..reply };
    MCS_CT.insert(key(flow, CT_DIR_FORWARD), forward, BPF_ANY).map_err(|_| ())
}
