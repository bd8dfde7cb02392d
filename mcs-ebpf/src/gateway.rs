//! The XDP gateway (`mcs_gateway`, on `--xdp-interfaces`): ClusterSetIP
//! traffic of clients that run no agent (VMs, hosts of another network,
//! clusters without the agent), which the fleet routes to gateway nodes.
//!
//! - A packet to a ClusterSetIP:port is translated as on the tc path, by the
//!   same modules (parse, conntrack, service lookup and selection, NAT,
//!   fail-fast, ICMP, fragments): a tracked flow follows its entry; a new
//!   one gets a backend from the service port's Maglev table or its
//!   affinity, then its source becomes **the gateway's own address**
//!   towards that backend (`bpf_fib_lookup` with `BPF_FIB_LOOKUP_SRC`: the
//!   address the kernel would give a connection of its own, as MASQUERADE
//!   picks it) with a port of `--nat-port-range` unique per (that address,
//!   backend address and port), so the backend's replies come back here.
//! - A reply (backend → gateway address:translated port) gets the
//!   ClusterSetIP:port and the client's address and port back.
//! - Both are forwarded from here: `bpf_fib_lookup` gives the egress
//!   interface and the next hop's MAC; the TTL is decremented (a packet
//!   whose TTL would expire goes to the stack untranslated, which answers
//!   with a time exceeded); then `XDP_TX` (same interface) or `XDP_REDIRECT`.
//!   When the next hop's neighbour entry is not resolved yet, or the packet
//!   is larger than the route's MTU, the translated packet goes to the
//!   stack (`XDP_PASS`), which resolves or fragments and forwards it.
//! - Everything else passes (`XDP_PASS`) after the parse and one hash
//!   lookup (the ClusterSetIP's wildcard entry); a TCP or UDP packet to a
//!   port of the translated range costs one conntrack lookup more.
//!
//! Checksums are updated incrementally by hand (XDP has no skb and no
//! checksum helpers: [`crate::pkt`]). The flows live in the same conntrack
//! maps as the tc path's; a reply whose entry belongs to a tc flow (its
//! client is the reply's destination itself, or the hairpin address) is
//! left to the tc program on the pod's interface.
//!
//! **Stack.** Every step is inlined into the program's one frame (about
//! 400 bytes: the compiler lays the steps' locals over each other), and only
//! [`route`] is a subprogram, so the deepest chain stays under the
//! verifier's 512 bytes. Steps kept as subprograms of their own would each
//! need a frame, and a chain of the program's frame, a step's and the
//! route's does not fit (it reached 672 bytes).
//!
//! The orchestration is this module's own rather than `main.rs`'s, because
//! what follows a translation differs (a route and a forward, not
//! `TCX_NEXT`) and the tc entry points stay as they are.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC,
        bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use mcs_common::{
    Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CtValue, DropReason, ServiceValue, Stat, event::EVENT_GATEWAY, proto,
};

use crate::{
    config,
    conntrack::{self, CreateError, Lookup, nat_tuple},
    csum::Diff,
    events::{self, Tuple},
    frag, icmp, nat,
    parse::{self, Flow, Fragment, IP_CSUM_OFF, IcmpError, Packet, TCP_RST, Untranslatable},
    pkt::{Pkt, XDP_PASS, XDP_TX},
    reject, service,
    service::SelectError,
    stats::{self, ServiceEvent},
};

/// `AF_INET`, as `bpf_fib_lookup` wants the family.
const AF_INET: u8 = 2;
/// Offset of the TTL within the IPv4 header (the protocol follows).
const IP_TTL_OFF: usize = 8;
/// The size of `bpf_fib_lookup`'s argument (64 bytes).
#[expect(clippy::cast_possible_truncation, clippy::cast_possible_wrap, reason = "64 bytes")]
const FIB_PARAMS_LEN: i32 = size_of::<FibParams>() as i32;
/// Offset of the total length within the IPv4 header.
const IP_TOT_LEN_OFF: usize = 2;

/// The XDP program's body.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> i32 {
    match parse::parse(ctx) {
        Packet::Other => XDP_PASS,
        Packet::Untranslatable { daddr, why } => {
            if !service::is_cluster_set_ip(daddr) {
                return XDP_PASS;
            }
            let reason = match why {
                Untranslatable::Malformed => DropReason::Malformed,
                Untranslatable::OtherProtocol => DropReason::UnknownPort,
            };
            drop_packet(ctx, reason, &Tuple::addrs(0, daddr, 0))
        }
        Packet::Flow(flow) => {
            if service::is_cluster_set_ip(flow.daddr) {
                // Three steps in turn, each leaving the next what it needs.
                let mut step = forward(ctx, &flow);
                if let Step::New(svc, now) = step {
                    step = new_flow(ctx, &flow, &svc, now);
                }
                if let Step::Track(pending) = step {
                    step = track(ctx, &flow, &pending);
                }
                return match step {
                    Step::Done(verdict) => verdict,
                    Step::Refuse(service_id, reason) => refuse(ctx, &flow, service_id, reason),
                    Step::New(..) | Step::Track(_) => drop_flow(ctx, &flow, DropReason::BackendMissing),
                };
            }
            if config::cfg().in_nat_range(u16::from_be(flow.dport)) {
                return reply(ctx, &flow);
            }
            XDP_PASS
        }
        Packet::Fragment(frag) => fragment(ctx, &frag),
        Packet::IcmpError(err) => icmp_error(ctx, &err),
    }
}

/// Drops a packet, counted under `reason` (and reported when drop events are on).
#[inline(always)]
fn drop_packet(ctx: &XdpContext, reason: DropReason, tuple: &Tuple) -> i32 {
    stats::drop(reason);
    events::dropped(ctx, EVENT_GATEWAY, reason, tuple);
    XdpContext::DROP
}

#[inline(always)]
fn drop_flow(ctx: &XdpContext, flow: &Flow, reason: DropReason) -> i32 {
    drop_packet(ctx, reason, &Tuple::of(flow))
}

/// Where `bpf_fib_lookup` says a packet goes.
#[derive(Clone, Copy, Default)]
struct Route {
    /// `BPF_FIB_LKUP_RET_*`.
    rc: u32,
    /// The egress interface.
    ifindex: u32,
    /// The source address the kernel would use (new flows only).
    src: u32,
    /// The next hop's MAC, then the egress interface's.
    macs: [u8; 12],
}

/// A packet to route: addresses and ports (NBO; `saddr` 0: the kernel
/// picks the source, returned in [`Route::src`]), protocol, and the IPv4
/// total length (host order; the route's MTU is checked against it).
struct Query {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    protocol: u8,
    tot_len: u16,
}

/// Looks up the route of `q` into `out`. A subprogram (its own stack
/// frame): the 64-byte `bpf_fib_lookup` argument then does not add to the
/// frames of its callers.
#[inline(never)]
fn route(ctx: &XdpContext, q: &Query, out: &mut Route) {
    // SAFETY: a plain C struct of integers and unions of integers: all-zero is valid.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = q.protocol;
    p.sport = q.sport;
    p.dport = q.dport;
    p.__bindgen_anon_1.tot_len = q.tot_len;
    p.ifindex = ctx.ifindex();
    p.__bindgen_anon_3.ipv4_src = q.saddr;
    p.__bindgen_anon_4.ipv4_dst = q.daddr;
    let flags = if q.saddr == 0 { BPF_FIB_LOOKUP_SRC } else { 0 };
    // SAFETY: `p` is a valid `bpf_fib_lookup` of the size given; the context is the program's.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &raw mut p, FIB_PARAMS_LEN, flags) };
    out.macs[..6].copy_from_slice(&p.dmac);
    out.macs[6..].copy_from_slice(&p.smac);
    #[expect(
        clippy::cast_sign_loss,
        clippy::cast_possible_truncation,
        reason = "a small code; a negative one (invalid arguments) becomes a value no case matches"
    )]
    let rc = rc as u32;
    out.rc = rc;
    out.ifindex = p.ifindex;
    // SAFETY: the helper filled the IPv4 member of the union.
    out.src = unsafe { p.__bindgen_anon_3.ipv4_src };
}

/// The IPv4 total length of the packet (host order), 0 when unreadable.
#[inline(always)]
fn tot_len(ctx: &XdpContext, l3_off: usize) -> u16 {
    ctx.load::<[u8; 2]>(l3_off + IP_TOT_LEN_OFF).map_or(0, u16::from_be_bytes)
}

/// Whether the packet's TTL lets it be forwarded (above 1).
#[inline(always)]
fn ttl_ok(ctx: &XdpContext, l3_off: usize) -> bool {
    ctx.load::<[u8; 2]>(l3_off + IP_TTL_OFF).is_ok_and(|w| w[0] > 1)
}

/// Sends a translated packet on along `route`: the TTL decremented (the
/// IPv4 checksum with it), the Ethernet addresses of the next hop, then
/// `XDP_TX` or `XDP_REDIRECT`; or to the stack when the route needs it.
/// `tuple` is the packet before translation (for drop events).
#[inline(always)]
fn send(ctx: &XdpContext, l3_off: usize, route: &Route, tuple: &Tuple) -> i32 {
    match route.rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            stats::stat(Stat::GatewayToStack);
            return XDP_PASS;
        }
        _ => return drop_packet(ctx, DropReason::NoRoute, tuple),
    }
    let Ok(word) = ctx.load::<[u8; 2]>(l3_off + IP_TTL_OFF) else {
        return drop_packet(ctx, DropReason::RewriteFailed, tuple);
    };
    let decremented = [word[0].wrapping_sub(1), word[1]];
    let diff = Diff::NONE.word(u16::from_ne_bytes(word), u16::from_ne_bytes(decremented));
    if ctx.store(l3_off + IP_TTL_OFF, &decremented, 0).is_err()
        || ctx.l3_csum_update(l3_off + IP_CSUM_OFF, diff).is_err()
        || ctx.store(0, &route.macs, 0).is_err()
    {
        return drop_packet(ctx, DropReason::RewriteFailed, tuple);
    }
    stats::stat(Stat::GatewayForwarded);
    if route.ifindex == ctx.ifindex() {
        return XDP_TX;
    }
    // SAFETY: the helper has no preconditions.
    let verdict = unsafe { bpf_redirect(route.ifindex, 0) };
    #[expect(clippy::cast_possible_truncation, reason = "the helper returns an XDP verdict")]
    let verdict = verdict as i32;
    verdict
}

/// The route of a packet rewritten to `entry`'s tuple.
#[inline(always)]
fn route_of(ctx: &XdpContext, l3_off: usize, protocol: u8, entry: &CtValue) -> Route {
    let q = Query {
        saddr: entry.nat_saddr,
        daddr: entry.nat_daddr,
        sport: entry.nat_sport,
        dport: entry.nat_dport,
        protocol,
        tot_len: tot_len(ctx, l3_off),
    };
    let mut out = Route::default();
    route(ctx, &q, &mut out);
    out
}

/// Rewrites a packet of `flow` to `entry`'s tuple and sends it along `route`.
#[inline(always)]
fn translate(ctx: &XdpContext, flow: &Flow, entry: &CtValue, route: &Route) -> i32 {
    if nat::rewrite(ctx, flow, &nat_tuple(entry)).is_err() {
        return drop_flow(ctx, flow, DropReason::RewriteFailed);
    }
    if flow.first_fragment {
        frag::remember(flow);
    }
    send(ctx, flow.l3_off, route, &Tuple::of(flow))
}

/// What a step of a packet to a ClusterSetIP leaves to do.
enum Step {
    /// Nothing: the verdict.
    Done(i32),
    /// Answer the client (service port id, the reason counted).
    Refuse(u32, DropReason),
    /// Select a backend for a new flow of this service port (at this time).
    New(ServiceValue, u64),
    /// Track the new flow to its selected and routed backend, and forward it.
    Track(Pending),
}

/// A new flow's backend, selected and routed, not tracked yet.
struct Pending {
    backend_id: u32,
    backend: Backend,
    service_id: u32,
    now: u64,
    route: Route,
}

/// A packet from an external client to a ClusterSetIP. Conntrack first, as
/// on the tc path.
#[inline(always)]
fn forward(ctx: &XdpContext, flow: &Flow) -> Step {
    if !ttl_ok(ctx, flow.l3_off) {
        // The stack answers with a time exceeded from this node.
        return Step::Done(XDP_PASS);
    }
    let (now, replaced) = match conntrack::lookup(flow, CT_DIR_FORWARD, 0) {
        Lookup::Hit(entry, now) => {
            if service::backend_still_there(&entry) {
                let route = route_of(ctx, flow.l3_off, flow.proto, &entry);
                stats::stat(Stat::ForwardEstablished);
                stats::service(entry.service_id, ServiceEvent::Forwarded { bytes: ctx.len(), new: false });
                return Step::Done(translate(ctx, flow, &entry, &route));
            }
            if flow.proto == proto::TCP && !flow.is_syn() {
                conntrack::delete(flow, &entry);
                return Step::Refuse(entry.service_id, DropReason::BackendGone);
            }
            (now, (flow.proto == proto::UDP).then_some(Stat::CtReselected))
        }
        Lookup::Stale(now) => (now, Some(Stat::CtExpired)),
        // `Foreign` does not happen with client tag 0 (the gateway's clients
        // are not bound to an interface); were it to, the flow starts over.
        Lookup::Reused(now) | Lookup::Foreign(now) => (now, Some(Stat::CtReused)),
        Lookup::Miss => (conntrack::now(), None),
    };
    let Some(svc) = service::lookup(flow) else {
        return Step::Done(drop_flow(ctx, flow, DropReason::UnknownPort));
    };
    if let Some(stat) = replaced {
        stats::stat(stat);
    }
    Step::New(svc, now)
}

/// Selects a backend for a new flow, finds the gateway's address towards
/// it, tracks the flow source-NATed to that address and forwards the packet.
#[inline(always)]
fn new_flow(ctx: &XdpContext, flow: &Flow, svc: &ServiceValue, now: u64) -> Step {
    let selected = match service::select_backend(&service::Choice::of_flow(flow, svc), svc, now) {
        Ok(selected) => selected,
        Err(SelectError::NoBackend) => return Step::Refuse(svc.service_id, DropReason::NoBackend),
        Err(SelectError::Missing) => return Step::Done(drop_flow(ctx, flow, DropReason::BackendMissing)),
    };
    if selected.by_affinity {
        stats::stat(Stat::AffinityHit);
    }
    let b = &selected.backend;
    // The translated source port is not known yet; the route does not depend on it.
    let q = Query {
        saddr: 0,
        daddr: b.addr,
        sport: 0,
        dport: b.port,
        protocol: flow.proto,
        tot_len: tot_len(ctx, flow.l3_off),
    };
    let mut found = Route::default();
    route(ctx, &q, &mut found);
    let routed =
        matches!(found.rc, BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED);
    if !routed || found.src == 0 {
        return Step::Done(drop_flow(ctx, flow, DropReason::NoRoute));
    }
    Step::Track(Pending { backend_id: selected.id, backend: *b, service_id: svc.service_id, now, route: found })
}

/// Tracks a new flow, source-NATed to the gateway's address towards its
/// backend, and forwards its first packet.
#[inline(always)]
fn track(ctx: &XdpContext, flow: &Flow, pending: &Pending) -> Step {
    let (b, found, now) = (&pending.backend, &pending.route, pending.now);
    let svc_id = pending.service_id;
    let created = match conntrack::create(flow, (pending.backend_id, b), svc_id, found.src, ctx.ifindex(), now) {
        Ok(created) => created,
        Err(CreateError::PortsExhausted) => return Step::Done(drop_flow(ctx, flow, DropReason::NatPortsExhausted)),
        Err(CreateError::InsertFailed) => return Step::Done(drop_flow(ctx, flow, DropReason::CtInsertFailed)),
    };
    stats::stat(Stat::ForwardNew);
    events::translated(ctx, EVENT_GATEWAY, &Tuple::of(flow), svc_id, (pending.backend_id, b));
    if created.probed {
        stats::stat(Stat::NatPortProbed);
    }
    if created.reused {
        stats::stat(Stat::NatPortReused);
    }
    stats::service(svc_id, ServiceEvent::Forwarded { bytes: ctx.len(), new: true });
    Step::Done(translate(ctx, flow, &created.forward, found))
}

/// Answers a client from the ClusterSetIP (TCP RST, ICMP port unreachable)
/// back out of the uplink, as the tc path does; an RST is dropped.
#[inline(always)]
fn refuse(ctx: &XdpContext, flow: &Flow, service_id: u32, reason: DropReason) -> i32 {
    if flow.has(TCP_RST) {
        return drop_flow(ctx, flow, reason);
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
            events::refused(ctx, EVENT_GATEWAY, reason, &Tuple::of(flow), service_id);
            verdict
        }
        Err(()) => drop_flow(ctx, flow, DropReason::RejectFailed),
    }
}

/// Whether the reply entry at a key whose destination is `to` (the
/// translated client address) belongs to a gateway flow: source-NATed to
/// an address of this node, not a pod's own flow or a hairpinned one.
#[inline(always)]
fn is_gateway_flow(to: u32, entry: &CtValue) -> bool {
    let hairpin = config::hairpin_addr();
    to != entry.nat_daddr && (hairpin == 0 || to != hairpin)
}

/// A packet to a port of the translated range: a backend's reply to a
/// gateway flow gets the ClusterSetIP:port and the client back.
#[inline(always)]
fn reply(ctx: &XdpContext, flow: &Flow) -> i32 {
    let Lookup::Hit(entry, _) = conntrack::lookup(flow, CT_DIR_REPLY, 0) else {
        return XDP_PASS;
    };
    if !is_gateway_flow(flow.daddr, &entry) || !ttl_ok(ctx, flow.l3_off) {
        return XDP_PASS;
    }
    let route = route_of(ctx, flow.l3_off, flow.proto, &entry);
    stats::stat(Stat::ReverseNat);
    translate(ctx, flow, &entry, &route)
}

/// A later fragment: to a ClusterSetIP it follows its first fragment's
/// forward entry (or is dropped when that was not seen); to anything else,
/// a gateway flow's reply entry (or passes).
#[inline(always)]
fn fragment(ctx: &XdpContext, frag: &Fragment) -> i32 {
    if service::is_cluster_set_ip(frag.daddr) {
        return follow_fragment(ctx, frag, CT_DIR_FORWARD).unwrap_or_else(|| {
            drop_packet(ctx, DropReason::Fragment, &Tuple::addrs(frag.saddr, frag.daddr, frag.proto))
        });
    }
    follow_fragment(ctx, frag, CT_DIR_REPLY).unwrap_or(XDP_PASS)
}

/// A later fragment whose first fragment was translated, in direction `dir`.
#[inline(always)]
fn follow_fragment(ctx: &XdpContext, frag: &Fragment, dir: u8) -> Option<i32> {
    let tuple = frag::tuple(frag)?;
    let entry = conntrack::peek(&conntrack::key(&tuple, frag.proto, dir))?;
    if dir == CT_DIR_REPLY && !is_gateway_flow(tuple.daddr, &entry) {
        return None;
    }
    let reported = Tuple::addrs(frag.saddr, frag.daddr, frag.proto);
    if !ttl_ok(ctx, frag.l3_off) {
        return Some(XDP_PASS);
    }
    let route = route_of(ctx, frag.l3_off, frag.proto, &entry);
    if nat::rewrite_fragment(ctx, frag.l3_off, &tuple, &nat_tuple(&entry)).is_err() {
        return Some(drop_packet(ctx, DropReason::RewriteFailed, &reported));
    }
    stats::stat(Stat::FragmentTranslated);
    Some(send(ctx, frag.l3_off, &route, &reported))
}

/// An ICMP error: to a ClusterSetIP, about a flow it must quote (or it is
/// dropped); to anything else, about a gateway flow (or it passes).
#[inline(always)]
fn icmp_error(ctx: &XdpContext, err: &IcmpError) -> i32 {
    if service::is_cluster_set_ip(err.daddr) {
        return translate_icmp(ctx, err, CT_DIR_FORWARD).unwrap_or_else(|| {
            drop_packet(ctx, DropReason::IcmpNoFlow, &Tuple::addrs(err.saddr, err.daddr, proto::ICMP))
        });
    }
    translate_icmp(ctx, err, CT_DIR_REPLY).unwrap_or(XDP_PASS)
}

/// An ICMP error about a gateway flow: from the client (to the ClusterSetIP,
/// `CT_DIR_FORWARD`) it goes to the backend; from the backend's side (to the
/// gateway's address, `CT_DIR_REPLY`) to the client, translated.
#[inline(always)]
fn translate_icmp(ctx: &XdpContext, err: &IcmpError, dir: u8) -> Option<i32> {
    let (key, entry) = icmp::find(err, dir)?;
    // The quote's source (seen backwards: the key's destination) is the
    // translated client address of a gateway flow.
    if dir == CT_DIR_REPLY && !is_gateway_flow(key.daddr, &entry) {
        return None;
    }
    let reported = Tuple::addrs(err.saddr, err.daddr, proto::ICMP);
    if !ttl_ok(ctx, err.l3_off) {
        return Some(XDP_PASS);
    }
    if icmp::rewrite(ctx, err, &key, &entry).is_err() {
        return Some(drop_packet(ctx, DropReason::RewriteFailed, &reported));
    }
    let to_backend = dir == CT_DIR_FORWARD;
    stats::stat(if to_backend { Stat::IcmpToBackend } else { Stat::IcmpToClient });
    // The outer header now goes to the entry's destination (the backend,
    // or the client), from the entry's source or the router that raised it.
    let Ok(addrs) = ctx.load::<[u32; 2]>(err.l3_off + parse::IP_SADDR_OFF) else {
        return Some(drop_packet(ctx, DropReason::RewriteFailed, &reported));
    };
    let q = Query {
        saddr: addrs[0],
        daddr: addrs[1],
        sport: 0,
        dport: 0,
        protocol: proto::ICMP,
        tot_len: tot_len(ctx, err.l3_off),
    };
    let mut found = Route::default();
    route(ctx, &q, &mut found);
    Some(send(ctx, err.l3_off, &found, &reported))
}
