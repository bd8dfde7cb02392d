//! Datapath events (`mcs_common::event`): a drop with its reason and tuple,
//! a refused connection, a reset of a flow whose backend is gone and each
//! new translation, written into the `MCS_EVENTS` ring buffer while their
//! bit is set in `MCS_EVENT_FLAGS`.
//!
//! The flag is read from a map, not from the load-time settings, so the
//! agent switches events at run time; it is read only where an event would
//! be written (a drop, a refusal, a new flow), never by a packet of an
//! established flow, and with events off that read is all they cost.
use aya_ebpf::{
    btf_maps::{Array, RingBuf},
    macros::btf_map,
};
use mcs_common::{
    Backend, DropReason,
    event::{
        EVENT_DROP, EVENT_REFUSED, EVENT_RESET, EVENT_TRANSLATED, EVENTS_BYTES, EVENTS_DROPS, EVENTS_TRANSLATIONS,
        Event,
    },
};

use crate::{conntrack, pkt::Pkt};

/// The events, for the agent.
#[btf_map]
pub static MCS_EVENTS: RingBuf<Event, { EVENTS_BYTES as usize }> = RingBuf::new();

/// Element 0: the `EVENTS_*` bits of the events to write (host order).
#[btf_map]
pub static MCS_EVENT_FLAGS: Array<u32, 1> = Array::new();

/// The addresses and ports an event reports (all NBO; ports 0 when the
/// packet has none).
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// The tuple of a TCP or UDP packet.
    #[inline(always)]
    pub const fn of(flow: &crate::parse::Flow) -> Self {
        Self { saddr: flow.saddr, daddr: flow.daddr, sport: flow.sport, dport: flow.dport, proto: flow.proto }
    }

    /// Addresses only (a later fragment, an ICMP message).
    #[inline(always)]
    pub const fn addrs(saddr: u32, daddr: u32, proto: u8) -> Self {
        Self { saddr, daddr, sport: 0, dport: 0, proto }
    }
}

/// Whether events of `bit` are on.
#[inline(always)]
fn wanted(bit: u32) -> bool {
    MCS_EVENT_FLAGS.get(0).is_some_and(|flags| *flags & bit != 0)
}

/// What an event says beyond its tuple.
struct Detail {
    kind: u8,
    reason: u8,
    service_id: u32,
    backend_id: u32,
    backend_addr: u32,
    backend_port: u16,
}

#[inline(always)]
fn emit<C: Pkt>(ctx: &C, direction: u8, tuple: &Tuple, detail: &Detail) {
    // A full ring buffer loses the event (the agent reads it as fast as it can).
    let Some(mut entry) = MCS_EVENTS.reserve(0) else { return };
    let ifindex = ctx.ifindex();
    entry.write(Event {
        kind: detail.kind,
        reason: detail.reason,
        proto: tuple.proto,
        direction,
        ifindex,
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        sport: tuple.sport,
        dport: tuple.dport,
        backend_addr: detail.backend_addr,
        backend_port: detail.backend_port,
        pad: 0,
        service_id: detail.service_id,
        backend_id: detail.backend_id,
        pad2: 0,
        time_ns: conntrack::now(),
    });
    entry.submit(0);
}

/// A packet dropped for `reason`.
#[inline(always)]
pub fn dropped<C: Pkt>(ctx: &C, direction: u8, reason: DropReason, tuple: &Tuple) {
    if wanted(EVENTS_DROPS) {
        let detail = Detail {
            kind: EVENT_DROP,
            reason: reason as u8,
            service_id: 0,
            backend_id: 0,
            backend_addr: 0,
            backend_port: 0,
        };
        emit(ctx, direction, tuple, &detail);
    }
}

/// A packet of service port `service_id` answered instead of translated:
/// a refused new connection, or (`BackendGone`) a reset flow.
#[inline(always)]
pub fn refused<C: Pkt>(ctx: &C, direction: u8, reason: DropReason, tuple: &Tuple, service_id: u32) {
    if wanted(EVENTS_DROPS) {
        let kind = if matches!(reason, DropReason::BackendGone) { EVENT_RESET } else { EVENT_REFUSED };
        let detail = Detail { kind, reason: reason as u8, service_id, backend_id: 0, backend_addr: 0, backend_port: 0 };
        emit(ctx, direction, tuple, &detail);
    }
}

/// A new flow of service port `service_id` translated to backend `backend_id`.
#[inline(always)]
pub fn translated<C: Pkt>(ctx: &C, direction: u8, tuple: &Tuple, service_id: u32, backend: (u32, &Backend)) {
    if wanted(EVENTS_TRANSLATIONS) {
        let detail = Detail {
            kind: EVENT_TRANSLATED,
            reason: 0,
            service_id,
            backend_id: backend.0,
            backend_addr: backend.1.addr,
            backend_port: backend.1.port,
        };
        emit(ctx, direction, tuple, &detail);
    }
}
