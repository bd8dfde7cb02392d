//! tc programs of the MCS dataplane.
//!
//! - `mcs_from_pod` (ingress of pod-facing interfaces): packets to a
//!   ClusterSetIP and service port are translated to a backend (DNAT, and a
//!   source port of the translated range) and tracked; a service port
//!   without a usable backend answers at once (TCP RST, ICMP port
//!   unreachable); ICMP errors a client sends about a translated flow go to
//!   its backend translated; packets to the hairpin address (replies of
//!   hairpinned flows) get the ClusterSetIP back and return to the pod.
//! - `mcs_to_pod` (egress of pod-facing interfaces): replies of tracked flows,
//!   and ICMP errors about them, get the ClusterSetIP:port and the client's
//!   own port back.
//!
//! - `mcs_connect4`, `mcs_sendmsg4` (cgroup): a `connect()` or `sendto()` to
//!   a ClusterSetIP:port gets a backend's address before the kernel routes
//!   it (module `sock`), so its packets pass the tc programs as direct ones;
//!   `mcs_recvmsg4`, `mcs_getpeername4` show the ClusterSetIP:port again.
//!
//! - `mcs_gateway` (XDP on uplinks, `--xdp-interfaces`): ClusterSetIP
//!   traffic of clients that run no agent, translated (DNAT to a backend,
//!   SNAT to this node's address) and forwarded from XDP, replies reversed
//!   (module `gateway`).
//!
//! A translated packet goes on with `TCX_NEXT`, so a program after ours on
//! the interface (a CNI's policy, say) sees it; everything that is not ours
//! goes on untouched. Entry points are thin; each concern has its module.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "the verifier sees one flat program per entry point; BPF-to-BPF calls would cost more than these small helpers"
)]

mod config;
mod conntrack;
mod csum;
mod events;
mod frag;
mod gateway;
mod guard;
mod icmp;
mod maps;
mod nat;
mod parse;
mod pkt;
mod reject;
mod service;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use mcs_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CtValue, DropReason, ServiceValue, Stat,
    event::{EVENT_FROM_POD, EVENT_TO_POD},
    proto, rate_kind,
};

use crate::{
    conntrack::{CreateError, Lookup, nat_tuple},
    events::Tuple,
    parse::{Flow, Fragment, IcmpError, Packet, TCP_RST, Untranslatable},
    service::SelectError,
    stats::ServiceEvent,
};

/// Let the next program, or the stack, decide (`TC_ACT_UNSPEC`, `TCX_NEXT`):
/// for packets that are not ours, and for translated ones alike.
const VERDICT_NEXT: i32 = -1;
/// Dropped, and counted under a reason.
const VERDICT_DROP: i32 = TC_ACT_SHOT;

/// Drops a packet seen in `direction` (`EVENT_FROM_POD`, `EVENT_TO_POD`):
/// counted under `reason`, and reported with its tuple when drop events are on.
#[inline(always)]
fn drop_packet(ctx: &TcContext, direction: u8, reason: DropReason, tuple: &Tuple) -> i32 {
    stats::drop(reason);
    events::dropped(ctx, direction, reason, tuple);
    VERDICT_DROP
}

/// [`drop_packet`] of a TCP or UDP packet from a pod.
#[inline(always)]
fn drop_flow(ctx: &TcContext, flow: &Flow, reason: DropReason) -> i32 {
    drop_packet(ctx, EVENT_FROM_POD, reason, &Tuple::of(flow))
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
            let reason = match why {
                Untranslatable::Malformed => DropReason::Malformed,
                Untranslatable::OtherProtocol => DropReason::UnknownPort,
            };
            drop_packet(&ctx, EVENT_FROM_POD, reason, &Tuple::addrs(0, daddr, 0))
        }
        Packet::Flow(flow) => {
            if service::is_cluster_set_ip(flow.daddr) {
                return forward(&ctx, &flow);
            }
            if is_hairpin_addr(flow.daddr) {
                return hairpin_reply(&ctx, &flow);
            }
            VERDICT_NEXT
        }
        Packet::Fragment(frag) => {
            if service::is_cluster_set_ip(frag.daddr) {
                return fragment(&ctx, &frag, CT_DIR_FORWARD).unwrap_or_else(|| {
                    drop_packet(
                        &ctx,
                        EVENT_FROM_POD,
                        DropReason::Fragment,
                        &Tuple::addrs(frag.saddr, frag.daddr, frag.proto),
                    )
                });
            }
            if is_hairpin_addr(frag.daddr) {
                return fragment(&ctx, &frag, CT_DIR_REPLY).unwrap_or(VERDICT_NEXT);
            }
            VERDICT_NEXT
        }
        Packet::IcmpError(err) => {
            if service::is_cluster_set_ip(err.daddr) {
                return icmp_error(&ctx, &err, CT_DIR_FORWARD).unwrap_or_else(|| {
                    drop_packet(
                        &ctx,
                        EVENT_FROM_POD,
                        DropReason::IcmpNoFlow,
                        &Tuple::addrs(err.saddr, err.daddr, proto::ICMP),
                    )
                });
            }
            if is_hairpin_addr(err.daddr) {
                return icmp_error(&ctx, &err, CT_DIR_REPLY).unwrap_or(VERDICT_NEXT);
            }
            VERDICT_NEXT
        }
    }
}

/// Whether `daddr` is the hairpin address (when hairpin is on).
#[inline(always)]
fn is_hairpin_addr(daddr: u32) -> bool {
    let hairpin = config::hairpin_addr();
    hairpin != 0 && daddr == hairpin
}

/// A packet from a client to a ClusterSetIP. Conntrack first: a packet of a
/// tracked flow whose backend exists needs no service lookup.
#[inline(always)]
fn forward(ctx: &TcContext, flow: &Flow) -> i32 {
    // What became of an old entry is counted where it is found, so every
    // path reaches the new-flow code in the same state (the verifier walks
    // the port probes once, not once per kind of old entry).
    let ifindex = guard::ifindex(ctx);
    let client_tag = if guard::validates_sources() { mcs_common::ifindex_tag(ifindex) } else { 0 };
    let now = match conntrack::lookup(flow, CT_DIR_FORWARD, client_tag) {
        // A packet with a tracked flow's tuple from another interface than
        // the flow's client: another pod using the client's address, unless
        // the node now routes the address here (the client came back on a
        // new interface), and then it starts a new flow.
        Lookup::Foreign(now) => {
            if !guard::source_routes_back(ctx, flow, ifindex) {
                return drop_flow(ctx, flow, DropReason::SourceInvalid);
            }
            stats::stat(Stat::CtReused);
            now
        }
        Lookup::Hit(entry, now) => {
            if service::backend_still_there(&entry) {
                stats::stat(Stat::ForwardEstablished);
                stats::service(entry.service_id, ServiceEvent::Forwarded { bytes: ctx.len(), new: false });
                return translate(ctx, flow, &entry);
            }
            // The flow's backend was removed (and its grace is over). A TCP
            // connection cannot move: reset it (a new SYN starts over); UDP
            // moves to a new backend.
            if flow.proto == proto::TCP && !flow.is_syn() {
                conntrack::delete(flow, &entry);
                return refuse(ctx, flow, entry.service_id, DropReason::BackendGone);
            }
            if flow.proto == proto::UDP {
                stats::stat(Stat::CtReselected);
            }
            now
        }
        Lookup::Stale(now) => {
            stats::stat(Stat::CtExpired);
            now
        }
        Lookup::Reused(now) => {
            stats::stat(Stat::CtReused);
            now
        }
        Lookup::Miss => conntrack::now(),
    };
    let Some(svc) = service::lookup(flow) else {
        return drop_flow(ctx, flow, DropReason::UnknownPort);
    };
    // Nothing is written for a source the node would not answer here.
    if guard::validates_sources() && !guard::source_routes_back(ctx, flow, ifindex) {
        return drop_flow(ctx, flow, DropReason::SourceInvalid);
    }
    new_flow(ctx, flow, &svc, ifindex, now)
}

/// Selects a backend for a new flow from interface `ifindex`, tracks it and
/// translates the packet.
#[inline(always)]
fn new_flow(ctx: &TcContext, flow: &Flow, svc: &ServiceValue, ifindex: u32, now: u64) -> i32 {
    // A TCP segment other than a SYN picks its flow up mid-stream: within
    // its interface's budget, so made-up segments cannot flood conntrack.
    if flow.proto == proto::TCP && !flow.is_syn() {
        let cfg = config::cfg();
        if !guard::spend(ifindex, rate_kind::PICKUP, cfg.pickup_rate, cfg.pickup_burst, now) {
            return drop_flow(ctx, flow, DropReason::PickupLimited);
        }
    }
    let selected = match service::select_backend(&service::Choice::of_flow(flow, svc), svc, now) {
        Ok(selected) => selected,
        Err(SelectError::NoBackend) => return refuse(ctx, flow, svc.service_id, DropReason::NoBackend),
        Err(SelectError::Missing) => return drop_flow(ctx, flow, DropReason::BackendMissing),
    };
    if selected.by_affinity {
        stats::stat(Stat::AffinityHit);
    }
    // A pod that reaches itself through the ClusterSetIP: its source becomes
    // the hairpin address, so its own stack takes the packet for a peer's.
    let hairpin = config::hairpin_addr();
    let hairpinned = hairpin != 0 && selected.backend.addr == flow.saddr;
    let nat_saddr = if hairpinned { hairpin } else { flow.saddr };
    let created =
        match conntrack::create(flow, (selected.id, &selected.backend), svc.service_id, nat_saddr, ifindex, now) {
            Ok(created) => created,
            Err(CreateError::PortsExhausted) => return drop_flow(ctx, flow, DropReason::NatPortsExhausted),
            Err(CreateError::InsertFailed) => return drop_flow(ctx, flow, DropReason::CtInsertFailed),
        };
    stats::stat(Stat::ForwardNew);
    events::translated(ctx, EVENT_FROM_POD, &Tuple::of(flow), svc.service_id, (selected.id, &selected.backend));
    if created.probed {
        stats::stat(Stat::NatPortProbed);
    }
    if created.reused {
        stats::stat(Stat::NatPortReused);
    }
    if hairpinned {
        stats::stat(Stat::HairpinNew);
    }
    stats::service(svc.service_id, ServiceEvent::Forwarded { bytes: ctx.len(), new: true });
    translate(ctx, flow, &created.forward)
}

/// Rewrites a packet of `flow` to its entry's tuple. A source-NATed
/// (hairpinned) packet goes straight back out to the pod it came from.
#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow, entry: &CtValue) -> i32 {
    if nat::rewrite(ctx, flow, &nat_tuple(entry)).is_err() {
        return drop_flow(ctx, flow, DropReason::RewriteFailed);
    }
    if flow.first_fragment {
        frag::remember(flow);
    }
    if entry.nat_saddr != flow.saddr {
        return bounce(ctx, &Tuple::of(flow));
    }
    VERDICT_NEXT
}

/// Sends a rewritten packet (`tuple` before the rewrite) back to the pod it came from.
#[inline(always)]
fn bounce(ctx: &TcContext, tuple: &Tuple) -> i32 {
    nat::bounce(ctx).unwrap_or_else(|_| drop_packet(ctx, EVENT_FROM_POD, DropReason::RewriteFailed, tuple))
}

/// Refuses a packet of service port `service_id` for `reason`: answers the
/// client from the ClusterSetIP (TCP RST or ICMP port unreachable), except
/// an RST, which is dropped. Each packet is counted under one drop reason:
/// `reason`, or `RejectFailed` alone when the answer could not be built.
#[inline(always)]
fn refuse(ctx: &TcContext, flow: &Flow, service_id: u32, reason: DropReason) -> i32 {
    if flow.has(TCP_RST) {
        return drop_flow(ctx, flow, reason);
    }
    let cfg = config::cfg();
    if !guard::spend(guard::ifindex(ctx), rate_kind::REJECT, cfg.reject_rate, cfg.reject_burst, conntrack::now()) {
        return drop_flow(ctx, flow, DropReason::RejectLimited);
    }
    let (result, stat) = if flow.proto == proto::TCP {
        (reject::tcp_rst(ctx, flow), Stat::RejectTcp)
    } else {
        (reject::icmp_port_unreachable(ctx, flow), Stat::RejectIcmp)
    };
    match result {
        Ok(verdict) => {
            stats::drop(reason);
            stats::stat(stat);
            stats::service(service_id, ServiceEvent::Rejected);
            events::refused(ctx, EVENT_FROM_POD, reason, &Tuple::of(flow), service_id);
            verdict
        }
        Err(()) => drop_flow(ctx, flow, DropReason::RejectFailed),
    }
}

/// A backend's reply to a hairpinned flow (to the hairpin address): restore
/// the ClusterSetIP as source and the client as destination, and send it
/// back to the pod.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, flow: &Flow) -> i32 {
    let Lookup::Hit(entry, _) = conntrack::lookup(flow, CT_DIR_REPLY, 0) else {
        return VERDICT_NEXT;
    };
    if nat::rewrite(ctx, flow, &nat_tuple(&entry)).is_err() {
        return drop_flow(ctx, flow, DropReason::RewriteFailed);
    }
    if flow.first_fragment {
        frag::remember(flow);
    }
    stats::stat(Stat::ReverseNat);
    bounce(ctx, &Tuple::of(flow))
}

/// A later fragment of a datagram whose flow's entry in direction `dir`
/// the first fragment found: the same addresses. `None` when the first
/// fragment was not seen or its flow is not tracked.
#[inline(always)]
fn fragment(ctx: &TcContext, frag: &Fragment, dir: u8) -> Option<i32> {
    let tuple = frag::tuple(frag)?;
    let entry = conntrack::peek(&conntrack::key(&tuple, frag.proto, dir))?;
    let reported = Tuple::addrs(frag.saddr, frag.daddr, frag.proto);
    if nat::rewrite_fragment(ctx, frag.l3_off, &tuple, &nat_tuple(&entry)).is_err() {
        return Some(drop_packet(ctx, EVENT_FROM_POD, DropReason::RewriteFailed, &reported));
    }
    stats::stat(Stat::FragmentTranslated);
    // Forward: a hairpinned (source-NATed) flow's fragment goes back to the
    // pod; reply at ingress: only hairpinned flows' replies arrive there.
    if dir == CT_DIR_REPLY || entry.nat_saddr != tuple.saddr {
        return Some(bounce(ctx, &reported));
    }
    Some(VERDICT_NEXT)
}

/// An ICMP error about a translated flow, whose quote (seen backwards) is
/// the key of the flow's entry in direction `dir`. `None` when no tracked
/// flow matches.
#[inline(always)]
fn icmp_error(ctx: &TcContext, err: &IcmpError, dir: u8) -> Option<i32> {
    let reported = Tuple::addrs(err.saddr, err.daddr, proto::ICMP);
    let entry = match icmp::translate(ctx, err, dir) {
        Ok(entry) => entry?,
        Err(_) => return Some(drop_packet(ctx, EVENT_FROM_POD, DropReason::RewriteFailed, &reported)),
    };
    let to_backend = dir == CT_DIR_FORWARD;
    stats::stat(if to_backend { Stat::IcmpToBackend } else { Stat::IcmpToClient });
    // From a client to its own hairpinned flow's backend (itself), or an
    // error at ingress about a hairpinned flow's reply: back to the pod.
    let client = err.quoted.tuple.daddr;
    if !to_backend || entry.nat_saddr != client {
        return Some(bounce(ctx, &reported));
    }
    Some(VERDICT_NEXT)
}

/// Egress of pod-facing interfaces: restore the ClusterSetIP on replies.
#[classifier]
#[expect(clippy::needless_pass_by_value, reason = "the classifier macro fixes the signature")]
pub fn mcs_to_pod(ctx: TcContext) -> i32 {
    match parse::parse(&ctx) {
        Packet::Flow(flow) => {
            let Lookup::Hit(entry, _) = conntrack::lookup(&flow, CT_DIR_REPLY, 0) else {
                return VERDICT_NEXT;
            };
            if nat::rewrite(&ctx, &flow, &nat_tuple(&entry)).is_err() {
                return drop_packet(&ctx, EVENT_TO_POD, DropReason::RewriteFailed, &Tuple::of(&flow));
            }
            if flow.first_fragment {
                frag::remember(&flow);
            }
            stats::stat(Stat::ReverseNat);
            VERDICT_NEXT
        }
        Packet::Fragment(frag) => {
            let Some(tuple) = frag::tuple(&frag) else { return VERDICT_NEXT };
            let Some(entry) = conntrack::peek(&conntrack::key(&tuple, frag.proto, CT_DIR_REPLY)) else {
                return VERDICT_NEXT;
            };
            if nat::rewrite_fragment(&ctx, frag.l3_off, &tuple, &nat_tuple(&entry)).is_err() {
                let reported = Tuple::addrs(frag.saddr, frag.daddr, frag.proto);
                return drop_packet(&ctx, EVENT_TO_POD, DropReason::RewriteFailed, &reported);
            }
            stats::stat(Stat::FragmentTranslated);
            VERDICT_NEXT
        }
        Packet::IcmpError(err) => match icmp::translate(&ctx, &err, CT_DIR_REPLY) {
            Ok(Some(_)) => {
                stats::stat(Stat::IcmpToClient);
                VERDICT_NEXT
            }
            Ok(None) => VERDICT_NEXT,
            Err(_) => {
                let reported = Tuple::addrs(err.saddr, err.daddr, proto::ICMP);
                drop_packet(&ctx, EVENT_TO_POD, DropReason::RewriteFailed, &reported)
            }
        },
        Packet::Other | Packet::Untranslatable { .. } => VERDICT_NEXT,
    }
}

/// `connect()` of a TCP or UDP socket: a ClusterSetIP:port becomes a backend.
#[cgroup_sock_addr(connect4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro fixes the signature")]
pub fn mcs_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

/// `sendto()`/`sendmsg()` with an address, of an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro fixes the signature")]
pub fn mcs_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

/// `recvmsg()`/`recvfrom()` of a UDP socket: a translated socket's answers
/// come from the ClusterSetIP:port.
#[cgroup_sock_addr(recvmsg4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro fixes the signature")]
pub fn mcs_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// `getpeername()`: a translated socket's peer is the ClusterSetIP:port.
#[cgroup_sock_addr(getpeername4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro fixes the signature")]
pub fn mcs_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// Does nothing: the floor the benchmarks compare the other programs with.
#[classifier]
pub fn mcs_noop(_ctx: TcContext) -> i32 {
    VERDICT_NEXT
}

/// XDP on uplinks: the gateway for clients that run no agent.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the xdp macro fixes the signature")]
pub fn mcs_gateway(ctx: XdpContext) -> u32 {
    #[expect(clippy::cast_sign_loss, reason = "XDP verdicts are small and non-negative")]
    let verdict = gateway::run(&ctx) as u32;
    verdict
}

/// `XDP_PASS` and nothing else: the XDP floor of the benchmarks, and the
/// program tests put on the far end of a veth so that it receives
/// redirected frames.
#[xdp]
pub fn mcs_xdp_noop(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
