//! Table-driven tests of the translation, in the style of kube-proxy's
//! `endpointslicecache_test.go`: every case lists its inputs and everything
//! the translation must say about them, and [`run`] also checks that the
//! output does not depend on the inputs' order.
mod cap;
mod gke;
mod readiness;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::k8s::{self, GkeServiceImport, ServiceImport};
use crate::testkit::{
    GkeImportBuilder, ImportBuilder, SliceBuilder, conditions, desired_port, endpoints, gke_import, import, port_key,
    slice,
};

fn with_affinity(entry: DesiredServicePort, timeout: u32) -> DesiredServicePort {
    DesiredServicePort { session_affinity_timeout: Some(timeout), ..entry }
}

// ---- the table runner ----------------------------------------------

/// One case: inputs, and everything the translation must say about them.
#[derive(Default)]
struct Case {
    name: &'static str,
    imports: Vec<ServiceImport>,
    slices: Vec<EndpointSlice>,
    gke_imports: Vec<GkeServiceImport>,
    endpoints: Vec<Endpoints>,
    /// `None`: [`config`].
    config: Option<Config>,
    /// Every entry of the desired state.
    want: Vec<(ServicePortKey, DesiredServicePort)>,
    /// Every skipped import: (namespace, name, reason, part of the message).
    skipped: Vec<(&'static str, &'static str, SkipReason, &'static str)>,
    /// Every excluded cluster: (namespace, name, cluster), all for the cap.
    excluded: Vec<(&'static str, &'static str, &'static str)>,
    /// Part of each warning, in the report's (sorted) order.
    warnings: Vec<&'static str>,
}

impl Case {
    fn inputs(&self) -> Inputs {
        Inputs {
            imports: self.imports.clone(),
            slices: self.slices.clone(),
            gke_imports: self.gke_imports.clone(),
            endpoints: self.endpoints.clone(),
        }
    }
}

fn translate_lists(imports: &[ServiceImport], slices: &[EndpointSlice], config: &Config) -> (DesiredState, Report) {
    let inputs = Inputs { imports: imports.to_vec(), slices: slices.to_vec(), ..Inputs::default() };
    translate(&inputs, config)
}

fn config() -> Config {
    Config { cluster_id: "east".into(), ..Config::default() }
}

/// Every order of the inputs that [`run`] tries besides the given one: each
/// list reversed, and each rotated by one.
fn reorderings(inputs: &Inputs) -> Vec<Inputs> {
    let reversed = Inputs {
        imports: inputs.imports.iter().rev().cloned().collect(),
        slices: inputs.slices.iter().rev().cloned().collect(),
        gke_imports: inputs.gke_imports.iter().rev().cloned().collect(),
        endpoints: inputs.endpoints.iter().rev().cloned().collect(),
    };
    let mut rotated = inputs.clone();
    if !rotated.imports.is_empty() {
        rotated.imports.rotate_left(1);
    }
    if !rotated.slices.is_empty() {
        rotated.slices.rotate_left(1);
    }
    if !rotated.gke_imports.is_empty() {
        rotated.gke_imports.rotate_left(1);
    }
    if !rotated.endpoints.is_empty() {
        rotated.endpoints.rotate_left(1);
    }
    vec![reversed, rotated]
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let name = case.name;
        let config = case.config.clone().unwrap_or_else(config);
        let inputs = case.inputs();
        let (state, report) = translate(&inputs, &config);

        let want: BTreeMap<_, _> = case.want.iter().cloned().collect();
        assert_eq!(want.len(), case.want.len(), "case {name:?}: duplicate keys in `want`");
        assert_eq!(state.services, want, "case {name:?}: services");

        let got_skipped: Vec<_> =
            report.skipped.iter().map(|s| (s.namespace.as_str(), s.name.as_str(), s.reason)).collect();
        let want_skipped: Vec<_> = case.skipped.iter().map(|(ns, n, r, _)| (*ns, *n, *r)).collect();
        assert_eq!(got_skipped, want_skipped, "case {name:?}: skipped ({:#?})", report.skipped);
        for (skip, (_, _, _, fragment)) in report.skipped.iter().zip(&case.skipped) {
            assert!(skip.message.contains(fragment), "case {name:?}: {:?} should contain {fragment:?}", skip.message);
        }

        let got_excluded: Vec<_> = report
            .excluded_clusters
            .iter()
            .map(|e| {
                assert_eq!(e.reason, ExclusionReason::ExporterCap, "case {name:?}");
                (e.namespace.as_str(), e.name.as_str(), e.cluster.as_str())
            })
            .collect();
        assert_eq!(got_excluded, case.excluded, "case {name:?}: excluded clusters");

        assert_eq!(report.warnings.len(), case.warnings.len(), "case {name:?}: warnings {:#?}", report.warnings);
        for (warning, fragment) in report.warnings.iter().zip(&case.warnings) {
            assert!(warning.contains(fragment), "case {name:?}: {warning:?} should contain {fragment:?}");
        }

        // The output never depends on the order of the inputs.
        for reordered in reorderings(&inputs) {
            assert_eq!(
                translate(&reordered, &config),
                (state.clone(), report.clone()),
                "case {name:?}: reordered inputs changed the output"
            );
        }
    }
}

// ---- cases ----------------------------------------------------------

const VIP: &str = "198.19.0.1";
const VIP2: &str = "198.19.0.2";

fn web() -> ImportBuilder {
    import("demo", "web").ip(VIP)
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn ports_and_keys() {
    run(vec![
        Case {
            name: "one port, one cluster",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.2").ready("198.18.0.1").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[("east", "198.18.0.1", 8080), ("east", "198.18.0.2", 8080)])
                    .build(),
            )],
            ..Case::default()
        },
        Case {
            name: "http/80 and https/443 from three clusters with different target ports",
            imports: vec![web().port("http", None, 80).port("https", None, 443).build()],
            slices: vec![
                slice("demo", "web", "east")
                    .port("http", None, 8080)
                    .port("https", None, 8443)
                    .ready("198.18.1.1")
                    .build(),
                // Ports listed in the other order.
                slice("demo", "web", "west")
                    .port("https", None, 9443)
                    .port("http", None, 9080)
                    .ready("198.18.2.1")
                    .build(),
                slice("demo", "web", "north")
                    .port("http", None, 80)
                    .port("https", None, 443)
                    .ready("198.18.3.1")
                    .build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web")
                        .port_name("http")
                        .ready(&[
                            ("east", "198.18.1.1", 8080),
                            ("north", "198.18.3.1", 80),
                            ("west", "198.18.2.1", 9080),
                        ])
                        .build(),
                ),
                (
                    port_key(VIP, 443, Protocol::Tcp),
                    desired_port("demo", "web")
                        .port_name("https")
                        .ready(&[
                            ("east", "198.18.1.1", 8443),
                            ("north", "198.18.3.1", 443),
                            ("west", "198.18.2.1", 9443),
                        ])
                        .build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "TCP/42 and UDP/42 are two independent entries",
            imports: vec![web().port("tcp-port", None, 42).udp("udp-port", 42).build()],
            slices: vec![
                slice("demo", "web", "east")
                    .port("tcp-port", None, 4200)
                    .udp("udp-port", 4201)
                    .ready("198.18.0.1")
                    .build(),
                slice("demo", "web", "west").udp("udp-port", 4202).ready("198.18.0.2").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 42, Protocol::Tcp),
                    desired_port("demo", "web").port_name("tcp-port").ready(&[("east", "198.18.0.1", 4200)]).build(),
                ),
                (
                    port_key(VIP, 42, Protocol::Udp),
                    desired_port("demo", "web")
                        .port_name("udp-port")
                        .ready(&[("east", "198.18.0.1", 4201), ("west", "198.18.0.2", 4202)])
                        .build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "explicit TCP equals unset protocol, on both sides",
            imports: vec![web().port(Some("http"), Some("TCP"), 80).build()],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
                slice("demo", "web", "west").port(Some("http"), Some("TCP"), Some(9090)).ready("198.18.0.2").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 9090)])
                    .build(),
            )],
            ..Case::default()
        },
        Case {
            name: "a port of the same name but another protocol does not match",
            imports: vec![web().port("dns", None, 53).build()],
            slices: vec![slice("demo", "web", "east").udp("dns", 5353).ready("198.18.0.1").build()],
            want: vec![(
                port_key(VIP, 53, Protocol::Tcp),
                desired_port("demo", "web").port_name("dns").ready(&[]).build(),
            )],
            ..Case::default()
        },
        Case {
            name: "unset and empty port names match each other",
            imports: vec![
                web().port(None, None, 80).build(),
                import("demo", "api").ip(VIP2).port(Some(""), None, 80).build(),
            ],
            slices: vec![
                slice("demo", "web", "east").port(Some(""), None, Some(8080)).ready("198.18.0.1").build(),
                slice("demo", "api", "east").port(None, None, Some(8081)).ready("198.18.0.2").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web").ready(&[("east", "198.18.0.1", 8080)]).build(),
                ),
                (
                    port_key(VIP2, 80, Protocol::Tcp),
                    desired_port("demo", "api").ready(&[("east", "198.18.0.2", 8081)]).build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "a slice without the named port contributes nothing to that entry",
            imports: vec![web().port("http", None, 80).port("metrics", None, 9100).build()],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
                slice("demo", "web", "west")
                    .port("http", None, 8080)
                    .port("metrics", None, 9100)
                    .ready("198.18.0.2")
                    .build(),
                slice("demo", "web", "north").port("other", None, 80).ready("198.18.0.3").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web")
                        .port_name("http")
                        .ready(&[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)])
                        .build(),
                ),
                (
                    port_key(VIP, 9100, Protocol::Tcp),
                    desired_port("demo", "web").port_name("metrics").ready(&[("west", "198.18.0.2", 9100)]).build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "slice ports without a number or out of range contribute nothing",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                slice("demo", "web", "east").port(Some("http"), None, None).ready("198.18.0.1").build(),
                slice("demo", "web", "west").port("http", None, 70000).ready("198.18.0.2").build(),
                slice("demo", "web", "north").port("http", None, 0).ready("198.18.0.3").build(),
                slice("demo", "web", "south").port("http", None, 8080).ready("198.18.0.4").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web").port_name("http").ready(&[("south", "198.18.0.4", 8080)]).build(),
            )],
            warnings: vec![
                "EndpointSlice demo/web-north ports[0].port: 0 is outside 1..=65535",
                "EndpointSlice demo/web-west ports[0].port: 70000 is outside 1..=65535",
            ],
            ..Case::default()
        },
        Case {
            name: "backends from several slices of one cluster are merged, deduplicated and sorted",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                slice("demo", "web", "east")
                    .named("web-east-1")
                    .port("http", None, 8080)
                    .ready("198.18.0.9")
                    .ready("198.18.0.1")
                    .build(),
                slice("demo", "web", "east")
                    .named("web-east-2")
                    .port("http", None, 8080)
                    .ready("198.18.0.1")
                    .ready("198.18.0.5")
                    .build(),
                // The same address with another target port is another backend.
                slice("demo", "web", "east").named("web-east-3").port("http", None, 8081).ready("198.18.0.1").build(),
                // The same address in another cluster is another backend.
                slice("demo", "web", "west").port("http", None, 8080).ready("198.18.0.1").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[
                        ("east", "198.18.0.1", 8080),
                        ("east", "198.18.0.1", 8081),
                        ("east", "198.18.0.5", 8080),
                        ("east", "198.18.0.9", 8080),
                        ("west", "198.18.0.1", 8080),
                    ])
                    .build(),
            )],
            ..Case::default()
        },
        Case {
            name: "an import without ports programs nothing",
            imports: vec![web().build()],
            slices: vec![slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build()],
            ..Case::default()
        },
    ]);
}

#[test]
fn which_slices_count() {
    run(vec![
        Case {
            name: "only MCS slices of the import in its namespace, not FQDN, IPv6 or controller-managed",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                slice("demo", "web", "east").named("good").port("http", None, 8080).ready("198.18.0.1").build(),
                // The local cluster's slice is just another cluster's.
                slice("demo", "web", "west").named("local").port("http", None, 8080).ready("198.18.0.2").build(),
                slice("demo", "web", "x")
                    .named("no-cluster")
                    .without_label(k8s::LABEL_SOURCE_CLUSTER)
                    .port("http", None, 8080)
                    .ready("198.18.1.1")
                    .build(),
                slice("demo", "web", "").named("empty-cluster").port("http", None, 8080).ready("198.18.1.2").build(),
                slice("demo", "web", "east")
                    .named("no-service")
                    .without_label(k8s::LABEL_SERVICE_NAME)
                    .port("http", None, 8080)
                    .ready("198.18.1.3")
                    .build(),
                slice("demo", "web", "east")
                    .named("plain")
                    .without_label(k8s::LABEL_SERVICE_NAME)
                    .without_label(k8s::LABEL_SOURCE_CLUSTER)
                    .label("kubernetes.io/service-name", "web")
                    .port("http", None, 8080)
                    .ready("198.18.1.4")
                    .build(),
                slice("other", "web", "east").named("other-ns").port("http", None, 8080).ready("198.18.1.5").build(),
                slice("demo", "api", "east").named("other-svc").port("http", None, 8080).ready("198.18.1.6").build(),
                slice("demo", "web", "east")
                    .named("managed")
                    .label(k8s::LABEL_MANAGED_BY, k8s::MANAGED_BY_ENDPOINTSLICE_CONTROLLER)
                    .port("http", None, 8080)
                    .ready("198.18.1.7")
                    .build(),
                slice("demo", "web", "east")
                    .named("fqdn")
                    .address_type("FQDN")
                    .port("http", None, 8080)
                    .ready("pod.example")
                    .build(),
                slice("demo", "web", "east")
                    .named("v6")
                    .address_type("IPv6")
                    .port("http", None, 8080)
                    .ready("fd00::1")
                    .build(),
                slice("demo", "web", "east")
                    .named("odd-type")
                    .address_type("IPv5")
                    .port("http", None, 8080)
                    .ready("198.18.1.8")
                    .build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)])
                    .build(),
            )],
            warnings: vec![
                "EndpointSlice demo/empty-cluster: has label multicluster.kubernetes.io/service-name but no multicluster.kubernetes.io/source-cluster label",
                "EndpointSlice demo/no-cluster: has label",
                "EndpointSlice demo/odd-type addressType: unknown address type \"IPv5\"",
            ],
            ..Case::default()
        },
        Case {
            name: "imports of one name in two namespaces never share backends",
            imports: vec![
                import("demo", "web").ip(VIP).port("http", None, 80).build(),
                import("prod", "web").ip(VIP2).port("http", None, 80).build(),
            ],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
                slice("prod", "web", "east").port("http", None, 8080).ready("198.18.0.2").build(),
                slice("prod", "web", "west").port("http", None, 8080).ready("198.18.0.3").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
                ),
                (
                    port_key(VIP2, 80, Protocol::Tcp),
                    desired_port("prod", "web")
                        .port_name("http")
                        .ready(&[("east", "198.18.0.2", 8080), ("west", "198.18.0.3", 8080)])
                        .build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "status.clusters only ranks: unlisted present clusters count too",
            imports: vec![web().port("http", None, 80).status_clusters(&["west"]).build()],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
                slice("demo", "web", "west").port("http", None, 8080).ready("198.18.0.2").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)])
                    .build(),
            )],
            ..Case::default()
        },
    ]);
}

#[test]
fn types_and_ips() {
    let east = || slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let programmed = || {
        vec![(
            port_key(VIP, 80, Protocol::Tcp),
            desired_port("demo", "web").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
        )]
    };
    run(vec![
        Case {
            name: "headless imports are skipped",
            imports: vec![web().type_("Headless").port("http", None, 80).build()],
            slices: vec![east()],
            skipped: vec![("demo", "web", SkipReason::Headless, "headless")],
            ..Case::default()
        },
        Case {
            name: "an empty type means ClusterSetIP",
            imports: vec![web().type_("").port("http", None, 80).build()],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
        Case {
            name: "a ClusterSetIP import without ips is skipped",
            imports: vec![import("demo", "web").port("http", None, 80).build()],
            slices: vec![east()],
            skipped: vec![("demo", "web", SkipReason::NoIps, "spec.ips is empty")],
            ..Case::default()
        },
        Case {
            name: "dual-stack programs the IPv4 ClusterSetIP",
            imports: vec![
                import("demo", "web")
                    .ip("fd00::10")
                    .ip(VIP)
                    .family("IPv6")
                    .family("IPv4")
                    .port("http", None, 80)
                    .build(),
            ],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
        Case {
            name: "IPv6-only imports are skipped: the datapath is IPv4 only",
            imports: vec![import("demo", "web").ip("fd00::10").family("IPv6").port("http", None, 80).build()],
            slices: vec![east()],
            skipped: vec![(
                "demo",
                "web",
                SkipReason::Invalid,
                "spec.ips: only IPv6 ClusterSetIPs (fd00::10); IPv6 is not translated (the datapath is IPv4 only)",
            )],
            ..Case::default()
        },
        Case {
            name: "ipFamilies may be left out",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
    ]);
}

#[test]
fn invalid_imports_are_skipped_naming_the_field() {
    // Each case also has a valid import, which must not be disturbed.
    let ok = || import("demo", "ok").ip(VIP2).port("http", None, 80).build();
    let ok_entry = || {
        (
            port_key(VIP2, 80, Protocol::Tcp),
            desired_port("demo", "ok").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
        )
    };
    let ok_slice = || slice("demo", "ok", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let cases: Vec<(&str, ServiceImport, &str)> = vec![
        (
            "unparsable ip",
            web().port("http", None, 80).build().with_ips(&["300.1.1.1"]),
            r#"spec.ips[0]: "300.1.1.1" is not an IP address"#,
        ),
        ("port 0", web().port("http", None, 0).build(), "spec.ports[0].port: 0 is outside 1..=65535"),
        (
            "port above 65535",
            web().port("http", None, 80).port("big", None, 70000).build(),
            "spec.ports[1].port: 70000 is outside 1..=65535",
        ),
        ("negative port", web().port("http", None, -1).build(), "spec.ports[0].port: -1 is outside 1..=65535"),
        (
            "SCTP",
            web().port("http", None, 80).port(Some("sctp"), Some("SCTP"), 80).build(),
            r#"spec.ports[1].protocol: unsupported protocol "SCTP" (TCP and UDP are translated)"#,
        ),
        (
            "lower-case protocol",
            web().port(Some("http"), Some("tcp"), 80).build(),
            r#"spec.ports[0].protocol: unsupported protocol "tcp""#,
        ),
        (
            "duplicate port name",
            web().port("http", None, 80).udp("http", 81).build(),
            r#"spec.ports[1].name: duplicate port name "http" (also spec.ports[0])"#,
        ),
        (
            "two unnamed ports",
            web().port(None, None, 80).port(Some(""), None, 81).build(),
            r#"spec.ports[1].name: duplicate port name """#,
        ),
        (
            "duplicate port and protocol",
            web().port("a", None, 80).port("b", None, 80).build(),
            "spec.ports[1]: TCP/80 is listed twice (also spec.ports[0])",
        ),
        (
            "three ips",
            web().ip("fd00::1").ip("198.19.0.9").port("http", None, 80).build(),
            "spec.ips: 3 addresses, at most 2",
        ),
        ("two IPv4 ips", web().ip("198.19.0.9").port("http", None, 80).build(), "spec.ips[1]: a second IPv4 address"),
        (
            "family disagrees",
            web().family("IPv6").port("http", None, 80).build(),
            r#"spec.ipFamilies[0]: IPv6 disagrees with spec.ips[0] "198.19.0.1""#,
        ),
        (
            "unknown family",
            web().family("IPv5").port("http", None, 80).build(),
            r#"spec.ipFamilies[0]: unknown family "IPv5""#,
        ),
        (
            "three families",
            web().family("IPv4").family("IPv6").family("IPv4").port("http", None, 80).build(),
            "spec.ipFamilies: 3 families",
        ),
        (
            "unknown type",
            web().type_("LoadBalancer").port("http", None, 80).build(),
            r#"spec.type: unsupported type "LoadBalancer""#,
        ),
        ("invalid ports beat missing ips", import("demo", "web").port("http", None, 0).build(), "spec.ports[0].port"),
    ];
    run(cases
        .into_iter()
        .map(|(name, bad, message)| Case {
            name,
            imports: vec![bad, ok()],
            slices: vec![ok_slice(), slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.2").build()],
            want: vec![ok_entry()],
            skipped: vec![("demo", "web", SkipReason::Invalid, message)],
            ..Case::default()
        })
        .collect());

    let nameless = ServiceImport {
        metadata: ObjectMeta { namespace: Some("demo".into()), ..ObjectMeta::default() },
        ..web().port("http", None, 80).build()
    };
    run(vec![Case {
        name: "missing name",
        imports: vec![nameless, ok()],
        slices: vec![ok_slice()],
        want: vec![ok_entry()],
        skipped: vec![("demo", "", SkipReason::Invalid, "metadata.name: missing")],
        ..Case::default()
    }]);
}

impl ServiceImport {
    fn with_ips(mut self, ips: &[&str]) -> Self {
        self.spec.ips = ips.iter().map(|ip| (*ip).into()).collect();
        self
    }
    fn renamed(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.into());
        self
    }
}

#[test]
fn conflicting_imports() {
    let a_slice = || slice("demo", "a", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let b_slice = || slice("demo", "b", "east").port("http", None, 8080).ready("198.18.0.2").build();
    run(vec![
        Case {
            name: "the later import in (namespace, name) order is skipped, naming the other",
            imports: vec![
                import("demo", "b").ip(VIP).port("x", None, 81).port("http", None, 80).build(),
                import("demo", "a").ip(VIP).port("http", None, 80).build(),
            ],
            slices: vec![a_slice(), b_slice()],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "a").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
            )],
            skipped: vec![(
                "demo",
                "b",
                SkipReason::Invalid,
                "spec.ports[1]: 198.19.0.1:80/TCP is already used by ServiceImport demo/a",
            )],
            ..Case::default()
        },
        Case {
            name: "namespace orders before name",
            imports: vec![
                import("prod", "a").ip(VIP).port("http", None, 80).build(),
                import("demo", "z").ip(VIP).port("http", None, 80).build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "z").port_name("http").ready(&[]).build(),
            )],
            skipped: vec![("prod", "a", SkipReason::Invalid, "already used by ServiceImport demo/z")],
            ..Case::default()
        },
        Case {
            name: "one ip with another port or protocol is no conflict",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", None, 80).build(),
                import("demo", "b").ip(VIP).udp("http", 80).port("alt", None, 81).build(),
            ],
            slices: vec![
                a_slice(),
                slice("demo", "b", "east").udp("http", 8080).port("alt", None, 8081).ready("198.18.0.2").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "a").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
                ),
                (
                    port_key(VIP, 80, Protocol::Udp),
                    desired_port("demo", "b").port_name("http").ready(&[("east", "198.18.0.2", 8080)]).build(),
                ),
                (
                    port_key(VIP, 81, Protocol::Tcp),
                    desired_port("demo", "b").port_name("alt").ready(&[("east", "198.18.0.2", 8081)]).build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "a skipped import claims nothing",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", None, 80).port(Some("s"), Some("SCTP"), 9).build(),
                import("demo", "b").ip(VIP).port("http", None, 80).build(),
            ],
            slices: vec![a_slice(), b_slice()],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "b").port_name("http").ready(&[("east", "198.18.0.2", 8080)]).build(),
            )],
            skipped: vec![("demo", "a", SkipReason::Invalid, "spec.ports[1].protocol")],
            ..Case::default()
        },
        Case {
            name: "two imports with one namespace and name are both skipped",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", None, 80).build(),
                import("demo", "a").ip(VIP2).port("http", None, 80).build(),
            ],
            slices: vec![a_slice()],
            skipped: vec![("demo", "a", SkipReason::Invalid, "2 ServiceImports have this namespace and name")],
            ..Case::default()
        },
    ]);
}

#[test]
fn session_affinity() {
    let east = || slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let programmed = |timeout: Option<u32>| {
        let e = desired_port("demo", "web").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build();
        let e = match timeout {
            Some(t) => with_affinity(e, t),
            None => e,
        };
        vec![(port_key(VIP, 80, Protocol::Tcp), e)]
    };
    let case = |name, import: ServiceImport, timeout, warnings| Case {
        name,
        imports: vec![import],
        slices: vec![east()],
        want: programmed(timeout),
        warnings,
        ..Case::default()
    };
    run(vec![
        case(
            "ClientIP without a timeout uses 10800",
            web().port("http", None, 80).affinity("ClientIP", None).build(),
            Some(10_800),
            vec![],
        ),
        case(
            "ClientIP with a timeout",
            web().port("http", None, 80).affinity("ClientIP", Some(60)).build(),
            Some(60),
            vec![],
        ),
        case(
            "the largest timeout",
            web().port("http", None, 80).affinity("ClientIP", Some(86_400)).build(),
            Some(86_400),
            vec![],
        ),
        case(
            "timeout 0 falls back to 10800",
            web().port("http", None, 80).affinity("ClientIP", Some(0)).build(),
            Some(10_800),
            vec![
                "ServiceImport demo/web spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is outside 1..=86400; using 10800",
            ],
        ),
        case(
            "timeout above 86400 falls back to 10800",
            web().port("http", None, 80).affinity("ClientIP", Some(86_401)).build(),
            Some(10_800),
            vec!["timeoutSeconds: 86401 is outside"],
        ),
        case("None", web().port("http", None, 80).affinity("None", Some(60)).build(), None, vec![]),
        case("unset", web().port("http", None, 80).build(), None, vec![]),
        case(
            "an unknown value turns affinity off",
            web().port("http", None, 80).affinity("Sticky", None).build(),
            None,
            vec![r#"ServiceImport demo/web spec.sessionAffinity: unknown value "Sticky""#],
        ),
    ]);
}

/// A mix of everything, for the order and mutation checks.
fn mixed_inputs() -> Inputs {
    let imports = vec![
        import("demo", "web")
            .ip(VIP)
            .port("http", None, 80)
            .port("https", None, 443)
            .affinity("ClientIP", Some(0))
            .build(),
        import("demo", "dns").ip(VIP2).port("tcp", None, 53).udp("udp", 53).build(),
        import("prod", "web")
            .ip("198.19.0.3")
            .port("http", None, 80)
            .status_clusters(&["west", "c3"])
            .annotation(k8s::LOCALITY_ANNOTATION, "local")
            .build(),
        // Loses VIP:80/TCP to demo/web, which sorts first.
        import("demo", "web-copy").ip(VIP).port("http", None, 80).build(),
        import("demo", "headless").type_("Headless").build(),
        import("demo", "pending").port("http", None, 80).build(),
        web().port(Some("x"), Some("SCTP"), 1).build().with_ips(&["198.19.0.4"]).renamed("bad"),
    ];
    let mut slices = vec![
        slice("demo", "web", "east")
            .port("http", None, 8080)
            .port("https", None, 8443)
            .ready("198.18.0.1")
            .ready("198.18.0.300")
            .terminating("198.18.0.5")
            .build(),
        slice("demo", "web", "west")
            .port("https", None, 9443)
            .port("http", None, 9080)
            .ready("198.18.0.2")
            .not_ready("198.18.0.3")
            .build(),
        slice("demo", "web", "west")
            .named("web-west-2")
            .port("http", None, 9080)
            .ready("198.18.0.2")
            .ready("198.18.0.4")
            .build(),
        slice("demo", "dns", "east").port("tcp", None, 5353).udp("udp", 5353).terminating("198.18.1.1").build(),
        slice("demo", "web", "x").named("stray").without_label(k8s::LABEL_SOURCE_CLUSTER).build(),
        slice("demo", "", "")
            .named("gke-derived")
            .without_label(k8s::LABEL_SERVICE_NAME)
            .without_label(k8s::LABEL_SOURCE_CLUSTER)
            .label(k8s::LABEL_KUBERNETES_SERVICE_NAME, "gke-mcs-sliced")
            .port("http", None, 8080)
            .ready("198.18.4.1")
            .build(),
    ];
    // Seven clusters for prod/web: two are over the cap.
    for (i, cluster) in ["c1", "c2", "c3", "c4", "c5", "west", "east"].into_iter().enumerate() {
        slices
            .push(slice("prod", "web", cluster).port("http", None, 8080).ready(&format!("198.18.2.{}", i + 1)).build());
    }
    let gke_imports = vec![
        gke_import("demo", "gke-endpoints", "gke-mcs-endpoints").ip("198.19.0.20").port("http", None, 80).build(),
        gke_import("demo", "gke-sliced", "gke-mcs-sliced").ip("198.19.0.21").port("http", None, 80).in_spec().build(),
        gke_import("demo", "gke-missing", "gke-mcs-missing").ip("198.19.0.22").port("http", None, 80).build(),
        gke_import("demo", "gke-bad", "x").ip("198.19.0.23").port("http", None, 0).build(),
        gke_import("demo", "web", "gke-mcs-web").ip(VIP).port("https", None, 443).build(),
    ];
    let endpoints = vec![
        endpoints("demo", "gke-mcs-endpoints")
            .subset(&[("http", None, 8080)], &["198.18.3.1", "198.18.3.2"], &["198.18.3.3"])
            .build(),
        endpoints("demo", "gke-mcs-sliced").subset(&[("http", None, 8080)], &["198.18.3.9"], &[]).build(),
    ];
    Inputs { imports, slices, gke_imports, endpoints }
}

#[test]
fn output_does_not_depend_on_input_order() {
    let inputs = mixed_inputs();
    let config = config();
    let expected = translate(&inputs, &config);
    assert_eq!(expected.0.services.len(), 8, "{:#?}", expected.0);
    assert_eq!(expected.1.skipped.len(), 6, "{:#?}", expected.1);
    assert_eq!(expected.1.excluded_clusters.len(), 2, "{:#?}", expected.1);
    assert_eq!(expected.1.warnings.len(), 4, "{:#?}", expected.1);
    let longest = [inputs.imports.len(), inputs.slices.len(), inputs.gke_imports.len(), inputs.endpoints.len()]
        .into_iter()
        .max()
        .unwrap_or_default();
    for rotation in 0..longest {
        for reverse in [false, true] {
            let mut reordered = inputs.clone();
            let (i, s, g, e) = (
                reordered.imports.len(),
                reordered.slices.len(),
                reordered.gke_imports.len(),
                reordered.endpoints.len(),
            );
            reordered.imports.rotate_left(rotation % i);
            reordered.slices.rotate_left(rotation % s);
            reordered.gke_imports.rotate_left(rotation % g);
            reordered.endpoints.rotate_left(rotation % e);
            if reverse {
                reordered.imports.reverse();
                reordered.gke_imports.reverse();
            } else {
                reordered.slices.reverse();
                reordered.endpoints.reverse();
            }
            assert_eq!(translate(&reordered, &config), expected, "rotation {rotation}, reverse {reverse}");
        }
    }
}

#[test]
fn inputs_are_not_mutated() {
    let inputs = mixed_inputs();
    let before = inputs.clone();
    for locality in [Locality::None, Locality::Local, Locality::Remote] {
        for cap in [0, 1, 5] {
            let config = Config { cluster_id: "east".into(), max_exporting_clusters: cap, locality };
            let _ = translate(&inputs, &config);
            assert_eq!(inputs.imports, before.imports, "imports");
            assert_eq!(inputs.slices, before.slices, "slices");
            assert_eq!(inputs.gke_imports, before.gke_imports, "GKE imports");
            assert_eq!(inputs.endpoints, before.endpoints, "Endpoints");
        }
    }
}

#[test]
fn names_and_numbers() {
    assert_eq!(Protocol::Tcp.number(), mcs_common::proto::TCP);
    assert_eq!(Protocol::Udp.number(), mcs_common::proto::UDP);
    assert_eq!(Protocol::Tcp.as_str(), "TCP");
    assert_eq!(Protocol::Udp.as_str(), "UDP");
    assert_eq!(Protocol::from_k8s(None), Some(Protocol::Tcp));
    assert_eq!(Protocol::from_k8s(Some("")), Some(Protocol::Tcp));
    assert_eq!(Protocol::from_k8s(Some("UDP")), Some(Protocol::Udp));
    assert_eq!(Protocol::from_k8s(Some("SCTP")), None);
    assert_eq!(SkipReason::Headless.as_str(), "headless");
    assert_eq!(SkipReason::NoIps.as_str(), "no-ips");
    assert_eq!(SkipReason::Invalid.as_str(), "invalid");
    assert_eq!(port_key(VIP, 80, Protocol::Udp).to_string(), "198.19.0.1:80/UDP");
}
