//! Datapath cost with `BPF_PROG_TEST_RUN`.
//!
//! The object is loaded privately (no pins, nothing attached) and its
//! services are programmed the way the agent programs them: manifests, the
//! pure translation, and one sync through the agent's `Syncer`.
//!
//! The kernel's `repeat` runs the program again and again on the same skb,
//! and a rewrite made by one run is what the next run sees. So the
//! established and reply packets belong to two services that point at each
//! other: `PING:80`'s only backend is `PONG:80` and the other way round, and
//! the conntrack pairs of the two flows are planted so that each one's
//! rewrite is the other one's packet (client:40000 → PING becomes
//! client:61000 → PONG, which becomes client:40000 → PING again). Every
//! repetition thus looks up its entry, checks its backend and rewrites the
//! destination address, both ports and both checksums with the kernel
//! helpers: the figure contains the whole established path, rewrite
//! included. The stats counters are checked after each run (every
//! repetition counted as established, or reverse-NATed), and an even repeat
//! count brings the packet back to what went in.
//!
//! The first packet of a new flow cannot be repeated (after one run the flow
//! exists), so it is measured one packet per syscall, each from a new source
//! address and port, with the kernel's own timing of that single run; the
//! floor and the established packet are measured the same single-shot way, so
//! the ratio compares like with like.
//!
//! Datapath events: the drop path (a packet to a port `PING` does not list)
//! is measured with drop events off, as they are by default, and on. With
//! them on, every repetition writes an event into the ring buffer, so those
//! runs repeat fewer times than the buffer holds ([`EVENT_REPEAT`]) and the
//! buffer is drained, and its events counted, after each run; the events-off
//! runs repeat as many times, so the two rows differ only in the flag.
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use mcs_agent::dataplane::Dataplane as _;
use mcs_agent::{
    dataplane::AyaDataplane,
    ebpf::{self, LoadOptions},
    manifests,
    sync::Syncer,
    translate::{self, Config},
};
use mcs_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SEEN_REPLY, CtKey, CtValue, DatapathConfig, DropReason, GUARD_F_SOURCE_FIB,
    Stat,
    event::{EVENT_DROP, EVENT_FLAGS_MAP, EVENTS_BYTES, EVENTS_DROPS, EVENTS_MAP, Event},
    ipv4_to_nbo, map_names, program_names, proto,
};
use mcs_tests::{
    netns::NetNs,
    packet::{ACK, PacketSpec, SYN},
};
use serde_json::json;

use crate::{
    mgen::{self, Export, Port, Service},
    stats,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_PORT: u16 = 40_000;
/// The client port of the flow to `PONG`: what the flow to `PING` is translated to.
const TRANSLATED_PORT: u16 = 61_000;
/// Two services whose backends are each other (see the module docs).
const PING: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
/// The other one.
const PONG: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 21);
/// A service of 5 clusters x 20 endpoints, for new flows.
const NEW_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// Not a ClusterSetIP.
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 5);
/// `TC_ACT_UNSPEC` (`TCX_NEXT`) as `test_run` reports it: translated, or
/// passed on untouched.
const NEXT: u32 = u32::MAX;
/// `TC_ACT_SHOT`: dropped.
const SHOT: u32 = 2;
/// Repetitions of a drop-path run: fewer than the ring buffer holds events
/// (each takes its 48 bytes and an 8-byte header), so with events on none is lost.
const EVENT_REPEAT: u32 = 4000;
const _: () = assert!((EVENT_REPEAT as usize) < EVENTS_BYTES as usize / (size_of::<Event>() + 8));

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The kernel's repeat count per run.
    pub repeat: u32,
    /// Runs per case (the median is reported).
    pub runs: usize,
    /// Single-shot packets per single-shot case.
    pub single: u32,
    /// Other services loaded beside the measured ones.
    pub fillers: u32,
}

/// One measured case.
#[derive(Clone, Debug)]
pub struct Case {
    /// What was measured.
    pub name: &'static str,
    /// `repeat` or `single-shot`.
    pub method: &'static str,
    /// Median ns per packet.
    pub ns: f64,
    /// Every run's ns per packet (repeat) or the p10/p90 of single shots.
    pub spread: String,
    /// Ratio to the floor measured the same way.
    pub ratio: f64,
}

/// The datapath section of the report.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every case, floors first.
    pub cases: Vec<Case>,
    /// What was loaded.
    pub setup: String,
}

fn program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    ebpf.program(name).with_context(|| format!("program {name} missing"))?.try_into().context("not a tc program")
}

fn stat(ebpf: &Ebpf, s: Stat) -> Result<u64> {
    let array: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(ebpf.map(map_names::STATS).context("stats map")?).context("per-cpu array")?;
    Ok(array.get(&(s as u32), 0).context("reading a stats counter")?.iter().sum())
}

/// One `test_run`: verdict, output, kernel ns per repetition.
fn test_run(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, f64)> {
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..Default::default() })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(result.data_size_out as usize);
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet")]
    let ns = result.duration.as_nanos() as f64;
    Ok((result.return_value, out, ns))
}

/// Runs `frame` `runs` times with `repeat`; checks the verdict, that the
/// packet came out unchanged, and that `counter` (if any) counted every repetition.
fn repeated(
    ebpf: &Ebpf,
    program_name: &str,
    frame: &[u8],
    verdict: u32,
    counter: Option<Stat>,
    s: Settings,
) -> Result<Vec<f64>> {
    let prog = program(ebpf, program_name)?;
    let mut per_run = Vec::with_capacity(s.runs);
    for run in 0..s.runs {
        let before = counter.map(|c| stat(ebpf, c)).transpose()?;
        let (got, out, ns) = test_run(prog, frame, s.repeat)?;
        ensure!(got == verdict, "{program_name}: verdict {got}, expected {verdict} (run {run})");
        ensure!(out == frame, "{program_name}: the packet changed; repetitions would not be alike");
        if let (Some(c), Some(before)) = (counter, before) {
            let delta = stat(ebpf, c)? - before;
            ensure!(
                delta == u64::from(s.repeat),
                "{program_name}: counter {} moved by {delta}, expected {} (every repetition)",
                c.name(),
                s.repeat
            );
        }
        per_run.push(ns);
    }
    Ok(per_run)
}

/// Switches the drop events of the loaded object on or off.
fn set_drop_events(ebpf: &mut Ebpf, on: bool) -> Result<()> {
    let mut flags: Array<&mut MapData, u32> =
        Array::try_from(ebpf.map_mut(EVENT_FLAGS_MAP).context("the event flags map")?).context("an array of u32")?;
    flags.set(0, if on { EVENTS_DROPS } else { 0 }, 0).context("writing the event flags")?;
    Ok(())
}

/// Takes every event out of the ring buffer; returns how many drop events of `reason` it held.
fn drain_events(ebpf: &mut Ebpf, reason: DropReason) -> Result<u64> {
    let mut ring = RingBuf::try_from(ebpf.map_mut(EVENTS_MAP).context("the events map")?).context("a ring buffer")?;
    let mut n = 0;
    while let Some(item) = ring.next() {
        ensure!(item.len() >= size_of::<Event>(), "an event of {} bytes", item.len());
        // SAFETY: the programs write whole `Event`s (checked above); plain integers.
        let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if event.kind == EVENT_DROP && u32::from(event.reason) == reason as u32 {
            n += 1;
        }
    }
    Ok(n)
}

/// The drop path of `frame` (dropped as `reason`), `runs` runs of
/// [`EVENT_REPEAT`], with drop events off or on; checks that each run wrote
/// one event per repetition (on) or none (off).
fn drops_with_events(ebpf: &mut Ebpf, frame: &[u8], reason: DropReason, on: bool, runs: usize) -> Result<Vec<f64>> {
    set_drop_events(ebpf, on)?;
    drain_events(ebpf, reason)?;
    let mut per_run = Vec::with_capacity(runs);
    for run in 0..runs {
        let (got, _, ns) = test_run(program(ebpf, program_names::FROM_POD)?, frame, EVENT_REPEAT)?;
        ensure!(got == SHOT, "drop path: verdict {got}, expected {SHOT} (run {run})");
        let events = drain_events(ebpf, reason)?;
        let want = if on { u64::from(EVENT_REPEAT) } else { 0 };
        ensure!(
            events == want,
            "drop path, events {}: {events} events, expected {want}",
            if on { "on" } else { "off" }
        );
        per_run.push(ns);
    }
    set_drop_events(ebpf, false)?;
    Ok(per_run)
}

/// Single-shot runs of `frames(i)`, returning each run's kernel ns.
fn single_shots(ebpf: &Ebpf, program_name: &str, n: u32, frame: impl Fn(u32) -> Vec<u8>) -> Result<Vec<f64>> {
    single_shots_on(ebpf, program_name, None, n, frame)
}

/// [`single_shots`], the packets arriving on `ifindex` of the calling
/// thread's namespace when given.
fn single_shots_on(
    ebpf: &Ebpf,
    program_name: &str,
    ifindex: Option<u32>,
    n: u32,
    frame: impl Fn(u32) -> Vec<u8>,
) -> Result<Vec<f64>> {
    let prog = program(ebpf, program_name)?;
    let ctx = ifindex.map(mcs_tests::datapath::skb_arriving_on);
    let mut v = Vec::with_capacity(n as usize);
    let deadline = Instant::now() + Duration::from_mins(2);
    for i in 0..n {
        let frame = frame(i);
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ctx_in: ctx.as_ref().map(<[u8; mcs_tests::datapath::SK_BUFF_LEN]>::as_slice),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet")]
        let ns = result.duration.as_nanos() as f64;
        let verdict = result.return_value;
        ensure!(verdict == NEXT, "{program_name}: verdict {verdict} on single shot {i}");
        v.push(ns);
        if Instant::now() > deadline {
            break;
        }
    }
    Ok(v)
}

fn program_services(ebpf: &mut Ebpf, fillers: u32) -> Result<String> {
    let mut objects = Vec::new();
    for i in 0..fillers {
        objects.extend(mgen::filler(i, mgen::Shape { ports: 1, clusters: 1, per_cluster: 2 }).objects());
    }
    let pair = |name: &str, vip, backend| Service {
        name: name.into(),
        vip,
        ports: vec![Port::new("http", 80, 80)],
        exports: vec![Export { cluster: "c0".into(), addresses: vec![backend] }],
    };
    let wide = mgen::filler(fillers, mgen::Shape { ports: 1, clusters: 5, per_cluster: 20 });
    let wide = Service { name: "wide".into(), vip: NEW_VIP, ports: vec![Port::new("p0", 80, 8080)], ..wide };
    objects.extend(pair("ping", PING, PONG).objects());
    objects.extend(pair("pong", PONG, PING).objects());
    objects.extend(wide.objects());
    let text = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": objects}))?;
    let (inputs, errors) = manifests::parse_str(Path::new("bench.json"), &text);
    ensure!(errors.is_empty(), "generated manifests rejected: {errors:?}");
    let config = Config { cluster_id: "c0".into(), ..Config::default() };
    let (desired, report) = translate::translate(&inputs, &config);
    ensure!(report.skipped.is_empty(), "imports skipped: {:?}", report.skipped);
    let mut dp = AyaDataplane::from_ebpf(ebpf)?;
    let outcome = Syncer::new().sync(&mut dp, &desired)?;
    if !outcome.errors.is_empty() {
        bail!("sync failed: {:?}", outcome.errors);
    }
    let ids = |vip: Ipv4Addr| -> Result<(u32, u32)> {
        let key = mcs_common::ServiceKey::new(vip, 80, proto::TCP);
        let service_id =
            dp.services()?.into_iter().find(|(k, _)| *k == key).context("the ping-pong service entry")?.1.service_id;
        let backend_id = dp
            .backends()?
            .into_iter()
            .find(|(_, b)| b.service_id == service_id)
            .context("the ping-pong service's backend")?
            .0;
        Ok((service_id, backend_id))
    };
    plant_ping_pong(ebpf, [ids(PING)?, ids(PONG)?])?;
    Ok(format!(
        "{} service ports loaded through the agent's sync ({fillers} services of 2 endpoints, one of 5 clusters x 20 \
         endpoints for new flows, two whose backends are each other); {} map writes",
        desired.services.len(),
        outcome.writes
    ))
}

/// Plants the established flows client:40000 → PING:80 (translated to
/// client:61000 → PONG:80) and client:61000 → PONG:80 (translated to
/// client:40000 → PING:80), both entries of each, with the service and
/// backend ids `(service, backend)` of each service (PING's, then PONG's).
fn plant_ping_pong(ebpf: &mut Ebpf, ids: [(u32, u32); 2]) -> Result<()> {
    let mut ct: aya::maps::HashMap<&mut MapData, CtKey, CtValue> =
        aya::maps::HashMap::try_from(ebpf.map_mut(map_names::CONNTRACK_TCP).context("the TCP conntrack map")?)?;
    let client = ipv4_to_nbo(CLIENT);
    let now = {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
    };
    for ((vip, port), (to, to_port), (service_id, backend_id)) in
        [((PING, CLIENT_PORT), (PONG, TRANSLATED_PORT), ids[0]), ((PONG, TRANSLATED_PORT), (PING, CLIENT_PORT), ids[1])]
    {
        let forward = CtKey {
            saddr: client,
            daddr: ipv4_to_nbo(vip),
            sport: port.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            dir: CT_DIR_FORWARD,
            pad: [0; 2],
        };
        let forward_value = CtValue {
            nat_saddr: client,
            nat_daddr: ipv4_to_nbo(to),
            nat_sport: to_port.to_be(),
            nat_dport: 80u16.to_be(),
            backend_id,
            service_id,
            own_flags: 0,
            peer_flags: CT_F_SEEN_REPLY,
            // `test_run` delivers on `lo`: the flow's client interface, so
            // the established path's interface check passes as a pod's would.
            client_ifindex: 1,
            created_ns: now,
            last_seen_ns: now,
        };
        let reply = forward.peer(&forward_value);
        let reply_value = CtValue {
            nat_saddr: forward.daddr,
            nat_daddr: forward.saddr,
            nat_sport: forward.dport,
            nat_dport: forward.sport,
            own_flags: CT_F_SEEN_REPLY,
            peer_flags: 0,
            ..forward_value
        };
        ensure!(reply.dir == CT_DIR_REPLY, "the peer of a forward key is a reply key");
        ct.insert(forward, forward_value, 0).context("planting a forward entry")?;
        ct.insert(reply, reply_value, 0).context("planting a reply entry")?;
    }
    Ok(())
}

/// The new-flow single shots with source validation on (the agent's
/// default): the packets arrive on a veth of a namespace of the bench's own
/// that routes their sources back out of it, so each new flow pays the FIB
/// lookup and passes it. Returns each run's kernel ns.
fn new_flows_validated(s: Settings, ct: u32) -> Result<Vec<f64>> {
    let ns = NetNs::new(&mcs_tests::netns::unique_prefix("bench-guard"));
    ns.sysctl("net.ipv4.ip_forward", "1");
    ns.ip(&["link", "add", "pod0", "type", "veth", "peer", "name", "pod0p"]);
    ns.ip(&["link", "set", "pod0p", "up"]);
    ns.ip(&["link", "set", "pod0", "up"]);
    ns.ip(&["route", "add", "198.18.0.0/24", "dev", "pod0"]);
    let ifindex = ns.ifindex("pod0");
    ns.enter(|| {
        let config = DatapathConfig { conntrack_max: ct, ..DatapathConfig::DEFAULT };
        ensure!(config.guard_flags & GUARD_F_SOURCE_FIB != 0, "source validation is the default");
        let mut ebpf = ebpf::load(&LoadOptions { config, ..LoadOptions::default() })?;
        program_services(&mut ebpf, s.fillers)?;
        let before = stat(&ebpf, Stat::ForwardNew)?;
        let v = single_shots_on(&ebpf, program_names::FROM_POD, Some(ifindex), s.single, new_flow_frame)?;
        let delta = stat(&ebpf, Stat::ForwardNew)? - before;
        ensure!(delta == v.len() as u64, "validated new flows: {delta} counted as new of {} sent", v.len());
        Ok(v)
    })
}

fn new_flow_frame(i: u32) -> Vec<u8> {
    let src = Ipv4Addr::new(198, 18, 0, u8::try_from(10 + i / 60_000).unwrap_or(250));
    let port = 1024 + u16::try_from(i % 60_000).unwrap_or(0);
    PacketSpec::tcp((src, port), (NEW_VIP, 80), SYN).build()
}

/// Runs the datapath benchmarks.
///
/// # Errors
/// When the object cannot be loaded or a check fails.
pub fn run(s: Settings) -> Result<Report> {
    // Room for every single-shot flow (two entries each) without eviction.
    let ct = (s.single.saturating_mul(4)).max(mcs_common::limits::CONNTRACK_MAX);
    // Source validation off: `test_run` delivers on `lo` of this namespace,
    // where no pod address routes (the netns tests cover the check).
    let config = DatapathConfig { conntrack_max: ct, guard_flags: 0, ..DatapathConfig::DEFAULT };
    let mut ebpf = ebpf::load(&LoadOptions { config, ..LoadOptions::default() })?;
    let setup = program_services(&mut ebpf, s.fillers)?;

    ensure!(s.repeat.is_multiple_of(2), "an even repeat count brings the ping-pong packet back to itself");
    let established = PacketSpec::tcp((CLIENT, CLIENT_PORT), (PING, 80), ACK).build();
    // The answer of the backend PONG to the flow to PING, which becomes the
    // answer of PING to the flow to PONG, and back.
    let reply = PacketSpec::tcp((PONG, 80), (CLIENT, TRANSLATED_PORT), ACK).build();
    let other = PacketSpec::tcp((CLIENT, CLIENT_PORT), (OTHER, 80), ACK).build();
    let (v, out, _) = test_run(program(&ebpf, program_names::FROM_POD)?, &established, 1)?;
    ensure!(v == NEXT && out != established, "the planted flow is translated: verdict {v}");

    let noop_verdict = test_run(program(&ebpf, program_names::NOOP)?, &established, 1)?.0;
    let floor = repeated(&ebpf, program_names::NOOP, &established, noop_verdict, None, s)?;
    let plain = repeated(&ebpf, program_names::FROM_POD, &other, NEXT, None, s)?;
    let est = repeated(&ebpf, program_names::FROM_POD, &established, NEXT, Some(Stat::ForwardEstablished), s)?;
    let rev = repeated(&ebpf, program_names::TO_POD, &reply, NEXT, Some(Stat::ReverseNat), s)?;
    // A SYN to a port PING does not list: dropped as unknown-port, unchanged, so it repeats.
    let unlisted = PacketSpec::tcp((CLIENT, CLIENT_PORT), (PING, 81), SYN).build();
    let event_runs = s.runs * 6;
    let mut drops_off = Vec::new();
    let mut drops_on = Vec::new();
    // Interleaved, so a change of the machine's load falls on both alike.
    for _ in 0..event_runs / 2 {
        drops_off.extend(drops_with_events(&mut ebpf, &unlisted, DropReason::UnknownPort, false, 2)?);
        drops_on.extend(drops_with_events(&mut ebpf, &unlisted, DropReason::UnknownPort, true, 2)?);
    }

    let floor1 = single_shots(&ebpf, program_names::NOOP, s.single, |_| established.clone())?;
    // Single shots: each alone, so the ping-pong needs no even count.
    let est1 = single_shots(&ebpf, program_names::FROM_POD, s.single, |_| established.clone())?;
    let new_before = stat(&ebpf, Stat::ForwardNew)?;
    let new1 = single_shots(&ebpf, program_names::FROM_POD, s.single, new_flow_frame)?;
    let new_delta = stat(&ebpf, Stat::ForwardNew)? - new_before;
    ensure!(
        new_delta == new1.len() as u64,
        "new flows: {new_delta} counted as new of {} sent; the measurement would mix paths",
        new1.len()
    );
    drop(ebpf);
    let validated = new_flows_validated(s, ct)?;

    let floor_r = stats::median(&floor);
    let floor_s = stats::median(&floor1);
    let repeat_case = |name, v: &[f64]| {
        let ns = stats::median(v);
        Case {
            name,
            method: "repeat",
            ns,
            spread: v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" "),
            ratio: ns / floor_r,
        }
    };
    let single_case = |name, v: &[f64]| {
        let p = stats::percentiles(v, &[10.0, 50.0, 90.0]);
        Case {
            name,
            method: "single-shot",
            ns: p[1],
            spread: format!("p10 {:.0} p90 {:.0}", p[0], p[2]),
            ratio: p[1] / floor_s,
        }
    };
    let cases = vec![
        repeat_case("no-op program (floor)", &floor),
        repeat_case("non-service packet", &plain),
        repeat_case("established flow (DNAT and source-port rewrite)", &est),
        repeat_case("reply (reverse NAT rewrite)", &rev),
        repeat_case("drop, unlisted port, events off", &drops_off),
        repeat_case("drop, unlisted port, events on (one per packet)", &drops_on),
        single_case("no-op program (single-shot floor)", &floor1),
        single_case("established flow (single-shot)", &est1),
        single_case("first packet of a new flow", &new1),
        single_case("first packet of a new flow, source validated (the default)", &validated),
    ];
    Ok(Report {
        cases,
        setup: format!(
            "{setup}. repeat = {} x {} runs (median); the drop rows {EVENT_REPEAT} x {} runs, events off and on \
             interleaved, the ring buffer drained after each; single-shot = {} packets, one per BPF_PROG_TEST_RUN, \
             the kernel's timing of each (median)",
            s.repeat,
            s.runs,
            s.runs * 6,
            s.single
        ),
    })
}
