//! Address and port rewriting with incremental checksum updates.
//!
//! One operation serves both directions: a packet's addresses and ports
//! become a conntrack entry's tuple. The checksum arithmetic of the packet's
//! own headers is left to the kernel helpers (given the change as a
//! [`Diff`]), which also keeps `CHECKSUM_PARTIAL` and `CHECKSUM_COMPLETE`
//! skbs right; a UDP checksum of zero (no checksum) stays zero. Headers
//! quoted inside an ICMP error are plain bytes to the kernel: their
//! checksums, and the ICMP checksum over them, are computed here.
use aya_ebpf::bindings::BPF_F_RECOMPUTE_CSUM;
use mcs_common::proto;

use crate::{
    csum::Diff,
    parse::{Flow, ICMP_CSUM_OFF, IP_CSUM_OFF, IP_MIN_LEN, IP_SADDR_OFF, IcmpError, Tuple, UDP_CSUM_OFF, l4_csum_off},
    pkt::{Pkt, Refused},
};

/// A rewrite the kernel refused.
pub struct RewriteFailed;

impl From<Refused> for RewriteFailed {
    fn from(_: Refused) -> Self {
        Self
    }
}

/// The checksum change of the addresses going from `old` to `new`.
#[inline(always)]
const fn addr_diff(old: &Tuple, new: &Tuple) -> Diff {
    Diff::NONE.dword(old.saddr, new.saddr).dword(old.daddr, new.daddr)
}

/// The checksum change of the ports going from `old` to `new`.
#[inline(always)]
const fn port_diff(old: &Tuple, new: &Tuple) -> Diff {
    Diff::NONE.word(old.sport, new.sport).word(old.dport, new.dport)
}

/// Writes the addresses of `new` into the IPv4 header at `l3_off` (with its
/// checksum) when they differ from `old`'s; returns their checksum change.
#[inline(always)]
fn rewrite_addrs<C: Pkt>(ctx: &C, l3_off: usize, old: &Tuple, new: &Tuple) -> Result<Diff, RewriteFailed> {
    if old.saddr == new.saddr && old.daddr == new.daddr {
        return Ok(Diff::NONE);
    }
    let diff = addr_diff(old, new);
    ctx.l3_csum_update(l3_off + IP_CSUM_OFF, diff)?;
    ctx.store(l3_off + IP_SADDR_OFF, &[new.saddr, new.daddr], 0)?;
    Ok(diff)
}

/// Rewrites a TCP or UDP packet `flow` to `new`: addresses, ports and both
/// checksums.
///
/// Without IPv4 options the header checksum, both addresses and both ports
/// are contiguous (bytes 10 to 23 from the IPv4 header): they are written
/// with one store, the IPv4 checksum computed here (it always covers the
/// whole header, whatever the skb's checksum state). The L4 checksum is left
/// to the helper, which knows that state: one call for the pseudo-header's
/// part, one for the ports'. So a translated packet costs three helper calls.
#[inline(always)]
pub fn rewrite<C: Pkt>(ctx: &C, flow: &Flow, new: &Tuple) -> Result<(), RewriteFailed> {
    let old = &flow.tuple();
    let udp = flow.proto == proto::UDP;
    let csum_off = l4_csum_off(flow.proto, flow.l4_off);
    let addrs_change = old.saddr != new.saddr || old.daddr != new.daddr;
    let ports_change = old.sport != new.sport || old.dport != new.dport;
    let addrs = addr_diff(old, new);
    if flow.l4_off == flow.l3_off + IP_MIN_LEN {
        let ip_csum = if addrs_change { addrs.apply(flow.ip_csum) } else { flow.ip_csum };
        let mut bytes = [0u8; 14];
        bytes[0..2].copy_from_slice(&ip_csum.to_ne_bytes());
        bytes[2..6].copy_from_slice(&new.saddr.to_ne_bytes());
        bytes[6..10].copy_from_slice(&new.daddr.to_ne_bytes());
        bytes[10..12].copy_from_slice(&new.sport.to_ne_bytes());
        bytes[12..14].copy_from_slice(&new.dport.to_ne_bytes());
        ctx.store(flow.l3_off + IP_CSUM_OFF, &bytes, 0)?;
    } else {
        rewrite_addrs(ctx, flow.l3_off, old, new)?;
        if ports_change {
            ctx.store(flow.l4_off, &[new.sport, new.dport], 0)?;
        }
    }
    if addrs_change {
        // The pseudo-header's part of the L4 checksum.
        ctx.l4_csum_update(csum_off, addrs, true, udp)?;
    }
    if ports_change {
        ctx.l4_csum_update(csum_off, port_diff(old, new), false, udp)?;
    }
    Ok(())
}

/// Rewrites the addresses of a later fragment (no L4 header; the L4
/// checksum, in the first fragment, was updated with it).
#[inline(always)]
pub fn rewrite_fragment<C: Pkt>(ctx: &C, l3_off: usize, old: &Tuple, new: &Tuple) -> Result<(), RewriteFailed> {
    rewrite_addrs(ctx, l3_off, old, new).map(|_| ())
}

/// Rewrites an ICMP error: the quoted header from `err.quoted.tuple` to
/// `quoted` (its addresses, ports, IPv4 checksum and, when quoted, its L4
/// checksum), then the outer addresses to `outer`, with the ICMP checksum
/// over all of it.
#[inline(always)]
pub fn rewrite_icmp<C: Pkt>(ctx: &C, err: &IcmpError, quoted: &Tuple, outer: (u32, u32)) -> Result<(), RewriteFailed> {
    let q = &err.quoted;
    let old = &q.tuple;
    // Every word of the ICMP message that changes, for its checksum.
    let mut icmp = Diff::NONE;

    let addrs = addr_diff(old, quoted);
    let ports = port_diff(old, quoted);
    let inner_ip_csum: u16 = ctx.load(q.l3_off + IP_CSUM_OFF)?;
    let new_ip_csum = addrs.apply(inner_ip_csum);
    icmp = icmp.add(addrs).add(ports).word(inner_ip_csum, new_ip_csum);
    ctx.store(q.l3_off + IP_CSUM_OFF, &new_ip_csum, u64::from(BPF_F_RECOMPUTE_CSUM))?;
    ctx.store(q.l3_off + IP_SADDR_OFF, &[quoted.saddr, quoted.daddr], u64::from(BPF_F_RECOMPUTE_CSUM))?;
    ctx.store(q.l4_off, &[quoted.sport, quoted.dport], u64::from(BPF_F_RECOMPUTE_CSUM))?;
    if q.has_l4_csum {
        let off = l4_csum_off(q.proto, q.l4_off);
        let l4_csum: u16 = ctx.load(off)?;
        // A zero UDP checksum is no checksum.
        if !(q.proto == proto::UDP && l4_csum == 0) {
            let mut new_l4 = addrs.add(ports).apply(l4_csum);
            if q.proto == proto::UDP && new_l4 == 0 && off == q.l4_off + UDP_CSUM_OFF {
                new_l4 = 0xffff;
            }
            icmp = icmp.word(l4_csum, new_l4);
            ctx.store(off, &new_l4, u64::from(BPF_F_RECOMPUTE_CSUM))?;
        }
    }
    let icmp_csum: u16 = ctx.load(err.icmp_off + ICMP_CSUM_OFF)?;
    ctx.store(err.icmp_off + ICMP_CSUM_OFF, &icmp.apply(icmp_csum), u64::from(BPF_F_RECOMPUTE_CSUM))?;
    // The outer header: ICMPv4 has no pseudo-header, so only the IPv4
    // checksum covers these.
    let outer_old = Tuple { saddr: err.saddr, daddr: err.daddr, sport: 0, dport: 0 };
    let outer_new = Tuple { saddr: outer.0, daddr: outer.1, sport: 0, dport: 0 };
    rewrite_addrs(ctx, err.l3_off, &outer_old, &outer_new).map(|_| ())
}

/// Sends a rewritten packet back out of the interface it arrived on, to the
/// pod that sent it: the Ethernet addresses swap, so it comes from the
/// interface the pod sent it to. For hairpinned flows, whose backend is
/// the client: no route and no `rp_filter` setting is involved.
#[inline(always)]
pub fn bounce<C: Pkt>(ctx: &C) -> Result<i32, RewriteFailed> {
    let macs: [u8; 12] = ctx.load(0)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0)?;
    Ok(ctx.send_back())
}
