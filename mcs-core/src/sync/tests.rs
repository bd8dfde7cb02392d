//! Sync tests against the fake dataplane. Besides the end state, they replay
//! every write one at a time and check what a packet would see after each
//! (`FakeDataplane::check_consistent`): no entry may name a missing table,
//! a table slot beyond the live table, or a missing backend.
use std::net::Ipv4Addr;

use mcs_common::{BACKEND_F_REMOVED, BACKEND_F_TERMINATING, SERVICE_F_FALLBACK, proto};

use super::*;
use crate::{
    fake::{FakeDataplane, Op},
    testkit::{PortBuilder, desired_port},
    translate::{DesiredBackend, Protocol},
};

const VIP_A: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const VIP_B: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);

fn backend(cluster: &str, ip: [u8; 4], port: u16) -> DesiredBackend {
    DesiredBackend { cluster: cluster.into(), ip: Ipv4Addr::from(ip), port, state: EndpointState::Ready }
}

fn terminating(cluster: &str, ip: [u8; 4], port: u16) -> DesiredBackend {
    DesiredBackend { state: EndpointState::Terminating, ..backend(cluster, ip, port) }
}

/// A desired state built port by port; every port belongs to `demo/svc-<vip>`.
#[derive(Default)]
struct Desired(DesiredState);

/// A port's key: (`ClusterSetIP`, port, protocol).
type Key = (Ipv4Addr, u16, Protocol);

/// A port of `demo/svc-<vip>` with no backends yet.
fn svc(vip: Ipv4Addr) -> PortBuilder {
    desired_port("demo", &format!("svc-{vip}"))
}

impl Desired {
    /// The port `key` with these backends, no draining ones, no affinity.
    fn port(self, key: Key, backends: Vec<DesiredBackend>) -> Self {
        self.put(key, svc(key.0).backends(backends))
    }

    fn put(mut self, (ip, port, protocol): Key, entry: PortBuilder) -> Self {
        self.0.services.insert(ServicePortKey { ip, port, protocol }, entry.build());
        self
    }
}

fn two_clusters() -> Vec<DesiredBackend> {
    vec![
        backend("c1", [198, 18, 1, 10], 8080),
        backend("c1", [198, 18, 1, 11], 8080),
        backend("c2", [198, 18, 2, 10], 9090),
    ]
}

/// Replays `ops` on a copy of `start` and checks consistency after each one.
fn assert_every_step_consistent(start: &FakeDataplane, ops: &[Op]) {
    let mut replay = FakeDataplane { ops: Vec::new(), ..start.clone() };
    for (i, op) in ops.iter().enumerate() {
        replay.apply(op).expect("fake write");
        replay.check_consistent().unwrap_or_else(|e| panic!("after write {i} ({op:?}): {e}"));
    }
}

fn sync_checked(syncer: &mut Syncer, dp: &mut FakeDataplane, desired: &DesiredState) -> SyncOutcome {
    let before = FakeDataplane { ops: Vec::new(), ..dp.clone() };
    dp.ops.clear();
    let outcome = syncer.sync(dp, desired).expect("sync reads the fake");
    assert_every_step_consistent(&before, &dp.ops);
    dp.check_consistent().expect("consistent after the sync");
    outcome
}

fn entry(dp: &FakeDataplane, (vip, port, proto): (Ipv4Addr, u16, u8)) -> ServiceValue {
    *dp.services.get(&ServiceKey::new(vip, port, proto)).unwrap_or_else(|| panic!("entry {vip}:{port}/{proto}"))
}

/// (ip, port) → slots of the port's table.
fn table_share(dp: &FakeDataplane, (vip, port, proto): (Ipv4Addr, u16, u8)) -> BTreeMap<(Ipv4Addr, u16), usize> {
    let value = entry(dp, (vip, port, proto));
    let mut share = BTreeMap::new();
    for id in &dp.table_of(value.service_id).unwrap_or_default() {
        let b = dp.backends[id];
        *share.entry((mcs_common::ipv4_from_nbo(b.addr), u16::from_be(b.port))).or_insert(0) += 1;
    }
    share
}

fn backends_of(dp: &FakeDataplane, service_id: u32) -> Vec<(Ipv4Addr, u16, u8)> {
    dp.backends
        .values()
        .filter(|b| b.service_id == service_id)
        .map(|b| (mcs_common::ipv4_from_nbo(b.addr), u16::from_be(b.port), b.flags))
        .collect()
}

fn position(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
    ops.iter().position(f).unwrap_or_else(|| panic!("no such write in {ops:?}"))
}

#[test]
fn first_sync_writes_clusters_backends_table_then_entry() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let desired = Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0;
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert!(outcome.full, "the first sync reads the maps");
    assert_eq!(outcome.tables_written, 1);
    let share = table_share(&dp, (VIP_A, 80, proto::TCP));
    assert_eq!(
        share.keys().copied().collect::<Vec<_>>(),
        vec![
            (Ipv4Addr::new(198, 18, 1, 10), 8080),
            (Ipv4Addr::new(198, 18, 1, 11), 8080),
            (Ipv4Addr::new(198, 18, 2, 10), 9090)
        ]
    );
    // 3 backends get the ladder's 331 slots: 110 or 111 each.
    assert!(share.values().all(|n| (110..=111).contains(n)), "{share:?}");
    assert_eq!(entry(&dp, (VIP_A, 80, proto::TCP)).table_size, 331);
    assert_eq!(outcome.slots_written, 331);
    assert!(dp.services.contains_key(&ServiceKey::wildcard(VIP_A)));
    assert_eq!(dp.clusters.values().cloned().collect::<Vec<_>>(), vec!["c1".to_owned(), "c2".to_owned()]);
    let cluster = position(&dp.ops, |op| matches!(op, Op::PutCluster(..)));
    let backend = position(&dp.ops, |op| matches!(op, Op::PutBackend(..)));
    let table = position(&dp.ops, |op| matches!(op, Op::PutSlot(..)));
    let entry_at = position(&dp.ops, |op| matches!(op, Op::PutService(k, _) if !k.is_wildcard()));
    assert!(cluster < backend && backend < table && table < entry_at, "{:?}", dp.ops);
}

#[test]
fn second_sync_of_the_same_state_writes_nothing() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let desired = Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0;
    sync_checked(&mut syncer, &mut dp, &desired);
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert_eq!(outcome.writes, 0);
    assert!(dp.ops.is_empty(), "{:?}", dp.ops);
    assert!(!outcome.full);
}

#[test]
fn removing_a_cluster_moves_the_port_to_a_smaller_table_before_deleting_its_backend() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    sync_checked(&mut syncer, &mut dp, &Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0);
    let old = entry(&dp, (VIP_A, 80, proto::TCP));
    let only_c1: Vec<_> = two_clusters().into_iter().filter(|b| &*b.cluster == "c1").collect();
    let outcome = sync_checked(&mut syncer, &mut dp, &Desired::default().port((VIP_A, 80, Protocol::Tcp), only_c1).0);
    assert_eq!(outcome.tables_written, 1);
    assert_eq!(table_share(&dp, (VIP_A, 80, proto::TCP)).len(), 2);
    assert_eq!(dp.backends.len(), 2, "c2's backend is deleted");
    assert_eq!(dp.clusters.values().collect::<Vec<_>>(), vec!["c1"], "c2's name is deleted with its last backend");
    // Two backends take 223 slots: a new run, written while nothing names
    // it; the entry moves to it with one write; then the backend goes.
    let new = entry(&dp, (VIP_A, 80, proto::TCP));
    assert_eq!((old.table_size, new.table_size), (331, 223));
    let runs_overlap = new.table_start < old.table_start + old.table_size && old.table_start < new.table_start + 223;
    assert!(!runs_overlap, "the old run is not reused at once: {old:?} {new:?}");
    let last_slot = dp.ops.iter().rposition(|op| matches!(op, Op::PutSlot(..))).expect("slots written");
    let entry_at = position(&dp.ops, |op| matches!(op, Op::PutService(k, _) if !k.is_wildcard()));
    let delete = position(&dp.ops, |op| matches!(op, Op::DeleteBackend(..)));
    assert!(last_slot < entry_at && entry_at < delete, "{:?}", dp.ops);
}

/// Six backends of cluster `c1` and the given extra ones.
fn six_and(extra: &[DesiredBackend]) -> Vec<DesiredBackend> {
    let mut all: Vec<_> = (0..6).map(|i| backend("c1", [198, 18, 1, 10 + i], 8080)).collect();
    all.extend_from_slice(extra);
    all
}

#[test]
fn a_table_of_the_same_size_is_rewritten_in_place_only_where_it_changes() {
    // Five and six backends both take 683 slots (at least 100 each).
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let key = (VIP_A, 80, Protocol::Tcp);
    sync_checked(&mut syncer, &mut dp, &Desired::default().port(key, six_and(&[])).0);
    let old = entry(&dp, (VIP_A, 80, proto::TCP));
    let before = dp.table_of(old.service_id).expect("a table");
    let gone = dp.backends.iter().find(|(_, b)| b.addr == mcs_common::ipv4_to_nbo(Ipv4Addr::new(198, 18, 1, 15)));
    let gone = *gone.expect("the sixth backend").0;
    // One backend leaves: only its slots (and Maglev's few others) change,
    // each in place, and the backend goes after the last of them.
    let five: Vec<_> = six_and(&[]).into_iter().take(5).collect();
    let outcome = sync_checked(&mut syncer, &mut dp, &Desired::default().port(key, five.clone()).0);
    let new = entry(&dp, (VIP_A, 80, proto::TCP));
    assert_eq!((new.table_start, new.table_size), (old.table_start, 683), "the same run");
    let after = dp.table_of(new.service_id).expect("a table");
    let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let owned = before.iter().filter(|b| **b == gone).count();
    assert_eq!(outcome.slots_written, changed);
    // At 100 slots a backend, Maglev moves a few percent of the others' slots too.
    assert!(changed >= owned && changed <= owned + 683 / 20, "{changed} slots changed, {owned} were the backend's");
    assert!(dp.ops.iter().all(|op| !matches!(op, Op::PutService(..))), "the entry is untouched: {:?}", dp.ops);
    let last_slot = dp.ops.iter().rposition(|op| matches!(op, Op::PutSlot(..))).expect("slots written");
    assert!(last_slot < position(&dp.ops, |op| *op == Op::DeleteBackend(gone)), "{:?}", dp.ops);
    // One joins: written before any slot names it.
    let joining = backend("c2", [198, 18, 2, 10], 8080);
    let outcome = sync_checked(&mut syncer, &mut dp, &Desired::default().port(key, [five, vec![joining]].concat()).0);
    assert!(outcome.slots_written > 0 && outcome.slots_written < 683 / 3, "{outcome:?}");
    let put = position(&dp.ops, |op| matches!(op, Op::PutBackend(..)));
    let first_slot = position(&dp.ops, |op| matches!(op, Op::PutSlot(..)));
    assert!(put < first_slot, "{:?}", dp.ops);
    assert_eq!(entry(&dp, (VIP_A, 80, proto::TCP)).table_start, old.table_start);
}

#[test]
fn runs_left_by_tables_wait_before_another_table_takes_them() {
    let mut dp = FakeDataplane { maglev: vec![0; 1000], ..FakeDataplane::default() };
    let mut syncer = Syncer::new();
    let t0 = Instant::now();
    let a = Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0;
    let b = Desired::default().port((VIP_B, 80, Protocol::Tcp), two_clusters()).0;
    let both = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters())
        .port((VIP_B, 80, Protocol::Tcp), two_clusters())
        .0;
    sync_checked_at(&mut syncer, &mut dp, &both, t0);
    // A leaves; C (another address) cannot take A's run yet: with B's 331
    // slots and A's waiting, 338 are free, and C needs 331 of them.
    sync_checked_at(&mut syncer, &mut dp, &b, t0);
    let c = Desired::default()
        .port((VIP_B, 80, Protocol::Tcp), two_clusters())
        .port((Ipv4Addr::new(198, 19, 0, 12), 80, Protocol::Tcp), two_clusters())
        .port((Ipv4Addr::new(198, 19, 0, 13), 80, Protocol::Tcp), two_clusters())
        .0;
    let outcome = sync_checked_at(&mut syncer, &mut dp, &c, t0 + REUSE_DELAY / 2);
    assert_eq!(outcome.errors.len(), 1, "one fits the free run, the other waits: {outcome:?}");
    assert!(outcome.errors[0].contains("--maglev-slots-max"), "{}", outcome.errors[0]);
    let outcome = sync_checked_at(&mut syncer, &mut dp, &c, t0 + REUSE_DELAY);
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    let _ = a;
}

#[test]
fn deleting_a_service_removes_every_entry_in_one_sync() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let both = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters())
        .port((VIP_B, 53, Protocol::Udp), vec![backend("c1", [198, 18, 1, 20], 5353)])
        .0;
    sync_checked(&mut syncer, &mut dp, &both);
    let a_id = entry(&dp, (VIP_A, 80, proto::TCP)).service_id;
    let only_b = Desired::default().port((VIP_B, 53, Protocol::Udp), vec![backend("c1", [198, 18, 1, 20], 5353)]).0;
    sync_checked(&mut syncer, &mut dp, &only_b);
    assert!(dp.services.keys().all(|k| k.ip() == VIP_B), "{:?}", dp.services.keys());
    assert_eq!(dp.backends.len(), 1);
    assert!(dp.table_of(a_id).is_none() && !dp.service_stats.contains_key(&a_id));
    assert!(dp.ops.contains(&Op::ForgetAffinity(a_id)));
    let entry_gone = position(&dp.ops, |op| matches!(op, Op::DeleteService(k) if k.ip() == VIP_A && !k.is_wildcard()));
    let backend_gone = position(&dp.ops, |op| matches!(op, Op::DeleteBackend(..)));
    assert!(entry_gone < backend_gone, "the entry goes before its backends: {:?}", dp.ops);
    assert!(!dp.ops.iter().any(|op| matches!(op, Op::PutSlot(..))), "a table left is not written: {:?}", dp.ops);
    sync_checked(&mut syncer, &mut dp, &DesiredState::default());
    assert!(dp.services.is_empty() && dp.backends.is_empty(), "{dp:?}");
    assert!(dp.clusters.is_empty() && dp.service_stats.is_empty());
}

#[test]
fn tcp_and_udp_on_one_port_are_independent_entries() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let desired = Desired::default()
        .port((VIP_A, 42, Protocol::Tcp), vec![backend("c1", [198, 18, 1, 10], 4242)])
        .port((VIP_A, 42, Protocol::Udp), vec![backend("c1", [198, 18, 1, 10], 4343)])
        .0;
    sync_checked(&mut syncer, &mut dp, &desired);
    assert_eq!(
        table_share(&dp, (VIP_A, 42, proto::TCP)).keys().collect::<Vec<_>>(),
        [&(Ipv4Addr::new(198, 18, 1, 10), 4242)]
    );
    assert_eq!(
        table_share(&dp, (VIP_A, 42, proto::UDP)).keys().collect::<Vec<_>>(),
        [&(Ipv4Addr::new(198, 18, 1, 10), 4343)]
    );
    assert_ne!(entry(&dp, (VIP_A, 42, proto::TCP)).service_id, entry(&dp, (VIP_A, 42, proto::UDP)).service_id);
}

#[test]
fn a_restarted_syncer_adopts_the_maps_and_rewrites_no_table() {
    let mut dp = FakeDataplane::default();
    let desired = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters())
        .port((VIP_B, 443, Protocol::Tcp), vec![backend("c3", [198, 18, 3, 10], 8443)])
        .0;
    sync_checked(&mut Syncer::new(), &mut dp, &desired);
    let before = dp.clone();
    let mut restarted = Syncer::new();
    let outcome = sync_checked(&mut restarted, &mut dp, &desired);
    assert!(outcome.full);
    assert_eq!(outcome.writes, 0, "{:?}", dp.ops);
    assert_eq!(dp.services, before.services, "service ids survive a restart");
    assert_eq!(dp.maglev, before.maglev);
    assert_eq!(dp.clusters, before.clusters, "cluster ids survive a restart");
    // The restarted syncer remembers what it adopted: a change of one port
    // rewrites that port's table only.
    let mut changed = desired.clone();
    changed.services.values_mut().next().expect("a port").backends.pop();
    let outcome = sync_checked(&mut restarted, &mut dp, &changed);
    assert_eq!(outcome.tables_written, 1, "{:?}", dp.ops);
}

#[test]
fn a_restart_with_another_table_size_rebuilds_every_table_safely() {
    let mut dp = FakeDataplane::default();
    let desired = Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0;
    sync_checked(&mut Syncer::new(), &mut dp, &desired);
    for (max, size) in [(101, 101), (16_381, 331)] {
        // A smaller largest size caps the table; a larger one gives the
        // ladder's size back. Each time the table moves to another run.
        dp.table_size = max;
        let outcome = sync_checked(&mut Syncer::new(), &mut dp, &desired);
        // (A restarted syncer may find a run that already holds the table.)
        assert!(outcome.errors.is_empty() && outcome.tables_written <= 1, "{outcome:?}");
        let value = entry(&dp, (VIP_A, 80, proto::TCP));
        assert_eq!(value.table_size, size);
        assert_eq!(dp.table_of(value.service_id).expect("table").len(), size as usize);
    }
}

#[test]
fn a_full_map_fails_one_service_cleanly_and_writes_the_others() {
    // Room for one table only.
    let mut dp = FakeDataplane { maglev: vec![0; 400], ..FakeDataplane::default() };
    let mut syncer = Syncer::new();
    let desired = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters())
        .port((VIP_B, 80, Protocol::Tcp), two_clusters())
        .0;
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert_eq!(outcome.errors.len(), 1, "{:?}", outcome.errors);
    assert!(outcome.errors[0].contains("ServiceImport demo/svc-198.19.0.11 port 80/TCP"), "{}", outcome.errors[0]);
    assert_eq!(table_share(&dp, (VIP_A, 80, proto::TCP)).len(), 3);
    assert!(!dp.services.contains_key(&ServiceKey::new(VIP_B, 80, proto::TCP)), "no half-written service");
    // The next sync is a full one; with room it completes.
    dp.maglev.resize(1 << 16, 0);
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert!(outcome.full && outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(table_share(&dp, (VIP_B, 80, proto::TCP)).len(), 3);
}

#[test]
fn a_cluster_name_that_does_not_fit_fails_its_service_only() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let long = "c".repeat(200);
    let desired = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters())
        .port((VIP_B, 80, Protocol::Tcp), vec![backend(&long, [198, 18, 9, 9], 80)])
        .0;
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert_eq!(outcome.errors.len(), 1, "{:?}", outcome.errors);
    assert!(outcome.errors[0].contains("svc-198.19.0.11") && outcome.errors[0].contains("cluster name"), "{outcome:?}");
    assert_eq!(table_share(&dp, (VIP_A, 80, proto::TCP)).len(), 3);
}

#[test]
fn a_changed_cluster_set_ip_moves_in_one_sync() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    sync_checked(&mut syncer, &mut dp, &Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0);
    sync_checked(&mut syncer, &mut dp, &Desired::default().port((VIP_B, 80, Protocol::Tcp), two_clusters()).0);
    assert!(dp.services.keys().all(|k| k.ip() == VIP_B));
    assert_eq!(table_share(&dp, (VIP_B, 80, proto::TCP)).len(), 3);
    assert_eq!(dp.services.values().filter(|v| v.table_size != 0).count(), 1);
}

#[test]
fn a_service_without_backends_has_no_table_and_fails_fast() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    sync_checked(&mut syncer, &mut dp, &Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0);
    sync_checked(&mut syncer, &mut dp, &Desired::default().port((VIP_A, 80, Protocol::Tcp), Vec::new()).0);
    let value = entry(&dp, (VIP_A, 80, proto::TCP));
    assert_eq!(value.table_size, 0);
    assert!(dp.table_of(value.service_id).is_none() && dp.backends.is_empty());
    let entry_at = position(&dp.ops, |op| matches!(op, Op::PutService(k, _) if !k.is_wildcard()));
    let backend_gone = position(&dp.ops, |op| matches!(op, Op::DeleteBackend(..)));
    assert!(entry_at < backend_gone, "the entry stops naming the table before its backends go: {:?}", dp.ops);
}

#[test]
fn draining_backends_stay_flagged_but_leave_the_table() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    sync_checked(&mut syncer, &mut dp, &Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0);
    let mut ready = two_clusters();
    let leaving = ready.pop().expect("three");
    let desired = Desired::default()
        .put(
            (VIP_A, 80, Protocol::Tcp),
            svc(VIP_A).backends(ready).draining_backends(vec![terminating(
                &leaving.cluster,
                leaving.ip.octets(),
                leaving.port,
            )]),
        )
        .0;
    sync_checked(&mut syncer, &mut dp, &desired);
    let value = entry(&dp, (VIP_A, 80, proto::TCP));
    assert_eq!(value.flags & SERVICE_F_FALLBACK, 0);
    let share = table_share(&dp, (VIP_A, 80, proto::TCP));
    assert!(!share.contains_key(&(leaving.ip, leaving.port)), "{share:?}");
    let backends = backends_of(&dp, value.service_id);
    assert!(backends.contains(&(leaving.ip, leaving.port, BACKEND_F_TERMINATING)), "{backends:?}");
    assert_eq!(backends.len(), 3, "the draining backend keeps its entry (and id) for established flows");
}

#[test]
fn a_fallback_to_terminating_backends_is_flagged() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let desired = Desired::default()
        .put(
            (VIP_A, 80, Protocol::Tcp),
            svc(VIP_A).backends(vec![terminating("c1", [198, 18, 1, 10], 8080)]).affinity(Some(30)),
        )
        .0;
    sync_checked(&mut syncer, &mut dp, &desired);
    let value = entry(&dp, (VIP_A, 80, proto::TCP));
    assert_eq!(value.flags & SERVICE_F_FALLBACK, SERVICE_F_FALLBACK);
    assert_eq!(value.affinity_timeout, 30);
    assert_eq!(table_share(&dp, (VIP_A, 80, proto::TCP)).len(), 1);
    assert_eq!(backends_of(&dp, value.service_id)[0].2, BACKEND_F_TERMINATING);
}

#[test]
fn a_backend_in_two_service_ports_gets_an_entry_in_each() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let shared = vec![backend("c1", [198, 18, 1, 10], 8080)];
    let desired =
        Desired::default().port((VIP_A, 80, Protocol::Tcp), shared.clone()).port((VIP_B, 80, Protocol::Tcp), shared).0;
    sync_checked(&mut syncer, &mut dp, &desired);
    assert_eq!(dp.backends.len(), 2, "one entry per service port, so a port's flows check their own backends");
    // Removing one port leaves the other's backend alone.
    let only_b = Desired::default().port((VIP_B, 80, Protocol::Tcp), vec![backend("c1", [198, 18, 1, 10], 8080)]).0;
    sync_checked(&mut syncer, &mut dp, &only_b);
    assert_eq!(dp.backends.len(), 1);
}

#[test]
fn service_ids_are_reused_lowest_first_and_stay_stable() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let one = |vip| Desired::default().port((vip, 80, Protocol::Tcp), vec![backend("c1", [198, 18, 1, 10], 8080)]);
    let both = one(VIP_A).port((VIP_B, 80, Protocol::Tcp), vec![backend("c1", [198, 18, 1, 11], 8080)]).0;
    sync_checked(&mut syncer, &mut dp, &both);
    let b_id = entry(&dp, (VIP_B, 80, proto::TCP)).service_id;
    sync_checked(&mut syncer, &mut dp, &one(VIP_B).0);
    assert_eq!(entry(&dp, (VIP_B, 80, proto::TCP)).service_id, b_id, "a surviving port keeps its id");
    sync_checked(&mut syncer, &mut dp, &both);
    assert!(entry(&dp, (VIP_A, 80, proto::TCP)).service_id < b_id, "the freed id is handed out again");
}

#[test]
fn new_ports_of_one_sync_fill_the_gaps_lowest_first() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let ports = |ports: &[u16]| {
        let mut desired = Desired::default();
        for (i, port) in ports.iter().enumerate() {
            let last = u8::try_from(i).expect("few ports") + 10;
            desired = desired.port((VIP_A, *port, Protocol::Tcp), vec![backend("c1", [198, 18, 1, last], 8080)]);
        }
        desired.0
    };
    sync_checked(&mut syncer, &mut dp, &ports(&[80, 81, 82]));
    let ids = |dp: &FakeDataplane, list: &[u16]| -> Vec<u32> {
        list.iter().map(|p| entry(dp, (VIP_A, *p, proto::TCP)).service_id).collect()
    };
    assert_eq!(ids(&dp, &[80, 81, 82]), [1, 2, 3]);
    // Ids 1 and 3 are freed; three new ports take 1, 3 and then 4.
    sync_checked(&mut syncer, &mut dp, &ports(&[81]));
    sync_checked(&mut syncer, &mut dp, &ports(&[81, 90, 91, 92]));
    assert_eq!(ids(&dp, &[81, 90, 91, 92]), [2, 1, 3, 4]);
}

#[test]
fn a_periodic_full_sync_keeps_what_the_tables_were_built_from() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let desired = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters())
        .port((VIP_B, 443, Protocol::Tcp), vec![backend("c3", [198, 18, 3, 10], 8443)])
        .0;
    sync_checked(&mut syncer, &mut dp, &desired);
    assert!(syncer.tables.values().all(|t| t.inputs.is_some()), "{:?}", syncer.tables);
    syncer.invalidate();
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert!(outcome.full);
    assert_eq!(outcome.writes, 0, "{:?}", dp.ops);
    assert!(
        syncer.tables.values().all(|t| t.inputs.is_some()),
        "unchanged tables keep their inputs across a full sync: {:?}",
        syncer.tables
    );
    // A table changed behind the syncer's back is not trusted: it is rebuilt
    // and rewritten at the next full sync.
    let b_id = entry(&dp, (VIP_B, 443, proto::TCP)).service_id;
    let a_id = entry(&dp, (VIP_A, 80, proto::TCP)).service_id;
    let a_table = dp.table_of(a_id).expect("a table");
    let b_start = entry(&dp, (VIP_B, 443, proto::TCP)).table_start;
    let b_slot = dp.maglev[b_start as usize];
    dp.maglev[b_start as usize] = 0;
    syncer.invalidate();
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert_eq!(outcome.tables_written, 1, "{:?}", dp.ops);
    assert_eq!(dp.ops, [Op::PutSlot(b_start, b_slot)], "only the slot that drifted is written");
    assert!(dp.table_of(b_id).expect("a table").iter().all(|id| *id != 0));
    assert_eq!(dp.table_of(a_id).expect("a table"), a_table);
    assert!(syncer.tables.values().all(|t| t.inputs.is_some()), "{:?}", syncer.tables);
}

/// [`sync_checked`] at the time `now`.
fn sync_checked_at(syncer: &mut Syncer, dp: &mut FakeDataplane, desired: &DesiredState, now: Instant) -> SyncOutcome {
    let before = FakeDataplane { ops: Vec::new(), ..dp.clone() };
    dp.ops.clear();
    let outcome = syncer.sync_at(dp, desired, now).expect("sync reads the fake");
    assert_every_step_consistent(&before, &dp.ops);
    dp.check_consistent().expect("consistent after the sync");
    outcome
}

#[test]
fn a_removed_backend_keeps_its_element_through_the_grace_and_leaves_after_it() {
    let grace = Duration::from_secs(30);
    let t0 = Instant::now();
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::with_removal_grace(grace);
    let all = Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0;
    sync_checked_at(&mut syncer, &mut dp, &all, t0);
    let id = entry(&dp, (VIP_A, 80, proto::TCP)).service_id;
    let only_c1 = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters().into_iter().filter(|b| &*b.cluster == "c1").collect())
        .0;

    sync_checked_at(&mut syncer, &mut dp, &only_c1, t0);

    let c2 = (Ipv4Addr::new(198, 18, 2, 10), 9090);
    assert_eq!(table_share(&dp, (VIP_A, 80, proto::TCP)).len(), 2, "out of the table at once: no new flows");
    let flagged: Vec<_> = backends_of(&dp, id).into_iter().filter(|b| (b.0, b.1) == c2).collect();
    assert_eq!(flagged, vec![(c2.0, c2.1, BACKEND_F_REMOVED)], "kept for its flows, flagged");
    assert!(dp.clusters.values().any(|c| c == "c2"), "its cluster's name stays with it");
    assert_eq!((syncer.backends_in_grace(), syncer.next_removal()), (1, Some(t0 + grace)));

    // Within the grace nothing more happens, however often it syncs.
    let outcome = sync_checked_at(&mut syncer, &mut dp, &only_c1, t0 + grace / 2);
    assert_eq!(outcome.writes, 0, "{:?}", dp.ops);
    // After it, the element goes.
    sync_checked_at(&mut syncer, &mut dp, &only_c1, t0 + grace);
    assert_eq!(backends_of(&dp, id).len(), 2);
    assert!(!dp.clusters.values().any(|c| c == "c2"));
    assert_eq!((syncer.backends_in_grace(), syncer.next_removal()), (0, None));
}

#[test]
fn a_backend_back_within_the_grace_gets_its_id_and_its_table_back() {
    let t0 = Instant::now();
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::with_removal_grace(Duration::from_secs(30));
    let all = Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0;
    sync_checked_at(&mut syncer, &mut dp, &all, t0);
    let service_id = dp.services.values().find(|v| v.table_size != 0).expect("a port").service_id;
    let (ids, table) = (dp.backends.clone(), dp.table_of(service_id));
    let only_c1 = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters().into_iter().filter(|b| &*b.cluster == "c1").collect())
        .0;
    sync_checked_at(&mut syncer, &mut dp, &only_c1, t0 + Duration::from_secs(1));

    sync_checked_at(&mut syncer, &mut dp, &all, t0 + Duration::from_secs(2));

    assert_eq!(dp.backends, ids, "the same ids, the flag cleared");
    assert_eq!(dp.table_of(service_id), table, "the same table: its flows never noticed");
    assert_eq!(syncer.backends_in_grace(), 0);
}

#[test]
fn the_backends_of_a_deleted_service_keep_their_flows_through_the_grace() {
    let t0 = Instant::now();
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::with_removal_grace(Duration::from_secs(30));
    sync_checked_at(&mut syncer, &mut dp, &Desired::default().port((VIP_A, 80, Protocol::Tcp), two_clusters()).0, t0);
    let id = entry(&dp, (VIP_A, 80, proto::TCP)).service_id;

    sync_checked_at(&mut syncer, &mut dp, &DesiredState::default(), t0);
    assert!(dp.services.is_empty(), "the port is gone in one sync");
    assert!(backends_of(&dp, id).iter().all(|b| b.2 & BACKEND_F_REMOVED != 0) && dp.backends.len() == 3);
    // Its id is not handed out while its backends linger.
    let other = Desired::default().port((VIP_B, 53, Protocol::Udp), two_clusters()).0;
    sync_checked_at(&mut syncer, &mut dp, &other, t0);
    assert_ne!(entry(&dp, (VIP_B, 53, proto::UDP)).service_id, id);
    sync_checked_at(&mut syncer, &mut dp, &other, t0 + Duration::from_secs(31));
    assert!(backends_of(&dp, id).is_empty(), "{dp:?}");
    assert_eq!(dp.backends.len(), 3, "the other port's");
}

#[test]
fn a_sync_that_is_not_full_writes_only_the_ports_that_changed() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let vips: Vec<Ipv4Addr> = (20..40).map(|i| Ipv4Addr::new(198, 19, 0, i)).collect();
    let all = |changed: Option<Ipv4Addr>| {
        let mut d = Desired::default();
        for vip in &vips {
            let mut backends = two_clusters();
            if changed == Some(*vip) {
                backends.push(backend("c3", [198, 18, 3, 10], 8080));
            }
            d = d.port((*vip, 80, Protocol::Tcp), backends);
        }
        d.0
    };
    sync_checked(&mut syncer, &mut dp, &all(None));
    let before = dp.clone();
    let outcome = sync_checked(&mut syncer, &mut dp, &all(Some(vips[7])));
    assert!(!outcome.full && outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(outcome.tables_written, 1, "{:?}", dp.ops);
    let changed_id = entry(&dp, (vips[7], 80, proto::TCP)).service_id;
    for (id, b) in &before.backends {
        if b.service_id != changed_id {
            assert_eq!(dp.backends.get(id), Some(b), "backend {id} of an unchanged port is kept as it was");
        }
    }
    // And back: the joined backend leaves, its cluster name with it.
    let outcome = sync_checked(&mut syncer, &mut dp, &all(None));
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(dp.backends.len(), before.backends.len());
    assert_eq!(dp.clusters, before.clusters, "c3's name goes with its last backend");
}

#[test]
fn a_full_sync_rewrites_what_drifted_and_skips_the_rest() {
    let mut dp = FakeDataplane::default();
    let mut syncer = Syncer::new();
    let vip_c = Ipv4Addr::new(198, 19, 0, 12);
    let desired = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), two_clusters())
        .port((VIP_B, 443, Protocol::Tcp), vec![backend("c3", [198, 18, 3, 10], 8443)])
        .port((vip_c, 80, Protocol::Tcp), two_clusters())
        .0;
    sync_checked(&mut syncer, &mut dp, &desired);
    // B's backend vanishes behind the syncer's back.
    let b_id = entry(&dp, (VIP_B, 443, proto::TCP)).service_id;
    let gone = *dp.backends.iter().find(|(_, b)| b.service_id == b_id).expect("B's backend").0;
    dp.backends.remove(&gone);
    syncer.invalidate();
    // (The maps start inconsistent, so only the end state is checked.)
    dp.ops.clear();
    let outcome = syncer.sync(&mut dp, &desired).expect("sync");
    assert!(outcome.full && outcome.errors.is_empty(), "{outcome:?}");
    dp.check_consistent().expect("consistent again");
    assert_eq!(table_share(&dp, (VIP_B, 443, proto::TCP)).len(), 1, "B is whole again");
    // Only B was written: its backend, and its table's slots if the
    // backend got another id.
    let b = entry(&dp, (VIP_B, 443, proto::TCP));
    for op in &dp.ops {
        let ok = match op {
            Op::PutBackend(_, backend) => backend.service_id == b.service_id,
            Op::PutSlot(slot, _) => (b.table_start..b.table_start + b.table_size).contains(slot),
            _ => false,
        };
        assert!(ok, "{op:?} is not B's: {:?}", dp.ops);
    }
}

/// The keys whose entries differ between two desired states.
fn differing(before: &DesiredState, after: &DesiredState) -> BTreeSet<ServicePortKey> {
    let keys: BTreeSet<&ServicePortKey> = before.services.keys().chain(after.services.keys()).collect();
    keys.into_iter().filter(|k| before.services.get(k) != after.services.get(k)).copied().collect()
}

/// An entry, and its table's backends as (address, port).
type Seen = (ServiceKey, ServiceValue, Vec<(u32, u16)>);

/// What a packet sees: each entry (without where its table starts, which
/// depends on when freed runs became free again) and its table's backends.
fn seen(dp: &FakeDataplane) -> Vec<Seen> {
    dp.services
        .iter()
        .map(|(k, v)| {
            let table = dp.table_of(v.service_id).unwrap_or_default();
            let table = table.iter().map(|id| (dp.backends[id].addr, dp.backends[id].port)).collect();
            (*k, ServiceValue { table_start: 0, ..*v }, table)
        })
        .collect()
}

#[test]
fn a_sync_told_what_changed_ends_where_an_untold_one_does() {
    let vips: Vec<Ipv4Addr> = (20..32).map(|i| Ipv4Addr::new(198, 19, 0, i)).collect();
    // Each step: which vips exist, which of them have a third backend, and
    // which a second port (whose going must leave the address's wildcard).
    let state_with = |present: &[usize], grown: &[usize], second: &[usize]| {
        let mut d = Desired::default();
        for i in present {
            let mut backends = two_clusters();
            if grown.contains(i) {
                backends.push(backend("c3", [198, 18, 3, 10], 8080));
            }
            d = d.port((vips[*i], 80, Protocol::Tcp), backends);
            if second.contains(i) {
                d = d.port((vips[*i], 81, Protocol::Tcp), two_clusters());
            }
        }
        d.0
    };
    let state = |present: &[usize], grown: &[usize]| state_with(present, grown, &[]);
    let all: Vec<usize> = (0..vips.len()).collect();
    let steps = [
        state(&all, &[]),
        state(&all, &[3]),
        state_with(&all, &[3, 4, 9], &[2, 7]),
        state_with(&all[1..], &[4], &[7]),
        state(&all[..11], &[]),
        state(&all, &[0, 11]),
    ];
    let (mut told, mut untold) = (Syncer::new(), Syncer::new());
    let (mut told_dp, mut untold_dp) = (FakeDataplane::default(), FakeDataplane::default());
    let mut previous = DesiredState::default();
    for (i, desired) in steps.iter().enumerate() {
        let changed = differing(&previous, desired);
        let before = FakeDataplane { ops: Vec::new(), ..told_dp.clone() };
        told_dp.ops.clear();
        let outcome = told.sync_changed(&mut told_dp, desired, Some(&changed)).expect("sync reads the fake");
        assert!(outcome.errors.is_empty(), "step {i}: {outcome:?}");
        assert_every_step_consistent(&before, &told_dp.ops);
        sync_checked(&mut untold, &mut untold_dp, desired);
        assert_eq!(seen(&told_dp), seen(&untold_dp), "step {i}");
        assert_eq!(told_dp.backends, untold_dp.backends, "step {i}: backends");
        assert_eq!(told_dp.clusters, untold_dp.clusters, "step {i}: clusters");
        previous = desired.clone();
    }
    // The list is what a sync that is not full goes by: a port left off it
    // stays as it was until the next full sync.
    let grown = state(&all, &[0, 5, 11]);
    let outcome = told.sync_changed(&mut told_dp, &grown, Some(&BTreeSet::new())).expect("sync");
    assert_eq!(outcome.writes, 0, "{:?}", told_dp.ops);
    assert_eq!(table_share(&told_dp, (vips[5], 80, proto::TCP)).len(), 3, "vips[5] kept its two clusters' backends");
    told.invalidate();
    let outcome = told.sync_changed(&mut told_dp, &grown, Some(&BTreeSet::new())).expect("sync");
    assert!(outcome.full && outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(table_share(&told_dp, (vips[5], 80, proto::TCP)).len(), 4, "a full sync reads every port");
}

/// A change made to the maps behind the syncer's back.
type Tamper = Box<dyn Fn(&mut FakeDataplane)>;

/// Runs every part of one audit round; the drifts found, by part.
fn audit_round(syncer: &mut Syncer, dp: &FakeDataplane, parts: u32) -> Vec<(u32, String)> {
    let mut drifts = Vec::new();
    for part in 0..parts {
        let audited = syncer.audit(dp, parts);
        if let Some(drift) = audited.drift {
            drifts.push((part, drift));
            return drifts;
        }
        assert_eq!(audited.round_done, part + 1 == parts, "part {part} of {parts}: {audited:?}");
    }
    drifts
}

#[test]
fn an_audit_finds_what_drifted_and_the_next_sync_rewrites_it() {
    const PARTS: u32 = 4;
    let vips: Vec<Ipv4Addr> = (40..48).map(|i| Ipv4Addr::new(198, 19, 0, i)).collect();
    let mut desired = Desired::default();
    for vip in &vips {
        desired =
            desired.port((*vip, 80, Protocol::Tcp), two_clusters()).port((*vip, 53, Protocol::Udp), two_clusters());
    }
    let desired = desired.0;
    let mut syncer = Syncer::with_removal_grace(Duration::from_mins(1));
    let mut dp = FakeDataplane::default();
    sync_checked(&mut syncer, &mut dp, &desired);
    // A change with a backend in its removal grace (flagged in place).
    let mut changed = desired.clone();
    let first = ServicePortKey { ip: vips[0], port: 80, protocol: Protocol::Tcp };
    changed.services.get_mut(&first).expect("the first port").backends.pop();
    let outcome = syncer.sync_changed(&mut dp, &changed, Some(&BTreeSet::from([first]))).expect("sync");
    assert!(outcome.errors.is_empty() && syncer.backends_in_grace() == 1, "{outcome:?}");
    assert_eq!(audit_round(&mut syncer, &dp, PARTS), [], "nothing drifted after the syncs");

    // Each kind of drift, made behind the syncer's back; the backends and
    // tables are spread over the parts, so each is found by its own part.
    let key = ServiceKey::new(vips[3], 53, proto::UDP);
    let some_backend = *dp.backends.keys().nth(dp.backends.len() / 2).expect("backends");
    let tampered: [(&str, Tamper); 6] = [
        ("an entry changed", Box::new(move |dp| dp.services.get_mut(&key).expect("entry").affinity_timeout = 7)),
        (
            "an entry deleted",
            Box::new(move |dp| {
                dp.services.remove(&key);
            }),
        ),
        (
            "an entry added",
            Box::new(|dp| {
                dp.services
                    .insert(ServiceKey::new(Ipv4Addr::new(198, 19, 1, 1), 80, proto::TCP), ServiceValue::default());
            }),
        ),
        ("a backend changed", Box::new(move |dp| dp.backends.get_mut(&some_backend).expect("backend").port ^= 1)),
        (
            "a backend deleted",
            Box::new(move |dp| {
                dp.backends.remove(&some_backend);
            }),
        ),
        (
            "a table slot changed",
            Box::new(move |dp| {
                let v = dp.services[&key];
                let slot = &mut dp.maglev[(v.table_start + v.table_size / 2) as usize];
                *slot = if *slot == some_backend { some_backend + 1 } else { some_backend };
            }),
        ),
    ];
    // What a packet would see, whatever ids the entries were given.
    let looks = |dp: &FakeDataplane| {
        let mut seen = seen(dp);
        for (_, value, _) in &mut seen {
            value.service_id = 0;
        }
        seen
    };
    let untouched = looks(&dp);
    for (what, tamper) in &tampered {
        tamper(&mut dp);
        let drifts = audit_round(&mut syncer, &dp, PARTS);
        assert_eq!(drifts.len(), 1, "{what}: found once, and the round stops there: {drifts:?}");
        let outcome = sync_checked(&mut syncer, &mut dp, &changed);
        assert!(outcome.full && outcome.errors.is_empty(), "{what}: the next sync is a full one: {outcome:?}");
        assert_eq!(audit_round(&mut syncer, &dp, PARTS), [], "{what}: nothing drifted after the full sync");
        assert!(looks(&dp) == untouched, "{what}: the full sync did not put the entries back as they were");
    }
}

/// Backend ids are the backends array's indices: an agent whose backends
/// come and go must keep finding free ids below the array's size, however
/// many it handed out before (ids once only moved forward, and a node ran
/// out of them after as many backend changes as the array has elements).
#[test]
fn backend_ids_are_reused_below_the_arrays_size_after_any_number_of_changes() {
    let mut dp = FakeDataplane { backends_capacity: Some(16), ..FakeDataplane::default() };
    let mut syncer = Syncer::new();
    let key = (VIP_A, 80, Protocol::Tcp);
    // 40 rounds of four new backends: 160 ids handed out through 15 usable ones.
    for round in 0..40_u8 {
        let backends = (0..4).map(|i| backend("c1", [198, 18, round, 10 + i], 8080)).collect();
        let desired = Desired::default().port(key, backends).0;
        let outcome = sync_checked(&mut syncer, &mut dp, &desired);
        assert!(outcome.errors.is_empty(), "round {round}: {:?}", outcome.errors);
        let ids: Vec<u32> = dp.backends.keys().copied().collect();
        assert!(ids.len() == 4 && ids.iter().all(|id| (1..16).contains(id)), "round {round}: {ids:?}");
        assert_eq!(backends_of(&dp, entry(&dp, (VIP_A, 80, 6)).service_id).len(), 4, "round {round}");
    }
    // More backends than the array has elements: that port fails, naming the
    // map, and is left as it was; the maps stay consistent.
    let many = (0..20).map(|i| backend("c1", [198, 18, 200, i], 8080)).collect();
    let before = dp.backends.clone();
    let outcome = sync_checked(&mut syncer, &mut dp, &Desired::default().port(key, many).0);
    assert!(outcome.errors.iter().any(|e| e.contains("--backends-max")), "{:?}", outcome.errors);
    assert_eq!(dp.backends.len(), 15, "the free ids were written, the port not switched: {:?}", dp.backends);
    assert!(before.keys().all(|id| dp.backends.contains_key(id)), "the port keeps its backends");
    dp.check_consistent().expect("consistent after the failure");
}

/// A cluster name the clusters map refuses (full, say) fails the ports of
/// that cluster's backends, leaving them as they were; the others are
/// written, and the next sync writes the rest once there is room.
#[test]
fn a_cluster_name_that_cannot_be_written_fails_its_ports_only() {
    let mut dp = FakeDataplane { clusters_capacity: Some(1), ..FakeDataplane::default() };
    let mut syncer = Syncer::new();
    let desired = Desired::default()
        .port((VIP_A, 80, Protocol::Tcp), vec![backend("c1", [198, 18, 0, 1], 8080)])
        .port((VIP_B, 80, Protocol::Tcp), vec![backend("c2", [198, 18, 0, 2], 8080)])
        .0;
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert!(outcome.errors.iter().any(|e| e.contains("\"c2\"")), "{:?}", outcome.errors);
    assert!(outcome.errors.iter().any(|e| e.contains(&VIP_B.to_string())), "{:?}", outcome.errors);
    assert_eq!(backends_of(&dp, entry(&dp, (VIP_A, 80, 6)).service_id).len(), 1, "the other port is written");
    assert!(!dp.services.contains_key(&ServiceKey::new(VIP_B, 80, 6)), "the failed port is not");
    dp.clusters_capacity = None;
    let outcome = sync_checked(&mut syncer, &mut dp, &desired);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert_eq!(backends_of(&dp, entry(&dp, (VIP_B, 80, 6)).service_id).len(), 1, "written once there is room");
}
