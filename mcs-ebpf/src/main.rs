//! tc programs of the MCS dataplane.
//!
//! - `mcs_from_pod` (ingress of pod-facing interfaces): packets to a
//!   a ClusterSetIP and service port get their destination rewritten to a
//!   backend pod (DNAT) and are tracked.
//! - `mcs_to_pod` (egress of pod-facing interfaces): replies of tracked flows
//!   get the ClusterSetIP:port back as their source.
//!
//! Entry points are thin; each concern has its module.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "the verifier sees one flat program per entry point; BPF-to-BPF calls would cost more than these small helpers"
)]

mod conntrack;
mod maps;
mod nat;
mod parse;
mod service;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use mcs_common::{DropReason, Stat};

use crate::{
    nat::Side,
    parse::{Packet, Untranslatable},
    service::SelectError,
};

/// Not ours: let the next program, or the stack, decide (`TC_ACT_UNSPEC`, `TCX_NEXT`).
const VERDICT_NEXT: i32 = -1;
/// Translated: pass it on.
const VERDICT_PASS: i32 = TC_ACT_OK;
/// Dropped, and counted under a reason.
const VERDICT_DROP: i32 = TC_ACT_SHOT;

#[inline(always)]
fn drop_packet(reason: DropReason) -> i32 {
    stats::drop(reason);
    VERDICT_DROP
}

/// Ingress of pod-facing interfaces: DNAT to a backend.
#[classifier]
#[expect(clippy::needless_pass_by_value, reason = "the classifier macro fixes the signature")]
pub fn mcs_from_pod(ctx: TcContext) -> i32 {
    match parse::parse(&ctx) {
        Packet::Other => VERDICT_NEXT,
        Packet::Untranslatable { daddr, why } => {
            if !service::is_cluster_set_ip(daddr) {
                return VERDICT_NEXT;
            }
            drop_packet(match why {
                Untranslatable::Fragment => DropReason::Fragment,
                Untranslatable::Malformed => DropReason::Malformed,
                Untranslatable::OtherProtocol => DropReason::UnknownPort,
            })
        }
        Packet::Flow(flow) => {
            if !service::is_cluster_set_ip(flow.daddr) {
                return VERDICT_NEXT;
            }
            let Some(master) = service::lookup_master(&flow) else {
                return drop_packet(DropReason::UnknownPort);
            };
            let (addr, port) = if let Some(target) = conntrack::lookup_forward(&flow) {
                stats::stat(Stat::ForwardEstablished);
                target
            } else {
                let (backend_id, backend) = match service::select_backend(&flow, &master) {
                    Ok(selected) => selected,
                    Err(SelectError::NoBackend) => return drop_packet(DropReason::NoBackend),
                    Err(SelectError::Missing) => return drop_packet(DropReason::BackendMissing),
                };
                if conntrack::create(&flow, backend_id, &backend, master.service_id).is_err() {
                    return drop_packet(DropReason::CtInsertFailed);
                }
                stats::stat(Stat::ForwardNew);
                (backend.addr, backend.port)
            };
            if nat::rewrite(&ctx, &flow, Side::Destination, addr, port).is_err() {
                return drop_packet(DropReason::RewriteFailed);
            }
            VERDICT_PASS
        }
    }
}

/// Egress of pod-facing interfaces: restore the ClusterSetIP on replies.
#[classifier]
#[expect(clippy::needless_pass_by_value, reason = "the classifier macro fixes the signature")]
pub fn mcs_to_pod(ctx: TcContext) -> i32 {
    let Packet::Flow(flow) = parse::parse(&ctx) else {
        return VERDICT_NEXT;
    };
    let Some((addr, port)) = conntrack::lookup_reply(&flow) else {
        return VERDICT_NEXT;
    };
    if nat::rewrite(&ctx, &flow, Side::Source, addr, port).is_err() {
        return drop_packet(DropReason::RewriteFailed);
    }
    stats::stat(Stat::ReverseNat);
    VERDICT_PASS
}

/// Does nothing: the floor the benchmarks compare the other programs with.
#[classifier]
pub fn mcs_noop(_ctx: TcContext) -> i32 {
    VERDICT_NEXT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
