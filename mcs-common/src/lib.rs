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

pub mod event;

/// Names of the maps in the eBPF object. They are also the file names of the
/// pins under the agent's pin directory.
pub mod map_names {
    /// [`crate::ServiceKey`] → [`crate::ServiceValue`].
    pub const SERVICES: &str = "MCS_SERVICES";
    /// Array: `u32` backend id (host) → [`crate::Backend`]; an all-zero
    /// element is no backend.
    pub const BACKENDS: &str = "MCS_BACKENDS";
    /// [`crate::CtKey`] → [`crate::CtValue`], LRU: TCP flows.
    pub const CONNTRACK_TCP: &str = "MCS_CT_TCP";
    /// [`crate::CtKey`] → [`crate::CtValue`], LRU: every other protocol
    /// (UDP), so that their churn cannot evict TCP flows.
    pub const CONNTRACK_ANY: &str = "MCS_CT_ANY";
    /// [`crate::FragKey`] → [`crate::FragValue`], LRU: the ports of
    /// fragmented datagrams, from their first fragment.
    pub const FRAGMENTS: &str = "MCS_FRAGS";
    /// Per-CPU `u64` counters indexed by [`crate::DropReason`].
    pub const DROPS: &str = "MCS_DROPS";
    /// Per-CPU `u64` counters indexed by [`crate::Stat`].
    pub const STATS: &str = "MCS_STATS";
    /// Hash of maps with one entry, [`crate::MAGLEV_ARRAY_KEY`] → every
    /// service port's Maglev table in one flat, mmapable array of backend-id
    /// slots, two per element ([`crate::MaglevPair`]): a port's table is the
    /// `ServiceValue::table_size` slots from `ServiceValue::table_start`.
    /// Created once by the agent at load, written in place (docs/datapath.md).
    pub const MAGLEV: &str = "MCS_MAGLEV";
    /// [`crate::AffinityKey`] → [`crate::AffinityValue`], LRU.
    pub const AFFINITY: &str = "MCS_AFFINITY";
    /// `u32` cluster id (host) → [`crate::ClusterName`].
    pub const CLUSTERS: &str = "MCS_CLUSTERS";
    /// Per-CPU array: `u32` service id (host) → [`crate::ServiceStats`].
    pub const SERVICE_STATS: &str = "MCS_SVC_STATS";
    /// [`crate::SockRevKey`] → [`crate::SockRevValue`], LRU: the
    /// ClusterSetIP:port a socket-translated socket asked for, by socket and
    /// backend, for `recvmsg` and `getpeername`.
    pub const SOCK_REV: &str = "MCS_SOCK_REV";
    /// [`crate::RateKey`] → [`crate::RateValue`], LRU: the token buckets of
    /// fail-fast answers and mid-stream pickups, per interface.
    pub const RATE: &str = "MCS_RATE";
    /// One [`crate::DatapathConfig`] at index 0: the settings the running
    /// programs were loaded with, recorded for `mcs-agent inspect`.
    pub const CONFIG: &str = "MCS_CONFIG";
    /// Every map, in the order the agent reports them.
    pub const ALL: [&str; 14] = [
        SERVICES,
        BACKENDS,
        CONNTRACK_TCP,
        CONNTRACK_ANY,
        FRAGMENTS,
        DROPS,
        STATS,
        MAGLEV,
        AFFINITY,
        CLUSTERS,
        SERVICE_STATS,
        SOCK_REV,
        RATE,
        CONFIG,
    ];
    /// Pins that older layouts made and this one no longer has: `MCS_CT`
    /// (one conntrack map for every protocol, layout 1).
    pub const OBSOLETE: [&str; 1] = ["MCS_CT"];
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
    /// cgroup `connect4`: a TCP or UDP `connect()` to a ClusterSetIP:port
    /// is sent to a backend (socket-level load balancing).
    pub const CONNECT4: &str = "mcs_connect4";
    /// cgroup `sendmsg4`: an unconnected UDP `sendto()` to a ClusterSetIP:port.
    pub const SENDMSG4: &str = "mcs_sendmsg4";
    /// cgroup `recvmsg4`: answers of a translated UDP socket's backend come
    /// from the ClusterSetIP:port.
    pub const RECVMSG4: &str = "mcs_recvmsg4";
    /// cgroup `getpeername4`: a translated socket's peer is the ClusterSetIP:port.
    pub const GETPEERNAME4: &str = "mcs_getpeername4";
    /// The socket programs, in the order the agent attaches them.
    pub const SOCKET: [&str; 4] = [CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4];
    /// XDP on uplinks (`--xdp-interfaces`): ClusterSetIP traffic of clients
    /// that run no agent, translated (DNAT and SNAT) and forwarded in XDP.
    pub const GATEWAY: &str = "mcs_gateway";
    /// An XDP program that returns `XDP_PASS` and does nothing else: the
    /// benchmarks' XDP floor, and what tests attach to the far end of a veth
    /// so that frames redirected into it are received (a veth delivers
    /// `XDP_REDIRECT`ed and `XDP_TX`ed frames only to a peer with XDP or GRO on).
    pub const XDP_NOOP: &str = "mcs_xdp_noop";
}

/// Name of the load-time global ([`DatapathConfig`]) in the object's `.rodata`.
pub const CONFIG_GLOBAL: &str = "MCS_CFG";

/// Default sizes of the maps. The agent may override some at load.
pub mod limits {
    /// Entries of `MCS_SERVICES`: one per service port plus one wildcard per ClusterSetIP.
    pub const SERVICES_MAX: u32 = 262_144;
    /// Elements of `MCS_BACKENDS` (a backend entry belongs to one service
    /// port; id 0 is never used).
    pub const BACKENDS_MAX: u32 = 262_144;
    /// Entries of `MCS_CT_TCP`. Each connection takes two (forward and reply).
    pub const CONNTRACK_MAX: u32 = 262_144;
    /// Entries of `MCS_CT_ANY` (UDP). Each flow takes two.
    pub const CONNTRACK_NON_TCP_MAX: u32 = 131_072;
    /// Entries of `MCS_FRAGS`: fragmented datagrams in flight.
    pub const FRAGMENTS_MAX: u32 = 8192;
    /// Slots of the counter arrays; reasons and stats must stay below it.
    pub const COUNTERS_MAX: u32 = 32;
    /// Service ports that may hold a Maglev table (entries of `MCS_MAGLEV`),
    /// and elements of `MCS_SVC_STATS` (service ids are below it).
    pub const SERVICE_PORTS_MAX: u32 = 65_536;
    /// Entries of `MCS_AFFINITY` (one per client and service port with `ClientIP` affinity).
    pub const AFFINITY_MAX: u32 = 65_536;
    /// Entries of `MCS_CLUSTERS`.
    pub const CLUSTERS_MAX: u32 = 4096;
    /// Entries of `MCS_SOCK_REV` (LRU): one per socket and backend that a
    /// socket program translated.
    pub const SOCK_REV_MAX: u32 = 131_072;
    /// Default largest Maglev table size (slots per service port), a prime:
    /// a port's table is the smallest size of the ladder with at least 100
    /// slots per usable backend, at most this. See docs/datapath.md.
    pub const MAGLEV_TABLE_SIZE: u32 = 16_381;
    /// Default slots of `MCS_MAGLEV`, every table's slots together (4 bytes
    /// each: 64 MiB).
    pub const MAGLEV_SLOTS_MAX: u32 = 1 << 24;
    /// Largest accepted Maglev table size.
    pub const MAGLEV_TABLE_SIZE_MAX: u32 = 131_071;
    /// The most backends (usable and draining) one service port may have.
    pub const BACKENDS_PER_SERVICE_MAX: usize = 4096;
    /// Bytes of a cluster name in `MCS_CLUSTERS`.
    pub const CLUSTER_NAME_MAX: usize = 128;
    /// Default idle timeout of a TCP flow that has only seen the client's
    /// SYN, in seconds (as Cilium's).
    pub const CT_TIMEOUT_TCP_SYN_SECS: u64 = 60;
    /// Default idle timeout of an established TCP flow, in seconds (6 h).
    pub const CT_TIMEOUT_TCP_ESTABLISHED_SECS: u64 = 21_600;
    /// Default idle timeout of a closing TCP flow, in seconds.
    pub const CT_TIMEOUT_TCP_CLOSING_SECS: u64 = 10;
    /// Default idle timeout of a UDP flow, in seconds.
    pub const CT_TIMEOUT_UDP_SECS: u64 = 60;
    /// Default first source port translated flows are given. The default
    /// range, 1024–32767, lies below Linux's default ephemeral range
    /// (32768–60999), so a client's own connections never use the ports its
    /// translated flows get, and it is wide enough (31,744 ports) that a
    /// minute of new connections to one backend port (a `TIME_WAIT`'s length)
    /// need not reuse a port: 4,536 ports above the ephemeral range were not.
    pub const NAT_PORT_MIN: u16 = 1024;
    /// Default last source port translated flows are given.
    pub const NAT_PORT_MAX: u16 = 32_767;
    /// Default fail-fast answers per second per interface (as Linux's
    /// `icmp_msgs_per_sec`).
    pub const REJECT_RATE: u32 = 1000;
    /// Default fail-fast answers at once per interface (as Linux's
    /// `icmp_msgs_burst`).
    pub const REJECT_BURST: u32 = 50;
    /// Default mid-stream pickups per second per interface.
    pub const PICKUP_RATE: u32 = 100;
    /// Default mid-stream pickups at once per interface.
    pub const PICKUP_BURST: u32 = 200;
    /// Entries of `MCS_RATE`: two buckets per pod interface.
    pub const RATE_BUCKETS_MAX: u32 = 16_384;
    /// Source ports a new flow tries before it is refused
    /// ([`crate::DropReason::NatPortsExhausted`]). Each probe costs the
    /// verifier about 55,000 instructions walked in `mcs_from_pod` (the
    /// `guard` packet tests print the total and keep it under 80% of the
    /// kernel's limit); 16 left no room for the guards.
    pub const NAT_PORT_PROBES: u32 = 12;
}

/// `BPF_F_MMAPABLE | BPF_F_INNER_MAP`: the flags of the flat Maglev array
/// (the one inner map of `MCS_MAGLEV`) and of the object's template.
/// `BPF_F_MMAPABLE`: the agent reads and writes its slots through a shared
/// mapping, with no system call (and no RCU grace period) per table;
/// `BPF_F_INNER_MAP`: its size (`--maglev-slots-max`) need not be the
/// template's.
pub const MAGLEV_TABLE_FLAGS: u32 = (1 << 10) | (1 << 12);

/// The key of the flat Maglev array in `MCS_MAGLEV`, its only entry.
pub const MAGLEV_ARRAY_KEY: u32 = 0;

/// IP protocol numbers the datapath translates.
pub mod proto {
    /// `IPPROTO_ICMP`.
    pub const ICMP: u8 = 1;
    /// `IPPROTO_TCP`.
    pub const TCP: u8 = 6;
    /// `IPPROTO_UDP`.
    pub const UDP: u8 = 17;
}

/// ICMP (v4) message types the datapath reads.
pub mod icmp {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (code 3: port unreachable; code 4: fragmentation
    /// needed, which carries PMTU discovery).
    pub const DEST_UNREACH: u8 = 3;
    /// Code of [`DEST_UNREACH`]: port unreachable.
    pub const PORT_UNREACH: u8 = 3;
    /// Code of [`DEST_UNREACH`]: fragmentation needed and DF set.
    pub const FRAG_NEEDED: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;

    /// Whether `message_type` is an error that quotes the datagram it is about.
    #[must_use]
    pub const fn is_error(message_type: u8) -> bool {
        matches!(message_type, DEST_UNREACH | TIME_EXCEEDED | PARAMETER_PROBLEM)
    }
}

/// The version of the map layouts: recorded in `MCS_CONFIG`, so an agent can
/// tell pins of another layout from its own. Layout 1 (one conntrack map,
/// destination-only NAT) had no record; layout 2 had an address-only
/// [`AffinityKey`] and no socket counters or `MCS_SOCK_REV`; layout 3 had
/// one Maglev table per service port (inner maps of a hash of maps, no
/// `ServiceValue::table_start`), no client interface in [`CtValue`], no
/// guard settings in [`DatapathConfig`] and no `MCS_RATE`.
pub const LAYOUT_VERSION: u32 = 4;

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

/// Key of `MCS_SERVICES`: a service port, or a ClusterSetIP's wildcard.
///
/// A *wildcard* entry (`port == 0`, `proto == 0`) marks an address as a
/// ClusterSetIP, so traffic to any other address costs one lookup; packets to
/// a ClusterSetIP on a port that has no entry are dropped with
/// [`DropReason::UnknownPort`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// ClusterSetIP. NBO.
    pub addr: u32,
    /// Service port. NBO. Zero on the wildcard entry.
    pub port: u16,
    /// IP protocol number ([`proto`]). Zero on the wildcard entry.
    pub proto: u8,
    /// Zero.
    pub pad: u8,
}

impl ServiceKey {
    /// The entry of a service port. `port` is in host order.
    #[must_use]
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self::from_nbo(ipv4_to_nbo(addr), port.to_be(), proto)
    }

    /// A key from an address and port already in NBO, as read from a packet.
    #[must_use]
    pub const fn from_nbo(addr: u32, port: u16, proto: u8) -> Self {
        Self { addr, port, proto, pad: 0 }
    }

    /// The wildcard entry that marks `addr` as a ClusterSetIP.
    #[must_use]
    pub const fn wildcard(addr: Ipv4Addr) -> Self {
        Self::new(addr, 0, 0)
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
    /// `198.19.0.10:80/6`, or `198.19.0.10 (ClusterSetIP marker)`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.is_wildcard() {
            write!(f, "{} (ClusterSetIP marker)", self.ip())
        } else {
            write!(f, "{}:{}/{}", self.ip(), self.port_host(), self.proto)
        }
    }
}

/// `ServiceValue::flags`: the entry is a wildcard marker.
pub const SERVICE_F_WILDCARD: u16 = 1;
/// `ServiceValue::flags`: the table holds terminating backends only (the
/// KEP-1669 fallback): no ready backend exists.
pub const SERVICE_F_FALLBACK: u16 = 2;

/// Value of `MCS_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceValue {
    /// The id of this service port, stable while it exists; the key of its
    /// counters and affinity entries. Zero on wildcards. host.
    pub service_id: u32,
    /// Slots of the service's Maglev table (a prime); 0 means no usable
    /// backend: new connections are refused at once. host.
    pub table_size: u32,
    /// The table's first slot in `MCS_MAGLEV` (slot `s` of the table is
    /// slot `table_start + s` of the flat array). host.
    pub table_start: u32,
    /// `ClientIP` affinity timeout in seconds, 0 when off. host.
    pub affinity_timeout: u32,
    /// `SERVICE_F_*`. host.
    pub flags: u16,
    /// Zero.
    pub pad: u16,
    /// Zero (keeps the value a whole number of 8-byte words, which the
    /// programs copy as such).
    pub pad2: u32,
}

/// `Backend::flags`: the endpoint is terminating. It keeps its established
/// connections; it is in the Maglev table only as the fallback.
pub const BACKEND_F_TERMINATING: u8 = 1;
/// `Backend::flags`: the endpoint left its slices and is in its removal
/// grace period (`--backend-removal-grace-seconds`): it is in no table and
/// takes no new connection; its established flows keep going until the
/// grace ends and the agent clears the element.
pub const BACKEND_F_REMOVED: u8 = 2;

/// Element of `MCS_BACKENDS`, an array indexed by a `u32` backend id
/// (host). A backend entry belongs to exactly one service port; an all-zero
/// element is no backend (ids start at 1).
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
    /// The id of the backend's cluster in `MCS_CLUSTERS`. host.
    pub cluster_id: u32,
    /// The service port this backend belongs to; 0 in an empty element. host.
    pub service_id: u32,
}

impl Backend {
    /// A backend; `port` is in host order.
    #[must_use]
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8, flags: u8, cluster_id: u32, service_id: u32) -> Self {
        Self { addr: ipv4_to_nbo(addr), port: port.to_be(), proto, flags, cluster_id, service_id }
    }

    /// Whether the element holds a backend (service ids start at 1).
    #[must_use]
    pub const fn is_present(&self) -> bool {
        self.service_id != 0
    }
}

/// `CtKey::dir` of the entry written for the client → ClusterSetIP direction.
pub const CT_DIR_FORWARD: u8 = 0;
/// `CtKey::dir` of the entry written for the backend → client direction.
pub const CT_DIR_REPLY: u8 = 1;

/// Key of `MCS_CT_TCP` and `MCS_CT_ANY`: a packet's 5-tuple as it arrives,
/// plus the direction.
///
/// - Forward entries are keyed as the client sends: (client, ClusterSetIP,
///   client port, service port).
/// - Reply entries are keyed as the backend answers the translated packet:
///   (backend, client or hairpin address, backend port, translated client
///   port). That is the translated flow's tuple seen backwards, so a reply
///   entry also claims that tuple: no two translated flows get the same one.
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

impl CtKey {
    /// The key of the other entry of a flow whose entry `self` rewrites
    /// packets to `value`'s tuple: that tuple, seen from the other end.
    #[must_use]
    #[expect(clippy::inline_always, reason = "called per packet by the eBPF programs")]
    #[inline(always)]
    pub const fn peer(&self, value: &CtValue) -> Self {
        Self {
            saddr: value.nat_daddr,
            daddr: value.nat_saddr,
            sport: value.nat_dport,
            dport: value.nat_sport,
            proto: self.proto,
            dir: if self.dir == CT_DIR_FORWARD { CT_DIR_REPLY } else { CT_DIR_FORWARD },
            pad: [0; 2],
        }
    }
}

/// `CtValue::state` as [`ct_state`] derives it: TCP, only the client's SYN seen.
pub const CT_STATE_SYN: u8 = 1;
/// TCP, the backend answered (or the flow was picked up mid-stream).
pub const CT_STATE_ESTABLISHED: u8 = 2;
/// TCP, an RST, or a FIN from both sides, was seen.
pub const CT_STATE_CLOSING: u8 = 3;
/// A UDP flow.
pub const CT_STATE_UDP: u8 = 4;

/// Flag bits of `CtValue::own_flags` and `peer_flags`. Each bit has one
/// writer: the packets of one direction set it in their own entry only.
/// `CT_F_FIN_FORWARD` and `CT_F_RST_FORWARD` come from forward packets.
pub const CT_F_FIN_FORWARD: u8 = 1;
/// The client sent an RST.
pub const CT_F_RST_FORWARD: u8 = 2;
/// The backend answered (reply packets; set at creation for a flow picked
/// up mid-stream).
pub const CT_F_SEEN_REPLY: u8 = 4;
/// The backend sent a FIN.
pub const CT_F_FIN_REPLY: u8 = 8;
/// The backend sent an RST.
pub const CT_F_RST_REPLY: u8 = 16;

/// The state of a flow of protocol `proto` whose two entries carry `flags`
/// (`own_flags | peer_flags`): the one place that maps flags to states.
#[must_use]
#[expect(clippy::inline_always, reason = "called per packet by the eBPF programs")]
#[inline(always)]
pub const fn ct_state(proto: u8, flags: u8) -> u8 {
    if proto != proto::TCP {
        CT_STATE_UDP
    } else if flags & (CT_F_RST_FORWARD | CT_F_RST_REPLY) != 0
        || flags & (CT_F_FIN_FORWARD | CT_F_FIN_REPLY) == CT_F_FIN_FORWARD | CT_F_FIN_REPLY
    {
        CT_STATE_CLOSING
    } else if flags & CT_F_SEEN_REPLY != 0 {
        CT_STATE_ESTABLISHED
    } else {
        CT_STATE_SYN
    }
}

/// Value of `MCS_CT_TCP` and `MCS_CT_ANY`.
///
/// Both entries of a flow hold the tuple their direction's packets are
/// rewritten to, so the datapath's NAT is one operation both ways:
/// - forward: client:port → ClusterSetIP:port becomes (client, or the hairpin
///   address):translated port → backend:port;
/// - reply: backend:port → (client or hairpin address):translated port
///   becomes ClusterSetIP:port → client:port.
///
/// Flags have one writer per entry (its direction's packets), so crossing
/// FINs cannot lose a bit; the peer's flags are copied in when read.
/// `last_seen_ns` is stamped by either direction (a lost update only makes
/// it a little older).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtValue {
    /// Source address packets of this direction get. NBO.
    pub nat_saddr: u32,
    /// Destination address packets of this direction get. NBO.
    pub nat_daddr: u32,
    /// Source port packets of this direction get. NBO.
    pub nat_sport: u16,
    /// Destination port packets of this direction get. NBO.
    pub nat_dport: u16,
    /// The backend chosen for the flow. host.
    pub backend_id: u32,
    /// The service port the flow was translated for. host.
    pub service_id: u32,
    /// `CT_F_*` bits this direction's packets set. Only they write it.
    pub own_flags: u8,
    /// The other entry's `own_flags`, as this entry last read them.
    pub peer_flags: u8,
    /// The interface the client's packets of this flow arrive on (its
    /// `ifindex` at tc ingress) as [`ifindex_tag`] makes it, the same in
    /// both entries; 0: any. A forward packet from an interface with another
    /// tag does not belong to the flow (source validation). A tag, not the
    /// whole index: a larger entry took the verifier past its limit; two
    /// live interfaces whose indexes differ by a multiple of 65,535 are told
    /// apart only by the exact tuple the packet must carry. host.
    pub client_ifindex: u16,
    /// When the flow was created, `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC`,
    /// coarse). host.
    pub created_ns: u64,
    /// When a packet of the flow (either direction) last used the entry,
    /// within [`CT_REFRESH_NS`]. host.
    pub last_seen_ns: u64,
}

/// What [`CtValue::client_ifindex`] keeps of an interface index: a 16-bit
/// tag, `1 + ifindex mod 65,535`, never 0 (which means any interface).
/// Without a branch: a branch here would double the paths the verifier
/// walks through the translated-port probes.
#[must_use]
#[expect(clippy::inline_always, reason = "called per packet by the eBPF programs")]
#[inline(always)]
pub const fn ifindex_tag(ifindex: u32) -> u16 {
    #[expect(clippy::cast_possible_truncation, reason = "at most 65,535")]
    let tag = (ifindex % 0xffff + 1) as u16;
    tag
}

impl CtValue {
    /// The flags of both entries, as far as this one knows.
    #[must_use]
    #[expect(clippy::inline_always, reason = "called per packet by the eBPF programs")]
    #[inline(always)]
    pub const fn flags(&self) -> u8 {
        self.own_flags | self.peer_flags
    }
}

/// `last_seen_ns` fields are refreshed at most this often, to spare a map
/// write per packet; an idle timeout is therefore exact to within this.
pub const CT_REFRESH_NS: u64 = 100_000_000;

/// Key of `MCS_FRAGS`: one fragmented datagram, as its fragments arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    /// Source address. NBO.
    pub saddr: u32,
    /// Destination address. NBO.
    pub daddr: u32,
    /// The IPv4 identification. NBO.
    pub id: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Zero.
    pub pad: u8,
}

/// Value of `MCS_FRAGS`: the ports the first fragment carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragValue {
    /// Source port. NBO.
    pub sport: u16,
    /// Destination port. NBO.
    pub dport: u16,
}

/// `AffinityKey::kind`: the client is an address (the tc path: the packet's source).
pub const AFFINITY_BY_ADDR: u32 = 0;
/// `AffinityKey::kind`: the client is a network namespace, by its cookie
/// (the socket path: at `connect()` a socket has no source address yet).
pub const AFFINITY_BY_NETNS: u32 = 1;

/// Key of `MCS_AFFINITY`: a client and a service port with `ClientIP` affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    /// The client: with [`AFFINITY_BY_ADDR`] its IPv4 address (NBO) widened
    /// with `u64::from`; with [`AFFINITY_BY_NETNS`] its network namespace's
    /// cookie (host).
    pub client: u64,
    /// Service port. host.
    pub service_id: u32,
    /// [`AFFINITY_BY_ADDR`] or [`AFFINITY_BY_NETNS`]. host.
    pub kind: u32,
}

impl AffinityKey {
    /// The tc path's key: the client's address (NBO).
    #[must_use]
    pub const fn by_addr(addr: u32, service_id: u32) -> Self {
        Self { client: addr as u64, service_id, kind: AFFINITY_BY_ADDR }
    }

    /// The socket path's key: the client's network namespace cookie.
    #[must_use]
    pub const fn by_netns(cookie: u64, service_id: u32) -> Self {
        Self { client: cookie, service_id, kind: AFFINITY_BY_NETNS }
    }
}

/// Key of `MCS_SOCK_REV`: a socket (by cookie) and the backend a socket
/// program sent it to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie`. host.
    pub cookie: u64,
    /// Backend address. NBO.
    pub addr: u32,
    /// Backend port. NBO.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// Value of `MCS_SOCK_REV`: the ClusterSetIP:port the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevValue {
    /// ClusterSetIP. NBO.
    pub addr: u32,
    /// Service port. NBO.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// Which of an interface's token buckets a [`RateKey`] names.
pub mod rate_kind {
    /// Fail-fast answers (`--reject-rate`).
    pub const REJECT: u32 = 0;
    /// Mid-stream pickups of untracked TCP flows (`--pickup-rate`).
    pub const PICKUP: u32 = 1;
}

/// Key of `MCS_RATE`: one token bucket of one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RateKey {
    /// The interface (`ifindex` at tc ingress). host.
    pub ifindex: u32,
    /// A [`rate_kind`]. host.
    pub kind: u32,
}

/// Value of `MCS_RATE`: a token bucket kept as time. Each event costs
/// `NS_PER_SEC / rate` ns of credit; credit grows with the time since
/// `last_ns`, up to `burst` events' worth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RateValue {
    /// Credit left, in ns. host.
    pub credit_ns: u64,
    /// When the credit was last brought up to date, `bpf_ktime_get_coarse_ns`. host.
    pub last_ns: u64,
}

impl RateValue {
    /// Spends one event of a bucket of `rate` events per second and `burst`
    /// at once at `now`: whether there was credit for it. The one place the
    /// bucket arithmetic lives, for the programs and the unit tests alike.
    #[must_use]
    #[expect(clippy::inline_always, reason = "called per refused packet by the eBPF programs")]
    #[inline(always)]
    pub fn spend(&mut self, now: u64, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let cost = NS_PER_SEC / u64::from(rate);
        let cap = cost * u64::from(burst.max(1));
        let credit = self.credit_ns.saturating_add(now.saturating_sub(self.last_ns)).min(cap);
        self.last_ns = now;
        if credit >= cost {
            self.credit_ns = credit - cost;
            true
        } else {
            self.credit_ns = credit;
            false
        }
    }

    /// A full bucket of `rate` and `burst` at `now` after spending one event.
    #[must_use]
    #[expect(clippy::inline_always, reason = "called by the eBPF programs")]
    #[inline(always)]
    pub fn first(now: u64, rate: u32, burst: u32) -> Self {
        let cost = if rate == 0 { 0 } else { NS_PER_SEC / u64::from(rate) };
        Self { credit_ns: cost * u64::from(burst.max(1).saturating_sub(1)), last_ns: now }
    }
}

/// Value of `MCS_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityValue {
    /// The backend the client's connections go to. host.
    pub backend_id: u32,
    /// Zero.
    pub pad: u32,
    /// When the client last opened a connection to the service, `bpf_ktime_get_ns`. host.
    pub last_seen_ns: u64,
}

/// Value of `MCS_CLUSTERS`: a cluster's name, NUL-padded UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterName {
    /// The name's bytes, then zeros.
    pub name: [u8; limits::CLUSTER_NAME_MAX],
}

impl ClusterName {
    /// Encodes `name`; `None` when it is longer than the map allows or holds a NUL.
    #[must_use]
    pub fn new(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.len() > limits::CLUSTER_NAME_MAX || bytes.contains(&0) {
            return None;
        }
        let mut out = [0u8; limits::CLUSTER_NAME_MAX];
        out[..bytes.len()].copy_from_slice(bytes);
        Some(Self { name: out })
    }

    /// The name, up to the first NUL; `None` when it is not UTF-8.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        let len = self.name.iter().position(|b| *b == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..len]).ok()
    }
}

/// Value of `MCS_SVC_STATS` (per CPU): what one service port carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceStats {
    /// Packets from clients translated to a backend. host.
    pub packets: u64,
    /// Their bytes (the whole frame). host.
    pub bytes: u64,
    /// New flows (conntrack entries created). host.
    pub new_flows: u64,
    /// Packets answered with a TCP RST or ICMP unreachable. host.
    pub rejected: u64,
    /// `connect()` and `sendmsg()` calls sent to a backend by the socket
    /// programs. host.
    pub socket_translated: u64,
    /// `connect()` and `sendmsg()` calls refused with `ECONNREFUSED` (no
    /// usable backend). host.
    pub socket_refused: u64,
}

/// The datapath's settings, a load-time global (`MCS_CFG`) of the programs
/// and a copy in `MCS_CONFIG` for `inspect`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatapathConfig {
    /// Idle timeout of a TCP flow that has only seen the client's SYN. ns, host.
    pub tcp_syn_ns: u64,
    /// Idle timeout of an established TCP flow. ns, host.
    pub tcp_established_ns: u64,
    /// Idle timeout of a closing TCP flow (RST, or FIN both ways). ns, host.
    pub tcp_closing_ns: u64,
    /// Idle timeout of a UDP flow. ns, host.
    pub udp_ns: u64,
    /// The address hairpinned connections are source-NATed to; 0 disables hairpin
    /// SNAT. NBO.
    pub hairpin_addr: u32,
    /// The Maglev table size the agent builds tables with (informational). host.
    pub maglev_table_size: u32,
    /// Entries of `MCS_CT_TCP` (informational). host.
    pub conntrack_max: u32,
    /// Entries of `MCS_AFFINITY` (informational). host.
    pub affinity_max: u32,
    /// Entries of `MCS_CT_ANY` (informational). host.
    pub conntrack_max_non_tcp: u32,
    /// First source port translated flows get. host.
    pub nat_port_min: u16,
    /// Last source port translated flows get (at least `nat_port_min`). host.
    pub nat_port_max: u16,
    /// [`LAYOUT_VERSION`] of the maps these settings were written into. host.
    pub layout_version: u32,
    /// `SOCKET_F_*`: how the socket programs behave. host.
    pub socket_flags: u32,
    /// The cookie of the node's own network namespace (the agent's), for
    /// [`SOCKET_F_HOST_ONLY`]. host.
    pub host_netns_cookie: u64,
    /// `GUARD_F_*`: the checks on what pods send. host.
    pub guard_flags: u32,
    /// Fail-fast answers (TCP RST, ICMP port unreachable) an interface may
    /// get per second; 0: no limit. host.
    pub reject_rate: u32,
    /// Fail-fast answers an interface may get at once, after a quiet spell. host.
    pub reject_burst: u32,
    /// TCP packets other than SYNs an interface may send per second that
    /// pick up an untracked flow mid-stream; 0: no limit. host.
    pub pickup_rate: u32,
    /// Such pickups an interface may make at once. host.
    pub pickup_burst: u32,
    /// Zero.
    pub pad: u32,
}

/// `DatapathConfig::guard_flags`: a new flow to a ClusterSetIP is accepted
/// only from a source address the node routes back out of the interface the
/// packet came in on (a FIB lookup, like strict reverse-path filtering).
pub const GUARD_F_SOURCE_FIB: u32 = 1;

/// `DatapathConfig::socket_flags`: the socket programs translate only the
/// sockets of the node's own network namespace (`--socket-lb-host-only`),
/// and leave pods to the tc programs.
pub const SOCKET_F_HOST_ONLY: u32 = 1;

/// The default hairpin address, 169.254.16.45: link-local, so it is never
/// a pod's or a node's address, and never leaves the node (hairpinned
/// packets are sent straight back to the pod).
pub const DEFAULT_HAIRPIN_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 16, 45);

impl DatapathConfig {
    /// The defaults: timeouts from [`limits`] (`CT_TIMEOUT_*`, as Cilium's),
    /// hairpin through [`DEFAULT_HAIRPIN_ADDR`], translated source ports
    /// `NAT_PORT_MIN..=NAT_PORT_MAX`.
    pub const DEFAULT: Self = Self {
        tcp_syn_ns: limits::CT_TIMEOUT_TCP_SYN_SECS * NS_PER_SEC,
        tcp_established_ns: limits::CT_TIMEOUT_TCP_ESTABLISHED_SECS * NS_PER_SEC,
        tcp_closing_ns: limits::CT_TIMEOUT_TCP_CLOSING_SECS * NS_PER_SEC,
        udp_ns: limits::CT_TIMEOUT_UDP_SECS * NS_PER_SEC,
        hairpin_addr: ipv4_to_nbo(DEFAULT_HAIRPIN_ADDR),
        maglev_table_size: limits::MAGLEV_TABLE_SIZE,
        conntrack_max: limits::CONNTRACK_MAX,
        affinity_max: limits::AFFINITY_MAX,
        conntrack_max_non_tcp: limits::CONNTRACK_NON_TCP_MAX,
        nat_port_min: limits::NAT_PORT_MIN,
        nat_port_max: limits::NAT_PORT_MAX,
        layout_version: LAYOUT_VERSION,
        socket_flags: 0,
        host_netns_cookie: 0,
        guard_flags: GUARD_F_SOURCE_FIB,
        reject_rate: limits::REJECT_RATE,
        reject_burst: limits::REJECT_BURST,
        pickup_rate: limits::PICKUP_RATE,
        pickup_burst: limits::PICKUP_BURST,
        pad: 0,
    };

    /// The idle timeout of a flow in `state` (`CT_STATE_*`), in ns. The one
    /// place that maps states to timeouts: the eBPF programs and `inspect`
    /// both use it.
    #[must_use]
    #[expect(clippy::inline_always, reason = "called per packet by the eBPF programs")]
    #[inline(always)]
    pub const fn timeout_ns(&self, state: u8) -> u64 {
        match state {
            CT_STATE_SYN => self.tcp_syn_ns,
            CT_STATE_ESTABLISHED => self.tcp_established_ns,
            CT_STATE_CLOSING => self.tcp_closing_ns,
            _ => self.udp_ns,
        }
    }

    /// How many source ports translated flows may get.
    #[must_use]
    #[expect(clippy::inline_always, reason = "called per new flow by the eBPF programs")]
    #[inline(always)]
    pub const fn nat_ports(&self) -> u32 {
        if self.nat_port_max < self.nat_port_min { 1 } else { (self.nat_port_max - self.nat_port_min) as u32 + 1 }
    }

    /// Whether `port` (host order) is in the translated-port range: where a
    /// reply to a source-NATed (gateway) flow is addressed.
    #[must_use]
    #[expect(clippy::inline_always, reason = "called per packet by the XDP gateway")]
    #[inline(always)]
    pub const fn in_nat_range(&self, port: u16) -> bool {
        self.nat_port_min <= port && port <= self.nat_port_max
    }

    /// The `attempt`-th source port (host order) a new flow with
    /// [`nat_port_hash`] `hash` tries: consecutive ports from a start the
    /// hash picks, wrapping inside the range.
    #[must_use]
    #[expect(clippy::inline_always, reason = "called per new flow by the eBPF programs")]
    #[inline(always)]
    pub const fn nat_port(&self, hash: u32, attempt: u32) -> u16 {
        let n = self.nat_ports();
        let offset = (hash % n + attempt % n) % n;
        #[expect(clippy::cast_possible_truncation, reason = "offset < the range's size, at most 65536")]
        let port = self.nat_port_min.wrapping_add(offset as u16);
        port
    }
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Nanoseconds in a second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Why the datapath dropped (or refused) a packet: the index into `MCS_DROPS`.
///
/// The numbers are stable: dashboards and `bpftool` users rely on them. Add new
/// reasons at the end.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The packet is for a ClusterSetIP on a port or protocol the service does
    /// not list (an ICMP echo included).
    UnknownPort = 1,
    /// The service port has no usable backend; a new connection is answered
    /// with a TCP RST or an ICMP port unreachable (fail-fast). A packet whose
    /// answer could not be built counts as [`DropReason::RejectFailed`] instead.
    NoBackend = 2,
    /// The packet is for a ClusterSetIP but its headers are truncated or invalid.
    Malformed = 3,
    /// A later fragment (no L4 header) for a ClusterSetIP whose first
    /// fragment was not seen: its ports, and so its flow, are unknown.
    Fragment = 4,
    /// A Maglev slot named a backend that is not in `MCS_BACKENDS`, or the
    /// table is missing.
    BackendMissing = 5,
    /// The conntrack entry could not be written.
    CtInsertFailed = 6,
    /// Rewriting the packet or its checksums failed.
    RewriteFailed = 7,
    /// A packet of a tracked TCP flow whose backend was removed; the client
    /// gets an RST. A packet whose RST could not be built counts as
    /// [`DropReason::RejectFailed`] instead.
    BackendGone = 8,
    /// A TCP RST or ICMP unreachable could not be built; the packet was
    /// dropped. Counted under this reason only, not also under the reason for
    /// the answer (each packet counts once).
    RejectFailed = 9,
    /// A new flow found no free source port in the translated-port range
    /// towards its backend (every port it tried is held by a live flow).
    NatPortsExhausted = 10,
    /// An ICMP error for a ClusterSetIP that quotes no tracked flow.
    IcmpNoFlow = 11,
    /// A packet to a ClusterSetIP whose source address the node does not
    /// route back out of the interface it came in on (`--source-validation`),
    /// or a packet of a tracked flow that came in on another interface than
    /// the flow's client: a pod sending with another pod's address.
    SourceInvalid = 12,
    /// A refused packet that got no answer: the fail-fast answers of its
    /// interface were over their rate (`--reject-rate`, `--reject-burst`).
    /// Counted under this reason only.
    RejectLimited = 13,
    /// A TCP packet other than a SYN that would have picked up an untracked
    /// flow mid-stream, over its interface's rate of such pickups
    /// (`--pickup-rate`, `--pickup-burst`). The client's retransmission
    /// tries again.
    PickupLimited = 14,
    /// The XDP gateway found no route to a flow's backend (or back to its
    /// client), or forwarding is off on the interface the packet came in on.
    NoRoute = 15,
}

impl DropReason {
    /// Every reason, in number order.
    pub const ALL: [Self; 15] = [
        Self::UnknownPort,
        Self::NoBackend,
        Self::Malformed,
        Self::Fragment,
        Self::BackendMissing,
        Self::CtInsertFailed,
        Self::RewriteFailed,
        Self::BackendGone,
        Self::RejectFailed,
        Self::NatPortsExhausted,
        Self::IcmpNoFlow,
        Self::SourceInvalid,
        Self::RejectLimited,
        Self::PickupLimited,
        Self::NoRoute,
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
            Self::BackendGone => "backend-gone",
            Self::RejectFailed => "reject-failed",
            Self::NatPortsExhausted => "nat-ports-exhausted",
            Self::IcmpNoFlow => "icmp-no-flow",
            Self::SourceInvalid => "source-invalid",
            Self::RejectLimited => "reject-limited",
            Self::PickupLimited => "pickup-limited",
            Self::NoRoute => "no-route",
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
    /// A TCP RST was sent back to a client (no backend, or its backend left).
    RejectTcp = 3,
    /// An ICMP port unreachable was sent back to a UDP client (no backend).
    RejectIcmp = 4,
    /// A new flow was hairpinned (its backend is the client) and source-NATed.
    HairpinNew = 5,
    /// A new flow followed its client's session affinity.
    AffinityHit = 6,
    /// A UDP flow whose backend was removed is moved to a new backend.
    /// Counted when its packet finds the entry, so also when that packet is
    /// then dropped (its service port gone, say), as for the two below.
    CtReselected = 7,
    /// A packet found its tuple's conntrack entry expired (idle past its
    /// state's timeout); a new flow replaces it.
    CtExpired = 8,
    /// A SYN reused the 5-tuple of a closing TCP flow, or a client recreated
    /// on another interface reused its old flow's tuple; a new flow replaces
    /// the entry.
    CtReused = 9,
    /// An ICMP error about a translated flow was translated for the client.
    IcmpToClient = 10,
    /// An ICMP error from a client about a translated flow was translated for the backend.
    IcmpToBackend = 11,
    /// A later fragment of a translated datagram was translated.
    FragmentTranslated = 12,
    /// A flow's missing entry (evicted from the LRU map) was rebuilt from the other.
    CtRebuilt = 13,
    /// A new flow took the translated source port of a closing or expired flow.
    NatPortReused = 14,
    /// A new flow did not get the first source port it tried (another flow holds it).
    NatPortProbed = 15,
    /// A `connect()` or `sendmsg()` to a service port was sent to a backend.
    SocketTranslated = 16,
    /// A `connect()` or `sendmsg()` to a service port without a usable
    /// backend was refused with `ECONNREFUSED`.
    SocketRefused = 17,
    /// A `recvmsg()` or `getpeername()` of a translated socket got the
    /// ClusterSetIP:port back.
    SocketReverse = 18,
    /// The XDP gateway translated a packet and sent it on itself (`XDP_TX`
    /// or `XDP_REDIRECT` to the next hop `bpf_fib_lookup` named).
    GatewayForwarded = 19,
    /// The XDP gateway translated a packet and handed it to the kernel to
    /// forward: the next hop's neighbour entry is not resolved yet, or the
    /// packet is larger than the route's MTU.
    GatewayToStack = 20,
}

impl Stat {
    /// Every stat, in number order.
    pub const ALL: [Self; 21] = [
        Self::ForwardNew,
        Self::ForwardEstablished,
        Self::ReverseNat,
        Self::RejectTcp,
        Self::RejectIcmp,
        Self::HairpinNew,
        Self::AffinityHit,
        Self::CtReselected,
        Self::CtExpired,
        Self::CtReused,
        Self::IcmpToClient,
        Self::IcmpToBackend,
        Self::FragmentTranslated,
        Self::CtRebuilt,
        Self::NatPortReused,
        Self::NatPortProbed,
        Self::SocketTranslated,
        Self::SocketRefused,
        Self::SocketReverse,
        Self::GatewayForwarded,
        Self::GatewayToStack,
    ];

    /// The stable name used in metrics and command output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::ForwardNew => "forward-new",
            Self::ForwardEstablished => "forward-established",
            Self::ReverseNat => "reverse-nat",
            Self::RejectTcp => "reject-tcp-rst",
            Self::RejectIcmp => "reject-icmp",
            Self::HairpinNew => "hairpin-new",
            Self::AffinityHit => "affinity-hit",
            Self::CtReselected => "ct-reselected",
            Self::CtExpired => "ct-expired",
            Self::CtReused => "ct-reused",
            Self::IcmpToClient => "icmp-to-client",
            Self::IcmpToBackend => "icmp-to-backend",
            Self::FragmentTranslated => "fragment-translated",
            Self::CtRebuilt => "ct-rebuilt",
            Self::NatPortReused => "nat-port-reused",
            Self::NatPortProbed => "nat-port-probed",
            Self::SocketTranslated => "socket-translated",
            Self::SocketRefused => "socket-refused",
            Self::SocketReverse => "socket-reverse",
            Self::GatewayForwarded => "gateway-forwarded",
            Self::GatewayToStack => "gateway-to-stack",
        }
    }
}

/// The flow hash that picks a Maglev slot for a new flow.
///
/// Both sides use this one function, so the agent (and the tests) can predict
/// the backend a flow will get: the slot is `flow_hash(..) % table_size`
/// ([`maglev_slot`]). Inputs are as in the packet (NBO). It is a 32-bit mix
/// of the 5-tuple, not a cryptographic hash.
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

/// The hash that picks the first source port a new flow tries
/// ([`DatapathConfig::nat_port`]): the 5-tuple as the client sent it, mixed
/// apart from [`flow_hash`] so the port does not follow the Maglev slot.
/// Deterministic, so a flow picked up again after its entries were lost gets
/// the port it had (unless another flow held it when it was created).
#[must_use]
#[expect(clippy::inline_always, reason = "called per new flow by the eBPF programs")]
#[inline(always)]
pub const fn nat_port_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    fmix(mix(flow_hash(saddr, daddr, sport, dport, proto), 0x6d63_736e))
}

/// The hash that picks a Maglev slot for a socket the socket programs
/// translate: its cookie, which differs for every socket (the source port a
/// flow will have is not known at `connect()`). Like [`flow_hash`], one
/// function on both sides, so a test that reads a socket's cookie
/// (`SO_COOKIE`) can predict its backend.
#[must_use]
#[expect(clippy::inline_always, reason = "called per connect() by the eBPF programs")]
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "the cookie's two halves")]
pub const fn socket_hash(cookie: u64) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    h = mix(h, cookie as u32);
    h = mix(h, (cookie >> 32) as u32);
    fmix(mix(h, 0x736f_636b))
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

/// An element of `MCS_MAGLEV`: two slots. The kernel stores array values in
/// 8-byte steps, so an array of `u32` slots would take 8 bytes a slot; two
/// slots an element take 4, and the `mmap` view of the array is a plain
/// array of `u32` slots. Slot `s` is `element[s / 2][s % 2]`.
pub type MaglevPair = [u32; 2];

/// The elements of `MCS_MAGLEV` that hold `slots` slots.
#[must_use]
pub const fn maglev_elements(slots: u32) -> u32 {
    slots.div_ceil(2)
}

/// The Maglev slot (0-based) a flow with `hash` lands on in a table of
/// `table_size` slots; 0 when the table is empty.
#[must_use]
#[expect(clippy::inline_always, reason = "called per new flow by the eBPF programs")]
#[inline(always)]
pub const fn maglev_slot(hash: u32, table_size: u32) -> u32 {
    if table_size == 0 { 0 } else { hash % table_size }
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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClusterName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateValue {}
}

/// Compile-time layout checks: the sizes the eBPF side and BTF rely on.
const _: () = {
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<ServiceValue>() == 24);
    assert!(size_of::<Backend>() == 16);
    assert!(size_of::<CtKey>() == 16);
    assert!(size_of::<CtValue>() == 40);
    assert!(size_of::<AffinityKey>() == 16);
    assert!(size_of::<AffinityValue>() == 16);
    assert!(size_of::<ClusterName>() == limits::CLUSTER_NAME_MAX);
    assert!(size_of::<ServiceStats>() == 48);
    assert!(size_of::<DatapathConfig>() == 96);
    assert!(size_of::<FragKey>() == 12);
    assert!(size_of::<FragValue>() == 4);
    assert!(size_of::<SockRevKey>() == 16);
    assert!(size_of::<SockRevValue>() == 8);
    assert!(size_of::<RateKey>() == 8);
    assert!(size_of::<RateValue>() == 16);
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
        let key = ServiceKey::new(ip, 8080, proto::TCP);
        assert_eq!(key.port.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(key.port_host(), 8080);
        assert_eq!(key.ip(), ip);
        assert_eq!(key.to_string(), "198.19.0.10:8080/6");
        assert_eq!(ServiceKey::wildcard(ip).to_string(), "198.19.0.10 (ClusterSetIP marker)");
    }

    #[test]
    fn slots_cover_every_index_evenly() {
        let size = 7u32;
        let mut hits = [0u32; 7];
        for i in 0..7000u32 {
            let slot = maglev_slot(flow_hash(i.to_be(), 0x0a00_0001, 40000, 80, proto::TCP), size);
            hits[slot as usize] += 1;
        }
        for (slot, n) in hits.iter().enumerate() {
            assert!((700..1300).contains(n), "slot {slot} got {n} of 7000 flows");
        }
        assert_eq!(maglev_slot(12345, 0), 0);
    }

    #[test]
    fn sequential_source_ports_spread_evenly() {
        // Kernels hand out ephemeral ports in steps of 1 or 2 from one client.
        for step in [1u16, 2] {
            let mut hits = [0u32; 4];
            for i in 0..4000u16 {
                let sport = (32_768 + i * step).to_be();
                let hash =
                    flow_hash(ipv4_to_nbo(Ipv4Addr::new(198, 18, 0, 2)), 0x0a00_0001, sport, 80u16.to_be(), proto::TCP);
                hits[maglev_slot(hash, 4) as usize] += 1;
            }
            for (slot, n) in hits.iter().enumerate() {
                assert!((900..1100).contains(n), "step {step}: slot {slot} got {n} of 4000 flows");
            }
        }
    }

    #[test]
    fn cluster_names_round_trip_and_refuse_what_does_not_fit() {
        let name = ClusterName::new("us-east1.fleet").expect("fits");
        assert_eq!(name.as_str(), Some("us-east1.fleet"));
        assert_eq!(ClusterName::new("").expect("empty fits").as_str(), Some(""));
        let long = "x".repeat(limits::CLUSTER_NAME_MAX + 1);
        assert!(ClusterName::new(&long).is_none());
        assert!(ClusterName::new("a\0b").is_none());
    }

    #[test]
    fn a_token_bucket_gives_its_burst_then_its_rate() {
        let ms = 1_000_000;
        // Ten a second, three at once: an event costs 100 ms of credit.
        let mut b = RateValue::first(0, 10, 3);
        let spent = [(); 4].map(|()| b.spend(0, 10, 3));
        assert_eq!(spent, [true, true, false, false], "the first event plus two more of the burst");
        assert!(!b.spend(99 * ms, 10, 3), "not yet a whole event earned");
        assert!(b.spend(100 * ms, 10, 3), "one earned");
        assert!(!b.spend(100 * ms, 10, 3));
        // A long quiet spell earns the burst, not more.
        let after = 3_600_000 * ms;
        assert_eq!((0..5).filter(|_| b.spend(after, 10, 3)).count(), 3);
        // A clock that goes back (another CPU's later stamp) earns nothing.
        assert!(!b.spend(after - ms, 10, 3));
        // Rate 0 is no limit.
        assert!((0..100).all(|_| b.spend(after, 0, 1)));
    }

    #[test]
    fn timeouts_follow_the_state() {
        let c = DatapathConfig {
            tcp_syn_ns: 1,
            tcp_established_ns: 2,
            tcp_closing_ns: 3,
            udp_ns: 4,
            ..DatapathConfig::DEFAULT
        };
        assert_eq!(
            [CT_STATE_SYN, CT_STATE_ESTABLISHED, CT_STATE_CLOSING, CT_STATE_UDP].map(|s| c.timeout_ns(s)),
            [1, 2, 3, 4]
        );
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
    fn socket_hashes_of_consecutive_cookies_spread_and_use_both_halves() {
        // Socket cookies are a counter: consecutive values must spread.
        let mut hits = [0u32; 7];
        for cookie in 4096..11_096u64 {
            hits[maglev_slot(socket_hash(cookie), 7) as usize] += 1;
        }
        for (slot, n) in hits.iter().enumerate() {
            assert!((800..1200).contains(n), "slot {slot} got {n} of 7000 sockets");
        }
        assert_ne!(socket_hash(1), socket_hash(1 << 32), "the high half is mixed in");
        assert_ne!(socket_hash(7), flow_hash(7, 0, 0, 0, 0), "not the flow hash");
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

    #[test]
    fn states_follow_the_flags_of_both_directions() {
        use proto::{TCP, UDP};
        assert_eq!(ct_state(TCP, 0), CT_STATE_SYN);
        assert_eq!(ct_state(TCP, CT_F_SEEN_REPLY), CT_STATE_ESTABLISHED);
        assert_eq!(ct_state(TCP, CT_F_SEEN_REPLY | CT_F_FIN_FORWARD), CT_STATE_ESTABLISHED, "half closed");
        assert_eq!(ct_state(TCP, CT_F_SEEN_REPLY | CT_F_FIN_REPLY), CT_STATE_ESTABLISHED, "half closed");
        assert_eq!(ct_state(TCP, CT_F_FIN_FORWARD | CT_F_FIN_REPLY), CT_STATE_CLOSING);
        assert_eq!(ct_state(TCP, CT_F_RST_FORWARD), CT_STATE_CLOSING);
        assert_eq!(ct_state(TCP, CT_F_SEEN_REPLY | CT_F_RST_REPLY), CT_STATE_CLOSING);
        assert_eq!(ct_state(UDP, CT_F_RST_FORWARD), CT_STATE_UDP);
    }

    #[test]
    fn the_peer_key_is_the_rewritten_tuple_seen_from_the_other_end() {
        let forward =
            CtKey { saddr: 1, daddr: 2, sport: 3, dport: 4, proto: proto::TCP, dir: CT_DIR_FORWARD, pad: [0; 2] };
        let value = CtValue { nat_saddr: 1, nat_daddr: 9, nat_sport: 61_000, nat_dport: 8, ..CtValue::default() };
        let reply = forward.peer(&value);
        assert_eq!(
            reply,
            CtKey { saddr: 9, daddr: 1, sport: 8, dport: 61_000, proto: proto::TCP, dir: CT_DIR_REPLY, pad: [0; 2] }
        );
        let back = CtValue { nat_saddr: 2, nat_daddr: 1, nat_sport: 4, nat_dport: 3, ..CtValue::default() };
        assert_eq!(reply.peer(&back), forward);
    }

    #[test]
    fn translated_ports_stay_in_the_range_and_walk_all_of_it() {
        let c = DatapathConfig { nat_port_min: 61_000, nat_port_max: 61_009, ..DatapathConfig::DEFAULT };
        assert_eq!(c.nat_ports(), 10);
        let hash = nat_port_hash(1, 2, 3, 4, proto::TCP);
        let ports: std::collections::BTreeSet<u16> = (0..10).map(|a| c.nat_port(hash, a)).collect();
        assert_eq!(ports, (61_000..=61_009).collect());
        assert_eq!(c.nat_port(hash, 10), c.nat_port(hash, 0), "wraps");
        let full = DatapathConfig { nat_port_min: 0, nat_port_max: u16::MAX, ..DatapathConfig::DEFAULT };
        assert_eq!(full.nat_ports(), 65_536);
        assert_eq!(full.nat_port(u32::MAX, 0), u16::try_from(u32::MAX % 65_536).expect("fits"));
        assert_eq!(DatapathConfig::DEFAULT.nat_ports(), 31_744);
    }

    #[test]
    fn the_port_hash_is_not_the_slot_hash() {
        let (a, b) = (flow_hash(1, 2, 3, 4, 6), nat_port_hash(1, 2, 3, 4, 6));
        assert_ne!(a, b);
        assert_eq!(b, nat_port_hash(1, 2, 3, 4, 6), "deterministic");
    }
}
