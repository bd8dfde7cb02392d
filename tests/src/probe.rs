//! The tests' own tc program (`tests/ebpf-probe`), standing for another program on the same
//! interface as ours, as a CNI's would be: it counts the packets it sees by destination and
//! always lets the chain go on.
//!
//! [`Probe::attach`] loads a private copy (its own map, nothing pinned) and attaches it with
//! TCX after every program already on the interface; dropping the [`Probe`] detaches it.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{
    Ebpf,
    maps::HashMap,
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};

use crate::netns::NetNs;

/// The probe's object, built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcs-tests-probe"));

/// The program's name in the object.
const PROGRAM: &str = "mcs_probe";
/// Its map of counters.
const MAP: &str = "PROBE_SEEN";

/// The probe's map key (`tests/ebpf-probe/src/main.rs`): destination address and port in
/// network order, the IP protocol, one zero byte; 8 bytes, no hidden padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenKey {
    daddr: u32,
    dport: u16,
    proto: u8,
    pad: u8,
}

// SAFETY: `repr(C)` of plain integers laid out without padding; every bit pattern is valid.
unsafe impl aya::Pod for SeenKey {}

/// Packets the probe saw to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    /// Destination address and port.
    pub destination: SocketAddrV4,
    /// `"TCP"` or `"UDP"`.
    pub protocol: &'static str,
    /// How many packets.
    pub packets: u64,
}

/// One attached probe; dropping it detaches it.
pub struct Probe {
    ebpf: Ebpf,
    interface: String,
    direction: &'static str,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("interface", &self.interface)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// Loads a fresh probe and attaches it (TCX, after every program already there) to the
    /// ingress of `interface`, the direction of packets coming from the pod on a pod's
    /// host-side veth, in `ns`.
    ///
    /// # Panics
    /// When the object is empty (built with `AYA_BUILD_SKIP=1`), or it cannot be loaded or
    /// attached (the message says which and why).
    #[must_use]
    pub fn attach_ingress(ns: &NetNs, interface: &str) -> Probe {
        assert!(
            !OBJECT.is_empty(),
            "mcs-tests was built with AYA_BUILD_SKIP=1 and embeds no probe object; build it with bpf-linker"
        );
        let ebpf = ns.enter(|| {
            let mut ebpf = Ebpf::load(OBJECT).unwrap_or_else(|e| panic!("loading the probe: {e}"));
            let program: &mut SchedClassifier = ebpf
                .program_mut(PROGRAM)
                .unwrap_or_else(|| panic!("the probe object has no program {PROGRAM}"))
                .try_into()
                .unwrap_or_else(|e| panic!("{PROGRAM} is not a classifier: {e}"));
            program.load().unwrap_or_else(|e| panic!("loading {PROGRAM} into the kernel: {e}"));
            program
                .attach_with_options(interface, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::last()))
                .unwrap_or_else(|e| panic!("attaching the probe to {interface} ingress in {}: {e}", ns.name()));
            ebpf
        });
        Probe { ebpf, interface: interface.to_owned(), direction: "ingress" }
    }

    fn map(&self) -> HashMap<&aya::maps::MapData, SeenKey, u64> {
        let map = self.ebpf.map(MAP).unwrap_or_else(|| panic!("the probe object has no map {MAP}"));
        HashMap::try_from(map).unwrap_or_else(|e| panic!("{MAP}: {e}"))
    }

    /// Every destination seen so far, sorted.
    ///
    /// # Panics
    /// When the map cannot be read.
    #[must_use]
    pub fn seen(&self) -> Vec<Seen> {
        let mut seen: Vec<Seen> = self
            .map()
            .iter()
            .map(|entry| {
                let (key, packets) = entry.unwrap_or_else(|e| panic!("reading {MAP}: {e}"));
                Seen {
                    destination: SocketAddrV4::new(Ipv4Addr::from(u32::from_be(key.daddr)), u16::from_be(key.dport)),
                    protocol: if key.proto == 6 { "TCP" } else { "UDP" },
                    packets,
                }
            })
            .collect();
        seen.sort();
        seen
    }

    /// Forgets everything seen so far.
    ///
    /// # Panics
    /// When the map cannot be written.
    pub fn clear(&mut self) {
        let map = self.ebpf.map_mut(MAP).unwrap_or_else(|| panic!("the probe object has no map {MAP}"));
        let mut map: HashMap<&mut aya::maps::MapData, SeenKey, u64> =
            HashMap::try_from(map).unwrap_or_else(|e| panic!("{MAP}: {e}"));
        let keys: Vec<SeenKey> = map.keys().take(100_000).filter_map(Result::ok).collect();
        for key in keys {
            map.remove(&key).unwrap_or_else(|e| panic!("clearing {MAP}: {e}"));
        }
    }

    /// The interface and direction it is attached to, for messages.
    #[must_use]
    pub fn place(&self) -> String {
        format!("{} {}", self.interface, self.direction)
    }
}
