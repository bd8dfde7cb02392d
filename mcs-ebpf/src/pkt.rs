//! Packet access for both program types: the tc programs' `__sk_buff` and
//! the XDP gateway's `xdp_md`.
//!
//! Parsing, rewriting, ICMP translation and fail-fast answers are written
//! once, against [`Pkt`]; the two contexts differ only in how bytes and
//! checksums are written and how a packet changes size:
//! - tc writes through the kernel helpers (`bpf_skb_store_bytes`,
//!   `bpf_l3_csum_replace`, `bpf_l4_csum_replace`), which keep the skb's
//!   checksum state (`CHECKSUM_PARTIAL`, `CHECKSUM_COMPLETE`) right;
//! - XDP has no skb and no checksum helpers: bytes are written directly
//!   (every access bounds-checked against `data_end`) and checksum fields
//!   are updated here by hand (RFC 1624, [`crate::csum::Diff`]), a zero UDP
//!   checksum left zero as the helper's `BPF_F_MARK_MANGLED_0` does.
use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT,
        bpf_adj_room_mode::{BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_NET},
        xdp_action,
    },
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::{TcContext, XdpContext},
};

use crate::csum::Diff;

/// A packet access or change the kernel refused (or that fell outside the packet).
pub struct Refused;

/// What the datapath needs of a program's context.
pub trait Pkt {
    /// The verdict that drops the packet.
    const DROP: i32;

    /// Length of the whole packet (tc: the skb's, paged data included).
    fn len(&self) -> u32;
    /// The skb's GSO segment size, 0 when not a GSO packet (always for XDP).
    fn gso_size(&self) -> u32;
    /// The interface the program runs on.
    fn ifindex(&self) -> u32;
    /// Copies the `T` at `off` out of the packet.
    fn load<T: Copy>(&self, off: usize) -> Result<T, Refused>;
    /// Copies the `T` at `off` out of the packet by direct access (tc:
    /// pulling non-linear data in when it must), for the parser.
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
    /// Writes `v` at `off`; `flags` are `bpf_skb_store_bytes`'s (ignored by XDP).
    fn store<T>(&self, off: usize, v: &T, flags: u64) -> Result<(), Refused>;
    /// Applies `diff` to the IPv4 header checksum at `off`.
    fn l3_csum_update(&self, off: usize, diff: Diff) -> Result<(), Refused>;
    /// Applies `diff` to the TCP or UDP checksum at `off`: a change of the
    /// pseudo-header's addresses when `pseudo`; a UDP checksum (`udp`) of
    /// zero stays zero, and one that would become zero is written `0xffff`.
    fn l4_csum_update(&self, off: usize, diff: Diff, pseudo: bool, udp: bool) -> Result<(), Refused>;
    /// Inserts `bytes` bytes after the Ethernet header (tc) or before the
    /// frame (XDP): either way the old L3 header then starts `bytes` later,
    /// and the caller writes the first `ETH_LEN + bytes` bytes anew.
    fn insert_front(&self, bytes: usize) -> Result<(), Refused>;
    /// Removes `bytes` of IPv4 options (tc keeps the skb's header offsets
    /// right); XDP has no offsets to keep, and its callers rewrite the
    /// headers and cut the packet to size anyway.
    fn strip_ip_options(&self, bytes: usize) -> Result<(), Refused>;
    /// Makes the packet `len` bytes long, cutting or growing its tail.
    fn resize(&self, len: usize) -> Result<(), Refused>;
    /// Sends the packet back out of the interface it arrived on (its
    /// Ethernet addresses already swapped): tc `bpf_redirect`, XDP `XDP_TX`.
    fn send_back(&self) -> i32;
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "offsets and lengths of a packet's headers: well below 2^31"
)]
const fn as_i32(n: usize) -> i32 {
    n as i32
}

impl Pkt for TcContext {
    const DROP: i32 = TC_ACT_SHOT;

    #[inline(always)]
    fn len(&self) -> u32 {
        Self::len(self)
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: the program's own `__sk_buff`, valid while it runs.
        unsafe { (*self.skb.skb).gso_size }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, Refused> {
        Self::load(self, off).map_err(|_| Refused)
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let len = off + size_of::<T>();
        if Self::data(self) + len > Self::data_end(self) {
            #[expect(clippy::cast_possible_truncation, reason = "off is a header offset, below 200")]
            let want = len as u32;
            if Self::len(self) < want || self.pull_data(want).is_err() {
                return None;
            }
        }
        let ptr = Self::data(self) + off;
        if ptr + size_of::<T>() > Self::data_end(self) {
            return None;
        }
        // SAFETY: the whole `T` is in the packet (checked on this pointer);
        // the header types are `repr(C, packed)` byte arrays, read unaligned.
        Some(unsafe { (ptr as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn store<T>(&self, off: usize, v: &T, flags: u64) -> Result<(), Refused> {
        Self::store(self, off, v, flags).map_err(|_| Refused)
    }

    #[inline(always)]
    fn l3_csum_update(&self, off: usize, diff: Diff) -> Result<(), Refused> {
        self.l3_csum_replace(off, 0, u64::from(diff.0), 0).map_err(|_| Refused)
    }

    #[inline(always)]
    fn l4_csum_update(&self, off: usize, diff: Diff, pseudo: bool, udp: bool) -> Result<(), Refused> {
        let mut flags = if udp { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
        if pseudo {
            flags |= u64::from(BPF_F_PSEUDO_HDR);
        }
        self.l4_csum_replace(off, 0, u64::from(diff.0), flags).map_err(|_| Refused)
    }

    #[inline(always)]
    fn insert_front(&self, bytes: usize) -> Result<(), Refused> {
        self.adjust_room(as_i32(bytes), BPF_ADJ_ROOM_MAC, 0).map_err(|_| Refused)
    }

    #[inline(always)]
    fn strip_ip_options(&self, bytes: usize) -> Result<(), Refused> {
        self.adjust_room(-as_i32(bytes), BPF_ADJ_ROOM_NET, 0).map_err(|_| Refused)
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), Refused> {
        #[expect(clippy::cast_possible_truncation, reason = "a few dozen bytes")]
        let len = len as u32;
        // SAFETY: the context pointer is the program's own `__sk_buff`.
        let rc = unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) };
        if rc == 0 { Ok(()) } else { Err(Refused) }
    }

    #[inline(always)]
    fn send_back(&self) -> i32 {
        // SAFETY: the helper has no preconditions.
        let verdict = unsafe { bpf_redirect(self.ifindex(), 0) };
        #[expect(clippy::cast_possible_truncation, reason = "the helper returns a tc verdict")]
        let verdict = verdict as i32;
        verdict
    }
}

/// `XDP_PASS`, `XDP_DROP`, `XDP_TX` as the program returns them.
#[expect(clippy::cast_possible_wrap, reason = "XDP verdicts are small")]
pub const XDP_PASS: i32 = xdp_action::XDP_PASS as i32;
#[expect(clippy::cast_possible_wrap, reason = "XDP verdicts are small")]
const XDP_DROP: i32 = xdp_action::XDP_DROP as i32;
/// `XDP_TX`.
#[expect(clippy::cast_possible_wrap, reason = "XDP verdicts are small")]
pub const XDP_TX: i32 = xdp_action::XDP_TX as i32;

/// The largest offset an XDP access may have (a 4 KiB page holds the frame).
const XDP_MAX_OFF: usize = 4096;

/// The address of a `T` at `off` in an XDP frame, when all of it is there.
///
/// The pointer goes through `black_box` before the bounds check: otherwise
/// LLVM may compute `data + off` a second time for the access, a pointer
/// the verifier has not seen checked (a new id), and refuse the program.
/// The checked register is then the one the access uses.
///
/// Offsets are bounded first: one read back from another function's stack
/// (a header offset in a struct passed to a BPF subprogram) has lost its
/// range, and the verifier refuses packet arithmetic with an unbounded value.
#[inline(always)]
fn xdp_ptr<T>(ctx: &XdpContext, off: usize) -> Result<usize, Refused> {
    // Opaque, so LLVM cannot fold the bound into the pointer arithmetic below.
    let off = core::hint::black_box(off);
    if off > XDP_MAX_OFF {
        return Err(Refused);
    }
    let ptr = core::hint::black_box(XdpContext::data(ctx) + off);
    if ptr + size_of::<T>() > XdpContext::data_end(ctx) { Err(Refused) } else { Ok(ptr) }
}

impl Pkt for XdpContext {
    const DROP: i32 = XDP_DROP;

    #[inline(always)]
    fn len(&self) -> u32 {
        // The helper, not `data_end - data`: LLVM may rearrange that
        // difference into arithmetic on `data_end`, which the verifier refuses.
        // SAFETY: the program's own `xdp_md`.
        let len = unsafe { bpf_xdp_get_buff_len(self.ctx) };
        #[expect(clippy::cast_possible_truncation, reason = "a frame is far below 4 GiB")]
        let len = len as u32;
        len
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the program's own `xdp_md`, valid while it runs.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, Refused> {
        let ptr = xdp_ptr::<T>(self, off)?;
        // SAFETY: the whole `T` lies within the frame (checked on this very
        // pointer, so the verifier ties the read to the check).
        Ok(unsafe { (ptr as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        self.load(off).ok()
    }

    #[inline(always)]
    fn store<T>(&self, off: usize, v: &T, _flags: u64) -> Result<(), Refused> {
        let ptr = xdp_ptr::<T>(self, off)?;
        // SAFETY: as in `load`; `v` is a plain value copied bytewise.
        unsafe { core::ptr::copy_nonoverlapping((&raw const *v).cast::<u8>(), ptr as *mut u8, size_of::<T>()) };
        Ok(())
    }

    #[inline(always)]
    fn l3_csum_update(&self, off: usize, diff: Diff) -> Result<(), Refused> {
        let check: u16 = self.load(off)?;
        self.store(off, &diff.apply(check), 0)
    }

    #[inline(always)]
    fn l4_csum_update(&self, off: usize, diff: Diff, _pseudo: bool, udp: bool) -> Result<(), Refused> {
        let check: u16 = self.load(off)?;
        // A zero UDP checksum is no checksum.
        if udp && check == 0 {
            return Ok(());
        }
        let mut new = diff.apply(check);
        if udp && new == 0 {
            new = 0xffff;
        }
        self.store(off, &new, 0)
    }

    #[inline(always)]
    fn insert_front(&self, bytes: usize) -> Result<(), Refused> {
        // SAFETY: the program's own `xdp_md`.
        let rc = unsafe { bpf_xdp_adjust_head(self.ctx, -as_i32(bytes)) };
        if rc == 0 { Ok(()) } else { Err(Refused) }
    }

    #[inline(always)]
    fn strip_ip_options(&self, _bytes: usize) -> Result<(), Refused> {
        Ok(())
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), Refused> {
        #[expect(clippy::cast_possible_wrap, reason = "a frame is far below 2 GiB")]
        let delta = as_i32(len) - Pkt::len(self) as i32;
        // SAFETY: the program's own `xdp_md`.
        let rc = unsafe { bpf_xdp_adjust_tail(self.ctx, delta) };
        if rc == 0 { Ok(()) } else { Err(Refused) }
    }

    #[inline(always)]
    fn send_back(&self) -> i32 {
        XDP_TX
    }
}
