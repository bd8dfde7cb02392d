//! Crafting and checking packets for `test_run` tests.
//!
//! Frames are built, and checked, with etherparse: checksums come from its
//! own implementation (over the whole header and pseudo-header), independent
//! of the incremental updates the datapath makes, so a wrong update cannot
//! hide behind a shared mistake. Deliberately malformed frames are cut or
//! patched by hand from a well-formed one.
use std::net::Ipv4Addr;

use etherparse::{
    Icmpv4Header, Icmpv4Slice, Icmpv4Type, IpFragOffset, IpNumber, Ipv4Header, Ipv4HeaderSlice, Ipv4Options, TcpHeader,
    TcpHeaderSlice, UdpHeader, UdpHeaderSlice,
};

/// Length of the Ethernet header.
pub const ETH_LEN: usize = 14;
/// TCP SYN flag.
pub const SYN: u8 = 0x02;
/// TCP ACK flag.
pub const ACK: u8 = 0x10;
/// TCP FIN flag.
pub const FIN: u8 = 0x01;
/// TCP RST flag.
pub const RST: u8 = 0x04;
/// IP protocol number of ICMP.
pub const ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const TCP: u8 = 6;
/// IP protocol number of UDP.
pub const UDP: u8 = 17;

/// The MAC addresses of every built frame: to the node's side of the pod's
/// interface, from the pod.
pub const NODE_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 1];
/// The pod's MAC.
pub const POD_MAC: [u8; 6] = [0x02, 0xfd, 0, 0, 0, 2];

/// A packet to build: Ethernet, IPv4 (optionally with options), then TCP, UDP or raw payload.
#[derive(Clone, Debug)]
pub struct PacketSpec {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (TCP/UDP).
    pub sport: u16,
    /// Destination port (TCP/UDP).
    pub dport: u16,
    /// TCP flags.
    pub tcp_flags: u8,
    /// Payload after the L4 header.
    pub payload: Vec<u8>,
    /// IPv4 option bytes (a multiple of 4).
    pub ip_options: Vec<u8>,
    /// The IPv4 fragment field (flags and offset).
    pub frag: u16,
    /// The IPv4 identification.
    pub ip_id: u16,
    /// Leave the UDP checksum at zero (no checksum).
    pub udp_zero_checksum: bool,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgement number.
    pub ack: u32,
}

impl PacketSpec {
    /// A TCP segment with `flags`.
    #[must_use]
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self {
            src: src.0,
            dst: dst.0,
            proto: TCP,
            sport: src.1,
            dport: dst.1,
            tcp_flags: flags,
            payload: b"hello".to_vec(),
            ip_options: Vec::new(),
            frag: 0x4000, // DF
            ip_id: 0x1234,
            udp_zero_checksum: false,
            seq: 1000,
            ack: 0,
        }
    }

    /// A UDP datagram.
    #[must_use]
    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self { proto: UDP, tcp_flags: 0, ..Self::tcp(src, dst, 0) }
    }

    /// An ICMP echo request.
    #[must_use]
    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self { proto: ICMP, payload: vec![8, 0, 0xf7, 0xfd, 0, 1, 0, 1], ..Self::tcp((src, 0), (dst, 0), 0) }
    }

    /// The same packet with `payload`.
    #[must_use]
    pub fn with_payload(self, payload: Vec<u8>) -> Self {
        Self { payload, ..self }
    }

    /// The L4 segment: header (checksum included) and payload.
    fn segment(&self) -> Vec<u8> {
        let (src, dst) = (self.src.octets(), self.dst.octets());
        let mut l4 = Vec::new();
        match self.proto {
            TCP => {
                let mut h = TcpHeader::new(self.sport, self.dport, self.seq, 64240);
                h.acknowledgment_number = self.ack;
                h.fin = self.tcp_flags & FIN != 0;
                h.syn = self.tcp_flags & SYN != 0;
                h.rst = self.tcp_flags & RST != 0;
                h.ack = self.tcp_flags & ACK != 0;
                h.checksum = h.calc_checksum_ipv4_raw(src, dst, &self.payload).expect("segment fits");
                h.write(&mut l4).expect("write to a Vec");
            }
            UDP => {
                let mut h = UdpHeader {
                    source_port: self.sport,
                    destination_port: self.dport,
                    length: u16::try_from(UdpHeader::LEN + self.payload.len()).expect("datagram fits"),
                    checksum: 0,
                };
                if !self.udp_zero_checksum {
                    h.checksum = h.calc_checksum_ipv4_raw(src, dst, &self.payload).expect("datagram fits");
                }
                h.write(&mut l4).expect("write to a Vec");
            }
            _ => {}
        }
        l4.extend_from_slice(&self.payload);
        l4
    }

    /// The IPv4 header for `payload_len` bytes of payload, with `frag` as
    /// its fragment field.
    fn ip_header(&self, payload_len: usize, frag: u16) -> Ipv4Header {
        assert_eq!(self.ip_options.len() % 4, 0, "IPv4 options are 32-bit words");
        let options = Ipv4Options::try_from(self.ip_options.as_slice()).expect("at most 40 bytes of options");
        let mut ip = Ipv4Header {
            identification: self.ip_id,
            dont_fragment: frag & 0x4000 != 0,
            more_fragments: frag & 0x2000 != 0,
            fragment_offset: IpFragOffset::try_new(frag & 0x1fff).expect("13 bits"),
            options,
            ..Ipv4Header::new(0, 64, IpNumber(self.proto), self.src.octets(), self.dst.octets()).expect("header")
        };
        ip.set_payload_len(payload_len).expect("payload fits an IPv4 packet");
        ip.header_checksum = ip.calc_header_checksum();
        ip
    }

    /// Builds the frame with correct checksums.
    ///
    /// # Panics
    /// When the payload or options do not fit an IPv4 packet.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.segment();
        frame(&self.ip_header(l4.len(), self.frag), &l4)
    }

    /// The datagram as fragments of at most `chunk` bytes of IP payload each
    /// (a multiple of 8), in order: the first with the L4 header and MF set.
    ///
    /// # Panics
    /// When `chunk` is not a positive multiple of 8.
    #[must_use]
    pub fn fragments(&self, chunk: usize) -> Vec<Vec<u8>> {
        assert!(chunk > 0 && chunk.is_multiple_of(8), "fragment payloads are multiples of 8 bytes");
        let l4 = self.segment();
        let pieces: Vec<&[u8]> = l4.chunks(chunk).collect();
        let last = pieces.len() - 1;
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let offset = u16::try_from(i * chunk / 8).expect("offset fits 13 bits");
                let more = if i == last { 0 } else { 0x2000 };
                frame(&self.ip_header(piece.len(), more | offset), piece)
            })
            .collect()
    }
}

/// Ethernet (pod to node) + `ip` + `payload`.
fn frame(ip: &Ipv4Header, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_LEN + ip.header_len() + payload.len());
    frame.extend_from_slice(&NODE_MAC);
    frame.extend_from_slice(&POD_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    ip.write(&mut frame).expect("write to a Vec");
    frame.extend_from_slice(payload);
    frame
}

/// An ICMP error to build, quoting `quoted` (an IPv4 datagram: the bytes
/// after the Ethernet header of a frame, cut to what the error quotes).
#[derive(Clone, Debug)]
pub struct IcmpErrorSpec {
    /// Source address (the router or host raising the error).
    pub src: Ipv4Addr,
    /// Destination address (the sender of the quoted packet).
    pub dst: Ipv4Addr,
    /// ICMP type (3, 11 or 12).
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
    /// Bytes 5 to 8 of the ICMP header (the next-hop MTU of a
    /// fragmentation-needed error, the pointer of a parameter problem).
    pub rest: [u8; 4],
    /// The quoted datagram.
    pub quoted: Vec<u8>,
}

impl IcmpErrorSpec {
    /// A fragmentation-needed error (3/4) with next-hop MTU `mtu` about the
    /// packet in `frame`, quoting all of it (as Linux does for small packets).
    #[must_use]
    pub fn frag_needed(src: Ipv4Addr, dst: Ipv4Addr, mtu: u16, frame: &[u8]) -> Self {
        let m = mtu.to_be_bytes();
        Self { src, dst, icmp_type: 3, code: 4, rest: [0, 0, m[0], m[1]], quoted: frame[ETH_LEN..].to_vec() }
    }

    /// An error of `icmp_type`/`code` about the packet in `frame`, quoting
    /// its IPv4 header and the first `l4_bytes` bytes after it.
    #[must_use]
    pub fn about(src: Ipv4Addr, dst: Ipv4Addr, (icmp_type, code): (u8, u8), frame: &[u8], l4_bytes: usize) -> Self {
        let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
        let end = (ETH_LEN + ihl + l4_bytes).min(frame.len());
        Self { src, dst, icmp_type, code, rest: [0; 4], quoted: frame[ETH_LEN..end].to_vec() }
    }

    /// Builds the frame with correct checksums.
    ///
    /// # Panics
    /// When the quote does not fit an IPv4 packet.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::Unknown { type_u8: self.icmp_type, code_u8: self.code, bytes5to8: self.rest },
            &self.quoted,
        );
        let mut payload = Vec::new();
        icmp.write(&mut payload).expect("write to a Vec");
        payload.extend_from_slice(&self.quoted);
        let spec = PacketSpec { proto: ICMP, ..PacketSpec::tcp((self.src, 0), (self.dst, 0), 0) };
        frame(&spec.ip_header(payload.len(), 0), &payload)
    }
}

/// What a checked frame holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// The L4 checksum as found.
    pub l4_checksum: u16,
    /// Payload after the L4 header.
    pub payload: Vec<u8>,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    /// TCP acknowledgement number (0 for UDP).
    pub ack: u32,
    /// The IP protocol.
    pub proto: u8,
}

impl Parsed {
    /// Source address and port.
    #[must_use]
    pub const fn source(&self) -> (Ipv4Addr, u16) {
        (self.src, self.sport)
    }

    /// Destination address and port.
    #[must_use]
    pub const fn destination(&self) -> (Ipv4Addr, u16) {
        (self.dst, self.dport)
    }
}

/// The IPv4 header of `frame` (after Ethernet), its checksum verified.
fn checked_ip(frame: &[u8]) -> Ipv4HeaderSlice<'_> {
    assert!(frame.len() >= ETH_LEN + 20, "frame of {} bytes is too short", frame.len());
    assert_eq!(&frame[12..14], &[0x08, 0x00], "not IPv4");
    let ip = Ipv4HeaderSlice::from_slice(&frame[ETH_LEN..]).expect("an IPv4 header");
    assert_eq!(
        ip.header_checksum(),
        ip.to_header().calc_header_checksum(),
        "IPv4 header checksum is wrong: {:02x?}",
        ip.slice()
    );
    ip
}

/// Verifies the checksum of the TCP or UDP segment `l4` between `src` and `dst`.
fn verify_l4(protocol: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) {
    match protocol {
        TCP => {
            let h = TcpHeaderSlice::from_slice(l4).expect("a TCP header");
            let payload = &l4[h.slice().len()..];
            let want = h.calc_checksum_ipv4_raw(src, dst, payload).expect("segment fits");
            assert_eq!(h.checksum(), want, "TCP checksum is wrong for {src:?} -> {dst:?}");
        }
        UDP => {
            let h = UdpHeaderSlice::from_slice(l4).expect("a UDP header");
            if h.checksum() != 0 {
                let want = h.to_header().calc_checksum_ipv4_raw(src, dst, &l4[UdpHeader::LEN..]).expect("fits");
                assert_eq!(h.checksum(), want, "UDP checksum is wrong for {src:?} -> {dst:?}");
            }
        }
        other => panic!("protocol {other} is not TCP or UDP"),
    }
}

/// Parses a TCP or UDP frame and verifies both checksums from scratch.
///
/// # Panics
/// When the frame is not IPv4 TCP/UDP or a checksum is wrong, saying which.
#[must_use]
pub fn parse_and_verify(frame: &[u8]) -> Parsed {
    let ip = checked_ip(frame);
    let total = usize::from(ip.total_len());
    let l4 = &frame[ETH_LEN + ip.slice().len()..ETH_LEN + total];
    let protocol = ip.protocol().0;
    verify_l4(protocol, ip.source(), ip.destination(), l4);
    let (header_len, csum_at) = if protocol == TCP { (usize::from(l4[12] >> 4) * 4, 16) } else { (8, 6) };
    let word = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
    Parsed {
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        l4_checksum: u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]),
        payload: l4[header_len..].to_vec(),
        tcp_flags: if protocol == TCP { l4[13] } else { 0 },
        seq: if protocol == TCP { word(4) } else { 0 },
        ack: if protocol == TCP { word(8) } else { 0 },
        proto: protocol,
    }
}

/// What a fragment holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFragment {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// The identification.
    pub id: u16,
    /// Offset of its payload in the datagram, in bytes.
    pub offset: usize,
    /// Whether more fragments follow.
    pub more: bool,
    /// Its IP payload.
    pub payload: Vec<u8>,
}

/// Parses a fragment and verifies its IPv4 checksum.
///
/// # Panics
/// When the frame is not IPv4 or its checksum is wrong.
#[must_use]
pub fn parse_fragment(frame: &[u8]) -> ParsedFragment {
    let ip = checked_ip(frame);
    let total = usize::from(ip.total_len());
    ParsedFragment {
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        id: ip.identification(),
        offset: usize::from(ip.fragments_offset().value()) * 8,
        more: ip.more_fragments(),
        payload: frame[ETH_LEN + ip.slice().len()..ETH_LEN + total].to_vec(),
    }
}

/// Reassembles fragments (in any order) of one datagram and parses it as
/// [`parse_and_verify`] does, the L4 checksum verified over the whole
/// datagram.
///
/// # Panics
/// When the fragments disagree on addresses or identification, leave a
/// hole, or the checksum is wrong.
#[must_use]
pub fn reassemble_and_verify(frames: &[Vec<u8>]) -> Parsed {
    let mut parts: Vec<ParsedFragment> = frames.iter().map(|f| parse_fragment(f)).collect();
    parts.sort_by_key(|p| p.offset);
    let first = parts.first().expect("at least one fragment").clone();
    let mut datagram = Vec::new();
    for p in &parts {
        assert_eq!((p.src, p.dst, p.id), (first.src, first.dst, first.id), "fragments of different datagrams");
        assert_eq!(p.offset, datagram.len(), "a hole or an overlap at {}", p.offset);
        datagram.extend_from_slice(&p.payload);
    }
    assert!(!parts.last().expect("fragments").more, "the last fragment has MF set");
    let proto = frames[0][ETH_LEN + 9];
    let spec = PacketSpec { proto, ip_id: first.id, frag: 0, ..PacketSpec::tcp((first.src, 0), (first.dst, 0), 0) };
    parse_and_verify(&frame(&spec.ip_header(datagram.len(), 0), &datagram))
}

/// What a checked ICMP error holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIcmp {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
    /// Bytes 5 to 8 of the ICMP header.
    pub rest: [u8; 4],
    /// The quoted datagram: the original IPv4 header and what followed it.
    pub quoted: Vec<u8>,
}

impl ParsedIcmp {
    /// The quoted header's addresses and ports, its IPv4 checksum verified,
    /// and its L4 checksum too when the whole segment is quoted (a quote
    /// that is cut short cannot be checked).
    ///
    /// # Panics
    /// When the quote holds no IPv4 header and ports, or a checksum is wrong.
    #[must_use]
    pub fn quoted_flow(&self) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
        let ip = Ipv4HeaderSlice::from_slice(&self.quoted).expect("a quoted IPv4 header");
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum(), "quoted IPv4 checksum is wrong");
        let l4 = &self.quoted[ip.slice().len()..];
        if l4.len() >= usize::from(ip.payload_len().expect("length")) {
            verify_l4(
                ip.protocol().0,
                ip.source(),
                ip.destination(),
                &l4[..usize::from(ip.payload_len().expect("len"))],
            );
        }
        let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
        ((ip.source_addr(), port(0)), (ip.destination_addr(), port(2)))
    }
}

/// Parses an IPv4 ICMP frame and verifies the IPv4 and ICMP checksums from
/// scratch and the IPv4 total length against the frame.
///
/// # Panics
/// When the frame is not IPv4 ICMP or a checksum or length is wrong.
#[must_use]
pub fn parse_icmp_and_verify(frame: &[u8]) -> ParsedIcmp {
    let ip = checked_ip(frame);
    assert_eq!(ip.protocol().0, ICMP, "protocol {} is not ICMP", ip.protocol().0);
    let total = usize::from(ip.total_len());
    assert_eq!(total, frame.len() - ETH_LEN, "IPv4 total length {total} vs {} bytes after Ethernet", frame.len() - 14);
    let icmp_bytes = &frame[ETH_LEN + ip.slice().len()..];
    let icmp = Icmpv4Slice::from_slice(icmp_bytes).expect("an ICMP message");
    let header = icmp.header();
    assert_eq!(header.checksum, header.icmp_type.calc_checksum(icmp.payload()), "ICMP checksum is wrong");
    ParsedIcmp {
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        icmp_type: icmp_bytes[0],
        code: icmp_bytes[1],
        rest: [icmp_bytes[4], icmp_bytes[5], icmp_bytes[6], icmp_bytes[7]],
        quoted: icmp_bytes[8..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 0, 2), 40000);
    const B: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 19, 0, 10), 80);

    #[test]
    fn built_frames_verify() {
        for spec in [PacketSpec::tcp(A, B, SYN), PacketSpec::udp(A, B)] {
            let parsed = parse_and_verify(&spec.build());
            assert_eq!((parsed.source(), parsed.destination()), (A, B));
        }
    }

    #[test]
    #[should_panic(expected = "checksum")]
    fn a_corrupted_frame_fails_verification() {
        let mut frame = PacketSpec::tcp(A, B, SYN).build();
        let last = frame.len() - 1;
        frame[last] ^= 0xff;
        let _ = parse_and_verify(&frame);
    }

    #[test]
    fn fragments_reassemble_into_the_datagram() {
        let spec = PacketSpec::udp(A, B).with_payload((0..3000u16).map(|i| i.to_le_bytes()[0]).collect());
        let parts = spec.fragments(1480);
        assert_eq!(parts.len(), 3);
        assert!(parse_fragment(&parts[0]).more && !parse_fragment(&parts[2]).more);
        assert_eq!(reassemble_and_verify(&parts), parse_and_verify(&PacketSpec { frag: 0, ..spec }.build()));
    }

    #[test]
    fn an_icmp_error_quotes_the_packet_and_verifies() {
        let frame = PacketSpec::udp(A, B).build();
        let err = IcmpErrorSpec::frag_needed(Ipv4Addr::new(198, 18, 255, 1), A.0, 1400, &frame).build();
        let p = parse_icmp_and_verify(&err);
        assert_eq!((p.icmp_type, p.code, p.rest), (3, 4, [0, 0, 0x05, 0x78]));
        assert_eq!(p.quoted_flow(), (A, B));
    }
}
