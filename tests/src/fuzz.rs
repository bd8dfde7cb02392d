//! Packet fuzzing of both tc programs through `BPF_PROG_TEST_RUN`.
//!
//! A seeded generator (fastrand's wyrand: the same seed gives the same
//! frames on every machine) builds frames with etherparse ([`crate::packet`])
//! against services programmed through the agent's sync ([`Datapath`]):
//! new and established flows to ClusterSetIPs, replies of the flows it saw
//! translated (and of flows that do not exist), ICMP errors both ways,
//! fragments, hairpin, fail-fast ports, other protocols and non-IPv4 frames.
//! A share of the frames are earlier ones mutated: bits flipped, bytes set,
//! header fields (IHL, total length, protocol, fragment field, data offset,
//! UDP length, ethertype) overwritten, the frame cut or extended, and the
//! checksums fixed up again or left broken.
//!
//! Every frame goes through one program, and the result is checked against
//! an oracle of this module's own (it parses frames byte by byte and sums
//! checksums itself, sharing nothing with the datapath):
//! - the verdict is one of `TCX_NEXT`, `TC_ACT_SHOT`, `TC_ACT_REDIRECT`
//!   (ingress) or `TCX_NEXT`, `TC_ACT_SHOT` (egress);
//! - a frame that is not for a ClusterSetIP (or the hairpin address) at
//!   ingress, and a reply whose flow is not tracked at egress, comes out byte
//!   for byte as it went in, with `TCX_NEXT`;
//! - a malformed frame (see [`Facts::well_formed`]) is never rewritten;
//! - a rewritten frame's IPv4, L4 and ICMP checksums verify, or, when the
//!   frame came in with a broken checksum, are broken by exactly as much (an
//!   incremental update keeps the ones'-complement residual); an answer the
//!   datapath builds (fail-fast RST or ICMP unreachable) verifies outright;
//! - a translated packet carries the tuple its conntrack entry names, and
//!   goes to a backend of its service port;
//! - every conntrack entry's peer exists and points back, with the same
//!   service and backend (checked every [`Options::check_every`] frames and at
//!   the end);
//! - every dropped or refused packet is counted under exactly one drop reason.
//!
//! A failure names the seed, the frame's index and both frames in hex.
use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, time::Instant};

use aya::maps::{HashMap, MapData};
use mcs_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CtKey, CtValue, DEFAULT_HAIRPIN_ADDR, FragKey, FragValue, ipv4_from_nbo, map_names,
    program_names, proto,
};

use crate::{
    datapath::{DROP, Datapath, NEXT, REDIRECT, ServicePort, forward_key},
    packet::{ACK, ETH_LEN, FIN, ICMP, IcmpErrorSpec, PacketSpec, RST, SYN, TCP, UDP},
};

/// How many frames, from which seed.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Frames to run (each through one program).
    pub frames: u64,
    /// The generator's seed.
    pub seed: u64,
    /// Check conntrack pairs every this many frames (and at the end).
    pub check_every: u64,
    /// Go on after a broken invariant (collecting the first failure of each
    /// kind in [`Report::failures`]) instead of stopping at the first.
    pub keep_going: bool,
}

impl Options {
    /// `frames` frames from `seed`, conntrack checked every 500 frames.
    #[must_use]
    pub const fn new(frames: u64, seed: u64) -> Self {
        Self { frames, seed, check_every: 500, keep_going: false }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Frames run, both programs.
    pub frames: u64,
    /// Frames `test_run` refused (shorter than the headers their ethertype announces).
    pub refused: u64,
    /// (program, verdict, rewritten or not) → frames.
    pub verdicts: BTreeMap<(&'static str, &'static str, bool), u64>,
    /// Kind of generated frame → frames.
    pub kinds: BTreeMap<&'static str, u64>,
    /// Drop reasons counted by the datapath → packets.
    pub drops: BTreeMap<String, u64>,
    /// Frames the oracle found malformed.
    pub malformed: u64,
    /// Conntrack pair checks made, and the entries they looked at.
    pub ct_checks: (u64, u64),
    /// Wall time, seconds.
    pub seconds: f64,
    /// With [`Options::keep_going`]: the first failure of each kind, and how
    /// many frames broke an invariant.
    pub failures: (Vec<Failure>, u64),
}

impl Report {
    /// Frames of `program` with `verdict` (rewritten or not).
    #[must_use]
    pub fn count(&self, program: &str, verdict: &str, rewritten: bool) -> u64 {
        self.verdicts
            .iter()
            .filter(|((p, v, r), _)| *p == program && *v == verdict && *r == rewritten)
            .map(|(_, n)| n)
            .sum()
    }

    /// The verdict mix as a table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fuzz: {} frames from seed {} in {:.1} s ({} refused by test_run as shorter than their L2/L3 headers, {} malformed by the oracle, {} conntrack checks over {} entries)",
            self.frames, self.seed, self.seconds, self.refused, self.malformed, self.ct_checks.0, self.ct_checks.1
        );
        let _ = writeln!(s, "| program | verdict | rewritten | frames | share |");
        let _ = writeln!(s, "| --- | --- | --- | ---: | ---: |");
        for ((p, v, r), n) in &self.verdicts {
            #[expect(clippy::cast_precision_loss, reason = "a share for people")]
            let share = *n as f64 * 100.0 / self.frames.max(1) as f64;
            let _ = writeln!(s, "| {p} | {v} | {} | {n} | {share:.1}% |", if *r { "yes" } else { "no" });
        }
        let _ = writeln!(s, "frames by kind: {:?}", self.kinds);
        let _ = writeln!(s, "drop reasons: {:?}", self.drops);
        s
    }
}

/// A broken invariant, with what reproduces it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed of the run.
    pub seed: u64,
    /// The frame's index in the run (0-based).
    pub index: u64,
    /// The program it went through.
    pub program: &'static str,
    /// The kind of frame.
    pub kind: &'static str,
    /// The frame in.
    pub input: Vec<u8>,
    /// The frame out, when the program ran.
    pub output: Option<(u32, Vec<u8>)>,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fuzz invariant broken: {}", self.what)?;
        writeln!(f, "  seed {} frame #{} ({}) through {}", self.seed, self.index, self.kind, self.program)?;
        writeln!(f, "  reproduce: cargo xtask fuzz --seed {} --frames {}", self.seed, self.index + 1)?;
        writeln!(f, "  in : {}", hex(&self.input))?;
        if let Some((verdict, out)) = &self.output {
            writeln!(f, "  out (verdict {}): {}", verdict_name(*verdict), hex(out))?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn verdict_name(verdict: u32) -> &'static str {
    match verdict {
        NEXT => "next",
        DROP => "drop",
        REDIRECT => "redirect",
        _ => "UNDEFINED",
    }
}

// The address plan (198.18.0.0/15 only, besides the link-local hairpin address).
const CLIENTS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
/// A ClusterSetIP with backends on TCP/80 and UDP/53 (`ClientIP` affinity).
const VIP_LB: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// A ClusterSetIP whose ports have no backend: fail-fast.
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
/// A ClusterSetIP whose one backend is the first client: hairpin.
const VIP_SELF: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 12);
const VIPS: [Ipv4Addr; 3] = [VIP_LB, VIP_EMPTY, VIP_SELF];
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);
const HAIRPIN: Ipv4Addr = DEFAULT_HAIRPIN_ADDR;
const TCP_BACKENDS: [(Ipv4Addr, u16); 3] = [
    (Ipv4Addr::new(198, 18, 1, 10), 8080),
    (Ipv4Addr::new(198, 18, 1, 11), 8080),
    (Ipv4Addr::new(198, 18, 2, 10), 9090),
];
const UDP_BACKENDS: [(Ipv4Addr, u16); 2] =
    [(Ipv4Addr::new(198, 18, 1, 10), 5353), (Ipv4Addr::new(198, 18, 2, 10), 5354)];
const SELF_BACKEND: (Ipv4Addr, u16) = (CLIENTS[0], 7000);

/// Service ports (ClusterSetIP, port, protocol) with their backends.
type PortTable = Vec<((Ipv4Addr, u16, u8), Vec<(Ipv4Addr, u16)>)>;

/// The service ports programmed, with their backends.
fn service_ports() -> PortTable {
    vec![
        ((VIP_LB, 80, TCP), TCP_BACKENDS.to_vec()),
        ((VIP_LB, 53, UDP), UDP_BACKENDS.to_vec()),
        ((VIP_EMPTY, 443, TCP), Vec::new()),
        ((VIP_EMPTY, 5353, UDP), Vec::new()),
        ((VIP_SELF, 8080, TCP), vec![SELF_BACKEND]),
    ]
}

/// Which program a frame goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Ingress,
    Egress,
}

impl Prog {
    const fn name(self) -> &'static str {
        match self {
            Self::Ingress => program_names::FROM_POD,
            Self::Egress => program_names::TO_POD,
        }
    }
}

/// A flow the fuzzer saw translated: what its replies look like.
#[derive(Clone, Copy, Debug)]
struct Seen {
    proto: u8,
    client: (Ipv4Addr, u16),
    vip: (Ipv4Addr, u16),
    /// The translated packet's source (client or hairpin address, translated port).
    from: (Ipv4Addr, u16),
    /// The backend.
    to: (Ipv4Addr, u16),
}

/// What the oracle reads from a frame, byte by byte.
#[derive(Clone, Copy, Debug, Default)]
#[expect(clippy::struct_excessive_bools, reason = "the oracle's answers about one frame, each a yes or no")]
struct Facts {
    /// Ethernet type IPv4, and an IPv4 header of version 4 is there (20 bytes).
    ipv4: bool,
    src: u32,
    dst: u32,
    proto: u8,
    /// IPv4 header length in bytes.
    hlen: usize,
    /// IPv4 total length.
    tot_len: usize,
    /// MF set or a non-zero offset.
    fragmented: bool,
    /// A non-zero offset.
    later_fragment: bool,
    ip_id: u16,
    /// The frame is a sound IPv4 packet: IHL at least 5, the total length
    /// covers the header and fits the frame, and (unless a later fragment)
    /// a TCP header (data offset at least 5, all of it within the total
    /// length), a UDP header (its length from 8 to what the IP payload
    /// holds) or an ICMP header is within the total length; an ICMP error
    /// quotes a sound IPv4 header and 8 bytes after it.
    well_formed: bool,
    /// TCP or UDP ports (sound, not a later fragment).
    ports: Option<(u16, u16)>,
    /// An ICMP error's quote: (protocol, saddr, daddr, sport, dport), sound.
    quote: Option<(u8, u32, u32, u16, u16)>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The IPv4 header at `off` of `b`, within `end`: (header length, total
/// length, protocol, fragment field) when its version is 4 and 20 bytes are there.
fn ip_at(b: &[u8], off: usize, end: usize) -> Option<(usize, usize, u8, u16)> {
    if off + 20 > end || b[off] >> 4 != 4 {
        return None;
    }
    Some((usize::from(b[off] & 0x0f) * 4, usize::from(be16(b, off + 2)), b[off + 9], be16(b, off + 6)))
}

fn facts(b: &[u8]) -> Facts {
    let mut f = Facts::default();
    if b.len() < ETH_LEN || be16(b, 12) != 0x0800 {
        return f;
    }
    let Some((hlen, tot_len, protocol, frag)) = ip_at(b, ETH_LEN, b.len()) else { return f };
    f = Facts {
        ipv4: true,
        src: ne32(b, ETH_LEN + 12),
        dst: ne32(b, ETH_LEN + 16),
        proto: protocol,
        hlen,
        tot_len,
        fragmented: frag & 0x3fff != 0,
        later_fragment: frag & 0x1fff != 0,
        ip_id: be16(b, ETH_LEN + 4),
        ..f
    };
    if hlen < 20 || tot_len < hlen || ETH_LEN + tot_len > b.len() {
        return f;
    }
    let l4 = ETH_LEN + hlen;
    let end = ETH_LEN + tot_len;
    if f.later_fragment {
        f.well_formed = true;
        return f;
    }
    match protocol {
        TCP => {
            let doff = if l4 + 20 <= end { usize::from(b[l4 + 12] >> 4) * 4 } else { 0 };
            f.well_formed = doff >= 20 && l4 + doff <= end;
        }
        UDP => {
            let ulen = if l4 + 8 <= end { usize::from(be16(b, l4 + 4)) } else { 0 };
            // A first fragment's UDP length is the whole datagram's.
            f.well_formed = ulen >= 8 && (f.fragmented || l4 + ulen <= end);
        }
        ICMP => {
            f.well_formed = l4 + 8 <= end;
            if f.well_formed && matches!(b[l4], 3 | 11 | 12) && !f.fragmented {
                let q = l4 + 8;
                let quote = ip_at(b, q, end).filter(|(qh, _, _, _)| *qh >= 20 && q + qh + 8 <= end);
                f.well_formed = quote.is_some();
                if let Some((qh, _, qp, qfrag)) = quote
                    && matches!(qp, TCP | UDP)
                    && qfrag.trailing_zeros() >= 13
                {
                    f.quote = Some((qp, ne32(b, q + 12), ne32(b, q + 16), be16(b, q + qh), be16(b, q + qh + 2)));
                }
            }
        }
        _ => f.well_formed = true,
    }
    if f.well_formed && matches!(protocol, TCP | UDP) {
        f.ports = Some((be16(b, l4), be16(b, l4 + 2)));
    }
    f
}

/// The ones'-complement sum of `data` (as 16-bit big-endian words, an odd
/// byte padded) added to `acc`, folded to 16 bits; 0 is normalised to
/// 0xffff (the two zeros of ones'-complement). A region whose checksum is
/// right sums to 0xffff.
fn ones_sum(acc: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(acc);
    for pair in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let s = sum as u16;
    if s == 0 { 0xffff } else { s }
}

/// The residuals of a sound frame's checksums: (IPv4 header, L4 with its
/// pseudo-header (TCP, UDP with a checksum, ICMP), quoted IPv4 header, and
/// the quoted L4 when the quote holds the whole quoted datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Residuals {
    ip: u16,
    l4: Option<u16>,
    quoted_ip: Option<u16>,
    quoted_l4: Option<u16>,
}

impl Residuals {
    #[cfg(test)]
    const fn all_valid(&self) -> bool {
        self.ip == 0xffff
            && matches!(self.l4, None | Some(0xffff))
            && matches!(self.quoted_ip, None | Some(0xffff))
            && matches!(self.quoted_l4, None | Some(0xffff))
    }
}

fn pseudo(b: &[u8], ip_off: usize, protocol: u8, len: usize) -> u32 {
    let words = [be16(b, ip_off + 12), be16(b, ip_off + 14), be16(b, ip_off + 16), be16(b, ip_off + 18)];
    words.iter().map(|w| u32::from(*w)).sum::<u32>() + u32::from(protocol) + u32::try_from(len).expect("small")
}

fn residuals(b: &[u8], f: &Facts) -> Residuals {
    let ip = ones_sum(0, &b[ETH_LEN..ETH_LEN + f.hlen]);
    let (l4_off, end) = (ETH_LEN + f.hlen, ETH_LEN + f.tot_len);
    let mut r = Residuals { ip, l4: None, quoted_ip: None, quoted_l4: None };
    if f.later_fragment {
        return r;
    }
    let l4 = &b[l4_off..end];
    r.l4 = match f.proto {
        TCP => Some(ones_sum(pseudo(b, ETH_LEN, TCP, l4.len()), l4)),
        UDP if be16(b, l4_off + 6) != 0 => Some(ones_sum(pseudo(b, ETH_LEN, UDP, l4.len()), l4)),
        ICMP => Some(ones_sum(0, l4)),
        _ => None,
    };
    if f.proto == ICMP && f.quote.is_some() {
        let q = l4_off + 8;
        let (qh, qtot, qp, _) = ip_at(b, q, end).expect("a sound quote");
        r.quoted_ip = Some(ones_sum(0, &b[q..q + qh]));
        let udp_zero = qp == UDP && be16(b, q + qh + 6) == 0;
        // Only a quoted datagram that holds its whole L4 header has an L4
        // checksum to speak of.
        let l4_header = if qp == TCP { 20 } else { 8 };
        if q + qtot <= end && qtot >= qh + l4_header && !udp_zero {
            r.quoted_l4 = Some(ones_sum(pseudo(b, q, qp, qtot - qh), &b[q + qh..q + qtot]));
        }
    }
    r
}

/// The fuzzer's state: the datapath, the generator and what it saw.
struct Fuzzer {
    dp: Datapath,
    rng: fastrand::Rng,
    options: Options,
    ports: PortTable,
    seen: Vec<Seen>,
    /// Recent generated frames, mutated later.
    pool: Vec<(Prog, Vec<u8>)>,
    /// Fragments still to send: the rest of a datagram.
    queued: Vec<(Prog, &'static str, Vec<u8>)>,
    report: Report,
    /// DROP verdicts plus fail-fast answers: what the drop counters must add up to.
    counted_drops: u64,
    index: u64,
}

/// Runs the fuzzer.
///
/// # Errors
/// The first broken invariant, with its seed and frames.
///
/// # Panics
/// When the datapath cannot be loaded or programmed (not root).
pub fn run(options: Options) -> Result<Report, Box<Failure>> {
    let mut dp = Datapath::load();
    let ports = service_ports();
    for ((vip, port, protocol), backends) in &ports {
        let mut sp = ServicePort::of(*vip, *port, *protocol).ready(backends).named(&format!("svc-{port}"));
        if *protocol == UDP && !backends.is_empty() {
            sp = sp.affinity(30);
        }
        dp.program(sp);
    }
    let mut fuzzer = Fuzzer {
        dp,
        rng: fastrand::Rng::with_seed(options.seed),
        options,
        ports,
        seen: Vec::new(),
        pool: Vec::new(),
        queued: Vec::new(),
        report: Report { seed: options.seed, ..Report::default() },
        counted_drops: 0,
        index: 0,
    };
    let started = Instant::now();
    while fuzzer.index < options.frames {
        let (prog, kind, frame) = fuzzer.next_frame();
        let mut result = fuzzer.one(prog, kind, &frame);
        fuzzer.index += 1;
        if result.is_ok() && fuzzer.index.is_multiple_of(options.check_every) {
            result = fuzzer.check_conntrack();
        }
        fuzzer.outcome(result)?;
    }
    let result = fuzzer.check_conntrack();
    fuzzer.outcome(result)?;
    let result = fuzzer.check_drop_counters();
    fuzzer.outcome(result)?;
    fuzzer.report.seconds = started.elapsed().as_secs_f64();
    Ok(fuzzer.report)
}

impl Fuzzer {
    /// Stops at a failure, or with `keep_going` notes it and goes on.
    fn outcome(&mut self, result: Result<(), Box<Failure>>) -> Result<(), Box<Failure>> {
        match result {
            Err(failure) if self.options.keep_going => {
                let (first, count) = &mut self.report.failures;
                *count += 1;
                let kind = |f: &Failure| f.what.chars().take(40).collect::<String>();
                if !first.iter().any(|f| kind(f) == kind(&failure)) {
                    first.push(*failure);
                }
                Ok(())
            }
            other => other,
        }
    }

    #[expect(clippy::unnecessary_box_returns, reason = "a failure holds two frames: boxed, the Ok path stays small")]
    fn fail(
        &self,
        prog: Prog,
        kind: &'static str,
        input: &[u8],
        output: Option<(u32, &[u8])>,
        what: String,
    ) -> Box<Failure> {
        Box::new(Failure {
            seed: self.options.seed,
            index: self.index,
            program: prog.name(),
            kind,
            input: input.to_vec(),
            output: output.map(|(v, o)| (v, o.to_vec())),
            what,
        })
    }

    fn client(&mut self) -> (Ipv4Addr, u16) {
        (CLIENTS[self.rng.usize(..CLIENTS.len())], 40_000 + self.rng.u16(..48))
    }

    fn tcp_flags(&mut self) -> u8 {
        const PSH: u8 = 0x08;
        [SYN, SYN, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK, 0, SYN | FIN][self.rng.usize(..10)]
    }

    /// A TCP or UDP packet spec with random details.
    fn spec(&mut self, protocol: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> PacketSpec {
        let mut spec = if protocol == TCP {
            let flags = self.tcp_flags();
            PacketSpec::tcp(src, dst, flags)
        } else {
            PacketSpec::udp(src, dst)
        };
        let len = [0, 1, 5, 64, 300][self.rng.usize(..5)];
        spec.payload = (0..len).map(|_| self.rng.u8(..)).collect();
        spec.seq = self.rng.u32(..);
        spec.ack = self.rng.u32(..);
        spec.ip_id = self.rng.u16(..);
        if self.rng.u8(..8) == 0 {
            spec.ip_options = vec![1; 4 * self.rng.usize(1..=10)];
        }
        if self.rng.bool() {
            spec.frag = 0;
        }
        spec.udp_zero_checksum = protocol == UDP && self.rng.u8(..6) == 0;
        spec
    }

    fn random_seen(&mut self) -> Option<Seen> {
        (!self.seen.is_empty()).then(|| self.seen[self.rng.usize(..self.seen.len())])
    }

    /// The next frame: a queued fragment, a mutated one or a new one.
    fn next_frame(&mut self) -> (Prog, &'static str, Vec<u8>) {
        if let Some(queued) = self.queued.pop() {
            return queued;
        }
        let pick = self.rng.u8(..100);
        let (prog, kind, frame) = if pick < 25 && !self.pool.is_empty() {
            let (mut prog, mut frame) = self.pool[self.rng.usize(..self.pool.len())].clone();
            self.mutate(&mut frame);
            if self.rng.u8(..4) == 0 {
                prog = if prog == Prog::Ingress { Prog::Egress } else { Prog::Ingress };
            }
            return (prog, "mutated", frame);
        } else {
            self.generate(pick)
        };
        if self.pool.len() < 256 {
            self.pool.push((prog, frame.clone()));
        } else {
            let at = self.rng.usize(..self.pool.len());
            self.pool[at] = (prog, frame.clone());
        }
        (prog, kind, frame)
    }

    fn generate(&mut self, pick: u8) -> (Prog, &'static str, Vec<u8>) {
        match pick {
            // A client to a service port (or to a port the ClusterSetIP does not list).
            25..=49 => {
                let client = self.client();
                let ((vip, port, protocol), _) = self.ports[self.rng.usize(..self.ports.len())].clone();
                let (port, protocol) = match self.rng.u8(..10) {
                    0 => (port + 1, protocol),
                    1 => (port, if protocol == TCP { UDP } else { TCP }),
                    _ => (port, protocol),
                };
                let spec = self.spec(protocol, client, (vip, port));
                (Prog::Ingress, "to-vip", spec.build())
            }
            // A reply of a flow seen translated (at ingress for a hairpinned one).
            50..=67 => {
                let Some(seen) = self.random_seen() else { return self.generate(25) };
                let spec = self.spec(seen.proto, seen.to, seen.from);
                let prog = if seen.from.0 == HAIRPIN { Prog::Ingress } else { Prog::Egress };
                (prog, "reply", spec.build())
            }
            // Another forward packet of a flow seen translated.
            68..=74 => {
                let Some(seen) = self.random_seen() else { return self.generate(25) };
                let spec = self.spec(seen.proto, seen.client, seen.vip);
                (Prog::Ingress, "established", spec.build())
            }
            // Not for a ClusterSetIP, or a reply of no tracked flow.
            75..=82 => {
                let protocol = [TCP, UDP, ICMP][self.rng.usize(..3)];
                let client = self.client();
                let other = (Ipv4Addr::new(198, 18, self.rng.u8(1..4), self.rng.u8(1..20)), self.rng.u16(1..));
                if protocol == ICMP {
                    let spec = PacketSpec::icmp_echo(client.0, other.0);
                    return (Prog::Ingress, "not-vip", spec.build());
                }
                if self.rng.bool() {
                    let spec = self.spec(protocol, client, other);
                    (Prog::Ingress, "not-vip", spec.build())
                } else {
                    let spec = self.spec(protocol, other, client);
                    (Prog::Egress, "untracked-reply", spec.build())
                }
            }
            // ICMP errors: about a translated packet, to its client (egress),
            // or from a client about a reply (ingress).
            83..=89 => {
                let Some(seen) = self.random_seen() else { return self.generate(25) };
                let l4_bytes = [8, 20, 64, 1000][self.rng.usize(..4)];
                if self.rng.bool() {
                    let translated = self.spec(seen.proto, seen.from, seen.to).build();
                    let raiser = if self.rng.bool() { ROUTER } else { seen.to.0 };
                    let err = if self.rng.bool() {
                        IcmpErrorSpec::frag_needed(raiser, seen.from.0, 1400, &translated)
                    } else {
                        let tc = [(3, 1), (3, 3), (11, 0), (12, 0)][self.rng.usize(..4)];
                        IcmpErrorSpec::about(raiser, seen.from.0, tc, &translated, l4_bytes)
                    };
                    let prog = if seen.from.0 == HAIRPIN { Prog::Ingress } else { Prog::Egress };
                    (prog, "icmp-about-flow", err.build())
                } else {
                    let reply = self.spec(seen.proto, seen.vip, seen.client).build();
                    let err = IcmpErrorSpec::about(seen.client.0, seen.vip.0, (3, 3), &reply, l4_bytes);
                    (Prog::Ingress, "icmp-about-reply", err.build())
                }
            }
            // A fragmented datagram, in order or not, or a lone later fragment.
            90..=94 => {
                let client = self.client();
                let vip = if self.rng.bool() { (VIP_LB, 53) } else { (ROUTER, 53) };
                let payload = (0..self.rng.usize(100..2500)).map(|_| self.rng.u8(..)).collect();
                let spec = PacketSpec { frag: 0, ..self.spec(UDP, client, vip) }.with_payload(payload);
                let mut parts = spec.fragments(8 * self.rng.usize(20..=180));
                if parts.len() > 1 && self.rng.u8(..4) == 0 {
                    parts.remove(0);
                }
                if self.rng.u8(..4) == 0 {
                    self.rng.shuffle(&mut parts);
                }
                parts.reverse();
                let first = parts.pop().expect("at least one fragment");
                self.queued.extend(parts.into_iter().map(|p| (Prog::Ingress, "fragment", p)));
                (Prog::Ingress, "fragment", first)
            }
            // Other protocols and non-IPv4 frames.
            _ => {
                let client = self.client();
                let mut frame = PacketSpec::icmp_echo(client.0, VIPS[self.rng.usize(..3)]).build();
                match self.rng.u8(..4) {
                    0 => frame[12..14].copy_from_slice(&[0x08, 0x06]), // ARP
                    1 => frame[12..14].copy_from_slice(&[0x86, 0xdd]), // IPv6
                    2 => {
                        frame[ETH_LEN + 9] = 47; // GRE
                        fix_ip_checksum(&mut frame);
                    }
                    _ => {}
                }
                (if self.rng.bool() { Prog::Ingress } else { Prog::Egress }, "other", frame)
            }
        }
    }

    fn mutate(&mut self, frame: &mut Vec<u8>) {
        for _ in 0..self.rng.usize(1..=3) {
            let len = frame.len();
            if len == 0 {
                frame.push(self.rng.u8(..));
                continue;
            }
            let ihl_off = ETH_LEN;
            let l4 = ETH_LEN + frame.get(ETH_LEN).map_or(20, |v| usize::from(v & 0x0f) * 4);
            let at = |off: usize| off.min(len - 1);
            match self.rng.u8(..12) {
                0 => {
                    let i = self.rng.usize(..len);
                    frame[i] ^= 1 << self.rng.u8(..8);
                }
                1 => {
                    let i = self.rng.usize(..len);
                    frame[i] = self.rng.u8(..);
                }
                2 => frame.truncate(self.rng.usize(..len)),
                3 => frame.extend((0..self.rng.usize(1..64)).map(|_| self.rng.u8(..))),
                4 => frame[at(ihl_off)] = 0x40 | self.rng.u8(..16), // IHL
                5 => {
                    // Total length.
                    let v = self.rng.u16(..1600).to_be_bytes();
                    frame[at(ETH_LEN + 2)] = v[0];
                    frame[at(ETH_LEN + 3)] = v[1];
                }
                6 => frame[at(ETH_LEN + 9)] = [TCP, UDP, ICMP, self.rng.u8(..)][self.rng.usize(..4)],
                7 => {
                    // Fragment field.
                    let v = [0x2000, 0x2001, 0x0001, 0x4000, self.rng.u16(..)][self.rng.usize(..5)];
                    frame[at(ETH_LEN + 6)] = v.to_be_bytes()[0];
                    frame[at(ETH_LEN + 7)] = v.to_be_bytes()[1];
                }
                8 => frame[at(l4 + 12)] = self.rng.u8(..16) << 4, // TCP data offset
                9 => {
                    // UDP length.
                    let v = self.rng.u16(..600).to_be_bytes();
                    frame[at(l4 + 4)] = v[0];
                    frame[at(l4 + 5)] = v[1];
                }
                10 => frame[at(12)] = [0x08, 0x86, 0x81][self.rng.usize(..3)], // ethertype
                _ => {
                    // Addresses: towards another ClusterSetIP, or from another pod.
                    let dst = at(ETH_LEN + 16 + 3);
                    frame[dst] = frame[dst].wrapping_add(self.rng.u8(..3));
                }
            }
        }
        if self.rng.bool() {
            fix_ip_checksum(frame);
            fix_l4_checksum(frame);
        }
    }

    /// Runs one frame and checks it.
    fn one(&mut self, prog: Prog, kind: &'static str, frame: &[u8]) -> Result<(), Box<Failure>> {
        *self.report.kinds.entry(kind).or_default() += 1;
        self.report.frames += 1;
        let f = facts(frame);
        if f.ipv4 && !f.well_formed {
            self.report.malformed += 1;
        }
        let may_change = self.may_change(prog, &f);
        let before_reply = self.reply_entry(prog, &f);
        let (verdict, out) = match self.dp.try_run(prog.name(), frame) {
            Ok(result) => result,
            Err(_) if refused_by_test_run(frame) => {
                self.report.refused += 1;
                return Ok(());
            }
            Err(e) => {
                let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
                return Err(self.fail(prog, kind, frame, None, format!("test_run failed: {e}: {cause}")));
            }
        };
        let changed = out != frame;
        let allowed: &[u32] = if prog == Prog::Ingress { &[NEXT, DROP, REDIRECT] } else { &[NEXT, DROP] };
        if !allowed.contains(&verdict) {
            return Err(self.fail(prog, kind, frame, Some((verdict, &out)), format!("undefined verdict {verdict}")));
        }
        *self.report.verdicts.entry((prog.name(), verdict_name(verdict), changed)).or_default() += 1;
        if verdict == DROP {
            self.counted_drops += 1;
        }
        let ctx = |what: String| (verdict, out.clone(), what);
        let result = if changed {
            if may_change {
                self.check_rewrite(prog, &f, frame, verdict, &out, before_reply)
            } else {
                Err("rewrote a frame it must leave alone (not for a ClusterSetIP, an untracked reply, or malformed)"
                    .to_string())
            }
        } else if !may_change
            && verdict != NEXT
            && !(prog == Prog::Ingress && f.ipv4 && VIPS.contains(&ipv4_from_nbo(f.dst)))
        {
            Err(format!("verdict {} for a frame that is not the datapath's", verdict_name(verdict)))
        } else {
            Ok(())
        };
        result.map_err(|what| {
            let (v, o, w) = ctx(what);
            self.fail(prog, kind, frame, Some((v, &o)), w)
        })
    }

    /// Whether the oracle allows the program to change the frame.
    fn may_change(&mut self, prog: Prog, f: &Facts) -> bool {
        if !f.ipv4 || !f.well_formed {
            return false;
        }
        let dst = ipv4_from_nbo(f.dst);
        match prog {
            Prog::Ingress if VIPS.contains(&dst) => true,
            Prog::Ingress if dst == HAIRPIN => self.tracked(f),
            Prog::Ingress => false,
            Prog::Egress => self.tracked(f),
        }
    }

    /// Whether a reply-direction entry (or a first fragment's record) exists
    /// for the frame: its tuple, its quote seen backwards, or its datagram.
    fn tracked(&mut self, f: &Facts) -> bool {
        if f.later_fragment {
            let key = FragKey { saddr: f.src, daddr: f.dst, id: f.ip_id.to_be(), proto: f.proto, pad: 0 };
            let frags: HashMap<&MapData, FragKey, FragValue> =
                HashMap::try_from(self.dp.ebpf.map(map_names::FRAGMENTS).expect("fragments map")).expect("a hash map");
            return frags.get(&key, 0).is_ok();
        }
        if let Some((sport, dport)) = f.ports {
            return self.dp.ct(&ct_key(f.proto, (f.src, sport), (f.dst, dport), CT_DIR_REPLY)).is_some();
        }
        if let Some((qp, qs, qd, qsp, qdp)) = f.quote {
            // The quote seen backwards is the key of the flow's entry.
            return self.dp.ct(&ct_key(qp, (qd, qdp), (qs, qsp), CT_DIR_REPLY)).is_some();
        }
        false
    }

    /// The reply entry a TCP or UDP frame at egress (or at ingress to the
    /// hairpin address) would use, before it runs.
    fn reply_entry(&mut self, prog: Prog, f: &Facts) -> Option<CtValue> {
        let (sport, dport) = f.ports?;
        if f.fragmented || (prog == Prog::Ingress && ipv4_from_nbo(f.dst) != HAIRPIN) {
            return None;
        }
        self.dp.ct(&ct_key(f.proto, (f.src, sport), (f.dst, dport), CT_DIR_REPLY))
    }

    fn check_rewrite(
        &mut self,
        prog: Prog,
        f: &Facts,
        frame: &[u8],
        verdict: u32,
        out: &[u8],
        before_reply: Option<CtValue>,
    ) -> Result<(), String> {
        let o = facts(out);
        if !o.ipv4 || !o.well_formed {
            return Err("the rewritten frame is not a sound IPv4 packet".into());
        }
        let r_out = residuals(out, &o);
        let r_in = residuals(frame, f);
        let answer = verdict == REDIRECT && o.src == f.dst && o.dst == f.src && prog == Prog::Ingress;
        if answer {
            self.counted_drops += 1;
            // A fail-fast answer, built from scratch: its own checksums
            // verify; an ICMP one quotes the original header as it came.
            let quoted_ip = r_out.quoted_ip.map(|_| r_in.ip);
            if (r_out.ip, r_out.l4, r_out.quoted_ip) != (0xffff, Some(0xffff), quoted_ip) {
                return Err(format!(
                    "a fail-fast answer's checksums do not verify: {r_out:?} (the original's: {r_in:?})"
                ));
            }
            let is_rst = o.proto == TCP && out[ETH_LEN + o.hlen + 13] & RST != 0;
            let is_unreachable = o.proto == ICMP && out[ETH_LEN + o.hlen..ETH_LEN + o.hlen + 2] == [3, 3];
            if !(is_rst || is_unreachable) {
                return Err("an answer from the ClusterSetIP that is neither an RST nor a port unreachable".into());
            }
            return Ok(());
        }
        if (o.proto, o.hlen, o.tot_len) != (f.proto, f.hlen, f.tot_len) {
            return Err("a rewrite changed the protocol or a length".into());
        }
        if r_out != r_in {
            return Err(format!(
                "checksums after the rewrite {r_out:?} are not those before {r_in:?} (0xffff = valid; an incremental update keeps them)"
            ));
        }
        if o.proto == UDP && !o.later_fragment {
            let (ci, co) = (be16(frame, ETH_LEN + f.hlen + 6), be16(out, ETH_LEN + o.hlen + 6));
            if (ci == 0) != (co == 0) {
                return Err(format!(
                    "UDP checksum {ci:#06x} became {co:#06x}: a zero one stays zero, no other becomes zero"
                ));
            }
        }
        self.check_tuple(prog, f, &o, verdict, before_reply)
    }

    /// A translated TCP or UDP packet has the tuple its conntrack entry names.
    fn check_tuple(
        &mut self,
        prog: Prog,
        f: &Facts,
        o: &Facts,
        verdict: u32,
        before_reply: Option<CtValue>,
    ) -> Result<(), String> {
        let (Some((sport, dport)), Some((out_src_port, out_dst_port))) = (f.ports, o.ports) else { return Ok(()) };
        let out_tuple = (o.src, out_src_port.to_be(), o.dst, out_dst_port.to_be());
        let dst = ipv4_from_nbo(f.dst);
        if prog == Prog::Ingress && VIPS.contains(&dst) {
            let key = ct_key(f.proto, (f.src, sport), (f.dst, dport), CT_DIR_FORWARD);
            let Some(entry) = self.dp.ct(&key) else { return Err("translated without a forward entry".into()) };
            if out_tuple != (entry.nat_saddr, entry.nat_sport, entry.nat_daddr, entry.nat_dport) {
                return Err(format!("the packet's tuple is not its forward entry's: {entry:?}"));
            }
            let service = (dst, dport, f.proto);
            let backend = (ipv4_from_nbo(o.dst), out_dst_port);
            let backends = self.ports.iter().find(|(k, _)| *k == service).map(|(_, b)| b.clone()).unwrap_or_default();
            if !backends.contains(&backend) {
                return Err(format!("translated to {backend:?}, not a backend of {service:?}"));
            }
            let hairpinned = ipv4_from_nbo(o.src) == HAIRPIN;
            if hairpinned != (verdict == REDIRECT) || (hairpinned != (backend.0 == ipv4_from_nbo(f.src))) {
                return Err("a hairpinned flow (and only one) is source-NATed and sent back to the pod".into());
            }
            if self.seen.len() < 512 {
                self.seen.push(Seen {
                    proto: f.proto,
                    client: (ipv4_from_nbo(f.src), sport),
                    vip: (dst, dport),
                    from: (ipv4_from_nbo(o.src), out_src_port),
                    to: backend,
                });
            }
        } else if let Some(entry) = before_reply {
            if out_tuple != (entry.nat_saddr, entry.nat_sport, entry.nat_daddr, entry.nat_dport) {
                return Err(format!("the reply's tuple is not its reply entry's: {entry:?}"));
            }
            if !VIPS.contains(&ipv4_from_nbo(o.src)) {
                return Err("a translated reply does not come from a ClusterSetIP".into());
            }
        }
        Ok(())
    }

    /// Every entry's peer exists, points back and agrees on service and backend.
    fn check_conntrack(&mut self) -> Result<(), Box<Failure>> {
        let entries = self.dp.all_ct_entries();
        let by_key: std::collections::HashMap<CtKey, CtValue> = entries.iter().copied().collect();
        self.report.ct_checks.0 += 1;
        self.report.ct_checks.1 += entries.len() as u64;
        for (key, value) in &entries {
            let peer_key = key.peer(value);
            let problem = match by_key.get(&peer_key) {
                None => Some("its peer entry is missing".to_string()),
                Some(peer) if peer_key.peer(peer) != *key => {
                    Some(format!("its peer {peer_key:?} points elsewhere: {peer:?}"))
                }
                Some(peer) if (peer.service_id, peer.backend_id) != (value.service_id, value.backend_id) => {
                    Some(format!("its peer {peer:?} names another service or backend"))
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                let what = format!("conntrack pair broken at {key:?} → {value:?}: {problem}");
                return Err(self.fail(Prog::Ingress, "conntrack-check", &[], None, what));
            }
        }
        Ok(())
    }

    /// Each dropped or refused packet is counted under one reason.
    fn check_drop_counters(&mut self) -> Result<(), Box<Failure>> {
        let mut total = 0;
        for reason in &mcs_common::DropReason::ALL {
            let n = self.dp.drops(*reason);
            total += n;
            if n > 0 {
                self.report.drops.insert(format!("{reason:?}"), n);
            }
        }
        if total != self.counted_drops {
            let what = format!(
                "{total} drops counted by the datapath, {} dropped or refused packets seen",
                self.counted_drops
            );
            return Err(self.fail(Prog::Ingress, "counters", &[], None, what));
        }
        Ok(())
    }
}

/// Frames `BPF_PROG_TEST_RUN` refuses (`EINVAL`) before any program runs:
/// shorter than Ethernet, or than the IPv4 or IPv6 header their ethertype
/// announces (the kernel sets up the skb's network header from it).
fn refused_by_test_run(frame: &[u8]) -> bool {
    frame.len() < ETH_LEN
        || match be16(frame, 12) {
            0x0800 => frame.len() < ETH_LEN + 20,
            0x86dd => frame.len() < ETH_LEN + 40,
            _ => false,
        }
}

fn ct_key(protocol: u8, src: (u32, u16), dst: (u32, u16), dir: u8) -> CtKey {
    let key = forward_key((ipv4_from_nbo(src.0), src.1), (ipv4_from_nbo(dst.0), dst.1), protocol);
    CtKey { dir, ..key }
}

/// Recomputes the IPv4 header checksum when the header is there.
fn fix_ip_checksum(frame: &mut [u8]) {
    let Some((hlen, _, _, _)) = ip_at(frame, ETH_LEN, frame.len()) else { return };
    if hlen < 20 || ETH_LEN + hlen > frame.len() {
        return;
    }
    frame[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let sum = !ones_sum(0, &frame[ETH_LEN..ETH_LEN + hlen]);
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&sum.to_be_bytes());
}

/// Recomputes the TCP or UDP checksum of a sound, unfragmented frame.
fn fix_l4_checksum(frame: &mut [u8]) {
    let f = facts(frame);
    if !f.well_formed || f.fragmented || !matches!(f.proto, TCP | UDP) {
        return;
    }
    let (l4, end) = (ETH_LEN + f.hlen, ETH_LEN + f.tot_len);
    let at = l4 + if f.proto == TCP { 16 } else { 6 };
    if f.proto == UDP && be16(frame, at) == 0 {
        return;
    }
    frame[at..at + 2].fill(0);
    let mut sum = !ones_sum(pseudo(frame, ETH_LEN, f.proto, end - l4), &frame[l4..end]);
    if sum == 0 && f.proto == UDP {
        sum = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

// The CT map's protocol split: the fuzzer's keys use these numbers.
const _: () = assert!(proto::TCP == TCP && proto::UDP == UDP);

#[cfg(test)]
mod tests {
    use super::*;

    const A: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 0, 2), 40000);
    const B: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 19, 0, 10), 80);

    #[test]
    fn the_oracle_agrees_with_etherparse_on_built_frames() {
        for spec in [
            PacketSpec::tcp(A, B, SYN),
            PacketSpec::udp(A, B),
            PacketSpec { ip_options: vec![1; 8], ..PacketSpec::udp(A, B) },
        ] {
            let frame = spec.build();
            let f = facts(&frame);
            assert!(f.ipv4 && f.well_formed, "{f:?}");
            assert_eq!(f.ports, Some((A.1, B.1)));
            assert!(residuals(&frame, &f).all_valid(), "{:?}", residuals(&frame, &f));
        }
        let udp = PacketSpec::udp(A, B).build();
        let err = IcmpErrorSpec::frag_needed(ROUTER, A.0, 1400, &udp).build();
        let f = facts(&err);
        assert!(f.well_formed && f.quote.is_some(), "{f:?}");
        let r = residuals(&err, &f);
        assert!(r.all_valid() && r.quoted_l4.is_some(), "{r:?}");
    }

    #[test]
    fn the_oracle_finds_broken_lengths_and_checksums() {
        let mut frame = PacketSpec::tcp(A, B, SYN).build();
        frame[ETH_LEN + 3] = 10; // total length below the header
        assert!(!facts(&frame).well_formed);
        let mut frame = PacketSpec::tcp(A, B, SYN).build();
        frame[ETH_LEN + 20 + 12] = 0x40; // data offset 4
        assert!(!facts(&frame).well_formed);
        let mut frame = PacketSpec::udp(A, B).build();
        let last = frame.len() - 1;
        frame[last] ^= 1;
        let f = facts(&frame);
        assert!(f.well_formed && !residuals(&frame, &f).all_valid());
        fix_l4_checksum(&mut frame);
        assert!(residuals(&frame, &f).all_valid());
    }

    #[test]
    fn one_seed_gives_one_sequence_of_frames() {
        let frames = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..8).map(|_| rng.u64(..)).collect::<Vec<_>>()
        };
        assert_eq!(frames(7), frames(7));
        assert_ne!(frames(7), frames(8));
    }
}
