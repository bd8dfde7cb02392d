//! Packet parsing: Ethernet, IPv4, the TCP or UDP ports, IPv4 fragments and
//! ICMP errors with the header they quote.
//!
//! Parsing never writes. It tells the caller what it found, including the
//! cases where the packet cannot be translated (truncated headers, other
//! protocols), so the caller can decide by destination whether that matters.
//!
//! The L3 specifics (addresses, the fragment field, where the L4 header
//! starts) are confined to [`l3`]; ICMP errors reuse the same L3 and L4 steps
//! on the quoted header, so a second address family adds an `l3` and an ICMP
//! type table, not a second parser.
use crate::pkt::Pkt;
use mcs_common::{icmp, proto};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

/// Length of the Ethernet header.
pub const ETH_LEN: usize = EthHdr::LEN;

/// Length of an IPv4 header without options.
pub const IP_MIN_LEN: usize = 20;
/// Offset of the header checksum within the IPv4 header.
pub const IP_CSUM_OFF: usize = 10;
/// Offset of the source address within the IPv4 header (the destination follows).
pub const IP_SADDR_OFF: usize = 12;
/// Offset of the TCP checksum within the TCP header.
pub const TCP_CSUM_OFF: usize = 16;
/// Offset of the UDP checksum within the UDP header.
pub const UDP_CSUM_OFF: usize = 6;
/// Offset of the checksum within the ICMP header.
pub const ICMP_CSUM_OFF: usize = 2;
/// Length of the ICMP header that precedes the quoted datagram.
pub const ICMP_HDR_LEN: usize = 8;

/// `Flow::tcp_flags` bits, as in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
/// SYN.
pub const TCP_SYN: u8 = 0x02;
/// RST.
pub const TCP_RST: u8 = 0x04;
/// ACK.
pub const TCP_ACK: u8 = 0x10;

/// The fragment field's MF bit.
const IP_MF: u16 = 0x2000;
/// The fragment field's offset bits.
const IP_OFFSET: u16 = 0x1fff;

/// An address and port pair of each end, as in the packet (NBO).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Tuple {
    /// The same flow seen from the other end.
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        Self { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport }
    }
}

/// A TCP or UDP packet over IPv4 whose ports could be read.
#[derive(Clone, Copy)]
pub struct Flow {
    /// Offset of the L3 header.
    pub l3_off: usize,
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
    /// TCP flags (`TCP_*` bits), 0 for UDP.
    pub tcp_flags: u8,
    /// The first fragment of a fragmented datagram (MF set, offset 0): its
    /// later fragments need this packet's ports.
    pub first_fragment: bool,
    /// The IPv4 identification, NBO.
    pub ip_id: u16,
    /// The IPv4 header checksum, as in the packet.
    pub ip_csum: u16,
}

impl Flow {
    /// Whether the packet has any of the TCP flags in `bits`.
    #[inline(always)]
    pub const fn has(&self, bits: u8) -> bool {
        self.tcp_flags & bits != 0
    }

    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub const fn is_syn(&self) -> bool {
        self.proto == proto::TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// Its addresses and ports.
    #[inline(always)]
    pub const fn tuple(&self) -> Tuple {
        Tuple { saddr: self.saddr, daddr: self.daddr, sport: self.sport, dport: self.dport }
    }
}

/// The offset of the checksum of an L4 header of `protocol` at `l4_off`.
#[inline(always)]
pub const fn l4_csum_off(protocol: u8, l4_off: usize) -> usize {
    if protocol == proto::TCP { l4_off + TCP_CSUM_OFF } else { l4_off + UDP_CSUM_OFF }
}

/// A later fragment of a datagram (non-zero offset): no L4 header.
#[derive(Clone, Copy)]
pub struct Fragment {
    /// Offset of the L3 header.
    pub l3_off: usize,
    /// Source address, NBO.
    pub saddr: u32,
    /// Destination address, NBO.
    pub daddr: u32,
    /// The IP protocol of the datagram.
    pub proto: u8,
    /// The IPv4 identification, NBO.
    pub ip_id: u16,
}

/// The TCP or UDP header an ICMP error quotes: the packet the error is about.
#[derive(Clone, Copy)]
pub struct Quoted {
    /// Offset of the quoted L3 header.
    pub l3_off: usize,
    /// Offset of the quoted L4 header.
    pub l4_off: usize,
    /// Its addresses and ports.
    pub tuple: Tuple,
    /// `proto::TCP` or `proto::UDP`.
    pub proto: u8,
    /// Whether the quote reaches the L4 checksum (an error need only quote 8
    /// bytes of L4, which holds the UDP checksum but not the TCP one).
    pub has_l4_csum: bool,
}

/// An ICMP error (destination unreachable, time exceeded, parameter
/// problem) quoting a TCP or UDP header.
#[derive(Clone, Copy)]
pub struct IcmpError {
    /// Offset of the outer L3 header.
    pub l3_off: usize,
    /// Offset of the ICMP header.
    pub icmp_off: usize,
    /// Outer source address, NBO.
    pub saddr: u32,
    /// Outer destination address, NBO.
    pub daddr: u32,
    /// The quoted header.
    pub quoted: Quoted,
}

/// What the parser found.
pub enum Packet {
    /// Not IPv4 (ARP, IPv6, VLAN-tagged, …), or too short to hold an IPv4
    /// header: nothing the datapath translates.
    Other,
    /// IPv4 that cannot be translated: a truncated or invalid header, or a
    /// protocol (or ICMP message) the datapath does not translate. Carries
    /// the destination so the caller can tell whether it was meant for a
    /// ClusterSetIP.
    Untranslatable {
        /// Destination address, NBO.
        daddr: u32,
        /// Why it cannot be translated.
        why: Untranslatable,
    },
    /// A TCP or UDP packet (a whole datagram or its first fragment).
    Flow(Flow),
    /// A later fragment of a datagram.
    Fragment(Fragment),
    /// An ICMP error about a TCP or UDP packet.
    IcmpError(IcmpError),
}

/// Why an IPv4 packet cannot be translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Untranslatable {
    /// The IPv4 or L4 header is cut short or has an invalid length, or an
    /// ICMP error quotes a header that cannot be read.
    Malformed,
    /// Neither TCP nor UDP nor an ICMP error (an echo, say), or a fragmented
    /// ICMP message.
    OtherProtocol,
}

/// Copies the `T` at `off` out of the packet ([`Pkt::read`]).
///
/// Headers of a paged skb may lie beyond the linear area: only then, and only
/// when the packet is long enough, are they pulled in (which costs a copy),
/// and that invalidates every earlier packet pointer: each header is copied
/// out before the next read.
#[inline(always)]
fn read<T: Copy, C: Pkt>(ctx: &C, off: usize) -> Option<T> {
    ctx.read::<T>(off)
}

/// The L3 facts the rest of the parser needs.
mod l3 {
    use super::{ETH_LEN, IP_MF, IP_OFFSET, Ipv4Hdr, Pkt, read};

    /// An IPv4 header, reduced.
    #[derive(Clone, Copy)]
    pub struct Header {
        /// Source address, NBO.
        pub saddr: u32,
        /// Destination address, NBO.
        pub daddr: u32,
        /// The protocol of what follows.
        pub proto: u8,
        /// Offset of what follows.
        pub l4_off: usize,
        /// MF set or a non-zero offset.
        pub fragmented: bool,
        /// A non-zero fragment offset: no L4 header here.
        pub later_fragment: bool,
        /// The identification, NBO.
        pub id: u16,
        /// The header checksum, as in the packet.
        pub csum: u16,
        /// The total length field, host order.
        pub tot_len: usize,
    }

    /// What reading the header at `off` gave.
    pub enum Read {
        /// Not an IPv4 header (or not all of one is there).
        NotIpv4,
        /// An IPv4 header with an invalid length.
        Invalid { daddr: u32 },
        /// A header.
        Ok(Header),
    }

    /// Reads the IPv4 header at `off`.
    #[inline(always)]
    pub fn read_header<C: Pkt>(ctx: &C, off: usize) -> Read {
        let Some(ip) = read::<Ipv4Hdr, _>(ctx, off) else { return Read::NotIpv4 };
        if ip.vihl >> 4 != 4 {
            return Read::NotIpv4;
        }
        let daddr = u32::from_ne_bytes(ip.dst_addr);
        let ihl = usize::from(ip.vihl & 0x0f);
        if ihl < 5 {
            return Read::Invalid { daddr };
        }
        let frag = u16::from_be_bytes(ip.frags);
        Read::Ok(Header {
            saddr: u32::from_ne_bytes(ip.src_addr),
            daddr,
            proto: ip.proto,
            l4_off: off + ihl * 4,
            fragmented: frag & (IP_MF | IP_OFFSET) != 0,
            later_fragment: frag & IP_OFFSET != 0,
            id: u16::from_ne_bytes(ip.id),
            csum: u16::from_ne_bytes(ip.check),
            tot_len: usize::from(u16::from_be_bytes(ip.tot_len)),
        })
    }

    /// Where the outer IPv4 packet `ip` ends: its total length, which must
    /// cover its header and lie within the skb (what follows is padding).
    /// `None` when it does not: the packet is malformed. A total length of 0
    /// is a GSO packet above 64 KiB (BIG TCP): it ends with the skb.
    #[inline(always)]
    pub fn packet_end<C: Pkt>(ctx: &C, ip: &Header) -> Option<usize> {
        let skb_len = ctx.len() as usize;
        if ip.tot_len == 0 {
            return (ctx.gso_size() != 0).then_some(skb_len);
        }
        let end = OUTER + ip.tot_len;
        (ip.l4_off <= end && end <= skb_len).then_some(end)
    }

    /// The offset of the outer L3 header: after Ethernet.
    pub const OUTER: usize = ETH_LEN;
}

/// The two ports of a TCP or UDP header at `l4_off`, and (TCP) its flags;
/// `None` when the header is cut short or invalid: a TCP header must lie
/// within the packet (`end`), a UDP length must hold its header and (but in
/// a first fragment, whose UDP length is the datagram's) fit the packet.
#[inline(always)]
fn ports<C: Pkt>(ctx: &C, protocol: u8, l4_off: usize, end: usize, fragmented: bool) -> Option<(u16, u16, u8)> {
    if protocol == proto::TCP {
        let tcp = read::<TcpHdr, _>(ctx, l4_off)?;
        if tcp.doff() < 5 || l4_off + usize::from(tcp.doff()) * 4 > end {
            return None;
        }
        let mut flags = 0;
        for (set, bit) in [(tcp.fin(), TCP_FIN), (tcp.syn(), TCP_SYN), (tcp.rst(), TCP_RST), (tcp.ack(), TCP_ACK)] {
            if set != 0 {
                flags |= bit;
            }
        }
        Some((u16::from_ne_bytes(tcp.source), u16::from_ne_bytes(tcp.dest), flags))
    } else {
        let udp = read::<UdpHdr, _>(ctx, l4_off)?;
        let udp_len = usize::from(u16::from_be_bytes(udp.len));
        if l4_off + UdpHdr::LEN > end || udp_len < UdpHdr::LEN || (!fragmented && l4_off + udp_len > end) {
            return None;
        }
        Some((u16::from_ne_bytes(udp.src), u16::from_ne_bytes(udp.dst), 0))
    }
}

/// The header an ICMP error at `icmp_off` quotes, when the quote (within
/// the packet, which ends at `end`) holds it and 8 bytes of L4 (RFC 792).
#[inline(always)]
fn quoted<C: Pkt>(ctx: &C, icmp_off: usize, end: usize) -> Option<Quoted> {
    let l3::Read::Ok(inner) = l3::read_header(ctx, icmp_off + ICMP_HDR_LEN) else { return None };
    // A quoted later fragment carries no ports.
    if inner.later_fragment || !matches!(inner.proto, proto::TCP | proto::UDP) {
        return None;
    }
    // The quote holds at least 8 bytes of L4: both ports (not the TCP flags
    // word necessarily, so the header is read as two ports).
    if inner.l4_off + 8 > end {
        return None;
    }
    let (sport, dport) = read::<[u16; 2], _>(ctx, inner.l4_off).map(|p| (p[0], p[1]))?;
    let csum_end = l4_csum_off(inner.proto, inner.l4_off) + 2;
    Some(Quoted {
        l3_off: icmp_off + ICMP_HDR_LEN,
        l4_off: inner.l4_off,
        tuple: Tuple { saddr: inner.saddr, daddr: inner.daddr, sport, dport },
        proto: inner.proto,
        has_l4_csum: end >= csum_end,
    })
}

/// Parses the packet in `ctx`.
#[inline(always)]
pub fn parse<C: Pkt>(ctx: &C) -> Packet {
    // Each header is copied out before the next read, which may pull data
    // and so invalidate every earlier packet pointer.
    let Some(eth) = read::<EthHdr, _>(ctx, 0) else { return Packet::Other };
    if eth.ether_type != EtherType::Ipv4 as u16 {
        return Packet::Other;
    }
    let ip = match l3::read_header(ctx, l3::OUTER) {
        l3::Read::NotIpv4 => return Packet::Other,
        l3::Read::Invalid { daddr } => return Packet::Untranslatable { daddr, why: Untranslatable::Malformed },
        l3::Read::Ok(ip) => ip,
    };
    let daddr = ip.daddr;
    let untranslatable = |why| Packet::Untranslatable { daddr, why };
    let Some(end) = l3::packet_end(ctx, &ip) else { return untranslatable(Untranslatable::Malformed) };
    match ip.proto {
        proto::TCP | proto::UDP if ip.later_fragment => {
            Packet::Fragment(Fragment { l3_off: l3::OUTER, saddr: ip.saddr, daddr, proto: ip.proto, ip_id: ip.id })
        }
        proto::TCP | proto::UDP => {
            let Some((sport, dport, tcp_flags)) = ports(ctx, ip.proto, ip.l4_off, end, ip.fragmented) else {
                return untranslatable(Untranslatable::Malformed);
            };
            Packet::Flow(Flow {
                l3_off: l3::OUTER,
                l4_off: ip.l4_off,
                saddr: ip.saddr,
                daddr,
                sport,
                dport,
                proto: ip.proto,
                tcp_flags,
                first_fragment: ip.fragmented,
                ip_id: ip.id,
                ip_csum: ip.csum,
            })
        }
        proto::ICMP if !ip.fragmented => {
            // The whole 8-byte header: a one-byte read at a variable offset
            // compiles to a bounds check the verifier cannot use.
            let Some(header) =
                read::<[u8; ICMP_HDR_LEN], _>(ctx, ip.l4_off).filter(|_| ip.l4_off + ICMP_HDR_LEN <= end)
            else {
                return untranslatable(Untranslatable::Malformed);
            };
            if !icmp::is_error(header[0]) {
                return untranslatable(Untranslatable::OtherProtocol);
            }
            let Some(quoted) = quoted(ctx, ip.l4_off, end) else {
                return untranslatable(Untranslatable::Malformed);
            };
            Packet::IcmpError(IcmpError { l3_off: l3::OUTER, icmp_off: ip.l4_off, saddr: ip.saddr, daddr, quoted })
        }
        _ => untranslatable(Untranslatable::OtherProtocol),
    }
}
