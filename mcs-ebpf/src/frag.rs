//! IPv4 fragments of translated datagrams.
//!
//! Only the first fragment of a datagram carries its ports, so only it can
//! be matched to a flow. When a first fragment is translated its ports are
//! recorded under (source, destination, protocol, identification), as the
//! fragments arrive; each later fragment finds them there, follows the same
//! flow's entry and gets the same addresses (its payload has no header to
//! rewrite: the L4 checksum, in the first fragment, already covers it).
use aya_ebpf::bindings::BPF_ANY;
use mcs_common::{FragKey, FragValue};

use crate::{
    maps::MCS_FRAGS,
    parse::{Flow, Fragment, Tuple},
};

#[inline(always)]
const fn frag_key(saddr: u32, daddr: u32, protocol: u8, ip_id: u16) -> FragKey {
    FragKey { saddr, daddr, id: ip_id, proto: protocol, pad: 0 }
}

/// Records the ports of `flow`, a first fragment that was just translated.
#[inline(always)]
pub fn remember(flow: &Flow) {
    let key = frag_key(flow.saddr, flow.daddr, flow.proto, flow.ip_id);
    let _ = MCS_FRAGS.insert(key, FragValue { sport: flow.sport, dport: flow.dport }, u64::from(BPF_ANY));
}

/// The addresses and ports of the datagram `frag` belongs to, as its first
/// fragment arrived; `None` when that was not seen (or not translated).
#[inline(always)]
pub fn tuple(frag: &Fragment) -> Option<Tuple> {
    let key = frag_key(frag.saddr, frag.daddr, frag.proto, frag.ip_id);
    // SAFETY: the value is copied out at once.
    let ports = MCS_FRAGS.get_ptr(key).map(|p| unsafe { *p })?;
    Some(Tuple { saddr: frag.saddr, daddr: frag.daddr, sport: ports.sport, dport: ports.dport })
}
