//! Full maps: services, Maglev tables and backends at capacity are a clear,
//! per-service error and never a half-programmed service port (every live
//! entry has its whole table, every slot a backend of its own port, and each
//! port is either translated or not there at all); room made later is used
//! by the next sync without a restart. Conntrack at capacity is the
//! documented LRU: new flows always get entries, old ones are evicted, and an
//! evicted flow's next packet is picked up again.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use mcs_agent::{
    dataplane::{AyaDataplane, Dataplane as _},
    ebpf::{self, DatapathArgs, LoadOptions},
    sync::Syncer,
    translate::DesiredState,
};
use mcs_common::{DatapathConfig, DropReason, Stat, program_names};
use mcs_tests::{
    datapath::{DROP, Datapath, NEXT, ServicePort, TABLE_SIZE},
    packet::{ACK, PacketSpec, SYN, TCP, parse_and_verify},
};

use super::CLIENT;

const FROM_POD: &str = program_names::FROM_POD;

/// Service port `i`: its own ClusterSetIP, two backends of its own.
fn port(i: u8) -> ServicePort {
    let backends = [(Ipv4Addr::new(198, 18, 10 + i, 1), 8080), (Ipv4Addr::new(198, 18, 10 + i, 2), 8080)];
    ServicePort::tcp(vip(i), 80).ready(&backends).named(&format!("svc{i}"))
}

fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, 10 + i)
}

fn load(args: &DatapathArgs) -> Datapath {
    let options = args.load_options(None);
    Datapath::load_options(&LoadOptions {
        config: DatapathConfig { maglev_table_size: TABLE_SIZE, ..options.config },
        ..options
    })
}

fn desired(ports: impl IntoIterator<Item = u8>) -> DesiredState {
    let mut desired = DesiredState::default();
    desired.services.extend(ports.into_iter().map(|i| port(i).into_desired()));
    desired
}

/// Checks that no service port in the maps is half-programmed, and returns
/// which of `wanted` are live (translated by the program to one of their own
/// backends); the others must not be translated at all.
fn live_ports(dp: &mut Datapath, wanted: &[u8]) -> Vec<u8> {
    let backends: BTreeMap<u32, mcs_common::Backend> = dp.dp.backends().expect("read backends").into_iter().collect();
    for (key, value) in dp.dp.services().expect("read services") {
        if key.port == 0 {
            continue; // A ClusterSetIP's wildcard entry.
        }
        assert!(value.table_size > 0, "{key}: every port here has backends");
        let table = dp
            .dp
            .table(value.service_id)
            .expect("read table")
            .unwrap_or_else(|| panic!("{key}: live without its table"));
        assert!(table.len() >= value.table_size as usize, "{key}: its entry allows slots its table lacks");
        for slot in &table {
            let b =
                backends.get(slot).unwrap_or_else(|| panic!("{key}: a slot names backend {slot}, which is missing"));
            assert_eq!(b.service_id, value.service_id, "{key}: a slot names another port's backend");
        }
    }
    let mut live = Vec::new();
    for &i in wanted {
        let (verdict, out) =
            dp.run(FROM_POD, &PacketSpec::tcp((CLIENT, 41_000 + u16::from(i)), (vip(i), 80), SYN).build());
        if verdict == NEXT && out[30..34] != vip(i).octets() {
            let to = parse_and_verify(&out).destination();
            assert!(to.0.octets()[2] == 10 + i, "svc{i} was translated to {to:?}, not one of its backends");
            live.push(i);
        } else {
            // Not there: its ClusterSetIP is unknown (untouched) or lists no such port.
            assert!(verdict == NEXT || verdict == DROP, "svc{i}: verdict {verdict}");
        }
    }
    live
}

#[test]
fn full_service_table_and_backend_maps_fail_per_port_and_recover_when_room_is_made() {
    // Each setting leaves room for exactly two of the four ports (two
    // backends each; a port takes an entry and a wildcard, one table).
    let base = DatapathArgs { backends_max: 64, services_max: 64, service_ports_max: 64, ..DatapathArgs::default() };
    let cases = [
        ("backends", DatapathArgs { backends_max: 5, ..base }), // ids 1..=4
        ("services", DatapathArgs { services_max: 4, ..base }),
        ("tables", DatapathArgs { service_ports_max: 3, ..base }), // service ids 1 and 2
    ];
    for (what, args) in cases {
        let mut dp = load(&args);
        let mut syncer = Syncer::new();
        let outcome = syncer.sync(&mut dp.dp, &desired(0..4)).expect("sync");
        let live = live_ports(&mut dp, &[0, 1, 2, 3]);
        assert_eq!(live.len(), 2, "{what}: two ports fit: {outcome:?}");
        for i in 0..4u8 {
            let named = outcome.errors.iter().any(|e| e.contains(&format!("ServiceImport demo/svc{i} port 80/TCP")));
            assert_eq!(named, !live.contains(&i), "{what}: svc{i} is live or named in an error: {:?}", outcome.errors);
        }
        // Room is made: the live ports go. The sync adds before it deletes
        // (a packet never sees a half-written service), so the newcomers may
        // fail once more in that sync; and a removed port's backends keep
        // their elements for the removal grace. The next sync after the
        // grace (the run loop retries failed syncs) programs them.
        let rest: Vec<u8> = (0..4).filter(|i| !live.contains(i)).collect();
        let start = Instant::now();
        let shrink = syncer.sync_at(&mut dp.dp, &desired(rest.iter().copied()), start).expect("sync");
        assert_eq!(live_ports(&mut dp, &[0, 1, 2, 3]).len() + shrink.errors.len().min(2), 2, "{what}: {shrink:?}");
        let after_grace = start + Duration::from_secs(31);
        let outcome = syncer.sync_at(&mut dp.dp, &desired(rest.iter().copied()), after_grace).expect("sync");
        assert!(outcome.errors.is_empty(), "{what}: {outcome:?}");
        assert_eq!(live_ports(&mut dp, &[0, 1, 2, 3]), rest, "{what}: the ports that did not fit are live now");
    }
}

#[test]
fn a_full_conntrack_map_evicts_old_flows_and_never_refuses_a_new_one() {
    let args = DatapathArgs { conntrack_max: 64, ..DatapathArgs::default() };
    let mut dp = load(&args);
    dp.program(port(0));
    // 200 connections, two entries each, into 64 entries.
    let flows: Vec<u16> = (0..200).map(|i| 42_000 + i).collect();
    for &p in &flows {
        let (verdict, out) = dp.run(FROM_POD, &PacketSpec::tcp((CLIENT, p), (vip(0), 80), SYN).build());
        assert_eq!(verdict, NEXT, "the SYN from port {p} is translated");
        assert_eq!(parse_and_verify(&out).destination().0.octets()[2], 10);
    }
    assert_eq!((dp.drops(DropReason::CtInsertFailed), dp.total_drops()), (0, 0), "no flow refused");
    let entries = dp.ct_entries(TCP).len();
    assert!(entries <= 64, "the LRU holds at most its size: {entries}");
    // The first flow was evicted; its next segment is picked up mid-stream
    // and translated again, and tracked.
    assert!(dp.flow((CLIENT, flows[0]), (vip(0), 80), TCP).is_none(), "the oldest flow was evicted");
    let (verdict, out) = dp.run(FROM_POD, &PacketSpec::tcp((CLIENT, flows[0]), (vip(0), 80), ACK).build());
    assert_eq!(verdict, NEXT);
    assert_eq!(parse_and_verify(&out).destination().0.octets()[2], 10, "to a backend of its port");
    assert!(dp.flow((CLIENT, flows[0]), (vip(0), 80), TCP).is_some(), "tracked again");
    assert!(dp.stat(Stat::ForwardNew) >= 201);
}

/// Removes a pin directory on drop, also when the test panics.
struct Cleanup<'a>(&'a std::path::Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(e) = ebpf::cleanup(self.0) {
            eprintln!("cleaning up {}: {e:#}", self.0.display());
        }
    }
}

/// A restarted agent adopts pinned maps as they are, whatever its flags say:
/// a full backends array stays full (and the agent sees its real size, so no
/// table names a backend past its end).
#[test]
fn capacities_are_the_maps_own_when_pins_are_adopted() {
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/mcs-test-capacity-{}", std::process::id()));
    let _cleanup = Cleanup(&pins);
    let args = DatapathArgs { backends_max: 5, ..DatapathArgs::default() };
    let options = args.load_options(Some(pins.clone()));
    let options = LoadOptions { config: DatapathConfig { maglev_table_size: TABLE_SIZE, ..options.config }, ..options };
    let mut first = ebpf::load(&options).expect("load pinned");
    let mut dp = AyaDataplane::from_ebpf(&mut first).expect("maps");
    let outcome = Syncer::new().sync(&mut dp, &desired(0..4)).expect("sync");
    let failed_ports =
        |o: &mcs_agent::sync::SyncOutcome| o.errors.iter().filter(|e| e.contains("ServiceImport demo/svc")).count();
    assert_eq!(failed_ports(&outcome), 2, "{outcome:?}");
    // A second agent, asked for more room, adopts the pinned array as it is
    // (its size is the kernel's, not the flag's): the same two ports fail,
    // and none is half-programmed.
    let bigger = DatapathArgs { backends_max: 64, ..args }.load_options(Some(pins.clone()));
    let mut second = ebpf::load(&LoadOptions { config: options.config, ..bigger }).expect("adopt the pins");
    let mut adopted = AyaDataplane::from_ebpf(&mut second).expect("maps");
    let outcome = Syncer::new().sync(&mut adopted, &desired(0..4)).expect("sync");
    let prog: &SchedClassifier = second.program(FROM_POD).expect("program").try_into().expect("tc");
    let mut verdicts = Vec::new();
    for i in 0..4u8 {
        let frame = PacketSpec::tcp((CLIENT, 43_000), (vip(i), 80), SYN).build();
        let mut out = vec![0u8; frame.len() + 64];
        let run = prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        });
        let verdict = run.expect("test_run").return_value;
        verdicts.push((verdict, verdict == NEXT && out[30..34] != vip(i).octets()));
    }
    let live = verdicts.iter().filter(|(_, translated)| *translated).count();
    assert_eq!(live, 2, "two ports translate, two are not there: {verdicts:?}");
    assert_eq!(
        Datapath::drops_of(&second, DropReason::BackendMissing),
        0,
        "no slot names a backend the datapath cannot see"
    );
    assert_eq!(failed_ports(&outcome), 2, "the adopted map is as full as it was: {outcome:?}");
    drop(first);
}
