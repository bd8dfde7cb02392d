//! Fail-fast: answering a client from the ClusterSetIP instead of letting
//! its connection time out.
//!
//! - TCP: an RST, as RFC 9293 §3.10.7.1 says a closed port answers: to a
//!   segment with ACK, `seq = SEG.ACK`; otherwise `seq = 0`, ACK set and
//!   `ack = SEG.SEQ + SEG.LEN` (SYN and FIN count one each).
//! - UDP: an ICMP destination unreachable, port unreachable (type 3, code 3),
//!   quoting the original IPv4 header and the first 8 bytes of its payload.
//!
//! The packet is rewritten in place (MAC addresses swapped, headers rebuilt,
//! checksums computed from scratch) and sent back out of the interface it
//! came in on: back to the pod (tc, `bpf_redirect`), or to the external
//! client's next hop (the XDP gateway, `XDP_TX`).
use aya_ebpf::bindings::BPF_F_RECOMPUTE_CSUM;
use mcs_common::proto;

use crate::{
    parse::{ETH_LEN, Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    pkt::Pkt,
};

const IP_LEN: usize = 20;
/// Offset of the total length within the IPv4 header.
const IP_TOT_LEN_OFF: usize = 2;
const TCP_LEN: usize = 20;
const ICMP_LEN: usize = 8;
/// Bytes of the original datagram's payload an ICMP error quotes.
const QUOTED_L4: usize = 8;

/// Adds the 16-bit big-endian words of `bytes` to `sum`.
#[inline(always)]
fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Folds a one's-complement sum to 16 bits and complements it.
#[inline(always)]
const fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = sum as u16;
    !folded
}

/// Writes the headers of an answer to `flow` into the start of `out`:
/// Ethernet (`macs`, already swapped) and IPv4 without options (checksum
/// included) from the ClusterSetIP back to the client, `total_len` bytes of
/// IPv4 datagram carrying `protocol`.
#[inline(always)]
fn answer_headers(out: &mut [u8], macs: &[u8; 12], flow: &Flow, protocol: u8, total_len: usize) {
    out[..12].copy_from_slice(macs);
    out[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut out[ETH_LEN..ETH_LEN + IP_LEN];
    #[expect(clippy::cast_possible_truncation, reason = "an answer is at most 96 bytes")]
    let total_len = total_len as u16;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = protocol;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&flow.daddr.to_ne_bytes());
    ip[16..20].copy_from_slice(&flow.saddr.to_ne_bytes());
    let csum = finish(sum_words(ip, 0));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// The sequence and acknowledgement numbers (host order) and the payload
/// length of the TCP segment of `flow`, read from the packet (only this cold
/// path needs them, so parsing leaves them).
#[inline(always)]
fn tcp_segment<C: Pkt>(ctx: &C, flow: &Flow) -> Option<(u32, u32, u32)> {
    let total_len: [u8; 2] = ctx.load(ETH_LEN + IP_TOT_LEN_OFF).ok()?;
    // Bytes 4..13 of the TCP header: sequence number, acknowledgement
    // number, data offset.
    let tcp: [u8; 9] = ctx.load(flow.l4_off + 4).ok()?;
    let seq = u32::from_be_bytes([tcp[0], tcp[1], tcp[2], tcp[3]]);
    let ack = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    #[expect(clippy::cast_possible_truncation, reason = "IPv4 header and options: at most 60 bytes")]
    let headers = (flow.l4_off - ETH_LEN) as u32 + u32::from(tcp[8] >> 4) * 4;
    Some((seq, ack, u32::from(u16::from_be_bytes(total_len)).saturating_sub(headers)))
}

/// The Ethernet header with source and destination swapped.
#[inline(always)]
fn swapped_eth<C: Pkt>(ctx: &C) -> Option<[u8; 12]> {
    let macs: [u8; 12] = ctx.load(0).ok()?;
    let mut out = [0u8; 12];
    out[..6].copy_from_slice(&macs[6..12]);
    out[6..].copy_from_slice(&macs[..6]);
    Some(out)
}

/// Makes the IPv4 header of the packet 20 bytes long, dropping options.
#[inline(always)]
fn strip_ip_options<C: Pkt>(ctx: &C, flow: &Flow) -> Result<(), ()> {
    let ip_len = flow.l4_off - ETH_LEN;
    if ip_len > IP_LEN {
        ctx.strip_ip_options(ip_len - IP_LEN).map_err(|_| ())?;
    }
    Ok(())
}

/// Resizes the packet to `len` bytes.
#[inline(always)]
fn set_len<C: Pkt>(ctx: &C, len: usize) -> Result<(), ()> {
    ctx.resize(len).map_err(|_| ())
}

/// Turns `flow` (client → ClusterSetIP, not yet translated) into a TCP RST
/// from the ClusterSetIP and redirects it back. `Err` when the packet could
/// not be rewritten; then it must be dropped.
#[inline(always)]
pub fn tcp_rst<C: Pkt>(ctx: &C, flow: &Flow) -> Result<i32, ()> {
    let eth = swapped_eth(ctx).ok_or(())?;
    let (seg_seq, seg_ack, payload_len) = tcp_segment(ctx, flow).ok_or(())?;
    let (seq, ack, flags) = if flow.has(TCP_ACK) {
        (seg_ack, 0, TCP_RST)
    } else {
        let mut len = payload_len;
        if flow.has(TCP_SYN) {
            len += 1;
        }
        if flow.has(TCP_FIN) {
            len += 1;
        }
        (0, seg_seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    let mut out = [0u8; ETH_LEN + IP_LEN + TCP_LEN];
    answer_headers(&mut out, &eth, flow, proto::TCP, IP_LEN + TCP_LEN);
    let tcp = &mut out[ETH_LEN + IP_LEN..];
    tcp[0..2].copy_from_slice(&flow.dport.to_ne_bytes());
    tcp[2..4].copy_from_slice(&flow.sport.to_ne_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    // Window, checksum and urgent pointer stay zero until the checksum is in.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&flow.daddr.to_ne_bytes());
    pseudo[4..8].copy_from_slice(&flow.saddr.to_ne_bytes());
    pseudo[9] = proto::TCP;
    #[expect(clippy::cast_possible_truncation, reason = "20 bytes")]
    let tcp_len = TCP_LEN as u16;
    pseudo[10..12].copy_from_slice(&tcp_len.to_be_bytes());
    let csum = finish(sum_words(tcp, sum_words(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());

    strip_ip_options(ctx, flow)?;
    set_len(ctx, out.len())?;
    ctx.store(0, &out, u64::from(BPF_F_RECOMPUTE_CSUM)).map_err(|_| ())?;
    Ok(ctx.send_back())
}

/// Turns `flow` (a UDP datagram to a ClusterSetIP, not yet translated) into
/// an ICMP port unreachable from the ClusterSetIP and redirects it back.
/// `Err` when the packet could not be rewritten; then it must be dropped.
#[inline(always)]
pub fn icmp_port_unreachable<C: Pkt>(ctx: &C, flow: &Flow) -> Result<i32, ()> {
    let eth = swapped_eth(ctx).ok_or(())?;
    let ip_len = flow.l4_off - ETH_LEN;
    // The ICMP checksum covers the quoted datagram: sum it before the
    // packet moves. The base IPv4 header, its options word by word, then the
    // first 8 bytes of the UDP header.
    let base: [u8; IP_LEN] = ctx.load(ETH_LEN).map_err(|_| ())?;
    let mut sum = sum_words(&base, 0);
    let mut off = ETH_LEN + IP_LEN;
    for _ in 0..10 {
        if off >= flow.l4_off {
            break;
        }
        let word: [u8; 4] = ctx.load(off).map_err(|_| ())?;
        sum = sum_words(&word, sum);
        off += 4;
    }
    let l4: [u8; QUOTED_L4] = ctx.load(flow.l4_off).map_err(|_| ())?;
    sum = sum_words(&l4, sum);
    // ICMP header: type 3, code 3, checksum, 4 unused bytes.
    sum += 0x0303;
    let icmp_csum = finish(sum);

    // Make room for the new IPv4 and ICMP headers in front of the original
    // IPv4 header, and cut what follows the quoted 8 bytes.
    ctx.insert_front(IP_LEN + ICMP_LEN).map_err(|_| ())?;
    set_len(ctx, ETH_LEN + IP_LEN + ICMP_LEN + ip_len + QUOTED_L4)?;

    let mut out = [0u8; ETH_LEN + IP_LEN + ICMP_LEN];
    answer_headers(&mut out, &eth, flow, proto::ICMP, IP_LEN + ICMP_LEN + ip_len + QUOTED_L4);
    let icmp = &mut out[ETH_LEN + IP_LEN..];
    icmp[0] = 3;
    icmp[1] = 3;
    icmp[2..4].copy_from_slice(&icmp_csum.to_be_bytes());
    ctx.store(0, &out, u64::from(BPF_F_RECOMPUTE_CSUM)).map_err(|_| ())?;
    Ok(ctx.send_back())
}
