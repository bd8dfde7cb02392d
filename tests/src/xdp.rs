//! `XDP_PASS` on the far ends of veths, for tests whose frames leave an
//! interface by `XDP_TX` or `XDP_REDIRECT`.
//!
//! A veth hands such a frame to its peer's receive queue only when the peer
//! runs NAPI: when it has an XDP program of its own (or GRO on, which needs
//! `ethtool`). A physical NIC has no such condition; in the tests the far end
//! stands for the wire and the next host, so it gets the no-op program
//! (`mcs_xdp_noop`) and passes every frame to its stack unchanged.
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use mcs_agent::ebpf::{self, LoadOptions};
use mcs_common::program_names;

use crate::netns::NetNs;

/// `mcs_xdp_noop` attached to some interfaces; dropping it detaches them.
pub struct XdpPass {
    /// Owns the program and its links.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for XdpPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XdpPass")
    }
}

impl XdpPass {
    /// Attaches the no-op program natively to each `(namespace, interface)`.
    ///
    /// # Panics
    /// When the object cannot be loaded or an attachment fails.
    #[must_use]
    pub fn attach(ends: &[(&NetNs, &str)]) -> XdpPass {
        let mut ebpf =
            ebpf::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("load the embedded object: {e:#}"));
        let program: &mut Xdp = ebpf
            .program_mut(program_names::XDP_NOOP)
            .expect("the object has mcs_xdp_noop")
            .try_into()
            .expect("mcs_xdp_noop is an XDP program");
        for (ns, interface) in ends {
            ns.enter(|| program.attach(interface, XdpMode::Driver))
                .unwrap_or_else(|e| panic!("attach mcs_xdp_noop to {interface} in {}: {e}", ns.name()));
        }
        XdpPass { _ebpf: ebpf }
    }
}
