//! The exporting-cluster cap: ranking, selection, exclusion, stability and
//! promotion; and the rules that need two translations (ip changes,
//! deletion).
use super::*;

/// A slice of demo/web from `cluster` with one ready endpoint 198.18.`n`.1:8080.
fn from(cluster: &str, n: u8) -> std::sync::Arc<Slice> {
    slice("demo", "web", cluster).port("http", None, 8080).ready(format!("198.18.{n}.1")).build()
}

/// Slices from c1..=c`count`, cluster `ci` with endpoint 198.18.i.1.
fn clusters(count: u8) -> Vec<std::sync::Arc<Slice>> {
    (1..=count).map(|i| from(&format!("c{i}"), i)).collect()
}

/// The http entry of demo/web with the ready endpoints of `clusters` (as in
/// [`from`]).
fn http_from(clusters: &[(&str, u8)]) -> Vec<(ServicePortKey, DesiredServicePort)> {
    let ips: Vec<(String, String)> = clusters.iter().map(|(c, n)| ((*c).to_owned(), format!("198.18.{n}.1"))).collect();
    let backends: Vec<(&str, &str, u16)> = ips.iter().map(|(c, ip)| (c.as_str(), ip.as_str(), 8080)).collect();
    vec![(port_key(VIP, 80, Protocol::Tcp), desired_port("demo", "web").port_name("http").ready(&backends).build())]
}

fn capped(cap: usize) -> Config {
    Config { max_exporting_clusters: cap, ..config() }
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn exporting_cluster_cap() {
    let web80 = || web().port("http", None, 80);
    run(vec![
        Case {
            name: "six clusters, default cap 5: the sixth by id is excluded",
            imports: vec![web80().build()],
            slices: clusters(6),
            want: http_from(&[("c1", 1), ("c2", 2), ("c3", 3), ("c4", 4), ("c5", 5)]),
            excluded: vec![("demo", "web", "c6")],
            ..Case::default()
        },
        Case {
            name: "status.clusters ranks first, in its order; then unlisted ones by id",
            imports: vec![web80().status_clusters(&["c6", "c3", "c1"]).build()],
            slices: clusters(6),
            want: http_from(&[("c1", 1), ("c2", 2), ("c3", 3), ("c4", 4), ("c6", 6)]),
            excluded: vec![("demo", "web", "c5")],
            ..Case::default()
        },
        Case {
            name: "listed clusters without slices are not present and take no place",
            imports: vec![web80().status_clusters(&["gone", "c6", "c5", "c4", "c3", "c2"]).build()],
            slices: clusters(6),
            want: http_from(&[("c2", 2), ("c3", 3), ("c4", 4), ("c5", 5), ("c6", 6)]),
            excluded: vec![("demo", "web", "c1")],
            ..Case::default()
        },
        Case {
            name: "a cluster listed twice counts once",
            imports: vec![web80().status_clusters(&["c3", "c3", "c2"]).build()],
            slices: clusters(3),
            config: Some(capped(2)),
            want: http_from(&[("c2", 2), ("c3", 3)]),
            excluded: vec![("demo", "web", "c1")],
            ..Case::default()
        },
        Case {
            name: "cap 0 means no cap",
            imports: vec![web80().build()],
            slices: clusters(7),
            config: Some(capped(0)),
            want: http_from(&[("c1", 1), ("c2", 2), ("c3", 3), ("c4", 4), ("c5", 5), ("c6", 6), ("c7", 7)]),
            ..Case::default()
        },
        Case {
            name: "byte order: upper case first, c10 before c2",
            imports: vec![web80().build()],
            slices: vec![from("c2", 2), from("c10", 10), from("b", 11), from("C", 12)],
            config: Some(capped(2)),
            want: http_from(&[("C", 12), ("b", 11)]),
            excluded: vec![("demo", "web", "c10"), ("demo", "web", "c2")],
            ..Case::default()
        },
        Case {
            name: "readiness does not change membership: a selected cluster without ready endpoints keeps its place",
            imports: vec![web80().build()],
            slices: vec![
                slice("demo", "web", "c1").port("http", None, 8080).not_ready("198.18.1.1").build(),
                from("c2", 2),
                from("c3", 3),
            ],
            config: Some(capped(2)),
            want: http_from(&[("c2", 2)]),
            excluded: vec![("demo", "web", "c3")],
            ..Case::default()
        },
        Case {
            name: "an empty slice makes its cluster present",
            imports: vec![web80().build()],
            slices: vec![slice("demo", "web", "c1").port("http", None, 8080).build(), from("c2", 2)],
            config: Some(capped(1)),
            want: http_from(&[]),
            excluded: vec![("demo", "web", "c2")],
            ..Case::default()
        },
        Case {
            name: "the terminating fallback looks only at the selected clusters",
            imports: vec![web80().build()],
            slices: vec![
                slice("demo", "web", "c1").port("http", None, 8080).terminating("198.18.1.1").build(),
                from("c2", 2),
            ],
            config: Some(capped(1)),
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .backends_in(&[("c1", "198.18.1.1", 8080, EndpointState::Terminating)])
                    .build(),
            )],
            excluded: vec![("demo", "web", "c2")],
            ..Case::default()
        },
        Case {
            name: "a cluster with several slices counts once",
            imports: vec![web80().build()],
            slices: vec![
                from("c1", 1),
                slice("demo", "web", "c1").named("web-c1-b").port("http", None, 8080).ready("198.18.1.2").build(),
                from("c2", 2),
                from("c3", 3),
            ],
            config: Some(capped(2)),
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[("c1", "198.18.1.1", 8080), ("c1", "198.18.1.2", 8080), ("c2", "198.18.2.1", 8080)])
                    .build(),
            )],
            excluded: vec![("demo", "web", "c3")],
            ..Case::default()
        },
        Case {
            name: "a cluster with only IPv6 slices is not present for the IPv4 ClusterSetIP",
            imports: vec![web80().build()],
            slices: vec![
                slice("demo", "web", "a").address_type("IPv6").port("http", None, 8080).ready("fd00::1").build(),
                from("c1", 1),
                from("c2", 2),
            ],
            config: Some(capped(2)),
            want: http_from(&[("c1", 1), ("c2", 2)]),
            ..Case::default()
        },
        Case {
            name: "the cap applies per import, and reports each import's exclusions",
            imports: vec![web80().build(), import("demo", "api").ip(VIP2).port("http", None, 80).build()],
            slices: vec![
                from("c1", 1),
                from("c2", 2),
                slice("demo", "api", "c3").port("http", None, 8080).ready("198.18.3.1").build(),
                slice("demo", "api", "c4").port("http", None, 8080).ready("198.18.4.1").build(),
            ],
            config: Some(capped(1)),
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web").port_name("http").ready(&[("c1", "198.18.1.1", 8080)]).build(),
                ),
                (
                    port_key(VIP2, 80, Protocol::Tcp),
                    desired_port("demo", "api").port_name("http").ready(&[("c3", "198.18.3.1", 8080)]).build(),
                ),
            ],
            excluded: vec![("demo", "api", "c4"), ("demo", "web", "c2")],
            ..Case::default()
        },
        Case {
            name: "skipped imports report no exclusions",
            imports: vec![web80().type_("Headless").build()],
            slices: clusters(3),
            config: Some(capped(1)),
            skipped: vec![("demo", "web", SkipReason::Headless, "headless")],
            ..Case::default()
        },
    ]);
}

/// Translates with a cap of `cap` and cluster id east.
fn translate_capped(imports: &[ServiceImport], slices: &[std::sync::Arc<Slice>], cap: usize) -> (DesiredState, Report) {
    translate_lists(imports, slices, &capped(cap))
}

fn cluster_names(report: &Report) -> Vec<&str> {
    report.excluded_clusters.iter().map(|e| e.cluster.as_str()).collect()
}

#[test]
fn a_selected_cluster_that_disappears_is_replaced_by_the_next() {
    let imports = vec![web().port("http", None, 80).status_clusters(&["c4", "c2"]).build()];
    let only_entry = |state: DesiredState| state.services.into_iter().collect::<Vec<_>>();
    // Ranking: c4, c2 (listed), then c1, c3, c5, c6 by id.
    let (state, report) = translate_capped(&imports, &clusters(6), 3);
    assert_eq!(only_entry(state), http_from(&[("c1", 1), ("c2", 2), ("c4", 4)]));
    assert_eq!(cluster_names(&report), ["c3", "c5", "c6"]);

    // c2 goes (every slice deleted): c3, the best one left, moves up.
    let without_c2: Vec<_> =
        clusters(6).into_iter().filter(|s| s.labels.get(k8s::LABEL_SOURCE_CLUSTER) != Some("c2")).collect();
    let (state, report) = translate_capped(&imports, &without_c2, 3);
    assert_eq!(only_entry(state), http_from(&[("c1", 1), ("c3", 3), ("c4", 4)]));
    assert_eq!(cluster_names(&report), ["c5", "c6"]);

    // c4 goes too: c5 moves up.
    let without_c2_c4: Vec<_> =
        without_c2.into_iter().filter(|s| s.labels.get(k8s::LABEL_SOURCE_CLUSTER) != Some("c4")).collect();
    let (state, report) = translate_capped(&imports, &without_c2_c4, 3);
    assert_eq!(only_entry(state), http_from(&[("c1", 1), ("c3", 3), ("c5", 5)]));
    assert_eq!(cluster_names(&report), ["c6"]);
}

#[test]
fn changes_in_an_unselected_cluster_change_nothing() {
    let imports = vec![web().port("http", None, 80).build()];
    let base = clusters(6);
    let (state, report) = translate_capped(&imports, &base, 5);
    assert_eq!(cluster_names(&report), ["c6"]);

    let changes: Vec<(&str, Vec<std::sync::Arc<Slice>>)> = vec![
        ("c6 gets more ready endpoints", {
            let mut s = base.clone();
            s.push(slice("demo", "web", "c6").named("web-c6-b").port("http", None, 8080).ready("198.18.6.2").build());
            s
        }),
        ("c6's endpoint turns not ready", {
            let mut s = base.clone();
            s[5] = slice("demo", "web", "c6").port("http", None, 8080).not_ready("198.18.6.1").build();
            s
        }),
        ("c6's slice loses its endpoints", {
            let mut s = base.clone();
            s[5] = slice("demo", "web", "c6").port("http", None, 8080).build();
            s
        }),
        ("c6 changes its target port", {
            let mut s = base.clone();
            s[5] = slice("demo", "web", "c6").port("http", None, 9999).ready("198.18.6.1").build();
            s
        }),
        ("a selected cluster's endpoints all turn not ready", {
            let mut s = base.clone();
            s[0] = slice("demo", "web", "c1").port("http", None, 8080).not_ready("198.18.1.1").build();
            s
        }),
    ];
    for (name, slices) in changes {
        let (changed_state, changed_report) = translate_capped(&imports, &slices, 5);
        assert_eq!(cluster_names(&changed_report), ["c6"], "{name}: the selection changed");
        if name.starts_with("c6") {
            assert_eq!(changed_state, state, "{name}: the desired state changed");
        } else {
            let entry = changed_state.services.values().next().expect("one entry");
            assert!(entry.backends.iter().all(|b| &*b.cluster != "c1" && &*b.cluster != "c6"), "{name}: {entry:?}");
            assert_eq!(entry.backends.len(), 4, "{name}: c6 must not replace c1: {entry:?}");
        }
    }
}

#[test]
fn ip_changes_and_deletions_across_two_translations() {
    let slices: Vec<_> = (1..=2)
        .map(|i| {
            slice("demo", "web", &format!("c{i}"))
                .port("http", None, 8080)
                .port("https", None, 8443)
                .ready(format!("198.18.{i}.1"))
                .build()
        })
        .collect();
    let old = web().port("http", None, 80).port("https", None, 443).build();
    let (before, _) = translate_lists(std::slice::from_ref(&old), &slices, &config());
    let old_keys: Vec<_> = before.services.keys().copied().collect();
    assert_eq!(old_keys, [port_key(VIP, 80, Protocol::Tcp), port_key(VIP, 443, Protocol::Tcp)]);

    // A new ClusterSetIP: the old keys are gone, the new ones are there, with
    // the same backends.
    let moved = old.clone().with_ips(&[VIP2]);
    let (after, report) = translate_lists(&[moved], &slices, &config());
    assert_eq!(report, Report::default());
    let new_keys: Vec<_> = after.services.keys().copied().collect();
    assert_eq!(new_keys, [port_key(VIP2, 80, Protocol::Tcp), port_key(VIP2, 443, Protocol::Tcp)]);
    for (old_entry, new_entry) in before.services.values().zip(after.services.values()) {
        assert_eq!(old_entry, new_entry);
    }

    // The import deleted: nothing left, its slices notwithstanding.
    let (deleted, report) = translate_lists(&[], &slices, &config());
    assert!(deleted.services.is_empty(), "{deleted:?}");
    assert_eq!(report, Report::default());

    // Every slice of c1 deleted: c1's backends vanish from every port at once.
    let (without_c1, _) = translate_lists(std::slice::from_ref(&old), &slices[1..], &config());
    assert_eq!(without_c1.services.len(), 2);
    for entry in without_c1.services.values() {
        let clusters: Vec<_> = entry.backends.iter().map(|b| &*b.cluster).collect();
        assert_eq!(clusters, ["c2"], "{entry:?}");
    }
}
