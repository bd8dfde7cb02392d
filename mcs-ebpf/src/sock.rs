//! Socket-level load balancing: cgroup `sock_addr` programs that translate a
//! `connect()` or `sendmsg()` to ClusterSetIP:port into a backend's address
//! before the kernel picks a route and a source port, so the connection is a
//! direct one from its first packet (its own unique tuple, `TIME_WAIT`, PMTU and
//! ICMP as for any connection to a pod) and the tc programs never see a
//! ClusterSetIP for it. `recvmsg()` and `getpeername()` of a translated
//! socket show the ClusterSetIP:port again, from `MCS_SOCK_REV`.
//!
//! Backend selection is the tc path's (`service::select_backend`), from the
//! same maps: Maglev on a hash of the socket cookie (every socket is balanced
//! on its own), `ClientIP` affinity by network namespace, terminating
//! fallback, and the tables' locality and exporting-cluster cap.
//!
//! The user-facing fields of `bpf_sock_addr` are written as whole `u32`s, as
//! the verifier wants: `user_ip4` in NBO, `user_port` with the NBO port in
//! its low 16 bits.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, bpf_sock_addr},
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use mcs_common::{SOCKET_F_HOST_ONLY, SockRevKey, SockRevValue, Stat, proto};

use crate::{
    config, conntrack,
    maps::MCS_SOCK_REV,
    service::{self, Choice, SelectError},
    stats::{self, ServiceEvent},
};

/// Lets the call go on (translated or not).
pub const ALLOW: i32 = 1;
/// Fails the call with the error set by `bpf_set_retval`.
const REFUSE: i32 = 0;
/// `ECONNREFUSED`, as `connect()` returns it when nothing listens.
const ECONNREFUSED: i32 = 111;

/// The address a socket call names, read from the context.
struct Target {
    /// IPv4 address. NBO.
    addr: u32,
    /// Port. NBO.
    port: u16,
    /// `proto::TCP` or `proto::UDP`.
    proto: u8,
}

#[inline(always)]
fn target(sa: *const bpf_sock_addr) -> Option<Target> {
    // SAFETY: the kernel passes a valid context; the fields are read as the
    // whole `u32`s the verifier allows.
    let (addr, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    let proto = u8::try_from(protocol).ok().filter(|p| *p == proto::TCP || *p == proto::UDP)?;
    #[expect(clippy::cast_possible_truncation, reason = "the NBO port sits in the low 16 bits")]
    let port = port as u16;
    Some(Target { addr, port, proto })
}

/// Whether the settings leave this socket to the tc programs: with
/// `--socket-lb-host-only`, sockets of any namespace but the node's.
#[inline(always)]
fn skipped(netns_cookie: u64) -> bool {
    let cfg = config::cfg();
    cfg.socket_flags & SOCKET_F_HOST_ONLY != 0 && netns_cookie != cfg.host_netns_cookie
}

/// `connect4` and `sendmsg4`: a call addressed to a service port gets one of
/// its backends, and the socket remembers the ClusterSetIP:port it asked
/// for; a service port without a usable backend fails the call with
/// `ECONNREFUSED`. Anything else, a ClusterSetIP port the import does not
/// list included, is left as it is (the tc programs see it).
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(target) = target(sa) else { return ALLOW };
    let Some(svc) = service::lookup_port(target.addr, target.port, target.proto) else {
        return ALLOW;
    };
    // SAFETY: both helpers take the program's context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if skipped(netns_cookie) {
        return ALLOW;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let now = conntrack::now();
    let selected = match service::select_backend(&Choice::of_socket(cookie, netns_cookie, &svc), &svc, now) {
        Ok(selected) => selected,
        Err(SelectError::NoBackend | SelectError::Missing) => {
            stats::stat(Stat::SocketRefused);
            stats::service(svc.service_id, ServiceEvent::SocketRefused);
            // SAFETY: the helper only sets the value the call will return.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            return REFUSE;
        }
    };
    if selected.by_affinity {
        stats::stat(Stat::AffinityHit);
    }
    let backend = selected.backend;
    let key = SockRevKey { cookie, addr: backend.addr, port: backend.port, pad: 0 };
    let value = SockRevValue { addr: target.addr, port: target.port, pad: 0 };
    // An LRU map: a full one evicts the oldest entry. A failed insert only
    // costs the reverse view (`getpeername`, the source of UDP answers).
    let _ = MCS_SOCK_REV.insert(key, value, u64::from(BPF_ANY));
    // SAFETY: the context is valid and these fields are writable by
    // connect4 and sendmsg4 programs, as whole `u32`s.
    unsafe {
        (*sa).user_ip4 = backend.addr;
        (*sa).user_port = u32::from(backend.port);
    }
    stats::stat(Stat::SocketTranslated);
    stats::service(svc.service_id, ServiceEvent::SocketTranslated);
    ALLOW
}

/// `recvmsg4` and `getpeername4`: a translated socket's backend address
/// becomes the ClusterSetIP:port the socket asked for. Always allows.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel passes a valid context.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    #[expect(clippy::cast_possible_truncation, reason = "the NBO port sits in the low 16 bits")]
    let key = SockRevKey { cookie, addr, port: port as u16, pad: 0 };
    let Some(vip) = MCS_SOCK_REV.get_ptr(key) else { return ALLOW };
    // SAFETY: the value is copied out at once; the pointer is not kept.
    let vip: SockRevValue = unsafe { *vip };
    // SAFETY: recvmsg4 and getpeername4 programs may write these fields.
    unsafe {
        (*sa).user_ip4 = vip.addr;
        (*sa).user_port = u32::from(vip.port);
    }
    stats::stat(Stat::SocketReverse);
    ALLOW
}
