//! The maps themselves: pins adopted by a second load and read by
//! `inspect`, pins of another layout refused or removed, capacities from
//! the flags.
use std::{net::Ipv4Addr, path::PathBuf};

use aya::{
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use mcs_agent::{
    dataplane::{AyaDataplane, Dataplane as _},
    ebpf::{self, LoadOptions},
    sync::Syncer,
    translate::DesiredState,
};
use mcs_common::{Backend, DatapathConfig, map_names, program_names};
use mcs_tests::datapath::{NEXT, ServicePort, TABLE_SIZE};

use super::{BACKENDS, CLIENT_EP, OTHER_VIP, VIP, syn};

/// Removes a pin directory on drop, also when the test panics.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        Self(PathBuf::from(format!("/sys/fs/bpf/mcs-test-{tag}-{}", std::process::id())))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = ebpf::cleanup(&self.0) {
            eprintln!("cleaning up {}: {e:#}", self.0.display());
        }
    }
}

fn desired(ports: impl IntoIterator<Item = ServicePort>) -> DesiredState {
    let mut desired = DesiredState::default();
    desired.services.extend(ports.into_iter().map(ServicePort::into_desired));
    desired
}

fn run_syn(ebpf: &aya::Ebpf) -> u32 {
    let prog: &SchedClassifier = ebpf.program(program_names::FROM_POD).expect("program").try_into().expect("tc");
    let frame = syn(CLIENT_EP, (VIP, 80));
    let mut out = vec![0u8; frame.len() + 64];
    prog.test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..TestRunOptions::default() })
        .expect("test_run")
        .return_value
}

#[test]
fn pinned_maps_are_adopted_by_a_second_load_and_read_by_inspect() {
    let pins = PinDir::new("dp");
    let options = LoadOptions {
        pin_path: Some(pins.0.clone()),
        config: DatapathConfig { maglev_table_size: TABLE_SIZE, ..DatapathConfig::DEFAULT },
        ..LoadOptions::default()
    };
    let mut first = ebpf::load(&options).expect("load pinned");
    let mut dp = AyaDataplane::from_ebpf(&mut first).expect("maps");
    let desired = desired([ServicePort::tcp(VIP, 80).ready(&BACKENDS)]);
    assert!(Syncer::new().sync(&mut dp, &desired).expect("sync").errors.is_empty());
    assert_eq!(run_syn(&first), NEXT);

    // A restarted agent: same pins, a fresh syncer. Nothing to rewrite.
    let mut second = ebpf::load(&options).expect("load adopting the pins");
    let mut adopted = AyaDataplane::from_ebpf(&mut second).expect("maps");
    let outcome = Syncer::new().sync(&mut adopted, &desired).expect("sync");
    assert!(outcome.full && outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!((outcome.writes, outcome.tables_written), (0, 0), "tables read back and found unchanged");

    let snapshot = mcs_agent::inspect::Snapshot::from_pins(&pins.0, true).expect("inspect the pins");
    let v = mcs_agent::inspect::to_json(&snapshot);
    let service = &v["services"][0];
    assert_eq!((service["ip"].as_str(), service["port"].as_u64()), (Some("198.19.0.10"), Some(80)), "{v:#}");
    // Three backends: the ladder's size for them, below the largest size.
    let size = mcs_agent::maglev::table_size_for(BACKENDS.len(), TABLE_SIZE);
    assert_eq!(service["tableSize"], size);
    let backends = service["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 3);
    let slots: u64 = backends.iter().map(|b| b["slots"].as_u64().expect("slots")).sum();
    assert_eq!(slots, u64::from(size));
    assert!(backends.iter().all(|b| ["c1", "c2"].contains(&b["cluster"].as_str().expect("cluster"))), "{v:#}");
    assert_eq!(service["counters"]["newFlows"], 1);
    let flows = v["conntrack"].as_array().expect("flows");
    assert_eq!(flows.len(), 1, "{v:#}");
    assert_eq!(flows[0]["client"], "198.18.0.2:40000");
    let translated = flows[0]["translatedClient"].as_str().expect("translated");
    let port: u16 = translated.strip_prefix("198.18.0.2:").and_then(|p| p.parse().ok()).expect("client:port");
    assert!((1024..=32_767).contains(&port), "a port of the translated range: {v:#}");
    assert_eq!((flows[0]["state"].as_str(), flows[0]["expired"].as_bool()), (Some("syn"), Some(false)));
    assert_eq!(flows[0]["replyEntry"], true);
    drop((first, second, dp, adopted));
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_and_an_obsolete_one_removed() {
    let pins = PinDir::new("layout");
    std::fs::create_dir_all(&pins.0).expect("pin directory");
    let options = LoadOptions { pin_path: Some(pins.0.clone()), ..LoadOptions::default() };
    // The backends map of layout 1: a hash of the same key and value sizes.
    let old = || -> HashMap<MapData, u32, Backend> { HashMap::create(16, 0).expect("create a map") };
    old().pin(pins.0.join(map_names::BACKENDS)).expect("pin it");
    let error = format!("{:#}", ebpf::load(&options).expect_err("a hash where an array belongs"));
    assert!(error.contains(map_names::BACKENDS) && error.contains("cleanup"), "{error}");
    std::fs::remove_file(pins.0.join(map_names::BACKENDS)).expect("unpin");

    // Layout 1's single conntrack map: nothing reads it any more.
    old().pin(pins.0.join("MCS_CT")).expect("pin it");
    let loaded = ebpf::load(&options).expect("load");
    assert!(!pins.0.join("MCS_CT").exists(), "the obsolete pin is gone");
    drop(loaded);
}

#[test]
fn map_capacities_come_from_the_flags_and_a_full_map_is_a_per_service_error() {
    let args = ebpf::DatapathArgs {
        backends_max: 4,
        services_max: 64,
        service_ports_max: 8,
        conntrack_max: 1024,
        conntrack_max_non_tcp: 512,
        maglev_slots_max: 4096,
        ..Default::default()
    };
    let options = LoadOptions {
        config: DatapathConfig { maglev_table_size: TABLE_SIZE, ..args.load_options(None).config },
        ..args.load_options(None)
    };
    let mut ebpf = ebpf::load(&options).expect("load with small maps");
    let max_entries = |name: &str| {
        use aya::maps::Map;
        match ebpf.map(name).expect(name) {
            Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::HashOfMaps(d)
            | Map::Array(d)
            | Map::PerCpuArray(d)
            | Map::PerCpuHashMap(d) => d.info().expect("map info").max_entries(),
            other => panic!("{name} is an unexpected map type: {other:?}"),
        }
    };
    assert_eq!(
        [
            map_names::BACKENDS,
            map_names::SERVICES,
            map_names::MAGLEV,
            map_names::SERVICE_STATS,
            map_names::CONNTRACK_TCP,
            map_names::CONNTRACK_ANY
        ]
        .map(max_entries),
        [4, 64, 1, 8, 1024, 512],
        "MCS_MAGLEV holds one entry: the flat array"
    );
    let mut dp = AyaDataplane::from_ebpf(&mut ebpf).expect("maps");
    assert_eq!(dp.maglev_slots(), 4096, "the flat Maglev array has --maglev-slots-max slots");
    let two: Vec<(Ipv4Addr, u16)> = (1..=2).map(|i| (Ipv4Addr::new(198, 18, 9, i), 8080)).collect();
    let desired = desired([
        ServicePort::tcp(VIP, 80).ready(&BACKENDS).named("fits"),
        ServicePort::tcp(OTHER_VIP, 80).ready(&two).named("big"),
    ]);
    let outcome = Syncer::new().sync(&mut dp, &desired).expect("sync");
    // Ids 1 to 3 fit the 4 elements (id 0 is never used); the second port's do not.
    assert!(outcome.errors.iter().any(|e| e.contains("ServiceImport demo/big port 80/TCP")), "{outcome:?}");
    assert!(!outcome.errors.iter().any(|e| e.contains("demo/fits")), "{outcome:?}");
    assert_eq!(run_syn(&ebpf), NEXT, "the port that fits is live");
}

#[test]
fn pins_and_their_directories_are_root_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let pins = PinDir::new("modes");
    let options = LoadOptions { pin_path: Some(pins.0.clone()), ..LoadOptions::default() };
    let loaded = ebpf::load(&options).expect("load pinned");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("a pin").permissions().mode() & 0o7777;
    assert_eq!(mode(&pins.0), ebpf::PIN_DIR_MODE, "the pin directory");
    assert_eq!(mode(&pins.0.join("links")), ebpf::PIN_DIR_MODE, "the links directory");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&pins.0).expect("list pins") {
        let path = entry.expect("an entry").path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{} is read-write for root only", path.display());
            seen.push(entry_name(&path));
        }
    }
    for name in [map_names::SERVICES, map_names::BACKENDS, map_names::CONNTRACK_TCP, map_names::AFFINITY] {
        assert!(seen.iter().any(|s| s == name), "{name} is pinned (and so checked): {seen:?}");
    }
    drop(loaded);
}

fn entry_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[test]
fn the_services_map_read_in_batches_holds_what_iterating_it_reads() {
    use mcs_common::{ServiceKey, ServiceValue};
    let pins = PinDir::new("batch");
    let options = LoadOptions { pin_path: Some(pins.0.clone()), services_max: 16_384, ..LoadOptions::default() };
    let mut ebpf = ebpf::load(&options).expect("load pinned");
    let mut dp = AyaDataplane::from_ebpf(&mut ebpf).expect("maps");
    // More entries than one batch (4096), with holes left by deletions.
    let key = |i: u32| ServiceKey::new(Ipv4Addr::from(0xC612_0000 | i), 80 + u16::try_from(i % 7).expect("small"), 6);
    for i in 0..10_000u32 {
        let value = ServiceValue { service_id: i + 1, affinity_timeout: i, ..ServiceValue::default() };
        dp.put_service(key(i), value).expect("put an entry");
    }
    for i in (0..10_000u32).step_by(3) {
        dp.delete_service(&key(i)).expect("delete an entry");
    }
    let mut batched = dp.services().expect("read in batches");
    batched.sort_unstable_by_key(|(k, _)| *k);
    let pinned = MapData::from_pin(pins.0.join(map_names::SERVICES)).expect("the pinned services map");
    let map: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(aya::maps::Map::HashMap(pinned)).expect("a hash map");
    let mut iterated: Vec<(ServiceKey, ServiceValue)> = map.iter().map(|r| r.expect("an entry")).collect();
    iterated.sort_unstable_by_key(|(k, _)| *k);
    assert_eq!(batched.len(), 6_666, "10,000 put, every third deleted");
    assert!(batched == iterated, "the batch read differs from the iteration");
    assert!(
        batched.iter().all(|(k, v)| *k == key(v.service_id - 1) && v.affinity_timeout == v.service_id - 1),
        "every value belongs to its key"
    );
    drop((dp, ebpf));
}
