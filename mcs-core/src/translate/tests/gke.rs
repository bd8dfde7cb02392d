//! GKE's `net.gke.io/v1` imports with their derived services.
use super::*;

use EndpointState::{Ready, Terminating};

const DERIVED: &str = "gke-mcs-web";

fn gke_web() -> GkeImportBuilder {
    gke_import("demo", "web", DERIVED).ip(VIP)
}

/// A slice of the derived service, as the mirroring controller writes it.
fn derived_slice(name: &str) -> SliceBuilder {
    slice("demo", "", "")
        .named(name)
        .without_label(k8s::LABEL_SERVICE_NAME)
        .without_label(k8s::LABEL_SOURCE_CLUSTER)
        .label(k8s::LABEL_KUBERNETES_SERVICE_NAME, DERIVED)
        .label(k8s::LABEL_MANAGED_BY, "endpointslicemirroring-controller.k8s.io")
}

/// An entry of demo/web whose backends (all in cluster "") are `backends`.
fn gke_entry(port_name: &str, backends: &[(&str, u16, EndpointState)]) -> DesiredServicePort {
    let backends: Vec<_> = backends.iter().map(|(ip, port, state)| ("", *ip, *port, *state)).collect();
    desired_port("demo", "web").port_name(port_name).backends_in(&backends).build()
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn gke_imports_use_their_derived_service() {
    let two_ports = || gke_web().port("http", None, 80).port("https", None, 443);
    run(vec![
        Case {
            name: r#"Endpoints: addresses are ready backends of cluster "", notReadyAddresses are not; ports by name"#,
            gke_imports: vec![two_ports().build()],
            endpoints: vec![
                endpoints("demo", DERIVED)
                    .subset(
                        &[("https", None, 8443), ("http", Some("TCP"), 8080)],
                        &["198.18.1.1", "198.18.1.2"],
                        &["198.18.1.3"],
                    )
                    // Another cluster's pods with other target ports.
                    .subset(&[("http", None, 9080), ("https", None, 9443)], &["198.18.2.1"], &[])
                    // A subset without the https port contributes only to http.
                    .subset(&[("http", None, 7080)], &["198.18.3.1"], &[])
                    .build(),
                // Same name, another namespace: not this import's.
                endpoints("other", DERIVED).subset(&[("http", None, 1)], &["198.18.9.9"], &[]).build(),
            ],
            // The cap does not apply to GKE imports.
            config: Some(Config { max_exporting_clusters: 1, ..config() }),
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    gke_entry(
                        "http",
                        &[
                            ("198.18.1.1", 8080, Ready),
                            ("198.18.1.2", 8080, Ready),
                            ("198.18.2.1", 9080, Ready),
                            ("198.18.3.1", 7080, Ready),
                        ],
                    ),
                ),
                (
                    port_key(VIP, 443, Protocol::Tcp),
                    gke_entry(
                        "https",
                        &[("198.18.1.1", 8443, Ready), ("198.18.1.2", 8443, Ready), ("198.18.2.1", 9443, Ready)],
                    ),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "ips and ports under spec are read as well",
            gke_imports: vec![gke_web().port("http", None, 80).in_spec().build()],
            endpoints: vec![endpoints("demo", DERIVED).subset(&[("http", None, 8080)], &["198.18.1.1"], &[]).build()],
            want: vec![(port_key(VIP, 80, Protocol::Tcp), gke_entry("http", &[("198.18.1.1", 8080, Ready)]))],
            ..Case::default()
        },
        Case {
            name: "Endpoints ports match by name, then protocol",
            gke_imports: vec![gke_web().port("dns", None, 53).udp("dns-udp", 53).build()],
            endpoints: vec![
                endpoints("demo", DERIVED)
                    .subset(&[("dns", Some("UDP"), 5353), ("dns-udp", Some("UDP"), 5354)], &["198.18.1.1"], &[])
                    .build(),
            ],
            want: vec![
                (port_key(VIP, 53, Protocol::Tcp), gke_entry("dns", &[])),
                (port_key(VIP, 53, Protocol::Udp), gke_entry("dns-udp", &[("198.18.1.1", 5354, Ready)])),
            ],
            ..Case::default()
        },
        Case {
            name: "the derived service's slices are used instead of Endpoints where they exist",
            gke_imports: vec![gke_web().port("http", None, 80).build()],
            slices: vec![
                derived_slice("d-1").port("http", None, 8080).ready("198.18.1.1").not_ready("198.18.1.2").build(),
                derived_slice("d-2").port("http", None, 9080).ready("198.18.2.1").terminating("198.18.2.2").build(),
                // IPv6 slices are not used for the IPv4 ClusterSetIP.
                derived_slice("d-v6").address_type("IPv6").port("http", None, 8080).ready("fd00::1").build(),
                // An MCS slice of the same name is not the derived service's.
                slice("demo", "web", "east").named("mcs").port("http", None, 8080).ready("198.18.5.1").build(),
            ],
            endpoints: vec![endpoints("demo", DERIVED).subset(&[("http", None, 8080)], &["198.18.9.9"], &[]).build()],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .backends_in(&[("", "198.18.1.1", 8080, Ready), ("", "198.18.2.1", 9080, Ready)])
                    .draining(&[("", "198.18.2.2", 9080)])
                    .build(),
            )],
            ..Case::default()
        },
        Case {
            name: "slices of the derived service fall back to terminating endpoints like MCS slices",
            gke_imports: vec![gke_web().port("http", None, 80).build()],
            slices: vec![derived_slice("d-1").port("http", None, 8080).terminating("198.18.1.1").build()],
            want: vec![(port_key(VIP, 80, Protocol::Tcp), gke_entry("http", &[("198.18.1.1", 8080, Terminating)]))],
            ..Case::default()
        },
        Case {
            name: "only IPv6 slices: the Endpoints object is used",
            gke_imports: vec![gke_web().port("http", None, 80).build()],
            slices: vec![derived_slice("d-v6").address_type("IPv6").port("http", None, 8080).ready("fd00::1").build()],
            endpoints: vec![
                endpoints("demo", DERIVED).subset(&[("http", None, 8080)], &["198.18.1.1", "fd00::2"], &[]).build(),
            ],
            want: vec![(port_key(VIP, 80, Protocol::Tcp), gke_entry("http", &[("198.18.1.1", 8080, Ready)]))],
            ..Case::default()
        },
        Case {
            name: "no derived endpoints at all: the ports are programmed without backends, with a warning",
            gke_imports: vec![gke_web().port("http", None, 80).build()],
            want: vec![(port_key(VIP, 80, Protocol::Tcp), gke_entry("http", &[]))],
            warnings: vec![
                "net.gke.io/v1 ServiceImport demo/web: its derived service \"gke-mcs-web\" has no IPv4 EndpointSlice \
                 labelled kubernetes.io/service-name=gke-mcs-web and no Endpoints object in namespace demo",
            ],
            ..Case::default()
        },
        Case {
            name: "bad Endpoints fields are warnings naming the field; the rest is used",
            gke_imports: vec![gke_web().port("http", None, 80).build()],
            endpoints: vec![
                endpoints("demo", DERIVED)
                    .subset(&[("http", None, 8080)], &["198.18.1.1", "198.18.1.300"], &["x"])
                    .subset(&[("http", None, 0)], &["198.18.2.1"], &[])
                    .subset(&[("http", None, 1), ("http", Some("TCP"), 2)], &["198.18.3.1"], &[])
                    .build(),
            ],
            want: vec![(port_key(VIP, 80, Protocol::Tcp), gke_entry("http", &[("198.18.1.1", 8080, Ready)]))],
            warnings: vec![
                "Endpoints demo/gke-mcs-web subsets[0].addresses[1].ip: \"198.18.1.300\" is not an IP address",
                "Endpoints demo/gke-mcs-web subsets[0].notReadyAddresses[0].ip: \"x\" is not an IP address",
                "Endpoints demo/gke-mcs-web subsets[1].ports[0].port: 0 is outside 1..=65535",
                "Endpoints demo/gke-mcs-web subsets[2].ports[1]: port name \"http\" with protocol TCP is listed twice",
            ],
            ..Case::default()
        },
        Case {
            name: "two Endpoints objects of one name: neither is used",
            gke_imports: vec![gke_web().port("http", None, 80).build()],
            endpoints: vec![
                endpoints("demo", DERIVED).subset(&[("http", None, 8080)], &["198.18.1.1"], &[]).build(),
                endpoints("demo", DERIVED).subset(&[("http", None, 8080)], &["198.18.1.2"], &[]).build(),
            ],
            want: vec![(port_key(VIP, 80, Protocol::Tcp), gke_entry("http", &[]))],
            warnings: vec!["net.gke.io/v1 ServiceImport demo/web: 2 Endpoints objects are named demo/gke-mcs-web"],
            ..Case::default()
        },
        Case {
            name: "session affinity and locality work as for MCS imports",
            gke_imports: vec![
                gke_web()
                    .port("http", None, 80)
                    .affinity(0)
                    .annotation(k8s::LOCALITY_ANNOTATION, Some("local"))
                    .build(),
            ],
            endpoints: vec![endpoints("demo", DERIVED).subset(&[("http", None, 8080)], &["198.18.1.1"], &[]).build()],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                with_affinity(gke_entry("http", &[("198.18.1.1", 8080, Ready)]), 10_800),
            )],
            warnings: vec![
                "net.gke.io/v1 ServiceImport demo/web status.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is outside",
            ],
            ..Case::default()
        },
    ]);
}

#[test]
fn gke_imports_that_are_skipped() {
    // Each case also has a valid MCS import, which must not be disturbed.
    let ok = || import("demo", "ok").ip(VIP2).port("http", None, 80).build();
    let ok_slice = || slice("demo", "ok", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let ok_entry = || {
        (
            port_key(VIP2, 80, Protocol::Tcp),
            desired_port("demo", "ok").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
        )
    };
    let cases: Vec<(&str, GkeServiceImport, SkipReason, &str)> = vec![
        (
            "no derived-service annotation",
            gke_web().port("http", None, 80).annotation(k8s::GKE_DERIVED_SERVICE_ANNOTATION, None).build(),
            SkipReason::Invalid,
            "net.gke.io/v1: metadata.annotations[net.gke.io/derived-service]: missing or empty",
        ),
        (
            "headless",
            gke_web().type_("Headless").port("http", None, 80).build(),
            SkipReason::Headless,
            "net.gke.io/v1: headless imports have no ClusterSetIP",
        ),
        (
            "no ips yet",
            gke_import("demo", "web", DERIVED).port("http", None, 80).build(),
            SkipReason::NoIps,
            "net.gke.io/v1: status.ips is empty",
        ),
        (
            "neither spec nor status",
            GkeServiceImport { spec: None, status: None, ..gke_web().build() },
            SkipReason::NoIps,
            "net.gke.io/v1: spec.ips is empty",
        ),
        (
            "unparsable ip in spec",
            gke_import("demo", "web", DERIVED).ip("198.19.0.300").port("http", None, 80).in_spec().build(),
            SkipReason::Invalid,
            "net.gke.io/v1: spec.ips[0]: \"198.19.0.300\" is not an IP address",
        ),
        (
            "port out of range",
            gke_web().port("http", None, 65_536).build(),
            SkipReason::Invalid,
            "net.gke.io/v1: status.ports[0].port: 65536 is outside 1..=65535",
        ),
        (
            "unknown protocol",
            gke_web().port(Some("x"), Some("SCTP"), 80).build(),
            SkipReason::Invalid,
            "net.gke.io/v1: status.ports[0].protocol: unsupported protocol \"SCTP\"",
        ),
        (
            "IPv6 only",
            gke_import("demo", "web", DERIVED).ip("fd00::1").port("http", None, 80).build(),
            SkipReason::Invalid,
            "net.gke.io/v1: status.ips: only IPv6 ClusterSetIPs",
        ),
    ];
    run(cases
        .into_iter()
        .map(|(name, bad, reason, message)| Case {
            name,
            imports: vec![ok()],
            slices: vec![ok_slice()],
            gke_imports: vec![bad],
            endpoints: vec![endpoints("demo", DERIVED).subset(&[("http", None, 8080)], &["198.18.1.1"], &[]).build()],
            want: vec![ok_entry()],
            skipped: vec![("demo", "web", reason, message)],
            ..Case::default()
        })
        .collect());
}

#[test]
fn gke_and_mcs_imports_together() {
    let derived = || endpoints("demo", DERIVED).subset(&[("http", None, 8080)], &["198.18.1.1"], &[]).build();
    let mcs_slice = || slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build();
    run(vec![
        Case {
            name: "one namespace and name in both APIs: two imports; on a shared key the MCS one wins",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![mcs_slice()],
            gke_imports: vec![gke_web().port("http", None, 80).port("alt", None, 81).build()],
            endpoints: vec![derived()],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
            )],
            skipped: vec![(
                "demo",
                "web",
                SkipReason::Invalid,
                "net.gke.io/v1: status.ports[0]: 198.19.0.1:80/TCP is already used by ServiceImport demo/web",
            )],
            ..Case::default()
        },
        Case {
            name: "an earlier GKE import in (namespace, name) order wins over a later MCS one",
            imports: vec![import("demo", "zz").ip(VIP).port("http", None, 80).build()],
            gke_imports: vec![gke_web().port("http", None, 80).build()],
            endpoints: vec![derived()],
            want: vec![(port_key(VIP, 80, Protocol::Tcp), gke_entry("http", &[("198.18.1.1", 8080, Ready)]))],
            skipped: vec![(
                "demo",
                "zz",
                SkipReason::Invalid,
                "spec.ports[0]: 198.19.0.1:80/TCP is already used by net.gke.io/v1 ServiceImport demo/web",
            )],
            ..Case::default()
        },
        Case {
            name: "different ClusterSetIPs in both APIs: both programmed, never sharing backends",
            imports: vec![import("demo", "web").ip(VIP2).port("http", None, 80).build()],
            slices: vec![mcs_slice()],
            gke_imports: vec![gke_web().port("http", None, 80).build()],
            endpoints: vec![derived()],
            want: vec![
                (port_key(VIP, 80, Protocol::Tcp), gke_entry("http", &[("198.18.1.1", 8080, Ready)])),
                (
                    port_key(VIP2, 80, Protocol::Tcp),
                    desired_port("demo", "web").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "two GKE imports with one namespace and name are both skipped",
            gke_imports: vec![gke_web().port("http", None, 80).build(), gke_web().port("http", None, 81).build()],
            endpoints: vec![derived()],
            skipped: vec![(
                "demo",
                "web",
                SkipReason::Invalid,
                "net.gke.io/v1: 2 net.gke.io/v1 ServiceImports have this namespace and name",
            )],
            ..Case::default()
        },
    ]);
}
