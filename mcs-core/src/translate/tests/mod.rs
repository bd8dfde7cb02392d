//! Table-driven tests of the translation, in the style of kube-proxy's
//! `endpointslicecache_test.go`: every case lists its inputs and everything
//! the translation must say about them, and [`run`] also checks that the
//! output does not depend on the inputs' order.
mod cap;
mod gke;
mod readiness;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::k8s::{
    self, ClientIpConfig, ClusterStatus, GkeServiceImport, ServiceImport, ServiceImportSpec, ServiceImportStatus,
    ServicePort, SessionAffinityConfig,
};

// ---- builders -------------------------------------------------------

/// Builds a `ServiceImport`: `ClusterSetIP`, no ips, no ports.
struct ImportBuilder(ServiceImport);

fn import(namespace: &str, name: &str) -> ImportBuilder {
    ImportBuilder(ServiceImport {
        api_version: "multicluster.x-k8s.io/v1beta1".into(),
        kind: "ServiceImport".into(),
        metadata: ObjectMeta { namespace: Some(namespace.into()), name: Some(name.into()), ..ObjectMeta::default() },
        spec: ServiceImportSpec { type_: k8s::TYPE_CLUSTER_SET_IP.into(), ..ServiceImportSpec::default() },
        status: None,
    })
}

impl ImportBuilder {
    fn type_(mut self, type_: &str) -> Self {
        self.0.spec.type_ = type_.into();
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.0.spec.ips.push(ip.into());
        self
    }
    fn family(mut self, family: &str) -> Self {
        self.0.spec.ip_families.push(family.into());
        self
    }
    /// A port without a protocol (TCP).
    fn port(self, name: &str, port: i64) -> Self {
        self.raw_port(Some(name), None, port)
    }
    fn udp(self, name: &str, port: i64) -> Self {
        self.raw_port(Some(name), Some("UDP"), port)
    }
    fn raw_port(mut self, name: Option<&str>, protocol: Option<&str>, port: i64) -> Self {
        self.0.spec.ports.push(ServicePort {
            name: name.map(Into::into),
            protocol: protocol.map(Into::into),
            app_protocol: None,
            port,
        });
        self
    }
    fn affinity(mut self, affinity: &str, timeout: Option<i64>) -> Self {
        self.0.spec.session_affinity = Some(affinity.into());
        self.0.spec.session_affinity_config =
            timeout.map(|t| SessionAffinityConfig { client_ip: Some(ClientIpConfig { timeout_seconds: Some(t) }) });
        self
    }
    fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0.metadata.annotations.get_or_insert_default().insert(key.into(), value.into());
        self
    }
    fn status_clusters(mut self, clusters: &[&str]) -> Self {
        let clusters = clusters.iter().map(|c| ClusterStatus { cluster: (*c).into() }).collect();
        self.0.status = Some(ServiceImportStatus { clusters });
        self
    }
    fn build(self) -> ServiceImport {
        self.0
    }
}

/// Builds an `EndpointSlice`.
struct SliceBuilder(EndpointSlice);

/// An IPv4 MCS slice of `service` from `cluster`, with both labels.
fn slice(namespace: &str, name: &str, service: &str, cluster: &str) -> SliceBuilder {
    SliceBuilder(EndpointSlice {
        address_type: k8s::ADDRESS_TYPE_IPV4.into(),
        metadata: ObjectMeta { namespace: Some(namespace.into()), name: Some(name.into()), ..ObjectMeta::default() },
        ..EndpointSlice::default()
    })
    .label(k8s::LABEL_SERVICE_NAME, service)
    .label(k8s::LABEL_SOURCE_CLUSTER, cluster)
}

impl SliceBuilder {
    fn label(mut self, key: &str, value: &str) -> Self {
        self.0.metadata.labels.get_or_insert_default().insert(key.into(), value.into());
        self
    }
    fn without_label(mut self, key: &str) -> Self {
        self.0.metadata.labels.get_or_insert_default().remove(key);
        self
    }
    fn address_type(mut self, address_type: &str) -> Self {
        self.0.address_type = address_type.into();
        self
    }
    /// A port without a protocol (TCP).
    fn port(self, name: &str, port: i32) -> Self {
        self.raw_port(Some(name), None, Some(port))
    }
    fn udp(self, name: &str, port: i32) -> Self {
        self.raw_port(Some(name), Some("UDP"), Some(port))
    }
    fn raw_port(mut self, name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Self {
        self.0.ports.get_or_insert_default().push(EndpointPort {
            name: name.map(Into::into),
            protocol: protocol.map(Into::into),
            port,
            app_protocol: None,
        });
        self
    }
    fn endpoint(mut self, address: &str, conditions: Option<EndpointConditions>) -> Self {
        self.0.endpoints.get_or_insert_default().push(Endpoint {
            addresses: vec![address.into()],
            conditions,
            ..Endpoint::default()
        });
        self
    }
    /// An endpoint with `ready: true`.
    fn ready(self, address: &str) -> Self {
        self.endpoint(address, Some(EndpointConditions { ready: Some(true), ..EndpointConditions::default() }))
    }
    fn not_ready(self, address: &str) -> Self {
        self.endpoint(address, Some(EndpointConditions { ready: Some(false), ..EndpointConditions::default() }))
    }
    /// Explicit conditions (ready, serving, terminating); `None` leaves one unset.
    fn conditions(self, address: &str, ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> Self {
        self.endpoint(address, Some(EndpointConditions { ready, serving, terminating }))
    }
    /// Serving but terminating, as kube sets it during graceful shutdown.
    fn terminating(self, address: &str) -> Self {
        self.endpoint(
            address,
            Some(EndpointConditions { ready: Some(false), serving: Some(true), terminating: Some(true) }),
        )
    }
    fn build(self) -> EndpointSlice {
        self.0
    }
}

/// Builds a GKE `ServiceImport` (`net.gke.io/v1`) with `ips` and `ports`
/// under `status`, as in GKE's documentation, and the derived-service
/// annotation.
struct GkeBuilder(GkeServiceImport);

fn gke_import(namespace: &str, name: &str, derived: &str) -> GkeBuilder {
    let mut annotations = BTreeMap::new();
    annotations.insert(k8s::GKE_DERIVED_SERVICE_ANNOTATION.to_owned(), derived.to_owned());
    GkeBuilder(GkeServiceImport {
        api_version: k8s::GKE_SERVICE_IMPORT_API_VERSION.into(),
        kind: "ServiceImport".into(),
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(ServiceImportSpec { type_: k8s::TYPE_CLUSTER_SET_IP.into(), ..ServiceImportSpec::default() }),
    })
}

impl GkeBuilder {
    fn section(&mut self) -> &mut ServiceImportSpec {
        self.0.status.get_or_insert_default()
    }
    fn ip(mut self, ip: &str) -> Self {
        self.section().ips.push(ip.into());
        self
    }
    fn port(self, name: &str, port: i64) -> Self {
        self.raw_port(Some(name), None, port)
    }
    fn udp(self, name: &str, port: i64) -> Self {
        self.raw_port(Some(name), Some("UDP"), port)
    }
    fn raw_port(mut self, name: Option<&str>, protocol: Option<&str>, port: i64) -> Self {
        self.section().ports.push(ServicePort {
            name: name.map(Into::into),
            protocol: protocol.map(Into::into),
            app_protocol: None,
            port,
        });
        self
    }
    fn type_(mut self, type_: &str) -> Self {
        self.section().type_ = type_.into();
        self
    }
    fn affinity(mut self, timeout: i64) -> Self {
        let section = self.section();
        section.session_affinity = Some("ClientIP".into());
        section.session_affinity_config =
            Some(SessionAffinityConfig { client_ip: Some(ClientIpConfig { timeout_seconds: Some(timeout) }) });
        self
    }
    /// Moves `ips`, `ports` and the rest from `status` to `spec`.
    fn in_spec(mut self) -> Self {
        self.0.spec = self.0.status.take();
        self
    }
    fn annotation(mut self, key: &str, value: Option<&str>) -> Self {
        let annotations = self.0.metadata.annotations.get_or_insert_default();
        match value {
            Some(v) => annotations.insert(key.into(), v.into()),
            None => annotations.remove(key),
        };
        self
    }
    fn build(self) -> GkeServiceImport {
        self.0
    }
}

/// Builds a core/v1 `Endpoints` object, one subset at a time.
struct EndpointsBuilder(Endpoints);

fn endpoints(namespace: &str, name: &str) -> EndpointsBuilder {
    EndpointsBuilder(Endpoints {
        metadata: ObjectMeta { namespace: Some(namespace.into()), name: Some(name.into()), ..ObjectMeta::default() },
        subsets: None,
    })
}

impl EndpointsBuilder {
    /// A subset with `ports` (name, protocol, port), ready and not-ready
    /// addresses.
    fn subset(mut self, ports: &[(&str, Option<&str>, i32)], ready: &[&str], not_ready: &[&str]) -> Self {
        use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort as CorePort, EndpointSubset};
        let addresses = |ips: &[&str]| {
            Some(ips.iter().map(|ip| EndpointAddress { ip: (*ip).into(), ..EndpointAddress::default() }).collect())
        };
        self.0.subsets.get_or_insert_default().push(EndpointSubset {
            addresses: addresses(ready),
            not_ready_addresses: addresses(not_ready),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, protocol, port)| CorePort {
                        name: Some((*name).into()),
                        protocol: protocol.map(Into::into),
                        port: *port,
                        app_protocol: None,
                    })
                    .collect(),
            ),
        });
        self
    }
    fn build(self) -> Endpoints {
        self.0
    }
}

/// An entry with explicit backends and draining endpoints:
/// (cluster, ip, port, state).
fn entry_with(
    namespace: &str,
    name: &str,
    port_name: &str,
    backends: &[(&str, &str, u16, EndpointState)],
    draining: &[(&str, &str, u16)],
) -> DesiredServicePort {
    let backend = |cluster: &str, ip: &str, port: u16, state| DesiredBackend {
        cluster: cluster.into(),
        ip: ip.parse().expect("test backend IP"),
        port,
        state,
    };
    DesiredServicePort {
        namespace: namespace.into(),
        name: name.into(),
        port_name: port_name.into(),
        session_affinity_timeout: None,
        backends: backends.iter().map(|(c, ip, port, state)| backend(c, ip, *port, *state)).collect(),
        draining: draining.iter().map(|(c, ip, port)| backend(c, ip, *port, EndpointState::Terminating)).collect(),
    }
}

fn key(ip: &str, port: u16, protocol: Protocol) -> ServicePortKey {
    ServicePortKey { ip: ip.parse().expect("test VIP"), port, protocol }
}

/// An entry without affinity whose backends are all ready.
fn entry(namespace: &str, name: &str, port_name: &str, backends: &[(&str, &str, u16)]) -> DesiredServicePort {
    DesiredServicePort {
        namespace: namespace.into(),
        name: name.into(),
        port_name: port_name.into(),
        session_affinity_timeout: None,
        backends: backends
            .iter()
            .map(|(cluster, ip, port)| DesiredBackend {
                cluster: (*cluster).into(),
                ip: ip.parse().expect("test backend IP"),
                port: *port,
                state: EndpointState::Ready,
            })
            .collect(),
        draining: Vec::new(),
    }
}

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
            imports: vec![web().port("http", 80).build()],
            slices: vec![
                slice("demo", "web-east", "web", "east")
                    .port("http", 8080)
                    .ready("198.18.0.2")
                    .ready("198.18.0.1")
                    .build(),
            ],
            want: vec![(
                key(VIP, 80, Protocol::Tcp),
                entry("demo", "web", "http", &[("east", "198.18.0.1", 8080), ("east", "198.18.0.2", 8080)]),
            )],
            ..Case::default()
        },
        Case {
            name: "http/80 and https/443 from three clusters with different target ports",
            imports: vec![web().port("http", 80).port("https", 443).build()],
            slices: vec![
                slice("demo", "web-east", "web", "east")
                    .port("http", 8080)
                    .port("https", 8443)
                    .ready("198.18.1.1")
                    .build(),
                // Ports listed in the other order.
                slice("demo", "web-west", "web", "west")
                    .port("https", 9443)
                    .port("http", 9080)
                    .ready("198.18.2.1")
                    .build(),
                slice("demo", "web-north", "web", "north")
                    .port("http", 80)
                    .port("https", 443)
                    .ready("198.18.3.1")
                    .build(),
            ],
            want: vec![
                (
                    key(VIP, 80, Protocol::Tcp),
                    entry(
                        "demo",
                        "web",
                        "http",
                        &[("east", "198.18.1.1", 8080), ("north", "198.18.3.1", 80), ("west", "198.18.2.1", 9080)],
                    ),
                ),
                (
                    key(VIP, 443, Protocol::Tcp),
                    entry(
                        "demo",
                        "web",
                        "https",
                        &[("east", "198.18.1.1", 8443), ("north", "198.18.3.1", 443), ("west", "198.18.2.1", 9443)],
                    ),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "TCP/42 and UDP/42 are two independent entries",
            imports: vec![web().port("tcp-port", 42).udp("udp-port", 42).build()],
            slices: vec![
                slice("demo", "web-east", "web", "east")
                    .port("tcp-port", 4200)
                    .udp("udp-port", 4201)
                    .ready("198.18.0.1")
                    .build(),
                slice("demo", "web-west", "web", "west").udp("udp-port", 4202).ready("198.18.0.2").build(),
            ],
            want: vec![
                (key(VIP, 42, Protocol::Tcp), entry("demo", "web", "tcp-port", &[("east", "198.18.0.1", 4200)])),
                (
                    key(VIP, 42, Protocol::Udp),
                    entry("demo", "web", "udp-port", &[("east", "198.18.0.1", 4201), ("west", "198.18.0.2", 4202)]),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "explicit TCP equals unset protocol, on both sides",
            imports: vec![web().raw_port(Some("http"), Some("TCP"), 80).build()],
            slices: vec![
                slice("demo", "web-east", "web", "east").port("http", 8080).ready("198.18.0.1").build(),
                slice("demo", "web-west", "web", "west")
                    .raw_port(Some("http"), Some("TCP"), Some(9090))
                    .ready("198.18.0.2")
                    .build(),
            ],
            want: vec![(
                key(VIP, 80, Protocol::Tcp),
                entry("demo", "web", "http", &[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 9090)]),
            )],
            ..Case::default()
        },
        Case {
            name: "a port of the same name but another protocol does not match",
            imports: vec![web().port("dns", 53).build()],
            slices: vec![slice("demo", "web-east", "web", "east").udp("dns", 5353).ready("198.18.0.1").build()],
            want: vec![(key(VIP, 53, Protocol::Tcp), entry("demo", "web", "dns", &[]))],
            ..Case::default()
        },
        Case {
            name: "unset and empty port names match each other",
            imports: vec![
                web().raw_port(None, None, 80).build(),
                import("demo", "api").ip(VIP2).raw_port(Some(""), None, 80).build(),
            ],
            slices: vec![
                slice("demo", "web-east", "web", "east")
                    .raw_port(Some(""), None, Some(8080))
                    .ready("198.18.0.1")
                    .build(),
                slice("demo", "api-east", "api", "east").raw_port(None, None, Some(8081)).ready("198.18.0.2").build(),
            ],
            want: vec![
                (key(VIP, 80, Protocol::Tcp), entry("demo", "web", "", &[("east", "198.18.0.1", 8080)])),
                (key(VIP2, 80, Protocol::Tcp), entry("demo", "api", "", &[("east", "198.18.0.2", 8081)])),
            ],
            ..Case::default()
        },
        Case {
            name: "a slice without the named port contributes nothing to that entry",
            imports: vec![web().port("http", 80).port("metrics", 9100).build()],
            slices: vec![
                slice("demo", "web-east", "web", "east").port("http", 8080).ready("198.18.0.1").build(),
                slice("demo", "web-west", "web", "west")
                    .port("http", 8080)
                    .port("metrics", 9100)
                    .ready("198.18.0.2")
                    .build(),
                slice("demo", "web-north", "web", "north").port("other", 80).ready("198.18.0.3").build(),
            ],
            want: vec![
                (
                    key(VIP, 80, Protocol::Tcp),
                    entry("demo", "web", "http", &[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)]),
                ),
                (key(VIP, 9100, Protocol::Tcp), entry("demo", "web", "metrics", &[("west", "198.18.0.2", 9100)])),
            ],
            ..Case::default()
        },
        Case {
            name: "slice ports without a number or out of range contribute nothing",
            imports: vec![web().port("http", 80).build()],
            slices: vec![
                slice("demo", "web-east", "web", "east").raw_port(Some("http"), None, None).ready("198.18.0.1").build(),
                slice("demo", "web-west", "web", "west").port("http", 70000).ready("198.18.0.2").build(),
                slice("demo", "web-north", "web", "north").port("http", 0).ready("198.18.0.3").build(),
                slice("demo", "web-south", "web", "south").port("http", 8080).ready("198.18.0.4").build(),
            ],
            want: vec![(key(VIP, 80, Protocol::Tcp), entry("demo", "web", "http", &[("south", "198.18.0.4", 8080)]))],
            warnings: vec![
                "EndpointSlice demo/web-north ports[0].port: 0 is outside 1..=65535",
                "EndpointSlice demo/web-west ports[0].port: 70000 is outside 1..=65535",
            ],
            ..Case::default()
        },
        Case {
            name: "backends from several slices of one cluster are merged, deduplicated and sorted",
            imports: vec![web().port("http", 80).build()],
            slices: vec![
                slice("demo", "web-east-1", "web", "east")
                    .port("http", 8080)
                    .ready("198.18.0.9")
                    .ready("198.18.0.1")
                    .build(),
                slice("demo", "web-east-2", "web", "east")
                    .port("http", 8080)
                    .ready("198.18.0.1")
                    .ready("198.18.0.5")
                    .build(),
                // The same address with another target port is another backend.
                slice("demo", "web-east-3", "web", "east").port("http", 8081).ready("198.18.0.1").build(),
                // The same address in another cluster is another backend.
                slice("demo", "web-west", "web", "west").port("http", 8080).ready("198.18.0.1").build(),
            ],
            want: vec![(
                key(VIP, 80, Protocol::Tcp),
                entry(
                    "demo",
                    "web",
                    "http",
                    &[
                        ("east", "198.18.0.1", 8080),
                        ("east", "198.18.0.1", 8081),
                        ("east", "198.18.0.5", 8080),
                        ("east", "198.18.0.9", 8080),
                        ("west", "198.18.0.1", 8080),
                    ],
                ),
            )],
            ..Case::default()
        },
        Case {
            name: "an import without ports programs nothing",
            imports: vec![web().build()],
            slices: vec![slice("demo", "web-east", "web", "east").port("http", 8080).ready("198.18.0.1").build()],
            ..Case::default()
        },
    ]);
}

#[test]
fn which_slices_count() {
    run(vec![
        Case {
            name: "only MCS slices of the import in its namespace, not FQDN, IPv6 or controller-managed",
            imports: vec![web().port("http", 80).build()],
            slices: vec![
                slice("demo", "good", "web", "east").port("http", 8080).ready("198.18.0.1").build(),
                // The local cluster's slice is just another cluster's.
                slice("demo", "local", "web", "west").port("http", 8080).ready("198.18.0.2").build(),
                slice("demo", "no-cluster", "web", "x")
                    .without_label(k8s::LABEL_SOURCE_CLUSTER)
                    .port("http", 8080)
                    .ready("198.18.1.1")
                    .build(),
                slice("demo", "empty-cluster", "web", "").port("http", 8080).ready("198.18.1.2").build(),
                slice("demo", "no-service", "web", "east")
                    .without_label(k8s::LABEL_SERVICE_NAME)
                    .port("http", 8080)
                    .ready("198.18.1.3")
                    .build(),
                slice("demo", "plain", "web", "east")
                    .without_label(k8s::LABEL_SERVICE_NAME)
                    .without_label(k8s::LABEL_SOURCE_CLUSTER)
                    .label("kubernetes.io/service-name", "web")
                    .port("http", 8080)
                    .ready("198.18.1.4")
                    .build(),
                slice("other", "other-ns", "web", "east").port("http", 8080).ready("198.18.1.5").build(),
                slice("demo", "other-svc", "api", "east").port("http", 8080).ready("198.18.1.6").build(),
                slice("demo", "managed", "web", "east")
                    .label(k8s::LABEL_MANAGED_BY, k8s::MANAGED_BY_ENDPOINTSLICE_CONTROLLER)
                    .port("http", 8080)
                    .ready("198.18.1.7")
                    .build(),
                slice("demo", "fqdn", "web", "east")
                    .address_type("FQDN")
                    .port("http", 8080)
                    .ready("pod.example")
                    .build(),
                slice("demo", "v6", "web", "east").address_type("IPv6").port("http", 8080).ready("fd00::1").build(),
                slice("demo", "odd-type", "web", "east")
                    .address_type("IPv5")
                    .port("http", 8080)
                    .ready("198.18.1.8")
                    .build(),
            ],
            want: vec![(
                key(VIP, 80, Protocol::Tcp),
                entry("demo", "web", "http", &[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)]),
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
                import("demo", "web").ip(VIP).port("http", 80).build(),
                import("prod", "web").ip(VIP2).port("http", 80).build(),
            ],
            slices: vec![
                slice("demo", "web-east", "web", "east").port("http", 8080).ready("198.18.0.1").build(),
                slice("prod", "web-east", "web", "east").port("http", 8080).ready("198.18.0.2").build(),
                slice("prod", "web-west", "web", "west").port("http", 8080).ready("198.18.0.3").build(),
            ],
            want: vec![
                (key(VIP, 80, Protocol::Tcp), entry("demo", "web", "http", &[("east", "198.18.0.1", 8080)])),
                (
                    key(VIP2, 80, Protocol::Tcp),
                    entry("prod", "web", "http", &[("east", "198.18.0.2", 8080), ("west", "198.18.0.3", 8080)]),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "status.clusters only ranks: unlisted present clusters count too",
            imports: vec![web().port("http", 80).status_clusters(&["west"]).build()],
            slices: vec![
                slice("demo", "web-east", "web", "east").port("http", 8080).ready("198.18.0.1").build(),
                slice("demo", "web-west", "web", "west").port("http", 8080).ready("198.18.0.2").build(),
            ],
            want: vec![(
                key(VIP, 80, Protocol::Tcp),
                entry("demo", "web", "http", &[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)]),
            )],
            ..Case::default()
        },
    ]);
}

#[test]
fn types_and_ips() {
    let east = || slice("demo", "web-east", "web", "east").port("http", 8080).ready("198.18.0.1").build();
    let programmed =
        || vec![(key(VIP, 80, Protocol::Tcp), entry("demo", "web", "http", &[("east", "198.18.0.1", 8080)]))];
    run(vec![
        Case {
            name: "headless imports are skipped",
            imports: vec![web().type_("Headless").port("http", 80).build()],
            slices: vec![east()],
            skipped: vec![("demo", "web", SkipReason::Headless, "headless")],
            ..Case::default()
        },
        Case {
            name: "an empty type means ClusterSetIP",
            imports: vec![web().type_("").port("http", 80).build()],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
        Case {
            name: "a ClusterSetIP import without ips is skipped",
            imports: vec![import("demo", "web").port("http", 80).build()],
            slices: vec![east()],
            skipped: vec![("demo", "web", SkipReason::NoIps, "spec.ips is empty")],
            ..Case::default()
        },
        Case {
            name: "dual-stack programs the IPv4 ClusterSetIP",
            imports: vec![
                import("demo", "web").ip("fd00::10").ip(VIP).family("IPv6").family("IPv4").port("http", 80).build(),
            ],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
        Case {
            name: "IPv6-only imports are skipped: the datapath is IPv4 only",
            imports: vec![import("demo", "web").ip("fd00::10").family("IPv6").port("http", 80).build()],
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
            imports: vec![web().port("http", 80).build()],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
    ]);
}

#[test]
fn invalid_imports_are_skipped_naming_the_field() {
    // Each case also has a valid import, which must not be disturbed.
    let ok = || import("demo", "ok").ip(VIP2).port("http", 80).build();
    let ok_entry = || (key(VIP2, 80, Protocol::Tcp), entry("demo", "ok", "http", &[("east", "198.18.0.1", 8080)]));
    let ok_slice = || slice("demo", "ok-east", "ok", "east").port("http", 8080).ready("198.18.0.1").build();
    let cases: Vec<(&str, ServiceImport, &str)> = vec![
        (
            "unparsable ip",
            web().port("http", 80).build().with_ips(&["300.1.1.1"]),
            r#"spec.ips[0]: "300.1.1.1" is not an IP address"#,
        ),
        ("port 0", web().port("http", 0).build(), "spec.ports[0].port: 0 is outside 1..=65535"),
        (
            "port above 65535",
            web().port("http", 80).port("big", 70000).build(),
            "spec.ports[1].port: 70000 is outside 1..=65535",
        ),
        ("negative port", web().port("http", -1).build(), "spec.ports[0].port: -1 is outside 1..=65535"),
        (
            "SCTP",
            web().port("http", 80).raw_port(Some("sctp"), Some("SCTP"), 80).build(),
            r#"spec.ports[1].protocol: unsupported protocol "SCTP" (TCP and UDP are translated)"#,
        ),
        (
            "lower-case protocol",
            web().raw_port(Some("http"), Some("tcp"), 80).build(),
            r#"spec.ports[0].protocol: unsupported protocol "tcp""#,
        ),
        (
            "duplicate port name",
            web().port("http", 80).udp("http", 81).build(),
            r#"spec.ports[1].name: duplicate port name "http" (also spec.ports[0])"#,
        ),
        (
            "two unnamed ports",
            web().raw_port(None, None, 80).raw_port(Some(""), None, 81).build(),
            r#"spec.ports[1].name: duplicate port name """#,
        ),
        (
            "duplicate port and protocol",
            web().port("a", 80).port("b", 80).build(),
            "spec.ports[1]: TCP/80 is listed twice (also spec.ports[0])",
        ),
        (
            "three ips",
            web().ip("fd00::1").ip("198.19.0.9").port("http", 80).build(),
            "spec.ips: 3 addresses, at most 2",
        ),
        ("two IPv4 ips", web().ip("198.19.0.9").port("http", 80).build(), "spec.ips[1]: a second IPv4 address"),
        (
            "family disagrees",
            web().family("IPv6").port("http", 80).build(),
            r#"spec.ipFamilies[0]: IPv6 disagrees with spec.ips[0] "198.19.0.1""#,
        ),
        (
            "unknown family",
            web().family("IPv5").port("http", 80).build(),
            r#"spec.ipFamilies[0]: unknown family "IPv5""#,
        ),
        (
            "three families",
            web().family("IPv4").family("IPv6").family("IPv4").port("http", 80).build(),
            "spec.ipFamilies: 3 families",
        ),
        (
            "unknown type",
            web().type_("LoadBalancer").port("http", 80).build(),
            r#"spec.type: unsupported type "LoadBalancer""#,
        ),
        ("invalid ports beat missing ips", import("demo", "web").port("http", 0).build(), "spec.ports[0].port"),
    ];
    run(cases
        .into_iter()
        .map(|(name, bad, message)| Case {
            name,
            imports: vec![bad, ok()],
            slices: vec![
                ok_slice(),
                slice("demo", "web-east", "web", "east").port("http", 8080).ready("198.18.0.2").build(),
            ],
            want: vec![ok_entry()],
            skipped: vec![("demo", "web", SkipReason::Invalid, message)],
            ..Case::default()
        })
        .collect());

    let nameless = ServiceImport {
        metadata: ObjectMeta { namespace: Some("demo".into()), ..ObjectMeta::default() },
        ..web().port("http", 80).build()
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
    let a_slice = || slice("demo", "a-east", "a", "east").port("http", 8080).ready("198.18.0.1").build();
    let b_slice = || slice("demo", "b-east", "b", "east").port("http", 8080).ready("198.18.0.2").build();
    run(vec![
        Case {
            name: "the later import in (namespace, name) order is skipped, naming the other",
            imports: vec![
                import("demo", "b").ip(VIP).port("x", 81).port("http", 80).build(),
                import("demo", "a").ip(VIP).port("http", 80).build(),
            ],
            slices: vec![a_slice(), b_slice()],
            want: vec![(key(VIP, 80, Protocol::Tcp), entry("demo", "a", "http", &[("east", "198.18.0.1", 8080)]))],
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
                import("prod", "a").ip(VIP).port("http", 80).build(),
                import("demo", "z").ip(VIP).port("http", 80).build(),
            ],
            want: vec![(key(VIP, 80, Protocol::Tcp), entry("demo", "z", "http", &[]))],
            skipped: vec![("prod", "a", SkipReason::Invalid, "already used by ServiceImport demo/z")],
            ..Case::default()
        },
        Case {
            name: "one ip with another port or protocol is no conflict",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", 80).build(),
                import("demo", "b").ip(VIP).udp("http", 80).port("alt", 81).build(),
            ],
            slices: vec![
                a_slice(),
                slice("demo", "b-east", "b", "east").udp("http", 8080).port("alt", 8081).ready("198.18.0.2").build(),
            ],
            want: vec![
                (key(VIP, 80, Protocol::Tcp), entry("demo", "a", "http", &[("east", "198.18.0.1", 8080)])),
                (key(VIP, 80, Protocol::Udp), entry("demo", "b", "http", &[("east", "198.18.0.2", 8080)])),
                (key(VIP, 81, Protocol::Tcp), entry("demo", "b", "alt", &[("east", "198.18.0.2", 8081)])),
            ],
            ..Case::default()
        },
        Case {
            name: "a skipped import claims nothing",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", 80).raw_port(Some("s"), Some("SCTP"), 9).build(),
                import("demo", "b").ip(VIP).port("http", 80).build(),
            ],
            slices: vec![a_slice(), b_slice()],
            want: vec![(key(VIP, 80, Protocol::Tcp), entry("demo", "b", "http", &[("east", "198.18.0.2", 8080)]))],
            skipped: vec![("demo", "a", SkipReason::Invalid, "spec.ports[1].protocol")],
            ..Case::default()
        },
        Case {
            name: "two imports with one namespace and name are both skipped",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", 80).build(),
                import("demo", "a").ip(VIP2).port("http", 80).build(),
            ],
            slices: vec![a_slice()],
            skipped: vec![("demo", "a", SkipReason::Invalid, "2 ServiceImports have this namespace and name")],
            ..Case::default()
        },
    ]);
}

#[test]
fn session_affinity() {
    let east = || slice("demo", "web-east", "web", "east").port("http", 8080).ready("198.18.0.1").build();
    let programmed = |timeout: Option<u32>| {
        let e = entry("demo", "web", "http", &[("east", "198.18.0.1", 8080)]);
        let e = match timeout {
            Some(t) => with_affinity(e, t),
            None => e,
        };
        vec![(key(VIP, 80, Protocol::Tcp), e)]
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
            web().port("http", 80).affinity("ClientIP", None).build(),
            Some(10_800),
            vec![],
        ),
        case(
            "ClientIP with a timeout",
            web().port("http", 80).affinity("ClientIP", Some(60)).build(),
            Some(60),
            vec![],
        ),
        case(
            "the largest timeout",
            web().port("http", 80).affinity("ClientIP", Some(86_400)).build(),
            Some(86_400),
            vec![],
        ),
        case(
            "timeout 0 falls back to 10800",
            web().port("http", 80).affinity("ClientIP", Some(0)).build(),
            Some(10_800),
            vec![
                "ServiceImport demo/web spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is outside 1..=86400; using 10800",
            ],
        ),
        case(
            "timeout above 86400 falls back to 10800",
            web().port("http", 80).affinity("ClientIP", Some(86_401)).build(),
            Some(10_800),
            vec!["timeoutSeconds: 86401 is outside"],
        ),
        case("None", web().port("http", 80).affinity("None", Some(60)).build(), None, vec![]),
        case("unset", web().port("http", 80).build(), None, vec![]),
        case(
            "an unknown value turns affinity off",
            web().port("http", 80).affinity("Sticky", None).build(),
            None,
            vec![r#"ServiceImport demo/web spec.sessionAffinity: unknown value "Sticky""#],
        ),
    ]);
}

/// A mix of everything, for the order and mutation checks.
fn mixed_inputs() -> Inputs {
    let imports = vec![
        import("demo", "web").ip(VIP).port("http", 80).port("https", 443).affinity("ClientIP", Some(0)).build(),
        import("demo", "dns").ip(VIP2).port("tcp", 53).udp("udp", 53).build(),
        import("prod", "web")
            .ip("198.19.0.3")
            .port("http", 80)
            .status_clusters(&["west", "c3"])
            .annotation(k8s::LOCALITY_ANNOTATION, "local")
            .build(),
        // Loses VIP:80/TCP to demo/web, which sorts first.
        import("demo", "web-copy").ip(VIP).port("http", 80).build(),
        import("demo", "headless").type_("Headless").build(),
        import("demo", "pending").port("http", 80).build(),
        web().raw_port(Some("x"), Some("SCTP"), 1).build().with_ips(&["198.19.0.4"]).renamed("bad"),
    ];
    let mut slices = vec![
        slice("demo", "web-east", "web", "east")
            .port("http", 8080)
            .port("https", 8443)
            .ready("198.18.0.1")
            .ready("198.18.0.300")
            .terminating("198.18.0.5")
            .build(),
        slice("demo", "web-west", "web", "west")
            .port("https", 9443)
            .port("http", 9080)
            .ready("198.18.0.2")
            .not_ready("198.18.0.3")
            .build(),
        slice("demo", "web-west-2", "web", "west").port("http", 9080).ready("198.18.0.2").ready("198.18.0.4").build(),
        slice("demo", "dns-east", "dns", "east").port("tcp", 5353).udp("udp", 5353).terminating("198.18.1.1").build(),
        slice("demo", "stray", "web", "x").without_label(k8s::LABEL_SOURCE_CLUSTER).build(),
        slice("demo", "gke-derived", "", "")
            .without_label(k8s::LABEL_SERVICE_NAME)
            .without_label(k8s::LABEL_SOURCE_CLUSTER)
            .label(k8s::LABEL_KUBERNETES_SERVICE_NAME, "gke-mcs-sliced")
            .port("http", 8080)
            .ready("198.18.4.1")
            .build(),
    ];
    // Seven clusters for prod/web: two are over the cap.
    for (i, cluster) in ["c1", "c2", "c3", "c4", "c5", "west", "east"].into_iter().enumerate() {
        slices.push(
            slice("prod", &format!("web-{cluster}"), "web", cluster)
                .port("http", 8080)
                .ready(&format!("198.18.2.{}", i + 1))
                .build(),
        );
    }
    let gke_imports = vec![
        gke_import("demo", "gke-endpoints", "gke-mcs-endpoints").ip("198.19.0.20").port("http", 80).build(),
        gke_import("demo", "gke-sliced", "gke-mcs-sliced").ip("198.19.0.21").port("http", 80).in_spec().build(),
        gke_import("demo", "gke-missing", "gke-mcs-missing").ip("198.19.0.22").port("http", 80).build(),
        gke_import("demo", "gke-bad", "x").ip("198.19.0.23").port("http", 0).build(),
        gke_import("demo", "web", "gke-mcs-web").ip(VIP).port("https", 443).build(),
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
    assert_eq!(key(VIP, 80, Protocol::Udp).to_string(), "198.19.0.1:80/UDP");
}
