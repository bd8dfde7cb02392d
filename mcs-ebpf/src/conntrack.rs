//! Connection tracking of translated flows: TCP state, idle timeouts, a
//! unique translated tuple per flow, and repair of a half-evicted pair.
//!
//! Each flow has two entries, in `MCS_CT_TCP` or `MCS_CT_ANY` by protocol:
//! - forward, keyed as the client sends (client → ClusterSetIP), holding the
//!   tuple its packets become ((client or hairpin address):translated port →
//!   backend);
//! - reply, keyed as the backend answers that translated packet, holding
//!   the tuple the answer becomes (ClusterSetIP → client:port).
//!
//! **Unique tuples.** The reply entry's key is the translated flow's tuple
//! seen backwards, so it claims that tuple. A new flow's translated source
//! port comes from `--nat-port-range`, a range the client's own ephemeral
//! ports do not use (by default, the ports above Linux's ephemeral range):
//! a client's direct connections can therefore never share a tuple with its
//! translated ones, neither live nor in the backend's `TIME_WAIT`. Within
//! the range a new flow tries [`limits::NAT_PORT_PROBES`] ports, starting at
//! one its own 5-tuple picks ([`mcs_common::nat_port_hash`]), and takes the
//! first that is free: no entry, the entry of this same 5-tuple's previous
//! flow, or (when nothing else is free) an entry whose flow has expired or,
//! for a SYN, is closing. A flow picked up again after losing its entries
//! thus gets the port it had.
//!
//! **One writer per flag.** A packet sets the flags of its own direction in
//! its own entry only (`own_flags`); what the other entry says is copied in
//! (`peer_flags`) whenever the packet has to look at both: when it brings a
//! new flag, when the entry is due for a refresh (every
//! [`CT_REFRESH_NS`]), when its own view says the flow is over, and for a
//! SYN. A steady stream of an established flow reads one entry. Crossing
//! FINs cannot lose a bit, since no field is read-modified-written by both
//! directions.
//!
//! **Repair.** When a packet looks at both entries and the other is missing
//! (the LRU map evicted one of the pair), it is rebuilt from this one.
//!
//! States ([`mcs_common::ct_state`]) and their idle timeouts (`MCS_CFG`):
//! TCP `SYN` until the backend answers, `ESTABLISHED`, `CLOSING` after an
//! RST or a FIN from both sides (a new SYN on the same 5-tuple starts a new
//! flow); `UDP`. An entry idle for longer than its state's timeout is absent.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
};
use mcs_common::{
    Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_FIN_FORWARD, CT_F_FIN_REPLY, CT_F_RST_FORWARD, CT_F_RST_REPLY,
    CT_F_SEEN_REPLY, CT_REFRESH_NS, CT_STATE_CLOSING, CtKey, CtValue, ct_state, limits, nat_port_hash, proto,
};

use crate::{
    config,
    maps::{MCS_CT_ANY, MCS_CT_TCP},
    parse::{Flow, TCP_FIN, TCP_RST, Tuple},
};

/// `EEXIST`, as a map update returns it.
const EEXIST: i32 = -17;

/// The monotonic clock the entries are stamped with. Coarse (a tick's
/// resolution): timeouts are seconds, and it is the cheaper read.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The entry at `key`, in the map of its protocol.
#[inline(always)]
fn entry(key: &CtKey) -> Option<*mut CtValue> {
    if key.proto == proto::TCP { MCS_CT_TCP.get_ptr_mut(key) } else { MCS_CT_ANY.get_ptr_mut(key) }
}

/// Writes the entry at `key` (`BPF_ANY` or `BPF_NOEXIST`).
#[inline(always)]
fn put(key: &CtKey, value: &CtValue, flags: u32) -> Result<(), i32> {
    let flags = u64::from(flags);
    if key.proto == proto::TCP { MCS_CT_TCP.insert(key, value, flags) } else { MCS_CT_ANY.insert(key, value, flags) }
}

/// Deletes the entry at `key`.
#[inline(always)]
fn remove(key: &CtKey) {
    let _ = if key.proto == proto::TCP { MCS_CT_TCP.remove(key) } else { MCS_CT_ANY.remove(key) };
}

/// The key of a packet with addresses and ports `t` in direction `dir`.
#[inline(always)]
pub const fn key(t: &Tuple, protocol: u8, dir: u8) -> CtKey {
    CtKey { saddr: t.saddr, daddr: t.daddr, sport: t.sport, dport: t.dport, proto: protocol, dir, pad: [0; 2] }
}

/// The tuple an entry rewrites its direction's packets to.
#[inline(always)]
pub const fn nat_tuple(v: &CtValue) -> Tuple {
    Tuple { saddr: v.nat_saddr, daddr: v.nat_daddr, sport: v.nat_sport, dport: v.nat_dport }
}

/// The flag bits a packet of `flow` going in `dir` sets in its own entry.
#[inline(always)]
const fn own_bits(flow: &Flow, dir: u8) -> u8 {
    let (fin, rst, seen) = if dir == CT_DIR_FORWARD {
        (CT_F_FIN_FORWARD, CT_F_RST_FORWARD, 0)
    } else {
        (CT_F_FIN_REPLY, CT_F_RST_REPLY, CT_F_SEEN_REPLY)
    };
    let mut bits = seen;
    if flow.has(TCP_FIN) {
        bits |= fin;
    }
    if flow.has(TCP_RST) {
        bits |= rst;
    }
    bits
}

/// Whether a flow of `protocol` with `flags`, last seen at `last_seen`, has
/// expired at `now`.
#[inline(always)]
fn expired(protocol: u8, flags: u8, last_seen: u64, now: u64) -> bool {
    // Another CPU may have stamped a later time than our `now`: saturate.
    now.saturating_sub(last_seen) > config::timeout_ns(ct_state(protocol, flags))
}

/// The other entry of the flow whose entry at `key` holds `value`, when it
/// is there and is that flow's (its own rewrite leads back to `key`).
#[inline(always)]
fn peer_of(key: &CtKey, value: &CtValue) -> (CtKey, Option<*mut CtValue>) {
    let peer_key = key.peer(value);
    // SAFETY: the pointer came from a lookup in this program run and is read at once.
    let peer = entry(&peer_key).filter(|p| peer_key.peer(unsafe { &**p }) == *key);
    (peer_key, peer)
}

/// What both entries of the flow at `key` say together: its flags and the
/// later of the two last-seen times.
#[inline(always)]
fn combined(key: &CtKey, value: &CtValue) -> (u8, u64) {
    let (_, peer) = peer_of(key, value);
    match peer {
        Some(p) => {
            // SAFETY: as in `peer_of`.
            let p = unsafe { *p };
            (value.own_flags | p.own_flags, value.last_seen_ns.max(p.last_seen_ns))
        }
        None => (value.flags(), value.last_seen_ns),
    }
}

/// What a lookup found. The clock is read only when an entry is found; the
/// time read is handed on, so a packet reads it at most once.
pub enum Lookup {
    /// A live entry (already updated by this packet), and the time.
    Hit(CtValue, u64),
    /// No entry.
    Miss,
    /// An entry that has expired (or lost its translated tuple to another
    /// flow): treat as absent. Carries the time.
    Stale(u64),
    /// The entry of a closing TCP flow whose 5-tuple this SYN reuses: treat
    /// as absent. Carries the time.
    Reused(u64),
    /// The entry of a flow whose client sends from another interface than
    /// the packet came in on: left as it was. Carries the time.
    Foreign(u64),
}

/// Looks up the entry of `flow` in direction `dir`, records what the
/// packet tells (flags, time) and, when it has to look at both entries,
/// takes in the other's view and rebuilds it if it is missing. With a
/// `client_tag` (`mcs_common::ifindex_tag` of the packet's interface; 0:
/// any), an entry bound to another interface is [`Lookup::Foreign`] and
/// nothing is written.
#[inline(always)]
pub fn lookup(flow: &Flow, dir: u8, client_tag: u16) -> Lookup {
    let key = key(&flow.tuple(), flow.proto, dir);
    let Some(ptr) = entry(&key) else {
        return Lookup::Miss;
    };
    let now = now();
    // SAFETY: the pointer came from a lookup in this program run; the value
    // is copied out, and written back field by field, as the kernel's own
    // conntrack helpers do with their entries.
    let mut v = unsafe { *ptr };
    if client_tag != 0 && v.client_ifindex != 0 && v.client_ifindex != client_tag {
        return Lookup::Foreign(now);
    }
    let bits = own_bits(flow, dir);
    let refresh = now.saturating_sub(v.last_seen_ns) > CT_REFRESH_NS;
    let syn = dir == CT_DIR_FORWARD && flow.is_syn();
    if bits & !v.own_flags == 0 && !refresh && !syn && !expired(flow.proto, v.flags(), v.last_seen_ns, now) {
        return Lookup::Hit(v, now);
    }
    // Both entries: take in what the other one knows, and judge the flow
    // as it was before this packet.
    let (peer_key, peer) = peer_of(&key, &v);
    if let Some(p) = peer {
        // SAFETY: as in `peer_of`.
        let p = unsafe { *p };
        v.peer_flags = p.own_flags;
        v.last_seen_ns = v.last_seen_ns.max(p.last_seen_ns);
    }
    if expired(flow.proto, v.flags(), v.last_seen_ns, now) {
        return Lookup::Stale(now);
    }
    if syn && ct_state(flow.proto, v.flags()) == CT_STATE_CLOSING {
        return Lookup::Reused(now);
    }
    v.own_flags |= bits;
    if now.saturating_sub(v.last_seen_ns) > CT_REFRESH_NS {
        v.last_seen_ns = now;
    }
    // SAFETY: as above.
    unsafe {
        (*ptr).own_flags = v.own_flags;
        (*ptr).peer_flags = v.peer_flags;
        (*ptr).last_seen_ns = v.last_seen_ns;
    }
    if let Some(p) = peer {
        // SAFETY: as in `peer_of`; the time is the one field both directions stamp.
        unsafe { (*p).last_seen_ns = v.last_seen_ns };
    } else {
        // A client's TCP segment other than a SYN means the backend has
        // answered, whatever the forward entry last read.
        let answered = if dir == CT_DIR_FORWARD && flow.proto == proto::TCP && !syn { CT_F_SEEN_REPLY } else { 0 };
        if rebuild(&key, &v, &peer_key, answered) == Err(EEXIST) {
            // Another flow holds our translated tuple now: this flow is over.
            return Lookup::Stale(now);
        }
        crate::stats::stat(mcs_common::Stat::CtRebuilt);
    }
    Lookup::Hit(v, now)
}

/// Writes the missing other entry of the flow whose entry at `key` holds
/// `v` (with the other direction's flags `v.peer_flags | known`), unless
/// another flow's entry is there (`Err(EEXIST)`).
#[inline(always)]
fn rebuild(key: &CtKey, v: &CtValue, peer_key: &CtKey, known: u8) -> Result<(), i32> {
    let peer = CtValue {
        nat_saddr: key.daddr,
        nat_daddr: key.saddr,
        nat_sport: key.dport,
        nat_dport: key.sport,
        own_flags: v.peer_flags | known,
        peer_flags: v.own_flags,
        ..*v
    };
    put(peer_key, &peer, BPF_NOEXIST)
}

/// The entry at `key`, read without changing it (ICMP errors and later
/// fragments follow their flow; they do not move its state).
#[inline(always)]
pub fn peek(key: &CtKey) -> Option<CtValue> {
    // SAFETY: the value is copied out at once.
    entry(key).map(|p| unsafe { *p })
}

/// Why a new flow could not be tracked.
pub enum CreateError {
    /// Every translated source port it tried is held by a live flow.
    PortsExhausted,
    /// A map update failed.
    InsertFailed,
}

/// A new flow's forward entry, and how its port was found.
pub struct Created {
    /// The forward entry written.
    pub forward: CtValue,
    /// The port was taken over from an expired or closing flow.
    pub reused: bool,
    /// The first port tried was taken.
    pub probed: bool,
}

/// How long a TCP peer keeps a closed connection's tuple in `TIME_WAIT`
/// (Linux's `TCP_TIMEWAIT_LEN`).
const TIME_WAIT_NS: u64 = 60 * mcs_common::NS_PER_SEC;

/// What the reply entry `e` at `key`, of another flow, is to a new flow (a
/// SYN when `syn`) that wants its tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Held by a live flow.
    Live,
    /// Its flow is over and long gone: as good as free (a UDP flow that
    /// expired, a TCP flow last seen more than a `TIME_WAIT` ago, so the
    /// backend holds nothing of it any more).
    Stale,
    /// Its flow expired or, for a SYN, is closing, but the backend may still
    /// hold its tuple in `TIME_WAIT` (with another flow's sequence numbers):
    /// taken only when no other port is free.
    LastResort,
}

#[inline(always)]
fn taken(key: &CtKey, e: &CtValue, syn: bool, now: u64) -> Taken {
    let (flags, last_seen) = combined(key, e);
    if expired(key.proto, flags, last_seen, now) {
        if key.proto != proto::TCP || now.saturating_sub(last_seen) > TIME_WAIT_NS {
            Taken::Stale
        } else {
            Taken::LastResort
        }
    } else if syn && ct_state(key.proto, flags) == CT_STATE_CLOSING {
        Taken::LastResort
    } else {
        Taken::Live
    }
}

/// Tracks a new flow to `backend` (id `backend_id`, service port
/// `service_id`), translated with the source address `nat_saddr` (the
/// client's own, or the hairpin address), whose client sends from interface
/// `client_ifindex`: finds it a unique translated source port and writes the
/// reply entry, then the forward one.
#[inline(always)]
pub fn create(
    flow: &Flow,
    (backend_id, backend): (u32, &Backend),
    service_id: u32,
    nat_saddr: u32,
    client_ifindex: u32,
    now: u64,
) -> Result<Created, CreateError> {
    let cfg = config::cfg();
    // A TCP segment other than a SYN without an entry: picked up mid-stream
    // (after an eviction or a restart), so the backend has answered before.
    let picked_up = flow.proto == proto::TCP && !flow.is_syn();
    let forward_bits = own_bits(flow, CT_DIR_FORWARD);
    let reply_bits = if picked_up { CT_F_SEEN_REPLY } else { 0 };
    let reply = CtValue {
        nat_saddr: flow.daddr,
        nat_daddr: flow.saddr,
        nat_sport: flow.dport,
        nat_dport: flow.sport,
        backend_id,
        service_id,
        own_flags: reply_bits,
        peer_flags: forward_bits,
        client_ifindex: mcs_common::ifindex_tag(client_ifindex),
        created_ns: now,
        last_seen_ns: now,
    };
    let mut reply_key = CtKey {
        saddr: backend.addr,
        daddr: nat_saddr,
        sport: backend.port,
        dport: 0,
        proto: flow.proto,
        dir: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let hash = nat_port_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto);
    let mut chosen: Option<u16> = None;
    let mut fallback: Option<u16> = None;
    let mut probed = false;
    for attempt in 0..limits::NAT_PORT_PROBES {
        let port = cfg.nat_port(hash, attempt).to_be();
        reply_key.dport = port;
        match entry(&reply_key) {
            None => {
                if put(&reply_key, &reply, BPF_NOEXIST).is_ok() {
                    chosen = Some(port);
                    break;
                }
            }
            Some(p) => {
                // SAFETY: as in `peer_of`.
                let e = unsafe { *p };
                // This 5-tuple's previous flow (same client port, same
                // ClusterSetIP:port): take its port back.
                if e.nat_saddr == reply.nat_saddr
                    && e.nat_daddr == reply.nat_daddr
                    && e.nat_sport == reply.nat_sport
                    && e.nat_dport == reply.nat_dport
                {
                    if put(&reply_key, &reply, BPF_ANY).is_err() {
                        return Err(CreateError::InsertFailed);
                    }
                    chosen = Some(port);
                    break;
                }
                match taken(&reply_key, &e, flow.is_syn(), now) {
                    Taken::Stale => {
                        if put(&reply_key, &reply, BPF_ANY).is_err() {
                            return Err(CreateError::InsertFailed);
                        }
                        chosen = Some(port);
                        break;
                    }
                    Taken::LastResort if fallback.is_none() => fallback = Some(port),
                    Taken::LastResort | Taken::Live => {}
                }
            }
        }
        probed = true;
    }
    let mut reused = false;
    let port = match (chosen, fallback) {
        (Some(port), _) => port,
        (None, Some(port)) => {
            reply_key.dport = port;
            if put(&reply_key, &reply, BPF_ANY).is_err() {
                return Err(CreateError::InsertFailed);
            }
            reused = true;
            port
        }
        (None, None) => return Err(CreateError::PortsExhausted),
    };
    let forward = CtValue {
        nat_saddr,
        nat_daddr: backend.addr,
        nat_sport: port,
        nat_dport: backend.port,
        own_flags: forward_bits,
        peer_flags: reply_bits,
        ..reply
    };
    if put(&key(&flow.tuple(), flow.proto, CT_DIR_FORWARD), &forward, BPF_ANY).is_err() {
        reply_key.dport = port;
        remove(&reply_key);
        return Err(CreateError::InsertFailed);
    }
    Ok(Created { forward, reused, probed })
}

/// Forgets the flow of `flow` whose forward entry is `entry`.
#[inline(always)]
pub fn delete(flow: &Flow, entry: &CtValue) {
    let key = key(&flow.tuple(), flow.proto, CT_DIR_FORWARD);
    if let (peer_key, Some(_)) = peer_of(&key, entry) {
        remove(&peer_key);
    }
    remove(&key);
}
