//! Packet parsing: Ethernet, IPv4, and the TCP or UDP ports.
//!
//! Parsing never writes. It tells the caller what it found, including the
//! cases where the packet cannot be translated (fragments, truncated headers),
//! so the caller can decide by destination whether that matters.
use aya_ebpf::programs::TcContext;
use mcs_common::proto;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

/// Length of the Ethernet header.
pub const ETH_LEN: usize = EthHdr::LEN;
/// The most header bytes the parser reads: Ethernet, IPv4 with options, TCP.
#[expect(clippy::cast_possible_truncation, reason = "a few dozen bytes")]
const MAX_HEADERS: u32 = (EthHdr::LEN + 60 + TcpHdr::LEN) as u32;

/// Offset of the IPv4 header checksum within the IPv4 header.
pub const IP_CSUM_OFF: usize = 10;
/// Offset of the source address within the IPv4 header.
pub const IP_SADDR_OFF: usize = 12;
/// Offset of the destination address within the IPv4 header.
pub const IP_DADDR_OFF: usize = 16;
/// Offset of the TCP checksum within the TCP header.
pub const TCP_CSUM_OFF: usize = 16;
/// Offset of the UDP checksum within the UDP header.
pub const UDP_CSUM_OFF: usize = 6;

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
/// SYN.
pub const TCP_SYN: u8 = 0x02;
/// RST.
pub const TCP_RST: u8 = 0x04;

/// A TCP or UDP packet over IPv4 whose ports could be read.
#[derive(Clone, Copy)]
pub struct Flow {
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Source address, NBO.
    pub saddr: u32,
    /// Destination address, NBO.
    pub daddr: u32,
    /// Source port, NBO.
    pub sport: u16,
    /// Destination port, NBO.
    pub dport: u16,
    /// `proto::TCP` or `proto::UDP`.
    pub proto: u8,
    /// TCP flags, 0 for UDP.
    pub tcp_flags: u8,
}

impl Flow {
    /// Offset of the L4 checksum.
    #[inline(always)]
    pub const fn csum_off(&self) -> usize {
        if self.proto == proto::TCP { self.l4_off + TCP_CSUM_OFF } else { self.l4_off + UDP_CSUM_OFF }
    }
}

/// What the parser found.
pub enum Packet {
    /// Not IPv4 (ARP, IPv6, VLAN-tagged, …), or too short to hold an IPv4
    /// header: nothing the datapath translates.
    Other,
    /// IPv4 that cannot be translated: a fragment, a truncated or invalid L4
    /// header, or a protocol other than TCP and UDP. Carries the destination
    /// so the caller can tell whether it was meant for a ClusterSetIP.
    Untranslatable {
        /// Destination address, NBO.
        daddr: u32,
        /// Why it cannot be translated.
        why: Untranslatable,
    },
    /// A TCP or UDP packet.
    Flow(Flow),
}

/// Why an IPv4 packet cannot be translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Untranslatable {
    /// A fragment (MF set or a non-zero offset).
    Fragment,
    /// The IPv4 or L4 header is cut short or has an invalid length.
    Malformed,
    /// Neither TCP nor UDP.
    OtherProtocol,
}

#[inline(always)]
fn bounds(ctx: &TcContext, len: usize) -> Option<usize> {
    let data = ctx.data();
    if data + len > ctx.data_end() { None } else { Some(data) }
}

/// Parses the packet in `ctx`.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Packet {
    // Headers of a paged skb may not all be in the linear area; pull them in.
    let want = core::cmp::min(MAX_HEADERS, ctx.len());
    if ctx.data() + want as usize > ctx.data_end() {
        let _ = ctx.pull_data(want);
    }
    let Some(data) = bounds(ctx, EthHdr::LEN + Ipv4Hdr::LEN) else {
        return Packet::Other;
    };
    // SAFETY: `bounds` checked that the Ethernet and IPv4 headers are in the
    // packet; both types are `repr(C, packed)` byte arrays, read unaligned.
    let (eth, ip) = unsafe {
        ((data as *const EthHdr).read_unaligned(), ((data + EthHdr::LEN) as *const Ipv4Hdr).read_unaligned())
    };
    if eth.ether_type != EtherType::Ipv4 as u16 || ip.vihl >> 4 != 4 {
        return Packet::Other;
    }
    let (vihl, frag, ip_proto) = (ip.vihl, u16::from_be_bytes(ip.frags), ip.proto);
    let (saddr, daddr) = (u32::from_ne_bytes(ip.src_addr), u32::from_ne_bytes(ip.dst_addr));
    let ihl = usize::from(vihl & 0x0f);
    if ihl < 5 {
        return Packet::Untranslatable { daddr, why: Untranslatable::Malformed };
    }
    // MF flag or a fragment offset: not the whole datagram.
    if frag & 0x3fff != 0 {
        return Packet::Untranslatable { daddr, why: Untranslatable::Fragment };
    }
    if ip_proto != proto::TCP && ip_proto != proto::UDP {
        return Packet::Untranslatable { daddr, why: Untranslatable::OtherProtocol };
    }
    let l4_off = ETH_LEN + ihl * 4;
    let l4_len = if ip_proto == proto::TCP { TcpHdr::LEN } else { UdpHdr::LEN };
    let Some(data) = bounds(ctx, l4_off + l4_len) else {
        return Packet::Untranslatable { daddr, why: Untranslatable::Malformed };
    };
    // SAFETY: `bounds` checked that the L4 header (l4_len bytes at l4_off) is in the packet.
    let (sport, dport, tcp_flags, tcp_doff) = unsafe {
        let l4 = (data as *const u8).add(l4_off);
        (
            l4.cast::<u16>().read_unaligned(),
            l4.add(2).cast::<u16>().read_unaligned(),
            if ip_proto == proto::TCP { *l4.add(13) } else { 0 },
            if ip_proto == proto::TCP { *l4.add(12) >> 4 } else { 5 },
        )
    };
    if tcp_doff < 5 {
        return Packet::Untranslatable { daddr, why: Untranslatable::Malformed };
    }
    Packet::Flow(Flow { l4_off, saddr, daddr, sport, dport, proto: ip_proto, tcp_flags })
}
