//! Datapath events: what the programs tell the agent about single packets
//! (a drop with its reason and tuple, a refused connection, a reset of a
//! flow whose backend is gone and, when asked, each new translation).
//!
//! The programs write [`Event`]s into the ring buffer [`EVENTS_MAP`] only
//! while the bit of their kind is set in [`EVENT_FLAGS_MAP`], which the
//! programs read at each such site (never on the path of a translated packet
//! of an established flow), so the agent switches events on and off at run
//! time without reloading anything. Both maps belong to the loaded object and
//! are not pinned: the agent is their only reader, and it hands the events
//! on to its log and to `mcs-agent monitor`.

/// Ring buffer of [`Event`]s.
pub const EVENTS_MAP: &str = "MCS_EVENTS";
/// Array of one `u32` (host order) of `EVENTS_*` bits: which events the
/// programs write.
pub const EVENT_FLAGS_MAP: &str = "MCS_EVENT_FLAGS";
/// Bytes of the ring buffer (a power of two, a multiple of the page size):
/// 5,461 events of 48 bytes and the kernel's 8-byte header.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Drops, refusals and resets.
pub const EVENTS_DROPS: u32 = 1;
/// Each new translated flow (a debug-level event: one per connection).
pub const EVENTS_TRANSLATIONS: u32 = 1 << 1;

/// [`Event::kind`]: the packet was dropped ([`Event::reason`] says why).
pub const EVENT_DROP: u8 = 1;
/// [`Event::kind`]: a new connection to a service port without a usable
/// backend was refused (answered with a TCP RST or an ICMP port unreachable).
pub const EVENT_REFUSED: u8 = 2;
/// [`Event::kind`]: a packet of a TCP flow whose backend is gone (after its
/// removal grace) was answered with an RST.
pub const EVENT_RESET: u8 = 3;
/// [`Event::kind`]: a new flow was translated to a backend.
pub const EVENT_TRANSLATED: u8 = 4;

/// [`Event::direction`]: ingress of a pod's interface (from the pod).
pub const EVENT_FROM_POD: u8 = 0;
/// [`Event::direction`]: egress of a pod's interface (to the pod).
pub const EVENT_TO_POD: u8 = 1;
/// [`Event::direction`]: the XDP gateway, on an uplink (`--xdp-interfaces`).
pub const EVENT_GATEWAY: u8 = 2;

/// One datapath event, as the programs write it into [`EVENTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Event {
    /// `EVENT_*`.
    pub kind: u8,
    /// The [`crate::DropReason`] number for drops, refusals and resets; 0 for translations.
    pub reason: u8,
    /// IP protocol number.
    pub proto: u8,
    /// `EVENT_FROM_POD`, `EVENT_TO_POD` or `EVENT_GATEWAY`.
    pub direction: u8,
    /// The interface the packet was seen on. Host.
    pub ifindex: u32,
    /// Source address as the packet had it. NBO.
    pub saddr: u32,
    /// Destination address as the packet had it. NBO.
    pub daddr: u32,
    /// Source port; 0 when the packet has none (ICMP, a later fragment). NBO.
    pub sport: u16,
    /// Destination port; 0 when the packet has none. NBO.
    pub dport: u16,
    /// The backend's address, for translations; 0 otherwise. NBO.
    pub backend_addr: u32,
    /// The backend's port, for translations; 0 otherwise. NBO.
    pub backend_port: u16,
    /// Zero.
    pub pad: u16,
    /// The service port's id when it is known, else 0. Host.
    pub service_id: u32,
    /// The backend's id, for translations; 0 otherwise. Host.
    pub backend_id: u32,
    /// Zero.
    pub pad2: u32,
    /// `CLOCK_MONOTONIC` at the tick (`bpf_ktime_get_coarse_ns`), ns. Host.
    pub time_ns: u64,
}

const _: () = assert!(size_of::<Event>() == 48);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, integers only, padding spelled out as fields:
// any bit pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for Event {}
