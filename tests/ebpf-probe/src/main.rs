//! `mcs_probe`: a tc program that stands for another program on the same
//! interface as ours (a CNI's policy program, say). It counts every IPv4 TCP
//! or UDP packet it sees by destination address, destination port and
//! protocol in the map `PROBE_SEEN`, and always lets the chain go on
//! (`TCX_NEXT`), so it changes nothing.
//!
//! The key is mirrored by `mcs_tests::probe::SeenKey`: `daddr` (4 bytes,
//! network order), `dport` (2 bytes, network order), `proto` (1 byte), one
//! byte of padding that is always 0; 8 bytes in all.
#![no_std]
#![no_main]

use aya_ebpf::{btf_maps::HashMap, macros::btf_map, macros::classifier, programs::TcContext};

/// `TCX_NEXT` (`TC_ACT_UNSPEC`): let the next program, or the stack, decide.
const NEXT: i32 = -1;
/// Ethernet header length; the `EtherType` is its last two bytes.
const ETH_LEN: usize = 14;
/// `ETH_P_IP`, as it reads from the packet.
const ETH_P_IP: u16 = 0x0800;
/// IP protocol numbers counted.
const TCP: u8 = 6;
const UDP: u8 = 17;

/// What one counter is keyed by.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SeenKey {
    /// Destination address, network order.
    pub daddr: u32,
    /// Destination port, network order.
    pub dport: u16,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// Always 0.
    pub pad: u8,
}

/// Packets seen, by destination.
#[btf_map]
static PROBE_SEEN: HashMap<SeenKey, u64, 4096, 0> = HashMap::new();

/// Counts the packet's destination, when it is TCP or UDP over IPv4.
#[classifier]
#[expect(clippy::needless_pass_by_value, reason = "the classifier macro fixes the signature")]
pub fn mcs_probe(ctx: TcContext) -> i32 {
    if let Some(key) = destination(&ctx) {
        match PROBE_SEEN.get_ptr_mut(key) {
            // SAFETY: the pointer is to a live map value; a lost increment under a
            // race between CPUs only makes a count smaller, never wrong in kind.
            Some(count) => unsafe { *count += 1 },
            None => {
                let _ = PROBE_SEEN.insert(key, 1, 0);
            }
        }
    }
    NEXT
}

/// The destination of a TCP or UDP packet over IPv4 that is not a later fragment.
#[inline]
fn destination(ctx: &TcContext) -> Option<SeenKey> {
    let ether_type = u16::from_be(ctx.load::<u16>(ETH_LEN - 2).ok()?);
    if ether_type != ETH_P_IP {
        return None;
    }
    let version_ihl = ctx.load::<u8>(ETH_LEN).ok()?;
    if version_ihl >> 4 != 4 {
        return None;
    }
    let frag = u16::from_be(ctx.load::<u16>(ETH_LEN + 6).ok()?);
    let proto = ctx.load::<u8>(ETH_LEN + 9).ok()?;
    let daddr = ctx.load::<u32>(ETH_LEN + 16).ok()?;
    if frag & 0x1fff != 0 || (proto != TCP && proto != UDP) {
        return None;
    }
    let l4 = ETH_LEN + usize::from(version_ihl & 0x0f) * 4;
    let dport = ctx.load::<u16>(l4 + 2).ok()?;
    Some(SeenKey { daddr, dport, proto, pad: 0 })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
