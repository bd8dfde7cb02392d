//! Map types shared by the eBPF programs (`mcs-ebpf`) and the agent (`mcs-agent`).
//!
//! Every type is `#[repr(C)]` with explicit padding, so the layout is the same on
//! both sides and matches the BTF that `bpftool map dump` prints. Each field says
//! its byte order:
//! - **NBO**: network byte order, exactly as the bytes sit in the packet. Build
//!   such a field from an address with [`ipv4_to_nbo`] and from a port with
//!   `u16::to_be`.
//! - **host**: the machine's own byte order.
//!
//! Padding fields are named `pad*` and must be zero: map keys are compared
//! byte by byte by the kernel.
//!
//! With the `user` feature the types implement `aya::Pod`, so the agent can
//! read and write them in maps.
#![no_std]

use core::net::Ipv4Addr;

/// Names of the maps in the eBPF object. They are also the file names of the
/// pins under the agent's pin directory.
pub mod map_names {
    /// [`crate::ServiceKey`] → [`crate::ServiceValue`].
    pub const SERVICES: &str = "MCS_SERVICES";
    /// `u32` backend id (host) → [`crate::Backend`].
    pub const BACKENDS: &str = "MCS_BACKENDS";
    /// [`crate::CtKey`] → [`crate::CtValue`], LRU.
    pub const CONNTRACK: &str = "MCS_CT";
    /// Per-CPU `u64` counters indexed by [`crate::DropReason`].
    pub const DROPS: &str = "MCS_DROPS";
    /// Per-CPU `u64` counters indexed by [`crate::Stat`].
    pub const STATS: &str = "MCS_STATS";
    /// Every map, in the order the agent reports them.
    pub const ALL: [&str; 5] = [SERVICES, BACKENDS, CONNTRACK, DROPS, STATS];
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// tc ingress of pod-facing interfaces: service lookup and DNAT.
    pub const FROM_POD: &str = "mcs_from_pod";
    /// tc egress of pod-facing interfaces: reverse NAT of replies.
    pub const TO_POD: &str = "mcs_to_pod";
    /// A program that returns `TC_ACT_OK` and does nothing else: the floor
    /// the benchmarks measure the others against.
    pub const NOOP: &str = "mcs_noop";
}

/// Default sizes of the maps. The agent may override the conntrack size at load.
pub mod limits {
    /// Entries of `MCS_SERVICES`: masters, wildcards and backend slots together.
    pub const SERVICES_MAX: u32 = 262_144;
    /// Entries of `MCS_BACKENDS`.
    pub const BACKENDS_MAX: u32 = 262_144;
    /// Entries of `MCS_CT`. Each connection takes two (forward and reply).
    pub const CONNTRACK_MAX: u32 = 262_144;
    /// Slots of the counter arrays; reasons and stats must stay below it.
    pub const COUNTERS_MAX: u32 = 32;
    /// The most backend slots one service entry may have.
    pub const BACKENDS_PER_SERVICE_MAX: u16 = 4096;
}

/// IP protocol numbers the datapath translates.
pub mod proto {
    /// `IPPROTO_TCP`.
    pub const TCP: u8 = 6;
    /// `IPPROTO_UDP`.
    pub const UDP: u8 = 17;
}

/// Converts an IPv4 address into the NBO `u32` the maps store.
#[must_use]
pub const fn ipv4_to_nbo(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Converts an NBO `u32` from a map back into an address.
#[must_use]
pub const fn ipv4_from_nbo(addr: u32) -> Ipv4Addr {
    let [a, b, c, d] = addr.to_ne_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// Key of `MCS_SERVICES`.
///
/// One service port (ClusterSetIP, port, protocol) owns several entries:
/// - the *master* entry, `slot == 0`, whose value holds the slot count;
/// - one entry per backend slot, `slot` in `1..=count`, whose value names a
///   backend.
///
/// A *wildcard* entry (`port == 0`, `proto == 0`, `slot == 0`) marks an address as
/// a ClusterSetIP: packets to it on a port that has no master entry are dropped
/// with [`DropReason::UnknownPort`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// ClusterSetIP. NBO.
    pub addr: u32,
    /// Service port. NBO. Zero on the wildcard entry.
    pub port: u16,
    /// 0 for the master entry, 1..=count for backend slots. host.
    pub slot: u16,
    /// IP protocol number ([`proto`]). Zero on the wildcard entry.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

impl ServiceKey {
    /// The master entry of a service port. `port` is in host order.
    #[must_use]
    pub const fn master(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self::slot(addr, port, proto, 0)
    }

    /// The entry of backend slot `slot` (1-based) of a service port.
    #[must_use]
    pub const fn slot(addr: Ipv4Addr, port: u16, proto: u8, slot: u16) -> Self {
        Self::from_nbo(ipv4_to_nbo(addr), port.to_be(), proto, slot)
    }

    /// A key from an address and port already in NBO, as read from a packet.
    #[must_use]
    pub const fn from_nbo(addr: u32, port: u16, proto: u8, slot: u16) -> Self {
        Self { addr, port, slot, proto, pad: [0; 3] }
    }

    /// The wildcard entry that marks `addr` as a ClusterSetIP.
    #[must_use]
    pub const fn wildcard(addr: Ipv4Addr) -> Self {
        Self::slot(addr, 0, 0, 0)
    }

    /// Whether this is a wildcard entry.
    #[must_use]
    pub const fn is_wildcard(&self) -> bool {
        self.port == 0 && self.proto == 0
    }

    /// The address, decoded.
    #[must_use]
    pub const fn ip(&self) -> Ipv4Addr {
        ipv4_from_nbo(self.addr)
    }

    /// The port in host order.
    #[must_use]
    pub const fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

impl core::fmt::Display for ServiceKey {
    /// `198.19.0.10:80/6 slot 2`, or `198.19.0.10 (ClusterSetIP marker)`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.is_wildcard() {
            write!(f, "{} (ClusterSetIP marker)", self.ip())
        } else {
            write!(f, "{}:{}/{} slot {}", self.ip(), self.port_host(), self.proto, self.slot)
        }
    }
}

/// `ServiceValue::flags`: the entry is a wildcard marker.
pub const SERVICE_F_WILDCARD: u16 = 1;

/// Value of `MCS_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceValue {
    /// Slot entries: the id of the backend in `MCS_BACKENDS`. Master: 0. host.
    pub backend_id: u32,
    /// Master: the number of backend slots (0 means no usable backend). host.
    pub count: u16,
    /// `SERVICE_F_*`. host.
    pub flags: u16,
    /// Master: the id of this service port, stable while it exists. host.
    pub service_id: u32,
    /// Master: `ClientIP` affinity timeout in seconds, 0 when off. host.
    pub affinity_timeout: u32,
}

/// `Backend::flags`: the endpoint is terminating (serving fallback).
pub const BACKEND_F_TERMINATING: u8 = 1;

/// Value of `MCS_BACKENDS`, keyed by a `u32` backend id (host).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    /// Pod IP. NBO.
    pub addr: u32,
    /// Pod port. NBO.
    pub port: u16,
    /// IP protocol number. host (one byte).
    pub proto: u8,
    /// `BACKEND_F_*`. host (one byte).
    pub flags: u8,
    /// The agent's number for the backend's cluster. host.
    pub cluster_id: u32,
}

impl Backend {
    /// A backend; `port` is in host order.
    #[must_use]
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8, flags: u8, cluster_id: u32) -> Self {
        Self { addr: ipv4_to_nbo(addr), port: port.to_be(), proto, flags, cluster_id }
    }
}

/// `CtKey::dir` of the entry written for the client → ClusterSetIP direction.
pub const CT_DIR_FORWARD: u8 = 0;
/// `CtKey::dir` of the entry written for the backend → client direction.
pub const CT_DIR_REPLY: u8 = 1;

/// Key of `MCS_CT`: a flow's 5-tuple as seen in the packet, plus its direction.
///
/// - Forward entries are keyed as the client sends: (client, ClusterSetIP).
/// - Reply entries are keyed as the backend answers: (backend, client).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    /// Source address. NBO.
    pub saddr: u32,
    /// Destination address. NBO.
    pub daddr: u32,
    /// Source port. NBO.
    pub sport: u16,
    /// Destination port. NBO.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    /// Zero.
    pub pad: [u8; 2],
}

/// `CtValue::flags`: a TCP SYN was seen in the forward direction.
pub const CT_F_SYN: u8 = 1;
/// `CtValue::flags`: a reply was seen.
pub const CT_F_SEEN_REPLY: u8 = 2;
/// `CtValue::flags`: a FIN or RST was seen; the flow is closing.
pub const CT_F_CLOSING: u8 = 4;

/// Value of `MCS_CT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtValue {
    /// Forward: the backend's address to DNAT to. Reply: the ClusterSetIP to
    /// restore as source. NBO.
    pub nat_addr: u32,
    /// Forward: the backend's port. Reply: the service port. NBO.
    pub nat_port: u16,
    /// `CT_F_*`.
    pub flags: u8,
    /// Zero.
    pub pad: u8,
    /// The backend chosen for the flow. host.
    pub backend_id: u32,
    /// The service port the flow was translated for. host.
    pub service_id: u32,
    /// When the entry was created, `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`). host.
    pub created_ns: u64,
    /// When a packet last used the entry, within about a second. host.
    pub last_seen_ns: u64,
}

/// Why the datapath dropped a packet: the index into `MCS_DROPS`.
///
/// The numbers are stable: dashboards and `bpftool` users rely on them. Add new
/// reasons at the end.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The packet is for a ClusterSetIP on a port or protocol the service does
    /// not list.
    UnknownPort = 1,
    /// The service port has no usable backend.
    NoBackend = 2,
    /// The packet is for a ClusterSetIP but its headers are truncated or invalid.
    Malformed = 3,
    /// The packet is an IP fragment for a ClusterSetIP; fragments are not translated.
    Fragment = 4,
    /// A backend slot named a backend that is not in `MCS_BACKENDS`.
    BackendMissing = 5,
    /// The conntrack entry could not be written.
    CtInsertFailed = 6,
    /// Rewriting the packet or its checksums failed.
    RewriteFailed = 7,
}

impl DropReason {
    /// Every reason, in number order.
    pub const ALL: [Self; 7] = [
        Self::UnknownPort,
        Self::NoBackend,
        Self::Malformed,
        Self::Fragment,
        Self::BackendMissing,
        Self::CtInsertFailed,
        Self::RewriteFailed,
    ];

    /// The stable name used in metrics and command output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::UnknownPort => "unknown-port",
            Self::NoBackend => "no-backend",
            Self::Malformed => "malformed",
            Self::Fragment => "fragment",
            Self::BackendMissing => "backend-missing",
            Self::CtInsertFailed => "ct-insert-failed",
            Self::RewriteFailed => "rewrite-failed",
        }
    }
}

/// What the datapath did with a packet, other than drop it: the index into `MCS_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stat {
    /// A new flow to a service port was translated and tracked.
    ForwardNew = 0,
    /// A packet of a tracked flow was translated.
    ForwardEstablished = 1,
    /// A reply was translated back to the ClusterSetIP.
    ReverseNat = 2,
}

impl Stat {
    /// Every stat, in number order.
    pub const ALL: [Self; 3] = [Self::ForwardNew, Self::ForwardEstablished, Self::ReverseNat];

    /// The stable name used in metrics and command output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::ForwardNew => "forward-new",
            Self::ForwardEstablished => "forward-established",
            Self::ReverseNat => "reverse-nat",
        }
    }
}

/// The flow hash that picks a backend slot for a new flow.
///
/// Both sides use this one function, so the agent (and the tests) can predict
/// the backend a flow will get. Inputs are as in the packet (NBO). It is a
/// 32-bit mix of the 5-tuple, not a cryptographic hash.
#[must_use]
#[expect(
    clippy::inline_always,
    reason = "called per packet by the eBPF programs, where a BPF-to-BPF call costs more than the mix itself"
)]
#[inline(always)]
pub const fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    h = mix(h, saddr);
    h = mix(h, daddr);
    h = mix(h, ((sport as u32) << 16) | dport as u32);
    h = mix(h, proto as u32);
    fmix(h)
}

#[expect(clippy::inline_always, reason = "part of flow_hash, see there")]
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[expect(clippy::inline_always, reason = "part of flow_hash, see there")]
#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The 1-based slot a flow lands on in a service with `count` slots.
#[must_use]
#[expect(clippy::inline_always, reason = "called per new flow by the eBPF programs")]
#[inline(always)]
pub const fn slot_for_hash(hash: u32, count: u16) -> u16 {
    if count == 0 {
        return 0;
    }
    #[expect(clippy::cast_possible_truncation, reason = "the remainder is below count, a u16")]
    let slot = (hash % count as u32) as u16;
    slot + 1
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `repr(C)`, `Copy`, made of integers only, with its
    // padding spelled out as fields, so any bit pattern is valid and no byte is
    // uninitialised.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtValue {}
}

/// Compile-time layout checks: the sizes the eBPF side and BTF rely on.
const _: () = {
    assert!(size_of::<ServiceKey>() == 12);
    assert!(size_of::<ServiceValue>() == 16);
    assert!(size_of::<Backend>() == 12);
    assert!(size_of::<CtKey>() == 16);
    assert!(size_of::<CtValue>() == 32);
};

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use std::string::ToString as _;

    use super::*;

    #[test]
    fn nbo_round_trip() {
        let ip = Ipv4Addr::new(198, 19, 0, 10);
        assert_eq!(ipv4_from_nbo(ipv4_to_nbo(ip)), ip);
        // The first octet is the first byte in memory, as in a packet.
        assert_eq!(ipv4_to_nbo(ip).to_ne_bytes(), [198, 19, 0, 10]);
        let key = ServiceKey::master(ip, 8080, proto::TCP);
        assert_eq!(key.port.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(key.port_host(), 8080);
        assert_eq!(key.ip(), ip);
        assert_eq!(key.to_string(), "198.19.0.10:8080/6 slot 0");
        assert_eq!(ServiceKey::wildcard(ip).to_string(), "198.19.0.10 (ClusterSetIP marker)");
    }

    #[test]
    fn slots_cover_every_backend_evenly() {
        let count = 7u16;
        let mut hits = [0u32; 8];
        for i in 0..7000u32 {
            let hash = flow_hash(i.to_be(), 0x0a00_0001, 40000, 80, proto::TCP);
            let slot = slot_for_hash(hash, count);
            assert!((1..=count).contains(&slot), "slot {slot} out of 1..={count}");
            hits[usize::from(slot)] += 1;
        }
        for (slot, n) in hits.iter().enumerate().skip(1) {
            assert!((700..1300).contains(n), "slot {slot} got {n} of 7000 flows");
        }
        assert_eq!(slot_for_hash(12345, 0), 0);
    }

    #[test]
    fn sequential_source_ports_spread_evenly() {
        // Kernels hand out ephemeral ports in steps of 1 or 2 from one client.
        for step in [1u16, 2] {
            let mut hits = [0u32; 5];
            for i in 0..4000u16 {
                let sport = (32_768 + i * step).to_be();
                let hash =
                    flow_hash(ipv4_to_nbo(Ipv4Addr::new(198, 18, 0, 2)), 0x0a00_0001, sport, 80u16.to_be(), proto::TCP);
                hits[usize::from(slot_for_hash(hash, 4))] += 1;
            }
            for (slot, n) in hits.iter().enumerate().skip(1) {
                assert!((900..1100).contains(n), "step {step}: slot {slot} got {n} of 4000 flows");
            }
        }
    }

    #[test]
    fn hash_depends_on_every_field() {
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17));
    }

    #[test]
    fn drop_reasons_fit_the_counter_array() {
        for r in DropReason::ALL {
            assert!((r as u32) < limits::COUNTERS_MAX, "{r:?}");
        }
        for s in Stat::ALL {
            assert!((s as u32) < limits::COUNTERS_MAX, "{s:?}");
        }
    }
}
