//! What a pod may send: checks that keep one pod from acting for another or
//! from spending the node's work on answers.
//!
//! - **Source validation** (`GUARD_F_SOURCE_FIB`): a new flow is accepted
//!   only when the node routes its source address back out of the interface
//!   it came in on (a FIB lookup, as strict reverse-path filtering does), so
//!   a pod cannot create conntrack or affinity entries with another pod's
//!   address. Entries remember the interface (`CtValue::client_ifindex`):
//!   a packet of a tracked flow from any other interface is not the flow's.
//! - **Rate limits**: fail-fast answers and mid-stream pickups (TCP packets
//!   other than SYNs that create an entry) each spend from a token bucket of
//!   their interface (`MCS_RATE`), so a pod can neither turn the node into a
//!   generator of answers nor flood the conntrack map with entries it made
//!   up. Buckets are shared by the node's CPUs; two CPUs spending at the same
//!   instant may both take the last token, which lets a burst overshoot by
//!   at most one event per CPU.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::TcContext,
};
use mcs_common::{GUARD_F_SOURCE_FIB, RateKey, RateValue};

use crate::{config, maps::MCS_RATE, parse::Flow};

/// `AF_INET`.
const AF_INET: u8 = 2;
/// `sizeof(struct bpf_fib_lookup)`.
const FIB_PARAMS_LEN: i32 = 64;
const _: () = assert!(size_of::<FibParams>() == FIB_PARAMS_LEN as usize);

/// The interface the packet came in on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is the program's own `__sk_buff`.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Whether source validation is on (a load-time constant: the verifier
/// prunes the check when it is off).
#[inline(always)]
pub fn validates_sources() -> bool {
    config::guard_flags() & GUARD_F_SOURCE_FIB != 0
}

/// Whether the node routes `flow`'s source address out of `ifindex`, the
/// interface it came in on: the route a reply to the client takes.
#[inline(always)]
pub fn source_routes_back(ctx: &TcContext, flow: &Flow, ifindex: u32) -> bool {
    // SAFETY: an all-zero parameter block is valid input for the helper.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = flow.proto;
    params.sport = flow.dport;
    params.dport = flow.sport;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = flow.daddr;
    params.__bindgen_anon_4.ipv4_dst = flow.saddr;
    // SAFETY: `params` is a live, fully initialised parameter block of the
    // size passed; the context is the program's own `__sk_buff`.
    let rc = unsafe { bpf_fib_lookup(ctx.skb.skb.cast(), &raw mut params, FIB_PARAMS_LEN, BPF_FIB_LOOKUP_SKIP_NEIGH) };
    let is = |code: u32| rc == i64::from(code);
    if is(BPF_FIB_LKUP_RET_SUCCESS) || is(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return params.ifindex == ifindex;
    }
    // The interface does not forward: the node would not route the
    // translated packet either, so there is nothing to guard.
    is(BPF_FIB_LKUP_RET_FWD_DISABLED)
}

/// Spends one event from the `kind` bucket (`mcs_common::rate_kind`) of
/// `ifindex`, of `rate` per second and `burst` at once: whether there was
/// credit. A rate of 0 is no limit and touches no map.
#[inline(always)]
pub fn spend(ifindex: u32, kind: u32, rate: u32, burst: u32, now: u64) -> bool {
    if rate == 0 {
        return true;
    }
    let key = RateKey { ifindex, kind };
    if let Some(bucket) = MCS_RATE.get_ptr_mut(key) {
        // SAFETY: the pointer came from this lookup and is used at once; a
        // concurrent spender on another CPU can only make the bucket
        // overshoot by one event (see the module's notes).
        return unsafe { (*bucket).spend(now, rate, burst) };
    }
    // A bucket's first event: it starts full, less this one. If the insert
    // fails (the LRU map evicts instead of failing), the event is allowed.
    let _ = MCS_RATE.insert(key, RateValue::first(now, rate, burst), 0);
    true
}
