//! Address and port rewriting with incremental checksum updates.
//!
//! The kernel helpers do the checksum arithmetic, which also keeps
//! `CHECKSUM_PARTIAL` and `CHECKSUM_COMPLETE` skbs right. A UDP checksum of zero
//! (no checksum) stays zero.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use mcs_common::proto;

use crate::parse::{ETH_LEN, Flow, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF};

/// Which end of the flow to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source (reverse NAT of replies).
    Source,
    /// The destination (DNAT to the backend).
    Destination,
}

/// Rewrites the address and port on `side` of `flow` to `addr`:`port` (both NBO).
#[inline(always)]
pub fn rewrite(ctx: &TcContext, flow: &Flow, side: Side, addr: u32, port: u16) -> Result<(), i64> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => (flow.saddr, flow.sport, ETH_LEN + IP_SADDR_OFF, flow.l4_off),
        Side::Destination => (flow.daddr, flow.dport, ETH_LEN + IP_DADDR_OFF, flow.l4_off + 2),
    };
    let mangled = if flow.proto == proto::UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    let csum_off = flow.csum_off();
    if old_addr != addr {
        ctx.l4_csum_replace(csum_off, u64::from(old_addr), u64::from(addr), u64::from(BPF_F_PSEUDO_HDR) | mangled | 4)?;
        ctx.l3_csum_replace(ETH_LEN + IP_CSUM_OFF, u64::from(old_addr), u64::from(addr), 4)?;
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(csum_off, u64::from(old_port), u64::from(port), mangled | 2)?;
        ctx.store(port_off, &port, 0)?;
    }
    Ok(())
}
